//! `transplant inspect` as a user runs it: text against a golden file (addresses and timings
//! normalised; `TRANSPLANT_UPDATE_GOLDEN=1` rewrites it), JSON against the fixture's own
//! counts, and the error for a missing process.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fixtures::Fixture;

fn transplant(args: Vec<String>) -> Output {
    fixtures::within(Duration::from_secs(60), "transplant inspect", move || {
        Command::new(env!("CARGO_BIN_EXE_transplant"))
            .args(&args)
            .output()
            .expect("run transplant")
    })
}

/// Replaces every address (0x followed by 6+ hex digits) with `0xADDR`, and drops the timing
/// line, which differ from run to run.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with("# process stopped")) {
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i..].starts_with(b"0x") {
                let n = b[i + 2..]
                    .iter()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
                if n >= 6 {
                    out.push_str("0xADDR");
                    i += 2 + n;
                    continue;
                }
            }
            out.push(b[i] as char);
            i += 1;
        }
        out.push('\n');
    }
    out
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
fn inspect_heap_text_matches_the_golden_file() {
    let mut f = Fixture::start("datastructs", &["1"]);
    f.wait_ready();
    let out = transplant(vec![
        "inspect".into(),
        "--pid".into(),
        f.pid().to_string(),
        "--heap".into(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    golden(
        "inspect_datastructs_heap.txt",
        &normalise(&String::from_utf8_lossy(&out.stdout)),
    );
    // Still serving, unchanged.
    assert!(f.ask("sum", "SUM").starts_with("SUM "));
}

#[test]
fn inspect_json_counts_what_the_program_allocated() {
    let mut f = Fixture::start("datastructs", &["3"]);
    let alloc = fixtures::parse_fields(&f.line_starting("ALLOC"));
    f.wait_ready();
    let out = transplant(vec![
        "inspect".into(),
        "--pid".into(),
        f.pid().to_string(),
        "--heap".into(),
        "--json".into(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = &v["heap"]["summary"];
    assert_eq!(
        summary["heap_objects"].as_u64().unwrap().to_string(),
        alloc["count"]
    );
    assert_eq!(
        summary["heap_bytes"].as_u64().unwrap().to_string(),
        alloc["usable"]
    );
    assert_eq!(
        v["heap"]["objects"].as_array().unwrap().len().to_string(),
        alloc["count"]
    );
    let npoints = v["globals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "npoints")
        .unwrap();
    assert_eq!(npoints["value"], "12");
    assert_eq!(npoints["type_name"], "int");
}

#[test]
fn inspect_of_a_missing_process_says_so() {
    let out = transplant(vec!["inspect".into(), "--pid".into(), "2147483000".into()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such process 2147483000"), "{err}");
    assert!(out.stdout.is_empty());
}
