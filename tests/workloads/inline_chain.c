/* A call chain with an inlined function in the middle, built -O2 -fomit-frame-pointer:
 * main -> outer -> middle (always inlined into outer) -> leaf_alloc -> malloc.  A profile
 * must show leaf_alloc, middle (inlined), outer, main, at the lines marked LINE:<name>
 * (the check finds them by grepping this file, so keep each marker on its call).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>

#include "workload.h"

enum { CALLS = 5 };

static void *blocks[CALLS];

WL_FRAME static void *leaf_alloc(size_t size)
{
        void *p = malloc(size); /* LINE:leaf */
        wl_keep(p);
        return p;
}

static inline __attribute__((always_inline)) void *middle(size_t size)
{
        void *p = leaf_alloc(size + 8); /* LINE:middle */
        wl_keep(p);
        return p;
}

WL_FRAME static void *outer(size_t size)
{
        void *p = middle(size * 2); /* LINE:outer */
        wl_keep(p);
        return p;
}

/* CALLS allocations of (20 * 2 + 8) = 48 bytes from one call stack; the last one leaks. */
int main(void)
{
        for (int i = 0; i < CALLS; i++) {
                blocks[i] = outer(20); /* LINE:main */
                wl_keep(blocks[i]);
        }
        for (int i = 0; i < CALLS - 1; i++)
                free(blocks[i]);
        wl_keep(blocks);
        return 0;
}
