//! Tool recipes: `[tools] name = "version"` expanded into build inputs by data files in
//! `templates/tools/<name>.toml`, embedded at build time.
//!
//! A recipe lists pip requirements and apt packages with `{version}` (and `{variant}`) holes,
//! and may offer variants (torch's CPU and CUDA wheel indexes) chosen by
//! `name = { version = "…", variant = "…" }`. A variant names its index by a name the user's
//! `[python.indexes]` maps to a URL (`pytorch/cu124`, see [`super::index`]): no recipe names a
//! host. [`expand`] joins the recipes' output with
//! `[packages]` and `[setup]` into [`Inputs`], in build order. Invariants: expansion is pure (it
//! reads no file, runs nothing), deterministic (tools in name order, apt sorted), and an unknown
//! tool or variant is an error naming the known ones — never silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::EnvFile;

/// Every recipe, by tool name (the file name under `templates/tools/`).
const RECIPES: &[(&str, &str)] = &[
    ("jax", include_str!("../../templates/tools/jax.toml")),
    (
        "jupyterlab",
        include_str!("../../templates/tools/jupyterlab.toml"),
    ),
    ("numpy", include_str!("../../templates/tools/numpy.toml")),
    ("pandas", include_str!("../../templates/tools/pandas.toml")),
    ("python", include_str!("../../templates/tools/python.toml")),
    (
        "scikit-learn",
        include_str!("../../templates/tools/scikit-learn.toml"),
    ),
    (
        "tensorflow",
        include_str!("../../templates/tools/tensorflow.toml"),
    ),
    ("torch", include_str!("../../templates/tools/torch.toml")),
    (
        "transformers",
        include_str!("../../templates/tools/transformers.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    #[error("unknown tool `{name}` in [tools]; known tools: {}", known.join(", "))]
    UnknownTool { name: String, known: Vec<String> },
    #[error("tool `{tool}` has no variant `{variant}`; its variants: {}", known.join(", "))]
    UnknownVariant {
        tool: String,
        variant: String,
        known: Vec<String>,
    },
    #[error("tool `{tool}` has no variants, but env.toml asks for `{variant}`")]
    NoVariants { tool: String, variant: String },
    #[error("version `{version}` of `{tool}` in [tools] is not a plain version (like \"2.16.1\")")]
    BadVersion { tool: String, version: String },
    #[error(
        "tools `{first}` and `{second}` need different package indexes ({first_index} and {second_index})"
    )]
    IndexConflict {
        first: String,
        first_index: String,
        second: String,
        second_index: String,
    },
    /// A recipe file does not parse: a defect of devenv itself, caught by the tests.
    #[error("recipe `{name}` is broken: {message}")]
    BrokenRecipe { name: String, message: String },
}

impl crate::error::Hint for RecipeError {
    fn hint(&self) -> Option<String> {
        match self {
            RecipeError::UnknownTool { name, .. } => Some(format!(
                "for any other Python package, list it under [packages]: pip = [\"{name}==VERSION\"]"
            )),
            RecipeError::UnknownVariant { tool, known, .. } => Some(format!(
                "write `{tool} = {{ version = \"…\", variant = \"{}\" }}`, or leave the variant out for the default",
                known.first().map_or("", String::as_str)
            )),
            RecipeError::NoVariants { tool, .. } => {
                Some(format!("write `{tool} = \"VERSION\"` in [tools]"))
            }
            RecipeError::BadVersion { tool, .. } => Some(format!(
                "[tools] pins exact versions; for a range use [packages] pip = [\"{tool}>=…\"]"
            )),
            RecipeError::IndexConflict { .. } => Some(
                "install one of them through [packages].pip instead, or pick variants that share an index"
                    .into(),
            ),
            RecipeError::BrokenRecipe { .. } => {
                Some("this is a bug in devenv; please report it".into())
            }
        }
    }
}

/// What env.toml asks to build, after recipes are expanded. Order is build order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The Python version `[tools] python` pins, checked against the base image.
    pub python: Option<String>,
    /// Debian packages, from recipes then `[packages].apt`; sorted, deduplicated.
    pub apt: Vec<String>,
    /// pip requirement specifiers (PEP 508), from recipes then `[packages].pip`.
    pub pip: Vec<String>,
    /// `[packages].requirements`, resolved against the project directory.
    pub requirements: Option<PathBuf>,
    /// The index a recipe variant needs besides the default one (torch's CPU/CUDA wheels).
    pub index: Option<RecipeIndex>,
    /// `[setup].run` commands, one build step each.
    pub run: Vec<crate::config::SetupStep>,
}

/// An index a recipe variant names: `pytorch/cu124`, resolved against the user's
/// `[python.indexes]` only when a resolution needs the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipeIndex {
    /// `NAME/PATH` as the recipe writes it; what env.lock's inputs record.
    pub reference: String,
    /// `torch's variant `cu124``, for messages.
    pub wanted_by: String,
}

impl Inputs {
    /// Whether there is a Python part to resolve: packages to install, or an interpreter to check.
    pub fn has_python(&self) -> bool {
        self.python.is_some() || !self.pip.is_empty() || self.requirements.is_some()
    }
}

/// One recipe file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipe {
    #[allow(dead_code)] // documentation for readers of the data file (and `devenv init` later)
    description: String,
    /// The tool is the interpreter itself: it selects or checks the base image.
    #[serde(default)]
    interpreter: bool,
    #[serde(default)]
    pip: Vec<String>,
    #[serde(default)]
    apt: Vec<String>,
    default_variant: Option<String>,
    #[serde(default)]
    variants: BTreeMap<String, Variant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Variant {
    /// `NAME` or `NAME/PATH`: a `[python.indexes]` name of the user's configuration.
    index: Option<String>,
}

/// The names of every tool with a recipe, sorted.
pub fn known_tools() -> Vec<String> {
    RECIPES.iter().map(|(n, _)| n.to_string()).collect()
}

fn recipe(name: &str) -> Result<Recipe, RecipeError> {
    let (_, text) =
        RECIPES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| RecipeError::UnknownTool {
                name: name.to_string(),
                known: known_tools(),
            })?;
    toml::from_str(text).map_err(|e| RecipeError::BrokenRecipe {
        name: name.to_string(),
        message: e.to_string(),
    })
}

/// A version `[tools]` may name: digits, letters, `.`, `+`, `-`, `_`, `!` (PEP 440 and Debian
/// forms), nothing that could change a requirement's meaning (`>`, `,`, `;`, spaces).
fn plain_version(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_' | '!' | '*'))
}

/// Expand env.toml's `[tools]`, `[packages]` and `[setup]` into build inputs.
pub fn expand(env: &EnvFile, project_dir: &Path) -> Result<Inputs, RecipeError> {
    let mut inputs = Inputs::default();
    let mut pip = Vec::new();
    let mut apt = Vec::new();
    // The tool whose variant set the index, for conflict messages.
    let mut index_from: Option<String> = None;
    for (name, version) in &env.tools {
        let recipe = recipe(name)?;
        if !plain_version(version) {
            return Err(RecipeError::BadVersion {
                tool: name.clone(),
                version: version.clone(),
            });
        }
        if recipe.interpreter {
            inputs.python = Some(version.clone());
        }
        let variant_name = match (env.tool_variants.get(name), &recipe.default_variant) {
            (Some(v), _) if recipe.variants.is_empty() => {
                return Err(RecipeError::NoVariants {
                    tool: name.clone(),
                    variant: v.clone(),
                });
            }
            (Some(v), _) => Some(v.clone()),
            (None, d) => d.clone(),
        };
        let variant = match &variant_name {
            Some(v) => Some(
                recipe
                    .variants
                    .get(v)
                    .ok_or_else(|| RecipeError::UnknownVariant {
                        tool: name.clone(),
                        variant: v.clone(),
                        known: recipe.variants.keys().cloned().collect(),
                    })?,
            ),
            None => None,
        };
        let fill = |s: &str| {
            s.replace("{version}", version)
                .replace("{variant}", variant_name.as_deref().unwrap_or(""))
        };
        pip.extend(recipe.pip.iter().map(|s| fill(s)));
        apt.extend(recipe.apt.iter().map(|s| fill(s)));
        if let Some(reference) = variant.and_then(|v| v.index.as_ref()) {
            match (&inputs.index, &index_from) {
                (Some(existing), Some(first)) if &existing.reference != reference => {
                    return Err(RecipeError::IndexConflict {
                        first: first.clone(),
                        first_index: existing.reference.clone(),
                        second: name.clone(),
                        second_index: reference.clone(),
                    });
                }
                _ => {
                    inputs.index = Some(RecipeIndex {
                        reference: reference.clone(),
                        wanted_by: format!(
                            "{name}'s variant `{}`",
                            variant_name.as_deref().unwrap_or_default()
                        ),
                    });
                    index_from = Some(name.clone());
                }
            }
        }
    }
    pip.extend(env.packages.pip.iter().cloned());
    apt.extend(env.packages.apt.iter().cloned());
    apt.sort();
    apt.dedup();
    inputs.pip = pip;
    inputs.apt = apt;
    inputs.requirements = env
        .packages
        .requirements
        .as_ref()
        .map(|r| project_dir.join(r));
    inputs.run = env.setup.run.clone();
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Hint;

    fn env(text: &str) -> EnvFile {
        crate::config::parse(Path::new("/p/env.toml"), text).expect("valid env.toml")
    }

    #[test]
    fn every_recipe_parses() {
        for (name, _) in RECIPES {
            recipe(name).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut sorted = known_tools();
        sorted.sort();
        assert_eq!(sorted, known_tools(), "RECIPES is kept in name order");
    }

    #[test]
    fn tools_expand_to_pip_requirements_then_packages() {
        let e = env(
            "[tools]\npython = \"3.11\"\ntensorflow = \"2.16.1\"\nnumpy = \"1.26.4\"\n\
             [packages]\npip = [\"six==1.16.0\"]\napt = [\"jq\", \"git\", \"jq\"]\n\
             requirements = \"req.txt\"\n[setup]\nrun = [\"echo hi\"]\n",
        );
        let i = expand(&e, Path::new("/p")).expect("expands");
        assert_eq!(i.python.as_deref(), Some("3.11"));
        assert_eq!(
            i.pip,
            ["numpy==1.26.4", "tensorflow==2.16.1", "six==1.16.0"]
        );
        assert_eq!(i.apt, ["git", "jq"]);
        assert_eq!(i.requirements, Some(PathBuf::from("/p/req.txt")));
        assert_eq!(i.run, [crate::config::SetupStep::cmd("echo hi")]);
        assert_eq!(i.index, None);
        assert!(i.has_python());
    }

    #[test]
    fn python_alone_installs_nothing() {
        let i = expand(&env("[tools]\npython = \"3.12\"\n"), Path::new("/p")).expect("expands");
        assert!(i.pip.is_empty() && i.apt.is_empty());
        assert_eq!(i.python.as_deref(), Some("3.12"));
    }

    #[test]
    fn torch_defaults_to_the_default_index_like_pip_install_torch() {
        let e = env("[image]\nbase = \"debian:12\"\n[tools]\ntorch = \"2.5.1\"\n");
        let i = expand(&e, Path::new("/p")).expect("expands");
        assert_eq!(i.pip, ["torch==2.5.1"]);
        assert_eq!(i.index, None);
    }

    #[test]
    fn torch_cpu_and_cuda_variants_name_pytorchs_index_by_name() {
        for (variant, reference) in [("cpu", "pytorch/cpu"), ("cu124", "pytorch/cu124")] {
            let e = env(&format!(
                "[image]\nbase = \"debian:12\"\n[tools]\ntorch = {{ version = \"2.5.1\", variant = \"{variant}\" }}\n"
            ));
            let i = expand(&e, Path::new("/p")).expect("expands");
            let index = i.index.expect("an index");
            assert_eq!(index.reference, reference);
            assert_eq!(index.wanted_by, format!("torch's variant `{variant}`"));
        }
    }

    #[test]
    fn no_recipe_names_an_index_host() {
        for (name, text) in RECIPES {
            assert!(
                !text.contains("://"),
                "{name} names a URL: recipes name indexes by name"
            );
        }
    }

    #[test]
    fn jax_variant_becomes_an_extra() {
        let e = env("[image]\nbase = \"debian:12\"\n[tools]\njax = \"0.4.35\"\n");
        assert_eq!(
            expand(&e, Path::new("/p")).expect("expands").pip,
            ["jax[cpu]==0.4.35"]
        );
    }

    #[test]
    fn unknown_variant_lists_the_known_ones() {
        let e = env(
            "[image]\nbase = \"debian:12\"\n[tools]\ntorch = { version = \"2.5.1\", variant = \"rocm\" }\n",
        );
        let err = expand(&e, Path::new("/p")).expect_err("unknown variant");
        assert_eq!(
            err.to_string(),
            "tool `torch` has no variant `rocm`; its variants: cpu, cu118, cu121, cu124, pypi"
        );
        let e = env(
            "[image]\nbase = \"debian:12\"\n[tools]\nnumpy = { version = \"1.26.4\", variant = \"x\" }\n",
        );
        assert!(matches!(
            expand(&e, Path::new("/p")),
            Err(RecipeError::NoVariants { .. })
        ));
    }

    #[test]
    fn unknown_tool_lists_known_tools_and_points_to_packages_pip() {
        let e = env("[image]\nbase = \"debian:12\"\n[tools]\nrequests = \"2.32.3\"\n");
        let err = expand(&e, Path::new("/p")).expect_err("unknown tool");
        let msg = err.to_string();
        assert!(msg.starts_with("unknown tool `requests` in [tools]; known tools: jax, jupyterlab, numpy, pandas, python, scikit-learn, tensorflow, torch, transformers"), "{msg}");
        let hint = err.hint().expect("a hint");
        assert!(
            hint.contains("[packages]: pip = [\"requests==VERSION\"]"),
            "{hint}"
        );
    }

    #[test]
    fn a_range_is_not_a_tool_version() {
        let e = env("[image]\nbase = \"debian:12\"\n[tools]\nnumpy = \">=1.26\"\n");
        assert!(matches!(
            expand(&e, Path::new("/p")),
            Err(RecipeError::BadVersion { .. })
        ));
    }
}
