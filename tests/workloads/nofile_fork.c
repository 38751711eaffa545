/* Children that cannot register: the program forks a child that lowers its descriptor
 * limit to 3 (0, 1 and 2 are open, so the agent's memfd and socket fail), allocates, and
 * forks a grandchild that allocates too (test-robust.sh).  Profiled, neither has a
 * profile, and the program's own says that 2 child processes ran unprofiled.  Exit
 * status 0; 3 if the limit could not be set.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static WL_FRAME void some_blocks(int n)
{
        for (int i = 0; i < n; i++)
                wl_keep(malloc(32));
}

static int wait_ok(pid_t pid)
{
        int st;
        return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(void)
{
        some_blocks(1);
        pid_t pid = fork();
        if (pid == 0) {
                struct rlimit rl = {3, 3};
                if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                        _exit(3);
                some_blocks(10);
                pid_t g = fork();
                if (g == 0) {
                        some_blocks(10);
                        _exit(0);
                }
                _exit(wait_ok(g) ? 0 : 1);
        }
        return wait_ok(pid) ? 0 : 1;
}
