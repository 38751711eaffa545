/* Writes known text to stdout and stderr, copies stdin to stdout, and exits with status 7,
 * so a test can check that profiling changes none of it.  Uses write(2) and read(2), not
 * stdio, so its allocations are only its own (see output.expected.json).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

enum { CHUNK = 4096 };

static void *kept;

static void write_all(int fd, const char *buf, size_t len)
{
        while (len > 0) {
                ssize_t n = write(fd, buf, len);
                if (n <= 0)
                        exit(1);
                buf += n;
                len -= (size_t)n;
        }
}

static void say(int fd, const char *text)
{
        write_all(fd, text, strlen(text));
}

/* 1 allocation of CHUNK bytes, freed: the copy buffer. */
WL_FRAME static void copy_stdin(void)
{
        char *buf = malloc(CHUNK);
        ssize_t n;

        if (!buf)
                exit(1);
        while ((n = read(0, buf, CHUNK)) > 0)
                write_all(1, buf, (size_t)n);
        free(buf);
}

/* 1 allocation of 100 bytes, leaked. */
WL_FRAME static void leak_one(void)
{
        kept = malloc(100);
        wl_keep(kept);
}

int main(void)
{
        say(1, "output: to stdout\n");
        say(2, "output: to stderr\n");
        copy_stdin();
        leak_one();
        say(1, "output: done\n");
        return 7;
}
