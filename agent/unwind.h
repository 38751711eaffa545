/* The agent's DWARF unwinder for x86-64: call-frame information (.eh_frame, found through
 * each module's .eh_frame_hdr search table) reduced to three rules per instruction
 * address -- where the canonical frame address is (rsp or rbp plus an offset), where the
 * return address is saved, where rbp is saved -- and those rules cached by address, so a
 * frame costs a hash probe and two loads once its address has been seen.
 *
 * It handles what compilers emit for ordinary functions.  Anything else (signal frames,
 * DWARF expressions, a CFA based on another register, a module without .eh_frame_hdr, a
 * stack read outside the thread's stack) makes ap_unwind_capture() give up, and the
 * caller unwinds with libunwind instead: the result is then the same, only slower.
 *
 * Runs inside malloc hooks: no allocation, no locks, no system calls.
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
