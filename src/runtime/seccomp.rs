//! Ownership changes to ids the namespace does not map succeed without effect, as podman's
//! `ignore_chown_errors` does. A root container maps one id (the user, as 0), so
//! `chown(f, 6, 12)` fails with EINVAL; dpkg then refuses to unpack a package shipping a file
//! owned by `man:man` (man-db) and maintainer scripts' `chgrp` fail. A seccomp filter makes the
//! chown family return 0 without running when the uid or gid asked for is neither 0 nor -1
//! (unchanged); ownership to 0 still happens for real. Files keep the user's ownership, which
//! is all a single-id namespace can express.
//!
//! Invariant: only the chown family is touched, and only for ids the namespace cannot hold;
//! every other syscall runs unfiltered.

use nix::errno::Errno;

// linux/filter.h and linux/seccomp.h; stable kernel ABI.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
/// SECCOMP_RET_ERRNO with errno 0: the syscall is skipped and returns 0.
const RET_SUCCESS: u32 = 0x0005_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const fn offset_arg(i: u32) -> u32 {
    // struct seccomp_data: nr, arch, instruction_pointer (u64), args[6] (u64); the low half of
    // an argument comes first on a little-endian machine, where uid_t and gid_t live.
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

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

/// The filter program: for each chown syscall, allow when uid and gid are each 0 or -1,
/// else return 0 without running it.
pub fn program() -> Vec<Insn> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jeq(AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_ALLOW),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    // Each syscall: a jump over its 8-instruction check when the number differs (the
    // accumulator still holds the number there).
    for &(nr, uid_arg) in CHOWNS {
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
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p
}

/// Install [`program`] for this process and its children. Needs no-new-privs set first.
pub fn ignore_unmapped_chown() -> Result<(), Errno> {
    let prog: Vec<libc::sock_filter> = program()
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
    // SAFETY: fprog points at `prog`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the few instructions the program uses.
    fn run(prog: &[Insn], nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&AUDIT_ARCH.to_le_bytes());
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
                BPF_RET_K => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn chown_to_unmapped_ids_is_skipped_to_root_or_unchanged_runs() {
        let p = program();
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
}
