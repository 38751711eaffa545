/* proctree: run a command and measure every process of its tree separately — peak RSS
 * (VmHWM), CPU time (sum of the on-CPU time of all its threads), parent and executable —
 * plus the wall time and the rusage of the whole tree.  bench/run uses it to tell the
 * profiled program apart from the profiler's collector processes, which getrusage cannot:
 * ru_maxrss of RUSAGE_CHILDREN is the maximum over the whole tree.
 *
 *   proctree -o OUT.json [--] CMD [ARGS...]
 *
 * Method: the command and all its descendants (fork, vfork, clone) are traced with ptrace,
 * but only stop at thread/process creation, exec and exit (no syscall or single-step
 * tracing), so the traced programs run at full speed between those events.  At each
 * thread's PTRACE_EVENT_EXIT stop the thread is about to exit but still owns its address
 * space, so /proc/TGID/status VmHWM is the process's final peak and
 * /proc/TGID/task/TID/sched se.sum_exec_runtime its final CPU time (ns).  We are also the
 * tree's child subreaper, so orphans (a background pipeline of a shell script) are reaped
 * here and their rusage counts in RUSAGE_CHILDREN.  Signals are passed through unchanged.
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
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 4096
#define MAX_TASKS 65536

struct task_time {
        pid_t tid;
        uint64_t ns;
};

struct proc {
        pid_t pid;
        pid_t ppid;
        long hwm_kb;
        long rss_kb;             /* VmRSS at exit, for the record */
        struct task_time *tasks; /* latest CPU time seen per thread */
        int ntasks, cap_tasks;
        uint64_t start_ns, end_ns;
        char exe[PATH_MAX];
        char comm[32];
        bool exited;
};

static struct proc procs[MAX_PROCS];
static int nprocs;

/* Tasks (threads) we have seen stop at least once: the first SIGSTOP of an
 * auto-attached task is the attach stop, not a real signal. */
static pid_t seen[MAX_TASKS];
static int nseen;

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool seen_task(pid_t tid)
{
        for (int i = nseen - 1; i >= 0; i--)
                if (seen[i] == tid)
                        return true;
        return false;
}

static void mark_seen(pid_t tid)
{
        if (!seen_task(tid) && nseen < MAX_TASKS)
                seen[nseen++] = tid;
}

static struct proc *find_proc(pid_t pid)
{
        for (int i = nprocs - 1; i >= 0; i--)
                if (procs[i].pid == pid && !procs[i].exited)
                        return &procs[i];
        return NULL;
}

static struct proc *add_proc(pid_t pid, pid_t ppid)
{
        struct proc *p = find_proc(pid);
        if (p != NULL)
                return p;
        if (nprocs == MAX_PROCS)
                return NULL;
        p = &procs[nprocs++];
        memset(p, 0, sizeof(*p));
        p->pid = pid;
        p->ppid = ppid;
        p->start_ns = now_ns();
        return p;
}

/* Records the parent of a new process.  The child's own stops may be reported before
 * its parent's fork event (it may even have exited already): then its entry exists with
 * no parent yet. */
static void set_parent(pid_t pid, pid_t ppid)
{
        for (int i = nprocs - 1; i >= 0; i--) {
                if (procs[i].pid == pid) {
                        if (procs[i].ppid == 0)
                                procs[i].ppid = ppid;
                        return;
                }
        }
        add_proc(pid, ppid);
}

/* Reads "Key:  value" from a /proc status file. */
static long status_field_at(const char *path, const char *key)
{
        char line[256];
        size_t klen = strlen(key);
        long v = -1;
        FILE *f = fopen(path, "re");
        if (f == NULL)
                return -1;
        while (fgets(line, sizeof(line), f) != NULL) {
                if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
                        v = strtol(line + klen + 1, NULL, 10);
                        break;
                }
        }
        fclose(f);
        return v;
}

static long status_field(pid_t pid, const char *key)
{
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/status", pid);
        return status_field_at(path, key);
}

/* CPU time of one thread in ns: se.sum_exec_runtime (ms with 6 decimals) from
 * /proc/TGID/task/TID/sched; falls back to utime+stime in clock ticks from .../stat. */
static uint64_t thread_cpu_ns(pid_t tgid, pid_t tid)
{
        char path[96], line[256];
        snprintf(path, sizeof(path), "/proc/%d/task/%d/sched", tgid, tid);
        FILE *f = fopen(path, "re");
        if (f != NULL) {
                while (fgets(line, sizeof(line), f) != NULL) {
                        if (strncmp(line, "se.sum_exec_runtime", 19) == 0) {
                                char *colon = strchr(line, ':');
                                if (colon == NULL)
                                        break;
                                char *dot;
                                unsigned long long ms = strtoull(colon + 1, &dot, 10);
                                unsigned long long frac = 0;
                                int digits = 0;
                                if (*dot == '.') {
                                        for (char *c = dot + 1;
                                             *c >= '0' && *c <= '9' && digits < 6; c++, digits++)
                                                frac = frac * 10 + (unsigned)(*c - '0');
                                }
                                while (digits++ < 6)
                                        frac *= 10;
                                fclose(f);
                                return ms * 1000000ull + frac;
                        }
                }
                fclose(f);
        }
        snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", tgid, tid);
        f = fopen(path, "re");
        if (f == NULL)
                return 0;
        char buf[1024];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *p = strrchr(buf, ')'); /* comm may contain spaces */
        if (p == NULL)
                return 0;
        unsigned long long ut = 0, st = 0;
        /* after ")": state(3) ... utime is field 14, stime 15 */
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
                return 0;
        long hz = sysconf(_SC_CLK_TCK);
        return (ut + st) * (1000000000ull / (unsigned long long)(hz > 0 ? hz : 100));
}

static void task_time_update(struct proc *p, pid_t tid, uint64_t ns)
{
        for (int i = 0; i < p->ntasks; i++) {
                if (p->tasks[i].tid == tid) {
                        if (ns > p->tasks[i].ns)
                                p->tasks[i].ns = ns;
                        return;
                }
        }
        if (p->ntasks == p->cap_tasks) {
                int cap = p->cap_tasks ? 2 * p->cap_tasks : 8;
                struct task_time *t = realloc(p->tasks, (size_t)cap * sizeof(*t));
                if (t == NULL)
                        return;
                p->tasks = t;
                p->cap_tasks = cap;
        }
        p->tasks[p->ntasks++] = (struct task_time){tid, ns};
}

static uint64_t proc_cpu_ns(const struct proc *p)
{
        uint64_t sum = 0;
        for (int i = 0; i < p->ntasks; i++)
                sum += p->tasks[i].ns;
        return sum;
}

/* Called at a thread's PTRACE_EVENT_EXIT stop.  Memory figures and the executable are
 * read through the stopping thread (/proc/TGID/task/TID/...): it still holds the address
 * space even when the thread-group leader has already released it.  CPU time is read for
 * every thread still listed, because threads killed by another thread's exit_group() do
 * not stop at PTRACE_EVENT_EXIT; the latest value per thread is kept. */
static void account_exit(pid_t tid)
{
        char path[128];
        snprintf(path, sizeof(path), "/proc/%d/status", tid);
        long tgid = status_field_at(path, "Tgid");
        if (tgid <= 0)
                return;
        struct proc *p = find_proc((pid_t)tgid);
        if (p == NULL)
                p = add_proc((pid_t)tgid, 0);
        if (p == NULL)
                return;
        snprintf(path, sizeof(path), "/proc/%ld/task/%d/status", tgid, tid);
        long hwm = status_field_at(path, "VmHWM");
        if (hwm > p->hwm_kb)
                p->hwm_kb = hwm;
        long rss = status_field_at(path, "VmRSS");
        if (rss > p->rss_kb)
                p->rss_kb = rss;
        char buf[PATH_MAX];
        snprintf(path, sizeof(path), "/proc/%ld/task/%d/exe", tgid, tid);
        ssize_t n = readlink(path, buf, sizeof(buf) - 1);
        if (n > 0) {
                buf[n] = '\0';
                memcpy(p->exe, buf, (size_t)n + 1);
        }
        snprintf(path, sizeof(path), "/proc/%ld/task/%d/comm", tgid, tid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
                n = read(fd, buf, sizeof(p->comm) - 1);
                if (n > 0) {
                        buf[n] = '\0';
                        char *nl = strchr(buf, '\n');
                        if (nl != NULL)
                                *nl = '\0';
                        memcpy(p->comm, buf, strlen(buf) + 1);
                }
                close(fd);
        }
        snprintf(path, sizeof(path), "/proc/%ld/task", tgid);
        DIR *d = opendir(path);
        if (d != NULL) {
                struct dirent *e;
                while ((e = readdir(d)) != NULL) {
                        long t = strtol(e->d_name, NULL, 10);
                        if (t > 0)
                                task_time_update(p, (pid_t)t, thread_cpu_ns((pid_t)tgid, (pid_t)t));
                }
                closedir(d);
        }
        task_time_update(p, tid, thread_cpu_ns((pid_t)tgid, tid));
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
        int argi = 1;
        while (argi < argc) {
                if (strcmp(argv[argi], "-o") == 0 && argi + 1 < argc) {
                        out = argv[argi + 1];
                        argi += 2;
                } else if (strcmp(argv[argi], "--") == 0) {
                        argi++;
                        break;
                } else {
                        break;
                }
        }
        if (out == NULL || argi >= argc) {
                fprintf(stderr, "usage: proctree -o OUT.json [--] CMD [ARGS...]\n");
                return 2;
        }
        FILE *of = fopen(out, "we");
        if (of == NULL) {
                fprintf(stderr, "proctree: %s: %s\n", out, strerror(errno));
                return 1;
        }
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
                fprintf(stderr, "proctree: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
                return 1;
        }

        struct rusage ru0, ru1;
        getrusage(RUSAGE_CHILDREN, &ru0);
        uint64_t t0 = now_ns();
        pid_t root = fork();
        if (root < 0) {
                fprintf(stderr, "proctree: fork: %s\n", strerror(errno));
                return 1;
        }
        if (root == 0) {
                fclose(of);
                if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0) {
                        fprintf(stderr, "proctree: PTRACE_TRACEME: %s\n", strerror(errno));
                        _exit(125);
                }
                raise(SIGSTOP); /* let the parent set the options before exec */
                execvp(argv[argi], &argv[argi]);
                fprintf(stderr, "proctree: %s: %s\n", argv[argi], strerror(errno));
                _exit(errno == ENOENT ? 127 : 126);
        }

        int st;
        if (waitpid(root, &st, __WALL) != root || !WIFSTOPPED(st)) {
                fprintf(stderr, "proctree: child did not stop\n");
                return 1;
        }
        long opts = PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE |
                    PTRACE_O_TRACEEXEC | PTRACE_O_TRACEEXIT | PTRACE_O_EXITKILL;
        if (ptrace(PTRACE_SETOPTIONS, root, NULL, (void *)opts) != 0) {
                fprintf(stderr, "proctree: PTRACE_SETOPTIONS: %s\n", strerror(errno));
                kill(root, SIGKILL);
                return 1;
        }
        add_proc(root, getpid());
        mark_seen(root);
        ptrace(PTRACE_CONT, root, NULL, NULL);

        int root_status = -1;
        uint64_t t_root_end = 0, t_last_end = 0;
        for (;;) {
                pid_t pid = waitpid(-1, &st, __WALL);
                if (pid < 0) {
                        if (errno == EINTR)
                                continue;
                        break; /* ECHILD: the whole tree is gone */
                }
                if (WIFEXITED(st) || WIFSIGNALED(st)) {
                        uint64_t t = now_ns();
                        t_last_end = t;
                        struct proc *p = find_proc(pid);
                        if (p != NULL) {
                                p->end_ns = t;
                                p->exited = true;
                        }
                        if (pid == root) {
                                root_status = st;
                                t_root_end = t;
                        }
                        continue;
                }
                if (!WIFSTOPPED(st))
                        continue;
                int sig = WSTOPSIG(st);
                int event = (st >> 16) & 0xff;
                int inject = 0;
                if (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK ||
                    event == PTRACE_EVENT_CLONE) {
                        unsigned long child = 0;
                        ptrace(PTRACE_GETEVENTMSG, pid, NULL, &child);
                        if (event != PTRACE_EVENT_CLONE ||
                            status_field((pid_t)child, "Tgid") == (long)child) {
                                long ptgid = status_field(pid, "Tgid");
                                set_parent((pid_t)child, (pid_t)(ptgid > 0 ? ptgid : pid));
                        }
                } else if (event == PTRACE_EVENT_EXIT) {
                        account_exit(pid);
                } else if (event == PTRACE_EVENT_EXEC || event == PTRACE_EVENT_STOP) {
                        /* nothing to record */
                } else if (sig == SIGSTOP && !seen_task(pid)) {
                        /* attach stop of a new task */
                } else if (sig == SIGTRAP && event == 0 && !seen_task(pid)) {
                        /* should not happen with TRACEEXEC; swallow */
                } else {
                        inject = sig; /* a real signal: deliver it */
                }
                mark_seen(pid);
                ptrace(PTRACE_CONT, pid, NULL, (void *)(long)inject);
        }
        uint64_t t_end = t_last_end > t_root_end ? t_last_end : t_root_end;
        getrusage(RUSAGE_CHILDREN, &ru1);

        double ut = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                    (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
        double stt = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                     (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
        fprintf(of, "{\"wall_ns\": %llu, \"root_wall_ns\": %llu, ",
                (unsigned long long)(t_end - t0), (unsigned long long)(t_root_end - t0));
        if (root_status >= 0 && WIFEXITED(root_status))
                fprintf(of, "\"exit_status\": %d, \"term_signal\": null, ",
                        WEXITSTATUS(root_status));
        else if (root_status >= 0 && WIFSIGNALED(root_status))
                fprintf(of, "\"exit_status\": null, \"term_signal\": %d, ", WTERMSIG(root_status));
        else
                fprintf(of, "\"exit_status\": null, \"term_signal\": null, ");
        fprintf(of, "\"utime_s\": %.6f, \"stime_s\": %.6f, \"tree_maxrss_kb\": %ld, \"procs\": [",
                ut, stt, ru1.ru_maxrss);
        for (int i = 0; i < nprocs; i++) {
                struct proc *p = &procs[i];
                fprintf(of, "%s\n {\"pid\": %d, \"ppid\": %d, \"exe\": ", i ? "," : "", p->pid,
                        p->ppid);
                json_string(of, p->exe);
                fprintf(of, ", \"comm\": ");
                json_string(of, p->comm);
                fprintf(of,
                        ", \"hwm_kb\": %ld, \"rss_kb\": %ld, \"cpu_ns\": %llu, \"threads\": %d, "
                        "\"start_ns\": %llu, \"end_ns\": %llu}",
                        p->hwm_kb, p->rss_kb, (unsigned long long)proc_cpu_ns(p), p->ntasks,
                        (unsigned long long)(p->start_ns - t0),
                        (unsigned long long)(p->end_ns ? p->end_ns - t0 : 0));
        }
        fprintf(of, "]}\n");
        if (fclose(of) != 0) {
                fprintf(stderr, "proctree: %s: %s\n", out, strerror(errno));
                return 1;
        }
        return root_status >= 0 ? 0 : 1;
}
