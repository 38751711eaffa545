/* Private state of struct ap_process, shared by process.c (drain + aggregate) and
 * finalize.c (symbolize + fold).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include "live.h"
#include "process.h"
#include "util.h"

/* Counts of allocations, frees, blocks and temporaries are kept in units of 1/AP_CW so
 * that sampled mode can add fractional estimates; full mode adds exactly AP_CW per
 * block.  Byte counters are plain bytes (estimated in sampled mode). */
#define AP_CW 65536ull

/* A distinct raw stack (return addresses), and what was allocated from it. */
struct ap_cstack {
        size_t ips_at; /* its return addresses, innermost first: ips[ips_at, + depth) of the
                        * process */
        uint32_t depth;
        uint64_t hash;
        uint64_t allocations, bytes, frees, freed_bytes;
        uint64_t live_blocks, live_bytes, max_live_bytes;
        uint64_t temporary, reallocs;
        uint64_t
                peak_bytes; /* live bytes at the last global peak, valid if peak_epoch == current */
        uint64_t peak_epoch;
};

struct ap_cmodule {
        char *path;
        uint8_t build_id[AP_MAX_BUILD_ID];
        uint32_t build_id_len;
        uint64_t bias, lo, hi;
        uint64_t load_ts, unload_ts; /* unload_ts 0 = still loaded */
        bool used; /* some stack has an address in it: worth opening its debug info early */
};



struct ap_slot {
        uint64_t tail;       /* our read position (never trusted from shared memory) */
        uint64_t snap_head;  /* head snapshot of the current drain round */
        uint64_t pf;         /* records before this position had their live cell prefetched */
        uint64_t last_alloc; /* address of the slot's latest allocation (temporaries) */
        uint32_t tid; /* owner last seen (untrusted, only counted) */
        struct ap_ring_ctl *ctl; /* where the slot is mapped, NULL until it is (map_slots) */
        uint8_t *page;           /* start of that mapping (its first page) */
        bool bad;            /* failed validation: ignored from then on */
        bool seen;
};

/* Agent stack ids are offsets / 8 into the stack heap, so below this. */
#define ID_LIMIT (AP_STACK_HEAP_BYTES / 8)

struct ap_process {
        pid_t pid;
        uint32_t ppid;
        uint64_t exec_id;
        uint8_t *map; /* the head: header and slot 0 (ring.h) */
        uint64_t map_bytes;
        uint8_t *tail; /* stack heap and module log, from file offset tail_off */
        uint64_t tail_bytes, tail_off;
        struct ap_shm_header *hdr; /* == map, or a private copy in a snapshot (map NULL) */
        uint64_t start_ns;         /* agent's CLOCK_MONOTONIC at init */
        uint64_t start_ticks;      /* agent's ap_clock_ticks() at init: records count from it */
        bool same_clock;           /* records are stamped with our ap_clock_ticks(), else in ns */
        double ns_per_tick;        /* 0 until ap_process_calibrate */
        uint64_t start_unix_ns;
        uint64_t end_mono_ns; /* when we saw it end (exit or exec), 0 while it runs */
        uint64_t last_ts;

        char **argv;
        int argc;
        char *exe;
        int exit_code, term_signal;
        /* The image ended by an exec (ap_process_set_exec): of exec_path (NULL: unknown),
         * which registered as a profiled image of its own or not. */
        bool by_exec, exec_profiled;
        char *exec_path;

        struct ap_slot slots[AP_NSLOTS];
        uint32_t threads;

        struct ap_cstack *stacks;
        size_t nstacks, stacks_cap;
        /* Every stack's return addresses, one after the other: one block to grow and to
         * free, where a block per stack cost a malloc and its overhead each (a program
         * with a million stacks) and a free each when the process went. */
        uint64_t *ips;
        size_t nips, ips_cap;
        struct ap_map stack_by_hash; /* ips hash -> stack index + 1 (chained by probing) */
        uint64_t drain_cpu_ns;       /* thread CPU time of the drains that found records */
        uint64_t backlog;            /* ap_process_backlog() */
        uint32_t libc_module;        /* the C library's index in modules + 1 (0: none yet) */
        uint64_t libc_due_ns;        /* when to warm it (CLOCK_MONOTONIC) */
        /* Agent stack id -> stack index + 1 (0: not seen yet), stack_of_id_cells cells
         * (a power of two, at most ID_LIMIT), grown as ids come.  One 4-byte cell per 8
         * bytes of the agent's stack heap, of which a program uses little: all ID_LIMIT
         * (32 MiB) at once took that much of our address space per process, which an
         * address-space limit on run counts. */
        uint32_t *stack_of_id;
        size_t stack_of_id_cells;

        struct ap_cmodule *modules;
        size_t nmodules, modules_cap;
        uint64_t modules_read; /* bytes of the module log consumed */
        size_t last_module;    /* where stack_intern_ips() placed a frame last (a hint) */
        uint32_t *new_used;    /* modules that became `used`, not yet taken (see process.h) */
        size_t nnew_used, new_used_cap;
        /* Return addresses of new stacks not yet taken (ap_process_take_new_addrs):
         * module index << 48 | offset in the module, each once (addrs_seen, by hash). */
        uint64_t *new_addrs;
        size_t nnew_addrs, new_addrs_cap;
        struct ap_map addrs_seen;

        /* live blocks: addr -> index into live[] (+1); freed entries recycled */
        struct ap_live_table live;
        /* Address -> timestamp of the allocation, for the live blocks marked
         * AP_LIVE_REUSED: the late free of the block before them is told from their own
         * by comparing full timestamps. */
        struct ap_map reused;
        /* Thread ids seen (tid + 1 -> 1): a thread that takes a second slot (it freed
         * something after its exit destructor gave its first back) counts once. */
        struct ap_map tids;

        struct {
                uint64_t allocations, bytes, frees, freed_bytes;
                uint64_t live_blocks, live_bytes;
                uint64_t peak_bytes, peak_blocks, peak_ts;
                uint64_t peak_allocations; /* allocations made by the peak (AP_CW units) */
                uint64_t temporary, reallocs;
                uint64_t unmatched_frees, stale_frees, conflicts;
                uint64_t invalid_records;
        } t;
        uint64_t peak_epoch;
        bool sampled; /* sampled records were seen, or sampled mode: figures are estimates */
        /* The smallest and largest sample intervals the header held in sampled mode (both
         * 0 until then): a program attached again with another --sample mixes them. */
        uint64_t interval_min, interval_max;

        uint64_t hist_count[AP_HIST_BUCKETS];
        uint64_t hist_bytes[AP_HIST_BUCKETS];

        struct ap_ptimepoint *timeline;
        size_t ntimeline, timeline_cap;
        uint64_t timeline_step_ns, timeline_next_ns;
        uint64_t timeline_next_ticks; /* a record stamped before it is before the next point */

        uint8_t *scratch; /* a record's fixed part, copied out of the ring before validation */
};

/* Stack s's return addresses (valid until the next stack is interned). */
static inline const uint64_t *ap_cstack_ips(const struct ap_process *p, const struct ap_cstack *s)
{
        return p->ips + s->ips_at;
}

/* The module mapped at ip: the newest load covering it, preferring one that is still
 * loaded.  Returns its index in modules, or UINT32_MAX. */
uint32_t ap_process_module_at(const struct ap_process *p, uint64_t ip);

/* Sets ns_per_tick on first use.  Not done at registration: the first calibration of a
 * collector may sleep, and the agent is waiting for our reply then. */
void ap_process_calibrate(struct ap_process *p);

/* Record timestamp -> nanoseconds since the image's agent started (after
 * ap_process_calibrate). */
static inline uint64_t ap_process_ticks_to_ns(const struct ap_process *p, uint64_t ts)
{
        return ts > p->start_ticks ? (uint64_t)((double)(ts - p->start_ticks) * p->ns_per_tick) : 0;
}
