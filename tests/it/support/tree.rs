//! The tree comparator: checks everything `georep sync` promises to preserve (DESIGN.md
//! §5), byte for byte, never following symlinks. `a` is the reference (the source),
//! `b` the replica; only the sparseness check is one-sided.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::fs::{blake3_file, read_full, show};

/// The reserved prefix of the target's temporary files.
pub const TMP_PREFIX: &[u8] = b".georep.tmp.";

/// Slack allowed on the replica of a sparse file: metadata blocks, a partial extent.
const SPARSE_SLACK: u64 = 1 << 20;

/// Every entry under `root`, keyed by path relative to `root` (the root itself is the
/// empty path), in pre-order with siblings sorted by name bytes. Uses lstat only.
pub fn walk(root: &Path) -> BTreeMap<PathBuf, Metadata> {
    walk_except(root, &BTreeSet::new())
}

/// Like [`walk`], leaving out the `ignored` relative paths and everything below them.
fn walk_except(root: &Path, ignored: &BTreeSet<PathBuf>) -> BTreeMap<PathBuf, Metadata> {
    let mut out = BTreeMap::new();
    let meta = fs::symlink_metadata(root).unwrap_or_else(|e| panic!("lstat {}: {e}", show(root)));
    walk_into(root, PathBuf::new(), meta, ignored, &mut out);
    out
}

fn walk_into(
    root: &Path,
    rel: PathBuf,
    meta: Metadata,
    ignored: &BTreeSet<PathBuf>,
    out: &mut BTreeMap<PathBuf, Metadata>,
) {
    let is_dir = meta.is_dir();
    out.insert(rel.clone(), meta);
    if !is_dir {
        return;
    }
    let dir = full_path(root, &rel);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", show(&dir)));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("readdir {}: {e}", show(&dir)));
        let child = rel.join(entry.file_name());
        if ignored.contains(&child) {
            continue;
        }
        let meta = fs::symlink_metadata(entry.path())
            .unwrap_or_else(|e| panic!("lstat {}: {e}", show(&entry.path())));
        walk_into(root, child, meta, ignored, out);
    }
}

/// `root` joined with `rel`, without the trailing slash `join("")` would add (a
/// trailing slash makes lstat follow a symlink).
pub fn full_path(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Every difference between the trees at `a` and `b`, one readable line each, paths
/// escaped. Empty when the trees are equal.
pub fn tree_diff(a: &Path, b: &Path) -> Vec<String> {
    tree_diff_ignoring(a, b, &[])
}

/// Like [`tree_diff`], leaving out the `ignored` relative paths (and their subtrees) on
/// both sides: for extras that `--no-delete` or `--exclude` keep on the target.
pub fn tree_diff_ignoring(a: &Path, b: &Path, ignored: &[&Path]) -> Vec<String> {
    let ignored: BTreeSet<PathBuf> = ignored.iter().map(|p| p.to_path_buf()).collect();
    let mut out = Vec::new();
    for root in [a, b] {
        if let Err(e) = fs::symlink_metadata(root) {
            out.push(format!("{}: cannot lstat the root: {e}", show(root)));
        }
    }
    if !out.is_empty() {
        return out;
    }
    let (ta, tb) = (walk_except(a, &ignored), walk_except(b, &ignored));
    let paths: BTreeSet<&PathBuf> = ta.keys().chain(tb.keys()).collect();
    for rel in paths {
        match (ta.get(rel), tb.get(rel)) {
            (Some(ma), Some(mb)) => compare_entry(
                &full_path(a, rel),
                &full_path(b, rel),
                rel,
                ma,
                mb,
                &mut out,
            ),
            (Some(m), None) => one_sided(rel, m, "a", &ta, &tb, &mut out),
            (None, Some(m)) => one_sided(rel, m, "b", &tb, &ta, &mut out),
            (None, None) => unreachable!(),
        }
    }
    compare_link_groups(&ta, &tb, &mut out);
    out
}

/// Panics with the list of all differences unless the trees are equal.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    assert_trees_equal_ignoring(a, b, &[]);
}

pub fn assert_trees_equal_ignoring(a: &Path, b: &Path, ignored: &[&Path]) {
    let diffs = tree_diff_ignoring(a, b, ignored);
    assert!(
        diffs.is_empty(),
        "trees differ ({} differences)\n  a = {}\n  b = {}\n  {}",
        diffs.len(),
        show(a),
        show(b),
        diffs.join("\n  ")
    );
}

/// Panics if any name under `root` starts with [`TMP_PREFIX`].
pub fn assert_no_temporaries(root: &Path) {
    let temps: Vec<String> = walk(root)
        .keys()
        .filter(|rel| is_temporary(rel))
        .map(|rel| show(rel))
        .collect();
    assert!(
        temps.is_empty(),
        "temporaries left under {}:\n  {}",
        show(root),
        temps.join("\n  ")
    );
}

pub fn is_temporary(rel: &Path) -> bool {
    rel.file_name()
        .is_some_and(|n| n.as_bytes().starts_with(TMP_PREFIX))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Regular,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

impl Kind {
    fn of(m: &Metadata) -> Kind {
        let t = m.file_type();
        if t.is_file() {
            Kind::Regular
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_fifo() {
            Kind::Fifo
        } else if t.is_char_device() {
            Kind::Char
        } else if t.is_block_device() {
            Kind::Block
        } else {
            Kind::Socket
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Kind::Regular => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Char => "char device",
            Kind::Block => "block device",
            Kind::Socket => "socket",
        })
    }
}

/// Reports a path present on one side only, unless an ancestor's report already
/// implies it (its parent is missing, or is not a directory, on the other side).
fn one_sided(
    rel: &Path,
    meta: &Metadata,
    side: &str,
    here: &BTreeMap<PathBuf, Metadata>,
    there: &BTreeMap<PathBuf, Metadata>,
    out: &mut Vec<String>,
) {
    let parent = rel.parent().expect("both roots exist");
    if !there.get(parent).is_some_and(|m| m.is_dir()) {
        return;
    }
    let mut what = Kind::of(meta).to_string();
    if meta.is_dir() {
        let below = here
            .range(rel.to_path_buf()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(rel))
            .count();
        what += &format!(" with {below} entries below");
    }
    out.push(format!("{}: only in {side} ({what})", show(rel)));
}

fn compare_entry(
    pa: &Path,
    pb: &Path,
    rel: &Path,
    ma: &Metadata,
    mb: &Metadata,
    out: &mut Vec<String>,
) {
    let name = show(rel);
    let (ka, kb) = (Kind::of(ma), Kind::of(mb));
    if ka != kb {
        out.push(format!("{name}: type {ka} != {kb}"));
        return;
    }
    if ka != Kind::Symlink && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        out.push(format!(
            "{name}: mode {:04o} != {:04o}",
            ma.mode() & 0o7777,
            mb.mode() & 0o7777
        ));
    }
    if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
        out.push(format!(
            "{name}: owner {}:{} != {}:{}",
            ma.uid(),
            ma.gid(),
            mb.uid(),
            mb.gid()
        ));
    }
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        out.push(format!(
            "{name}: mtime {}.{:09} != {}.{:09}",
            ma.mtime(),
            ma.mtime_nsec(),
            mb.mtime(),
            mb.mtime_nsec()
        ));
    }
    match ka {
        Kind::Regular => {
            compare_contents(pa, pb, ma, mb, &name, out);
            compare_allocation(ma, mb, &name, out);
        }
        Kind::Symlink => {
            let (ta, tb) = (read_link(pa), read_link(pb));
            if ta != tb {
                out.push(format!(
                    "{name}: symlink target {} != {}",
                    show(&ta),
                    show(&tb)
                ));
            }
        }
        Kind::Char | Kind::Block if ma.rdev() != mb.rdev() => {
            out.push(format!("{name}: rdev {:#x} != {:#x}", ma.rdev(), mb.rdev()));
        }
        _ => {}
    }
    compare_xattrs(pa, pb, &name, out);
}

fn read_link(path: &Path) -> PathBuf {
    fs::read_link(path).unwrap_or_else(|e| panic!("readlink {}: {e}", show(path)))
}

/// Streams both files, reporting the first differing offset.
fn compare_contents(
    pa: &Path,
    pb: &Path,
    ma: &Metadata,
    mb: &Metadata,
    name: &str,
    out: &mut Vec<String>,
) {
    if ma.size() != mb.size() {
        out.push(format!("{name}: size {} != {}", ma.size(), mb.size()));
        return;
    }
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", show(p)));
    let (mut fa, mut fb) = (open(pa), open(pb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 18], vec![0u8; 1 << 18]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).unwrap_or_else(|e| panic!("read {}: {e}", show(pa)));
        let nb = read_full(&mut fb, &mut bb).unwrap_or_else(|e| panic!("read {}: {e}", show(pb)));
        let n = na.min(nb);
        // Slice equality is a memcmp: fast even in an unoptimized test build.
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            out.push(format!(
                "{name}: content differs from byte {}",
                offset + i as u64
            ));
            return;
        }
        if na != nb {
            out.push(format!(
                "{name}: content length differs after byte {}",
                offset + n as u64
            ));
            return;
        }
        if na == 0 {
            return;
        }
        offset += na as u64;
    }
}

/// A sparse source file (allocation well below its size) must stay sparse.
fn compare_allocation(ma: &Metadata, mb: &Metadata, name: &str, out: &mut Vec<String>) {
    let (alloc_a, alloc_b) = (ma.blocks() * 512, mb.blocks() * 512);
    let sparse = ma.size() >= SPARSE_SLACK && alloc_a < ma.size() / 2;
    if sparse && alloc_b > alloc_a + SPARSE_SLACK {
        out.push(format!(
            "{name}: holes not preserved: b allocates {alloc_b} bytes, a {alloc_a} (size {})",
            ma.size()
        ));
    }
}

fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    // `xattr::list`/`get` are llistxattr/lgetxattr: they do not follow symlinks.
    let names = xattr::list(path).unwrap_or_else(|e| panic!("llistxattr {}: {e}", show(path)));
    names
        .filter_map(|n| {
            let value =
                xattr::get(path, &n).unwrap_or_else(|e| panic!("lgetxattr {}: {e}", show(path)));
            value.map(|v| (n.as_bytes().to_vec(), v))
        })
        .collect()
}

fn compare_xattrs(pa: &Path, pb: &Path, name: &str, out: &mut Vec<String>) {
    let (xa, xb) = (xattrs(pa), xattrs(pb));
    let keys: BTreeSet<&Vec<u8>> = xa.keys().chain(xb.keys()).collect();
    for key in keys {
        let k = key.escape_ascii();
        match (xa.get(key), xb.get(key)) {
            (Some(va), Some(vb)) if va != vb => out.push(format!(
                "{name}: xattr {k} differs: {} != {}",
                shorten(va),
                shorten(vb)
            )),
            (Some(_), None) => out.push(format!("{name}: xattr {k} only in a")),
            (None, Some(_)) => out.push(format!("{name}: xattr {k} only in b")),
            _ => {}
        }
    }
}

fn shorten(value: &[u8]) -> String {
    let head = &value[..value.len().min(48)];
    let more = if value.len() > head.len() { "..." } else { "" };
    format!("\"{}{more}\" ({} bytes)", head.escape_ascii(), value.len())
}

/// Non-trivial hard-link groups: non-directories of any type (regular files,
/// symlinks, fifos, sockets, devices) sharing an inode, as sorted path lists.
fn link_groups(tree: &BTreeMap<PathBuf, Metadata>) -> BTreeSet<Vec<&PathBuf>> {
    let mut by_inode: HashMap<(u64, u64), Vec<&PathBuf>> = HashMap::new();
    for (rel, m) in tree.iter().filter(|(_, m)| !m.is_dir()) {
        by_inode.entry((m.dev(), m.ino())).or_default().push(rel);
    }
    // The tree iterates in order, so every group is already sorted.
    by_inode.into_values().filter(|g| g.len() > 1).collect()
}

fn compare_link_groups(
    ta: &BTreeMap<PathBuf, Metadata>,
    tb: &BTreeMap<PathBuf, Metadata>,
    out: &mut Vec<String>,
) {
    let (ga, gb) = (link_groups(ta), link_groups(tb));
    let list = |g: &Vec<&PathBuf>| g.iter().map(|p| show(p)).collect::<Vec<_>>().join(", ");
    for g in ga.difference(&gb) {
        out.push(format!("hard-link group only in a: {{{}}}", list(g)));
    }
    for g in gb.difference(&ga) {
        out.push(format!("hard-link group only in b: {{{}}}", list(g)));
    }
}

/// BLAKE3 of every regular file under `root` except temporaries, by relative path.
pub fn content_hashes(root: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    walk(root)
        .into_iter()
        .filter(|(rel, m)| m.is_file() && !is_temporary(rel))
        .map(|(rel, _)| {
            let hash = blake3_file(&root.join(&rel));
            (rel, hash)
        })
        .collect()
}
