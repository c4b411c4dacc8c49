//! A read-only model of one binary's debug information: its types, its variables with fixed
//! addresses (globals, file statics, function statics), its functions and compilation units,
//! and what is needed to place link-time addresses in a running process (PIE load bias).
//!
//! The model is built once per binary by [`Binary::load`] from the ELF file and its DWARF
//! (versions 2 to 5, as gcc 12 and rustc emit them), or from a separate debug file found by
//! build-id or `.gnu_debuglink`. It is plain owned data: nothing is read from the file again,
//! and nothing here talks to a process — callers give the mapping base they read from
//! `/proc/PID/maps` to [`Binary::load_bias`].
//!
//! Types are a closed enum ([`Type`]) keyed by [`TypeId`]; [`Types::byte_size`] and
//! [`Types::name`] answer from the model alone. Structurally identical types of different
//! compilation units share one id.
//!
//! ```no_run
//! use transplant::debuginfo::{Binary, VariableKind};
//! let bin = Binary::load("/usr/bin/some-program-built-with-g")?;
//! for v in bin.variables() {
//!     if let VariableKind::Global = v.kind {
//!         println!("{} : {} at {:#x}", v.name, bin.types().name(v.ty), v.address);
//!     }
//! }
//! # Ok::<(), transplant::debuginfo::DebugInfoError>(())
//! ```
#![warn(missing_docs)]

pub mod cfi;
mod dedup;
mod dwarf;
mod elf;
mod error;
pub mod frames;
mod image;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use elf::{ElfKind, Segment, Symbol, SymbolKind};
pub use error::DebugInfoError;
pub use frames::{
    Block, BlockKind, LocalKind, LocalVariable, Location, LocationRange, Locations, Subprogram,
    SubprogramId,
};
pub use image::Image;
pub use types::{
    BitField, Composite, Encoding, EnumType, FatPointer, FatPointerKind, Language, Member, Type,
    TypeId, Types, Variant, VariantEnum,
};

/// Index of a compilation unit in [`Binary::units`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct CuId(pub u32);

/// A compilation unit (one `.c` file, or one Rust codegen unit).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CompilationUnit {
    /// `DW_AT_name`: the source file as given to the compiler (`fixtures/c/types.c`,
    /// `../sysdeps/x86/abi-note.c`); for Rust `crate.rs/@/crate.hash-cgu.0`.
    pub name: String,
    /// `DW_AT_comp_dir`: the compiler's working directory.
    pub comp_dir: Option<String>,
    /// `DW_AT_producer`: compiler and flags.
    pub producer: Option<String>,
    /// Source language.
    pub language: Language,
    /// DWARF version of the unit (2 to 5).
    pub version: u16,
    /// Offset of the unit in `.debug_info` (or `.debug_types`).
    pub offset: u64,
}

/// How a variable with a fixed address is visible, which is what tells apart two variables of
/// the same name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum VariableKind {
    /// External linkage: one per program.
    Global,
    /// `static` at file scope: one per compilation unit.
    FileStatic {
        /// Name of the compilation unit ([`CompilationUnit::name`]).
        cu: String,
    },
    /// `static` inside a function: one per function.
    FunctionStatic {
        /// Name of the compilation unit.
        cu: String,
        /// The enclosing function (Rust: its path).
        function: String,
    },
}

/// A variable with a fixed link-time address: a global, file static or function static.
/// Locals, register variables and optimised-away variables are not listed; thread-locals are
/// listed apart ([`Binary::thread_locals`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Variable {
    /// Source name; for Rust the full path (`mycrate::COUNTER`).
    pub name: String,
    /// Mangled or assembler name, when the compiler records one.
    pub linkage_name: Option<String>,
    /// Global, file static or function static.
    pub kind: VariableKind,
    /// The compilation unit that defines it.
    pub unit: CuId,
    /// Its type.
    pub ty: TypeId,
    /// Link-time address (add [`Binary::load_bias`] for the address in a process).
    pub address: u64,
    /// `sizeof` from the model; `None` when the type has no known size.
    pub size: Option<u64>,
    /// `st_size` of the ELF symbol at the same address and name, when there is one. It can
    /// exceed `size`, for a struct whose flexible array member was initialised statically.
    pub symbol_size: Option<u64>,
}

/// A thread-local variable (`__thread`, `thread_local!` statics): its storage is per thread,
/// at `offset` in the module's TLS block, so it has no single address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ThreadLocal {
    /// Source name (Rust: path).
    pub name: String,
    /// Mangled name, when recorded.
    pub linkage_name: Option<String>,
    /// Visibility, as for [`Variable`].
    pub kind: VariableKind,
    /// Defining compilation unit.
    pub unit: CuId,
    /// Its type.
    pub ty: TypeId,
    /// Offset in the module's TLS block.
    pub offset: u64,
}

/// A function with code in the binary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Function {
    /// Source name (Rust: path such as `mycrate::main`).
    pub name: String,
    /// Mangled name, when recorded.
    pub linkage_name: Option<String>,
    /// Defining compilation unit (`None` only for malformed input).
    pub unit: Option<CuId>,
    /// Entry address (link time): what a function pointer to it holds.
    pub low_pc: u64,
    /// End of the address range that contains the entry.
    pub high_pc: u64,
    /// All address ranges of its code (more than one when the compiler split it, e.g. into
    /// hot and `.cold` parts).
    pub ranges: Vec<(u64, u64)>,
    /// External linkage.
    pub external: bool,
}

/// Where to look for separate debug files.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Global debug directories, searched for `.build-id/xx/yyyy.debug` and for
    /// `<root>/<binary's directory>/<debuglink name>`. Files next to the binary and in its
    /// `.debug/` subdirectory are always searched too.
    pub debug_roots: Vec<PathBuf>,
}

impl Default for LoadOptions {
    /// `/usr/lib/debug`, as gdb.
    fn default() -> Self {
        LoadOptions {
            debug_roots: vec![PathBuf::from("/usr/lib/debug")],
        }
    }
}

/// Figures about one load, for reports and benchmarks.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadStats {
    /// Wall time of [`Binary::load`].
    pub elapsed: Duration,
    /// Bytes of the file holding the DWARF.
    pub dwarf_file_bytes: u64,
    /// Type DIEs read, before identical types were merged.
    pub type_dies: usize,
    /// Types in the model after merging.
    pub types: usize,
}

/// The debug-info model of one ELF executable or shared object.
#[derive(Debug)]
pub struct Binary {
    path: PathBuf,
    debug_file: Option<PathBuf>,
    build_id: Option<Vec<u8>>,
    kind: ElfKind,
    segments: Vec<Segment>,
    /// `PT_GNU_RELRO`: link-time `[start, end)` made read-only after relocation.
    relro: Option<(u64, u64)>,
    types: Types,
    units: Vec<CompilationUnit>,
    variables: Vec<Variable>,
    by_name: HashMap<String, Vec<usize>>,
    /// (start, end, index into `variables`) sorted by start.
    var_extents: Vec<(u64, u64, usize)>,
    /// (start, end, index into `functions`) of every code range, sorted by start.
    code_ranges: Vec<(u64, u64, usize)>,
    thread_locals: Vec<ThreadLocal>,
    functions: Vec<Function>,
    subprograms: Vec<Subprogram>,
    /// (start, end, index into `subprograms`) of every code range, sorted by start.
    subprogram_ranges: Vec<(u64, u64, u32)>,
    symbols: Vec<Symbol>,
    notes: Vec<String>,
    stats: LoadStats,
}

impl Binary {
    /// Loads `path` with the default debug search ([`LoadOptions::default`]).
    ///
    /// Fails, naming the file and the reason, if it cannot be read, is not ELF, is not for
    /// x86_64, is neither an executable nor a shared object, or has no DWARF in itself nor in
    /// a separate debug file (the message lists the places searched).
    pub fn load(path: impl AsRef<Path>) -> Result<Binary, DebugInfoError> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads `path`, searching for separate debug files as `options` say.
    pub fn load_with(
        path: impl AsRef<Path>,
        options: &LoadOptions,
    ) -> Result<Binary, DebugInfoError> {
        let start = Instant::now();
        let path = path.as_ref();
        let data =
            tracer::mapfile::MappedFile::open(path).map_err(|source| DebugInfoError::Io {
                path: path.to_owned(),
                source,
            })?;
        let file = elf::parse(path, &data)?;
        let kind = elf::kind(path, &file)?;
        let segments = elf::segments(&file);
        let relro = elf::relro(&data);
        let build_id = {
            use object::Object;
            file.build_id().ok().flatten().map(<[u8]>::to_vec)
        };
        let mut symbols = Vec::new();
        elf::symbols(&file, &mut symbols);

        let separate = if elf::has_dwarf(&file) {
            None
        } else {
            let search = elf::Search {
                roots: &options.debug_roots,
            };
            match elf::find_separate(path, &file, &search) {
                Ok(found) => Some(found),
                Err(tried) => {
                    return Err(DebugInfoError::NoDebugInfo {
                        path: path.to_owned(),
                        reason: format!(
                            "the file has no .debug_info section (built without -g, or stripped) \
                             and no separate debug file was found; tried: {}",
                            tried.join("; ")
                        ),
                    })
                }
            }
        };
        let (parsed, dwarf_bytes) = match &separate {
            None => {
                let mut parsed = dwarf::parse(path, &file)?;
                note_supplementary(&file, &mut parsed.notes);
                (parsed, data.len())
            }
            Some(found) => {
                let dfile = elf::parse(&found.path, &found.data)?;
                elf::symbols(&dfile, &mut symbols);
                let mut parsed = dwarf::parse(&found.path, &dfile)?;
                note_supplementary(&dfile, &mut parsed.notes);
                (parsed, found.data.len())
            }
        };
        symbols.sort_by(|a, b| (a.address, &a.name).cmp(&(b.address, &b.name)));
        symbols.dedup_by(|a, b| a.address == b.address && a.name == b.name);

        let mut variables = parsed.variables;
        {
            let sizes: HashMap<(u64, &str), u64> = symbols
                .iter()
                .filter(|s| s.kind == SymbolKind::Object)
                .map(|s| ((s.address, s.name.as_str()), s.size))
                .collect();
            for v in &mut variables {
                let plain = v.linkage_name.as_deref().unwrap_or(&v.name);
                v.symbol_size = sizes.get(&(v.address, plain)).copied().or_else(|| {
                    // Statics may carry a compiler suffix (`counter.1`).
                    symbols
                        .binary_search_by_key(&v.address, |s| s.address)
                        .ok()
                        .map(|i| &symbols[i])
                        .filter(|s| s.kind == SymbolKind::Object)
                        .map(|s| s.size)
                });
            }
        }
        let mut var_extents: Vec<(u64, u64, usize)> = variables
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let len = v.size.unwrap_or(0).max(v.symbol_size.unwrap_or(0)).max(1);
                (v.address, v.address.saturating_add(len), i)
            })
            .collect();
        var_extents.sort_unstable();
        let mut code_ranges: Vec<(u64, u64, usize)> = parsed
            .functions
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.ranges.iter().map(move |&(b, e)| (b, e, i)))
            .collect();
        code_ranges.sort_unstable();
        let mut subprogram_ranges: Vec<(u64, u64, u32)> = parsed
            .subprograms
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.ranges.iter().map(move |&(b, e)| (b, e, i as u32)))
            .collect();
        subprogram_ranges.sort_unstable();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, v) in variables.iter().enumerate() {
            by_name.entry(v.name.clone()).or_default().push(i);
        }
        let stats = LoadStats {
            elapsed: start.elapsed(),
            dwarf_file_bytes: dwarf_bytes as u64,
            type_dies: parsed.type_dies,
            types: parsed.types.len(),
        };
        tracing::debug!(
            path = %path.display(),
            debug_file = ?separate.as_ref().map(|f| &f.path),
            types = stats.types,
            variables = variables.len(),
            functions = parsed.functions.len(),
            elapsed_ms = stats.elapsed.as_millis() as u64,
            "loaded debug info"
        );
        Ok(Binary {
            path: path.to_owned(),
            debug_file: separate.map(|f| f.path),
            build_id,
            kind,
            segments,
            relro,
            types: parsed.types,
            units: parsed.units,
            variables,
            by_name,
            var_extents,
            code_ranges,
            thread_locals: parsed.thread_locals,
            functions: parsed.functions,
            subprograms: parsed.subprograms,
            subprogram_ranges,
            symbols,
            notes: parsed.notes,
            stats,
        })
    }

    /// The binary's path as given to [`Binary::load`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The separate debug file the DWARF came from, or `None` if it is in the binary.
    pub fn debug_file(&self) -> Option<&Path> {
        self.debug_file.as_deref()
    }

    /// The GNU build-id note, if present.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// Executable or position-independent.
    pub fn kind(&self) -> ElfKind {
        self.kind
    }

    /// Whether the binary is position-independent (`ET_DYN`: a PIE executable or a shared
    /// object), so that its addresses in a process are link-time addresses plus a load bias.
    pub fn is_pie(&self) -> bool {
        self.kind == ElfKind::Dynamic
    }

    /// The `PT_LOAD` segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether link-time address `vaddr` is read-only in a running process: in a `PT_LOAD`
    /// segment without `PF_W` (`.rodata`), or in `PT_GNU_RELRO` (`.data.rel.ro`, made
    /// read-only once relocated). What lies there is the program's, not its state.
    pub fn is_read_only(&self, vaddr: u64) -> bool {
        if self.relro.is_some_and(|(s, e)| vaddr >= s && vaddr < e) {
            return true;
        }
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.memsz)
            .is_some_and(|s| !s.writable)
    }

    /// Lowest `PT_LOAD` virtual address, rounded down to its 4 KiB page: the link-time
    /// address of the first mapping of the file.
    pub fn first_load_page(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.vaddr & !0xfff)
            .min()
            .unwrap_or(0)
    }

    /// The load bias of this binary in a process: what to add to a link-time address to get
    /// the address in that process. `base_of_first_mapping` is the start of the lowest
    /// mapping of this file in `/proc/PID/maps` (the caller reads it). Always 0 for
    /// non-PIE executables, which are loaded where they were linked.
    pub fn load_bias(&self, base_of_first_mapping: u64) -> u64 {
        if self.is_pie() {
            base_of_first_mapping.wrapping_sub(self.first_load_page())
        } else {
            0
        }
    }

    /// The type table.
    pub fn types(&self) -> &Types {
        &self.types
    }

    /// Shorthand for `self.types().get(id)`.
    pub fn ty(&self, id: TypeId) -> &Type {
        self.types.get(id)
    }

    /// Shorthand for [`Types::byte_size`].
    pub fn byte_size(&self, id: TypeId) -> Option<u64> {
        self.types.byte_size(id)
    }

    /// Shorthand for [`Types::name`].
    pub fn type_name(&self, id: TypeId) -> String {
        self.types.name(id)
    }

    /// Compilation units, in `.debug_info` order.
    pub fn units(&self) -> &[CompilationUnit] {
        &self.units
    }

    /// One compilation unit.
    pub fn unit(&self, id: CuId) -> &CompilationUnit {
        &self.units[id.0 as usize]
    }

    /// Every variable with a fixed address, in DWARF order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// All variables called `name` (globals, file statics of any unit, function statics of
    /// any function).
    pub fn variables_named<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s Variable> + 's {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.variables[i])
    }

    /// The variable called `name`: the global if there is one, else the only static of that
    /// name; `None` if absent or ambiguous.
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        let mut all = self.variables_named(name);
        let first = all.next()?;
        let rest: Vec<&Variable> = all.collect();
        if rest.is_empty() {
            return Some(first);
        }
        let mut globals = std::iter::once(first)
            .chain(rest)
            .filter(|v| v.kind == VariableKind::Global);
        let g = globals.next()?;
        globals.next().is_none().then_some(g)
    }

    /// Thread-local variables.
    pub fn thread_locals(&self) -> &[ThreadLocal] {
        &self.thread_locals
    }

    /// Functions with code, sorted by entry address.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// The function whose entry is exactly `addr` (what a function pointer holds).
    pub fn function_at(&self, addr: u64) -> Option<&Function> {
        let i = self.functions.partition_point(|f| f.low_pc < addr);
        self.functions.get(i).filter(|f| f.low_pc == addr)
    }

    /// The function whose code contains link-time address `addr` (in any of its ranges).
    pub fn function_containing(&self, addr: u64) -> Option<&Function> {
        let i = self.code_ranges.partition_point(|r| r.0 <= addr);
        self.code_ranges[..i]
            .iter()
            .rev()
            .take(8)
            .find(|r| addr < r.1)
            .map(|r| &self.functions[r.2])
    }

    /// Functions with code and what their frames hold (parameters, locals, lexical blocks,
    /// inlined calls, frame base), in DWARF order.
    pub fn subprograms(&self) -> &[Subprogram] {
        &self.subprograms
    }

    /// One function's frame model.
    pub fn subprogram(&self, id: SubprogramId) -> &Subprogram {
        &self.subprograms[id.0 as usize]
    }

    /// The function with code containing link-time `pc` (the innermost one, should DWARF nest
    /// them), for its frame's variables and inline chain at `pc`.
    pub fn subprogram_containing(&self, pc: u64) -> Option<SubprogramId> {
        let i = self.subprogram_ranges.partition_point(|r| r.0 <= pc);
        self.subprogram_ranges[..i]
            .iter()
            .rev()
            .take(8)
            .filter(|r| pc < r.1)
            .max_by_key(|r| r.0)
            .map(|r| SubprogramId(r.2))
    }

    /// The variable whose storage contains link-time address `addr` (its extent is the
    /// larger of its type's size and its ELF symbol's size), with `addr`'s offset into it.
    pub fn variable_containing(&self, addr: u64) -> Option<(&Variable, u64)> {
        let i = self.var_extents.partition_point(|r| r.0 <= addr);
        self.var_extents[..i]
            .iter()
            .rev()
            .take(8)
            .find(|r| addr < r.1)
            .map(|r| (&self.variables[r.2], addr - r.0))
    }

    /// ELF symbols (of the binary and of its separate debug file), sorted by address.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// The symbol whose extent contains `addr` (a zero-sized symbol matches its own address
    /// only); global symbols are preferred among several.
    pub fn symbol_at(&self, addr: u64) -> Option<&Symbol> {
        let i = self.symbols.partition_point(|s| s.address <= addr);
        let mut best: Option<&Symbol> = None;
        for s in self.symbols[..i].iter().rev().take(256) {
            let contains = addr < s.address.saturating_add(s.size.max(1));
            if contains && best.is_none_or(|b| !b.global && s.global) {
                best = Some(s);
            }
        }
        best
    }

    /// The first symbol called `name`.
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    /// What the model left out or could not resolve, one sentence each (split DWARF, unknown
    /// type kinds, thread-locals, ...). Empty for an ordinary `-g` C program.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Figures about the load.
    pub fn stats(&self) -> &LoadStats {
        &self.stats
    }
}

/// Records that DWARF refers to a supplementary file (`dwz -m`, `.gnu_debugaltlink`), which is
/// not read: what it defines appears as unknown types.
fn note_supplementary(file: &object::File<'_>, notes: &mut Vec<String>) {
    use object::Object;
    if let Ok(Some((name, _))) = file.gnu_debugaltlink() {
        notes.push(format!(
            "the DWARF refers to the supplementary debug file {} (dwz), which is not read; \
             types defined there are modelled as unknown",
            String::from_utf8_lossy(name)
        ));
    }
}
