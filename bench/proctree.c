/* proctree: run a command and measure every process of its tree separately — peak RSS,
 * CPU time, parent and executable — plus the wall time and the rusage of the whole tree.
 * bench/run uses it to tell the profiled program apart from the profiler's collector
 * processes, which getrusage cannot: ru_maxrss of RUSAGE_CHILDREN is the maximum over the
 * whole tree.
 *
 *   proctree [-i MS] -o OUT.json [--] CMD [ARGS...]
 *
 * Method: sampling from outside.  No process of the tree is stopped or interrupted; what it
 * costs them is the CPU proctree itself uses (a few µs per process per sample, tens of µs
 * per wake-up on a virtual machine: 1-3 % of one core at the default interval).
 * - proctree is the tree's child subreaper, so every orphan of the tree becomes its child.
 * - Every MS milliseconds (-i, default 5) it finds new members: if a pid was allocated
 *   since the last look (the last field of /proc/loadavg), it lists /proc, reads the parent
 *   (/proc/PID/stat) of each pid not listed the time before and adopts those whose parent
 *   is a member or proctree itself.
 * - Then it samples every live member: CPU time from the process's CPU-time clock
 *   (clock_getcpuclockid: ns, all its threads, exited ones included) and the resident size
 *   from /proc/PID/statm; every fifth time, and whenever the size of its text changes (an
 *   exec), also VmHWM, Threads and Name from /proc/PID/status and the executable
 *   (/proc/PID/exe).  statm and status are read through descriptors opened once, which fail
 *   for good when the process is reaped, so a reused pid is never mistaken for it.
 * - In between it sleeps in ppoll on a pidfd per member and a signalfd for SIGCHLD: when a
 *   member exits it wakes at once, takes a last sample (a zombie's CPU time is final) and
 *   records the exit time.  Its own children (the command, orphans) are found with
 *   waitid(WEXITED | WNOWAIT), sampled as zombies, then reaped with wait4.
 *
 * Approximations, each bounded by the interval:
 * - Peak RSS is the larger of VmHWM at the last full sample and the largest resident size
 *   seen at any sample while the process had its memory (a zombie has none): growth in the
 *   last interval before exit is missed.
 * - A process reaped by a parent other than proctree (the program under `allocprof run`)
 *   gets a final CPU sample only if proctree wakes on its pidfd before the parent reaps it;
 *   otherwise its CPU time is the last sample's, at most one interval short.  The CPU time
 *   of proctree's own children and the tree's total (rusage) are exact.
 * - A process that is born and exits within one interval may not be seen at all: its CPU
 *   time counts in the tree's total, but it has no entry of its own.  A process that execs
 *   and exits within one interval keeps the executable seen before.
 * - A process first seen after its parent exited has proctree as its parent (ppid).
 * - start_ns is when a process was first seen (the command's: the fork); end_ns is exact
 *   when its pidfd or SIGCHLD woke proctree, otherwise when the exit was noticed.
 * - threads is the largest thread count seen at once, not the number of threads created.
 *
 * Writes one JSON object to OUT.json; exits 0 if the measurement worked (the command's own
 * status is in the JSON), 1 otherwise.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct proc {
        pid_t pid;
        pid_t ppid;
        int statm_fd;    /* /proc/PID/statm; -1 once the process is done */
        int status_fd;   /* /proc/PID/status; likewise */
        int pidfd;       /* readable when the process has exited; -1 if unavailable */
        clockid_t clock; /* the process's CPU-time clock */
        bool has_clock;
        bool alive;               /* not yet seen to exit */
        long hwm_kb;              /* largest of VmHWM and the resident sizes seen */
        long rss_kb;              /* resident size at the last sample, for the record */
        unsigned long text_pages; /* changes on exec */
        uint64_t full_ns;         /* time of the last full sample */
        int threads;              /* most threads seen at once */
        unsigned samples;
        uint64_t cpu_ns;
        uint64_t start_ns, end_ns;
        char exe[PATH_MAX];
        char comm[32];
};

static struct proc *procs;
static size_t nprocs, cap_procs;
static pid_t self;

/* The pids /proc listed at the previous poll, sorted: only pids not in it are looked at. */
struct pidvec {
        pid_t *v;
        size_t n, cap;
};
static struct pidvec prev_pids, cur_pids;
static DIR *proc_dir;
static int loadavg_fd = -1;
static long last_pid = -1;

static uint64_t interval_ns;      /* between samples */
static uint64_t full_interval_ns; /* between full samples */
static long page_kb;

static void *xrealloc(void *p, size_t n)
{
        void *q = realloc(p, n);
        if (q == NULL) {
                fprintf(stderr, "proctree: out of memory\n");
                exit(1);
        }
        return q;
}

static void pidvec_push(struct pidvec *pv, pid_t pid)
{
        if (pv->n == pv->cap) {
                pv->cap = pv->cap ? 2 * pv->cap : 256;
                pv->v = xrealloc(pv->v, pv->cap * sizeof(*pv->v));
        }
        pv->v[pv->n++] = pid;
}

static int cmp_pid(const void *a, const void *b)
{
        pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
        return (x > y) - (x < y);
}

static bool pidvec_has(const struct pidvec *pv, pid_t pid)
{
        return bsearch(&pid, pv->v, pv->n, sizeof(*pv->v), cmp_pid) != NULL;
}

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int pidfd_open_compat(pid_t pid)
{
#ifdef SYS_pidfd_open
        return (int)syscall(SYS_pidfd_open, pid, 0);
#else
        (void)pid;
        errno = ENOSYS;
        return -1;
#endif
}

static struct proc *find_live(pid_t pid)
{
        for (size_t i = nprocs; i-- > 0;)
                if (procs[i].pid == pid && procs[i].alive)
                        return &procs[i];
        return NULL;
}

/* The figures of the last sample are final from here on. */
static void mark_exited(struct proc *p, uint64_t now)
{
        if (!p->alive)
                return;
        p->alive = false;
        if (p->end_ns == 0)
                p->end_ns = now;
        if (p->statm_fd >= 0)
                close(p->statm_fd);
        if (p->status_fd >= 0)
                close(p->status_fd);
        if (p->pidfd >= 0)
                close(p->pidfd);
        p->statm_fd = p->status_fd = p->pidfd = -1;
}

static struct proc *add_proc(pid_t pid, pid_t ppid, uint64_t now)
{
        if (nprocs == cap_procs) {
                cap_procs = cap_procs ? 2 * cap_procs : 16;
                procs = xrealloc(procs, cap_procs * sizeof(*procs));
        }
        struct proc *p = &procs[nprocs++];
        memset(p, 0, sizeof(*p));
        p->pid = pid;
        p->ppid = ppid;
        p->start_ns = now;
        p->alive = true;
        p->hwm_kb = p->rss_kb = -1;
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/statm", pid);
        p->statm_fd = open(path, O_RDONLY | O_CLOEXEC);
        snprintf(path, sizeof(path), "/proc/%d/status", pid);
        p->status_fd = open(path, O_RDONLY | O_CLOEXEC);
        p->has_clock = clock_getcpuclockid(pid, &p->clock) == 0;
        p->pidfd = pidfd_open_compat(pid);
        if (p->statm_fd < 0 || p->status_fd < 0)
                mark_exited(p, now); /* already reaped: seen too late to measure */
        return p;
}

/* Value of "Key:\tvalue" at the start of line, or -1. */
static long field(const char *line, const char *key)
{
        size_t klen = strlen(key);
        if (strncmp(line, key, klen) != 0 || line[klen] != ':')
                return -1;
        return strtol(line + klen + 1, NULL, 10);
}

/* The slow part of a sample (about 20 µs against 6): VmHWM, Threads and Name from
 * /proc/PID/status, and the executable. */
static void sample_full(struct proc *p, uint64_t now)
{
        p->full_ns = now;
        char buf[8192];
        ssize_t n = pread(p->status_fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
                return;
        buf[n] = '\0';
        char *line = buf;
        while (line != NULL && *line != '\0') {
                char *next = strchr(line, '\n');
                if (next != NULL)
                        *next++ = '\0';
                long v;
                if (strncmp(line, "Name:\t", 6) == 0) {
                        snprintf(p->comm, sizeof(p->comm), "%s", line + 6);
                } else if ((v = field(line, "VmHWM")) >= 0) {
                        if (v > p->hwm_kb)
                                p->hwm_kb = v;
                } else if ((v = field(line, "Threads")) >= 0) {
                        if (v > p->threads)
                                p->threads = (int)v;
                }
                line = next;
        }
        /* Fails for a zombie, which keeps the last executable seen. */
        char path[64], exe[PATH_MAX];
        snprintf(path, sizeof(path), "/proc/%d/exe", p->pid);
        ssize_t l = readlink(path, exe, sizeof(exe) - 1);
        if (l > 0) {
                exe[l] = '\0';
                memcpy(p->exe, exe, (size_t)l + 1);
        }
}

/* One sample of a live member: its CPU clock and statm every time; the rest (sample_full)
 * when asked, every full_interval_ns, and when the size of its text changes (an exec).
 * The CPU clock is read first: if the statm read that follows succeeds, the process was
 * alive (so its pid not reused) at both reads. */
static void sample(struct proc *p, uint64_t now, bool full)
{
        if (!p->alive)
                return;
        struct timespec ts;
        bool cpu_ok = p->has_clock && clock_gettime(p->clock, &ts) == 0;
        char buf[256];
        ssize_t n = pread(p->statm_fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0) {
                mark_exited(p, now); /* reaped by its parent */
                return;
        }
        buf[n] = '\0';
        p->samples++;
        if (cpu_ok) {
                uint64_t ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
                if (ns > p->cpu_ns)
                        p->cpu_ns = ns;
        }
        /* Pages: size resident shared text ...; all 0 for a zombie. */
        unsigned long size, resident, shared, text;
        if (sscanf(buf, "%lu %lu %lu %lu", &size, &resident, &shared, &text) == 4 && size > 0) {
                p->rss_kb = (long)resident * page_kb;
                if (p->rss_kb > p->hwm_kb)
                        p->hwm_kb = p->rss_kb;
                if (text != p->text_pages) {
                        p->text_pages = text;
                        full = true;
                }
        }
        if (full || now - p->full_ns >= full_interval_ns)
                sample_full(p, now);
}

static pid_t read_ppid(pid_t pid)
{
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -1;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return -1;
        buf[n] = '\0';
        char *c = strrchr(buf, ')'); /* comm may contain spaces and parentheses */
        int ppid;
        if (c == NULL || sscanf(c + 1, " %*c %d", &ppid) != 1)
                return -1;
        return (pid_t)ppid;
}

/* Whether a pid was allocated since the last call (a process or a thread created, by
 * anyone): the last field of /proc/loadavg is the last pid allocated. */
static bool pids_changed(void)
{
        char buf[128];
        ssize_t n = loadavg_fd >= 0 ? pread(loadavg_fd, buf, sizeof(buf) - 1, 0) : -1;
        if (n <= 0)
                return true;
        buf[n] = '\0';
        char *sp = strrchr(buf, ' ');
        long v = sp != NULL ? strtol(sp + 1, NULL, 10) : -1;
        if (v > 0 && v == last_pid)
                return false;
        last_pid = v;
        return true;
}

/* Lists /proc into cur_pids (sorted). */
static void list_pids(void)
{
        cur_pids.n = 0;
        rewinddir(proc_dir);
        struct dirent *e;
        while ((e = readdir(proc_dir)) != NULL) {
                if (e->d_name[0] < '1' || e->d_name[0] > '9')
                        continue;
                pidvec_push(&cur_pids, (pid_t)strtol(e->d_name, NULL, 10));
        }
        qsort(cur_pids.v, cur_pids.n, sizeof(*cur_pids.v), cmp_pid);
}

/* Adopts the processes that appeared since the last poll and descend from the tree.  New
 * parents and children can appear in the same poll, in any order: repeat until stable.
 * Listing /proc costs about 1 µs per process on the machine, so it is skipped while no
 * pid has been allocated. */
static void discover(uint64_t now)
{
        static struct pidvec cand_pid, cand_ppid;
        if (!pids_changed())
                return;
        list_pids();
        cand_pid.n = cand_ppid.n = 0;
        for (size_t i = 0; i < cur_pids.n; i++) {
                pid_t pid = cur_pids.v[i];
                if (pidvec_has(&prev_pids, pid) || find_live(pid) != NULL)
                        continue;
                pid_t ppid = read_ppid(pid);
                if (ppid <= 0)
                        continue;
                pidvec_push(&cand_pid, pid);
                pidvec_push(&cand_ppid, ppid);
        }
        bool changed = true;
        while (changed) {
                changed = false;
                for (size_t i = 0; i < cand_pid.n; i++) {
                        pid_t pid = cand_pid.v[i], ppid = cand_ppid.v[i];
                        if (pid == 0 || (ppid != self && find_live(ppid) == NULL))
                                continue;
                        add_proc(pid, ppid, now);
                        cand_pid.v[i] = 0;
                        changed = true;
                }
        }
        struct pidvec t = prev_pids;
        prev_pids = cur_pids;
        cur_pids = t;
}

struct root_state {
        pid_t pid;
        int status; /* -1 until reaped */
        uint64_t end_ns;
};

/* Samples and reaps our zombie children.  Returns false once we have no child left: the
 * whole tree is gone, since every orphan of the tree becomes our child. */
static bool reap(struct root_state *root)
{
        for (;;) {
                siginfo_t si;
                memset(&si, 0, sizeof(si));
                if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0) {
                        if (errno == EINTR)
                                continue;
                        return false; /* ECHILD */
                }
                if (si.si_pid == 0)
                        return true;
                pid_t pid = si.si_pid;
                uint64_t now = now_ns();
                struct proc *p = find_live(pid);
                if (p == NULL) {
                        /* An orphan that came and went between two polls, or a member
                         * already marked as exited. */
                        for (size_t i = nprocs; i-- > 0;)
                                if (procs[i].pid == pid) {
                                        p = &procs[i];
                                        break;
                                }
                        if (p == NULL)
                                p = add_proc(pid, self, now);
                }
                sample(p, now, false); /* a zombie's CPU time is final */
                mark_exited(p, now);
                int st = -1, r;
                while ((r = wait4(pid, &st, 0, NULL)) < 0 && errno == EINTR)
                        ;
                if (r < 0)
                        st = -1;
                if (pid == root->pid) {
                        root->status = st;
                        root->end_ns = p->end_ns;
                }
        }
}

/* Sleeps until the next poll is due, or a member exits, or a child of ours changes state. */
static void wait_events(int sigfd, uint64_t deadline)
{
        static struct pollfd *fds;
        static size_t *who;
        static size_t cap;
        if (cap < nprocs + 1) {
                cap = 2 * (nprocs + 1);
                fds = xrealloc(fds, cap * sizeof(*fds));
                who = xrealloc(who, cap * sizeof(*who));
        }
        size_t n = 0;
        fds[n++] = (struct pollfd){.fd = sigfd, .events = POLLIN};
        for (size_t i = 0; i < nprocs; i++) {
                if (procs[i].alive && procs[i].pidfd >= 0) {
                        who[n] = i;
                        fds[n++] = (struct pollfd){.fd = procs[i].pidfd, .events = POLLIN};
                }
        }
        uint64_t now = now_ns();
        uint64_t left = deadline > now ? deadline - now : 0;
        struct timespec ts = {(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
        if (ppoll(fds, n, &ts, NULL) <= 0)
                return;
        now = now_ns();
        /* First the exited members: their parents may be about to reap them. */
        for (size_t k = 1; k < n; k++) {
                if (fds[k].revents == 0)
                        continue;
                struct proc *p = &procs[who[k]];
                sample(p, now, false); /* a zombie's CPU time is final */
                mark_exited(p, now);
        }
        if (fds[0].revents != 0) {
                struct signalfd_siginfo ssi;
                while (read(sigfd, &ssi, sizeof(ssi)) == (ssize_t)sizeof(ssi))
                        ;
        }
}

static void json_string(FILE *f, const char *s)
{
        fputc('"', f);
        for (; *s != '\0'; s++) {
                unsigned char c = (unsigned char)*s;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        fprintf(f, "\\u%04x", c); /* paths here are ASCII; keep JSON valid */
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

int main(int argc, char **argv)
{
        const char *out = NULL;
        double interval_ms = 5.0;
        int argi = 1;
        while (argi < argc) {
                if (strcmp(argv[argi], "-o") == 0 && argi + 1 < argc) {
                        out = argv[argi + 1];
                        argi += 2;
                } else if (strcmp(argv[argi], "-i") == 0 && argi + 1 < argc) {
                        interval_ms = strtod(argv[argi + 1], NULL);
                        argi += 2;
                } else if (strcmp(argv[argi], "--") == 0) {
                        argi++;
                        break;
                } else {
                        break;
                }
        }
        if (out == NULL || argi >= argc || !(interval_ms > 0 && interval_ms <= 1000)) {
                fprintf(stderr, "usage: proctree [-i MS] -o OUT.json [--] CMD [ARGS...]\n"
                                "  -i MS  sampling interval, 0 < MS <= 1000 (default 5)\n");
                return 2;
        }
        interval_ns = (uint64_t)(interval_ms * 1e6);
        full_interval_ns = 5 * interval_ns;
        page_kb = sysconf(_SC_PAGESIZE) / 1024;
        FILE *of = fopen(out, "we");
        if (of == NULL) {
                fprintf(stderr, "proctree: %s: %s\n", out, strerror(errno));
                return 1;
        }
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
                fprintf(stderr, "proctree: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
                return 1;
        }
        self = getpid();
        proc_dir = opendir("/proc");
        if (proc_dir == NULL) {
                fprintf(stderr, "proctree: /proc: %s\n", strerror(errno));
                return 1;
        }
        loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
        /* What exists now is not ours: never look at it. */
        pids_changed();
        list_pids();
        prev_pids = cur_pids;
        cur_pids = (struct pidvec){0};

        /* SIGCHLD through a signalfd, so that ppoll wakes when a child exits. */
        sigset_t chld, oldmask;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, &oldmask);
        int sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
        if (sigfd < 0) {
                fprintf(stderr, "proctree: signalfd: %s\n", strerror(errno));
                return 1;
        }
        /* Closed by a successful exec (or the child's exit): then sample at once. */
        int sync[2];
        if (pipe2(sync, O_CLOEXEC) != 0) {
                fprintf(stderr, "proctree: pipe: %s\n", strerror(errno));
                return 1;
        }

        struct rusage ru0, ru1;
        getrusage(RUSAGE_CHILDREN, &ru0);
        uint64_t t0 = now_ns();
        pid_t pid = fork();
        if (pid < 0) {
                fprintf(stderr, "proctree: fork: %s\n", strerror(errno));
                return 1;
        }
        if (pid == 0) {
                close(sync[0]);
                sigprocmask(SIG_SETMASK, &oldmask, NULL);
                /* If proctree dies, the command dies with it rather than run on unwatched. */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != self)
                        _exit(125);
                execvp(argv[argi], &argv[argi]);
                fprintf(stderr, "proctree: %s: %s\n", argv[argi], strerror(errno));
                _exit(errno == ENOENT ? 127 : 126);
        }
        close(sync[1]);
        struct root_state root = {.pid = pid, .status = -1};
        struct proc *rp = add_proc(pid, self, t0);
        char c;
        while (read(sync[0], &c, 1) < 0 && errno == EINTR)
                ;
        close(sync[0]);
        sample(rp, now_ns(), true); /* the executable, even of a command that exits at once */

        unsigned long polls = 0;
        uint64_t next_poll = 0;
        for (;;) {
                uint64_t now = now_ns();
                if (now >= next_poll) {
                        discover(now);
                        for (size_t i = 0; i < nprocs; i++)
                                sample(&procs[i], now, false);
                        polls++;
                        next_poll = now + interval_ns;
                }
                if (!reap(&root))
                        break;
                wait_events(sigfd, next_poll);
        }
        uint64_t t_end = root.end_ns;
        for (size_t i = 0; i < nprocs; i++) {
                mark_exited(&procs[i], now_ns()); /* cannot be alive: we have no child */
                if (procs[i].end_ns > t_end)
                        t_end = procs[i].end_ns;
        }
        getrusage(RUSAGE_CHILDREN, &ru1);

        double ut = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                    (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
        double stt = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                     (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
        fprintf(of, "{\"wall_ns\": %llu, \"root_wall_ns\": %llu, ",
                (unsigned long long)(t_end - t0),
                (unsigned long long)(root.end_ns ? root.end_ns - t0 : 0));
        if (root.status >= 0 && WIFEXITED(root.status))
                fprintf(of, "\"exit_status\": %d, \"term_signal\": null, ",
                        WEXITSTATUS(root.status));
        else if (root.status >= 0 && WIFSIGNALED(root.status))
                fprintf(of, "\"exit_status\": null, \"term_signal\": %d, ", WTERMSIG(root.status));
        else
                fprintf(of, "\"exit_status\": null, \"term_signal\": null, ");
        fprintf(of,
                "\"utime_s\": %.6f, \"stime_s\": %.6f, \"tree_maxrss_kb\": %ld, "
                "\"poll_interval_ns\": %llu, \"polls\": %lu, \"procs\": [",
                ut, stt, ru1.ru_maxrss, (unsigned long long)interval_ns, polls);
        for (size_t i = 0; i < nprocs; i++) {
                struct proc *p = &procs[i];
                fprintf(of, "%s\n {\"pid\": %d, \"ppid\": %d, \"exe\": ", i ? "," : "", p->pid,
                        p->ppid);
                json_string(of, p->exe);
                fprintf(of, ", \"comm\": ");
                json_string(of, p->comm);
                fprintf(of,
                        ", \"hwm_kb\": %ld, \"rss_kb\": %ld, \"cpu_ns\": %llu, \"threads\": %d, "
                        "\"samples\": %u, \"start_ns\": %llu, \"end_ns\": %llu}",
                        p->hwm_kb > 0 ? p->hwm_kb : 0, p->rss_kb > 0 ? p->rss_kb : 0,
                        (unsigned long long)p->cpu_ns, p->threads, p->samples,
                        (unsigned long long)(p->start_ns - t0),
                        (unsigned long long)(p->end_ns ? p->end_ns - t0 : 0));
        }
        fprintf(of, "]}\n");
        if (fclose(of) != 0) {
                fprintf(stderr, "proctree: %s: %s\n", out, strerror(errno));
                return 1;
        }
        return root.status >= 0 ? 0 : 1;
}
