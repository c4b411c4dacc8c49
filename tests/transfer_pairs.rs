//! Live transfer for every fixture pair (issue 4): v1 filled through its socket, its state
//! converted into a freshly started v2 held at its `poll`, whose pending `poll` then returns
//! EINTR so that its loop rebuilds its descriptors from the transferred globals. v2 must
//! answer the same DUMP and SUM as v1, pass its own CHECK, and keep serving writes that free
//! and reallocate transferred objects. Then the time-traveling direction: v2's state back into
//! a fresh v1, which must answer exactly what the original v1 did.
//!
//! Connections are not transferred yet (that is the update's part): a client's descriptor in
//! the state names nothing in the new process, which its loop then drops.

mod common;

use std::time::Duration;

use common::{release, spawn_at_poll, transfer_into, HeldServer};
use fixtures::{Fixture, LineClient};
use transplant::mapping::rules::Rules;
use transplant::state::live::{capture_process, capture_stopped, LiveCapture};

/// Transfers `from` into `to` (held at its poll) under `rules`, and releases `to`: its poll
/// returns EINTR and it runs on, traced.
fn transfer_and_release(from: &LiveCapture, to: &mut HeldServer, rules: &Rules, reverse: bool) {
    transfer_into(from, to, rules, reverse);
    release(to);
}

fn run(topic: &str, rules: &str, fill: &[&str], after: &[(&str, &str)]) {
    let rules = Rules::parse(rules, "rules.toml").unwrap();
    let (v1, ready) = Fixture::start_ready(&format!("upd_{topic}_v1"), &["0"]);
    let mut c1 = LineClient::connect(ready["port"].parse().unwrap());
    for cmd in fill {
        assert_eq!(c1.ask(cmd), "OK", "{cmd}");
    }
    let (dump1, sum1) = (c1.dump(), c1.ask("SUM"));

    // Forward: v1 -> a fresh v2.
    let mut v2 = spawn_at_poll(&format!("upd_{topic}_v2"));
    let state1 = capture_process(v1.pid()).unwrap();
    transfer_and_release(&state1, &mut v2, &rules, false);
    let mut c2 = LineClient::connect(v2.port);
    assert_eq!(c2.ask("VERSION"), "v2");
    assert_eq!(c2.dump(), dump1, "v2 serves v1's items");
    assert_eq!(c2.ask("SUM"), sum1);
    assert_eq!(c2.ask("CHECK"), "PASS");

    // Back: v2's state -> a fresh v1, which must be the original v1 again.
    v2.tracee.interrupt_all(Duration::from_secs(10)).unwrap();
    let state2 = capture_stopped(&v2.tracee).unwrap();
    v2.tracee
        .resume_all(tracer::ptrace::Restart::Continue)
        .unwrap();
    let mut back = spawn_at_poll(&format!("upd_{topic}_v1"));
    transfer_and_release(&state2, &mut back, &rules, true);
    let mut cb = LineClient::connect(back.port);
    assert_eq!(cb.ask("VERSION"), "v1");
    assert_eq!(cb.dump(), dump1, "the round trip gives v1's state back");
    assert_eq!(cb.ask("SUM"), sum1);

    // v2 keeps serving, freeing and reallocating what it was given.
    for (cmd, want) in after {
        assert_eq!(c2.ask(cmd), *want, "{cmd}");
    }
    assert_eq!(c2.ask("CHECK"), "PASS");
    // v1 was only read.
    assert_eq!(c1.ask("SUM"), sum1);
    drop(v1);
}

#[test]
fn fields_added_reordered_and_widened() {
    run(
        "fields",
        "",
        &[
            "SET alpha 10",
            "SET beta -20 3",
            "SET gamma 2147483647 7",
            "SET tmp 1",
            "DEL tmp",
        ],
        &[
            ("SET big 5000000000", "OK"),
            ("DEL alpha", "OK"),
            ("SET zeta 3", "OK"),
        ],
    );
}

#[test]
fn a_list_node_gains_a_field_and_v2_reallocates() {
    run(
        "list",
        "[default]\n\"struct node.version\" = 1\n",
        &[
            "SET k1 one",
            "SET k2 hello",
            "SET k3 x",
            "SET k2 world",
            "DEL k3",
        ],
        &[
            ("SET k1 uno", "OK"),
            ("GET k1", "VALUE k1=uno"),
            ("DEL k2", "OK"),
            ("SET k6 new", "OK"),
        ],
    );
}

#[test]
fn a_struct_renamed_a_field_and_a_global_dropped_a_global_added() {
    run(
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
        &[
            ("DEL ann", "OK"),
            ("SET eve 4", "OK"),
            ("GET eve", "VALUE eve score=4"),
            ("DEL dora", "OK"),
        ],
    );
}

#[test]
fn arrays_grown_and_an_enum_renumbered() {
    run(
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
        &[
            ("SET wide RUNNING 1 2 3 4 5 6 7 800", "OK"),
            (
                "GET wide",
                "VALUE wide phase=RUNNING slots=1,2,3,4,5,6,7,800",
            ),
            ("SET c PAUSED 1", "OK"),
            ("GET c", "VALUE c phase=PAUSED slots=1"),
            ("DEL b", "OK"),
        ],
    );
}

#[test]
fn a_hash_table_with_string_keys_and_callbacks_grows_after_the_update() {
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
    let mut after: Vec<(String, String)> = vec![
        ("SET key01 -1".into(), "OK".into()),
        ("GET key01".into(), "VALUE key01=int:-1".into()),
        ("DEL key00".into(), "OK".into()),
    ];
    // Past v2's growth threshold: the transferred bucket array is freed and replaced.
    for i in 20..26 {
        after.push((format!("SET key{i} v{i}"), "OK".into()));
    }
    after.push(("GET key25".into(), "VALUE key25=str:v25".into()));
    let after: Vec<(&str, &str)> = after
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    run("hash", "", &fill, &after);
}
