//! What to compare in a value of a type: a flat list of leaves per type (scalars, character
//! arrays, raw ranges, arrays of a nested layout), computed once per type and cached, with
//! the excluded fields already cut out. Padding is whatever no leaf covers.

use std::collections::HashMap;
use std::rc::Rc;

use super::Exclusions;
use crate::debuginfo::{Encoding, Type, TypeId, Types};

/// Limit on type nesting, against malformed DWARF (a value cannot contain itself).
const MAX_DEPTH: u32 = 64;

/// How a leaf is compared and rendered.
#[derive(Debug)]
pub(super) enum Kind {
    /// A base type, enum or pointer of `size` bytes; `ty` has typedefs stripped.
    Scalar { ty: TypeId, size: u64 },
    /// A bit-field of an integer, enum or bool type `ty`.
    BitField {
        ty: TypeId,
        bit_offset: u8,
        bits: u64,
    },
    /// A character array of `len` bytes, rendered as a string.
    Chars { len: u64 },
    /// Bytes without a usable type (unions, Rust enums, unknown types).
    Raw { size: u64 },
    /// `count` elements `stride` bytes apart, each laid out as `elem`.
    Array {
        count: u64,
        stride: u64,
        elem: Rc<Layout>,
    },
    /// A flexible array member: as many elements as the object holds past the leaf.
    Flexible { stride: u64, elem: Rc<Layout> },
    /// A flexible array member of characters: the rest of the object, as a string.
    FlexibleChars,
    /// Excluded state (`size` bytes, or to the end of the object when `None`): not compared,
    /// and what it points to is not expected back.
    Excluded { size: Option<u64> },
}

/// One leaf: what lies at `offset` from the start of the value.
#[derive(Debug)]
pub(super) struct Leaf {
    pub offset: u64,
    /// Field path from the value (`.name`, `.inner.x`, `` for the value itself).
    pub path: Box<str>,
    pub kind: Kind,
}

/// The leaves of one type, in member order.
#[derive(Debug, Default)]
pub(super) struct Layout {
    pub leaves: Vec<Leaf>,
    /// Whether some leaf (at any depth) is flexible, so the value extends past its type's
    /// size.
    pub flexible: bool,
}

/// The cache of layouts of one comparison.
pub(super) struct Layouts<'a> {
    types: &'a Types,
    exclude: &'a Exclusions,
    cache: HashMap<TypeId, Rc<Layout>>,
    /// What a heap object of each type (by unstripped id) needs, filled as met: a million
    /// objects of a handful of types look it up a million times.
    objects: Vec<Option<ObjectType>>,
}

/// How a heap object of one type is compared.
#[derive(Clone, Debug)]
pub(super) struct ObjectType {
    /// Element size (0 when unknown).
    pub esize: u64,
    /// A character type: the object is compared and shown as a string.
    pub chars: bool,
    pub layout: Rc<Layout>,
}

/// Whether a 1-byte type is a character (compared and shown as a string in arrays).
pub(super) fn is_char(types: &Types, ty: TypeId) -> bool {
    let id = types.strip_typedefs_cv(ty);
    matches!(
        types.get(id),
        Type::Base {
            encoding: Encoding::SignedChar | Encoding::UnsignedChar,
            size: 1,
            ..
        }
    )
}

impl<'a> Layouts<'a> {
    pub fn new(types: &'a Types, exclude: &'a Exclusions) -> Self {
        Layouts {
            types,
            exclude,
            cache: HashMap::new(),
            objects: vec![None; types.len()],
        }
    }

    /// How to compare a heap object of type `ty`.
    pub fn object(&mut self, ty: TypeId) -> ObjectType {
        if let Some(Some(t)) = self.objects.get(ty.index()) {
            return t.clone();
        }
        let t = ObjectType {
            esize: self.types.byte_size(ty).unwrap_or(0),
            chars: is_char(self.types, ty),
            layout: self.of(ty),
        };
        if let Some(slot) = self.objects.get_mut(ty.index()) {
            *slot = Some(t.clone());
        }
        t
    }

    /// The type with typedefs, qualifiers and declarations looked through.
    pub fn strip(&self, ty: TypeId) -> TypeId {
        self.types.definition_of(self.types.strip_typedefs_cv(ty))
    }

    /// The layout of a value of type `ty`.
    pub fn of(&mut self, ty: TypeId) -> Rc<Layout> {
        let id = self.strip(ty);
        if let Some(l) = self.cache.get(&id) {
            return l.clone();
        }
        let mut l = Layout::default();
        self.add(id, 0, String::new(), &mut l, 0);
        let l = Rc::new(l);
        self.cache.insert(id, l.clone());
        l
    }

    /// The layout of a global of type `ty` whose outermost array keeps only `keep` elements
    /// (a drop rule shrank it); the rest is excluded.
    pub fn truncated(&mut self, ty: TypeId, keep: u64) -> Rc<Layout> {
        let id = self.strip(ty);
        let mut l = Layout::default();
        match self.types.get(id).clone() {
            Type::Array { element, dims } => {
                self.array(element, &dims, 0, String::new(), Some(keep), &mut l, 0)
            }
            _ => self.add(id, 0, String::new(), &mut l, 0),
        }
        Rc::new(l)
    }

    fn add(&mut self, ty: TypeId, offset: u64, path: String, out: &mut Layout, depth: u32) {
        if depth > MAX_DEPTH {
            return;
        }
        let id = self.strip(ty);
        let leaf = |kind| Leaf {
            offset,
            path: path.clone().into_boxed_str(),
            kind,
        };
        match self.types.get(id) {
            Type::Base { size, .. } | Type::Pointer { size, .. } => {
                out.leaves.push(leaf(Kind::Scalar {
                    ty: id,
                    size: *size,
                }))
            }
            Type::Enum(e) => out.leaves.push(leaf(Kind::Scalar {
                ty: id,
                size: e.size.unwrap_or(4),
            })),
            Type::Union(c) => out.leaves.push(leaf(Kind::Raw {
                size: c.size.unwrap_or(0),
            })),
            Type::VariantEnum(v) => out.leaves.push(leaf(Kind::Raw {
                size: v.size.unwrap_or(0),
            })),
            Type::Struct(c) => {
                let c = c.clone();
                let n = c.members.len();
                for (i, m) in c.members.iter().enumerate() {
                    let mpath = match &m.name {
                        Some(name) => format!("{path}.{name}"),
                        None => path.clone(),
                    };
                    let moff = offset + m.offset;
                    let mty = self.types.strip_typedefs_cv(m.ty);
                    let flexible = i + 1 == n
                        && matches!(self.types.get(mty), Type::Array { dims, .. }
                            if dims.first() == Some(&None));
                    if self.exclude.field_excluded(id, i) {
                        if m.bit_field.is_none() {
                            let size = if flexible {
                                None
                            } else {
                                Some(self.types.byte_size(m.ty).unwrap_or(0))
                            };
                            out.leaves.push(Leaf {
                                offset: moff,
                                path: mpath.into_boxed_str(),
                                kind: Kind::Excluded { size },
                            });
                        }
                        continue;
                    }
                    if let Some(bf) = m.bit_field {
                        out.leaves.push(Leaf {
                            offset: moff,
                            path: mpath.into_boxed_str(),
                            kind: Kind::BitField {
                                ty: self.strip(m.ty),
                                bit_offset: bf.bit_offset,
                                bits: bf.bit_size,
                            },
                        });
                        continue;
                    }
                    if flexible {
                        let Type::Array { element, dims } = self.types.get(mty).clone() else {
                            unreachable!("checked above")
                        };
                        let inner: u64 = dims[1..].iter().map(|d| d.unwrap_or(0)).product();
                        let stride = self.types.byte_size(element).unwrap_or(0) * inner;
                        if stride == 1 && dims.len() == 1 && is_char(self.types, element) {
                            out.leaves.push(Leaf {
                                offset: moff,
                                path: mpath.into_boxed_str(),
                                kind: Kind::FlexibleChars,
                            });
                            out.flexible = true;
                        } else if stride > 0 {
                            let mut el = Layout::default();
                            self.array_elem(element, &dims[1..], &mut el, depth + 1);
                            out.leaves.push(Leaf {
                                offset: moff,
                                path: mpath.into_boxed_str(),
                                kind: Kind::Flexible {
                                    stride,
                                    elem: Rc::new(el),
                                },
                            });
                            out.flexible = true;
                        }
                        continue;
                    }
                    match self.exclude.field_tail(id, i) {
                        Some(keep) => {
                            let Type::Array { element, dims } = self.types.get(mty).clone() else {
                                self.add(m.ty, moff, mpath, out, depth + 1);
                                continue;
                            };
                            self.array(element, &dims, moff, mpath, Some(keep), out, depth + 1);
                        }
                        None => self.add(m.ty, moff, mpath, out, depth + 1),
                    }
                }
            }
            Type::Array { element, dims } => {
                let (element, dims) = (*element, dims.clone());
                self.array(element, &dims, offset, path, None, out, depth + 1);
            }
            Type::Function { .. }
            | Type::Void
            | Type::Unknown { .. }
            | Type::Typedef { .. }
            | Type::Const(_)
            | Type::Volatile(_) => {
                if let Some(size) = self.types.byte_size(id).filter(|&s| s > 0) {
                    out.leaves.push(leaf(Kind::Raw { size }));
                }
            }
        }
    }

    /// The leaves of an array of `dims` of `element` at `offset`, keeping only `keep`
    /// elements of the outermost dimension when given (the rest excluded).
    #[allow(clippy::too_many_arguments)]
    fn array(
        &mut self,
        element: TypeId,
        dims: &[Option<u64>],
        offset: u64,
        path: String,
        keep: Option<u64>,
        out: &mut Layout,
        depth: u32,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        let Some((first, inner)) = dims.split_first() else {
            return self.add(element, offset, path, out, depth + 1);
        };
        let count = first.unwrap_or(0);
        let inner_n: u64 = inner.iter().map(|d| d.unwrap_or(0)).product();
        let stride = self.types.byte_size(element).unwrap_or(0) * inner_n;
        if count == 0 || stride == 0 {
            return;
        }
        let kept = keep.map_or(count, |k| k.min(count));
        if kept > 0 {
            if inner.is_empty() && is_char(self.types, element) {
                out.leaves.push(Leaf {
                    offset,
                    path: path.clone().into_boxed_str(),
                    kind: Kind::Chars { len: kept },
                });
            } else {
                let elem = if inner.is_empty() {
                    self.of(element)
                } else {
                    let mut el = Layout::default();
                    self.array(element, inner, 0, String::new(), None, &mut el, depth + 1);
                    Rc::new(el)
                };
                out.flexible |= elem.flexible;
                out.leaves.push(Leaf {
                    offset,
                    path: path.clone().into_boxed_str(),
                    kind: Kind::Array {
                        count: kept,
                        stride,
                        elem,
                    },
                });
            }
        }
        if kept < count {
            out.leaves.push(Leaf {
                offset: offset + kept * stride,
                path: format!("{path}[{kept}..{count}]").into_boxed_str(),
                kind: Kind::Excluded {
                    size: Some((count - kept) * stride),
                },
            });
        }
    }

    /// The layout of one element of an array of `dims` of `element`, into `out`.
    fn array_elem(&mut self, element: TypeId, dims: &[Option<u64>], out: &mut Layout, depth: u32) {
        if dims.is_empty() {
            self.add(element, 0, String::new(), out, depth);
        } else {
            self.array(element, dims, 0, String::new(), None, out, depth);
        }
    }
}
