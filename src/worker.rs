//! The session loop: gather a journal batch, plan it, run it as a round,
//! ack it; between batches, paced slices of full crawls.
//!
//! The recorder writes every change into the journal from the moment the
//! worker exists; the first round is a full crawl (first start) or a
//! catch-up crawl (restart). The marker advances only after a round's durable
//! Finished, so a crash at any point replays the unacked tail, and every
//! round is idempotent. Later full crawls (periodic reconciliation, lost
//! events) are taken in slices between live batches, so changes keep flowing
//! while a large tree is compared.
//!
//! An entry that fails does not hold back the changes behind it: it is
//! recorded in the journal's failure table, the marker passes it, and it is
//! retried on its own (then parked, retried by crawls and rescans) until it
//! replicates. What to do when a whole round fails is the monitor's
//! business.

use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SessionConfig;
use crate::confine::show;
use crate::control::Controls;
use crate::error::Error;
use crate::hooks::Event;
use crate::journal::{self, Change, Journal, Marker, Writer};
use crate::lease::{Epoch, Keeper};
use crate::plan::{self, plan, unsettled};
use crate::replicate::observe::{Observer, Reporter};
use crate::replicate::{Crawl, Replicator, RoundOutcome, Scope};
use crate::shutdown::{Shutdown, Wake};
use crate::status::{Board, CrawlStatus, State};
use crate::watch::Recorder;
use tracing::{debug, info, warn};

/// The engine's messages, into the daemon's log.
pub struct LogObserver;

impl Observer for LogObserver {
    fn error(&self, msg: &str) {
        tracing::error!(target: "georep::engine", "{msg}");
    }
    fn warn(&self, msg: &str) {
        tracing::warn!(target: "georep::engine", "{msg}");
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
    /// Some changes are known only to a crawl (lost events, a hard-link
    /// group a targeted round could not see whole): owed, or being crawled.
    /// A checkpoint cannot complete meanwhile; a periodic crawl holds none.
    needed_owed: bool,
    needed_running: bool,
    /// When the crawl in progress started (ns): failures older than that
    /// and not seen again by it are gone.
    crawl_started_ns: i64,
    /// The start-up crawl is owed (every start: changes made while no
    /// daemon ran are in no journal).
    pub full_owed: bool,
    /// Bytes sent and files transferred over connections already closed
    /// (and by earlier runs): the counters never go down.
    bytes_before: u64,
    files_before: u64,
    /// The live batch being shipped, until it is acked.
    in_flight: Option<Marker>,
    /// Subtrees to rescan once the crawl in progress ends, and those the
    /// crawl in progress rescans.
    rescans: Vec<Vec<u8>>,
    rescanning: Vec<Vec<u8>>,
    controls: Arc<Controls>,
    /// Journal changes shipped since the daemon started, for the rate.
    shipped: u64,
    /// Rounds that went through (the monitor's backoff starts over after one).
    pub rounds_ok: u64,
    last_trim: Instant,
    rate: Rate,
    /// Entries in the replica, as the last connection counted them.
    replica_estimate: Option<u64>,
    /// A multi-node session's lease; None: this node alone ships.
    pub keeper: Option<Arc<Keeper>>,
    /// The lease epoch this connection writes under (0 without a lease).
    pub epoch: Epoch,
    /// The epoch the journal was last lined up with the slave's marker for.
    served_epoch: Option<Epoch>,
}

/// How far before the slave's marker a node taking over replays its own
/// journal: the nodes' clocks may disagree by this much.
const TAKEOVER_MARGIN_NS: i64 = 5_000_000_000;

/// Failed entries retried in one round.
const RETRY_BATCH: usize = 256;

impl Worker {
    pub fn new(
        config: SessionConfig,
        board: Board,
        shutdown: Arc<Shutdown>,
        journal: Journal,
        writer: Writer,
        recorder: Option<Recorder>,
        controls: Arc<Controls>,
    ) -> Worker {
        let (bytes_before, files_before) = (board.status.bytes_sent, board.status.files_synced);
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
            needed_owed: false,
            needed_running: false,
            crawl_started_ns: 0,
            full_owed: true,
            bytes_before,
            files_before,
            in_flight: None,
            rescans: Vec::new(),
            rescanning: Vec::new(),
            controls,
            shipped: 0,
            rounds_ok: 0,
            last_trim: Instant::now(),
            rate: Rate::default(),
            replica_estimate: None,
            keeper: None,
            epoch: 0,
            served_epoch: None,
        }
    }

    pub fn publish(&mut self) {
        if let Some(r) = &self.recorder {
            self.board.status.watch_limit |= r.watch_limit_hit();
        }
        if let Err(e) = self.board.publish() {
            warn!("writing status: {e}");
        }
    }

    /// A reporter for one connection's rounds.
    pub fn reporter() -> Arc<Reporter> {
        Arc::new(Reporter::new(Box::new(LogObserver)))
    }

    /// Ships changes over one connection until stopped or it fails.
    pub fn serve(&mut self, r: &mut Replicator, rep: &Arc<Reporter>) -> Result<(), Error> {
        // The deletion limit's idea of the replica's size outlives a link.
        if r.replica_estimate().is_none() {
            r.set_replica_estimate(self.replica_estimate);
        }
        // New hard links ship as links to names the index knows.
        match self.journal.inode_index() {
            Ok(ix) => r.set_inode_hints(Box::new(ix)),
            Err(e) => warn!("inode index: {e}; new hard links wait for a crawl"),
        }
        if self.keeper.is_some() && self.served_epoch != Some(self.epoch) {
            self.take_over(r)?;
        }
        let result = self.serve_rounds(r, rep);
        self.bytes_before += r.traffic().0;
        self.files_before += rep.counters.files_transferred.load(Relaxed);
        self.replica_estimate = r.replica_estimate().or(self.replica_estimate);
        result
    }

    /// This node now holds the session (a new epoch): what the slave has
    /// durably is the slave's marker, whoever sent it. Changes this node
    /// recorded from a little before it are replayed, and a paced crawl
    /// finds what only the old active node saw. A replica that no fenced
    /// node ever synced gets the start-up crawl as usual.
    fn take_over(&mut self, r: &Replicator) -> Result<(), Error> {
        let f = r.slave_fence();
        info!(
            "active: holding the lease under epoch {} (the slave's marker is {}, from epoch {})",
            self.epoch,
            if f.marker_time_ns > 0 {
                format!("{:.3}", f.marker_time_ns as f64 / 1e9)
            } else {
                "unset".to_string()
            },
            f.marker_epoch
        );
        if f.marker_time_ns > 0 {
            let m = self
                .journal
                .replay_from(f.marker_time_ns - TAKEOVER_MARGIN_NS)?;
            info!(
                "takeover: replaying this node's journal after change {}, crawling between live changes",
                m.seq
            );
            self.full_owed = false;
            self.crawl_needed();
        }
        self.served_epoch = Some(self.epoch);
        Ok(())
    }

    /// Whether this node may ship now: it holds the lease under the epoch
    /// its connection announced (always, without a lease).
    fn holds_lease(&self) -> bool {
        lease_held(&self.keeper, self.epoch)
    }

    /// A passive node's journal keeps `journal_retention` of changes.
    pub fn trim_passive(&mut self) {
        if self.last_trim.elapsed() >= Duration::from_secs(10) {
            self.last_trim = Instant::now();
            let retention = Duration::from_secs(self.config.journal_retention);
            let _ = self.journal.trim_unacked(retention);
        }
    }

    fn serve_rounds(&mut self, r: &mut Replicator, rep: &Arc<Reporter>) -> Result<(), Error> {
        self.in_flight = None;
        if !self.full_owed {
            // Reconnected (after a fault, or resumed): the link works.
            self.report(rep, r);
        }
        loop {
            // Paused, stopping or no longer the active node: the monitor
            // decides what comes next.
            if self.shutdown.stopping() || self.controls.paused() || !self.holds_lease() {
                return Ok(());
            }
            self.check_checkpoint();
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
            for path in self.controls.take_rescans() {
                if path.is_empty() {
                    info!("rescan: crawling the whole tree between live changes");
                    self.crawl_owed = true;
                } else if !self.rescans.contains(&path) {
                    self.rescans.push(path);
                }
            }
            // Subtrees asked for wait for the crawl in progress, if any.
            if self.crawl.is_none() && !self.rescans.is_empty() {
                for p in &self.rescans {
                    info!("rescan: crawling {} between live changes", show(p));
                }
                let paths = std::mem::take(&mut self.rescans);
                self.crawl = Some(Crawl::of(plan::entries(&paths)));
                self.crawl_started_ns = journal::now_ns();
                self.rescanning = paths;
            }
            if self.crawl.is_none() && std::mem::take(&mut self.crawl_owed) {
                info!("reconciling: crawling the whole tree between live changes");
                self.crawl = Some(Crawl::new());
                self.crawl_started_ns = journal::now_ns();
                self.needed_running = std::mem::take(&mut self.needed_owed);
                self.last_full = Instant::now();
            }
            if self.crawl.is_some() && !self.live_due() {
                self.crawl_slice(r, rep)?;
                continue;
            }
            let due = self.journal.due_failures(RETRY_BATCH)?;
            if !due.is_empty() && !self.live_due() {
                self.entries_round(r, rep, &due)?;
                continue;
            }
            let marker = self.journal.marker()?;
            let batch = self.gather(marker.seq)?;
            let Some(last) = batch.last() else {
                self.trim(false);
                // Woken by the writer's next commit or a command; the
                // deadline keeps the loop's other duties (crawl schedule,
                // retries) going.
                let deadline = Instant::now() + Duration::from_millis(500);
                self.shutdown.wait(Some(marker.seq), deadline);
                continue;
            };
            let ack = Marker {
                seq: last.seq,
                time_ns: last.time_ns,
            };
            r.set_marker(ack.time_ns);
            let (began, sent_before) = (Instant::now(), r.traffic().0);
            self.in_flight = Some(ack);
            let needs_crawl = match plan(&batch) {
                Some(scope) => self.round(r, rep, &scope, None)?.needs_full,
                // Events were lost (a queue overflow): only a crawl finds
                // what they were. Later changes keep flowing meanwhile. The
                // ack below may pass the loss before that crawl ends: safe,
                // since a crawl is owed until it does, and every start crawls.
                None => {
                    warn!("events were lost (inotify queue overflow): reconciling with a crawl");
                    true
                }
            };
            if needs_crawl {
                // Said before the ack empties the backlog: status never
                // reads converged while the crawl is owed.
                self.owe_crawl();
            }
            // The counters are published before the ack empties the
            // backlog: status never reads converged with the round's files
            // uncounted. The round counts as gone through only once acked.
            self.shipped += batch.len() as u64;
            self.report(rep, r);
            self.journal.ack(ack)?;
            self.rounds_ok += 1;
            self.in_flight = None;
            debug!(
                changes = batch.len(),
                bytes = r.traffic().0 - sent_before,
                ms = began.elapsed().as_millis() as u64,
                upto = ack.seq,
                "batch shipped"
            );
            self.trim(true);
        }
    }

    /// Forgets acked changes past the retention: after a batch, and once a
    /// minute on an idle tree (a backlog caught up ages out too).
    fn trim(&mut self, now: bool) {
        if now || self.last_trim.elapsed() >= Duration::from_secs(60) {
            self.last_trim = Instant::now();
            let retention = Duration::from_secs(self.config.journal_retention);
            let _ = self.journal.trim(retention);
        }
    }

    pub fn crawl_needed(&mut self) {
        self.crawl_owed = true;
        self.needed_owed = true;
    }

    /// A crawl is needed, and status says so now.
    fn owe_crawl(&mut self) {
        self.crawl_needed();
        self.board.status.crawl = Some(CrawlStatus::Full);
        self.publish();
    }

    /// The batch in flight keeps failing as a whole (the monitor's backoff
    /// escalated): later changes must not wait behind it. It is acked
    /// unshipped and a paced crawl, owed from now on, replicates what it
    /// carried; until that crawl ends no checkpoint completes.
    pub fn skip_failing_batch(&mut self) {
        match self.in_flight.take() {
            Some(ack) => {
                warn!(
                    "the batch up to change {} keeps failing: passing it, a crawl replicates it",
                    ack.seq
                );
                if let Err(e) = self.journal.ack(ack) {
                    warn!("passing the failing batch: {e}");
                }
            }
            None => info!("rounds keep failing: crawling the whole tree between live changes"),
        }
        self.owe_crawl();
    }

    /// Runs a round; the entries that failed in it are recorded to be
    /// retried on their own, so the round counts as done. Too many to
    /// list: the round failed.
    fn round(
        &mut self,
        r: &mut Replicator,
        rep: &Reporter,
        scope: &Scope,
        stop: Option<&dyn Fn() -> bool>,
    ) -> Result<RoundOutcome, Error> {
        rep.take_failures();
        let before = rep.counters.errors.load(Relaxed);
        let outcome = r.round_until(scope, stop)?;
        self.settle(rep, before)?;
        Ok(outcome)
    }

    /// Records what failed since the error count was `before`. (A full or
    /// read-only target is not an entry's failure: the slave ends the round
    /// with one Fatal, which the monitor retries.) A failure stands for the
    /// oldest change the round may have carried for it, the one right after
    /// the marker: a checkpoint at or after that cannot complete meanwhile.
    fn settle(&mut self, rep: &Reporter, before: u64) -> Result<(), Error> {
        match rep.take_failures() {
            Some(failed) if failed.is_empty() => Ok(()),
            Some(failed) => {
                self.board.status.failure_events += failed.len() as u64;
                let seq = self.journal.marker()?.seq + 1;
                Ok(self.journal.record_failures(&failed, seq)?)
            }
            None => Err(Error::Partial {
                failed: rep.counters.errors.load(Relaxed) - before,
            }),
        }
    }

    /// Failed entries retried, or subtrees rescanned, on their own: each
    /// leaves the failure table unless it (or something below) fails again.
    fn entries_round(
        &mut self,
        r: &mut Replicator,
        rep: &Reporter,
        paths: &[Vec<u8>],
    ) -> Result<(), Error> {
        let started = journal::now_ns();
        if self.round(r, rep, &plan::entries(paths), None)?.needs_full {
            // A hard-link group it could not form (as for live rounds).
            self.crawl_needed();
        }
        for p in paths {
            self.journal.clear_failures_under(p, started)?;
        }
        self.synced(rep, r);
        Ok(())
    }

    /// The start-up (or recovery) crawl, whole: everything recorded before
    /// it starts is covered by it, so it acks the journal up to there.
    fn full_round(&mut self, r: &mut Replicator, rep: &Arc<Reporter>) -> Result<(), Error> {
        let upto = self.journal.last_seq()?;
        if self.board.status.state != State::Initializing {
            self.board.status.crawl = Some(CrawlStatus::Full);
        }
        self.publish();
        info!("crawling the whole tree");
        let started = Instant::now();
        let started_ns = journal::now_ns();
        // Everything changed before the crawl started is on the slave after it.
        r.set_marker(started_ns);
        self.controls.crawling(Some((rep.clone(), &self.config)));
        // A pause, a stop or a lost lease ends it early; it starts over
        // later (what it shipped is not shipped again).
        let (controls, shutdown) = (self.controls.clone(), self.shutdown.clone());
        let (keeper, epoch) = (self.keeper.clone(), self.epoch);
        let stop = move || controls.paused() || shutdown.stopping() || !lease_held(&keeper, epoch);
        let done = self.round(r, rep, &Scope::Full, Some(&stop));
        self.controls.crawling(None);
        let done = done?;
        if done.interrupted {
            info!(
                "crawl interrupted after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        self.journal.clear_failures_under(b"", started_ns)?;
        info!(
            "crawled in {:.1} s: {} files sent so far",
            started.elapsed().as_secs_f64(),
            rep.counters.files_transferred.load(Relaxed)
        );
        // Counted before the ack empties the backlog, as for live rounds.
        self.count(rep, r);
        self.publish();
        self.journal.ack(Marker {
            seq: upto,
            time_ns: journal::now_ns(),
        })?;
        self.crawl = None;
        self.crawl_owed = false;
        self.needed_owed = false;
        self.needed_running = false;
        self.full_owed = false;
        self.last_full = Instant::now();
        self.synced(rep, r);
        Ok(())
    }

    /// Whether a live change has waited a batch delay (a crawl yields to
    /// it), or the operator wants the worker's attention.
    fn live_due(&self) -> bool {
        if self.controls.paused() || self.shutdown.stopping() || !self.holds_lease() {
            return true;
        }
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
        let before = rep.counters.errors.load(Relaxed);
        rep.take_failures();
        let outcome = r.crawl_slice(&mut crawl, &yield_now);
        let outcome = match outcome.and_then(|o| self.settle(rep, before).map(|_| o)) {
            Ok(o) => o,
            Err(e) => {
                // What the failed slice walked is lost with it: start over.
                if crawl.is_whole() {
                    self.crawl_owed = true;
                    self.needed_owed |= std::mem::take(&mut self.needed_running);
                } else {
                    self.rescans.append(&mut self.rescanning);
                }
                return Err(e);
            }
        };
        if outcome.needs_full {
            self.crawl_needed();
        }
        if crawl.done() && !crawl.is_whole() {
            info!("rescanned in {} slice(s)", crawl.slices);
            for p in std::mem::take(&mut self.rescanning) {
                self.journal
                    .clear_failures_under(&p, self.crawl_started_ns)?;
            }
        } else if crawl.done() {
            info!(
                "reconciled in {:.1} s, {} slice(s)",
                self.last_full.elapsed().as_secs_f64(),
                crawl.slices
            );
            self.journal
                .clear_failures_under(b"", self.crawl_started_ns)?;
            self.needed_running = false;
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
            if matches!(
                self.shutdown.wait(Some(last), until),
                Wake::Stop | Wake::Poked
            ) {
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

    /// A round went through.
    fn synced(&mut self, rep: &Reporter, r: &Replicator) {
        self.rounds_ok += 1;
        self.report(rep, r);
    }

    /// Publishes the state of a working connection.
    fn report(&mut self, rep: &Reporter, r: &Replicator) {
        let st = &mut self.board.status;
        st.state = State::Active;
        // A crawl running or owed (lost events, a hard-link group a targeted
        // round could not see whole) is work still owed: never "Changelog".
        let crawling =
            self.crawl.is_some() || self.crawl_owed || self.full_owed || !self.rescans.is_empty();
        st.crawl = Some(if crawling {
            CrawlStatus::Full
        } else {
            CrawlStatus::Changelog
        });
        // The link works; a journal that refuses changes is still news.
        st.last_error = self.writer.as_ref().and_then(|w| w.trouble());
        self.count(rep, r);
        self.board.status.rate = self.rate.observe(Instant::now(), self.shipped);
        self.publish();
    }

    /// Brings the status's counters up to the connection's.
    fn count(&mut self, rep: &Reporter, r: &Replicator) {
        let st = &mut self.board.status;
        st.files_synced = self.files_before + rep.counters.files_transferred.load(Relaxed);
        st.bytes_sent = self.bytes_before + r.traffic().0;
    }

    /// Completes the checkpoint once every change recorded before it is
    /// durably on the slave: the marker is past it, no entry that failed
    /// at or before it is still owed, and no crawl is owed for changes
    /// only a crawl can see.
    pub fn check_checkpoint(&mut self) {
        let Some(cp) = self.controls.checkpoint() else {
            return;
        };
        if cp.completed_at.is_some()
            || self.full_owed
            || self.needed_owed
            || self.needed_running
            || self.journal.owed_up_to(cp.seq).unwrap_or(true)
            || self.journal.failures_at_or_before(cp.seq).unwrap_or(true)
        {
            return;
        }
        let now = journal::now_ns() as f64 / 1e9;
        match self.controls.complete_checkpoint(&self.journal, cp, now) {
            Ok(Some(done)) => {
                info!("checkpoint of {:.3} completed", done.time);
                let st = &mut self.board.status;
                st.checkpoint_time = Some(done.time);
                st.checkpoint_completed = true;
                st.checkpoint_completion_time = done.completed_at;
                self.publish();
                self.board.fire(Event::CheckpointCompleted);
            }
            Ok(None) => {}
            Err(e) => tracing::error!("recording the checkpoint: {e}"),
        }
    }

    /// Stops recording and flushes the journal writer.
    pub fn finish(&mut self) {
        drop(self.recorder.take());
        if let Some(w) = self.writer.take() {
            let _ = w.finish();
        }
    }
}

/// Whether this node holds the lease under `epoch` (always, without one).
fn lease_held(keeper: &Option<Arc<Keeper>>, epoch: Epoch) -> bool {
    keeper.as_ref().is_none_or(|k| k.current() == Some(epoch))
}

/// Changes shipped per second over the last minute or so: an ETA after a
/// long pause or idle spell must not count the idle time.
#[derive(Default)]
struct Rate {
    /// (when, changes shipped by then), oldest first, a minute's worth.
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(60);

    fn observe(&mut self, now: Instant, shipped: u64) -> Option<f64> {
        // A sample every 100 ms at most keeps the window small.
        if self
            .samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_millis(100))
        {
            self.samples.push_back((now, shipped));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, n0) = *self.samples.front()?;
        let dt = now.duration_since(t0).as_secs_f64();
        // Too short a window says nothing yet.
        (dt >= 1.0).then(|| (shipped - n0) as f64 / dt)
    }
}
