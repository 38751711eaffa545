/* A program that tidies its environment and then forks a worker, as daemons and
 * sandboxes do:
 *
 *   env_fork clearenv|unsetenv|setenv
 *
 * clears the whole environment, or unsets every ALLOCPROF_ variable and LD_PRELOAD, or
 * points ALLOCPROF_SOCKET elsewhere, then forks a child that allocates 3 blocks of 222
 * bytes and frees 2 of them, and exits 3.  The parent itself allocates 1 block of 111
 * bytes (leaked), waits for the child and exits 0 if the child exited 3.  Prints with
 * write(2), so these are all the allocations (test-robust.sh).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

WL_FRAME static void worker(void)
{
        void *a = malloc(222), *b = malloc(222), *c = malloc(222);
        wl_keep(a);
        wl_keep(b);
        wl_keep(c);
        free(a);
        free(b);
}

int main(int argc, char **argv)
{
        const char *how = argc > 1 ? argv[1] : "";
        wl_keep(malloc(111));
        if (strcmp(how, "clearenv") == 0) {
                clearenv();
        } else if (strcmp(how, "unsetenv") == 0) {
                static const char *const vars[] = {"LD_PRELOAD", "ALLOCPROF_SOCKET",
                                                   "ALLOCPROF_MODE", "ALLOCPROF_SAMPLE",
                                                   "ALLOCPROF_UNWIND"};
                for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
                        unsetenv(vars[i]);
        } else if (strcmp(how, "setenv") == 0) {
                setenv("ALLOCPROF_SOCKET", "/nonexistent/socket", 1);
        } else {
                return 2;
        }
        pid_t pid = fork();
        if (pid < 0)
                return 1;
        if (pid == 0) {
                worker();
                _exit(3);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 3)
                return 1;
        (void)!write(1, "worker done\n", 12);
        return 0;
}
