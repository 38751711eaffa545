/* The interposed malloc family.  Each hook calls glibc's own implementation (exported as
 * __libc_*), then records what happened.  Hooks preserve errno, never allocate and never
 * take a lock; recursion (the unwinder allocating, say) passes straight through.
 *
 * Every hook has an inline fast path that decides, with a few loads, whether this call
 * is recorded at all (in sampled mode almost never), and an out-of-line slow path that
 * saves errno and does the work.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>

#include "agent.h"
#include "allocprof/atomics.h"

#define AP_EXPORT __attribute__((visibility("default")))
#define AP_SLOW __attribute__((noinline, cold))

/* The live session, or NULL.  Acquire pairs with the release that published it
 * (session.c): header and rings are initialized before we see the pointer. */
static inline struct ap_shm_header *session(void)
{
        return atomic_load_explicit(&ap_session, memory_order_acquire);
}

/* No session yet: maybe this is the first call of the process (or of a fork child). */
static AP_SLOW struct ap_shm_header *session_slow(struct ap_thread *t)
{
        int e = errno;
        t->in_hook = 1;
        t->own_alloc++;
        ap_session_ensure();
        t->own_alloc--;
        t->in_hook = 0;
        errno = e;
        return session();
}

/* Relaxed: the mode is a hint the collector may flip at any time; a call racing with the
 * flip may go either way. */
static inline uint32_t mode_of(struct ap_shm_header *h)
{
        return ap_load_relaxed(&h->xmode);
}

/* The fast paths' mode: the session's, or AP_MODE_FULL before the first try at a session
 * (new_block and end_block then look for the session), AP_MODE_OFF with none at all.
 * Acquire pairs with the release that published the word (session.c); the mode itself
 * is relaxed as in mode_of. */
static inline uint32_t fast_mode(void)
{
        return ap_load_relaxed(atomic_load_explicit(&ap_mode_word, memory_order_acquire));
}

static AP_SLOW void alloc_full(struct ap_thread *t, void *p, size_t size, const void *entry)
{
        int e = errno;
        t->in_hook = 1;
        ap_record_alloc(p, size, entry);
        t->in_hook = 0;
        errno = e;
}

/* Sampled mode, the sampler's countdown ran out (or was never set): count the sample
 * points this block covers and record it if there are any.  Each point weighs the
 * interval its gap was drawn with.  A new interval (the collector's) is taken up here,
 * after this block: the hooks' fast path does not look for it, so a thread finishes the
 * gap it has started at the old one.  Whichever interval a byte is sampled at, its weight
 * is that interval, so the estimates stay unbiased across the change. */
static AP_SLOW void alloc_sampled(struct ap_thread *t, struct ap_shm_header *h, void *p,
                                  size_t size, bool realloc, const void *entry)
{
        int e = errno;
        t->in_hook = 1;
        uint64_t interval = ap_load_relaxed(&h->xsample_interval);
        /* A thread's first allocation in sampled mode gets here (its countdown starts at
         * 0): counted, for the report's thread total. */
        uint64_t gen = ap_load_relaxed(&ap_session_gen) + 1;
        if (t->counted_gen != gen) {
                t->counted_gen = gen;
                ap_count(AP_CNT_SAMPLED_THREADS, 1);
        }
        if (!t->sampler_ready) {
                ap_sampler_init(&t->sampler, interval, ap_sampler_seed());
                t->sampler_ready = 1;
        }
        /* Else sampler_skips found that size takes the countdown to 0 or below. */
        uint64_t n = ap_sampler_take(&t->sampler, ap_sampler_stream_size(size));
        uint64_t weight = n * t->sampler.interval;
        if (t->sampler.interval != ap_sampler_interval(interval))
                ap_sampler_init(&t->sampler, interval, ap_sampler_seed());
        if (n > 0) {
                ap_sampled_remember(p);
                ap_record_alloc_sampled(p, size, weight, realloc, entry);
                t->temp_addr = (uintptr_t)p;
                t->temp_left = t->sampler.left;
        }
        t->in_hook = 0;
        errno = e;
}

/* This thread is inside the agent already: a signal handler allocates, or the agent
 * itself does (ap_nested_* tell them apart). */
static AP_SLOW void nested_alloc(void *p, size_t size, bool realloc)
{
        int e = errno;
        ap_nested_alloc(p, size, realloc);
        errno = e;
}

static AP_SLOW void nested_free(void *p)
{
        int e = errno;
        ap_nested_free(p);
        errno = e;
}

/* Sampled mode: true if size bytes (one for a zero-size block: ap_sampler_stream_size)
 * do not reach the next sample point, which they are then taken off the countdown of;
 * false (countdown untouched) if they do: alloc_sampled's work.  A sampler never set up
 * needs no test of its own: its countdown is 0, so it never skips. */
static inline bool sampler_skips(struct ap_thread *t, size_t size)
{
        /* Unsigned: the countdown is never negative (a sampler keeps it at 1 or more, an
         * unset one is 0), and a size of 2^63 or more must not wrap it (it reaches
         * new_block, which counts nothing for the failed request). */
        uint64_t left = (uint64_t)t->sampler.left;
        size = ap_sampler_stream_size(size);
        if (ap_likely(left > size)) {
                t->sampler.left = (int64_t)(left - size);
                return true;
        }
        return false;
}

/* A new block p of size bytes (malloc & co, or the new block of a realloc in sampled
 * mode).  Always inlined: __builtin_frame_address(0) here is the frame of the hook it is
 * inlined into, where the stack capture starts skipping the agent's frames. */
static inline __attribute__((always_inline)) void new_block(void *p, size_t size, bool realloc)
{
        struct ap_thread *t = &ap_tls;
        if (ap_unlikely(p == NULL))
                return;
        if (ap_unlikely(t->in_hook)) {
                nested_alloc(p, size, realloc);
                return;
        }
        struct ap_shm_header *h = session();
        if (ap_unlikely(h == NULL) && (h = session_slow(t)) == NULL)
                return;
        uint32_t mode = mode_of(h);
        if (mode == AP_MODE_SAMPLED) {
                if (!sampler_skips(t, size))
                        alloc_sampled(t, h, p, size, realloc, __builtin_frame_address(0));
        } else if (mode == AP_MODE_FULL) {
                alloc_full(t, p, size, __builtin_frame_address(0));
        }
}

static AP_SLOW void free_record(struct ap_thread *t, void *p)
{
        int e = errno;
        t->in_hook = 1;
        ap_record_free(p, ap_clock_ticks_early(), 0);
        t->in_hook = 0;
        errno = e;
}

static AP_SLOW void free_sampled(struct ap_thread *t, void *p, uint32_t mode)
{
        int e = errno;
        t->in_hook = 1;
        if (ap_sampled_forget(p)) {
                /* Detached, allocations no longer move the countdown: cannot tell. */
                bool temporary = mode == AP_MODE_SAMPLED && t->temp_addr == (uintptr_t)p &&
                                 t->sampler.left == t->temp_left;
                if (t->temp_addr == (uintptr_t)p)
                        t->temp_addr = 0;
                ap_record_free(p, ap_clock_ticks_early(),
                               AP_RECF_SAMPLED_FREE | (temporary ? AP_RECF_TEMPORARY : 0));
        }
        t->in_hook = 0;
        errno = e;
}

/* Block p ends (called before it is really freed, so that once another thread can get
 * the address back, our record of its death is already visible; see wire.h).  Always
 * recorded in full mode; in sampled (and detached) mode only if p was sampled, which the
 * cache-resident filter rules out for almost every block. */
static inline void end_block(void *p)
{
        struct ap_thread *t = &ap_tls;
        if (ap_unlikely(p == NULL))
                return;
        if (ap_unlikely(t->in_hook)) {
                nested_free(p);
                return;
        }
        struct ap_shm_header *h = session();
        if (ap_unlikely(h == NULL))
                return; /* no session: nothing of ours can be live */
        uint32_t mode = mode_of(h);
        if (mode == AP_MODE_SAMPLED || mode == AP_MODE_DETACHED) {
                if (ap_sampled_maybe(p))
                        free_sampled(t, p, mode);
        } else if (mode == AP_MODE_FULL) {
                free_record(t, p);
        }
}

/* True when an allocation of size bytes will not be recorded, whatever malloc returns:
 * malloc and calloc then end in a jump to glibc's, with no frame of their own (in
 * dormant and detached mode, and in sampled mode between two sample points, that is
 * nearly every call).  In sampled mode it takes the size off the countdown, as new_block
 * would have, and also for an allocation that fails (it only moves the next sample point
 * by the size of a failed request).  False leaves everything to new_block: no session
 * yet, full mode, or a sample point reached.
 *
 * Whether the thread is inside the agent is not looked at: the agent's own allocations
 * (rare: thread set-up) move the countdown too, and a sample point that falls in one is
 * dropped by new_block, which does look.  That costs no bias: every byte of the program
 * is still a sample point with probability 1/interval, whatever came before it (the
 * gaps are memoryless), and at an interval of 1, where the figures must be exact, no
 * allocation ever skips. */
static inline bool quiet_block(size_t size)
{
        uint32_t mode = fast_mode();
        if (mode == AP_MODE_SAMPLED)
                return sampler_skips(&ap_tls, size);
        return mode != AP_MODE_FULL;
}

/* The recording path, out of line so that malloc itself needs no stack frame. */
static __attribute__((noinline)) void *malloc_recorded(size_t size)
{
        void *p = __libc_malloc(size);
        new_block(p, size, false);
        return p;
}

AP_EXPORT void *malloc(size_t size)
{
        if (ap_likely(quiet_block(size)))
                return __libc_malloc(size);
        return malloc_recorded(size);
}

static __attribute__((noinline)) void *calloc_recorded(size_t nmemb, size_t size)
{
        /* On overflow glibc returns NULL and nothing is recorded. */
        void *p = __libc_calloc(nmemb, size);
        new_block(p, nmemb * size, false);
        return p;
}

AP_EXPORT void *calloc(size_t nmemb, size_t size)
{
        size_t total;
        if (!__builtin_mul_overflow(nmemb, size, &total) && ap_likely(quiet_block(total)))
                return __libc_calloc(nmemb, size);
        return calloc_recorded(nmemb, size);
}

/* True when freeing p will not be recorded: free then ends in a jump to glibc's, with no
 * stack frame of its own.  The same decisions as end_block's, which the other case goes
 * through; whether the thread is inside the agent changes none of them (end_block hands
 * such a free to ap_nested_free, which records it in the same cases only), so it is not
 * looked at here.  free(NULL) needs no test of its own: in full mode end_block skips it,
 * and in sampled mode its filter bucket is all a test would cost.  Before the agent's
 * first try at a session the word reads full mode, and end_block finds no session. */
static inline bool quiet_free(void *p)
{
        uint32_t mode = fast_mode();
        if (mode == AP_MODE_SAMPLED || mode == AP_MODE_DETACHED)
                return !ap_sampled_maybe(p);
        return mode != AP_MODE_FULL;
}

static __attribute__((noinline)) void free_recorded(void *p)
{
        end_block(p);
        __libc_free(p);
}

AP_EXPORT void free(void *p)
{
        if (ap_likely(quiet_free(p)))
                return __libc_free(p);
        free_recorded(p);
}

static AP_SLOW void realloc_full(struct ap_thread *t, void *old, void *p, size_t size, uint64_t ts,
                                 const void *entry)
{
        int e = errno;
        t->in_hook = 1;
        ap_record_realloc(old, p, size, ts, entry);
        t->in_hook = 0;
        errno = e;
}

AP_EXPORT void *realloc(void *old, size_t size)
{
        struct ap_thread *t = &ap_tls;

        if (old == NULL) {
                void *p = __libc_realloc(NULL, size);
                new_block(p, size, false);
                return p;
        }
        if (size == 0) {
                /* glibc frees the block and returns NULL. */
                end_block(old);
                return __libc_realloc(old, 0);
        }
        if (ap_unlikely(t->in_hook)) {
                void *p = __libc_realloc(old, size);
                if (p != NULL) {
                        nested_free(old);
                        nested_alloc(p, size, true);
                }
                return p;
        }
        struct ap_shm_header *h = session();
        /* No session tried yet (a fork child whose first call this is, resizing a block
         * it inherited): look for one first, as new_block does, or the new block would
         * go unrecorded.  The untried word reads full mode; none at all, off. */
        if (ap_unlikely(h == NULL) && fast_mode() == AP_MODE_FULL)
                h = session_slow(t);
        uint32_t mode = h ? mode_of(h) : AP_MODE_OFF;
        if (mode == AP_MODE_FULL) {
                /* old may be reused by other threads from inside the real realloc: its
                 * end is stamped before. */
                uint64_t ts = ap_clock_ticks_early();
                void *p = __libc_realloc(old, size);
                if (p != NULL)
                        realloc_full(t, old, p, size, ts, __builtin_frame_address(0));
                return p;
        }
        if ((mode == AP_MODE_SAMPLED || mode == AP_MODE_DETACHED) && ap_sampled_maybe(old) &&
            ap_sampled_contains(old)) {
                /* A sampled block: it ends only if the realloc succeeds. */
                uint64_t ts = ap_clock_ticks_early();
                void *p = __libc_realloc(old, size);
                if (p != NULL) {
                        int e = errno;
                        t->in_hook = 1;
                        if (ap_sampled_forget(old)) /* a realloc'ed block: not temporary */
                                ap_record_free(old, ts, AP_RECF_SAMPLED_FREE);
                        if (t->temp_addr == (uintptr_t)old)
                                t->temp_addr = 0;
                        t->in_hook = 0;
                        errno = e;
                        new_block(p, size, true);
                }
                return p;
        }
        void *p = __libc_realloc(old, size);
        if (mode == AP_MODE_SAMPLED)
                new_block(p, size, true);
        return p;
}

AP_EXPORT void *reallocarray(void *old, size_t nmemb, size_t size)
{
        size_t total;

        if (__builtin_mul_overflow(nmemb, size, &total)) {
                errno = ENOMEM;
                return NULL;
        }
        return realloc(old, total);
}

AP_EXPORT void *memalign(size_t alignment, size_t size)
{
        void *p = __libc_memalign(alignment, size);
        new_block(p, size, false);
        return p;
}

AP_EXPORT void *aligned_alloc(size_t alignment, size_t size)
{
        /* glibc 2.36 implements aligned_alloc as memalign. */
        void *p = __libc_memalign(alignment, size);
        new_block(p, size, false);
        return p;
}

AP_EXPORT int posix_memalign(void **memptr, size_t alignment, size_t size)
{
        /* glibc's checks, then its memalign: errno is left as glibc's posix_memalign
         * leaves it (untouched for a bad alignment, ENOMEM when no block is given). */
        if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0 || alignment == 0)
                return EINVAL;
        void *p = __libc_memalign(alignment, size);
        if (p == NULL)
                return ENOMEM;
        new_block(p, size, false);
        *memptr = p;
        return 0;
}

AP_EXPORT void *valloc(size_t size)
{
        void *p = __libc_valloc(size);
        new_block(p, size, false);
        return p;
}

AP_EXPORT void *pvalloc(size_t size)
{
        void *p = __libc_pvalloc(size);
        new_block(p, size, false);
        return p;
}

/* ---- C++ operator new and delete -------------------------------------------------------
 * libstdc++'s operator new calls malloc, which brings its blocks here.  A program linked
 * with another allocator (jemalloc, tcmalloc) gets that library's operator new instead,
 * which does not: its C++ blocks went unseen, while its malloc, ours, gives glibc's.  So
 * the agent defines the replaceable operators itself (Itanium ABI names), as libstdc++
 * does them: the block comes from glibc (a size of 0 asks for 1 byte) and delete frees
 * it as free() does.  Only when glibc has no memory does the next definition take the
 * call (libstdc++'s, or the other allocator's): it runs the new-handler and throws
 * std::bad_alloc, or returns NULL in the nothrow forms, asking malloc again, which comes
 * back here.  The aligned forms (std::align_val_t) are left to that next definition
 * (libstdc++'s calls aligned_alloc, ours), and so are their deletes, which must match. */

typedef void *(*cxx_new_fn)(size_t);
typedef void *(*cxx_new_nothrow_fn)(size_t, const void *);

void *_Znwm(size_t size);
void *_Znam(size_t size);
void *_ZnwmRKSt9nothrow_t(size_t size, const void *nothrow);
void *_ZnamRKSt9nothrow_t(size_t size, const void *nothrow);
void _ZdlPv(void *p);
void _ZdaPv(void *p);
void _ZdlPvm(void *p, size_t size);
void _ZdaPvm(void *p, size_t size);
void _ZdlPvRKSt9nothrow_t(void *p, const void *nothrow);
void _ZdaPvRKSt9nothrow_t(void *p, const void *nothrow);

/* The next definition of the operator called name (glibc had no memory for it).  Looked
 * up only then: a program that calls it has a C++ runtime that defines it. */
static AP_SLOW void *cxx_next(const char *name)
{
        void *f = dlsym(RTLD_NEXT, name);
        if (f == NULL)
                abort();
        return f;
}

static __attribute__((noinline)) void *cxx_new_recorded(size_t n)
{
        void *p = __libc_malloc(n);
        new_block(p, n, false);
        return p;
}

static inline __attribute__((always_inline)) void *cxx_new(size_t size)
{
        size_t n = size ? size : 1;
        return ap_likely(quiet_block(n)) ? __libc_malloc(n) : cxx_new_recorded(n);
}

AP_EXPORT void *_Znwm(size_t size)
{
        void *p = cxx_new(size);
        if (ap_unlikely(p == NULL))
                p = ((cxx_new_fn)cxx_next("_Znwm"))(size);
        return p;
}

AP_EXPORT void *_Znam(size_t size)
{
        void *p = cxx_new(size);
        if (ap_unlikely(p == NULL))
                p = ((cxx_new_fn)cxx_next("_Znam"))(size);
        return p;
}

AP_EXPORT void *_ZnwmRKSt9nothrow_t(size_t size, const void *nothrow)
{
        void *p = cxx_new(size);
        if (ap_unlikely(p == NULL))
                p = ((cxx_new_nothrow_fn)cxx_next("_ZnwmRKSt9nothrow_t"))(size, nothrow);
        return p;
}

AP_EXPORT void *_ZnamRKSt9nothrow_t(size_t size, const void *nothrow)
{
        void *p = cxx_new(size);
        if (ap_unlikely(p == NULL))
                p = ((cxx_new_nothrow_fn)cxx_next("_ZnamRKSt9nothrow_t"))(size, nothrow);
        return p;
}

/* delete, delete[], their sized and nothrow forms: free(). */
AP_EXPORT void _ZdlPv(void *p)
{
        free(p);
}

AP_EXPORT void _ZdaPv(void *p)
{
        free(p);
}

AP_EXPORT void _ZdlPvm(void *p, size_t size)
{
        (void)size;
        free(p);
}

AP_EXPORT void _ZdaPvm(void *p, size_t size)
{
        (void)size;
        free(p);
}

AP_EXPORT void _ZdlPvRKSt9nothrow_t(void *p, const void *nothrow)
{
        (void)nothrow;
        free(p);
}

AP_EXPORT void _ZdaPvRKSt9nothrow_t(void *p, const void *nothrow)
{
        (void)nothrow;
        free(p);
}
