//! A hostile local user on the slave (DESIGN.md invariant 3, issue 9): hard
//! links planted in the replica to files outside it, georep's temporaries
//! swapped for such links while the slave works, fifos where files were,
//! a basis truncated under the slave.
//!
//! Every case keeps a canary outside the root and checks that its type,
//! mode, owner, times, xattrs, content and link count did not change (a link
//! count may only drop when the slave replaced the name planted in the
//! replica), that the slave's peak RSS stays under [`RSS_BOUND_MIB`] and
//! that it answers within [`ANSWER`]: a hang fails the test instead of
//! hanging the suite.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use georep::meta::Kind;
use georep::proto::Msg;

use crate::hostile::{
    brief, copy, delta, digest, hello, meta, sig_req, vm_hwm_kib, whole_file, Slave, END,
};
use crate::support::fs::{
    hard_link, is_root, lstat, mkfifo, random_bytes, read_file, set_mtime_ns, set_xattr, truncate,
    write_file,
};
use crate::support::tree::TMP_PREFIX;
use crate::support::TestDir;

/// Longest wait for any one answer of the slave.
pub(crate) const ANSWER: Duration = Duration::from_secs(60);
/// Peak RSS the slave must stay under in these cases.
pub(crate) const RSS_BOUND_MIB: u64 = 150;

const CANARY: &[u8] = b"outside the root: must never change\n";
const OLD_TIME: i64 = 1_000_000_000;

/// A replica root and, beside it, `outside/canary`.
pub(crate) struct Local {
    _dir: TestDir,
    pub(crate) root: PathBuf,
    pub(crate) canary: PathBuf,
}

impl Local {
    pub(crate) fn new(label: &str) -> Local {
        let dir = TestDir::new(label);
        let root = dir.root.join("root");
        let canary = dir.root.join("outside/canary");
        write_file(&canary, CANARY);
        fs::set_permissions(&canary, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        set_xattr(&canary, "user.canary", b"1");
        set_mtime_ns(&canary, OLD_TIME, 0);
        fs::create_dir_all(&root).unwrap();
        Local {
            _dir: dir,
            root,
            canary,
        }
    }

    pub(crate) fn spawn(&self) -> Slave {
        let mut slave = Slave::spawn(&self.root);
        slave.send(&hello(false));
        let m = slave.recv_within(ANSWER);
        assert!(
            matches!(m, Msg::Hello(_)),
            "expected Hello, got {}",
            brief(&m)
        );
        slave
    }
}

/// What must not change about a file outside the root.
#[derive(Debug, PartialEq)]
pub(crate) struct Canary {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(std::ffi::OsString, Option<Vec<u8>>)>,
    content: Vec<u8>,
    pub(crate) nlink: u64,
}

pub(crate) fn canary(path: &Path) -> Canary {
    let m = lstat(path);
    let mut xattrs: Vec<_> = xattr::list(path)
        .unwrap()
        .map(|n| {
            let v = xattr::get(path, &n).ok().flatten();
            (n, v)
        })
        .collect();
    xattrs.sort();
    Canary {
        kind: format!("{:?}", m.file_type()),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime: (m.mtime(), m.mtime_nsec()),
        xattrs,
        content: read_file(path),
        nlink: m.nlink(),
    }
}

/// Everything but the link count is as before; the link count did not grow.
pub(crate) fn assert_canary_kept(label: &str, before: &Canary, path: &Path) {
    let after = canary(path);
    assert!(
        after.nlink <= before.nlink,
        "{label}: the slave added links to a file outside its root: {before:?} -> {after:?}"
    );
    assert_canary_same(label, before, path);
}

/// Everything but the link count is as before (for cases where a racing
/// user links the canary into the replica itself).
pub(crate) fn assert_canary_same(label: &str, before: &Canary, path: &Path) {
    let after = canary(path);
    let same = Canary {
        nlink: before.nlink,
        ..after
    };
    assert_eq!(
        &same, before,
        "{label}: the slave changed a file outside its root"
    );
}

/// The slave's peak RSS so far, checked against the bound.
pub(crate) fn assert_rss(label: &str, slave: &Slave) {
    let peak = vm_hwm_kib(slave.child.id()) >> 10;
    eprintln!("{label}: the slave's peak RSS: {peak} MiB");
    assert!(
        peak < RSS_BOUND_MIB,
        "{label}: the slave's peak RSS was {peak} MiB (bound {RSS_BOUND_MIB} MiB)"
    );
}

/// Frames up to the BarrierAck of `id`, each within [`ANSWER`].
pub(crate) fn until_ack(slave: &mut Slave, id: u64) -> Vec<Msg> {
    slave.send(&Msg::Barrier { id });
    let mut got = Vec::new();
    loop {
        match slave.recv_within(ANSWER) {
            Msg::BarrierAck { id: i } if i == id => return got,
            Msg::Fatal { message, .. } => panic!("unexpected Fatal: {message}"),
            m => got.push(m),
        }
    }
}

/// Ends the session cleanly and checks it ended so, with no temporary left.
pub(crate) fn finish_clean(label: &str, mut slave: Slave, root: &Path) {
    slave.send(&Msg::Finish { marker_ns: 0 });
    let run = slave.finish();
    run.assert_finished(label);
    for e in fs::read_dir(root).unwrap() {
        let n = e.unwrap().file_name();
        assert!(
            !n.as_encoded_bytes().starts_with(TMP_PREFIX),
            "{label}: temporary {n:?} left"
        );
    }
}

/// A hard link to an outside file, planted in the replica: metadata is not
/// applied to it, it is not read (signature, checksum), not linked to, and
/// data for its name makes a new inode, so the outside file never changes.
#[test]
fn planted_hard_link_to_an_outside_file_is_never_changed_read_or_linked() {
    let label = "planted hard link";
    let t = Local::new("planted-hard-link");
    let planted = t.root.join("planted");
    hard_link(&t.canary, &planted);
    let before = canary(&t.canary);
    let mut slave = t.spawn();
    slave.send(&Msg::SetMeta {
        path: b"planted".to_vec(),
        kind: Kind::Regular,
        meta: meta(0o4755),
    });
    slave.send(&sig_req(1, b"planted", 512, 8));
    slave.send(&Msg::ListDir {
        id: 2,
        path: Vec::new(),
        xattrs: true,
        checksum: true,
    });
    slave.send(&Msg::Link {
        path: b"alias".to_vec(),
        target: b"planted".to_vec(),
    });
    let got = until_ack(&mut slave, 3);
    let op_errors: Vec<&[u8]> = got
        .iter()
        .filter_map(|m| match m {
            Msg::OpError { path, .. } => Some(path.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(
        op_errors,
        [&b"planted"[..], b"alias"],
        "{label}: SetMeta and Link must be refused"
    );
    assert!(
        got.iter().any(|m| matches!(m, Msg::SigFail { id: 1, .. })),
        "{label}: a shared inode must not be signed: {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    assert!(
        !got.iter().any(|m| matches!(m, Msg::SigChunk { .. })),
        "{label}: the outside file was read for a signature"
    );
    for m in &got {
        if let Msg::DirEntries { entries, .. } = m {
            for e in entries.iter().filter(|e| e.name == b"planted") {
                assert!(
                    e.hash.is_none(),
                    "{label}: the outside file was checksummed"
                );
            }
        }
    }
    assert_canary_kept(label, &before, &t.canary);
    assert!(!t.root.join("alias").exists(), "{label}: alias was linked");
    // Data for the name replaces it with a new inode.
    for m in whole_file(4, b"planted", b"the replica's own\n") {
        slave.send(&m);
    }
    let got = until_ack(&mut slave, 5);
    assert!(
        got.is_empty(),
        "{label}: {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    assert_rss(label, &slave);
    finish_clean(label, slave, &t.root);
    assert_canary_kept(label, &before, &t.canary);
    assert_eq!(
        canary(&t.canary).nlink,
        1,
        "{label}: the planted name stays"
    );
    assert_eq!(read_file(&planted), b"the replica's own\n");
    assert_eq!(lstat(&planted).nlink(), 1);
}

/// A racing local user swaps every `.georep.tmp.*` name it sees for a hard
/// link to the outside canary while the slave creates symlinks and fifos
/// under temporary names and gives them metadata (setuid mode, times).
#[test]
fn temporaries_swapped_for_outside_links_change_nothing_outside() {
    let label = "temporaries swapped while the slave works";
    let t = Local::new("temporaries-swapped");
    let before = canary(&t.canary);
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (root, target, stop) = (t.root.clone(), t.canary.clone(), stop.clone());
        thread::spawn(move || {
            let stage = root.join("stage");
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(dir) = fs::read_dir(&root) else {
                    continue;
                };
                for e in dir.flatten() {
                    let name = e.file_name();
                    if !name.as_encoded_bytes().starts_with(TMP_PREFIX) {
                        continue;
                    }
                    let _ = fs::remove_file(&stage);
                    if fs::hard_link(&target, &stage).is_ok()
                        && fs::rename(&stage, root.join(&name)).is_ok()
                    {
                        swaps += 1;
                    }
                }
            }
            let _ = fs::remove_file(&stage);
            swaps
        })
    };
    let mut slave = t.spawn();
    for i in 0..3000u32 {
        slave.send(&Msg::Mknod {
            path: format!("fifo{}", i % 20).into_bytes(),
            kind: Kind::Fifo,
            rdev: 0,
            meta: meta(0o4777),
        });
        slave.send(&Msg::Symlink {
            path: format!("link{}", i % 20).into_bytes(),
            target: b"x".to_vec(),
            meta: meta(0o777),
        });
    }
    until_ack(&mut slave, 1);
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("{label}: the racer swapped {swaps} temporaries");
    assert_rss(label, &slave);
    // The racer's own links may stay in the replica (it may write there):
    // the link count is its doing; nothing else may differ.
    assert_canary_same(label, &before, &t.canary);
    slave.send(&Msg::Finish { marker_ns: 0 });
    let run = slave.finish();
    run.assert_finished(label);
    assert_canary_same(label, &before, &t.canary);
}

/// A fifo (or a device) where the master expects a file: SigReq, checksum
/// listings and a file flipping between regular and fifo under a racing
/// user never block the slave.
#[test]
fn fifos_and_devices_never_block_the_slave() {
    let label = "fifos and devices";
    let t = Local::new("fifos-never-block");
    mkfifo(&t.root.join("fifo"), 0o644);
    let device = is_root() && {
        let r = rustix::fs::mknodat(
            rustix::fs::CWD,
            t.root.join("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        );
        r.is_ok()
    };
    let before = canary(&t.canary);
    let mut slave = t.spawn();
    slave.send(&sig_req(1, b"fifo", 512, 8));
    if device {
        slave.send(&sig_req(2, b"null", 512, 8));
    }
    slave.send(&Msg::ListDir {
        id: 3,
        path: Vec::new(),
        xattrs: true,
        checksum: true,
    });
    let got = until_ack(&mut slave, 4);
    assert!(got.iter().any(|m| matches!(m, Msg::SigFail { id: 1, .. })));
    if device {
        assert!(got.iter().any(|m| matches!(m, Msg::SigFail { id: 2, .. })));
    }
    // A racing user flips `flip` between a regular file and a fifo.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (root, stop) = (t.root.clone(), stop.clone());
        thread::spawn(move || {
            let flip = root.join("flip");
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::remove_file(&flip);
                let _ = fs::write(&flip, b"regular");
                let _ = fs::remove_file(&flip);
                let _ = rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &flip,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                );
            }
        })
    };
    for i in 0..400u64 {
        slave.send(&sig_req(10 + 2 * i, b"flip", 512, 8));
        slave.send(&Msg::ListNames {
            id: 11 + 2 * i,
            path: Vec::new(),
            names: vec![b"flip".to_vec()],
            xattrs: false,
            checksum: true,
        });
        if i % 50 == 49 {
            until_ack(&mut slave, 5000 + i);
        }
    }
    until_ack(&mut slave, 9999);
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert_rss(label, &slave);
    assert_canary_kept(label, &before, &t.canary);
    slave.send(&Msg::Finish { marker_ns: 0 });
    slave.finish().assert_finished(label);
    assert!(lstat(&t.root.join("fifo")).file_type().is_fifo());
}

/// The basis of a delta truncated by someone else after it was signed: the
/// slave used to map it and died of SIGBUS; now the file fails (Verified
/// false, so the master sends it whole) and the session goes on.
#[test]
fn basis_truncated_under_the_slave_fails_the_file_not_the_slave() {
    let label = "basis truncated under the slave";
    let t = Local::new("basis-truncated");
    const SIZE: usize = 16 << 20;
    write_file(&t.root.join("file"), &random_bytes(5, SIZE));
    let before = canary(&t.canary);
    let mut slave = t.spawn();
    slave.send(&sig_req(1, b"file", 128 << 10, 8));
    loop {
        match slave.recv_within(ANSWER) {
            Msg::SigChunk { id: 1, .. } => {}
            Msg::SigEnd { id: 1, .. } => break,
            m => panic!("{label}: unexpected {}", brief(&m)),
        }
    }
    truncate(&t.root.join("file"), 0);
    let len = 8u64 << 20;
    slave.send(&Msg::FileBegin {
        id: 1,
        path: b"file".to_vec(),
        size: len,
        delta: true,
    });
    slave.send(&Msg::FileDelta {
        id: 1,
        len: len as u32,
        delta: delta(&[&copy(4 << 20, len), END]),
        zstd: false,
    });
    slave.send(&Msg::FileEnd {
        id: 1,
        hash: digest(b"whatever"),
        meta: meta(0o644),
    });
    let got = until_ack(&mut slave, 2);
    assert!(
        matches!(got.as_slice(), [Msg::Verified { id: 1, ok: false }]),
        "{label}: expected Verified false, got {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    assert_rss(label, &slave);
    finish_clean(label, slave, &t.root);
    assert_canary_kept(label, &before, &t.canary);
}

/// A hard-link group whose names this round's listing saw, all inside the
/// replica, stays manageable after a restart: its metadata may change and
/// names may be added (the planted case above is refused because its
/// outside name was never listed).
#[test]
fn links_all_inside_the_replica_stay_manageable_after_a_restart() {
    let label = "hard-link group after a restart";
    let t = Local::new("links-after-restart");
    let mut slave = t.spawn();
    for m in whole_file(1, b"a", b"group\n") {
        slave.send(&m);
    }
    slave.send(&Msg::Link {
        path: b"b".to_vec(),
        target: b"a".to_vec(),
    });
    assert!(until_ack(&mut slave, 2).is_empty());
    finish_clean(label, slave, &t.root);
    assert_eq!(lstat(&t.root.join("a")).nlink(), 2);

    let mut slave = t.spawn();
    // Before a listing has seen both names, the group is not the replica's.
    slave.send(&Msg::Link {
        path: b"early".to_vec(),
        target: b"a".to_vec(),
    });
    slave.send(&Msg::ListDir {
        id: 1,
        path: Vec::new(),
        xattrs: false,
        checksum: true,
    });
    let got = until_ack(&mut slave, 2);
    assert!(
        matches!(got.first(), Some(Msg::OpError { path, .. }) if path == b"early"),
        "{label}: {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    for m in &got {
        if let Msg::DirEntries { entries, .. } = m {
            assert!(entries.iter().all(|e| e.hash.is_some()), "{label}: digests");
        }
    }
    slave.send(&Msg::SetMeta {
        path: b"b".to_vec(),
        kind: Kind::Regular,
        meta: meta(0o600),
    });
    slave.send(&Msg::Link {
        path: b"c".to_vec(),
        target: b"a".to_vec(),
    });
    slave.send(&Msg::Remove {
        path: b"b".to_vec(),
    });
    slave.send(&Msg::Link {
        path: b"d".to_vec(),
        target: b"c".to_vec(),
    });
    let got = until_ack(&mut slave, 3);
    assert!(
        got.is_empty(),
        "{label}: {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    finish_clean(label, slave, &t.root);
    let a = lstat(&t.root.join("a"));
    assert_eq!((a.nlink(), a.mode() & 0o7777), (3, 0o600));
    assert_eq!(lstat(&t.root.join("d")).ino(), a.ino());
}
