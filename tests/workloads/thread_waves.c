/* Hundreds of threads waiting for the collector at once.  WAVES waves of WIDTH threads,
 * all of a wave alive together (a barrier), each making ALLOCS allocations of 32 bytes
 * from waves_alloc and freeing them, then ending: once the 1,024 slots have all been
 * used, a wave's threads wait for the collector to hand back the slots of the wave
 * before.  Then FAST threads allocate and free at full speed, FAST_ALLOCS blocks of 48
 * bytes each from fast_alloc, faster than the collector drains: they wait for ring
 * space.  In full mode every event must arrive: waves x width x allocs + fast x
 * fast_allocs allocations, all freed (the C library's own aside).
 *
 * Waiting threads used to nap 50 us each and look again, hundreds of them at once,
 * which left the collector, on a small machine, next to no CPU: waits ran into their
 * 5 s limit and events were dropped (on two cores: 20 s instead of 4, 3.7 M events
 * dropped, with 40 waves).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "workload.h"

enum { WAVES = 20, WIDTH = 500, ALLOCS = 100, FAST = 200, FAST_ALLOCS = 50000 };

static pthread_barrier_t barrier;
void *waves_alloc(void);
void *fast_alloc(void);

WL_FRAME void *waves_alloc(void)
{
        void *p = malloc(32);
        wl_keep(p);
        return p;
}

WL_FRAME void *fast_alloc(void)
{
        void *p = malloc(48);
        wl_keep(p);
        return p;
}

static void *wave_thread(void *arg)
{
        void *p[ALLOCS];
        (void)arg;
        pthread_barrier_wait(&barrier);
        for (int i = 0; i < ALLOCS; i++)
                p[i] = waves_alloc();
        for (int i = 0; i < ALLOCS; i++)
                free(p[i]);
        return NULL;
}

static void *fast_thread(void *arg)
{
        (void)arg;
        pthread_barrier_wait(&barrier);
        for (int i = 0; i < FAST_ALLOCS; i++)
                free(fast_alloc());
        return NULL;
}

static int run(int n, void *(*fn)(void *))
{
        static pthread_t t[WIDTH > FAST ? WIDTH : FAST];
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 << 10);
        pthread_barrier_init(&barrier, NULL, (unsigned)n);
        for (int i = 0; i < n; i++)
                if (pthread_create(&t[i], &attr, fn, NULL) != 0) {
                        fprintf(stderr, "thread_waves: pthread_create failed\n");
                        return 1;
                }
        for (int i = 0; i < n; i++)
                pthread_join(t[i], NULL);
        pthread_barrier_destroy(&barrier);
        pthread_attr_destroy(&attr);
        return 0;
}

int main(void)
{
        for (int w = 0; w < WAVES; w++)
                if (run(WIDTH, wave_thread) != 0)
                        return 1;
        return run(FAST, fast_thread);
}
