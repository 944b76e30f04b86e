//! Running georep: every run gets its own process group, so that a timeout or a fault
//! test can kill the master and its `georep slave` child together.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// Longest a single georep run may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The georep binary under test, in a new process group, with no stdin.
pub fn georep() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_georep"));
    cmd.process_group(0).stdin(Stdio::null());
    cmd
}

/// Spawns `cmd` with stdout and stderr captured; its pid is also its process group.
pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Runs `cmd` to completion; after [`RUN_TIMEOUT`] kills its process group and panics.
pub fn output(cmd: &mut Command) -> Output {
    let child = spawn(cmd);
    let pgid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.expect("wait for georep"),
        Err(_) => {
            kill_group(pgid);
            let out = rx.recv().expect("waiter thread").expect("wait for georep");
            panic!(
                "{cmd:?} timed out after {RUN_TIMEOUT:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// SIGKILLs every process of group `pgid`, then waits until none is left running:
/// SIGKILL is asynchronous, and a dying slave must not race the next run.
pub fn kill_group(pgid: u32) {
    let pid = Pid::from_raw(pgid as i32).expect("non-zero pgid");
    // ESRCH: the group has already exited.
    let _ = kill_process_group(pid, Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_has_live_process(pgid) {
        assert!(
            Instant::now() < deadline,
            "process group {pgid} survives SIGKILL"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a process of group `pgid` is still running (zombies are dead: they hold no
/// file open and write nothing).
fn group_has_live_process(pgid: u32) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let Ok(stat) = fs::read_to_string(p.path().join("stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[2] == pgid.to_string() && !matches!(fields[0], "Z" | "X")
    })
}
