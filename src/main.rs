use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = georep::cli::Cli::parse();
    std::process::ExitCode::from(georep::cli::run(cli) as u8)
}
