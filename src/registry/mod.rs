//! The distribution client: ping, auth (anonymous, bearer, basic), manifests, blobs, retries.
//! STUB — replaced by the registry work (see the helper brief).

pub mod manifest;

use std::io::Read;

use crate::reference::{Digest, ImageRef};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("{image}: not found in the registry")]
    NotFound { image: String },
}

impl crate::error::Hint for RegistryError {
    fn hint(&self) -> Option<String> {
        None
    }
}

/// User settings from `$XDG_CONFIG_HOME/devenv/config.toml`.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub insecure: Vec<String>,
}

impl Settings {
    pub fn load() -> Result<Settings, RegistryError> {
        Ok(Settings::default())
    }
}

pub struct Client {
    _settings: Settings,
}

pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

impl Client {
    pub fn new(settings: Settings) -> Result<Client, RegistryError> {
        Ok(Client {
            _settings: settings,
        })
    }

    pub fn fetch_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<Fetched, RegistryError> {
        let _ = reference;
        Err(RegistryError::NotFound {
            image: image.to_string(),
        })
    }

    pub fn fetch_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let _ = (digest, max);
        Err(RegistryError::NotFound {
            image: image.to_string(),
        })
    }

    pub fn open_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, RegistryError> {
        let _ = (digest, size);
        Err(RegistryError::NotFound {
            image: image.to_string(),
        })
    }
}
