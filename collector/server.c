/* The collector's event loop (see server.h).  Registration messages are untrusted:
 * fixed size, one descriptor, peer identity from SO_PEERCRED, and a deadline; a client
 * that misbehaves loses its connection and delays nobody.  Control clients (the CLI:
 * ps, snapshots, attach, run sessions) are served in control.c; finished images and
 * snapshots are symbolized on the background thread (warm.h), never in the loop.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "allocprof/clock.h"
#include "allocprof/ring.h"
#include "server-internal.h"
#include "warm.h"

/* How often registered processes are checked for an exec into an unprofilable image that
 * their agent did not tell of (an exec by a system call of the program's own, an agent
 * before it told): one it told of is checked every round. */
#define EXE_CHECK_NS (100ull * 1000 * 1000)

void ap_collector_set_warmer(struct ap_collector *c, struct ap_warmer *w)
{
        c->warmer = w;
}

int ap_collector_set_output_dir(struct ap_collector *c, const char *dir)
{
        char *copy = strdup(dir);
        if (copy == NULL)
                return -ENOMEM;
        free(c->output_dir);
        c->output_dir = copy;
        return 0;
}

static void warm_module(void *ud, const char *path, const uint8_t *build_id, size_t len)
{
        ap_warmer_add(ud, path, build_id, len);
}

static void warm_addrs(void *ud, const char *path, const uint8_t *build_id, size_t len,
                       const uint64_t *offsets, size_t n)
{
        ap_warmer_add_addrs(ud, path, build_id, len, offsets, n);
}

void ap_collector_set_note(struct ap_collector *c, ap_collector_note_fn fn, void *userdata)
{
        c->note = fn;
        c->note_userdata = userdata;
}

static char *proc_exe(pid_t pid)
{
        char link[64], buf[4096];
        snprintf(link, sizeof(link), "/proc/%d/exe", (int)pid);
        ssize_t n = readlink(link, buf, sizeof(buf) - 1);
        if (n <= 0)
                return NULL;
        buf[n] = '\0';
        return strdup(buf);
}

/* The start time of a running process, or 0 if there is no such process or it is a
 * zombie: a process image that has ended.  With the start time, a pid reused by another
 * process is not taken for it. */
static uint64_t proc_start_time(pid_t pid)
{
        struct ap_proc_stat st;
        if (!ap_proc_stat(pid, &st) || st.state == 'Z' || st.state == 'X' || st.state == 'x')
                return 0;
        return st.start;
}

void ap_collector_set_accept(struct ap_collector *c, ap_collector_accept_fn fn, void *userdata)
{
        c->accept = fn;
        c->accept_userdata = userdata;
}

void ap_collector_accept_any_user(struct ap_collector *c)
{
        c->any_user = true;
}

static struct ap_collector *collector_alloc(ap_collector_done_fn done, void *userdata)
{
        struct ap_collector *c = calloc(1, sizeof(*c));
        if (c == NULL)
                return NULL;
        c->done = done;
        c->userdata = userdata;
        c->listen_fd = -1;
        c->drain_wait_ms = -1;
        c->next_id = 1;
        c->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        int r = c->event_fd < 0 ? errno : pthread_mutex_init(&c->done_lock, NULL);
        if (r != 0) {
                if (c->event_fd >= 0)
                        close(c->event_fd);
                free(c);
                errno = r; /* EMFILE (no descriptor left) is not "out of memory" */
                return NULL;
        }
        return c;
}

/* A socket file left by a collector that died: nobody answers on it. */
static bool socket_is_stale(const struct sockaddr_un *sa)
{
        struct stat st;
        if (lstat(sa->sun_path, &st) < 0 || !S_ISSOCK(st.st_mode))
                return false; /* not a socket: never ours to replace */
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return false;
        bool stale = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 &&
                     errno == ECONNREFUSED;
        close(fd);
        return stale;
}

int ap_collector_new(const char *socket_path, ap_collector_done_fn done, void *userdata,
                     struct ap_collector **ret, char **err)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(socket_path) >= sizeof(sa.sun_path)) {
                *err = ap_asprintf("socket path too long: %s", socket_path);
                return -ENAMETOOLONG;
        }
        strcpy(sa.sun_path, socket_path);
        struct ap_collector *c = collector_alloc(done, userdata);
        if (c == NULL || (c->path = strdup(socket_path)) == NULL) {
                int e = c == NULL && errno != 0 ? errno : ENOMEM;
                ap_collector_free(c);
                *err = ap_asprintf("%s", strerror(e));
                return -e;
        }
        /* The socket appears at its path only once it listens (bound and listening
         * under a temporary name, then hard-linked into place): whoever sees the file
         * can connect.  link() fails if the path exists, so of two collectors started
         * at once only one gets it. */
        struct sockaddr_un tmp = {.sun_family = AF_UNIX};
        int len = snprintf(tmp.sun_path, sizeof(tmp.sun_path), "%s.%ld.tmp", socket_path,
                           (long)getpid());
        bool direct = len < 0 || (size_t)len >= sizeof(tmp.sun_path);
        const struct sockaddr_un *bind_sa = direct ? &sa : &tmp;
        c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int r = c->listen_fd < 0 ? -errno : 0;
        if (r == 0 && !direct)
                (void)unlink(tmp.sun_path); /* a leftover of a pid before us */
        if (r == 0 && bind(c->listen_fd, (const struct sockaddr *)bind_sa, sizeof(*bind_sa)) < 0)
                r = -errno;
        if (r == -EADDRINUSE && direct && socket_is_stale(&sa) && unlink(socket_path) == 0)
                r = bind(c->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
        if (r == 0 && listen(c->listen_fd, 128) < 0)
                r = -errno;
        if (r == 0 && !direct) {
                r = link(tmp.sun_path, socket_path) < 0 ? -errno : 0;
                if (r == -EEXIST && socket_is_stale(&sa) && unlink(socket_path) == 0)
                        r = link(tmp.sun_path, socket_path) < 0 ? -errno : 0;
                (void)unlink(tmp.sun_path);
                if (r == -EEXIST)
                        r = -EADDRINUSE;
        }
        if (r == 0) {
                *ret = c;
                return 0;
        }
        struct stat st;
        if (r == -EADDRINUSE && lstat(socket_path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
                *err = ap_asprintf("%s exists and is not a socket: not replaced", socket_path);
                r = -EEXIST;
        } else if (r == -EADDRINUSE) {
                *err = ap_asprintf("another collector is listening on %s", socket_path);
        } else {
                *err = ap_asprintf("cannot listen on %s: %s", socket_path, strerror(-r));
        }
        free(c->path);
        c->path = NULL; /* the path is not ours to unlink */
        ap_collector_free(c);
        return r;
}

int ap_collector_new_fd(int listen_fd, ap_collector_done_fn done, void *userdata,
                        struct ap_collector **ret)
{
        struct ap_collector *c = collector_alloc(done, userdata);
        if (c == NULL)
                return -ENOMEM;
        c->listen_fd = listen_fd;
        *ret = c;
        return 0;
}

void ap_collector_free(struct ap_collector *c)
{
        if (c == NULL)
                return;
        /* Jobs on the background thread point back at us. */
        ap_warmer_wait(c->warmer);
        if (c->listen_fd >= 0)
                close(c->listen_fd);
        if (c->path != NULL)
                unlink(c->path);
        free(c->path);
        free(c->output_dir);
        for (size_t i = 0; i < c->npending; i++)
                close(c->pending[i].fd);
        for (size_t i = 0; i < c->nprocs; i++) {
                if (c->procs[i].pidfd >= 0)
                        close(c->procs[i].pidfd);
                free(c->procs[i].exe);
                ap_process_free(c->procs[i].p);
        }
        free(c->procs);
        /* Jobs still running hold pointers to us: the owner stops the warmer first. */
        ap_control_free_all(c);
        ap_collector_finished_clear(c);
        free(c->pfds);
        close(c->event_fd);
        pthread_mutex_destroy(&c->done_lock);
        free(c);
}

size_t ap_collector_nprocs(const struct ap_collector *c)
{
        return c->nprocs;
}

bool ap_collector_has_pid(const struct ap_collector *c, int pid)
{
        for (size_t i = 0; i < c->nprocs; i++)
                if (ap_process_pid(c->procs[i].p) == pid)
                        return true;
        return false;
}

static void read_cmdline(struct ap_process *p, pid_t pid)
{
        char path[64], *buf = NULL;
        snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
        ssize_t n = ap_read_file(path, &buf, 1 << 16);
        if (n <= 0) {
                free(buf);
                return;
        }
        char *argv[256];
        int argc = 0;
        for (char *s = buf; s < buf + n && argc < 256; s += strlen(s) + 1)
                argv[argc++] = s;
        ap_process_set_command(p, argv, argc);
        free(buf);
}

/* Hands a finished image to its run session or to the owner, and forgets it: procs[i]
 * is replaced by the last entry. */
void ap_collector_retire(struct ap_collector *c, size_t i, bool by_exec)
{
        struct tracked t = c->procs[i];
        c->procs[i] = c->procs[--c->nprocs];
        ap_process_mark_ended(t.p);
        /* Still running (exec'ed elsewhere, or we are letting it go): nobody drains its
         * rings any more, so its agent must stop recording rather than wait for us, and
         * stop before the last drain, which would otherwise never end. */
        if (!t.ended)
                ap_process_set_mode(t.p, AP_MODE_OFF, 0);
        for (int round = 0; round < 64 && ap_process_drain(t.p, true) > 0; round++)
                ;
        if (t.pidfd >= 0)
                close(t.pidfd);
        free(t.exe);
        ap_collector_finished_add(c, &t);
        if (!ap_control_image_done(c, &t, by_exec))
                c->done(c->userdata, t.p, by_exec);
}

/* procs[i]'s image ended by an exec of path (NULL: not known) into a program that did not
 * register: it is finalized as such, and, unless `quiet`, that is said, with why (NULL:
 * not known) if anyone listens. */
static void exec_unprofiled(struct ap_collector *c, size_t i, const char *path, const char *why,
                            bool quiet)
{
        struct tracked *tp = &c->procs[i];
        pid_t pid = ap_process_pid(tp->p);
        if (!quiet && (c->note != NULL || tp->session != 0)) {
                char *msg;
                if (why != NULL)
                        msg = ap_asprintf(
                                "pid %d exec'ed %s, which is %s: " AP_NOTE_EXEC_UNPROFILED,
                                (int)pid, path ? path : "a program", why);
                else
                        msg = ap_asprintf("pid %d exec'ed %s, which did not register with the "
                                          "collector (statically linked, setuid, file "
                                          "capabilities, no LD_PRELOAD in its environment, or "
                                          "a seccomp filter): " AP_NOTE_EXEC_UNPROFILED,
                                          (int)pid, path ? path : "a program");
                /* A run session's client prints it, as a private collector would. */
                if (msg != NULL && !ap_control_note(c, tp, msg) && c->note != NULL)
                        c->note(c->note_userdata, (int)pid, msg);
                free(msg);
        }
        ap_process_set_exit(tp->p, -1, 0);
        (void)ap_process_set_exec(tp->p, path, false); /* no memory: the path goes unsaid */
        ap_collector_retire(c, i, true);
}

/* procs[i] has ended, and its agent said an exec began (the pid lives on in another
 * program) into `said` ("" when it could not tell): by the time the pid ended, no new
 * image had registered, so the program could not be profiled.  Why, when its path says
 * it (an absolute one: a relative one was the process's). */
static void exec_ended(struct ap_collector *c, size_t i, const char *said)
{
        enum ap_exe_why why = said[0] == '/' ? ap_exe_unprofilable(said) : AP_EXE_PROFILABLE;
        exec_unprofiled(c, i, said[0] != '\0' ? said : NULL,
                        why != AP_EXE_PROFILABLE ? ap_exe_why_text(why) : NULL, false);
}

static void say_unregistered(struct ap_collector *c, pid_t pid, uid_t uid, const char *why);

/* Returns the reply to send: AP_REPLY_ACCEPTED if the process is now tracked. */
static uint32_t register_process(struct ap_collector *c, int memfd, pid_t pid, uid_t uid,
                                 const struct ap_hello *hello)
{
        struct ap_process *p = NULL;
        char *err = NULL;
        if (c->accept != NULL && !c->accept(c->accept_userdata, pid)) {
                close(memfd);
                return AP_REPLY_DECLINED;
        }
        bool declined = false;
        uint64_t session = ap_control_session_for(c, pid, hello->ppid, uid, &declined);
        if (declined) {
                close(memfd);
                return AP_REPLY_DECLINED;
        }
        int r = ap_process_new(memfd, pid, hello, &p, &err);
        if (r == -EPROTO) {
                free(err); /* a broken agent: nothing to profile */
                return AP_REPLY_DECLINED;
        }
        if (r < 0) {
                /* Our failure, not the agent's (no memory, or no address space left under
                 * a limit that binds us too): a program that goes unprofiled for it is
                 * told so, and so is the user. */
                struct rlimit as;
                char lim[96] = "";
                if (r == -ENOMEM && getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY)
                        snprintf(lim, sizeof(lim),
                                 " (its address-space limit, ulimit -v, is %llu MiB)",
                                 (unsigned long long)(as.rlim_cur >> 20));
                char *why = ap_asprintf("the collector %s: %s%s", err ? err : "failed",
                                        strerror(-r), lim);
                say_unregistered(c, pid, uid, why ? why : "the collector is out of memory");
                free(why);
                free(err);
                return AP_REPLY_FAILED;
        }
        /* Same pid registering again: the previous image exec'ed into this one. */
        char *exe = proc_exe(pid);
        for (size_t i = 0; i < c->nprocs; i++) {
                if (ap_process_pid(c->procs[i].p) == pid) {
                        ap_process_set_exit(c->procs[i].p, -1, 0);
                        (void)ap_process_set_exec(c->procs[i].p, exe, true);
                        ap_collector_retire(c, i, true);
                        break;
                }
        }
        read_cmdline(p, pid);
        if (AP_GROW(c->procs, c->procs_cap, c->nprocs + 1) < 0) {
                ap_process_free(p);
                free(exe);
                say_unregistered(c, pid, uid, "the collector is out of memory");
                return AP_REPLY_FAILED;
        }
        /* Where pidfd_open is missing (Linux before 5.3) or refused (a container's
         * seccomp profile, valgrind), the process's /proc entry is watched each round. */
        int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        uint64_t start = pidfd < 0 && errno != ESRCH ? proc_start_time(pid) : 0;
        c->idle_rounds = 0; /* a new program: look at its ring again soon */
        c->drain_wait_ms = 1;
        c->procs[c->nprocs++] = (struct tracked){.p = p,
                                                 .pidfd = pidfd,
                                                 .proc_start = start,
                                                 .ended = pidfd < 0 && start == 0,
                                                 .exe = exe,
                                                 .uid = uid,
                                                 .ppid = (pid_t)hello->ppid,
                                                 .session = session};
        return AP_REPLY_ACCEPTED;
}

/* An agent that could not register said why (wire.h): said on, if anyone listens (run's
 * note, or its session's client).  The message is the process's own word, checked as
 * any: an unknown reason or errno is not shown. */
static void unregistered(struct ap_collector *c, pid_t pid, uid_t uid,
                         const struct ap_unregistered *u)
{
        if (u->layout_version != AP_LAYOUT_VERSION || u->why < 1 || u->why > AP_UNREG__MAX ||
            u->err >= 4096 || (c->accept != NULL && !c->accept(c->accept_userdata, pid)))
                return;
        const uint64_t initial = ap_shm_registration_bytes((uint64_t)getpagesize());
        const char *err = u->err != 0 ? strerror((int)u->err) : "failed";
        char why[256];
        switch (u->why) {
        case AP_UNREG_AS_LIMIT:
                snprintf(why, sizeof(why),
                         "its address-space limit (ulimit -v, %llu MiB) is less than %d times "
                         "the agent's %llu MiB of shared memory",
                         (unsigned long long)(u->limit >> 20), AP_AS_SHARE,
                         (unsigned long long)(initial >> 20));
                break;
        case AP_UNREG_FSIZE_LIMIT:
                snprintf(why, sizeof(why),
                         "its file-size limit (ulimit -f, %llu KiB) is below the size of the "
                         "agent's shared memory (%llu MiB, most of it never written)",
                         (unsigned long long)(u->limit >> 10),
                         (unsigned long long)(ap_shm_total_bytes() >> 20));
                break;
        case AP_UNREG_MEMFD:
                snprintf(why, sizeof(why),
                         "memfd_create, which the agent's shared memory needs, failed: %s%s", err,
                         u->err == EPERM || u->err == ENOSYS || u->err == EACCES
                                 ? " (a seccomp filter or a sandbox that forbids it?)"
                                 : "");
                break;
        default:
                snprintf(why, sizeof(why), "the agent could not size or map its shared memory: %s",
                         err);
                break;
        }
        say_unregistered(c, pid, uid, why);
        /* An exec'ed image: the one before it ends here, and the note says what became of
         * the program. */
        for (size_t i = 0; i < c->nprocs; i++) {
                if (ap_process_pid(c->procs[i].p) == pid) {
                        char *exe = proc_exe(pid);
                        exec_unprofiled(c, i, exe, NULL, true);
                        free(exe);
                        break;
                }
        }
}

/* Says that pid could not register, and why (one line, see AP_NOTE_UNREGISTERED). */
static void say_unregistered(struct ap_collector *c, pid_t pid, uid_t uid, const char *why)
{
        /* (Gone already, a short-lived program's exe is not known.) */
        char *exe = proc_exe(pid);
        char *msg = ap_asprintf("pid %d%s%s%s " AP_NOTE_UNREGISTERED ": %s: it runs unprofiled",
                                (int)pid, exe ? " (" : "", exe ? ap_path_base(exe) : "",
                                exe ? ")" : "", why);
        if (msg != NULL && !ap_control_note_pid(c, pid, uid, msg) && c->note != NULL)
                c->note(c->note_userdata, (int)pid, msg);
        free(msg);
        free(exe);
}

/* Reads the hello of a pending connection.  Returns true when the connection is done
 * with (registered or rejected), false to keep waiting. */
static bool read_hello(struct ap_collector *c, int fd)
{
        /* A control client speaks first with '{': it becomes a client (control.c). */
        char first;
        ssize_t peeked = recv(fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
        if (peeked < 0 && (errno == EAGAIN || errno == EINTR))
                return false;
        if (peeked == 1 && first == '{') {
                ap_control_add_client(c, fd);
                return true;
        }
        struct ap_hello hello;
        int fds[AP_FDS_MAX], msg_flags;
        size_t nfds;
        ssize_t n = ap_recv_fds(fd, &hello, sizeof(hello), MSG_DONTWAIT, fds, &nfds, &msg_flags);
        if (n == -EAGAIN || n == -EINTR)
                return false;
        /* Only one descriptor is expected: the first. */
        int memfd = nfds > 0 ? fds[0] : -1;
        for (size_t k = 1; k < nfds; k++)
                close(fds[k]);
        struct ucred cred;
        socklen_t len = sizeof(cred);
        bool peer_ok = n == (ssize_t)sizeof(hello) && !(msg_flags & (MSG_TRUNC | MSG_CTRUNC)) &&
                       getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
                       (c->any_user || cred.uid == geteuid() || cred.uid == 0);
        if (peer_ok && memfd < 0 && hello.magic == AP_UNREG_MAGIC) {
                struct ap_unregistered u;
                memcpy(&u, &hello, sizeof(u));
                unregistered(c, cred.pid, cred.uid, &u);
                return true; /* it waits for no reply */
        }
        bool ok = peer_ok && memfd >= 0;
        if (ok) {
                struct stat st;
                /* Only a memfd-like regular file will do: no sockets, devices, fifos. */
                ok = fstat(memfd, &st) == 0 && S_ISREG(st.st_mode);
        }
        uint32_t status = AP_REPLY_DECLINED;
        if (ok)
                status = register_process(c, memfd, cred.pid, cred.uid, &hello);
        else if (memfd >= 0)
                close(memfd);
        /* The agent waits for this (bounded); a full socket buffer is impossible here. */
        struct ap_reply reply = {.magic = AP_REPLY_MAGIC, .status = status};
        (void)!send(fd, &reply, sizeof(reply), MSG_DONTWAIT | MSG_NOSIGNAL);
        return true;
}

static void accept_all(struct ap_collector *c)
{
        for (;;) {
                int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0)
                        return;
                if (read_hello(c, fd)) {
                        if (!ap_control_owns_fd(c, fd))
                                close(fd);
                        continue;
                }
                if (c->npending == PENDING_MAX) {
                        close(fd); /* flooded: the oldest honest agents have priority */
                        continue;
                }
                c->pending[c->npending++] = (struct pending){.fd = fd, .since = ap_clock_mono_ns()};
        }
}

/* A round drains every record but the youngest, so the longer the sleep, the more
 * records each round takes, and the cheaper each one is: the drain's tables stay in cache
 * and the fixed cost of a round is shared (measured on cc1: 9.5 M events/s of drain time
 * at 1,100 records a round, 10.4 M/s at 8,500).  But no ring may fill up meanwhile, so
 * the sleep lets the busiest ring, at the rate it has just filled, reach an eighth of its
 * size (a quarter let two churn threads, which share two cores with the collector, wait
 * for ring space): 1 to AP_DRAIN_WAIT_MAX_MS ms, and none at all when it already held
 * half. */
int ap_drain_wait_ms(uint64_t backlog, uint64_t since_ns)
{
        if (backlog >= AP_RING_BYTES / 2)
                return 0;
        const uint64_t target = AP_RING_BYTES / 8;
        /* since_ns * target / backlog, once it cannot overflow */
        if (backlog == 0 || since_ns / backlog >= AP_DRAIN_WAIT_MAX_MS * 1000000ull / target)
                return AP_DRAIN_WAIT_MAX_MS;
        uint64_t ms = since_ns * target / backlog / 1000000;
        return ms < 1 ? 1 : (int)ms;
}

/* Rounds that move nothing, while processes are registered, sleep 1, 2, 4, 8, 16 ms, then
 * AP_DRAIN_WAIT_MAX_MS: agents do not wake us, and a program that starts allocating
 * right after it registered (or after a quiet spell) fills its ring in a few ms.  With
 * the full wait from the first idle round, every short program that allocates at once
 * waited 20-25 ms for ring space in full mode (22 ms of a 56 ms run, measured), and lost
 * records in sampled mode at small intervals. */
#define IDLE_DOUBLINGS 5 /* 1 ms doubled this often reaches AP_DRAIN_WAIT_MAX_MS */

int ap_idle_wait_ms(unsigned idle_rounds)
{
        int ms = idle_rounds < IDLE_DOUBLINGS ? 1 << idle_rounds : AP_DRAIN_WAIT_MAX_MS;
        return ms < AP_DRAIN_WAIT_MAX_MS ? ms : AP_DRAIN_WAIT_MAX_MS;
}

/* The sleep after a round (-1: none of our own, the caller's timeout), from the last one:
 * after a round that moved records, what the busiest ring's fill rate allows
 * (ap_drain_wait_ms) but at most twice the last sleep: a rate measured over a quiet spell
 * (a program's first records, then nothing while it starts up) says little about the
 * burst that may follow (sqlite3 waited 4-15 ms of a 46 ms run behind the 25 ms sleep
 * its start-up records had earned).  After a round that moved nothing, the idle back-off
 * (ap_idle_wait_ms), while processes are registered. */
int ap_next_wait_ms(int last_ms, bool moved, uint64_t backlog, uint64_t since_ns,
                    unsigned *idle_rounds, bool have_procs)
{
        if (moved) {
                *idle_rounds = 0;
                int w = ap_drain_wait_ms(backlog, since_ns);
                int ramp = last_ms > 0 ? 2 * last_ms : 1;
                return w < ramp ? w : ramp;
        }
        if (!have_procs)
                return -1;
        int w = ap_idle_wait_ms(*idle_rounds);
        if (*idle_rounds < IDLE_DOUBLINGS)
                ++*idle_rounds;
        return w;
}

int ap_collector_step(struct ap_collector *c, int timeout_ms, int extra_fd)
{
        size_t need = 3 + c->npending + c->nprocs + c->nclients;
        if (AP_GROW(c->pfds, c->pfds_cap, need) < 0)
                return -ENOMEM;
        size_t n = 0;
        c->pfds[n++] = (struct pollfd){.fd = c->listen_fd, .events = POLLIN};
        c->pfds[n++] = (struct pollfd){.fd = extra_fd, .events = POLLIN};
        c->pfds[n++] = (struct pollfd){.fd = c->event_fd, .events = POLLIN};
        size_t cli0 = n;
        n += ap_control_pollfds(c, c->pfds + n);
        size_t ncli = n - cli0;
        size_t pend0 = n;
        for (size_t i = 0; i < c->npending; i++)
                c->pfds[n++] = (struct pollfd){.fd = c->pending[i].fd, .events = POLLIN};
        size_t proc0 = n;
        for (size_t i = 0; i < c->nprocs; i++)
                c->pfds[n++] = (struct pollfd){.fd = c->procs[i].pidfd, .events = POLLIN};

        /* While data flows, come back before the rings fill up (ap_drain_wait_ms); while
         * processes are registered, at least every AP_DRAIN_WAIT_MAX_MS (agents do not wake
         * us). */
        int t = c->drain_wait_ms >= 0 && timeout_ms > c->drain_wait_ms ? c->drain_wait_ms
                                                                         : timeout_ms;
        if ((c->nprocs > 0 || ap_control_wants_ticks(c)) && t > AP_DRAIN_WAIT_MAX_MS)
                t = AP_DRAIN_WAIT_MAX_MS;
        int r = poll(c->pfds, n, t);
        if (r < 0 && errno != EINTR)
                return -errno;
        bool extra = r > 0 && extra_fd >= 0 && (c->pfds[1].revents & POLLIN);
        if (r > 0 && (c->pfds[2].revents & POLLIN)) {
                uint64_t v;
                (void)!read(c->event_fd, &v, sizeof(v));
        }
        /* Clients before the processes: a snapshot asked for now sees this round. */
        ap_control_handle(c, r > 0 ? c->pfds + cli0 : NULL, ncli);

        /* Pending connections first (their pollfds are indexed before accept_all adds). */
        uint64_t now = ap_clock_mono_ns();
        size_t keep = 0;
        for (size_t i = 0; i < c->npending; i++) {
                struct pending pd = c->pending[i];
                bool done = false;
                if (r > 0 && c->pfds[pend0 + i].revents)
                        done = read_hello(c, pd.fd);
                /* Out of time: one last look (its hello may have arrived while this
                 * round was busy elsewhere), then it goes. */
                if (!done && now > pd.since && now - pd.since > PENDING_DEADLINE_NS) {
                        (void)read_hello(c, pd.fd);
                        done = true;
                }
                if (!done)
                        c->pending[keep++] = pd;
                else if (!ap_control_owns_fd(c, pd.fd))
                        close(pd.fd);
        }
        c->npending = keep;
        for (size_t i = 0; i < c->nprocs && proc0 + i < n; i++) {
                struct tracked *tp = &c->procs[i];
                if (r > 0 && (c->pfds[proc0 + i].revents & (POLLIN | POLLHUP | POLLERR)))
                        tp->ended = true;
                else if (tp->pidfd < 0 && !tp->ended &&
                         proc_start_time(ap_process_pid(tp->p)) != tp->proc_start)
                        tp->ended = true;
        }
        if (r > 0 && (c->pfds[0].revents & POLLIN))
                accept_all(c);

        /* An image that exec'ed a program which will never register (static, setuid) is
         * over: finalize it now and say why nothing follows.  Looked at each round when
         * its agent said an exec began, else every EXE_CHECK_NS. */
        bool check_all = now - c->exe_checked > EXE_CHECK_NS;
        if (check_all)
                c->exe_checked = now;
        for (size_t i = c->nprocs; i-- > 0;) {
                struct tracked *tp = &c->procs[i];
                if (tp->ended || tp->exe == NULL ||
                    !(check_all || ap_process_exec_begun(tp->p, NULL, 0)))
                        continue;
                char *exe = proc_exe(ap_process_pid(tp->p));
                if (exe == NULL || strcmp(exe, tp->exe) == 0) {
                        free(exe);
                        continue;
                }
                enum ap_exe_why why = ap_exe_unprofilable(exe);
                if (why != AP_EXE_PROFILABLE) {
                        exec_unprofiled(c, i, exe, ap_exe_why_text(why), false);
                        free(exe);
                } else {
                        /* A program that may register yet: judged once. */
                        free(tp->exe);
                        tp->exe = exe;
                }
        }

        long moved = 0;
        uint64_t backlog = 0;
        for (size_t i = 0; i < c->nprocs; i++) {
                moved += ap_process_drain(c->procs[i].p, false);
                uint64_t b = ap_process_backlog(c->procs[i].p);
                if (b > backlog)
                        backlog = b;
                if (c->warmer != NULL)
                        ap_process_take_new_modules(c->procs[i].p, warm_module, c->warmer);
                ap_process_take_new_addrs(c->procs[i].p, c->warmer ? warm_addrs : NULL, c->warmer);
        }
        c->drain_wait_ms = ap_next_wait_ms(c->drain_wait_ms, moved > 0, backlog,
                                           now - c->last_round_ns, &c->idle_rounds, c->nprocs > 0);
        c->last_round_ns = now;
        for (size_t i = c->nprocs; i-- > 0;) {
                char said[AP_EXEC_PATH_BYTES];
                if (!c->procs[i].ended)
                        continue;
                if (ap_process_exec_begun(c->procs[i].p, said, sizeof(said)))
                        exec_ended(c, i, said);
                else
                        ap_collector_retire(c, i, false);
        }
        /* Timed detaches, finishing run sessions, finished jobs, client deadlines. */
        ap_control_tick(c, now);
        return extra ? 1 : 0;
}

void ap_collector_flush_all(struct ap_collector *c)
{
        /* Run sessions lose their processes to the owner (allocprofd writes them). */
        ap_control_drop_sessions(c);
        accept_all(c);
        for (size_t i = 0; i < c->npending; i++) {
                read_hello(c, c->pending[i].fd);
                if (!ap_control_owns_fd(c, c->pending[i].fd))
                        close(c->pending[i].fd);
        }
        c->npending = 0;
        while (c->nprocs > 0)
                ap_collector_retire(c, c->nprocs - 1, false);
}
