/* A fork child whose first allocator call resizes a block it inherited: the parent
 * allocates 10 bytes (leaked), forks, and the child reallocs the block to 5000 bytes,
 * allocates 7 more and exits, leaking both (test-robust.sh).  The child's profile:
 * 2 allocations of 5007 bytes, both leaked, 1 realloc, and the inherited block's end an
 * unmatched free.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

int main(void)
{
        char *p = malloc(10);
        wl_keep(p);
        pid_t pid = fork();
        if (pid < 0)
                return 1;
        if (pid == 0) {
                p = realloc(p, 5000);
                wl_keep(p);
                wl_keep(malloc(7));
                _exit(0);
        }
        int st;
        return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
