//! State the capture does not cover, found before the old process is stopped and again on
//! its captured state. The time-traveling check only compares what the capture saw, so every
//! place where a program may keep state beyond it is a refusal, naming the process, the
//! thread, the variable or the mapping, unless the rules file's `[leave]` section says it
//! may be left behind. Never "0 objects, 0 warnings" on a process whose data lives elsewhere.
//!
//! What is checked:
//! - threads other than the main thread (their stacks and registers are not carried);
//! - thread-local variables of the executable whose bytes differ from their initial image;
//! - an allocator other than glibc's malloc (jemalloc, tcmalloc, mimalloc, the executable's
//!   own `malloc`), whose heap the walk cannot see;
//! - private anonymous memory that is written but belongs to no known object (not the heap,
//!   a stack, a glibc arena or an `mmap`ped chunk): a custom allocator over `mmap`;
//! - a process title rewrite that leaves `/proc/PID/cmdline` unusable as the argument vector.

use std::path::Path;

use serde::Serialize;
use tracer::procfs::{Mapping, MappingKind};
use tracer::{Memory, Pid, ProcessMemory, RemoteAddr};

use crate::debuginfo::Binary;
use crate::mapping::rules::Rules;
use crate::state::{ExternalKind, StateGraph, Target};

/// What kind of uncovered state a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A thread whose state is not captured.
    Thread,
    /// A thread-local variable with a value of its own.
    ThreadLocal,
    /// A heap the walk does not understand.
    Allocator,
    /// Written memory that belongs to no known object.
    Mapping,
    /// The argument vector was overwritten.
    ProcessTitle,
    /// A pointer into a stack frame.
    Frame,
}

/// One piece of state the update would leave behind.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What it is.
    pub kind: Kind,
    /// What and where, precisely.
    pub message: String,
    /// The `[leave]` entry that would let the update go on without it, when there is one.
    pub leave: Option<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(l) = &self.leave {
            write!(f, " (to leave it behind: {l} in the rules file)")?;
        }
        Ok(())
    }
}

/// Shared libraries whose `malloc` replaces glibc's.
const FOREIGN_ALLOCATORS: &[(&str, &str)] = &[
    ("libjemalloc", "jemalloc"),
    ("libtcmalloc", "tcmalloc"),
    ("libmimalloc", "mimalloc"),
    ("libhoard", "Hoard"),
    ("libsnmalloc", "snmalloc"),
    ("librpmalloc", "rpmalloc"),
];

/// Symbols an executable that carries its own allocator defines.
const OWN_ALLOCATOR_SYMBOLS: &[(&str, &str)] = &[
    ("malloc", "its own malloc"),
    ("je_malloc", "jemalloc"),
    ("je_mallocx", "jemalloc"),
    ("tc_malloc", "tcmalloc"),
    ("mi_malloc", "mimalloc"),
    ("rpmalloc", "rpmalloc"),
];

/// The checks that need no stop: threads, allocator, unowned memory, and the process title
/// unless the argument vector is given (`argv_given`).
pub fn before_stop(pid: Pid, binary: &Binary, rules: &Rules, argv_given: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    threads(pid, rules, &mut out);
    allocator(pid, binary, rules, &mut out);
    if let Ok(maps) = tracer::procfs::maps(pid) {
        unowned_memory(
            pid,
            &maps,
            &ProcessMemory::new(pid),
            &[],
            &[],
            rules,
            &mut out,
        );
    }
    if let Some(f) = process_title(pid).filter(|_| !argv_given) {
        out.push(f);
    }
    out
}

/// The thread-locals of every thread of a stopped process.
pub fn thread_state(tracee: &tracer::Tracee, binary: &Binary, rules: &Rules) -> Vec<Finding> {
    let mut out = Vec::new();
    for tid in tracee.tids() {
        let Ok(r) = tracee.regs(tid) else { continue };
        thread_locals(
            tracee.pid(),
            tid,
            binary,
            r.fs_base,
            tracee.memory(),
            rules,
            &mut out,
        );
    }
    out
}

/// The checks on a stopped process: thread-locals of every thread (their thread pointers
/// are read from the stopped threads), unowned memory with the stopped threads' stacks known.
pub fn stopped(tracee: &tracer::Tracee, binary: &Binary, rules: &Rules) -> Vec<Finding> {
    let pid = tracee.pid();
    let mut out = Vec::new();
    let mut sps = Vec::new();
    let mut fs_bases = Vec::new();
    for tid in tracee.tids() {
        let Ok(r) = tracee.regs(tid) else { continue };
        sps.push(r.rsp);
        fs_bases.push(r.fs_base);
        thread_locals(
            pid,
            tid,
            binary,
            r.fs_base,
            tracee.memory(),
            rules,
            &mut out,
        );
    }
    if let Ok(maps) = tracer::procfs::maps(pid) {
        unowned_memory(
            pid,
            &maps,
            tracee.memory(),
            &sps,
            &fs_bases,
            rules,
            &mut out,
        );
    }
    out
}

/// Pointers of the captured state into a stack: a local that globals or the heap name,
/// which the transfer cannot carry yet.
pub fn pointers_into_stacks(pid: Pid, graph: &StateGraph, rules: &Rules) -> Vec<Finding> {
    let mut out = Vec::new();
    if rules.leave.frames.iter().any(|f| f == "*") {
        return out;
    }
    for e in &graph.edges {
        let Target::External(x) = &e.target else {
            continue;
        };
        if x.kind != ExternalKind::Stack {
            continue;
        }
        let from = graph.objects.get(e.from.0 as usize);
        let name = match from.map(|o| (&o.kind, o.addr)) {
            Some((crate::state::ObjectKind::Global { name, .. }, _)) => format!("global `{name}`"),
            Some((crate::state::ObjectKind::Heap, addr)) => format!("heap object at {addr}"),
            None => "an object".to_owned(),
        };
        out.push(Finding {
            kind: Kind::Frame,
            message: format!(
                "{name}{} of process {pid} points into a stack ({}): state in stack frames is \
                 not carried yet",
                e.path, e.value
            ),
            leave: Some("[leave] frames = [\"*\"]".into()),
        });
        if out.len() >= 8 {
            break;
        }
    }
    out
}

fn comm(pid: Pid, tid: Pid) -> String {
    tracer::procfs::read_text(pid, &format!("task/{tid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

fn threads(pid: Pid, rules: &Rules, out: &mut Vec<Finding>) {
    let Ok(tids) = tracer::procfs::threads(pid) else {
        return;
    };
    for tid in tids.into_iter().filter(|&t| t != pid) {
        let name = comm(pid, tid);
        if rules.leave.threads.iter().any(|t| *t == name || *t == "*") {
            continue;
        }
        let at = tracer::procfs::read_text(pid, &format!("task/{tid}/wchan"))
            .ok()
            .filter(|w| !w.is_empty() && w != "0")
            .map(|w| format!(", waiting in {w}"))
            .unwrap_or_default();
        out.push(Finding {
            kind: Kind::Thread,
            message: format!(
                "thread {tid} ({name}{at}) of process {pid}: the state of threads other than \
                 the main thread (their stacks, registers, the locks they hold) is not carried"
            ),
            leave: Some(format!("[leave] threads = [{name:?}]")),
        });
    }
}

fn allocator(pid: Pid, binary: &Binary, rules: &Rules, out: &mut Vec<Finding>) {
    if rules.leave.allocator {
        return;
    }
    let leave = Some("[leave] allocator = true".to_owned());
    if let Ok(maps) = tracer::procfs::maps(pid) {
        for m in &maps {
            let Some(path) = m.path() else { continue };
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            if let Some((_, name)) = FOREIGN_ALLOCATORS.iter().find(|(p, _)| file.starts_with(p)) {
                out.push(Finding {
                    kind: Kind::Allocator,
                    message: format!(
                        "process {pid} allocates with {name} ({} is mapped): only glibc's \
                         malloc heap is walked, so its heap objects would be left behind",
                        path.display()
                    ),
                    leave: leave.clone(),
                });
                return;
            }
        }
    }
    for s in binary.symbols() {
        if !matches!(s.kind, crate::debuginfo::SymbolKind::Function) || s.address == 0 {
            continue;
        }
        if let Some((_, name)) = OWN_ALLOCATOR_SYMBOLS.iter().find(|(n, _)| *n == s.name) {
            out.push(Finding {
                kind: Kind::Allocator,
                message: format!(
                    "process {pid}: its executable {} defines `{}` ({name}): only glibc's malloc \
                     heap is walked, so its heap objects would be left behind",
                    binary.path().display(),
                    s.name
                ),
                leave: leave.clone(),
            });
            return;
        }
    }
}

/// Private anonymous writable memory with pages in it that is none of: the heap, the main
/// stack, a stack of a thread (`sps`: their stack pointers), the `.bss` after a file's data,
/// a glibc arena (`heap_info` at a 64 MiB boundary) or an `mmap`ped malloc chunk.
fn unowned_memory(
    pid: Pid,
    maps: &[Mapping],
    mem: &dyn Memory,
    sps: &[u64],
    fs_bases: &[u64],
    rules: &Rules,
    out: &mut Vec<Finding>,
) {
    let rss = anonymous_pages(pid);
    let refs = References::read(pid, maps, mem);
    for (i, m) in maps.iter().enumerate() {
        if !(m.perms.write && !m.perms.shared && matches!(m.kind, MappingKind::Anonymous)) {
            continue;
        }
        let start = m.range.start.get();
        let end = m.range.end.get();
        if rss.get(&start).is_some_and(|&kb| kb == 0) {
            continue; // never written
        }
        if sps.iter().any(|&sp| sp >= start && sp < end) {
            continue;
        }
        // `.bss` and its like: right after a file's writable mapping.
        if i > 0 && maps[i - 1].range.end.get() == start && maps[i - 1].path().is_some() {
            continue;
        }
        // A thread stack, with a guard page right below it (glibc's pthread stacks).
        if i > 0
            && maps[i - 1].range.end.get() == start
            && !maps[i - 1].perms.read
            && !maps[i - 1].perms.write
        {
            continue;
        }
        if malloc_owned(mem, start, end) {
            continue;
        }
        // The loader's and libc's own memory (link maps, the main thread's TCB and static
        // TLS, `dtv`s): named by their data, not the program's. Memory the executable's data
        // names, or that nothing known names, is the program's.
        let tcb = fs_bases.iter().any(|&f| f >= start && f < end);
        if !refs.named_by_exe(start, end) && (refs.named_by_libs(start, end) || tcb) {
            continue;
        }
        let name = format!("{:#x}-{:#x}", start, end);
        if rules.leave.mappings.iter().any(|l| *l == name || *l == "*") {
            continue;
        }
        out.push(Finding {
            kind: Kind::Mapping,
            message: format!(
                "process {pid}: anonymous memory {name} ({} KiB) is written but belongs to no \
                 object the capture knows (not malloc's heap, an arena, an mmapped chunk or a \
                 stack): a custom allocator or a hand-made mapping, whose contents would be left \
                 behind",
                (end - start) / 1024
            ),
            leave: Some(format!("[leave] mappings = [{name:?}] (or \"*\")")),
        });
    }
}

/// The pointer-sized words of the executable's data and of the libraries' data (each with
/// the `.bss` that follows it), sorted, to see who names a mapping.
struct References {
    exe: Vec<u64>,
    libs: Vec<u64>,
}

impl References {
    fn read(pid: Pid, maps: &[Mapping], mem: &dyn Memory) -> References {
        let exe = tracer::procfs::exe(pid).ok();
        let (mut ex, mut libs) = (Vec::new(), Vec::new());
        let mut owner: Option<bool> = None; // Some(true): the executable's
        for m in maps {
            let data = m.perms.write && !m.perms.shared;
            owner = match (&m.kind, m.path()) {
                (_, Some(p)) if data => Some(Some(p) == exe.as_deref()),
                (MappingKind::Anonymous, None) if data => owner,
                _ => None,
            };
            let Some(is_exe) = owner else { continue };
            let len = m.range.len().min(16 << 20) as usize;
            let mut bytes = vec![0u8; len];
            if mem.read(m.range.start, &mut bytes).is_err() {
                continue;
            }
            let words = bytes
                .chunks_exact(8)
                .map(|w| u64::from_ne_bytes(w.try_into().expect("8")))
                .filter(|&w| w > 0xffff);
            if is_exe {
                ex.extend(words);
            } else {
                libs.extend(words);
            }
            // Only the first anonymous mapping after a file's is its `.bss`.
            if matches!(m.kind, MappingKind::Anonymous) {
                owner = None;
            }
        }
        ex.sort_unstable();
        libs.sort_unstable();
        References { exe: ex, libs }
    }

    fn any_in(words: &[u64], start: u64, end: u64) -> bool {
        let i = words.partition_point(|&w| w < start);
        i < words.len() && words[i] < end
    }

    fn named_by_exe(&self, start: u64, end: u64) -> bool {
        Self::any_in(&self.exe, start, end)
    }

    fn named_by_libs(&self, start: u64, end: u64) -> bool {
        Self::any_in(&self.libs, start, end)
    }
}

/// `Rss` in KiB of each mapping, by start address (`/proc/PID/smaps`).
fn anonymous_pages(pid: Pid) -> std::collections::HashMap<u64, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(text) = tracer::procfs::read_text(pid, "smaps") else {
        return out;
    };
    let mut current = None;
    for line in text.lines() {
        // A mapping's header: `START-END PERMS OFFSET DEV INODE [PATH]`.
        let first = line.split(' ').next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-') {
            if let (Ok(s), Ok(_)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                current = Some(s);
                continue;
            }
        }
        if let (Some(s), Some(v)) = (current, line.strip_prefix("Rss:")) {
            let kb = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(1);
            out.insert(s, kb);
        }
    }
    out
}

/// Whether glibc's malloc owns `[start, end)`: a chunk with `IS_MMAPPED` as large as the
/// mapping at its start (16 bytes of alignment allowed), or an arena's `heap_info` (glibc
/// aligns non-main heaps to `HEAP_MAX_SIZE`, 64 MiB).
fn malloc_owned(mem: &dyn Memory, start: u64, end: u64) -> bool {
    let mut head = [0u8; 32];
    if mem.read(RemoteAddr::new(start), &mut head).is_err() {
        return false;
    }
    let word = |i: usize| u64::from_ne_bytes(head[i * 8..i * 8 + 8].try_into().expect("8"));
    const IS_MMAPPED: u64 = 2;
    let len = end - start;
    for at in [1usize, 3] {
        let size = word(at);
        if size & IS_MMAPPED != 0 && (size & !7) <= len && (size & !7) + 4096 > len / 2 {
            return true;
        }
    }
    const HEAP_MAX: u64 = 64 << 20;
    // heap_info: ar_ptr, prev, size, mprotect_size.
    start.is_multiple_of(HEAP_MAX) && word(2) > 0 && word(2) <= HEAP_MAX && word(0) != 0
}

/// Thread-locals of the executable in thread `tid` whose bytes differ from the initial image
/// (`.tdata`, then zeros for `.tbss`).
fn thread_locals(
    pid: Pid,
    tid: Pid,
    binary: &Binary,
    fs_base: u64,
    mem: &dyn Memory,
    rules: &Rules,
    out: &mut Vec<Finding>,
) {
    if binary.thread_locals().is_empty() || fs_base == 0 {
        return;
    }
    let Ok(Some(tls)) = tls_template(binary.path()) else {
        return;
    };
    let block = fs_base.wrapping_sub(tls.offset);
    let mut now = vec![0u8; tls.image.len()];
    if mem.read(RemoteAddr::new(block), &mut now).is_err() {
        out.push(Finding {
            kind: Kind::ThreadLocal,
            message: format!(
                "thread {tid} of process {pid}: its thread-local block at {block:#x} cannot be \
                 read"
            ),
            leave: None,
        });
        return;
    }
    for t in binary.thread_locals() {
        let size = binary.types().byte_size(t.ty).unwrap_or(1).max(1) as usize;
        let (s, e) = (t.offset as usize, (t.offset as usize + size).min(now.len()));
        if s >= e || now[s..e] == tls.image[s..e] {
            continue;
        }
        if rules
            .leave
            .thread_locals
            .iter()
            .any(|n| *n == t.name || n == "*")
        {
            continue;
        }
        out.push(Finding {
            kind: Kind::ThreadLocal,
            message: format!(
                "thread-local `{}` of thread {tid} ({}) of process {pid} holds a value of its own \
                 (not its initial one): thread-local state is not carried",
                t.name,
                comm(pid, tid)
            ),
            leave: Some(format!("[leave] thread_locals = [{:?}]", t.name)),
        });
    }
}

/// An executable's thread-local block: its offset below the thread pointer and its initial
/// contents.
struct TlsTemplate {
    offset: u64,
    image: Vec<u8>,
}

/// Reads `PT_TLS` of `path` (x86-64, variant II: the block ends at the thread pointer, the
/// first module's offset is its size rounded up to its alignment, as glibc's
/// `_dl_determine_tlsoffset` computes).
fn tls_template(path: &Path) -> std::io::Result<Option<TlsTemplate>> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let data = read_head(std::fs::File::open(path)?)?;
    let bad = |e: object::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let elf = ElfFile64::<object::Endianness>::parse(&*data).map_err(bad)?;
    let endian = elf.endian();
    let Some(tls) = elf
        .elf_header()
        .program_headers(endian, &*data)
        .map_err(bad)?
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_TLS)
    else {
        return Ok(None);
    };
    let align = tls.p_align(endian).max(1);
    let memsz = tls.p_memsz(endian);
    let filesz = tls.p_filesz(endian).min(memsz);
    let firstbyte = tls.p_vaddr(endian).wrapping_neg() & (align - 1);
    let offset = (memsz - firstbyte).div_ceil(align) * align + firstbyte;
    let mut image = vec![0u8; memsz as usize];
    let off = tls.p_offset(endian) as usize;
    if let Some(init) = data.get(off..off + filesz as usize) {
        image[..filesz as usize].copy_from_slice(init);
    }
    Ok(Some(TlsTemplate { offset, image }))
}

fn read_head(file: std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    file.take(1 << 31).read_to_end(&mut data)?;
    Ok(data)
}

/// Whether the arguments area of `pid` still holds its argument vector. A process that
/// rewrote its title (`setproctitle`, Redis, nginx, PostgreSQL) overwrote it, often into the
/// environment that follows, padding with NULs: `/proc/PID/cmdline` then is not the argv.
fn process_title(pid: Pid) -> Option<Finding> {
    let stat = tracer::procfs::read_text(pid, "stat").ok()?;
    // Fields after the `(comm)`, which may contain spaces: field 3 is the first.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .map(|x| x.trim().parse().unwrap_or(0))
        .collect();
    // arg_start is field 48, so index 48 - 3.
    let (arg_start, arg_end) = (*f.get(45)?, *f.get(46)?);
    if arg_start == 0 || arg_end <= arg_start || arg_end - arg_start > 1 << 20 {
        return None;
    }
    let mut area = vec![0u8; (arg_end - arg_start) as usize];
    ProcessMemory::new(pid)
        .read(RemoteAddr::new(arg_start), &mut area)
        .ok()?;
    let intact = area.last() == Some(&0) && !area.windows(2).any(|w| w == [0, 0]);
    if intact {
        return None;
    }
    let shown: String = String::from_utf8_lossy(area.split(|&b| b == 0).next().unwrap_or(&[]))
        .chars()
        .take(60)
        .collect();
    Some(Finding {
        kind: Kind::ProcessTitle,
        message: format!(
            "process {pid} rewrote its title ({shown:?}): /proc/{pid}/cmdline is no longer the \
             argument vector it was started with, so the new version cannot be started with it"
        ),
        leave: Some("--argv ARG... on the command line, giving the arguments".into()),
    })
}

/// The findings as one refusal message.
pub fn refusal(findings: &[Finding]) -> String {
    let mut s = format!(
        "{} piece(s) of state the capture does not cover would be left behind:",
        findings.len()
    );
    for f in findings {
        s.push_str("\n  ");
        s.push_str(&f.to_string());
    }
    s
}
