//! Transfer of a live state into another live process: `datastructs` at one scale is rebuilt
//! inside a freshly started `datastructs` at another scale, held at its quiescent `read` on
//! stdin; afterwards the target's own checksum of its state equals the source's, its start-up
//! objects are freed, and the source was never written to.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use fixtures::{Fixture, LineReader};
use tracer::remote::RemoteSession;
use tracer::spawn::{spawn, SpawnConfig};
use tracer::symbols::SymbolResolver;
use tracer::{Held, SyscallAction};
use transplant::state::live::{capture_process, capture_stopped};
use transplant::transfer::{apply, plan_same_layout, Destination};

#[test]
fn a_state_moves_into_a_fresh_instance_and_checks_out() {
    // The source: a running process with a state of its own.
    let mut src = Fixture::start("datastructs", &["3"]);
    let src_alloc = fixtures::parse_fields(&src.line_starting("ALLOC"));
    let src_sum = src.line_starting("SUM");
    src.wait_ready();

    // The target: the same program at another scale, held at its first read of stdin.
    let (in_r, in_w) = nix::unistd::pipe().unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let cfg = SpawnConfig::new(fixtures::path("datastructs"))
        .argv(["datastructs", "1"])
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1);
    let mut dst = spawn(&cfg).unwrap();
    drop((in_r, out_w));
    let mut out = LineReader::new(File::from(out_r));
    let mut stdin = File::from(in_w);
    let mut quiescent = |_: &tracer::ProcessMemory, e: &tracer::SyscallEntry| {
        Ok(if e.nr == libc::SYS_read as u64 && e.args[0] == 0 {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    let held = dst
        .run(Duration::from_secs(20), None, Some(&mut quiescent))
        .unwrap();
    let Held::Syscall(entry) = held else {
        panic!("{held:?}")
    };
    let dst_alloc = fixtures::parse_fields(&out.line(fixtures::LINE_TIMEOUT).unwrap());
    assert_eq!(dst_alloc["count"], "43");
    let dst_sum = out.line(fixtures::LINE_TIMEOUT).unwrap();
    assert_ne!(
        dst_sum, src_sum,
        "the target starts with a state of its own"
    );
    assert!(out
        .line(fixtures::LINE_TIMEOUT)
        .unwrap()
        .starts_with("READY"));

    // Capture both, plan, apply.
    let from = capture_process(src.pid()).unwrap();
    assert_eq!(
        from.graph.summary().heap_objects.to_string(),
        src_alloc["count"]
    );
    let to = capture_stopped(&dst).unwrap();
    let symbols = SymbolResolver::new(dst.pid()).unwrap();
    let plan = plan_same_layout(
        &from.graph,
        &from.binary,
        &Destination {
            binary: &to.binary,
            bias: to.bias,
            symbols: &symbols,
            graph: &to.graph,
        },
    )
    .unwrap();
    assert_eq!(plan.heap_objects().to_string(), src_alloc["count"]);
    assert_eq!(
        plan.displaced.len(),
        43,
        "all of the target's own objects are displaced"
    );
    let malloc = symbols.lookup_in("libc.so", "malloc").unwrap();
    let free = symbols.lookup_in("libc.so", "free").unwrap();
    let applied = {
        let mut s = RemoteSession::open(&mut dst, entry.tid).unwrap();
        let applied = apply(&mut s, malloc, free, &plan).unwrap();
        s.close().unwrap();
        applied
    };
    assert_eq!(applied.freed, 43);

    // The target, resumed, computes the source's checksum over its new state.
    dst.resume_all(tracer::ptrace::Restart::Continue).unwrap();
    stdin.write_all(b"sum\n").unwrap();
    let line = out.line(fixtures::LINE_TIMEOUT).unwrap();
    assert_eq!(line, src_sum);

    // Its heap now holds exactly the transferred objects: captured again, nothing else.
    let mut held_again = |_: &tracer::ProcessMemory, e: &tracer::SyscallEntry| {
        Ok(if e.nr == libc::SYS_read as u64 && e.args[0] == 0 {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    stdin.write_all(b"sum\n").unwrap();
    assert_eq!(out.line(fixtures::LINE_TIMEOUT).unwrap(), src_sum);
    dst.run(Duration::from_secs(20), None, Some(&mut held_again))
        .unwrap();
    let after = capture_stopped(&dst).unwrap();
    assert_eq!(
        after.graph.summary().heap_objects.to_string(),
        src_alloc["count"]
    );
    let in_use_chunks = after.heap.in_use().count() as u64;
    let libc_own = in_use_chunks - after.graph.summary().heap_objects;
    assert!(
        libc_own <= 8,
        "the 43 displaced objects were freed ({libc_own} others in use)"
    );

    // The source was only read: the same answer, still serving.
    assert_eq!(src.ask("sum", "SUM"), src_sum);
}
