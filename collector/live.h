/* The live-block table: address -> what the block stands for, for every block allocated
 * and not yet freed.  Open addressing with the entry stored in the table itself, so an
 * allocation or a free costs one probe sequence and usually one cache miss; deletion by
 * backward shift (no tombstones).  Grows with live blocks, never with calls.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 32 bytes: two cells per cache line, none straddles two. */
struct ap_live {
        uint64_t addr;   /* 0 = empty cell */
        uint64_t wbytes; /* bytes it stands for (its size in full mode) */
        uint64_t wcount; /* allocations it stands for, in AP_CW units */
        uint32_t flags;  /* AP_LIVE_REUSED */
        uint32_t stack;
};
_Static_assert(sizeof(struct ap_live) == 32, "live cells are half a cache line");

/* In flags: the block took the address of one whose free had not reached the collector
 * yet (that free is in another thread's ring, and stale when it comes); the process keeps
 * the block's full allocation timestamp aside (process-internal.h, reused) to tell that
 * late free from the block's own.  (The cell once kept 32 bits of every block's stamp,
 * which wrap every 7 s of a 2.5 GHz counter, and compared every free with them: the free
 * of a block that had lived 3.5 to 7 s, modulo 7 s, was taken for a stale one, and the
 * block for a leak.) */
#define AP_LIVE_REUSED 1u
/* Bit 31 of flags is live.c's own, while the table grows. */

struct ap_live_table {
        struct ap_live *cells;
        size_t cap; /* power of two, or 0 */
        size_t len;
        unsigned shift; /* 64 - log2(cap) */
};

static inline size_t ap_live_home(const struct ap_live_table *t, uint64_t addr)
{
        /* Blocks are 16-byte aligned and clustered: multiply-shift spreads them, and the
         * product's top bits are the well-mixed ones. */
        return (size_t)((addr * 0x9e3779b97f4a7c15ull) >> t->shift);
}

/* Starts loading the cell where addr's probe sequence begins: the drain calls it for
 * records a few ahead of the one it processes, so that the cache miss overlaps work. */
static inline void ap_live_prefetch(const struct ap_live_table *t, uint64_t addr)
{
        if (t->cap != 0)
                __builtin_prefetch(&t->cells[ap_live_home(t, addr)], 1);
}

/* Inserts addr.  If it was already there, copies the old entry to *old and returns 1
 * (the caller accounts for it), else 0; -ENOMEM if the table could not grow.  On success
 * *ret points at the entry to fill in (valid until the next insert). */
int ap_live_insert(struct ap_live_table *t, uint64_t addr, struct ap_live **ret,
                   struct ap_live *old);

/* Finds addr; NULL if absent.  The pointer is valid until the next insert or take. */
struct ap_live *ap_live_find(struct ap_live_table *t, uint64_t addr);

/* Removes the entry e (from ap_live_find). */
void ap_live_remove(struct ap_live_table *t, struct ap_live *e);

void ap_live_clear(struct ap_live_table *t);
