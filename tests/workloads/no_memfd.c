/* A sandbox that refuses memfd_create: installs a seccomp filter under which
 * memfd_create(2) fails with EPERM (everything else is allowed), then execs its
 * arguments, `allocprof run ...` in test-robust.sh.  A container's or a service manager's
 * filter (systemd's MemoryDenyWriteExecute, a SystemCallFilter) does the same: run's own
 * filter state already holds it, so the agent tries to register, and cannot.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
        if (argc < 2)
                return 2;
        struct sock_filter f[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_memfd_create, 1, 0),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        };
        struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
                perror("seccomp");
                return 1;
        }
        execvp(argv[1], argv + 1);
        perror(argv[1]);
        return 127;
}
