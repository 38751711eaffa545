/* The agent's hot path: per-thread ring slots, record writing and stack capture with
 * deduplication.  Runs inside hooks: no allocation, no locks, no syscalls except in the
 * rare full-ring wait.  The protocol and its barrier pairs are drawn in wire.h.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "unwind.h"
#include "allocprof/atomics.h"
#include "allocprof/mix.h"
#include "allocprof/ring.h"

AP_HIDDEN AP_TLS __thread struct ap_thread ap_tls;

/* Set (for good) once a thread other than the main one records.  Until then every
 * record comes from one thread, whose ring keeps them in program order, and an
 * allocation's timestamp needs no fence (see alloc_ticks).  Relaxed: a thread that frees
 * a block another thread then gets back from malloc stored 1 here before its free, and
 * the allocator's own synchronization orders that store before the other thread's load
 * after malloc returned. */
static _Atomic int g_multi_thread;

/* The timestamp of an allocation, taken after malloc returned.  With several threads it
 * must not be read before the allocator's loads that handed us the block (another
 * thread's free of the same address, stamped before that free, must stay earlier):
 * ap_clock_ticks() fences.  With one thread, order in the ring is what counts, and the
 * fence (about 20 ns) is skipped. */
static inline uint64_t alloc_ticks(void)
{
        /* A thread's first record (no slot yet, so it has not set the flag): fenced. */
        return ap_load_relaxed(&g_multi_thread) || ap_tls.ctl == NULL ? ap_clock_ticks()
                                                                        : ap_clock_ticks_early();
}

/* ---- stack index ------------------------------------------------------------------
 * Agent-private open-addressing tables: stack hash -> id of its entry in the shared stack
 * heap.  A cell is one word, the top 40 bits of the hash (with the top bit set, so that a
 * claimed cell is never 0) above the 24-bit id.  Insertion claims an empty cell by CAS
 * with id 0, writes the heap entry, then publishes the id with a release store; readers
 * load cells with acquire (pairs with that store) before naming the id in a record.  A
 * reader that finds the hash but no id yet (insertion in flight, possibly in a signal
 * handler interrupting the inserter) sends the stack inline instead of waiting.
 *
 * Two levels: a small table that stays in the cache for the few thousand stacks most
 * programs have, and a large one, mapped with it but touched only by stacks that found no
 * free cell within INDEX_PROBES of their place in the small one.  (A compiler's 11K
 * stacks spread over a single 16 MiB table cost it a TLB and a cache miss per lookup and
 * 15 MiB of memory.)  A stack is in one level or the other; racing inserters may both
 * add it (one per level, or one inline), which only gives it two ids: the collector
 * merges stacks by their addresses. */
#define INDEX_PROBES 32
#define INDEX_L0_BITS 16 /* 512 KiB */
#define INDEX_L1_BITS 20 /* 8 MiB, usually untouched */
#define ID_BITS 24
#define ID_MASK ((1ull << ID_BITS) - 1)
_Static_assert(AP_STACK_HEAP_BYTES / 8 <= (1ull << ID_BITS), "stack ids fit a cell");

static _Atomic uint64_t *g_index[2];
static const unsigned g_index_bits[2] = {INDEX_L0_BITS, INDEX_L1_BITS};
/* Bumped each time the index starts afresh: a thread's memo names a stack id of the
 * generation it was made in (a fork child starts over with inherited memos).  Relaxed:
 * it changes together with the session, which its readers reach through ap_session. */
static _Atomic uint64_t g_stacks_gen;
_Static_assert(AP_MAX_FRAMES <= AP_UNWIND_MEMO_MAX, "a whole stack fits the memo");

/* In front of the index: the stacks seen last, direct-mapped, one word each, laid out
 * like an index cell.  A hit skips the index probe and the comparison with the heap
 * entry; it trusts 56 bits of hash (16 pick the cell).  Release/acquire as the index.
 * Mapped like the index, so a program with few stacks touches a few pages of it.  Its
 * size, measured under cachegrind on cc1 in full mode (11 k sites): with 4 Ki cells
 * instead of 64 Ki, 47 M more instructions, 1.6 M more L1 and 0.43 M more last-level
 * data misses, of the 1.76 G, 10.2 M and 0.61 M that recording adds to the compiler. */
#define RECENT_BITS 16
static _Atomic uint64_t *g_recent;

static inline uint64_t index_tag(uint64_t hash)
{
        return (hash | (1ull << 63)) & ~ID_MASK;
}

/* A zeroed table of 2^bits cells in place of *table.  A fork child calls it too: the
 * inherited tables name entries of the parent's heap (the child runs one thread here). */
static void fresh_table(_Atomic uint64_t **table, unsigned bits)
{
        size_t bytes = sizeof(uint64_t) << bits;
        if (*table != NULL)
                munmap((void *)*table, bytes);
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        *table = p == MAP_FAILED ? NULL : p;
}

AP_HIDDEN int ap_stacks_init(void)
{
        fresh_table(&g_recent, RECENT_BITS);
        for (int l = 0; l < 2; l++)
                fresh_table(&g_index[l], g_index_bits[l]);
        ap_fetch_add_relaxed(&g_stacks_gen, 1);
        return g_index[0] == NULL ? -ENOMEM : 0;
}

/* Never 0: a seed of 0 would stall xorshift. */
static inline uint64_t ap_mix(uint64_t x)
{
        x = ap_mix64(x);
        return x ? x : 1;
}

static inline struct ap_stack_entry *heap_entry(struct ap_shm_header *h, uint32_t id)
{
        return (struct ap_stack_entry *)ap_shm_tail(h->stacks_offset + (uint64_t)id * 8);
}

static void check_modules(const uint64_t *ips, uint32_t n);

/* A few compares, inlined: cheaper than a memcmp call for the usual dozen frames. */
static inline bool same_ips(const uint64_t *a, const uint64_t *b, uint32_t n)
{
        uint64_t diff = 0;
        for (uint32_t i = 0; i < n; i++)
                diff |= a[i] ^ b[i];
        return diff == 0;
}

#define INDEX_FULL UINT32_MAX /* no free cell within INDEX_PROBES: try the next level */

static uint32_t index_level(struct ap_shm_header *h, int level, const uint64_t *ips, uint32_t n,
                            uint64_t hash);

/* Returns the stack id (> 0), or 0 if the stack must be sent inline.  hash is
 * ap_stack_hash(ips, n). */
static uint32_t stack_intern(struct ap_shm_header *h, const uint64_t *ips, uint32_t n,
                             uint64_t hash)
{
        _Atomic uint64_t *cell =
                g_recent != NULL ? &g_recent[hash & ((1u << RECENT_BITS) - 1)] : NULL;
        uint64_t v = cell != NULL ? ap_load_acquire(cell) : 0;
        if (v != 0 && (v & ~ID_MASK) == index_tag(hash))
                return (uint32_t)(v & ID_MASK);
        uint32_t id = INDEX_FULL;
        for (int l = 0; l < 2 && id == INDEX_FULL; l++)
                if (g_index[l] != NULL)
                        id = index_level(h, l, ips, n, hash);
        if (id == INDEX_FULL)
                return 0;
        if (id != 0 && cell != NULL)
                ap_store_release(cell, index_tag(hash) | id);
        return id;
}

/* The stack's id in one level of the index, inserting it if it is not there: 0 (send it
 * inline) or INDEX_FULL (not there and no room). */
static uint32_t index_level(struct ap_shm_header *h, int level, const uint64_t *ips, uint32_t n,
                            uint64_t hash)
{
        _Atomic uint64_t *cells = g_index[level];
        const uint32_t mask = (1u << g_index_bits[level]) - 1;
        const uint64_t tag = index_tag(hash);
        uint32_t pos = (uint32_t)hash & mask;

        for (int probe = 0; probe < INDEX_PROBES; probe++, pos = (pos + 1) & mask) {
                _Atomic uint64_t *c = &cells[pos];
                uint64_t cur = ap_load_acquire(c);
                if (cur == 0) {
                        uint64_t expected = 0;
                        if (!ap_cas_acq_rel(c, &expected, tag)) {
                                cur = expected; /* lost the race; examine the winner */
                        } else {
                                uint64_t bytes = sizeof(struct ap_stack_entry) + 8ull * n;
                                /* Relaxed: a private allocation counter; the entry is
                                 * published through the cell and the ring. */
                                uint64_t off = ap_fetch_add_relaxed(&h->xstacks_used, bytes);
                                if (off + bytes > h->stacks_bytes) {
                                        /* Heap full: leave the cell claimed with no id,
                                         * every user of this stack sends it inline. */
                                        return 0;
                                }
                                uint32_t id = (uint32_t)(off / 8);
                                struct ap_stack_entry *e = heap_entry(h, id);
                                e->depth = n;
                                e->reserved = 0;
                                e->hash = hash;
                                memcpy(e->ips, ips, 8ull * n);
                                /* Before anyone can name this stack, make sure the
                                 * modules its addresses lie in have been reported. */
                                check_modules(ips, n);
                                /* Release: pairs with the acquires of readers; the entry
                                 * is complete before its id is visible. */
                                ap_store_release(c, tag | id);
                                return id;
                        }
                }
                if ((cur & ~ID_MASK) != tag)
                        continue;
                uint32_t id = (uint32_t)(cur & ID_MASK);
                if (id == 0)
                        return 0;
                struct ap_stack_entry *e = heap_entry(h, id);
                if (e->depth == n && e->hash == hash && same_ips(e->ips, ips, n))
                        return id;
                /* Same 40 bits of hash, another stack: keep probing for the real one. */
        }
        return INDEX_FULL;
}

/* ---- ring slots --------------------------------------------------------------------- */

static pid_t gettid_raw(void)
{
        return gettid(); /* not syscall(): the agent wraps it (session.c) */
}

/* A thread that found no slot (all taken, or none could be mapped) drops its records,
 * counted, and looks again after this long, not on each call: a look scans every slot,
 * and 100 threads without one under a seccomp filter that refuses mremap spent 95% of
 * their time there (140 times slower than unprofiled). */
#define CLAIM_RETRY_NS (1000ull * 1000)

/* The collector is presumed gone when its heartbeat did not move for this long while our
 * ring stayed full; from then on full rings drop at once instead of waiting. */
#define WAIT_STALL_NS (200ull * 1000 * 1000)
#define WAIT_MAX_NS (5000ull * 1000 * 1000)
static _Atomic int g_collector_stalled;

/* A writer waiting for the collector to give something back (ring space, a slot): when it
 * began, and the collector's heartbeat as last seen, and when. */
struct collector_wait {
        uint64_t start, beat, beat_at;
};
enum wait_verdict { WAIT_ON, WAIT_STOP, WAIT_TIMED_OUT };
static void wait_begin(struct collector_wait *w, struct ap_shm_header *h, uint64_t start);
static void wait_end(void);
static void wait_nap(void);
static enum wait_verdict wait_verdict(struct collector_wait *w, struct ap_shm_header *h);
static bool waits_for_collector(struct ap_shm_header *h);

/* `may_wait`: false for a signal handler's nested ring, which must not block. */
static bool slot_claim(struct ap_shm_header *h, struct ap_ring_ctl **ret_ctl,
                       struct ap_producer *pr, uint64_t *ret_gen, bool may_wait)
{
        struct ap_thread *t = &ap_tls;
        const uint64_t gen = ap_load_relaxed(&ap_session_gen);
        if (t->claim_fail_gen == gen + 1 && ap_clock_mono_ns() < t->claim_retry_at)
                return false;
        /* The lowest free slot: the collector walks every slot below the high-water
         * mark on each drain round, each on a page of its own.  Starting at tid % nslots,
         * as this once did, put a single-threaded process with pid 5877 in slot 757, and
         * walking the 758 slots cost about 45 us a round (cc1: 70 ms of collector CPU,
         * 25 ms of it inside the drain's 195).  A claim is once per thread, so scanning
         * from 0 past the slots of live threads costs little. */
        uint32_t n = h->nslots;
        bool can_map = true, retired = false;
        struct collector_wait w = {0, 0, 0};
        uint64_t beat;
again:
        /* Read before the scan: a slot is handed back only by a drain round, which
         * bumps the heartbeat after it (process.c). */
        beat = ap_load_relaxed(&h->xheartbeat);
        for (uint32_t i = 0; i < n; i++) {
                /* A slot never mapped here is free (no other process claims ours); once
                 * one cannot be mapped, only those already mapped are looked at. */
                struct ap_ring_ctl *ctl = ap_slot_ctl(i, can_map);
                if (ctl == NULL) {
                        can_map = false;
                        continue;
                }
                uint32_t expected = AP_SLOT_FREE, state = ap_load_relaxed(&ctl->xstate);
                if (state != AP_SLOT_FREE) {
                        retired |= state == AP_SLOT_RETIRED;
                        continue;
                }
                /* acq_rel: acquire pairs with the collector's release of FREE (it finished
                 * reading the previous owner's records); release orders our claim. */
                if (!ap_cas_acq_rel(&ctl->xstate, &expected, AP_SLOT_OWNED))
                        continue;
                ctl->tid = (uint32_t)gettid_raw();
                *ret_ctl = ctl;
                /* We are the only producer now; the collector rewound the ring to 0 when
                 * it freed the slot (wire.h). */
                ap_producer_attach(pr, ctl);
                *ret_gen = ap_load_relaxed(&ap_session_gen);
                uint32_t hwm = ap_load_relaxed(&h->xslot_hwm);
                while (hwm < i + 1 && !atomic_compare_exchange_weak_explicit(
                                              &h->xslot_hwm, &hwm, i + 1, memory_order_release,
                                              memory_order_relaxed))
                        ;
                if (w.start != 0) {
                        wait_end();
                        ap_count(AP_CNT_RING_WAIT_NS, ap_clock_mono_ns() - w.start);
                }
                return true;
        }
        /* Every slot taken, some by threads that ended (RETIRED) whose records the
         * collector has not read yet: it is behind (20,000 short threads under a busy
         * machine).  Full mode (and sampling at 1 byte) waits for it to hand one back, as
         * for ring space. */
        if (retired && may_wait && waits_for_collector(h) &&
            !ap_load_relaxed(&g_collector_stalled)) {
                if (w.start == 0) {
                        wait_begin(&w, h, ap_clock_mono_ns());
                        ap_count(AP_CNT_RING_WAITS, 1);
                }
                retired = false;
                /* Nothing can have been handed back before the collector's next round:
                 * scan the slots again only after one. */
                enum wait_verdict v;
                do {
                        wait_nap();
                        v = wait_verdict(&w, h);
                } while (v == WAIT_ON && ap_load_relaxed(&h->xheartbeat) == beat);
                if (v == WAIT_ON)
                        goto again;
        }
        if (w.start != 0) {
                wait_end();
                ap_count(AP_CNT_RING_WAIT_NS, ap_clock_mono_ns() - w.start);
        }
        t->claim_retry_at = ap_clock_mono_ns() + CLAIM_RETRY_NS;
        t->claim_fail_gen = gen + 1;
        return false;
}

AP_HIDDEN void ap_thread_release(void)
{
        struct ap_thread *t = &ap_tls;
        if (ap_unlikely(ap_fork_unseen())) {
                /* The slots are our parent's (ap_fork_mark): not ours to retire. */
                t->ctl = NULL;
                t->nctl = NULL;
                return;
        }
        const uint64_t gen = ap_load_relaxed(&ap_session_gen);
        struct ap_ring_ctl *ctl = t->ctl != NULL && t->gen == gen ? t->ctl : NULL;
        struct ap_ring_ctl *nctl = t->nctl != NULL && t->ngen == gen ? t->nctl : NULL;
        /* Forgotten first: a signal handler that allocates from here on claims a slot of
         * its own rather than write into one we retire, which the collector may already
         * have rewound to 0 and freed (wire.h).  The release stores below keep these
         * plain stores before them. */
        t->ctl = NULL;
        t->nctl = NULL;
        /* Release: our last head store is visible before the slot is retired. */
        if (ctl != NULL)
                ap_store_release(&ctl->xstate, AP_SLOT_RETIRED);
        if (nctl != NULL)
                ap_store_release(&nctl->xstate, AP_SLOT_RETIRED); /* same pairing */
}

AP_HIDDEN void ap_count(enum ap_counter c, uint64_t n)
{
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        if (h != NULL)
                ap_fetch_add_relaxed(&h->xcounters[c], n);
}

/* The collector is slow rather than gone as long as its process exists. */
static bool collector_alive(struct ap_shm_header *h)
{
        pid_t pid = (pid_t)ap_load_relaxed(&h->xcollector_pid);
        return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/* Makes room for nbytes at the producer position, waiting a bounded time for the
 * collector when the ring is full.  Returns where to write, or NULL (record dropped; the
 * caller counts it). */
/* Every this many records a thread checks that the collector still drains (its
 * heartbeat moves); if the heartbeat stood still for COLLECTOR_GONE_NS and the collector
 * process is gone, the process stops recording for good (mode OFF: every hook returns
 * after one load), so a killed daemon costs its programs nothing beyond that. */
#define BEAT_CHECK_RECORDS 1024
#define COLLECTOR_GONE_NS (1000ull * 1000 * 1000)

static __attribute__((noinline, cold)) void check_collector(struct ap_thread *t, struct ap_shm_header *h)
{
        t->beat_countdown = BEAT_CHECK_RECORDS;
        uint64_t beat = ap_load_relaxed(&h->xheartbeat);
        uint64_t now = ap_clock_mono_ns();
        if (beat != t->beat_seen || t->beat_ns == 0) {
                t->beat_seen = beat;
                t->beat_ns = now;
                return;
        }
        if (now - t->beat_ns > COLLECTOR_GONE_NS && !collector_alive(h)) {
                ap_store_relaxed(&g_collector_stalled, 1);
                /* Relaxed: a hint; hooks that still see the old mode record into a ring
                 * nobody reads, which is harmless. */
                ap_store_relaxed(&h->xmode, AP_MODE_OFF);
        }
}

/* Threads of this process waiting for the collector now (wait_begin to wait_end; a
 * fork child starts from 0: agent.h). */
AP_HIDDEN _Atomic uint32_t ap_waiters;

static void wait_begin(struct collector_wait *w, struct ap_shm_header *h, uint64_t start)
{
        w->start = w->beat_at = start;
        w->beat = ap_load_relaxed(&h->xheartbeat);
        ap_fetch_add_relaxed(&ap_waiters, 1);
}

static void wait_end(void)
{
        ap_fetch_sub_relaxed(&ap_waiters, 1);
}

/* 50 us per thread waiting, up to 4 ms: the waiters of a process wake about 20,000 times
 * a second in all, however many they are.  With a fixed 50 us, hundreds of threads
 * waiting at once (500 alive at a time in waves, each wave waiting for the slots of the
 * last; 200 threads allocating at full speed) woke millions of times a second between
 * them and left the collector, which is what they wait for, next to no CPU: 37 s
 * instead of 0.6 s, and half the events dropped once waits ran out (WAIT_MAX_NS).  A
 * drain round comes at least every 25 ms. */
static void wait_nap(void)
{
        uint64_t n = ap_load_relaxed(&ap_waiters);
        uint64_t ns = 50 * 1000 * (n > 0 ? n : 1);
        struct timespec ts = {0, (long)(ns < 4000 * 1000 ? ns : 4000 * 1000)};
        nanosleep(&ts, NULL);
}

/* Whether a full ring (or every slot taken) is waited for rather than the record dropped
 * at once: in full mode, and in sampled mode at an interval of one byte, where every
 * allocation is a sample and the user asked for exact figures (`attach --sample 1`, the
 * exact window into a running program); there a record dropped after one nap, as a
 * sampler may, made the counts of an attached window wrong on a busy machine (sqlite3:
 * 42 of 1.6 million records).  Detached at that interval, the frees of the blocks it
 * sampled are waited for too: each dropped one would stay live in the profile. */
static bool waits_for_collector(struct ap_shm_header *h)
{
        uint32_t mode = ap_load_relaxed(&h->xmode);
        if (mode == AP_MODE_FULL)
                return true;
        return (mode == AP_MODE_SAMPLED || mode == AP_MODE_DETACHED) &&
               ap_load_relaxed(&h->xsample_interval) == 1;
}

/* After a nap that gave nothing back: wait on; stop, when the mode no longer waits
 * (waits_for_collector) or the collector is found gone (then nothing more is recorded);
 * or give up after WAIT_MAX_NS. */
static enum wait_verdict wait_verdict(struct collector_wait *w, struct ap_shm_header *h)
{
        if (!waits_for_collector(h))
                return WAIT_STOP;
        uint64_t now = ap_clock_mono_ns();
        uint64_t b = ap_load_relaxed(&h->xheartbeat);
        if (b != w->beat) {
                w->beat = b;
                w->beat_at = now;
        } else if (now - w->beat_at > WAIT_STALL_NS && !collector_alive(h)) {
                /* Gone: from now on record nothing. */
                ap_store_relaxed(&g_collector_stalled, 1);
                ap_store_relaxed(&h->xmode, AP_MODE_OFF);
                return WAIT_STOP;
        }
        return now - w->start > WAIT_MAX_NS ? WAIT_TIMED_OUT : WAIT_ON;
}

/* The ring is full: naps until the collector gives space back, it is found gone (then
 * nothing more is recorded), the mode changes, or WAIT_MAX_NS pass.  NULL if no space.
 * A collector that is alive but drains nothing (stopped, hung, or busy elsewhere) would
 * otherwise hold up every later record for WAIT_MAX_NS as well: after a wait that ran
 * out, the thread drops its records at once until its ring has room again. */
static uint8_t *wait_for_space(struct ap_thread *t, struct ap_shm_header *h, uint32_t nbytes,
                               uint32_t keep, uint64_t start)
{
        struct collector_wait w;
        wait_begin(&w, h, start);
        for (;;) {
                wait_nap();
                uint8_t *p = ap_ring_try_reserve(&t->pr, nbytes, keep);
                if (p != NULL) {
                        wait_end();
                        return p;
                }
                enum wait_verdict v = wait_verdict(&w, h);
                if (v == WAIT_TIMED_OUT)
                        t->gave_up = 1;
                if (v != WAIT_ON) {
                        wait_end();
                        return NULL;
                }
        }
}

static uint8_t *ring_reserve(struct ap_thread *t, struct ap_shm_header *h, uint32_t nbytes,
                             uint32_t keep)
{
        if (ap_unlikely(t->beat_countdown-- == 0))
                check_collector(t, h);
        uint8_t *w = ap_ring_try_reserve(&t->pr, nbytes, keep);
        if (ap_likely(w != NULL)) {
                if (ap_unlikely(ap_load_relaxed(&g_collector_stalled)))
                        ap_store_relaxed(&g_collector_stalled, 0); /* it drained: alive */
                /* Room beyond the free records' reserve (keep): the collector drains
                 * again.  A free written into the reserve says nothing of that. */
                if (keep != 0)
                        t->gave_up = 0;
                return w;
        }
        if (ap_load_relaxed(&g_collector_stalled) || t->gave_up)
                return NULL;
        ap_count(AP_CNT_RING_WAITS, 1);
        uint64_t start = ap_clock_mono_ns();
        w = wait_for_space(t, h, nbytes, keep, start);
        /* The report tells how long the program was held up (relaxed, as every counter). */
        ap_count(AP_CNT_RING_WAIT_NS, ap_clock_mono_ns() - start);
        return w;
}

static void learn_stack_top(struct ap_thread *t);

/* The agent's own allocations (own_alloc set) are told from those of a signal handler
 * that interrupts the agent by that flag alone: a handler that allocated while it is set
 * would be taken for the agent, its blocks neither recorded nor counted as dropped (a
 * signal storm at thread start lost hundreds of them that way).  So signals wait while
 * it is set, and their handlers then run as nested records (ap_nested_alloc).  Two
 * system calls around calls that make several of their own, once per thread. */
static void own_begin(struct ap_thread *t, sigset_t *old)
{
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, old);
        t->own_alloc++;
}

static void own_end(struct ap_thread *t, const sigset_t *old)
{
        t->own_alloc--;
        pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Returns the thread's ring, claiming a slot on first use.  NULL: no slot (counted), or
 * no session.  In a child of a fork the C library did not see (ap_fork_mark), the
 * session is its parent's: forgotten, and if `may_register` (an allocation, which is
 * where a fork child registers), this process registers as its own. */
static inline struct ap_shm_header *thread_ring(struct ap_thread *t, bool may_register)
{
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        if (h == NULL)
                return NULL;
        if (ap_unlikely(ap_fork_unseen())) {
                /* This call was judged by the parent's mode (which its attach may have
                 * changed): recorded only if the new session has the same one. */
                uint32_t was = ap_load_relaxed(&h->xmode);
                ap_session_forked(may_register);
                h = atomic_load_explicit(&ap_session, memory_order_acquire);
                if (h == NULL || ap_load_relaxed(&h->xmode) != was)
                        return NULL;
        }
        if (ap_unlikely(t->ctl == NULL || t->gen != ap_load_relaxed(&ap_session_gen))) {
                t->ctl = NULL;
                if (!slot_claim(h, &t->ctl, &t->pr, &t->gen, true)) {
                        ap_count(AP_CNT_DROP_NO_SLOT, 1);
                        return NULL;
                }
                if (t->stack_hi == 0)
                        learn_stack_top(t);
                if (gettid_raw() != getpid() && !ap_load_relaxed(&g_multi_thread))
                        ap_store_relaxed(&g_multi_thread, 1);
                extern AP_HIDDEN void ap_thread_started(void);
                /* pthread_setspecific may allocate its key block: ours, not the program's */
                sigset_t old;
                own_begin(t, &old);
                ap_thread_started();
                own_end(t, &old);
        }
        if (ap_unlikely(t->stack_deferred) && !t->in_getattr)
                learn_stack_top(t);
        return h;
}

/* ---- stack capture ------------------------------------------------------------------ */

#define CAPTURE_MAX (AP_MAX_FRAMES + 8)

/* Frame-pointer walk (ALLOCPROF_UNWIND=fp, and the stacks of signal handlers that
 * interrupt the agent): a few loads per frame instead of a DWARF unwind, but only right
 * for code built with frame pointers; through code without them the chain ends early.
 * A garbage rbp must never be followed into unmapped memory: each step must move up by
 * less than 256 KiB, stay aligned, stay below the top of the thread's stack (when known)
 * and yield a return address inside a known module. */
#define FP_MAX_STEP (256u << 10)
AP_HIDDEN int ap_unwind_fp;
extern void *__libc_stack_end; /* ld.so: the main thread's stack top at start-up */
#define MAIN_STACK_WINDOW (64ull << 20)

/* glibc's pthread_getattr_np holds the thread's own lock while it allocates (the
 * attributes' cpu set; for the main thread a FILE for /proc/self/maps).  Asking it for a
 * thread's stack from a hook inside such a call waits for that lock for ever, so the
 * agent wraps it (exported, it takes the program's calls): while a thread is inside,
 * its stack bounds are left to a later record, and the general unwinder, which needs
 * none, takes the stacks until then.  The C library's own is found in the constructor
 * (dlsym in a hook could wait for the loader's lock), or at the program's first call. */
typedef int (*getattr_fn)(pthread_t, pthread_attr_t *);
static _Atomic(getattr_fn) g_real_getattr;

AP_HIDDEN void ap_resolve_getattr(void)
{
        if (ap_load_relaxed(&g_real_getattr) == NULL)
                ap_store_relaxed(&g_real_getattr,
                                 (getattr_fn)dlsym(RTLD_NEXT, "pthread_getattr_np"));
}

__attribute__((visibility("default"))) int pthread_getattr_np(pthread_t th,
                                                               pthread_attr_t *attr)
{
        getattr_fn f = ap_load_relaxed(&g_real_getattr);
        if (f == NULL) {
                ap_resolve_getattr();
                f = ap_load_relaxed(&g_real_getattr);
                if (f == NULL)
                        return ENOSYS;
        }
        ap_tls.in_getattr++;
        int r = f(th, attr);
        ap_tls.in_getattr--;
        return r;
}

/* Learns the top of the calling thread's stack, from a normal (non-signal) hook. */
static void learn_stack_top(struct ap_thread *t)
{
        t->stack_deferred = 0;
        if (gettid_raw() == getpid()) {
                t->stack_hi = (uintptr_t)__libc_stack_end;
                /* It grows on demand up to its limit; deeper than this, libunwind. */
                t->stack_lo = t->stack_hi > MAIN_STACK_WINDOW ? t->stack_hi - MAIN_STACK_WINDOW : 0;
                return;
        }
        getattr_fn getattr = ap_load_relaxed(&g_real_getattr);
        if (t->in_getattr || getattr == NULL) {
                t->stack_deferred = 1;
                return;
        }
        pthread_attr_t a;
        void *lo;
        size_t size;
        sigset_t old;
        own_begin(t, &old); /* glibc allocates a cpu set for the attributes */
        if (getattr(pthread_self(), &a) == 0) {
                if (pthread_attr_getstack(&a, &lo, &size) == 0) {
                        t->stack_hi = (uintptr_t)lo + size;
                        t->stack_lo = (uintptr_t)lo;
                }
                pthread_attr_destroy(&a);
        }
        own_end(t, &old);
}

static __attribute__((noinline)) uint32_t capture_fp(uint64_t *out, bool may_scan)
{
        const uintptr_t *fp = __builtin_frame_address(0);
        uintptr_t top = ap_tls.stack_hi ? ap_tls.stack_hi : UINTPTR_MAX;
        /* From here to the top of the thread's stack is live; anything else (a coroutine's
         * stack, a sigaltstack, an rbp that holds something else) is read only once a
         * system call has said it can be. */
        struct ap_unwind_reader rd = {0};
        if ((uintptr_t)fp >= ap_tls.stack_lo && (uintptr_t)fp < ap_tls.stack_hi)
                rd.lo = (uintptr_t)fp, rd.hi = ap_tls.stack_hi;
        uint32_t depth = 0;
        bool ours = true;
        /* The module of the last frame: most frames are in the same one as the frame
         * before, and one compare then replaces a search of the module list. */
        uint64_t mlo = 0, mhi = 0;
        for (int i = 0; i < CAPTURE_MAX && depth < AP_MAX_FRAMES; i++) {
                uint64_t next, ret;
                if ((uintptr_t)(fp + 2) > top || !ap_unwind_read_word(&rd, (uintptr_t)fp, &next) ||
                    !ap_unwind_read_word(&rd, (uintptr_t)(fp + 1), &ret) || ret == 0)
                        break;
                if (ours && ap_is_agent_addr(ret)) {
                        /* still inside the agent */
                } else {
                        if (ret - mlo >= mhi - mlo) {
                                /* (copies: mlo and mhi stay in registers in the loop) */
                                uint64_t lo, hi;
                                /* A library dlopen'ed since the last scan is not known
                                 * yet: look again, once per stack and only if the loader
                                 * has changed its list (not in a signal handler). */
                                if (!ap_module_range(ret, &lo, &hi)) {
                                        bool scanned = may_scan && ap_modules_rescan_if_changed();
                                        may_scan = false;
                                        if (!scanned || !ap_module_range(ret, &lo, &hi))
                                                break;
                                }
                                mlo = lo;
                                mhi = hi;
                        }
                        ours = false;
                        out[depth++] = ret;
                }
                if (next <= (uintptr_t)fp || next - (uintptr_t)fp > FP_MAX_STEP || (next & 7))
                        break;
                fp = (const uintptr_t *)next;
        }
        if (depth == 0)
                out[depth++] = 0;
        return depth;
}

AP_HIDDEN int ap_unwind_general;
/* libunwind's unw_backtrace, under --unwind libunwind only: loaded by the agent's
 * constructor (session.c); NULL before that or if it could not be loaded. */
AP_HIDDEN int (*_Atomic ap_unw_backtrace)(void **, int);

/* Where a walk of the agent's frames starts: the hook's frame when we have it (a step or
 * two; from here, six or seven), which is above ours on the same stack, else our own. */
static inline const uintptr_t *walk_start(const void *entry, const void *here)
{
        return entry != NULL && (uintptr_t)entry > (uintptr_t)here ? entry : here;
}

/* Follows the agent's frame pointers from fp to the first frame outside the agent: its
 * return address, its exact rsp (just above that address) and its rbp (saved by the
 * agent function it called).  False if the frames are not what the agent's own should
 * be, or reach above hi. */
static inline bool first_outside(const uintptr_t *fp, uintptr_t hi, uint64_t *pc, uint64_t *sp,
                                 uint64_t *bp)
{
        for (int i = 0; i < 16; i++) {
                if ((uintptr_t)(fp + 2) > hi || ((uintptr_t)fp & 7))
                        return false;
                uintptr_t ret = fp[1];
                if (!ap_is_agent_addr(ret)) {
                        *pc = ret;
                        *sp = (uint64_t)(uintptr_t)(fp + 2);
                        *bp = fp[0];
                        return true;
                }
                if (fp[0] <= (uintptr_t)fp)
                        return false;
                fp = (const uintptr_t *)fp[0];
        }
        return false;
}

/* The agent's own functions keep frame pointers (-fno-omit-frame-pointer): their frames
 * are skipped by following rbp, a load per frame (first_outside), and the DWARF unwind
 * starts at the first frame outside the agent.  Returns -1 for the general unwinder: on
 * another stack, or frames that are not what the agent's own should be. */
static __attribute__((noinline)) int capture_cached(uint64_t *out, struct ap_thread *t,
                                                   uint64_t *hash, bool *same, const void *entry)
{
        const uintptr_t *fp = walk_start(entry, __builtin_frame_address(0));
        uintptr_t lo = (uintptr_t)fp;
        /* On another stack than the thread's own (a sigaltstack handler, a coroutine's
         * stack from the heap), the bounds below mean nothing: the general unwinder. */
        uint64_t pc, sp, bp;
        if (lo < t->stack_lo || lo >= t->stack_hi || !first_outside(fp, t->stack_hi, &pc, &sp, &bp))
                return -1;
        return ap_unwind_capture_memo(out, AP_MAX_FRAMES, t->stack_hi, pc, sp, bp, &t->memo, hash,
                                      same);
}

/* The general unwinder (unwind.h), for the stacks capture_cached leaves, from the same
 * first frame outside the agent (the agent's frames up to it are live, so safe to read on
 * any stack).  -1 if they are not what they should be. */
static __attribute__((noinline)) int capture_general(uint64_t *out, struct ap_thread *t,
                                                     const void *entry)
{
        uint64_t pc, sp, bp;
        if (!first_outside(walk_start(entry, __builtin_frame_address(0)), UINTPTR_MAX, &pc, &sp,
                           &bp))
                return -1;
        return ap_unwind_capture_general(out, AP_MAX_FRAMES, t->stack_lo, t->stack_hi, pc, sp, bp);
}

/* Captures the calling thread's stack into out (innermost first) and returns its depth;
 * *hash is ap_stack_hash() of it, *same tells that it is the stack the thread's memo
 * named last (the cached unwinder found it unchanged). */
static __attribute__((noinline)) uint32_t capture(uint64_t *out, uint64_t *hash, bool *same,
                                                  const void *entry)
{
        struct ap_thread *t = &ap_tls;
        *same = false;
        if (ap_unwind_fp) {
                uint32_t n = capture_fp(out, true);
                *hash = ap_stack_hash(out, n);
                return n;
        }
        void *buf[CAPTURE_MAX];
        /* The cached unwinder first (it starts past the agent's frames and writes at most
         * AP_MAX_FRAMES); the general one for the stacks it does not handle.  libunwind
         * only when asked for (--unwind libunwind, the reference of the tests). */
        int (*lu_backtrace)(void **, int) = ap_load_relaxed(&ap_unw_backtrace);
        if (!ap_unwind_general || lu_backtrace == NULL) {
                int cn = capture_cached(out, t, hash, same, entry);
                if (cn > 0)
                        return (uint32_t)cn;
                cn = capture_general(out, t, entry);
                if (cn <= 0) {
                        out[0] = 0; /* an unknown site */
                        cn = 1;
                }
                *hash = ap_stack_hash(out, (uint32_t)cn);
                return (uint32_t)cn;
        }
        /* The first unwind of a thread sets up libunwind's per-thread cache (and may
         * allocate for it); later ones do not allocate, so an allocation that interrupts
         * them comes from a signal handler and is the program's. */
        if (ap_unlikely(!t->unwound)) {
                t->own_alloc++;
                t->own_tracked++; /* glibc frees those blocks later (ap_own_live) */
        }
        int n = lu_backtrace(buf, CAPTURE_MAX);
        if (ap_unlikely(!t->unwound)) {
                t->own_tracked--;
                t->own_alloc--;
                t->unwound = 1;
        }
        int skip = 0;
        while (skip < n && ap_is_agent_addr((uint64_t)(uintptr_t)buf[skip]))
                skip++;
        uint32_t depth = 0;
        for (int i = skip; i < n && depth < AP_MAX_FRAMES; i++)
                out[depth++] = (uint64_t)(uintptr_t)buf[i];
        if (depth == 0)
                out[depth++] = 0; /* unwinding failed: an unknown site */
        *hash = ap_stack_hash(out, depth);
        return depth;
}

/* Learns about modules loaded since the last scan (dlopen'ed libraries) before a stack
 * naming them is published, so the collector can place every address. */
static void check_modules(const uint64_t *ips, uint32_t n)
{
        for (uint32_t i = 0; i < n; i++) {
                if (ips[i] != 0 && !ap_modules_known(ips[i])) {
                        ap_modules_rescan();
                        return;
                }
        }
}

static uint32_t alloc_record_fixed(uint8_t type)
{
        return type == AP_REC_REALLOC         ? sizeof(struct ap_rec_realloc)
               : type == AP_REC_ALLOC_SAMPLED ? sizeof(struct ap_rec_alloc_sampled)
                                              : sizeof(struct ap_rec_alloc);
}

_Static_assert(offsetof(struct ap_rec_alloc, ts) == offsetof(struct ap_rec_alloc_sampled, ts) &&
                       offsetof(struct ap_rec_alloc, addr) ==
                               offsetof(struct ap_rec_alloc_sampled, addr) &&
                       offsetof(struct ap_rec_alloc, size) ==
                               offsetof(struct ap_rec_alloc_sampled, size),
               "an ALLOC record is the prefix of an ALLOC_SAMPLED one");

/* Fills an ALLOC, ALLOC_SAMPLED or REALLOC record of nbytes at w: the stack is the id
 * `id`, or (id == 0) the n addresses in ips, copied after the fixed part. */
static void fill_alloc_record(uint8_t *w, uint32_t nbytes, uint8_t type, uint8_t flags, uint32_t id,
                              const uint64_t *ips, uint32_t n, void *old, void *p, size_t size,
                              uint64_t ts, uint64_t weight)
{
        struct ap_rec_hdr *rh = (struct ap_rec_hdr *)w;
        rh->type = type;
        rh->flags = (uint8_t)(flags | (id == 0 ? AP_RECF_INLINE_STACK : 0));
        rh->nwords = (uint16_t)(nbytes / 8);
        rh->aux = id == 0 ? n : id;
        if (type == AP_REC_REALLOC) {
                struct ap_rec_realloc *r = (struct ap_rec_realloc *)w;
                r->ts = alloc_ticks();
                r->ts_free = ts;
                r->old_addr = (uint64_t)(uintptr_t)old;
                r->new_addr = (uint64_t)(uintptr_t)p;
                r->size = size;
        } else {
                /* ALLOC is ALLOC_SAMPLED without the trailing weight. */
                struct ap_rec_alloc_sampled *r = (struct ap_rec_alloc_sampled *)w;
                r->ts = ts;
                r->addr = (uint64_t)(uintptr_t)p;
                r->size = size;
                if (type == AP_REC_ALLOC_SAMPLED)
                        r->weight = weight;
        }
        if (id == 0)
                memcpy(w + alloc_record_fixed(type), ips, 8ull * n);
}

static void fill_free_record(uint8_t *w, void *p, uint64_t ts, uint8_t flags)
{
        struct ap_rec_free *r = (struct ap_rec_free *)w;
        r->hdr = (struct ap_rec_hdr){.type = AP_REC_FREE, .flags = flags, .nwords = sizeof(*r) / 8};
        r->ts = ts;
        r->addr = (uint64_t)(uintptr_t)p;
}

static void write_alloc_like(uint8_t type, uint8_t flags, void *old, void *p, size_t size,
                             uint64_t ts, uint64_t weight, const void *entry)
{
        struct ap_thread *t = &ap_tls;
        struct ap_shm_header *h = thread_ring(t, true);
        if (h == NULL)
                return;

        uint64_t ips[AP_MAX_FRAMES], hash;
        bool same;
        uint32_t n = capture(ips, &hash, &same, entry);
        /* The same stack as this thread's last one (a loop allocating): its id without
         * a look at the index. */
        uint32_t id;
        uint64_t gen = ap_load_relaxed(&g_stacks_gen);
        if (same && t->memo.user != 0 && t->memo.user_gen == gen) {
                id = (uint32_t)t->memo.user;
        } else {
                id = stack_intern(h, ips, n, hash);
                t->memo.user = id;
                t->memo.user_gen = gen;
        }
        if (id == 0)
                check_modules(ips, n);

        uint32_t nbytes = alloc_record_fixed(type) + (id == 0 ? 8 * n : 0);
        uint8_t *w = ring_reserve(t, h, nbytes, AP_RING_FREE_RESERVE);
        if (w == NULL) {
                ap_count(AP_CNT_DROP_RING_FULL, 1);
                return;
        }
        fill_alloc_record(w, nbytes, type, flags, id, ips, n, old, p, size, ts, weight);
        if (id == 0)
                ap_count(AP_CNT_INLINE_STACKS, 1);
        ap_ring_commit(&t->pr, nbytes);
}

AP_HIDDEN void ap_record_alloc(void *p, size_t size, const void *entry)
{
        write_alloc_like(AP_REC_ALLOC, 0, NULL, p, size, alloc_ticks(), 0, entry);
}

AP_HIDDEN void ap_record_alloc_sampled(void *p, size_t size, uint64_t weight, bool realloc,
                                       const void *entry)
{
        write_alloc_like(AP_REC_ALLOC_SAMPLED, realloc ? AP_RECF_REALLOC : 0, NULL, p, size,
                         alloc_ticks(), weight, entry);
}

AP_HIDDEN void ap_record_realloc(void *old, void *p, size_t size, uint64_t ts, const void *entry)
{
        if (ap_own_block(old)) {
                ap_own_remember(p); /* resized by the C library: still the agent's */
                return;
        }
        write_alloc_like(AP_REC_REALLOC, 0, old, p, size, ts, 0, entry);
}

/* ---- the agent's own blocks that the C library frees (agent.h) ----------------------- */

/* Open addressing, a fixed window of OWN_PROBES cells from the key's slot: an insert
 * claims an empty cell of the window (CAS from 0), a removal empties the cell it finds, so
 * no tombstones are needed.  Relaxed: a block is remembered by the thread that allocates
 * it, before the C library has its address; whoever frees it got it through the C
 * library's own synchronization.  A block that finds no cell (more than a few thousand
 * threads at once) is forgotten: its free counts as an unmatched one, as before. */
#define OWN_BITS 14
#define OWN_PROBES 32
static _Atomic uint64_t g_own[1u << OWN_BITS];
AP_HIDDEN _Atomic uint32_t ap_own_live;

static inline uint32_t own_slot(uint64_t key)
{
        return (uint32_t)(ap_mix(key) >> (64 - OWN_BITS));
}

AP_HIDDEN void ap_own_remember(void *p)
{
        uint64_t key = (uint64_t)(uintptr_t)p;
        if (key == 0)
                return;
        uint32_t mask = (1u << OWN_BITS) - 1, i = own_slot(key);
        for (int n = 0; n < OWN_PROBES; n++, i = (i + 1) & mask) {
                uint64_t cur = 0;
                if (atomic_compare_exchange_strong_explicit(
                            &g_own[i], &cur, key, memory_order_relaxed, memory_order_relaxed)) {
                        ap_fetch_add_relaxed(&ap_own_live, 1);
                        return;
                }
        }
}

AP_HIDDEN bool ap_own_forget(void *p)
{
        uint64_t key = (uint64_t)(uintptr_t)p;
        if (key == 0)
                return false;
        uint32_t mask = (1u << OWN_BITS) - 1, i = own_slot(key);
        for (int n = 0; n < OWN_PROBES; n++, i = (i + 1) & mask) {
                uint64_t cur = key;
                if (ap_load_relaxed(&g_own[i]) == key &&
                    atomic_compare_exchange_strong_explicit(
                            &g_own[i], &cur, 0, memory_order_relaxed, memory_order_relaxed)) {
                        ap_fetch_add_relaxed(&ap_own_live, (uint32_t)-1);
                        return true;
                }
        }
        return false;
}

/* ---- nested (signal handler) records ------------------------------------------------ */

/* The session a handler's record goes to: none in a child that has not yet dropped its
 * parent's (ap_fork_mark), which is left to the next hook outside a handler. */
static struct ap_shm_header *nested_session(void)
{
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        return h != NULL && ap_unlikely(ap_fork_unseen()) ? NULL : h;
}

/* The thread's nested ring in session h, claiming a slot on first use.  False: no slot
 * (all taken, or the one found could not be mapped); the caller counts the record as
 * dropped, as thread_ring does for the hooks' own path. */
static bool nested_ring(struct ap_thread *t, struct ap_shm_header *h)
{
        if (ap_unlikely(t->nctl == NULL || t->ngen != ap_load_relaxed(&ap_session_gen))) {
                t->nctl = NULL;
                if (!slot_claim(h, &t->nctl, &t->npr, &t->ngen, false))
                        return false;
        }
        return true;
}

/* Writes one record into the nested ring, no waiting (a handler must not block). */
static uint8_t *nested_reserve(struct ap_thread *t, uint32_t nbytes, uint32_t keep)
{
        uint8_t *w = ap_ring_try_reserve(&t->npr, nbytes, keep);
        if (w == NULL)
                ap_count(AP_CNT_DROP_RING_FULL, 1);
        return w;
}

AP_HIDDEN void ap_nested_alloc(void *p, size_t size, bool realloc)
{
        struct ap_thread *t = &ap_tls;
        if (t->own_alloc) {
                if (t->own_tracked)
                        ap_own_remember(p);
                return;
        }
        if (t->nested_busy) {
                ap_count(AP_CNT_DROP_RING_FULL, 1); /* a handler inside a handler */
                return;
        }
        t->nested_busy = 1;
        struct ap_shm_header *h = nested_session();
        uint32_t mode = h ? ap_load_relaxed(&h->xmode) : AP_MODE_OFF;
        uint64_t weight = 0;
        if (mode == AP_MODE_SAMPLED) {
                /* A handler that interrupts the thread's first sampled allocation before
                 * its sampler is set up (alloc_sampled) sets it up: skipped, its blocks
                 * went unsampled, unseen even at an interval of 1.  (Should it interrupt
                 * alloc_sampled between its test and its own set-up, that one starts a
                 * fresh stream after this: no bias.) */
                if (!t->sampler_ready) {
                        ap_sampler_init(&t->sampler, ap_load_relaxed(&h->xsample_interval),
                                        ap_sampler_seed());
                        t->sampler_ready = 1;
                }
                uint64_t n = ap_sampler_take(&t->sampler, ap_sampler_stream_size(size));
                weight = n * t->sampler.interval;
                if (n == 0)
                        mode = AP_MODE_OFF;
                else
                        ap_sampled_remember(p);
        }
        if (mode != AP_MODE_FULL && mode != AP_MODE_SAMPLED) {
                /* nothing to record */
        } else if (!nested_ring(t, h)) {
                ap_count(AP_CNT_DROP_NO_SLOT, 1);
        } else {
                uint64_t ips[AP_MAX_FRAMES];
                uint32_t n = capture_fp(ips, false);
                uint64_t ts = ap_clock_ticks();
                uint8_t type = mode == AP_MODE_SAMPLED ? AP_REC_ALLOC_SAMPLED : AP_REC_ALLOC;
                uint8_t flags = realloc && mode == AP_MODE_SAMPLED ? AP_RECF_REALLOC : 0;
                uint32_t nbytes = alloc_record_fixed(type) + 8 * n;
                uint8_t *w = nested_reserve(t, nbytes, AP_RING_FREE_RESERVE);
                if (w != NULL) {
                        /* Always inline: no stack-index work over an interrupted writer. */
                        fill_alloc_record(w, nbytes, type, flags, 0, ips, n, NULL, p, size, ts,
                                          weight);
                        ap_ring_commit(&t->npr, nbytes);
                }
        }
        t->nested_busy = 0;
}

AP_HIDDEN void ap_nested_free(void *p)
{
        struct ap_thread *t = &ap_tls;
        if (t->own_alloc) {
                (void)ap_own_block(p); /* ours: forgotten if remembered */
                return;
        }
        if (t->nested_busy) {
                /* a handler inside a handler: counted like the allocations */
                ap_count(AP_CNT_DROP_RING_FULL, 1);
                ap_count(AP_CNT_DROP_FREE, 1);
                return;
        }
        t->nested_busy = 1;
        struct ap_shm_header *h = nested_session();
        uint32_t mode = h ? ap_load_relaxed(&h->xmode) : AP_MODE_OFF;
        if (mode == AP_MODE_FULL && ap_own_block(p)) {
                /* the agent's own block: not recorded */
        } else if (mode == AP_MODE_FULL || ((mode == AP_MODE_SAMPLED || mode == AP_MODE_DETACHED) &&
                                            ap_sampled_forget(p))) {
                if (!nested_ring(t, h)) {
                        ap_count(AP_CNT_DROP_NO_SLOT, 1);
                        ap_count(AP_CNT_DROP_FREE, 1);
                        t->nested_busy = 0;
                        return;
                }
                uint8_t *w = nested_reserve(t, sizeof(struct ap_rec_free), 0);
                if (w != NULL) {
                        /* In sampled mode not temporary: a signal handler freed it. */
                        fill_free_record(w, p, ap_clock_ticks_early(),
                                         mode == AP_MODE_FULL ? 0 : AP_RECF_SAMPLED_FREE);
                        ap_ring_commit(&t->npr, sizeof(struct ap_rec_free));
                } else {
                        ap_count(AP_CNT_DROP_FREE, 1); /* as ap_record_free does */
                }
        }
        t->nested_busy = 0;
}

/* ---- sampled blocks ------------------------------------------------------------------
 * A lock-free set of the addresses of live sampled blocks, so that the free of an
 * unsampled block costs one probe and sends nothing.  Open addressing, linear probing
 * limited to SET_PROBES cells; deleted cells become tombstones that later inserts reuse.
 * An address is in the set at most once: it is inserted after malloc returned it and
 * removed before free gives it back, so two threads never race on the same key.  Cells
 * are claimed with CAS (acq_rel); lookups need no ordering beyond that of the key itself
 * (relaxed): the thread that frees a block is ordered after the one that allocated it by
 * the program's own synchronization.
 *
 * The set grows in levels: level k has 2^(SET_MIN_BITS + k) cells, each mapped when the
 * one below has no free cell within SET_PROBES of a new key.  Inserts go to the newest
 * level only; lookups try every level, newest first; old levels drain as their blocks are
 * freed.  A single table sized for the worst case (a million live sampled blocks) had
 * every one of its 2,048 pages touched by a few hundred random keys: 8 MiB more resident
 * memory and 2,000 page faults for a program that never holds more than a few hundred
 * sampled blocks (the churn benchmark).  The first level is 32 KiB.
 *
 * Levels are published in order through g_top, the number of mapped levels (acquire /
 * release: a thread that sees g_top = k + 1 sees level k's pointer).  The freeing thread
 * always sees the level its block went to: the inserting thread read g_top before its
 * insert, which happens before the free, and a later read of g_top returns that value or a
 * newer one.  A thread that finds the newest level full maps the next one (level_ready).
 *
 * In front of the set sit two counting filters (one byte per bucket of addresses): the
 * free of an unsampled block almost always finds a zero in the first, 8 KiB, which its
 * hook reads, and never looks further; the set's random probes would miss the cache on
 * every free.  What the first lets through (a few hundred live sampled blocks fill a few
 * % of its buckets) the second, 64 KiB, mostly stops before the set.  A single 64 KiB
 * filter, read on every free, was itself a cache miss on many of them in a program with
 * a large working set (cc1: the free hook took 0.8% of the compiler's time in sampled
 * mode).  A bucket of either is incremented before its key is inserted and decremented
 * after it is removed, so a live sampled block always finds its two buckets non-zero; a
 * saturated bucket (255) stays saturated, which only costs probes. */
#define SET_MIN_BITS 12
#define SET_LEVELS 9 /* 2^12 to 2^20 cells: 2^21 - 2^12 in all */
#define SET_PROBES 64
#define SET_TOMB UINT64_MAX

static _Atomic uint64_t *_Atomic g_level[SET_LEVELS]; /* NULL until mapped */
static _Atomic uint32_t g_top;                         /* levels [0, g_top) are mapped */
AP_HIDDEN _Atomic uint8_t ap_filter[1u << AP_FILTER_BITS];
#define WIDE_FILTER_BITS 16
static _Atomic uint8_t g_wide_filter[1u << WIDE_FILTER_BITS];

/* Level k is there (and g_top says so) on return true; false if it cannot be mapped.
 * Nobody waits for anybody: every thread that finds the level missing maps one, the first
 * to install its mapping wins and the others unmap theirs (a handful of system calls,
 * once per level).  A thread that waited for the mapping thread instead could wait for a
 * thread that is not running (two cores, four writers) or that it interrupted (a signal
 * handler that allocates). */
static bool level_ready(uint32_t k)
{
        _Atomic uint64_t *set = ap_load_acquire(&g_level[k]);
        if (set == NULL) {
                size_t bytes = sizeof(uint64_t) << (SET_MIN_BITS + k);
                void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
                if (m == MAP_FAILED)
                        return false;
                /* acq_rel: publishes the (untouched) mapping; on failure, sees the
                 * winner's. */
                if (!ap_cas_acq_rel(&g_level[k], &set, (_Atomic uint64_t *)m))
                        munmap(m, bytes);
        }
        /* Whoever sees the level publishes it. */
        uint32_t top = k;
        ap_cas_acq_rel(&g_top, &top, k + 1);
        return true;
}

static inline uint32_t set_slot(uint64_t key, unsigned bits)
{
        key ^= key >> 29;
        key *= 0xbf58476d1ce4e5b9ull;
        return (uint32_t)(key >> (64 - bits));
}

static inline void bucket_inc(_Atomic uint8_t *b)
{
        uint8_t v = ap_load_relaxed(b);
        while (v != 255 &&
               !atomic_compare_exchange_weak_explicit(b, &v, (uint8_t)(v + 1), memory_order_relaxed,
                                                      memory_order_relaxed))
                ;
}

static inline void bucket_dec(_Atomic uint8_t *b)
{
        uint8_t v = ap_load_relaxed(b);
        while (v != 255 && v != 0 &&
               !atomic_compare_exchange_weak_explicit(b, &v, (uint8_t)(v - 1), memory_order_relaxed,
                                                      memory_order_relaxed))
                ;
}

/* Relaxed: like the set's lookups, a filter read is ordered after the increments of the
 * block it is about by the program's own synchronization (malloc returned the block,
 * then something freed it). */
static inline void filter_inc(uint64_t key)
{
        bucket_inc(&ap_filter[ap_filter_slot(key, AP_FILTER_BITS)]);
        bucket_inc(&g_wide_filter[ap_filter_slot(key, WIDE_FILTER_BITS)]);
}

static inline void filter_dec(uint64_t key)
{
        bucket_dec(&ap_filter[ap_filter_slot(key, AP_FILTER_BITS)]);
        bucket_dec(&g_wide_filter[ap_filter_slot(key, WIDE_FILTER_BITS)]);
}

/* Level k's cells (acquire: see g_top), the mask of their indexes, and where key's
 * probe starts. */
static inline _Atomic uint64_t *level_probe(uint32_t k, uint64_t key, uint32_t *mask,
                                            uint32_t *start)
{
        unsigned bits = SET_MIN_BITS + k;
        *mask = (1u << bits) - 1;
        *start = set_slot(key, bits);
        return ap_load_acquire(&g_level[k]);
}

/* Claims a cell of level k for key; false if none is free within SET_PROBES. */
static bool level_insert(uint32_t k, uint64_t key)
{
        uint32_t mask, i;
        _Atomic uint64_t *set = level_probe(k, key, &mask, &i);
        for (int n = 0; n < SET_PROBES; n++, i = (i + 1) & mask) {
                /* A CAS, not a load, first: the first touch of a page of the set is then a
                 * write, which gets a fresh zeroed page.  A load first would map the shared
                 * zero page, and the write after it would have to replace that page: a copy
                 * and, in a threaded program, a TLB shootdown interrupting every CPU the
                 * program runs on (measured: 2% of a 4-thread churn's time in sampled
                 * mode). */
                uint64_t cur = 0;
                if (ap_cas_acq_rel(&set[i], &cur, key))
                        return true;
                if (cur == SET_TOMB && ap_cas_acq_rel(&set[i], &cur, key))
                        return true;
        }
        return false;
}

AP_HIDDEN void ap_sampled_remember(void *p)
{
        uint64_t key = (uint64_t)(uintptr_t)p;
        filter_inc(key);
        uint32_t top = ap_load_acquire(&g_top);
        for (;;) {
                if (top > 0 && level_insert(top - 1, key))
                        return;
                if (top == SET_LEVELS || !level_ready(top))
                        break;
                top = ap_load_acquire(&g_top);
        }
        filter_dec(key);
        ap_count(AP_CNT_SAMPLED_SET_FULL, 1);
}

/* The cell holding p, or NULL if p is not in the set (filter first, then the levels). */
static _Atomic uint64_t *sampled_find(const void *p)
{
        uint64_t key = (uint64_t)(uintptr_t)p;
        if (ap_likely(!ap_sampled_maybe(p)) ||
            ap_load_relaxed(&g_wide_filter[ap_filter_slot(key, WIDE_FILTER_BITS)]) == 0)
                return NULL;
        for (uint32_t k = ap_load_acquire(&g_top); k-- > 0;) {
                uint32_t mask, i;
                _Atomic uint64_t *set = level_probe(k, key, &mask, &i);
                for (int n = 0; n < SET_PROBES; n++, i = (i + 1) & mask) {
                        uint64_t cur = ap_load_relaxed(&set[i]);
                        if (cur == key)
                                return &set[i];
                        if (cur == 0)
                                break;
                }
        }
        return NULL;
}

AP_HIDDEN bool ap_sampled_forget(void *p)
{
        _Atomic uint64_t *cell = sampled_find(p);
        if (cell == NULL)
                return false;
        ap_store_relaxed(cell, SET_TOMB);
        filter_dec((uint64_t)(uintptr_t)p);
        return true;
}

AP_HIDDEN bool ap_sampled_contains(const void *p)
{
        return sampled_find(p) != NULL;
}

static _Atomic uint64_t g_seed_counter;

AP_HIDDEN uint64_t ap_sampler_seed(void)
{
        /* Fixed seed (tests): threads draw distinct, reproducible streams in the order
         * they first sample. */
        extern AP_HIDDEN uint64_t ap_sample_seed;
        uint64_t k = ap_fetch_add_relaxed(&g_seed_counter, 1) + 1;
        uint64_t base =
                ap_sample_seed ? ap_sample_seed : ap_clock_ticks() ^ (uint64_t)(uintptr_t)&ap_tls;
        return ap_mix(base + k * 0x9e3779b97f4a7c15ull);
}

AP_HIDDEN void ap_record_free(void *p, uint64_t ts, uint8_t flags)
{
        /* Full mode (a sampled free's block was sampled, so it is the program's). */
        if (!(flags & AP_RECF_SAMPLED_FREE) && ap_own_block(p))
                return;
        struct ap_thread *t = &ap_tls;
        struct ap_shm_header *h = thread_ring(t, false);
        if (h == NULL) {
                ap_count(AP_CNT_DROP_FREE, 1);
                return;
        }
        uint8_t *w = ring_reserve(t, h, sizeof(struct ap_rec_free), 0);
        if (w == NULL) {
                ap_count(AP_CNT_DROP_RING_FULL, 1);
                ap_count(AP_CNT_DROP_FREE, 1);
                return;
        }
        fill_free_record(w, p, ts, flags);
        ap_ring_commit(&t->pr, sizeof(struct ap_rec_free));
}
