//! Symbol lookups in real processes, checked against the addresses the process itself prints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Arc;

use fixtures::{Fixture, LineReader, Reaper, LINE_TIMEOUT};
use tracer::symbols::{self, ObjectRole, SymbolKind, SymbolResolver};
use tracer::{Error, Memory, Pid, ProcessMemory, RemoteAddr};

fn addr(ready: &HashMap<String, String>, key: &str) -> RemoteAddr {
    RemoteAddr::new(u64::from_str_radix(ready[key].trim_start_matches("0x"), 16).unwrap())
}

#[test]
fn lookups_match_the_process_own_addresses() {
    let (f, ready) = Fixture::start_ready("procfs_symbols", &[]);
    let pid = f.pid();
    let r = SymbolResolver::new(pid).unwrap();

    assert_eq!(r.lookup("main").unwrap(), addr(&ready, "main"));
    // A file-static function: only in .symtab.
    let helper = r.lookup_symbol("static_helper").unwrap();
    assert_eq!(helper.addr, addr(&ready, "helper"));
    assert_eq!(helper.symbol.kind, SymbolKind::Function);
    assert!(!helper.symbol.dynamic);
    // The program does not define malloc, so the search reaches libc.
    let malloc = r.lookup_symbol("malloc").unwrap();
    assert_eq!(malloc.addr, addr(&ready, "malloc"));
    assert!(malloc.object.to_str().unwrap().contains("libc.so"));
    assert_eq!(
        r.lookup_in("libc.so", "malloc").unwrap(),
        addr(&ready, "malloc")
    );
    assert_eq!(
        symbols::lookup_in(pid, "libc.so.6", "malloc").unwrap(),
        addr(&ready, "malloc")
    );

    // A data symbol: its size comes from the ELF table and its bytes are what the C source says.
    let global = r.lookup_symbol("procfs_global").unwrap();
    assert_eq!(global.addr, addr(&ready, "global"));
    assert_eq!(
        (global.symbol.kind, global.symbol.size),
        (SymbolKind::Object, 32)
    );
    let mem = ProcessMemory::new(pid);
    assert_eq!(mem.read_u64(global.addr).unwrap(), 0x5452_414e_5350_4c41);
    assert_eq!(
        mem.read_u64(global.addr.checked_add(8).unwrap()).unwrap(),
        2
    );

    // The free functions agree with the resolver.
    assert_eq!(symbols::lookup(pid, "procfs_global").unwrap(), global.addr);
}

#[test]
fn objects_are_found_with_their_roles_and_biases() {
    let (f, ready) = Fixture::start_ready("procfs_symbols", &[]);
    let r = SymbolResolver::new(f.pid()).unwrap();
    let objs = r.objects();
    // Search order: program, libraries, dynamic linker, vDSO.
    assert_eq!(objs[0].role, ObjectRole::Main);
    assert_eq!(
        objs[0].path,
        fixtures::path("procfs_symbols").canonicalize().unwrap()
    );
    assert_eq!(objs.last().unwrap().role, ObjectRole::Vdso);
    assert_eq!(
        objs.iter()
            .filter(|o| o.role == ObjectRole::Interpreter)
            .count(),
        1
    );
    let libc = objs.iter().find(|o| o.file_name() == "libc.so.6").unwrap();
    assert_eq!(libc.role, ObjectRole::Library);
    // Only ELF objects: no locale files or other data mappings.
    assert!(objs
        .iter()
        .all(|o| o.role == ObjectRole::Vdso || o.inode != 0));
    // The program is PIE (gcc's default): its bias is its base, and main is inside it.
    assert_eq!(objs[0].bias, objs[0].base.get());
    assert!(objs[0].range.contains(addr(&ready, "main")));
    assert!(objs[0].range.contains(addr(&ready, "global")));
    assert!(libc.range.contains(addr(&ready, "malloc")));
    // Same answer as the free function, which lists by address.
    let mut listed = symbols::loaded_objects(f.pid()).unwrap();
    assert!(listed.windows(2).all(|w| w[0].base < w[1].base));
    listed.sort_by_key(|o| o.path.clone());
    let mut ordered = objs.to_vec();
    ordered.sort_by_key(|o| o.path.clone());
    assert_eq!(listed, ordered);

    // The vDSO is read from memory; its functions are inside its mapping.
    let gettime = r.lookup_in("[vdso]", "__vdso_clock_gettime").unwrap();
    let maps = tracer::procfs::maps(f.pid()).unwrap();
    let vdso = maps
        .iter()
        .find(|m| m.kind == tracer::procfs::MappingKind::Vdso)
        .unwrap();
    assert!(vdso.range.contains(gettime));
}

#[test]
fn tables_are_parsed_once() {
    let (f, _) = Fixture::start_ready("procfs_symbols", &[]);
    let r = SymbolResolver::new(f.pid()).unwrap();
    let first = r.symbols(0).unwrap();
    r.lookup("main").unwrap();
    assert!(Arc::ptr_eq(&first, &r.symbols(0).unwrap()));
    let mut r = r;
    r.refresh().unwrap();
    assert!(
        Arc::ptr_eq(&first, &r.symbols(0).unwrap()),
        "refresh keeps unchanged objects"
    );
}

#[test]
fn reverse_lookup_names_functions_and_data() {
    let (f, ready) = Fixture::start_ready("procfs_symbols", &[]);
    let r = SymbolResolver::new(f.pid()).unwrap();
    let exe = fixtures::path("procfs_symbols").canonicalize().unwrap();

    let main = addr(&ready, "main");
    let at = r.symbol_at(main.checked_add(3).unwrap()).unwrap().unwrap();
    assert_eq!(
        (at.object.as_path(), at.name.as_str(), at.offset),
        (exe.as_path(), "main", 3)
    );
    assert_eq!((at.symbol_addr, at.kind), (main, SymbolKind::Function));

    let global = addr(&ready, "global");
    let at = r
        .symbol_at(global.checked_add(20).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (at.name.as_str(), at.offset, at.kind),
        ("procfs_global", 20, SymbolKind::Object)
    );
    // Past its 32 bytes it is no longer the global.
    let after = r.symbol_at(global.checked_add(32).unwrap()).unwrap();
    assert!(
        after.as_ref().is_none_or(|a| a.name != "procfs_global"),
        "{after:?}"
    );

    // A function pointer into libc names the public symbol, and round-trips.
    let malloc = addr(&ready, "malloc");
    let at = symbols::symbol_at(f.pid(), malloc).unwrap().unwrap();
    assert_eq!((at.name.as_str(), at.offset), ("malloc", 0));
    assert!(at.object.to_str().unwrap().contains("libc.so"));
    assert_eq!(r.lookup_in("libc.so", &at.name).unwrap(), malloc);

    // Heap memory is in no object.
    assert_eq!(r.symbol_at(addr(&ready, "heap")).unwrap(), None);
}

#[test]
fn missing_symbols_are_named_in_the_error() {
    let (f, _) = Fixture::start_ready("procfs_symbols", &[]);
    let r = SymbolResolver::new(f.pid()).unwrap();
    match r.lookup("no_such_symbol_anywhere") {
        Err(Error::SymbolNotFound { pid, name }) => {
            assert_eq!(pid, f.pid());
            assert_eq!(name, "no_such_symbol_anywhere");
        }
        other => panic!("{other:?}"),
    }
    // main is the program's, not libc's.
    match r.lookup_in("libc.so", "main") {
        Err(Error::SymbolNotFound { name, .. }) => {
            assert!(name.contains("main") && name.contains("libc.so"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        r.lookup_in("libnothing.so", "malloc"),
        Err(Error::SymbolNotFound { .. })
    ));
}

/// A copy of a fixture run from a scratch directory, so the test can delete or replace the
/// binary under it. Killed and reaped on drop.
struct CopiedFixture {
    _stdin: ChildStdin,
    reaper: Reaper,
    ready: HashMap<String, String>,
    exe: PathBuf,
}

// The child is reaped by its `Reaper` (waitpid on drop), not through `Child`.
#[allow(clippy::zombie_processes)]
fn start_copy(name: &str, test: &str) -> CopiedFixture {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("symbols-{test}"));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join(name);
    let _ = std::fs::remove_file(&exe);
    std::fs::copy(fixtures::path(name), &exe).unwrap();
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reaper = Reaper(Pid::from_raw(child.id() as i32));
    let mut out = LineReader::new(child.stdout.take().unwrap());
    let ready = loop {
        let line = out.line(LINE_TIMEOUT).unwrap();
        if let Some(rest) = line.strip_prefix("READY") {
            break fixtures::parse_fields(rest);
        }
    };
    CopiedFixture {
        _stdin: child.stdin.take().unwrap(),
        reaper,
        ready,
        exe,
    }
}

#[test]
fn a_replaced_binary_still_resolves() {
    let p = start_copy("procfs_symbols", "replaced");
    // Replace the program file by another one, as installing a new version would.
    std::fs::remove_file(&p.exe).unwrap();
    std::fs::copy(fixtures::path("report"), &p.exe).unwrap();

    let r = SymbolResolver::new(p.reaper.0).unwrap();
    let main = &r.objects()[0];
    assert_eq!(main.role, ObjectRole::Main);
    assert!(main.deleted);
    assert_eq!(main.path, p.exe.canonicalize().unwrap());
    // Resolved in the mapped (old) file, not the new file at the same path.
    assert_eq!(r.lookup("main").unwrap(), addr(&p.ready, "main"));
    assert_eq!(r.lookup("static_helper").unwrap(), addr(&p.ready, "helper"));
    let at = r.symbol_at(addr(&p.ready, "global")).unwrap().unwrap();
    assert_eq!(at.name, "procfs_global");
}
