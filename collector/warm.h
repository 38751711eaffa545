/* Loading debug information while the program still runs: a background thread opens
 * each module as soon as a stack first runs through it, so the symbolization that
 * follows the program's exit finds the expensive part (decompressing and indexing
 * separate debug files, libc's above all) already done.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "symbolize.h"

struct ap_warmer;

/* Starts the thread.  It uses `sym` until ap_warmer_stop() returns; the caller must not
 * touch `sym` in between.  Returns 0 or -errno.  The thread blocks every signal. */
int ap_warmer_start(struct ap_symbolizer *sym, struct ap_warmer **ret);

/* Queues a module (copied; duplicates are ignored).  Thread-safe, never blocks on the
 * loading itself. */
void ap_warmer_add(struct ap_warmer *w, const char *path, const uint8_t *build_id,
                   size_t build_id_len);

/* Queues addresses of a module to symbolize (return addresses, offsets in the module;
 * copied), so that finalizing a profile later finds them in the symbolizer's cache.
 * Thread-safe, never blocks on the work itself.  Abandoned by ap_warmer_stop(). */
void ap_warmer_add_addrs(struct ap_warmer *w, const char *path, const uint8_t *build_id,
                         size_t build_id_len, const uint64_t *offsets, size_t n);

/* Runs fn(arg, sym) on the thread, before any queued warm-up: finalizing profiles there
 * keeps the event loop free.  Jobs run in order; every job queued before
 * ap_warmer_stop() runs.  Returns 0, or -ESHUTDOWN / -ENOMEM (fn was not queued). */
int ap_warmer_run(struct ap_warmer *w, void (*fn)(void *arg, struct ap_symbolizer *sym),
                  void *arg);

/* Waits until every job queued so far has run. */
void ap_warmer_wait(struct ap_warmer *w);

/* Runs the queued jobs, abandons the queued warm-ups, waits for the module being loaded, joins the thread
 * and frees the warmer.  Accepts NULL. */
void ap_warmer_stop(struct ap_warmer *w);
