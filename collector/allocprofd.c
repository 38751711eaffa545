/* allocprofd: the collector as a standalone service.  Listens on a socket, profiles every
 * process whose agent registers there, and writes each profile when the process ends.
 * (Multi-client reporting and attach come with the service work; see USAGE.md.)
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "profile.h"
#include "server.h"
#include "symbolize.h"
#include "util.h"

struct daemon {
        const char *outdir;
        struct ap_symbolizer *sym;
};

static void on_done(void *userdata, struct ap_process *p, bool by_exec)
{
        struct daemon *d = userdata;
        struct ap_profile *prof = NULL;
        (void)by_exec;
        if (ap_process_finalize(p, d->sym, &prof) == 0) {
                const char *exe = prof->exe && prof->exe[0] ? prof->exe : "unknown";
                const char *base = strrchr(exe, '/') ? strrchr(exe, '/') + 1 : exe;
                char *path = ap_asprintf("%s/allocprof.%s.%u.approf", d->outdir, base, prof->pid);
                int r = path ? ap_profile_write(prof, path) : -ENOMEM;
                if (r < 0)
                        fprintf(stderr, "allocprofd: cannot write %s: %s\n", path ? path : "?",
                                strerror(-r));
                else
                        fprintf(stderr, "allocprofd: pid %u: profile written to %s\n", prof->pid,
                                path);
                free(path);
                ap_profile_free(prof);
        }
        ap_process_free(p);
}

static void usage(FILE *out)
{
        fprintf(out, "Usage: allocprofd --socket PATH [--output-dir DIR]\n"
                     "Runs in the foreground.  Programs started with\n"
                     "  LD_PRELOAD=/path/to/liballocprof.so ALLOCPROF_SOCKET=PATH prog\n"
                     "are profiled; each profile is written to DIR (default: .) when the\n"
                     "program ends.  SIGINT/SIGTERM write all open profiles, then exit.\n");
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
        const char *sock = NULL;
        struct daemon d = {.outdir = "."};
        int c;
        while ((c = getopt_long(argc, argv, "s:d:fhV", opts, NULL)) != -1) {
                switch (c) {
                case 's':
                        sock = optarg;
                        break;
                case 'd':
                        d.outdir = optarg;
                        break;
                case 'f':
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("allocprofd %s\n", AP_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (sock == NULL) {
                usage(stderr);
                return 2;
        }
        if (ap_symbolizer_new(&d.sym) < 0) {
                fprintf(stderr, "allocprofd: out of memory\n");
                return 1;
        }
        struct ap_collector *coll = NULL;
        char *err = NULL;
        if (ap_collector_new(sock, on_done, &d, &coll, &err) < 0) {
                fprintf(stderr, "allocprofd: %s\n", err);
                free(err);
                return 1;
        }
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        for (;;) {
                int ev = ap_collector_step(coll, 200, sfd);
                if (ev < 0) {
                        fprintf(stderr, "allocprofd: %s\n", strerror(-ev));
                        break;
                }
                if (ev > 0)
                        break;
        }
        ap_collector_flush_all(coll);
        ap_collector_free(coll);
        ap_symbolizer_free(d.sym);
        return 0;
}
