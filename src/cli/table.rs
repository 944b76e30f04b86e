//! `georep status` for people: the short table and gluster's `status
//! detail` columns, with times in local time and ages.

use chrono::{Local, TimeZone};

use crate::journal;
use crate::status::Status;

/// A Unix time as local date-time with its age: "2026-12-02 10:41:07 (3 s ago)".
fn when(t: Option<f64>) -> String {
    let Some(t) = t else { return "-".into() };
    let local = Local
        .timestamp_opt(t as i64, 0)
        .single()
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| format!("{t:.0}"));
    let now = journal::now_ns() as f64 / 1e9;
    format!("{local} ({} ago)", age(now - t))
}

fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn lag(s: &Status) -> String {
    s.lag_seconds
        .map(|l| format!("{l:.2}"))
        .unwrap_or_else(|| "unknown".into())
}

/// Pending counts as "entry/data/meta", or "unknown" (a stopped session
/// whose journal holds nothing: what changed meanwhile is in no journal).
fn pending(s: &Status) -> String {
    match &s.pending {
        Some(p) => format!("{}/{}/{}", p.entry, p.data, p.meta),
        None => "unknown".into(),
    }
}

/// One pending count for `--detail`.
fn pending_count(s: &Status, kind: fn(&crate::status::Pending) -> u64) -> String {
    s.pending
        .as_ref()
        .map(|p| kind(p).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn crawl(s: &Status) -> String {
    s.crawl
        .map(|c| format!("{c:?}"))
        .unwrap_or_else(|| "-".into())
}

fn state(s: &Status) -> String {
    match s.state {
        crate::status::State::Stopped if s.paused => "Stopped (paused)".into(),
        st => format!("{st:?}"),
    }
}

/// The short table.
pub fn print_status_table(list: &[Status]) {
    println!(
        "{:<16} {:<12} {:<10} {:>8} {:<31} {:>9} {:>15} {:>8}  SOURCE -> TARGET",
        "SESSION", "STATE", "CRAWL", "PID", "LAST SYNCED", "LAG (s)", "PENDING e/d/m", "FAILURES"
    );
    for s in list {
        println!(
            "{:<16} {:<12} {:<10} {:>8} {:<31} {:>9} {:>15} {:>8}  {} -> {}",
            s.session,
            state(s),
            crawl(s),
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            when(s.last_synced),
            lag(s),
            pending(s),
            s.failures,
            s.source,
            s.target
        );
        if let Some(p) = progress(s) {
            println!("{:<16} {p}", "");
        }
        if let Some(t) = s.last_seen_alive {
            println!("{:<16} daemon died: last seen alive {}", "", when(Some(t)));
        }
        if let Some(e) = &s.last_error {
            println!("{:<16} last error: {e}", "");
        }
        print_nodes(s);
    }
}

/// A multi-node session's nodes, as each last published itself; one that
/// has not for three lease periods is shown unreachable.
fn print_nodes(s: &Status) {
    let now = journal::now_ns() as f64 / 1e9;
    for n in &s.nodes {
        let stale = now - n.heartbeat > 3.0 * s.lease_ttl.unwrap_or(2.0).max(1.0);
        let state = match n.state.as_str() {
            "Stopped" => "Stopped".to_string(),
            st if stale => format!("unreachable (was {st})"),
            st => st.to_string(),
        };
        let me = if s.node.as_deref() == Some(n.node.as_str()) {
            " (this node)"
        } else {
            ""
        };
        println!(
            "{:<16} node {}{me}: {state}, epoch {}, heartbeat {}, lag {}",
            "",
            n.node,
            n.epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            when(Some(n.heartbeat)),
            n.lag_seconds
                .map(|l| format!("{l:.2} s"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// The crawl in progress, in a line: what is done, of what the count of the
/// source found (a lower bound while the count runs), and the time left
/// once the count is complete.
fn progress(s: &Status) -> Option<String> {
    let p = s.progress.as_ref()?;
    let of = |done: u64, total: u64, show: fn(u64) -> String| match (p.source_counted, total > done)
    {
        (true, _) => format!("{} of {}", show(done), show(total)),
        (false, true) => format!("{} of at least {}", show(done), show(total)),
        (false, false) => show(done),
    };
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let eta = p
        .eta_seconds
        .map(|e| format!(", about {} left", age(e)))
        .unwrap_or_default();
    Some(format!(
        "crawling: {} entries checked ({}), {} files sent ({}), {:.0} entries/s for {}{eta}",
        of(p.files_checked, p.source_entries, |n| n.to_string()),
        of(p.bytes_checked, p.source_bytes, mb),
        p.files_sent,
        mb(p.bytes_literal + p.bytes_matched),
        p.rate,
        age(p.elapsed_seconds)
    ))
}

/// gluster's `status detail`, one block per session, plus lag, rate and
/// the backlog's ETA.
pub fn print_status_detail(list: &[Status]) {
    let node = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    for (i, s) in list.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let pending = s.pending.map(|p| p.entry + p.data + p.meta);
        // The rate the session has shipped at over the last minute, for an ETA.
        let rate = s
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| format!("{r:.1} changes/s"))
            .unwrap_or_else(|| "-".into());
        let eta = match (pending, s.rate) {
            (Some(0), _) => "-".into(),
            (Some(n), Some(r)) if r > 0.0 => age(n as f64 / r),
            _ => "unknown".into(),
        };
        let rows: [(&str, String); 17] = [
            ("SESSION", s.session.clone()),
            (
                "MASTER NODE",
                s.node.clone().unwrap_or_else(|| node.clone()),
            ),
            ("MASTER PATH", s.source.clone()),
            ("SLAVE", s.target.clone()),
            ("STATUS", state(s)),
            ("CRAWL STATUS", crawl(s)),
            ("LAST SYNCED", when(s.last_synced)),
            ("ENTRY", pending_count(s, |p| p.entry)),
            ("DATA", pending_count(s, |p| p.data)),
            ("META", pending_count(s, |p| p.meta)),
            ("FAILURES", format!("{} ({} parked)", s.failures, s.parked)),
            ("CHECKPOINT TIME", when(s.checkpoint_time)),
            (
                "CHECKPOINT COMPLETED",
                match s.checkpoint_time {
                    None => "-".into(),
                    Some(_) if s.checkpoint_completed => "Yes".into(),
                    Some(_) => "No".into(),
                },
            ),
            (
                "CHECKPOINT COMPLETION TIME",
                when(s.checkpoint_completion_time),
            ),
            ("LAG (s)", lag(s)),
            ("RATE", rate),
            ("ETA", eta),
        ];
        for (k, v) in rows {
            println!("{k:<27} {v}");
        }
        if let Some(p) = progress(s) {
            println!("{:<27} {p}", "CRAWL PROGRESS");
        }
        if let Some(e) = &s.last_error {
            println!("{:<27} {e}", "LAST ERROR");
        }
        print_nodes(s);
        for f in s.failed_entries.iter().take(10) {
            let parked = if f.parked { "parked" } else { "retrying" };
            println!("{:<27} {} ({parked}): {}", "FAILED ENTRY", f.path, f.error);
        }
    }
}
