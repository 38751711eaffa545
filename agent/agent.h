/* Internal interface between the agent's parts: session (shared memory, registration,
 * modules, fork), record (per-thread rings and stack capture) and hooks (the interposed
 * malloc family).  Nothing here is exported from liballocprof.so.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "allocprof/clock.h"
#include "allocprof/ring.h"
#include "allocprof/sampler.h"
#include "allocprof/wire.h"
#include "unwind.h"

#define AP_HIDDEN __attribute__((visibility("hidden")))
#define AP_TLS __attribute__((tls_model("initial-exec")))
#define ap_likely(x) __builtin_expect(!!(x), 1)
#define ap_unlikely(x) __builtin_expect(!!(x), 0)

/* glibc's own allocator entry points: no dlsym bootstrap needed. */
void *__libc_malloc(size_t);
void __libc_free(void *);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void *__libc_valloc(size_t);
void *__libc_pvalloc(size_t);

/* Session state.  ap_session is the live shared mapping, or NULL when the agent is not
 * recording (not yet initialized, disabled, or the child of a fork before re-init). */
extern AP_HIDDEN _Atomic(struct ap_shm_header *) ap_session;
extern AP_HIDDEN _Atomic uint64_t ap_session_gen; /* bumped on every (re)registration */
extern AP_HIDDEN _Atomic uint32_t ap_waiters;     /* threads waiting for the collector (record.c) */
/* Where the hooks' fast path reads the mode: the live session's xmode, else a word of
 * the agent's own, which reads AP_MODE_FULL until the agent has tried to start a session
 * (every call then takes the recording path, which starts one) and AP_MODE_OFF once it
 * knows there will be none.  One load instead of testing ap_session for NULL first.
 * Published with release after ap_session (session.c); the hooks load it with acquire,
 * so a thread that reads the session's word also sees ap_session and the header set. */
extern AP_HIDDEN _Atomic(_Atomic uint32_t *) ap_mode_word;

/* Slot i's ring_ctl (its ring follows it), mapped on first use if `map`; NULL if it is
 * not mapped (session.c). */
AP_HIDDEN struct ap_ring_ctl *ap_slot_ctl(uint32_t i, bool map);
/* The address of a byte of the stack heap or the module log, by its offset in the shared
 * memory (at least stacks_offset): they are mapped apart from the header. */
AP_HIDDEN uint8_t *ap_shm_tail(uint64_t offset);

/* Per-thread state, initial-exec TLS (no __tls_get_addr, which could allocate). */
struct ap_thread {
        struct ap_ring_ctl *ctl;   /* our slot in the session, NULL if none */
        struct ap_producer pr;     /* producer state of that slot */
        uint64_t gen;              /* ap_session_gen the slot belongs to */
        struct ap_sampler sampler; /* sampled mode: bytes to the next sample point */
        int sampler_ready;         /* sampler drawn for the current interval */
        /* Sampled mode: this thread's last sampled block and its countdown right after
         * it; if the countdown is the same when the block is freed, the thread has not
         * allocated since (every allocation takes its size off): a temporary block. */
        uintptr_t temp_addr;
        int64_t temp_left;
        uint64_t counted_gen;      /* ap_session_gen + 1 once counted in AP_CNT_SAMPLED_THREADS */
        int in_hook;               /* set while we run agent code */
        int own_alloc;             /* inside agent code that may allocate by itself */
        int unwound;               /* this thread's first unwind (which sets up libunwind's
                                    * per-thread cache, allocating) is behind us */
        int own_tracked;           /* own allocations now are remembered (ap_own_remember):
                                    * the C library frees them later, outside the agent */
        /* A signal handler that allocates while this thread is inside the agent records
         * into a second slot of its own (the first may hold a half-written record). */
        struct ap_ring_ctl *nctl;
        struct ap_producer npr;
        uint64_t ngen;
        int nested_busy;
        uintptr_t stack_hi; /* top of this thread's stack (0 = unknown), bounds fp walks */
        uintptr_t stack_lo; /* its lowest address (the main thread: 64 MiB below the top) */
        int in_getattr;     /* inside the program's pthread_getattr_np (record.c) */
        int stack_deferred; /* stack bounds still to learn, outside pthread_getattr_np */
        int exited;         /* thread-exit destructor has run */
        uint32_t beat_countdown; /* records until the next collector-liveness check */
        uint64_t beat_seen;      /* collector heartbeat at the last check */
        uint64_t beat_ns;        /* when it last moved, CLOCK_MONOTONIC */
        int gave_up; /* a wait for ring space ran out: records are dropped at once (and
                      * counted) until the ring has room again */
        uint64_t claim_fail_gen; /* ap_session_gen + 1 when a slot claim last failed */
        uint64_t claim_retry_at; /* then no claim is tried before this (CLOCK_MONOTONIC) */
        /* The thread's last stack, for the next unwind (unwind.h); memo.user is its
         * stack id.  Used by the hooks' own path only, never by a nested (signal) one. */
        struct ap_unwind_memo memo;
};
extern AP_HIDDEN AP_TLS __thread struct ap_thread ap_tls;

/* A page the kernel zeroes in every child that does not share our memory
 * (MADV_WIPEONFORK), marked 1 while a session of this process is live; NULL if it could
 * not be set up.  fork() tells the agent of its child (pthread_atfork), but a child of
 * clone(2) without CLONE_VM, or of the fork system call, runs no handler: it finds its
 * parent's session in ap_session, whose rings are shared memory, and would write into
 * its parent's ring from a thread of its own (two producers on one ring: the parent's
 * figures spoiled, the child unprofiled).  The record paths look at this mark instead.
 * Relaxed: the kernel zeroes it before the child runs, and the session start stores 1
 * before it publishes ap_session with release. */
extern AP_HIDDEN _Atomic uint32_t *ap_fork_mark;
static inline bool ap_fork_unseen(void)
{
        _Atomic uint32_t *m = ap_fork_mark;
        return m != NULL && atomic_load_explicit(m, memory_order_relaxed) == 0;
}
/* Forgets the parent's session in such a child, as fork() would have (the session is
 * NULL on return), and if `reregister`, registers this process anew, as its first
 * allocation would after a fork().  Call with ap_tls.in_hook set, not from a nested
 * (signal handler) record. */
AP_HIDDEN void ap_session_forked(bool reregister);

/* Ensures the session is initialized if the environment asks for it.  Safe to call from
 * a hook (no allocation, no locks) as long as the caller set ap_tls.in_hook. */
AP_HIDDEN void ap_session_ensure(void);
/* Finds the C library's pthread_getattr_np, which the agent wraps (record.c). */
AP_HIDDEN void ap_resolve_getattr(void);

/* Rescans the loaded modules and appends LOAD/UNLOAD records for changes.  Takes the
 * module lock with trylock only: returns without scanning when another thread is in it. */
AP_HIDDEN void ap_modules_rescan(void);
/* Rescans (as ap_modules_rescan) only if the loader has loaded or unloaded an object since
 * the last scan (dl_iterate_phdr's dlpi_adds and dlpi_subs); true if it scanned.  Costs a
 * dl_iterate_phdr that stops at the first object: for the frame-pointer walk, which must
 * know a return address's module before it follows it (record.c).  Not from a signal
 * handler. */
AP_HIDDEN bool ap_modules_rescan_if_changed(void);

/* True if addr lies inside a module the session has reported (lock-free read). */
AP_HIDDEN bool ap_modules_known(uint64_t addr);
/* The same, and the range [*lo, *hi) of the module found (entries never change once
 * known, so a caller may keep the range and test it first next time). */
AP_HIDDEN bool ap_module_range(uint64_t addr, uint64_t *lo, uint64_t *hi);

/* True if addr lies inside liballocprof.so itself. */
extern AP_HIDDEN uint64_t ap_agent_lo, ap_agent_hi;
static inline bool ap_is_agent_addr(uint64_t addr)
{
        return addr >= ap_agent_lo && addr < ap_agent_hi;
}

/* Records, called from hooks with ap_tls.in_hook set and errno saved by the caller.
 * `entry` is the frame (__builtin_frame_address) of the hook the program called, or of
 * one the hook called: the stack capture skips the agent's frames from there instead of
 * walking up from its own (NULL: from its own). */
AP_HIDDEN void ap_record_alloc(void *p, size_t size, const void *entry);
/* Sampled mode: an allocation that covered sample points worth `weight` bytes. */
AP_HIDDEN void ap_record_alloc_sampled(void *p, size_t size, uint64_t weight, bool realloc,
                                       const void *entry);
/* Sampled mode: remembers / forgets a sampled block (lock-free set).  forget returns true
 * if the block was sampled, i.e. its free must be recorded. */
AP_HIDDEN void ap_sampled_remember(void *p);
AP_HIDDEN bool ap_sampled_forget(void *p);
AP_HIDDEN bool ap_sampled_contains(const void *p);
/* Counting filter in front of the sampled set (record.c): a zero bucket means "certainly
 * not sampled", one load of a byte in 8 KiB that stays in the cache.  Behind it a wider
 * one (record.c) sorts out most of what share a bucket here before the set is probed. */
#define AP_FILTER_BITS 13
extern AP_HIDDEN _Atomic uint8_t ap_filter[1u << AP_FILTER_BITS];

static inline uint32_t ap_filter_slot(uint64_t key, unsigned bits)
{
        /* The address's bits 4 and up (blocks are 16-byte aligned), two instructions:
         * blocks close together share a cache line of the filter, which a program freeing
         * a container's blocks one after the other then finds in the cache.  Addresses
         * a multiple of 2^(bits + 4) apart collide; a collision only costs a look further.
         * (Folding in the higher bits took five more instructions on every free; a
         * multiplicative hash scattered the loads: twice the first-level data misses on
         * the C++ workload under cachegrind.) */
        return (uint32_t)((key >> 4) & ((1u << bits) - 1));
}

static inline bool ap_sampled_maybe(const void *p)
{
        return atomic_load_explicit(
                       &ap_filter[ap_filter_slot((uint64_t)(uintptr_t)p, AP_FILTER_BITS)],
                       memory_order_relaxed) != 0;
}
/* Seed for a new thread's sampler. */
AP_HIDDEN uint64_t ap_sampler_seed(void);
AP_HIDDEN void ap_record_free(void *p, uint64_t ts, uint8_t flags);
AP_HIDDEN void ap_record_realloc(void *old, void *p, size_t size, uint64_t ts, const void *entry);

/* A hook entered while this thread was already inside the agent (a signal handler that
 * allocates): records into the thread's nested slot with a frame-pointer stack, the one
 * capture that is safe to run over an interrupted unwinder.  Ignores the agent's own
 * allocations (own_alloc) and a second level of nesting (counted as dropped). */
AP_HIDDEN void ap_nested_alloc(void *p, size_t size, bool realloc);
AP_HIDDEN void ap_nested_free(void *p);

/* The agent's own blocks that the C library frees later from the program's code: under
 * --unwind libunwind, a thread's first unwind makes glibc allocate the thread's block of
 * libunwind's thread-local storage (libunwind is dlopen'ed: dynamic TLS, allocated on first
 * use), an allocation of the agent's and not recorded; glibc frees it when the thread's
 * stack is freed or reused.  Such blocks are remembered while own_tracked is set, and
 * their frees (and reallocs) are not recorded: recorded, they were unmatched frees of the
 * program's.  ap_own_live is 0 while no block is remembered, so that every other program
 * pays one relaxed load per recorded free. */
extern AP_HIDDEN _Atomic uint32_t ap_own_live;
AP_HIDDEN void ap_own_remember(void *p);
AP_HIDDEN bool ap_own_forget(void *p);
/* True if p was one of those blocks (then forgotten). */
static inline bool ap_own_block(void *p)
{
        return ap_unlikely(atomic_load_explicit(&ap_own_live, memory_order_relaxed) != 0) &&
               ap_own_forget(p);
}

/* Slot release at thread exit / session reset. */
AP_HIDDEN void ap_thread_release(void);

/* Stack index reset (fork child). */
AP_HIDDEN int ap_stacks_init(void);

AP_HIDDEN void ap_count(enum ap_counter c, uint64_t n);

/* exec.c: looks up the C library's exec functions (the constructor calls it). */
AP_HIDDEN void ap_exec_resolve(void);
/* syscall(2) with `number` about to run (its arguments 0, 1 and 4): if it is execve or
 * execveat, says the exec begins as exec.c's wrappers do and returns a handle for
 * ap_exec_syscall_failed, else NULL. */
AP_HIDDEN void *ap_exec_syscall_begin(long number, long a0, long a1, long a4);
/* The call of ap_exec_syscall_begin's handle h returned (NULL: nothing to say). */
AP_HIDDEN void ap_exec_syscall_failed(void *h);
/* session.c: the getcwd system call, straight (no fallback that could allocate, as the C
 * library's getcwd has for a long path): the length written, NUL included, or -1 (errno
 * set; also when the program installed a seccomp filter, which might forbid it). */
AP_HIDDEN long ap_sys_getcwd(char *buf, size_t size);
