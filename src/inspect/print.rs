//! Values rendered from their bytes exactly as gdb 13's `print` shows them for C programs, with
//! gdb's default settings (`print pretty off`, `print elements 200`, `print repeats 10`,
//! `print max-depth 20`, `print symbol on`, `print null-stop off`) and gdb running in the C
//! locale (ASCII host charset: every byte or character outside printable ASCII is escaped).
//!
//! The rules follow gdb's C value printer (`c-valprint.c`, `valprint.c`, `c-lang.c`):
//! - integers in decimal; one-byte integers (`char`, `signed char`, `unsigned char`, `int8_t`)
//!   and `wchar_t`/`char16_t`/`char32_t` also as a character: `97 'a'`, `0 '\000'`, `65 L'A'`;
//! - `_Bool` as `true`/`false` (other values as numbers); floats with `%g` and enough digits to
//!   read back (see [`super::float`]); complex numbers as `1 + -2i`;
//! - enums by enumerator; a "flag enum" (every enumerator zero or a single bit) decomposed as
//!   `(A | B)` / `(A | unknown: 0x8)`, any other unknown value as a number;
//! - pointers as `0x55555555a2a0`, followed by ` <symbol+offset>` when the address is in a
//!   symbol (asked of an [`AddressNamer`]) and, for pointers to characters, by the string they
//!   point to (read from memory, at most 200 characters, `...` after a longer one,
//!   `<error: Cannot access memory at address 0x..>` when unreadable); `0x0` for NULL;
//! - structs and unions as `{a = 1, b = {x = 2}}`, anonymous members without a name,
//!   `{<No data fields>}` when empty, `{...}` beyond nesting depth 20; bit-fields by value;
//! - arrays as `{1, 2, 3}`, a run of more than 10 identical elements (byte-wise) as
//!   `0 <repeats 16 times>`, at most 200 elements (a run counting 10) then `...`; arrays of
//!   characters as strings, `"abc\000\000"` / `"abc", '\000' <repeats 12 times>`, with one
//!   trailing NUL dropped; arrays of unknown or zero length (flexible array members) as a
//!   pointer to their first element;
//! - at top level ([`Printer::print`]), a pointer is prefixed with its type, `(int *) 0x...`,
//!   except a plain pointer to `char`, `wchar_t`, `char16_t` or `char32_t`; a function (not a
//!   function pointer) is `{int (int)} 0x... <fn>`.
//!
//! Typedefs, `const` and `volatile` are transparent. The printer reads memory only for strings
//! behind pointers; everything else comes from the bytes it is given. Rust values (which gdb
//! prints in Rust syntax) are refused with [`PrintError::Unsupported`].

use std::fmt::Write as _;

use tracer::{Memory, RemoteAddr};

use crate::debuginfo::{Composite, Encoding, EnumType, Language, Member, Type, TypeId, Types};

use super::float::{format_float, FloatFormat};

/// The name gdb shows for an address: `<name>` or `<name+offset>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressName {
    /// Symbol (or function) name.
    pub name: String,
    /// Distance of the address from the symbol's start.
    pub offset: u64,
}

/// Names addresses the way gdb's `print` does after a pointer value (`<g_nodes+16>`,
/// `<add>`); see [`super::symbols::GdbSymbols`] for the live-process implementation. Any
/// `Fn(RemoteAddr) -> Option<AddressName>` is one, for tests.
pub trait AddressNamer {
    /// The symbol `addr` is shown with, or `None` to show the bare address.
    fn name_address(&self, addr: RemoteAddr) -> Option<AddressName>;
}

impl<F: Fn(RemoteAddr) -> Option<AddressName>> AddressNamer for F {
    fn name_address(&self, addr: RemoteAddr) -> Option<AddressName> {
        self(addr)
    }
}

/// gdb's `print` limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `print elements`: array elements and string characters shown at most.
    pub elements: usize,
    /// `print repeats`: runs longer than this are collapsed into `<repeats N times>`.
    pub repeats: usize,
    /// `print max-depth`: nesting of structs, unions and arrays shown before `{...}`.
    pub max_depth: usize,
}

impl Default for Limits {
    /// gdb's defaults: 200, 10, 20.
    fn default() -> Self {
        Limits {
            elements: 200,
            repeats: 10,
            max_depth: 20,
        }
    }
}

/// Why a value could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrintError {
    /// The type (or a type inside it) is one the printer does not render.
    #[error("cannot print a value of type `{type_name}`: {why}")]
    Unsupported {
        /// The type, as gdb names it.
        type_name: String,
        /// What is missing.
        why: String,
    },
    /// Fewer bytes were given than the type needs.
    #[error("value of type `{type_name}` needs {needed} bytes, {got} given")]
    Short {
        /// The type.
        type_name: String,
        /// Its size.
        needed: u64,
        /// Bytes available.
        got: usize,
    },
}

/// Renders values of one binary's types. Cheap to build; holds only references.
pub struct Printer<'a> {
    types: &'a Types,
    memory: &'a dyn Memory,
    names: &'a dyn AddressNamer,
    limits: Limits,
}

/// How a character type is written: its literal prefix and the width of one character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CharClass {
    prefix: &'static str,
    width: usize,
}

impl<'a> Printer<'a> {
    /// A printer for values of `types`, reading strings from `memory` and naming addresses
    /// with `names`, with gdb's default limits.
    pub fn new(types: &'a Types, memory: &'a dyn Memory, names: &'a dyn AddressNamer) -> Self {
        Printer {
            types,
            memory,
            names,
            limits: Limits::default(),
        }
    }

    /// The same printer with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The value of type `ty` held in `bytes` (at least `sizeof` of the type), which lives at
    /// `addr` in the target, as `print VARIABLE` shows it after `$1 = `.
    pub fn print(&self, ty: TypeId, bytes: &[u8], addr: RemoteAddr) -> Result<String, PrintError> {
        self.refuse_rust(ty)?;
        let mut out = String::new();
        let stripped = self.types.strip_typedefs_cv(ty);
        match self.types.get(stripped) {
            Type::Pointer { target, size, .. } => {
                if !self.omits_pointer_type(ty) {
                    let _ = write!(out, "({}) ", self.types.name(ty));
                }
                let value = read_uint(self.bytes(ty, bytes, *size)?) as u64;
                self.pointer(&mut out, *target, value);
            }
            Type::Function { .. } => {
                let _ = write!(out, "{{{}}} ", self.types.name(ty));
                self.address(&mut out, addr.get());
            }
            _ => self.value(&mut out, ty, bytes, addr.get(), 0)?,
        }
        Ok(out)
    }

    /// The value as gdb shows it inside an aggregate (a struct member or array element):
    /// like [`Printer::print`] but without the `(type *)` prefix of pointers.
    pub fn print_inner(
        &self,
        ty: TypeId,
        bytes: &[u8],
        addr: RemoteAddr,
    ) -> Result<String, PrintError> {
        self.refuse_rust(ty)?;
        let mut out = String::new();
        self.value(&mut out, ty, bytes, addr.get(), 0)?;
        Ok(out)
    }

    fn refuse_rust(&self, ty: TypeId) -> Result<(), PrintError> {
        if self.types.language(ty) == Language::Rust {
            return Err(self.unsupported(ty, "Rust values are printed in Rust syntax by gdb"));
        }
        Ok(())
    }

    fn unsupported(&self, ty: TypeId, why: &str) -> PrintError {
        PrintError::Unsupported {
            type_name: self.types.name(ty),
            why: why.to_owned(),
        }
    }

    /// The first `n` bytes of `bytes`, or an error naming `ty`.
    fn bytes<'b>(&self, ty: TypeId, bytes: &'b [u8], n: u64) -> Result<&'b [u8], PrintError> {
        bytes.get(..n as usize).ok_or_else(|| PrintError::Short {
            type_name: self.types.name(ty),
            needed: n,
            got: bytes.len(),
        })
    }

    /// gdb's hack in `c_value_print`: no `(type)` before a plain (unnamed) pointer whose
    /// target is called `char`, `wchar_t`, `char16_t` or `char32_t` — the quotes say it.
    fn omits_pointer_type(&self, ty: TypeId) -> bool {
        let mut id = ty;
        loop {
            match self.types.get(id) {
                Type::Const(t) | Type::Volatile(t) => id = *t,
                Type::Pointer {
                    target: Some(t), ..
                } => {
                    let name = self.cv_name(*t);
                    return matches!(name, Some("char" | "wchar_t" | "char16_t" | "char32_t"));
                }
                _ => return false,
            }
        }
    }

    /// The name gdb gives a type: a qualified type shares the name of the type it qualifies.
    fn cv_name(&self, ty: TypeId) -> Option<&'a str> {
        let mut id = ty;
        loop {
            match self.types.get(id) {
                Type::Const(t) | Type::Volatile(t) => id = *t,
                other => return other.own_name(),
            }
        }
    }

    /// Renders `ty` from `bytes` at `addr`, `recurse` levels deep.
    fn value(
        &self,
        out: &mut String,
        ty: TypeId,
        bytes: &[u8],
        addr: u64,
        recurse: usize,
    ) -> Result<(), PrintError> {
        let id = self.types.definition_of(self.types.strip_typedefs_cv(ty));
        match self.types.get(id) {
            Type::Base {
                name,
                encoding,
                size,
            } => self.base(out, ty, name, *encoding, *size, bytes),
            Type::Pointer { target, size, .. } => {
                let value = read_uint(self.bytes(ty, bytes, *size)?) as u64;
                self.pointer(out, *target, value);
                Ok(())
            }
            Type::Struct(c) | Type::Union(c) => self.composite(out, id, c, bytes, addr, recurse),
            Type::Enum(e) => {
                let size = e
                    .size
                    .ok_or_else(|| self.unsupported(ty, "enum without size"))?;
                let raw = self.bytes(ty, bytes, size)?;
                self.enumeration(out, e, raw);
                Ok(())
            }
            Type::Array { element, dims } => self.array(out, *element, dims, bytes, addr, recurse),
            Type::Function { .. } => {
                let _ = write!(out, "{{{}}} ", self.types.name(ty));
                self.address(out, addr);
                Ok(())
            }
            Type::VariantEnum(_) => Err(self.unsupported(ty, "Rust enums are not supported")),
            Type::Void => Err(self.unsupported(ty, "void has no value")),
            Type::Unknown { what } => Err(self.unsupported(ty, what)),
            Type::Typedef { .. } | Type::Const(_) | Type::Volatile(_) => {
                Err(self.unsupported(ty, "typedef chain too long"))
            }
        }
    }

    fn base(
        &self,
        out: &mut String,
        ty: TypeId,
        name: &str,
        encoding: Encoding,
        size: u64,
        bytes: &[u8],
    ) -> Result<(), PrintError> {
        let raw = self.bytes(ty, bytes, size)?;
        match encoding {
            Encoding::Float => {
                let fmt = FloatFormat::for_base_type(name, size)
                    .ok_or_else(|| self.unsupported(ty, "float of unknown format"))?;
                out.push_str(&format_float(raw, fmt));
            }
            Encoding::ComplexFloat => {
                let half = size / 2;
                let fmt = FloatFormat::for_base_type(name, half)
                    .ok_or_else(|| self.unsupported(ty, "complex of unknown format"))?;
                let (re, im) = raw.split_at(half as usize);
                let _ = write!(
                    out,
                    "{} + {}i",
                    format_float(re, fmt),
                    format_float(im, fmt)
                );
            }
            Encoding::Bool => match read_uint(raw) {
                0 => out.push_str("false"),
                1 => out.push_str("true"),
                v => {
                    let _ = write!(out, "{}", v as i64);
                }
            },
            Encoding::Signed
            | Encoding::Unsigned
            | Encoding::SignedChar
            | Encoding::UnsignedChar
            | Encoding::Utf => {
                if size > 16 {
                    return Err(self.unsupported(ty, "integers wider than 128 bits"));
                }
                if encoding.is_signed() {
                    let _ = write!(out, "{}", read_int(raw));
                } else {
                    let _ = write!(out, "{}", read_uint(raw));
                }
                if let Some(class) = self.textual(ty) {
                    out.push(' ');
                    out.push_str(class.prefix);
                    out.push('\'');
                    let mut need_escape = false;
                    emit_char(out, read_uint(raw) as u64, b'\'', &mut need_escape);
                    out.push('\'');
                }
            }
            Encoding::Other(code) => {
                return Err(self.unsupported(ty, &format!("base type encoding {code:#x}")))
            }
        }
        Ok(())
    }

    /// `c_textual_element_type`: whether values of `ty` are characters, and how to write
    /// them (`classify_type` for the prefix).
    fn textual(&self, ty: TypeId) -> Option<CharClass> {
        let true_ty = self.types.strip_typedefs_cv(ty);
        let (size, is_char_code, is_int) = match self.types.get(true_ty) {
            Type::Base { encoding, size, .. } => (
                *size,
                *encoding == Encoding::Utf,
                matches!(
                    encoding,
                    Encoding::Signed
                        | Encoding::Unsigned
                        | Encoding::SignedChar
                        | Encoding::UnsignedChar
                ),
            ),
            _ => return None,
        };
        // Peel typedefs one at a time looking for the wide character names.
        let mut prefix = None;
        let mut id = ty;
        loop {
            match self.types.get(id) {
                Type::Const(t) | Type::Volatile(t) => id = *t,
                Type::Typedef { name, target } => {
                    match name.as_str() {
                        "wchar_t" => prefix = Some("L"),
                        "char16_t" => prefix = Some("u"),
                        "char32_t" => prefix = Some("U"),
                        _ => {}
                    }
                    if prefix.is_some() {
                        break;
                    }
                    id = *target;
                }
                _ => break,
            }
        }
        if prefix.is_some() || is_char_code || (is_int && size == 1) {
            Some(CharClass {
                prefix: prefix.unwrap_or(""),
                width: size as usize,
            })
        } else {
            None
        }
    }

    /// `print_unpacked_pointer`: the address, its symbol, and for character pointers the
    /// string it points to.
    fn pointer(&self, out: &mut String, target: Option<TypeId>, value: u64) {
        self.address(out, value);
        let Some(target) = target else { return };
        let stripped = self.types.strip_typedefs_cv(target);
        if matches!(self.types.get(stripped), Type::Function { .. }) {
            return;
        }
        if value == 0 {
            return;
        }
        if let Some(class) = self.textual(target) {
            out.push(' ');
            self.string_at(out, class, value);
        }
    }

    /// `print_address_demangle`: `0x...` and ` <symbol+offset>`.
    fn address(&self, out: &mut String, value: u64) {
        let _ = write!(out, "{value:#x}");
        if let Some(n) = self.names.name_address(RemoteAddr::new(value)) {
            if n.offset == 0 {
                let _ = write!(out, " <{}>", n.name);
            } else {
                let _ = write!(out, " <{}+{}>", n.name, n.offset);
            }
        }
    }

    /// `val_print_string` with no length: reads up to `print elements` characters or the NUL.
    fn string_at(&self, out: &mut String, class: CharClass, addr: u64) {
        let width = class.width.max(1);
        let limit = self.limits.elements;
        let mut units: Vec<u64> = Vec::new();
        let mut at = addr;
        let mut error_at: Option<u64> = None;
        let mut found_nul = false;
        'read: while units.len() < limit {
            let n = (limit - units.len()).min(8);
            let mut buf = vec![0u8; n * width];
            let got = self.read_partial(at, &mut buf);
            let whole = got / width;
            for chunk in buf[..whole * width].chunks(width) {
                let c = read_uint(chunk) as u64;
                units.push(c);
                at = at.wrapping_add(width as u64);
                if c == 0 {
                    found_nul = true;
                    break 'read;
                }
            }
            if got < buf.len() {
                error_at = Some(at);
                break;
            }
        }
        let mut force_ellipses = false;
        if !found_nul {
            let mut peek = vec![0u8; width];
            if self.memory.read(RemoteAddr::new(at), &mut peek).is_ok() && read_uint(&peek) != 0 {
                force_ellipses = true;
            }
        }
        if error_at.is_none() || !units.is_empty() {
            self.print_string(out, class, &units, force_ellipses);
        }
        if let Some(a) = error_at {
            let _ = write!(out, "<error: Cannot access memory at address {a:#x}>");
        }
    }

    /// Reads as much of `buf` as is readable from `addr` on; returns how many bytes.
    fn read_partial(&self, addr: u64, buf: &mut [u8]) -> usize {
        if self.memory.read(RemoteAddr::new(addr), buf).is_ok() {
            return buf.len();
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            let a = addr.wrapping_add(i as u64);
            if self.memory.read(RemoteAddr::new(a), &mut one).is_err() {
                return i;
            }
            *b = one[0];
        }
        buf.len()
    }

    /// `generic_printstr`: a string of characters with runs collapsed, one trailing NUL
    /// dropped, at most `print elements` characters.
    fn print_string(&self, out: &mut String, class: CharClass, units: &[u64], force: bool) {
        let mut len = units.len();
        if !force && len > 0 && units[len - 1] == 0 {
            len -= 1;
        }
        out.push_str(class.prefix);
        if len == 0 {
            out.push_str("\"\"");
            return;
        }
        let mut groups: Vec<(u64, usize)> = Vec::new();
        let (mut pos, mut shown) = (0usize, 0usize);
        while shown < self.limits.elements && pos < len {
            let c = units[pos];
            let mut n = 1;
            while pos + n < len && units[pos + n] == c {
                n += 1;
            }
            groups.push((c, n));
            pos += n;
            shown += n;
        }
        let finished = pos >= len;
        #[derive(PartialEq)]
        enum Last {
            Start,
            Single,
            Repeat,
        }
        let mut last = Last::Start;
        let mut need_escape = false;
        for (c, n) in groups {
            if n > self.limits.repeats {
                if last == Last::Single {
                    out.push('"');
                }
                if last != Last::Start {
                    out.push_str(", ");
                }
                out.push('\'');
                emit_char(out, c, b'"', &mut need_escape);
                let _ = write!(out, "' <repeats {n} times>");
                last = Last::Repeat;
            } else {
                if last != Last::Single {
                    if last != Last::Start {
                        out.push_str(", ");
                    }
                    out.push('"');
                }
                for _ in 0..n {
                    emit_char(out, c, b'"', &mut need_escape);
                }
                last = Last::Single;
            }
        }
        if last == Last::Single {
            out.push('"');
        }
        if force || !finished {
            out.push_str("...");
        }
    }

    fn composite(
        &self,
        out: &mut String,
        id: TypeId,
        c: &Composite,
        bytes: &[u8],
        addr: u64,
        recurse: usize,
    ) -> Result<(), PrintError> {
        if c.declaration {
            out.push_str("<incomplete type>");
            return Ok(());
        }
        if recurse >= self.limits.max_depth {
            out.push_str("{...}");
            return Ok(());
        }
        if let Some(size) = c.size {
            self.bytes(id, bytes, size)?;
        }
        out.push('{');
        if c.members.is_empty() {
            out.push_str("<No data fields>");
        }
        for (i, m) in c.members.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if let Some(name) = &m.name {
                let _ = write!(out, "{name} = ");
            }
            self.member(out, m, bytes, addr, recurse + 1)?;
        }
        out.push('}');
        Ok(())
    }

    fn member(
        &self,
        out: &mut String,
        m: &Member,
        bytes: &[u8],
        addr: u64,
        recurse: usize,
    ) -> Result<(), PrintError> {
        let start = m.offset as usize;
        let maddr = addr.wrapping_add(m.offset);
        if let Some(bf) = m.bit_field {
            let size = self
                .types
                .byte_size(m.ty)
                .ok_or_else(|| self.unsupported(m.ty, "bit-field of unsized type"))?;
            let nbytes = (u64::from(bf.bit_offset) + bf.bit_size).div_ceil(8) as usize;
            let field = bytes
                .get(start..start + nbytes)
                .ok_or_else(|| PrintError::Short {
                    type_name: self.types.name(m.ty),
                    needed: (start + nbytes) as u64,
                    got: bytes.len(),
                })?;
            if bf.bit_size == 0 || bf.bit_size > 64 || nbytes > 16 {
                return Err(self.unsupported(m.ty, "bit-field wider than 64 bits"));
            }
            let mut raw = 0u128;
            for (i, b) in field.iter().enumerate() {
                raw |= u128::from(*b) << (8 * i);
            }
            let mut v = ((raw >> bf.bit_offset) as u64) & (u64::MAX >> (64 - bf.bit_size));
            if self.is_signed(m.ty) && bf.bit_size < 64 && (v >> (bf.bit_size - 1)) & 1 == 1 {
                v |= u64::MAX << bf.bit_size;
            }
            // The field's value as a whole object of its type (sign-extended).
            let mut packed = v.to_le_bytes().to_vec();
            let fill = if self.is_signed(m.ty) && (v as i64) < 0 {
                0xff
            } else {
                0
            };
            packed.resize(size.max(8) as usize, fill);
            packed.truncate(size as usize);
            return self.value(out, m.ty, &packed, maddr, recurse);
        }
        let size = self.types.byte_size(m.ty).unwrap_or(0) as usize;
        let field = bytes
            .get(start..start + size)
            .ok_or_else(|| PrintError::Short {
                type_name: self.types.name(m.ty),
                needed: (start + size) as u64,
                got: bytes.len(),
            })?;
        self.value(out, m.ty, field, maddr, recurse)
    }

    /// Whether values of `ty` are sign-extended (gdb's `!is_unsigned`).
    fn is_signed(&self, ty: TypeId) -> bool {
        match self.types.get(self.types.strip_typedefs_cv(ty)) {
            Type::Base { encoding, .. } => encoding.is_signed(),
            Type::Enum(e) => self.enum_signed(e),
            _ => false,
        }
    }

    /// An enum is unsigned like its underlying type, or, without one, when no enumerator is
    /// negative (gdb's DWARF reader).
    fn enum_signed(&self, e: &EnumType) -> bool {
        match e.underlying {
            Some(u) => self.is_signed(u),
            None => e.enumerators.iter().any(|(_, v)| *v < 0),
        }
    }

    /// `generic_val_print_enum_1`.
    fn enumeration(&self, out: &mut String, e: &EnumType, raw: &[u8]) {
        let val: i64 = if self.enum_signed(e) {
            read_int(raw) as i64
        } else {
            read_uint(raw) as i64
        };
        if let Some((name, _)) = e.enumerators.iter().find(|(_, v)| *v == val) {
            out.push_str(name);
            return;
        }
        let flag_enum = !e.enumerators.is_empty()
            && e.enumerators
                .iter()
                .all(|(_, v)| *v >= 0 && v.count_ones() <= 1);
        if !flag_enum {
            let _ = write!(out, "{val}");
            return;
        }
        let mut rest = val;
        let mut first = true;
        for (name, v) in &e.enumerators {
            if rest & v != 0 {
                out.push_str(if first { "(" } else { " | " });
                first = false;
                rest &= !v;
                out.push_str(name);
            }
        }
        if rest != 0 {
            out.push_str(if first { "(unknown: " } else { " | unknown: " });
            let _ = write!(out, "{:#x})", rest as u64);
        } else if first {
            out.push('0');
        } else {
            out.push(')');
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn array(
        &self,
        out: &mut String,
        element: TypeId,
        dims: &[Option<u64>],
        bytes: &[u8],
        addr: u64,
        recurse: usize,
    ) -> Result<(), PrintError> {
        let Some((first, sub)) = dims.split_first() else {
            return self.value(out, element, bytes, addr, recurse);
        };
        let elem_size = sub.iter().fold(self.types.byte_size(element), |acc, d| {
            acc.zip(*d).and_then(|(a, d)| a.checked_mul(d))
        });
        let textual = if sub.is_empty() {
            self.textual(element)
        } else {
            None
        };
        // `c_is_string_type_p`: character arrays are exempt from `max-depth`.
        let is_string = textual.is_some() && elem_size.is_some_and(|s| s > 0);
        if !is_string && recurse >= self.limits.max_depth {
            out.push_str("{...}");
            return Ok(());
        }
        let (len, elem_size) = match (first, elem_size) {
            (Some(n), Some(s)) if *n > 0 && s > 0 => (*n as usize, s as usize),
            // Unknown or zero length: gdb prints a pointer to the first element.
            _ => {
                if sub.is_empty() {
                    self.pointer(out, Some(element), addr);
                } else {
                    self.address(out, addr);
                }
                return Ok(());
            }
        };
        let total = len * elem_size;
        if bytes.len() < total {
            return Err(PrintError::Short {
                type_name: format!("{} [{len}]", self.types.name(element)),
                needed: total as u64,
                got: bytes.len(),
            });
        }
        if let Some(class) = textual {
            let units: Vec<u64> = bytes[..total]
                .chunks(elem_size)
                .map(|c| read_uint(c) as u64)
                .collect();
            self.print_string(out, class, &units, false);
            return Ok(());
        }
        out.push('{');
        let elem = |i: usize| &bytes[i * elem_size..(i + 1) * elem_size];
        let mut printed = 0usize;
        let mut i = 0usize;
        while i < len && printed < self.limits.elements {
            if i != 0 {
                out.push_str(", ");
            }
            let mut reps = 1;
            while i + reps < len && elem(i + reps) == elem(i) {
                reps += 1;
            }
            let at = addr.wrapping_add((i * elem_size) as u64);
            self.array(out, element, sub, elem(i), at, recurse + 1)?;
            if reps > self.limits.repeats {
                let _ = write!(out, " <repeats {reps} times>");
                i += reps;
                printed += self.limits.repeats;
            } else {
                i += 1;
                printed += 1;
            }
        }
        if i < len {
            out.push_str("...");
        }
        out.push('}');
        Ok(())
    }
}

/// `print_wchar`: one character in C syntax, inside quotes `quoter`. A hex escape makes a
/// following hex digit escaped too (`need_escape`).
fn emit_char(out: &mut String, c: u64, quoter: u8, need_escape: &mut bool) {
    let escape_next = std::mem::replace(need_escape, false);
    match c {
        7 => out.push_str("\\a"),
        8 => out.push_str("\\b"),
        12 => out.push_str("\\f"),
        10 => out.push_str("\\n"),
        13 => out.push_str("\\r"),
        9 => out.push_str("\\t"),
        11 => out.push_str("\\v"),
        0x20..=0x7e if !(escape_next && (c as u8).is_ascii_hexdigit()) => {
            let ch = c as u8;
            if ch == quoter || ch == b'\\' {
                out.push('\\');
            }
            out.push(char::from(ch));
        }
        _ if c <= 0o777 => {
            let _ = write!(out, "\\{c:03o}");
        }
        _ => {
            let _ = write!(out, "\\x{c:x}");
            *need_escape = true;
        }
    }
}

/// Little-endian unsigned integer of up to 16 bytes.
fn read_uint(bytes: &[u8]) -> u128 {
    let mut v = 0u128;
    for (i, b) in bytes.iter().take(16).enumerate() {
        v |= u128::from(*b) << (8 * i);
    }
    v
}

/// Little-endian two's complement integer of up to 16 bytes.
fn read_int(bytes: &[u8]) -> i128 {
    let n = bytes.len().min(16);
    if n == 0 {
        return 0;
    }
    let v = read_uint(bytes);
    let shift = 128 - 8 * n as u32;
    ((v << shift) as i128) >> shift
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debuginfo::{BitField, Composite, EnumType, Member};
    use tracer::Snapshot;

    const CHAR: TypeId = TypeId(0);
    const INT: TypeId = TypeId(1);
    const CHAR_PTR: TypeId = TypeId(2);
    const CHAR8: TypeId = TypeId(3);
    const POINT: TypeId = TypeId(4);
    const INT12: TypeId = TypeId(5);
    const POINT_PTR: TypeId = TypeId(6);
    const FLAGS: TypeId = TypeId(7);
    const UINT: TypeId = TypeId(8);
    const BITS: TypeId = TypeId(9);
    const DOUBLE: TypeId = TypeId(10);
    const FUNC: TypeId = TypeId(11);
    const FUNC_PTR: TypeId = TypeId(12);
    const WCHAR: TypeId = TypeId(13);
    const WCHAR4: TypeId = TypeId(14);
    const FLEX: TypeId = TypeId(15);
    const CHAR_FLEX: TypeId = TypeId(16);
    const OUTER: TypeId = TypeId(17);

    fn base(name: &str, encoding: Encoding, size: u64) -> Type {
        Type::Base {
            name: name.into(),
            encoding,
            size,
        }
    }
    fn member(name: &str, ty: TypeId, offset: u64) -> Member {
        Member {
            name: Some(name.into()),
            ty,
            offset,
            bit_field: None,
        }
    }
    fn strukt(name: &str, size: u64, members: Vec<Member>) -> Type {
        Type::Struct(Composite {
            name: Some(name.into()),
            size: Some(size),
            members,
            declaration: false,
        })
    }
    fn ptr(target: TypeId) -> Type {
        Type::Pointer {
            target: Some(target),
            size: 8,
            name: None,
        }
    }

    fn types() -> Types {
        let bits = |name: &str, ty, bit_offset, bit_size| Member {
            bit_field: Some(BitField {
                bit_offset,
                bit_size,
            }),
            ..member(name, ty, 0)
        };
        let t = vec![
            base("char", Encoding::SignedChar, 1),
            base("int", Encoding::Signed, 4),
            ptr(CHAR),
            Type::Array {
                element: CHAR,
                dims: vec![Some(8)],
            },
            strukt("point", 8, vec![member("x", INT, 0), member("y", INT, 4)]),
            Type::Array {
                element: INT,
                dims: vec![Some(12)],
            },
            ptr(POINT),
            Type::Enum(EnumType {
                name: Some("flags".into()),
                size: Some(4),
                signed: false,
                underlying: Some(UINT),
                enumerators: vec![("A".into(), 1), ("B".into(), 2), ("C".into(), 4)],
                declaration: false,
            }),
            base("unsigned int", Encoding::Unsigned, 4),
            strukt("bits", 4, vec![bits("a", INT, 0, 3), bits("b", UINT, 3, 5)]),
            base("double", Encoding::Float, 8),
            Type::Function {
                ret: Some(INT),
                params: vec![INT],
                variadic: false,
                prototyped: true,
            },
            ptr(FUNC),
            Type::Typedef {
                name: "wchar_t".into(),
                target: INT,
            },
            Type::Array {
                element: WCHAR,
                dims: vec![Some(4)],
            },
            strukt(
                "flex",
                4,
                vec![member("n", INT, 0), member("name", CHAR_FLEX, 4)],
            ),
            Type::Array {
                element: CHAR,
                dims: vec![None],
            },
            strukt("outer", 8, vec![member("p", POINT, 0)]),
        ];
        let n = t.len();
        Types::new(t, vec![Language::C; n])
    }

    fn memory() -> Snapshot {
        let mut m = Snapshot::new();
        m.insert(RemoteAddr::new(0x1000), b"hello\0".to_vec());
        m.insert(RemoteAddr::new(0x2000), b"\x03\0\0\0flexible\0".to_vec());
        m
    }

    fn namer(addr: RemoteAddr) -> Option<AddressName> {
        let a = addr.get();
        match a {
            0x5000..=0x5007 => Some(AddressName {
                name: "g_point".into(),
                offset: a - 0x5000,
            }),
            0x401000 => Some(AddressName {
                name: "add".into(),
                offset: 0,
            }),
            _ => None,
        }
    }

    fn show(ty: TypeId, bytes: &[u8], addr: u64) -> String {
        let (t, m) = (types(), memory());
        Printer::new(&t, &m, &namer)
            .print(ty, bytes, RemoteAddr::new(addr))
            .unwrap()
    }

    fn le(v: u64) -> [u8; 8] {
        v.to_le_bytes()
    }

    #[test]
    fn scalars() {
        assert_eq!(show(CHAR, b"a", 0), "97 'a'");
        assert_eq!(show(CHAR, b"\0", 0), "0 '\\000'");
        assert_eq!(show(CHAR, b"'", 0), "39 '\\''");
        assert_eq!(show(CHAR, &[0xfb], 0), "-5 '\\373'");
        assert_eq!(show(INT, &(-7i32).to_le_bytes(), 0), "-7");
        assert_eq!(
            show(DOUBLE, &0.1f64.to_le_bytes(), 0),
            "0.10000000000000001"
        );
        assert_eq!(show(WCHAR, &0x41u32.to_le_bytes(), 0), "65 L'A'");
        assert_eq!(show(FLAGS, &5u32.to_le_bytes(), 0), "(A | C)");
        assert_eq!(show(FLAGS, &2u32.to_le_bytes(), 0), "B");
        assert_eq!(show(FLAGS, &10u32.to_le_bytes(), 0), "(B | unknown: 0x8)");
        assert_eq!(show(FLAGS, &0u32.to_le_bytes(), 0), "0");
    }

    #[test]
    fn pointers_and_strings() {
        assert_eq!(show(CHAR_PTR, &le(0x1000), 0), "0x1000 \"hello\"");
        assert_eq!(show(CHAR_PTR, &le(0x1003), 0), "0x1003 \"lo\"");
        assert_eq!(show(CHAR_PTR, &le(0), 0), "0x0");
        assert_eq!(
            show(CHAR_PTR, &le(0x10), 0),
            "0x10 <error: Cannot access memory at address 0x10>"
        );
        assert_eq!(
            show(POINT_PTR, &le(0x5004), 0),
            "(struct point *) 0x5004 <g_point+4>"
        );
        assert_eq!(
            show(FUNC_PTR, &le(0x401000), 0),
            "(int (*)(int)) 0x401000 <add>"
        );
        assert_eq!(show(FUNC, &[], 0x401000), "{int (int)} 0x401000 <add>");
        let (t, m) = (types(), memory());
        let p = Printer::new(&t, &m, &namer);
        assert_eq!(
            p.print_inner(POINT_PTR, &le(0x5000), RemoteAddr::NULL)
                .unwrap(),
            "0x5000 <g_point>"
        );
    }

    #[test]
    fn aggregates() {
        assert_eq!(
            show(CHAR8, b"ab\0\0\0\0\0\0", 0),
            "\"ab\\000\\000\\000\\000\\000\""
        );
        assert_eq!(show(CHAR8, b"abcdefgh", 0), "\"abcdefgh\"");
        assert_eq!(
            show(CHAR8, &[0; 8], 0),
            "\"\\000\\000\\000\\000\\000\\000\\000\""
        );
        assert_eq!(show(INT12, &[0; 48], 0), "{0 <repeats 12 times>}");
        let mut ints = [0u8; 48];
        ints[40] = 1;
        assert_eq!(
            show(INT12, &ints, 0),
            "{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}"
        );
        ints[40] = 0;
        ints[44] = 1;
        assert_eq!(show(INT12, &ints, 0), "{0 <repeats 11 times>, 1}");
        let mut pt = (-1i32).to_le_bytes().to_vec();
        pt.extend_from_slice(&2i32.to_le_bytes());
        assert_eq!(show(POINT, &pt, 0), "{x = -1, y = 2}");
        // a = -3 in bits 0..3, b = 17 in bits 3..8.
        let word: u32 = 0b101 | (17 << 3);
        assert_eq!(show(BITS, &word.to_le_bytes(), 0), "{a = -3, b = 17}");
        let mut w = Vec::new();
        for c in [b'h', b'i', 0, 0] {
            w.extend_from_slice(&u32::from(c).to_le_bytes());
        }
        assert_eq!(show(WCHAR4, &w, 0), "L\"hi\\000\"");
        // A flexible array member is shown as a pointer to its first element.
        assert_eq!(
            show(FLEX, b"\x03\0\0\0", 0x2000),
            "{n = 3, name = 0x2004 \"flexible\"}"
        );
    }

    #[test]
    fn limits() {
        let (t, m) = (types(), memory());
        let p = Printer::new(&t, &m, &namer).with_limits(Limits {
            elements: 3,
            repeats: 2,
            max_depth: 1,
        });
        let at = RemoteAddr::NULL;
        assert_eq!(p.print(OUTER, &[0; 8], at).unwrap(), "{p = {...}}");
        let mut ints = [0u8; 48];
        for (i, c) in ints.chunks_mut(4).enumerate() {
            c[0] = i as u8;
        }
        assert_eq!(p.print(INT12, &ints, at).unwrap(), "{0, 1, 2...}");
        assert_eq!(
            p.print(INT12, &[0; 48], at).unwrap(),
            "{0 <repeats 12 times>}"
        );
        // A run counts whole against the limit.
        assert_eq!(
            p.print(CHAR8, b"aaabcdef", at).unwrap(),
            "'a' <repeats 3 times>..."
        );
        assert_eq!(
            p.print(CHAR8, b"abaaabcd", at).unwrap(),
            "\"ab\", 'a' <repeats 3 times>..."
        );
        assert_eq!(
            p.print(CHAR_PTR, &le(0x1000), at).unwrap(),
            "0x1000 \"hel\"..."
        );
    }

    #[test]
    fn short_input_is_an_error() {
        let (t, m) = (types(), memory());
        let p = Printer::new(&t, &m, &namer);
        assert!(matches!(
            p.print(POINT, &[0; 4], RemoteAddr::NULL),
            Err(PrintError::Short { needed: 8, .. })
        ));
    }
}
