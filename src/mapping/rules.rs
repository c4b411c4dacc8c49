//! The rules file: what names alone cannot decide between two versions.
//!
//! A TOML file with up to five tables, every one optional:
//!
//! ```toml
//! # Names of the OLD version on the left, of the NEW version on the right.
//! [rename]
//! types = { "struct record" = "struct entry" }
//! globals = { g_total = "g_sum" }
//! # Old type (its old name) and old field = new field name (or "new type.new field").
//! fields = { "struct item.cnt" = "count" }
//! # Old enumerator = the new enumerator its value becomes.
//! enumerators = { "enum mode.MODE_TURBO" = "MODE_FAST" }
//! # Compilation units, for file and function statics, by file name.
//! units = { "server_v1.c" = "server_v2.c" }
//! # A removed function = the function a pointer to it points to instead.
//! functions = { on_legacy = "on_message" }
//!
//! # State of the old version that the new one intentionally does not keep.
//! [drop]
//! globals = ["g_removed"]
//! fields = ["struct item.legacy"]
//!
//! # Values for what exists only in the new version (NEW names), instead of its initial value.
//! [default]
//! "struct item.priority" = 5
//! g_added = 1
//!
//! # Value conversions of simple (integer) fields or globals (OLD names):
//! # new = old * scale + offset, or a lookup table (old value = new value).
//! [convert]
//! "struct item.timeout" = { scale = 1000 }
//! g_level = { table = { "0" = 10, "1" = 20 } }
//!
//! # Unions copied as raw bytes: the rule says they never hold a pointer.
//! [opaque]
//! types = ["union value"]
//! ```
//!
//! A field is written `TYPE.FIELD` where `TYPE` is the type's name as C prints it
//! (`struct item`, `union u`, `enum e`, or a typedef name); a global is its bare name, a static
//! `FILE:NAME` or `FILE:FUNCTION:NAME`. Every error names the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A rules file that could not be used: which file, which line, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("{path}: cannot read rules file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or not of the expected shape, or a rule is inconsistent.
    #[error("{path}:{line}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
    Invalid {
        /// The file (`<string>` for text parsed directly).
        path: PathBuf,
        /// 1-based line of the offending key or value (0 when unknown).
        line: usize,
        /// The key (`convert."struct item.timeout"`), empty when the error is not about one.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A field named by its type and its own name (`struct item.count`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FieldRef {
    /// Type name as C prints it (`struct item`).
    pub ty: String,
    /// Field name.
    pub field: String,
}

impl FieldRef {
    /// Splits `TYPE.FIELD` at its last dot; `None` without a dot or with an empty side.
    pub fn parse(s: &str) -> Option<FieldRef> {
        let (ty, field) = s.rsplit_once('.')?;
        let (ty, field) = (ty.trim(), field.trim());
        if ty.is_empty() || field.is_empty() {
            return None;
        }
        Some(FieldRef {
            ty: ty.to_owned(),
            field: field.to_owned(),
        })
    }
}

impl std::fmt::Display for FieldRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.ty, self.field)
    }
}

/// What a rule applies to: a global (or static) or a field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Target {
    /// A global by name (statics as `FILE:NAME` or `FILE:FUNCTION:NAME`).
    Global(String),
    /// A struct or union field.
    Field(FieldRef),
}

impl Target {
    fn parse(s: &str) -> Target {
        match FieldRef::parse(s) {
            Some(f) => Target::Field(f),
            None => Target::Global(s.trim().to_owned()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Global(g) => f.write_str(g),
            Target::Field(x) => x.fmt(f),
        }
    }
}

/// A value written in the rules file for a new field or global.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// An integer (also for enums and bools).
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean, stored as 0 or 1.
    Bool(bool),
    /// An enumerator name.
    Name(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Name(n) => f.write_str(n),
        }
    }
}

/// A conversion of a simple value from the old version to the new one.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueConversion {
    /// `new = old * scale + offset`, rounded to the nearest integer for integer fields.
    Linear {
        /// Factor.
        scale: f64,
        /// Added after scaling.
        offset: f64,
    },
    /// A lookup table; an old value not in it refuses the transfer of that value.
    Table {
        /// `(old, new)` pairs, sorted by old value.
        pairs: Vec<(i64, i64)>,
    },
}

impl ValueConversion {
    /// The conversion from the new version back to the old one, or why there is none (a
    /// zero scale, a table that maps two old values to one new value).
    pub fn inverse(&self) -> Result<ValueConversion, String> {
        match self {
            ValueConversion::Linear { scale, offset } => {
                if *scale == 0.0 {
                    return Err("scale 0 cannot be undone".into());
                }
                Ok(ValueConversion::Linear {
                    scale: 1.0 / scale,
                    offset: -offset / scale,
                })
            }
            ValueConversion::Table { pairs } => {
                let mut inv: Vec<(i64, i64)> = pairs.iter().map(|&(a, b)| (b, a)).collect();
                inv.sort();
                if let Some(w) = inv.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(format!(
                        "the table maps two old values to {}, so it cannot be undone",
                        w[0].0
                    ));
                }
                Ok(ValueConversion::Table { pairs: inv })
            }
        }
    }

    /// Applies the conversion to an integer, `None` when the table has no entry for it.
    pub fn apply(&self, old: i64) -> Option<i64> {
        match self {
            ValueConversion::Linear { scale, offset } => {
                Some((old as f64 * scale + offset).round() as i64)
            }
            ValueConversion::Table { pairs } => pairs
                .binary_search_by_key(&old, |p| p.0)
                .ok()
                .map(|i| pairs[i].1),
        }
    }
}

impl std::fmt::Display for ValueConversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueConversion::Linear { scale, offset } => match (*scale == 1.0, *offset == 0.0) {
                (_, true) => write!(f, "new = old * {scale}"),
                (true, false) => write!(f, "new = old + {offset}"),
                (false, false) => write!(f, "new = old * {scale} + {offset}"),
            },
            ValueConversion::Table { pairs } => {
                f.write_str("table {")?;
                for (i, (a, b)) in pairs.iter().enumerate() {
                    write!(f, "{}{a} -> {b}", if i == 0 { " " } else { ", " })?;
                }
                f.write_str(" }")
            }
        }
    }
}

/// Everything a rules file says, checked and indexed. `Rules::default()` is "no rules".
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rules {
    /// Where the rules came from, for messages (`None` for no file).
    pub source: Option<PathBuf>,
    /// Old type name -> new type name.
    pub type_renames: BTreeMap<String, String>,
    /// Old global name -> new global name.
    pub global_renames: BTreeMap<String, String>,
    /// Old field (old type name) -> new field name.
    pub field_renames: BTreeMap<FieldRef, String>,
    /// Old enumerator (`enum e.NAME`) -> the new enumerator its value becomes.
    pub enumerator_renames: BTreeMap<FieldRef, String>,
    /// Old compilation unit file name -> new one.
    pub unit_renames: BTreeMap<String, String>,
    /// Removed function -> the new function a function pointer to it gets instead.
    pub function_renames: BTreeMap<String, String>,
    /// Old state intentionally not kept.
    pub drops: Vec<Target>,
    /// Values for new state (new names).
    pub defaults: BTreeMap<Target, Value>,
    /// Conversions of old simple values (old names).
    pub conversions: BTreeMap<Target, ValueConversion>,
    /// Unions (and other types) copied as raw bytes, never holding a pointer.
    pub opaque: Vec<String>,
    /// State the capture does not cover that the update may leave behind.
    pub leave: Leave,
}

/// The `[leave]` section: state beyond the capture (threads, thread-locals, other allocators,
/// unowned memory, stack frames) that the user says the new version may do without. Without
/// an entry, each is a refusal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leave {
    /// Threads, by name (`/proc/PID/task/TID/comm`), or `"*"`: the new version's own threads
    /// run on with their start-up state.
    #[serde(default)]
    pub threads: Vec<String>,
    /// Thread-local variables, by name, or `"*"`.
    #[serde(default)]
    pub thread_locals: Vec<String>,
    /// Anonymous mappings, as `"0xSTART-0xEND"`, or `"*"`.
    #[serde(default)]
    pub mappings: Vec<String>,
    /// Stack frames, by function, or `"*"` (pointers of the state into stacks too).
    #[serde(default)]
    pub frames: Vec<String>,
    /// A heap of an allocator other than glibc's malloc.
    #[serde(default)]
    pub allocator: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rename: RawRename,
    #[serde(default)]
    drop: RawDrop,
    #[serde(default)]
    default: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    convert: BTreeMap<Spanned<String>, Spanned<RawConvert>>,
    #[serde(default)]
    opaque: RawOpaque,
    #[serde(default)]
    leave: Leave,
}

type SpannedMap = BTreeMap<Spanned<String>, Spanned<String>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRename {
    #[serde(default)]
    types: SpannedMap,
    #[serde(default)]
    globals: SpannedMap,
    #[serde(default)]
    fields: SpannedMap,
    #[serde(default)]
    enumerators: SpannedMap,
    #[serde(default)]
    units: SpannedMap,
    #[serde(default)]
    functions: SpannedMap,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDrop {
    #[serde(default)]
    globals: Vec<Spanned<String>>,
    #[serde(default)]
    fields: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOpaque {
    #[serde(default)]
    types: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConvert {
    scale: Option<f64>,
    offset: Option<f64>,
    table: Option<BTreeMap<String, i64>>,
}

impl Rules {
    /// Reads and checks a rules file.
    pub fn load(path: impl AsRef<Path>) -> Result<Rules, RulesError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Io {
            path: path.to_owned(),
            source,
        })?;
        Rules::parse(&text, path)
    }

    /// Parses rules from `text`; `path` is only used in messages and [`Rules::source`].
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Rules, RulesError> {
        let path = path.as_ref();
        let err = |span: Option<std::ops::Range<usize>>, key: &str, message: String| {
            RulesError::Invalid {
                path: path.to_owned(),
                line: span.map(|s| line_of(text, s.start)).unwrap_or(0),
                key: key.to_owned(),
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_owned();
            err(e.span(), "", message)
        })?;
        let mut rules = Rules {
            source: Some(path.to_owned()),
            leave: raw.leave.clone(),
            ..Rules::default()
        };
        let nonempty = |section: &str, k: &Spanned<String>, v: &Spanned<String>| {
            let key = format!("{section}.\"{}\"", k.get_ref());
            if k.get_ref().trim().is_empty() || v.get_ref().trim().is_empty() {
                return Err(err(Some(k.span()), &key, "names must not be empty".into()));
            }
            Ok(())
        };
        for (k, v) in &raw.rename.types {
            nonempty("rename.types", k, v)?;
            rules
                .type_renames
                .insert(k.get_ref().trim().into(), v.get_ref().trim().into());
        }
        for (k, v) in &raw.rename.globals {
            nonempty("rename.globals", k, v)?;
            rules
                .global_renames
                .insert(k.get_ref().trim().into(), v.get_ref().trim().into());
        }
        for (k, v) in &raw.rename.units {
            nonempty("rename.units", k, v)?;
            rules
                .unit_renames
                .insert(k.get_ref().trim().into(), v.get_ref().trim().into());
        }
        for (k, v) in &raw.rename.functions {
            nonempty("rename.functions", k, v)?;
            rules
                .function_renames
                .insert(k.get_ref().trim().into(), v.get_ref().trim().into());
        }
        for (section, map, into) in [
            (
                "rename.fields",
                &raw.rename.fields,
                &mut rules.field_renames,
            ),
            (
                "rename.enumerators",
                &raw.rename.enumerators,
                &mut rules.enumerator_renames,
            ),
        ] {
            for (k, v) in map {
                nonempty(section, k, v)?;
                let key = format!("{section}.\"{}\"", k.get_ref());
                let Some(old) = FieldRef::parse(k.get_ref()) else {
                    return Err(err(
                        Some(k.span()),
                        &key,
                        "expected \"TYPE.NAME\" such as \"struct item.count\"".into(),
                    ));
                };
                // The new side is a bare name, or "TYPE.NAME" whose TYPE is the old type's new
                // name (a rename cannot move a field to another type).
                let new = match FieldRef::parse(v.get_ref()) {
                    None => v.get_ref().trim().to_owned(),
                    Some(newf) => {
                        let expect = type_renames_get(&rules.type_renames, &old.ty);
                        if newf.ty != expect {
                            return Err(err(
                                Some(v.span()),
                                &key,
                                format!(
                                    "the new side names type `{}` but `{}` becomes `{expect}`; \
                                     a rename cannot move a field to another type",
                                    newf.ty, old.ty
                                ),
                            ));
                        }
                        newf.field
                    }
                };
                into.insert(old, new);
            }
        }
        for (section, list, field) in [
            ("drop.globals", &raw.drop.globals, false),
            ("drop.fields", &raw.drop.fields, true),
        ] {
            for (i, s) in list.iter().enumerate() {
                let key = format!("{section}[{i}]");
                let target = Target::parse(s.get_ref());
                match (&target, field) {
                    (Target::Field(_), false) => {
                        return Err(err(
                            Some(s.span()),
                            &key,
                            format!("`{}` is a field; list it in drop.fields", s.get_ref()),
                        ))
                    }
                    (Target::Global(_), true) => {
                        return Err(err(
                            Some(s.span()),
                            &key,
                            format!(
                                "`{}` is not \"TYPE.FIELD\"; globals go in drop.globals",
                                s.get_ref()
                            ),
                        ))
                    }
                    _ => {}
                }
                rules.drops.push(target);
            }
        }
        for (k, v) in &raw.default {
            let key = format!("default.\"{}\"", k.get_ref());
            let value = match v.get_ref() {
                toml::Value::Integer(i) => Value::Int(*i),
                toml::Value::Float(f) => Value::Float(*f),
                toml::Value::Boolean(b) => Value::Bool(*b),
                toml::Value::String(s) => Value::Name(s.clone()),
                other => {
                    return Err(err(
                        Some(v.span()),
                        &key,
                        format!(
                            "a default is an integer, float, boolean or enumerator name, not a {}",
                            other.type_str()
                        ),
                    ))
                }
            };
            rules.defaults.insert(Target::parse(k.get_ref()), value);
        }
        for (k, v) in &raw.convert {
            let key = format!("convert.\"{}\"", k.get_ref());
            let c = v.get_ref();
            let conv = match (&c.table, c.scale, c.offset) {
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                    return Err(err(
                        Some(v.span()),
                        &key,
                        "give either scale/offset or table, not both".into(),
                    ))
                }
                (None, None, None) => {
                    return Err(err(
                        Some(v.span()),
                        &key,
                        "a conversion needs scale, offset or table".into(),
                    ))
                }
                (None, scale, offset) => ValueConversion::Linear {
                    scale: scale.unwrap_or(1.0),
                    offset: offset.unwrap_or(0.0),
                },
                (Some(table), None, None) => {
                    let mut pairs = Vec::new();
                    for (old, new) in table {
                        let Ok(old) = old.trim().parse::<i64>() else {
                            return Err(err(
                                Some(v.span()),
                                &key,
                                format!("table key `{old}` is not an integer"),
                            ));
                        };
                        pairs.push((old, *new));
                    }
                    pairs.sort();
                    ValueConversion::Table { pairs }
                }
            };
            if let ValueConversion::Linear { scale, .. } = conv {
                if !scale.is_finite() || scale == 0.0 {
                    return Err(err(
                        Some(v.span()),
                        &key,
                        "scale must be finite and not 0 (the reverse transfer divides by it)"
                            .into(),
                    ));
                }
            }
            if let Err(why) = conv.inverse() {
                return Err(err(Some(v.span()), &key, why));
            }
            rules.conversions.insert(Target::parse(k.get_ref()), conv);
        }
        for s in &raw.opaque.types {
            rules.opaque.push(s.get_ref().trim().to_owned());
        }
        // A name both dropped and renamed or converted is a contradiction worth catching.
        for d in &rules.drops {
            let also = match d {
                Target::Global(g) => rules.global_renames.contains_key(g),
                Target::Field(f) => rules.field_renames.contains_key(f),
            } || rules.conversions.contains_key(d);
            if also {
                let (section, list) = match d {
                    Target::Global(_) => ("drop.globals", &raw.drop.globals),
                    Target::Field(_) => ("drop.fields", &raw.drop.fields),
                };
                let span = list
                    .iter()
                    .find(|s| Target::parse(s.get_ref()) == *d)
                    .map(|s| s.span());
                return Err(err(
                    span,
                    section,
                    format!("`{d}` is dropped and also renamed or converted"),
                ));
            }
        }
        Ok(rules)
    }

    /// The rules for the reverse transfer (new -> old): renames and conversions turned around.
    /// Drops and defaults do not carry over: in the reverse direction what exists only in the
    /// newer version is dropped silently, and what exists only in the older one keeps the
    /// older version's initial value. Conversions were checked invertible when parsed.
    pub fn inverted(&self) -> Rules {
        let inv =
            |m: &BTreeMap<String, String>| m.iter().map(|(a, b)| (b.clone(), a.clone())).collect();
        let type_renames: BTreeMap<String, String> = inv(&self.type_renames);
        let field_inv = |m: &BTreeMap<FieldRef, String>| {
            m.iter()
                .map(|(old, new)| {
                    (
                        FieldRef {
                            ty: type_renames_get(&self.type_renames, &old.ty),
                            field: new.clone(),
                        },
                        old.field.clone(),
                    )
                })
                .collect()
        };
        let conversions = self
            .conversions
            .iter()
            .filter_map(|(t, c)| {
                let t = match t {
                    Target::Global(g) => {
                        Target::Global(self.global_renames.get(g).unwrap_or(g).clone())
                    }
                    Target::Field(f) => Target::Field(FieldRef {
                        ty: type_renames_get(&self.type_renames, &f.ty),
                        field: self.field_renames.get(f).unwrap_or(&f.field).clone(),
                    }),
                };
                Some((t, c.inverse().ok()?))
            })
            .collect();
        Rules {
            source: self.source.clone(),
            type_renames,
            global_renames: inv(&self.global_renames),
            field_renames: field_inv(&self.field_renames),
            // Enumerator and function renames settle what the older version has and the newer
            // one lacks; going back, everything the newer version has exists in the older one
            // by name (the round-trip check then reports the values a rule merged).
            enumerator_renames: BTreeMap::new(),
            function_renames: BTreeMap::new(),
            unit_renames: inv(&self.unit_renames),
            drops: Vec::new(),
            defaults: BTreeMap::new(),
            conversions,
            opaque: self
                .opaque
                .iter()
                .map(|t| type_renames_get(&self.type_renames, t))
                .collect(),
            leave: self.leave.clone(),
        }
    }

    /// Where the rules came from, for messages: the file name or `rules`.
    pub fn origin(&self) -> String {
        match &self.source {
            Some(p) => p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            None => "rules".into(),
        }
    }
}

fn type_renames_get(renames: &BTreeMap<String, String>, ty: &str) -> String {
    renames.get(ty).cloned().unwrap_or_else(|| ty.to_owned())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Rules, RulesError> {
        Rules::parse(text, "r.toml")
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_section() {
        let r = parse(
            r#"
[rename]
types = { "struct record" = "struct entry" }
globals = { g_old = "g_new" }
fields = { "struct record.a" = "struct entry.x", "struct item.cnt" = "count" }
enumerators = { "enum mode.MODE_TURBO" = "MODE_FAST" }
units = { "a_v1.c" = "a_v2.c" }
functions = { on_old = "on_new" }

[drop]
globals = ["g_removed"]
fields = ["struct item.legacy"]

[default]
"struct item.priority" = 5
g_ratio = 0.5
g_on = true
"struct item.color" = "RED"

[convert]
"struct item.timeout" = { scale = 1000 }
g_level = { table = { "0" = 10, "1" = 20 } }

[opaque]
types = ["union value"]
"#,
        )
        .unwrap();
        assert_eq!(r.type_renames["struct record"], "struct entry");
        assert_eq!(r.global_renames["g_old"], "g_new");
        assert_eq!(
            r.field_renames[&FieldRef::parse("struct record.a").unwrap()],
            "x"
        );
        assert_eq!(
            r.field_renames[&FieldRef::parse("struct item.cnt").unwrap()],
            "count"
        );
        assert_eq!(r.unit_renames["a_v1.c"], "a_v2.c");
        assert_eq!(r.function_renames["on_old"], "on_new");
        assert_eq!(
            r.drops,
            vec![
                Target::Global("g_removed".into()),
                Target::Field(FieldRef::parse("struct item.legacy").unwrap())
            ]
        );
        assert_eq!(
            r.defaults[&Target::parse("struct item.priority")],
            Value::Int(5)
        );
        assert_eq!(r.defaults[&Target::parse("g_on")], Value::Bool(true));
        assert_eq!(
            r.defaults[&Target::parse("struct item.color")],
            Value::Name("RED".into())
        );
        let c = &r.conversions[&Target::parse("g_level")];
        assert_eq!(c.apply(1), Some(20));
        assert_eq!(c.apply(2), None);
        let s = &r.conversions[&Target::parse("struct item.timeout")];
        assert_eq!(s.apply(3), Some(3000));
        assert_eq!(r.opaque, vec!["union value".to_string()]);
    }

    #[test]
    fn empty_file_is_no_rules() {
        let r = parse("").unwrap();
        assert!(r.drops.is_empty() && r.type_renames.is_empty());
    }

    #[test]
    fn inverted_rules_undo_renames_and_conversions() {
        let r = parse(
            r#"
[rename]
types = { "struct record" = "struct entry" }
fields = { "struct record.a" = "x" }
globals = { g_old = "g_new" }
[convert]
"struct record.a" = { scale = 2, offset = 1 }
g_old = { table = { "0" = 10, "1" = 20 } }
[drop]
globals = ["g_gone"]
"#,
        )
        .unwrap();
        let inv = r.inverted();
        assert_eq!(inv.type_renames["struct entry"], "struct record");
        assert_eq!(
            inv.field_renames[&FieldRef::parse("struct entry.x").unwrap()],
            "a"
        );
        assert_eq!(inv.global_renames["g_new"], "g_old");
        assert!(inv.enumerator_renames.is_empty() && inv.function_renames.is_empty());
        assert!(inv.drops.is_empty());
        let c = &inv.conversions[&Target::parse("struct entry.x")];
        assert_eq!(
            c.apply(
                r.conversions[&Target::parse("struct record.a")]
                    .apply(7)
                    .unwrap()
            ),
            Some(7)
        );
        let t = &inv.conversions[&Target::parse("g_new")];
        assert_eq!(t.apply(20), Some(1));
        assert_eq!(inv.inverted().type_renames, r.type_renames);
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let e = error("[drop]\nglobals = [\"a\"\n");
        assert!(e.starts_with("r.toml:2"), "{e}");
    }

    #[test]
    fn unknown_section_is_refused_with_its_line() {
        let e = error("\n\n[renames]\ntypes = {}\n");
        assert!(e.starts_with("r.toml:3"), "{e}");
        assert!(e.contains("renames"), "{e}");
    }

    #[test]
    fn field_without_type_names_key_and_line() {
        let e = error("[rename]\nfields = { count = \"n\" }\n");
        assert_eq!(
            e,
            "r.toml:2: rename.fields.\"count\": expected \"TYPE.NAME\" such as \"struct item.count\""
        );
    }

    #[test]
    fn field_rename_cannot_move_to_another_type() {
        let e = error("[rename]\nfields = { \"struct a.x\" = \"struct b.y\" }\n");
        assert!(
            e.starts_with(
                "r.toml:2: rename.fields.\"struct a.x\": the new side names type `struct b`"
            ),
            "{e}"
        );
    }

    #[test]
    fn drop_field_in_globals_list_is_refused() {
        let e = error("[drop]\nglobals = [\"g_ok\",\n  \"struct item.legacy\"]\n");
        assert_eq!(
            e,
            "r.toml:3: drop.globals[1]: `struct item.legacy` is a field; list it in drop.fields"
        );
    }

    #[test]
    fn conversion_errors() {
        let e = error("[convert]\n\"struct a.x\" = { scale = 2, table = { \"1\" = 2 } }\n");
        assert!(
            e.starts_with("r.toml:2: convert.\"struct a.x\": give either"),
            "{e}"
        );
        let e = error("[convert]\ng = { scale = 0 }\n");
        assert!(e.contains("scale must be finite and not 0"), "{e}");
        let e = error("[convert]\ng = { table = { \"1\" = 5, \"2\" = 5 } }\n");
        assert!(e.contains("cannot be undone"), "{e}");
        let e = error("[convert]\ng = { table = { \"x\" = 5 } }\n");
        assert!(e.contains("table key `x` is not an integer"), "{e}");
        let e = error("[convert]\ng = {}\n");
        assert!(e.contains("needs scale, offset or table"), "{e}");
    }

    #[test]
    fn bad_default_type() {
        let e = error("[default]\n\n\"struct a.x\" = [1, 2]\n");
        assert!(
            e.starts_with("r.toml:3: default.\"struct a.x\": a default is"),
            "{e}"
        );
    }

    #[test]
    fn dropped_and_renamed_is_a_contradiction() {
        let e = error("[rename]\nglobals = { g = \"h\" }\n[drop]\nglobals = [\"g\"]\n");
        assert!(
            e.starts_with("r.toml:4: drop.globals: `g` is dropped"),
            "{e}"
        );
    }

    #[test]
    fn io_error_names_the_file() {
        let e = Rules::load("/nonexistent/rules.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/rules.toml: cannot read rules file"),
            "{e}"
        );
    }
}
