/* Producer side of the per-thread ring (protocol and barrier pairs in wire.h).  Header
 * only so the agent inlines it and the stress test drives the very same code.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef ALLOCPROF_RING_H
#define ALLOCPROF_RING_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>

#include "allocprof/atomics.h"
#include "allocprof/wire.h"

/* How far ahead of its head a producer prefetches ring lines for writing. */
#ifndef AP_RING_PREFETCH
#define AP_RING_PREFETCH 512
#endif

struct ap_producer {
        struct ap_ring_ctl *ctl; /* in the shared mapping */
        uint8_t *data;           /* ring_bytes of record space after ctl */
        uint64_t head;           /* our position; the shared xhead trails it until commit */
        uint64_t tail_cache;     /* consumer position as last read */
};

/* Attaches to a slot we own: continues from the slot's current head. */
static inline void ap_producer_attach(struct ap_producer *pr, struct ap_ring_ctl *ctl)
{
        pr->ctl = ctl;
        pr->data = (uint8_t *)(ctl + 1);
        /* Relaxed: only the owner writes xhead, and ownership came with an acquire. */
        pr->head = ap_load_relaxed(&ctl->xhead);
        /* Acquire pairs with the consumer's store_release of xtail (D->A). */
        pr->tail_cache = ap_load_acquire(&ctl->xtail);
}

/* Reserves nbytes (a multiple of 8) contiguous bytes, inserting a PAD record when the
 * record would cross the end of the data area.  `reserve` bytes of free space are left
 * untouched (AP_RING_FREE_RESERVE for allocation records, 0 for frees).  Returns where
 * to write, or NULL if the ring is full even after re-reading the consumer's tail. */
static inline uint8_t *ap_ring_try_reserve(struct ap_producer *pr, uint32_t nbytes,
                                           uint32_t reserve)
{
        const uint64_t size = AP_RING_BYTES;
        const uint64_t usable = size - reserve;
        uint64_t off = pr->head & (size - 1);
        uint64_t pad = off + nbytes > size ? size - off : 0;
        uint64_t need = pad + nbytes;

        if (pr->head + need - pr->tail_cache > usable) {
                /* Acquire pairs with the consumer's store_release of xtail (D->A): the
                 * space it returned is no longer being read. */
                pr->tail_cache = ap_load_acquire(&pr->ctl->xtail);
                if (pr->head + need - pr->tail_cache > usable)
                        return NULL;
        }
        if (pad != 0) {
                struct ap_rec_hdr *ph = (struct ap_rec_hdr *)(pr->data + off);
                ph->type = AP_REC_PAD;
                ph->flags = 0;
                ph->nwords = (uint16_t)(pad / 8);
                ph->aux = 0;
                pr->head += pad; /* published together with the record by commit */
        }
        return pr->data + (pr->head & (size - 1));
}

/* Publishes the record written at the reserved place. */
static inline void ap_ring_commit(struct ap_producer *pr, uint32_t nbytes)
{
        pr->head += nbytes;
        /* Release pairs with the consumer's load_acquire of xhead (B->C): the record
         * bytes are visible before the new head is. */
        ap_store_release(&pr->ctl->xhead, pr->head);
        /* Ask for the line a few records ahead with intent to write: the consumer's
         * core read it last, and taking it back costs a cross-core round trip that
         * this overlaps with the work before the next record. */
        __builtin_prefetch(pr->data + ((pr->head + AP_RING_PREFETCH) & (AP_RING_BYTES - 1)), 1);
}

/* ---- mapping the shared memory piecemeal ----------------------------------------------
 * Neither side maps the whole ap_shm_total_bytes() (2.1 GiB, which RLIMIT_AS would count)
 * at once: the head (header and slot 0) and the tail (stack heap and module log) at
 * registration, every other slot when it is first used.  Once the memfd is closed, a
 * slot is mapped from one already mapped with ap_shm_map_more. */

/* File offset of slot i's ring_ctl (ap_shm_init_layout's slots_offset, stride). */
static inline uint64_t ap_shm_slot_off(uint32_t i)
{
        return 4096 + (uint64_t)i * AP_SLOT_STRIDE;
}

/* Where the stack heap and the module log start (past the last slot). */
static inline uint64_t ap_shm_stacks_off(void)
{
        return ap_shm_slot_off(AP_NSLOTS);
}

static inline uint64_t ap_shm_modules_off(void)
{
        return ap_shm_stacks_off() + AP_STACK_HEAP_BYTES;
}

/* Where slot i's mapping starts (the page holding its ring_ctl) and how long it is, for
 * pages of `page` bytes; slot 0's lies within the head, [0, ap_shm_head_bytes). */
static inline uint64_t ap_shm_slot_page(uint32_t i, uint64_t page)
{
        return ap_shm_slot_off(i) & ~(page - 1);
}

static inline uint64_t ap_shm_slot_map_bytes(uint32_t i, uint64_t page)
{
        return ((ap_shm_slot_off(i) + AP_SLOT_STRIDE + page - 1) & ~(page - 1)) -
               ap_shm_slot_page(i, page);
}

/* The head: the header and slot 0, from offset 0. */
static inline uint64_t ap_shm_head_bytes(uint64_t page)
{
        return ap_shm_slot_page(0, page) + ap_shm_slot_map_bytes(0, page);
}

/* The tail: the stack heap and the module log (stacks_offset on), from this page. */
static inline uint64_t ap_shm_tail_off(uint64_t page)
{
        return ap_shm_stacks_off() & ~(page - 1);
}

/* What registration maps, the head and the tail: the address space a process needs to
 * be profiled at all (about 70 MiB; ulimit -v is weighed against it). */
static inline uint64_t ap_shm_registration_bytes(uint64_t page)
{
        return ap_shm_head_bytes(page) + ap_shm_total_bytes() - ap_shm_tail_off(page);
}

/* Maps the page-aligned file range [off, off + len) given `from`, the address at which
 * the page-aligned offset from_off <= off is mapped (MAP_SHARED): mremap(2) with an old
 * size of 0 makes a second mapping of the same pages, from from_off on and as long as
 * asked, and what lies before `off` is unmapped again.  Returns the address of `off`,
 * or NULL (an address-space limit, a seccomp filter without mremap). */
static inline uint8_t *ap_shm_map_more(void *from, uint64_t from_off, uint64_t off, uint64_t len)
{
        void *m = mremap(from, 0, off - from_off + len, MREMAP_MAYMOVE);
        if (m == MAP_FAILED)
                return NULL;
        if (off > from_off)
                munmap(m, off - from_off);
        return (uint8_t *)m + (off - from_off);
}

/* Fills in a fresh header for the fixed layout of AP_LAYOUT_VERSION.  The mapping must be
 * ap_shm_total_bytes() long and zeroed. */
static inline void ap_shm_init_layout(struct ap_shm_header *h)
{
        h->magic = AP_SHM_MAGIC;
        h->layout_version = AP_LAYOUT_VERSION;
        h->header_bytes = sizeof(*h);
        h->total_bytes = ap_shm_total_bytes();
        h->nslots = AP_NSLOTS;
        h->ring_bytes = AP_RING_BYTES;
        h->slots_offset = ap_shm_slot_off(0);
        h->slot_stride = AP_SLOT_STRIDE;
        h->stacks_offset = ap_shm_stacks_off();
        h->stacks_bytes = AP_STACK_HEAP_BYTES;
        h->modules_offset = ap_shm_modules_off();
        h->modules_bytes = AP_MODULE_LOG_BYTES;
        /* Stack ids are offsets/8 and 0 means "none": skip the first word. */
        ap_store_relaxed(&h->xstacks_used, 8);
}

#endif
