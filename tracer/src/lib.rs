//! Process control and remote memory for transplant.
//!
//! This crate is the only code of the project that talks to the kernel about another process:
//! seizing and stopping it ([`Tracee`]), reading and writing its memory ([`mem`]), what
//! `/proc` says about it ([`procfs`]), finding symbols in its loaded objects ([`symbols`]),
//! running code inside it ([`remote`]), starting programs under trace ([`spawn`]) and taking its
//! file descriptors ([`fd`]). It knows nothing of DWARF or program versions. All `unsafe` code
//! of the project lives here, each block with a `SAFETY:` comment.

pub mod addr;
pub mod error;
pub mod fd;
pub mod fdpass;
pub mod mapfile;
pub mod mem;
pub mod procfs;
pub mod ptrace;
pub mod quiesce;
pub mod remote;
pub mod spawn;
pub mod symbols;
pub mod tracee;

pub use addr::{RemoteAddr, RemoteRange};
pub use error::{Error, ExitStatus, Result};
pub use mem::{Memory, MemoryMut, ProcessMemory, Snapshot};
pub use nix::unistd::Pid;
pub use tracee::{Held, Origin, SyscallAction, SyscallEntry, Tracee};
