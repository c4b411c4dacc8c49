//! The epoll version pair (`fixtures/c/upd_epoll_v1.c` / `_v2.c`) behaves as documented before
//! any update: the line protocol, the kernel sources behind its epoll set (eventfd, timerfd,
//! signalfd, self-pipe, listening socket) and an epoll set whose data words are pointers, one to
//! a global and the rest to heap objects, as the kernel itself reports them in
//! `/proc/PID/fdinfo`.
//!
//! Synchronisation is through the fixture only. A `STATS` sent after `kill(SIGUSR1)` returned
//! (or after the reply to `POKE`/`PIPE`) counts it: the signal is pending, or the eventfd or
//! pipe readable, before the request is even sent, and `STATS` drains those sources without
//! blocking before it answers (the epoll loop alone would be racy: an epoll_wait that is
//! already scanning its ready list can report the request before the signalfd). Timer ticks are
//! awaited with `TICKS n`, whose reply the server holds back until it has counted `n` ticks.

use std::collections::HashMap;
use std::path::PathBuf;

use fixtures::{Fixture, LineClient};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A started fixture server and a connection to it.
struct Server {
    f: Fixture,
    port: u16,
    c: LineClient,
}

impl Server {
    fn start(name: &str) -> Self {
        let (f, fields) = Fixture::start_ready(name, &["0"]);
        let port: u16 = fields["port"].parse().expect("port");
        assert_eq!(fields["pid"].parse::<i32>().unwrap(), f.pid().as_raw());
        let c = LineClient::connect(port);
        Server { f, port, c }
    }

    fn pid(&self) -> Pid {
        self.f.pid()
    }

    /// `STATS` as a map of its `k=v` fields.
    fn stats(&mut self) -> HashMap<String, u64> {
        let line = self.c.ask("STATS");
        let m: HashMap<String, u64> = line
            .split_whitespace()
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("STATS {line:?}"));
                (
                    k.to_owned(),
                    v.parse().unwrap_or_else(|_| panic!("{line:?}")),
                )
            })
            .collect();
        for k in ["conns", "ticks", "events", "signals", "pipe"] {
            assert!(m.contains_key(k), "STATS {line:?} lacks {k}");
        }
        m
    }
}

/// One `tfd:` line of an epoll fdinfo.
#[derive(Debug)]
struct Registration {
    tfd: i32,
    events: u32,
    data: u64,
}

/// The fd number of the (only) epoll instance of `pid`.
fn epoll_fd(pid: Pid) -> i32 {
    let mut found = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd") {
        let e = e.unwrap();
        if std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]") {
            found.push(e.file_name().to_str().unwrap().parse::<i32>().unwrap());
        }
    }
    assert_eq!(found.len(), 1, "epoll fds of {pid}: {found:?}");
    found[0]
}

/// The registrations of the epoll instance of `pid` (proc(5): `tfd: N events: HEX data: HEX`).
fn registrations(pid: Pid) -> Vec<Registration> {
    let epfd = epoll_fd(pid);
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")).unwrap();
    info.lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!((w[0], w[2], w[4]), ("tfd:", "events:", "data:"), "{l}");
            Registration {
                tfd: w[1].parse().unwrap(),
                events: u32::from_str_radix(w[3], 16).unwrap(),
                data: u64::from_str_radix(w[5], 16).unwrap(),
            }
        })
        .collect()
}

/// What `/proc/PID/fd/N` links to.
fn fd_target(pid: Pid, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The pathname of the mapping of `pid` that holds `addr` ("" for an anonymous one).
fn mapping_of(pid: Pid, addr: u64) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines().find_map(|l| {
        let (range, rest) = l.split_once(' ')?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        (lo..hi)
            .contains(&addr)
            .then(|| rest.split_whitespace().nth(4).unwrap_or("").to_owned())
    })
}

/// The inode of the socket of `pid` listening on 127.0.0.1:`port` (from `/proc/PID/net/tcp`).
fn listener_inode(pid: Pid, port: u16) -> u64 {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let local = format!("0100007F:{port:04X}");
    tcp.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w[1] == local && w[3] == "0A")
        .map(|w| w[9].parse().unwrap())
        .unwrap_or_else(|| panic!("no listener on {local} in\n{tcp}"))
}

/// The same writes to both versions: same replies, same DUMP and SUM.
#[test]
fn protocol_is_the_same_in_both_versions() {
    let mut dumps = Vec::new();
    for (name, version) in [("upd_epoll_v1", "v1"), ("upd_epoll_v2", "v2")] {
        let mut s = Server::start(name);
        let c = &mut s.c;
        assert_eq!(c.ask("VERSION"), version);
        for (req, want) in [
            ("SET alpha 1", "OK"),
            ("SET beta two", "OK"),
            ("SET gamma 3", "OK"),
            ("SET alpha 11", "OK"),
            ("SET bad=key x", "ERR bad key"),
            ("GET alpha", "VALUE alpha=11"),
            ("GET beta", "VALUE beta=two"),
            ("GET nope", "MISSING nope"),
            ("DEL gamma", "OK"),
            ("DEL gamma", "MISSING gamma"),
            ("GET gamma", "MISSING gamma"),
            ("NOSUCH", "ERR unknown command"),
            ("TICKS 1", "ERR timer disarmed"),
        ] {
            assert_eq!(c.ask(req), want, "{name}: {req}");
        }
        let dump = c.dump();
        assert_eq!(
            dump,
            [
                "META count=2 ticks=0 events=0 signals=0 pipe=0",
                "beta=two",
                "alpha=11"
            ],
            "{name}"
        );
        let sum = c.ask("SUM");
        assert!(sum.starts_with("SUM 3 "), "{name}: {sum}");
        dumps.push((dump, sum));
    }
    assert_eq!(dumps[0], dumps[1], "v1 and v2 disagree");
}

/// POKE, PIPE, SIGUSR1 and the timer are each counted once, through the epoll set, in both
/// versions; v2 passes its own CHECK before and after them, v1 has no CHECK.
#[test]
fn kernel_sources_are_counted() {
    for name in ["upd_epoll_v1", "upd_epoll_v2"] {
        let v2 = name.ends_with("v2");
        let mut s = Server::start(name);
        let check = |s: &mut Server| {
            let want = if v2 { "PASS" } else { "ERR unknown command" };
            assert_eq!(s.c.ask("CHECK"), want, "{name}");
        };
        check(&mut s);
        let st = s.stats();
        assert_eq!(
            (
                st["conns"],
                st["ticks"],
                st["events"],
                st["signals"],
                st["pipe"]
            ),
            (1, 0, 0, 0, 0),
            "{name}"
        );

        assert_eq!(s.c.ask("POKE"), "OK");
        assert_eq!(s.c.ask("POKE"), "OK");
        assert_eq!(s.stats()["events"], 2, "{name}: two POKEs");
        assert_eq!(s.c.ask("PIPE"), "OK");
        assert_eq!(s.stats()["pipe"], 1, "{name}: one PIPE");

        // SIGUSR1 (10) is blocked (SigBlk mask 0x200) and read through the signalfd.
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
        let blk = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_ne!(
            blk & (1 << (libc::SIGUSR1 - 1)),
            0,
            "{name}: SIGUSR1 blocked"
        );
        kill(s.pid(), Signal::SIGUSR1).unwrap();
        assert_eq!(s.stats()["signals"], 1, "{name}: one SIGUSR1");
        check(&mut s);

        // Timer: armed every 2 ms, awaited with TICKS, then disarmed: the count stays put.
        assert_eq!(s.c.ask("TIMER 2"), "OK");
        check(&mut s);
        let reply = s.c.ask("TICKS 3");
        let ticks: u64 = reply
            .strip_prefix("TICKS ")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {reply:?}"));
        assert!(ticks >= 3, "{name}: {reply}");
        assert_eq!(s.c.ask("TIMER 0"), "OK");
        let st = s.stats();
        assert!(st["ticks"] >= ticks, "{name}: {st:?}");
        assert_eq!(
            s.stats()["ticks"],
            st["ticks"],
            "{name}: disarmed timer ticked"
        );
        assert_eq!(
            (st["events"], st["signals"], st["pipe"]),
            (2, 1, 1),
            "{name}"
        );
        let dump = s.c.dump();
        assert_eq!(
            dump[0],
            format!(
                "META count=0 ticks={} events=2 signals=1 pipe=1",
                st["ticks"]
            ),
            "{name}"
        );
        check(&mut s);
    }
}

/// The epoll set holds the five sources and one registration per client, for EPOLLIN, each
/// with a pointer as its data word: the listening socket's into the executable's data (the
/// global `listen_src`), every other one into the heap.
#[test]
fn epoll_data_words_are_global_and_heap_pointers() {
    for name in ["upd_epoll_v1", "upd_epoll_v2"] {
        let mut s = Server::start(name);
        let mut c2 = LineClient::connect(s.port);
        // An answered request proves each connection has been accepted and registered.
        assert_eq!(s.c.ask("SET k v"), "OK");
        assert!(c2.ask("VERSION").starts_with('v'));
        assert_eq!(s.stats()["conns"], 2, "{name}");
        if name.ends_with("v2") {
            assert_eq!(c2.ask("CHECK"), "PASS");
        }

        let pid = s.pid();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let listener = format!("socket:[{}]", listener_inode(pid, s.port));
        let regs = registrations(pid);
        assert_eq!(regs.len(), 7, "{name}: {regs:?}");

        let mut kinds: Vec<String> = Vec::new();
        let mut datas: Vec<u64> = Vec::new();
        for r in &regs {
            assert_ne!(r.events & libc::EPOLLIN as u32, 0, "{name}: {r:?}");
            assert!(r.data > 0x10000, "{name}: small data word {r:?}");
            let target = fd_target(pid, r.tfd);
            let mapping = mapping_of(pid, r.data)
                .unwrap_or_else(|| panic!("{name}: data word of {r:?} ({target}) is unmapped"));
            if target == listener {
                assert_eq!(
                    PathBuf::from(&mapping),
                    exe,
                    "{name}: listener {r:?} is not a global"
                );
            } else {
                assert_eq!(
                    mapping, "[heap]",
                    "{name}: {r:?} ({target}) is not on the heap"
                );
            }
            let kind = if target == listener {
                "listener"
            } else if target.starts_with("socket:[") {
                "client"
            } else if target.starts_with("pipe:[") {
                "pipe"
            } else {
                target.as_str()
            };
            kinds.push(kind.to_owned());
            datas.push(r.data);
        }
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "anon_inode:[eventfd]",
                "anon_inode:[signalfd]",
                "anon_inode:[timerfd]",
                "client",
                "client",
                "listener",
                "pipe"
            ],
            "{name}"
        );
        datas.sort();
        datas.dedup();
        assert_eq!(datas.len(), 7, "{name}: data words not distinct");
    }
}
