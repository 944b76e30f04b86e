//! Checkpoints that mean what they say: `checkpoint now` covers a write
//! made a moment before it, and an entry that failed before a checkpoint
//! holds it back even when the batch that failed it reaches past it.

use std::time::Duration;

use crate::support::fs::*;
use crate::support::session::*;
use crate::support::{georep_test, TestDir};

georep_test!(
    checkpoint_now_covers_the_write_just_before_it,
    |t: TestDir| {
        let s = started(&t, "barrier", &[]);
        // The write's event may still be in the kernel's queue when the
        // checkpoint is taken: completed must still mean "on the slave".
        for i in 0..15 {
            let name = format!("f{i}");
            write_file(&t.src.join(&name), name.as_bytes());
            let run = s.run(&["checkpoint", &s.name, "now", "--wait", "--timeout", "20"]);
            s.check(&run, 0);
            let got = std::fs::read(t.dst.join(&name));
            assert_eq!(
                got.ok().as_deref(),
                Some(name.as_bytes()),
                "checkpoint {i} completed without the write made before it"
            );
        }
        s.stop();
        assert_converged(&s);
    }
);

georep_test!(
    a_failure_before_the_checkpoint_holds_it_even_in_a_batch_past_it,
    |t: TestDir| {
        mkdir(&t.src.join("locked"));
        let s = started(&t, "cpfail", &[]);
        let Some(lock) = Immutable::set(&t.dst.join("locked")) else {
            eprintln!("skipped: chattr +i is not available on this filesystem");
            return;
        };
        s.run(&["pause", &s.name]).assert_code(0);
        s.wait_status("Paused", CONVERGE, |st| st["state"] == "Paused");
        // Before the checkpoint: refused by the slave. After it: fine. On
        // resume both go in one batch, which reaches past the checkpoint.
        write_file(&t.src.join("locked/refused"), b"before the checkpoint");
        s.run(&["checkpoint", &s.name, "now"]).assert_code(0);
        write_file(&t.src.join("after"), b"after the checkpoint");
        s.wait_status("both journaled", CONVERGE, |st| {
            st["pending"]["entry"].as_u64() >= Some(2)
        });
        s.run(&["resume", &s.name]).assert_code(0);
        s.wait_status("the batch acked, the failure recorded", CONVERGE, |st| {
            pending_is_zero(st) && st["failures"].as_u64() >= Some(1)
        });
        assert!(t.dst.join("after").exists());
        std::thread::sleep(Duration::from_secs(1));
        let st = s.status();
        assert_eq!(
            st["checkpoint_completed"], false,
            "completed with an entry before it missing on the slave: {st}"
        );
        drop(lock);
        s.run(&["rescan", &s.name, "locked"]).assert_code(0);
        let st = s.wait_status("the checkpoint completes", CONVERGE, |st| {
            st["checkpoint_completed"] == true
        });
        assert_eq!(
            read_file(&t.dst.join("locked/refused")),
            b"before the checkpoint",
            "{st}"
        );
        s.stop();
        assert_converged(&s);
    }
);
