//! Naming addresses the way gdb 13 does after a pointer value (`build_address_symbolic`).
//!
//! gdb looks an address up twice and keeps the better answer:
//! - the *function* whose code contains it, from the object's DWARF (`find_pc_sect_function`),
//!   named by its linkage name when DWARF gives one (glibc's `malloc` is `__GI___libc_malloc`,
//!   `printf` is `__printf`) and located at its entry;
//! - the *minimal symbol* (ELF symbol) at or below it (`lookup_minimal_symbol_by_pc_section`):
//!   among symbols of one address the last by name (`strcmp`) wins; zero-sized symbols are
//!   skipped in favour of a sized one below, which must then contain the address; a zero-sized
//!   symbol is used only when no sized one does, and only if it is code.
//!
//! The minimal symbol wins when there is no function, or when it starts exactly at the
//! address and the function does not. Data addresses therefore get ELF symbols only (`<g_nodes+16>`),
//! code addresses get DWARF names where debug info exists (`<add>`, `<__printf>`) and ELF
//! symbols otherwise (`<printf>` when libc's debug file is not installed).
//!
//! Symbols come from [`Binary::symbols`] (the file's `.symtab` and `.dynsym` plus its separate
//! debug file's `.symtab`) for every object whose debug info loads, else from the `.dynsym` and
//! `.symtab` of the mapped file as `tracer` reads them. A library's debug info is loaded the
//! first time an address inside it is named.

use std::cell::OnceCell;

use tracer::symbols::{ObjectRole, SymbolKind as ElfKind, SymbolResolver};
use tracer::RemoteAddr;

use crate::debuginfo::{Binary, LoadOptions, SymbolKind};

use super::print::{AddressName, AddressNamer};

/// One minimal symbol: an ELF symbol at its link-time address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MinSym {
    name: String,
    addr: u64,
    size: u64,
    /// In code (gdb's `mst_text` family), which keeps zero-sized ones usable.
    text: bool,
}

/// The minimal symbols of one object, sorted as gdb sorts them (address, then name).
#[derive(Debug, Default)]
struct MinTable(Vec<MinSym>);

impl MinTable {
    fn new(mut syms: Vec<MinSym>) -> MinTable {
        syms.sort_by(|a, b| a.addr.cmp(&b.addr).then_with(|| a.name.cmp(&b.name)));
        syms.dedup_by(|a, b| a.addr == b.addr && a.name == b.name);
        MinTable(syms)
    }

    fn from_binary(bin: &Binary) -> MinTable {
        let exec = |addr: u64| {
            bin.segments()
                .iter()
                .any(|s| s.executable && s.vaddr <= addr && addr < s.vaddr + s.memsz)
        };
        MinTable::new(
            bin.symbols()
                .iter()
                .filter(|s| s.kind != SymbolKind::Tls)
                .map(|s| MinSym {
                    name: s.name.clone(),
                    addr: s.address,
                    size: s.size,
                    text: match s.kind {
                        SymbolKind::Function => true,
                        SymbolKind::Other => exec(s.address),
                        _ => false,
                    },
                })
                .collect(),
        )
    }

    /// `lookup_minimal_symbol_by_pc_section` followed by `build_address_symbolic`'s rejection
    /// of zero-sized data symbols.
    fn lookup(&self, vaddr: u64) -> Option<&MinSym> {
        let syms = &self.0;
        let end = syms.partition_point(|s| s.addr <= vaddr);
        let mut hi = end.checked_sub(1)?;
        let mut best_zero: Option<usize> = None;
        let mut sized: Option<usize> = None;
        loop {
            if syms[hi].size == 0 {
                best_zero.get_or_insert(hi);
            } else {
                sized = Some(hi);
                break;
            }
            if hi == 0 {
                break;
            }
            hi -= 1;
        }
        let pick = match sized {
            Some(i) if vaddr < syms[i].addr.saturating_add(syms[i].size) => Some(i),
            _ => best_zero,
        }?;
        let s = &syms[pick];
        (s.size != 0 || s.text).then_some(s)
    }
}

/// What is known about one loaded library, loaded on first use.
enum Library {
    /// Its debug info: DWARF functions and the full symbol tables.
    Debug(Box<Binary>, MinTable),
    /// No usable debug info: the mapped file's ELF symbols only.
    Plain(MinTable),
}

/// The live-process [`AddressNamer`]: gdb's naming over every object the process has loaded.
pub struct GdbSymbols<'a> {
    main: &'a Binary,
    main_table: OnceCell<MinTable>,
    resolver: SymbolResolver,
    options: LoadOptions,
    libraries: Vec<OnceCell<Library>>,
}

impl<'a> GdbSymbols<'a> {
    /// Names addresses of the objects `resolver` found; `main` is the main executable's
    /// debug info, and `options` says where libraries' separate debug files are looked for.
    pub fn new(main: &'a Binary, resolver: SymbolResolver, options: LoadOptions) -> Self {
        let n = resolver.objects().len();
        GdbSymbols {
            main,
            main_table: OnceCell::new(),
            resolver,
            options,
            libraries: (0..n).map(|_| OnceCell::new()).collect(),
        }
    }

    fn library(&self, index: usize) -> &Library {
        self.libraries[index].get_or_init(|| {
            let object = &self.resolver.objects()[index];
            match Binary::load_with(&object.path, &self.options) {
                Ok(bin) => {
                    let table = MinTable::from_binary(&bin);
                    Library::Debug(Box::new(bin), table)
                }
                Err(e) => {
                    tracing::debug!(object = %object.path.display(), error = %e,
                        "no debug info; naming addresses by ELF symbols");
                    let syms = match self.resolver.symbols(index) {
                        Ok(t) => t
                            .symbols()
                            .iter()
                            .map(|s| MinSym {
                                name: s.name.clone(),
                                addr: s.vaddr,
                                size: s.size,
                                text: matches!(s.kind, ElfKind::Function | ElfKind::Ifunc),
                            })
                            .collect(),
                        Err(e) => {
                            tracing::warn!(object = %object.path.display(), error = %e,
                                "cannot read symbols");
                            Vec::new()
                        }
                    };
                    Library::Plain(MinTable::new(syms))
                }
            }
        })
    }
}

/// gdb's choice between the DWARF function and the minimal symbol for link-time `vaddr`.
fn choose(bin: Option<&Binary>, table: &MinTable, vaddr: u64) -> Option<(String, u64)> {
    let function = bin.and_then(|b| b.function_containing(vaddr)).map(|f| {
        let name = f.linkage_name.clone().unwrap_or_else(|| f.name.clone());
        (name, f.low_pc)
    });
    let msym = table.lookup(vaddr);
    let (name, location) = match (function, msym) {
        (Some((_, entry)), Some(m)) if m.addr == vaddr && entry != vaddr => {
            (shown_name(&m.name), m.addr)
        }
        (Some(f), _) => f,
        (None, Some(m)) => (shown_name(&m.name), m.addr),
        (None, None) => return None,
    };
    Some((name, vaddr.checked_sub(location)?))
}

/// The name gdb shows for a minimal symbol called `linkage`. gdb tries each language's
/// demangler on minimal symbol names; for C symbols the one that claims some is Ada's
/// (`ada_sniff_from_mangled_name`): whenever [`ada_decode`] changes a name without rejecting
/// it, the symbol is shown decoded. That is how gcc's `counter.1` (a function static) is shown
/// as `<counter>`, `my__var` as `<my.var>` and `gvar.cold` as `<gvar[cold]>`.
fn shown_name(linkage: &str) -> String {
    let decoded = ada_decode(linkage);
    if decoded != linkage && !decoded.starts_with('<') {
        decoded
    } else {
        linkage.to_owned()
    }
}

/// GNAT's operator encodings (`ada_opname_table`).
const ADA_OPERATORS: &[(&str, &str)] = &[
    ("Oadd", "\"+\""),
    ("Osubtract", "\"-\""),
    ("Omultiply", "\"*\""),
    ("Odivide", "\"/\""),
    ("Omod", "\"mod\""),
    ("Orem", "\"rem\""),
    ("Oexpon", "\"**\""),
    ("Olt", "\"<\""),
    ("Ole", "\"<=\""),
    ("Ogt", "\">\""),
    ("Oge", "\">=\""),
    ("Oeq", "\"=\""),
    ("One", "\"/=\""),
    ("Oand", "\"and\""),
    ("Oor", "\"or\""),
    ("Oxor", "\"xor\""),
    ("Oconcat", "\"&\""),
    ("Oabs", "\"abs\""),
    ("Onot", "\"not\""),
];

/// A port of gdb 13's `ada_decode (encoded, wrap = true, operators = true, wide = true)`
/// (`ada-lang.c`), over ASCII, with the host charset ASCII (gdb in the C locale). Returns
/// `<encoded>` where gdb's decoder gives up ("Suppress").
fn ada_decode(name: &str) -> String {
    let mut enc = name.as_bytes();
    if enc.first() == Some(&b'.') {
        enc = &enc[1..];
    }
    if enc.starts_with(b"_ada_") {
        enc = &enc[5..];
    }
    let suppress = |enc: &[u8]| -> String {
        let e = String::from_utf8_lossy(enc);
        if enc.first() == Some(&b'<') {
            e.into_owned()
        } else {
            format!("<{e}>")
        }
    };
    // Reads past the logical end see the rest of the string, then NULs, as in C.
    let at = |i: isize| -> u8 {
        if i < 0 {
            0
        } else {
            enc.get(i as usize).copied().unwrap_or(0)
        }
    };
    if matches!(enc.first(), Some(b'_' | b'<')) {
        return suppress(enc);
    }
    let mut len0 = enc.len() as isize;

    // remove_compiler_suffix: a trailing `.alpha*`.
    let mut suffix: Option<usize> = None;
    {
        let mut offset = len0 - 1;
        while offset > 0 && at(offset).is_ascii_alphabetic() {
            offset -= 1;
        }
        if offset > 0 && at(offset) == b'.' {
            len0 = offset;
            suffix = Some(offset as usize + 1);
        }
    }
    // ada_remove_trailing_digits: `.N`, `$N`, `___N`, `__N`.
    if len0 > 1 && at(len0 - 1).is_ascii_digit() {
        let mut i = len0 - 2;
        while i > 0 && at(i).is_ascii_digit() {
            i -= 1;
        }
        if i >= 0 && (at(i) == b'.' || at(i) == b'$') {
            len0 = i;
        } else if i >= 2 && enc[(i - 2) as usize..].starts_with(b"___") {
            len0 = i - 2;
        } else if i >= 1 && enc[(i - 1) as usize..].starts_with(b"__") {
            len0 = i - 1;
        }
    }
    // ada_remove_po_subprogram_suffix: a trailing `N` after a digit or lowercase letter.
    if len0 > 1
        && at(len0 - 1) == b'N'
        && (at(len0 - 2).is_ascii_digit() || at(len0 - 2).is_ascii_lowercase())
    {
        len0 -= 1;
    }
    // `___X...` suffixes; any other `___` is not an encoding.
    if let Some(p) = enc.windows(3).position(|w| w == b"___") {
        if (p as isize) < len0 - 3 {
            if at(p as isize + 3) == b'X' {
                len0 = p as isize;
            } else {
                return suppress(enc);
            }
        }
    }
    let ends_with =
        |len0: isize, s: &[u8]| len0 > s.len() as isize && enc[..len0 as usize].ends_with(s);
    if ends_with(len0, b"TKB") {
        len0 -= 3;
    }
    if ends_with(len0, b"TB") {
        len0 -= 2;
    }
    if ends_with(len0, b"B") {
        len0 -= 1;
    }
    // Trailing `__{digit}+` or `${digit}+`.
    if len0 > 1 && at(len0 - 1).is_ascii_digit() {
        let mut i = len0 - 2;
        while (i >= 0 && at(i).is_ascii_digit())
            || (i >= 1 && at(i) == b'_' && at(i - 1).is_ascii_digit())
        {
            i -= 1;
        }
        if i > 1 && at(i) == b'_' && at(i - 1) == b'_' {
            len0 = i - 1;
        } else if i >= 0 && at(i) == b'$' {
            len0 = i;
        }
    }

    let mut decoded: Vec<u8> = Vec::new();
    let mut i: isize = 0;
    while i < len0 && !at(i).is_ascii_alphabetic() {
        decoded.push(at(i));
        i += 1;
    }
    let mut at_start_name = true;
    'outer: while i < len0 {
        if at_start_name && at(i) == b'O' {
            for (op, shown) in ADA_OPERATORS {
                let op = op.as_bytes();
                let n = op.len() as isize;
                let same = (1..n).all(|k| at(i + k) == op[k as usize]);
                if same && !at(i + n).is_ascii_alphanumeric() {
                    decoded.extend_from_slice(shown.as_bytes());
                    at_start_name = false;
                    i += n;
                    continue 'outer;
                }
            }
        }
        at_start_name = false;
        if i < len0 - 4 && enc[i as usize..].starts_with(b"TK__") {
            i += 2;
        }
        if len0 - i > 5
            && at(i) == b'_'
            && at(i + 1) == b'_'
            && at(i + 2) == b'B'
            && at(i + 3) == b'_'
            && at(i + 4).is_ascii_digit()
        {
            let mut k = i + 5;
            while k < len0 && at(k).is_ascii_digit() {
                k += 1;
            }
            if len0 - k > 2 && at(k) == b'_' && at(k + 1) == b'_' {
                i = k;
            }
        }
        if len0 - i > 3 && at(i) == b'_' && at(i + 1) == b'E' && at(i + 2).is_ascii_digit() {
            let mut k = i + 3;
            while k < len0 && at(k).is_ascii_digit() {
                k += 1;
            }
            if k < len0 && (at(k) == b'b' || at(k) == b's') {
                k += 1;
                if k == len0 || (k < len0 && at(k) == b'_') {
                    i = k;
                }
            }
        }
        if at(i) == b'N' && at(i + 1) == b'_' && at(i + 2) == b'_' {
            let mut ptr = i - 1;
            while ptr >= 0 && (at(ptr).is_ascii_digit() || at(ptr).is_ascii_lowercase()) {
                ptr -= 1;
            }
            if ptr < 0 || (ptr > 0 && at(ptr) == b'_' && at(ptr - 1) == b'_') {
                i += 1;
            }
        }
        // Wide characters `Uhh`, `Whhhh`, `WWhhhhhhhh`: only ASCII converts to the host
        // charset; anything else is left encoded.
        let hex = |from: isize, n: isize| -> Option<u32> {
            (0..n).try_fold(0u32, |acc, k| {
                char::from(at(from + k))
                    .to_digit(16)
                    .map(|d| (acc << 4) | d)
            })
        };
        if at(i) == b'U' && at(i + 1).is_ascii_hexdigit() {
            if let Some(v) = hex(i + 1, 2).filter(|v| *v < 0x80) {
                decoded.push(v as u8);
                i += 3;
                continue;
            }
        } else if at(i) == b'W' && at(i + 1).is_ascii_hexdigit() {
            if let Some(v) = hex(i + 1, 4).filter(|v| *v < 0x80) {
                decoded.push(v as u8);
                i += 5;
                continue;
            }
        } else if at(i) == b'W' && at(i + 1) == b'W' && at(i + 2).is_ascii_hexdigit() {
            if let Some(v) = hex(i + 2, 8).filter(|v| *v < 0x80) {
                decoded.push(v as u8);
                i += 10;
                continue;
            }
        }
        if at(i) == b'X' && i != 0 && at(i - 1).is_ascii_alphanumeric() {
            loop {
                i += 1;
                if !(i < len0 && (at(i) == b'b' || at(i) == b'n')) {
                    break;
                }
            }
            if i < len0 {
                return suppress(enc);
            }
        } else if i < len0 - 2 && at(i) == b'_' && at(i + 1) == b'_' {
            decoded.push(b'.');
            at_start_name = true;
            i += 2;
        } else {
            decoded.push(at(i));
            i += 1;
        }
    }
    if decoded.iter().any(|c| c.is_ascii_uppercase() || *c == b' ') {
        return suppress(enc);
    }
    // gdb keeps the decoded name as a C string: it ends at a NUL copied from past the end.
    if let Some(nul) = decoded.iter().position(|&c| c == 0) {
        decoded.truncate(nul);
    }
    let mut out = String::from_utf8_lossy(&decoded).into_owned();
    if let Some(s) = suffix {
        out.push('[');
        out.push_str(&String::from_utf8_lossy(&enc[s..]));
        out.push(']');
    }
    out
}

impl AddressNamer for GdbSymbols<'_> {
    fn name_address(&self, addr: RemoteAddr) -> Option<AddressName> {
        let index = self
            .resolver
            .objects()
            .iter()
            .position(|o| o.role != ObjectRole::Vdso && o.range.contains(addr))?;
        let object = &self.resolver.objects()[index];
        let vaddr = object.file_vaddr(addr);
        let (name, offset) = if object.role == ObjectRole::Main {
            let table = self
                .main_table
                .get_or_init(|| MinTable::from_binary(self.main));
            choose(Some(self.main), table, vaddr)?
        } else {
            match self.library(index) {
                Library::Debug(bin, table) => choose(Some(bin), table, vaddr)?,
                Library::Plain(table) => choose(None, table, vaddr)?,
            }
        };
        Some(AddressName { name, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, addr: u64, size: u64, text: bool) -> MinSym {
        MinSym {
            name: name.into(),
            addr,
            size,
            text,
        }
    }

    #[test]
    fn minimal_symbols_follow_gdb() {
        let t = MinTable::new(vec![
            sym("_init", 0x1000, 0, true),
            sym("add", 0x1100, 0x20, true),
            sym("__bss_start", 0x4000, 0, false),
            sym("stdout", 0x4000, 8, false),
            sym("stdout@GLIBC_2.2.5", 0x4000, 8, false),
            sym("g_arr", 0x4010, 20, false),
            sym("_end", 0x4100, 0, false),
        ]);
        let name = |a| t.lookup(a).map(|s| s.name.as_str());
        // Aliases: the last by name.
        assert_eq!(name(0x4000), Some("stdout@GLIBC_2.2.5"));
        assert_eq!(name(0x4013), Some("g_arr"));
        // Past the end of the sized symbol below: nothing (the zero-sized data symbol above
        // it is rejected).
        assert_eq!(name(0x4024), None);
        assert_eq!(name(0x4100), None);
        // Zero-sized code symbols are usable.
        assert_eq!(name(0x1004), Some("_init"));
        assert_eq!(name(0x1100 + 0x1f), Some("add"));
        assert_eq!(name(0x0fff), None);
    }

    #[test]
    fn minimal_symbol_names_go_through_gdbs_ada_decoder() {
        // gdb 13's output for pointers to data symbols of these names.
        for (linkage, shown) in [
            ("counter.1", "counter"),
            ("gvar.cold", "gvar[cold]"),
            ("my__var", "my.var"),
            ("countN", "count"),
            ("tmp$12", "tmp"),
            ("abc__12", "abc"),
            ("fooB", "foo"),
            ("foo.isra.0", "foo.isra"),
            ("xyz___XR", "xyz"),
            ("aTK__b", "a.b"),
            ("Mixed.3", "Mixed.3"),
            ("lower.part.3", "lower.part"),
            ("a1.2.3", "a1.2"),
            ("xX", "x"),
            ("abXb", "ab"),
            ("oadd", "oadd"),
            ("Oadd", "\"+\""),
            ("a___b", "a___b"),
            ("q__B_12__r", "q.r"),
            ("s_E12b", "s"),
            ("t1N__u", "t1.u"),
            ("n9lives", "n9lives"),
            ("x.", "x[]"),
            ("a..3", "a."),
            ("_IO_2_1_stdout_", "_IO_2_1_stdout_"),
            ("stdout@GLIBC_2.2.5", "stdout@GLIBC_2.2.5"),
            ("g_nodes", "g_nodes"),
            ("x86_64", "x86_64"),
        ] {
            assert_eq!(shown_name(linkage), shown, "{linkage}");
        }
    }
}
