/* allocprof control protocol: what `allocprof ps|report PID|snapshot|attach|detach|run`
 * say to a collector (allocprofd, or the private collector of `allocprof run`) over its
 * Unix socket.  The agents' binary registration (wire.h) shares the socket; the first
 * byte tells them apart ('{' starts a control message).  Described for users in USAGE.md.
 *
 * Framing: each message is one JSON object on one line, terminated by '\n', at most
 * AP_PROTO_REQUEST_MAX bytes from a client (responses and events may be longer, up to
 * AP_PROTO_RESPONSE_MAX).  Every request carries "v": AP_PROTO_VERSION and "cmd"; every
 * response carries "v" and "ok" (true, or false with "error" and a stable "code").  A
 * client sends one request and reads its response before sending the next; only a "run"
 * connection also receives events ("event": ...).
 *
 * Profiles never travel inside JSON: the client attaches a memfd (SCM_RIGHTS) to a
 * "snapshot" request and the collector writes the profile file into it; "image" events
 * of a run session carry a memfd the same way.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef ALLOCPROF_PROTOCOL_H
#define ALLOCPROF_PROTOCOL_H

#define AP_PROTO_VERSION 1
#define AP_PROTO_REQUEST_MAX (64u << 10)
#define AP_PROTO_RESPONSE_MAX (64u << 20)

/* A client that starts a message and does not finish it within this time, or does not
 * read what it is sent within AP_PROTO_STALL_MS, loses its connection. */
#define AP_PROTO_PARTIAL_MS 5000
#define AP_PROTO_STALL_MS 10000

/* Error codes ("code" of a failed response). */
#define AP_PROTO_E_BAD_REQUEST "bad-request"     /* not JSON, no cmd, wrong types */
#define AP_PROTO_E_VERSION "unsupported-version" /* "v" other than AP_PROTO_VERSION */
#define AP_PROTO_E_UNKNOWN_CMD "unknown-command"
#define AP_PROTO_E_NO_PROCESS "no-such-process" /* pid not profiled by this collector */
#define AP_PROTO_E_DENIED "permission-denied"   /* another user's process */
#define AP_PROTO_E_STATE "wrong-state"          /* attach while recording, detach while not */
#define AP_PROTO_E_INTERNAL "internal"          /* out of memory, I/O error */

#endif
