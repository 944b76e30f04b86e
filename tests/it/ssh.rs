//! SSH targets against a real OpenSSH `sshd` (support::sshd) on 127.0.0.1: both
//! transports (russh, the default, and an external `ssh` command), host key checking,
//! forced-command keys, named volumes, a connection killed mid-transfer, and the
//! remote side's errors. The remote georep is this build (`--remote-command`).
//!
//! The first tests check the fixture itself with the OpenSSH client alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Output};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::fixture::*;
use crate::support::fs::*;
use crate::support::harness::{assert_absent, assert_noop, SyncRun};
use crate::support::mutations::a_few_of_each;
use crate::support::process::{georep, kill_group, output, spawn};
use crate::support::sshd::{forced_command_line, KeyKind, KnownHosts, Sshd};
use crate::support::tree::*;
use crate::support::{georep_test, Stats, TestDir};

/// The georep on the "remote" side: this build, since the remote is this machine.
const GEOREP: &str = env!("CARGO_BIN_EXE_georep");

/// Exit code: SSH connection or authentication failed, or host key not trusted.
const EXIT_SSH: i32 = 6;
/// Exit code: protocol failure, the connection or the slave died.
const EXIT_PROTOCOL: i32 = 5;
/// Exit code: the target cannot be used.
const EXIT_TARGET: i32 = 4;

// ---- Helpers

fn p(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", show(path)))
        .to_owned()
}

/// Options of the default (russh) transport: a user key, a known_hosts file and the
/// remote georep.
fn russh_opts(sshd: &Sshd, kind: KeyKind, known_hosts: &Path) -> Vec<String> {
    vec![
        "--identity".into(),
        p(&sshd.user_key(kind)),
        "--known-hosts".into(),
        p(known_hosts),
        "--remote-command".into(),
        GEOREP.into(),
    ]
}

/// Options of the external-command transport.
fn ssh_command_opts(ssh_command: String) -> Vec<String> {
    vec![
        "--ssh-command".into(),
        ssh_command,
        "--remote-command".into(),
        GEOREP.into(),
    ]
}

fn with(opts: &[String], more: &[&str]) -> Vec<String> {
    let mut v = opts.to_vec();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

/// `georep sync --json OPTS SRC TARGET`.
fn sync_to(t: &TestDir, opts: &[String], target: &str) -> SyncRun {
    let args: Vec<&str> = opts.iter().map(String::as_str).collect();
    t.sync_between(&args, &t.src, target)
}

/// Same, must succeed with no error.
fn sync_ok_to(t: &TestDir, opts: &[String], target: &str) -> Stats {
    let run = sync_to(t, opts, target);
    run.assert_code(0);
    let stats = run.stats();
    assert_eq!(stats.errors, 0, "errors reported\n{run}");
    stats.clone()
}

fn assert_converged(src: &Path, dst: &Path) {
    assert_trees_equal(src, dst);
    assert_no_temporaries(dst);
}

/// Panics unless `run` failed with `code` and no panic, showing the sshd log too.
fn assert_fails(run: &SyncRun, code: i32, sshd: &Sshd) {
    assert_eq!(
        run.code,
        Some(code),
        "unexpected exit status\n{run}\n--- sshd log\n{}",
        sshd.log()
    );
    assert_no_panic(run);
}

fn assert_no_panic(run: &SyncRun) {
    assert!(
        !run.stderr.contains("panicked"),
        "georep panicked instead of reporting an error\n{run}"
    );
}

/// Panics unless stderr holds the SHA256 fingerprint of one of the server's host keys.
fn assert_names_fingerprint(run: &SyncRun, sshd: &Sshd) {
    let fps = sshd.host_fingerprints();
    assert!(
        fps.iter().any(|fp| run.stderr.contains(fp.as_str())),
        "stderr does not show the server's host key fingerprint (one of {fps:?})\n{run}"
    );
}

/// Full tree, then a no-op run, then [`mutate`] and a run that must send a delta,
/// then a no-op run again: everything through `opts` to `target` (which is `dst`).
fn replicate_full_tree(t: &TestDir, opts: &[String], target: &str, dst: &Path) {
    build_full_tree(&t.src);
    let first = sync_ok_to(t, opts, target);
    assert!(first.files_transferred > 0, "{}", first.json);
    assert!(first.bytes_literal >= 3 * MIB, "{}", first.json);
    assert_converged(&t.src, dst);

    assert_noop(&sync_ok_to(t, opts, target));
    assert_converged(&t.src, dst);

    a_few_of_each(&t.src);
    let second = sync_ok_to(t, opts, target);
    assert!(
        second.bytes_matched > 0,
        "big3m changed in one block: expected a delta\n{}",
        second.json
    );
    assert_converged(&t.src, dst);
    assert_noop(&sync_ok_to(t, opts, target));
}

/// The base64 key blobs of the server's host keys.
fn host_key_blobs(sshd: &Sshd) -> Vec<String> {
    sshd.host_key_line_for_known_hosts()
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap().to_owned())
        .collect()
}

/// `georep keys create --dir DIR PLACE... --remote-command GEOREP`: the authorized_keys
/// line it prints, checked against the key files it wrote.
fn keys_create(dir: &Path, place: &[&str]) -> String {
    let mut cmd = georep();
    cmd.args(["keys", "create", "--dir"])
        .arg(dir)
        .args(place)
        .args(["--remote-command", GEOREP]);
    let out = output(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let line = stdout.trim().to_owned();
    assert_eq!(line.lines().count(), 1, "one line expected:\n{stdout}");
    let private = dir.join("georep_ed25519");
    let public = dir.join("georep_ed25519.pub");
    assert_eq!(
        lstat(&private).permissions().mode() & 0o7777,
        0o600,
        "{} must be mode 0600",
        show(&private)
    );
    let public = fs::read_to_string(&public).expect("read the public key");
    let blob = public.split_whitespace().nth(1).expect("a public key blob");
    let forced = format!(
        "command=\"{GEOREP} slave {}\",restrict ssh-ed25519 ",
        place.join(" ")
    );
    assert!(
        line.starts_with(&forced) && line.contains(blob) && line.ends_with(" georep"),
        "authorized_keys line\n  {line}\nexpected\n  {forced}{blob} georep"
    );
    line
}

/// Waits for a spawned run; kills its process group and panics after `limit`.
fn wait_output(child: Child, limit: Duration, what: &str) -> Output {
    let pgid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for georep"),
        Err(_) => {
            let threads = group_threads(pgid);
            kill_group(pgid);
            let out = rx.recv().expect("waiter").expect("wait for georep");
            panic!(
                "{what}: georep still running after {limit:?}\n\
                 threads of its process group (pid tid state wchan comm):\n{threads}\n\
                 stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The backtraces of a live process through gdb, when installed (the release profile
/// keeps line tables): per thread, its top frames and every frame in georep's own
/// code, each line shortened.
fn backtraces(pid: u32) -> String {
    let Ok(out) = std::process::Command::new("gdb")
        .args(["-nx", "-batch", "-p", &pid.to_string()])
        .args(["-ex", "thread apply all bt 40"])
        .stdin(std::process::Stdio::null())
        .output()
    else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = String::new();
    let mut frame = 0;
    for line in text.lines() {
        if line.starts_with("Thread ") {
            frame = 0;
        } else if line.starts_with('#') {
            frame += 1;
            if frame > 6 && !line.contains(" at src/") {
                continue;
            }
        } else {
            continue;
        }
        s.extend(line.chars().take(200));
        s.push('\n');
    }
    s
}

/// For a hang report: every thread of the processes of group `pgid`, with its state
/// and the kernel function it waits in.
fn group_threads(pgid: u32) -> String {
    let mut out = String::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for proc in procs.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        if fields.get(2) != Some(&pgid.to_string().as_str()) {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        out.push_str(&format!("{pid}: {cmdline}\n"));
        out.push_str(&backtraces(pid));
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let read = |name: &str| {
                fs::read_to_string(dir.join(name))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let state = read("stat")
                .rsplit_once(')')
                .map(|(_, r)| r.trim().chars().next().unwrap_or('?'))
                .unwrap_or('?');
            out.push_str(&format!(
                "  {pid} {} {state} {} {}\n",
                task.file_name().to_string_lossy(),
                read("wchan"),
                read("comm")
            ));
        }
    }
    out
}

/// An executable script at `path`.
fn script(path: &Path, text: &str) {
    write_file(path, text.as_bytes());
    chmod(path, 0o755);
}

// ---- The fixture itself, with the OpenSSH client only

/// `ssh ... USER@127.0.0.1 REMOTE` with `key` and `known_hosts`.
fn ssh_run(sshd: &Sshd, key: &Path, known_hosts: &Path, remote: &str) -> Output {
    let mut cmd = sshd.ssh(key, known_hosts);
    cmd.arg(format!("{}@127.0.0.1", sshd.user())).arg(remote);
    output(&mut cmd)
}

fn assert_ssh_ok(out: &Output, sshd: &Sshd) -> String {
    assert!(
        out.status.success(),
        "ssh failed: {}\n--- stderr\n{}\n--- sshd log\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ssh_refused(out: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "ssh should fail\n{stderr}");
    assert!(
        stderr.contains(expect),
        "ssh stderr should say {expect:?}:\n{stderr}"
    );
}

georep_test!(
    fixture_sshd_accepts_keys_and_checks_host_keys,
    |t: TestDir| {
        let sshd = Sshd::start(&t.root);
        let kh = t.path("known_hosts");
        for kind in [KeyKind::Ed25519, KeyKind::Ecdsa] {
            for which in [KnownHosts::Plain, KnownHosts::Hashed, KnownHosts::Both] {
                sshd.write_known_hosts(&kh, which);
                let out = ssh_run(&sshd, &sshd.user_key(kind), &kh, "echo logged-in");
                assert_eq!(
                    assert_ssh_ok(&out, &sshd),
                    "logged-in\n",
                    "{kind:?} {which:?}"
                );
            }
        }
        let hashed = fs::read_to_string(&kh).unwrap();
        sshd.write_known_hosts(&kh, KnownHosts::Hashed);
        let hashed_now = fs::read_to_string(&kh).unwrap();
        assert!(
            hashed_now.lines().all(|l| l.starts_with("|1|")),
            "{hashed_now}"
        );
        assert_ne!(hashed, hashed_now, "Both is not Hashed");

        let key = sshd.user_key(KeyKind::Ed25519);
        sshd.write_known_hosts(&kh, KnownHosts::Wrong);
        assert_ssh_refused(
            &ssh_run(&sshd, &key, &kh, "true"),
            "IDENTIFICATION HAS CHANGED",
        );
        write_file(&kh, b"");
        assert_ssh_refused(
            &ssh_run(&sshd, &key, &kh, "true"),
            "Host key verification failed",
        );

        // A key that is not authorized.
        sshd.set_authorized_keys(&[sshd.user_public_key(KeyKind::Ecdsa)]);
        assert_ssh_refused(
            &ssh_run(&sshd, &key, &sshd.known_hosts(), "true"),
            "Permission denied",
        );

        // The fingerprints are what ssh-keygen prints and what ssh shows.
        for fp in sshd.host_fingerprints() {
            assert!(fp.starts_with("SHA256:") && fp.len() > 40, "{fp}");
        }
    }
);

georep_test!(
    fixture_sshd_forced_command_env_and_ssh_command,
    |t: TestDir| {
        let sshd = Sshd::start(&t.root);
        let kh = sshd.known_hosts();
        let key = sshd.user_key(KeyKind::Ed25519);
        // Every session sees GEOREP_VOLUMES, the fixture's own volumes file.
        let out = ssh_run(&sshd, &key, &kh, "echo \"$GEOREP_VOLUMES $HOME\"");
        assert_eq!(
            assert_ssh_ok(&out, &sshd).trim(),
            format!("{} {}", p(&sshd.volumes_file()), p(&sshd.home()))
        );

        // A forced command runs instead of the requested one, which it finds in
        // SSH_ORIGINAL_COMMAND.
        sshd.set_authorized_keys(&[forced_command_line(
            "echo \"forced, asked for: $SSH_ORIGINAL_COMMAND\"",
            &sshd.user_public_key(KeyKind::Ed25519),
        )]);
        let out = ssh_run(&sshd, &key, &kh, "touch /should/not/run");
        assert_eq!(
            assert_ssh_ok(&out, &sshd),
            "forced, asked for: touch /should/not/run\n"
        );

        // --ssh-command's string, through a shell as georep would split it.
        sshd.set_authorized_keys(&[sshd.user_public_key(KeyKind::Ed25519)]);
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "{} {}@127.0.0.1 echo via-ssh-command",
            sshd.ssh_command(),
            sshd.user()
        ));
        assert_eq!(assert_ssh_ok(&output(&mut cmd), &sshd), "via-ssh-command\n");
    }
);

georep_test!(
    fixture_kill_takes_sessions_and_restart_works,
    |t: TestDir| {
        let mut sshd = Sshd::start(&t.root);
        let kh = sshd.known_hosts();
        let key = sshd.user_key(KeyKind::Ed25519);
        let marker = format!("sleep 987{}", sshd.port());
        let mut cmd = sshd.ssh(&key, &kh);
        cmd.arg(format!("{}@127.0.0.1", sshd.user())).arg(&marker);
        let client = spawn(&mut cmd);
        // Wait until the remote sleep runs below the daemon.
        let deadline = Instant::now() + Duration::from_secs(20);
        let sleeper = loop {
            let found = sshd.descendants().into_iter().find(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        c.split(|&b| b == 0)
                            .any(|a| a == marker.split(' ').nth(1).unwrap().as_bytes())
                    })
                    .unwrap_or(false)
            });
            if let Some(pid) = found {
                break pid;
            }
            assert!(Instant::now() < deadline, "no remote sleep\n{}", sshd.log());
            thread::sleep(Duration::from_millis(20));
        };
        let daemon = sshd.pid().unwrap();
        sshd.kill();
        for pid in [daemon, sleeper] {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .map(|(_, r)| &r[..1])
                .unwrap_or("gone");
            assert!(
                matches!(state, "gone" | "Z" | "X"),
                "{pid} survives kill(): {stat}"
            );
        }
        let out = wait_output(client, Duration::from_secs(60), "ssh client");
        assert!(
            !out.status.success(),
            "the ssh client must see the connection die"
        );

        sshd.restart();
        let out = ssh_run(&sshd, &key, &sshd.known_hosts(), "echo back");
        assert_eq!(assert_ssh_ok(&out, &sshd), "back\n");
    }
);

// ---- 1, 2: whole trees over both transports

georep_test!(
    ssh_url_ed25519_full_tree_resync_and_mutations,
    |t: TestDir| {
        let sshd = Sshd::start(&t.root);
        let kh = t.path("known_hosts");
        sshd.write_known_hosts(&kh, KnownHosts::Plain);
        let opts = russh_opts(&sshd, KeyKind::Ed25519, &kh);
        replicate_full_tree(&t, &opts, &sshd.url(&t.dst), &t.dst);
    }
);

georep_test!(ssh_scp_form_ecdsa_with_port, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    sshd.write_known_hosts(&kh, KnownHosts::Plain);
    let port = sshd.port().to_string();
    let opts = with(&russh_opts(&sshd, KeyKind::Ecdsa, &kh), &["--port", &port]);
    let target = format!("{}@127.0.0.1:{}", sshd.user(), p(&t.dst));
    replicate_full_tree(&t, &opts, &target, &t.dst);
});

georep_test!(ssh_user_option_compress_and_local_options, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    sshd.write_known_hosts(&kh, KnownHosts::Plain);
    let port = sshd.port().to_string();
    let opts = with(
        &russh_opts(&sshd, KeyKind::Ed25519, &kh),
        &["--port", &port, "--user", &sshd.user(), "--compress"],
    );
    let target = format!("ssh://127.0.0.1{}", p(&t.dst));
    build_full_tree(&t.src);

    // --dry-run creates nothing.
    let run = sync_to(&t, &with(&opts, &["--dry-run"]), &target);
    run.assert_code(0);
    assert_absent(&t.dst);

    sync_ok_to(&t, &opts, &target);
    assert_converged(&t.src, &t.dst);

    // --checksum notices what the quick check cannot.
    rewrite_keep_mtime(&t.src.join("files/f4096"));
    assert_noop(&sync_ok_to(&t, &opts, &target));
    let stats = sync_ok_to(&t, &with(&opts, &["--checksum"]), &target);
    assert!(stats.files_transferred >= 1, "{}", stats.json);
    assert_converged(&t.src, &t.dst);

    // --no-delete keeps extras; the default removes them.
    write_file(&t.dst.join("extra"), b"extra");
    sync_ok_to(&t, &with(&opts, &["--no-delete"]), &target);
    assert_eq!(read_file(&t.dst.join("extra")), b"extra");
    sync_ok_to(&t, &opts, &target);
    assert_converged(&t.src, &t.dst);
});

georep_test!(ssh_command_transport_full_tree, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    // The command carries its own -p, key and known_hosts; the target has no port.
    let opts = ssh_command_opts(sshd.ssh_command());
    let target = format!("{}@127.0.0.1:{}", sshd.user(), p(&t.dst));
    replicate_full_tree(&t, &opts, &target, &t.dst);
});

georep_test!(
    ssh_command_transport_gets_port_and_user_from_georep,
    |t: TestDir| {
        let sshd = Sshd::start(&t.root);
        // No -p in the command: georep passes the URL's port (-p) and user (-l).
        let cmd = sshd
            .ssh_command()
            .replace(&format!(" -p {} ", sshd.port()), " ");
        assert!(!cmd.contains(" -p "), "{cmd}");
        build_full_tree(&t.src);
        sync_ok_to(&t, &ssh_command_opts(cmd.clone()), &sshd.url(&t.dst));
        assert_converged(&t.src, &t.dst);

        let dst2 = t.path("dst2");
        let port = sshd.port().to_string();
        let opts = with(
            &ssh_command_opts(cmd),
            &["--port", &port, "--user", &sshd.user()],
        );
        sync_ok_to(&t, &opts, &format!("127.0.0.1:{}", p(&dst2)));
        assert_converged(&t.src, &dst2);
    }
);

georep_test!(ssh_remote_path_with_shell_characters, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    sshd.write_known_hosts(&kh, KnownHosts::Plain);
    build_full_tree(&t.src);
    // The remote command goes through the remote user's shell: the path must be
    // quoted for it, on both transports.
    for (i, opts) in [
        russh_opts(&sshd, KeyKind::Ed25519, &kh),
        ssh_command_opts(sshd.ssh_command()),
    ]
    .iter()
    .enumerate()
    {
        let dst = t.path(format!("dst {i} 'q' \"d\" $HOME ;x"));
        let target = format!("{}@127.0.0.1:{}", sshd.user(), p(&dst));
        let opts = with(opts, &["--port", &sshd.port().to_string()]);
        sync_ok_to(&t, &opts, &target);
        assert_converged(&t.src, &dst);
    }
});

// ---- 3, 4, 5: host keys

georep_test!(ssh_hashed_known_hosts_and_key_rotation, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    build_full_tree(&t.src);
    let opts = russh_opts(&sshd, KeyKind::Ed25519, &kh);

    sshd.write_known_hosts(&kh, KnownHosts::Hashed);
    sync_ok_to(&t, &opts, &sshd.url(&t.dst));
    assert_converged(&t.src, &t.dst);

    // Several keys for the host, the first ones wrong: one matching key is enough.
    sshd.write_known_hosts(&kh, KnownHosts::Both);
    append(&t.src.join("files/one"), b"rotated");
    sync_ok_to(&t, &opts, &sshd.url(&t.dst));
    assert_converged(&t.src, &t.dst);
});

georep_test!(ssh_known_hosts_with_only_the_ecdsa_key, |t: TestDir| {
    // As OpenSSH does, a client must prefer the host key type it has recorded: the
    // server also offers ed25519, which known_hosts does not list.
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    let ecdsa: Vec<String> = sshd
        .host_key_line_for_known_hosts()
        .into_iter()
        .filter(|l| l.contains(" ecdsa-sha2-nistp256 "))
        .collect();
    assert_eq!(ecdsa.len(), 1);
    write_file(&kh, format!("{}\n", ecdsa[0]).as_bytes());
    build_full_tree(&t.src);
    sync_ok_to(
        &t,
        &russh_opts(&sshd, KeyKind::Ed25519, &kh),
        &sshd.url(&t.dst),
    );
    assert_converged(&t.src, &t.dst);
});

/// Writes the known_hosts file of a refusal case: "empty", "missing" or "wrong".
fn prepare_known_hosts(sshd: &Sshd, kh: &Path, which: &str) {
    match which {
        "empty" => write_file(kh, b""),
        "missing" => {
            let _ = fs::remove_file(kh);
        }
        "wrong" => sshd.write_known_hosts(kh, KnownHosts::Wrong),
        _ => unreachable!(),
    }
}

georep_test!(ssh_unknown_or_changed_host_key_is_refused, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    build_full_tree(&t.src);
    let opts = russh_opts(&sshd, KeyKind::Ed25519, &kh);
    for which in ["empty", "missing", "wrong"] {
        prepare_known_hosts(&sshd, &kh, which);
        let before = fs::read(&kh).ok();
        let run = sync_to(&t, &opts, &sshd.url(&t.dst));
        eprintln!("{which} known_hosts: {}", run.stderr.trim());
        assert_fails(&run, EXIT_SSH, &sshd);
        assert!(run.stderr.contains("SHA256:"), "{run}");
        assert_names_fingerprint(&run, &sshd);
        assert_absent(&t.dst);
        assert_eq!(
            fs::read(&kh).ok(),
            before,
            "known_hosts changed without --accept-new-host-key"
        );
    }
});

georep_test!(ssh_unauthorized_key_is_refused, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    sshd.write_known_hosts(&kh, KnownHosts::Plain);
    sshd.set_authorized_keys(&[sshd.user_public_key(KeyKind::Ecdsa)]);
    build_full_tree(&t.src);
    let run = sync_to(
        &t,
        &russh_opts(&sshd, KeyKind::Ed25519, &kh),
        &sshd.url(&t.dst),
    );
    assert_fails(&run, EXIT_SSH, &sshd);
    assert_absent(&t.dst);
});

georep_test!(ssh_command_transport_refusals_exit_6, |t: TestDir| {
    // The external ssh exits 255 before the protocol starts when it refuses the host
    // key or cannot authenticate: that is exit code 6 too, not a protocol failure.
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    let key = sshd.user_key(KeyKind::Ed25519);
    build_full_tree(&t.src);
    for which in ["empty", "wrong"] {
        prepare_known_hosts(&sshd, &kh, which);
        let run = sync_to(
            &t,
            &ssh_command_opts(sshd.ssh_command_with(&key, &kh)),
            &sshd.url(&t.dst),
        );
        eprintln!("{which} known_hosts: {}", run.stderr.trim());
        assert_fails(&run, EXIT_SSH, &sshd);
        assert!(
            run.stderr.contains("Host key verification failed"),
            "ssh's own message must reach the user\n{run}"
        );
        assert_absent(&t.dst);
    }
    sshd.set_authorized_keys(&[sshd.user_public_key(KeyKind::Ecdsa)]);
    let run = sync_to(&t, &ssh_command_opts(sshd.ssh_command()), &sshd.url(&t.dst));
    assert_fails(&run, EXIT_SSH, &sshd);
    assert!(run.stderr.contains("Permission denied"), "{run}");
    assert_absent(&t.dst);
});

georep_test!(ssh_accept_new_host_key, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    write_file(&kh, b"");
    build_full_tree(&t.src);
    let opts = russh_opts(&sshd, KeyKind::Ed25519, &kh);

    sync_ok_to(
        &t,
        &with(&opts, &["--accept-new-host-key"]),
        &sshd.url(&t.dst),
    );
    assert_converged(&t.src, &t.dst);
    let recorded = fs::read_to_string(&kh).unwrap();
    assert!(
        host_key_blobs(&sshd)
            .iter()
            .any(|b| recorded.contains(b.as_str())),
        "known_hosts does not hold the server's key:\n{recorded}"
    );

    // Recorded: no flag needed any more.
    append(&t.src.join("files/one"), b"2");
    sync_ok_to(&t, &opts, &sshd.url(&t.dst));
    assert_converged(&t.src, &t.dst);

    // A changed key is refused, with or without the flag (it accepts new keys only).
    sshd.write_known_hosts(&kh, KnownHosts::Wrong);
    append(&t.src.join("files/one"), b"3");
    let snapshot = t.path("snapshot");
    cp_a(&t.dst, &snapshot);
    for flag in [&[][..], &["--accept-new-host-key"][..]] {
        let run = sync_to(&t, &with(&opts, flag), &sshd.url(&t.dst));
        assert_fails(&run, EXIT_SSH, &sshd);
        assert_names_fingerprint(&run, &sshd);
        assert_trees_equal(&snapshot, &t.dst);
    }
    let wrong = fs::read_to_string(&kh).unwrap();
    assert!(
        !host_key_blobs(&sshd)
            .iter()
            .any(|b| wrong.contains(b.as_str())),
        "a changed key must not be recorded:\n{wrong}"
    );
});

georep_test!(
    ssh_accept_new_host_key_creates_missing_file,
    |t: TestDir| {
        let sshd = Sshd::start(&t.root);
        let kh = t.path("no/such/dir/known_hosts");
        build_full_tree(&t.src);
        let opts = russh_opts(&sshd, KeyKind::Ed25519, &kh);
        sync_ok_to(
            &t,
            &with(&opts, &["--accept-new-host-key"]),
            &sshd.url(&t.dst),
        );
        assert_converged(&t.src, &t.dst);
        let recorded = fs::read_to_string(&kh).unwrap();
        assert!(
            host_key_blobs(&sshd)
                .iter()
                .any(|b| recorded.contains(b.as_str())),
            "{recorded}"
        );
        assert_noop(&sync_ok_to(&t, &opts, &sshd.url(&t.dst)));
    }
);

// ---- 6, 7: forced-command keys and volumes

georep_test!(
    ssh_forced_command_key_reaches_its_root_only,
    |t: TestDir| {
        let sshd = Sshd::start(&t.root);
        let kh = sshd.known_hosts();
        let a = t.path("root_a");
        let b = t.path("root_b");
        let keys = t.path("keys");
        let line = keys_create(&keys, &["--root", &p(&a)]);
        sshd.set_authorized_keys(&[line]);
        let opts = vec![
            "--identity".to_owned(),
            p(&keys.join("georep_ed25519")),
            "--known-hosts".to_owned(),
            p(&kh),
            "--remote-command".to_owned(),
            GEOREP.to_owned(),
        ];
        build_full_tree(&t.src);
        sync_ok_to(&t, &opts, &sshd.url(&a));
        assert_converged(&t.src, &a);

        a_few_of_each(&t.src);
        let snapshot = t.path("snapshot_a");
        cp_a(&a, &snapshot);
        let targets = [
            sshd.url(&b),
            format!("{}@127.0.0.1:{}", sshd.user(), p(&b)),
            // A path below the allowed root is another root too.
            sshd.url(&a.join("nested")),
        ];
        for (i, target) in targets.iter().enumerate() {
            let mut o = opts.clone();
            if i == 1 {
                o = with(&o, &["--port", &sshd.port().to_string()]);
            }
            let run = sync_to(&t, &o, target);
            eprintln!("{target}: {}", run.stderr.trim());
            assert!(
                run.code.is_some_and(|c| c != 0),
                "another root must be refused\n{run}"
            );
            assert_no_panic(&run);
            let low = run.stderr.to_lowercase();
            assert!(
                low.contains("restrict") || low.contains("forced") || run.stderr.contains(&p(&a)),
                "the message should name the restriction\n{run}"
            );
            assert_absent(&b);
            assert_trees_equal(&snapshot, &a);
        }
        // The allowed root still works.
        sync_ok_to(&t, &opts, &sshd.url(&a));
        assert_converged(&t.src, &a);
    }
);

georep_test!(ssh_volumes, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = sshd.known_hosts();
    let backup = t.path("vol_backup");
    let other = t.path("vol_other");
    mkdir(&backup);
    mkdir(&other);
    sshd.write_volumes(&[("backup", &backup), ("other", &other)]);
    let port = sshd.port().to_string();
    let host = format!("{}@127.0.0.1", sshd.user());
    let opts = with(
        &russh_opts(&sshd, KeyKind::Ed25519, &kh),
        &["--port", &port],
    );
    build_full_tree(&t.src);

    // A named volume, resolved by the slave through GEOREP_VOLUMES.
    sync_ok_to(&t, &opts, &format!("{host}::backup"));
    assert_converged(&t.src, &backup);
    assert_noop(&sync_ok_to(&t, &opts, &format!("{host}::backup")));

    // An unknown name is refused, naming it.
    let run = sync_to(&t, &opts, &format!("{host}::nope"));
    assert_fails(&run, EXIT_TARGET, &sshd);
    assert!(
        run.stderr.contains("nope"),
        "the message must name the volume\n{run}"
    );

    // Through the external ssh command too.
    let run = sync_to(
        &t,
        &ssh_command_opts(sshd.ssh_command()),
        &format!("{host}::nope"),
    );
    assert_fails(&run, EXIT_TARGET, &sshd);
    assert!(run.stderr.contains("nope"), "{run}");
    a_few_of_each(&t.src);
    sync_ok_to(
        &t,
        &ssh_command_opts(sshd.ssh_command()),
        &format!("{host}::backup"),
    );
    assert_converged(&t.src, &backup);

    // A key forced to volume backup cannot reach volume other, nor a path.
    let keys = t.path("keys");
    let line = keys_create(&keys, &["--volume", "backup"]);
    sshd.set_authorized_keys(&[line]);
    let vopts = vec![
        "--identity".to_owned(),
        p(&keys.join("georep_ed25519")),
        "--known-hosts".to_owned(),
        p(&kh),
        "--remote-command".to_owned(),
        GEOREP.to_owned(),
        "--port".to_owned(),
        port.clone(),
    ];
    write_file(&t.src.join("after_key"), b"for the forced volume");
    sync_ok_to(&t, &vopts, &format!("{host}::backup"));
    assert_converged(&t.src, &backup);
    let elsewhere = t.path("elsewhere");
    for target in [
        format!("{host}::other"),
        format!("{host}:{}", p(&elsewhere)),
    ] {
        let run = sync_to(&t, &vopts, &target);
        eprintln!("{target}: {}", run.stderr.trim());
        assert!(
            run.code.is_some_and(|c| c != 0),
            "another volume must be refused\n{run}"
        );
        assert_no_panic(&run);
        assert_eq!(
            fs::read_dir(&other).unwrap().count(),
            0,
            "volume other was written"
        );
        assert_absent(&elsewhere);
    }
    assert_converged(&t.src, &backup);
});

// ---- 8: the connection dies mid-transfer

georep_test!(
    ssh_sshd_killed_mid_transfer_then_resync_converges,
    |t: TestDir| {
        let mut sshd = Sshd::start(&t.root);
        let kh = t.path("known_hosts");
        build_large_files(&t.src, 6, 64 * MIB);
        build_full_tree(&t.src.join("tree"));
        let source = content_hashes(&t.src);

        let mut interrupted = false;
        for delay_ms in [300u64, 150, 75] {
            sshd.write_known_hosts(&kh, KnownHosts::Plain);
            let opts = russh_opts(&sshd, KeyKind::Ed25519, &kh);
            let args: Vec<&str> = opts.iter().map(String::as_str).collect();
            let child = spawn(&mut t.sync_command(&args, &t.src, sshd.url(&t.dst)));
            thread::sleep(Duration::from_millis(delay_ms));
            sshd.kill();
            let out = wait_output(child, Duration::from_secs(60), "after sshd was killed");
            let run = SyncRun {
                command: "sync (sshd killed)".into(),
                code: out.status.code(),
                stats: None,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            eprintln!(
                "killed sshd after {delay_ms} ms: {:?}\n{}",
                run.code, run.stderr
            );
            if run.code == Some(0) {
                // Finished before the kill: nothing was interrupted; try earlier.
                sshd.restart();
                fs::remove_dir_all(&t.dst).unwrap();
                continue;
            }
            interrupted = true;
            assert_eq!(
                run.code,
                Some(EXIT_PROTOCOL),
                "connection lost: exit 5\n{run}"
            );
            assert_no_panic(&run);
            let low = run.stderr.to_lowercase();
            assert!(
                [
                    "connection",
                    "disconnect",
                    "closed",
                    "reset",
                    "broken pipe",
                    "eof"
                ]
                .iter()
                .any(|w| low.contains(w)),
                "the message should say the connection was lost\n{run}"
            );
            // Invariant 1: every visible file is complete.
            if t.dst.exists() {
                for (rel, hash) in content_hashes(&t.dst) {
                    assert_eq!(
                        source.get(&rel),
                        Some(&hash),
                        "{} is visible but not the source's content",
                        show(&t.dst.join(&rel))
                    );
                }
            }
            break;
        }
        assert!(interrupted, "every run finished before sshd was killed");

        sshd.restart();
        sshd.write_known_hosts(&kh, KnownHosts::Plain);
        let opts = russh_opts(&sshd, KeyKind::Ed25519, &kh);
        sync_ok_to(&t, &opts, &sshd.url(&t.dst));
        assert_converged(&t.src, &t.dst);
        assert_noop(&sync_ok_to(&t, &opts, &sshd.url(&t.dst)));
    }
);

// ---- 9: the remote side's errors reach the user

/// The options of `base` with another `--remote-command`.
fn with_remote(base: &[String], cmd: &str) -> Vec<String> {
    let mut o = base.to_vec();
    let i = o.iter().position(|a| a == "--remote-command").unwrap();
    o[i + 1] = cmd.to_owned();
    o
}

/// Panics unless `run` failed cleanly (non-zero, no panic) and created nothing.
fn assert_failed_cleanly(run: &SyncRun, dst: &Path) {
    eprintln!("{}", run.stderr.trim());
    assert!(run.code.is_some_and(|c| c != 0), "{run}");
    assert_no_panic(run);
    assert_absent(dst);
}

georep_test!(ssh_remote_stderr_reaches_the_user, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    sshd.write_known_hosts(&kh, KnownHosts::Plain);
    build_full_tree(&t.src);
    // A remote program that complains and exits 42.
    let fake = t.path("fake-georep");
    script(
        &fake,
        "#!/bin/sh\necho \"fake slave says no to: $*\" >&2\nexit 42\n",
    );
    for opts in [
        russh_opts(&sshd, KeyKind::Ed25519, &kh),
        ssh_command_opts(sshd.ssh_command()),
    ] {
        let run = sync_to(&t, &with_remote(&opts, &p(&fake)), &sshd.url(&t.dst));
        assert_failed_cleanly(&run, &t.dst);
        assert!(
            run.stderr.contains("fake slave says no to: slave --root"),
            "the remote's stderr must reach the user\n{run}"
        );
    }
});

georep_test!(ssh_remote_exit_status_is_reported, |t: TestDir| {
    // /bin/false says nothing: its exit status is all the user can be told.
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    sshd.write_known_hosts(&kh, KnownHosts::Plain);
    build_full_tree(&t.src);
    for opts in [
        russh_opts(&sshd, KeyKind::Ed25519, &kh),
        ssh_command_opts(sshd.ssh_command()),
    ] {
        let run = sync_to(&t, &with_remote(&opts, "/bin/false"), &sshd.url(&t.dst));
        assert_failed_cleanly(&run, &t.dst);
        assert!(
            ["status 1", "exit 1", "code 1", "exited with 1"]
                .iter()
                .any(|s| run.stderr.replace("status: ", "status ").contains(s)),
            "the remote exit status (1) should be reported\n{run}"
        );
    }
});

georep_test!(ssh_missing_remote_command_is_reported, |t: TestDir| {
    let sshd = Sshd::start(&t.root);
    let kh = t.path("known_hosts");
    sshd.write_known_hosts(&kh, KnownHosts::Plain);
    build_full_tree(&t.src);
    for opts in [
        russh_opts(&sshd, KeyKind::Ed25519, &kh),
        ssh_command_opts(sshd.ssh_command()),
    ] {
        let run = sync_to(
            &t,
            &with_remote(&opts, "/nonexistent/georep"),
            &sshd.url(&t.dst),
        );
        assert_failed_cleanly(&run, &t.dst);
        assert!(
            run.stderr.contains("/nonexistent/georep") && run.stderr.contains("No such file"),
            "the remote shell's complaint should be reported\n{run}"
        );
    }
});
