//! The standard descriptors of the spawned processes. Until the future takes over, what it
//! and the reversed process print goes into pipes that transplant drains, nowhere near the old
//! process's logs; its tail is in the report when the update does not commit. The forward
//! transfer then installs the old process's own descriptors 0-2 in the future (see `fds`), so
//! after the commit it writes where the old one did. A standard descriptor the old process
//! has closed stays closed in them.

use std::io::Read;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// How much of the spawned processes' output is kept for the report.
const KEEP: usize = 8 << 10;

/// The pipes and the threads draining them.
pub struct Output {
    /// The spawned processes' ends: `(ours, number in them)`.
    pub child_ends: Vec<(OwnedFd, RawFd)>,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl Output {
    /// Descriptors for each of `open` (the standard descriptors the old process has open):
    /// `/dev/null` for 0, a drained pipe for 1 and 2.
    pub fn new(open: &[RawFd]) -> std::io::Result<Output> {
        let tail = Arc::new(Mutex::new(Vec::new()));
        let mut child_ends = Vec::new();
        for &n in open {
            if n == 0 {
                let null = std::fs::File::open("/dev/null")?;
                child_ends.push((OwnedFd::from(null), 0));
                continue;
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            child_ends.push((w, n));
            let tail = tail.clone();
            std::thread::Builder::new()
                .name(format!("spawned-fd{n}"))
                .spawn(move || drain(std::fs::File::from(r), &tail))?;
        }
        Ok(Output { child_ends, tail })
    }

    /// Closes our copies of the spawned processes' ends (once both are spawned), so that the
    /// drains end when they do.
    pub fn close_child_ends(&mut self) {
        self.child_ends.clear();
    }

    /// The last few KiB the spawned processes printed, as text.
    pub fn tail(&self) -> String {
        let t = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        String::from_utf8_lossy(&t).into_owned()
    }
}

fn drain(mut r: std::fs::File, tail: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut t) = tail.lock() {
            t.extend_from_slice(&buf[..n]);
            if t.len() > KEEP {
                let cut = t.len() - KEEP;
                t.drain(..cut);
            }
        }
    }
}
