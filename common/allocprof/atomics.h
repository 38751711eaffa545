/* Memory-order-named atomic helpers for the shared-memory protocol.  Every access to a
 * shared index goes through one of these so the ordering is visible at the call site.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef ALLOCPROF_ATOMICS_H
#define ALLOCPROF_ATOMICS_H

#include <stdatomic.h>

#define ap_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define ap_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define ap_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define ap_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define ap_fetch_add_relaxed(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define ap_fetch_sub_relaxed(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_relaxed)
#define ap_fetch_add_acq_rel(p, v) atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
/* CAS: acq_rel on success (publishes our prior writes, sees the previous owner's),
 * acquire on failure. */
#define ap_cas_acq_rel(p, expected, desired)                                                      \
        atomic_compare_exchange_strong_explicit((p), (expected), (desired), memory_order_acq_rel, \
                                                memory_order_acquire)

#endif
