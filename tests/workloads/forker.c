/* A pre-fork server in miniature: the parent allocates 10 blocks of 64 bytes, forks 3
 * workers that each allocate 5 blocks of 100 bytes and exit without freeing them (one
 * exits through exit(), one through _exit(), one execs `true`), waits for them and frees
 * its own blocks.  Each process gets its own profile; --no-follow keeps only the parent's.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

void *volatile forker_sink;

__attribute__((noinline)) static void worker(int how)
{
        for (int i = 0; i < 5; i++)
                forker_sink = malloc(100);
        if (how == 0)
                exit(0);
        if (how == 1)
                _exit(0);
        execlp("true", "true", (char *)NULL);
        _exit(127);
}

int main(void)
{
        void *mine[10];
        for (int i = 0; i < 10; i++)
                mine[i] = malloc(64);
        for (int how = 0; how < 3; how++) {
                pid_t p = fork();
                if (p < 0)
                        return 1;
                if (p == 0)
                        worker(how);
        }
        int status, bad = 0;
        while (wait(&status) > 0)
                bad |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        for (int i = 0; i < 10; i++)
                free(mine[i]);
        return bad;
}
