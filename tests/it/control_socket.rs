//! The control socket spoken raw, as a script would (docs/CONTROL.md), and
//! `status --detail` as an operator reads it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::fs::*;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

/// One request, one reply line.
fn ask(sock: &std::path::Path, line: &str) -> Value {
    let mut c = UnixStream::connect(sock).expect("connect to the control socket");
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c.write_all(line.as_bytes()).unwrap();
    c.write_all(b"\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&c).read_line(&mut reply).expect("a reply");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

georep_test!(control_protocol_spoken_raw, |t: TestDir| {
    write_file(&t.src.join("sub/a"), b"a");
    let s = started(&t, "raw", &[]);
    let sock = s.dir().join("control.sock");
    let r = ask(&sock, r#"{"cmd":"status"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["status"]["state"], "Active", "{r}");
    assert_eq!(r["status"]["session"], "raw", "{r}");

    let r = ask(&sock, r#"{"cmd":"pause"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let start = Instant::now();
    while ask(&sock, r#"{"cmd":"status"}"#)["status"]["state"] != "Paused" {
        assert!(start.elapsed() < CONVERGE, "never Paused");
        std::thread::sleep(POLL);
    }
    write_file(&t.src.join("while-paused"), b"held");
    let r = ask(&sock, r#"{"cmd":"checkpoint"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["checkpoint"]["seq"].as_u64() > Some(0), "{r}");
    assert!(r["checkpoint"]["completed_at"].is_null(), "{r}");
    let r = ask(&sock, r#"{"cmd":"resume"}"#);
    assert_eq!(r["ok"], true, "{r}");
    s.wait_status("the checkpoint completes", CONVERGE, |st| {
        st["checkpoint_completed"] == true
    });
    assert_eq!(read_file(&t.dst.join("while-paused")), b"held");

    // A subtree rescan, the path as bytes ("sub").
    write_file(&t.dst.join("sub/a"), b"drifted");
    let r = ask(&sock, r#"{"cmd":"rescan","path":[115,117,98]}"#);
    assert_eq!(r["ok"], true, "{r}");
    s.wait_converged("the raw rescan");

    // Nonsense gets an error, not a hang or a dead daemon.
    for bad in [
        "not json",
        r#"{"cmd":"format-disk"}"#,
        r#"{"cmd":"checkpoint","time":-1}"#,
    ] {
        let r = ask(&sock, bad);
        assert_eq!(r["ok"], false, "{bad}: {r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    assert_eq!(
        ask(&sock, r#"{"cmd":"status"}"#)["status"]["state"],
        "Active"
    );

    let r = ask(&sock, r#"{"cmd":"stop"}"#);
    assert_eq!(r["ok"], true, "{r}");
    // The pid file stays (its lock says who runs); status says it stopped.
    s.wait_status("stopped over the socket", CONVERGE, |st| {
        st["state"] == "Stopped" && st["pid"].is_null()
    });
    assert_converged(&s);
});

georep_test!(
    status_detail_has_glusters_fields_and_an_eta,
    |t: TestDir| {
        write_file(&t.src.join("a"), b"a");
        let s = started(&t, "detail", &[]);
        s.run(&["checkpoint", &s.name, "--wait", "--timeout", "20"])
            .assert_code(0);
        let run = s.run(&["status", &s.name, "--detail"]);
        s.check(&run, 0);
        let field = |k: &str| -> String {
            run.stdout
                .lines()
                .find(|l| l.starts_with(k) && l[k.len()..].starts_with("  "))
                .map(|l| l[k.len()..].trim().to_string())
                .unwrap_or_else(|| panic!("no {k} in\n{run}"))
        };
        assert_eq!(field("SESSION"), "detail");
        assert_eq!(field("MASTER PATH"), p(&t.src));
        assert_eq!(field("SLAVE"), p(&t.dst));
        assert_eq!(field("STATUS"), "Active");
        assert_eq!(field("CRAWL STATUS"), "Changelog");
        for k in ["ENTRY", "DATA", "META"] {
            assert_eq!(field(k), "0", "{k}");
        }
        assert!(field("FAILURES").starts_with("0"), "{run}");
        assert!(!field("MASTER NODE").is_empty());
        assert!(field("LAST SYNCED").contains("ago"), "{run}");
        assert!(field("CHECKPOINT TIME").contains("ago"), "{run}");
        assert_eq!(field("CHECKPOINT COMPLETED"), "Yes");
        assert!(field("CHECKPOINT COMPLETION TIME").contains("ago"), "{run}");
        assert_eq!(field("LAG (s)"), "0.00", "{run}");
        assert_eq!(field("ETA"), "-", "nothing pending: {run}");
        // A backlog while paused: the ETA is unknown or a duration, never "-".
        s.run(&["pause", &s.name]).assert_code(0);
        s.wait_status("Paused", CONVERGE, |st| st["state"] == "Paused");
        write_file(&t.src.join("b"), b"b");
        s.wait_status("b journaled", CONVERGE, |st| !pending_is_zero(st));
        let run = s.run(&["status", &s.name, "--detail"]);
        let eta = run
            .stdout
            .lines()
            .find(|l| l.starts_with("ETA "))
            .map(|l| l[3..].trim().to_string())
            .unwrap_or_default();
        assert!(eta != "-" && !eta.is_empty(), "ETA with a backlog: {run}");
        s.run(&["resume", &s.name]).assert_code(0);
        s.wait_converged("resumed");
        s.stop();
        assert_converged(&s);
    }
);
