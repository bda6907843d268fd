//! `walwitness completions` and `walwitness man`: generated from the same clap definition the binary
//! parses with, so they cannot drift from the flags.
use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::Exit;

pub fn completions(args: CompletionsArgs) -> Exit {
    let mut cmd = Cli::command();
    // Into memory first: `generate` panics when its writer fails (a closed pipe, say).
    let mut text = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "walwitness", &mut text);
    let mut out = std::io::stdout().lock();
    match out.write_all(&text).and_then(|()| out.flush()) {
        Ok(()) => Exit::Ok,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
        Err(e) => {
            eprintln!("walwitness: error: cannot write the completions: {e}");
            Exit::Internal
        }
    }
}

pub fn man(args: ManArgs) -> Exit {
    let result = match &args.dir {
        None => render(&Cli::command(), &mut std::io::stdout().lock()),
        Some(dir) => write_pages(dir),
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
        Err(e) => {
            eprintln!("walwitness: error: cannot write the manual page: {e}");
            Exit::Internal
        }
    }
}

fn render(cmd: &clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    out.flush()
}

/// `walwitness.1` and one `walwitness-COMMAND.1` per subcommand (nested ones too), as `man` expects.
fn write_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    write_tree(&cmd, "walwitness", dir)
}

fn write_tree(cmd: &clap::Command, name: &str, dir: &Path) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_owned());
    let mut f = std::fs::File::create(dir.join(format!("{name}.1")))?;
    render(&page, &mut f)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_tree(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_every_command_naming_its_flags() {
        let d = tempfile::tempdir().unwrap();
        write_pages(d.path()).unwrap();
        let main = std::fs::read_to_string(d.path().join("walwitness.1")).unwrap();
        assert!(main.starts_with(".ie") || main.contains(".TH walwitness"), "{main}");
        let capture = std::fs::read_to_string(d.path().join("walwitness-capture.1")).unwrap();
        assert!(capture.contains("\\-\\-dsn") && capture.contains("\\-\\-table"), "{capture}");
        assert!(d.path().join("walwitness-attribution-install.1").exists());
        assert!(d.path().join("walwitness-report.1").exists());
    }

    #[test]
    fn bash_completions_know_the_subcommands_and_flags() {
        let mut cmd = Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "walwitness", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("capture") && s.contains("--dsn-file") && s.contains("--since"), "{s}");
    }
}
