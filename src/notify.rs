//! systemd readiness, status and watchdog (`Type=notify` units, see
//! contrib/systemd/georep@.service), through sd_notify's datagram socket.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is not set (not started
//! by systemd, or by a unit of another type); a failure to reach the socket
//! is ignored, since there is no one else to tell. The variables are left
//! in the environment (the watchdog reads them again at every ping); hooks
//! do not inherit them (hooks.rs removes them).

use std::time::Duration;

use sd_notify::NotifyState;

/// The daemon is up: journaling, and connected or retrying.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// The daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// One line for `systemctl status`. Control characters become spaces: a
/// newline in, say, an error from the far side would otherwise start a new
/// assignment (`READY=1`, `MAINPID=`) in the datagram.
pub fn status(text: &str) {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    send(&[NotifyState::Status(&line)]);
}

/// How often to call [`watchdog`]: half of the unit's `WatchdogSec`, when
/// the watchdog is on and meant for this process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// Still alive: resets systemd's watchdog timer.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(state: &[NotifyState<'_>]) {
    let _ = sd_notify::notify(state);
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;
    use std::time::Duration;

    /// The child side of [`notifies_a_real_socket`]: run in a process of
    /// its own, since the variables it reads are process-wide.
    #[test]
    #[ignore = "run by notifies_a_real_socket in a child process"]
    fn notify_child() {
        if std::env::var_os("GEOREP_NOTIFY_CHILD").is_none() {
            return;
        }
        super::ready();
        super::status("round 7\nMAINPID=1");
        super::watchdog();
        super::stopping();
        let w = super::watchdog_interval();
        println!("interval={}", w.map_or(-1, |d| d.as_millis() as i64));
    }

    fn run_child(env: &[(&str, &str)], remove: &[&str]) -> String {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--ignored",
            "--exact",
            "notify::tests::notify_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GEOREP_NOTIFY_CHILD", "1");
        for k in remove {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn interval(stdout: &str) -> i64 {
        let v = stdout
            .lines()
            // libtest may print the test's name on the same line.
            .find_map(|l| l.split_once("interval=").map(|(_, v)| v))
            .unwrap_or_else(|| panic!("no interval line in {stdout}"));
        v.trim().parse().unwrap()
    }

    #[test]
    fn notifies_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let p = path.to_str().unwrap();

        let out = run_child(
            &[("NOTIFY_SOCKET", p), ("WATCHDOG_USEC", "3000000")],
            &["WATCHDOG_PID"],
        );
        assert_eq!(interval(&out), 1500, "half of WATCHDOG_USEC");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..4 {
            let n = sock.recv(&mut buf).expect("a datagram from the child");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\n",
                "STATUS=round 7 MAINPID=1\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n"
            ]
        );

        // A watchdog meant for another process (the pid systemd started
        // before a fork) is not ours to ping.
        let out = run_child(
            &[
                ("NOTIFY_SOCKET", p),
                ("WATCHDOG_USEC", "3000000"),
                ("WATCHDOG_PID", "1"),
            ],
            &[],
        );
        assert_eq!(interval(&out), -1);
        for _ in 0..4 {
            sock.recv(&mut buf).expect("the second child's datagrams");
        }

        // Without NOTIFY_SOCKET nothing is sent and there is no watchdog.
        let out = run_child(&[("WATCHDOG_USEC", "3000000")], &["NOTIFY_SOCKET"]);
        assert_eq!(interval(&out), -1);
        sock.set_nonblocking(true).unwrap();
        assert!(
            sock.recv(&mut buf).is_err(),
            "nothing sent without the variable"
        );
    }
}
