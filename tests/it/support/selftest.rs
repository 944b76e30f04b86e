//! Tests of the support code itself: the comparator must pass an exact copy and must
//! fail on every single aspect `sync` preserves. Needs no georep, only `cp`.

use std::os::unix::fs::MetadataExt;
use std::panic;
use std::path::Path;

use rustix::fs::FileType;

use super::fixture::*;
use super::fs::*;
use super::tree::*;
use super::TestDir;

/// A mutation of one aspect of the copy, and a text every difference line must hold.
struct Case {
    name: &'static str,
    mutate: fn(&Path),
    expect: &'static str,
    needs_root: bool,
}

const fn case(name: &'static str, mutate: fn(&Path), expect: &'static str) -> Case {
    Case {
        name,
        mutate,
        expect,
        needs_root: false,
    }
}

const fn root_case(name: &'static str, mutate: fn(&Path), expect: &'static str) -> Case {
    Case {
        name,
        mutate,
        expect,
        needs_root: true,
    }
}

/// Replaces `path` by what `make` creates, restoring its parent directory's mtime.
fn replace(path: &Path, make: impl FnOnce(&Path)) {
    keeping_mtime(path.parent().unwrap(), || {
        remove(path);
        make(path);
    });
}

const CASES: &[Case] = &[
    case(
        "bytes, same size and mtime",
        |b| rewrite_keep_mtime(&b.join("files/f4096")),
        "files/f4096: content differs from byte 0",
    ),
    case(
        "size",
        |b| {
            let p = b.join("files/f100000");
            keeping_mtime(&p, || truncate(&p, 99_999));
        },
        "files/f100000: size 100000 != 99999",
    ),
    case(
        "file mode",
        |b| chmod(&b.join("modes/setuid"), 0o755),
        "modes/setuid: mode 4755 != 0755",
    ),
    case(
        "dir mode",
        |b| chmod(&b.join("modes/sticky_dir"), 0o777),
        "modes/sticky_dir: mode 1777 != 0777",
    ),
    root_case(
        "owner",
        |b| lchown(&b.join("files/one"), 1, 2),
        "files/one: owner 0:0 != 1:2",
    ),
    root_case(
        "symlink owner",
        |b| lchown(&b.join("owners/link"), 0, 0),
        "owners/link: owner 4321:8765 != 0:0",
    ),
    case(
        "file mtime nanoseconds",
        |b| {
            let p = b.join("nested/a/sibling");
            let (s, ns) = mtime_ns(&p);
            set_mtime_ns(&p, s, ns + 1);
        },
        "nested/a/sibling: mtime",
    ),
    case(
        "dir mtime",
        |b| set_mtime_ns(&b.join("nested/empty_dir"), 1, 2),
        "nested/empty_dir: mtime",
    ),
    case(
        "symlink mtime",
        |b| set_mtime_ns(&b.join("links/dangling"), 1, 2),
        "links/dangling: mtime",
    ),
    case("root mtime", |b| set_mtime_ns(b, 1, 2), ".: mtime"),
    case("root mode", |b| chmod(b, 0o755), ".: mode 0750 != 0755"),
    case(
        "xattr value",
        |b| set_xattr(&b.join("xattrs/file"), "user.comment", b"hellO"),
        "xattrs/file: xattr user.comment differs",
    ),
    case(
        "xattr removed",
        |b| remove_xattr(&b.join("xattrs/file"), "user.empty"),
        "xattrs/file: xattr user.empty only in a",
    ),
    case(
        "xattr added on a dir",
        |b| set_xattr(&b.join("nested"), "user.new", b"1"),
        "nested: xattr user.new only in b",
    ),
    root_case(
        "xattr added on a symlink",
        |b| set_xattr(&b.join("links/relative"), "trusted.new", b"1"),
        "links/relative: xattr trusted.new only in b",
    ),
    case(
        "ACL entry",
        |b| {
            let acl = posix_acl(&[
                (AclTag::UserObj, 6),
                (AclTag::User(1234), 6),
                (AclTag::GroupObj, 4),
                (AclTag::Group(5678), 2),
                (AclTag::Mask, 6),
                (AclTag::Other, 0),
            ]);
            set_xattr(&b.join("acl/file"), "system.posix_acl_access", &acl);
        },
        "acl/file: xattr system.posix_acl_access differs",
    ),
    case(
        "symlink target",
        |b| {
            let p = b.join("links/relative");
            let (s, ns) = mtime_ns(&p);
            replace(&p, |p| symlink("../files/empty", p));
            set_mtime_ns(&p, s, ns);
        },
        "links/relative: symlink target ../files/one != ../files/empty",
    ),
    case(
        "hard-link group split",
        |b| {
            let p = b.join("hardlinks/more/tri_3");
            let tmp = b.join("hardlinks/more/tmp");
            keeping_mtime(&b.join("hardlinks/more"), || {
                cp_a(&p, &tmp);
                rename(&tmp, &p);
            });
        },
        "hard-link group only in",
    ),
    case(
        "type",
        |b| {
            let p = b.join("special/fifo");
            let m = lstat(&p);
            replace(&p, |p| write_file(p, b""));
            chmod(&p, m.mode() & 0o7777);
            set_mtime_ns(&p, m.mtime(), m.mtime_nsec());
        },
        "special/fifo: type fifo != regular file",
    ),
    root_case(
        "device numbers",
        |b| {
            let p = b.join("special/chardev");
            let m = lstat(&p);
            replace(&p, |p| mknod(p, FileType::CharacterDevice, 0o600, 1, 5));
            set_mtime_ns(&p, m.mtime(), m.mtime_nsec());
        },
        "special/chardev: rdev 0x103 != 0x105",
    ),
    case(
        "missing subtree",
        |b| keeping_mtime(&b.join("nested"), || remove(&b.join("nested/a"))),
        "nested/a: only in a (directory with 4 entries below)",
    ),
    case(
        "extra file",
        |b| {
            keeping_mtime(&b.join("files"), || {
                write_file(&b.join("files/extra"), b"x")
            })
        },
        "files/extra: only in b (regular file)",
    ),
    case(
        "holes filled",
        |b| {
            let p = b.join("sparse/holes");
            keeping_mtime(&p, || write_file(&p, &read_file(&p)));
        },
        "sparse/holes: holes not preserved",
    ),
    case(
        "non-UTF-8 name shown escaped",
        |b| rewrite_keep_mtime(&b.join(bpath(b"names/\xff\xfe"))),
        "names/\\xff\\xfe: content differs",
    ),
    case(
        "newline name shown escaped",
        |b| rewrite_keep_mtime(&b.join("names/new\nline")),
        "names/new\\nline: content differs",
    ),
];

#[test]
fn comparator_passes_a_copy_and_fails_each_mutation() {
    let t = TestDir::new("comparator");
    build_full_tree(&t.src);
    let copy = t.path("copy");
    cp_a(&t.src, &copy);
    assert_trees_equal(&t.src, &copy);
    assert_no_temporaries(&copy);

    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        if case.needs_root && !is_root() {
            continue;
        }
        let b = t.path(format!("case{i}"));
        cp_a(&t.src, &b);
        (case.mutate)(&b);
        let diffs = tree_diff(&t.src, &b);
        if diffs.is_empty() || !diffs.iter().all(|d| d.contains(case.expect)) {
            failures.push(format!(
                "{}: expected only {:?}, got {diffs:#?}",
                case.name, case.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "comparator self-test failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn comparator_reports_every_difference_and_can_ignore_paths() {
    let t = TestDir::new("comparator_all");
    build_full_tree(&t.src);
    let b = t.path("b");
    cp_a(&t.src, &b);
    chmod(&b.join("modes/all"), 0o600);
    rewrite_keep_mtime(&b.join("files/f4095"));
    keeping_mtime(&b.join("nested"), || {
        write_file(&b.join("nested/extra/x"), b"x")
    });
    let diffs = tree_diff(&t.src, &b);
    assert_eq!(
        diffs,
        [
            "files/f4095: content differs from byte 0",
            "modes/all: mode 0777 != 0600",
            "nested/extra: only in b (directory with 1 entries below)",
        ]
    );

    let ignored = [
        Path::new("files/f4095"),
        Path::new("modes/all"),
        Path::new("nested/extra"),
    ];
    assert_trees_equal_ignoring(&t.src, &b, &ignored);
}

#[test]
fn temporaries_are_detected_anywhere() {
    let t = TestDir::new("temporaries");
    write_file(&t.src.join("a/b/.georep.tm"), b"not quite the prefix");
    assert_no_temporaries(&t.src);
    write_file(&t.src.join("a/b/.georep.tmp.123"), b"partial");
    let caught = panic::catch_unwind(|| assert_no_temporaries(&t.src));
    assert!(caught.is_err(), "a temporary went unnoticed");
}

#[test]
fn fixture_is_what_it_claims() {
    let t = TestDir::new("fixture");
    build_full_tree(&t.src);
    let tree = walk(&t.src);

    let holes = &tree[Path::new("sparse/holes")];
    assert_eq!(holes.size(), 64 * MIB);
    assert!(
        holes.blocks() * 512 < MIB,
        "sparse file allocates {} bytes",
        holes.blocks() * 512
    );

    assert_eq!(tree[Path::new("hardlinks/tri_1")].nlink(), 3);
    assert_eq!(tree[Path::new("hardlinks/pair_b")].nlink(), 2);
    let longest = tree
        .keys()
        .map(|p| t.src.join(p).as_os_str().len())
        .max()
        .unwrap();
    assert!(
        (3000..4096).contains(&longest),
        "deepest path is {longest} bytes"
    );
    assert!(
        tree.values().all(|m| m.mtime_nsec() != 0),
        "an mtime has no nanoseconds"
    );
    assert_eq!(lstat(&t.src.join("modes/setuid")).mode() & 0o7777, 0o4755);
    if is_root() {
        assert_eq!(
            lstat(&t.src.join("owners/setuid_owned")).mode() & 0o7777,
            0o4750
        );
        assert_eq!(lstat(&t.src.join("owners/setuid_owned")).uid(), 1234);
    }
    let acl = xattr::get(t.src.join("acl/file"), "system.posix_acl_access")
        .unwrap()
        .unwrap();
    assert_eq!(acl.len(), 4 + 6 * 8, "ACL stored with all 6 entries");
}

#[test]
fn show_escapes_what_is_not_printable_utf8() {
    assert_eq!(show(Path::new("")), ".");
    assert_eq!(
        show(&bpath(b"a/\xff\xfe/new\nline\\")),
        "a/\\xff\\xfe/new\\nline\\\\"
    );
    assert_eq!(show(Path::new("ünï")), "ünï");
}
