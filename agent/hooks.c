/* The interposed malloc family.  Each hook calls glibc's own implementation (exported as
 * __libc_*), then records what happened.  Hooks preserve errno, never allocate and never
 * take a lock; recursion (the unwinder allocating, say) passes straight through.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>

#include "agent.h"
#include "allocprof/atomics.h"

#define AP_EXPORT __attribute__((visibility("default")))

/* Starts recording for one call.  Returns false when this call must not be recorded:
 * recursion, no session, or a mode other than full.  The check costs one acquire load of
 * the session pointer and one relaxed load of the mode word in the common case. */
static inline bool hook_begin(struct ap_thread *t, int *saved_errno)
{
        if (ap_unlikely(t->in_hook))
                return false;
        /* Acquire pairs with the release that published the session (session.c): the
         * header and rings are initialized before we see the pointer. */
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        if (ap_unlikely(h == NULL)) {
                *saved_errno = errno;
                t->in_hook = 1;
                ap_session_ensure();
                t->in_hook = 0;
                errno = *saved_errno;
                h = atomic_load_explicit(&ap_session, memory_order_acquire);
                if (h == NULL)
                        return false;
        }
        /* Relaxed: the mode is a hint that the collector may flip at any time; a call
         * racing with the flip may go either way. */
        if (ap_load_relaxed(&h->xmode) != AP_MODE_FULL)
                return false;
        *saved_errno = errno;
        t->in_hook = 1;
        return true;
}

static inline void hook_end(struct ap_thread *t, int saved_errno)
{
        t->in_hook = 0;
        errno = saved_errno;
}

static inline void *after_alloc(void *p, size_t size)
{
        struct ap_thread *t = &ap_tls;
        int e;

        if (ap_likely(p != NULL) && hook_begin(t, &e)) {
                ap_record_alloc(p, size);
                hook_end(t, e);
        }
        return p;
}

AP_EXPORT void *malloc(size_t size)
{
        return after_alloc(__libc_malloc(size), size);
}

AP_EXPORT void *calloc(size_t nmemb, size_t size)
{
        /* On overflow glibc returns NULL and nothing is recorded. */
        return after_alloc(__libc_calloc(nmemb, size), nmemb * size);
}

AP_EXPORT void free(void *p)
{
        struct ap_thread *t = &ap_tls;
        int e;

        /* Published before the real free: once the block can be handed to another
         * thread, our record of its death is already visible (see wire.h). */
        if (p != NULL && hook_begin(t, &e)) {
                ap_record_free(p, ap_clock_ticks());
                hook_end(t, e);
        }
        __libc_free(p);
}

AP_EXPORT void *realloc(void *old, size_t size)
{
        struct ap_thread *t = &ap_tls;
        int e;

        if (old == NULL)
                return after_alloc(__libc_realloc(NULL, size), size);
        if (size == 0) {
                /* glibc frees the block and returns NULL. */
                if (hook_begin(t, &e)) {
                        ap_record_free(old, ap_clock_ticks());
                        hook_end(t, e);
                }
                return __libc_realloc(old, 0);
        }
        uint64_t ts = ap_clock_ticks();
        void *p = __libc_realloc(old, size);
        if (p != NULL && hook_begin(t, &e)) {
                ap_record_realloc(old, p, size, ts);
                hook_end(t, e);
        }
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
        return after_alloc(__libc_memalign(alignment, size), size);
}

AP_EXPORT void *aligned_alloc(size_t alignment, size_t size)
{
        /* glibc 2.36 implements aligned_alloc as memalign. */
        return after_alloc(__libc_memalign(alignment, size), size);
}

AP_EXPORT int posix_memalign(void **memptr, size_t alignment, size_t size)
{
        int saved = errno;

        if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0 || alignment == 0)
                return EINVAL;
        void *p = __libc_memalign(alignment, size);
        errno = saved; /* posix_memalign reports through its return value only */
        if (p == NULL)
                return ENOMEM;
        *memptr = after_alloc(p, size);
        return 0;
}

AP_EXPORT void *valloc(size_t size)
{
        return after_alloc(__libc_valloc(size), size);
}

AP_EXPORT void *pvalloc(size_t size)
{
        return after_alloc(__libc_pvalloc(size), size);
}
