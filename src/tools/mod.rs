//! What `lock` and `build` both need, below both so that neither imports the other: the tool
//! recipes (`templates/tools/`, expanded from env.toml), the user's Python package indexes, the
//! pinned uv (fetched from the user's index once per store, verified by sha256), and
//! downloading a file whose sha256 is known into the store's wheel cache.
//!
//! Depends on `config`, `store` and the registry's HTTP transport (proxies, TLS roots) only;
//! never on `lock` or `build`.

pub mod fetch;
pub mod index;
pub mod recipe;
pub mod uv;
