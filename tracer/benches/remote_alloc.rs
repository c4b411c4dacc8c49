//! Per-object cost of allocating objects inside a tracee with its own `malloc`: one remote
//! call per object versus one injected loop per batch ([`RemoteSession::call_many`]), for
//! 1e3..1e6 objects, measured in the same run against the same process.
//!
//! Run: `cargo bench -p tracer --bench remote_alloc` (or `scripts/bench-remote-alloc.sh`,
//! which also records the table in docs/bench/remote_alloc.md). Set `REMOTE_ALLOC_MAX=100000`
//! to stop at 1e5.

use std::fmt::Write as _;
use std::time::Instant;

use fixtures::Fixture;
use tracer::remote::RemoteSession;
use tracer::Tracee;

fn main() {
    let max: u64 = std::env::var("REMOTE_ALLOC_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (f, _) = Fixture::start_ready("blocker", &[]);
    let pid = f.pid();
    let malloc = tracer::symbols::lookup_in(pid, "libc.so", "malloc").expect("malloc");
    let free = tracer::symbols::lookup_in(pid, "libc.so", "free").expect("free");
    let mut t = Tracee::seize(pid).expect("seize");
    let mut s = RemoteSession::open(&mut t, pid).expect("session");
    // Warm up: fault in the scratch pages and malloc's arena.
    let warm = s.call_many(malloc, &[64; 1000]).unwrap();
    s.call_many(free, &warm).unwrap();

    let mut table = String::new();
    writeln!(
        table,
        "| objects | one call each: µs/object | batched loop: µs/object | speed-up |"
    )
    .unwrap();
    writeln!(table, "|---:|---:|---:|---:|").unwrap();
    let mut n = 1000u64;
    while n <= max {
        let sizes: Vec<u64> = (0..n).map(|i| 16 + (i % 64) * 8).collect();

        let t0 = Instant::now();
        let mut ptrs = Vec::with_capacity(n as usize);
        for &size in &sizes {
            ptrs.push(s.call(malloc, &[size]).unwrap());
        }
        let single = t0.elapsed();
        s.call_many(free, &ptrs).unwrap();

        let t0 = Instant::now();
        let ptrs = s.call_many(malloc, &sizes).unwrap();
        let batched = t0.elapsed();
        assert!(ptrs.iter().all(|&p| p != 0));
        s.call_many(free, &ptrs).unwrap();

        let per_single = single.as_secs_f64() * 1e6 / n as f64;
        let per_batched = batched.as_secs_f64() * 1e6 / n as f64;
        let line = format!(
            "| {n} | {per_single:.2} | {per_batched:.3} | {:.0}× |",
            per_single / per_batched
        );
        println!("{line}");
        writeln!(table, "{line}").unwrap();
        n *= 10;
    }
    s.close().unwrap();
    t.detach().unwrap();
    drop(f);
    if let Ok(path) = std::env::var("REMOTE_ALLOC_REPORT") {
        std::fs::write(&path, table).expect("write report");
        eprintln!("table written to {path}");
    }
}
