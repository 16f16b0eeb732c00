//! The seccomp filter every container runs under: a short deny-list in the spirit of Docker's,
//! podman's and Flatpak's profiles, for what a development environment never needs and what
//! has been a way out of containers or into the kernel.
//!
//! - Refused with EPERM, always: `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)`, which push characters
//!   into a terminal's input queue, where the user's own shell on the host reads them once
//!   devenv exits (CVE-2017-5226 in bubblewrap, CVE-2016-7545 in SELinux's sandbox). Only the
//!   low 32 bits of the request are compared, as the kernel reads them (Flatpak's
//!   CVE-2019-10063 was a filter that compared 64).
//! - Refused with EPERM unless `[container].allow_syscalls` names them ([`GROUPS`]): the
//!   keyring (`add_key`, `keyctl`, `request_key`: the host's session keys), kernel modules and
//!   kexec, `open_by_handle_at` (the "shocker" escape), `userfaultfd` and `bpf` (kernel
//!   exploitation aids), and io_uring (most of the kernel's recent local privilege escalations;
//!   Docker, podman and ChromeOS refuse it too).
//! - With `--root` (and in build steps), ownership changes to ids the namespace does not map
//!   succeed without effect, as podman's `ignore_chown_errors` does: the namespace maps one id
//!   (the user, as 0), so `chown(f, 6, 12)` would fail with EINVAL and dpkg would refuse to
//!   unpack a package shipping a file owned by `man:man`. Ownership to 0 still happens.
//!
//! Everything else runs: ptrace of one's own processes (debuggers), `perf_event_open` where the
//! host's `perf_event_paranoid` allows it, nested user namespaces, mount inside the container.
//!
//! Invariant: a syscall made through another ABI cannot slip past the filter. On x86_64 the
//! i386 ABI (`int 0x80`) has its own table of the same calls; x32 calls (numbers with bit 30)
//! and any other architecture fail with ENOSYS, as on a kernel built without them.

use nix::errno::Errno;

// linux/filter.h and linux/seccomp.h; stable kernel ABI.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
/// SECCOMP_RET_ERRNO: the syscall is skipped and returns -errno (0: success).
const RET_ERRNO: u32 = 0x0005_0000;
const RET_SUCCESS: u32 = RET_ERRNO;
const RET_EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const fn offset_arg(i: u32) -> u32 {
    // struct seccomp_data: nr, arch, instruction_pointer (u64), args[6] (u64); the low half of
    // an argument comes first on a little-endian machine, where uid_t, gid_t and an ioctl's
    // request (an unsigned int to the kernel) live.
    16 + 8 * i
}

/// The terminal ioctls that inject input (tty_ioctl(4), ioctl_console(2)).
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
/// x86_64's other ABIs: i386 (its own numbers, arch AUDIT_ARCH_I386) and x32 (arch x86_64,
/// numbers with __X32_SYSCALL_BIT).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// One refused syscall: its name, the native number and, on x86_64, the i386 one.
#[derive(Clone, Copy, Debug)]
struct Call {
    name: &'static str,
    nr: i64,
    i386: Option<i64>,
}

#[cfg(target_arch = "x86_64")]
const fn call(name: &'static str, nr: i64, i386: i64) -> Call {
    Call {
        name,
        nr,
        i386: if i386 < 0 { None } else { Some(i386) },
    }
}
#[cfg(not(target_arch = "x86_64"))]
const fn call(name: &'static str, nr: i64, _: i64) -> Call {
    Call {
        name,
        nr,
        i386: None,
    }
}

/// What `[container].allow_syscalls` can let through: a group name, or any syscall in one.
/// The i386 numbers are from arch/x86/entry/syscalls/syscall_32.tbl (-1: none).
pub const GROUPS: &[(&str, &[&str])] = &[
    ("keyring", &["add_key", "keyctl", "request_key"]),
    ("modules", &["init_module", "finit_module", "delete_module"]),
    ("kexec", &["kexec_load", "kexec_file_load"]),
    ("open_by_handle_at", &["open_by_handle_at"]),
    ("userfaultfd", &["userfaultfd"]),
    ("bpf", &["bpf"]),
    (
        "io_uring",
        &["io_uring_setup", "io_uring_enter", "io_uring_register"],
    ),
];

const REFUSED: &[Call] = &[
    call("add_key", libc::SYS_add_key, 286),
    call("keyctl", libc::SYS_keyctl, 288),
    call("request_key", libc::SYS_request_key, 287),
    call("init_module", libc::SYS_init_module, 128),
    call("finit_module", libc::SYS_finit_module, 350),
    call("delete_module", libc::SYS_delete_module, 129),
    call("kexec_load", libc::SYS_kexec_load, 283),
    call("kexec_file_load", libc::SYS_kexec_file_load, -1),
    call("open_by_handle_at", libc::SYS_open_by_handle_at, 342),
    call("userfaultfd", libc::SYS_userfaultfd, 374),
    call("bpf", libc::SYS_bpf, 357),
    call("io_uring_setup", libc::SYS_io_uring_setup, 425),
    call("io_uring_enter", libc::SYS_io_uring_enter, 426),
    call("io_uring_register", libc::SYS_io_uring_register, 427),
];

/// ioctl's numbers: native, i386.
const IOCTL: (i64, i64) = (libc::SYS_ioctl, 54);

/// (syscall number, index of its uid argument; the gid follows).
#[cfg(target_arch = "x86_64")]
const CHOWNS: &[(i64, u32)] = &[
    (libc::SYS_chown, 1),
    (libc::SYS_lchown, 1),
    (libc::SYS_fchown, 1),
    (libc::SYS_fchownat, 2),
];
#[cfg(target_arch = "aarch64")]
const CHOWNS: &[(i64, u32)] = &[(libc::SYS_fchown, 1), (libc::SYS_fchownat, 2)];

/// Whether `name` is something `[container].allow_syscalls` may name: a group or a syscall
/// of one.
pub fn is_allowable(name: &str) -> bool {
    GROUPS
        .iter()
        .any(|(g, calls)| *g == name || calls.contains(&name))
}

/// The container's filter: what it lets through beyond the default, and whether unmapped
/// chowns are skipped (`--root`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Group or syscall names from [`GROUPS`] (checked when env.toml is read).
    pub allow: Vec<String>,
    pub ignore_unmapped_chown: bool,
}

impl Profile {
    fn refuses(&self, c: &Call) -> bool {
        !self.allow.iter().any(|a| {
            a == c.name
                || GROUPS
                    .iter()
                    .any(|(g, calls)| g == a && calls.contains(&c.name))
        })
    }

    /// Whether the keyring calls are refused.
    pub fn refuses_keyring(&self) -> bool {
        REFUSED
            .iter()
            .filter(|c| c.name == "keyctl")
            .all(|c| self.refuses(c))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// The instructions for one ABI, entered with the syscall number loaded; always returns.
/// The refused numbers go in as sorted ranges, two instructions each: installing a filter
/// costs about a microsecond per instruction (the kernel converts, checks and compiles it at
/// every container start), so fewer is faster.
fn abi_section(profile: &Profile, refused: &[i64], ioctl: i64, chowns: &[(i64, u32)]) -> Vec<Insn> {
    let mut p = Vec::new();
    if profile.ignore_unmapped_chown {
        // Each syscall: a jump over its 8-instruction check when the number differs (the
        // accumulator still holds the number there).
        for &(nr, uid_arg) in chowns {
            p.extend([
                jeq(nr as u32, 0, 8),
                stmt(BPF_LD_W_ABS, offset_arg(uid_arg)),
                jeq(0, 1, 0),        // uid 0: check the gid
                jeq(u32::MAX, 0, 4), // uid -1: check the gid; else skip the call
                stmt(BPF_LD_W_ABS, offset_arg(uid_arg + 1)),
                jeq(0, 1, 0),        // gid 0: run it
                jeq(u32::MAX, 0, 1), // gid -1: run it; else skip the call
                stmt(BPF_RET_K, RET_ALLOW),
                stmt(BPF_RET_K, RET_SUCCESS),
            ]);
        }
    }
    p.extend([
        jeq(ioctl as u32, 0, 5),
        stmt(BPF_LD_W_ABS, offset_arg(1)),
        jeq(TIOCSTI, 2, 0),
        jeq(TIOCLINUX, 1, 0),
        stmt(BPF_RET_K, RET_ALLOW),
        stmt(BPF_RET_K, RET_EPERM),
    ]);
    // Ranges ascending: below a range's start (and above every earlier one's end) it runs;
    // within it, EPERM. The two returns follow the last range.
    let ranges = ranges(refused);
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let after = (2 * (ranges.len() - i - 1)) as u8; // instructions of the later ranges
        p.extend([
            Insn {
                code: BPF_JGE_K,
                jt: 0,
                jf: after + 1, // below `start`: to RET_ALLOW
                k: start,
            },
            Insn {
                code: BPF_JGT_K,
                jt: 0,
                jf: after + 1, // at most `end`: to RET_EPERM
                k: end,
            },
        ]);
    }
    p.extend([stmt(BPF_RET_K, RET_ALLOW), stmt(BPF_RET_K, RET_EPERM)]);
    p
}

/// `nrs` as sorted, merged ranges of consecutive numbers.
fn ranges(nrs: &[i64]) -> Vec<(u32, u32)> {
    let mut sorted: Vec<u32> = nrs.iter().map(|&n| n as u32).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for n in sorted {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// The filter program for `profile`.
pub fn program(profile: &Profile) -> Vec<Insn> {
    let native: Vec<i64> = REFUSED
        .iter()
        .filter(|c| profile.refuses(c))
        .map(|c| c.nr)
        .collect();
    let mut section = Vec::new();
    #[cfg(target_arch = "x86_64")]
    section.extend([jeq_ge(X32_SYSCALL_BIT, 0, 1), stmt(BPF_RET_K, RET_ENOSYS)]);
    section.extend(abi_section(profile, &native, IOCTL.0, CHOWNS));
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jeq(AUDIT_ARCH, 0, (section.len() + 1) as u8),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    p.extend(section);
    #[cfg(target_arch = "x86_64")]
    {
        // The accumulator still holds the arch here: only the native section loads the number.
        let i386: Vec<i64> = REFUSED
            .iter()
            .filter(|c| profile.refuses(c))
            .filter_map(|c| c.i386)
            .collect();
        let compat = abi_section(&Profile::default(), &i386, IOCTL.1, &[]);
        p.push(jeq(AUDIT_ARCH_I386, 0, (compat.len() + 1) as u8));
        p.push(stmt(BPF_LD_W_ABS, OFFSET_NR));
        p.extend(compat);
    }
    p.push(stmt(BPF_RET_K, RET_ENOSYS));
    p
}

#[cfg(target_arch = "x86_64")]
const fn jeq_ge(k: u32, jt: u8, jf: u8) -> Insn {
    Insn {
        code: BPF_JGE_K,
        jt,
        jf,
        k,
    }
}

/// Install [`program`] for this process and its children. Needs no-new-privs set first.
pub fn install(profile: &Profile) -> Result<(), Errno> {
    let prog: Vec<libc::sock_filter> = program(profile)
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // seccomp(2) with SECCOMP_FILTER_FLAG_SPEC_ALLOW (Linux 4.17): a filter does not switch on
    // the speculative-store-bypass mitigation for the container (a slowdown of numeric code
    // that guards against nothing the filter is for; podman's crun does the same). Older
    // kernels refuse the flag with EINVAL: then without it.
    for flags in [libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW, 0] {
        // SAFETY: fprog points at `prog`, alive for the call; the kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        if Errno::last() != Errno::EINVAL || flags == 0 {
            break;
        }
    }
    Err(Errno::last())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the few instructions the program uses.
    fn run_arch(prog: &[Insn], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                BPF_JEQ_K => pc += if acc == i.k { i.jt } else { i.jf } as usize,
                BPF_JGE_K => pc += if acc >= i.k { i.jt } else { i.jf } as usize,
                BPF_JGT_K => pc += if acc > i.k { i.jt } else { i.jf } as usize,
                BPF_RET_K => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    fn run(prog: &[Insn], nr: i64, args: [u64; 6]) -> u32 {
        run_arch(prog, AUDIT_ARCH, nr, args)
    }

    fn root() -> Profile {
        Profile {
            ignore_unmapped_chown: true,
            ..Profile::default()
        }
    }

    #[test]
    fn chown_to_unmapped_ids_is_skipped_to_root_or_unchanged_runs() {
        let p = program(&root());
        let minus1 = u32::MAX as u64;
        for &(nr, uid_arg) in CHOWNS {
            let call = |uid: u64, gid: u64| {
                let mut a = [0u64; 6];
                a[uid_arg as usize] = uid;
                a[uid_arg as usize + 1] = gid;
                run(&p, nr, a)
            };
            assert_eq!(call(0, 0), RET_ALLOW, "syscall {nr}");
            assert_eq!(call(minus1, 0), RET_ALLOW);
            assert_eq!(call(0, minus1), RET_ALLOW);
            assert_eq!(call(6, 12), RET_SUCCESS, "man:man is skipped");
            assert_eq!(call(0, 4), RET_SUCCESS, "root:adm is skipped");
            assert_eq!(call(1000, minus1), RET_SUCCESS);
        }
        assert_eq!(run(&p, libc::SYS_openat, [0, 0, 6, 12, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p, libc::SYS_write, [1, 6, 12, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn chown_runs_unfiltered_without_root() {
        let p = program(&Profile::default());
        let (nr, uid_arg) = CHOWNS[0];
        let mut a = [0u64; 6];
        a[uid_arg as usize] = 6;
        a[uid_arg as usize + 1] = 12;
        assert_eq!(run(&p, nr, a), RET_ALLOW);
    }

    #[test]
    fn terminal_injection_is_refused_whatever_the_high_bits_and_other_ioctls_run() {
        for profile in [Profile::default(), root()] {
            let p = program(&profile);
            let ioctl = |req: u64| run(&p, libc::SYS_ioctl, [0, req, 0, 0, 0, 0]);
            assert_eq!(ioctl(TIOCSTI as u64), RET_EPERM);
            assert_eq!(ioctl(TIOCLINUX as u64), RET_EPERM);
            assert_eq!(ioctl(0xffff_ffff_0000_0000 | TIOCSTI as u64), RET_EPERM);
            assert_eq!(ioctl(libc::TIOCGWINSZ), RET_ALLOW);
            assert_eq!(ioctl(libc::TIOCSPGRP), RET_ALLOW);
            assert_eq!(ioctl(libc::FIONREAD), RET_ALLOW);
        }
    }

    #[test]
    fn refused_calls_fail_with_eperm_until_allowed_by_group_or_name() {
        let p = program(&Profile::default());
        for c in REFUSED {
            assert_eq!(run(&p, c.nr, [0; 6]), RET_EPERM, "{}", c.name);
        }
        for ok in [
            libc::SYS_ptrace,
            libc::SYS_perf_event_open,
            libc::SYS_unshare,
        ] {
            assert_eq!(run(&p, ok, [0; 6]), RET_ALLOW, "syscall {ok}");
        }
        let allowed = Profile {
            allow: vec!["keyring".into(), "io_uring_setup".into()],
            ..Profile::default()
        };
        let p = program(&allowed);
        for c in REFUSED {
            let open = matches!(
                c.name,
                "add_key" | "keyctl" | "request_key" | "io_uring_setup"
            );
            let want = if open { RET_ALLOW } else { RET_EPERM };
            assert_eq!(run(&p, c.nr, [0; 6]), want, "{}", c.name);
        }
        assert!(!allowed.refuses_keyring());
        assert!(Profile::default().refuses_keyring());
        // TIOCSTI is not in any group: no allow list opens it.
        assert_eq!(
            run(&p, libc::SYS_ioctl, [0, TIOCSTI as u64, 0, 0, 0, 0]),
            RET_EPERM
        );
    }

    #[test]
    fn every_group_member_is_a_refused_call_and_names_are_checked() {
        for (_, calls) in GROUPS {
            for c in *calls {
                assert!(REFUSED.iter().any(|r| r.name == *c), "{c}");
            }
        }
        assert!(
            REFUSED
                .iter()
                .all(|r| GROUPS.iter().any(|(_, calls)| calls.contains(&r.name)))
        );
        assert!(is_allowable("keyring") && is_allowable("bpf") && is_allowable("keyctl"));
        assert!(!is_allowable("ptrace") && !is_allowable("tiocsti") && !is_allowable(""));
    }

    #[test]
    fn every_syscall_number_around_the_refused_ones_is_judged_right() {
        // The ranges' edges: each refused number, its neighbours, and everything in between.
        let profile = Profile::default();
        let p = program(&profile);
        let refused: Vec<i64> = REFUSED.iter().map(|c| c.nr).collect();
        for nr in 0..=500 {
            let want = if refused.contains(&nr) {
                RET_EPERM
            } else {
                RET_ALLOW
            };
            assert_eq!(run(&p, nr, [0; 6]), want, "syscall {nr}");
        }
        assert_eq!(ranges(&[5, 3, 4, 9, 1]), [(1, 1), (3, 5), (9, 9)]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn other_abis_cannot_slip_past() {
        let p = program(&Profile::default());
        // i386 (int 0x80): its own numbers, the same refusals.
        let i386 = |nr: i64, args: [u64; 6]| run_arch(&p, AUDIT_ARCH_I386, nr, args);
        assert_eq!(i386(288, [0; 6]), RET_EPERM, "keyctl");
        assert_eq!(i386(425, [0; 6]), RET_EPERM, "io_uring_setup");
        assert_eq!(i386(54, [0, TIOCSTI as u64, 0, 0, 0, 0]), RET_EPERM);
        assert_eq!(i386(54, [0, libc::TIOCGWINSZ, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(i386(250, [0; 6]), RET_ALLOW, "i386's 250 is fadvise64");
        // x32: the x86_64 arch with bit 30 in the number.
        let x32 = (X32_SYSCALL_BIT as i64) + libc::SYS_keyctl;
        assert_eq!(run(&p, x32, [0; 6]), RET_ENOSYS);
        assert_eq!(run(&p, X32_SYSCALL_BIT as i64 + 1, [0; 6]), RET_ENOSYS);
        // Any other architecture.
        assert_eq!(run_arch(&p, 0xC000_00B7, 0, [0; 6]), RET_ENOSYS);
    }
}
