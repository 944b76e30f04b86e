//! Issue 11, as an operator meets georep on day one: safety halts, paths
//! and validation of sessions, the state directory's privacy, signals and
//! pipes. Each test is named for the item it pins; errors and SSH are in
//! `operator_errors`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::fs::*;
use crate::support::harness::assert_absent;
use crate::support::process::{georep, signal, spawn};
use crate::support::session::*;
use crate::support::tree::*;
use crate::support::{georep_test, TestDir};

/// Exit code of a run stopped at a deletion limit (rsync's 25).
const EXIT_DELETE_LIMIT: i32 = 25;

// ---- 1. A target inside the source (or the reverse) is refused everywhere.

georep_test!(operator_target_inside_source_is_refused, |t: TestDir| {
    write_file(&t.src.join("sub/f"), b"data");
    symlink(&t.src, &t.path("alias"));
    for target in [
        t.src.join("mirror"),
        t.path("alias/mirror/deeper"),
        t.src.clone(),
    ] {
        let run = t.sync_between(&[], &t.src, &target);
        run.assert_code(EXIT_USAGE);
        assert!(run.stderr.contains("source"), "{run}");
    }
    assert_absent(&t.src.join("mirror"));
    // The reverse: a source inside the target would be deleted by the replica.
    let run = t.sync_between(&[], t.src.join("sub"), &t.src);
    run.assert_code(EXIT_USAGE);
    assert!(run.stderr.contains("inside the target"), "{run}");
    assert!(t.src.join("sub/f").exists());

    // Sessions: at create, in `config`, and at start (a config edited by hand).
    let s = Session::new(&t, "loop");
    let run = s.create(p(&t.src.join("mirror")), &[]);
    s.check(&run, EXIT_USAGE);
    assert!(run.stderr.contains("inside the source"), "{run}");
    s.create_ok(p(&t.dst), &[]);
    let run = s.config(&["target", p(&t.path("alias/m"))]);
    s.check(&run, EXIT_USAGE);
    let config = s.dir().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let looped = text.replace(p(&t.dst), p(&t.src.join("mirror")));
    assert_ne!(text, looped);
    std::fs::write(&config, looped).unwrap();
    let run = s.run(&["start", "loop"]);
    assert_ne!(run.code, Some(0), "{run}");
    let run = s.run(&["start", "loop", "--foreground"]);
    s.check(&run, EXIT_USAGE);
    assert_absent(&t.src.join("mirror"));
});

// ---- 2. Deletion limits: a round over them deletes nothing.

georep_test!(operator_sync_max_delete_exits_25, |t: TestDir| {
    for i in 0..5 {
        write_file(&t.src.join(format!("f{i}")), b"x");
    }
    write_file(&t.src.join("keep"), b"kept");
    t.sync_ok(&[]);
    for i in 0..5 {
        remove(&t.src.join(format!("f{i}")));
    }
    write_file(&t.src.join("new"), b"still sent");
    let run = t.sync(&["--max-delete", "2"]);
    run.assert_code(EXIT_DELETE_LIMIT);
    assert!(run.stderr.contains("max_delete"), "{run}");
    let left = (0..5)
        .filter(|i| t.dst.join(format!("f{i}")).exists())
        .count();
    assert!(left >= 3, "deleted more than 2: {left} of 5 left\n{run}");
    assert_eq!(run.stats().json["deletions_refused"], 5, "{run}");
    assert_eq!(read_file(&t.dst.join("new")), b"still sent");
    // A limit the run stays within deletes.
    t.sync(&["--max-delete", "5"]).assert_code(0);
    assert_trees_equal(&t.src, &t.dst);
});

georep_test!(operator_emptied_source_halts_the_session, |t: TestDir| {
    for i in 0..12 {
        write_file(&t.src.join(format!("d{}/f{i}", i % 3)), b"precious");
    }
    // The guard judges one round: the whole removal lands in one batch.
    let s = started(
        &t,
        "emptied",
        &["batch_quiet_ms=500", "batch_delay_ms=2000"],
    );
    let before = walk(&t.dst).len();
    for d in 0..3 {
        std::fs::remove_dir_all(t.src.join(format!("d{d}"))).unwrap();
    }
    let st = s.wait_status("a safety halt", CONVERGE, |st| {
        st["state"] == "Faulty"
            && st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("safety halt"))
    });
    assert!(
        st["last_error"].as_str().unwrap().contains("--force"),
        "{st}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(walk(&t.dst).len(), before, "the replica is intact");
    // A restart does not get past it either: the catch-up crawl halts too.
    s.stop();
    s.start();
    s.wait_status("halted again after a restart", CONVERGE, |st| {
        st["state"] == "Faulty"
    });
    assert_eq!(walk(&t.dst).len(), before, "the replica is intact");
    // The operator means it: `start --force` lets it through once.
    s.stop();
    s.run(&["start", "emptied", "--force"]).assert_code(0);
    s.wait_converged("after start --force");
    assert_eq!(walk(&t.dst).len(), 1, "only the root is left");
    // The override was used up: emptying again halts again.
    write_file(&t.src.join("again"), b"x");
    s.wait_converged("a new file");
    remove(&t.src.join("again"));
    s.wait_status("halted again", CONVERGE, |st| st["state"] == "Faulty");
    assert!(t.dst.join("again").exists());
    s.stop();
});

georep_test!(
    operator_large_share_deletion_halts_the_session,
    |t: TestDir| {
        // 1,500 entries, 1,200 of them in one directory: removing it is 80 %.
        for i in 0..1200 {
            write_file(&t.src.join(format!("big/{}/f{i}", i % 10)), b"x");
        }
        for i in 0..300 {
            write_file(&t.src.join(format!("small/f{i}")), b"x");
        }
        let s = started(&t, "share", &[]);
        // Moved away at once (one event): the round would delete it whole.
        rename(&t.src.join("big"), &t.path("big.elsewhere"));
        s.wait_status("a safety halt", CONVERGE, |st| {
            st["state"] == "Faulty"
                && st["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("max_delete_percent"))
        });
        assert!(t.dst.join("big/0/f0").exists());
        s.stop();
        // A config change is the other way through.
        s.config(&["max_delete_percent", "100"]).assert_code(0);
        s.start();
        s.wait_converged("with the limit raised");
        s.stop();
    }
);

// ---- 3. Ctrl-C of `sync` leaves no temporaries and exits 130.

georep_test!(operator_ctrl_c_of_sync_removes_temporaries, |t: TestDir| {
    write_random(&t.src.join("big"), 512 << 20, 1);
    write_file(&t.src.join("small"), b"small");
    for (sig, code) in [(Signal::INT, 130), (Signal::TERM, 143)] {
        let mut cmd = t.sync_command(&["--fsync", "file"], &t.src, &t.dst);
        // Named temporaries from the start, as where O_TMPFILE is missing.
        cmd.env("GEOREP_NO_TMPFILE", "1");
        let mut child = spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let temp = std::fs::read_dir(&t.dst)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".georep.tmp."));
            if temp || Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                break temp;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        assert!(seen, "no temporary showed up while `big` was sent");
        signal(child.id(), sig);
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sig:?}\n{stderr}");
        assert!(started.elapsed() < Duration::from_secs(15), "slow to stop");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_no_temporaries(&t.dst);
        assert_absent(&t.dst.join("big"));
    }
});

// ---- 4. Sessions store absolute paths and validate what they are given.

georep_test!(
    operator_session_paths_are_absolute_and_validated,
    |t: TestDir| {
        write_file(&t.src.join("f"), b"data");
        let s = Session::new(&t, "rel");
        let mut cmd = s.command(&["create", "rel", "src", "dst"]);
        cmd.current_dir(&t.root);
        run_cmd(cmd, &s.scratch, CMD_TIMEOUT).assert_code(0);
        assert_eq!(s.config_get("source"), p(&t.src));
        assert_eq!(s.config_get("target"), p(&t.dst));
        // Started from elsewhere, it finds both.
        let mut cmd = s.command(&["start", "rel"]);
        cmd.current_dir("/");
        run_cmd(cmd, &s.scratch, CMD_TIMEOUT).assert_code(0);
        s.wait_converged("started from /");

        // A running session's source and target stay; other keys say they wait.
        let run = s.config(&["source", "/tmp"]);
        s.check(&run, EXIT_SESSION);
        assert!(run.stderr.contains("stopped"), "{run}");
        let run = s.config(&["jobs", "2"]);
        s.check(&run, 0);
        assert!(run.stderr.contains("next start"), "{run}");
        let run = s.config(&["jobs=3"]);
        s.check(&run, EXIT_USAGE);
        assert!(run.stderr.contains("config NAME KEY VALUE"), "{run}");
        for (key, value, wants) in [
            ("jobs", "many", "a number"),
            ("compress", "maybe", "a boolean"),
            ("exclude", "{ a = 1 }", "a list of strings"),
        ] {
            let run = s.config(&[key, value]);
            s.check(&run, EXIT_USAGE);
            assert!(run.stderr.contains(wants), "{key}\n{run}");
        }
        let run = s.config(&["exclude", r#"["a{b"]"#]);
        s.check(&run, EXIT_USAGE);
        s.stop();

        // Create refuses what it cannot keep.
        let other = Session::new(&t, "bad");
        for (sets, says) in [
            (&["source=/etc"][..], "SOURCE"),
            (&["target=/tmp/x"][..], "TARGET"),
            (&["identity=/no/such/key"][..], "no such file"),
            (&["known_hosts=/no/such/file"][..], "no such file"),
            (&["exclude=a{b"][..], "a{b"),
        ] {
            let run = other.create(p(&t.path("dst2")), sets);
            other.check(&run, EXIT_USAGE);
            assert!(run.stderr.contains(says), "{sets:?}\n{run}");
        }
        assert_absent(&other.dir());
    }
);

// ---- 5. The state directory is private.

georep_test!(operator_state_directory_is_private, |t: TestDir| {
    let s = Session::new(&t, "private");
    s.create_ok(p(&t.dst), &[]);
    let dirs = [s.home.clone(), s.home.join("sessions"), s.dir()];
    let mode = |d: &Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
    for d in &dirs {
        assert_eq!(mode(d), 0o700, "{}", show(d));
    }
    // Loosened by someone: tightened at the next start.
    for d in &dirs {
        chmod(d, 0o755);
    }
    s.start();
    for d in &dirs {
        assert_eq!(mode(d), 0o700, "{}", show(d));
    }
    s.stop();
});

// ---- 6. Output to a closed pipe ends quietly.

georep_test!(
    operator_status_to_a_closed_pipe_exits_quietly,
    |t: TestDir| {
        let s = Session::new(&t, "piped");
        s.create_ok(p(&t.dst), &[]);
        for args in [&["status"][..], &["config", "piped"][..]] {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            let mut cmd = georep();
            cmd.arg("--home").arg(&s.home).args(args);
            let out = cmd
                .stdout(Stdio::from(writer))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
            assert!(stderr.is_empty(), "{args:?}: {stderr}");
        }
    }
);

// ---- 7. A dry run counts deltas as deltas.

georep_test!(operator_dry_run_counts_deltas_as_deltas, |t: TestDir| {
    const SIZE: u64 = 4 << 20;
    write_random(&t.src.join("big"), SIZE, 7);
    t.sync_ok(&[]);
    write_at(&t.src.join("big"), SIZE / 2, b"a small change");
    set_mtime_ns(&t.src.join("big"), 1_700_000_000, 5);
    write_file(&t.src.join("new"), &[9u8; 1000]);
    let dry = t.sync_ok(&["-n", "--no-whole-file"]);
    assert_eq!(
        dry.bytes_literal, 1000,
        "only the new file is literal: {}",
        dry.json
    );
    assert_eq!(dry.json["bytes_delta_basis"], SIZE, "{}", dry.json);
    let real = t.sync_ok(&["--no-whole-file"]);
    assert!(
        real.bytes_literal < SIZE / 8,
        "the real run sent a delta: {}",
        real.json
    );
    assert_trees_equal(&t.src, &t.dst);
});

// ---- 8. A file that failed is not "created".

georep_test!(
    operator_failed_entry_is_not_listed_as_created,
    |t: TestDir| {
        const NOBODY: u32 = 65534;
        let work = t.path("work");
        let (src, dst) = (work.join("src"), work.join("dst"));
        write_file(&src.join("ok"), b"readable");
        write_file(&src.join("secret"), b"unreadable");
        chmod(&src.join("secret"), 0o000);
        if is_root() {
            chmod(&t.root, 0o755);
            for rel in walk(&work).keys() {
                lchown(&full_path(&work, rel), NOBODY, NOBODY);
            }
        }
        for round in 0..2 {
            let mut cmd = t.sync_command(&["-v"], &src, &dst);
            if is_root() {
                use std::os::unix::process::CommandExt;
                cmd.uid(NOBODY).gid(NOBODY);
            }
            let out = cmd.output().unwrap();
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert_eq!(out.status.code(), Some(23), "{stdout}\n{stderr}");
            assert!(!stderr.contains("+ secret"), "round {round}: {stderr}");
            assert!(stderr.contains("secret"), "the failure is named: {stderr}");
            let json: serde_json::Value =
                serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
            let listed = stderr.lines().filter(|l| l.starts_with("+ ")).count();
            assert_eq!(json["entries_created"], listed, "round {round}: {json}");
            if round == 1 {
                assert_eq!(listed, 0, "nothing is new the second time: {stderr}");
            }
        }
    }
);
