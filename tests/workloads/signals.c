/* Allocations inside a signal handler: a 1 kHz profiling timer interrupts a loop that
 * allocates and frees without pause (so under a profiler most signals land while the
 * agent is at work), and the handler allocates a 200-byte block each time, freeing every
 * other one.  The program prints how many times the handler ran: the profile must have
 * exactly that many allocations at handler_alloc, half of them still live at exit.
 *
 * glibc's malloc is not async-signal-safe: a signal that lands inside glibc's own malloc
 * code (not the profiler's) can corrupt its caches.  The loop and the handler use
 * different size classes (16-40 and 200 bytes) so that the tcache bin the handler uses
 * is never the one being updated by the interrupted call.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define MAX_SIGNALS 4096

static void *volatile kept[MAX_SIGNALS];
static volatile sig_atomic_t hits;
void *volatile loop_sink;

void *handler_alloc(void);
void churn(long n);

__attribute__((noinline)) void *handler_alloc(void)
{
        void *p = malloc(200);
        __asm__ volatile("" : : "r"(p) : "memory"); /* keep this frame */
        return p;
}

static void on_prof(int sig)
{
        (void)sig;
        if (hits >= MAX_SIGNALS)
                return;
        void *p = handler_alloc();
        if (hits % 2 == 1) {
                free(p);
                p = NULL;
        }
        kept[hits] = p;
        hits = hits + 1;
}

__attribute__((noinline)) void churn(long n)
{
        for (long i = 0; i < n; i++) {
                loop_sink = malloc(16 + (size_t)(i % 25));
                free(loop_sink);
        }
}

int main(int argc, char **argv)
{
        long n = argc > 1 ? atol(argv[1]) : 3000000;
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_prof;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGPROF, &sa, NULL);
        struct itimerval it = {{0, 1000}, {0, 1000}};
        setitimer(ITIMER_PROF, &it, NULL);
        churn(n);
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_PROF, &off, NULL);
        char line[32];
        int len = snprintf(line, sizeof(line), "%d\n", (int)hits);
        fwrite(line, 1, (size_t)len, stdout); /* stdout's buffer: one more allocation */
        return 0;
}
