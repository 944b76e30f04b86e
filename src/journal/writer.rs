//! The journal's single writer thread.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Journal, NewChange, Result};

/// Longest wait between two attempts at a batch the journal refused.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The journal's single writer: a thread that appends what it is sent, one
/// transaction per batch (whatever arrived within `linger`, up to `max`).
pub struct Writer {
    tx: Option<SyncSender<NewChange>>,
    handle: Option<JoinHandle<Result<u64>>>,
    state: Arc<State>,
}

/// What the writer thread shares with its owner.
#[derive(Default)]
struct State {
    /// Set by [`Writer::finish`]: a refused batch is given up, not retried.
    stopping: Mutex<bool>,
    /// Wakes a writer waiting to retry when stopping.
    wake: Condvar,
    /// Why the journal refuses the batch being retried, if it does.
    trouble: Mutex<Option<String>>,
}

/// Told of each commit, so that a reader in the same process waits on the
/// writer instead of polling the database.
pub trait CommitListener: Send + Sync {
    fn committed(&self, seq: u64);
}

/// The simplest listener: the last sequence number committed, to wait on.
#[derive(Default)]
pub struct Committed {
    seq: Mutex<u64>,
    cv: Condvar,
}

impl CommitListener for Committed {
    fn committed(&self, seq: u64) {
        *self.seq.lock().unwrap() = seq;
        self.cv.notify_all();
    }
}

impl Committed {
    /// Waits until a change past `seq` is committed, at most `timeout`;
    /// returns whether one is.
    pub fn wait_past(&self, seq: u64, timeout: Duration) -> bool {
        let guard = self.seq.lock().unwrap();
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |s| *s <= seq)
            .unwrap();
        *guard > seq
    }
}

impl Writer {
    /// Starts the writer thread; `listener` hears of every commit.
    pub fn start(
        mut journal: Journal,
        max: usize,
        linger: Duration,
        listener: Arc<dyn CommitListener>,
    ) -> Writer {
        let (tx, rx) = mpsc::sync_channel::<NewChange>(max * 4);
        let state = Arc::new(State::default());
        let theirs = state.clone();
        let handle = std::thread::spawn(move || {
            write_loop(&mut journal, rx, max, linger, &*listener, &theirs)
        });
        Writer {
            tx: Some(tx),
            handle: Some(handle),
            state,
        }
    }

    /// Why the journal refuses changes right now (they are held and
    /// retried), for status.
    pub fn trouble(&self) -> Option<String> {
        self.state.trouble.lock().unwrap().clone()
    }

    /// A sender for producers; it blocks when the writer falls behind, so
    /// producers must turn a full queue into a rescan rather than wait.
    pub fn sender(&self) -> SyncSender<NewChange> {
        self.tx.clone().expect("writer running")
    }

    /// Stops after writing everything queued; returns the last sequence number.
    pub fn finish(mut self) -> Result<u64> {
        *self.state.stopping.lock().unwrap() = true;
        self.state.wake.notify_all();
        self.tx = None;
        self.handle
            .take()
            .expect("joined once")
            .join()
            .expect("journal writer panicked")
    }
}

fn write_loop(
    j: &mut Journal,
    rx: Receiver<NewChange>,
    max: usize,
    linger: Duration,
    listener: &dyn CommitListener,
    state: &State,
) -> Result<u64> {
    let mut last = j.last_seq()?;
    listener.committed(last);
    let mut batch = Vec::with_capacity(max);
    loop {
        match rx.recv() {
            Ok(c) => batch.push(c),
            Err(_) => return Ok(last),
        }
        let deadline = std::time::Instant::now() + linger;
        while batch.len() < max {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(c) => batch.push(c),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        last = append_until_written(j, &batch, state)?;
        listener.committed(last);
        batch.clear();
    }
}

/// Appends `batch`, retrying while the journal refuses it (its disk full,
/// its lock held by another process). The batch waits in memory and the
/// recorder's queue fills up, which turns into a rescan owed: changes are
/// late, never dropped. Given up only when stopping (every start crawls).
fn append_until_written(j: &mut Journal, batch: &[NewChange], state: &State) -> Result<u64> {
    let mut wait = Duration::from_millis(50);
    loop {
        match j.append(batch) {
            Ok(last) => {
                if state.trouble.lock().unwrap().take().is_some() {
                    tracing::info!("the journal takes changes again");
                }
                return Ok(last);
            }
            Err(e) => {
                let mut trouble = state.trouble.lock().unwrap();
                if trouble.is_none() {
                    tracing::error!("recording changes: {e}; holding them and retrying");
                }
                *trouble = Some(format!("recording changes: {e}"));
                drop(trouble);
                let stopping = state.stopping.lock().unwrap();
                let (stopping, _) = state
                    .wake
                    .wait_timeout_while(stopping, wait, |s| !*s)
                    .unwrap();
                if *stopping {
                    return Err(e);
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Op;

    #[test]
    fn writer_batches_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let committed = Arc::new(Committed::default());
        let w = Writer::start(
            Journal::open(&path).unwrap(),
            1000,
            Duration::from_millis(5),
            committed.clone(),
        );
        let tx = w.sender();
        for i in 0..5000u32 {
            tx.send(NewChange::now(Op::Create, i.to_le_bytes().to_vec(), None))
                .unwrap();
        }
        drop(tx);
        assert!(committed.wait_past(4999, Duration::from_secs(10)));
        assert!(!committed.wait_past(5000, Duration::from_millis(10)));
        assert_eq!(w.finish().unwrap(), 5000);
        let j = Journal::open(&path).unwrap();
        let all = j.read_after(0, 10_000).unwrap();
        assert_eq!(all.len(), 5000);
        assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(all[4999].path, 4999u32.to_le_bytes().to_vec());
    }
}
