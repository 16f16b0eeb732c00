//! Manifest, index and image-config documents (OCI and Docker schema 2), and platform selection.
//!
//! Parsing is tolerant of fields we do not use (registries and build tools add their own) but
//! strict about the ones we do: every digest is a checked [`Digest`], so nothing read here can
//! name a store path that was not validated. Parsing never touches the network.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::RegistryError;
use crate::platform::Platform;
use crate::reference::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest type we ask for, most preferred first (the `Accept` header).
pub const ACCEPTED: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// A content descriptor: what a manifest or index says about a blob or a child manifest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub urls: Vec<String>,
}

/// A single-platform image: its config blob and its layers, base first.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index or a Docker manifest list: one manifest per platform.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The image config blob: what the runtime needs from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
}

/// The `config` object of an image config; every field may be absent or null.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(rename = "User", default, deserialize_with = "null_default")]
    pub user: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// Docker writes `"Cmd": null`; treat null like absent.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A parsed manifest: an index to pick a platform from, or an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Index(Index),
    Image(ImageManifest),
}

/// The media type a manifest body is, when the `Content-Type` was generic (`application/json`,
/// absent): its own `mediaType` field, else `manifests` means an index and `layers` an image.
/// `None` when the body says nothing we recognise.
pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u64>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
        #[serde(default, rename = "fsLayers")]
        fs_layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = probe.media_type {
        return Some(mt);
    }
    if probe.schema_version == Some(1) || probe.fs_layers.is_some() {
        return Some("application/vnd.docker.distribution.manifest.v1+json".into());
    }
    match (probe.manifests.is_some(), probe.layers.is_some()) {
        (true, false) => Some(OCI_INDEX.into()),
        (false, true) => Some(OCI_MANIFEST.into()),
        _ => None,
    }
}

/// Whether a `Content-Type` says nothing about which manifest it is.
pub fn is_generic_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "" | "application/json" | "text/plain" | "application/octet-stream"
    )
}

/// `application/json; charset=utf-8` → `application/json`.
pub fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parse a manifest body served as `media_type` (sniffing the body when that is generic).
pub fn parse_manifest(media_type: &str, bytes: &[u8]) -> Result<ManifestKind, RegistryError> {
    let declared = bare_media_type(media_type);
    let media_type = if is_generic_media_type(declared) {
        sniff_media_type(bytes).unwrap_or_else(|| declared.to_string())
    } else {
        declared.to_string()
    };
    let invalid = |e: serde_json::Error| RegistryError::InvalidDocument {
        what: media_type.clone(),
        message: e.to_string(),
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index(
            serde_json::from_slice(bytes).map_err(invalid)?,
        )),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(ManifestKind::Image(
            serde_json::from_slice(bytes).map_err(invalid)?,
        )),
        _ => Err(RegistryError::UnsupportedMediaType {
            media_type: media_type.clone(),
        }),
    }
}

/// Parse an image config blob.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::InvalidDocument {
        what: "image config".into(),
        message: e.to_string(),
    })
}

/// The index entry serving `wanted`. Entries for `unknown/unknown` (build attestations) and
/// entries without a platform are never chosen. An exact variant match wins over an entry that
/// omits the variant.
pub fn select_platform<'a>(
    index: &'a Index,
    wanted: &Platform,
) -> Result<&'a Descriptor, RegistryError> {
    let candidates = || {
        index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| (d, p)))
            .filter(|(_, p)| !(p.os == "unknown" && p.architecture == "unknown"))
    };
    let exact = candidates().find(|(_, p)| {
        p.os == wanted.os && p.architecture == wanted.architecture && p.variant == wanted.variant
    });
    if let Some((d, _)) = exact.or_else(|| candidates().find(|(_, p)| wanted.matches(p))) {
        return Ok(d);
    }
    let mut available: Vec<String> = candidates().map(|(_, p)| p.to_string()).collect();
    available.dedup();
    Err(RegistryError::PlatformMissing {
        wanted: wanted.clone(),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn oci_image() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7023}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":32654,"x-vendor":1}},
                      {{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":16724}}],
            "annotations":{{"org.opencontainers.image.created":"2024-01-01"}}}}"#,
            hex('a'),
            hex('b'),
            hex('c')
        )
    }

    fn index_json(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}},
                "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#,
            hex('1'),
            hex('2'),
            hex('3'),
            hex('4'),
            hex('5')
        )
    }

    #[test]
    fn parses_oci_image_manifest() {
        let m = parse_manifest(OCI_MANIFEST, oci_image().as_bytes()).unwrap();
        let ManifestKind::Image(m) = m else {
            panic!("not an image: {m:?}")
        };
        assert_eq!(m.config.digest.as_str(), hex('a'));
        assert_eq!(m.layers.len(), 2);
        assert_eq!(m.layers[1].size, 16724);
        assert_eq!(
            m.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }

    #[test]
    fn parses_docker_schema2_and_manifest_list() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"{}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2,"digest":"{}"}}]}}"#,
            hex('d'),
            hex('e')
        );
        assert!(matches!(
            parse_manifest(DOCKER_MANIFEST, body.as_bytes()),
            Ok(ManifestKind::Image(m)) if m.layers[0].digest.as_str() == hex('e')
        ));
        let list = index_json(DOCKER_MANIFEST_LIST);
        assert!(matches!(
            parse_manifest(DOCKER_MANIFEST_LIST, list.as_bytes()),
            Ok(ManifestKind::Index(i)) if i.manifests.len() == 5
        ));
    }

    #[test]
    fn generic_content_type_is_sniffed() {
        let image = oci_image();
        assert!(matches!(
            parse_manifest("application/json; charset=utf-8", image.as_bytes()),
            Ok(ManifestKind::Image(_))
        ));
        // No mediaType field: `manifests` means an index, `layers` an image.
        let bare_index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":3}}]}}"#,
            hex('f')
        );
        assert!(matches!(
            parse_manifest("", bare_index.as_bytes()),
            Ok(ManifestKind::Index(_))
        ));
        let bare_image = image.replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        assert_eq!(
            sniff_media_type(bare_image.as_bytes()).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert!(matches!(
            parse_manifest("text/plain", bare_image.as_bytes()),
            Ok(ManifestKind::Image(_))
        ));
    }

    #[test]
    fn schema1_and_unknown_types_are_refused() {
        let schema1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest("application/json", schema1.as_bytes()),
            Err(RegistryError::UnsupportedMediaType { media_type }) if media_type.contains("v1")
        ));
        assert!(matches!(
            parse_manifest(
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                b"{}"
            ),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn bad_digests_and_bad_json_are_errors() {
        let bad = oci_image().replace(&hex('b'), "sha256:../../etc/passwd");
        assert!(matches!(
            parse_manifest(OCI_MANIFEST, bad.as_bytes()),
            Err(RegistryError::InvalidDocument { .. })
        ));
        assert!(matches!(
            parse_manifest(OCI_MANIFEST, b"{not json"),
            Err(RegistryError::InvalidDocument { .. })
        ));
    }

    #[test]
    fn parses_image_config_with_nulls() {
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"x",
              "config":{{"Env":["PATH=/usr/bin"],"Cmd":null,"Entrypoint":["/bin/sh","-c"],"WorkingDir":"/app","User":"1000","Labels":{{"a":"b"}}}},
              "rootfs":{{"type":"layers","diff_ids":["{}","{}"]}},"history":[]}}"#,
            hex('1'),
            hex('2')
        );
        let c = parse_config(cfg.as_bytes()).unwrap();
        assert_eq!(c.config.env, ["PATH=/usr/bin"]);
        assert!(c.config.cmd.is_empty());
        assert_eq!(c.config.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(
            (c.config.working_dir.as_str(), c.config.user.as_str()),
            ("/app", "1000")
        );
        assert_eq!(c.rootfs.diff_ids.len(), 2);
        // A config with no `config` object at all (scratch images) is fine.
        let minimal = format!(
            r#"{{"os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            hex('3')
        );
        assert_eq!(
            parse_config(minimal.as_bytes()).unwrap().config,
            RunConfig::default()
        );
    }

    #[test]
    fn selects_platforms() {
        let ManifestKind::Index(index) =
            parse_manifest(OCI_INDEX, index_json(OCI_INDEX).as_bytes()).unwrap()
        else {
            panic!("not an index")
        };
        let pick =
            |p: &str| select_platform(&index, &p.parse().unwrap()).map(|d| d.digest.to_string());
        assert_eq!(pick("linux/amd64").unwrap(), hex('1'));
        // The exact variant wins over an entry that omits it; no variant takes the first match.
        assert_eq!(pick("linux/arm64/v8").unwrap(), hex('3'));
        assert_eq!(pick("linux/arm64").unwrap(), hex('2'));
        assert_eq!(pick("linux/arm/v7").unwrap(), hex('4'));
        match pick("linux/s390x") {
            Err(RegistryError::PlatformMissing { wanted, available }) => {
                assert_eq!(wanted.to_string(), "linux/s390x");
                assert_eq!(
                    available,
                    [
                        "linux/amd64",
                        "linux/arm64",
                        "linux/arm64/v8",
                        "linux/arm/v7"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        // The attestation entry is never chosen, even when asked for by name.
        assert!(pick("unknown/unknown").is_err());
        assert!(pick("linux/arm/v6").is_err());
    }
}
