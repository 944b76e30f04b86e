//! `--files-from`: the paths a run is limited to, relative to SOURCE, each
//! with its parent directories implied (created with their metadata), as
//! rsync does. A listed directory is replicated with its own metadata but
//! none of its contents unless they are listed too (rsync's `-a
//! --files-from`, which does not recurse). Paths are bytes, never decoded.

use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// A directory's path → the names in it that are listed or lead to a
    /// listed path.
    children: HashMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    /// Paths that lead to a listed path (so must be directories).
    implied: HashSet<Vec<u8>>,
}

impl Selection {
    /// Parses a list: one path per line (per NUL-terminated record with
    /// `nul`, rsync's `--from0`), relative to SOURCE. Leading `/`, `.`
    /// components and repeated slashes are dropped (`./a//b` is `a/b`);
    /// blank lines are ignored; `..` is refused, as is a NUL inside a line.
    pub fn parse(list: &[u8], nul: bool) -> Result<Selection, String> {
        let sep = if nul { 0 } else { b'\n' };
        let mut s = Selection::default();
        for (i, line) in list.split(|&b| b == sep).enumerate() {
            let at = || format!("line {}", i + 1);
            let mut comps = Vec::new();
            for c in line.split(|&b| b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." => {
                        return Err(format!(
                            "{}: {:?} goes above SOURCE (\"..\" is not allowed)",
                            at(),
                            String::from_utf8_lossy(line)
                        ))
                    }
                    c if c.contains(&0) => return Err(format!("{}: a NUL byte in a path", at())),
                    c => comps.push(c),
                }
            }
            if comps.is_empty() {
                // A blank line, or the source root itself (always replicated).
                continue;
            }
            let mut parent = Vec::new();
            for (k, c) in comps.iter().enumerate() {
                s.children
                    .entry(parent.clone())
                    .or_default()
                    .insert(c.to_vec());
                if !parent.is_empty() {
                    parent.push(b'/');
                }
                parent.extend_from_slice(c);
                if k + 1 < comps.len() {
                    s.implied.insert(parent.clone());
                }
            }
        }
        Ok(s)
    }

    /// Whether `name` in directory `dir` is selected (listed, or leads to
    /// a listed path).
    pub fn contains(&self, dir: &[u8], name: &[u8]) -> bool {
        self.children.get(dir).is_some_and(|n| n.contains(name))
    }

    /// The names selected in directory `dir`, sorted.
    pub fn names_in(&self, dir: &[u8]) -> impl Iterator<Item = &[u8]> {
        self.children
            .get(dir)
            .into_iter()
            .flatten()
            .map(Vec::as_slice)
    }

    /// Whether `path` leads to a listed path (so it must be a directory).
    pub fn leads_on(&self, path: &[u8]) -> bool {
        self.implied.contains(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &Selection, dir: &[u8]) -> Vec<Vec<u8>> {
        s.names_in(dir).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn parents_are_implied_and_paths_normalized() {
        let s = Selection::parse(b"a/b/c\n./a//d\n/top\n\n.\nx/\n", false).unwrap();
        assert_eq!(names(&s, b""), [&b"a"[..], b"top", b"x"]);
        assert_eq!(names(&s, b"a"), [&b"b"[..], b"d"]);
        assert_eq!(names(&s, b"a/b"), [b"c"]);
        assert!(s.contains(b"a/b", b"c") && !s.contains(b"a/b", b"e"));
        assert!(
            names(&s, b"x").is_empty(),
            "a listed directory brings no contents"
        );
        assert!(s.leads_on(b"a") && s.leads_on(b"a/b"));
        assert!(!s.leads_on(b"a/b/c") && !s.leads_on(b"top"));
    }

    #[test]
    fn names_are_bytes_and_from0_keeps_newlines() {
        let s = Selection::parse(b"caf\xe9\nnew\nline\n", false).unwrap();
        assert!(s.contains(b"", b"caf\xe9") && s.contains(b"", b"line"));
        let s = Selection::parse(b"new\nline\0dir/f\0", true).unwrap();
        assert!(s.contains(b"", b"new\nline") && s.contains(b"dir", b"f"));
    }

    #[test]
    fn dot_dot_and_nul_are_refused() {
        let e = Selection::parse(b"ok\na/../../etc\n", false).unwrap_err();
        assert!(
            e.starts_with("line 2:") && e.contains("goes above SOURCE"),
            "{e}"
        );
        let e = Selection::parse(b"a\0b\n", false).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
    }

    #[test]
    fn an_empty_list_selects_nothing() {
        for list in [&b""[..], b"\n\n", b".\n/\n"] {
            assert_eq!(names(&Selection::parse(list, false).unwrap(), b"").len(), 0);
        }
    }
}
