//! A hostile master against the slave's bounds (issue 9): work in proportion
//! to data, not to claimed sizes; memory capped in bytes; no crash on deep
//! trees; error frames that always fit; a round that must be finished.
//! Each case checks the canary outside the root, the slave's peak RSS and
//! that it answers in time (see `hostile_local`).

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use georep::delta::{digest_fd, Hasher};
use georep::meta::Meta;
use georep::proto::Msg;

use crate::hostile::{brief, hello, meta, Slave};
use crate::hostile_local::{
    assert_canary_kept, assert_rss, canary, finish_clean, until_ack, Local,
};
use crate::support::fs::{lstat, write_file};
use crate::support::tree::TMP_PREFIX;
use crate::support::TestDir;

/// A file of almost 16 TiB whose data is 4 MiB: FileData at a huge offset,
/// then the digest over the hole to the end, in seconds (plain BLAKE3 would
/// hash 16 TiB of zeros for an hour).
#[test]
fn data_at_a_huge_offset_costs_what_the_data_costs() {
    let label = "data at a huge offset";
    let t = Local::new("huge-offset");
    let before = canary(&t.canary);
    let Some(size) = largest_sparse(&t.root) else {
        eprintln!("{label}: skipped: this filesystem holds no file of 1 TiB");
        return;
    };
    let data = crate::support::fs::random_bytes(9, 4 << 20);
    let at = size / 2 + 12_345;
    let mut h = Hasher::new();
    h.data(at, &data).zeros(size - at - data.len() as u64);
    let start = Instant::now();
    let mut slave = t.spawn();
    slave.send(&Msg::FileBegin {
        id: 1,
        path: b"huge".to_vec(),
        size,
        delta: false,
    });
    for (k, c) in data.chunks(1 << 20).enumerate() {
        slave.send(&Msg::FileData {
            id: 1,
            offset: at + (k << 20) as u64,
            data: c.to_vec(),
            zstd: false,
        });
    }
    slave.send(&Msg::FileEnd {
        id: 1,
        hash: *h.finalize().as_bytes(),
        meta: meta(0o644),
    });
    let got = until_ack(&mut slave, 2);
    assert!(
        got.is_empty(),
        "{label}: {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{label}: took {:?}",
        start.elapsed()
    );
    assert_rss(label, &slave);
    finish_clean(label, slave, &t.root);
    let f = fs::File::open(t.root.join("huge")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    assert_eq!(
        digest_fd(f.as_fd(), size).unwrap(),
        *h.finalize().as_bytes()
    );
    assert_canary_kept(label, &before, &t.canary);
}

/// The largest sparse file of 16 TiB or a little less this filesystem
/// holds (ext4 stops 4 KiB short of 16 TiB), or None under 1 TiB.
fn largest_sparse(dir: &std::path::Path) -> Option<u64> {
    let probe = dir.join("probe");
    let f = fs::File::create(&probe).unwrap();
    let found = [16u64 << 40, (16 << 40) - 4096, 8 << 40, 4 << 40, 1 << 40]
        .into_iter()
        .find(|&s| f.set_len(s).is_ok());
    drop(f);
    fs::remove_file(&probe).unwrap();
    found
}

/// The feature the fix makes possible: `georep sync` of a ~16 TiB sparse
/// image with 4 MiB of data, in seconds, byte-exact.
#[test]
fn sixteen_tib_sparse_file_replicates_in_seconds() {
    let label = "16 TiB sparse file";
    let t = TestDir::new("sparse-16tib");
    let Some(size) = largest_sparse(&t.src) else {
        eprintln!("{label}: skipped: this filesystem holds no file of 1 TiB");
        return;
    };
    let src = t.src.join("image");
    let f = fs::File::create(&src).unwrap();
    f.set_len(size).unwrap();
    for (i, at) in [0, 1 << 30, size / 3, size - (1 << 20)]
        .into_iter()
        .enumerate()
    {
        let chunk = crate::support::fs::random_bytes(i as u64, 1 << 20);
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, at).unwrap();
    }
    drop(f);
    let start = Instant::now();
    t.sync_ok(&[]);
    let took = start.elapsed();
    eprintln!("{label}: {size} bytes replicated in {took:?}");
    assert!(took < Duration::from_secs(60), "{label}: took {took:?}");
    let dst = t.dst.join("image");
    assert_eq!(lstat(&dst).len(), size);
    let (a, b) = (fs::File::open(&src).unwrap(), fs::File::open(&dst).unwrap());
    assert_eq!(
        digest_fd(a.as_fd(), size).unwrap(),
        digest_fd(b.as_fd(), size).unwrap(),
        "{label}: content differs"
    );
    assert!(
        lstat(&dst).blocks() * 512 < 64 << 20,
        "{label}: the replica is not sparse"
    );
}

/// A size no filesystem holds is refused at FileBegin, and what follows for
/// that file costs nothing.
#[test]
fn size_the_filesystem_cannot_hold_is_refused_up_front() {
    let label = "impossible size";
    let t = Local::new("impossible-size");
    let mut slave = t.spawn();
    let size = i64::MAX as u64;
    slave.send(&Msg::FileBegin {
        id: 1,
        path: b"big".to_vec(),
        size,
        delta: false,
    });
    slave.send(&Msg::FileHole {
        id: 1,
        len: size - 1,
    });
    slave.send(&Msg::FileEnd {
        id: 1,
        hash: [0; 32],
        meta: meta(0o644),
    });
    let start = Instant::now();
    let got = until_ack(&mut slave, 2);
    assert!(start.elapsed() < Duration::from_secs(10), "{label}: slow");
    assert!(
        matches!(got.as_slice(), [Msg::OpError { message, .. }] if message.contains("filesystem can hold")),
        "{label}: {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    finish_clean(label, slave, &t.root);
    assert!(!t.root.join("big").exists());
}

/// ListNames naming one entry as often as a request may lists it once, in
/// bounded memory.
#[test]
fn list_names_repeating_one_name_lists_it_once() {
    let label = "one name repeated";
    let t = Local::new("repeated-names");
    write_file(&t.root.join("file"), &vec![7u8; 100_000]);
    xattr::set(t.root.join("file"), "user.big", &[1u8; 2000]).unwrap();
    let mut slave = t.spawn();
    slave.send(&Msg::ListNames {
        id: 1,
        path: Vec::new(),
        names: vec![b"file".to_vec(); georep::proto::MAX_LIST_NAMES],
        xattrs: true,
        checksum: true,
    });
    let got = until_ack(&mut slave, 2);
    let entries: usize = got
        .iter()
        .map(|m| match m {
            Msg::DirEntries { entries, .. } => entries.len(),
            m => panic!("{label}: unexpected {}", brief(m)),
        })
        .sum();
    assert_eq!(entries, 1, "{label}: the name must be listed once");
    assert_rss(label, &slave);
    finish_clean(label, slave, &t.root);
}

/// More names than a master ever asks for in one ListNames (300,000 here,
/// which decoded would cost far more than their frame) are refused.
#[test]
fn list_names_with_more_names_than_a_master_asks_is_refused() {
    let label = "300,000 names";
    let t = Local::new("too-many-names");
    let mut slave = Slave::spawn(&t.root);
    let list = Msg::ListNames {
        id: 1,
        path: Vec::new(),
        names: vec![b"file".to_vec(); 300_000],
        xattrs: true,
        checksum: true,
    };
    for m in [hello(false), list, Msg::Finish { marker_ns: 0 }] {
        slave.send(&m);
    }
    let run = slave.finish();
    let message = run.assert_refused(label);
    assert!(message.contains("list names"), "{label}: {message}");
}

/// Directory metadata held until Finish is capped in bytes: 40 frames of
/// 12 MiB of xattrs each would have held ~480 MiB.
#[test]
fn dir_meta_held_until_finish_is_capped_in_bytes() {
    let label = "held directory metadata";
    let t = Local::new("dir-meta-bytes");
    let before = canary(&t.canary);
    let mut slave = t.spawn();
    for i in 0..40u8 {
        slave.send(&Msg::DirMeta {
            path: Vec::new(),
            meta: Meta {
                xattrs: vec![(b"user.big".to_vec(), vec![i; 12 << 20])],
                ..meta(0o755)
            },
        });
    }
    until_ack(&mut slave, 1);
    assert_rss(label, &slave);
    slave.send(&Msg::Finish { marker_ns: 0 });
    let run = slave.finish();
    run.assert_no_panic(label);
    assert_eq!(run.code, Some(0), "{label}\n{run}");
    assert_canary_kept(label, &before, &t.canary);
}

/// Removing a tree deeper than the fd limit and than any stack: no
/// recursion, bounded descriptors.
#[test]
fn removing_a_very_deep_tree_neither_recurses_nor_runs_out_of_fds() {
    let label = "very deep tree";
    let t = Local::new("deep-tree");
    const DEPTH: usize = 30_000;
    {
        let mut fd = rustix::fs::open(
            &t.root,
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        for i in 0..DEPTH {
            rustix::fs::mkdirat(&fd, "d", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
            if i % 1000 == 0 {
                rustix::fs::openat(
                    &fd,
                    "f",
                    rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
                    rustix::fs::Mode::from_raw_mode(0o644),
                )
                .unwrap();
            }
            fd = rustix::fs::openat(
                &fd,
                "d",
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
        }
    }
    let _flatten = Flatten(t.root.clone());
    let before = canary(&t.canary);
    let mut slave = t.spawn();
    slave.send(&Msg::Remove {
        path: b"d".to_vec(),
    });
    let got = until_ack(&mut slave, 1);
    assert!(
        got.is_empty(),
        "{label}: {:?}",
        got.iter().map(brief).collect::<Vec<_>>()
    );
    assert_rss(label, &slave);
    finish_clean(label, slave, &t.root);
    assert!(!t.root.join("d").exists(), "{label}: tree left");
    assert_canary_kept(label, &before, &t.canary);
}

/// Should the slave leave the deep tree, flattens it before the test
/// directory is removed (a recursive removal would overflow the test's stack).
struct Flatten(std::path::PathBuf);

impl Drop for Flatten {
    fn drop(&mut self) {
        use rustix::fs::{openat, renameat, Mode, OFlags};
        let dir = OFlags::DIRECTORY | OFlags::RDONLY;
        let Ok(root) = rustix::fs::open(&self.0, dir, Mode::empty()) else {
            return;
        };
        let Ok(mut cur) = openat(&root, "d", dir, Mode::empty()) else {
            return;
        };
        for i in 0.. {
            let name = format!("up{i}");
            if renameat(&cur, "d", &root, name.as_str()).is_err() {
                return;
            }
            match openat(&root, name.as_str(), dir, Mode::empty()) {
                Ok(fd) => cur = fd,
                Err(_) => return,
            }
        }
    }
}

/// An error about a path of 12 MiB (escaped, 48 MiB) still fits a frame.
#[test]
fn error_frames_fit_a_frame_whatever_the_path() {
    let label = "error about a huge path";
    let t = Local::new("huge-path-error");
    let mut path = b"\x01/".repeat(6 << 20);
    path.extend_from_slice(b"..");
    let mut slave = Slave::spawn(&t.root);
    for m in [
        hello(false),
        Msg::Mkdir { path },
        Msg::Finish { marker_ns: 0 },
    ] {
        slave.send(&m);
    }
    let run = slave.finish();
    let message = run.assert_refused(label);
    assert!(message.len() <= 4096, "{label}: {} bytes", message.len());
}

/// Frames after Finish open a new round: EOF before its Finish is an
/// error exit, and a file left open has no temporary left behind.
#[test]
fn stream_end_after_frames_past_finish_is_an_error() {
    let label = "frames after Finish";
    for (case, msgs) in [
        (
            "mkdir",
            vec![Msg::Mkdir {
                path: b"late".to_vec(),
            }],
        ),
        (
            "open file",
            vec![
                Msg::FileBegin {
                    id: 1,
                    path: b"late".to_vec(),
                    size: 100,
                    delta: false,
                },
                Msg::FileData {
                    id: 1,
                    offset: 0,
                    data: vec![1; 50],
                    zstd: false,
                },
            ],
        ),
    ] {
        let t = Local::new("past-finish");
        let mut slave = Slave::spawn(&t.root);
        for m in [hello(false), Msg::Finish { marker_ns: 0 }]
            .into_iter()
            .chain(msgs)
        {
            slave.send(&m);
        }
        let run = slave.finish();
        run.assert_no_panic(label);
        assert!(
            run.code.is_some_and(|c| c != 0),
            "{label} ({case}): must exit non-zero\n{run}"
        );
        assert!(
            matches!(run.frames.last(), Some(Msg::Finished)),
            "{label} ({case}): the first round was finished\n{run}"
        );
        for e in fs::read_dir(&t.root).unwrap() {
            let n = e.unwrap().file_name();
            assert!(
                !n.as_encoded_bytes().starts_with(TMP_PREFIX),
                "{label} ({case}): temporary left"
            );
        }
    }
}
