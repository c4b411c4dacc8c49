//! Merging structurally identical types, so that the `struct point` every compilation unit
//! repeats becomes one [`TypeId`].
//!
//! Two types are identical when they have the same kind, language and local attributes
//! (names, sizes, member names and offsets, enumerators, dimensions, ...) and their referenced
//! types are identical in turn. Types form cyclic graphs (`struct node` points to itself), so
//! this is the coarsest bisimulation of the type graph, computed by partition refinement
//! (Moore's algorithm): start from classes of equal local attributes, then split classes by
//! the classes of their references until nothing splits. Each round is linear in the number
//! of types; the number of rounds is bounded by the depth at which two types first differ.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::types::{Language, Type, TypeId};

/// A fast non-cryptographic hasher (the FxHash mix rustc uses); the keys are the binary's own
/// type descriptions, so collision attacks are not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);

/// Hash maps keyed by the model's own data.
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
/// Hash sets keyed by the model's own data.
pub(crate) type FxSet<K> = std::collections::HashSet<K, BuildHasherDefault<Fx>>;

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const NONE: u32 = u32::MAX;

/// Merges identical types in place, dropping slots marked `dead` (aliases already resolved
/// away), and returns the new id of every old id (dead slots map to an arbitrary id).
pub(crate) fn dedupe(
    types: &mut Vec<Type>,
    langs: &mut Vec<Language>,
    dead: &[bool],
) -> Vec<TypeId> {
    let n = types.len();
    // 1. Classes of equal local attributes ("shape": the type with its references blanked).
    // Equal shapes have equally many references, so signatures below have a fixed length
    // per class.
    let mut class = vec![NONE; n];
    let mut members: Vec<Vec<u32>> = Vec::new();
    {
        let mut labels: FxMap<(Language, Type), u32> = FxMap::default();
        for i in 0..n {
            if dead[i] {
                continue;
            }
            let mut shape = types[i].clone();
            shape.map_refs(&mut |_| TypeId(0));
            let next = labels.len() as u32;
            let c = *labels.entry((langs[i], shape)).or_insert(next);
            if c == next {
                members.push(Vec::new());
            }
            members[c as usize].push(i as u32);
            class[i] = c;
        }
    }
    // References (and their reverse) in compressed rows.
    let mut succ_start = Vec::with_capacity(n + 1);
    let mut succ = Vec::new();
    for t in types.iter() {
        succ_start.push(succ.len() as u32);
        t.for_each_ref(&mut |r| succ.push(r.0));
    }
    succ_start.push(succ.len() as u32);
    let mut pred_start = vec![0u32; n + 1];
    for &r in &succ {
        pred_start[r as usize + 1] += 1;
    }
    for i in 0..n {
        pred_start[i + 1] += pred_start[i];
    }
    let mut pred = vec![0u32; succ.len()];
    {
        let mut fill = pred_start.clone();
        for i in 0..n {
            for &r in &succ[succ_start[i] as usize..succ_start[i + 1] as usize] {
                pred[fill[r as usize] as usize] = i as u32;
                fill[r as usize] += 1;
            }
        }
    }
    let degree = |i: usize| (succ_start[i + 1] - succ_start[i]) as usize;

    // 2. Refine: split a class whose members reference different classes, then recheck the
    // classes of everything referring to a type that moved, until no class splits.
    let mut queued = vec![false; members.len()];
    let mut queue: Vec<u32> = Vec::new();
    for (c, ms) in members.iter().enumerate() {
        if ms.len() > 1 && degree(ms[0] as usize) > 0 {
            queued[c] = true;
            queue.push(c as u32);
        }
    }
    let mut sig: Vec<u32> = Vec::new();
    let mut order: Vec<u32> = Vec::new();
    while let Some(c) = queue.pop() {
        let c = c as usize;
        queued[c] = false;
        let ms = std::mem::take(&mut members[c]);
        let d = degree(ms[0] as usize);
        sig.clear();
        for &m in &ms {
            let m = m as usize;
            sig.extend(
                succ[succ_start[m] as usize..succ_start[m + 1] as usize]
                    .iter()
                    .map(|&r| class[r as usize]),
            );
        }
        let key = |k: u32| &sig[k as usize * d..(k as usize + 1) * d];
        order.clear();
        order.extend(0..ms.len() as u32);
        order.sort_unstable_by(|&a, &b| key(a).cmp(key(b)));
        // Runs of equal signatures; the largest keeps the class number.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for k in 1..=order.len() {
            if k == order.len() || key(order[k]) != key(order[start]) {
                runs.push((start, k));
                start = k;
            }
        }
        if runs.len() == 1 {
            members[c] = ms;
            continue;
        }
        let largest = (0..runs.len())
            .max_by_key(|&r| runs[r].1 - runs[r].0)
            .expect("runs");
        for (r, &(a, b)) in runs.iter().enumerate() {
            let group: Vec<u32> = order[a..b].iter().map(|&k| ms[k as usize]).collect();
            if r == largest {
                members[c] = group;
            } else {
                let nc = members.len() as u32;
                for &t in &group {
                    class[t as usize] = nc;
                }
                members.push(group);
                queued.push(false);
            }
        }
        // Whatever refers to a type that moved may now differ from its classmates.
        for (r, &(a, b)) in runs.iter().enumerate() {
            if r == largest {
                continue;
            }
            for &k in &order[a..b] {
                let t = ms[k as usize] as usize;
                for &p in &pred[pred_start[t] as usize..pred_start[t + 1] as usize] {
                    let pc = class[p as usize] as usize;
                    if !queued[pc] && members[pc].len() > 1 {
                        queued[pc] = true;
                        queue.push(pc as u32);
                    }
                }
            }
        }
    }

    // 3. One type per class, in order of first appearance; references rewritten.
    let count = members.len();
    let mut new_of_class = vec![NONE; count];
    let mut remap = vec![TypeId(0); n];
    let mut keep = Vec::new();
    for i in 0..n {
        if dead[i] {
            continue;
        }
        let c = class[i] as usize;
        if new_of_class[c] == NONE {
            new_of_class[c] = keep.len() as u32;
            keep.push(i);
        }
        remap[i] = TypeId(new_of_class[c]);
    }
    let mut old_types = std::mem::take(types);
    let old_langs = std::mem::take(langs);
    for &i in &keep {
        let mut t = std::mem::replace(&mut old_types[i], Type::Void);
        t.map_refs(&mut |r| remap[r.index()]);
        types.push(t);
        langs.push(old_langs[i]);
    }
    remap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debuginfo::types::{Composite, Encoding, Member};

    fn node(name: &str, next: u32, int: u32) -> Type {
        Type::Struct(Composite {
            name: Some(name.into()),
            size: Some(16),
            members: vec![
                Member {
                    name: Some("value".into()),
                    ty: TypeId(int),
                    offset: 0,
                    bit_field: None,
                },
                Member {
                    name: Some("next".into()),
                    ty: TypeId(next),
                    offset: 8,
                    bit_field: None,
                },
            ],
            declaration: false,
        })
    }

    fn int() -> Type {
        Type::Base {
            name: "int".into(),
            encoding: Encoding::Signed,
            size: 4,
        }
    }

    fn ptr(to: u32) -> Type {
        Type::Pointer {
            target: Some(TypeId(to)),
            size: 8,
            name: None,
        }
    }

    #[test]
    fn merges_cyclic_types_from_two_units() {
        // Unit 1: 0 int, 1 struct node, 2 node *; unit 2: 3 int, 4 struct node, 5 node *.
        let mut types = vec![
            int(),
            node("node", 2, 0),
            ptr(1),
            int(),
            node("node", 5, 3),
            ptr(4),
        ];
        let mut langs = vec![Language::C; 6];
        let remap = dedupe(&mut types, &mut langs, &[false; 6]);
        assert_eq!(types.len(), 3);
        assert_eq!(remap[1], remap[4]);
        assert_eq!(remap[2], remap[5]);
        assert_eq!(remap[0], remap[3]);
        let Type::Struct(c) = &types[remap[1].index()] else {
            panic!()
        };
        assert_eq!(c.members[1].ty, remap[2]);
    }

    #[test]
    fn keeps_types_that_differ_deep_down() {
        // Two `struct node` whose `value` differ in type (int vs. long) stay apart.
        let long = Type::Base {
            name: "long int".into(),
            encoding: Encoding::Signed,
            size: 8,
        };
        let mut types = vec![
            int(),
            node("node", 2, 0),
            ptr(1),
            long,
            node("node", 5, 3),
            ptr(4),
        ];
        let mut langs = vec![Language::C; 6];
        let remap = dedupe(&mut types, &mut langs, &[false; 6]);
        assert_eq!(types.len(), 6);
        assert_ne!(remap[1], remap[4]);
        assert_ne!(remap[2], remap[5]);
    }
}
