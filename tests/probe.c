/* The attacker inside the env for tests/containment.rs, built by the test with `cc -static` and
 * put into a busybox image as /usr/bin/probe. Each subcommand tries one way out and prints
 * what happened, one line per try; it never decides pass or fail itself.
 *
 *   probe tiocsti TEXT        push TEXT into the terminal's input queue (fd 0)
 *   probe fds                 list descriptors above 2; through each directory, try the host
 *   probe key ID DESC         read key ID, search the session keyring for a user key DESC
 *   probe syscalls            try each call the seccomp profile refuses, print its errno
 *   probe ptrace              attach to a child of ours, as a debugger does
 *   probe listen              LISTEN_PID against our pid, LISTEN_FDS
 *   probe with-key DESC PAYLOAD CMD...   (on the host) add a user key to a fresh session
 *                             keyring, then exec CMD with "{key}" in its arguments replaced
 *                             by the key's id
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEYCTL_READ 11
#define KEYCTL_SEARCH 10
#define KEY_SPEC_SESSION_KEYRING -3

static const char *err(long rc) { return rc < 0 ? strerror(errno) : "ok"; }

static int tiocsti(const char *text) {
    long rc = 0;
    for (const char *c = text; *c && rc == 0; c++) {
        char ch = *c == '|' ? '\n' : *c; /* '|' stands for Enter */
        rc = ioctl(0, TIOCSTI, &ch);
    }
    printf("tiocsti: %s\n", err(rc));
    return 0;
}

static int fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        printf("fds: cannot list: %s\n", strerror(errno));
        return 1;
    }
    int self = dirfd(d), found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd <= 2 || fd == self) continue;
        found = 1;
        char link[4096] = "";
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        if (readlink(path, link, sizeof link - 1) < 0) strcpy(link, "?");
        struct stat st;
        int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
        printf("fd %d: %s%s\n", fd, link, dir ? " (directory)" : "");
        if (dir) {
            /* The CVE-2024-21626 walk: up from the host directory to the host's root. */
            int up = openat(fd, "../../../../../../..", O_RDONLY | O_DIRECTORY);
            printf("fd %d: host root %s\n", fd, up >= 0 ? "reached" : strerror(errno));
        }
    }
    if (!found) printf("fds: none above 2\n");
    closedir(d);
    return 0;
}

static int key(const char *id, const char *desc) {
    char buf[256] = "";
    long n = syscall(SYS_keyctl, KEYCTL_READ, atol(id), buf, sizeof buf - 1);
    if (n >= 0) {
        buf[n < (long)sizeof buf ? n : (long)sizeof buf - 1] = 0;
        printf("key read: %s\n", buf);
    } else {
        printf("key read: %s\n", strerror(errno));
    }
    long found = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user", desc, 0);
    printf("key search: %s\n", found >= 0 ? "found" : strerror(errno));
    return 0;
}

static void try(const char *name, long rc) {
    printf("%s: %s\n", name, rc >= 0 ? "allowed" : strerror(errno));
}

static int syscalls(void) {
    char params[120] = {0};
    try("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, KEY_SPEC_SESSION_KEYRING));
    try("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, KEY_SPEC_SESSION_KEYRING, 0));
    try("request_key", syscall(SYS_request_key, "user", "probe-none", NULL, 0));
    try("init_module", syscall(SYS_init_module, NULL, 0, ""));
    try("finit_module", syscall(SYS_finit_module, -1, "", 0));
    try("delete_module", syscall(SYS_delete_module, "probe", 0));
    try("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    try("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0));
    try("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    try("userfaultfd", syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */ | O_CLOEXEC));
    try("bpf", syscall(SYS_bpf, 0, NULL, 0));
    try("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    try("getpid", syscall(SYS_getpid));
    try("unshare_user", syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */));
    return 0;
}

static int trace(void) {
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    long rc = ptrace(PTRACE_ATTACH, child, 0, 0);
    int status = 0;
    if (rc == 0) waitpid(child, &status, 0);
    printf("ptrace attach: %s\n", rc == 0 && WIFSTOPPED(status) ? "ok" : strerror(errno));
    if (rc == 0) ptrace(PTRACE_DETACH, child, 0, 0);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}

static int listen_fds(void) {
    const char *pid = getenv("LISTEN_PID"), *n = getenv("LISTEN_FDS");
    printf("listen: pid %s, fds %s\n",
           pid && atol(pid) == (long)getpid() ? "is ours" : (pid ? pid : "unset"),
           n ? n : "unset");
    return fds();
}

static int with_key(int argc, char **argv) {
    if (argc < 5) return 2;
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0) {
        perror("probe: keyctl join");
        return 1;
    }
    long id = syscall(SYS_add_key, "user", argv[2], argv[3], strlen(argv[3]),
                      KEY_SPEC_SESSION_KEYRING);
    if (id < 0) {
        perror("probe: add_key");
        return 1;
    }
    char ids[32];
    snprintf(ids, sizeof ids, "%ld", id);
    for (int i = 4; i < argc; i++)
        if (!strcmp(argv[i], "{key}")) argv[i] = ids;
    execvp(argv[4], argv + 4);
    perror("probe: exec");
    return 127;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "tiocsti") && argc == 3) return tiocsti(argv[2]);
    if (!strcmp(cmd, "fds")) return fds();
    if (!strcmp(cmd, "key") && argc == 4) return key(argv[2], argv[3]);
    if (!strcmp(cmd, "syscalls")) return syscalls();
    if (!strcmp(cmd, "ptrace")) return trace();
    if (!strcmp(cmd, "listen")) return listen_fds();
    if (!strcmp(cmd, "with-key")) return with_key(argc, argv);
    fprintf(stderr, "probe: unknown command\n");
    return 2;
}
