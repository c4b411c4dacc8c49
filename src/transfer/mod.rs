//! Rebuilding a captured state inside another process.
//!
//! [`Plan`] says, for every object of the source state, where it goes in the target (a global
//! at its address there, or a new heap object of some size), what its bytes are in the
//! target's layout, and which of its words are pointers and where they must point. Planning is
//! pure. [`apply`] carries a plan out in a stopped target: all heap objects are allocated with
//! the target's own `malloc` in one injected batch (so the program can later `free` or
//! `realloc` them normally), pointers are relocated, everything is written with batched
//! `process_vm_writev`, and the target's own start-up objects that the transfer displaced are
//! freed.
//!
//! The planner here transfers between programs whose types have the same layout (the same
//! program, or versions that did not change the captured types); converting between changed
//! layouts is the mapping's part.

use std::collections::{HashMap, HashSet, VecDeque};

use tracer::remote::RemoteSession;
use tracer::symbols::SymbolResolver;
use tracer::{MemoryMut, RemoteAddr};

use crate::debuginfo::Binary;
use crate::state::{ExternalKind, ObjectId, ObjectKind, StateGraph, Target};

mod mapped;
pub use mapped::plan_mapped;

/// Where a planned object goes in the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A global or static variable of the target, at this address.
    Global(RemoteAddr),
    /// A new heap object of this many bytes, allocated with the target's `malloc`.
    Heap(u64),
}

/// What a pointer word of a planned object must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// The address of planned object `index`, plus `offset`.
    Object {
        /// Index into [`Plan::objects`].
        index: usize,
        /// Interior offset.
        offset: u64,
    },
    /// A fixed address in the target (a function, a library's data, a string literal).
    Address(RemoteAddr),
}

/// One object of the transferred state.
#[derive(Clone, Debug)]
pub struct PlannedObject {
    /// The source object it comes from; `None` for a value a rule gives (a default for a
    /// global only the target has).
    pub source: Option<ObjectId>,
    /// Where it goes.
    pub place: Place,
    /// Its bytes in the target's layout (pointer words are overwritten by `pointers`).
    pub bytes: Vec<u8>,
    /// Its pointer words: offset in `bytes` and what they must hold.
    pub pointers: Vec<(u64, Value)>,
}

/// A transfer, planned.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Every object to write, globals first.
    pub objects: Vec<PlannedObject>,
    /// The target's own heap objects that nothing will reach after the transfer: freed.
    pub displaced: Vec<RemoteAddr>,
}

impl Plan {
    /// Number of heap objects to allocate.
    pub fn heap_objects(&self) -> usize {
        self.objects
            .iter()
            .filter(|o| matches!(o.place, Place::Heap(_)))
            .count()
    }

    /// Bytes to write.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.bytes.len() as u64).sum()
    }
}

/// Why a transfer cannot be planned or carried out.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The state holds something this transfer will not move; `path` names it.
    #[error("cannot transfer `{path}`: {why}")]
    Refused {
        /// Where in the state (`table->buckets[3]->cb`-like).
        path: String,
        /// Why not.
        why: String,
    },
    /// Running code in or writing to the target failed.
    #[error("target process: {0}")]
    Target(#[from] tracer::Error),
    /// The target's `malloc` returned NULL.
    #[error(
        "the target's malloc returned NULL for {count} of {total} objects (first: {size} bytes)"
    )]
    OutOfMemory {
        /// How many allocations failed.
        count: usize,
        /// How many were asked for.
        total: usize,
        /// Size of the first failed one.
        size: u64,
    },
}

/// The target side of a transfer: its program, load bias, symbols and its own state.
pub struct Destination<'a> {
    /// The target's executable.
    pub binary: &'a Binary,
    /// Its load bias.
    pub bias: u64,
    /// Its loaded objects' symbols (functions, libraries' data).
    pub symbols: &'a SymbolResolver,
    /// Its own state before the transfer (to find what the transfer displaces).
    pub graph: &'a StateGraph,
    /// The read-only data of its executable ([`read_only_data`]): string literals are found
    /// there by content.
    pub rodata: &'a [(RemoteAddr, Vec<u8>)],
}

/// The read-only, non-executable mappings of the executable of process `pid`, copied: where
/// the target's string literals are.
pub fn read_only_data(pid: tracer::Pid) -> tracer::Result<Vec<(RemoteAddr, Vec<u8>)>> {
    use tracer::Memory;
    let exe = tracer::procfs::exe(pid)?;
    let mem = tracer::ProcessMemory::new(pid);
    let mut out = Vec::new();
    for m in tracer::procfs::maps(pid)? {
        if m.perms.read && !m.perms.write && !m.perms.exec && m.path() == Some(exe.as_path()) {
            out.push((
                m.range.start,
                mem.read_vec(m.range.start, m.range.len() as usize)?,
            ));
        }
    }
    Ok(out)
}

/// Where external pointer `x` (from the source) must point in the target: functions and
/// libraries' data by symbol (a removed function by its `renames` replacement), string
/// literals by content. The error says why it cannot be named there.
pub(crate) fn resolve_external(
    x: &crate::state::External,
    dst: &Destination<'_>,
    renames: &std::collections::BTreeMap<String, String>,
) -> Result<RemoteAddr, String> {
    if matches!(x.kind, ExternalKind::Stack | ExternalKind::Anonymous) {
        return Err(format!(
            "points into {:?} memory, which is not transferred",
            x.kind
        ));
    }
    if let Some(symbol) = &x.symbol {
        let name = renames.get(symbol).unwrap_or(symbol);
        if let Ok(base) = dst.symbols.lookup(name) {
            return Ok(RemoteAddr::new(base.get() + x.offset));
        }
        if x.string.is_none() {
            return Err(format!("symbol `{name}` does not exist in the target"));
        }
    }
    if let (ExternalKind::ReadOnlyData, Some(text)) = (x.kind, &x.string) {
        let mut needle = text.as_bytes().to_vec();
        needle.push(0);
        for (start, bytes) in dst.rodata {
            if let Some(at) = bytes
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
            {
                return Ok(RemoteAddr::new(start.get() + at as u64));
            }
        }
        return Err(format!("the string literal {text:?} is not in the target"));
    }
    Err(format!(
        "points into {} ({:?}) where no symbol names the address",
        x.object.as_deref().unwrap_or("anonymous memory"),
        x.kind
    ))
}

/// The name of object `id` of `graph` for messages.
pub(crate) fn object_name(graph: &StateGraph, id: ObjectId) -> String {
    match &graph.object(id).kind {
        ObjectKind::Global { name, .. } => name.clone(),
        ObjectKind::Heap => format!("heap object at {}", graph.object(id).addr),
    }
}

/// Plans the transfer of `src` (captured from a program described by `src_bin`) into `dst`,
/// for types of identical layout: every global must exist in the target with the same name,
/// kind, type name and size. Fails closed, naming the path, on anything else, on pointers to
/// freed or unmapped memory, and on external pointers that cannot be named by symbol.
pub fn plan_same_layout(
    src: &StateGraph,
    src_bin: &Binary,
    dst: &Destination<'_>,
) -> Result<Plan, TransferError> {
    let mut plan = Plan {
        objects: Vec::with_capacity(src.objects.len()),
        displaced: Vec::new(),
    };
    let mut index = ObjectIndex::new(src);
    let mut overwritten: HashSet<RemoteAddr> = HashSet::new();
    for o in &src.objects {
        let place = match &o.kind {
            ObjectKind::Global { var, .. } => {
                let v = &src_bin.variables()[*var];
                let Some((_, d)) = dst
                    .binary
                    .variables()
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.name == v.name && d.kind == v.kind)
                else {
                    return Err(TransferError::Refused {
                        path: v.name.clone(),
                        why: "no variable of this name in the target".into(),
                    });
                };
                let (st, dt) = (src_bin.type_name(v.ty), dst.binary.type_name(d.ty));
                if st != dt || src_bin.byte_size(v.ty) != dst.binary.byte_size(d.ty) {
                    return Err(TransferError::Refused {
                        path: v.name.clone(),
                        why: format!("type `{st}` became `{dt}`: needs a mapping"),
                    });
                }
                let addr = RemoteAddr::new(d.address.wrapping_add(dst.bias));
                overwritten.insert(addr);
                Place::Global(addr)
            }
            ObjectKind::Heap => Place::Heap(o.size.max(1)),
        };
        index.set(o.id, plan.objects.len());
        plan.objects.push(PlannedObject {
            source: Some(o.id),
            place,
            bytes: o.bytes.clone(),
            pointers: Vec::new(),
        });
    }
    for e in &src.edges {
        let path = || format!("{}{}", object_name(src, e.from), e.path);
        let value = match &e.target {
            Target::Object { id, offset } => Value::Object {
                index: index.get(*id).expect("every object is planned"),
                offset: *offset,
            },
            Target::Dangling { why } => {
                return Err(TransferError::Refused {
                    path: path(),
                    why: format!("points to {why} ({})", e.value),
                })
            }
            Target::External(x) => match resolve_external(x, dst, &Default::default()) {
                Ok(a) => Value::Address(a),
                Err(why) => return Err(TransferError::Refused { path: path(), why }),
            },
        };
        let from = index.get(e.from).expect("every object is planned");
        plan.objects[from].pointers.push((e.offset, value));
    }
    plan.displaced = displaced(dst.graph, &overwritten);
    Ok(plan)
}

/// Where each source object went in [`Plan::objects`], by [`ObjectId`]: ids are dense
/// indices, so a vector replaces a hash map on the planners' per-object and per-edge paths.
pub(crate) struct ObjectIndex(Vec<u32>);

impl ObjectIndex {
    const NONE: u32 = u32::MAX;

    /// An index with room for every object of `graph`, all unplanned.
    pub(crate) fn new(graph: &StateGraph) -> Self {
        let len = graph
            .objects
            .iter()
            .map(|o| o.id.index() + 1)
            .max()
            .unwrap_or(0);
        ObjectIndex(vec![Self::NONE; len])
    }

    /// One past the largest object id.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Records that object `id` is planned at `at`.
    pub(crate) fn set(&mut self, id: ObjectId, at: usize) {
        let at = u32::try_from(at)
            .ok()
            .filter(|&a| a != Self::NONE)
            .expect("fewer than 2^32 - 1 planned objects");
        self.0[id.index()] = at;
    }

    /// Where object `id` is planned, if it is.
    pub(crate) fn get(&self, id: ObjectId) -> Option<usize> {
        match self.0.get(id.index()) {
            Some(&at) if at != Self::NONE => Some(at as usize),
            _ => None,
        }
    }
}

/// The target's heap objects reachable only from globals the transfer overwrites.
pub(crate) fn displaced(graph: &StateGraph, overwritten: &HashSet<RemoteAddr>) -> Vec<RemoteAddr> {
    let mut kept: HashSet<ObjectId> = HashSet::new();
    let mut queue: VecDeque<ObjectId> = graph
        .objects
        .iter()
        .filter(|o| matches!(o.kind, ObjectKind::Global { .. }) && !overwritten.contains(&o.addr))
        .map(|o| o.id)
        .collect();
    let mut out_edges: HashMap<ObjectId, Vec<ObjectId>> = HashMap::new();
    for e in &graph.edges {
        if let Target::Object { id, .. } = e.target {
            out_edges.entry(e.from).or_default().push(id);
        }
    }
    while let Some(id) = queue.pop_front() {
        if kept.insert(id) {
            queue.extend(out_edges.get(&id).into_iter().flatten().copied());
        }
    }
    graph
        .heap_objects()
        .filter(|o| !kept.contains(&o.id))
        .map(|o| o.addr)
        .collect()
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Where each planned object ended up, in plan order.
    pub addresses: Vec<RemoteAddr>,
    /// Heap objects allocated.
    pub allocated: usize,
    /// Bytes written.
    pub written: u64,
    /// Displaced objects freed.
    pub freed: usize,
}

/// Carries out `plan` in the target through `session` (a stopped thread of it), using the
/// target's `malloc` and `free`. On error the target is left half-written: it is the caller's
/// to discard (the update kills it).
pub fn apply(
    session: &mut RemoteSession<'_>,
    malloc: RemoteAddr,
    free: RemoteAddr,
    plan: &Plan,
) -> Result<Applied, TransferError> {
    let sizes: Vec<u64> = plan
        .objects
        .iter()
        .filter_map(|o| match o.place {
            Place::Heap(size) => Some(size),
            Place::Global(_) => None,
        })
        .collect();
    let fresh = session.call_many(malloc, &sizes)?;
    let failed: Vec<usize> = (0..fresh.len()).filter(|&i| fresh[i] == 0).collect();
    if let Some(&first) = failed.first() {
        // Give back what was allocated: the target may live on if the caller wants.
        let got: Vec<u64> = fresh.iter().copied().filter(|&p| p != 0).collect();
        session.call_many(free, &got)?;
        return Err(TransferError::OutOfMemory {
            count: failed.len(),
            total: sizes.len(),
            size: sizes[first],
        });
    }
    let mut fresh = fresh.into_iter();
    let addresses: Vec<RemoteAddr> = plan
        .objects
        .iter()
        .map(|o| match o.place {
            Place::Global(a) => a,
            Place::Heap(_) => RemoteAddr::new(fresh.next().expect("one address per heap object")),
        })
        .collect();
    // Every object's bytes, relocated, side by side in one buffer: one allocation instead of
    // one per object, and the write takes slices of it.
    let total: usize = plan.objects.iter().map(|o| o.bytes.len()).sum();
    let mut image: Vec<u8> = Vec::with_capacity(total);
    for o in &plan.objects {
        let start = image.len();
        image.extend_from_slice(&o.bytes);
        let bytes = &mut image[start..];
        for (off, v) in &o.pointers {
            let value = match v {
                Value::Object { index, offset } => addresses[*index].get() + offset,
                Value::Address(a) => a.get(),
            };
            let off = *off as usize;
            bytes[off..off + 8].copy_from_slice(&value.to_ne_bytes());
        }
    }
    let mut rest = image.as_slice();
    let mut globals: Vec<(RemoteAddr, &[u8])> = Vec::new();
    let mut heap: Vec<(RemoteAddr, &[u8])> = Vec::with_capacity(sizes.len());
    for (a, o) in addresses.iter().zip(&plan.objects) {
        let (bytes, tail) = rest.split_at(o.bytes.len());
        rest = tail;
        if bytes.is_empty() {
            continue;
        }
        match o.place {
            Place::Global(_) => globals.push((*a, bytes)),
            Place::Heap(_) => heap.push((*a, bytes)),
        }
    }
    let memory = session.tracee().memory();
    memory.write_many(&globals)?;
    write_coalesced(memory, &heap)?;
    let displaced: Vec<u64> = plan.displaced.iter().map(|a| a.get()).collect();
    session.call_many(free, &displaced)?;
    Ok(Applied {
        allocated: sizes.len(),
        written: image.len() as u64,
        freed: displaced.len(),
        addresses,
    })
}

/// Largest gap between two heap objects that [`write_coalesced`] writes in one piece.
const MAX_GAP: u64 = 256;

/// Writes `pieces` (objects of the target's heap) like [`MemoryMut::write_many`], with fewer
/// and larger writes: the kernel pins and copies each piece of a `process_vm_writev`
/// separately, which for a million small objects costs far more than their bytes. Pieces
/// less than [`MAX_GAP`] bytes apart are joined into one run: the run is read from the
/// target, the pieces are laid over it, and it is written back whole, so the bytes between
/// them (malloc's headers, unused tails) are written with the values they had. That is only
/// sound while the target is stopped, as [`apply`] requires. If a run cannot be read, every
/// piece is written on its own.
fn write_coalesced<M: MemoryMut + ?Sized>(
    memory: &M,
    pieces: &[(RemoteAddr, &[u8])],
) -> tracer::Result<()> {
    let end = |i: usize| pieces[i].0.get().saturating_add(pieces[i].1.len() as u64);
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    // Fresh allocations come mostly in address order: the sort finds the runs quickly.
    order.sort_unstable_by_key(|&i| pieces[i].0);
    // Runs of `order`, each with its first and one-past-last address.
    let mut runs: Vec<(u64, u64, std::ops::Range<usize>)> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let start = pieces[i].0.get();
        match runs.last_mut() {
            Some((_, last, ks)) if start >= *last && start - *last <= MAX_GAP => {
                *last = end(i);
                ks.end = k + 1;
            }
            _ => runs.push((start, end(i), k..k + 1)),
        }
    }
    let joined: Vec<&(u64, u64, std::ops::Range<usize>)> =
        runs.iter().filter(|r| r.2.len() > 1).collect();
    let mut buffer = vec![0u8; joined.iter().map(|r| (r.1 - r.0) as usize).sum()];
    {
        let mut rest = buffer.as_mut_slice();
        let mut reads: Vec<(RemoteAddr, &mut [u8])> = Vec::with_capacity(joined.len());
        for r in &joined {
            let (run, tail) = std::mem::take(&mut rest).split_at_mut((r.1 - r.0) as usize);
            rest = tail;
            reads.push((RemoteAddr::new(r.0), run));
        }
        if memory.read_many(&mut reads).is_err() {
            return memory.write_many(pieces);
        }
    }
    let mut writes: Vec<(RemoteAddr, &[u8])> = Vec::with_capacity(runs.len());
    let mut rest = buffer.as_mut_slice();
    let mut runs_written = Vec::with_capacity(joined.len());
    for r in &runs {
        if r.2.len() == 1 {
            writes.push(pieces[order[r.2.start]]);
            continue;
        }
        let (run, tail) = std::mem::take(&mut rest).split_at_mut((r.1 - r.0) as usize);
        rest = tail;
        for &i in &order[r.2.clone()] {
            let at = (pieces[i].0.get() - r.0) as usize;
            run[at..at + pieces[i].1.len()].copy_from_slice(pieces[i].1);
        }
        runs_written.push((RemoteAddr::new(r.0), &*run));
    }
    writes.extend(runs_written);
    memory.write_many(&writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer::mem::SharedSnapshot;
    use tracer::Memory;

    fn snapshot(start: u64, len: usize) -> SharedSnapshot {
        let mut s = tracer::Snapshot::new();
        s.insert(
            RemoteAddr::new(start),
            (0..len).map(|i| (i % 251) as u8).collect(),
        );
        SharedSnapshot(std::sync::Mutex::new(s))
    }

    /// Coalesced writes leave exactly what piece-by-piece writes leave: the pieces written,
    /// the bytes between them untouched, whatever the order and spacing of the pieces.
    #[test]
    fn coalesced_writes_equal_piecewise_writes() {
        let base = 0x10_000;
        let data: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![0xa0 ^ i; 1 + (i as usize * 7) % 29])
            .collect();
        // Unordered, some adjacent, some close, some farther apart than the largest gap.
        let mut at = base;
        let mut pieces: Vec<(RemoteAddr, &[u8])> = Vec::new();
        for (i, d) in data.iter().enumerate() {
            pieces.push((RemoteAddr::new(at), d));
            at += d.len() as u64 + [0, 8, 24, 300, MAX_GAP, MAX_GAP + 1][i % 6];
        }
        pieces.reverse();
        pieces.swap(3, 17);
        let len = (at - base) as usize + 64;
        let (a, b) = (snapshot(base, len), snapshot(base, len));
        a.write_many(&pieces).unwrap();
        write_coalesced(&b, &pieces).unwrap();
        let mut want = vec![0u8; len];
        let mut got = vec![0u8; len];
        a.read(RemoteAddr::new(base), &mut want).unwrap();
        b.read(RemoteAddr::new(base), &mut got).unwrap();
        assert_eq!(want, got);
    }

    /// A run that crosses unmapped memory cannot be read: every piece is written on its own.
    #[test]
    fn coalesced_writes_fall_back_across_holes() {
        let mut s = tracer::Snapshot::new();
        s.insert(RemoteAddr::new(0x1000), vec![0; 16]);
        s.insert(RemoteAddr::new(0x1020), vec![0; 16]);
        let s = SharedSnapshot(std::sync::Mutex::new(s));
        let pieces: Vec<(RemoteAddr, &[u8])> = vec![
            (RemoteAddr::new(0x1000), &[1; 16]),
            (RemoteAddr::new(0x1020), &[2; 16]),
        ];
        write_coalesced(&s, &pieces).unwrap();
        assert_eq!(s.read_vec(RemoteAddr::new(0x1000), 16).unwrap(), [1; 16]);
        assert_eq!(s.read_vec(RemoteAddr::new(0x1020), 16).unwrap(), [2; 16]);
    }
}
