//! The daemon's log: levels (`log_level`, `RUST_LOG`), RFC 3339 times, a
//! line per shipped batch at debug, no times under journald, and a log
//! reopened on SIGHUP after rotation.

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::fs::*;
use crate::support::process::signal;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

fn log_text(s: &Session) -> String {
    std::fs::read_to_string(s.dir().join("daemon.log")).unwrap_or_default()
}

/// Waits until the log holds a line containing `needle`; returns that line.
#[track_caller]
fn wait_line(path: &std::path::Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return l.to_string();
        }
        assert!(
            start.elapsed() < CONVERGE,
            "no log line with {needle:?} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(POLL);
    }
}

/// "2026-12-02T15:28:28.123456Z  INFO ..." : an RFC 3339 time first.
fn starts_with_rfc3339(line: &str) -> bool {
    let t = line.split_whitespace().next().unwrap_or("");
    t.len() >= 20
        && t.as_bytes()[4] == b'-'
        && t.as_bytes()[10] == b'T'
        && (t.ends_with('Z') || t.contains('+'))
}

georep_test!(logs_levels_times_and_batch_lines, |t: TestDir| {
    write_file(&t.src.join("a"), b"a");
    let s = started(&t, "quiet", &[]);
    write_file(&t.src.join("b"), b"b");
    s.wait_converged("at info");
    let line = wait_line(&s.dir().join("daemon.log"), "session quiet started");
    assert!(starts_with_rfc3339(&line), "{line}");
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        !log_text(&s).contains("batch shipped"),
        "debug lines at info"
    );
    s.stop();
    // log_level=debug: one line per batch with its changes, bytes and time.
    s.run(&["config", &s.name, "log_level", "debug"])
        .assert_code(0);
    s.start();
    write_file(&t.src.join("c"), b"shipped at debug");
    s.wait_converged("at debug");
    let line = wait_line(&s.dir().join("daemon.log"), "batch shipped");
    for field in ["changes=", "bytes=", "ms="] {
        assert!(line.contains(field), "{line}");
    }
    assert!(line.contains("DEBUG"), "{line}");
    s.stop();
    // A bad level is refused at config time.
    s.run(&["config", &s.name, "log_level", "loud=="])
        .assert_code(EXIT_USAGE);
});

georep_test!(logs_reopened_on_sighup_after_rotation, |t: TestDir| {
    let s = started(&t, "rotated", &[]);
    let log = s.dir().join("daemon.log");
    let rotated = s.dir().join("daemon.log.1");
    rename(&log, &rotated);
    let pid = s.daemon_pid().expect("daemon");
    signal(pid, Signal::HUP);
    wait_line(&log, "reopened the log");
    // Still running, still replicating, logging to the new file.
    write_file(&t.src.join("after-rotation"), b"x");
    s.wait_converged("after SIGHUP");
    assert!(s.daemon_pid() == Some(pid), "SIGHUP stopped the daemon");
    s.stop();
    wait_line(&log, "stopped");
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("stopped"));
});

georep_test!(logs_without_times_under_journald, |t: TestDir| {
    let s = Session::new(&t, "journald");
    s.create_ok(p(&t.dst), &[]);
    let run_foreground = |journal: bool, name: &str| {
        let err = t.path(name);
        let file = std::fs::File::create(&err).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = s.command(&["start", &s.name, "--foreground"]);
        cmd.stdout(Stdio::null()).stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let mut child = ChildGuard(cmd.spawn().expect("start --foreground"));
        s.wait_converged("foreground");
        signal(child.0.id(), Signal::TERM);
        let status = wait_timeout(&mut child.0, Duration::from_secs(30));
        assert!(status.is_some_and(|st| st.success()), "{status:?}");
        wait_line(&err, "session journald started")
    };
    let plain = run_foreground(false, "stderr.log");
    assert!(starts_with_rfc3339(&plain), "{plain}");
    let journald = run_foreground(true, "journal.log");
    assert!(
        !starts_with_rfc3339(&journald),
        "journald adds the time: {journald}"
    );
    assert!(journald.trim_start().starts_with("INFO"), "{journald}");
});

georep_test!(logs_rust_log_wins_over_log_level, |t: TestDir| {
    let s = Session::new(&t, "envlevel");
    s.create_ok(p(&t.dst), &["log_level=error"]);
    let mut cmd = s.command(&["start", &s.name]);
    cmd.env("RUST_LOG", "georep=debug");
    let run = run_cmd(cmd, &s.scratch, CMD_TIMEOUT);
    run.assert_code(0);
    // Written after the first crawl, so that a live round (not that crawl,
    // had it come first) ships it and logs at debug level.
    s.wait_converged("initial sync");
    write_file(&t.src.join("x"), b"x");
    s.wait_converged("with RUST_LOG");
    wait_line(&s.dir().join("daemon.log"), "batch shipped");
    s.stop();
});
