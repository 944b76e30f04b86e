//! A session under faults it cannot fix by itself: a batch the slave keeps
//! failing as a whole does not hold back the changes behind it, and a pause
//! stops even the start-up crawl.

use std::time::{Duration, Instant};

use crate::support::fs::*;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

/// Regular files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

georep_test!(pause_stops_the_start_up_crawl, |t: TestDir| {
    for i in 0..300 {
        write_random(&t.src.join(format!("d{}/f{i}", i % 10)), 64 * 1024, i);
    }
    let s = Session::new(&t, "pausecrawl");
    // About 10 s of start-up crawl at this rate.
    s.create_ok(p(&t.dst), &["bwlimit=2M", "jobs=1"]);
    s.start();
    let start = Instant::now();
    while files_under(&t.dst) < 5 {
        assert!(start.elapsed() < CONVERGE, "the crawl shipped nothing");
        std::thread::sleep(ms(20));
    }
    s.run(&["pause", &s.name]).assert_code(0);
    s.wait_status("Paused during the crawl", Duration::from_secs(5), |st| {
        st["state"] == "Paused"
    });
    // Whatever was in flight lands; then nothing more.
    std::thread::sleep(ms(500));
    let n = files_under(&t.dst);
    assert!(n < 300, "the crawl ended before the pause: {n} files");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(files_under(&t.dst), n, "shipped while paused");
    s.run(&["resume", &s.name]).assert_code(0);
    s.wait_converged("the crawl after resume");
    s.stop();
    assert_converged(&s);
});

georep_test!(
    a_batch_that_keeps_failing_lets_later_changes_pass,
    |t: TestDir| {
        mkdir(&t.src.join("locked"));
        let s = Session::new(&t, "stuck");
        s.create_ok(p(&t.dst), &["batch_max_changes=100000"]);
        s.start();
        s.wait_converged("the initial sync");
        let Some(lock) = Immutable::set(&t.dst.join("locked")) else {
            eprintln!("skipped: chattr +i is not available on this filesystem");
            return;
        };
        // More refusals than a round can list: the whole batch fails, every time.
        s.run(&["pause", &s.name]).assert_code(0);
        s.wait_status("Paused", CONVERGE, |st| st["state"] == "Paused");
        for i in 0..10_100 {
            write_file(&t.src.join(format!("locked/f{i}")), b"refused");
        }
        s.wait_status("the batch journaled", CONVERGE, |st| {
            st["pending"]["entry"].as_u64() >= Some(10_100)
        });
        s.run(&["resume", &s.name]).assert_code(0);
        // The backoff escalates (1, 2, 4, 8 s); then the batch is passed to a
        // crawl and changes made meanwhile must reach the slave.
        let resumed = Instant::now();
        let mut i = 0;
        let arrived = loop {
            let probe = format!("probe{i}");
            let at = Instant::now();
            write_file(&t.src.join(&probe), b"must not wait behind the batch");
            let mut got = false;
            while at.elapsed() < Duration::from_secs(2) {
                if t.dst.join(&probe).exists() {
                    got = true;
                    break;
                }
                std::thread::sleep(ms(20));
            }
            if got {
                break Some(resumed.elapsed());
            }
            if resumed.elapsed() > Duration::from_secs(90) {
                break None;
            }
            i += 1;
        };
        let Some(after) = arrived else {
            panic!(
                "no change reached the slave in 90 s behind a failing batch: {}",
                s.diagnostics()
            );
        };
        eprintln!("changes flow again {after:?} after resume");
        // Lifted: the owed crawl replicates what the passed batch carried.
        drop(lock);
        let start = Instant::now();
        while files_under(&t.dst.join("locked")) < 10_100 {
            assert!(start.elapsed() < CONVERGE_BIG, "{}", s.diagnostics());
            std::thread::sleep(POLL);
        }
        s.wait_converged("after the lock is lifted");
        s.stop();
        assert_converged(&s);
    }
);

georep_test!(
    sync_of_a_tree_being_written_exits_24_not_23,
    |t: TestDir| {
        let churn = t.src.join("churn");
        mkdir(&churn);
        for i in 0..3000 {
            write_file(&churn.join(format!("f{i}")), b"x");
        }
        // A writer removing and recreating names while sync lists them: some
        // vanish between readdir and lstat (rsync: "file has vanished", 24).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, churn) = (stop.clone(), churn.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let f = churn.join(format!("f{}", n % 3000));
                    let _ = std::fs::remove_file(&f);
                    let _ = std::fs::write(&f, b"y");
                    n += 1;
                }
            })
        };
        let mut codes = Vec::new();
        for _ in 0..20 {
            let run = t.sync(&[]);
            let code = run.code.expect("an exit code");
            assert!(
                code == 0 || code == 24,
                "a vanished file is no failure\n{run}"
            );
            codes.push(code);
            if code == 24 {
                assert!(run.stderr.contains("vanished"), "{run}");
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(codes.contains(&24), "no run saw a file vanish: {codes:?}");
        // Still: the next run converges.
        t.sync(&[]).assert_code(0);
        crate::support::tree::assert_trees_equal(&t.src, &t.dst);
    }
);
