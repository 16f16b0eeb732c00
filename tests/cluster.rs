//! End-to-end tests of the env on cluster engines, run as the unprivileged test user: the sbatch
//! script `devenv export --slurm` writes, submitted with `sbatch --wait` to the real single-node
//! Slurm cluster `scripts/test` starts (two tasks, each in the env with its own SLURM_PROCID,
//! the store on node-local scratch, the tool layer from the team cache fetched once); and the
//! Pod `devenv export --k8s` writes for a pushed env, run by rootless `podman kube play`.

mod common;

use common::podman::Podman;

use std::path::{Path, PathBuf};

use common::env::{busybox_layer, write_env_toml};
use common::image::ImageBuilder;
use common::registry::Registry;
use common::{Outcome, TestHome, bookworm_image, devenv, devenv_bin, run, user_in};

/// The `slurm.conf` of the cluster scripts/test started. Never skips.
fn slurm_conf() -> String {
    match std::env::var("DEVENV_TEST_SLURM") {
        Ok(c) if !c.is_empty() => c,
        _ => panic!(
            "DEVENV_TEST_SLURM is not set: this test needs the single-node Slurm cluster that \
             scripts/test starts as root (slurm-wlm and munge on loopback)"
        ),
    }
}

fn devenv_in(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).current_dir(home.project()).args(args))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

#[test]
fn an_exported_sbatch_script_runs_every_task_in_the_env_under_slurm() {
    let conf = slurm_conf();
    let registry = Registry::start();
    let cache = format!("{}/team/devenv-cache", registry.addr());
    // The laptop: builds the env and fills the team cache.
    let laptop = TestHome::new();
    laptop.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[packages]\npip = [\"six==1.16.0\"]\n\n[cache]\n\
             registry = \"{cache}\"\n\n[cluster]\ntasks = 2\ntime = \"10:00\"\n",
            bookworm_image()
        ),
    );
    devenv_in(&laptop, &["build", "--push-cache"]).success();

    // The cluster: a clone of the project on its filesystem, a node-local scratch directory.
    let cluster = TestHome::new();
    cluster.write("project/env.toml", laptop.read("project/env.toml"));
    cluster.write("project/env.lock", laptop.read("project/env.lock"));
    let scratch = cluster.mkdir("node-local");
    let code = "import os, six; print(os.environ['SLURM_PROCID'], os.environ['SLURM_NTASKS'], \
                six.__version__, os.getcwd())";
    devenv_in(&cluster, &["export", "--slurm", "--", "python", "-c", code]).success();
    let script = cluster.project().join("project.sbatch");
    let text = fs_err::read_to_string(&script).unwrap();
    assert!(
        text.contains("#SBATCH --ntasks=2\n#SBATCH --time=10:00\n"),
        "{text}"
    );

    let out = cluster.root().join("job.out");
    let submitted = run(user_in(&cluster, "sbatch")
        // The job's own default: node-local scratch, not DEVENV_HOME.
        .env_remove("DEVENV_HOME")
        .env("SLURM_CONF", &conf)
        .env("TMPDIR", &scratch)
        .env("DEVENV", devenv_bin())
        .args(["--wait", "--output", path(&out), path(&script)]));
    let log = fs_err::read_to_string(&out).unwrap_or_default();
    assert!(
        submitted.status.success(),
        "sbatch failed: {submitted:?}\njob output:\n{log}"
    );

    let project = fs_err::canonicalize(cluster.project()).unwrap();
    let mut ranks: Vec<&str> = log.lines().filter(|l| l.contains(" 1.16.0 ")).collect();
    ranks.sort();
    assert_eq!(
        ranks,
        vec![
            format!("0 2 1.16.0 {}", project.display()),
            format!("1 2 1.16.0 {}", project.display()),
        ],
        "job output:\n{log}"
    );
    assert_eq!(
        log.matches("python (1 package) from the team cache")
            .count(),
        1,
        "the two tasks share the node's store and fetch the layer once:\n{log}"
    );
    assert!(
        !log.contains("Building"),
        "nothing built on the node:\n{log}"
    );
    let (uid, _) = common::runner_ids();
    let store = scratch.join(format!("devenv-{uid}"));
    assert!(
        store.join("layers").is_dir(),
        "the store is on node-local scratch:\n{log}"
    );
    assert!(
        !cluster.store().join("layers").exists(),
        "DEVENV_HOME was not used"
    );
}

#[test]
fn export_slurm_refuses_a_missing_lock_and_a_missing_command() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!("[image]\nbase = \"{}\"\n", bookworm_image()),
    );
    devenv_in(&home, &["export", "--slurm"]).failure(&["needs a command"]);
    devenv_in(&home, &["export", "--slurm", "--", "true"])
        .failure(&["env.lock is missing", "devenv lock"]);
    devenv_in(
        &home,
        &["export", "--slurm", "--time", "soon", "--", "true"],
    )
    .failure(&["--time"]);
}

/// `tests/k8s_check.py MANIFEST` in a venv with the official Kubernetes Python client (from
/// the package index pip is configured with; made once per test process): its one-line verdict.
fn k8s_check(manifest: &Path) -> String {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let venv = VENV.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("devenv-k8s-check-")
            .tempdir()
            .unwrap()
            .keep();
        run(std::process::Command::new("python3").args(["-m", "venv", path(&dir)])).success();
        run(std::process::Command::new(dir.join("bin/pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "kubernetes",
            "pyyaml",
        ]))
        .success();
        dir
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s_check.py");
    let out = std::process::Command::new(venv.join("bin/python"))
        .arg(&script)
        .arg(manifest)
        .output()
        .expect("running tests/k8s_check.py");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_exported_pod_runs_the_pushed_env_under_podman_kube_play() {
    let registry = Registry::start();
    let image = ImageBuilder::new().layer(busybox_layer("k8s-tests").dir("opt", 0o755));
    let base = registry.client().push("base/busybox", "1", &image.build());
    let home = TestHome::new();
    write_env_toml(
        &home,
        "project",
        &base,
        "[setup]\nrun = [\"echo hi > /opt/marker\"]\n\n[env]\nGREETING = \"from env.toml\"\n",
    );
    // A git work tree: --with-project puts its tracked files in the image's working directory.
    home.write("project/hello.txt", "from the project\n");
    home.write("project/untracked.txt", "not pushed\n");
    for args in [
        &["init", "-q"][..],
        &["add", "hello.txt", "env.toml"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "commit",
            "-qm",
            "init",
        ],
    ] {
        run(user_in(&home, "git").args(args)).success();
    }
    let pushed = devenv_in(
        &home,
        &[
            "push",
            "--with-project",
            &format!("{}/team/env:1", registry.addr()),
        ],
    )
    .success();
    let pinned = pushed.stdout.trim().to_string();

    devenv_in(&home, &["export", "--k8s", "--", "sh", "-c", "true"]).failure(&["--image"]);
    let tagged = format!("{}/team/env:1", registry.addr());
    devenv_in(
        &home,
        &["export", "--k8s", "--image", &tagged, "--", "true"],
    )
    .failure(&["not pinned"]);
    devenv_in(
        &home,
        &[
            "export",
            "--k8s",
            "--image",
            &pinned,
            "--",
            "sh",
            "-c",
            "cat /opt/marker; echo \"$GREETING\"; id -u; pwd; cat hello.txt; ls; touch out && echo writable",
        ],
    )
    .success();
    let manifest = home.project().join("project-pod.yaml");
    let yaml = fs_err::read_to_string(&manifest).unwrap();
    assert!(yaml.contains(&format!("image: \"{pinned}\"")), "{yaml}");
    assert!(
        yaml.contains("runAsUser: 1000") && yaml.contains("runAsNonRoot: true"),
        "{yaml}"
    );
    assert!(!yaml.contains("nvidia.com/gpu"), "{yaml}");
    // The strictest offline check found: the Kubernetes API's own models (the official Python
    // client's), field by field and type by type, then its deserializer's required fields.
    assert_eq!(k8s_check(&manifest), "ok Pod");
    let bogus = home.write("bogus.yaml", yaml.replace("workingDir:", "workdir:"));
    assert!(
        k8s_check(&bogus).contains("`workdir` is not a field of V1Container"),
        "the check can fail"
    );

    let podman = Podman::new(&home);
    podman
        .run(&[
            "kube",
            "play",
            "--tls-verify=false",
            "--network=host",
            path(&manifest),
        ])
        .success();
    podman.run(&["wait", "project-env"]).success();
    let logs = podman.run(&["logs", "project-env"]).success();
    assert_eq!(
        logs.stdout,
        "hi\nfrom env.toml\n1000\n/workspaces/project\nfrom the project\nenv.toml\nhello.txt\nwritable\n",
        "{logs:?}"
    );
}

#[test]
fn a_gpu_job_manifest_carries_the_gpu_limit() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[cluster]\ngpus = 2\n",
            bookworm_image()
        ),
    );
    let pinned = format!("{}/team/env@sha256:{}", "reg.example", "b".repeat(64));
    let out = devenv_in(
        &home,
        &[
            "export", "--k8s", "--job", "--image", &pinned, "-o", "-", "--", "python3", "train.py",
        ],
    )
    .success();
    let y = &out.stdout;
    let job = home.write("job.yaml", y);
    assert_eq!(k8s_check(&job), "ok Job", "{y}");
    assert!(y.contains("kind: \"Job\""), "{y}");
    assert!(y.contains("nvidia.com/gpu: \"2\""), "{y}");
    assert!(y.contains("NVIDIA_VISIBLE_DEVICES"), "{y}");
    assert!(y.contains("restartPolicy: \"Never\""), "{y}");
}
