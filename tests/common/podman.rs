//! Rootless podman as the test user, with the flags that work on these machines
//! (`--storage-driver overlay --cgroup-manager cgroupfs --events-backend file --runtime runc`),
//! its storage in a short directory of its own (podman refuses a long runroot), removed
//! through `podman unshare` (its files belong to subordinate ids).

use std::path::PathBuf;

use super::{Outcome, TestHome, as_user, run};

pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    pub fn new(home: &TestHome) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("dvp.")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        for d in ["run", "home"] {
            fs_err::create_dir_all(dir.join(d)).unwrap();
        }
        home.chown(&dir);
        Podman { dir }
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        let p = |d: &str| self.dir.join(d).to_str().unwrap().to_string();
        run(as_user("podman")
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .args(["--root", &p("root"), "--runroot", &p("runroot")])
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(["--events-backend", "file", "--runtime", "runc"])
            .args(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["pod", "rm", "-af"]);
        let root = self.dir.join("root");
        let _ = self.run(&["unshare", "rm", "-rf", root.to_str().unwrap()]);
        let _ = fs_err::remove_dir_all(&self.dir);
    }
}
