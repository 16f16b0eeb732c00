//! env.lock: everything needed to rebuild the same env, sorted and stable.
//! STUB — being written (see the lock brief); the types below are the interface.

use crate::reference::Digest;

/// The whole lock file. Same inputs → byte-identical file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    pub image: ImageLock,
    pub python: PythonLock,
    pub apt: AptLock,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageLock {
    /// The reference env.toml names, as written there.
    pub reference: String,
    /// Platform (`linux/amd64`) → the image manifest digest for it.
    pub platforms: std::collections::BTreeMap<String, Digest>,
}

/// Every Python distribution, transitive dependencies included, resolved inside the base image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonLock {
    /// Hash of what this part was resolved from (requirements, base manifest): a mismatch means
    /// only this part needs resolving again.
    pub inputs: Option<Digest>,
    pub packages: Vec<PythonPackage>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PythonPackage {
    /// Normalized (PEP 503) name.
    pub name: String,
    pub version: String,
    /// The exact file (wheel or sdist) to install.
    pub url: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AptLock {
    pub inputs: Option<Digest>,
    pub packages: Vec<AptPackage>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AptPackage {
    pub name: String,
    pub version: String,
}
