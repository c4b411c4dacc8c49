//! Where the pointers of a type are: a flat list of slots per type, computed once and cached,
//! so that walking a million objects of the same type does not walk its DWARF a million times.

use crate::debuginfo::{Encoding, FatPointer, Type, TypeId, Types};

/// A location inside a value that may hold an address.
#[derive(Clone, Debug)]
pub(crate) enum Slot {
    /// A data pointer; `target` `None` for `void *`.
    Pointer {
        offset: u64,
        target: Option<TypeId>,
        path: String,
    },
    /// A pointer to a function.
    FnPointer { offset: u64, path: String },
    /// A Rust fat pointer (`&[T]`, `&str`, `&dyn Trait`).
    Fat {
        offset: u64,
        fat: FatPointer,
        path: String,
    },
    /// A union one of whose members holds a pointer: scanned conservatively.
    Union {
        offset: u64,
        size: u64,
        ty: String,
        path: String,
    },
    /// A pointer-sized integer: it may hold an address.
    Integer {
        offset: u64,
        ty: String,
        path: String,
    },
    /// A Rust enum with data: which variant's slots apply depends on its discriminant.
    Variant {
        offset: u64,
        ty: TypeId,
        path: String,
    },
    /// A flexible array member: as many elements as the object holds past `offset`.
    Flexible {
        offset: u64,
        element: TypeId,
        path: String,
    },
}

/// The slots of one type, in offset order of discovery.
#[derive(Clone, Debug, Default)]
pub(crate) struct Layout {
    pub slots: Vec<Slot>,
}

/// Computes the layout of `ty`. `prefix` is the field path so far.
pub(crate) fn layout_of(types: &Types, ty: TypeId) -> Layout {
    let mut l = Layout::default();
    add(types, ty, 0, String::new(), &mut l.slots, 0);
    l
}

fn add(types: &Types, ty: TypeId, offset: u64, path: String, out: &mut Vec<Slot>, depth: u32) {
    if depth > 64 {
        return; // malformed DWARF: a value cannot contain itself
    }
    let id = types.definition_of(types.strip_typedefs_cv(ty));
    match types.get(id) {
        Type::Pointer { target, .. } => {
            let target = target.map(|t| types.definition_of(types.strip_typedefs_cv(t)));
            match target.map(|t| types.get(t)) {
                Some(Type::Function { .. }) => out.push(Slot::FnPointer { offset, path }),
                _ => out.push(Slot::Pointer {
                    offset,
                    target,
                    path,
                }),
            }
        }
        Type::Base { encoding, size, .. } => {
            if *size == 8 && matches!(encoding, Encoding::Signed | Encoding::Unsigned) {
                out.push(Slot::Integer {
                    offset,
                    ty: types.name(ty),
                    path,
                });
            }
        }
        Type::Struct(c) => {
            if let Some(fat) = types.fat_pointer(id) {
                out.push(Slot::Fat { offset, fat, path });
                return;
            }
            let n = c.members.len();
            for (i, m) in c.members.iter().enumerate() {
                if m.bit_field.is_some() {
                    continue;
                }
                let mpath = match &m.name {
                    Some(name) => format!("{path}.{name}"),
                    None => path.clone(),
                };
                // A last member of unknown length is a flexible array member.
                if let Type::Array { element, dims } = types.get(types.strip_typedefs_cv(m.ty)) {
                    if i + 1 == n && dims.first() == Some(&None) {
                        if has_pointers(types, *element, 0) {
                            out.push(Slot::Flexible {
                                offset: offset + m.offset,
                                element: *element,
                                path: mpath,
                            });
                        }
                        continue;
                    }
                }
                add(types, m.ty, offset + m.offset, mpath, out, depth + 1);
            }
        }
        Type::Union(c) => {
            if c.members.iter().any(|m| has_pointers(types, m.ty, 0)) {
                out.push(Slot::Union {
                    offset,
                    size: c.size.unwrap_or(0),
                    ty: types.name(id),
                    path,
                });
            }
        }
        Type::VariantEnum(_) => {
            if has_pointers(types, id, 0) {
                out.push(Slot::Variant {
                    offset,
                    ty: id,
                    path,
                });
            }
        }
        Type::Array { element, dims } => {
            if !has_pointers(types, *element, 0) {
                return;
            }
            let Some(esize) = types.byte_size(*element) else {
                return;
            };
            // All dimensions flattened: [i][j] paths for multi-dimensional arrays.
            let counts: Vec<u64> = dims.iter().map(|d| d.unwrap_or(0)).collect();
            let total: u64 = counts.iter().product();
            for flat in 0..total {
                let mut idx = Vec::with_capacity(counts.len());
                let mut rest = flat;
                for &c in counts.iter().rev() {
                    idx.push(rest % c);
                    rest /= c;
                }
                idx.reverse();
                let ipath: String = idx.iter().map(|i| format!("[{i}]")).collect();
                add(
                    types,
                    *element,
                    offset + flat * esize,
                    format!("{path}{ipath}"),
                    out,
                    depth + 1,
                );
            }
        }
        Type::Enum(_) | Type::Function { .. } | Type::Void | Type::Unknown { .. } => {}
        Type::Typedef { .. } | Type::Const(_) | Type::Volatile(_) => unreachable!("stripped"),
    }
}

/// Whether a value of type `ty` can hold an address (a pointer, or a pointer-sized integer).
pub(crate) fn has_pointers(types: &Types, ty: TypeId, depth: u32) -> bool {
    if depth > 64 {
        return false;
    }
    let id = types.definition_of(types.strip_typedefs_cv(ty));
    match types.get(id) {
        Type::Pointer { .. } => true,
        Type::Base { encoding, size, .. } => {
            *size == 8 && matches!(encoding, Encoding::Signed | Encoding::Unsigned)
        }
        Type::Struct(c) | Type::Union(c) => c
            .members
            .iter()
            .any(|m| m.bit_field.is_none() && has_pointers(types, m.ty, depth + 1)),
        Type::VariantEnum(v) => v
            .variants
            .iter()
            .any(|v| has_pointers(types, v.ty, depth + 1)),
        Type::Array { element, .. } => has_pointers(types, *element, depth + 1),
        _ => false,
    }
}
