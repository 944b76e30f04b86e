//! Journal batch → round scope: which renames to replay and which entries
//! and directories to merge. Pure functions, unit-tested here.

use std::collections::HashSet;

use crate::journal::{Change, Op};
use crate::replicate::{Reach, Scope};

/// Turns a batch into a round: renames in journal order, then the entries
/// the batch named, each merged with its parent's metadata (and new or
/// moved-in directories whole). None asks for a full crawl (the recorder
/// lost events at the root).
pub fn plan(batch: &[Change]) -> Option<Scope> {
    let mut renames: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut dirs: Vec<(Vec<u8>, Reach)> = Vec::new();
    // A rename inside the tree also arrives as a From and a To: the rename
    // op moves the tree on the slave, so its destination needs no deep merge.
    let moved_to: HashSet<&[u8]> = batch
        .iter()
        .filter(|c| c.op == Op::Rename)
        .filter_map(|c| c.path2.as_deref())
        .collect();
    for c in batch {
        // inotify reports changes inside a just-renamed directory under its
        // old name until notify has moved its watches: follow the renames.
        let path = follow(&renames, &c.path);
        match c.op {
            Op::Rescan if path.is_empty() => return None,
            Op::Rescan => dirs.push((path, Reach::Tree)),
            Op::Rename => {
                let to = c.path2.clone().unwrap_or_default();
                dirs.push(entry_of(&path));
                dirs.push(entry_of(&to));
                // Whole, if a directory: changes made inside it while its
                // watches moved may not have been seen at all.
                dirs.push((to.clone(), Reach::Tree));
                renames.push((path, to));
            }
            Op::MovedTo if moved_to.contains(c.path.as_slice()) => dirs.push(entry_of(&path)),
            // Created or moved in: if it is a directory, its contents may
            // predate its watch, so it is merged whole. (Non-directories
            // among these are dropped when the round stats them.)
            Op::Create | Op::Mkdir | Op::MovedTo => {
                dirs.push(entry_of(&path));
                dirs.push((path, Reach::Tree));
            }
            // A directory's own metadata (which inotify may report as either)
            // is merged with the directory itself.
            Op::Meta | Op::Data => {
                dirs.push(entry_of(&path));
                dirs.push((path, Reach::Names(Vec::new())));
            }
            Op::Remove | Op::MovedFrom => dirs.push(entry_of(&path)),
            Op::Barrier => {}
        }
    }
    Some(Scope::Changes { renames, dirs })
}

/// A round over entries retried or rescanned on their own: each entry, and
/// everything below it if it is a directory (the root: the whole tree).
pub fn entries(paths: &[Vec<u8>]) -> Scope {
    if paths.iter().any(|p| p.is_empty()) {
        return Scope::Full;
    }
    let mut dirs = Vec::new();
    for p in paths {
        dirs.push(entry_of(p));
        dirs.push((p.clone(), Reach::Tree));
    }
    Scope::Changes {
        renames: Vec::new(),
        dirs,
    }
}

/// Whether the batch's latest rename (within `window_ns` of `now_ns`) may
/// still be followed by events that belong with it: its other halves (Both
/// comes last) or, for a directory (`is_dir` asks the source), changes
/// inside it under the old name.
pub fn unsettled(
    batch: &[Change],
    now_ns: i64,
    window_ns: i64,
    is_dir: impl Fn(&[u8]) -> bool,
) -> bool {
    let latest = batch
        .iter()
        .rev()
        .take_while(|c| now_ns - c.time_ns < window_ns)
        .find(|c| matches!(c.op, Op::MovedFrom | Op::MovedTo | Op::Rename));
    match latest {
        None => false,
        Some(c) if c.op != Op::Rename => true,
        Some(c) => is_dir(c.path2.as_deref().unwrap_or_default()),
    }
}

/// An entry as one name of its parent directory (the root: its own metadata).
fn entry_of(path: &[u8]) -> (Vec<u8>, Reach) {
    match path.iter().rposition(|&b| b == b'/') {
        _ if path.is_empty() => (Vec::new(), Reach::Names(Vec::new())),
        Some(i) => (
            path[..i].to_vec(),
            Reach::Names(vec![path[i + 1..].to_vec()]),
        ),
        None => (Vec::new(), Reach::Names(vec![path.to_vec()])),
    }
}

/// Where `path` is now, after the renames seen so far (latest first).
fn follow(renames: &[(Vec<u8>, Vec<u8>)], path: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    for (from, to) in renames.iter().rev() {
        if p.len() > from.len() && p.starts_with(from) && p[from.len()] == b'/' {
            p = [to.as_slice(), &p[from.len()..]].concat();
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(seq: u64, op: Op, path: &[u8], path2: Option<&[u8]>) -> Change {
        Change {
            seq,
            time_ns: seq as i64,
            op,
            path: path.to_vec(),
            path2: path2.map(<[u8]>::to_vec),
        }
    }

    type Renames = Vec<(Vec<u8>, Vec<u8>)>;
    type Dirs = Vec<(Vec<u8>, Reach)>;

    fn scope(batch: &[Change]) -> (Renames, Dirs) {
        match plan(batch) {
            Some(Scope::Changes { renames, dirs }) => (renames, dirs),
            other => panic!("expected a targeted scope, got {other:?}"),
        }
    }

    #[test]
    fn retried_entries_are_merged_whole() {
        let Scope::Changes { renames, dirs } = entries(&[b"a/b".to_vec()]) else {
            panic!("targeted")
        };
        assert!(renames.is_empty());
        assert_eq!(
            dirs,
            vec![
                (b"a".to_vec(), names(&[b"b"])),
                (b"a/b".to_vec(), Reach::Tree)
            ]
        );
        assert!(matches!(entries(&[Vec::new()]), Scope::Full));
    }

    fn names(v: &[&[u8]]) -> Reach {
        Reach::Names(v.iter().map(|n| n.to_vec()).collect())
    }

    #[test]
    fn a_data_change_merges_its_entry_and_its_own_metadata() {
        let (renames, dirs) = scope(&[ch(1, Op::Data, b"d/f\xff", None)]);
        assert!(renames.is_empty());
        assert_eq!(
            dirs,
            vec![
                (b"d".to_vec(), names(&[b"f\xff"])),
                (b"d/f\xff".to_vec(), names(&[]))
            ]
        );
    }

    #[test]
    fn a_change_at_the_top_level_names_the_root() {
        let (_, dirs) = scope(&[ch(1, Op::Remove, b"gone", None)]);
        assert_eq!(dirs, vec![(Vec::new(), names(&[b"gone"]))]);
        let (_, dirs) = scope(&[ch(1, Op::Meta, b"", None)]);
        assert_eq!(dirs[0], (Vec::new(), names(&[])));
    }

    #[test]
    fn created_and_moved_in_directories_are_merged_whole() {
        for op in [Op::Create, Op::Mkdir, Op::MovedTo] {
            let (_, dirs) = scope(&[ch(1, op, b"a/new", None)]);
            assert!(dirs.contains(&(b"a".to_vec(), names(&[b"new"]))), "{op:?}");
            assert!(dirs.contains(&(b"a/new".to_vec(), Reach::Tree)), "{op:?}");
        }
    }

    #[test]
    fn a_rename_is_replayed_and_its_halves_only_touch_the_parents() {
        let batch = [
            ch(1, Op::MovedFrom, b"a/x", None),
            ch(2, Op::MovedTo, b"b/y", None),
            ch(3, Op::Rename, b"a/x", Some(b"b/y")),
        ];
        let (renames, dirs) = scope(&batch);
        assert_eq!(renames, vec![(b"a/x".to_vec(), b"b/y".to_vec())]);
        // The To half is not merged deep: the rename moves the tree.
        let deep: Vec<_> = dirs.iter().filter(|d| d.1 == Reach::Tree).collect();
        assert_eq!(deep, vec![&(b"b/y".to_vec(), Reach::Tree)]);
        assert!(dirs.contains(&(b"a".to_vec(), names(&[b"x"]))));
        assert!(dirs.contains(&(b"b".to_vec(), names(&[b"y"]))));
    }

    #[test]
    fn changes_under_a_renamed_directory_follow_it() {
        let batch = [
            ch(1, Op::Rename, b"old", Some(b"new")),
            // inotify still says "old/..." for a moment.
            ch(2, Op::Data, b"old/sub/f", None),
            ch(3, Op::Data, b"older/f", None),
        ];
        let (_, dirs) = scope(&batch);
        assert!(dirs.contains(&(b"new/sub".to_vec(), names(&[b"f"]))));
        // A sibling sharing a prefix is not a child.
        assert!(dirs.contains(&(b"older".to_vec(), names(&[b"f"]))));
    }

    #[test]
    fn chained_renames_follow_the_latest_first() {
        let batch = [
            ch(1, Op::Rename, b"a", Some(b"b")),
            ch(2, Op::Rename, b"b", Some(b"c")),
            ch(3, Op::Data, b"a/f", None),
        ];
        let (renames, dirs) = scope(&batch);
        assert_eq!(renames.len(), 2);
        // A stale name resolves through the latest rename that matches it (a
        // name reused after a rename belongs to the newer directory); the
        // tree merge of "c", the last destination, covers the rest.
        assert!(dirs.contains(&(b"b".to_vec(), names(&[b"f"]))));
        assert!(dirs.contains(&(b"c".to_vec(), Reach::Tree)));
    }

    #[test]
    fn a_rescan_of_the_root_asks_for_a_full_crawl_and_of_a_subtree_merges_it() {
        assert!(plan(&[ch(1, Op::Data, b"x", None), ch(2, Op::Rescan, b"", None)]).is_none());
        let (_, dirs) = scope(&[ch(1, Op::Rescan, b"deep/dir", None)]);
        assert_eq!(dirs, vec![(b"deep/dir".to_vec(), Reach::Tree)]);
    }

    #[test]
    fn an_incomplete_or_directory_rename_is_unsettled() {
        let now = 1_000;
        let win = 50;
        let from = [ch(990, Op::MovedFrom, b"a", None)];
        assert!(unsettled(&from, now, win, |_| false));
        let file = [ch(990, Op::Rename, b"a", Some(b"b"))];
        assert!(!unsettled(&file, now, win, |_| false));
        assert!(unsettled(&file, now, win, |p| p == b"b"));
        // Old enough: settled whatever it was.
        let old = [ch(900, Op::MovedFrom, b"a", None)];
        assert!(!unsettled(&old, now, win, |_| true));
        assert!(!unsettled(&[], now, win, |_| true));
    }
}
