//! STUB manifest types (replaced by the registry work).
use crate::platform::Platform;
use crate::reference::Digest;

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

pub enum ManifestKind {
    Index(Index),
    Image(ImageManifest),
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<Digest>,
}

pub fn parse_manifest(
    _media_type: &str,
    bytes: &[u8],
) -> Result<ManifestKind, super::RegistryError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| super::RegistryError::NotFound {
            image: String::new(),
        })?;
    if v.get("manifests").is_some() {
        Ok(ManifestKind::Index(serde_json::from_value(v).map_err(
            |_| super::RegistryError::NotFound {
                image: String::new(),
            },
        )?))
    } else {
        Ok(ManifestKind::Image(serde_json::from_value(v).map_err(
            |_| super::RegistryError::NotFound {
                image: String::new(),
            },
        )?))
    }
}

pub fn select_platform<'a>(
    index: &'a Index,
    platform: &Platform,
) -> Result<&'a Descriptor, super::RegistryError> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .ok_or(super::RegistryError::NotFound {
            image: String::new(),
        })
}
