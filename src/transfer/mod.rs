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
    let mut plan = Plan::default();
    let mut index: HashMap<ObjectId, usize> = HashMap::new();
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
        index.insert(o.id, plan.objects.len());
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
                index: index[id],
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
        plan.objects[index[&e.from]]
            .pointers
            .push((e.offset, value));
    }
    plan.displaced = displaced(dst.graph, &overwritten);
    Ok(plan)
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
    let mut images: Vec<Vec<u8>> = Vec::with_capacity(plan.objects.len());
    for o in &plan.objects {
        let mut bytes = o.bytes.clone();
        for (off, v) in &o.pointers {
            let value = match v {
                Value::Object { index, offset } => addresses[*index].get() + offset,
                Value::Address(a) => a.get(),
            };
            let off = *off as usize;
            bytes[off..off + 8].copy_from_slice(&value.to_ne_bytes());
        }
        images.push(bytes);
    }
    let pieces: Vec<(RemoteAddr, &[u8])> = addresses
        .iter()
        .zip(&images)
        .filter(|(_, b)| !b.is_empty())
        .map(|(a, b)| (*a, b.as_slice()))
        .collect();
    session.tracee().memory().write_many(&pieces)?;
    let displaced: Vec<u64> = plan.displaced.iter().map(|a| a.get()).collect();
    session.call_many(free, &displaced)?;
    Ok(Applied {
        allocated: sizes.len(),
        written: images.iter().map(|b| b.len() as u64).sum(),
        freed: displaced.len(),
        addresses,
    })
}
