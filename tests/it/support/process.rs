//! Running georep: every run gets its own process group, so that a timeout or a fault
//! test can kill the master and its `georep slave` child together.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

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
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| proc_stat(pid).is_some_and(|st| st.pgrp == pgid && st.is_running()))
}

// ---- Processes through /proc. Nothing below panics: it runs in drops too.

/// The fields of /proc/PID/stat the tests look at.
#[derive(Clone, Copy, Debug)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
}

impl ProcStat {
    /// Neither a zombie nor dead.
    fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// None when the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    read_stat(&format!("/proc/{pid}/stat"))
}

/// One `stat` file of /proc (a process's or a thread's); None when gone.
fn read_stat(path: &str) -> Option<ProcStat> {
    let text = fs::read_to_string(path).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp })
}

/// Present and neither a zombie nor dead.
pub fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|st| st.is_running())
}

/// Every process below `root`.
pub fn descendants(root: u32) -> BTreeSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        {
            if let Some(st) = proc_stat(pid) {
                children.entry(st.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if out.insert(c) {
                todo.push(c);
            }
        }
    }
    out
}

pub fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        // ESRCH: already gone.
        let _ = kill_process(pid, sig);
    }
}

pub fn signal_group(pgid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pgid as i32) {
        let _ = kill_process_group(pid, sig);
    }
}

/// SIGSTOPs `pid` and returns once every one of its threads is stopped: a
/// test that relies on the process doing nothing must not race the signal.
pub fn freeze(pid: u32) {
    signal(pid, Signal::STOP);
    wait_stopped(pid);
}

/// Waits (bounded) until every thread of `pid` is stopped or gone: SIGSTOP
/// is asynchronous, and each thread stops on its own next trip to the kernel.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stopped = |state: char| matches!(state, 'T' | 't' | 'Z' | 'X' | 'x');
    while let Some(st) = proc_stat(pid) {
        let threads_stopped = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    let tid = t.file_name().to_string_lossy().into_owned();
                    read_stat(&format!("/proc/{pid}/task/{tid}/stat"))
                        .is_none_or(|st| stopped(st.state))
                })
            })
            .unwrap_or(true);
        if (stopped(st.state) && threads_stopped) || Instant::now() > deadline {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILLs `pid` and every process below it, and its whole process group when it
/// leads one; waits until all are dead. The tree is frozen first (SIGSTOP, repeated
/// until no new process shows up), so that nothing forks or is reparented out of
/// reach while we look. Returns the pids killed.
pub fn kill_tree(pid: u32) -> Result<BTreeSet<u32>, String> {
    let leads_group = proc_stat(pid).is_some_and(|st| st.pgrp == pid);
    let mut frozen = BTreeSet::from([pid]);
    freeze(pid);
    loop {
        let found: Vec<u32> = descendants(pid)
            .into_iter()
            .filter(|p| !frozen.contains(p))
            .collect();
        if found.is_empty() {
            break;
        }
        for &p in &found {
            signal(p, Signal::STOP);
        }
        for &p in &found {
            wait_stopped(p);
            frozen.insert(p);
        }
    }
    if leads_group {
        signal_group(pid, Signal::KILL);
    }
    for &p in &frozen {
        signal(p, Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(p) = frozen.iter().find(|&&p| is_alive(p)) {
        if Instant::now() > deadline {
            return Err(format!("process {p} survives SIGKILL"));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(frozen)
}
