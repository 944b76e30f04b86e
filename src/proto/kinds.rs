//! The one table of message kinds: code, name and which side may send it.

/// Who sends a message kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Master,
    Slave,
    Either,
}

macro_rules! kinds {
    ($($code:literal $konst:ident $name:literal $side:ident,)*) => {
        /// Kind codes, as sent in each frame's first byte.
        pub mod k {
            $(pub const $konst: u8 = $code;)*
        }
        /// Every kind: code, name (for messages), sender.
        pub const KINDS: &[(u8, &str, Side)] = &[$(($code, $name, Side::$side),)*];
    };
}

kinds! {
    1 HELLO "hello" Either,
    2 LIST_DIR "list-dir" Master,
    3 DIR_ENTRIES "dir-entries" Slave,
    4 MKDIR "mkdir" Master,
    5 SYMLINK "symlink" Master,
    6 MKNOD "mknod" Master,
    7 REMOVE "remove" Master,
    8 LINK "link" Master,
    9 SET_META "set-meta" Master,
    10 DIR_META "dir-meta" Master,
    11 SIG_REQ "sig-req" Master,
    12 SIG_CHUNK "sig-chunk" Slave,
    13 SIG_END "sig-end" Slave,
    14 SIG_FAIL "sig-fail" Slave,
    15 FILE_BEGIN "file-begin" Master,
    16 FILE_DATA "file-data" Master,
    17 FILE_DELTA "file-delta" Master,
    18 FILE_END "file-end" Master,
    19 FILE_ABORT "file-abort" Master,
    20 VERIFIED "verified" Slave,
    21 BARRIER "barrier" Master,
    22 BARRIER_ACK "barrier-ack" Slave,
    23 OP_ERROR "op-error" Slave,
    24 FINISH "finish" Master,
    25 FINISHED "finished" Slave,
    26 FATAL "fatal" Either,
    27 FILE_HOLE "file-hole" Master,
    28 RENAME "rename" Master,
    29 LIST_NAMES "list-names" Master,
}

fn find(kind: u8) -> Option<&'static (u8, &'static str, Side)> {
    KINDS.iter().find(|(c, _, _)| *c == kind)
}

pub fn name_of(kind: u8) -> &'static str {
    find(kind).map_or("unknown", |(_, n, _)| n)
}

pub fn sender_of(kind: u8) -> Option<Side> {
    find(kind).map(|(_, _, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_dense() {
        for (i, (code, _, _)) in KINDS.iter().enumerate() {
            assert_eq!(*code as usize, i + 1);
        }
    }
}
