//! Planning a transfer between versions whose types changed, driven by a [`Mapping`].
//!
//! Each object's bytes are rebuilt in the new layout: globals start from the target's own
//! initial value (so what only the new version has keeps its initial value) and heap objects
//! from zeroes; then every mapped field is converted into place (copied, integers resized with
//! a check that the value fits, floats resized, enums by enumerator name, arrays element by
//! element, structs field by field). Pointer words move with their fields: every copied range
//! is recorded, and each edge's offset is translated through those ranges; a pointer whose
//! field was dropped goes with it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use tracer::RemoteAddr;

use super::{
    displaced, object_name, resolve_external, Destination, ObjectIndex, Place, Plan, PlannedObject,
    TransferError, Value,
};
use crate::debuginfo::{Binary, Type};
use crate::mapping::rules::Rules;
use crate::mapping::{Conversion, Mapping};
use crate::state::{ObjectId, ObjectKind, StateGraph, Target};

/// A range of an old object that was copied into the new one: (old start, length, new start).
type Move = (u64, u64, u64);

/// Plans the transfer of `src` (captured from `src_bin`) into `dst` under `mapping` (built
/// from `src_bin` to `dst.binary`). Fails closed with the path of the first value that
/// cannot be converted: a refused difference, a value that does not fit its narrowed type, an
/// enumerator that no longer exists, a pointer that cannot be named in the target.
pub fn plan_mapped(
    src: &StateGraph,
    src_bin: &Binary,
    dst: &Destination<'_>,
    mapping: &Mapping,
    rules: &Rules,
) -> Result<Plan, TransferError> {
    let cx = Cx {
        m: mapping,
        old_bin: src_bin,
        new_bin: dst.binary,
    };
    let by_old_addr: HashMap<u64, &crate::mapping::GlobalMap> = mapping
        .globals
        .iter()
        .filter_map(|g| g.old.as_ref().map(|o| (o.address, g)))
        .collect();
    let dst_globals: HashMap<RemoteAddr, &[u8]> = dst
        .graph
        .objects
        .iter()
        .filter(|o| matches!(o.kind, ObjectKind::Global { .. }))
        .map(|o| (o.addr, o.bytes.as_slice()))
        .collect();
    let mut plan = Plan {
        objects: Vec::with_capacity(src.objects.len()),
        displaced: Vec::new(),
    };
    let mut index = ObjectIndex::new(src);
    // Per object (by id): its copied ranges (a range of `moves`) and, for heap arrays of
    // converted structs, the old and new element size.
    let mut moves: Vec<Move> = Vec::new();
    let mut converted: Vec<Converted> = vec![Converted::default(); index.len()];
    let mut overwritten: HashSet<RemoteAddr> = HashSet::new();
    let mut type_maps = TypeMaps::new(src_bin, mapping);
    for o in &src.objects {
        let name = Path::Object(src, o.id);
        let first_move = moves.len();
        let mv = &mut moves;
        let mut stride = None;
        let (place, bytes) = match &o.kind {
            ObjectKind::Global { var, .. } => {
                let v = &src_bin.variables()[*var];
                let Some(g) = by_old_addr.get(&v.address) else {
                    return Err(refused(&name, "the mapping has no entry for this global"));
                };
                let Some(new) = &g.new else {
                    match g.conversion {
                        Conversion::Drop => continue,
                        _ => {
                            return Err(refused(
                                &name,
                                "removed in the target, and no rule drops it",
                            ))
                        }
                    }
                };
                let addr = RemoteAddr::new(new.address.wrapping_add(dst.bias));
                let Some(initial) = dst_globals.get(&addr) else {
                    return Err(refused(&name, "its target variable was not captured"));
                };
                let mut bytes = initial.to_vec();
                if let Conversion::Value(vc) = &g.conversion {
                    let from = int_info(src_bin, v.ty);
                    let to = int_info(dst.binary, new.ty);
                    value_convert(vc, from, to, &o.bytes, 0, &mut bytes, 0, &name)?;
                } else {
                    cx.convert(&g.conversion, &o.bytes, 0, &mut bytes, 0, mv, &name)?;
                }
                overwritten.insert(addr);
                (Place::Global(addr), bytes)
            }
            ObjectKind::Heap => {
                let image = heap_object(src_bin, &cx, &mut type_maps, o, mv, &name)?;
                stride = image.stride;
                (Place::Heap(image.size), image.bytes)
            }
        };
        index.set(o.id, plan.objects.len());
        converted[o.id.index()] = Converted {
            moves: first_move..moves.len(),
            stride,
        };
        plan.objects.push(PlannedObject {
            source: Some(o.id),
            place,
            bytes,
            pointers: Vec::new(),
        });
    }
    // Globals only the new version has keep their initial value, unless a rule gives one.
    for g in mapping.globals.iter().filter(|g| g.old.is_none()) {
        let (Some(new), Conversion::Default { value }) = (&g.new, &g.conversion) else {
            continue;
        };
        let addr = RemoteAddr::new(new.address.wrapping_add(dst.bias));
        let Some(initial) = dst_globals.get(&addr) else {
            return Err(refused(
                &Path::Name(&g.path),
                "its variable was not captured in the target",
            ));
        };
        let mut bytes = initial.to_vec();
        cx.write_value(new.ty, &mut bytes, 0, value, &Path::Name(&g.path))?;
        plan.objects.push(PlannedObject {
            source: None,
            place: Place::Global(addr),
            bytes,
            pointers: Vec::new(),
        });
    }
    for e in &src.edges {
        // Edges from dropped objects go with them; so do pointers in dropped fields.
        let Some(from) = index.get(e.from) else {
            continue;
        };
        let moves_of = |id: ObjectId| &moves[converted[id.index()].moves.clone()];
        let Some(new_offset) = translate(moves_of(e.from), e.offset) else {
            continue;
        };
        let path = || format!("{}{}", object_name(src, e.from), e.path);
        let value = match &e.target {
            Target::Object { id, offset } => match index.get(*id) {
                Some(i) => {
                    // A pointer to an object (or to an element of an array of structs) points
                    // at its start in the new layout too; an interior pointer moves with the
                    // field it points into.
                    let off = match converted[id.index()].stride {
                        Some((old, new)) if offset % old == 0 => offset / old * new,
                        _ if *offset == 0 => 0,
                        _ => translate(moves_of(*id), *offset).unwrap_or(*offset),
                    };
                    Value::Object {
                        index: i,
                        offset: off,
                    }
                }
                None => {
                    return Err(TransferError::Refused {
                        path: path(),
                        why: format!("points into {}, which is dropped", object_name(src, *id)),
                    })
                }
            },
            Target::Dangling { why } => {
                return Err(TransferError::Refused {
                    path: path(),
                    why: format!("points to {why} ({})", e.value),
                })
            }
            Target::External(x) => match resolve_external(x, dst, &rules.function_renames) {
                Ok(a) => Value::Address(a),
                Err(why) => return Err(TransferError::Refused { path: path(), why }),
            },
        };
        plan.objects[from].pointers.push((new_offset, value));
    }
    plan.displaced = displaced(dst.graph, &overwritten);
    Ok(plan)
}

fn refused(path: &Path<'_>, why: &str) -> TransferError {
    TransferError::Refused {
        path: path.to_string(),
        why: why.to_owned(),
    }
}

/// Where in the state a value is, for messages: built as conversion descends and rendered
/// only when a conversion fails (formatting a path per object and field would cost more than
/// converting).
#[derive(Clone, Copy)]
enum Path<'a> {
    /// An object of the source state, by [`object_name`].
    Object(&'a StateGraph, ObjectId),
    /// A path already written out.
    Name(&'a str),
    /// Element `i` of an array (or of a heap array of structs).
    Index(&'a Path<'a>, u64),
    /// A field of a struct (named by its last path component).
    Field(&'a Path<'a>, &'a crate::mapping::FieldMap),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Object(graph, id) => f.write_str(&object_name(graph, *id)),
            Path::Name(name) => f.write_str(name),
            Path::Index(path, i) => write!(f, "{path}[{i}]"),
            Path::Field(path, field) => {
                let name = field
                    .old_path
                    .as_deref()
                    .or(field.new_path.as_deref())
                    .and_then(|p| p.rsplit('.').next())
                    .unwrap_or("?");
                write!(f, "{path}.{name}")
            }
        }
    }
}

/// What the edge pass needs to know of a converted object.
#[derive(Clone, Debug, Default)]
struct Converted {
    /// Its copied ranges, in the planner's list of moves.
    moves: std::ops::Range<usize>,
    /// For heap arrays of converted structs, the old and new element size.
    stride: Option<(u64, u64)>,
}

/// The type map of heap objects' types, looked up once per type rather than once per object.
struct TypeMaps<'a> {
    src_bin: &'a Binary,
    mapping: &'a Mapping,
    /// By the object's type as captured: its definition, and the index of its map if it has one.
    known: HashMap<crate::debuginfo::TypeId, (crate::debuginfo::TypeId, Option<usize>)>,
    /// The last answer: objects of one type tend to come together.
    last: Option<(
        crate::debuginfo::TypeId,
        (crate::debuginfo::TypeId, Option<usize>),
    )>,
}

impl<'a> TypeMaps<'a> {
    fn new(src_bin: &'a Binary, mapping: &'a Mapping) -> Self {
        TypeMaps {
            src_bin,
            mapping,
            known: HashMap::new(),
            last: None,
        }
    }

    /// The definition of `ty` (typedefs and qualifiers stripped) and the index of its type map.
    fn get(&mut self, ty: crate::debuginfo::TypeId) -> (crate::debuginfo::TypeId, Option<usize>) {
        if let Some((last, answer)) = self.last {
            if last == ty {
                return answer;
            }
        }
        let (bin, mapping) = (self.src_bin, self.mapping);
        let answer = *self.known.entry(ty).or_insert_with(|| {
            let stripped = bin.types().definition_of(bin.types().strip_typedefs_cv(ty));
            (
                stripped,
                mapping.types.iter().position(|t| t.old == stripped),
            )
        });
        self.last = Some((ty, answer));
        answer
    }
}

/// The new size and bytes of a heap object: struct elements converted by their type map,
/// anything else (scalars, pointers, untyped bytes) copied as it is.
fn heap_object(
    src_bin: &Binary,
    cx: &Cx<'_>,
    type_maps: &mut TypeMaps<'_>,
    o: &crate::state::Object,
    mv: &mut Vec<Move>,
    name: &Path<'_>,
) -> Result<HeapImage, TransferError> {
    let Some(ty) = o.ty else {
        mv.push((0, o.size, 0));
        return Ok(HeapImage {
            size: o.size,
            bytes: o.bytes.clone(),
            stride: None,
        });
    };
    let (stripped, tm_index) = type_maps.get(ty);
    let is_composite = matches!(src_bin.ty(stripped), Type::Struct(_) | Type::Union(_));
    let mapping = cx.m;
    let Some(tm_index) = tm_index else {
        if is_composite {
            return Err(refused(
                name,
                &format!(
                    "type `{}` is not mapped to the target",
                    src_bin.type_name(ty)
                ),
            ));
        }
        mv.push((0, o.size, 0));
        return Ok(HeapImage {
            size: o.size,
            bytes: o.bytes.clone(),
            stride: None,
        });
    };
    let tm = &mapping.types[tm_index];
    let (Some(old_size), Some(new_size)) = (tm.old_size, tm.new_size) else {
        return Err(refused(name, "a type of unknown size"));
    };
    let mut bytes = vec![0u8; (new_size * o.count).max(1) as usize];
    for i in 0..o.count {
        let path = Path::Index(name, i);
        let conv = Conversion::Struct { type_map: tm_index };
        cx.convert(
            &conv,
            &o.bytes,
            i * old_size,
            &mut bytes,
            i * new_size,
            mv,
            &path,
        )?;
    }
    Ok(HeapImage {
        size: bytes.len() as u64,
        bytes,
        stride: Some((old_size, new_size)),
    })
}

/// A heap object rebuilt in the new layout.
struct HeapImage {
    /// Bytes to allocate.
    size: u64,
    /// Its contents.
    bytes: Vec<u8>,
    /// For converted structs, the old and new element size.
    stride: Option<(u64, u64)>,
}

/// Where old offset `off` of an object lands in its new layout.
fn translate(moves: &[Move], off: u64) -> Option<u64> {
    moves
        .iter()
        .find(|&&(o, len, _)| off >= o && off < o + len)
        .map(|&(o, _, n)| n + (off - o))
}

fn read_uint(b: &[u8], off: u64, size: u64) -> Option<u64> {
    let s = b.get(off as usize..(off + size) as usize)?;
    let mut le = [0u8; 8];
    le[..size as usize].copy_from_slice(s);
    Some(u64::from_le_bytes(le))
}

fn sign_extend(v: u64, bits: u64) -> i64 {
    if bits >= 64 {
        return v as i64;
    }
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

fn write_uint(b: &mut [u8], off: u64, size: u64, v: u64) -> Option<()> {
    let d = b.get_mut(off as usize..(off + size) as usize)?;
    d.copy_from_slice(&v.to_le_bytes()[..size as usize]);
    Some(())
}

/// What conversions need besides the bytes.
struct Cx<'a> {
    m: &'a Mapping,
    old_bin: &'a Binary,
    new_bin: &'a Binary,
}

impl Cx<'_> {
    /// Converts the old value at `ooff` of `old` into `new` at `noff`, recording copied ranges.
    #[allow(clippy::too_many_arguments)]
    fn convert(
        &self,
        c: &Conversion,
        old: &[u8],
        ooff: u64,
        new: &mut [u8],
        noff: u64,
        mv: &mut Vec<Move>,
        path: &Path<'_>,
    ) -> Result<(), TransferError> {
        let short = || refused(path, "the value lies outside the object");
        match c {
            Conversion::Copy { size } => {
                let src = old
                    .get(ooff as usize..(ooff + size) as usize)
                    .ok_or_else(short)?;
                new.get_mut(noff as usize..(noff + size) as usize)
                    .ok_or_else(short)?
                    .copy_from_slice(src);
                mv.push((ooff, *size, noff));
            }
            Conversion::Pointer { .. } => {
                let src = old
                    .get(ooff as usize..ooff as usize + 8)
                    .ok_or_else(short)?;
                new.get_mut(noff as usize..noff as usize + 8)
                    .ok_or_else(short)?
                    .copy_from_slice(src);
                mv.push((ooff, 8, noff));
            }
            Conversion::Integer {
                old_bits,
                old_signed,
                new_bits,
                new_signed,
                ..
            } => {
                if old_bits % 8 != 0 || new_bits % 8 != 0 {
                    return Err(refused(path, "bit-field conversions are not supported yet"));
                }
                let raw = read_uint(old, ooff, old_bits / 8).ok_or_else(short)?;
                let value: i128 = if *old_signed {
                    sign_extend(raw, *old_bits) as i128
                } else {
                    raw as i128
                };
                if !fits(value, *new_bits, *new_signed) {
                    return Err(refused(
                        path,
                        &format!("the value {value} does not fit its new {new_bits}-bit type"),
                    ));
                }
                write_uint(new, noff, new_bits / 8, value as u64).ok_or_else(short)?;
            }
            Conversion::Float {
                old_size, new_size, ..
            } => {
                let raw = read_uint(old, ooff, *old_size).ok_or_else(short)?;
                let v = match old_size {
                    4 => f32::from_bits(raw as u32) as f64,
                    8 => f64::from_bits(raw),
                    _ => return Err(refused(path, "only float and double convert")),
                };
                let bits = match new_size {
                    4 => {
                        let f = v as f32;
                        if f as f64 != v && !v.is_nan() {
                            return Err(refused(
                                path,
                                &format!("{v} does not fit a float exactly"),
                            ));
                        }
                        f.to_bits() as u64
                    }
                    8 => v.to_bits(),
                    _ => return Err(refused(path, "only float and double convert")),
                };
                write_uint(new, noff, *new_size, bits).ok_or_else(short)?;
            }
            Conversion::Enum {
                old_size,
                new_size,
                values,
            } => {
                let raw = read_uint(old, ooff, *old_size).ok_or_else(short)?;
                let v = sign_extend(raw, old_size * 8);
                let Some((_, to)) = values.iter().find(|(o, _)| *o == v) else {
                    return Err(refused(
                        path,
                        &format!("{v} is not an enumerator of its type"),
                    ));
                };
                let Some(to) = to else {
                    return Err(refused(
                        path,
                        &format!("its value {v} names an enumerator the target does not have"),
                    ));
                };
                write_uint(new, noff, *new_size, *to as u64).ok_or_else(short)?;
            }
            Conversion::Array {
                old_len,
                new_len,
                old_stride,
                new_stride,
                element,
            } => {
                for i in 0..(*old_len).min(*new_len) {
                    self.convert(
                        element,
                        old,
                        ooff + i * old_stride,
                        new,
                        noff + i * new_stride,
                        mv,
                        &Path::Index(path, i),
                    )?;
                }
            }
            Conversion::Struct { type_map } => {
                let tm = &self.m.types[*type_map];
                for f in &tm.fields {
                    let fpath = Path::Field(path, f);
                    match (f.old_offset, f.new_offset, &f.conversion) {
                        (_, _, Conversion::Drop | Conversion::KeepInitial) => {}
                        (_, _, Conversion::Refused) => {
                            return Err(refused(&fpath, "the mapping refuses this field"))
                        }
                        (_, Some(n), Conversion::Default { value }) => {
                            self.default(tm.new, n, new, noff + n, value, &fpath)?;
                        }
                        (Some(o), Some(n), Conversion::Value(vc)) => {
                            let from = member_int(self.old_bin, tm.old, o);
                            let to = member_int(self.new_bin, tm.new, n);
                            value_convert(vc, from, to, old, ooff + o, new, noff + n, &fpath)?
                        }
                        (Some(o), Some(n), conv) => {
                            self.convert(conv, old, ooff + o, new, noff + n, mv, &fpath)?
                        }
                        _ => {}
                    }
                }
            }
            Conversion::Value(_) => {
                return Err(refused(
                    path,
                    "a value conversion here (inside an array) is not applied yet",
                ))
            }
            Conversion::Default { .. } => {
                return Err(refused(
                    path,
                    "a default for a whole global is not applied yet",
                ))
            }
            Conversion::KeepInitial | Conversion::Drop => {}
            Conversion::Refused => return Err(refused(path, "the mapping refuses this value")),
        }
        Ok(())
    }

    /// Writes a `[default]` rule's value into the field at offset `field_off` of new struct type
    /// `ty`, at `at` in `new`: integers, bools and enumerator names by the field's size, floats
    /// as float or double.
    fn default(
        &self,
        ty: crate::debuginfo::TypeId,
        field_off: u64,
        new: &mut [u8],
        at: u64,
        value: &crate::mapping::rules::Value,
        path: &Path<'_>,
    ) -> Result<(), TransferError> {
        let types = self.new_bin.types();
        let Type::Struct(c) = self
            .new_bin
            .ty(types.definition_of(types.strip_typedefs_cv(ty)))
        else {
            return Err(refused(
                path,
                "a default outside a struct is not applied yet",
            ));
        };
        let Some(member) = c
            .members
            .iter()
            .find(|m| m.offset == field_off && m.bit_field.is_none())
        else {
            return Err(refused(
                path,
                "no such field in the target (or a bit-field)",
            ));
        };
        self.write_value(member.ty, new, at, value, path)
    }

    /// Writes a rule's value as a value of new type `ty` at `at` in `new`.
    fn write_value(
        &self,
        ty: crate::debuginfo::TypeId,
        new: &mut [u8],
        at: u64,
        value: &crate::mapping::rules::Value,
        path: &Path<'_>,
    ) -> Result<(), TransferError> {
        use crate::mapping::rules::Value as V;
        let types = self.new_bin.types();
        let size = self.new_bin.byte_size(ty).unwrap_or(0);
        let short = || refused(path, "the value lies outside the object");
        let bits = match value {
            V::Int(i) => *i as u64,
            V::Bool(b) => *b as u64,
            V::Float(f) if size == 4 => (*f as f32).to_bits() as u64,
            V::Float(f) => f.to_bits(),
            V::Name(name) => {
                let Type::Enum(e) = self.new_bin.ty(types.strip_typedefs_cv(ty)) else {
                    return Err(refused(
                        path,
                        "an enumerator name for a field that is not an enum",
                    ));
                };
                let Some((_, v)) = e.enumerators.iter().find(|(n, _)| n == name) else {
                    return Err(refused(path, &format!("no enumerator {name}")));
                };
                *v as u64
            }
        };
        if !(1..=8).contains(&size) {
            return Err(refused(
                path,
                "a default for a field of this size is not applied yet",
            ));
        }
        write_uint(new, at, size, bits).ok_or_else(short)
    }
}

/// Size and signedness of an integer (or enum) type.
fn int_info(bin: &Binary, ty: crate::debuginfo::TypeId) -> Option<(u64, bool)> {
    let t = bin.types().strip_typedefs_cv(ty);
    match bin.ty(t) {
        Type::Base { encoding, size, .. } if *size <= 8 => Some((*size, encoding.is_signed())),
        Type::Enum(e) => Some((e.size?, e.signed)),
        _ => None,
    }
}

/// [`int_info`] of the field at `offset` of struct `ty`.
fn member_int(bin: &Binary, ty: crate::debuginfo::TypeId, offset: u64) -> Option<(u64, bool)> {
    let t = bin.types().definition_of(bin.types().strip_typedefs_cv(ty));
    let Type::Struct(c) = bin.ty(t) else {
        return None;
    };
    let m = c
        .members
        .iter()
        .find(|m| m.offset == offset && m.bit_field.is_none())?;
    int_info(bin, m.ty)
}

/// Applies a rule's value conversion to an integer field: reads it as `from`, converts, checks
/// that the result fits `to`, writes it.
#[allow(clippy::too_many_arguments)]
fn value_convert(
    vc: &crate::mapping::rules::ValueConversion,
    from: Option<(u64, bool)>,
    to: Option<(u64, bool)>,
    old: &[u8],
    ooff: u64,
    new: &mut [u8],
    noff: u64,
    path: &Path<'_>,
) -> Result<(), TransferError> {
    let (Some((osize, osigned)), Some((nsize, nsigned))) = (from, to) else {
        return Err(refused(path, "a value conversion applies to integers only"));
    };
    let short = || refused(path, "the value lies outside the object");
    let raw = read_uint(old, ooff, osize).ok_or_else(short)?;
    let v = if osigned {
        sign_extend(raw, osize * 8)
    } else {
        raw as i64
    };
    let Some(converted) = vc.apply(v) else {
        return Err(refused(
            path,
            &format!("the value {v} is not in the conversion table"),
        ));
    };
    let bits = nsize * 8;
    if !fits(converted as i128, bits, nsigned) {
        return Err(refused(
            path,
            &format!("{v} converts to {converted}, which does not fit its new {bits}-bit type"),
        ));
    }
    write_uint(new, noff, nsize, converted as u64).ok_or_else(short)
}

/// Whether `value` is representable in an integer of `bits` bits and the given signedness.
fn fits(value: i128, bits: u64, signed: bool) -> bool {
    let (lo, hi): (i128, i128) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    (lo..=hi).contains(&value)
}
