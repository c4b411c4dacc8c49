//! Helpers shared by the live transfer tests (tests/transfer_pairs.rs, tests/verify.rs): a
//! server fixture spawned under trace and held at its `poll`, and a transfer into it.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use fixtures::LineReader;
use tracer::remote::RemoteSession;
use tracer::spawn::{spawn, SpawnConfig};
use tracer::symbols::SymbolResolver;
use tracer::{SyscallAction, Tracee};
use transplant::mapping::rules::Rules;
use transplant::mapping::Mapping;
use transplant::state::live::{capture_stopped, LiveCapture};
use transplant::transfer::{apply, plan_mapped, read_only_data, Destination};

/// A server fixture spawned under trace, held at its `poll`, with its port.
pub struct HeldServer {
    pub tracee: Tracee,
    pub tid: tracer::Pid,
    pub port: u16,
}

pub fn spawn_at_poll(name: &str) -> HeldServer {
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let cfg = SpawnConfig::new(fixtures::path(name))
        .argv([name, "0"])
        .fd(out_w.as_raw_fd(), 1);
    let mut tracee = spawn(&cfg).unwrap();
    drop(out_w);
    let mut at_poll = |_: &tracer::ProcessMemory, e: &tracer::SyscallEntry| {
        Ok(if e.nr == libc::SYS_poll as u64 {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    let held = tracee
        .run(Duration::from_secs(20), None, Some(&mut at_poll))
        .unwrap();
    let mut out = LineReader::new(File::from(out_r));
    let ready = fixtures::parse_fields(
        out.line(fixtures::LINE_TIMEOUT)
            .unwrap()
            .trim_start_matches("READY"),
    );
    HeldServer {
        tracee,
        tid: held.tid(),
        port: ready["port"].parse().unwrap(),
    }
}

/// Transfers `from` into `to` (held at its poll) under `rules`, leaving `to` held, and
/// returns the mapping used.
pub fn transfer_into(
    from: &LiveCapture,
    to: &mut HeldServer,
    rules: &Rules,
    reverse: bool,
) -> Mapping {
    let target = capture_stopped(&to.tracee).unwrap();
    let mapping = if reverse {
        Mapping::reverse(&target.binary, &from.binary, rules)
    } else {
        Mapping::new(&from.binary, &target.binary, rules)
    };
    let refused: Vec<_> = mapping.refused().collect();
    assert!(refused.is_empty(), "{refused:#?}");
    let pid = to.tracee.pid();
    let symbols = SymbolResolver::new(pid).unwrap();
    let rodata = read_only_data(pid).unwrap();
    let dst = Destination {
        binary: &target.binary,
        bias: target.bias,
        symbols: &symbols,
        graph: &target.graph,
        rodata: &rodata,
    };
    let effective = if reverse {
        rules.inverted()
    } else {
        rules.clone()
    };
    let plan = plan_mapped(&from.graph, &from.binary, &dst, &mapping, &effective).unwrap();
    let malloc = symbols.lookup_in("libc.so", "malloc").unwrap();
    let free = symbols.lookup_in("libc.so", "free").unwrap();
    {
        let mut s = RemoteSession::open(&mut to.tracee, to.tid).unwrap();
        apply(&mut s, malloc, free, &plan).unwrap();
        s.close().unwrap();
    }
    mapping
}

/// Lets a held server go on: its pending poll returns EINTR and its loop runs, traced.
pub fn release(s: &mut HeldServer) {
    s.tracee
        .skip_held_syscall(s.tid, -(libc::EINTR as i64))
        .unwrap();
    s.tracee
        .resume_all(tracer::ptrace::Restart::Continue)
        .unwrap();
}
