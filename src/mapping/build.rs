//! Building a [`Mapping`]: globals by name, then the types they reach, recursively.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::initial::function_pointer_targets;
use super::rules::{FieldRef, Rules, Target, Value};
use super::{
    Conversion, Decision, Difference, Direction, FieldMap, GlobalMap, Mapping, TypeMap, VarRef,
};
use crate::debuginfo::{Binary, Composite, Encoding, Member, Type, TypeId, Variable, VariableKind};

const MAX_DEPTH: u32 = 64;

pub(crate) struct Builder<'a> {
    old: &'a Binary,
    new: &'a Binary,
    rules: &'a Rules,
    direction: Direction,
    types: Vec<TypeMap>,
    /// (old, new) composite -> index in `types`; filled before the fields are compared so
    /// recursive types terminate.
    composite_memo: HashMap<(TypeId, TypeId), Option<usize>>,
    /// (old, new) enum -> its conversion, so each enum is reported once.
    enum_memo: HashMap<(TypeId, TypeId), Conversion>,
    differences: Vec<Difference>,
    reported: BTreeSet<(String, String)>,
    /// Every rule applied, as `by_rule` names it; rules never applied are reported.
    used_rules: BTreeSet<String>,
}

fn file_name(s: &str) -> String {
    Path::new(s)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| s.to_owned())
}

impl<'a> Builder<'a> {
    pub(crate) fn new(
        old: &'a Binary,
        new: &'a Binary,
        rules: &'a Rules,
        direction: Direction,
    ) -> Builder<'a> {
        Builder {
            old,
            new,
            rules,
            direction,
            types: Vec::new(),
            composite_memo: HashMap::new(),
            enum_memo: HashMap::new(),
            differences: Vec::new(),
            reported: BTreeSet::new(),
            used_rules: BTreeSet::new(),
        }
    }

    fn diff(&mut self, path: impl Into<String>, what: impl Into<String>, decision: Decision) {
        let (path, what) = (path.into(), what.into());
        if self.reported.insert((path.clone(), what.clone())) {
            self.differences.push(Difference {
                path,
                what,
                decision,
            });
        }
    }

    fn auto(how: impl Into<String>) -> Decision {
        Decision::Automatic { how: how.into() }
    }

    fn refused(reason: impl Into<String>) -> Decision {
        Decision::Refused {
            reason: reason.into(),
        }
    }

    fn by_rule(&mut self, rule: String, how: impl Into<String>) -> Decision {
        self.used_rules.insert(rule.clone());
        Decision::ByRule {
            rule: format!("{} in {}", rule, self.rules.origin()),
            how: how.into(),
        }
    }

    /// The decision for state the other version does not have (a global or a field): dropped
    /// by a rule, dropped silently going back (it exists only in the newer version), or
    /// refused with the rule that would settle it. `section` is `globals` or `fields`.
    fn removed(&mut self, target: &Target, path: &str, section: &str) -> (Conversion, Decision) {
        if self.rules.drops.contains(target) {
            (
                Conversion::Drop,
                self.by_rule(
                    format!("drop.{section} \"{path}\""),
                    "its value is intentionally not transferred",
                ),
            )
        } else if self.direction == Direction::Reverse {
            (
                Conversion::Drop,
                Self::auto("exists only in the newer version: dropped going back"),
            )
        } else {
            (
                Conversion::Refused,
                Self::refused(format!(
                    "its value would be lost (to drop it, add \"{path}\" to [drop] {section}; \
                     if it was renamed, add it to [rename] {section})"
                )),
            )
        }
    }

    /// How the target's side is called in messages.
    fn target_version(&self) -> &'static str {
        match self.direction {
            Direction::Forward => "the new version",
            Direction::Reverse => "the old version",
        }
    }

    pub(crate) fn run(mut self) -> Mapping {
        let globals = self.globals();
        self.functions();
        if self.direction == Direction::Forward {
            self.unused_rules();
        }
        let mut differences = std::mem::take(&mut self.differences);
        differences.sort_by(|a, b| a.path.cmp(&b.path));
        Mapping {
            direction: self.direction,
            old_binary: self.old.path().display().to_string(),
            new_binary: self.new.path().display().to_string(),
            rules: self.rules.source.as_ref().map(|p| p.display().to_string()),
            globals,
            types: self.types,
            differences,
        }
    }

    // ---------------------------------------------------------------- compilation units

    /// Old unit file name -> new unit file name, for units that hold statics.
    fn unit_map(&mut self) -> BTreeMap<String, String> {
        let units = |b: &Binary| -> BTreeSet<String> {
            b.variables()
                .iter()
                .filter_map(|v| match &v.kind {
                    VariableKind::Global => None,
                    VariableKind::FileStatic { cu } | VariableKind::FunctionStatic { cu, .. } => {
                        Some(file_name(cu))
                    }
                })
                .collect()
        };
        let (old_units, new_units) = (units(self.old), units(self.new));
        let mut map = BTreeMap::new();
        for u in &old_units {
            if new_units.contains(u) {
                map.insert(u.clone(), u.clone());
            } else if let Some(to) = self.rules.unit_renames.get(u) {
                let d = self.by_rule(
                    format!("rename.units \"{u}\""),
                    format!("its statics match those of {to}"),
                );
                self.diff(format!("unit {u}"), format!("renamed {to}"), d);
                map.insert(u.clone(), to.clone());
            }
        }
        let lone_old: Vec<_> = old_units.iter().filter(|u| !map.contains_key(*u)).collect();
        let taken: BTreeSet<&String> = map.values().collect();
        let lone_new: Vec<_> = new_units.iter().filter(|u| !taken.contains(u)).collect();
        if let ([o], [n]) = (lone_old.as_slice(), lone_new.as_slice()) {
            let (o, n) = ((*o).clone(), (*n).clone());
            self.diff(
                format!("unit {o}"),
                format!("renamed {n}"),
                Self::auto(
                    "the only unit with statics that changed name: its statics match by name",
                ),
            );
            map.insert(o, n);
        }
        map
    }

    fn key(v: &Variable, units: Option<&BTreeMap<String, String>>) -> String {
        let unit = |cu: &str| {
            let f = file_name(cu);
            units.and_then(|m| m.get(&f).cloned()).unwrap_or(f)
        };
        match &v.kind {
            VariableKind::Global => v.name.clone(),
            VariableKind::FileStatic { cu } => format!("{}:{}", unit(cu), v.name),
            VariableKind::FunctionStatic { cu, function } => {
                format!("{}:{}:{}", unit(cu), function, v.name)
            }
        }
    }

    fn var_ref(b: &Binary, v: &Variable) -> VarRef {
        VarRef {
            name: v.name.clone(),
            kind: v.kind.clone(),
            ty: v.ty,
            type_name: b.type_name(v.ty),
            address: v.address,
            size: v.size,
        }
    }

    // ---------------------------------------------------------------- globals

    fn globals(&mut self) -> Vec<GlobalMap> {
        let units = self.unit_map();
        let mut new_by_key: BTreeMap<String, &Variable> = BTreeMap::new();
        // Read-only globals are not state: never mapped, never written, never compared.
        for v in self.new.variables() {
            if !self.new.is_read_only(v.address) {
                new_by_key.entry(Self::key(v, None)).or_insert(v);
            }
        }
        let mut old_by_key: BTreeMap<String, &Variable> = BTreeMap::new();
        for v in self.old.variables() {
            if !self.old.is_read_only(v.address) {
                old_by_key.entry(Self::key(v, None)).or_insert(v);
            }
        }
        let mut out = Vec::new();
        let mut used_new = BTreeSet::new();
        for (path, ov) in &old_by_key {
            let translated = Self::key(ov, Some(&units));
            let renamed = self.rules.global_renames.get(path.as_str());
            let new_key = renamed.cloned().unwrap_or(translated);
            let target = Target::Global(path.clone());
            if let Some(nv) = new_by_key.get(&new_key) {
                used_new.insert(new_key.clone());
                if let Some(to) = renamed {
                    let d = self.by_rule(
                        format!("rename.globals \"{path}\""),
                        format!("transferred into {to}"),
                    );
                    self.diff(path.clone(), format!("renamed {to}"), d);
                }
                let conversion = self.compare(ov.ty, nv.ty, path, Some(&target), 0);
                out.push(GlobalMap {
                    path: path.clone(),
                    old: Some(Self::var_ref(self.old, ov)),
                    new: Some(Self::var_ref(self.new, nv)),
                    conversion,
                });
                continue;
            }
            let (conversion, decision) = self.removed(&target, path, "globals");
            self.diff(path.clone(), "global removed", decision);
            out.push(GlobalMap {
                path: path.clone(),
                old: Some(Self::var_ref(self.old, ov)),
                new: None,
                conversion,
            });
        }
        for (path, nv) in &new_by_key {
            if used_new.contains(path) {
                continue;
            }
            let (conversion, decision) =
                match self.rules.defaults.get(&Target::Global(path.clone())) {
                    Some(value) => self.default_value(nv.ty, value, format!("default \"{path}\"")),
                    None => (
                        Conversion::KeepInitial,
                        Self::auto(format!("keeps {}'s initial value", self.target_version())),
                    ),
                };
            self.diff(path.clone(), "global added", decision);
            out.push(GlobalMap {
                path: path.clone(),
                old: None,
                new: Some(Self::var_ref(self.new, nv)),
                conversion,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// A rule that nothing applied to is most likely a typo: refuse rather than let the
    /// state it was meant for go through unconverted (or be refused for another reason).
    fn unused_rules(&mut self) {
        let r = self.rules;
        let mut all: Vec<String> = Vec::new();
        all.extend(
            r.type_renames
                .keys()
                .map(|k| format!("rename.types \"{k}\"")),
        );
        all.extend(
            r.global_renames
                .keys()
                .map(|k| format!("rename.globals \"{k}\"")),
        );
        all.extend(
            r.field_renames
                .keys()
                .map(|k| format!("rename.fields \"{k}\"")),
        );
        all.extend(
            r.enumerator_renames
                .keys()
                .map(|k| format!("rename.enumerators \"{k}\"")),
        );
        all.extend(
            r.unit_renames
                .keys()
                .map(|k| format!("rename.units \"{k}\"")),
        );
        all.extend(
            r.function_renames
                .keys()
                .map(|k| format!("rename.functions \"{k}\"")),
        );
        all.extend(r.drops.iter().map(|t| match t {
            Target::Global(g) => format!("drop.globals \"{g}\""),
            Target::Field(f) => format!("drop.fields \"{f}\""),
        }));
        all.extend(r.defaults.keys().map(|k| format!("default \"{k}\"")));
        all.extend(r.conversions.keys().map(|k| format!("convert \"{k}\"")));
        all.extend(r.opaque.iter().map(|k| format!("opaque \"{k}\"")));
        for rule in all {
            let used = self
                .used_rules
                .iter()
                .any(|u| u == &format!("{rule} in {}", r.origin()) || u == &rule);
            if !used {
                let reason = format!(
                    "{rule} in {} applies to nothing the globals of the two versions reach (a \
                     misspelt name, or a difference that does not exist)",
                    r.origin()
                );
                self.diff(
                    "rules",
                    format!("unused rule {rule}"),
                    Self::refused(reason),
                );
            }
        }
    }

    // ---------------------------------------------------------------- functions

    /// Functions of the old version missing from the new one: a function pointer that holds
    /// one cannot be relocated.
    fn functions(&mut self) {
        let new_names: BTreeSet<&str> = self
            .new
            .functions()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        let mut removed: BTreeSet<&str> = BTreeSet::new();
        for f in self.old.functions() {
            if !new_names.contains(f.name.as_str()) {
                removed.insert(f.name.as_str());
            }
        }
        if removed.is_empty() {
            return;
        }
        let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, func) in function_pointer_targets(self.old) {
            if removed.contains(func.as_str()) {
                holders.entry(func).or_default().push(path);
            }
        }
        for name in removed {
            let path = format!("function {name}");
            if let Some(to) = self.rules.function_renames.get(name) {
                let decision = if new_names.contains(to.as_str()) {
                    self.by_rule(
                        format!("rename.functions \"{name}\""),
                        format!("a function pointer to it points to {to} instead"),
                    )
                } else {
                    Self::refused(format!(
                        "the rule rename.functions \"{name}\" names {to}, which the new version \
                         does not have"
                    ))
                };
                self.diff(path, "function removed", decision);
                continue;
            }
            let decision = match holders.get(name) {
                Some(h) => Self::refused(format!(
                    "{} {} to it in the old version's initial data, and a function pointer is \
                     relocated by function name (add [rename] functions {{ {name} = \"...\" }})",
                    h.join(", "),
                    if h.len() == 1 { "points" } else { "point" },
                )),
                None => Decision::CheckedPerValue {
                    check: "a function pointer that holds it at transfer time refuses the transfer"
                        .into(),
                },
            };
            self.diff(path, "function removed", decision);
        }
    }

    // ---------------------------------------------------------------- types

    fn strip(b: &Binary, id: TypeId) -> TypeId {
        b.types().definition_of(b.types().strip_typedefs_cv(id))
    }

    /// Compares a value of old type `o` with new type `n` at `path` (a global, or a field
    /// `struct t.f`); `rule` is the key rules for this place use.
    fn compare(
        &mut self,
        o: TypeId,
        n: TypeId,
        path: &str,
        rule: Option<&Target>,
        depth: u32,
    ) -> Conversion {
        if depth > MAX_DEPTH {
            self.diff(
                path,
                "type nested too deeply",
                Self::refused("more than 64 levels"),
            );
            return Conversion::Refused;
        }
        if let Some(key) = rule {
            if let Some(c) = self.rules.conversions.get(key) {
                let rule = format!("convert \"{key}\"");
                let scalar = |b: &Binary, t| {
                    matches!(
                        scalar(b, t),
                        Some(Scalar::Int { .. } | Scalar::Enum(_) | Scalar::Float)
                    )
                };
                let d = if scalar(self.old, o) && scalar(self.new, n) {
                    self.by_rule(rule, c.to_string())
                } else {
                    self.used_rules.insert(rule.clone());
                    Self::refused(format!(
                        "the rule {rule} in {} converts numbers, but this is {} -> {}",
                        self.rules.origin(),
                        self.old.type_name(o),
                        self.new.type_name(n)
                    ))
                };
                let refused = d.is_refused();
                self.diff(path, "value converted", d);
                return if refused {
                    Conversion::Refused
                } else {
                    Conversion::Value(c.clone())
                };
            }
        }
        let (os, ns) = (Self::strip(self.old, o), Self::strip(self.new, n));
        let (mut oname, mut nname) = (self.old.type_name(o), self.new.type_name(n));
        if oname == nname {
            // A typedef whose target changed (`count_t`): show what it names.
            (oname, nname) = (self.old.type_name(os), self.new.type_name(ns));
        }
        let (ot, nt) = (self.old.ty(os).clone(), self.new.ty(ns).clone());
        match (&ot, &nt) {
            (
                Type::Base {
                    encoding: oe,
                    size: osz,
                    ..
                },
                Type::Base {
                    encoding: ne,
                    size: nsz,
                    ..
                },
            ) => self.base(*oe, *osz * 8, *ne, *nsz * 8, &oname, &nname, path),
            (Type::Enum(_), Type::Enum(_)) => self.enumeration(os, ns, path),
            (
                Type::Pointer {
                    target: ot_, size, ..
                },
                Type::Pointer { target: nt_, .. },
            ) => self.pointer(*ot_, *nt_, *size, &oname, &nname, path, depth),
            (Type::Struct(_), Type::Struct(_)) | (Type::Union(_), Type::Union(_)) => {
                match self.composite(o, n, path, depth) {
                    Some(i) => Conversion::Struct { type_map: i },
                    None => Conversion::Refused,
                }
            }
            (
                Type::Array {
                    element: oe,
                    dims: od,
                },
                Type::Array {
                    element: ne,
                    dims: nd,
                },
            ) => self.array(*oe, od, *ne, nd, &oname, &nname, path, rule, depth),
            (Type::Unknown { what }, _) | (_, Type::Unknown { what }) => {
                self.diff(
                    path,
                    format!("type {oname} -> {nname}"),
                    Self::refused(format!("transplant does not model this type ({what})")),
                );
                Conversion::Refused
            }
            // Type ids belong to their own binary: compare kind, name and size.
            _ if std::mem::discriminant(&ot) == std::mem::discriminant(&nt)
                && oname == nname
                && self.old.byte_size(os) == self.new.byte_size(ns) =>
            {
                Conversion::Copy {
                    size: self.old.byte_size(os).unwrap_or(0),
                }
            }
            _ => {
                self.diff(
                    path,
                    format!("type changed: {oname} -> {nname}"),
                    Self::refused(format!(
                        "no automatic conversion from {oname} to {nname} (a [convert] rule converts \
                         integers; a renamed type needs [rename] types)"
                    )),
                );
                Conversion::Refused
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn base(
        &mut self,
        oe: Encoding,
        obits: u64,
        ne: Encoding,
        nbits: u64,
        oname: &str,
        nname: &str,
        path: &str,
    ) -> Conversion {
        let is_int = |e: Encoding| {
            matches!(
                e,
                Encoding::Signed
                    | Encoding::Unsigned
                    | Encoding::SignedChar
                    | Encoding::UnsignedChar
                    | Encoding::Bool
                    | Encoding::Utf
            )
        };
        if oe == ne && obits == nbits {
            return Conversion::Copy { size: obits / 8 };
        }
        let what = format!("{oname} -> {nname}");
        if is_int(oe) && is_int(ne) {
            let (os, ns) = (oe.is_signed(), ne.is_signed());
            // Every old value fits when the new type is at least as wide with the same
            // signedness, or strictly wider and signed.
            let fits = (os == ns && nbits >= obits) || (!os && ns && nbits > obits);
            let decision = if fits {
                Self::auto("widened: every value fits")
            } else if nbits < obits {
                Decision::CheckedPerValue {
                    check: format!(
                        "narrowed: each value must fit in {nname}, else the transfer refuses"
                    ),
                }
            } else {
                Decision::CheckedPerValue {
                    check: format!(
                        "signedness changed: each value must fit in {nname}, else the transfer refuses"
                    ),
                }
            };
            self.diff(path, what, decision);
            return Conversion::Integer {
                old_bits: obits,
                old_signed: os,
                new_bits: nbits,
                new_signed: ns,
                checked: !fits,
            };
        }
        if oe == Encoding::Float && ne == Encoding::Float {
            let checked = nbits < obits;
            let decision = if checked {
                Decision::CheckedPerValue {
                    check: format!("narrowed: each value must convert exactly to {nname}"),
                }
            } else {
                Self::auto("widened: every value converts exactly")
            };
            self.diff(path, what, decision);
            return Conversion::Float {
                old_size: obits / 8,
                new_size: nbits / 8,
                checked,
            };
        }
        self.diff(
            path,
            format!("type changed: {what}"),
            Self::refused(format!(
                "no automatic conversion from {oname} to {nname} (add a [convert] rule)"
            )),
        );
        Conversion::Refused
    }

    fn enumeration(&mut self, os: TypeId, ns: TypeId, path: &str) -> Conversion {
        if let Some(c) = self.enum_memo.get(&(os, ns)) {
            return c.clone();
        }
        let (Type::Enum(oe), Type::Enum(ne)) = (self.old.ty(os).clone(), self.new.ty(ns).clone())
        else {
            unreachable!("enumeration() is called with two enums")
        };
        let oname = self.old.type_name(os);
        let nname = self.new.type_name(ns);
        let expected = self.renamed_type(&oname);
        if expected != nname {
            self.diff(
                path,
                format!("type changed: {oname} -> {nname}"),
                Self::refused(format!(
                    "{oname} and {nname} are different enums (a renamed type needs [rename] types)"
                )),
            );
            self.enum_memo.insert((os, ns), Conversion::Refused);
            return Conversion::Refused;
        }
        if oname != nname {
            let d = self.by_rule(
                format!("rename.types \"{oname}\""),
                "its values convert by enumerator name",
            );
            self.diff(oname.clone(), format!("type renamed {nname}"), d);
        }
        let mut values = Vec::new();
        let mut renumbered = Vec::new();
        for (name, value) in &oe.enumerators {
            let key = FieldRef {
                ty: oname.clone(),
                field: name.clone(),
            };
            let epath = format!("{oname}.{name}");
            let rule = self.rules.enumerator_renames.get(&key);
            let target = rule.unwrap_or(name);
            let found = ne
                .enumerators
                .iter()
                .find(|(n, _)| n == target)
                .map(|(_, v)| *v);
            match (found, rule) {
                (Some(nv), Some(to)) => {
                    let d = self.by_rule(
                        format!("rename.enumerators \"{epath}\""),
                        format!("its value {value} becomes {to} ({nv})"),
                    );
                    self.diff(epath, format!("enumerator renamed {to}"), d);
                    values.push((*value, Some(nv)));
                }
                (Some(nv), None) => {
                    if nv != *value {
                        renumbered.push(format!("{name} {value} -> {nv}"));
                    }
                    values.push((*value, Some(nv)));
                }
                (None, _) => {
                    let decision = match self.direction {
                        Direction::Reverse => Decision::CheckedPerValue {
                            check: format!(
                                "exists only in the newer version: a value {name} ({value}) \
                                 cannot go back and refuses the transfer"
                            ),
                        },
                        Direction::Forward => Self::refused(format!(
                            "{nname} has no enumerator {target}, so a value {name} ({value}) has no \
                             new value (add [rename] enumerators {{ \"{epath}\" = \"...\" }})"
                        )),
                    };
                    self.diff(epath, "enumerator removed", decision);
                    values.push((*value, None));
                }
            }
        }
        if !renumbered.is_empty() {
            self.diff(
                oname.clone(),
                "enum renumbered",
                Self::auto(format!(
                    "values converted by enumerator name: {}",
                    renumbered.join(", ")
                )),
            );
        }
        let c = Conversion::Enum {
            old_size: oe.size.unwrap_or(4),
            new_size: ne.size.unwrap_or(4),
            values,
        };
        self.enum_memo.insert((os, ns), c.clone());
        c
    }

    fn renamed_type(&self, old_name: &str) -> String {
        self.rules
            .type_renames
            .get(old_name)
            .cloned()
            .unwrap_or_else(|| old_name.to_owned())
    }

    #[allow(clippy::too_many_arguments)]
    fn pointer(
        &mut self,
        ot: Option<TypeId>,
        nt: Option<TypeId>,
        size: u64,
        oname: &str,
        nname: &str,
        path: &str,
        depth: u32,
    ) -> Conversion {
        let (Some(ot), Some(nt)) = (ot, nt) else {
            if ot.is_none() && nt.is_none() {
                return Conversion::Copy { size };
            }
            self.diff(
                path,
                format!("pointer retyped: {oname} -> {nname}"),
                Self::auto(
                    "a void pointer is relocated by what it points to (heap object, symbol, \
                     string literal); the object itself is not converted",
                ),
            );
            return Conversion::Pointer { type_map: None };
        };
        let (os, ns) = (Self::strip(self.old, ot), Self::strip(self.new, nt));
        match (self.old.ty(os).clone(), self.new.ty(ns).clone()) {
            (Type::Function { .. }, Type::Function { .. }) => Conversion::Copy { size },
            (Type::Struct(oc), Type::Struct(nc)) | (Type::Union(oc), Type::Union(nc))
                if (oc.declaration || nc.declaration)
                    && self.renamed_type(&self.old.type_name(os)) == self.new.type_name(ns) =>
            {
                // An opaque type (`struct _IO_marker *`): what it points to is library data,
                // relocated by symbol, or a heap object copied as it is; never converted.
                Conversion::Copy { size }
            }
            (Type::Struct(_), Type::Struct(_)) | (Type::Union(_), Type::Union(_)) => {
                let target_path = type_label(self.old, ot);
                let Some(i) = self.composite(ot, nt, &target_path, depth + 1) else {
                    self.diff(
                        path,
                        format!("pointer retyped: {oname} -> {nname}"),
                        Self::refused(format!(
                            "its target type {} is not mapped to {}",
                            target_path,
                            type_label(self.new, nt)
                        )),
                    );
                    return Conversion::Refused;
                };
                if self.types[i].old_name != self.types[i].new_name {
                    self.diff(
                        path,
                        format!("pointer retyped: {oname} -> {nname}"),
                        Self::auto(format!(
                            "its target type is mapped ({} -> {}): the pointer is relocated, the \
                             object converted",
                            self.types[i].old_name, self.types[i].new_name
                        )),
                    );
                }
                Conversion::Pointer { type_map: Some(i) }
            }
            _ => {
                // Pointers to scalars: relocated as they are; the pointee must not change.
                let inner = self.compare(ot, nt, &format!("*{path}"), None, depth + 1);
                match inner {
                    // A pointer to pointers (`struct entry **`): the pointers it points to are
                    // relocated where they are, so their own target may be retyped.
                    Conversion::Copy { .. } | Conversion::Pointer { .. } => {
                        Conversion::Copy { size }
                    }
                    Conversion::Refused => Conversion::Refused,
                    _ => {
                        self.diff(
                            path,
                            format!("pointer retyped: {oname} -> {nname}"),
                            Self::refused(
                                "the object it points to changes representation, but only \
                                 structs reached through pointers are converted",
                            ),
                        );
                        Conversion::Refused
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn array(
        &mut self,
        oe: TypeId,
        od: &[Option<u64>],
        ne: TypeId,
        nd: &[Option<u64>],
        oname: &str,
        nname: &str,
        path: &str,
        rule: Option<&Target>,
        depth: u32,
    ) -> Conversion {
        let what = format!("{oname} -> {nname}");
        let flexible = od.iter().chain(nd).any(Option::is_none);
        if od.is_empty() || od.len() != nd.len() || od[1..] != nd[1..] || (flexible && od != nd) {
            self.diff(
                path,
                format!("array changed: {what}"),
                Self::refused(
                    "only the outermost dimension of a fixed-size array can change \
                     (flexible array members are not resized automatically)",
                ),
            );
            return Conversion::Refused;
        }
        let (ol, nl) = (od[0].unwrap_or(0), nd[0].unwrap_or(0));
        let inner: u64 = od[1..].iter().map(|d| d.unwrap_or(0)).product();
        let element = self.compare(oe, ne, &format!("{path}[]"), None, depth + 1);
        if element == Conversion::Refused {
            return Conversion::Refused;
        }
        let old_stride = self.old.byte_size(oe).unwrap_or(0) * inner;
        let new_stride = self.new.byte_size(ne).unwrap_or(0) * inner;
        if nl > ol {
            self.diff(
                path,
                format!("array grown: {ol} -> {nl} elements"),
                Self::auto(format!(
                    "elements {ol}..{nl} keep {}'s initial value",
                    self.target_version()
                )),
            );
        } else if nl < ol {
            let dropped = rule.filter(|r| self.rules.drops.contains(r)).cloned();
            let decision = if let Some(r) = dropped {
                let section = match r {
                    Target::Global(_) => "drop.globals",
                    Target::Field(_) => "drop.fields",
                };
                self.by_rule(
                    format!("{section} \"{r}\""),
                    format!("elements {nl}..{ol} are intentionally not transferred"),
                )
            } else if self.direction == Direction::Reverse {
                Self::auto(format!(
                    "elements {nl}..{ol} exist only in the newer version: dropped going back"
                ))
            } else {
                Self::refused(format!(
                    "elements {nl}..{ol} would be lost (a drop rule for `{path}` drops them)"
                ))
            };
            self.diff(
                path,
                format!("array shrunk: {ol} -> {nl} elements"),
                decision,
            );
        }
        if nl == ol && matches!(element, Conversion::Copy { .. }) {
            return Conversion::Copy {
                size: ol * old_stride,
            };
        }
        Conversion::Array {
            old_len: ol,
            new_len: nl,
            old_stride,
            new_stride,
            element: Box::new(element),
        }
    }

    /// Maps struct (or union) `o` to `n` (either possibly behind typedefs); `None` when they
    /// cannot correspond.
    fn composite(&mut self, o: TypeId, n: TypeId, path: &str, depth: u32) -> Option<usize> {
        let (os, ns) = (Self::strip(self.old, o), Self::strip(self.new, n));
        if let Some(m) = self.composite_memo.get(&(os, ns)) {
            return *m;
        }
        let oname = type_label(self.old, o);
        let nname = type_label(self.new, n);
        let expected = self.renamed_type(&oname);
        if expected != nname {
            self.diff(
                oname.clone(),
                if path == oname {
                    format!("type changed: {oname} -> {nname}")
                } else {
                    format!("type changed: {oname} -> {nname} (at {path})")
                },
                Self::refused(format!(
                    "{oname} and {nname} have different names (if it was renamed, add [rename] \
                     types {{ \"{oname}\" = \"{nname}\" }})"
                )),
            );
            self.composite_memo.insert((os, ns), None);
            return None;
        }
        if oname != nname {
            let d = self.by_rule(
                format!("rename.types \"{oname}\""),
                "its values convert field by field",
            );
            self.diff(oname.clone(), format!("type renamed {nname}"), d);
        }
        let (Type::Struct(oc) | Type::Union(oc)) = self.old.ty(os).clone() else {
            unreachable!("composite() is called with structs or unions")
        };
        let (Type::Struct(nc) | Type::Union(nc)) = self.new.ty(ns).clone() else {
            unreachable!("composite() is called with structs or unions")
        };
        let is_union = matches!(self.old.ty(os), Type::Union(_));
        if is_union {
            let opaque = self.rules.opaque.contains(&oname);
            if opaque {
                let d = self.by_rule(
                    format!("opaque \"{oname}\""),
                    "copied as raw bytes, never relocated",
                );
                self.diff(oname.clone(), "union", d);
            } else if self.may_hold_pointer(self.old, os, 0) {
                self.diff(
                    oname.clone(),
                    "union that may hold a pointer",
                    Self::refused(format!(
                        "which member is live is unknown, so a pointer in it cannot be relocated \
                         (if it never holds one, add \"{oname}\" to [opaque] types)"
                    )),
                );
                self.composite_memo.insert((os, ns), None);
                return None;
            }
            if !opaque && !self.same_union_layout(&oc, &nc) {
                self.diff(
                    oname.clone(),
                    "union changed",
                    Self::refused("a union's live member is unknown, so it cannot be converted"),
                );
                self.composite_memo.insert((os, ns), None);
                return None;
            }
        }
        let index = self.types.len();
        self.types.push(TypeMap {
            old: os,
            new: ns,
            old_name: oname.clone(),
            new_name: nname.clone(),
            old_size: oc.size,
            new_size: nc.size,
            fields: Vec::new(),
        });
        self.composite_memo.insert((os, ns), Some(index));
        if is_union {
            // Copied whole: same layout (checked above) or opaque.
            self.types[index].fields.push(FieldMap {
                old_path: Some(oname.clone()),
                new_path: Some(nname.clone()),
                old_offset: Some(0),
                new_offset: Some(0),
                conversion: Conversion::Copy {
                    size: oc.size.unwrap_or(0).min(nc.size.unwrap_or(0)),
                },
            });
            return Some(index);
        }
        if oc.declaration || nc.declaration {
            self.diff(
                oname.clone(),
                "incomplete type",
                Self::refused("only declared (no definition with debug information)"),
            );
        }
        let (onames, nnames) = (member_names(&oc.members), member_names(&nc.members));
        let mut fields = Vec::new();
        let mut matched_new = BTreeSet::new();
        let mut order = Vec::new();
        for (i, om) in oc.members.iter().enumerate() {
            let oname_f = onames[i].clone();
            let key = FieldRef {
                ty: oname.clone(),
                field: oname_f.clone(),
            };
            let renamed = self.rules.field_renames.get(&key).cloned();
            let nfield = renamed.clone().unwrap_or_else(|| oname_f.clone());
            let old_path = format!("{oname}.{oname_f}");
            let found = nc
                .members
                .iter()
                .enumerate()
                .find(|(j, _)| nnames[*j] == nfield);
            let target = Target::Field(key.clone());
            match found {
                Some((j, nm)) => {
                    matched_new.insert(j);
                    order.push(j);
                    if let Some(to) = &renamed {
                        let d = self.by_rule(
                            format!("rename.fields \"{old_path}\""),
                            format!("transferred into {nname}.{to}"),
                        );
                        self.diff(old_path.clone(), format!("field renamed {to}"), d);
                    }
                    let conversion = if om.bit_field.is_some() || nm.bit_field.is_some() {
                        self.bit_field(om, nm, &old_path, &target)
                    } else {
                        self.compare(om.ty, nm.ty, &old_path, Some(&target), depth + 1)
                    };
                    fields.push(FieldMap {
                        old_path: Some(old_path),
                        new_path: Some(format!("{nname}.{nfield}")),
                        old_offset: Some(om.offset),
                        new_offset: Some(nm.offset),
                        conversion,
                    });
                }
                None => {
                    let (conversion, decision) = self.removed(&target, &old_path, "fields");
                    self.diff(old_path.clone(), "field removed", decision);
                    fields.push(FieldMap {
                        old_path: Some(old_path),
                        new_path: None,
                        old_offset: Some(om.offset),
                        new_offset: None,
                        conversion,
                    });
                }
            }
        }
        for (j, nm) in nc.members.iter().enumerate() {
            if matched_new.contains(&j) {
                continue;
            }
            let nfield = nnames[j].clone();
            let new_path = format!("{nname}.{nfield}");
            let target = Target::Field(FieldRef {
                ty: nname.clone(),
                field: nfield.clone(),
            });
            let (conversion, decision) = match self.rules.defaults.get(&target) {
                Some(value) => self.default_value(nm.ty, value, format!("default \"{new_path}\"")),
                None => (
                    Conversion::KeepInitial,
                    Self::auto(format!(
                        "keeps {}'s initial value (of its global; zero in a heap object)",
                        self.target_version()
                    )),
                ),
            };
            self.diff(new_path.clone(), "field added", decision);
            fields.push(FieldMap {
                old_path: None,
                new_path: Some(new_path),
                old_offset: None,
                new_offset: Some(nm.offset),
                conversion,
            });
        }
        if order.windows(2).any(|w| w[0] > w[1]) {
            self.diff(
                oname.clone(),
                "fields reordered",
                Self::auto("each field is written at its new offset"),
            );
        }
        self.types[index].fields = fields;
        Some(index)
    }

    fn bit_field(&mut self, om: &Member, nm: &Member, path: &str, target: &Target) -> Conversion {
        if let Some(c) = self.rules.conversions.get(target) {
            let d = self.by_rule(format!("convert \"{target}\""), c.to_string());
            self.diff(path, "value converted", d);
            return Conversion::Value(c.clone());
        }
        let bits = |b: &Binary, m: &Member| {
            let id = Self::strip(b, m.ty);
            let signed = match b.ty(id) {
                Type::Base { encoding, .. } => encoding.is_signed(),
                Type::Enum(e) => e.signed,
                _ => false,
            };
            let width = m
                .bit_field
                .map(|f| f.bit_size)
                .unwrap_or_else(|| b.byte_size(id).unwrap_or(0) * 8);
            (width, signed)
        };
        let ((ob, os), (nb, ns)) = (bits(self.old, om), bits(self.new, nm));
        let fits = (os == ns && nb >= ob) || (!os && ns && nb > ob);
        if ob != nb || os != ns {
            let decision = if fits {
                Self::auto("widened: every value fits")
            } else {
                Decision::CheckedPerValue {
                    check: format!("each value must fit in {nb} bits, else the transfer refuses"),
                }
            };
            self.diff(path, format!("bit-field {ob} -> {nb} bits"), decision);
        }
        Conversion::Integer {
            old_bits: ob,
            old_signed: os,
            new_bits: nb,
            new_signed: ns,
            checked: !fits,
        }
    }

    /// A `[default]` value for a new global or field of type `ty`, checked against the type.
    fn default_value(&mut self, ty: TypeId, value: &Value, rule: String) -> (Conversion, Decision) {
        let problem = match (scalar(self.new, ty), value) {
            (None, _) => Some(format!(
                "a default sets a number or an enumerator, but the type is {}",
                self.new.type_name(ty)
            )),
            (Some(Scalar::Int { bits, signed }), Value::Int(i)) => {
                let fits = if signed {
                    bits >= 64 || (*i >= -(1i64 << (bits - 1)) && *i < (1i64 << (bits - 1)))
                } else {
                    *i >= 0 && (bits >= 64 || *i < (1i64 << bits))
                };
                (!fits).then(|| format!("{i} does not fit in {}", self.new.type_name(ty)))
            }
            (Some(Scalar::Int { .. }), Value::Bool(_)) => None,
            (Some(Scalar::Float), Value::Int(_) | Value::Float(_)) => None,
            (Some(Scalar::Enum(names)), Value::Name(n)) => (!names.iter().any(|(e, _)| e == n))
                .then(|| format!("{} has no enumerator {n}", self.new.type_name(ty))),
            (Some(Scalar::Enum(_)), Value::Int(_)) => None,
            (Some(_), v) => Some(format!(
                "{v} is not a value of type {}",
                self.new.type_name(ty)
            )),
        };
        match problem {
            None => (
                Conversion::Default {
                    value: value.clone(),
                },
                self.by_rule(rule, format!("set to {value}")),
            ),
            Some(why) => {
                self.used_rules.insert(rule.clone());
                (
                    Conversion::Refused,
                    Self::refused(format!("the rule {rule} in {}: {why}", self.rules.origin())),
                )
            }
        }
    }

    /// Whether two unions are laid out alike: same size, same members at the same offsets with
    /// types of the same name and size (type ids cannot be compared across binaries).
    fn same_union_layout(&self, oc: &Composite, nc: &Composite) -> bool {
        oc.size == nc.size
            && oc.members.len() == nc.members.len()
            && oc.members.iter().zip(&nc.members).all(|(a, b)| {
                a.name == b.name
                    && a.offset == b.offset
                    && a.bit_field == b.bit_field
                    && self.old.type_name(a.ty) == self.new.type_name(b.ty)
                    && self.old.byte_size(a.ty) == self.new.byte_size(b.ty)
            })
    }

    fn may_hold_pointer(&self, b: &Binary, id: TypeId, depth: u32) -> bool {
        if depth > MAX_DEPTH {
            return true;
        }
        let id = Self::strip(b, id);
        match b.ty(id) {
            Type::Pointer { .. } | Type::Unknown { .. } => true,
            Type::Struct(c) | Type::Union(c) => c
                .members
                .iter()
                .any(|m| self.may_hold_pointer(b, m.ty, depth + 1)),
            Type::Array { element, .. } => self.may_hold_pointer(b, *element, depth + 1),
            Type::VariantEnum(_) => true,
            _ => false,
        }
    }
}

/// What a scalar type is, for rules that set or convert values.
enum Scalar {
    Int { bits: u64, signed: bool },
    Float,
    Enum(Vec<(String, i64)>),
}

fn scalar(b: &Binary, ty: TypeId) -> Option<Scalar> {
    let id = b.types().strip_typedefs_cv(ty);
    match b.ty(id) {
        Type::Base {
            encoding: Encoding::Float,
            ..
        } => Some(Scalar::Float),
        Type::Base {
            encoding: Encoding::ComplexFloat | Encoding::Other(_),
            ..
        } => None,
        Type::Base { encoding, size, .. } => Some(Scalar::Int {
            bits: size * 8,
            signed: encoding.is_signed(),
        }),
        Type::Enum(e) => Some(Scalar::Enum(e.enumerators.clone())),
        _ => None,
    }
}

/// Names of the members of a struct; anonymous members (an unnamed union inside a struct) are
/// `<anonymous #k>`, numbered among the anonymous ones only, so they match in order.
fn member_names(members: &[Member]) -> Vec<String> {
    let mut k = 0;
    members
        .iter()
        .map(|m| match &m.name {
            Some(n) => n.clone(),
            None => {
                k += 1;
                format!("<anonymous #{}>", k - 1)
            }
        })
        .collect()
}

/// The name of a struct, union or enum as rules and messages use it: its tag (`struct item`),
/// or for an anonymous one the typedef that names it (`cfg_t`).
fn type_label(b: &Binary, id: TypeId) -> String {
    let types = b.types();
    let stripped = types.definition_of(types.strip_typedefs_cv(id));
    if b.ty(stripped).own_name().is_some() {
        return b.type_name(stripped);
    }
    let mut cur = id;
    for _ in 0..MAX_DEPTH {
        match b.ty(cur) {
            Type::Typedef { name, target } => {
                if types.definition_of(types.strip_typedefs_cv(*target)) == stripped {
                    return name.clone();
                }
                cur = *target;
            }
            Type::Const(t) | Type::Volatile(t) => cur = *t,
            _ => break,
        }
    }
    b.type_name(stripped)
}
