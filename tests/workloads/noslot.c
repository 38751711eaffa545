/* Threads that cannot get a ring: after its first allocation the program installs a
 * seccomp filter that refuses mremap(2), with which the agent maps each ring slot beyond
 * the first (agent/session.c).  Then NTHREADS threads each allocate and free ALLOCS
 * 40-byte blocks (noslot_alloc): no slot can be mapped for them, so all their events are
 * dropped, and counted.  Meanwhile a 1 kHz profiling timer interrupts the main thread's
 * loop of allocations and frees (16-40 bytes), mostly inside the agent; the handler
 * allocates and frees a 200-byte block (noslot_handler_alloc), which the agent records
 * into a second slot of the main thread's that it cannot map either: those events are
 * dropped and counted too.
 *
 * The filter traps mremap (SIGSYS) instead of failing it outright, so that the program
 * can count how often the agent tried: after a failure it waits before trying again.
 * Prints "<handler runs> <mremap attempts>".  Exits 0.
 *
 * glibc's malloc is not async-signal-safe; as in signals.c the loop and the handler use
 * different size classes.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

enum { NTHREADS = 8, ALLOCS = 20000, LOOP = 3000000 };

void *noslot_alloc(void);
void *noslot_handler_alloc(void);
void *volatile noslot_sink;
static volatile sig_atomic_t hits;
static volatile sig_atomic_t trapped;

__attribute__((noinline)) void *noslot_alloc(void)
{
        void *p = malloc(40);
        __asm__ volatile("" : : "r"(p) : "memory"); /* keep this frame */
        return p;
}

__attribute__((noinline)) void *noslot_handler_alloc(void)
{
        void *p = malloc(200);
        __asm__ volatile("" : : "r"(p) : "memory");
        return p;
}

static void on_prof(int sig)
{
        (void)sig;
        free(noslot_handler_alloc());
        hits = hits + 1;
}

/* mremap refused: it returns -EPERM (the C library makes that MAP_FAILED, errno EPERM). */
#if defined(__x86_64__) || defined(__aarch64__)
#define TRAP SECCOMP_RET_TRAP
static void on_sys(int sig, siginfo_t *si, void *uc_)
{
        (void)sig;
        (void)si;
        ucontext_t *uc = uc_;
#if defined(__x86_64__)
        uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
#else
        uc->uc_mcontext.regs[0] = (unsigned long long)-EPERM;
#endif
        trapped = trapped + 1;
}
#else
/* Elsewhere mremap just fails, uncounted (the program prints -1). */
#define TRAP (SECCOMP_RET_ERRNO | EPERM)
static void on_sys(int sig, siginfo_t *si, void *uc_)
{
        (void)sig;
        (void)si;
        (void)uc_;
}
#endif

static void *thread_main(void *arg)
{
        for (int i = 0; i < ALLOCS; i++)
                free(noslot_alloc());
        return arg;
}

int main(void)
{
        free(noslot_alloc()); /* the session and the main thread's ring exist from here */

        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = on_sys;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigaction(SIGSYS, &sa, NULL);
        struct sock_filter f[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mremap, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, TRAP),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {.len = 4, .filter = f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
                perror("seccomp");
                return 1;
        }

        pthread_t t[NTHREADS];
        for (int i = 0; i < NTHREADS; i++)
                if (pthread_create(&t[i], NULL, thread_main, NULL) != 0)
                        return 1;
        for (int i = 0; i < NTHREADS; i++)
                pthread_join(t[i], NULL);

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_prof;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGPROF, &sa, NULL);
        struct itimerval it = {{0, 1000}, {0, 1000}};
        setitimer(ITIMER_PROF, &it, NULL);
        for (long i = 0; i < LOOP; i++) {
                noslot_sink = malloc(16 + (size_t)(i % 25));
                free(noslot_sink);
        }
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_PROF, &off, NULL);
        printf("%d %d\n", (int)hits, TRAP == SECCOMP_RET_TRAP ? (int)trapped : -1);
        return 0;
}
