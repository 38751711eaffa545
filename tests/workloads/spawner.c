/* Starting programs the other ways: posix_spawn, vfork + exec, and system() (a shell
 * that runs /bin/true).  Each started program is profiled as its own image.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
void *volatile spawner_sink;

int main(void)
{
        spawner_sink = malloc(33);
        char *argv[] = {"true", NULL};
        pid_t p;
        int st, bad = 0;
        if (posix_spawnp(&p, "true", NULL, NULL, argv, environ) != 0)
                return 1;
        waitpid(p, &st, 0);
        bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
        p = vfork();
        if (p == 0) {
                execlp("true", "true", (char *)NULL);
                _exit(127);
        }
        waitpid(p, &st, 0);
        bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
        bad |= system("/bin/true") != 0;
        free(spawner_sink);
        return bad;
}
