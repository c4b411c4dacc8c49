//! The correspondence between two versions of a program, worked out from their debug
//! information alone (no process): which global of the old version becomes which global of the
//! new one, which type which type, which field which field, and how each value converts.
//!
//! [`Mapping::new`] matches globals and statics by name (statics also by compilation unit file
//! name and function), types by name, struct fields by name, after the renames of the
//! [`Rules`]. Every way in which the versions differ becomes a [`Difference`] with a
//! [`Decision`]: handled automatically, checked value by value at transfer time, settled by a
//! rule, or refused with the reason. A mapping with a refused difference must not be used for a
//! transfer (fail closed); [`Mapping::refused`] lists them.
//!
//! The reverse transfer (new -> old, the time-traveling check) uses [`Mapping::reverse`]: the
//! same matching with the binaries swapped and the rules inverted, in which state that exists
//! only in the newer version is dropped silently.
//!
//! The result is plain data ([`GlobalMap`], [`TypeMap`], [`FieldMap`], [`Conversion`]) that the
//! transfer layer plans with and that `transplant plan` prints.

mod build;
mod initial;
pub mod rules;

use std::fmt;

use serde::Serialize;

use crate::debuginfo::{Binary, TypeId, VariableKind};
pub use rules::{FieldRef, Rules, RulesError, Target, Value, ValueConversion};

/// Which way a mapping goes. The decisions differ: going back, state that only the newer
/// version has is dropped without a rule (the round trip compares only what the older version
/// has).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Old version -> new version: the update.
    Forward,
    /// New version -> old version: the time-traveling check.
    Reverse,
}

/// A global or static of one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VarRef {
    /// Its name.
    pub name: String,
    /// Global, file static or function static (with unit and function).
    pub kind: VariableKind,
    /// Its type in that version's table.
    pub ty: TypeId,
    /// Its type as C prints it.
    pub type_name: String,
    /// Link-time address.
    pub address: u64,
    /// `sizeof`, when known.
    pub size: Option<u64>,
}

/// How one global of the old version becomes one of the new version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlobalMap {
    /// The path used in differences: `name`, `FILE:name` or `FILE:FUNCTION:name` (old names,
    /// or new names for a global only the new version has).
    pub path: String,
    /// The old variable; `None` for a global only the new version has.
    pub old: Option<VarRef>,
    /// The new variable; `None` for a global only the old version has.
    pub new: Option<VarRef>,
    /// How the value converts.
    pub conversion: Conversion,
}

/// How a struct or union type of the old version becomes one of the new version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TypeMap {
    /// Old type id.
    pub old: TypeId,
    /// New type id.
    pub new: TypeId,
    /// Old type name (`struct record`).
    pub old_name: String,
    /// New type name (`struct entry`).
    pub new_name: String,
    /// `sizeof` in the old and the new version.
    pub old_size: Option<u64>,
    /// `sizeof` in the new version.
    pub new_size: Option<u64>,
    /// One entry per field of either version, in the old version's order, then the new
    /// version's added fields.
    pub fields: Vec<FieldMap>,
}

/// One field of a [`TypeMap`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldMap {
    /// `struct item.count` in the old version; `None` for an added field.
    pub old_path: Option<String>,
    /// `struct item.count` in the new version; `None` for a removed field.
    pub new_path: Option<String>,
    /// Byte offset in the old struct.
    pub old_offset: Option<u64>,
    /// Byte offset in the new struct.
    pub new_offset: Option<u64>,
    /// How the value converts.
    pub conversion: Conversion,
}

/// How a value of the old version becomes a value of the new version.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Conversion {
    /// Same representation: copy the bytes (pointers inside are still relocated by the
    /// transfer: heap objects, function pointers by function name, library data by symbol,
    /// string literals by content).
    Copy {
        /// Bytes.
        size: u64,
    },
    /// An integer (or bool, or bit-field) resized or changing signedness. `checked`: the value
    /// must fit the new type, else the transfer refuses that value.
    Integer {
        /// Old size in bits.
        old_bits: u64,
        /// Old signedness.
        old_signed: bool,
        /// New size in bits.
        new_bits: u64,
        /// New signedness.
        new_signed: bool,
        /// Whether some old values do not fit.
        checked: bool,
    },
    /// A float resized (`float` -> `double`); `checked` when precision may be lost.
    Float {
        /// Old size in bytes.
        old_size: u64,
        /// New size in bytes.
        new_size: u64,
        /// Whether the value must convert exactly.
        checked: bool,
    },
    /// An enum converted by enumerator name: `(old value, new value)` pairs; an old value with
    /// no new value (a removed enumerator) refuses that value.
    Enum {
        /// Old size in bytes.
        old_size: u64,
        /// New size in bytes.
        new_size: u64,
        /// Old value -> new value.
        values: Vec<(i64, Option<i64>)>,
    },
    /// An array whose element count or element type changed; missing elements keep the new
    /// version's initial value, elements beyond the new length are dropped (reverse only).
    Array {
        /// Old element count (outermost dimension).
        old_len: u64,
        /// New element count.
        new_len: u64,
        /// Old element stride in bytes.
        old_stride: u64,
        /// New element stride in bytes.
        new_stride: u64,
        /// How each element converts.
        element: Box<Conversion>,
    },
    /// A struct or union converted field by field: index into [`Mapping::types`].
    Struct {
        /// The [`TypeMap`].
        type_map: usize,
    },
    /// A pointer whose target type changed (retyped): the pointer is relocated as any other,
    /// the object it points to converts with `type_map`.
    Pointer {
        /// Index into [`Mapping::types`] of the target's map, when the target is a struct.
        type_map: Option<usize>,
    },
    /// A rule's value conversion.
    Value(ValueConversion),
    /// Only in the new version: keeps the new version's initial value.
    KeepInitial,
    /// Only in the new version: set to the value of a `[default]` rule.
    Default {
        /// The value.
        value: Value,
    },
    /// Only in the old version: not transferred (a drop rule, or the reverse direction).
    Drop,
    /// Cannot be converted; the difference with the same path says why.
    Refused,
}

/// What happens to one difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Handled by transplant without a rule.
    Automatic {
        /// What it does.
        how: String,
    },
    /// Handled automatically where the value allows; a value that does not is refused at
    /// transfer time (a narrowing, a removed function a pointer might hold).
    CheckedPerValue {
        /// What is checked.
        check: String,
    },
    /// Settled by a rule.
    ByRule {
        /// The rule, as written in the file (`drop.fields "struct item.legacy"`).
        rule: String,
        /// What it does.
        how: String,
    },
    /// Cannot be done; the transfer refuses.
    Refused {
        /// Why, and which rule would settle it.
        reason: String,
    },
}

impl Decision {
    /// Whether the transfer refuses.
    pub fn is_refused(&self) -> bool {
        matches!(self, Decision::Refused { .. })
    }
}

/// One way in which the two versions differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Where: `g_total`, `struct item.count`, `enum mode.MODE_TURBO`, `function f`.
    pub path: String,
    /// What changed (`int -> long`, `field removed`).
    pub what: String,
    /// What happens.
    pub decision: Decision,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: ", self.path, self.what)?;
        match &self.decision {
            Decision::Automatic { how } => write!(f, "automatic: {how}"),
            Decision::CheckedPerValue { check } => write!(f, "checked per value: {check}"),
            Decision::ByRule { rule, how } => write!(f, "by rule {rule}: {how}"),
            Decision::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}

/// The correspondence between two versions. See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mapping {
    /// Forward (old -> new) or reverse.
    pub direction: Direction,
    /// The source binary of this mapping (the old version going forward).
    pub old_binary: String,
    /// The target binary.
    pub new_binary: String,
    /// Where the rules came from, if anywhere.
    pub rules: Option<String>,
    /// Every global of either version, sorted by path.
    pub globals: Vec<GlobalMap>,
    /// Struct and union types reached from the globals, in the order first reached.
    pub types: Vec<TypeMap>,
    /// Every difference, sorted by path.
    pub differences: Vec<Difference>,
}

impl Mapping {
    /// The forward mapping from `old` to `new` under `rules`.
    pub fn new(old: &Binary, new: &Binary, rules: &Rules) -> Mapping {
        build::Builder::new(old, new, rules, Direction::Forward).run()
    }

    /// The mapping of the reverse transfer, from `new` back to `old`, given the binaries and
    /// rules of the forward one: built with the binaries swapped and [`Rules::inverted`]. In it
    /// `old`/`new` name the source and target of the reverse transfer (the new and the old
    /// version); state only the newer version has is dropped silently.
    pub fn reverse(old: &Binary, new: &Binary, rules: &Rules) -> Mapping {
        build::Builder::new(new, old, &rules.inverted(), Direction::Reverse).run()
    }

    /// The differences that stop a transfer.
    pub fn refused(&self) -> impl Iterator<Item = &Difference> {
        self.differences.iter().filter(|d| d.decision.is_refused())
    }

    /// Whether nothing is refused.
    pub fn is_complete(&self) -> bool {
        self.refused().next().is_none()
    }

    /// The map of the global whose path (old name) is `path`.
    pub fn global(&self, path: &str) -> Option<&GlobalMap> {
        self.globals.iter().find(|g| g.path == path)
    }

    /// The map of the old type named `old_name` (`struct item`).
    pub fn type_map(&self, old_name: &str) -> Option<&TypeMap> {
        self.types.iter().find(|t| t.old_name == old_name)
    }

    /// The map of an old struct or union by its id (typedefs, qualifiers and declarations are
    /// looked through), for heap objects whose type the capture inferred.
    pub fn type_map_of(&self, old: &Binary, id: TypeId) -> Option<&TypeMap> {
        let id = old.types().definition_of(old.types().strip_typedefs_cv(id));
        self.types.iter().find(|t| t.old == id)
    }

    /// The differences at `path`.
    pub fn differences_at(&self, path: &str) -> impl Iterator<Item = &Difference> {
        let path = path.to_owned();
        self.differences.iter().filter(move |d| d.path == path)
    }

    /// Counts per decision: (automatic, checked per value, by rule, refused).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for d in &self.differences {
            match d.decision {
                Decision::Automatic { .. } => c.0 += 1,
                Decision::CheckedPerValue { .. } => c.1 += 1,
                Decision::ByRule { .. } => c.2 += 1,
                Decision::Refused { .. } => c.3 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests;
