//! glibc malloc introspection of a stopped process, read-only: every chunk of every arena and
//! every mmapped chunk, whether it is in use, and the chunk containing any address.
//!
//! Two steps. [`GlibcHeap::locate`] finds the process's glibc, loads that libc's debug info
//! (Debian: package `libc6-dbg`, found by build-id), and computes where `main_arena`, `mp_`
//! and `tcache_key` are; the layout of malloc's structures comes from the same DWARF
//! ([`MallocLayout`]), never from constants. [`Heap::walk`] then reads the heap through any
//! [`tracer::Memory`] — a live process, or a [`tracer::Snapshot`] in tests (see
//! [`synthetic`]) — one read per heap region, so a million chunks take well under a second.
//!
//! ```no_run
//! use transplant::heap::{GlibcHeap, Heap};
//! # fn f(pid: tracer::Pid) -> Result<(), Box<dyn std::error::Error>> {
//! let tracee = tracer::Tracee::seize(pid)?; // every thread stopped
//! let ctx = GlibcHeap::locate(pid)?;
//! let heap = Heap::walk(tracee.memory(), &ctx)?;
//! for chunk in heap.in_use() {
//!     println!("{} {} bytes", chunk.user, chunk.usable_size);
//! }
//! # Ok(()) }
//! ```
//!
//! How chunks are classified (glibc 2.36, `malloc/malloc.c` and `malloc/arena.c`): a chunk is
//! in use iff the next chunk's `PREV_INUSE` bit is set, except chunks sitting in a tcache or a
//! fastbin, which keep that bit. Fastbin entries are found by walking each arena's
//! `fastbinsY` (links mangled by safe-linking); tcache entries of every thread are recognised
//! by their second word, which equals `tcache_key` while they sit in a tcache (glibc's own
//! double-free check), confirmed by their link leading to another such chunk of the same size
//! or ending the list — so no thread's TLS needs to be read.
//!
//! Without libc's debug info, [`HeapContext::without_debug_info`] gives a degraded walk of
//! `[heap]` and the mmapped chunks by their headers alone; the heap then says what it could
//! not establish ([`Heap::limitations`], [`Heap::free_lists_known`]). Nothing is guessed
//! silently.

#![warn(missing_docs)]

mod error;
mod layout;
mod locate;
pub mod synthetic;
mod walk;

#[cfg(test)]
mod tests;

pub use error::{HeapError, Result};
pub use layout::{
    ArrayField, ChunkLayout, Field, HeapInfoLayout, MallocLayout, ParLayout, StateLayout,
    TcacheLayout, IS_MMAPPED, MALLOC_ALIGNMENT, NONCONTIGUOUS_BIT, NON_MAIN_ARENA, PREV_INUSE,
    SIZE_BITS,
};
pub use locate::{GlibcHeap, HeapContext, HeapRegions, LibcFile, MallocGlobals};
pub use walk::{Arena, ArenaId, Chunk, ChunkState, FreeKind, Heap, Limitation, Totals, WalkStats};
