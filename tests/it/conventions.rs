//! Operator conventions: event hooks (real shell scripts), the metrics
//! endpoint (a real HTTP GET, promtool), the man page and completions, the
//! systemd unit (systemd-analyze) and the Debian package's assets.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use georep::hooks::{Event, HookEnv, Hooks};

use crate::support::{georep_test, TestDir};

mod logs;
pub mod metrics;
mod packaging;

type Lines = Arc<Mutex<Vec<String>>>;
type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// A log that keeps its lines, for the test to read.
fn log() -> (Lines, Log) {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    (
        lines,
        Arc::new(move |s: &str| l.lock().unwrap().push(s.to_string())),
    )
}

fn logged(lines: &Lines, needle: &str) -> bool {
    lines.lock().unwrap().iter().any(|l| l.contains(needle))
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A hooks directory only we can write, in the test's directory.
fn hooks_dir(t: &TestDir) -> PathBuf {
    let d = t.path("hooks");
    fs::create_dir(&d).unwrap();
    chmod(&d, 0o700);
    d
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    chmod(&p, 0o700);
    p
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

fn env(session: &str) -> HookEnv {
    HookEnv {
        session: session.into(),
        state: "Active".into(),
        source: "/data".into(),
        target: "dr::backup".into(),
        ..HookEnv::default()
    }
}

georep_test!(hooks_get_event_and_session_in_order, |t: TestDir| {
    let dir = hooks_dir(&t);
    let out = t.path("out");
    let o = out.display();
    script(
        &dir,
        "10-record",
        &format!(
            r#"{{ echo "args=$*"; echo "event=$GEOREP_EVENT session=$GEOREP_SESSION state=$GEOREP_STATE"
   echo "source=$GEOREP_SOURCE target=$GEOREP_TARGET error=[$GEOREP_LAST_ERROR]"
   echo "cp=${{GEOREP_CHECKPOINT_TIME-unset}} done=${{GEOREP_CHECKPOINT_COMPLETED-unset}} at=${{GEOREP_CHECKPOINT_COMPLETION_TIME-unset}}"
   echo "stdin=[$(cat)]"; }} >> {o}
echo "hello from $1""#
        ),
    );
    script(&dir, "20-second", &format!("echo \"second $1\" >> {o}"));
    // Never run: hidden, backups, package leftovers, not executable, a directory.
    for name in [".hidden", "30-old~", "40-x.dpkg-old", "50-y.rpmnew"] {
        script(&dir, name, &format!("echo WRONG {name} >> {o}"));
    }
    let plain = script(&dir, "60-plain", &format!("echo WRONG plain >> {o}"));
    chmod(&plain, 0o600);
    fs::create_dir(dir.join("70-dir")).unwrap();

    let (lines, log) = log();
    let hooks = Hooks::new(Some(dir), Duration::from_secs(20), log);
    hooks.fire(Event::Started, env("s1"));
    hooks.fire(
        Event::CheckpointCompleted,
        HookEnv {
            last_error: Some("slave: disk\0 full".into()),
            checkpoint_time: Some(1_700_000_000.0),
            checkpoint_completed: Some(true),
            checkpoint_completion_time: Some(1_700_000_123.5),
            ..env("s1")
        },
    );
    drop(hooks); // waits for the queued hooks
    let want = "\
args=started
event=started session=s1 state=Active
source=/data target=dr::backup error=[]
cp=unset done=unset at=unset
stdin=[]
second started
args=checkpoint-completed
event=checkpoint-completed session=s1 state=Active
source=/data target=dr::backup error=[slave: disk full]
cp=1700000000 done=true at=1700000123.500
stdin=[]
second checkpoint-completed
";
    assert_eq!(read(&out), want, "log: {:?}", lines.lock().unwrap());
    assert!(logged(
        &lines,
        "hook 10-record started: stdout: hello from started"
    ));
});

georep_test!(
    hook_past_its_timeout_is_killed_with_its_children,
    |t: TestDir| {
        let dir = hooks_dir(&t);
        let out = t.path("out");
        let pidfile = t.path("bg.pid");
        script(
            &dir,
            "10-sleep",
            &format!("sleep 60 &\necho $! > {}\nsleep 60", pidfile.display()),
        );
        script(
            &dir,
            "20-next",
            &format!("echo \"ran $1\" >> {}", out.display()),
        );
        let (lines, log) = log();
        let started = Instant::now();
        let hooks = Hooks::new(Some(dir), Duration::from_secs(1), log);
        hooks.fire(Event::Faulty, env("s1"));
        drop(hooks);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "took {took:?}");
        assert_eq!(read(&out), "ran faulty\n");
        assert!(logged(
            &lines,
            "hook 10-sleep faulty: killed after its timeout"
        ));
        // The hook's background child went with it.
        let pid = read(&pidfile).trim().to_string();
        assert!(!pid.is_empty(), "the hook wrote its child's pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for whoever inherited it.
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(Instant::now() < deadline, "background child alive: {stat}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
);

georep_test!(failing_hook_is_logged_and_the_next_runs, |t: TestDir| {
    let dir = hooks_dir(&t);
    let out = t.path("out");
    script(&dir, "10-fail", "echo boom >&2\nexit 3");
    script(
        &dir,
        "20-after",
        &format!("echo \"ran $1\" >> {}", out.display()),
    );
    let (lines, log) = log();
    let hooks = Hooks::new(Some(dir), Duration::from_secs(20), log);
    hooks.fire(Event::Recovered, env("s1"));
    drop(hooks);
    assert_eq!(read(&out), "ran recovered\n");
    assert!(logged(&lines, "hook 10-fail recovered: stderr: boom"));
    assert!(
        logged(&lines, "hook 10-fail recovered: failed: exit status: 3"),
        "{:?}",
        lines.lock().unwrap()
    );
});

georep_test!(hooks_others_could_change_are_refused, |t: TestDir| {
    let dir = hooks_dir(&t);
    let out = t.path("out");
    let open = script(&dir, "10-open", &format!("echo open >> {}", out.display()));
    chmod(&open, 0o757);
    let fine = script(&dir, "20-fine", &format!("echo fine >> {}", out.display()));
    let (lines, log) = log();
    let hooks = Hooks::new(Some(dir.clone()), Duration::from_secs(20), log.clone());
    hooks.fire(Event::Paused, env("s1"));
    drop(hooks);
    assert_eq!(read(&out), "fine\n");
    assert!(logged(
        &lines,
        "hook 10-open: refused: writable by group or others (mode 757)"
    ));

    // A directory others can write to: nothing in it runs.
    chmod(&dir, 0o770);
    let hooks = Hooks::new(Some(dir.clone()), Duration::from_secs(20), log.clone());
    hooks.fire(Event::Resumed, env("s1"));
    drop(hooks);
    assert_eq!(read(&out), "fine\n");
    assert!(logged(&lines, "hooks: not running hooks for resumed"));
    chmod(&dir, 0o700);

    // Owned by another user (only root can give a file away).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&fine, Some(65534), None).unwrap();
        let hooks = Hooks::new(Some(dir), Duration::from_secs(20), log);
        hooks.fire(Event::Stopped, env("s1"));
        drop(hooks);
        assert_eq!(read(&out), "fine\n");
        assert!(logged(&lines, "hook 20-fine: refused: owned by uid 65534"));
    } else {
        eprintln!("skipping the other-owner case: not root");
    }
});

georep_test!(fire_never_blocks_and_a_full_queue_drops, |t: TestDir| {
    let dir = hooks_dir(&t);
    let out = t.path("out");
    script(
        &dir,
        "10-slow",
        &format!("sleep 0.3\necho $1 >> {}", out.display()),
    );
    let (lines, log) = log();
    let hooks = Hooks::new(Some(dir), Duration::from_secs(2), log);
    let events = [Event::Active, Event::Passive];
    let started = Instant::now();
    for i in 0..100 {
        hooks.fire(events[i % 2], env("s1"));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "fire blocked: {took:?}");
    assert!(logged(&lines, "hooks: queue full"));
    drop(hooks);
    assert!(logged(&lines, "skipped, the daemon is stopping"));
    // Whatever ran, ran in the order fired.
    let ran: Vec<String> = read(&out).lines().map(String::from).collect();
    assert!(!ran.is_empty());
    for (i, e) in ran.iter().enumerate() {
        assert_eq!(e, events[i % 2].as_str(), "{ran:?}");
    }
});

georep_test!(no_hooks_dir_is_no_hooks, |_t: TestDir| {
    let (lines, log) = log();
    let hooks = Hooks::new(None, Duration::from_secs(1), log);
    hooks.fire(Event::Started, env("s1"));
    drop(hooks);
    assert!(lines.lock().unwrap().is_empty());
});

georep_test!(example_hooks_write_their_lines, |t: TestDir| {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = t.path("georep-events.log");
    for (hook, event, want) in [
        ("log-faulty", Event::Faulty, "is Faulty: slave: disk full"),
        (
            "checkpoint-notify",
            Event::CheckpointCompleted,
            "checkpoint 2023-11-14T22:13:20Z completed at 2023-11-14T22:15:23Z",
        ),
    ] {
        let mut cmd = Command::new(repo.join("hooks").join(hook));
        cmd.arg(event.as_str())
            .env("GEOREP_SESSION", "s1")
            .env("GEOREP_EVENT", event.as_str())
            .env("GEOREP_STATE", "Faulty")
            .env("GEOREP_LAST_ERROR", "slave: disk full")
            .env("GEOREP_CHECKPOINT_TIME", "1700000000")
            .env("GEOREP_CHECKPOINT_COMPLETION_TIME", "1700000123")
            .env("GEOREP_HOOK_LOG", &out)
            .stdin(Stdio::null());
        let st = cmd.status().unwrap();
        assert!(st.success(), "{hook}: {st}");
        let text = read(&out);
        assert!(
            text.lines().any(|l| l.contains("s1") && l.contains(want)),
            "{hook}: {text}"
        );
    }
    // log-faulty says nothing about other events.
    let before = read(&out);
    let st = Command::new(repo.join("hooks/log-faulty"))
        .arg("started")
        .env("GEOREP_HOOK_LOG", &out)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(read(&out), before);
});
