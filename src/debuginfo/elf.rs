//! The ELF side: checking that a file is an x86_64 executable or shared object, its load
//! segments and symbols, and finding its DWARF — in the file itself or in a separate debug
//! file named by build-id or `.gnu_debuglink`, as gdb looks for them.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::error::DebugInfoError;

/// What kind of ELF file a binary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ElfKind {
    /// `ET_EXEC`: loaded at its link-time addresses.
    Executable,
    /// `ET_DYN`: a position-independent executable or a shared object, loaded at its
    /// link-time addresses plus a load bias.
    Dynamic,
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// Link-time virtual address.
    pub vaddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Size in the file (the rest up to `memsz` is zero-filled, as `.bss`).
    pub filesz: u64,
    /// `PF_R`.
    pub readable: bool,
    /// `PF_W`.
    pub writable: bool,
    /// `PF_X`.
    pub executable: bool,
}

/// What an ELF symbol names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SymbolKind {
    /// Code (`STT_FUNC`).
    Function,
    /// Data (`STT_OBJECT`, `STT_COMMON`).
    Object,
    /// Thread-local data (`STT_TLS`); its value is an offset in the TLS block.
    Tls,
    /// Anything else defined (`STT_NOTYPE` such as `_end`).
    Other,
}

/// A defined symbol from `.symtab`, `.dynsym` or the separate debug file's `.symtab`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Symbol {
    /// Name as in the symbol table (mangled for Rust and C++).
    pub name: String,
    /// Link-time address.
    pub address: u64,
    /// `st_size` (0 when unknown).
    pub size: u64,
    /// What it names.
    pub kind: SymbolKind,
    /// Global or weak binding (visible to other objects), as opposed to local.
    pub global: bool,
}

pub(crate) const X86_64_ONLY: object::Architecture = object::Architecture::X86_64;

/// Parses `data` (the contents of `path`) as an x86_64 ELF executable or shared object.
pub(crate) fn parse<'d>(path: &Path, data: &'d [u8]) -> Result<object::File<'d>, DebugInfoError> {
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        return Err(DebugInfoError::NotElf {
            path: path.to_owned(),
            detail: describe_start(data),
        });
    }
    let file = object::File::parse(data).map_err(|e| DebugInfoError::MalformedElf {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if file.architecture() != X86_64_ONLY {
        let bits = if file.is_64() { "64-bit" } else { "32-bit" };
        return Err(DebugInfoError::WrongArchitecture {
            path: path.to_owned(),
            found: format!("{:?} ({bits})", file.architecture()),
        });
    }
    Ok(file)
}

/// The kind of a parsed file, or why it is not supported.
pub(crate) fn kind(path: &Path, file: &object::File<'_>) -> Result<ElfKind, DebugInfoError> {
    match file.kind() {
        object::ObjectKind::Executable => Ok(ElfKind::Executable),
        object::ObjectKind::Dynamic => Ok(ElfKind::Dynamic),
        other => Err(DebugInfoError::UnsupportedKind {
            path: path.to_owned(),
            found: match other {
                object::ObjectKind::Relocatable => "a relocatable object file (.o)".into(),
                object::ObjectKind::Core => "a core dump".into(),
                o => format!("ELF file kind {o:?}"),
            },
        }),
    }
}

fn describe_start(data: &[u8]) -> String {
    if data.is_empty() {
        return "the file is empty".into();
    }
    let head = &data[..data.len().min(16)];
    if head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\n' || b == b'\t')
    {
        let text = String::from_utf8_lossy(head);
        format!(
            "it starts with the text {:?}, not the ELF magic 7f 45 4c 46",
            text.lines().next().unwrap_or("")
        )
    } else {
        let hex: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!(
            "it starts with bytes {}, not the ELF magic 7f 45 4c 46",
            hex.join(" ")
        )
    }
}

/// The `PT_LOAD` segments.
pub(crate) fn segments(file: &object::File<'_>) -> Vec<Segment> {
    file.segments()
        .map(|s| {
            let (file_offset, filesz) = s.file_range();
            let (r, w, x) = match s.flags() {
                // PF_X = 1, PF_W = 2, PF_R = 4.
                object::SegmentFlags::Elf { p_flags, .. } => {
                    (p_flags.0 & 4 != 0, p_flags.0 & 2 != 0, p_flags.0 & 1 != 0)
                }
                _ => (true, false, false),
            };
            Segment {
                vaddr: s.address(),
                memsz: s.size(),
                file_offset,
                filesz,
                readable: r,
                writable: w,
                executable: x,
            }
        })
        .collect()
}

/// The `PT_GNU_RELRO` range, link-time `[start, end)`.
pub(crate) fn relro(data: &[u8]) -> Option<(u64, u64)> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let elf = ElfFile64::<object::Endianness>::parse(data).ok()?;
    let endian = elf.endian();
    let ph = elf
        .elf_header()
        .program_headers(endian, data)
        .ok()?
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_GNU_RELRO)?;
    let start = ph.p_vaddr(endian);
    Some((start, start + ph.p_memsz(endian)))
}

/// Defined, named symbols of `.symtab` and `.dynsym`.
pub(crate) fn symbols(file: &object::File<'_>, out: &mut Vec<Symbol>) {
    for s in file.symbols().chain(file.dynamic_symbols()) {
        if s.is_undefined() {
            continue;
        }
        let kind = match s.kind() {
            object::SymbolKind::Text => SymbolKind::Function,
            object::SymbolKind::Data => SymbolKind::Object,
            object::SymbolKind::Tls => SymbolKind::Tls,
            object::SymbolKind::Unknown => SymbolKind::Other,
            _ => continue,
        };
        let Ok(name) = s.name() else { continue };
        if name.is_empty() {
            continue;
        }
        out.push(Symbol {
            name: name.to_owned(),
            address: s.address(),
            size: s.size(),
            kind,
            global: s.is_global(),
        });
    }
}

/// Whether the file carries DWARF (a non-empty `.debug_info` with contents in the file).
pub(crate) fn has_dwarf(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info")
        .is_some_and(|s| s.file_range().is_some_and(|(_, size)| size > 0))
}

/// Where to look for separate debug files.
pub(crate) struct Search<'o> {
    pub roots: &'o [PathBuf],
}

/// A separate debug file that matched.
pub(crate) struct Found {
    pub path: PathBuf,
    pub data: tracer::mapfile::MappedFile,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Looks for the separate debug file of `file` (at `path`): first by build-id under each
/// root's `.build-id/xx/yyyy.debug`, then by `.gnu_debuglink` next to the binary, in its
/// `.debug/` subdirectory and under each root followed by the binary's directory. A candidate
/// must be an x86_64 ELF file with DWARF whose build-id matches (when both have one) and whose
/// CRC matches the debuglink's (when found by debuglink). Returns what was tried when nothing
/// fits.
pub(crate) fn find_separate(
    path: &Path,
    file: &object::File<'_>,
    search: &Search<'_>,
) -> Result<Found, Vec<String>> {
    find_separate_where(path, file, search, has_dwarf)
}

/// [`find_separate`] accepting a candidate when `usable` says so (the light loading of
/// [`super::Image`] takes a debug file for its symbols and CFI alone).
pub(crate) fn find_separate_where(
    path: &Path,
    file: &object::File<'_>,
    search: &Search<'_>,
    usable: fn(&object::File<'_>) -> bool,
) -> Result<Found, Vec<String>> {
    let mut tried = Vec::new();
    let build_id = file.build_id().ok().flatten();
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let h = hex(id);
        for root in search.roots {
            let cand = root
                .join(".build-id")
                .join(&h[..2])
                .join(format!("{}.debug", &h[2..]));
            match check(&cand, build_id, None, usable) {
                Ok(found) => return Ok(found),
                Err(why) => tried.push(format!("{} ({why})", cand.display())),
            }
        }
    } else {
        tried.push("no build-id note to look up".into());
    }
    match file.gnu_debuglink() {
        Ok(Some((name, crc))) => {
            let name = String::from_utf8_lossy(name).into_owned();
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
            let dir = real.parent().unwrap_or(Path::new("/")).to_owned();
            let mut cands = vec![dir.join(&name), dir.join(".debug").join(&name)];
            for root in search.roots {
                let rel = dir.strip_prefix("/").unwrap_or(&dir);
                cands.push(root.join(rel).join(&name));
            }
            for cand in cands {
                if cand == real {
                    continue;
                }
                match check(&cand, build_id, Some(crc), usable) {
                    Ok(found) => return Ok(found),
                    Err(why) => tried.push(format!("{} ({why})", cand.display())),
                }
            }
        }
        _ => tried.push("no .gnu_debuglink section".into()),
    }
    Err(tried)
}

fn check(
    cand: &Path,
    build_id: Option<&[u8]>,
    crc: Option<u32>,
    usable: fn(&object::File<'_>) -> bool,
) -> Result<Found, String> {
    let data = match tracer::mapfile::MappedFile::open(cand) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("not found".into()),
        Err(e) => return Err(e.to_string()),
    };
    {
        let f = parse(cand, &data).map_err(|e| e.to_string())?;
        if let (Some(want), Ok(Some(have))) = (build_id, f.build_id()) {
            if want != have {
                return Err(format!("build-id {} does not match", hex(have)));
            }
        }
        if !usable(&f) {
            return Err("has no .debug_info".into());
        }
    }
    if let Some(want) = crc {
        let have = crc32(&data);
        if have != want {
            return Err(format!(
                "CRC {have:08x} does not match the debuglink's {want:08x}"
            ));
        }
    }
    Ok(Found {
        path: cand.to_owned(),
        data,
    })
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// The CRC-32 (IEEE, as zlib) that `.gnu_debuglink` records for the debug file.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn describes_non_elf_starts() {
        assert_eq!(describe_start(b""), "the file is empty");
        assert!(describe_start(b"#!/bin/sh\necho").contains("\"#!/bin/sh\""));
        assert!(describe_start(&[0xca, 0xfe, 0xba, 0xbe, 0]).contains("ca fe ba be"));
    }
}
