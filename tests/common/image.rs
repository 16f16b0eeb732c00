//! Images built byte by byte, so tests control every header: layers from a small description
//! (files, dirs, links, whiteouts, opaque markers, and raw entries with hostile names), each
//! compressed as gzip, zstd or not at all, then a config and an OCI or Docker schema 2
//! manifest, optionally an index over several platforms. The tar writer is our own: library
//! builders refuse `..` and absolute names, which are exactly what hostile layers need.

use std::io::Write;

use sha2::{Digest as _, Sha256};

pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// One tar header plus data, written as given: the name and link name are raw bytes (PAX
/// records are added when they exceed the ustar fields).
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: Vec<u8>,
    /// The ustar type flag: b'0' file, b'1' hardlink, b'2' symlink, b'3' char, b'4' block,
    /// b'5' dir, b'6' fifo.
    pub kind: u8,
    pub link: Vec<u8>,
    pub mode: u32,
    pub data: Vec<u8>,
    pub uid: u64,
    pub gid: u64,
    pub devmajor: u32,
    pub devminor: u32,
}

impl RawEntry {
    pub fn new(name: impl AsRef<[u8]>, kind: u8) -> RawEntry {
        RawEntry {
            name: name.as_ref().to_vec(),
            kind,
            link: Vec::new(),
            mode: if kind == b'5' { 0o755 } else { 0o644 },
            data: Vec::new(),
            uid: 0,
            gid: 0,
            devmajor: 0,
            devminor: 0,
        }
    }
    pub fn link(mut self, target: impl AsRef<[u8]>) -> RawEntry {
        self.link = target.as_ref().to_vec();
        self
    }
    pub fn data(mut self, data: impl AsRef<[u8]>) -> RawEntry {
        self.data = data.as_ref().to_vec();
        self
    }
    pub fn mode(mut self, mode: u32) -> RawEntry {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> RawEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn device(mut self, major: u32, minor: u32) -> RawEntry {
        self.devmajor = major;
        self.devminor = minor;
        self
    }
}

/// A layer as a list of tar entries, in order.
#[derive(Clone, Debug)]
pub struct Layer {
    pub entries: Vec<RawEntry>,
    pub compression: Compression,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            entries: Vec::new(),
            compression: Compression::Gzip,
        }
    }
    pub fn compression(mut self, c: Compression) -> Layer {
        self.compression = c;
        self
    }
    pub fn file(self, path: &str, data: impl AsRef<[u8]>, mode: u32) -> Layer {
        self.raw(RawEntry::new(path, b'0').data(data).mode(mode))
    }
    pub fn dir(self, path: &str, mode: u32) -> Layer {
        let name = format!("{}/", path.trim_end_matches('/'));
        self.raw(RawEntry::new(name, b'5').mode(mode))
    }
    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.raw(RawEntry::new(path, b'2').link(target).mode(0o777))
    }
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.raw(RawEntry::new(path, b'1').link(target))
    }
    /// An OCI whiteout hiding `path` of the layers below: the empty file `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.raw(RawEntry::new(format!("{dir}.wh.{name}"), b'0'))
    }
    /// Marks `dir` opaque: the empty file `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Layer {
        let dir = dir.trim_end_matches('/');
        self.raw(RawEntry::new(format!("{dir}/.wh..wh..opq"), b'0'))
    }
    pub fn raw(mut self, e: RawEntry) -> Layer {
        self.entries.push(e);
        self
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            write_entry(&mut out, e, i);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    pub fn build(&self, format: Format) -> BuiltLayer {
        let tar = self.tar();
        let blob = compress(&tar, self.compression);
        let media_type = layer_media_type(format, self.compression);
        BuiltLayer {
            digest: sha256(&blob),
            diff_id: sha256(&tar),
            blob,
            tar,
            media_type,
        }
    }
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

fn layer_media_type(format: Format, c: Compression) -> &'static str {
    match (format, c) {
        (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
        (Format::Docker, Compression::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        (Format::Docker, Compression::Zstd) => {
            panic!("docker schema 2 has no zstd layer media type; build zstd layers as OCI")
        }
    }
}

/// Writes one entry: a PAX extended header first when the name or link does not fit ustar,
/// then the ustar header, then the data padded to 512 bytes.
fn write_entry(out: &mut Vec<u8>, e: &RawEntry, index: usize) {
    let mut pax = Vec::new();
    if e.name.len() > 100 {
        pax_record(&mut pax, "path", &e.name);
    }
    if e.link.len() > 100 {
        pax_record(&mut pax, "linkpath", &e.link);
    }
    if !pax.is_empty() {
        let name = format!("PaxHeaders.0/entry{index}");
        write_header(
            out,
            name.as_bytes(),
            b'x',
            b"",
            0o644,
            pax.len() as u64,
            0,
            0,
            0,
            0,
        );
        write_data(out, &pax);
    }
    let name = truncated(&e.name, 100);
    let link = truncated(&e.link, 100);
    let size = if matches!(e.kind, b'0' | b'7' | 0) {
        e.data.len() as u64
    } else {
        0
    };
    write_header(
        out, name, e.kind, link, e.mode, size, e.uid, e.gid, e.devmajor, e.devminor,
    );
    if size > 0 {
        write_data(out, &e.data);
    }
}

fn truncated(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // "<len> <key>=<value>\n", where len counts itself.
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[allow(clippy::too_many_arguments)]
fn write_header(
    out: &mut Vec<u8>,
    name: &[u8],
    kind: u8,
    link: &[u8],
    mode: u32,
    size: u64,
    uid: u64,
    gid: u64,
    devmajor: u32,
    devminor: u32,
) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], uid);
    octal(&mut h[116..124], gid);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], devmajor as u64);
    octal(&mut h[337..345], devminor as u64);
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    assert_eq!(s.len(), field.len(), "value {v} too large for a tar field");
    field.copy_from_slice(s.as_bytes());
}

fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The compressed blob as served.
    pub blob: Vec<u8>,
    /// `sha256:` of the blob.
    pub digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    pub tar: Vec<u8>,
    pub media_type: &'static str,
}

/// An image description: platform, layers (bottom first), Env and Cmd, and the manifest
/// format.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub layers: Vec<Layer>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub format: Format,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// An OCI image for the host's platform, with no layers yet.
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            os: "linux".into(),
            architecture: super::host_arch().into(),
            variant: None,
            layers: Vec::new(),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            format: Format::Oci,
        }
    }
    pub fn layer(mut self, l: Layer) -> ImageBuilder {
        self.layers.push(l);
        self
    }
    pub fn format(mut self, f: Format) -> ImageBuilder {
        self.format = f;
        self
    }
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> ImageBuilder {
        self.os = os.into();
        self.architecture = arch.into();
        self.variant = variant.map(Into::into);
        self
    }
    pub fn env(mut self, kv: &str) -> ImageBuilder {
        self.env.push(kv.into());
        self
    }

    pub fn build(&self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self.layers.iter().map(|l| l.build(self.format)).collect();
        let mut config = serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": { "Env": self.env, "Cmd": self.cmd },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| serde_json::json!({"created_by": "devenv tests"}))
                .collect::<Vec<_>>(),
        });
        if let Some(v) = &self.variant {
            config["variant"] = v.clone().into();
        }
        let config = serde_json::to_vec(&config).unwrap();
        let (manifest_media_type, config_media_type) = match self.format {
            Format::Oci => (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            ),
            Format::Docker => (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            ),
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_media_type,
            "config": {
                "mediaType": config_media_type,
                "digest": sha256(&config),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        BuiltImage {
            manifest_digest: sha256(&manifest),
            manifest,
            manifest_media_type,
            config_digest: sha256(&config),
            config,
            layers,
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: &'static str,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl BuiltImage {
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: &'static str,
    pub images: Vec<BuiltImage>,
}

/// An OCI index (or Docker manifest list, by `format`) over `images`, in order.
pub fn index(format: Format, images: Vec<BuiltImage>) -> BuiltIndex {
    let media_type = match format {
        Format::Oci => "application/vnd.oci.image.index.v1+json",
        Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
    };
    let manifests: Vec<_> = images
        .iter()
        .map(|i| {
            let mut platform = serde_json::json!({ "os": i.os, "architecture": i.architecture });
            if let Some(v) = &i.variant {
                platform["variant"] = v.clone().into();
            }
            serde_json::json!({
                "mediaType": i.manifest_media_type,
                "digest": i.manifest_digest,
                "size": i.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let bytes = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    }))
    .unwrap();
    BuiltIndex {
        digest: sha256(&bytes),
        bytes,
        media_type,
        images,
    }
}
