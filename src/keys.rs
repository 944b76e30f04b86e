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
/// The caller checks the names first ([`check_line_safe`]).
pub fn authorized_line(remote: Option<&str>, place: &Place, public: &str) -> String {
    let cmd = remote_command_line(remote, place).replace('"', "\\\"");
    format!("command=\"{cmd}\",restrict {}", public.trim())
}

/// Refuses what would not stay one restricted authorized_keys line, or
/// would not name the same root once written there: control characters
/// (a newline would start a second, unrestricted key line), a root that is
/// not UTF-8 (the line would name another path), and a backslash before a
/// quote (sshd would read the pair as an escaped quote).
pub fn check_line_safe(remote: Option<&str>, place: &Place) -> Result<(), String> {
    let root;
    let fields: [(&str, Option<&str>); 2] = [
        ("--remote-command", remote),
        match place {
            Place::Path(p) => {
                root = p
                    .to_str()
                    .ok_or_else(|| format!("--root {} is not UTF-8", p.display()))?;
                ("--root", Some(root))
            }
            Place::Volume(v) => ("--volume", Some(v.as_str())),
        },
    ];
    for (what, value) in fields {
        let Some(v) = value else { continue };
        if v.chars().any(char::is_control) {
            return Err(format!(
                "{what} {v:?} holds a control character (newline, CR...): refused, \
                 the authorized_keys line must stay one restricted line"
            ));
        }
        if v.contains("\\\"") {
            return Err(format!(
                "{what} {v:?} holds a backslash before a quote: refused"
            ));
        }
    }
    Ok(())
}

pub fn create(dir: &Path, place: &Place, remote: Option<&str>) -> Result<Created, String> {
    check_line_safe(remote, place)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_break_the_line_are_refused() {
        let root = |s: &str| Place::Path(PathBuf::from(s));
        for bad in [
            "/srv/a\nssh-ed25519 AAAA",
            "/srv/a\rb",
            "/srv/\u{1b}x",
            "/a\\\"b",
            "/a\u{7f}",
        ] {
            assert!(check_line_safe(None, &root(bad)).is_err(), "{bad:?}");
            assert!(
                check_line_safe(Some(bad), &root("/srv")).is_err(),
                "{bad:?}"
            );
            assert!(
                check_line_safe(None, &Place::Volume(bad.into())).is_err(),
                "{bad:?}"
            );
        }
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        assert!(create(&dir, &root("/srv/x\ncommand=\"sh\""), None).is_err());
        assert!(!dir.join("georep_ed25519").exists(), "no key written");
        check_line_safe(Some("/opt/georep"), &root("/srv/with space/\"quoted\"")).unwrap();
        let c = create(&dir, &root("/srv/backup"), None).unwrap();
        assert_eq!(c.authorized_line.lines().count(), 1);
    }
}
