//! `devenv up`, `devenv down`, `devenv logs`: the env's services without a shell.

use std::io::{Read, Seek, Write};

use crate::ExitCode;
use crate::progress::Reporter;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Start the env's [services] (and its private network with the published \
ports) and keep them running without a shell, until `devenv down`. Returns once every service \
is ready. Sessions (`devenv shell`, `devenv run`) share them; without `up`, services start with \
the first session and stop with the last."
)]
pub struct UpArgs {}

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Stop the env's services now (SIGTERM, then SIGKILL after 10 s) and its private \
network, even while sessions use them; volumes are kept."
)]
pub struct DownArgs {}

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Print a service's output (its log from its last start). Without NAME, every \
service's, each line after its service's name (`db    | …`), as `docker compose logs` does."
)]
pub struct LogsArgs {
    /// The service, as named in [services.NAME]; every service when left out
    pub name: Option<String>,
    /// Keep printing what it writes until its services stop
    #[arg(short, long)]
    pub follow: bool,
}

pub fn up(_args: UpArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let store = ctx.store()?;
    let env = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
    let Some(plan) = env.services_plan(&loaded, &store)? else {
        ctx.ui
            .note("this env has no [services] and no private network: nothing to start");
        return Ok(ExitCode::SUCCESS);
    };
    let (reply, _) = crate::services::request(&plan, crate::services::Op::Up, &ctx.ui)?;
    for n in &reply.notes {
        ctx.ui.note(n);
    }
    let names: Vec<String> = reply.services.iter().map(|s| s.name.clone()).collect();
    ctx.ui.status(
        "Up",
        &format!(
            "{} ({})",
            env.project.name,
            if names.is_empty() {
                "network only".into()
            } else {
                names.join(", ")
            }
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn services_dir(
    ctx: &super::Context,
) -> anyhow::Result<(crate::config::Loaded, std::path::PathBuf)> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let store = ctx.store()?;
    let project = crate::project::Project::new(&loaded.project_dir)?;
    let dir = project.state_dir(&store).join("services");
    Ok((loaded, dir))
}

pub fn down(_args: DownArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let (loaded, dir) = services_dir(ctx)?;
    match crate::services::ask_running(&dir, crate::services::Op::Down) {
        Ok(_) => {
            ctx.ui.status(
                "Stopped",
                &format!("the services of {}", loaded.project_dir.display()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(crate::services::ServiceError::NotRunning) => {
            ctx.ui.note("no services are running for this project");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn logs(args: LogsArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    use crate::error::HintExt as _;
    let (loaded, dir) = services_dir(ctx)?;
    let known: Vec<&str> = loaded.env.services.keys().map(String::as_str).collect();
    let names: Vec<&str> = match &args.name {
        Some(name) if !known.contains(&name.as_str()) => {
            return Err(anyhow::anyhow!("env.toml has no [services.{name}]")).hint(
                if known.is_empty() {
                    "this env has no services".to_string()
                } else {
                    format!("its services: {}", known.join(", "))
                },
            );
        }
        Some(name) => vec![name.as_str()],
        None if known.is_empty() => {
            return Err(anyhow::anyhow!("this env has no [services]"))
                .hint("a service is a [services.NAME] table in env.toml (docs/services.md)");
        }
        None => known,
    };
    // One service: its bytes as written. Several: whole lines, each after its service's name.
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut tails: Vec<Tail> = names
        .iter()
        .map(|n| Tail {
            path: crate::services::log_path(&dir, n),
            prefix: if args.name.is_some() {
                Vec::new()
            } else {
                format!("{n:width$} | ").into_bytes()
            },
            file: None,
            pos: 0,
            pending: Vec::new(),
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let mut any = false;
    for t in &mut tails {
        any |= t.read_new(&mut out, !args.follow)?;
    }
    if !any && tails.iter().all(|t| t.file.is_none()) {
        ctx.ui.note(&match &args.name {
            Some(n) => format!("service `{n}` has not run yet"),
            None => "no service of this env has run yet".into(),
        });
        return Ok(ExitCode::SUCCESS);
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let sock = crate::services::socket_path(&dir);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut any = false;
        for t in &mut tails {
            any |= t.read_new(&mut out, false)?;
        }
        if !any && crate::services::connect(&sock).is_err() {
            for t in &mut tails {
                t.read_new(&mut out, true)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// One service's log as `devenv logs` follows it.
struct Tail {
    path: std::path::PathBuf,
    /// `name | ` before each line; empty: the bytes as they are.
    prefix: Vec<u8>,
    file: Option<fs_err::File>,
    pos: u64,
    /// A line not ended yet (with a prefix only).
    pending: Vec<u8>,
}

impl Tail {
    /// Print what the log gained since the last call; `last`: end an unfinished line too.
    /// Whether anything was new.
    fn read_new(&mut self, out: &mut impl Write, last: bool) -> anyhow::Result<bool> {
        if self.file.is_none() {
            match fs_err::File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(false);
        };
        let len = file.metadata()?.len();
        if len < self.pos {
            // Truncated: the service started again.
            self.pos = 0;
        }
        let mut buf = Vec::new();
        if len > self.pos {
            file.seek(std::io::SeekFrom::Start(self.pos))?;
            file.read_to_end(&mut buf)?;
            self.pos += buf.len() as u64;
        }
        let new = !buf.is_empty();
        if self.prefix.is_empty() {
            out.write_all(&buf)?;
        } else {
            out.write_all(&prefixed(&self.prefix, &mut self.pending, &buf, last))?;
        }
        out.flush()?;
        Ok(new)
    }
}

/// The complete lines of `pending` + `new`, each after `prefix`; what is left of an unfinished
/// line stays in `pending`, unless `last` ends it.
fn prefixed(prefix: &[u8], pending: &mut Vec<u8>, new: &[u8], last: bool) -> Vec<u8> {
    pending.extend_from_slice(new);
    let mut out = Vec::new();
    let mut rest: &[u8] = pending;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        out.extend_from_slice(prefix);
        out.extend_from_slice(&rest[..=i]);
        rest = &rest[i + 1..];
    }
    if last && !rest.is_empty() {
        out.extend_from_slice(prefix);
        out.extend_from_slice(rest);
        out.push(b'\n');
        rest = &[];
    }
    *pending = rest.to_vec();
    out
}

#[cfg(test)]
mod tests {
    use super::prefixed;

    #[test]
    fn every_line_gets_its_service_and_an_unfinished_one_waits() {
        let mut pending = Vec::new();
        assert_eq!(
            prefixed(b"db    | ", &mut pending, b"one\ntw", false),
            b"db    | one\n"
        );
        assert_eq!(pending, b"tw");
        assert_eq!(
            prefixed(b"db    | ", &mut pending, b"o\n\nthree", false),
            b"db    | two\ndb    | \n"
        );
        assert_eq!(
            prefixed(b"db    | ", &mut pending, b"", true),
            b"db    | three\n"
        );
        assert!(pending.is_empty());
        assert!(prefixed(b"x | ", &mut pending, b"", true).is_empty());
    }
}
