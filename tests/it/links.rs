//! Hard links made while a session runs (issue 10, items 4 and 5): `ln a/x b/y`
//! journals b/y alone, and the live round ships it as a link to the name the journal's
//! inode index knows on the slave: no copy, no crawl of the whole tree. Of every type
//! that can be hard-linked. When the index cannot vouch (no row, a leader that moved
//! or went, a slave that refuses the link), the new name arrives as a copy and a crawl
//! forms the group.
//!
//! "No crawl" is read in the daemon's log: every crawl between live changes starts
//! with a `reconciling:` line (the worker's). "No copy" is `files_synced`, which
//! counts the files whose content went out.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::FileType;

use crate::support::fs::*;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

/// How long a live link may take to show on the slave.
const LINKED_WITHIN: Duration = Duration::from_secs(10);

/// A started session over a source with empty directories `a` and `b`.
fn ab_session(t: &TestDir, name: &str) -> Session {
    mkdir(&t.src.join("a"));
    mkdir(&t.src.join("b"));
    started(t, name, &[])
}

/// Crawls between live changes the daemon has started so far.
fn crawls(s: &Session) -> usize {
    let log = std::fs::read(s.dir().join("daemon.log")).unwrap_or_default();
    String::from_utf8_lossy(&log)
        .matches("reconciling:")
        .count()
}

fn files_synced(s: &Session) -> u64 {
    s.status()["files_synced"]
        .as_u64()
        .unwrap_or_else(|| panic!("no files_synced in {}", s.status()))
}

/// Waits until the slave's `a` and `b` are one inode; panics after [`LINKED_WITHIN`].
#[track_caller]
fn wait_linked(s: &Session, a: &str, b: &str) {
    let (a, b) = (s.dst.join(a), s.dst.join(b));
    let start = Instant::now();
    loop {
        let ino = |p: &Path| std::fs::symlink_metadata(p).map(|m| (m.dev(), m.ino()));
        if let (Ok(x), Ok(y)) = (ino(&a), ino(&b)) {
            if x == y {
                eprintln!("linked on the slave in {:?}", start.elapsed());
                return;
            }
        }
        assert!(
            start.elapsed() < LINKED_WITHIN,
            "{} and {} are not one inode on the slave after {LINKED_WITHIN:?}\n{}",
            show(&a),
            show(&b),
            s.diagnostics()
        );
        thread::sleep(ms(20));
    }
}

/// Links `from` to `to` in the source of a converged session, and checks that the
/// slave links them too, with no crawl and no content sent; ends converged.
#[track_caller]
fn link_live(s: &Session, from: &str, to: &str) {
    let (crawled, synced) = (crawls(s), files_synced(s));
    hard_link(&s.src.join(from), &s.src.join(to));
    wait_linked(s, from, to);
    s.wait_converged(&format!("ln {from} {to}"));
    assert_eq!(
        files_synced(s),
        synced,
        "ln {from} {to}: content was sent\n{}",
        s.log_tail()
    );
    assert_eq!(
        crawls(s),
        crawled,
        "ln {from} {to}: the round owed a crawl\n{}",
        s.log_tail()
    );
}

// The case: a file the session shipped, linked from another directory.
georep_test!(live_link_of_a_regular_file_ships_as_a_link, |t: TestDir| {
    let s = ab_session(&t, "regular");
    write_random(&t.src.join("a/x"), 300_000, 1);
    s.wait_converged("a/x written");
    link_live(&s, "a/x", "b/y");
    // A third name, in the same directory as the first.
    link_live(&s, "a/x", "a/z");
    assert_eq!(lstat(&s.dst.join("b/y")).nlink(), 3);
    s.stop();
    assert_converged(&s);
});

// Groups the start-up crawl saw are indexed too: a new name of one of them
// (here in a directory the round creates) is linked at once.
georep_test!(live_link_joins_a_group_the_crawl_saw, |t: TestDir| {
    write_file(&t.src.join("old/x"), b"in a group since before the start");
    hard_link(&t.src.join("old/x"), &t.src.join("old/x2"));
    symlink("../elsewhere", &t.src.join("old/sym"));
    hard_link(&t.src.join("old/sym"), &t.src.join("old/sym2"));
    let s = started(&t, "crawled", &[]);
    let (crawled, synced) = (crawls(&s), files_synced(&s));
    mkdir(&t.src.join("new"));
    hard_link(&t.src.join("old/x2"), &t.src.join("new/x3"));
    hard_link(&t.src.join("old/sym"), &t.src.join("new/sym3"));
    wait_linked(&s, "old/x", "new/x3");
    wait_linked(&s, "old/sym", "new/sym3");
    s.wait_converged("new names of crawled groups");
    assert_eq!(files_synced(&s), synced, "{}", s.log_tail());
    assert_eq!(crawls(&s), crawled, "{}", s.log_tail());
    s.stop();
    assert_converged(&s);
});

// Item 5: hard links between non-regular files, made live.
georep_test!(live_links_of_symlinks_fifos_and_sockets, |t: TestDir| {
    let s = ab_session(&t, "special");
    symlink("target/of/the link", &t.src.join("a/sym"));
    mkfifo(&t.src.join("a/fifo"), 0o640);
    let socket = UnixListener::bind(t.src.join("a/sock")).expect("bind a socket");
    s.wait_converged("a symlink, a fifo and a socket");
    link_live(&s, "a/sym", "b/sym");
    link_live(&s, "a/fifo", "b/fifo");
    link_live(&s, "a/sock", "b/sock");
    if is_root() {
        mknod(
            &t.src.join("a/null"),
            FileType::CharacterDevice,
            0o600,
            1,
            3,
        );
        s.wait_converged("a device");
        link_live(&s, "a/null", "b/null");
    }
    drop(socket);
    s.stop();
    assert_converged(&s);
});

// The leader moves in the same batch as the link is made: the round's rename
// moves the index's row along, and the link follows it.
georep_test!(
    live_link_to_a_leader_renamed_in_the_same_batch,
    |t: TestDir| {
        mkdir(&t.src.join("c"));
        let s = ab_session(&t, "moved");
        write_random(&t.src.join("a/x"), 100_000, 2);
        s.wait_converged("a/x written");
        let (crawled, synced) = (crawls(&s), files_synced(&s));
        rename(&t.src.join("a/x"), &t.src.join("c/moved"));
        hard_link(&t.src.join("c/moved"), &t.src.join("b/y"));
        wait_linked(&s, "c/moved", "b/y");
        s.wait_converged("renamed and linked");
        assert_eq!(files_synced(&s), synced, "{}", s.log_tail());
        assert_eq!(crawls(&s), crawled, "{}", s.log_tail());
        // A later batch finds it at its new name as well.
        link_live(&s, "c/moved", "a/again");
        s.stop();
        assert_converged(&s);
    }
);

// The leader is gone before the round sees the link: the new name is all the
// source has, and it arrives as a file.
georep_test!(
    live_link_whose_leader_was_deleted_arrives_as_a_file,
    |t: TestDir| {
        let s = ab_session(&t, "deleted");
        write_file(&t.src.join("a/x"), b"outlives its first name");
        symlink("somewhere", &t.src.join("a/sym"));
        s.wait_converged("a/x and a/sym");
        hard_link(&t.src.join("a/x"), &t.src.join("b/y"));
        hard_link(&t.src.join("a/sym"), &t.src.join("b/sym"));
        remove(&t.src.join("a/x"));
        remove(&t.src.join("a/sym"));
        s.wait_converged("linked, then the first names deleted");
        assert_eq!(read_file(&s.dst.join("b/y")), b"outlives its first name");
        assert_eq!(lstat(&s.dst.join("b/y")).nlink(), 1);
        assert!(!s.dst.join("a/x").exists());
        s.stop();
        assert_converged(&s);
    }
);

// The slave cannot vouch for the leader's inode (a name of it that the master does
// not have was planted in the replica): it refuses the link, and the new name comes
// as a copy, then a crawl removes the stray name and links the group.
georep_test!(
    live_link_refused_by_the_slave_falls_back_to_a_copy,
    |t: TestDir| {
        let s = ab_session(&t, "refused");
        write_file(&t.src.join("a/x"), b"its slave inode has a stray name");
        s.wait_converged("a/x written");
        hard_link(&s.dst.join("a/x"), &s.dst.join("a/stray"));
        let crawled = crawls(&s);
        hard_link(&t.src.join("a/x"), &t.src.join("b/y"));
        wait_linked(&s, "a/x", "b/y");
        s.wait_converged("linked by the crawl");
        assert!(
            crawls(&s) > crawled,
            "the group was formed without the crawl\n{}",
            s.log_tail()
        );
        let log = String::from_utf8_lossy(&std::fs::read(s.dir().join("daemon.log")).unwrap())
            .into_owned();
        assert!(log.contains("sent b/y as a copy"), "{}", s.log_tail());
        assert!(!s.dst.join("a/stray").exists());
        s.stop();
        assert_converged(&s);
    }
);

// A file that has been on the slave since before the session started is in no
// index row (a crawl indexes hard-link groups only): its first link is a copy, and
// the crawl it owes forms the group.
georep_test!(
    first_link_to_a_file_from_before_the_start_needs_a_crawl,
    |t: TestDir| {
        write_file(&t.src.join("a/x"), b"single since before the start");
        mkdir(&t.src.join("b"));
        let s = started(&t, "unindexed", &[]);
        let crawled = crawls(&s);
        hard_link(&t.src.join("a/x"), &t.src.join("b/y"));
        wait_linked(&s, "a/x", "b/y");
        s.wait_converged("linked by the crawl");
        assert!(crawls(&s) > crawled, "{}", s.log_tail());
        // Now indexed: the next name is linked live.
        link_live(&s, "a/x", "b/z");
        s.stop();
        assert_converged(&s);
    }
);
