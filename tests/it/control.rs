//! The control plane through the real CLI and the real control socket:
//! pause and resume, checkpoints, rescans, parked failures, the socket's
//! permissions.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::fs::*;
use crate::support::process::signal;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

/// `checkpoint --wait --timeout` ran out.
const EXIT_TIMEOUT: i32 = 30;

fn state(st: &serde_json::Value) -> &str {
    st["state"].as_str().unwrap_or("")
}

georep_test!(
    pause_journals_survives_restarts_and_resume_converges,
    |t: TestDir| {
        write_file(&t.src.join("before"), b"before the pause");
        let s = started(&t, "paused", &[]);
        s.run(&["pause", &s.name]).assert_code(0);
        s.wait_status("Paused", CONVERGE, |st| state(st) == "Paused");
        // A steady writer while paused: journaled, not shipped.
        for i in 0..20 {
            write_file(&t.src.join(format!("during/f{i}")), b"written while paused");
            std::thread::sleep(ms(20));
        }
        let st = s.wait_status("the backlog journaled", CONVERGE, |st| {
            st["pending"]["entry"].as_u64().unwrap_or(0) >= 20
        });
        assert_eq!(state(&st), "Paused", "{st}");
        assert!(st["paused"] == true, "{st}");
        assert!(!t.dst.join("during").exists(), "shipped while paused");
        // A clean restart and a SIGKILL both come back paused.
        s.stop();
        s.start();
        s.wait_status("Paused after a restart", CONVERGE, |st| {
            state(st) == "Paused"
        });
        let pid = s.daemon_pid().expect("a daemon");
        signal(pid, Signal::KILL);
        s.start();
        s.wait_status("Paused after SIGKILL", CONVERGE, |st| state(st) == "Paused");
        std::thread::sleep(ms(500));
        assert!(
            !t.dst.join("during").exists(),
            "shipped after a restart while paused"
        );
        s.run(&["resume", &s.name]).assert_code(0);
        let st = s.wait_converged("the backlog after resume");
        assert_eq!(st["paused"], false, "{st}");
        s.stop();
        assert_converged(&s);
    }
);

georep_test!(
    checkpoint_completes_once_its_changes_are_on_the_slave,
    |t: TestDir| {
        write_file(&t.src.join("a"), b"a");
        let s = started(&t, "cp", &[]);
        // An idle tree: completes at once.
        let run = s.run(&["checkpoint", &s.name, "now", "--wait", "--timeout", "20"]);
        s.check(&run, 0);
        let st = s.status();
        assert_eq!(st["checkpoint_completed"], true, "{st}");
        assert!(st["checkpoint_completion_time"].as_f64() >= st["checkpoint_time"].as_f64());

        s.run(&["pause", &s.name]).assert_code(0);
        s.wait_status("Paused", CONVERGE, |st| state(st) == "Paused");
        write_file(&t.src.join("b"), b"written before the checkpoint");
        // Counted, not merely "not zero": unknown (null) is not journaled.
        s.wait_status("b journaled", CONVERGE, |st| {
            st["pending"]["entry"].as_u64() >= Some(1)
        });
        let run = s.run(&["checkpoint", &s.name, "--wait", "--timeout", "1"]);
        s.check(&run, EXIT_TIMEOUT);
        let st = s.status();
        assert_eq!(
            st["checkpoint_completed"], false,
            "completed while paused: {st}"
        );
        let set_at = st["checkpoint_time"].as_f64().expect("a checkpoint time");
        // It survives a restart, still pending.
        s.stop();
        s.start();
        let st = s.wait_status("Paused after restart", CONVERGE, |st| state(st) == "Paused");
        assert_eq!(st["checkpoint_time"].as_f64(), Some(set_at), "{st}");
        assert_eq!(st["checkpoint_completed"], false, "{st}");
        s.run(&["resume", &s.name]).assert_code(0);
        let st = s.wait_status("the checkpoint completes", CONVERGE, |st| {
            st["checkpoint_completed"] == true
        });
        // Completed means on the slave: b is there the moment status says so.
        assert_eq!(
            read_file(&t.dst.join("b")),
            b"written before the checkpoint",
            "{st}"
        );
        assert_eq!(st["checkpoint_time"].as_f64(), Some(set_at));
        // A time in the future is refused.
        let later = format!("{}", unix_now() + 3600.0);
        s.run(&["checkpoint", &s.name, &later])
            .assert_code(EXIT_USAGE);
        s.stop();
        assert_converged(&s);
    }
);

georep_test!(parked_failure_lets_other_changes_flow, |t: TestDir| {
    mkdir(&t.src.join("locked"));
    let s = started(&t, "parked", &[]);
    let Some(lock) = Immutable::set(&t.dst.join("locked")) else {
        eprintln!("skipped: chattr +i is not available on this filesystem");
        return;
    };
    write_file(&t.src.join("locked/refused"), b"the slave refuses this");
    // It is retried on its own, then parked; the marker passes it.
    // (The immutable directory's own metadata is refused too.)
    let st = s.wait_status("parked", Duration::from_secs(40), |st| {
        st["parked"].as_u64() >= Some(1) && st["parked"] == st["failures"]
    });
    let listed = st["failed_entries"].to_string();
    assert!(listed.contains("locked/refused"), "{st}");
    assert!(pending_is_zero(&st), "the marker passed it: {st}");
    // Others flow with low lag meanwhile.
    for i in 0..5 {
        let f = t.src.join(format!("free{i}"));
        let at = Instant::now();
        write_file(&f, b"not held back");
        while !t.dst.join(format!("free{i}")).exists() {
            assert!(at.elapsed() < Duration::from_secs(5), "free{i} held back");
            std::thread::sleep(ms(10));
        }
    }
    let run = s.run(&["status", &s.name, "--detail"]);
    s.check(&run, 0);
    assert!(run.stdout.contains("locked/refused"), "{run}");
    // Fixed on the slave, then rescanned: it replicates and leaves the table.
    drop(lock);
    s.run(&["rescan", &s.name, "locked"]).assert_code(0);
    s.wait_converged("the parked entry after a rescan");
    // The tree converges while the rescan round runs; the table is cleared
    // when it ends.
    s.wait_status("the failure table empty", CONVERGE, |st| {
        st["failures"] == 0 && st["parked"] == 0
    });
    s.stop();
    assert_converged(&s);
});

georep_test!(rescan_repairs_drift_in_a_subtree, |t: TestDir| {
    write_file(&t.src.join("sub/deep/file"), b"master copy");
    write_file(&t.src.join("other"), b"other");
    let s = started(&t, "rescan", &[]);
    // Drift behind the session's back: only a crawl can see it.
    write_file(&t.dst.join("sub/deep/file"), b"damaged on the slave");
    write_file(&t.dst.join("sub/stray"), b"not on the master");
    s.run(&["rescan", &s.name, "sub"]).assert_code(0);
    s.wait_converged("a subtree rescan");
    write_file(&t.dst.join("other"), b"damaged too");
    let abs = t.src.join("other");
    s.run(&["rescan", &s.name, p(&abs)]).assert_code(0);
    s.wait_converged("a rescan by absolute path");
    s.run(&["rescan", &s.name, "../etc"])
        .assert_code(EXIT_USAGE);
    s.stop();
    assert_converged(&s);
    // Nothing to rescan with: the stopped session says so.
    s.run(&["rescan", &s.name]).assert_code(EXIT_SESSION);
    s.run(&["stop", &s.name]).assert_code(EXIT_SESSION);
});

georep_test!(
    commands_on_a_stopped_session_take_effect_at_start,
    |t: TestDir| {
        write_file(&t.src.join("a"), b"a");
        let s = Session::new(&t, "offline");
        s.create_ok(p(&t.dst), &[]);
        s.run(&["pause", &s.name]).assert_code(0);
        let st = s.status();
        assert_eq!(st["paused"], true, "{st}");
        s.run(&["checkpoint", &s.name]).assert_code(0);
        s.start();
        s.wait_status("starts paused", CONVERGE, |st| state(st) == "Paused");
        assert!(!t.dst.join("a").exists(), "shipped while paused");
        s.run(&["resume", &s.name]).assert_code(0);
        s.wait_status(
            "the checkpoint set while stopped completes",
            CONVERGE,
            |st| st["checkpoint_completed"] == true && state(st) == "Active",
        );
        s.wait_converged("resumed");
    }
);

georep_test!(
    control_socket_is_private_and_checks_its_peer,
    |t: TestDir| {
        let s = started(&t, "sock", &[]);
        let sock = s.dir().join("control.sock");
        let mode = std::fs::symlink_metadata(&sock)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
        if !is_root() {
            eprintln!("skipped the peer check: needs root to connect as another user");
            return;
        }
        // Open the way to the socket so that only the peer check stands.
        for d in [s.home.clone(), s.home.join("sessions"), s.dir()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        // The daemon answers a stranger before reading a word: the send may
        // find the socket closed already.
        let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        try: s.sendall(b'{\"cmd\":\"stop\"}\\n')\n\
        except OSError: pass\n\
        print(s.recv(4096).decode())";
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(script)
            .arg(&sock)
            .output();
        let Ok(out) = out else {
            eprintln!("skipped the peer check: setpriv or python3 missing");
            return;
        };
        let reply = String::from_utf8_lossy(&out.stdout);
        assert!(reply.contains("permission denied"), "{reply} {out:?}");
        // The refused stop did not stop it.
        std::thread::sleep(ms(300));
        assert!(s.daemon_pid().is_some(), "a stranger stopped the daemon");
        assert_eq!(state(&s.status()), "Active");
    }
);

georep_test!(initial_crawl_shows_progress_in_status, |t: TestDir| {
    const FILES: u64 = 400;
    const DIRS: u64 = 20;
    const SIZE: u64 = 16 * 1024;
    for i in 0..FILES {
        write_random(&t.src.join(format!("d{}/f{i}", i % DIRS)), SIZE, i);
    }
    // 6.4 MB at 2 MiB/s: the first crawl takes about 3 s, on any machine.
    let s = Session::new(&t, "progress");
    s.create_ok(p(&t.dst), &["bwlimit=2M"]);
    s.start();
    let mut seen = None;
    let start = Instant::now();
    while start.elapsed() < CONVERGE {
        let st = s.status();
        let pr = &st["progress"];
        if pr["files_checked"].as_u64() > Some(0)
            && pr["source_counted"] == true
            && pr["eta_seconds"].as_f64().is_some()
        {
            let table = s.run(&["status", &s.name]);
            seen = Some((st, table));
            break;
        }
        if st["state"] == "Active" {
            break;
        }
        std::thread::sleep(ms(20));
    }
    let (st, table) = seen.unwrap_or_else(|| {
        panic!(
            "status never showed the initial crawl's progress with a total and an ETA\n{}",
            s.diagnostics()
        )
    });
    assert_eq!(st["state"], "Initializing", "{st}");
    let pr = &st["progress"];
    assert!(pr["rate"].as_f64() > Some(0.0), "{st}");
    assert_eq!(pr["source_entries"], FILES + DIRS, "{st}");
    assert_eq!(pr["source_bytes"], FILES * SIZE, "{st}");
    assert!(pr["eta_seconds"].as_f64() > Some(0.0), "{st}");
    assert!(
        table
            .stdout
            .contains(&format!("of {} entries checked", FILES + DIRS)),
        "{table}"
    );
    assert!(table.stdout.contains("left"), "{table}");
    s.wait_converged("initial sync");
});

georep_test!(
    foreground_ctrl_c_is_no_fault_and_stopped_lag_is_unknown,
    |t: TestDir| {
        write_file(&t.src.join("a"), b"a");
        let s = Session::new(&t, "fgint");
        s.create_ok(p(&t.dst), &[]);
        let mut cmd = s.command(&["start", &s.name, "--foreground"]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = ChildGuard(cmd.spawn().expect("spawn start --foreground"));
        s.wait_converged("foreground");
        // Ctrl-C in a terminal: SIGINT to the process.
        signal(child.0.id(), Signal::INT);
        let exit = wait_timeout(&mut child.0, CMD_TIMEOUT);
        assert!(exit.is_some_and(|e| e.success()), "Ctrl-C exit: {exit:?}");
        let st = s.status();
        assert_eq!(state(&st), "Stopped", "{st}");
        assert_eq!(st["faults"], 0, "a Ctrl-C counted as a fault: {st}");
        // Nothing runs to journal changes: the lag is not known, not 0.
        assert!(st["lag_seconds"].is_null(), "{st}");
        let table = s.run(&["status", &s.name]);
        s.check(&table, 0);
        assert!(table.stdout.contains("unknown"), "{table}");
        // Local date-time and age, not epoch seconds.
        assert!(table.stdout.contains(" ago)"), "{table}");
    }
);

// `status`, `stop` and `start` itself tell a running daemon by probing its
// pid file's lock with a shared lock for a moment: such a probe at the
// instant a new daemon takes its lock must not make it give up.
georep_test!(
    a_lock_probe_does_not_stop_a_daemon_from_starting,
    |t: TestDir| {
        write_file(&t.src.join("a"), b"a");
        let s = Session::new(&t, "probed");
        s.create_ok(p(&t.dst), &[]);
        let pid_path = s.dir().join("daemon.pid");
        std::fs::write(&pid_path, b"").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let prober = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                // Held four fifths of the time, as a busy poller would.
                while !stop.load(Relaxed) {
                    if let Ok(f) = std::fs::File::open(&pid_path) {
                        let _ = rustix::fs::flock(
                            &f,
                            rustix::fs::FlockOperation::NonBlockingLockShared,
                        );
                        std::thread::sleep(Duration::from_micros(400));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        for _ in 0..3 {
            s.start();
            s.wait_converged("started while probed");
            s.stop();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().unwrap();
        assert_converged(&s);
    }
);
