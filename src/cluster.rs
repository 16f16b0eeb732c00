//! `devenv export --slurm` and `--k8s`: the env as a cluster job, for the schedulers clusters
//! already run. Pure text from a [`Job`]: the sbatch script runs `srun devenv --locked run --
//! CMD` (devenv on the nodes, the store on node-local disk), with the equivalent lines for
//! pyxis/enroot and Apptainer; the Kubernetes manifest (a Pod, or a Job) names the pushed image
//! by digest with the image's numeric user, working directory, the env's `[env]`, the command,
//! and GPU limits.
//!
//! Invariants: nothing here reads or writes files; every value that reaches a shell line is
//! quoted, every value that reaches YAML is a quoted scalar.

use serde_json::{Value, json};

/// One job of the env.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// The project's name: the job's and the Pod's name.
    pub name: String,
    /// The project directory on the cluster's shared filesystem (Slurm).
    pub project_dir: String,
    pub command: Vec<String>,
    pub nodes: Option<u32>,
    pub tasks: Option<u32>,
    pub gpus: Option<u32>,
    pub time: Option<String>,
    pub partition: Option<String>,
    /// The pushed image, pinned (`REGISTRY/REPO@sha256:…`).
    pub image: Option<String>,
    /// The image's `WorkingDir` and numeric `User` (`uid:gid`).
    pub working_dir: String,
    pub user: String,
    /// env.toml's `[env]`, in order.
    pub env: Vec<(String, String)>,
    /// env.lock's sha256, for the record.
    pub lock: Option<String>,
}

/// A POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `REGISTRY/REPO@sha256:…` as pyxis/enroot write it: `REGISTRY#REPO@sha256:…`.
fn pyxis_image(image: &str) -> String {
    match image.split_once('/') {
        Some((registry, rest)) if registry.contains(['.', ':']) || registry == "localhost" => {
            format!("{registry}#{rest}")
        }
        _ => image.to_string(),
    }
}

/// The sbatch script.
pub fn sbatch(job: &Job) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# Written by `devenv export --slurm` for {}{}.\n\
         # Submit it with `sbatch {}.sbatch`; each task runs the command in the env, as you.\n",
        job.name,
        job.lock
            .as_deref()
            .map(|l| format!(" (env.lock {l})"))
            .unwrap_or_default(),
        job.name
    ));
    s.push_str(&format!("#SBATCH --job-name={}\n", job.name));
    if let Some(n) = job.nodes {
        s.push_str(&format!("#SBATCH --nodes={n}\n"));
    }
    if let Some(n) = job.tasks {
        s.push_str(&format!("#SBATCH --ntasks={n}\n"));
    }
    if let Some(n) = job.gpus.filter(|n| *n > 0) {
        s.push_str(&format!("#SBATCH --gpus={n}\n"));
    }
    if let Some(t) = &job.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    if let Some(p) = &job.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    s.push_str(&format!(
        "set -euo pipefail\n\
         cd {}\n\
         # In a job devenv keeps its store on node-local disk ($SLURM_TMPDIR, else $TMPDIR, else\n\
         # /tmp; set DEVENV_HOME to a node-local path that outlives jobs to keep it). The tasks of\n\
         # a node share it and fetch each layer once; with [cache] registry in env.toml they\n\
         # fetch the tool layers instead of building them. --locked: a node never re-resolves.\n\
         srun \"${{DEVENV:-devenv}}\" --locked run -- {}\n",
        shell_quote(&job.project_dir),
        words(&job.command)
    ));
    let image = job.image.clone();
    let shown = image
        .clone()
        .unwrap_or_else(|| "REGISTRY/REPOSITORY@sha256:… (from `devenv push`)".into());
    s.push_str(&format!(
        "\n# Without devenv on the nodes, the pushed image runs the same env:\n\
         #   pyxis/enroot: srun --container-image={} --container-workdir={} {}\n\
         #   Apptainer:    srun apptainer exec{} --pwd {} docker://{} {}\n",
        shell_quote(&pyxis_image(&shown)),
        shell_quote(&job.working_dir),
        words(&job.command),
        if job.gpus.is_some_and(|n| n > 0) {
            " --nv"
        } else {
            ""
        },
        shell_quote(&job.working_dir),
        shown,
        words(&job.command),
    ));
    s
}

/// What kind of Kubernetes object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Job,
}

/// The Kubernetes manifest (YAML). `image` must be set.
pub fn k8s(job: &Job, kind: Kind) -> String {
    let (uid, gid) = job.user.split_once(':').unwrap_or((&job.user, &job.user));
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    let mut security = json!({ "runAsUser": num(uid), "runAsGroup": num(gid) });
    if num(uid) != 0 {
        security["runAsNonRoot"] = json!(true);
    }
    let mut env: Vec<Value> = job
        .env
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
    let gpus = job.gpus.unwrap_or(0);
    let mut container = json!({
        "name": "env",
        "image": job.image.clone().unwrap_or_default(),
        "workingDir": job.working_dir,
    });
    if !job.command.is_empty() {
        container["command"] = json!(job.command);
    }
    if gpus > 0 {
        env.push(json!({ "name": "NVIDIA_VISIBLE_DEVICES", "value": "all" }));
        env.push(json!({ "name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility" }));
        // Limits only: the device plugin takes whole GPUs and requests default to limits.
        // A quantity, written as the API's own clients write one: a string.
        container["resources"] = json!({ "limits": { "nvidia.com/gpu": gpus.to_string() } });
    }
    if !env.is_empty() {
        container["env"] = json!(env);
    }
    let pod_spec = json!({
        "restartPolicy": "Never",
        "securityContext": security,
        "containers": [container],
    });
    let mut metadata = json!({
        "name": job.name,
        "labels": {
            "app.kubernetes.io/name": job.name,
            "app.kubernetes.io/managed-by": "devenv",
        },
    });
    if let Some(l) = &job.lock {
        // podman kube play refuses annotation values over 63 characters: enough of the hash
        // to tell locks apart (the whole one is in the comment at the top).
        let short: String = l.trim_start_matches("sha256:").chars().take(32).collect();
        metadata["annotations"] = json!({ "devenv.dev/env-lock-sha256": short });
    }
    let doc = match kind {
        Kind::Pod => json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": pod_spec,
        }),
        Kind::Job => json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": { "labels": { "app.kubernetes.io/name": job.name } },
                    "spec": pod_spec,
                },
            },
        }),
    };
    let mut out = format!(
        "# Written by `devenv export --k8s` for {}{}: `kubectl apply -f` it.\n",
        job.name,
        job.lock
            .as_deref()
            .map(|l| format!(" (env.lock {l})"))
            .unwrap_or_default()
    );
    yaml(&doc, 0, &mut out);
    out
}

/// YAML for a JSON value: block maps and lists, every string a double-quoted scalar (JSON's
/// escaping is YAML's), so no value is read as another type.
fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                out.push_str(&format!("{pad}{}:", key(k)));
                block_or_scalar(v, indent, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        // The first key on the dash's line, the rest under it.
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner);
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                    _ => {
                        out.push_str(&format!("{pad}-"));
                        block_or_scalar(item, indent, out);
                    }
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", scalar_text(scalar))),
    }
}

fn block_or_scalar(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(v, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(v, indent + 2, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        scalar => out.push_str(&format!(" {}\n", scalar_text(scalar))),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./_-".contains(&b));
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            name: "proj".into(),
            project_dir: "/home/a b/proj".into(),
            command: vec!["python".into(), "-c".into(), "print('hi')".into()],
            tasks: Some(2),
            gpus: Some(1),
            time: Some("01:00:00".into()),
            image: Some("reg.example:5000/team/env@sha256:abc".into()),
            working_dir: "/workspaces/proj".into(),
            user: "1000:1000".into(),
            env: vec![("GREETING".into(), "yes: \"quoted\"".into())],
            ..Job::default()
        }
    }

    #[test]
    fn the_sbatch_script_quotes_what_reaches_the_shell() {
        let s = sbatch(&job());
        assert!(s.starts_with("#!/bin/bash\n"), "{s}");
        assert!(
            s.contains("#SBATCH --ntasks=2\n#SBATCH --gpus=1\n#SBATCH --time=01:00:00\n"),
            "{s}"
        );
        assert!(s.contains("cd '/home/a b/proj'\n"), "{s}");
        assert!(
            s.contains(r#"srun "${DEVENV:-devenv}" --locked run -- python -c 'print('\''hi'\'')'"#),
            "{s}"
        );
        assert!(
            s.contains("--container-image='reg.example:5000#team/env@sha256:abc'"),
            "{s}"
        );
        assert!(s.contains("apptainer exec --nv --pwd /workspaces/proj docker://reg.example:5000/team/env@sha256:abc"), "{s}");
        assert!(
            !s.contains("--nodes"),
            "unset resources are left to the cluster: {s}"
        );
    }

    #[test]
    fn the_pod_carries_the_user_the_gpu_limit_and_quoted_values() {
        let y = k8s(&job(), Kind::Pod);
        let expected = r#"apiVersion: "v1"
kind: "Pod"
metadata:
  labels:
    app.kubernetes.io/managed-by: "devenv"
    app.kubernetes.io/name: "proj"
  name: "proj"
spec:
  containers:
    - command:
        - "python"
        - "-c"
        - "print('hi')"
      env:
        - name: "GREETING"
          value: "yes: \"quoted\""
        - name: "NVIDIA_VISIBLE_DEVICES"
          value: "all"
        - name: "NVIDIA_DRIVER_CAPABILITIES"
          value: "compute,utility"
      image: "reg.example:5000/team/env@sha256:abc"
      name: "env"
      resources:
        limits:
          nvidia.com/gpu: "1"
      workingDir: "/workspaces/proj"
  restartPolicy: "Never"
  securityContext:
    runAsGroup: 1000
    runAsNonRoot: true
    runAsUser: 1000
"#;
        assert_eq!(y.split_once('\n').unwrap().1, expected);
        let no_gpu = k8s(
            &Job {
                gpus: None,
                ..job()
            },
            Kind::Job,
        );
        assert!(!no_gpu.contains("nvidia"), "{no_gpu}");
        assert!(
            no_gpu.contains("kind: \"Job\"") && no_gpu.contains("backoffLimit: 0"),
            "{no_gpu}"
        );
    }
}
