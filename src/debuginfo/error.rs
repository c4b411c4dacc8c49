//! Why a binary's debug information could not be loaded. Every variant names the file and the
//! reason, because these messages are shown to users as they are.

use std::path::PathBuf;

/// Failure to build the model of a binary.
#[derive(Debug, thiserror::Error)]
pub enum DebugInfoError {
    /// The file could not be read (missing, permissions, ...).
    #[error("{path}: cannot read: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF object at all.
    #[error("{path}: not an ELF file ({detail})", path = path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What it starts with instead.
        detail: String,
    },
    /// The file claims to be ELF but cannot be parsed.
    #[error("{path}: malformed ELF file: {detail}", path = path.display())]
    MalformedElf {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// An ELF file for another machine than x86_64.
    #[error("{path}: built for {found}, but transplant supports only x86_64", path = path.display())]
    WrongArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture (and class) the file is for.
        found: String,
    },
    /// An ELF file that is neither an executable nor a shared object (a `.o`, a core dump).
    #[error("{path}: {found} is not supported; need an executable or shared object", path = path.display())]
    UnsupportedKind {
        /// The file.
        path: PathBuf,
        /// What it is.
        found: String,
    },
    /// Neither the file nor any separate debug file found for it has DWARF.
    #[error("{path}: no usable debug info: {reason}", path = path.display())]
    NoDebugInfo {
        /// The binary.
        path: PathBuf,
        /// Why: what the file lacks and which separate debug files were looked for.
        reason: String,
    },
    /// The DWARF is present but could not be parsed.
    #[error("{path}: cannot parse DWARF{at}: {detail}", path = path.display(),
        at = offset.map(|o| format!(" at .debug_info offset {o:#x}")).unwrap_or_default())]
    Dwarf {
        /// The file holding the DWARF (the separate debug file, if one was used).
        path: PathBuf,
        /// Offset in `.debug_info` of the unit or entry being read, when known.
        offset: Option<u64>,
        /// gimli's complaint.
        detail: String,
    },
    /// The call frame information covering a pc could not be read.
    #[error("{path}: cannot read the call frame information at pc {pc:#x}: {detail}", path = path.display())]
    Cfi {
        /// The object file.
        path: PathBuf,
        /// The link-time pc looked up.
        pc: u64,
        /// gimli's complaint.
        detail: String,
    },
}
