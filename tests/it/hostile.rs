//! A hostile master against `georep slave`: frames that try to escape the root
//! (bad paths, planted symlinks, hard links), break the framing, lie about
//! sizes and counts, forge deltas or skip the handshake (DESIGN.md invariants 3
//! and 6, docs/PROTOCOL.md "What the slave refuses").
//!
//! Every case runs in a fresh directory holding `root/` (the replica, with
//! symlinks planted in it that point outside) and `outside/` (a sibling with a
//! canary). A refused case must end with a Fatal frame of code 5 and exit 5,
//! change nothing outside `root/` (names, contents, modes, owners, link counts,
//! xattrs, mtimes and ctimes), change nothing inside it either, leave no
//! `.georep.tmp.*` temporary and never panic.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use georep::meta::{Kind, Meta};
use georep::proto::frame::{read_frame, write_frame, Enc, MAX_FRAME};
use georep::proto::{FsyncPolicy, Hello, Msg, FEATURES, VERSION};

use crate::support::fs::{
    bpath, lstat, random_bytes, read_file, set_mtime_ns, set_xattr, show, symlink, write_file,
};
use crate::support::process::{georep, kill_group, RUN_TIMEOUT};
use crate::support::tree::TMP_PREFIX;
use crate::support::TestDir;

// ---------------------------------------------------------------------------
// The fixture: root/ with planted symlinks, outside/ with a canary.

const CANARY: &[u8] = b"canary: must never change\n";
/// Where the fixture's real files have their mtime: far from "now".
const OLD_TIME: i64 = 1_000_000_000;
/// The mtime hostile SetMeta frames ask for.
const NEW_TIME: i64 = 1_234_567_890;

/// Content of `root/file`, the basis for deltas.
fn old_content() -> Vec<u8> {
    random_bytes(7, 20_000)
}

struct Fixture {
    _dir: TestDir,
    /// The temporary directory holding `root/` and `outside/`.
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    /// Everything but `root/`, exactly.
    world: Snapshot,
    /// `root/`, ignoring directory times and ctimes.
    replica: Snapshot,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        Fixture::with(label, |_| {})
    }

    /// A fixture with `extra` run on the root before the snapshots are taken.
    fn with(label: &str, extra: impl FnOnce(&Path)) -> Fixture {
        let dir = TestDir::new(&dir_name(label));
        let base = dir.root.clone();
        let root = base.join("root");
        let outside = base.join("outside");

        write_file(&outside.join("canary"), CANARY);
        set_xattr(&outside.join("canary"), "user.canary", b"1");
        write_file(&outside.join("sub/deep"), b"deep\n");

        write_file(&root.join("file"), &old_content());
        write_file(&root.join("a/f"), b"f\n");
        symlink("../../outside", &root.join("a/inner"));
        symlink("../outside", &root.join("evil"));
        symlink(&outside, &root.join("evil2"));
        symlink("../outside/canary", &root.join("evilfile"));
        extra(&root);

        for p in [
            "outside/canary",
            "outside/sub/deep",
            "outside/sub",
            "outside",
            "root/file",
            "root/a/f",
        ] {
            set_mtime_ns(&base.join(p), OLD_TIME, 0);
        }
        Fixture {
            world: snapshot(&base, Some(Path::new("root")), true),
            replica: snapshot(&root, None, false),
            _dir: dir,
            base,
            root,
            outside,
        }
    }

    /// Expands a leading `@outside` to the absolute path of `outside/`.
    fn expand(&self, path: &[u8]) -> Vec<u8> {
        match path.strip_prefix(b"@outside") {
            Some(rest) => [self.outside.as_os_str().as_bytes(), rest].concat(),
            None => path.to_vec(),
        }
    }

    fn spawn(&self) -> Slave {
        Slave::spawn(&self.root)
    }

    /// Writes `script` to a fresh slave, closes its stdin and collects everything.
    fn run(&self, script: Script) -> SlaveRun {
        let mut slave = self.spawn();
        slave.send_bytes(&script.0);
        slave.finish()
    }

    /// Nothing outside the root changed, no temporary is left, no panic.
    fn assert_contained(&self, label: &str, run: &SlaveRun) {
        run.assert_no_panic(label);
        let diffs = diff(
            &self.world,
            &snapshot(&self.base, Some(Path::new("root")), true),
        );
        assert!(
            diffs.is_empty(),
            "{label}: the slave changed things outside its root:\n  {}\n{run}",
            diffs.join("\n  ")
        );
        let temps: Vec<String> = snapshot(&self.root, None, false)
            .keys()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(TMP_PREFIX))
            })
            .map(|p| show(p))
            .collect();
        assert!(
            temps.is_empty(),
            "{label}: temporaries left in the root: {temps:?}\n{run}"
        );
    }

    /// The replica is as the fixture made it (directory times aside).
    fn assert_replica_unchanged(&self, label: &str, run: &SlaveRun) {
        let diffs = diff(&self.replica, &snapshot(&self.root, None, false));
        assert!(
            diffs.is_empty(),
            "{label}: a refused session changed the replica:\n  {}\n{run}",
            diffs.join("\n  ")
        );
    }
}

/// A temporary directory name derived from a case label.
fn dir_name(label: &str) -> String {
    let mut s: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(48);
    s
}

// ---------------------------------------------------------------------------
// Snapshots: what "nothing changed" means.

#[derive(Debug, PartialEq)]
pub(crate) struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// BLAKE3 of a regular file up to 1 MiB.
    content: Option<String>,
    target: Option<PathBuf>,
    xattrs: Vec<(OsString, Option<Vec<u8>>)>,
}

pub(crate) type Snapshot = BTreeMap<PathBuf, Node>;

/// Every entry under `top` (lstat only), leaving out `skip`. `strict` also
/// records ctimes and directory sizes and times; otherwise those are left out
/// (creating and removing a temporary changes them).
pub(crate) fn snapshot(top: &Path, skip: Option<&Path>, strict: bool) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() {
            top.to_path_buf()
        } else {
            top.join(&rel)
        };
        let m = lstat(&full);
        let ft = m.file_type();
        let loose_dir = ft.is_dir() && !strict;
        let xattrs = xattr::list(&full)
            .map(|names| {
                let mut v: Vec<_> = names
                    .map(|n| {
                        let value = xattr::get(&full, &n).ok().flatten();
                        (n, value)
                    })
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        out.insert(
            rel.clone(),
            Node {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                nlink: m.nlink(),
                size: if loose_dir { 0 } else { m.size() },
                mtime: if loose_dir {
                    (0, 0)
                } else {
                    (m.mtime(), m.mtime_nsec())
                },
                ctime: if strict {
                    (m.ctime(), m.ctime_nsec())
                } else {
                    (0, 0)
                },
                content: (ft.is_file() && m.size() <= 1 << 20)
                    .then(|| blake3::hash(&read_file(&full)).to_hex().to_string()),
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&full).expect("readlink")),
                xattrs,
            },
        );
        if ft.is_dir() {
            for e in fs::read_dir(&full).expect("readdir") {
                let child = rel.join(e.expect("readdir").file_name());
                if Some(child.as_path()) != skip {
                    stack.push(child);
                }
            }
        }
    }
    out
}

pub(crate) fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let keys: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (before.get(k), after.get(k)) {
            (Some(_), None) => Some(format!("removed {}", show(k))),
            (None, Some(_)) => Some(format!("created {}", show(k))),
            (Some(a), Some(b)) if a != b => Some(format!("changed {}: {a:?} -> {b:?}", show(k))),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Talking to the slave.

/// Bytes for the slave's stdin.
pub(crate) struct Script(Vec<u8>);

impl Script {
    pub(crate) fn empty() -> Script {
        Script(Vec::new())
    }

    /// Starts with a valid Hello.
    pub(crate) fn hello() -> Script {
        Script::empty().msg(hello(false))
    }

    pub(crate) fn msg(self, m: Msg) -> Script {
        self.body(&m.encode())
    }

    pub(crate) fn msgs(self, ms: impl IntoIterator<Item = Msg>) -> Script {
        ms.into_iter().fold(self, Script::msg)
    }

    /// One frame around a hand-made body (kind byte first).
    pub(crate) fn body(mut self, body: &[u8]) -> Script {
        write_frame(&mut self.0, body).unwrap();
        self
    }

    pub(crate) fn raw(mut self, bytes: &[u8]) -> Script {
        self.0.extend_from_slice(bytes);
        self
    }

    pub(crate) fn finish(self) -> Script {
        self.msg(Msg::Finish { marker_ns: 0 })
    }
}

pub(crate) fn hello(dry_run: bool) -> Msg {
    Msg::Hello(Hello {
        version: VERSION,
        features: FEATURES,
        privileged: false,
        dry_run,
        fsync: FsyncPolicy::None,
        fence: Default::default(),
    })
}

/// Metadata a hostile SetMeta would stamp on its victim.
pub(crate) fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        mtime_sec: NEW_TIME,
        mtime_nsec: 5,
        xattrs: Vec::new(),
    }
}

/// The content digest FileEnd carries (docs/PROTOCOL.md).
pub(crate) fn digest(data: &[u8]) -> [u8; 32] {
    *georep::delta::Hasher::new()
        .update(data)
        .finalize()
        .as_bytes()
}

/// A whole file: FileBegin, FileData, FileEnd with the right digest.
pub(crate) fn whole_file(id: u64, path: &[u8], data: &[u8]) -> Vec<Msg> {
    vec![
        Msg::FileBegin {
            id,
            path: path.to_vec(),
            size: data.len() as u64,
            delta: false,
        },
        Msg::FileData {
            id,
            offset: 0,
            data: data.to_vec(),
            zstd: false,
        },
        Msg::FileEnd {
            id,
            hash: digest(data),
            meta: meta(0o644),
        },
    ]
}

pub(crate) fn sig_req(id: u64, path: &[u8], block_size: u32, hash_len: u32) -> Msg {
    Msg::SigReq {
        id,
        path: path.to_vec(),
        block_size,
        hash_len,
    }
}

/// A running `georep slave --root ROOT`; stdout is decoded by a thread.
pub(crate) struct Slave {
    pub(crate) child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<Result<Msg, String>>,
    stderr: Option<JoinHandle<String>>,
    /// Frames received so far.
    got: Vec<Msg>,
}

impl Slave {
    pub(crate) fn spawn(root: &Path) -> Slave {
        let mut cmd = georep();
        cmd.arg("slave")
            .arg("--root")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, frames) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                let item = match read_frame(&mut r, &mut buf) {
                    Ok(Some(kind)) => Msg::decode(kind, &buf)
                        .map_err(|e| format!("undecodable frame from the slave: {e}")),
                    Ok(None) => return,
                    Err(e) => Err(format!("bad frame from the slave: {e}")),
                };
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        Slave {
            stdin: child.stdin.take(),
            child,
            frames,
            stderr: Some(stderr),
            got: Vec::new(),
        }
    }

    /// Writes to the slave; a slave that already quit (broken pipe) is fine.
    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) {
        if let Some(w) = &mut self.stdin {
            if w.write_all(bytes).and_then(|_| w.flush()).is_err() {
                self.stdin = None;
            }
        }
    }

    pub(crate) fn send(&mut self, m: &Msg) {
        let mut v = Vec::new();
        write_frame(&mut v, &m.encode()).unwrap();
        self.send_bytes(&v);
    }

    /// The next frame, within `timeout`.
    pub(crate) fn recv_within(&mut self, timeout: Duration) -> Msg {
        match self.frames.recv_timeout(timeout) {
            Ok(Ok(m)) => {
                self.got.push(m.clone());
                m
            }
            Ok(Err(e)) => panic!("{e}; frames so far: {}", briefs(&self.got)),
            Err(RecvTimeoutError::Timeout) => {
                kill_group(self.child.id());
                panic!(
                    "no frame from the slave within {timeout:?}; frames so far: {}",
                    briefs(&self.got)
                );
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "the slave closed its output; frames so far: {}",
                    briefs(&self.got)
                )
            }
        }
    }

    pub(crate) fn recv(&mut self) -> Msg {
        self.recv_within(RUN_TIMEOUT)
    }

    /// Closes stdin, collects the remaining frames, waits for the exit.
    pub(crate) fn finish(mut self) -> SlaveRun {
        self.stdin = None;
        let mut bad_output = None;
        loop {
            match self.frames.recv_timeout(RUN_TIMEOUT) {
                Ok(Ok(m)) => self.got.push(m),
                Ok(Err(e)) => bad_output = Some(e),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    kill_group(self.child.id());
                    panic!(
                        "the slave did not finish within {RUN_TIMEOUT:?}; frames: {}",
                        briefs(&self.got)
                    );
                }
            }
        }
        let status = self.child.wait().expect("wait for the slave");
        SlaveRun {
            frames: std::mem::take(&mut self.got),
            bad_output,
            code: status.code(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

/// Everything a finished slave said.
pub(crate) struct SlaveRun {
    pub(crate) frames: Vec<Msg>,
    /// Output that was not a well-formed frame.
    pub(crate) bad_output: Option<String>,
    /// None when killed by a signal.
    pub(crate) code: Option<i32>,
    pub(crate) stderr: String,
}

impl SlaveRun {
    pub(crate) fn assert_no_panic(&self, label: &str) {
        assert!(
            !self.stderr.contains("panicked"),
            "{label}: the slave panicked\n{self}"
        );
        assert!(
            self.bad_output.is_none(),
            "{label}: the slave wrote a malformed frame\n{self}"
        );
    }

    pub(crate) fn fatals(&self) -> usize {
        self.frames
            .iter()
            .filter(|m| matches!(m, Msg::Fatal { .. }))
            .count()
    }

    /// A Fatal of code 5 as the last frame, exit code 5; returns its message.
    pub(crate) fn assert_refused(&self, label: &str) -> String {
        self.assert_no_panic(label);
        let Some(Msg::Fatal { code, message }) = self.frames.last() else {
            panic!("{label}: expected the slave to answer with a Fatal frame\n{self}");
        };
        assert_eq!(*code, 5, "{label}: Fatal with the wrong code\n{self}");
        assert_eq!(self.fatals(), 1, "{label}: more than one Fatal\n{self}");
        assert!(
            !self.frames.iter().any(|m| matches!(m, Msg::Finished)),
            "{label}: Finished before the refusal\n{self}"
        );
        assert_eq!(
            self.code,
            Some(5),
            "{label}: the slave must exit 5 after a Fatal\n{self}"
        );
        message.clone()
    }

    /// The session completed: no Fatal, Finished last, exit 0.
    pub(crate) fn assert_finished(&self, label: &str) {
        self.assert_no_panic(label);
        assert_eq!(self.fatals(), 0, "{label}: unexpected Fatal\n{self}");
        assert!(
            matches!(self.frames.last(), Some(Msg::Finished)),
            "{label}: expected Finished as the last frame\n{self}"
        );
        assert_eq!(self.code, Some(0), "{label}: expected exit 0\n{self}");
    }

    /// Paths of the OpError frames, in order.
    pub(crate) fn op_errors(&self) -> Vec<Vec<u8>> {
        self.frames
            .iter()
            .filter_map(|m| match m {
                Msg::OpError { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for SlaveRun {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "exit code: {:?}", self.code)?;
        writeln!(f, "frames: {}", briefs(&self.frames))?;
        if let Some(e) = &self.bad_output {
            writeln!(f, "then: {e}")?;
        }
        write!(f, "--- stderr\n{}", self.stderr)
    }
}

/// A short description of a frame (signature chunks and listings summarized).
pub(crate) fn brief(m: &Msg) -> String {
    let s = match m {
        Msg::SigChunk { id, data } => format!("SigChunk {{ id: {id}, {} bytes }}", data.len()),
        Msg::DirEntries { id, entries, .. } => {
            let names: Vec<String> = entries.iter().map(|e| show(&bpath(&e.name))).collect();
            format!("DirEntries {{ id: {id}, names: {names:?} }}")
        }
        m => format!("{m:?}"),
    };
    if s.chars().count() > 300 {
        format!("{}...", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

pub(crate) fn briefs(ms: &[Msg]) -> String {
    let v: Vec<String> = ms.iter().map(brief).collect();
    format!("[{}]", v.join(", "))
}

// ---------------------------------------------------------------------------
// Running refusal cases.

/// Runs one hostile script on a fresh fixture and checks the whole refusal
/// contract; returns the Fatal's message.
fn refused(label: &str, script: impl FnOnce(&Fixture) -> Script) -> String {
    let fx = Fixture::new(label);
    let run = fx.run(script(&fx));
    let message = run.assert_refused(label);
    fx.assert_contained(label, &run);
    fx.assert_replica_unchanged(label, &run);
    message
}

type Case = (String, Box<dyn Fn(&Fixture) -> Script>);

fn case(label: impl Into<String>, script: impl Fn(&Fixture) -> Script + 'static) -> Case {
    (label.into(), Box::new(script))
}

/// A case made of messages after a valid Hello, then Finish.
fn after_hello(label: impl Into<String>, msgs: impl Fn(&Fixture) -> Vec<Msg> + 'static) -> Case {
    case(label, move |fx| Script::hello().msgs(msgs(fx)).finish())
}

/// Runs every case (each on its own fixture), then fails naming those that
/// were not refused as required; each failure's details are printed as it happens.
fn all_refused(cases: Vec<Case>) {
    let total = cases.len();
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|(label, script)| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                refused(&label, |fx| script(fx));
            }))
            .err()
            .map(|_| label)
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} hostile cases were not refused as required:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

fn label_of(path: &[u8]) -> String {
    format!("{:?}", show(&bpath(path)))
}

// ---------------------------------------------------------------------------
// 1. Paths that are invalid or escape the root.

/// `@outside` is the absolute path of `outside/`.
const BAD_PATHS: &[&[u8]] = &[
    b"../outside/canary",
    b"@outside/canary",
    b"a//f",
    b"a/./f",
    b"a/../../outside/canary",
    b"a/f\0x",
    b"",
    b".",
    b"..",
    b"a/",
    b"/",
];

/// Every entry op (and the reads) on `path`.
fn ops_on(path: &[u8]) -> Vec<(&'static str, Vec<Msg>)> {
    let p = path.to_vec();
    let mut ops = vec![
        ("mkdir", vec![Msg::Mkdir { path: p.clone() }]),
        ("file", whole_file(1, &p, b"pwned\n")),
        ("remove", vec![Msg::Remove { path: p.clone() }]),
        (
            "symlink",
            vec![Msg::Symlink {
                path: p.clone(),
                target: b"x".to_vec(),
                meta: meta(0o777),
            }],
        ),
        (
            "mknod",
            vec![Msg::Mknod {
                path: p.clone(),
                kind: Kind::Fifo,
                rdev: 0,
                meta: meta(0o666),
            }],
        ),
        (
            "link",
            vec![Msg::Link {
                path: p.clone(),
                target: b"file".to_vec(),
            }],
        ),
        (
            "set-meta",
            vec![Msg::SetMeta {
                path: p.clone(),
                kind: Kind::Regular,
                meta: meta(0o777),
            }],
        ),
        ("sig-req", vec![sig_req(1, &p, 512, 8)]),
    ];
    // The empty path is the root: legal for these two.
    if !path.is_empty() {
        ops.push((
            "dir-meta",
            vec![Msg::DirMeta {
                path: p.clone(),
                meta: meta(0o777),
            }],
        ));
        ops.push((
            "list-dir",
            vec![Msg::ListDir {
                id: 1,
                path: p.clone(),
                xattrs: true,
                checksum: true,
            }],
        ));
        ops.push((
            "list-names",
            vec![Msg::ListNames {
                id: 1,
                path: p,
                names: vec![b"x".to_vec()],
                xattrs: true,
                checksum: true,
            }],
        ));
    }
    ops
}

#[test]
fn list_names_refuses_names_that_are_not_one_component() {
    for name in [
        &b""[..],
        b".",
        b"..",
        b"a/b",
        b"../etc",
        b"x\0y",
        &[b'n'; 256],
    ] {
        let label = format!("list-names {}", String::from_utf8_lossy(name));
        let fx = Fixture::new(&label);
        let run = fx.run(
            Script::hello()
                .msg(Msg::ListNames {
                    id: 1,
                    path: Vec::new(),
                    names: vec![b"a".to_vec(), name.to_vec()],
                    xattrs: true,
                    checksum: true,
                })
                .finish(),
        );
        fx.assert_contained(&label, &run);
        run.assert_refused(&label);
    }
}

#[test]
fn invalid_or_escaping_paths_are_refused_for_every_op() {
    let mut cases = Vec::new();
    for &path in BAD_PATHS {
        for (op, _) in ops_on(path) {
            cases.push(after_hello(format!("{op} {}", label_of(path)), move |fx| {
                let p = fx.expand(path);
                ops_on(&p).into_iter().find(|(o, _)| *o == op).unwrap().1
            }));
        }
    }
    all_refused(cases);
}

// ---------------------------------------------------------------------------
// 2. Writes through the planted symlinks.

#[test]
fn writes_through_a_planted_symlink_are_refused() {
    let mut cases = Vec::new();
    for link in ["evil", "evil2", "a/inner"] {
        let at = move |rest: &str| format!("{link}/{rest}").into_bytes();
        cases.extend([
            after_hello(format!("file {link}/pwned"), move |_| {
                whole_file(1, &at("pwned"), b"pwned\n")
            }),
            after_hello(format!("file over {link}/canary"), move |_| {
                whole_file(1, &at("canary"), b"pwned\n")
            }),
            after_hello(format!("mkdir {link}/d"), move |_| {
                vec![Msg::Mkdir { path: at("d") }]
            }),
            after_hello(format!("remove {link}/canary"), move |_| {
                vec![Msg::Remove { path: at("canary") }]
            }),
            after_hello(format!("remove {link}/sub"), move |_| {
                vec![Msg::Remove { path: at("sub") }]
            }),
            after_hello(format!("set-meta {link}/canary"), move |_| {
                vec![Msg::SetMeta {
                    path: at("canary"),
                    kind: Kind::Regular,
                    meta: meta(0o777),
                }]
            }),
            after_hello(format!("link pwned -> {link}/canary"), move |_| {
                vec![Msg::Link {
                    path: b"pwned".to_vec(),
                    target: at("canary"),
                }]
            }),
            after_hello(format!("link {link}/pwned -> file"), move |_| {
                vec![Msg::Link {
                    path: at("pwned"),
                    target: b"file".to_vec(),
                }]
            }),
            after_hello(format!("symlink {link}/s"), move |_| {
                vec![Msg::Symlink {
                    path: at("s"),
                    target: b"x".to_vec(),
                    meta: meta(0o777),
                }]
            }),
            after_hello(format!("mknod {link}/fifo"), move |_| {
                vec![Msg::Mknod {
                    path: at("fifo"),
                    kind: Kind::Fifo,
                    rdev: 0,
                    meta: meta(0o666),
                }]
            }),
            // A signature would leak the content of a file outside.
            after_hello(format!("sig-req {link}/canary"), move |_| {
                vec![sig_req(1, &at("canary"), 512, 8)]
            }),
        ]);
    }
    all_refused(cases);
}

/// Directory metadata is held until Finish, so a path through a symlink is
/// only found out then. It must not reach outside, and must be reported.
#[test]
fn dir_meta_through_a_planted_symlink_touches_nothing() {
    let label = "dir-meta through evil";
    let fx = Fixture::new(label);
    let paths: [&[u8]; 4] = [b"evil/sub", b"evil2/sub", b"evil", b"a/inner/sub"];
    let run = fx.run(
        Script::hello()
            .msgs(paths.iter().map(|p| Msg::DirMeta {
                path: p.to_vec(),
                meta: meta(0o777),
            }))
            .finish(),
    );
    fx.assert_contained(label, &run);
    if run.fatals() > 0 {
        run.assert_refused(label);
    } else {
        run.assert_finished(label);
        let reported: BTreeSet<Vec<u8>> = run.op_errors().into_iter().collect();
        for p in paths {
            assert!(
                reported.contains(p),
                "{label}: {} neither refused nor reported\n{run}",
                label_of(p)
            );
        }
    }
}

/// Listing a planted symlink must not list what it points to.
#[test]
fn listing_a_planted_symlink_reveals_nothing_outside() {
    // Listing is a read: "no such directory" is as good an answer as a refusal,
    // for the link itself and for paths through it.
    for link in [
        "evil",
        "evil2",
        "a/inner",
        "evil/sub",
        "evil2/sub",
        "a/inner/sub",
    ] {
        for names in [None, Some(vec![b"passwd".to_vec(), b"x".to_vec()])] {
            let label = format!("list {link} {names:?}");
            let fx = Fixture::new(&label);
            let path = link.as_bytes().to_vec();
            let msg = match names {
                None => Msg::ListDir {
                    id: 1,
                    path,
                    xattrs: true,
                    checksum: true,
                },
                Some(names) => Msg::ListNames {
                    id: 1,
                    path,
                    names,
                    xattrs: true,
                    checksum: true,
                },
            };
            let run = fx.run(Script::hello().msg(msg).finish());
            fx.assert_contained(&label, &run);
            for m in &run.frames {
                if let Msg::DirEntries { this, entries, .. } = m {
                    assert!(
                        this.is_none() && entries.is_empty(),
                        "{label}: listed the symlink's target\n{run}"
                    );
                }
            }
            // Either refused, or answered "no such directory".
            if run.fatals() > 0 {
                run.assert_refused(&label);
            } else {
                run.assert_finished(&label);
            }
        }
    }
}

/// What a master may legitimately do to a planted symlink acts on the link,
/// never on what it points to.
#[test]
fn legal_ops_on_planted_symlinks_stay_inside_the_root() {
    let label = "legal ops on planted symlinks";
    let fx = Fixture::new(label);
    let run = fx.run(
        Script::hello()
            .msgs([
                // Metadata of the links themselves.
                Msg::SetMeta {
                    path: b"evil".to_vec(),
                    kind: Kind::Symlink,
                    meta: meta(0o700),
                },
                Msg::SetMeta {
                    path: b"evilfile".to_vec(),
                    kind: Kind::Symlink,
                    meta: meta(0o700),
                },
                // The master believes it is a file: a per-entry error.
                Msg::SetMeta {
                    path: b"evilfile".to_vec(),
                    kind: Kind::Regular,
                    meta: meta(0o777),
                },
                // Exists and is not a directory: a per-entry error.
                Msg::Mkdir {
                    path: b"evil".to_vec(),
                },
                // Signatures of symlinks: refused without reading through them.
                sig_req(1, b"evilfile", 512, 8),
                sig_req(2, b"evil", 512, 8),
                // A hard link to the symlink itself.
                Msg::Link {
                    path: b"hl".to_vec(),
                    target: b"evilfile".to_vec(),
                },
                // Removing a directory holding a link out, and a link out.
                Msg::Remove {
                    path: b"a".to_vec(),
                },
                Msg::Remove {
                    path: b"evil2".to_vec(),
                },
            ])
            .msgs(whole_file(3, b"evilfile", b"replaced\n"))
            .finish(),
    );
    run.assert_finished(label);
    fx.assert_contained(label, &run);

    let sig_fails: Vec<u64> = run
        .frames
        .iter()
        .filter_map(|m| match m {
            Msg::SigFail { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(sig_fails, [1, 2], "{label}: SigFail for symlinks\n{run}");
    assert!(
        !run.frames.iter().any(|m| matches!(m, Msg::SigChunk { .. })),
        "{label}: signed through a symlink\n{run}"
    );
    assert_eq!(
        run.op_errors(),
        [b"evilfile".to_vec(), b"evil".to_vec()],
        "{label}: per-entry errors\n{run}"
    );

    let r = &fx.root;
    let evil = lstat(&r.join("evil"));
    assert!(evil.file_type().is_symlink());
    assert_eq!(
        fs::read_link(r.join("evil")).unwrap(),
        Path::new("../outside")
    );
    assert_eq!(
        (evil.mtime(), evil.mtime_nsec()),
        (NEW_TIME, 5),
        "{label}: SetMeta on the symlink itself was not applied"
    );
    assert!(lstat(&r.join("hl")).file_type().is_symlink());
    assert_eq!(
        fs::read_link(r.join("hl")).unwrap(),
        Path::new("../outside/canary")
    );
    assert!(!r.join("a").exists() && fs::symlink_metadata(r.join("a")).is_err());
    assert!(fs::symlink_metadata(r.join("evil2")).is_err());
    assert!(lstat(&r.join("evilfile")).is_file());
    assert_eq!(read_file(&r.join("evilfile")), b"replaced\n");
}

// ---------------------------------------------------------------------------
// 3. Hard links to something outside.

#[test]
fn hard_link_to_a_target_outside_the_root_is_refused() {
    let targets: &[&[u8]] = &[
        b"../outside/canary",
        b"@outside/canary",
        b"a/../../outside/canary",
        b"evil/canary",
        b"evil2/canary",
        b"a/inner/canary",
    ];
    let cases = targets
        .iter()
        .map(|&t| {
            after_hello(format!("link pwned -> {}", label_of(t)), move |fx| {
                vec![Msg::Link {
                    path: b"pwned".to_vec(),
                    target: fx.expand(t),
                }]
            })
        })
        .collect();
    all_refused(cases);
}

// ---------------------------------------------------------------------------
// 4. Framing.

/// The slave must refuse an oversized frame from its header alone: the Fatal
/// arrives while the stream is still open and the body was never sent.
#[test]
fn oversized_frame_is_refused_before_it_is_read() {
    for len in [MAX_FRAME as u32 + 1, u32::MAX] {
        let label = format!("frame of {len} bytes");
        let fx = Fixture::new(&label);
        let mut slave = fx.spawn();
        slave.send(&hello(false));
        assert!(matches!(slave.recv(), Msg::Hello(_)));
        slave.send_bytes(&len.to_le_bytes());
        slave.send_bytes(&[4]); // Mkdir
        let m = slave.recv_within(Duration::from_secs(30));
        assert!(
            matches!(m, Msg::Fatal { .. }),
            "{label}: expected Fatal, got {}",
            brief(&m)
        );
        let run = slave.finish();
        run.assert_refused(&label);
        fx.assert_contained(&label, &run);
        fx.assert_replica_unchanged(&label, &run);
    }
}

#[test]
fn zero_length_frame_is_refused() {
    refused("zero-length frame", |_| {
        Script::hello().raw(&0u32.to_le_bytes()).finish()
    });
}

#[test]
fn truncated_frame_is_refused() {
    all_refused(vec![
        case("frame of 100 bytes ending after 10", |_| {
            Script::hello()
                .raw(&100u32.to_le_bytes())
                .raw(&[4, 5, 0, 0, 0, b'n', b'e', b'w', b'd', b'i'])
        }),
        case("header ending after 2 bytes", |_| {
            Script::hello().raw(&[5, 0])
        }),
        case("file data frame cut short", |_| {
            let mut s = Script::hello()
                .msg(Msg::FileBegin {
                    id: 1,
                    path: b"newfile".to_vec(),
                    size: 1000,
                    delta: false,
                })
                .0;
            let mut data = Vec::new();
            write_frame(
                &mut data,
                &Msg::FileData {
                    id: 1,
                    offset: 0,
                    data: vec![1; 1000],
                    zstd: false,
                }
                .encode(),
            )
            .unwrap();
            s.extend_from_slice(&data[..500]);
            Script(s)
        }),
    ]);
}

#[test]
fn unknown_message_kind_is_refused() {
    let cases = [0u8, 27, 200, 255]
        .into_iter()
        .map(|kind| {
            case(format!("kind {kind}"), move |_| {
                Script::hello().body(&[kind, b'x', b'y', b'z']).finish()
            })
        })
        .collect();
    all_refused(cases);
}

#[test]
fn trailing_garbage_after_a_message_is_refused() {
    all_refused(vec![
        case("mkdir newdir + 1 byte", |_| {
            let mut body = Msg::Mkdir {
                path: b"newdir".to_vec(),
            }
            .encode();
            body.push(0);
            Script::hello().body(&body).finish()
        }),
        case("remove file + 4 bytes", |_| {
            let mut body = Msg::Remove {
                path: b"file".to_vec(),
            }
            .encode();
            body.extend_from_slice(b"junk");
            Script::hello().body(&body).finish()
        }),
        case("finish + 1 byte", |_| {
            let mut body = Msg::Finish { marker_ns: 0 }.encode();
            body.push(1);
            Script::hello().body(&body)
        }),
        case("hello + 1 byte", |_| {
            let mut body = hello(false).encode();
            body.push(0);
            Script::empty().body(&body).finish()
        }),
    ]);
}

/// Counts and lengths inside a frame that the frame cannot hold.
#[test]
fn count_larger_than_its_frame_is_refused() {
    all_refused(vec![
        case("set-meta with 2^32-1 xattrs", |_| {
            let mut e = Enc::new(9); // SetMeta
            e.bytes(b"file").u8(Kind::Regular as u8);
            e.u32(0o644).u32(0).u32(0).i64(0).u32(0).u32(u32::MAX);
            e.bytes(b"user.a").bytes(b"v");
            Script::hello().body(&e.0).finish()
        }),
        case("dir-entries with 2^32-1 entries", |_| {
            let mut e = Enc::new(3); // DirEntries
            e.u64(1).u8(1).u8(0).u32(u32::MAX).raw(&[0; 32]);
            Script::hello().body(&e.0).finish()
        }),
        case("mkdir path of 1000 bytes holding 3", |_| {
            let mut e = Enc::new(4); // Mkdir
            e.u32(1000).raw(b"abc");
            Script::hello().body(&e.0).finish()
        }),
        case("symlink target of 2^32-1 bytes", |_| {
            let mut e = Enc::new(5); // Symlink
            e.bytes(b"s").u32(u32::MAX).raw(b"x");
            Script::hello().body(&e.0).finish()
        }),
        case("file-data of 2^32-1 bytes holding 4", |_| {
            let mut e = Enc::new(16); // FileData
            e.u64(1).u64(0).bool(false).u32(u32::MAX).raw(b"data");
            Script::hello()
                .msg(Msg::FileBegin {
                    id: 1,
                    path: b"newfile".to_vec(),
                    size: 100,
                    delta: false,
                })
                .body(&e.0)
                .finish()
        }),
    ]);
}

/// Field values no valid master sends.
#[test]
fn impossible_field_values_are_refused() {
    all_refused(vec![
        after_hello("set-meta mode with file-type bits", |_| {
            vec![Msg::SetMeta {
                path: b"file".to_vec(),
                kind: Kind::Regular,
                meta: Meta {
                    mode: 0o100644,
                    ..meta(0)
                },
            }]
        }),
        after_hello("set-meta nanoseconds of 1e9", |_| {
            vec![Msg::SetMeta {
                path: b"file".to_vec(),
                kind: Kind::Regular,
                meta: Meta {
                    mtime_nsec: 1_000_000_000,
                    ..meta(0o644)
                },
            }]
        }),
        after_hello("set-meta empty xattr name", |_| {
            vec![Msg::SetMeta {
                path: b"file".to_vec(),
                kind: Kind::Regular,
                meta: Meta {
                    xattrs: vec![(Vec::new(), b"v".to_vec())],
                    ..meta(0o644)
                },
            }]
        }),
        after_hello("set-meta xattr name with NUL", |_| {
            vec![Msg::SetMeta {
                path: b"file".to_vec(),
                kind: Kind::Regular,
                meta: Meta {
                    xattrs: vec![(b"user.a\0b".to_vec(), b"v".to_vec())],
                    ..meta(0o644)
                },
            }]
        }),
        case("set-meta entry kind 9", |_| {
            let mut body = Msg::SetMeta {
                path: b"file".to_vec(),
                kind: Kind::Regular,
                meta: meta(0o644),
            }
            .encode();
            body[1 + 4 + 4] = 9;
            Script::hello().body(&body).finish()
        }),
        case("file-begin delta flag 2", |_| {
            let mut body = Msg::FileBegin {
                id: 1,
                path: b"newfile".to_vec(),
                size: 1,
                delta: false,
            }
            .encode();
            *body.last_mut().unwrap() = 2;
            Script::hello().body(&body).finish()
        }),
        after_hello("mknod of a regular file", |_| {
            vec![Msg::Mknod {
                path: b"node".to_vec(),
                kind: Kind::Regular,
                rdev: 0,
                meta: meta(0o644),
            }]
        }),
        after_hello("mknod of a directory", |_| {
            vec![Msg::Mknod {
                path: b"node".to_vec(),
                kind: Kind::Dir,
                rdev: 0,
                meta: meta(0o755),
            }]
        }),
        after_hello("file-begin size over i64::MAX", |_| {
            vec![Msg::FileBegin {
                id: 1,
                path: b"newfile".to_vec(),
                size: u64::MAX,
                delta: false,
            }]
        }),
    ]);
}

/// Messages only a slave sends, and a second Hello.
#[test]
fn messages_only_a_slave_sends_are_refused() {
    let msgs: Vec<(&str, Msg)> = vec![
        (
            "dir-entries",
            Msg::DirEntries {
                id: 1,
                this: None,
                entries: Vec::new(),
                last: true,
            },
        ),
        (
            "sig-chunk",
            Msg::SigChunk {
                id: 1,
                data: b"x".to_vec(),
            },
        ),
        ("sig-end", Msg::SigEnd { id: 1, size: 0 }),
        (
            "sig-fail",
            Msg::SigFail {
                id: 1,
                message: "x".into(),
            },
        ),
        ("verified", Msg::Verified { id: 1, ok: true }),
        ("barrier-ack", Msg::BarrierAck { id: 1 }),
        (
            "op-error",
            Msg::OpError {
                path: b"file".to_vec(),
                message: "x".into(),
            },
        ),
        ("finished", Msg::Finished),
        ("second hello", hello(false)),
    ];
    let cases = msgs
        .into_iter()
        .map(|(label, m)| after_hello(label, move |_| vec![m.clone()]))
        .collect();
    all_refused(cases);
}

// ---------------------------------------------------------------------------
// 5. Signatures and deltas.

/// librsync delta format, built by hand.
pub(crate) fn delta(ops: &[&[u8]]) -> Vec<u8> {
    let mut d = 0x7273_0236u32.to_be_bytes().to_vec();
    for op in ops {
        d.extend_from_slice(op);
    }
    d
}

/// RS_OP_COPY_N8_N8.
pub(crate) fn copy(offset: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0x54];
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

pub(crate) const END: &[u8] = &[0];

/// SigReq on `file`, a delta FileBegin of `size`, then one FileDelta.
fn delta_session(size: u64, len: u32, delta: Vec<u8>) -> Vec<Msg> {
    vec![
        sig_req(1, b"file", 512, 8),
        Msg::FileBegin {
            id: 1,
            path: b"file".to_vec(),
            size,
            delta: true,
        },
        Msg::FileDelta {
            id: 1,
            len,
            delta,
            zstd: false,
        },
        Msg::FileEnd {
            id: 1,
            hash: [0; 32],
            meta: meta(0o644),
        },
    ]
}

#[test]
fn signature_request_with_bad_parameters_is_refused() {
    let params = [
        (0, 8),
        (1, 8),
        (511, 8),
        ((128 << 10) + 1, 8),
        (1 << 31, 8),
        (u32::MAX, 8),
        (1024, 0),
        (1024, 3),
        (1024, 17),
        (1024, u32::MAX),
    ];
    let cases = params
        .into_iter()
        .map(|(block, hash_len)| {
            after_hello(
                format!("sig-req block {block} hash {hash_len}"),
                move |_| vec![sig_req(1, b"file", block, hash_len)],
            )
        })
        .collect();
    all_refused(cases);
}

#[test]
fn delta_reading_out_of_bounds_or_malformed_is_refused() {
    let basis = old_content().len() as u64;
    all_refused(vec![
        after_hello("copy far past the basis", |_| {
            delta_session(16, 16, delta(&[&copy(1 << 40, 16), END]))
        }),
        after_hello("copy whose end overflows", |_| {
            delta_session(16, 16, delta(&[&copy(u64::MAX - 1, 16), END]))
        }),
        after_hello("copy one byte past the basis", move |_| {
            let len = basis + 1;
            delta_session(len, len as u32, delta(&[&copy(0, len), END]))
        }),
        after_hello("literal longer than the frame", |_| {
            let lit = [&[0x44u8][..], &(1u64 << 40).to_be_bytes(), b"abc"].concat();
            delta_session(16, 16, delta(&[&lit]))
        }),
        after_hello("delta with a wrong magic", |_| {
            delta_session(16, 16, [&[0, 0, 0, 0][..], &copy(0, 16), END].concat())
        }),
        after_hello("delta producing fewer bytes than announced", |_| {
            delta_session(20, 20, delta(&[&copy(0, 10), END]))
        }),
        after_hello("delta producing more bytes than announced", |_| {
            delta_session(20, 10, delta(&[&copy(0, 20), END]))
        }),
        after_hello("delta with bytes after its end", |_| {
            delta_session(16, 16, delta(&[&copy(0, 16), END, b"junk"]))
        }),
        after_hello("delta window past the declared size", |_| {
            delta_session(10, 16, delta(&[&copy(0, 16), END]))
        }),
        after_hello("delta without an end op", |_| {
            delta_session(16, 16, delta(&[&copy(0, 16)]))
        }),
    ]);
}

#[test]
fn delta_window_over_8_mib_is_refused() {
    all_refused(vec![
        after_hello("window of 8 MiB + 1", |_| {
            delta_session(64 << 20, (8 << 20) + 1, delta(&[&copy(0, 16), END]))
        }),
        after_hello("window of 2^32-1", |_| {
            delta_session(u32::MAX as u64, u32::MAX, delta(&[&copy(0, 16), END]))
        }),
    ]);
}

#[test]
fn delta_without_a_signature_is_refused() {
    let d = || delta(&[&copy(0, 16), END]);
    all_refused(vec![
        after_hello("delta file-begin without sig-req", move |_| {
            vec![
                Msg::FileBegin {
                    id: 7,
                    path: b"file".to_vec(),
                    size: 16,
                    delta: true,
                },
                Msg::FileDelta {
                    id: 7,
                    len: 16,
                    delta: d(),
                    zstd: false,
                },
            ]
        }),
        after_hello("delta file-begin with another id's signature", move |_| {
            vec![
                sig_req(1, b"file", 512, 8),
                Msg::FileBegin {
                    id: 2,
                    path: b"file".to_vec(),
                    size: 16,
                    delta: true,
                },
            ]
        }),
        after_hello("delta file-begin after a failed signature", move |_| {
            vec![
                sig_req(1, b"missing", 512, 8),
                Msg::FileBegin {
                    id: 1,
                    path: b"missing".to_vec(),
                    size: 16,
                    delta: true,
                },
            ]
        }),
        after_hello("file-delta for a file sent whole", move |_| {
            vec![
                Msg::FileBegin {
                    id: 1,
                    path: b"newfile".to_vec(),
                    size: 16,
                    delta: false,
                },
                Msg::FileDelta {
                    id: 1,
                    len: 16,
                    delta: d(),
                    zstd: false,
                },
            ]
        }),
        after_hello("file-data for a delta file", move |_| {
            vec![
                sig_req(1, b"file", 512, 8),
                Msg::FileBegin {
                    id: 1,
                    path: b"file".to_vec(),
                    size: 16,
                    delta: true,
                },
                Msg::FileData {
                    id: 1,
                    offset: 0,
                    data: vec![1; 16],
                    zstd: false,
                },
            ]
        }),
        after_hello("file-delta for an unknown id", move |_| {
            vec![
                sig_req(1, b"file", 512, 8),
                Msg::FileDelta {
                    id: 1,
                    len: 16,
                    delta: d(),
                    zstd: false,
                },
            ]
        }),
    ]);
}

#[test]
fn file_data_past_the_declared_size_is_refused() {
    let begin = |size| Msg::FileBegin {
        id: 1,
        path: b"file".to_vec(),
        size,
        delta: false,
    };
    let data = |offset, len| Msg::FileData {
        id: 1,
        offset,
        data: vec![0xaa; len],
        zstd: false,
    };
    all_refused(vec![
        after_hello("20 bytes into a 10-byte file", move |_| {
            vec![begin(10), data(0, 20)]
        }),
        after_hello("1 byte at the end of a 10-byte file", move |_| {
            vec![begin(10), data(0, 10), data(10, 1)]
        }),
        after_hello("1 byte at offset 2^64-1", move |_| {
            vec![begin(10), data(u64::MAX, 1)]
        }),
        after_hello("data into an empty file", move |_| {
            vec![begin(0), data(0, 1)]
        }),
    ]);
}

#[test]
fn file_data_out_of_order_is_refused() {
    let begin = Msg::FileBegin {
        id: 1,
        path: b"file".to_vec(),
        size: 8192,
        delta: false,
    };
    let data = |offset, len| Msg::FileData {
        id: 1,
        offset,
        data: vec![0xaa; len],
        zstd: false,
    };
    let b = begin.clone();
    all_refused(vec![
        after_hello("offset going backwards", move |_| {
            vec![b.clone(), data(4096, 100), data(0, 100)]
        }),
        after_hello("overlapping data", move |_| {
            vec![begin.clone(), data(0, 100), data(50, 10)]
        }),
    ]);
}

#[test]
fn data_for_an_unknown_file_is_refused() {
    all_refused(vec![
        after_hello("file-data without file-begin", |_| {
            vec![Msg::FileData {
                id: 9,
                offset: 0,
                data: b"x".to_vec(),
                zstd: false,
            }]
        }),
        after_hello("file-end without file-begin", |_| {
            vec![Msg::FileEnd {
                id: 9,
                hash: [0; 32],
                meta: meta(0o644),
            }]
        }),
        after_hello("file-data after file-abort", |_| {
            vec![
                Msg::FileBegin {
                    id: 1,
                    path: b"newfile".to_vec(),
                    size: 2,
                    delta: false,
                },
                Msg::FileAbort { id: 1 },
                Msg::FileData {
                    id: 1,
                    offset: 0,
                    data: b"x".to_vec(),
                    zstd: false,
                },
            ]
        }),
    ]);
}

/// More than 256 files or signatures in flight, or an id reused while in
/// flight; the temporaries of the files already begun must go.
#[test]
fn too_many_files_in_flight_are_refused_without_temporaries() {
    let begin = |id: u64| Msg::FileBegin {
        id,
        path: format!("new{id}").into_bytes(),
        size: 10,
        delta: false,
    };
    all_refused(vec![
        after_hello("257 files in flight", move |_| {
            (0..257).map(begin).collect()
        }),
        after_hello("257 signatures in flight", |_| {
            (0..257).map(|id| sig_req(id, b"file", 512, 8)).collect()
        }),
        after_hello("file id reused in flight", move |_| {
            vec![begin(1), begin(1)]
        }),
        after_hello("signature id reused in flight", |_| {
            vec![sig_req(1, b"file", 512, 8), sig_req(1, b"file", 512, 8)]
        }),
    ]);
}

// ---------------------------------------------------------------------------
// 6. A legitimate but huge signature runs in bounded memory.

/// Peak resident set of a live process, from /proc.
pub(crate) fn vm_hwm_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

#[test]
fn signature_of_a_huge_sparse_file_has_bounded_memory() {
    const SIZE: u64 = 4 << 30;
    const BLOCK: u32 = 128 << 10;
    const HASH: u32 = 16;
    let label = "signature of a 4 GiB sparse file";
    let fx = Fixture::with(label, |root| {
        let f = fs::File::create(root.join("big")).unwrap();
        f.set_len(SIZE).unwrap();
    });
    let mut slave = fx.spawn();
    slave.send(&hello(false));
    assert!(matches!(slave.recv(), Msg::Hello(_)));
    slave.send(&sig_req(1, b"big", BLOCK, HASH));
    slave.send(&Msg::Barrier { id: 2 });
    let mut sig_bytes = 0u64;
    loop {
        match slave.recv() {
            Msg::SigChunk { id: 1, data } => sig_bytes += data.len() as u64,
            Msg::SigEnd { id: 1, .. } => break,
            m => panic!("{label}: unexpected {}", brief(&m)),
        }
    }
    assert!(matches!(slave.recv(), Msg::BarrierAck { id: 2 }));
    // The slave is alive and idle, waiting for the next frame: its peak is final.
    let peak = vm_hwm_kib(slave.child.id());
    slave.send(&Msg::Finish { marker_ns: 0 });
    let run = slave.finish();
    run.assert_finished(label);
    fx.assert_contained(label, &run);
    assert_eq!(
        sig_bytes,
        georep::delta::signature_len(SIZE, BLOCK, HASH),
        "{label}: signature length"
    );
    assert!(
        peak < 200 << 10,
        "{label}: the slave's peak RSS was {} MiB",
        peak >> 10
    );
}

/// The delta side of the same: a 1 GiB file rebuilt from a mapped 1 GiB basis
/// in 8 MiB windows keeps the mapping's residency and the buffers bounded
/// (without releasing the mapping, the peak would pass the whole basis).
#[test]
fn delta_rebuild_of_a_huge_sparse_file_has_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    const WINDOW: u64 = georep::delta::MAX_WINDOW as u64;
    let label = "delta rebuild of a 1 GiB sparse file";
    let fx = Fixture::with(label, |root| {
        let f = fs::File::create(root.join("big")).unwrap();
        f.set_len(SIZE).unwrap();
    });
    let mut slave = fx.spawn();
    slave.send(&hello(false));
    assert!(matches!(slave.recv(), Msg::Hello(_)));
    slave.send(&sig_req(1, b"big", 128 << 10, 8));
    loop {
        match slave.recv() {
            Msg::SigChunk { id: 1, .. } => {}
            Msg::SigEnd { id: 1, .. } => break,
            m => panic!("{label}: unexpected {}", brief(&m)),
        }
    }
    slave.send(&Msg::FileBegin {
        id: 1,
        path: b"big".to_vec(),
        size: SIZE,
        delta: true,
    });
    // Each window copies a different stretch of the basis, back to front.
    for i in 0..SIZE / WINDOW {
        let from = SIZE - (i + 1) * WINDOW;
        slave.send(&Msg::FileDelta {
            id: 1,
            len: WINDOW as u32,
            delta: delta(&[&copy(from, WINDOW), END]),
            zstd: false,
        });
    }
    let mut h = georep::delta::Hasher::new();
    h.zeros(SIZE);
    slave.send(&Msg::FileEnd {
        id: 1,
        hash: *h.finalize().as_bytes(),
        meta: meta(0o644),
    });
    slave.send(&Msg::Barrier { id: 2 });
    let m = slave.recv();
    assert!(
        matches!(m, Msg::Verified { id: 1, ok: true }),
        "{label}: expected Verified ok, got {}",
        brief(&m)
    );
    assert!(matches!(slave.recv(), Msg::BarrierAck { id: 2 }));
    let peak = vm_hwm_kib(slave.child.id());
    slave.send(&Msg::Finish { marker_ns: 0 });
    let run = slave.finish();
    run.assert_finished(label);
    fx.assert_contained(label, &run);
    assert_eq!(lstat(&fx.root.join("big")).len(), SIZE);
    assert!(
        peak < 200 << 10,
        "{label}: the slave's peak RSS was {} MiB",
        peak >> 10
    );
}

// ---------------------------------------------------------------------------
// 7. The handshake.

#[test]
fn hello_with_another_version_is_refused_naming_both() {
    for version in [999, 0] {
        let label = format!("hello version {version}");
        let message = refused(&label, |_| {
            Script::empty()
                .msg(Msg::Hello(Hello {
                    version,
                    features: FEATURES,
                    privileged: false,
                    dry_run: false,
                    fsync: FsyncPolicy::None,
                    fence: Default::default(),
                }))
                .finish()
        });
        assert!(
            message.contains(&version.to_string()) && message.contains(&VERSION.to_string()),
            "{label}: the Fatal must name both versions: {message:?}"
        );
    }
}

#[test]
fn banner_instead_of_a_frame_is_refused() {
    all_refused(vec![
        case("shell banner", |_| {
            Script::empty()
                .raw(b"Welcome to host\n")
                .msg(hello(false))
                .finish()
        }),
        case("short banner", |_| Script::empty().raw(b"hi\n")),
        case("hello with a wrong magic", |_| {
            let mut body = hello(false).encode();
            body[8] = 2; // the last byte of "GEOREP\0\x01"
            Script::empty().body(&body).finish()
        }),
        case("hello with fsync policy 9", |_| {
            let mut body = hello(false).encode();
            // kind, magic, version, features, privileged, dry_run: then fsync.
            body[1 + 8 + 4 + 8 + 1 + 1] = 9;
            Script::empty().body(&body).finish()
        }),
        case("hello with a session name that is a path", |_| {
            let Msg::Hello(mut h) = hello(false) else {
                unreachable!()
            };
            h.fence.session = b"../../etc".to_vec();
            h.fence.epoch = 1;
            Script::empty().msg(Msg::Hello(h)).finish()
        }),
    ]);
}

#[test]
fn message_before_hello_is_refused() {
    let msgs: Vec<(&str, Vec<Msg>)> = vec![
        (
            "mkdir",
            vec![Msg::Mkdir {
                path: b"newdir".to_vec(),
            }],
        ),
        (
            "remove",
            vec![Msg::Remove {
                path: b"file".to_vec(),
            }],
        ),
        (
            "list-dir",
            vec![Msg::ListDir {
                id: 1,
                path: Vec::new(),
                xattrs: false,
                checksum: false,
            }],
        ),
        ("sig-req", vec![sig_req(1, b"file", 512, 8)]),
        ("file", whole_file(1, b"newfile", b"x")),
        (
            "set-meta",
            vec![Msg::SetMeta {
                path: b"file".to_vec(),
                kind: Kind::Regular,
                meta: meta(0o777),
            }],
        ),
        (
            "dir-meta",
            vec![Msg::DirMeta {
                path: Vec::new(),
                meta: meta(0o777),
            }],
        ),
        ("barrier", vec![Msg::Barrier { id: 1 }]),
        ("file-abort", vec![Msg::FileAbort { id: 1 }]),
        ("finish", vec![Msg::Finish { marker_ns: 0 }]),
    ];
    let cases = msgs
        .into_iter()
        .map(|(label, ms)| {
            case(format!("{label} before hello"), move |_| {
                Script::empty().msgs(ms.clone())
            })
        })
        .collect();
    all_refused(cases);
}

#[test]
fn change_in_a_dry_run_is_refused() {
    let changes: Vec<(&str, Vec<Msg>)> = vec![
        (
            "mkdir",
            vec![Msg::Mkdir {
                path: b"newdir".to_vec(),
            }],
        ),
        (
            "remove",
            vec![Msg::Remove {
                path: b"file".to_vec(),
            }],
        ),
        ("file", whole_file(1, b"newfile", b"x")),
        (
            "symlink",
            vec![Msg::Symlink {
                path: b"s".to_vec(),
                target: b"x".to_vec(),
                meta: meta(0o777),
            }],
        ),
        (
            "link",
            vec![Msg::Link {
                path: b"hl".to_vec(),
                target: b"file".to_vec(),
            }],
        ),
        (
            "set-meta",
            vec![Msg::SetMeta {
                path: b"file".to_vec(),
                kind: Kind::Regular,
                meta: meta(0o777),
            }],
        ),
        (
            "dir-meta",
            vec![Msg::DirMeta {
                path: Vec::new(),
                meta: meta(0o777),
            }],
        ),
    ];
    let cases = changes
        .into_iter()
        .map(|(label, ms)| {
            case(format!("{label} in a dry run"), move |_| {
                Script::empty().msg(hello(true)).msgs(ms.clone()).finish()
            })
        })
        .collect();
    all_refused(cases);
}

// ---------------------------------------------------------------------------
// 8. Content that does not match its hash is never installed.

#[test]
fn whole_file_with_a_wrong_hash_is_not_installed() {
    for path in [&b"file"[..], b"newfile"] {
        let label = format!("wrong hash for {}", label_of(path));
        let fx = Fixture::new(&label);
        let run = fx.run(
            Script::hello()
                .msgs([
                    Msg::FileBegin {
                        id: 1,
                        path: path.to_vec(),
                        size: 5,
                        delta: false,
                    },
                    Msg::FileData {
                        id: 1,
                        offset: 0,
                        data: b"new!\n".to_vec(),
                        zstd: false,
                    },
                    Msg::FileEnd {
                        id: 1,
                        hash: digest(b"other"),
                        meta: meta(0o644),
                    },
                ])
                .finish(),
        );
        run.assert_finished(&label);
        assert_eq!(run.op_errors(), [path.to_vec()], "{label}\n{run}");
        fx.assert_contained(&label, &run);
        fx.assert_replica_unchanged(&label, &run);
    }
}

/// A delta rebuilt against the slave's own signature; `wrong_hash` forges the
/// BLAKE3 the master sends.
fn delta_update(label: &str, wrong_hash: bool) -> (Fixture, SlaveRun, Vec<u8>) {
    let fx = Fixture::new(label);
    let mut new = old_content();
    new[5000..5100].copy_from_slice(&[0x55; 100]);
    new.extend_from_slice(b"appended");
    let mut slave = fx.spawn();
    slave.send(&hello(false));
    assert!(matches!(slave.recv(), Msg::Hello(_)));
    slave.send(&sig_req(1, b"file", 512, 8));
    let mut sig = Vec::new();
    loop {
        match slave.recv() {
            Msg::SigChunk { id: 1, data } => sig.extend_from_slice(&data),
            Msg::SigEnd { id: 1, .. } => break,
            m => panic!("{label}: unexpected {}", brief(&m)),
        }
    }
    let sig = fast_rsync::Signature::deserialize(sig).expect("the slave's signature parses");
    let mut d = Vec::new();
    fast_rsync::diff(&sig.index(), &new, &mut d).unwrap();
    assert!(
        d.len() < new.len() / 2,
        "{label}: the delta should mostly copy"
    );
    let hash = if wrong_hash {
        digest(b"something else")
    } else {
        digest(&new)
    };
    for m in [
        Msg::FileBegin {
            id: 1,
            path: b"file".to_vec(),
            size: new.len() as u64,
            delta: true,
        },
        Msg::FileDelta {
            id: 1,
            len: new.len() as u32,
            delta: d,
            zstd: false,
        },
        Msg::FileEnd {
            id: 1,
            hash,
            meta: meta(0o644),
        },
        Msg::Barrier { id: 2 },
        Msg::Finish { marker_ns: 0 },
    ] {
        slave.send(&m);
    }
    let run = slave.finish();
    run.assert_finished(label);
    fx.assert_contained(label, &run);
    (fx, run, new)
}

fn verdict(run: &SlaveRun) -> Vec<bool> {
    run.frames
        .iter()
        .filter_map(|m| match m {
            Msg::Verified { id: 1, ok } => Some(*ok),
            _ => None,
        })
        .collect()
}

#[test]
fn delta_file_with_a_wrong_hash_is_verified_false_and_not_installed() {
    let label = "delta with a wrong hash";
    let (fx, run, _) = delta_update(label, true);
    assert_eq!(verdict(&run), [false], "{label}\n{run}");
    assert!(run.op_errors().is_empty(), "{label}\n{run}");
    fx.assert_replica_unchanged(label, &run);
}

/// Control for the above: the same delta with the right hash is installed.
#[test]
fn delta_file_with_the_right_hash_is_verified_and_installed() {
    let label = "delta with the right hash";
    let (fx, run, new) = delta_update(label, false);
    assert_eq!(verdict(&run), [true], "{label}\n{run}");
    assert_eq!(read_file(&fx.root.join("file")), new);
}

// ---------------------------------------------------------------------------
// Cleanup when the stream just stops.

#[test]
fn stream_end_mid_file_leaves_no_temporary() {
    let label = "stream ends mid-file";
    let fx = Fixture::new(label);
    let run = fx.run(Script::hello().msgs([
        Msg::FileBegin {
            id: 1,
            path: b"newfile".to_vec(),
            size: 100_000,
            delta: false,
        },
        Msg::FileData {
            id: 1,
            offset: 0,
            data: random_bytes(3, 50_000),
            zstd: false,
        },
        sig_req(2, b"file", 512, 8),
        Msg::FileBegin {
            id: 2,
            path: b"file".to_vec(),
            size: 16,
            delta: true,
        },
    ]));
    run.assert_no_panic(label);
    assert!(
        run.code.is_some_and(|c| c != 0),
        "{label}: a session cut short must exit non-zero\n{run}"
    );
    fx.assert_contained(label, &run);
    fx.assert_replica_unchanged(label, &run);
}

// ---------------------------------------------------------------------------
// Positive control: the harness sees a valid session succeed.

#[test]
fn valid_session_succeeds() {
    let label = "valid session";
    let fx = Fixture::new(label);
    let data = random_bytes(11, 70_000);
    let run = fx.run(
        Script::hello()
            .msg(Msg::Mkdir {
                path: b"newdir".to_vec(),
            })
            .msgs(whole_file(1, b"newdir/f", &data))
            .finish(),
    );
    run.assert_finished(label);
    assert!(matches!(run.frames.first(), Some(Msg::Hello(_))));
    assert!(run.op_errors().is_empty(), "{label}\n{run}");
    fx.assert_contained(label, &run);
    assert_eq!(read_file(&fx.root.join("newdir/f")), data);
    assert!(lstat(&fx.root.join("newdir")).is_dir());
}
