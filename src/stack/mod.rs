//! Call stacks of a stopped thread, unwound with the CFI of the binaries it runs, and the
//! parameters and locals of each frame located by DWARF.
//!
//! The layer sits above [`crate::debuginfo`] and `tracer`, below `state`. It reads a process
//! only through [`tracer::Memory`], so it unwinds a live, ptrace-stopped thread or a snapshot
//! of its stack alike, and never writes.
//!
//! ```no_run
//! use transplant::stack::{unwind_thread, ProcessImages, Registers};
//! let pid = tracer::Pid::from_raw(4242);
//! let tracee = tracer::Tracee::seize(pid)?;          // stops every thread
//! let images = ProcessImages::load(pid)?;
//! for tid in tracee.tids() {
//!     let regs = Registers::from(&tracee.regs(tid)?);
//!     let stack = unwind_thread(&images, tracee.memory(), &regs)?;
//!     println!("{tid}: {}", stack.chain().join(" -> "));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How each frame is found:
//! - the innermost frame's pc is the thread's `rip` exactly (in a blocking call: the
//!   instruction after `syscall` in libc); the pc of every other frame is a return address,
//!   looked up at `pc - 1` so that a call at the very end of a function (a `noreturn` call)
//!   is found in the right function and block — except the frame a signal interrupted, whose
//!   pc (restored from the signal frame of `__restore_rt`, an FDE with the `S`
//!   augmentation) is exact;
//! - the CFA and the caller's registers come from the CFI row at that pc (`.eh_frame`,
//!   `.debug_frame`); registers without a rule keep their value if the x86-64 ABI says the
//!   callee preserves them (rbx, rbp, r12-r15) and are lost otherwise; the caller's rsp is
//!   the CFA;
//! - where no CFI covers the pc, the frame pointer chain (`[rbp]`, `[rbp+8]`) is followed
//!   once, and the frame is marked [`UnwoundBy::FramePointer`];
//! - the stack ends where the return address is undefined by CFI (glibc's `_start` and
//!   `clone3` say so), is 0, or the function is an entry point (`_start`, `clone3`,
//!   `__clone`); depth beyond [`Options::max_depth`] and a CFA seen twice are errors.

mod images;

use std::path::PathBuf;

use gimli::{EndianSlice, LittleEndian};
use tracer::{Memory, RemoteAddr};

use crate::debuginfo::cfi::{CfaRule, CfiContext, RegisterRule};
use crate::debuginfo::{
    self, BlockKind, DebugInfoError, LocalKind, Location, SubprogramId, TypeId,
};

pub use images::{LoadedImage, ProcessImages};

/// DWARF number of `rbp`.
pub const RBP: u16 = 6;
/// DWARF number of `rsp`.
pub const RSP: u16 = 7;
/// DWARF number of the return address column, which holds `rip`.
pub const RIP: u16 = 16;
/// Registers modelled: rax..r15 and rip.
pub const REGISTERS: usize = 17;

const NAMES: [&str; REGISTERS] = [
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip",
];

/// The name of DWARF register `n` on x86-64 (`reg{n}` beyond rip).
pub fn register_name(n: u16) -> String {
    NAMES
        .get(n as usize)
        .map(|s| (*s).to_owned())
        .unwrap_or_else(|| format!("reg{n}"))
}

/// Where a register's value in a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Saved {
    /// Read from the thread (the innermost frame).
    Thread,
    /// Saved in memory at this address by the frame below (what to write to change it).
    Memory(RemoteAddr),
    /// Copied from another register of the frame below.
    Register(u16),
    /// Unchanged from the frame below (callee-saved and untouched, or `DW_CFA_same_value`).
    Same,
    /// Computed, not stored anywhere (rsp = the CFA below, `DW_CFA_val_*`).
    Computed,
}

/// A register's value in one frame and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RegisterValue {
    /// The value.
    pub value: u64,
    /// Where it came from.
    pub saved: Saved,
}

/// Registers in DWARF numbering (x86-64: rax=0, rdx, rcx, rbx, rsi, rdi, rbp, rsp, r8..r15,
/// rip=16); `None` for a register whose value is not known in this frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    values: [Option<RegisterValue>; REGISTERS],
}

impl From<&tracer::ptrace::Regs> for Registers {
    /// A thread's registers as ptrace gives them.
    fn from(r: &tracer::ptrace::Regs) -> Self {
        let v = [
            r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip,
        ];
        let mut out = Registers::default();
        for (i, x) in v.into_iter().enumerate() {
            out.values[i] = Some(RegisterValue {
                value: x,
                saved: Saved::Thread,
            });
        }
        out
    }
}

impl Registers {
    /// Registers from plain values, in DWARF order.
    pub fn from_values(values: [Option<u64>; REGISTERS]) -> Self {
        let mut out = Registers::default();
        for (i, v) in values.into_iter().enumerate() {
            out.values[i] = v.map(|value| RegisterValue {
                value,
                saved: Saved::Thread,
            });
        }
        out
    }

    /// The value of register `n`, if known.
    pub fn get(&self, n: u16) -> Option<u64> {
        self.entry(n).map(|r| r.value)
    }

    /// The value of register `n` and where it came from, if known.
    pub fn entry(&self, n: u16) -> Option<RegisterValue> {
        self.values.get(n as usize).copied().flatten()
    }

    /// Sets register `n` (ignored beyond rip).
    pub fn set(&mut self, n: u16, v: Option<RegisterValue>) {
        if let Some(slot) = self.values.get_mut(n as usize) {
            *slot = v;
        }
    }

    /// `rip`.
    pub fn pc(&self) -> Option<u64> {
        self.get(RIP)
    }

    /// `rsp`.
    pub fn sp(&self) -> Option<u64> {
        self.get(RSP)
    }

    /// The known registers with their names, in DWARF order.
    pub fn known(&self) -> impl Iterator<Item = (u16, RegisterValue)> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as u16, v)))
    }
}

impl serde::Serialize for Registers {
    /// As a map from register name to value and provenance, known registers only.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (n, v) in self.known() {
            m.serialize_entry(NAMES[n as usize], &v)?;
        }
        m.end()
    }
}

/// Who a frame's code belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FunctionId {
    /// The function's name: DWARF's source name (Rust: its path) where the object has debug
    /// info, else the ELF symbol's name.
    pub name: String,
    /// The name for display and matching: demangled without the hash for Rust.
    pub demangled: String,
    /// The mangled or linkage name, when known.
    pub linkage_name: Option<String>,
    /// The object file the code is in.
    pub object: PathBuf,
    /// The function's entry in the process.
    pub start: RemoteAddr,
    /// `pc - start`.
    pub offset: u64,
    /// Its frame model, when the object is the program (with debug info).
    #[serde(skip)]
    pub subprogram: Option<SubprogramId>,
}

/// A call inlined at a frame's pc: a debugger shows it as a frame of its own above the
/// physical one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InlineCall {
    /// The inlined function's source name.
    pub name: String,
    /// Display name (demangled).
    pub demangled: String,
    /// Source line of the call, in the enclosing function (0 when unknown).
    pub call_line: u64,
}

/// How a frame's CFA (and so its caller) was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum UnwoundBy {
    /// The CFI of its object.
    Cfi,
    /// The frame-pointer chain, because no CFI covers its pc: may be wrong in a prologue or
    /// in code built without frame pointers.
    FramePointer,
    /// Nothing: the outermost frame, whose caller is not recovered (no CFI, no usable frame
    /// pointer).
    None,
}

/// Where a local is in a frame.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Place {
    /// In the process's memory (the stack, or a function static).
    Memory(RemoteAddr),
    /// In a register of this frame; `saved` tells where that register's value is stored
    /// (in memory, if a frame below saved it).
    Register {
        /// DWARF register number.
        register: u16,
        /// Its value in this frame.
        value: u64,
        /// Where it came from.
        saved: Saved,
    },
    /// Not stored anywhere: DWARF gives its value (a constant, or computed from registers).
    Value(Vec<u8>),
    /// No location at this pc.
    OptimisedOut,
    /// DWARF locates it, but the location is not known in this frame (a register that was not
    /// saved, a frame base that cannot be computed): the reason.
    Unavailable(String),
    /// DWARF locates it with an expression this layer does not handle: the operation.
    Unsupported(String),
}

/// A parameter or local variable of a frame, located.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Local {
    /// Source name.
    pub name: String,
    /// Parameter or variable.
    pub kind: LocalKind,
    /// The function it belongs to: the frame's function, or an inlined call's.
    pub function: String,
    /// Its type, in the program's [`crate::debuginfo::Binary::types`].
    pub ty: TypeId,
    /// Where it is.
    pub place: Place,
}

/// One physical frame.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Frame {
    /// Its pc: the thread's rip for the innermost frame, a return address for the others.
    pub pc: RemoteAddr,
    /// Its canonical frame address: the value of rsp in its caller just before the call.
    pub cfa: Option<RemoteAddr>,
    /// The function of its code; `None` outside any known object or symbol.
    pub function: Option<FunctionId>,
    /// Calls inlined at its pc, outermost first (innermost: where the pc really is).
    pub inline_chain: Vec<InlineCall>,
    /// Its registers as far as they are known.
    pub registers: Registers,
    /// Parameters and locals of its function and of the inlined calls at its pc.
    pub locals: Vec<Local>,
    /// How its CFA was found.
    pub unwound_by: UnwoundBy,
    /// The object file of its code.
    pub object: Option<PathBuf>,
}

impl Frame {
    /// The frame's function name for display (`??` when unknown), then its inlined calls.
    pub fn names(&self) -> Vec<String> {
        let mut out = vec![self
            .function
            .as_ref()
            .map(|f| f.demangled.clone())
            .unwrap_or_else(|| "??".into())];
        out.extend(self.inline_chain.iter().map(|c| c.demangled.clone()));
        out
    }
}

/// Why the unwinding stopped where it did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum End {
    /// The CFI says the outermost frame has no return address (`_start`, `clone3`).
    Outermost,
    /// The outermost frame is an entry point by name.
    EntryFunction(String),
    /// The next return address is 0.
    NullReturnAddress,
    /// No CFI and no usable frame pointer at this pc: the stack may go on.
    NoUnwindInfo(RemoteAddr),
    /// Memory the unwinding needed could not be read: the stack may go on.
    Unreadable {
        /// The address.
        addr: RemoteAddr,
        /// Why.
        detail: String,
    },
}

/// A thread's stack.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stack {
    /// Frames, innermost first (`#0` as gdb numbers them).
    pub frames: Vec<Frame>,
    /// Why it ends there.
    pub end: End,
}

impl Stack {
    /// Function names outermost first, inlined calls after the function they are inlined
    /// into (`main`, `serve_loop`, `select`): what two versions' stacks are matched by.
    pub fn chain(&self) -> Vec<String> {
        self.frames.iter().rev().flat_map(|f| f.names()).collect()
    }

    /// Whether the stack ends at a known outermost frame (not cut short).
    pub fn complete(&self) -> bool {
        matches!(
            self.end,
            End::Outermost | End::EntryFunction(_) | End::NullReturnAddress
        )
    }
}

/// Why a stack could not be unwound.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process went away (or another tracer error).
    #[error(transparent)]
    Tracer(#[from] tracer::Error),
    /// An object's debug info or CFI could not be read.
    #[error(transparent)]
    DebugInfo(#[from] DebugInfoError),
    /// The thread's registers have no pc.
    #[error("the thread's registers have no pc")]
    NoPc,
    /// More frames than the limit: a corrupt stack or runaway recursion.
    #[error("the stack is deeper than {limit} frames (frame {limit} at pc {pc})")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// The pc of the frame past the limit.
        pc: RemoteAddr,
    },
    /// Two frames with one CFA: the unwinding goes round in circles.
    #[error("unwinding loops: frame {depth} (pc {pc}) has the CFA {cfa} of frame {earlier}")]
    Loop {
        /// The CFA.
        cfa: RemoteAddr,
        /// The frame that repeats it.
        depth: usize,
        /// Its pc.
        pc: RemoteAddr,
        /// The frame that had it first.
        earlier: usize,
    },
}

impl Error {
    /// Whether the process or thread is gone.
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Tracer(e) if e.is_gone())
    }
}

/// Limits of one unwinding.
#[derive(Clone, Debug)]
pub struct Options {
    /// Most frames read before [`Error::TooDeep`].
    pub max_depth: usize,
    /// Locate the locals of frames in the program.
    pub locals: bool,
}

impl Default for Options {
    /// 512 frames, with locals.
    fn default() -> Self {
        Options {
            max_depth: 512,
            locals: true,
        }
    }
}

/// Unwinds one stopped thread whose registers are `regs`, reading its memory through `mem`,
/// with the objects of its process (`images`). See the module documentation for how.
///
/// Fails with [`Error::TooDeep`] or [`Error::Loop`] on a stack that does not end; memory that
/// cannot be read or code without unwind information ends the stack early, said in
/// [`Stack::end`], not an error.
pub fn unwind_thread<M: Memory + ?Sized>(
    images: &ProcessImages,
    mem: &M,
    regs: &Registers,
) -> Result<Stack, Error> {
    unwind_thread_with(images, mem, regs, &Options::default())
}

/// [`unwind_thread`] with limits of one's own.
pub fn unwind_thread_with<M: Memory + ?Sized>(
    images: &ProcessImages,
    mem: &M,
    regs: &Registers,
    options: &Options,
) -> Result<Stack, Error> {
    let mut ctx = CfiContext::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut regs = *regs;
    let mut exact = true;
    let mut cfas: Vec<(u64, usize)> = Vec::new();
    let end = loop {
        let Some(pc) = regs.pc() else {
            if frames.is_empty() {
                return Err(Error::NoPc);
            }
            break End::Outermost;
        };
        if frames.len() >= options.max_depth {
            return Err(Error::TooDeep {
                limit: options.max_depth,
                pc: RemoteAddr::new(pc),
            });
        }
        let lookup = if exact { pc } else { pc.wrapping_sub(1) };
        let object = images.object_containing(lookup);
        let row = match object {
            Some(o) => o.image.cfi().row(&mut ctx, o.vaddr(lookup))?,
            None => None,
        };
        // A signal trampoline's pc is where the handler returns to, its first instruction
        // (its FDE starts one byte early so that `pc - 1` finds it): name it by its pc.
        let named = if row.as_ref().is_some_and(|r| r.signal_frame) {
            pc
        } else {
            lookup
        };
        let (function, inline_chain, sub) = identify(object, named, pc);
        let mut frame = Frame {
            pc: RemoteAddr::new(pc),
            cfa: None,
            function,
            inline_chain,
            registers: regs,
            locals: Vec::new(),
            unwound_by: UnwoundBy::None,
            object: object.map(|o| o.path.clone()),
        };
        let step = match &row {
            Some(row) => step_cfi(row, &regs, mem),
            None => step_frame_pointer(&regs, mem),
        };
        let (cfa, caller, ra_undefined) = match step {
            Ok(Some(s)) => s,
            Ok(None) => {
                frame.cfa = None;
                if options.locals {
                    frame.locals = locals(object, sub, lookup, &frame);
                }
                let by_name = entry_function(&frame);
                frames.push(frame);
                break match by_name {
                    Some(n) => End::EntryFunction(n),
                    None => End::NoUnwindInfo(RemoteAddr::new(pc)),
                };
            }
            Err(addr) => {
                if options.locals {
                    frame.locals = locals(object, sub, lookup, &frame);
                }
                frames.push(frame);
                break End::Unreadable {
                    addr: RemoteAddr::new(addr),
                    detail: "stack memory not readable".into(),
                };
            }
        };
        frame.cfa = Some(RemoteAddr::new(cfa));
        frame.unwound_by = if row.is_some() {
            UnwoundBy::Cfi
        } else {
            UnwoundBy::FramePointer
        };
        if options.locals {
            frame.locals = locals(object, sub, lookup, &frame);
        }
        let depth = frames.len();
        if let Some(&(_, earlier)) = cfas.iter().find(|(c, _)| *c == cfa) {
            return Err(Error::Loop {
                cfa: RemoteAddr::new(cfa),
                depth,
                pc: RemoteAddr::new(pc),
                earlier,
            });
        }
        cfas.push((cfa, depth));
        let by_name = entry_function(&frame);
        frames.push(frame);
        if ra_undefined {
            break End::Outermost;
        }
        if let Some(n) = by_name {
            break End::EntryFunction(n);
        }
        match caller.pc() {
            None => break End::Outermost,
            Some(0) => break End::NullReturnAddress,
            Some(_) => {}
        }
        exact = row.as_ref().is_some_and(|r| r.signal_frame);
        regs = caller;
    };
    Ok(Stack { frames, end })
}

/// Functions where a thread's stack begins.
fn entry_function(frame: &Frame) -> Option<String> {
    let f = frame.function.as_ref()?;
    matches!(
        f.name.as_str(),
        "_start" | "clone3" | "__clone" | "clone" | "__clone3"
    )
    .then(|| f.name.clone())
}

/// The function, inline chain and frame model at `lookup`.
fn identify(
    object: Option<&LoadedImage>,
    lookup: u64,
    pc: u64,
) -> (Option<FunctionId>, Vec<InlineCall>, Option<SubprogramId>) {
    let Some(o) = object else {
        return (None, Vec::new(), None);
    };
    let vaddr = o.vaddr(lookup);
    if let Some(bin) = &o.binary {
        if let Some(id) = bin.subprogram_containing(vaddr) {
            let s = bin.subprogram(id);
            let entry = s
                .ranges
                .iter()
                .find(|&&(b, e)| b <= vaddr && vaddr < e)
                .map_or(vaddr, |r| r.0);
            let start = entry.wrapping_add(o.bias);
            let chain = s
                .inline_chain(vaddr)
                .into_iter()
                .filter_map(|b| match &b.kind {
                    BlockKind::Inlined {
                        name,
                        demangled,
                        call_line,
                        ..
                    } => Some(InlineCall {
                        name: name.clone(),
                        demangled: demangled.clone(),
                        call_line: *call_line,
                    }),
                    _ => None,
                })
                .collect();
            return (
                Some(FunctionId {
                    name: s.name.clone(),
                    demangled: s.demangled.clone(),
                    linkage_name: s.linkage_name.clone(),
                    object: o.path.clone(),
                    start: RemoteAddr::new(start),
                    offset: pc.wrapping_sub(start),
                    subprogram: Some(id),
                }),
                chain,
                Some(id),
            );
        }
    }
    let Some(sym) = o.image.code_symbol(vaddr) else {
        return (None, Vec::new(), None);
    };
    let start = sym.address.wrapping_add(o.bias);
    (
        Some(FunctionId {
            name: sym.name.clone(),
            // `pthread_cond_wait@@GLIBC_2.3.2`: the version is not part of the function's name.
            demangled: debuginfo::frames::display_name(
                sym.name.split('@').next().unwrap_or(&sym.name),
                None,
            ),
            linkage_name: Some(sym.name.clone()),
            object: o.path.clone(),
            start: RemoteAddr::new(start),
            offset: pc.wrapping_sub(start),
            subprogram: None,
        }),
        Vec::new(),
        None,
    )
}

/// Registers the x86-64 psABI has a callee preserve: without a CFI rule, they keep their value.
fn callee_saved(n: u16) -> bool {
    matches!(n, 3 | 6 | 12..=15)
}

/// One step with a CFI row: `(cfa, the caller's registers, return address undefined)`, or the
/// address that could not be read.
fn step_cfi<M: Memory + ?Sized>(
    row: &debuginfo::cfi::UnwindRow,
    regs: &Registers,
    mem: &M,
) -> Result<Option<(u64, Registers, bool)>, u64> {
    let cfa = match &row.cfa {
        CfaRule::RegisterOffset { register, offset } => match regs.get(*register) {
            Some(v) => v.wrapping_add(*offset as u64),
            None => return Ok(None),
        },
        CfaRule::Expression(e) => match evaluate(e, regs, mem, None) {
            Ok(v) => v,
            Err(Eval::Unreadable(a)) => return Err(a),
            Err(Eval::Unsupported) => return Ok(None),
        },
    };
    let mut caller = Registers::default();
    let read =
        |addr: u64| -> Result<u64, u64> { mem.read_u64(RemoteAddr::new(addr)).map_err(|_| addr) };
    let mut ra_undefined = false;
    for n in 0..REGISTERS as u16 {
        let reg = if n == RIP {
            row.return_address_register
        } else {
            n
        };
        let value = match row.rule(reg) {
            None if n == RSP => Some(RegisterValue {
                value: cfa,
                saved: Saved::Computed,
            }),
            None if callee_saved(n) => regs.entry(n).map(|v| RegisterValue {
                value: v.value,
                saved: Saved::Same,
            }),
            None => None,
            Some(RegisterRule::Undefined) => {
                if n == RIP {
                    ra_undefined = true;
                }
                None
            }
            Some(RegisterRule::SameValue) => regs.entry(reg).map(|v| RegisterValue {
                value: v.value,
                saved: Saved::Same,
            }),
            Some(RegisterRule::Offset(o)) => {
                let at = cfa.wrapping_add(*o as u64);
                Some(RegisterValue {
                    value: read(at)?,
                    saved: Saved::Memory(RemoteAddr::new(at)),
                })
            }
            Some(RegisterRule::ValOffset(o)) => Some(RegisterValue {
                value: cfa.wrapping_add(*o as u64),
                saved: Saved::Computed,
            }),
            Some(RegisterRule::Register(r)) => regs.get(*r).map(|value| RegisterValue {
                value,
                saved: Saved::Register(*r),
            }),
            Some(RegisterRule::Expression(e)) => match evaluate(e, regs, mem, Some(cfa)) {
                Ok(at) => Some(RegisterValue {
                    value: read(at)?,
                    saved: Saved::Memory(RemoteAddr::new(at)),
                }),
                Err(Eval::Unreadable(a)) => return Err(a),
                Err(Eval::Unsupported) => None,
            },
            Some(RegisterRule::ValExpression(e)) => match evaluate(e, regs, mem, Some(cfa)) {
                Ok(value) => Some(RegisterValue {
                    value,
                    saved: Saved::Computed,
                }),
                Err(Eval::Unreadable(a)) => return Err(a),
                Err(Eval::Unsupported) => None,
            },
            Some(RegisterRule::Constant(c)) => Some(RegisterValue {
                value: *c,
                saved: Saved::Computed,
            }),
            Some(RegisterRule::Architectural) => None,
        };
        caller.set(n, value);
    }
    // A rule for rsp itself (signal frames restore it from the ucontext) wins; otherwise the
    // caller's rsp is the CFA, set above.
    Ok(Some((cfa, caller, ra_undefined)))
}

/// One step by the frame pointer: `[rbp]` is the caller's rbp, `[rbp+8]` the return address,
/// `rbp+16` the CFA.
fn step_frame_pointer<M: Memory + ?Sized>(
    regs: &Registers,
    mem: &M,
) -> Result<Option<(u64, Registers, bool)>, u64> {
    let Some(rbp) = regs.get(RBP).filter(|&v| v != 0 && v % 8 == 0) else {
        return Ok(None);
    };
    let read = |addr: u64| mem.read_u64(RemoteAddr::new(addr)).map_err(|_| addr);
    let saved_rbp = read(rbp)?;
    let ra = read(rbp.wrapping_add(8))?;
    let cfa = rbp.wrapping_add(16);
    let mut caller = Registers::default();
    for n in 0..REGISTERS as u16 {
        if callee_saved(n) {
            caller.set(
                n,
                regs.entry(n).map(|v| RegisterValue {
                    value: v.value,
                    saved: Saved::Same,
                }),
            );
        }
    }
    caller.set(
        RBP,
        Some(RegisterValue {
            value: saved_rbp,
            saved: Saved::Memory(RemoteAddr::new(rbp)),
        }),
    );
    caller.set(
        RIP,
        Some(RegisterValue {
            value: ra,
            saved: Saved::Memory(RemoteAddr::new(rbp + 8)),
        }),
    );
    caller.set(
        RSP,
        Some(RegisterValue {
            value: cfa,
            saved: Saved::Computed,
        }),
    );
    Ok(Some((cfa, caller, false)))
}

enum Eval {
    Unreadable(u64),
    Unsupported,
}

/// Evaluates a CFI expression (`DW_CFA_def_cfa_expression`, `DW_CFA_expression`,
/// `DW_CFA_val_expression`): `cfa` is pushed first for register rules, as DWARF says.
fn evaluate<M: Memory + ?Sized>(
    bytes: &[u8],
    regs: &Registers,
    mem: &M,
    cfa: Option<u64>,
) -> Result<u64, Eval> {
    let encoding = gimli::Encoding {
        format: gimli::Format::Dwarf32,
        version: 4,
        address_size: 8,
    };
    let expr = gimli::Expression(EndianSlice::new(bytes, LittleEndian));
    let mut ev = expr.evaluation(encoding);
    ev.set_max_iterations(1000);
    if let Some(c) = cfa {
        ev.set_initial_value(c);
    }
    let mut step = ev.evaluate().map_err(|_| Eval::Unsupported)?;
    loop {
        use gimli::EvaluationResult as E;
        step = match step {
            E::Complete => break,
            E::RequiresMemory { address, size, .. } => {
                let mut buf = [0u8; 8];
                let n = (size as usize).min(8);
                mem.read(RemoteAddr::new(address), &mut buf[..n])
                    .map_err(|_| Eval::Unreadable(address))?;
                ev.resume_with_memory(gimli::Value::Generic(u64::from_le_bytes(buf)))
                    .map_err(|_| Eval::Unsupported)?
            }
            E::RequiresRegister { register, .. } => {
                let v = regs.get(register.0).ok_or(Eval::Unsupported)?;
                ev.resume_with_register(gimli::Value::Generic(v))
                    .map_err(|_| Eval::Unsupported)?
            }
            E::RequiresCallFrameCfa => {
                let c = cfa.ok_or(Eval::Unsupported)?;
                ev.resume_with_call_frame_cfa(c)
                    .map_err(|_| Eval::Unsupported)?
            }
            _ => return Err(Eval::Unsupported),
        };
    }
    let pieces = ev.result();
    match pieces.first().map(|p| &p.location) {
        Some(gimli::Location::Address { address }) => Ok(*address),
        Some(gimli::Location::Value {
            value: gimli::Value::Generic(v),
        }) => Ok(*v),
        _ => Err(Eval::Unsupported),
    }
}

/// The frame's parameters and locals at `lookup` (the pc used for lookups), located with its
/// registers and CFA.
fn locals(
    object: Option<&LoadedImage>,
    sub: Option<SubprogramId>,
    lookup: u64,
    frame: &Frame,
) -> Vec<Local> {
    let (Some(o), Some(id)) = (object, sub) else {
        return Vec::new();
    };
    let Some(bin) = &o.binary else {
        return Vec::new();
    };
    let s = bin.subprogram(id);
    let vaddr = o.vaddr(lookup);
    let frame_base = s.frame_base.as_ref().map(|fb| fb.at(vaddr));
    let mut out = Vec::new();
    for b in s.blocks_at(vaddr) {
        let block = &s.blocks[b as usize];
        let function = match &block.kind {
            BlockKind::Inlined { demangled, .. } => demangled.clone(),
            _ => {
                // The innermost enclosing function or inlined call.
                let mut p = block.parent;
                let mut name = s.demangled.clone();
                while let Some(i) = p {
                    let up = &s.blocks[i as usize];
                    if let BlockKind::Inlined { demangled, .. } = &up.kind {
                        name = demangled.clone();
                        break;
                    }
                    p = up.parent;
                }
                name
            }
        };
        for v in &block.variables {
            let place = resolve(&v.locations.at(vaddr), frame_base.as_ref(), frame, o.bias);
            out.push(Local {
                name: v.name.clone(),
                kind: v.kind,
                function: function.clone(),
                ty: v.ty,
                place,
            });
        }
    }
    out
}

/// Resolves one location against a frame.
fn resolve(loc: &Location, frame_base: Option<&Location>, frame: &Frame, bias: u64) -> Place {
    let regs = &frame.registers;
    let reg = |r: u16| -> Result<u64, Place> {
        regs.get(r).ok_or_else(|| {
            Place::Unavailable(format!(
                "register {} is not saved in this frame",
                register_name(r)
            ))
        })
    };
    let at = |base: u64, off: i64| Place::Memory(RemoteAddr::new(base.wrapping_add(off as u64)));
    match loc {
        Location::Register(r) => match regs.entry(*r) {
            Some(v) => Place::Register {
                register: *r,
                value: v.value,
                saved: v.saved,
            },
            None => Place::Unavailable(format!(
                "register {} is not saved in this frame",
                register_name(*r)
            )),
        },
        Location::RegisterOffset { register, offset } => match reg(*register) {
            Ok(v) => at(v, *offset),
            Err(p) => p,
        },
        Location::CfaOffset(off) => match frame.cfa {
            Some(c) => at(c.get(), *off),
            None => Place::Unavailable("the frame's CFA is not known".into()),
        },
        Location::FrameBaseOffset(off) => {
            let base = match frame_base {
                None => return Place::Unavailable("the function has no frame base".into()),
                Some(Location::CfaOffset(o)) => match frame.cfa {
                    Some(c) => Ok(c.get().wrapping_add(*o as u64)),
                    None => Err(Place::Unavailable("the frame's CFA is not known".into())),
                },
                Some(Location::Register(r)) => reg(*r),
                Some(Location::RegisterOffset { register, offset }) => {
                    reg(*register).map(|v| v.wrapping_add(*offset as u64))
                }
                Some(other) => Err(Place::Unsupported(format!("frame base {other:?}"))),
            };
            match base {
                Ok(b) => at(b, *off),
                Err(p) => p,
            }
        }
        Location::Address(a) => Place::Memory(RemoteAddr::new(a.wrapping_add(bias))),
        Location::Constant(c) => Place::Value(c.to_le_bytes().to_vec()),
        Location::RegisterValue { register, offset } => match reg(*register) {
            Ok(v) => Place::Value(v.wrapping_add(*offset as u64).to_le_bytes().to_vec()),
            Err(p) => p,
        },
        Location::ImplicitValue(b) => Place::Value(b.clone()),
        Location::OptimisedOut => Place::OptimisedOut,
        Location::Unsupported { op, .. } => Place::Unsupported(op.clone()),
    }
}
