//! TARGET forms of the command line (DESIGN.md section 5), and the one
//! check that a local replica and its source do not contain each other.

use std::path::{Component, Path, PathBuf};

/// Where a replica lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A directory on this machine: `/path`, `relative/path` or `file:///path`.
    Local(PathBuf),
    /// A directory or named volume on another machine, reached over SSH.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        place: Place,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Path(PathBuf),
    Volume(String),
}

impl Target {
    /// Whether changed files travel whole rather than as deltas, unless
    /// asked otherwise: to a local target, as in rsync, since a delta there
    /// reads the old copy twice to save a copy the slave makes anyway.
    pub fn whole_files_by_default(&self) -> bool {
        matches!(self, Target::Local(_))
    }

    /// Parses a TARGET argument. Local paths win over the `host:path` form
    /// when they contain a slash before the colon (as rsync does).
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!("{s}: a file:// URL needs an absolute path"));
            }
            return Ok(Target::Local(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("ssh://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => return Err(format!("{s}: an ssh:// URL needs a path")),
            };
            let (user, hostport) = split_user(authority);
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                    let port = p.parse().map_err(|_| format!("{s}: bad port {p:?}"))?;
                    (h, Some(port))
                }
                _ => (hostport, None),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("{s}: missing host"));
            }
            return Ok(Target::Ssh {
                user,
                host: host.to_string(),
                port,
                place: Place::Path(PathBuf::from(path)),
            });
        }
        let colon = s.find(':');
        let slash = s.find('/');
        match colon {
            Some(c) if slash.is_none_or(|sl| c < sl) && c > 0 => {
                let (user, host) = split_user(&s[..c]);
                let rest = &s[c + 1..];
                let place = match rest.strip_prefix(':') {
                    Some(vol) if !vol.is_empty() => Place::Volume(vol.to_string()),
                    Some(_) => return Err(format!("{s}: missing volume name")),
                    None if rest.is_empty() => return Err(format!("{s}: missing remote path")),
                    None => Place::Path(PathBuf::from(rest)),
                };
                Ok(Target::Ssh {
                    user,
                    host: host.to_string(),
                    port: None,
                    place,
                })
            }
            _ if s.is_empty() => Err("empty target".into()),
            _ => Ok(Target::Local(PathBuf::from(s))),
        }
    }
}

/// Refuses a local target inside the source (the replica would replicate
/// itself, deeper at every round) or a source inside the target (the
/// replica's deletions would remove the source), after resolving symlinks.
/// A target that does not exist yet is judged by its deepest existing
/// ancestor. SSH targets are another machine's paths and are not judged
/// (a `localhost` target cannot be told from a remote one).
pub fn check_nesting(source: &Path, target: &Target) -> Result<(), String> {
    let Target::Local(t) = target else {
        return Ok(());
    };
    // A missing source is reported by whoever opens it, with its own code.
    let (Ok(s), Some(t)) = (source.canonicalize(), resolve(t)) else {
        return Ok(());
    };
    if s == t {
        return Err(format!(
            "source and target are the same directory ({})",
            s.display()
        ));
    }
    if t.starts_with(&s) {
        return Err(format!(
            "target {} is inside the source {}: the replica would replicate itself",
            t.display(),
            s.display()
        ));
    }
    if s.starts_with(&t) {
        return Err(format!(
            "source {} is inside the target {}: replicating would delete the source",
            s.display(),
            t.display()
        ));
    }
    Ok(())
}

/// `path` with symlinks resolved as far as it exists, the rest appended.
fn resolve(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    let base = loop {
        if let Ok(c) = existing.canonicalize() {
            break c;
        }
        rest.push(existing.components().next_back()?.as_os_str().to_owned());
        existing = existing.parent()?;
    };
    let mut out = base;
    for name in rest.iter().rev() {
        match Path::new(name).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => out.push(name),
        }
    }
    Some(out)
}

fn split_user(s: &str) -> (Option<String>, &str) {
    match s.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(Target::parse("/a/b").unwrap(), Target::Local("/a/b".into()));
        assert_eq!(Target::parse("rel").unwrap(), Target::Local("rel".into()));
        assert_eq!(
            Target::parse("./x:y").unwrap(),
            Target::Local("./x:y".into())
        );
        assert_eq!(
            Target::parse("file:///a").unwrap(),
            Target::Local("/a".into())
        );
        assert_eq!(
            Target::parse("ssh://u@h:2222/p").unwrap(),
            Target::Ssh {
                user: Some("u".into()),
                host: "h".into(),
                port: Some(2222),
                place: Place::Path("/p".into())
            }
        );
        assert_eq!(
            Target::parse("h::vol").unwrap(),
            Target::Ssh {
                user: None,
                host: "h".into(),
                port: None,
                place: Place::Volume("vol".into())
            }
        );
        assert!(Target::parse("h:").is_err());
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::os::unix::fs::symlink(&src, t.path().join("alias")).unwrap();
        let local = |p: PathBuf| Target::Local(p);
        assert!(check_nesting(&src, &local(src.join("mirror/deeper"))).is_err());
        assert!(check_nesting(&src, &local(t.path().join("alias/m"))).is_err());
        assert!(check_nesting(&src.join("."), &local(t.path().to_path_buf())).is_err());
        assert!(check_nesting(&src, &local(src.clone())).is_err());
        check_nesting(&src, &local(t.path().join("srcx"))).unwrap();
        check_nesting(&src, &local(src.join("../dst"))).unwrap();
        assert!(Target::parse("file://rel").is_err());
    }
}
