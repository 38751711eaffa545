/* The live-block table: address -> what the block stands for, for every block allocated
 * and not yet freed.  Open addressing with the member packed into its cell (a few have
 * part of it out of line), so an allocation or a free costs one probe sequence and
 * usually one cache miss; deletion by backward shift (no tombstones).  Grows with live
 * blocks, never with calls.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A member of the table, unpacked: what a live block stands for. */
struct ap_live {
        uint64_t addr;   /* never 0 */
        uint64_t wbytes; /* bytes it stands for (its size in full mode) */
        uint64_t wcount; /* allocations it stands for, in AP_LIVE_ONE units */
        uint32_t flags;  /* AP_LIVE_REUSED */
        uint32_t stack;  /* below 2^31 */
};

/* One allocation in wcount's units (the collector's AP_CW). */
#define AP_LIVE_ONE 65536ull

/* A cell of the table: 16 bytes, four to a cache line.  Nearly every block stands for
 * one allocation of its own size and has no flags (every block in full mode): its cell
 * holds the size itself.  Any other (sampled weights, a size of 2 GiB or more, flags)
 * has its weights and flags in an entry of the table's `extra` array, which the cell
 * names.  With whole members in 32-byte cells a program holding two million blocks had
 * a 128 MiB table, most of whose cost is memory the kernel must hand out and clear. */
struct ap_live_cell {
        uint64_t addr;  /* 0 = empty cell */
        uint32_t stack; /* bit 31 is live.c's own, while the table grows */
        uint32_t val;   /* AP_LIVE_EXTRA clear: wbytes (wcount AP_LIVE_ONE, no flags);
                         * set: the index of its entry in `extra` */
};
_Static_assert(sizeof(struct ap_live_cell) == 16, "live cells are a quarter of a cache line");
#define AP_LIVE_EXTRA (1u << 31)

struct ap_live_extra {
        uint64_t wbytes;
        uint64_t wcount;
        uint32_t flags;
        uint32_t next_free; /* in the free list: the next free index + 1, or 0 */
};

/* In flags: the block took the address of one whose free had not reached the collector
 * yet (that free is in another thread's ring, and stale when it comes); the process keeps
 * the block's full allocation timestamp aside (process-internal.h, reused) to tell that
 * late free from the block's own.  (The cell once kept 32 bits of every block's stamp,
 * which wrap every 7 s of a 2.5 GHz counter, and compared every free with them: the free
 * of a block that had lived 3.5 to 7 s, modulo 7 s, was taken for a stale one, and the
 * block for a leak.) */
#define AP_LIVE_REUSED 1u

struct ap_live_table {
        struct ap_live_cell *cells;
        size_t cap; /* power of two, or 0 */
        size_t len;
        unsigned shift; /* 64 - log2(cap) */
        struct ap_live_extra *extra;
        uint32_t nextra, extra_cap; /* entries used or in the free list; allocated */
        uint32_t extra_free;        /* first free entry + 1, or 0 */
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

/* Inserts e (e->addr not 0, e->stack below 2^31).  If its address was already there,
 * replaces that member, copies it to *old and returns 1 (the caller accounts for it),
 * else returns 0; -ENOMEM if the table or its extra entries could not grow (the table is
 * then as it was), -EINVAL for a stack of 2^31 or more. */
int ap_live_insert(struct ap_live_table *t, const struct ap_live *e, struct ap_live *old);

/* The cell holding addr; NULL if absent.  Valid until the next insert or removal. */
struct ap_live_cell *ap_live_find(struct ap_live_table *t, uint64_t addr);

/* The member in cell c, unpacked. */
static inline void ap_live_get(const struct ap_live_table *t, const struct ap_live_cell *c,
                               struct ap_live *out)
{
        out->addr = c->addr;
        out->stack = c->stack;
        if (!(c->val & AP_LIVE_EXTRA)) {
                out->wbytes = c->val;
                out->wcount = AP_LIVE_ONE;
                out->flags = 0;
                return;
        }
        const struct ap_live_extra *x = &t->extra[c->val & ~AP_LIVE_EXTRA];
        out->wbytes = x->wbytes;
        out->wcount = x->wcount;
        out->flags = x->flags;
}

/* Sets the flags of the member in cell c; -ENOMEM (flags unchanged) if it needed an
 * extra entry that could not be had.  The cell stays where it is. */
int ap_live_set_flags(struct ap_live_table *t, struct ap_live_cell *c, uint32_t flags);

/* Removes the member in cell c (from ap_live_find). */
void ap_live_remove(struct ap_live_table *t, struct ap_live_cell *c);

void ap_live_clear(struct ap_live_table *t);
