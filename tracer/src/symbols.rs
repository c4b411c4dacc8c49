//! Symbols of the ELF objects a process has loaded: the main executable, its shared libraries
//! and the vDSO.
//!
//! Used to find functions to call inside a tracee (`malloc` in its libc), globals by name, and
//! to name a code or data address by the symbol it falls in (a function pointer to be
//! relocated into another version of the program). This is ELF symbol tables only (`.dynsym`
//! and `.symtab`); types and variables come from DWARF, elsewhere.
//!
//! Object files are read through `/proc/PID/map_files/`, which opens the very inode the
//! process mapped, so a binary deleted or overwritten by its next version still resolves; the
//! path (under `/proc/PID/root`, then as is) is the fallback, accepted only if its inode is
//! the mapped one.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::unistd::Pid;
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Sym, SymbolTable};
use object::Endianness;
use tracing::debug;

use crate::addr::{RemoteAddr, RemoteRange};
use crate::error::{Error, Result};
use crate::mem::{Memory, ProcessMemory};
use crate::procfs::{self, Mapping, MappingKind};

/// What role a loaded object plays in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectRole {
    /// The program itself (`/proc/PID/exe`).
    Main,
    /// The dynamic linker (`AT_BASE` of the auxiliary vector).
    Interpreter,
    /// A shared library.
    Library,
    /// The kernel's virtual shared object, read from the process's memory.
    Vdso,
}

/// An ELF object mapped into a process, with where it was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedObject {
    /// The path the process mapped it from (without the kernel's ` (deleted)` mark), or
    /// `[vdso]`.
    pub path: PathBuf,
    /// What it is to the process.
    pub role: ObjectRole,
    /// Start of its lowest mapping (the one at file offset 0, holding the ELF header).
    pub base: RemoteAddr,
    /// The load bias: the run-time address of anything is its ELF virtual address plus the
    /// bias (modulo 2^64). Zero for a non-PIE executable.
    pub bias: u64,
    /// The addresses its `PT_LOAD` segments cover, `.bss` included (page-rounded).
    pub range: RemoteRange,
    /// Device of the mapped file (`00:00` for the vDSO).
    pub dev: procfs::DeviceId,
    /// Inode of the mapped file (0 for the vDSO).
    pub inode: u64,
    /// The file was deleted or replaced after it was mapped.
    pub deleted: bool,
    /// The mapping holding the ELF header, whose `/proc/PID/map_files` entry reads the file.
    header_mapping: RemoteRange,
}

impl LoadedObject {
    /// The file name (last path component), e.g. `libc.so.6`.
    pub fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_else(|| self.path.to_str().unwrap_or(""))
    }

    /// The run-time address of ELF virtual address `vaddr` of this object.
    pub fn runtime_addr(&self, vaddr: u64) -> RemoteAddr {
        RemoteAddr::new(vaddr.wrapping_add(self.bias))
    }

    /// The ELF virtual address of run-time address `addr` (meaningful inside [`Self::range`]).
    pub fn file_vaddr(&self, addr: RemoteAddr) -> u64 {
        addr.get().wrapping_sub(self.bias)
    }

    /// Whether `name` designates this object: equal to its file name, or else a substring of
    /// it (`libc.so` for `libc.so.6`); a `name` with a `/` is matched against the whole path.
    pub fn matches(&self, name: &str) -> bool {
        if name.contains('/') {
            self.path.to_str().is_some_and(|p| p.contains(name))
        } else {
            self.file_name().contains(name)
        }
    }
}

/// What an ELF symbol names (its `STT_*` type, reduced to what we resolve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymbolKind {
    /// `STT_FUNC`: code.
    Function,
    /// `STT_GNU_IFUNC`: the address is the *resolver* that picks an implementation at load
    /// time (libc's `memcpy`, `strlen`, ...); calling it does not run the function.
    Ifunc,
    /// `STT_OBJECT` (or `STT_COMMON`): data.
    Object,
    /// `STT_NOTYPE`: a label, e.g. from assembly or a linker script.
    NoType,
}

/// An ELF symbol's binding (`STB_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Binding {
    /// `STB_GLOBAL` (and `STB_GNU_UNIQUE`).
    Global,
    /// `STB_WEAK`.
    Weak,
    /// `STB_LOCAL`: file-static, from `.symtab` only.
    Local,
}

/// A defined symbol of an ELF file, at its file (link-time) virtual address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfSymbol {
    /// Its name, without version.
    pub name: String,
    /// Its symbol version (`GLIBC_2.2.5`) if `.dynsym` gives one.
    pub version: Option<String>,
    /// The version is the default one (`name@@VERSION`, what a new link binds to), or the
    /// symbol is unversioned. `memcpy@GLIBC_2.2.5` is a non-default compatibility version.
    pub default_version: bool,
    /// Virtual address in the file.
    pub vaddr: u64,
    /// Size in bytes (0 if unknown).
    pub size: u64,
    /// What it names.
    pub kind: SymbolKind,
    /// Its binding.
    pub binding: Binding,
    /// Found in `.dynsym` (exported), not only in `.symtab`.
    pub dynamic: bool,
}

impl ElfSymbol {
    /// Whether `vaddr` lies inside this symbol (at its address when its size is unknown).
    pub fn contains(&self, vaddr: u64) -> bool {
        vaddr == self.vaddr || (vaddr > self.vaddr && vaddr - self.vaddr < self.size)
    }

    /// Preference among symbols of one name, or among aliases of one address (lower wins):
    /// what the dynamic linker would bind to first (global, default version, exported), then
    /// the "public" spelling of an alias (`malloc` over `__libc_malloc`), then the shortest.
    fn rank(&self) -> impl Ord + '_ {
        (
            !self.default_version,
            self.binding,
            !self.dynamic,
            self.kind != SymbolKind::Function,
            self.name.starts_with('_'),
            self.name.len(),
            self.name.as_str(),
        )
    }
}

/// The symbol tables of one ELF file, parsed once: every defined function, ifunc, data object
/// and label of `.dynsym` and `.symtab`, by name and by address. Section, file, TLS and absolute
/// symbols are left out: they are not addresses in the process.
#[derive(Debug, Clone, Default)]
pub struct ElfSymbols {
    /// Sorted by address, then by preference.
    symbols: Vec<ElfSymbol>,
    by_name: HashMap<String, Vec<usize>>,
    /// The largest symbol size, which bounds how far back an address lookup must look.
    max_size: u64,
}

impl ElfSymbols {
    /// Parses the symbols of a 64-bit ELF file held in `data`; `path` names it in errors.
    pub fn parse(data: &[u8], path: &Path) -> Result<ElfSymbols> {
        let bad = |detail: String| Error::BadBinary {
            path: path.to_owned(),
            detail,
        };
        let file = ElfFile64::<Endianness>::parse(data)
            .map_err(|e| bad(format!("not a 64-bit ELF file: {e}")))?;
        let endian = file.endian();
        let versions = file
            .elf_section_table()
            .versions(endian, data)
            .map_err(|e| bad(format!("symbol versions: {e}")))?;
        let mut symbols = Vec::new();
        let tables: [(&SymbolTable<'_, elf::FileHeader64<Endianness>>, bool); 2] = [
            (file.elf_dynamic_symbol_table(), true),
            (file.elf_symbol_table(), false),
        ];
        for (table, dynamic) in tables {
            for (index, sym) in table.enumerate() {
                let Some(mut s) = Self::convert(table, endian, sym, dynamic) else {
                    continue;
                };
                if dynamic {
                    if let Some(v) = &versions {
                        let vi = v.version_index(endian, index);
                        s.default_version = !vi.is_hidden();
                        s.version = v
                            .version(vi.index())
                            .ok()
                            .flatten()
                            .map(|v| String::from_utf8_lossy(v.name()).into_owned());
                    }
                }
                symbols.push(s);
            }
        }
        Ok(Self::from_symbols(symbols))
    }

    fn convert(
        table: &SymbolTable<'_, elf::FileHeader64<Endianness>>,
        endian: Endianness,
        sym: &elf::Sym64<Endianness>,
        dynamic: bool,
    ) -> Option<ElfSymbol> {
        let shndx = sym.st_shndx(endian);
        if shndx == elf::SHN_UNDEF || shndx == elf::SHN_ABS || shndx == elf::SHN_COMMON {
            return None;
        }
        let kind = match sym.st_type() {
            elf::STT_FUNC => SymbolKind::Function,
            elf::STT_GNU_IFUNC => SymbolKind::Ifunc,
            elf::STT_OBJECT | elf::STT_COMMON => SymbolKind::Object,
            elf::STT_NOTYPE => SymbolKind::NoType,
            _ => return None,
        };
        let binding = match sym.st_bind() {
            elf::STB_GLOBAL | elf::STB_GNU_UNIQUE => Binding::Global,
            elf::STB_WEAK => Binding::Weak,
            elf::STB_LOCAL => Binding::Local,
            _ => return None,
        };
        let name = table.symbol_name(endian, sym).ok()?;
        if name.is_empty() {
            return None;
        }
        Some(ElfSymbol {
            name: String::from_utf8_lossy(name).into_owned(),
            version: None,
            default_version: true,
            vaddr: sym.st_value(endian),
            size: sym.st_size(endian),
            kind,
            binding,
            dynamic,
        })
    }

    /// Builds the tables from a list of symbols (duplicates of name and address are merged,
    /// keeping the preferred one).
    pub fn from_symbols(mut symbols: Vec<ElfSymbol>) -> ElfSymbols {
        symbols.sort_by(|a, b| a.vaddr.cmp(&b.vaddr).then_with(|| a.rank().cmp(&b.rank())));
        // `.symtab` repeats every `.dynsym` entry; keep the first (preferred) of each.
        let mut seen = std::collections::HashSet::new();
        symbols.retain(|s| seen.insert((s.vaddr, s.name.clone())));
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in symbols.iter().enumerate() {
            by_name.entry(s.name.clone()).or_default().push(i);
        }
        for idxs in by_name.values_mut() {
            idxs.sort_by(|&a, &b| symbols[a].rank().cmp(&symbols[b].rank()));
        }
        let max_size = symbols.iter().map(|s| s.size).max().unwrap_or(0);
        ElfSymbols {
            symbols,
            by_name,
            max_size,
        }
    }

    /// All symbols, by address.
    pub fn symbols(&self) -> &[ElfSymbol] {
        &self.symbols
    }

    /// The preferred definition of `name` (see [`ElfSymbol`]'s ranking). `name@VERSION` asks
    /// for that exact version.
    pub fn get(&self, name: &str) -> Option<&ElfSymbol> {
        if let Some(idxs) = self.by_name.get(name) {
            return idxs.first().map(|&i| &self.symbols[i]);
        }
        let (base, version) = name.split_once('@')?;
        let version = version.trim_start_matches('@');
        self.by_name
            .get(base)?
            .iter()
            .map(|&i| &self.symbols[i])
            .find(|s| s.version.as_deref() == Some(version))
    }

    /// The preferred function, ifunc or data symbol that contains `vaddr`; a label
    /// (`STT_NOTYPE`) only if `vaddr` is exactly its address. When symbols nest, the
    /// innermost (closest start) wins.
    pub fn containing(&self, vaddr: u64) -> Option<&ElfSymbol> {
        let end = self.symbols.partition_point(|s| s.vaddr <= vaddr);
        let mut best: Option<&ElfSymbol> = None;
        for s in self.symbols[..end].iter().rev() {
            if vaddr - s.vaddr > self.max_size {
                break;
            }
            let hit = match s.kind {
                SymbolKind::NoType => s.vaddr == vaddr,
                _ => s.contains(vaddr),
            };
            if !hit {
                continue;
            }
            // Sorted by address, then preference: walking backwards, a hit at a lower address
            // than the best so far is an outer symbol, and a hit at the same address is a
            // more preferred alias.
            if best.is_some_and(|b| b.vaddr != s.vaddr) {
                break;
            }
            best = Some(s);
        }
        best
    }
}

/// A symbol resolved in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSymbol {
    /// The object it was found in.
    pub object: PathBuf,
    /// The symbol, at its file address.
    pub symbol: ElfSymbol,
    /// Its run-time address.
    pub addr: RemoteAddr,
}

/// The answer of a reverse lookup: `addr` is `offset` bytes into symbol `name` of `object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolAt {
    /// The object's path.
    pub object: PathBuf,
    /// The symbol's name.
    pub name: String,
    /// How far into the symbol the address lies.
    pub offset: u64,
    /// The symbol's run-time address (`addr - offset`).
    pub symbol_addr: RemoteAddr,
    /// What the symbol names.
    pub kind: SymbolKind,
}

/// Finds the ELF objects `pid` has loaded, by address.
///
/// An object is a file mapped at offset 0 that starts with a 64-bit ELF header of an executable
/// or shared object and has an executable mapping inside its segments (which leaves out data
/// files and ELF files merely `mmap`ed for reading), plus the `[vdso]`. A file mapped
/// executable that cannot be read (see [`SymbolResolver`] on how files are opened) fails the
/// whole call rather than going missing. Its bias is the start of
/// the offset-0 mapping minus the page-aligned address of the `PT_LOAD` segment that maps file
/// offset 0, exactly as the dynamic linker placed it.
pub fn loaded_objects(pid: Pid) -> Result<Vec<LoadedObject>> {
    let maps = procfs::maps(pid)?;
    let auxv = procfs::auxv(pid)?;
    let aux = |t: u64| auxv.iter().find(|&&(k, _)| k == t).map(|&(_, v)| v);
    let page = aux(libc::AT_PAGESZ)
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    let interp_base = aux(libc::AT_BASE).filter(|&b| b != 0);
    let entry = aux(libc::AT_ENTRY);
    let exe_id = std::fs::metadata(procfs::exe_link(pid))
        .ok()
        .map(|m| (procfs::DeviceId::from_dev_t(m.dev()), m.ino()));

    let mut objects = Vec::new();
    for m in &maps {
        let loaded = match &m.kind {
            // A file is a candidate only if some mapping of it is executable: that leaves out
            // locale archives and other data files without opening them. An executable file
            // we cannot read is an error, not an object silently missing from lookups.
            MappingKind::File(path) if m.offset == 0 => {
                let executable = maps
                    .iter()
                    .any(|x| x.perms.exec && x.inode == m.inode && x.dev == m.dev);
                if !executable {
                    continue;
                }
                file_object(pid, m, path, &maps, page)?
            }
            // The vDSO only matters for its few clock functions: if its memory cannot be read,
            // go on without it.
            MappingKind::Vdso => match vdso_object(pid, m, page) {
                Err(e) if !e.is_gone() => {
                    debug!(pid = pid.as_raw(), error = %e, "skipping the vDSO");
                    continue;
                }
                other => other?,
            },
            _ => continue,
        };
        if let Some(mut o) = loaded {
            if o.role != ObjectRole::Vdso {
                o.role = if exe_id == Some((o.dev, o.inode)) {
                    ObjectRole::Main
                } else if interp_base == Some(o.base.get()) {
                    ObjectRole::Interpreter
                } else {
                    ObjectRole::Library
                };
            }
            objects.push(o);
        }
    }
    // If the executable's identity did not match (e.g. an overlay filesystem reporting other
    // device numbers in maps than in stat), the object holding the entry point is the program.
    if !objects.iter().any(|o| o.role == ObjectRole::Main) {
        if let Some(o) = entry.and_then(|e| {
            objects
                .iter_mut()
                .find(|o| o.role == ObjectRole::Library && o.range.contains(RemoteAddr::new(e)))
        }) {
            o.role = ObjectRole::Main;
        }
    }
    Ok(objects)
}

/// The load bias and segment extent of an ELF image whose first page is mapped at `base`.
fn layout(
    data: &[u8],
    base: RemoteAddr,
    page: u64,
) -> std::result::Result<(u64, RemoteRange), String> {
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let e_type = header.e_type(endian);
    if e_type != elf::ET_DYN && e_type != elf::ET_EXEC {
        return Err(format!("ELF type {e_type:?} is not loadable"));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| e.to_string())?;
    let loads: Vec<_> = phdrs
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .collect();
    let first = loads
        .iter()
        .find(|p| p.p_offset(endian) < page)
        .ok_or("no PT_LOAD maps file offset 0")?;
    let bias = base.get().wrapping_sub(first.p_vaddr(endian) & !(page - 1));
    let lo = loads.iter().map(|p| p.p_vaddr(endian)).min().unwrap_or(0) & !(page - 1);
    let hi = loads
        .iter()
        .map(|p| p.p_vaddr(endian).saturating_add(p.p_memsz(endian)))
        .max()
        .unwrap_or(0);
    let hi = hi.saturating_add(page - 1) & !(page - 1);
    let range = RemoteRange::new(
        RemoteAddr::new(lo.wrapping_add(bias)),
        RemoteAddr::new(hi.wrapping_add(bias)),
    );
    Ok((bias, range))
}

/// Opens the file behind mapping `m` of `pid`: its `map_files` entry (the mapped inode itself,
/// needs `CAP_SYS_ADMIN`), else its path seen from the process's root, else the path as is —
/// the last two only if they still are the mapped inode.
fn open_mapped(pid: Pid, m: &Mapping, path: &Path) -> Result<File> {
    let map_file = PathBuf::from(format!("/proc/{pid}/map_files/{}", m.map_files_name()));
    match File::open(&map_file) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !procfs::exists(pid) => {
            return Err(Error::Gone { pid, status: None })
        }
        Err(e) => debug!(path = %map_file.display(), error = %e, "map_files refused"),
    }
    let in_root =
        Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path));
    let mut last = None;
    for candidate in [in_root.as_path(), path] {
        match File::open(candidate) {
            Ok(f) => {
                let same = f
                    .metadata()
                    .is_ok_and(|md| m.inode == 0 || md.ino() == m.inode);
                if same {
                    return Ok(f);
                }
                last = Some(Error::BadBinary {
                    path: candidate.to_owned(),
                    detail: format!("is no longer inode {} that process {pid} mapped", m.inode),
                });
            }
            Err(source) => {
                last = Some(Error::Io {
                    path: candidate.to_owned(),
                    source,
                })
            }
        }
    }
    Err(last.expect("two candidates tried"))
}

fn file_object(
    pid: Pid,
    m: &Mapping,
    path: &Path,
    maps: &[Mapping],
    page: u64,
) -> Result<Option<LoadedObject>> {
    let mut f = open_mapped(pid, m, path)?;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut head = vec![0u8; 4096];
    let n = read_up_to(&mut f, &mut head).map_err(io)?;
    head.truncate(n);
    if !head.starts_with(&elf::ELFMAG) {
        return Ok(None);
    }
    // Program headers nearly always follow the ELF header; read further if they do not.
    if let Ok(h) = elf::FileHeader64::<Endianness>::parse(head.as_slice()) {
        if let Ok(endian) = h.endian() {
            let need =
                h.e_phoff(endian) + u64::from(h.e_phnum(endian)) * u64::from(h.e_phentsize(endian));
            if need > head.len() as u64 && need < (1 << 24) {
                head.resize(need as usize, 0);
                f.read_exact_at(&mut head, 0).map_err(io)?;
            }
        }
    }
    let (bias, range) = match layout(&head, m.range.start, page) {
        Ok(l) => l,
        Err(detail) => {
            debug!(path = %path.display(), detail, "mapped ELF file is not a loaded object");
            return Ok(None);
        }
    };
    let executable = maps.iter().any(|x| {
        x.perms.exec && x.inode == m.inode && x.dev == m.dev && range.contains(x.range.start)
    });
    if !executable {
        return Ok(None);
    }
    Ok(Some(LoadedObject {
        path: path.to_owned(),
        role: ObjectRole::Library,
        base: m.range.start,
        bias,
        range,
        dev: m.dev,
        inode: m.inode,
        deleted: m.deleted,
        header_mapping: m.range,
    }))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn vdso_object(pid: Pid, m: &Mapping, page: u64) -> Result<Option<LoadedObject>> {
    let image = ProcessMemory::new(pid).read_vec(m.range.start, m.range.len() as usize)?;
    let (bias, range) = layout(&image, m.range.start, page).map_err(|detail| Error::BadBinary {
        path: "[vdso]".into(),
        detail,
    })?;
    Ok(Some(LoadedObject {
        path: "[vdso]".into(),
        role: ObjectRole::Vdso,
        base: m.range.start,
        bias,
        range,
        dev: m.dev,
        inode: 0,
        deleted: false,
        header_mapping: m.range,
    }))
}

/// Resolves symbols in the objects of one process, parsing each object's symbol tables at
/// most once.
///
/// The objects are found when the resolver is made; call [`SymbolResolver::refresh`] after the
/// process loaded or unloaded libraries (`dlopen`). Search order is the dynamic linker's in
/// spirit: the main executable, then the libraries by address, then the dynamic linker, then
/// the vDSO.
#[derive(Debug)]
pub struct SymbolResolver {
    pid: Pid,
    objects: Vec<LoadedObject>,
    tables: Vec<OnceLock<Arc<ElfSymbols>>>,
}

impl SymbolResolver {
    /// A resolver for process `pid`, with its currently loaded objects.
    pub fn new(pid: Pid) -> Result<SymbolResolver> {
        let mut r = SymbolResolver {
            pid,
            objects: Vec::new(),
            tables: Vec::new(),
        };
        r.refresh()?;
        Ok(r)
    }

    /// The process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Re-reads the loaded objects, keeping the parsed tables of objects still loaded at the
    /// same place.
    pub fn refresh(&mut self) -> Result<()> {
        let mut objects = loaded_objects(self.pid)?;
        objects.sort_by_key(|o| {
            let rank = match o.role {
                ObjectRole::Main => 0,
                ObjectRole::Library => 1,
                ObjectRole::Interpreter => 2,
                ObjectRole::Vdso => 3,
            };
            (rank, o.base)
        });
        let mut old: Vec<_> = std::mem::take(&mut self.objects)
            .into_iter()
            .zip(std::mem::take(&mut self.tables))
            .collect();
        self.tables = objects
            .iter()
            .map(|o| {
                old.iter_mut()
                    .find(|(p, _)| p == o)
                    .map(|(_, t)| std::mem::take(t))
                    .unwrap_or_default()
            })
            .collect();
        self.objects = objects;
        Ok(())
    }

    /// The loaded objects, in search order.
    pub fn objects(&self) -> &[LoadedObject] {
        &self.objects
    }

    /// The symbol tables of object `index` of [`Self::objects`] (panics if out of range),
    /// parsed on first use.
    pub fn symbols(&self, index: usize) -> Result<Arc<ElfSymbols>> {
        let cell = &self.tables[index];
        if let Some(t) = cell.get() {
            return Ok(t.clone());
        }
        let o = &self.objects[index];
        let parsed = Arc::new(self.parse_object(o)?);
        Ok(cell.get_or_init(|| parsed).clone())
    }

    fn parse_object(&self, o: &LoadedObject) -> Result<ElfSymbols> {
        if o.role == ObjectRole::Vdso {
            let image = ProcessMemory::new(self.pid)
                .read_vec(o.header_mapping.start, o.header_mapping.len() as usize)?;
            return ElfSymbols::parse(&image, &o.path);
        }
        let m = Mapping {
            range: o.header_mapping,
            perms: procfs::Perms::default(),
            offset: 0,
            dev: o.dev,
            inode: o.inode,
            kind: MappingKind::File(o.path.clone()),
            deleted: o.deleted,
        };
        let mut f = open_mapped(self.pid, &m, &o.path)?;
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(|source| Error::Io {
            path: o.path.clone(),
            source,
        })?;
        ElfSymbols::parse(&data, &o.path)
    }

    fn not_found(&self, name: &str) -> Error {
        Error::SymbolNotFound {
            pid: self.pid,
            name: name.to_owned(),
        }
    }

    fn resolve_in(&self, index: usize, name: &str) -> Result<Option<ResolvedSymbol>> {
        let table = self.symbols(index)?;
        let o = &self.objects[index];
        Ok(table.get(name).map(|s| ResolvedSymbol {
            object: o.path.clone(),
            addr: o.runtime_addr(s.vaddr),
            symbol: s.clone(),
        }))
    }

    /// Finds `name` (or `name@VERSION`) in the first object, in search order, that defines it.
    /// Both `.dynsym` and `.symtab` count, so file-static functions of the program are found.
    pub fn lookup_symbol(&self, name: &str) -> Result<ResolvedSymbol> {
        for i in 0..self.objects.len() {
            if let Some(r) = self.resolve_in(i, name)? {
                return Ok(r);
            }
        }
        Err(self.not_found(name))
    }

    /// The run-time address of `name` (see [`Self::lookup_symbol`]).
    pub fn lookup(&self, name: &str) -> Result<RemoteAddr> {
        self.lookup_symbol(name).map(|r| r.addr)
    }

    /// Finds `name` in the objects that match `object` (see [`LoadedObject::matches`]): an
    /// object whose file name equals `object` first, then the others in search order.
    pub fn lookup_symbol_in(&self, object: &str, name: &str) -> Result<ResolvedSymbol> {
        let mut candidates: Vec<usize> = (0..self.objects.len())
            .filter(|&i| self.objects[i].matches(object))
            .collect();
        candidates.sort_by_key(|&i| self.objects[i].file_name() != object);
        for i in candidates {
            if let Some(r) = self.resolve_in(i, name)? {
                return Ok(r);
            }
        }
        Err(self.not_found(&format!("{name} (in {object})")))
    }

    /// The run-time address of `name` in `object` (see [`Self::lookup_symbol_in`]).
    pub fn lookup_in(&self, object: &str, name: &str) -> Result<RemoteAddr> {
        self.lookup_symbol_in(object, name).map(|r| r.addr)
    }

    /// Names `addr` by the function or data symbol it falls in (see
    /// [`ElfSymbols::containing`]); `None` if it is in no loaded object or in no symbol.
    pub fn symbol_at(&self, addr: RemoteAddr) -> Result<Option<SymbolAt>> {
        let Some(index) = self.objects.iter().position(|o| o.range.contains(addr)) else {
            return Ok(None);
        };
        let o = &self.objects[index];
        let vaddr = o.file_vaddr(addr);
        let table = self.symbols(index)?;
        Ok(table.containing(vaddr).map(|s| SymbolAt {
            object: o.path.clone(),
            name: s.name.clone(),
            offset: vaddr - s.vaddr,
            symbol_addr: o.runtime_addr(s.vaddr),
            kind: s.kind,
        }))
    }
}

/// The run-time address of symbol `name` in process `pid`: the main executable first, then its
/// libraries (see [`SymbolResolver`]); [`Error::SymbolNotFound`] if none defines it.
pub fn lookup(pid: Pid, name: &str) -> Result<RemoteAddr> {
    SymbolResolver::new(pid)?.lookup(name)
}

/// The run-time address of symbol `name` in the object of `pid` whose file name contains
/// `object` (e.g. `"libc.so"`).
pub fn lookup_in(pid: Pid, object: &str, name: &str) -> Result<RemoteAddr> {
    SymbolResolver::new(pid)?.lookup_in(object, name)
}

/// Names address `addr` of process `pid` by symbol (see [`SymbolResolver::symbol_at`]).
pub fn symbol_at(pid: Pid, addr: RemoteAddr) -> Result<Option<SymbolAt>> {
    SymbolResolver::new(pid)?.symbol_at(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, vaddr: u64, size: u64, kind: SymbolKind, binding: Binding) -> ElfSymbol {
        ElfSymbol {
            name: name.into(),
            version: None,
            default_version: true,
            vaddr,
            size,
            kind,
            binding,
            dynamic: binding != Binding::Local,
        }
    }

    #[test]
    fn reverse_lookup_prefers_public_aliases_and_inner_symbols() {
        use Binding::*;
        use SymbolKind::*;
        let t = ElfSymbols::from_symbols(vec![
            sym("__libc_malloc", 0x100, 0x40, Function, Global),
            sym("malloc", 0x100, 0x40, Function, Global),
            sym("table", 0x1000, 0x100, Object, Global),
            sym("inner", 0x1010, 0x10, Object, Local),
            sym("label", 0x2000, 0, NoType, Local),
            sym("big", 0x0, 0x10000, Object, Local),
        ]);
        assert_eq!(t.containing(0x100).unwrap().name, "malloc");
        assert_eq!(t.containing(0x13f).unwrap().name, "malloc");
        assert_eq!(t.containing(0x1018).unwrap().name, "inner");
        assert_eq!(t.containing(0x1020).unwrap().name, "table");
        assert_eq!(t.containing(0x2000).unwrap().name, "label");
        assert_eq!(t.containing(0x2001).unwrap().name, "big");
        assert_eq!(t.get("malloc").unwrap().vaddr, 0x100);
        assert!(t.get("nothing").is_none());
    }

    #[test]
    fn versions_pick_the_default_unless_asked() {
        let mut old = sym("memcpy", 0x10, 8, SymbolKind::Ifunc, Binding::Global);
        old.version = Some("GLIBC_2.2.5".into());
        old.default_version = false;
        let mut new = sym("memcpy", 0x20, 8, SymbolKind::Ifunc, Binding::Global);
        new.version = Some("GLIBC_2.14".into());
        let t = ElfSymbols::from_symbols(vec![old, new]);
        assert_eq!(t.get("memcpy").unwrap().vaddr, 0x20);
        assert_eq!(t.get("memcpy@GLIBC_2.2.5").unwrap().vaddr, 0x10);
        assert_eq!(t.get("memcpy@@GLIBC_2.14").unwrap().vaddr, 0x20);
    }

    #[test]
    fn own_libc_malloc_is_the_real_one() {
        let me = nix::unistd::getpid();
        let r = SymbolResolver::new(me).unwrap();
        let main = r
            .objects()
            .iter()
            .find(|o| o.role == ObjectRole::Main)
            .unwrap();
        assert_eq!(main.path, std::fs::read_link("/proc/self/exe").unwrap());
        let malloc = r.lookup_in("libc.so", "malloc").unwrap();
        assert_eq!(malloc.get(), libc::malloc as *const () as usize as u64);
        let at = r
            .symbol_at(malloc.checked_add(1).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((at.name.as_str(), at.offset), ("malloc", 1));
    }
}
