//! Reading and writing another process's memory, through one trait.
//!
//! Everything above this crate reads a process through [`Memory`], so capture, transfer and
//! verification can run on a live process ([`ProcessMemory`]) or on bytes held in this process
//! ([`Snapshot`]) alike. Live access uses `process_vm_readv(2)`/`process_vm_writev(2)`, which
//! move many pieces per system call, and falls back to `/proc/PID/mem` where they are refused
//! (they need the same credentials as `ptrace` and honour page protections, while `/proc/PID/mem`
//! of a tracee we are tracing does not: it is how we patch read-only code).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use crate::addr::RemoteAddr;
use crate::error::{Error, Result};

/// Largest number of iovecs one `process_vm_*` call takes (`IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Read access to an address space.
pub trait Memory {
    /// Fills `buf` with the bytes at `addr`; fails unless every byte could be read.
    fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<()>;

    /// Reads many pieces at once; the default reads them one by one, live processes batch them.
    fn read_many(&self, pieces: &mut [(RemoteAddr, &mut [u8])]) -> Result<()> {
        for (addr, buf) in pieces.iter_mut() {
            self.read(*addr, buf)?;
        }
        Ok(())
    }

    /// Reads `len` bytes at `addr` into a new vector.
    fn read_vec(&self, addr: RemoteAddr, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    /// Reads a native-endian `u64` at `addr`.
    fn read_u64(&self, addr: RemoteAddr) -> Result<u64> {
        let mut buf = [0; 8];
        self.read(addr, &mut buf)?;
        Ok(u64::from_ne_bytes(buf))
    }

    /// Reads a NUL-terminated string of at most `max` bytes (without the NUL).
    fn read_c_string(&self, addr: RemoteAddr, max: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        while out.len() < max {
            let at = addr.checked_add(out.len() as u64).ok_or(Error::Unmapped {
                what: "address space".into(),
                addr,
                len: max,
            })?;
            // Never read across a page boundary in one piece: the next page may be unmapped.
            let to_page_end = 4096 - (at.get() % 4096) as usize;
            let n = chunk.len().min(to_page_end).min(max - out.len());
            if self.read(at, &mut chunk[..n]).is_err() {
                // The string may end just before unreadable memory (a snapshot region need not
                // end on a page boundary): go byte by byte, failing only past its end.
                for i in 0..n {
                    let b = at.checked_add(i as u64).expect("in range");
                    self.read(b, &mut chunk[i..i + 1])?;
                    if chunk[i] == 0 {
                        out.extend_from_slice(&chunk[..i]);
                        return Ok(out);
                    }
                }
            }
            if let Some(nul) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(out)
    }
}

/// Write access to an address space.
pub trait MemoryMut: Memory {
    /// Writes `data` at `addr`; fails unless every byte was written.
    fn write(&self, addr: RemoteAddr, data: &[u8]) -> Result<()>;

    /// Writes many pieces at once; the default writes them one by one.
    fn write_many(&self, pieces: &[(RemoteAddr, &[u8])]) -> Result<()> {
        for (addr, data) in pieces {
            self.write(*addr, data)?;
        }
        Ok(())
    }
}

/// The memory of a live process.
///
/// Reads and writes need the right to `ptrace` the process (same user, or `CAP_SYS_PTRACE`).
/// Nothing here stops the process: a consistent view needs its threads stopped first.
#[derive(Debug)]
pub struct ProcessMemory {
    pid: Pid,
    mem_file: OnceLock<std::result::Result<File, std::io::ErrorKind>>,
}

impl ProcessMemory {
    /// Memory of process `pid`.
    pub fn new(pid: Pid) -> Self {
        ProcessMemory {
            pid,
            mem_file: OnceLock::new(),
        }
    }

    /// The process this reads.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    fn mem_file(&self, op: &'static str, addr: RemoteAddr, len: usize) -> Result<&File> {
        let pid = self.pid;
        self.mem_file
            .get_or_init(|| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("/proc/{pid}/mem"))
                    .map_err(|e| e.kind())
            })
            .as_ref()
            .map_err(|kind| {
                if *kind == std::io::ErrorKind::NotFound {
                    Error::Gone { pid, status: None }
                } else {
                    Error::Memory {
                        pid,
                        op,
                        addr,
                        len,
                        source: std::io::Error::from(*kind),
                    }
                }
            })
    }

    /// Reads through `/proc/PID/mem`, which also reads pages `process_vm_readv` refuses.
    pub fn read_via_proc(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<()> {
        let file = self.mem_file("read", addr, buf.len())?;
        file.read_exact_at(buf, addr.get())
            .map_err(|source| self.memory_error("read", addr, buf.len(), source))
    }

    /// Writes through `/proc/PID/mem`. Unlike `process_vm_writev` this writes read-only pages
    /// (code) of a process we trace, as `ptrace(PTRACE_POKETEXT)` would: the kernel breaks
    /// copy-on-write for that process alone, so the file on disk and other processes are untouched.
    pub fn write_via_proc(&self, addr: RemoteAddr, data: &[u8]) -> Result<()> {
        let file = self.mem_file("write", addr, data.len())?;
        file.write_all_at(data, addr.get())
            .map_err(|source| self.memory_error("write", addr, data.len(), source))
    }

    fn memory_error(
        &self,
        op: &'static str,
        addr: RemoteAddr,
        len: usize,
        source: std::io::Error,
    ) -> Error {
        if source.raw_os_error() == Some(libc::ESRCH) || !crate::procfs::exists(self.pid) {
            return Error::Gone {
                pid: self.pid,
                status: None,
            };
        }
        Error::Memory {
            pid: self.pid,
            op,
            addr,
            len,
            source,
        }
    }

    fn readv_batch(&self, pieces: &mut [(RemoteAddr, &mut [u8])]) -> Result<()> {
        let remote: Vec<RemoteIoVec> = pieces
            .iter()
            .map(|(a, b)| RemoteIoVec {
                base: a.get() as usize,
                len: b.len(),
            })
            .collect();
        let total: usize = remote.iter().map(|r| r.len).sum();
        let mut local: Vec<IoSliceMut> =
            pieces.iter_mut().map(|(_, b)| IoSliceMut::new(b)).collect();
        match process_vm_readv(self.pid, &mut local, &remote) {
            Ok(n) if n == total => Ok(()),
            // A short read stops at the first piece it could not read: finish piece by piece,
            // so the error names the exact piece (or /proc/PID/mem reads it after all).
            Ok(_) | Err(nix::Error::EFAULT) | Err(nix::Error::EPERM) | Err(nix::Error::ENOSYS) => {
                drop(local);
                for (addr, buf) in pieces.iter_mut() {
                    self.read_via_proc(*addr, buf)?;
                }
                Ok(())
            }
            Err(nix::Error::ESRCH) => Err(Error::Gone {
                pid: self.pid,
                status: None,
            }),
            Err(e) => Err(self.memory_error(
                "read",
                pieces[0].0,
                total,
                std::io::Error::from_raw_os_error(e as i32),
            )),
        }
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.read_many(&mut [(addr, buf)])
    }

    fn read_many(&self, pieces: &mut [(RemoteAddr, &mut [u8])]) -> Result<()> {
        for batch in pieces.chunks_mut(IOV_MAX) {
            self.readv_batch(batch)?;
        }
        Ok(())
    }
}

impl MemoryMut for ProcessMemory {
    fn write(&self, addr: RemoteAddr, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.write_many(&[(addr, data)])
    }

    fn write_many(&self, pieces: &[(RemoteAddr, &[u8])]) -> Result<()> {
        for batch in pieces.chunks(IOV_MAX) {
            let remote: Vec<RemoteIoVec> = batch
                .iter()
                .map(|(a, d)| RemoteIoVec {
                    base: a.get() as usize,
                    len: d.len(),
                })
                .collect();
            let local: Vec<std::io::IoSlice> = batch
                .iter()
                .map(|(_, d)| std::io::IoSlice::new(d))
                .collect();
            let total: usize = remote.iter().map(|r| r.len).sum();
            match process_vm_writev(self.pid, &local, &remote) {
                Ok(n) if n == total => {}
                Ok(_)
                | Err(nix::Error::EFAULT)
                | Err(nix::Error::EPERM)
                | Err(nix::Error::ENOSYS) => {
                    for (addr, data) in batch {
                        self.write_via_proc(*addr, data)?;
                    }
                }
                Err(nix::Error::ESRCH) => {
                    return Err(Error::Gone {
                        pid: self.pid,
                        status: None,
                    })
                }
                Err(e) => {
                    return Err(self.memory_error(
                        "write",
                        batch[0].0,
                        total,
                        std::io::Error::from_raw_os_error(e as i32),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// An address space held in this process: regions of bytes at remote addresses.
///
/// Used to test everything above the tracer on byte buffers, and to keep a copy of a stopped
/// process's memory. Regions must not overlap.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    regions: BTreeMap<RemoteAddr, Vec<u8>>,
}

impl Snapshot {
    /// An empty address space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a region of `bytes` starting at `start`, replacing any region starting there.
    pub fn insert(&mut self, start: RemoteAddr, bytes: Vec<u8>) {
        self.regions.insert(start, bytes);
    }

    /// The regions, by start address.
    pub fn regions(&self) -> impl Iterator<Item = (RemoteAddr, &[u8])> {
        self.regions.iter().map(|(a, b)| (*a, b.as_slice()))
    }

    fn locate(&self, addr: RemoteAddr, len: usize) -> Result<(RemoteAddr, usize)> {
        let unmapped = || Error::Unmapped {
            what: "snapshot".into(),
            addr,
            len,
        };
        let (start, bytes) = self
            .regions
            .range(..=addr)
            .next_back()
            .ok_or_else(unmapped)?;
        let off = addr.offset_from(*start).ok_or_else(unmapped)? as usize;
        if off.checked_add(len).is_some_and(|end| end <= bytes.len()) {
            Ok((*start, off))
        } else {
            Err(unmapped())
        }
    }
}

impl Memory for Snapshot {
    fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<()> {
        let (start, off) = self.locate(addr, buf.len())?;
        buf.copy_from_slice(&self.regions[&start][off..off + buf.len()]);
        Ok(())
    }
}

/// Writing a snapshot needs `&mut`; this wrapper gives it interior mutability for [`MemoryMut`].
#[derive(Debug, Default)]
pub struct SharedSnapshot(pub std::sync::Mutex<Snapshot>);

impl Memory for SharedSnapshot {
    fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<()> {
        self.0.lock().expect("snapshot lock").read(addr, buf)
    }
}

impl MemoryMut for SharedSnapshot {
    fn write(&self, addr: RemoteAddr, data: &[u8]) -> Result<()> {
        let mut snap = self.0.lock().expect("snapshot lock");
        let (start, off) = snap.locate(addr, data.len())?;
        snap.regions.get_mut(&start).expect("located region")[off..off + data.len()]
            .copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_inside_regions_only() {
        let mut s = Snapshot::new();
        s.insert(RemoteAddr::new(0x1000), (0u8..=255).collect());
        let mut b = [0u8; 4];
        s.read(RemoteAddr::new(0x1010), &mut b).unwrap();
        assert_eq!(b, [0x10, 0x11, 0x12, 0x13]);
        assert!(s.read(RemoteAddr::new(0x10fe), &mut b).is_err());
        assert!(s.read(RemoteAddr::new(0xfff), &mut b).is_err());
        assert_eq!(
            s.read_u64(RemoteAddr::new(0x1000)).unwrap(),
            u64::from_ne_bytes([0, 1, 2, 3, 4, 5, 6, 7])
        );
    }

    #[test]
    fn snapshot_c_strings_stop_at_nul_or_max() {
        let mut s = Snapshot::new();
        s.insert(RemoteAddr::new(0x2000), b"hello\0world".to_vec());
        assert_eq!(
            s.read_c_string(RemoteAddr::new(0x2000), 100).unwrap(),
            b"hello"
        );
        assert_eq!(s.read_c_string(RemoteAddr::new(0x2000), 3).unwrap(), b"hel");
        // Unterminated up to the region's end: the read past it fails.
        assert!(s.read_c_string(RemoteAddr::new(0x2006), 100).is_err());
    }

    #[test]
    fn shared_snapshot_writes_in_place() {
        let mut s = Snapshot::new();
        s.insert(RemoteAddr::new(0x100), vec![0; 16]);
        let shared = SharedSnapshot(std::sync::Mutex::new(s));
        shared.write(RemoteAddr::new(0x104), &[1, 2]).unwrap();
        assert_eq!(
            shared.read_vec(RemoteAddr::new(0x103), 4).unwrap(),
            [0, 1, 2, 0]
        );
        assert!(shared.write(RemoteAddr::new(0x10f), &[1, 2]).is_err());
    }
}
