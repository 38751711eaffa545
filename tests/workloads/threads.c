/* NTHREADS threads allocate at the same time, with counts and sizes known exactly (see
 * threads.expected.json).  Phase 1: each thread allocates HELD blocks and keeps them all;
 * a barrier; phase 2: each frees all but LEAKED of them, then churns (malloc/free pairs).
 * Because nothing is freed before every thread has reached the barrier, the peak of live
 * bytes is the same in every run whatever the scheduling.  No stdio.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdlib.h>

#include "workload.h"

enum {
        NTHREADS = 4,
        HELD = 100,   /* phase 1 blocks per thread, of 32 + 16 * thread index bytes */
        LEAKED = 10,  /* of which never freed: every 10th */
        CHURN = 1000, /* phase 2 malloc/free pairs per thread, of 8 bytes */
};

struct worker {
        pthread_t thread;
        int index;
        void *blocks[HELD];
};

static struct worker workers[NTHREADS];
static pthread_barrier_t barrier;

/* Thread i: HELD allocations of 32 + 16 * i bytes, all live when it returns. */
WL_FRAME static void thread_hold(struct worker *w)
{
        size_t size = 32 + 16 * (size_t)w->index;

        for (int k = 0; k < HELD; k++)
                w->blocks[k] = malloc(size);
        wl_keep(w->blocks);
}

/* Frees every block except each 10th, which leaks. */
WL_FRAME static void thread_release(struct worker *w)
{
        for (int k = 0; k < HELD; k++)
                if (k % (HELD / LEAKED) != 0)
                        free(w->blocks[k]);
}

/* CHURN short-lived allocations of 8 bytes. */
WL_FRAME static void thread_churn(void)
{
        for (int k = 0; k < CHURN; k++) {
                void *p = malloc(8);
                wl_keep(p);
                free(p);
        }
}

static void *thread_main(void *arg)
{
        struct worker *w = arg;

        thread_hold(w);
        pthread_barrier_wait(&barrier);
        thread_release(w);
        thread_churn();
        return NULL;
}

int main(void)
{
        if (pthread_barrier_init(&barrier, NULL, NTHREADS) != 0)
                return 1;
        for (int i = 0; i < NTHREADS; i++) {
                workers[i].index = i;
                if (pthread_create(&workers[i].thread, NULL, thread_main, &workers[i]) != 0)
                        return 1;
        }
        for (int i = 0; i < NTHREADS; i++)
                pthread_join(workers[i].thread, NULL);
        pthread_barrier_destroy(&barrier);
        return 0;
}
