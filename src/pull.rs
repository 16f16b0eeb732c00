//! Pull: registry → store. Resolve the reference, pick the platform, fetch and verify the
//! manifest and config, then stream each missing layer once through sha256, decompression and
//! the tar applier, committing blob and layer by rename.
