//! Issue 11, errors as an operator meets them: a read-only or full target,
//! missing commands, SSH keys without `-i`, a target that is a file. Each
//! test is named for the item it pins.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fs::*;
use crate::support::harness::SyncRun;
use crate::support::process::output;
use crate::support::session::GEOREP;
use crate::support::sshd::{KeyKind, Sshd};
use crate::support::tree::*;
use crate::support::{georep_test, TestDir};

/// The lines georep itself printed (not the remote shell's).
fn georep_lines(run: &SyncRun) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("georep"))
        .collect()
}

/// Panics unless `run` failed with `code`, saying `says`, without the
/// "retrying may help" hint.
#[track_caller]
fn assert_permanent(run: &SyncRun, code: i32, says: &str) {
    run.assert_code(code);
    assert!(run.stderr.contains(says), "expected {says:?}\n{run}");
    assert!(!run.stderr.contains("temporary"), "{run}");
    assert!(!run.stderr.contains("panicked"), "{run}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// None (and a note) where mounting is not permitted.
    fn tmpfs(path: &Path, options: &str) -> Option<Mount> {
        mkdir(path);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs (not root, or no permission)");
        }
        ok.then(|| Mount(path.to_path_buf()))
    }

    fn remount_read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// ---- 9. A read-only or full target: one message, exit 4.

georep_test!(
    operator_read_only_target_is_one_error_exit_4,
    |t: TestDir| {
        for i in 0..40 {
            write_file(&t.src.join(format!("d{}/f{i}", i % 4)), b"data");
        }
        let Some(m) = Mount::tmpfs(&t.path("ro"), "size=4m") else {
            return;
        };
        let dst = t.path("ro/dst");
        mkdir(&dst);
        if !m.remount_read_only() {
            eprintln!("skipped: cannot remount read-only");
            return;
        }
        let run = t.sync_between(&[], &t.src, &dst);
        run.assert_code(4);
        assert!(run.stderr.contains("read-only"), "{run}");
        assert!(
            georep_lines(&run).len() <= 2,
            "one message, not one per entry\n{run}"
        );
    }
);

georep_test!(operator_full_target_is_one_error_exit_4, |t: TestDir| {
    for i in 0..40 {
        write_random(&t.src.join(format!("f{i}")), 100_000, i);
    }
    let Some(_m) = Mount::tmpfs(&t.path("full"), "size=1m") else {
        return;
    };
    let dst = t.path("full/dst");
    let run = t.sync_between(&[], &t.src, &dst);
    run.assert_code(4);
    assert!(run.stderr.contains("full"), "{run}");
    assert!(
        georep_lines(&run).len() <= 2,
        "one message, not one per entry\n{run}"
    );
    assert_no_temporaries(&dst);
});

// ---- 10. Commands that do not exist: exit 6 and 5, said once, permanent.

georep_test!(operator_missing_commands_exit_6_and_5, |t: TestDir| {
    write_file(&t.src.join("f"), b"data");
    let run = t.sync_between(&["-e", "nosuchssh"], &t.src, "host:/x");
    assert_permanent(&run, 6, "command not found");
    let run = t.sync_between(&["--remote-command", "/nope"], &t.src, &t.dst);
    assert_permanent(&run, 5, "command not found");
    assert_eq!(georep_lines(&run).len(), 1, "{run}");

    // Over SSH the remote shell cannot find it (status 127).
    let sshd = Sshd::start(&t.root);
    let key = sshd.user_key(KeyKind::Ed25519);
    let known = sshd.known_hosts();
    let opts = ["--identity", p(&key), "--known-hosts", p(&known)];
    let url = sshd.url(&t.path("remote"));
    let run = t.sync_between(
        &[&opts[..], &["--remote-command", "/nope"]].concat(),
        &t.src,
        &url,
    );
    assert_permanent(&run, 5, "not found");
    assert!(
        run.stderr.matches("/nope").count() <= 2,
        "the slave's words once, then ours\n{run}"
    );
    // The same through an external ssh, which passes the status on.
    let cmd = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o BatchMode=yes",
        p(&key),
        p(&known)
    );
    let run = t.sync_between(&["-e", &cmd, "--remote-command", "/nope"], &t.src, &url);
    assert_permanent(&run, 5, "not found");
});

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

// ---- 11. SSH without -i: the agent, then ~/.ssh/id_*; new host keys recorded cleanly.

georep_test!(
    operator_ssh_without_identity_tries_default_keys,
    |t: TestDir| {
        write_file(&t.src.join("f"), b"data");
        let sshd = Sshd::start(&t.root);
        let url = sshd.url(&t.dst);
        let home = t.path("home");
        mkdir(&home.join(".ssh"));
        let run_as = |home: &Path, args: &[&str]| -> SyncRun {
            let mut cmd = t.sync_command(args, &t.src, &url);
            cmd.env("HOME", home)
                .env("SSH_AUTH_SOCK", t.path("stale-agent.sock"))
                .arg("--remote-command")
                .arg(GEOREP);
            let out = output(&mut cmd);
            SyncRun {
                command: format!("{cmd:?}"),
                code: out.status.code(),
                stats: None,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        };
        let known_hosts = sshd.known_hosts();
        let known = ["--known-hosts", p(&known_hosts)];
        // No key anywhere: the error lists what was tried.
        let run = run_as(&home, &known);
        assert_permanent(&run, 6, "tried");
        assert!(run.stderr.contains("agent"), "{run}");
        assert!(run.stderr.contains("id_ed25519"), "{run}");
        // A stale agent, then the default key file.
        std::fs::copy(
            sshd.user_key(KeyKind::Ed25519),
            home.join(".ssh/id_ed25519"),
        )
        .unwrap();
        chmod(&home.join(".ssh/id_ed25519"), 0o600);
        run_as(&home, &known).assert_code(0);
        assert_trees_equal(&t.src, &t.dst);

        // A first contact with no ~/.ssh: created 0700, no blank line written.
        let bare = t.path("bare-home");
        mkdir(&bare);
        let key = sshd.user_key(KeyKind::Ed25519);
        run_as(&bare, &["--identity", p(&key), "--accept-new-host-key"]).assert_code(0);
        let ssh_dir = bare.join(".ssh");
        let mode = std::fs::metadata(&ssh_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let text = std::fs::read_to_string(ssh_dir.join("known_hosts")).unwrap();
        assert!(
            !text.is_empty() && !text.lines().any(|l| l.trim().is_empty()),
            "{text:?}"
        );
        assert!(text.ends_with('\n'), "{text:?}");
    }
);

// ---- 12. A target that is a file says so.

georep_test!(operator_target_that_is_a_file_says_so, |t: TestDir| {
    write_file(&t.src.join("f"), b"data");
    write_file(&t.path("plain"), b"a file");
    let run = t.sync_between(&[], &t.src, t.path("plain"));
    assert_permanent(&run, 4, "is a file, not a directory");
    assert!(!run.stderr.contains("File exists"), "{run}");
});
