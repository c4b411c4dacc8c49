//! Synthetic glibc heaps in a [`Snapshot`], for tests of the heap walk and of everything
//! above it (state capture) without a process.
//!
//! [`SyntheticHeap`] lays out what glibc 2.36 would leave in memory after a sequence of
//! `malloc`s and `free`s: chunks with their boundary tags, tcache lists with `tcache_key` and
//! mangled links, fastbins, unsorted-bin chunks with footers, top chunks, a thread arena in a
//! 64 MiB-aligned heap after its `heap_info`, mmapped chunks sharing one mapping, and
//! `main_arena`/`mp_`/`tcache_key` in a "libc data" region. It uses
//! [`MallocLayout::reference_glibc_2_36_x86_64`].
//!
//! ```
//! use transplant::heap::{synthetic::{SyntheticHeap, Where}, FreeKind, Heap};
//! let mut s = SyntheticHeap::new();
//! let a = s.malloc(Where::Main, 24);
//! let b = s.malloc(Where::Main, 24);
//! s.free(b, FreeKind::Tcache);
//! let (mem, ctx) = s.build();
//! let heap = Heap::walk(&mem, &ctx).unwrap();
//! assert!(heap.chunk_at(a).unwrap().is_in_use());
//! assert!(!heap.chunk_at(b).unwrap().is_in_use());
//! ```

use tracer::{RemoteAddr, RemoteRange, Snapshot};

use super::layout::{Field, MallocLayout, IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE};
use super::locate::{HeapContext, HeapRegions, MallocGlobals};
use super::walk::FreeKind;

/// Which arena a synthetic block comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// `main_arena`, in `[heap]`.
    Main,
    /// One thread arena.
    Thread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    InUse,
    Free(FreeKind),
}

#[derive(Clone, Copy, Debug)]
struct Block {
    size: u64,
    plan: Plan,
}

/// A builder of a synthetic glibc heap; see the module documentation.
#[derive(Clone, Debug)]
pub struct SyntheticHeap {
    layout: MallocLayout,
    key: u64,
    main: Vec<Block>,
    thread: Vec<Block>,
    /// (mapping size, offset of the chunk in it)
    mmapped: Vec<(u64, u64)>,
    /// User pointer -> arena and index of its block.
    index: std::collections::HashMap<u64, (Where, usize)>,
    main_end: Option<u64>,
    thread_end: Option<u64>,
}

const PAGE: u64 = 4096;
/// Where `mp_`, `main_arena` and `tcache_key` live.
const LIBC_DATA: u64 = 0x7f00_0000_0000;
const MP_OFF: u64 = 0;
const ARENA_OFF: u64 = 0x100;
const KEY_OFF: u64 = 0x1000;
/// Start of `[heap]`.
const BRK: u64 = 0x5555_5555_9000;
/// The thread arena's heap (64 MiB-aligned).
const THREAD_HEAP: u64 = 0x7e00_0000_0000;
/// The mapping holding the mmapped chunks, after one page that is no chunk.
const MMAP_AREA: u64 = 0x7f10_0000_0000;
/// An anonymous mapping of zeros (as a thread stack), which must not yield chunks.
const STACK_AREA: u64 = 0x7f20_0000_0000;

impl Default for SyntheticHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl SyntheticHeap {
    /// An empty heap whose main arena starts with the main thread's tcache struct, as glibc's
    /// does after the first `malloc`.
    pub fn new() -> Self {
        let layout = MallocLayout::reference_glibc_2_36_x86_64();
        let mut s = SyntheticHeap {
            layout,
            key: 0x5eed_cafe_f00d_1234,
            main: Vec::new(),
            thread: Vec::new(),
            mmapped: Vec::new(),
            index: Default::default(),
            main_end: None,
            thread_end: None,
        };
        let tc = layout
            .tcache
            .expect("reference layout has a tcache")
            .perthread_size;
        s.malloc(Where::Main, tc);
        s
    }

    /// The layout used.
    pub fn layout(&self) -> &MallocLayout {
        &self.layout
    }

    /// `request2size`: the chunk size `malloc(request)` takes.
    pub fn chunk_size(&self, request: u64) -> u64 {
        let c = &self.layout.chunk;
        let mask = c.alignment - 1;
        ((request + c.size_sz + mask) & !mask).max(c.min_size)
    }

    fn first_chunk(&self, w: Where) -> u64 {
        let l = &self.layout;
        let start = match w {
            Where::Main => BRK,
            Where::Thread => THREAD_HEAP + l.heap_info.size + l.state.size,
        };
        let hdr = l.chunk.header_size();
        ((start + hdr + l.chunk.alignment - 1) & !(l.chunk.alignment - 1)) - hdr
    }

    fn blocks(&mut self, w: Where) -> &mut Vec<Block> {
        match w {
            Where::Main => &mut self.main,
            Where::Thread => &mut self.thread,
        }
    }

    /// Allocates `request` bytes in arena `w` (after the previous block) and returns the user
    /// pointer. The first block of the thread arena is that thread's tcache struct.
    pub fn malloc(&mut self, w: Where, request: u64) -> RemoteAddr {
        if w == Where::Thread && self.thread.is_empty() {
            let tc = self.layout.tcache.expect("tcache").perthread_size;
            self.push(w, tc);
        }
        self.push(w, request)
    }

    fn push(&mut self, w: Where, request: u64) -> RemoteAddr {
        let size = self.chunk_size(request);
        let hdr = self.layout.chunk.header_size();
        let header = match w {
            Where::Main => self.main_end,
            Where::Thread => self.thread_end,
        }
        .unwrap_or_else(|| self.first_chunk(w));
        let blocks = self.blocks(w);
        blocks.push(Block {
            size,
            plan: Plan::InUse,
        });
        let idx = blocks.len() - 1;
        match w {
            Where::Main => self.main_end = Some(header + size),
            Where::Thread => self.thread_end = Some(header + size),
        }
        self.index.insert(header + hdr, (w, idx));
        RemoteAddr::new(header + hdr)
    }

    /// Allocates `request` bytes with their own mapping and returns the user pointer.
    pub fn mmap(&mut self, request: u64) -> RemoteAddr {
        self.memalign_mmap(request, 0)
    }

    /// As [`SyntheticHeap::mmap`], with the chunk moved `lead` bytes into its mapping as
    /// `memalign` does for large aligned blocks (a stale header left at the mapping start).
    pub fn memalign_mmap(&mut self, request: u64, lead: u64) -> RemoteAddr {
        let size =
            (self.chunk_size(request) + self.layout.chunk.size_sz + lead).div_ceil(PAGE) * PAGE;
        let start = MMAP_AREA + PAGE + self.mmapped.iter().map(|m| m.0).sum::<u64>();
        self.mmapped.push((size, lead));
        RemoteAddr::new(start + lead + self.layout.chunk.header_size())
    }

    /// Frees the block at `user` into the free list `how` (`Tcache`, `Fastbin` or `Bin`; the
    /// caller keeps two `Bin` blocks from touching, as glibc would have merged them).
    pub fn free(&mut self, user: RemoteAddr, how: FreeKind) {
        assert!(how != FreeKind::Top, "the top chunk is not freed into");
        let &(w, idx) = self
            .index
            .get(&user.get())
            .unwrap_or_else(|| panic!("{user} is no synthetic block"));
        let b = &mut self.blocks(w)[idx];
        assert_eq!(b.plan, Plan::InUse, "double free of {user}");
        b.plan = Plan::Free(how);
    }

    /// The memory and a context to walk it with.
    pub fn build(&self) -> (Snapshot, HeapContext) {
        let l = self.layout;
        let mut snap = Snapshot::new();
        let mut libc = vec![0u8; 2 * PAGE as usize];
        let main_arena = LIBC_DATA + ARENA_OFF;
        let thread_arena = THREAD_HEAP + l.heap_info.size;
        let has_thread = !self.thread.is_empty();

        // Per arena: chunks, free lists, top; the arena struct goes to `state`.
        let mut tcache_lists: Vec<Vec<u64>> = vec![Vec::new(); 64];
        let mut regions = Vec::new();
        let mut arenas = Vec::new();
        for (w, blocks) in [(Where::Main, &self.main), (Where::Thread, &self.thread)] {
            if blocks.is_empty() {
                continue;
            }
            let first = self.first_chunk(w);
            let (base, arena_addr) = match w {
                Where::Main => (BRK, main_arena),
                Where::Thread => (THREAD_HEAP, thread_arena),
            };
            let used = first + blocks.iter().map(|b| b.size).sum::<u64>() - base;
            let len = (used + l.chunk.min_size + PAGE).div_ceil(PAGE) * PAGE;
            let mut mem = vec![0u8; len as usize];
            let mut state = vec![0u8; l.state.size as usize];
            let non_main = if w == Where::Thread {
                NON_MAIN_ARENA
            } else {
                0
            };
            let mut prev_in_use = true;
            let mut at = first;
            let mut fast: Vec<Vec<u64>> = vec![Vec::new(); l.state.fastbins_y.len as usize];
            let mut unsorted = Vec::new();
            let tcache_struct = first + l.chunk.header_size();
            for b in blocks {
                let off = at - base;
                let flags = if prev_in_use { PREV_INUSE } else { 0 };
                let free_in_bin = b.plan == Plan::Free(FreeKind::Bin);
                let head = b.size | flags | if free_in_bin { 0 } else { non_main };
                put(&mut mem, off, l.chunk.size, head);
                let user = at + l.chunk.header_size();
                match b.plan {
                    Plan::InUse => {
                        // Something recognisable in the user data.
                        put(&mut mem, off, l.chunk.fd, 0xabad_1dea);
                    }
                    Plan::Free(FreeKind::Tcache) => {
                        let idx = ((b.size - l.chunk.min_size) / l.chunk.alignment) as usize;
                        tcache_lists[idx].push(user);
                    }
                    Plan::Free(FreeKind::Fastbin) => {
                        let idx = ((b.size - l.chunk.min_size) / l.chunk.alignment) as usize;
                        fast[idx].push(at);
                    }
                    Plan::Free(FreeKind::Bin) => {
                        unsorted.push(at);
                        put(&mut mem, off + b.size, l.chunk.prev_size, b.size);
                    }
                    Plan::Free(FreeKind::Top) => unreachable!(),
                }
                prev_in_use = !free_in_bin;
                at += b.size;
            }
            // Top: the rest of the region.
            let top = at;
            let top_size = base + len - top;
            put(
                &mut mem,
                top - base,
                l.chunk.size,
                top_size | if prev_in_use { PREV_INUSE } else { 0 },
            );
            // Fastbins: head in the arena, links mangled.
            for (i, list) in fast.iter().enumerate() {
                if let Some(&head) = list.first() {
                    put(
                        &mut state,
                        l.state.fastbins_y.element(i as u64),
                        word_field(),
                        head,
                    );
                }
                for (j, &c) in list.iter().enumerate() {
                    let next = list.get(j + 1).copied().unwrap_or(0);
                    let fd_at = c + l.chunk.fd.offset;
                    put(&mut mem, c - base, l.chunk.fd, (fd_at >> 12) ^ next);
                }
            }
            // Unsorted bin: a doubly linked ring through the bin's pseudo-chunk.
            let bin = arena_addr + l.state.bins.offset - l.chunk.fd.offset;
            for (j, &c) in unsorted.iter().enumerate() {
                let fd = unsorted.get(j + 1).copied().unwrap_or(bin);
                let bk = if j == 0 { bin } else { unsorted[j - 1] };
                put(&mut mem, c - base, l.chunk.fd, fd);
                put(&mut mem, c - base, l.chunk.bk, bk);
            }
            let (fd, bk) = match (unsorted.first(), unsorted.last()) {
                (Some(&f), Some(&b)) => (f, b),
                _ => (bin, bin),
            };
            put(&mut state, l.state.bins.element(0), word_field(), fd);
            put(&mut state, l.state.bins.element(1), word_field(), bk);
            set(&mut state, l.state.top, top);
            set(&mut state, l.state.system_mem, len);
            set(&mut state, l.state.attached_threads, 1);
            let next = match (w, has_thread) {
                (Where::Main, true) => thread_arena,
                _ => main_arena,
            };
            set(&mut state, l.state.next, next);
            if w == Where::Thread {
                set(&mut mem, l.heap_info.ar_ptr, thread_arena);
                set(&mut mem, l.heap_info.heap_size, len);
                set(&mut mem, l.heap_info.mprotect_size, len);
            }
            regions.push((base, mem, tcache_struct));
            arenas.push((arena_addr, state));
        }

        // tcache lists, all owned by the main thread's tcache struct (links may cross arenas,
        // as a thread's tcache may hold chunks of any arena).
        let t = l.tcache.expect("tcache");
        let main_tcache = regions[0].2;
        for (idx, list) in tcache_lists.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let counts_at = main_tcache + t.counts.element(idx as u64);
            let entries_at = main_tcache + t.entries.element(idx as u64);
            poke(&mut regions, counts_at, t.counts.stride, list.len() as u64);
            poke(&mut regions, entries_at, 8, list[0]);
            for (j, &e) in list.iter().enumerate() {
                let next = list.get(j + 1).copied().unwrap_or(0);
                let next_at = e + t.next.offset;
                poke(&mut regions, next_at, 8, (next_at >> 12) ^ next);
                poke(&mut regions, e + t.key.offset, 8, self.key);
            }
        }

        let mut anonymous = Vec::new();
        let mut brk = None;
        for (base, mem, _) in regions {
            let range = RemoteRange::new(
                RemoteAddr::new(base),
                RemoteAddr::new(base + mem.len() as u64),
            );
            if base == BRK {
                brk = Some(range);
            } else {
                anonymous.push(range);
            }
            snap.insert(RemoteAddr::new(base), mem);
        }
        for (addr, state) in arenas {
            if addr == main_arena {
                libc[ARENA_OFF as usize..(ARENA_OFF + l.state.size) as usize]
                    .copy_from_slice(&state);
            } else {
                // The thread arena's struct sits in its heap, right after heap_info.
                let mut heap = snap
                    .regions()
                    .find(|(a, _)| a.get() == THREAD_HEAP)
                    .map(|(_, b)| b.to_vec())
                    .expect("thread heap");
                let off = l.heap_info.size as usize;
                heap[off..off + state.len()].copy_from_slice(&state);
                snap.insert(RemoteAddr::new(THREAD_HEAP), heap);
            }
        }
        if !has_thread {
            put(&mut libc, ARENA_OFF, l.state.next, main_arena);
        }

        // Mmapped chunks, after a page that is no chunk, in one mapping.
        let mut mm = vec![0u8; PAGE as usize];
        mm[8] = 0x42;
        let mut mmapped_mem = 0;
        for &(size, lead) in &self.mmapped {
            let at = mm.len() as u64;
            mm.resize((at + size) as usize, 0);
            put(&mut mm, at, l.chunk.size, size | IS_MMAPPED);
            if lead > 0 {
                put(&mut mm, at + lead, l.chunk.prev_size, lead);
                put(&mut mm, at + lead, l.chunk.size, (size - lead) | IS_MMAPPED);
            }
            mmapped_mem += size;
        }
        if !self.mmapped.is_empty() {
            anonymous.push(RemoteRange::new(
                RemoteAddr::new(MMAP_AREA),
                RemoteAddr::new(MMAP_AREA + mm.len() as u64),
            ));
            snap.insert(RemoteAddr::new(MMAP_AREA), mm);
        }
        anonymous.push(RemoteRange::new(
            RemoteAddr::new(STACK_AREA),
            RemoteAddr::new(STACK_AREA + 4 * PAGE),
        ));
        snap.insert(RemoteAddr::new(STACK_AREA), vec![0u8; 4 * PAGE as usize]);

        // mp_ and tcache_key.
        let p = l.par;
        put(&mut libc, MP_OFF, p.sbrk_base, BRK);
        put(&mut libc, MP_OFF, p.n_mmaps, self.mmapped.len() as u64);
        put(&mut libc, MP_OFF, p.mmapped_mem, mmapped_mem);
        put(&mut libc, MP_OFF, p.mmap_threshold, 128 * 1024);
        if let Some(f) = p.tcache_bins {
            put(&mut libc, MP_OFF, f, 64);
        }
        if let Some(f) = p.tcache_count {
            put(&mut libc, MP_OFF, f, 7);
        }
        if let Some(f) = p.tcache_max_bytes {
            put(&mut libc, MP_OFF, f, 1032);
        }
        put(&mut libc, KEY_OFF, word_field(), self.key);
        snap.insert(RemoteAddr::new(LIBC_DATA), libc);

        anonymous.sort();
        let ctx = HeapContext::new(
            "snapshot",
            MallocGlobals {
                layout: l,
                main_arena: RemoteAddr::new(main_arena),
                mp: RemoteAddr::new(LIBC_DATA + MP_OFF),
                tcache_key: Some(RemoteAddr::new(LIBC_DATA + KEY_OFF)),
            },
            HeapRegions {
                brk,
                anonymous,
                page_size: PAGE,
            },
        );
        (snap, ctx)
    }
}

/// Writes `value` as field `f` of a structure starting at byte 0 of `buf`.
fn set(buf: &mut [u8], f: Field, value: u64) {
    put(buf, 0, f, value);
}

fn word_field() -> Field {
    Field { offset: 0, size: 8 }
}

/// Writes `value` as field `f` of the structure starting at byte `base` of `buf`.
fn put(buf: &mut [u8], base: u64, f: Field, value: u64) {
    let at = (base + f.offset) as usize;
    let n = f.size as usize;
    buf[at..at + n].copy_from_slice(&value.to_ne_bytes()[..n]);
}

/// Writes a `size`-byte value at address `addr` of one of the arena regions.
fn poke(regions: &mut [(u64, Vec<u8>, u64)], addr: u64, size: u64, value: u64) {
    let r = regions
        .iter_mut()
        .find(|r| r.0 <= addr && addr + size <= r.0 + r.1.len() as u64)
        .expect("address in a synthetic region");
    put(&mut r.1, addr - r.0, Field { offset: 0, size }, value);
}
