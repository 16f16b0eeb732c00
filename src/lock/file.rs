//! env.lock as text: [`render`] writes it in one fixed layout (sorted, no timestamps), [`parse`]
//! reads it back. Rendering is by hand rather than through serde so the layout (key order, one
//! package per table, blank lines) never depends on a serializer's choices.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{AptLock, AptPackage, ImageLock, Lock, LockError, PythonLock, PythonPackage};
use crate::reference::Digest;

/// The format this devenv writes and reads.
pub const VERSION: i64 = 1;

const HEADER: &str = "# env.lock: written by `devenv lock`; commit it. Do not edit by hand.\n";

/// A TOML string literal (basic string, escaped).
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// The lock as text. Packages come out sorted whatever order the value holds them in.
pub fn render(lock: &Lock) -> String {
    let mut out = String::from(HEADER);
    out.push_str(&format!("version = {VERSION}\n\n[image]\n"));
    out.push_str(&format!("reference = {}\n", q(&lock.image.reference)));
    let platforms: Vec<String> = lock
        .image
        .platforms
        .iter()
        .map(|(p, d)| format!("{} = {}", q(p), q(d.as_str())))
        .collect();
    out.push_str(&format!("platforms = {{ {} }}\n", platforms.join(", ")));

    let py = &lock.python;
    if !py.is_empty() {
        out.push_str("\n[python]\n");
        if let Some(d) = &py.inputs {
            out.push_str(&format!("inputs = {}\n", q(d.as_str())));
        }
        if let Some(v) = &py.interpreter {
            out.push_str(&format!("interpreter = {}\n", q(v)));
        }
        out.push_str(&format!("requested = {}\n", list(&py.requested)));
        let mut packages = py.packages.clone();
        packages.sort();
        for p in &packages {
            out.push_str(&format!(
                "\n[[python.package]]\nname = {}\nversion = {}\nurl = {}\nsha256 = {}\n",
                q(&p.name),
                q(&p.version),
                q(&p.url),
                q(&p.sha256)
            ));
        }
    }

    let apt = &lock.apt;
    if !apt.is_empty() {
        out.push_str("\n[apt]\n");
        if let Some(d) = &apt.inputs {
            out.push_str(&format!("inputs = {}\n", q(d.as_str())));
        }
        out.push_str(&format!("requested = {}\n", list(&apt.requested)));
        let mut packages = apt.packages.clone();
        packages.sort();
        for p in &packages {
            out.push_str(&format!(
                "\n[[apt.package]]\nname = {}\nversion = {}\n",
                q(&p.name),
                q(&p.version)
            ));
        }
    }
    for (name, image) in &lock.services {
        out.push_str(&format!("\n[services.{}]\n", q(name)));
        out.push_str(&format!("reference = {}\n", q(&image.reference)));
        let platforms: Vec<String> = image
            .platforms
            .iter()
            .map(|(p, d)| format!("{} = {}", q(p), q(d.as_str())))
            .collect();
        out.push_str(&format!("platforms = {{ {} }}\n", platforms.join(", ")));
    }
    if !lock.layers.is_empty() {
        out.push_str(
            "\n# Tool layers that build byte-identical everywhere: layer key = the diff_id every\n\
             # build and every team-cache entry must have.\n[layers]\n",
        );
        for (key, diff_id) in &lock.layers {
            out.push_str(&format!("{} = {}\n", q(key.as_str()), q(diff_id.as_str())));
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    version: i64,
    image: RawImage,
    python: Option<RawPython>,
    apt: Option<RawApt>,
    #[serde(default)]
    layers: BTreeMap<Digest, Digest>,
    #[serde(default)]
    services: BTreeMap<String, RawImage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    reference: String,
    #[serde(default)]
    platforms: BTreeMap<String, Digest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPython {
    inputs: Option<Digest>,
    interpreter: Option<String>,
    #[serde(default)]
    requested: Vec<String>,
    #[serde(default)]
    package: Vec<RawPythonPackage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPythonPackage {
    name: String,
    version: String,
    url: String,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApt {
    inputs: Option<Digest>,
    #[serde(default)]
    requested: Vec<String>,
    #[serde(default)]
    package: Vec<RawAptPackage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAptPackage {
    name: String,
    version: String,
}

/// Read env.lock text; `path` names it in errors.
pub fn parse(path: &std::path::Path, text: &str) -> Result<Lock, LockError> {
    let bad = |message: String| LockError::Parse {
        path: path.to_path_buf(),
        message,
    };
    // The version first, so a newer file says so instead of naming a key this devenv lacks.
    if let Ok(table) = text.parse::<toml::Table>()
        && let Some(v) = table.get("version").and_then(toml::Value::as_integer)
        && v != VERSION
    {
        return Err(LockError::Version {
            path: path.to_path_buf(),
            version: v,
        });
    }
    let raw: RawLock = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or("").matches('\n').count() + 1);
        match line {
            Some(l) => bad(format!("line {l}: {}", e.message())),
            None => bad(e.message().to_string()),
        }
    })?;
    if raw.version != VERSION {
        return Err(LockError::Version {
            path: path.to_path_buf(),
            version: raw.version,
        });
    }
    let mut python = PythonLock::default();
    if let Some(p) = raw.python {
        python.inputs = p.inputs;
        python.interpreter = p.interpreter;
        python.requested = p.requested;
        for pkg in p.package {
            let hex_ok =
                pkg.sha256.len() == 64 && pkg.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(bad(format!(
                    "python package `{}`: sha256 `{}` is not 64 hex digits",
                    pkg.name, pkg.sha256
                )));
            }
            python.packages.push(PythonPackage {
                name: pkg.name,
                version: pkg.version,
                url: pkg.url,
                sha256: pkg.sha256.to_ascii_lowercase(),
            });
        }
        python.packages.sort();
    }
    let mut apt = AptLock::default();
    if let Some(a) = raw.apt {
        apt.inputs = a.inputs;
        apt.requested = a.requested;
        apt.packages = a
            .package
            .into_iter()
            .map(|p| AptPackage {
                name: p.name,
                version: p.version,
            })
            .collect();
        apt.packages.sort();
    }
    Ok(Lock {
        image: ImageLock {
            reference: raw.image.reference,
            platforms: raw.image.platforms,
        },
        python,
        apt,
        layers: raw.layers,
        services: raw
            .services
            .into_iter()
            .map(|(name, i)| {
                let image = ImageLock {
                    reference: i.reference,
                    platforms: i.platforms,
                };
                (name, image)
            })
            .collect(),
    })
}
