/* Helpers shared by the test workloads: programs whose allocation pattern is known
 * exactly, so that a profile of them can be checked figure by figure.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

/* A named function that must stay a real frame of its own: never inlined, cloned
 * (foo.constprop.0) or otherwise transformed by interprocedural optimisation, so the
 * profile shows it under its own name. */
#if defined(__clang__)
#define WL_FRAME __attribute__((noinline, used))
#else
#define WL_FRAME __attribute__((noipa, used))
#endif

/* Tells the compiler that `p` escapes and memory may be read.  Without it an optimiser
 * may delete a malloc/free pair whose block is never used, and a call whose result is
 * returned straight away becomes a tail call, which removes the caller from the stack. */
static inline void wl_keep(void *p)
{
        __asm__ volatile("" : : "r"(p) : "memory");
}
