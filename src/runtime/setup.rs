//! The container's namespaces and root, step by step in bubblewrap's order, written against
//! [`Syscalls`] so the order is a unit test. PID 1 is cloned into the namespaces of
//! [`namespace_flags`]; then `map_ids`, `build_root` and `finish` run in it.
//!
//! Invariants: `/` is made private before anything is mounted, so nothing propagates to the host;
//! every mount point inside the root is resolved inside it; home is mounted before the project
//! and extra mounts, so a project under the home directory stays visible; the old root is
//! detached before the command runs. This module never forks or execs.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::RuntimeError;
use super::fsutil::{self, Merged, MergedView, User};
use super::sys::{Kind, Syscalls};

/// Everything PID 1 (or the helper, as JSON) needs: the caller's [`super::Spec`], as
/// [`super::plan_for`] completed it (lowers absolute, the host's CA bundle among the mounts and
/// its variables in the environment, the shell decided where the layers leave no doubt), and
/// what the launcher decided around it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub spec: super::Spec,
    /// The per-entry directory: `upper/`, `work/`, `root/`, `l/<i>` links to the layers.
    pub entry: PathBuf,
    pub host_uid: u32,
    pub host_gid: u32,
    pub user_name: String,
    pub host_shell: Option<String>,
    /// Skip overlay and use the flattened copy (`DEVENV_FLATTEN=1`, and tests).
    pub force_flatten: bool,
    /// The entry directory does not exist yet: make it with `upper/`, `work/`, `root/` and
    /// `l/<i>` in a tmpfs mounted on its parent, `run/` (nothing to write to or remove from the
    /// store's disk, and only this mount namespace sees it), or on the disk where tmpfs lacks
    /// user xattrs (Linux < 6.6) or overlay refuses it. `lowers` are absolute.
    #[serde(default)]
    pub scratch: bool,
    /// With `scratch`: no fallback to the disk, which has no lock file for this entry; fail
    /// with [`RuntimeError::ScratchRefused`] instead.
    #[serde(default)]
    pub scratch_only: bool,
}

impl Plan {
    /// `upper` links to a persistent upper directory (a build step): no flattened fallback.
    fn keep_upper(&self) -> bool {
        self.spec.upper.is_some()
    }

    /// Where the flattened fallback copy is cached.
    fn flat_cache(&self) -> PathBuf {
        self.spec.state_dir.join("flat")
    }

    fn inside_ids(&self) -> (u32, u32) {
        if self.spec.root {
            (0, 0)
        } else if let Some(u) = self.service_user() {
            (u.uid, u.gid)
        } else {
            (self.host_uid, self.host_gid)
        }
    }

    /// A service's own user (`[services.NAME].user`), instead of the host user's ids and name.
    fn service_user(&self) -> Option<&super::ServiceUser> {
        self.spec.pod.as_ref().and_then(|p| p.service.as_ref())
    }

    /// The login name inside: root, a service's user, or the host user's name.
    fn login(&self) -> &str {
        if self.spec.root {
            "root"
        } else if let Some(u) = self.service_user() {
            &u.name
        } else {
            &self.user_name
        }
    }
}

/// Host files bound read-only into the same place inside.
pub(super) const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];
/// Host devices bound into the fresh `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Overlay options must fit in one page (fs/namespace.c copies mount data by the page).
const OPTIONS_LIMIT: usize = 4095;

/// The namespaces PID 1 is cloned into: all at once, so the new ones belong to the new user
/// namespace.
pub fn namespace_flags(plan: &Plan) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if plan.spec.network == crate::config::Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// PID 1's first step in its new user namespace: map the user's ids (it may write its own maps:
/// one line, its own ids, setgroups denied first), and bring `lo` up in a network namespace.
pub fn map_ids<S: Syscalls>(sys: &mut S, plan: &Plan) -> Result<(), RuntimeError> {
    let (uid, gid) = plan.inside_ids();
    // user_namespaces(7): setgroups must be denied before an unprivileged gid_map write.
    let maps = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("{uid} {} 1\n", plan.host_uid)),
        ("/proc/self/gid_map", format!("{gid} {} 1\n", plan.host_gid)),
    ];
    for (path, text) in maps {
        sys.write_proc(Path::new(path), &text)
            .map_err(|errno| RuntimeError::sys(format!("writing {path}"), errno))?;
    }
    if plan.spec.network == crate::config::Network::None {
        sys.loopback_up()
            .map_err(|errno| RuntimeError::sys("bringing up the loopback interface", errno))?;
    }
    Ok(())
}

/// The overlay options for `layers` links under `l/`, top layer first, relative to the entry.
pub fn overlay_options(layers: usize) -> Result<String, RuntimeError> {
    let lower: Vec<String> = (0..layers).rev().map(|i| format!("l/{i}")).collect();
    let opts = format!(
        "lowerdir={},upperdir=upper,workdir=work,userxattr",
        lower.join(":")
    );
    if opts.len() > OPTIONS_LIMIT {
        return Err(RuntimeError::TooManyLayers { layers });
    }
    Ok(opts)
}

fn mount<S: Syscalls>(
    sys: &mut S,
    what: &str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RuntimeError> {
    sys.mount(source, target, fstype, flags, data)
        .map_err(|errno| RuntimeError::Mount {
            what: what.to_string(),
            target: target.to_path_buf(),
            errno: errno as i32,
        })
}

fn point<S: Syscalls>(
    sys: &mut S,
    root: &Path,
    target: &Path,
    kind: Kind,
) -> Result<PathBuf, RuntimeError> {
    sys.mountpoint(root, target, kind)
        .map_err(|errno| RuntimeError::MountPoint {
            target: target.to_path_buf(),
            errno: errno as i32,
        })
}

/// The error for a mount point made directly (in a tmpfs of ours) for `what`.
fn made(what: &Path) -> impl FnOnce(Errno) -> RuntimeError {
    let what = what.to_path_buf();
    move |errno| RuntimeError::MountPoint {
        target: what,
        errno: errno as i32,
    }
}

/// Bind `source` onto `target` (recursively), read-only on request: the remount keeps the
/// locked flags and covers each submount.
fn bind<S: Syscalls>(
    sys: &mut S,
    source: &Path,
    target: &Path,
    read_only: bool,
) -> Result<(), RuntimeError> {
    let what = source.display().to_string();
    mount(
        sys,
        &what,
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if read_only {
        match sys.readonly_tree(target) {
            Ok(()) => return Ok(()),
            // ENOSYS: before Linux 5.12; EINVAL/EPERM: refused here. Then one remount each.
            Err(errno) => tracing::debug!("mount_setattr on {}: {errno}", target.display()),
        }
        let mut all = vec![target.to_path_buf()];
        all.extend(sys.submounts(target));
        for m in all {
            let locked = sys.locked_flags(&m).unwrap_or(MsFlags::empty());
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
            mount(sys, &what, None, &m, None, flags, None)?;
        }
    }
    Ok(())
}

/// What the root turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum RootFs {
    /// `accounts`: the user's passwd and group entries went into the fresh upper before the
    /// mount ([`preset_accounts`]), so [`finish`] has nothing to check.
    Overlay { accounts: bool },
    /// Overlay failed with `errno`; the root is a flattened copy, on `fs` (the store's
    /// filesystem type, for the notice: looked up only then).
    Flattened { errno: i32, fs: String },
}

/// Mount everything under the new root and pivot into it. In PID 1 of the new PID namespace.
/// `console`: the host terminal on stdin, bound at `/dev/console` so that ttyname(3) finds it
/// (the new devpts instance does not show the host's ptys; podman does the same).
pub fn build_root<S: Syscalls>(
    sys: &mut S,
    plan: &Plan,
    console: Option<&Path>,
) -> Result<RootFs, RuntimeError> {
    let root = plan.entry.join("root");
    // Nothing we mount may propagate back to the host's mount namespace.
    mount(
        sys,
        "/",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let fs = mount_rootfs(sys, plan, &root)?;

    let dev = point(sys, &root, Path::new("/dev"), Kind::Dir)?;
    let data = "mode=0755";
    let nosuid = MsFlags::MS_NOSUID;
    mount(sys, "tmpfs", None, &dev, Some("tmpfs"), nosuid, Some(data))?;
    // The fresh tmpfs holds nothing of the image: its mount points are made directly.
    for d in DEVICES {
        let host = Path::new("/dev").join(d);
        if sys.kind_of(&host).is_none() {
            continue; // no /dev/tty without a controlling terminal on some hosts
        }
        let p = dev.join(d);
        sys.write_file(&p, "").map_err(made(&host))?;
        bind(sys, &host, &p, false)?;
    }
    let pts = dev.join("pts");
    sys.mkdir(&pts).map_err(made(Path::new("/dev/pts")))?;
    // devpts(5): a private instance; without gid=, which needs gid 5 mapped.
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let data = "newinstance,ptmxmode=0666,mode=620";
    mount(sys, "devpts", None, &pts, Some("devpts"), flags, Some(data))?;
    let shm = dev.join("shm");
    sys.mkdir(&shm).map_err(made(Path::new("/dev/shm")))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        sys,
        "tmpfs",
        None,
        &shm,
        Some("tmpfs"),
        flags,
        Some("mode=1777"),
    )?;
    if let Some(tty) = console {
        let p = dev.join("console");
        sys.write_file(&p, "")
            .map_err(made(Path::new("/dev/console")))?;
        bind(sys, tty, &p, false)?;
    }
    let links = [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    for (target, name) in links {
        sys.symlink(Path::new(target), &dev.join(name))
            .map_err(|errno| RuntimeError::sys(format!("linking /dev/{name}"), errno))?;
    }

    // proc(5): needs our own PID namespace, which PID 1 is in.
    let proc = point(sys, &root, Path::new("/proc"), Kind::Dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(sys, "proc", None, &proc, Some("proc"), flags, None)?;
    let sysfs = point(sys, &root, Path::new("/sys"), Kind::Dir)?;
    bind(sys, Path::new("/sys"), &sysfs, true)?;
    let tmp = point(sys, &root, Path::new("/tmp"), Kind::Dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        sys,
        "tmpfs",
        None,
        &tmp,
        Some("tmpfs"),
        flags,
        Some("mode=1777"),
    )?;
    // The host's resolv.conf and hosts, or on the env's private network those its supervisor
    // wrote (the services' names; a resolver reachable from there).
    let etc = plan.spec.pod.as_ref().and_then(|p| p.etc.as_deref());
    for f in HOST_FILES {
        let at = Path::new(f);
        let source = match etc {
            Some(dir) => dir.join(at.file_name().unwrap_or_default()),
            None => at.to_path_buf(),
        };
        if sys.kind_of(&source) == Some(Kind::File) {
            let p = point(sys, &root, at, Kind::File)?;
            bind(sys, &source, &p, true)?;
        }
    }

    if let Some(gpu) = &plan.spec.gpu {
        gpu_mounts(sys, &root, gpu)?;
    }

    // A service sees its image and volumes: not the user's home, not the project.
    if plan.service_user().is_none() {
        let home = point(sys, &root, &plan.spec.home_target, Kind::Dir)?;
        bind(sys, &plan.spec.home, &home, false)?;
        let project = point(sys, &root, &plan.spec.project_dir, Kind::Dir)?;
        bind(sys, &plan.spec.project_dir, &project, false)?;
    }
    for crate::config::Mount {
        source,
        target,
        read_only,
    } in &plan.spec.mounts
    {
        let kind = sys
            .kind_of(source)
            .ok_or_else(|| RuntimeError::MountSource {
                path: source.clone(),
            })?;
        let p = point(sys, &root, target, kind)?;
        bind(sys, source, &p, *read_only)?;
    }

    // pivot_root(2) with new_root == put_old (as runc does): the old root ends up stacked on
    // the new one and is detached right away, so no directory for it is needed.
    sys.chdir(&root)
        .map_err(|e| RuntimeError::sys("entering the new root", e))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| RuntimeError::sys("pivot_root", e))?;
    sys.umount(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(|e| RuntimeError::sys("detaching the old root", e))?;
    sys.chdir(Path::new("/"))
        .map_err(|e| RuntimeError::sys("entering /", e))?;
    Ok(fs)
}

/// The host's NVIDIA devices into the container's `/dev` (a tmpfs of ours, so their mount points
/// are made directly), its driver libraries and tools read-only into a tmpfs on
/// `/usr/local/nvidia` (see `gpu`).
fn gpu_mounts<S: Syscalls>(
    sys: &mut S,
    root: &Path,
    gpu: &super::gpu::HostGpu,
) -> Result<(), RuntimeError> {
    let dev = root.join("dev");
    for device in &gpu.devices {
        let Some(name) = device.file_name() else {
            continue;
        };
        let p = dev.join(name);
        match sys.kind_of(device) {
            None => continue, // gone since discovery
            Some(Kind::Dir) => sys.mkdir(&p).map_err(made(device))?,
            Some(Kind::File) => sys.write_file(&p, "").map_err(made(device))?,
        }
        bind(sys, device, &p, false)?;
    }
    let top = point(sys, root, Path::new("/usr/local/nvidia"), Kind::Dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        sys,
        "tmpfs",
        None,
        &top,
        Some("tmpfs"),
        flags,
        Some("mode=0755"),
    )?;
    let (lib, bin) = (top.join("lib64"), top.join("bin"));
    for d in [&lib, &bin] {
        sys.mkdir(d).map_err(made(d))?;
    }
    let files = gpu
        .libraries
        .iter()
        .map(|(name, host)| (lib.join(name), host))
        .chain(
            gpu.programs
                .iter()
                .filter_map(|host| Some((bin.join(host.file_name()?), host))),
        );
    // Each name is one plain component (gpu::libraries refuses others; programs are file names).
    for (p, host) in files {
        sys.write_file(&p, "").map_err(made(host))?;
        bind(sys, host, &p, true)?;
    }
    // Where libcuda looks for it; the mount point is an empty file, never a library.
    if let Some(socket) = &gpu.persistenced {
        let p = point(sys, root, Path::new(super::gpu::PERSISTENCED), Kind::File)?;
        bind(sys, socket, &p, false)?;
    }
    Ok(())
}

/// Overlay of the layer chain on `root`, or the flattened copy bound there when the kernel or
/// the store's filesystem refuses overlay.
fn mount_rootfs<S: Syscalls>(
    sys: &mut S,
    plan: &Plan,
    root: &Path,
) -> Result<RootFs, RuntimeError> {
    if plan.scratch {
        if !plan.force_flatten {
            match scratch_overlay(sys, plan)? {
                Ok(accounts) => return Ok(RootFs::Overlay { accounts }),
                Err(errno) if plan.scratch_only => {
                    return Err(RuntimeError::ScratchRefused {
                        errno: errno as i32,
                    });
                }
                Err(_) => {}
            }
        }
        make_entry(sys, plan)?;
        in_entry(sys, plan, |sys| make_entry_dirs(sys, plan))?;
    }
    let res = if plan.force_flatten && !plan.keep_upper() {
        Err(Errno::EINVAL)
    } else {
        mount_overlay(sys, plan)?
    };
    match res {
        Ok(()) => Ok(RootFs::Overlay { accounts: false }),
        // A build step's writes must land in its upper directory: a copy would lose them.
        Err(refused @ (Errno::EINVAL | Errno::EPERM | Errno::ENODEV)) if plan.keep_upper() => {
            Err(RuntimeError::OverlayRequired {
                errno: refused as i32,
            })
        }
        // EINVAL: no userxattr or no unprivileged overlay in this kernel (< 5.11) or on this
        // filesystem; EPERM: overlay not allowed in a user namespace here; ENODEV: no overlay.
        Err(refused @ (Errno::EINVAL | Errno::EPERM | Errno::ENODEV)) => {
            sys.flatten(&plan.spec.lowers, &plan.flat_cache(), root)
                .map_err(|e| RuntimeError::Flatten {
                    overlay_errno: refused as i32,
                    message: e.to_string(),
                })?;
            let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(
                sys,
                "the flattened image",
                Some(root),
                root,
                None,
                flags,
                None,
            )?;
            Ok(RootFs::Flattened {
                errno: refused as i32,
                fs: super::fs_name(&plan.flat_cache()),
            })
        }
        Err(errno) => Err(RuntimeError::Mount {
            what: "overlay".into(),
            target: root.to_path_buf(),
            errno: errno as i32,
        }),
    }
}

/// `f` with the entry as the working directory: paths in it are short and relative.
fn in_entry<S: Syscalls, T>(
    sys: &mut S,
    plan: &Plan,
    f: impl FnOnce(&mut S) -> Result<T, Errno>,
) -> Result<T, RuntimeError> {
    let step = |what: String| move |e| RuntimeError::sys(what, e);
    sys.chdir(&plan.entry)
        .map_err(step(format!("entering {}", plan.entry.display())))?;
    let res = f(sys).map_err(step(format!(
        "making the overlay's directories in {}",
        plan.entry.display()
    )));
    sys.chdir(Path::new("/"))
        .map_err(|e| RuntimeError::sys("entering /", e))?;
    res
}

/// The entry directory itself.
fn make_entry<S: Syscalls>(sys: &mut S, plan: &Plan) -> Result<(), RuntimeError> {
    sys.mkdir(&plan.entry)
        .map_err(|e| RuntimeError::sys(format!("making {}", plan.entry.display()), e))
}

/// `upper`, `work`, `root` and `l/<i>` linking `lowers[i]`, in the working directory.
fn make_entry_dirs<S: Syscalls>(sys: &mut S, plan: &Plan) -> Result<(), Errno> {
    for d in ["upper", "work", "root", "l"] {
        sys.mkdir(Path::new(d))?;
    }
    for (i, l) in plan.spec.lowers.iter().enumerate() {
        sys.symlink(l, &Path::new("l").join(i.to_string()))?;
    }
    Ok(())
}

/// The overlay with the entry, its upper and work directories in a tmpfs on `run/`, private to
/// this mount namespace: it vanishes with the container, so the store's disk sees no entry
/// directory, no copy-up, no mount points, no removal. Whether the user's passwd and group
/// entries went in before the mount ([`preset_accounts`]); the errno (and the tmpfs gone) where
/// tmpfs cannot hold overlay's user xattrs or overlay refuses it: the caller falls back to the
/// disk.
fn scratch_overlay<S: Syscalls>(
    sys: &mut S,
    plan: &Plan,
) -> Result<Result<bool, Errno>, RuntimeError> {
    let opts = overlay_options(plan.spec.lowers.len())?;
    let Some(run) = plan.entry.parent() else {
        return Ok(Err(Errno::EINVAL));
    };
    let flags = MsFlags::MS_NOSUID;
    if let Err(errno) = sys.mount(None, run, Some("tmpfs"), flags, Some("mode=0700")) {
        return Ok(Err(errno));
    }
    let made = make_entry(sys, plan).and_then(|()| {
        in_entry(sys, plan, |sys| {
            make_entry_dirs(sys, plan)?;
            sys.user_xattr(Path::new("upper"))?;
            let accounts = preset_accounts(sys, plan)?;
            sys.mount(
                Some(Path::new("overlay")),
                Path::new("root"),
                Some("overlay"),
                MsFlags::MS_NOSUID,
                Some(&opts),
            )?;
            Ok(accounts)
        })
    });
    let e = match made {
        Ok(accounts) => return Ok(Ok(accounts)),
        Err(e) => e,
    };
    tracing::debug!("no overlay in a tmpfs: {e}");
    sys.umount(run, MntFlags::MNT_DETACH)
        .map_err(|e| RuntimeError::sys("unmounting the scratch tmpfs", e))?;
    let errno = match e {
        RuntimeError::Sys { errno, .. } => Errno::from_raw(errno),
        _ => Errno::EINVAL,
    };
    Ok(Err(errno))
}

/// The overlay mount itself; the mount's errno is the caller's to judge.
fn mount_overlay<S: Syscalls>(sys: &mut S, plan: &Plan) -> Result<Result<(), Errno>, RuntimeError> {
    let opts = overlay_options(plan.spec.lowers.len())?;
    // overlayfs resolves relative lowerdir/upperdir/workdir against our cwd: short options.
    sys.chdir(&plan.entry)
        .map_err(|e| RuntimeError::sys(format!("entering {}", plan.entry.display()), e))?;
    let res = sys.mount(
        Some(Path::new("overlay")),
        Path::new("root"),
        Some("overlay"),
        MsFlags::MS_NOSUID,
        Some(&opts),
    );
    sys.chdir(Path::new("/"))
        .map_err(|e| RuntimeError::sys("entering /", e))?;
    Ok(res)
}

/// After the pivot: the user's passwd/group entries (unless `accounts`: written before the
/// overlay was mounted), hostname, working directory and no-new-privs. Returns the command line
/// to run.
pub fn finish<S: Syscalls>(
    sys: &mut S,
    plan: &Plan,
    accounts: bool,
) -> Result<Vec<String>, RuntimeError> {
    let shell = pick_shell(sys, plan);
    let argv = if plan.spec.argv.is_empty() {
        vec![shell.clone()]
    } else {
        plan.spec.argv.clone()
    };
    let argv = match plan.spec.gpu {
        Some(_) => with_ldconfig(sys, argv),
        None => argv,
    };
    if !accounts {
        // Written after the pivot, into the fresh upper layer, through the container's own view.
        let user = account(plan, shell);
        for (path, add) in ACCOUNT_FILES {
            let path = Path::new(path);
            let old = sys
                .read_file(path)
                .map_err(|e| RuntimeError::sys(format!("reading {}", path.display()), e))?;
            if let Some(new) = add(old.as_deref().unwrap_or(""), &user) {
                sys.write_file(path, &new)
                    .map_err(|e| RuntimeError::sys(format!("writing {}", path.display()), e))?;
            }
        }
    }
    sys.sethostname(&super::host_name(&plan.spec.hostname))
        .map_err(|e| RuntimeError::sys("setting the hostname", e))?;
    sys.chdir(&plan.spec.cwd)
        .map_err(|errno| RuntimeError::Cwd {
            path: plan.spec.cwd.clone(),
            errno: errno as i32,
        })?;
    sys.no_new_privs()
        .map_err(|e| RuntimeError::sys("setting no-new-privs", e))?;
    if plan.spec.root {
        lock_mounts(sys)?;
    }
    confine(sys, plan)?;
    Ok(argv)
}

/// Root inside holds every capability over the mounts PID 1 made in its own user namespace:
/// it could remount a `:ro` mount read-write and write the host's files through it, or unmount
/// what covers something. A nested user and mount namespace of the same ids locks them
/// (user_namespaces(7), "Restrictions on mount namespaces": mounts that reach a namespace owned
/// by a less privileged user namespace are locked together, their read-only, nosuid, nodev and
/// noexec flags fixed). Without root there is no capability to undo anything with.
fn lock_mounts<S: Syscalls>(sys: &mut S) -> Result<(), RuntimeError> {
    sys.unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(|e| RuntimeError::sys("locking the mounts (a nested user namespace)", e))?;
    // We are uid 0 of the outer namespace, mapping our own ids: no privilege needed.
    for (path, text) in [
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", "0 0 1\n"),
        ("/proc/self/gid_map", "0 0 1\n"),
    ] {
        sys.write_proc(Path::new(path), text)
            .map_err(|errno| RuntimeError::sys(format!("writing {path}"), errno))?;
    }
    Ok(())
}

/// The last steps before the command: a session keyring of the container's own, so that the
/// host's session keys (Kerberos tickets, tokens) are not the container's even where the
/// keyring calls are let through, then the seccomp filter (see `seccomp`), which PID 1 and
/// everything it starts inherit.
fn confine<S: Syscalls>(sys: &mut S, plan: &Plan) -> Result<(), RuntimeError> {
    let profile = super::seccomp::Profile {
        allow: plan.spec.sandbox.allow_syscalls.clone(),
        ignore_unmapped_chown: plan.spec.root,
    };
    match sys.join_session_keyring() {
        Ok(()) => {}
        // A kernel without keys has no keyring to reach; with the calls refused by the filter
        // the host's keys cannot be reached either, so a full key quota is no reason to fail.
        Err(Errno::ENOSYS) => {}
        Err(_) if profile.refuses_keyring() => {}
        Err(e) => return Err(RuntimeError::sys("joining a fresh session keyring", e)),
    }
    sys.seccomp(&profile)
        .map_err(|e| RuntimeError::sys("installing the seccomp filter", e))
}

/// The files that get the user's entry, and how.
type Add = fn(&str, &User) -> Option<String>;
const ACCOUNT_FILES: [(&str, Add); 2] = [
    ("/etc/passwd", fsutil::passwd_with),
    ("/etc/group", fsutil::group_with),
];

/// The user as passwd and group name them inside.
fn account(plan: &Plan, shell: String) -> User {
    let (uid, gid) = plan.inside_ids();
    User {
        name: plan.login().to_string(),
        uid,
        gid,
        home: plan.spec.home_target.display().to_string(),
        shell,
    }
}

/// Write the user's passwd and group entries into a fresh upper directory (`upper/` of the
/// working directory) before the overlay is mounted, from the image's files read straight from
/// the layers: nothing is copied up (/etc and two files of it, 0.15 ms of a warm start), and
/// `finish` need not read them back. True when it decided them (written, or the image has
/// them already); false where the layers leave any doubt ([`Merged::Unknown`], `/etc` not a
/// plain directory, no shell decided): `finish` then writes through the overlay as before.
fn preset_accounts<S: Syscalls>(sys: &mut S, plan: &Plan) -> Result<bool, Errno> {
    let Some(files) = accounts_from_layers(plan) else {
        return Ok(false);
    };
    if files.is_empty() {
        return Ok(true);
    }
    let etc = Path::new("upper/etc");
    sys.mkdir(etc)?;
    for (path, text) in files {
        let name = Path::new(path).file_name().unwrap_or_default();
        sys.write_file(&etc.join(name), &text)?;
    }
    Ok(true)
}

/// (path, new contents) of each account file `finish` would change, read from the layers;
/// `None` where the layers leave doubt, or the shell is not decided yet (`plan.spec.shell`).
fn accounts_from_layers(plan: &Plan) -> Option<Vec<(&'static str, String)>> {
    // upper/etc merges with the image's /etc only if that is a directory (or absent) in the
    // topmost layer that names it; over a symlink it would replace it.
    for l in plan.spec.lowers.iter().rev() {
        match fs_err::symlink_metadata(l.join("etc")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Ok(m) if m.is_dir() => break,
            _ => return None,
        }
    }
    let view = MergedView::new(&plan.spec.lowers)?;
    let user = account(plan, plan.spec.shell.clone()?);
    let mut out = Vec::new();
    for (path, add) in ACCOUNT_FILES {
        let old = match view.lookup(Path::new(path)) {
            Merged::File(f) => String::from_utf8_lossy(&fs_err::read(f).ok()?).into_owned(),
            Merged::Missing => String::new(),
            Merged::Dir | Merged::Unknown => return None,
        };
        if let Some(new) = add(&old, &user) {
            out.push((path, new));
        }
    }
    Some(out)
}

/// The shell [`pick_shell`] would choose, decided from the layers before anything is mounted
/// (`run` puts it in the plan, so PID 1 looks for it neither in the layers nor, after the pivot,
/// in the root); `None` where the layers leave doubt.
pub fn shell_from_layers(plan: &Plan) -> Option<String> {
    if plan.spec.shell.is_some() {
        return plan.spec.shell.clone();
    }
    let view = MergedView::new(&plan.spec.lowers)?;
    let mut unsure = false;
    let shell = pick_shell_with(plan, |p| match view.lookup(p) {
        Merged::File(_) => true,
        Merged::Unknown => {
            unsure = true;
            false
        }
        Merged::Dir | Merged::Missing => false,
    });
    (!unsure).then_some(shell)
}

/// With the GPU on: the driver's directory as an `ld.so.conf.d` entry in the fresh upper layer,
/// and `argv` run by a `/bin/sh` that first runs the image's `ldconfig`, then `exec`s it (same
/// pid, same descriptors): `dlopen("libcuda.so.1")` and `ldconfig -p` (Triton) find the driver
/// without `LD_LIBRARY_PATH`, at every start, so a driver update is picked up and nothing is
/// kept (the upper layer is the entry's own). An image without `sh`, `ldconfig` (musl) or
/// `/etc/ld.so.conf.d` keeps `argv` as it is, and `LD_LIBRARY_PATH` finds the driver.
fn with_ldconfig<S: Syscalls>(sys: &mut S, argv: Vec<String>) -> Vec<String> {
    let ldconfig = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .into_iter()
        .find(|p| sys.kind_of(Path::new(p)) == Some(Kind::File));
    let (Some(ldconfig), Some(Kind::File), Some(Kind::Dir)) = (
        ldconfig,
        sys.kind_of(Path::new("/bin/sh")),
        sys.kind_of(Path::new("/etc/ld.so.conf.d")),
    ) else {
        return argv;
    };
    let conf = Path::new("/etc/ld.so.conf.d/000-devenv-nvidia.conf");
    if sys
        .write_file(conf, &format!("{}\n", super::gpu::LIB_DIR))
        .is_err()
    {
        return argv;
    }
    let mut wrapped = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("{ldconfig} 2>/dev/null; exec \"$@\""),
        "sh".to_string(),
    ];
    wrapped.extend(argv);
    wrapped
}

/// `[container].shell`, else the user's host shell when the image has it, else bash, else sh.
fn pick_shell<S: Syscalls>(sys: &mut S, plan: &Plan) -> String {
    pick_shell_with(plan, |p| sys.kind_of(p) == Some(Kind::File))
}

/// [`pick_shell`] with `is_file` saying whether the image has a file at a path.
fn pick_shell_with(plan: &Plan, mut is_file: impl FnMut(&Path) -> bool) -> String {
    if let Some(s) = &plan.spec.shell {
        return s.clone();
    }
    let candidates = plan
        .host_shell
        .iter()
        .map(String::as_str)
        .chain(["/bin/bash", "/usr/bin/bash"]);
    for c in candidates {
        if is_file(Path::new(c)) {
            return c.to_string();
        }
    }
    "/bin/sh".into()
}

/// Where execvp(3) would find `name` in `path_var` (the container's PATH), seen from inside:
/// the first executable regular file, else the first file found at all (its exec then fails
/// with "permission denied", 126, as execvp's would). `None` for a name with a slash (used as
/// it is) and when nothing is found (not found, 127).
pub fn find_program(name: &str, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let mut refused = None;
    for dir in path_var.split(':') {
        let p = Path::new(if dir.is_empty() { "." } else { dir }).join(name);
        let Ok(meta) = fs_err::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            continue;
        }
        let executable = meta.permissions().mode() & 0o111 != 0
            && nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok();
        if executable {
            return Some(p);
        }
        refused.get_or_insert(p);
    }
    refused
}

/// The environment the command gets: the plan's, with HOME, USER, LOGNAME and PATH filled in
/// when missing.
pub fn environment(plan: &Plan) -> Vec<(String, String)> {
    let mut env = plan.spec.env.clone();
    let user = plan.login();
    let defaults = [
        ("HOME", plan.spec.home_target.display().to_string()),
        ("USER", user.to_string()),
        ("LOGNAME", user.to_string()),
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
    ];
    for (k, v) in defaults {
        if !env.iter().any(|(ek, _)| ek == k) {
            env.push((k.to_string(), v));
        }
    }
    if plan.spec.gpu.is_some() {
        super::gpu::add_to_env(&mut env);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::sys::Recorder;

    fn plan() -> Plan {
        Plan {
            spec: crate::runtime::Spec {
                lowers: vec!["/s/l0".into(), "/s/l1".into(), "/s/l2".into()],
                state_dir: "/s".into(),
                project_dir: "/home/alice/proj".into(),
                cwd: "/home/alice/proj/sub".into(),
                home: "/s/home".into(),
                home_target: "/home/alice".into(),
                env: vec![("PATH".into(), "/bin".into())],
                argv: vec![],
                shell: None,
                hostname: "proj".into(),
                network: crate::config::Network::Host,
                root: false,
                mounts: vec![crate::config::Mount {
                    source: "/data".into(),
                    target: "/data".into(),
                    read_only: true,
                }],
                upper: None,
                output: None,
                gpu: None,
                sandbox: Default::default(),
                quiet: false,
                pod: None,
            },
            entry: "/s/run/e".into(),
            host_uid: 1000,
            host_gid: 100,
            user_name: "alice".into(),
            host_shell: Some("/bin/zsh".into()),
            force_flatten: false,
            scratch: false,
            scratch_only: false,
        }
    }

    /// `p` with its spec changed by `f`.
    fn with(mut p: Plan, f: impl FnOnce(&mut crate::runtime::Spec)) -> Plan {
        f(&mut p.spec);
        p
    }

    #[test]
    fn find_program_searches_path_like_execvp() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs_err::create_dir_all(&a).unwrap();
        fs_err::create_dir_all(b.join("tool")).unwrap(); // a directory is no program
        fs_err::write(b.join("plain"), "").unwrap(); // nor a file without x bits
        for (dir, name) in [(&a, "tool"), (&a, "plain"), (&b, "both"), (&a, "both")] {
            let p = dir.join(name);
            fs_err::write(&p, "#!/bin/sh\n").unwrap();
            fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("{}:{}", b.display(), a.display());
        assert_eq!(find_program("tool", &path), Some(a.join("tool")));
        assert_eq!(find_program("plain", &path), Some(a.join("plain")));
        assert_eq!(
            find_program("both", &path),
            Some(b.join("both")),
            "first in PATH wins"
        );
        assert_eq!(find_program("missing", &path), None);
        let only_plain = b.display().to_string();
        assert_eq!(
            find_program("plain", &only_plain),
            Some(b.join("plain")),
            "found but not executable: its exec says why"
        );
        assert_eq!(
            find_program("./tool", &path),
            None,
            "a path is used as it is"
        );
    }

    #[test]
    fn every_namespace_at_once_and_a_network_one_only_for_none() {
        let flags = namespace_flags(&plan());
        assert_eq!(
            format!("{flags:?}"),
            "CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID)"
        );
        let none = with(plan(), |s| s.network = crate::config::Network::None);
        assert!(namespace_flags(&none).contains(CloneFlags::CLONE_NEWNET));
    }

    #[test]
    fn setgroups_then_maps() {
        let mut r = Recorder::default();
        map_ids(&mut r, &plan()).unwrap();
        assert_eq!(
            r.calls,
            [
                "write /proc/self/setgroups deny",
                "write /proc/self/uid_map 1000 1000 1",
                "write /proc/self/gid_map 100 100 1",
            ]
        );
    }

    #[test]
    fn root_maps_to_zero_and_network_none_brings_lo_up() {
        let mut r = Recorder::default();
        let p = with(plan(), |s| {
            s.root = true;
            s.network = crate::config::Network::None;
        });
        map_ids(&mut r, &p).unwrap();
        assert_eq!(r.calls[1], "write /proc/self/uid_map 0 1000 1");
        assert_eq!(r.calls[2], "write /proc/self/gid_map 0 100 1");
        assert_eq!(r.calls[3], "loopback_up");
    }

    #[test]
    fn mounts_in_order_then_pivot() {
        let mut r = Recorder::default();
        let tty = Path::new("/dev/pts/7");
        assert_eq!(
            build_root(&mut r, &plan(), Some(tty)).unwrap(),
            RootFs::Overlay { accounts: false }
        );
        let c = &r.calls;
        let private = r.pos("mount - - / MsFlags(MS_REC | MS_PRIVATE)");
        let overlay = r.pos("mount overlay overlay root");
        assert!(c[overlay].ends_with("lowerdir=l/2:l/1:l/0,upperdir=upper,workdir=work,userxattr"));
        assert_eq!(
            c[overlay - 1],
            "chdir /s/run/e",
            "overlay options are relative"
        );
        let dev = r.pos("mount tmpfs - /s/run/e/root/dev ");
        let null = r.pos("mount - /dev/null /s/run/e/root/dev/null");
        let pts = r.pos("mount devpts - /s/run/e/root/dev/pts");
        assert!(c[pts].contains("newinstance,ptmxmode=0666"));
        let console = r.pos("mount - /dev/pts/7 /s/run/e/root/dev/console ");
        let ptmx = r.pos("symlink pts/ptmx /s/run/e/root/dev/ptmx");
        let proc = r.pos("mount proc - /s/run/e/root/proc");
        let sys_ro = r.pos(
            "mount - - /s/run/e/root/sys MsFlags(MS_RDONLY | MS_NOSUID | MS_REMOUNT | MS_BIND)",
        );
        let sys_sub = r.pos("mount - - /s/run/e/root/sys/sub MsFlags(MS_RDONLY");
        let tmp = r.pos("mount tmpfs - /s/run/e/root/tmp ");
        let resolv = r.pos("mount - /etc/resolv.conf /s/run/e/root/etc/resolv.conf");
        let home = r.pos("mount - /s/home /s/run/e/root/home/alice ");
        let project = r.pos("mount - /home/alice/proj /s/run/e/root/home/alice/proj ");
        let extra = r.pos("mount - /data /s/run/e/root/data ");
        let extra_ro = r.pos("mount - - /s/run/e/root/data MsFlags(MS_RDONLY");
        let pivot = r.pos("pivot_root . .");
        let umount = r.pos("umount .");
        let order = [
            private, overlay, dev, null, pts, console, ptmx, proc, sys_ro, sys_sub, tmp, resolv,
            home, project, extra, extra_ro, pivot, umount,
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{c:#?}");
        assert_eq!(c[pivot - 1], "chdir /s/run/e/root");
        assert_eq!(c.last().unwrap(), "chdir /");
    }

    /// One layer: /bin -> usr/bin, usr/bin/bash, etc/passwd and etc/group with root only.
    fn image_layer() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("l0");
        for d in ["usr/bin", "etc"] {
            fs_err::create_dir_all(l.join(d)).unwrap();
        }
        fs_err::write(l.join("usr/bin/bash"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", l.join("bin")).unwrap();
        fs_err::write(l.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs_err::write(l.join("etc/group"), "root:x:0:\n").unwrap();
        (t, l)
    }

    /// The test plan over `lowers`, its shell decided from them as `run` does.
    fn planned(lowers: Vec<PathBuf>) -> Plan {
        let mut p = with(plan(), |s| s.lowers = lowers);
        p.spec.shell = shell_from_layers(&p);
        p
    }

    #[test]
    fn the_shell_is_decided_from_the_layers_unless_they_leave_doubt() {
        let (_t, l) = image_layer();
        // The host's /bin/zsh is not in the image: bash, found through the /bin link.
        assert_eq!(
            planned(vec![l.clone()]).spec.shell.as_deref(),
            Some("/bin/bash")
        );
        let configured = with(planned(vec![l.clone()]), |s| {
            s.shell = Some("/bin/fish".into())
        });
        assert_eq!(shell_from_layers(&configured).as_deref(), Some("/bin/fish"));
        std::os::unix::fs::symlink("loop", l.join("loop")).unwrap();
        let doubt = Plan {
            host_shell: Some("/loop/zsh".into()),
            ..with(planned(vec![l]), |s| s.shell = None)
        };
        assert_eq!(shell_from_layers(&doubt), None);
    }

    #[test]
    fn accounts_are_read_from_the_layers_when_nothing_is_in_doubt() {
        let (_t, l) = image_layer();
        let p = planned(vec![l.clone()]);
        let files = accounts_from_layers(&p).unwrap();
        assert_eq!(
            files,
            [
                (
                    "/etc/passwd",
                    "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:100::/home/alice:/bin/bash\n"
                        .to_string()
                ),
                ("/etc/group", "root:x:0:\nalice:x:100:\n".to_string()),
            ],
            "host shell /bin/zsh is not in the image: bash, through the /bin link"
        );
        // The uid is the image's already: passwd stays as it is.
        fs_err::write(l.join("etc/passwd"), "img:x:1000:100::/h:/bin/sh\n").unwrap();
        let files = accounts_from_layers(&p).unwrap();
        assert_eq!(
            files.iter().map(|f| f.0).collect::<Vec<_>>(),
            ["/etc/group"]
        );
        // A symlinked /etc would be replaced by upper/etc: leave it to `finish`.
        let top = l.parent().unwrap().join("l1");
        fs_err::create_dir_all(&top).unwrap();
        std::os::unix::fs::symlink("/private/etc", top.join("etc")).unwrap();
        assert_eq!(accounts_from_layers(&planned(vec![l.clone(), top])), None);
        // No shell decided: leave it to `finish`.
        let undecided = with(planned(vec![l]), |s| s.shell = None);
        assert_eq!(accounts_from_layers(&undecided), None);
    }

    #[test]
    fn scratch_accounts_go_into_the_upper_directory_before_the_overlay_mount() {
        let (_t, l) = image_layer();
        let mut r = Recorder::default();
        let p = Plan {
            scratch: true,
            ..planned(vec![l])
        };
        build_root(&mut r, &p, None).unwrap();
        let c = &r.calls;
        let etc = r.pos("mkdir upper/etc");
        let passwd = r.pos("write upper/etc/passwd 70");
        let group = r.pos("write upper/etc/group 23");
        let overlay = r.pos("mount overlay overlay root");
        assert!(etc < passwd && passwd < group && group < overlay, "{c:#?}");
    }

    #[test]
    fn scratch_overlay_lives_in_a_tmpfs_on_the_entry() {
        let mut r = Recorder::default();
        let p = Plan {
            scratch: true,
            ..plan()
        };
        assert_eq!(
            build_root(&mut r, &p, None).unwrap(),
            RootFs::Overlay { accounts: false }
        );
        let c = &r.calls;
        let tmpfs = r.pos("mount tmpfs - /s/run MsFlags(MS_NOSUID) mode=0700");
        assert_eq!(
            c[tmpfs + 1..tmpfs + 12],
            [
                "mkdir /s/run/e",
                "chdir /s/run/e",
                "mkdir upper",
                "mkdir work",
                "mkdir root",
                "mkdir l",
                "symlink /s/l0 l/0",
                "symlink /s/l1 l/1",
                "symlink /s/l2 l/2",
                "xattr upper",
                "mount overlay overlay root MsFlags(MS_NOSUID) \
                 lowerdir=l/2:l/1:l/0,upperdir=upper,workdir=work,userxattr",
            ]
        );
        assert_eq!(c[tmpfs + 12], "chdir /");
        assert!(r.pos("mount - - / MsFlags(MS_REC | MS_PRIVATE)") < tmpfs);
        assert!(tmpfs < r.pos("mount tmpfs - /s/run/e/root/dev "));
        assert!(!c.iter().any(|c| c.starts_with("umount /s/run")));
        assert_eq!(
            c.iter().filter(|c| c.starts_with("mount overlay")).count(),
            1
        );
    }

    #[test]
    fn scratch_without_user_xattrs_in_tmpfs_uses_the_disk() {
        let mut r = Recorder {
            fail_xattr: Some(Errno::EOPNOTSUPP),
            ..Default::default()
        };
        let p = Plan {
            scratch: true,
            ..plan()
        };
        assert_eq!(
            build_root(&mut r, &p, None).unwrap(),
            RootFs::Overlay { accounts: false }
        );
        let c = &r.calls;
        let probe = r.pos("xattr upper");
        let umount = r.pos("umount /s/run");
        assert_eq!(
            c[umount - 1],
            "chdir /",
            "leave the tmpfs before unmounting it"
        );
        // Again on the disk, then the overlay there.
        assert_eq!(c[umount + 1], "mkdir /s/run/e");
        assert_eq!(c[umount + 2], "chdir /s/run/e");
        assert_eq!(c[umount + 3], "mkdir upper");
        let overlay = umount
            + r.calls[umount..]
                .iter()
                .position(|c| c.starts_with("mount overlay"))
                .unwrap();
        assert!(probe < umount && umount < overlay);
        assert!(!c[overlay..].iter().any(|c| c.starts_with("xattr")));
    }

    #[test]
    fn scratch_only_refuses_the_disk_and_says_why() {
        let mut r = Recorder {
            fail_xattr: Some(Errno::EOPNOTSUPP),
            ..Default::default()
        };
        let p = Plan {
            scratch: true,
            scratch_only: true,
            ..plan()
        };
        let e = build_root(&mut r, &p, None).unwrap_err();
        assert!(
            matches!(e, RuntimeError::ScratchRefused { errno } if errno == libc::EOPNOTSUPP),
            "{e:?}"
        );
        let umount = r.pos("umount /s/run");
        assert_eq!(r.calls.len(), umount + 1, "nothing made on the disk");
    }

    #[test]
    fn scratch_forced_flat_copies_onto_the_disk() {
        let mut r = Recorder::default();
        let p = Plan {
            scratch: true,
            force_flatten: true,
            ..plan()
        };
        assert!(matches!(
            build_root(&mut r, &p, None).unwrap(),
            RootFs::Flattened {
                errno: libc::EINVAL,
                ..
            }
        ));
        assert!(
            !r.calls
                .iter()
                .any(|c| c.starts_with("mount tmpfs - /s/run "))
        );
        assert!(r.pos("mkdir /s/run/e") < r.pos("mkdir root"));
        assert!(r.pos("mkdir root") < r.pos("flatten 3 /s/run/e/root"));
    }

    #[test]
    fn read_only_binds_take_one_mount_setattr_where_the_kernel_has_it() {
        let mut r = Recorder {
            setattr: true,
            ..Default::default()
        };
        build_root(&mut r, &plan(), None).unwrap();
        let c = &r.calls;
        let sys_bind = r.pos("mount - /sys /s/run/e/root/sys MsFlags(MS_BIND | MS_REC)");
        assert_eq!(c[sys_bind + 1], "setattr_ro /s/run/e/root/sys");
        let extra = r.pos("mount - /data /s/run/e/root/data ");
        assert_eq!(c[extra + 1], "setattr_ro /s/run/e/root/data");
        assert!(!c.iter().any(|c| c.contains("MS_REMOUNT")), "{c:#?}");
    }

    #[test]
    fn overlay_einval_falls_back_to_flattened_copy() {
        let mut r = Recorder {
            fail_fstype: Some(("overlay", Errno::EINVAL)),
            ..Default::default()
        };
        let fs = build_root(&mut r, &plan(), None).unwrap();
        assert!(matches!(
            fs,
            RootFs::Flattened {
                errno: libc::EINVAL,
                ..
            }
        ));
        let flat = r.pos("flatten 3 /s/run/e/root");
        let bind = r.pos("mount - /s/run/e/root /s/run/e/root MsFlags(MS_BIND | MS_REC)");
        assert!(r.pos("mount overlay") < flat && flat < bind);
        assert!(bind < r.pos("mount tmpfs - /s/run/e/root/dev "));
    }

    #[test]
    fn persistent_upper_never_falls_back_to_a_copy() {
        let mut r = Recorder {
            fail_fstype: Some(("overlay", Errno::EINVAL)),
            ..Default::default()
        };
        let p = Plan {
            force_flatten: true,
            ..with(plan(), |s| s.upper = Some("/s/layer-in-progress".into()))
        };
        let e = build_root(&mut r, &p, None).unwrap_err();
        assert!(matches!(e, RuntimeError::OverlayRequired { errno } if errno == libc::EINVAL));
        assert!(!r.calls.iter().any(|c| c.starts_with("flatten")));
    }

    #[test]
    fn overlay_other_errors_are_reported() {
        let mut r = Recorder {
            fail_fstype: Some(("overlay", Errno::ENOENT)),
            ..Default::default()
        };
        let e = build_root(&mut r, &plan(), None).unwrap_err();
        assert!(matches!(e, RuntimeError::Mount { ref what, .. } if what == "overlay"));
    }

    #[test]
    fn missing_extra_mount_source_is_an_error() {
        let mut r = Recorder {
            missing: vec!["/data".into()],
            ..Default::default()
        };
        let e = build_root(&mut r, &plan(), None).unwrap_err();
        assert!(matches!(e, RuntimeError::MountSource { .. }));
        assert!(!r.calls.iter().any(|c| c.starts_with("pivot_root")));
    }

    #[test]
    fn too_many_layers_is_an_error_not_a_truncated_mount() {
        assert!(overlay_options(100).is_ok());
        assert!(matches!(
            overlay_options(1000),
            Err(RuntimeError::TooManyLayers { layers: 1000 })
        ));
    }

    #[test]
    fn finish_writes_passwd_then_hostname_cwd_no_new_privs() {
        let mut r = Recorder {
            file: Some("root:x:0:0:root:/root:/bin/sh\n".into()),
            ..Default::default()
        };
        let argv = finish(&mut r, &plan(), false).unwrap();
        assert_eq!(argv, ["/bin/zsh"], "the host shell, which the image has");
        let passwd = r.pos("write /etc/passwd");
        let group = r.pos("write /etc/group");
        let host = r.pos("sethostname proj");
        let cwd = r.pos("chdir /home/alice/proj/sub");
        let nnp = r.pos("no_new_privs");
        assert!(passwd < group && group < host && host < cwd && cwd < nnp);
        // Then the container's own session keyring and, last, the filter: PID 1 is under it.
        assert_eq!(
            r.calls[nnp + 1..],
            ["join_session_keyring", "seccomp allow=[] chown=false"]
        );
    }

    #[test]
    fn with_the_gpu_the_command_runs_after_the_images_ldconfig() {
        let mut r = Recorder {
            file: Some("root:x:0:0:root:/root:/bin/sh\n".into()),
            dirs: vec!["/etc/ld.so.conf.d".into()],
            missing: vec!["/sbin/ldconfig".into()],
            ..Default::default()
        };
        let p = with(plan(), |s| {
            s.gpu = Some(gpu());
            s.argv = vec!["python3".into(), "train.py".into()];
        });
        let argv = finish(&mut r, &p, false).unwrap();
        assert_eq!(
            argv,
            [
                "/bin/sh",
                "-c",
                "/usr/sbin/ldconfig 2>/dev/null; exec \"$@\"",
                "sh",
                "python3",
                "train.py"
            ]
        );
        assert!(r.pos("write /etc/ld.so.conf.d/000-devenv-nvidia.conf") < r.pos("no_new_privs"));
        // No ld.so.conf.d (or no ldconfig, as in musl images): the command as it is.
        let mut bare = Recorder {
            file: Some("root:x:0:0:root:/root:/bin/sh\n".into()),
            missing: vec!["/etc/ld.so.conf.d".into()],
            ..Default::default()
        };
        assert_eq!(
            finish(&mut bare, &p, false).unwrap(),
            ["python3", "train.py"]
        );
    }

    #[test]
    fn root_locks_the_mounts_in_a_nested_namespace_before_the_filter() {
        let mut r = Recorder {
            file: Some("root:x:0:0:root:/root:/bin/sh\n".into()),
            ..Default::default()
        };
        let plan = with(plan(), |s| {
            s.root = true;
            s.sandbox.allow_syscalls = vec!["io_uring".into()];
        });
        finish(&mut r, &plan, false).unwrap();
        let nnp = r.pos("no_new_privs");
        assert_eq!(
            r.calls[nnp + 1..],
            [
                "unshare CloneFlags(CLONE_NEWNS | CLONE_NEWUSER)",
                "write /proc/self/setgroups deny",
                "write /proc/self/uid_map 0 0 1",
                "write /proc/self/gid_map 0 0 1",
                "join_session_keyring",
                "seccomp allow=[\"io_uring\"] chown=true",
            ]
        );
    }

    #[test]
    fn finish_as_root_keeps_an_existing_root_entry() {
        let mut r = Recorder {
            file: Some("root:x:0:0:root:/root:/bin/sh\n".into()),
            missing: vec![
                "/bin/zsh".into(),
                "/bin/bash".into(),
                "/usr/bin/bash".into(),
            ],
            ..Default::default()
        };
        let p = with(plan(), |s| {
            s.root = true;
            s.argv = vec!["true".into()];
        });
        assert_eq!(finish(&mut r, &p, false).unwrap(), ["true"]);
        assert!(!r.calls.iter().any(|c| c.starts_with("write /etc/")));
    }

    #[test]
    fn finish_leaves_accounts_written_before_the_mount_alone() {
        let mut r = Recorder {
            file: Some("root:x:0:0:root:/root:/bin/sh\n".into()),
            ..Default::default()
        };
        assert_eq!(finish(&mut r, &plan(), true).unwrap(), ["/bin/zsh"]);
        assert!(
            !r.calls.iter().any(|c| c.contains("/etc/")),
            "{:?}",
            r.calls
        );
        r.pos("sethostname proj");
        r.pos("no_new_privs");
    }

    #[test]
    fn hostname_is_sanitised() {
        use super::super::host_name;
        assert_eq!(host_name("my_proj.v2"), "my-proj-v2");
        assert_eq!(
            host_name("My Project_2"),
            "my-project-2",
            "lowercase, as project names"
        );
        assert_eq!(host_name("__"), "devenv");
        assert_eq!(host_name("..."), "devenv");
        assert_eq!(host_name(&"a".repeat(100)).len(), 63);
    }

    fn gpu() -> super::super::gpu::HostGpu {
        super::super::gpu::HostGpu {
            devices: vec![
                "/dev/nvidia-caps".into(),
                "/dev/nvidia0".into(),
                "/dev/nvidiactl".into(),
            ],
            libraries: vec![(
                "libcuda.so.1".into(),
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            )],
            programs: vec!["/usr/bin/nvidia-smi".into()],
            persistenced: Some("/run/nvidia-persistenced/socket".into()),
            uvm: true,
        }
    }

    #[test]
    fn gpu_devices_go_into_dev_and_the_driver_read_only_into_usr_local_nvidia() {
        let mut r = Recorder {
            dirs: vec!["/dev/nvidia-caps".into()],
            ..Recorder::default()
        };
        let p = with(plan(), |s| s.gpu = Some(gpu()));
        build_root(&mut r, &p, None).unwrap();
        let c = &r.calls;
        let dev = r.pos("mount tmpfs - /s/run/e/root/dev ");
        let caps_dir = r.pos("mkdir /s/run/e/root/dev/nvidia-caps");
        let caps = r.pos(
            "mount - /dev/nvidia-caps /s/run/e/root/dev/nvidia-caps MsFlags(MS_BIND | MS_REC)",
        );
        let card = r.pos("mount - /dev/nvidia0 /s/run/e/root/dev/nvidia0 ");
        let ctl = r.pos("mount - /dev/nvidiactl /s/run/e/root/dev/nvidiactl ");
        let top =
            r.pos("mount tmpfs - /s/run/e/root/usr/local/nvidia MsFlags(MS_NOSUID | MS_NODEV)");
        let lib = r.pos(
            "mount - /usr/lib/x86_64-linux-gnu/libcuda.so.1 /s/run/e/root/usr/local/nvidia/lib64/libcuda.so.1 ",
        );
        let lib_ro = r.pos("setattr_ro /s/run/e/root/usr/local/nvidia/lib64/libcuda.so.1");
        let smi =
            r.pos("mount - /usr/bin/nvidia-smi /s/run/e/root/usr/local/nvidia/bin/nvidia-smi ");
        let socket = r.pos(
            "mount - /run/nvidia-persistenced/socket /s/run/e/root/run/nvidia-persistenced/socket ",
        );
        let home = r.pos("mount - /s/home /s/run/e/root/home/alice ");
        let pivot = r.pos("pivot_root . .");
        let order = [
            dev, caps_dir, caps, card, ctl, top, lib, lib_ro, smi, socket, home, pivot,
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{c:#?}");
        assert!(
            !c.iter()
                .any(|l| l.contains("/root/dev/nvidia") && l.contains("RDONLY")),
            "devices stay writable: {c:#?}"
        );
        let env = environment(&p);
        assert!(env.contains(&("PATH".into(), "/bin:/usr/local/nvidia/bin".into())));
        assert!(env.contains(&("LD_LIBRARY_PATH".into(), "/usr/local/nvidia/lib64".into())));
        assert!(env.contains(&(
            "TRITON_LIBCUDA_PATH".into(),
            "/usr/local/nvidia/lib64".into()
        )));
        assert!(
            !environment(&plan())
                .iter()
                .any(|(k, _)| k == "LD_LIBRARY_PATH")
        );
    }

    #[test]
    fn environment_fills_home_user_keeps_given_path() {
        let env = environment(&plan());
        assert!(env.contains(&("PATH".into(), "/bin".into())));
        assert!(env.contains(&("HOME".into(), "/home/alice".into())));
        assert!(env.contains(&("USER".into(), "alice".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }
}
