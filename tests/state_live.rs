//! Capture of live processes: the heap graph of `datastructs` holds exactly what the program
//! says it allocated, every pointer is classified, and the process never notices.

use std::collections::BTreeMap;

use fixtures::Fixture;
use transplant::state::live::capture_process;
use transplant::state::{How, ObjectKind, RegionKind, StateGraph, Target};

fn field(line: &str, key: &str) -> u64 {
    fixtures::parse_fields(line)[key].parse().unwrap()
}

fn types_of_heap(g: &StateGraph, bin: &transplant::debuginfo::Binary) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in g.heap_objects() {
        let name = o.ty.map_or("<untyped>".to_string(), |t| bin.type_name(t));
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

#[test]
fn datastructs_heap_graph_is_exactly_what_the_program_allocated() {
    let mut f = Fixture::start("datastructs", &["2"]);
    let alloc = f.line_starting("ALLOC");
    let sum_before = f.line_starting("SUM");
    f.wait_ready();
    let (count, usable) = (field(&alloc, "count"), field(&alloc, "usable"));

    let cap = capture_process(f.pid()).unwrap();
    let g = &cap.graph;
    assert!(g.warnings.is_empty(), "{:?}", g.warnings);
    let s = g.summary();
    assert_eq!(
        s.heap_objects,
        count,
        "objects: {:?}",
        types_of_heap(g, &cap.binary)
    );
    assert_eq!(s.heap_bytes, usable);
    // Every pointer is classified: typed, to an external symbol, nothing dangling or guessed.
    assert_eq!(s.dangling_pointers, 0);
    assert_eq!(s.conservative_pointers, 0);
    assert!(g.guesses.is_empty(), "{:?}", g.guesses);
    // scale 2: 20 list nodes, 20 tree nodes, 20 entries with 20 keys, 1 table, 1 bucket
    // array, 1 point array.
    let by_type = types_of_heap(g, &cap.binary);
    let want: BTreeMap<String, usize> = [
        ("struct node", 20),
        ("struct tree", 20),
        ("struct entry", 20),
        ("char", 20),
        ("struct table", 1),
        ("struct entry *", 1),
        ("struct point", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(by_type, want);
    // The callbacks are external references to the program's own functions, by name.
    let mut callbacks: BTreeMap<String, usize> = BTreeMap::new();
    for e in &g.edges {
        if let Target::External(x) = &e.target {
            assert_eq!(x.kind, RegionKind::Code, "{e:?}");
            assert_eq!(e.path, ".cb");
            *callbacks.entry(x.symbol.clone().unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(
        callbacks,
        BTreeMap::from([("negate".into(), 10), ("twice".into(), 10)])
    );
    // Array lengths come from the chunks: as many elements as fit the usable size, an upper
    // bound on what the program asked for (14 buckets: 112 bytes asked, 120 usable; 8 points).
    let buckets = g
        .heap_objects()
        .find(|o| {
            o.ty.is_some_and(|t| cap.binary.type_name(t) == "struct entry *")
        })
        .unwrap();
    assert_eq!((buckets.count, buckets.size), (15, 120));
    let points = g
        .heap_objects()
        .find(|o| {
            o.ty.is_some_and(|t| cap.binary.type_name(t) == "struct point")
        })
        .unwrap();
    assert_eq!(points.count, 8);

    // Never noticed: the same state, still serving.
    assert_eq!(f.ask("sum", "SUM"), sum_before);
}

#[test]
fn types_fixture_externals_and_guesses_are_named() {
    let (mut f, _) = Fixture::start_ready("types", &[]);
    let before = f.ask("checksum", "CHECKSUM");
    let cap = capture_process(f.pid()).unwrap();
    let g = &cap.graph;
    let edge_of = |name: &str| {
        let id = g
            .objects
            .iter()
            .find(|o| matches!(&o.kind, ObjectKind::Global { name: n, .. } if n == name))
            .unwrap_or_else(|| panic!("no global {name}"))
            .id;
        g.edges_from(id)
            .first()
            .map(|e| (*e).clone())
            .unwrap_or_else(|| panic!("no edge from {name}"))
    };
    // A string literal: read-only data, matched later by content.
    match edge_of("g_string").target {
        Target::External(x) => {
            assert_eq!(x.kind, RegionKind::ReadOnlyData);
            assert_eq!(x.string.as_deref(), Some("hello, transplant"));
        }
        t => panic!("{t:?}"),
    }
    // A library's data: stdout.
    match edge_of("g_stream").target {
        Target::External(x) => {
            assert_eq!(x.kind, RegionKind::Data);
            assert_eq!(x.symbol.as_deref(), Some("_IO_2_1_stdout_"));
            assert!(x.object.unwrap().starts_with("libc.so"));
        }
        t => panic!("{t:?}"),
    }
    // A library's function.
    match edge_of("g_printf").target {
        Target::External(x) => assert_eq!(
            (x.kind, x.symbol.as_deref()),
            (RegionKind::Code, Some("printf"))
        ),
        t => panic!("{t:?}"),
    }
    // A heap string.
    let e = edge_of("g_mut_string");
    let Target::Object { id, offset: 0 } = e.target else {
        panic!("{e:?}")
    };
    assert_eq!(
        g.object(id).ty.map(|t| cap.binary.type_name(t)).as_deref(),
        Some("char")
    );
    assert_eq!(&g.object(id).bytes[..12], b"on the heap\0");
    // A pointer between globals, through void *.
    let e = edge_of("g_void_ptr");
    assert_eq!(e.how, How::Typed);
    let Target::Object { id, offset: 0 } = e.target else {
        panic!("{e:?}")
    };
    assert!(matches!(&g.object(id).kind, ObjectKind::Global { name, .. } if name == "g_double"));
    // Nothing the capture guessed goes unrecorded: every conservative edge lies in a guess.
    for e in g
        .edges
        .iter()
        .filter(|e| matches!(e.how, How::Conservative(_)))
    {
        assert!(
            g.guesses
                .iter()
                .any(|x| x.object == e.from && (x.start..x.end).contains(&e.offset)),
            "{e:?}"
        );
    }
    assert_eq!(f.ask("checksum", "CHECKSUM"), before);
}
