//! Issue 11's audit, as an operator reads `status` and starts sessions: a
//! stopped session's source, target and pending counts; state an earlier
//! run left; a source that is missing at create or at start; a closed
//! stderr; key files and hooks given relative. Each test is named for the
//! item it pins.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::fs::*;
use crate::support::harness::assert_absent;
use crate::support::session::*;
use crate::support::tree::*;
use crate::support::{georep_test, TestDir};

/// Exit code: SOURCE missing, unreadable or not a directory.
const EXIT_SOURCE: i32 = 3;
/// What a panic exits with: the one code these runs must never end with.
const EXIT_PANIC: i32 = 101;

/// The table's row for the session, up to its SOURCE -> TARGET (the
/// test's paths hold the test's name, with any word in it).
fn table_row(s: &Session) -> String {
    let run = s.run(&["status", &s.name]);
    s.check(&run, 0);
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&s.name))
        .unwrap_or_else(|| panic!("no row for {}\n{run}", s.name));
    let src = p(&s.src);
    row.split_once(src)
        .map_or(row, |(columns, _)| columns)
        .to_owned()
}

// ---- A stopped session's status names what it will replicate next.

georep_test!(
    operator_config_source_of_a_stopped_session_shows_in_status,
    |t: TestDir| {
        write_file(&t.src.join("f"), b"data");
        let s = started(&t, "moved", &[]);
        s.stop();
        let (src2, dst2) = (t.path("src2"), t.path("dst2"));
        write_file(&src2.join("g"), b"the new source");
        s.config(&["source", p(&src2)]).assert_code(0);
        s.config(&["target", p(&dst2)]).assert_code(0);
        let st = s.status();
        assert_eq!(st["source"], p(&src2), "{st}");
        assert_eq!(st["target"], p(&dst2), "{st}");
        let run = s.run(&["status", &s.name]);
        s.check(&run, 0);
        let shown = format!("{} -> {}", p(&src2), p(&dst2));
        assert!(run.stdout.contains(&shown), "{run}");
    }
);

// ---- `start` does not carry over what an earlier run left.

georep_test!(operator_start_clears_stale_state, |t: TestDir| {
    write_file(&t.src.join("f"), b"data");
    let s = started(&t, "stale", &[]);
    s.stop();
    // What a run that hit the inotify limit, then a config change, leave.
    let path = s.dir().join("status.json");
    let mut old: Value = serde_json::from_slice(&read_file(&path)).unwrap();
    old["watch_limit"] = true.into();
    old["last_error"] = "stale: an earlier run's error".into();
    old["source"] = "/old/source".into();
    old["target"] = "/old/target".into();
    std::fs::write(&path, old.to_string()).unwrap();
    let st = s.status();
    assert_eq!(
        st["source"],
        p(&t.src),
        "the config's, not the report's: {st}"
    );

    s.start();
    let st = s.wait_converged("restarted");
    assert_eq!(st["watch_limit"], false, "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    assert_eq!(st["source"], p(&t.src), "{st}");
    assert_eq!(st["target"], p(&t.dst), "{st}");
    s.stop();
    let st = s.status();
    assert!(st["last_error"].is_null(), "{st}");
    assert_eq!(st["watch_limit"], false, "{st}");
});

// ---- A stopped session's pending counts: the journal's, or unknown.

georep_test!(
    operator_stopped_pending_is_unknown_unless_journaled,
    |t: TestDir| {
        write_file(&t.src.join("a"), b"a");
        let s = started(&t, "pending", &[]);
        s.stop();
        // Changes made now are in no journal: 0/0/0 would be a lie.
        write_file(&t.src.join("while-stopped"), b"unseen");
        let st = s.status();
        assert_eq!(st["state"], "Stopped", "{st}");
        assert!(st["pending"].is_null(), "{st}");
        let row = table_row(&s);
        // LAG and PENDING both.
        assert_eq!(row.matches("unknown").count(), 2, "{row}");
        assert!(!row.contains("0/0/0"), "{row}");
        let detail = s.run(&["status", &s.name, "--detail"]);
        s.check(&detail, 0);
        for key in ["ENTRY", "DATA", "META"] {
            let line = detail.stdout.lines().find(|l| l.starts_with(key));
            assert!(
                line.is_some_and(|l| l.ends_with("unknown")),
                "{key}\n{detail}"
            );
        }

        // Journaled while paused, then stopped: the journal's counts.
        s.start();
        s.wait_converged("caught up");
        s.run(&["pause", &s.name]).assert_code(0);
        s.wait_status("Paused", CONVERGE, |st| st["state"] == "Paused");
        write_file(&t.src.join("b"), b"b");
        write_file(&t.src.join("c"), b"c");
        s.wait_status("journaled", CONVERGE, |st| {
            st["pending"]["entry"].as_u64() >= Some(2)
        });
        s.stop();
        let st = s.status();
        let pending = &st["pending"];
        let count = |k: &str| pending[k].as_u64().unwrap_or_else(|| panic!("{st}"));
        assert!(count("entry") >= 2, "{st}");
        let row = table_row(&s);
        let shown = format!("{}/{}/{}", count("entry"), count("data"), count("meta"));
        assert!(row.contains(&shown), "{shown}\n{row}");
        s.run(&["resume", &s.name]).assert_code(0);
        s.start();
        s.wait_converged("resumed");
        s.stop();
    }
);

// ---- A source that is missing or a file: refused at create, halted at start.

georep_test!(
    operator_create_refuses_a_missing_or_file_source,
    |t: TestDir| {
        write_file(&t.path("plain"), b"a file");
        for (source, says) in [
            (t.path("missing"), "No such file"),
            (t.path("plain"), "not a directory"),
        ] {
            let s = Session::new(&t, "nosource");
            let run = s.run(&["create", &s.name, p(&source), p(&t.dst)]);
            s.check(&run, EXIT_SOURCE);
            assert!(run.stderr.contains(p(&source)), "{run}");
            assert!(run.stderr.contains(says), "{run}");
            assert_absent(&s.dir());
        }
        assert_absent(&t.dst);
    }
);

georep_test!(
    operator_session_started_without_its_source_halts,
    |t: TestDir| {
        for i in 0..20 {
            write_file(&t.src.join(format!("d{}/f{i}", i % 4)), b"precious");
        }
        let s = started(&t, "unmounted", &[]);
        s.stop();
        let names: Vec<_> = walk(&t.dst).into_keys().collect();
        let hashes = content_hashes(&t.dst);
        // As an unmounted volume whose mount point is gone.
        let away = t.path("src.away");
        rename(&t.src, &away);
        s.start();
        let st = s.wait_status("Faulty for the missing source", CONVERGE, |st| {
            st["state"] == "Faulty"
                && st["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(p(&t.src)) && e.contains("not retried"))
        });
        // It stays halted: nothing shipped, nothing deleted.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(s.status()["state"], "Faulty", "{st}");
        assert_eq!(walk(&t.dst).into_keys().collect::<Vec<_>>(), names);
        assert_eq!(content_hashes(&t.dst), hashes);
        // Back in place, the next start replicates again.
        rename(&away, &t.src);
        s.stop();
        s.start();
        s.wait_converged("the source is back");
        s.stop();
    }
);

// ---- A closed stderr is no panic, for the commands that ignore SIGPIPE.

/// `cmd`'s exit code with stderr on a pipe nobody reads any more, as
/// `georep ... 2>&1 | head -c1` leaves it once `head` is gone.
fn code_with_closed_stderr(mut cmd: Command) -> Option<i32> {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .status()
        .unwrap();
    status.code()
}

georep_test!(
    operator_sync_and_start_to_a_closed_stderr_do_not_panic,
    |t: TestDir| {
        for i in 0..3 {
            write_file(&t.src.join(format!("f{i}")), b"x");
        }
        t.sync_ok(&[]);
        // Each prints its reason on stderr.
        let nested = t.sync_command(&[], &t.src, t.src.join("mirror"));
        for i in 0..3 {
            remove(&t.src.join(format!("f{i}")));
        }
        let refused = t.sync_command(&["--max-delete", "1"], &t.src, &t.dst);
        let s = Session::new(&t, "piped");
        let unknown = s.command(&["start", "nosuch"]);
        for (what, cmd, code) in [
            ("a target inside the source", nested, EXIT_USAGE),
            ("deletions over --max-delete", refused, 25),
            ("start of an unknown session", unknown, EXIT_SESSION),
        ] {
            let got = code_with_closed_stderr(cmd);
            assert_ne!(got, Some(EXIT_PANIC), "{what}: panicked");
            assert_eq!(got, Some(code), "{what}");
        }
        assert!(t.dst.join("f0").exists(), "the refused run deleted");
        assert_absent(&t.src.join("mirror"));
        // A running session's `start` says so, on the same closed pipe.
        s.create_ok(p(&t.dst), &["max_delete_percent=100"]);
        s.start();
        let again = s.command(&["start", &s.name]);
        assert_eq!(code_with_closed_stderr(again), Some(EXIT_SESSION));
        s.stop();
    }
);

// ---- Key files and the hooks directory are stored absolute, like SOURCE.

georep_test!(
    operator_key_files_and_hooks_dir_are_stored_absolute,
    |t: TestDir| {
        write_file(&t.src.join("f"), b"data");
        // The target is local: the key files must exist, they are not used.
        write_file(&t.path("keys/id"), b"a key file");
        write_file(&t.path("keys/other"), b"another key file");
        write_file(&t.path("keys/known"), b"");
        mkdir(&t.path("hooks"));
        let s = Session::new(&t, "keys");
        let mut cmd = s.command(&["create", &s.name, p(&t.src), p(&t.dst)]);
        for kv in [
            "identity=keys/id",
            "known_hosts=keys/known",
            "hooks_dir=hooks",
        ] {
            cmd.args(["--set", kv]);
        }
        cmd.current_dir(&t.root);
        run_cmd(cmd, &s.scratch, CMD_TIMEOUT).assert_code(0);
        assert_eq!(s.config_get("identity"), p(&t.path("keys/id")));
        assert_eq!(s.config_get("known_hosts"), p(&t.path("keys/known")));
        assert_eq!(s.config_get("hooks_dir"), p(&t.path("hooks")));
        // `config` too, against the directory it is typed in.
        let mut cmd = s.command(&["config", &s.name, "identity", "other"]);
        cmd.current_dir(t.path("keys"));
        run_cmd(cmd, &s.scratch, CMD_TIMEOUT).assert_code(0);
        assert_eq!(s.config_get("identity"), p(&t.path("keys/other")));
        // A daemon started from elsewhere finds them (start checks they exist).
        let mut cmd = s.command(&["start", &s.name]);
        cmd.current_dir("/");
        let run = run_cmd(cmd, &s.scratch, CMD_TIMEOUT);
        s.check(&run, 0);
        s.wait_converged("started from /");
        s.stop();
    }
);
