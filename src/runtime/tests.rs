//! Real containers, started through the devenv binary (`cargo build` first, or set DEVENV_BIN)
//! on a busybox root (`apt-get install busybox-static`). They need unprivileged user namespaces
//! and overlay; where those are missing they fail with the runtime's own error and hint, never
//! skip. Run them as an unprivileged user too: root on the host proves less.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use super::{RuntimeError, Spec, run_with, test_binary as devenv_bin};
use crate::config::{Mount, Network};

/// One container test at a time: `run` installs process-wide signal handlers.
static SERIAL: Mutex<()> = Mutex::new(());

const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "id", "touch", "echo", "sleep", "ifconfig", "true", "false", "test",
    "mkdir", "rm", "kill", "pwd", "whoami", "hostname", "stat", "grep", "mount", "stty", "ps",
    "vi", "tty", "chown",
];

struct Fixture {
    _dir: tempfile::TempDir,
    spec: Spec,
    flatten: bool,
}

impl Fixture {
    fn new() -> Fixture {
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("busybox is missing: apt-get install busybox-static");
        let t = tempfile::tempdir().expect("tempdir");
        let base = t.path().join("layers/base");
        let top = t.path().join("layers/top");
        for d in ["bin", "etc", "usr/bin", "root"] {
            fs_err::create_dir_all(base.join(d)).unwrap();
        }
        fs_err::copy(busybox, base.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", base.join("bin").join(a)).unwrap();
        }
        fs_err::write(base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs_err::write(base.join("etc/group"), "root:x:0:\n").unwrap();
        fs_err::write(base.join("etc/os-release"), "ID=base\n").unwrap();
        fs_err::write(base.join("etc/removed"), "gone in top\n").unwrap();
        fs_err::create_dir_all(top.join("etc")).unwrap();
        fs_err::write(top.join("etc/os-release"), "ID=top\n").unwrap();
        // Linux 5.8+: a 0/0 character device (a whiteout) needs no privilege.
        nix::sys::stat::mknod(
            &top.join("etc/removed"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            0,
        )
        .expect("mknod of a whiteout");
        let project = t.path().join("project");
        fs_err::create_dir_all(project.join("sub")).unwrap();
        let home = t.path().join("home");
        fs_err::create_dir_all(&home).unwrap();
        let spec = Spec {
            lowers: vec![base, top],
            state_dir: t.path().join("state"),
            project_dir: project.clone(),
            cwd: project.join("sub"),
            home,
            home_target: "/home/tester".into(),
            env: vec![("PATH".into(), "/bin:/usr/bin".into())],
            argv: vec![],
            shell: None,
            hostname: "projname".into(),
            network: Network::Host,
            root: false,
            mounts: vec![],
            upper: None,
            output: None,
            gpu: None,
            sandbox: Default::default(),
            quiet: false,
            pod: None,
        };
        Fixture {
            _dir: t,
            spec,
            flatten: false,
        }
    }

    fn sh(&self, script: &str) -> i32 {
        let spec = Spec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..self.spec.clone()
        };
        self.run(&spec)
    }

    fn run(&self, spec: &Spec) -> i32 {
        match run_with(&devenv_bin(), spec, self.flatten, super::Teardown::Wait) {
            Ok(code) => code,
            Err(e) => panic!("{}", render(&e)),
        }
    }

    fn read(&self, name: &str) -> String {
        fs_err::read_to_string(self.spec.project_dir.join(name)).unwrap_or_default()
    }
}

fn render(e: &RuntimeError) -> String {
    use crate::error::Hint;
    format!("error: {e}\nhint: {}", e.hint().unwrap_or_default())
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn container_ids_files_and_layers() {
    let _g = lock();
    let f = Fixture::new();
    let script = "id -u > ids; id -g >> ids; whoami > who; touch created; pwd > cwd; \
                  cat /etc/os-release > osr; hostname > host; test -e /etc/removed; \
                  echo $? > removed; echo $HOME > home";
    assert_eq!(f.sh(script), 0);
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    assert_eq!(f.read("sub/ids"), format!("{uid}\n{gid}\n"));
    let meta = fs_err::metadata(f.spec.project_dir.join("sub/created")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid.as_raw(), gid.as_raw()));
    assert_eq!(f.read("sub/cwd"), format!("{}\n", f.spec.cwd.display()));
    assert_eq!(f.read("sub/osr"), "ID=top\n", "the top layer's file");
    assert_eq!(
        f.read("sub/removed"),
        "1\n",
        "the whiteout hides the base's file"
    );
    assert_eq!(f.read("sub/host"), "projname\n");
    assert_eq!(f.read("sub/home"), "/home/tester\n");
    let who = f.read("sub/who");
    assert!(!who.trim().is_empty(), "whoami found no passwd entry");
    if !uid.is_root() {
        let name = super::fsutil::passwd_lookup(
            &fs_err::read_to_string("/etc/passwd").unwrap(),
            uid.as_raw(),
        )
        .map(|(n, _)| n)
        .unwrap_or_default();
        assert_eq!(who.trim(), name);
    }
}

#[test]
fn container_exit_statuses() {
    let _g = lock();
    let f = Fixture::new();
    assert_eq!(f.sh("true"), 0);
    assert_eq!(f.sh("false"), 1);
    assert_eq!(f.sh("exit 42"), 42);
    assert_eq!(f.sh("kill -TERM $$"), 143);
    let cmd = |argv: &[&str]| Spec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..f.spec.clone()
    };
    assert_eq!(f.run(&cmd(&["no-such-command"])), 127);
    assert_eq!(f.run(&cmd(&["/etc/os-release"])), 126);
    assert_eq!(f.run(&cmd(&["/bin/busybox", "true"])), 0);
}

#[test]
fn container_system_dirs_reset_home_persists() {
    let _g = lock();
    let f = Fixture::new();
    assert_eq!(f.sh("touch /usr/marker && touch $HOME/kept"), 0);
    assert_eq!(
        f.sh("test -e /usr/marker"),
        1,
        "a write to /usr must not survive"
    );
    assert_eq!(f.sh("test -e $HOME/kept"), 0, "home persists");
    let run = f.spec.state_dir.join("run");
    let left: Vec<_> = fs_err::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["scratch.lock"],
        "entries cleaned, the shared lock kept"
    );
}

#[test]
fn container_root_maps_to_zero() {
    let _g = lock();
    let f = Fixture::new();
    let spec = Spec {
        root: true,
        argv: vec!["sh".into(), "-c".into(), "id -u > ids; touch byroot".into()],
        ..f.spec.clone()
    };
    assert_eq!(f.run(&spec), 0);
    assert_eq!(f.read("sub/ids"), "0\n");
    let meta = fs_err::metadata(f.spec.project_dir.join("sub/byroot")).unwrap();
    assert_eq!(
        meta.uid(),
        nix::unistd::getuid().as_raw(),
        "root inside is the user outside"
    );
}

#[test]
fn container_network_none_has_only_loopback_up() {
    let _g = lock();
    let f = Fixture::new();
    let spec = Spec {
        network: Network::None,
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /proc/net/dev > dev; ifconfig > up".into(),
        ],
        ..f.spec.clone()
    };
    assert_eq!(f.run(&spec), 0);
    let names: Vec<String> = f
        .read("sub/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    assert_eq!(names, ["lo"]);
    assert!(f.read("sub/up").starts_with("lo"), "{}", f.read("sub/up"));
}

#[test]
fn container_reaps_orphans() {
    let _g = lock();
    let f = Fixture::new();
    // The inner sh exits at once; its sleep is re-parented to PID 1, which must reap it.
    let script =
        "sh -c 'sleep 0.2 &'; sleep 1; cat /proc/[0-9]*/stat > stat; cat /proc/1/stat > one";
    assert_eq!(f.sh(script), 0);
    let zombies: Vec<String> = f
        .read("sub/stat")
        .lines()
        .filter(|l| {
            l.rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        })
        .map(String::from)
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    assert!(
        f.read("sub/one").starts_with("1 ("),
        "{}",
        f.read("sub/one")
    );
}

#[test]
fn container_mounts_read_only_and_missing_source() {
    let _g = lock();
    let f = Fixture::new();
    let data = f.spec.project_dir.parent().unwrap().join("data");
    fs_err::create_dir_all(&data).unwrap();
    fs_err::write(data.join("in"), "hello\n").unwrap();
    let mut spec = Spec {
        mounts: vec![Mount {
            source: data.clone(),
            target: "/data".into(),
            read_only: true,
        }],
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /data/in > got; touch /data/new".into(),
        ],
        ..f.spec.clone()
    };
    assert_eq!(f.run(&spec), 1, "touch on a read-only mount fails");
    assert_eq!(f.read("sub/got"), "hello\n");
    assert!(!data.join("new").exists());
    spec.mounts[0].source = data.join("missing");
    let e = run_with(&devenv_bin(), &spec, false, super::Teardown::Wait).unwrap_err();
    assert!(matches!(e, RuntimeError::MountSource { .. }), "{e}");
}

#[test]
fn container_two_runs_at_once() {
    let _g = lock();
    // Both roots: with the flattened copy, both entries build the cache at the same time.
    for flatten in [false, true] {
        let f = Fixture {
            flatten,
            ..Fixture::new()
        };
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|i| {
                    let f = &f;
                    let script =
                        format!("touch /usr/only{i}; sleep 1; test ! -e /usr/only{}", 1 - i);
                    s.spawn(move || f.sh(&script))
                })
                .collect();
            for r in runs {
                assert_eq!(
                    r.join().unwrap(),
                    0,
                    "each entry has its own root (flatten: {flatten})"
                );
            }
        });
    }
}

#[test]
fn container_forwards_sigterm() {
    let _g = lock();
    let f = Fixture::new();
    let started = f.spec.project_dir.join("sub/started");
    let status = std::thread::scope(|s| {
        let h = s.spawn(|| f.sh("touch started; exec sleep 30"));
        let t0 = std::time::Instant::now();
        while !started.exists() && t0.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(started.exists(), "the command never started");
        // Sent to this process, as a user's `kill` would be: devenv forwards it inward.
        nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        h.join().unwrap()
    });
    assert_eq!(status, 143);
}

#[test]
fn container_dev_proc_sys_and_no_new_privs() {
    let _g = lock();
    let f = Fixture::new();
    let script = "test -c /dev/null && test -c /dev/urandom && test -c /dev/pts/ptmx \
                  && test -L /dev/ptmx && test -d /dev/shm || exit 10; \
                  echo hi > /dev/null || exit 11; \
                  grep -q '^NoNewPrivs:.*1' /proc/self/status || exit 12; \
                  touch /sys/x 2>/dev/null && exit 13; \
                  grep -q ' /tmp tmpfs' /proc/mounts || exit 14; \
                  grep -q ' /sys sysfs ro' /proc/mounts || exit 15; \
                  test -e /etc/resolv.conf || exit 16; \
                  ls / > root; exit 0";
    assert_eq!(f.sh(script), 0);
    // Nothing else of the host: the root holds the image's directories and our mount points.
    let root = f.read("sub/root");
    assert!(!root.contains("work"), "{root}");
}

#[test]
fn container_flattened_fallback_keeps_layers_and_resets() {
    let _g = lock();
    let f = Fixture {
        flatten: true,
        ..Fixture::new()
    };
    let script = "cat /etc/os-release > osr; test -e /etc/removed; echo $? > removed; \
                  touch /usr/marker created";
    assert_eq!(f.sh(script), 0);
    assert_eq!(f.read("sub/osr"), "ID=top\n");
    assert_eq!(f.read("sub/removed"), "1\n");
    assert_eq!(
        f.sh("test -e /usr/marker"),
        1,
        "a fresh copy at every entry"
    );
    assert!(
        f.spec.state_dir.join("flat").is_dir(),
        "the flattened cache is kept"
    );
    let run = f.spec.state_dir.join("run");
    assert_eq!(
        fs_err::read_dir(&run).unwrap().count(),
        0,
        "entries cleaned (a flattened copy never takes the scratch lock)"
    );
}

#[test]
fn container_many_layers_fit_one_overlay_mount() {
    let _g = lock();
    let mut f = Fixture::new();
    // Long absolute layer paths, as in the store: the options stay short through `l/<i>`.
    let deep = f.spec.state_dir.parent().unwrap().join("x".repeat(200));
    for i in 0..150 {
        let l = deep.join(format!("{i:0>64}"));
        fs_err::create_dir_all(l.join("etc")).unwrap();
        fs_err::write(l.join("etc/layer"), format!("{i}\n")).unwrap();
        f.spec.lowers.push(l);
    }
    assert_eq!(f.sh("cat /etc/layer > layer; cat /etc/os-release > osr"), 0);
    assert_eq!(f.read("sub/layer"), "149\n", "the last layer is on top");
    assert_eq!(f.read("sub/osr"), "ID=top\n");
}

#[test]
fn container_persistent_upper_keeps_writes_and_whiteouts() {
    let _g = lock();
    let f = Fixture::new();
    let upper = f.spec.state_dir.join("build-upper");
    fs_err::create_dir_all(&upper).unwrap();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let spec = Spec {
        root: true,
        upper: Some(upper.clone()),
        output: Some(std::sync::Arc::new(w)),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "mkdir -p /opt/tool && echo built > /opt/tool/f && rm /etc/os-release && echo out"
                .into(),
        ],
        ..f.spec.clone()
    };
    assert_eq!(f.run(&spec), 0);
    drop(spec);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
    assert_eq!(
        out, "out\n",
        "the command's output goes to the descriptor given"
    );
    assert_eq!(
        fs_err::read_to_string(upper.join("opt/tool/f")).unwrap(),
        "built\n"
    );
    let wh = fs_err::symlink_metadata(upper.join("etc/os-release")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()) && wh.rdev() == 0,
        "a removed file is a 0/0 whiteout in the upper directory"
    );
    let run = f.spec.state_dir.join("run");
    assert_eq!(fs_err::read_dir(&run).unwrap().count(), 0, "entry cleaned");
    assert!(
        upper.join("opt/tool/f").exists(),
        "the upper directory outlives the entry"
    );
    // A second entry on the same layers plus the new one sees the change.
    let spec = Spec {
        lowers: [f.spec.lowers.clone(), vec![upper.clone()]].concat(),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /opt/tool/f > seen; test ! -e /etc/os-release".into(),
        ],
        ..f.spec.clone()
    };
    assert_eq!(f.run(&spec), 0);
    assert_eq!(f.read("sub/seen"), "built\n");
}

#[test]
fn container_root_chown_to_unmapped_ids_succeeds_without_effect() {
    let _g = lock();
    let f = Fixture::new();
    let spec = Spec {
        root: true,
        argv: vec![
            "sh".into(),
            "-c".into(),
            "touch a b && chown 6:12 a && chown 0:0 b && chown -h 1000 a && stat -c '%u:%g' a b > owners"
                .into(),
        ],
        ..f.spec.clone()
    };
    assert_eq!(f.run(&spec), 0, "chown to man:man must not fail");
    assert_eq!(f.read("sub/owners"), "0:0\n0:0\n");
    // Without --root, chown keeps failing as it would.
    assert_ne!(f.sh("touch c && chown 6:12 c"), 0);
}

#[test]
fn container_gpu_binds_the_driver_it_is_given() {
    let _g = lock();
    let f = Fixture::new();
    // A stand-in driver: no NVIDIA hardware here, but the binds, their modes and the
    // environment are what a real one gets (runtime::gpu::discover fills HostGpu on a GPU host).
    let host = tempfile::tempdir().unwrap();
    let ctl = host.path().join("nvidiactl");
    fs_err::write(&ctl, "control\n").unwrap();
    let lib = host.path().join("libcuda.so.550.54");
    fs_err::write(&lib, "driver\n").unwrap();
    let smi = host.path().join("nvidia-smi");
    fs_err::write(&smi, "#!/bin/sh\necho smi-ran\n").unwrap();
    fs_err::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = Spec {
        gpu: Some(super::gpu::HostGpu {
            devices: vec![ctl.clone()],
            libraries: vec![("libcuda.so.1".into(), lib.clone())],
            programs: vec![smi],
            ..Default::default()
        }),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /dev/nvidiactl /usr/local/nvidia/lib64/libcuda.so.1 > seen; nvidia-smi >> seen; \
             echo \"$LD_LIBRARY_PATH\" >> seen; \
             echo x > /usr/local/nvidia/lib64/libcuda.so.1 && echo WROTE >> seen; exit 0"
                .into(),
        ],
        ..f.spec.clone()
    };
    assert_eq!(f.run(&spec), 0);
    assert_eq!(
        f.read("sub/seen"),
        "control\ndriver\nsmi-ran\n/usr/local/nvidia/lib64\n",
        "device and library bound, tool on PATH, the library read-only"
    );
    assert_eq!(fs_err::read_to_string(&lib).unwrap(), "driver\n");
}
