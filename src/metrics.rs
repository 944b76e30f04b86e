//! Prometheus metrics of a session (session key `metrics_listen`): a small
//! HTTP/1.1 server whose `GET /metrics` encodes the daemon's [`Snapshot`]
//! at scrape time in the Prometheus text format (0.0.4, what every
//! scraper and `promtool check metrics` read).
//!
//! The values are the daemon's, not the server's: counters are encoded
//! from the snapshot by a collector (prometheus-client's `Collector`),
//! never kept in a registry that would have to be mirrored. Every series
//! carries a `session` label.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `georep_state{state}` | gauge | 1 for the current state, 0 for the others |
//! | `georep_last_synced_timestamp_seconds` | gauge | newest change durably on the slave (absent until one is) |
//! | `georep_lag_seconds` | gauge | how far the slave is behind (absent when unknown) |
//! | `georep_pending{kind="entry\|data\|meta"}` | gauge | changes waiting to be shipped |
//! | `georep_bytes_sent_total` | counter | bytes put on the wire |
//! | `georep_files_synced_total` | counter | files whose content was shipped |
//! | `georep_failures_total` | counter | failed entries and rounds, since the daemon started |
//! | `georep_failed_entries` | gauge | entries that failed and are still owed (parked ones included) |
//! | `georep_parked_entries` | gauge | entries that keep failing, set aside (listed in status) |
//! | `georep_checkpoint_completed` | gauge | 1 once the checkpoint is on the slave, 0 before (absent without one) |

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::error::Error;

/// The states `georep_state` has a series for (status.rs's `State`, by name,
/// so this module does not depend on the daemon's types).
pub const STATES: [&str; 7] = [
    "Created",
    "Initializing",
    "Active",
    "Passive",
    "Faulty",
    "Paused",
    "Stopped",
];
/// A request line and headers longer than this are refused (431).
const MAX_REQUEST: usize = 8192;
/// The whole exchange with one client; a slower one is dropped, so a
/// client that opens a connection and sends nothing cannot hold the server.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon reports at a scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub session: String,
    /// One of [`STATES`]; anything else sets no `georep_state` series to 1.
    pub state: String,
    /// Unix seconds of the newest change the slave has durably applied.
    pub last_synced: Option<f64>,
    pub lag_seconds: Option<f64>,
    pub pending_entry: u64,
    pub pending_data: u64,
    pub pending_meta: u64,
    /// Monotonic counts since the daemon started (Prometheus counters:
    /// they must never go down while it runs).
    pub bytes_sent: u64,
    pub files_synced: u64,
    pub failures: u64,
    /// Failed entries still owed (a gauge; `failures` is the counter).
    pub failed_entries: u64,
    /// Entries parked now (a current count; it goes down as they heal).
    pub parked: u64,
    pub checkpoint_completed: Option<bool>,
}

/// A running metrics server; dropping it stops its thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (the real port when `serve` was given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `addr` (e.g. "127.0.0.1:9598") and serves `GET /metrics`
/// from `snapshot`, called on the server's thread at each scrape. Binding
/// happens before this returns, so a taken port is reported here.
pub fn serve(
    addr: &str,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> Result<MetricsServer, Error> {
    let ctx = |e| Error::io(format!("metrics listener on {addr}"), e);
    let listener = std::net::TcpListener::bind(addr).map_err(ctx)?;
    listener.set_nonblocking(true).map_err(ctx)?;
    let local = listener.local_addr().map_err(ctx)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ctx)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("georep-metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let accept = async {
                    loop {
                        // Errors here are per connection (a reset, out of
                        // descriptors for a moment): keep serving.
                        let Ok((stream, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let _ =
                            tokio::time::timeout(CLIENT_TIMEOUT, exchange(stream, &registry)).await;
                    }
                };
                // Dropping the sender (or sending) ends the server, even
                // in the middle of an exchange.
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept => {}
                }
            })
        })
        .map_err(ctx)?;
    Ok(MetricsServer {
        addr: local,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// One request, one response, then the connection is closed.
async fn exchange(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = find(&req, b"\r\n\r\n") {
            break Some(i);
        }
        if req.len() > MAX_REQUEST {
            break None;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    };
    let response = match head_end {
        None => reply(431, "Request Header Fields Too Large", "", None),
        Some(end) => route(&req[..end], registry),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn route(head: &[u8], registry: &Registry) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with(b"HTTP/1.")) {
        return reply(400, "Bad Request", "", None);
    }
    let path = target
        .unwrap_or_default()
        .split(|&b| b == b'?')
        .next()
        .unwrap_or_default();
    if path != b"/metrics" {
        return reply(404, "Not Found", "not found; try /metrics\n", None);
    }
    let head_only = match method {
        Some(b"GET") => false,
        Some(b"HEAD") => true,
        _ => return reply(405, "Method Not Allowed", "", Some("Allow: GET, HEAD\r\n")),
    };
    // The snapshot is the daemon's code: a panic in it fails this scrape,
    // not the server.
    let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut body = String::new();
        prometheus_text::encode(&mut body, registry).map(|()| body)
    }));
    let body = match encoded {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return reply(500, "Internal Server Error", &format!("{e}\n"), None),
        Err(_) => return reply(500, "Internal Server Error", "snapshot failed\n", None),
    };
    let mut r = reply(200, "OK", &body, None);
    if head_only {
        let head = find(&r, b"\r\n\r\n").map_or(r.len(), |i| i + 4);
        r.truncate(head);
    }
    r
}

fn reply(code: u16, reason: &str, body: &str, extra: Option<&str>) -> Vec<u8> {
    let ctype = if code == 200 {
        prometheus_text::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
        body.len(),
        extra.unwrap_or_default()
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Encodes a fresh snapshot at each scrape.
struct SnapshotCollector(Arc<dyn Fn() -> Snapshot + Send + Sync>);

impl fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotCollector")
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = (self.0)();
        let session = ("session", s.session.as_str());
        let one = [session];

        let mut m = enc.encode_descriptor(
            "georep_state",
            "Session state: 1 for the current one, 0 for the others.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for st in STATES {
            let labels = [session, ("state", st)];
            ConstGauge::new(i64::from(s.state == st)).encode(m.encode_family(&labels)?)?;
        }
        if let Some(t) = s.last_synced {
            gauge(
                &mut enc,
                "georep_last_synced_timestamp_seconds",
                "Unix time of the newest change the slave has durably applied.",
                &one,
                t,
            )?;
        }
        if let Some(lag) = s.lag_seconds {
            gauge(
                &mut enc,
                "georep_lag_seconds",
                "How far the slave is behind the source.",
                &one,
                lag,
            )?;
        }
        let mut m = enc.encode_descriptor(
            "georep_pending",
            "Changes recorded but not yet on the slave, by kind.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (kind, n) in [
            ("entry", s.pending_entry),
            ("data", s.pending_data),
            ("meta", s.pending_meta),
        ] {
            let labels = [session, ("kind", kind)];
            ConstGauge::new(n as f64).encode(m.encode_family(&labels)?)?;
        }
        // Counter names get their `_total` from the encoder.
        counter(
            &mut enc,
            "georep_bytes_sent",
            "Bytes sent to the slave since the daemon started.",
            &one,
            s.bytes_sent,
        )?;
        counter(
            &mut enc,
            "georep_files_synced",
            "Files whose content was shipped since the daemon started.",
            &one,
            s.files_synced,
        )?;
        counter(
            &mut enc,
            "georep_failures",
            "Failed entries and rounds since the daemon started.",
            &one,
            s.failures,
        )?;
        gauge(
            &mut enc,
            "georep_failed_entries",
            "Entries that failed and are still owed, parked ones included.",
            &one,
            s.failed_entries as f64,
        )?;
        gauge(
            &mut enc,
            "georep_parked_entries",
            "Entries that keep failing, set aside and retried at each crawl.",
            &one,
            s.parked as f64,
        )?;
        if let Some(done) = s.checkpoint_completed {
            gauge(
                &mut enc,
                "georep_checkpoint_completed",
                "1 once every change before the checkpoint is on the slave.",
                &one,
                if done { 1.0 } else { 0.0 },
            )?;
        }
        Ok(())
    }
}

type Labels<'a> = [(&'a str, &'a str); 1];

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: &Labels<'_>,
    v: f64,
) -> fmt::Result {
    let g = ConstGauge::new(v);
    let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m.encode_family(labels)?)
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: &Labels<'_>,
    v: u64,
) -> fmt::Result {
    let c = ConstCounter::new(v);
    let mut m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m.encode_family(labels)?)
}
