//! `--itemize-changes` lines, in rsync's `-i` format (`YXcstpoguax path`),
//! and the `--stats` summary, in rsync's words.
//!
//! Y: `>` content sent to a local target (`<` to a remote one), `c` an entry
//! created or replaced without content (directory, symlink, device,
//! special), `h` a hard link, `.` metadata only, `*deleting` a deletion.
//! X: `f` file, `d` directory, `L` symlink, `D` device, `S` fifo or socket.
//! Then what differs: `c` content (`--checksum`), symlink target or device
//! number; `s` size; `t` time; `p` permissions; `o` owner; `g` group; `u`
//! is never set; `a` ACL; `x` other extended attributes; `+` for all of
//! them on a new entry. Directories end in `/`, symlinks with ` -> TARGET`,
//! hard links with ` => NAME`.

use crate::confine::show;
use crate::meta::Kind;
use crate::replicate::observe::{Diff, Item, Summary, What};

/// One `-i` line; `remote`: the target is across SSH (rsync's `<`).
pub fn line(item: &Item<'_>, remote: bool) -> String {
    let name = name(item);
    let sent = if remote { '<' } else { '>' };
    let y = match item.what {
        What::Deleted => return format!("{:<11} {name}", "*deleting"),
        What::Renamed => {
            let from = show(item.target.unwrap_or_default());
            return format!("{:<11} {from} => {name}", "*renaming");
        }
        What::Meta => '.',
        What::Linked { .. } => 'h',
        What::Created | What::Updated if item.kind == Kind::Regular => sent,
        What::Created | What::Updated => 'c',
    };
    let new = matches!(item.what, What::Created | What::Linked { new: true });
    let attrs = if new {
        "+".repeat(9)
    } else {
        letters(&item.diff)
    };
    let suffix = match (item.what, item.target) {
        (What::Linked { .. }, Some(t)) => format!(" => {}", show(t)),
        (_, Some(t)) if item.kind == Kind::Symlink => format!(" -> {}", show(t)),
        _ => String::new(),
    };
    format!("{y}{}{attrs} {name}{suffix}", kind_letter(item.kind))
}

fn name(item: &Item<'_>) -> String {
    match (item.kind, item.path.is_empty()) {
        (Kind::Dir, true) => "./".into(),
        (Kind::Dir, false) => format!("{}/", show(item.path)),
        _ => show(item.path),
    }
}

fn kind_letter(kind: Kind) -> char {
    match kind {
        Kind::Regular => 'f',
        Kind::Dir => 'd',
        Kind::Symlink => 'L',
        Kind::CharDev | Kind::BlockDev => 'D',
        Kind::Fifo | Kind::Socket => 'S',
    }
}

fn letters(d: &Diff) -> String {
    [
        (d.content, 'c'),
        (d.size, 's'),
        (d.time, 't'),
        (d.perms, 'p'),
        (d.owner, 'o'),
        (d.group, 'g'),
        (false, 'u'),
        (d.acl, 'a'),
        (d.xattrs, 'x'),
    ]
    .iter()
    .map(|&(set, c)| if set { c } else { '.' })
    .collect()
}

/// `--stats`: rsync's summary lines, from what georep counts. rsync's file
/// list lines (size, generation and transfer time) have no counterpart:
/// georep streams listings per directory.
pub fn stats(s: &Summary) -> String {
    let rate = (s.bytes_sent + s.bytes_received) as f64 / s.elapsed_seconds.max(1e-3);
    let wire = (s.bytes_sent + s.bytes_received).max(1);
    let speedup = s.total_size as f64 / wire as f64;
    let dry = if s.dry_run { " (DRY RUN)" } else { "" };
    format!(
        "\nNumber of files: {}\n\
         Number of created files: {}\n\
         Number of deleted files: {}\n\
         Number of regular files transferred: {}\n\
         Total file size: {} bytes\n\
         Total transferred file size: {} bytes\n\
         Literal data: {} bytes\n\
         Matched data: {} bytes\n\
         Total bytes sent: {}\n\
         Total bytes received: {}\n\
         \n\
         sent {} bytes  received {} bytes  {:.2} bytes/sec\n\
         total size is {}  speedup is {:.2}{dry}\n",
        commas(s.files_total),
        commas(s.entries_created),
        commas(s.entries_deleted),
        commas(s.files_transferred),
        commas(s.total_size),
        commas(s.transferred_size),
        commas(s.bytes_literal),
        commas(s.bytes_matched),
        commas(s.bytes_sent),
        commas(s.bytes_received),
        commas(s.bytes_sent),
        commas(s.bytes_received),
        rate,
        commas(s.total_size),
        speedup,
    )
}

/// 1234567 → "1,234,567", as rsync prints its counts.
fn commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(what: What, kind: Kind, path: &'a [u8], target: Option<&'a [u8]>) -> Item<'a> {
        Item {
            what,
            kind,
            path,
            diff: Diff::default(),
            target,
        }
    }

    #[test]
    fn rsync_letters() {
        let l = |i: &Item| line(i, false);
        assert_eq!(
            l(&item(What::Created, Kind::Regular, b"a/f", None)),
            ">f+++++++++ a/f"
        );
        assert_eq!(
            line(&item(What::Created, Kind::Regular, b"f", None), true),
            "<f+++++++++ f",
            "sent to a remote target"
        );
        assert_eq!(
            l(&item(What::Created, Kind::Dir, b"d", None)),
            "cd+++++++++ d/"
        );
        assert_eq!(
            l(&item(What::Created, Kind::Symlink, b"l", Some(b"../t"))),
            "cL+++++++++ l -> ../t"
        );
        assert_eq!(
            l(&item(What::Created, Kind::Fifo, b"p", None)),
            "cS+++++++++ p"
        );
        assert_eq!(
            l(&item(What::Created, Kind::BlockDev, b"b", None)),
            "cD+++++++++ b"
        );
        assert_eq!(
            l(&item(
                What::Linked { new: true },
                Kind::Regular,
                b"h",
                Some(b"f")
            )),
            "hf+++++++++ h => f"
        );
        assert_eq!(
            l(&item(What::Deleted, Kind::Dir, b"old", None)),
            "*deleting   old/"
        );
        assert_eq!(
            l(&item(What::Deleted, Kind::Regular, b"x", None)),
            "*deleting   x"
        );

        let mut changed = item(What::Updated, Kind::Regular, b"f", None);
        changed.diff = Diff {
            size: true,
            time: true,
            ..Diff::default()
        };
        assert_eq!(l(&changed), ">f.st...... f");
        changed.what = What::Linked { new: false };
        changed.target = Some(b"g");
        assert_eq!(l(&changed), "hf.st...... f => g");
        let mut meta = item(What::Meta, Kind::Dir, b"", None);
        meta.diff = Diff {
            time: true,
            perms: true,
            owner: true,
            group: true,
            acl: true,
            xattrs: true,
            ..Diff::default()
        };
        assert_eq!(l(&meta), ".d..tpog.ax ./");
        let mut link = item(What::Updated, Kind::Symlink, b"l", Some(b"new"));
        link.diff = Diff {
            content: true,
            time: true,
            ..Diff::default()
        };
        assert_eq!(l(&link), "cLc.t...... l -> new");
        let odd = item(What::Created, Kind::Regular, b"a\nb\xff", None);
        assert_eq!(l(&odd), ">f+++++++++ a\\x0ab\\xff", "names are escaped");
    }

    #[test]
    fn counts_have_commas() {
        assert_eq!(commas(0), "0");
        assert_eq!(commas(999), "999");
        assert_eq!(commas(1000), "1,000");
        assert_eq!(commas(1_234_567), "1,234,567");
        assert_eq!(commas(u64::MAX), "18,446,744,073,709,551,615");
    }
}
