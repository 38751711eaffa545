/* One profiled process image as the collector sees it: the validated shared mapping, the
 * drain of its rings, and everything aggregated from them (stacks, live blocks, peak,
 * histogram, timeline).  Memory grows with unique stacks and live blocks only.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "allocprof/wire.h"
#include "profile.h"
#include "symbolize.h"

struct ap_process;

/* Maps and validates the shared memory of a newly registered process image.  `memfd` is
 * consumed (closed) in all cases.  `pid` is the peer's pid from SO_PEERCRED (trusted),
 * hello the message it sent (untrusted).  On error returns -errno and sets *err to a
 * malloc'd explanation. */
int ap_process_new(int memfd, pid_t pid, const struct ap_hello *hello, struct ap_process **ret,
                   char **err);

/* Frees the process and its mapping.  Accepts NULL. */
void ap_process_free(struct ap_process *p);

/* Drains every ring once, in timestamp order across threads.  Unless `final`, records
 * younger than a short settling delay stay for the next round, so that a thread that
 * took its timestamp but has not published yet cannot be overtaken by later events of
 * other threads.  `final` (the process is gone) takes everything.  Returns the number of
 * records processed (>= 0).  Never fails: invalid input is counted and skipped. */
long ap_process_drain(struct ap_process *p, bool final);

pid_t ap_process_pid(const struct ap_process *p);
uint64_t ap_process_exec_id(const struct ap_process *p);

/* Sets the command line / executable shown in the profile (copied). */
void ap_process_set_command(struct ap_process *p, char **argv, int argc);

/* The process image ended: normally (exit code), by a signal, or by exec (both < 0). */
void ap_process_set_exit(struct ap_process *p, int exit_code, int term_signal);
/* The process image ended by an exec of path (NULL: not known; copied), which registered
 * as an image of its own (profiled) or did not (a program the agent cannot reach).
 * Returns 0 or -ENOMEM (the path is then left out). */
int ap_process_set_exec(struct ap_process *p, const char *path, bool profiled);
/* Whether the image's agent said that an exec began which has not failed (wire.h:
 * AP_CNT_EXECS): the image is being, or was, replaced.  If so, and path_len > 0, the path
 * it said (control characters as '?', cut to fit, "" if none) goes to path.  The agent's
 * word, a hint: it spoils nothing but this process's profile. */
bool ap_process_exec_begun(const struct ap_process *p, char *path, size_t path_len);
/* Notes that the process image has ended (it exited or exec'ed), now, for its running
 * time; later calls change nothing. */
void ap_process_mark_ended(struct ap_process *p);

/* Modules that some stack started to use since the last call: calls fn(path, build_id,
 * build_id_len) for each, so that their debug information can be loaded while the
 * program still runs (see ap_symbolizer_warm). */
void ap_process_take_new_modules(struct ap_process *p,
                                 void (*fn)(void *ud, const char *path, const uint8_t *build_id,
                                            size_t build_id_len),
                                 void *ud);

/* Return addresses that new stacks brought since the last call (each address once per
 * process, entry code left out): calls fn once per module with its addresses, offsets in
 * the module as ap_symbolizer_lookup() takes them once 1 is subtracted (return
 * addresses), so that they can be symbolized while the program still runs and
 * ap_process_finalize() finds them in the symbolizer's cache.  The array is fn's to
 * read during the call only.  fn NULL drops them. */
void ap_process_take_new_addrs(struct ap_process *p,
                               void (*fn)(void *ud, const char *path, const uint8_t *build_id,
                                          size_t build_id_len, const uint64_t *offsets, size_t n),
                               void *ud);

/* The most bytes that any one of its rings held when the last drain round took its
 * snapshot of the heads: what its busiest thread wrote since the round before. */
uint64_t ap_process_backlog(const struct ap_process *p);

/* Live totals for status lines. */
void ap_process_stats(const struct ap_process *p, uint64_t *allocations, uint64_t *live_bytes);

/* A frozen copy of everything ap_process_finalize() reads (stacks, modules, totals,
 * histogram, timeline, the header's counters), detached from the shared memory: it can
 * be finalized on another thread while `p` keeps draining.  Free with
 * ap_process_free().  Returns NULL on OOM. */
struct ap_process *ap_process_snapshot(const struct ap_process *p);

/* The agent's current mode (enum ap_mode) and sampling interval, and switching them:
 * attach and detach write the shared control line. */
uint32_t ap_process_mode(const struct ap_process *p, uint64_t *sample_interval);
void ap_process_set_mode(struct ap_process *p, uint32_t mode, uint64_t sample_interval);

/* Command line (as set by ap_process_set_command; may be empty) and threads seen. */
char **ap_process_command(const struct ap_process *p, int *argc);
uint32_t ap_process_threads(const struct ap_process *p);
/* False while nothing was recorded from p: no event, no thread, never in sampled mode (a
 * process started dormant and never attached). */
bool ap_process_recorded(const struct ap_process *p);

/* Symbolizes and folds everything into a new profile.  The process can keep running and
 * be finalized again later (a snapshot).  Returns 0 or -errno. */
int ap_process_finalize(struct ap_process *p, struct ap_symbolizer *sym, struct ap_profile **ret);
