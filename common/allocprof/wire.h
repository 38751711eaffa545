/* allocprof wire format: the shared-memory layout between the agent and the collector,
 * the record types that cross the per-thread rings, and the registration message.
 * This is the only definition of the format; agent and collector both include it.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef ALLOCPROF_WIRE_H
#define ALLOCPROF_WIRE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Shared memory, one memfd per process image (created by the agent, passed to the
 * collector with SCM_RIGHTS when the image registers):
 *
 *   offset 0                 struct ap_shm_header (one page; control + status)
 *   slots_offset             nslots x (struct ap_ring_ctl + ring_bytes of data)
 *   stacks_offset            stack heap: append-only struct ap_stack_entry
 *   modules_offset           module log: append-only struct ap_module_rec
 *
 * Every offset and size in the header is written once by the agent before registration;
 * the collector re-validates all of them against the memfd size it measured itself.
 * Neither side maps it whole: the header with slot 0 and the stack heap with the module
 * log at registration, every other slot once it is used (ring.h: ap_shm_map_more).
 *
 * Per-thread ring protocol (single producer = the owning thread, single consumer = the
 * collector).  Positions are free-running 64-bit byte counts; data index = pos & (size-1).
 *
 *   producer (agent)                              consumer (collector)
 *   ----------------                              --------------------
 *   t = load_acquire(ctl->xtail)      (A) <-pairs-  store_release(ctl->xtail, t') (D)
 *   ... checks space, writes record bytes ...
 *   store_release(ctl->xhead, h')     (B) -pairs->  h = load_acquire(ctl->xhead)   (C)
 *                                                   ... copies records, validates ...
 *
 *   (B)->(C): the consumer sees the record bytes written before the head moved.
 *   (D)->(A): the producer overwrites space only after the consumer copied it out.
 * Records never wrap: a record that does not fit before the end of the data area is
 * preceded by an AP_REC_PAD record that fills the rest.
 *
 * Slot ownership (ap_ring_ctl.xstate): a thread claims a FREE slot by CAS (acq_rel) to
 * OWNED and retires it at exit with a release store of RETIRED, after its last (B).  The
 * collector, once it has read a RETIRED slot up to its head, stores 0 into xhead and
 * xtail (relaxed; it is the slot's only user then) and publishes FREE with a release
 * store that the next claimer's CAS acquires: every owner starts at position 0.
 *
 * Stack heap: an agent thread that inserts a new stack writes its entry, then publishes
 * the entry's id with a release store into its private index; a thread that finds the
 * id with an acquire load and then publishes a record naming it (B) makes the entry
 * visible to the collector by transitivity.  The collector bounds-checks every id.
 */

#define AP_SHM_MAGIC 0x31464f52504c4c41ull /* "ALLPROF1" little endian */
#define AP_LAYOUT_VERSION 3u

#define AP_MAX_FRAMES 64           /* frames kept per stack (innermost first) */
#define AP_NSLOTS 1024             /* per-thread rings per process */
#define AP_RING_BYTES (2048u << 10) /* data bytes per ring, power of two */
#define AP_STACK_HEAP_BYTES (64ull << 20)
#define AP_MODULE_LOG_BYTES (4ull << 20)
#define AP_MAX_PATH 4096
#define AP_MAX_BUILD_ID 64
#define AP_EXEC_PATH_BYTES 1024 /* ap_shm_header.exec_path */

/* Agent modes, in ap_shm_header.xmode (written by the collector or agent). */
enum ap_mode {
        AP_MODE_FULL = 0,    /* every call recorded */
        AP_MODE_SAMPLED = 1, /* Poisson sampling by bytes, mean xsample_interval */
        AP_MODE_DORMANT = 2, /* registered, records nothing */
        AP_MODE_OFF = 3,     /* collector gone or told us to stop: record nothing */
        AP_MODE_DETACHED = 4, /* was sampled, then detached: sample nothing new, but still
                               * record the frees of blocks sampled before, so that they do
                               * not stay live in the profile (and a later attach starts
                               * from a clean sampled set) */
};

/* Slot states, ap_ring_ctl.xstate. */
enum ap_slot_state {
        AP_SLOT_FREE = 0,    /* may be claimed by an agent thread (CAS from FREE) */
        AP_SLOT_OWNED = 1,   /* a live thread produces into it */
        AP_SLOT_RETIRED = 2, /* owner exited; collector frees it once drained */
};

/* Drop/diagnostic counters, ap_shm_header.xcounters[] (agent increments, relaxed). */
enum ap_counter {
        AP_CNT_DROP_RING_FULL = 0,  /* records dropped: ring full after the bounded wait */
        AP_CNT_DROP_NO_SLOT,        /* records dropped: no free ring slot */
        AP_CNT_DROP_FREE,           /* of the drops above, how many were frees */
        AP_CNT_INLINE_STACKS,       /* stacks sent inline (index full / racing insert) */
        AP_CNT_RING_WAITS,          /* times a writer waited for ring space */
        AP_CNT_MODULES_DROPPED,     /* module records that did not fit the log */
        AP_CNT_SAMPLED_SET_FULL,    /* sampled blocks not tracked: their frees are lost */
        AP_CNT_RING_WAIT_NS,        /* nanoseconds writers spent waiting for ring space */
        AP_CNT_SAMPLED_THREADS,     /* threads that allocated in sampled mode (most never
                                       sample, so the collector sees no ring of theirs) */
        AP_CNT_CHILDREN_UNPROFILED, /* fork children (and their descendants) that could
                                       not register: counted by them, into the header of
                                       their nearest profiled ancestor (session.c) */
        AP_CNT_FOREIGN_MALLOC,      /* not a count: the address of the malloc the program's
                                       calls reach when it is not the agent's (an
                                       executable with its own allocator), else 0; set
                                       before registration */
        AP_CNT_EXECS,               /* exec* calls the process made (agent/exec.c), bumped
                                       with release after exec_path was written, right
                                       before the real call */
        AP_CNT_EXECS_FAILED,        /* of those, the ones that returned (failed).  More
                                       EXECS than EXECS_FAILED: an exec is under way or
                                       done, so if the process ends without a new image
                                       registering, it ended as a program that could not
                                       be profiled.  Hints, as every counter: a thread that
                                       exits the process while another is in exec, or an
                                       exec that fails past the point of no return, can
                                       leave one counted that did not replace the image */
        AP_CNT__MAX = 16,
};

struct ap_shm_header {
        uint64_t magic;
        uint32_t layout_version;
        uint32_t header_bytes;
        uint64_t total_bytes;
        uint32_t nslots;
        uint32_t ring_bytes;
        uint64_t slots_offset;
        uint64_t slot_stride;
        uint64_t stacks_offset;
        uint64_t stacks_bytes;
        uint64_t modules_offset;
        uint64_t modules_bytes;
        uint32_t pid;
        uint32_t ppid;
        uint64_t start_ns; /* CLOCK_MONOTONIC at agent init */
        uint64_t exec_id;  /* random per process image: same pid, new exec -> new id */
        uint64_t start_ticks; /* ap_clock_ticks() at agent init, read right after start_ns */
        uint32_t clock_kind;  /* enum ap_clock_kind of every record timestamp */
        uint32_t pad0;
        uint8_t reserved0[8];

        /* cache line 2: collector -> agent control */
        _Atomic uint32_t xmode; /* enum ap_mode; agent: load_relaxed per call */
        uint32_t pad1;
        _Atomic uint64_t xsample_interval; /* bytes, sampled mode */
        _Atomic uint64_t xheartbeat;       /* collector bumps it each drain round */
        _Atomic uint32_t xcollector_pid;   /* collector process, for a liveness check */
        uint32_t pad3;
        uint8_t reserved1[32];

        /* cache line 3: agent -> collector status */
        _Atomic uint32_t xslot_hwm; /* 1 + highest slot index ever claimed */
        uint32_t pad2;
        _Atomic uint64_t xstacks_used;  /* bytes of stack heap handed out (fetch_add) */
        _Atomic uint64_t xmodules_used; /* bytes of module log published (release) */
        uint8_t reserved2[40];

        /* cache lines 4-5: counters */
        _Atomic uint64_t xcounters[AP_CNT__MAX];

        /* The path the process last gave an exec* call (made absolute if it was relative
         * to a directory; a name that execvp looks up in PATH as given; for fexecve the
         * descriptor's file), NUL-terminated, cut to fit; written before AP_CNT_EXECS is
         * bumped, by the process that registered the header only (not by a vfork child
         * that shares its memory).  A hint for the collector to name the program that
         * replaced the image: two threads that exec at once may leave it garbled.  Added
         * in the header page's unused rest, which agents before it left zero and
         * collectors before it do not read: layout version 3 still. */
        char exec_path[AP_EXEC_PATH_BYTES];
};

/* One per slot, followed by ring_bytes of data.  Producer and consumer fields live on
 * separate cache lines so neither side's writes bounce the other's line. */
struct ap_ring_ctl {
        _Atomic uint64_t xhead; /* producer: store_release; consumer: load_acquire */
        uint8_t pad0[56];
        _Atomic uint64_t xtail; /* consumer: store_release; producer: load_acquire */
        uint8_t pad1[56];
        _Atomic uint32_t xstate; /* enum ap_slot_state */
        uint32_t tid;            /* owner's kernel tid, written before OWNED is published */
        uint8_t pad2[56];
};

#define AP_SLOT_STRIDE (sizeof(struct ap_ring_ctl) + AP_RING_BYTES)

/* Space at the end of a ring that only free records may use: when the collector falls
 * behind, allocations are dropped first, since a lost free would show up as a false
 * leak while a lost allocation only makes its free unmatched. */
#define AP_RING_FREE_RESERVE (AP_RING_BYTES / 8)

/* Record header: first 8 bytes of every record.  nwords counts 8-byte words of the whole
 * record, header included; every record is a multiple of 8 bytes. */
enum ap_rec_type {
        AP_REC_PAD = 1,     /* skip nwords (fills the end of the data area) */
        AP_REC_ALLOC = 2,   /* struct ap_rec_alloc [+ inline ips] */
        AP_REC_FREE = 3,    /* struct ap_rec_free */
        AP_REC_REALLOC = 4, /* struct ap_rec_realloc [+ inline ips] */
        AP_REC_ALLOC_SAMPLED = 5, /* struct ap_rec_alloc_sampled [+ inline ips] */
};

/* ap_rec_hdr.flags */
#define AP_RECF_INLINE_STACK 0x1 /* ips follow the fixed part; depth in hdr.aux */
#define AP_RECF_REALLOC 0x2      /* ALLOC_SAMPLED: the block came from realloc */
/* FREE in sampled mode: whether the block was temporary (freed with no allocation by its
 * thread in between) is told by AP_RECF_TEMPORARY, since the collector, seeing only
 * sampled allocations, cannot tell.  (Older collectors ignore both.) */
#define AP_RECF_SAMPLED_FREE 0x4
#define AP_RECF_TEMPORARY 0x8

struct ap_rec_hdr {
        uint8_t type;
        uint8_t flags;
        uint16_t nwords;
        uint32_t aux; /* ALLOC/REALLOC: stack id, or inline depth with AP_RECF_INLINE_STACK */
};

/* Allocation that returned a block (malloc, calloc, memalign family). */
struct ap_rec_alloc {
        struct ap_rec_hdr hdr;
        uint64_t ts; /* ap_clock_ticks() (allocprof/clock.h), taken after the block was obtained */
        uint64_t addr;
        uint64_t size; /* requested bytes (calloc: nmemb*size) */
};

/* free() of a non-NULL pointer.  ts is taken before the real free, and the record is
 * published before the real free runs, so a thread that gets the same address back from
 * malloc publishes its ALLOC with a larger ts. */
struct ap_rec_free {
        struct ap_rec_hdr hdr;
        uint64_t ts;
        uint64_t addr;
};

/* Successful realloc of a non-NULL block to a non-zero size: old freed, new allocated.
 * ts_free is taken before the real realloc (from then on old may be reused by others),
 * ts after it (new is ours from then on); records are ordered by ts. */
struct ap_rec_realloc {
        struct ap_rec_hdr hdr;
        uint64_t ts;
        uint64_t ts_free;
        uint64_t old_addr;
        uint64_t new_addr;
        uint64_t size;
};

/* Sampled mode (allocprof/sampler.h): an allocation that covered sample points.  weight
 * is the number of points times the mean interval, in bytes: the collector estimates
 * weight bytes and weight / size allocations for it.  Frees of sampled blocks are plain
 * AP_REC_FREE records; frees of unsampled blocks send nothing. */
struct ap_rec_alloc_sampled {
        struct ap_rec_hdr hdr;
        uint64_t ts;
        uint64_t addr;
        uint64_t size;
        uint64_t weight;
};

/* Stack heap entry; its id is (offset from stacks_offset) / 8, never 0. */
struct ap_stack_entry {
        uint32_t depth; /* 1..AP_MAX_FRAMES */
        uint32_t reserved;
        uint64_t hash;
        uint64_t ips[]; /* raw return addresses, innermost first */
};

/* Module log record: appended under the agent's module lock, published by a release
 * store of xmodules_used.  Sizes are multiples of 8. */
enum ap_module_kind { AP_MOD_LOAD = 1, AP_MOD_UNLOAD = 2 };

struct ap_module_rec {
        uint32_t nbytes; /* whole record, multiple of 8 */
        uint16_t kind;
        uint16_t path_len; /* bytes of path, no NUL */
        uint64_t ts;
        uint64_t bias;         /* load bias (l_addr): file vaddr + bias = runtime address */
        uint64_t lo, hi;       /* runtime address range covered by PT_LOAD segments */
        uint32_t build_id_len; /* 0..AP_MAX_BUILD_ID */
        uint8_t build_id[AP_MAX_BUILD_ID];
        uint32_t reserved;
        char path[]; /* path_len bytes, padded to 8 */
};

/* Registration: the agent connects to the collector socket (path in ALLOCPROF_SOCKET),
 * sends one struct ap_hello with the memfd attached as SCM_RIGHTS, and waits (bounded,
 * AP_REPLY_TIMEOUT_MS) for one struct ap_reply; then it closes the connection.  The
 * collector learns that the process ended from a pidfd, not from the socket. */
#define AP_HELLO_MAGIC 0x4f4c4c4548504155ull
struct ap_hello {
        uint64_t magic;
        uint32_t layout_version;
        uint32_t pid;
        uint32_t ppid;
        uint32_t reserved;
        uint64_t exec_id;
        uint64_t shm_bytes;
};

#define AP_REPLY_MAGIC 0x594c504552504155ull
#define AP_REPLY_TIMEOUT_MS 3000
enum ap_reply_status {
        AP_REPLY_ACCEPTED = 0, /* record into the memory you sent */
        AP_REPLY_DECLINED = 1, /* not profiled (e.g. run --no-follow): record nothing */
        AP_REPLY_FAILED = 2,   /* the collector could not take it (no memory, its own
                                * address-space limit): record nothing; a fork child
                                * counts itself as unprofiled (older agents take it as
                                * DECLINED) */
};
struct ap_reply {
        uint64_t magic;
        uint32_t status; /* enum ap_reply_status */
        uint32_t reserved;
};

/* An agent that cannot register says why, when nothing it knows of forbids it to try the
 * socket (a seccomp filter installed by the program may kill on socket(2): then it says
 * nothing): one struct ap_unregistered, no descriptor, no reply awaited.  Only an image
 * without a profiled ancestor says it (the first image of a run, or one an exec started):
 * a fork child counts itself in its ancestor's AP_CNT_CHILDREN_UNPROFILED instead, so a
 * program forking thousands of children does not send thousands of these.  The collector
 * takes the pid from SO_PEERCRED, and uses `why` and `err` only after range checks. */
#define AP_UNREG_MAGIC 0x4745524e55504155ull
enum ap_unreg_why {
        AP_UNREG_AS_LIMIT = 1,    /* RLIMIT_AS: the agent's mappings would take more than
                                   * 1/AP_AS_SHARE of it (limit: its soft limit, bytes) */
        AP_UNREG_FSIZE_LIMIT = 2, /* RLIMIT_FSIZE below the shared memory's size: sizing the
                                   * memfd would raise SIGXFSZ (limit: bytes) */
        AP_UNREG_MEMFD = 3,       /* memfd_create failed (err) */
        AP_UNREG_SHM = 4,         /* sizing or mapping the shared memory failed (err) */
        AP_UNREG__MAX = 4,
};
struct ap_unregistered {
        uint64_t magic;
        uint32_t layout_version;
        uint32_t why; /* enum ap_unreg_why */
        uint32_t err; /* errno of the call that failed, else 0 */
        uint32_t reserved;
        uint64_t limit;
        uint64_t reserved2;
};

/* Under a finite address-space limit, the agent keeps its mappings (the head and tail at
 * registration, a ring per further recording thread) within this fraction of it: a
 * program that runs near its limit must not fail because it is profiled.  An image whose
 * registration alone would take more does not register (AP_UNREG_AS_LIMIT); threads
 * beyond the rings that fit go unrecorded, their events counted as dropped. */
#define AP_AS_SHARE 4

/* Environment variables the agent reads. */
#define AP_ENV_SOCKET "ALLOCPROF_SOCKET"
#define AP_ENV_MODE "ALLOCPROF_MODE"     /* full | dormant (default full) */
#define AP_ENV_SAMPLE "ALLOCPROF_SAMPLE" /* mean sampling interval in bytes; 0 = full */
#define AP_ENV_SAMPLE_SEED "ALLOCPROF_SAMPLE_SEED" /* fixed sampler seed (tests) */
#define AP_ENV_UNWIND "ALLOCPROF_UNWIND" /* dwarf (default) | fp | libunwind */
/* What the agent dlopens for ALLOCPROF_UNWIND=libunwind, and the CLI checks for: the
 * SONAME every libunwind 1.x has had. */
#define AP_LIBUNWIND_SONAME "libunwind.so.8"

_Static_assert(sizeof(struct ap_shm_header) <= 4096, "header fits one page");
_Static_assert(offsetof(struct ap_shm_header, xmode) == 128, "control line");
_Static_assert(offsetof(struct ap_shm_header, xslot_hwm) == 192, "status line");
_Static_assert(offsetof(struct ap_shm_header, exec_path) == 384, "exec path after the counters");
_Static_assert(sizeof(struct ap_ring_ctl) == 192, "ring ctl layout");
_Static_assert(sizeof(struct ap_rec_hdr) == 8, "record header");
_Static_assert(sizeof(struct ap_rec_alloc) == 32, "alloc record");
_Static_assert(sizeof(struct ap_rec_free) == 24, "free record");
_Static_assert(sizeof(struct ap_rec_realloc) == 48, "realloc record");
_Static_assert(sizeof(struct ap_rec_alloc_sampled) == 40, "sampled alloc record");
_Static_assert(sizeof(struct ap_unregistered) == sizeof(struct ap_hello),
               "the collector reads either in one recv");
_Static_assert(sizeof(struct ap_stack_entry) == 16, "stack entry header");
_Static_assert(sizeof(struct ap_module_rec) % 8 == 0, "module record header");
_Static_assert((AP_RING_BYTES & (AP_RING_BYTES - 1)) == 0, "ring size power of two");
/* A PAD record fills the end of the data area when the next record does not fit there,
 * so it is shorter than the longest record. */
_Static_assert((sizeof(struct ap_rec_realloc) + 8 * AP_MAX_FRAMES) / 8 <= 65535,
               "a PAD record (and every record) spans at most 65535 words");

static inline uint64_t ap_shm_total_bytes(void)
{
        return 4096 + (uint64_t)AP_NSLOTS * AP_SLOT_STRIDE + AP_STACK_HEAP_BYTES +
               AP_MODULE_LOG_BYTES;
}

#endif
