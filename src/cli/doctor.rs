//! `devenv doctor`: check this machine and say how to fix what fails.

use crate::ExitCode;
use std::io::Write;

use crate::doctor::{self, Check, Status};

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Check what devenv needs: unprivileged user namespaces (the sysctls and a real \
probe), overlay with userxattr on the store's filesystem, user xattrs, free disk, a writable store, \
the env's registry with the configured credentials, proxy and CA settings, config.toml, the \
Python package index in effect, a private network's way out, and the GPU driver. Each \
check prints ok, warn or fail, and each failure its fix. Exits 1 when something fails."
)]
pub struct DoctorArgs {
    /// Print the checks as JSON: {"ok": bool, "checks": [{"name", "status", "detail", "fix"?}]}
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DoctorArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let mut checks: Vec<Check> = Vec::new();
    checks.push(doctor::check_userns_sysctls());
    let env = crate::config::find_and_load(&ctx.cwd).ok();
    match ctx.store() {
        Ok(store) => {
            let tmp = store.root().join("tmp");
            checks.push(doctor::check_store_writable(store.root()));
            checks.push(doctor::check_user_xattrs(&tmp));
            // The probe's scratch dir is in tmp/, which gc empties under its exclusive lock.
            let gc_lock = store.keep_from_gc();
            let (userns, overlay) = doctor::probe(&tmp);
            drop(gc_lock);
            checks.push(userns);
            checks.push(overlay);
            checks.push(doctor::check_disk(store.root()));
        }
        Err(e) => checks.push(Check {
            name: "store",
            status: Status::Fail,
            detail: format!("{e:#}"),
            fix: Some("set DEVENV_HOME to a writable directory".into()),
        }),
    }
    checks.extend(doctor::check_network_settings());
    if let Some(loaded) = &env
        && let Ok(image) = loaded.env.base_image()
        && !ctx.offline
    {
        checks.push(super::pull::check_registry(&image));
    }
    checks.push(doctor::check_outbound(env.as_ref().is_some_and(|l| {
        l.env.container.network == crate::config::Network::Private
    })));
    checks.push(doctor::check_gpu(
        env.as_ref().is_some_and(|l| l.env.container.gpu),
    ));
    if let Some(loaded) = env.as_ref().filter(|l| l.env.container.gpu)
        && let Some(c) = doctor::check_gpu_preflight(loaded)
    {
        checks.push(c);
    }

    let ok = checks.iter().all(|c| c.status != Status::Fail);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({ "ok": ok, "checks": checks });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        for c in &checks {
            let word = match c.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            writeln!(out, "{word:>4}  {:<14} {}", c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(out, "      {:<14} fix: {fix}", "")?;
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
