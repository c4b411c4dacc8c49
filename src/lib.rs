//! transplant: live update of a running, unmodified C or Rust process to a new version of its
//! program, with time-traveling state transfer.
//!
//! Layers, each reading only the one below it: `tracer` (its own crate) -> [`debuginfo`],
//! [`heap`] -> state -> mapping -> transfer -> verify -> update. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod debuginfo;
pub mod faults;
pub mod heap;
pub mod inspect;
pub mod mapping;
pub mod stack;
pub mod state;
pub mod transfer;
pub mod update;
pub mod verify;
