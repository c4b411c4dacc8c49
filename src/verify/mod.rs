//! The time-traveling check: is the state that went forward into the new version and back
//! into a fresh instance of the old version the state we started from?
//!
//! [`diff`] takes two captures of the same binary (the original process and the reversed
//! one) and walks them in parallel from the globals, the way the program would: type-aware,
//! through the DWARF of the binary. Scalars (integers, enums, floats, characters, bit-fields)
//! are compared byte for byte, padding is skipped, unions and objects of unknown type are
//! compared as raw bytes. Addresses differ between two processes, so pointers are compared by
//! what they lead to, not by value: the walk pairs each object of the original with the one
//! of the reversed process that the same pointer reaches, and insists that the pairing stays
//! one to one (two pointers that share an object in the original must share one in the
//! reversed process too: aliasing is state). Pointers out of the state (functions, library
//! data, string literals) compare by symbol and content.
//!
//! What the forward mapping drops on purpose (a `[drop]` rule) does not come back, so it is
//! excluded ([`Exclusions::from_forward`]) wherever it occurs, together with whatever is
//! reachable only through it.
//!
//! The result is data ([`Report`]): every difference with its C-like path
//! (`table->buckets[17]->next->count`) and both values rendered for a person. The walk is a
//! worklist, never a recursion over the data, so a list of a million nodes is fine, and it
//! allocates per difference, not per byte, since it runs while the update holds the old
//! process stopped.
//!
//! ```no_run
//! # fn demo(bin: &transplant::debuginfo::Binary, old: &transplant::state::StateGraph,
//! #         reversed: &transplant::state::StateGraph, fwd: &transplant::mapping::Mapping) {
//! use transplant::verify::{diff, Exclusions};
//! let report = diff(bin, old, reversed, &Exclusions::from_forward(fwd));
//! for d in &report.differences {
//!     eprintln!("{d}");
//! }
//! assert!(report.is_exact());
//! # }
//! ```

mod layout;
mod render;
mod walk;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::debuginfo::{Binary, TypeId, Variable};
use crate::mapping::{Conversion, Mapping};
use crate::state::StateGraph;

/// At most this many differences are listed in a [`Report`]; the rest are only counted
/// ([`Report::total_differences`]), so that a badly broken transfer does not print a gigabyte.
pub const MAX_LISTED: usize = 1000;

/// State the comparison must not expect back: what the forward mapping intentionally drops.
///
/// Globals are named by name and link-time address (which tell apart statics of the same
/// name), struct fields by the struct's [`TypeId`] in the old binary and the member's index,
/// so the binary given to [`diff`] must be the mapping's old binary (or the same file loaded
/// again: type ids are assigned deterministically).
#[derive(Clone, Debug, Default)]
pub struct Exclusions {
    /// Dropped globals: (name, link-time address).
    globals: HashSet<(String, u64)>,
    /// Arrays shrunk by a drop rule: (name, address) -> elements kept.
    global_tails: HashMap<(String, u64), u64>,
    /// Dropped fields: (struct, member index).
    fields: HashSet<(TypeId, usize)>,
    /// Array fields shrunk by a drop rule: (struct, member index) -> elements kept.
    field_tails: HashMap<(TypeId, usize), u64>,
}

impl Exclusions {
    /// Nothing excluded: every bit of the old state must come back.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every global and every struct field whose forward conversion is
    /// [`Conversion::Drop`] (a `[drop]` rule), so the round trip is not expected to bring them
    /// back; and, for arrays a drop rule shrinks, the elements past the new length.
    ///
    /// Meant for a forward mapping (old -> new). Going forward, state is only ever dropped by
    /// a rule (otherwise the mapping refuses), so everything listed here was dropped on
    /// purpose.
    pub fn from_forward(mapping: &Mapping) -> Self {
        let mut ex = Self::none();
        for g in &mapping.globals {
            let Some(old) = &g.old else { continue };
            let key = (old.name.clone(), old.address);
            match &g.conversion {
                Conversion::Drop => {
                    ex.globals.insert(key);
                }
                Conversion::Array {
                    old_len, new_len, ..
                } if new_len < old_len => {
                    ex.global_tails.insert(key, *new_len);
                }
                _ => {}
            }
        }
        for t in &mapping.types {
            // A union is mapped as one entry named after the union itself: nothing to drop.
            let fields = t.fields.iter().filter(|f| f.old_path.is_some());
            for (member, f) in fields.enumerate() {
                if f.old_path.as_deref() == Some(t.old_name.as_str()) {
                    continue;
                }
                match &f.conversion {
                    Conversion::Drop => {
                        ex.fields.insert((t.old, member));
                    }
                    Conversion::Array {
                        old_len, new_len, ..
                    } if new_len < old_len => {
                        ex.field_tails.insert((t.old, member), *new_len);
                    }
                    _ => {}
                }
            }
        }
        ex
    }

    /// Also excludes the global `var` (of the binary that will be diffed).
    pub fn with_global(mut self, var: &Variable) -> Self {
        self.globals.insert((var.name.clone(), var.address));
        self
    }

    /// Also excludes member `member` (its index in [`crate::debuginfo::Composite::members`])
    /// of struct `ty`, wherever a value of that struct is found.
    pub fn with_field(mut self, ty: TypeId, member: usize) -> Self {
        self.fields.insert((ty, member));
        self
    }

    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.globals.is_empty()
            && self.global_tails.is_empty()
            && self.fields.is_empty()
            && self.field_tails.is_empty()
    }

    fn global_excluded(&self, var: &Variable) -> bool {
        !self.globals.is_empty() && self.globals.contains(&(var.name.clone(), var.address))
    }

    fn global_tail(&self, var: &Variable) -> Option<u64> {
        if self.global_tails.is_empty() {
            return None;
        }
        self.global_tails
            .get(&(var.name.clone(), var.address))
            .copied()
    }

    fn field_excluded(&self, ty: TypeId, member: usize) -> bool {
        self.fields.contains(&(ty, member))
    }

    fn field_tail(&self, ty: TypeId, member: usize) -> Option<u64> {
        self.field_tails.get(&(ty, member)).copied()
    }
}

/// One place where the reversed state is not the old state.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// Where, as C would name it from a global: `records[1]->score`, `*head->next->val` (a
    /// whole heap string), `conns[3].buf`. A run of the same link is shortened:
    /// `head(->next){99999}->val`. Heap objects that the walk could not pair are named
    /// `<unreached heap object 0x... (N bytes)>` (the address is in the process that has it).
    pub path: String,
    /// The value in the old process: integers in decimal, enums by enumerator name,
    /// characters and strings quoted, pointers as `-> <what they point to>`, raw bytes as
    /// `hex:...`.
    pub old: String,
    /// The value in the reversed process, rendered the same way.
    pub reversed: String,
}

impl Difference {
    /// The same difference with both values replaced by `<hidden>` (for `--no-values`: the
    /// state may hold secrets that do not belong in a log).
    pub fn without_values(&self) -> Difference {
        Difference {
            path: self.path.clone(),
            old: "<hidden>".into(),
            reversed: "<hidden>".into(),
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: old {}, reversed {}",
            self.path, self.old, self.reversed
        )
    }
}

/// The outcome of a comparison.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Report {
    /// The first [`MAX_LISTED`] differences, in the order the walk met them (globals in
    /// variable order, then breadth first), then unreached heap objects.
    pub differences: Vec<Difference>,
    /// How many differences there were in all.
    pub total_differences: u64,
    /// Pairs of objects compared (globals and heap objects).
    pub objects: u64,
    /// Bytes of the old state compared.
    pub bytes: u64,
    /// Objects not compared because they are excluded or reachable only through excluded
    /// state (counted in the old graph).
    pub excluded_objects: u64,
}

impl Report {
    /// Whether the reversed state is exactly the old one (excluded state aside).
    pub fn is_exact(&self) -> bool {
        self.total_differences == 0
    }

    /// How many differences there were in all (the list may be shorter).
    pub fn total(&self) -> usize {
        self.total_differences as usize
    }
}

/// Compares `old` with `reversed`, two captures of `binary` (the old version) in two
/// processes, skipping what `exclude` names. See the module documentation.
///
/// Never fails: anything that does not match, including a graph that does not fit the binary,
/// is a [`Difference`].
pub fn diff(
    binary: &Binary,
    old: &StateGraph,
    reversed: &StateGraph,
    exclude: &Exclusions,
) -> Report {
    let t = std::time::Instant::now();
    let report = walk::Differ::new(binary, old, reversed, exclude).run();
    tracing::debug!(
        objects = report.objects,
        bytes = report.bytes,
        differences = report.total_differences,
        elapsed_ms = t.elapsed().as_secs_f64() * 1e3,
        "compared old and reversed state"
    );
    report
}
