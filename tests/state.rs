//! Capture of the state graph on a byte buffer (no process): the DWARF of the `datastructs`
//! fixture, and memory laid out by hand at its variables' link-time addresses (bias 0).

use std::collections::BTreeMap;

use tracer::{RemoteAddr, Snapshot};
use transplant::debuginfo::Binary;
use transplant::state::{
    capture, AddressSpace, ChunkRef, How, ObjectKind, Reason, Region, RegionKind, StateGraph,
    Target,
};

/// A hand-made heap: chunks by start, plus one code symbol.
struct TestSpace {
    chunks: BTreeMap<u64, ChunkRef>,
    code: (u64, u64, &'static str),
}

impl AddressSpace for TestSpace {
    fn chunk(&self, addr: RemoteAddr) -> Option<ChunkRef> {
        let (_, c) = self.chunks.range(..=addr.get()).next_back()?;
        (addr.get() < c.start.get() + c.size).then_some(*c)
    }
    fn region(&self, addr: RemoteAddr) -> Region {
        let (start, len, name) = self.code;
        if (start..start + len).contains(&addr.get()) {
            Region {
                kind: RegionKind::Code,
                object: Some("datastructs".into()),
                symbol: Some((name.into(), addr.get() - start)),
                offset: 0,
            }
        } else {
            Region {
                kind: RegionKind::Unmapped,
                object: None,
                symbol: None,
                offset: 0,
            }
        }
    }
}

fn words(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

struct World {
    bin: Binary,
    snap: Snapshot,
    space: TestSpace,
}

fn world() -> World {
    let bin = Binary::load(fixtures::path("datastructs")).unwrap();
    let mut snap = Snapshot::new();
    let var = |name: &str| bin.variable(name).unwrap().address;
    let twice = bin
        .functions()
        .iter()
        .find(|f| f.name == "twice")
        .unwrap()
        .low_pc;
    // Globals, zeroed, then the pointers set.
    let mut globals: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for v in bin.variables() {
        globals.insert(v.address, vec![0; v.size.unwrap() as usize]);
    }
    globals.insert(var("list_head"), words(&[0x10000]));
    globals.insert(var("table"), words(&[0x20000]));
    globals.insert(var("points"), words(&[0x30000]));
    globals.insert(var("tree_root"), words(&[0x40000])); // freed
    for (a, b) in globals {
        snap.insert(RemoteAddr::new(a), b);
    }
    let mut chunks = BTreeMap::new();
    let mut heap = |start: u64, bytes: Vec<u8>, size: u64, in_use: bool| {
        let mut b = bytes;
        b.resize(size as usize, 0);
        snap.insert(RemoteAddr::new(start), b);
        chunks.insert(
            start,
            ChunkRef {
                start: RemoteAddr::new(start),
                size,
                in_use,
            },
        );
    };
    // struct node { int value; struct node *next; } x2
    heap(0x10000, words(&[7, 0x10020]), 24, true);
    heap(0x10020, words(&[0, 0]), 24, true);
    // struct table { unsigned nbuckets, count; struct entry **buckets; }
    heap(0x20000, words(&[2 | (1 << 32), 0x20100]), 24, true);
    heap(0x20100, words(&[0x20200, 0]), 24, true); // 3 slots fit; [0] used
                                                   // struct entry { char *key; int value; callback_fn cb; struct entry *next; }
    heap(0x20200, words(&[0x20300, 1, twice, 0]), 40, true);
    heap(0x20300, b"key-1\0".to_vec(), 24, true);
    // struct point[2] (24 bytes each) in a 56-byte chunk
    heap(0x30000, vec![0; 48], 56, true);
    heap(0x40000, vec![0; 24], 24, false);
    World {
        bin,
        snap,
        space: TestSpace {
            chunks,
            code: (twice, 16, "twice"),
        },
    }
}

fn heap_at(g: &StateGraph, addr: u64) -> &transplant::state::Object {
    g.heap_objects()
        .find(|o| o.addr.get() == addr)
        .unwrap_or_else(|| panic!("no heap object at {addr:#x}"))
}

#[test]
fn capture_follows_typed_pointers_and_types_heap_objects() {
    let w = world();
    let g = capture(&w.bin, 0, &w.snap, &w.space);
    assert!(g.warnings.is_empty(), "{:?}", g.warnings);
    let s = g.summary();
    assert_eq!(s.globals, w.bin.variables().len() as u64);
    assert_eq!(
        s.heap_objects, 7,
        "both nodes, table, buckets, entry, key, points"
    );
    assert_eq!(s.heap_bytes, 24 * 5 + 40 + 56);
    assert_eq!(s.dangling_pointers, 1, "tree_root points at a freed chunk");
    assert_eq!(s.external_pointers, 1, "entry.cb -> twice");
    assert_eq!(s.conservative_pointers, 0);

    let name = |o: &transplant::state::Object| o.ty.map(|t| w.bin.type_name(t));
    assert_eq!(name(heap_at(&g, 0x10000)).as_deref(), Some("struct node"));
    assert_eq!(name(heap_at(&g, 0x10020)).as_deref(), Some("struct node"));
    assert_eq!(name(heap_at(&g, 0x20000)).as_deref(), Some("struct table"));
    let buckets = heap_at(&g, 0x20100);
    assert_eq!(name(buckets).as_deref(), Some("struct entry *"));
    assert_eq!(buckets.count, 3, "array length from the chunk's size");
    assert_eq!(name(heap_at(&g, 0x20200)).as_deref(), Some("struct entry"));
    assert_eq!(name(heap_at(&g, 0x20300)).as_deref(), Some("char"));
    let points = heap_at(&g, 0x30000);
    assert_eq!(
        (name(points).as_deref(), points.count),
        (Some("struct point"), 2)
    );

    // Edges carry field paths and interior offsets.
    let entry = heap_at(&g, 0x20200).id;
    let from_entry: Vec<(String, u64)> = g
        .edges_from(entry)
        .iter()
        .map(|e| (e.path.clone(), e.offset))
        .collect();
    assert_eq!(
        from_entry,
        [(".key".to_string(), 0), (".cb".to_string(), 16)]
    );
    let cb = g.edges_from(entry)[1];
    match &cb.target {
        Target::External(x) => {
            assert_eq!(
                (x.kind, x.symbol.as_deref(), x.offset),
                (RegionKind::Code, Some("twice"), 0)
            )
        }
        other => panic!("{other:?}"),
    }
    let b = g.edges_from(buckets.id);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].path, "[0]");
    assert!(g.edges.iter().all(|e| e.how == How::Typed));
    assert!(g.guesses.is_empty());
}

#[test]
fn untyped_objects_are_scanned_and_the_guess_recorded() {
    let mut w = world();
    // `points` now holds the address of the *middle* of its chunk: an interior pointer does
    // not type the chunk, so it is scanned conservatively; plant a heap address in it.
    let points_var = w.bin.variable("points").unwrap().address;
    w.snap
        .insert(RemoteAddr::new(points_var), words(&[0x30008]));
    let mut chunk = words(&[0, 0x10020]);
    chunk.resize(56, 0);
    w.snap.insert(RemoteAddr::new(0x30000), chunk);
    let g = capture(&w.bin, 0, &w.snap, &w.space);
    let p = heap_at(&g, 0x30000);
    assert_eq!(p.ty, None);
    let guesses: Vec<_> = g.guesses.iter().filter(|x| x.object == p.id).collect();
    assert_eq!(guesses.len(), 1);
    assert_eq!(
        (guesses[0].start, guesses[0].end, guesses[0].pointers),
        (0, 56, 1)
    );
    assert_eq!(guesses[0].reason, Reason::UntypedObject);
    let e = g.edges_from(p.id);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].offset, 8);
    assert!(matches!(e[0].how, How::Conservative(Reason::UntypedObject)));
    assert!(matches!(e[0].target, Target::Object { offset: 0, .. }));
    // The interior edge into it is typed and keeps its offset.
    let into: Vec<_> = g
        .edges
        .iter()
        .filter(|e| matches!(e.target, Target::Object { id, .. } if id == p.id))
        .collect();
    assert!(matches!(into[0].target, Target::Object { offset: 8, .. }));
    assert!(matches!(
        g.object(into[0].from).kind,
        ObjectKind::Global { .. }
    ));
}

/// Planning is pure: the byte-buffer state above, planned into "another instance" (the same
/// binary, bias 0x1000, an empty state of its own), without any process.
#[test]
fn planning_a_transfer_needs_no_process() {
    use transplant::mapping::rules::Rules;
    use transplant::mapping::Mapping;
    use transplant::transfer::{plan_mapped, plan_same_layout, Destination, Place, Value};
    let mut w = world();
    // No external pointer (those are named through a live process's symbols): no callback.
    let mut entry = words(&[0x20300, 1, 0, 0]);
    entry.resize(40, 0);
    w.snap.insert(RemoteAddr::new(0x20200), entry);
    // tree_root pointed at a freed chunk: that is refused, by path.
    let g = capture(&w.bin, 0, &w.snap, &w.space);
    let symbols = tracer::symbols::SymbolResolver::new(nix::unistd::getpid()).unwrap();
    // The target: the same program loaded 0x1000 higher, its globals zero, no heap yet.
    let mut target_mem = Snapshot::new();
    for v in w.bin.variables() {
        target_mem.insert(
            RemoteAddr::new(v.address + 0x1000),
            vec![0; v.size.unwrap() as usize],
        );
    }
    let no_heap = TestSpace {
        chunks: BTreeMap::new(),
        code: (0, 0, "none"),
    };
    let target = capture(&w.bin, 0x1000, &target_mem, &no_heap);
    let dst = Destination {
        binary: &w.bin,
        bias: 0x1000,
        symbols: &symbols,
        graph: &target,
        rodata: &[],
    };
    let e = plan_same_layout(&g, &w.bin, &dst).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot transfer `tree_root`: points to freed heap chunk at 0x40000 (0x40000)"
    );
    let tree_root = w.bin.variable("tree_root").unwrap().address;
    w.snap.insert(RemoteAddr::new(tree_root), words(&[0]));
    let g = capture(&w.bin, 0, &w.snap, &w.space);

    for plan in [
        plan_same_layout(&g, &w.bin, &dst).unwrap(),
        plan_mapped(
            &g,
            &w.bin,
            &dst,
            &Mapping::new(&w.bin, &w.bin, &Rules::default()),
            &Rules::default(),
        )
        .unwrap(),
    ] {
        assert_eq!(
            plan.heap_objects(),
            7,
            "both nodes, table, buckets, entry, key, points"
        );
        // Globals go to the target's addresses.
        let list_head = w.bin.variable("list_head").unwrap().address;
        let head = plan
            .objects
            .iter()
            .find(|o| o.place == Place::Global(RemoteAddr::new(list_head + 0x1000)))
            .expect("list_head planned");
        // list_head -> the first node, at its start.
        let (off, Value::Object { index, offset }) = head.pointers[0].clone() else {
            panic!("{:?}", head.pointers)
        };
        assert_eq!((off, offset), (0, 0));
        // At least sizeof(struct node): the mapped planner asks for exactly that, the
        // same-layout one for the source chunk's usable size.
        assert!(matches!(plan.objects[index].place, Place::Heap(n) if (16..=24).contains(&n)));
        // That node's next -> the second node.
        let (off, Value::Object { offset, .. }) = plan.objects[index].pointers[0].clone() else {
            panic!()
        };
        assert_eq!((off, offset), (8, 0));
        assert!(plan.displaced.is_empty());
    }
}
