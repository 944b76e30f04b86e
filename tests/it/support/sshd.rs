//! A real OpenSSH `sshd` for the SSH tests: its own host keys, user keys,
//! `authorized_keys` and `sshd_config` in a temporary directory, listening on
//! 127.0.0.1 on a free port (never 22, never the system configuration).
//!
//! ```text
//! DIR/sshd[.N]/
//!   sshd_config, sshd.pid, sshd.log (sshd's stderr, LogLevel VERBOSE)
//!   host_ed25519{,.pub}, host_ecdsa{,.pub}       the server's host keys
//!   wrong_ed25519{,.pub}, wrong_ecdsa{,.pub}     other keys, for "changed host key"
//!   user_ed25519{,.pub}, user_ecdsa{,.pub}       client keys, both authorized
//!   authorized_keys                              AuthorizedKeysFile (absolute)
//!   known_hosts                                  the right keys, plain
//!   volumes.toml                                 GEOREP_VOLUMES of every session
//!   home/                                        HOME of every session, empty
//! ```
//!
//! Every session gets `GEOREP_VOLUMES=DIR/sshd/volumes.toml` through sshd's `SetEnv`,
//! so `georep slave --volume NAME` never reads the system's /etc/georep/volumes.toml,
//! and `HOME=DIR/sshd/home`, an empty directory, so that the login shell reads none
//! of the user's rc files (Debian's bash sources ~/.bashrc for ssh commands).
//!
//! [`Sshd::kill`] (and drop) SIGKILLs the daemon and everything below it: the
//! per-connection sshd processes (they call setsid, so a process group would not
//! reach them) and the commands they run, such as `georep slave`.

use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::fs::show;
use super::process::{descendants, kill_tree};

/// How long sshd may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at finding a free port (another process may take the one we picked
/// between our probe and sshd's bind).
const PORT_ATTEMPTS: usize = 8;

/// A user (client) key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    Ecdsa,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Ecdsa => "ecdsa",
        }
    }
}

/// What [`Sshd::write_known_hosts`] writes for `[127.0.0.1]:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownHosts {
    /// The server's host keys (ed25519 and ECDSA), plain host names.
    Plain,
    /// The same, hashed by `ssh-keygen -H` (`|1|salt|hash keytype key`).
    Hashed,
    /// Other keys of the same types for the same host: a changed host key.
    Wrong,
    /// The wrong keys first, then the right ones: several keys for one host (key
    /// rotation), one of which matches.
    Both,
}

pub struct Sshd {
    /// The fixture's own directory (keys, config, log).
    dir: PathBuf,
    port: u16,
    daemon: Option<Child>,
}

impl Sshd {
    /// Generates keys and a configuration under a new directory in `dir`, starts sshd
    /// and waits until it accepts connections.
    pub fn start(dir: &Path) -> Sshd {
        let dir = absolute(dir);
        let dir = new_dir(&dir.join("sshd"));
        for name in ["host_ed25519", "wrong_ed25519", "user_ed25519"] {
            keygen(&dir.join(name), "ed25519");
        }
        for name in ["host_ecdsa", "wrong_ecdsa", "user_ecdsa"] {
            keygen(&dir.join(name), "ecdsa");
        }
        let mut sshd = Sshd {
            dir,
            port: 0,
            daemon: None,
        };
        sshd.set_authorized_keys(&[
            sshd.user_public_key(KeyKind::Ed25519),
            sshd.user_public_key(KeyKind::Ecdsa),
        ]);
        write(&sshd.volumes_file(), "[volumes]\n");
        fs::create_dir(sshd.home()).unwrap_or_else(|e| panic!("mkdir home: {e}"));
        sshd.launch(None);
        sshd
    }

    /// Starts sshd again after [`Sshd::kill`], with the same keys, on the same port if
    /// it is still free, else on a new one: rewrite known_hosts files after this.
    pub fn restart(&mut self) {
        self.kill();
        self.launch(Some(self.port));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The fixture's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The user name sessions log in as: the current user (root in CI).
    pub fn user(&self) -> String {
        current_user()
    }

    /// `ssh://USER@127.0.0.1:PORT/PATH` (`path` absolute).
    pub fn url(&self, path: &Path) -> String {
        assert!(path.is_absolute(), "{} is not absolute", show(path));
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user(),
            self.port,
            path.display()
        )
    }

    /// The plain known_hosts lines of the server's host keys:
    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...` and `[127.0.0.1]:PORT ecdsa-sha2-nistp256 ...`.
    pub fn host_key_line_for_known_hosts(&self) -> Vec<String> {
        self.known_hosts_lines(&["host_ed25519", "host_ecdsa"])
    }

    /// The same lines hashed by `ssh-keygen -H`.
    pub fn hashed_host_key_lines(&self) -> Vec<String> {
        let tmp = self.dir.join("known_hosts.hashing");
        write_lines(&tmp, &self.host_key_line_for_known_hosts());
        hash_known_hosts(&tmp);
        let text = read(&tmp);
        let _ = fs::remove_file(&tmp);
        text.lines().map(str::to_owned).collect()
    }

    /// Known_hosts lines of keys the server does not have, for the same host.
    pub fn wrong_host_key_lines(&self) -> Vec<String> {
        self.known_hosts_lines(&["wrong_ed25519", "wrong_ecdsa"])
    }

    /// The SHA256 fingerprints of the server's host keys, as `ssh-keygen -lf` prints
    /// them (`SHA256:` and unpadded base64).
    pub fn host_fingerprints(&self) -> Vec<String> {
        ["host_ed25519.pub", "host_ecdsa.pub"]
            .iter()
            .map(|name| fingerprint(&self.dir.join(name)))
            .collect()
    }

    /// The private key file of a user key (authorized by default).
    pub fn user_key(&self, kind: KeyKind) -> PathBuf {
        self.dir.join(format!("user_{}", kind.name()))
    }

    /// The public half of a user key, one authorized_keys line without options:
    /// `ssh-ed25519 AAAA... comment`.
    pub fn user_public_key(&self, kind: KeyKind) -> String {
        let path = self.dir.join(format!("user_{}.pub", kind.name()));
        read(&path).trim().to_owned()
    }

    /// The authorized_keys file sshd reads (absolute).
    pub fn authorized_keys(&self) -> PathBuf {
        self.dir.join("authorized_keys")
    }

    /// Rewrites authorized_keys; sshd reads it at every authentication, so the change
    /// applies to the next connection.
    pub fn set_authorized_keys(&self, lines: &[String]) {
        write_lines(&self.authorized_keys(), lines);
    }

    /// The HOME of every session: an empty directory, so that the login shell reads
    /// no rc file of the machine's user (bash sources ~/.bashrc for ssh commands, and
    /// what it does there is no business of the tests, nor their speed).
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// The file every session finds in `GEOREP_VOLUMES`.
    pub fn volumes_file(&self) -> PathBuf {
        self.dir.join("volumes.toml")
    }

    /// Rewrites [`Sshd::volumes_file`] with `[volumes] NAME = "PATH"` entries.
    pub fn write_volumes(&self, volumes: &[(&str, &Path)]) {
        let mut text = String::from("[volumes]\n");
        for (name, path) in volumes {
            let path = path.to_str().expect("volume paths are UTF-8 in tests");
            text.push_str(&format!(
                "{name} = \"{}\"\n",
                path.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        write(&self.volumes_file(), &text);
    }

    /// Writes a known_hosts file at `path` (replacing it).
    pub fn write_known_hosts(&self, path: &Path, which: KnownHosts) {
        match which {
            KnownHosts::Plain => write_lines(path, &self.host_key_line_for_known_hosts()),
            KnownHosts::Hashed => {
                write_lines(path, &self.host_key_line_for_known_hosts());
                hash_known_hosts(path);
            }
            KnownHosts::Wrong => write_lines(path, &self.wrong_host_key_lines()),
            KnownHosts::Both => {
                let mut lines = self.wrong_host_key_lines();
                lines.extend(self.host_key_line_for_known_hosts());
                write_lines(path, &lines);
            }
        }
    }

    /// The fixture's own known_hosts file (plain, the right keys; rewritten at every
    /// start, since the port is in it).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The external-command transport for `georep sync --ssh-command`: OpenSSH with the
    /// ed25519 user key, the fixture's known_hosts, strict host key checking, no
    /// prompt and no configuration file.
    pub fn ssh_command(&self) -> String {
        self.ssh_command_with(&self.user_key(KeyKind::Ed25519), &self.known_hosts())
    }

    /// [`Sshd::ssh_command`] with another key and known_hosts file.
    pub fn ssh_command_with(&self, key: &Path, known_hosts: &Path) -> String {
        let args = self.ssh_args(key, known_hosts);
        let mut words = vec!["ssh".to_owned()];
        words.extend(args);
        shell_words::join(words)
    }

    /// A ready `ssh` client command line (without host and remote command), for
    /// running commands on the server directly.
    pub fn ssh(&self, key: &Path, known_hosts: &Path) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_args(key, known_hosts))
            .stdin(Stdio::null());
        cmd
    }

    fn ssh_args(&self, key: &Path, known_hosts: &Path) -> Vec<String> {
        let opt = |s: String| ["-o".to_owned(), s];
        let mut args = vec![
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-i".to_owned(),
            path_str(key),
        ];
        for o in [
            "IdentitiesOnly=yes".to_owned(),
            format!("UserKnownHostsFile={}", path_str(known_hosts)),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "BatchMode=yes".to_owned(),
            "ConnectTimeout=20".to_owned(),
        ] {
            args.extend(opt(o));
        }
        args
    }

    /// sshd's log so far (its stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The pid of the listening daemon, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Pids of every process below the daemon (connections and their commands).
    pub fn descendants(&self) -> Vec<u32> {
        match self.pid() {
            Some(pid) => descendants(pid).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// SIGKILLs the daemon and every process below it, and waits until all are dead.
    pub fn kill(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        if let Err(e) = kill_tree(daemon.id()) {
            panic!("sshd: {e}");
        }
        let _ = daemon.wait();
    }

    /// Picks a free port (or tries `port` first), writes the configuration and the
    /// fixture's known_hosts, starts sshd and waits until it listens.
    fn launch(&mut self, mut port: Option<u16>) {
        ensure_privsep_dir();
        let sshd = sshd_binary();
        let log = self.dir.join("sshd.log");
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let p = port.take().unwrap_or_else(free_port);
            self.port = p;
            let config = self.dir.join("sshd_config");
            write(&config, &self.config());
            let _ = fs::remove_file(self.dir.join("sshd.pid"));
            let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let stderr = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("open {}: {e}", show(&log)));
            let mut cmd = Command::new(&sshd);
            cmd.arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .process_group(0);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", show(&sshd)));
            self.daemon = Some(child);
            match self.wait_listening(log_start) {
                Ok(()) => {
                    self.write_known_hosts(&self.known_hosts(), KnownHosts::Plain);
                    return;
                }
                Err(why) => {
                    let text = self.log();
                    let text = text.get(log_start as usize..).unwrap_or("").to_owned();
                    self.kill();
                    let bind_race = text.contains("Address already in use")
                        || text.contains("Cannot bind any address");
                    if !bind_race {
                        panic!(
                            "sshd ({}) did not come up on 127.0.0.1:{p}: {why}\n\
                             config {}:\n{}\n--- sshd stderr\n{text}",
                            show(&sshd),
                            show(&config),
                            read(&config)
                        );
                    }
                    failures.push(format!("port {p}: {why}\n{text}"));
                }
            }
        }
        panic!(
            "sshd did not find a free port in {PORT_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// Waits until sshd says it listens on our port and the port answers with an SSH
    /// banner. Err when sshd exits or the time is up.
    fn wait_listening(&mut self, log_start: u64) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let listening = format!("Server listening on 127.0.0.1 port {}", self.port);
        loop {
            let daemon = self.daemon.as_mut().expect("daemon");
            if let Some(status) = daemon.try_wait().expect("try_wait sshd") {
                self.daemon = None;
                return Err(format!("sshd exited: {status}"));
            }
            let log = self.log();
            if log
                .get(log_start as usize..)
                .unwrap_or("")
                .contains(&listening)
                && banner(self.port)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not listening after {START_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(&self) -> String {
        let d = &self.dir;
        let q = |p: PathBuf| format!("\"{}\"", path_str(&p));
        format!(
            "# georep integration tests: never the system configuration\n\
             ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {ed}\n\
             HostKey {ecdsa}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {ak}\n\
             AuthorizedPrincipalsFile none\n\
             PermitRootLogin yes\n\
             StrictModes no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             HostbasedAuthentication no\n\
             UsePAM no\n\
             PermitUserEnvironment no\n\
             PermitUserRC no\n\
             SetEnv GEOREP_VOLUMES={volumes} HOME={home}\n\
             AllowTcpForwarding no\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             UseDNS no\n\
             MaxStartups 100\n\
             MaxSessions 50\n\
             LoginGraceTime 60\n\
             LogLevel VERBOSE\n",
            port = self.port,
            ed = q(d.join("host_ed25519")),
            ecdsa = q(d.join("host_ecdsa")),
            pid = q(d.join("sshd.pid")),
            ak = q(d.join("authorized_keys")),
            volumes = path_str(&self.volumes_file()),
            home = path_str(&self.home()),
        )
    }

    fn known_hosts_lines(&self, keys: &[&str]) -> Vec<String> {
        keys.iter()
            .map(|name| {
                let public = read(&self.dir.join(format!("{name}.pub")));
                let mut fields = public.split_whitespace();
                let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
                format!("[127.0.0.1]:{} {kind} {blob}", self.port)
            })
            .collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The authorized_keys line of a forced command: `command="CMD",restrict KEY`.
pub fn forced_command_line(command: &str, public_key: &str) -> String {
    let escaped = command.replace('\\', "\\\\").replace('"', "\\\"");
    format!("command=\"{escaped}\",restrict {public_key}")
}

/// The SHA256 fingerprint of a public key file, as `ssh-keygen -lf` prints it.
pub fn fingerprint(public_key: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(public_key));
    out.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no SHA256 fingerprint in ssh-keygen -lf output: {out}"))
        .to_owned()
}

fn sshd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GEOREP_TEST_SSHD") {
        return PathBuf::from(p);
    }
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no sshd found (install openssh-server, or set GEOREP_TEST_SSHD to its absolute path)");
}

/// sshd refuses to start without its privilege separation directory.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if dir.is_dir() {
        return;
    }
    match fs::create_dir_all(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod /run/sshd: {e}")),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        // Unprivileged, sshd runs without privilege separation: it may not need it.
        Err(_) if !rustix::process::geteuid().is_root() => {}
        Err(e) => panic!("create /run/sshd (sshd's privilege separation directory): {e}"),
    }
}

/// A port nobody listens on now (the kernel's pick for port 0).
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Whether 127.0.0.1:PORT accepts a connection and greets with an SSH banner.
fn banner(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

/// A new directory: `base`, else `base.1`, `base.2`... (several fixtures may share a
/// test directory).
fn new_dir(base: &Path) -> PathBuf {
    for i in 0.. {
        let p = if i == 0 {
            base.to_path_buf()
        } else {
            PathBuf::from(format!("{}.{i}", base.display()))
        };
        match fs::create_dir(&p) {
            Ok(()) => return p,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("mkdir {}: {e}", show(&p)),
        }
    }
    unreachable!()
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().expect("cwd").join(p)
    }
}

fn keygen(path: &Path, kind: &str) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-N", "", "-t", kind, "-C"])
        .arg(format!("georep-test-{kind}"))
        .arg("-f")
        .arg(path);
    if kind == "ecdsa" {
        cmd.args(["-b", "256"]);
    }
    run(&mut cmd);
}

/// `ssh-keygen -H -f FILE`: hashes the host names in place (and leaves FILE.old,
/// which is removed).
fn hash_known_hosts(path: &Path) {
    run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(path));
    let _ = fs::remove_file(format!("{}.old", path.display()));
    let text = read(path);
    assert!(
        text.lines().all(|l| l.starts_with("|1|")),
        "ssh-keygen -H left a plain line in {}:\n{text}",
        show(path)
    );
}

/// Runs a helper command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn current_user() -> String {
    if rustix::process::geteuid().is_root() {
        return "root".to_owned();
    }
    run(Command::new("id").arg("-un")).trim().to_owned()
}

fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", show(p)))
        .to_owned()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", show(path)))
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", show(path)));
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", show(parent)));
    }
    write(path, &text);
}
