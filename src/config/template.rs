//! env.toml templates (`templates/*.toml`, embedded at build time) and writing a new env.toml
//! for `devenv init`.
//!
//! A template is adapted to the project it lands in: a `requirements.txt` becomes
//! `[packages] requirements`, a `pyproject.toml` gets a commented install example under
//! `[setup]`. What is written always parses (checked before writing); an existing env.toml is
//! never replaced unless asked.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{ConfigError, Expansion, FILE_NAME, parse_in};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    Python,
    Tensorflow,
    Pytorch,
    Jupyter,
    Blank,
}

impl Template {
    pub const ALL: [Template; 5] = [
        Template::Python,
        Template::Tensorflow,
        Template::Pytorch,
        Template::Jupyter,
        Template::Blank,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Template::Python => "python",
            Template::Tensorflow => "tensorflow",
            Template::Pytorch => "pytorch",
            Template::Jupyter => "jupyter",
            Template::Blank => "blank",
        }
    }

    /// The template as shipped, before adapting it to a project.
    pub fn text(self) -> &'static str {
        match self {
            Template::Python => include_str!("../../templates/python.toml"),
            Template::Tensorflow => include_str!("../../templates/tensorflow.toml"),
            Template::Pytorch => include_str!("../../templates/pytorch.toml"),
            Template::Jupyter => include_str!("../../templates/jupyter.toml"),
            Template::Blank => include_str!("../../templates/blank.toml"),
        }
    }

    /// The template adapted to what the project has.
    pub fn render(self, found: Detected) -> String {
        let mut lines: Vec<String> = self.text().lines().map(str::to_string).collect();
        if found.requirements {
            use_requirements(&mut lines);
        }
        if found.pyproject {
            mention_pyproject(&mut lines);
        }
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Project files a template adapts to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Detected {
    pub requirements: bool,
    pub pyproject: bool,
}

impl Detected {
    pub fn in_dir(dir: &Path) -> Detected {
        Detected {
            requirements: dir.join(REQUIREMENTS).is_file(),
            pyproject: dir.join("pyproject.toml").is_file(),
        }
    }
}

/// What [`create`] wrote.
#[derive(Clone, Debug)]
pub struct Created {
    pub path: PathBuf,
    pub template: Template,
    pub detected: Detected,
}

const REQUIREMENTS: &str = "requirements.txt";
const REQUIREMENTS_LINE: &str = "# requirements = \"requirements.txt\"";

/// Write `dir/env.toml` from `template`. Without `force`, an existing env.toml is an error and is
/// left untouched (the file is created exclusively, so a racing writer is not overwritten either).
pub fn create(dir: &Path, template: Template, force: bool) -> Result<Created, ConfigError> {
    let path = dir.join(FILE_NAME);
    let detected = Detected::in_dir(dir);
    let text = template.render(detected);
    // A template that does not load would hand the user a broken file: refuse before writing.
    parse_in(
        Path::new(FILE_NAME),
        &text,
        &Expansion {
            project_dir: dir.to_path_buf(),
            home: Some(PathBuf::from("/home")),
        },
    )?;
    if force {
        fs_err::write(&path, &text)?;
    } else {
        let mut file = match fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ConfigError::Exists(path));
            }
            Err(e) => return Err(e.into()),
        };
        file.write_all(text.as_bytes())?;
    }
    Ok(Created {
        path,
        template,
        detected,
    })
}

/// Uncomment `requirements = …`, and its `[packages]` header when that is commented too.
fn use_requirements(lines: &mut [String]) {
    let Some(at) = lines.iter().position(|l| l.trim() == REQUIREMENTS_LINE) else {
        return;
    };
    lines[at] = lines[at].replacen("# ", "", 1);
    if let Some(header) = lines[..at].iter().rposition(|l| is_header(l))
        && lines[header].trim_start().starts_with('#')
    {
        lines[header] = lines[header].replacen("# ", "", 1);
    }
}

/// Under the `[setup]` header (commented or not), say how to install the project itself.
fn mention_pyproject(lines: &mut Vec<String>) {
    let Some(at) = lines
        .iter()
        .position(|l| is_header(l) && l.trim_start_matches(['#', ' ']) == "[setup]")
    else {
        return;
    };
    // After the section's own comments and keys: before the blank line or header that ends it.
    let end = lines[at + 1..]
        .iter()
        .position(|l| l.trim().is_empty() || is_header(l))
        .map_or(lines.len(), |i| at + 1 + i);
    lines.insert(
        end,
        "# pyproject.toml found: to install this project itself, use\n\
         # run = [\"python -m pip install --no-deps -e .\"]"
            .into(),
    );
}

/// `[name]` or `# [name]`.
fn is_header(line: &str) -> bool {
    let l = line.trim_start_matches(['#', ' ']);
    l.starts_with('[') && l.ends_with(']') && !l.contains('=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_in;

    fn load(text: &str) -> Result<crate::config::EnvFile, ConfigError> {
        parse_in(
            Path::new("env.toml"),
            text,
            &Expansion {
                project_dir: "/p".into(),
                home: Some("/home/u".into()),
            },
        )
    }

    #[test]
    fn every_template_loads_in_every_project() {
        let projects = [
            Detected::default(),
            Detected {
                requirements: true,
                pyproject: false,
            },
            Detected {
                requirements: false,
                pyproject: true,
            },
            Detected {
                requirements: true,
                pyproject: true,
            },
        ];
        for t in Template::ALL {
            for found in projects {
                let text = t.render(found);
                let env = load(&text).unwrap_or_else(|e| panic!("{t} {found:?}: {e}"));
                let want = found
                    .requirements
                    .then(|| PathBuf::from("requirements.txt"));
                assert_eq!(env.packages.requirements, want, "{t} {found:?}");
                assert_eq!(
                    text.contains("pyproject.toml found"),
                    found.pyproject,
                    "{t}"
                );
                assert!(env.base_image().is_ok(), "{t}");
            }
        }
    }

    #[test]
    fn templates_have_what_init_adapts() {
        for t in Template::ALL {
            let text = t.text();
            assert!(text.contains(REQUIREMENTS_LINE), "{t}");
            assert!(
                text.lines().any(|l| is_header(l) && l.ends_with("[setup]")),
                "{t}"
            );
            // Every line explains or sets something: no template is bare keys.
            assert!(
                text.lines().filter(|l| l.starts_with('#')).count() >= 10,
                "{t}"
            );
        }
    }

    #[test]
    fn templates_pin_what_the_brief_promises() {
        let base = |t: Template| load(t.text()).map(|e| e.base_image().map(|b| b.to_string()));
        assert_eq!(
            base(Template::Python).ok().and_then(Result::ok).as_deref(),
            Some("docker.io/library/python:3.12-slim")
        );
        assert_eq!(
            base(Template::Blank).ok().and_then(Result::ok).as_deref(),
            Some("docker.io/library/debian:bookworm-slim")
        );
        let tf = load(Template::Tensorflow.text()).expect("tensorflow");
        assert_eq!(
            tf.tools.get("tensorflow").map(String::as_str),
            Some("2.16.1")
        );
        assert_eq!(
            tf.base_image().expect("base").tag.as_deref(),
            Some("3.11-slim")
        );
        let torch = load(Template::Pytorch.text()).expect("pytorch");
        assert!(torch.tools.contains_key("torch"));
        let jupyter = load(Template::Jupyter.text()).expect("jupyter");
        assert!(jupyter.tools.contains_key("jupyterlab"));
    }

    #[test]
    fn create_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs_err::write(dir.path().join("env.toml"), "# mine\n").expect("write");
        let err = create(dir.path(), Template::Python, false).expect_err("exists");
        assert!(matches!(err, ConfigError::Exists(_)), "{err}");
        let kept = fs_err::read_to_string(dir.path().join("env.toml")).expect("read");
        assert_eq!(kept, "# mine\n");
        create(dir.path(), Template::Blank, true).expect("force");
        let written = fs_err::read_to_string(dir.path().join("env.toml")).expect("read");
        assert_eq!(written, Template::Blank.text());
    }

    #[test]
    fn create_detects_requirements_and_pyproject() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs_err::write(dir.path().join("requirements.txt"), "numpy\n").expect("write");
        fs_err::write(dir.path().join("pyproject.toml"), "[project]\n").expect("write");
        let created = create(dir.path(), Template::Blank, false).expect("create");
        assert_eq!(
            created.detected,
            Detected {
                requirements: true,
                pyproject: true
            }
        );
        let loaded = crate::config::load(&created.path).expect("load");
        assert_eq!(
            loaded.requirements_path(),
            Some(dir.path().join("requirements.txt"))
        );
    }
}
