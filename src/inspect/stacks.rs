//! `transplant inspect --stacks`: every thread of a process with its call stack, as gdb's
//! `thread apply all bt` lists it, and each frame's parameters and locals with their values
//! where the printer can show them (as gdb's `info locals` does).
//!
//! As for globals ([`super::globals`]), the process is stopped only while its stacks and the
//! bytes of their locals are read (every read recorded), then released; values are rendered
//! afterwards from the recording, naming addresses by symbol.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracer::symbols::SymbolResolver;
use tracer::{Memory, Pid, RemoteAddr, Tracee};

use crate::debuginfo::{Binary, LoadOptions, LocalKind};
use crate::stack::{self, End, Place, ProcessImages, Registers, Stack, UnwoundBy};

use super::print::{AddressNamer, Printer};
use super::symbols::GdbSymbols;
use super::{InspectError, Recorder, Replay};

/// One local of a frame, rendered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LocalView {
    /// The function it belongs to (the frame's, or an inlined call's).
    pub function: String,
    /// Its name.
    pub name: String,
    /// Parameter or variable.
    pub kind: LocalKind,
    /// Its type as gdb names it.
    pub type_name: String,
    /// Where it is: `0xADDR`, a register name (`rbx`, saved at `0xADDR`), `value`,
    /// `optimised out`, ...
    pub place: String,
    /// Its address, when in memory.
    pub address: Option<RemoteAddr>,
    /// gdb's rendering of its value (`info locals`), when it could be read and printed.
    pub value: Option<String>,
    /// Why there is no value.
    pub warning: Option<String>,
}

/// One frame, rendered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FrameView {
    /// gdb's frame number (`#0` innermost) of the physical frame.
    pub index: usize,
    /// Its pc.
    pub pc: RemoteAddr,
    /// Its CFA.
    pub cfa: Option<RemoteAddr>,
    /// Its function (demangled), `??` if unknown.
    pub function: String,
    /// The linkage (mangled) name, when known.
    pub linkage_name: Option<String>,
    /// `pc - function start`.
    pub offset: u64,
    /// The object file.
    pub object: Option<String>,
    /// Calls inlined at the pc, outermost first.
    pub inline_chain: Vec<String>,
    /// How its CFA was found.
    pub unwound_by: UnwoundBy,
    /// Parameters and locals.
    pub locals: Vec<LocalView>,
}

/// One thread.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ThreadView {
    /// Its id.
    pub tid: i32,
    /// Its name (`/proc/PID/task/TID/comm`).
    pub name: String,
    /// Frames innermost first.
    pub frames: Vec<FrameView>,
    /// Why the stack ends there.
    pub end: Option<End>,
    /// Why it could not be unwound at all.
    pub error: Option<String>,
}

/// The stacks of one process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stacks {
    /// The process.
    pub pid: i32,
    /// Every thread, by id.
    pub threads: Vec<ThreadView>,
    /// How long the process was stopped.
    pub stopped: Duration,
    /// Physical frames unwound in all.
    pub frames: usize,
}

/// Reads every thread's stack of `pid` with its locals. See the module documentation.
pub fn stacks(pid: Pid) -> Result<Stacks, InspectError> {
    let images = ProcessImages::load(pid).map_err(stack_error)?;
    let tracee = Tracee::seize(pid)?;
    let start = Instant::now();
    let recorder = Recorder {
        inner: tracee.memory(),
        reads: RefCell::new(HashMap::new()),
    };
    let mut unwound = Vec::new();
    for tid in tracee.tids() {
        let name = tracer::procfs::read_text(pid, &format!("task/{tid}/comm"))
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default();
        let result = tracee
            .regs(tid)
            .map_err(stack::Error::from)
            .and_then(|r| stack::unwind_thread(&images, &recorder, &Registers::from(&r)));
        unwound.push((tid, name, result));
    }
    // Read what the locals hold while the process is stopped; names come after.
    let no_names = |_: RemoteAddr| None;
    let program = images.program().and_then(|p| p.binary.clone());
    for (_, _, r) in &unwound {
        if let (Ok(s), Some(bin)) = (r, &program) {
            render_frames(s, bin, &recorder, &no_names);
        }
    }
    let reads = recorder.reads.into_inner();
    tracee.detach()?;
    let stopped = start.elapsed();

    let replay = Replay { reads };
    let resolver = SymbolResolver::new(pid)?;
    let empty;
    let bin: &Binary = match &program {
        Some(b) => b,
        None => {
            empty = Binary::load(tracer::procfs::exe_link(pid))?;
            &empty
        }
    };
    let namer = GdbSymbols::new(bin, resolver, LoadOptions::default());
    let mut frames = 0;
    let threads = unwound
        .into_iter()
        .map(|(tid, name, r)| match r {
            Ok(s) => {
                frames += s.frames.len();
                ThreadView {
                    tid: tid.as_raw(),
                    name,
                    frames: render_frames(&s, bin, &replay, &namer),
                    end: Some(s.end),
                    error: None,
                }
            }
            Err(e) => ThreadView {
                tid: tid.as_raw(),
                name,
                frames: Vec::new(),
                end: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    Ok(Stacks {
        pid: pid.as_raw(),
        threads,
        stopped,
        frames,
    })
}

fn stack_error(e: stack::Error) -> InspectError {
    match e {
        stack::Error::Tracer(t) => InspectError::Tracer(t),
        stack::Error::DebugInfo(d) => InspectError::DebugInfo(d),
        other => InspectError::Stack(other),
    }
}

/// Renders a stack's frames, reading locals from `memory`.
pub fn render_frames(
    s: &Stack,
    bin: &Binary,
    memory: &dyn Memory,
    namer: &dyn AddressNamer,
) -> Vec<FrameView> {
    let printer = Printer::new(bin.types(), memory, namer);
    s.frames
        .iter()
        .enumerate()
        .map(|(index, f)| FrameView {
            index,
            pc: f.pc,
            cfa: f.cfa,
            function: f
                .function
                .as_ref()
                .map(|f| f.demangled.clone())
                .unwrap_or_else(|| "??".into()),
            linkage_name: f.function.as_ref().and_then(|f| f.linkage_name.clone()),
            offset: f.function.as_ref().map_or(0, |f| f.offset),
            object: f.object.as_ref().map(|p| p.display().to_string()),
            inline_chain: f.inline_chain.iter().map(|c| c.demangled.clone()).collect(),
            unwound_by: f.unwound_by,
            locals: f
                .locals
                .iter()
                .map(|l| {
                    let (place, address) = describe(&l.place);
                    let value = value(bin, &printer, memory, l);
                    LocalView {
                        function: l.function.clone(),
                        name: l.name.clone(),
                        kind: l.kind,
                        type_name: bin.type_name(l.ty),
                        place,
                        address,
                        value: value.as_ref().ok().cloned(),
                        warning: value.err(),
                    }
                })
                .collect(),
        })
        .collect()
}

fn describe(p: &Place) -> (String, Option<RemoteAddr>) {
    match p {
        Place::Memory(a) => (format!("{a}"), Some(*a)),
        Place::Register {
            register, saved, ..
        } => {
            let r = stack::register_name(*register);
            match saved {
                stack::Saved::Memory(a) => (format!("{r} (saved at {a})"), None),
                _ => (r, None),
            }
        }
        Place::Value(_) => ("value".into(), None),
        Place::OptimisedOut => ("optimised out".into(), None),
        Place::Unavailable(why) => (format!("unavailable: {why}"), None),
        Place::Unsupported(op) => (format!("unsupported: {op}"), None),
    }
}

fn value(
    bin: &Binary,
    printer: &Printer<'_>,
    memory: &dyn Memory,
    l: &stack::Local,
) -> Result<String, String> {
    let size = bin
        .byte_size(l.ty)
        .ok_or_else(|| format!("type `{}` has no known size", bin.type_name(l.ty)))?
        as usize;
    let (bytes, addr) = match &l.place {
        Place::Memory(a) => (memory.read_vec(*a, size).map_err(|e| e.to_string())?, *a),
        Place::Register { value, .. } => (le_bytes(*value, size)?, RemoteAddr::NULL),
        Place::Value(b) => {
            let mut b = b.clone();
            b.resize(size.max(b.len()), 0);
            (b, RemoteAddr::NULL)
        }
        Place::OptimisedOut => return Err("optimized out".into()),
        Place::Unavailable(why) => return Err(why.clone()),
        Place::Unsupported(op) => return Err(format!("location uses {op}, not supported")),
    };
    printer
        .print_inner(l.ty, &bytes, addr)
        .map_err(|e| e.to_string())
}

fn le_bytes(v: u64, size: usize) -> Result<Vec<u8>, String> {
    if size > 8 {
        return Err(format!("{size}-byte value in one register"));
    }
    Ok(v.to_le_bytes()[..size].to_vec())
}
