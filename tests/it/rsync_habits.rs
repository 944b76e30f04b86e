//! Issue 15, rsync habits of `georep sync`: `--bwlimit` (and the session
//! key), `-i/--itemize-changes`, `--stats`, `-q`, `-x/--one-file-system`,
//! `--delete-excluded` and `--files-from`. Each replicating test ends with
//! the tree comparator.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::support::fs::*;
use crate::support::harness::assert_absent;
use crate::support::process::{georep, output, spawn};
use crate::support::session::*;
use crate::support::tree::*;
use crate::support::{georep_test, TestDir};

const MIB: u64 = 1 << 20;
/// Exit code of a run in which some entries failed.
const EXIT_PARTIAL: i32 = 23;

/// A finished `georep sync` run without `--json`.
struct Plain {
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Plain {
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Plain {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
        self
    }

    /// stdout's lines, as a set (data jobs finish in any order).
    fn lines(&self) -> BTreeSet<String> {
        self.stdout.lines().map(str::to_owned).collect()
    }
}

impl fmt::Display for Plain {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "command: {}\nexit code: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

fn sync_cmd(t: &TestDir, args: &[&str]) -> Command {
    let mut cmd = georep();
    cmd.current_dir(&t.root)
        .arg("sync")
        .args(args)
        .arg(&t.src)
        .arg(&t.dst);
    cmd
}

fn finish(cmd: &mut Command) -> Plain {
    let out = output(cmd);
    Plain {
        command: format!("{cmd:?}"),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `georep sync ARGS... SRC DST`, no `--json`.
fn sync_plain(t: &TestDir, args: &[&str]) -> Plain {
    finish(&mut sync_cmd(t, args))
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|l| l.to_string()).collect()
}

// ---- --bwlimit

// A lower bound cannot be flaky: however slow the machine, 3 MiB at 1 MiB/s
// takes about 3 s (less the bucket's first 50 ms), never under 2 s.
georep_test!(habits_bwlimit_paces_the_transfer, |t: TestDir| {
    for i in 0..3 {
        write_random(&t.src.join(format!("f{i}")), MIB, i);
    }
    let started = Instant::now();
    let stats = t.sync_ok(&["--bwlimit", "1024"]);
    let took = started.elapsed().as_secs_f64();
    assert!(stats.bytes_sent >= 3 * MIB, "{}", stats.json);
    assert!(took >= 2.0, "3 MiB at 1 MiB/s took only {took:.2} s");
    let rate = stats.bytes_sent as f64 / took;
    eprintln!(
        "bwlimit 1 MiB/s: {} bytes in {took:.2} s, {:.0} KiB/s",
        stats.bytes_sent,
        rate / 1024.0
    );
    assert_trees_equal(&t.src, &t.dst);

    // 0 is no limit; suffixes are rsync's; nonsense is a usage error.
    write_random(&t.src.join("f0"), MIB, 9);
    t.sync_ok(&["--bwlimit", "0"]);
    t.sync_ok(&["--bwlimit", "1.5m"]);
    assert_trees_equal(&t.src, &t.dst);
    for bad in ["fast", "10X", "100b", "-1"] {
        let run = t.sync(&[&format!("--bwlimit={bad}")]);
        run.assert_code(2);
        assert!(run.stderr.contains("bwlimit"), "{bad}: {run}");
        assert!(!run.stderr.contains("panicked"), "{run}");
    }
});

georep_test!(habits_bwlimit_session_key, |t: TestDir| {
    write_random(&t.src.join("data"), 256 << 10, 1);
    let s = Session::new(&t, "paced");
    let run = s.create(p(&t.dst), &["bwlimit=fast"]);
    s.check(&run, 2);
    assert!(
        run.stderr.contains("bwlimit") && run.stderr.contains("KiB/s"),
        "{run}"
    );
    s.create_ok(p(&t.dst), &["bwlimit=512"]);
    assert_eq!(s.config_get("bwlimit"), "512");
    let run = s.config(&["bwlimit", "2x"]);
    s.check(&run, 2);
    assert!(run.stderr.contains("bwlimit = 2x"), "{run}");
    s.check(&s.config(&["bwlimit", "4M"]), 0);
    assert_eq!(s.config_get("bwlimit"), "4M");
    s.start();
    s.wait_converged("initial sync under a bandwidth limit");
    write_random(&t.src.join("more"), 128 << 10, 2);
    s.wait_converged("a change under a bandwidth limit");
    assert_converged(&s);
    s.stop();
    s.check(&s.config(&["--reset", "bwlimit"]), 0);
    s.check(&s.config(&["bwlimit"]), 2);
});

// ---- -i, --itemize-changes

georep_test!(habits_itemize_changes_in_rsync_format, |t: TestDir| {
    write_file(&t.src.join("d/f"), b"hello");
    write_file(&t.src.join("gone"), b"bye");
    write_file(&t.src.join("a"), b"linked");
    hard_link(&t.src.join("a"), &t.src.join("b"));
    symlink("d/f", &t.src.join("l"));
    mkfifo(&t.src.join("p"), 0o644);

    let run = sync_plain(&t, &["-i"]);
    run.assert_code(0);
    let lines = run.lines();
    for want in [
        "cd+++++++++ d/",
        ">f+++++++++ d/f",
        ">f+++++++++ gone",
        ">f+++++++++ a",
        "hf+++++++++ b => a",
        "cL+++++++++ l -> d/f",
        "cS+++++++++ p",
    ] {
        assert!(lines.contains(want), "no {want:?}\n{run}");
    }
    assert!(run.stderr.is_empty(), "{run}");
    assert_trees_equal(&t.src, &t.dst);

    // Changes of every kind; the directories' times are pinned so that
    // only what the test changes shows.
    let root_time = mtime_ns(&t.src);
    keeping_mtime(&t.src.join("d"), || {
        append(&t.src.join("d/f"), b" world");
    });
    chmod(&t.src.join("d"), 0o700);
    remove(&t.src.join("l"));
    symlink("a", &t.src.join("l"));
    remove(&t.src.join("gone"));
    set_mtime_ns(&t.src, root_time.0 - 10, 0);
    let want = set(&[
        ">f.st...... d/f",
        ".d...p..... d/",
        "cLc.t...... l -> a",
        "*deleting   gone",
        ".d..t...... ./",
    ]);

    // A dry run tells the same, and changes nothing.
    let dry = sync_plain(&t, &["-i", "-n"]);
    dry.assert_code(0);
    assert_eq!(dry.lines(), want, "{dry}");
    assert!(t.dst.join("gone").exists());

    let run = sync_plain(&t, &["--itemize-changes"]);
    run.assert_code(0);
    assert_eq!(run.lines(), want, "{run}");
    assert_trees_equal(&t.src, &t.dst);

    // With --json the lines go to stderr; a no-op run tells nothing.
    write_file(&t.src.join("new"), b"n");
    let run = t.sync(&["-i"]);
    run.assert_code(0);
    assert!(run.stderr.contains(">f+++++++++ new\n"), "{run}");
    assert!(run.stdout.trim_start().starts_with('{'), "{run}");
    let run = sync_plain(&t, &["-i"]);
    run.assert_code(0);
    assert_eq!(run.stdout, "", "{run}");
    assert_trees_equal(&t.src, &t.dst);
});

// ---- --stats

georep_test!(habits_stats_summary, |t: TestDir| {
    for (i, size) in [1000, 2000, 3000].into_iter().enumerate() {
        write_random(&t.src.join(format!("dir/f{i}")), size, i as u64);
    }
    let run = sync_plain(&t, &["--stats"]);
    run.assert_code(0);
    for want in [
        "Number of files: 4\n",
        "Number of created files: 4\n",
        "Number of deleted files: 0\n",
        "Number of regular files transferred: 3\n",
        "Total file size: 6,000 bytes\n",
        "Total transferred file size: 6,000 bytes\n",
        "Literal data: 6,000 bytes\n",
        "Matched data: 0 bytes\n",
        "Total bytes sent: ",
        "Total bytes received: ",
        "\nsent ",
        " bytes/sec\ntotal size is 6,000  speedup is ",
    ] {
        assert!(run.stdout.contains(want), "no {want:?}\n{run}");
    }
    assert_trees_equal(&t.src, &t.dst);

    // A no-op run: nothing transferred; with --json, the stats go to stderr.
    let run = t.sync(&["--stats"]);
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("Number of regular files transferred: 0\n"),
        "{run}"
    );
    assert!(run
        .stderr
        .contains("Total transferred file size: 0 bytes\n"));
    let json = &run.stats().json;
    assert_eq!(json["total_size"], 6000, "{json}");
    assert_eq!(json["transferred_size"], 0, "{json}");
});

// ---- -q, --quiet

georep_test!(habits_quiet_prints_nothing, |t: TestDir| {
    write_file(&t.src.join("d/f"), b"data");
    write_file(&t.dst.join("extra"), b"deleted quietly");
    let run = sync_plain(&t, &["-q", "--no-progress"]);
    run.assert_code(0);
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("", ""),
        "{run}"
    );
    assert_trees_equal(&t.src, &t.dst);

    // Errors still show, and say why the exit code is not 0.
    write_file(&t.src.join("secret"), b"x");
    chmod(&t.src.join("secret"), 0o000);
    let run = sync_plain(&t, &["--quiet"]);
    if is_root() {
        run.assert_code(0);
    } else {
        run.assert_code(EXIT_PARTIAL);
        assert!(run.stderr.contains("secret"), "{run}");
    }
    assert_eq!(run.stdout, "", "{run}");
    chmod(&t.src.join("secret"), 0o600);

    for loud in ["-v", "-i", "--stats", "--json"] {
        let run = sync_plain(&t, &["-q", loud]);
        run.assert_code(2);
        assert!(run.stderr.contains("cannot be used with"), "{loud}: {run}");
    }
});

// ---- -x, --one-file-system

/// A tmpfs mounted for one test, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    /// None (the caller skips) where mounting is not allowed.
    fn tmpfs(path: &Path, options: &str) -> Option<Mount> {
        mkdir(path);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "georep-it"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(path.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

georep_test!(habits_one_file_system_skips_mount_points, |t: TestDir| {
    write_file(&t.src.join("here/f"), b"same filesystem");
    let Some(_mnt) = Mount::tmpfs(&t.src.join("here/mnt"), "size=1m,mode=0750") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    write_file(&t.src.join("here/mnt/inside"), b"another filesystem");
    mkdir(&t.src.join("here/mnt/sub"));
    // What the target already holds below the mount point is left alone.
    write_file(&t.dst.join("here/mnt/kept"), b"target's own");

    let run = sync_plain(&t, &["-x", "-i"]);
    run.assert_code(0);
    assert!(run.lines().contains(">f+++++++++ here/f"), "{run}");
    assert!(!run.stdout.contains("inside"), "{run}");
    assert_absent(&t.dst.join("here/mnt/inside"));
    assert_absent(&t.dst.join("here/mnt/sub"));
    assert!(
        t.dst.join("here/mnt/kept").exists(),
        "deleted below a mount point"
    );
    // The mount point carries the mounted root's metadata (mode 0750).
    let mode = lstat(&t.dst.join("here/mnt")).permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o750
    );
    let mnt = Path::new("here/mnt");
    assert_trees_equal_ignoring(&t.src, &t.dst, &[mnt]);
    let stats = t.sync_ok(&["--one-file-system"]);
    assert_eq!(stats.files_transferred, 0, "{}", stats.json);

    // Without -x the mount's contents are replicated like the rest.
    t.sync_ok(&[]);
    assert_trees_equal(&t.src, &t.dst);
});

// ---- --delete-excluded

georep_test!(habits_delete_excluded, |t: TestDir| {
    write_file(&t.src.join("keep"), b"k");
    write_file(&t.src.join("b.log"), b"log");
    write_file(&t.src.join("build/out"), b"o");
    t.sync_ok(&[]);
    write_file(&t.dst.join("c.log"), b"target-only, excluded");
    write_file(&t.dst.join("extra"), b"target-only");
    let excludes = ["--exclude", "*.log", "--exclude", "build/"];

    // Without it, excluded entries on the target are protected.
    let stats = t.sync_ok(&excludes);
    assert_eq!(stats.entries_deleted, 1, "only extra: {}", stats.json);
    for kept in ["b.log", "c.log", "build/out"] {
        assert!(t.dst.join(kept).exists(), "{kept} deleted");
    }
    assert_absent(&t.dst.join("extra"));

    let run = sync_plain(&t, &[&excludes[..], &["--delete-excluded", "-i"]].concat());
    run.assert_code(0);
    assert_eq!(
        run.lines(),
        set(&[
            "*deleting   b.log",
            "*deleting   build/",
            "*deleting   c.log",
        ]),
        "{run}"
    );
    let (log, build) = (Path::new("b.log"), Path::new("build"));
    assert_trees_equal_ignoring(&t.src, &t.dst, &[log, build]);
    assert_absent(&t.dst.join("b.log"));
    assert_absent(&t.dst.join("build"));
    let run = t.sync(&["--delete-excluded", "--no-delete"]);
    run.assert_code(2);
});

// ---- --files-from

georep_test!(habits_files_from, |t: TestDir| {
    write_file(&t.src.join("a/b/c"), b"listed");
    write_file(&t.src.join("a/other"), b"not listed");
    write_file(&t.src.join("top"), b"listed");
    write_file(&t.src.join("d/x"), b"in a listed directory");
    write_file(&t.src.join("skip"), b"not listed");
    write_file(&t.dst.join("stale"), b"target-only: never deleted");
    let list = t.path("list");
    std::fs::write(&list, b"a/b/c\n./top\n/d/\n\nmissing\n").unwrap();

    let run = sync_plain(&t, &["--files-from", p(&list), "-i"]);
    // A listed path the source lacks fails (rsync's 23); the rest is done.
    run.assert_code(EXIT_PARTIAL);
    assert!(
        run.stderr.contains("missing: named by --files-from"),
        "{run}"
    );
    assert!(t.dst.join("stale").exists(), "--files-from deletes nothing");
    for absent in ["a/other", "d/x", "skip"] {
        assert_absent(&t.dst.join(absent));
    }
    assert!(
        run.lines().contains("cd+++++++++ a/b/"),
        "parents implied\n{run}"
    );
    let ignored: Vec<&Path> = ["a/other", "d/x", "skip", "stale"]
        .iter()
        .map(Path::new)
        .collect();
    assert_trees_equal_ignoring(&t.src, &t.dst, &ignored);

    // From stdin, NUL-separated: names are bytes, newlines included.
    write_file(&t.src.join("new\nline"), b"n");
    write_file(&t.src.join(bpath(b"d/caf\xe9")), b"latin-1");
    let mut cmd = sync_cmd(&t, &["--files-from", "-", "--from0"]);
    cmd.stdin(Stdio::piped());
    let mut child = spawn(&mut cmd);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"new\nline\0d/caf\xe9\0").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_file(&t.dst.join("new\nline")), b"n");
    assert_eq!(read_file(&t.dst.join(bpath(b"d/caf\xe9"))), b"latin-1");
    assert_absent(&t.dst.join("d/x"));

    // A path above SOURCE, or a list that cannot be read, is a usage error.
    std::fs::write(&list, b"ok\n../etc/passwd\n").unwrap();
    let run = sync_plain(&t, &["--files-from", p(&list)]);
    run.assert_code(2);
    assert!(run.stderr.contains("line 2") && run.stderr.contains("goes above SOURCE"));
    let run = sync_plain(&t, &["--files-from", p(&t.path("nope"))]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("--files-from") && run.stderr.contains("nope"),
        "{run}"
    );
    let run = sync_plain(&t, &["--from0"]);
    run.assert_code(2);
});
