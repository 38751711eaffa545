/* allocprofd: the collector as a per-user service.  Profiles every process whose agent
 * registers on its socket, keeps each one apart, serves `allocprof ps`, live reports,
 * attach/detach and the run sessions of `allocprof run`, and writes each profile when
 * its process ends (or, on SIGTERM, every open one before it exits).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "profile.h"
#include "server.h"
#include "service.h"
#include "symbolize.h"
#include "util.h"
#include "warm.h"

struct daemon {
        char *outdir;
        struct ap_warmer *warmer;
        struct ap_symbolizer *sym; /* only when the background thread could not start */
};

struct write_job {
        struct daemon *d;
        struct ap_process *p;
};

/* allocprof.<exe>.<pid>.approf, numbered when that name exists already (pid reuse, or
 * a program that exec'ed itself). */
static char *profile_path(const char *dir, const struct ap_profile *prof)
{
        const char *exe = prof->exe && prof->exe[0] ? ap_path_base(prof->exe) : "unknown";
        char *path = ap_asprintf("%s/allocprof.%s.%u.approf", dir, exe, prof->pid);
        struct stat st;
        for (int k = 2; path != NULL && lstat(path, &st) == 0 && k < 10000; k++) {
                free(path);
                path = ap_asprintf("%s/allocprof.%s.%u-%d.approf", dir, exe, prof->pid, k);
        }
        return path;
}

/* On the background thread: symbolize, write, free. */
static void write_profile(void *arg, struct ap_symbolizer *sym)
{
        struct write_job *j = arg;
        struct ap_profile *prof = NULL;
        int r = ap_process_finalize(j->p, sym, &prof);
        if (r < 0) {
                fprintf(stderr, "allocprofd: pid %d: cannot finalize its profile: %s\n",
                        (int)ap_process_pid(j->p), strerror(-r));
        } else {
                char *path = profile_path(j->d->outdir, prof);
                r = path ? ap_profile_write(prof, path) : -ENOMEM;
                if (r < 0)
                        fprintf(stderr, "allocprofd: cannot write %s: %s\n", path ? path : "?",
                                strerror(-r));
                else
                        fprintf(stderr, "allocprofd: pid %u: profile written to %s\n", prof->pid,
                                path);
                free(path);
        }
        ap_profile_free(prof);
        ap_process_free(j->p);
        free(j);
}

/* A process image ended (or we are stopping): its profile is written off the loop. */
static void on_done(void *userdata, struct ap_process *p, bool by_exec)
{
        struct daemon *d = userdata;
        (void)by_exec;
        uint64_t allocations, live;
        ap_process_stats(p, &allocations, &live);
        uint32_t mode = ap_process_mode(p, NULL);
        /* Started dormant and never attached: nothing to say about it. */
        if (allocations == 0 && (mode == AP_MODE_DORMANT || mode == AP_MODE_OFF)) {
                ap_process_free(p);
                return;
        }
        struct write_job *j = malloc(sizeof(*j));
        if (j == NULL) {
                fprintf(stderr, "allocprofd: pid %d: out of memory, profile lost\n",
                        (int)ap_process_pid(p));
                ap_process_free(p);
                return;
        }
        *j = (struct write_job){.d = d, .p = p};
        if (d->warmer != NULL && ap_warmer_run(d->warmer, write_profile, j) == 0)
                return;
        if (d->sym == NULL && ap_symbolizer_new(&d->sym) < 0) {
                fprintf(stderr, "allocprofd: out of memory\n");
                ap_process_free(p);
                free(j);
                return;
        }
        write_profile(j, d->sym);
}

static void on_note(void *userdata, int pid, const char *why)
{
        (void)userdata;
        (void)pid;
        fprintf(stderr, "allocprofd: %s\n", why);
}

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: allocprofd [--foreground] [--socket PATH] [--output-dir DIR]\n"
                "Profiles the programs of this user that start with the allocprof agent and\n"
                "writes each profile to DIR when the program ends.\n"
                "  -f, --foreground     do not daemonize; messages go to stderr\n"
                "  -s, --socket PATH    listen on PATH (default: $XDG_RUNTIME_DIR/allocprof/\n"
                "                       allocprofd.sock, else /tmp/allocprof-UID/allocprofd.sock;\n"
                "                       ALLOCPROF_DAEMON_SOCKET overrides the default)\n"
                "  -d, --output-dir DIR where profiles go (default: the current directory)\n"
                "Under systemd (allocprofd.socket) the socket is inherited through LISTEN_FDS.\n"
                "Programs reach it through `allocprof run`, or directly with\n"
                "  LD_PRELOAD=%s/liballocprof.so ALLOCPROF_SOCKET=PATH prog\n"
                "(add ALLOCPROF_MODE=dormant to start them switched off, for `allocprof attach`).\n"
                "SIGTERM or SIGINT: every open profile is written, then allocprofd exits.\n",
                AP_LIBDIR);
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                {"socket", required_argument, NULL, 's'},
                {"output-dir", required_argument, NULL, 'd'},
                {"foreground", no_argument, NULL, 'f'},
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, 'V'},
                {0},
        };
        const char *sock_opt = NULL, *outdir = ".";
        bool foreground = false;
        struct daemon d = {0};
        int c;
        while ((c = getopt_long(argc, argv, "s:d:fhV", opts, NULL)) != -1) {
                switch (c) {
                case 's':
                        sock_opt = optarg;
                        break;
                case 'd':
                        outdir = optarg;
                        break;
                case 'f':
                        foreground = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("allocprofd %s\n", AP_VERSION);
                        return 0;
                default: /* getopt said what is wrong, in one line: enough */
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "allocprofd: unexpected argument '%s' (see allocprofd --help)\n",
                        argv[optind]);
                return 2;
        }
        /* Resolved now: the daemon's working directory becomes /. */
        char resolved[PATH_MAX], *why = NULL;
        int dr = ap_profile_check_dir(outdir, &why);
        if (dr == 0 && realpath(outdir, resolved) == NULL)
                dr = -errno;
        if (dr < 0) {
                fprintf(stderr, "allocprofd: --output-dir: %s\n", why ? why : strerror(-dr));
                free(why);
                return 1;
        }
        d.outdir = strdup(resolved);

        /* Every failure below prints one line and ends at `fail` (nothing leaks there:
         * the ASan build checks). */
        char *err = NULL, *sock = NULL;
        int listen_fd = -1, ready_fd = -1;
        struct ap_collector *coll = NULL;
        int r = ap_service_listen_fds(&listen_fd, &err);
        if (r < 0)
                goto fail;
        if (listen_fd < 0) {
                /* Relative: to the directory we were started in, not to / where the
                 * daemon goes (it listened on /NAME), and absolute in what the programs and
                 * hello are told. */
                char cwd[PATH_MAX];
                if (sock_opt != NULL && sock_opt[0] != '/' && getcwd(cwd, sizeof(cwd)) == NULL) {
                        r = -errno;
                        err = ap_asprintf("--socket %s: cannot tell the current directory: %s",
                                          sock_opt, strerror(-r));
                        goto fail;
                }
                if (sock_opt != NULL)
                        sock = sock_opt[0] == '/'
                                       ? strdup(sock_opt)
                                       : ap_asprintf("%s%s%s", cwd,
                                                     strcmp(cwd, "/") != 0 ? "/" : "", sock_opt);
                else if ((r = ap_service_socket_path(true, &sock, &err)) < 0)
                        goto fail;
        }

        /* A descriptor per profiled process and per client: take what we may. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }

        /* Under socket activation systemd supervises us: stay in the foreground. */
        if (!foreground && listen_fd < 0 && (r = ap_service_daemonize(&ready_fd, &err)) < 0)
                goto fail;

        if (listen_fd >= 0)
                r = ap_collector_new_fd(listen_fd, on_done, &d, &coll);
        else
                r = ap_collector_new(sock, on_done, &d, &coll, &err);
        if (r < 0) {
                char *msg = ap_asprintf("allocprofd: %s", err ? err : strerror(-r));
                ap_service_fail(ready_fd, msg);
                free(msg);
                goto fail;
        }
        ap_collector_set_note(coll, on_note, &d);
        /* One background thread symbolizes: it loads debug information while programs
         * run, and writes profiles and snapshots without stalling the loop. */
        struct ap_symbolizer *wsym = NULL;
        if (ap_symbolizer_new(&wsym) == 0 && ap_warmer_start(wsym, &d.warmer) == 0)
                ap_collector_set_warmer(coll, d.warmer);
        /* Said in hello, for `allocprof report PID` (out of memory: not said). */
        (void)ap_collector_set_output_dir(coll, d.outdir);

        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        fprintf(stderr, "allocprofd %s: pid %d listening on %s, profiles to %s\n", AP_VERSION,
                (int)getpid(), sock ? sock : "the socket systemd passed", d.outdir);
        ap_service_ready(ready_fd);
        int status = 0;
        for (;;) {
                int ev = ap_collector_step(coll, 200, sfd);
                if (ev < 0) {
                        fprintf(stderr, "allocprofd: %s\n", strerror(-ev));
                        status = 1;
                        break;
                }
                if (ev > 0)
                        break;
        }
        /* Every open profile is written before we go. */
        ap_collector_flush_all(coll);
        ap_warmer_wait(d.warmer);
        ap_collector_free(coll);
        ap_warmer_stop(d.warmer);
        ap_symbolizer_free(wsym);
        ap_symbolizer_free(d.sym);
        fprintf(stderr, "allocprofd: stopped\n");
        free(sock);
        free(d.outdir);
        return status;

fail:
        fprintf(stderr, "allocprofd: %s\n", err ? err : strerror(-r));
        free(err);
        free(sock);
        free(d.outdir);
        return 1;
}
