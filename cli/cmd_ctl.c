/* The commands that talk to a running collector: `allocprof ps`, `attach`, `detach` and
 * `snapshot`.  `report PID` uses the same snapshot path (cmd_report.c).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allocprof/wire.h"
#include "client.h"
#include "ctl.h"
#include "util.h"

#define CALL_TIMEOUT_MS AP_CTL_CALL_TIMEOUT_MS

/* ---- ps ------------------------------------------------------------------------------ */

/* The collectors to ask, each once.  A collector is its socket, and one socket can go by
 * several names (the daemon's path as this CLI computes it, and as each program it
 * profiles got it, spelled differently or through a symbolic link): its inode tells. */
struct sock_name {
        char *path;
        dev_t dev;
        ino_t ino; /* 0: could not be looked at, told apart by its path alone */
};

struct sockets {
        struct sock_name *s;
        size_t n, cap;
};

/* Adds path (copied) unless it names a socket already there.  Returns 0 or -ENOMEM. */
static int add_socket(struct sockets *l, const char *path)
{
        struct stat st;
        dev_t dev = 0;
        ino_t ino = 0;
        if (stat(path, &st) == 0) {
                dev = st.st_dev;
                ino = st.st_ino;
        }
        for (size_t i = 0; i < l->n; i++)
                if (strcmp(l->s[i].path, path) == 0 ||
                    (ino != 0 && l->s[i].ino == ino && l->s[i].dev == dev))
                        return 0;
        if (AP_GROW(l->s, l->cap, l->n + 1) < 0)
                return -ENOMEM;
        char *copy = strdup(path);
        if (copy == NULL)
                return -ENOMEM;
        l->s[l->n++] = (struct sock_name){.path = copy, .dev = dev, .ino = ino};
        return 0;
}

static void free_sockets(struct sockets *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->s[i].path);
        free(l->s);
}

/* Adds the private collectors of `allocprof run` (and any other collector), found through
 * the environment of the processes they profile. */
static void list_sockets(struct sockets *l)
{
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
                pid_t pid;
                if (!ap_parse_pid(e->d_name, &pid))
                        continue;
                char *sock = ap_ctl_environ_socket(pid);
                if (sock != NULL)
                        (void)add_socket(l, sock);
                free(sock);
        }
        if (d != NULL)
                closedir(d);
}

static void add_processes(json_t *all, json_t *resp)
{
        json_t *list = json_object_get(resp, "processes");
        size_t i;
        json_t *pr;
        json_array_foreach(list, i, pr)
        {
                /* One process can be listed by two collectors only as finished by one of
                 * them (exec'ed elsewhere): keep every live entry, skip repeats. */
                bool dup = false;
                size_t k;
                json_t *q;
                json_array_foreach(all, k, q) dup |= json_equal(q, pr);
                if (!dup)
                        json_array_append(all, pr);
        }
}

/* 524288 -> "512K", as --sample takes it. */
static const char *compact_size(char *buf, size_t len, uint64_t v)
{
        static const char units[] = "KMG";
        int u = -1;
        while (u < 2 && v >= 1024 && v % 1024 == 0) {
                v /= 1024;
                u++;
        }
        snprintf(buf, len, "%llu%.*s", (unsigned long long)v, u >= 0 ? 1 : 0,
                 u >= 0 ? &units[u] : "");
        return buf;
}

static void print_ps(json_t *all)
{
        printf("%7s %7s %-16s %-9s %12s %12s  %s\n", "PID", "PPID", "MODE", "STATE", "ALLOCS",
               "LIVE", "COMMAND");
        size_t i;
        json_t *pr;
        json_array_foreach(all, i, pr)
        {
                char live[32];
                ap_fmt_bytes(live, sizeof(live),
                             (uint64_t)json_integer_value(json_object_get(pr, "live_bytes")));
                const char *mode = json_string_value(json_object_get(pr, "mode"));
                char modebuf[48];
                json_int_t iv = json_integer_value(json_object_get(pr, "sample_interval"));
                if (mode && strcmp(mode, "sampled") == 0 && iv > 0) {
                        char ivs[24];
                        snprintf(modebuf, sizeof(modebuf), "sampled/%s",
                                 compact_size(ivs, sizeof(ivs), (uint64_t)iv));
                        mode = modebuf;
                }
                printf("%7lld %7lld %-16s %-9s %12lld %12s  %s\n",
                       (long long)json_integer_value(json_object_get(pr, "pid")),
                       (long long)json_integer_value(json_object_get(pr, "ppid")),
                       mode ? mode : "?",
                       json_string_value(json_object_get(pr, "state")) ?: "?",
                       (long long)json_integer_value(json_object_get(pr, "allocations")), live,
                       json_string_value(json_object_get(pr, "command")) ?: "");
        }
}

int ap_cmd_ps(int argc, char **argv)
{
        static const struct option opts[] = {
                {"json", no_argument, NULL, 'j'},
                {"help", no_argument, NULL, 'h'},
                {0},
        };
        bool json = false;
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
                switch (c) {
                case 'j':
                        json = true;
                        break;
                case 'h':
                        printf("Usage: allocprof ps [--json]\n"
                               "Lists the processes profiled by allocprofd and by running\n"
                               "'allocprof run' sessions: pid, mode, state (recording, dormant,\n"
                               "finished), allocations so far and live bytes.\n");
                        return 0;
                default:
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "allocprof: ps takes no arguments\n");
                return 2;
        }
        json_t *all = json_array();
        char *err = NULL;
        struct ap_ctl *ctl = NULL;
        int reached = 0, status = 0;
        int r = ap_ctl_open_daemon(&ctl, &err);
        if (r < 0 && r != -ENOENT && r != -ECONNREFUSED) {
                fprintf(stderr, "allocprof: allocprofd: %s\n", err ? err : strerror(-r));
                status = 1;
        }
        free(err);
        err = NULL;
        /* The daemon first, connected already; then every other collector, once. */
        struct sockets socks = {0};
        struct ap_ctl *daemon = ctl;
        if (daemon != NULL && add_socket(&socks, ap_ctl_path(daemon)) < 0) {
                ap_ctl_close(daemon);
                daemon = NULL;
        }
        list_sockets(&socks);
        for (size_t i = 0; i < socks.n; i++) {
                ctl = NULL;
                if (i == 0 && daemon != NULL) {
                        ctl = daemon;
                } else if (ap_ctl_open(socks.s[i].path, &ctl, &err) < 0) {
                        free(err); /* a collector that is gone: nothing to list */
                        err = NULL;
                        continue;
                }
                json_t *resp = NULL;
                r = ap_ctl_call(ctl, json_pack("{s:s}", "cmd", "ps"), -1, CALL_TIMEOUT_MS, &resp,
                                &err);
                if (r == 0) {
                        if (json_is_true(json_object_get(resp, "ok"))) {
                                add_processes(all, resp);
                                reached++;
                        } else {
                                fprintf(stderr, "allocprof: %s\n", ap_ctl_error(resp));
                                status = 1;
                        }
                } else if (r != -EPIPE || ctl == daemon) {
                        /* Alive but not answering (stopped, stuck): its processes are not
                         * listed, and "no collector is running" would be untrue.  A run
                         * that hung up has just ended: nothing to list. */
                        fprintf(stderr, "allocprof: %s%s: %s\n",
                                ctl == daemon ? "allocprofd at " : "the collector at ",
                                socks.s[i].path, err ? err : strerror(-r));
                        status = 1;
                }
                free(err);
                err = NULL;
                json_decref(resp);
                ap_ctl_close(ctl);
        }
        free_sockets(&socks);
        if (json) {
                json_t *doc = json_pack("{s:i, s:o}", "version", 1, "processes", all);
                json_dumpf(doc, stdout, JSON_INDENT(2));
                printf("\n");
                json_decref(doc);
        } else {
                if (reached == 0 && status == 0)
                        fprintf(stderr, "allocprof: no collector is running (no allocprofd, no "
                                        "'allocprof run')\n");
                print_ps(all);
                json_decref(all);
        }
        return status;
}

/* ---- attach / detach -------------------------------------------------------------------- */

/* "10s", "500ms", "2m", "1h", "30" (seconds) -> milliseconds. */
static int parse_duration(const char *s, uint64_t *ret_ms)
{
        char *end;
        if (s[0] < '0' || s[0] > '9')
                return -EINVAL;
        errno = 0;
        double v = strtod(s, &end);
        if (errno != 0 || v <= 0)
                return -EINVAL;
        double mul = 1000;
        if (strcmp(end, "ms") == 0)
                mul = 1;
        else if (strcmp(end, "s") == 0 || *end == '\0')
                mul = 1000;
        else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
                mul = 60000;
        else if (strcmp(end, "h") == 0)
                mul = 3600000;
        else
                return -EINVAL;
        if (v * mul > 1e12 || v * mul < 1)
                return -EINVAL;
        *ret_ms = (uint64_t)(v * mul);
        return 0;
}

/* 3600000 -> "1 h", 90000 -> "90 s", 1500 -> "1.500 s", in the unit it was given in
 * (or a smaller one). */
static const char *fmt_duration(char *buf, size_t len, uint64_t ms)
{
        if (ms % 3600000 == 0)
                snprintf(buf, len, "%" PRIu64 " h", ms / 3600000);
        else if (ms % 60000 == 0)
                snprintf(buf, len, "%" PRIu64 " min", ms / 60000);
        else if (ms % 1000 == 0)
                snprintf(buf, len, "%" PRIu64 " s", ms / 1000);
        else if (ms < 1000)
                snprintf(buf, len, "%" PRIu64 " ms", ms);
        else
                snprintf(buf, len, "%" PRIu64 ".%03" PRIu64 " s", ms / 1000, ms % 1000);
        return buf;
}

/* Sends one request about pid and prints the failure, if any.  Returns the exit status;
 * *ret_resp (if non-NULL) gets a successful answer. */
static int call_for_pid(pid_t *ppid, json_t *req, json_t **ret_resp)
{
        struct ap_ctl *ctl = NULL;
        int status = ap_ctl_for_pid(ppid, &ctl);
        pid_t pid = *ppid;
        if (status != 0) {
                json_decref(req);
                return status;
        }
        json_object_set_new(req, "pid", json_integer(pid));
        json_t *resp = NULL;
        char *err = NULL;
        if (ap_ctl_call(ctl, req, -1, CALL_TIMEOUT_MS, &resp, &err) < 0) {
                fprintf(stderr, "allocprof: pid %d: %s\n", (int)pid, err);
                free(err);
                ap_ctl_close(ctl);
                return 1;
        }
        if (!json_is_true(json_object_get(resp, "ok"))) {
                ap_ctl_print_refusal(ctl, pid, resp);
                ap_ctl_close(ctl);
                json_decref(resp);
                return 1;
        }
        ap_ctl_close(ctl);
        if (ret_resp != NULL)
                *ret_resp = resp;
        else
                json_decref(resp);
        return 0;
}

static bool one_pid(int argc, char **argv, const char *cmd, pid_t *pid)
{
        if (optind + 1 != argc) {
                fprintf(stderr, "allocprof: %s needs exactly one PID\n", cmd);
                return false;
        }
        if (!ap_parse_pid(argv[optind], pid)) {
                fprintf(stderr, "allocprof: %s: '%s' is not a process id\n", cmd, argv[optind]);
                return false;
        }
        return true;
}

int ap_cmd_attach(int argc, char **argv)
{
        static const struct option opts[] = {
                {"sample", required_argument, NULL, 's'},
                {"for", required_argument, NULL, 'f'},
                {"help", no_argument, NULL, 'h'},
                {0},
        };
        uint64_t sample = 512 * 1024, for_ms = 0;
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "s:f:h", opts, NULL)) != -1) {
                switch (c) {
                case 's': {
                        int r = ap_parse_sample(optarg, &sample);
                        if (r == -ERANGE)
                                return 2;
                        if (r < 0 || sample == 0) {
                                fprintf(stderr,
                                        "allocprof: --sample: '%s' is not a size of at least "
                                        "one byte (examples: 4096, 64K, 512K, 1M); attach "
                                        "always samples, use 'allocprof run' to record every "
                                        "allocation\n",
                                        optarg);
                                return 2;
                        }
                        break;
                }
                case 'f':
                        if (parse_duration(optarg, &for_ms) < 0) {
                                fprintf(stderr,
                                        "allocprof: --for: '%s' is not a duration (examples: "
                                        "30s, 500ms, 5m, 1h)\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case 'h':
                        printf("Usage: allocprof attach PID [--sample BYTES] [--for DURATION]\n"
                               "Switches recording on in a process started with the agent\n"
                               "dormant ('allocprof run --dormant'), sampling one allocation per\n"
                               "BYTES allocated on average (default 512K).  --for: detach again\n"
                               "after DURATION (30s, 5m, ...).  No ptrace: the agent is told\n"
                               "through its shared control page.\n");
                        return 0;
                default:
                        return 2;
                }
        }
        pid_t pid;
        if (!one_pid(argc, argv, "attach", &pid))
                return 2;
        json_t *req = json_pack("{s:s, s:i, s:I}", "cmd", "attach", "pid", (int)pid, "sample",
                                (json_int_t)sample);
        if (for_ms)
                json_object_set_new(req, "for_ms", json_integer((json_int_t)for_ms));
        int status = call_for_pid(&pid, req, NULL);
        if (status == 0) {
                char iv[32], dur[48];
                fprintf(stderr, "allocprof: attached to pid %d, sampling every %s on average",
                        (int)pid, ap_fmt_bytes(iv, sizeof(iv), sample));
                if (for_ms)
                        fprintf(stderr, " for %s", fmt_duration(dur, sizeof(dur), for_ms));
                fprintf(stderr, "\n");
        }
        return status;
}

int ap_cmd_detach(int argc, char **argv)
{
        optind = 1;
        if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
                printf("Usage: allocprof detach PID\n"
                       "Switches recording off again in an attached process.  Its profile\n"
                       "keeps what was recorded; blocks sampled before are still followed to\n"
                       "their free, so live figures stay right.\n");
                return 0;
        }
        pid_t pid;
        if (!one_pid(argc, argv, "detach", &pid))
                return 2;
        int status = call_for_pid(&pid, json_pack("{s:s}", "cmd", "detach"), NULL);
        if (status == 0)
                fprintf(stderr, "allocprof: detached from pid %d\n", (int)pid);
        return status;
}

/* ---- snapshot ------------------------------------------------------------------------- */

int ap_live_snapshot(pid_t pid, struct ap_profile **ret)
{
        struct ap_ctl *ctl = NULL;
        int status = ap_ctl_for_pid(&pid, &ctl);
        if (status != 0)
                return status;
        status = ap_ctl_snapshot(ctl, pid, ret);
        ap_ctl_close(ctl);
        return status;
}

int ap_cmd_snapshot(int argc, char **argv)
{
        static const struct option opts[] = {
                {"output", required_argument, NULL, 'o'},
                {"help", no_argument, NULL, 'h'},
                {0},
        };
        const char *output = NULL;
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
                switch (c) {
                case 'o':
                        output = optarg;
                        break;
                case 'h':
                        printf("Usage: allocprof snapshot PID [-o FILE]\n"
                               "Saves the profile of a running process as it is now (default\n"
                               "FILE: allocprof.<prog>.<pid>.snapshot.approf); 'allocprof report\n"
                               "FILE' reads it like any other profile.  FILE is checked as 'run\n"
                               "-o' checks it, before the snapshot is taken (a device, a FIFO or\n"
                               "a redirected /dev/stdout is written into).\n");
                        return 0;
                default:
                        return 2;
                }
        }
        pid_t pid;
        if (!one_pid(argc, argv, "snapshot", &pid))
                return 2;
        /* Checked before the collector symbolizes a snapshot for nothing: -o as run
         * checks it (in the same words), else this directory. */
        if (output != NULL && ap_run_check_dest(output, NULL) != 0)
                return 1;
        char *why = NULL;
        int r = output ? 0 : ap_profile_check_dir(".", &why);
        if (r < 0) {
                fprintf(stderr, "allocprof: cannot write the snapshot: %s\n",
                        why ? why : strerror(-r));
                free(why);
                return 1;
        }
        struct ap_profile *prof = NULL;
        int status = ap_live_snapshot(pid, &prof);
        if (status != 0)
                return status;
        /* The pid of an `allocprof run` stood for its program's: the snapshot is that. */
        if (prof->pid != 0)
                pid = (pid_t)prof->pid;
        char *path;
        if (output != NULL) {
                path = strdup(output);
        } else {
                const char *exe = prof->exe ? ap_path_base(prof->exe) : "unknown";
                path = ap_asprintf("allocprof.%s.%d.snapshot.approf", exe, (int)pid);
        }
        r = path ? ap_profile_write(prof, path) : -ENOMEM;
        if (r < 0) {
                fprintf(stderr, "allocprof: cannot write the profile %s: %s\n",
                        path ? path : "of the snapshot", ap_profile_write_strerror(r));
                status = 1;
        } else {
                fprintf(stderr, "allocprof: snapshot of pid %d written to %s\n", (int)pid, path);
        }
        free(path);
        ap_profile_free(prof);
        return status;
}
