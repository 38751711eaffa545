/* The malloc family's edge cases: failing calls (overflow, bad alignment, sizes no
 * allocator can give), zero sizes, realloc to 0 and from NULL.  Prints what each call
 * returned and the errno it left, so that a test can check that profiling changes none
 * of it, and allocates a known set of blocks (test-robust.sh):
 *
 *   17 allocations, 2688 bytes; 9 frees of 1288 bytes; 8 blocks of 1400 bytes leaked.
 *
 * Prints with write(2), not stdio, so its allocations are only these.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

/* Sizes the compiler cannot see, so that it neither warns about them nor folds the
 * calls away. */
static volatile size_t g_huge = SIZE_MAX - 100, g_half = SIZE_MAX / 2;

static void *g_kept;

/* Frees p after the compiler has lost sight of it: a malloc/free pair it can see is
 * deleted at -O2. */
static void drop(void *p)
{
        wl_keep(p);
        free(p);
}

static void say(const char *what, const void *p, int ret, int err)
{
        char line[160];
        int n = snprintf(line, sizeof(line), "%s: %s ret=%d errno=%d\n", what,
                         p != NULL ? "block" : "null", ret, err);
        if (n > 0)
                (void)!write(1, line, (size_t)n);
}

/* A failing call, with errno set beforehand to something it must leave or replace. */
#define FAILING(what, expr)              \
        do {                             \
                errno = 1234;            \
                void *p_ = (expr);       \
                say(what, p_, 0, errno); \
        } while (0)

int main(void)
{
        int r;
        void *q = NULL, *p;

        /* Calls that fail: nothing allocated, nothing counted. */
        FAILING("calloc overflow", calloc(g_half, 4));
        FAILING("malloc huge", malloc(g_huge));
        FAILING("reallocarray overflow", reallocarray(NULL, g_half, 3));
        FAILING("aligned_alloc huge", aligned_alloc(64, g_huge));
        FAILING("memalign huge alignment", memalign(g_half + 2, 10));
        errno = 1234;
        r = posix_memalign(&q, 3, 16);
        say("posix_memalign alignment 3", q, r, errno);
        errno = 1234;
        r = posix_memalign(&q, 0, 16);
        say("posix_memalign alignment 0", q, r, errno);
        errno = 1234;
        r = posix_memalign(&q, 64, g_huge);
        say("posix_memalign huge", q, r, errno);
        errno = 1234;
        free(NULL);
        say("free(NULL)", NULL, 0, errno);

        /* 8 leaked blocks: 100 + 1000 + 0 + 0 + 100 + 100 + 100 + 0 bytes. */
        errno = 1234;
        r = posix_memalign(&q, 64, 100);
        say("posix_memalign", q, r, errno);
        wl_keep(q);
        wl_keep(aligned_alloc(256, 1000));
        wl_keep(malloc(0));
        p = realloc(NULL, 0); /* a block of 0 bytes */
        say("realloc(NULL, 0)", p, 0, 0);
        wl_keep(p);
        wl_keep(reallocarray(NULL, 10, 10));
        wl_keep(memalign(48, 100)); /* an alignment that is not a power of two */
        g_kept = malloc(100);
        wl_keep(g_kept);
        FAILING("realloc huge", realloc(g_kept, g_huge)); /* fails: the block stays */
        wl_keep(calloc(0, 5));

        /* 9 blocks allocated and freed: 64 + 0 + 50 + 10 + 1000 + 5 + 128 + 10 + 21 bytes. */
        drop(aligned_alloc(32, 64));
        drop(malloc(0));
        p = realloc(NULL, 50);
        p = realloc(p, 0); /* frees the block */
        say("realloc(p, 0)", p, 0, 0);
        p = malloc(10);
        p = realloc(p, 1000);
        p = realloc(p, 5);
        drop(p);
        drop(memalign(64, 128));
        drop(valloc(10));
        drop(calloc(3, 7));
        return 0;
}
