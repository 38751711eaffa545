/* A program whose executable defines malloc, free, calloc and realloc itself (as a Rust
 * program with jemalloc built in does): the executable comes first in the lookup order,
 * before an LD_PRELOAD agent, so the program's calls and the C library's own (strdup
 * here) go to its allocator and allocprof sees none of them.  run and the report must say
 * so rather than show an empty profile as if nothing was allocated (test-robust.sh).
 *
 * It makes 100 blocks of 40 bytes and one strdup'ed string, frees 50 of the blocks, and
 * prints how many calls its own allocator took ("own 151": 101 allocations, 50 frees).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

/* A bump allocator over a static arena; a block's size is kept in the 16 bytes before it.
 * Blocks are never reused: enough for this program and whatever the C library asks. */
static _Alignas(16) unsigned char arena[8 << 20];
static size_t used;
static unsigned long calls;

void *malloc(size_t size)
{
        calls++;
        size_t need = 16 + ((size + 15) & ~(size_t)15);
        if (size > sizeof(arena) || need > sizeof(arena) - used)
                return NULL;
        unsigned char *p = arena + used;
        used += need;
        memcpy(p, &size, sizeof(size));
        return p + 16;
}

void free(void *p)
{
        if (p != NULL)
                calls++;
}

void *calloc(size_t n, size_t size)
{
        if (size != 0 && n > SIZE_MAX / size)
                return NULL;
        return malloc(n * size); /* the arena is zero and never reused */
}

void *realloc(void *old, size_t size)
{
        void *p = malloc(size);
        if (p != NULL && old != NULL) {
                size_t was;
                memcpy(&was, (unsigned char *)old - 16, sizeof(was));
                memcpy(p, old, was < size ? was : size);
                free(old);
        }
        return p;
}

static void *blocks[100];

static WL_FRAME void own_malloc_work(void)
{
        for (int i = 0; i < 100; i++) {
                blocks[i] = malloc(40);
                wl_keep(blocks[i]);
        }
        for (int i = 0; i < 50; i++)
                free(blocks[i]);
        wl_keep(strdup("the C library's malloc call"));
}

int main(void)
{
        unsigned long before = calls;
        own_malloc_work();
        printf("own %lu\n", calls - before);
        return 0;
}
