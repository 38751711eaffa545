/* State of the collector's event loop shared by server.c (registration, draining) and
 * control.c (control clients: ps, snapshots, attach/detach, run sessions).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "server.h"
#include "util.h"

/* Connections that have not said what they are yet.  An agent sends its hello right
 * after connecting, so a second is plenty; a crowd of silent connections cannot keep a
 * registering agent out for long. */
#define PENDING_MAX 1024
#define PENDING_DEADLINE_NS (1000ull * 1000 * 1000)

/* The longest the collector sleeps between rounds while processes are registered.  A
 * program that allocates in bursts (a compiler) often leaves the rings below the fill
 * target (ap_drain_wait_ms) for longer: then this bounds a round's size.  Measured on
 * cc1, six interleaved pairs: 10.1-10.3 M events/s of drain time with 10 ms, 10.2-10.9
 * with 25 (and no better with 50); rings that fill fast are drained sooner anyway. */
#define AP_DRAIN_WAIT_MAX_MS 25

/* How long to sleep before the next drain round, in ms, given the most bytes one ring
 * took (backlog) in the since_ns before this round (server.c). */
int ap_drain_wait_ms(uint64_t backlog, uint64_t since_ns);
int ap_idle_wait_ms(unsigned idle_rounds);
int ap_next_wait_ms(int last_ms, bool moved, uint64_t backlog, uint64_t since_ns,
                    unsigned *idle_rounds, bool have_procs);

struct pending {
        int fd;
        uint64_t since;
};

struct tracked {
        struct ap_process *p;
        int pidfd; /* -1: gone at registration, or no pidfd_open (see proc_start) */
        uint64_t proc_start; /* without a pidfd: its start time in /proc, watched instead */
        bool ended;
        char *exe;        /* /proc/PID/exe at registration (or of an exec since that may
                           * register yet), to notice an exec we cannot follow */
        uid_t uid;        /* of the registering process (SO_PEERCRED) */
        pid_t ppid;       /* its parent at registration (the agent's word: only shown) */
        uint64_t session; /* run session it belongs to, 0 = none */
        uint64_t detach_at; /* CLOCK_MONOTONIC ns of a timed detach (attach --for), 0 = none */
};

/* A process image that ended recently, for `ps` (state "finished"). */
struct finished {
        pid_t pid, ppid;
        uid_t uid;
        char *command;
        uint32_t mode;
        uint64_t sample_interval, allocations, live_bytes, threads, ended_ns;
};
#define FINISHED_KEEP 64

struct ap_client;
struct ap_session;
struct ap_job;

struct ap_collector {
        int listen_fd;
        char *path; /* unlinked at the end; NULL for an inherited socket */
        char *output_dir; /* where profiles go (hello says it), NULL: not ours to say */
        ap_collector_done_fn done;
        void *userdata;
        struct pending pending[PENDING_MAX];
        size_t npending;
        struct tracked *procs;
        size_t nprocs, procs_cap;
        struct pollfd *pfds;
        size_t pfds_cap;
        int drain_wait_ms;      /* the longest poll before the next round; -1: no limit */
        unsigned idle_rounds;   /* rounds in a row that moved nothing (ap_idle_wait_ms) */
        uint64_t last_round_ns; /* when the last round drained (CLOCK_MONOTONIC) */
        ap_collector_accept_fn accept;
        void *accept_userdata;
        bool any_user; /* agents of any uid may register (ap_collector_accept_any_user) */
        ap_collector_note_fn note;
        void *note_userdata;
        struct ap_warmer *warmer;
        uint64_t exe_checked;

        /* control.c */
        uint64_t next_id; /* client, session ids */
        struct ap_client **clients;
        size_t nclients, clients_cap;
        struct ap_session **sessions;
        size_t nsessions, sessions_cap;
        struct finished finished[FINISHED_KEEP];
        size_t nfinished, finished_next;
        int event_fd;               /* the background thread finished a job */
        pthread_mutex_t done_lock;  /* guards done_jobs */
        struct ap_job *done_jobs;   /* finished jobs, newest first */
        struct ap_symbolizer *sym;  /* for jobs when there is no background thread */
};

/* server.c: finalizes procs[i] now (drained a last time, handed to its run session or the
 * owner, as if it ended) and moves the last entry into its place. */
void ap_collector_retire(struct ap_collector *c, size_t i, bool by_exec);

/* control.c */
void ap_control_add_client(struct ap_collector *c, int fd);
bool ap_control_owns_fd(const struct ap_collector *c, int fd);
size_t ap_control_pollfds(struct ap_collector *c, struct pollfd *out);
bool ap_control_wants_ticks(const struct ap_collector *c);
void ap_control_handle(struct ap_collector *c, const struct pollfd *pfds, size_t n);
void ap_control_tick(struct ap_collector *c, uint64_t now);
uint64_t ap_control_session_for(struct ap_collector *c, pid_t pid, uint32_t ppid, uid_t uid,
                                bool *declined);
bool ap_control_image_done(struct ap_collector *c, struct tracked *t, bool by_exec);
void ap_control_drop_sessions(struct ap_collector *c);
bool ap_control_note(struct ap_collector *c, const struct tracked *t, const char *msg);
/* The same for a process that is not tracked (it could not register), sent to the run
 * session it belongs to; true if the session took it, or declines the process. */
bool ap_control_note_pid(struct ap_collector *c, pid_t pid, uid_t uid, const char *msg);
void ap_control_free_all(struct ap_collector *c);
void ap_collector_finished_add(struct ap_collector *c, const struct tracked *t);
void ap_collector_finished_clear(struct ap_collector *c);
