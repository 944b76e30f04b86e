//! Generic file-system helpers: temporary names, sparse and positioned writes.

use std::io;
use std::os::fd::BorrowedFd;

use crate::meta::TEMP_PREFIX;

/// A fresh temporary name: fixed length, so it fits wherever the real name fits.
pub fn temp_name() -> Vec<u8> {
    let mut n = TEMP_PREFIX.to_vec();
    n.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
    n
}

/// Writes `data` at `off`, leaving all-zero 4 KiB blocks as holes.
pub fn write_sparse(fd: BorrowedFd, off: u64, data: &[u8]) -> io::Result<()> {
    const B: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        let end = (i + B).min(data.len());
        if data[i..end].iter().all(|&b| b == 0) {
            i = end;
            continue;
        }
        let mut j = end;
        while j < data.len() {
            let e = (j + B).min(data.len());
            if data[j..e].iter().all(|&b| b == 0) {
                break;
            }
            j = e;
        }
        write_all_at(fd, &data[i..j], off + i as u64)?;
        i = j;
    }
    Ok(())
}

pub fn write_all_at(fd: BorrowedFd, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pwrite(fd, buf, off)?;
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}
