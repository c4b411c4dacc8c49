//! Why a heap could not be located or walked. Messages are shown to users as they are, so each
//! names the process (or snapshot), the libc file and the address concerned.

use std::path::PathBuf;

use tracer::{Pid, RemoteAddr};

use crate::debuginfo::DebugInfoError;

/// Failure to locate or walk a glibc malloc heap.
#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    /// Reading `/proc` about the process, or its memory, failed (including the process dying:
    /// see [`HeapError::is_gone`]).
    #[error("{who}: {what}: {source}")]
    Process {
        /// `process N` or `snapshot`.
        who: String,
        /// What was being read.
        what: String,
        /// The tracer's error.
        #[source]
        source: tracer::Error,
    },

    /// No glibc `libc.so.6` is loaded: a static program, or another C library (musl).
    #[error(
        "process {pid} has no glibc libc.so.6 among its loaded objects (a statically linked \
         program, or another C library such as musl); only glibc's malloc is understood"
    )]
    NoLibc {
        /// The process.
        pid: Pid,
    },

    /// libc's debug information (needed for `main_arena`, `mp_`, `tcache_key` and the layout
    /// of malloc's structures) is not installed.
    #[error(
        "process {pid}: no debug info for its C library {libc} (build-id {build_id}), which is \
         needed to find malloc's arenas and free lists; install the package `libc6-dbg` \
         (it provides /usr/lib/debug/.build-id/{dir}/{rest}.debug), or walk without it \
         (HeapContext::without_debug_info: chunk bits only, free lists unknown). Details: {reason}",
        libc = libc.display(),
        dir = build_id.get(..2).unwrap_or("??"),
        rest = build_id.get(2..).unwrap_or("")
    )]
    NoDebugInfo {
        /// The process.
        pid: Pid,
        /// The libc file it maps.
        libc: PathBuf,
        /// Its GNU build-id in hex (`unknown` if it has none).
        build_id: String,
        /// What the debug-info loader tried.
        reason: String,
    },

    /// libc's debug information exists but could not be loaded.
    #[error("cannot load the debug info of {libc}: {source}", libc = libc.display())]
    DebugInfo {
        /// The libc file.
        libc: PathBuf,
        /// The loader's error.
        #[source]
        source: DebugInfoError,
    },

    /// libc's debug information lacks something malloc introspection needs: not the glibc
    /// malloc this code understands (glibc 2.26+ ptmalloc on a 64-bit target).
    #[error("{libc}: {what}; only glibc's ptmalloc (2.26 or later, 64-bit) is understood",
        libc = libc.display())]
    Unsupported {
        /// The libc file.
        libc: PathBuf,
        /// What is missing or unexpected.
        what: String,
    },

    /// The heap is in a state this walk does not handle (e.g. a non-contiguous main arena).
    #[error("{who}: {what}")]
    UnsupportedState {
        /// `process N` or `snapshot`.
        who: String,
        /// What was found.
        what: String,
    },

    /// The heap's contents contradict malloc's invariants: corrupted memory, a thread stopped
    /// in the middle of `malloc`/`free`, or a wrong layout.
    #[error("{who}: heap inconsistent in {arena} at {addr}: {detail}")]
    Corrupt {
        /// `process N` or `snapshot`.
        who: String,
        /// Which arena (`main arena`, `arena 2 at 0x...`, `mmapped chunks`).
        arena: String,
        /// The chunk or structure concerned.
        addr: RemoteAddr,
        /// What was wrong.
        detail: String,
    },
}

impl HeapError {
    /// Whether the process disappeared during the operation.
    pub fn is_gone(&self) -> bool {
        matches!(self, HeapError::Process { source, .. } if source.is_gone())
    }
}

/// Results of heap introspection.
pub type Result<T, E = HeapError> = std::result::Result<T, E>;
