//! env.toml loading: a full valid file, and every kind of mistake with its line and column.

use std::path::{Path, PathBuf};

use super::*;

fn exp() -> Expansion {
    Expansion {
        project_dir: "/work/proj".into(),
        home: Some("/home/ana".into()),
    }
}

fn load_str(text: &str) -> Result<EnvFile, ConfigError> {
    parse_in(Path::new("env.toml"), text, &exp())
}

/// The error's kind, line, column and message; panics on success.
fn fail(text: &str) -> (DiagnosticKind, usize, usize, String, Option<String>) {
    match load_str(text) {
        Err(ConfigError::Invalid {
            kind,
            line,
            column,
            message,
            hint,
            ..
        }) => (kind, line, column, message, hint),
        other => panic!("expected a diagnostic for {text:?}, got {other:?}"),
    }
}

const BASE: &str = "[image]\nbase = \"python:3.12-slim\"\n";

#[test]
fn full_valid_file() {
    let text = r#"version = 1

[image]
base = "python:3.11-slim"
platform = "linux/arm64/v8"

[tools]
tensorflow = "2.16.1"
jupyterlab = "4.2.5"

[packages]
apt = ["git", "libgl1"]
pip = ["pandas>=2.2", "scikit-learn"]
requirements = "requirements.txt"

[setup]
run = ["python -m pip install --no-deps ./vendor/mylib"]

[env]
TF_CPP_MIN_LOG_LEVEL = "2"
_PRIVATE = "x y"

[container]
shell = "/bin/bash"
network = "none"
gpu = true
mounts = ["~/.cache/huggingface", "data:/data:ro", "/opt/models:ro"]
"#;
    let env = load_str(text).expect("valid");
    let base = env.base_image().expect("base");
    assert_eq!(base.to_string(), "docker.io/library/python:3.11-slim");
    assert!(!env.base_from_python());
    assert_eq!(
        env.image.platform,
        Some(Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        })
    );
    assert_eq!(env.tools.len(), 2);
    assert_eq!(env.tools["tensorflow"], "2.16.1");
    assert_eq!(env.packages.apt, ["git", "libgl1"]);
    assert_eq!(env.packages.pip, ["pandas>=2.2", "scikit-learn"]);
    assert_eq!(
        env.packages.requirements,
        Some(PathBuf::from("requirements.txt"))
    );
    assert_eq!(
        env.setup.run,
        [SetupStep::cmd(
            "python -m pip install --no-deps ./vendor/mylib"
        )]
    );
    assert_eq!(env.env["TF_CPP_MIN_LOG_LEVEL"], "2");
    assert_eq!(env.env["_PRIVATE"], "x y");
    assert_eq!(env.container.shell.as_deref(), Some("/bin/bash"));
    assert_eq!(env.container.network, Network::None);
    assert!(env.container.gpu);
    assert_eq!(
        env.container.mounts,
        [
            Mount {
                source: "/home/ana/.cache/huggingface".into(),
                target: "/home/ana/.cache/huggingface".into(),
                read_only: false,
            },
            Mount {
                source: "/work/proj/data".into(),
                target: "/data".into(),
                read_only: true,
            },
            Mount {
                source: "/opt/models".into(),
                target: "/opt/models".into(),
                read_only: true,
            },
        ]
    );
}

#[test]
fn defaults_when_sections_are_absent() {
    let env = load_str(BASE).expect("valid");
    assert_eq!(env.container, Container::default());
    assert_eq!(env.container.network, Network::Host);
    assert!(!env.container.gpu);
    assert!(env.tools.is_empty() && env.env.is_empty());
    assert_eq!(env.packages, Packages::default());
    assert_eq!(env.setup, Setup::default());
    assert_eq!(env.image.platform, None);
}

#[test]
fn base_comes_from_tools_python() {
    let env = load_str("[tools]\npython = \"3.12\"\n").expect("valid");
    assert!(env.image.base.is_none());
    assert!(env.base_from_python());
    assert_eq!(
        env.base_image().expect("base").to_string(),
        "docker.io/library/python:3.12-slim"
    );
}

#[test]
fn no_base_at_all_is_an_error_with_a_hint() {
    use crate::error::Hint;
    let err = load_str("[tools]\njupyterlab = \"4.2.5\"\n").expect_err("no base");
    assert!(matches!(err, ConfigError::NoBase(_)), "{err:?}");
    assert_eq!(err.to_string(), "env.toml has no [image].base");
    assert!(err.hint().is_some_and(|h| h.contains("[tools]")));
    assert!(EnvFile::default().base_image().is_err());
}

#[test]
fn bad_python_version_is_reported_at_the_version() {
    let (kind, line, col, msg, _) = fail("[tools]\npython = \"3.12 beta\"\n");
    assert_eq!((kind, line, col), (DiagnosticKind::ImageRef, 2, 10));
    assert!(msg.contains("python = \"3.12 beta\""), "{msg}");
}

#[test]
fn unknown_key_in_a_section() {
    let (kind, line, col, msg, hint) = fail("\n[image]\n  bse = \"python:3.12\"\n");
    assert_eq!((kind, line, col), (DiagnosticKind::UnknownKey, 3, 3));
    assert_eq!(
        msg,
        "unknown key `bse` in [image], expected one of: base, platform"
    );
    assert_eq!(hint.as_deref(), Some("did you mean `base`?"));
    let err = load_str("\n[image]\n  bse = \"python:3.12\"\n").expect_err("bad");
    assert_eq!(
        err.to_string(),
        "env.toml:3:3: unknown key `bse` in [image], expected one of: base, platform"
    );
}

#[test]
fn unknown_key_at_the_top_level_and_unknown_section() {
    let (kind, line, col, msg, _) = fail(&format!("colour = 1\n{BASE}"));
    assert_eq!((kind, line, col), (DiagnosticKind::UnknownKey, 1, 1));
    assert_eq!(
        msg,
        "unknown key `colour`, expected one of: version, image, tools, packages, setup, env, container, cache, cluster, services"
    );
    let (kind, line, col, msg, hint) = fail(&format!("{BASE}[package]\napt = []\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::UnknownKey, 3, 2));
    assert!(msg.starts_with("unknown key `package`,"), "{msg}");
    assert_eq!(hint.as_deref(), Some("did you mean `packages`?"));
}

#[test]
fn top_level_key_under_a_section_says_why() {
    let (kind, line, col, msg, hint) = fail(&format!("{BASE}version = 1\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::UnknownKey, 3, 1));
    assert!(msg.starts_with("unknown key `version` in [image]"), "{msg}");
    assert!(hint.is_some_and(|h| h.contains("above the first header")));
}

#[test]
fn unknown_key_in_every_section() {
    for (section, key) in [
        ("packages", "apts"),
        ("setup", "runs"),
        ("container", "netwrk"),
    ] {
        let (kind, line, col, msg, _) = fail(&format!("{BASE}[{section}]\n{key} = 1\n"));
        assert_eq!(
            (kind, line, col),
            (DiagnosticKind::UnknownKey, 4, 1),
            "{msg}"
        );
        assert!(msg.contains(&format!("`{key}` in [{section}]")), "{msg}");
    }
}

#[test]
fn unknown_key_in_an_inline_table() {
    let (kind, line, col, msg, _) = fail("image = { base = \"debian\", plat = \"x\" }\n");
    assert_eq!((kind, line, col), (DiagnosticKind::UnknownKey, 1, 28));
    assert!(msg.starts_with("unknown key `plat` in [image]"), "{msg}");
}

#[test]
fn wrong_type_for_a_string() {
    let (kind, line, col, msg, hint) = fail("[tools]\npython = 3.12\n");
    assert_eq!((kind, line, col), (DiagnosticKind::WrongType, 2, 10));
    assert_eq!(
        msg,
        "wrong type for `python` in [tools]: expected a string, found float 3.12"
    );
    assert_eq!(hint.as_deref(), Some("quote it: \"3.12\""));
}

#[test]
fn wrong_type_in_an_array_item() {
    let (kind, line, col, msg, _) = fail(&format!("{BASE}[packages]\napt = [\"git\", 7]\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::WrongType, 4, 15));
    assert_eq!(
        msg,
        "wrong type for `apt[1]` in [packages]: expected a string, found integer 7"
    );
}

#[test]
fn wrong_type_for_arrays_bools_and_sections() {
    let (kind, line, col, msg, hint) = fail(&format!("{BASE}[packages]\npip = \"numpy\"\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::WrongType, 4, 7));
    assert!(msg.contains("expected an array, found string"), "{msg}");
    assert_eq!(hint.as_deref(), Some("write a list: [\"numpy\"]"));

    let (kind, line, col, msg, _) = fail(&format!("{BASE}[container]\ngpu = \"yes\"\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::Value, 4, 7));
    assert!(
        msg.contains("`gpu` in [container] must be true, false, \"all\" or a list"),
        "{msg}"
    );

    let (kind, line, col, msg, _) = fail("image = \"python\"\n");
    assert_eq!((kind, line, col), (DiagnosticKind::WrongType, 1, 9));
    assert!(
        msg.starts_with("wrong type for [image]: expected a table"),
        "{msg}"
    );

    let (kind, line, col, msg, _) = fail(&format!("{BASE}[env]\nDEBUG = 1\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::WrongType, 4, 9));
    assert!(msg.contains("`DEBUG` in [env]: expected a string"), "{msg}");
}

#[test]
fn version_must_be_one() {
    let (kind, line, col, msg, _) = fail(&format!("version = 2\n{BASE}"));
    assert_eq!((kind, line, col), (DiagnosticKind::Version, 1, 11));
    assert_eq!(msg, "unsupported env.toml version 2, expected 1");
    let (kind, line, col, _, _) = fail(&format!("version = \"1\"\n{BASE}"));
    assert_eq!((kind, line, col), (DiagnosticKind::WrongType, 1, 11));
    assert!(load_str(&format!("version = 1\n{BASE}")).is_ok());
}

#[test]
fn bad_image_reference() {
    let (kind, line, col, msg, hint) = fail("[image]\nbase = \"Python:3.12\"\n");
    assert_eq!((kind, line, col), (DiagnosticKind::ImageRef, 2, 8));
    assert!(
        msg.starts_with("invalid image reference `Python:3.12`"),
        "{msg}"
    );
    assert!(hint.is_some());
}

#[test]
fn bad_platform() {
    let (kind, line, col, msg, _) = fail(&format!("{BASE}platform = \"amd64\"\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::Platform, 3, 12));
    assert!(msg.starts_with("invalid platform `amd64`"), "{msg}");
}

#[test]
fn bad_network() {
    let (kind, line, col, msg, _) = fail(&format!("{BASE}[container]\nnetwork = \"bridge\"\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::Network, 4, 11));
    assert_eq!(
        msg,
        "invalid network `bridge` in [container], expected one of: host, none, private"
    );
}

#[test]
fn bad_mount() {
    let (kind, line, col, msg, _) = fail(&format!(
        "{BASE}[container]\nmounts = [\n  \"/ok\",\n  \"/data:relative\",\n]\n"
    ));
    assert_eq!((kind, line, col), (DiagnosticKind::Mount, 6, 3));
    assert!(msg.contains("`relative` is not an absolute path"), "{msg}");
}

#[test]
fn bad_env_name() {
    let (kind, line, col, msg, _) = fail(&format!("{BASE}[env]\n\"1BAD\" = \"x\"\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::EnvName, 4, 1));
    assert_eq!(msg, "`1BAD` in [env] is not an environment variable name");
    let (kind, ..) = fail(&format!("{BASE}[env]\n\"A-B\" = \"x\"\n"));
    assert_eq!(kind, DiagnosticKind::EnvName);
}

#[test]
fn impossible_values() {
    let cases = [
        ("[tools]\ntensorflow = \"\"\n", 4, 14, "is empty"),
        ("[packages]\napt = [\"git curl\"]\n", 4, 8, "has a space"),
        (
            "[packages]\npip = [\"--index-url x\"]\n",
            4,
            8,
            "pip option",
        ),
        (
            "[packages]\nrequirements = \"/abs/req.txt\"\n",
            4,
            16,
            "absolute path",
        ),
        ("[setup]\nrun = [\" \"]\n", 4, 8, "is empty"),
        ("[container]\nshell = \"\"\n", 4, 9, "is empty"),
    ];
    for (tail, line, col, want) in cases {
        let (kind, l, c, msg, _) = fail(&format!("{BASE}{tail}"));
        assert_eq!(
            (kind, l, c),
            (DiagnosticKind::Value, line, col),
            "{tail}: {msg}"
        );
        assert!(msg.contains(want), "{tail}: {msg}");
    }
}

#[test]
fn syntax_errors_have_positions() {
    let (kind, line, col, msg, _) = fail("[image]\nbase = \"python\n");
    assert_eq!(kind, DiagnosticKind::Syntax);
    assert_eq!(line, 2, "{msg} at {line}:{col}");
    assert!(msg.starts_with("invalid TOML"), "{msg}");
    let (kind, line, col, msg, _) = fail(&format!("{BASE}[image]\n"));
    assert_eq!((kind, line, col), (DiagnosticKind::Syntax, 3, 2));
    assert_eq!(msg, "duplicate key `image`");
}

#[test]
fn find_walks_up_and_stops_at_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a/b");
    fs_err::create_dir_all(&nested).expect("mkdir");
    let err = find_and_load(&nested).expect_err("none yet");
    assert!(matches!(err, ConfigError::NotFound(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "no env.toml in {} or any parent directory",
            nested.display()
        )
    );
    use crate::error::Hint;
    assert_eq!(
        err.hint().as_deref(),
        Some("run `devenv init` to create one")
    );

    fs_err::write(dir.path().join("env.toml"), BASE).expect("write");
    let loaded = find_and_load(&nested).expect("found above");
    assert_eq!(loaded.project_dir, dir.path());
    assert_eq!(loaded.path, dir.path().join("env.toml"));
    // A nearer file wins.
    fs_err::write(nested.join("env.toml"), "[tools]\npython = \"3.11\"\n").expect("write");
    let loaded = find_and_load(&nested).expect("found here");
    assert_eq!(loaded.project_dir, nested);
    assert!(loaded.env.base_from_python());
}

#[test]
fn loaded_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("env.toml");
    fs_err::write(&path, "[image]\nbase = 1\n").expect("write");
    let err = find_and_load(dir.path()).expect_err("bad");
    let shown = err.to_string();
    assert!(
        shown.ends_with(
            "env.toml:2:8: wrong type for `base` in [image]: expected a string, found integer 1"
        ),
        "{shown}"
    );
    assert!(
        shown.starts_with(&dir.path().display().to_string()),
        "{shown}"
    );
}

#[test]
fn rendered_error_carries_position_and_hint() {
    let err = load_str("[image]\nbse = \"debian\"\n").expect_err("bad");
    let shown = crate::error::render(&anyhow::Error::from(err));
    assert_eq!(
        shown,
        "error: env.toml:2:1: unknown key `bse` in [image], expected one of: base, platform\n\
         hint: did you mean `base`?"
    );
}

#[test]
fn parse_resolves_relative_mounts_against_an_absolute_project_dir() {
    let env = parse(
        Path::new("env.toml"),
        &format!("{BASE}[container]\nmounts = [\"data:/data\"]\n"),
    )
    .expect("valid");
    let source = &env.container.mounts[0].source;
    assert!(source.is_absolute(), "{}", source.display());
    assert!(source.ends_with("data"));
}

#[test]
fn wrong_type_names_dates_and_big_numbers_as_written() {
    let (kind, line, col, msg, _) = fail("[image]\nbase = 1979-05-27\n");
    assert_eq!((kind, line, col), (DiagnosticKind::WrongType, 2, 8));
    assert!(
        msg.ends_with("expected a string, found date-time 1979-05-27"),
        "{msg}"
    );
    let (_, _, _, msg, _) = fail("version = 99999999999999999999999\n");
    assert!(
        msg.ends_with("found integer 99999999999999999999999"),
        "{msg}"
    );
}

#[test]
fn a_tool_may_name_a_variant_in_a_table() {
    let env = load_str(
        "[tools]\npython = \"3.11\"\ntorch = { version = \"2.5.1\", variant = \"cu124\" }\n",
    )
    .expect("valid");
    assert_eq!(env.tools["torch"], "2.5.1");
    assert_eq!(env.tool_variants["torch"], "cu124");
    assert!(!env.tool_variants.contains_key("python"));
    let (kind, line, col, msg, _) =
        fail("[tools]\npython = \"3.11\"\ntorch = { version = \"2.5.1\", flavour = \"x\" }\n");
    assert_eq!((kind, line, col), (DiagnosticKind::UnknownKey, 3, 30));
    assert!(msg.starts_with("unknown key `flavour`"), "{msg}");
    let (kind, line, col, msg, _) =
        fail("[tools]\npython = \"3.11\"\ntorch = { version = \"\" }\n");
    assert_eq!((kind, line, col), (DiagnosticKind::Value, 3, 21));
    assert!(msg.contains("is empty"), "{msg}");
}

#[test]
fn setup_steps_name_their_inputs_in_a_table() {
    let env = load_str(
        "[image]\nbase = \"debian:12\"\n[setup]\nrun = [\"make\", { cmd = \"pip install ./vendor/mylib\", inputs = [\"vendor/mylib/**\"] }]\n",
    )
    .unwrap();
    assert_eq!(
        env.setup.run,
        [
            SetupStep::cmd("make"),
            SetupStep {
                cmd: "pip install ./vendor/mylib".into(),
                inputs: vec!["vendor/mylib/**".into()],
            }
        ]
    );
}

#[test]
fn setup_step_tables_are_checked_where_they_are_written() {
    let base = "[image]\nbase = \"debian:12\"\n[setup]\n";
    for (entry, needle) in [
        ("{ inputs = [\"a\"] }", "needs `cmd`"),
        ("{ cmd = \"x\", inputs = \"a\" }", "is an array of strings"),
        ("{ cmd = \"x\", inputs = [1] }", "lists strings"),
        ("{ cmd = \"x\", input = [\"a\"] }", "unknown key `input`"),
        (
            "{ cmd = \"x\", inputs = [\"/etc/passwd\"] }",
            "it is absolute",
        ),
        (
            "{ cmd = \"x\", inputs = [\"../up\"] }",
            "it leaves the project",
        ),
        ("{ cmd = \" \" }", "is empty"),
        ("3", "a string or a table"),
    ] {
        let (_, line, _, message, hint) = fail(&format!("{base}run = [{entry}]\n"));
        assert_eq!(line, 4, "{entry}: {message}");
        assert!(message.contains(needle), "{entry}: {message}");
        assert!(hint.is_some(), "{entry}");
    }
}

#[test]
fn a_team_cache_is_a_repository_naming_its_registry() {
    let ok = load_str(&format!(
        "{BASE}[cache]\nregistry = \"cache.example:5000/team/devenv\"\n"
    ))
    .unwrap();
    let repo = ok.cache.unwrap();
    assert_eq!(
        (repo.registry.as_str(), repo.repository.as_str()),
        ("cache.example:5000", "team/devenv")
    );
    for (bad, why) in [
        ("cache.example/team/devenv:v1", "tag or digest"),
        ("team/devenv", "does not name its registry"),
        ("", "empty"),
    ] {
        let (_, line, col, msg, hint) = fail(&format!("{BASE}[cache]\nregistry = \"{bad}\"\n"));
        assert_eq!((line, col), (BASE.lines().count() + 2, 12), "{bad}: {msg}");
        assert!(msg.contains(why), "{bad}: {msg}");
        assert!(
            hint.is_some_and(|h| h.contains("team/devenv-cache")),
            "{bad}"
        );
    }
    let (kind, ..) = fail(&format!("{BASE}[cache]\nregistri = \"x.example/a\"\n"));
    assert_eq!(kind, DiagnosticKind::UnknownKey);
}

#[test]
fn gpu_is_a_switch_all_or_a_list_of_indices() {
    let gpu = |v: &str| {
        load_str(&format!("{BASE}[container]\ngpu = {v}\n"))
            .map(|e| (e.container.gpu, e.container.gpu_devices))
    };
    assert_eq!(gpu("true").unwrap(), (true, None));
    assert_eq!(gpu("false").unwrap(), (false, None));
    assert_eq!(gpu("\"all\"").unwrap(), (true, None));
    assert_eq!(gpu("[1, 0, 1]").unwrap(), (true, Some(vec![1, 0])));
    for bad in ["\"some\"", "[]", "[-1]", "[\"0\"]", "3"] {
        let (_, line, col, msg, hint) = fail(&format!("{BASE}[container]\ngpu = {bad}\n"));
        assert_eq!((line, col), (BASE.lines().count() + 2, 7), "{bad}: {msg}");
        assert!(msg.contains("list of GPU indices"), "{bad}: {msg}");
        assert!(hint.is_some(), "{bad}");
    }
}

const DB: &str = "[services.db]\nimage = \"postgres:16\"\n";

#[test]
fn services_load_with_every_key_and_make_the_network_private() {
    let env = load_str(&format!(
        "{BASE}[container]\nports = [\"8888\", \"18080:8080\"]\n\n{DB}command = \"postgres -c fsync=off\"\n\
         user = \"postgres\"\nenv = {{ POSTGRES_PASSWORD = \"x\" }}\nports = [\"5432\"]\n\
         volumes = [\"pgdata:/var/lib/postgresql/data\"]\nready = \"tcp:5432\"\nready_timeout = 90\n\n\
         [services.cache]\nimage = \"redis:7\"\ncommand = [\"redis-server\", \"--save\", \"\"]\n\
         ready = [\"redis-cli\", \"ping\"]\n"
    ))
    .unwrap();
    assert_eq!(env.container.network, Network::Private);
    assert_eq!(
        env.container.ports,
        [
            Port {
                host: 8888,
                container: 8888
            },
            Port {
                host: 18080,
                container: 8080
            }
        ]
    );
    let db = &env.services["db"];
    assert_eq!(db.image.to_string(), "docker.io/library/postgres:16");
    assert_eq!(
        db.command.as_deref().unwrap(),
        ["/bin/sh", "-c", "postgres -c fsync=off"]
    );
    assert_eq!(db.user.as_deref(), Some("postgres"));
    assert_eq!(db.env["POSTGRES_PASSWORD"], "x");
    assert_eq!(db.volumes[0].name, "pgdata");
    assert_eq!(db.volumes[0].target, Path::new("/var/lib/postgresql/data"));
    assert_eq!(db.ready, Some(Ready::Tcp(5432)));
    assert_eq!(db.ready_timeout, 90);
    let cache = &env.services["cache"];
    assert_eq!(
        cache.ready,
        Some(Ready::Command(vec!["redis-cli".into(), "ping".into()]))
    );
    assert_eq!(cache.ready_timeout, READY_TIMEOUT);
    // Ports alone make it private too; nothing keeps the host network.
    let env = load_str(&format!("{BASE}[container]\nports = [\"8888\"]\n")).unwrap();
    assert_eq!(env.container.network, Network::Private);
    assert_eq!(load_str(BASE).unwrap().container.network, Network::Host);
}

#[test]
fn two_containers_on_one_port_are_refused_where_the_second_says_so() {
    let (kind, line, col, msg, hint) = fail(&format!(
        "{BASE}{DB}ready = \"tcp:5432\"\n[services.replica]\nimage = \"postgres:16\"\nports = [\"15432:5432\"]\n"
    ));
    assert_eq!((kind, line, col), (DiagnosticKind::Value, 8, 10));
    assert!(
        msg.contains("[services.db] and [services.replica] both listen on port 5432"),
        "{msg}"
    );
    assert!(hint.unwrap().contains("another port"));
    // The shell and a service.
    let (_, _, _, msg, _) = fail(&format!(
        "{BASE}[container]\nports = [\"6379\"]\n[services.cache]\nimage = \"redis\"\nready = \"tcp:6379\"\n"
    ));
    assert!(
        msg.contains("[container] and [services.cache] both listen on port 6379"),
        "{msg}"
    );
    // One host port twice.
    let (_, _, _, msg, _) = fail(&format!(
        "{BASE}[container]\nports = [\"8888\"]\n[services.web]\nimage = \"nginx\"\nports = [\"8888:80\"]\n"
    ));
    assert_eq!(msg, "host port 8888 is published twice");
    // The same service publishing one port twice on the host is not a conflict inside.
    load_str(&format!(
        "{BASE}{DB}ports = [\"5432\", \"15432:5432\"]\nready = \"tcp:5432\"\n"
    ))
    .unwrap();
}

#[test]
fn bad_services_and_ports_name_their_place() {
    let cases: [(&str, (usize, usize), &str); 10] = [
        (
            "[services.DB]\nimage = \"x\"\n",
            (3, 11),
            "invalid service name `DB`",
        ),
        (
            "[services.localhost]\nimage = \"x\"\n",
            (3, 11),
            "invalid service name `localhost`",
        ),
        ("[services.db]\n", (3, 1), "image"),
        (
            "[services.db]\nimage = \"x\"\nrestart = \"always\"\n",
            (5, 1),
            "unknown key `restart` in [services.db]",
        ),
        (
            "[services.db]\nimage = \"UPPER CASE\"\n",
            (4, 9),
            "`image` in [services.db]",
        ),
        (
            "[services.db]\nimage = \"x\"\nports = [\"0\"]\n",
            (5, 10),
            "invalid port in [services.db]",
        ),
        (
            "[services.db]\nimage = \"x\"\nvolumes = [\"/abs:/data\"]\n",
            (5, 12),
            "invalid volume `/abs:/data`",
        ),
        (
            "[services.db]\nimage = \"x\"\nvolumes = [\"data:rel\"]\n",
            (5, 12),
            "must be absolute",
        ),
        (
            "[services.db]\nimage = \"x\"\nready = \"tcp:x\"\n",
            (5, 9),
            "not a port after `tcp:`",
        ),
        (
            "[services.db]\nimage = \"x\"\nready_timeout = 0\n",
            (5, 17),
            "`ready_timeout` in [services.db]",
        ),
    ];
    for (text, (line, col), needle) in cases {
        let (_, l, c, msg, _) = fail(&format!("{BASE}{text}"));
        assert!(msg.contains(needle), "{text:?}: {msg}");
        assert_eq!((l, c), (line, col), "{text:?}: {msg}");
    }
    let (kind, line, col, msg, _) = fail(&format!("{BASE}[container]\nnetwork = \"host\"\n{DB}"));
    assert_eq!((kind, line, col), (DiagnosticKind::Network, 4, 11));
    assert_eq!(
        msg,
        "[services] need the env's own network, not network = \"host\""
    );
    let (_, _, _, msg, _) = fail(&format!("{BASE}[container]\nports = [\"99999\"]\n"));
    assert!(msg.contains("`99999` is not a port"), "{msg}");
}
