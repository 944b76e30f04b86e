//! Continuous replication sessions: `georep create`, `start`, `stop`, `status`,
//! `config` and `delete`, with a daemon that records inotify events in its journal and
//! ships them. Every test has its own `--home` under its test directory, stops its
//! daemon at the end (also on failure: [`Session`]'s drop runs `georep stop`, then
//! SIGKILLs whatever is left), and ends with the tree comparator.
//!
//! Convergence is polled: the trees are equal and `status` shows nothing pending. A
//! wait that times out prints the remaining differences, the status and the tail of
//! the daemon's log (`HOME/sessions/NAME/daemon.log`).
//!
//! The volume tests run at the sizes of the issue (10,000 files in the renamed
//! directory, 100,000 creates in the burst). The SIGKILL test kills 15 times, 50
//! with `GEOREP_IT_BIG=1`; `GEOREP_IT_SEED=N` replays its random choices.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rustix::process::Signal;
use serde_json::Value;

use crate::support::fixture::*;
use crate::support::fs::*;
use crate::support::harness::assert_absent;
use crate::support::mutations::*;
use crate::support::process::{descendants, freeze, georep, is_alive, kill_tree, signal};
use crate::support::session::*;
use crate::support::sshd::{KeyKind, Sshd};
use crate::support::tree::*;
use crate::support::{georep_test, TestDir};

// ---- Mutations (those of sync.rs, applied while the daemon runs)

fn change_blocks_in_place(src: &Path) {
    write_at(&src.join("sparse/holes"), 20 * MIB, &random_bytes(99, 4096));
}

fn rewrite_whole_file(src: &Path) {
    write_random(&src.join("files/f4095"), 50_000, 4242);
}

/// A directory renamed, then written at its new path at once: the events of the
/// writes name a path the slave does not have until the rename is applied.
fn rename_dir_then_write_inside(src: &Path) {
    rename(&src.join("acl"), &src.join("acl_moved"));
    append(&src.join("acl_moved/file"), b"more");
    write_file(
        &src.join("acl_moved/dir/new"),
        b"new in a renamed directory",
    );
}

/// A tree moved in from outside (a lone To: walk it) and one moved out (a lone From:
/// it is gone).
fn move_in_and_out(src: &Path) {
    let outside = src.parent().unwrap().join("outside");
    write_file(&outside.join("incoming/a"), b"moved in");
    write_file(&outside.join("incoming/sub/b"), b"moved in, deeper");
    symlink("a", &outside.join("incoming/link"));
    rename(&outside.join("incoming"), &src.join("nested/incoming"));
    rename(&src.join("xattrs/dir"), &outside.join("gone"));
}

fn delete_and_recreate(src: &Path) {
    remove(&src.join("modes/setgid"));
    write_file(&src.join("modes/setgid"), b"recreated, another size");
    remove(&src.join("nested/empty_dir"));
    write_file(&src.join("nested/empty_dir/now_full"), b"recreated");
}

/// Renames that a replay in the wrong order breaks: a swap through a temporary name
/// across directories, a chain of directory renames, a name reused at once, and a
/// directory moved below a new directory of its old name.
fn rename_chains_and_swaps(src: &Path) {
    let (a, b, tmp) = (
        src.join("sparse/all_hole"),
        src.join("modes/all_bits"),
        src.join("sparse/swap.tmp"),
    );
    rename(&b, &tmp);
    rename(&a, &b);
    rename(&tmp, &a);
    rename(&src.join("sparse"), &src.join("sparse_1"));
    rename(&src.join("sparse_1"), &src.join("sparse_2"));
    rename(&src.join("special"), &src.join("special_old"));
    write_file(&src.join("special/new"), b"a new directory, an old name");
    rename(&src.join("links"), &src.join("links_moved"));
    mkdir(&src.join("links"));
    rename(&src.join("links_moved"), &src.join("links/inner"));
}

/// Directories populated the moment they exist: inotify has no watch on a new
/// directory yet when its first files appear (the daemon must walk it).
fn mkdir_then_files_at_once(src: &Path) {
    for d in 0..30 {
        let dir = src.join(format!("race/d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..10 {
            fs::write(dir.join(format!("f{i}")), format!("race {d} {i}\n")).unwrap();
        }
        let deep = dir.join("x/y/z");
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("leaf"), b"deep race").unwrap();
        symlink("../f0", &dir.join("x/link"));
    }
}

/// Names that are not UTF-8, hold a newline or look like options, created and renamed.
fn odd_names(src: &Path) {
    write_file(&src.join(bpath(b"names/new\xff\nname")), b"odd, live");
    rename(
        &src.join("names/-rf"),
        &src.join(bpath(b"names/--rf moved\n\xfe")),
    );
    rename(
        &src.join(bpath(b"names/\xff\xfe")),
        &src.join(bpath(b"nested/\xfe\xff from names")),
    );
}

type Mutation = (&'static str, fn(&Path));

/// Every mutation, in an order that keeps each one's paths valid; directory mtimes
/// last, since the others change them.
const ALL_MUTATIONS: &[Mutation] = &[
    (
        "content, same size, same second",
        content_same_size_same_second,
    ),
    ("append", append_to_file),
    ("truncate", truncate_file),
    ("blocks changed in place", change_blocks_in_place),
    ("modes", change_modes),
    ("owners", change_owners),
    ("xattrs", change_xattrs),
    ("symlink targets", retarget_symlinks),
    ("file to dir", file_to_dir),
    ("dir to file", dir_to_file),
    ("file to symlink", file_to_symlink),
    ("symlink to dir", symlink_to_dir),
    ("dir to symlink", dir_to_symlink),
    ("odd names", odd_names),
    ("renames", rename_entries),
    ("rename over an existing name", rename_over_existing),
    (
        "rename a dir, then write inside",
        rename_dir_then_write_inside,
    ),
    ("move in, move out", move_in_and_out),
    ("delete and recreate", delete_and_recreate),
    ("delete a subtree", delete_subtree),
    ("hard-link group appears", hardlink_group_appears),
    ("hard-link group grows", hardlink_group_grows),
    ("hard-link group shrinks", hardlink_group_shrinks),
    ("hard-link group moves", hardlink_group_moves),
    ("hard-link group splits", hardlink_group_splits),
    ("new fifo and device", new_special_files),
    ("mkdir, files at once", mkdir_then_files_at_once),
    ("rename chains and swaps", rename_chains_and_swaps),
    ("dir mtimes", change_dir_mtimes),
];

/// The full fixture replicated by a running session; then each mutation in turn, each
/// awaited until the slave has it.
fn live(t: &TestDir, name: &str, mutations: &[Mutation]) {
    build_full_tree(&t.src);
    let s = started(t, name, &[]);
    for (what, mutate) in mutations {
        mutate(&t.src);
        s.wait_converged(what);
    }
    s.stop();
    assert_converged(&s);
}

/// Every mutation of the foundation suite at once, then one convergence wait.
fn all_mutations_at_once(t: &TestDir, name: &str, sets: &[&str]) {
    build_full_tree(&t.src);
    let s = started(t, name, sets);
    for (_, mutate) in ALL_MUTATIONS {
        mutate(&t.src);
    }
    s.wait_converged("all mutations at once");
    s.stop();
    assert_converged(&s);
}

// ---- 1. Initial sync, status

georep_test!(session_initial_sync_then_active, |t: TestDir| {
    build_full_tree(&t.src);
    let s = Session::new(&t, "initial");
    s.create_ok(p(&t.dst), &[]);
    let st = s.status();
    assert_eq!(st["session"], "initial", "{st}");
    assert_eq!(st["state"], "Created", "{st}");
    assert!(st["pid"].is_null(), "not running: {st}");

    let before = unix_now();
    s.start_piped();
    s.wait_converged("initial sync");
    let st = s.wait_status("Active, Changelog crawl", CONVERGE, |st| {
        st["state"] == "Active" && st["crawl"] == "Changelog"
    });
    assert!(pending_is_zero(&st), "{st}");
    assert_eq!(st["session"], "initial", "{st}");
    assert_eq!(num(&st, "failures"), 0.0, "{st}");
    assert!(num(&st, "files_synced") >= 20.0, "{st}");
    assert!(num(&st, "bytes_sent") >= (3 * MIB) as f64, "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    let pid = st["pid"].as_u64().unwrap_or_else(|| panic!("pid: {st}")) as u32;
    assert!(
        is_alive(pid),
        "status shows pid {pid}, which is not running"
    );
    let last = num(&st, "last_synced");
    assert!(
        last >= before - 5.0 && last <= unix_now() + 5.0,
        "last_synced {last} is not between the start ({before}) and now\n{st}"
    );
    let lag = num(&st, "lag_seconds");
    assert!((0.0..30.0).contains(&lag), "lag_seconds {lag}\n{st}");

    // A second start leaves the running daemon alone and starts no other.
    let ours = || -> BTreeSet<u32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| is_alive(p) && is_daemon_of(p, &s.home))
            .collect()
    };
    let before = ours();
    let again = s.run(&["start", "initial"]);
    let st = s.status();
    assert_eq!(st["pid"].as_u64(), Some(pid as u64), "{again}\n{st}");
    assert_eq!(
        ours(),
        before,
        "processes of this home after a second start\n{again}"
    );
    assert!(is_alive(pid), "a second start killed the daemon\n{again}");

    // Without a name: an array of such objects. Without --json: a table.
    let all = s.run(&["status", "--json"]);
    all.assert_code(0);
    let all = all.json().unwrap();
    let list = all
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {all}"));
    assert_eq!(list.len(), 1, "{all}");
    assert_eq!(list[0]["session"], "initial", "{all}");
    assert_eq!(list[0]["state"], "Active", "{all}");
    let table = s.run(&["status"]);
    table.assert_code(0);
    assert!(table.stdout.contains("initial"), "{table}");
    let table = s.run(&["status", "initial"]);
    table.assert_code(0);
    assert!(table.stdout.contains("initial"), "{table}");

    s.stop();
    assert!(!is_alive(pid), "daemon {pid} outlived `stop`");
    let st = s.status();
    assert_eq!(st["state"], "Stopped", "{st}");
    assert!(st["pid"].is_null(), "{st}");
    // Stopping a stopped session says so.
    let run = s.run(&["stop", "initial"]);
    run.assert_code(EXIT_SESSION);
    assert!(run.stderr.contains("not running"), "{run}");
    assert_converged(&s);
});

// ---- 2. Live replication of every kind of change

georep_test!(session_live_content_changes, |t: TestDir| {
    live(
        &t,
        "content",
        &[
            (
                "content, same size, same second",
                content_same_size_same_second,
            ),
            ("append", append_to_file),
            ("truncate", truncate_file),
            ("blocks changed in place", change_blocks_in_place),
            ("whole file rewritten", rewrite_whole_file),
        ],
    );
});

georep_test!(session_live_metadata_changes, |t: TestDir| {
    live(
        &t,
        "metadata",
        &[
            ("modes, setuid", change_modes),
            ("owners", change_owners),
            ("xattrs add, change, remove", change_xattrs),
            ("dir mtimes", change_dir_mtimes),
        ],
    );
});

georep_test!(session_live_symlinks_and_type_changes, |t: TestDir| {
    live(
        &t,
        "types",
        &[
            ("symlink targets", retarget_symlinks),
            ("file to dir", file_to_dir),
            ("dir to file", dir_to_file),
            ("file to symlink", file_to_symlink),
            ("symlink to dir", symlink_to_dir),
            ("dir to symlink", dir_to_symlink),
        ],
    );
});

georep_test!(session_live_renames_and_deletes, |t: TestDir| {
    live(
        &t,
        "renames",
        &[
            ("renames", rename_entries),
            ("rename over an existing name", rename_over_existing),
            (
                "rename a dir, then write inside",
                rename_dir_then_write_inside,
            ),
            ("move in, move out", move_in_and_out),
            ("delete and recreate", delete_and_recreate),
            ("delete a subtree", delete_subtree),
            ("rename chains and swaps", rename_chains_and_swaps),
        ],
    );
});

georep_test!(session_live_hardlinks, |t: TestDir| {
    live(
        &t,
        "hardlinks",
        &[
            ("hard-link group appears", hardlink_group_appears),
            ("hard-link group grows", hardlink_group_grows),
            ("hard-link group shrinks", hardlink_group_shrinks),
            ("hard-link group moves", hardlink_group_moves),
            ("hard-link group splits", hardlink_group_splits),
        ],
    );
});

georep_test!(session_live_new_entries_and_mkdir_race, |t: TestDir| {
    live(
        &t,
        "new",
        &[
            ("new fifo and device", new_special_files),
            ("mkdir, files at once", mkdir_then_files_at_once),
            ("odd names", odd_names),
        ],
    );
});

georep_test!(session_live_all_mutations_at_once, |t: TestDir| {
    all_mutations_at_once(&t, "all", &[]);
});

// Batches of one change and no delay: a rename's halves, a new directory and its
// files, a type change and its contents all land in different batches.
georep_test!(session_live_tiny_batches, |t: TestDir| {
    all_mutations_at_once(&t, "tiny", &["batch_max_changes=1", "batch_delay_ms=0"]);
});

// Coalescing: what a batch sees settled is what ships. A temporary created,
// written and deleted ships nothing; a file written 1,000 times ships once.
georep_test!(session_batch_coalesces_changes, |t: TestDir| {
    write_file(&t.src.join("dir/keep"), b"here before");
    // Long batches, cut only by the delay: every change below lands in one.
    let s = started(
        &t,
        "coalesce",
        &["batch_delay_ms=3000", "batch_quiet_ms=3000"],
    );
    let before = num(&s.status(), "files_synced");
    let started_at = Instant::now();
    let tmp = t.src.join("dir/scratch.tmp");
    write_file(&tmp, &random_bytes(1, 100_000));
    append(&tmp, b"more");
    remove(&tmp);
    let hot = t.src.join("dir/hot");
    for i in 0..1_000u32 {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&hot)
            .unwrap();
        std::io::Write::write_all(&mut f, &i.to_le_bytes()).unwrap();
        // Spread over a second: without batching, several rounds would ship it.
        thread::sleep(ms(1));
    }
    assert!(
        started_at.elapsed() < Duration::from_millis(2_500),
        "the writes took {:?}: they may straddle two batches",
        started_at.elapsed()
    );
    let st = s.wait_converged("one batch");
    assert_eq!(
        num(&st, "files_synced") - before,
        1.0,
        "only the file written 1,000 times ships, once: {st}\n{}",
        s.log_tail()
    );
    s.stop();
    assert_converged(&s);
});

// Every mutation while the initial full crawl still runs: the crawl must not lose what
// the journal records meanwhile.
georep_test!(session_changes_during_initial_sync, |t: TestDir| {
    build_full_tree(&t.src);
    build_large_files(&t.src.join("bulk"), 6, 8 * MIB);
    let s = Session::new(&t, "early");
    s.create_ok(p(&t.dst), &[]);
    s.start();
    for (_, mutate) in ALL_MUTATIONS {
        mutate(&t.src);
    }
    write_random(&t.src.join("bulk/large/file_0"), 8 * MIB, 4343);
    remove(&t.src.join("bulk/large/file_1"));
    s.wait_converged("mutations during the initial sync");
    s.stop();
    assert_converged(&s);
});

// A file rewritten in place over and over while the daemon ships it: whatever it sends
// meanwhile, the slave ends with the last content (a read that saw the file change is
// sent again, not half old, half new).
georep_test!(session_file_changing_while_shipped, |t: TestDir| {
    write_random(&t.src.join("hot"), 8 * MIB, 1);
    write_file(&t.src.join("log"), b"");
    let s = started(&t, "hot", &[]);
    let mut rng = StdRng::seed_from_u64(seed());
    let until = Instant::now() + Duration::from_secs(2);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let offset = rng.random_range(0..8 * MIB - 65536);
        write_at(&t.src.join("hot"), offset, &random_bytes(n, 65536));
        append(&t.src.join("log"), format!("line {n}\n").as_bytes());
        thread::sleep(ms(5));
    }
    s.wait_converged("after the writes stopped");
    s.stop();
    assert_converged(&s);
});

// A graceful stop in the middle of the initial sync returns promptly; the next start
// finishes the job.
georep_test!(session_stop_during_initial_sync, |t: TestDir| {
    build_large_files(&t.src, 6, 16 * MIB);
    let s = Session::new(&t, "interrupted");
    s.create_ok(p(&t.dst), &[]);
    s.start();
    thread::sleep(ms(150));
    let start = Instant::now();
    s.stop();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "stop took {:?}",
        start.elapsed()
    );
    s.start();
    s.wait_converged("after the restart");
    s.stop();
    assert_converged(&s);
});

// Two sessions in one home, from one source to two targets: their daemons, journals and
// status are separate.
georep_test!(session_two_sessions_one_home, |t: TestDir| {
    build_full_tree(&t.src);
    let one = Session::new(&t, "one");
    let mut two = Session::new(&t, "two");
    two.dst = t.path("dst2");
    one.create_ok(p(&one.dst), &[]);
    // The second one also exercises the transfer keys.
    two.create_ok(p(&two.dst), &["jobs=1", "fsync=file", "compress=true"]);
    one.start();
    two.start();
    one.wait_converged("initial sync, one");
    two.wait_converged("initial sync, two");
    append_to_file(&t.src);
    rename_entries(&t.src);
    one.wait_converged("changes, one");
    two.wait_converged("changes, two");
    one.stop();
    let st = two.status();
    assert_eq!(
        st["state"], "Active",
        "stopping one stopped the other: {st}"
    );
    write_file(&t.src.join("after_one_stopped"), b"only two is running");
    two.wait_converged("changes, two alone");
    assert_absent(&one.dst.join("after_one_stopped"));
    two.stop();
    assert_converged(&two);
    one.start();
    one.wait_converged("one catches up");
    one.stop();
    assert_converged(&one);
});

// ---- 3. Renames travel as renames

georep_test!(session_directory_rename_is_a_rename, |t: TestDir| {
    let n: u64 = 10_000;
    const SIZE: u64 = 4096;
    let many = t.src.join("many");
    mkdir(&many);
    for i in 0..n {
        fs::write(
            many.join(format!("f{i:05}")),
            random_bytes(i, SIZE as usize),
        )
        .unwrap();
    }
    write_random(&t.src.join("single/one_mib"), MIB, 1);
    let total = n * SIZE + MIB;

    let s = Session::new(&t, "rename");
    s.create_ok(p(&t.dst), &[]);
    s.start();
    s.wait_converged_ignoring("initial sync", &[], CONVERGE_BIG);
    let ino = |rel: &str| lstat(&t.dst.join(rel)).ino();
    let (dir, inner, file) = (ino("many"), ino("many/f00000"), ino("single/one_mib"));
    // Held open, the slave's inodes cannot be freed and their numbers reused by
    // re-created entries.
    let _held: Vec<File> = ["many", "many/f00000", "single/one_mib"]
        .iter()
        .map(|rel| File::open(t.dst.join(rel)).unwrap())
        .collect();
    let before = s.status();
    let (sent, synced) = (num(&before, "bytes_sent"), num(&before, "last_synced"));

    rename(&many, &t.src.join("many_renamed"));
    rename(
        &t.src.join("single/one_mib"),
        &t.src.join("single/one_mib.moved"),
    );
    s.wait_converged_ignoring("renamed", &[], CONVERGE_BIG);
    // The counters are those of the round that shipped the renames.
    let st = s.wait_status("last_synced advanced", CONVERGE, |st| {
        st["last_synced"].as_f64().is_some_and(|t| t > synced)
    });
    assert_eq!(
        ino("many_renamed"),
        dir,
        "the slave's directory was re-created, not renamed"
    );
    assert_eq!(
        ino("many_renamed/f00000"),
        inner,
        "a file in it was re-created"
    );
    assert_eq!(
        ino("single/one_mib.moved"),
        file,
        "the slave's file was re-created, not renamed"
    );
    let resent = num(&st, "bytes_sent") - sent;
    assert!(
        resent < total as f64 / 10.0,
        "the renames sent {resent} bytes, the renamed data is {total}\n{st}"
    );
    s.stop();
    assert_converged(&s);
});

// ---- 4. A burst of creates

georep_test!(session_burst_of_creates, |t: TestDir| {
    let (dirs, per) = (100, 1000);
    write_file(&t.src.join("before"), b"before the burst");
    let s = started(&t, "burst", &[]);
    for d in 0..dirs {
        let dir = t.src.join(format!("burst/d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..per {
            fs::write(dir.join(format!("f{i:04}")), format!("{d}/{i}\n")).unwrap();
        }
    }
    let st = s.wait_converged_ignoring("burst", &[], CONVERGE_BIG);
    assert!(
        num(&st, "files_synced") >= (dirs * per) as f64,
        "{} files created: {st}",
        dirs * per
    );
    s.stop();
    assert_converged(&s);
});

// ---- 5. Changes made while stopped

georep_test!(session_changes_while_stopped, |t: TestDir| {
    build_full_tree(&t.src);
    let s = started(&t, "offline", &[]);
    s.stop();

    write_file(&t.src.join("offline/new/file"), b"created while stopped");
    append_to_file(&t.src);
    content_same_size_same_second(&t.src);
    chmod(&t.src.join("modes/setuid"), 0o644);
    set_xattr(&t.src.join("files/one"), "user.offline", b"1");
    remove(&t.src.join("files/one"));
    remove(&t.src.join("deep"));
    rename(&t.src.join("nested/a"), &t.src.join("nested/a_renamed"));
    rename(
        &t.src.join("files/f4096"),
        &t.src.join("files/f4096.renamed"),
    );
    hardlink_group_grows(&t.src);

    s.start();
    s.wait_converged("catch-up");
    s.wait_status("Active, Changelog crawl", CONVERGE, |st| {
        st["state"] == "Active" && st["crawl"] == "Changelog"
    });
    // And live again after the catch-up.
    write_file(&t.src.join("offline/after"), b"after the catch-up");
    s.wait_converged("live after catch-up");
    s.stop();
    assert_converged(&s);
});

// ---- 6. SIGKILL of the daemon

/// A stream of small changes of every common kind under `root`.
struct Stream {
    root: PathBuf,
    /// Regular files the stream may append to, rename or delete.
    files: Vec<PathBuf>,
    n: u64,
}

impl Stream {
    fn new(root: &Path) -> Stream {
        let files = (0..20).map(|i| root.join(format!("small/s{i}"))).collect();
        Stream {
            root: root.to_path_buf(),
            files,
            n: 0,
        }
    }

    fn step(&mut self, rng: &mut StdRng) {
        self.n += 1;
        let n = self.n;
        let large = |rng: &mut StdRng| {
            self.root
                .join(format!("large/file_{}", rng.random_range(0..4)))
        };
        match rng.random_range(0..10) {
            0..=2 => {
                let f = self
                    .root
                    .join(format!("stream/d{}/f{n}", rng.random_range(0..7)));
                write_file(&f, format!("stream {n}\n").as_bytes());
                self.files.push(f);
            }
            3 => write_random(&large(rng), 4 * MIB, 1000 + n),
            4 => {
                let offset = rng.random_range(0..4 * MIB - 4096);
                write_at(&large(rng), offset, &random_bytes(n, 4096));
            }
            5 if !self.files.is_empty() => {
                let i = rng.random_range(0..self.files.len());
                append(&self.files[i], format!("more {n}\n").as_bytes());
            }
            6 if !self.files.is_empty() => {
                let i = rng.random_range(0..self.files.len());
                let to = self
                    .root
                    .join(format!("stream/d{}/r{n}", rng.random_range(0..7)));
                mkdir(to.parent().unwrap());
                rename(&self.files[i], &to);
                self.files[i] = to;
            }
            7 if !self.files.is_empty() => {
                let i = rng.random_range(0..self.files.len());
                remove(&self.files.swap_remove(i));
            }
            8 => {
                let dir = self.root.join(format!("stream/m{n}/sub"));
                fs::create_dir_all(&dir).unwrap();
                for k in 0..3 {
                    let f = dir.join(format!("f{k}"));
                    fs::write(&f, format!("{n} {k}\n")).unwrap();
                    self.files.push(f);
                }
            }
            _ => {
                if let Some(f) = self.files.last() {
                    chmod(f, 0o600 | (n as u32 & 0o77));
                }
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("GEOREP_IT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

georep_test!(session_sigkill_during_changes_then_restart, |t: TestDir| {
    build_large_files(&t.src, 4, 4 * MIB);
    let s = Session::new(&t, "killed");
    s.create_ok(p(&t.dst), &[]);
    let seed = seed();
    eprintln!("GEOREP_IT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stream = Stream::new(&t.src);
    s.start();
    for round in 0..if big() { 50 } else { 15 } {
        // The first kill interrupts the initial sync.
        let delay = ms(if round == 0 {
            rng.random_range(20..400)
        } else {
            rng.random_range(50..1500)
        });
        let kill_at = Instant::now() + delay;
        while Instant::now() < kill_at {
            stream.step(&mut rng);
            thread::sleep(ms(rng.random_range(0..20)));
        }
        let pid = s.daemon_pid().unwrap_or_else(|| {
            panic!(
                "round {round}: no daemon pid in status nor daemon.pid\n{}",
                s.diagnostics()
            )
        });
        let killed = kill_tree(pid).unwrap_or_else(|e| panic!("round {round}: {e}"));
        eprintln!("round {round}: SIGKILL after {delay:?}: {killed:?}");
        s.wait_status("no pid once the daemon is dead", ms(10_000), |st| {
            st["pid"].is_null()
        });
        // Changes while it is dead.
        for _ in 0..5 {
            stream.step(&mut rng);
        }
        s.start();
        s.wait_converged(&format!("round {round}, after the restart"));
        assert_no_temporaries(&t.dst);
    }
    s.stop();
    assert_converged(&s);
});

// ---- 7. Drift on the slave is repaired by the periodic full crawl

georep_test!(session_slave_drift_repaired_by_full_crawl, |t: TestDir| {
    build_full_tree(&t.src);
    let s = started(&t, "drift", &["full_crawl_interval=2"]);
    let d = &t.dst;
    append(&d.join("files/f100000"), b"drift");
    write_file(&d.join("files/f4095"), b"drift: other content, other size");
    write_file(&d.join("extra/file"), b"only on the slave");
    write_file(&d.join("nested/extra"), b"only on the slave");
    remove(&d.join("files/one"));
    remove(&d.join("nested/a"));
    chmod(&d.join("modes/all"), 0o600);
    remove(&d.join("links/relative"));
    symlink("elsewhere", &d.join("links/relative"));
    set_xattr(&d.join("xattrs/file"), "user.drift", b"1");
    s.wait_converged_ignoring("drift repaired", &[], Duration::from_secs(20));
    s.stop();
    assert_converged(&s);
});

// ---- 7b. An inotify queue overflow: the events lost are found by a crawl

georep_test!(session_inotify_queue_overflow_converges, |t: TestDir| {
    build_full_tree(&t.src);
    let s = started(&t, "overflow", &[]);
    let pid = s.daemon_pid().expect("daemon pid");
    let queue: u64 = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(16_384);
    if queue > 4_000_000 {
        eprintln!("skipped: max_queued_events is {queue}, too many events to overflow");
        return;
    }
    // Frozen, the daemon reads no events: more than the kernel queue holds
    // overflow it. Alternating names keep the kernel from merging them.
    freeze(pid);
    let (a, b) = (t.src.join("files/one"), t.src.join("files/empty"));
    for i in 0..queue + 1_000 {
        chmod(
            if i % 2 == 0 { &a } else { &b },
            0o600 + (i % 2) as u32 * 0o44,
        );
    }
    // Made after the overflow: only a crawl can see these.
    for i in 0..200 {
        write_file(&t.src.join(format!("lost/f{i}")), format!("{i}").as_bytes());
    }
    rename_entries(&t.src);
    delete_subtree(&t.src);
    change_modes(&t.src);
    signal(pid, Signal::CONT);
    s.wait_converged_ignoring("after the overflow", &[], Duration::from_secs(60));
    let log = s.log_tail();
    assert!(
        log.contains("events were lost"),
        "the daemon should have seen the overflow\n{log}"
    );
    s.stop();
    assert_converged(&s);
});

// ---- 7b'. The inotify watch limit: shown in status, crawls take over

georep_test!(session_watch_limit_falls_back_to_crawls, |t: TestDir| {
    for i in 0..40 {
        write_file(&t.src.join(format!("d{i:02}/f")), b"before");
    }
    let s = Session::new(&t, "limited");
    s.create_ok(p(&t.dst), &["full_crawl_interval=2"]);
    // The limit is per user namespace: a namespace of its own with room for
    // 10 watches leaves the other tests' daemons alone.
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "sh", "-c"])
        .arg(r#"echo 10 > /proc/sys/user/max_inotify_watches && exec "$0" "$@""#)
        .arg(GEOREP)
        .arg("--home")
        .arg(&s.home)
        .args(["start", "limited", "--foreground"]);
    let log = |name: &str| File::create(t.path(name)).unwrap();
    cmd.stdout(log("ns.stdout")).stderr(log("ns.stderr"));
    let Ok(child) = cmd.spawn() else {
        eprintln!("skipped: no unshare(1) here");
        return;
    };
    let mut child = ChildGuard(child);
    thread::sleep(ms(300));
    if let Ok(Some(status)) = child.0.try_wait() {
        let stderr = fs::read_to_string(t.path("ns.stderr")).unwrap_or_default();
        eprintln!("skipped: cannot limit watches in a user namespace ({status}): {stderr}");
        return;
    }
    let st = s.wait_converged("initial sync");
    assert_eq!(
        st["watch_limit"], true,
        "status shows the watch limit: {st}"
    );
    // Not watched: only the periodic crawls (every 2 s here) can see these.
    for i in 0..40 {
        write_file(&t.src.join(format!("d{i:02}/f")), b"after, longer");
    }
    write_file(&t.src.join("d39/new"), b"new");
    remove(&t.src.join("d00"));
    s.wait_converged_ignoring("changes seen by crawls", &[], Duration::from_secs(30));
    let st = s.status();
    assert_eq!(st["state"], "Active", "running despite the limit: {st}");
    s.stop();
    let exit = wait_timeout(&mut child.0, Duration::from_secs(10));
    assert!(exit.is_some_and(|e| e.success()), "daemon exit {exit:?}");
    assert_converged(&s);
});

// ---- 7c. The slave's disk fills up, then space is freed

/// A tmpfs mounted on a directory for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None (the caller skips) where mounting is not allowed.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        mkdir(dir);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "georep-it"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {} to {size}", show(&self.0));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

georep_test!(session_slave_disk_full_then_freed, |t: TestDir| {
    let Some(disk) = Tmpfs::mount(&t.dst, "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    for i in 0..20 {
        write_random(&t.src.join(format!("small/f{i}")), 10_000, i);
    }
    let s = started(&t, "full", &[]);
    // Bigger than the slave's free space: its temporary hits ENOSPC.
    write_random(&t.src.join("big"), 6 * MIB, 1);
    write_file(&t.src.join("small/after"), b"queued behind the big file");
    // From the second failure on, the daemon naps 2 s or more with no slave
    // running: nothing may be left on the target then.
    s.wait_status("Faulty on a full disk", CONVERGE, |st| {
        st["state"] == "Faulty"
            && num(st, "faults") >= 2.0
            && st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left"))
    });
    // Never a partial file: neither the big file nor a temporary of it.
    assert_absent(&t.dst.join("big"));
    assert_no_temporaries(&t.dst);
    disk.resize("64m");
    s.wait_converged_ignoring("space freed", &[], Duration::from_secs(90));
    s.stop();
    assert_converged(&s);
    drop(disk);
});

// ---- 8. ignore_deletes (set through `config`: it takes effect at the next start)

georep_test!(session_ignore_deletes_keeps_deleted_files, |t: TestDir| {
    build_full_tree(&t.src);
    let s = Session::new(&t, "keep");
    s.create_ok(p(&t.dst), &[]);
    s.config(&["ignore_deletes", "true"]).assert_code(0);
    s.start();
    s.wait_converged("initial sync");

    remove(&t.src.join("files/one"));
    remove(&t.src.join("nested/a"));
    remove(&t.src.join("links/dangling"));
    append_to_file(&t.src);
    write_file(&t.src.join("new/file"), b"created after the deletes");
    let kept = ["files/one", "nested/a", "links/dangling"].map(Path::new);
    s.wait_converged_ignoring("deletes ignored", &kept, CONVERGE);
    // Give a wrong deletion time to happen.
    thread::sleep(ms(1000));
    assert_eq!(read_file(&t.dst.join("files/one")), b"1");
    assert_eq!(read_file(&t.dst.join("nested/a/b/c/leaf.txt")), b"leaf\n");
    assert!(lstat(&t.dst.join("links/dangling"))
        .file_type()
        .is_symlink());
    s.stop();
    assert_trees_equal_ignoring(&t.src, &t.dst, &kept);
    assert_no_temporaries(&t.dst);
});

// ---- sync_xattrs=false

georep_test!(session_without_xattrs, |t: TestDir| {
    write_file(&t.src.join("f"), b"content");
    set_xattr(&t.src.join("f"), "user.before", b"1");
    write_file(&t.src.join("d/g"), b"more");
    set_xattr(&t.src.join("d"), "user.dir", b"2");
    let s = Session::new(&t, "noxattrs");
    s.create_ok(p(&t.dst), &["sync_xattrs=false"]);
    s.start();
    let no_xattrs = |rel: &str| {
        let names: Vec<_> = xattr::list(t.dst.join(rel))
            .unwrap()
            .filter(|n| n.to_string_lossy().starts_with("user."))
            .collect();
        assert!(names.is_empty(), "{rel}: {names:?}");
    };
    s.wait_status("Active", CONVERGE, |st| {
        st["state"] == "Active" && pending_is_zero(st)
    });
    set_xattr(&t.src.join("f"), "user.after", b"3");
    append(&t.src.join("d/g"), b" and more");
    write_file(&t.src.join("new"), b"new");
    set_xattr(&t.src.join("new"), "user.new", b"4");
    let deadline = Instant::now() + CONVERGE;
    while read_file(&t.dst.join("d/g")) != b"more and more" || !t.dst.join("new").exists() {
        assert!(Instant::now() < deadline, "{}", s.diagnostics());
        thread::sleep(POLL);
    }
    s.wait_status("nothing pending", CONVERGE, pending_is_zero);
    s.stop();
    for rel in ["f", "d", "new"] {
        no_xattrs(rel);
    }
    // Everything else is the master's: compare with a copy stripped of its xattrs.
    let expected = t.path("expected");
    cp_a(&t.src, &expected);
    for rel in walk(&expected).keys() {
        let path = full_path(&expected, rel);
        for name in xattr::list(&path).unwrap() {
            xattr::remove(&path, &name).unwrap();
        }
    }
    assert_trees_equal(&expected, &t.dst);
    assert_no_temporaries(&t.dst);
});

// ---- 9. exclude

georep_test!(session_exclude_patterns, |t: TestDir| {
    build_full_tree(&t.src);
    write_file(&t.src.join("app.log"), b"log");
    write_file(&t.src.join("nested/a/debug.log"), b"log");
    write_file(&t.src.join("build/out.o"), b"object");
    write_file(
        &t.src.join("nested/build/kept.o"),
        b"anchored: not excluded",
    );
    stamp_mtimes(&t.src);
    let s = started_ignoring(&t, "excl", &[r#"exclude=["*.log","/build/"]"#], &excluded());
    for gone in ["app.log", "nested/a/debug.log", "build"] {
        assert_absent(&t.dst.join(gone));
    }
    assert_eq!(
        read_file(&t.dst.join("nested/build/kept.o")),
        b"anchored: not excluded"
    );

    // Live: excluded files appear and change, included ones too; a file renamed to an
    // excluded name leaves the slave, one renamed from an excluded name arrives.
    write_file(&t.src.join("live.log"), b"excluded");
    append(&t.src.join("app.log"), b"more log");
    write_file(&t.src.join("build/new.o"), b"excluded");
    write_file(&t.src.join("nested/live.txt"), b"included");
    write_file(&t.src.join("nested/to_log.txt"), b"included, then excluded");
    let mut ignored = excluded().to_vec();
    ignored.extend(["live.log", "nested/to_log.log"].map(Path::new));
    s.wait_converged_ignoring("live, with excludes", &ignored, CONVERGE);
    assert_absent(&t.dst.join("live.log"));
    assert_absent(&t.dst.join("build"));

    rename(
        &t.src.join("nested/to_log.txt"),
        &t.src.join("nested/to_log.log"),
    );
    rename(&t.src.join("app.log"), &t.src.join("app.txt"));
    s.wait_converged_ignoring("renames across the excludes", &ignored, CONVERGE);
    assert_absent(&t.dst.join("nested/to_log.log"));
    assert_absent(&t.dst.join("nested/to_log.txt"));
    assert_eq!(read_file(&t.dst.join("app.txt")), b"logmore log");

    // Directories too: the excluded build/ renamed to an included name arrives whole,
    // an included directory renamed to build/ leaves the slave.
    rename(&t.src.join("build"), &t.src.join("built"));
    write_file(
        &t.src.join("incl/deep/file"),
        b"included, then renamed to build/",
    );
    s.wait_converged_ignoring("an included directory", &ignored, CONVERGE);
    rename(&t.src.join("incl"), &t.src.join("build"));
    s.wait_converged_ignoring("directory renames across the excludes", &ignored, CONVERGE);
    assert_eq!(read_file(&t.dst.join("built/new.o")), b"excluded");
    assert_absent(&t.dst.join("incl"));
    assert_absent(&t.dst.join("build"));
    s.stop();
    assert_trees_equal_ignoring(&t.src, &t.dst, &ignored);
    assert_no_temporaries(&t.dst);
});

/// What `exclude=["*.log","/build/"]` leaves out of the fixture.
fn excluded() -> [&'static Path; 3] {
    ["app.log", "nested/a/debug.log", "build"].map(Path::new)
}

fn started_ignoring(t: &TestDir, name: &str, sets: &[&str], ignored: &[&Path]) -> Session {
    let s = Session::new(t, name);
    s.create_ok(p(&t.dst), sets);
    s.start();
    s.wait_converged_ignoring("initial sync", ignored, CONVERGE);
    s
}

// ---- 10. The control commands: status, config, delete

georep_test!(session_status_config_delete, |t: TestDir| {
    write_file(&t.src.join("file"), b"small");
    let s = Session::new(&t, "cfg");
    let dst = p(&t.dst);

    // Unknown sessions.
    s.run(&["status", "nope", "--json"])
        .assert_code(EXIT_SESSION);
    s.run(&["status", "nope"]).assert_code(EXIT_SESSION);

    // create: the name is taken once; bad keys and values are usage errors and
    // create nothing.
    s.create_ok(dst, &["batch_delay_ms=250"]);
    s.create(dst, &[]).assert_code(EXIT_SESSION);
    // Names that are not one plain path component never escape HOME/sessions.
    for bad in ["../evil", "a/b", "..", "."] {
        let run = s.run(&["create", "--", bad, p(&t.src), dst]);
        assert!(
            run.code.is_some_and(|c| c != 0),
            "session name {bad:?} accepted\n{run}"
        );
    }
    let run = s.run(&["create", "", p(&t.src), dst]);
    assert!(
        run.code.is_some_and(|c| c != 0),
        "empty name accepted\n{run}"
    );
    assert_absent(&s.home.join("evil"));
    assert_absent(&s.home.join("sessions/a"));
    for bad in [
        "no_such_key=1",
        "batch_max_changes=many",
        "ignore_deletes=maybe",
        "fsync=sometimes",
        "exclude=[unclosed",
        "missing_equals_sign",
    ] {
        let other = Session::new(&t, "bad");
        let run = other.create(dst, &[bad]);
        assert_eq!(run.code, Some(EXIT_USAGE), "--set {bad}\n{run}");
        other
            .run(&["status", "bad", "--json"])
            .assert_code(EXIT_SESSION);
    }

    let st = s.status();
    assert_eq!(st["session"], "cfg", "{st}");
    assert_eq!(st["state"], "Created", "{st}");
    assert!(st["pid"].is_null(), "{st}");
    // Stopping a session that never ran says so.
    s.run(&["stop", "cfg"]).assert_code(EXIT_SESSION);

    // config: get, set, reset.
    assert_eq!(s.config_get("batch_delay_ms"), "250");
    assert_eq!(s.config_get("batch_max_changes"), "10000");
    assert_eq!(s.config_get("full_crawl_interval"), "86400");
    assert_eq!(s.config_get("journal_retention"), "3600");
    assert_eq!(s.config_get("ignore_deletes"), "false");
    assert_eq!(s.config_get("sync_xattrs"), "true");
    s.config(&["batch_max_changes", "500"]).assert_code(0);
    assert_eq!(s.config_get("batch_max_changes"), "500");
    s.config(&["ignore_deletes", "true"]).assert_code(0);
    assert_eq!(s.config_get("ignore_deletes"), "true");
    s.config(&["fsync", "none"]).assert_code(0);
    assert_eq!(s.config_get("fsync"), "none");
    s.config(&["port", "2222"]).assert_code(0);
    assert_eq!(s.config_get("port"), "2222");
    s.config(&["exclude", r#"["*.tmp","build/"]"#])
        .assert_code(0);
    let exclude = s.config_get("exclude");
    assert!(
        exclude.contains("*.tmp") && exclude.contains("build/"),
        "exclude: {exclude}"
    );

    let whole = s.config(&[]);
    whole.assert_code(0);
    let table: toml::Table = toml::from_str(&whole.stdout)
        .unwrap_or_else(|e| panic!("config is not TOML: {e}\n{whole}"));
    assert_eq!(
        find_key(&table, "batch_max_changes"),
        Some(toml::Value::Integer(500)),
        "{whole}"
    );
    assert_eq!(
        find_key(&table, "ignore_deletes"),
        Some(toml::Value::Boolean(true)),
        "{whole}"
    );

    s.config(&["--reset", "batch_max_changes"]).assert_code(0);
    assert_eq!(s.config_get("batch_max_changes"), "10000");
    s.config(&["--reset", "ignore_deletes"]).assert_code(0);
    assert_eq!(s.config_get("ignore_deletes"), "false");
    s.config(&["--reset", "port"]).assert_code(0);
    s.config(&["--reset", "fsync"]).assert_code(0);
    s.config(&["--reset", "exclude"]).assert_code(0);
    // Bad keys and values change nothing.
    s.config(&["batch_delay_ms", "soon"])
        .assert_code(EXIT_USAGE);
    s.config(&["no_such_key", "1"]).assert_code(EXIT_USAGE);
    s.config(&["no_such_key"]).assert_code(EXIT_USAGE);
    assert_eq!(s.config_get("batch_delay_ms"), "250");

    // GEOREP_HOME instead of --home, and --home after the subcommand.
    let mut cmd = georep();
    cmd.env("GEOREP_HOME", &s.home)
        .args(["create", "env", p(&t.src), p(&t.path("dst_env"))]);
    run_cmd(cmd, &s.scratch, CMD_TIMEOUT).assert_code(0);
    let mut cmd = georep();
    cmd.args(["status", "--json", "--home"]).arg(&s.home);
    let all = run_cmd(cmd, &s.scratch, CMD_TIMEOUT);
    all.assert_code(0);
    let all = all.json().unwrap();
    let names: BTreeSet<&str> = all
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {all}"))
        .iter()
        .map(|st| st["session"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, BTreeSet::from(["cfg", "env"]), "{all}");
    let dirs: BTreeSet<String> = fs::read_dir(s.home.join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, BTreeSet::from(["cfg".into(), "env".into()]));

    // delete: refused while running, then done once stopped.
    s.start();
    s.wait_converged("initial sync");
    let run = s.run(&["delete", "cfg"]);
    s.check(&run, EXIT_SESSION);
    assert!(s.dir().is_dir(), "a refused delete removed the session");
    assert!(
        s.daemon_pid().is_some_and(is_alive),
        "a refused delete stopped the daemon"
    );
    s.stop();
    s.run(&["stop", "cfg"]).assert_code(EXIT_SESSION);
    assert_converged(&s);
    s.run(&["delete", "cfg"]).assert_code(0);
    assert_absent(&s.dir());
    s.run(&["status", "cfg", "--json"])
        .assert_code(EXIT_SESSION);
    s.run(&["delete", "env"]).assert_code(0);
    let all = s.run(&["status", "--json"]);
    all.assert_code(0);
    assert_eq!(all.json().unwrap(), Value::Array(vec![]), "{all}");
});

/// The value of `key` at the top level or in any table below.
fn find_key(table: &toml::Table, key: &str) -> Option<toml::Value> {
    table.get(key).cloned().or_else(|| {
        table
            .values()
            .filter_map(|v| v.as_table())
            .find_map(|t| find_key(t, key))
    })
}

// ---- `start --foreground`

georep_test!(session_foreground_until_stopped, |t: TestDir| {
    build_full_tree(&t.src);
    let s = Session::new(&t, "fg");
    s.create_ok(p(&t.dst), &[]);
    let mut cmd = s.command(&["start", "fg", "--foreground"]);
    let log = |name: &str| File::create(t.path(name)).unwrap();
    cmd.stdout(log("fg.stdout")).stderr(log("fg.stderr"));
    let mut child = ChildGuard(cmd.spawn().expect("spawn start --foreground"));
    let fg = child.0.id();
    s.wait_converged("initial sync");
    let pid = s.daemon_pid().expect("a pid while running");
    assert!(
        pid == fg || descendants(fg).contains(&pid),
        "status shows pid {pid}, not the foreground process {fg} nor one below it"
    );
    append_to_file(&t.src);
    hardlink_group_grows(&t.src);
    s.wait_converged("live");
    s.stop();
    let status = wait_timeout(&mut child.0, Duration::from_secs(10));
    let stderr = fs::read_to_string(t.path("fg.stderr")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "`start --foreground` after `stop`: {status:?}\n--- its stderr\n{stderr}"
    );
    assert_converged(&s);
});

// ---- 11. Over SSH

georep_test!(session_over_ssh, |t: TestDir| {
    // Declared before the session: dropped after it, once the daemon has stopped.
    let mut sshd = Sshd::start(&t.root);
    build_full_tree(&t.src);
    let s = Session::new(&t, "remote");
    let identity = format!("identity={}", p(&sshd.user_key(KeyKind::Ed25519)));
    let known_hosts = format!("known_hosts={}", p(&sshd.known_hosts()));
    let remote = format!("remote_command={GEOREP}");
    s.create_ok(&sshd.url(&t.dst), &[&identity, &known_hosts, &remote]);
    s.start();
    s.wait_converged("initial sync over ssh");
    a_few_of_each(&t.src);
    s.wait_converged("changes over ssh");
    write_file(&t.src.join("new_dir/second"), b"second batch");
    rename_over_existing(&t.src);
    s.wait_converged("second batch over ssh");

    // The slave's host goes away (sshd and the slave killed): the session turns
    // Faulty and says why; once sshd is back it resumes.
    sshd.kill();
    write_file(
        &t.src.join("new_dir/during_outage"),
        b"written while sshd was down",
    );
    append_to_file(&t.src);
    s.wait_status("Faulty while sshd is down", CONVERGE, |st| {
        st["state"] == "Faulty" && st["last_error"].as_str().is_some_and(|e| !e.is_empty())
    });
    let port = sshd.port();
    sshd.restart();
    if sshd.port() == port {
        s.wait_converged("after sshd came back");
    } else {
        eprintln!("sshd came back on another port: the session cannot reach it");
    }
    s.stop();
    assert_converged(&s);
});
