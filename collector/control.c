/* Control clients of the collector (protocol in allocprof/protocol.h, for users in
 * USAGE.md): `allocprof ps`, live snapshots, attach and detach, and run sessions of a
 * shared allocprofd.  Clients are untrusted: every message is length-checked and parsed
 * as JSON with duplicate keys rejected; a client that sends garbage, too much, or too
 * slowly, or does not read its answers, loses its own connection and nothing else.
 * Symbolizing (snapshots, finished images of run sessions) happens on the background
 * thread; the loop only copies and hands over.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allocprof/clock.h"
#include "allocprof/protocol.h"
#include "allocprof/wire.h"
#include "config.h"
#include "profile.h"
#include "server-internal.h"
#include "warm.h"

#define MS 1000000ull

/* Connections served at once (run sessions included); more are told so and closed. */
#define CLIENTS_MAX 512

struct outmsg {
        char *buf;
        size_t len, off;
        int fd; /* passed with the first byte, then closed; -1 none */
};

struct ap_client {
        int fd;
        uint64_t id;
        uid_t uid;
        pid_t pid;
        char *in;
        size_t inlen;
        uint64_t in_since; /* an unfinished message started then (0: none) */
        int passed_fd;     /* descriptor received with the current message, -1 none */
        struct outmsg *out;
        size_t nout, outcap, outbytes;
        uint64_t out_since; /* output waiting since (0: none) */
        uint64_t session;   /* the run session this connection owns, 0 none */
        bool closing;       /* read no more; close once the output is out */
        bool dead;          /* close now */
};

/* One `allocprof run` served by a shared collector: the program it started and, unless
 * follow is off, every process started under it. */
struct ap_session {
        uint64_t id, client;
        pid_t root;
        bool follow;
        pid_t *pids;
        size_t npids, pids_cap;
        bool finishing;
        uint64_t deadline;
        int inflight; /* images being finalized for it */
        bool done;
};

enum job_kind { JOB_SNAPSHOT, JOB_IMAGE };

struct ap_job {
        struct ap_collector *c;
        enum job_kind kind;
        uint64_t client;
        struct ap_process *p; /* owned by the job */
        int fd;               /* memfd the profile goes into */
        int r;
        pid_t pid;
        bool by_exec;
        struct ap_job *next;
};

/* ---- helpers ------------------------------------------------------------------------- */

static struct ap_client *client_by_id(struct ap_collector *c, uint64_t id)
{
        for (size_t i = 0; i < c->nclients; i++)
                if (c->clients[i]->id == id && !c->clients[i]->dead)
                        return c->clients[i];
        return NULL;
}

static struct ap_session *session_by_id(struct ap_collector *c, uint64_t id)
{
        for (size_t i = 0; id != 0 && i < c->nsessions; i++)
                if (c->sessions[i]->id == id)
                        return c->sessions[i];
        return NULL;
}

static const char *mode_name(uint32_t mode)
{
        switch (mode) {
        case AP_MODE_FULL:
                return "full";
        case AP_MODE_SAMPLED:
                return "sampled";
        case AP_MODE_DORMANT:
                return "dormant";
        case AP_MODE_DETACHED:
                return "detached";
        default:
                return "off";
        }
}

static bool recording(uint32_t mode)
{
        return mode == AP_MODE_FULL || mode == AP_MODE_SAMPLED;
}

static char *join_command(struct ap_process *p)
{
        int argc;
        char **argv = ap_process_command(p, &argc);
        size_t len = 1;
        for (int i = 0; i < argc; i++)
                len += strlen(argv[i]) + 1;
        char *s = malloc(len), *w = s;
        if (s == NULL)
                return NULL;
        for (int i = 0; i < argc; i++)
                w += sprintf(w, "%s%s", i ? " " : "", argv[i]);
        *w = '\0';
        return s;
}

/* Parent of pid from /proc, or -1. */
static pid_t parent_of(pid_t pid)
{
        struct ap_proc_stat st;
        return ap_proc_stat(pid, &st) ? st.ppid : -1;
}

/* ---- finished images, for ps ---------------------------------------------------------- */

void ap_collector_finished_add(struct ap_collector *c, const struct tracked *t)
{
        struct finished *f = &c->finished[c->finished_next];
        free(f->command);
        uint64_t iv;
        *f = (struct finished){.pid = ap_process_pid(t->p),
                               .ppid = t->ppid,
                               .uid = t->uid,
                               .command = join_command(t->p),
                               .mode = ap_process_mode(t->p, &iv),
                               .threads = ap_process_threads(t->p),
                               .ended_ns = ap_realtime_ns()};
        f->sample_interval = iv;
        ap_process_stats(t->p, &f->allocations, &f->live_bytes);
        c->finished_next = (c->finished_next + 1) % FINISHED_KEEP;
        if (c->nfinished < FINISHED_KEEP)
                c->nfinished++;
}

void ap_collector_finished_clear(struct ap_collector *c)
{
        for (size_t i = 0; i < FINISHED_KEEP; i++) {
                free(c->finished[i].command);
                c->finished[i].command = NULL;
        }
        c->nfinished = 0;
}

/* ---- output ---------------------------------------------------------------------------- */

static void client_close(struct ap_client *cl)
{
        cl->dead = true;
}

/* Hung up on its side, or broke the framing: what it was told still goes out. */
static void client_finish(struct ap_client *cl)
{
        cl->closing = true;
        if (cl->nout == 0)
                cl->dead = true;
}

/* Queues msg (consumed) plus an optional descriptor (consumed). */
static void send_json(struct ap_client *cl, json_t *msg, int fd)
{
        char *text = cl->dead ? NULL : json_dumps(msg, JSON_COMPACT);
        json_decref(msg);
        size_t len = text ? strlen(text) : 0;
        if (text == NULL || len + 1 > AP_PROTO_RESPONSE_MAX ||
            cl->outbytes + len + 1 > AP_PROTO_RESPONSE_MAX ||
            AP_GROW(cl->out, cl->outcap, cl->nout + 1) < 0) {
                free(text);
                if (fd >= 0)
                        close(fd);
                client_close(cl);
                return;
        }
        text[len] = '\n'; /* json_dumps left room: it NUL-terminates */
        cl->out[cl->nout++] = (struct outmsg){.buf = text, .len = len + 1, .fd = fd};
        cl->outbytes += len + 1;
        if (cl->out_since == 0)
                cl->out_since = ap_clock_mono_ns();
}

static void flush_out(struct ap_client *cl)
{
        while (!cl->dead && cl->nout > 0) {
                struct outmsg *m = &cl->out[0];
                /* The descriptor goes with the message's first byte. */
                ssize_t n = ap_send_fd(cl->fd, m->buf + m->off, m->len - m->off, MSG_DONTWAIT,
                                       m->off == 0 ? m->fd : -1);
                if (n < 0) {
                        if (n != -EAGAIN && n != -EINTR)
                                client_close(cl);
                        return;
                }
                cl->out_since = ap_clock_mono_ns(); /* progress */
                if (m->fd >= 0) {
                        close(m->fd);
                        m->fd = -1;
                }
                m->off += (size_t)n;
                cl->outbytes -= (size_t)n;
                if (m->off < m->len)
                        continue;
                free(m->buf);
                memmove(cl->out, cl->out + 1, (cl->nout - 1) * sizeof(*cl->out));
                cl->nout--;
        }
        if (cl->nout == 0) {
                cl->out_since = 0;
                if (cl->closing)
                        cl->dead = true;
        }
}

static json_t *reply_ok(void)
{
        return json_pack("{s:i, s:b}", "v", AP_PROTO_VERSION, "ok", 1);
}

static void reply_error(struct ap_client *cl, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void reply_error(struct ap_client *cl, const char *code, const char *fmt, ...)
{
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        send_json(cl, json_pack("{s:i, s:b, s:s, s:s}", "v", AP_PROTO_VERSION, "ok", 0, "error",
                                msg, "code", code),
                  -1);
}

/* ---- clients ------------------------------------------------------------------------- */

void ap_control_add_client(struct ap_collector *c, int fd)
{
        struct ucred cred;
        socklen_t len = sizeof(cred);
        struct ap_client *cl = calloc(1, sizeof(*cl));
        if (cl == NULL || AP_GROW(c->clients, c->clients_cap, c->nclients + 1) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                free(cl);
                close(fd);
                return;
        }
        *cl = (struct ap_client){
                .fd = fd, .id = c->next_id++, .uid = cred.uid, .pid = cred.pid, .passed_fd = -1};
        c->clients[c->nclients++] = cl;
        if (c->nclients > CLIENTS_MAX) {
                reply_error(cl, AP_PROTO_E_INTERNAL, "too many clients (%d)", CLIENTS_MAX);
                client_finish(cl);
                flush_out(cl);
        } else if (cred.uid != geteuid() && cred.uid != 0) {
                reply_error(cl, AP_PROTO_E_DENIED,
                            "this collector serves only uid %u: you are uid %u",
                            (unsigned)geteuid(), (unsigned)cred.uid);
                client_finish(cl);
                flush_out(cl);
        }
}

bool ap_control_owns_fd(const struct ap_collector *c, int fd)
{
        for (size_t i = 0; i < c->nclients; i++)
                if (c->clients[i]->fd == fd)
                        return true;
        return false;
}

static void client_free(struct ap_collector *c, struct ap_client *cl)
{
        struct ap_session *s = session_by_id(c, cl->session);
        if (s != NULL)
                s->client = 0; /* its processes are profiled on, by the owner */
        close(cl->fd);
        if (cl->passed_fd >= 0)
                close(cl->passed_fd);
        for (size_t i = 0; i < cl->nout; i++) {
                free(cl->out[i].buf);
                if (cl->out[i].fd >= 0)
                        close(cl->out[i].fd);
        }
        free(cl->out);
        free(cl->in);
        free(cl);
}

size_t ap_control_pollfds(struct ap_collector *c, struct pollfd *out)
{
        for (size_t i = 0; i < c->nclients; i++) {
                struct ap_client *cl = c->clients[i];
                out[i] = (struct pollfd){.fd = cl->dead ? -1 : cl->fd,
                                         .events = (cl->closing ? 0 : POLLIN) |
                                                   (cl->nout ? POLLOUT : 0)};
        }
        return c->nclients;
}

bool ap_control_wants_ticks(const struct ap_collector *c)
{
        for (size_t i = 0; i < c->nsessions; i++)
                if (c->sessions[i]->finishing)
                        return true;
        return c->done_jobs != NULL;
}

/* ---- jobs (run on the background thread) --------------------------------------------- */

static void job_finish(struct ap_job *j)
{
        struct ap_collector *c = j->c;
        pthread_mutex_lock(&c->done_lock);
        j->next = c->done_jobs;
        c->done_jobs = j;
        pthread_mutex_unlock(&c->done_lock);
        uint64_t one = 1;
        (void)!write(c->event_fd, &one, sizeof(one));
}

static void job_run(void *arg, struct ap_symbolizer *sym)
{
        struct ap_job *j = arg;
        struct ap_profile *prof = NULL;
        j->r = ap_process_finalize(j->p, sym, &prof);
        if (j->r == 0 && j->kind == JOB_SNAPSHOT)
                prof->live = true;
        if (j->r == 0)
                j->r = ap_profile_write_fd(prof, j->fd);
        if (j->r == 0 && lseek(j->fd, 0, SEEK_SET) < 0)
                j->r = -errno;
        ap_profile_free(prof);
        ap_process_free(j->p);
        j->p = NULL;
        job_finish(j);
}

static int job_submit(struct ap_collector *c, struct ap_job *j)
{
        j->c = c;
        if (c->warmer != NULL && ap_warmer_run(c->warmer, job_run, j) == 0)
                return 0;
        /* No background thread (or it is stopping): do it here. */
        if (c->sym == NULL && ap_symbolizer_new(&c->sym) < 0)
                return -ENOMEM;
        job_run(j, c->sym);
        return 0;
}

static void job_deliver(struct ap_collector *c, struct ap_job *j)
{
        struct ap_client *cl = client_by_id(c, j->client);
        if (j->kind == JOB_SNAPSHOT) {
                if (cl == NULL)
                        ;
                else if (j->r < 0)
                        reply_error(cl, AP_PROTO_E_INTERNAL, "cannot make the snapshot: %s",
                                    strerror(-j->r));
                else
                        send_json(cl, json_pack("{s:i, s:b, s:i}", "v", AP_PROTO_VERSION, "ok", 1,
                                                "pid", (int)j->pid),
                                  -1);
                close(j->fd);
        } else {
                struct ap_session *s = NULL;
                for (size_t i = 0; i < c->nsessions; i++)
                        if (c->sessions[i]->client == j->client)
                                s = c->sessions[i];
                if (s != NULL)
                        s->inflight--;
                if (cl != NULL && j->r == 0)
                        send_json(cl,
                                  json_pack("{s:i, s:s, s:i, s:b}", "v", AP_PROTO_VERSION,
                                            "event", "image", "pid", (int)j->pid, "by_exec",
                                            j->by_exec),
                                  j->fd);
                else {
                        char msg[128];
                        snprintf(msg, sizeof(msg),
                                 "pid %d: its profile could not be finalized: %s", (int)j->pid,
                                 strerror(-j->r));
                        if (cl != NULL)
                                send_json(cl,
                                          json_pack("{s:i, s:s, s:i, s:s}", "v",
                                                    AP_PROTO_VERSION, "event", "note", "pid",
                                                    (int)j->pid, "message", msg),
                                          -1);
                        close(j->fd);
                }
        }
        free(j);
}

static int new_memfd(void)
{
        return memfd_create("allocprof-profile", MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

/* ---- sessions ------------------------------------------------------------------------- */

static bool session_has(const struct ap_session *s, pid_t pid)
{
        if (pid == s->root)
                return true;
        for (size_t i = 0; i < s->npids; i++)
                if (s->pids[i] == pid)
                        return true;
        return false;
}

uint64_t ap_control_session_for(struct ap_collector *c, pid_t pid, uint32_t ppid, uid_t uid,
                                bool *declined)
{
        for (size_t i = 0; i < c->nsessions; i++) {
                struct ap_session *s = c->sessions[i];
                struct ap_client *cl = client_by_id(c, s->client);
                if (s->done || cl == NULL || (cl->uid != uid && cl->uid != 0))
                        continue;
                /* The run's client is the subreaper of the program's processes: an
                 * orphan whose parent died before it registered is its child. */
                bool member = session_has(s, pid) || session_has(s, (pid_t)ppid) ||
                              (pid_t)ppid == cl->pid;
                /* An orphan registers after its parent died: follow /proc upwards. */
                pid_t up = parent_of(pid);
                for (int depth = 0; !member && up > 1 && depth < 64; depth++) {
                        member = session_has(s, up) || up == cl->pid;
                        up = parent_of(up);
                }
                if (!member)
                        continue;
                if (pid != s->root && !s->follow) {
                        *declined = true;
                        return 0;
                }
                if (!session_has(s, pid) && AP_GROW(s->pids, s->pids_cap, s->npids + 1) == 0)
                        s->pids[s->npids++] = pid;
                return s->id;
        }
        return 0;
}

bool ap_control_image_done(struct ap_collector *c, struct tracked *t, bool by_exec)
{
        struct ap_session *s = session_by_id(c, t->session);
        if (s == NULL || s->client == 0 || client_by_id(c, s->client) == NULL)
                return false;
        struct ap_job *j = calloc(1, sizeof(*j));
        int fd = j ? new_memfd() : -1;
        if (fd < 0) {
                free(j);
                return false;
        }
        *j = (struct ap_job){.kind = JOB_IMAGE,
                             .client = s->client,
                             .p = t->p,
                             .fd = fd,
                             .pid = ap_process_pid(t->p),
                             .by_exec = by_exec};
        s->inflight++;
        if (job_submit(c, j) < 0) {
                s->inflight--;
                close(fd);
                free(j);
                return false;
        }
        return true;
}

static bool note_session(struct ap_collector *c, uint64_t session, pid_t pid, const char *msg)
{
        struct ap_session *s = session_by_id(c, session);
        struct ap_client *cl = s ? client_by_id(c, s->client) : NULL;
        if (cl == NULL)
                return false;
        send_json(cl,
                  json_pack("{s:i, s:s, s:i, s:s}", "v", AP_PROTO_VERSION, "event", "note", "pid",
                            (int)pid, "message", msg),
                  -1);
        return true;
}

bool ap_control_note(struct ap_collector *c, const struct tracked *t, const char *msg)
{
        return note_session(c, t->session, ap_process_pid(t->p), msg);
}

bool ap_control_note_pid(struct ap_collector *c, pid_t pid, uid_t uid, const char *msg)
{
        bool declined = false;
        uint64_t session = ap_control_session_for(c, pid, 0, uid, &declined);
        /* A process the run does not follow would not have been profiled anyway. */
        return declined || note_session(c, session, pid, msg);
}

void ap_control_drop_sessions(struct ap_collector *c)
{
        for (size_t i = 0; i < c->nsessions; i++) {
                struct ap_session *s = c->sessions[i];
                struct ap_client *cl = client_by_id(c, s->client);
                /* Told now, while we still can: the processes it has not been sent are
                 * ours to write. */
                if (cl != NULL && !s->done) {
                        send_json(
                                cl,
                                json_pack("{s:i, s:s}", "v", AP_PROTO_VERSION, "event", "stopping"),
                                -1);
                        flush_out(cl);
                }
                s->client = 0;
        }
}

static void session_free(struct ap_session *s)
{
        free(s->pids);
        free(s);
}

/* ---- requests ------------------------------------------------------------------------ */

static struct tracked *find_proc(struct ap_collector *c, struct ap_client *cl, json_t *req)
{
        json_t *jp = json_object_get(req, "pid");
        if (!json_is_integer(jp) || json_integer_value(jp) <= 0 ||
            json_integer_value(jp) > INT32_MAX) {
                reply_error(cl, AP_PROTO_E_BAD_REQUEST, "\"pid\" must be a positive integer");
                return NULL;
        }
        pid_t pid = (pid_t)json_integer_value(jp);
        for (size_t i = 0; i < c->nprocs; i++) {
                struct tracked *t = &c->procs[i];
                if (ap_process_pid(t->p) != pid)
                        continue;
                if (cl->uid != 0 && t->uid != cl->uid) {
                        reply_error(cl, AP_PROTO_E_DENIED, "pid %d belongs to another user",
                                    (int)pid);
                        return NULL;
                }
                return t;
        }
        reply_error(cl, AP_PROTO_E_NO_PROCESS, "pid %d is not profiled by this collector",
                    (int)pid);
        return NULL;
}

static json_t *proc_json(pid_t pid, pid_t ppid, uid_t uid, const char *command, uint32_t mode,
                         uint64_t interval, const char *state, uint64_t allocs, uint64_t live,
                         uint64_t threads, bool run)
{
        return json_pack("{s:i, s:i, s:i, s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:b}", "pid",
                         (int)pid, "ppid", (int)ppid, "uid", (int)uid, "command",
                         command ? command : "", "mode", mode_name(mode), "sample_interval",
                         (json_int_t)(mode == AP_MODE_FULL ? 0 : interval), "state", state,
                         "allocations", (json_int_t)(allocs > INT64_MAX ? INT64_MAX : allocs),
                         "live_bytes", (json_int_t)(live > INT64_MAX ? INT64_MAX : live),
                         "threads", (json_int_t)threads, "run_session", run);
}

static void cmd_ps(struct ap_collector *c, struct ap_client *cl)
{
        json_t *list = json_array();
        for (size_t i = 0; list && i < c->nprocs; i++) {
                struct tracked *t = &c->procs[i];
                if (cl->uid != 0 && t->uid != cl->uid)
                        continue;
                uint64_t iv, allocs, live;
                uint32_t mode = ap_process_mode(t->p, &iv);
                ap_process_stats(t->p, &allocs, &live);
                char *cmd = join_command(t->p);
                json_array_append_new(
                        list, proc_json(ap_process_pid(t->p), parent_of(ap_process_pid(t->p)),
                                        t->uid, cmd, mode, iv,
                                        recording(mode) ? "recording" : "dormant", allocs, live,
                                        ap_process_threads(t->p), t->session != 0));
                free(cmd);
        }
        for (size_t k = 0; list && k < c->nfinished; k++) {
                size_t i = (c->finished_next + FINISHED_KEEP - c->nfinished + k) % FINISHED_KEEP;
                const struct finished *f = &c->finished[i];
                if (cl->uid != 0 && f->uid != cl->uid)
                        continue;
                json_array_append_new(list, proc_json(f->pid, f->ppid, f->uid, f->command,
                                                      f->mode, f->sample_interval, "finished",
                                                      f->allocations, f->live_bytes, f->threads,
                                                      false));
        }
        json_t *r = reply_ok();
        if (list == NULL || r == NULL) {
                json_decref(list);
                json_decref(r);
                reply_error(cl, AP_PROTO_E_INTERNAL, "out of memory");
                return;
        }
        json_object_set_new(r, "processes", list);
        send_json(cl, r, -1);
}

static void cmd_hello(struct ap_collector *c, struct ap_client *cl)
{
        json_t *r = reply_ok();
        /* The socket we listen on; an inherited one (systemd) has no path of ours. */
        json_object_set_new(r, "socket", c->path ? json_string(c->path) : json_null());
        json_object_set_new(r, "version", json_string(AP_VERSION));
        json_object_set_new(r, "protocol", json_integer(AP_PROTO_VERSION));
        json_object_set_new(r, "pid", json_integer(getpid()));
        json_object_set_new(r, "uid", json_integer(geteuid()));
        if (c->output_dir != NULL)
                json_object_set_new(r, "output_dir", json_string(c->output_dir));
        send_json(cl, r, -1);
}

/* The client's memfd for a snapshot: only a memfd will do (writing into a pipe, a FIFO
 * or a FUSE file could block us). */
static bool usable_memfd(int fd)
{
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                return false;
        int seals = fcntl(fd, F_GET_SEALS);
        int fl = fcntl(fd, F_GETFL);
        return seals >= 0 && !(seals & (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_FUTURE_WRITE)) &&
               fl >= 0 && (fl & O_ACCMODE) != O_RDONLY;
}

static void cmd_snapshot(struct ap_collector *c, struct ap_client *cl, json_t *req)
{
        int fd = cl->passed_fd;
        if (!usable_memfd(fd)) {
                reply_error(cl, AP_PROTO_E_BAD_REQUEST,
                            "snapshot needs a writable memfd passed with the request");
                return;
        }
        struct tracked *t = find_proc(c, cl, req);
        if (t == NULL)
                return;
        /* What the agent published until now is in (one round: a busy process would
         * keep a loop here busy for ever). */
        ap_process_drain(t->p, false);
        /* Started dormant and never attached: there is nothing to show, and an empty
         * profile would read "mode full: every allocation recorded; counts are exact"
         * over zeros, as if the program had allocated nothing. */
        if (ap_process_mode(t->p, NULL) == AP_MODE_DORMANT && !ap_process_recorded(t->p)) {
                reply_error(cl, AP_PROTO_E_STATE,
                            "pid %d is dormant and was never attached: nothing is recorded "
                            "yet ('allocprof attach %d' starts recording)",
                            (int)ap_process_pid(t->p), (int)ap_process_pid(t->p));
                return;
        }
        struct ap_job *j = calloc(1, sizeof(*j));
        struct ap_process *copy = j ? ap_process_snapshot(t->p) : NULL;
        if (copy == NULL) {
                free(j);
                reply_error(cl, AP_PROTO_E_INTERNAL, "out of memory");
                return;
        }
        *j = (struct ap_job){.kind = JOB_SNAPSHOT,
                             .client = cl->id,
                             .p = copy,
                             .fd = fd,
                             .pid = ap_process_pid(t->p)};
        cl->passed_fd = -1;
        if (job_submit(c, j) < 0) {
                ap_process_free(copy);
                close(fd);
                free(j);
                reply_error(cl, AP_PROTO_E_INTERNAL, "out of memory");
        }
}

static bool get_u64(struct ap_client *cl, json_t *req, const char *key, uint64_t min,
                    uint64_t *ret)
{
        json_t *v = json_object_get(req, key);
        if (v == NULL)
                return true;
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            (uint64_t)json_integer_value(v) < min) {
                reply_error(cl, AP_PROTO_E_BAD_REQUEST, "\"%s\" must be an integer >= %llu", key,
                            (unsigned long long)min);
                return false;
        }
        *ret = (uint64_t)json_integer_value(v);
        return true;
}

static void cmd_attach(struct ap_collector *c, struct ap_client *cl, json_t *req)
{
        uint64_t sample = 512 * 1024, for_ms = 0;
        if (!get_u64(cl, req, "sample", 1, &sample) || !get_u64(cl, req, "for_ms", 0, &for_ms))
                return;
        if (sample > (1ull << 40)) {
                reply_error(cl, AP_PROTO_E_BAD_REQUEST, "\"sample\" is larger than 1 TiB");
                return;
        }
        struct tracked *t = find_proc(c, cl, req);
        if (t == NULL)
                return;
        uint32_t mode = ap_process_mode(t->p, NULL);
        if (recording(mode)) {
                reply_error(cl, AP_PROTO_E_STATE, "pid %d is already recording (%s mode)",
                            (int)ap_process_pid(t->p), mode_name(mode));
                return;
        }
        if (mode == AP_MODE_OFF) {
                reply_error(cl, AP_PROTO_E_STATE,
                            "pid %d stopped recording for good (its agent lost the collector)",
                            (int)ap_process_pid(t->p));
                return;
        }
        ap_process_set_mode(t->p, AP_MODE_SAMPLED, sample);
        t->detach_at = for_ms ? ap_clock_mono_ns() + for_ms * MS : 0;
        json_t *r = reply_ok();
        json_object_set_new(r, "pid", json_integer(ap_process_pid(t->p)));
        json_object_set_new(r, "sample_interval", json_integer((json_int_t)sample));
        send_json(cl, r, -1);
}

static void cmd_detach(struct ap_collector *c, struct ap_client *cl, json_t *req)
{
        struct tracked *t = find_proc(c, cl, req);
        if (t == NULL)
                return;
        uint32_t mode = ap_process_mode(t->p, NULL);
        if (mode == AP_MODE_FULL) {
                reply_error(cl, AP_PROTO_E_STATE,
                            "pid %d records every allocation since it started; only a process "
                            "started dormant can be detached",
                            (int)ap_process_pid(t->p));
                return;
        }
        if (mode != AP_MODE_SAMPLED) {
                reply_error(cl, AP_PROTO_E_STATE, "pid %d is not attached", (int)ap_process_pid(t->p));
                return;
        }
        ap_process_set_mode(t->p, AP_MODE_DETACHED, 0);
        t->detach_at = 0;
        json_t *r = reply_ok();
        json_object_set_new(r, "pid", json_integer(ap_process_pid(t->p)));
        send_json(cl, r, -1);
}

static void cmd_run(struct ap_collector *c, struct ap_client *cl, json_t *req)
{
        json_t *jp = json_object_get(req, "pid");
        json_t *jf = json_object_get(req, "follow");
        if (!json_is_integer(jp) || json_integer_value(jp) <= 1 ||
            json_integer_value(jp) > INT32_MAX || (jf != NULL && !json_is_boolean(jf))) {
                reply_error(cl, AP_PROTO_E_BAD_REQUEST,
                            "run needs \"pid\" (a positive integer) and optionally \"follow\" "
                            "(a boolean)");
                return;
        }
        pid_t pid = (pid_t)json_integer_value(jp);
        if (cl->session != 0) {
                reply_error(cl, AP_PROTO_E_STATE, "this connection runs a session already");
                return;
        }
        /* Only the client's own child: nobody can pull another's process into a session. */
        if (parent_of(pid) != cl->pid) {
                reply_error(cl, AP_PROTO_E_DENIED, "pid %d is not a child of the client",
                            (int)pid);
                return;
        }
        struct ap_session *s = calloc(1, sizeof(*s));
        if (s == NULL || AP_GROW(c->sessions, c->sessions_cap, c->nsessions + 1) < 0) {
                free(s);
                reply_error(cl, AP_PROTO_E_INTERNAL, "out of memory");
                return;
        }
        *s = (struct ap_session){.id = c->next_id++,
                                 .client = cl->id,
                                 .root = pid,
                                 .follow = jf == NULL || json_is_true(jf)};
        c->sessions[c->nsessions++] = s;
        cl->session = s->id;
        /* So that the client can tell, if the connection breaks, whether we are gone. */
        json_t *r = reply_ok();
        json_object_set_new(r, "collector_pid", json_integer(getpid()));
        if (c->output_dir != NULL) /* where the run's profiles go if we stop first */
                json_object_set_new(r, "output_dir", json_string(c->output_dir));
        send_json(cl, r, -1);
}

static void cmd_finish(struct ap_collector *c, struct ap_client *cl, json_t *req)
{
        uint64_t grace = 500;
        if (!get_u64(cl, req, "grace_ms", 0, &grace))
                return;
        struct ap_session *s = session_by_id(c, cl->session);
        if (s == NULL) {
                reply_error(cl, AP_PROTO_E_STATE, "no run session on this connection");
                return;
        }
        s->finishing = true;
        s->deadline = ap_clock_mono_ns() + (grace > 60000 ? 60000 : grace) * MS;
}

/* Whether the client has closed its connection (POLLHUP: both ways, not only its
 * writing side, as `socat` does once it has sent a request and waits for the answer). */
static bool client_hung_up(const struct ap_client *cl)
{
        struct pollfd pfd = {.fd = cl->fd, .events = 0};
        return poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLHUP) != 0;
}

static void handle_request(struct ap_collector *c, struct ap_client *cl, const char *line,
                           size_t len)
{
        json_error_t jerr;
        json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(req)) {
                reply_error(cl, AP_PROTO_E_BAD_REQUEST, "not a JSON object: %s",
                            req ? "wrong type" : jerr.text);
                json_decref(req);
                client_finish(cl); /* framing cannot be trusted any more */
                return;
        }
        json_t *v = json_object_get(req, "v");
        const char *cmd = json_string_value(json_object_get(req, "cmd"));
        if (v == NULL)
                reply_error(cl, AP_PROTO_E_BAD_REQUEST, "no \"v\" (the protocol version, %d)",
                            AP_PROTO_VERSION);
        else if (!json_is_integer(v))
                reply_error(cl, AP_PROTO_E_BAD_REQUEST,
                            "\"v\" must be an integer (the protocol version, %d)",
                            AP_PROTO_VERSION);
        else if (json_integer_value(v) != AP_PROTO_VERSION)
                reply_error(cl, AP_PROTO_E_VERSION,
                            "protocol version %lld is not supported (this collector speaks %d)",
                            (long long)json_integer_value(v), AP_PROTO_VERSION);
        else if (cmd == NULL)
                reply_error(cl, AP_PROTO_E_BAD_REQUEST, "no \"cmd\"");
        else if ((strcmp(cmd, "attach") == 0 || strcmp(cmd, "detach") == 0 ||
                  strcmp(cmd, "snapshot") == 0) &&
                 client_hung_up(cl))
                /* The client gave up waiting (a collector stopped or busy for longer than
                 * the CLI's 10 s) and told its user the request failed: carried out now,
                 * an attach or detach would take effect behind their back, and a
                 * snapshot nobody reads is work for nothing. */
                client_finish(cl);
        else if (strcmp(cmd, "hello") == 0)
                cmd_hello(c, cl);
        else if (strcmp(cmd, "ps") == 0)
                cmd_ps(c, cl);
        else if (strcmp(cmd, "snapshot") == 0)
                cmd_snapshot(c, cl, req);
        else if (strcmp(cmd, "attach") == 0)
                cmd_attach(c, cl, req);
        else if (strcmp(cmd, "detach") == 0)
                cmd_detach(c, cl, req);
        else if (strcmp(cmd, "run") == 0)
                cmd_run(c, cl, req);
        else if (strcmp(cmd, "finish") == 0)
                cmd_finish(c, cl, req);
        else
                reply_error(cl, AP_PROTO_E_UNKNOWN_CMD, "unknown command \"%.64s\"", cmd);
        json_decref(req);
        /* A descriptor is good for the one request it came with. */
        if (cl->passed_fd >= 0) {
                close(cl->passed_fd);
                cl->passed_fd = -1;
        }
}

/* One read (at most AP_PROTO_REQUEST_MAX bytes of requests) per round of the event
 * loop: a client that sends thousands of requests at once must not keep the others, or
 * a connection still saying hello, waiting.  poll() reports the rest next round. */
static void client_read(struct ap_collector *c, struct ap_client *cl)
{
        if (cl->dead || cl->closing)
                return;
        if (cl->in == NULL && (cl->in = malloc(AP_PROTO_REQUEST_MAX)) == NULL) {
                client_close(cl);
                return;
        }
        int fds[AP_FDS_MAX], msg_flags;
        size_t nfds;
        ssize_t n = ap_recv_fds(cl->fd, cl->in + cl->inlen, AP_PROTO_REQUEST_MAX - cl->inlen,
                                MSG_DONTWAIT, fds, &nfds, &msg_flags);
        for (size_t k = 0; k < nfds; k++) {
                if (cl->passed_fd >= 0)
                        close(cl->passed_fd); /* one per request */
                cl->passed_fd = fds[k];
        }
        if (n < 0) {
                if (n != -EAGAIN && n != -EINTR)
                        client_close(cl);
                return;
        }
        if (n == 0) {
                client_finish(cl); /* hung up its sending side: answer, then close */
                return;
        }
        if (msg_flags & MSG_CTRUNC) {
                client_close(cl); /* more descriptors than a request may carry */
                return;
        }
        cl->inlen += (size_t)n;
        /* Every complete line, then what is left moves to the front once. */
        size_t done = 0;
        char *nl;
        while (!cl->dead && !cl->closing &&
               (nl = memchr(cl->in + done, '\n', cl->inlen - done)) != NULL) {
                size_t len = (size_t)(nl - (cl->in + done));
                handle_request(c, cl, cl->in + done, len);
                done += len + 1;
                cl->in_since = 0;
        }
        memmove(cl->in, cl->in + done, cl->inlen - done);
        cl->inlen -= done;
        if (cl->inlen == AP_PROTO_REQUEST_MAX) {
                reply_error(cl, AP_PROTO_E_BAD_REQUEST, "request longer than %u bytes",
                            AP_PROTO_REQUEST_MAX);
                client_finish(cl);
                flush_out(cl);
                return;
        }
        if (cl->inlen > 0 && cl->in_since == 0)
                cl->in_since = ap_clock_mono_ns();
}

void ap_control_handle(struct ap_collector *c, const struct pollfd *pfds, size_t n)
{
        for (size_t i = 0; pfds != NULL && i < n && i < c->nclients; i++) {
                struct ap_client *cl = c->clients[i];
                if (cl->dead)
                        continue;
                if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR))
                        client_read(c, cl);
                if (pfds[i].revents & POLLOUT)
                        flush_out(cl);
        }
}

/* ---- the periodic part --------------------------------------------------------------- */

static void finish_sessions(struct ap_collector *c, uint64_t now)
{
        for (size_t i = 0; i < c->nsessions; i++) {
                struct ap_session *s = c->sessions[i];
                if (!s->finishing || s->done)
                        continue;
                bool any = false;
                for (size_t k = 0; k < c->nprocs; k++)
                        any |= c->procs[k].session == s->id;
                if (any && now < s->deadline)
                        continue;
                /* Still running after the grace period: profile them up to now. */
                for (size_t k = c->nprocs; k-- > 0;)
                        if (c->procs[k].session == s->id)
                                ap_collector_retire(c, k, false);
                if (s->inflight > 0)
                        continue;
                struct ap_client *cl = client_by_id(c, s->client);
                if (cl != NULL)
                        send_json(cl,
                                  json_pack("{s:i, s:s}", "v", AP_PROTO_VERSION, "event",
                                            "finished"),
                                  -1);
                s->done = true;
        }
}

void ap_control_tick(struct ap_collector *c, uint64_t now)
{
        for (size_t i = 0; i < c->nprocs; i++) {
                struct tracked *t = &c->procs[i];
                if (t->detach_at != 0 && now >= t->detach_at) {
                        if (ap_process_mode(t->p, NULL) == AP_MODE_SAMPLED)
                                ap_process_set_mode(t->p, AP_MODE_DETACHED, 0);
                        t->detach_at = 0;
                }
        }

        pthread_mutex_lock(&c->done_lock);
        struct ap_job *done = c->done_jobs;
        c->done_jobs = NULL;
        pthread_mutex_unlock(&c->done_lock);
        /* Oldest first, so that a session's images arrive in the order they ended. */
        struct ap_job *rev = NULL;
        while (done != NULL) {
                struct ap_job *next = done->next;
                done->next = rev;
                rev = done;
                done = next;
        }
        while (rev != NULL) {
                struct ap_job *next = rev->next;
                job_deliver(c, rev);
                rev = next;
        }

        finish_sessions(c, now);

        size_t keep = 0;
        for (size_t i = 0; i < c->nclients; i++) {
                struct ap_client *cl = c->clients[i];
                if (!cl->dead)
                        flush_out(cl);
                /* The stamps may be later than now (set by this round's deliveries and
                 * flushes): compare without wrapping around. */
                if (cl->in_since != 0 && !cl->closing && now > cl->in_since &&
                    now - cl->in_since > AP_PROTO_PARTIAL_MS * MS)
                        client_close(cl); /* started a message and never finished it */
                if (cl->out_since != 0 && now > cl->out_since &&
                    now - cl->out_since > AP_PROTO_STALL_MS * MS)
                        client_close(cl); /* does not read what it asked for */
                if (cl->dead)
                        client_free(c, cl);
                else
                        c->clients[keep++] = cl;
        }
        c->nclients = keep;

        keep = 0;
        for (size_t i = 0; i < c->nsessions; i++) {
                struct ap_session *s = c->sessions[i];
                bool used = false;
                for (size_t k = 0; k < c->nprocs; k++)
                        used |= c->procs[k].session == s->id;
                /* Gone: finished, or its client left and nothing belongs to it. */
                if ((s->done || s->client == 0 || client_by_id(c, s->client) == NULL) &&
                    s->inflight == 0 && !used) {
                        session_free(s);
                        continue;
                }
                if (s->client != 0 && client_by_id(c, s->client) == NULL)
                        s->client = 0;
                c->sessions[keep++] = s;
        }
        c->nsessions = keep;
}

void ap_control_free_all(struct ap_collector *c)
{
        pthread_mutex_lock(&c->done_lock);
        struct ap_job *done = c->done_jobs;
        c->done_jobs = NULL;
        pthread_mutex_unlock(&c->done_lock);
        while (done != NULL) {
                struct ap_job *next = done->next;
                ap_process_free(done->p);
                close(done->fd);
                free(done);
                done = next;
        }
        for (size_t i = 0; i < c->nclients; i++)
                client_free(c, c->clients[i]);
        free(c->clients);
        for (size_t i = 0; i < c->nsessions; i++)
                session_free(c->sessions[i]);
        free(c->sessions);
        ap_symbolizer_free(c->sym);
}
