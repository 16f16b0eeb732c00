//! `devenv export`: materialize the env as `devenv build` does, then write it as an OCI image.

use crate::ExitCode;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::error::HintExt as _;

use crate::export::{ExportOptions, Format};
use crate::progress::Reporter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum ExportFormat {
    /// An OCI image layout directory
    #[default]
    Oci,
    /// The same layout as one tar file
    OciArchive,
}

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Write the project's env as an OCI image: the base image's layers (the \
registry's blobs, same digests) and one gzip'd layer per tool layer (apt, python venv, [setup] \
steps), materializing first exactly as `devenv build` does. The image config is the base's with \
the tool layers added and an Env that is what `devenv run` gives the command, without host \
variables: the image's Env, then env.toml's [env], then the venv's bin first on PATH and \
VIRTUAL_ENV when there is a venv.\n\n\
--format oci (the default) writes an image layout directory (default ./<project>-env); \
--format oci-archive writes the same layout as one tar file (default ./<project>-env.tar). \
Other tools take it from there, e.g.:\n  \
skopeo copy oci:DIR:latest docker://registry.example.com/team/env:1\n  \
podman pull oci:DIR:latest\n\n\
Nothing is written at PATH until the image is complete; an existing non-empty PATH is an error \
unless --force."
)]
pub struct ExportArgs {
    /// Where to write the image (default ./<project>-env, or ./<project>-env.tar)
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// oci: an image layout directory; oci-archive: the same as one tar file
    #[arg(long, value_enum, default_value_t = ExportFormat::Oci)]
    pub format: ExportFormat,
    /// The name index.json gives the image (org.opencontainers.image.ref.name)
    #[arg(long, value_name = "NAME", default_value = "latest")]
    pub tag: String,
    /// Replace what is at PATH
    #[arg(long)]
    pub force: bool,
    /// Write an sbatch script that runs CMD in the env on a Slurm cluster (docs/clusters.md)
    #[arg(long, conflicts_with_all = ["k8s", "tag"])]
    pub slurm: bool,
    /// Write a Kubernetes Pod manifest (a Job with --job) that runs CMD in the pushed image
    #[arg(long, conflicts_with = "tag")]
    pub k8s: bool,
    /// With --k8s: a batch/v1 Job instead of a Pod
    #[arg(long, requires = "k8s")]
    pub job: bool,
    /// The pushed image, pinned: REGISTRY/REPOSITORY@sha256:… as `devenv push` prints it
    /// (needed by --k8s; --slurm uses it in its pyxis and Apptainer lines)
    #[arg(long, value_name = "REF@DIGEST")]
    pub image: Option<String>,
    /// Nodes the job asks for (also [cluster] nodes)
    #[arg(long, value_name = "N")]
    pub nodes: Option<u32>,
    /// Tasks (ranks) the job runs (also [cluster] tasks)
    #[arg(long, value_name = "N")]
    pub ntasks: Option<u32>,
    /// GPUs the job asks for (also [cluster] gpus; --k8s: the nvidia.com/gpu limit)
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    /// The job's time limit, as Slurm writes it: 90, 01:30:00, 2-00:00:00 (also [cluster] time)
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// The Slurm partition (also [cluster] partition)
    #[arg(long, value_name = "NAME")]
    pub partition: Option<String>,
    /// The command the job runs (--slurm, --k8s), after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(args: ExportArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    if args.slurm || args.k8s {
        return cluster(args, ctx);
    }
    if !args.command.is_empty() {
        anyhow::bail!(
            "a command (after `--`) is for --slurm and --k8s; an image export takes none"
        );
    }
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let format = match args.format {
        ExportFormat::Oci => Format::Layout,
        ExportFormat::OciArchive => Format::Archive,
    };
    let name = crate::project::Project::new(&loaded.project_dir)?.name;
    let out = match args.output {
        Some(p) => ctx.cwd.join(p),
        None => ctx.cwd.join(match format {
            Format::Layout => format!("{name}-env"),
            Format::Archive => format!("{name}-env.tar"),
        }),
    };
    // Before a build that may take minutes, not after.
    crate::export::check_target(&out, &args.tag, args.force)
        .with_context(|| format!("exporting {name}"))?;
    let store = ctx.store()?;
    let m = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
    // gc waits while blobs are copied out of the store.
    let _gc = store.keep_from_gc()?;

    let tools = m.tool_layers();

    // What `devenv run` gives, less the host's variables and devenv's per-user ones.
    let meta = m.image_meta(&loaded);

    let opts = ExportOptions {
        base_manifest: &m.pulled.manifest,
        tools: &tools,
        meta: &meta,
        tag: &args.tag,
        format,
        force: args.force,
    };
    ctx.ui.status(
        "Exporting",
        &format!("{} to {}", m.project.name, out.display()),
    );
    let exported = crate::export::export(&store, &opts, &out, &ctx.ui)
        .with_context(|| format!("exporting {}", m.project.name))?;
    ctx.ui.status(
        "Exported",
        &format!(
            "{} ({}, {} layers, {:.1} MB)",
            out.display(),
            exported.manifest.short(),
            exported.layers,
            exported.size as f64 / 1e6
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// `--slurm` / `--k8s`: the job, written to `-o` (default `./<project>.sbatch`,
/// `./<project>-pod.yaml`, `./<project>-job.yaml`; `-` for stdout).
fn cluster(args: ExportArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    use crate::cluster::{Job, Kind};
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    if args.command.is_empty() {
        anyhow::bail!(
            "the job needs a command: `devenv export {} -- python train.py`",
            if args.slurm { "--slurm" } else { "--k8s" }
        );
    }
    let image = match &args.image {
        None if args.k8s => anyhow::bail!(
            "--k8s needs the pushed image: `devenv push REGISTRY/REPO:TAG` prints REF@sha256:…, \
             then `devenv export --k8s --image REF@sha256:… -- CMD`"
        ),
        None => None,
        Some(r) => {
            let parsed: crate::reference::ImageRef =
                r.parse().with_context(|| format!("--image `{r}`"))?;
            let Some(digest) = &parsed.digest else {
                anyhow::bail!(
                    "--image `{r}` is not pinned: a job must run the exact image; use the \
                     REF@sha256:… that `devenv push` prints"
                );
            };
            Some(format!(
                "{}/{}@{digest}",
                parsed.registry, parsed.repository
            ))
        }
    };
    if let Some(t) = &args.time
        && !crate::config::is_slurm_time(t)
    {
        anyhow::bail!("--time `{t}` is not a time limit: write 90, 01:30:00 or 2-00:00:00");
    }
    let c = &loaded.env.cluster;
    let name = crate::project::Project::new(&loaded.project_dir)?.name;
    let lock_path = loaded.project_dir.join(crate::lock::FILE_NAME);
    let lock = fs_err::read(&lock_path)
        .ok()
        .map(|b| crate::reference::Digest::of(&b).to_string());
    let mut job = Job {
        name: name.clone(),
        project_dir: loaded.project_dir.display().to_string(),
        command: args.command.clone(),
        nodes: args.nodes.or(c.nodes),
        tasks: args.ntasks.or(c.tasks),
        gpus: args.gpus.or(c.gpus),
        time: args.time.clone().or_else(|| c.time.clone()),
        partition: args.partition.clone().or_else(|| c.partition.clone()),
        image,
        working_dir: format!("/workspaces/{name}"),
        user: "1000:1000".into(),
        env: loaded
            .env
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        lock,
    };
    if loaded.env.container.gpu && job.gpus.is_none() {
        job.gpus = Some(1);
    }
    let text = if args.slurm {
        // The job runs with --locked: a lock that is missing or stale fails on every node.
        let drift = crate::lock::check(&loaded, &loaded.env.platform())?;
        if !lock_path.is_file() || !drift.is_empty() {
            anyhow::bail!(
                "env.lock is {}: the job runs `devenv --locked run`, which would fail on the \
                 nodes; run `devenv lock` (and commit env.lock) first",
                if lock_path.is_file() {
                    "not current with env.toml"
                } else {
                    "missing"
                }
            );
        }
        crate::cluster::sbatch(&job)
    } else {
        // The image's own user and directory, as `devenv push` wrote them.
        let store = ctx.store()?;
        let m = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
        let meta = m.image_meta(&loaded);
        job.user = meta.user.unwrap_or(job.user);
        job.working_dir = meta.working_dir.unwrap_or(job.working_dir);
        crate::cluster::k8s(&job, if args.job { Kind::Job } else { Kind::Pod })
    };
    let out = match &args.output {
        Some(p) if p.as_os_str() == "-" => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(text.as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(p) => ctx.cwd.join(p),
        None => ctx.cwd.join(match (args.slurm, args.job) {
            (true, _) => format!("{name}.sbatch"),
            (false, false) => format!("{name}-pod.yaml"),
            (false, true) => format!("{name}-job.yaml"),
        }),
    };
    if out.exists() && !args.force {
        return Err(anyhow::anyhow!("{} already exists", out.display()))
            .hint("choose another path with -o, or pass --force to replace it");
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    let mode = if args.slurm { 0o755 } else { 0o644 };
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    tmp.persist(&out).map_err(|e| e.error)?;
    ctx.ui.status("Wrote", &out.display().to_string());
    Ok(ExitCode::SUCCESS)
}
