//! Call frame information (CFI) of one ELF object: how to find, at any pc of its code, the
//! canonical frame address (CFA) and where the caller's registers were saved.
//!
//! Read with gimli from `.eh_frame` (looked up through the binary-search table of
//! `.eh_frame_hdr` when there is one, as the C++ runtime does) and `.debug_frame` (of the file
//! or of its separate debug file), `.eh_frame` first. Sections are borrowed from the mapped
//! file, not copied (except compressed ones, which are inflated once). A lookup returns an
//! owned [`UnwindRow`]: plain rules in DWARF register numbers that the stack layer applies to
//! a frame's registers; expressions (PLT entries, signal frames) come as their bytes, to be
//! evaluated against the process's memory by the caller.
//!
//! All addresses are link-time; subtract the load bias from a process's pc first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gimli::{EndianSlice, LittleEndian, UnwindSection};
use object::{Object, ObjectSection};

use super::error::DebugInfoError;

type R<'a> = EndianSlice<'a, LittleEndian>;

/// The bytes of a whole file, shared by the sections borrowed from it.
pub(crate) type Backing = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Bytes shared with the mapped file they come from, or owned (inflated or copied).
#[derive(Clone)]
pub(crate) enum Bytes {
    /// A range of a file mapped (or held) elsewhere.
    Shared(Backing, std::ops::Range<usize>),
    /// Bytes of their own.
    Owned(Arc<[u8]>),
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.get().len())
    }
}

impl Bytes {
    pub(crate) fn get(&self) -> &[u8] {
        match self {
            Bytes::Shared(file, r) => &(**file).as_ref()[r.clone()],
            Bytes::Owned(b) => b,
        }
    }
}

/// One CFI section and its link-time address.
#[derive(Clone, Debug)]
struct Section {
    bytes: Bytes,
    address: u64,
}

/// Which section a row came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum CfiSource {
    /// `.eh_frame` (what the C++ runtime unwinds with: present in nearly every binary).
    EhFrame,
    /// `.debug_frame` (emitted with `-g` by some compilers; often only in debug files).
    DebugFrame,
}

/// How to compute the CFA.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CfaRule {
    /// The value of `register` plus `offset`.
    RegisterOffset {
        /// DWARF register number.
        register: u16,
        /// Byte offset.
        offset: i64,
    },
    /// The value of this DWARF expression (`DW_CFA_def_cfa_expression`).
    Expression(Vec<u8>),
}

/// How to recover one register of the caller.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RegisterRule {
    /// Not recoverable (for the return-address column: this is the outermost frame).
    Undefined,
    /// Unchanged from this frame.
    SameValue,
    /// Saved in memory at CFA + offset.
    Offset(i64),
    /// The value CFA + offset.
    ValOffset(i64),
    /// In this other register.
    Register(u16),
    /// Saved in memory at the address this expression computes.
    Expression(Vec<u8>),
    /// The value this expression computes.
    ValExpression(Vec<u8>),
    /// Defined by the augmenter; not recoverable here.
    Architectural,
    /// A constant.
    Constant(u64),
}

/// The CFI rules in force at one pc.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnwindRow {
    /// First pc (link time) the rules hold for.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Start of the function (FDE) the row belongs to.
    pub fde_start: u64,
    /// The CFA.
    pub cfa: CfaRule,
    /// Registers with an explicit rule; any other register has the ABI's default (on
    /// x86-64: callee-saved rbx, rbp, r12..r15 keep their value, the rest are lost).
    pub registers: Vec<(u16, RegisterRule)>,
    /// The column holding the return address (16 on x86-64).
    pub return_address_register: u16,
    /// The FDE's CIE has the `S` augmentation: this is a signal trampoline
    /// (`__restore_rt`), whose caller was interrupted, not calling: its pc is not a return
    /// address and must not be adjusted by one for lookups.
    pub signal_frame: bool,
    /// The section it came from.
    pub source: CfiSource,
}

impl UnwindRow {
    /// The explicit rule for `register`, if any.
    pub fn rule(&self, register: u16) -> Option<&RegisterRule> {
        self.registers
            .iter()
            .find(|(r, _)| *r == register)
            .map(|(_, rule)| rule)
    }
}

/// Scratch space for lookups, reused across them (gimli's unwind context).
#[derive(Default)]
pub struct CfiContext(Box<gimli::UnwindContext<usize>>);

impl CfiContext {
    /// A new, empty context.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The CFI of one object file. See the module documentation.
#[derive(Clone, Debug)]
pub struct Cfi {
    path: PathBuf,
    eh_frame: Option<Section>,
    eh_frame_hdr: Option<Section>,
    debug_frame: Option<Section>,
    text: u64,
    got: u64,
    /// (start, end, source, offset of the FDE) for the sections searched without a table:
    /// `.debug_frame`, and `.eh_frame` when it has no usable `.eh_frame_hdr`. Sorted.
    index: Vec<(u64, u64, CfiSource, usize)>,
    /// `.eh_frame_hdr` parses and has a search table.
    hdr_usable: bool,
    fdes: usize,
}

fn section_bytes(
    path: &Path,
    file: &object::File<'_>,
    backing: &Backing,
    name: &str,
) -> Result<Option<Section>, DebugInfoError> {
    let Some(s) = file.section_by_name(name) else {
        return Ok(None);
    };
    let err = |e: &dyn std::fmt::Display| DebugInfoError::MalformedElf {
        path: path.to_owned(),
        detail: format!("section {name}: {e}"),
    };
    let compressed = s.compressed_file_range().map_err(|e| err(&e))?;
    let bytes = if compressed.format == object::CompressionFormat::None {
        let start = compressed.offset as usize;
        let end = start + compressed.uncompressed_size as usize;
        if end > (**backing).as_ref().len() || start == end {
            // NOBITS in a debug file (`.eh_frame` stays in the binary), or empty.
            return Ok(None);
        }
        Bytes::Shared(backing.clone(), start..end)
    } else {
        let data = s.uncompressed_data().map_err(|e| err(&e))?;
        if data.is_empty() {
            return Ok(None);
        }
        Bytes::Owned(data.into_owned().into())
    };
    Ok(Some(Section {
        bytes,
        address: s.address(),
    }))
}

impl Cfi {
    /// Reads the CFI sections of `file` (whose bytes are `backing`), and `.debug_frame` of
    /// its separate debug file when the file has none. Parses the FDE tables once to index
    /// sections without a search table; an FDE that does not parse is skipped.
    pub(crate) fn load(
        path: &Path,
        file: &object::File<'_>,
        backing: Backing,
        debug: Option<(&object::File<'_>, Backing)>,
    ) -> Result<Cfi, DebugInfoError> {
        let eh_frame = section_bytes(path, file, &backing, ".eh_frame")?;
        let eh_frame_hdr = section_bytes(path, file, &backing, ".eh_frame_hdr")?;
        let mut debug_frame = section_bytes(path, file, &backing, ".debug_frame")?;
        if debug_frame.is_none() {
            if let Some((dfile, dback)) = &debug {
                debug_frame = section_bytes(path, dfile, dback, ".debug_frame")?;
            }
        }
        let text = file.section_by_name(".text").map_or(0, |s| s.address());
        let got = file
            .section_by_name(".got")
            .or_else(|| file.section_by_name(".got.plt"))
            .map_or(0, |s| s.address());
        let mut cfi = Cfi {
            path: path.to_owned(),
            eh_frame,
            eh_frame_hdr,
            debug_frame,
            text,
            got,
            index: Vec::new(),
            hdr_usable: false,
            fdes: 0,
        };
        cfi.hdr_usable = cfi.parsed_hdr().is_some_and(|h| h.table().is_some());
        cfi.build_index();
        Ok(cfi)
    }

    /// An object with no CFI at all.
    pub fn empty(path: &Path) -> Cfi {
        Cfi {
            path: path.to_owned(),
            eh_frame: None,
            eh_frame_hdr: None,
            debug_frame: None,
            text: 0,
            got: 0,
            index: Vec::new(),
            hdr_usable: false,
            fdes: 0,
        }
    }

    /// Whether there is no CFI section at all.
    pub fn is_empty(&self) -> bool {
        self.eh_frame.is_none() && self.debug_frame.is_none()
    }

    /// How many FDEs the sections searched without a table hold (for reports).
    pub fn indexed_fdes(&self) -> usize {
        self.fdes
    }

    fn bases(&self) -> gimli::BaseAddresses {
        let mut b = gimli::BaseAddresses::default()
            .set_text(self.text)
            .set_got(self.got);
        if let Some(s) = &self.eh_frame {
            b = b.set_eh_frame(s.address);
        }
        if let Some(s) = &self.eh_frame_hdr {
            b = b.set_eh_frame_hdr(s.address);
        }
        b
    }

    fn eh(&self) -> Option<gimli::EhFrame<R<'_>>> {
        self.eh_frame.as_ref().map(|s| {
            let mut f = gimli::EhFrame::new(s.bytes.get(), LittleEndian);
            f.set_address_size(8);
            f
        })
    }

    fn debug(&self) -> Option<gimli::DebugFrame<R<'_>>> {
        self.debug_frame.as_ref().map(|s| {
            let mut f = gimli::DebugFrame::new(s.bytes.get(), LittleEndian);
            f.set_address_size(8);
            f
        })
    }

    fn parsed_hdr(&self) -> Option<gimli::ParsedEhFrameHdr<R<'_>>> {
        let s = self.eh_frame_hdr.as_ref()?;
        gimli::EhFrameHdr::new(s.bytes.get(), LittleEndian)
            .parse(&self.bases(), 8)
            .ok()
    }

    fn build_index(&mut self) {
        let bases = self.bases();
        let mut index = Vec::new();
        fn walk<'a, S: UnwindSection<R<'a>>>(
            section: &S,
            bases: &gimli::BaseAddresses,
            source: CfiSource,
            out: &mut Vec<(u64, u64, CfiSource, usize)>,
        ) where
            S::Offset: gimli::UnwindOffset<usize>,
        {
            let mut entries = section.entries(bases);
            // A malformed entry ends the walk: what came before is still usable.
            while let Ok(Some(entry)) = entries.next() {
                if let gimli::CieOrFde::Fde(partial) = entry {
                    if let Ok(fde) = partial.parse(S::cie_from_offset) {
                        if fde.len() > 0 {
                            out.push((
                                fde.initial_address(),
                                fde.end_address(),
                                source,
                                fde.offset(),
                            ));
                        }
                    }
                }
            }
        }
        if !self.hdr_usable {
            if let Some(eh) = self.eh() {
                walk(&eh, &bases, CfiSource::EhFrame, &mut index);
            }
        }
        if let Some(df) = self.debug() {
            walk(&df, &bases, CfiSource::DebugFrame, &mut index);
        }
        index.sort_unstable_by_key(|e| (e.0, e.1));
        self.fdes = index.len();
        self.index = index;
    }

    /// The rules at link-time `pc`: `Ok(None)` when no FDE covers it.
    pub fn row(&self, ctx: &mut CfiContext, pc: u64) -> Result<Option<UnwindRow>, DebugInfoError> {
        let bases = self.bases();
        let err = |e: gimli::Error| DebugInfoError::Cfi {
            path: self.path.clone(),
            pc,
            detail: e.to_string(),
        };
        // 1. `.eh_frame` through its header's table.
        if self.hdr_usable {
            if let (Some(eh), Some(hdr)) = (self.eh(), self.parsed_hdr()) {
                if let Some(table) = hdr.table() {
                    match table.fde_for_address(&eh, &bases, pc, gimli::EhFrame::cie_from_offset) {
                        Ok(fde) => {
                            return convert(&eh, &bases, &fde, ctx, pc, CfiSource::EhFrame)
                                .map_err(err)
                        }
                        Err(gimli::Error::NoUnwindInfoForAddress) => {}
                        Err(e) => return Err(err(e)),
                    }
                }
            }
        }
        // 2. The index (`.eh_frame` without a table, `.debug_frame`), `.eh_frame` first.
        let i = self.index.partition_point(|e| e.0 <= pc);
        let mut candidates: Vec<_> = self.index[..i]
            .iter()
            .rev()
            .take(16)
            .filter(|e| pc < e.1)
            .copied()
            .collect();
        candidates.sort_by_key(|e| e.2 != CfiSource::EhFrame);
        for (_, _, source, offset) in candidates {
            let found = match source {
                CfiSource::EhFrame => {
                    let Some(eh) = self.eh() else { continue };
                    let fde = eh
                        .fde_from_offset(
                            &bases,
                            gimli::EhFrameOffset(offset),
                            gimli::EhFrame::cie_from_offset,
                        )
                        .map_err(err)?;
                    convert(&eh, &bases, &fde, ctx, pc, source)
                }
                CfiSource::DebugFrame => {
                    let Some(df) = self.debug() else { continue };
                    let fde = df
                        .fde_from_offset(
                            &bases,
                            gimli::DebugFrameOffset(offset),
                            gimli::DebugFrame::cie_from_offset,
                        )
                        .map_err(err)?;
                    convert(&df, &bases, &fde, ctx, pc, source)
                }
            };
            match found {
                Ok(Some(row)) => return Ok(Some(row)),
                Ok(None) | Err(gimli::Error::NoUnwindInfoForAddress) => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Ok(None)
    }
}

fn convert<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    bases: &gimli::BaseAddresses,
    fde: &gimli::FrameDescriptionEntry<R<'a>>,
    ctx: &mut CfiContext,
    pc: u64,
    source: CfiSource,
) -> gimli::Result<Option<UnwindRow>>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    if !fde.contains(pc) {
        return Ok(None);
    }
    let row = fde.unwind_info_for_address(section, bases, &mut ctx.0, pc)?;
    let expr = |e: &gimli::UnwindExpression<usize>| -> gimli::Result<Vec<u8>> {
        Ok(e.get(section)?.0.slice().to_vec())
    };
    let cfa = match row.cfa() {
        gimli::CfaRule::RegisterAndOffset { register, offset } => CfaRule::RegisterOffset {
            register: register.0,
            offset: *offset,
        },
        gimli::CfaRule::Expression(e) => CfaRule::Expression(expr(e)?),
    };
    let mut registers = Vec::new();
    for (reg, rule) in row.registers() {
        let r = match rule {
            gimli::RegisterRule::Undefined => RegisterRule::Undefined,
            gimli::RegisterRule::SameValue => RegisterRule::SameValue,
            gimli::RegisterRule::Offset(o) => RegisterRule::Offset(*o),
            gimli::RegisterRule::ValOffset(o) => RegisterRule::ValOffset(*o),
            gimli::RegisterRule::Register(r) => RegisterRule::Register(r.0),
            gimli::RegisterRule::Expression(e) => RegisterRule::Expression(expr(e)?),
            gimli::RegisterRule::ValExpression(e) => RegisterRule::ValExpression(expr(e)?),
            gimli::RegisterRule::Constant(c) => RegisterRule::Constant(*c),
            _ => RegisterRule::Architectural,
        };
        registers.push((reg.0, r));
    }
    Ok(Some(UnwindRow {
        start: row.start_address(),
        end: row.end_address(),
        fde_start: fde.initial_address(),
        cfa,
        registers,
        return_address_register: fde.cie().return_address_register().0,
        signal_frame: fde.is_signal_trampoline(),
        source,
    }))
}
