//! `georep --generate man|complete-bash|complete-zsh|complete-fish`: the man
//! page and shell completions, from the clap definitions (as ripgrep does),
//! so they never disagree with the binary.

use std::io::{self, Write};

use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::Cli;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// Writes what was asked for to `out`.
pub fn generate(what: Generate, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command()
        .bin_name("georep")
        .disable_help_subcommand(true);
    cmd.build();
    let shell = match what {
        Generate::Man => return man(&cmd, out),
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "georep", &mut buf);
    out.write_all(&buf)
}

/// One page for the whole tool: clap_mangen's page for `georep` without its
/// list of `georep-COMMAND(1)` pages (there are none), then a section per
/// command, nested ones included, with its synopsis and options.
fn man(cmd: &clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let top = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    page.extend_from_slice(b".SH COMMANDS\nEach command below has its own options; \\fBgeorep COMMAND \\-\\-help\\fR shows them too.\n");
    let mut subs = Vec::new();
    commands(cmd, &mut subs);
    for sub in subs {
        let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
        writeln!(page, ".SH \"{}\"", name.to_uppercase())?;
        let man = clap_mangen::Man::new(sub.clone());
        let mut part = Vec::new();
        man.render_description_section(&mut part)?;
        man.render_synopsis_section(&mut part)?;
        man.render_options_section(&mut part)?;
        page.extend_from_slice(&demote(&part));
    }
    top.render_version_section(&mut page)?;
    out.write_all(&once_preamble(&page))
}

/// Each clap_mangen rendering starts with the same two-line string
/// definition; the page needs it once, at the top.
fn once_preamble(page: &[u8]) -> Vec<u8> {
    const PRE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];
    let text = String::from_utf8_lossy(page);
    let mut out = format!("{}\n{}\n", PRE[0], PRE[1]);
    for line in text.lines().filter(|l| !PRE.contains(l)) {
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// Every command below `cmd`, depth first, in definition order.
fn commands(cmd: &clap::Command, into: &mut Vec<clap::Command>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        into.push(sub.clone());
        commands(sub, into);
    }
}

/// A command's sections become subsections of its own section; its
/// DESCRIPTION heading goes (the text sits right under the command's name).
/// Safe on roff text: a line of text starting with `.` is escaped.
fn demote(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == ".SH DESCRIPTION" {
            continue;
        }
        match line.strip_prefix(".SH ") {
            Some(h) => out.push_str(&format!(".SS {h}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.into_bytes()
}
