//! Builders of realistic source trees, and mutations that change one aspect of a file.

use std::fs::File;
use std::path::Path;

use rustix::fs::FileType;

use super::fs::*;
use super::tree::{full_path, walk};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// The mtime base of [`stamp_mtimes`]: 2017-07-14, well clear of "now".
const STAMP_BASE: i64 = 1_500_000_000;

/// Builds a tree exercising everything `sync` preserves, under `root` (created if
/// missing). Parts marked (root) need euid 0 and are left out otherwise, as is anything
/// a non-root reader could not read back (mode 000).
///
/// ```text
/// .                         mode 0750, user.root xattr
/// files/                    empty (0 B), one (1 B), f4095, f4096, f100000, big3m (3 MiB)
/// nested/a/b/c/leaf.txt, nested/a/sibling, nested/empty_dir/
/// links/                    relative -> ../files/one, absolute -> /etc/passwd,
///                           dangling -> ../no/such/file, to_dir -> ../nested/a
/// special/fifo              (root) chardev 1:3, blockdev 7:250
/// hardlinks/pair_a = pair_b; tri_1 = more/tri_2 = more/tri_3
/// modes/                    setuid 4755, setgid 2711, all 0777, all_bits 7777,
///                           sticky_dir/ 1777, setgid_dir/ 2775 (with inner),
///                           (root) none 0000, locked_dir/ 0000 (with inner)
/// owners/ (root)            file 1234:5678, dir/ 1234:5678, setuid_owned 1234:5678
///                           4750, link -> file 4321:8765
/// xattrs/                   file (user.*, empty and binary values; trusted.*,
///                           security.* as root), dir/, link (trusted.*, root)
/// acl/                      file (system.posix_acl_access with a named user and a
///                           mask), dir/ (access and default ACLs)
/// sparse/                   holes: 64 MiB with four 4 KiB extents; all_hole: 8 MiB
/// names/                    \xff\xfe, new\nline, -rf, 255 x 'n', "sp ace\\back",
///                           ünïcødé, .hidden
/// deep/                     a ~3000-byte path of 15 200-byte components
/// ```
/// Every entry gets a distinct nanosecond mtime, directories after their contents.
pub fn build_full_tree(root: &Path) {
    let root_user = is_root();
    mkdir(root);

    let files = root.join("files");
    write_file(&files.join("empty"), b"");
    write_file(&files.join("one"), b"1");
    for (name, len) in [
        ("f4095", 4095),
        ("f4096", 4096),
        ("f100000", 100_000),
        ("big3m", 3 * MIB),
    ] {
        write_random(&files.join(name), len, len);
    }

    let nested = root.join("nested");
    write_file(&nested.join("a/b/c/leaf.txt"), b"leaf\n");
    write_file(&nested.join("a/sibling"), b"sibling\n");
    mkdir(&nested.join("empty_dir"));

    let links = root.join("links");
    mkdir(&links);
    symlink("../files/one", &links.join("relative"));
    symlink("/etc/passwd", &links.join("absolute"));
    symlink("../no/such/file", &links.join("dangling"));
    symlink("../nested/a", &links.join("to_dir"));

    let special = root.join("special");
    mkdir(&special);
    mkfifo(&special.join("fifo"), 0o640);
    if root_user {
        mknod(
            &special.join("chardev"),
            FileType::CharacterDevice,
            0o600,
            1,
            3,
        );
        mknod(
            &special.join("blockdev"),
            FileType::BlockDevice,
            0o660,
            7,
            250,
        );
    }

    let hl = root.join("hardlinks");
    write_file(&hl.join("pair_a"), b"pair\n");
    hard_link(&hl.join("pair_a"), &hl.join("pair_b"));
    write_random(&hl.join("tri_1"), 10_000, 3);
    mkdir(&hl.join("more"));
    hard_link(&hl.join("tri_1"), &hl.join("more/tri_2"));
    hard_link(&hl.join("tri_1"), &hl.join("more/tri_3"));

    let modes = root.join("modes");
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setgid", 0o2711),
        ("all", 0o777),
        ("all_bits", 0o7777),
    ] {
        write_file(&modes.join(name), name.as_bytes());
        chmod(&modes.join(name), mode);
    }
    write_file(&modes.join("setgid_dir/inner"), b"inner\n");
    chmod(&modes.join("setgid_dir"), 0o2775);
    mkdir(&modes.join("sticky_dir"));
    chmod(&modes.join("sticky_dir"), 0o1777);
    if root_user {
        write_file(&modes.join("none"), b"none\n");
        chmod(&modes.join("none"), 0o000);
        write_file(&modes.join("locked_dir/inner"), b"locked\n");
        chmod(&modes.join("locked_dir"), 0o000);
    }

    if root_user {
        let owners = root.join("owners");
        write_file(&owners.join("file"), b"owned\n");
        lchown(&owners.join("file"), 1234, 5678);
        mkdir(&owners.join("dir"));
        lchown(&owners.join("dir"), 1234, 5678);
        write_file(&owners.join("setuid_owned"), b"#!/bin/sh\n");
        lchown(&owners.join("setuid_owned"), 1234, 5678);
        chmod(&owners.join("setuid_owned"), 0o4750);
        symlink("file", &owners.join("link"));
        lchown(&owners.join("link"), 4321, 8765);
    }

    let xa = root.join("xattrs");
    write_file(&xa.join("file"), b"xattrs\n");
    set_xattr(&xa.join("file"), "user.comment", b"hello");
    set_xattr(&xa.join("file"), "user.empty", b"");
    set_xattr(&xa.join("file"), "user.binary", b"\0\x01\xff\xfe\n");
    set_xattr(&xa.join("file"), "user.big", &random_bytes(7, 1000));
    mkdir(&xa.join("dir"));
    set_xattr(&xa.join("dir"), "user.dir", b"d");
    symlink("file", &xa.join("link"));
    if root_user {
        set_xattr(&xa.join("file"), "trusted.georep", b"t");
        set_xattr(&xa.join("file"), "security.georep", b"s");
        // user.* is not allowed on symlinks; trusted.* is.
        set_xattr(&xa.join("link"), "trusted.link", b"l");
    }

    let acl = root.join("acl");
    let entries = [
        (AclTag::UserObj, 6),
        (AclTag::User(1234), 4),
        (AclTag::GroupObj, 4),
        (AclTag::Group(5678), 2),
        (AclTag::Mask, 6),
        (AclTag::Other, 0),
    ];
    write_file(&acl.join("file"), b"acl\n");
    set_xattr(
        &acl.join("file"),
        "system.posix_acl_access",
        &posix_acl(&entries),
    );
    mkdir(&acl.join("dir"));
    set_xattr(
        &acl.join("dir"),
        "system.posix_acl_access",
        &posix_acl(&entries),
    );
    set_xattr(
        &acl.join("dir"),
        "system.posix_acl_default",
        &posix_acl(&entries),
    );

    let sparse = root.join("sparse");
    write_sparse(
        &sparse.join("holes"),
        64 * MIB,
        &[0, 10 * MIB, 33 * MIB + 4 * KIB, 64 * MIB - 4 * KIB],
        11,
    );
    write_sparse(&sparse.join("all_hole"), 8 * MIB, &[], 0);

    let names = root.join("names");
    let long = vec![b'n'; 255];
    let odd: [&[u8]; 7] = [
        b"\xff\xfe",
        b"new\nline",
        b"-rf",
        &long,
        b"sp ace\\back",
        "ünïcødé".as_bytes(),
        b".hidden",
    ];
    for (i, name) in odd.iter().enumerate() {
        write_file(&names.join(bpath(name)), format!("odd {i}\n").as_bytes());
    }

    let mut deep = root.join("deep");
    for i in 0..15u8 {
        deep.push(bpath(&[b'a' + i; 200]));
    }
    write_file(&deep.join("bottom"), b"deep\n");

    chmod(root, 0o750);
    set_xattr(root, "user.root", b"r");
    stamp_mtimes(root);
}

/// Builds `count` files of `size` random bytes each (`large/file_N`), plus a few small
/// ones, for transfers slow enough to be interrupted.
pub fn build_large_files(root: &Path, count: u64, size: u64) {
    for i in 0..count {
        write_random(&root.join(format!("large/file_{i}")), size, 100 + i);
    }
    for i in 0..20 {
        write_file(
            &root.join(format!("small/s{i}")),
            format!("small {i}\n").as_bytes(),
        );
    }
}

/// Gives every entry under `root` its own mtime with a non-zero nanosecond part,
/// children before their directory (writing into a directory changes its mtime).
pub fn stamp_mtimes(root: &Path) {
    for (i, rel) in walk(root).keys().rev().enumerate() {
        let i = i as i64;
        set_mtime_ns(
            &full_path(root, rel),
            STAMP_BASE + i * 3600,
            (i * 7_919_191 + 123_456_789) % 999_999_999 + 1,
        );
    }
}

/// Changes content keeping the size, and sets an mtime in the same second as before
/// with different nanoseconds: only a nanosecond-exact quick check notices.
pub fn touch_same_second(path: &Path) {
    let (sec, nsec) = mtime_ns(path);
    flip_first_byte(path);
    set_mtime_ns(path, sec, (nsec + 1) % 1_000_000_000);
}

/// Changes content keeping the size and the exact mtime: only `--checksum` notices.
pub fn rewrite_keep_mtime(path: &Path) {
    let (sec, nsec) = mtime_ns(path);
    flip_first_byte(path);
    set_mtime_ns(path, sec, nsec);
}

fn flip_first_byte(path: &Path) {
    let mut first = [0u8];
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", show(path)));
    assert_eq!(
        read_full(&mut f, &mut first).unwrap(),
        1,
        "{} is empty",
        show(path)
    );
    write_at(path, 0, &[!first[0]]);
}
