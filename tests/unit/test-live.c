/* Tests for collector/live.c, the live-block table: every insert, find and removal checked
 * against a plain reference array over 300,000 addresses (clustered, as heap blocks are),
 * through growth past the size where the table moves to huge pages and back to empty,
 * with removals in random order exercising the backward shift; that a growing table
 * holds no more memory than its final size (it grows in place, not by copying); and a
 * big table three quarters full, with removals.
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

/* in[k]: whether addr_of(k) is in the table, with stack k (our payload). */
static bool in[N];

static void check_all(struct ap_live_table *t, size_t expect_len)
{
        ASSERT_EQ(t->len, expect_len);
        for (uint32_t k = 0; k < N; k++) {
                struct ap_live *e = ap_live_find(t, addr_of(k));
                if (!in[k]) {
                        ASSERT_NULL(e);
                        continue;
                }
                ASSERT_NOT_NULL(e);
                ASSERT_EQ(e->addr, addr_of(k));
                ASSERT_EQ(e->stack, k);
                ASSERT_EQ(e->wbytes, (uint64_t)k * 3);
        }
}

static void insert(struct ap_live_table *t, uint32_t k)
{
        struct ap_live *e, old;
        int r = ap_live_insert(t, addr_of(k), &e, &old);
        ASSERT_EQ(r, in[k] ? 1 : 0);
        if (r == 1)
                ASSERT_EQ(old.stack, k);
        e->stack = k;
        e->wbytes = (uint64_t)k * 3;
        in[k] = true;
}

static void remove_one(struct ap_live_table *t, uint32_t k)
{
        struct ap_live *e = ap_live_find(t, addr_of(k));
        ASSERT_NOT_NULL(e);
        ap_live_remove(t, e);
        in[k] = false;
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

/* Growing to 2^21 cells (64 MiB) must not hold the old table beside the new one (96
 * MiB at the last doubling), nor clear memory beyond the final size: it is what the
 * collector pays for a program with a million live blocks. */
static void grows_in_place(void)
{
        const uint32_t n = 600000; /* > 2^19: the table ends at 2^21 cells */
        struct ap_live_table t = {0};
        uint64_t before = peak_rss();
        for (uint32_t k = 0; k < n; k++) {
                struct ap_live *e, old;
                ASSERT_EQ(ap_live_insert(&t, 0x555500000000ull + (uint64_t)k * 32, &e, &old), 0);
                e->stack = k;
        }
        uint64_t after = peak_rss();
        ASSERT_EQ(t.cap, (size_t)1 << 21);
        size_t bytes = t.cap * sizeof(struct ap_live);
        if (before != 0 && after != 0) {
                printf("live: growing to %zu MiB raised the peak by %" PRIu64 " MiB\n", bytes >> 20,
                       (after - before) >> 20);
                ASSERT_TRUE(after - before <= bytes + bytes / 8);
        }
        for (uint32_t k = 0; k < n; k++) {
                struct ap_live *e = ap_live_find(&t, 0x555500000000ull + (uint64_t)k * 32);
                ASSERT_NOT_NULL(e);
                ASSERT_EQ(e->stack, k);
                ASSERT_EQ(e->flags, 0u);
        }
        ap_live_clear(&t);
}

/* Small tables stay at most half full; from 2^21 cells (64 MiB) on, three quarters: 1.5 M
 * live blocks fit 2^21 cells rather than taking 128 MiB. */
static void dense_when_big(void)
{
        const uint32_t n = 1500000;
        struct ap_live_table t = {0};
        for (uint32_t k = 0; k < n; k++) {
                struct ap_live *e, old;
                ASSERT_EQ(ap_live_insert(&t, 0x7f0000000000ull + (uint64_t)k * 48, &e, &old), 0);
                e->stack = k;
                if (k == 400000)
                        ASSERT_EQ(t.cap, (size_t)1 << 20); /* 400,001 members: half full */
        }
        ASSERT_EQ(t.cap, (size_t)1 << 21);
        /* Three quarters full, the probe runs are long: take every third member out (the
         * backward shift moves many) and find each of the rest where it should be. */
        for (uint32_t k = 0; k < n; k += 3) {
                struct ap_live *e = ap_live_find(&t, 0x7f0000000000ull + (uint64_t)k * 48);
                ASSERT_NOT_NULL(e);
                ap_live_remove(&t, e);
        }
        ASSERT_EQ(t.len, (size_t)n - (n + 2) / 3);
        for (uint32_t k = 0; k < n; k++) {
                struct ap_live *e = ap_live_find(&t, 0x7f0000000000ull + (uint64_t)k * 48);
                if (k % 3 == 0) {
                        ASSERT_NULL(e);
                        continue;
                }
                ASSERT_NOT_NULL(e);
                ASSERT_EQ(e->stack, k);
        }
        ap_live_clear(&t);
}

int main(void)
{
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
        ap_live_clear(&t);
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
