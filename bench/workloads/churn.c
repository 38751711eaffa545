/* churn: a malloc/free churn of mixed sizes around a constant live set, from a fixed set
 * of call stacks, in 1..N threads.  The allocation pattern depends only on the arguments
 * (fixed seeds), so the number of calls, unique stacks and live blocks are reproducible:
 * the bench scales --iters to show that a collector's memory does not grow with calls.
 *
 *   churn [--iters N] [--threads T] [--live L]
 *
 * N allocations in total (split across the threads), L live blocks in total (each thread
 * keeps L/T).  Every block is written to (first and last cache line), as real code would.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

struct worker {
        pthread_t thread;
        uint64_t rng;
        long iters;
        long live;
        void **slots;
        size_t *sizes;
        uint64_t checksum;
};

static inline uint64_t next_rand(uint64_t *s)
{
        /* xorshift64*: cheap and good enough to pick sizes and slots. */
        uint64_t x = *s;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *s = x;
        return x * 0x2545F4914F6CDD1DULL;
}

/* Mixed sizes: mostly small objects, some buffers, a few large blocks (still below
 * glibc's mmap threshold, so the allocator's fast paths are what is measured). */
static size_t pick_size(uint64_t r)
{
        unsigned bucket = (unsigned)(r % 100);
        uint64_t v = r >> 8;
        if (bucket < 60)
                return 16 + v % 112; /* 16..127 */
        if (bucket < 85)
                return 128 + v % 896; /* 128..1023 */
        if (bucket < 96)
                return 1024 + v % 7168; /* 1 KiB..8 KiB */
        return 8192 + v % 57344;        /* 8 KiB..64 KiB */
}

static void touch(void *p, size_t n, uint64_t r)
{
        unsigned char *b = p;
        size_t head = n < 64 ? n : 64;
        memset(b, (int)(r & 0xff), head);
        b[n - 1] = (unsigned char)r;
}

/* A dozen distinct call sites at different depths: the set of unique stacks is fixed
 * (about 16 stacks per thread entry point) and does not grow with --iters. */
static NOINLINE void *site_string(size_t n)
{
        return malloc(n);
}
static NOINLINE void *site_node(size_t n)
{
        return malloc(n);
}
static NOINLINE void *site_array(size_t n)
{
        return calloc(1, n);
}
static NOINLINE void *site_buffer(size_t n)
{
        return malloc(n);
}

static NOINLINE void *parse_token(size_t n)
{
        return site_string(n);
}
static NOINLINE void *parse_expr(size_t n, unsigned d)
{
        return d ? parse_expr(n, d - 1) : parse_token(n);
}
static NOINLINE void *tree_insert(size_t n, unsigned d)
{
        return d ? tree_insert(n, d - 1) : site_node(n);
}
static NOINLINE void *table_grow(size_t n)
{
        return site_array(n);
}
static NOINLINE void *io_read(size_t n)
{
        return site_buffer(n);
}

static NOINLINE void *allocate(uint64_t r, size_t n)
{
        switch ((r >> 40) % 8) {
        case 0:
        case 1:
                return parse_expr(n, (unsigned)((r >> 44) % 4));
        case 2:
        case 3:
        case 4:
                return tree_insert(n, (unsigned)((r >> 44) % 6));
        case 5:
                return table_grow(n);
        case 6:
                return io_read(n);
        default:
                return site_string(n);
        }
}

static NOINLINE void release(void *p)
{
        free(p);
}

static void *work(void *arg)
{
        struct worker *w = arg;

        for (long i = 0; i < w->live; i++) {
                uint64_t r = next_rand(&w->rng);
                w->sizes[i] = pick_size(r);
                w->slots[i] = allocate(r, w->sizes[i]);
                touch(w->slots[i], w->sizes[i], r);
        }
        for (long i = w->live; i < w->iters; i++) {
                uint64_t r = next_rand(&w->rng);
                long k = (long)((r >> 16) % (uint64_t)w->live);
                unsigned char *old = w->slots[k];
                w->checksum += old[0] + old[w->sizes[k] - 1];
                size_t n = pick_size(r);
                if ((r >> 56) < 8) { /* ~3%: grow or shrink in place */
                        void *p = realloc(old, n);
                        if (p == NULL)
                                abort();
                        w->slots[k] = p;
                } else {
                        release(old);
                        w->slots[k] = allocate(r, n);
                }
                if (w->slots[k] == NULL)
                        abort();
                w->sizes[k] = n;
                touch(w->slots[k], n, r);
        }
        for (long i = 0; i < w->live; i++)
                release(w->slots[i]);
        return NULL;
}

int main(int argc, char **argv)
{
        long iters = 2000000, threads = 1, live = 20000;

        for (int i = 1; i + 1 < argc; i += 2) {
                if (strcmp(argv[i], "--iters") == 0)
                        iters = atol(argv[i + 1]);
                else if (strcmp(argv[i], "--threads") == 0)
                        threads = atol(argv[i + 1]);
                else if (strcmp(argv[i], "--live") == 0)
                        live = atol(argv[i + 1]);
                else {
                        fprintf(stderr, "usage: churn [--iters N] [--threads T] [--live L]\n");
                        return 2;
                }
        }
        if (threads < 1 || threads > 64 || live < threads || iters < live) {
                fprintf(stderr, "churn: need 1 <= threads <= 64, threads <= live <= iters\n");
                return 2;
        }

        struct worker *ws = calloc((size_t)threads, sizeof(*ws));
        if (ws == NULL)
                return 1;
        for (long t = 0; t < threads; t++) {
                struct worker *w = &ws[t];
                w->rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(t + 1);
                w->iters = iters / threads;
                w->live = live / threads;
                w->slots = calloc((size_t)w->live, sizeof(*w->slots));
                w->sizes = calloc((size_t)w->live, sizeof(*w->sizes));
                if (w->slots == NULL || w->sizes == NULL)
                        return 1;
        }
        if (threads == 1) {
                work(&ws[0]);
        } else {
                for (long t = 0; t < threads; t++)
                        if (pthread_create(&ws[t].thread, NULL, work, &ws[t]) != 0)
                                return 1;
                for (long t = 0; t < threads; t++)
                        pthread_join(ws[t].thread, NULL);
        }
        uint64_t sum = 0;
        for (long t = 0; t < threads; t++) {
                sum += ws[t].checksum;
                free(ws[t].slots);
                free(ws[t].sizes);
        }
        free(ws);
        printf("churn: %ld allocations in %ld threads, checksum %llu\n", iters, threads,
               (unsigned long long)sum);
        return 0;
}
