/* A server that drops its privileges: run by root, it forks a worker that changes to the
 * user and group nobody (65534) before it allocates (test-robust.sh).  The worker must be
 * profiled as any child:
 *
 *   parent: 1 allocation of 100 bytes, freed;
 *   worker: 1000 allocations of 40000 bytes, 500 frees of 20000, 500 blocks of 20000
 *           bytes leaked.
 *
 * Exit status: 0; 3 if the worker could not change its user (not run by root).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <grp.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static WL_FRAME void worker(void)
{
        for (int i = 0; i < 1000; i++) {
                void *p = malloc(40);
                wl_keep(p);
                if (i % 2 == 1)
                        free(p);
        }
}

int main(void)
{
        void *p = malloc(100);
        wl_keep(p);
        pid_t pid = fork();
        if (pid < 0)
                return 1;
        if (pid == 0) {
                if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
                        _exit(3);
                worker();
                _exit(0);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
                return 1;
        free(p);
        return WEXITSTATUS(st);
}
