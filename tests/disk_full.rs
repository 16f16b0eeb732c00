//! A full disk: the pull fails with the cause and a hint, exit 1, and nothing half-written is
//! left under a final name in the store. The store is a tiny tmpfs mounted over the test's
//! store directory, which needs root: run through `scripts/test` as root (CI does).

#[allow(unused)]
mod common;

use std::process::Command;

use common::image::{Compression, ImageBuilder, Layer};
use common::registry::Client;
use common::{TestHome, devenv, is_root, noise, run, runner_ids, unique};

/// A tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let (uid, gid) = runner_ids();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},uid={uid},gid={gid},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn pull_into_a_full_disk_fails_with_a_hint_and_leaves_nothing_trusted() {
    assert!(
        is_root(),
        "this test mounts a tmpfs as the store and needs root: run it through scripts/test as root"
    );
    let home = TestHome::new();
    let store = home.store();
    fs_err::create_dir_all(&store).unwrap();
    let _fs = Tmpfs::mount(&store, "1m");

    // 4 MiB of incompressible content cannot fit into 1 MiB.
    let image = ImageBuilder::new()
        .layer(
            Layer::new()
                .compression(Compression::None)
                .dir("data", 0o755)
                .file("data/big", noise(4 << 20, 7), 0o644),
        )
        .build();
    let reference = Client::shared().push(&unique("diskfull"), "1", &image);

    let out = run(devenv(&home).args(["pull", &reference]));
    out.failure(&["no space left", "hint:", "disk is full"]);
    assert!(
        home.store_entries()
            .iter()
            .all(|e| !e.starts_with("layers/")),
        "a layer entered the store: {:?}",
        home.store_entries()
    );
    let layer_blob = format!(
        "blobs/sha256/{}",
        image.layers[0].digest.trim_start_matches("sha256:")
    );
    assert!(
        !home.store_entries().contains(&layer_blob),
        "the layer blob entered the store"
    );
}
