//! The objects mapped in one process, loaded for unwinding: the program with its whole debug
//! info ([`Binary`]: frames, locals, types), every other object (shared libraries, the dynamic
//! linker, the vDSO) lightly ([`Image`]: symbols and CFI), each with its load bias.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use object::Object;
use tracer::symbols::ObjectRole;
use tracer::{Memory, Pid, ProcessMemory, RemoteAddr, RemoteRange};

use crate::debuginfo::{Binary, Image, LoadOptions};

use super::Error;

/// One object mapped in the process.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    /// The path the process mapped it from (`[vdso]` for the vDSO).
    pub path: PathBuf,
    /// Program, dynamic linker, library or vDSO.
    pub role: ObjectRole,
    /// Added to a link-time address to give the address in the process.
    pub bias: u64,
    /// The addresses its segments cover in the process.
    pub range: RemoteRange,
    /// Symbols and CFI.
    pub image: Arc<Image>,
    /// The whole debug info: loaded for the program only.
    pub binary: Option<Arc<Binary>>,
}

impl LoadedImage {
    /// The link-time address of process address `addr`.
    pub fn vaddr(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.bias)
    }
}

/// Every object mapped in a process, for [`super::unwind_thread`]. See the module doc.
#[derive(Clone, Debug)]
pub struct ProcessImages {
    pid: Pid,
    objects: Vec<LoadedImage>,
}

type Key = (PathBuf, Option<Vec<u8>>);

/// Loaded images shared by every process that maps the same file (same path and build-id):
/// an update looks at three processes running the same libc.
fn image_cache() -> &'static Mutex<HashMap<Key, Arc<Image>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Image>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn binary_cache() -> &'static Mutex<HashMap<Key, Arc<Binary>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Binary>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn build_id_of(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let map = tracer::mapfile::MappedFile::open(path).map_err(|source| {
        Error::DebugInfo(crate::debuginfo::DebugInfoError::Io {
            path: path.to_owned(),
            source,
        })
    })?;
    Ok(object::File::parse(&*map)
        .ok()
        .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec)))
}

impl ProcessImages {
    /// Reads `/proc/PID/maps` and loads every executable object: the program through
    /// `/proc/PID/exe` with its whole debug info, the others with their symbols and CFI only
    /// (the separate debug file by build-id under `/usr/lib/debug/.build-id` when present),
    /// the vDSO from the process's memory. Objects are cached by path and build-id across
    /// calls. The process need not be stopped, but should be for the picture to hold.
    ///
    /// Fails if the program's debug info cannot be loaded, or a library file cannot be read.
    pub fn load(pid: Pid) -> Result<ProcessImages, Error> {
        Self::load_with(pid, &LoadOptions::default(), None)
    }

    /// [`ProcessImages::load`] with a debug search of its own, and the program's debug info
    /// given when the caller has it already.
    pub fn load_with(
        pid: Pid,
        options: &LoadOptions,
        program: Option<Arc<Binary>>,
    ) -> Result<ProcessImages, Error> {
        let loaded = tracer::symbols::loaded_objects(pid)?;
        let maps = tracer::procfs::maps(pid)?;
        let mut objects = Vec::new();
        for o in loaded {
            let (image, binary) = match o.role {
                ObjectRole::Vdso => {
                    let len = o.range.len() as usize;
                    let bytes = ProcessMemory::new(pid).read_vec(o.range.start, len)?;
                    (Arc::new(Image::from_bytes("[vdso]", bytes)?), None)
                }
                role => {
                    // The very file mapped (map_files), else the path if it is still that file.
                    let file = if role == ObjectRole::Main {
                        tracer::procfs::exe_link(pid)
                    } else {
                        maps.iter()
                            .find(|m| m.range.start == o.base && m.offset == 0)
                            .map(|m| {
                                PathBuf::from(format!(
                                    "/proc/{pid}/map_files/{}",
                                    m.map_files_name()
                                ))
                            })
                            .filter(|p| std::fs::File::open(p).is_ok())
                            .unwrap_or_else(|| o.path.clone())
                    };
                    let key = (o.path.clone(), build_id_of(&file)?);
                    let cached = image_cache().lock().expect("cache").get(&key).cloned();
                    let image = match cached {
                        Some(i) => i,
                        None => {
                            let i = Arc::new(Image::load_with(&file, options)?);
                            image_cache()
                                .lock()
                                .expect("cache")
                                .insert(key.clone(), i.clone());
                            i
                        }
                    };
                    let binary = if role == ObjectRole::Main {
                        Some(match &program {
                            Some(b) => b.clone(),
                            None => {
                                let cached =
                                    binary_cache().lock().expect("cache").get(&key).cloned();
                                match cached {
                                    Some(b) => b,
                                    None => {
                                        let b = Arc::new(Binary::load_with(&file, options)?);
                                        binary_cache()
                                            .lock()
                                            .expect("cache")
                                            .insert(key, b.clone());
                                        b
                                    }
                                }
                            }
                        })
                    } else {
                        None
                    };
                    (image, binary)
                }
            };
            objects.push(LoadedImage {
                path: o.path,
                role: o.role,
                bias: o.bias,
                range: o.range,
                image,
                binary,
            });
        }
        Ok(ProcessImages { pid, objects })
    }

    /// A set of objects put together by the caller (tests, snapshots of another machine).
    pub fn from_objects(pid: Pid, objects: Vec<LoadedImage>) -> ProcessImages {
        ProcessImages { pid, objects }
    }

    /// The process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Every object, in address order.
    pub fn objects(&self) -> &[LoadedImage] {
        &self.objects
    }

    /// The program.
    pub fn program(&self) -> Option<&LoadedImage> {
        self.objects.iter().find(|o| o.role == ObjectRole::Main)
    }

    /// The object whose code contains process address `addr`.
    pub fn object_containing(&self, addr: u64) -> Option<&LoadedImage> {
        let a = RemoteAddr::new(addr);
        self.objects
            .iter()
            .find(|o| o.range.contains(a) && o.image.is_code(o.vaddr(addr)))
    }
}
