//! The version-pair fixtures of issue 4 (`fixtures/c/upd_<topic>_v1.c` / `_v2.c`) are
//! consistent: v2 fed the same writes as v1 serves the same `SUM` and `DUMP`, passes its own
//! `CHECK`, and keeps working through the paths that free and reallocate objects.
//!
//! Protocol of every pair (one TCP line per request, several connections at once):
//! `SET key value...` -> `OK` | `ERR ...`; `GET key` -> `VALUE ...` | `MISSING key`;
//! `DEL key` -> `OK` | `MISSING key`; `SUM` -> `SUM <lines> <fnv1a64 hex>` (over the DUMP lines
//! before `END`); `DUMP` -> `META ...`, one line per item, `END`; `CHECK` (v2 only) -> `PASS` |
//! `FAIL <why>`; `VERSION` -> `v1` | `v2`.
//!
//! No transfer happens here: these are the baselines the transfer tests compare against.

use fixtures::Fixture;

/// A persistent client connection to a fixture server.
use fixtures::LineClient as Client;

/// A started fixture server and a connection to it.
struct Server {
    _f: Fixture,
    port: u16,
    c: Client,
}

fn start(name: &str) -> Server {
    let (f, fields) = Fixture::start_ready(name, &["0"]);
    let port: u16 = fields["port"].parse().expect("port");
    assert_eq!(
        fields["pid"].parse::<i32>().unwrap(),
        f.pid().as_raw(),
        "READY pid"
    );
    let c = Client::connect(port);
    Server { _f: f, port, c }
}

/// One version pair: the writes that fill it, the DUMP they must produce in both versions, and
/// what v2 must answer afterwards (its free/realloc paths).
struct Pair {
    topic: &'static str,
    fill: Vec<String>,
    dump: Vec<&'static str>,
    /// Requests v1 refuses (capabilities only v2 has), with v1's reply.
    v1_only: Vec<(&'static str, &'static str)>,
    /// Requests to v2 after the fill, with the exact reply expected.
    v2_after: Vec<(String, String)>,
}

fn fill_all(s: &mut Server, fill: &[String]) {
    for cmd in fill {
        assert_eq!(s.c.ask(cmd), "OK", "{cmd}");
    }
}

fn run_pair(p: &Pair) {
    let v1 = format!("upd_{}_v1", p.topic);
    let v2 = format!("upd_{}_v2", p.topic);

    let mut a = start(&v1);
    assert_eq!(a.c.ask("VERSION"), "v1");
    let empty_sum = a.c.ask("SUM");
    fill_all(&mut a, &p.fill);
    let sum1 = a.c.ask("SUM");
    let dump1 = a.c.dump();
    assert_eq!(dump1, p.dump, "{v1} DUMP");
    assert_eq!(
        sum1.split(' ').nth(1).unwrap(),
        p.dump.len().to_string(),
        "SUM counts the DUMP lines: {sum1}"
    );
    assert_ne!(sum1, empty_sum);
    // A second connection is served while the first stays open, and sees the same state.
    let mut other = Client::connect(a.port);
    assert_eq!(other.ask("SUM"), sum1);
    assert_eq!(a.c.ask("SUM"), sum1);
    for (cmd, reply) in &p.v1_only {
        assert_eq!(a.c.ask(cmd), *reply, "{v1}: {cmd}");
    }
    assert_eq!(a.c.ask("SUM"), sum1, "refused requests change nothing");

    let mut b = start(&v2);
    assert_eq!(b.c.ask("VERSION"), "v2");
    assert_eq!(b.c.ask("SUM"), empty_sum, "empty states agree");
    assert_eq!(b.c.ask("CHECK"), "PASS", "{v2} CHECK when empty");
    fill_all(&mut b, &p.fill);
    assert_eq!(b.c.dump(), dump1, "{v2} DUMP differs from {v1}");
    assert_eq!(b.c.ask("SUM"), sum1, "{v2} SUM differs from {v1}");
    assert_eq!(b.c.ask("CHECK"), "PASS", "{v2} CHECK after fill");

    // Every item answers GET the same way in both versions.
    for line in &dump1[1..] {
        let key = item_key(line);
        let g1 = a.c.ask(&format!("GET {key}"));
        assert_eq!(g1, format!("VALUE {line}"));
        assert_eq!(b.c.ask(&format!("GET {key}")), g1);
    }
    assert_eq!(a.c.ask("GET nosuch"), "MISSING nosuch");
    assert_eq!(b.c.ask("GET nosuch"), "MISSING nosuch");

    let mut other = Client::connect(b.port);
    for (i, (cmd, reply)) in p.v2_after.iter().enumerate() {
        // Alternate connections: both stay open and are served.
        let c = if i % 2 == 0 { &mut b.c } else { &mut other };
        assert_eq!(c.ask(cmd), *reply, "{v2}: {cmd}");
        assert_eq!(c.ask("CHECK"), "PASS", "{v2} CHECK after {cmd}");
    }
    let sum2 = b.c.ask("SUM");
    let dump2 = b.c.dump();
    assert_eq!(
        sum2.split(' ').nth(1).unwrap(),
        dump2.len().to_string(),
        "{sum2}"
    );
    assert_ne!(dump2, dump1, "the v2 writes changed the state");
    assert_eq!(a.c.ask("SUM"), sum1, "v1 is untouched by v2");
}

/// The key of a DUMP item line: up to the first ' ' or '='.
fn item_key(line: &str) -> &str {
    line.split([' ', '=']).next().unwrap()
}

fn cmds(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn upd_fields_pair_is_consistent() {
    run_pair(&Pair {
        topic: "fields",
        fill: cmds(&[
            "SET alpha 10",
            "SET beta -20 3",
            "SET gamma 2147483647 7",
            "SET tmp 1",
            "SET delta 0",
            "DEL tmp",
            "SET alpha 11 2",
            "SET eps -2147483648 -5",
        ]),
        dump: vec![
            "META next_id=7 count=5",
            "alpha id=1 value=11 weight=2",
            "beta id=2 value=-20 weight=3",
            "gamma id=3 value=2147483647 weight=7",
            "delta id=5 value=0 weight=1",
            "eps id=6 value=-2147483648 weight=-5",
        ],
        v1_only: vec![("SET big 5000000000", "ERR bad SET")],
        v2_after: pairs(&[
            ("SET big 5000000000", "OK"),
            ("GET big", "VALUE big id=7 value=5000000000 weight=1"),
            ("DEL beta", "OK"),
            ("SET alpha -9000000000", "OK"),
            ("GET alpha", "VALUE alpha id=1 value=-9000000000 weight=2"),
            ("DEL big", "OK"),
            ("SET zeta 3", "OK"),
            ("GET zeta", "VALUE zeta id=8 value=3 weight=1"),
            ("DEL nosuch", "MISSING nosuch"),
        ]),
    });
}

#[test]
fn upd_rename_pair_is_consistent() {
    run_pair(&Pair {
        topic: "rename",
        fill: cmds(&[
            "SET ann 5",
            "SET bob 7",
            "SET tmp 1",
            "SET cy -3",
            "DEL tmp",
            "SET bob 8",
            "SET dora 123456",
        ]),
        dump: vec![
            "META count=4 ranks_given=5",
            "ann score=5",
            "bob score=8",
            "cy score=-3",
            "dora score=123456",
        ],
        v1_only: vec![],
        v2_after: pairs(&[
            ("DEL ann", "OK"),
            ("SET eve 4", "OK"),
            ("GET eve", "VALUE eve score=4"),
            ("SET cy 30", "OK"),
            ("GET cy", "VALUE cy score=30"),
            ("DEL dora", "OK"),
        ]),
    });
}

#[test]
fn upd_slots_pair_is_consistent() {
    run_pair(&Pair {
        topic: "slots",
        fill: cmds(&[
            "SET a RUNNING 1 2 3",
            "SET b PAUSED 4",
            "SET c DONE 100 -200 300 400",
            "SET e RUNNING 1",
            "SET d IDLE 5 5",
            "DEL e",
            "SET a DONE 9 9",
        ]),
        dump: vec![
            "META count=4 last=DONE totals=118,-186,300,400",
            "a phase=DONE slots=9,9",
            "b phase=PAUSED slots=4",
            "c phase=DONE slots=100,-200,300,400",
            "d phase=IDLE slots=5,5",
        ],
        v1_only: vec![
            ("SET wide RUNNING 1 2 3 4 5", "ERR bad SET"),
            ("SET a SLEEPING 1", "ERR bad SET"),
        ],
        v2_after: pairs(&[
            ("SET wide RUNNING 1 2 3 4 5 6 7 800", "OK"),
            (
                "GET wide",
                "VALUE wide phase=RUNNING slots=1,2,3,4,5,6,7,800",
            ),
            ("SET c PAUSED 1", "OK"),
            ("GET c", "VALUE c phase=PAUSED slots=1"),
            ("DEL b", "OK"),
            ("SET d IDLE 1 1 1 1 1 1 1 1", "OK"),
            ("DEL wide", "OK"),
        ]),
    });
}

#[test]
fn upd_list_pair_is_consistent() {
    run_pair(&Pair {
        topic: "list",
        fill: cmds(&[
            "SET k1 one",
            "SET k2 hello",
            "SET k3 x",
            "SET k2 world",
            "SET k4 y",
            "DEL k3",
            "SET k5 a-much-longer-value-than-the-others",
        ]),
        dump: vec![
            "META count=4 journal=k1,k2,k3,k2,k4,k5",
            "k5=a-much-longer-value-than-the-others",
            "k4=y",
            "k2=world",
            "k1=one",
        ],
        v1_only: vec![],
        v2_after: pairs(&[
            ("SET k1 uno", "OK"),
            ("GET k1", "VALUE k1=uno"),
            ("DEL k2", "OK"),
            ("DEL k5", "OK"),
            ("SET k6 new", "OK"),
            ("GET k6", "VALUE k6=new"),
            ("DEL k1", "OK"),
        ]),
    });
}

#[test]
fn upd_hash_pair_is_consistent() {
    // 14 entries: under v2's growth threshold (16 with 8 buckets), so a transferred table is
    // grown by v2 after the update, by the SETs of `v2_after`.
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
    fill.push("SET key03 33".into());
    let mut after = pairs(&[
        ("SET key01 -1", "OK"),
        ("GET key01", "VALUE key01=int:-1"),
        ("SET key02 two", "OK"),
        ("DEL key00", "OK"),
    ]);
    for i in 20..26 {
        after.push((format!("SET key{i} v{i}"), "OK".into()));
    }
    after.push(("GET key25".into(), "VALUE key25=str:v25".into()));
    after.push(("DEL key06".into(), "OK".into()));
    after.push(("GET key06".into(), "MISSING key06".into()));
    run_pair(&Pair {
        topic: "hash",
        fill,
        dump: vec![
            "META count=14",
            "key00=str:text0",
            "key01=str:now-a-string",
            "key02=int:-5000",
            "key03=int:33",
            "key04=int:-3000",
            "key06=str:text6",
            "key07=int:0",
            "key08=int:1000",
            "key09=str:text9",
            "key10=int:3000",
            "key11=int:4000",
            "key12=str:text12",
            "key13=int:6000",
            "key14=int:7000",
        ],
        v1_only: vec![],
        v2_after: after,
    });
}
