//! Tool layers: `[tools]`, `[packages]` and `[setup]` built into cached layers on top of the base
//! image. `recipe` expands env.toml into inputs; the lock pins them; [`build`] runs one step per
//! kind, in order: apt (the lock's `name=version` pins), python (a virtual environment at
//! [`VENV`] made by the image's `python3 -m venv --without-pip`, the lock's files installed by
//! the pinned [`uv`] with `--require-hashes --no-deps` from the store, offline, then the pip
//! wheel the image's Python bundles so the venv has pip as `python -m venv` would give it),
//! then each `[setup].run` command. A step runs in the container as root-in-namespace with network, writing into an
//! empty persistent upper directory that becomes `layers/<key>/`, where the key is sha256 over
//! the parent's key (the base manifest digest for the first step), the step's kind and its
//! locked inputs. So changing one step rebuilds it and those after it, and nothing before.
//!
//! Invariants: a layer enters the store only complete, cleaned and by rename, under a store
//! lock per key, so two builds of one key run it once; downloads come from caches mounted from
//! the store (`cache/pip`, `cache/uv`, `cache/apt`), never written into a layer; a step never sees
//! env.toml's `[env]` (the key does not cover it) and never the user's home. This module never
//! prints: status through the [`Reporter`], step output into `envs/<id>/build.log`.

mod clean;
pub use clean::{EPOCH, clamp_times};
mod inputs;
mod log;
use crate::tools::fetch;
pub use crate::tools::{recipe, uv};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Loaded, Mount, Network};
use crate::lock::Lock;
use crate::progress::Reporter;
use crate::pull::Pulled;
use crate::reference::Digest;
use crate::runtime::{self, RuntimeError, Spec};
use crate::store::{Store, StoreError};

/// The virtual environment Python packages go into; its `bin` comes first on PATH.
pub const VENV: &str = "/opt/devenv/venv";
/// Where the store's pip cache appears during a build.
const PIP_CACHE: &str = "/root/.cache/pip";
/// Where the store's uv work directory (`cache/uv`: uv's cache in `cache/`, the venv being
/// built in `venv/`) appears during a python step: one mount, so uv hardlinks from its cache
/// into the venv (link(2) fails across mounts), and the venv is written outside the overlay.
const UV_WORK: &str = "/opt/devenv";
/// Where the store's uv cache appears when a lower layer has `/opt/devenv` of its own.
const UV_CACHE: &str = "/root/.cache/uv";
/// Where the store's apt archive cache appears during a build.
const APT_ARCHIVES: &str = "/var/cache/apt/archives";
/// Where a step's input files (requirements) appear, read-only.
const INPUTS: &str = "/tmp/devenv-build";
pub use crate::store::gc::TOOL_LAYERS;
/// Bumped when steps change in ways their inputs do not show, so old layers are not reused.
const KEY_VERSION: &str = "devenv-build-v3";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("build step {step} exited with status {status}\n{tail}\nfull log: {}", log.display())]
    StepFailed {
        step: String,
        status: i32,
        /// The last lines of the step's output, indented.
        tail: String,
        log: PathBuf,
    },
    #[error("build step {step}: {source}")]
    Runtime { step: String, source: RuntimeError },
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error("[setup].run input `{pattern}`: {message}")]
    Inputs { pattern: String, message: String },
    #[error(transparent)]
    Uv(#[from] uv::UvError),
    #[error(transparent)]
    Recipe(#[from] recipe::RecipeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl crate::error::Hint for BuildError {
    fn hint(&self) -> Option<String> {
        match self {
            BuildError::StepFailed {
                step, status, tail, ..
            } => Some(step_hint(step, *status, tail)),
            BuildError::Runtime { source, .. } => source.hint(),
            BuildError::Uv(e) => e.hint(),
            BuildError::Fetch(e) => e.hint(),
            _ => None,
        }
    }
}

/// What a failed step's output says about the fix.
fn step_hint(step: &str, status: i32, tail: &str) -> String {
    let has = |s: &str| tail.contains(s);
    if has("Unable to locate package")
        || has("has no installation candidate")
        || (has("Version '") && has("was not found"))
    {
        "the package (or the locked version) is not in the image's Debian release; check the \
         name with `apt-cache search` there, or run `devenv lock --update`"
            .into()
    } else if has("Temporary failure in name resolution")
        || has("Could not resolve")
        || has("NewConnectionError")
        || has("Network is unreachable")
        || has("dns error")
        || has("tcp connect error")
    {
        "the network is unreachable from the build; check the connection or proxy settings \
         (http_proxy and https_proxy are passed in)"
            .into()
    } else if step.starts_with("python") && (status == 127 || has("No module named venv")) {
        "the base image has no working `python3 -m venv`: use an image with Python (and, on \
         Debian, python3-venv), or set `[tools] python`"
            .into()
    } else if has("THESE PACKAGES DO NOT MATCH THE HASHES") || has("Hash mismatch") {
        "a downloaded file does not match env.lock's sha256: the index changed the file, or the \
         lock was edited; run `devenv lock --update` to pin it again"
            .into()
    } else {
        "fix the command or the package list in env.toml; steps before this one stay cached, \
         so the next `devenv build` starts here"
            .into()
    }
}

/// How a build reports.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Copy each step's output to stderr as it runs (`-v`).
    pub echo: bool,
    /// Download nothing: every locked file must be in the store already.
    pub offline: bool,
    /// The team cache to look each missing layer up in before building it.
    pub cache: Option<std::sync::Arc<crate::cache::TeamCache>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Apt,
    Python,
    Run,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Apt => "apt",
            StepKind::Python => "python",
            StepKind::Run => "run",
        }
    }
}

/// One build step, before it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    /// What the status line and errors call it: `python (3 packages)`.
    pub label: String,
    /// The locked inputs, as hashed into the key.
    pub inputs: String,
    /// The command line run inside the container.
    pub argv: Vec<String>,
}

/// The steps `lock` and the `[setup].run` commands call for, in build order; a command's key
/// takes in the project files its `inputs` name (read from `project_dir`).
pub fn plan(
    lock: &Lock,
    run: &[crate::config::SetupStep],
    project_dir: &std::path::Path,
) -> Result<Vec<Step>, BuildError> {
    let mut steps = Vec::new();
    if !lock.apt.packages.is_empty() {
        let mut pins = lock.apt_pins();
        pins.dedup();
        let script = "set -e\n\
             apt-get -o APT::Sandbox::User=root -q update\n\
             apt-get -o APT::Sandbox::User=root -q install -y --no-install-recommends \"$@\"";
        let mut argv = vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into()];
        argv.extend(pins.iter().cloned());
        steps.push(Step {
            kind: StepKind::Apt,
            label: format!("apt ({})", count(pins.len(), "package")),
            inputs: pins.join("\n"),
            argv,
        });
    }
    if !lock.python.packages.is_empty() {
        let bin = uv::BIN;
        let install = format!(
            "{bin} pip install --no-config --python {VENV}/bin/python --offline --no-index \
             --no-deps --require-hashes"
        );
        let mut script = format!(
            "set -e\n\
             command -v python3 >/dev/null || {{ echo 'devenv: the image has no python3' >&2; exit 127; }}\n\
             [ -x {VENV}/bin/python ] || python3 -m venv --without-pip {VENV}\n\
             {install} --find-links {INPUTS}/files -r {INPUTS}/requirements.txt\n"
        );
        // uv records a local file's ctime in `uv_cache.json` (its own staleness check for path
        // installs): it differs between two stores, so it goes, with its RECORD line.
        let drop_cache_info = format!(
            "for f in {VENV}/lib/python*/site-packages/*.dist-info/uv_cache.json; do \
             [ -e \"$f\" ] || continue; rm -f \"$f\"; \
             sed -i '/\\/uv_cache\\.json,/d' \"${{f%/uv_cache.json}}/RECORD\"; done\n"
        );
        // pip as `python3 -m venv` would put it there, from the wheel the image's Python
        // bundles (Debian: /usr/share/python-wheels), without ensurepip's seconds of
        // bytecode compiling; a locked pip wins.
        if !lock.python.packages.iter().any(|p| p.name == "pip") {
            script.push_str(&format!(
                "whl=$(ls /usr/share/python-wheels/pip-*.whl \
                 \"$(python3 -c 'import ensurepip, os; print(os.path.dirname(ensurepip.__file__))' 2>/dev/null)\"/_bundled/pip-*.whl \
                 2>/dev/null | head -n 1)\n\
                 if [ -n \"$whl\" ]; then {bin} pip install --no-config --python {VENV}/bin/python \
                 --offline --no-index --no-deps \"$whl\"; \
                 else echo 'devenv: the image bundles no pip wheel; the venv has no pip'; fi\n"
            ));
        }
        script.push_str(&drop_cache_info);
        steps.push(Step {
            kind: StepKind::Python,
            label: format!("python ({})", count(lock.python.packages.len(), "package")),
            inputs: format!(
                "installer uv {}\n{}",
                uv::VERSION,
                lock.python_requirements()
            ),
            argv: vec!["/bin/sh".into(), "-c".into(), script],
        });
    }
    for step in run {
        let cmd = &step.cmd;
        // A step without inputs keeps the key it always had: its command alone.
        let mut key_inputs = cmd.clone();
        if !step.inputs.is_empty() {
            key_inputs.push_str("\ninputs\n");
            key_inputs.push_str(&inputs::describe(project_dir, &step.inputs)?);
        }
        steps.push(Step {
            kind: StepKind::Run,
            label: format!("run `{cmd}`"),
            inputs: key_inputs,
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
        });
    }
    Ok(steps)
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What uv installs from the store's files: `name==version --hash=sha256:HEX`, sorted. The
/// files sit in one directory under their own names (`--no-index --find-links`), so the
/// installed metadata records no download URL.
fn install_requirements(lock: &Lock) -> String {
    let mut lines: Vec<String> = lock
        .python
        .packages
        .iter()
        .map(|p| format!("{}=={} --hash=sha256:{}\n", p.name, p.version, p.sha256))
        .collect();
    lines.sort();
    lines.dedup();
    lines.concat()
}

/// A step's cache key: its parent's key (or the base manifest digest), its kind and inputs.
pub fn step_key(parent: &Digest, kind: StepKind, inputs: &str) -> Digest {
    let text = format!(
        "{KEY_VERSION}\nparent {parent}\nkind {}\n{inputs}",
        kind.as_str()
    );
    Digest::of(text.as_bytes())
}

/// `PATH` with the virtual environment's `bin` first.
pub fn path_with_venv(path: &str) -> String {
    if path.is_empty() {
        format!("{VENV}/bin")
    } else {
        format!("{VENV}/bin:{path}")
    }
}

/// Whether the lock puts Python packages into [`VENV`].
pub fn has_venv(lock: &Lock) -> bool {
    !lock.python.packages.is_empty()
}

/// An environment for the env's command or image: where the lock has a venv, its bin first on
/// PATH (so `python` and `pip` are the env's, not the image's) and VIRTUAL_ENV set; sorted.
pub fn activate_venv(lock: &Lock, env: &mut Vec<(String, String)>) {
    if !has_venv(lock) {
        return;
    }
    for (k, v) in env.iter_mut() {
        if k == "PATH" {
            *v = path_with_venv(v);
        }
    }
    env.push(("VIRTUAL_ENV".into(), VENV.into()));
    env.sort();
}

/// The steps `loaded` and `lock` call for on top of the base manifest `base`, each with its
/// layer's key and its parent's, in build order.
pub fn planned(
    loaded: &Loaded,
    lock: &Lock,
    base: &Digest,
) -> Result<Vec<(Step, Digest, Digest)>, BuildError> {
    let inputs = recipe::expand(&loaded.env, &loaded.project_dir)?;
    let steps = plan(lock, &inputs.run, &loaded.project_dir)?;
    let mut parent = base.clone();
    Ok(steps
        .into_iter()
        .map(|step| {
            let key = step_key(&parent, step.kind, &step.inputs);
            let below = std::mem::replace(&mut parent, key.clone());
            (step, key, below)
        })
        .collect())
}

/// A tool layer in the store and the step that made it.
pub struct BuiltLayer {
    pub dir: PathBuf,
    pub step: Step,
    /// The layer's key (its directory's name).
    pub key: Digest,
    /// The key of the layer below (the base manifest's digest for the first).
    pub parent: Digest,
    /// How this call got it.
    pub origin: Origin,
}

/// How [`build`] got a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The store had it.
    Store,
    /// The step ran.
    Built,
    /// It came from the team cache.
    TeamCache,
}

/// Build (or find in the store) every tool layer `loaded` and `lock` call for on top of
/// `base`, for `project`'s env; in order, to stack on the base layers.
pub fn build(
    loaded: &Loaded,
    project: &crate::project::Project,
    base: &Pulled,
    lock: &Lock,
    store: &Store,
    opts: &BuildOptions,
    ui: &dyn Reporter,
) -> Result<Vec<BuiltLayer>, BuildError> {
    let steps = planned(loaded, lock, &base.manifest)?;
    let env_dir = project.state_dir(store);
    let mut log = None;
    let mut lowers = base.layer_dirs(store);
    let mut built = Vec::new();
    let mut keys: Vec<Digest> = Vec::new();
    let mut venv = false;
    // After one failed lookup the cache is not asked again in this build.
    let mut cache = opts.cache.as_deref();
    for (step, key, parent) in steps {
        let dest = store.layer_path(&key);
        let mut origin = Origin::Store;
        if !dest.exists() {
            let _held = store.lock(&format!("build-{}", key.hex()))?;
            if !dest.exists()
                && let Some(c) = cache
            {
                match from_cache(c, store, &key, &step, lock.layers.get(&key), &dest, ui) {
                    Cached::Installed => origin = Origin::TeamCache,
                    Cached::Not => {}
                    Cached::Down => cache = None,
                }
            }
            if !dest.exists() {
                origin = Origin::Built;
                ui.status("Building", &step.label);
                if log.is_none() {
                    fs_err::create_dir_all(&env_dir)?;
                    log = Some(env_dir.join("build.log"));
                    fs_err::write(env_dir.join("build.log"), "")?;
                }
                let ctx = StepContext {
                    store,
                    project_dir: &project.dir,
                    env_dir: &env_dir,
                    image_env: &base.config.config.env,
                    lock,
                    venv,
                    echo: opts.echo,
                    offline: opts.offline,
                    ui,
                    log: log.as_deref().unwrap_or(Path::new("build.log")),
                };
                run_step(&ctx, &step, &key, &lowers, &dest)?;
            }
        }
        tracing::debug!("step {} is layer {}", step.label, key.hex());
        venv |= step.kind == StepKind::Python;
        lowers.push(dest.clone());
        keys.push(key.clone());
        built.push(BuiltLayer {
            dir: dest,
            step,
            key,
            parent,
            origin,
        });
    }
    let json = serde_json::to_vec_pretty(&keys).map_err(std::io::Error::other)?;
    fs_err::create_dir_all(&env_dir)?;
    // A warm start finds the same list: rewriting it (with its fdatasync) cost milliseconds.
    let path = env_dir.join(TOOL_LAYERS);
    if fs_err::read(&path).ok().as_deref() != Some(json.as_slice()) {
        store.write_atomic(&path, &json)?;
    }
    Ok(built)
}

/// Fetch from `cache` every tool layer the store lacks and the cache has, in build order, before
/// the base image is even there: the keys come from the lock alone (the base manifest digest it
/// pins, the locked inputs), so this runs beside the base image's pull. A failing cache is one
/// note and stops the prefetch (returns false: do not ask it again); a refused entry is a note
/// and the next layer is asked for. [`build`] then builds what is still missing.
pub fn prefetch(
    loaded: &Loaded,
    lock: &Lock,
    base: &Digest,
    store: &Store,
    cache: &crate::cache::TeamCache,
    ui: &dyn Reporter,
) -> bool {
    let Ok(steps) = planned(loaded, lock, base) else {
        // build reports it.
        return true;
    };
    for (step, key, _) in steps {
        let dest = store.layer_path(&key);
        if dest.exists() {
            continue;
        }
        let Ok(held) = store.lock(&format!("build-{}", key.hex())) else {
            return true;
        };
        if dest.exists() {
            continue;
        }
        if from_cache(cache, store, &key, &step, lock.layers.get(&key), &dest, ui) == Cached::Down {
            return false;
        }
        drop(held);
    }
    true
}

/// What asking the team cache for one layer gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cached {
    /// Its entry verified and is the layer now.
    Installed,
    /// No entry, or one refused (said in a note): build it.
    Not,
    /// The cache failed (said in a note): build it, and do not ask again.
    Down,
}

/// Install the team cache's entry for `key` at `dest`, if it has a good one; what went wrong
/// is one note.
fn from_cache(
    cache: &crate::cache::TeamCache,
    store: &Store,
    key: &Digest,
    step: &Step,
    pin: Option<&Digest>,
    dest: &Path,
    ui: &dyn Reporter,
) -> Cached {
    let installed = cache.lookup(key).and_then(|entry| match entry {
        None => Ok(None),
        Some(entry) => cache.install(store, &entry, pin, dest, ui).map(Some),
    });
    match installed {
        Ok(Some(written)) => {
            crate::export::remember(store, key.hex(), &written);
            ui.status("Fetched", &format!("{} from the team cache", step.label));
            Cached::Installed
        }
        Ok(None) => {
            tracing::debug!("team cache {}: no entry for {}", cache.repo, step.label);
            Cached::Not
        }
        Err(e) => {
            ui.note(&format!(
                "team cache {}: {}: {e}; building it instead",
                cache.repo, step.label
            ));
            match e {
                crate::cache::CacheError::Refused { .. } => Cached::Not,
                _ => Cached::Down,
            }
        }
    }
}

struct StepContext<'a> {
    store: &'a Store,
    project_dir: &'a Path,
    env_dir: &'a Path,
    image_env: &'a [String],
    lock: &'a Lock,
    /// A python step ran before: the venv is on PATH.
    venv: bool,
    echo: bool,
    offline: bool,
    ui: &'a dyn Reporter,
    log: &'a Path,
}

/// Run `step` on `lowers` into a staging upper directory, clean it and rename it to `dest`.
fn run_step(
    ctx: &StepContext,
    step: &Step,
    key: &Digest,
    lowers: &[PathBuf],
    dest: &Path,
) -> Result<(), BuildError> {
    let staging = ctx.store.staging_dir("build")?;
    let upper = staging.path().join("upper");
    let home = staging.path().join("home");
    let input_dir = staging.path().join("in");
    for d in [&upper, &home, &input_dir] {
        fs_err::create_dir(d)?;
    }
    let mut mounts = Vec::new();
    let mut extra_env: Vec<(String, String)> = Vec::new();
    // The venv built outside the overlay (with the store lock that owns its directory), moved
    // into the upper directory once the step succeeded; removed whatever happens.
    let mut venv_out: Option<VenvOut> = None;
    let cache = ctx.store.root().join("cache");
    match step.kind {
        StepKind::Apt => {
            let apt = cache.join("apt");
            fs_err::create_dir_all(apt.join("partial"))?;
            mounts.push(bind(&apt, APT_ARCHIVES, false));
        }
        StepKind::Python => {
            // uv installs the locked files from the store, by name, version and sha256.
            let tool = uv::ensure(ctx.store, ctx.offline, ctx.ui)?;
            mounts.push(tool.mount());
            let files = input_dir.join("files");
            fs_err::create_dir(&files)?;
            let wanted: Vec<fetch::Wanted<'_>> = ctx
                .lock
                .python
                .packages
                .iter()
                .map(|p| fetch::Wanted {
                    name: &p.name,
                    url: &p.url,
                    sha256: &p.sha256,
                })
                .collect();
            let cached = fetch::fetch(ctx.store, &wanted, ctx.offline, ctx.ui)?;
            for c in &cached {
                let link = files.join(&c.file_name);
                if fs_err::hard_link(&c.path, &link).is_err() {
                    fs_err::copy(&c.path, &link)?;
                }
            }
            fs_err::write(
                input_dir.join("requirements.txt"),
                install_requirements(ctx.lock),
            )?;
            mounts.push(bind(&input_dir, INPUTS, true));
            // Downloads first: the venv lock below is not held while they run.
            let work = uv::work_dir(ctx.store);
            fs_err::create_dir_all(work.join("cache"))?;
            let lower_has_it = lowers
                .iter()
                .any(|l| fs_err::symlink_metadata(l.join("opt/devenv")).is_ok());
            if lower_has_it {
                // The venv must merge with what the image has there: through the overlay,
                // copying from the cache.
                mounts.push(bind(&work.join("cache"), UV_CACHE, false));
                extra_env.push(("UV_CACHE_DIR".into(), UV_CACHE.into()));
                extra_env.push(("UV_LINK_MODE".into(), "copy".into()));
            } else {
                // One python step at a time per store uses `cache/uv/venv`.
                let held = ctx.store.lock("uv-venv")?;
                let venv = work.join("venv");
                crate::store::remove_tree(&venv)?;
                venv_out = Some(VenvOut {
                    _held: held,
                    dir: venv,
                });
                mounts.push(bind(&work, UV_WORK, false));
                extra_env.push(("UV_CACHE_DIR".into(), format!("{UV_WORK}/cache")));
                extra_env.push(("UV_LINK_MODE".into(), "hardlink".into()));
            }
        }
        StepKind::Run => {}
    }
    let pip = cache.join("pip");
    fs_err::create_dir_all(&pip)?;
    mounts.push(bind(&pip, PIP_CACHE, false));

    let venv = ctx.venv || step.kind == StepKind::Python;
    let mut env = step_env(ctx.image_env, venv);
    for (k, v) in extra_env {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    }
    let mut log_file = fs_err::OpenOptions::new()
        .append(true)
        .create(true)
        .open(ctx.log)?;
    std::io::Write::write_all(
        &mut log_file,
        format!("==> {} (layer {})\n", step.label, key.hex()).as_bytes(),
    )?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    let tee = log::Tee::start(read, log_file.into_parts().0, ctx.echo);
    let cwd = if step.kind == StepKind::Run {
        ctx.project_dir.to_path_buf()
    } else {
        PathBuf::from("/")
    };
    let spec = Spec {
        lowers: lowers.to_vec(),
        state_dir: ctx.env_dir.join("state"),
        project_dir: ctx.project_dir.to_path_buf(),
        cwd,
        home,
        home_target: PathBuf::from("/root"),
        env,
        argv: step.argv.clone(),
        shell: None,
        hostname: "devenv-build".into(),
        network: Network::Host,
        root: true,
        mounts: mounts.clone(),
        upper: Some(upper.clone()),
        output: Some(Arc::new(write)),
        gpu: None,
        sandbox: Default::default(),
        quiet: false,
        pod: None,
    };
    // What the runtime mounts on: mount points it made in the upper directory, not the step's.
    let points = runtime::mount_points(&spec);
    let result = run_container(&spec);
    drop(spec);
    let tail = tee.finish()?;
    let status = result.map_err(|source| BuildError::Runtime {
        step: step.label.clone(),
        source,
    })?;
    if status != 0 {
        return Err(BuildError::StepFailed {
            step: step.label.clone(),
            status,
            tail: tail
                .iter()
                .map(|l| format!("  | {l}\n"))
                .collect::<String>(),
            log: ctx.log.to_path_buf(),
        });
    }
    if let Some(out) = &venv_out {
        let dir = upper.join(UV_WORK.trim_start_matches('/'));
        fs_err::create_dir_all(&dir)?;
        fs_err::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        if fs_err::symlink_metadata(&out.dir).is_ok() {
            fs_err::rename(&out.dir, dir.join("venv"))?;
        }
    }
    clean::clean_upper(&upper, lowers, &points)?;
    fs_err::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    match fs_err::rename(&upper, dest) {
        Ok(()) => Ok(()),
        // Someone else's build of the same key won (it ran without our lock: an older devenv).
        Err(_) if dest.exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The venv a python step builds in the store's `cache/uv/venv`, under the store lock that
/// owns that directory; whatever is left of it goes on drop (a failed step's, a crash's is
/// removed by the next step before it starts).
struct VenvOut {
    _held: crate::store::Lock,
    dir: PathBuf,
}

impl Drop for VenvOut {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.dir);
    }
}

#[cfg(not(test))]
fn run_container(spec: &Spec) -> Result<i32, RuntimeError> {
    runtime::run(spec)
}

/// Unit tests run from the test binary, which is no namespace helper: use devenv's.
#[cfg(test)]
fn run_container(spec: &Spec) -> Result<i32, RuntimeError> {
    runtime::run_with(
        &runtime::test_binary(),
        spec,
        false,
        runtime::Teardown::Wait,
    )
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        source: source.to_path_buf(),
        target: PathBuf::from(target),
        read_only,
    }
}

/// A step's environment: the image's, the host's proxies, and what makes builds quiet and
/// reproducible; the venv first on PATH once it exists.
fn step_env(image_env: &[String], venv: bool) -> Vec<(String, String)> {
    let mut env = crate::project::root_step_env(image_env, &[("PIP_CACHE_DIR", PIP_CACHE.into())]);
    if venv {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let ours = [
            ("PATH", path_with_venv(&path)),
            ("VIRTUAL_ENV", VENV.into()),
        ];
        for (k, v) in ours {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v));
        }
    }
    env
}

#[cfg(test)]
mod tests;
