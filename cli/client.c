/* The CLI's side of the control protocol (see client.h).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "allocprof/clock.h"
#include "allocprof/protocol.h"
#include "allocprof/wire.h"
#include "client.h"
#include "run.h"
#include "service.h"
#include "util.h"

struct ap_ctl {
        int fd;
        char *path;
        char *buf;
        size_t len, cap;
        int fds[8]; /* descriptors received, oldest first */
        size_t nfds;
};

int ap_ctl_open(const char *path, struct ap_ctl **ret, char **err)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sa.sun_path)) {
                *err = ap_asprintf("socket path too long: %s", path);
                return -ENAMETOOLONG;
        }
        strcpy(sa.sun_path, path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;
                *err = ap_asprintf("cannot connect to %s: %s", path, strerror(-r));
                if (fd >= 0)
                        close(fd);
                return r;
        }
        struct ap_ctl *c = calloc(1, sizeof(*c));
        if (c == NULL || (c->path = strdup(path)) == NULL) {
                free(c);
                close(fd);
                *err = ap_asprintf("out of memory");
                return -ENOMEM;
        }
        c->fd = fd;
        *ret = c;
        return 0;
}

int ap_ctl_open_daemon(struct ap_ctl **ret, char **err)
{
        char *path = NULL;
        int r = ap_service_socket_path(false, &path, err);
        if (r == -ENOENT) {
                free(*err);
                *err = NULL;
                return r;
        }
        if (r < 0)
                return r;
        struct stat st;
        if (lstat(path, &st) < 0) {
                free(path);
                return -ENOENT;
        }
        r = ap_ctl_open(path, ret, err);
        free(path);
        if (r == -ECONNREFUSED || r == -ENOENT) {
                free(*err);
                *err = NULL;
        }
        return r;
}

void ap_ctl_close(struct ap_ctl *c)
{
        if (c == NULL)
                return;
        close(c->fd);
        for (size_t i = 0; i < c->nfds; i++)
                close(c->fds[i]);
        free(c->buf);
        free(c->path);
        free(c);
}

const char *ap_ctl_path(const struct ap_ctl *c)
{
        return c->path;
}

int ap_ctl_fd(const struct ap_ctl *c)
{
        return c->fd;
}

int ap_ctl_send(struct ap_ctl *c, json_t *req, int pass_fd, char **err)
{
        json_object_set_new(req, "v", json_integer(AP_PROTO_VERSION));
        char *text = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        if (text == NULL) {
                *err = ap_asprintf("out of memory");
                return -ENOMEM;
        }
        size_t len = strlen(text);
        text[len] = '\n';
        size_t off = 0;
        int r = 0;
        while (off < len + 1) {
                /* The descriptor goes with the first byte. */
                ssize_t n = ap_send_fd(c->fd, text + off, len + 1 - off, 0, off == 0 ? pass_fd : -1);
                if (n == -EINTR)
                        continue;
                if (n < 0) {
                        r = (int)n;
                        *err = ap_asprintf("cannot talk to the collector: %s", strerror(-r));
                        break;
                }
                off += (size_t)n;
        }
        free(text);
        return r;
}

int ap_ctl_read(struct ap_ctl *c, int timeout_ms, json_t **msg, int *ret_fd, char **err)
{
        uint64_t deadline = timeout_ms >= 0 ? ap_clock_mono_ns() + (uint64_t)timeout_ms * 1000000
                                            : 0;
        for (;;) {
                char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
                if (nl != NULL) {
                        size_t len = (size_t)(nl - c->buf);
                        json_error_t jerr;
                        json_t *m = json_loadb(c->buf, len, 0, &jerr);
                        memmove(c->buf, nl + 1, c->len - len - 1);
                        c->len -= len + 1;
                        if (!json_is_object(m)) {
                                json_decref(m);
                                *err = ap_asprintf("the collector sent a malformed message");
                                return -EPROTO;
                        }
                        int fd = -1;
                        if (c->nfds > 0) {
                                fd = c->fds[0];
                                memmove(c->fds, c->fds + 1, (--c->nfds) * sizeof(int));
                        }
                        if (ret_fd != NULL)
                                *ret_fd = fd;
                        else if (fd >= 0)
                                close(fd);
                        *msg = m;
                        return 1;
                }
                int wait = -1;
                if (timeout_ms >= 0) {
                        uint64_t now = ap_clock_mono_ns();
                        wait = now >= deadline ? 0 : (int)((deadline - now) / 1000000) + 1;
                }
                struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
                int pr = poll(&pfd, 1, wait);
                if (pr < 0 && errno == EINTR)
                        continue;
                if (pr == 0)
                        return 0;
                if (c->len + 65536 > c->cap) {
                        if (c->cap >= AP_PROTO_RESPONSE_MAX) {
                                *err = ap_asprintf("the collector sent an oversized message");
                                return -EMSGSIZE;
                        }
                        size_t ncap = c->cap ? c->cap * 2 : 131072;
                        char *nb = realloc(c->buf, ncap);
                        if (nb == NULL) {
                                *err = ap_asprintf("out of memory");
                                return -ENOMEM;
                        }
                        c->buf = nb;
                        c->cap = ncap;
                }
                int fds[AP_FDS_MAX], msg_flags;
                size_t nfds;
                ssize_t n = ap_recv_fds(c->fd, c->buf + c->len, c->cap - c->len, 0, fds, &nfds,
                                        &msg_flags);
                if (n == -EINTR)
                        continue;
                if (n <= 0) {
                        *err = ap_asprintf("the collector hung up%s%s", n < 0 ? ": " : "",
                                           n < 0 ? strerror((int)-n) : "");
                        for (size_t i = 0; i < nfds; i++)
                                close(fds[i]);
                        return -EPIPE;
                }
                for (size_t i = 0; i < nfds; i++) {
                        if (c->nfds < sizeof(c->fds) / sizeof(c->fds[0]))
                                c->fds[c->nfds++] = fds[i];
                        else
                                close(fds[i]);
                }
                c->len += (size_t)n;
        }
}

int ap_ctl_call(struct ap_ctl *c, json_t *req, int pass_fd, int timeout_ms, json_t **resp,
                char **err)
{
        int r = ap_ctl_send(c, req, pass_fd, err);
        if (r < 0)
                return r;
        for (;;) {
                json_t *m = NULL;
                r = ap_ctl_read(c, timeout_ms, &m, NULL, err);
                if (r == 0) {
                        *err = ap_asprintf("the collector did not answer within %d ms",
                                           timeout_ms);
                        return -ETIMEDOUT;
                }
                if (r < 0)
                        return r;
                if (json_object_get(m, "event") != NULL) { /* not ours to handle here */
                        json_decref(m);
                        continue;
                }
                *resp = m;
                return 0;
        }
}

const char *ap_ctl_error(json_t *resp)
{
        const char *e = json_string_value(json_object_get(resp, "error"));
        return e ? e : "the collector refused without saying why";
}

void ap_ctl_print_refusal(struct ap_ctl *c, pid_t pid, json_t *resp)
{
        const char *code = json_string_value(json_object_get(resp, "code"));
        if (code == NULL || strcmp(code, AP_PROTO_E_NO_PROCESS) != 0) {
                fprintf(stderr, "allocprof: %s\n", ap_ctl_error(resp));
                return;
        }
        /* LD_PRELOAD without ALLOCPROF_SOCKET: the agent is loaded but stays inactive.
         * (The daemon was asked all the same: a program that rewrites its environment
         * block for its title, as servers do, hides a socket it did start with.) */
        char *sock = ap_ctl_environ_socket(pid);
        if (sock == NULL) {
                fprintf(stderr,
                        "allocprof: %s: its environment has no " AP_ENV_SOCKET
                        ", without which the agent it loaded stays inactive\n",
                        ap_ctl_error(resp));
                return;
        }
        free(sock);
        /* The agent registers once, with the collector that listened when the process
         * started: one started later (allocprofd restarted after being killed) has never
         * heard of it, and "not profiled by this collector" alone leaves a user who sees
         * the agent loaded and the daemon running to guess why. */
        struct ucred cred;
        socklen_t len = sizeof(cred);
        struct ap_proc_stat prog, coll;
        if (getsockopt(ap_ctl_fd(c), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0 &&
            ap_proc_stat(pid, &prog) && ap_proc_stat(cred.pid, &coll) && prog.start < coll.start) {
                fprintf(stderr,
                        "allocprof: %s: it started before this collector (pid %d) did, and its "
                        "agent talks only to the one it found when it started: restart the "
                        "program to profile it\n",
                        ap_ctl_error(resp), (int)cred.pid);
                return;
        }
        fprintf(stderr, "allocprof: %s\n", ap_ctl_error(resp));
}

bool ap_parse_pid(const char *s, pid_t *ret)
{
        char *end;
        if (s == NULL || s[0] < '0' || s[0] > '9')
                return false;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno != 0 || *end != '\0' || v <= 0 || v > 0x7fffffff)
                return false;
        *ret = (pid_t)v;
        return true;
}

char *ap_ctl_environ_socket(pid_t pid)
{
        char path[64], *env = NULL;
        snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
        ssize_t n = ap_read_file(path, &env, 1 << 20);
        if (n <= 0 || env == NULL) {
                free(env);
                return NULL;
        }
        static const char key[] = AP_ENV_SOCKET "=";
        char *found = NULL;
        size_t len = (size_t)n;
        for (size_t at = 0; at < len;) {
                const char *var = env + at;
                size_t vlen = strnlen(var, len - at);
                if (vlen > sizeof(key) - 1 && memcmp(var, key, sizeof(key) - 1) == 0) {
                        free(found);
                        found = strndup(var + sizeof(key) - 1, vlen - (sizeof(key) - 1));
                }
                at += vlen + 1;
        }
        free(env);
        return found;
}

/* The process (thread group) that the thread pid belongs to: pid itself for a process,
 * 0 if unknown. */
static pid_t thread_group(pid_t pid)
{
        char path[64], *status = NULL;
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        ssize_t n = ap_read_file(path, &status, 1 << 16);
        const char *line = n > 0 ? strstr(status, "\nTgid:") : NULL;
        long tgid = line != NULL ? strtol(line + 6, NULL, 10) : 0;
        free(status);
        return tgid > 0 && tgid <= INT_MAX ? (pid_t)tgid : 0;
}

/* Whether the agent is mapped into pid. */
static bool has_agent(pid_t pid)
{
        char path[64], *maps = NULL;
        snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
        ssize_t n = ap_read_file(path, &maps, 64 << 20);
        bool yes = n > 0 && strstr(maps, "/liballocprof.so") != NULL;
        free(maps);
        return yes;
}

static void no_agent(pid_t pid)
{
        char *agent = ap_find_agent();
        fprintf(stderr,
                "allocprof: pid %d has no allocprof agent; start the program with "
                "'allocprof run --dormant -- PROG' (or with LD_PRELOAD=%s "
                "ALLOCPROF_MODE=dormant under allocprofd) to attach to it later\n",
                (int)pid, agent ? agent : "liballocprof.so");
        free(agent);
}

/* The only child of pid that has the agent (pid being an `allocprof run`), or 0. */
static pid_t profiled_child(pid_t pid)
{
        char path[96], *buf = NULL;
        snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
        ssize_t n = ap_read_file(path, &buf, 1 << 16);
        pid_t found = 0;
        int count = 0;
        char *save = NULL;
        for (char *tok = n > 0 ? strtok_r(buf, " \n", &save) : NULL; tok != NULL;
             tok = strtok_r(NULL, " \n", &save)) {
                pid_t c;
                if (ap_parse_pid(tok, &c) && has_agent(c)) {
                        found = c;
                        count++;
                }
        }
        free(buf);
        return count == 1 ? found : 0;
}

/* Whether pid runs this very program (an `allocprof run`, say): the same executable. */
static bool is_allocprof(pid_t pid)
{
        char path[64];
        struct stat a, b;
        snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
        return stat(path, &a) == 0 && stat("/proc/self/exe", &b) == 0 && a.st_dev == b.st_dev &&
               a.st_ino == b.st_ino;
}

pid_t ap_ctl_profiled_pid(pid_t pid)
{
        return has_agent(pid) ? pid : profiled_child(pid);
}

int ap_ctl_for_pid(pid_t *ppid, struct ap_ctl **ret)
{
        pid_t pid = *ppid;
        char proc[64];
        struct stat st;
        snprintf(proc, sizeof(proc), "/proc/%d", (int)pid);
        if (stat(proc, &st) < 0) {
                fprintf(stderr, "allocprof: no process %d\n", (int)pid);
                return 1;
        }
        if (st.st_uid != geteuid() && geteuid() != 0) {
                fprintf(stderr,
                        "allocprof: pid %d belongs to uid %u: only its owner (or root) can "
                        "profile it\n",
                        (int)pid, (unsigned)st.st_uid);
                return 1;
        }
        /* A thread's id (from `top -H`, `ps -L`, a log line) has a /proc entry of its own,
         * but the collector knows processes: "not profiled by this collector" would be
         * untrue.  The process is meant. */
        pid_t tgid = thread_group(pid);
        if (tgid > 0 && tgid != pid) {
                fprintf(stderr, "allocprof: %d is a thread of pid %d; using that process\n",
                        (int)pid, (int)tgid);
                pid = *ppid = tgid;
        }
        /* An ended process its parent has not reaped yet shows no maps: not "no agent". */
        struct ap_proc_stat ps;
        if (ap_proc_stat(pid, &ps) && ps.state == 'Z') {
                fprintf(stderr, "allocprof: pid %d has ended (its parent has not reaped it yet)\n",
                        (int)pid);
                return 1;
        }
        if (!has_agent(pid)) {
                /* `allocprof run ... &` then `attach $!`: that pid is run itself. */
                pid_t child = profiled_child(pid);
                if (child == 0 && is_allocprof(pid)) {
                        /* Not "start the program with the agent": it was, and has ended
                         * (run is writing its profile), or has not started yet. */
                        fprintf(stderr,
                                "allocprof: pid %d is allocprof (an 'allocprof run'?), and no "
                                "program it profiles is running now: it has ended (its profile "
                                "is being written) or has not started yet\n",
                                (int)pid);
                        return 1;
                }
                if (child == 0) {
                        no_agent(pid);
                        return 1;
                }
                fprintf(stderr, "allocprof: pid %d is 'allocprof run'; using its program, pid %d\n",
                        (int)pid, (int)child);
                pid = *ppid = child;
        }
        char *err = NULL;
        char *sock = ap_ctl_environ_socket(pid);
        int r;
        if (sock != NULL) {
                r = ap_ctl_open(sock, ret, &err);
        } else {
                r = ap_ctl_open_daemon(ret, &err);
                if (r == -ENOENT || r == -ECONNREFUSED) {
                        fprintf(stderr,
                                "allocprof: pid %d has the agent but no collector: no "
                                "ALLOCPROF_SOCKET in its environment and no allocprofd "
                                "running\n",
                                (int)pid);
                        return 1;
                }
        }
        if (r < 0) {
                /* Nothing listens at the socket, or it was removed: the collector has
                 * ended (killed, or its run is over), and the agent has stopped for good. */
                fprintf(stderr, "allocprof: pid %d: %s (%s)\n", (int)pid, err ? err : strerror(-r),
                        r == -ECONNREFUSED || r == -ENOENT
                                ? "its collector is gone: the program runs on unprofiled"
                                : "its collector is gone?");
                free(err);
                free(sock);
                return 1;
        }
        free(sock);
        return 0;
}

int ap_ctl_snapshot(struct ap_ctl *c, pid_t pid, struct ap_profile **ret)
{
        int mfd = memfd_create("allocprof-snapshot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (mfd < 0) {
                fprintf(stderr, "allocprof: memfd_create: %s\n", strerror(errno));
                return 1;
        }
        json_t *resp = NULL;
        char *err = NULL;
        /* Symbolizing a big program the first time can take a while, so the snapshot may
         * take two minutes; a collector that does not answer at all (stopped, stuck) is
         * found out by a hello first, in the ten seconds every other call gets. */
        int r = ap_ctl_call(c, json_pack("{s:s}", "cmd", "hello"), -1, AP_CTL_CALL_TIMEOUT_MS,
                            &resp, &err);
        json_decref(resp);
        resp = NULL;
        if (r == 0)
                r = ap_ctl_call(c, json_pack("{s:s, s:i}", "cmd", "snapshot", "pid", (int)pid), mfd,
                                120000, &resp, &err);
        if (r < 0) {
                fprintf(stderr, "allocprof: pid %d: %s\n", (int)pid, err);
                free(err);
                close(mfd);
                return 1;
        }
        if (!json_is_true(json_object_get(resp, "ok"))) {
                ap_ctl_print_refusal(c, pid, resp);
                json_decref(resp);
                close(mfd);
                return 1;
        }
        json_decref(resp);
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
        r = ap_profile_read(path, ret, &err);
        close(mfd);
        if (r < 0) {
                fprintf(stderr, "allocprof: the snapshot of pid %d is unreadable: %s\n", (int)pid,
                        err ? err : strerror(-r));
                free(err);
                return 1;
        }
        return 0;
}

int ap_parse_sample(const char *arg, uint64_t *ret)
{
        int r = ap_parse_size(arg, ret);
        if (r == -ERANGE)
                fprintf(stderr,
                        "allocprof: --sample: '%s' is too large (at most %" PRIu64 " bytes)\n", arg,
                        AP_SIZE_MAX);
        return r;
}

int ap_run_check_dest(const char *output, const char *outdir)
{
        /* The other processes' profiles go to --output-dir, else next to -o's file
         * (checked with it), else here. */
        char *why = NULL;
        int r = output ? ap_profile_check_dest(output, &why) : 0;
        if (r < 0) {
                fprintf(stderr, "allocprof: cannot write the profile %s: %s\n", output,
                        why ? why : strerror(-r));
                free(why);
                return 1;
        }
        r = outdir || !output ? ap_profile_check_dir(outdir ? outdir : ".", &why) : 0;
        if (r < 0) {
                fprintf(stderr, "allocprof: %s%s\n",
                        outdir ? "--output-dir: " : "cannot write profiles: ",
                        why ? why : strerror(-r));
                free(why);
                return 1;
        }
        return 0;
}
