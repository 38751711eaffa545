/* A child made without fork(): by clone(2) without CLONE_VM ("clone", as container tools
 * do to enter new namespaces) or by the fork system call itself ("syscall").  The C
 * library runs no fork handler for either, so the agent cannot learn of the child that
 * way; both then allocate at once (test-robust.sh).  The profiles must be:
 *
 *   parent: 2001 allocations of 465536 bytes, 1001 frees of 265536, 1000 blocks of
 *           200000 bytes leaked;
 *   child:  2000 allocations of 200000 bytes, 1000 frees of 100000, 1000 blocks of
 *           100000 bytes leaked, nothing unmatched.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define STACK_BYTES 65536

/* n blocks of size bytes, every second one freed. */
static WL_FRAME void churn(size_t size, int n)
{
        for (int i = 0; i < n; i++) {
                void *p = malloc(size);
                wl_keep(p);
                if (i % 2 == 1)
                        free(p);
        }
}

static int child(void *arg)
{
        (void)arg;
        churn(100, 2000);
        return 0;
}

int main(int argc, char **argv)
{
        if (argc != 2 || (strcmp(argv[1], "clone") != 0 && strcmp(argv[1], "syscall") != 0))
                return 2;
        char *stack = malloc(STACK_BYTES); /* used by "clone" only; the same figures */
        if (stack == NULL)
                return 1;
        pid_t pid;
        if (strcmp(argv[1], "clone") == 0) {
                pid = clone(child, stack + STACK_BYTES, SIGCHLD, NULL);
        } else {
                pid = (pid_t)syscall(SYS_fork);
                if (pid == 0)
                        _exit(child(NULL));
        }
        if (pid < 0)
                return 1;
        churn(200, 2000);
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
                return 1;
        free(stack);
        return 0;
}
