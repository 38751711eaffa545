/* The agent's hot path: per-thread ring slots, record writing and stack capture with
 * deduplication.  Runs inside hooks: no allocation, no locks, no syscalls except in the
 * rare full-ring wait.  The protocol and its barrier pairs are drawn in wire.h.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define UNW_LOCAL_ONLY
#include <libunwind.h>

#include "agent.h"
#include "allocprof/atomics.h"
#include "allocprof/ring.h"

AP_HIDDEN AP_TLS __thread struct ap_thread ap_tls;

/* ---- stack index ------------------------------------------------------------------
 * Agent-private open-addressing table: hash -> id of the entry in the shared stack heap.
 * Insertion claims a cell by CAS on the hash, writes the heap entry, then publishes the
 * id with a release store; readers load the id with acquire (pairs with that store)
 * before naming it in a record.  A reader that finds the hash but no id yet (insertion
 * in flight, possibly in a signal handler interrupting the inserter) sends the stack
 * inline instead of waiting. */
#define INDEX_BITS 20
#define INDEX_CAP (1u << INDEX_BITS)
#define INDEX_PROBES 32

struct index_cell {
        _Atomic uint64_t xhash; /* 0 = empty */
        _Atomic uint32_t xid;   /* 0 = not yet published */
        uint32_t pad;
};

static struct index_cell *g_index;

AP_HIDDEN int ap_stacks_init(void)
{
        size_t bytes = sizeof(struct index_cell) * INDEX_CAP;
        /* Fork child: the inherited table names entries of the parent's heap. */
        if (g_index != NULL)
                munmap(g_index, bytes);
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
                g_index = NULL;
                return -errno;
        }
        g_index = p;
        return 0;
}

static inline uint64_t hash_ips(const uint64_t *ips, uint32_t n)
{
        uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
        for (uint32_t i = 0; i < n; i++) {
                h ^= ips[i];
                h *= 0xff51afd7ed558ccdull;
                h ^= h >> 32;
        }
        return h ? h : 1;
}

static inline struct ap_stack_entry *heap_entry(struct ap_shm_header *h, uint32_t id)
{
        return (struct ap_stack_entry *)((uint8_t *)h + h->stacks_offset + (uint64_t)id * 8);
}

static void check_modules(const uint64_t *ips, uint32_t n);

/* Returns the stack id (> 0), or 0 if the stack must be sent inline. */
static uint32_t stack_intern(struct ap_shm_header *h, const uint64_t *ips, uint32_t n)
{
        if (g_index == NULL)
                return 0;
        uint64_t hash = hash_ips(ips, n);
        uint32_t pos = (uint32_t)hash & (INDEX_CAP - 1);

        for (int probe = 0; probe < INDEX_PROBES; probe++, pos = (pos + 1) & (INDEX_CAP - 1)) {
                struct index_cell *c = &g_index[pos];
                uint64_t cur = ap_load_acquire(&c->xhash);
                if (cur == 0) {
                        uint64_t expected = 0;
                        if (!ap_cas_acq_rel(&c->xhash, &expected, hash)) {
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
                                struct ap_stack_entry *e =
                                        (struct ap_stack_entry *)((uint8_t *)h + h->stacks_offset +
                                                                  off);
                                e->depth = n;
                                e->reserved = 0;
                                e->hash = hash;
                                memcpy(e->ips, ips, 8ull * n);
                                uint32_t id = (uint32_t)(off / 8);
                                /* Before anyone can name this stack, make sure the
                                 * modules its addresses lie in have been reported. */
                                check_modules(ips, n);
                                /* Release: pairs with the acquire below in other threads;
                                 * the entry is complete before its id is visible. */
                                ap_store_release(&c->xid, id);
                                return id;
                        }
                }
                if (cur != hash)
                        continue;
                uint32_t id = ap_load_acquire(&c->xid); /* pairs with the release above */
                if (id == 0)
                        return 0;
                struct ap_stack_entry *e = heap_entry(h, id);
                if (e->depth == n && memcmp(e->ips, ips, 8ull * n) == 0)
                        return id;
                /* 64-bit hash collision: keep probing for the real stack. */
        }
        return 0;
}

/* ---- ring slots --------------------------------------------------------------------- */

static pid_t gettid_raw(void)
{
        return (pid_t)syscall(SYS_gettid);
}

static bool slot_claim(struct ap_thread *t, struct ap_shm_header *h)
{
        uint32_t n = h->nslots;
        uint32_t start = (uint32_t)gettid_raw() % n;

        for (uint32_t k = 0; k < n; k++) {
                uint32_t i = (start + k) % n;
                struct ap_ring_ctl *ctl = (struct ap_ring_ctl *)((uint8_t *)h + h->slots_offset +
                                                                 (uint64_t)i * h->slot_stride);
                uint32_t expected = AP_SLOT_FREE;
                if (ap_load_relaxed(&ctl->xstate) != AP_SLOT_FREE)
                        continue;
                /* acq_rel: acquire pairs with the collector's release of FREE (it finished
                 * reading the previous owner's records); release orders our claim. */
                if (!ap_cas_acq_rel(&ctl->xstate, &expected, AP_SLOT_OWNED))
                        continue;
                ctl->tid = (uint32_t)gettid_raw();
                t->ctl = ctl;
                /* We are the only producer now; the previous owner's last head stands. */
                ap_producer_attach(&t->pr, ctl);
                t->gen = ap_load_relaxed(&ap_session_gen);
                uint32_t hwm = ap_load_relaxed(&h->xslot_hwm);
                while (hwm < i + 1 && !atomic_compare_exchange_weak_explicit(
                                              &h->xslot_hwm, &hwm, i + 1, memory_order_release,
                                              memory_order_relaxed))
                        ;
                return true;
        }
        return false;
}

AP_HIDDEN void ap_thread_release(void)
{
        struct ap_thread *t = &ap_tls;
        if (t->ctl != NULL && t->gen == ap_load_relaxed(&ap_session_gen)) {
                /* Release: our last head store is visible before the slot is retired. */
                ap_store_release(&t->ctl->xstate, AP_SLOT_RETIRED);
        }
        t->ctl = NULL;
}

AP_HIDDEN void ap_count(enum ap_counter c, uint64_t n)
{
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        if (h != NULL)
                ap_fetch_add_relaxed(&h->xcounters[c], n);
}

AP_HIDDEN uint64_t ap_now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no syscall, no allocation */
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The collector is presumed gone when its heartbeat did not move for this long while our
 * ring stayed full; from then on full rings drop at once instead of waiting. */
#define WAIT_STALL_NS (200ull * 1000 * 1000)
#define WAIT_MAX_NS (2000ull * 1000 * 1000)
static _Atomic int g_collector_stalled;

/* Makes room for nbytes at the producer position, waiting a bounded time for the
 * collector when the ring is full.  Returns where to write, or NULL (record dropped; the
 * caller counts it). */
static uint8_t *ring_reserve(struct ap_thread *t, struct ap_shm_header *h, uint32_t nbytes)
{
        uint8_t *w = ap_ring_try_reserve(&t->pr, nbytes);
        if (ap_likely(w != NULL)) {
                if (ap_unlikely(ap_load_relaxed(&g_collector_stalled)))
                        ap_store_relaxed(&g_collector_stalled, 0); /* it drained: alive */
                return w;
        }
        if (ap_load_relaxed(&g_collector_stalled))
                return NULL;
        ap_count(AP_CNT_RING_WAITS, 1);
        uint64_t start = ap_now_ns(), beat_at = start;
        uint64_t beat = ap_load_relaxed(&h->xheartbeat);
        for (;;) {
                struct timespec ts = {0, 50 * 1000};
                nanosleep(&ts, NULL);
                w = ap_ring_try_reserve(&t->pr, nbytes);
                if (w != NULL)
                        return w;
                if (ap_load_relaxed(&h->xmode) != AP_MODE_FULL)
                        return NULL;
                uint64_t now = ap_now_ns();
                uint64_t b = ap_load_relaxed(&h->xheartbeat);
                if (b != beat) {
                        beat = b;
                        beat_at = now;
                } else if (now - beat_at > WAIT_STALL_NS) {
                        ap_store_relaxed(&g_collector_stalled, 1);
                        return NULL;
                }
                if (now - start > WAIT_MAX_NS)
                        return NULL;
        }
}

/* Returns the thread's ring, claiming a slot on first use.  NULL: no slot (counted). */
static inline struct ap_shm_header *thread_ring(struct ap_thread *t)
{
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        if (h == NULL)
                return NULL;
        if (ap_unlikely(t->ctl == NULL || t->gen != ap_load_relaxed(&ap_session_gen))) {
                t->ctl = NULL;
                if (!slot_claim(t, h)) {
                        ap_count(AP_CNT_DROP_NO_SLOT, 1);
                        return NULL;
                }
                extern AP_HIDDEN void ap_thread_started(void);
                ap_thread_started();
        }
        return h;
}

/* ---- stack capture ------------------------------------------------------------------ */

#define CAPTURE_MAX (AP_MAX_FRAMES + 8)

/* Captures the caller's stack without the agent's own frames.  Returns the depth. */
static __attribute__((noinline)) uint32_t capture(uint64_t *out)
{
        void *buf[CAPTURE_MAX];
        int n = unw_backtrace(buf, CAPTURE_MAX);
        int skip = 0;
        while (skip < n && ap_is_agent_addr((uint64_t)(uintptr_t)buf[skip]))
                skip++;
        uint32_t depth = 0;
        for (int i = skip; i < n && depth < AP_MAX_FRAMES; i++)
                out[depth++] = (uint64_t)(uintptr_t)buf[i];
        if (depth == 0)
                out[depth++] = 0; /* unwinding failed: an unknown site */
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

static void write_alloc_like(uint8_t type, void *old, void *p, size_t size, uint64_t ts)
{
        struct ap_thread *t = &ap_tls;
        struct ap_shm_header *h = thread_ring(t);
        if (h == NULL)
                return;

        uint64_t ips[AP_MAX_FRAMES];
        uint32_t n = capture(ips);
        uint32_t id = stack_intern(h, ips, n);
        if (id == 0)
                check_modules(ips, n);

        uint32_t fixed = type == AP_REC_REALLOC ? sizeof(struct ap_rec_realloc)
                                                : sizeof(struct ap_rec_alloc);
        uint32_t nbytes = fixed + (id == 0 ? 8 * n : 0);
        uint8_t *w = ring_reserve(t, h, nbytes);
        if (w == NULL) {
                ap_count(AP_CNT_DROP_RING_FULL, 1);
                return;
        }
        struct ap_rec_hdr *rh = (struct ap_rec_hdr *)w;
        rh->type = type;
        rh->flags = id == 0 ? AP_RECF_INLINE_STACK : 0;
        rh->nwords = (uint16_t)(nbytes / 8);
        rh->aux = id == 0 ? n : id;
        if (type == AP_REC_REALLOC) {
                struct ap_rec_realloc *r = (struct ap_rec_realloc *)w;
                r->ts = ap_clock_ticks();
                r->ts_free = ts;
                r->old_addr = (uint64_t)(uintptr_t)old;
                r->new_addr = (uint64_t)(uintptr_t)p;
                r->size = size;
        } else {
                struct ap_rec_alloc *r = (struct ap_rec_alloc *)w;
                r->ts = ts;
                r->addr = (uint64_t)(uintptr_t)p;
                r->size = size;
        }
        if (id == 0) {
                memcpy(w + fixed, ips, 8ull * n);
                ap_count(AP_CNT_INLINE_STACKS, 1);
        }
        ap_ring_commit(&t->pr, nbytes);
}

AP_HIDDEN void ap_record_alloc(void *p, size_t size)
{
        write_alloc_like(AP_REC_ALLOC, NULL, p, size, ap_clock_ticks());
}

AP_HIDDEN void ap_record_realloc(void *old, void *p, size_t size, uint64_t ts)
{
        write_alloc_like(AP_REC_REALLOC, old, p, size, ts);
}

AP_HIDDEN void ap_record_free(void *p, uint64_t ts)
{
        struct ap_thread *t = &ap_tls;
        struct ap_shm_header *h = thread_ring(t);
        if (h == NULL) {
                ap_count(AP_CNT_DROP_FREE, 1);
                return;
        }
        uint8_t *w = ring_reserve(t, h, sizeof(struct ap_rec_free));
        if (w == NULL) {
                ap_count(AP_CNT_DROP_RING_FULL, 1);
                ap_count(AP_CNT_DROP_FREE, 1);
                return;
        }
        struct ap_rec_free *r = (struct ap_rec_free *)w;
        r->hdr.type = AP_REC_FREE;
        r->hdr.flags = 0;
        r->hdr.nwords = sizeof(*r) / 8;
        r->hdr.aux = 0;
        r->ts = ts;
        r->addr = (uint64_t)(uintptr_t)p;
        ap_ring_commit(&t->pr, sizeof(*r));
}
