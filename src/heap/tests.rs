//! The walk on synthetic heaps in snapshots (see `synthetic.rs`): classification, lookups,
//! degraded walks, and failing closed on inconsistent memory.

use tracer::{Memory, RemoteAddr, Snapshot};

use super::synthetic::{SyntheticHeap, Where};
use super::*;

/// Overwrites the word at `addr` of a snapshot.
fn patch(snap: &mut Snapshot, addr: RemoteAddr, value: u64) {
    let (start, mut bytes) = snap
        .regions()
        .find(|(s, b)| *s <= addr && addr.get() + 8 <= s.get() + b.len() as u64)
        .map(|(s, b)| (s, b.to_vec()))
        .expect("address in the snapshot");
    let off = (addr.get() - start.get()) as usize;
    bytes[off..off + 8].copy_from_slice(&value.to_ne_bytes());
    snap.insert(start, bytes);
}

/// A heap with one block of every kind; returns the builder's pointers by role.
struct Shapes {
    live: Vec<(RemoteAddr, u64)>,
    tcache: Vec<RemoteAddr>,
    fastbin: Vec<RemoteAddr>,
    bin: Vec<RemoteAddr>,
    thread_live: RemoteAddr,
    thread_tcache: RemoteAddr,
    thread_fast: RemoteAddr,
    mmapped: (RemoteAddr, u64),
}

fn shapes() -> (SyntheticHeap, Shapes) {
    let mut s = SyntheticHeap::new();
    let mut live = Vec::new();
    for req in [1, 24, 100, 1000, 5000] {
        live.push((s.malloc(Where::Main, req), req));
    }
    // Nine 40-byte blocks freed: seven to the tcache, two to a fastbin.
    let small: Vec<_> = (0..9).map(|_| s.malloc(Where::Main, 40)).collect();
    // Two large blocks freed into the unsorted bin, kept apart by live guards.
    let big1 = s.malloc(Where::Main, 2000);
    live.push((s.malloc(Where::Main, 24), 24));
    let big2 = s.malloc(Where::Main, 3000);
    live.push((s.malloc(Where::Main, 24), 24));
    for &p in &small[..7] {
        s.free(p, FreeKind::Tcache);
    }
    for &p in &small[7..] {
        s.free(p, FreeKind::Fastbin);
    }
    s.free(big1, FreeKind::Bin);
    s.free(big2, FreeKind::Bin);
    let thread_live = s.malloc(Where::Thread, 300);
    let thread_tcache = s.malloc(Where::Thread, 56);
    let thread_fast = s.malloc(Where::Thread, 24);
    let _guard = s.malloc(Where::Thread, 24);
    s.free(thread_tcache, FreeKind::Tcache);
    s.free(thread_fast, FreeKind::Fastbin);
    let mmapped = (s.mmap(300 * 1024), 300 * 1024);
    let shapes = Shapes {
        live,
        tcache: small[..7].to_vec(),
        fastbin: small[7..].to_vec(),
        bin: vec![big1, big2],
        thread_live,
        thread_tcache,
        thread_fast,
        mmapped,
    };
    (s, shapes)
}

fn free_kind(heap: &Heap, p: RemoteAddr) -> Option<FreeKind> {
    match heap
        .chunk_at(p)
        .unwrap_or_else(|| panic!("no chunk at {p}"))
        .state
    {
        ChunkState::InUse => None,
        ChunkState::Free { how } => Some(how),
    }
}

#[test]
fn full_walk_classifies_every_block() {
    let (s, sh) = shapes();
    let (mem, ctx) = s.build();
    let heap = Heap::walk(&mem, &ctx).unwrap();
    assert!(heap.free_lists_known());
    assert!(heap.limitations().is_empty(), "{:?}", heap.limitations());
    assert!(heap.warnings().is_empty(), "{:?}", heap.warnings());

    for &(p, req) in &sh.live {
        let c = heap.chunk_at(p).unwrap();
        assert!(c.is_in_use(), "{p}");
        assert!(c.usable_size >= req);
        assert_eq!(c.arena, Some(ArenaId::MAIN));
        assert!(!c.mmapped);
    }
    for &p in &sh.tcache {
        assert_eq!(free_kind(&heap, p), Some(FreeKind::Tcache));
    }
    for &p in &sh.fastbin {
        assert_eq!(free_kind(&heap, p), Some(FreeKind::Fastbin));
    }
    for &p in &sh.bin {
        assert_eq!(free_kind(&heap, p), Some(FreeKind::Bin));
    }
    let t = heap.chunk_at(sh.thread_live).unwrap();
    assert!(t.is_in_use());
    assert_eq!(t.arena, Some(ArenaId(1)));
    assert_eq!(free_kind(&heap, sh.thread_tcache), Some(FreeKind::Tcache));
    assert_eq!(free_kind(&heap, sh.thread_fast), Some(FreeKind::Fastbin));
    let m = heap.chunk_at(sh.mmapped.0).unwrap();
    assert!(m.mmapped && m.is_in_use() && m.arena.is_none());
    assert!(m.usable_size >= sh.mmapped.1);

    // Two arenas, each with one top chunk; the first main chunk is the tcache struct.
    assert_eq!(heap.arenas().len(), 2);
    let tops: Vec<_> = heap
        .chunks()
        .iter()
        .filter(|c| c.state == ChunkState::Free { how: FreeKind::Top })
        .collect();
    assert_eq!(tops.len(), 2);
    assert_eq!(heap.chunks()[0].size, 0x290);
    assert!(heap.chunks().windows(2).all(|w| w[0].header < w[1].header));

    let tot = heap.totals();
    // tcache structs (2) + main live + thread live + guard + mmapped.
    assert_eq!(tot.in_use, 2 + sh.live.len() + 2 + 1);
    assert_eq!(tot.mmapped, 1);
    assert_eq!(heap.in_use().count(), tot.in_use);
}

#[test]
fn chunk_containing_finds_interior_pointers_and_nothing_else() {
    let (s, sh) = shapes();
    let (mem, ctx) = s.build();
    let heap = Heap::walk(&mem, &ctx).unwrap();
    let (p, _) = sh.live[3];
    let c = *heap.chunk_at(p).unwrap();
    assert_eq!(heap.chunk_containing(p), Some(&c));
    let last = RemoteAddr::new(p.get() + c.usable_size - 1);
    assert_eq!(heap.chunk_containing(last).map(|c| c.user), Some(p));
    // Past the usable bytes comes the next chunk's size field: in no chunk.
    let past = RemoteAddr::new(p.get() + c.usable_size);
    assert_eq!(heap.chunk_containing(past), None);
    // A chunk's own size field, and memory outside every heap.
    assert_eq!(heap.chunk_containing(RemoteAddr::new(p.get() - 8)), None);
    assert_eq!(heap.chunk_containing(RemoteAddr::new(0x1000)), None);
    let m = sh.mmapped.0;
    assert_eq!(
        heap.chunk_containing(RemoteAddr::new(m.get() + 200_000))
            .map(|c| c.user),
        Some(m)
    );
    // Free chunks are found too; their state says so.
    let f = heap
        .chunk_containing(RemoteAddr::new(sh.bin[0].get() + 10))
        .unwrap();
    assert!(!f.is_in_use());
}

#[test]
fn degraded_walk_counts_free_list_entries_in_use_and_says_so() {
    let (s, sh) = shapes();
    let (mem, full) = s.build();
    let ctx = HeapContext::degraded(
        "snapshot",
        *full.chunk_layout(),
        full.regions().clone(),
        "test without debug info",
    );
    let heap = Heap::walk(&mem, &ctx).unwrap();
    assert!(!heap.free_lists_known());
    assert!(heap
        .limitations()
        .contains(&Limitation::ThreadArenasNotWalked));
    assert!(heap.limitations().contains(&Limitation::MmappedUnverified));
    for &(p, _) in &sh.live {
        assert!(heap.chunk_at(p).unwrap().is_in_use());
    }
    // What only the free lists tell: reported in use.
    for &p in sh.tcache.iter().chain(&sh.fastbin) {
        assert!(heap.chunk_at(p).unwrap().is_in_use());
    }
    for &p in &sh.bin {
        assert_eq!(free_kind(&heap, p), Some(FreeKind::Bin));
    }
    assert!(heap.chunk_at(sh.mmapped.0).unwrap().mmapped);
    // The thread arena is not seen: the mmapped scan must not mistake it for anything.
    assert!(heap.chunk_containing(sh.thread_live).is_none());
    let main_top = heap.chunks().iter().rfind(|c| !c.mmapped).unwrap();
    assert_eq!(main_top.state, ChunkState::Free { how: FreeKind::Top });
}

#[test]
fn impossible_chunk_size_fails_naming_the_chunk() {
    let (s, sh) = shapes();
    let (mut mem, ctx) = s.build();
    let (p, _) = sh.live[2];
    patch(&mut mem, RemoteAddr::new(p.get() - 8), 0x13);
    let err = Heap::walk(&mem, &ctx).unwrap_err().to_string();
    assert!(err.contains("main arena"), "{err}");
    assert!(err.contains(&format!("{:#x}", p.get() - 16)), "{err}");
    assert!(err.contains("impossible"), "{err}");
}

#[test]
fn fastbin_link_to_nowhere_fails_closed() {
    let (s, sh) = shapes();
    let (mut mem, ctx) = s.build();
    let head = sh.fastbin[0];
    // Mangle a link to a non-chunk address.
    patch(&mut mem, head, (head.get() >> 12) ^ (head.get() + 0x18));
    let err = Heap::walk(&mem, &ctx).unwrap_err().to_string();
    assert!(err.contains("fastbin"), "{err}");
}

#[test]
fn mmapped_count_mismatch_fails_closed() {
    let (s, _) = shapes();
    let (mut mem, ctx) = s.build();
    let g = ctx.globals().unwrap();
    let n_mmaps = RemoteAddr::new(g.mp.get() + g.layout.par.n_mmaps.offset);
    // n_mmaps is an int: rewrite it together with its neighbour, keeping the neighbour.
    let old = mem.read_u64(n_mmaps).unwrap();
    patch(&mut mem, n_mmaps, (old & !0xffff_ffff) | 2);
    let err = Heap::walk(&mem, &ctx).unwrap_err().to_string();
    assert!(err.contains("mp_.n_mmaps is 2"), "{err}");
}

#[test]
fn tcache_key_without_a_valid_link_is_counted_in_use_with_a_warning() {
    let (s, sh) = shapes();
    let (mut mem, ctx) = s.build();
    let g = ctx.globals().unwrap();
    let key = mem.read_u64(g.tcache_key.unwrap()).unwrap();
    // A live chunk whose data happens to hold the key, and a link into the void.
    let (p, _) = sh.live[1];
    patch(&mut mem, RemoteAddr::new(p.get() + 8), key);
    patch(&mut mem, p, (p.get() >> 12) ^ 0x1234_5670);
    let heap = Heap::walk(&mem, &ctx).unwrap();
    assert!(heap.chunk_at(p).unwrap().is_in_use());
    assert_eq!(heap.warnings().len(), 1, "{:?}", heap.warnings());
    assert!(heap.warnings()[0].contains("tcache_key"));
}

#[test]
fn memaligned_mmapped_chunk_is_found_at_its_real_header() {
    let mut s = SyntheticHeap::new();
    let a = s.memalign_mmap(200 * 1024, 0x30);
    let b = s.memalign_mmap(500 * 1024, 3 * 4096 - 16);
    let c = s.mmap(150 * 1024);
    let (mem, ctx) = s.build();
    let heap = Heap::walk(&mem, &ctx).unwrap();
    for (p, req) in [(a, 200 * 1024), (b, 500 * 1024), (c, 150 * 1024)] {
        let ch = heap
            .chunk_at(p)
            .unwrap_or_else(|| panic!("no chunk at {p}"));
        assert!(ch.mmapped && ch.usable_size >= req, "{ch:?}");
    }
    assert_eq!(heap.totals().mmapped, 3);
}

#[test]
fn empty_heap_walks_to_nothing_but_the_tcache_struct_and_top() {
    let s = SyntheticHeap::new();
    let (mem, ctx) = s.build();
    let heap = Heap::walk(&mem, &ctx).unwrap();
    assert_eq!(heap.chunks().len(), 2);
    assert_eq!(heap.arenas().len(), 1);
    assert_eq!(heap.totals().in_use, 1);
}

#[test]
fn a_million_chunks_walk_quickly() {
    let mut s = SyntheticHeap::new();
    let ptrs: Vec<_> = (0..1_000_000).map(|_| s.malloc(Where::Main, 24)).collect();
    for &p in ptrs.iter().step_by(1000) {
        s.free(p, FreeKind::Tcache);
    }
    let (mem, ctx) = s.build();
    let t = std::time::Instant::now();
    let heap = Heap::walk(&mem, &ctx).unwrap();
    let took = t.elapsed();
    eprintln!("synthetic walk of {} chunks: {took:?}", heap.chunks().len());
    assert_eq!(heap.chunks().len(), 1_000_002);
    assert_eq!(heap.totals().in_use, 1_000_001 - 1000);
    // Unoptimised builds are slow; this bounds only gross regressions.
    assert!(took.as_secs() < 20, "{took:?}");
}

#[test]
fn held_arena_mutex_is_a_warning_and_explains_an_inconsistency() {
    let (s, sh) = shapes();
    let (mut mem, ctx) = s.build();
    let g = ctx.globals().unwrap();
    let mutex = RemoteAddr::new(g.main_arena.get() + g.layout.state.mutex.offset);
    let old = mem.read_u64(mutex).unwrap();
    patch(&mut mem, mutex, (old & !0xffff_ffff) | 1);
    let heap = Heap::walk(&mem, &ctx).unwrap();
    assert!(heap.arenas()[0].locked);
    assert!(
        heap.warnings()[0].contains("mutex is held"),
        "{:?}",
        heap.warnings()
    );

    let (p, _) = sh.live[2];
    patch(&mut mem, RemoteAddr::new(p.get() - 8), 0x13);
    let err = Heap::walk(&mem, &ctx).unwrap_err().to_string();
    assert!(err.contains("stopped inside malloc or free"), "{err}");
}
