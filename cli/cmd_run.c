/* `allocprof run [-o FILE] [-q] -- PROG ARGS...`: starts PROG with the agent preloaded
 * and a private collector in this process, forwards signals, writes a profile for every
 * process image that registered, prints a summary, and exits with PROG's status.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allocprof/clock.h"
#include "allocprof/ring.h"
#include "allocprof/seccomp.h"
#include "allocprof/wire.h"
#include "client.h"
#include "profile.h"
#include "report.h"
#include "run.h"
#include "server.h"
#include "symbolize.h"
#include "util.h"
#include "warm.h"

/* After the program exits, how long to wait for its descendants' images to end. */
#define DESCENDANT_GRACE_NS (500ull * 1000 * 1000)

/* An image of another process, finalized on the warmer's thread as soon as it ends. */
struct early_job {
        struct ap_process *p; /* freed by the job */
        struct ap_profile *prof;
        int r; /* ap_process_finalize's */
};

/* A process image that ended: raw (our private collector), handed to an early_job, or
 * already symbolized (a shared allocprofd did it). */
struct ended {
        struct ap_process *p; /* NULL once handed to a job */
        struct ap_profile *prof;
        struct early_job *job; /* read only after ap_warmer_stop() */
        int err;               /* the job's failure, -errno */
        pid_t pid;
        bool by_exec;
        bool late; /* ended (or was let go) after the program ended */
        int order;
};

struct run_state {
        struct ended *ended;
        size_t nended, ended_cap;
        int order;
        bool follow; /* profile every process that registers, not only the program */
        pid_t child;
        bool daemon_lost; /* the daemon serving the run went away */
        pid_t daemon_pid; /* its pid, 0 if it did not say (an older allocprofd) */
        char *daemon_dir; /* its output directory, NULL if it did not say */
        size_t nended_at_end; /* images that had ended when the program did */
        bool dormant;         /* started dormant */
        size_t never_attached; /* images of other processes dropped by on_done */
        /* The pids of those that were still running when dropped (the collector stopped
         * following them as the run ended): they did register, unlike the orphans that
         * unregistered_orphans looks for. */
        pid_t *dormant_running;
        size_t ndormant_running, dormant_running_cap;
        struct ap_warmer *warmer; /* runs early_job, NULL in the daemon's case */
        bool child_said;          /* the collector said why the program could not register */
        /* Other images that could not register: the first is said, the rest counted (a
         * build under `ulimit -v` would say it of each of its thousand processes). */
        size_t unregistered;
        /* Likewise other images that exec'ed a program that could not be profiled (a
         * build's shell running a Go compiler for each file). */
        size_t exec_unprofiled;
};

/* Says what the collector had to say of a process (see ap_collector_note_fn). */
static void say_note(struct run_state *rs, int pid, const char *why)
{
        bool unreg = strstr(why, AP_NOTE_UNREGISTERED) != NULL;
        bool exec_lost = strstr(why, AP_NOTE_EXEC_UNPROFILED) != NULL;
        rs->child_said |= pid == rs->child;
        if (unreg && pid != rs->child && rs->unregistered++ > 0)
                return;
        if (exec_lost && pid != rs->child && rs->exec_unprofiled++ > 0)
                return;
        fprintf(stderr, "allocprof: %s\n", why);
}

/* True if `pid` is a process that has not ended (a zombie has). */
static bool still_running(pid_t pid)
{
        struct ap_proc_stat ps;
        return ap_proc_stat(pid, &ps) && ps.state != 'Z' && ps.state != 'X';
}

/* Processes the program started that still run when run ends and never registered with
 * the collector (a fork child that has not allocated yet, still in its grace time): they
 * are our children, as their subreaper, and none of rs's images.  Returns how many, their
 * pids (up to max) in out. */
static size_t unregistered_orphans(const struct run_state *rs, pid_t *out, size_t max)
{
        /* Without a child of any kind there is nothing to look for: as their subreaper we
         * would be the parent of every orphan.  Spares a read of each process's stat file,
         * a millisecond or more on a machine with hundreds of processes. */
        siginfo_t si;
        const int any = WEXITED | WSTOPPED | WCONTINUED | WNOHANG | WNOWAIT | __WALL;
        if (waitid(P_ALL, 0, &si, any) < 0 && errno == ECHILD)
                return 0;
        DIR *d = opendir("/proc");
        size_t n = 0;
        if (d == NULL)
                return 0;
        for (struct dirent *de; (de = readdir(d)) != NULL;) {
                pid_t pid;
                struct ap_proc_stat ps;
                if (!ap_parse_pid(de->d_name, &pid) || !ap_proc_stat(pid, &ps) ||
                    ps.ppid != getpid() || ps.state == 'Z' || ps.state == 'X')
                        continue;
                bool known = false;
                for (size_t i = 0; i < rs->nended && !known; i++)
                        known = rs->ended[i].pid == pid;
                for (size_t i = 0; i < rs->ndormant_running && !known; i++)
                        known = rs->dormant_running[i] == pid;
                if (!known && n++ < max)
                        out[n - 1] = pid;
        }
        closedir(d);
        return n;
}

/* Whether a thread of ours could take the last of the processes the program may start:
 * a user's threads count against RLIMIT_NPROC (root's do not).  Every user but root
 * has a finite one (Debian: tens of thousands), so finite is not enough: the user's
 * count is not to be had cheaply, but it is at most the system's, which /proc/loadavg
 * gives.  Tight when the system holds half as many threads as the limit, or when it
 * cannot be told. */
static bool nproc_tight(void)
{
        struct rlimit rl;
        if (geteuid() == 0 || getrlimit(RLIMIT_NPROC, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
                return false;
        unsigned long running = 0, total = 0;
        FILE *f = fopen("/proc/loadavg", "re");
        bool known = f != NULL && fscanf(f, "%*s %*s %*s %lu/%lu", &running, &total) == 2;
        if (f != NULL)
                fclose(f);
        return !known || 2 * (rlim_t)total >= rl.rlim_cur;
}

/* Ends allocprof by the signal that ended the program, once its profiles are written,
 * so that whoever waits for allocprof sees what it would have seen of the program: bash
 * stops a loop on a child killed by SIGINT, and make and supervisors tell a crash from
 * an exit code by WIFSIGNALED, which an exit with 128 + N does not give.  Without a core
 * dump of our own (the program made its own if the limits let it).  Returns if the
 * signal did not end us (we are a PID namespace's init, which ignores it): the caller
 * then exits with 128 + N. */
static void end_by_signal(int sig)
{
        fflush(stdout);
        fflush(stderr);
        (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        raise(sig);
}

static void on_note(void *userdata, int pid, const char *why)
{
        say_note(userdata, pid, why);
}

static bool on_register(void *userdata, pid_t pid)
{
        const struct run_state *rs = userdata;
        return rs->follow || pid == rs->child;
}

static void early_finalize(void *arg, struct ap_symbolizer *sym)
{
        struct early_job *j = arg;
        j->r = ap_process_finalize(j->p, sym, &j->prof);
        ap_process_free(j->p);
        j->p = NULL;
}

static void on_done(void *userdata, struct ap_process *p, bool by_exec)
{
        struct run_state *rs = userdata;
        /* Started dormant and never attached: no profile to give.  Dropped now, not kept
         * until the program ends (a shell loop under --dormant held every child's tables
         * and mappings: 2.5 GB after a minute).  The program's own is kept: its message
         * and exit status come at the end. */
        if (rs->dormant && ap_process_pid(p) != rs->child && !ap_process_recorded(p)) {
                rs->never_attached++;
                pid_t pid = ap_process_pid(p);
                if (!by_exec && still_running(pid) &&
                    AP_GROW(rs->dormant_running, rs->dormant_running_cap,
                            rs->ndormant_running + 1) == 0)
                        rs->dormant_running[rs->ndormant_running++] = pid;
                ap_process_free(p);
                return;
        }
        if (AP_GROW(rs->ended, rs->ended_cap, rs->nended + 1) < 0) {
                ap_process_free(p);
                return;
        }
        struct ended e = {
                .p = p, .pid = ap_process_pid(p), .by_exec = by_exec, .order = rs->order++};
        /* Any image but the program's last is finalized now, on the warmer's thread, which
         * owns the symbolizer, and its tables and shared memory let go: kept raw to the
         * end, 300 short children of a shell script held 450 MB.  The program's own last
         * image waits for its exit status and command line. */
        if (rs->warmer != NULL && (e.pid != rs->child || by_exec)) {
                struct early_job *j = calloc(1, sizeof(*j));
                if (j != NULL) {
                        j->p = p;
                        if (ap_warmer_run(rs->warmer, early_finalize, j) == 0) {
                                e.p = NULL;
                                e.job = j;
                        } else {
                                free(j);
                        }
                }
        }
        rs->ended[rs->nended++] = e;
}

static void usage(FILE *out)
{
        fprintf(out, "Usage: allocprof run [-o FILE] [-q] [--sample BYTES]\n"
                     "           [--unwind dwarf|fp|libunwind] [--no-follow] [--output-dir DIR]\n"
                     "           [--dormant] [--no-daemon] [--] PROG [ARGS...]\n"
                     "  -o, --output FILE     write the profile to FILE\n"
                     "                        (default: allocprof.<prog>.<pid>.approf here)\n"
                     "  -q, --quiet           no summary on stderr\n"
                     "  -s, --sample BYTES    sample one allocation per BYTES allocated on\n"
                     "                        average (K, M, G suffixes; 0 = record every\n"
                     "                        allocation, the default); figures become\n"
                     "                        unbiased estimates\n"
                     "      --no-follow       profile PROG only, not the processes it starts\n"
                     "      --dormant         start PROG with the agent switched off, for\n"
                     "                        'allocprof attach PID' later\n"
                     "      --no-daemon       use a private collector even when allocprofd runs\n"
                     "      --output-dir DIR  write profiles to DIR (default: .)\n"
                     "  -u, --unwind dwarf|fp|libunwind\n"
                     "                        how stacks are captured: DWARF unwind tables\n"
                     "                        (default; right for any code), frame pointers\n"
                     "                        (only for code built with\n"
                     "                        -fno-omit-frame-pointer), or DWARF through\n"
                     "                        libunwind alone (slower; the reference 'dwarf'\n"
                     "                        is checked against)\n"
                     "  -h, --help            this text\n");
}

/* A directory we may create the socket's directory in (mkdtemp makes it 0700): writable,
 * and sticky when others can write there too. */
static bool socket_base_ok(const char *base, bool need_sticky)
{
        struct stat st;
        return base != NULL && base[0] != '\0' && strlen(base) <= 60 && stat(base, &st) == 0 &&
               S_ISDIR(st.st_mode) && (!need_sticky || (st.st_mode & S_ISVTX)) &&
               access(base, W_OK | X_OK) == 0;
}

/* The user's runtime directory, else /dev/shm (memory, where /tmp may be a disk:
 * creating and removing the directory and socket there took 0.15 ms more on ext4), else
 * /tmp.  `shared`: a directory every user may pass through, not the runtime directory
 * (private to its user). */
static char *make_socket_dir(bool shared)
{
        const char *base = shared ? NULL : getenv("XDG_RUNTIME_DIR");
        if (!socket_base_ok(base, false))
                base = socket_base_ok("/dev/shm", true) ? "/dev/shm" : "/tmp";
        char *tmpl = ap_asprintf("%s/allocprof-run-XXXXXX", base);
        if (tmpl == NULL)
                return NULL;
        if (mkdtemp(tmpl) == NULL) { /* mode 0700 */
                free(tmpl);
                return NULL;
        }
        return tmpl;
}

/* A socket name nobody guesses: 128 random bits in hex.  NULL if there is no randomness. */
static char *secret_socket_name(const char *dir)
{
        uint8_t b[16];
        if (getrandom(b, sizeof(b), GRND_NONBLOCK) != (ssize_t)sizeof(b))
                return NULL;
        char hex[2 * sizeof(b) + 1];
        for (size_t i = 0; i < sizeof(b); i++)
                snprintf(hex + 2 * i, 3, "%02x", b[i]);
        return ap_asprintf("%s/%s.sock", dir, hex);
}

/* A private collector, listening on a socket in a fresh directory.  Returns 0, or -1
 * after saying why not.
 *
 * Run by root, the program may change its user (a server that drops its privileges, then
 * forks workers): for those processes to register, the directory is 0711 (others may
 * pass through, not list it), the socket 0666 and named by a secret, which only the
 * processes that inherit the program's environment learn; the collector takes agents of
 * any user (control clients still only root's). */
static int start_private(struct run_state *rs, char **sock_dir, char **sock,
                         struct ap_collector **coll)
{
        const bool shared = geteuid() == 0;
        *sock_dir = make_socket_dir(shared);
        *sock = *sock_dir && shared ? secret_socket_name(*sock_dir) : NULL;
        const bool secret = *sock != NULL;
        if (*sock_dir && !secret)
                *sock = ap_asprintf("%s/collector.sock", *sock_dir);
        char *err = NULL;
        int r = *sock ? ap_collector_new(*sock, on_done, rs, coll, &err) : -errno;
        if (r < 0) {
                fprintf(stderr, "allocprof: cannot start the collector: %s\n",
                        err ? err : strerror(-r));
                free(err);
                if (*sock_dir)
                        rmdir(*sock_dir);
                return -1;
        }
        ap_collector_set_accept(*coll, on_register, rs);
        ap_collector_set_note(*coll, on_note, rs);
        if (secret && chmod(*sock_dir, 0711) == 0 && chmod(*sock, 0666) == 0)
                ap_collector_accept_any_user(*coll);
        return 0;
}

/* Finds PROG as execvp would.  Returns a malloc'd path or NULL (not found). */
/* --unwind libunwind: the agent loads libunwind into the program (only then); say so
 * here if it cannot, instead of quietly unwinding another way. */
static bool libunwind_present(void)
{
        void *lib = dlopen(AP_LIBUNWIND_SONAME, RTLD_LAZY | RTLD_LOCAL);
        if (lib == NULL || dlsym(lib, "unw_backtrace") == NULL) {
                fprintf(stderr,
                        "allocprof: --unwind libunwind: cannot load %s (install libunwind8): %s\n",
                        AP_LIBUNWIND_SONAME, dlerror());
                if (lib != NULL)
                        dlclose(lib);
                return false;
        }
        dlclose(lib);
        return true;
}

static char *which(const char *prog)
{
        if (strchr(prog, '/') != NULL)
                return strdup(prog);
        const char *path = getenv("PATH");
        char *copy = strdup(path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
        char *save = NULL, *found = NULL;
        for (char *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir && !found;
             dir = strtok_r(NULL, ":", &save)) {
                char *cand = ap_asprintf("%s/%s", *dir ? dir : ".", prog);
                if (cand != NULL && access(cand, X_OK) == 0)
                        found = cand;
                else
                        free(cand);
        }
        free(copy);
        return found;
}

/* Says, before running it, why PROG cannot be profiled, if it cannot.  Returns true if a
 * note was printed (the program still runs, unprofiled). */
static bool note_unprofilable(const char *prog)
{
        char *path = which(prog);
        enum ap_exe_why why = path ? ap_exe_unprofilable(path) : AP_EXE_PROFILABLE;
        free(path);
        if (why == AP_EXE_STATIC)
                fprintf(stderr,
                        "allocprof: %s is statically linked: LD_PRELOAD cannot reach its "
                        "allocator, so it runs unprofiled\n",
                        prog);
        else if (why == AP_EXE_SETID)
                fprintf(stderr,
                        "allocprof: %s is set-user-ID or set-group-ID: the loader ignores "
                        "LD_PRELOAD for it, so it runs unprofiled\n",
                        prog);
        else if (why == AP_EXE_FILECAPS)
                fprintf(stderr,
                        "allocprof: %s has file capabilities (see getcap): run by a user "
                        "other than root, it gains them and the loader ignores LD_PRELOAD "
                        "for it, so it runs unprofiled\n",
                        prog);
        return why != AP_EXE_PROFILABLE;
}

static char *prepend_preload(const char *agent)
{
        const char *old = getenv("LD_PRELOAD");
        if (old == NULL || old[0] == '\0')
                return strdup(agent);
        return ap_asprintf("%s:%s", agent, old);
}

/* Frees what child_env returned (NULL-terminated: it is calloc'd and filled in order). */
static void free_env(char **env)
{
        for (size_t i = 0; env != NULL && env[i] != NULL; i++)
                free(env[i]);
        free(env);
}

/* The program's environment: ours, with the agent preloaded and told where the collector
 * listens, how to sample and how to unwind.  An ALLOCPROF_MODE of ours passes through
 * unless the run is dormant.  Returns a malloc'd array (its strings too), or NULL. */
static char **child_env(const char *preload, const char *sock, uint64_t sample, const char *unwind,
                        bool dormant)
{
        static const char *const ours[] = {"LD_PRELOAD",  AP_ENV_SOCKET,  AP_ENV_SAMPLE,
                                           AP_ENV_UNWIND, AP_ENV_SECCOMP, AP_ENV_MODE};
        const size_t nours = sizeof(ours) / sizeof(ours[0]);
        const size_t nreplaced = dormant ? nours : nours - 1; /* AP_ENV_MODE is last */
        size_t n = 0;
        while (environ[n] != NULL)
                n++;
        char **env = calloc(n + nours + 1, sizeof(char *));
        if (env == NULL)
                return NULL;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                bool replaced = false;
                for (size_t j = 0; j < nreplaced; j++) {
                        size_t l = strlen(ours[j]);
                        replaced |= strncmp(environ[i], ours[j], l) == 0 && environ[i][l] == '=';
                }
                if (!replaced && (env[k++] = strdup(environ[i])) == NULL)
                        goto fail;
        }
        /* Our seccomp filters: an image under more (the program sandboxed itself, then
         * exec'ed) does not register (allocprof/seccomp.h). */
        struct ap_seccomp_state sc = ap_seccomp_now();
        if ((env[k++] = ap_asprintf("LD_PRELOAD=%s", preload)) == NULL ||
            (env[k++] = ap_asprintf("%s=%d %d", AP_ENV_SECCOMP, sc.mode, sc.filters)) == NULL ||
            (env[k++] = ap_asprintf("%s=%s", AP_ENV_SOCKET, sock)) == NULL ||
            (env[k++] = ap_asprintf("%s=%s", AP_ENV_UNWIND, unwind)) == NULL ||
            (sample && (env[k++] = ap_asprintf("%s=%llu", AP_ENV_SAMPLE,
                                               (unsigned long long)sample)) == NULL) ||
            (dormant && (env[k++] = ap_asprintf("%s=dormant", AP_ENV_MODE)) == NULL))
                goto fail;
        return env;
fail:
        free_env(env);
        return NULL;
}

/* Child side of fork (a run that allocprofd takes, which must learn the program's pid
 * before the program registers): waits at the gate for the collector's socket, then
 * execs.  On failure, reports errno over the close-on-exec pipe and exits 127. */
static __attribute__((noreturn)) void exec_child(char **argv, const char *preload, int gate_fd,
                                                 uint64_t sample, const char *unwind, bool dormant,
                                                 int err_fd, const sigset_t *orig_mask)
{
        /* The parent sends the collector's socket path once the collector expects us. */
        char sock[4096];
        size_t got = 0;
        for (;;) {
                ssize_t n = read(gate_fd, sock + got, sizeof(sock) - 1 - got);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                got += (size_t)n;
        }
        close(gate_fd);
        sock[got] = '\0';
        if (got == 0)
                _exit(127); /* the parent gave up before we started */
        /* The parent only blocked signals (for its signalfd); dispositions are untouched,
         * so the program inherits exactly what allocprof was given, ignored ones too. */
        sigprocmask(SIG_SETMASK, orig_mask, NULL);
        char **env = child_env(preload, sock, sample, unwind, dormant);
        if (env == NULL) {
                int e = ENOMEM;
                (void)!write(err_fd, &e, sizeof(e));
                _exit(127);
        }
        environ = env;
        execvp(argv[0], argv);
        int e = errno;
        (void)!write(err_fd, &e, sizeof(e));
        _exit(e == ENOENT ? 127 : 126);
}

/* The vfork child: exec or report why not.  It shares our memory until then, so it only
 * makes system calls and writes *err.  It has its own copy of the signal dispositions. */
static __attribute__((noreturn, noinline)) void vfork_child(char **argv, char **env,
                                                            const sigset_t *orig_mask,
                                                            bool pipe_default, volatile int *err)
{
        if (pipe_default) {
                struct sigaction dfl = {.sa_handler = SIG_DFL};
                sigemptyset(&dfl.sa_mask);
                sigaction(SIGPIPE, &dfl, NULL);
        }
        sigprocmask(SIG_SETMASK, orig_mask, NULL);
        execvpe(argv[0], argv, env); /* runs a file without #! with /bin/sh, as execvp */
        *err = errno;
        _exit(127);
}

/* Starts the program at once (a private collector already listens).  vfork: fork would
 * copy the page tables of a process that has the symbolizer's libraries loaded, and both
 * sides would then fault on every page they write until the exec (about 0.2 ms of each
 * run, measured).  Not posix_spawn: glibc's leaves the program with its two internal
 * signals ignored (/proc/PID/status, SigIgn), which a program run directly does not
 * have.  Returns 0 with *pid set, or the errno of the failed exec (nothing runs). */
static int spawn_child(char **argv, char **env, const sigset_t *orig_mask, bool pipe_default,
                       pid_t *pid)
{
        volatile int err = 0;
        pid_t p = vfork();
        if (p == 0)
                vfork_child(argv, env, orig_mask, pipe_default, &err);
        if (p < 0)
                return errno;
        if (err != 0) {
                waitpid(p, NULL, 0);
                return err;
        }
        *pid = p;
        return 0;
}

static void set_profile_command(struct ap_profile *prof, char **argv, int argc)
{
        char **cmd = calloc((size_t)argc + 1, sizeof(char *));
        if (cmd == NULL)
                return;
        for (int i = 0; i < argc; i++)
                if ((cmd[i] = strdup(argv[i])) == NULL) {
                        while (i-- > 0)
                                free(cmd[i]);
                        free(cmd);
                        return;
                }
        for (uint32_t i = 0; i < prof->ncommand; i++)
                free(prof->command[i]);
        free(prof->command);
        prof->command = cmd;
        prof->ncommand = (uint32_t)argc;
}

/* The signals whose default action would end allocprof alone, the program left running
 * unprofiled and its profile lost: while the program runs they come through a signalfd
 * and go on to it; the real-time ones too (run_signals).  Faults (SIGSEGV, ...) are not
 * among them, nor SIGPIPE (ignored, see ap_cmd_run). */
static const int g_forwarded[] = {SIGINT,    SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,   SIGALRM,
                                  SIGVTALRM, SIGPROF, SIGPWR, SIGXCPU, SIGXFSZ, SIGSTKFLT, SIGIO};

static void run_signals(sigset_t *set)
{
        sigemptyset(set);
        sigaddset(set, SIGCHLD);
        /* Blocked, a SIGCONT still continues us, and stays pending: follow_stop reads it
         * to learn that it was stopped, and handle_signals drops it. */
        sigaddset(set, SIGCONT);
        for (size_t i = 0; i < sizeof(g_forwarded) / sizeof(g_forwarded[0]); i++)
                sigaddset(set, g_forwarded[i]);
        /* glibc keeps the two it uses itself out of any mask */
        for (int sig = SIGRTMIN; sig <= SIGRTMAX; sig++)
                sigaddset(set, sig);
}

/* After the program: one of those signals now ends allocprof once its profiles are
 * written, so a second one ends it at once (the first says so).  Async-signal-safe. */
static volatile sig_atomic_t g_late_signal;

static void late_signal(int sig)
{
        if (g_late_signal == sig) {
                struct sigaction dfl = {.sa_handler = SIG_DFL};
                sigemptyset(&dfl.sa_mask);
                sigaction(sig, &dfl, NULL);
                raise(sig); /* delivered when the handler returns */
                return;
        }
        g_late_signal = sig;
        static const char msg[] = "allocprof: a signal came after the program ended: the "
                                  "profiles are written first (send it again to stop at once)\n";
        (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
}

/* Installs late_signal for every forwarded signal that is not ignored. */
static void catch_late_signals(void)
{
        struct sigaction sa = {.sa_handler = late_signal, .sa_flags = SA_RESTART}, old;
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < sizeof(g_forwarded) / sizeof(g_forwarded[0]); i++) {
                int sig = g_forwarded[i];
                if (sigaction(sig, NULL, &old) == 0 && old.sa_handler != SIG_IGN && sig != SIGXFSZ)
                        sigaction(sig, &sa, NULL);
        }
        /* A profile larger than the file-size limit: the write fails (EFBIG) and says
         * so, rather than the signal ending us. */
        struct sigaction ign = {.sa_handler = SIG_IGN};
        sigemptyset(&ign.sa_mask);
        sigaction(SIGXFSZ, &ign, NULL);
}

/* Our controlling terminal, opened for a moment (its foreground process group), or -1. */
static int open_ctty(void)
{
        return open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
}

/* Makes `pgrp` the foreground process group of terminal `tty`, as a shell does, from the
 * background too (SIGTTOU blocked: a background tcsetpgrp would stop us). */
static void give_tty(int tty, pid_t pgrp)
{
        sigset_t ttou, old;
        sigemptyset(&ttou);
        sigaddset(&ttou, SIGTTOU);
        pthread_sigmask(SIG_BLOCK, &ttou, &old);
        (void)tcsetpgrp(tty, pgrp);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* The state letter in a /proc/PID/stat file ('T' stopped, 'Z' a zombie), or 0 if the
 * process is gone.  Only system calls: for the watcher, a child of a threaded process. */
static char raw_state(const char *stat_path)
{
        char buf[512];
        int fd = open(stat_path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        if (fd >= 0)
                close(fd);
        if (n <= 0)
                return 0;
        /* "pid (comm) state ...": comm may hold anything, so from the last ')' */
        char *rp = NULL;
        for (ssize_t i = 0; i < n; i++)
                if (buf[i] == ')')
                        rp = buf + i;
        return rp != NULL && rp + 2 < buf + n ? rp[2] : 0;
}

/* While we are stopped with the program, a process of ours that continues us when the
 * program is continued by someone else (`kill -CONT PID`, a debugger), as its shell would
 * see it run again: nothing of ours runs while we are stopped.  Returns its pid, or -1
 * (then someone must continue us too). */
static pid_t start_stop_watcher(pid_t child)
{
        char path[64], ours[64];
        pid_t us = getpid();
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)child);
        snprintf(ours, sizeof(ours), "/proc/%d/stat", (int)us);
        pid_t w = fork();
        if (w != 0)
                return w;
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        const struct timespec tick = {0, 20 * 1000 * 1000};
        /* Until we have stopped too: a SIGCONT that came first would be discarded by
         * our stop (a stop signal discards a pending SIGCONT). */
        while (getppid() == us && (raw_state(path) == 'T' || raw_state(ours) != 'T'))
                nanosleep(&tick, NULL);
        kill(us, SIGCONT);
        _exit(0);
}

/* The program stopped by signal `sig` on its own (`kill -STOP $$`, raise(SIGTSTP), a
 * shell's `suspend`) rather than with us (a ^Z stops the whole foreground group).  The
 * shell that would see it stop, take the terminal back and list it as a job waits for us
 * instead, and would hang: so we stop too, by the same signal.  Once continued (fg, bg,
 * kill -CONT), we give the terminal back to the program's process group if it had it
 * (the shell gave it to ours), and continue the program if that did not. */
static void follow_stop(pid_t child, int sig)
{
        struct ap_proc_stat ps;
        /* Continued already: a ^Z stopped us both, and `fg` continued the child (the
         * kernel signals a group's newest members first), then us.  Nothing to follow. */
        if (!ap_proc_stat(child, &ps) || ps.state != 'T')
                return;
        sigset_t cont;
        sigemptyset(&cont);
        sigaddset(&cont, SIGCONT);
        const struct timespec now = {0, 0};
        while (sigtimedwait(&cont, NULL, &now) == SIGCONT) /* an old one says nothing */
                ;
        pid_t cpg = getpgid(child);
        int tty = open_ctty();
        bool child_fg = tty >= 0 && cpg > 0 && cpg != getpgrp() && tcgetpgrp(tty) == cpg;
        struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
        sigemptyset(&dfl.sa_mask);
        if (sig != SIGSTOP)
                sigaction(sig, &dfl, &old);
        pid_t watcher = start_stop_watcher(child);
        raise(sig); /* stops every thread of ours before it returns */
        if (sig != SIGSTOP)
                sigaction(sig, &old, NULL);
        if (watcher > 0) {
                kill(watcher, SIGKILL);
                waitpid(watcher, NULL, 0);
        }
        /* Not stopped after all (the kernel drops SIGTSTP, SIGTTIN and SIGTTOU for an
         * orphaned process group): no one to continue the program but who stopped it. */
        if (sigtimedwait(&cont, NULL, &now) != SIGCONT) {
                if (tty >= 0)
                        close(tty);
                return;
        }
        if (child_fg && tcgetpgrp(tty) == getpgrp())
                give_tty(tty, cpg);
        if (tty >= 0)
                close(tty);
        /* Continued by someone else (the watcher saw it): it runs already. */
        if (!ap_proc_stat(child, &ps) || ps.state != 'T')
                return;
        if (cpg > 0 && cpg != getpgrp())
                killpg(cpg, SIGCONT); /* as a shell resumes a job: its whole group */
        else
                kill(child, SIGCONT); /* `kill -CONT` reached us alone */
}

/* Handles what the signalfd has: the child's end (status into *status), and signals
 * sent to us alone, forwarded to the child.  Returns true once the child ended. */
static bool handle_signals(int sfd, pid_t child, bool child_done, int *status)
{
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                if (si.ssi_signo == SIGCHLD) {
                        int st;
                        pid_t w;
                        while ((w = waitpid(-1, &st, WNOHANG | WUNTRACED)) > 0) {
                                if (w == child && WIFSTOPPED(st)) {
                                        follow_stop(child, WSTOPSIG(st));
                                } else if (w == child) {
                                        *status = st;
                                        child_done = true;
                                }
                        }
                } else if (si.ssi_signo == SIGCONT) {
                        /* Not forwarded: the program got it with us, or follow_stop
                         * continues it. */
                } else if (!child_done) {
                        /* A terminal's ^C already reached the whole foreground group, the
                         * program included: forward only signals sent to us alone (kill,
                         * timeout, a supervisor). */
                        if (si.ssi_code == SI_QUEUE) { /* sigqueue: with its value */
                                union sigval v = {.sival_ptr = (void *)(uintptr_t)si.ssi_ptr};
                                sigqueue(child, (int)si.ssi_signo, v);
                        } else if (si.ssi_code != SI_KERNEL) {
                                kill(child, (int)si.ssi_signo);
                        }
                } else if (si.ssi_signo != SIGCHLD && si.ssi_code != SI_KERNEL) {
                        /* The program has ended, other processes may still run: as once
                         * the loop is over. */
                        if (g_late_signal == (int)si.ssi_signo)
                                end_by_signal((int)si.ssi_signo);
                        late_signal((int)si.ssi_signo);
                }
        }
        return child_done;
}

/* Once the program has ended: reaps the processes it left (we are their subreaper, see
 * ap_cmd_run) and says whether any is still running, registered with the collector or not
 * (a fork child that has not allocated yet, an exec'ed image still starting). */
static bool orphans_running(void)
{
        pid_t w;
        while ((w = waitpid(-1, NULL, WNOHANG | __WALL)) > 0)
                ;
        return w == 0;
}

/* Our own collector: until the program and the processes it started have ended (or
 * their grace period is over).  Returns the program's wait status. */
static int run_loop_private(struct ap_collector *coll, struct run_state *rs, int sfd)
{
        int status = 0;
        bool child_done = false;
        uint64_t child_done_at = 0;
        for (;;) {
                int ev = ap_collector_step(coll, 100, sfd);
                if (ev < 0) {
                        fprintf(stderr, "allocprof: collector failed: %s\n", strerror(-ev));
                        break;
                }
                if (ev > 0) {
                        bool was_done = child_done;
                        child_done = handle_signals(sfd, rs->child, child_done, &status);
                        if (child_done && !was_done) {
                                child_done_at = ap_clock_mono_ns();
                                rs->nended_at_end = rs->nended;
                        }
                }
                if (child_done) {
                        if (!ap_collector_has_pid(coll, rs->child) &&
                            ap_collector_nprocs(coll) == 0 && !orphans_running())
                                break;
                        if (ap_clock_mono_ns() - child_done_at > DESCENDANT_GRACE_NS)
                                break;
                }
        }
        return status;
}

/* An image the daemon finalized for us, as a profile in a memfd. */
static void take_image(struct run_state *rs, json_t *ev, int fd)
{
        char path[64], *err = NULL;
        struct ap_profile *prof = NULL;
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        int r = fd >= 0 ? ap_profile_read(path, &prof, &err) : -EBADF;
        if (fd >= 0)
                close(fd);
        int pid = (int)json_integer_value(json_object_get(ev, "pid"));
        if (r < 0 || AP_GROW(rs->ended, rs->ended_cap, rs->nended + 1) < 0) {
                fprintf(stderr, "allocprof: pid %d: allocprofd sent an unreadable profile: %s\n",
                        pid, err ? err : strerror(-r));
                free(err);
                ap_profile_free(prof);
                return;
        }
        rs->ended[rs->nended++] = (struct ended){
                .prof = prof,
                .pid = (pid_t)prof->pid,
                .by_exec = json_is_true(json_object_get(ev, "by_exec")),
                .order = rs->order++,
        };
}

/* The connection to allocprofd broke (why: err).  What became of the profiles it held
 * depends on how: stopping (it said so first: SIGTERM, SIGINT, SIGHUP), it wrote them to
 * its output directory; alive, it closed the connection and writes them there as they
 * end; else it was killed or crashed, and they are lost. */
static void say_daemon_lost(const struct run_state *rs, bool stopping, const char *err)
{
        const char *dir = rs->daemon_dir ? rs->daemon_dir : "its own output directory";
        if (stopping) {
                fprintf(stderr,
                        "allocprof: allocprofd was stopped during the run: it wrote the "
                        "profiles of this run's processes it still held to %s, not here\n",
                        dir);
                return;
        }
        if (rs->daemon_pid <= 0) {
                fprintf(stderr,
                        "allocprof: allocprofd went away during the run (%s): if it was "
                        "stopped (SIGTERM, SIGINT, SIGHUP), it wrote the profiles of this "
                        "run's processes it held to %s; if it was killed, they are lost\n",
                        err, dir);
                return;
        }
        /* Killed, it is gone (not even a zombie) within moments of the hang-up. */
        bool alive = still_running(rs->daemon_pid);
        for (int i = 0; alive && i < 50; i++) {
                usleep(10000);
                alive = still_running(rs->daemon_pid);
        }
        if (alive)
                fprintf(stderr,
                        "allocprof: allocprofd closed the connection during the run (%s): it "
                        "writes the profiles of this run's processes to %s as they end, not "
                        "here\n",
                        err, dir);
        else
                fprintf(stderr,
                        "allocprof: allocprofd went away during the run (%s) without writing "
                        "the profiles of this run's processes it held: it was killed or "
                        "crashed, and they are lost\n",
                        err);
}

/* How long to wait for allocprofd to finalize the run's images after the program ended. */
#define DAEMON_FINISH_MS 120000

/* A shared allocprofd profiles the run: it sends each image's profile when the image
 * ends, and "finished" once all of them are in.  Returns the program's wait status. */
static int run_loop_daemon(struct ap_ctl *ctl, struct run_state *rs, int sfd)
{
        int status = 0;
        bool child_done = false, finish_sent = false, lost = false, stopping = false;
        uint64_t finish_at = 0, child_done_at = 0;
        for (;;) {
                struct pollfd pf[2] = {{.fd = sfd, .events = POLLIN},
                                       {.fd = lost ? -1 : ap_ctl_fd(ctl), .events = POLLIN}};
                int pr = poll(pf, 2, 100);
                if (pr < 0 && errno != EINTR)
                        break;
                if (pf[0].revents & POLLIN) {
                        bool was_done = child_done;
                        child_done = handle_signals(sfd, rs->child, child_done, &status);
                        if (child_done && !was_done) {
                                child_done_at = ap_clock_mono_ns();
                                rs->nended_at_end = rs->nended;
                        }
                }
                while (!lost && (pf[1].revents & (POLLIN | POLLHUP | POLLERR))) {
                        json_t *ev = NULL;
                        int fd = -1;
                        char *err = NULL;
                        int r = ap_ctl_read(ctl, 0, &ev, &fd, &err);
                        if (r == 0)
                                break;
                        if (r < 0) {
                                say_daemon_lost(rs, stopping, err);
                                free(err);
                                lost = true;
                                rs->daemon_lost = true;
                                break;
                        }
                        const char *kind = json_string_value(json_object_get(ev, "event"));
                        if (kind != NULL && strcmp(kind, "image") == 0) {
                                take_image(rs, ev, fd);
                                fd = -1;
                        } else if (kind != NULL && strcmp(kind, "note") == 0) {
                                json_int_t np = json_integer_value(json_object_get(ev, "pid"));
                                say_note(rs, np > 0 && np <= INT32_MAX ? (int)np : 0,
                                         json_string_value(json_object_get(ev, "message")) ?: "");
                        } else if (kind != NULL && strcmp(kind, "finished") == 0) {
                                json_decref(ev);
                                return status;
                        } else if (kind != NULL && strcmp(kind, "stopping") == 0) {
                                stopping = true;
                        }
                        if (fd >= 0)
                                close(fd);
                        json_decref(ev);
                }
                if (child_done && lost)
                        break;
                /* The daemon waits for the processes that registered; the ones that have
                 * not yet are our orphans (or their parents are): their grace time is
                 * spent here first. */
                uint64_t waited = child_done ? ap_clock_mono_ns() - child_done_at : 0;
                if (child_done && !finish_sent &&
                    (waited >= DESCENDANT_GRACE_NS || !orphans_running())) {
                        char *err = NULL;
                        uint64_t left =
                                waited >= DESCENDANT_GRACE_NS ? 0 : DESCENDANT_GRACE_NS - waited;
                        json_t *req = json_pack("{s:s, s:I}", "cmd", "finish", "grace_ms",
                                                (json_int_t)(left / 1000000));
                        if (ap_ctl_send(ctl, req, -1, &err) < 0) {
                                fprintf(stderr, "allocprof: allocprofd: %s\n", err);
                                free(err);
                                break;
                        }
                        finish_sent = true;
                        finish_at = ap_clock_mono_ns();
                }
                if (finish_sent && ap_clock_mono_ns() - finish_at > DAEMON_FINISH_MS * 1000000ull) {
                        fprintf(stderr, "allocprof: allocprofd did not finish the profiles in "
                                        "time; giving up\n");
                        break;
                }
        }
        return status;
}

static char *default_profile_path(const char *dir, const struct ap_profile *prof,
                                  const char *fallback_name)
{
        const char *name = prof->exe && prof->exe[0] ? ap_path_base(prof->exe) : fallback_name;
        return ap_asprintf("%s%sallocprof.%s.%u.approf", dir ? dir : "", dir ? "/" : "", name,
                           prof->pid);
}

int ap_run_options(int argc, char **argv, struct ap_run_options *o, void (*usage_of)(FILE *))
{
        static const struct option opts[] = {
                {"output", required_argument, NULL, 'o'},
                {"quiet", no_argument, NULL, 'q'},
                {"sample", required_argument, NULL, 's'},
                {"unwind", required_argument, NULL, 'u'},
                {"no-follow", no_argument, NULL, 'F'},
                {"output-dir", required_argument, NULL, 'D'},
                {"dormant", no_argument, NULL, 'Z'},
                {"no-daemon", no_argument, NULL, 'N'},
                {"help", no_argument, NULL, 'h'},
                {0},
        };
        int c;

        *o = (struct ap_run_options){.unwind = "dwarf", .follow = true, .use_daemon = true};
        optind = 1;
        /* '+': stop at the first non-option, the program's own options are its own. */
        while ((c = getopt_long(argc, argv, "+o:qs:u:h", opts, NULL)) != -1) {
                switch (c) {
                case 'o':
                        if (optarg[0] == '\0') {
                                fprintf(stderr, "allocprof: -o: the file name is empty\n");
                                return 2;
                        }
                        o->output = optarg;
                        break;
                case 'q':
                        o->quiet = true;
                        break;
                case 'F':
                        o->follow = false;
                        break;
                case 'D':
                        if (optarg[0] == '\0') {
                                fprintf(stderr, "allocprof: --output-dir: the name is empty\n");
                                return 2;
                        }
                        o->outdir = optarg;
                        break;
                case 'Z':
                        o->dormant = true;
                        break;
                case 'N':
                        o->use_daemon = false;
                        break;
                case 'u':
                        if (strcmp(optarg, "dwarf") != 0 && strcmp(optarg, "fp") != 0 &&
                            strcmp(optarg, "libunwind") != 0) {
                                fprintf(stderr,
                                        "allocprof: --unwind: '%s' is not 'dwarf', 'fp' "
                                        "or 'libunwind'\n",
                                        optarg);
                                return 2;
                        }
                        if (strcmp(optarg, "libunwind") == 0 && !libunwind_present())
                                return 2;
                        o->unwind = optarg;
                        break;
                case 's': {
                        int r = ap_parse_sample(optarg, &o->sample);
                        if (r == -ERANGE)
                                return 2;
                        if (r < 0) {
                                fprintf(stderr,
                                        "allocprof: --sample: '%s' is not a size in bytes "
                                        "(examples: 0, 4096, 512K, 1M)\n",
                                        optarg);
                                return 2;
                        }
                        break;
                }
                case 'h':
                        usage_of(stdout);
                        return 0;
                default:
                        usage_of(stderr);
                        return 2;
                }
        }
        return -1;
}

int ap_cmd_run(int argc, char **argv)
{
        struct ap_run_options o;
        int st = ap_run_options(argc, argv, &o, usage);
        if (st >= 0)
                return st;
        const char *output = o.output, *unwind = o.unwind, *outdir = o.outdir;
        uint64_t sample = o.sample;
        bool quiet = o.quiet, follow = o.follow, dormant = o.dormant, use_daemon = o.use_daemon;

        if (optind >= argc) {
                fprintf(stderr, "allocprof: run needs a program to run\n");
                usage(stderr);
                return 2;
        }
        char **prog_argv = argv + optind;
        int prog_argc = argc - optind;

        /* A run is never lost to a profile that cannot be written: checked first. */
        if (ap_run_check_dest(output, outdir) != 0)
                return 1;
        int r;
        bool noted = note_unprofilable(prog_argv[0]);
        char *agent = ap_find_agent();
        if (agent == NULL) {
                int e = errno;
                const char *env = getenv("ALLOCPROF_AGENT");
                if (env != NULL && env[0] != '\0')
                        fprintf(stderr, "allocprof: ALLOCPROF_AGENT: cannot use %s: %s\n", env,
                                strerror(e));
                else
                        fprintf(stderr,
                                "allocprof: cannot find liballocprof.so next to the allocprof "
                                "binary (set ALLOCPROF_AGENT to its path)\n");
                return 1;
        }
        char *preload = prepend_preload(agent);
        if (preload == NULL) {
                fprintf(stderr, "allocprof: out of memory\n");
                return 1;
        }

        /* Signals arrive through a signalfd so the loop handles them in order (which
         * ones: g_forwarded). */
        sigset_t mask, orig;
        run_signals(&mask);
        sigprocmask(SIG_BLOCK, &mask, &orig);
        int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        int errpipe[2], gate[2];
        if (sfd < 0 || pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(gate, O_CLOEXEC) < 0) {
                fprintf(stderr, "allocprof: %s\n", strerror(errno));
                return 1;
        }
        /* A dead reader must not kill us while we hand over the socket path.  The
         * program gets the disposition we were given. */
        struct sigaction ign = {.sa_handler = SIG_IGN}, pipe_orig;
        sigemptyset(&ign.sa_mask);
        sigaction(SIGPIPE, &ign, &pipe_orig);
        bool pipe_default = pipe_orig.sa_handler != SIG_IGN;

        /* A listening allocprofd takes the run (it symbolizes with warm caches and lists
         * the program in `allocprof ps`); otherwise a private collector here, which
         * listens before the program starts: the program then need not wait for the rest
         * of its set-up (symbolizer, warm-up thread), done while it execs. */
        struct run_state rs = {.follow = follow, .dormant = dormant};
        struct ap_ctl *ctl = NULL;
        struct ap_collector *coll = NULL;
        char *sock = NULL, *sock_dir = NULL;
        if (use_daemon) {
                char *err = NULL;
                int dr = ap_ctl_open_daemon(&ctl, &err);
                if (dr < 0 && dr != -ENOENT && dr != -ECONNREFUSED)
                        fprintf(stderr, "allocprof: not using allocprofd: %s\n",
                                err ? err : strerror(-dr));
                free(err);
        }
        if (ctl == NULL && start_private(&rs, &sock_dir, &sock, &coll) < 0)
                return 1;

        /* The program's orphans become our children, not init's: once it has ended, we
         * see which of its processes still run, whether they have registered yet or not,
         * and give them their grace time (orphans_running). */
        (void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        /* In the foreground of the terminal our messages go to (see below, after the
         * program). */
        const bool tty_fg = isatty(STDERR_FILENO) && tcgetpgrp(STDERR_FILENO) == getpgrp();
        fflush(NULL);
        pid_t child = -1;
        int exec_errno = 0;
        bool forked = coll == NULL;
        if (!forked) {
                /* Our collector listens already: the program starts now. */
                char **env = child_env(preload, sock, sample, unwind, dormant);
                exec_errno =
                        env ? spawn_child(prog_argv, env, &orig, pipe_default, &child) : ENOMEM;
                free_env(env); /* *child is set only when the program started */
        } else {
                /* The child waits at the gate until allocprofd expects it. */
                child = fork();
                if (child < 0) {
                        fprintf(stderr, "allocprof: fork: %s\n", strerror(errno));
                        return 1;
                }
                if (child == 0) {
                        close(errpipe[0]);
                        close(gate[1]);
                        if (pipe_default)
                                signal(SIGPIPE, SIG_DFL);
                        exec_child(prog_argv, preload, gate[0], sample, unwind, dormant, errpipe[1],
                                   &orig);
                }
        }
        close(errpipe[1]);
        close(gate[0]);
        rs.child = child;

        if (ctl != NULL) {
                char *err = NULL;
                json_t *resp = NULL;
                if (ap_ctl_call(ctl,
                                json_pack("{s:s, s:i, s:b}", "cmd", "run", "pid", (int)child,
                                          "follow", follow),
                                -1, 10000, &resp, &err) < 0 ||
                    !json_is_true(json_object_get(resp, "ok"))) {
                        fprintf(stderr, "allocprof: not using allocprofd: %s\n",
                                err ? err : ap_ctl_error(resp));
                        ap_ctl_close(ctl);
                        ctl = NULL;
                } else {
                        json_int_t dp = json_integer_value(json_object_get(resp, "collector_pid"));
                        rs.daemon_pid = dp > 0 && dp <= INT32_MAX ? (pid_t)dp : 0;
                        const char *dd = json_string_value(json_object_get(resp, "output_dir"));
                        rs.daemon_dir = dd != NULL && dd[0] == '/' ? strdup(dd) : NULL;
                }
                free(err);
                json_decref(resp);
                /* The agents are told the daemon's socket. */
                if (ctl != NULL && (sock = strdup(ap_ctl_path(ctl))) == NULL) {
                        ap_ctl_close(ctl);
                        ctl = NULL;
                }
                if (ctl == NULL && start_private(&rs, &sock_dir, &sock, &coll) < 0) {
                        close(gate[1]); /* the child exits 127 unstarted */
                        waitpid(child, NULL, 0);
                        return 1;
                }
        }
        if (forked)
                (void)!write(gate[1], sock, strlen(sock));
        close(gate[1]);

        /* The symbolizer warms up (loads debug information) while the program runs, on a
         * thread of its own; not when that thread could take the last process the
         * program may start (nproc_tight). */
        struct ap_symbolizer *sym = NULL;
        struct ap_warmer *warmer = NULL;
        if (coll != NULL && child > 0 && !nproc_tight() && ap_symbolizer_new(&sym) == 0 &&
            ap_warmer_start(sym, &warmer) == 0)
                ap_collector_set_warmer(coll, warmer);
        rs.warmer = warmer;

        int forked_errno = 0;
        if (read(errpipe[0], &forked_errno, sizeof(forked_errno)) == (ssize_t)sizeof(forked_errno))
                exec_errno = forked_errno; /* else EOF: exec succeeded, or nothing forked */
        close(errpipe[0]);

        int status = 0;
        if (ctl != NULL) {
                status = run_loop_daemon(ctl, &rs, sfd);
                ap_ctl_close(ctl);
        } else {
                if (child > 0)
                        status = run_loop_private(coll, &rs, sfd);
                ap_collector_flush_all(coll);
                ap_collector_free(coll);
                rmdir(sock_dir);
        }
        pid_t orphan[4];
        size_t norphans = unregistered_orphans(&rs, orphan, 4);
        /* The program has ended: what is still to come (or pending) no longer ends us
         * before the profiles are written. */
        catch_late_signals();
        sigprocmask(SIG_SETMASK, &orig, NULL);
        /* The program made another process group the terminal's foreground (a full-screen
         * program, an interactive shell killed before it gave the terminal back) and left
         * it so.  A shell that ran it would take the terminal back now; we are in the
         * background until we end, and with `stty tostop` our summary would stop us.  We
         * were in the foreground: write as if we still were. */
        if (tty_fg && tcgetpgrp(STDERR_FILENO) != getpgrp()) {
                sigset_t ttou;
                sigemptyset(&ttou);
                sigaddset(&ttou, SIGTTOU);
                sigprocmask(SIG_BLOCK, &ttou, NULL);
        }

        int exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        int term_sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        int ret = WIFEXITED(status) ? exit_code : 128 + term_sig;

        if (exec_errno != 0) {
                /* execve says EACCES for a directory; a shell says what it is. */
                struct stat pst;
                int shown = exec_errno == EACCES && strchr(prog_argv[0], '/') != NULL &&
                                            stat(prog_argv[0], &pst) == 0 && S_ISDIR(pst.st_mode)
                                    ? EISDIR
                                    : exec_errno;
                fprintf(stderr, "allocprof: cannot run %s: %s\n", prog_argv[0], strerror(shown));
                ret = exec_errno == ENOENT ? 127 : 126;
        }

        for (size_t i = rs.nended_at_end; i < rs.nended; i++)
                rs.ended[i].late = true;
        /* The main program's profile is its last image (after any exec). */
        struct ended *main_img = NULL;
        for (size_t i = 0; i < rs.nended; i++)
                if (rs.ended[i].pid == child) /* its last image */
                        main_img = &rs.ended[i];
        /* The agent maps about 70 MiB of shared memory at registration (ring.h), and
         * stays out of the way of a program whose address-space limit is less than
         * AP_AS_SHARE times that (it says so itself: this is for an agent that could not). */
        struct rlimit as_lim;
        const uint64_t shm_min = ap_shm_registration_bytes((uint64_t)getpagesize());
        bool as_small = getrlimit(RLIMIT_AS, &as_lim) == 0 && as_lim.rlim_cur != RLIM_INFINITY &&
                        as_lim.rlim_cur < AP_AS_SHARE * shm_min;
        noted |= rs.child_said;
        if (exec_errno == 0 && rs.nended == 0 && !noted && !dormant && !rs.daemon_lost && as_small)
                fprintf(stderr,
                        "allocprof: %s never registered with the collector: its address-space "
                        "limit (ulimit -v, %llu MiB) leaves no room for the agent's %llu MiB "
                        "of shared memory: no profile\n",
                        prog_argv[0], (unsigned long long)(as_lim.rlim_cur >> 20),
                        (unsigned long long)(shm_min >> 20));
        else if (exec_errno == 0 && rs.nended == 0 && !noted && !dormant && !rs.daemon_lost)
                fprintf(stderr,
                        "allocprof: %s never registered with the collector (statically "
                        "linked, setuid, file capabilities, or it cleared LD_PRELOAD): no "
                        "profile\n",
                        prog_argv[0]);

        ap_warmer_stop(warmer); /* from here on the symbolizer is ours alone */
        rs.warmer = NULL;
        /* The jobs have run (the thread is joined): their results are ours to read. */
        for (size_t i = 0; i < rs.nended; i++) {
                struct ended *e = &rs.ended[i];
                if (e->job == NULL)
                        continue;
                e->prof = e->job->prof;
                e->err = e->job->r;
                free(e->job);
                e->job = NULL;
        }
        /* The program's exit status goes on its last image: still raw, or finalized
         * already (by allocprofd) -- unless an exec replaced that image with a program
         * that could not be profiled: the status is that program's, and the profile says
         * that the image ended by the exec. */
        bool status_its = main_img != NULL && !main_img->by_exec;
        if (status_its && main_img->p != NULL)
                ap_process_set_exit(main_img->p, exit_code, term_sig);
        if (status_its && main_img->prof != NULL) {
                main_img->prof->exit_status = exit_code;
                main_img->prof->term_signal = term_sig;
        }
        if (rs.nended > 0 && ctl == NULL && sym == NULL && ap_symbolizer_new(&sym) < 0) {
                fprintf(stderr, "allocprof: out of memory\n");
                return ret ? ret : 1;
        }
        /* One id for every profile of this run: `allocprof report --all` finds them. */
        char run_id[17];
        uint64_t rid = ap_realtime_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)child;
        snprintf(run_id, sizeof(run_id), "%016llx", (unsigned long long)ap_mix64(rid));
        char **written = calloc(rs.nended + 1, sizeof(char *));
        size_t nwritten = 0;
        uint64_t unprofiled = 0; /* children that could not register, over all images */
        /* The program's own profile last, so its summary ends the output. */
        if (main_img != NULL && main_img != &rs.ended[rs.nended - 1]) {
                struct ended tmp = *main_img;
                memmove(main_img, main_img + 1,
                        (size_t)(&rs.ended[rs.nended - 1] - main_img) * sizeof(*main_img));
                rs.ended[rs.nended - 1] = tmp;
                main_img = &rs.ended[rs.nended - 1];
        }
        /* The other processes' profiles go next to -o's file, unless -o is a device or
         * a FIFO (/dev/null): then here.  (Looked at once: the program's own profile is
         * written last.) */
        bool output_special = output != NULL && ap_profile_dest_of(output) == AP_DEST_INTO;
        /* The command line of our own child is known exactly, beyond what /proc gave (at
         * most 256 arguments and 64 KiB) -- but only for the image we started: one that
         * an exec replaced it with has the command line of that exec. */
        bool main_first = true;
        for (size_t i = 0; i < rs.nended; i++)
                if (&rs.ended[i] != main_img && rs.ended[i].pid == child && rs.ended[i].by_exec)
                        main_first = false;
        for (size_t i = 0; i < rs.nended; i++) {
                struct ended *e = &rs.ended[i];
                if (e == main_img && main_first && e->p != NULL)
                        ap_process_set_command(e->p, prog_argv, prog_argc);
                if (e == main_img && main_first && e->prof != NULL)
                        set_profile_command(e->prof, prog_argv, prog_argc);
                struct ap_profile *prof = e->prof;
                e->prof = NULL;
                r = e->err < 0 ? e->err : prof != NULL ? 0 : ap_process_finalize(e->p, sym, &prof);
                if (r < 0) {
                        fprintf(stderr, "allocprof: cannot finalize the profile of pid %d: %s\n",
                                (int)e->pid, strerror(-r));
                        continue;
                }
                /* Started dormant and never attached: nothing was recorded, no thread
                 * counted, and never in sampled mode (an attach --sample that took no
                 * sample still has a profile to give). */
                if (dormant && prof->totals.allocations == 0 && prof->totals.frees == 0 &&
                    prof->totals.threads == 0 && prof->mode != NULL &&
                    strcmp(prof->mode, "sampled") != 0) {
                        if (e != main_img)
                                rs.never_attached++; /* said once, below */
                        else if (!quiet)
                                fprintf(stderr,
                                        "allocprof: pid %u was never attached: no profile\n",
                                        prof->pid);
                        ap_profile_free(prof);
                        continue;
                }
                /* Still running after the grace time (a daemon, say): what it did until
                 * now, as a snapshot, where its blocks are live and not leaked. */
                if (e != main_img && !e->by_exec && e->late &&
                    still_running(e->pid)) {
                        prof->live = true;
                        prof->exit_status = -1;
                        prof->term_signal = 0;
                        if (!quiet)
                                fprintf(stderr,
                                        "allocprof: pid %u (%s) was still running when %s "
                                        "ended: its profile stops here, as a snapshot\n",
                                        prof->pid, prof->exe ? ap_path_base(prof->exe) : "?",
                                        ap_path_base(prog_argv[0]));
                }
                char *path;
                if (e == main_img && output != NULL) {
                        path = strdup(output);
                } else {
                        char *dir = outdir ? strdup(outdir) : NULL;
                        if (dir == NULL && output != NULL && !output_special &&
                            strchr(output, '/') != NULL) {
                                dir = strdup(output);
                                *strrchr(dir, '/') = '\0';
                        }
                        path = default_profile_path(dir, prof, ap_path_base(prog_argv[0]));
                        free(dir);
                }
                /* The same program exec'ed again under the same pid: number the images. */
                char *stem = path ? strdup(path) : NULL;
                if (stem != NULL && strrchr(stem, '.') != NULL)
                        *strrchr(stem, '.') = '\0';
                for (int k = 2; path != NULL && stem != NULL && written != NULL; k++) {
                        bool taken = false;
                        for (size_t w = 0; w < nwritten; w++)
                                taken |= strcmp(written[w], path) == 0;
                        if (!taken)
                                break;
                        free(path);
                        path = ap_asprintf("%s-%d.approf", stem, k);
                }
                free(stem);
                prof->run_id = strdup(run_id);
                unprofiled += prof->totals.unprofiled_children;
                if (prof->foreign_malloc != NULL)
                        fprintf(stderr,
                                "allocprof: warning: pid %u (%s) calls the malloc in %s, which "
                                "comes before allocprof's: allocations made with it were not "
                                "seen\n",
                                prof->pid, prof->exe ? ap_path_base(prof->exe) : "?",
                                prof->foreign_malloc);
                r = path ? ap_profile_write(prof, path) : -ENOMEM;
                if (r >= 0 && written != NULL)
                        written[nwritten++] = strdup(path);
                if (r < 0) {
                        fprintf(stderr, "allocprof: cannot write the profile %s: %s\n",
                                path ? path : "", ap_profile_write_strerror(r));
                        if (ret == 0)
                                ret = 1;
                } else if (!quiet && (e == main_img || rs.nended == 1)) {
                        ap_report_summary(stderr, prof, path);
                } else if (!quiet) {
                        fprintf(stderr, "allocprof: pid %u (%s) profile written to %s\n", prof->pid,
                                prof->exe ? ap_path_base(prof->exe) : "?", path);
                }
                free(path);
                ap_profile_free(prof);
        }
        if (rs.never_attached > 0 && !quiet)
                fprintf(stderr,
                        "allocprof: %zu other process image%s started dormant %s never "
                        "attached: no profile\n",
                        rs.never_attached, rs.never_attached == 1 ? "" : "s",
                        rs.never_attached == 1 ? "was" : "were");
        if (unprofiled > 0)
                fprintf(stderr,
                        "allocprof: %llu child process%s could not register with the "
                        "collector (a chroot, no descriptor left, a seccomp filter...) and ran "
                        "unprofiled\n",
                        (unsigned long long)unprofiled, unprofiled == 1 ? "" : "es");
        if (rs.unregistered > 1)
                fprintf(stderr,
                        "allocprof: %zu more process image%s could not register with the "
                        "collector and ran unprofiled\n",
                        rs.unregistered - 1, rs.unregistered == 2 ? "" : "s");
        if (rs.exec_unprofiled > 1)
                fprintf(stderr,
                        "allocprof: %zu more process image%s exec'ed a program that could not "
                        "be profiled\n",
                        rs.exec_unprofiled - 1, rs.exec_unprofiled == 2 ? "" : "s");
        if (norphans > 0) {
                fprintf(stderr, "allocprof: %zu process%s the program started (pid", norphans,
                        norphans == 1 ? "" : "es");
                for (size_t i = 0; i < norphans && i < 4; i++)
                        fprintf(stderr, "%s %d", i ? "," : "", (int)orphan[i]);
                fprintf(stderr,
                        "%s) %s still running when %s ended and had not registered with the "
                        "collector yet: %s unprofiled\n",
                        norphans > 4 ? ", ..." : "", norphans == 1 ? "was" : "were",
                        ap_path_base(prog_argv[0]), norphans == 1 ? "it runs on" : "they run on");
        }
        for (size_t i = 0; i < nwritten; i++)
                free(written[i]);
        free(written);
#if !AP_FREE_BEFORE_EXIT
        /* `allocprof` exits now, and the kernel takes its memory back wholesale: freeing
         * the processes' tables and the symbolizer's debug information block by block
         * first cost a compiler's run 10 ms.  Builds with a leak checker free it all. */
        if (term_sig != 0 && ret == 128 + term_sig)
                end_by_signal(term_sig);
        return ret;
#endif
        for (size_t i = 0; i < rs.nended; i++) {
                ap_process_free(rs.ended[i].p);
                ap_profile_free(rs.ended[i].prof);
        }
        free(rs.ended);
        free(rs.dormant_running);
        ap_symbolizer_free(sym);
        free(sock);
        free(sock_dir);
        free(rs.daemon_dir);
        free(preload);
        free(agent);
        if (term_sig != 0 && ret == 128 + term_sig)
                end_by_signal(term_sig);
        return ret;
}
