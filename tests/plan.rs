//! The mapping layer and `transplant plan` on the map_basic fixture pair (one change of each
//! kind between map_basic_v1.c and map_basic_v2.c): what is automatic, what is refused and
//! why, what rules settle, the reverse mapping, and the command's text (against golden files;
//! `TRANSPLANT_UPDATE_GOLDEN=1` rewrites them), JSON and exit status. No process is involved.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use transplant::debuginfo::Binary;
use transplant::mapping::{Conversion, Decision, Direction, Mapping, Rules};

/// The rules that settle every refusal of the pair.
const RULES: &str = r#"# map_basic v1 -> v2
[rename]
types = { "struct record" = "struct entry" }
enumerators = { "enum mode.MODE_TURBO" = "MODE_FAST" }
functions = { handler_legacy = "handler_a" }

[drop]
globals = ["g_removed"]
fields = ["struct item.legacy"]

[default]
"struct item.priority" = 5
"#;

fn binaries() -> &'static (Binary, Binary) {
    static B: OnceLock<(Binary, Binary)> = OnceLock::new();
    B.get_or_init(|| {
        (
            Binary::load(fixtures::path("map_basic_v1")).expect("load v1"),
            Binary::load(fixtures::path("map_basic_v2")).expect("load v2"),
        )
    })
}

/// A rules file in a directory of its own (so its name in messages is always `rules.toml`).
fn rules_file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("transplant-plan-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rules() -> Rules {
    Rules::load(rules_file("lib", RULES)).expect("rules parse")
}

fn decision<'a>(m: &'a Mapping, path: &str) -> &'a Decision {
    let mut it = m.differences_at(path);
    let d = it
        .next()
        .unwrap_or_else(|| panic!("no difference at {path}: {:#?}", m.differences));
    &d.decision
}

fn refusal(m: &Mapping, path: &str) -> String {
    match decision(m, path) {
        Decision::Refused { reason } => reason.clone(),
        other => panic!("{path}: expected refused, got {other:?}"),
    }
}

fn assert_automatic(m: &Mapping, path: &str) {
    assert!(
        m.differences_at(path)
            .all(|d| matches!(d.decision, Decision::Automatic { .. })),
        "{path}: {:?}",
        m.differences_at(path).collect::<Vec<_>>()
    );
    assert!(
        m.differences_at(path).next().is_some(),
        "no difference at {path}"
    );
}

#[test]
fn without_rules_the_right_differences_are_refused_precisely() {
    let (old, new) = binaries();
    let m = Mapping::new(old, new, &Rules::default());
    assert_eq!(m.direction, Direction::Forward);
    let refused: Vec<&str> = m.refused().map(|d| d.path.as_str()).collect();
    assert_eq!(
        refused,
        [
            "enum mode.MODE_TURBO",
            "function handler_legacy",
            "g_record_ptr",
            "g_removed",
            "struct item.legacy",
            "struct record",
        ]
    );
    assert_eq!(
        refusal(&m, "struct item.legacy"),
        "its value would be lost (to drop it, add \"struct item.legacy\" to [drop] fields; if it \
         was renamed, add it to [rename] fields)"
    );
    assert_eq!(
        refusal(&m, "g_removed"),
        "its value would be lost (to drop it, add \"g_removed\" to [drop] globals; if it was \
         renamed, add it to [rename] globals)"
    );
    assert_eq!(
        refusal(&m, "enum mode.MODE_TURBO"),
        "enum mode has no enumerator MODE_TURBO, so a value MODE_TURBO (2) has no new value (add \
         [rename] enumerators { \"enum mode.MODE_TURBO\" = \"...\" })"
    );
    assert!(refusal(&m, "function handler_legacy").starts_with("g_handler points to it"));
    assert!(refusal(&m, "struct record")
        .contains("[rename] types { \"struct record\" = \"struct entry\" }"));
    assert!(!m.is_complete());
}

#[test]
fn automatic_differences_are_classified_and_converted() {
    let (old, new) = binaries();
    let m = Mapping::new(old, new, &Rules::default());
    for path in [
        "struct item",
        "struct item.count",
        "struct item.priority",
        "struct item.tags",
        "enum color",
        "g_widened",
        "g_added",
    ] {
        assert_automatic(&m, path);
    }
    // The item map: fields by name at their new offsets, legacy refused, priority added.
    let item = m.type_map("struct item").expect("struct item mapped");
    let field = |p: &str| {
        item.fields
            .iter()
            .find(|f| f.old_path.as_deref() == Some(p) || f.new_path.as_deref() == Some(p))
            .unwrap_or_else(|| panic!("{p} in {item:#?}"))
    };
    assert_eq!(field("struct item.id").old_offset, Some(0));
    assert_eq!(field("struct item.id").new_offset, Some(16));
    assert_eq!(
        field("struct item.count").conversion,
        Conversion::Integer {
            old_bits: 32,
            old_signed: true,
            new_bits: 64,
            new_signed: true,
            checked: false
        }
    );
    assert_eq!(field("struct item.legacy").conversion, Conversion::Refused);
    assert_eq!(
        field("struct item.priority").conversion,
        Conversion::KeepInitial
    );
    match &field("struct item.tags").conversion {
        Conversion::Array {
            old_len, new_len, ..
        } => assert_eq!((*old_len, *new_len), (4, 8)),
        other => panic!("tags: {other:?}"),
    }
    // Enum values by enumerator name: RED 0 -> 2, GREEN 1 -> 3, BLUE 2 -> 1.
    assert_eq!(
        field("struct item.color").conversion,
        Conversion::Enum {
            old_size: 4,
            new_size: 4,
            values: vec![(0, Some(2)), (1, Some(3)), (2, Some(1))]
        }
    );
    // Statics match by unit (the only renamed one) and function.
    assert!(m.global("map_basic_v1.c:s_counter").unwrap().new.is_some());
    assert!(m.global("map_basic_v1.c:bump:calls").unwrap().new.is_some());
    assert!(m.global("g_greeting").unwrap().new.is_some());
    assert!(m.global("g_added").unwrap().old.is_none());
}

#[test]
fn with_rules_everything_is_settled() {
    let (old, new) = binaries();
    let m = Mapping::new(old, new, &rules());
    assert!(m.is_complete(), "{:#?}", m.refused().collect::<Vec<_>>());
    for path in [
        "struct record",
        "struct item.legacy",
        "g_removed",
        "enum mode.MODE_TURBO",
        "function handler_legacy",
        "struct item.priority",
    ] {
        assert!(
            matches!(decision(&m, path), Decision::ByRule { .. }),
            "{path}: {:?}",
            decision(&m, path)
        );
    }
    assert_automatic(&m, "g_record_ptr");
    assert!(matches!(
        m.global("g_removed").unwrap().conversion,
        Conversion::Drop
    ));
}

#[test]
fn a_misspelt_rule_is_refused() {
    let (old, new) = binaries();
    let r = Rules::parse("[drop]\nfields = [\"struct item.legcy\"]\n", "typo.toml").unwrap();
    let m = Mapping::new(old, new, &r);
    let why = m
        .refused()
        .find(|d| d.path == "rules")
        .expect("unused rule reported");
    assert!(why.what.contains("struct item.legcy"), "{why}");
}

#[test]
fn the_reverse_mapping_round_trips() {
    let (old, new) = binaries();
    let rules = rules();
    let fwd = Mapping::new(old, new, &rules);
    let rev = Mapping::reverse(old, new, &rules);
    assert_eq!(rev.direction, Direction::Reverse);
    assert!(
        rev.is_complete(),
        "{:#?}",
        rev.refused().collect::<Vec<_>>()
    );
    // State only v2 has is dropped silently going back; state only v1 has keeps v1's value.
    assert!(matches!(
        rev.global("g_added").unwrap().conversion,
        Conversion::Drop
    ));
    assert!(matches!(
        rev.global("g_removed").unwrap().conversion,
        Conversion::KeepInitial
    ));
    assert_automatic(&rev, "struct item.priority");
    // Every global in both versions maps back to itself.
    for g in fwd
        .globals
        .iter()
        .filter(|g| g.old.is_some() && g.new.is_some())
    {
        let (o, n) = (g.old.as_ref().unwrap(), g.new.as_ref().unwrap());
        let back = rev
            .globals
            .iter()
            .find(|r| r.old.as_ref().map(|v| v.address) == Some(n.address))
            .unwrap_or_else(|| panic!("{} has no reverse", g.path));
        assert_eq!(
            back.new.as_ref().map(|v| v.address),
            Some(o.address),
            "{}",
            g.path
        );
    }
    // Every field in both versions maps back to the same field and offset.
    for t in &fwd.types {
        let back = rev
            .types
            .iter()
            .find(|r| r.old_name == t.new_name)
            .unwrap_or_else(|| panic!("{} has no reverse", t.new_name));
        assert_eq!(back.new_name, t.old_name);
        for f in t
            .fields
            .iter()
            .filter(|f| f.old_path.is_some() && f.new_path.is_some())
        {
            let b = back
                .fields
                .iter()
                .find(|b| b.old_path == f.new_path)
                .unwrap_or_else(|| panic!("{:?} has no reverse", f.new_path));
            assert_eq!((&b.new_path, b.new_offset), (&f.old_path, f.old_offset));
        }
    }
    // Enum values compose to the identity, except where a rule merged two enumerators.
    let values = |m: &Mapping, ty: &str, field: &str| match &m
        .type_map(ty)
        .unwrap()
        .fields
        .iter()
        .find(|f| f.old_path.as_deref() == Some(field))
        .unwrap()
        .conversion
    {
        Conversion::Enum { values, .. } => values.clone(),
        other => panic!("{other:?}"),
    };
    let f = values(&fwd, "struct item", "struct item.color");
    let r = values(&rev, "struct item", "struct item.color");
    for (a, b) in f {
        let b = b.unwrap();
        let back = r.iter().find(|(x, _)| *x == b).unwrap().1;
        assert_eq!(back, Some(a));
    }
}

// ------------------------------------------------------------------ map_more

/// Rules for the map_more pair: a global renamed and converted, a field renamed, an array tail
/// dropped, a default enumerator, a union copied as bytes.
const MORE_RULES: &str = r#"
[rename]
globals = { g_timeout_s = "g_timeout_ms" }
fields = { "struct cfg.cnt" = "count" }

[convert]
g_timeout_s = { scale = 1000 }

[drop]
globals = ["g_shrink"]

[default]
g_level = "HIGH"

[opaque]
types = ["union slot"]
"#;

fn more() -> &'static (Binary, Binary) {
    static B: OnceLock<(Binary, Binary)> = OnceLock::new();
    B.get_or_init(|| {
        (
            Binary::load(fixtures::path("map_more_v1")).expect("load v1"),
            Binary::load(fixtures::path("map_more_v2")).expect("load v2"),
        )
    })
}

#[test]
fn more_changes_without_rules() {
    let (old, new) = more();
    let m = Mapping::new(old, new, &Rules::default());
    let refused: Vec<&str> = m.refused().map(|d| d.path.as_str()).collect();
    assert_eq!(
        refused,
        ["g_shrink", "g_timeout_s", "struct cfg.cnt", "union slot"]
    );
    assert!(refusal(&m, "union slot").starts_with("which member is live is unknown"));
    assert_eq!(
        refusal(&m, "g_shrink"),
        "elements 4..8 would be lost (a drop rule for `g_shrink` drops them)"
    );
    for path in ["g_narrow", "g_sign", "struct flags.b"] {
        assert!(
            matches!(decision(&m, path), Decision::CheckedPerValue { .. }),
            "{path}: {:?}",
            decision(&m, path)
        );
    }
    assert!(matches!(
        m.global("g_narrow").unwrap().conversion,
        Conversion::Integer { checked: true, .. }
    ));
    // The list's node gains a field; the self-reference maps to the same type map.
    assert_automatic(&m, "struct node.weight");
    let node = m
        .types
        .iter()
        .position(|t| t.old_name == "struct node")
        .unwrap();
    let next = m.types[node]
        .fields
        .iter()
        .find(|f| f.old_path.as_deref() == Some("struct node.next"))
        .unwrap();
    assert_eq!(
        next.conversion,
        Conversion::Pointer {
            type_map: Some(node)
        }
    );
    // An anonymous struct is named by its typedef; anonymous union members match in order.
    assert_automatic(&m, "anon_t.b");
    assert_automatic(&m, "struct outer.y");
    assert!(m.type_map("struct outer").unwrap().fields.iter().any(|f| {
        f.old_path.as_deref() == Some("struct outer.<anonymous #0>") && f.new_path.is_some()
    }));
    // FILE * and string literals: no difference, pointers relocated as they are.
    assert!(m.differences_at("g_out").next().is_none());
    assert!(m.differences_at("g_name").next().is_none());
    assert!(m.differences.iter().all(|d| !d.path.contains("_IO_")));
}

#[test]
fn more_changes_with_rules() {
    let (old, new) = more();
    let rules = Rules::parse(MORE_RULES, "more.toml").unwrap();
    let m = Mapping::new(old, new, &rules);
    assert!(m.is_complete(), "{:#?}", m.refused().collect::<Vec<_>>());
    let t = m.global("g_timeout_s").unwrap();
    assert_eq!(t.new.as_ref().unwrap().name, "g_timeout_ms");
    match &t.conversion {
        Conversion::Value(c) => assert_eq!(c.apply(30), Some(30_000)),
        other => panic!("{other:?}"),
    }
    let rev = Mapping::reverse(old, new, &rules);
    assert!(
        rev.is_complete(),
        "{:#?}",
        rev.refused().collect::<Vec<_>>()
    );
    match &rev.global("g_timeout_ms").unwrap().conversion {
        Conversion::Value(c) => assert_eq!(c.apply(30_000), Some(30)),
        other => panic!("{other:?}"),
    }
    // Going back, the array grows again: the tail keeps v1's initial value.
    assert_automatic(&rev, "g_shrink");
}

#[test]
fn a_default_that_does_not_fit_its_type_is_refused() {
    let (old, new) = more();
    let rules = Rules::parse("[default]\ng_level = \"MEDIUM\"\n", "d.toml").unwrap();
    let m = Mapping::new(old, new, &rules);
    assert_eq!(
        refusal(&m, "g_level"),
        "the rule default \"g_level\" in d.toml: enum level has no enumerator MEDIUM"
    );
    let rules = Rules::parse("[convert]\ng_out = { scale = 2 }\n", "c.toml").unwrap();
    let m = Mapping::new(old, new, &rules);
    assert!(refusal(&m, "g_out").contains("converts numbers, but this is FILE * -> FILE *"));
}

// ------------------------------------------------------------------ the command

fn transplant(args: Vec<String>) -> Output {
    fixtures::within(Duration::from_secs(60), "transplant plan", move || {
        Command::new(env!("CARGO_BIN_EXE_transplant"))
            .args(&args)
            .output()
            .expect("run transplant")
    })
}

fn plan_args(rules: Option<&Path>, json: bool) -> Vec<String> {
    let mut a = vec![
        "plan".to_string(),
        "--from".into(),
        fixtures::path("map_basic_v1").display().to_string(),
        "--to".into(),
        fixtures::path("map_basic_v2").display().to_string(),
    ];
    if let Some(r) = rules {
        a.push("--rules".into());
        a.push(r.display().to_string());
    }
    if json {
        a.push("--json".into());
    }
    a
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("TRANSPLANT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (TRANSPLANT_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    assert_eq!(actual, want, "differs from {}", path.display());
}

#[test]
fn plan_without_rules_matches_golden_and_exits_1() {
    let out = transplant(plan_args(None, false));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    golden(
        "plan_basic_no_rules.txt",
        &String::from_utf8(out.stdout).unwrap(),
    );
}

#[test]
fn plan_with_rules_matches_golden_and_exits_0() {
    let rules = rules_file("cli", RULES);
    let out = transplant(plan_args(Some(&rules), false));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    golden(
        "plan_basic_rules.txt",
        &String::from_utf8(out.stdout).unwrap(),
    );
}

#[test]
fn plan_more_without_rules_matches_golden() {
    let out = transplant(vec![
        "plan".into(),
        "--from".into(),
        fixtures::path("map_more_v1").display().to_string(),
        "--to".into(),
        fixtures::path("map_more_v2").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    golden(
        "plan_more_no_rules.txt",
        &String::from_utf8(out.stdout).unwrap(),
    );
}

#[test]
fn plan_json_parses() {
    let out = transplant(plan_args(None, true));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["refused"], 8);
    assert_eq!(v["forward"]["direction"], "forward");
    assert_eq!(v["reverse"]["direction"], "reverse");
    let diffs = v["forward"]["differences"].as_array().unwrap();
    let legacy = diffs
        .iter()
        .find(|d| d["path"] == "struct item.legacy")
        .unwrap();
    assert_eq!(legacy["decision"]["decision"], "refused");
    assert!(v["forward"]["globals"].as_array().unwrap().len() >= 10);
    assert!(v["forward"]["types"][0]["fields"].is_array());
}

#[test]
fn plan_names_the_rules_file_line_and_key_on_error() {
    let rules = rules_file("bad", "[drop]\nglobals = [\"struct item.legacy\"]\n");
    let out = transplant(plan_args(Some(&rules), false));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("rules.toml:2: drop.globals[0]: `struct item.legacy` is a field"),
        "{err}"
    );
}
