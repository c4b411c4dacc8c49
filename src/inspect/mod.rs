//! The typed view of a live process for `transplant inspect`: every global and static variable
//! of its main executable, each as gdb's `print` would show it.
//!
//! [`globals`] loads the executable's debug info (through `/proc/PID/exe`, so a binary replaced
//! on disk still works), stops the process with [`tracer::Tracee::seize`] just long enough to
//! read what the variables need, detaches, leaving the process as it was, and renders every
//! variable with [`print::Printer`], naming addresses as gdb does ([`symbols::GdbSymbols`]).
//! The values are gdb's text, byte for byte (`tests/inspect_gdb.rs` holds them against gdb 13
//! itself), so a person can compare them with a debugger session and another tool can diff
//! two of them.
//!
//! ```no_run
//! let g = transplant::inspect::globals(tracer::Pid::from_raw(4242))?;
//! for v in &g.globals {
//!     match &v.value {
//!         Some(value) => println!("{} = {value}", v.name),
//!         None => eprintln!("warning: {}: {}", v.name, v.warning.as_deref().unwrap_or("")),
//!     }
//! }
//! # Ok::<(), transplant::inspect::InspectError>(())
//! ```

pub mod float;
pub mod print;
pub mod stacks;
pub mod symbols;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracer::symbols::{ObjectRole, SymbolResolver};
use tracer::{Memory, Pid, RemoteAddr, RemoteRange, Tracee};

use crate::debuginfo::{Binary, DebugInfoError, LoadOptions, TypeId, VariableKind};

use print::{AddressNamer, Printer};
use symbols::GdbSymbols;

/// Why the globals of a process could not be read at all. (A single variable that cannot be
/// read is not an error: it is a [`Global`] with a warning.)
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The executable's debug information could not be loaded.
    #[error(transparent)]
    DebugInfo(#[from] DebugInfoError),
    /// The process could not be stopped, read or released.
    #[error(transparent)]
    Tracer(#[from] tracer::Error),
    /// A thread's stack could not be unwound.
    #[error(transparent)]
    Stack(crate::stack::Error),
    /// The executable is not among the objects mapped by the process.
    #[error("process {pid}: its executable {exe} is not mapped", exe = exe.display())]
    NoMainObject {
        /// The process.
        pid: Pid,
        /// The executable looked for.
        exe: PathBuf,
    },
}

/// One variable of the main executable and its value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Global {
    /// The name as gdb accepts it in `print NAME`: `name` for globals and unambiguous file
    /// statics, `'file.c'::name` for file statics whose name is ambiguous, `function::name`
    /// for function statics (`'file.c'::function::name` if the function's name is ambiguous).
    /// gdb knows a variable with an `asm` label by that label (DWARF's linkage name), quoted
    /// when it is not an identifier (`'gvar.cold'`). `file.c` is the unit's file name, or its
    /// whole name when two units share a file name.
    pub name: String,
    /// Global, file static or function static.
    pub kind: VariableKind,
    /// A thread-local variable: its value and address are the main thread's.
    pub thread_local: bool,
    /// The type as gdb's `whatis` names it.
    pub type_name: String,
    /// Where it is in the process.
    pub address: u64,
    /// gdb's rendering of the value (what `print NAME` shows after `$1 = `); `None` when the
    /// variable could not be read or rendered, with the reason in `warning`.
    pub value: Option<String>,
    /// Why there is no value.
    pub warning: Option<String>,
}

/// The globals of one process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Globals {
    /// The process.
    pub pid: i32,
    /// Its executable, as `/proc/PID/exe` resolves.
    pub executable: PathBuf,
    /// What was added to link-time addresses (PIE load bias).
    pub load_bias: u64,
    /// Every variable, in debug-info order (thread-locals last).
    pub globals: Vec<Global>,
    /// How long the process was stopped.
    pub stopped: Duration,
}

impl Globals {
    /// The variables that could not be read, with why.
    pub fn warnings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.globals
            .iter()
            .filter_map(|g| g.warning.as_deref().map(|w| (g.name.as_str(), w)))
    }
}

/// Reads and renders every global, file-static, function-static and (for the main thread)
/// thread-local variable of `pid`'s main executable. See the module documentation.
///
/// The process is stopped only while its memory is read: every variable is rendered once
/// with the process stopped (recording each read, without naming addresses), then the process
/// is released and the variables are rendered again from the recorded bytes, now naming
/// addresses — which may load libraries' debug info, and must not keep the process waiting.
/// (What is read never depends on names, so the second pass reads exactly what the first
/// recorded.) The [`Tracee`] guard releases the process on every path, errors included.
///
/// Fails only if the debug info cannot be loaded or the process cannot be stopped, mapped or
/// released; a variable that cannot be read or rendered becomes a warning.
pub fn globals(pid: Pid) -> Result<Globals, InspectError> {
    globals_with(pid, &LoadOptions::default())
}

/// [`globals`], looking for separate debug files (of the executable, and of the libraries
/// whose code addresses are named) as `options` say.
pub fn globals_with(pid: Pid, options: &LoadOptions) -> Result<Globals, InspectError> {
    let exe_link = tracer::procfs::exe_link(pid);
    let executable = tracer::procfs::exe(pid)?;
    let bin = Binary::load_with(&exe_link, options)?;
    let names = gdb_names(&bin);

    let tracee = Tracee::seize(pid)?;
    let stop_start = Instant::now();
    let resolver = SymbolResolver::new(pid)?;
    let main = main_object(pid, &resolver, &executable)?;
    let load_bias = bin.load_bias(main.base.get());
    if load_bias != main.bias {
        tracing::warn!(
            pid = pid.as_raw(),
            from_maps = main.bias,
            computed = load_bias,
            "load bias of the executable disagrees with the dynamic linker's placement"
        );
    }
    let layout = Layout {
        bin: &bin,
        names: &names,
        main_range: main.range,
        load_bias,
        tls_block: if bin.thread_locals().is_empty() {
            Err("no thread-local variables".into())
        } else {
            thread_local_block(&exe_link, &tracee, pid)
        },
    };
    let recorder = Recorder {
        inner: tracee.memory(),
        reads: RefCell::new(HashMap::new()),
    };
    let no_names = |_: RemoteAddr| None;
    layout.render_all(&recorder, &no_names);
    let reads = recorder.reads.into_inner();
    tracee.detach()?;
    let stopped = stop_start.elapsed();
    tracing::debug!(
        pid = pid.as_raw(),
        stopped_us = stopped.as_micros() as u64,
        reads = reads.len(),
        "globals captured"
    );

    let replay = Replay { reads };
    let namer = GdbSymbols::new(&bin, resolver, options.clone());
    let globals = layout.render_all(&replay, &namer);
    Ok(Globals {
        pid: pid.as_raw(),
        executable,
        load_bias,
        globals,
        stopped,
    })
}

/// The main executable among the objects `resolver` found in `pid`.
fn main_object(
    pid: Pid,
    resolver: &SymbolResolver,
    exe: &Path,
) -> Result<tracer::symbols::LoadedObject, InspectError> {
    resolver
        .objects()
        .iter()
        .find(|o| o.role == ObjectRole::Main)
        .cloned()
        .ok_or_else(|| InspectError::NoMainObject {
            pid,
            exe: exe.to_path_buf(),
        })
}

/// Where the variables are in one process.
struct Layout<'a> {
    bin: &'a Binary,
    names: &'a GdbNames,
    main_range: RemoteRange,
    load_bias: u64,
    /// The main thread's TLS block of the executable, or why it is unknown.
    tls_block: Result<u64, String>,
}

impl Layout<'_> {
    /// Every variable, rendered from `memory`, naming addresses with `namer`.
    fn render_all(&self, memory: &dyn Memory, namer: &dyn AddressNamer) -> Vec<Global> {
        let bin = self.bin;
        let printer = Printer::new(bin.types(), memory, namer);
        let mut globals = Vec::new();
        for (i, v) in bin.variables().iter().enumerate() {
            let address = v.address.wrapping_add(self.load_bias);
            let value = if self.main_range.contains(RemoteAddr::new(address)) {
                render(&printer, memory, bin, v.ty, address)
            } else {
                Err(format!(
                    "at {address:#x}, outside the executable's mapping (another object's variable)"
                ))
            };
            globals.push(Global {
                name: self.names.variables[i].clone(),
                kind: v.kind.clone(),
                thread_local: false,
                type_name: bin.type_name(v.ty),
                address,
                value: value.as_ref().ok().cloned(),
                warning: value.err(),
            });
        }
        for (i, t) in bin.thread_locals().iter().enumerate() {
            let (address, value) = match &self.tls_block {
                Ok(block) => {
                    let address = block.wrapping_add(t.offset);
                    (address, render(&printer, memory, bin, t.ty, address))
                }
                Err(e) => (0, Err(format!("thread-local storage not found: {e}"))),
            };
            globals.push(Global {
                name: self.names.thread_locals[i].clone(),
                kind: t.kind.clone(),
                thread_local: true,
                type_name: bin.type_name(t.ty),
                address,
                value: value.as_ref().ok().cloned(),
                warning: value.err(),
            });
        }
        globals
    }
}

/// Reads one variable and prints it.
fn render(
    printer: &Printer<'_>,
    memory: &dyn Memory,
    bin: &Binary,
    ty: TypeId,
    address: u64,
) -> Result<String, String> {
    let size = bin
        .byte_size(ty)
        .ok_or_else(|| format!("type `{}` has no known size", bin.type_name(ty)))?;
    let bytes = memory
        .read_vec(RemoteAddr::new(address), size as usize)
        .map_err(|e| e.to_string())?;
    printer
        .print(ty, &bytes, RemoteAddr::new(address))
        .map_err(|e| e.to_string())
}

/// Every read made of a stopped process, and what it gave (`None`: it failed).
type Reads = HashMap<(u64, usize), Option<Vec<u8>>>;

/// Passes reads through to the process and remembers them.
struct Recorder<'a> {
    inner: &'a dyn Memory,
    reads: RefCell<Reads>,
}

impl Memory for Recorder<'_> {
    fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> tracer::Result<()> {
        let r = self.inner.read(addr, buf);
        let kept = r.is_ok().then(|| buf.to_vec());
        self.reads
            .borrow_mut()
            .insert((addr.get(), buf.len()), kept);
        r
    }
}

/// Answers the reads a [`Recorder`] saw, as the process answered them.
struct Replay {
    reads: Reads,
}

impl Memory for Replay {
    fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> tracer::Result<()> {
        match self.reads.get(&(addr.get(), buf.len())) {
            Some(Some(bytes)) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            Some(None) => Err(tracer::Error::Unmapped {
                what: "the process (unreadable when captured)".into(),
                addr,
                len: buf.len(),
            }),
            None => Err(tracer::Error::Unmapped {
                what: "the capture (not read while the process was stopped)".into(),
                addr,
                len: buf.len(),
            }),
        }
    }
}

/// The start of the main executable's TLS block in the main thread: x86_64 TLS variant II puts
/// it just below the thread pointer (`fs_base`), at the offset glibc's
/// `_dl_determine_tlsoffset` gives the first module: `PT_TLS`'s size rounded up to its
/// alignment (adjusted for a misaligned start).
fn thread_local_block(exe: &Path, tracee: &Tracee, pid: Pid) -> Result<u64, String> {
    let regs = tracee.regs(pid).map_err(|e| e.to_string())?;
    thread_local_block_at(exe, regs.fs_base)
}

/// [`thread_local_block`] from the main thread's thread pointer recorded earlier.
fn thread_local_block_at(exe: &Path, fs_base: u64) -> Result<u64, String> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let data = std::fs::read(exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let file = ElfFile64::<object::Endianness>::parse(&*data)
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let endian = file.endian();
    let tls = file
        .elf_header()
        .program_headers(endian, &*data)
        .map_err(|e| format!("{}: {e}", exe.display()))?
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_TLS)
        .ok_or("the executable has no PT_TLS segment")?;
    let align = tls.p_align(endian).max(1);
    let memsz = tls.p_memsz(endian);
    let firstbyte = tls.p_vaddr(endian).wrapping_neg() & (align - 1);
    let offset = (memsz - firstbyte).div_ceil(align) * align + firstbyte;
    Ok(fs_base.wrapping_sub(offset))
}

/// Renders every variable of `pid`'s executable from memory captured earlier (such as
/// [`crate::state::live::LiveCapture::memory`]), the way [`globals`] does from the live
/// process: the same names and the same gdb text. `fs_base` is the main thread's thread
/// pointer at the capture, for thread-locals (`None`: they get a warning).
pub fn globals_from(
    pid: Pid,
    bin: &Binary,
    memory: &dyn Memory,
    fs_base: Option<u64>,
) -> Result<Vec<Global>, InspectError> {
    let exe_link = tracer::procfs::exe_link(pid);
    let names = gdb_names(bin);
    let resolver = SymbolResolver::new(pid)?;
    let main = main_object(pid, &resolver, &exe_link)?;
    let layout = Layout {
        bin,
        names: &names,
        main_range: main.range,
        load_bias: bin.load_bias(main.base.get()),
        tls_block: match fs_base {
            _ if bin.thread_locals().is_empty() => Err("no thread-local variables".into()),
            Some(fs) => thread_local_block_at(&exe_link, fs),
            None => Err("the main thread's thread pointer was not captured".into()),
        },
    };
    let namer = GdbSymbols::new(bin, resolver, LoadOptions::default());
    Ok(layout.render_all(memory, &namer))
}

/// The names gdb accepts for the variables and thread-locals of `bin`.
struct GdbNames {
    variables: Vec<String>,
    thread_locals: Vec<String>,
}

/// Names every variable as `print` accepts it: see [`Global::name`].
fn gdb_names(bin: &Binary) -> GdbNames {
    // A compilation unit is named by its file name, or its whole name if that is ambiguous.
    let mut base_count: HashMap<&str, usize> = HashMap::new();
    for u in bin.units() {
        *base_count.entry(basename(&u.name)).or_default() += 1;
    }
    let file = |cu: &str| {
        let b = basename(cu);
        if base_count.get(b).copied().unwrap_or(0) > 1 {
            cu.to_owned()
        } else {
            b.to_owned()
        }
    };
    let mut function_count: HashMap<&str, usize> = HashMap::new();
    for f in bin.functions() {
        *function_count.entry(f.name.as_str()).or_default() += 1;
    }
    // gdb calls a C variable by its linkage name when DWARF gives one (an `asm` label).
    let symbol = |name: &str, linkage: &Option<String>| -> String {
        let s = linkage.as_deref().unwrap_or(name);
        let identifier = !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if identifier {
            s.to_owned()
        } else {
            format!("'{s}'")
        }
    };
    let all: Vec<(String, &VariableKind)> = bin
        .variables()
        .iter()
        .map(|v| (symbol(&v.name, &v.linkage_name), &v.kind))
        .chain(
            bin.thread_locals()
                .iter()
                .map(|t| (symbol(&t.name, &t.linkage_name), &t.kind)),
        )
        .collect();
    // Globals and file statics (and thread-locals) share one namespace per name.
    let mut file_scope: HashMap<&str, usize> = HashMap::new();
    for (name, kind) in &all {
        if !matches!(kind, VariableKind::FunctionStatic { .. }) {
            *file_scope.entry(name.as_str()).or_default() += 1;
        }
    }
    let mut names: Vec<String> = all
        .iter()
        .map(|(name, kind)| match kind {
            VariableKind::Global => name.clone(),
            VariableKind::FileStatic { cu } => {
                if file_scope.get(name.as_str()).copied().unwrap_or(0) > 1 {
                    format!("'{}'::{name}", file(cu))
                } else {
                    name.clone()
                }
            }
            VariableKind::FunctionStatic { cu, function } => {
                if function_count.get(function.as_str()).copied().unwrap_or(0) > 1 {
                    format!("'{}'::{function}::{name}", file(cu))
                } else {
                    format!("{function}::{name}")
                }
            }
        })
        .collect();
    let thread_locals = names.split_off(bin.variables().len());
    GdbNames {
        variables: names,
        thread_locals,
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
