//! `devenv lock [--update [NAME]]`: resolve what env.toml asks for and write env.lock.

use crate::ExitCode;

use anyhow::Context as _;

use crate::lock::{self, LockOptions, Update};
use crate::progress::Reporter;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Resolve env.toml into env.lock: the image's manifest digest for this platform, \
every Python distribution (dependencies included) with the sha256 of the exact file the image's \
interpreter installs, resolved in the image by devenv's pinned uv (fetched from your package index once per \
store), and every apt package with its version. Only the parts whose inputs changed \
are resolved again; a current env.lock is left byte-identical. With --locked, fail listing what \
differs instead of writing."
)]
pub struct LockArgs {
    /// Move pins on purpose: all of them, or only NAME (`image`, or a package in env.lock)
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    pub update: Option<String>,
}

pub fn run(args: LockArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let store = ctx.store()?;
    let mut opts = LockOptions::new(&loaded, ctx.locked, ctx.offline);
    opts.update = args.update.map(|n| match n.trim() {
        "" => Update::All,
        name => Update::Name(name.to_string()),
    });
    let path = loaded.project_dir.join(lock::FILE_NAME);
    let before = fs_err::read(&path).ok();
    // Resolving pulls the image and stages in tmp/: gc must wait for it.
    let _gc = store.keep_from_gc()?;
    let lock = lock::ensure(&loaded, &store, &opts, &ctx.ui)
        .with_context(|| format!("locking {}", loaded.path.display()))?;
    if fs_err::read(&path).ok() == before {
        ctx.ui.status(
            "Fresh",
            &format!(
                "{} is up to date ({} Python, {} apt packages)",
                path.display(),
                lock.python.packages.len(),
                lock.apt.packages.len()
            ),
        );
    }
    Ok(ExitCode::SUCCESS)
}
