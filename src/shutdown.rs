//! The one thing the session worker waits on: a stop, a journal commit, an
//! operator's command, or a deadline, whichever comes first. Signal
//! handlers, the journal writer and the control socket wake it; nothing
//! naps in a loop.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::journal::CommitListener;

/// Why a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    Stop,
    Committed,
    /// A command arrived (see `control::Controls`).
    Poked,
    Deadline,
}

#[derive(Default)]
struct Seen {
    stop: bool,
    committed: u64,
    poked: bool,
}

#[derive(Default)]
pub struct Shutdown {
    seen: Mutex<Seen>,
    cv: Condvar,
}

impl Shutdown {
    pub fn new() -> Arc<Shutdown> {
        Arc::new(Shutdown::default())
    }

    /// Turns SIGTERM and SIGINT into a stop (from a thread of its own, so
    /// the handler itself only writes to a pipe).
    pub fn on_signals(self: &Arc<Self>) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let me = self.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                me.stop();
            }
        });
        Ok(())
    }

    pub fn stop(&self) {
        self.seen.lock().unwrap().stop = true;
        self.cv.notify_all();
    }

    pub fn stopping(&self) -> bool {
        self.seen.lock().unwrap().stop
    }

    /// Wakes the waiter to look at the commands (one waiter: the worker).
    pub fn poke(&self) {
        self.seen.lock().unwrap().poked = true;
        self.cv.notify_all();
    }

    /// Waits until a stop, a command, a commit past `past` (if given), or
    /// `deadline`.
    pub fn wait(&self, past: Option<u64>, deadline: Instant) -> Wake {
        let mut seen = self.seen.lock().unwrap();
        loop {
            if seen.stop {
                return Wake::Stop;
            }
            if std::mem::take(&mut seen.poked) {
                return Wake::Poked;
            }
            if past.is_some_and(|p| seen.committed > p) {
                return Wake::Committed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Wake::Deadline;
            }
            seen = self.cv.wait_timeout(seen, deadline - now).unwrap().0;
        }
    }

    /// Waits until a journal commit past `past`, a stop or `deadline`,
    /// leaving pokes to the worker; returns whether such a commit came.
    pub fn wait_committed(&self, past: u64, deadline: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap();
        loop {
            if seen.committed > past {
                return true;
            }
            let now = Instant::now();
            if seen.stop || now >= deadline {
                return false;
            }
            seen = self.cv.wait_timeout(seen, deadline - now).unwrap().0;
        }
    }

    /// Sleeps for `d` unless stopped or poked first; returns whether it was
    /// stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        self.wait(None, Instant::now() + d) == Wake::Stop
    }
}

impl CommitListener for Shutdown {
    fn committed(&self, seq: u64) {
        self.seen.lock().unwrap().committed = seq;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_on_commit_stop_and_deadline() {
        let s = Shutdown::new();
        let t = Instant::now() + Duration::from_millis(20);
        assert_eq!(s.wait(Some(0), t), Wake::Deadline);
        let s2 = s.clone();
        let h = std::thread::spawn(move || s2.committed(5));
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(s.wait(Some(4), far), Wake::Committed);
        h.join().unwrap();
        assert_eq!(s.wait(Some(5), Instant::now()), Wake::Deadline);
        s.poke();
        assert_eq!(s.wait(Some(5), far), Wake::Poked);
        assert_eq!(s.wait(Some(5), Instant::now()), Wake::Deadline);
        s.stop();
        assert_eq!(s.wait(Some(0), far), Wake::Stop);
        assert!(s.sleep(Duration::from_secs(30)));
    }
}
