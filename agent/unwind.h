/* The agent's DWARF unwinder for x86-64: call-frame information (.eh_frame, found through
 * each module's .eh_frame_hdr search table) reduced to three rules per instruction
 * address -- where the canonical frame address is (rsp or rbp plus an offset), where the
 * return address is saved, where rbp is saved -- and those rules cached by address, so a
 * frame costs a hash probe and two loads once its address has been seen.
 *
 * It handles what compilers emit for ordinary functions.  Anything else (signal frames,
 * DWARF expressions, a CFA based on another register, a module without .eh_frame_hdr, a
 * stack read outside the thread's stack) makes ap_unwind_capture() give up, and the
 * caller unwinds with ap_unwind_capture_general() instead.
 *
 * Runs inside malloc hooks: no allocation, no locks; no system calls on the fast path.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Maps the rule cache (once, at session set-up; not from a hook).  Returns 0 or -errno. */
int ap_unwind_init(void);

/* Drops every cached rule: called when a module was unloaded (its addresses may be
 * reused).  Rules are worked out from the loader's module list, so nothing else is
 * needed. */
void ap_unwind_forget_rules(void);

/* Writes up to max return addresses of the calling thread's stack, innermost first,
 * starting with an address inside ap_unwind_capture() itself; stack_hi is the top of the
 * thread's stack (0: unknown, then nothing is attempted).  Returns the number written, or
 * -1 if this stack needs the general unwinder.  (The agent starts past its own frames
 * with ap_unwind_capture_from; the tests compare this with libunwind.) */
int ap_unwind_capture(uint64_t *out, int max, uint64_t stack_hi);

/* The same from a given frame: pc its return address (the next instruction to run in
 * it), sp and fp the values of rsp and rbp there.  out[0] is pc. */
int ap_unwind_capture_from(uint64_t *out, int max, uint64_t stack_hi, uint64_t pc, uint64_t sp,
                           uint64_t fp);

/* The slow path, for any stack: signal frames (through the kernel's trampoline, to the
 * interrupted code, whose exact pc is the next address), stacks outside the thread's
 * [stack_lo, stack_hi) (every read there checked with process_vm_readv first), and
 * frames without a cacheable rule (one frame-pointer step, else the stack ends there).
 * Returns the number of addresses written, pc first; -1 only where the fast path is all
 * there is (not x86-64). */
int ap_unwind_capture_general(uint64_t *out, int max, uint64_t stack_lo, uint64_t stack_hi,
                              uint64_t pc, uint64_t sp, uint64_t fp);

/* Reads of stack memory that may not be there: inside [lo, hi) (the live part of the
 * thread's stack) directly, elsewhere through a system call first, once per page, whose
 * success widens [ok_lo, ok_hi).  Zero-initialized: nothing known. */
struct ap_unwind_reader {
        uint64_t lo, hi;
        uint64_t ok_lo, ok_hi;
};

/* The 8-byte word at addr into *val; false if it cannot be read (or addr is unaligned). */
bool ap_unwind_read_word(struct ap_unwind_reader *r, uint64_t addr, uint64_t *val);

/* The same from its caller's frame (for the tests; out[0] is inside this function). */
int ap_unwind_capture_general_here(uint64_t *out, int max, uint64_t stack_lo, uint64_t stack_hi);

/* ---- a thread's last stack ------------------------------------------------------------
 * Consecutive allocations of a thread mostly share the outer part of their stacks (a
 * compiler's: 18 of 22 frames on average).  The memo keeps the last unwind of a thread,
 * every frame's state (pc, sp, fp) and the stack slots its rules read, outermost frame
 * (level 0) first.  An unwind that reaches a frame in the same state as one of the
 * memo's (same pc, same sp, and the same fp if a later rule can depend on it) re-reads
 * the memo's slots above it instead of looking up rules: if they all still hold what
 * they held, the rest of the unwind is what it was then (it is a function of that
 * state, those slots and the rules of those pcs, which do not change while the rule
 * cache's generation does not), so the memo's frames are copied.  The memo also keeps
 * the stack's hash, built from the outermost frame, one running value per frame, so
 * that only the new frames are hashed.
 *
 * Owned by one thread and used outside signal handlers only (a handler interrupting an
 * update would see half of it): no atomics. */
#define AP_UNWIND_MEMO_MAX 64

struct ap_unwind_memo {
        uint32_t n;   /* frames held (level 0 the outermost), 0 = none */
        uint32_t end; /* how that unwind ended (unwind.c) */
        uint64_t gen; /* the rule cache's generation it was made in */
        uint64_t fin_pc, fin_sp, fin_fp; /* the state after level n - 1's rule, if read */
        uint64_t user;                   /* for the caller (the agent: the stack's id) */
        uint64_t user_gen;
        /* Whether the memo pays is measured (unwind.c): captures left in the current
         * phase (0: a trial starts), the phase (0: run with the choice, 1: timed trial
         * without the memo, 2: with it), the choice, and the trials' ticks and frames. */
        uint32_t left, phase;
        uint32_t use;
        uint64_t trial_ticks[2], trial_frames[2];
        /* The levels, one array per field: checking the outer levels reads a few fields
         * of each, and a compiler's stacks have twenty of them, so they should share as
         * few cache lines as they can. */
        uint64_t pc[AP_UNWIND_MEMO_MAX], sp[AP_UNWIND_MEMO_MAX], fp[AP_UNWIND_MEMO_MAX];
        uint64_t slot[AP_UNWIND_MEMO_MAX]; /* where the level's rule read the caller's rbp, 0
                                              if it did not */
        uint64_t hash[AP_UNWIND_MEMO_MAX]; /* running stack hash over the level and those
                                              above it */
        uint8_t flags[AP_UNWIND_MEMO_MAX];
};

/* ap_unwind_capture_from with a memo (max <= AP_UNWIND_MEMO_MAX).  On success also sets
 * *hash to ap_stack_hash() of the frames and *same to whether they are exactly the
 * memo's previous stack (memo->user still describes it), and updates the memo; on -1
 * the memo is emptied. */
int ap_unwind_capture_memo(uint64_t *out, int max, uint64_t stack_hi, uint64_t pc, uint64_t sp,
                           uint64_t fp, struct ap_unwind_memo *memo, uint64_t *hash, bool *same);

/* ap_unwind_capture with a memo (for the tests; out[0] is inside this function). */
int ap_unwind_capture_here(uint64_t *out, int max, uint64_t stack_hi, struct ap_unwind_memo *m,
                           uint64_t *hash, bool *same);

/* The stack hash the agent indexes stacks by, built from the outermost frame (so that a
 * memo can keep the hash of its outer part): seed, one step per frame from ips[n - 1]
 * down to ips[0], then the depth mixed in.  Never 0. */
#define AP_STACK_HASH_SEED 0x9e3779b97f4a7c15ull

static inline uint64_t ap_stack_hash_step(uint64_t h, uint64_t pc)
{
        h ^= pc;
        h *= 0xff51afd7ed558ccdull;
        return h ^ (h >> 32);
}

static inline uint64_t ap_stack_hash_final(uint64_t h, uint32_t n)
{
        h = ap_stack_hash_step(h, n);
        return h ? h : 1;
}

static inline uint64_t ap_stack_hash(const uint64_t *ips, uint32_t n)
{
        uint64_t h = AP_STACK_HASH_SEED;
        for (uint32_t i = n; i-- > 0;)
                h = ap_stack_hash_step(h, ips[i]);
        return ap_stack_hash_final(h, n);
}
