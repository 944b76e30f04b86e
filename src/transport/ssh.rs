//! The russh transport: one SSH connection, one exec channel running
//! `georep slave`, bridged to the blocking Read/Write the protocol uses.
//!
//! Host keys fail closed: a key is accepted only if the known-hosts file lists
//! exactly it for `host` (or `[host]:port`), plain or hashed; any other key
//! for a listed host is a changed key, and an unlisted host is refused unless
//! `--accept-new-host-key` records it first. The remote's stderr is forwarded
//! to ours as it arrives and its exit status reaches the final error.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Preferred};
use tokio::sync::mpsc;

use super::{Link, SshOptions, Transport};
use crate::error::{Error, Exit, Result};

pub struct Russh {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The command line run on the slave host.
    pub command: String,
    pub opts: SshOptions,
}

fn ssh_err(message: impl Into<String>) -> Error {
    Error::ssh(message)
}

/// Verifies the server's key against known_hosts; remembers why it refused.
struct Verifier {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    refusal: Arc<Mutex<Option<String>>>,
}

impl Verifier {
    fn check(&self, key: &PublicKey) -> std::result::Result<(), String> {
        let fp = key.fingerprint(HashAlg::Sha256);
        let listed = russh::keys::known_hosts::known_host_keys_path(
            &self.host,
            self.port,
            &self.known_hosts,
        )
        .map_err(|e| format!("reading {}: {e}", self.known_hosts.display()))?;
        if listed.iter().any(|(_, k)| k == key) {
            return Ok(());
        }
        let name = if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        };
        if !listed.is_empty() {
            let lines: Vec<String> = listed.iter().map(|(l, _)| l.to_string()).collect();
            return Err(format!(
                "HOST KEY CHANGED for {name}: the server offers {} key {fp}, which does not match \
                 {} line(s) {}; refusing to connect (possible man-in-the-middle)",
                key.algorithm(),
                self.known_hosts.display(),
                lines.join(", ")
            ));
        }
        if self.accept_new {
            learn_host_key(&name, key, &self.known_hosts).map_err(|e| {
                format!(
                    "recording the host key in {}: {e}",
                    self.known_hosts.display()
                )
            })?;
            eprintln!(
                "georep: added {name} ({} {fp}) to {}",
                key.algorithm(),
                self.known_hosts.display()
            );
            return Ok(());
        }
        Err(format!(
            "unknown host key for {name}: {} {fp} is not in {}; verify it and run again \
             with --accept-new-host-key, or add it with ssh-keyscan",
            key.algorithm(),
            self.known_hosts.display()
        ))
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let verdict = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key),
            PublicKeyOrCertificate::Certificate(_) => {
                Err("host certificates are not supported; list the host key instead".into())
            }
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().unwrap() = Some(why);
                Ok(false)
            }
        }
    }
}

/// Appends `name key` to a known-hosts file, as OpenSSH does: the file
/// 0600 and its directory 0700 when they are created, no blank line.
fn learn_host_key(name: &str, key: &PublicKey, path: &Path) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let mut last = [0u8; 1];
    let needs_newline =
        f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] != b'\n';
    let text = key.to_openssh().map_err(io::Error::other)?;
    let line = format!("{}{name} {text}\n", if needs_newline { "\n" } else { "" });
    f.write_all(line.as_bytes())
}

fn known_hosts_default() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".ssh/known_hosts"))
        .ok_or_else(|| ssh_err("no HOME to find known_hosts; pass --known-hosts"))
}

/// Host key algorithms with those already known for this host first (as
/// OpenSSH does), so a host listed only with its ECDSA key is not mistaken
/// for one whose key changed when it also offers ed25519.
fn host_key_order(v: &Verifier) -> Vec<russh::keys::Algorithm> {
    let known: Vec<_> =
        russh::keys::known_hosts::known_host_keys_path(&v.host, v.port, &v.known_hosts)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, k)| k.algorithm())
            .collect();
    let mut order = known.clone();
    for a in Preferred::default().key.iter() {
        if !order.contains(a) {
            order.push(a.clone());
        }
    }
    order
}

fn config(host_keys: Vec<russh::keys::Algorithm>) -> client::Config {
    client::Config {
        // AES-GCM first: with AES-NI it is the fastest AEAD here.
        preferred: Preferred {
            cipher: Cow::Borrowed(&[
                russh::cipher::AES_128_GCM,
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
            ]),
            key: Cow::Owned(host_keys),
            ..Default::default()
        },
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        window_size: 16 << 20,
        maximum_packet_size: 32 << 10,
        nodelay: true,
        ..Default::default()
    }
}

impl Transport for Russh {
    fn connect(&self) -> Result<Link> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the SSH runtime", e))?;
        let refusal = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            host: self.host.clone(),
            port: self.port,
            known_hosts: match &self.opts.known_hosts {
                Some(p) => p.clone(),
                None => known_hosts_default()?,
            },
            accept_new: self.opts.accept_new_host_key,
            refusal: refusal.clone(),
        };
        let addr = (self.host.clone(), self.port);
        let config = Arc::new(config(host_key_order(&verifier)));
        let handle = rt.block_on(async {
            match client::connect(config, addr, verifier).await {
                Ok(h) => Ok(h),
                Err(e) => Err(match refusal.lock().unwrap().take() {
                    Some(why) => ssh_err(why),
                    None => Error::ssh_temporary(format!(
                        "connecting to {}:{}: {e}",
                        self.host, self.port
                    )),
                }),
            }
        })?;
        let mut handle = handle;
        rt.block_on(self.authenticate(&mut handle))?;
        let channel = rt
            .block_on(async {
                let ch = handle.channel_open_session().await?;
                ch.exec(true, self.command.as_bytes()).await?;
                Ok::<_, russh::Error>(ch)
            })
            .map_err(|e| Error::ssh_temporary(format!("starting `{}`: {e}", self.command)))?;

        let (mut read_half, write_half) = channel.split();
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
        // Writes arrive in chunks of up to 1 MiB (the sender's buffer): a
        // short queue keeps memory bounded without starving the session.
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(4);
        // Us → slave; closing our writer sends EOF.
        let pump_out = rt.spawn(async move {
            while let Some(buf) = out_rx.recv().await {
                write_half.data_bytes(buf).await?;
            }
            write_half.eof().await
        });
        let stop_out = pump_out.abort_handle();
        // Slave → us: data to the reader; stderr forwarded; exit status kept.
        let pump_in = rt.spawn(async move {
            let mut status = None;
            let mut in_tx = Some(in_tx);
            while let Some(msg) = read_half.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        let Some(tx) = &in_tx else { continue };
                        if tx.send(data.to_vec()).await.is_err() {
                            // Our reader is gone; keep draining for the exit status.
                            in_tx = None;
                        }
                    }
                    // End of the slave's output: the reader sees EOF now, not at Close.
                    ChannelMsg::Eof => in_tx = None,
                    ChannelMsg::Close => break,
                    ChannelMsg::ExtendedData { data, .. } => {
                        let mut e = io::stderr().lock();
                        let _ = e.write_all(&data);
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        stop_out.abort();
                        return Err(format!("remote georep killed by signal {signal_name:?}"));
                    }
                    _ => {}
                }
            }
            // The session is gone: a writer waiting for window space would
            // wait forever, so stop it; our writer then fails at once.
            stop_out.abort();
            Ok(status)
        });
        let command = self.command.clone();
        let ending = Box::new(move || {
            let out = rt.block_on(pump_out);
            let status = rt.block_on(pump_in);
            rt.block_on(async {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
            });
            drop(out);
            match status {
                Ok(Ok(Some(0))) => Ok(()),
                Ok(Ok(Some(127))) => Err(Error::Remote {
                    code: Exit::Protocol as u8,
                    message: format!(
                        "`{command}`: command not found on the slave (exit status 127): \
                         install georep there or name it with --remote-command"
                    ),
                }),
                Ok(Ok(Some(code))) => Err(Error::Disconnected(format!(
                    "remote `{command}` exited with status {code}"
                ))),
                Ok(Ok(None)) => Err(Error::Disconnected(format!(
                    "remote `{command}` ended without an exit status (connection lost?)"
                ))),
                Ok(Err(why)) => Err(Error::Disconnected(why)),
                Err(e) => Err(Error::Disconnected(e.to_string())),
            }
        });
        Ok(Link {
            reader: Box::new(ChannelReader {
                rx: in_rx,
                buf: Vec::new(),
                pos: 0,
            }),
            writer: Box::new(ChannelWriter { tx: Some(out_tx) }),
            ending,
        })
    }
}

impl Russh {
    /// The key named by `-i`; else the agent's keys, then the default key
    /// files (an agent that is stale or holds no accepted key is not the end).
    /// The error lists what was tried.
    async fn authenticate(&self, handle: &mut Handle<Verifier>) -> Result<()> {
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let mut tried: Vec<String> = Vec::new();
        let files: Vec<PathBuf> = match &self.opts.identity {
            Some(p) => vec![p.clone()],
            None => {
                if std::env::var_os("SSH_AUTH_SOCK").is_some() {
                    if self.try_agent(handle, hash, &mut tried).await? {
                        return Ok(());
                    }
                } else {
                    tried.push("no SSH agent (SSH_AUTH_SOCK unset)".into());
                }
                std::env::var_os("HOME")
                    .map(|h| {
                        ["id_ed25519", "id_ecdsa", "id_rsa"]
                            .iter()
                            .map(|n| PathBuf::from(&h).join(".ssh").join(n))
                            .filter(|p| p.exists())
                            .collect()
                    })
                    .unwrap_or_default()
            }
        };
        for path in &files {
            let key = match russh::keys::load_secret_key(path, None) {
                Ok(k) => k,
                // A named key must load; a default one that does not (say,
                // it has a passphrase) is only noted.
                Err(e) if self.opts.identity.is_some() => {
                    return Err(ssh_err(format!("loading key {}: {e}", path.display())))
                }
                Err(e) => {
                    tried.push(format!("{} (not loaded: {e})", path.display()));
                    continue;
                }
            };
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            let r = handle
                .authenticate_publickey(&self.user, key)
                .await
                .map_err(|e| ssh_err(format!("authenticating: {e}")))?;
            if r.success() {
                return Ok(());
            }
            tried.push(format!("{} (refused)", path.display()));
        }
        if self.opts.identity.is_none() && files.is_empty() {
            tried.push("no ~/.ssh/id_ed25519, id_ecdsa or id_rsa".into());
        }
        Err(ssh_err(format!(
            "authentication as {} on {} failed; tried: {}",
            self.user,
            self.host,
            tried.join(", ")
        )))
    }

    /// Tries the agent's keys; notes in `tried` what happened.
    async fn try_agent(
        &self,
        handle: &mut Handle<Verifier>,
        hash: Option<HashAlg>,
        tried: &mut Vec<String>,
    ) -> Result<bool> {
        let mut agent = match russh::keys::agent::client::AgentClient::connect_env().await {
            Ok(a) => a,
            Err(e) => {
                tried.push(format!("the SSH agent (cannot connect: {e})"));
                return Ok(false);
            }
        };
        let ids = match agent.request_identities().await {
            Ok(ids) => ids,
            Err(e) => {
                tried.push(format!("the SSH agent (cannot list keys: {e})"));
                return Ok(false);
            }
        };
        if ids.is_empty() {
            tried.push("the SSH agent (no keys)".into());
        }
        for id in ids {
            let public = id.public_key().into_owned();
            let fp = public.fingerprint(HashAlg::Sha256);
            let r = handle
                .authenticate_publickey_with(&self.user, public, hash, &mut agent)
                .await;
            if matches!(r, Ok(ref r) if r.success()) {
                return Ok(true);
            }
            tried.push(format!("agent key {fp} (refused)"));
        }
        Ok(false)
    }
}

/// Blocking reader over the channel's data messages.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Blocking writer into the channel; dropping it sends EOF.
struct ChannelWriter {
    tx: Option<mpsc::Sender<Vec<u8>>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tx = self.tx.as_ref().expect("open until dropped");
        tx.blocking_send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "SSH channel closed"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl super::Sink for ChannelWriter {
    fn write_vec(&mut self, buf: Vec<u8>) -> io::Result<()> {
        let tx = self.tx.as_ref().expect("open until dropped");
        tx.blocking_send(buf)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "SSH channel closed"))
    }
}
