//! What DWARF says about a function's stack frame: its parameters and locals, the lexical
//! blocks and inlined calls they live in (each with its pc ranges), its frame base, and where
//! each variable is at a given pc (location expressions and location lists).
//!
//! Locations are classified once, at load time, into a closed enum ([`Location`]) of the
//! shapes that gcc and rustc emit for variables that live somewhere (a register, memory at a
//! register plus an offset, at the frame base or CFA plus an offset, at a fixed address) or
//! whose value is known (a constant, a register plus an offset). Anything else is
//! [`Location::Unsupported`], naming the first DWARF operation not understood; nothing here
//! evaluates an expression, so nothing panics on one. The stack layer resolves a [`Location`]
//! against a frame's registers and CFA.
//!
//! All addresses are link-time; add the load bias for a process.

use super::types::TypeId;

/// Index of a function in [`super::Binary::subprograms`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SubprogramId(pub u32);

/// Where a variable (or a frame base) is, at the pcs one DWARF expression covers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Location {
    /// In a register (DWARF register number: x86-64 rax=0, rdx=1, rcx=2, rbx=3, rsi=4, rdi=5,
    /// rbp=6, rsp=7, r8..r15=8..15). `DW_OP_regN`, `DW_OP_regx`.
    Register(u16),
    /// In memory at the value of a register plus an offset. `DW_OP_bregN off`.
    RegisterOffset {
        /// DWARF register number.
        register: u16,
        /// Byte offset.
        offset: i64,
    },
    /// In memory at the function's frame base plus an offset. `DW_OP_fbreg off`.
    FrameBaseOffset(i64),
    /// In memory at the frame's canonical frame address plus an offset.
    /// `DW_OP_call_frame_cfa [DW_OP_plus_uconst off]`. (As a frame base: the frame base is
    /// this address.)
    CfaOffset(i64),
    /// In memory at a fixed link-time address (function statics). `DW_OP_addr`, `DW_OP_addrx`.
    Address(u64),
    /// Not in memory: the value is this constant. `DW_OP_litN`/`constN` + `DW_OP_stack_value`.
    Constant(u64),
    /// Not in memory: the value is a register's value plus an offset.
    /// `DW_OP_bregN off DW_OP_stack_value`.
    RegisterValue {
        /// DWARF register number.
        register: u16,
        /// Added to the register's value.
        offset: i64,
    },
    /// Not in memory: the value is these bytes. `DW_OP_implicit_value`.
    ImplicitValue(Vec<u8>),
    /// The variable has no location at this pc (an empty expression, or no entry of its
    /// location list covers the pc).
    OptimisedOut,
    /// An expression of another shape; `op` names the first operation that is not understood
    /// (`DW_OP_entry_value`, `DW_OP_piece`, ...), `ops` the whole expression.
    Unsupported {
        /// Name of the first operation not understood.
        op: String,
        /// Every operation of the expression, by name.
        ops: String,
    },
}

/// A location that may depend on the pc.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Locations {
    /// No `DW_AT_location` at all (declared but optimised away everywhere).
    None,
    /// One expression for every pc of the scope.
    Single(Location),
    /// A location list: each entry is valid in `[begin, end)` (link-time pcs).
    List(Vec<LocationRange>),
}

/// One entry of a location list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LocationRange {
    /// First pc (link time).
    pub begin: u64,
    /// One past the last pc.
    pub end: u64,
    /// Where the variable is there.
    pub location: Location,
}

impl Locations {
    /// The location at link-time `pc`: [`Location::OptimisedOut`] when nothing covers it.
    pub fn at(&self, pc: u64) -> Location {
        match self {
            Locations::None => Location::OptimisedOut,
            Locations::Single(l) => l.clone(),
            Locations::List(list) => list
                .iter()
                .find(|r| r.begin <= pc && pc < r.end)
                .map(|r| r.location.clone())
                .unwrap_or(Location::OptimisedOut),
        }
    }
}

/// A parameter or a local variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum LocalKind {
    /// `DW_TAG_formal_parameter`.
    Parameter,
    /// `DW_TAG_variable` (a function static too: its location is an [`Location::Address`]).
    Variable,
}

/// A parameter or local variable of a function, an inlined call or a lexical block.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LocalVariable {
    /// Source name (`<anonymous>` for unnamed parameters).
    pub name: String,
    /// Parameter or variable.
    pub kind: LocalKind,
    /// Its type in [`super::Binary::types`].
    pub ty: TypeId,
    /// Where it is, by pc.
    pub locations: Locations,
    /// `DW_AT_artificial` (`this`, Rust's closure environments).
    pub artificial: bool,
}

/// What kind of scope a [`Block`] is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum BlockKind {
    /// The function's own body (block 0 of every [`Subprogram`]).
    Function,
    /// `DW_TAG_lexical_block`: `{ ... }` with its own declarations.
    Lexical,
    /// `DW_TAG_inlined_subroutine`: the body of a function inlined here.
    Inlined {
        /// The inlined function's source name (Rust: path).
        name: String,
        /// Its linkage name, when recorded.
        linkage_name: Option<String>,
        /// The name for display (demangled Rust path without hash; the source name for C).
        demangled: String,
        /// `DW_AT_call_line` of the call that was inlined (0 when unknown).
        call_line: u64,
    },
}

/// A scope of a function with code: the function body, a lexical block or an inlined call.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Block {
    /// The enclosing block (index in [`Subprogram::blocks`]); `None` for block 0.
    pub parent: Option<u32>,
    /// What it is.
    pub kind: BlockKind,
    /// Its code (link time). Empty for a lexical block DWARF gives no pcs: it then covers
    /// whatever its parent covers.
    pub ranges: Vec<(u64, u64)>,
    /// Parameters and variables declared in it, in DWARF order.
    pub variables: Vec<LocalVariable>,
}

/// A function with code, with what its frames hold.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Subprogram {
    /// Source name (Rust: path such as `mycrate::main`).
    pub name: String,
    /// Mangled name, when recorded.
    pub linkage_name: Option<String>,
    /// The name for display: the demangled linkage name without its hash for Rust, the source
    /// name otherwise.
    pub demangled: String,
    /// Its code (link time).
    pub ranges: Vec<(u64, u64)>,
    /// `DW_AT_frame_base` (`None` when absent: `DW_OP_fbreg` cannot then be resolved).
    pub frame_base: Option<Locations>,
    /// Its scopes in DWARF order (a parent before its children); block 0 is the body.
    pub blocks: Vec<Block>,
}

impl Block {
    fn contains(&self, pc: u64) -> bool {
        self.ranges.iter().any(|&(b, e)| b <= pc && pc < e)
    }
}

impl Subprogram {
    /// Indexes of the blocks that contain link-time `pc`, outermost first (block 0 first,
    /// then nested lexical blocks and inlined calls, innermost last). Empty when `pc` is not
    /// in the function.
    pub fn blocks_at(&self, pc: u64) -> Vec<u32> {
        if !self.ranges.iter().any(|&(b, e)| b <= pc && pc < e) {
            return Vec::new();
        }
        // In DWARF order a block's parent comes before it, so one pass decides each block
        // from its parent.
        let mut inside = vec![false; self.blocks.len()];
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let parent_in = match b.parent {
                None => true,
                Some(p) => inside.get(p as usize).copied().unwrap_or(false),
            };
            let here = parent_in && (i == 0 || b.contains(pc) || b.ranges.is_empty());
            inside[i] = here;
            if here {
                out.push(i as u32);
            }
        }
        out
    }

    /// The inlined calls containing `pc`, outermost first: the functions a debugger shows as
    /// inline frames above this one.
    pub fn inline_chain(&self, pc: u64) -> Vec<&Block> {
        self.blocks_at(pc)
            .into_iter()
            .map(|i| &self.blocks[i as usize])
            .filter(|b| matches!(b.kind, BlockKind::Inlined { .. }))
            .collect()
    }
}

/// The display form of a function name: a Rust mangled linkage name demangled without its
/// hash (`mycrate::main`), else `name`.
pub fn display_name(name: &str, linkage_name: Option<&str>) -> String {
    if let Some(l) = linkage_name {
        if let Ok(d) = rustc_demangle::try_demangle(l) {
            return format!("{d:#}");
        }
    }
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    name.to_owned()
}

/// Classifies one DWARF expression (see [`Location`]). `address_index` resolves
/// `DW_OP_addrx` operands.
pub(crate) fn classify<R: gimli::Reader>(
    expr: gimli::Expression<R>,
    encoding: gimli::Encoding,
    address_index: &dyn Fn(gimli::DebugAddrIndex<R::Offset>) -> Option<u64>,
) -> Location {
    use gimli::Operation as Op;
    let mut reader = expr.0;
    let mut ops: Vec<(u8, Op<R>)> = Vec::new();
    while !gimli::Reader::is_empty(&reader) {
        let code = gimli::Reader::read_u8(&mut reader.clone()).unwrap_or(0);
        match Op::parse(&mut reader, encoding) {
            Ok(op) => ops.push((code, op)),
            Err(e) => {
                return Location::Unsupported {
                    op: op_name(code),
                    ops: format!("malformed expression: {e}"),
                }
            }
        }
        if ops.len() > 64 {
            break;
        }
    }
    let names = || {
        ops.iter()
            .map(|(c, _)| op_name(*c))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let plain = |r: gimli::Register| r.0;
    match ops.as_slice() {
        [] => Location::OptimisedOut,
        [(_, Op::Register { register })] => Location::Register(plain(*register)),
        [(
            _,
            Op::RegisterOffset {
                register,
                offset,
                base_type,
            },
        )] if gimli::ReaderOffset::into_u64(base_type.0) == 0 => Location::RegisterOffset {
            register: plain(*register),
            offset: *offset,
        },
        [(_, Op::FrameOffset { offset })] => Location::FrameBaseOffset(*offset),
        [(_, Op::CallFrameCFA)] => Location::CfaOffset(0),
        [(_, Op::CallFrameCFA), (_, Op::PlusConstant { value })] => {
            Location::CfaOffset(*value as i64)
        }
        [(_, Op::Address { address })] => Location::Address(*address),
        [(_, Op::AddressIndex { index })] => match address_index(*index) {
            Some(a) => Location::Address(a),
            None => Location::Unsupported {
                op: "DW_OP_addrx".into(),
                ops: format!("{} (index not in .debug_addr)", names()),
            },
        },
        [(_, Op::UnsignedConstant { value }), (_, Op::StackValue)] => Location::Constant(*value),
        [(_, Op::SignedConstant { value }), (_, Op::StackValue)] => {
            Location::Constant(*value as u64)
        }
        [(
            _,
            Op::RegisterOffset {
                register,
                offset,
                base_type,
            },
        ), (_, Op::StackValue)]
            if gimli::ReaderOffset::into_u64(base_type.0) == 0 =>
        {
            Location::RegisterValue {
                register: plain(*register),
                offset: *offset,
            }
        }
        [(_, Op::ImplicitValue { data })] => match data.to_slice() {
            Ok(b) => Location::ImplicitValue(b.to_vec()),
            Err(_) => Location::Unsupported {
                op: "DW_OP_implicit_value".into(),
                ops: names(),
            },
        },
        _ => {
            let simple = |c: u8| {
                let op = gimli::DwOp(c);
                (gimli::DW_OP_lit0.0..=gimli::DW_OP_breg31.0).contains(&c)
                    || [
                        gimli::DW_OP_fbreg,
                        gimli::DW_OP_call_frame_cfa,
                        gimli::DW_OP_addr,
                        gimli::DW_OP_plus_uconst,
                        gimli::DW_OP_stack_value,
                        gimli::DW_OP_consts,
                        gimli::DW_OP_constu,
                        gimli::DW_OP_regx,
                        gimli::DW_OP_bregx,
                    ]
                    .contains(&op)
            };
            let first = ops
                .iter()
                .map(|(c, _)| *c)
                .find(|&c| !simple(c))
                .map(op_name)
                .unwrap_or_else(&names);
            Location::Unsupported {
                op: first,
                ops: names(),
            }
        }
    }
}

fn op_name(code: u8) -> String {
    match gimli::DwOp(code).static_string() {
        Some(s) => s.to_owned(),
        None => format!("DW_OP_{code:#04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gimli::{EndianSlice, LittleEndian};

    fn loc(bytes: &[u8]) -> Location {
        let enc = gimli::Encoding {
            format: gimli::Format::Dwarf32,
            version: 5,
            address_size: 8,
        };
        classify(
            gimli::Expression(EndianSlice::new(bytes, LittleEndian)),
            enc,
            &|_| None,
        )
    }

    #[test]
    fn classifies_the_shapes_compilers_emit() {
        assert_eq!(loc(&[]), Location::OptimisedOut);
        assert_eq!(loc(&[0x50 + 3]), Location::Register(3));
        // DW_OP_fbreg -20
        assert_eq!(loc(&[0x91, 0x6c]), Location::FrameBaseOffset(-20));
        assert_eq!(loc(&[0x9c]), Location::CfaOffset(0));
        // DW_OP_breg7 8
        assert_eq!(
            loc(&[0x77, 0x08]),
            Location::RegisterOffset {
                register: 7,
                offset: 8
            }
        );
        // DW_OP_lit5 DW_OP_stack_value
        assert_eq!(loc(&[0x35, 0x9f]), Location::Constant(5));
        // DW_OP_breg5 1 DW_OP_stack_value
        assert_eq!(
            loc(&[0x75, 0x01, 0x9f]),
            Location::RegisterValue {
                register: 5,
                offset: 1
            }
        );
        // DW_OP_entry_value(DW_OP_reg5) DW_OP_stack_value
        match loc(&[0xa3, 0x01, 0x55, 0x9f]) {
            Location::Unsupported { op, .. } => assert_eq!(op, "DW_OP_entry_value"),
            other => panic!("{other:?}"),
        }
        // DW_OP_reg0 DW_OP_piece 4
        match loc(&[0x50, 0x93, 0x04]) {
            Location::Unsupported { op, ops } => {
                assert_eq!(op, "DW_OP_piece");
                assert_eq!(ops, "DW_OP_reg0 DW_OP_piece");
            }
            other => panic!("{other:?}"),
        }
        // Truncated: DW_OP_addr with 3 bytes of its 8.
        assert!(matches!(
            loc(&[0x03, 1, 2, 3]),
            Location::Unsupported { .. }
        ));
    }

    #[test]
    fn blocks_nest_by_pc() {
        let v = |n: &str| LocalVariable {
            name: n.into(),
            kind: LocalKind::Variable,
            ty: TypeId(0),
            locations: Locations::Single(Location::FrameBaseOffset(-8)),
            artificial: false,
        };
        let s = Subprogram {
            name: "f".into(),
            linkage_name: None,
            demangled: "f".into(),
            ranges: vec![(0x100, 0x200)],
            frame_base: Some(Locations::Single(Location::CfaOffset(0))),
            blocks: vec![
                Block {
                    parent: None,
                    kind: BlockKind::Function,
                    ranges: vec![(0x100, 0x200)],
                    variables: vec![v("a")],
                },
                Block {
                    parent: Some(0),
                    kind: BlockKind::Lexical,
                    ranges: vec![(0x120, 0x140)],
                    variables: vec![v("b")],
                },
                Block {
                    parent: Some(1),
                    kind: BlockKind::Inlined {
                        name: "g".into(),
                        linkage_name: None,
                        demangled: "g".into(),
                        call_line: 3,
                    },
                    ranges: vec![(0x130, 0x138)],
                    variables: vec![],
                },
            ],
        };
        assert_eq!(s.blocks_at(0x110), vec![0]);
        assert_eq!(s.blocks_at(0x125), vec![0, 1]);
        assert_eq!(s.blocks_at(0x131), vec![0, 1, 2]);
        assert_eq!(s.inline_chain(0x131).len(), 1);
        assert!(s.blocks_at(0x300).is_empty());
    }
}
