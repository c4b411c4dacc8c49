//! The state of a stopped process as a typed object graph.
//!
//! [`capture`] reads, through the [`tracer::Memory`] trait, every global and static variable
//! of the main executable (the roots), follows their pointers into heap objects (whose types it
//! infers from the typed pointers that reach them), and records every pointer as an [`Edge`]:
//! into an object (with the interior offset), to something outside the state (a function, a
//! library's data such as `stdout`, a string literal: an [`External`] named by symbol), or
//! nowhere valid (dangling). Where types do not decide (`void *`, unions that may hold a
//! pointer, integers holding a heap address, objects of unknown type) it scans conservatively
//! and records each such location as a [`Guess`] with its reason: nothing guessed is silent.
//!
//! The graph keeps a copy of each object's bytes, so later stages (mapping, transfer,
//! verification) work on it without touching the process again.

mod capture;
mod layout;
pub mod live;

pub use capture::{capture, AddressSpace, ChunkRef, Region, RegionKind};

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;
use tracer::RemoteAddr;

use crate::debuginfo::TypeId;

/// A hasher for addresses and other plain integers (a multiply and a fold): capture looks up
/// millions of heap addresses, where SipHash was a large share of the time. The keys are the
/// process's own addresses, so collision attacks are not a concern. The fold matters: heap
/// addresses are 16-byte aligned, and the table picks buckets by the hash's low bits.
#[derive(Default, Clone, Copy)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

/// A hash map keyed by addresses (or other integers), hashed with [`AddrHasher`].
pub(crate) type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// Index of an object in [`StateGraph::objects`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectId(pub u32);

impl ObjectId {
    /// Position in [`StateGraph::objects`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What kind of storage an object is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ObjectKind {
    /// A global or static variable of the main executable (a root).
    Global {
        /// Its name as [`crate::debuginfo::Variable::name`].
        name: String,
        /// Its index in [`crate::debuginfo::Binary::variables`].
        var: usize,
    },
    /// A heap chunk in use, reached from the roots.
    Heap,
}

/// One object: a global variable or a heap chunk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Object {
    /// Its id.
    pub id: ObjectId,
    /// Global or heap.
    pub kind: ObjectKind,
    /// Address of its first byte (for a heap chunk, the pointer `malloc` returned).
    pub addr: RemoteAddr,
    /// Size in bytes (for a heap chunk, its usable size, which may exceed what was asked).
    pub size: u64,
    /// Its type: declared for globals, inferred for heap objects (`None` when nothing typed
    /// reached it, in which case it was scanned conservatively).
    pub ty: Option<TypeId>,
    /// How many elements of `ty` it holds: 1 for globals; for heap objects, as many whole
    /// elements as fit the chunk (an upper bound on what the program asked for).
    pub count: u64,
    /// Its bytes as read.
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

impl Object {
    /// Whether `addr` lies inside the object.
    pub fn contains(&self, addr: RemoteAddr) -> bool {
        addr.offset_from(self.addr)
            .is_some_and(|off| off < self.size.max(1))
    }
}

/// Why a location was scanned conservatively.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Reason {
    /// The object was reached only through `void *` (or an interior pointer): its type is unknown.
    UntypedObject,
    /// A union with a pointer among its members: which member is live is not known.
    Union {
        /// The union's type, as C would write it.
        ty: String,
    },
    /// An integer whose value is the address of an object.
    IntegerHoldsAddress {
        /// The integer's type.
        ty: String,
    },
}

/// How an edge was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum How {
    /// The field's type is a pointer.
    Typed,
    /// A conservative scan found a value that is an object's address.
    Conservative(Reason),
}

/// What kind of thing outside the state graph a pointer names.
pub use capture::RegionKind as ExternalKind;

/// A pointer to something that is not part of the transferable state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct External {
    /// Code, read-only data, another object's data, stack, ...
    pub kind: ExternalKind,
    /// The file it belongs to (`libc.so.6`, the executable), when it is a mapped file.
    pub object: Option<String>,
    /// The symbol it is in, when known (`_IO_2_1_stdout_`, `twice`).
    pub symbol: Option<String>,
    /// Offset from that symbol (or from the object's start when there is no symbol).
    pub offset: u64,
    /// For a pointer into read-only data of the executable: the NUL-terminated string there
    /// (string literals are matched by content across versions).
    pub string: Option<String>,
}

/// Where a pointer leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    /// Into an object of the graph, `offset` bytes past its start.
    Object {
        /// The object.
        id: ObjectId,
        /// Interior offset.
        offset: u64,
    },
    /// Outside the state.
    External(External),
    /// Nowhere valid: freed heap memory, or unmapped.
    Dangling {
        /// What is there instead.
        why: String,
    },
}

/// One pointer of the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// The object holding the pointer.
    pub from: ObjectId,
    /// Offset of the pointer inside it.
    pub offset: u64,
    /// The pointer's value.
    pub value: RemoteAddr,
    /// Where it leads.
    pub target: Target,
    /// How it was found.
    pub how: How,
    /// Field path inside the holding object (`.buckets[3]`, `->next` is the next edge).
    pub path: String,
}

/// A range of an object scanned conservatively, and what was found there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Guess {
    /// The object.
    pub object: ObjectId,
    /// First byte scanned.
    pub start: u64,
    /// One past the last byte scanned.
    pub end: u64,
    /// Why it was scanned.
    pub reason: Reason,
    /// How many addresses of objects were found in the range (each also an [`Edge`]).
    pub pointers: u32,
    /// Field path of the range.
    pub path: String,
}

/// Something capture could not do for one variable or object, which does not spoil the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The object concerned, if any.
    pub object: Option<ObjectId>,
    /// What happened.
    pub message: String,
}

/// Counts of a graph, for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Global and static variables.
    pub globals: u64,
    /// Heap objects.
    pub heap_objects: u64,
    /// Bytes of heap objects.
    pub heap_bytes: u64,
    /// Pointers found through types.
    pub typed_pointers: u64,
    /// Pointers found by conservative scanning.
    pub conservative_pointers: u64,
    /// Pointers to things outside the state.
    pub external_pointers: u64,
    /// Pointers to nothing valid.
    pub dangling_pointers: u64,
    /// Ranges scanned conservatively.
    pub guesses: u64,
    /// Warnings.
    pub warnings: u64,
}

/// The state of a process: objects, pointers between them, guesses and warnings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StateGraph {
    /// Globals first (in [`crate::debuginfo::Binary::variables`] order), then heap objects
    /// in the order they were reached.
    pub objects: Vec<Object>,
    /// Every pointer, in the order found.
    pub edges: Vec<Edge>,
    /// Every conservatively scanned range.
    pub guesses: Vec<Guess>,
    /// What could not be read or understood.
    pub warnings: Vec<Warning>,
}

impl StateGraph {
    /// The object with id `id`.
    pub fn object(&self, id: ObjectId) -> &Object {
        &self.objects[id.index()]
    }

    /// Heap objects.
    pub fn heap_objects(&self) -> impl Iterator<Item = &Object> {
        self.objects
            .iter()
            .filter(|o| matches!(o.kind, ObjectKind::Heap))
    }

    /// The edges leaving object `id`, in offset order.
    pub fn edges_from(&self, id: ObjectId) -> Vec<&Edge> {
        let mut v: Vec<&Edge> = self.edges.iter().filter(|e| e.from == id).collect();
        v.sort_by_key(|e| e.offset);
        v
    }

    /// Counts.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for o in &self.objects {
            match o.kind {
                ObjectKind::Global { .. } => s.globals += 1,
                ObjectKind::Heap => {
                    s.heap_objects += 1;
                    s.heap_bytes += o.size;
                }
            }
        }
        for e in &self.edges {
            match (&e.how, &e.target) {
                (_, Target::External(_)) => s.external_pointers += 1,
                (_, Target::Dangling { .. }) => s.dangling_pointers += 1,
                (How::Typed, _) => s.typed_pointers += 1,
                (How::Conservative(_), _) => s.conservative_pointers += 1,
            }
        }
        s.guesses = self.guesses.len() as u64;
        s.warnings = self.warnings.len() as u64;
        s
    }
}
