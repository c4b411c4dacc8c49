//! Read-only memory maps of files (object files and their debug files), for the debug-info
//! layer to read DWARF and CFI without copying whole files into memory.
//!
//! It lives here because mapping a file is `unsafe` in Rust (`memmap2::Mmap::map`) and this
//! crate is the only one allowed `unsafe`. Nothing here talks to another process.

use std::fs::File;
use std::path::{Path, PathBuf};

/// A file mapped read-only and private (`mmap(PROT_READ, MAP_PRIVATE)`), derefs to its bytes.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps the whole of `path` read-only.
    ///
    /// The bytes are assumed not to change while mapped: true of the binaries and debug files
    /// this maps, which are replaced by renaming a new file over them (a new inode) and not
    /// written in place (the kernel refuses writes to a running executable with `ETXTBSY`).
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<MappedFile> {
        let path = path.as_ref();
        let file = File::open(path)?;
        Self::from_file(path, &file)
    }

    /// Maps an already open file (e.g. one opened through `/proc/PID/map_files/`); `path` is
    /// for messages.
    pub fn from_file(path: impl AsRef<Path>, file: &File) -> std::io::Result<MappedFile> {
        // SAFETY: mmap(2) of a regular file, read-only and MAP_PRIVATE (memmap2's `map`), so no
        // write of ours can reach it. The mapping is only unsound if the file is truncated or
        // written in place while mapped (SIGBUS or bytes changing under a `&[u8]`); see `open`
        // for why the files mapped here are not. An empty file maps to an empty slice.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(MappedFile {
            path: path.as_ref().to_owned(),
            map,
        })
    }

    /// The path it was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}
