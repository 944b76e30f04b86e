//! A live session's events as operators see them: hooks run on each state
//! change, and /metrics serves the session's numbers (checked by promtool).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::conventions::metrics::{get, promtool, samples};
use crate::support::fs::*;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

/// A hook that appends "EVENT STATE SESSION CHECKPOINT_COMPLETED" to `log`.
fn recording_hook(dir: &std::path::Path, log: &std::path::Path) {
    mkdir(dir);
    let script = format!(
        "#!/bin/sh\necho \"$1 $GEOREP_STATE $GEOREP_SESSION ${{GEOREP_CHECKPOINT_COMPLETED:-none}}\" >> {}\n",
        log.display()
    );
    let hook = dir.join("10-record");
    write_file(&hook, script.as_bytes());
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn wait_for_line(log: &std::path::Path, prefix: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
            return l.to_string();
        }
        assert!(
            start.elapsed() < CONVERGE,
            "no hook line {prefix:?} after {CONVERGE:?}; got:\n{text}"
        );
        std::thread::sleep(POLL);
    }
}

georep_test!(hooks_run_on_each_event, |t: TestDir| {
    let (hooks, log) = (t.path("hooks"), t.path("events.log"));
    recording_hook(&hooks, &log);
    let set = format!("hooks_dir={}", hooks.display());
    write_file(&t.src.join("a"), b"a");
    let s = started(&t, "hooked", &[&set]);
    wait_for_line(&log, "started ");
    wait_for_line(&log, "active Active hooked");
    s.run(&["pause", &s.name]).assert_code(0);
    wait_for_line(&log, "paused Paused hooked");
    s.run(&["resume", &s.name]).assert_code(0);
    wait_for_line(&log, "resumed ");
    s.run(&["checkpoint", &s.name, "--wait", "--timeout", "30"])
        .assert_code(0);
    wait_for_line(&log, "checkpoint-completed Active hooked true");
    // A lost slave: faulty, then recovered once the retry gets through.
    let daemon = s.daemon_pid().expect("a daemon");
    let slave = std::fs::read_to_string(format!("/proc/{daemon}/task/{daemon}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<u32>().ok());
    if let Some(slave) = slave {
        crate::support::process::signal(slave, rustix::process::Signal::KILL);
        write_file(&t.src.join("b"), b"after the slave died");
        wait_for_line(&log, "faulty Faulty hooked");
        wait_for_line(&log, "recovered Active hooked");
        s.wait_converged("after recovery");
    } else {
        eprintln!("no slave child found: faulty/recovered not exercised");
    }
    s.stop();
    wait_for_line(&log, "stopped Stopped hooked");
    assert_converged(&s);
});

/// A port free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

georep_test!(metrics_endpoint_serves_the_session, |t: TestDir| {
    let port = free_port();
    let set = format!("metrics_listen=127.0.0.1:{port}");
    write_file(&t.src.join("a"), b"some bytes to count");
    let s = started(&t, "scraped", &[&set]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = get(addr, "/metrics").body;
    let m = samples(&body);
    let val = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{body}"));
    assert_eq!(
        val(r#"georep_state{session="scraped",state="Active"}"#),
        1.0
    );
    assert_eq!(
        val(r#"georep_state{session="scraped",state="Paused"}"#),
        0.0
    );
    assert!(val(r#"georep_bytes_sent_total{session="scraped"}"#) > 0.0);
    assert_eq!(val(r#"georep_pending{session="scraped",kind="data"}"#), 0.0);
    promtool(&body);
    // Paused with a backlog: the state and the pending counts move.
    s.run(&["pause", &s.name]).assert_code(0);
    s.wait_status("Paused", CONVERGE, |st| st["state"] == "Paused");
    write_file(&t.src.join("b"), b"waits");
    let start = Instant::now();
    loop {
        let m = samples(&get(addr, "/metrics").body);
        let paused = m.get(r#"georep_state{session="scraped",state="Paused"}"#) == Some(&1.0);
        let pending = m
            .get(r#"georep_pending{session="scraped",kind="entry"}"#)
            .is_some_and(|n| *n > 0.0);
        if paused && pending {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{m:?}");
        std::thread::sleep(POLL);
    }
    s.run(&["resume", &s.name]).assert_code(0);
    s.wait_converged("resumed");
});

georep_test!(stopping_a_paused_session_is_no_resume, |t: TestDir| {
    let (hooks, log) = (t.path("hooks"), t.path("events.log"));
    recording_hook(&hooks, &log);
    let set = format!("hooks_dir={}", hooks.display());
    let s = started(&t, "pausedstop", &[&set]);
    s.run(&["pause", &s.name]).assert_code(0);
    wait_for_line(&log, "paused Paused");
    s.stop();
    wait_for_line(&log, "stopped Stopped");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("resumed"), "a stop fired resumed:\n{text}");
});

georep_test!(counters_never_go_down, |t: TestDir| {
    let port = free_port();
    let set = format!("metrics_listen=127.0.0.1:{port}");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for i in 0..5 {
        write_file(&t.src.join(format!("f{i}")), b"counted");
    }
    let s = started(&t, "counters", &[&set]);
    let counters = |s: &Session| {
        let st = s.status();
        (num(&st, "files_synced"), num(&st, "bytes_sent"))
    };
    let (files, bytes) = counters(&s);
    assert!(files >= 5.0 && bytes > 0.0, "{files} {bytes}");
    // A new connection (pause, resume) and a new daemon carry them on.
    s.run(&["pause", &s.name]).assert_code(0);
    s.wait_status("Paused", CONVERGE, |st| st["state"] == "Paused");
    s.run(&["resume", &s.name]).assert_code(0);
    write_file(&t.src.join("after-resume"), b"one more");
    s.wait_converged("after resume");
    let (f2, b2) = counters(&s);
    assert!(f2 > files && b2 > bytes, "{files}->{f2} {bytes}->{b2}");
    s.stop();
    s.start();
    write_file(&t.src.join("after-restart"), b"and one more");
    s.wait_converged("after restart");
    // Sampled for a while: the first reports of the new daemon included.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let (f3, b3) = counters(&s);
        assert!(f3 > f2 && b3 > b2, "went down: {f2}->{f3} {b2}->{b3}");
        let m = samples(&get(addr, "/metrics").body);
        let total = m[r#"georep_files_synced_total{session="counters"}"#];
        assert!(total >= f3, "metrics {total} < status {f3}");
        std::thread::sleep(POLL);
    }
});
