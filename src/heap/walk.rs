//! The heap walk: every chunk of every arena and every mmapped chunk, classified in use or
//! free, read through [`Memory`] in one piece per heap region.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracer::{Memory, RemoteAddr, RemoteRange};

use super::error::{HeapError, Result};
use super::layout::{
    ChunkLayout, Field, MallocLayout, IS_MMAPPED, NONCONTIGUOUS_BIT, PREV_INUSE, SIZE_BITS,
};
use super::locate::{HeapContext, MallocGlobals};

/// An arena's index in a [`Heap`]: 0 is `main_arena`, then thread arenas in the order of the
/// `main_arena.next` ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArenaId(pub u32);

impl ArenaId {
    /// `main_arena`.
    pub const MAIN: ArenaId = ArenaId(0);
}

/// Where a free chunk is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FreeKind {
    /// In a thread's tcache (recognised by `tcache_key` in its second word, from any thread).
    Tcache,
    /// In a fastbin of its arena (found by walking `fastbinsY`).
    Fastbin,
    /// In the unsorted, small or large bins: the next chunk's `PREV_INUSE` bit is clear.
    Bin,
    /// The top chunk of its arena (the not yet carved remainder of the heap).
    Top,
}

/// Whether a chunk is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkState {
    /// Returned by `malloc` and not freed.
    InUse,
    /// Free, and where it is kept.
    Free {
        /// The free list (or top).
        how: FreeKind,
    },
}

/// One malloc chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// The chunk's address (its `prev_size` field).
    pub header: RemoteAddr,
    /// The pointer `malloc` returned for it (`chunk2mem`).
    pub user: RemoteAddr,
    /// Chunk size from its header, flags masked off.
    pub size: u64,
    /// What `malloc_usable_size` says for it (for free chunks: what it would say if the chunk
    /// were allocated; for the top chunk: the bytes from `user` to the end of its heap).
    pub usable_size: u64,
    /// In use or free.
    pub state: ChunkState,
    /// The arena it belongs to; `None` for mmapped chunks, which belong to none.
    pub arena: Option<ArenaId>,
    /// Obtained with its own `mmap` (`IS_MMAPPED`).
    pub mmapped: bool,
}

impl Chunk {
    /// Whether the chunk is allocated.
    pub fn is_in_use(&self) -> bool {
        self.state == ChunkState::InUse
    }

    /// The user area, `[user, user + usable_size)`.
    pub fn user_range(&self) -> RemoteRange {
        RemoteRange::new(
            self.user,
            self.user
                .checked_add(self.usable_size)
                .unwrap_or(RemoteAddr::new(u64::MAX)),
        )
    }
}

/// One arena as walked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arena {
    /// Its index.
    pub id: ArenaId,
    /// Its `struct malloc_state` (`None` in a degraded walk).
    pub address: Option<RemoteAddr>,
    /// The memory holding its chunks: `[heap]` up to the end of top for the main arena;
    /// each `heap_info` heap (`[start, start + heap_info.size)`) for a thread arena, newest
    /// first.
    pub heaps: Vec<RemoteRange>,
    /// Its top chunk.
    pub top: Option<RemoteAddr>,
    /// `system_mem`: bytes obtained from the system.
    pub system_mem: Option<u64>,
    /// `attached_threads`: threads using it.
    pub attached_threads: Option<u64>,
    /// Its mutex was held when read: a thread stopped inside malloc or free in this arena,
    /// and the picture of it may be inconsistent. (glibc skips the lock while the process is
    /// single-threaded, so an unlocked arena proves nothing there.)
    pub locked: bool,
}

/// Something a walk could not establish; a degraded walk has some, a full one none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Limitation {
    /// tcache and fastbin entries could not be told apart from allocated chunks (they keep the
    /// next chunk's `PREV_INUSE` bit set), so they are reported in use.
    FreeListsUnknown {
        /// Why.
        reason: String,
    },
    /// Thread arenas were not found (only `[heap]` and mmapped chunks were walked), so
    /// [`Heap::chunk_containing`] says `None` for their chunks.
    ThreadArenasNotWalked,
    /// Mmapped chunks were found by their headers alone, without checking their number and
    /// bytes against `mp_.n_mmaps` and `mp_.mmapped_mem`.
    MmappedUnverified,
}

/// Figures about one walk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Wall time of [`Heap::walk`].
    pub elapsed: Duration,
    /// Bytes read from the address space.
    pub bytes_read: u64,
    /// Heap regions walked (`[heap]`, each thread heap).
    pub regions: usize,
    /// Windows the regions were read in (64 KiB to 1 MiB, larger while the walk is dense).
    pub windows_read: usize,
    /// Pages whose first bytes were read looking for mmapped chunks.
    pub pages_probed: u64,
}

/// Counts and bytes of a heap's chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// All chunks, top chunks included.
    pub chunks: usize,
    /// Chunks in use.
    pub in_use: usize,
    /// Usable bytes of the chunks in use.
    pub in_use_bytes: u64,
    /// Free chunks (top chunks included).
    pub free: usize,
    /// Chunk bytes of the free chunks.
    pub free_bytes: u64,
    /// Mmapped chunks (all in use).
    pub mmapped: usize,
    /// Usable bytes of the mmapped chunks.
    pub mmapped_bytes: u64,
}

/// The chunks of a glibc heap, classified, as of one moment of a stopped process.
#[derive(Clone, Debug)]
pub struct Heap {
    chunks: Vec<Chunk>,
    arenas: Vec<Arena>,
    limitations: Vec<Limitation>,
    warnings: Vec<String>,
    stats: WalkStats,
}

/// How far to walk a region of chunks.
#[derive(Clone, Copy, Debug)]
enum RegionEnd {
    /// Up to this top chunk, which is included as free.
    Top(RemoteAddr),
    /// An older heap of a thread arena: up to the fencepost sysmalloc left when it moved to a
    /// new heap (a `CHUNK_HDR_SZ` chunk followed by a size-0 header), or to the region's end.
    Fencepost,
    /// Degraded walk of `[heap]`: the chunk ending exactly at the region's end is the top
    /// chunk.
    MappingEnd,
}

/// Upper bound on arenas followed through `next` (glibc's default limit is 8 per CPU).
const MAX_ARENAS: usize = 1 << 14;
/// Upper bound on heaps per thread arena (each is at least 32 KiB).
const MAX_HEAPS: usize = 1 << 20;
/// Size of the pieces large reads are split into.
const READ_PIECE: usize = 1 << 20;
/// Smallest window a heap region is read in.
const MIN_WINDOW: u64 = 64 << 10;
/// Largest window a heap region is read in.
const MAX_WINDOW: u64 = 1 << 20;
/// A window starting at most this far past the previous one's end continues a dense walk.
const DENSE_GAP: u64 = 4096;
/// Page headers read per batch when looking for mmapped chunks.
const PROBE_BATCH: u64 = 1024;
/// How far into an mmapped chunk to look for a chunk `memalign` placed inside it.
const MEMALIGN_SEARCH: u64 = 1 << 20;

impl Heap {
    /// Walks the heap of the address space `mem`, as `ctx` locates it.
    ///
    /// The main arena runs contiguously from `mp_.sbrk_base` to `main_arena.top`; thread
    /// arenas are found through the `main_arena.next` ring, each in `heap_info` heaps chained
    /// by `prev`; mmapped chunks are found among the anonymous mappings by their headers and
    /// checked against `mp_.n_mmaps`/`mp_.mmapped_mem`. A chunk is in use when the next
    /// chunk's `PREV_INUSE` bit is set, unless it is in a fastbin (walked from `fastbinsY`,
    /// links demangled) or a tcache (its second word equals `tcache_key`, and its link leads
    /// to another such chunk of its size or ends).
    ///
    /// Each heap region is read once, in large pieces. The process must be stopped (all
    /// threads) for the picture to be consistent. Fails with [`HeapError::Corrupt`] when the
    /// memory contradicts malloc's invariants, never with a partial heap.
    pub fn walk<M: Memory>(mem: &M, ctx: &HeapContext) -> Result<Heap> {
        let start = Instant::now();
        let mut w = Walker {
            mem,
            ctx,
            cl: *ctx.chunk_layout(),
            chunks: Vec::new(),
            buffers: Vec::new(),
            tcache: Vec::new(),
            arenas: Vec::new(),
            warnings: Vec::new(),
            stats: WalkStats::default(),
            heap_reservations: Vec::new(),
            mmapped_mapping_bytes: 0,
            win: Vec::new(),
            win_start: 0,
            win_size: MIN_WINDOW,
            locked_seen: false,
        };
        let mut limitations = Vec::new();
        match ctx.globals() {
            Some(g) => {
                w.walk_full(g)?;
                if g.tcache_key.is_none() && g.layout.tcache.is_some() {
                    limitations.push(Limitation::FreeListsUnknown {
                        reason: "libc has a tcache but no `tcache_key` variable".into(),
                    });
                }
            }
            None => {
                let reason = ctx
                    .degraded_reason()
                    .unwrap_or("no libc debug info")
                    .to_owned();
                w.walk_degraded()?;
                limitations.push(Limitation::FreeListsUnknown { reason });
                limitations.push(Limitation::ThreadArenasNotWalked);
                limitations.push(Limitation::MmappedUnverified);
            }
        }
        let mut heap = Heap {
            chunks: w.chunks,
            arenas: w.arenas,
            limitations,
            warnings: w.warnings,
            stats: w.stats,
        };
        heap.stats.elapsed = start.elapsed();
        tracing::debug!(
            who = ctx.who(),
            chunks = heap.chunks.len(),
            arenas = heap.arenas.len(),
            bytes_read = heap.stats.bytes_read,
            elapsed_ms = heap.stats.elapsed.as_millis() as u64,
            "walked heap"
        );
        Ok(heap)
    }

    /// Every chunk, sorted by address (top chunks and free chunks included).
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The chunks in use, by address.
    pub fn in_use(&self) -> impl Iterator<Item = &Chunk> + '_ {
        self.chunks.iter().filter(|c| c.is_in_use())
    }

    /// The chunk whose user area (`[user, user + usable_size)`) contains `addr`, in use or
    /// free: `addr` may be the pointer `malloc` returned or any interior pointer. `None` for
    /// addresses in no chunk (chunk headers, malloc's own structures, non-heap memory).
    pub fn chunk_containing(&self, addr: RemoteAddr) -> Option<&Chunk> {
        let i = self.chunks.partition_point(|c| c.user <= addr);
        let c = self.chunks.get(i.checked_sub(1)?)?;
        c.user_range().contains(addr).then_some(c)
    }

    /// The chunk whose user pointer is exactly `user`.
    pub fn chunk_at(&self, user: RemoteAddr) -> Option<&Chunk> {
        self.chunks
            .binary_search_by_key(&user, |c| c.user)
            .ok()
            .map(|i| &self.chunks[i])
    }

    /// The arenas walked (index = [`ArenaId`]).
    pub fn arenas(&self) -> &[Arena] {
        &self.arenas
    }

    /// Counts and bytes.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            chunks: self.chunks.len(),
            ..Totals::default()
        };
        for c in &self.chunks {
            if c.is_in_use() {
                t.in_use += 1;
                t.in_use_bytes += c.usable_size;
            } else {
                t.free += 1;
                t.free_bytes += c.size;
            }
            if c.mmapped {
                t.mmapped += 1;
                t.mmapped_bytes += c.usable_size;
            }
        }
        t
    }

    /// Whether tcache and fastbin entries were told apart from chunks in use. When false,
    /// they are counted in use (see [`Heap::limitations`] for why).
    pub fn free_lists_known(&self) -> bool {
        !self
            .limitations
            .iter()
            .any(|l| matches!(l, Limitation::FreeListsUnknown { .. }))
    }

    /// What this walk could not establish (empty for a full walk).
    pub fn limitations(&self) -> &[Limitation] {
        &self.limitations
    }

    /// Oddities that did not stop the walk (a held arena lock, a word equal to `tcache_key`
    /// in a chunk that is not in a tcache list), one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Figures about the walk.
    pub fn stats(&self) -> &WalkStats {
        &self.stats
    }
}

/// A tentative tcache entry: its chunk's user pointer and its demangled `next`.
#[derive(Clone, Copy, Debug)]
struct TcacheCandidate {
    user: RemoteAddr,
    next: u64,
    size: u64,
}

struct Walker<'a, M> {
    mem: &'a M,
    ctx: &'a HeapContext,
    cl: ChunkLayout,
    chunks: Vec<Chunk>,
    /// Copies of the heap regions read, by start address (sorted at the end of the walk).
    buffers: Vec<(RemoteAddr, Vec<u8>)>,
    tcache: Vec<TcacheCandidate>,
    arenas: Vec<Arena>,
    warnings: Vec<String>,
    stats: WalkStats,
    /// `[h, h + heap_max)` of every thread heap: not searched for mmapped chunks.
    heap_reservations: Vec<RemoteRange>,
    /// Bytes of the mappings holding the mmapped chunks found.
    mmapped_mapping_bytes: u64,
    /// The window of the region being walked, its address, and the next window's size.
    win: Vec<u8>,
    win_start: u64,
    win_size: u64,
    /// Some arena's mutex was found held.
    locked_seen: bool,
}

/// Facts about tcaches that the region walk needs.
#[derive(Clone, Copy, Debug)]
struct TcacheCheck {
    key: u64,
    key_field: Field,
    next_field: Field,
    /// Chunk sizes up to and including this one can be in a tcache (`csize2tidx < tcache_bins`).
    max_chunk_size: u64,
}

#[inline]
fn field(buf: &[u8], base: u64, f: Field) -> u64 {
    let at = (base + f.offset) as usize;
    match f.size {
        1 => buf[at] as u64,
        2 => u16::from_ne_bytes(buf[at..at + 2].try_into().expect("2 bytes")) as u64,
        4 => u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as u64,
        _ => u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes")),
    }
}

fn word(buf: &[u8], off: u64) -> u64 {
    let at = off as usize;
    u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// `REVEAL_PTR`: safe-linking demangling of a link stored at `field_addr` (malloc.c,
/// `PROTECT_PTR (pos, ptr) = ((size_t) pos >> 12) ^ (size_t) ptr`).
fn reveal(field_addr: RemoteAddr, stored: u64) -> u64 {
    (field_addr.get() >> 12) ^ stored
}

impl<'a, M: Memory> Walker<'a, M> {
    fn who(&self) -> &str {
        self.ctx.who()
    }

    fn corrupt(&self, arena: &str, addr: RemoteAddr, detail: impl Into<String>) -> HeapError {
        let mut detail = detail.into();
        if self.locked_seen {
            detail.push_str(
                " (an arena's mutex is held: a thread was stopped inside malloc or free, so \
                 the heap may be mid-update; stop the process at a quiescent point)",
            );
        }
        HeapError::Corrupt {
            who: self.who().to_owned(),
            arena: arena.to_owned(),
            addr,
            detail,
        }
    }

    fn read_err(&self, what: String, source: tracer::Error) -> HeapError {
        HeapError::Process {
            who: self.who().to_owned(),
            what,
            source,
        }
    }

    /// Reads `len` bytes at `addr`, in 1 MiB pieces of one `read_many`. (Pre-faulting the
    /// buffer made no measurable difference for windows of at most 1 MiB.)
    fn read_bytes(&mut self, addr: RemoteAddr, len: u64, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        {
            let mut pieces: Vec<(RemoteAddr, &mut [u8])> = buf
                .chunks_mut(READ_PIECE)
                .enumerate()
                .map(|(i, b)| (RemoteAddr::new(addr.get() + (i * READ_PIECE) as u64), b))
                .collect();
            self.mem
                .read_many(&mut pieces)
                .map_err(|e| self.read_err(format!("reading {what} ({len} bytes at {addr})"), e))?;
        }
        self.stats.bytes_read += len;
        Ok(buf)
    }

    fn read_struct(&mut self, addr: RemoteAddr, size: u64, what: &str) -> Result<Vec<u8>> {
        self.read_bytes(addr, size, what)
    }

    /// The first chunk at or after `addr` whose user pointer is aligned.
    fn align_chunk(&self, addr: u64) -> RemoteAddr {
        let hdr = self.cl.header_size();
        let a = self.cl.alignment;
        RemoteAddr::new(((addr + hdr + a - 1) & !(a - 1)) - hdr)
    }

    fn walk_full(&mut self, g: &MallocGlobals) -> Result<()> {
        let l: &MallocLayout = &g.layout;
        let mp = self.read_struct(g.mp, l.par.size, "mp_")?;
        let mp_at = |f: Field| field(&mp, 0, f);
        let tcache = match (&l.tcache, g.tcache_key, l.par.tcache_bins) {
            (Some(t), Some(key_addr), Some(bins)) => {
                let key = self.read_struct(key_addr, 8, "tcache_key")?;
                let key = word(&key, 0);
                let bins = mp_at(bins);
                // No key yet: malloc was never initialised, no chunk can be in a tcache.
                (key != 0 && bins > 0).then(|| TcacheCheck {
                    key,
                    key_field: t.key,
                    next_field: t.next,
                    max_chunk_size: self.cl.min_size + (bins - 1) * self.cl.alignment,
                })
            }
            _ => None,
        };
        let hp_pagesize = l.par.hp_pagesize.map(mp_at).unwrap_or(0);
        let heap_max = if hp_pagesize == 0 {
            l.heap_max_size
        } else {
            4 * hp_pagesize
        };
        if !heap_max.is_power_of_two() {
            return Err(HeapError::UnsupportedState {
                who: self.who().to_owned(),
                what: format!("thread heap size {heap_max:#x} is not a power of two"),
            });
        }

        // The ring of arenas, main first.
        let mut states: Vec<(RemoteAddr, Vec<u8>)> = Vec::new();
        let mut seen = HashSet::new();
        let mut at = g.main_arena;
        loop {
            if !seen.insert(at) || states.len() >= MAX_ARENAS {
                return Err(self.corrupt(
                    "arena list",
                    at,
                    "the main_arena.next ring does not lead back to main_arena",
                ));
            }
            let what = if at == g.main_arena {
                "main_arena".to_owned()
            } else {
                format!("arena {} (struct malloc_state)", states.len())
            };
            let st = self.read_struct(at, l.state.size, &what)?;
            let next = RemoteAddr::new(field(&st, 0, l.state.next));
            states.push((at, st));
            if next == g.main_arena {
                break;
            }
            if next.is_null() {
                return Err(self.corrupt("arena list", at, "next is NULL"));
            }
            at = next;
        }

        for (i, (addr, st)) in states.iter().enumerate() {
            let id = ArenaId(i as u32);
            let top = RemoteAddr::new(field(st, 0, l.state.top));
            let mut arena = Arena {
                id,
                address: Some(*addr),
                heaps: Vec::new(),
                top: None,
                system_mem: Some(field(st, 0, l.state.system_mem)),
                attached_threads: Some(field(st, 0, l.state.attached_threads)),
                locked: field(st, 0, l.state.mutex) != 0,
            };
            let name = if i == 0 {
                "main arena".to_owned()
            } else {
                format!("arena {i} at {addr}")
            };
            if arena.locked {
                self.locked_seen = true;
                self.warnings.push(format!(
                    "{name}: its mutex is held, a thread is stopped inside malloc or free; \
                     its chunks may be in flux"
                ));
            }
            // A fresh arena's top is the unsorted bin's pseudo-chunk inside the arena itself
            // (`initial_top`): nothing allocated yet.
            let state_range =
                RemoteRange::new(*addr, addr.checked_add(l.state.size).unwrap_or(*addr));
            if top.is_null() || state_range.contains(top) {
                self.arenas.push(arena);
                continue;
            }
            arena.top = Some(top);
            if i == 0 {
                let flags = field(st, 0, l.state.flags);
                if flags & NONCONTIGUOUS_BIT != 0 {
                    return Err(HeapError::UnsupportedState {
                        who: self.who().to_owned(),
                        what: "the main arena is non-contiguous (sbrk failed or memory was \
                               obtained by mmap instead); walking it is not supported"
                            .into(),
                    });
                }
                let sbrk_base = mp_at(l.par.sbrk_base);
                let start = self.align_chunk(sbrk_base);
                if sbrk_base == 0 || start > top {
                    return Err(self.corrupt(
                        &name,
                        top,
                        format!("top lies below mp_.sbrk_base {sbrk_base:#x}"),
                    ));
                }
                if let Some(brk) = self.ctx.regions().brk {
                    if !brk.contains(start) || !brk.contains(top) {
                        return Err(self.corrupt(
                            &name,
                            top,
                            format!("chunks from {start} to top are not inside [heap] {brk:?}"),
                        ));
                    }
                }
                let end = top.get() + self.cl.header_size();
                self.walk_region(start, end, RegionEnd::Top(top), id, &name, tcache)?;
                let top_end = self
                    .chunks
                    .last()
                    .map(|c| c.header.get() + c.size)
                    .unwrap_or(end);
                arena.heaps.push(RemoteRange::new(
                    RemoteAddr::new(sbrk_base),
                    RemoteAddr::new(top_end),
                ));
            } else {
                self.walk_thread_arena(l, *addr, top, heap_max, id, &name, tcache, &mut arena)?;
            }
            self.arenas.push(arena);
        }

        self.scan_mmapped()?;
        self.finish(tcache)?;
        self.walk_fastbins(l, &states)?;
        self.check_mmapped_counts(&mp, l)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_thread_arena(
        &mut self,
        l: &MallocLayout,
        arena_addr: RemoteAddr,
        top: RemoteAddr,
        heap_max: u64,
        id: ArenaId,
        name: &str,
        tcache: Option<TcacheCheck>,
        arena: &mut Arena,
    ) -> Result<()> {
        // heap_for_ptr (arena.c): heaps are aligned to heap_max_size ().
        let mut h = top.align_down(heap_max);
        let mut newest = true;
        for _ in 0..MAX_HEAPS {
            let hi = self.read_struct(h, l.heap_info.size, &format!("heap_info of {name}"))?;
            let ar_ptr = RemoteAddr::new(field(&hi, 0, l.heap_info.ar_ptr));
            let size = field(&hi, 0, l.heap_info.heap_size);
            let prev = RemoteAddr::new(field(&hi, 0, l.heap_info.prev));
            if ar_ptr != arena_addr {
                return Err(self.corrupt(
                    name,
                    h,
                    format!("heap_info.ar_ptr is {ar_ptr}, not the arena"),
                ));
            }
            if size < l.heap_info.size || size > heap_max {
                return Err(self.corrupt(
                    name,
                    h,
                    format!("heap_info.size {size:#x} is impossible"),
                ));
            }
            let heap_end = RemoteAddr::new(h.get() + size);
            // The first heap of an arena holds the malloc_state right after heap_info
            // (_int_new_arena); chunks follow, aligned.
            let after_info = h.get() + l.heap_info.size;
            let start = if ar_ptr.get() == after_info {
                self.align_chunk(after_info + l.state.size)
            } else {
                self.align_chunk(after_info)
            };
            if newest {
                if top < start || top >= heap_end {
                    return Err(self.corrupt(
                        name,
                        top,
                        format!("top is outside its heap {h}..{heap_end}"),
                    ));
                }
                let end = top.get() + self.cl.header_size();
                self.walk_region(start, end, RegionEnd::Top(top), id, name, tcache)?;
            } else {
                self.walk_region(
                    start,
                    heap_end.get(),
                    RegionEnd::Fencepost,
                    id,
                    name,
                    tcache,
                )?;
            }
            arena.heaps.push(RemoteRange::new(h, heap_end));
            self.heap_reservations.push(RemoteRange::new(
                h,
                h.checked_add(heap_max).unwrap_or(RemoteAddr::new(u64::MAX)),
            ));
            newest = false;
            if prev.is_null() {
                return Ok(());
            }
            if !prev.get().is_multiple_of(heap_max) {
                return Err(self.corrupt(
                    name,
                    h,
                    format!("heap_info.prev {prev} is not a heap (misaligned)"),
                ));
            }
            h = prev;
        }
        Err(self.corrupt(name, h, "heap_info.prev chain does not end"))
    }

    /// Makes `[addr, addr + len)` (inside the region ending at `region_end`) available in the
    /// current window and returns its offset there. A new window starts at `addr`; its size
    /// doubles from [`MIN_WINDOW`] to [`MAX_WINDOW`] while the walk stays dense (each window
    /// starts where the last one ended) and falls back when the walk jumps over a big chunk,
    /// so dense heaps are read in large pieces and sparse ones without their contents.
    fn window(&mut self, addr: u64, len: u64, region_end: u64, what: &str) -> Result<usize> {
        let win_end = self.win_start + self.win.len() as u64;
        if addr >= self.win_start && addr + len <= win_end {
            return Ok((addr - self.win_start) as usize);
        }
        let dense = !self.win.is_empty() && addr <= win_end + DENSE_GAP;
        self.win_size = if dense {
            (self.win_size * 2).min(MAX_WINDOW)
        } else {
            MIN_WINDOW
        };
        let n = self.win_size.max(len).min(region_end - addr);
        let buf = self.read_bytes(RemoteAddr::new(addr), n, what)?;
        self.stats.windows_read += 1;
        self.flush_window();
        self.win = buf;
        self.win_start = addr;
        Ok(0)
    }

    /// Keeps the current window for link lookups ([`Walker::word_at`]).
    fn flush_window(&mut self) {
        if !self.win.is_empty() {
            let win = std::mem::take(&mut self.win);
            self.buffers.push((RemoteAddr::new(self.win_start), win));
        }
    }

    /// Appends the chunks of `[start, end)`, a region of one arena.
    fn walk_region(
        &mut self,
        start: RemoteAddr,
        end: u64,
        stop: RegionEnd,
        arena: ArenaId,
        name: &str,
        tcache: Option<TcacheCheck>,
    ) -> Result<()> {
        if end < start.get() {
            return Err(self.corrupt(
                name,
                start,
                format!("region ends at {end:#x}, before it starts"),
            ));
        }
        self.stats.regions += 1;
        // Room for a dense region of small chunks without regrowing (growth copies and faults).
        self.chunks
            .reserve(((end - start.get()) / self.cl.min_size / 4).min(1 << 22) as usize);
        let r = self.walk_chunks(start.get(), end, stop, arena, name, tcache);
        self.flush_window();
        r
    }

    /// Walks the chunks from `start` to `end`. A chunk's state is settled when the next
    /// header (with its `PREV_INUSE` bit) is read.
    fn walk_chunks(
        &mut self,
        start: u64,
        end: u64,
        stop: RegionEnd,
        arena: ArenaId,
        name: &str,
        tcache: Option<TcacheCheck>,
    ) -> Result<()> {
        let cl = self.cl;
        let hdr = cl.header_size();
        let what = format!("chunks of {name}");
        let top_chunk = |at: u64, size: u64| Chunk {
            header: RemoteAddr::new(at),
            user: RemoteAddr::new(at + hdr),
            size,
            usable_size: size - hdr,
            state: ChunkState::Free { how: FreeKind::Top },
            arena: Some(arena),
            mmapped: false,
        };
        // The previous chunk, waiting for this header's PREV_INUSE bit: (header, size,
        // tcache key word, tcache link word).
        let mut pending: Option<(u64, u64, u64, u64)> = None;
        let mut pos = start;
        loop {
            let at = RemoteAddr::new(pos);
            if let RegionEnd::Top(top) = stop {
                if at > top {
                    return Err(self.corrupt(name, at, format!("the walk stepped over top {top}")));
                }
            }
            if pos + hdr > end {
                return match stop {
                    // An old heap without fenceposts (not made by glibc 2.36): the last chunk
                    // has no next header to say whether it is in use; say in use.
                    RegionEnd::Fencepost if pos == end => {
                        self.settle(pending, true, arena, tcache);
                        Ok(())
                    }
                    _ => Err(self.corrupt(
                        name,
                        at,
                        format!("chunk header past the end of the region at {end:#x}"),
                    )),
                };
            }
            let need = cl.min_size.min(end - pos);
            let off = self.window(pos, need, end, &what)?;
            let raw = field(&self.win, off as u64, cl.size);
            let size = raw & !SIZE_BITS;
            // A tcache entry's key and link (the layout keeps both inside MINSIZE).
            let (key, link) = match tcache {
                Some(t) if need == cl.min_size => (
                    field(&self.win, off as u64 + hdr, t.key_field),
                    field(&self.win, off as u64 + hdr, t.next_field),
                ),
                _ => (0, 0),
            };
            // sysmalloc's fenceposts at the end of an old heap: a CHUNK_HDR_SZ chunk, then a
            // size-0 header.
            let fencepost = matches!(stop, RegionEnd::Fencepost)
                && size == hdr
                && need >= 2 * hdr
                && field(&self.win, off as u64 + hdr, cl.size) & !SIZE_BITS == 0;
            self.settle(pending.take(), raw & PREV_INUSE != 0, arena, tcache);
            if fencepost {
                return Ok(());
            }
            if matches!(stop, RegionEnd::Top(top) if at == top) {
                if size < cl.min_size || !size.is_multiple_of(cl.alignment) {
                    return Err(self.corrupt(
                        name,
                        at,
                        format!("top size {size:#x} is impossible"),
                    ));
                }
                self.chunks.push(top_chunk(pos, size));
                return Ok(());
            }
            if size < cl.min_size || !size.is_multiple_of(cl.alignment) {
                return Err(self.corrupt(
                    name,
                    at,
                    format!("chunk size field {raw:#x} is impossible"),
                ));
            }
            if raw & IS_MMAPPED != 0 {
                return Err(self.corrupt(name, at, "an arena chunk is marked IS_MMAPPED"));
            }
            let next = pos + size;
            if matches!(stop, RegionEnd::MappingEnd) && next == end {
                self.chunks.push(top_chunk(pos, size));
                return Ok(());
            }
            if next + hdr > end {
                return Err(self.corrupt(
                    name,
                    at,
                    format!("chunk of size {size:#x} runs past the end of its region at {end:#x}"),
                ));
            }
            pending = Some((pos, size, key, link));
            pos = next;
        }
    }

    /// Records the chunk `pending` now that the next header said whether it is in use.
    fn settle(
        &mut self,
        pending: Option<(u64, u64, u64, u64)>,
        in_use: bool,
        arena: ArenaId,
        tcache: Option<TcacheCheck>,
    ) {
        let Some((at, size, key, link)) = pending else {
            return;
        };
        let user = RemoteAddr::new(at + self.cl.header_size());
        let mut state = if in_use {
            ChunkState::InUse
        } else {
            ChunkState::Free { how: FreeKind::Bin }
        };
        if let Some(t) = tcache {
            if in_use && size <= t.max_chunk_size && key == t.key {
                let link_at = RemoteAddr::new(user.get() + t.next_field.offset);
                self.tcache.push(TcacheCandidate {
                    user,
                    next: reveal(link_at, link),
                    size,
                });
                state = ChunkState::Free {
                    how: FreeKind::Tcache,
                };
            }
        }
        self.chunks.push(Chunk {
            header: RemoteAddr::new(at),
            user,
            size,
            usable_size: self.cl.usable_in_arena(size),
            state,
            arena: Some(arena),
            mmapped: false,
        });
    }

    fn walk_degraded(&mut self) -> Result<()> {
        let mut arena = Arena {
            id: ArenaId::MAIN,
            address: None,
            heaps: Vec::new(),
            top: None,
            system_mem: None,
            attached_threads: None,
            locked: false,
        };
        if let Some(brk) = self.ctx.regions().brk {
            let start = self.align_chunk(brk.start.get());
            if start.get() + self.cl.min_size <= brk.end.get() {
                self.walk_region(
                    start,
                    brk.end.get(),
                    RegionEnd::MappingEnd,
                    ArenaId::MAIN,
                    "main arena ([heap])",
                    None,
                )?;
                arena.top = self.chunks.last().map(|c| c.header);
                arena.heaps.push(brk);
            }
        }
        self.arenas.push(arena);
        self.scan_mmapped()?;
        self.finish(None)
    }

    /// Finds mmapped chunks: at page boundaries of anonymous mappings outside thread heaps,
    /// a header with `prev_size` 0 and a page-multiple size flagged `IS_MMAPPED` alone,
    /// fitting in the mapping. Several chunks may share one mapping entry (the kernel merges
    /// adjacent anonymous mappings), after or before memory that is no chunk.
    fn scan_mmapped(&mut self) -> Result<()> {
        let page = self.ctx.regions().page_size;
        let cl = self.cl;
        let mut found: Vec<(RemoteAddr, u64)> = Vec::new();
        let areas = subtract(&self.ctx.regions().anonymous, &self.heap_reservations);
        for area in areas {
            let start = area.start.align_up(page).unwrap_or(area.end);
            if start >= area.end {
                continue;
            }
            let pages = (area.end.get() - start.get()) / page;
            // Probe page headers in batches; a chunk found is jumped over unread.
            let mut p = 0u64;
            while p < pages {
                let n = (pages - p).min(PROBE_BATCH);
                let batch_start = start.get() + p * page;
                let mut probe = vec![0u8; (n * 16) as usize];
                {
                    let mut pieces: Vec<(RemoteAddr, &mut [u8])> = probe
                        .chunks_mut(16)
                        .enumerate()
                        .map(|(i, b)| (RemoteAddr::new(batch_start + i as u64 * page), b))
                        .collect();
                    self.mem.read_many(&mut pieces).map_err(|e| {
                        self.read_err(format!("probing {area:?} for mmapped chunks"), e)
                    })?;
                }
                self.stats.pages_probed += n;
                self.stats.bytes_read += n * 16;
                let batch_end = p + n;
                while p < batch_end {
                    let off = ((p - (batch_end - n)) * 16) as usize;
                    let prev = field(&probe[off..], 0, cl.prev_size);
                    let raw = field(&probe[off..], 0, cl.size);
                    let size = raw & !SIZE_BITS;
                    if prev == 0
                        && raw & SIZE_BITS == IS_MMAPPED
                        && size >= page
                        && size.is_multiple_of(page)
                        && size / page <= pages - p
                    {
                        found.push((RemoteAddr::new(start.get() + p * page), size));
                        p += size / page;
                    } else {
                        p += 1;
                    }
                }
            }
        }
        // mp_.mmapped_mem counts whole mappings, memalign's lead included.
        self.mmapped_mapping_bytes = found.iter().map(|&(_, size)| size).sum();
        self.place_memaligned(&mut found)?;
        for (header, size) in found {
            self.chunks.push(Chunk {
                header,
                user: RemoteAddr::new(header.get() + cl.header_size()),
                size,
                usable_size: cl.usable_mmapped(size),
                state: ChunkState::InUse,
                arena: None,
                mmapped: true,
            });
        }
        Ok(())
    }

    /// `memalign` and friends serve a large aligned block from an mmapped chunk by moving the
    /// chunk forward inside its mapping (`_int_memalign`: `prev_size` = the distance moved,
    /// the stale header left at the mapping's start). Looks for such a header in the first
    /// page and at the last 16 bytes of each following page up to [`MEMALIGN_SEARCH`], and
    /// moves the chunk there.
    fn place_memaligned(&mut self, found: &mut [(RemoteAddr, u64)]) -> Result<()> {
        if found.is_empty() {
            return Ok(());
        }
        let page = self.ctx.regions().page_size;
        let cl = self.cl;
        let hdr = cl.header_size();
        // Per chunk: the first page, then one header before each later page boundary.
        let mut first = vec![0u8; found.len() * page as usize];
        let mut later_offsets: Vec<(usize, u64)> = Vec::new();
        for (i, &(_, size)) in found.iter().enumerate() {
            let mut k = 2 * page;
            while k <= size.min(MEMALIGN_SEARCH) {
                later_offsets.push((i, k - hdr));
                k += page;
            }
        }
        let mut later = vec![0u8; later_offsets.len() * 16];
        {
            let mut pieces: Vec<(RemoteAddr, &mut [u8])> = first
                .chunks_mut(page as usize)
                .zip(found.iter())
                .map(|(b, &(h, _))| (h, b))
                .collect();
            pieces.extend(
                later
                    .chunks_mut(16)
                    .zip(&later_offsets)
                    .map(|(b, &(i, off))| (RemoteAddr::new(found[i].0.get() + off), b)),
            );
            self.mem
                .read_many(&mut pieces)
                .map_err(|e| self.read_err("reading the starts of mmapped chunks".into(), e))?;
        }
        self.stats.bytes_read += first.len() as u64 + later.len() as u64;
        let matches = |prev: u64, raw: u64, off: u64, size: u64| {
            prev == off && raw & SIZE_BITS == IS_MMAPPED && raw & !SIZE_BITS == size - off
        };
        for (i, (header, size)) in found.iter_mut().enumerate() {
            let base = i * page as usize;
            let mut moved = None;
            let mut off = cl.min_size;
            while off + hdr <= page.min(*size) {
                let b = &first[base + off as usize..];
                if matches(field(b, 0, cl.prev_size), field(b, 0, cl.size), off, *size) {
                    moved = Some(off);
                    break;
                }
                off += cl.alignment;
            }
            if moved.is_none() {
                for (j, &(_, o)) in later_offsets.iter().enumerate().filter(|(_, x)| x.0 == i) {
                    let b = &later[j * 16..];
                    if matches(field(b, 0, cl.prev_size), field(b, 0, cl.size), o, *size) {
                        moved = Some(o);
                        break;
                    }
                }
            }
            if let Some(off) = moved {
                *header = RemoteAddr::new(header.get() + off);
                *size -= off;
            }
        }
        Ok(())
    }

    /// Sorts the chunks and confirms tcache candidates: the demangled link of each must end
    /// the list or lead to another candidate of the same size.
    fn finish(&mut self, tcache: Option<TcacheCheck>) -> Result<()> {
        // Chunks come in a few sorted runs (one per heap region, then the mmapped ones): a
        // stable sort merges runs in near-linear time where an unstable one would not.
        self.chunks.sort_by_key(|c| c.header);
        if let Some(w) = self
            .chunks
            .windows(2)
            .find(|w| w[0].header.get() + w[0].size > w[1].header.get())
        {
            let (a, b) = (w[0], w[1]);
            return Err(self.corrupt(
                "heap",
                b.header,
                format!(
                    "chunk overlaps the chunk at {} of size {:#x}",
                    a.header, a.size
                ),
            ));
        }
        self.buffers.sort_unstable_by_key(|b| b.0);
        if tcache.is_none() {
            return Ok(());
        }
        let candidates = std::mem::take(&mut self.tcache);
        for c in &candidates {
            let ok = c.next == 0
                || self
                    .chunk_index_by_user(RemoteAddr::new(c.next))
                    .is_some_and(|j| {
                        let n = &self.chunks[j];
                        n.size == c.size
                            && n.state
                                == ChunkState::Free {
                                    how: FreeKind::Tcache,
                                }
                    });
            if !ok {
                let i = self
                    .chunk_index_by_user(c.user)
                    .expect("candidate is a chunk");
                self.chunks[i].state = ChunkState::InUse;
                self.warnings.push(format!(
                    "chunk at {} holds tcache_key in its second word but its link {:#x} leads \
                     to no tcache entry of its size; counted in use",
                    c.user, c.next
                ));
            }
        }
        Ok(())
    }

    fn chunk_index_by_header(&self, header: RemoteAddr) -> Option<usize> {
        self.chunks.binary_search_by_key(&header, |c| c.header).ok()
    }

    fn chunk_index_by_user(&self, user: RemoteAddr) -> Option<usize> {
        self.chunks.binary_search_by_key(&user, |c| c.user).ok()
    }

    /// The word at `addr` from the regions already read.
    fn word_at(&self, addr: RemoteAddr) -> Option<u64> {
        let i = self
            .buffers
            .partition_point(|b| b.0 <= addr)
            .checked_sub(1)?;
        let (start, buf) = &self.buffers[i];
        let off = addr.offset_from(*start)?;
        (off + 8 <= buf.len() as u64).then(|| word(buf, off))
    }

    /// Marks the chunks on each arena's fastbins, following the demangled `fd` links.
    fn walk_fastbins(&mut self, l: &MallocLayout, states: &[(RemoteAddr, Vec<u8>)]) -> Result<()> {
        let cl = self.cl;
        for (i, (arena_addr, st)) in states.iter().enumerate() {
            let name = if i == 0 {
                "main arena".to_owned()
            } else {
                format!("arena {i} at {arena_addr}")
            };
            for bin in 0..l.state.fastbins_y.len {
                // fastbin_index (malloc.c): chunk size (bin + 2) << 4 on 64-bit targets,
                // i.e. MINSIZE plus one alignment step per bin.
                let bin_size = cl.min_size + bin * cl.alignment;
                let off = l.state.fastbins_y.element(bin);
                let mut p = word(st, off);
                let mut steps = 0usize;
                while p != 0 {
                    let at = RemoteAddr::new(p);
                    steps += 1;
                    if steps > self.chunks.len() {
                        return Err(self.corrupt(&name, at, format!("fastbin {bin} has a cycle")));
                    }
                    let j = self.chunk_index_by_header(at).ok_or_else(|| {
                        self.corrupt(&name, at, format!("fastbin {bin} entry is not a chunk"))
                    })?;
                    let c = self.chunks[j];
                    if c.arena != Some(ArenaId(i as u32)) || c.size != bin_size {
                        return Err(self.corrupt(
                            &name,
                            at,
                            format!(
                                "fastbin {bin} (size {bin_size:#x}) holds a chunk of size {:#x} \
                                 of arena {:?}",
                                c.size, c.arena
                            ),
                        ));
                    }
                    if c.state != ChunkState::InUse {
                        return Err(self.corrupt(
                            &name,
                            at,
                            format!("fastbin {bin} holds a chunk that is also {:?}", c.state),
                        ));
                    }
                    self.chunks[j].state = ChunkState::Free {
                        how: FreeKind::Fastbin,
                    };
                    let fd_at = RemoteAddr::new(p + cl.fd.offset);
                    let stored = self.word_at(fd_at).ok_or_else(|| {
                        self.corrupt(&name, at, "fastbin link outside the regions read")
                    })?;
                    p = reveal(fd_at, stored);
                }
            }
        }
        Ok(())
    }

    fn check_mmapped_counts(&self, mp: &[u8], l: &MallocLayout) -> Result<()> {
        let n = field(mp, 0, l.par.n_mmaps);
        let bytes = field(mp, 0, l.par.mmapped_mem);
        let mm: Vec<&Chunk> = self.chunks.iter().filter(|c| c.mmapped).collect();
        let found_bytes = self.mmapped_mapping_bytes;
        if mm.len() as u64 != n || found_bytes != bytes {
            return Err(HeapError::Corrupt {
                who: self.who().to_owned(),
                arena: "mmapped chunks".into(),
                addr: mm.first().map(|c| c.header).unwrap_or_default(),
                detail: format!(
                    "found {} mmapped chunks in mappings of {found_bytes:#x} bytes, but \
                     mp_.n_mmaps is {n} and mp_.mmapped_mem {bytes:#x}",
                    mm.len()
                ),
            });
        }
        Ok(())
    }
}

/// `ranges` minus `holes`, both sets of half-open ranges.
fn subtract(ranges: &[RemoteRange], holes: &[RemoteRange]) -> Vec<RemoteRange> {
    let mut out = Vec::new();
    for r in ranges {
        let mut pieces = vec![*r];
        for h in holes {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let mut v = Vec::new();
                    if h.end <= p.start || h.start >= p.end {
                        v.push(p);
                    } else {
                        if p.start < h.start {
                            v.push(RemoteRange::new(p.start, h.start));
                        }
                        if h.end < p.end {
                            v.push(RemoteRange::new(h.end, p.end));
                        }
                    }
                    v
                })
                .collect();
        }
        out.extend(pieces);
    }
    out
}
