//! Finding glibc malloc in a process: its libc, the libc's debug info, the run-time addresses
//! of `main_arena`, `mp_` and `tcache_key`, and the mappings a walk looks at.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracer::procfs::{self, Mapping, MappingKind};
use tracer::symbols::{self, LoadedObject, ObjectRole};
use tracer::{Pid, RemoteAddr, RemoteRange};

use crate::debuginfo::{Binary, DebugInfoError, LoadOptions, VariableKind};

use super::error::{HeapError, Result};
use super::layout::{ChunkLayout, MallocLayout};

/// The run-time addresses of malloc's globals in one process, with the layout to read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MallocGlobals {
    /// Layout of malloc's structures in this libc.
    pub layout: MallocLayout,
    /// `main_arena` (`struct malloc_state`), the head of the circular list of arenas.
    pub main_arena: RemoteAddr,
    /// `mp_` (`struct malloc_par`).
    pub mp: RemoteAddr,
    /// `tcache_key` (glibc 2.34+): the value a chunk's second word holds while it sits in any
    /// thread's tcache. `None` for a libc without it (tcache entries are then not recognised,
    /// and [`super::Heap::free_lists_known`] is false).
    pub tcache_key: Option<RemoteAddr>,
}

/// The mappings of a process that a heap walk looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapRegions {
    /// `[heap]`, the program break area where the main arena lives (absent until the first
    /// `brk`).
    pub brk: Option<RemoteRange>,
    /// Private, readable and writable anonymous mappings: thread heaps and mmapped chunks are
    /// among them, next to memory that is neither (thread stacks, `.bss` tails). Adjacent
    /// mappings of the same kind may be merged by the kernel into one entry.
    pub anonymous: Vec<RemoteRange>,
    /// The process's page size (`AT_PAGESZ`).
    pub page_size: u64,
}

impl HeapRegions {
    /// Picks the regions out of a process's mappings.
    pub fn from_maps(maps: &[Mapping], page_size: u64) -> HeapRegions {
        let rw_private = |m: &&Mapping| m.perms.read && m.perms.write && !m.perms.shared;
        HeapRegions {
            brk: maps
                .iter()
                .filter(rw_private)
                .find(|m| m.kind == MappingKind::Heap)
                .map(|m| m.range),
            anonymous: maps
                .iter()
                .filter(rw_private)
                .filter(|m| match &m.kind {
                    MappingKind::Anonymous => true,
                    // Newer glibc can name its mappings (`glibc.mem.decorate_maps`).
                    MappingKind::Other(name) => name.starts_with("[anon:glibc: malloc"),
                    _ => false,
                })
                .map(|m| m.range)
                .collect(),
            page_size,
        }
    }

    /// The regions of process `pid`, read from `/proc/PID/maps` and `/proc/PID/auxv`.
    pub fn of_process(pid: Pid) -> Result<HeapRegions> {
        let who = format!("process {pid}");
        let maps = procfs::maps(pid).map_err(|source| HeapError::Process {
            who: who.clone(),
            what: "reading /proc/PID/maps".into(),
            source,
        })?;
        let page_size = procfs::auxv(pid)
            .map_err(|source| HeapError::Process {
                who,
                what: "reading /proc/PID/auxv".into(),
                source,
            })?
            .into_iter()
            .find(|&(t, _)| t == AT_PAGESZ)
            .map(|(_, v)| v)
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        Ok(HeapRegions::from_maps(&maps, page_size))
    }
}

/// `AT_PAGESZ` of the auxiliary vector (elf.h): the page size.
const AT_PAGESZ: u64 = 6;

/// The libc file a process maps, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibcFile {
    /// Its path as the process mapped it.
    pub path: PathBuf,
    /// Its GNU build-id in hex, if it has one.
    pub build_id: Option<String>,
}

/// Everything [`super::Heap::walk`] needs to know about one process (or snapshot) besides its
/// memory: the layout of malloc's structures, where malloc's globals are, and which mappings
/// to look at. Built by [`GlibcHeap::locate`] for a live process, by
/// [`HeapContext::without_debug_info`] when libc's debug info is missing (a degraded walk,
/// which the resulting heap says it is), or by hand ([`HeapContext::new`]) for snapshots.
#[derive(Clone, Debug)]
pub struct HeapContext {
    who: String,
    pid: Option<Pid>,
    chunk: ChunkLayout,
    globals: Option<MallocGlobals>,
    regions: HeapRegions,
    libc: Option<LibcFile>,
    degraded: Option<String>,
}

impl HeapContext {
    /// A full context: `who` names the address space in messages (`process 42`, `snapshot`).
    pub fn new(who: impl Into<String>, globals: MallocGlobals, regions: HeapRegions) -> Self {
        HeapContext {
            who: who.into(),
            pid: None,
            chunk: globals.layout.chunk,
            globals: Some(globals),
            regions,
            libc: None,
            degraded: None,
        }
    }

    /// A degraded context without malloc's globals: the walk reads chunk headers only, from
    /// the start of `[heap]` to the chunk ending at its end, plus mmapped chunks found by their
    /// headers. Thread arenas are not walked and tcache/fastbin entries look in use; the heap
    /// lists these as [`super::Limitation`]s, with `reason`.
    pub fn degraded(
        who: impl Into<String>,
        chunk: ChunkLayout,
        regions: HeapRegions,
        reason: impl Into<String>,
    ) -> Self {
        HeapContext {
            who: who.into(),
            pid: None,
            chunk,
            globals: None,
            regions,
            libc: None,
            degraded: Some(reason.into()),
        }
    }

    /// A degraded context for process `pid`, for when libc's debug info is not installed (see
    /// [`HeapContext::degraded`]). Uses the chunk header every 64-bit glibc shares.
    pub fn without_debug_info(pid: Pid) -> Result<Self> {
        let regions = HeapRegions::of_process(pid)?;
        let libc = find_libc(pid).ok().map(|(obj, path)| LibcFile {
            build_id: build_id_hex(&path),
            path: obj.path,
        });
        let reason = match &libc {
            Some(l) => format!(
                "walked without the debug info of {} (build-id {})",
                l.path.display(),
                l.build_id.as_deref().unwrap_or("unknown")
            ),
            None => "walked without libc's debug info".to_owned(),
        };
        let mut ctx = HeapContext::degraded(
            format!("process {pid}"),
            ChunkLayout::boundary_tags_64(),
            regions,
            reason,
        );
        ctx.pid = Some(pid);
        ctx.libc = libc;
        Ok(ctx)
    }

    /// The name of the address space in messages.
    pub fn who(&self) -> &str {
        &self.who
    }

    /// The process, for contexts of live processes.
    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// The chunk header layout.
    pub fn chunk_layout(&self) -> &ChunkLayout {
        &self.chunk
    }

    /// malloc's globals, absent in a degraded context.
    pub fn globals(&self) -> Option<&MallocGlobals> {
        self.globals.as_ref()
    }

    /// The mappings looked at.
    pub fn regions(&self) -> &HeapRegions {
        &self.regions
    }

    /// The libc file, when known.
    pub fn libc(&self) -> Option<&LibcFile> {
        self.libc.as_ref()
    }

    /// Why the context is degraded, if it is.
    pub fn degraded_reason(&self) -> Option<&str> {
        self.degraded.as_deref()
    }
}

/// Locates glibc's malloc in processes.
///
/// The malloc model of a libc (its layout and the link-time addresses of its globals) is
/// built once per libc build-id and kept for the life of this process by
/// [`GlibcHeap::locate`]; loading libc's debug info takes a second or more.
#[derive(Debug)]
pub struct GlibcHeap;

/// What one libc build says about malloc, independent of where it is loaded.
#[derive(Debug)]
struct LibcModel {
    layout: MallocLayout,
    main_arena: u64,
    mp: u64,
    tcache_key: Option<u64>,
    /// Link-time address of the first loaded page, to compute the load bias as
    /// [`Binary::load_bias`] does.
    first_load_page: u64,
    pie: bool,
}

impl LibcModel {
    fn from_binary(bin: &Binary) -> Result<LibcModel> {
        let layout = MallocLayout::from_binary(bin)?;
        let var = |name: &str| -> Option<u64> {
            // Prefer malloc.c's static; fall back to the unique variable of that name.
            bin.variables_named(name)
                .find(|v| matches!(&v.kind, VariableKind::FileStatic { cu } if cu.ends_with("malloc.c")))
                .or_else(|| bin.variable(name))
                .map(|v| v.address)
        };
        let need = |name: &str| {
            var(name).ok_or_else(|| HeapError::Unsupported {
                libc: bin.path().to_owned(),
                what: format!("its debug info has no variable `{name}`"),
            })
        };
        Ok(LibcModel {
            layout,
            main_arena: need("main_arena")?,
            mp: need("mp_")?,
            tcache_key: var("tcache_key"),
            first_load_page: bin.first_load_page(),
            pie: bin.is_pie(),
        })
    }

    fn globals(&self, obj: &LoadedObject, pid: Pid) -> Result<MallocGlobals> {
        let bias = if self.pie {
            obj.base.get().wrapping_sub(self.first_load_page)
        } else {
            0
        };
        if bias != obj.bias {
            return Err(HeapError::UnsupportedState {
                who: format!("process {pid}"),
                what: format!(
                    "{}: load bias from its debug info ({bias:#x}) differs from the one of its \
                     program headers ({:#x})",
                    obj.path.display(),
                    obj.bias
                ),
            });
        }
        let at = |vaddr: u64| RemoteAddr::new(vaddr.wrapping_add(bias));
        Ok(MallocGlobals {
            layout: self.layout,
            main_arena: at(self.main_arena),
            mp: at(self.mp),
            tcache_key: self.tcache_key.map(at),
        })
    }
}

type ModelCache = Mutex<HashMap<Vec<u8>, Arc<Mutex<Option<Arc<LibcModel>>>>>>;

fn model_cache() -> &'static ModelCache {
    static CACHE: OnceLock<ModelCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

impl GlibcHeap {
    /// Locates malloc in process `pid` (which should be stopped, so its mappings hold still):
    /// finds its glibc among the loaded objects, loads that libc's debug info (found by
    /// build-id, Debian package `libc6-dbg`), computes the run-time addresses of
    /// `main_arena`, `mp_` and `tcache_key`, and gathers the mappings the walk reads.
    ///
    /// Fails with [`HeapError::NoDebugInfo`] (naming the libc, its build-id and the package to
    /// install) when the debug info is missing: the caller may then walk degraded with
    /// [`HeapContext::without_debug_info`], or use [`GlibcHeap::locate_or_degraded`].
    pub fn locate(pid: Pid) -> Result<HeapContext> {
        let (obj, path) = find_libc(pid)?;
        let data = std::fs::read(&path).map_err(|source| HeapError::DebugInfo {
            libc: obj.path.clone(),
            source: DebugInfoError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let build_id = read_build_id(&data);
        drop(data);
        let model = match &build_id {
            Some(id) => {
                let slot = model_cache()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(id.clone())
                    .or_default()
                    .clone();
                // Held while loading, so concurrent callers wait for one load.
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                match &*slot {
                    Some(m) => m.clone(),
                    None => {
                        let m = Arc::new(load_model(pid, &obj, &path, &LoadOptions::default())?);
                        *slot = Some(m.clone());
                        m
                    }
                }
            }
            None => Arc::new(load_model(pid, &obj, &path, &LoadOptions::default())?),
        };
        context(pid, &obj, &model, build_id.as_deref())
    }

    /// As [`GlibcHeap::locate`], searching for libc's debug info as `options` say and without
    /// the per-build-id cache.
    pub fn locate_with(pid: Pid, options: &LoadOptions) -> Result<HeapContext> {
        let (obj, path) = find_libc(pid)?;
        let model = load_model(pid, &obj, &path, options)?;
        let build_id = std::fs::read(&path).ok().and_then(|d| read_build_id(&d));
        context(pid, &obj, &model, build_id.as_deref())
    }

    /// As [`GlibcHeap::locate`], with a libc model the caller has already loaded (it must be
    /// the libc that process `pid` maps: their build-ids are compared).
    pub fn locate_with_binary(pid: Pid, libc: &Binary) -> Result<HeapContext> {
        let (obj, path) = find_libc(pid)?;
        let build_id = std::fs::read(&path).ok().and_then(|d| read_build_id(&d));
        if build_id.as_deref() != libc.build_id() {
            return Err(HeapError::UnsupportedState {
                who: format!("process {pid}"),
                what: format!(
                    "it maps {} (build-id {}), not the given {} (build-id {})",
                    obj.path.display(),
                    hex_or_unknown(build_id.as_deref()),
                    libc.path().display(),
                    hex_or_unknown(libc.build_id())
                ),
            });
        }
        let model = LibcModel::from_binary(libc)?;
        context(pid, &obj, &model, build_id.as_deref())
    }

    /// [`GlibcHeap::locate`], or, only if libc's debug info is missing, a degraded context
    /// ([`HeapContext::without_debug_info`]) whose reason quotes the error. A warning is
    /// logged; the walked heap lists its limitations.
    pub fn locate_or_degraded(pid: Pid) -> Result<HeapContext> {
        match Self::locate(pid) {
            Err(e @ HeapError::NoDebugInfo { .. }) => {
                tracing::warn!(pid = pid.as_raw(), error = %e, "walking the heap without libc debug info");
                let mut ctx = HeapContext::without_debug_info(pid)?;
                ctx.degraded = Some(e.to_string());
                Ok(ctx)
            }
            other => other,
        }
    }
}

fn context(
    pid: Pid,
    obj: &LoadedObject,
    model: &LibcModel,
    build_id: Option<&[u8]>,
) -> Result<HeapContext> {
    let globals = model.globals(obj, pid)?;
    for (name, addr) in [("main_arena", globals.main_arena), ("mp_", globals.mp)] {
        if !obj.range.contains(addr) {
            return Err(HeapError::UnsupportedState {
                who: format!("process {pid}"),
                what: format!(
                    "`{name}` at {addr} lies outside {} ({:?}): the debug info does not match \
                     the loaded libc",
                    obj.path.display(),
                    obj.range
                ),
            });
        }
    }
    let regions = HeapRegions::of_process(pid)?;
    let mut ctx = HeapContext::new(format!("process {pid}"), globals, regions);
    ctx.pid = Some(pid);
    ctx.libc = Some(LibcFile {
        path: obj.path.clone(),
        build_id: build_id.map(hex),
    });
    Ok(ctx)
}

fn load_model(
    pid: Pid,
    obj: &LoadedObject,
    path: &Path,
    options: &LoadOptions,
) -> Result<LibcModel> {
    let bin = Binary::load_with(path, options).map_err(|e| match e {
        DebugInfoError::NoDebugInfo { reason, .. } => HeapError::NoDebugInfo {
            pid,
            libc: obj.path.clone(),
            build_id: build_id_hex(path).unwrap_or_else(|| "unknown".into()),
            reason,
        },
        source => HeapError::DebugInfo {
            libc: obj.path.clone(),
            source,
        },
    })?;
    LibcModel::from_binary(&bin)
}

/// The process's glibc and a path that opens the very file it mapped: its path when that is
/// still the same inode, else its `/proc/PID/map_files/` entry.
fn find_libc(pid: Pid) -> Result<(LoadedObject, PathBuf)> {
    let objects = symbols::loaded_objects(pid).map_err(|source| HeapError::Process {
        who: format!("process {pid}"),
        what: "listing its loaded objects".into(),
        source,
    })?;
    let obj = objects
        .into_iter()
        .find(|o| {
            o.role == ObjectRole::Library && {
                let n = o.file_name();
                n.starts_with("libc.so") || (n.starts_with("libc-2.") && n.ends_with(".so"))
            }
        })
        .ok_or(HeapError::NoLibc { pid })?;
    let same_file = std::fs::metadata(&obj.path)
        .is_ok_and(|m| m.ino() == obj.inode && procfs::DeviceId::from_dev_t(m.dev()) == obj.dev);
    let path = if same_file && !obj.deleted {
        obj.path.clone()
    } else {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            obj.base.get(),
            header_mapping_end(pid, &obj).unwrap_or(obj.range.end).get()
        ))
    };
    Ok((obj, path))
}

/// End of the mapping starting at the object's base (its `map_files` entry is named by it).
fn header_mapping_end(pid: Pid, obj: &LoadedObject) -> Option<RemoteAddr> {
    procfs::maps(pid)
        .ok()?
        .into_iter()
        .find(|m| m.range.start == obj.base)
        .map(|m| m.range.end)
}

fn read_build_id(data: &[u8]) -> Option<Vec<u8>> {
    use object::Object;
    object::File::parse(data)
        .ok()?
        .build_id()
        .ok()
        .flatten()
        .map(<[u8]>::to_vec)
}

fn build_id_hex(path: &Path) -> Option<String> {
    read_build_id(&std::fs::read(path).ok()?).map(|b| hex(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_or_unknown(bytes: Option<&[u8]>) -> String {
    bytes.map(hex).unwrap_or_else(|| "unknown".into())
}
