//! Status never says converged while the slave differs, across restarts,
//! and `start` after a SIGKILL starts a daemon even on a large tree.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::fs::*;
use crate::support::process::signal;
use crate::support::session::*;
use crate::support::tree::tree_diff;
use crate::support::{georep_test, TestDir};

/// Polls status until `until`; each time it says converged (Active,
/// Changelog, nothing pending), the trees must be equal. Returns how many
/// times it said so.
fn converged_means_equal(s: &Session, t: &TestDir, until: Instant) -> usize {
    let mut seen = 0;
    while Instant::now() < until && seen < 3 {
        let st = s.status();
        if st["state"] == "Active" && st["crawl"] == "Changelog" && pending_is_zero(&st) {
            let d = tree_diff(&t.src, &t.dst);
            assert!(
                d.is_empty(),
                "status says converged, the slave differs: {d:?}\n{st}"
            );
            seen += 1;
        }
    }
    seen
}

georep_test!(
    status_after_downtime_is_not_converged_before_the_catch_up,
    |t: TestDir| {
        // Enough entries that the catch-up crawl takes a moment.
        for i in 0..8000 {
            write_file(&t.src.join(format!("c/{}/{i}", i % 40)), b"padding");
        }
        let s = started(&t, "downtime", &[]);
        for (round, kill) in [(0, false), (1, true)] {
            if kill {
                signal(s.daemon_pid().expect("a daemon"), Signal::KILL);
            } else {
                s.stop();
            }
            // Changes no journal saw: only the start-up crawl finds them.
            write_file(&t.src.join(format!("new{round}")), b"made while down");
            write_file(&t.src.join("c/0/0"), format!("changed {round}").as_bytes());
            s.start();
            let until = Instant::now() + Duration::from_secs(20);
            assert!(
                converged_means_equal(&s, &t, until) > 0,
                "round {round}: never converged"
            );
        }
        s.stop();
        assert_converged(&s);
    }
);

georep_test!(start_right_after_sigkill_on_a_large_tree, |t: TestDir| {
    // The pid lock outlives a killed daemon while the kernel tears down its
    // watches: the more directories, the longer.
    for i in 0..20_000 {
        mkdir(&t.src.join(format!("{}/{i}", i % 100)));
    }
    let s = started(&t, "bigkill", &[]);
    for round in 0..5 {
        let old = s.daemon_pid().expect("a daemon runs");
        signal(old, Signal::KILL);
        s.start();
        let new = s.daemon_pid().expect("start started one");
        assert_ne!(
            new, old,
            "round {round}: the killed daemon is not a running one"
        );
    }
    write_file(&t.src.join("after"), b"after the kills");
    s.wait_converged("after five SIGKILLs and starts");
    s.stop();
    assert_converged(&s);
});
