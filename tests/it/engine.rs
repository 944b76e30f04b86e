//! The replication engine driven through the library with the slave served
//! in-process (`transport::memory`): the same protocol and agent as a child
//! process, without one, so rounds, plans and failures can be staged
//! precisely.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use georep::config::SessionConfig;
use georep::error::Error;
use georep::journal::{Change, Op};
use georep::plan::plan;
use georep::replicate::observe::{Reporter, Silent};
use georep::replicate::{Replicator, Scope};
use georep::transport::memory::InProcess;
use georep::transport::Transport;

use crate::support::fixture::*;
use crate::support::fs::*;
use crate::support::tree::*;
use crate::support::{georep_test, TestDir};

fn connect(t: &TestDir) -> (Replicator, Arc<Reporter>) {
    let config = SessionConfig::new(t.src.clone(), t.dst.display().to_string());
    let opts = config.options().expect("valid options");
    let rep = Arc::new(Reporter::new(Box::new(Silent)));
    let slave = InProcess {
        root: t.dst.clone(),
    };
    let r = Replicator::connect_with(&opts, &slave, rep.clone()).expect("slave connects");
    (r, rep)
}

/// A journal batch as the recorder would write it.
fn batch(changes: &[(Op, &str, Option<&str>)]) -> Vec<Change> {
    changes
        .iter()
        .enumerate()
        .map(|(i, (op, p, p2))| Change {
            seq: i as u64 + 1,
            time_ns: i as i64,
            op: *op,
            path: p.as_bytes().to_vec(),
            path2: p2.map(|p| p.as_bytes().to_vec()),
        })
        .collect()
}

fn planned_round(r: &mut Replicator, changes: &[(Op, &str, Option<&str>)]) {
    let scope = plan(&batch(changes)).expect("a targeted scope");
    r.round(&scope).expect("round");
}

fn finish(t: &TestDir, r: Replicator, rep: &Reporter) {
    r.close(Ok(()))
        .expect("clean close: the slave thread exits 0");
    assert_eq!(rep.counters.errors.load(Relaxed), 0, "no entry failed");
    assert_trees_equal(&t.src, &t.dst);
    assert_no_temporaries(&t.dst);
}

georep_test!(in_process_full_round_replicates_everything, |t: TestDir| {
    build_full_tree(&t.src);
    let (mut r, rep) = connect(&t);
    r.round(&Scope::Full).expect("full round");
    assert!(rep.counters.files_transferred.load(Relaxed) > 0);
    finish(&t, r, &rep);
});

georep_test!(
    planned_rounds_on_one_connection_follow_a_journal,
    |t: TestDir| {
        build_full_tree(&t.src);
        let (mut r, rep) = connect(&t);
        r.round(&Scope::Full).expect("full round");
        let s = &t.src;

        // A directory renamed, with a change inside it recorded under its
        // old name (inotify's view until the watches move).
        rename(&s.join("nested"), &s.join("moved"));
        write_file(&s.join("moved/a/b/new"), b"inside");
        let before = lstat(&t.dst.join("nested")).ino();
        planned_round(
            &mut r,
            &[
                (Op::MovedFrom, "nested", None),
                (Op::MovedTo, "moved", None),
                (Op::Rename, "nested", Some("moved")),
                (Op::Create, "nested/a/b/new", None),
            ],
        );
        // Moved as a rename on the slave: the same inode, not a copy.
        assert_eq!(lstat(&t.dst.join("moved")).ino(), before);

        // Content, metadata and removal, each named by the journal only.
        write_random(&s.join("files/f4095"), 50_000, 3);
        chmod(&s.join("modes/all"), 0o640);
        remove(&s.join("links"));
        planned_round(
            &mut r,
            &[
                (Op::Data, "files/f4095", None),
                (Op::Meta, "modes/all", None),
                (Op::Remove, "links", None),
            ],
        );

        // A new subtree whose contents the journal never named.
        write_file(&s.join("fresh/deep/er/file"), b"unseen");
        planned_round(&mut r, &[(Op::Mkdir, "fresh", None)]);
        finish(&t, r, &rep);
    }
);

georep_test!(
    a_targeted_round_touches_only_what_the_batch_named,
    |t: TestDir| {
        build_full_tree(&t.src);
        let (mut r, rep) = connect(&t);
        r.round(&Scope::Full).expect("full round");
        // Drift on the slave that no batch names stays until a crawl.
        append(&t.dst.join("files/f100000"), b"drift");
        write_file(&t.src.join("files/named"), b"named");
        planned_round(&mut r, &[(Op::Create, "files/named", None)]);
        assert_eq!(read_file(&t.dst.join("files/named")), b"named");
        assert!(
            !tree_diff(&t.src, &t.dst).is_empty(),
            "the drift is not seen"
        );
        r.round(&Scope::Full).expect("crawl");
        finish(&t, r, &rep);
    }
);

georep_test!(
    a_source_that_is_not_a_directory_is_a_permanent_source_error,
    |t: TestDir| {
        let file = t.root.join("plain");
        write_file(&file, b"x");
        let config = SessionConfig::new(file, t.dst.display().to_string());
        let opts = config.options().expect("valid options");
        let rep = Arc::new(Reporter::new(Box::new(Silent)));
        let slave = InProcess {
            root: t.dst.clone(),
        };
        match Replicator::connect_with(&opts, &slave, rep) {
            Err(e @ Error::Source { .. }) => {
                assert!(!e.is_temporary(), "retrying cannot mend {e}");
                assert_eq!(e.exit() as u8, 3);
            }
            Err(e) => panic!("expected a source error, got {e}"),
            Ok(_) => panic!("a file is not a source directory"),
        }
    }
);

georep_test!(
    an_in_process_slave_that_refuses_the_root_reports_why,
    |t: TestDir| {
        // The root's parent is a file: the slave cannot create the root.
        let blocker = t.root.join("blocker");
        write_file(&blocker, b"x");
        let root = blocker.join("replica");
        let slave = InProcess { root: root.clone() };
        let config = SessionConfig::new(t.src.clone(), root.display().to_string());
        let opts = config.options().expect("valid options");
        let rep = Arc::new(Reporter::new(Box::new(Silent)));
        let err = match Replicator::connect_with(&opts, &slave, rep) {
            Ok(r) => {
                let mut r = r;
                let outcome = r.round(&Scope::Full);
                r.close(outcome)
                    .expect_err("the slave cannot create its root")
            }
            Err(e) => e,
        };
        assert!(
            matches!(err, Error::Remote { .. }),
            "the slave's own words reach the master: {err}"
        );
        assert!(!Path::new(&root).exists());
    }
);

// The in-process transport is one more `Transport`: it can also be used
// through the trait object, as `for_target` hands out.
georep_test!(the_in_process_transport_is_a_transport, |t: TestDir| {
    let slave: Box<dyn Transport> = Box::new(InProcess {
        root: t.dst.clone(),
    });
    write_file(&t.src.join("one"), b"1");
    let config = SessionConfig::new(t.src.clone(), t.dst.display().to_string());
    let opts = config.options().expect("valid options");
    let rep = Arc::new(Reporter::new(Box::new(Silent)));
    let mut r = Replicator::connect_with(&opts, &*slave, rep.clone()).expect("connects");
    r.round(&Scope::Full).expect("round");
    finish(&t, r, &rep);
});
