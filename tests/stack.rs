//! `transplant::stack` on real processes, with gdb as the oracle: every thread of the
//! `stack_select` and `stack_pool` fixtures (built -O0 and -O2), a signal frame, a Rust program,
//! a binary stripped of its CFI (the frame-pointer fallback), and stacks that do not end.
//!
//! gdb runs after we detach (a process has one tracer at a time), through its Python API so
//! that frame kinds are explicit: its physical frames must have our pcs, in order; frames of
//! the program must have our function names and inline chains; frames of libraries (whose
//! DWARF we do not read) must have our names up to glibc's alias prefixes (`__GI___select` is
//! `select`). gdb's inline frames inside libc and its "tail call" frames (synthesised from
//! DWARF call-site information, not on the stack) have no counterpart here and are skipped.
//! At -O0 every local gdb shows in a frame of the program has our value, text for text.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fixtures::{Fixture, Scratch};
use tracer::{Pid, RemoteAddr, Snapshot, Tracee};
use transplant::inspect::stacks::{stacks, Stacks, ThreadView};
use transplant::stack::{
    self, unwind_thread, unwind_thread_with, End, Options, Place, ProcessImages, Registers,
    UnwoundBy,
};

// ---------------------------------------------------------------------------------------
// The gdb oracle

#[derive(Debug, Clone)]
struct GdbFrame {
    kind: String,
    pc: u64,
    /// None for the program, else the library's path.
    solib: Option<String>,
    name: String,
    locals: Vec<(String, String)>,
}

#[derive(Debug)]
struct GdbThread {
    tid: i32,
    frames: Vec<GdbFrame>,
}

const ORACLE: &str = r#"
import gdb
gdb.execute("set print pretty off")
gdb.execute("set width 0")
gdb.execute("set backtrace past-main on")
gdb.execute("set backtrace past-entry on")
kinds = {gdb.NORMAL_FRAME: "normal", gdb.INLINE_FRAME: "inline", gdb.SIGTRAMP_FRAME: "sigtramp",
         gdb.TAILCALL_FRAME: "tailcall"}
for t in sorted(gdb.selected_inferior().threads(), key=lambda t: t.ptid[1]):
    t.switch()
    print("THREAD %d" % t.ptid[1])
    f = gdb.newest_frame()
    while f is not None:
        so = gdb.solib_name(f.pc()) or "-"
        print("FRAME %s %#x %s %s" % (kinds.get(f.type(), "other"), f.pc(), so, f.name() or "??"))
        if so == "-" and f.type() in (gdb.NORMAL_FRAME, gdb.INLINE_FRAME):
            try:
                b = f.block()
            except RuntimeError:
                b = None
            while b is not None:
                for sym in b:
                    if sym.is_variable or sym.is_argument:
                        try:
                            v = str(sym.value(f))
                        except Exception as e:
                            v = "<error %s>" % e
                        print("LOCAL %s = %s" % (sym.name, v.replace("\n", " ")))
                if b.function is not None:
                    break
                b = b.superblock
        f = f.older()
"#;

/// Attaches gdb to `pid` and lists every thread's frames (and their locals in the program).
fn gdb_stacks(pid: Pid, scratch: &Scratch) -> Vec<GdbThread> {
    let script = scratch.path("oracle.py");
    std::fs::write(&script, ORACLE).unwrap();
    let out = Command::new("timeout")
        .env("LC_ALL", "C")
        .args(["60", "gdb", "-nx", "-batch", "-p"])
        .arg(pid.to_string())
        .arg("-x")
        .arg(&script)
        .output()
        .expect("running gdb");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut threads: Vec<GdbThread> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("THREAD ") {
            threads.push(GdbThread {
                tid: t.trim().parse().unwrap(),
                frames: Vec::new(),
            });
        } else if let Some(f) = line.strip_prefix("FRAME ") {
            let mut it = f.splitn(4, ' ');
            let kind = it.next().unwrap().to_owned();
            let pc = u64::from_str_radix(it.next().unwrap().trim_start_matches("0x"), 16).unwrap();
            let so = it.next().unwrap();
            let name = it.next().unwrap_or("??").to_owned();
            threads.last_mut().unwrap().frames.push(GdbFrame {
                kind,
                pc,
                solib: (so != "-").then(|| so.to_owned()),
                name,
                locals: Vec::new(),
            });
        } else if let Some(l) = line.strip_prefix("LOCAL ") {
            let (n, v) = l.split_once(" = ").unwrap();
            let frames = &mut threads.last_mut().unwrap().frames;
            frames
                .last_mut()
                .unwrap()
                .locals
                .push((n.to_owned(), v.to_owned()));
        }
    }
    assert!(
        !threads.is_empty(),
        "gdb listed no threads: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    threads
}

/// A physical frame as gdb shows it: the frame, the inline frames above it (outermost first)
/// and the locals of all of them by function.
struct Physical {
    pc: u64,
    solib: Option<String>,
    name: String,
    inlined: Vec<String>,
    locals: Vec<(String, String, String)>,
}

fn physical(t: &GdbThread) -> Vec<Physical> {
    let mut out = Vec::new();
    let mut pending: Vec<&GdbFrame> = Vec::new();
    for f in &t.frames {
        match f.kind.as_str() {
            "inline" => pending.push(f),
            "tailcall" => {}
            _ => {
                let mut locals = Vec::new();
                for p in pending.iter().chain([&f]) {
                    for (n, v) in &p.locals {
                        locals.push((p.name.clone(), n.clone(), v.clone()));
                    }
                }
                let inlined = if f.solib.is_none() {
                    pending.iter().rev().map(|p| p.name.clone()).collect()
                } else {
                    Vec::new()
                };
                out.push(Physical {
                    pc: f.pc,
                    solib: f.solib.clone(),
                    name: f.name.clone(),
                    inlined,
                    locals,
                });
                pending.clear();
            }
        }
    }
    out
}

/// glibc's names of one function without alias prefixes and symbol versions.
fn core_name(n: &str) -> String {
    let n = n.split('@').next().unwrap_or(n);
    let n = n.trim_start_matches("__GI_").trim_start_matches('_');
    let n = n.strip_prefix("libc_").unwrap_or(n);
    n.trim_start_matches('_').to_owned()
}

/// Holds our stacks of every thread against gdb's; with `locals`, every local gdb shows in a
/// frame of the program must have our value.
/// Returns how many frames and locals were compared.
fn assert_matches_gdb(ours: &Stacks, gdb: &[GdbThread], locals: bool) -> (usize, usize) {
    let (mut frames, mut values) = (0, 0);
    assert_eq!(
        ours.threads.iter().map(|t| t.tid).collect::<Vec<_>>(),
        gdb.iter().map(|t| t.tid).collect::<Vec<_>>(),
        "threads"
    );
    for (t, g) in ours.threads.iter().zip(gdb) {
        let theirs = physical(g);
        let show = || {
            format!(
                "thread {}: ours {:?}\n gdb {:?}",
                t.tid,
                t.frames
                    .iter()
                    .map(|f| format!("{}@{}", f.function, f.pc))
                    .collect::<Vec<_>>(),
                theirs
                    .iter()
                    .map(|f| format!("{}@{:#x}", f.name, f.pc))
                    .collect::<Vec<_>>()
            )
        };
        assert!(t.error.is_none(), "thread {}: {:?}", t.tid, t.error);
        assert_eq!(t.frames.len(), theirs.len(), "frame count; {}", show());
        for (f, gf) in t.frames.iter().zip(&theirs) {
            frames += 1;
            assert_eq!(f.pc.get(), gf.pc, "pc of frame #{}; {}", f.index, show());
            if gf.solib.is_none() {
                assert_eq!(
                    f.function,
                    gf.name,
                    "name of frame #{}; {}",
                    f.index,
                    show()
                );
                assert_eq!(f.inline_chain, gf.inlined, "inline chain of #{}", f.index);
            } else if gf.name != "??" {
                assert_eq!(
                    core_name(&f.function),
                    core_name(&gf.name),
                    "name of frame #{}; {}",
                    f.index,
                    show()
                );
            }
            if locals && gf.solib.is_none() {
                for (function, name, value) in &gf.locals {
                    let l = f
                        .locals
                        .iter()
                        .find(|l| &l.name == name && &l.function == function)
                        .unwrap_or_else(|| {
                            panic!("frame #{}: no local {function}::{name}", f.index)
                        });
                    assert_eq!(
                        l.value.as_deref(),
                        Some(value.as_str()),
                        "frame #{} {function}::{name} ({:?})",
                        f.index,
                        l
                    );
                    values += 1;
                }
            }
        }
    }
    (frames, values)
}

/// The chain of one thread, outermost first, from the view.
fn chain(t: &ThreadView) -> Vec<String> {
    t.frames
        .iter()
        .rev()
        .flat_map(|f| std::iter::once(f.function.clone()).chain(f.inline_chain.iter().cloned()))
        .collect()
}

fn local<'a>(
    t: &'a ThreadView,
    function: &str,
    name: &str,
) -> &'a transplant::inspect::stacks::LocalView {
    t.frames
        .iter()
        .flat_map(|f| f.locals.iter())
        .find(|l| l.function == function && l.name == name)
        .unwrap_or_else(|| panic!("no local {function}::{name} in {t:?}"))
}

/// Waits until every thread of `pid` is blocked in one of the calls the fixtures park in
/// (`read`, `select`, `pselect6`, `futex`), as `/proc/PID/task/TID/syscall` shows: the ready
/// line is printed just before the call, so the process is read only once it is in it.
fn wait_parked(pid: Pid) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let parked = tracer::procfs::threads(pid).unwrap().iter().all(|tid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
                .unwrap_or_default();
            let nr = s.split(' ').next().unwrap_or("");
            ["0", "23", "270", "202"].contains(&nr)
        });
        if parked {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} never parked"
        );
        std::thread::yield_now();
    }
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

// ---------------------------------------------------------------------------------------
// The select server: state in main's frame, a loop struct passed down by pointer

fn select_server(name: &str, optimised: bool) {
    let scratch = Scratch::new(std::env::temp_dir(), &format!("stack-{name}"));
    let (fx, ready) = Fixture::start_ready(name, &[]);
    let pid = fx.pid();
    wait_parked(pid);
    let ours = stacks(pid).expect("stacks");
    let t = &ours.threads[0];
    assert_eq!(t.name, name.chars().take(15).collect::<String>());
    let c = chain(t);
    assert_eq!(
        &c[c.len() - 3..],
        ["main", "serve_loop", "select"],
        "chain {c:?}"
    );
    assert_eq!(c[0], "_start", "the stack goes down to _start: {c:?}");
    assert!(matches!(
        t.end,
        Some(End::EntryFunction(_)) | Some(End::Outermost)
    ));
    // main's frame holds the loop struct whose address the fixture printed, pointing at the
    // heap table it printed; serve_loop's parameter points at it.
    let lp = local(t, "main", "loop");
    assert_eq!(
        lp.address,
        Some(RemoteAddr::new(hex(&ready["loop"]))),
        "{lp:?}"
    );
    let table = local(t, "main", "table");
    assert_eq!(
        table.value.as_deref(),
        Some(ready["table"].as_str()),
        "{table:?}"
    );
    assert_eq!(local(t, "main", "served").value.as_deref(), Some("5"));
    let el = local(t, "serve_loop", "el");
    assert_eq!(el.value.as_deref(), Some(ready["loop"].as_str()), "{el:?}");
    assert!(
        lp.value.as_deref().unwrap().contains("name = ")
            && lp.value.as_deref().unwrap().contains("\"main-loop\""),
        "{lp:?}"
    );
    let gdb = gdb_stacks(pid, &scratch);
    let (frames, values) = assert_matches_gdb(&ours, &gdb, !optimised);
    assert_eq!(frames, t.frames.len());
    if !optimised {
        // serve_loop's el, buf, rd, n, r and main's argc, argv, served, table, loop.
        assert_eq!(values, 10);
        assert!(t.frames.iter().all(|f| f.unwound_by == UnwoundBy::Cfi));
    }
    drop(fx);
}

#[test]
fn stack_select_o0_frames_and_locals_match_gdb() {
    fixtures::within(Duration::from_secs(100), "select -O0", || {
        select_server("stack_select", false)
    });
}

#[test]
fn stack_select_o2_frames_match_gdb() {
    fixtures::within(Duration::from_secs(100), "select -O2", || {
        select_server("stack_select-O2", true)
    });
}

// ---------------------------------------------------------------------------------------
// The thread pool parked in pthread_cond_wait

fn pool(name: &str, optimised: bool) {
    let scratch = Scratch::new(std::env::temp_dir(), &format!("stack-{name}"));
    let (fx, _) = Fixture::start_ready(name, &[]);
    let pid = fx.pid();
    wait_parked(pid);
    let ours = stacks(pid).expect("stacks");
    assert_eq!(ours.threads.len(), 4, "{ours:?}");
    let mut names: Vec<&str> = ours.threads.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(&names[1..], ["worker-0", "worker-1", "worker-2"]);
    let mut ids = Vec::new();
    for t in ours
        .threads
        .iter()
        .filter(|t| t.name.starts_with("worker-"))
    {
        let c = chain(t);
        assert_eq!(
            &c[..4],
            ["clone3", "start_thread", "worker", "pthread_cond_wait"],
            "{}: {c:?}",
            t.name
        );
        assert!(matches!(
            t.end,
            Some(End::Outermost) | Some(End::EntryFunction(_))
        ));
        if !optimised {
            ids.push(local(t, "worker", "id").value.clone().unwrap());
            assert_eq!(local(t, "worker", "done").value.as_deref(), Some("0"));
        }
    }
    if !optimised {
        ids.sort();
        assert_eq!(ids, ["0", "1", "2"]);
    }
    let main = ours.threads.iter().find(|t| t.tid == pid.as_raw()).unwrap();
    assert_eq!(chain(main)[chain(main).len() - 2..], ["main", "read"]);
    let gdb = gdb_stacks(pid, &scratch);
    let (frames, values) = assert_matches_gdb(&ours, &gdb, !optimised);
    assert_eq!(frames, ours.frames);
    if !optimised {
        // Each worker's arg, id, done, name; main's threads, line, n.
        assert_eq!(values, 3 * 4 + 3);
    }
    drop(fx);
}

#[test]
fn stack_pool_o0_threads_in_cond_wait_match_gdb() {
    fixtures::within(Duration::from_secs(100), "pool -O0", || {
        pool("stack_pool", false)
    });
}

#[test]
fn stack_pool_o2_threads_in_cond_wait_match_gdb() {
    fixtures::within(Duration::from_secs(100), "pool -O2", || {
        pool("stack_pool-O2", true)
    });
}

// ---------------------------------------------------------------------------------------
// A signal frame

#[test]
fn stack_through_a_signal_frame_matches_gdb() {
    fixtures::within(Duration::from_secs(100), "signal frame", || {
        let scratch = Scratch::new(std::env::temp_dir(), "stack-signal");
        let (mut fx, _) = Fixture::start_ready("stack_select", &[]);
        fx.send("signal");
        assert_eq!(fx.line(), "IN_HANDLER");
        let pid = fx.pid();
        wait_parked(pid);
        let ours = stacks(pid).expect("stacks");
        let c = chain(&ours.threads[0]);
        let at = c
            .iter()
            .position(|n| n == "__restore_rt")
            .expect("a signal frame");
        assert_eq!(&c[at + 1..], ["on_usr1", "read"], "{c:?}");
        let before: Vec<&str> = c[..at].iter().map(String::as_str).collect();
        assert!(
            before.ends_with(&[
                "main",
                "serve_loop",
                "handle_line",
                "raise",
                "__pthread_kill_implementation"
            ]),
            "{c:?}"
        );
        let gdb = gdb_stacks(pid, &scratch);
        let (frames, values) = assert_matches_gdb(&ours, &gdb, true);
        assert_eq!(frames, ours.frames);
        assert!(values >= 10, "{values} locals compared");
        drop(fx);
    });
}

// ---------------------------------------------------------------------------------------
// No CFI at all in the program: the frame-pointer fallback

#[test]
fn stack_without_cfi_follows_frame_pointers() {
    fixtures::within(Duration::from_secs(100), "frame pointers", || {
        let scratch = Scratch::new(std::env::temp_dir(), "stack-nocfi");
        let exe = scratch.path("nocfi");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/c/stack_select.c");
        let ok = Command::new("gcc")
            .args([
                "-g",
                "-O0",
                "-fno-omit-frame-pointer",
                "-fno-asynchronous-unwind-tables",
            ])
            .args(["-fno-unwind-tables", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let ok = Command::new("objcopy")
            .args([
                "--remove-section=.eh_frame",
                "--remove-section=.eh_frame_hdr",
            ])
            .args(["--remove-section=.debug_frame"])
            .arg(&exe)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let mut child = Command::new(&exe)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let _reaper = fixtures::Reaper(pid);
        let mut out = fixtures::LineReader::new(child.stdout.take().unwrap());
        assert!(out
            .line(Duration::from_secs(20))
            .unwrap()
            .starts_with("READY"));
        wait_parked(pid);
        let images = ProcessImages::load(pid).unwrap();
        assert!(images.program().unwrap().image.cfi().is_empty());
        let tracee = Tracee::seize(pid).unwrap();
        let regs = Registers::from(&tracee.regs(pid).unwrap());
        let s = unwind_thread(&images, tracee.memory(), &regs).unwrap();
        tracee.detach().unwrap();
        let c = s.chain();
        assert_eq!(&c[c.len() - 3..], ["main", "serve_loop", "select"], "{c:?}");
        let by: HashMap<String, UnwoundBy> = s
            .frames
            .iter()
            .map(|f| (f.names()[0].clone(), f.unwound_by))
            .collect();
        assert_eq!(by["select"], UnwoundBy::Cfi, "libc keeps its CFI");
        assert_eq!(by["serve_loop"], UnwoundBy::FramePointer);
        assert_eq!(by["main"], UnwoundBy::FramePointer);
        // Locals still resolve through the CFA the frame pointer gave.
        let main = s.frames.iter().find(|f| f.names()[0] == "main").unwrap();
        assert!(main
            .locals
            .iter()
            .any(|l| l.name == "loop" && matches!(l.place, Place::Memory(_))));
        let _ = child.kill();
        let _ = child.wait();
    });
}

// ---------------------------------------------------------------------------------------
// A Rust program, built here

const RUST_PROGRAM: &str = r#"
use std::io::BufRead;
pub struct State { pub served: u64, pub names: Vec<String> }
#[inline(never)]
fn serve(state: &mut State) {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line).unwrap() == 0 { std::process::exit(0) }
        state.served += 1;
    }
}
fn main() {
    let mut state = State { served: 7, names: vec!["a".into()] };
    println!("READY pid={}", std::process::id());
    serve(&mut state);
    println!("{}", state.names.len());
}
"#;

#[test]
fn stack_of_a_rust_program_matches_gdb() {
    fixtures::within(Duration::from_secs(110), "rust", || {
        let scratch = Scratch::new(std::env::temp_dir(), "stack-rust");
        let src = scratch.path("rstack.rs");
        std::fs::write(&src, RUST_PROGRAM).unwrap();
        let exe = scratch.path("rstack");
        let ok = Command::new("rustc")
            .args(["-g", "-C", "opt-level=0", "--edition=2021", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap()
            .success();
        assert!(ok, "rustc failed");
        let mut child = Command::new(&exe)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let _reaper = fixtures::Reaper(pid);
        let mut out = fixtures::LineReader::new(child.stdout.take().unwrap());
        assert!(out
            .line(Duration::from_secs(20))
            .unwrap()
            .starts_with("READY"));
        wait_parked(pid);
        let ours = stacks(pid).expect("stacks");
        let main = ours.threads.iter().find(|t| t.tid == pid.as_raw()).unwrap();
        let c = chain(main);
        let i = c
            .iter()
            .position(|n| n == "rstack::main")
            .expect("rstack::main");
        assert_eq!(c[i + 1], "rstack::serve", "{c:?}");
        assert_eq!(c.last().unwrap(), "read", "{c:?}");
        assert!(!c.iter().any(|n| n == "??"), "{c:?}");
        let state = local(main, "rstack::serve", "state");
        assert!(state.value.is_some() || state.warning.is_some());
        let gdb = gdb_stacks(pid, &scratch);
        // Physical frames and pcs as gdb; names of the program's frames as gdb for the two
        // of ours (std's generic functions are named with their parameters by gdb).
        for (t, g) in ours.threads.iter().zip(&gdb) {
            let theirs = physical(g);
            assert_eq!(
                t.frames.iter().map(|f| f.pc.get()).collect::<Vec<_>>(),
                theirs.iter().map(|f| f.pc).collect::<Vec<_>>(),
                "pcs of thread {}",
                t.tid
            );
            for (f, gf) in t.frames.iter().zip(&theirs) {
                if f.function.starts_with("rstack::") {
                    assert_eq!(f.function, gf.name);
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    });
}

// ---------------------------------------------------------------------------------------
// Stacks that do not end, on memory made here

/// A stack of frame records in a snapshot: each `[rbp]` holds the next rbp, `[rbp+8]` a
/// return address outside any object (so only frame pointers unwind it).
fn fake_stack(records: &[(u64, u64, u64)]) -> Snapshot {
    let mut snap = Snapshot::new();
    for &(at, next_rbp, ra) in records {
        let mut b = next_rbp.to_le_bytes().to_vec();
        b.extend_from_slice(&ra.to_le_bytes());
        snap.insert(RemoteAddr::new(at), b);
    }
    snap
}

fn regs_at(pc: u64, rsp: u64, rbp: u64) -> Registers {
    let mut v = [None; stack::REGISTERS];
    v[stack::RIP as usize] = Some(pc);
    v[stack::RSP as usize] = Some(rsp);
    v[stack::RBP as usize] = Some(rbp);
    Registers::from_values(v)
}

#[test]
fn stack_loop_and_depth_are_named_errors() {
    let images = ProcessImages::from_objects(Pid::from_raw(1), Vec::new());
    // A frame record pointing at itself: the second frame has the first one's CFA.
    let snap = fake_stack(&[(0x1000, 0x1000, 0x4242)]);
    match unwind_thread(&images, &snap, &regs_at(0x4000, 0xff0, 0x1000)) {
        Err(stack::Error::Loop { depth, earlier, .. }) => assert_eq!((depth, earlier), (1, 0)),
        other => panic!("{other:?}"),
    }
    // Ten records, each above the last, with a limit of four frames.
    let records: Vec<(u64, u64, u64)> = (0..10u64)
        .map(|i| (0x1000 + i * 0x100, 0x1000 + (i + 1) * 0x100, 0x5000 + i))
        .collect();
    let snap = fake_stack(&records);
    let opts = Options {
        max_depth: 4,
        locals: true,
    };
    match unwind_thread_with(&images, &snap, &regs_at(0x4000, 0xff0, 0x1000), &opts) {
        Err(stack::Error::TooDeep { limit: 4, .. }) => {}
        other => panic!("{other:?}"),
    }
    // A return address of 0 ends the stack; unreadable memory ends it early, said so.
    let snap = fake_stack(&[(0x1000, 0x2000, 0)]);
    let s = unwind_thread(&images, &snap, &regs_at(0x4000, 0xff0, 0x1000)).unwrap();
    assert_eq!((s.frames.len(), &s.end), (1, &End::NullReturnAddress));
    assert!(s.complete());
    let snap = fake_stack(&[(0x1000, 0x3000, 0x4444)]);
    let s = unwind_thread(&images, &snap, &regs_at(0x4000, 0xff0, 0x1000)).unwrap();
    assert_eq!(s.frames.len(), 2);
    assert!(matches!(s.end, End::Unreadable { .. }), "{:?}", s.end);
    assert!(!s.complete());
    assert!(s.frames.iter().all(|f| f.unwound_by != UnwoundBy::Cfi));
}
