//! `--bwlimit` (session key `bwlimit`): what the master writes to its link,
//! paced by a token bucket so that the rate is steady, not bursts of a
//! second's worth followed by silence.
//!
//! The limit applies to the protocol stream as the transport sees it (frame
//! headers included; SSH's own framing and encryption are not counted), in
//! one place: the connection's sender thread (`conn.rs`) writes through a
//! [`Throttled`] writer. Replies from the slave are not limited, as with
//! rsync, whose `--bwlimit` paces the data it sends.

use std::io::{self, Write};
use std::time::{Duration, Instant};

/// rsync refuses rates below this (bytes per second).
pub const MIN_RATE: u64 = 512;

/// Parses rsync's `--bwlimit` syntax into bytes per second; None is no limit.
///
/// A number (fractions allowed) is KiB/s. Suffixes, case-insensitive:
/// `K`/`KiB` 1024, `M`/`MiB` 1024², `G`/`GiB` 1024³; `KB`, `MB`, `GB` are
/// powers of 1000 and `B` is bytes, as in rsync. 0 means unlimited.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let bad = |why: &str| {
        format!(
            "bwlimit {text:?}: {why} (a rate in KiB/s, or with a suffix K, M, G, \
             e.g. 512, 1.5M, 10MB; 0 for no limit)"
        )
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() {
        return Err(bad("not a number"));
    }
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let unit: f64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "k" | "kib" => 1024.0,
        "b" => 1.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        _ => return Err(bad("unknown suffix")),
    };
    let rate = value * unit;
    if rate == 0.0 {
        return Ok(None);
    }
    if !rate.is_finite() || rate >= 1e18 {
        return Err(bad("too large"));
    }
    if rate < MIN_RATE as f64 {
        return Err(bad(&format!("below {MIN_RATE} bytes/s")));
    }
    Ok(Some(rate as u64))
}

/// A session's `bwlimit` as the operator wrote it (`10M`, `1024`), checked
/// when it is read: TOML numbers and strings are both taken.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    text: String,
    bytes_per_second: Option<u64>,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        Ok(Rate {
            text: text.to_string(),
            bytes_per_second: parse_rate(text)?,
        })
    }

    /// None: no limit.
    pub fn bytes_per_second(&self) -> Option<u64> {
        self.bytes_per_second
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Float(x) => x.to_string(),
            Raw::Text(t) => t,
        };
        Rate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A token bucket: `rate` bytes per second, at most `capacity` at once.
/// Pure arithmetic on the instants it is given, so it is tested without
/// sleeping; [`Throttled`] does the waiting.
#[derive(Debug)]
pub struct Bucket {
    rate: u64,
    capacity: u64,
    /// Bytes that may go now (fractional: refills are continuous).
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket. Its capacity is 50 ms worth of the rate (at least
    /// 512 bytes, at most 1 MiB): small enough to keep the flow steady,
    /// large enough for few system calls.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let capacity = (rate / 20).clamp(MIN_RATE, 1 << 20);
        Bucket {
            rate,
            capacity,
            tokens: capacity as f64,
            last: now,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.capacity as f64);
        self.last = self.last.max(now);
    }

    /// Asks to write `want` bytes at `now`: Ok(n) grants n of them (1 ≤ n ≤
    /// capacity, taken from the bucket), Err(d) says to ask again after d.
    /// A grant waits for min(want, capacity) tokens, so writes are not
    /// split into dribbles.
    pub fn take(&mut self, want: u64, now: Instant) -> Result<u64, Duration> {
        self.refill(now);
        let n = want.clamp(1, self.capacity);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            Ok(n)
        } else {
            let missing = n as f64 - self.tokens;
            // Rounded up, so that the next ask finds the tokens there.
            let wait = (missing / self.rate as f64 * 1e9).ceil() as u64;
            Err(Duration::from_nanos(wait.max(1)))
        }
    }
}

/// A writer that lets at most the bucket's rate through.
pub struct Throttled<W> {
    inner: W,
    bucket: Bucket,
}

impl<W: Write> Throttled<W> {
    pub fn new(inner: W, rate: u64) -> Throttled<W> {
        Throttled {
            inner,
            bucket: Bucket::new(rate, Instant::now()),
        }
    }
}

impl<W: Write> Write for Throttled<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = loop {
            match self.bucket.take(buf.len() as u64, Instant::now()) {
                Ok(n) => break n as usize,
                Err(wait) => std::thread::sleep(wait),
            }
        };
        // Tokens for bytes the inner writer did not take are not returned:
        // a short write is rare, and erring slow is what a limit is for.
        self.inner.write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Paced like any other write: the default copies through [`Write`].
impl<W: crate::transport::Sink> crate::transport::Sink for Throttled<W> {}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    #[test]
    fn rsync_syntax() {
        assert_eq!(parse_rate("1024"), Ok(Some(MIB)), "a bare number is KiB/s");
        assert_eq!(parse_rate("0"), Ok(None), "0 is no limit");
        assert_eq!(parse_rate("0M"), Ok(None));
        assert_eq!(parse_rate("100k"), Ok(Some(100 * KIB)));
        assert_eq!(parse_rate("100KiB"), Ok(Some(100 * KIB)));
        assert_eq!(parse_rate("100KB"), Ok(Some(100_000)));
        assert_eq!(parse_rate("1.5m"), Ok(Some(3 * MIB / 2)));
        assert_eq!(parse_rate("2MiB"), Ok(Some(2 * MIB)));
        assert_eq!(parse_rate("10MB"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate("1g"), Ok(Some(1024 * MIB)));
        assert_eq!(parse_rate("1GB"), Ok(Some(1_000_000_000)));
        assert_eq!(parse_rate("4096b"), Ok(Some(4096)));
        assert_eq!(parse_rate(" 8 "), Ok(Some(8 * KIB)));
        for bad in [
            "",
            "fast",
            "-1",
            "1x",
            "1.2.3",
            "M",
            "1 M",
            "100b",
            "1e30",
            "99999999999999999G",
        ] {
            let e = parse_rate(bad).expect_err(bad);
            assert!(e.contains("bwlimit"), "{bad}: {e}");
        }
        assert!(parse_rate("100b").unwrap_err().contains("512 bytes/s"));
    }

    #[test]
    fn session_key_takes_numbers_and_strings() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct C {
            bwlimit: Rate,
        }
        let c: C = toml::from_str("bwlimit = 1024").unwrap();
        assert_eq!(c.bwlimit.bytes_per_second(), Some(MIB));
        let c: C = toml::from_str("bwlimit = 1.5").unwrap();
        assert_eq!(c.bwlimit.bytes_per_second(), Some(1536));
        let c: C = toml::from_str("bwlimit = \"10M\"").unwrap();
        assert_eq!(c.bwlimit.bytes_per_second(), Some(10 * MIB));
        assert_eq!(toml::to_string(&c).unwrap().trim(), "bwlimit = \"10M\"");
        let c: C = toml::from_str("bwlimit = 0").unwrap();
        assert_eq!(c.bwlimit.bytes_per_second(), None);
        let e = toml::from_str::<C>("bwlimit = \"fast\"").err().unwrap();
        assert!(e.to_string().contains("not a number"), "{e}");
        assert!(toml::from_str::<C>("bwlimit = -5").is_err());
    }

    #[test]
    fn capacity_is_50ms_of_rate_within_bounds() {
        let now = Instant::now();
        assert_eq!(Bucket::new(MIB, now).capacity(), MIB / 20);
        assert_eq!(Bucket::new(MIN_RATE, now).capacity(), MIN_RATE);
        assert_eq!(Bucket::new(100 * 1024 * MIB, now).capacity(), MIB);
    }

    #[test]
    fn starts_full_then_waits_for_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(MIB, t0);
        let cap = b.capacity();
        assert_eq!(
            b.take(10 * MIB, t0),
            Ok(cap),
            "a grant is at most the capacity"
        );
        // Empty now: the next full grant needs cap / rate = 50 ms.
        let wait = b.take(10 * MIB, t0).unwrap_err();
        let expect = Duration::from_secs_f64(cap as f64 / MIB as f64);
        assert!(
            wait >= expect && wait < expect + Duration::from_micros(1),
            "{wait:?}"
        );
        assert_eq!(b.take(10 * MIB, t0 + wait), Ok(cap));
    }

    #[test]
    fn small_writes_pass_while_tokens_last() {
        let t0 = Instant::now();
        let mut b = Bucket::new(MIB, t0);
        let cap = b.capacity();
        for _ in 0..cap / 100 {
            assert_eq!(b.take(100, t0), Ok(100));
        }
        assert!(b.take(100, t0).is_err());
        assert_eq!(
            b.take(0, t0 + Duration::from_secs(1)),
            Ok(1),
            "0 asks for 1"
        );
    }

    #[test]
    fn tokens_do_not_pile_up_while_idle() {
        let t0 = Instant::now();
        let mut b = Bucket::new(MIB, t0);
        let cap = b.capacity();
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(u64::MAX, later), Ok(cap));
        assert!(
            b.take(1, later).is_err(),
            "an hour idle buys one bucket only"
        );
    }

    #[test]
    fn long_run_rate_is_the_limit() {
        // Simulated clock: always wait exactly as told, count what went out.
        let rate = 3 * MIB;
        let t0 = Instant::now();
        let mut b = Bucket::new(rate, t0);
        let (mut now, mut sent) = (t0, 0u64);
        let total = 30 * MIB;
        while sent < total {
            match b.take(64 * KIB, now) {
                Ok(n) => sent += n,
                Err(d) => now += d,
            }
        }
        let secs = now.duration_since(t0).as_secs_f64();
        // The first bucket is free; everything after it goes at the rate.
        let ideal = (total - b.capacity()) as f64 / rate as f64;
        assert!(
            (secs - ideal).abs() < 0.01,
            "{secs} s for {total} bytes, ideal {ideal}"
        );
    }

    #[test]
    fn throttled_writer_passes_every_byte_in_order() {
        let mut w = Throttled::new(Vec::new(), 64 * MIB);
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        assert_eq!(w.inner, data);
    }
}
