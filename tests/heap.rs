//! `transplant::heap` on live processes: the `heap_shapes` fixture prints every block it
//! allocated or freed (and where it should be), the test seizes it, walks its heap and checks
//! each block; the `datastructs` fixture's own allocation count bounds the walk from below.
//! Also: the degraded walk without libc debug info, the error when that debug info is missing,
//! the reference layout against the installed libc's DWARF, and a walk of a million chunks.
//!
//! Every fixture is killed and reaped by its guard; every wait is bounded by the fixture
//! harness's line timeout and nextest's per-test limit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fixtures::Fixture;
use tracer::{RemoteAddr, Tracee};
use transplant::debuginfo::{Binary, LoadOptions};
use transplant::heap::{
    ArenaId, ChunkState, FreeKind, GlibcHeap, Heap, HeapContext, HeapError, Limitation,
    MallocLayout,
};

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

/// One line of `heap_shapes`: a block, its requested size and where it should be.
#[derive(Debug, Clone)]
struct Block {
    addr: RemoteAddr,
    size: u64,
    kind: String,
}

#[derive(Debug, Default)]
struct Shapes {
    live: Vec<Block>,
    freed: Vec<Block>,
    /// (count, first, last) of the extra 24-byte blocks.
    extra: Option<(u64, RemoteAddr, RemoteAddr)>,
}

fn hex(s: &str) -> RemoteAddr {
    RemoteAddr::new(
        u64::from_str_radix(s.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("bad address {s}")),
    )
}

/// Starts `heap_shapes` and reads its report up to the READY line.
fn start_shapes(args: &[&str]) -> (Fixture, Shapes) {
    let mut f = Fixture::start("heap_shapes", args);
    let mut s = Shapes::default();
    loop {
        let line = f.line();
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first().copied() {
            Some("READY") => break,
            Some(tag @ ("LIVE" | "FREED")) => {
                let b = Block {
                    addr: hex(w[1]),
                    size: w[2].parse().expect("size"),
                    kind: w[3].to_owned(),
                };
                if tag == "LIVE" {
                    s.live.push(b);
                } else {
                    s.freed.push(b);
                }
            }
            Some("EXTRA") => {
                let kv = fixtures::parse_fields(&line["EXTRA".len()..]);
                s.extra = Some((
                    kv["count"].parse().unwrap(),
                    hex(&kv["first"]),
                    hex(&kv["last"]),
                ));
            }
            _ => panic!("unexpected line from heap_shapes: {line}"),
        }
    }
    (f, s)
}

/// Seizes the fixture, runs `f` on its walked heap, and detaches.
fn with_heap<T>(
    fixture: &mut Fixture,
    locate: impl FnOnce(tracer::Pid) -> Result<HeapContext, HeapError>,
    f: impl FnOnce(&Heap, &HeapContext) -> T,
) -> T {
    let pid = fixture.pid();
    let tracee = Tracee::seize(pid).expect("seize");
    let t = Instant::now();
    let ctx = locate(pid).unwrap_or_else(|e| panic!("locate: {e}"));
    let located = t.elapsed();
    let t = Instant::now();
    let heap = Heap::walk(tracee.memory(), &ctx).unwrap_or_else(|e| panic!("walk: {e}"));
    eprintln!(
        "pid {pid}: located in {located:?}, walked {} chunks in {:?} ({} bytes read, {} pages probed)",
        heap.chunks().len(),
        t.elapsed(),
        heap.stats().bytes_read,
        heap.stats().pages_probed
    );
    let out = f(&heap, &ctx);
    tracee.detach().expect("detach");
    out
}

/// The fixture still runs and answers after being seized, walked and detached.
fn assert_answers(f: &mut Fixture) {
    assert_eq!(
        f.ask("ping", "PONG"),
        "PONG",
        "fixture answers after detach"
    );
}

fn state_of(heap: &Heap, b: &Block) -> ChunkState {
    heap.chunk_containing(b.addr)
        .unwrap_or_else(|| panic!("no chunk contains {b:?}"))
        .state
}

#[test]
fn live_and_freed_blocks_are_classified() {
    let (mut f, shapes) = start_shapes(&[]);
    with_heap(&mut f, GlibcHeap::locate, |heap, _| {
        assert!(heap.free_lists_known());
        assert!(heap.limitations().is_empty(), "{:?}", heap.limitations());
        assert!(heap.warnings().is_empty(), "{:?}", heap.warnings());

        for b in &shapes.live {
            let c = heap
                .chunk_at(b.addr)
                .unwrap_or_else(|| panic!("no chunk at {b:?}"));
            assert!(c.is_in_use(), "{b:?} is {c:?}");
            assert!(c.usable_size >= b.size, "{b:?} in {c:?}");
            match b.kind.as_str() {
                "main" => assert_eq!(c.arena, Some(ArenaId::MAIN), "{b:?}"),
                "thread" => assert!(matches!(c.arena, Some(a) if a != ArenaId::MAIN), "{b:?}"),
                "mmap" => assert!(c.mmapped && c.arena.is_none(), "{b:?} in {c:?}"),
                k => panic!("unknown kind {k}"),
            }
        }

        for b in &shapes.freed {
            match b.kind.as_str() {
                "tcache" | "fastbin" => {
                    let c = heap
                        .chunk_at(b.addr)
                        .unwrap_or_else(|| panic!("no chunk at {b:?}"));
                    let want = if b.kind == "tcache" {
                        FreeKind::Tcache
                    } else {
                        FreeKind::Fastbin
                    };
                    assert_eq!(c.state, ChunkState::Free { how: want }, "{b:?}");
                }
                // The chunk may have merged with a free neighbour; it must be free.
                "bin" => assert!(
                    matches!(state_of(heap, b), ChunkState::Free { how: FreeKind::Bin }),
                    "{b:?}"
                ),
                "unmapped" => assert!(heap.chunk_containing(b.addr).is_none(), "{b:?}"),
                k => panic!("unknown kind {k}"),
            }
        }

        // Both tcaches were recognised, the main thread's and the other thread's.
        let tcached_arenas: std::collections::BTreeSet<_> = heap
            .chunks()
            .iter()
            .filter(|c| {
                c.state
                    == ChunkState::Free {
                        how: FreeKind::Tcache,
                    }
            })
            .map(|c| c.arena)
            .collect();
        assert!(tcached_arenas.len() >= 2, "{tcached_arenas:?}");

        // The thread's arena needed a second heap for its 72 MiB; the old one ends in
        // fenceposts that the walk stopped at.
        assert!(heap.arenas().len() >= 2);
        let thread = &heap.arenas()[1];
        assert!(thread.heaps.len() >= 2, "{thread:?}");
        assert!(thread.heaps.iter().all(|h| h.start.get() % (64 << 20) == 0));
        // Sorted, non-overlapping, and one top chunk per arena.
        assert!(heap
            .chunks()
            .windows(2)
            .all(|w| w[0].header.get() + w[0].size <= w[1].header.get()));
        let tops = heap
            .chunks()
            .iter()
            .filter(|c| c.state == ChunkState::Free { how: FreeKind::Top })
            .count();
        assert_eq!(tops, heap.arenas().len());
        // The first main-arena chunk is the main thread's tcache struct.
        let first_main = heap
            .chunks()
            .iter()
            .find(|c| c.arena == Some(ArenaId::MAIN))
            .unwrap();
        assert_eq!(first_main.size, 0x290);
        let tot = heap.totals();
        assert!(tot.in_use >= shapes.live.len());
        assert_eq!(tot.mmapped, 1);
    });
    assert_answers(&mut f);
}

#[test]
fn chunk_containing_finds_interior_pointers_and_nothing_outside_chunks() {
    let (mut f, shapes) = start_shapes(&[]);
    with_heap(&mut f, GlibcHeap::locate, |heap, ctx| {
        for b in &shapes.live {
            let c = *heap.chunk_at(b.addr).unwrap();
            for off in [
                0,
                1,
                b.size / 2,
                b.size.saturating_sub(1),
                c.usable_size - 1,
            ] {
                let a = RemoteAddr::new(b.addr.get() + off);
                assert_eq!(
                    heap.chunk_containing(a).map(|x| x.user),
                    Some(b.addr),
                    "{a} inside {b:?}"
                );
            }
            // The chunk's own size field belongs to no chunk's user area.
            assert!(heap
                .chunk_containing(RemoteAddr::new(b.addr.get() - 8))
                .is_none());
        }
        // malloc's own state, libc's data, and an unmapped block are in no chunk.
        let g = ctx.globals().unwrap();
        assert!(heap.chunk_containing(g.main_arena).is_none());
        assert!(heap.chunk_containing(g.mp).is_none());
        assert!(heap.chunk_containing(RemoteAddr::new(8)).is_none());
        let unmapped = shapes.freed.iter().find(|b| b.kind == "unmapped").unwrap();
        assert!(heap.chunk_containing(unmapped.addr).is_none());
        // Thread heaps: their heap_info and malloc_state are in no chunk either.
        let thread = &heap.arenas()[1];
        assert!(heap.chunk_containing(thread.heaps[0].start).is_none());
        assert!(heap.chunk_containing(thread.address.unwrap()).is_none());
    });
    assert_answers(&mut f);
}

#[test]
fn degraded_walk_without_debug_info_says_what_it_cannot_tell() {
    let (mut f, shapes) = start_shapes(&[]);
    with_heap(&mut f, HeapContext::without_debug_info, |heap, ctx| {
        let reason = ctx.degraded_reason().expect("degraded");
        assert!(reason.contains("libc.so.6"), "{reason}");
        assert!(!heap.free_lists_known());
        assert!(heap
            .limitations()
            .contains(&Limitation::ThreadArenasNotWalked));
        assert!(heap.limitations().contains(&Limitation::MmappedUnverified));
        for b in shapes.live.iter().filter(|b| b.kind != "thread") {
            let c = heap.chunk_at(b.addr).unwrap_or_else(|| panic!("{b:?}"));
            assert!(c.is_in_use() && c.usable_size >= b.size, "{b:?}");
            assert_eq!(c.mmapped, b.kind == "mmap");
        }
        for b in shapes
            .freed
            .iter()
            .filter(|b| b.addr.get() < 0x7000_0000_0000)
        {
            let s = state_of(heap, b);
            match b.kind.as_str() {
                // Only the free lists tell these apart: reported in use, as limited.
                "tcache" | "fastbin" => assert_eq!(s, ChunkState::InUse, "{b:?}"),
                "bin" => assert!(!matches!(s, ChunkState::InUse), "{b:?}"),
                k => panic!("{k}"),
            }
        }
        // Thread arenas are not walked: their blocks are not found, and nothing was invented.
        for b in shapes.live.iter().filter(|b| b.kind == "thread") {
            assert!(heap.chunk_containing(b.addr).is_none(), "{b:?}");
        }
        assert_eq!(heap.totals().mmapped, 1);
    });
    assert_answers(&mut f);
}

#[test]
fn missing_libc_debug_info_names_the_file_its_build_id_and_the_package() {
    let (mut f, _) = start_shapes(&[]);
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("heap-no-debug-roots");
    std::fs::create_dir_all(&empty).unwrap();
    let options = LoadOptions {
        debug_roots: vec![empty],
    };
    let pid = f.pid();
    let err = GlibcHeap::locate_with(pid, &options).unwrap_err();
    assert!(matches!(err, HeapError::NoDebugInfo { .. }), "{err:?}");
    let msg = err.to_string();
    let build_id = {
        use object::Object;
        let data = std::fs::read(LIBC).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let id = file.build_id().unwrap().unwrap();
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert!(msg.contains(&format!("process {pid}")), "{msg}");
    assert!(msg.contains("libc.so.6"), "{msg}");
    assert!(msg.contains(&build_id), "{msg}");
    assert!(msg.contains("libc6-dbg"), "{msg}");
    assert!(
        msg.contains(&format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &build_id[..2],
            &build_id[2..]
        )),
        "{msg}"
    );
    eprintln!("{msg}");
    assert_eq!(f.ask("ping", "PONG"), "PONG");
}

#[test]
fn reference_layout_is_the_installed_libc_layout() {
    let bin = Binary::load(Path::new(LIBC)).unwrap_or_else(|e| panic!("{e}"));
    let layout = MallocLayout::from_binary(&bin).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(layout, MallocLayout::reference_glibc_2_36_x86_64());
    assert_eq!(layout.heap_max_size, 64 << 20);
    assert_eq!(layout.chunk.min_size, 32);
}

#[test]
fn datastructs_allocations_are_among_the_chunks_in_use() {
    let mut f = Fixture::start("datastructs", &["20"]);
    let alloc = f.line_starting("ALLOC");
    let kv = fixtures::parse_fields(&alloc["ALLOC".len()..]);
    let (count, bytes): (usize, u64) = (kv["count"].parse().unwrap(), kv["bytes"].parse().unwrap());
    // malloc_usable_size summed over its objects, when the fixture reports it.
    let usable: Option<u64> = kv.get("usable").map(|v| v.parse().unwrap());
    let sum = f.line_starting("SUM");
    f.wait_ready();
    with_heap(&mut f, GlibcHeap::locate, |heap, _| {
        let tot = heap.totals();
        eprintln!(
            "datastructs: {count} objects of {bytes} bytes reported; {} chunks in use, {} usable bytes",
            tot.in_use, tot.in_use_bytes
        );
        assert!(tot.in_use >= count, "{tot:?}");
        assert!(tot.in_use_bytes >= bytes, "{tot:?}");
        if let Some(usable) = usable {
            assert!(tot.in_use_bytes >= usable, "{tot:?} < usable={usable}");
        }
        // Beyond its own objects, only libc's few (tcache struct, stdio buffers).
        assert!(tot.in_use - count <= 8, "{tot:?}");
    });
    // Read only: its state is what it was.
    assert_eq!(f.ask("sum", "SUM"), sum);
}

#[test]
fn a_million_chunk_heap_is_walked() {
    let n: u64 = std::env::var("HEAP_WALK_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (mut f, shapes) = start_shapes(&[&n.to_string()]);
    let (count, first, last) = shapes.extra.expect("EXTRA line");
    assert_eq!(count, n);
    let pid = f.pid();
    let tracee = Tracee::seize(pid).expect("seize");
    let t = Instant::now();
    let ctx = GlibcHeap::locate(pid).unwrap_or_else(|e| panic!("{e}"));
    let locate = t.elapsed();
    // The first walk of a process pays for page faults in our buffers; report both.
    let mut times = Vec::new();
    let mut heap = None;
    for _ in 0..3 {
        let t = Instant::now();
        heap = Some(Heap::walk(tracee.memory(), &ctx).unwrap_or_else(|e| panic!("{e}")));
        times.push(t.elapsed());
    }
    let heap = heap.unwrap();
    eprintln!(
        "HEAP-WALK chunks={} in_use={} bytes_read={} locate={locate:?} walks={times:?}",
        heap.chunks().len(),
        heap.totals().in_use,
        heap.stats().bytes_read
    );
    assert!(heap.chunks().len() as u64 > n);
    for p in [first, last] {
        let c = heap.chunk_at(p).unwrap();
        assert!(c.is_in_use() && c.usable_size >= 24 && c.arena == Some(ArenaId::MAIN));
    }
    assert!(heap.totals().in_use as u64 > n);
    tracee.detach().unwrap();
    assert_answers(&mut f);
}
