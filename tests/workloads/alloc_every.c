/* Calls every function of the malloc family, each from a function of its own, with sizes
 * and leaks known exactly (see alloc_every.expected.json).  No stdio: a stdio buffer
 * would be one more allocation.  `--no-pvalloc` skips pvalloc, which valgrind aborts on.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

/* Blocks that are never freed: still live at exit, i.e. leaks. */
static void *leaked[4];

/* volatile: a size the compiler cannot see, so it does not warn about it. */
static volatile size_t huge_size = SIZE_MAX;

/* 11 allocations, 1240 bytes; 1 leak of 1000 bytes. */
WL_FRAME static void use_malloc(void)
{
        for (int i = 0; i < 10; i++) {
                void *p = malloc(24);
                wl_keep(p);
                free(p);
        }
        leaked[0] = malloc(1000);
}

/* 1 allocation of 0 bytes: glibc returns a unique non-NULL pointer. */
WL_FRAME static void use_malloc_zero(void)
{
        void *p = malloc(0);
        wl_keep(p);
        free(p);
}

/* 2 allocations, 10*12 + 4*25 = 220 bytes; 1 leak of 100 bytes. */
WL_FRAME static void use_calloc(void)
{
        void *p = calloc(10, 12);
        wl_keep(p);
        free(p);
        leaked[1] = calloc(4, 25);
}

/* 3 allocations (16, 64, 256 = 336 bytes), 3 frees: each realloc releases the old block. */
WL_FRAME static void use_realloc_grow(void)
{
        char *p = malloc(16);
        memset(p, 'a', 16);
        p = realloc(p, 64);
        p = realloc(p, 256);
        wl_keep(p);
        free(p);
}

/* 2 allocations (500, 100 = 600 bytes), 1 free; the shrunk block of 100 bytes leaks. */
WL_FRAME static void use_realloc_shrink(void)
{
        char *p = malloc(500);
        memset(p, 'b', 500);
        leaked[2] = realloc(p, 100);
}

/* realloc(NULL, n) is malloc(n): 1 allocation of 48 bytes. */
WL_FRAME static void use_realloc_null(void)
{
        void *p = realloc(NULL, 48);
        wl_keep(p);
        free(p);
}

/* realloc(p, 0) frees p and returns NULL (glibc): 1 allocation of 40 bytes, 1 free, and
 * no new block. */
WL_FRAME static void use_realloc_zero(void)
{
        void *p = malloc(40);
        wl_keep(p);
        void *q = realloc(p, 0);
        if (q) /* not glibc: a minimal block came back */
                free(q);
}

/* 2 allocations (10*16, 20*16 = 480 bytes), 2 frees. */
WL_FRAME static void use_reallocarray(void)
{
        void *p = reallocarray(NULL, 10, 16);
        wl_keep(p);
        p = reallocarray(p, 20, 16);
        wl_keep(p);
        free(p);
}

/* 1 allocation of 200 bytes; the call with a bad alignment fails and allocates nothing. */
WL_FRAME static void use_posix_memalign(void)
{
        void *p = NULL, *bad = NULL;

        if (posix_memalign(&p, 64, 200) == 0) {
                wl_keep(p);
                free(p);
        }
        if (posix_memalign(&bad, 3, 100) == 0) /* EINVAL: 3 is not a power of two */
                free(bad);
}

/* 1 allocation of 96 bytes, leaked. */
WL_FRAME static void use_aligned_alloc(void)
{
        leaked[3] = aligned_alloc(32, 96);
}

/* 1 allocation of 300 bytes. */
WL_FRAME static void use_memalign(void)
{
        void *p = memalign(128, 300);
        wl_keep(p);
        free(p);
}

/* 1 allocation of 1000 bytes (page aligned). */
WL_FRAME static void use_valloc(void)
{
        void *p = valloc(1000);
        wl_keep(p);
        free(p);
}

/* 1 allocation of 8192 bytes: already a multiple of the page size, so the requested and
 * the rounded-up size agree. */
WL_FRAME static void use_pvalloc(void)
{
        void *p = pvalloc(8192);
        wl_keep(p);
        free(p);
}

/* Failed calls return no block and count for nothing; a failed realloc leaves the old
 * block alone.  1 allocation of 8 bytes, 1 free. */
WL_FRAME static void use_failures(bool failing_realloc)
{
        void *p = malloc(huge_size);
        void *q = calloc(huge_size, 2);
        void *r = reallocarray(NULL, huge_size / 2, 4);
        void *s = malloc(8);
        void *t = failing_realloc ? realloc(s, huge_size) : NULL;

        if (p || q || r || t) /* cannot happen; keeps the results used */
                abort();
        wl_keep(s);
        free(s);
}

int main(int argc, char **argv)
{
        bool valgrind = argc > 1 && strcmp(argv[1], "--valgrind") == 0;

        use_malloc();
        use_malloc_zero();
        use_calloc();
        use_realloc_grow();
        use_realloc_shrink();
        use_realloc_null();
        use_realloc_zero();
        use_reallocarray();
        use_posix_memalign();
        use_aligned_alloc();
        use_memalign();
        use_valloc();
        if (!valgrind)
                use_pvalloc();
        use_failures(!valgrind);
        wl_keep(leaked);
        return 0;
}
