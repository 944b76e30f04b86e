//! Several master nodes serving one session (one source, one slave, each
//! node with its own `--home` and `node` name): one active through a lease
//! on a shared directory or a real etcd, the others passive, a passive one
//! taking over when the active one dies, and the slave fencing a node that
//! woke up past its lease. A sampler asserts all along that at most one
//! node reports Active.

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use georep::agent::fence::{read_record, Record};
use georep::proto::frame::{read_frame, write_frame};
use georep::proto::{Fence, FsyncPolicy, Hello, Msg, Side, FEATURES, VERSION};
use rustix::process::Signal;
use serde_json::Value;

use crate::support::etcd::Etcd;
use crate::support::fs::*;
use crate::support::process::{descendants, freeze, georep, signal};
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

const NAME: &str = "multi";
/// The bound on a takeover after the active node died.
const TAKEOVER: Duration = Duration::from_secs(5);

fn node(t: &TestDir, i: usize) -> Session {
    let mut s = Session::new(t, NAME);
    s.home = t.path(format!("home-{i}"));
    s.scratch = t.path(format!("commands-{i}"));
    s
}

fn state(st: &Value) -> &str {
    st["state"].as_str().unwrap_or("")
}

/// Every node's state as `status --json` says, skipping frozen ones.
fn states(homes: &[PathBuf], frozen: &BTreeSet<usize>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        if frozen.contains(&i) {
            continue;
        }
        let o = georep()
            .arg("--home")
            .arg(home)
            .args(["status", NAME, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output();
        let Ok(o) = o else { continue };
        if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
            let v = if v.is_array() { v[0].clone() } else { v };
            out.push((i, v["state"].as_str().unwrap_or("").to_string()));
        }
    }
    out
}

/// Samples every node's state until dropped; at most one may be Active.
struct Sampler {
    stop: Arc<AtomicBool>,
    frozen: Arc<Mutex<BTreeSet<usize>>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// Samples taken, and the longest one.
    samples: Arc<Mutex<(u64, Duration)>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(homes: Vec<PathBuf>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(Mutex::new(BTreeSet::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new((0u64, Duration::ZERO)));
        let (s, f, v, n) = (
            stop.clone(),
            frozen.clone(),
            violations.clone(),
            samples.clone(),
        );
        let thread = thread::spawn(move || {
            while !s.load(SeqCst) {
                let frozen = f.lock().unwrap().clone();
                let began = Instant::now();
                let st = states(&homes, &frozen);
                let took = began.elapsed();
                let active: Vec<_> = st.iter().filter(|(_, s)| s == "Active").collect();
                if active.len() > 1 {
                    v.lock()
                        .unwrap()
                        .push(format!("two Active at once: {st:?}"));
                }
                let mut n = n.lock().unwrap();
                n.0 += 1;
                n.1 = n.1.max(took);
                thread::sleep(ms(50));
            }
        });
        Sampler {
            stop,
            frozen,
            violations,
            samples,
            thread: Some(thread),
        }
    }

    fn freeze(&self, i: usize, frozen: bool) {
        let mut f = self.frozen.lock().unwrap();
        if frozen {
            f.insert(i);
        } else {
            f.remove(&i);
        }
    }

    /// Stops sampling (once it has sampled a few times, however loaded
    /// the machine); panics with what broke the rule.
    fn finish(mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.samples.lock().unwrap().0 < 10 && Instant::now() < deadline {
            thread::sleep(ms(50));
        }
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "{}", v.join("\n"));
        let (n, longest) = *self.samples.lock().unwrap();
        assert!(
            n >= 10,
            "the sampler hardly ran: {n} samples, the longest {longest:?}"
        );
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
    }
}

/// Writes a new file every 20 ms until dropped.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(dir: &Path, tag: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, dir, tag) = (stop.clone(), dir.to_path_buf(), tag.to_string());
        let thread = thread::spawn(move || {
            let mut n = 0;
            while !s.load(SeqCst) {
                write_file(
                    &dir.join(format!("{tag}-{n}")),
                    format!("write {n}").as_bytes(),
                );
                n += 1;
                thread::sleep(ms(20));
            }
            n
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

struct Cluster {
    nodes: Vec<Session>,
    state_dir: PathBuf,
    dst: PathBuf,
    /// Every node's hook events: "EVENT NODE EPOCH".
    events: PathBuf,
}

impl Cluster {
    fn start(t: &TestDir, n: usize, lease: &str) -> Cluster {
        write_file(&t.src.join("before/a"), b"before any node ran");
        let (hooks, events) = (t.path("hooks"), t.path("events.log"));
        let hook = hooks.join("10-record");
        write_file(
            &hook,
            format!(
                "#!/bin/sh\necho \"$1 $GEOREP_NODE ${{GEOREP_EPOCH:-none}}\" >> {}\n",
                events.display()
            )
            .as_bytes(),
        );
        chmod(&hook, 0o755);
        let nodes: Vec<Session> = (0..n).map(|i| node(t, i)).collect();
        for (i, s) in nodes.iter().enumerate() {
            s.create_ok(
                p(&t.dst),
                &[
                    &format!("lease={lease}"),
                    &format!("node=n{i}"),
                    "lease_ttl=2",
                    &format!("hooks_dir={}", hooks.display()),
                ],
            );
        }
        for s in &nodes {
            s.start();
        }
        let c = Cluster {
            nodes,
            state_dir: t.path("slave-state"),
            dst: t.dst.clone(),
            events,
        };
        let a = c.wait_active(None, Duration::from_secs(20));
        c.nodes[a].wait_converged("the first active node's initial sync");
        c
    }

    fn homes(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|s| s.home.clone()).collect()
    }

    /// The one node reporting Active (other than `not`), waited for.
    #[track_caller]
    fn wait_active(&self, not: Option<usize>, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            let frozen = not.into_iter().collect();
            let st = states(&self.homes(), &frozen);
            let active: Vec<usize> = st
                .iter()
                .filter(|(_, s)| s == "Active")
                .map(|(i, _)| *i)
                .collect();
            if let [one] = active[..] {
                return one;
            }
            if start.elapsed() > timeout {
                let logs: Vec<String> = self.nodes.iter().map(|s| s.log_tail()).collect();
                panic!(
                    "no single Active node after {timeout:?}: {st:?}\n{}",
                    logs.join("\n")
                );
            }
            thread::sleep(ms(25));
        }
    }

    fn events_so_far(&self) -> usize {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Waits for a hook line after the first `skip` lines.
    #[track_caller]
    fn wait_event(&self, line: &str, skip: usize) {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.events).unwrap_or_default();
            if text.lines().skip(skip).any(|l| l == line) {
                return;
            }
            assert!(
                start.elapsed() < CONVERGE,
                "no hook line {line:?}; got:\n{text}"
            );
            thread::sleep(ms(20));
        }
    }

    fn record(&self) -> Record {
        read_record(&self.state_dir, &self.dst, NAME).expect("the slave's fencing record")
    }

    /// The epoch node `i` ships under (it reports Active).
    #[track_caller]
    fn epoch_of(&self, i: usize) -> u64 {
        let st = self.nodes[i].wait_status("an epoch", Duration::from_secs(5), |st| {
            st["epoch"].is_u64()
        });
        st["epoch"].as_u64().unwrap()
    }

    /// The local slave serving node `i`'s daemon.
    fn slave_of(&self, i: usize) -> Option<u32> {
        let pid = self.nodes[i].daemon_pid()?;
        descendants(pid).into_iter().find(|&c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|&b| b == 0).any(|a| a == b"slave"))
        })
    }
}

/// SIGKILL of the active node under a steady writer: a passive one takes
/// over within 5 s and the tree converges; the old node comes back Passive.
fn sigkill_takeover(t: TestDir, lease: &str, n: usize) {
    let c = Cluster::start(&t, n, lease);
    let sampler = Sampler::start(c.homes());
    let writer = Writer::start(&t.src, "steady");
    thread::sleep(ms(500));
    let old = c.wait_active(None, TAKEOVER);
    let old_epoch = c.epoch_of(old);
    let pid = c.nodes[old].daemon_pid().expect("the active daemon");
    let killed = Instant::now();
    signal(pid, Signal::KILL);
    sampler.freeze(old, true);
    let new = c.wait_active(Some(old), TAKEOVER + Duration::from_secs(5));
    let took = killed.elapsed();
    eprintln!("takeover after SIGKILL took {took:?}");
    assert!(took <= TAKEOVER, "takeover took {took:?}");
    let new_epoch = c.epoch_of(new);
    assert!(new_epoch > old_epoch, "a takeover takes a newer epoch");
    c.wait_event(&format!("active n{new} {new_epoch}"), 0);
    thread::sleep(ms(500));
    let written = writer.finish();
    assert!(written > 10, "the writer hardly wrote");
    c.nodes[new].wait_converged("after the takeover");
    // The old node restarts: passive, the tree stays equal.
    let seen = c.events_so_far();
    c.nodes[old].start();
    sampler.freeze(old, false);
    c.nodes[old].wait_status("the old node back", CONVERGE, |st| state(st) == "Passive");
    c.wait_event(&format!("passive n{old} none"), seen);
    write_file(&t.src.join("after/restart"), b"with the old node back");
    c.nodes[new].wait_converged("with the old node passive");
    // Every node shows in the active one's status (as last published).
    c.nodes[new].wait_status("every node listed", Duration::from_secs(10), |st| {
        st["nodes"].as_array().map(Vec::len) == Some(n)
    });
    // The table says the same, on any node (each node's view of the others
    // is as of its last lease round).
    let start = Instant::now();
    loop {
        let table = c.nodes[old].run(&["status", NAME]);
        table.assert_code(0);
        let listed = (0..n).all(|i| table.stdout.contains(&format!("node n{i}")));
        if listed && table.stdout.contains(&format!("Active, epoch {new_epoch}")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{table}");
        thread::sleep(ms(100));
    }
    sampler.finish();
    let rec = c.record();
    assert_eq!(rec.epoch, c.epoch_of(new), "{rec:?}");
    for s in &c.nodes {
        s.stop();
    }
    assert_converged(&c.nodes[new]);
}

georep_test!(
    nodes_dir_lease_three_nodes_sigkill_takeover,
    |t: TestDir| {
        let lease = format!("dir:{}", p(&t.path("shared-lease")));
        sigkill_takeover(t, &lease, 3);
    }
);

georep_test!(
    nodes_etcd_lease_three_nodes_sigkill_takeover,
    |t: TestDir| {
        let Some(etcd) = Etcd::start(&t.path("etcd")) else {
            return;
        };
        let lease = format!("etcd:{}", etcd.url);
        sigkill_takeover(t, &lease, 3);
        drop(etcd);
    }
);

/// A hello under `epoch` straight to a slave of the replica: the Fatal's
/// exit code, or None if it was accepted.
fn hello_with_epoch(c: &Cluster, epoch: u64) -> Option<u8> {
    let mut child = georep()
        .args(["slave", "--root"])
        .arg(&c.dst)
        .env("GEOREP_SLAVE_STATE", &c.state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("georep slave");
    let hello = Msg::Hello(Hello {
        version: VERSION,
        features: FEATURES,
        privileged: false,
        dry_run: false,
        fsync: FsyncPolicy::None,
        fence: Fence {
            session: NAME.as_bytes().to_vec(),
            node: b"stale".to_vec(),
            epoch,
            ..Fence::default()
        },
    });
    let mut stdin = child.stdin.take().unwrap();
    write_frame(&mut stdin, &hello.encode()).unwrap();
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut buf = Vec::new();
    let kind = read_frame(&mut out, &mut buf).ok().flatten();
    let answer = kind.and_then(|k| Msg::decode_from(Side::Slave, k, &buf).ok());
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    match answer {
        Some(Msg::Fatal { code, .. }) => Some(code),
        _ => None,
    }
}

/// SIGSTOP of the active node past its lease: another takes over; the slave
/// stops the old node's connection; a slave restart keeps the epoch; the
/// old node, woken, never ships again under its epoch and goes Passive.
fn sigstop_fencing(t: TestDir, lease: &str) {
    let c = Cluster::start(&t, 2, lease);
    let sampler = Sampler::start(c.homes());
    let a = c.wait_active(None, TAKEOVER);
    let a_epoch = c.epoch_of(a);
    let a_slave = c.slave_of(a).expect("the active node's slave");
    let pid = c.nodes[a].daemon_pid().expect("the active daemon");
    // Frozen first: a stopped daemon cannot answer status.
    sampler.freeze(a, true);
    freeze(pid);
    write_file(
        &t.src.join("while-stopped/x"),
        b"written while the active node is stopped",
    );
    let b = c.wait_active(Some(a), TAKEOVER + Duration::from_secs(5));
    assert_ne!(a, b);
    let b_epoch = c.epoch_of(b);
    assert!(b_epoch > a_epoch);
    c.nodes[b].wait_converged("the new active node");
    // The old node's slave was stopped before the new one wrote anything.
    assert!(
        !crate::support::process::is_alive(a_slave),
        "the stale slave still runs"
    );
    // A slave restart in the middle: the record and its epoch stay.
    if let Some(slave) = c.slave_of(b) {
        signal(slave, Signal::KILL);
    }
    write_file(&t.src.join("after-slave-restart"), b"b reconnects");
    c.nodes[b].wait_converged("after the slave restarted");
    let rec = c.record();
    assert_eq!((rec.epoch, rec.marker_epoch), (b_epoch, b_epoch), "{rec:?}");
    // The slave refuses the old epoch outright.
    assert_eq!(
        hello_with_epoch(&c, a_epoch),
        Some(26),
        "a stale hello accepted"
    );
    assert!(c.record().refused >= 1);
    // The old node wakes: it must not ship under its old epoch again.
    signal(pid, Signal::CONT);
    c.nodes[a].wait_status("the woken node", CONVERGE, |st| state(st) == "Passive");
    sampler.freeze(a, false);
    write_file(&t.src.join("after-wake"), b"only b ships");
    c.nodes[b].wait_converged("with the woken node passive");
    let rec = c.record();
    assert_eq!(
        rec.epoch, b_epoch,
        "the woken node took the session back: {rec:?}"
    );
    assert_eq!(c.nodes[b].status()["state"], "Active");
    sampler.finish();
    for s in &c.nodes {
        eprintln!("{}", s.log_tail());
        s.stop();
    }
    assert_converged(&c.nodes[b]);
}

georep_test!(
    nodes_dir_lease_sigstop_past_lease_is_fenced,
    |t: TestDir| {
        let lease = format!("dir:{}", p(&t.path("shared-lease")));
        sigstop_fencing(t, &lease);
    }
);

georep_test!(
    nodes_etcd_lease_sigstop_past_lease_is_fenced,
    |t: TestDir| {
        let Some(etcd) = Etcd::start(&t.path("etcd")) else {
            return;
        };
        let lease = format!("etcd:{}", etcd.url);
        sigstop_fencing(t, &lease);
        drop(etcd);
    }
);

georep_test!(nodes_etcd_frozen_stops_the_active_node, |t: TestDir| {
    let Some(etcd) = Etcd::start(&t.path("etcd")) else {
        return;
    };
    let c = Cluster::start(&t, 2, &format!("etcd:{}", etcd.url));
    let sampler = Sampler::start(c.homes());
    let a = c.wait_active(None, TAKEOVER);
    etcd.freeze();
    let frozen_at = Instant::now();
    // The lease cannot be renewed: the active node stops shipping before
    // etcd could have let anyone else have it (the TTL, 2 s).
    c.nodes[a].wait_status(
        "the active node steps down",
        Duration::from_secs(10),
        |st| state(st) != "Active",
    );
    let stepped = frozen_at.elapsed();
    eprintln!("stepped down {stepped:?} after etcd froze");
    assert!(
        stepped <= Duration::from_secs(2) + ms(500),
        "stepped down after {stepped:?}"
    );
    write_file(
        &t.src.join("while-etcd-frozen"),
        b"shipped when etcd returns",
    );
    thread::sleep(Duration::from_secs(1));
    assert!(
        !c.dst.join("while-etcd-frozen").exists(),
        "shipped without a lease"
    );
    etcd.thaw();
    let now = c.wait_active(None, Duration::from_secs(15));
    c.nodes[now].wait_converged("once etcd is back");
    sampler.finish();
    for s in &c.nodes {
        s.stop();
    }
    assert_converged(&c.nodes[now]);
});

georep_test!(nodes_config_checks_lease_and_node, |t: TestDir| {
    let s = node(&t, 0);
    s.create(p(&t.dst), &["lease=dir:relative"])
        .assert_code(EXIT_USAGE);
    s.create(p(&t.dst), &["lease=zookeeper:x"])
        .assert_code(EXIT_USAGE);
    s.create(p(&t.dst), &["lease=etcd:https://h:1"])
        .assert_code(EXIT_USAGE);
    s.create(p(&t.dst), &["node=../x"]).assert_code(EXIT_USAGE);
    s.create(p(&t.dst), &["lease_ttl=0"])
        .assert_code(EXIT_USAGE);
    s.create_ok(p(&t.dst), &[]);
    // One node, no lease: no node fields, never fenced.
    s.start();
    let st = s.wait_converged("a single node");
    assert!(st["node"].is_null() && st["epoch"].is_null(), "{st}");
    s.stop();
});
