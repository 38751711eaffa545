/* The live-block table (see live.h).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "live.h"

/* Tables from this size on are mapped in 2 MiB pages where the kernel lets us (THP in
 * "madvise" mode, Debian's default): every record's cell is a random one, and with 4 KiB
 * pages its prefetch also missed the TLB (a compiler's table is several MiB). */
#define HUGE_TABLE_BYTES (2u << 20)

/* Tables are at most half full, and from this many cells (32 MiB) on three quarters.  A
 * table that fits the caches pays for the longer probes of a fuller one (the churn's
 * 20,000 live blocks at three quarters: drain 70 -> 105 ms); a big one pays for its
 * memory: each cell is a cache miss anyway, and every page of a new table is one the
 * kernel must clear.  At half, jq with 2.2 M live blocks (in 32-byte cells then) doubled
 * to 256 MiB and its drain took 0.72 s against 0.38, the program waiting 0.4 s for ring
 * space against 80 ms. */
#define DENSE_CELLS ((size_t)1 << 21)

/* In a cell's stack, only while grow() runs: the member is still where the smaller table
 * put it (members' stacks are below 2^31). */
#define MOVING (1u << 31)

static inline size_t home(const struct ap_live_table *t, uint64_t addr)
{
        return ap_live_home(t, addr);
}

static struct ap_live_cell *cells_alloc(size_t cap)
{
        size_t bytes = cap * sizeof(struct ap_live_cell);
        if (bytes < HUGE_TABLE_BYTES)
                return calloc(cap, sizeof(struct ap_live_cell));
        void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
                return NULL;
        (void)madvise(m, bytes, MADV_HUGEPAGE); /* a hint: without it, 4 KiB pages */
        return m;
}

static void cells_free(struct ap_live_cell *cells, size_t cap)
{
        if (cells == NULL)
                return;
        if (cap * sizeof(struct ap_live_cell) < HUGE_TABLE_BYTES)
                free(cells);
        else
                munmap(cells, cap * sizeof(struct ap_live_cell));
}

/* Makes cells room for cap cells, keeping the first old_cap and zeroing the rest; NULL
 * (cells untouched) if it cannot.  A mapped table is extended with mremap, which moves
 * its pages without copying or clearing them: only the new half is memory the kernel
 * must hand out and clear.  Taking a fresh mapping at each doubling instead cleared
 * twice the final size in all (and held one and a half times it during the copy); on a
 * virtual machine whose host backs first-touched memory lazily, that clearing was most
 * of the collector's time on programs with a million live blocks (perl, jq), and the
 * program waited for it on a full ring. */
static struct ap_live_cell *cells_resize(struct ap_live_cell *cells, size_t old_cap, size_t cap)
{
        size_t old_bytes = old_cap * sizeof(struct ap_live_cell);
        size_t bytes = cap * sizeof(struct ap_live_cell);
        if (bytes < HUGE_TABLE_BYTES) {
                struct ap_live_cell *n = realloc(cells, bytes);
                if (n == NULL)
                        return NULL;
                memset(n + old_cap, 0, bytes - old_bytes);
                return n;
        }
        if (old_bytes < HUGE_TABLE_BYTES) {
                struct ap_live_cell *n = cells_alloc(cap);
                if (n == NULL)
                        return NULL;
                if (old_cap != 0)
                        memcpy(n, cells, old_bytes);
                cells_free(cells, old_cap);
                return n;
        }
        void *m = mremap(cells, old_bytes, bytes, MREMAP_MAYMOVE);
        if (m == MAP_FAILED)
                return NULL;
        (void)madvise(m, bytes, MADV_HUGEPAGE); /* a hint, as in cells_alloc */
        return m;
}

/* Doubles the table in place.  Members still at their old places are marked MOVING;
 * each is taken out and placed by probing from its new home, past placed members only:
 * a MOVING cell on the way is taken over and its member placed next.  A placed
 * member's probe sequence therefore crosses only placed members, which stay where they
 * are, so no later step opens a hole in it.
 *
 * That holds in any order; the old cells are taken from the last down.  A home is the top
 * bits of the address's hash, so a member at i, usually near its home, goes near 2i:
 * into cells already emptied or placed, and the taking and the placing are two
 * sequential sweeps.  Taken from the first up, a member's new place was usually held by
 * another still to move, whose own was another's, each a jump to a random cache line
 * (1.65 M members into 4 M cells: 47-66 ms of doublings against 14-19). */
static int grow(struct ap_live_table *t)
{
        size_t old_cap = t->cap;
        size_t cap = old_cap ? old_cap * 2 : 1024;
        struct ap_live_cell *cells = cells_resize(t->cells, old_cap, cap);
        if (cells == NULL)
                return -ENOMEM;
        t->cells = cells;
        t->cap = cap;
        t->shift = 64u - (unsigned)__builtin_ctzll(cap);
        size_t mask = cap - 1;
        for (size_t i = 0; i < old_cap; i++)
                if (cells[i].addr != 0)
                        cells[i].stack |= MOVING;
        for (size_t i = old_cap; i-- > 0;) {
                if (cells[i].addr == 0 || !(cells[i].stack & MOVING))
                        continue;
                struct ap_live_cell e = cells[i];
                cells[i] = (struct ap_live_cell){0};
                for (;;) {
                        e.stack &= ~MOVING;
                        size_t j = home(t, e.addr);
                        while (cells[j].addr != 0 && !(cells[j].stack & MOVING))
                                j = (j + 1) & mask;
                        struct ap_live_cell next = cells[j];
                        cells[j] = e;
                        if (next.addr == 0)
                                break;
                        e = next;
                }
        }
        return 0;
}

/* Whether one more member would take the table past its load limit (DENSE_CELLS). */
static bool is_full(const struct ap_live_table *t)
{
        size_t n = t->len + 1;
        return t->cap >= DENSE_CELLS ? n * 4 > t->cap * 3 : n * 2 > t->cap;
}

/* Takes an extra entry (its index, AP_LIVE_EXTRA set) holding e's weights and flags;
 * 0 if none could be had. */
static uint32_t extra_take(struct ap_live_table *t, const struct ap_live *e)
{
        uint32_t i;
        if (t->extra_free != 0) {
                i = t->extra_free - 1;
                t->extra_free = t->extra[i].next_free;
        } else {
                if (t->nextra == AP_LIVE_EXTRA)
                        return 0;
                if (t->nextra == t->extra_cap) {
                        uint32_t cap = t->extra_cap ? t->extra_cap * 2 : 64;
                        if (cap > AP_LIVE_EXTRA)
                                cap = AP_LIVE_EXTRA;
                        struct ap_live_extra *x = realloc(t->extra, (size_t)cap * sizeof(*x));
                        if (x == NULL)
                                return 0;
                        t->extra = x;
                        t->extra_cap = cap;
                }
                i = t->nextra++;
        }
        t->extra[i] =
                (struct ap_live_extra){.wbytes = e->wbytes, .wcount = e->wcount, .flags = e->flags};
        return i | AP_LIVE_EXTRA;
}

static void extra_release(struct ap_live_table *t, uint32_t val)
{
        if (!(val & AP_LIVE_EXTRA))
                return;
        uint32_t i = val & ~AP_LIVE_EXTRA;
        t->extra[i].next_free = t->extra_free;
        t->extra_free = i + 1;
}

/* Whether e fits its cell whole (see struct ap_live_cell). */
static bool packs(const struct ap_live *e)
{
        return e->wcount == AP_LIVE_ONE && e->flags == 0 && e->wbytes < AP_LIVE_EXTRA;
}

int ap_live_insert(struct ap_live_table *t, const struct ap_live *e, struct ap_live *old)
{
        if (e->stack & MOVING)
                return -EINVAL;
        uint32_t val = (uint32_t)e->wbytes;
        if (!packs(e) && (val = extra_take(t, e)) == 0)
                return -ENOMEM;
        if (is_full(t)) {
                int r = grow(t);
                if (r < 0) {
                        extra_release(t, val);
                        return r;
                }
        }
        size_t mask = t->cap - 1;
        size_t i = home(t, e->addr);
        while (t->cells[i].addr != 0 && t->cells[i].addr != e->addr)
                i = (i + 1) & mask;
        struct ap_live_cell *c = &t->cells[i];
        int existed = c->addr == e->addr;
        if (existed) {
                ap_live_get(t, c, old);
                extra_release(t, c->val);
        } else {
                t->len++;
        }
        *c = (struct ap_live_cell){.addr = e->addr, .stack = e->stack, .val = val};
        return existed;
}

struct ap_live_cell *ap_live_find(struct ap_live_table *t, uint64_t addr)
{
        if (t->cap == 0 || addr == 0)
                return NULL;
        size_t mask = t->cap - 1;
        for (size_t i = home(t, addr);; i = (i + 1) & mask) {
                if (t->cells[i].addr == addr)
                        return &t->cells[i];
                if (t->cells[i].addr == 0)
                        return NULL;
        }
}

int ap_live_set_flags(struct ap_live_table *t, struct ap_live_cell *c, uint32_t flags)
{
        if (c->val & AP_LIVE_EXTRA) {
                t->extra[c->val & ~AP_LIVE_EXTRA].flags = flags;
                return 0;
        }
        if (flags == 0)
                return 0;
        struct ap_live e;
        ap_live_get(t, c, &e);
        e.flags = flags;
        uint32_t val = extra_take(t, &e);
        if (val == 0)
                return -ENOMEM;
        c->val = val;
        return 0;
}

void ap_live_remove(struct ap_live_table *t, struct ap_live_cell *c)
{
        size_t mask = t->cap - 1;
        size_t i = (size_t)(c - t->cells);
        extra_release(t, c->val);
        /* Backward shift: pull later members of the probe run into the hole unless their
         * home lies cyclically in (hole, j]. */
        for (size_t j = (i + 1) & mask; t->cells[j].addr != 0; j = (j + 1) & mask) {
                size_t h = home(t, t->cells[j].addr);
                bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
                if (stays)
                        continue;
                t->cells[i] = t->cells[j];
                i = j;
        }
        t->cells[i] = (struct ap_live_cell){0};
        t->len--;
}

void ap_live_clear(struct ap_live_table *t)
{
        cells_free(t->cells, t->cap);
        free(t->extra);
        *t = (struct ap_live_table){0};
}
