//! `--exclude` and `--exclude-from`: gitignore syntax, matched against paths
//! relative to the source root. Excluded entries are neither sent nor, on the
//! target, deleted (rsync's behaviour without --delete-excluded).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

#[derive(Clone, Debug)]
pub struct Excluder {
    rules: Option<Gitignore>,
}

impl Excluder {
    pub fn none() -> Excluder {
        Excluder { rules: None }
    }

    /// Builds from patterns and pattern files; an invalid pattern is an error.
    pub fn new(patterns: &[String], files: &[std::path::PathBuf]) -> Result<Excluder, String> {
        if patterns.is_empty() && files.is_empty() {
            return Ok(Excluder::none());
        }
        let mut b = GitignoreBuilder::new("");
        for f in files {
            let text = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            for line in text.split(|&c| c == b'\n') {
                let line = String::from_utf8_lossy(line);
                b.add_line(Some(f.clone()), line.trim_end_matches('\r'))
                    .map_err(|e| format!("{}: {e}", f.display()))?;
            }
        }
        for p in patterns {
            b.add_line(None, p)
                .map_err(|e| format!("--exclude {p:?}: {e}"))?;
        }
        let rules = b.build().map_err(|e| e.to_string())?;
        Ok(Excluder { rules: Some(rules) })
    }

    pub fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        match &self.rules {
            None => false,
            Some(g) => g
                .matched(Path::new(OsStr::from_bytes(rel)), is_dir)
                .is_ignore(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_semantics() {
        let e =
            Excluder::new(&["*.log".into(), "/build/".into(), "!keep.log".into()], &[]).unwrap();
        assert!(e.excluded(b"a/x.log", false));
        assert!(!e.excluded(b"a/keep.log", false));
        assert!(e.excluded(b"build", true));
        assert!(!e.excluded(b"build", false));
        assert!(!e.excluded(b"a/build", true));
    }
}
