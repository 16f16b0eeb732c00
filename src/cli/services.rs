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
#[command(long_about = "Print a service's output (its log from its last start).")]
pub struct LogsArgs {
    /// The service, as named in [services.NAME]
    pub name: String,
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
    if !loaded.env.services.contains_key(&args.name) {
        let names: Vec<&str> = loaded.env.services.keys().map(String::as_str).collect();
        return Err(anyhow::anyhow!("env.toml has no [services.{}]", args.name)).hint(
            if names.is_empty() {
                "this env has no services".to_string()
            } else {
                format!("its services: {}", names.join(", "))
            },
        );
    }
    let path = crate::services::log_path(&dir, &args.name);
    let mut file = match fs_err::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ctx.ui
                .note(&format!("service `{}` has not run yet", args.name));
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let sock = crate::services::socket_path(&dir);
    let mut pos = file.stream_position()?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let len = fs_err::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Truncated: the service started again.
            pos = 0;
        }
        if len > pos {
            file.seek(std::io::SeekFrom::Start(pos))?;
            buf.clear();
            file.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        } else if crate::services::connect(&sock).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
