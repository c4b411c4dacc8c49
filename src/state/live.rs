//! Capturing a live process: stop it, copy the memory its state lives in with a few large
//! reads, classify addresses with its mappings and symbols, let it go, and build the graph
//! from the copy.

use std::path::PathBuf;

use tracer::procfs::{Mapping, MappingKind};
use tracer::symbols::SymbolResolver;
use tracer::{Memory, Pid, ProcessMemory, RemoteAddr, Snapshot};

use super::capture::{AddressSpace, ChunkRef, Region, RegionKind};
use super::AddrMap;

/// Where heap chunks are: the allocator's view, as capture needs it.
pub trait ChunkIndex {
    /// The chunk whose user area contains `addr`.
    fn chunk(&self, addr: RemoteAddr) -> Option<ChunkRef>;
}

impl ChunkIndex for crate::heap::Heap {
    fn chunk(&self, addr: RemoteAddr) -> Option<ChunkRef> {
        self.chunk_containing(addr).map(chunk_ref)
    }
}

fn chunk_ref(c: &crate::heap::Chunk) -> ChunkRef {
    ChunkRef {
        start: c.user,
        size: c.usable_size,
        in_use: c.is_in_use(),
    }
}

/// A heap with a hash index of chunk starts in front of its binary search: most pointers
/// point at the start of a chunk, and with a million chunks every probe of the binary search
/// is a cache miss (the search was most of the capture's time). Each start maps to its usable
/// size shifted left by one, with the low bit saying whether it is in use: 16-byte entries
/// keep the table half the size of one holding [`ChunkRef`]s, and its probes miss the cache
/// less.
pub struct IndexedHeap<'a> {
    heap: &'a crate::heap::Heap,
    starts: AddrMap<u64, u64>,
}

impl<'a> IndexedHeap<'a> {
    /// Indexes every chunk of `heap` by its user pointer.
    pub fn new(heap: &'a crate::heap::Heap) -> Self {
        let starts = heap
            .chunks()
            .iter()
            .map(|c| {
                let c = chunk_ref(c);
                (c.start.get(), (c.size << 1) | u64::from(c.in_use))
            })
            .collect();
        IndexedHeap { heap, starts }
    }
}

impl ChunkIndex for IndexedHeap<'_> {
    fn chunk(&self, addr: RemoteAddr) -> Option<ChunkRef> {
        match self.starts.get(&addr.get()) {
            Some(&packed) => Some(ChunkRef {
                start: addr,
                size: packed >> 1,
                in_use: packed & 1 == 1,
            }),
            None => self.heap.chunk(addr),
        }
    }
}

/// The [`AddressSpace`] of a live (stopped) process: its heap, its mappings, its symbols.
pub struct LiveSpace<'a, H: ChunkIndex + ?Sized> {
    heap: &'a H,
    maps: Vec<Mapping>,
    symbols: SymbolResolver,
}

impl<'a, H: ChunkIndex + ?Sized> LiveSpace<'a, H> {
    /// Builds the view of process `pid` from its heap and `/proc/PID/maps`.
    pub fn new(pid: Pid, heap: &'a H) -> tracer::Result<Self> {
        Self::with_maps(pid, heap, tracer::procfs::maps(pid)?)
    }

    /// Builds the view from mappings read earlier (while the process was stopped).
    pub fn with_maps(pid: Pid, heap: &'a H, maps: Vec<Mapping>) -> tracer::Result<Self> {
        Ok(LiveSpace {
            heap,
            maps,
            symbols: SymbolResolver::new(pid)?,
        })
    }

    /// The mappings it classifies addresses by.
    pub fn maps(&self) -> &[Mapping] {
        &self.maps
    }

    fn mapping(&self, addr: RemoteAddr) -> Option<&Mapping> {
        let i = self.maps.partition_point(|m| m.range.start <= addr);
        (i > 0)
            .then(|| &self.maps[i - 1])
            .filter(|m| m.range.contains(addr))
    }
}

impl<H: ChunkIndex + ?Sized> AddressSpace for LiveSpace<'_, H> {
    fn chunk(&self, addr: RemoteAddr) -> Option<ChunkRef> {
        self.heap.chunk(addr)
    }

    fn region(&self, addr: RemoteAddr) -> Region {
        let Some(m) = self.mapping(addr) else {
            return Region {
                kind: RegionKind::Unmapped,
                object: None,
                symbol: None,
                offset: 0,
            };
        };
        let kind = match &m.kind {
            MappingKind::Heap => RegionKind::HeapMetadata,
            MappingKind::Stack => RegionKind::Stack,
            _ if m.perms.exec => RegionKind::Code,
            MappingKind::File(_) if !m.perms.write => RegionKind::ReadOnlyData,
            MappingKind::File(_) => RegionKind::Data,
            MappingKind::Vdso | MappingKind::Vvar | MappingKind::Vsyscall => RegionKind::Code,
            _ => RegionKind::Anonymous,
        };
        let object = m
            .path()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        let symbol = self
            .symbols
            .symbol_at(addr)
            .ok()
            .flatten()
            .map(|s| (s.name, s.offset));
        Region {
            kind,
            object,
            symbol,
            offset: addr.offset_from(m.range.start).unwrap_or(0),
        }
    }
}

/// Memory read first from a snapshot, then from the live process for what it lacks (such as
/// read-only data a pointer names).
pub struct Layered<'a> {
    /// The copy taken while the process was stopped.
    pub snapshot: &'a Snapshot,
    /// The process itself.
    pub live: &'a ProcessMemory,
}

impl Memory for Layered<'_> {
    fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> tracer::Result<()> {
        self.snapshot
            .read(addr, buf)
            .or_else(|_| self.live.read(addr, buf))
    }
}

/// Copies every private writable mapping of the process into a [`Snapshot`], one read per
/// mapping: the heap, anonymous memory (thread arenas, large allocations), and the writable
/// data of the executable and its libraries (malloc's own globals live in libc's). Stacks are
/// left out: no state is captured from them. Mappings it cannot read are skipped and named in
/// the returned list.
pub fn snapshot_writable(mem: &ProcessMemory, maps: &[Mapping]) -> (Snapshot, Vec<String>) {
    let mut snap = Snapshot::new();
    let mut skipped = Vec::new();
    for m in maps {
        let wanted = m.perms.read
            && m.perms.write
            && !m.perms.shared
            && matches!(
                m.kind,
                MappingKind::Heap
                    | MappingKind::Anonymous
                    | MappingKind::File(_)
                    | MappingKind::Other(_)
            );
        if !wanted {
            continue;
        }
        match mem.read_vec(m.range.start, m.range.len() as usize) {
            Ok(bytes) => snap.insert(m.range.start, bytes),
            Err(e) => skipped.push(format!("{}-{}: {e}", m.range.start, m.range.end)),
        }
    }
    (snap, skipped)
}

/// The main executable of `pid` as a path debug info can be loaded from: its real path while
/// that still is the running file, else `/proc/PID/exe` (deleted or replaced binaries).
pub fn exe_path(pid: Pid) -> PathBuf {
    let proc_exe = PathBuf::from(format!("/proc/{pid}/exe"));
    match (tracer::procfs::exe(pid), std::fs::metadata(&proc_exe)) {
        (Ok(p), Ok(running)) => {
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(&p) {
                Ok(m) if m.ino() == running.ino() && m.dev() == running.dev() => p,
                _ => proc_exe,
            }
        }
        _ => proc_exe,
    }
}

/// Times of a live capture, in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CaptureTimes {
    /// Loading debug info and locating malloc, while the process still ran.
    pub prepare_ms: f64,
    /// The process was stopped this long (seize to detach): reading its mappings and copying
    /// its writable memory.
    pub stopped_ms: f64,
    /// Bytes copied while it was stopped.
    pub copied_bytes: u64,
    /// Walking its heap (on the copy).
    pub heap_walk_ms: f64,
    /// Building the graph (on the copy).
    pub graph_ms: f64,
}

/// Why a live capture failed as a whole (what fails for one variable is a warning instead).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The main executable's debug info.
    #[error("process {pid}: {source}")]
    DebugInfo {
        /// The process.
        pid: Pid,
        /// What was wrong with its executable.
        #[source]
        source: crate::debuginfo::DebugInfoError,
    },
    /// Process control or /proc.
    #[error("process {pid}: {source}")]
    Process {
        /// The process.
        pid: Pid,
        /// What failed.
        #[source]
        source: tracer::Error,
    },
    /// The heap could not be understood.
    #[error(transparent)]
    Heap(#[from] crate::heap::HeapError),
}

/// A captured process: its graph, its heap, and how long it took.
pub struct LiveCapture {
    /// The main executable's model.
    pub binary: std::sync::Arc<crate::debuginfo::Binary>,
    /// The executable's load bias.
    pub bias: u64,
    /// The state.
    pub graph: super::StateGraph,
    /// The heap as walked.
    pub heap: crate::heap::Heap,
    /// The private writable memory copied while the process was stopped.
    pub memory: Snapshot,
    /// The main thread's thread pointer (`fs_base`) at the capture, for thread-locals.
    pub main_fs_base: Option<u64>,
    /// Mappings that could not be copied.
    pub skipped: Vec<String>,
    /// Timings.
    pub times: CaptureTimes,
}

/// Captures the state of running process `pid`, stopping it only while its mappings are read
/// and its writable memory copied; the heap walk and the graph are built from the copy after
/// it runs again. The process is only read, never written, and is detached on every path.
pub fn capture_process(pid: Pid) -> Result<LiveCapture, CaptureError> {
    let proc_err = |source| CaptureError::Process { pid, source };
    if !tracer::procfs::exists(pid) {
        return Err(proc_err(tracer::Error::NoSuchProcess { pid }));
    }
    let prepared = Prepared::new(pid)?;
    let t1 = std::time::Instant::now();
    let tracee = tracer::Tracee::seize(pid).map_err(proc_err)?;
    let copy = prepared.copy(&tracee)?;
    tracee.detach().map_err(proc_err)?;
    let stopped = t1.elapsed();
    prepared.build(copy, stopped)
}

/// Captures process `pid`, which the caller holds stopped as `tracee` (a process we spawned
/// and hold at its quiescent point, or one we seized): as [`capture_process`], without
/// seizing or releasing it.
pub fn capture_stopped(tracee: &tracer::Tracee) -> Result<LiveCapture, CaptureError> {
    let prepared = Prepared::new(tracee.pid())?;
    let t1 = std::time::Instant::now();
    let copy = prepared.copy(tracee)?;
    prepared.build(copy, t1.elapsed())
}

/// What a capture needs that can be had while the process runs: debug info, malloc's place.
/// The update prepares each process's capture before it stops the old process, so that
/// loading debug info never counts as downtime.
pub struct Prepared {
    pid: Pid,
    binary: std::sync::Arc<crate::debuginfo::Binary>,
    bias: u64,
    located: crate::heap::HeapContext,
    prepare: std::time::Duration,
}

/// What is read while the process is stopped.
struct Copy {
    maps: Vec<Mapping>,
    snapshot: Snapshot,
    skipped: Vec<String>,
    main_fs_base: Option<u64>,
}

impl Prepared {
    /// Loads the debug info of process `pid`'s executable and locates its malloc, without
    /// stopping it.
    pub fn new(pid: Pid) -> Result<Self, CaptureError> {
        let t0 = std::time::Instant::now();
        let exe = exe_path(pid);
        let binary = std::sync::Arc::new(
            crate::debuginfo::Binary::load(&exe)
                .map_err(|source| CaptureError::DebugInfo { pid, source })?,
        );
        Self::finish(pid, binary, t0)
    }

    /// As [`Prepared::new`], with the executable's model already loaded (it must be the
    /// executable process `pid` runs).
    pub fn with_binary(
        pid: Pid,
        binary: std::sync::Arc<crate::debuginfo::Binary>,
    ) -> Result<Self, CaptureError> {
        Self::finish(pid, binary, std::time::Instant::now())
    }

    fn finish(
        pid: Pid,
        binary: std::sync::Arc<crate::debuginfo::Binary>,
        t0: std::time::Instant,
    ) -> Result<Self, CaptureError> {
        let proc_err = |source| CaptureError::Process { pid, source };
        let located = crate::heap::GlibcHeap::locate_or_degraded(pid)?;
        let main = tracer::symbols::loaded_objects(pid)
            .map_err(proc_err)?
            .into_iter()
            .find(|o| o.role == tracer::symbols::ObjectRole::Main)
            .ok_or_else(|| {
                proc_err(tracer::Error::Parse {
                    pid,
                    what: "/proc/PID/maps",
                    detail: "no mapping of the main executable".into(),
                })
            })?;
        let bias = binary.load_bias(main.base.get());
        Ok(Prepared {
            pid,
            binary,
            bias,
            located,
            prepare: t0.elapsed(),
        })
    }

    /// The executable's model.
    pub fn binary(&self) -> &std::sync::Arc<crate::debuginfo::Binary> {
        &self.binary
    }

    /// Captures the process, which the caller holds stopped as `tracee`.
    pub fn capture(self, tracee: &tracer::Tracee) -> Result<LiveCapture, CaptureError> {
        let t1 = std::time::Instant::now();
        let copy = self.copy(tracee)?;
        self.build(copy, t1.elapsed())
    }

    fn copy(&self, tracee: &tracer::Tracee) -> Result<Copy, CaptureError> {
        let pid = self.pid;
        let maps =
            tracer::procfs::maps(pid).map_err(|source| CaptureError::Process { pid, source })?;
        let (snapshot, skipped) = snapshot_writable(tracee.memory(), &maps);
        let main_fs_base = tracee.regs(pid).ok().map(|r| r.fs_base);
        Ok(Copy {
            maps,
            snapshot,
            skipped,
            main_fs_base,
        })
    }

    fn build(self, copy: Copy, stopped: std::time::Duration) -> Result<LiveCapture, CaptureError> {
        use crate::heap::{Heap, HeapContext, HeapRegions};
        let pid = self.pid;
        let copied_bytes = copy.snapshot.regions().map(|(_, b)| b.len() as u64).sum();
        let t2 = std::time::Instant::now();
        let page = self.located.regions().page_size;
        let ctx = match self.located.globals() {
            Some(g) => HeapContext::new(
                format!("process {pid}"),
                g.clone(),
                HeapRegions::from_maps(&copy.maps, page),
            ),
            None => self.located,
        };
        let heap = Heap::walk(&copy.snapshot, &ctx)?;
        let heap_walk = t2.elapsed();

        let t3 = std::time::Instant::now();
        let live = ProcessMemory::new(pid);
        let index = IndexedHeap::new(&heap);
        let space = LiveSpace::with_maps(pid, &index, copy.maps)
            .map_err(|source| CaptureError::Process { pid, source })?;
        let mem = Layered {
            snapshot: &copy.snapshot,
            live: &live,
        };
        let graph = super::capture(&self.binary, self.bias, &mem, &space);
        let graph_t = t3.elapsed();
        drop(space);
        drop(index);
        Ok(LiveCapture {
            binary: self.binary,
            bias: self.bias,
            graph,
            heap,
            memory: copy.snapshot,
            main_fs_base: copy.main_fs_base,
            skipped: copy.skipped,
            times: CaptureTimes {
                prepare_ms: self.prepare.as_secs_f64() * 1e3,
                stopped_ms: stopped.as_secs_f64() * 1e3,
                copied_bytes,
                heap_walk_ms: heap_walk.as_secs_f64() * 1e3,
                graph_ms: graph_t.as_secs_f64() * 1e3,
            },
        })
    }
}
