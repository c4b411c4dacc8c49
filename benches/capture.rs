//! Capturing the state graph of a process with ~1e6 heap objects (the `datastructs` fixture
//! at scale 25000), against a baseline measured in the same run: reading the same process's
//! heap mapping raw with `process_vm_readv` (1 MiB pieces).
//!
//! Run: `cargo bench --bench capture` (or `scripts/bench-capture.sh`, which records the
//! table in docs/bench/capture.md). `CAPTURE_SCALE` changes the scale (4 objects per unit).

use std::fmt::Write as _;
use std::time::Instant;

use fixtures::Fixture;
use tracer::procfs::MappingKind;
use tracer::{Memory, ProcessMemory, RemoteAddr};
use transplant::state::live::capture_process;

fn main() {
    let scale: u64 = std::env::var("CAPTURE_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    let mut f = Fixture::start("datastructs", &[&scale.to_string()]);
    let alloc = f.line_starting("ALLOC");
    f.wait_ready();
    let pid = f.pid();
    let mut table = String::new();
    writeln!(table, "fixture: datastructs {scale} ({alloc})").unwrap();
    writeln!(table).unwrap();
    writeln!(
        table,
        "| run | objects | heap MiB | stopped ms | heap walk ms | graph ms | capture ms | raw heap read ms | capture / raw |"
    )
    .unwrap();
    writeln!(table, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    // Run 1 pays for loading libc's debug info (in prepare, while the process runs); the
    // other runs use the cached model.
    for run in 1..=3 {
        let heap = tracer::procfs::maps(pid)
            .unwrap()
            .into_iter()
            .find(|m| m.kind == MappingKind::Heap)
            .expect("[heap]");
        let mem = ProcessMemory::new(pid);
        let len = heap.range.len() as usize;
        let mut buf = vec![0u8; len];
        buf.iter_mut().step_by(4096).for_each(|b| *b = 1); // pre-fault (NOTES.md)
        let t = Instant::now();
        let mut pieces: Vec<(RemoteAddr, &mut [u8])> = buf
            .chunks_mut(1 << 20)
            .enumerate()
            .map(|(i, c)| {
                (
                    RemoteAddr::new(heap.range.start.get() + (i as u64) * (1 << 20)),
                    c,
                )
            })
            .collect();
        mem.read_many(&mut pieces).unwrap();
        let raw = t.elapsed().as_secs_f64() * 1e3;

        let cap = capture_process(pid).unwrap();
        let s = cap.graph.summary();
        let tm = cap.times;
        let total = tm.stopped_ms + tm.heap_walk_ms + tm.graph_ms;
        let line = format!(
            "| {run} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}× |",
            s.heap_objects,
            s.heap_bytes as f64 / (1 << 20) as f64,
            tm.stopped_ms,
            tm.heap_walk_ms,
            tm.graph_ms,
            total,
            raw,
            total / raw
        );
        println!("{line}");
        writeln!(table, "{line}").unwrap();
    }
    if let Ok(path) = std::env::var("CAPTURE_REPORT") {
        std::fs::write(&path, table).expect("write report");
    }
}
