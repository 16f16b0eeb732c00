//! Every template goes from `devenv init --template T` to a working env (issue 11), as a new
//! user would take it, on the test registry's Debian bookworm image (these machines reach no
//! Docker Hub, so the template's `[image].base` is pointed there, and its Python pin to the
//! image's 3.11). python and jupyter are built and run; tensorflow and pytorch are locked
//! (resolved against PyPI for the image's interpreter), which is where a wrong pin shows.
//! These need PyPI and Debian's mirrors, as the build tests do; they fail, never skip, without.

mod common;

use common::{Outcome, TestHome, bookworm_image, devenv, run};

/// `devenv init --template T` in a fresh project, then the base pointed at the test image.
fn init(template: &str, fit: impl Fn(String) -> String) -> TestHome {
    let home = TestHome::new();
    let out = run(devenv(&home).args(["init", "--template", template])).success();
    assert!(out.stderr.contains(template), "{out:?}");
    let path = home.project().join("env.toml");
    let text = fs_err::read_to_string(&path).unwrap();
    let base = text
        .lines()
        .find(|l| l.starts_with("base = "))
        .unwrap_or_else(|| panic!("template {template} names no base:\n{text}"))
        .to_string();
    let text = text.replace(&base, &format!("base = \"{}\"", bookworm_image()));
    home.write("project/env.toml", fit(text));
    home
}

fn dv(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).args(args))
}

#[test]
fn the_python_template_runs() {
    let home = init("python", |t| t);
    let out = dv(
        &home,
        &[
            "run",
            "--",
            "python3",
            "-c",
            "import sys; print(sys.version_info[:2])",
        ],
    )
    .success();
    assert_eq!(out.stdout, "(3, 11)\n", "{out:?}");
    // Its shell is bash, which the image has.
    let out = dv(&home, &["run", "--", "bash", "-c", "echo $BASH_VERSION"]).success();
    assert!(!out.stdout.trim().is_empty(), "{out:?}");
}

#[test]
fn the_jupyter_template_builds_and_runs_jupyterlab() {
    let home = init("jupyter", |t| t);
    let out = dv(
        &home,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "jupyter lab --version && python -c 'import pandas, matplotlib, ipywidgets; print(\"imports ok\")'",
        ],
    )
    .success();
    assert!(out.stdout.starts_with("4.2.5\n"), "{out:?}");
    assert!(out.stdout.contains("imports ok"), "{out:?}");
}

#[test]
fn the_tensorflow_template_locks_for_the_images_python() {
    let home = init("tensorflow", |t| t);
    dv(&home, &["lock"]).success();
    let lock = fs_err::read_to_string(home.project().join("env.lock")).unwrap();
    assert!(lock.contains("name = \"tensorflow\""), "{lock}");
    assert!(lock.contains("version = \"2.16.1\""), "{lock}");
    assert!(
        lock.contains("cp311"),
        "wheels for the image's Python 3.11: {lock}"
    );
}

#[test]
fn the_pytorch_template_locks_from_the_default_index() {
    let home = init("pytorch", |t| t);
    dv(&home, &["lock"]).success();
    let lock = fs_err::read_to_string(home.project().join("env.lock")).unwrap();
    assert!(lock.contains("name = \"torch\""), "{lock}");
    assert!(lock.contains("version = \"2.5.1\""), "{lock}");

    // PyTorch's own CPU wheels come from an index the user's configuration names; this one
    // names none, and the lock says what to add before it resolves anything.
    let cpu = init("pytorch", |t| {
        t.replace(
            "torch = \"2.5.1\"\n",
            "torch = { version = \"2.5.1\", variant = \"cpu\" }\n",
        )
    });
    dv(&cpu, &["lock"]).failure(&[
        "torch's variant `cpu` installs from the index `pytorch`, which your configuration does not name",
        "hint: add it to",
        "[python.indexes] pytorch = ",
    ]);
}
