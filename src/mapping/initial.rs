//! The functions that function pointers of a binary hold in its initial data (`.data`), read
//! from the ELF file: what lets `transplant plan` say, without a process, that a removed
//! function is still referenced.

use std::collections::HashMap;

use object::{Object, ObjectSection, SectionKind};

use crate::debuginfo::{Binary, Type, TypeId};

/// Most array elements looked at per array: bounds the walk of large tables.
const MAX_ELEMENTS: u64 = 4096;

/// `(path, function name)` of every function pointer in the initial data of `bin`'s
/// variables that holds a known function. Unreadable files give an empty list (the check is
/// then made per value at transfer time).
pub(crate) fn function_pointer_targets(bin: &Binary) -> Vec<(String, String)> {
    let Ok(data) = std::fs::read(bin.path()) else {
        return Vec::new();
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Vec::new();
    };
    // PIE: the link-time value of a pointer in .data is the addend of its relative
    // relocation; the section bytes may hold it too, or zero.
    let mut addends: HashMap<u64, u64> = HashMap::new();
    if let Some(relocs) = file.dynamic_relocations() {
        for (offset, r) in relocs {
            if r.addend() != 0 {
                addends.insert(offset, r.addend() as u64);
            }
        }
    }
    let sections: Vec<(u64, u64, &[u8])> = file
        .sections()
        .filter(|s| matches!(s.kind(), SectionKind::Data | SectionKind::ReadOnlyData))
        .filter_map(|s| Some((s.address(), s.size(), s.data().ok()?)))
        .collect();
    let read = |addr: u64| -> Option<u64> {
        if let Some(&a) = addends.get(&addr) {
            return Some(a);
        }
        let (start, _, bytes) = sections
            .iter()
            .find(|(start, size, _)| addr >= *start && addr + 8 <= start + size)?;
        let at = (addr - start) as usize;
        Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let mut out = Vec::new();
    for v in bin.variables() {
        let mut slots = Vec::new();
        slots_of(bin, v.ty, v.address, v.name.clone(), &mut slots, 0);
        for (addr, path) in slots {
            if let Some(f) = read(addr)
                .filter(|&x| x != 0)
                .and_then(|x| bin.function_at(x))
            {
                out.push((path, f.name.clone()));
            }
        }
    }
    out
}

fn slots_of(
    bin: &Binary,
    ty: TypeId,
    addr: u64,
    path: String,
    out: &mut Vec<(u64, String)>,
    depth: u32,
) {
    if depth > 16 {
        return;
    }
    let types = bin.types();
    let id = types.definition_of(types.strip_typedefs_cv(ty));
    match bin.ty(id) {
        Type::Pointer {
            target: Some(t), ..
        } if matches!(bin.ty(types.strip_typedefs_cv(*t)), Type::Function { .. }) => {
            out.push((addr, path));
        }
        Type::Struct(c) => {
            for m in c.members.iter().filter(|m| m.bit_field.is_none()) {
                let name = m.name.as_deref().unwrap_or("<anonymous>");
                slots_of(
                    bin,
                    m.ty,
                    addr + m.offset,
                    format!("{path}.{name}"),
                    out,
                    depth + 1,
                );
            }
        }
        Type::Array { element, dims } => {
            let Some(stride) = bin.byte_size(*element) else {
                return;
            };
            let Some(Some(n)) = dims.first() else { return };
            // Only one-dimensional arrays of function pointers or structs matter in practice.
            if dims.len() != 1 || stride == 0 {
                return;
            }
            for i in 0..(*n).min(MAX_ELEMENTS) {
                slots_of(
                    bin,
                    *element,
                    addr + i * stride,
                    format!("{path}[{i}]"),
                    out,
                    depth + 1,
                );
            }
        }
        _ => {}
    }
}
