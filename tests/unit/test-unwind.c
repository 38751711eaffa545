/* The agent's cached DWARF unwinder (agent/unwind.c) against libunwind, the reference:
 * the same return addresses through plain recursion, frames with large and dynamic stack
 * allocations, frame-pointer functions, callbacks from inside the C library (qsort), and
 * in other threads; the second capture of a stack (from the rule cache) equal to the
 * first; stacks it does not handle handed back (-1), never a wrong one.  Then the memo
 * (a thread's last stack, reused where the next one meets it) against the unwinder
 * without it, on stacks that meet it and leave it in every way: deeper, shallower, the
 * same frame sizes under other callers, cut at the frame limit and then not; and the
 * timed trial that decides whether a thread uses it.  The general unwinder (the slow
 * path) against libunwind everywhere, also with the stack's bounds unknown (every read
 * checked first) and from signal handlers, on the thread's stack and on a
 * sigaltstack, where the fast one hands the stack back.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <alloca.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define UNW_LOCAL_ONLY
#include <libunwind.h>

#include "helpers.h"
#include "unwind.h"

extern void *__libc_stack_end;

#include <signal.h>

static __thread uint64_t t_stack_hi, t_stack_lo;
static int general_checked, general_signal;
static __thread struct ap_unwind_memo t_memo;
static __thread uint64_t t_last[64]; /* the memo's capture before, to check *same */
static __thread int t_last_n;
static int checked, handed_back, memo_checked, memo_same;

/* The memo's capture against the plain one with the same limit, twice from the same call
 * site (the second time the whole stack is the memo's: *same).  out[1] (the return
 * address into this function) differs between the two captures; the rest must not. */
static __attribute__((noinline)) void compare_memo(const char *what, int max)
{
        uint64_t a[64], b[64], hash;
        bool same;
        for (int k = 0; k < 2; k++) {
                /* Pin the choice to the memo (a timed trial could set it aside). */
                t_memo.phase = 0;
                t_memo.use = 1;
                t_memo.left = 1000;
                int na = ap_unwind_capture(a, max, t_stack_hi);
                int nb = ap_unwind_capture_here(b, max, t_stack_hi, &t_memo, &hash, &same);
                if (na != nb) {
                        fprintf(stderr, "%s (max %d): %d frames with the memo, %d without\n",
                                what, max, nb, na);
                        exit(1);
                }
                if (nb < 0)
                        return;
                for (int i = 2; i < nb; i++) {
                        if (a[i] != b[i]) {
                                fprintf(stderr, "%s (max %d): frame %d: %#" PRIx64
                                                " with the memo, %#" PRIx64 " without\n",
                                        what, max, i, b[i], a[i]);
                                exit(1);
                        }
                }
                ASSERT_EQ(hash, ap_stack_hash(b, (uint32_t)nb));
                /* Same: every frame equal to the last capture's, out[0] and out[1] too. */
                if (same) {
                        ASSERT_EQ(nb, t_last_n);
                        ASSERT_TRUE(memcmp(b, t_last, 8 * (size_t)nb) == 0);
                }
                if (k == 1) {
                        ASSERT_TRUE(same);
                        memo_same++;
                }
                memcpy(t_last, b, 8 * (size_t)nb);
                t_last_n = nb;
                memo_checked++;
        }
}

static volatile int sink;

static __attribute__((noinline)) void recurse_memo(int depth, int max)
{
        if (depth == 0) {
                compare_memo("recursion", max);
                return;
        }
        recurse_memo(depth - 1, max);
        sink++;
}

/* Two callers with frames of the same size: the frames under them sit at the same
 * addresses with the same return addresses, and only the slot holding the return
 * address into the caller tells the stacks apart. */
static __attribute__((noinline)) void memo_leaf(int n)
{
        volatile int x = n;
        compare_memo("under twin callers", 64);
        sink += x;
}

static __attribute__((noipa)) void twin_a(int n)
{
        volatile int x = n;
        memo_leaf(n);
        sink += x;
}

/* Not twin_a's code (or gcc folds the two into one function). */
static __attribute__((noipa)) void twin_b(int n)
{
        volatile int x = n + 1;
        memo_leaf(n);
        sink -= x;
}

/* Two chains of calls that meet only in main, for the memo's own measure of whether it
 * pays. */
static __attribute__((noinline)) void capture_with_memo(void)
{
        uint64_t b[64], hash;
        bool same;
        ASSERT_TRUE(ap_unwind_capture_here(b, 64, t_stack_hi, &t_memo, &hash, &same) > 0);
}

static __attribute__((noipa)) void chain_a(int d)
{
        if (d == 0) {
                capture_with_memo();
                return;
        }
        chain_a(d - 1);
        sink++;
}

static __attribute__((noipa)) void chain_b(int d)
{
        if (d == 0) {
                capture_with_memo();
                return;
        }
        chain_b(d - 1);
        sink--;
}

static __attribute__((noinline, optimize("no-omit-frame-pointer"))) void fp_memo(int n)
{
        volatile char *p = alloca((size_t)n);
        p[0] = 1;
        compare_memo("frame-pointer function", 64);
        sink += p[0];
}

/* An unwinder's list x against libunwind's b, from the same place: x has one frame more
 * at the start (inside the capture function); from the return address into the caller
 * on, the two must be equal. */
static void check_against(const char *what, const char *which, const uint64_t *x, int nx,
                          const uint64_t *b, int nb)
{
        if (nx - 1 != nb) {
                fprintf(stderr, "%s: %s unwinder %d frames, libunwind %d\n", what, which, nx - 1,
                        nb);
                for (int i = 0; i < nx || i < nb; i++)
                        fprintf(stderr, "  %#" PRIx64 "  %#" PRIx64 "\n", i + 1 < nx ? x[i + 1] : 0,
                                i < nb ? b[i] : 0);
                exit(1);
        }
        for (int i = 2; i < nx; i++) {
                if (x[i] != b[i - 1]) {
                        fprintf(stderr,
                                "%s: %s unwinder frame %d: %#" PRIx64 ", libunwind %#" PRIx64 "\n",
                                what, which, i - 1, x[i], b[i - 1]);
                        exit(1);
                }
        }
}

/* The cached unwinder, the general one (with and without the stack's bounds) and
 * libunwind from the same place. */
static __attribute__((noinline)) void compare_here(const char *what)
{
        uint64_t a[64], b[64], g[64], u[64];
        void *raw[64];
        int na = ap_unwind_capture(a, 64, t_stack_hi);
        int nb = unw_backtrace(raw, 64);
        int ng = ap_unwind_capture_general_here(g, 64, t_stack_lo, t_stack_hi);
        int nu = ap_unwind_capture_general_here(u, 64, 0, 0); /* bounds unknown */
        for (int i = 0; i < nb; i++)
                b[i] = (uint64_t)(uintptr_t)raw[i];
        check_against(what, "general", g, ng, b, nb);
        check_against(what, "general (no bounds)", u, nu, b, nb);
        general_checked += 2;
        if (na < 0) {
                handed_back++;
                return;
        }
        check_against(what, "cached", a, na, b, nb);
        /* Again, now from the cache: the same list (past this function's own frame). */
        uint64_t c[64];
        int nc = ap_unwind_capture(c, 64, t_stack_hi);
        ASSERT_EQ(nc, na);
        for (int i = 2; i < nc; i++)
                ASSERT_EQ(c[i], a[i]);
        checked++;
}

static __attribute__((noinline)) void recurse(int depth)
{
        if (depth == 0) {
                compare_here("recursion");
                return;
        }
        recurse(depth - 1);
        sink++;
}

/* A large frame: the CFA is far from rsp. */
static __attribute__((noinline)) void big_frame(int n)
{
        volatile char buf[200000];
        buf[n] = 1;
        compare_here("200 KB frame");
        sink += buf[n];
}

/* alloca: gcc keeps a frame pointer and defines the CFA from rbp. */
static __attribute__((noinline)) void dynamic_frame(int n)
{
        volatile char *p = alloca((size_t)n);
        p[0] = 1;
        compare_here("alloca frame");
        sink += p[0];
}

static __attribute__((noinline, optimize("no-omit-frame-pointer"))) void fp_frame(int n)
{
        volatile int x = n;
        compare_here("frame-pointer function");
        sink += x;
}

/* Over-aligned locals: the stack is realigned (a DWARF expression for the CFA on some
 * compilers): handed back or right, never wrong. */
static __attribute__((noinline)) void realigned_frame(int n)
{
        volatile char buf[64] __attribute__((aligned(64)));
        buf[n & 63] = 1;
        compare_here("realigned frame");
        sink += buf[n & 63];
}

/* A signal handler's stack runs through the kernel's signal frame: the fast unwinder
 * hands it back, the general one must go on to the interrupted code, as libunwind does. */
static void on_signal(int sig)
{
        (void)sig;
        int before = handed_back;
        compare_here("signal handler");
        general_signal += handed_back - before;
        handed_back = before;
}

static __attribute__((noinline)) void raise_from(int depth)
{
        if (depth > 0)
                raise_from(depth - 1);
        else
                raise(SIGUSR1);
        sink++;
}

static int cmp_int(const void *x, const void *y)
{
        static int once;
        if (!once) {
                once = 1;
                compare_here("qsort callback");
        }
        return *(const int *)x - *(const int *)y;
}

static void *thread_main(void *arg)
{
        pthread_attr_t a;
        void *lo;
        size_t size;
        ASSERT_EQ(pthread_getattr_np(pthread_self(), &a), 0);
        ASSERT_EQ(pthread_attr_getstack(&a, &lo, &size), 0);
        pthread_attr_destroy(&a);
        t_stack_hi = (uint64_t)(uintptr_t)lo + size;
        t_stack_lo = (uint64_t)(uintptr_t)lo;
        recurse((int)(intptr_t)arg);
        return NULL;
}

int main(void)
{
        ASSERT_EQ(ap_unwind_init(), 0);
        t_stack_hi = (uint64_t)(uintptr_t)__libc_stack_end;
        t_stack_lo = t_stack_hi - (64u << 20); /* as the agent takes the main stack */

        for (int d = 0; d <= 50; d += 5)
                recurse(d);
        big_frame(7);
        dynamic_frame(100);
        dynamic_frame(5000);
        fp_frame(3);
        realigned_frame(9);
        int v[64];
        for (int i = 0; i < 64; i++)
                v[i] = (i * 37) % 64;
        qsort(v, 64, sizeof(v[0]), cmp_int);

        pthread_t th[4];
        for (int i = 0; i < 4; i++)
                ASSERT_EQ(pthread_create(&th[i], NULL, thread_main, (void *)(intptr_t)(3 * i)), 0);
        for (int i = 0; i < 4; i++)
                ASSERT_EQ(pthread_join(th[i], NULL), 0);

        /* The memo: deeper and shallower stacks in turn; a stack cut at 64 frames and
         * then a shorter one that needs the frames beyond the cut; small limits. */
        static const int depths[] = {0, 10, 3, 40, 40, 7, 80, 30, 75, 120, 2, 61, 62, 63, 0};
        for (size_t i = 0; i < sizeof(depths) / sizeof(depths[0]); i++) {
                recurse_memo(depths[i], 64);
                recurse_memo(depths[i], 5);
        }
        for (int i = 0; i < 4; i++) {
                twin_a(i);
                twin_b(i);
                fp_memo(16 + 100 * i);
        }

        /* The memo's own trial: 64 captures timed without it, 64 with it, then a run
         * of 4096 the cheaper way (which one depends on timing: not checked). */
        memset(&t_memo, 0, sizeof(t_memo));
        for (int i = 0; i < 64; i++)
                (i & 1 ? chain_a : chain_b)(12);
        ASSERT_EQ(t_memo.phase, 2);
        ASSERT_EQ(t_memo.n, 0); /* not used while timing the captures without it */
        ASSERT_TRUE(t_memo.trial_frames[0] >= 64 * 12);
        for (int i = 0; i < 64; i++)
                chain_a(12);
        ASSERT_EQ(t_memo.phase, 0);
        ASSERT_EQ(t_memo.left, 4096);
        ASSERT_TRUE(t_memo.trial_frames[1] >= 64 * 12 && t_memo.trial_ticks[1] > 0);

        /* Signal handlers, on this stack and then on a sigaltstack. */
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        ASSERT_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
        raise_from(3);
        static char alt[1 << 16];
        stack_t ss = {.ss_sp = alt, .ss_size = sizeof(alt)};
        ASSERT_EQ(sigaltstack(&ss, NULL), 0);
        sa.sa_flags = SA_ONSTACK;
        ASSERT_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
        raise_from(5);
        ASSERT_EQ(general_signal, 2); /* both handed back by the fast unwinder */

        /* Checked reads: [PROT_NONE][readable page, the known range][PROT_NONE]. */
        {
                char *m = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                               -1, 0);
                ASSERT_TRUE(m != MAP_FAILED);
                ASSERT_EQ(mprotect(m, 4096, PROT_NONE), 0);
                ASSERT_EQ(mprotect(m + 2 * 4096, 4096, PROT_NONE), 0);
                uint64_t mid = (uint64_t)(uintptr_t)(m + 4096), w = 0;
                memset(m + 4096, 0x5a, 4096);
                struct ap_unwind_reader rd = {.lo = mid, .hi = mid + 4096};
                ASSERT_TRUE(ap_unwind_read_word(&rd, mid, &w) && w == 0x5a5a5a5a5a5a5a5aull);
                ASSERT_TRUE(ap_unwind_read_word(&rd, mid + 4088, &w));
                ASSERT_TRUE(!ap_unwind_read_word(&rd, mid + 3, &w));    /* unaligned */
                ASSERT_TRUE(!ap_unwind_read_word(&rd, mid + 4096, &w)); /* just above */
                ASSERT_TRUE(!ap_unwind_read_word(&rd, mid + 4352, &w));
                ASSERT_TRUE(!ap_unwind_read_word(&rd, mid - 8, &w)); /* just below */
                struct ap_unwind_reader none = {0};
                ASSERT_TRUE(ap_unwind_read_word(&none, mid + 8, &w) && w == 0x5a5a5a5a5a5a5a5aull);
                ASSERT_TRUE(none.ok_lo == mid && none.ok_hi == mid + 4096); /* remembered */
                ASSERT_TRUE(!ap_unwind_read_word(&none, mid + 4096, &w));
                munmap(m, 3 * 4096);
        }

        /* The general unwinder on a stack pointer into memory it must not read: an
         * unmapped page, and a mapped one without permissions (a guard page).  It stops
         * after the first frame, without a fault. */
        {
                uint64_t pc = (uint64_t)(uintptr_t)recurse + 8, g[8];
                char *gone = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                  -1, 0);
                ASSERT_TRUE(gone != MAP_FAILED);
                ASSERT_EQ(munmap(gone, 8192), 0);
                ASSERT_EQ(ap_unwind_capture_general(g, 8, 0, 0, pc, (uint64_t)(uintptr_t)gone + 64,
                                                    0),
                          1);
                uint64_t probe = 7, got = 0;
                struct iovec l = {&got, sizeof(got)}, r = {&probe, sizeof(probe)};
                if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)sizeof(got)) {
                        char *guard =
                                mmap(NULL, 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                        ASSERT_TRUE(guard != MAP_FAILED);
                        ASSERT_EQ(ap_unwind_capture_general(g, 8, 0, 0, pc,
                                                            (uint64_t)(uintptr_t)guard + 64, 0),
                                  1);
                        munmap(guard, 8192);
                } else {
                        fprintf(stderr,
                                "process_vm_readv not allowed here: guard page case skipped\n");
                }
        }

        /* Unknown stack top: nothing is attempted. */
        uint64_t out[8];
        ASSERT_EQ(ap_unwind_capture(out, 8, 0), -1);
        /* A short buffer: the innermost frames only. */
        ASSERT_EQ(ap_unwind_capture(out, 3, t_stack_hi), 3);

        /* Everything a compiler emits for these must be handled, except perhaps the
         * realigned frame. */
        fprintf(stderr,
                "%d stacks equal to libunwind's, %d handed back; %d with the memo; general "
                "unwinder: %d equal to libunwind's (%d through a signal frame)\n",
                checked, handed_back, memo_checked, general_checked, general_signal);
        ASSERT_TRUE(general_checked >= 2 * (checked + 2));
        ASSERT_TRUE(handed_back <= 1);
        ASSERT_TRUE(checked >= 20);
        ASSERT_EQ(memo_checked, 2 * (2 * 15 + 12));
        ASSERT_EQ(memo_same, memo_checked / 2);
        return 0;
}
