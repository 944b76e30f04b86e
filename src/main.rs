use clap::Parser;
use georep::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Commands that only print end quietly when their reader goes away
    // (`georep status | head -1`), as coreutils do. The others keep SIGPIPE
    // ignored: a master writing to a slave that died must learn why from
    // the error, and a slave must remove its temporaries.
    if !matches!(
        cli.command,
        Some(Command::Sync(_) | Command::Slave(_) | Command::Start { .. })
    ) {
        default_sigpipe();
    }
    std::process::ExitCode::from(georep::cli::run(cli) as u8)
}

fn default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: called before any other thread exists; SIG_DFL installs no code.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}
