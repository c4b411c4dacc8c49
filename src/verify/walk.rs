//! The parallel walk of the old and the reversed graph.

use std::collections::VecDeque;

use super::layout::{Kind, Layout, Layouts};
use super::render::{self, PathWriter};
use super::{Difference, Exclusions, Report, MAX_LISTED};
use crate::debuginfo::{Binary, TypeId};
use crate::state::{ObjectKind, StateGraph, Target};

/// No object / no edge.
const NONE: u32 = u32::MAX;

/// Where an edge leads, in 16 bytes: an [`crate::state::Edge`] is ~200 bytes, and a million
/// of them read at random is what a walk would otherwise spend its time on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tgt {
    Object { id: u32, offset: u64 },
    External,
    Dangling,
}

/// The edges of each object sorted by offset, compactly: one pass over the graph's edges,
/// then a counting sort ([`StateGraph::edges_from`] is linear per object).
struct EdgeIndex {
    /// Positions `start[i]..start[i + 1]` are the edges of object `i`.
    start: Vec<u32>,
    /// Per position: the edge's index in [`StateGraph::edges`], offset and target.
    edge: Vec<u32>,
    offset: Vec<u64>,
    target: Vec<Tgt>,
}

impl EdgeIndex {
    fn new(g: &StateGraph) -> Self {
        let n = g.objects.len();
        let m = g.edges.len();
        let (mut from, mut off, mut tgt) = (
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
        );
        let mut start = vec![0u32; n + 1];
        for e in &g.edges {
            let f = e.from.0.min(n as u32);
            from.push(f);
            off.push(e.offset);
            tgt.push(match e.target {
                Target::Object { id, offset } => Tgt::Object { id: id.0, offset },
                Target::External(_) => Tgt::External,
                Target::Dangling { .. } => Tgt::Dangling,
            });
            if (f as usize) < n {
                start[f as usize + 1] += 1;
            }
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let total = start[n] as usize;
        let mut fill = start.clone();
        let mut idx = EdgeIndex {
            edge: vec![0; total],
            offset: vec![0; total],
            target: vec![Tgt::Dangling; total],
            start,
        };
        for k in 0..m {
            let f = from[k] as usize;
            if f < n {
                let p = fill[f] as usize;
                fill[f] += 1;
                idx.edge[p] = k as u32;
                idx.offset[p] = off[k];
                idx.target[p] = tgt[k];
            }
        }
        for i in 0..n {
            let (a, b) = (idx.start[i] as usize, idx.start[i + 1] as usize);
            if !idx.offset[a..b].is_sorted() {
                let mut v: Vec<(u64, u32, Tgt)> = (a..b)
                    .map(|p| (idx.offset[p], idx.edge[p], idx.target[p]))
                    .collect();
                v.sort_by_key(|x| (x.0, x.1));
                for (p, (o, e, t)) in (a..b).zip(v) {
                    idx.offset[p] = o;
                    idx.edge[p] = e;
                    idx.target[p] = t;
                }
            }
        }
        idx
    }

    /// Positions of the edges of object `id` with offsets in `[from, to)`.
    fn range(&self, id: u32, from: u64, to: u64) -> (usize, usize) {
        let (a, b) = (
            self.start[id as usize] as usize,
            self.start[id as usize + 1] as usize,
        );
        if a == b {
            return (a, a);
        }
        let s = &self.offset[a..b];
        let lo = s.partition_point(|&o| o < from);
        let hi = lo + s[lo..].partition_point(|&o| o < to);
        (a + lo, a + hi)
    }
}

/// How the bytes of a leaf are shown when they differ.
#[derive(Clone, Copy)]
enum Render {
    Scalar(TypeId),
    Chars,
    Raw,
}

/// The field path inside the object being compared, as a chain on the call stack: built
/// into a string only for a difference.
#[derive(Clone, Copy)]
struct Ctx<'p> {
    parent: Option<&'p Ctx<'p>>,
    seg: &'p str,
    index: Option<u64>,
}

impl Ctx<'_> {
    const ROOT: Ctx<'static> = Ctx {
        parent: None,
        seg: "",
        index: None,
    };

    fn write(&self, out: &mut String) {
        if let Some(p) = self.parent {
            p.write(out);
        }
        out.push_str(self.seg);
        if let Some(i) = self.index {
            use std::fmt::Write as _;
            let _ = write!(out, "[{i}]");
        }
    }
}

/// A value of a difference; pointers are rendered once the walk is over, when every object
/// that will be paired is.
enum Val {
    Text(String),
    /// A pointer word: its edge (in the graph of its side) if any, and its raw value.
    Pointer {
        edge: Option<u32>,
        raw: u64,
    },
}

/// A difference before rendering.
struct Found {
    /// The old object it is in (its path is rendered at the end), or [`NONE`] when `suffix`
    /// is the whole path.
    obj: u32,
    suffix: String,
    old: Val,
    rev: Val,
}

pub(super) struct Differ<'a> {
    binary: &'a Binary,
    old: &'a StateGraph,
    rev: &'a StateGraph,
    exclude: &'a Exclusions,
    layouts: Layouts<'a>,
    oe: EdgeIndex,
    re: EdgeIndex,
    /// The pairing: old object -> reversed object and back.
    o2r: Vec<u32>,
    r2o: Vec<u32>,
    /// How each paired old object was first reached: (holding object, edge), or `NONE` for
    /// globals. Paths are rendered from it.
    parent: Vec<(u32, u32)>,
    queue: VecDeque<u32>,
    found: Vec<Found>,
    total: u64,
    objects: u64,
    bytes: u64,
    /// Objects pointed to from excluded state (or from bytes not compared), per side.
    seeds_old: Vec<u32>,
    seeds_rev: Vec<u32>,
    /// Old objects not compared because excluded.
    excluded: u64,
    /// The pair being compared, and how many bytes both have.
    cur_o: u32,
    cur_r: u32,
    lim: u64,
}

impl<'a> Differ<'a> {
    pub fn new(
        binary: &'a Binary,
        old: &'a StateGraph,
        rev: &'a StateGraph,
        exclude: &'a Exclusions,
    ) -> Self {
        // The two indexes are independent, and this runs while the old process is stopped.
        let (oe, re) = std::thread::scope(|s| {
            let r = s.spawn(|| EdgeIndex::new(rev));
            let o = EdgeIndex::new(old);
            (o, r.join().expect("indexing edges does not panic"))
        });
        Differ {
            binary,
            old,
            rev,
            exclude,
            layouts: Layouts::new(binary.types(), exclude),
            oe,
            re,
            o2r: vec![NONE; old.objects.len()],
            r2o: vec![NONE; rev.objects.len()],
            parent: vec![(NONE, NONE); old.objects.len()],
            queue: VecDeque::new(),
            found: Vec::new(),
            total: 0,
            objects: 0,
            bytes: 0,
            seeds_old: Vec::new(),
            seeds_rev: Vec::new(),
            excluded: 0,
            cur_o: NONE,
            cur_r: NONE,
            lim: 0,
        }
    }

    pub fn run(mut self) -> Report {
        self.pair_globals();
        while let Some(o) = self.queue.pop_front() {
            let r = self.o2r[o as usize];
            self.compare_pair(o, r);
        }
        let excluded = self.unreached();
        self.report(excluded)
    }

    // ------------------------------------------------------------------ pairing

    fn pair_globals(&mut self) {
        let mut rev_by_var = vec![NONE; self.binary.variables().len()];
        for o in &self.rev.objects {
            if let ObjectKind::Global { var, .. } = o.kind {
                if let Some(slot) = rev_by_var.get_mut(var) {
                    *slot = o.id.0;
                }
            }
        }
        for o in &self.old.objects {
            let ObjectKind::Global { var, name } = &o.kind else {
                continue;
            };
            match rev_by_var.get(*var).copied().filter(|&r| r != NONE) {
                Some(r) => {
                    self.o2r[o.id.index()] = r;
                    self.r2o[r as usize] = o.id.0;
                    self.queue.push_back(o.id.0);
                }
                None => self.free(name.clone(), "present".into(), "<missing>".into()),
            }
        }
        for o in &self.rev.objects {
            if let ObjectKind::Global { name, .. } = &o.kind {
                if self.r2o[o.id.index()] == NONE {
                    self.free(name.clone(), "<missing>".into(), "present".into());
                }
            }
        }
    }

    /// Pairs old object `x` with reversed object `y`, reached through old edge `edge` of the
    /// current object; false if either is already paired otherwise.
    fn pair(&mut self, x: u32, y: u32, edge: u32) -> bool {
        let (Some(&have), Some(&back)) = (self.o2r.get(x as usize), self.r2o.get(y as usize))
        else {
            return false;
        };
        if have == y {
            return true;
        }
        if have != NONE || back != NONE {
            return false;
        }
        self.o2r[x as usize] = y;
        self.r2o[y as usize] = x;
        self.parent[x as usize] = (self.cur_o, edge);
        self.queue.push_back(x);
        true
    }

    // ------------------------------------------------------------------ differences

    fn listing(&self) -> bool {
        self.found.len() < MAX_LISTED
    }

    /// A difference whose whole path is `path`.
    fn free(&mut self, path: String, old: String, rev: String) {
        self.total += 1;
        if self.listing() {
            self.found.push(Found {
                obj: NONE,
                suffix: path,
                old: Val::Text(old),
                rev: Val::Text(rev),
            });
        }
    }

    /// A difference in the current object at `ctx` (plus `+off` when given).
    fn found(&mut self, ctx: &Ctx<'_>, off: Option<u64>, old: Val, rev: Val) {
        let mut suffix = String::new();
        ctx.write(&mut suffix);
        if let Some(off) = off {
            use std::fmt::Write as _;
            let _ = write!(suffix, "+{off}");
        }
        self.found.push(Found {
            obj: self.cur_o,
            suffix,
            old,
            rev,
        });
    }

    // ------------------------------------------------------------------ comparing

    fn compare_pair(&mut self, o: u32, r: u32) {
        let (old, rev) = (self.old, self.rev);
        let (oo, ro) = (&old.objects[o as usize], &rev.objects[r as usize]);
        self.cur_o = o;
        self.cur_r = r;
        self.lim = oo.bytes.len().min(ro.bytes.len()) as u64;
        let root = Ctx::ROOT;
        let var = match &oo.kind {
            ObjectKind::Global { var, .. } => self.binary.variables().get(*var),
            ObjectKind::Heap => None,
        };
        if var.is_some_and(|v| self.exclude.global_excluded(v)) {
            self.seed(0, u64::MAX);
            self.excluded += 1;
            return;
        }
        self.objects += 1;
        let extent = match &oo.kind {
            ObjectKind::Global { .. } => {
                match var.filter(|v| v.size.is_some()) {
                    Some(v) => {
                        let layout = match self.exclude.global_tail(v) {
                            Some(keep) => self.layouts.truncated(v.ty, keep),
                            None => self.layouts.of(v.ty),
                        };
                        self.walk(&layout, 0, oo.size, &root);
                    }
                    // A type of unknown size (or a graph that does not fit the binary).
                    None => self.range(0, oo.size, &root, Render::Raw),
                }
                oo.size
            }
            ObjectKind::Heap => self.compare_heap(o, r),
        };
        let have = (oo.bytes.len() as u64).min(extent);
        self.bytes += have;
        if (ro.bytes.len() as u64) < have {
            self.total += 1;
            if self.listing() {
                let t =
                    |ty: Option<TypeId>, n: usize| format!("{}, {n} bytes", self.type_label(ty));
                let (a, b) = (t(oo.ty, oo.bytes.len()), t(ro.ty, ro.bytes.len()));
                self.found(&root, None, Val::Text(a), Val::Text(b));
            }
        }
        // Pointers in bytes that were not compared (the slack of a larger reversed chunk)
        // lead to objects that are not expected to pair.
        let (lo, hi) = self.re.range(r, extent, u64::MAX);
        for k in lo..hi {
            self.seed_edge(false, k);
        }
        let (lo, hi) = self.oe.range(o, extent, u64::MAX);
        for k in lo..hi {
            self.seed_edge(true, k);
        }
    }

    /// Compares a heap object pair by the old object's type; returns the extent compared.
    fn compare_heap(&mut self, o: u32, r: u32) -> u64 {
        let (oo, ro) = (&self.old.objects[o as usize], &self.rev.objects[r as usize]);
        let root = Ctx::ROOT;
        if oo.ty != ro.ty {
            self.total += 1;
            if self.listing() {
                let (a, b) = (self.type_label(oo.ty), self.type_label(ro.ty));
                self.found(&root, None, Val::Text(a), Val::Text(b));
            }
        }
        let Some(ty) = oo.ty else {
            self.range(0, oo.size, &root, Render::Raw);
            return oo.size;
        };
        let t = self.layouts.object(ty);
        let esize = t.esize;
        if esize == 0 {
            self.range(0, oo.size, &root, Render::Raw);
            return oo.size;
        }
        let count = oo.count.max(1);
        if t.chars {
            self.range(0, count, &root, Render::Chars);
            return count;
        }
        let layout = t.layout;
        let extent = if layout.flexible && count == 1 {
            oo.size
        } else {
            count * esize
        };
        if count == 1 {
            self.walk(&layout, 0, extent, &root);
        } else {
            for i in 0..count {
                let ctx = Ctx {
                    parent: None,
                    seg: "",
                    index: Some(i),
                };
                self.walk(&layout, i * esize, extent, &ctx);
            }
        }
        extent
    }

    /// Whether `[from, to)` can be skipped as a whole: no pointer in it on either side, and
    /// the same bytes (then every leaf in it is equal, padding too).
    fn same_plain(&self, from: u64, to: u64) -> bool {
        let to = to.min(self.lim);
        if from >= to {
            return true;
        }
        let (a, b) = self.oe.range(self.cur_o, from, to);
        let (c, d) = self.re.range(self.cur_r, from, to);
        a == b && c == d && {
            let (f, t) = (from as usize, to as usize);
            self.old.objects[self.cur_o as usize].bytes[f..t]
                == self.rev.objects[self.cur_r as usize].bytes[f..t]
        }
    }

    /// Compares a value laid out as `layout` at `base`; `extent` is where the object ends
    /// (for flexible array members).
    fn walk(&mut self, layout: &Layout, base: u64, extent: u64, ctx: &Ctx<'_>) {
        for leaf in &layout.leaves {
            let at = base + leaf.offset;
            let c = Ctx {
                parent: Some(ctx),
                seg: &leaf.path,
                index: None,
            };
            match &leaf.kind {
                Kind::Scalar { ty, size } => self.range(at, at + size, &c, Render::Scalar(*ty)),
                Kind::BitField {
                    ty,
                    bit_offset,
                    bits,
                } => self.bit_field(at, *ty, *bit_offset, *bits, &c),
                Kind::Chars { len } => self.range(at, at + len, &c, Render::Chars),
                Kind::FlexibleChars => self.range(at, extent, &c, Render::Chars),
                Kind::Raw { size } => self.range(at, at + size, &c, Render::Raw),
                Kind::Array {
                    count,
                    stride,
                    elem,
                } => self.elements(elem, at, *count, *stride, extent, ctx, &leaf.path),
                Kind::Flexible { stride, elem } => {
                    let count = extent.saturating_sub(at) / stride;
                    self.elements(elem, at, count, *stride, extent, ctx, &leaf.path);
                }
                Kind::Excluded { size } => {
                    let end = size.map_or(extent, |s| at + s);
                    self.seed(at, end);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn elements(
        &mut self,
        elem: &Layout,
        at: u64,
        count: u64,
        stride: u64,
        extent: u64,
        ctx: &Ctx<'_>,
        path: &str,
    ) {
        // Elements past the bytes both sides have cannot be compared (a size difference is
        // reported for the object); stopping there also bounds a count from bad DWARF.
        let count = count.min(self.lim.saturating_sub(at).div_ceil(stride.max(1)));
        if self.same_plain(at, at + count * stride) {
            return;
        }
        for i in 0..count {
            let ci = Ctx {
                parent: Some(ctx),
                seg: path,
                index: Some(i),
            };
            self.walk(elem, at + i * stride, extent, &ci);
        }
    }

    /// Marks what the edges in `[from, to)` of the current pair lead to as reached through
    /// excluded state.
    fn seed(&mut self, from: u64, to: u64) {
        let (lo, hi) = self.oe.range(self.cur_o, from, to);
        for k in lo..hi {
            self.seed_edge(true, k);
        }
        let (lo, hi) = self.re.range(self.cur_r, from, to);
        for k in lo..hi {
            self.seed_edge(false, k);
        }
    }

    /// Notes what the edge at position `pos` of a side's index leads to as reached through
    /// excluded (or not compared) state.
    fn seed_edge(&mut self, old_side: bool, pos: usize) {
        let idx = if old_side { &self.oe } else { &self.re };
        if let Tgt::Object { id, .. } = idx.target[pos] {
            if old_side {
                self.seeds_old.push(id);
            } else {
                self.seeds_rev.push(id);
            }
        }
    }

    fn bytes_of(&self, old_side: bool, from: u64, to: u64) -> &'a [u8] {
        let (g, id) = if old_side {
            (self.old, self.cur_o)
        } else {
            (self.rev, self.cur_r)
        };
        &g.objects[id as usize].bytes[from as usize..to as usize]
    }

    fn word(&self, old_side: bool, at: u64) -> u64 {
        let b = self.bytes_of(old_side, at, (at + 8).min(self.lim));
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    }

    /// Compares `[from, to)` of the current pair: pointer words (those with an edge on
    /// either side) by target, the bytes between byte for byte.
    fn range(&mut self, from: u64, to: u64, ctx: &Ctx<'_>, how: Render) {
        let to = to.min(self.lim);
        if from >= to {
            return;
        }
        let (mut i, oi) = self.oe.range(self.cur_o, from, to);
        let (mut j, rj) = self.re.range(self.cur_r, from, to);
        if i == oi && j == rj {
            self.plain(from, to, from, ctx, how);
            return;
        }
        let mut cursor = from;
        loop {
            let po = (i < oi).then(|| self.oe.offset[i]);
            let pr = (j < rj).then(|| self.re.offset[j]);
            let p = match (po, pr) {
                (None, None) => break,
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
            };
            let eo = (po == Some(p)).then(|| {
                i += 1;
                i - 1
            });
            let er = (pr == Some(p)).then(|| {
                j += 1;
                j - 1
            });
            if p < cursor {
                continue; // overlaps the previous pointer word
            }
            self.plain(cursor, p, from, ctx, how);
            self.pointer(p, eo, er, from, ctx, how);
            cursor = p + 8;
        }
        if cursor < to {
            self.plain(cursor, to, from, ctx, how);
        }
    }

    /// Compares bytes `[from, to)` (no pointers among them) of a leaf that starts at `leaf`.
    fn plain(&mut self, from: u64, to: u64, leaf: u64, ctx: &Ctx<'_>, how: Render) {
        if from >= to {
            return;
        }
        let (a, b) = (
            self.bytes_of(true, from, to),
            self.bytes_of(false, from, to),
        );
        if a == b {
            return;
        }
        self.total += 1;
        if !self.listing() {
            return;
        }
        let types = self.binary.types();
        match how {
            Render::Scalar(ty) => {
                let (x, y) = (render::scalar(types, ty, a), render::scalar(types, ty, b));
                self.found(ctx, None, Val::Text(x), Val::Text(y));
            }
            Render::Chars => {
                let (x, y) = render::chars_pair(a, b);
                self.found(ctx, None, Val::Text(x), Val::Text(y));
            }
            Render::Raw => {
                let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
                let last = a.iter().zip(b).rposition(|(x, y)| x != y).unwrap_or(first);
                let (x, y) = (render::hex(&a[first..=last]), render::hex(&b[first..=last]));
                let off = from - leaf + first as u64;
                self.found(ctx, Some(off), Val::Text(x), Val::Text(y));
            }
        }
    }

    /// Compares the pointer word at `at`, with the old edge at position `eo` of the old
    /// index and the reversed edge at `er`.
    fn pointer(
        &mut self,
        at: u64,
        eo: Option<usize>,
        er: Option<usize>,
        leaf: u64,
        ctx: &Ctx<'_>,
        how: Render,
    ) {
        let same = match (eo, er) {
            (None, None) => {
                let end = (at + 8).min(self.lim);
                return self.plain(at, end, leaf, ctx, how);
            }
            (Some(a), Some(b)) => match (self.oe.target[a], self.re.target[b]) {
                (Tgt::Object { id: x, offset: ox }, Tgt::Object { id: y, offset: oy }) => {
                    self.pair(x, y, self.oe.edge[a]) && ox == oy
                }
                (Tgt::External, Tgt::External) => {
                    let (ea, eb) = (self.oe.edge[a] as usize, self.re.edge[b] as usize);
                    self.old.edges[ea].target == self.rev.edges[eb].target
                }
                (Tgt::Dangling, Tgt::Dangling) => true,
                _ => false,
            },
            _ => false,
        };
        if same {
            return;
        }
        self.total += 1;
        if self.listing() {
            let off = matches!(how, Render::Raw).then(|| at - leaf);
            let (wo, wr) = (self.word(true, at), self.word(false, at));
            self.found(
                ctx,
                off,
                Val::Pointer {
                    edge: eo.map(|p| self.oe.edge[p]),
                    raw: wo,
                },
                Val::Pointer {
                    edge: er.map(|p| self.re.edge[p]),
                    raw: wr,
                },
            );
        }
    }

    fn bit_field(&mut self, at: u64, ty: TypeId, bit_offset: u8, bits: u64, ctx: &Ctx<'_>) {
        let nbytes = (u64::from(bit_offset) + bits).div_ceil(8).min(16);
        let end = (at + nbytes).min(self.lim);
        if at >= end || bits == 0 || bits > 120 {
            return;
        }
        let read = |b: &[u8]| {
            let mut w = [0u8; 16];
            w[..b.len()].copy_from_slice(b);
            (u128::from_le_bytes(w) >> bit_offset) & ((1u128 << bits) - 1)
        };
        let (x, y) = (
            read(self.bytes_of(true, at, end)),
            read(self.bytes_of(false, at, end)),
        );
        if x == y {
            return;
        }
        self.total += 1;
        if self.listing() {
            let types = self.binary.types();
            let (a, b) = (
                render::integer_like(types, ty, x, bits, None),
                render::integer_like(types, ty, y, bits, None),
            );
            self.found(ctx, None, Val::Text(a), Val::Text(b));
        }
    }

    // ------------------------------------------------------------------ unreached objects

    /// Reports heap objects that were not paired, except those reached only through
    /// excluded state; returns how many old objects were excluded that way (or directly).
    fn unreached(&mut self) -> u64 {
        let ex_old = reach(
            self.old,
            &self.oe,
            &self.o2r,
            std::mem::take(&mut self.seeds_old),
        );
        let ex_rev = reach(
            self.rev,
            &self.re,
            &self.r2o,
            std::mem::take(&mut self.seeds_rev),
        );
        let mut excluded = self.excluded;
        let (mut total, mut listed) = (0u64, Vec::new());
        let room = MAX_LISTED.saturating_sub(self.found.len());
        for (side, g, paired, ex) in [
            (true, self.old, &self.o2r, &ex_old),
            (false, self.rev, &self.r2o, &ex_rev),
        ] {
            for o in g.heap_objects() {
                let i = o.id.index();
                if paired[i] != NONE {
                    continue;
                }
                if ex[i] {
                    excluded += u64::from(side);
                    continue;
                }
                total += 1;
                if listed.len() < room {
                    let path = format!("<unreached heap object {} ({} bytes)>", o.addr, o.size);
                    let what = self.type_label(o.ty);
                    let (a, b) = if side {
                        (what, "<none>".to_owned())
                    } else {
                        ("<none>".to_owned(), what)
                    };
                    listed.push(Found {
                        obj: NONE,
                        suffix: path,
                        old: Val::Text(a),
                        rev: Val::Text(b),
                    });
                }
            }
        }
        self.total += total;
        self.found.extend(listed);
        excluded
    }

    // ------------------------------------------------------------------ rendering

    fn type_label(&self, ty: Option<TypeId>) -> String {
        match ty {
            Some(t) => self.binary.type_name(t),
            None => "untyped".into(),
        }
    }

    /// The C expression of field `suffix` of paired old object `o`.
    fn path_of(&self, o: u32, suffix: &str) -> String {
        let mut chain = Vec::new();
        let mut x = o;
        while let Some(&(p, e)) = self.parent.get(x as usize) {
            if p == NONE || chain.len() > self.old.objects.len() {
                break;
            }
            chain.push(e);
            x = p;
        }
        let root = &self.old.objects[x as usize];
        let name = match &root.kind {
            ObjectKind::Global { var, name } => match self.binary.variables().get(*var) {
                Some(v) => render::global_name(v),
                None => name.clone(),
            },
            ObjectKind::Heap => format!("<heap object {}>", root.addr),
        };
        let mut w = PathWriter::root(name);
        for &e in chain.iter().rev() {
            let edge = &self.old.edges[e as usize];
            let interior = match edge.target {
                Target::Object { offset, .. } => offset,
                _ => 0,
            };
            w.follow(&edge.path, interior);
        }
        w.field(suffix)
    }

    fn value(&self, old_side: bool, v: Val) -> String {
        let (edge, raw) = match v {
            Val::Text(s) => return s,
            Val::Pointer { edge, raw } => (edge, raw),
        };
        let Some(e) = edge else {
            return if raw == 0 {
                "NULL".into()
            } else {
                format!("{raw:#x}")
            };
        };
        let g = if old_side { self.old } else { self.rev };
        match &g.edges[e as usize].target {
            Target::Object { id, offset } => {
                let paired = if old_side {
                    (self.o2r[id.index()] != NONE).then_some(id.0)
                } else {
                    Some(self.r2o[id.index()]).filter(|&x| x != NONE)
                };
                let mut s = match paired {
                    Some(x) => format!("-> {}", self.path_of(x, "")),
                    None => {
                        let o = g.object(*id);
                        format!("-> <heap object {} ({} bytes)>", o.addr, o.size)
                    }
                };
                if *offset != 0 {
                    s.push_str(&format!("+{offset}"));
                }
                s
            }
            Target::External(x) => format!("-> {}", render::external(x)),
            Target::Dangling { why } => format!("-> <dangling: {why}>"),
        }
    }

    fn report(mut self, excluded_objects: u64) -> Report {
        let found = std::mem::take(&mut self.found);
        let differences = found
            .into_iter()
            .map(|f| Difference {
                path: if f.obj == NONE {
                    f.suffix.clone()
                } else {
                    self.path_of(f.obj, &f.suffix)
                },
                old: self.value(true, f.old),
                reversed: self.value(false, f.rev),
            })
            .collect();
        Report {
            differences,
            total_differences: self.total,
            objects: self.objects,
            bytes: self.bytes,
            excluded_objects,
        }
    }
}

/// Marks the unpaired objects reachable from `seeds` through unpaired objects.
fn reach(g: &StateGraph, idx: &EdgeIndex, paired: &[u32], seeds: Vec<u32>) -> Vec<bool> {
    let mut seen = vec![false; g.objects.len()];
    let mut stack = Vec::new();
    for s in seeds {
        if let Some(f) = seen.get_mut(s as usize) {
            if !*f && paired[s as usize] == NONE {
                *f = true;
                stack.push(s);
            }
        }
    }
    while let Some(x) = stack.pop() {
        let (a, b) = (
            idx.start[x as usize] as usize,
            idx.start[x as usize + 1] as usize,
        );
        for t in &idx.target[a..b] {
            if let Tgt::Object { id, .. } = *t {
                let i = id as usize;
                if i < seen.len() && !seen[i] && paired[i] == NONE {
                    seen[i] = true;
                    stack.push(id);
                }
            }
        }
    }
    seen
}
