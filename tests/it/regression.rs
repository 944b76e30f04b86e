//! Regression tests, each named for the bug it pins and saying what went
//! wrong. New ones go here, not into the feature suites.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::fs::*;
use crate::support::process::signal;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

// ---- Sessions: bugs the session tests found, each pinned on a minimal tree.

// notify follows symlinks by default: with `links/to_dir -> ../nested/a` in the tree,
// inotify hands out one watch per inode, and the events of nested/a arrived named
// links/to_dir/...: the daemon skipped the merge of a symlink (changes silently lost)
// or shipped a rename under links/to_dir that the slave refused (Faulty for good).
georep_test!(regression_symlink_to_dir_hides_no_event, |t: TestDir| {
    write_file(&t.src.join("nested/a/sibling"), b"sibling");
    write_file(&t.src.join("nested/a/b/leaf"), b"leaf");
    mkdir(&t.src.join("links"));
    symlink("../nested/a", &t.src.join("links/to_dir"));
    let s = started(&t, "symlinked", &[]);
    write_file(&t.src.join("nested/a/new"), b"created");
    s.wait_converged("a file created in a directory a symlink points to");
    rename(
        &t.src.join("nested/a/sibling"),
        &t.src.join("nested/a/renamed"),
    );
    s.wait_converged("a rename in it");
    remove(&t.src.join("nested/a/b"));
    write_file(&t.src.join("nested/a/b"), b"now a file");
    s.wait_converged("a directory replaced by a file in it");
    s.stop();
    assert_converged(&s);
});

// utimensat with the mtime only (atime UTIME_OMIT, as `touch -m`, tar and rsync do)
// raises IN_MODIFY, not IN_ATTRIB: recorded as a data change, it merged the parent
// only, whose merge leaves a subdirectory's own metadata to that directory's merge.
georep_test!(regression_dir_mtime_only_change, |t: TestDir| {
    write_file(&t.src.join("d/full/f"), b"f");
    mkdir(&t.src.join("d/empty"));
    let s = started(&t, "mtimes", &[]);
    set_mtime_ns(&t.src.join("d/empty"), 1_234_567_890, 987_654_321);
    set_mtime_ns(&t.src.join("d/full"), 1_234_567_891, 1);
    s.wait_converged("directory mtimes set with the atime left alone");
    s.stop();
    assert_converged(&s);
});

// A file replaced by a directory with contents while another directory changes in the
// same batch: the slave was asked to list files/f while it still was a file, refused
// ("crosses a symlink or non-directory"), and the same batch failed at every retry.
georep_test!(regression_file_to_dir_in_a_busy_batch, |t: TestDir| {
    write_file(&t.src.join("files/f"), b"a file");
    write_file(&t.src.join("a/x"), b"x");
    let s = started(&t, "busy", &[]);
    remove(&t.src.join("files/f"));
    write_file(&t.src.join("files/f/inside"), b"now a directory");
    write_file(&t.src.join("a/y"), b"another directory in the batch");
    s.wait_converged("file to directory, with another directory in the batch");
    s.stop();
    assert_converged(&s);
});

// ---- The error policy (issue: the daemon retried every error forever, journal
// errors exited as protocol errors, a daemon that failed to start as a usage error).

/// A session whose journal cannot be opened (here: a directory in its place).
fn session_with_a_broken_journal(t: &TestDir) -> Session {
    let s = Session::new(t, "broken");
    s.create_ok(p(&t.dst), &[]);
    let journal = s.dir().join("journal.db");
    let _ = std::fs::remove_file(&journal);
    mkdir(&journal.join("in-the-way"));
    s
}

georep_test!(
    regression_journal_error_exits_as_state_error,
    |t: TestDir| {
        let s = session_with_a_broken_journal(&t);
        let run = s.run(&["start", "broken", "--foreground"]);
        run.assert_code(8);
        assert!(
            run.stderr.contains("journal"),
            "the message names the journal:\n{run}"
        );
    }
);

georep_test!(
    regression_daemon_that_fails_to_start_is_a_session_error,
    |t: TestDir| {
        let s = session_with_a_broken_journal(&t);
        let run = s.run(&["start", "broken"]);
        run.assert_code(EXIT_SESSION);
        assert!(
            run.stderr.contains("daemon.log"),
            "it points at the log:\n{run}"
        );
    }
);

georep_test!(
    regression_permanent_error_is_not_retried_forever,
    |t: TestDir| {
        // A "slave" that answers with a banner instead of frames: a protocol
        // error that no retry can mend.
        let fake = t.root.join("not-a-slave");
        write_file(
            &fake,
            b"#!/bin/sh\necho 'Welcome to a shell banner'\nsleep 1\n",
        );
        chmod(&fake, 0o755);
        let s = Session::new(&t, "banner");
        s.create_ok(p(&t.dst), &[&format!("remote_command={}", p(&fake))]);
        s.start();
        let st = s.wait_status("Faulty with the cause", Duration::from_secs(30), |st| {
            st["state"] == "Faulty"
                && st["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not retried"))
        });
        assert!(
            st["last_error"]
                .as_str()
                .unwrap()
                .contains("georep stop banner"),
            "it says what to do: {st}"
        );
        // With retries, the 1 s and 2 s backoffs would have counted more failures.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let st = s.status();
            assert_eq!(st["faults"], 1, "retried a permanent error: {st}");
            assert!(
                s.daemon_pid().is_some(),
                "the daemon waits for the operator"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        s.stop();
    }
);

// `georep start` right after `kill -9` of the daemon exited 0, printed nothing
// and started nothing: the killed process's threads still held the lock for
// some milliseconds, and start took it for a running daemon.
georep_test!(
    regression_start_right_after_sigkill_starts_a_daemon,
    |t: TestDir| {
        for i in 0..100 {
            write_file(&t.src.join(format!("d{i}/f")), b"x");
        }
        let s = started(&t, "killed", &[]);
        for round in 0..10 {
            let old = s.daemon_pid().expect("a daemon runs");
            signal(old, Signal::KILL);
            // No wait: `start` must cope with the dying process itself.
            s.start();
            let new = s.daemon_pid().expect("start started one");
            assert_ne!(
                new, old,
                "round {round}: the killed daemon is not a running one"
            );
        }
        write_file(&t.src.join("after"), b"after the kills");
        s.wait_converged("after ten SIGKILLs and starts");
        s.stop();
        assert_converged(&s);
    }
);

// A second `start` of a running session answered 0 as if it had started it.
georep_test!(
    regression_start_of_a_running_session_says_so,
    |t: TestDir| {
        let s = started(&t, "twice", &[]);
        let run = s.run(&["start", "twice"]);
        run.assert_code(EXIT_SESSION);
        assert!(run.stderr.contains("running"), "{run}");
        s.stop();
    }
);

// A source directory that vanished while a round listed it ("cannot read
// directory X: No such file or directory") failed the whole batch, so under
// churn the session backed off into crawls that failed again: lag grew to
// minutes, and `sync` of a tree being written exited 23. It is now like a
// vanished file: counted, told, and the round goes on.
georep_test!(
    regression_vanished_directory_is_not_a_failure,
    |t: TestDir| {
        use std::sync::atomic::Ordering::Relaxed;
        use std::sync::Arc;

        use georep::config::SessionConfig;
        use georep::replicate::observe::{Observer, Reporter};
        use georep::replicate::{Replicator, Scope};
        use georep::transport::memory::InProcess;

        /// Removes `doomed` from the source when the round creates `trigger`:
        /// after the parent's listing saw it, before the walk reaches it.
        struct Remover {
            trigger: Vec<u8>,
            doomed: std::path::PathBuf,
        }
        impl Observer for Remover {
            fn item(&self, tag: char, path: &[u8]) {
                if tag == '+' && path == self.trigger && self.doomed.exists() {
                    std::fs::remove_dir_all(&self.doomed).unwrap();
                }
            }
        }

        write_file(&t.src.join("a/f"), b"a");
        write_file(&t.src.join("b/deep/f"), b"b");
        let config = SessionConfig::new(t.src.clone(), t.dst.display().to_string());
        let opts = config.options().unwrap();
        let rep = Arc::new(Reporter::new(Box::new(Remover {
            // A directory's `+` is told as the root's merge creates it (a
            // file's only once it is sent, on a worker thread).
            trigger: b"a".to_vec(),
            doomed: t.src.join("b"),
        })));
        let slave = InProcess {
            root: t.dst.clone(),
        };
        let mut r = Replicator::connect_with(&opts, &slave, rep.clone()).unwrap();
        r.round(&Scope::Full).expect("the round goes on");
        assert!(!t.src.join("b").exists(), "the trigger fired");
        assert_eq!(rep.counters.errors.load(Relaxed), 0, "not a failure");
        assert_eq!(rep.counters.vanished.load(Relaxed), 1, "but counted");
        // The next round settles what became of it.
        r.round(&Scope::Full).expect("next round");
        r.close(Ok(())).unwrap();
        crate::support::tree::assert_trees_equal(&t.src, &t.dst);
    }
);

// With the source's volume unmounted (an empty mount point in its place) and
// the session restarted, the replica was wiped. The source's device and inode
// are recorded at create; a different directory there is a safety halt.
georep_test!(
    regression_replaced_source_halts_instead_of_wiping_the_replica,
    |t: TestDir| {
        for i in 0..20 {
            write_file(&t.src.join(format!("d{}/f{i}", i % 4)), b"precious");
        }
        let s = started(&t, "halt", &[]);
        s.stop();
        rename(&t.src, &t.root.join("src.unmounted"));
        mkdir(&t.src);
        s.start();
        let st = s.wait_status("a safety halt", Duration::from_secs(30), |st| {
            st["state"] == "Faulty"
                && st["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not the directory it was"))
        });
        assert!(
            st["last_error"].as_str().unwrap().contains("--force"),
            "{st}"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            crate::support::tree::walk(&t.dst).len(),
            crate::support::tree::walk(&t.root.join("src.unmounted")).len(),
            "nothing was deleted from the replica"
        );
        s.stop();
        // The operator says the new source is the one: it is replicated.
        write_file(&t.src.join("new"), b"the new source");
        s.run(&["start", "halt", "--force"]).assert_code(0);
        s.wait_converged("after start --force");
        s.stop();
        assert_converged(&s);
    }
);

// A hard link made with `ln a/x b/y` was shipped as a separate file and linked
// by the next crawl; during that crawl status read Active / Changelog /
// pending 0 while the slave differed. Whenever status says converged now,
// the trees are equal.
georep_test!(
    regression_status_says_converged_only_when_it_is,
    |t: TestDir| {
        write_file(&t.src.join("a/x"), &[7u8; 40_000]);
        mkdir(&t.src.join("b"));
        // Enough entries that the crawl which links the group takes a while.
        for i in 0..8000 {
            write_file(&t.src.join(format!("c/{}/{i}", i % 40)), b"padding");
        }
        let s = started(&t, "truth", &[]);
        hard_link(&t.src.join("a/x"), &t.src.join("b/y"));
        // Let the recorder journal the event: a status read before that cannot know.
        std::thread::sleep(Duration::from_millis(30));
        let until = Instant::now() + Duration::from_secs(20);
        let mut converged_seen = 0;
        while Instant::now() < until && converged_seen < 3 {
            let st = s.status();
            let says_converged =
                st["state"] == "Active" && st["crawl"] == "Changelog" && pending_is_zero(&st);
            if says_converged {
                let d = crate::support::tree::tree_diff(&t.src, &t.dst);
                assert!(
                    d.is_empty(),
                    "status says converged, the slave differs: {d:?}\n{st}"
                );
                converged_seen += 1;
            }
        }
        assert!(converged_seen > 0, "the session never converged");
        s.stop();
        assert_converged(&s);
    }
);

// A daemon killed with SIGKILL showed as Stopped, like a clean stop; then
// as Faulty, but without saying when it died.
georep_test!(
    regression_a_dead_daemon_is_not_shown_as_stopped,
    |t: TestDir| {
        /// How often the daemon touches its pid file (session.rs HEARTBEAT).
        const HEARTBEAT: f64 = 10.0;
        let s = started(&t, "dies", &[]);
        let pid = s.daemon_pid().expect("a daemon runs");
        // Idle past a heartbeat: its last status report is older than that.
        std::thread::sleep(Duration::from_secs_f64(HEARTBEAT + 1.5));
        let killed_at = unix_now();
        signal(pid, Signal::KILL);
        let st = s.wait_status("the death seen", Duration::from_secs(10), |st| {
            st["pid"].is_null()
        });
        assert_eq!(st["state"], "Faulty", "{st}");
        let error = st["last_error"].as_str().unwrap();
        assert!(error.contains("died"), "{st}");
        assert!(
            error.contains("heartbeat in daemon.pid"),
            "the evidence: {st}"
        );
        let seen = st["last_seen_alive"]
            .as_f64()
            .expect("when it was last seen");
        assert!(
            seen <= killed_at + 1.0 && killed_at - seen <= HEARTBEAT + 2.0,
            "last seen alive {:.1} s before it was killed: {st}",
            killed_at - seen
        );
        let table = s.run(&["status", &s.name]);
        s.check(&table, 0);
        let line = table.stdout.lines().find(|l| l.contains("last seen alive"));
        assert!(line.is_some_and(|l| l.contains(" ago)")), "{table}");
        // A clean stop is Stopped, and nobody died.
        s.start();
        s.wait_converged("restarted");
        s.stop();
        let st = s.status();
        assert_eq!(st["state"], "Stopped");
        assert!(st.get("last_seen_alive").is_none(), "{st}");
    }
);

// Trimming forgets acked changes past journal_retention; once it had emptied the
// changes table (an idle hour at the default, at once with journal_retention=0),
// SQLite numbered the next change 1 again, behind the marker: read as acked, it
// was never shipped, and only the daily crawl would have found it.
georep_test!(regression_changes_after_an_emptied_journal, |t: TestDir| {
    write_file(&t.src.join("first"), b"first");
    let s = started(&t, "emptied", &["journal_retention=0"]);
    write_file(&t.src.join("second"), b"second");
    s.wait_converged("a change after the initial sync (the journal trimmed empty)");
    write_file(&t.src.join("third"), b"third");
    remove(&t.src.join("first"));
    s.wait_converged("changes after every earlier one was trimmed");
    s.stop();
    assert_converged(&s);
});

// The journal's writer thread ended at the first append SQLite refused (a full disk,
// or the database locked by another process past the 5 s busy timeout): from then on
// every change the watch saw went nowhere, while status kept saying Active.
georep_test!(
    regression_a_refused_journal_write_drops_nothing,
    |t: TestDir| {
        write_file(&t.src.join("before"), b"before");
        let s = started(&t, "refused", &[]);
        let lock = rusqlite::Connection::open(s.dir().join("journal.db")).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        write_file(
            &t.src.join("during"),
            b"written while the journal is locked",
        );
        // Longer than SQLite's busy timeout (5 s): the recorder's append is refused.
        std::thread::sleep(Duration::from_secs(7));
        lock.execute_batch("COMMIT;").unwrap();
        drop(lock);
        write_file(&t.src.join("after"), b"after the lock");
        s.wait_converged("changes made while the journal refused writes, and after");
        let log = s.log_tail();
        assert!(
            log.contains("holding them and retrying"),
            "no refused write:\n{log}"
        );
        s.stop();
        assert_converged(&s);
    }
);
