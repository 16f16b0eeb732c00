use std::path::Path;

use super::*;

fn digest(c: char) -> Digest {
    format!("sha256:{}", c.to_string().repeat(64))
        .parse()
        .expect("digest")
}

fn sample() -> Lock {
    Lock {
        image: ImageLock {
            reference: "127.0.0.1:5000/bookworm-python:1".into(),
            platforms: [("linux/amd64".to_string(), digest('a'))].into(),
        },
        python: PythonLock {
            inputs: Some(digest('b')),
            interpreter: Some("3.11.2".into()),
            requested: vec!["six==1.16.0".into(), "numpy==1.26.4".into()],
            // Out of order on purpose: rendering sorts.
            packages: vec![
                PythonPackage {
                    name: "six".into(),
                    version: "1.16.0".into(),
                    url: "https://index.example/six-1.16.0-py2.py3-none-any.whl".into(),
                    sha256: "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
                        .into(),
                },
                PythonPackage {
                    name: "numpy".into(),
                    version: "1.26.4".into(),
                    url: "https://index.example/numpy-1.26.4-cp311-cp311-manylinux.whl".into(),
                    sha256: "666dbfb6ec68962c033a450943ded891bed2d54e6755e35e5835d63f4f6931d5"
                        .into(),
                },
            ],
        },
        apt: AptLock {
            inputs: Some(digest('c')),
            requested: vec!["jq".into()],
            packages: vec![
                AptPackage {
                    name: "libjq1".into(),
                    version: "1.6-2.1".into(),
                },
                AptPackage {
                    name: "jq".into(),
                    version: "1.6-2.1".into(),
                },
            ],
        },
        layers: [(digest('d'), digest('e'))].into(),
        services: [(
            "db".to_string(),
            ImageLock {
                reference: "127.0.0.1:5000/postgres:15".into(),
                platforms: [("linux/amd64".to_string(), digest('f'))].into(),
            },
        )]
        .into(),
    }
}

#[test]
fn render_parse_round_trip() {
    let lock = sample();
    let text = render(&lock);
    let back = parse(Path::new("env.lock"), &text).expect("parses");
    let mut sorted = lock.clone();
    sorted.python.packages.sort();
    sorted.apt.packages.sort();
    assert_eq!(back, sorted);
    assert_eq!(
        render(&back),
        text,
        "parse then render gives the same bytes"
    );
}

#[test]
fn render_is_byte_stable_and_sorted() {
    let lock = sample();
    let mut shuffled = lock.clone();
    shuffled.python.packages.reverse();
    shuffled.apt.packages.reverse();
    let text = render(&lock);
    assert_eq!(render(&lock), text);
    assert_eq!(render(&shuffled), text);
    let numpy = text.find("name = \"numpy\"").expect("numpy");
    let six = text.find("name = \"six\"").expect("six");
    assert!(numpy < six, "{text}");
    assert!(text.find("name = \"jq\"").expect("jq") < text.find("name = \"libjq1\"").expect("l"));
    assert!(text.starts_with("# env.lock: written by `devenv lock`"));
    assert!(text.contains(
        "[image]\nreference = \"127.0.0.1:5000/bookworm-python:1\"\nplatforms = { \"linux/amd64\" = \"sha256:aaaa"
    ));
    assert!(!text.contains("\n\n\n"));
}

#[test]
fn empty_parts_are_left_out() {
    let mut lock = sample();
    lock.python = PythonLock::default();
    lock.apt = AptLock::default();
    let text = render(&lock);
    assert!(
        !text.contains("[python]") && !text.contains("[apt]"),
        "{text}"
    );
    assert_eq!(parse(Path::new("env.lock"), &text).expect("parses"), lock);
}

#[test]
fn parse_rejects_a_newer_version_and_bad_hashes() {
    let err = parse(
        Path::new("env.lock"),
        "version = 2\n[image]\nreference = \"x\"\nfuture = 1\n",
    )
    .expect_err("newer");
    assert!(
        matches!(err, LockError::Version { version: 2, .. }),
        "{err}"
    );
    let text = render(&sample()).replace(
        "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
        "nothex",
    );
    let err = parse(Path::new("env.lock"), &text).expect_err("bad hash");
    assert!(
        err.to_string().contains("`nothex` is not 64 hex digits"),
        "{err}"
    );
    let err = parse(
        Path::new("env.lock"),
        "version = 1\n[image]\nreference = 3\n",
    )
    .expect_err("wrong type");
    assert!(err.to_string().starts_with("env.lock: line 3: "), "{err}");
}

#[test]
fn build_gets_hash_pinned_requirements_and_apt_pins() {
    let lock = sample();
    assert_eq!(
        lock.python_requirements(),
        "numpy @ https://index.example/numpy-1.26.4-cp311-cp311-manylinux.whl \
         --hash=sha256:666dbfb6ec68962c033a450943ded891bed2d54e6755e35e5835d63f4f6931d5\n\
         six @ https://index.example/six-1.16.0-py2.py3-none-any.whl \
         --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254\n"
    );
    assert_eq!(lock.apt_pins(), ["jq=1.6-2.1", "libjq1=1.6-2.1"]);
    let amd64: Platform = "linux/amd64".parse().expect("platform");
    assert_eq!(
        lock.image_for(&amd64).map(|i| i.to_string()),
        Some(format!("127.0.0.1:5000/bookworm-python:1@{}", digest('a')))
    );
    let arm64: Platform = "linux/arm64".parse().expect("platform");
    assert_eq!(lock.image_for(&arm64), None);
}

#[test]
fn names_are_normalized() {
    assert_eq!(normalize("Typing_Extensions"), "typing-extensions");
    assert_eq!(normalize("zope.interface"), "zope-interface");
    assert_eq!(normalize("a__-b"), "a-b");
}

fn inputs(pip: &[&str], apt: &[&str]) -> Inputs {
    Inputs {
        pip: pip.iter().map(|s| s.to_string()).collect(),
        apt: apt.iter().map(|s| s.to_string()).collect(),
        ..Inputs::default()
    }
}

/// A lock written for `wanted` (as resolution would leave it).
fn locked_for(w: &Wanted) -> Lock {
    Lock {
        image: ImageLock {
            reference: w.reference.clone(),
            platforms: [(w.platform.clone(), digest('a'))].into(),
        },
        python: w
            .python
            .as_ref()
            .map(|p| PythonLock {
                inputs: Some(p.inputs.clone()),
                requested: p.requested.clone(),
                ..PythonLock::default()
            })
            .unwrap_or_default(),
        apt: w
            .apt
            .as_ref()
            .map(|p| AptLock {
                inputs: Some(p.inputs.clone()),
                requested: p.requested.clone(),
                packages: Vec::new(),
            })
            .unwrap_or_default(),
        layers: Default::default(),
        services: w
            .services
            .iter()
            .map(|(name, reference)| {
                let image = ImageLock {
                    reference: reference.clone(),
                    platforms: [(w.platform.clone(), digest('f'))].into(),
                };
                (name.clone(), image)
            })
            .collect(),
    }
}

const IMAGE: &str = "docker.io/library/python:3.11-slim";

fn amd64() -> Platform {
    "linux/amd64".parse().expect("platform")
}

#[test]
fn a_current_lock_has_no_drift() {
    let w = Wanted::new(IMAGE, &amd64(), &inputs(&["six==1.16.0"], &["jq"]), None);
    assert_eq!(drift(Some(&locked_for(&w)), &w), []);
    assert_eq!(drift(None, &w), [Drift::Missing]);
}

#[test]
fn drift_is_per_part() {
    let base = Wanted::new(IMAGE, &amd64(), &inputs(&["six==1.16.0"], &["jq"]), None);
    let lock = locked_for(&base);

    // One pip entry changes: only the python part drifts.
    let w = Wanted::new(IMAGE, &amd64(), &inputs(&["six==1.17.0"], &["jq"]), None);
    assert_eq!(
        drift(Some(&lock), &w),
        [Drift::Changed {
            part: Part::Python,
            added: vec!["six==1.17.0".into()],
            removed: vec!["six==1.16.0".into()],
        }]
    );

    // An apt package is added: only the apt part drifts.
    let w = Wanted::new(
        IMAGE,
        &amd64(),
        &inputs(&["six==1.16.0"], &["git", "jq"]),
        None,
    );
    assert_eq!(
        drift(Some(&lock), &w),
        [Drift::Changed {
            part: Part::Apt,
            added: vec!["git".into()],
            removed: vec![],
        }]
    );

    // apt dropped entirely; python untouched.
    let w = Wanted::new(IMAGE, &amd64(), &inputs(&["six==1.16.0"], &[]), None);
    assert_eq!(
        drift(Some(&lock), &w),
        [Drift::PartRemoved { part: Part::Apt }]
    );

    // A requirements file's content is an input even though its name stays.
    let mut with_file = inputs(&["six==1.16.0"], &["jq"]);
    with_file.requirements = Some("/p/requirements.txt".into());
    let a = Wanted::new(IMAGE, &amd64(), &with_file, Some("numpy==1.26.4\n"));
    let b = Wanted::new(IMAGE, &amd64(), &with_file, Some("numpy==2.0.0\n"));
    assert_eq!(
        drift(Some(&locked_for(&a)), &b),
        [Drift::Changed {
            part: Part::Python,
            added: vec![],
            removed: vec![],
        }]
    );

    // Another image: the image drifts, and both parts with it (their inputs name the image).
    let w = Wanted::new(
        "docker.io/library/python:3.12-slim",
        &amd64(),
        &inputs(&["six==1.16.0"], &["jq"]),
        None,
    );
    let d = drift(Some(&lock), &w);
    assert!(matches!(d[0], Drift::Image { .. }), "{d:?}");
    assert_eq!(d.len(), 3, "{d:?}");

    // Another platform: the image is not locked for it.
    let arm: Platform = "linux/arm64".parse().expect("platform");
    let w = Wanted::new(IMAGE, &arm, &inputs(&[], &[]), None);
    let mut lock = locked_for(&Wanted::new(IMAGE, &amd64(), &inputs(&[], &[]), None));
    lock.python = PythonLock::default();
    assert_eq!(
        drift(Some(&lock), &w),
        [Drift::Platform {
            platform: "linux/arm64".into()
        }]
    );
}

#[test]
fn a_recipe_index_changes_the_python_inputs_by_its_name() {
    let index = |reference: &str| crate::tools::recipe::RecipeIndex {
        reference: reference.into(),
        wanted_by: "torch's variant".into(),
    };
    let mut a = inputs(&["torch==2.5.1"], &[]);
    a.index = Some(index("pytorch/cpu"));
    let mut b = a.clone();
    b.index = Some(index("pytorch/cu124"));
    let wa = Wanted::new(IMAGE, &amd64(), &a, None);
    let wb = Wanted::new(IMAGE, &amd64(), &b, None);
    assert_ne!(wa.python, wb.python);
    assert_eq!(wa.apt, None);
}

/// A project directory with env.toml and, when given, env.lock.
fn project(env_toml: &str, lock: Option<&str>) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().expect("tempdir");
    fs_err::write(dir.path().join("env.toml"), env_toml).expect("write");
    if let Some(l) = lock {
        fs_err::write(dir.path().join(FILE_NAME), l).expect("write");
    }
    let loaded = crate::config::load(&dir.path().join("env.toml")).expect("loads");
    (dir, loaded)
}

fn locked_opts() -> LockOptions {
    LockOptions {
        locked: true,
        update: None,
        offline: true,
        platform: amd64(),
    }
}

#[test]
fn locked_fails_on_drift_listing_what_differs() {
    const OLD: &str = "[image]\nbase = \"python:3.11-slim\"\n[packages]\npip = [\"six==1.16.0\"]\n";
    const NEW: &str = "[image]\nbase = \"python:3.11-slim\"\n[packages]\npip = [\"six==1.17.0\", \"numpy==1.26.4\"]\n";
    let (_d, old) = project(OLD, None);
    let inputs = recipe::expand(&old.env, &old.project_dir).expect("expands");
    let w = Wanted::new(IMAGE, &amd64(), &inputs, None);
    let text = render(&locked_for(&w));

    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path().to_path_buf()).expect("store");

    // In step: the lock comes back, nothing is written.
    let (dir, current) = project(OLD, Some(&text));
    let got = ensure(&current, &store, &locked_opts(), &crate::progress::Silent).expect("current");
    assert_eq!(got, locked_for(&w));

    // Drifted: an error naming each difference; the file is untouched.
    let (dir2, drifted) = project(NEW, Some(&text));
    let err =
        ensure(&drifted, &store, &locked_opts(), &crate::progress::Silent).expect_err("drift");
    let msg = err.to_string();
    assert!(
        msg.contains("does not match env.toml, and --locked forbids changing it"),
        "{msg}"
    );
    assert!(
        msg.ends_with("[python] (Python packages): + numpy==1.26.4, + six==1.17.0, - six==1.16.0"),
        "{msg}"
    );
    assert!(err.hint().is_some_and(|h| h.contains("devenv lock")));
    assert_eq!(
        fs_err::read_to_string(dir2.path().join(FILE_NAME)).expect("read"),
        text
    );

    // No lock at all.
    let (_d3, none) = project(OLD, None);
    let err = ensure(&none, &store, &locked_opts(), &crate::progress::Silent).expect_err("none");
    assert!(err.to_string().ends_with("there is no env.lock"), "{err}");
    drop(dir);
}

#[test]
fn update_must_name_something_locked() {
    let (_d, loaded) = project("[image]\nbase = \"python:3.11-slim\"\n", None);
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path().to_path_buf()).expect("store");
    let opts = LockOptions {
        locked: false,
        update: Some(Update::Name("nosuch".into())),
        offline: true,
        platform: amd64(),
    };
    let err = ensure(&loaded, &store, &opts, &crate::progress::Silent).expect_err("unknown");
    assert!(matches!(err, LockError::UnknownUpdate { .. }), "{err}");
    let opts = LockOptions {
        locked: true,
        update: Some(Update::All),
        ..opts
    };
    assert!(matches!(
        ensure(&loaded, &store, &opts, &crate::progress::Silent),
        Err(LockError::LockedUpdate)
    ));
}

#[test]
fn resolver_failures_hint_at_their_cause() {
    let missing = "  error: No solution found when resolving dependencies\n    cause: Because nosuch was not found in the package registry and you require nosuch==1.0, we can conclude that your requirements are unsatisfiable.";
    assert!(resolve_hint(missing).contains("a version must exist"));
    let version = "    cause: Because there is no version of numpy==99.0 and you require numpy==99.0, we can conclude that your requirements are unsatisfiable.";
    assert!(resolve_hint(version).contains("a version must exist"));
    let conflict = "    cause: Because scikit-learn==1.5.2 depends on numpy>=1.19.5 and you require scikit-learn==1.5.2, we can conclude that you require numpy>=1.19.5.\n           And because you require numpy==1.18.0, we can conclude that your requirements are unsatisfiable.";
    assert!(resolve_hint(conflict).contains("contradict each other"));
    let down = "  error: Request failed after 3 retries in 9.5s\n    cause: Failed to fetch: https://index.example/simple/pandas/\n    cause: tcp connect error";
    assert!(resolve_hint(down).contains("unreachable"));
}

#[test]
fn a_service_image_is_pinned_like_the_base_and_drifts_on_its_own() {
    let text = render(&sample());
    assert!(
        text.contains("\n[services.\"db\"]\nreference = \"127.0.0.1:5000/postgres:15\"\nplatforms = { \"linux/amd64\" = \"sha256:ffff"),
        "{text}"
    );
    let back = parse(Path::new("env.lock"), &text).unwrap();
    assert_eq!(back.services, sample().services);
    assert_eq!(render(&back), text);
    assert_eq!(
        sample().service_image("db", &amd64()).unwrap().to_string(),
        format!("127.0.0.1:5000/postgres:15@{}", digest('f'))
    );

    let mut w = Wanted::new(IMAGE, &amd64(), &inputs(&[], &[]), None);
    w.services
        .insert("db".into(), "127.0.0.1:5000/postgres:15".into());
    let lock = locked_for(&w);
    assert!(drift(Some(&lock), &w).is_empty());
    let mut moved = w.clone();
    moved
        .services
        .insert("db".into(), "127.0.0.1:5000/postgres:16".into());
    moved.services.insert("cache".into(), "redis:7".into());
    let d: Vec<String> = drift(Some(&lock), &moved)
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        d,
        [
            "[services.cache]: its image is not locked",
            "[services.db]: env.toml names 127.0.0.1:5000/postgres:16, env.lock has 127.0.0.1:5000/postgres:15",
        ]
    );
    let mut dropped = w.clone();
    dropped.services.clear();
    let d: Vec<String> = drift(Some(&lock), &dropped)
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(d, ["[services.db]: in env.lock, no longer in env.toml"]);
}
