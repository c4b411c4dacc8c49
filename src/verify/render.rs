//! Values and paths as a person reads them: integers in decimal, enums by name, strings
//! quoted, pointers by what they lead to; paths in C syntax from a global.

use std::fmt::Write as _;

use crate::debuginfo::{Encoding, Type, TypeId, Types, Variable, VariableKind};
use crate::inspect::float::{format_float, FloatFormat};
use crate::state::External;

/// Character arrays longer than this are shown as a window around their first difference.
const CHARS_SHOWN: usize = 96;
/// Raw ranges are shown up to this many bytes from their first difference.
const HEX_SHOWN: usize = 32;

/// Reads up to 16 bytes little-endian, zero-extended.
fn le(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = bytes.len().min(16);
    b[..n].copy_from_slice(&bytes[..n]);
    u128::from_le_bytes(b)
}

fn sign_extend(v: u128, bits: u64) -> i128 {
    if bits == 0 || bits >= 128 {
        return v as i128;
    }
    let shift = 128 - bits as u32;
    ((v << shift) as i128) >> shift
}

/// A scalar of type `ty` (typedefs stripped: a base type, enum or pointer) from its bytes.
pub(super) fn scalar(types: &Types, ty: TypeId, bytes: &[u8]) -> String {
    integer_like(types, ty, le(bytes), bytes.len() as u64 * 8, Some(bytes))
}

/// An integer-like value `raw` of `bits` bits of type `ty`; `bytes` when whole bytes are
/// available (floats need them).
pub(super) fn integer_like(
    types: &Types,
    ty: TypeId,
    raw: u128,
    bits: u64,
    bytes: Option<&[u8]>,
) -> String {
    match types.get(ty) {
        Type::Base { name, encoding, .. } => match encoding {
            Encoding::Signed => sign_extend(raw, bits).to_string(),
            Encoding::Unsigned => raw.to_string(),
            Encoding::SignedChar | Encoding::UnsignedChar if bits == 8 => {
                let v = if encoding.is_signed() {
                    sign_extend(raw, 8)
                } else {
                    raw as i128
                };
                format!("{} ({v})", char_literal(raw as u8))
            }
            Encoding::SignedChar => sign_extend(raw, bits).to_string(),
            Encoding::UnsignedChar => raw.to_string(),
            Encoding::Bool => match raw {
                0 => "false".into(),
                1 => "true".into(),
                v => format!("true ({v})"),
            },
            Encoding::Float => match (bytes, FloatFormat::for_base_type(name, bits / 8)) {
                (Some(b), Some(f)) => format_float(b, f),
                _ => hex_int(raw),
            },
            Encoding::Utf => match char::from_u32(raw as u32) {
                Some(c) if !c.is_control() => format!("'{c}' (U+{:04X})", raw),
                _ => format!("U+{raw:04X}"),
            },
            _ => match bytes {
                Some(b) => hex(b),
                None => hex_int(raw),
            },
        },
        Type::Enum(e) => {
            let v = if e.signed {
                sign_extend(raw, bits) as i64
            } else {
                raw as u64 as i64
            };
            match e.enumerators.iter().find(|(_, ev)| *ev == v) {
                Some((name, _)) => name.clone(),
                None if e.signed => v.to_string(),
                None => (v as u64).to_string(),
            }
        }
        Type::Pointer { .. } if raw == 0 => "NULL".into(),
        Type::Pointer { .. } => hex_int(raw),
        _ => match bytes {
            Some(b) => hex(b),
            None => hex_int(raw),
        },
    }
}

fn hex_int(v: u128) -> String {
    format!("{v:#x}")
}

/// A character as C writes it.
fn char_literal(b: u8) -> String {
    let mut s = String::from("'");
    escape_byte(b, b'\'', &mut s);
    s.push('\'');
    s
}

fn escape_byte(b: u8, quote: u8, out: &mut String) {
    match b {
        b'\\' => out.push_str("\\\\"),
        b'\n' => out.push_str("\\n"),
        b'\t' => out.push_str("\\t"),
        b'\r' => out.push_str("\\r"),
        0 => out.push_str("\\0"),
        b if b == quote => {
            out.push('\\');
            out.push(b as char);
        }
        0x20..=0x7e => out.push(b as char),
        b => {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// A quoted C string of `bytes` with its trailing NULs left out.
fn quoted(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut s = String::with_capacity(end + 2);
    s.push('"');
    for &b in &bytes[..end] {
        escape_byte(b, b'"', &mut s);
    }
    s.push('"');
    s
}

/// Two character arrays that differ, as strings: whole when short, else both as the same
/// window around their first difference (`[900..] "abc"`), so the difference is in view.
pub(super) fn chars_pair(old: &[u8], rev: &[u8]) -> (String, String) {
    let n = old.len().min(rev.len());
    if n <= CHARS_SHOWN {
        return (quoted(old), quoted(rev));
    }
    let first = (0..n).find(|&i| old[i] != rev[i]).unwrap_or(0);
    let start = first.saturating_sub(16);
    let end = (start + CHARS_SHOWN).min(n);
    let show = |b: &[u8]| {
        let mut s = String::new();
        if start > 0 {
            let _ = write!(s, "[{start}..] ");
        }
        s.push_str(&quoted(&b[start..end]));
        if end < n {
            s.push_str("...");
        }
        s
    };
    (show(old), show(rev))
}

/// Raw bytes in memory order: `hex:0a0b0c`, cut after [`HEX_SHOWN`] bytes.
pub(super) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(4 + 2 * bytes.len().min(HEX_SHOWN));
    s.push_str("hex:");
    for b in bytes.iter().take(HEX_SHOWN) {
        let _ = write!(s, "{b:02x}");
    }
    if bytes.len() > HEX_SHOWN {
        let _ = write!(s, "... ({} bytes)", bytes.len());
    }
    s
}

/// Something outside the state a pointer names: a string literal by its text, anything
/// else by symbol and offset, with the file it is in.
pub(super) fn external(e: &External) -> String {
    if let Some(text) = &e.string {
        return quoted(text.as_bytes());
    }
    let mut s = match &e.symbol {
        Some(sym) => sym.clone(),
        None => format!("<{:?}>", e.kind),
    };
    if e.offset != 0 {
        let _ = write!(s, "+{}", e.offset);
    }
    if let Some(obj) = &e.object {
        let _ = write!(s, " in {obj}");
    }
    s
}

/// A global as the mapping names it: `name`, `FILE:name` for a file static,
/// `FILE:FUNCTION:name` for a function static.
pub(super) fn global_name(var: &Variable) -> String {
    let file = |cu: &str| {
        std::path::Path::new(cu)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| cu.to_owned())
    };
    match &var.kind {
        VariableKind::Global => var.name.clone(),
        VariableKind::FileStatic { cu } => format!("{}:{}", file(cu), var.name),
        VariableKind::FunctionStatic { cu, function } => {
            format!("{}:{}:{}", file(cu), function, var.name)
        }
    }
}

/// Builds a C expression from a global through a chain of pointers, shortening runs of the
/// same link (`head(->next){500}`).
pub(super) struct PathWriter<'s> {
    out: String,
    /// `out` is a pointer whose target is the current object (else `out` is the object).
    pointer: bool,
    /// A pending run of the same `->field` link: the field path (`.next`) and its length.
    run: Option<(&'s str, u64)>,
}

/// Runs of the same link at least this long are written once with a count.
const RUN_SHORTENED: u64 = 4;

impl<'s> PathWriter<'s> {
    /// Starts at a global (an object, not a pointer).
    pub fn root(name: String) -> Self {
        PathWriter {
            out: name,
            pointer: false,
            run: None,
        }
    }

    fn flush(&mut self) {
        if let Some((field, n)) = self.run.take() {
            if n >= RUN_SHORTENED {
                let _ = write!(self.out, "(->{}){{{n}}}", &field[1..]);
            } else {
                for _ in 0..n {
                    self.out.push_str("->");
                    self.out.push_str(&field[1..]);
                }
            }
        }
    }

    /// Moves to the field at `suffix` (`.f`, `[3].f`, `+8`, or empty) of the current object.
    fn apply(&mut self, suffix: &'s str) {
        if !self.pointer {
            self.flush();
            self.out.push_str(suffix);
            return;
        }
        self.pointer = false;
        if suffix.starts_with('.') {
            match &mut self.run {
                Some((f, n)) if *f == suffix => *n += 1,
                _ => {
                    self.flush();
                    self.run = Some((suffix, 1));
                }
            }
            return;
        }
        self.flush();
        if suffix.starts_with('[') {
            self.out.push_str(suffix);
        } else {
            self.out.insert(0, '*');
            self.out.push_str(suffix);
        }
    }

    /// Follows the pointer at `field` of the current object, which points `interior` bytes
    /// into the next object.
    pub fn follow(&mut self, field: &'s str, interior: u64) {
        self.apply(field);
        if interior != 0 {
            self.flush();
            self.out = format!("({} - {interior})", self.out);
        }
        self.pointer = true;
    }

    /// The expression of the field at `suffix` of the current object.
    pub fn field(mut self, suffix: &'s str) -> String {
        self.apply(suffix);
        self.flush();
        self.out
    }
}
