/* Threads as real programs use them: 3,000 short-lived threads (in waves of 50), one
 * thread cancelled while it waits, detached threads still running when the process
 * ends, and exit() called from a thread other than main.  Every thread allocates three
 * 48-byte blocks and frees two; the running ones allocate one more 200-byte block each.
 * Expected: 3,000 x 3 + 3 (cancelled thread) + 4 x 3 + 4 (running) allocations, the
 * thread stacks and TLS of glibc aside.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define WAVES 60
#define PER_WAVE 50
#define RUNNING 4

void *volatile tm_sink;
void *thread_work(void);

__attribute__((noinline)) void *thread_work(void)
{
        void *a = malloc(48), *b = malloc(48), *c = malloc(48);
        __asm__ volatile("" : : "r"(a), "r"(b), "r"(c) : "memory");
        free(a);
        free(b);
        return c; /* leaked on purpose: one per thread */
}

static void *short_lived(void *arg)
{
        (void)arg;
        tm_sink = thread_work();
        return NULL;
}

static pthread_mutex_t never = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never_cond = PTHREAD_COND_INITIALIZER;

static void *cancelled(void *arg)
{
        (void)arg;
        tm_sink = thread_work();
        pthread_mutex_lock(&never);
        for (;;)
                pthread_cond_wait(&never_cond, &never); /* a cancellation point */
        return NULL;
}

static void unlock_never(void *arg)
{
        (void)arg;
        pthread_mutex_unlock(&never);
}

static void *cancelled_outer(void *arg)
{
        pthread_cleanup_push(unlock_never, NULL);
        cancelled(arg);
        pthread_cleanup_pop(0);
        return NULL;
}

static void *still_running(void *arg)
{
        (void)arg;
        tm_sink = thread_work();
        tm_sink = malloc(200);
        for (;;)
                pause();
        return NULL;
}

static void *exiter(void *arg)
{
        (void)arg;
        exit(0); /* the process ends from this thread */
}

int main(void)
{
        pthread_t t[PER_WAVE];
        for (int w = 0; w < WAVES; w++) {
                for (int i = 0; i < PER_WAVE; i++)
                        if (pthread_create(&t[i], NULL, short_lived, NULL) != 0)
                                return 1;
                for (int i = 0; i < PER_WAVE; i++)
                        pthread_join(t[i], NULL);
        }
        pthread_t c;
        if (pthread_create(&c, NULL, cancelled_outer, NULL) != 0)
                return 1;
        usleep(20000);
        pthread_cancel(c);
        pthread_join(c, NULL);
        for (int i = 0; i < RUNNING; i++) {
                pthread_t r;
                if (pthread_create(&r, NULL, still_running, NULL) != 0)
                        return 1;
                pthread_detach(r);
        }
        usleep(20000);
        pthread_t e;
        pthread_create(&e, NULL, exiter, NULL);
        pthread_join(e, NULL);
        return 2; /* not reached */
}
