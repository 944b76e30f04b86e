//! The session loop: gather a journal batch, plan it, run it as a round,
//! ack it; between batches, paced slices of full crawls.
//!
//! The recorder writes every change into the journal from the moment the
//! worker exists; the first round is a full crawl (first start) or a
//! catch-up crawl (restart). The marker advances only after a round's durable
//! Finished, so a crash at any point replays the unacked tail, and every
//! round is idempotent. Later full crawls (periodic reconciliation, lost
//! events) are taken in slices between live batches, so changes keep flowing
//! while a large tree is compared. What to do when a round fails is the
//! monitor's business.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SessionConfig;
use crate::error::Error;
use crate::journal::{self, Change, Journal, Marker, Writer};
use crate::plan::{plan, unsettled};
use crate::replicate::observe::{Observer, Reporter};
use crate::replicate::{Crawl, Replicator, RoundOutcome, Scope};
use crate::shutdown::{Shutdown, Wake};
use crate::status::{Board, CrawlStatus, State};
use crate::watch::Recorder;

/// A line in the daemon's log, with a Unix timestamp.
pub fn log(msg: &str) {
    let now = journal::now_ns() as f64 / 1e9;
    let _ = writeln!(std::io::stderr().lock(), "[{now:.3}] {msg}");
}

/// The engine's messages, into the daemon's log.
pub struct LogObserver;

impl Observer for LogObserver {
    fn error(&self, msg: &str) {
        log(msg);
    }
    fn warn(&self, msg: &str) {
        log(&format!("warning: {msg}"));
    }
}

pub struct Worker {
    pub config: SessionConfig,
    pub board: Board,
    shutdown: Arc<Shutdown>,
    journal: Journal,
    writer: Option<Writer>,
    recorder: Option<Recorder>,
    last_full: Instant,
    /// A paced full crawl in progress (periodic reconciliation, or one a
    /// live batch asked for), taken in slices between live batches.
    crawl: Option<Crawl>,
    /// Another paced crawl is owed once the current one (if any) ends.
    crawl_owed: bool,
    /// A whole crawl is owed: at start, and after a batch kept failing.
    pub full_owed: bool,
    /// Bytes sent over connections already closed.
    bytes_before: u64,
}

impl Worker {
    pub fn new(
        config: SessionConfig,
        board: Board,
        shutdown: Arc<Shutdown>,
        journal: Journal,
        writer: Writer,
        recorder: Option<Recorder>,
    ) -> Worker {
        Worker {
            config,
            board,
            shutdown,
            journal,
            writer: Some(writer),
            recorder,
            last_full: Instant::now(),
            crawl: None,
            crawl_owed: false,
            full_owed: true,
            bytes_before: 0,
        }
    }

    pub fn publish(&mut self) {
        if let Some(r) = &self.recorder {
            self.board.status.watch_limit |= r.watch_limit_hit();
        }
        if let Err(e) = self.board.publish() {
            log(&format!("writing status: {e}"));
        }
    }

    /// A reporter for one connection's rounds.
    pub fn reporter() -> Arc<Reporter> {
        Arc::new(Reporter::new(Box::new(LogObserver)))
    }

    /// Ships changes over one connection until stopped or it fails.
    pub fn serve(&mut self, r: &mut Replicator, rep: &Arc<Reporter>) -> Result<(), Error> {
        let result = self.serve_rounds(r, rep);
        self.bytes_before += r.traffic().0;
        result
    }

    fn serve_rounds(&mut self, r: &mut Replicator, rep: &Arc<Reporter>) -> Result<(), Error> {
        loop {
            if self.shutdown.stopping() {
                return Ok(());
            }
            let mut interval = self.config.full_crawl_interval;
            if self.recorder.is_none() || self.board.status.watch_limit {
                // Not (fully) watched: crawls are all that sees changes.
                interval = if interval == 0 { 60 } else { interval.min(60) };
            }
            if interval > 0 && self.last_full.elapsed() >= Duration::from_secs(interval) {
                self.crawl_owed = true;
            }
            if self.full_owed {
                self.full_round(r, rep)?;
                continue;
            }
            if self.crawl.is_none() && std::mem::take(&mut self.crawl_owed) {
                log("reconciling: crawling the whole tree between live changes");
                self.crawl = Some(Crawl::new());
                self.last_full = Instant::now();
            }
            if self.crawl.is_some() && !self.live_due() {
                self.crawl_slice(r, rep)?;
                continue;
            }
            let marker = self.journal.marker()?;
            let batch = self.gather(marker.seq)?;
            let Some(last) = batch.last() else {
                // Woken by the writer's next commit; the deadline keeps the
                // loop's other duties (crawl schedule) going.
                let deadline = Instant::now() + Duration::from_millis(500);
                self.shutdown.wait(Some(marker.seq), deadline);
                continue;
            };
            let ack = Marker {
                seq: last.seq,
                time_ns: last.time_ns,
            };
            match plan(&batch) {
                Some(scope) => {
                    let outcome = counted(rep, || r.round(&scope))?;
                    self.crawl_owed |= outcome.needs_full;
                }
                // Events were lost (a queue overflow): only a crawl finds
                // what they were. Later changes keep flowing meanwhile. The
                // ack below may pass the loss before that crawl ends: safe,
                // since a crawl is owed until it does, and every start crawls.
                None => {
                    log("events were lost (inotify queue overflow): reconciling with a crawl");
                    self.crawl_owed = true;
                }
            }
            self.journal.ack(ack)?;
            let retention = Duration::from_secs(self.config.journal_retention);
            let _ = self.journal.trim(retention);
            self.synced(rep, r);
        }
    }

    /// The start-up (or recovery) crawl, whole: everything recorded before
    /// it starts is covered by it, so it acks the journal up to there.
    fn full_round(&mut self, r: &mut Replicator, rep: &Reporter) -> Result<(), Error> {
        let upto = self.journal.last_seq()?;
        if self.board.status.state != State::Initializing {
            self.board.status.crawl = Some(CrawlStatus::Full);
        }
        self.publish();
        log("crawling the whole tree");
        let started = Instant::now();
        counted(rep, || r.round(&Scope::Full))?;
        log(&format!(
            "crawled in {:.1} s: {} files sent so far",
            started.elapsed().as_secs_f64(),
            rep.counters.files_transferred.load(Relaxed)
        ));
        self.journal.ack(Marker {
            seq: upto,
            time_ns: journal::now_ns(),
        })?;
        self.crawl = None;
        self.crawl_owed = false;
        self.full_owed = false;
        self.last_full = Instant::now();
        self.synced(rep, r);
        Ok(())
    }

    /// Whether a live change has waited a batch delay (a crawl yields to it).
    fn live_due(&self) -> bool {
        let oldest = self.journal.oldest_pending_ns().ok().flatten();
        let delay = self.config.batch_delay().as_nanos() as i64;
        oldest.is_some_and(|t| journal::now_ns() - t >= delay)
    }

    /// One slice of the paced crawl: it walks until live changes are due
    /// (asked every 50 ms, a journal query each time).
    fn crawl_slice(&mut self, r: &mut Replicator, rep: &Reporter) -> Result<(), Error> {
        let mut crawl = self.crawl.take().expect("a crawl in progress");
        let asked = std::cell::Cell::new(Instant::now());
        let yield_now = || {
            asked.get().elapsed() >= Duration::from_millis(50) && {
                asked.set(Instant::now());
                self.live_due()
            }
        };
        let outcome = match counted(rep, || r.crawl_slice(&mut crawl, &yield_now)) {
            Ok(o) => o,
            Err(e) => {
                // What the failed slice walked is lost with it: start over.
                self.crawl_owed = true;
                return Err(e);
            }
        };
        self.crawl_owed |= outcome.needs_full;
        if crawl.done() {
            log(&format!(
                "reconciled in {:.1} s, {} slice(s)",
                self.last_full.elapsed().as_secs_f64(),
                crawl.slices
            ));
        } else {
            self.crawl = Some(crawl);
        }
        self.synced(rep, r);
        Ok(())
    }

    /// The next batch of changes after `after` (empty if there is none): a burst
    /// gathers until it goes quiet or its first change has waited
    /// batch_delay_ms, and a batch is not cut in the middle of a rename.
    fn gather(&self, after: u64) -> Result<Vec<Change>, Error> {
        let max = self.config.batch_max_changes as usize;
        let read = || self.journal.read_after(after, max);
        let mut batch = read()?;
        if batch.is_empty() {
            return Ok(batch);
        }
        let (delay, quiet) = (self.config.batch_delay(), self.config.batch_quiet());
        let since =
            |c: &Change| Duration::from_nanos((journal::now_ns() - c.time_ns).max(0) as u64);
        while batch.len() < max {
            let (age, idle) = (since(&batch[0]), since(batch.last().expect("non-empty")));
            if age >= delay || idle >= quiet {
                break;
            }
            // A new commit may end the quiet early; read again either way.
            let last = batch.last().expect("non-empty").seq;
            let until = Instant::now() + (delay - age).min(quiet - idle);
            if self.shutdown.wait(Some(last), until) == Wake::Stop {
                break;
            }
            batch = read()?;
        }
        // A rename's halves (From, To, Both) may straddle a journal
        // commit, and inotify reports changes inside a just-renamed
        // directory under its old name for a moment: do not cut a batch
        // right after an incomplete rename or a directory's rename.
        let source = &self.config.source;
        let is_dir = |p: &[u8]| {
            std::fs::symlink_metadata(source.join(std::ffi::OsStr::from_bytes(p)))
                .is_ok_and(|m| m.is_dir())
        };
        for _ in 0..5 {
            if batch.len() >= max || !unsettled(&batch, journal::now_ns(), 50_000_000, is_dir) {
                break;
            }
            if self.shutdown.sleep(Duration::from_millis(20)) {
                break;
            }
            batch = read()?;
        }
        Ok(batch)
    }

    fn synced(&mut self, rep: &Reporter, r: &Replicator) {
        let st = &mut self.board.status;
        st.state = State::Active;
        // A crawl running or owed (lost events, a hard-link group a targeted
        // round could not see whole) is work still owed: never "Changelog".
        let crawling = self.crawl.is_some() || self.crawl_owed || self.full_owed;
        st.crawl = Some(if crawling {
            CrawlStatus::Full
        } else {
            CrawlStatus::Changelog
        });
        st.last_error = None;
        st.files_synced = rep.counters.files_transferred.load(Relaxed);
        st.bytes_sent = self.bytes_before + r.traffic().0;
        self.publish();
    }

    /// Stops recording and flushes the journal writer.
    pub fn finish(&mut self) {
        drop(self.recorder.take());
        if let Some(w) = self.writer.take() {
            let _ = w.finish();
        }
    }
}

/// Runs a round and fails it if any entry failed: such a round is retried,
/// never acked, so the marker never skips a change.
fn counted(
    rep: &Reporter,
    round: impl FnOnce() -> Result<RoundOutcome, Error>,
) -> Result<RoundOutcome, Error> {
    let before = rep.counters.errors.load(Relaxed);
    let outcome = round()?;
    match rep.counters.errors.load(Relaxed) - before {
        0 => Ok(outcome),
        failed => Err(Error::Partial { failed }),
    }
}
