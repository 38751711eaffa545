/* Stress test of the ring protocol: several producer threads drive the agent's own
 * producer code (allocprof/ring.h) at full speed while the collector's drain runs
 * concurrently; the aggregated figures must come out exact (nothing lost, nothing torn).
 * Also built with ThreadSanitizer (meson -Db_sanitize=thread).  Then, single-threaded,
 * records with chosen timestamps: blocks that live for seconds, and a free that reaches
 * the collector after its address was handed out again.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "allocprof/clock.h"
#include "allocprof/ring.h"
#include "helpers.h"
#include "process.h"
#include "symbolize.h"

#define THREADS 4
#define PER_THREAD 200000

static struct ap_shm_header *g_h;

static uint8_t *reserve(struct ap_producer *pr, uint32_t n, uint32_t keep)
{
        uint8_t *w;
        while ((w = ap_ring_try_reserve(pr, n, keep)) == NULL)
                sched_yield(); /* full: the consumer is behind, never drop here */
        return w;
}

/* Slot i's control block in g_h. */
static struct ap_ring_ctl *slot_at(uint32_t i)
{
        return (struct ap_ring_ctl *)((uint8_t *)g_h + g_h->slots_offset +
                                      (uint64_t)i * AP_SLOT_STRIDE);
}

/* Claims slot id of g_h and attaches pr to it, as a thread of the agent would. */
static struct ap_ring_ctl *claim_slot(uint32_t id, struct ap_producer *pr)
{
        struct ap_ring_ctl *ctl = slot_at(id);
        uint32_t expected = AP_SLOT_FREE;
        ASSERT_TRUE(ap_cas_acq_rel(&ctl->xstate, &expected, AP_SLOT_OWNED));
        ctl->tid = 1000 + id; /* a thread of its own for each slot (threads are counted by it) */
        ap_producer_attach(pr, ctl);
        return ctl;
}

static void put_alloc(struct ap_producer *pr, uint64_t ts, uint64_t addr, uint64_t size,
                      const uint64_t *ips, uint32_t depth)
{
        uint32_t n = sizeof(struct ap_rec_alloc) + 8 * depth;
        struct ap_rec_alloc *r = (struct ap_rec_alloc *)reserve(pr, n, AP_RING_FREE_RESERVE);
        r->hdr = (struct ap_rec_hdr){.type = AP_REC_ALLOC,
                                     .flags = AP_RECF_INLINE_STACK,
                                     .nwords = (uint16_t)(n / 8),
                                     .aux = depth};
        r->ts = ts;
        r->addr = addr;
        r->size = size;
        memcpy(r + 1, ips, 8ull * depth);
        ap_ring_commit(pr, n);
}

static void put_free(struct ap_producer *pr, uint64_t ts, uint64_t addr)
{
        struct ap_rec_free *f = (struct ap_rec_free *)reserve(pr, sizeof(*f), 0);
        f->hdr = (struct ap_rec_hdr){.type = AP_REC_FREE, .nwords = sizeof(*f) / 8};
        f->ts = ts;
        f->addr = addr;
        ap_ring_commit(pr, sizeof(*f));
}

static void *producer(void *arg)
{
        uint32_t id = (uint32_t)(uintptr_t)arg;
        struct ap_producer pr;
        struct ap_ring_ctl *ctl = claim_slot(id, &pr);

        for (uint64_t i = 0; i < PER_THREAD; i++) {
                uint64_t addr = ((uint64_t)(id + 1) << 40) | (i << 4);
                /* depth varies so records have different lengths and wrap differently */
                uint32_t depth = 1 + (uint32_t)(i % 3);
                uint64_t ips[3];
                for (uint32_t d = 0; d < depth; d++)
                        ips[d] = 0x1000 * (id + 1) + d;
                put_alloc(&pr, ap_clock_ticks(), addr, 1 + (i % 100), ips, depth);
                if (i % 2 == 0)
                        put_free(&pr, ap_clock_ticks(), addr);
        }
        ap_store_release(&ctl->xstate, AP_SLOT_RETIRED);
        return NULL;
}

/* The call stack of the single-threaded cases' allocations (and of the slot reuse). */
static const uint64_t one_ip = 0x1000;

/* Slot reuse: REUSE_THREADS threads take turns on REUSE_SLOTS slots, REUSE_ROUNDS times
 * each, as short-lived threads do: claim whichever slot is free, write, retire.  The
 * collector rewinds every slot it frees (wire.h), so each owner must find the ring at 0,
 * and write over bytes the collector read from the previous owner only after it gave the
 * slot back (ThreadSanitizer checks that ordering). */
#define REUSE_THREADS 4
#define REUSE_SLOTS 2
#define REUSE_ROUNDS 300
#define REUSE_ALLOCS 50

static _Atomic int g_reuse_bad; /* an owner that found the ring not at 0 */

static void *reuser(void *arg)
{
        uint32_t id = (uint32_t)(uintptr_t)arg;
        for (uint64_t round = 0; round < REUSE_ROUNDS; round++) {
                struct ap_ring_ctl *ctl = NULL;
                while (ctl == NULL) {
                        for (uint32_t s = 0; s < REUSE_SLOTS && ctl == NULL; s++) {
                                struct ap_ring_ctl *c = slot_at(s);
                                uint32_t expected = AP_SLOT_FREE;
                                if (ap_cas_acq_rel(&c->xstate, &expected, AP_SLOT_OWNED))
                                        ctl = c;
                        }
                        if (ctl == NULL)
                                sched_yield();
                }
                ctl->tid = 2000 + id;
                struct ap_producer pr;
                ap_producer_attach(&pr, ctl);
                if (pr.head != 0 || pr.tail_cache != 0)
                        atomic_fetch_add(&g_reuse_bad, 1);
                for (uint64_t i = 0; i < REUSE_ALLOCS; i++) {
                        uint64_t addr = ((uint64_t)(id + 1) << 40) | (round << 20) | (i << 4);
                        put_alloc(&pr, ap_clock_ticks(), addr, 8, &one_ip, 1);
                        if (i % 2 == 0)
                                put_free(&pr, ap_clock_ticks(), addr);
                }
                ap_store_release(&ctl->xstate, AP_SLOT_RETIRED);
        }
        return NULL;
}

static struct ap_process *new_area(int *fd, uint64_t *total, uint32_t slots);

/* Drains what is left of p, finalizes it, and releases p and the area (new_area's). */
static struct ap_profile *finish_area(struct ap_process *p, int fd, uint64_t total)
{
        ap_process_drain(p, true);
        struct ap_symbolizer *sym = NULL;
        ASSERT_OK(ap_symbolizer_new(&sym));
        struct ap_profile *prof = NULL;
        ASSERT_OK(ap_process_finalize(p, sym, &prof));
        ap_symbolizer_free(sym);
        ap_process_free(p);
        munmap(g_h, total);
        close(fd);
        return prof;
}

static void test_slot_reuse(void)
{
        int fd;
        uint64_t total;
        struct ap_process *p = new_area(&fd, &total, REUSE_SLOTS);
        pthread_t th[REUSE_THREADS];
        for (uintptr_t i = 0; i < REUSE_THREADS; i++)
                ASSERT_EQ(pthread_create(&th[i], NULL, reuser, (void *)i), 0);
        long drained = 0;
        int joined = 0;
        for (;;) {
                long n = ap_process_drain(p, joined == REUSE_THREADS);
                drained += n;
                if (joined == REUSE_THREADS && n == 0)
                        break;
                while (joined < REUSE_THREADS && pthread_tryjoin_np(th[joined], NULL) == 0)
                        joined++;
        }
        const uint64_t owners = (uint64_t)REUSE_THREADS * REUSE_ROUNDS;
        ASSERT_EQ(drained, (long)(owners * REUSE_ALLOCS * 3 / 2));
        ASSERT_EQ(atomic_load(&g_reuse_bad), 0);
        for (uint32_t s = 0; s < REUSE_SLOTS; s++) {
                struct ap_ring_ctl *c = slot_at(s);
                ASSERT_EQ(ap_load_acquire(&c->xstate), (uint32_t)AP_SLOT_FREE);
                ASSERT_EQ(ap_load_relaxed(&c->xhead), 0);
                ASSERT_EQ(ap_load_relaxed(&c->xtail), 0);
        }
        struct ap_profile *prof = finish_area(p, fd, total);
        ASSERT_EQ(prof->totals.allocations, owners * REUSE_ALLOCS);
        ASSERT_EQ(prof->totals.bytes, owners * REUSE_ALLOCS * 8);
        ASSERT_EQ(prof->totals.frees, owners * REUSE_ALLOCS / 2);
        ASSERT_EQ(prof->totals.unmatched_frees, 0);
        ASSERT_EQ(prof->totals.invalid_records, 0);
        ASSERT_EQ(prof->totals.threads, REUSE_THREADS);
        ap_profile_free(prof);
}

/* A fresh shared area in g_h with `slots` slots in use, and the collector's process on
 * it; *fd and *total for the caller to release. */
static struct ap_process *new_area(int *fd, uint64_t *total, uint32_t slots)
{
        *total = ap_shm_total_bytes();
        *fd = memfd_create("ring-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ASSERT_TRUE(*fd >= 0);
        ASSERT_OK(ftruncate(*fd, (off_t)*total));
        ASSERT_OK(fcntl(*fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW));
        g_h = mmap(NULL, *total, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
        ASSERT_TRUE(g_h != MAP_FAILED);
        ap_shm_init_layout(g_h);
        g_h->clock_kind = AP_CLOCK_KIND;
        g_h->start_ticks = ap_clock_ticks();
        ap_store_relaxed(&g_h->xslot_hwm, slots);

        struct ap_hello hello = {.magic = AP_HELLO_MAGIC,
                                 .layout_version = AP_LAYOUT_VERSION,
                                 .pid = (uint32_t)getpid(),
                                 .shm_bytes = *total};
        struct ap_process *p = NULL;
        char *err = NULL;
        ASSERT_OK(ap_process_new(dup(*fd), getpid(), &hello, &p, &err));
        return p;
}

/* A block of size `before` at addr from thread 0 at stamp t; thread 1 gets addr back at
 * t + 1000 (size `after`) before the collector sees thread 0's free of it, which comes
 * late (stamped late_free, or never if 0); then thread 1 frees it at own_free. */
static void reuse(struct ap_process *p, struct ap_producer pr[2], uint64_t addr, uint64_t t,
                  uint64_t before, uint64_t after, uint64_t late_free, uint64_t own_free)
{
        put_alloc(&pr[0], t, addr, before, &one_ip, 1);
        ap_process_drain(p, false);
        put_alloc(&pr[1], t + 1000, addr, after, &one_ip, 1);
        ap_process_drain(p, false);
        if (late_free != 0) {
                put_free(&pr[0], late_free, addr);
                ap_process_drain(p, false);
        }
        put_free(&pr[1], own_free, addr);
        ap_process_drain(p, false);
}

/* A free must end its block however long the block lived (32 bits of a timestamp, as
 * the live table once kept, wrap every 2^34 ticks, 7 s at 2.5 GHz); only a free stamped
 * before the allocation that reused its address is stale. */
static void test_timestamps(void)
{
        int fd;
        uint64_t total;
        struct ap_process *p = new_area(&fd, &total, 2);
        struct ap_producer pr[2];
        for (uint32_t i = 0; i < 2; i++)
                claim_slot(i, &pr[i]);
        /* Every stamp lies in the past, so that non-final drains take each record. */
        const uint64_t wrap = 1ull << 34, base = g_h->start_ticks - 8 * wrap;
        ASSERT_TRUE(g_h->start_ticks > 8 * wrap);

        /* Blocks freed half a wrap, most of a wrap and several wraps after they were
         * allocated: each free ends its block. */
        const uint64_t lives[] = {wrap / 2 + 12345, wrap - 4096, 3 * wrap + wrap / 2 + 7};
        for (uint32_t i = 0; i < 3; i++) {
                put_alloc(&pr[0], base + i, 0x10000 + 16 * i, 100, &one_ip, 1);
                ap_process_drain(p, false);
                put_free(&pr[0], base + i + lives[i], 0x10000 + 16 * i);
                ap_process_drain(p, false);
        }

        /* Thread 0 frees X (stamp t + 500) and thread 1 gets X back from malloc (t + 1000),
         * but thread 0's record reaches the collector after thread 1's: that late free
         * is stale, and the new block lives on until its own free, five seconds later. */
        const uint64_t t = base + 4 * wrap;
        reuse(p, pr, 0x20000, t, 200, 300, t + 500, t + 1000 + wrap / 2 + wrap / 4);
        /* A reused address whose late free never comes (a free the agent did not see):
         * the new block's own free, more than half a wrap later, still ends it. */
        const uint64_t u = base + 6 * wrap;
        reuse(p, pr, 0x30000, u, 400, 500, 0, u + 1000 + wrap / 2 + wrap / 8);

        struct ap_profile *prof = finish_area(p, fd, total);
        ASSERT_EQ(prof->totals.allocations, 7);
        ASSERT_EQ(prof->totals.bytes, 3 * 100 + 200 + 300 + 400 + 500);
        ASSERT_EQ(prof->totals.frees, 7);
        ASSERT_EQ(prof->totals.freed_bytes, 3 * 100 + 200 + 300 + 400 + 500);
        ASSERT_EQ(prof->totals.leaked_blocks, 0);
        ASSERT_EQ(prof->totals.unmatched_frees, 0);
        ASSERT_EQ(prof->totals.invalid_records, 0);
        ap_profile_free(prof);
}

/* A free of address 0 (no agent sends one: a hostile process can) matches no block: it
 * once matched an empty cell of the live table and took one from the table's count of
 * members, which then let the table fill past its load until an insert probed forever. */
static void test_free_of_null(void)
{
        int fd;
        uint64_t total;
        struct ap_process *p = new_area(&fd, &total, 1);
        struct ap_producer pr;
        claim_slot(0, &pr);
        const uint64_t base = g_h->start_ticks - (1ull << 30);
        put_alloc(&pr, base, 0x10000, 100, &one_ip, 1);
        for (uint32_t i = 0; i < 3; i++)
                put_free(&pr, base + 1 + i, 0);
        ap_process_drain(p, false);
        for (uint32_t i = 0; i < 1000; i++)
                put_alloc(&pr, base + 10 + i, 0x20000 + 16 * i, 10, &one_ip, 1);
        ap_process_drain(p, false);
        for (uint32_t i = 0; i < 1000; i++)
                put_free(&pr, base + 2000 + i, 0x20000 + 16 * i);
        put_free(&pr, base + 3000, 0x10000);

        struct ap_profile *prof = finish_area(p, fd, total);
        ASSERT_EQ(prof->totals.allocations, 1001);
        ASSERT_EQ(prof->totals.bytes, 100 + 1000 * 10);
        ASSERT_EQ(prof->totals.frees, 1001);
        ASSERT_EQ(prof->totals.leaked_blocks, 0);
        ASSERT_EQ(prof->totals.unmatched_frees, 3);
        ap_profile_free(prof);
}

int main(void)
{
        int fd;
        uint64_t total;
        struct ap_process *p = new_area(&fd, &total, THREADS);

        pthread_t th[THREADS];
        for (uintptr_t i = 0; i < THREADS; i++)
                ASSERT_EQ(pthread_create(&th[i], NULL, producer, (void *)i), 0);
        long drained = 0;
        int joined = 0;
        for (uint32_t round = 0;; round++) {
                /* Every fourth round the consumer falls behind for a moment, so that the
                 * rings fill up and the next rounds give space back (every TAIL_STEP
                 * bytes) while writers wait to fill it again at once. */
                if (round % 4 == 3) {
                        struct timespec nap = {0, 2 * 1000 * 1000};
                        nanosleep(&nap, NULL);
                }
                long n = ap_process_drain(p, joined == THREADS);
                drained += n;
                if (joined == THREADS && n == 0)
                        break;
                if (joined < THREADS && n == 0) {
                        /* Join whatever has finished without blocking the drain. */
                        while (joined < THREADS && pthread_tryjoin_np(th[joined], NULL) == 0)
                                joined++;
                }
        }
        /* 1.5 records per allocation: one ALLOC and, for half, one FREE. */
        ASSERT_EQ(drained, (long)THREADS * PER_THREAD * 3 / 2);

        struct ap_symbolizer *sym = NULL;
        ASSERT_OK(ap_symbolizer_new(&sym));
        struct ap_profile *prof = NULL;
        ASSERT_OK(ap_process_finalize(p, sym, &prof));
        uint64_t bytes_per_thread = 0;
        for (uint64_t i = 0; i < PER_THREAD; i++)
                bytes_per_thread += 1 + (i % 100);
        ASSERT_EQ(prof->totals.allocations, (uint64_t)THREADS * PER_THREAD);
        ASSERT_EQ(prof->totals.bytes, (uint64_t)THREADS * bytes_per_thread);
        ASSERT_EQ(prof->totals.frees, (uint64_t)THREADS * PER_THREAD / 2);
        ASSERT_EQ(prof->totals.leaked_blocks, (uint64_t)THREADS * PER_THREAD / 2);
        ASSERT_EQ(prof->totals.unmatched_frees, 0);
        ASSERT_EQ(prof->totals.invalid_records, 0);
        ASSERT_EQ(prof->totals.threads, THREADS);
        /* three stack depths per thread, each its own site */
        ASSERT_EQ(prof->nsites, THREADS * 3);
        uint64_t sum = 0;
        for (uint32_t i = 0; i < prof->nsites; i++) {
                uint64_t a = prof->sites[i].allocations;
                ASSERT_TRUE(a == PER_THREAD / 3 || a == PER_THREAD / 3 + 1);
                sum += a;
        }
        ASSERT_EQ(sum, (uint64_t)THREADS * PER_THREAD);

        /* Retired, drained slots were handed back. */
        for (uint32_t i = 0; i < THREADS; i++) {
                struct ap_ring_ctl *ctl = slot_at(i);
                ASSERT_EQ(ap_load_acquire(&ctl->xstate), (uint32_t)AP_SLOT_FREE);
        }
        ap_profile_free(prof);
        ap_symbolizer_free(sym);
        ap_process_free(p);
        munmap(g_h, total);
        close(fd);
        printf("ok: %d threads x %d allocations, %ld records drained\n", THREADS, PER_THREAD,
               drained);
        test_timestamps();
        test_free_of_null();
        printf("ok: long-lived blocks and a late free\n");
        test_slot_reuse();
        printf("ok: %d threads taking turns on %d slots, %d times each\n", REUSE_THREADS,
               REUSE_SLOTS, REUSE_ROUNDS);
        return 0;
}
