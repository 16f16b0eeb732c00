use std::io::Read;
use std::path::Path;

use super::*;

/// A tool layer as the build leaves one: files, a hardlink pair, a symlink, a whiteout (0/0
/// character device) and an opaque directory.
fn sample_layer(root: &Path) {
    fs_err::create_dir_all(root.join("opt/tool")).unwrap();
    fs_err::write(root.join("opt/marker"), "hi\n").unwrap();
    fs_err::write(root.join("opt/tool/a"), "same inode").unwrap();
    fs_err::hard_link(root.join("opt/tool/a"), root.join("opt/tool/b")).unwrap();
    fs_err::hard_link(root.join("opt/tool/a"), root.join("opt/0first")).unwrap();
    std::os::unix::fs::symlink("marker", root.join("opt/link")).unwrap();
    fs_err::set_permissions(
        root.join("opt/marker"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs_err::create_dir(root.join("etc")).unwrap();
    nix::sys::stat::mknod(
        &root.join("etc/os-release"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .expect("mknod of a 0/0 whiteout (Linux 5.8+)");
    fs_err::create_dir(root.join("var")).unwrap();
    xattr::set(root.join("var"), OPAQUE_XATTR, b"y").expect("user xattrs on the temp dir");
    // Every entry's mtime, the symlink's and the whiteout's too: trees made a second apart must
    // export alike.
    for p in [
        "opt/marker",
        "opt/tool/a",
        "opt/link",
        "etc/os-release",
        "opt",
        "opt/tool",
        "etc",
        "var",
        "",
    ] {
        set_mtime(&root.join(p), 1_700_000_000);
    }
}

use std::os::unix::fs::PermissionsExt;

fn set_mtime(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// (path, type, mode, uid, gid, size, link target) of a tar entry.
type Row = (String, tar::EntryType, u32, u64, u64, u64, Option<String>);

/// Each entry of a gzip'd tar.
fn entries(gz: &[u8]) -> Vec<Row> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    tar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.size().unwrap(),
                e.link_name().unwrap().map(|l| l.display().to_string()),
            )
        })
        .collect()
}

#[test]
fn whiteouts_opaque_dirs_and_hardlinks_become_oci_entries() {
    let tmp = tempfile::tempdir().unwrap();
    sample_layer(tmp.path());
    let mut gz = Vec::new();
    let written = layer_tar_gz(tmp.path(), &mut gz).unwrap();
    let got = entries(&gz);
    let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "etc/",
            "etc/.wh.os-release",
            "opt/",
            "opt/0first",
            "opt/link",
            "opt/marker",
            "opt/tool/",
            "opt/tool/a",
            "opt/tool/b",
            "var/",
            "var/.wh..wh..opq",
        ]
    );
    let by = |n: &str| got.iter().find(|e| e.0 == n).unwrap().clone();
    // the whiteout is an empty regular file, not a device
    assert_eq!(by("etc/.wh.os-release").1, tar::EntryType::Regular);
    assert_eq!(by("etc/.wh.os-release").5, 0);
    assert_eq!(by("var/.wh..wh..opq").1, tar::EntryType::Regular);
    // the first name of the inode (by path) carries the data, the others link to it
    assert_eq!(by("opt/0first").1, tar::EntryType::Regular);
    assert_eq!(by("opt/0first").5, 10);
    assert_eq!(by("opt/tool/a").1, tar::EntryType::Link);
    assert_eq!(by("opt/tool/a").6.as_deref(), Some("opt/0first"));
    assert_eq!(by("opt/tool/b").6.as_deref(), Some("opt/0first"));
    assert_eq!(by("opt/link").1, tar::EntryType::Symlink);
    assert_eq!(by("opt/link").6.as_deref(), Some("marker"));
    assert_eq!(by("opt/marker").2, 0o640);
    assert!(
        got.iter().all(|e| e.3 == 0 && e.4 == 0),
        "owner 0:0: {got:?}"
    );

    // digest is of the gzip bytes, diff_id of the tar inside
    assert_eq!(written.digest, Digest::of(&gz));
    assert_eq!(written.size, gz.len() as u64);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(written.diff_id, Digest::of(&raw));
    // the gzip header carries no time and no name
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime");
    assert_eq!(gz[3] & 0x08, 0, "FNAME flag");
}

#[test]
fn stored_mtimes_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    sample_layer(tmp.path());
    let mut gz = Vec::new();
    layer_tar_gz(tmp.path(), &mut gz).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap() == Path::new("opt/marker") {
            assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
            return;
        }
    }
    panic!("no opt/marker");
}

#[test]
fn the_same_tree_exports_to_identical_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // same tree, created in a different order (different inode numbers and readdir order)
    sample_layer(a.path());
    fs_err::create_dir(b.path().join("var")).unwrap();
    fs_err::create_dir(b.path().join("zz")).unwrap();
    fs_err::remove_dir(b.path().join("zz")).unwrap();
    fs_err::remove_dir(b.path().join("var")).unwrap();
    sample_layer(b.path());
    let blobs = tempfile::tempdir().unwrap();
    let one = write_tool_layer(a.path(), blobs.path(), &crate::progress::Silent, "a").unwrap();
    let again = write_tool_layer(a.path(), blobs.path(), &crate::progress::Silent, "a").unwrap();
    let two = write_tool_layer(b.path(), blobs.path(), &crate::progress::Silent, "b").unwrap();
    assert_eq!(one, again);
    assert_eq!(one, two);
    assert!(blobs.path().join(two.digest.hex()).is_file());
}

#[test]
fn a_changed_tree_gives_another_digest() {
    let tmp = tempfile::tempdir().unwrap();
    sample_layer(tmp.path());
    let mut first = Vec::new();
    let a = layer_tar_gz(tmp.path(), &mut first).unwrap();
    fs_err::write(tmp.path().join("opt/marker"), "ho\n").unwrap();
    set_mtime(&tmp.path().join("opt/marker"), 1_700_000_000);
    let mut second = Vec::new();
    let b = layer_tar_gz(tmp.path(), &mut second).unwrap();
    assert_ne!(a.diff_id, b.diff_id);
}

#[test]
fn docker_layer_types_become_oci_ones() {
    assert_eq!(
        oci_layer_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        LAYER_MEDIA_TYPE
    );
    assert_eq!(
        oci_layer_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        oci_layer_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    );
}

fn digest(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

#[test]
fn config_gets_diff_ids_env_and_history_and_keeps_unknown_fields() {
    let base = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin", "HOST=x"], "Cmd": ["sh"], "Labels": {"a": "b"}},
        "rootfs": {"type": "layers", "diff_ids": [digest("base").as_str()]},
        "history": [{"created_by": "base step"}],
        "x-unknown": {"kept": true},
    });
    let env = vec![
        ("PATH".to_string(), "/opt/devenv/venv/bin:/bin".to_string()),
        ("TF".to_string(), "2".to_string()),
    ];
    let bytes = edit_config(
        base.to_string().as_bytes(),
        &[digest("t1"), digest("t2")],
        &env,
        &["devenv: run `a`", "devenv: run `b`"],
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        v["rootfs"]["diff_ids"],
        json!([
            digest("base").as_str(),
            digest("t1").as_str(),
            digest("t2").as_str()
        ])
    );
    assert_eq!(
        v["config"]["Env"],
        json!(["PATH=/opt/devenv/venv/bin:/bin", "TF=2"])
    );
    assert_eq!(v["config"]["Cmd"], json!(["sh"]));
    assert_eq!(v["config"]["Labels"], json!({"a": "b"}));
    assert_eq!(v["x-unknown"], json!({"kept": true}));
    assert_eq!(v["created"], json!("2024-01-01T00:00:00Z"));
    let h = v["history"].as_array().unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[1]["created_by"], json!("devenv: run `a`"));
    assert_eq!(h[2]["created"], json!("2024-01-01T00:00:00Z"));
    // stable bytes
    let again = edit_config(
        base.to_string().as_bytes(),
        &[digest("t1"), digest("t2")],
        &env,
        &["devenv: run `a`", "devenv: run `b`"],
    )
    .unwrap();
    assert_eq!(bytes, again);
}

#[test]
fn config_without_config_or_history_gets_them() {
    let base = br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]},"config":null}"#;
    let bytes = edit_config(
        base,
        &[digest("t")],
        &[("A".into(), "1".into())],
        &["devenv: x"],
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["config"]["Env"], json!(["A=1"]));
    assert_eq!(v["history"][0]["created_by"], json!("devenv: x"));
    assert!(v["history"][0].get("created").is_none());
    assert!(edit_config(b"[1]", &[], &[], &[]).is_none());
    assert!(edit_config(b"not json", &[], &[], &[]).is_none());
}

#[test]
fn manifest_and_index_have_the_oci_shape() {
    let layers =
        vec![json!({"mediaType": LAYER_MEDIA_TYPE, "digest": digest("l").as_str(), "size": 3})];
    let m: Value = serde_json::from_slice(&image_manifest(&digest("c"), 42, &layers)).unwrap();
    assert_eq!(m["schemaVersion"], json!(2));
    assert_eq!(m["mediaType"], json!(MANIFEST_MEDIA_TYPE));
    assert_eq!(m["config"]["mediaType"], json!(CONFIG_MEDIA_TYPE));
    assert_eq!(m["config"]["size"], json!(42));
    assert_eq!(m["config"]["digest"], json!(digest("c").as_str()));
    assert_eq!(m["layers"], json!(layers));
    let i: Value = serde_json::from_slice(&image_index(&digest("m"), 7, "v1")).unwrap();
    assert_eq!(i["schemaVersion"], json!(2));
    assert_eq!(i["manifests"][0]["mediaType"], json!(MANIFEST_MEDIA_TYPE));
    assert_eq!(i["manifests"][0]["size"], json!(7));
    assert_eq!(i["manifests"][0]["annotations"][REF_NAME], json!("v1"));
}

#[test]
fn tags_are_checked() {
    assert!(check_tag("latest").is_ok());
    assert!(check_tag("v1.2-rc_3").is_ok());
    assert!(check_tag("").is_err());
    assert!(check_tag("a b").is_err());
    assert!(check_tag("a\nb").is_err());
}

/// A store holding a one-layer base image, for whole exports.
fn store_with_base(root: &Path) -> (Store, Digest) {
    let store = Store::open(root.join("store")).unwrap();
    let layer = b"pretend gzip bytes".to_vec();
    let layer_digest = Digest::of(&layer);
    store.put_blob(&layer_digest, &layer).unwrap();
    let config = json!({
        "os": "linux", "architecture": "amd64",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest("diff").as_str()]},
    })
    .to_string();
    let config_digest = Digest::of(config.as_bytes());
    store.put_blob(&config_digest, config.as_bytes()).unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer_digest.as_str(), "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = Digest::of(manifest.as_bytes());
    store
        .put_manifest(&manifest_digest, manifest.as_bytes())
        .unwrap();
    (store, manifest_digest)
}

#[test]
fn export_writes_a_layout_refuses_a_full_path_and_replaces_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, base) = store_with_base(tmp.path());
    let tool = tmp.path().join("tool");
    fs_err::create_dir(&tool).unwrap();
    sample_layer(&tool);
    let tools = [ToolLayer {
        dir: tool.clone(),
        created_by: "devenv: run `echo`".into(),
    }];
    let env = [("PATH".to_string(), "/bin".to_string())];
    let mut opts = ExportOptions {
        base_manifest: &base,
        tools: &tools,
        meta: &Meta {
            env: env.to_vec(),
            ..Meta::default()
        },
        tag: "latest",
        format: Format::Layout,
        force: false,
    };
    let out = tmp.path().join("out");
    let first = export(&store, &opts, &out, &crate::progress::Silent).unwrap();
    assert_eq!(first.layers, 2);
    let index: Value =
        serde_json::from_slice(&fs_err::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        json!(first.manifest.as_str())
    );
    let m: Value = serde_json::from_slice(
        &fs_err::read(out.join("blobs/sha256").join(first.manifest.hex())).unwrap(),
    )
    .unwrap();
    assert_eq!(m["layers"][0]["mediaType"], json!(LAYER_MEDIA_TYPE));
    assert_eq!(
        m["layers"][0]["digest"],
        json!(Digest::of(b"pretend gzip bytes").as_str())
    );
    // every blob is named by its content's digest
    for e in fs_err::read_dir(out.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let bytes = fs_err::read(e.path()).unwrap();
        assert_eq!(Digest::of(&bytes).hex(), e.file_name().to_str().unwrap());
    }
    assert_eq!(
        fs_err::read_to_string(out.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );

    let err = export(&store, &opts, &out, &crate::progress::Silent).unwrap_err();
    assert!(matches!(err, ExportError::Exists { .. }), "{err}");
    opts.force = true;
    let again = export(&store, &opts, &out, &crate::progress::Silent).unwrap();
    assert_eq!(again.manifest, first.manifest, "two exports, same image");
    // no staging left beside the output
    let left: Vec<_> = fs_err::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    opts.format = Format::Archive;
    opts.force = false;
    let tar_path = tmp.path().join("image.tar");
    export(&store, &opts, &tar_path, &crate::progress::Silent).unwrap();
    let mut names: Vec<String> = tar::Archive::new(fs_err::File::open(&tar_path).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert!(names.contains(&"index.json".to_string()), "{names:?}");
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
    assert!(
        names.contains(&format!("blobs/sha256/{}", first.manifest.hex())),
        "{names:?}"
    );
}

#[test]
fn a_missing_base_blob_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, base) = store_with_base(tmp.path());
    fs_err::remove_file(store.blob_path(&Digest::of(b"pretend gzip bytes"))).unwrap();
    let opts = ExportOptions {
        base_manifest: &base,
        tools: &[],
        meta: &Meta::default(),
        tag: "latest",
        format: Format::Layout,
        force: false,
    };
    let out = tmp.path().join("out");
    let err = export(&store, &opts, &out, &crate::progress::Silent).unwrap_err();
    assert!(matches!(err, ExportError::NoBlob { .. }), "{err}");
    assert!(crate::error::Hint::hint(&err).is_some());
    assert!(!out.exists());
    let left = fs_err::read_dir(tmp.path()).unwrap().count();
    assert_eq!(left, 1, "only the store remains");
}

#[test]
fn long_names_and_link_targets_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = "d".repeat(60);
    let dir = tmp.path().join(&deep).join(&deep);
    fs_err::create_dir_all(&dir).unwrap();
    let name = format!("{}.txt", "f".repeat(120));
    fs_err::write(dir.join(&name), "long").unwrap();
    let target = format!("../{}/{}", deep, "t".repeat(150));
    std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
    fs_err::hard_link(dir.join(&name), dir.join("zz-hardlink")).unwrap();
    let mut gz = Vec::new();
    layer_tar_gz(tmp.path(), &mut gz).unwrap();
    let got = entries(&gz);
    let file = format!("{deep}/{deep}/{name}");
    assert!(
        got.iter()
            .any(|e| e.0 == file && e.1 == tar::EntryType::Regular && e.5 == 4),
        "{got:?}"
    );
    let link = got
        .iter()
        .find(|e| e.0 == format!("{deep}/{deep}/link"))
        .unwrap();
    assert_eq!(link.6.as_deref(), Some(target.as_str()));
    let hard = got
        .iter()
        .find(|e| e.0 == format!("{deep}/{deep}/zz-hardlink"))
        .unwrap();
    assert_eq!(hard.6.as_deref(), Some(file.as_str()));
}

#[test]
fn a_failed_replace_keeps_the_old_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs_err::create_dir(&out).unwrap();
    fs_err::write(out.join("old"), "old").unwrap();
    let staging = tmp.path().join("staging");
    fs_err::create_dir(&staging).unwrap();
    // the staged thing does not exist: the rename into place fails
    let err = replace(&staging.join("missing"), &out, &staging);
    assert!(err.is_err());
    assert_eq!(fs_err::read_to_string(out.join("old")).unwrap(), "old");
}

#[test]
fn a_real_file_named_like_a_whiteout_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs_err::create_dir(tmp.path().join("etc")).unwrap();
    fs_err::write(tmp.path().join("etc/.wh.passwd"), "x").unwrap();
    let err = layer_tar_gz(tmp.path(), Vec::new()).unwrap_err();
    assert!(err.to_string().contains(".wh."), "{err}");
}
