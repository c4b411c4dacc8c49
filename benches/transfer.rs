//! Transfer of a ~1e6-object state (the `datastructs` fixture at scale 25000) into a fresh
//! instance of the same program, against a baseline measured in the same run: the raw copy of
//! the same number of bytes, read from the source with `process_vm_readv` and written into
//! the target with `process_vm_writev` (1 MiB pieces).
//!
//! Run: `cargo bench --bench transfer` (or `scripts/bench-transfer.sh`, which records the
//! table in docs/bench/transfer.md). `TRANSFER_SCALE` changes the scale (4 objects per unit).

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use fixtures::{Fixture, LineReader};
use tracer::procfs::MappingKind;
use tracer::remote::RemoteSession;
use tracer::spawn::{spawn, SpawnConfig};
use tracer::symbols::SymbolResolver;
use tracer::{Memory, MemoryMut, ProcessMemory, RemoteAddr, SyscallAction};
use transplant::mapping::rules::Rules;
use transplant::mapping::Mapping;
use transplant::state::live::{capture_process, capture_stopped};
use transplant::transfer::{apply, plan_mapped, plan_same_layout, read_only_data, Destination};

fn main() {
    let scale: u64 = std::env::var("TRANSFER_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    let mut src = Fixture::start("datastructs", &[&scale.to_string()]);
    let alloc = src.line_starting("ALLOC");
    let sum = src.line_starting("SUM");
    src.wait_ready();

    let (in_r, in_w) = nix::unistd::pipe().unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let cfg = SpawnConfig::new(fixtures::path("datastructs"))
        .argv(["datastructs", "1"])
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1);
    let mut dst = spawn(&cfg).unwrap();
    drop((in_r, out_w));
    let mut at_stdin = |_: &tracer::ProcessMemory, e: &tracer::SyscallEntry| {
        Ok(if e.nr == libc::SYS_read as u64 && e.args[0] == 0 {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    let tid = dst
        .run(Duration::from_secs(60), None, Some(&mut at_stdin))
        .unwrap()
        .tid();

    let from = capture_process(src.pid()).unwrap();
    let to = capture_stopped(&dst).unwrap();
    let symbols = SymbolResolver::new(dst.pid()).unwrap();
    let rodata = read_only_data(dst.pid()).unwrap();
    let d = Destination {
        binary: &to.binary,
        bias: to.bias,
        symbols: &symbols,
        graph: &to.graph,
        rodata: &rodata,
    };
    let t = Instant::now();
    let plan = plan_same_layout(&from.graph, &from.binary, &d).unwrap();
    let plan_ms = t.elapsed().as_secs_f64() * 1e3;
    // The same state planned through the mapping machinery (every object converted field by
    // field under the identity mapping of the program to itself): what an update pays.
    let rules = Rules::default();
    let mapping = Mapping::new(&from.binary, &to.binary, &rules);
    let t = Instant::now();
    let mapped = plan_mapped(&from.graph, &from.binary, &d, &mapping, &rules).unwrap();
    let mapped_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(mapped.objects.len(), plan.objects.len());
    drop(mapped);
    let malloc = symbols.lookup_in("libc.so", "malloc").unwrap();
    let free = symbols.lookup_in("libc.so", "free").unwrap();
    let bytes = plan.bytes();

    // Baseline: the same number of bytes read raw from the source's heap and written raw into
    // a scratch mapping of the target.
    let heap = tracer::procfs::maps(src.pid())
        .unwrap()
        .into_iter()
        .find(|m| m.kind == MappingKind::Heap)
        .unwrap();
    let len = (bytes as usize).min(heap.range.len() as usize);
    let (raw_read_ms, raw_write_ms, applied, apply_ms) = {
        let mut s = RemoteSession::open(&mut dst, tid).unwrap();
        let scratch = s.mmap_anonymous(len as u64).unwrap();
        let mut buf = vec![0u8; len];
        buf.iter_mut().step_by(4096).for_each(|b| *b = 1);
        let src_mem = ProcessMemory::new(src.pid());
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
        src_mem.read_many(&mut pieces).unwrap();
        let raw_read = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let writes: Vec<(RemoteAddr, &[u8])> = buf
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| (RemoteAddr::new(scratch.get() + (i as u64) * (1 << 20)), c))
            .collect();
        s.tracee().memory().write_many(&writes).unwrap();
        let raw_write = t.elapsed().as_secs_f64() * 1e3;
        s.munmap(scratch, len as u64).unwrap();

        let t = Instant::now();
        let applied = apply(&mut s, malloc, free, &plan).unwrap();
        let apply_ms = t.elapsed().as_secs_f64() * 1e3;
        s.close().unwrap();
        (raw_read, raw_write, applied, apply_ms)
    };

    // The transferred state is the source's.
    dst.resume_all(tracer::ptrace::Restart::Continue).unwrap();
    let mut out = LineReader::new(File::from(out_r));
    let mut stdin = File::from(in_w);
    while !out
        .line(fixtures::LINE_TIMEOUT)
        .unwrap()
        .starts_with("READY")
    {}
    stdin.write_all(b"sum\n").unwrap();
    assert_eq!(
        out.line(Duration::from_secs(120)).unwrap(),
        sum,
        "transferred state differs"
    );

    let capture_ms = from.times.stopped_ms + from.times.heap_walk_ms + from.times.graph_ms;
    let raw = raw_read_ms + raw_write_ms;
    let mut table = String::new();
    use std::fmt::Write as _;
    writeln!(
        table,
        "fixture: datastructs {scale} ({alloc}); checksum verified in the target"
    )
    .unwrap();
    writeln!(table).unwrap();
    writeln!(table, "| objects | MiB | capture ms | plan ms | plan_mapped ms (identity mapping) | apply ms (alloc + write + free) | raw read + write ms | (plan + apply) / raw |").unwrap();
    writeln!(table, "|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    let line = format!(
        "| {} | {:.1} | {capture_ms:.0} | {plan_ms:.0} | {mapped_ms:.0} | {apply_ms:.0} | {raw:.1} ({raw_read_ms:.1} + {raw_write_ms:.1}) | {:.1}× |",
        applied.allocated,
        bytes as f64 / (1 << 20) as f64,
        (plan_ms + apply_ms) / raw
    );
    writeln!(table, "{line}").unwrap();
    print!("{table}");
    if let Ok(path) = std::env::var("TRANSFER_REPORT") {
        std::fs::write(&path, table).expect("write report");
    }
}
