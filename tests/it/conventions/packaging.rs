//! What a distribution ships: the man page and completions (generated from
//! the clap definitions), the systemd unit, the Debian package's assets.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::CommandFactory;

use crate::support::process::{georep, output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn generate(what: &str) -> String {
    let out = output(georep().args(["--generate", what]));
    assert!(out.status.success(), "--generate {what}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every command, nested ones as "keys create".
fn commands() -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, into: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            let name = format!("{prefix}{}", sub.get_name());
            into.push(name.clone());
            walk(sub, &format!("{name} "), into);
        }
    }
    let mut all = Vec::new();
    walk(&georep::cli::Cli::command(), "", &mut all);
    assert!(all.len() >= 10, "{all:?}");
    all
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn man_page_has_every_command() {
    let man = generate("man");
    assert!(
        man.contains("\n.TH georep 1 "),
        "{}",
        &man[..200.min(man.len())]
    );
    assert_eq!(man.matches(".ds Aq").count(), 2, "one preamble");
    for c in commands() {
        let heading = format!(".SH \"GEOREP {}\"", c.to_uppercase());
        assert!(man.contains(&heading), "no {heading} in the man page");
    }
    // Options of a command are on the page, not only its name.
    assert!(man.contains("whole\\-file"), "sync's --whole-file");
    if !have("groff") {
        eprintln!("skipping the groff check: groff not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("georep.1");
    fs::write(&page, &man).unwrap();
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "groff warnings on the man page"
    );
}

#[test]
fn completions_know_every_command() {
    for (shell, checker) in [
        ("complete-bash", "bash"),
        ("complete-zsh", "zsh"),
        ("complete-fish", "fish"),
    ] {
        let script = generate(shell);
        for c in commands() {
            let last = c.rsplit(' ').next().unwrap();
            assert!(script.contains(last), "{shell}: no {last}");
        }
        assert!(script.contains("whole-file"), "{shell}: sync's options");
        if !have(checker) {
            eprintln!("skipping the {checker} syntax check: {checker} not found");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("completion");
        fs::write(&f, &script).unwrap();
        let out = Command::new(checker).arg("-n").arg(&f).output().unwrap();
        assert!(out.status.success(), "{checker} -n: {out:?}");
    }
}

#[test]
fn no_command_is_a_usage_error() {
    let out = output(&mut georep());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = output(georep().args(["--generate", "nroff"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze") {
        eprintln!("skipping: systemd-analyze not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(repo().join("contrib/systemd/georep@.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/georep start --foreground %i"));
    assert!(text.contains("Type=notify"));
    // verify checks that ExecStart's binary exists: use the one under test.
    let text = text.replace("/usr/bin/georep", env!("CARGO_BIN_EXE_georep"));
    fs::write(dir.path().join("georep@.service"), text).unwrap();
    let instance = dir.path().join("georep@backup.service");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    // Lines about other units (the host's own, missing in a container) are
    // not ours to judge; any line about this unit is a defect.
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("georep")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{said}");
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
}

/// The `[package.metadata.deb]` assets: each exists in the repository or is
/// made by contrib/deb/prepare (run here on the binary under test).
#[test]
fn debian_package_assets_exist() {
    let manifest: toml::Table = fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        Command::new(repo().join("contrib/deb/prepare"))
            .env("GEOREP_BIN", env!("CARGO_BIN_EXE_georep"))
            .env("GEOREP_ASSETS", dir.path()),
    );
    assert!(out.status.success(), "prepare: {out:?}");
    let mut dests = Vec::new();
    for a in assets {
        let a = a.as_array().unwrap();
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        dests.push(dest.to_string());
        let path: PathBuf = match src.strip_prefix("target/assets/") {
            Some(made) => dir.path().join(made),
            None if src.starts_with("target/release/") => continue,
            None => repo().join(src),
        };
        assert!(path.is_file(), "asset {src} missing ({})", path.display());
    }
    for want in [
        "usr/bin/",
        "usr/share/man/man1/",
        "usr/lib/systemd/system/",
        "etc/georep/volumes.toml",
        "usr/share/bash-completion/completions/georep",
    ] {
        assert!(
            dests.iter().any(|d| d == want),
            "nothing installed to {want}"
        );
    }
    // The page gunzips to the page the binary generates.
    let gz = dir.path().join("georep.1.gz");
    let page = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap();
    assert_eq!(String::from_utf8(page.stdout).unwrap(), generate("man"));
    // The example volumes file exposes nothing, and parses.
    let vols: toml::Table = fs::read_to_string(repo().join("contrib/deb/volumes.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(vols.is_empty());
    package_file_list();
}

/// With cargo-deb installed: build the package from the binary under test
/// and check what it installs.
fn package_file_list() {
    if !have("cargo-deb") {
        eprintln!("skipping the package file list: cargo-deb not installed");
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_georep"));
    // The manifest names target/release/georep and target/assets/.
    if bin != repo().join("target/release/georep") {
        eprintln!("skipping the package file list: not a release build in ./target");
        return;
    }
    let out = output(Command::new(repo().join("contrib/deb/prepare")).env("GEOREP_BIN", bin));
    assert!(out.status.success(), "prepare: {out:?}");
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        Command::new("cargo")
            .args([
                "deb",
                "--no-build",
                "--no-strip",
                "--fast",
                "--offline",
                "-o",
            ])
            .arg(dir.path())
            .current_dir(repo()),
    );
    assert!(out.status.success(), "cargo deb: {out:?}");
    let deb = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let list = output(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for f in [
        "./usr/bin/georep",
        "./usr/share/man/man1/georep.1.gz",
        "./usr/share/bash-completion/completions/georep",
        "./usr/share/zsh/vendor-completions/_georep",
        "./usr/share/fish/vendor_completions.d/georep.fish",
        "./usr/lib/systemd/system/georep@.service",
        "./etc/georep/volumes.toml",
        "./etc/logrotate.d/georep",
        "./usr/share/doc/georep/keys/README.md",
        "./usr/share/doc/georep/examples/hooks/log-faulty",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} not in the package:\n{list}"
        );
    }
    let control = output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Package"),
    );
    assert_eq!(String::from_utf8_lossy(&control.stdout).trim(), "georep");
}

#[test]
fn example_hooks_are_valid_shell() {
    for h in ["log-faulty", "mail-faulty", "checkpoint-notify"] {
        let p = repo().join("hooks").join(h);
        let out = Command::new("sh").arg("-n").arg(&p).output().unwrap();
        assert!(out.status.success(), "{h}: {out:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o022, 0, "{h} must not be group/other-writable");
        assert_ne!(mode & 0o100, 0, "{h} must be executable");
    }
}
