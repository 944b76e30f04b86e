//! Journal ingest rate: how many changes per second the single writer
//! commits to a real SQLite file, and how fast the recorder keeps up with a
//! burst of real file creations (inotify). Run:
//!   cargo run --release --example journal_ingest -- [EVENTS] [FILES]
//! Used by docs/BENCHMARKS.md (issue target: >= 200,000 events/s).

use std::time::{Duration, Instant};

use georep::journal::{Committed, Journal, NewChange, Op, Writer};
use georep::watch::Recorder;

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let files: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");

    // 1. Raw writer throughput, paths like a real tree's.
    let db = dir.path().join("ingest.db");
    let w = Writer::start(
        Journal::open(&db).expect("journal"),
        4096,
        Duration::from_millis(5),
        std::sync::Arc::new(Committed::default()),
    );
    let tx = w.sender();
    let start = Instant::now();
    for i in 0..events {
        let path = format!("dir{:03}/sub{:02}/file{:07}.dat", i % 200, i % 17, i).into_bytes();
        tx.send(NewChange::now(Op::Data, path, None))
            .expect("writer alive");
    }
    drop(tx);
    let last = w.finish().expect("journal writes");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "writer: {events} changes in {secs:.3} s = {:.0} changes/s (last seq {last}, db {} MiB)",
        events as f64 / secs,
        std::fs::metadata(&db).map(|m| m.len() >> 20).unwrap_or(0)
    );

    // 2. Recorder end to end: a burst of file creations under inotify.
    let root = dir.path().join("tree");
    for d in 0..100 {
        std::fs::create_dir_all(root.join(format!("d{d:02}"))).expect("mkdir");
    }
    let db2 = dir.path().join("watch.db");
    let w = Writer::start(
        Journal::open(&db2).expect("journal"),
        4096,
        Duration::from_millis(5),
        std::sync::Arc::new(Committed::default()),
    );
    let rec = Recorder::start(&root, w.sender()).expect("watch");
    let start = Instant::now();
    for i in 0..files {
        std::fs::write(root.join(format!("d{:02}/f{i}", i % 100)), b"x").expect("write");
    }
    let written = start.elapsed().as_secs_f64();
    let j = Journal::open(&db2).expect("journal");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut creates = 0;
    while Instant::now() < deadline {
        creates = j
            .read_after(0, usize::MAX >> 1)
            .expect("read")
            .iter()
            .filter(|c| c.op == Op::Create || c.op == Op::Rescan)
            .count();
        if creates as u64 >= files {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(rec);
    w.finish().expect("journal writes");
    println!(
        "recorder: {files} files created in {written:.3} s; {creates} creations journaled after {secs:.3} s \
         (all events incl. writes: {} rows)",
        j.last_seq().unwrap_or(0)
    );
}
