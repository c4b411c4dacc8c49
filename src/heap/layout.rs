//! The layout of glibc malloc's data structures, read from libc's DWARF.
//!
//! Offsets and sizes of `struct malloc_state`, `struct malloc_chunk`, `heap_info`,
//! `struct malloc_par` and the tcache structures all come from the debug information of the
//! very libc a process runs ([`MallocLayout::from_binary`]), never from constants: a libc
//! built with other options or another version moves them. What DWARF cannot say — the values
//! of `#define`s in `malloc/malloc.c` such as the size-field flag bits — is kept in named
//! constants below, each citing its definition in glibc 2.36.

use std::path::Path;

use crate::debuginfo::{Binary, Composite, Type, TypeId};

use super::error::{HeapError, Result};

/// `PREV_INUSE` (malloc.c): the chunk *before* this one is in use.
pub const PREV_INUSE: u64 = 0x1;
/// `IS_MMAPPED` (malloc.c): the chunk was obtained with its own `mmap`.
pub const IS_MMAPPED: u64 = 0x2;
/// `NON_MAIN_ARENA` (malloc.c): the chunk belongs to a thread arena.
pub const NON_MAIN_ARENA: u64 = 0x4;
/// `SIZE_BITS` (malloc.c): the flag bits of a chunk's size field.
pub const SIZE_BITS: u64 = PREV_INUSE | IS_MMAPPED | NON_MAIN_ARENA;
/// `NONCONTIGUOUS_BIT` (malloc.c): `malloc_state.flags` bit set when an arena's memory is not
/// one contiguous region (the main arena after `sbrk` failed and it fell back to `mmap`).
pub const NONCONTIGUOUS_BIT: u64 = 0x2;
/// `MALLOC_ALIGNMENT` on x86_64 (sysdeps/generic/malloc-alignment.h: the larger of
/// `2 * SIZE_SZ` and `__alignof__ (long double)`, both 16). Checked against `heap_info`'s
/// padding, which glibc sizes so that `sizeof (heap_info) + 2 * SIZE_SZ` is a multiple of it.
pub const MALLOC_ALIGNMENT: u64 = 16;
/// `DEFAULT_MMAP_THRESHOLD_MAX` divided by `sizeof (long)` on 64-bit targets (malloc.c:
/// `4 * 1024 * 1024 * sizeof (long)`); arena.c's `HEAP_MAX_SIZE` is twice the threshold.
const MMAP_THRESHOLD_MAX_PER_LONG: u64 = 4 * 1024 * 1024;

/// A scalar field: where it is and how many bytes it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    /// Byte offset in its structure.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// An array field (one dimension).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArrayField {
    /// Byte offset of element 0 in its structure.
    pub offset: u64,
    /// Number of elements.
    pub len: u64,
    /// Size of one element.
    pub stride: u64,
}

impl ArrayField {
    /// Offset of element `i` in the structure.
    pub fn element(&self, i: u64) -> u64 {
        self.offset + i * self.stride
    }
}

/// The boundary tags of a chunk (`struct malloc_chunk`) and the sizes derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkLayout {
    /// `SIZE_SZ`: size of `INTERNAL_SIZE_T` (`size_t`), the size field's width.
    pub size_sz: u64,
    /// `mchunk_prev_size`: size of the previous chunk, valid only while that one is free.
    pub prev_size: Field,
    /// `mchunk_size`: this chunk's size with the flag bits in its low 3 bits.
    pub size: Field,
    /// `fd`: forward link while free; the user data starts here (`chunk2mem`), so its offset
    /// is `CHUNK_HDR_SZ`.
    pub fd: Field,
    /// `bk`: backward link while free.
    pub bk: Field,
    /// `MINSIZE`: the smallest chunk, `offsetof (struct malloc_chunk, fd_nextsize)` rounded up
    /// to [`MALLOC_ALIGNMENT`].
    pub min_size: u64,
    /// `MALLOC_ALIGNMENT`.
    pub alignment: u64,
}

impl ChunkLayout {
    /// `CHUNK_HDR_SZ`: from a chunk's address to the pointer `malloc` returns.
    pub fn header_size(&self) -> u64 {
        self.fd.offset
    }

    /// The chunk header every glibc since 2.0 uses on 64-bit targets: two `size_t` words
    /// (`prev_size`, `size`) before the user data, 16-byte alignment, 32-byte minimum. Used
    /// only to walk a heap without libc's debug info, which is then marked approximate; with
    /// debug info the layout comes from DWARF.
    pub fn boundary_tags_64() -> ChunkLayout {
        ChunkLayout {
            size_sz: 8,
            prev_size: Field { offset: 0, size: 8 },
            size: Field { offset: 8, size: 8 },
            fd: Field {
                offset: 16,
                size: 8,
            },
            bk: Field {
                offset: 24,
                size: 8,
            },
            min_size: 32,
            alignment: MALLOC_ALIGNMENT,
        }
    }

    /// Usable bytes of an in-use arena chunk of size `chunk_size`: up to the next chunk's size
    /// field, since the next chunk's `prev_size` belongs to this one while it is in use
    /// (`memsize` in malloc.c, without memory tagging).
    pub fn usable_in_arena(&self, chunk_size: u64) -> u64 {
        chunk_size - self.header_size() + self.size_sz
    }

    /// Usable bytes of an mmapped chunk of size `chunk_size` (no next chunk to borrow from).
    pub fn usable_mmapped(&self, chunk_size: u64) -> u64 {
        chunk_size - self.header_size()
    }
}

/// `struct malloc_state`: an arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // Fields are named after the C members.
pub struct StateLayout {
    /// `sizeof (struct malloc_state)`.
    pub size: u64,
    pub mutex: Field,
    pub flags: Field,
    pub have_fastchunks: Field,
    pub fastbins_y: ArrayField,
    pub top: Field,
    pub last_remainder: Field,
    pub bins: ArrayField,
    pub binmap: ArrayField,
    pub next: Field,
    pub next_free: Field,
    pub attached_threads: Field,
    pub system_mem: Field,
    pub max_system_mem: Field,
}

/// `heap_info` (arena.c): the header of each heap of a thread arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeapInfoLayout {
    /// `sizeof (heap_info)`, padding included.
    pub size: u64,
    /// `ar_ptr`: the arena owning the heap.
    pub ar_ptr: Field,
    /// `prev`: the previous (older) heap of the same arena.
    pub prev: Field,
    /// `size`: bytes of the heap in use (from the heap's start).
    pub heap_size: Field,
    /// `mprotect_size`: bytes made readable and writable.
    pub mprotect_size: Field,
}

/// `struct malloc_par` (`mp_`): malloc's global parameters and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // Fields are named after the C members.
pub struct ParLayout {
    /// `sizeof (struct malloc_par)`.
    pub size: u64,
    pub mmap_threshold: Field,
    pub n_mmaps: Field,
    pub mmapped_mem: Field,
    pub sbrk_base: Field,
    /// Absent when glibc was built without tcache.
    pub tcache_bins: Option<Field>,
    pub tcache_max_bytes: Option<Field>,
    pub tcache_count: Option<Field>,
    /// `hp_pagesize` (glibc 2.35+, the `glibc.malloc.hugetlb` tunable): when set, thread heaps
    /// are `4 * hp_pagesize` apart instead of `HEAP_MAX_SIZE`.
    pub hp_pagesize: Option<Field>,
}

/// `tcache_entry` and `tcache_perthread_struct`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcacheLayout {
    /// `tcache_entry.next`: the mangled link, at the user pointer.
    pub next: Field,
    /// `tcache_entry.key`: equals `tcache_key` while the chunk sits in a tcache.
    pub key: Field,
    /// `sizeof (tcache_perthread_struct)`.
    pub perthread_size: u64,
    /// `tcache_perthread_struct.counts`.
    pub counts: ArrayField,
    /// `tcache_perthread_struct.entries`.
    pub entries: ArrayField,
}

/// Everything about glibc malloc's data structures that the heap walk reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MallocLayout {
    /// Chunk headers.
    pub chunk: ChunkLayout,
    /// Arenas.
    pub state: StateLayout,
    /// Thread-arena heap headers.
    pub heap_info: HeapInfoLayout,
    /// `mp_`.
    pub par: ParLayout,
    /// The tcache, absent in a glibc built without it.
    pub tcache: Option<TcacheLayout>,
    /// `HEAP_MAX_SIZE` (arena.c: `2 * DEFAULT_MMAP_THRESHOLD_MAX`, with
    /// `DEFAULT_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * sizeof (long)` on 64-bit targets, so
    /// 64 MiB on x86_64): thread heaps are aligned to it unless `mp_.hp_pagesize` is set.
    /// `sizeof (long)` is read from DWARF.
    pub heap_max_size: u64,
}

impl MallocLayout {
    /// Reads the layout from the DWARF of a libc (`libc` names it in errors).
    ///
    /// Fails with [`HeapError::Unsupported`] naming the first structure or member missing, or
    /// a size that contradicts what the walk assumes (64-bit `size_t`, 16-byte alignment).
    pub fn from_binary(bin: &Binary) -> Result<MallocLayout> {
        let d = Dwarf {
            bin,
            libc: bin.path(),
        };
        let chunk_s = d.composite(&["malloc_chunk"])?;
        let size = d.field(chunk_s, "malloc_chunk", "mchunk_size")?;
        let fd_nextsize = d.field(chunk_s, "malloc_chunk", "fd_nextsize")?;
        let align_mask = MALLOC_ALIGNMENT - 1;
        let chunk = ChunkLayout {
            size_sz: size.size,
            prev_size: d.field(chunk_s, "malloc_chunk", "mchunk_prev_size")?,
            size,
            fd: d.field(chunk_s, "malloc_chunk", "fd")?,
            bk: d.field(chunk_s, "malloc_chunk", "bk")?,
            min_size: (fd_nextsize.offset + align_mask) & !align_mask,
            alignment: MALLOC_ALIGNMENT,
        };
        if chunk.size_sz != 8 || chunk.fd.offset != 2 * chunk.size_sz {
            return Err(d.unsupported(format!(
                "struct malloc_chunk has a {}-byte size field and user data at offset {}; \
                 expected 8 and 16",
                chunk.size_sz, chunk.fd.offset
            )));
        }

        let st = d.composite(&["malloc_state"])?;
        let n = "malloc_state";
        let state = StateLayout {
            size: d.size_of(st, n)?,
            mutex: d.field(st, n, "mutex")?,
            flags: d.field(st, n, "flags")?,
            have_fastchunks: d.field(st, n, "have_fastchunks")?,
            fastbins_y: d.array(st, n, "fastbinsY")?,
            top: d.field(st, n, "top")?,
            last_remainder: d.field(st, n, "last_remainder")?,
            bins: d.array(st, n, "bins")?,
            binmap: d.array(st, n, "binmap")?,
            next: d.field(st, n, "next")?,
            next_free: d.field(st, n, "next_free")?,
            attached_threads: d.field(st, n, "attached_threads")?,
            system_mem: d.field(st, n, "system_mem")?,
            max_system_mem: d.field(st, n, "max_system_mem")?,
        };

        let hi = d.composite(&["_heap_info", "heap_info"])?;
        let n = "heap_info";
        let heap_info = HeapInfoLayout {
            size: d.size_of(hi, n)?,
            ar_ptr: d.field(hi, n, "ar_ptr")?,
            prev: d.field(hi, n, "prev")?,
            heap_size: d.field(hi, n, "size")?,
            mprotect_size: d.field(hi, n, "mprotect_size")?,
        };
        if !(heap_info.size + chunk.header_size()).is_multiple_of(MALLOC_ALIGNMENT) {
            return Err(d.unsupported(format!(
                "sizeof (heap_info) is {}, which with the {}-byte chunk header is not a \
                 multiple of the assumed MALLOC_ALIGNMENT {MALLOC_ALIGNMENT}",
                heap_info.size,
                chunk.header_size()
            )));
        }

        let mp = d.composite(&["malloc_par"])?;
        let n = "malloc_par";
        let par = ParLayout {
            size: d.size_of(mp, n)?,
            mmap_threshold: d.field(mp, n, "mmap_threshold")?,
            n_mmaps: d.field(mp, n, "n_mmaps")?,
            mmapped_mem: d.field(mp, n, "mmapped_mem")?,
            sbrk_base: d.field(mp, n, "sbrk_base")?,
            tcache_bins: d.opt_field(mp, "tcache_bins"),
            tcache_max_bytes: d.opt_field(mp, "tcache_max_bytes"),
            tcache_count: d.opt_field(mp, "tcache_count"),
            hp_pagesize: d.opt_field(mp, "hp_pagesize"),
        };

        let tcache = match (
            d.composite(&["tcache_entry"]),
            d.composite(&["tcache_perthread_struct"]),
        ) {
            (Ok(e), Ok(p)) => Some(TcacheLayout {
                next: d.field(e, "tcache_entry", "next")?,
                key: d.field(e, "tcache_entry", "key")?,
                perthread_size: d.size_of(p, "tcache_perthread_struct")?,
                counts: d.array(p, "tcache_perthread_struct", "counts")?,
                entries: d.array(p, "tcache_perthread_struct", "entries")?,
            }),
            _ => None,
        };
        if let Some(t) = &tcache {
            // The walk reads a chunk's first MINSIZE bytes only.
            for (name, f) in [("key", t.key), ("next", t.next)] {
                if f.size != 8 || f.offset + f.size > chunk.min_size - chunk.header_size() {
                    return Err(d.unsupported(format!(
                        "tcache_entry.{name} is {} bytes at offset {}, not a word inside the \
                         smallest chunk",
                        f.size, f.offset
                    )));
                }
            }
        }

        let long = bin
            .types()
            .named("long int")
            .iter()
            .find_map(|&t| match bin.ty(t) {
                Type::Base { size, .. } => Some(*size),
                _ => None,
            })
            .unwrap_or(chunk.size_sz);
        Ok(MallocLayout {
            chunk,
            state,
            heap_info,
            par,
            tcache,
            heap_max_size: 2 * MMAP_THRESHOLD_MAX_PER_LONG * long,
        })
    }

    /// The layout of Debian 12's glibc 2.36 on x86_64, as its DWARF gives it, for building
    /// synthetic heaps in tests ([`super::synthetic`]). Never used on a live process; a test
    /// checks it against the installed libc's DWARF.
    pub fn reference_glibc_2_36_x86_64() -> MallocLayout {
        let f = |offset, size| Field { offset, size };
        let a = |offset, len, stride| ArrayField {
            offset,
            len,
            stride,
        };
        MallocLayout {
            chunk: ChunkLayout::boundary_tags_64(),
            state: StateLayout {
                size: 2200,
                mutex: f(0, 4),
                flags: f(4, 4),
                have_fastchunks: f(8, 4),
                fastbins_y: a(16, 10, 8),
                top: f(96, 8),
                last_remainder: f(104, 8),
                bins: a(112, 254, 8),
                binmap: a(2144, 4, 4),
                next: f(2160, 8),
                next_free: f(2168, 8),
                attached_threads: f(2176, 8),
                system_mem: f(2184, 8),
                max_system_mem: f(2192, 8),
            },
            heap_info: HeapInfoLayout {
                size: 48,
                ar_ptr: f(0, 8),
                prev: f(8, 8),
                heap_size: f(16, 8),
                mprotect_size: f(24, 8),
            },
            par: ParLayout {
                size: 136,
                mmap_threshold: f(16, 8),
                n_mmaps: f(60, 4),
                mmapped_mem: f(80, 8),
                sbrk_base: f(96, 8),
                tcache_bins: Some(f(104, 8)),
                tcache_max_bytes: Some(f(112, 8)),
                tcache_count: Some(f(120, 8)),
                hp_pagesize: Some(f(48, 8)),
            },
            tcache: Some(TcacheLayout {
                next: f(0, 8),
                key: f(8, 8),
                perthread_size: 640,
                counts: a(0, 64, 2),
                entries: a(128, 64, 8),
            }),
            heap_max_size: 64 << 20,
        }
    }
}

/// Lookups in one binary's types, with errors naming the libc.
struct Dwarf<'a> {
    bin: &'a Binary,
    libc: &'a Path,
}

impl<'a> Dwarf<'a> {
    fn unsupported(&self, what: String) -> HeapError {
        HeapError::Unsupported {
            libc: self.libc.to_owned(),
            what,
        }
    }

    /// The definition of the struct whose tag or typedef name is one of `names`.
    fn composite(&self, names: &[&str]) -> Result<&'a Composite> {
        let types = self.bin.types();
        for name in names {
            for &id in types.named(name) {
                let id = types.definition_of(types.strip_typedefs_cv(id));
                if let Type::Struct(c) = types.get(id) {
                    if !c.declaration {
                        return Ok(c);
                    }
                }
            }
        }
        Err(self.unsupported(format!(
            "its debug info has no definition of struct {}",
            names[0]
        )))
    }

    fn size_of(&self, c: &Composite, sname: &str) -> Result<u64> {
        c.size
            .ok_or_else(|| self.unsupported(format!("struct {sname} has no size")))
    }

    fn member(&self, c: &'a Composite, name: &str) -> Option<(u64, TypeId)> {
        c.members
            .iter()
            .find(|m| m.name.as_deref() == Some(name) && m.bit_field.is_none())
            .map(|m| (m.offset, m.ty))
    }

    fn opt_field(&self, c: &'a Composite, name: &str) -> Option<Field> {
        let (offset, ty) = self.member(c, name)?;
        Some(Field {
            offset,
            size: self.bin.byte_size(ty)?,
        })
    }

    fn field(&self, c: &'a Composite, sname: &str, name: &str) -> Result<Field> {
        self.opt_field(c, name)
            .ok_or_else(|| self.unsupported(format!("struct {sname} has no sized member `{name}`")))
    }

    fn array(&self, c: &'a Composite, sname: &str, name: &str) -> Result<ArrayField> {
        let bad = || self.unsupported(format!("struct {sname} has no array member `{name}`"));
        let (offset, ty) = self.member(c, name).ok_or_else(bad)?;
        let types = self.bin.types();
        match types.get(types.strip_typedefs_cv(ty)) {
            Type::Array { element, dims } if dims.len() == 1 => Ok(ArrayField {
                offset,
                len: dims[0].ok_or_else(bad)?,
                stride: types.byte_size(*element).ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        }
    }
}
