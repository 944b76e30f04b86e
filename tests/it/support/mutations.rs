//! Mutations of a `build_full_tree` source, one kind of change each, shared by
//! the one-shot (sync.rs) and live (session.rs) replication tests.

use std::path::Path;

use rustix::fs::FileType;

use super::fixture::*;
use super::fs::*;

pub fn content_same_size_same_second(src: &Path) {
    touch_same_second(&src.join("files/f4096"));
}

pub fn append_to_file(src: &Path) {
    append(&src.join("files/f100000"), b"appended");
}

pub fn truncate_file(src: &Path) {
    truncate(&src.join("files/big3m"), 1000);
}

pub fn change_modes(src: &Path) {
    chmod(&src.join("files/one"), 0o4755);
    chmod(&src.join("modes/setuid"), 0o644);
    chmod(&src.join("modes/sticky_dir"), 0o755);
    chmod(&src.join("modes/all"), 0o2700);
}

pub fn change_owners(src: &Path) {
    if !is_root() {
        return;
    }
    lchown(&src.join("owners/file"), 42, 43);
    lchown(&src.join("owners/link"), 0, 0);
    // chown clears setuid: set it again, the target must end with both.
    lchown(&src.join("owners/setuid_owned"), 1, 1);
    chmod(&src.join("owners/setuid_owned"), 0o4750);
}

pub fn change_xattrs(src: &Path) {
    set_xattr(&src.join("files/one"), "user.new", b"added");
    set_xattr(&src.join("xattrs/file"), "user.comment", b"changed");
    remove_xattr(&src.join("xattrs/file"), "user.binary");
    remove_xattr(&src.join("acl/dir"), "system.posix_acl_default");
    let acl = posix_acl(&[
        (AclTag::UserObj, 7),
        (AclTag::User(4321), 5),
        (AclTag::GroupObj, 5),
        (AclTag::Mask, 7),
        (AclTag::Other, 1),
    ]);
    set_xattr(&src.join("acl/file"), "system.posix_acl_access", &acl);
    if is_root() {
        set_xattr(&src.join("xattrs/link"), "trusted.link", b"changed");
        remove_xattr(&src.join("xattrs/file"), "trusted.georep");
    }
}

pub fn retarget_symlinks(src: &Path) {
    for (name, target) in [
        ("links/relative", "../files/empty"),
        ("links/absolute", "/etc/group"),
    ] {
        remove(&src.join(name));
        symlink(target, &src.join(name));
    }
}

pub fn file_to_dir(src: &Path) {
    remove(&src.join("files/f4095"));
    write_file(&src.join("files/f4095/inside"), b"now a directory");
}

pub fn dir_to_file(src: &Path) {
    remove(&src.join("nested/a/b"));
    write_file(&src.join("nested/a/b"), b"now a file");
}

pub fn file_to_symlink(src: &Path) {
    remove(&src.join("files/empty"));
    symlink("one", &src.join("files/empty"));
}

pub fn symlink_to_dir(src: &Path) {
    remove(&src.join("links/to_dir"));
    write_file(&src.join("links/to_dir/inside"), b"now a directory");
}

pub fn dir_to_symlink(src: &Path) {
    remove(&src.join("modes/setgid_dir"));
    symlink("../files", &src.join("modes/setgid_dir"));
}

pub fn rename_entries(src: &Path) {
    rename(
        &src.join("nested/a/sibling"),
        &src.join("nested/sibling_moved"),
    );
    rename(&src.join("names"), &src.join("names_renamed"));
}

pub fn rename_over_existing(src: &Path) {
    // A different content and size lands on an existing name.
    rename(&src.join("files/f4096"), &src.join("files/f100000"));
}

pub fn delete_subtree(src: &Path) {
    remove(&src.join("deep"));
}

pub fn hardlink_group_appears(src: &Path) {
    write_file(&src.join("hardlinks/new_1"), b"new group");
    hard_link(&src.join("hardlinks/new_1"), &src.join("nested/new_2"));
    // A file the target already has as a single inode joins a group.
    hard_link(&src.join("modes/all"), &src.join("hardlinks/all_link"));
}

pub fn hardlink_group_grows(src: &Path) {
    hard_link(
        &src.join("hardlinks/pair_a"),
        &src.join("hardlinks/more/pair_c"),
    );
}

pub fn hardlink_group_shrinks(src: &Path) {
    remove(&src.join("hardlinks/more/tri_3"));
}

pub fn hardlink_group_moves(src: &Path) {
    rename(
        &src.join("hardlinks/tri_1"),
        &src.join("nested/tri_1_moved"),
    );
}

pub fn hardlink_group_splits(src: &Path) {
    // pair_b becomes an independent copy with the same content and metadata.
    let tmp = src.join("hardlinks/tmp");
    cp_a(&src.join("hardlinks/pair_b"), &tmp);
    rename(&tmp, &src.join("hardlinks/pair_b"));
}

pub fn change_dir_mtimes(src: &Path) {
    set_mtime_ns(&src.join("nested/empty_dir"), 1_234_567_890, 987_654_321);
    set_mtime_ns(src, 1_300_000_000, 1);
}

pub fn new_special_files(src: &Path) {
    mkfifo(&src.join("special/fifo2"), 0o600);
    if is_root() {
        mknod(
            &src.join("special/chardev2"),
            FileType::CharacterDevice,
            0o644,
            1,
            5,
        );
    }
}

/// A few changes of different kinds to the full fixture: content in place (a delta),
/// same-size same-second content, growth, mode, xattr, symlink, rename, hard link,
/// new and deleted entries.
pub fn a_few_of_each(src: &Path) {
    write_at(&src.join("files/big3m"), MIB, &random_bytes(77, 4096));
    touch_same_second(&src.join("files/f4096"));
    append(&src.join("files/f100000"), b"appended over ssh");
    chmod(&src.join("modes/setuid"), 0o644);
    set_xattr(&src.join("files/one"), "user.over_ssh", b"yes");
    remove(&src.join("links/relative"));
    symlink("../files/empty", &src.join("links/relative"));
    rename(
        &src.join("nested/a/sibling"),
        &src.join("nested/sibling_moved"),
    );
    hard_link(
        &src.join("hardlinks/pair_a"),
        &src.join("hardlinks/more/pair_c"),
    );
    write_file(&src.join("new_dir/new_file"), b"new over ssh");
    remove(&src.join("deep"));
}
