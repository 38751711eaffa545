/* Many sampled blocks live at once, from several threads: four threads each allocate
 * 20,000 blocks of 16 to 1,024 bytes and hold them, wait for one another, then free them
 * all, interleaved with the others' frees.  Under `--sample 1` every block is sampled, so
 * the agent's set of sampled blocks holds 80,000 addresses at the peak (its fifth level):
 * it must grow while four threads insert, and every free must still find its block (a
 * lost one shows as a leak).  Nothing is leaked; the figures are those of a full run.
 * Each thread's records fit its ring (2 MiB) even if the collector does not drain it
 * meanwhile, so a slow collector (a sanitizer build) drops nothing.  Arguments, to hold
 * more and smaller blocks: blocks per thread and the largest size.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 4

static long per_thread = 20000, max_extra = 1009;

static pthread_barrier_t barrier;

__attribute__((noinline)) static void *live_block(size_t n)
{
        void *p = malloc(n);
        __asm__ volatile("" : : "r"(p) : "memory");
        return p;
}

static void *worker(void *arg)
{
        uint64_t x = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
        void **v = malloc((size_t)per_thread * sizeof(*v));
        if (v == NULL)
                abort();
        for (long i = 0; i < per_thread; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v[i] = live_block(16 + (size_t)(x % (uint64_t)max_extra));
                if (v[i] == NULL)
                        abort();
        }
        pthread_barrier_wait(&barrier);
        for (long i = 0; i < per_thread; i++)
                free(v[i]);
        free(v);
        return NULL;
}

int main(int argc, char **argv)
{
        if (argc > 2) {
                per_thread = atol(argv[1]);
                max_extra = atol(argv[2]) - 15;
                if (per_thread < 1 || max_extra < 1)
                        return 2;
        }
        pthread_t t[THREADS];
        pthread_barrier_init(&barrier, NULL, THREADS);
        for (uintptr_t i = 0; i < THREADS; i++)
                if (pthread_create(&t[i], NULL, worker, (void *)i) != 0)
                        return 1;
        for (int i = 0; i < THREADS; i++)
                pthread_join(t[i], NULL);
        pthread_barrier_destroy(&barrier);
        puts("done");
        return 0;
}
