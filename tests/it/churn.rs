//! Replication under sustained churn (issue 10): three writers create directories
//! of files, rename them (and back), write inside renamed directories and delete
//! whole subtrees, while a probe file outside the churn gets a new content every
//! second. Under fsstress the session's lag grew to minutes: a directory that
//! vanished while a round listed it failed the batch, and the backoff escalated
//! into crawls that failed again.
//!
//! Checked: every probe reaches the slave within [`PROBE_BOUND`] (a probe counts
//! as arrived once the slave holds it or a later one: the daemon ships the newest
//! content, not each version); `status` sampled during the churn never shows
//! Faulty nor a failure; the replica equals the source within [`SETTLE_BOUND`]
//! of the churn stopping. 20 s of churn, a minute with `GEOREP_IT_BIG=1`;
//! `GEOREP_IT_SEED=N` replays the writers' random choices. A bound, not a
//! benchmark: `contrib/bench/live --only churn` measures the lag.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::support::fs::*;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

const WRITERS: usize = 3;
/// Longest a probe may take to reach the slave (the target is 1 s p99).
const PROBE_BOUND: Duration = Duration::from_secs(10);
/// Longest the replica may differ from the source once the churn stopped (the
/// issue's target is 10 s; this is a loaded 2-core CI machine).
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// How often `status` is sampled during the churn.
const STATUS_EVERY: Duration = Duration::from_millis(250);
/// Live directories a writer keeps before it deletes its oldest subtree.
const LIVE_DIRS: usize = 6;

/// A minute, as the issue asks (GEOREP_IT_BIG: five).
fn churn_duration() -> Duration {
    Duration::from_secs(if big() { 300 } else { 60 })
}

fn seed() -> u64 {
    std::env::var("GEOREP_IT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| unix_now() as u64)
}

/// One writer's loop, in `root` (its own directory: writers never race each
/// other, only the daemon). Returns the number of rounds done.
fn writer(root: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut live: VecDeque<PathBuf> = VecDeque::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // A directory of files, a subdirectory among them, built under a
        // temporary name and renamed into place: the daemon sees a directory
        // whose files appear before (or while) it is watched.
        let building = root.join(format!("new-{round}"));
        mkdir(&building.join("sub/deeper"));
        for i in 0..rng.random_range(5..20) {
            let len = rng.random_range(0..4096);
            write_file(
                &building.join(format!("f{i}")),
                &random_bytes(round * 64 + i, len),
            );
        }
        for i in 0..rng.random_range(1..6) {
            write_file(
                &building.join(format!("sub/deeper/g{i}")),
                format!("{round} {i}\n").as_bytes(),
            );
        }
        let dir = root.join(format!("dir-{round}"));
        rename(&building, &dir);
        // Written at its new name at once.
        append(&dir.join("f0"), b"after the rename\n");
        match rng.random_range(0..4) {
            // Renamed away and back (went Faulty with doubling backoff).
            0 => {
                let away = root.join(format!("away-{round}"));
                rename(&dir, &away);
                rename(&away, &dir);
            }
            // A subtree moved into an older live directory.
            1 if !live.is_empty() => {
                let into = &live[rng.random_range(0..live.len())];
                rename(&dir.join("sub"), &into.join(format!("moved-{round}")));
            }
            // A file renamed inside.
            2 => rename(&dir.join("f1"), &dir.join("f1-renamed")),
            _ => {}
        }
        live.push_back(dir);
        // Whole subtrees deleted: what the daemon may be listing at the moment.
        while live.len() > LIVE_DIRS {
            let old = live.pop_front().unwrap();
            fs::remove_dir_all(&old).unwrap_or_else(|e| panic!("remove {}: {e}", show(&old)));
        }
        thread::sleep(Duration::from_millis(rng.random_range(0..20)));
    }
    round
}

/// Polls the slave's probe file; `arrived[n]` is when the slave first held
/// probe `n` or a later one (unix seconds).
fn probe_poller(
    path: PathBuf,
    written: Arc<AtomicU64>,
    arrived: Arc<Mutex<Vec<Option<f64>>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let seen = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.strip_prefix("probe ")?.trim().parse::<u64>().ok());
        if let Some(seen) = seen {
            let now = unix_now();
            let written = written.load(Ordering::Acquire);
            let mut arrived = arrived.lock().unwrap();
            for n in 0..=seen.min(written) as usize {
                if arrived.len() <= n {
                    arrived.resize(n + 1, None);
                }
                arrived[n].get_or_insert(now);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a status sample said when it was not what it must be.
fn bad_sample(st: &serde_json::Value) -> Option<String> {
    if st["state"] == "Faulty" {
        return Some(format!("state Faulty: {st}"));
    }
    if st["failures"].as_u64() != Some(0) {
        return Some(format!("failures {}: {st}", st["failures"]));
    }
    if st["pid"].is_null() {
        return Some(format!("no daemon running: {st}"));
    }
    None
}

georep_test!(churn_probes_arrive_and_replica_settles, |t: TestDir| {
    let seed = seed();
    let duration = churn_duration();
    eprintln!("churn: seed {seed} (GEOREP_IT_SEED={seed} replays it), {duration:?} of churn");
    let churn = t.src.join("churn");
    for w in 0..WRITERS {
        mkdir(&churn.join(format!("w{w}")));
    }
    let probe = Path::new("probe");
    write_file(&t.src.join(probe), b"probe 0\n");
    let s = started(&t, "churn", &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (root, stop) = (churn.join(format!("w{w}")), stop.clone());
            let seed = seed.wrapping_add(w as u64);
            thread::spawn(move || writer(root, seed, stop))
        })
        .collect();
    let written = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let poll_stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (path, written, arrived, stop) = (
            t.dst.join(probe),
            written.clone(),
            arrived.clone(),
            poll_stop.clone(),
        );
        thread::spawn(move || probe_poller(path, written, arrived, stop))
    };

    // Probe n at second n, status in between.
    let start = Instant::now();
    let mut written_at = vec![unix_now()];
    let mut samples = 0;
    let mut bad = Vec::new();
    while start.elapsed() < duration {
        let n = written_at.len() as u64;
        if start.elapsed() >= Duration::from_secs(n) {
            let at = unix_now();
            write_file(&t.src.join(probe), format!("probe {n}\n").as_bytes());
            written_at.push(at);
            written.store(n, Ordering::Release);
        }
        match s.try_status() {
            Ok(st) => {
                samples += 1;
                bad.extend(bad_sample(&st));
            }
            Err(e) => bad.push(e),
        }
        thread::sleep(STATUS_EVERY);
    }
    stop.store(true, Ordering::Relaxed);
    let rounds: Vec<u64> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer panicked"))
        .collect();
    let churn_end = Instant::now();
    eprintln!(
        "churn: writers did {rounds:?} rounds, {} probes, {samples} status samples",
        written_at.len()
    );

    // Every probe arrived, each within the bound.
    let last = written_at.len() - 1;
    let deadline = Instant::now() + PROBE_BOUND;
    while arrived
        .lock()
        .unwrap()
        .get(last)
        .is_none_or(|a| a.is_none())
        && Instant::now() < deadline
    {
        thread::sleep(POLL);
    }
    poll_stop.store(true, Ordering::Relaxed);
    poller.join().expect("the probe poller panicked");
    let arrived = arrived.lock().unwrap().clone();
    let lags: Vec<Option<f64>> = (0..=last)
        .map(|n| arrived.get(n).copied().flatten().map(|a| a - written_at[n]))
        .collect();
    let shown: Vec<String> = lags
        .iter()
        .map(|l| l.map_or("never".to_owned(), |l| format!("{l:.2}")))
        .collect();
    eprintln!("churn: probe lags (s): {}", shown.join(" "));
    let late: Vec<usize> = (0..=last)
        .filter(|&n| lags[n].is_none_or(|l| l > PROBE_BOUND.as_secs_f64()))
        .collect();
    assert!(
        late.is_empty(),
        "probes {late:?} did not reach the slave within {PROBE_BOUND:?} under churn \
         (lag grows under sustained churn, issue 10 item 1); lags in s, probe 0 first: {}\n{}",
        shown.join(" "),
        s.diagnostics()
    );

    // Status never said Faulty nor counted a failure while the tree churned.
    assert!(
        bad.is_empty(),
        "{} of {samples} status samples during the churn were wrong (the session must not \
         fault on directories vanishing or renamed under it, issue 10 items 1-2); first:\n{}\n{}",
        bad.len(),
        bad.first().unwrap(),
        s.log_tail()
    );

    // The replica equals the source within seconds of the churn stopping.
    s.wait_converged_ignoring("after the churn stopped", &[], SETTLE_BOUND);
    eprintln!(
        "churn: settled {:?} after the churn stopped",
        churn_end.elapsed()
    );
    let st = s.status();
    assert_eq!(st["failures"], 0, "failures counted after the churn: {st}");
    s.stop();
    assert_converged(&s);
});
