//! `transplant demo`: builds the bundled example server pair (a hash-table key-value server,
//! v1 and v2, C, from sources compiled into this binary), starts v1, fills it, drives clients
//! against it, updates it live to v2, shows what happened, and cleans up.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};
use transplant::update;

const SERVER_H: &str = include_str!("../../fixtures/c/upd_server.h");
const V1: &str = include_str!("../../fixtures/c/upd_hash_v1.c");
const V2: &str = include_str!("../../fixtures/c/upd_hash_v2.c");
const KEYS: usize = 200;

/// Runs the demo. Exit status 0 when the update committed and the clients saw no failure.
pub fn run() -> anyhow::Result<ExitCode> {
    let dir = TempDir::new()?;
    println!("transplant demo: a key-value server (hash table, string keys, callbacks) updated live from v1 to v2");
    println!(
        "1. building the example pair with gcc -g -O0 in {}",
        dir.0.display()
    );
    let v1 = build(&dir.0, "server_v1", V1)?;
    let v2 = build(&dir.0, "server_v2", V2)?;

    let mut server = Server::start(&v1)?;
    let port = server.port;
    let old_pid = server.child.id() as i32;
    println!("2. started v1: pid {old_pid}, listening on 127.0.0.1:{port}");
    let mut c = Client::connect(port)?;
    for i in 0..KEYS {
        let v = if i % 3 == 0 {
            format!("text{i}")
        } else {
            (i as i64 * 7 - 300).to_string()
        };
        c.expect(&format!("SET key{i:03} {v}"), "OK")?;
    }
    let dump_before = c.dump()?;
    let sum_before = c.ask("SUM")?;
    println!("   put {KEYS} keys into it: {sum_before}");

    println!("3. clients keep sending requests during the update: one on a connection opened before it, one opening a fresh connection per request");
    let load = Load::start(port);
    load.wait_for(50);

    println!("4. updating process {old_pid} to {} ...", v2.display());
    let cfg = update::Config::new(tracer::Pid::from_raw(old_pid), &v2);
    let report = update::update(&cfg).map_err(|a| anyhow::anyhow!("{a}"))?;
    let committed = report.committed();
    let new_pid = report.new_pid;
    // Let the clients run against the new version for a while.
    let seen = load.served();
    if committed {
        load.wait_for(seen + 50);
    }
    let view = load.stop();
    let mut out = std::io::stdout().lock();
    super::update::print_report(&mut out, &report, &v2)?;
    drop(out);
    server.reaped_by_update = committed;

    let mut ok = committed;
    if committed {
        let mut c2 = Client::connect(port)?;
        let version = c2.ask("VERSION")?;
        let same = c2.dump()? == dump_before && c2.ask("SUM")? == sum_before;
        let check = c2.ask("CHECK")?;
        println!("5. after the update, port {port} is served by process {} ({version}): all {KEYS} keys {}; its self-check: {check}",
            new_pid.unwrap_or(0), if same { "are there" } else { "are NOT the same" });
        ok &= version == "v2" && same && check == "PASS";
    }
    println!(
        "6. the clients' view: {} requests answered, {} failed, {} connections refused, persistent connection {}",
        view.served,
        view.failed,
        view.refused,
        if view.persistent_dropped { "DROPPED" } else { "kept through the update" }
    );
    ok &= view.failed == 0 && view.refused == 0 && !view.persistent_dropped;

    // Clean up: the new version is our child (we spawned it).
    if let Some(pid) = new_pid.filter(|_| committed) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    drop(server);
    println!(
        "7. cleaned up: servers stopped, {} removed",
        dir.0.display()
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn build(dir: &Path, name: &str, source: &str) -> anyhow::Result<PathBuf> {
    std::fs::write(dir.join("upd_server.h"), SERVER_H)?;
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source)?;
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(["-g", "-O0", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("running gcc (the demo compiles its example servers; install gcc)")?;
    if !status.success() {
        bail!("gcc failed to build {}", src.display());
    }
    Ok(out)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("transplant-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The v1 server, killed on drop unless the update replaced it.
struct Server {
    child: Child,
    /// Its standard output, kept open: the new version inherits it and prints its own ready
    /// line there at start-up (with nobody reading, that would kill it with SIGPIPE).
    _stdout: BufReader<std::process::ChildStdout>,
    port: u16,
    reaped_by_update: bool,
}

impl Server {
    fn start(program: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(program)
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        stdout.read_line(&mut line)?;
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected first line from the server: {line:?}"))?;
        Ok(Server {
            child,
            _stdout: stdout,
            port,
            reaped_by_update: false,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.reaped_by_update {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A line client.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn ask(&mut self, line: &str) -> std::io::Result<String> {
        self.w.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.r.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(reply.trim_end().to_owned())
    }

    fn expect(&mut self, line: &str, want: &str) -> anyhow::Result<()> {
        let got = self.ask(line)?;
        if got != want {
            bail!("{line}: expected {want:?}, got {got:?}");
        }
        Ok(())
    }

    fn dump(&mut self) -> std::io::Result<Vec<String>> {
        self.w.write_all(b"DUMP\n")?;
        let mut out = Vec::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = l.trim_end().to_owned();
            if l == "END" {
                return Ok(out);
            }
            out.push(l);
        }
    }
}

/// What the clients saw.
struct View {
    served: u64,
    failed: u64,
    refused: u64,
    persistent_dropped: bool,
}

/// Two client threads: a persistent connection and fresh connections, each request checked.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<bool>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for persistent in [true, false] {
            let (stop, served, failed, refused) = (
                stop.clone(),
                served.clone(),
                failed.clone(),
                refused.clone(),
            );
            threads.push(thread::spawn(move || {
                let mut conn = if persistent {
                    Client::connect(port).ok()
                } else {
                    None
                };
                let mut dropped = persistent && conn.is_none();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("key{:03}", (i as usize * 7) % KEYS);
                    let mut fresh;
                    let c = if persistent {
                        match conn.as_mut() {
                            Some(c) => c,
                            None => break,
                        }
                    } else {
                        match Client::connect(port) {
                            Ok(c) => {
                                fresh = c;
                                &mut fresh
                            }
                            Err(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    };
                    match c.ask(&format!("GET {key}")) {
                        Ok(r) if r.starts_with(&format!("VALUE {key}=")) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if persistent {
                                dropped = true;
                                conn = None;
                            }
                        }
                    }
                }
                dropped
            }));
        }
        Load {
            stop,
            served,
            failed,
            refused,
            threads,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests were answered (or a client thread ended).
    fn wait_for(&self, n: u64) {
        while self.served() < n && self.threads.iter().all(|t| !t.is_finished()) {
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop(self) -> View {
        self.stop.store(true, Ordering::Relaxed);
        let mut persistent_dropped = false;
        for t in self.threads {
            persistent_dropped |= t.join().unwrap_or(true);
        }
        View {
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            persistent_dropped,
        }
    }
}
