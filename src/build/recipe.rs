//! Tool recipes: `[tools] name = "version"` expanded into build inputs by data files in
//! `templates/tools/`. STUB — being written (see the lock brief); the shape below is the
//! interface the build and lock code share.

use std::path::PathBuf;

use crate::config::EnvFile;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    #[error("unknown tool `{name}`")]
    UnknownTool { name: String, known: Vec<String> },
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
    /// `--index-url` / `--extra-index-url` a recipe variant needs (torch CPU/CUDA wheels).
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    /// `[setup].run` commands, one build step each.
    pub run: Vec<String>,
}

pub fn expand(env: &EnvFile, project_dir: &std::path::Path) -> Result<Inputs, RecipeError> {
    let _ = (env, project_dir);
    Ok(Inputs::default())
}
