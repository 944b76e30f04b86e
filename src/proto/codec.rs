//! Encoding of the values messages carry: metadata and directory entries.
//!
//! Decoding checks every count against the bytes left in the frame before it
//! allocates, so a claimed count costs no more than the frame that claims it.

use super::frame::{Dec, Enc, WireError};
use crate::meta::{Entry, Kind, Meta};

pub fn put_meta(e: &mut Enc, m: &Meta) {
    e.u32(m.mode)
        .u32(m.uid)
        .u32(m.gid)
        .i64(m.mtime_sec)
        .u32(m.mtime_nsec)
        .u32(m.xattrs.len() as u32);
    for (k, v) in &m.xattrs {
        e.bytes(k).bytes(v);
    }
}

pub fn get_meta(d: &mut Dec) -> Result<Meta, WireError> {
    let mode = d.u32()?;
    let uid = d.u32()?;
    let gid = d.u32()?;
    let mtime_sec = d.i64()?;
    let mtime_nsec = d.u32()?;
    if mode > 0o7777 || mtime_nsec >= 1_000_000_000 {
        return Err(WireError::Malformed("metadata"));
    }
    let n = d.u32()? as usize;
    // Each xattr takes at least 8 bytes: refuse counts the frame cannot hold.
    if n > d.remaining() / 8 {
        return Err(WireError::Malformed("metadata"));
    }
    let mut xattrs = Vec::with_capacity(n);
    for _ in 0..n {
        let k = d.bytes()?.to_vec();
        let v = d.bytes()?.to_vec();
        if k.is_empty() || k.contains(&0) {
            return Err(WireError::Malformed("xattr name"));
        }
        xattrs.push((k, v));
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime_sec,
        mtime_nsec,
        xattrs,
    })
}

pub fn put_entry(e: &mut Enc, en: &Entry) {
    e.bytes(&en.name)
        .u8(en.kind as u8)
        .u64(en.size)
        .u64(en.ino)
        .u64(en.nlink)
        .u64(en.rdev)
        .bytes(&en.target);
    put_meta(e, &en.meta);
    match &en.hash {
        Some(h) => e.u8(1).raw(h),
        None => e.u8(0),
    };
}

pub fn get_entry(d: &mut Dec) -> Result<Entry, WireError> {
    let name = d.bytes()?.to_vec();
    let kind = get_kind(d)?;
    let size = d.u64()?;
    let ino = d.u64()?;
    let nlink = d.u64()?;
    let rdev = d.u64()?;
    let target = d.bytes()?.to_vec();
    let meta = get_meta(d)?;
    let hash = match d.u8()? {
        0 => None,
        1 => Some(d.array::<32>()?),
        _ => return Err(WireError::Malformed("entry hash")),
    };
    Ok(Entry {
        name,
        kind,
        meta,
        size,
        dev: 0,
        ino,
        nlink,
        rdev,
        target,
        hash,
    })
}

pub fn get_kind(d: &mut Dec) -> Result<Kind, WireError> {
    Kind::from_u8(d.u8()?).ok_or(WireError::Malformed("entry kind"))
}

pub fn get_string(d: &mut Dec) -> Result<String, WireError> {
    Ok(String::from_utf8_lossy(d.bytes()?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_hostile_counts() {
        let m = Meta {
            mode: 0o4755,
            uid: 1,
            gid: 2,
            mtime_sec: -5,
            mtime_nsec: 999_999_999,
            xattrs: vec![(b"user.a".to_vec(), vec![0, 1])],
        };
        let mut e = Enc::new(0);
        put_meta(&mut e, &m);
        let mut d = Dec::new(&e.0[1..], "t");
        assert_eq!(get_meta(&mut d).unwrap(), m);
        d.end().unwrap();

        let mut e = Enc::new(0);
        e.u32(0).u32(0).u32(0).i64(0).u32(0).u32(u32::MAX);
        assert!(get_meta(&mut Dec::new(&e.0[1..], "t")).is_err());
    }
}
