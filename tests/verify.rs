//! The time-traveling check on live processes, for every fixture pair of
//! tests/transfer_pairs.rs: v1 filled through its socket and captured; its state transferred
//! into a fresh v2 held at its `poll`, captured there; that state transferred back into a
//! fresh v1 held at its `poll`, captured there; and `verify::diff` of the two v1 captures
//! must be exact, with the forward mapping's `[drop]` rules excluded.
//!
//! Both transfers land in processes that have not run a single instruction of their loop
//! since (they are held in `poll`), so nothing but the transfers can change the state. Then
//! the reversed process is corrupted on purpose (one heap field, one global, written into its
//! memory) and recaptured: the diff must name exactly those two places with both values.

mod common;

use common::{release, spawn_at_poll, transfer_into, HeldServer};
use fixtures::{Fixture, LineClient};
use tracer::{Memory, MemoryMut, RemoteAddr};
use transplant::debuginfo::{Binary, Type, TypeId};
use transplant::mapping::rules::Rules;
use transplant::mapping::Mapping;
use transplant::state::live::{capture_process, capture_stopped, LiveCapture};
use transplant::verify::{diff, Difference, Exclusions, Report};

/// One step of a C expression from a global.
#[derive(Clone, Copy)]
enum Step {
    /// Element of the array the current value is.
    Index(u64),
    /// Element `i` of the array the current value starts (`p[i]` after `*p`).
    At(u64),
    Field(&'static str),
    Deref,
}

/// The address and type of `global` followed by `steps`, in a process where `binary` is
/// loaded with `bias`, reading pointers from `mem`.
fn locate(
    binary: &Binary,
    bias: u64,
    mem: &dyn Memory,
    global: &str,
    steps: &[Step],
) -> (RemoteAddr, TypeId) {
    let types = binary.types();
    let strip = |t: TypeId| types.definition_of(types.strip_typedefs_cv(t));
    let v = binary.variable(global).unwrap();
    let (mut addr, mut ty) = (v.address + bias, v.ty);
    for step in steps {
        match (step, types.get(strip(ty))) {
            (Step::Index(i), Type::Array { element, .. }) => {
                addr += i * binary.byte_size(*element).unwrap();
                ty = *element;
            }
            (Step::At(i), _) => addr += i * binary.byte_size(ty).unwrap(),
            (Step::Deref, Type::Pointer { target, .. }) => {
                addr = mem.read_u64(RemoteAddr::new(addr)).unwrap();
                ty = target.unwrap();
            }
            (Step::Field(f), Type::Struct(c)) => {
                let m = c
                    .members
                    .iter()
                    .find(|m| m.name.as_deref() == Some(*f))
                    .unwrap();
                addr += m.offset;
                ty = m.ty;
            }
            _ => panic!("{global}: a step does not fit its type"),
        }
    }
    (RemoteAddr::new(addr), ty)
}

/// A value written into the reversed process, and the difference it must cause.
struct Corruption<'a> {
    global: &'a str,
    steps: &'a [Step],
    /// Bytes written at `byte` past the located address.
    byte: u64,
    bytes: Vec<u8>,
    /// The difference's path and values; `old: None` for a value computed from the old
    /// capture (a counter the fill does not decide alone).
    path: &'a str,
    old: Option<&'a str>,
    reversed: &'a str,
}

/// What a pair's round trip leaves to check.
struct RoundTrip {
    binary: std::sync::Arc<Binary>,
    state1: LiveCapture,
    reversed: LiveCapture,
    back: HeldServer,
    forward: Mapping,
    _v1: Fixture,
}

impl RoundTrip {
    fn diff(&self, exclude: &Exclusions) -> Report {
        diff(
            &self.binary,
            &self.state1.graph,
            &self.reversed.graph,
            exclude,
        )
    }

    fn exclusions(&self) -> Exclusions {
        Exclusions::from_forward(&self.forward)
    }
}

fn round_trip(topic: &str, rules: &str, fill: &[&str]) -> RoundTrip {
    let rules = Rules::parse(rules, "rules.toml").unwrap();
    let (v1, ready) = Fixture::start_ready(&format!("upd_{topic}_v1"), &["0"]);
    let mut c1 = LineClient::connect(ready["port"].parse().unwrap());
    for cmd in fill {
        assert_eq!(c1.ask(cmd), "OK", "{cmd}");
    }
    let dump1 = c1.dump();

    // Forward, and v2 captured before it runs its loop.
    let mut v2 = spawn_at_poll(&format!("upd_{topic}_v2"));
    let state1 = capture_process(v1.pid()).unwrap();
    let forward = transfer_into(&state1, &mut v2, &rules, false);
    let state2 = capture_stopped(&v2.tracee).unwrap();
    release(&mut v2);
    let mut c2 = LineClient::connect(v2.port);
    assert_eq!(c2.ask("VERSION"), "v2");
    assert_eq!(c2.dump(), dump1, "v2 serves v1's items");

    // Back into a fresh v1, captured where it is held.
    let mut back = spawn_at_poll(&format!("upd_{topic}_v1"));
    transfer_into(&state2, &mut back, &rules, true);
    let reversed = capture_stopped(&back.tracee).unwrap();
    RoundTrip {
        binary: state1.binary.clone(),
        state1,
        reversed,
        back,
        forward,
        _v1: v1,
    }
}

/// Writes `bad` into the reversed process, recaptures it, and checks that the diff names
/// exactly those places with both values (and the `also` differences of writes the caller
/// made).
fn corrupt(rt: &mut RoundTrip, bad: &[Corruption], also: &[Difference]) {
    let mut want = also.to_vec();
    for c in bad {
        let mem = rt.back.tracee.memory();
        let (addr, _) = locate(&rt.binary, rt.reversed.bias, mem, c.global, c.steps);
        mem.write(addr.checked_add(c.byte).unwrap(), &c.bytes)
            .unwrap();
        let old = match c.old {
            Some(s) => s.to_owned(),
            None => {
                let (a, _) = locate(
                    &rt.binary,
                    rt.state1.bias,
                    &rt.state1.memory,
                    c.global,
                    c.steps,
                );
                let mut b = [0u8; 8];
                rt.state1.memory.read(a, &mut b[..c.bytes.len()]).unwrap();
                u64::from_le_bytes(b).to_string()
            }
        };
        want.push(Difference {
            path: c.path.into(),
            old,
            reversed: c.reversed.into(),
        });
    }
    rt.reversed = capture_stopped(&rt.back.tracee).unwrap();
    let r = rt.diff(&rt.exclusions());
    assert_eq!(sorted(r.differences.clone()), sorted(want.clone()));
    assert_eq!(r.total(), want.len());
    assert!(!r.is_exact());
}

fn difference(path: &str, old: &str, reversed: &str) -> Difference {
    Difference {
        path: path.into(),
        old: old.into(),
        reversed: reversed.into(),
    }
}

fn sorted(mut v: Vec<Difference>) -> Vec<Difference> {
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

fn assert_exact(rt: &RoundTrip) {
    let r = rt.diff(&rt.exclusions());
    assert!(r.is_exact(), "{:#?}", r.differences);
    let heap = rt.state1.graph.heap_objects().count() as u64;
    let globals = rt.state1.graph.objects.len() as u64 - heap;
    assert!(heap > 0);
    assert_eq!(
        r.objects + r.excluded_objects,
        globals + heap,
        "every object of the old state was compared or excluded"
    );
}

#[test]
fn fields_added_reordered_and_widened_come_back_exactly() {
    let mut rt = round_trip(
        "fields",
        "",
        &[
            "SET alpha 10",
            "SET beta -20 3",
            "SET gamma 2147483647 7",
            "SET tmp 1",
            "DEL tmp",
        ],
    );
    assert!(rt.exclusions().is_empty());
    assert_exact(&rt);
    corrupt(
        &mut rt,
        &[
            Corruption {
                global: "items",
                steps: &[Step::Index(1), Step::Deref, Step::Field("value")],
                byte: 0,
                bytes: 77i32.to_le_bytes().to_vec(),
                path: "items[1]->value",
                old: Some("-20"),
                reversed: "77",
            },
            Corruption {
                global: "nitems",
                steps: &[],
                byte: 0,
                bytes: 40i32.to_le_bytes().to_vec(),
                path: "nitems",
                old: Some("3"),
                reversed: "40",
            },
        ],
        &[],
    );
}

#[test]
fn a_list_whose_node_gains_a_field_comes_back_exactly() {
    let mut rt = round_trip(
        "list",
        "[default]\n\"struct node.version\" = 1\n",
        &[
            "SET k1 one",
            "SET k2 hello",
            "SET k3 x",
            "SET k2 world",
            "DEL k3",
        ],
    );
    assert_exact(&rt);
    // Swap the two nodes' key pointers: objects pair by where they are reached from, so it
    // is the strings that differ.
    let mem = rt.back.tracee.memory();
    let bias = rt.reversed.bias;
    let first = [Step::Deref, Step::Field("key")];
    let second = [
        Step::Deref,
        Step::Field("next"),
        Step::Deref,
        Step::Field("key"),
    ];
    let (a, _) = locate(&rt.binary, bias, mem, "head", &first);
    let (b, _) = locate(&rt.binary, bias, mem, "head", &second);
    let (ka, kb) = (mem.read_u64(a).unwrap(), mem.read_u64(b).unwrap());
    mem.write(a, &kb.to_le_bytes()).unwrap();
    mem.write(b, &ka.to_le_bytes()).unwrap();
    let swapped = [
        difference("*head->key", "\"k2\"", "\"k1\""),
        difference("*head->next->key", "\"k1\"", "\"k2\""),
    ];
    corrupt(
        &mut rt,
        &[
            Corruption {
                global: "head",
                steps: &[Step::Deref, Step::Field("val"), Step::Deref],
                byte: 1,
                bytes: b"O".to_vec(),
                path: "*head->val",
                old: Some("\"world\""),
                reversed: "\"wOrld\"",
            },
            Corruption {
                global: "nnodes",
                steps: &[],
                byte: 0,
                bytes: 77u64.to_le_bytes().to_vec(),
                path: "nnodes",
                old: Some("2"),
                reversed: "77",
            },
        ],
        &swapped,
    );
}

#[test]
fn a_renamed_struct_comes_back_exactly_because_of_its_drop_rules() {
    let mut rt = round_trip(
        "rename",
        r#"
[rename]
types = { "struct record" = "struct entry" }
[drop]
globals = ["last_len"]
fields = ["struct record.legacy_rank"]
"#,
        &[
            "SET ann 5",
            "SET bob 7",
            "SET tmp 1",
            "SET cy -3",
            "DEL tmp",
            "SET bob 8",
            "SET dora 123456",
        ],
    );
    assert!(!rt.exclusions().is_empty());
    assert_exact(&rt);
    // Without the exclusions, what the rules drop is exactly what differs: the global keeps
    // the fresh v1's initial value, the field is zero in the objects the reverse allocated.
    let r = rt.diff(&Exclusions::none());
    let d = difference;
    assert_eq!(
        sorted(r.differences.clone()),
        sorted(vec![
            d("last_len", "6", "0"),
            d("records[0]->legacy_rank", "1", "0"),
            d("records[1]->legacy_rank", "2", "0"),
            d("records[2]->legacy_rank", "4", "0"),
            d("records[3]->legacy_rank", "5", "0"),
        ])
    );
    assert_eq!(r.total(), 5);
    corrupt(
        &mut rt,
        &[
            Corruption {
                global: "records",
                steps: &[Step::Index(1), Step::Deref, Step::Field("score")],
                byte: 0,
                bytes: (-8i32).to_le_bytes().to_vec(),
                path: "records[1]->score",
                old: Some("8"),
                reversed: "-8",
            },
            Corruption {
                global: "ranks_given",
                steps: &[],
                byte: 0,
                bytes: 50i32.to_le_bytes().to_vec(),
                path: "ranks_given",
                old: Some("5"),
                reversed: "50",
            },
        ],
        &[],
    );
}

#[test]
fn grown_arrays_and_a_renumbered_enum_come_back_exactly() {
    let mut rt = round_trip(
        "slots",
        "",
        &[
            "SET a RUNNING 1 2 3",
            "SET b PAUSED 4",
            "SET c DONE 100 -200 300 400",
            "SET e RUNNING 1",
            "SET d IDLE 5 5",
            "DEL e",
            "SET a DONE 9 9",
        ],
    );
    assert_exact(&rt);
    corrupt(
        &mut rt,
        &[
            Corruption {
                global: "bins",
                steps: &[Step::Index(0), Step::Deref, Step::Field("phase")],
                byte: 0,
                bytes: 2u32.to_le_bytes().to_vec(),
                path: "bins[0]->phase",
                old: Some("PH_DONE"),
                reversed: "PH_PAUSED",
            },
            Corruption {
                global: "totals",
                steps: &[Step::Index(2)],
                byte: 0,
                bytes: (-1i32).to_le_bytes().to_vec(),
                path: "totals[2]",
                old: Some("300"),
                reversed: "-1",
            },
        ],
        &[],
    );
}

#[test]
fn a_hash_table_with_callbacks_comes_back_exactly() {
    let mut fill = Vec::new();
    for i in 0..15 {
        fill.push(if i % 3 == 0 {
            format!("SET key{i:02} text{i}")
        } else {
            format!("SET key{i:02} {}", i * 1000 - 7000)
        });
    }
    fill.push("DEL key05".into());
    fill.push("SET key01 now-a-string".into());
    let fill: Vec<&str> = fill.iter().map(String::as_str).collect();
    let mut rt = round_trip("hash", "", &fill);
    assert_exact(&rt);
    // Point the first entry of the first used bucket at the other callback: a pointer out
    // of the state, compared by symbol.
    let mem = rt.back.tracee.memory();
    let bias = rt.reversed.bias;
    let array = [Step::Deref, Step::Field("buckets"), Step::Deref];
    let (buckets, _) = locate(&rt.binary, bias, mem, "table", &array);
    let used = (0..8)
        .find(|i| mem.read_u64(buckets.checked_add(8 * i).unwrap()).unwrap() != 0)
        .unwrap();
    let fmt = [
        Step::Deref,
        Step::Field("buckets"),
        Step::Deref,
        Step::At(used),
        Step::Deref,
        Step::Field("fmt"),
    ];
    let (at, _) = locate(&rt.binary, bias, mem, "table", &fmt);
    let binary = rt.binary.clone();
    let function = |name: &str| {
        let f = binary.functions().iter().find(|f| f.name == name);
        f.unwrap().low_pc + bias
    };
    let now = mem.read_u64(at).unwrap();
    let (was, other) = if now == function("fmt_int") {
        ("fmt_int", "fmt_str")
    } else {
        assert_eq!(now, function("fmt_str"));
        ("fmt_str", "fmt_int")
    };
    let (path, old, new) = (
        format!("table->buckets[{used}]->fmt"),
        format!("-> {was} in upd_hash_v1"),
        format!("-> {other} in upd_hash_v1"),
    );
    corrupt(
        &mut rt,
        &[
            Corruption {
                global: "table",
                steps: &fmt,
                byte: 0,
                bytes: function(other).to_le_bytes().to_vec(),
                path: &path,
                old: Some(&old),
                reversed: &new,
            },
            Corruption {
                global: "table",
                steps: &[Step::Deref, Step::Field("count")],
                byte: 0,
                bytes: 99u64.to_le_bytes().to_vec(),
                path: "table->count",
                old: Some("14"),
                reversed: "99",
            },
            Corruption {
                global: "upd_requests",
                steps: &[],
                byte: 0,
                bytes: 123_456u64.to_le_bytes().to_vec(),
                path: "upd_requests",
                old: None,
                reversed: "123456",
            },
        ],
        &[],
    );
}
