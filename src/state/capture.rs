//! Capturing a [`StateGraph`] from an address space.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::rc::Rc;

use serde::Serialize;
use tracer::{Memory, RemoteAddr};

use super::layout::{layout_of, Layout, Slot};
use super::{
    AddrMap, Edge, External, Guess, How, Object, ObjectId, ObjectKind, Reason, StateGraph, Target,
    Warning,
};
use crate::debuginfo::{Binary, FatPointerKind, Type, TypeId};

/// A heap chunk as capture needs to see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// The pointer `malloc` returned for it.
    pub start: RemoteAddr,
    /// Its usable size.
    pub size: u64,
    /// Whether the program holds it (not free, not in a tcache or fastbin).
    pub in_use: bool,
}

/// What kind of memory an address outside the heap and the globals is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RegionKind {
    /// Executable code (functions).
    Code,
    /// Read-only data (string literals, constants, vtables).
    ReadOnlyData,
    /// Writable data of a mapped file that is not a global of the main executable (a
    /// library's variables such as `stdout`).
    Data,
    /// A thread's stack.
    Stack,
    /// Heap memory that is not inside a chunk's user area (a chunk header, top chunk).
    HeapMetadata,
    /// Anonymous memory other than the heap.
    Anonymous,
    /// Not mapped.
    Unmapped,
}

/// An address's region and, where there is one, the symbol it falls in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// What kind of memory.
    pub kind: RegionKind,
    /// The mapped file (short name), if any.
    pub object: Option<String>,
    /// The symbol containing the address and the offset into it, if any.
    pub symbol: Option<(String, u64)>,
    /// Offset from the start of the file's mapping when there is no symbol.
    pub offset: u64,
}

/// What capture needs to know about a process's addresses besides their contents: the heap
/// chunks (from the allocator) and what the other mappings are. Implemented over a live
/// process's heap walk and `/proc/PID/maps`, or by hand in tests.
pub trait AddressSpace {
    /// The heap chunk whose user area contains `addr`.
    fn chunk(&self, addr: RemoteAddr) -> Option<ChunkRef>;
    /// What `addr` is, when it is in no chunk and no global of the main executable.
    fn region(&self, addr: RemoteAddr) -> Region;
}

/// Captures the state graph of the main executable described by `binary`, loaded with load
/// bias `bias`, reading memory from `mem` and classifying addresses with `space`.
///
/// The process must be stopped (or `mem` be a snapshot). Never fails as a whole: what cannot be
/// read becomes a [`Warning`].
pub fn capture<M, S>(binary: &Binary, bias: u64, mem: &M, space: &S) -> StateGraph
where
    M: Memory + ?Sized,
    S: AddressSpace + ?Sized,
{
    let mut c = Capturer {
        binary,
        mem,
        space,
        graph: StateGraph::default(),
        layouts: AddrMap::default(),
        heap_index: AddrMap::default(),
        globals: Vec::new(),
        typed: VecDeque::new(),
        untyped: VecDeque::new(),
        scanned_untyped: Vec::new(),
        externals: AddrMap::default(),
    };
    c.add_globals(bias);
    c.run();
    c.graph
}

struct Capturer<'a, M: ?Sized, S: ?Sized> {
    binary: &'a Binary,
    mem: &'a M,
    space: &'a S,
    graph: StateGraph,
    layouts: AddrMap<TypeId, Rc<Layout>>,
    /// Heap objects by start address.
    heap_index: AddrMap<RemoteAddr, ObjectId>,
    /// Globals as (start, end, id), sorted by start.
    globals: Vec<(u64, u64, ObjectId)>,
    typed: VecDeque<ObjectId>,
    untyped: VecDeque<ObjectId>,
    /// Whether each object was scanned conservatively (indexed by object id).
    scanned_untyped: Vec<bool>,
    /// Targets outside the heap and the globals, by address: the same few functions and
    /// literals are named by many pointers, and classifying one costs a symbol lookup.
    externals: AddrMap<u64, Target>,
}

impl<M: Memory + ?Sized, S: AddressSpace + ?Sized> Capturer<'_, M, S> {
    fn warn(&mut self, object: Option<ObjectId>, message: String) {
        self.graph.warnings.push(Warning { object, message });
    }

    fn push_object(&mut self, obj: Object) -> ObjectId {
        let id = obj.id;
        self.graph.objects.push(obj);
        self.scanned_untyped.push(false);
        id
    }

    fn add_globals(&mut self, bias: u64) {
        for (i, var) in self.binary.variables().iter().enumerate() {
            // `const` data and what RELRO made read-only are the program, not its state: the
            // new version has its own.
            if self.binary.is_read_only(var.address) {
                continue;
            }
            let size = var.size.max(var.symbol_size).unwrap_or(0);
            let addr = RemoteAddr::new(var.address.wrapping_add(bias));
            let id = ObjectId(self.graph.objects.len() as u32);
            let bytes = match self.mem.read_vec(addr, size as usize) {
                Ok(b) => b,
                Err(e) => {
                    self.warn(
                        Some(id),
                        format!("cannot read variable `{}`: {e}", var.name),
                    );
                    Vec::new()
                }
            };
            if var.size.is_none() {
                self.warn(
                    Some(id),
                    format!("variable `{}` has a type of unknown size", var.name),
                );
            }
            let readable = !bytes.is_empty() || size == 0;
            self.push_object(Object {
                id,
                kind: ObjectKind::Global {
                    name: var.name.clone(),
                    var: i,
                },
                addr,
                size,
                ty: Some(var.ty),
                count: 1,
                bytes,
            });
            if readable {
                self.globals.push((addr.get(), addr.get() + size, id));
                self.typed.push_back(id);
            }
        }
        self.globals.sort();
    }

    fn run(&mut self) {
        loop {
            if let Some(id) = self.typed.pop_front() {
                self.walk_typed(id);
            } else if let Some(id) = self.untyped.pop_front() {
                if self.graph.objects[id.index()].ty.is_none() && !self.scanned_untyped[id.index()]
                {
                    self.scan_untyped(id);
                }
            } else {
                break;
            }
        }
    }

    fn layout(&mut self, ty: TypeId) -> Rc<Layout> {
        if let Some(l) = self.layouts.get(&ty) {
            return l.clone();
        }
        let l = Rc::new(layout_of(self.binary.types(), ty));
        self.layouts.insert(ty, l.clone());
        l
    }

    fn word(&self, id: ObjectId, offset: u64) -> Option<u64> {
        let b = &self.graph.objects[id.index()].bytes;
        let o = offset as usize;
        b.get(o..o + 8)
            .map(|s| u64::from_ne_bytes(s.try_into().expect("8 bytes")))
    }

    fn walk_typed(&mut self, id: ObjectId) {
        let obj = &self.graph.objects[id.index()];
        let Some(ty) = obj.ty else { return };
        let (count, size) = (obj.count, obj.size);
        let esize = self.binary.byte_size(ty).unwrap_or(size);
        let layout = self.layout(ty);
        if layout.slots.is_empty() {
            return;
        }
        let mut prefix = String::new();
        for i in 0..count {
            let base = i * esize;
            if count > 1 {
                prefix.clear();
                write!(prefix, "[{i}]").expect("write to String");
            }
            self.walk_slots(id, &layout, base, &prefix, size);
        }
    }

    fn walk_slots(&mut self, id: ObjectId, layout: &Layout, base: u64, prefix: &str, size: u64) {
        for slot in &layout.slots {
            match slot {
                Slot::Pointer {
                    offset,
                    target,
                    path,
                } => {
                    let off = base + offset;
                    let Some(v) = self.word(id, off) else {
                        continue;
                    };
                    if v != 0 {
                        self.pointer(id, off, v, *target, concat(prefix, path), None);
                    }
                }
                Slot::FnPointer { offset, path } => {
                    let off = base + offset;
                    let Some(v) = self.word(id, off) else {
                        continue;
                    };
                    if v != 0 {
                        self.pointer(id, off, v, None, concat(prefix, path), None);
                    }
                }
                Slot::Fat { offset, fat, path } => {
                    let data_off = base + offset + fat.data_offset;
                    let meta_off = base + offset + fat.meta_offset;
                    let (Some(data), Some(meta)) =
                        (self.word(id, data_off), self.word(id, meta_off))
                    else {
                        continue;
                    };
                    if data == 0 {
                        continue;
                    }
                    let p = concat(prefix, path);
                    match fat.kind {
                        FatPointerKind::Slice | FatPointerKind::Str => {
                            self.pointer(id, data_off, data, fat.pointee, p, Some(meta));
                        }
                        FatPointerKind::Dyn => {
                            // The concrete type behind a trait object is not known here.
                            self.pointer(id, data_off, data, None, p.clone(), None);
                            self.pointer(id, meta_off, meta, None, format!("{p}.vtable"), None);
                        }
                    }
                }
                Slot::Union {
                    offset,
                    size: usize_,
                    ty,
                    path,
                } => {
                    let reason = Reason::Union { ty: ty.clone() };
                    self.scan_range(
                        id,
                        base + offset,
                        base + offset + usize_,
                        reason,
                        concat(prefix, path),
                    );
                }
                Slot::Integer { offset, ty, path } => {
                    let off = base + offset;
                    let Some(v) = self.word(id, off) else {
                        continue;
                    };
                    if v != 0 && self.names_object(v) {
                        let reason = Reason::IntegerHoldsAddress { ty: ty.clone() };
                        self.scan_range(id, off, off + 8, reason, concat(prefix, path));
                    }
                }
                Slot::Variant { offset, ty, path } => {
                    let off = base + offset;
                    let Type::VariantEnum(ve) = self.binary.ty(*ty) else {
                        continue;
                    };
                    let variant = match &ve.discriminant {
                        None => ve.variants.first(),
                        Some(d) => {
                            let dsize = self.binary.byte_size(d.ty).unwrap_or(0) as usize;
                            let b = &self.graph.objects[id.index()].bytes;
                            let start = (off + d.offset) as usize;
                            let Some(raw) = b.get(start..start + dsize) else {
                                continue;
                            };
                            let mut le = [0u8; 16];
                            le[..dsize.min(16)].copy_from_slice(&raw[..dsize.min(16)]);
                            ve.variant_for(u128::from_le_bytes(le))
                        }
                    };
                    let Some(variant) = variant.cloned() else {
                        continue;
                    };
                    let vl = self.layout(variant.ty);
                    let vname = variant.name.clone().unwrap_or_default();
                    let p = format!("{prefix}{path}::{vname}");
                    self.walk_slots(id, &vl, off + variant.offset, &p, size);
                }
                Slot::Flexible {
                    offset,
                    element,
                    path,
                } => {
                    let off = base + offset;
                    let Some(esize) = self.binary.byte_size(*element).filter(|&s| s > 0) else {
                        continue;
                    };
                    let el = self.layout(*element);
                    let n = size.saturating_sub(off) / esize;
                    let mut p = concat(prefix, path);
                    let stem = p.len();
                    for j in 0..n {
                        p.truncate(stem);
                        write!(p, "[{j}]").expect("write to String");
                        self.walk_slots(id, &el, off + j * esize, &p, size);
                    }
                }
            }
        }
    }

    /// Whether `v` is an address inside a global or a heap chunk in use.
    fn names_object(&self, v: u64) -> bool {
        let i = self.globals.partition_point(|&(s, _, _)| s <= v);
        if i > 0 && v < self.globals[i - 1].1 {
            return true;
        }
        self.space
            .chunk(RemoteAddr::new(v))
            .is_some_and(|c| c.in_use)
    }

    /// The heap object for chunk `c`, created (and read) when first reached.
    /// Returns whether it is new.
    fn heap_object(&mut self, c: ChunkRef) -> (ObjectId, bool) {
        let id = ObjectId(self.graph.objects.len() as u32);
        match self.heap_index.entry(c.start) {
            Entry::Occupied(e) => return (*e.get(), false),
            Entry::Vacant(e) => {
                e.insert(id);
            }
        }
        let bytes = match self.mem.read_vec(c.start, c.size as usize) {
            Ok(b) => b,
            Err(e) => {
                self.warn(
                    Some(id),
                    format!("cannot read heap object at {}: {e}", c.start),
                );
                Vec::new()
            }
        };
        self.push_object(Object {
            id,
            kind: ObjectKind::Heap,
            addr: c.start,
            size: c.size,
            ty: None,
            count: 0,
            bytes,
        });
        (id, true)
    }

    /// Records the pointer `v` at `offset` of `from`, typed `target` (`None`: unknown), and
    /// types the object it reaches when it points at its start. `len` is a slice's length.
    fn pointer(
        &mut self,
        from: ObjectId,
        offset: u64,
        v: u64,
        target: Option<TypeId>,
        path: String,
        len: Option<u64>,
    ) {
        let addr = RemoteAddr::new(v);
        let target_of = self.resolve(addr);
        if let Target::Object { id, offset: 0 } = &target_of {
            let id = *id;
            if matches!(self.graph.objects[id.index()].kind, ObjectKind::Heap) {
                self.type_heap_object(id, target, len);
            }
        }
        self.graph.edges.push(Edge {
            from,
            offset,
            value: addr,
            target: target_of,
            how: How::Typed,
            path,
        });
    }

    /// Where `addr` leads, creating and queueing heap objects it reaches.
    fn resolve(&mut self, addr: RemoteAddr) -> Target {
        let v = addr.get();
        let i = self.globals.partition_point(|&(s, _, _)| s <= v);
        if i > 0 {
            let (s, e, id) = self.globals[i - 1];
            if v < e {
                return Target::Object { id, offset: v - s };
            }
        }
        // A pointer to the start of an object already reached (the common case) needs no
        // chunk lookup: objects are made only for chunks in use, at their start.
        if let Some(&id) = self.heap_index.get(&addr) {
            return Target::Object { id, offset: 0 };
        }
        if let Some(c) = self.space.chunk(addr) {
            if !c.in_use {
                return Target::Dangling {
                    why: format!("freed heap chunk at {}", c.start),
                };
            }
            let (id, new) = self.heap_object(c);
            if new {
                // Until a typed pointer to its start types it.
                self.untyped.push_back(id);
            }
            return Target::Object {
                id,
                offset: v - c.start.get(),
            };
        }
        if let Some(t) = self.externals.get(&v) {
            return t.clone();
        }
        let t = self.classify_external(addr);
        self.externals.insert(v, t.clone());
        t
    }

    /// Where `addr` leads when it is in no global and no heap chunk.
    fn classify_external(&mut self, addr: RemoteAddr) -> Target {
        let r = self.space.region(addr);
        match r.kind {
            RegionKind::Unmapped => Target::Dangling {
                why: "unmapped address".into(),
            },
            RegionKind::HeapMetadata => Target::Dangling {
                why: "heap memory outside any chunk in use".into(),
            },
            kind => {
                let string = (kind == RegionKind::ReadOnlyData)
                    .then(|| self.mem.read_c_string(addr, 4096).ok())
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                let (symbol, offset) = match r.symbol {
                    Some((s, o)) => (Some(s), o),
                    None => (None, r.offset),
                };
                Target::External(External {
                    kind,
                    object: r.object,
                    symbol,
                    offset,
                    string,
                })
            }
        }
    }

    /// Gives heap object `id` type `ty` (the pointee of a pointer to its start) if it has none.
    fn type_heap_object(&mut self, id: ObjectId, ty: Option<TypeId>, len: Option<u64>) {
        let types = self.binary.types();
        let Some(ty) = ty.map(|t| types.definition_of(types.strip_typedefs_cv(t))) else {
            return;
        };
        if matches!(
            self.binary.ty(ty),
            Type::Void | Type::Unknown { .. } | Type::Function { .. }
        ) {
            return;
        }
        let Some(esize) = self.binary.byte_size(ty).filter(|&s| s > 0) else {
            return;
        };
        let obj = &self.graph.objects[id.index()];
        if let Some(have) = obj.ty {
            if have != ty && self.binary.byte_size(have) != Some(esize) {
                let (a, b) = (self.binary.type_name(have), self.binary.type_name(ty));
                let at = obj.addr;
                self.warn(
                    Some(id),
                    format!("heap object at {at} is reached as `{a}` and as `{b}`; kept `{a}`"),
                );
            }
            return;
        }
        let fit = obj.size / esize;
        let count = len.map_or(fit, |l| l.min(fit)).max(1);
        let was_scanned = self.scanned_untyped[id.index()];
        let obj = &mut self.graph.objects[id.index()];
        obj.ty = Some(ty);
        obj.count = count;
        if was_scanned {
            // Its conservative scan is superseded by its type.
            self.graph.edges.retain(|e| e.from != id);
            self.graph.guesses.retain(|g| g.object != id);
        }
        self.typed.push_back(id);
    }

    /// Scans `[start, end)` of object `id` for addresses of objects, recording a guess.
    fn scan_range(&mut self, id: ObjectId, start: u64, end: u64, reason: Reason, path: String) {
        let mut found = 0u32;
        let mut off = start.next_multiple_of(8);
        while off + 8 <= end {
            if let Some(v) = self.word(id, off).filter(|&v| v != 0) {
                if self.names_object(v) {
                    let target = self.resolve(RemoteAddr::new(v));
                    self.graph.edges.push(Edge {
                        from: id,
                        offset: off,
                        value: RemoteAddr::new(v),
                        target,
                        how: How::Conservative(reason.clone()),
                        path: format!("{path}+{}", off - start),
                    });
                    found += 1;
                }
            }
            off += 8;
        }
        self.graph.guesses.push(Guess {
            object: id,
            start,
            end,
            reason,
            pointers: found,
            path,
        });
    }

    fn scan_untyped(&mut self, id: ObjectId) {
        self.scanned_untyped[id.index()] = true;
        let size = self.graph.objects[id.index()].size;
        self.scan_range(id, 0, size, Reason::UntypedObject, String::new());
    }
}

/// `prefix` followed by `path`, in one allocation of the exact size.
fn concat(prefix: &str, path: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + path.len());
    s.push_str(prefix);
    s.push_str(path);
    s
}
