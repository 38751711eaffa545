/* Signals at a high rate to threads as they start: while NTHREADS threads (waves of WAVE)
 * each make ALLOCS allocations of 40 bytes (tsig_alloc) and free them, a storm thread
 * sends SIGUSR1 without pause to the threads running, and the handler allocates and frees
 * a 200-byte block (tsig_handler_alloc).  A thread's first recorded allocation is where
 * the agent claims and maps its ring and asks for its stack's bounds, and allocates for
 * itself (agent/record.c: thread_ring): a handler's allocations there are the program's
 * and must be recorded like any other.  Prints how many times the handler ran: the
 * profile must have exactly that many allocations at tsig_handler_alloc, and
 * NTHREADS x ALLOCS at tsig_alloc, nothing dropped.  Exits 0.
 *
 * glibc's malloc is not async-signal-safe: each thread fills its cache of both sizes
 * before it takes signals (with the C library's own malloc, which the profiler does not
 * see) and blocks them again before it ends (the cache is torn down at thread exit), and
 * the handler uses another size class than the thread.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { NTHREADS = 1600, WAVE = 16, ALLOCS = 20, TIDS = 64 };

void *__libc_malloc(size_t);
void __libc_free(void *);
void *tsig_alloc(void);
void *tsig_handler_alloc(void);

static atomic_long hits;
static _Atomic pid_t tids[TIDS]; /* threads that take signals now (0: none) */
static atomic_int stop;

__attribute__((noinline)) void *tsig_alloc(void)
{
        void *p = malloc(40);
        __asm__ volatile("" : : "r"(p) : "memory"); /* keep this frame */
        return p;
}

__attribute__((noinline)) void *tsig_handler_alloc(void)
{
        void *p = malloc(200);
        __asm__ volatile("" : : "r"(p) : "memory");
        return p;
}

static void on_usr1(int sig)
{
        (void)sig;
        void *p = tsig_handler_alloc();
        if (p != NULL)
                atomic_fetch_add(&hits, 1);
        free(p);
}

static void mask(int how)
{
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGUSR1);
        pthread_sigmask(how, &s, NULL);
}

static void *thread_main(void *arg)
{
        _Atomic pid_t *slot = &tids[(long)arg % TIDS];
        /* SIGUSR1 is blocked (inherited from main) */
        __libc_free(__libc_malloc(200));
        __libc_free(__libc_malloc(40));
        *slot = (pid_t)syscall(SYS_gettid);
        mask(SIG_UNBLOCK);
        for (int i = 0; i < ALLOCS; i++)
                free(tsig_alloc());
        mask(SIG_BLOCK);
        *slot = 0;
        return NULL;
}

static void *storm(void *arg)
{
        (void)arg;
        pid_t pid = getpid();
        while (!atomic_load(&stop))
                for (int i = 0; i < TIDS; i++) {
                        pid_t t = tids[i];
                        if (t != 0)
                                syscall(SYS_tgkill, pid, t, SIGUSR1);
                }
        return NULL;
}

int main(void)
{
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_usr1;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGUSR1, &sa, NULL);
        mask(SIG_BLOCK);
        pthread_t st, t[WAVE];
        if (pthread_create(&st, NULL, storm, NULL) != 0)
                return 1;
        for (long done = 0; done < NTHREADS; done += WAVE) {
                for (long i = 0; i < WAVE; i++)
                        if (pthread_create(&t[i], NULL, thread_main, (void *)(done + i)) != 0)
                                return 1;
                for (int i = 0; i < WAVE; i++)
                        pthread_join(t[i], NULL);
        }
        atomic_store(&stop, 1);
        pthread_join(st, NULL);
        printf("%ld\n", atomic_load(&hits));
        return 0;
}
