//! The metrics endpoint over real TCP on 127.0.0.1, checked by promtool.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use georep::metrics::{serve, MetricsServer, Snapshot};

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

fn request(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

/// Series (name and labels, as printed) to value.
pub fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn snapshot() -> Snapshot {
    Snapshot {
        session: "s1".into(),
        state: "Active".into(),
        last_synced: Some(1_700_000_000.5),
        lag_seconds: Some(1.25),
        pending_entry: 3,
        pending_data: 7,
        pending_meta: 1,
        bytes_sent: 12345,
        files_synced: 42,
        failures: 2,
        failed_entries: 3,
        parked: 1,
        checkpoint_completed: Some(false),
    }
}

fn server(shared: &Arc<Mutex<Snapshot>>) -> MetricsServer {
    let s = shared.clone();
    serve("127.0.0.1:0", Arc::new(move || s.lock().unwrap().clone())).unwrap()
}

/// `promtool check metrics` on `body`, when promtool is installed.
pub fn promtool(body: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("skipping promtool check: promtool not found (Debian package prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{body}");
    assert!(said.trim().is_empty(), "promtool lint: {said}\n{body}");
}

#[test]
fn metrics_are_served_from_the_snapshot_at_scrape_time() {
    let shared = Arc::new(Mutex::new(snapshot()));
    let srv = server(&shared);
    let addr = srv.local_addr();
    assert_ne!(addr.port(), 0);

    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.headers);
    assert!(
        r.headers
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        r.headers
    );
    let m = samples(&r.body);
    let want = [
        (r#"georep_state{session="s1",state="Active"}"#, 1.0),
        (r#"georep_state{session="s1",state="Faulty"}"#, 0.0),
        (r#"georep_state{session="s1",state="Created"}"#, 0.0),
        (
            r#"georep_last_synced_timestamp_seconds{session="s1"}"#,
            1_700_000_000.5,
        ),
        (r#"georep_lag_seconds{session="s1"}"#, 1.25),
        (r#"georep_pending{session="s1",kind="entry"}"#, 3.0),
        (r#"georep_pending{session="s1",kind="data"}"#, 7.0),
        (r#"georep_pending{session="s1",kind="meta"}"#, 1.0),
        (r#"georep_bytes_sent_total{session="s1"}"#, 12345.0),
        (r#"georep_files_synced_total{session="s1"}"#, 42.0),
        (r#"georep_failures_total{session="s1"}"#, 2.0),
        (r#"georep_failed_entries{session="s1"}"#, 3.0),
        (r#"georep_parked_entries{session="s1"}"#, 1.0),
        (r#"georep_checkpoint_completed{session="s1"}"#, 0.0),
    ];
    for (series, v) in want {
        assert_eq!(m.get(series), Some(&v), "{series} in\n{}", r.body);
    }
    assert_eq!(
        m.keys().filter(|k| k.starts_with("georep_state{")).count(),
        7,
        "one series per state"
    );
    assert!(r.body.contains("# TYPE georep_bytes_sent_total counter"));
    promtool(&r.body);

    // A later scrape sees the daemon's new numbers; unknown values vanish.
    {
        let mut s = shared.lock().unwrap();
        s.state = "Paused".into();
        s.bytes_sent = 99999;
        s.lag_seconds = None;
        s.last_synced = None;
        s.checkpoint_completed = Some(true);
    }
    let r = get(addr, "/metrics?x=1");
    let m = samples(&r.body);
    assert_eq!(m[r#"georep_state{session="s1",state="Paused"}"#], 1.0);
    assert_eq!(m[r#"georep_state{session="s1",state="Active"}"#], 0.0);
    assert_eq!(m[r#"georep_bytes_sent_total{session="s1"}"#], 99999.0);
    assert_eq!(m[r#"georep_checkpoint_completed{session="s1"}"#], 1.0);
    assert!(!r.body.contains("georep_lag_seconds"), "{}", r.body);
    assert!(!r.body.contains("georep_last_synced"), "{}", r.body);
    promtool(&r.body);
}

#[test]
fn odd_session_names_are_escaped() {
    let shared = Arc::new(Mutex::new(Snapshot {
        session: "we\"ird\\na\nme".into(),
        ..snapshot()
    }));
    let srv = server(&shared);
    let r = get(srv.local_addr(), "/metrics");
    assert!(
        r.body
            .contains(r#"georep_parked_entries{session="we\"ird\\na\nme"} 1"#),
        "{}",
        r.body
    );
    promtool(&r.body);
}

#[test]
fn metrics_server_answers_only_metrics() {
    let shared = Arc::new(Mutex::new(snapshot()));
    let srv = server(&shared);
    let addr = srv.local_addr();
    assert_eq!(get(addr, "/").status, 404);
    assert_eq!(get(addr, "/metricsx").status, 404);
    let r = request(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    assert!(r.headers.contains("Allow: GET, HEAD"));
    let r = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(request(addr, b"garbage\r\n\r\n").status, 400);
    // Headers past the bound are refused, not buffered without end.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..1000 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer and close before it has read all of it.
    let _ = s.write_all(&big);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // Still serving.
    assert_eq!(get(addr, "/metrics").status, 200);
}

#[test]
fn a_silent_client_cannot_hold_the_server() {
    let shared = Arc::new(Mutex::new(snapshot()));
    let srv = server(&shared);
    let addr = srv.local_addr();
    let _silent = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "waited {took:?}");
}

#[test]
fn dropping_the_server_closes_its_port() {
    let shared = Arc::new(Mutex::new(snapshot()));
    let srv = server(&shared);
    let addr = srv.local_addr();
    // A second server cannot take a port in use: the error says so at once.
    let s = shared.clone();
    let e = serve(
        &addr.to_string(),
        Arc::new(move || s.lock().unwrap().clone()),
    );
    assert!(e.is_err());
    assert_eq!(get(addr, "/metrics").status, 200);
    let started = Instant::now();
    drop(srv);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening on {addr}"
    );
}

#[test]
fn a_failing_snapshot_fails_only_its_scrape() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let srv = serve(
        "127.0.0.1:0",
        Arc::new(move || {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(n != 0, "the daemon's first snapshot fails");
            snapshot()
        }),
    )
    .unwrap();
    assert_eq!(get(srv.local_addr(), "/metrics").status, 500);
    let r = get(srv.local_addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("georep_bytes_sent_total"));
}
