//! Sliced full crawls: the daemon's paced reconciliation, driven through the
//! library so that the test decides where each slice ends and what changes
//! (with the live round the daemon would ship) between slices.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use georep::config::SessionConfig;
use georep::replicate::observe::{Reporter, Silent};
use georep::replicate::{Crawl, Reach, Replicator, Scope};

use crate::support::fixture::*;
use crate::support::fs::*;
use crate::support::tree::*;
use crate::support::{georep_test, TestDir};

fn connect(t: &TestDir) -> (Replicator, Arc<Reporter>) {
    let mut config = SessionConfig::new(t.src.clone(), t.dst.display().to_string());
    // The slave is the georep binary, not this test binary.
    config.remote_command = Some(env!("CARGO_BIN_EXE_georep").into());
    let opts = config.options().expect("valid options");
    let rep = Arc::new(Reporter::new(Box::new(Silent)));
    let r = Replicator::connect(&opts, rep.clone()).expect("slave connects");
    (r, rep)
}

/// Crawls in slices of one directory each, running `between(slice)` after
/// each slice; returns the number of slices.
fn crawl_one_dir_per_slice(
    r: &mut Replicator,
    mut between: impl FnMut(&mut Replicator, u64),
) -> u64 {
    let mut crawl = Crawl::new();
    while !crawl.done() {
        r.crawl_slice(&mut crawl, &|| true).expect("slice");
        between(r, crawl.slices);
        assert!(crawl.slices < 10_000, "the crawl does not end");
    }
    crawl.slices
}

fn dirs(list: &[&str], recursive: &[&str]) -> Vec<(Vec<u8>, Reach)> {
    let flat = list.iter().map(|d| (d.as_bytes().to_vec(), Reach::Dir));
    let deep = recursive
        .iter()
        .map(|d| (d.as_bytes().to_vec(), Reach::Tree));
    flat.chain(deep).collect()
}

fn live(r: &mut Replicator, renames: &[(&str, &str)], list: &[&str], recursive: &[&str]) {
    let renames = renames
        .iter()
        .map(|(a, b)| (a.as_bytes().to_vec(), b.as_bytes().to_vec()))
        .collect();
    let scope = Scope::Changes {
        renames,
        dirs: dirs(list, recursive),
    };
    r.round(&scope).expect("live round");
}

fn finish(t: &TestDir, r: Replicator, rep: &Reporter) {
    r.close(Ok(())).expect("clean close");
    assert_eq!(rep.counters.errors.load(Relaxed), 0, "no entry failed");
    assert_trees_equal(&t.src, &t.dst);
    assert_no_temporaries(&t.dst);
}

fn drift(d: &Path) {
    append(&d.join("files/f100000"), b"drift");
    write_file(&d.join("extra/file"), b"only on the slave");
    remove(&d.join("nested/a"));
    chmod(&d.join("modes/all"), 0o600);
    remove(&d.join("links/relative"));
    symlink("elsewhere", &d.join("links/relative"));
    set_xattr(&d.join("xattrs/file"), "user.drift", b"1");
}

georep_test!(
    sliced_crawl_repairs_drift_and_keeps_link_groups,
    |t: TestDir| {
        build_full_tree(&t.src);
        t.sync_ok(&[]);
        drift(&t.dst);
        // A new hard-link group whose names lie in the first and the last
        // directory the crawl visits: far apart, in different slices.
        write_random(&t.src.join("aaa_first/x"), 20_000, 7);
        mkdir(&t.src.join("zzz_last"));
        hard_link(&t.src.join("aaa_first/x"), &t.src.join("zzz_last/y"));
        hard_link(&t.src.join("aaa_first/x"), &t.src.join("zzz_last/z"));

        let (mut r, rep) = connect(&t);
        let slices = crawl_one_dir_per_slice(&mut r, |_, _| {});
        assert!(slices > 20, "one directory per slice, got {slices} slices");
        finish(&t, r, &rep);
    }
);

georep_test!(
    sliced_crawl_with_live_changes_between_slices,
    |t: TestDir| {
        build_full_tree(&t.src);
        t.sync_ok(&[]);
        drift(&t.dst);
        let src = t.src.clone();
        let (mut r, rep) = connect(&t);
        // After the first slice every top directory waits on the crawl's stack:
        // move, delete and change them under it.
        crawl_one_dir_per_slice(&mut r, |r, slice| match slice {
            1 => {
                rename(&src.join("nested"), &src.join("nested2"));
                live(r, &[("nested", "nested2")], &[""], &["nested2"]);
            }
            2 => {
                remove(&src.join("links"));
                live(r, &[], &[""], &[]);
            }
            3 => {
                // New metadata of a directory the crawl saw before the change.
                write_file(&src.join("hardlinks/new"), b"new");
                chmod(&src.join("hardlinks"), 0o700);
                live(r, &[], &["", "hardlinks"], &[]);
            }
            4 => {
                write_random(&src.join("files/f4095"), 4095, 99);
                live(r, &[], &["files"], &[]);
            }
            5 => {
                write_file(&src.join("zzz_new/sub/file"), b"new tree");
                live(r, &[], &[""], &["zzz_new"]);
            }
            _ => {}
        });
        finish(&t, r, &rep);
    }
);
