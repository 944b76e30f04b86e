//! Replication scenarios for `georep sync`: each replicating test ends with the tree
//! comparator and a check for leftover temporaries.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::fs::*;
use crate::support::harness::{assert_absent, assert_noop};
use crate::support::mutations::*;
use crate::support::process::{georep, kill_group, output, spawn};
use crate::support::tree::*;
use crate::support::{georep_test, Stats, TestDir};

fn assert_converged(t: &TestDir) {
    assert_trees_equal(&t.src, &t.dst);
    assert_no_temporaries(&t.dst);
}

/// Builds the full fixture in `src` and replicates it.
fn initial_sync(t: &TestDir) -> Stats {
    build_full_tree(&t.src);
    let stats = t.sync_ok(&[]);
    assert_converged(t);
    stats
}

/// Replicates the fixture, applies `mutate` to the source, syncs again: the replica
/// must match, and a third run must find nothing to do. Returns the second summary.
fn resync_after(t: &TestDir, mutate: fn(&Path)) -> Stats {
    initial_sync(t);
    mutate(&t.src);
    let stats = t.sync_ok(&[]);
    assert_converged(t);
    assert_noop(&t.sync_ok(&[]));
    stats
}

fn skip_unless_root() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root");
    }
    !is_root()
}

// ---- Whole trees and options

georep_test!(full_tree_replicates_and_resync_is_noop, |t: TestDir| {
    let first = initial_sync(&t);
    assert!(first.files_transferred > 0, "{}", first.json);
    assert!(
        first.bytes_literal >= 3 * MIB,
        "big3m is random: {}",
        first.json
    );
    assert_noop(&t.sync_ok(&[]));
    assert_converged(&t);
});

georep_test!(target_as_file_url, |t: TestDir| {
    build_full_tree(&t.src);
    let url = format!("file://{}", t.dst.display());
    t.sync_between(&[], &t.src, &url).assert_code(0);
    assert_converged(&t);
});

georep_test!(options_jobs_fsync_whole_file_verbose, |t: TestDir| {
    build_full_tree(&t.src);
    let variants: [&[&str]; 4] = [
        &["--jobs", "1", "--fsync", "file"],
        &["--jobs", "8", "--fsync", "none"],
        &["--whole-file", "--fsync", "batch", "-v"],
        &["-c", "--no-delete"],
    ];
    for (i, args) in variants.iter().enumerate() {
        let dst = t.path(format!("dst{i}"));
        t.sync_between(args, &t.src, &dst).assert_code(0);
        assert_trees_equal(&t.src, &dst);
        assert_no_temporaries(&dst);
    }
});

georep_test!(existing_target_root_takes_source_metadata, |t: TestDir| {
    build_full_tree(&t.src);
    write_file(&t.dst.join("stale"), b"stale");
    chmod(&t.dst, 0o701);
    set_xattr(&t.dst, "user.stale", b"1");
    t.sync_ok(&[]);
    assert_converged(&t);
});

georep_test!(stray_temporaries_are_removed, |t: TestDir| {
    initial_sync(&t);
    write_file(&t.dst.join(".georep.tmp.crashed"), b"partial");
    write_file(&t.dst.join("nested/a/.georep.tmp.42"), b"partial");
    t.sync_ok(&[]);
    assert_converged(&t);
});

// ---- One kind of change per test; `mixed_all_mutations` applies them all at once.

georep_test!(change_content_same_size_same_second, |t: TestDir| {
    let stats = resync_after(&t, content_same_size_same_second);
    assert!(stats.files_transferred >= 1, "{}", stats.json);
});

georep_test!(change_append, |t: TestDir| {
    resync_after(&t, append_to_file);
});

georep_test!(change_truncate, |t: TestDir| {
    resync_after(&t, truncate_file);
});

georep_test!(change_modes_including_setuid, |t: TestDir| {
    let stats = resync_after(&t, change_modes);
    assert_eq!(stats.bytes_literal, 0, "metadata only: {}", stats.json);
});

georep_test!(change_owners_as_root, |t: TestDir| {
    if skip_unless_root() {
        return;
    }
    let stats = resync_after(&t, change_owners);
    assert_eq!(stats.bytes_literal, 0, "metadata only: {}", stats.json);
});

georep_test!(change_xattrs_add_change_remove, |t: TestDir| {
    let stats = resync_after(&t, change_xattrs);
    assert_eq!(stats.bytes_literal, 0, "metadata only: {}", stats.json);
});

georep_test!(change_symlink_targets, |t: TestDir| {
    resync_after(&t, retarget_symlinks);
});

georep_test!(type_file_to_dir, |t: TestDir| {
    resync_after(&t, file_to_dir);
});

georep_test!(type_dir_to_file, |t: TestDir| {
    resync_after(&t, dir_to_file);
});

georep_test!(type_file_to_symlink, |t: TestDir| {
    resync_after(&t, file_to_symlink);
});

georep_test!(type_symlink_to_dir, |t: TestDir| {
    resync_after(&t, symlink_to_dir);
});

georep_test!(type_dir_to_symlink, |t: TestDir| {
    resync_after(&t, dir_to_symlink);
});

georep_test!(rename_file_and_dir, |t: TestDir| {
    resync_after(&t, rename_entries);
});

georep_test!(rename_over_existing_name, |t: TestDir| {
    resync_after(&t, rename_over_existing);
});

georep_test!(delete_whole_subtree, |t: TestDir| {
    let stats = resync_after(&t, delete_subtree);
    assert!(stats.entries_deleted >= 1, "{}", stats.json);
});

georep_test!(hardlinks_group_appears, |t: TestDir| {
    resync_after(&t, hardlink_group_appears);
});

georep_test!(hardlinks_group_grows, |t: TestDir| {
    resync_after(&t, hardlink_group_grows);
});

georep_test!(hardlinks_group_shrinks, |t: TestDir| {
    resync_after(&t, hardlink_group_shrinks);
});

georep_test!(hardlinks_group_moves, |t: TestDir| {
    resync_after(&t, hardlink_group_moves);
});

georep_test!(hardlinks_group_splits, |t: TestDir| {
    resync_after(&t, hardlink_group_splits);
});

georep_test!(change_dir_mtimes_only, |t: TestDir| {
    let stats = resync_after(&t, change_dir_mtimes);
    assert_eq!(stats.bytes_literal, 0, "metadata only: {}", stats.json);
});

georep_test!(new_fifo_and_device, |t: TestDir| {
    resync_after(&t, new_special_files);
});

/// Every mutation above in one run; the order keeps each one's paths valid, and the
/// directory mtimes go last since the others change them.
fn all_mutations(src: &Path) {
    let mutations: &[fn(&Path)] = &[
        content_same_size_same_second,
        append_to_file,
        truncate_file,
        change_modes,
        change_owners,
        change_xattrs,
        retarget_symlinks,
        file_to_dir,
        dir_to_file,
        file_to_symlink,
        symlink_to_dir,
        dir_to_symlink,
        rename_entries,
        rename_over_existing,
        delete_subtree,
        hardlink_group_appears,
        hardlink_group_grows,
        hardlink_group_shrinks,
        hardlink_group_moves,
        hardlink_group_splits,
        new_special_files,
        change_dir_mtimes,
    ];
    for mutate in mutations {
        mutate(src);
    }
}

georep_test!(mixed_all_mutations_in_one_run, |t: TestDir| {
    resync_after(&t, all_mutations);
});

// ---- Options that leave the target different from the source

georep_test!(no_delete_keeps_extras, |t: TestDir| {
    initial_sync(&t);
    write_file(&t.dst.join("extra_file"), b"extra");
    write_file(&t.dst.join("nested/extra_dir/x"), b"extra");
    remove(&t.src.join("files/one"));
    append_to_file(&t.src);

    let stats = t.sync_ok(&["--no-delete"]);
    assert_eq!(stats.entries_deleted, 0, "{}", stats.json);
    assert_eq!(read_file(&t.dst.join("extra_file")), b"extra");
    assert_eq!(read_file(&t.dst.join("nested/extra_dir/x")), b"extra");
    assert_eq!(read_file(&t.dst.join("files/one")), b"1");
    let extras = [
        Path::new("extra_file"),
        Path::new("nested/extra_dir"),
        Path::new("files/one"),
    ];
    assert_trees_equal_ignoring(&t.src, &t.dst, &extras);
    assert_no_temporaries(&t.dst);

    let stats = t.sync_ok(&[]);
    assert!(stats.entries_deleted >= 3, "{}", stats.json);
    assert_converged(&t);
});

/// Source has excluded files to leave behind; target has excluded files to keep and a
/// non-excluded extra to delete.
fn check_excludes(t: &TestDir, args: &[&str]) {
    build_full_tree(&t.src);
    write_file(&t.src.join("app.log"), b"log");
    write_file(&t.src.join("nested/a/debug.log"), b"log");
    write_file(&t.src.join("build/out.o"), b"object");
    write_file(
        &t.src.join("nested/build/kept.o"),
        b"anchored pattern: not excluded",
    );
    write_file(&t.dst.join("build/old.o"), b"target-only, excluded");
    write_file(&t.dst.join("stale.log"), b"target-only, excluded");
    write_file(&t.dst.join("stale.txt"), b"target-only, not excluded");
    stamp_mtimes(&t.src);

    t.sync_ok(args);
    for gone in ["app.log", "nested/a/debug.log", "build/out.o", "stale.txt"] {
        assert_absent(&t.dst.join(gone));
    }
    assert_eq!(
        read_file(&t.dst.join("build/old.o")),
        b"target-only, excluded"
    );
    assert_eq!(
        read_file(&t.dst.join("stale.log")),
        b"target-only, excluded"
    );
    let ignored = ["app.log", "nested/a/debug.log", "build", "stale.log"].map(Path::new);
    assert_trees_equal_ignoring(&t.src, &t.dst, &ignored);
    assert_no_temporaries(&t.dst);
}

georep_test!(exclude_patterns, |t: TestDir| {
    check_excludes(&t, &["--exclude=*.log", "--exclude", "/build/"]);
});

georep_test!(exclude_from_file, |t: TestDir| {
    let list = t.path("excludes");
    write_file(&list, b"# gitignore syntax\n*.log\n\n/build/\n");
    check_excludes(&t, &["--exclude-from", list.to_str().unwrap()]);
});

georep_test!(dry_run_changes_nothing, |t: TestDir| {
    initial_sync(&t);
    all_mutations(&t.src);
    let before = t.path("before");
    cp_a(&t.dst, &before);
    t.sync(&["--dry-run"]).assert_code(0);
    t.sync(&["-n", "--checksum"]).assert_code(0);
    assert_trees_equal(&before, &t.dst);
});

georep_test!(dry_run_does_not_create_target, |t: TestDir| {
    build_full_tree(&t.src);
    t.sync(&["-n"]).assert_code(0);
    assert_absent(&t.dst);
});

georep_test!(checksum_catches_same_size_same_mtime, |t: TestDir| {
    initial_sync(&t);
    rewrite_keep_mtime(&t.src.join("files/f4096"));
    t.sync_ok(&[]);
    assert_eq!(
        tree_diff(&t.src, &t.dst),
        ["files/f4096: content differs from byte 0"],
        "the quick check (size, mtime) cannot see this change"
    );
    let stats = t.sync_ok(&["--checksum"]);
    assert!(stats.files_transferred >= 1, "{}", stats.json);
    assert_converged(&t);
});

// ---- Deltas

const BIG: u64 = 32 * MIB;

/// Replicates a 32 MiB random file, then overwrites three 4 KiB blocks in place.
fn big_file_with_changed_blocks(t: &TestDir) {
    write_random(&t.src.join("big"), BIG, 32);
    t.sync_ok(&[]);
    for (i, offset) in [MIB, 15 * MIB + 123, BIG - 4 * KIB].into_iter().enumerate() {
        write_at(
            &t.src.join("big"),
            offset,
            &random_bytes(1000 + i as u64, 4096),
        );
    }
}

georep_test!(delta_sends_only_changed_blocks, |t: TestDir| {
    big_file_with_changed_blocks(&t);
    let stats = t.sync_ok(&["--no-whole-file"]);
    assert_converged(&t);
    assert!(stats.bytes_literal < MIB, "{}", stats.json);
    assert!(stats.bytes_matched >= BIG - 4 * MIB, "{}", stats.json);
    assert!(stats.bytes_sent < 2 * MIB, "{}", stats.json);
});

georep_test!(whole_file_sends_everything, |t: TestDir| {
    big_file_with_changed_blocks(&t);
    let stats = t.sync_ok(&["--whole-file"]);
    assert_converged(&t);
    assert_eq!(stats.bytes_matched, 0, "{}", stats.json);
    assert!(stats.bytes_literal >= BIG, "{}", stats.json);
});

georep_test!(a_local_target_gets_whole_files_as_in_rsync, |t: TestDir| {
    big_file_with_changed_blocks(&t);
    let stats = t.sync_ok(&[]);
    assert_converged(&t);
    assert_eq!(stats.bytes_matched, 0, "{}", stats.json);
    assert!(stats.bytes_literal >= BIG, "{}", stats.json);
    let out = output(&mut t.sync_command(&["-W", "--no-whole-file"], &t.src, &t.dst));
    assert_eq!(
        out.status.code(),
        Some(2),
        "-W and --no-whole-file conflict"
    );
});

// ---- Errors and exit codes

georep_test!(unreadable_source_file_is_partial_transfer, |t: TestDir| {
    // Root reads mode-000 files, so as root the run drops to an unprivileged user.
    const NOBODY: u32 = 65534;
    let work = t.path("work");
    let (src, dst) = (work.join("src"), work.join("dst"));
    write_file(&src.join("ok.txt"), b"readable");
    write_file(&src.join("sub/also_ok"), b"readable");
    write_file(&src.join("secret"), b"unreadable");
    chmod(&src.join("secret"), 0o000);
    let mut cmd = t.sync_command(&[], &src, &dst);
    if is_root() {
        chmod(&t.root, 0o755);
        for rel in walk(&work).keys() {
            lchown(&full_path(&work, rel), NOBODY, NOBODY);
        }
        cmd.uid(NOBODY).gid(NOBODY);
    }
    stamp_mtimes(&src);

    let out = output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(23), "stderr:\n{stderr}");
    assert!(
        stderr.contains("secret"),
        "the error names the file:\n{stderr}"
    );
    assert_absent(&dst.join("secret"));
    assert_trees_equal_ignoring(&src, &dst, &[Path::new("secret")]);
    assert_no_temporaries(&dst);
});

georep_test!(bad_source_exits_3, |t: TestDir| {
    t.sync_between(&[], t.path("missing"), &t.dst)
        .assert_code(3);
    write_file(&t.path("plain"), b"not a directory");
    t.sync_between(&[], t.path("plain"), &t.dst).assert_code(3);
    assert_absent(&t.dst);
});

georep_test!(uncreatable_target_exits_4, |t: TestDir| {
    write_file(&t.src.join("f"), b"data");
    write_file(&t.path("plain"), b"a file, not a directory");
    t.sync_between(&[], &t.src, t.path("plain/dst"))
        .assert_code(4);
    t.sync_between(&[], &t.src, t.path("plain")).assert_code(4);
});

georep_test!(usage_errors_exit_2, |t: TestDir| {
    t.sync(&["--no-such-option"]).assert_code(2);
    t.sync(&["--fsync", "sometimes"]).assert_code(2);
    let out = output(georep().args(["sync", "--json"]).arg(&t.src));
    assert_eq!(out.status.code(), Some(2), "one operand only");
    assert_absent(&t.dst);
});

// ---- Faults

/// Runs `sync SRC DST`, SIGKILLs master and slave after `delay`, then checks invariant 1:
/// every file visible on the target is entirely its old or its new content.
fn interrupted_sync(t: &TestDir, dst: &Path, delay: Duration) {
    let old = if dst.exists() {
        content_hashes(dst)
    } else {
        Default::default()
    };
    let new = content_hashes(&t.src);
    let child = spawn(&mut t.sync_command(&[], &t.src, dst));
    thread::sleep(delay);
    kill_group(child.id());
    let status = child.wait_with_output().expect("wait").status;
    eprintln!("{}: killed after {delay:?}: {status}", show(dst));
    if dst.exists() {
        // The killed slave holds the target's lock until a syscall it was in
        // (a write, the final sync) returns: the next run would be refused
        // with "in use" (exit 4). Wait for the lock itself, not a while.
        let root = std::fs::File::open(dst).expect("open target");
        rustix::fs::flock(&root, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    }
    if dst.exists() {
        for (rel, hash) in content_hashes(dst) {
            assert!(
                old.get(&rel) == Some(&hash) || new.get(&rel) == Some(&hash),
                "{} is neither the old nor the new content",
                show(&dst.join(&rel))
            );
        }
    }
}

fn converge(t: &TestDir, dst: &Path) {
    t.sync_between(&[], &t.src, dst).assert_code(0);
    assert_trees_equal(&t.src, dst);
    assert_no_temporaries(dst);
}

georep_test!(sigkill_at_any_point_then_resync_converges, |t: TestDir| {
    build_large_files(&t.src, 6, 16 * MIB);
    build_full_tree(&t.src.join("tree"));
    for (round, delay_ms) in [50u64, 200, 500].into_iter().enumerate() {
        let (round, delay) = (round as u64, Duration::from_millis(delay_ms));
        // A fresh target: interrupt the initial copy.
        let dst = t.path(format!("dst{round}"));
        interrupted_sync(&t, &dst, delay);
        converge(&t, &dst);
        // Then interrupt an update: a whole rewrite, in-place blocks, growth, new and
        // deleted files.
        write_random(&t.src.join("large/file_0"), 16 * MIB, 1000 + round);
        write_at(
            &t.src.join("large/file_1"),
            round * MIB,
            &random_bytes(round, 4096),
        );
        append(&t.src.join("large/file_2"), &random_bytes(round, 100_000));
        write_random(&t.src.join(format!("large/new_{round}")), 8 * MIB, round);
        remove(&t.src.join(format!("small/s{round}")));
        interrupted_sync(&t, &dst, delay);
        converge(&t, &dst);
    }
});

// Hard links between non-regular files (`cp -al` snapshots, rsnapshot) were
// replicated as separate inodes, while `rsync -aH` keeps them linked.
georep_test!(hard_links_of_every_type_stay_linked, |t: TestDir| {
    let s = &t.src;
    symlink("some/target", &s.join("sym"));
    hard_link(&s.join("sym"), &s.join("sym2"));
    mkfifo(&s.join("fifo"), 0o640);
    mkdir(&s.join("sub"));
    hard_link(&s.join("fifo"), &s.join("sub/fifo2"));
    let _listener = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
    hard_link(&s.join("sock"), &s.join("sock2"));
    if is_root() {
        mknod(
            &s.join("null"),
            rustix::fs::FileType::CharacterDevice,
            0o600,
            1,
            3,
        );
        hard_link(&s.join("null"), &s.join("null2"));
    }
    t.sync_ok(&[]);
    assert_trees_equal(&t.src, &t.dst);
    // A second run finds every group in place: nothing to do.
    let again = t.sync_ok(&[]);
    assert_eq!(again.json["entries_created"], 0, "{}", again.json);
    // A group split on the slave (a name replaced by its own inode) is mended.
    remove(&t.dst.join("sym2"));
    symlink("some/target", &t.dst.join("sym2"));
    t.sync_ok(&[]);
    assert_trees_equal(&t.src, &t.dst);
});
