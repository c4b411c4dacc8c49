//! `transplant::debuginfo` on real binaries: the `types` fixture checked against gdb as an
//! oracle (type names, sizes, addresses, struct layouts), variants of it built here (DWARF 4,
//! type units, non-PIE, two compilation units, stripped, detached debug info), a small Rust
//! program, and Debian's libc with its debug file found by build-id.

use fixtures::Scratch;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use object::{Object, ObjectSection};
use transplant::debuginfo::{
    Binary, DebugInfoError, Encoding, FatPointerKind, Language, LoadOptions, Type, TypeId, Types,
    VariableKind,
};

// ---------------------------------------------------------------------------------------
// Harness

/// Runs a command, failing the test with its output if it fails; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Source of the `types` fixture.
fn types_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/c/types.c")
}

/// Builds `types.c` with the fixture flags plus `extra` into `out`.
fn build_types(out: &Path, extra: &[&str]) {
    run(Command::new("gcc")
        .args([
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-Wall",
            "-Werror",
            "-pthread",
        ])
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(types_source()));
}

/// Runs gdb in batch mode on `binary` and returns the output of each command.
fn gdb(binary: &Path, commands: &[String]) -> Vec<String> {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    for c in commands {
        cmd.arg("-ex").arg(c).arg("-ex").arg("echo @@@\\n");
    }
    cmd.arg(binary);
    let out = cmd.output().expect("run gdb");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts: Vec<String> = text.split("@@@\n").map(|s| s.trim().to_owned()).collect();
    parts.truncate(commands.len());
    assert_eq!(parts.len(), commands.len(), "gdb output: {text}");
    parts
}

/// `type = X` -> `X`.
fn gdb_type(s: &str) -> &str {
    s.strip_prefix("type = ").unwrap_or(s)
}

/// `$1 = 16` -> 16.
fn gdb_number(s: &str) -> Option<u64> {
    s.rsplit(" = ").next()?.trim().parse().ok()
}

/// `$2 = (int *) 0x4068 <g_int>` (or `$2 = 0x4060 <g_char> "A"` for `char *`) -> 0x4068.
fn gdb_address(s: &str) -> Option<u64> {
    let i = s.find(" = ")?;
    let i = i + s[i..].find("0x")?;
    let hex: String = s[i + 2..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// The gdb expression naming a variable of the types fixture.
fn gdb_expr(v: &transplant::debuginfo::Variable) -> String {
    match &v.kind {
        VariableKind::Global => v.name.clone(),
        VariableKind::FileStatic { cu } => {
            let base = Path::new(cu).file_name().unwrap().to_string_lossy();
            format!("'{base}'::{}", v.name)
        }
        VariableKind::FunctionStatic { function, .. } => format!("{function}::{}", v.name),
    }
}

fn load_types() -> Binary {
    Binary::load(fixtures::path("types")).expect("load the types fixture")
}

/// Every global of types.c, in source order.
const GLOBALS: &[&str] = &[
    "g_char",
    "g_schar",
    "g_uchar",
    "g_short",
    "g_ushort",
    "g_int",
    "g_uint",
    "g_long",
    "g_ulong",
    "g_llong",
    "g_ullong",
    "g_float",
    "g_double",
    "g_ldouble",
    "g_bool",
    "g_bool2",
    "g_complex",
    "g_int128",
    "g_uint128",
    "g_point",
    "g_rect",
    "g_nodes",
    "g_anon",
    "g_opaque",
    "g_int_ptr",
    "g_int_ptr_ptr",
    "g_point_ptr",
    "g_void_ptr",
    "g_const_void_ptr",
    "g_string",
    "g_mut_string",
    "g_stream",
    "g_number",
    "g_color",
    "g_sign",
    "g_wide",
    "g_arr",
    "g_matrix",
    "g_cube",
    "g_buffer",
    "g_points",
    "g_flex",
    "g_zero",
    "g_buffer_ptr",
    "g_ptr_array",
    "g_chain",
    "g_point_t",
    "g_pair",
    "g_const",
    "g_volatile",
    "g_cv",
    "g_const_ptr",
    "g_const_ptr_const",
    "g_ptr_volatile",
    "g_op",
    "g_ops",
    "g_binop",
    "g_callback",
    "g_namer",
    "g_printf",
    "g_unprototyped",
    "g_ops_table",
    "g_bits",
];

// ---------------------------------------------------------------------------------------
// The types fixture against gdb

#[test]
fn every_variable_matches_gdb_type_size_and_address() {
    let bin = load_types();
    let names: Vec<&str> = bin.variables().iter().map(|v| v.name.as_str()).collect();
    for g in GLOBALS {
        let v = bin
            .variable(g)
            .unwrap_or_else(|| panic!("{g} not found in {names:?}"));
        assert_eq!(v.kind, VariableKind::Global, "{g}");
    }
    // Every variable of the fixture's own unit: the globals and the four statics.
    let ours: Vec<_> = bin
        .variables()
        .iter()
        .filter(|v| bin.unit(v.unit).name.ends_with("types.c"))
        .collect();
    assert_eq!(ours.len(), GLOBALS.len() + 4, "{names:?}");

    let mut cmds = Vec::new();
    for v in &ours {
        let e = gdb_expr(v);
        cmds.push(format!("whatis {e}"));
        cmds.push(format!("print sizeof({e})"));
        cmds.push(format!("print &{e}"));
    }
    let out = gdb(&fixtures::path("types"), &cmds);
    let mut wrong = Vec::new();
    for (v, o) in ours.iter().zip(out.chunks(3)) {
        let ty = bin.type_name(v.ty);
        if ty != gdb_type(&o[0]) {
            wrong.push(format!("{}: type {ty:?}, gdb {:?}", v.name, o[0]));
        }
        // gdb's sizeof of a flexible array member is 0; the model says "unknown".
        let size = v.size;
        if size != gdb_number(&o[1]) {
            wrong.push(format!("{}: size {size:?}, gdb {:?}", v.name, o[1]));
        }
        if Some(v.address) != gdb_address(&o[2]) {
            wrong.push(format!(
                "{}: address {:#x}, gdb {:?}",
                v.name, v.address, o[2]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "differences from gdb:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn statics_are_told_apart_by_unit_and_function() {
    let bin = load_types();
    let fs = bin.variable("file_static").expect("file_static");
    match &fs.kind {
        VariableKind::FileStatic { cu } => assert!(cu.ends_with("fixtures/c/types.c"), "{cu}"),
        k => panic!("file_static is {k:?}"),
    }
    assert!(matches!(
        bin.variable("file_static_names").unwrap().kind,
        VariableKind::FileStatic { .. }
    ));
    let counters: Vec<_> = bin.variables_named("counter").collect();
    assert_eq!(counters.len(), 2, "{counters:?}");
    assert!(
        bin.variable("counter").is_none(),
        "ambiguous name must not resolve"
    );
    let mut by_fn = HashMap::new();
    for c in &counters {
        match &c.kind {
            VariableKind::FunctionStatic { cu, function } => {
                assert!(cu.ends_with("types.c"));
                by_fn.insert(function.clone(), c.address);
            }
            k => panic!("counter is {k:?}"),
        }
        assert_eq!(bin.type_name(c.ty), "int");
        assert_eq!(c.size, Some(4));
    }
    assert_ne!(by_fn["counter_a"], by_fn["counter_b"]);
    let out = gdb(
        &fixtures::path("types"),
        &[
            "print &counter_a::counter".into(),
            "print &counter_b::counter".into(),
        ],
    );
    assert_eq!(gdb_address(&out[0]), Some(by_fn["counter_a"]));
    assert_eq!(gdb_address(&out[1]), Some(by_fn["counter_b"]));
    // Thread-locals are not variables with an address.
    assert!(bin.variable("g_tls").is_none());
    let tls: Vec<_> = bin
        .thread_locals()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(tls, ["g_tls"]);
    assert_eq!(bin.type_name(bin.thread_locals()[0].ty), "int");
}

/// One line of a struct layout: name (`<anon>` for anonymous members), byte offset, bit
/// within that byte for bit-fields, and size in bytes of the member's type.
type LayoutLine = (String, u64, Option<u64>, u64);

/// The model's layout of a struct, nested structs and unions expanded as gdb's `ptype /o`.
fn model_layout(types: &Types, id: TypeId, base: u64, out: &mut Vec<LayoutLine>) {
    let (Type::Struct(c) | Type::Union(c)) = types.get(types.strip_typedefs_cv(id)) else {
        panic!("not a struct: {}", types.name(id));
    };
    for m in &c.members {
        let off = base + m.offset;
        let size = types.byte_size(m.ty).unwrap_or(0);
        out.push((
            m.name.clone().unwrap_or_else(|| "<anon>".into()),
            off,
            m.bit_field.map(|b| u64::from(b.bit_offset)),
            size,
        ));
        if matches!(types.get(m.ty), Type::Struct(_) | Type::Union(_)) {
            model_layout(types, m.ty, off, out);
        }
    }
}

/// The member name of a C declaration as gdb prints it (`const char *(*namer)(int);`).
fn decl_name(decl: &str) -> String {
    let d = decl.trim().trim_end_matches(';');
    let d = match d.rfind(" : ") {
        Some(i) if d[i + 3..].chars().all(|c| c.is_ascii_digit()) => &d[..i],
        _ => d,
    };
    if let Some(i) = d.find("(*") {
        return d[i + 2..].chars().take_while(|c| *c != ')').collect();
    }
    let last = d.rsplit(' ').next().unwrap_or(d);
    let last = last.trim_start_matches('*');
    last.split('[').next().unwrap().to_owned()
}

/// gdb's `ptype /o` of a struct or union, as layout lines.
fn gdb_layout(binary: &Path, what: &str) -> Vec<LayoutLine> {
    let text = gdb(binary, &[format!("ptype /o {what}")]).remove(0);
    let mut out: Vec<LayoutLine> = Vec::new();
    // Open aggregates: (index of their line in `out`, base offset, is a union).
    let mut stack: Vec<(Option<usize>, u64, bool)> = vec![(None, 0, what.starts_with("union"))];
    for line in text.lines().skip(1) {
        let t = line.trim();
        if t.starts_with("/* XXX") || t.starts_with("/* total size") || t.is_empty() {
            continue;
        }
        if t.starts_with('}') {
            let (idx, _, _) = stack.pop().expect("balanced braces");
            if let Some(i) = idx {
                let name = t
                    .trim_start_matches('}')
                    .trim()
                    .trim_end_matches(';')
                    .trim();
                out[i].0 = if name.is_empty() {
                    "<anon>".into()
                } else {
                    name.into()
                };
            }
            continue;
        }
        let Some(rest) = t.strip_prefix("/*") else {
            continue;
        };
        let (cols, decl) = rest.split_once("*/").expect("comment");
        let (pos, size) = match cols.split_once('|') {
            Some((p, s)) => (Some(p.trim()), s.trim()),
            None => (None, cols.trim()),
        };
        let size: u64 = size.parse().expect("size column");
        let &(_, base, in_union) = stack.last().unwrap();
        let (off, bit) = match pos {
            Some(p) => match p.split_once(':') {
                Some((o, b)) => (o.trim().parse().unwrap(), Some(b.trim().parse().unwrap())),
                None => (p.parse().unwrap(), None),
            },
            None => {
                assert!(in_union, "member without offset outside a union: {line}");
                (base, None)
            }
        };
        let decl = decl.trim();
        if decl.ends_with('{') {
            out.push((String::new(), off, None, size));
            stack.push((Some(out.len() - 1), off, decl.starts_with("union")));
        } else {
            out.push((decl_name(decl), off, bit, size));
        }
    }
    out
}

#[test]
fn struct_layouts_and_bitfields_match_gdb_ptype_o() {
    let bin = load_types();
    let t = bin.types();
    for what in [
        "struct point",
        "struct rect",
        "struct node",
        "struct with_anon",
        "struct flex",
        "struct zero",
        "struct ops",
        "struct bits",
        "union number",
    ] {
        let (kw, tag) = what.split_once(' ').unwrap();
        let id = t
            .named(tag)
            .iter()
            .copied()
            .find(|&id| match t.get(id) {
                Type::Struct(c) => kw == "struct" && !c.declaration,
                Type::Union(_) => kw == "union",
                _ => false,
            })
            .unwrap_or_else(|| panic!("{what} not in the model"));
        assert_eq!(t.name(id), what);
        let mut model = Vec::new();
        model_layout(t, id, 0, &mut model);
        let gdb = gdb_layout(&fixtures::path("types"), what);
        assert_eq!(model, gdb, "layout of {what}");
    }
}

/// Reads `len` bytes at link-time address `addr` from the file's sections.
fn file_bytes(path: &Path, addr: u64, len: u64) -> Vec<u8> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    for s in file.sections() {
        if s.address() <= addr && addr + len <= s.address() + s.size() {
            let d = s.data().unwrap();
            let start = (addr - s.address()) as usize;
            return d[start..start + len as usize].to_vec();
        }
    }
    panic!("{addr:#x} not in any section");
}

/// Reads a bit-field or integer member out of `bytes` by the model's layout.
fn read_member(types: &Types, bytes: &[u8], m: &transplant::debuginfo::Member) -> i128 {
    let size = types.byte_size(m.ty).unwrap();
    let signed = match types.get(types.strip_typedefs_cv(m.ty)) {
        Type::Base { encoding, .. } => encoding.is_signed(),
        Type::Enum(e) => e.signed,
        _ => false,
    };
    let (bit, width) = match m.bit_field {
        Some(b) => (u32::from(b.bit_offset), b.bit_size as u32),
        None => (0, size as u32 * 8),
    };
    let nbytes = (bit + width).div_ceil(8) as usize;
    let mut raw = [0u8; 16];
    raw[..nbytes].copy_from_slice(&bytes[m.offset as usize..m.offset as usize + nbytes]);
    let v = u128::from_le_bytes(raw) >> bit;
    let v = if width < 128 {
        v & ((1u128 << width) - 1)
    } else {
        v
    };
    if signed && width < 128 && v >> (width - 1) & 1 == 1 {
        v as i128 - (1i128 << width)
    } else {
        v as i128
    }
}

#[test]
fn initialised_values_decode_through_the_model() {
    let path = fixtures::path("types");
    let bin = Binary::load(&path).unwrap();
    let t = bin.types();
    let v = bin.variable("g_bits").unwrap();
    let bytes = file_bytes(&path, v.address, v.size.unwrap());
    let Type::Struct(c) = t.get(v.ty) else {
        panic!()
    };
    let values: Vec<(String, i128)> = c
        .members
        .iter()
        .map(|m| (m.name.clone().unwrap(), read_member(t, &bytes, m)))
        .collect();
    let want: Vec<(String, i128)> = [
        ("a", 5),
        ("b", -7),
        ("c", 1000),
        ("d", 123456),
        ("e", 0x12345678),
        ("f", -1),
        ("g", 1),
        ("plain", 4242),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), *v))
    .collect();
    assert_eq!(values, want);

    // Scalars of every size and signedness.
    for (name, want) in [
        ("g_schar", -5i128),
        ("g_uchar", 250),
        ("g_short", -1234),
        ("g_ushort", 54321),
        ("g_int", -123456),
        ("g_uint", 3000000000),
        ("g_long", -1234567890123),
        ("g_ullong", 18000000000000000000),
        ("g_int128", -7),
        ("g_chain", 77),
        ("g_sign", -2),
        ("g_wide", 0x100000000),
    ] {
        let v = bin.variable(name).unwrap();
        let bytes = file_bytes(&path, v.address, v.size.unwrap());
        let m = transplant::debuginfo::Member {
            name: None,
            ty: v.ty,
            offset: 0,
            bit_field: None,
        };
        assert_eq!(read_member(t, &bytes, &m), want, "{name}");
    }
}

#[test]
fn every_c_type_kind_is_modelled() {
    let bin = load_types();
    let t = bin.types();
    let ty = |name: &str| bin.variable(name).unwrap().ty;

    // Base types: encodings and sizes.
    let base = |name: &str| match t.get(t.strip_typedefs_cv(ty(name))) {
        Type::Base { encoding, size, .. } => (*encoding, *size),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(base("g_char"), (Encoding::SignedChar, 1));
    assert_eq!(base("g_uchar"), (Encoding::UnsignedChar, 1));
    assert_eq!(base("g_ushort"), (Encoding::Unsigned, 2));
    assert_eq!(base("g_llong"), (Encoding::Signed, 8));
    assert_eq!(base("g_ldouble"), (Encoding::Float, 16));
    assert_eq!(base("g_bool"), (Encoding::Bool, 1));
    assert_eq!(base("g_complex"), (Encoding::ComplexFloat, 16));
    assert_eq!(base("g_uint128"), (Encoding::Unsigned, 16));

    // Enums: sparse, negative, 64-bit.
    let enumerators = |name: &str| match t.get(ty(name)) {
        Type::Enum(e) => (e.signed, e.size, e.enumerators.clone()),
        other => panic!("{name}: {other:?}"),
    };
    let s = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(n, x)| (n.to_string(), *x)).collect()
    };
    assert_eq!(
        enumerators("g_color"),
        (
            false,
            Some(4),
            s(&[("RED", 0), ("GREEN", 5), ("BLUE", 100)])
        )
    );
    assert_eq!(
        enumerators("g_sign"),
        (true, Some(4), s(&[("NEG", -2), ("ZERO", 0), ("POS", 2)]))
    );
    assert_eq!(
        enumerators("g_wide"),
        (
            false,
            Some(8),
            s(&[("WIDE_SMALL", 1), ("WIDE_BIG", 0x100000000)])
        )
    );

    // Arrays: multi-dimensional, flexible, zero-length.
    let dims = |id: TypeId| match t.get(id) {
        Type::Array { dims, .. } => dims.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(dims(ty("g_matrix")), [Some(3), Some(4)]);
    assert_eq!(dims(ty("g_cube")), [Some(2), Some(3), Some(4)]);
    let member = |var: &str, m: &str| match t.get(t.strip_typedefs_cv(ty(var))) {
        Type::Struct(c) => c
            .members
            .iter()
            .find(|x| x.name.as_deref() == Some(m))
            .unwrap()
            .clone(),
        other => panic!("{other:?}"),
    };
    let flex = member("g_flex", "data");
    assert_eq!(
        (dims(flex.ty), flex.offset, t.byte_size(flex.ty)),
        (vec![None], 4, None)
    );
    let zero = member("g_zero", "none");
    assert_eq!(
        (dims(zero.ty), zero.offset, t.byte_size(zero.ty)),
        (vec![Some(0)], 4, Some(0))
    );
    let flex_var = bin.variable("g_flex").unwrap();
    assert_eq!((flex_var.size, flex_var.symbol_size), (Some(4), Some(16)));

    // Typedef chains, const/volatile.
    let chain = ty("g_chain");
    assert!(matches!(t.get(chain), Type::Typedef { name, .. } if name == "counter_t"));
    assert_eq!(t.name(t.strip_typedefs_cv(chain)), "int");
    assert!(matches!(
        t.get(ty("g_cv")),
        Type::Const(_) | Type::Volatile(_)
    ));
    assert_eq!(t.name(t.strip_typedefs_cv(ty("g_cv"))), "unsigned int");
    assert_eq!(t.name(t.strip_typedefs_cv(ty("g_point_t"))), "struct point");
    assert_eq!(t.name(t.strip_typedefs_cv(ty("g_pair"))), "struct {...}");

    // Pointers: void, to pointer, to an opaque struct defined nowhere.
    assert!(matches!(
        t.get(ty("g_void_ptr")),
        Type::Pointer {
            target: None,
            size: 8,
            ..
        }
    ));
    let Type::Pointer {
        target: Some(opaque),
        ..
    } = t.get(ty("g_opaque"))
    else {
        panic!()
    };
    assert!(matches!(t.get(*opaque), Type::Struct(c) if c.declaration && c.size.is_none()));
    assert_eq!(t.definition_of(*opaque), *opaque);

    // Function pointers.
    let func = |name: &str| {
        let Type::Pointer {
            target: Some(f), ..
        } = t.get(t.strip_typedefs_cv(ty(name)))
        else {
            panic!("{name}")
        };
        match t.get(*f) {
            Type::Function {
                ret,
                params,
                variadic,
                prototyped,
            } => (ret.map(|r| t.name(r)), params.len(), *variadic, *prototyped),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(func("g_op"), (Some("int".into()), 2, false, true));
    assert_eq!(func("g_binop"), (Some("int".into()), 2, false, true));
    assert_eq!(func("g_callback"), (None, 0, false, true));
    assert_eq!(func("g_printf"), (Some("int".into()), 1, true, true));
    assert!(!func("g_unprototyped").3, "int (*)() is not prototyped");

    // Anonymous members.
    let Type::Struct(anon) = t.get(ty("g_anon")) else {
        panic!()
    };
    let names: Vec<_> = anon.members.iter().map(|m| m.name.as_deref()).collect();
    assert_eq!(names, [Some("kind"), None, None, Some("tag")]);
    assert!(matches!(t.get(anon.members[1].ty), Type::Union(c) if c.name.is_none()));

    // One unit, C, DWARF 5 from gcc 12.
    let cu = &bin.units()[0];
    assert_eq!((cu.language, cu.version), (Language::C, 5));
    assert!(cu.producer.as_deref().unwrap().starts_with("GNU C"));
    assert!(
        bin.notes().iter().all(|n| n.contains("thread-local")),
        "{:?}",
        bin.notes()
    );
}

#[test]
fn functions_match_the_symbol_table() {
    let bin = load_types();
    for name in [
        "add",
        "sub",
        "tick",
        "name_of",
        "counter_a",
        "counter_b",
        "checksum",
        "main",
    ] {
        let f = bin
            .functions()
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("function {name}"));
        let sym = bin.symbol(name).unwrap_or_else(|| panic!("symbol {name}"));
        assert_eq!(f.low_pc, sym.address, "{name}");
        assert_eq!(f.high_pc - f.low_pc, sym.size, "{name}");
        assert_eq!(
            bin.function_at(f.low_pc).map(|f| f.name.as_str()),
            Some(name)
        );
        assert_eq!(
            bin.function_containing(f.low_pc + 1)
                .map(|f| f.name.as_str()),
            Some(name)
        );
        assert_eq!(
            bin.symbol_at(f.low_pc + 1).map(|s| s.name.as_str()),
            Some(name)
        );
        assert_eq!(
            f.external,
            name != "add"
                && name != "sub"
                && name != "tick"
                && name != "name_of"
                && name != "counter_a"
                && name != "counter_b"
                && name != "checksum"
        );
    }
    assert!(bin
        .function_at(bin.symbol("add").unwrap().address + 1)
        .is_none());
    assert!(bin
        .function_containing(bin.variable("g_int").unwrap().address)
        .is_none());

    // Addresses inside globals name the global and the offset.
    let m = bin.variable("g_matrix").unwrap();
    let (v, off) = bin.variable_containing(m.address + 20).unwrap();
    assert_eq!((v.name.as_str(), off), ("g_matrix", 20));
    let flex = bin.variable("g_flex").unwrap();
    let (v, off) = bin.variable_containing(flex.address + 12).unwrap();
    assert_eq!(
        (v.name.as_str(), off),
        ("g_flex", 12),
        "the symbol's size covers the initialised flexible array"
    );
    let main = bin.functions().iter().find(|f| f.name == "main").unwrap();
    assert!(bin.variable_containing(main.low_pc).is_none());
}

// ---------------------------------------------------------------------------------------
// Other builds of the fixture

/// (name, kind, type name, size) of every variable of the fixture's unit.
fn summary(bin: &Binary) -> Vec<(String, String, String, Option<u64>)> {
    let mut v: Vec<_> = bin
        .variables()
        .iter()
        .filter(|v| bin.unit(v.unit).name.ends_with("types.c"))
        .map(|v| {
            let kind = match &v.kind {
                VariableKind::Global => "global".to_owned(),
                VariableKind::FileStatic { .. } => "file".to_owned(),
                VariableKind::FunctionStatic { function, .. } => function.clone(),
            };
            (v.name.clone(), kind, bin.type_name(v.ty), v.size)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dwarf4_and_type_units_give_the_same_model() {
    let reference = load_types();
    let want = summary(&reference);
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "debuginfo-dwarf4");
    for (name, flags) in [
        ("dwarf4", &["-gdwarf-4"][..]),
        ("dwarf4-types", &["-gdwarf-4", "-fdebug-types-section"][..]),
        ("dwarf5-types", &["-gdwarf-5", "-fdebug-types-section"][..]),
        // LTO splits the DWARF into an early unit and one that refers into it with
        // DW_FORM_ref_addr.
        ("dwarf5-lto", &["-flto"][..]),
    ] {
        let exe = scratch.path(name);
        build_types(&exe, flags);
        let bin = Binary::load(&exe).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary(&bin), want, "{name}");
        let version = if name.starts_with("dwarf4") { 4 } else { 5 };
        assert!(bin.units().iter().all(|u| u.version == version), "{name}");
        // The DWARF 4 bit-field encoding (offsets from the top bit) gives the same layout.
        let layout = |b: &Binary| {
            let mut l = Vec::new();
            model_layout(b.types(), b.variable("g_bits").unwrap().ty, 0, &mut l);
            l
        };
        assert_eq!(layout(&bin), layout(&reference), "{name}");
        assert!(
            !bin.notes()
                .iter()
                .any(|n| n.contains("unresolved") || n.contains("not found")),
            "{name}: {:?}",
            bin.notes()
        );
    }
}

#[test]
fn pie_load_bias_and_non_pie() {
    let pie = load_types();
    assert!(pie.is_pie());
    assert_eq!(pie.first_load_page(), 0);
    assert_eq!(pie.load_bias(0x5555_5555_4000), 0x5555_5555_4000);

    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "debuginfo-nopie");
    let exe = scratch.path("types-nopie");
    build_types(&exe, &["-no-pie"]);
    let bin = Binary::load(&exe).unwrap();
    assert!(!bin.is_pie());
    assert_eq!(bin.first_load_page(), 0x400000);
    assert_eq!(bin.load_bias(0x400000), 0);
    let g = bin.variable("g_int").unwrap();
    assert!(g.address > 0x400000);
}

/// Reads a live process's memory through /proc (the test may; debuginfo never does).
fn read_mem(pid: i32, addr: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    f.seek(SeekFrom::Start(addr)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read /proc/PID/mem");
    buf
}

#[test]
fn addresses_plus_load_bias_find_the_values_in_a_live_process() {
    let path = fixtures::path("types");
    let bin = Binary::load(&path).unwrap();
    let (mut fx, ready) = fixtures::Fixture::start_ready("types", &[]);
    let pid: i32 = ready["pid"].parse().unwrap();
    assert_eq!(fx.ask("count", "COUNT"), "COUNT 101 201");
    let exe = std::fs::canonicalize(&path).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = maps
        .lines()
        .filter(|l| l.ends_with(exe.to_str().unwrap()))
        .map(|l| u64::from_str_radix(l.split('-').next().unwrap(), 16).unwrap())
        .min()
        .expect("mapping of the executable");
    let bias = bin.load_bias(base);
    let int = |name: &str| {
        let v = bin.variable(name).unwrap();
        let b = read_mem(pid, v.address + bias, 4);
        i32::from_le_bytes(b.try_into().unwrap())
    };
    assert_eq!(int("g_int"), -123456);
    assert_eq!(int("file_static"), 99);
    let counters: HashMap<String, i32> = bin
        .variables_named("counter")
        .map(|v| {
            let VariableKind::FunctionStatic { function, .. } = &v.kind else {
                panic!()
            };
            let b = read_mem(pid, v.address + bias, 4);
            (function.clone(), i32::from_le_bytes(b.try_into().unwrap()))
        })
        .collect();
    assert_eq!(counters["counter_a"], 101);
    assert_eq!(counters["counter_b"], 201);
    // A pointer global holds the biased address of another global.
    let p = bin.variable("g_point_ptr").unwrap();
    let raw = u64::from_le_bytes(read_mem(pid, p.address + bias, 8).try_into().unwrap());
    assert_eq!(raw, bin.variable("g_point").unwrap().address + bias);
    fx.send("exit");
}

#[test]
fn identical_types_of_two_units_are_merged_and_statics_kept_apart() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "debuginfo-two-units");
    let a = scratch.path("a.c");
    let b = scratch.path("b.c");
    std::fs::write(
        &a,
        "struct point { int x, y; };\n\
         struct node { int v; struct node *next; };\n\
         struct config { int size; };\n\
         struct opaque;\n\
         struct point pa = {1, 2};\n\
         struct node na = {1, 0};\n\
         struct config ca = {3};\n\
         struct opaque *op;\n\
         static int count = 1;\n\
         int bump_a(void) { return ++count; }\n",
    )
    .unwrap();
    std::fs::write(
        &b,
        "struct point { int x, y; };\n\
         struct node { int v; struct node *next; };\n\
         struct config { long size; };\n\
         struct opaque { int secret; };\n\
         struct point pb = {3, 4};\n\
         struct node nb = {2, 0};\n\
         struct config cb = {4};\n\
         struct opaque ob = {5};\n\
         static int count = 2;\n\
         int bump_a(void);\n\
         int main(void) { return bump_a() + count + pb.x + nb.v + (int)cb.size; }\n",
    )
    .unwrap();
    let exe = scratch.path("two");
    run(Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(&exe)
        .arg(&a)
        .arg(&b));
    let bin = Binary::load(&exe).unwrap();
    let t = bin.types();
    let ty = |n: &str| bin.variable(n).unwrap().ty;
    assert_eq!(ty("pa"), ty("pb"), "struct point of both units is one type");
    assert_eq!(
        ty("na"),
        ty("nb"),
        "recursive struct node of both units is one type"
    );
    assert_ne!(ty("ca"), ty("cb"), "different struct config stay apart");
    assert_eq!(t.named("config").len(), 2);
    assert_eq!(t.named("point").len(), 1);
    let Type::Pointer {
        target: Some(decl), ..
    } = t.get(ty("op"))
    else {
        panic!()
    };
    assert_eq!(t.definition_of(*decl), ty("ob"));
    let counts: Vec<_> = bin.variables_named("count").collect();
    assert_eq!(counts.len(), 2);
    let cus: Vec<_> = counts
        .iter()
        .map(|v| match &v.kind {
            VariableKind::FileStatic { cu } => Path::new(cu).file_name().unwrap().to_owned(),
            k => panic!("{k:?}"),
        })
        .collect();
    assert_eq!(cus, ["a.c", "b.c"]);
    assert_ne!(counts[0].address, counts[1].address);
}

// ---------------------------------------------------------------------------------------
// Errors users see

fn err_text(r: Result<Binary, DebugInfoError>) -> (DebugInfoError, String) {
    let e = r.expect_err("load must fail");
    let s = e.to_string();
    (e, s)
}

#[test]
fn missing_non_elf_foreign_and_object_files_are_refused_by_name() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "debuginfo-errors");
    let missing = scratch.path("no-such-binary");
    let (e, s) = err_text(Binary::load(&missing));
    assert!(matches!(e, DebugInfoError::Io { .. }), "{e:?}");
    assert!(
        s.contains(missing.to_str().unwrap()) && s.contains("No such file"),
        "{s}"
    );

    let script = scratch.path("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
    let (e, s) = err_text(Binary::load(&script));
    assert!(matches!(e, DebugInfoError::NotElf { .. }), "{e:?}");
    assert!(
        s.contains(script.to_str().unwrap()) && s.contains("not an ELF file"),
        "{s}"
    );
    assert!(s.contains("#!/bin/sh"), "{s}");

    let empty = scratch.path("empty");
    std::fs::write(&empty, "").unwrap();
    let (_, s) = err_text(Binary::load(&empty));
    assert!(s.contains("empty"), "{s}");

    // The fixture with its e_machine patched to AArch64 (183).
    let mut data = std::fs::read(fixtures::path("types")).unwrap();
    data[18..20].copy_from_slice(&183u16.to_le_bytes());
    let arm = scratch.path("arm");
    std::fs::write(&arm, &data).unwrap();
    let (e, s) = err_text(Binary::load(&arm));
    assert!(
        matches!(e, DebugInfoError::WrongArchitecture { .. }),
        "{e:?}"
    );
    assert!(
        s.contains(arm.to_str().unwrap()) && s.contains("Aarch64") && s.contains("x86_64"),
        "{s}"
    );

    let obj = scratch.path("types.o");
    run(Command::new("gcc")
        .args(["-g", "-c", "-o"])
        .arg(&obj)
        .arg(types_source()));
    let (e, s) = err_text(Binary::load(&obj));
    assert!(matches!(e, DebugInfoError::UnsupportedKind { .. }), "{e:?}");
    assert!(s.contains("relocatable"), "{s}");
}

#[test]
fn stripped_binary_is_refused_with_what_was_searched() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "debuginfo-stripped");
    let exe = scratch.path("types-stripped");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&exe)
        .arg(fixtures::path("types")));
    let (e, s) = err_text(Binary::load(&exe));
    assert!(matches!(e, DebugInfoError::NoDebugInfo { .. }), "{e:?}");
    assert!(s.contains(exe.to_str().unwrap()), "{s}");
    assert!(
        s.contains("no .debug_info") && s.contains("stripped"),
        "{s}"
    );
    assert!(s.contains("/usr/lib/debug/.build-id/"), "{s}");
}

#[test]
fn separate_debug_file_is_found_by_debuglink_and_build_id() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "debuginfo-debuglink");
    let fixture = fixtures::path("types");
    let full = load_types();
    let dbg = scratch.path("types.debug");
    let exe = scratch.path("types");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&fixture)
        .arg(&dbg));
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&exe)
        .arg(&fixture));
    run(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", dbg.display()))
        .arg(&exe));

    // Next to the binary.
    let bin = Binary::load(&exe).unwrap();
    assert_eq!(bin.debug_file(), Some(dbg.as_path()));
    assert_eq!(summary(&bin), summary(&full));

    // In the .debug/ subdirectory.
    std::fs::create_dir(scratch.path(".debug")).unwrap();
    let sub = scratch.path(".debug/types.debug");
    std::fs::rename(&dbg, &sub).unwrap();
    let bin = Binary::load(&exe).unwrap();
    assert_eq!(bin.debug_file(), Some(sub.as_path()));

    // Under a debug root by build-id, with the debuglink target gone.
    let id: String = bin
        .build_id()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = scratch.path("root");
    let by_id = root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(by_id.parent().unwrap()).unwrap();
    std::fs::rename(&sub, &by_id).unwrap();
    let opts = LoadOptions {
        debug_roots: vec![root.clone()],
    };
    let bin = Binary::load_with(&exe, &opts).unwrap();
    assert_eq!(bin.debug_file(), Some(by_id.as_path()));
    assert_eq!(summary(&bin), summary(&full));

    // A debug file whose CRC and build-id do not match is not taken.
    std::fs::remove_file(&by_id).unwrap();
    let other = scratch.path("other");
    build_types(&other, &["-Wl,--build-id=md5"]);
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&other)
        .arg(scratch.path("types.debug")));
    let (e, s) = err_text(Binary::load_with(&exe, &opts));
    assert!(matches!(e, DebugInfoError::NoDebugInfo { .. }), "{e:?}");
    assert!(s.contains("does not match"), "{s}");
}

// ---------------------------------------------------------------------------------------
// Rust

const RUST_PROGRAM: &str = r#"
use std::sync::Mutex;
pub trait Shape { fn area(&self) -> u32; }
pub struct Square(pub u32);
impl Shape for Square { fn area(&self) -> u32 { self.0 * self.0 } }
pub enum Message { Quit, Move { x: i32, y: i32 }, Write(&'static str), Color(u8, u8, u8) }
#[derive(Debug, Clone, Copy)]
pub enum Level { Low = -1, High = 300 }
pub static OPT: Option<u32> = Some(7);
pub static RES: Result<u8, i64> = Err(-3);
pub static MSG: Message = Message::Move { x: 1, y: -1 };
pub static TEXT: &str = "hello";
pub static SLICE: &[u32] = &[1, 2, 3];
pub static NICHE: Option<&u32> = None;
pub static LEVEL: Level = Level::High;
pub static SHAPE: Mutex<Option<Box<dyn Shape + Send>>> = Mutex::new(None);
pub static ARR: [[u16; 3]; 2] = [[1, 2, 3], [4, 5, 6]];
static mut COUNTER: u64 = 5;
fn main() {
    *SHAPE.lock().unwrap() = Some(Box::new(Square(3)));
    unsafe { COUNTER += 1; }
    let b: Box<dyn Shape> = Box::new(Square(2));
    println!("{} {:?} {:?} {} {:?} {:?} {:?} {}", b.area(), OPT, RES, TEXT, SLICE, NICHE, LEVEL, ARR[1][2]);
    if let Message::Move { x, .. } = MSG { println!("{x}"); }
    if let Message::Quit | Message::Write(_) | Message::Color(..) = MSG { println!("other"); }
}
"#;

fn only(types: &Types, name: &str) -> TypeId {
    let ids = types.named(name);
    assert!(!ids.is_empty(), "no type named {name}");
    ids[0]
}

#[test]
fn rust_enums_fat_pointers_and_paths_are_modelled() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "debuginfo-rust");
    let src = scratch.path("shapes.rs");
    std::fs::write(&src, RUST_PROGRAM).unwrap();
    let exe = scratch.path("shapes");
    run(Command::new("rustc")
        .args(["-g", "-C", "opt-level=0", "--edition", "2021", "-o"])
        .arg(&exe)
        .arg(&src));
    let bin = Binary::load(&exe).unwrap();
    let t = bin.types();
    let ours = bin
        .units()
        .iter()
        .find(|u| u.name.contains("shapes.rs"))
        .expect("the program's unit");
    assert_eq!(ours.language, Language::Rust);

    // Statics by path, with their Rust type names.
    let var = |n: &str| bin.variable(n).unwrap_or_else(|| panic!("static {n}"));
    assert_eq!(t.name(var("shapes::OPT").ty), "core::option::Option<u32>");
    assert_eq!(
        t.name(var("shapes::RES").ty),
        "core::result::Result<u8, i64>"
    );
    assert_eq!(t.name(var("shapes::TEXT").ty), "&str");
    assert_eq!(t.name(var("shapes::SLICE").ty), "&[u32]");
    assert_eq!(t.name(var("shapes::ARR").ty), "[[u16; 3]; 2]");
    assert_eq!(var("shapes::ARR").size, Some(12));
    assert!(matches!(
        var("shapes::COUNTER").kind,
        VariableKind::FileStatic { .. }
    ));

    // gdb agrees on the type names, sizes and addresses of every static of the program.
    let statics: Vec<_> = bin
        .variables()
        .iter()
        .filter(|v| v.name.starts_with("shapes::"))
        .collect();
    assert_eq!(statics.len(), 10, "{statics:?}");
    let mut cmds = Vec::new();
    for v in &statics {
        cmds.push(format!("whatis {}", v.name));
        cmds.push(format!("print sizeof({})", v.name));
        cmds.push(format!("print &{}", v.name));
    }
    let out = gdb(&exe, &cmds);
    for (v, o) in statics.iter().zip(out.chunks(3)) {
        assert_eq!(t.name(v.ty), gdb_type(&o[0]), "{}", v.name);
        assert_eq!(v.size, gdb_number(&o[1]), "{}", v.name);
        assert_eq!(Some(v.address), gdb_address(&o[2]), "{}", v.name);
    }

    // Option<u32>: tagged, discriminant u32 at 0, Some's payload at 4.
    let opt = only(t, "core::option::Option<u32>");
    let Type::VariantEnum(e) = t.get(opt) else {
        panic!("{:?}", t.get(opt))
    };
    assert_eq!(e.size, Some(8));
    let d = e.discriminant.as_ref().unwrap();
    assert_eq!((d.offset, t.byte_size(d.ty)), (0, Some(4)));
    let vs: Vec<_> = e
        .variants
        .iter()
        .map(|v| (v.name.as_deref(), v.discr_value))
        .collect();
    assert_eq!(vs, [(Some("None"), Some(0)), (Some("Some"), Some(1))]);
    let some = e.variant_for(1).unwrap();
    assert_eq!(t.name(some.ty), "core::option::Option<u32>::Some");
    let Type::Struct(payload) = t.get(some.ty) else {
        panic!()
    };
    assert_eq!(payload.members[0].name.as_deref(), Some("__0"));
    assert_eq!(payload.members[0].offset, 4);

    // Option<&u32>: niche; None is 0, Some is the default variant.
    let niche = only(t, "core::option::Option<&u32>");
    let Type::VariantEnum(e) = t.get(niche) else {
        panic!()
    };
    assert_eq!(e.variant_for(0).unwrap().name.as_deref(), Some("None"));
    assert_eq!(
        e.variant_for(0x5555_0000).unwrap().name.as_deref(),
        Some("Some")
    );
    assert_eq!(e.variants[1].discr_value, None);

    // Result<u8, i64> and a user enum with data.
    let Type::VariantEnum(r) = t.get(only(t, "core::result::Result<u8, i64>")) else {
        panic!()
    };
    let names: Vec<_> = r
        .variants
        .iter()
        .map(|v| v.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["Ok", "Err"]);
    let Type::VariantEnum(m) = t.get(var("shapes::MSG").ty) else {
        panic!()
    };
    let names: Vec<_> = m
        .variants
        .iter()
        .map(|v| v.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["Quit", "Move", "Write", "Color"]);
    let mv = m
        .variants
        .iter()
        .find(|v| v.name.as_deref() == Some("Move"))
        .unwrap();
    let Type::Struct(fields) = t.get(mv.ty) else {
        panic!()
    };
    let fnames: Vec<_> = fields
        .members
        .iter()
        .map(|f| f.name.as_deref().unwrap())
        .collect();
    assert_eq!(fnames, ["x", "y"]);

    // A fieldless enum with explicit negative and wide discriminants.
    let Type::Enum(level) = t.get(var("shapes::LEVEL").ty) else {
        panic!()
    };
    assert!(level.signed);
    assert_eq!(
        level.enumerators,
        [("Low".to_string(), -1), ("High".to_string(), 300)]
    );

    // Fat pointers.
    let fp = t.fat_pointer(var("shapes::TEXT").ty).unwrap();
    assert_eq!(
        (fp.kind, fp.data_offset, fp.meta_offset),
        (FatPointerKind::Str, 0, 8)
    );
    let fp = t.fat_pointer(var("shapes::SLICE").ty).unwrap();
    assert_eq!(fp.kind, FatPointerKind::Slice);
    assert_eq!(t.name(fp.pointee.unwrap()), "u32");
    let boxed = only(
        t,
        "alloc::boxed::Box<(dyn shapes::Shape + core::marker::Send), alloc::alloc::Global>",
    );
    let fp = t.fat_pointer(boxed).unwrap();
    assert_eq!(
        (fp.kind, fp.data_offset, fp.meta_offset),
        (FatPointerKind::Dyn, 0, 8)
    );
    assert_eq!(
        t.name(fp.pointee.unwrap()),
        "(dyn shapes::Shape + core::marker::Send)"
    );
    assert!(t.fat_pointer(opt).is_none());

    // Functions by path.
    assert!(bin.functions().iter().any(|f| f.name == "shapes::main"));
}

// ---------------------------------------------------------------------------------------
// Debian's libc, with debug info in /usr/lib/debug/.build-id (package libc6-dbg)

#[test]
fn libc_main_arena_is_found_in_its_build_id_debug_file() {
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let start = Instant::now();
    let bin = Binary::load(libc).unwrap_or_else(|e| panic!("{e}"));
    let took = start.elapsed();
    eprintln!(
        "libc: loaded in {took:?}: {} units, {} type DIEs merged into {} types, {} variables, {} functions, debug file {:?}",
        bin.units().len(),
        bin.stats().type_dies,
        bin.stats().types,
        bin.variables().len(),
        bin.functions().len(),
        bin.debug_file()
    );
    let dbg = bin.debug_file().expect("a separate debug file");
    assert!(
        dbg.starts_with("/usr/lib/debug/.build-id/"),
        "{}",
        dbg.display()
    );
    assert!(bin.is_pie());

    let arena = bin.variable("main_arena").expect("main_arena");
    match &arena.kind {
        VariableKind::FileStatic { cu } => assert!(cu.ends_with("malloc.c"), "{cu}"),
        k => panic!("main_arena is {k:?}"),
    }
    let mp = bin.variable("mp_").expect("mp_");
    let out = gdb(
        libc,
        &[
            "whatis main_arena".into(),
            "print sizeof(main_arena)".into(),
            "print &main_arena".into(),
            "whatis mp_".into(),
            "print sizeof(mp_)".into(),
            "print &mp_".into(),
            "ptype /o struct malloc_state".into(),
        ],
    );
    assert_eq!(bin.type_name(arena.ty), gdb_type(&out[0]));
    assert_eq!(arena.size, gdb_number(&out[1]));
    assert_eq!(Some(arena.address), gdb_address(&out[2]));
    assert_eq!(bin.type_name(mp.ty), gdb_type(&out[3]));
    assert_eq!(mp.size, gdb_number(&out[4]));
    assert_eq!(Some(mp.address), gdb_address(&out[5]));
    let mut model = Vec::new();
    model_layout(bin.types(), arena.ty, 0, &mut model);
    assert_eq!(model, gdb_layout(libc, "struct malloc_state"));

    // Exported functions are named; thread-locals such as tcache are listed apart.
    let malloc = bin.symbol("malloc").expect("malloc symbol");
    assert!(bin.function_containing(malloc.address).is_some());
    assert!(bin.thread_locals().iter().any(|t| t.name == "tcache"));
    // Generous bound for an unoptimised test build; see the report for release timings.
    assert!(took.as_secs() < 30, "loading libc took {took:?}");
}
