//! A real etcd (Debian's etcd-server) on loopback, with its data in the
//! test's directory; killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::process::signal;

pub struct Etcd {
    child: Child,
    pub url: String,
    log: PathBuf,
}

/// The etcd binary, or None (the caller skips and says why).
fn binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Etcd {
    /// Starts a one-member cluster in `dir`; None, with a message, when
    /// etcd is not installed (`apt-get install etcd-server`; .ci/run does).
    pub fn start(dir: &Path) -> Option<Etcd> {
        let Some(bin) = binary() else {
            eprintln!("skipped: etcd is not installed (Debian package etcd-server)");
            return None;
        };
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("etcd.log");
        let child = Command::new(bin)
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start etcd");
        let e = Etcd { child, url, log };
        e.wait_ready();
        Some(e)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.url.trim_start_matches("http://").to_string();
        loop {
            let ok = std::net::TcpStream::connect(&addr).is_ok_and(|mut s| {
                use std::io::{Read, Write};
                let req =
                    format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut out).is_ok()
                    && out.contains("\"health\":\"true\"")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes etcd (as a hung or partitioned cluster looks to a client).
    pub fn freeze(&self) {
        super::process::freeze(self.pid());
    }

    pub fn thaw(&self) {
        signal(self.pid(), Signal::CONT);
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        signal(self.pid(), Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
