//! Unit tests on graphs built by hand over the DWARF of the `upd_list_v1` fixture (`struct
//! node {char *key; char *val; struct node *next;}`, globals `head`, `nnodes`, `journal`),
//! as two processes would give them: same structure, different addresses.

use tracer::RemoteAddr;

use super::*;
use crate::debuginfo::Type;
use crate::state::{Edge, External, ExternalKind, How, Object, ObjectId, ObjectKind, Target};

fn binary() -> Binary {
    Binary::load(fixtures::path("upd_list_v1")).unwrap()
}

fn node_type(bin: &Binary) -> TypeId {
    let head = bin.variable("head").unwrap();
    let Type::Pointer {
        target: Some(t), ..
    } = bin.ty(head.ty)
    else {
        panic!("head is not a typed pointer")
    };
    bin.types().definition_of(bin.types().strip_typedefs_cv(*t))
}

fn char_type(bin: &Binary) -> TypeId {
    bin.types()
        .iter()
        .find(|(_, t)| matches!(t, Type::Base { name, .. } if name == "char"))
        .unwrap()
        .0
}

/// A graph under construction, laid out at `bias` (globals) and `heap` (heap objects).
struct Builder<'b> {
    bin: &'b Binary,
    g: StateGraph,
    next: u64,
}

impl<'b> Builder<'b> {
    fn new(bin: &'b Binary, bias: u64, heap: u64) -> Self {
        let mut g = StateGraph::default();
        for (i, v) in bin.variables().iter().enumerate() {
            let size = v.size.max(v.symbol_size).unwrap_or(0);
            g.objects.push(Object {
                id: ObjectId(i as u32),
                kind: ObjectKind::Global {
                    name: v.name.clone(),
                    var: i,
                },
                addr: RemoteAddr::new(v.address + bias),
                size,
                ty: Some(v.ty),
                count: 1,
                bytes: vec![0; size as usize],
            });
        }
        Builder { bin, g, next: heap }
    }

    fn global(&self, name: &str) -> ObjectId {
        let v = self.bin.variable(name).unwrap();
        let i = self
            .bin
            .variables()
            .iter()
            .position(|x| std::ptr::eq(x, v))
            .unwrap();
        ObjectId(i as u32)
    }

    fn heap(&mut self, ty: Option<TypeId>, count: u64, size: u64) -> ObjectId {
        let id = ObjectId(self.g.objects.len() as u32);
        self.g.objects.push(Object {
            id,
            kind: ObjectKind::Heap,
            addr: RemoteAddr::new(self.next),
            size,
            ty,
            count,
            bytes: vec![0; size as usize],
        });
        self.next += size + 16;
        id
    }

    fn string(&mut self, s: &str) -> ObjectId {
        let ty = char_type(self.bin);
        let id = self.heap(Some(ty), 24, 24);
        self.g.objects[id.index()].bytes[..s.len()].copy_from_slice(s.as_bytes());
        id
    }

    fn set(&mut self, id: ObjectId, off: u64, bytes: &[u8]) {
        let o = off as usize;
        self.g.objects[id.index()].bytes[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn edge(&mut self, from: ObjectId, off: u64, value: u64, target: Target, path: &str) {
        self.set(from, off, &value.to_le_bytes());
        self.g.edges.push(Edge {
            from,
            offset: off,
            value: RemoteAddr::new(value),
            target,
            how: How::Typed,
            path: path.into(),
        });
    }

    fn point(&mut self, from: ObjectId, off: u64, to: ObjectId, path: &str) {
        let addr = self.g.objects[to.index()].addr.get();
        let t = Target::Object { id: to, offset: 0 };
        self.edge(from, off, addr, t, path);
    }

    /// `head` -> a list of nodes with these (key, value) strings, `nnodes` set.
    fn list(&mut self, items: &[(&str, &str)]) -> Vec<ObjectId> {
        let node = node_type(self.bin);
        let mut nodes = Vec::new();
        for (k, v) in items {
            let n = self.heap(Some(node), 1, 24);
            let (ks, vs) = (self.string(k), self.string(v));
            self.point(n, 0, ks, ".key");
            self.point(n, 8, vs, ".val");
            nodes.push(n);
        }
        let head = self.global("head");
        if let Some(&first) = nodes.first() {
            self.point(head, 0, first, "");
        }
        for w in nodes.windows(2) {
            self.point(w[0], 16, w[1], ".next");
        }
        let nn = self.global("nnodes");
        self.set(nn, 0, &(items.len() as u64).to_le_bytes());
        nodes
    }
}

const ITEMS: &[(&str, &str)] = &[("a", "one"), ("b", "two"), ("c", "three")];

fn pair(items: &[(&str, &str)]) -> (Binary, StateGraph, StateGraph) {
    let bin = binary();
    let mut a = Builder::new(&bin, 0x5555_0000_0000, 0x5555_1000_0000);
    a.list(items);
    let mut b = Builder::new(&bin, 0x6666_0000_0000, 0x6666_2000_0000);
    b.list(items);
    let (ga, gb) = (a.g, b.g);
    (bin, ga, gb)
}

fn paths(r: &Report) -> Vec<&str> {
    r.differences.iter().map(|d| d.path.as_str()).collect()
}

#[test]
fn the_same_structure_at_other_addresses_is_exact() {
    let (bin, a, b) = pair(ITEMS);
    let r = diff(&bin, &a, &b, &Exclusions::none());
    assert!(r.is_exact(), "{:#?}", r.differences);
    assert_eq!(r.objects, a.objects.len() as u64);
    assert!(r.bytes >= 9 * 24);
}

#[test]
fn a_changed_heap_string_and_global_are_named_with_both_values() {
    let (bin, a, mut b) = pair(ITEMS);
    // b.val of the second node: objects are globals, then (node, key, val) per item.
    let globals = bin.variables().len();
    b.objects[globals + 5].bytes[1] = b'X';
    let nn = bin
        .variables()
        .iter()
        .position(|v| v.name == "nnodes")
        .unwrap();
    b.objects[nn].bytes[0] = 4;
    let r = diff(&bin, &a, &b, &Exclusions::none());
    assert_eq!(
        r.differences,
        vec![
            Difference {
                path: "nnodes".into(),
                old: "3".into(),
                reversed: "4".into()
            },
            Difference {
                path: "*head->next->val".into(),
                old: "\"two\"".into(),
                reversed: "\"tXo\"".into()
            },
        ]
    );
    assert_eq!(r.total(), 2);
    assert_eq!(
        r.differences[1].without_values(),
        Difference {
            path: "*head->next->val".into(),
            old: "<hidden>".into(),
            reversed: "<hidden>".into()
        }
    );
}

#[test]
fn sharing_is_state_a_copy_is_not_the_shared_object() {
    let bin = binary();
    // Old: both nodes' keys are one string. Reversed: two equal strings.
    let node = node_type(&bin);
    let mut a = Builder::new(&bin, 0, 0x1000_0000);
    let (n0, n1) = (a.heap(Some(node), 1, 24), a.heap(Some(node), 1, 24));
    let (k, v0, v1) = (a.string("k"), a.string("v1"), a.string("v2"));
    a.point(n0, 0, k, ".key");
    a.point(n0, 8, v0, ".val");
    a.point(n0, 16, n1, ".next");
    a.point(n1, 0, k, ".key");
    a.point(n1, 8, v1, ".val");
    let head = a.global("head");
    a.point(head, 0, n0, "");
    let nn = a.global("nnodes");
    a.set(nn, 0, &2u64.to_le_bytes());
    let mut b = Builder::new(&bin, 0, 0x2000_0000);
    b.list(&[("k", "v1"), ("k", "v2")]);

    let r = diff(&bin, &a.g, &b.g, &Exclusions::none());
    let d = &r.differences[0];
    assert_eq!(d.path, "head->next->key");
    assert_eq!(d.old, "-> *head->key");
    assert!(d.reversed.starts_with("-> <heap object 0x"), "{d:?}");
    // The reversed copy of the key was never paired: one unreached object, on the reversed
    // side.
    assert_eq!(r.total(), 2, "{:#?}", r.differences);
    assert!(r.differences[1]
        .path
        .starts_with("<unreached heap object 0x2"));
    assert_eq!(r.differences[1].old, "<none>");
    assert_eq!(r.differences[1].reversed, "char");
}

#[test]
fn a_lost_link_reports_the_pointer_and_what_only_the_old_state_reaches() {
    let (bin, a, mut b) = pair(ITEMS);
    let globals = bin.variables().len() as u32;
    let second = ObjectId(globals + 3);
    b.edges.retain(|e| !(e.from == second && e.offset == 16));
    b.objects[second.index()].bytes[16..24].fill(0);
    let r = diff(&bin, &a, &b, &Exclusions::none());
    assert_eq!(r.differences[0].path, "head->next->next");
    assert_eq!(
        r.differences[0].old,
        "-> <heap object 0x5555100000f0 (24 bytes)>"
    );
    assert_eq!(r.differences[0].reversed, "NULL");
    // The third node and its two strings, in the old graph, and the same in the reversed one.
    assert_eq!(r.total(), 7, "{:#?}", r.differences);
}

#[test]
fn a_long_list_is_walked_without_recursion_and_its_path_shortened() {
    let n = 100_000;
    let keys: Vec<(String, String)> = (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    let items: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (bin, a, mut b) = pair(&items);
    let last_val = b.objects.len() - 1;
    b.objects[last_val].bytes[0] = b'w';
    let r = diff(&bin, &a, &b, &Exclusions::none());
    assert_eq!(r.total(), 1, "{:#?}", r.differences);
    assert_eq!(
        r.differences[0].path,
        format!("*head(->next){{{}}}->val", n - 1)
    );
    assert_eq!(r.differences[0].old, format!("\"v{}\"", n - 1));
    assert_eq!(r.objects, a.objects.len() as u64);
}

#[test]
fn excluded_fields_and_what_only_they_reach_are_not_compared() {
    let (bin, a, mut b) = pair(ITEMS);
    let globals = bin.variables().len();
    for i in 0..ITEMS.len() {
        b.objects[globals + 3 * i + 2].bytes[0] = b'Z';
    }
    let node = node_type(&bin);
    let with = diff(&bin, &a, &b, &Exclusions::none());
    assert_eq!(with.total(), 3);
    // Member 1 of struct node is `val`.
    let ex = Exclusions::none().with_field(node, 1);
    let r = diff(&bin, &a, &b, &ex);
    assert!(r.is_exact(), "{:#?}", r.differences);
    assert_eq!(r.excluded_objects, 3);
    // A dropped global is skipped whole.
    let mut c = b.clone();
    c.objects = a.objects.clone();
    let nn = bin.variable("nnodes").unwrap();
    let i = bin
        .variables()
        .iter()
        .position(|v| std::ptr::eq(v, nn))
        .unwrap();
    c.edges = a.edges.clone();
    c.objects[i].bytes[0] = 9;
    assert_eq!(paths(&diff(&bin, &a, &c, &Exclusions::none())), ["nnodes"]);
    assert!(diff(&bin, &a, &c, &Exclusions::none().with_global(nn)).is_exact());
}

#[test]
fn pointers_out_of_the_state_compare_by_symbol_and_content() {
    let bin = binary();
    let lit = |s: &str| {
        Target::External(External {
            kind: ExternalKind::ReadOnlyData,
            object: Some("upd_list_v1".into()),
            symbol: None,
            offset: 0x20,
            string: Some(s.into()),
        })
    };
    let mut a = Builder::new(&bin, 0, 0x1000_0000);
    let j = a.global("journal");
    a.edge(j, 0, 0x4000, lit("abc"), "");
    let mut b = Builder::new(&bin, 0x10000, 0x2000_0000);
    let j = b.global("journal");
    b.edge(j, 0, 0x14000, lit("abc"), "");
    assert!(diff(&bin, &a.g, &b.g, &Exclusions::none()).is_exact());
    b.g.edges[0].target = lit("abd");
    let r = diff(&bin, &a.g, &b.g, &Exclusions::none());
    assert_eq!(
        r.differences,
        vec![Difference {
            path: "journal".into(),
            old: "-> \"abc\"".into(),
            reversed: "-> \"abd\"".into()
        }]
    );
    b.g.edges[0].target = Target::Dangling {
        why: "freed heap chunk".into(),
    };
    let r = diff(&bin, &a.g, &b.g, &Exclusions::none());
    assert_eq!(r.differences[0].reversed, "-> <dangling: freed heap chunk>");
}

#[test]
fn a_smaller_reversed_object_is_a_difference_a_larger_one_is_not() {
    let (bin, a, mut b) = pair(ITEMS);
    let globals = bin.variables().len();
    let key = globals + 1;
    b.objects[key].bytes.resize(40, 0xaa);
    b.objects[key].size = 40;
    b.objects[key].count = 40;
    assert!(diff(&bin, &a, &b, &Exclusions::none()).is_exact());
    b.objects[key].bytes.truncate(8);
    b.objects[key].size = 8;
    let r = diff(&bin, &a, &b, &Exclusions::none());
    assert_eq!(
        r.differences,
        vec![Difference {
            path: "*head->key".into(),
            old: "char, 24 bytes".into(),
            reversed: "char, 8 bytes".into()
        }]
    );
}

#[test]
fn the_list_of_differences_is_capped_but_all_are_counted() {
    let n = 3000;
    let keys: Vec<(String, String)> = (0..n).map(|i| (format!("k{i}"), "v".into())).collect();
    let items: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (bin, a, mut b) = pair(&items);
    let globals = bin.variables().len();
    for i in 0..n {
        b.objects[globals + 3 * i + 2].bytes[0] = b'w';
    }
    let r = diff(&bin, &a, &b, &Exclusions::none());
    assert_eq!(r.total(), n);
    assert_eq!(r.differences.len(), MAX_LISTED);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["total_differences"], n as u64);
}
