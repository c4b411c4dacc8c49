//! Downtime of a live update (the `upd_list` pair: a linked list of heap nodes with heap key
//! and value strings, 3 heap objects per entry) for states of 1e3..1e6 objects, with and
//! without the time-traveling check, against a baseline measured in the same run: restarting
//! the server (kill v1, start v2 on the same port) and reloading the same data.
//!
//! Two views of the downtime of each update: the transaction's own (`times_ms.downtime`, from
//! seizing the old process to letting the new one run) and the one a client sees: a client on
//! a connection opened before the update sends `VERSION` every [`PROBE_INTERVAL`] and the
//! longest gap between two consecutive replies around the update is its downtime. For the
//! restart the same client reconnects when its connection breaks; the server is unavailable
//! from the kill until it answers again, and without its data until `FILL` has rebuilt it.
//! `FILL` builds the entries inside the server in one request, the fastest reload there is,
//! so the baseline favours the restart.
//!
//! Run: `cargo bench --bench update` (or `scripts/bench-update.sh`, which records the table in
//! docs/bench/update.md). `UPDATE_SIZES` (comma-separated object counts, default
//! `1000,10000,100000,1000000`), `UPDATE_REPEATS` (default 3; the median is reported) and
//! `UPDATE_VERIFY_MAX` (largest state updated with the check, default: all) change the run.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fixtures::{Fixture, Reaper};
use tracer::Pid;
use transplant::mapping::rules::Rules;
use transplant::update::{update, Config, Times};

/// Pause between two requests of the probing client: often enough to resolve a gap to about a
/// millisecond, seldom enough not to take a core from the update on a small machine.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// How long any one reply or event may take before the bench gives up.
const TIMEOUT: Duration = Duration::from_secs(300);

/// v2's `CHECK` looks for duplicate keys pairwise (quadratic): only on small states.
const CHECK_MAX_ENTRIES: u64 = 5_000;

/// The rule the pair needs: v2's new `version` field of transferred nodes.
const RULES: &str = "[default]\n\"struct node.version\" = 1\n";

fn main() {
    let sizes: Vec<u64> = env_list("UPDATE_SIZES", &[1_000, 10_000, 100_000, 1_000_000]);
    let repeats: usize = env_num("UPDATE_REPEATS", 3);
    let verify_max: u64 = env_num("UPDATE_VERIFY_MAX", u64::MAX);

    let mut rows = Vec::new();
    for &n in &sizes {
        let entries = n / 3;
        let mut with = Vec::new();
        let mut without = Vec::new();
        let mut restarts = Vec::new();
        for run in 1..=repeats {
            if n <= verify_max {
                let m = measure_update(entries, true);
                eprintln!("{n} objects, run {run}, update with check: {m:?}");
                with.push(m);
            }
            let m = measure_update(entries, false);
            eprintln!("{n} objects, run {run}, update without check: {m:?}");
            without.push(m);
            let m = measure_restart(entries);
            eprintln!("{n} objects, run {run}, restart: {m:?}");
            restarts.push(m);
        }
        rows.push(Row {
            n,
            entries,
            with: (!with.is_empty()).then(|| UpdateRun::median(&with)),
            without: UpdateRun::median(&without),
            restart: RestartRun::median(&restarts),
        });
    }
    let table = render(&rows, repeats, verify_max);
    print!("{table}");
    if let Ok(path) = std::env::var("UPDATE_REPORT") {
        std::fs::write(&path, table).expect("write report");
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?}: not a list of numbers"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One live update, as the transaction and as the probing client saw it.
#[derive(Clone, Copy, Debug)]
struct UpdateRun {
    /// Objects transferred forward (the list's heap objects, the journal, the globals).
    objects: u64,
    times: Times,
    /// The longest gap between two consecutive replies of the probing client.
    client_gap_ms: f64,
}

impl UpdateRun {
    /// The run with the median client-observed downtime (one real run, so its phases add up).
    fn median(runs: &[UpdateRun]) -> UpdateRun {
        let mut v = runs.to_vec();
        v.sort_by(|a, b| a.client_gap_ms.total_cmp(&b.client_gap_ms));
        v[v.len() / 2]
    }
}

/// One restart, as the bench and the probing client saw it.
#[derive(Clone, Copy, Debug)]
struct RestartRun {
    /// From the kill of v1 until v2 printed its ready line.
    ready_ms: f64,
    /// From the kill until v2 holds the data again (`FILL` answered).
    data_ms: f64,
    /// The longest gap between two consecutive replies of the probing client (it reconnects).
    client_gap_ms: f64,
    /// How long the `FILL` took, in the restart.
    fill_ms: f64,
}

impl RestartRun {
    fn median(runs: &[RestartRun]) -> RestartRun {
        let mut v = runs.to_vec();
        v.sort_by(|a, b| a.data_ms.total_cmp(&b.data_ms));
        v[v.len() / 2]
    }
}

struct Row {
    n: u64,
    entries: u64,
    with: Option<UpdateRun>,
    without: UpdateRun,
    restart: RestartRun,
}

/// v1 started on an ephemeral port and filled with `entries` entries; with its checksum.
struct Filled {
    fixture: Fixture,
    port: u16,
    sum: String,
}

fn start_filled(name: &str, port: u16, entries: u64) -> (Filled, Duration) {
    let (fixture, ready) = Fixture::start_ready(name, &[&port.to_string()]);
    let port: u16 = ready["port"].parse().expect("port");
    let mut c = Client::connect(port).expect("connect");
    let t = Instant::now();
    assert_eq!(
        c.ask(&format!("FILL {entries}")).unwrap(),
        format!("OK {entries}")
    );
    let fill = t.elapsed();
    let sum = c.ask("SUM").unwrap();
    (Filled { fixture, port, sum }, fill)
}

fn measure_update(entries: u64, verify: bool) -> UpdateRun {
    let (old, _) = start_filled("upd_list_v1", 0, entries);
    let probe = Probe::start(old.port, false);
    probe.wait(|v| v.replies >= 20);

    let mut cfg = Config::new(old.fixture.pid(), fixtures::path("upd_list_v2"));
    cfg.rules = Rules::parse(RULES, "rules.toml").expect("rules");
    cfg.verify = verify;
    let report = update(&cfg).expect("no bad input");
    // The new process was forked by this one: kill and reap it when done.
    let _new = report.new_pid.map(|p| Reaper(Pid::from_raw(p)));
    assert!(report.committed(), "{report:#?}");

    // Until the client has been served by v2 for a while, so the gap around the update is in.
    let at = probe.wait(|v| v.answers.iter().any(|a| a == "v2")).replies;
    probe.wait(|v| v.replies >= at + 20);
    let view = probe.stop();
    assert_eq!(
        view.errors,
        Vec::<String>::new(),
        "the client was not served"
    );
    assert_eq!(view.reconnects, 0);
    assert_eq!(view.answers, ["v1", "v2"]);
    let mut c = Client::connect(old.port).expect("connect to v2");
    assert_eq!(c.ask("SUM").unwrap(), old.sum, "v2 serves v1's data");
    if entries <= CHECK_MAX_ENTRIES {
        assert_eq!(c.ask("CHECK").unwrap(), "PASS");
    }
    drop(old.fixture); // already killed by the update; reaps it
    UpdateRun {
        objects: report.objects,
        times: report.times_ms,
        client_gap_ms: ms(view.max_gap),
    }
}

fn measure_restart(entries: u64) -> RestartRun {
    let (old, _) = start_filled("upd_list_v1", 0, entries);
    let port = old.port;
    let probe = Probe::start(port, true);
    probe.wait(|v| v.replies >= 20);

    let t = Instant::now();
    drop(old.fixture); // SIGKILL and reap
    let (mut new, ready) = Fixture::start_ready("upd_list_v2", &[&port.to_string()]);
    let ready_ms = ms(t.elapsed());
    assert_eq!(ready["port"], port.to_string());
    let mut c = Client::connect(port).expect("connect to v2");
    let tf = Instant::now();
    assert_eq!(
        c.ask(&format!("FILL {entries}")).unwrap(),
        format!("OK {entries}")
    );
    let data_ms = ms(t.elapsed());
    let fill_ms = ms(tf.elapsed());

    let at = probe.wait(|v| v.answers.iter().any(|a| a == "v2")).replies;
    probe.wait(|v| v.replies >= at + 20);
    let view = probe.stop();
    assert_eq!(view.answers, ["v1", "v2"]);
    assert_eq!(c.ask("SUM").unwrap(), old.sum, "v2 reloaded the same data");
    assert!(new.is_alive());
    RestartRun {
        ready_ms,
        data_ms,
        client_gap_ms: ms(view.max_gap),
        fill_ms,
    }
}

/// A line client with long time limits (a large update may hold a request for seconds).
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn ask(&mut self, cmd: &str) -> Result<String, String> {
        self.w
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) if !l.ends_with('\n') => Err(format!("partial line {l:?}")),
            Ok(_) => {
                l.pop();
                Ok(l)
            }
            Err(e) => Err(format!("receive: {e}")),
        }
    }
}

/// What the probing client saw.
#[derive(Clone, Debug, Default)]
struct View {
    replies: u64,
    /// The longest time between two consecutive replies.
    max_gap: Duration,
    /// The distinct replies, in order of first appearance.
    answers: Vec<String>,
    /// Connections opened again after one broke (restart only).
    reconnects: u64,
    /// Broken connections or refused requests when they are not expected.
    errors: Vec<String>,
}

#[derive(Default)]
struct Shared {
    view: Mutex<View>,
    more: Condvar,
    stop: AtomicBool,
}

/// A client that sends `VERSION` on one connection every [`PROBE_INTERVAL`] and records the
/// gaps between replies. With `reconnect` it opens a new connection when one breaks (a
/// restarted server), retrying refused connections every interval.
struct Probe {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

impl Probe {
    fn start(port: u16, reconnect: bool) -> Probe {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let mut conn = Some(Client::connect(port).expect("probe connect"));
        let thread = std::thread::spawn(move || {
            let mut last: Option<Instant> = None;
            while !s.stop.load(Ordering::Relaxed) {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Client::connect(port) {
                        Ok(c) => {
                            s.view.lock().unwrap().reconnects += 1;
                            conn.insert(c)
                        }
                        Err(_) => {
                            std::thread::sleep(PROBE_INTERVAL);
                            continue;
                        }
                    },
                };
                let r = c.ask("VERSION");
                let now = Instant::now();
                let mut v = s.view.lock().unwrap();
                match r {
                    Ok(reply) => {
                        v.replies += 1;
                        if let Some(l) = last {
                            v.max_gap = v.max_gap.max(now - l);
                        }
                        last = Some(now);
                        if !v.answers.contains(&reply) {
                            v.answers.push(reply);
                        }
                    }
                    Err(_) if reconnect => conn = None,
                    Err(e) => {
                        v.errors.push(e);
                        drop(v);
                        s.more.notify_all();
                        return;
                    }
                }
                drop(v);
                s.more.notify_all();
                std::thread::sleep(PROBE_INTERVAL);
            }
        });
        Probe { shared, thread }
    }

    /// Blocks until `cond` holds for the view (or the client failed); returns the view.
    fn wait(&self, cond: impl Fn(&View) -> bool) -> View {
        let deadline = Instant::now() + TIMEOUT;
        let mut v = self.shared.view.lock().unwrap();
        while !cond(&v) {
            assert!(v.errors.is_empty(), "the probing client failed: {v:?}");
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the probing client got no answers: {v:?}");
            v = self.shared.more.wait_timeout(v, left).unwrap().0;
        }
        v.clone()
    }

    fn stop(self) -> View {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("probe thread");
        let v = self.shared.view.lock().unwrap().clone();
        v
    }
}

fn render(rows: &[Row], repeats: usize, verify_max: u64) -> String {
    let mut t = String::new();
    writeln!(
        t,
        "fixture: upd_list v1 -> v2, N/3 entries (node, key, value on the heap); median of \
         {repeats} runs (update rows: the run with the median client gap, so its phases add up; \
         restart: the run with the median time to data)"
    )
    .unwrap();
    if verify_max != u64::MAX {
        writeln!(t, "\nwith the check only up to {verify_max} objects").unwrap();
    }
    writeln!(t).unwrap();
    writeln!(t, "Downtime (ms):").unwrap();
    writeln!(t).unwrap();
    writeln!(
        t,
        "| N (entries) | objects moved | update + check: downtime / client gap | update, no check: downtime / client gap | restart: ready / client gap / with data | check ÷ restart-with-data | no check ÷ restart-with-data |"
    )
    .unwrap();
    writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for r in rows {
        let rs = &r.restart;
        let with = r.with.map_or("—".to_owned(), |u| {
            format!("{:.0} / {:.0}", u.times.downtime, u.client_gap_ms)
        });
        let with_ratio = r.with.map_or("—".to_owned(), |u| {
            format!("{:.2}×", u.client_gap_ms / rs.data_ms)
        });
        writeln!(
            t,
            "| {} ({}) | {} | {with} | {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {with_ratio} | {:.2}× |",
            r.n,
            r.entries,
            r.without.objects,
            r.without.times.downtime,
            r.without.client_gap_ms,
            rs.ready_ms,
            rs.client_gap_ms,
            rs.data_ms,
            r.without.client_gap_ms / rs.data_ms,
        )
        .unwrap();
    }
    writeln!(t).unwrap();
    writeln!(t, "Phases of the update (ms; downtime = quiesce + capture + forward [+ reverse + compare] + commit):").unwrap();
    writeln!(t).unwrap();
    writeln!(
        t,
        "| N | reverse check | total | check phase | start-up | quiesce | capture | forward | reverse | compare | downtime | µs per object in downtime | restart FILL |"
    )
    .unwrap();
    writeln!(
        t,
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    for r in rows {
        for (label, u) in [("yes", r.with), ("no", Some(r.without))] {
            let Some(u) = u else { continue };
            let x = &u.times;
            writeln!(
                t,
                "| {} | {label} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} |",
                r.n,
                x.total,
                x.check,
                x.startup,
                x.quiesce,
                x.capture,
                x.forward,
                x.reverse,
                x.compare,
                x.downtime,
                x.downtime * 1e3 / u.objects as f64,
                r.restart.fill_ms,
            )
            .unwrap();
        }
    }
    t
}
