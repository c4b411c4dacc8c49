//! `transplant::inspect::globals` held against gdb as an oracle: for every global, static and
//! thread-local variable of the `types`, `datastructs` and `print_values` fixtures, the value
//! we render must be the text gdb 13's `print` shows, after normalising whitespace.
//!
//! The list of variables comes from our debug info (so a variable gdb cannot print fails too).
//! Each fixture is inspected by us, then by one batch gdb run that prints every variable (gdb
//! attaches, prints and detaches; we wait for it to exit, killing it after a time limit), then
//! by us again: both of our reads must agree, which also shows that the process came out of
//! each inspection unharmed, and the fixture must still answer afterwards.
//!
//! gdb runs in the C locale (the printer renders gdb's ASCII host charset). Each fixture is
//! checked twice: with separate debug files found as usual (libc's, if installed, names code
//! pointers into libc by DWARF), and with them hidden from both gdb and us (ELF symbols only).
//! A program of two compilation units built here checks the names we give statics that only a
//! file or function qualifier tells apart (`'a.c'::count`, `'b.c'::helper::n`).

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fixtures::Fixture;
use transplant::debuginfo::LoadOptions;
use transplant::inspect::{globals_with, Globals};

/// How long one gdb run may take before it is killed.
const GDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Where separate debug files are looked for, by gdb and by us alike.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DebugFiles {
    /// gdb's default `/usr/lib/debug`.
    Default,
    /// None: libraries are named by their ELF symbols only.
    Hidden,
}

impl DebugFiles {
    fn load_options(self) -> LoadOptions {
        match self {
            DebugFiles::Default => LoadOptions::default(),
            DebugFiles::Hidden => LoadOptions {
                debug_roots: Vec::new(),
            },
        }
    }
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs gdb once on `pid`, printing each of `names`; returns gdb's value text per name (absent
/// when gdb printed none) and its stderr. gdb has exited when this returns.
fn gdb_print(pid: i32, names: &[String], debug: DebugFiles) -> (HashMap<String, String>, String) {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    if debug == DebugFiles::Hidden {
        cmd.args(["-iex", "set debug-file-directory /nonexistent"]);
    }
    cmd.args(["-p", &pid.to_string()]);
    for (i, n) in names.iter().enumerate() {
        cmd.arg("-ex").arg(format!("echo @@var {i}\\n"));
        cmd.arg("-ex").arg(format!("print {n}"));
    }
    cmd.env("LC_ALL", "C")
        .env_remove("LANG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("gdb is not installed; this test uses it as the oracle (apt-get install gdb)")
        }
        Err(e) => panic!("cannot run gdb: {e}"),
    };
    let (tx, rx) = mpsc::channel();
    for (which, mut pipe) in [
        (
            0,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (
            1,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            let _ = tx.send((which, s));
        });
    }
    let mut outputs = [None, None];
    for _ in 0..2 {
        match rx.recv_timeout(GDB_TIMEOUT) {
            Ok((which, s)) => outputs[which] = Some(s),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gdb did not finish within {GDB_TIMEOUT:?}");
            }
        }
    }
    // Both pipes are closed: gdb is exiting (and has detached); reap it.
    let status = child.wait().expect("wait for gdb");
    let [stdout, stderr] = outputs.map(Option::unwrap);
    assert!(
        status.success(),
        "gdb failed ({status}):\n{stdout}\n{stderr}"
    );

    let mut values = HashMap::new();
    let mut current: Option<usize> = None;
    for line in stdout.lines() {
        if let Some(i) = line.strip_prefix("@@var ") {
            current = Some(i.trim().parse().expect("marker index"));
        } else if let (Some(i), Some(rest)) = (current, line.strip_prefix('$')) {
            if let Some((_, value)) = rest.split_once(" = ") {
                values.insert(names[i].clone(), value.to_owned());
                current = None;
            }
        }
    }
    (values, stderr)
}

/// The whole check for one fixture: see the module documentation.
fn check_against_gdb(fixture: &str, args: &[&str], debug: DebugFiles, liveness: (&str, &str)) {
    let (mut f, _) = Fixture::start_ready(fixture, args);
    let globals = check_process(fixture, f.pid(), debug);
    assert!(!globals.globals.is_empty(), "{fixture}: no globals found");

    // The fixture carries on after three inspections.
    let reply = f.ask(liveness.0, liveness.1);
    assert!(reply.starts_with(liveness.1), "{fixture}: {reply}");
}

/// Inspects `pid`, has gdb print every variable we found, inspects again, and asserts that
/// both of our reads agree and equal gdb's. Returns our second read.
fn check_process(fixture: &str, pid: tracer::Pid, debug: DebugFiles) -> Globals {
    let options = debug.load_options();

    let before: Globals = globals_with(pid, &options).expect("inspect before gdb");
    let names: Vec<String> = before.globals.iter().map(|g| g.name.clone()).collect();

    let (gdb, gdb_stderr) = gdb_print(pid.as_raw(), &names, debug);

    let after: Globals = globals_with(pid, &options).expect("inspect after gdb");
    assert_eq!(
        before.globals, after.globals,
        "{fixture}: two inspections of an idle process differ"
    );

    let mut failures = Vec::new();
    for g in &after.globals {
        let ours = match (&g.value, &g.warning) {
            (Some(v), _) => v.clone(),
            (None, w) => format!("<warning: {}>", w.as_deref().unwrap_or("?")),
        };
        match gdb.get(&g.name) {
            None => failures.push(format!("{}: gdb printed nothing (we: {ours})", g.name)),
            Some(theirs) if normalise(theirs) != normalise(&ours) => {
                failures.push(format!("{}:\n   gdb: {theirs}\n    us: {ours}", g.name))
            }
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{fixture} ({debug:?} debug files): {} of {} variables differ from gdb:\n{}\n\
         gdb's stderr:\n{gdb_stderr}",
        failures.len(),
        after.globals.len(),
        failures.join("\n")
    );
    after
}

#[test]
fn types_match_gdb() {
    check_against_gdb("types", &[], DebugFiles::Default, ("checksum", "CHECKSUM"));
}

#[test]
fn types_match_gdb_without_library_debug_files() {
    check_against_gdb("types", &[], DebugFiles::Hidden, ("checksum", "CHECKSUM"));
}

#[test]
fn datastructs_match_gdb() {
    check_against_gdb("datastructs", &[], DebugFiles::Default, ("sum", "SUM"));
}

#[test]
fn datastructs_match_gdb_without_library_debug_files() {
    check_against_gdb("datastructs", &["3"], DebugFiles::Hidden, ("sum", "SUM"));
}

#[test]
fn print_values_match_gdb() {
    check_against_gdb("print_values", &[], DebugFiles::Default, ("ping", "PONG"));
}

#[test]
fn print_values_match_gdb_without_library_debug_files() {
    check_against_gdb("print_values", &[], DebugFiles::Hidden, ("ping", "PONG"));
}

/// Two compilation units with a file static of the same name in each, a global and a file
/// static sharing a name, and same-named static functions each with a static: the names we
/// give (`'a.c'::count`, `'b.c'::helper::n`, ...) must be ones gdb accepts, with its values.
#[test]
fn two_units_are_named_as_gdb_accepts() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("inspect-two-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let a = "#include <stdio.h>\n#include <unistd.h>\n\
             static int count = 1;\nint shared = 10;\n\
             static int helper(void) { static int n = 100; return ++n + count; }\n\
             int b_main(void);\n\
             int main(void) { helper(); b_main(); printf(\"READY pid=%d\\n\", getpid());\n\
             fflush(stdout); char c; while (read(0, &c, 1) > 0) {} return 0; }\n";
    let b = "static int count = 2;\nstatic int shared = 20;\n\
             static int helper(void) { static int n = 200; return ++n + count + shared; }\n\
             int b_main(void) { return helper(); }\n";
    std::fs::write(dir.join("a.c"), a).unwrap();
    std::fs::write(dir.join("b.c"), b).unwrap();
    let exe = dir.join("two");
    let out = Command::new("gcc")
        .args(["-g", "-O0", "-fno-omit-frame-pointer", "-Wall", "-o"])
        .arg(&exe)
        .arg(dir.join("a.c"))
        .arg(dir.join("b.c"))
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    /// Kills and reaps the program however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut program = Running(
        Command::new(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start two-unit program"),
    );
    let pid = tracer::Pid::from_raw(program.0.id() as i32);
    let _stdin = program.0.stdin.take();
    let mut lines = fixtures::LineReader::new(program.0.stdout.take().unwrap());
    let ready = lines.line(fixtures::LINE_TIMEOUT).expect("READY line");
    assert!(ready.starts_with("READY"), "{ready}");

    let globals = check_process("two units", pid, DebugFiles::Default);
    let mut names: Vec<&str> = globals.globals.iter().map(|g| g.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "'a.c'::count",
            "'a.c'::helper::n",
            "'b.c'::count",
            "'b.c'::helper::n",
            "'b.c'::shared",
            "shared",
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
