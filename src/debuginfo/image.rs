//! The light model of an object mapped in a process (a shared library, the dynamic linker, the
//! vDSO, or the program itself): its ELF symbols and its call frame information, and nothing
//! of its DWARF types. Enough to unwind through its code and name its functions, at a cost of
//! milliseconds even for libc (whose full [`super::Binary`] takes about half a second).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object, ObjectSection};

use super::cfi::Cfi;
use super::elf::{self, ElfKind, Segment, Symbol, SymbolKind};
use super::error::DebugInfoError;
use super::LoadOptions;

/// Symbols and CFI of one ELF object. See the module documentation.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    debug_file: Option<PathBuf>,
    build_id: Option<Vec<u8>>,
    kind: ElfKind,
    segments: Vec<Segment>,
    /// Every defined symbol, sorted by (address, name).
    symbols: Vec<Symbol>,
    /// Indexes into `symbols` of the code symbols, sorted by (address, name).
    code: Vec<u32>,
    cfi: Cfi,
}

fn has_symtab(f: &object::File<'_>) -> bool {
    f.section_by_name(".symtab")
        .is_some_and(|s| s.file_range().is_some_and(|(_, n)| n > 0))
}

fn usable_debug_file(f: &object::File<'_>) -> bool {
    has_symtab(f) || f.section_by_name(".debug_frame").is_some()
}

impl Image {
    /// Loads `path` with the default debug search ([`LoadOptions::default`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Image, DebugInfoError> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Maps `path` and reads its symbols and CFI; when the file has no `.symtab` (a
    /// stripped library such as Debian's libc), its separate debug file (by build-id, then
    /// `.gnu_debuglink`, as [`super::Binary::load_with`] looks) adds its `.symtab` and, if the
    /// file has none, its `.debug_frame`. A missing debug file is not an error.
    pub fn load_with(
        path: impl AsRef<Path>,
        options: &LoadOptions,
    ) -> Result<Image, DebugInfoError> {
        let path = path.as_ref();
        let map = tracer::mapfile::MappedFile::open(path).map_err(|source| DebugInfoError::Io {
            path: path.to_owned(),
            source,
        })?;
        let backing: super::cfi::Backing = Arc::new(MapRef(map));
        Self::from_backing(path, backing, options, true)
    }

    /// An image from bytes held in memory (the vDSO, read from a process), without looking
    /// for debug files.
    pub fn from_bytes(name: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Image, DebugInfoError> {
        let backing: super::cfi::Backing = Arc::new(bytes);
        Self::from_backing(name.as_ref(), backing, &LoadOptions::default(), false)
    }

    fn from_backing(
        path: &Path,
        backing: super::cfi::Backing,
        options: &LoadOptions,
        search: bool,
    ) -> Result<Image, DebugInfoError> {
        let data: &[u8] = (*backing).as_ref();
        let file = elf::parse(path, data)?;
        let kind = elf::kind(path, &file)?;
        let segments = elf::segments(&file);
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let mut symbols = Vec::new();
        elf::symbols(&file, &mut symbols);
        let separate = if search && !has_symtab(&file) {
            elf::find_separate_where(
                path,
                &file,
                &elf::Search {
                    roots: &options.debug_roots,
                },
                usable_debug_file,
            )
            .ok()
        } else {
            None
        };
        let cfi = match &separate {
            Some(found) => {
                let dfile = elf::parse(&found.path, &found.data)?;
                elf::symbols(&dfile, &mut symbols);
                let dback: super::cfi::Backing = Arc::new(MapRef(
                    tracer::mapfile::MappedFile::open(&found.path).map_err(|source| {
                        DebugInfoError::Io {
                            path: found.path.clone(),
                            source,
                        }
                    })?,
                ));
                let dfile2 = elf::parse(&found.path, (*dback).as_ref())?;
                Cfi::load(path, &file, backing.clone(), Some((&dfile2, dback.clone())))?
            }
            None => Cfi::load(path, &file, backing.clone(), None)?,
        };
        symbols.sort_by(|a, b| (a.address, &a.name).cmp(&(b.address, &b.name)));
        symbols.dedup_by(|a, b| a.address == b.address && a.name == b.name);
        let exec = |addr: u64| {
            segments
                .iter()
                .any(|s| s.executable && s.vaddr <= addr && addr < s.vaddr + s.memsz)
        };
        let code = symbols
            .iter()
            .enumerate()
            .filter(|(_, s)| match s.kind {
                SymbolKind::Function => true,
                SymbolKind::Other => exec(s.address),
                _ => false,
            })
            .map(|(i, _)| i as u32)
            .collect();
        Ok(Image {
            path: path.to_owned(),
            debug_file: separate.map(|f| f.path),
            build_id,
            kind,
            segments,
            symbols,
            code,
            cfi,
        })
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The separate debug file whose symbols (and perhaps `.debug_frame`) were added.
    pub fn debug_file(&self) -> Option<&Path> {
        self.debug_file.as_deref()
    }

    /// The GNU build-id, if present.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// Executable or position-independent.
    pub fn kind(&self) -> ElfKind {
        self.kind
    }

    /// The `PT_LOAD` segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether link-time `vaddr` is inside an executable segment.
    pub fn is_code(&self, vaddr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.executable && s.vaddr <= vaddr && vaddr < s.vaddr + s.memsz)
    }

    /// Every defined symbol, sorted by address then name.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// The call frame information.
    pub fn cfi(&self) -> &Cfi {
        &self.cfi
    }

    /// The code symbol naming link-time `vaddr`, chosen as gdb's minimal symbols are: the
    /// closest code symbol at or below it; among several at one address the last by name
    /// (so `select` over `__select` and `__GI___select`); a sized symbol must contain the
    /// address, else a zero-sized one below it is taken.
    pub fn code_symbol(&self, vaddr: u64) -> Option<&Symbol> {
        let end = self
            .code
            .partition_point(|&i| self.symbols[i as usize].address <= vaddr);
        let mut zero: Option<&Symbol> = None;
        for &i in self.code[..end].iter().rev() {
            let s = &self.symbols[i as usize];
            if s.size == 0 {
                zero.get_or_insert(s);
                continue;
            }
            return if vaddr < s.address.saturating_add(s.size) {
                Some(s)
            } else {
                zero
            };
        }
        zero
    }

    /// The address of the code symbol `name`, if defined.
    pub fn code_symbol_named(&self, name: &str) -> Option<&Symbol> {
        self.code
            .iter()
            .map(|&i| &self.symbols[i as usize])
            .find(|s| s.name == name)
    }
}

/// A mapped file as shared bytes.
struct MapRef(tracer::mapfile::MappedFile);

impl AsRef<[u8]> for MapRef {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
