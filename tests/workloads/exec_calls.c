/* Execs through each call of the exec family (test-robust.sh): allocates 3 blocks of 100
 * bytes, keeps them, then replaces itself with PROG ARGS through the call HOW: execv,
 * execve, execvp, execvpe, execl, execle, execlp, fexecve, execveat or syscall (the
 * execve system call through syscall(3)).  Two more ways do not replace the image:
 *   enoent  an execv of a file that does not exist, which fails (errno ENOENT, checked),
 *           then frees the blocks and exits 0 ("enoent ok");
 *   vfork   runs PROG ARGS in a vfork child that execv's it, waits, frees the blocks and
 *           exits 0 ("vfork child N": the child's exit status).
 * Usage: exec_calls HOW PROG [ARGS...].  Exit status 100 if the exec failed.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

extern char **environ;

static void *blocks[3];

static WL_FRAME void before_exec(void)
{
        for (int i = 0; i < 3; i++) {
                blocks[i] = malloc(100);
                wl_keep(blocks[i]);
        }
}

static void free_blocks(void)
{
        for (int i = 0; i < 3; i++)
                free(blocks[i]);
}

int main(int argc, char **argv)
{
        if (argc < 3)
                return 2;
        const char *how = argv[1], *prog = argv[2];
        char **args = argv + 2;
        before_exec();
        if (strcmp(how, "enoent") == 0) {
                errno = 0;
                int r = execv("/nonexistent/exec_calls-target", args);
                int e = errno;
                free_blocks();
                printf("enoent %s\n", r == -1 && e == ENOENT ? "ok" : "wrong");
                return 0;
        }
        if (strcmp(how, "vfork") == 0) {
                fflush(stdout);
                pid_t pid = vfork();
                if (pid == 0) {
                        execv(prog, args);
                        _exit(127);
                }
                int st = 0;
                if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
                        return 1;
                free_blocks();
                printf("vfork child %d\n", WEXITSTATUS(st));
                return 0;
        }
        fflush(stdout);
        if (strcmp(how, "execv") == 0)
                execv(prog, args);
        else if (strcmp(how, "execve") == 0)
                execve(prog, args, environ);
        else if (strcmp(how, "execvp") == 0)
                execvp(prog, args);
        else if (strcmp(how, "execvpe") == 0)
                execvpe(prog, args, environ);
        else if (strcmp(how, "execl") == 0)
                execl(prog, prog, "execl", (char *)NULL);
        else if (strcmp(how, "execle") == 0)
                execle(prog, prog, "execle", (char *)NULL, environ);
        else if (strcmp(how, "execlp") == 0)
                execlp(prog, prog, "execlp", (char *)NULL);
        else if (strcmp(how, "fexecve") == 0) {
                int fd = open(prog, O_RDONLY | O_CLOEXEC);
                if (fd >= 0)
                        fexecve(fd, args, environ);
        } else if (strcmp(how, "execveat") == 0)
                execveat(AT_FDCWD, prog, args, environ, 0);
        else if (strcmp(how, "syscall") == 0)
                syscall(SYS_execve, prog, args, environ);
        else
                return 2;
        perror(how);
        return 100;
}
