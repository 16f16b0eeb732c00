//! What `lock` and `build` both need, below both so that neither imports the other: the tool
//! recipes (`templates/tools/`, expanded from env.toml), the pinned uv (fetched from PyPI once
//! per store, verified by sha256), and downloading a file whose sha256 is known into the
//! store's wheel cache.
//!
//! Depends on `config` and `store` only; never on `lock` or `build`.

pub mod fetch;
pub mod recipe;
pub mod uv;
