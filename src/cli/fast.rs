//! The hot path's argument parser: `devenv [GLOBAL…] run [--root] [--] CMD…` and
//! `devenv [GLOBAL…] shell [--root]` read without building clap's command tree, which costs
//! about 0.3 ms of a 4 ms warm start (every subcommand and argument is built and checked before
//! the first word is matched). It accepts only the plain forms and declines everything else —
//! help, version, bundled or `=`-joined flags, unknown words, non-UTF-8 — which clap then
//! parses as before. The tests check, for many command lines, that whatever this accepts clap
//! reads the same way.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Cli, Command, run};

/// The parsed command line, or `None` when clap must parse it.
pub fn parse(args: &[OsString]) -> Option<Cli> {
    let mut words = Vec::with_capacity(args.len());
    for a in args.iter().skip(1) {
        words.push(a.to_str()?);
    }
    let mut cli = Cli {
        directory: None,
        quiet: false,
        verbose: false,
        no_progress: false,
        offline: false,
        locked: false,
        trust: false,
        command: Command::Shell(run::ShellArgs {
            root: false,
            preserve_fds: 0,
        }),
    };
    let mut rest = words.into_iter();
    let sub = loop {
        match rest.next()? {
            "-q" | "--quiet" => cli.quiet = true,
            "-v" | "--verbose" => cli.verbose = true,
            "--no-progress" => cli.no_progress = true,
            "--offline" => cli.offline = true,
            "--locked" => cli.locked = true,
            "-C" => match rest.next()? {
                dir if dir.starts_with('-') || dir.is_empty() => return None,
                dir => cli.directory = Some(PathBuf::from(dir)),
            },
            "run" => break "run",
            "shell" => break "shell",
            _ => return None,
        }
    };
    let mut rest = rest.peekable();
    let root = rest.next_if_eq(&"--root").is_some();
    cli.command = if sub == "shell" {
        if rest.next().is_some() {
            return None;
        }
        Command::Shell(run::ShellArgs {
            root,
            preserve_fds: 0,
        })
    } else {
        if rest.next_if_eq(&"--").is_none() && rest.peek()?.starts_with('-') {
            return None;
        }
        let command: Vec<String> = rest.map(str::to_string).collect();
        if command.is_empty() {
            return None;
        }
        Command::Run(run::RunArgs {
            root,
            preserve_fds: 0,
            command,
        })
    };
    Some(cli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(line: &[&str]) -> Vec<OsString> {
        std::iter::once("devenv")
            .chain(line.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// What clap makes of `line`, as text (Cli has no PartialEq).
    fn clap(line: &[&str]) -> Result<String, String> {
        Cli::try_parse_from(args(line))
            .map(|c| format!("{c:?}"))
            .map_err(|e| e.kind().to_string())
    }

    #[test]
    fn accepts_the_plain_forms_and_reads_them_as_clap_does() {
        let accepted: &[&[&str]] = &[
            &["run", "--", "true"],
            &["run", "true"],
            &["run", "ls", "-la", "--", "x"],
            &["run", "--", "-weird", "--root"],
            &["run", "--root", "--", "id", "-u"],
            &["run", "--root", "id"],
            &["-q", "run", "--", "true"],
            &["--no-progress", "-C", "/tmp/p", "-q", "run", "--", "true"],
            &[
                "-v",
                "--offline",
                "--locked",
                "run",
                "python3",
                "-c",
                "print(1)",
            ],
            &["-C", "sub dir", "run", "sh", "-c", "exit 3"],
            &["shell"],
            &["shell", "--root"],
            &["--quiet", "--verbose", "shell"],
            &["run", "--", "--"],
            &["run", "--", "true", "--help"],
        ];
        for line in accepted {
            let fast = parse(&args(line)).unwrap_or_else(|| panic!("declined {line:?}"));
            assert_eq!(Ok(format!("{fast:?}")), clap(line), "{line:?}");
        }
    }

    #[test]
    fn declines_what_only_clap_should_judge() {
        let declined: &[&[&str]] = &[
            &[],
            &["--help"],
            &["-V"],
            &["run"],
            &["run", "--"],
            &["run", "--help"],
            &["run", "-h"],
            &["run", "--root"],
            &["run", "-q", "true"],
            &["run", "--root", "--root", "true"],
            &["shell", "--help"],
            &["shell", "extra"],
            &["shell", "--root", "-q"],
            &["shell", "--preserve-fds", "1"],
            &["--trust", "run", "true"],
            &["--locked", "--trust", "run", "--", "true"],
            &["run", "--preserve-fds", "1", "--", "true"],
            &["run", "--root", "--preserve-fds=2", "true"],
            &["-qv", "run", "true"],
            &["-C"],
            &["-C", "-q", "run", "true"],
            &["-C/tmp", "run", "true"],
            &["--directory=/tmp", "run", "true"],
            &["pull"],
            &["status", "--json"],
            &["completions", "bash"],
            &["runn", "true"],
        ];
        for line in declined {
            assert!(parse(&args(line)).is_none(), "accepted {line:?}");
        }
    }

    #[test]
    fn declines_arguments_that_are_not_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let mut a = args(&["run", "--"]);
        a.push(OsString::from_vec(vec![0x66, 0xff]));
        assert!(parse(&a).is_none());
    }
}
