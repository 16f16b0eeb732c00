//! One project's env, from env.toml to what the runtime starts: the one place that decides the
//! order of things (lock, pull, record, build) and each fact of a session (its environment,
//! home, mounts, GPU, sandbox). Every command that needs the env materialized (shell, run,
//! build, export, and what later issues add: push, up, the cluster exports) calls
//! [`materialize`]; those that start something in it ask [`Env::session`] for the runtime's
//! [`Spec`]. cargo's `ops` layer and uv's `environment.rs` are the models: commands parse,
//! this decides, the core modules do.
//!
//! Invariants: gc is kept away from the first fetch until the env's record names what it uses
//! ([`crate::store::GcGuard`]); nothing here prompts (trust is decided by the command, before).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::build::BuiltLayer;
use crate::config::{Loaded, Mount};
use crate::lock::Lock;
use crate::project::{self, Project};
use crate::pull::{self, PullOptions, Pulled};
use crate::reference::ImageRef;
use crate::registry::{Client, RegistryError};
use crate::runtime::{self, Spec};
use crate::services;
use crate::store::Store;
use crate::ui::Ui;

/// How to materialize: the global flags that bear on it.
pub struct Options {
    /// `--locked`: env.lock must match env.toml already.
    pub locked: bool,
    /// `--offline`: only what the store has.
    pub offline: bool,
}

/// An env ready to enter: the base image pulled, env.lock current, tool layers built.
pub struct Env {
    pub image: ImageRef,
    pub pulled: Pulled,
    pub lock: Lock,
    pub project: Project,
    /// `envs/<id>/` in the store.
    pub state_dir: PathBuf,
    /// The base image's unpacked layers, in manifest order.
    pub base_dirs: Vec<PathBuf>,
    /// The tool layers on top of them, with the steps that made them.
    pub tools: Vec<BuiltLayer>,
    /// `[services.NAME]`'s images, pulled by their locked digests, by name.
    pub services: Vec<(String, Pulled)>,
}

/// The registry client every fetch uses: the user's settings (insecure registries, mirrors).
pub fn client() -> Result<Client, RegistryError> {
    Client::new(crate::registry::settings::Settings::load()?)
}

/// Lock (writing env.lock when missing or stale), pull the locked image, record the env, build
/// missing tool layers.
pub fn materialize(loaded: &Loaded, store: &Store, opts: &Options, ui: &Ui) -> anyhow::Result<Env> {
    // From the first fetch (locking pulls the image and stages resolutions in tmp/) until the
    // env record names the image and its tool layers.
    let gc = store.keep_from_gc()?;
    let platform = loaded.env.platform();
    let lock_opts = crate::lock::LockOptions::new(loaded, opts.locked, opts.offline);
    let lock = crate::lock::ensure(loaded, store, &lock_opts, ui)
        .with_context(|| format!("locking {}", loaded.path.display()))?;
    let base = loaded.env.base_image()?;
    let image = lock.image_for(&platform).unwrap_or_else(|| base.clone());
    let base_digest = image.digest.clone();
    let pull_opts = PullOptions {
        platform,
        offline: opts.offline,
        refresh_tag: false,
    };
    let cache = if opts.offline {
        None
    } else {
        team_cache(loaded)?.map(std::sync::Arc::new)
    };
    // Tool layers from the team cache come down beside the base image: their keys are the
    // lock's alone.
    let pulled = std::thread::scope(|s| {
        // Only where the base image is not in the store yet (a teammate's first start): a warm
        // start starts no thread for it.
        let fresh = |d: &crate::reference::Digest| !store.manifest_path(d).exists();
        let prefetch = match (&cache, &base_digest) {
            (Some(c), Some(d)) if fresh(d) => {
                Some(s.spawn(|| crate::build::prefetch(loaded, &lock, d, store, c, ui)))
            }
            _ => None,
        };
        let pulled = pull::pull(&image, &pull_opts, store, &client, ui);
        let usable = prefetch.is_none_or(|p| p.join().unwrap_or(false));
        (pulled, usable)
    });
    let (pulled, cache_usable) = pulled;
    let pulled = pulled.with_context(|| format!("pulling {image}"))?;
    let cache = cache.filter(|_| cache_usable);
    let project = Project::new(&loaded.project_dir)?;
    // The record names the image as env.toml does; the digests pin what it resolved to.
    let state_dir = project.touch(store, &base.to_string(), &pulled.resolved, &pulled.manifest)?;
    let build_opts = crate::build::BuildOptions {
        echo: ui.verbose(),
        offline: opts.offline,
        cache,
    };
    let tools = crate::build::build(loaded, &project, &pulled, &lock, store, &build_opts, ui)
        .with_context(|| format!("building the tool layers of {}", loaded.path.display()))?;
    let mut lock = lock;
    pin_layers(loaded, &mut lock, &tools, store, opts.locked, ui)?;
    let services = pull_services(loaded, &lock, store, &pull_opts, &client, &state_dir, ui)?;
    drop(gc);
    Ok(Env {
        image,
        base_dirs: pulled.layer_dirs(store),
        pulled,
        lock,
        project,
        state_dir,
        tools,
        services,
    })
}

/// Pull every service's image by its locked digest (nothing goes to a registry when the store
/// has it), and record them in `services.json` beside env.json, where gc finds them.
fn pull_services(
    loaded: &Loaded,
    lock: &Lock,
    store: &Store,
    opts: &PullOptions,
    client: &dyn Fn() -> Result<Client, RegistryError>,
    state_dir: &Path,
    ui: &Ui,
) -> anyhow::Result<Vec<(String, Pulled)>> {
    let platform = loaded.env.platform();
    let mut out = Vec::new();
    let mut records = Vec::new();
    for (name, service) in &loaded.env.services {
        let image = lock
            .service_image(name, &platform)
            .unwrap_or_else(|| service.image.clone());
        let pulled = pull::pull(&image, opts, store, client, ui)
            .with_context(|| format!("pulling {image} for [services.{name}]"))?;
        records.push(crate::store::gc::EnvRecord {
            project: loaded.project_dir.clone(),
            last_used: 0,
            image: service.image.to_string(),
            resolved: pulled.resolved.clone(),
            manifest: pulled.manifest.clone(),
        });
        out.push((name.clone(), pulled));
    }
    let path = state_dir.join(crate::store::gc::SERVICE_IMAGES);
    if records.is_empty() && !path.exists() {
        return Ok(out);
    }
    let bytes = serde_json::to_vec_pretty(&records)?;
    if fs_err::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
        store.write_atomic(&path, &bytes)?;
    }
    Ok(out)
}

/// Where the GPU preflight reads the driver's version: `/`, or `DEVENV_GPU_ROOT` (a fixture
/// directory with `proc/driver/nvidia/version` and `sys/module/nvidia/version`, for tests).
fn gpu_root() -> PathBuf {
    std::env::var_os("DEVENV_GPU_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The GPU preflight for an env with `[container].gpu` (docs/gpu.md): refuse to start when the
/// host's driver cannot run the CUDA that `lock` (and the image's `CUDA_VERSION`) needs, with
/// the fix. Nothing to check without a driver (the runtime says so) or without a lock yet.
/// `DEVENV_GPU_PREFLIGHT=off` skips it (forward-compatibility packages on data-center GPUs).
pub fn gpu_preflight(
    loaded: &Loaded,
    lock: Option<&Lock>,
    image_env: &[String],
    ui: &Ui,
) -> anyhow::Result<()> {
    use crate::error::HintExt as _;
    if !loaded.env.container.gpu
        || std::env::var_os("DEVENV_GPU_PREFLIGHT").is_some_and(|v| v == "off")
    {
        return Ok(());
    }
    let Some(driver) = host_driver() else {
        return Ok(());
    };
    if let Some(lib) = driver.library {
        ui.note(&format!(
            "the NVIDIA kernel module is {} but its libraries are {lib} (updated without a \
             reboot?): CUDA fails with \"driver/library version mismatch\" until the host \
             reboots or reloads the nvidia module",
            driver.version
        ));
    }
    let Some(lock) = lock else { return Ok(()) };
    let need = crate::preflight::cuda_needed(lock, image_env);
    if let Err(refused) = crate::preflight::check(&driver, need.as_ref()) {
        let fix = refused.fix();
        return Err(anyhow::Error::new(refused)).hint(fix);
    }
    Ok(())
}

/// The host's NVIDIA driver as the preflight reads it (under [`gpu_root`]).
pub fn host_driver() -> Option<crate::preflight::HostDriver> {
    // The file the runtime binds: its name carries the library's version.
    let libcuda = runtime::gpu::discover().and_then(|g| {
        g.libraries
            .iter()
            .find(|(n, _)| n.starts_with("libcuda.so"))
            .and_then(|(_, p)| fs_err::canonicalize(p).ok())
    });
    crate::preflight::host_driver(&gpu_root(), libcuda.as_deref())
}

/// `NVIDIA_VISIBLE_DEVICES`, `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER` for a GPU
/// selection (`gpu = [0, 1]`, indices as `nvidia-smi` and `/dev/nvidiaN` number them) on a
/// host with GPUs `host`: indices the host lacks are left out with a note; a scheduler's
/// `CUDA_VISIBLE_DEVICES` (Slurm's gres) wins over env.toml's list, with a note.
pub fn gpu_visible(
    selected: Option<&[u32]>,
    host: &[u32],
    scheduler: bool,
    ui: &Ui,
) -> Vec<(&'static str, String)> {
    let Some(selected) = selected else {
        return vec![("NVIDIA_VISIBLE_DEVICES", "all".into())];
    };
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let (there, missing): (Vec<u32>, Vec<u32>) = selected.iter().partition(|i| host.contains(i));
    if !missing.is_empty() {
        ui.note(&format!(
            "[container].gpu: this host has no GPU {} (it has {}); left out",
            list(&missing),
            if host.is_empty() {
                "none".to_string()
            } else {
                list(host)
            }
        ));
    }
    if scheduler {
        ui.note(
            "[container].gpu: CUDA_VISIBLE_DEVICES is set (by a scheduler?); it wins over \
             env.toml's list of GPUs",
        );
        return vec![("NVIDIA_VISIBLE_DEVICES", list(&there))];
    }
    vec![
        ("NVIDIA_VISIBLE_DEVICES", list(&there)),
        ("CUDA_VISIBLE_DEVICES", list(&there)),
        // CUDA's own default order is fastest first; nvidia-smi's and /dev's is the bus's.
        ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".into()),
    ]
}

/// The team cache in effect for `loaded` (DEVENV_CACHE, the user's config.toml, env.toml).
pub fn team_cache(loaded: &Loaded) -> anyhow::Result<Option<crate::cache::TeamCache>> {
    let Some((repo, origin)) = crate::cache::configured(loaded.env.cache.as_ref())? else {
        return Ok(None);
    };
    Ok(Some(crate::cache::TeamCache::new(repo, origin)))
}

/// [`team_cache`] for a command that fills it (`flag`: `--push-cache`, `--cache`): its absence is
/// an error, found before anything is built.
pub fn required_team_cache(loaded: &Loaded, flag: &str) -> anyhow::Result<crate::cache::TeamCache> {
    team_cache(loaded)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{flag}: no team cache is set; set `[cache] registry = \"HOST/REPO\"` in env.toml \
             or config.toml, or DEVENV_CACHE"
        )
    })
}

/// Pin in env.lock the diff_id of every Python layer (byte-identical on every machine), so a
/// team-cache entry that differs is refused; the pins are exactly the current layers'. A layer
/// built here that differs from its pin keeps the pin and says so. `--locked` writes nothing.
fn pin_layers(
    loaded: &Loaded,
    lock: &mut Lock,
    tools: &[BuiltLayer],
    store: &Store,
    locked: bool,
    ui: &Ui,
) -> anyhow::Result<()> {
    use crate::build::{Origin, StepKind};
    let mut pins = std::collections::BTreeMap::new();
    for t in tools.iter().filter(|t| t.step.kind == StepKind::Python) {
        let pinned = lock.layers.get(&t.key);
        let diff_id = match (pinned, t.origin) {
            // Checked when it entered the store.
            (Some(p), Origin::Store | Origin::TeamCache) => p.clone(),
            _ => match crate::export::remembered(store, t.key.hex()) {
                Some(w) => w.diff_id,
                None => crate::export::layer_diff_id(&t.dir)
                    .with_context(|| format!("hashing the layer {}", t.dir.display()))?,
            },
        };
        match pinned {
            Some(p) if *p != diff_id => {
                crate::progress::Reporter::warn(
                    ui,
                    &format!(
                        "the {} layer built here is {diff_id}, but env.lock pins {p} (built \
                     elsewhere from the same lock): this machine does not reproduce it; the pin \
                     stays, and team-cache entries other than the pinned one are refused",
                        t.step.label
                    ),
                );
                pins.insert(t.key.clone(), p.clone());
            }
            _ => {
                pins.insert(t.key.clone(), diff_id);
            }
        }
    }
    if locked || lock.layers == pins {
        return Ok(());
    }
    let path = loaded.project_dir.join(crate::lock::FILE_NAME);
    // The pins make a team cache safer, not the env usable: a project directory that cannot be
    // written (a read-only checkout) loses them, not the run.
    if let Err(e) = crate::lock::pin_layers(&path, lock, pins) {
        crate::progress::Reporter::warn(
            ui,
            &format!(
                "could not pin the Python layer in {}: {e}; team-cache entries for it are \
                 checked against their own digests only",
                path.display()
            ),
        );
    }
    Ok(())
}

/// One entry into the env (`shell`, `run`): what the command asked for, and what the user
/// let through (trust, descriptors).
pub struct Session {
    /// Empty: an interactive shell.
    pub argv: Vec<String>,
    /// `--root`.
    pub root: bool,
    /// Where the command starts (canonical, in the project).
    pub cwd: PathBuf,
    /// `[container].mounts` as trust judged them (sources resolved).
    pub mounts: Vec<Mount>,
    /// The user's SSH agent socket, when granted.
    pub agent: Option<PathBuf>,
    /// `--preserve-fds`, and systemd's `LISTEN_*` when they were for us.
    pub preserve_fds: u32,
    pub listen_env: Vec<(String, String)>,
    pub quiet: bool,
}

/// Where the user's SSH agent appears inside, when granted (trust.rs): in the container's own
/// /tmp (a tmpfs of PID 1's), the socket and nothing else of its host directory.
pub const AGENT_SOCK: &str = "/tmp/.devenv-ssh-agent.sock";

impl Env {
    /// Base layers, then tool layers: the container's lowers.
    pub fn lowers(&self) -> Vec<PathBuf> {
        let tools = self.tools.iter().map(|t| t.dir.clone());
        self.base_dirs.iter().cloned().chain(tools).collect()
    }

    /// The env's own environment, as an exported image carries it: the image's `Env`, then
    /// `[env]`, the venv first on PATH; nothing of the host or of one user.
    pub fn image_environment(&self, loaded: &Loaded) -> Vec<(String, String)> {
        let mut env = project::container_env(
            &self.pulled.config.config.env,
            &loaded.env.env,
            &|_| None,
            &[],
            &[],
        );
        crate::build::activate_venv(&self.lock, &mut env);
        env
    }

    /// The tool layers as an image's history tells them.
    pub fn tool_layers(&self) -> Vec<crate::export::ToolLayer> {
        use crate::build::StepKind;
        self.tools
            .iter()
            .map(|t| crate::export::ToolLayer {
                dir: t.dir.clone(),
                created_by: match t.step.kind {
                    StepKind::Apt => {
                        format!("devenv: apt install {}", t.step.inputs.replace('\n', " "))
                    }
                    StepKind::Python => format!("devenv: {}", t.step.label),
                    StepKind::Run => format!("devenv: run {}", t.step.inputs),
                },
            })
            .collect()
    }

    /// What an exported or pushed image says of itself: [`Env::image_environment`], a
    /// `WorkingDir` of `/workspaces/<project>` (Dev Containers' convention: the path does not
    /// depend on where the project sits on one machine), a numeric `User` (the base's when it
    /// is numeric, else `1000:1000`: devenv runs commands as a user, and a kubelet with
    /// `runAsNonRoot` refuses names), and labels naming the base and hashing env.toml and
    /// env.lock.
    pub fn image_meta(&self, loaded: &Loaded) -> crate::export::Meta {
        let hash = |p: &Path| {
            fs_err::read(p)
                .ok()
                .map(|b| crate::reference::Digest::of(&b).to_string())
        };
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(
            "org.opencontainers.image.base.name".to_string(),
            self.image.to_string(),
        );
        labels.insert(
            "org.opencontainers.image.base.digest".to_string(),
            self.pulled.manifest.to_string(),
        );
        if let Some(h) = hash(&loaded.path) {
            labels.insert("dev.devenv.env-toml.sha256".into(), h);
        }
        if let Some(h) = hash(&loaded.project_dir.join(crate::lock::FILE_NAME)) {
            labels.insert("dev.devenv.env-lock.sha256".into(), h);
        }
        let base_user = self.pulled.config.config.user.as_str();
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let user = match base_user.split_once(':') {
            Some((u, g)) if numeric(u) && numeric(g) => base_user.to_string(),
            None if numeric(base_user) => base_user.to_string(),
            _ => "1000:1000".to_string(),
        };
        let dir = format!("/workspaces/{}", self.project.name);
        let (uid, gid) = user.split_once(':').unwrap_or((&user, &user));
        let workspace = crate::export::Workspace {
            dir: dir.clone(),
            uid: uid.parse().unwrap_or(0),
            gid: gid.parse().unwrap_or(0),
            root: loaded.project_dir.clone(),
            files: Vec::new(),
        };
        crate::export::Meta {
            env: self.image_environment(loaded),
            working_dir: Some(dir),
            user: Some(user),
            labels,
            workspace: Some(workspace),
        }
    }

    /// The runtime's spec for `session`: home, environment (image `Env` < `[env]` < the host's
    /// allow-list < devenv's own), mounts, GPU, sandbox. Copies the user's git identity into
    /// the env's home first, when env.toml lets it.
    pub fn session(&self, loaded: &Loaded, session: Session, ui: &Ui) -> Spec {
        let lowers = self.lowers();
        let user = runtime::host_user().name.clone();
        let home_target = runtime::home_target(&lowers, &user, session.root);
        let home = self.state_dir.join("home");
        let name = &self.project.name;
        let login = if session.root {
            "root".to_string()
        } else {
            user
        };
        let ours = [
            ("HOME", home_target.display().to_string()),
            ("USER", login.clone()),
            ("LOGNAME", login),
            ("DEVENV", "1".to_string()),
            ("DEVENV_ENV", name.clone()),
            // Debian's bash.bashrc replaces PS1 but shows $debian_chroot: both say where one is.
            ("debian_chroot", format!("devenv:{name}")),
            ("PS1", format!("(devenv:{name}) \\u@\\h:\\w\\$ ")),
        ];
        let host_names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        let mut env = project::container_env(
            &self.pulled.config.config.env,
            &loaded.env.env,
            &|k| std::env::var(k).ok(),
            &host_names,
            &ours,
        );
        crate::build::activate_venv(&self.lock, &mut env);
        let listen_pid = !session.listen_env.is_empty();
        env.extend(session.listen_env);
        let mut mounts = session.mounts;
        if let Some(sock) = session.agent {
            mounts.push(Mount {
                source: sock,
                target: PathBuf::from(AGENT_SOCK),
                read_only: false,
            });
            env.retain(|(k, _)| k != "SSH_AUTH_SOCK");
            env.push(("SSH_AUTH_SOCK".into(), AGENT_SOCK.into()));
        }
        if loaded.env.container.git_identity {
            copy_git_identity(&home);
        }
        let gpu = loaded
            .env
            .container
            .gpu
            .then(runtime::gpu::discover)
            .flatten();
        if loaded.env.container.gpu && gpu.is_none() {
            ui.note(
                "[container].gpu: no NVIDIA driver is loaded on this host (no /dev/nvidiactl); \
                 starting without a GPU",
            );
        }
        if let Some(g) = &gpu {
            if !g.uvm {
                ui.note(
                    "[container].gpu: /dev/nvidia-uvm is missing (the host has not run CUDA since \
                     boot), and a rootless container cannot create it: CUDA fails until the host \
                     runs `nvidia-modprobe -u -c=0` (or any CUDA program) once",
                );
            }
            if !g.libraries.iter().any(|(n, _)| n.starts_with("libcuda.so")) {
                ui.note(
                    "[container].gpu: the NVIDIA driver is loaded but no libcuda.so was found \
                     (ldconfig -p, /usr/local/nvidia/lib64): the GPU is visible, CUDA will not \
                     start; install the driver's CUDA library (Debian: libcuda1)",
                );
            }
            let host_gpus = runtime::gpu::indices(g);
            let scheduler = env.iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES");
            let visible = gpu_visible(
                loaded.env.container.gpu_devices.as_deref(),
                &host_gpus,
                scheduler,
                ui,
            );
            for (k, v) in visible {
                env.retain(|(n, _)| n != k);
                env.push((k.to_string(), v));
            }
        }
        Spec {
            lowers,
            state_dir: self.state_dir.join("state"),
            project_dir: self.project.dir.clone(),
            cwd: session.cwd,
            home,
            home_target,
            env,
            argv: session.argv,
            shell: loaded.env.container.shell.clone(),
            hostname: name.clone(),
            network: loaded.env.container.network,
            root: session.root,
            mounts,
            upper: None,
            output: None,
            gpu,
            sandbox: runtime::Sandbox {
                preserve_fds: session.preserve_fds,
                listen_pid,
                allow_syscalls: loaded.env.container.allow_syscalls.clone(),
            },
            quiet: session.quiet,
            pod: None,
        }
    }
}

impl Env {
    /// What the env's supervisor runs (docs/services.md): each service's container, its
    /// readiness check, the published ports. `None` unless the env has its own network.
    pub fn services_plan(
        &self,
        loaded: &Loaded,
        store: &Store,
    ) -> anyhow::Result<Option<services::Plan>> {
        use crate::config::Network;
        use crate::error::HintExt as _;
        if loaded.env.container.network != Network::Private {
            return Ok(None);
        }
        let dir = self.state_dir.join("services");
        let mut ports: Vec<(String, crate::config::Port)> = loaded
            .env
            .container
            .ports
            .iter()
            .map(|p| ("[container]".to_string(), *p))
            .collect();
        let mut plans = Vec::new();
        for (name, pulled) in &self.services {
            let service = &loaded.env.services[name];
            let table = format!("[services.{name}]");
            ports.extend(service.ports.iter().map(|p| (table.clone(), *p)));
            let lowers = pulled.layer_dirs(store);
            let config = &pulled.config.config;
            let wanted = service
                .user
                .clone()
                .or_else(|| (!config.user.is_empty()).then(|| config.user.clone()))
                .unwrap_or_else(|| "0".into());
            let (user, home_target) = runtime::image_user(&lowers, &wanted)
                .ok_or_else(|| {
                    anyhow::anyhow!("{table}: user `{wanted}` is not in the image's /etc/passwd")
                })
                .hint("give a name the image has, or numbers: user = \"999:999\"")?;
            let argv = match &service.command {
                Some(c) => c.clone(),
                None => config
                    .entrypoint
                    .iter()
                    .chain(&config.cmd)
                    .cloned()
                    .collect(),
            };
            if argv.is_empty() {
                return Err(anyhow::anyhow!(
                    "{table}: no `command`, and {} has no entrypoint or command",
                    service.image
                ))
                .hint("set `command` in env.toml");
            }
            let mut env: Vec<(String, String)> = config
                .env
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for (k, v) in &service.env {
                env.retain(|(n, _)| n != k);
                env.push((k.clone(), v.clone()));
            }
            let mut mounts = Vec::new();
            for v in &service.volumes {
                let source = dir.join("volumes").join(name).join(&v.name);
                fs_err::create_dir_all(&source)?;
                mounts.push(Mount {
                    source,
                    target: v.target.clone(),
                    read_only: false,
                });
            }
            let root = user.uid == 0;
            let spec = Spec {
                lowers,
                state_dir: self.state_dir.join("state"),
                project_dir: self.project.dir.clone(),
                cwd: PathBuf::from(if config.working_dir.is_empty() {
                    "/"
                } else {
                    &config.working_dir
                }),
                home: dir.clone(),
                home_target: if root {
                    PathBuf::from("/root")
                } else {
                    home_target
                },
                env,
                argv,
                shell: None,
                hostname: name.clone(),
                network: Network::Private,
                root,
                mounts,
                upper: None,
                output: None,
                gpu: None,
                sandbox: runtime::Sandbox::default(),
                quiet: true,
                pod: Some(runtime::Pod {
                    join: None,
                    etc: None,
                    service: Some(user),
                }),
            };
            plans.push(services::ServicePlan {
                name: name.clone(),
                spec,
                ready: service.ready.clone(),
                ready_timeout: service.ready_timeout,
            });
        }
        Ok(Some(
            services::Plan {
                dir,
                project: self.project.name.clone(),
                hash: String::new(),
                ports,
                services: plans,
            }
            .sealed(),
        ))
    }
}

/// `$HOME` on the host, as `~` in env.toml expands.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Check `[container].mounts` before anything is pulled or built: a missing source under the
/// user's home (a cache such as `~/.keras`, which templates mount and a fresh machine lacks)
/// is made, and said so; any other missing source is an error now rather than after the build.
pub fn prepare_mounts(mounts: &[Mount], home: Option<&Path>, ui: &Ui) -> anyhow::Result<()> {
    for m in mounts {
        if fs_err::symlink_metadata(&m.source).is_ok() {
            continue;
        }
        let under_home = home.is_some_and(|h| m.source.starts_with(h) && m.source != h);
        if !under_home {
            return Err(runtime::RuntimeError::MountSource {
                path: m.source.clone(),
            }
            .into());
        }
        fs_err::create_dir_all(&m.source)
            .with_context(|| "making a [container].mounts source".to_string())?;
        ui.note(&format!(
            "created {} for [container].mounts (it did not exist)",
            m.source.display()
        ));
    }
    Ok(())
}

/// The host's git `user.name`/`user.email` into the env home's `.gitconfig`, when that file
/// does not exist yet: commits inside carry the user's identity, and what the user changes
/// inside stays (devenv writes the file once).
fn copy_git_identity(env_home: &Path) {
    let file = env_home.join(".gitconfig");
    if fs_err::symlink_metadata(&file).is_ok() {
        return;
    }
    let Some(home) = home_dir() else { return };
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(text) = project::git_identity(&home, xdg.as_deref())
        && let Err(e) = fs_err::create_dir_all(env_home).and_then(|()| fs_err::write(&file, text))
    {
        tracing::debug!("copying the git identity: {e}");
    }
}
