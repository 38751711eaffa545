/* A program that sandboxes itself, then forks: it installs a seccomp filter that kills
 * the process on memfd_create, socket, connect and sendmsg (what an agent needs to
 * register a new process), through prctl(PR_SET_SECCOMP) ("prctl") or
 * syscall(SYS_seccomp) ("syscall", as libseccomp does), then forks a child that
 * allocates and frees 100 blocks of 50 bytes and leaks one of 70 (test-robust.sh).
 * Prints the child's status ("child exit 0"); exits 0.  Profiled, the child runs
 * unprofiled rather than die of SIGSYS, and the parent's profile holds its own 3
 * blocks: 1 of 1000 bytes freed, 2 of 300 bytes leaked.
 *
 * "exec": the filter through prctl, then the program execs itself as "execd", which
 * allocates 10 blocks of 40 bytes, prints "execd ok" and exits 0.  Profiled, that image
 * inherits the filter: its agent must not register (it would die of SIGSYS), and the
 * image runs unprofiled.
 *
 * Prints with write(2), not stdio, so its allocations are only these.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static void say(const char *s)
{
        (void)!write(1, s, strlen(s));
}

int main(int argc, char **argv)
{
        if (argc != 2)
                return 2;
        if (strcmp(argv[1], "execd") == 0) {
                for (int i = 0; i < 10; i++)
                        wl_keep(malloc(40));
                say("execd ok\n");
                return 0;
        }
        void *p = malloc(1000);
        wl_keep(p);
        free(p);
        wl_keep(malloc(300));
        struct sock_filter f[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_memfd_create, 4, 0),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 3, 0),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_connect, 2, 0),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendmsg, 1, 0),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        };
        struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
                perror("PR_SET_NO_NEW_PRIVS");
                return 1;
        }
        int r = strcmp(argv[1], "syscall") != 0
                        ? prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)
                        : (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
        if (r != 0) {
                perror("seccomp");
                return 1;
        }
        wl_keep(malloc(300));
        if (strcmp(argv[1], "exec") == 0) {
                execl(argv[0], argv[0], "execd", (char *)NULL);
                perror("execl");
                return 1;
        }
        pid_t pid = fork();
        if (pid < 0)
                return 1;
        if (pid == 0) {
                for (int i = 0; i < 100; i++) {
                        void *q = malloc(50);
                        wl_keep(q);
                        free(q);
                }
                wl_keep(malloc(70));
                _exit(0);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid)
                return 1;
        char line[64];
        snprintf(line, sizeof(line), WIFEXITED(st) ? "child exit %d\n" : "child killed by %d\n",
                 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        say(line);
        return 0;
}
