//! Tool layers: `[tools]`, `[packages]` and `[setup]` built into cached layers.
//! STUB — being written (see the build brief). `recipe` expands env.toml into steps.

pub mod recipe;
