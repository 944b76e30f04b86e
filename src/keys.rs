//! `georep keys create`: a replication key pair and the authorized_keys line
//! that pins it to one root or volume on the slave (see keys/README.md).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use crate::target::Place;
use crate::transport::remote_command_line;

pub struct Created {
    pub private: PathBuf,
    pub public: PathBuf,
    pub authorized_line: String,
}

/// The authorized_keys line: a forced command plus `restrict` (no pty, no
/// forwarding, no agent, no X11, no user rc).
pub fn authorized_line(remote: Option<&str>, place: &Place, public: &str) -> String {
    let cmd = remote_command_line(remote, place).replace('"', "\\\"");
    format!("command=\"{cmd}\",restrict {}", public.trim())
}

pub fn create(dir: &Path, place: &Place, remote: Option<&str>) -> Result<Created, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let seed: [u8; 32] = rand::random();
    let pair = Ed25519Keypair::from_seed(&seed);
    let key = PrivateKey::new(KeypairData::Ed25519(pair), "georep")
        .map_err(|e| format!("creating the key: {e}"))?;
    let private_text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("encoding the key: {e}"))?;
    let public_text = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("encoding the key: {e}"))?;
    let private = dir.join("georep_ed25519");
    let public = dir.join("georep_ed25519.pub");
    let write = |path: &Path, text: &[u8], mode: u32| -> Result<(), String> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(text)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&private, private_text.as_bytes(), 0o600)?;
    write(&public, format!("{public_text}\n").as_bytes(), 0o644)?;
    Ok(Created {
        private,
        public,
        authorized_line: authorized_line(remote, place, &public_text),
    })
}
