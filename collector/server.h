/* The collector's event loop: a listening Unix socket where agents register (memfd via
 * SCM_RIGHTS), a pidfd per registered process to learn when it ends, and draining of
 * every process's rings.  Used embedded by `allocprof run` and by allocprofd.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "process.h"

struct ap_collector;

struct ap_warmer;

/* Called when a process image has ended (exit, death, or exec into a new image) and its
 * rings were drained for the last time.  The callee owns `p` (free with
 * ap_process_free).  `by_exec` tells an image replaced by exec from a process exit. */
typedef void (*ap_collector_done_fn)(void *userdata, struct ap_process *p, bool by_exec);

/* Creates the socket at socket_path (which must not exist; its directory must be
 * private) and starts listening.  Returns 0 or -errno with *err set to a malloc'd
 * message. */
int ap_collector_new(const char *socket_path, ap_collector_done_fn done, void *userdata,
                     struct ap_collector **ret, char **err);

/* The same, on a socket that is already listening (socket activation): the collector
 * owns listen_fd from now on and never unlinks anything. */
int ap_collector_new_fd(int listen_fd, ap_collector_done_fn done, void *userdata,
                        struct ap_collector **ret);

/* Called when a profiled process exec'ed a program the agent cannot follow (statically
 * linked, or set-user-ID): `why` is one line without a trailing newline. */
typedef void (*ap_collector_note_fn)(void *userdata, int pid, const char *why);
/* Also called for an image that could not register and said why (wire.h: struct
 * ap_unregistered): then `why` contains this. */
#define AP_NOTE_UNREGISTERED "could not register with the collector"
/* And for an image that exec'ed a program that could not be profiled: then `why` ends
 * with this. */
#define AP_NOTE_EXEC_UNPROFILED "not profiled from there on"
void ap_collector_set_note(struct ap_collector *c, ap_collector_note_fn fn, void *userdata);

/* Hands every module a stack starts to use to `w` (loads its debug information while
 * the program runs), and runs snapshots and the finalization of run sessions' images
 * on its thread.  NULL: none (those then run in the loop).  The warmer must outlive the
 * collector. */
void ap_collector_set_warmer(struct ap_collector *c, struct ap_warmer *w);

/* The directory the ended processes' profiles are written to (absolute), told to clients
 * in the hello reply ("output_dir") so that `allocprof report PID` finds them.  Returns 0
 * or -ENOMEM. */
int ap_collector_set_output_dir(struct ap_collector *c, const char *dir);

/* Decides whether a registering process is profiled (true) or told to record nothing.
 * Without a filter every process of an allowed user is accepted. */
typedef bool (*ap_collector_accept_fn)(void *userdata, pid_t pid);
void ap_collector_set_accept(struct ap_collector *c, ap_collector_accept_fn fn, void *userdata);

/* Lets agents of any user register, not only ours and root's: for root's private
 * collector, whose program may change its user (a server that drops privileges) and whose
 * socket only the program's processes know the path of.  Control clients are still
 * served only for our user and root. */
void ap_collector_accept_any_user(struct ap_collector *c);

/* Closes the socket (unlinking it) and frees every process still tracked without
 * calling `done`.  Accepts NULL. */
void ap_collector_free(struct ap_collector *c);

/* One round: waits up to timeout_ms for registrations, process ends or `extra_fd`
 * (ignored if < 0), then drains every process.  Returns 1 if extra_fd became readable,
 * 0 otherwise, -errno on a fatal error. */
int ap_collector_step(struct ap_collector *c, int timeout_ms, int extra_fd);

/* Number of process images being tracked. */
size_t ap_collector_nprocs(const struct ap_collector *c);

/* True if a process image of this pid is still tracked. */
bool ap_collector_has_pid(const struct ap_collector *c, int pid);

/* Drains every tracked process a last time and hands each to `done`, alive or not; a
 * process still alive is told to stop recording.  Run sessions of clients are ended:
 * their processes go to `done` too. */
void ap_collector_flush_all(struct ap_collector *c);
