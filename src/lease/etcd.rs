//! The lease on an etcd cluster (`lease = etcd:http://HOST:PORT[,...]`),
//! through etcd's JSON gateway (plain HTTP/1.1 on the client port): no gRPC
//! stack, no `protoc`, nothing to install to build.
//!
//! Election is a compare-and-swap: the node whose transaction creates
//! `/georep/SESSION/leader` (attached to its etcd lease) holds the session,
//! and the key's create revision is its epoch: etcd's revision only grows,
//! so every acquisition gets a higher one. Keep-alives renew the etcd lease;
//! when they stop, etcd deletes the key after the TTL and the next node's
//! transaction succeeds. Node reports live under `/georep/SESSION/nodes/`
//! on the same etcd lease, so a dead node's report goes with it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64ct::{Base64, Encoding};
use serde_json::{json, Value};

use super::{Backend, Epoch, Held, NodeReport};
use crate::error::Error;

/// One client URL: `http://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// client URLs are supported"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?}: expected http://HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{url:?}: bad port {port:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// POSTs `body` to `path`; the JSON answer, or why there is none.
    fn post(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        // Answers are small; a runaway one is cut off rather than held.
        let mut raw = Vec::new();
        s.take(4 << 20)
            .read_to_end(&mut raw)
            .map_err(|e| e.to_string())?;
        let (status, body) = parse_response(&raw)?;
        let v: Value = serde_json::from_slice(first_json(&body))
            .map_err(|e| format!("HTTP {status}: not JSON: {e}"))?;
        if status != 200 {
            let msg = v["message"].as_str().or(v["error"].as_str()).unwrap_or("");
            return Err(format!("HTTP {status}: {msg}"));
        }
        Ok(v)
    }
}

/// Status and (de-chunked) body of an HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad HTTP status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[end + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    loop {
        let nl = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size = std::str::from_utf8(&body[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        body = &body[nl + 2..];
        if size == 0 || body.len() < size {
            return Ok((status, out));
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// A streaming call (keep-alive) answers one JSON object per line: the first.
fn first_json(body: &[u8]) -> &[u8] {
    let body = body.trim_ascii_start();
    match body.iter().position(|&b| b == b'\n') {
        Some(n) => &body[..n],
        None => body,
    }
}

fn b64(s: &str) -> String {
    Base64::encode_string(s.as_bytes())
}

/// etcd's JSON renders 64-bit integers as strings, and omits zeros.
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

pub struct EtcdLease {
    endpoints: Vec<Endpoint>,
    /// The endpoint that answered last (tried first).
    current: usize,
    ttl: Duration,
    leader_key: String,
    nodes_prefix: String,
    node: String,
    /// This node's etcd lease, while etcd keeps it.
    lease_id: Option<u64>,
    /// The leader key's create revision, while this node holds it.
    mine: Option<Epoch>,
}

impl EtcdLease {
    pub fn new(
        urls: &[String],
        session: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<EtcdLease, Error> {
        let endpoints = urls
            .iter()
            .map(|u| Endpoint::parse(u).map_err(Error::Usage))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EtcdLease {
            endpoints,
            current: 0,
            ttl,
            leader_key: format!("/georep/{session}/leader"),
            nodes_prefix: format!("/georep/{session}/nodes/"),
            node: node.to_string(),
            lease_id: None,
            mine: None,
        })
    }

    /// One call, to the endpoint that answered last, then the others; each
    /// bounded by a third of the TTL, so an unreachable cluster is known in time.
    fn call(&mut self, path: &str, body: Value) -> Result<Value, Error> {
        let timeout = (self.ttl / 3).max(Duration::from_millis(200));
        let mut why = Vec::new();
        for i in 0..self.endpoints.len() {
            let at = (self.current + i) % self.endpoints.len();
            let ep = &self.endpoints[at];
            match ep.post(path, &body, timeout) {
                Ok(v) => {
                    self.current = at;
                    return Ok(v);
                }
                Err(e) => why.push(format!("{}:{}: {e}", ep.host, ep.port)),
            }
        }
        Err(Error::Lease(format!("etcd {path}: {}", why.join("; "))))
    }

    /// Renews this node's etcd lease, or grants a new one: its id.
    fn keep_alive(&mut self) -> Result<u64, Error> {
        if let Some(id) = self.lease_id {
            let v = self.call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))?;
            let r = if v["result"].is_null() {
                &v
            } else {
                &v["result"]
            };
            if num(&r["TTL"]) > 0 {
                return Ok(id);
            }
            // Expired in etcd (and the keys on it with it).
            self.lease_id = None;
            self.mine = None;
        }
        let secs = self.ttl.as_secs().max(2);
        let v = self.call("/v3/lease/grant", json!({ "TTL": secs.to_string() }))?;
        let id = num(&v["ID"]);
        if id == 0 {
            return Err(Error::Lease(format!("etcd granted no lease: {v}")));
        }
        self.lease_id = Some(id);
        Ok(id)
    }
}

impl Backend for EtcdLease {
    fn try_hold(&mut self) -> Result<Option<Held>, Error> {
        let id = self.keep_alive()?;
        let key = b64(&self.leader_key);
        let v = self.call(
            "/v3/kv/txn",
            json!({
                "compare": [{ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                "success": [{ "request_put": { "key": key, "value": b64(&self.node), "lease": id.to_string() } }],
                "failure": [{ "request_range": { "key": key } }],
            }),
        )?;
        let epoch = if v["succeeded"].as_bool() == Some(true) {
            // The transaction's revision is the key's create revision.
            num(&v["header"]["revision"])
        } else {
            let kv = &v["responses"][0]["response_range"]["kvs"][0];
            if num(&kv["lease"]) != id {
                self.mine = None;
                return Ok(None);
            }
            num(&kv["create_revision"])
        };
        self.mine = Some(epoch);
        Ok(Some(Held {
            epoch,
            // etcd counts the TTL from the keep-alive's arrival, after the
            // attempt started: the lease outlives this node's belief in it.
            valid_for: self.ttl,
        }))
    }

    fn release(&mut self) -> Result<(), Error> {
        self.mine = None;
        if let Some(id) = self.lease_id.take() {
            // Deletes the leader key and this node's report with it.
            self.call("/v3/lease/revoke", json!({ "ID": id.to_string() }))?;
        }
        Ok(())
    }

    fn publish(&mut self, report: &NodeReport) -> Result<(), Error> {
        let mut put = json!({
            "key": b64(&format!("{}{}", self.nodes_prefix, self.node)),
            "value": Base64::encode_string(&serde_json::to_vec(report).expect("plain data")),
        });
        if let Some(id) = self.lease_id {
            put["lease"] = json!(id.to_string());
        }
        self.call("/v3/kv/put", put).map(|_| ())
    }

    fn nodes(&mut self) -> Result<Vec<NodeReport>, Error> {
        let mut end = self.nodes_prefix.clone().into_bytes();
        // The prefix's range end: its last byte plus one ('/' + 1 = '0').
        *end.last_mut().expect("non-empty prefix") += 1;
        let v = self.call(
            "/v3/kv/range",
            json!({
                "key": b64(&self.nodes_prefix),
                "range_end": Base64::encode_string(&end),
            }),
        )?;
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let Some(val) = kv["value"].as_str() else {
                continue;
            };
            let Ok(raw) = Base64::decode_vec(val) else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<NodeReport>(&raw) {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:2379/").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 2379
            }
        );
        assert!(Endpoint::parse("https://h:1").is_err());
        assert!(Endpoint::parse("http://h").is_err());
        assert!(Endpoint::parse("http://[::1]:2379").is_ok());
    }

    #[test]
    fn chunked_and_streamed_answers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\n{\"a\":\r\n3\r\n1}\n\r\n0\r\n\r\n";
        let (status, body) = parse_response(raw).unwrap();
        assert_eq!(status, 200);
        assert_eq!(first_json(&body), b"{\"a\":1}");
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
