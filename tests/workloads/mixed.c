/* 200,000 allocations of mixed sizes (16 B to 16 KiB, most small) from three call
 * sites, with a live set that grows to a peak and a tenth of the blocks leaked: the
 * reference for sampled-mode estimates, which must land within a few percent of the
 * exact figures of a full run.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N 200000
#define LIVE 4096

static uint64_t rng = 88172645463325252ull;

static uint64_t next(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

__attribute__((noinline)) static void *small_block(size_t n)
{
        void *p = malloc(n);
        /* no tail call (keeps this frame); the comment keeps the compiler from merging
         * this function with large_block, which is otherwise identical */
        __asm__ volatile("# small" : : "r"(p) : "memory");
        return p;
}

__attribute__((noinline)) static void *medium_block(size_t n)
{
        void *p = calloc(1, n);
        __asm__ volatile("" : : "r"(p) : "memory"); /* no tail call: keep this frame */
        return p;
}

__attribute__((noinline)) static void *large_block(size_t n)
{
        void *p = malloc(n);
        __asm__ volatile("# large" : : "r"(p) : "memory");
        return p;
}

int main(void)
{
        static void *live[LIVE];
        void **leaks = malloc(sizeof(void *) * (N / 10));
        size_t nleaks = 0;
        for (long i = 0; i < N; i++) {
                uint64_t r = next();
                void *p;
                if (r % 10 < 7)
                        p = small_block(16 + r % 112);
                else if (r % 10 < 9)
                        p = medium_block(128 + r % 1920);
                else
                        p = large_block(2048 + r % 14336);
                if (p == NULL)
                        return 1;
                memset(p, 1, 8);
                if (i % 10 == 0 && nleaks < N / 10) {
                        leaks[nleaks++] = p; /* never freed */
                        continue;
                }
                size_t k = (size_t)(next() % LIVE);
                free(live[k]);
                live[k] = p;
        }
        /* the live set goes away; the leaks stay */
        for (size_t k = 0; k < LIVE; k++)
                free(live[k]);
        return leaks[0] != NULL ? 0 : 1;
}
