/* Rounds of threads that all make their first allocation at the same moment: the agent
 * maps each new thread's ring when the thread first claims a slot (agent/session.c), so
 * many claims and mappings race, and the collector maps the same slots as it sees them.
 *
 * ROUNDS rounds; in each, NTHREADS threads wait on a barrier, then each makes ALLOCS
 * allocations of 24 bytes from burst_alloc, freeing all but the last.  After a round's
 * threads are joined the next round reuses their slots (and mappings).  Exits 0.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdlib.h>

enum { ROUNDS = 3, NTHREADS = 96, ALLOCS = 50 };

static pthread_barrier_t barrier;
void *volatile burst_sink;

/* Not a tail call (the store after it), so the frame is in the stack. */
__attribute__((noinline)) static void *burst_alloc(void)
{
        void *p = malloc(24);
        burst_sink = p;
        return p;
}

static void *thread_main(void *arg)
{
        pthread_barrier_wait(&barrier);
        for (int i = 0; i < ALLOCS; i++) {
                void *p = burst_alloc();
                if (i + 1 < ALLOCS)
                        free(p);
        }
        return arg;
}

int main(void)
{
        pthread_t t[NTHREADS];
        for (int r = 0; r < ROUNDS; r++) {
                if (pthread_barrier_init(&barrier, NULL, NTHREADS) != 0)
                        return 1;
                for (int i = 0; i < NTHREADS; i++)
                        if (pthread_create(&t[i], NULL, thread_main, NULL) != 0)
                                return 1;
                for (int i = 0; i < NTHREADS; i++)
                        pthread_join(t[i], NULL);
                pthread_barrier_destroy(&barrier);
        }
        return 0;
}
