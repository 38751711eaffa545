/* Tests for collector/live.c, the live-block table: every insert, find and removal checked
 * against a plain reference array over 300,000 addresses (clustered, as heap blocks are),
 * through growth past the size where the table moves to huge pages and back to empty,
 * with removals in random order exercising the backward shift; that a growing table
 * holds no more memory than its final size (it grows in place, not by copying); and a
 * big table three quarters full, with removals; members that do not fit a cell whole
 * (weights of sampled blocks, sizes of 2 GiB and more, flags) kept out of line, their
 * entries reused once freed.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "../helpers.h"
#include "allocprof/mix.h"
#include "live.h"

#define N 300000u

static uint64_t draws;

static uint64_t next_rand(void)
{
        return ap_mix64(++draws);
}

/* Address k: 16-byte aligned, most in a few dense runs, some far apart. */
static uint64_t addr_of(uint32_t k)
{
        if (k % 5 == 0)
                return 0x7f0000000000ull + (uint64_t)k * 4096;
        return 0x555500000000ull + (uint64_t)k * 48;
}

/* ap_live_insert of a member with these fields (no flags); *old as it fills it, if not
 * NULL. */
static int put(struct ap_live_table *t, uint64_t addr, uint64_t wbytes, uint64_t wcount,
               uint32_t stack, struct ap_live *old)
{
        struct ap_live ignored;
        return ap_live_insert(
                t,
                &(struct ap_live){.addr = addr, .wbytes = wbytes, .wcount = wcount, .stack = stack},
                old ? old : &ignored);
}

/* in[k]: whether addr_of(k) is in the table, with member_of(k) (our payload). */
static bool in[N];

/* Most members fit their cell; every 7th has a sampled block's weights, every 11th a
 * flag, every 13th a size of 2 GiB or more: those have an extra entry. */
static struct ap_live member_of(uint32_t k)
{
        struct ap_live e = {
                .addr = addr_of(k), .wbytes = (uint64_t)k * 3, .wcount = AP_LIVE_ONE, .stack = k};
        if (k % 7 == 0)
                e.wcount = AP_LIVE_ONE * 3 + k;
        if (k % 11 == 0)
                e.flags = AP_LIVE_REUSED;
        if (k % 13 == 0)
                e.wbytes = ((uint64_t)1 << 31) + k;
        return e;
}

static void check_all(struct ap_live_table *t, size_t expect_len)
{
        ASSERT_EQ(t->len, expect_len);
        for (uint32_t k = 0; k < N; k++) {
                struct ap_live_cell *c = ap_live_find(t, addr_of(k));
                if (!in[k]) {
                        ASSERT_NULL(c);
                        continue;
                }
                ASSERT_NOT_NULL(c);
                struct ap_live e, want = member_of(k);
                ap_live_get(t, c, &e);
                ASSERT_EQ(e.addr, want.addr);
                ASSERT_EQ(e.stack, want.stack);
                ASSERT_EQ(e.wbytes, want.wbytes);
                ASSERT_EQ(e.wcount, want.wcount);
                ASSERT_EQ(e.flags, want.flags);
        }
}

static void insert(struct ap_live_table *t, uint32_t k)
{
        struct ap_live old, e = member_of(k);
        int r = ap_live_insert(t, &e, &old);
        ASSERT_EQ(r, in[k] ? 1 : 0);
        if (r == 1) {
                ASSERT_EQ(old.stack, k);
                ASSERT_EQ(old.wbytes, e.wbytes);
                ASSERT_EQ(old.wcount, e.wcount);
                ASSERT_EQ(old.flags, e.flags);
        }
        in[k] = true;
}

static void remove_one(struct ap_live_table *t, uint32_t k)
{
        struct ap_live_cell *c = ap_live_find(t, addr_of(k));
        ASSERT_NOT_NULL(c);
        ap_live_remove(t, c);
        in[k] = false;
}

/* Extra entries: flags set and cleared on a member that fits its cell and on one that
 * does not; freed entries are taken again rather than new ones; a stack of 2^31 or more
 * is refused. */
static void extra_entries(void)
{
        struct ap_live_table t = {0};
        struct ap_live old, e;
        ASSERT_EQ(put(&t, 0x1000, 48, AP_LIVE_ONE, 5, NULL), 0);
        ASSERT_EQ(t.nextra, 0u); /* fits its cell */
        struct ap_live_cell *c = ap_live_find(&t, 0x1000);
        ASSERT_NOT_NULL(c);
        ASSERT_EQ(ap_live_set_flags(&t, c, AP_LIVE_REUSED), 0);
        ASSERT_EQ(t.nextra, 1u);
        ap_live_get(&t, ap_live_find(&t, 0x1000), &e);
        ASSERT_EQ(e.flags, AP_LIVE_REUSED);
        ASSERT_EQ(e.wbytes, 48u);
        ASSERT_EQ(e.wcount, AP_LIVE_ONE);
        ASSERT_EQ(e.stack, 5u);
        ASSERT_EQ(ap_live_set_flags(&t, ap_live_find(&t, 0x1000), 0), 0);
        ap_live_get(&t, ap_live_find(&t, 0x1000), &e);
        ASSERT_EQ(e.flags, 0u);
        ASSERT_EQ(e.wbytes, 48u);
        /* Replacing a member frees its entry (after taking the new one's, so that a
         * failure leaves the table as it was). */
        ASSERT_EQ(put(&t, 0x1000, 7, 2 * AP_LIVE_ONE, 6, &old), 1);
        ASSERT_EQ(old.stack, 5u);
        ASSERT_EQ(old.wbytes, 48u);
        ASSERT_EQ(t.nextra, 2u);
        /* A thousand out-of-line members in and out, a hundred at a time: the free
         * entry and 99 new ones, no more. */
        for (uint32_t round = 0; round < 10; round++) {
                for (uint32_t k = 0; k < 100; k++)
                        ASSERT_EQ(put(&t, 0x2000 + 16 * k, k, k + 1, k, NULL), 0);
                for (uint32_t k = 0; k < 100; k++) {
                        c = ap_live_find(&t, 0x2000 + 16 * k);
                        ASSERT_NOT_NULL(c);
                        ap_live_get(&t, c, &e);
                        ASSERT_EQ(e.wcount, (uint64_t)k + 1);
                        ap_live_remove(&t, c);
                }
        }
        ASSERT_EQ(t.nextra, 101u);
        ASSERT_EQ(t.len, 1u);
        ASSERT_EQ(put(&t, 0x3000, 0, AP_LIVE_ONE, 1u << 31, NULL), -EINVAL);
        ASSERT_EQ(t.len, 1u);
        ap_live_clear(&t);
        ASSERT_EQ(t.nextra, 0u);
}

/* Peak resident size of this process so far, in bytes (VmHWM); 0 if unknown. */
static uint64_t peak_rss(void)
{
        FILE *f = fopen("/proc/self/status", "r");
        if (f == NULL)
                return 0;
        char line[256];
        uint64_t kib = 0;
        while (fgets(line, sizeof(line), f) != NULL)
                if (sscanf(line, "VmHWM: %" SCNu64, &kib) == 1)
                        break;
        fclose(f);
        return kib << 10;
}

/* Growing to 2^21 cells (32 MiB) must not hold the old table beside the new one (48
 * MiB at the last doubling), nor clear memory beyond the final size: it is what the
 * collector pays for a program with a million live blocks. */
static void grows_in_place(void)
{
        const uint32_t n = 600000; /* > 2^19: the table ends at 2^21 cells */
        struct ap_live_table t = {0};
        uint64_t before = peak_rss();
        for (uint32_t k = 0; k < n; k++) {
                ASSERT_EQ(put(&t, 0x555500000000ull + (uint64_t)k * 32, k, AP_LIVE_ONE, k, NULL),
                          0);
        }
        uint64_t after = peak_rss();
        ASSERT_EQ(t.cap, (size_t)1 << 21);
        size_t bytes = t.cap * sizeof(struct ap_live_cell);
        if (before != 0 && after != 0) {
                printf("live: growing to %zu MiB raised the peak by %" PRIu64 " MiB\n", bytes >> 20,
                       (after - before) >> 20);
                ASSERT_TRUE(after - before <= bytes + bytes / 8);
        }
        for (uint32_t k = 0; k < n; k++) {
                struct ap_live_cell *c = ap_live_find(&t, 0x555500000000ull + (uint64_t)k * 32);
                ASSERT_NOT_NULL(c);
                struct ap_live e;
                ap_live_get(&t, c, &e);
                ASSERT_EQ(e.stack, k);
                ASSERT_EQ(e.wbytes, k);
                ASSERT_EQ(e.flags, 0u);
        }
        ap_live_clear(&t);
}

/* Small tables stay at most half full; from 2^21 cells (32 MiB) on, three quarters: 1.5 M
 * live blocks fit 2^21 cells rather than taking 64 MiB. */
static void dense_when_big(void)
{
        const uint32_t n = 1500000;
        struct ap_live_table t = {0};
        for (uint32_t k = 0; k < n; k++) {
                ASSERT_EQ(put(&t, 0x7f0000000000ull + (uint64_t)k * 48, 0, AP_LIVE_ONE, k, NULL),
                          0);
                if (k == 400000)
                        ASSERT_EQ(t.cap, (size_t)1 << 20); /* 400,001 members: half full */
        }
        ASSERT_EQ(t.cap, (size_t)1 << 21);
        /* Three quarters full, the probe runs are long: take every third member out (the
         * backward shift moves many) and find each of the rest where it should be. */
        for (uint32_t k = 0; k < n; k += 3) {
                struct ap_live_cell *c = ap_live_find(&t, 0x7f0000000000ull + (uint64_t)k * 48);
                ASSERT_NOT_NULL(c);
                ap_live_remove(&t, c);
        }
        ASSERT_EQ(t.len, (size_t)n - (n + 2) / 3);
        for (uint32_t k = 0; k < n; k++) {
                struct ap_live_cell *c = ap_live_find(&t, 0x7f0000000000ull + (uint64_t)k * 48);
                if (k % 3 == 0) {
                        ASSERT_NULL(c);
                        continue;
                }
                ASSERT_NOT_NULL(c);
                ASSERT_EQ(c->stack, k);
        }
        ap_live_clear(&t);
}

int main(void)
{
        extra_entries();
        grows_in_place();
        dense_when_big();

        struct ap_live_table t = {0};
        size_t len = 0;

        ASSERT_NULL(ap_live_find(&t, 0x1000));
        /* Grow from empty through 2^20 cells (32 MiB, huge-page sized). */
        for (uint32_t k = 0; k < N; k++) {
                insert(&t, k);
                len++;
        }
        ASSERT_TRUE(t.cap >= 2 * (size_t)N);
        check_all(&t, len);

        /* Inserting an address already there replaces it and says so. */
        for (uint32_t k = 0; k < N; k += 1000)
                insert(&t, k);
        check_all(&t, len);

        /* Remove two thirds in random order, then put a third back. */
        for (uint32_t round = 0; round < 2 * N / 3;) {
                uint32_t k = (uint32_t)(next_rand() % N);
                if (!in[k])
                        continue;
                remove_one(&t, k);
                len--;
                round++;
        }
        check_all(&t, len);
        for (uint32_t k = 0; k < N; k += 3)
                if (!in[k]) {
                        insert(&t, k);
                        len++;
                }
        check_all(&t, len);

        /* Everything out: the table is empty and finds nothing. */
        for (uint32_t k = 0; k < N; k++)
                if (in[k]) {
                        remove_one(&t, k);
                        len--;
                }
        check_all(&t, 0);
        /* Every entry back in the free list: a third of the members, in again, take
         * no new ones. */
        uint32_t nextra = t.nextra;
        for (uint32_t k = 0; k < N; k += 3)
                insert(&t, k);
        ASSERT_EQ(t.nextra, nextra);
        check_all(&t, (N + 2) / 3);
        ap_live_clear(&t);
        memset(in, 0, sizeof(in));
        ASSERT_EQ(t.cap, 0u);
        ASSERT_NULL(ap_live_find(&t, addr_of(7)));

        /* A small table (no huge pages) is used and cleared the same way. */
        for (uint32_t k = 0; k < 100; k++)
                insert(&t, k);
        ASSERT_EQ(t.len, 100u);
        ap_live_clear(&t);
        printf("live: all passed\n");
        return 0;
}
