//! One pass over a binary's DWARF (versions 2 to 5) that builds the whole model: types,
//! variables with fixed addresses, thread-locals, functions and compilation units.
//!
//! Every type DIE gets a [`TypeId`] the first time it is defined or referenced (by its offset
//! in `.debug_info`/`.debug_types`, so `DW_FORM_ref_addr` references across units resolve the
//! same way as unit-local ones); a reference ahead of its definition holds a placeholder slot
//! that the definition fills. After the walk, aliases (`restrict`, `_Atomic`, type-unit
//! signatures) are resolved, layout details that need other types' sizes are finished, and
//! structurally identical types are merged (`dedup.rs`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use gimli::{constants, AttributeValue, DebuggingInformationEntry, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

use super::dedup::{self, FxMap, FxSet};
use super::error::DebugInfoError;
use super::frames::{
    self, Block, BlockKind, LocalKind, LocalVariable, Location as Where, LocationRange, Locations,
    Subprogram,
};
use super::types::{
    BitField, Composite, Encoding, EnumType, Language, Member, Type, TypeId, Types, Variant,
    VariantEnum,
};
use super::{CompilationUnit, CuId, Function, ThreadLocal, Variable, VariableKind};

type R<'d> = EndianSlice<'d, LittleEndian>;
type Unit<'d> = gimli::Unit<R<'d>>;
type Entry<'d> = DebuggingInformationEntry<R<'d>>;
/// Code ranges `[begin, end)`.
type Ranges = Vec<(u64, u64)>;

/// Everything read from the DWARF of one binary.
pub(crate) struct Parsed {
    pub types: Types,
    pub units: Vec<CompilationUnit>,
    pub variables: Vec<Variable>,
    pub thread_locals: Vec<ThreadLocal>,
    pub functions: Vec<Function>,
    pub subprograms: Vec<Subprogram>,
    pub notes: Vec<String>,
    /// Type DIEs seen before merging identical ones.
    pub type_dies: usize,
}

/// Reads the DWARF sections of `file` (the binary itself or its separate debug file, at
/// `path` for messages) into the model.
pub(crate) fn parse(path: &Path, file: &object::File<'_>) -> Result<Parsed, DebugInfoError> {
    let dwarf_err = |offset: Option<u64>, e: &dyn std::fmt::Display| DebugInfoError::Dwarf {
        path: path.to_owned(),
        offset,
        detail: e.to_string(),
    };
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, DebugInfoError> {
        match file.section_by_name(id.name()) {
            Some(s) => s
                .uncompressed_data()
                .map_err(|e| dwarf_err(None, &format!("section {}: {e}", id.name()))),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    })?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));

    let mut b = Builder::new(&dwarf);
    let mut parsed_units = 0usize;
    let mut first_error = None;
    // Type units first (DWARF 4 `.debug_types`), then `.debug_info` (which holds DWARF 5
    // type units too).
    let mut headers = Vec::new();
    let mut tu = dwarf.type_units();
    loop {
        match tu.next() {
            Ok(Some(h)) => headers.push(h),
            Ok(None) => break,
            Err(e) => return Err(dwarf_err(None, &format!(".debug_types: {e}"))),
        }
    }
    let mut cu = dwarf.units();
    loop {
        match cu.next() {
            Ok(Some(h)) => {
                if let Some(o) = h.debug_info_offset() {
                    b.unit_starts.push(o.0 as u64);
                }
                headers.push(h)
            }
            Ok(None) => break,
            Err(e) => return Err(dwarf_err(None, &e)),
        }
    }
    for header in headers {
        let offset = header.offset().0 as u64;
        match b.unit(header) {
            Ok(()) => parsed_units += 1,
            Err(e) => {
                b.notes.push(format!(
                    "compilation unit at offset {offset:#x} skipped: {e}"
                ));
                first_error.get_or_insert((offset, e));
            }
        }
    }
    if parsed_units == 0 {
        if let Some((offset, e)) = first_error {
            return Err(dwarf_err(Some(offset), &e));
        }
        return Err(dwarf_err(None, &"no compilation units in .debug_info"));
    }
    Ok(b.finish())
}

/// A DIE's identity: section and offset within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DieKey {
    Info(u64),
    Types(u64),
}

/// The unit being walked.
struct UnitCx<'a, 'd> {
    unit: &'a Unit<'d>,
    /// Start of the unit in its section.
    start: u64,
    in_types: bool,
    cu: Option<CuId>,
    cu_name: String,
    lang: Language,
}

impl UnitCx<'_, '_> {
    fn key(&self, off: gimli::UnitOffset<usize>) -> DieKey {
        let o = self.start + off.0 as u64;
        if self.in_types {
            DieKey::Types(o)
        } else {
            DieKey::Info(o)
        }
    }
}

/// Where in the tree a DIE sits: namespace/type path (for Rust and C++ names) and the
/// innermost enclosing function (for function statics).
#[derive(Clone, Default)]
struct Scope {
    path: Vec<String>,
    function: Option<Rc<str>>,
    /// The function with code being walked (index in `Builder::subprograms`) and the block of
    /// it the DIE sits in: where parameters and locals go.
    frame: Option<(u32, u32)>,
}

impl Scope {
    fn qualify(&self, lang: Language, name: &str) -> String {
        if self.path.is_empty() || !matches!(lang, Language::Rust | Language::Cpp) {
            name.to_owned()
        } else {
            let mut s = self.path.join("::");
            s.push_str("::");
            s.push_str(name);
            s
        }
    }
    fn child(&self, segment: String) -> Scope {
        let mut s = self.clone();
        s.path.push(segment);
        s
    }
}

/// Name, linkage name, type and linkage of a DIE, completed from the DIEs named by its
/// `DW_AT_specification` / `DW_AT_abstract_origin`.
#[derive(Default)]
struct Described {
    name: Option<String>,
    linkage_name: Option<String>,
    ty: Option<TypeId>,
    external: bool,
}

/// Where a variable's location expression puts it.
enum Location {
    Static(u64),
    Tls(u64),
    Other,
}

/// A bit-field in DWARF 2-4 style (`DW_AT_bit_offset` counted from the most significant bit
/// of a storage unit), finished once the storage unit's size is known.
struct PendingBitField {
    ty: TypeId,
    member: usize,
    location: u64,
    bit_offset: u64,
    storage: Option<u64>,
}

struct Builder<'a, 'd> {
    dwarf: &'a gimli::Dwarf<R<'d>>,
    types: Vec<Type>,
    langs: Vec<Language>,
    filled: Vec<bool>,
    by_key: FxMap<DieKey, TypeId>,
    /// Slots that stand for another type (restrict, _Atomic, type signatures).
    aliases: FxMap<TypeId, TypeId>,
    sigs: FxMap<u64, TypeId>,
    void: TypeId,
    unit_starts: Vec<u64>,
    other_units: HashMap<u64, Unit<'d>>,
    units: Vec<CompilationUnit>,
    variables: Vec<Variable>,
    thread_locals: Vec<ThreadLocal>,
    functions: Vec<Function>,
    subprograms: Vec<Subprogram>,
    seen_vars: FxSet<(u64, String)>,
    /// Unit and enclosing function of variable DIEs without a location, which may be the
    /// abstract origin of a located DIE elsewhere.
    origins: FxMap<DieKey, (CuId, Option<Rc<str>>)>,
    /// (is thread-local, index, abstract origin) of located variables with an origin.
    pending_origins: Vec<(bool, usize, DieKey)>,
    pending_bits: Vec<PendingBitField>,
    /// Signedness of enums whose DIE says it without naming an underlying type: from
    /// `DW_AT_encoding` (gcc), or `true` when an enumerator is a negative `DW_FORM_sdata`.
    enum_signed: FxMap<TypeId, bool>,
    notes: Vec<String>,
    skipped_tags: HashMap<String, usize>,
    zero_address_vars: usize,
}

fn lang_of(code: u16) -> Language {
    match constants::DwLang(code) {
        constants::DW_LANG_C89
        | constants::DW_LANG_C
        | constants::DW_LANG_C99
        | constants::DW_LANG_C11
        | constants::DW_LANG_C17 => Language::C,
        constants::DW_LANG_Rust => Language::Rust,
        constants::DW_LANG_C_plus_plus
        | constants::DW_LANG_C_plus_plus_03
        | constants::DW_LANG_C_plus_plus_11
        | constants::DW_LANG_C_plus_plus_14
        | constants::DW_LANG_C_plus_plus_17
        | constants::DW_LANG_C_plus_plus_20 => Language::Cpp,
        _ => Language::Other(code),
    }
}

fn is_type_tag(tag: constants::DwTag) -> bool {
    matches!(
        tag,
        constants::DW_TAG_base_type
            | constants::DW_TAG_pointer_type
            | constants::DW_TAG_reference_type
            | constants::DW_TAG_rvalue_reference_type
            | constants::DW_TAG_structure_type
            | constants::DW_TAG_class_type
            | constants::DW_TAG_union_type
            | constants::DW_TAG_enumeration_type
            | constants::DW_TAG_array_type
            | constants::DW_TAG_subroutine_type
            | constants::DW_TAG_typedef
            | constants::DW_TAG_const_type
            | constants::DW_TAG_volatile_type
            | constants::DW_TAG_restrict_type
            | constants::DW_TAG_atomic_type
            | constants::DW_TAG_immutable_type
            | constants::DW_TAG_packed_type
            | constants::DW_TAG_shared_type
            | constants::DW_TAG_unspecified_type
            | constants::DW_TAG_ptr_to_member_type
            | constants::DW_TAG_string_type
            | constants::DW_TAG_set_type
            | constants::DW_TAG_subrange_type
            | constants::DW_TAG_file_type
            | constants::DW_TAG_interface_type
            | constants::DW_TAG_coarray_type
            | constants::DW_TAG_dynamic_type
            | constants::DW_TAG_generic_subrange
    )
}

fn flag(entry: &Entry<'_>, at: constants::DwAt) -> bool {
    matches!(entry.attr_value(at), Some(AttributeValue::Flag(true)))
}

fn udata(entry: &Entry<'_>, at: constants::DwAt) -> Option<u64> {
    entry.attr_value(at).and_then(|v| v.udata_value())
}

/// A constant attribute as raw bits with the width of its form (64 for LEB128 forms).
fn raw_const(v: &AttributeValue<R<'_>>) -> Option<(u64, u8)> {
    Some(match *v {
        AttributeValue::Data1(d) => (d.into(), 8),
        AttributeValue::Data2(d) => (d.into(), 16),
        AttributeValue::Data4(d) => (d.into(), 32),
        AttributeValue::Data8(d) => (d, 64),
        AttributeValue::Udata(d) => (d, 64),
        AttributeValue::Sdata(d) => (d as u64, 64),
        _ => return None,
    })
}

impl<'a, 'd> Builder<'a, 'd> {
    fn new(dwarf: &'a gimli::Dwarf<R<'d>>) -> Self {
        let mut b = Builder {
            dwarf,
            types: Vec::new(),
            langs: Vec::new(),
            filled: Vec::new(),
            by_key: FxMap::default(),
            aliases: FxMap::default(),
            sigs: FxMap::default(),
            void: TypeId(0),
            unit_starts: Vec::new(),
            other_units: HashMap::new(),
            units: Vec::new(),
            variables: Vec::new(),
            thread_locals: Vec::new(),
            functions: Vec::new(),
            subprograms: Vec::new(),
            seen_vars: FxSet::default(),
            origins: FxMap::default(),
            pending_origins: Vec::new(),
            pending_bits: Vec::new(),
            enum_signed: FxMap::default(),
            notes: Vec::new(),
            skipped_tags: HashMap::new(),
            zero_address_vars: 0,
        };
        b.void = b.new_slot(Type::Void, true);
        b
    }

    fn new_slot(&mut self, ty: Type, filled: bool) -> TypeId {
        let id = TypeId(self.types.len() as u32);
        self.types.push(ty);
        self.langs.push(Language::C);
        self.filled.push(filled);
        id
    }

    fn unknown(&mut self, what: &str) -> TypeId {
        self.new_slot(
            Type::Unknown {
                what: what.to_owned(),
            },
            true,
        )
    }

    fn id_for(&mut self, key: DieKey) -> TypeId {
        if let Some(&id) = self.by_key.get(&key) {
            return id;
        }
        let (sect, off) = match key {
            DieKey::Info(o) => (".debug_info", o),
            DieKey::Types(o) => (".debug_types", o),
        };
        let id = self.new_slot(
            Type::Unknown {
                what: format!("unresolved reference to DIE {off:#x} in {sect}"),
            },
            false,
        );
        self.by_key.insert(key, id);
        id
    }

    fn sig_id(&mut self, sig: u64) -> TypeId {
        if let Some(&id) = self.sigs.get(&sig) {
            return id;
        }
        let id = self.new_slot(
            Type::Unknown {
                what: format!("type unit with signature {sig:#018x} not found"),
            },
            false,
        );
        self.sigs.insert(sig, id);
        id
    }

    fn fill(&mut self, cx: &UnitCx<'_, '_>, id: TypeId, ty: Type) {
        let i = id.index();
        if !self.filled[i] {
            self.types[i] = ty;
            self.langs[i] = cx.lang;
            self.filled[i] = true;
        }
    }

    fn alias(&mut self, id: TypeId, target: TypeId) {
        let i = id.index();
        if !self.filled[i] {
            self.filled[i] = true;
            self.aliases.insert(id, target);
        }
    }

    fn string(&self, unit: &Unit<'d>, v: AttributeValue<R<'d>>) -> Option<String> {
        self.dwarf
            .attr_string(unit, v)
            .ok()
            .map(|s| s.to_string_lossy().into_owned())
    }

    fn name(&self, cx: &UnitCx<'_, 'd>, entry: &Entry<'d>) -> Option<String> {
        self.string(cx.unit, entry.attr_value(constants::DW_AT_name)?)
    }

    /// The type an attribute refers to (`DW_AT_type` and friends).
    fn type_ref(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        entry: &Entry<'d>,
        at: constants::DwAt,
    ) -> Option<TypeId> {
        match entry.attr_value(at)? {
            AttributeValue::UnitRef(o) => Some(self.id_for(cx.key(o))),
            AttributeValue::DebugInfoRef(o) => Some(self.id_for(DieKey::Info(o.0 as u64))),
            AttributeValue::DebugTypesRef(sig) => Some(self.sig_id(sig.0)),
            AttributeValue::DebugInfoRefSup(o) => Some(self.unknown(&format!(
                "type at {:#x} in the supplementary debug file",
                o.0
            ))),
            _ => None,
        }
    }

    fn unit(&mut self, header: gimli::UnitHeader<R<'d>>) -> gimli::Result<()> {
        let start = header.offset().0 as u64;
        let in_types = header.section() == gimli::SectionId::DebugTypes;
        let unit = self.dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let entry = root.entry();
        let tag = entry.tag();
        let lang = match entry.attr_value(constants::DW_AT_language) {
            Some(AttributeValue::Language(l)) => lang_of(l.0),
            _ => Language::Other(0),
        };
        let unit_name = unit
            .name
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cx = UnitCx {
            unit: &unit,
            start,
            in_types,
            cu: None,
            cu_name: unit_name.clone(),
            lang,
        };
        match tag {
            constants::DW_TAG_compile_unit | constants::DW_TAG_partial_unit => {
                let producer = entry
                    .attr_value(constants::DW_AT_producer)
                    .and_then(|v| self.string(&unit, v));
                let comp_dir = unit.comp_dir.map(|d| d.to_string_lossy().into_owned());
                cx.cu = Some(CuId(self.units.len() as u32));
                self.units.push(CompilationUnit {
                    name: unit_name,
                    comp_dir,
                    producer,
                    language: lang,
                    version: unit.header.version(),
                    offset: start,
                });
            }
            constants::DW_TAG_type_unit => {}
            constants::DW_TAG_skeleton_unit => {
                self.notes.push(format!(
                    "split-DWARF skeleton unit {unit_name} at {start:#x} skipped (.dwo files are not read)"
                ));
                return Ok(());
            }
            other => {
                self.notes
                    .push(format!("unit at {start:#x} with root {other} skipped"));
                return Ok(());
            }
        }
        if let gimli::UnitType::Type {
            type_signature,
            type_offset,
        }
        | gimli::UnitType::SplitType {
            type_signature,
            type_offset,
        } = unit.header.type_()
        {
            let target = self.id_for(cx.key(type_offset));
            let sig = self.sig_id(type_signature.0);
            self.alias(sig, target);
        }
        self.children(&cx, root.children(), &Scope::default())
    }

    fn children(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        mut iter: gimli::EntriesTreeIter<'_, '_, R<'d>>,
        scope: &Scope,
    ) -> gimli::Result<()> {
        while let Some(node) = iter.next()? {
            self.node(cx, node, scope)?;
        }
        Ok(())
    }

    fn node(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        node: gimli::EntriesTreeNode<'_, '_, R<'d>>,
        scope: &Scope,
    ) -> gimli::Result<()> {
        let entry = node.entry();
        let tag = entry.tag();
        match tag {
            constants::DW_TAG_namespace | constants::DW_TAG_module => {
                let name = self.name(cx, entry).unwrap_or_else(|| "{anon}".into());
                let s = scope.child(name);
                self.children(cx, node.children(), &s)
            }
            constants::DW_TAG_subprogram => {
                let (name, ranges) = self.function(cx, entry, scope)?;
                let mut s = scope.clone();
                s.frame = match ranges {
                    Some(ranges) => Some((self.subprogram(cx, entry, &name, ranges)?, 0)),
                    None => None,
                };
                s.function = Some(name.into());
                self.children(cx, node.children(), &s)
            }
            constants::DW_TAG_lexical_block | constants::DW_TAG_inlined_subroutine => {
                let mut s = scope.clone();
                if let Some((sub, parent)) = scope.frame {
                    let block = self.block(cx, entry, sub, parent)?;
                    s.frame = Some((sub, block));
                }
                self.children(cx, node.children(), &s)
            }
            constants::DW_TAG_common_block => self.children(cx, node.children(), scope),
            constants::DW_TAG_variable => {
                self.variable(cx, entry, scope)?;
                if let Some(frame) = scope.frame {
                    self.local(cx, entry, frame, LocalKind::Variable)?;
                }
                Ok(())
            }
            constants::DW_TAG_formal_parameter => {
                if let Some(frame) = scope.frame {
                    self.local(cx, entry, frame, LocalKind::Parameter)?;
                }
                Ok(())
            }
            t if is_type_tag(t) => self.type_die(cx, node, scope),
            _ => Ok(()),
        }
    }

    /// Name, type and linkage of `entry`, following specification/abstract-origin links.
    fn describe(&mut self, cx: &UnitCx<'_, 'd>, entry: &Entry<'d>) -> gimli::Result<Described> {
        let mut d = Described::default();
        self.absorb(cx, entry, &mut d);
        let mut next = Self::origin_link(entry);
        for _ in 0..8 {
            let Some(link) = next.take() else { break };
            if d.name.is_some() && d.ty.is_some() && d.linkage_name.is_some() {
                break;
            }
            match link {
                AttributeValue::UnitRef(o) => {
                    let e = cx.unit.entry(o)?;
                    self.absorb(cx, &e, &mut d);
                    next = Self::origin_link(&e);
                }
                AttributeValue::DebugInfoRef(o) => {
                    let off = o.0 as u64;
                    let Some(start) = self.unit_start_of(off) else {
                        break;
                    };
                    if !self.other_units.contains_key(&start) {
                        let header = self
                            .dwarf
                            .unit_header(gimli::DebugInfoOffset(start as usize))?;
                        let unit = self.dwarf.unit(header)?;
                        self.other_units.insert(start, unit);
                    }
                    // Take the unit out while reading so `self` can be borrowed mutably.
                    let unit = self.other_units.remove(&start).expect("inserted above");
                    let lang = cx.lang;
                    let ocx = UnitCx {
                        unit: &unit,
                        start,
                        in_types: false,
                        cu: None,
                        cu_name: String::new(),
                        lang,
                    };
                    let result = unit
                        .entry(gimli::UnitOffset((off - start) as usize))
                        .map(|e| {
                            self.absorb(&ocx, &e, &mut d);
                            Self::origin_link(&e)
                        });
                    self.other_units.insert(start, unit);
                    next = result?;
                }
                _ => break,
            }
        }
        Ok(d)
    }

    fn origin_link(entry: &Entry<'d>) -> Option<AttributeValue<R<'d>>> {
        entry
            .attr_value(constants::DW_AT_specification)
            .or_else(|| entry.attr_value(constants::DW_AT_abstract_origin))
    }

    fn absorb(&mut self, cx: &UnitCx<'_, 'd>, entry: &Entry<'d>, d: &mut Described) {
        if d.name.is_none() {
            d.name = self.name(cx, entry);
        }
        if d.linkage_name.is_none() {
            d.linkage_name = entry
                .attr_value(constants::DW_AT_linkage_name)
                .or_else(|| entry.attr_value(constants::DW_AT_MIPS_linkage_name))
                .and_then(|v| self.string(cx.unit, v));
        }
        if d.ty.is_none() {
            d.ty = self.type_ref(cx, entry, constants::DW_AT_type);
        }
        d.external |= flag(entry, constants::DW_AT_external);
    }

    fn unit_start_of(&self, off: u64) -> Option<u64> {
        let i = self.unit_starts.partition_point(|&s| s <= off);
        i.checked_sub(1).map(|i| self.unit_starts[i])
    }

    /// Records a function with code, returning the name under which statics inside it are
    /// filed.
    fn function(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        entry: &Entry<'d>,
        scope: &Scope,
    ) -> gimli::Result<(String, Option<Ranges>)> {
        let d = self.describe(cx, entry)?;
        let name = d
            .name
            .as_deref()
            .map(|n| scope.qualify(cx.lang, n))
            .unwrap_or_else(|| "<anonymous function>".into());
        if flag(entry, constants::DW_AT_declaration) {
            return Ok((name, None));
        }
        let mut ranges = Vec::new();
        let mut iter = self.dwarf.die_ranges(cx.unit, entry)?;
        while let Some(r) = iter.next()? {
            // Code discarded by the linker keeps address 0.
            if r.begin < r.end && r.begin != 0 {
                ranges.push((r.begin, r.end));
            }
        }
        if ranges.is_empty() {
            return Ok((name, None));
        }
        let entry_pc = entry
            .attr_value(constants::DW_AT_entry_pc)
            .and_then(|v| self.dwarf.attr_address(cx.unit, v).ok().flatten())
            .or_else(|| {
                entry
                    .attr_value(constants::DW_AT_low_pc)
                    .and_then(|v| self.dwarf.attr_address(cx.unit, v).ok().flatten())
            })
            .unwrap_or(ranges[0].0);
        let (low_pc, high_pc) = ranges
            .iter()
            .copied()
            .find(|&(b, e)| b <= entry_pc && entry_pc < e)
            .unwrap_or(ranges[0]);
        self.functions.push(Function {
            name: name.clone(),
            linkage_name: d.linkage_name,
            unit: cx.cu,
            low_pc,
            high_pc,
            ranges: ranges.clone(),
            external: d.external,
        });
        Ok((name, Some(ranges)))
    }

    /// Starts the frame model of a function with code (its block 0), returning its index.
    fn subprogram(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        entry: &Entry<'d>,
        name: &str,
        ranges: Vec<(u64, u64)>,
    ) -> gimli::Result<u32> {
        let linkage_name = self.functions.last().and_then(|f| f.linkage_name.clone());
        let frame_base = match entry.attr_value(constants::DW_AT_frame_base) {
            Some(v) => Some(self.locations(cx, v)?),
            None => None,
        };
        let id = self.subprograms.len() as u32;
        self.subprograms.push(Subprogram {
            name: name.to_owned(),
            demangled: frames::display_name(name, linkage_name.as_deref()),
            linkage_name,
            ranges: ranges.clone(),
            frame_base,
            blocks: vec![Block {
                parent: None,
                kind: BlockKind::Function,
                ranges,
                variables: Vec::new(),
            }],
        });
        Ok(id)
    }

    /// Adds a lexical block or inlined call inside block `parent` of subprogram `sub`.
    fn block(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        entry: &Entry<'d>,
        sub: u32,
        parent: u32,
    ) -> gimli::Result<u32> {
        let mut ranges = Vec::new();
        let mut iter = self.dwarf.die_ranges(cx.unit, entry)?;
        while let Some(r) = iter.next()? {
            if r.begin < r.end && r.begin != 0 {
                ranges.push((r.begin, r.end));
            }
        }
        let kind = if entry.tag() == constants::DW_TAG_inlined_subroutine {
            let d = self.describe(cx, entry)?;
            let name = d.name.unwrap_or_else(|| "<anonymous function>".into());
            BlockKind::Inlined {
                demangled: frames::display_name(&name, d.linkage_name.as_deref()),
                name,
                linkage_name: d.linkage_name,
                call_line: udata(entry, constants::DW_AT_call_line).unwrap_or(0),
            }
        } else {
            BlockKind::Lexical
        };
        let blocks = &mut self.subprograms[sub as usize].blocks;
        blocks.push(Block {
            parent: Some(parent),
            kind,
            ranges,
            variables: Vec::new(),
        });
        Ok((blocks.len() - 1) as u32)
    }

    /// Records a parameter or local variable in its block.
    fn local(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        entry: &Entry<'d>,
        (sub, block): (u32, u32),
        kind: LocalKind,
    ) -> gimli::Result<()> {
        if flag(entry, constants::DW_AT_declaration) {
            return Ok(());
        }
        let d = self.describe(cx, entry)?;
        let ty = match d.ty {
            Some(t) => t,
            None => self.unknown("local variable without a type"),
        };
        let locations = match entry.attr_value(constants::DW_AT_location) {
            Some(v) => self.locations(cx, v)?,
            None => match entry.attr_value(constants::DW_AT_const_value) {
                Some(v) => match raw_const(&v) {
                    Some((c, _)) => Locations::Single(Where::Constant(c)),
                    None => match v {
                        AttributeValue::Block(b) => {
                            Locations::Single(Where::ImplicitValue(b.slice().to_vec()))
                        }
                        _ => Locations::None,
                    },
                },
                None => Locations::None,
            },
        };
        let var = LocalVariable {
            name: d.name.unwrap_or_else(|| "<anonymous>".into()),
            kind,
            ty,
            locations,
            artificial: flag(entry, constants::DW_AT_artificial),
        };
        if let Some(b) = self.subprograms[sub as usize]
            .blocks
            .get_mut(block as usize)
        {
            b.variables.push(var);
        }
        Ok(())
    }

    /// Classifies a `DW_AT_location` or `DW_AT_frame_base` value: an expression or a
    /// location list.
    fn locations(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        value: AttributeValue<R<'d>>,
    ) -> gimli::Result<Locations> {
        let dwarf = self.dwarf;
        let unit = cx.unit;
        let index = |i| dwarf.address(unit, i).ok();
        if let AttributeValue::Exprloc(expr) = value {
            return Ok(Locations::Single(frames::classify(
                expr,
                unit.encoding(),
                &index,
            )));
        }
        let Some(mut iter) = dwarf.attr_locations(unit, value)? else {
            return Ok(Locations::None);
        };
        let mut list = Vec::new();
        while let Some(e) = iter.next()? {
            if e.range.begin >= e.range.end {
                continue;
            }
            list.push(LocationRange {
                begin: e.range.begin,
                end: e.range.end,
                location: frames::classify(e.data, unit.encoding(), &index),
            });
        }
        Ok(Locations::List(list))
    }

    fn location(&self, cx: &UnitCx<'_, 'd>, entry: &Entry<'d>) -> gimli::Result<Location> {
        let Some(AttributeValue::Exprloc(expr)) = entry.attr_value(constants::DW_AT_location)
        else {
            return Ok(Location::Other);
        };
        let mut ops = expr.operations(cx.unit.encoding());
        let first = ops.next()?;
        let second = ops.next()?;
        let third = ops.next()?;
        use gimli::Operation as Op;
        Ok(match (first, second, third) {
            (Some(Op::Address { address }), None, None) => Location::Static(address),
            (Some(Op::AddressIndex { index }), None, None) => {
                Location::Static(self.dwarf.address(cx.unit, index)?)
            }
            (Some(Op::UnsignedConstant { value }), Some(Op::TLS), None)
            | (Some(Op::Address { address: value }), Some(Op::TLS), None) => Location::Tls(value),
            (Some(Op::ConstantIndex { index }), Some(Op::TLS), None) => {
                Location::Tls(self.dwarf.address(cx.unit, index)?)
            }
            _ => Location::Other,
        })
    }

    fn variable(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        entry: &Entry<'d>,
        scope: &Scope,
    ) -> gimli::Result<()> {
        let loc = self.location(cx, entry)?;
        let Some(unit) = cx.cu else { return Ok(()) };
        if matches!(loc, Location::Other) {
            // Possibly the abstract DIE of a variable placed elsewhere (LTO puts the located
            // DIE in an `<artificial>` unit): remember where it was declared.
            if !flag(entry, constants::DW_AT_declaration) {
                self.origins
                    .insert(cx.key(entry.offset()), (unit, scope.function.clone()));
            }
            return Ok(());
        }
        let origin = match entry.attr_value(constants::DW_AT_abstract_origin) {
            Some(AttributeValue::UnitRef(o)) => Some(cx.key(o)),
            Some(AttributeValue::DebugInfoRef(o)) => Some(DieKey::Info(o.0 as u64)),
            _ => None,
        };
        let d = self.describe(cx, entry)?;
        let Some(plain) = d.name else { return Ok(()) };
        let name = scope.qualify(cx.lang, &plain);
        let ty = match d.ty {
            Some(t) => t,
            None => self.unknown(&format!("variable {name} has no type")),
        };
        let kind = if d.external {
            VariableKind::Global
        } else if let Some(f) = &scope.function {
            VariableKind::FunctionStatic {
                cu: cx.cu_name.clone(),
                function: f.to_string(),
            }
        } else {
            VariableKind::FileStatic {
                cu: cx.cu_name.clone(),
            }
        };
        match loc {
            Location::Static(address) => {
                if address == 0 {
                    self.zero_address_vars += 1;
                    return Ok(());
                }
                if !self.seen_vars.insert((address, name.clone())) {
                    return Ok(());
                }
                if let Some(o) = origin {
                    self.pending_origins.push((false, self.variables.len(), o));
                }
                self.variables.push(Variable {
                    name,
                    linkage_name: d.linkage_name,
                    kind,
                    unit,
                    ty,
                    address,
                    size: None,
                    symbol_size: None,
                });
            }
            Location::Tls(offset) => {
                if let Some(o) = origin {
                    self.pending_origins
                        .push((true, self.thread_locals.len(), o));
                }
                self.thread_locals.push(ThreadLocal {
                    name,
                    linkage_name: d.linkage_name,
                    kind,
                    unit,
                    ty,
                    offset,
                })
            }
            Location::Other => {}
        }
        Ok(())
    }

    fn member(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        entry: &Entry<'d>,
        owner: TypeId,
        index: usize,
    ) -> Option<Member> {
        // C++ static data members are declarations, not storage inside the object.
        if flag(entry, constants::DW_AT_declaration) || flag(entry, constants::DW_AT_external) {
            return None;
        }
        let name = self.name(cx, entry);
        let ty = match self.type_ref(cx, entry, constants::DW_AT_type) {
            Some(t) => t,
            None => self.unknown("member without a type"),
        };
        let location = match entry.attr_value(constants::DW_AT_data_member_location) {
            Some(AttributeValue::Exprloc(e)) => {
                // DWARF 2 style: DW_OP_plus_uconst N.
                let mut ops = e.operations(cx.unit.encoding());
                match ops.next() {
                    Ok(Some(gimli::Operation::PlusConstant { value })) => value,
                    Ok(Some(gimli::Operation::UnsignedConstant { value })) => value,
                    _ => 0,
                }
            }
            Some(v) => v.udata_value().unwrap_or(0),
            None => 0,
        };
        let bit_size = udata(entry, constants::DW_AT_bit_size);
        let Some(bit_size) = bit_size else {
            return Some(Member {
                name,
                ty,
                offset: location,
                bit_field: None,
            });
        };
        if let Some(pos) = udata(entry, constants::DW_AT_data_bit_offset) {
            return Some(Member {
                name,
                ty,
                offset: pos / 8,
                bit_field: Some(BitField {
                    bit_offset: (pos % 8) as u8,
                    bit_size,
                }),
            });
        }
        let bit_offset = udata(entry, constants::DW_AT_bit_offset);
        match bit_offset {
            Some(bit_offset) => {
                self.pending_bits.push(PendingBitField {
                    ty: owner,
                    member: index,
                    location,
                    bit_offset,
                    storage: udata(entry, constants::DW_AT_byte_size),
                });
                Some(Member {
                    name,
                    ty,
                    offset: location,
                    bit_field: Some(BitField {
                        bit_offset: 0,
                        bit_size,
                    }),
                })
            }
            None => Some(Member {
                name,
                ty,
                offset: location,
                bit_field: Some(BitField {
                    bit_offset: 0,
                    bit_size,
                }),
            }),
        }
    }

    fn type_die(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        node: gimli::EntriesTreeNode<'_, '_, R<'d>>,
        scope: &Scope,
    ) -> gimli::Result<()> {
        let entry = node.entry();
        let tag = entry.tag();
        let id = self.id_for(cx.key(entry.offset()));
        let name = self.name(cx, entry);
        let size = udata(entry, constants::DW_AT_byte_size);
        let declaration = flag(entry, constants::DW_AT_declaration);
        let target = self.type_ref(cx, entry, constants::DW_AT_type);
        // A stand-in for a type defined in a type unit (`-fdebug-types-section`).
        if let Some(AttributeValue::DebugTypesRef(sig)) =
            entry.attr_value(constants::DW_AT_signature)
        {
            let real = self.sig_id(sig.0);
            self.alias(id, real);
            return self.children(cx, node.children(), scope);
        }
        match tag {
            constants::DW_TAG_base_type => {
                let encoding = match entry.attr_value(constants::DW_AT_encoding) {
                    Some(AttributeValue::Encoding(e)) => match e {
                        constants::DW_ATE_signed => Encoding::Signed,
                        constants::DW_ATE_unsigned => Encoding::Unsigned,
                        constants::DW_ATE_signed_char => Encoding::SignedChar,
                        constants::DW_ATE_unsigned_char => Encoding::UnsignedChar,
                        constants::DW_ATE_float => Encoding::Float,
                        constants::DW_ATE_complex_float => Encoding::ComplexFloat,
                        constants::DW_ATE_boolean => Encoding::Bool,
                        constants::DW_ATE_UTF => Encoding::Utf,
                        other => Encoding::Other(other.0),
                    },
                    _ => Encoding::Other(0),
                };
                let ty = Type::Base {
                    name: name.unwrap_or_else(|| "<unnamed base type>".into()),
                    encoding,
                    size: size.unwrap_or(0),
                };
                self.fill(cx, id, ty);
            }
            constants::DW_TAG_pointer_type
            | constants::DW_TAG_reference_type
            | constants::DW_TAG_rvalue_reference_type => {
                let ty = Type::Pointer {
                    target,
                    size: size.unwrap_or(u64::from(cx.unit.encoding().address_size)),
                    name,
                };
                self.fill(cx, id, ty);
            }
            constants::DW_TAG_const_type => {
                let t = target.unwrap_or(self.void);
                self.fill(cx, id, Type::Const(t));
            }
            constants::DW_TAG_volatile_type => {
                let t = target.unwrap_or(self.void);
                self.fill(cx, id, Type::Volatile(t));
            }
            constants::DW_TAG_restrict_type
            | constants::DW_TAG_atomic_type
            | constants::DW_TAG_immutable_type
            | constants::DW_TAG_packed_type
            | constants::DW_TAG_shared_type => {
                let t = target.unwrap_or(self.void);
                self.alias(id, t);
            }
            constants::DW_TAG_typedef => {
                let t = target.unwrap_or(self.void);
                let ty = Type::Typedef {
                    name: name
                        .map(|n| scope.qualify(cx.lang, &n))
                        .unwrap_or_else(|| "<unnamed typedef>".into()),
                    target: t,
                };
                self.fill(cx, id, ty);
            }
            constants::DW_TAG_structure_type
            | constants::DW_TAG_class_type
            | constants::DW_TAG_union_type => {
                let qualified = name.as_deref().map(|n| scope.qualify(cx.lang, n));
                let inner = scope.child(name.clone().unwrap_or_else(|| "{anon}".into()));
                let mut members = Vec::new();
                let mut variant_part = None;
                let mut children = node.children();
                while let Some(child) = children.next()? {
                    match child.entry().tag() {
                        constants::DW_TAG_member | constants::DW_TAG_inheritance => {
                            if let Some(m) = self.member(cx, child.entry(), id, members.len()) {
                                members.push(m);
                            }
                        }
                        constants::DW_TAG_variant_part => {
                            variant_part = Some(self.variant_part(cx, child, &inner)?);
                        }
                        _ => self.node(cx, child, &inner)?,
                    }
                }
                let ty = match variant_part {
                    Some((discriminant, variants)) if tag != constants::DW_TAG_union_type => {
                        if !members.is_empty() {
                            self.notes.push(format!(
                                "{}: members beside the variant part are not modelled",
                                qualified.as_deref().unwrap_or("<anonymous>")
                            ));
                        }
                        Type::VariantEnum(VariantEnum {
                            name: qualified,
                            size,
                            discriminant,
                            variants,
                        })
                    }
                    _ => {
                        let c = Composite {
                            name: qualified,
                            size: if declaration { None } else { size },
                            members,
                            declaration,
                        };
                        if tag == constants::DW_TAG_union_type {
                            Type::Union(c)
                        } else {
                            Type::Struct(c)
                        }
                    }
                };
                self.fill(cx, id, ty);
            }
            constants::DW_TAG_enumeration_type => {
                let qualified = name.as_deref().map(|n| scope.qualify(cx.lang, n));
                let inner = scope.child(name.clone().unwrap_or_else(|| "{anon}".into()));
                let mut enumerators = Vec::new();
                let mut signed = match entry.attr_value(constants::DW_AT_encoding) {
                    Some(AttributeValue::Encoding(e)) => {
                        Some(e == constants::DW_ATE_signed || e == constants::DW_ATE_signed_char)
                    }
                    _ => None,
                };
                let mut children = node.children();
                while let Some(child) = children.next()? {
                    let e = child.entry();
                    if e.tag() == constants::DW_TAG_enumerator {
                        let n = self.name(cx, e).unwrap_or_default();
                        // gcc writes negative values as DW_FORM_sdata and others in the
                        // smallest DW_FORM_dataN, unsigned (200 in an `int` enum is data1
                        // 0xc8); LLVM writes sdata or udata.
                        let value = e.attr_value(constants::DW_AT_const_value);
                        if let Some(AttributeValue::Sdata(v)) = value {
                            if v < 0 {
                                signed.get_or_insert(true);
                            }
                        }
                        let v = value.as_ref().and_then(raw_const).map_or(0, |(v, _)| v);
                        enumerators.push((n, v as i64));
                    } else {
                        self.node(cx, child, &inner)?;
                    }
                }
                if let Some(s) = signed {
                    self.enum_signed.insert(id, s);
                }
                let ty = Type::Enum(EnumType {
                    name: qualified,
                    size,
                    signed: false,
                    underlying: target,
                    enumerators,
                    declaration,
                });
                self.fill(cx, id, ty);
            }
            constants::DW_TAG_array_type => {
                let element = match target {
                    Some(t) => t,
                    None => self.unknown("array without element type"),
                };
                let mut dims = Vec::new();
                let mut children = node.children();
                while let Some(child) = children.next()? {
                    let e = child.entry();
                    match e.tag() {
                        constants::DW_TAG_subrange_type | constants::DW_TAG_generic_subrange => {
                            dims.push(subrange_count(e));
                        }
                        constants::DW_TAG_enumeration_type => {
                            dims.push(None);
                            self.node(cx, child, scope)?;
                        }
                        _ => {}
                    }
                }
                if dims.is_empty() {
                    dims.push(None);
                }
                self.fill(cx, id, Type::Array { element, dims });
            }
            constants::DW_TAG_subroutine_type => {
                let prototyped = flag(entry, constants::DW_AT_prototyped) || cx.lang != Language::C;
                let mut params = Vec::new();
                let mut variadic = false;
                let mut children = node.children();
                while let Some(child) = children.next()? {
                    let e = child.entry();
                    match e.tag() {
                        constants::DW_TAG_formal_parameter => {
                            let p = match self.type_ref(cx, e, constants::DW_AT_type) {
                                Some(t) => t,
                                None => self.unknown("parameter without a type"),
                            };
                            params.push(p);
                        }
                        constants::DW_TAG_unspecified_parameters => variadic = true,
                        _ => {}
                    }
                }
                let ty = Type::Function {
                    ret: target,
                    params,
                    variadic,
                    prototyped,
                };
                self.fill(cx, id, ty);
            }
            // Assembler units describe their functions' results this way; C++ uses it for
            // `decltype(nullptr)`.
            constants::DW_TAG_unspecified_type if name.as_deref().is_none_or(|n| n == "void") => {
                self.alias(id, self.void);
            }
            other => {
                let what = match &name {
                    Some(n) => format!("{other} {n}"),
                    None => other.to_string(),
                };
                *self.skipped_tags.entry(other.to_string()).or_default() += 1;
                self.fill(cx, id, Type::Unknown { what });
            }
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn variant_part(
        &mut self,
        cx: &UnitCx<'_, 'd>,
        node: gimli::EntriesTreeNode<'_, '_, R<'d>>,
        scope: &Scope,
    ) -> gimli::Result<(Option<Member>, Vec<Variant>)> {
        let discr_at = match node.entry().attr_value(constants::DW_AT_discr) {
            Some(AttributeValue::UnitRef(o)) => Some(o),
            _ => None,
        };
        let owner = self.void; // variant members are never pending bit-fields
        let mut discriminant = None;
        let mut variants = Vec::new();
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            match e.tag() {
                constants::DW_TAG_member => {
                    let off = e.offset();
                    if let Some(m) = self.member(cx, e, owner, usize::MAX) {
                        if discr_at.is_none() || discr_at == Some(off) {
                            discriminant = Some(m);
                        }
                    }
                }
                constants::DW_TAG_variant => {
                    let discr_value = match e.attr_value(constants::DW_AT_discr_value) {
                        Some(AttributeValue::Data16(v)) => Some(v),
                        Some(v) => raw_const(&v).map(|(v, _)| u128::from(v)),
                        None => None,
                    };
                    if e.attr_value(constants::DW_AT_discr_list).is_some() {
                        self.notes
                            .push("DW_AT_discr_list on a variant is not modelled".into());
                    }
                    let mut fields = Vec::new();
                    let mut vc = child.children();
                    while let Some(grand) = vc.next()? {
                        if grand.entry().tag() == constants::DW_TAG_member {
                            if let Some(m) = self.member(cx, grand.entry(), owner, usize::MAX) {
                                fields.push(m);
                            }
                        } else {
                            self.node(cx, grand, scope)?;
                        }
                    }
                    if fields.len() > 1 {
                        self.notes.push(format!(
                            "variant with {} members: only the first is modelled",
                            fields.len()
                        ));
                    }
                    if let Some(m) = fields.into_iter().next() {
                        variants.push(Variant {
                            name: m.name,
                            discr_value,
                            ty: m.ty,
                            offset: m.offset,
                        });
                    }
                }
                _ => self.node(cx, child, scope)?,
            }
        }
        Ok((discriminant, variants))
    }

    /// Resolves aliases, finishes layouts that needed other types' sizes, merges identical
    /// types and assembles the result.
    fn finish(mut self) -> Parsed {
        let n = self.types.len();
        let type_dies = self.by_key.len();
        // 1. Resolve alias chains to their final type.
        let mut resolve: Vec<TypeId> = (0..n as u32).map(TypeId).collect();
        let mut dead = vec![false; n];
        for (&from, _) in self.aliases.iter() {
            dead[from.index()] = true;
            let mut t = from;
            let mut steps = 0;
            while let Some(&next) = self.aliases.get(&t) {
                t = next;
                steps += 1;
                if steps > 64 {
                    t = self.void;
                    break;
                }
            }
            resolve[from.index()] = t;
        }
        for t in &mut self.types {
            t.map_refs(&mut |r| resolve[r.index()]);
        }
        for v in &mut self.variables {
            v.ty = resolve[v.ty.index()];
        }
        for v in &mut self.thread_locals {
            v.ty = resolve[v.ty.index()];
        }
        for_each_local(&mut self.subprograms, |v| v.ty = resolve[v.ty.index()]);
        // Placeholders never filled: references to DIEs that are not types we walked.
        let unresolved = (0..n).filter(|&i| !self.filled[i]).count();
        if unresolved > 0 {
            self.notes.push(format!(
                "{unresolved} type references could not be resolved (modelled as unknown types)"
            ));
        }

        // 2. DWARF 2-4 bit-fields: position counted from the storage unit's top bit.
        let pending = std::mem::take(&mut self.pending_bits);
        for p in pending {
            let (Type::Struct(c) | Type::Union(c)) = &self.types[p.ty.index()] else {
                continue;
            };
            let Some(m) = c.members.get(p.member) else {
                continue;
            };
            let storage = p.storage.or_else(|| raw_byte_size(&self.types, m.ty));
            let Some(storage) = storage else { continue };
            let bit_size = m.bit_field.map_or(0, |b| b.bit_size);
            let Some(pos) = (p.location * 8 + storage * 8).checked_sub(p.bit_offset + bit_size)
            else {
                continue;
            };
            if let Type::Struct(c) | Type::Union(c) = &mut self.types[p.ty.index()] {
                let m = &mut c.members[p.member];
                m.offset = pos / 8;
                m.bit_field = Some(BitField {
                    bit_offset: (pos % 8) as u8,
                    bit_size,
                });
            }
        }

        // 3. Enum signedness; variant discriminants masked to the width of the discriminant
        // member.
        for i in 0..n {
            let signed = match &self.types[i] {
                Type::Enum(e) => match e.underlying.map(|u| raw_strip(&self.types, u)) {
                    Some(Type::Base { encoding, .. }) => encoding.is_signed(),
                    _ => self
                        .enum_signed
                        .get(&TypeId(i as u32))
                        .copied()
                        .unwrap_or(false),
                },
                _ => continue,
            };
            if let Type::Enum(e) = &mut self.types[i] {
                e.signed = signed;
            }
        }
        for i in 0..n {
            let Type::VariantEnum(v) = &self.types[i] else {
                continue;
            };
            let Some(bytes) = v
                .discriminant
                .as_ref()
                .and_then(|d| raw_byte_size(&self.types, d.ty))
            else {
                continue;
            };
            if bytes >= 16 {
                continue;
            }
            let mask = (1u128 << (bytes * 8)) - 1;
            if let Type::VariantEnum(v) = &mut self.types[i] {
                for var in &mut v.variants {
                    if let Some(d) = &mut var.discr_value {
                        *d &= mask;
                    }
                }
            }
        }

        // 4. A variable whose abstract origin was declared in another unit or function (LTO)
        // belongs there.
        for &(tls, i, key) in &self.pending_origins {
            let Some((cu, function)) = self.origins.get(&key) else {
                continue;
            };
            let cu_name = self.units[cu.0 as usize].name.clone();
            let (unit, kind) = if tls {
                let v = &mut self.thread_locals[i];
                (&mut v.unit, &mut v.kind)
            } else {
                let v = &mut self.variables[i];
                (&mut v.unit, &mut v.kind)
            };
            *unit = *cu;
            if *kind != VariableKind::Global {
                *kind = match function {
                    Some(f) => VariableKind::FunctionStatic {
                        cu: cu_name,
                        function: f.to_string(),
                    },
                    None => VariableKind::FileStatic { cu: cu_name },
                };
            }
        }

        // 5. Merge structurally identical types.
        let remap = dedup::dedupe(&mut self.types, &mut self.langs, &dead);
        for v in &mut self.variables {
            v.ty = remap[v.ty.index()];
        }
        for v in &mut self.thread_locals {
            v.ty = remap[v.ty.index()];
        }
        for_each_local(&mut self.subprograms, |v| v.ty = remap[v.ty.index()]);
        let types = Types::new(self.types, self.langs);
        for v in &mut self.variables {
            v.size = types.byte_size(v.ty);
        }

        if !self.thread_locals.is_empty() {
            self.notes.push(format!(
                "{} thread-local variables are listed apart (their offsets are relative to each thread's TLS block)",
                self.thread_locals.len()
            ));
        }
        if self.zero_address_vars > 0 {
            self.notes.push(format!(
                "{} variables at address 0 skipped (discarded by the linker)",
                self.zero_address_vars
            ));
        }
        let mut skipped: Vec<_> = self.skipped_tags.into_iter().collect();
        skipped.sort();
        for (tag, count) in skipped {
            self.notes.push(format!(
                "{count} types of kind {tag} are modelled as unknown"
            ));
        }
        self.functions.sort_by_key(|f| (f.low_pc, f.high_pc));
        Parsed {
            subprograms: self.subprograms,
            types,
            units: self.units,
            variables: self.variables,
            thread_locals: self.thread_locals,
            functions: self.functions,
            notes: self.notes,
            type_dies,
        }
    }
}

fn for_each_local(subprograms: &mut [Subprogram], mut f: impl FnMut(&mut LocalVariable)) {
    for s in subprograms {
        for b in &mut s.blocks {
            b.variables.iter_mut().for_each(&mut f);
        }
    }
}

/// A bound of a subrange: `DW_FORM_sdata` is signed, the other constant forms unsigned (gcc
/// writes the 255 of `char b[256]` as data1 0xff) except an all-ones 64-bit value, which older
/// gcc used for the -1 upper bound of `int a[0]`.
fn bound(v: &AttributeValue<R<'_>>) -> Option<i128> {
    let (raw, _) = raw_const(v)?;
    Some(match v {
        AttributeValue::Sdata(s) => i128::from(*s),
        _ if raw == u64::MAX => -1,
        _ => i128::from(raw),
    })
}

/// Element count of a `DW_TAG_subrange_type`: `DW_AT_count`, or upper - lower + 1.
/// `None` when unknown (no bounds: flexible array; non-constant bounds: VLA).
fn subrange_count(e: &Entry<'_>) -> Option<u64> {
    if let Some(v) = e.attr_value(constants::DW_AT_count) {
        return raw_const(&v).map(|(v, _)| v);
    }
    let upper = bound(&e.attr_value(constants::DW_AT_upper_bound)?)?;
    let lower = e
        .attr_value(constants::DW_AT_lower_bound)
        .as_ref()
        .and_then(bound)
        .unwrap_or(0);
    u64::try_from((upper - lower + 1).max(0)).ok()
}

/// Follows typedefs and qualifiers in the raw table.
fn raw_strip(types: &[Type], id: TypeId) -> &Type {
    let mut id = id;
    for _ in 0..64 {
        match &types[id.index()] {
            Type::Typedef { target, .. } => id = *target,
            Type::Const(t) | Type::Volatile(t) => id = *t,
            t => return t,
        }
    }
    &types[id.index()]
}

/// Size of a scalar-ish type in the raw table (enough for bit-field storage units and
/// discriminants).
fn raw_byte_size(types: &[Type], id: TypeId) -> Option<u64> {
    match raw_strip(types, id) {
        Type::Base { size, .. } | Type::Pointer { size, .. } => Some(*size),
        Type::Enum(e) => e.size,
        Type::Struct(c) | Type::Union(c) => c.size,
        _ => None,
    }
}
