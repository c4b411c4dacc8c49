//! Stack frames at the held points. The old process's main thread and the future's held
//! thread are unwound with the binaries' CFI ([`crate::stack`]); their frames in the program
//! are matched by function name from the outermost inwards (`main` -> loop function -> ...):
//! a chain that does not match is no held point.
//!
//! Frames are not carried yet (issue 11), so the state a program keeps in them is refused,
//! precisely, unless `[leave] frames` names the function. Which locals are state is found by
//! running the new version once round its loop before anything depends on it, with each
//! local that differs from the old process's given the old value ([`seed`]): what the loop computes
//! again changes (a loop counter, a `select` result, an `fd_set` built from globals),
//! what it carries across iterations keeps it, and gets its own back. A carried local must
//! then hold in the old process what it holds in the new version (the same number, a null
//! pointer, a pointer to the same kind of read-only thing), never a pointer into the heap,
//! the globals or a frame, which the new version's frame would not see.

use std::path::PathBuf;

use tracer::{Memory, Pid, RemoteAddr, Tracee};

use super::coverage::{Finding, Kind};
use crate::debuginfo::{Binary, Type, TypeId};
use crate::mapping::rules::Rules;
use crate::stack::{self, Place, ProcessImages, Registers, Stack};

/// The byte the future's frame slots are filled with to see which the loop writes.
const POISON: u8 = 0xa5;

/// One local of a program frame, read.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Index among the program frames, outermost first.
    pub frame: usize,
    /// The frame's function.
    pub function: String,
    /// The local's name.
    pub name: String,
    /// Its type, in the binary of its process.
    pub ty: TypeId,
    /// Where it is in memory (`None`: in a register).
    pub addr: Option<RemoteAddr>,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Which bytes the loop does not compute again (all, until [`poison`] says otherwise).
    pub carried: Vec<bool>,
}

/// A thread's program frames at its held point.
#[derive(Clone, Debug)]
pub struct Frames {
    /// Every frame's function, innermost first, for messages.
    pub all: Vec<String>,
    /// The program's frames' functions, outermost first: what is matched.
    pub chain: Vec<String>,
    /// Their locals.
    pub slots: Vec<Slot>,
    /// The stack the frames occupy: from the innermost `rsp` to the outermost CFA.
    pub extent: (u64, u64),
    /// Each program frame's memory, outermost first: from the CFA of the frame it called (or
    /// the innermost `rsp`) to its own CFA.
    pub ranges: Vec<(u64, u64)>,
}

impl Frames {
    /// The program frame holding stack address `v`, and how far below its CFA.
    fn frame_of(&self, v: u64) -> Option<(usize, u64)> {
        self.ranges
            .iter()
            .position(|&(lo, hi)| v >= lo && v < hi)
            .map(|i| (i, self.ranges[i].1 - v))
    }
}

impl Frames {
    /// `main -> serve -> poll`.
    pub fn describe(&self) -> String {
        let mut v: Vec<&str> = self.all.iter().rev().map(String::as_str).collect();
        v.dedup();
        v.join(" -> ")
    }
}

/// Unwinds thread `tid` of stopped `tracee` and reads the locals of its program frames.
pub fn read(
    tracee: &Tracee,
    tid: Pid,
    images: &ProcessImages,
    binary: &Binary,
) -> Result<Frames, stack::Error> {
    let regs = Registers::from(&tracee.regs(tid)?);
    let s = stack::unwind_thread(images, tracee.memory(), &regs)?;
    Ok(frames_of(
        &s,
        images,
        binary,
        tracee.memory(),
        regs.sp().unwrap_or(0),
    ))
}

fn frames_of(
    s: &Stack,
    images: &ProcessImages,
    binary: &Binary,
    mem: &dyn Memory,
    sp: u64,
) -> Frames {
    let program = images.program().map(|p| p.path.clone());
    let all = s.frames.iter().flat_map(|f| f.names()).collect();
    let hi = s
        .frames
        .iter()
        .filter_map(|f| f.cfa)
        .map(|c| c.get())
        .max()
        .unwrap_or(sp);
    let ours: Vec<&stack::Frame> = s
        .frames
        .iter()
        .rev()
        .filter(|f| f.object.is_some() && f.object == program)
        .collect();
    // Frame i's memory lies between the CFA of the frame below it and its own CFA.
    let mut below = sp;
    let mut ranges_inner_first = Vec::new();
    for f in &s.frames {
        let cfa = f.cfa.map_or(below, |c| c.get());
        if f.object.is_some() && f.object == program {
            ranges_inner_first.push((below, cfa));
        }
        below = cfa;
    }
    let ranges: Vec<(u64, u64)> = ranges_inner_first.into_iter().rev().collect();
    let mut chain = Vec::new();
    let mut slots = Vec::new();
    for (i, f) in ours.iter().enumerate() {
        let function = f
            .function
            .as_ref()
            .map_or_else(|| "??".to_owned(), |f| f.demangled.clone());
        chain.push(function.clone());
        let mut seen: Vec<RemoteAddr> = Vec::new();
        for l in &f.locals {
            let Some(size) = binary.byte_size(l.ty).map(|s| s as usize) else {
                continue;
            };
            let (addr, bytes) = match &l.place {
                Place::Memory(a) => {
                    if seen.contains(a) {
                        continue;
                    }
                    seen.push(*a);
                    match mem.read_vec(*a, size) {
                        Ok(b) => (Some(*a), b),
                        Err(_) => continue,
                    }
                }
                Place::Register { value, .. } if size <= 8 => {
                    (None, value.to_le_bytes()[..size].to_vec())
                }
                _ => continue,
            };
            slots.push(Slot {
                frame: i,
                function: function.clone(),
                name: l.name.clone(),
                ty: l.ty,
                addr,
                carried: vec![true; bytes.len()],
                bytes,
            });
        }
    }
    Frames {
        all,
        chain,
        slots,
        extent: (sp, hi),
        ranges,
    }
}

/// Whether the program frames of the old and the new version correspond: the same
/// functions from the outermost inwards (old names through `[rename] functions`).
pub fn chains_match(old: &Frames, new: &Frames, rules: &Rules) -> bool {
    old.chain.len() == new.chain.len()
        && old
            .chain
            .iter()
            .zip(&new.chain)
            .all(|(o, n)| o == n || rules.function_renames.get(o).is_some_and(|r| r == n))
}

/// Marks the bytes of `frames`' locals that the held call writes before the program reads
/// them (its results: the events of `epoll_wait`, the buffer of `read`, ...) as not carried.
pub fn written_by_call(frames: &mut Frames, entry: &tracer::SyscallEntry) {
    let a = entry.args;
    let outputs: Vec<(u64, u64)> = match entry.nr as i64 {
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => {
            vec![(a[1], a[2].min(1 << 16) * 12)]
        }
        libc::SYS_read | libc::SYS_recvfrom => vec![(a[1], a[2].min(1 << 24))],
        libc::SYS_poll | libc::SYS_ppoll => (0..a[1].min(1 << 16))
            .map(|i| (a[0] + i * 8 + 6, 2))
            .collect(),
        _ => Vec::new(),
    };
    for s in &mut frames.slots {
        let Some(at) = s.addr else { continue };
        let start = at.get();
        for (o, len) in &outputs {
            for i in 0..s.bytes.len() as u64 {
                if start + i >= *o && start + i < o + len {
                    s.carried[i as usize] = false;
                }
            }
        }
    }
}

/// Writes into the memory slots `which` (indices into `frames.slots`) of `tracee` the values
/// the old process's frames hold for the same locals (`old`), so that one round of the loop
/// shows which it computes again (they change) and which it carries (they keep the old
/// value). A local the old frame lacks, or of another size, gets [`POISON`]. Returns what
/// was there, and what was written.
pub fn seed(
    tracee: &Tracee,
    frames: &Frames,
    binary: &Binary,
    which: &[usize],
    old: &Frames,
) -> tracer::Result<Vec<Seeded>> {
    let mut out = Vec::new();
    for &i in which {
        let s = &frames.slots[i];
        let Some(a) = s.addr else { continue };
        let mut value = old
            .slots
            .iter()
            .find(|o| o.frame == s.frame && o.name == s.name && o.bytes.len() == s.bytes.len())
            .map_or_else(|| vec![POISON; s.bytes.len()], |o| o.bytes.clone());
        // The elements of an array that hold the same in both get poison instead, so that
        // the round shows it rewrote them too (an array rebuilt up to a count).
        let types = binary.types();
        if let Type::Array { element, .. } = types.get(types.strip_typedefs_cv(s.ty)) {
            let es = binary.byte_size(*element).unwrap_or(0) as usize;
            if es > 0 {
                for (e, chunk) in value.chunks_mut(es).enumerate() {
                    let orig = &s.bytes[e * es..(e * es + chunk.len())];
                    if chunk == orig {
                        chunk.fill(POISON);
                    }
                }
            }
        }
        tracee.poke(a, &value)?;
        out.push(Seeded {
            slot: i,
            original: s.bytes.clone(),
            written: value,
        });
    }
    Ok(out)
}

/// A local [`seed`] wrote.
pub struct Seeded {
    slot: usize,
    original: Vec<u8>,
    written: Vec<u8>,
}

/// After a round of the loop: the bytes of seeded locals that no longer hold what [`seed`]
/// wrote were computed again by the loop and are not carried; the carried ones get back
/// what they held.
pub fn unseed(tracee: &Tracee, frames: &mut Frames, seeded: &[Seeded]) -> tracer::Result<()> {
    for sd in seeded {
        let s = &mut frames.slots[sd.slot];
        let Some(a) = s.addr else { continue };
        let now = tracee.memory().read_vec(a, s.bytes.len())?;
        let mut restored = now.clone();
        for i in 0..now.len() {
            s.carried[i] = s.carried[i] && now[i] == sd.written[i];
            if s.carried[i] {
                restored[i] = sd.original[i];
            }
        }
        tracee.poke(a, &restored)?;
        s.bytes = restored;
    }
    Ok(())
}

/// What a pointer of the old process points at, as far as matching goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Points {
    /// Null.
    Null,
    /// The heap or other anonymous memory.
    Heap,
    /// The executable's writable data (its globals).
    Globals,
    /// The stack frames.
    Frame,
    /// Code, read-only data, libraries, the argument area: the same kind of thing in both.
    Other,
}

/// Classifies pointers of a process by its mappings.
pub struct Regions {
    maps: Vec<tracer::procfs::Mapping>,
    exe: Option<PathBuf>,
    frames: (u64, u64),
}

impl Regions {
    /// The regions of process `pid`, with its frames at `frames`.
    pub fn of(pid: Pid, frames: (u64, u64)) -> Regions {
        Regions {
            maps: tracer::procfs::maps(pid).unwrap_or_default(),
            exe: tracer::procfs::exe(pid).ok(),
            frames,
        }
    }

    fn classify(&self, v: u64) -> Points {
        use tracer::procfs::MappingKind;
        if v == 0 {
            return Points::Null;
        }
        if v >= self.frames.0 && v < self.frames.1 {
            return Points::Frame;
        }
        let Some(i) = self
            .maps
            .iter()
            .position(|m| m.range.contains(RemoteAddr::new(v)))
        else {
            return Points::Other;
        };
        let m = &self.maps[i];
        let exe =
            |m: &tracer::procfs::Mapping| m.path().is_some() && m.path() == self.exe.as_deref();
        match &m.kind {
            MappingKind::Heap => Points::Heap,
            MappingKind::Anonymous if m.perms.write => {
                if i > 0 && self.maps[i - 1].range.end == m.range.start && exe(&self.maps[i - 1]) {
                    Points::Globals
                } else {
                    Points::Heap
                }
            }
            _ if m.perms.write && exe(m) => Points::Globals,
            _ => Points::Other,
        }
    }
}

/// The findings of comparing the old process's frames with the new version's at their held
/// points: state in carried locals that the new version's frames do not have.
pub fn compare(
    old: &Frames,
    old_bin: &Binary,
    old_regions: &Regions,
    new: &Frames,
    new_bin: &Binary,
    pid: Pid,
    rules: &Rules,
) -> Vec<Finding> {
    differences(old, old_bin, old_regions, new, new_bin, pid, rules)
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

/// As [`compare`], each finding with the index of the new version's local it is about
/// (`None` for a local the new frame lacks).
pub fn differences(
    old: &Frames,
    old_bin: &Binary,
    old_regions: &Regions,
    new: &Frames,
    new_bin: &Binary,
    pid: Pid,
    rules: &Rules,
) -> Vec<(Option<usize>, Finding)> {
    let leave = |f: &str| rules.leave.frames.iter().any(|l| l == f || l == "*");
    let mut out = Vec::new();
    for o in &old.slots {
        if leave(&o.function) {
            continue;
        }
        let Some((ni, n)) = new
            .slots
            .iter()
            .enumerate()
            .find(|(_, n)| n.frame == o.frame && n.name == o.name)
        else {
            out.push((
                None,
                finding(
                    pid,
                    o,
                    "exists in the old frame only, and the new version's frame has no such local"
                        .into(),
                ),
            ));
            continue;
        };
        let mut why = Vec::new();
        let w = Walk {
            old_frames: old,
            new_frames: new,
            old_bin,
            new_bin,
            regions: old_regions,
            old: &o.bytes,
            new: &n.bytes,
            carried: &n.carried,
        };
        w.walk(o.ty, n.ty, 0, &o.name, &mut why, 0);
        if let Some(first) = why.into_iter().next() {
            out.push((Some(ni), finding(pid, o, first)));
        }
        if out.len() >= 12 {
            break;
        }
    }
    out
}

fn finding(pid: Pid, s: &Slot, why: String) -> Finding {
    Finding {
        kind: Kind::Frame,
        message: format!(
            "local `{}` of `{}` (frame {} from the outermost) in process {pid} {why}: state in \
             stack frames is not carried yet",
            s.name, s.function, s.frame
        ),
        leave: Some(format!("[leave] frames = [{:?}]", s.function)),
    }
}

struct Walk<'a> {
    old_frames: &'a Frames,
    new_frames: &'a Frames,
    old_bin: &'a Binary,
    new_bin: &'a Binary,
    regions: &'a Regions,
    old: &'a [u8],
    new: &'a [u8],
    carried: &'a [bool],
}

impl Walk<'_> {
    fn carried(&self, at: usize, len: usize) -> bool {
        at + len <= self.carried.len()
            && at + len <= self.old.len()
            && at + len <= self.new.len()
            && self.carried[at..at + len].iter().any(|&c| c)
    }

    fn walk(
        &self,
        ot: TypeId,
        nt: TypeId,
        at: usize,
        path: &str,
        why: &mut Vec<String>,
        depth: u32,
    ) {
        if depth > 16 || why.len() > 2 {
            return;
        }
        let o_types = self.old_bin.types();
        let n_types = self.new_bin.types();
        let ot = o_types.strip_typedefs_cv(ot);
        let nt = n_types.strip_typedefs_cv(nt);
        let size = self.old_bin.byte_size(ot).unwrap_or(0) as usize;
        if size == 0 || !self.carried(at, size) {
            return;
        }
        match (o_types.get(ot), n_types.get(nt)) {
            (Type::Pointer { .. }, Type::Pointer { .. }) => {
                let word = |b: &[u8]| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
                let (ov, nv) = (word(self.old), word(self.new));
                let kind = self.regions.classify(ov);
                // Into the corresponding place of the corresponding frame: the same pointer.
                if kind == Points::Frame {
                    let (o, n) = (self.old_frames.frame_of(ov), self.new_frames.frame_of(nv));
                    if o.is_some() && o == n {
                        return;
                    }
                }
                match kind {
                    Points::Heap | Points::Globals | Points::Frame => why.push(format!(
                        "(`{path}` = {ov:#x}) points into {}",
                        match kind {
                            Points::Heap => "the heap",
                            Points::Globals => "the globals",
                            _ => "a stack frame",
                        }
                    )),
                    Points::Null if nv != 0 => {
                        why.push(format!("(`{path}`) is null in the old process only"))
                    }
                    Points::Other if nv == 0 => {
                        why.push(format!("(`{path}`) is null in the new version only"))
                    }
                    _ => {}
                }
            }
            (Type::Struct(oc), Type::Struct(nc)) => {
                for m in &oc.members {
                    let Some(name) = &m.name else { continue };
                    let Some(nm) = nc.members.iter().find(|x| x.name.as_ref() == Some(name)) else {
                        continue;
                    };
                    if m.offset != nm.offset || m.bit_field.is_some() {
                        self.bytes(at + m.offset as usize, 1, path, why);
                        continue;
                    }
                    self.walk(
                        m.ty,
                        nm.ty,
                        at + m.offset as usize,
                        &format!("{path}.{name}"),
                        why,
                        depth + 1,
                    );
                }
            }
            (Type::Array { element: oe, dims }, Type::Array { element: ne, .. }) => {
                let count: u64 = dims.iter().map(|d| d.unwrap_or(0)).product();
                let es = self.old_bin.byte_size(*oe).unwrap_or(0) as usize;
                if es == 0 {
                    return;
                }
                let count = (count as usize).min(4096);
                // An array the round rewrote part of is rebuilt on each round (up to a count
                // the loop keeps elsewhere): its elements past the last one rewritten are
                // dead, whatever they hold.
                let rewritten = |i: usize| {
                    (at + i * es..at + (i + 1) * es).any(|b| self.carried.get(b) == Some(&false))
                };
                let live = (0..count)
                    .rev()
                    .find(|&i| rewritten(i))
                    .map_or(count, |i| i + 1);
                for i in 0..live {
                    self.walk(
                        *oe,
                        *ne,
                        at + i * es,
                        &format!("{path}[{i}]"),
                        why,
                        depth + 1,
                    );
                    if !why.is_empty() {
                        return;
                    }
                }
            }
            _ => self.bytes(at, size, path, why),
        }
    }

    fn bytes(&self, at: usize, len: usize, path: &str, why: &mut Vec<String>) {
        let range = at..at + len;
        let differs = range
            .clone()
            .any(|i| self.carried.get(i) == Some(&true) && self.old.get(i) != self.new.get(i));
        if differs {
            let show = |b: &[u8]| {
                if len <= 8 {
                    let mut w = [0u8; 8];
                    w[..len].copy_from_slice(&b[range.clone()]);
                    format!("{}", i64::from_le_bytes(w))
                } else {
                    format!("{len} bytes")
                }
            };
            why.push(format!(
                "(`{path}`) holds {} in the old process and {} in the new version",
                show(self.old),
                show(self.new)
            ));
        }
    }
}
