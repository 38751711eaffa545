/* The CLI's side of the control protocol (allocprof/protocol.h): finding the collector
 * that profiles a process, one request and its answer, and reading a live snapshot.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#include "profile.h"

struct ap_ctl;

/* Connects to the collector listening on `path`.  Returns 0 or -errno with *err set to
 * a malloc'd one-line message. */
int ap_ctl_open(const char *path, struct ap_ctl **ret, char **err);

/* The daemon's socket (ALLOCPROF_DAEMON_SOCKET, else the per-user default), connected,
 * if a daemon listens there.  Returns 0, -ENOENT/-ECONNREFUSED when none runs (no
 * message), or another -errno with *err set (e.g. a directory that fails the checks). */
int ap_ctl_open_daemon(struct ap_ctl **ret, char **err);

/* Closes the connection.  Accepts NULL. */
void ap_ctl_close(struct ap_ctl *c);
int ap_ctl_fd(const struct ap_ctl *c);
/* The socket path it is connected to. */
const char *ap_ctl_path(const struct ap_ctl *c);

/* Sends one request (consumed; "v" is added) with an optional descriptor (-1: none),
 * then waits up to timeout_ms for the answer.  Returns 0 with *resp set (check "ok"),
 * or -errno with *err set. */
int ap_ctl_call(struct ap_ctl *c, json_t *req, int pass_fd, int timeout_ms, json_t **resp,
                char **err);

/* Sends a request without waiting. */
int ap_ctl_send(struct ap_ctl *c, json_t *req, int pass_fd, char **err);

/* Reads the next message (answer or event), waiting up to timeout_ms (-1: forever).
 * Returns 1 with *msg set (and *ret_fd to a descriptor that came with it, else -1),
 * 0 on timeout, -errno with *err set (-EPIPE: the collector hung up). */
int ap_ctl_read(struct ap_ctl *c, int timeout_ms, json_t **msg, int *ret_fd, char **err);

/* The "error" text of a failed answer (never NULL). */
const char *ap_ctl_error(json_t *resp);

/* Prints the one line saying why c refused a request about pid (resp, a failed answer),
 * with the likely cause when c does not know a process that started before it. */
void ap_ctl_print_refusal(struct ap_ctl *c, pid_t pid, json_t *resp);

/* Where to reach the collector that profiles *pid: the connection, or an exit status
 * after printing one clear line (no such process, no agent in it and how to start it
 * so that it can be attached, collector gone).  A pid of `allocprof run` itself stands
 * for its program: *pid is replaced by the program's. */
int ap_ctl_for_pid(pid_t *pid, struct ap_ctl **ret);

/* ALLOCPROF_SOCKET in pid's initial environment (malloc'd), or NULL. */
char *ap_ctl_environ_socket(pid_t pid);

/* pid if it has the agent, else the program of an `allocprof run` pid, else 0. */
pid_t ap_ctl_profiled_pid(pid_t pid);

/* A live snapshot of pid through c: symbolized by the collector into a memfd.  Returns
 * 0, or an exit status after printing one line. */
int ap_ctl_snapshot(struct ap_ctl *c, pid_t pid, struct ap_profile **ret);
/* How long a control call waits for its answer (a snapshot's own, longer, aside). */
#define AP_CTL_CALL_TIMEOUT_MS 10000

/* "12345" -> pid.  Returns false for anything else. */
bool ap_parse_pid(const char *s, pid_t *ret);

/* Checks that run's profiles can be written: to `output` (-o) if not NULL, the other
 * processes' to `outdir` (--output-dir) if not NULL, else next to `output`, else in the
 * current directory.  Returns 0, or 1 after a message saying why not. */
int ap_run_check_dest(const char *output, const char *outdir);

/* Parses the argument of --sample into *ret (ap_parse_size).  A size too large is
 * refused here with its own message (-ERANGE); any other failure is a negative errno
 * the caller explains in its own words. */
int ap_parse_sample(const char *arg, uint64_t *ret);
