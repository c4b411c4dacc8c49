//! The type model: a closed enum of types keyed by [`TypeId`], built once per binary from its
//! DWARF, and the questions the rest of transplant asks of it (sizes, names, layouts).
//!
//! Ids index one table ([`Types`]); a type refers to others only by id, so recursive types
//! (`struct node { struct node *next; }`) need no indirection and the model is plain data.
//! Structurally identical types from different compilation units share one id (see
//! `dedup.rs`), so `struct point` defined in two `.c` files is one type.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Index of a type in its binary's [`Types`] table. Only meaningful with the table it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct TypeId(pub u32);

impl TypeId {
    /// The table index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Source language of a compilation unit (and of the types it defines), which decides how
/// type names are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Language {
    /// Any C standard (`DW_LANG_C89` .. `DW_LANG_C17`).
    C,
    /// Rust.
    Rust,
    /// Any C++ standard; names are rendered C-style.
    Cpp,
    /// Anything else (assembler, Fortran, ...), with its `DW_LANG_*` code.
    Other(u16),
}

/// How the bits of a base type are to be read (`DW_AT_encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Encoding {
    /// Two's complement signed integer.
    Signed,
    /// Unsigned integer.
    Unsigned,
    /// C `char` or `signed char` (`DW_ATE_signed_char`).
    SignedChar,
    /// C `unsigned char` (`DW_ATE_unsigned_char`).
    UnsignedChar,
    /// IEEE binary floating point (x87 80-bit for a 16-byte `long double`).
    Float,
    /// A pair of floats (`_Complex`).
    ComplexFloat,
    /// Boolean: zero is false.
    Bool,
    /// A Unicode code point (Rust `char`, C `char32_t`).
    Utf,
    /// Any other `DW_ATE_*` code.
    Other(u8),
}

impl Encoding {
    /// Whether the value is a signed integer (or signed character).
    pub fn is_signed(self) -> bool {
        matches!(self, Encoding::Signed | Encoding::SignedChar)
    }
}

/// Position of a bit-field inside its containing struct: the field's least significant bit is
/// bit `bit_offset` (0 = least significant bit, x86_64 is little endian) of the byte at the
/// member's `offset`, and it is `bit_size` bits wide, possibly running over following bytes.
/// This is the normalised form of both `DW_AT_data_bit_offset` (DWARF 4/5) and the older
/// `DW_AT_bit_offset` + `DW_AT_byte_size`, and what gdb's `ptype /o` prints as `byte: bit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct BitField {
    /// Bit within the byte at the member's offset where the field starts (0..8).
    pub bit_offset: u8,
    /// Width in bits.
    pub bit_size: u64,
}

/// A data member of a struct or union (or the discriminant of a Rust enum).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Member {
    /// Member name; `None` for anonymous struct/union members (C11) and artificial members.
    pub name: Option<String>,
    /// Member type.
    pub ty: TypeId,
    /// Byte offset from the start of the containing object (for a bit-field, of the byte
    /// holding its lowest bit).
    pub offset: u64,
    /// Present for bit-fields.
    pub bit_field: Option<BitField>,
}

/// A struct or union type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Composite {
    /// Tag name (C: `point` for `struct point`; Rust: the full path such as
    /// `core::option::Option<u32>`); `None` for anonymous types.
    pub name: Option<String>,
    /// `sizeof`, absent for declarations.
    pub size: Option<u64>,
    /// Data members in declaration order.
    pub members: Vec<Member>,
    /// Only declared here (`struct opaque;`): no size and no members. See
    /// [`Types::definition_of`] to find the definition elsewhere in the binary.
    pub declaration: bool,
}

/// An enumerated type (C `enum`, Rust fieldless `enum`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct EnumType {
    /// Tag name (Rust: full path); `None` for anonymous enums.
    pub name: Option<String>,
    /// Size in bytes of the underlying integer; absent for declarations.
    pub size: Option<u64>,
    /// Whether the underlying integer is signed.
    pub signed: bool,
    /// The underlying integer type, when DWARF names it.
    pub underlying: Option<TypeId>,
    /// Enumerators in declaration order. Values of unsigned 64-bit enums above `i64::MAX`
    /// are stored as their two's complement bit pattern.
    pub enumerators: Vec<(String, i64)>,
    /// Only declared here.
    pub declaration: bool,
}

/// One alternative of a [`VariantEnum`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Variant {
    /// Variant name (`Some`, `Err`, `Move`).
    pub name: Option<String>,
    /// The discriminant value selecting this variant, as the unsigned bit pattern of the
    /// discriminant member; `None` for the default variant (the dataful variant of a niche
    /// layout, which is selected by every value not listed on another variant).
    pub discr_value: Option<u128>,
    /// The variant's fields as a struct type (`core::option::Option<u32>::Some` with `__0`).
    pub ty: TypeId,
    /// Offset of that struct inside the enum (0 in rustc's output).
    pub offset: u64,
}

/// A Rust enum with data, described by `DW_TAG_variant_part`: a discriminant member (a tag or,
/// for niche layouts, a field of the dataful variant) and the variants it selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct VariantEnum {
    /// Full path, such as `core::result::Result<u8, i64>`.
    pub name: Option<String>,
    /// `size_of`.
    pub size: Option<u64>,
    /// Where the discriminant is read; `None` for single-variant enums.
    pub discriminant: Option<Member>,
    /// The variants, in DWARF order.
    pub variants: Vec<Variant>,
}

impl VariantEnum {
    /// The variant selected by a discriminant value (read as unsigned bits of the
    /// discriminant member): the one listing it, otherwise the default variant.
    pub fn variant_for(&self, discr: u128) -> Option<&Variant> {
        self.variants
            .iter()
            .find(|v| v.discr_value == Some(discr))
            .or_else(|| self.variants.iter().find(|v| v.discr_value.is_none()))
    }
}

/// Every kind of type the model knows. Closed: anything DWARF describes that transplant does
/// not model becomes [`Type::Unknown`] with a description, so callers can fail closed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Type {
    /// An integer, float, bool or character type.
    Base {
        /// Name as the compiler wrote it (`long unsigned int`, `u32`).
        name: String,
        /// How to read the bits.
        encoding: Encoding,
        /// Size in bytes.
        size: u64,
    },
    /// A thin pointer (C pointers, Rust references and raw pointers to sized types).
    Pointer {
        /// Pointee; `None` for `void *`.
        target: Option<TypeId>,
        /// Size in bytes (8 on x86_64).
        size: u64,
        /// Name given by the compiler (rustc names its pointers: `&u32`, `*mut u8`).
        name: Option<String>,
    },
    /// A struct (or C++ class).
    Struct(Composite),
    /// A union.
    Union(Composite),
    /// An enumeration.
    Enum(EnumType),
    /// A Rust enum with data (`DW_TAG_variant_part`): `Option`, `Result`, user enums.
    VariantEnum(VariantEnum),
    /// An array; multi-dimensional C arrays keep all dimensions in one type, outermost first
    /// (`int m[3][4]` has dims `[3, 4]`).
    Array {
        /// Element type.
        element: TypeId,
        /// Element counts per dimension; `None` where unknown (flexible array member,
        /// `extern int a[];`). A zero-length array (`int z[0]`) has `Some(0)`.
        dims: Vec<Option<u64>>,
    },
    /// A typedef.
    Typedef {
        /// The new name.
        name: String,
        /// What it names.
        target: TypeId,
    },
    /// `const T`.
    Const(TypeId),
    /// `volatile T`.
    Volatile(TypeId),
    /// A function type, seen through function pointers.
    Function {
        /// Return type; `None` for `void`.
        ret: Option<TypeId>,
        /// Parameter types.
        params: Vec<TypeId>,
        /// Ends with `...`.
        variadic: bool,
        /// Declared with a prototype (C: `int f(void)` vs. `int f()`).
        prototyped: bool,
    },
    /// `void`, where a type is needed (`const void`).
    Void,
    /// A type transplant does not model, with what it is (`DW_TAG_ptr_to_member_type`, an
    /// unresolved reference, ...).
    Unknown {
        /// Description for messages.
        what: String,
    },
}

impl Type {
    /// Every type this one refers to directly, in a fixed order.
    pub(crate) fn for_each_ref(&self, f: &mut impl FnMut(TypeId)) {
        match self {
            Type::Pointer { target, .. } => target.iter().for_each(|&t| f(t)),
            Type::Struct(c) | Type::Union(c) => c.members.iter().for_each(|m| f(m.ty)),
            Type::Enum(e) => e.underlying.iter().for_each(|&t| f(t)),
            Type::VariantEnum(v) => {
                v.discriminant.iter().for_each(|m| f(m.ty));
                v.variants.iter().for_each(|v| f(v.ty));
            }
            Type::Array { element, .. } => f(*element),
            Type::Typedef { target, .. } => f(*target),
            Type::Const(t) | Type::Volatile(t) => f(*t),
            Type::Function { ret, params, .. } => {
                ret.iter().for_each(|&t| f(t));
                params.iter().for_each(|&t| f(t));
            }
            Type::Base { .. } | Type::Void | Type::Unknown { .. } => {}
        }
    }

    /// Rewrites every reference, in the order of [`Type::for_each_ref`].
    pub(crate) fn map_refs(&mut self, f: &mut impl FnMut(TypeId) -> TypeId) {
        match self {
            Type::Pointer { target, .. } => {
                if let Some(t) = target {
                    *t = f(*t)
                }
            }
            Type::Struct(c) | Type::Union(c) => c.members.iter_mut().for_each(|m| m.ty = f(m.ty)),
            Type::Enum(e) => {
                if let Some(t) = &mut e.underlying {
                    *t = f(*t)
                }
            }
            Type::VariantEnum(v) => {
                if let Some(m) = &mut v.discriminant {
                    m.ty = f(m.ty)
                }
                v.variants.iter_mut().for_each(|v| v.ty = f(v.ty));
            }
            Type::Array { element, .. } => *element = f(*element),
            Type::Typedef { target, .. } => *target = f(*target),
            Type::Const(t) | Type::Volatile(t) => *t = f(*t),
            Type::Function { ret, params, .. } => {
                if let Some(t) = ret {
                    *t = f(*t)
                }
                params.iter_mut().for_each(|t| *t = f(*t));
            }
            Type::Base { .. } | Type::Void | Type::Unknown { .. } => {}
        }
    }

    /// The type's own name, if it has one (tag, typedef or base type name; not a rendering).
    pub fn own_name(&self) -> Option<&str> {
        match self {
            Type::Base { name, .. } | Type::Typedef { name, .. } => Some(name),
            Type::Pointer { name, .. } => name.as_deref(),
            Type::Struct(c) | Type::Union(c) => c.name.as_deref(),
            Type::Enum(e) => e.name.as_deref(),
            Type::VariantEnum(v) => v.name.as_deref(),
            _ => None,
        }
    }
}

/// Which of Rust's fat pointers a struct is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum FatPointerKind {
    /// `&[T]`, `&mut [T]`, `*const [T]`, `Box<[T]>`: data pointer and element count.
    Slice,
    /// `&str` and friends: data pointer to UTF-8 bytes and byte length.
    Str,
    /// `&dyn Trait`, `Box<dyn Trait>`: data pointer and vtable pointer.
    Dyn,
}

/// A Rust fat pointer recognised in rustc's DWARF, which describes it as a two-member struct
/// (`data_ptr` + `length`, or `pointer` + `vtable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FatPointer {
    /// Which kind.
    pub kind: FatPointerKind,
    /// Offset of the data pointer.
    pub data_offset: u64,
    /// Type of the data pointer (a [`Type::Pointer`]).
    pub data_type: TypeId,
    /// What it points at: the element type of a slice, `u8` for `str`, the `dyn Trait`
    /// placeholder struct for trait objects.
    pub pointee: Option<TypeId>,
    /// Offset of the length or vtable pointer.
    pub meta_offset: u64,
    /// Type of the length (`usize`) or vtable pointer.
    pub meta_type: TypeId,
}

/// The types of one binary: a table indexed by [`TypeId`], with the language each type was
/// defined in and an index by name.
#[derive(Debug, Default)]
pub struct Types {
    types: Vec<Type>,
    langs: Vec<Language>,
    by_name: HashMap<String, Vec<TypeId>>,
}

/// Limit on chains of typedefs/qualifiers and on declarator nesting, against malformed DWARF.
const MAX_DEPTH: usize = 64;

impl Types {
    pub(crate) fn new(types: Vec<Type>, langs: Vec<Language>) -> Types {
        debug_assert_eq!(types.len(), langs.len());
        let mut by_name: HashMap<String, Vec<TypeId>> = HashMap::new();
        for (i, t) in types.iter().enumerate() {
            if let Some(n) = t.own_name() {
                by_name
                    .entry(n.to_owned())
                    .or_default()
                    .push(TypeId(i as u32));
            }
        }
        Types {
            types,
            langs,
            by_name,
        }
    }

    /// Number of types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether there are no types.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The type with id `id`. Panics if `id` is not from this table.
    pub fn get(&self, id: TypeId) -> &Type {
        &self.types[id.index()]
    }

    /// All types with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (TypeId, &Type)> {
        self.types
            .iter()
            .enumerate()
            .map(|(i, t)| (TypeId(i as u32), t))
    }

    /// Language of the compilation unit that defined the type.
    pub fn language(&self, id: TypeId) -> Language {
        self.langs[id.index()]
    }

    /// Types whose own name (struct/union/enum tag, typedef or base type name; for Rust the
    /// full path like `core::option::Option<u32>`) is `name`. Declarations and definitions of
    /// one tag are both listed; structurally different types of the same name (two `struct
    /// config` in different files) are listed separately.
    pub fn named(&self, name: &str) -> &[TypeId] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `sizeof` of the type as the model knows it: `None` for `void`, functions,
    /// declaration-only structs, unknown types and arrays with an unknown dimension (a
    /// flexible array member; the zero-length `int z[0]` is `Some(0)`).
    pub fn byte_size(&self, id: TypeId) -> Option<u64> {
        let mut id = id;
        for _ in 0..MAX_DEPTH {
            match self.get(id) {
                Type::Base { size, .. } | Type::Pointer { size, .. } => return Some(*size),
                Type::Struct(c) | Type::Union(c) => return c.size,
                Type::Enum(e) => return e.size,
                Type::VariantEnum(v) => return v.size,
                Type::Array { element, dims } => {
                    let mut n: u64 = 1;
                    for d in dims {
                        n = n.checked_mul((*d)?)?;
                    }
                    if n == 0 {
                        return Some(0);
                    }
                    return self.byte_size(*element)?.checked_mul(n);
                }
                Type::Typedef { target, .. } => id = *target,
                Type::Const(t) | Type::Volatile(t) => id = *t,
                Type::Function { .. } | Type::Void | Type::Unknown { .. } => return None,
            }
        }
        None
    }

    /// Follows typedefs, `const` and `volatile` to the type underneath.
    pub fn strip_typedefs_cv(&self, id: TypeId) -> TypeId {
        let mut id = id;
        for _ in 0..MAX_DEPTH {
            match self.get(id) {
                Type::Typedef { target, .. } => id = *target,
                Type::Const(t) | Type::Volatile(t) => id = *t,
                _ => return id,
            }
        }
        id
    }

    /// For a declaration-only struct, union or enum (`struct opaque;`), the one definition of
    /// the same kind and name elsewhere in the binary; otherwise (already a definition, no
    /// definition, or several different ones) `id` itself.
    pub fn definition_of(&self, id: TypeId) -> TypeId {
        let (name, want) = match self.get(id) {
            Type::Struct(c) if c.declaration => (c.name.as_deref(), 0),
            Type::Union(c) if c.declaration => (c.name.as_deref(), 1),
            Type::Enum(e) if e.declaration => (e.name.as_deref(), 2),
            _ => return id,
        };
        let Some(name) = name else { return id };
        let mut found = None;
        for &cand in self.named(name) {
            let ok = match self.get(cand) {
                Type::Struct(c) => want == 0 && !c.declaration,
                Type::Union(c) => want == 1 && !c.declaration,
                Type::Enum(e) => want == 2 && !e.declaration,
                _ => false,
            };
            if ok {
                if found.is_some() {
                    return id;
                }
                found = Some(cand);
            }
        }
        found.unwrap_or(id)
    }

    /// Recognises a Rust fat pointer (`&[T]`, `&str`, `Box<dyn Trait>`, ...).
    pub fn fat_pointer(&self, id: TypeId) -> Option<FatPointer> {
        let id = self.strip_typedefs_cv(id);
        if self.language(id) != Language::Rust {
            return None;
        }
        let Type::Struct(c) = self.get(id) else {
            return None;
        };
        let [a, b] = c.members.as_slice() else {
            return None;
        };
        let kind = match (a.name.as_deref()?, b.name.as_deref()?) {
            ("data_ptr", "length") => FatPointerKind::Slice,
            ("pointer", "vtable") => FatPointerKind::Dyn,
            _ => return None,
        };
        let Type::Pointer { target, .. } = self.get(self.strip_typedefs_cv(a.ty)) else {
            return None;
        };
        let name = c.name.as_deref().unwrap_or("");
        let kind = if kind == FatPointerKind::Slice && name.ends_with("str") {
            FatPointerKind::Str
        } else {
            kind
        };
        Some(FatPointer {
            kind,
            data_offset: a.offset,
            data_type: a.ty,
            pointee: *target,
            meta_offset: b.offset,
            meta_type: b.ty,
        })
    }

    /// The type as gdb's `whatis` would print it: C declarator syntax for C types
    /// (`struct node *`, `int [3][4]`, `char (*)[16]`, `int (*[2])(int, int)`,
    /// `const char * const`), with gcc's integer names shortened as gdb does (`long unsigned
    /// int` is `unsigned long`); Rust syntax and paths for Rust types
    /// (`core::option::Option<u32>`, `&str`, `[u16; 3]`).
    pub fn name(&self, id: TypeId) -> String {
        if self.language(id) == Language::Rust {
            let mut s = String::new();
            self.rust_name(id, &mut s, 0);
            s
        } else {
            self.c_decl(id, String::new(), Cv::default(), 0)
        }
    }

    fn c_leaf(&self, id: TypeId) -> String {
        match self.get(id) {
            Type::Base { name, .. } => c_base_name(name).to_owned(),
            Type::Struct(c) => tagged("struct", c.name.as_deref()),
            Type::Union(c) => tagged("union", c.name.as_deref()),
            Type::Enum(e) => tagged("enum", e.name.as_deref()),
            Type::VariantEnum(v) => v.name.clone().unwrap_or_else(|| "enum {...}".into()),
            Type::Typedef { name, .. } => name.clone(),
            Type::Void => "void".into(),
            Type::Unknown { what } => format!("<unknown type: {what}>"),
            // Not leaves; only reached through depth exhaustion.
            _ => "?".into(),
        }
    }

    /// Renders `id` around `decl`, the declarator built so far, carrying qualifiers `cv`
    /// that apply to `id` itself.
    fn c_decl(&self, id: TypeId, decl: String, cv: Cv, depth: usize) -> String {
        if depth > MAX_DEPTH {
            return join(&format!("{}...", self.c_leaf(id)), &decl);
        }
        match self.get(id) {
            Type::Const(t) => self.c_decl(*t, decl, Cv { c: true, ..cv }, depth + 1),
            Type::Volatile(t) => self.c_decl(*t, decl, Cv { v: true, ..cv }, depth + 1),
            Type::Pointer { target, .. } => {
                let mut d = String::from("*");
                d.push_str(cv.suffix());
                if !decl.is_empty() {
                    if !cv.is_empty() {
                        d.push(' ');
                    }
                    d.push_str(&decl);
                }
                match target {
                    None => join("void", &d),
                    Some(t) => {
                        let d = if self.is_array_or_function(*t) {
                            format!("({d})")
                        } else {
                            d
                        };
                        self.c_decl(*t, d, Cv::default(), depth + 1)
                    }
                }
            }
            Type::Array { element, dims } => {
                let mut d = decl;
                for dim in dims {
                    match dim {
                        Some(n) => {
                            let _ = write!(d, "[{n}]");
                        }
                        None => d.push_str("[]"),
                    }
                }
                // Qualifiers of an array apply to its elements.
                self.c_decl(*element, d, cv, depth + 1)
            }
            Type::Function {
                ret,
                params,
                variadic,
                prototyped,
            } => {
                let mut d = decl;
                d.push('(');
                let mut first = true;
                for p in params {
                    if !first {
                        d.push_str(", ");
                    }
                    first = false;
                    d.push_str(&self.c_decl(*p, String::new(), Cv::default(), depth + 1));
                }
                // gcc marks unprototyped functions (`int f()`) with unspecified
                // parameters too; C prints them as `()`.
                if *variadic && *prototyped {
                    d.push_str(if first { "..." } else { ", ..." });
                } else if first && *prototyped {
                    d.push_str("void");
                }
                d.push(')');
                match ret {
                    None => join("void", &d),
                    Some(r) => self.c_decl(*r, d, Cv::default(), depth + 1),
                }
            }
            _ => join(&format!("{}{}", cv.prefix(), self.c_leaf(id)), &decl),
        }
    }

    fn is_array_or_function(&self, id: TypeId) -> bool {
        let mut id = id;
        for _ in 0..MAX_DEPTH {
            match self.get(id) {
                Type::Const(t) | Type::Volatile(t) => id = *t,
                Type::Array { .. } | Type::Function { .. } => return true,
                _ => return false,
            }
        }
        false
    }

    fn rust_name(&self, id: TypeId, out: &mut String, depth: usize) {
        if depth > MAX_DEPTH {
            out.push_str("...");
            return;
        }
        match self.get(id) {
            Type::Pointer { name: Some(n), .. } => out.push_str(n),
            Type::Pointer { target, .. } => {
                out.push_str("*mut ");
                match target {
                    Some(t) => self.rust_name(*t, out, depth + 1),
                    None => out.push_str("()"),
                }
            }
            Type::Array { element, dims } => {
                for _ in dims {
                    out.push('[');
                }
                self.rust_name(*element, out, depth + 1);
                for d in dims.iter().rev() {
                    match d {
                        Some(n) => {
                            let _ = write!(out, "; {n}]");
                        }
                        None => out.push(']'),
                    }
                }
            }
            Type::Function {
                ret,
                params,
                variadic,
                ..
            } => {
                out.push_str("fn(");
                for (i, p) in params.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    self.rust_name(*p, out, depth + 1);
                }
                if *variadic {
                    out.push_str(if params.is_empty() { "..." } else { ", ..." });
                }
                out.push(')');
                if let Some(r) = ret {
                    out.push_str(" -> ");
                    self.rust_name(*r, out, depth + 1);
                }
            }
            Type::Const(t) | Type::Volatile(t) => self.rust_name(*t, out, depth + 1),
            Type::Void => out.push_str("()"),
            Type::Struct(Composite { name: None, .. })
            | Type::Union(Composite { name: None, .. }) => out.push_str("{...}"),
            t => match t.own_name() {
                Some(n) => out.push_str(n),
                None => out.push_str(&self.c_leaf(id)),
            },
        }
    }
}

/// Pending `const`/`volatile` qualifiers while rendering a C declarator.
#[derive(Clone, Copy, Default)]
struct Cv {
    c: bool,
    v: bool,
}

impl Cv {
    fn is_empty(self) -> bool {
        !self.c && !self.v
    }
    fn prefix(self) -> &'static str {
        match (self.c, self.v) {
            (true, true) => "const volatile ",
            (true, false) => "const ",
            (false, true) => "volatile ",
            (false, false) => "",
        }
    }
    fn suffix(self) -> &'static str {
        match (self.c, self.v) {
            (true, true) => " const volatile",
            (true, false) => " const",
            (false, true) => " volatile",
            (false, false) => "",
        }
    }
}

fn join(leaf: &str, decl: &str) -> String {
    if decl.is_empty() {
        leaf.to_owned()
    } else {
        format!("{leaf} {decl}")
    }
}

fn tagged(kw: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{kw} {n}"),
        None => format!("{kw} {{...}}"),
    }
}

/// gcc's names for integer types as gdb prints them.
fn c_base_name(name: &str) -> &str {
    match name {
        "long int" => "long",
        "long unsigned int" => "unsigned long",
        "short int" => "short",
        "short unsigned int" => "unsigned short",
        "long long int" => "long long",
        "long long unsigned int" => "unsigned long long",
        other => other,
    }
}
