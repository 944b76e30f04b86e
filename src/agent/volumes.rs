//! Named volumes on the slave host, and what a forced command allows.
//!
//! `georep slave --volume NAME` resolves NAME through the slave's volumes
//! file, so an administrator can expose named volumes and nothing else:
//!
//! ```toml
//! [volumes]
//! backup = "/srv/backup"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub const DEFAULT_FILE: &str = "/etc/georep/volumes.toml";

#[derive(Deserialize)]
struct VolumesFile {
    #[serde(default)]
    volumes: BTreeMap<String, PathBuf>,
}

fn file() -> PathBuf {
    std::env::var_os("GEOREP_VOLUMES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE))
}

/// The root directory of a named volume.
pub fn resolve(name: &str) -> Result<PathBuf, String> {
    let path = file();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read volumes file {}: {e}", path.display()))?;
    let parsed: VolumesFile =
        toml::from_str(&text).map_err(|e| format!("volumes file {}: {e}", path.display()))?;
    match parsed.volumes.get(name) {
        Some(root) if root.is_absolute() => Ok(root.clone()),
        Some(root) => Err(format!(
            "volume {name:?} in {} has a relative root {}",
            path.display(),
            root.display()
        )),
        None => Err(format!(
            "unknown volume {name:?} (not in {})",
            path.display()
        )),
    }
}

/// What a client asked for, read from the command line it sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Root(String),
    Volume(String),
}

/// Under an SSH forced command, sshd runs our fixed command line and puts the
/// client's in SSH_ORIGINAL_COMMAND. Serving a different root than the one
/// asked for would silently write the wrong replica, so a mismatch is refused.
pub fn check_forced(ours: &Request) -> Result<(), String> {
    let Some(original) = std::env::var_os("SSH_ORIGINAL_COMMAND") else {
        return Ok(());
    };
    let original = original.to_string_lossy().into_owned();
    let words = shell_words::split(&original).unwrap_or_default();
    let asked = words.windows(2).find_map(|w| match w[0].as_str() {
        "--root" => Some(Request::Root(w[1].clone())),
        "--volume" => Some(Request::Volume(w[1].clone())),
        _ => None,
    });
    let same = match (&asked, ours) {
        (Some(Request::Root(a)), Request::Root(o)) => {
            a.trim_end_matches('/') == o.trim_end_matches('/')
        }
        (Some(a), o) => a == o,
        (None, _) => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "this key is restricted to {}; refusing the request `{original}`",
            match ours {
                Request::Root(r) => format!("root {r}"),
                Request::Volume(v) => format!("volume {v}"),
            }
        ))
    }
}
