/* `allocprof report [FILE|PID] [--json] [--top N] [--sort KEY] [--color|--no-color]`:
 * reads a profile file (by default the newest one in the current directory) and prints
 * the text or JSON report.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "merge.h"
#include "client.h"
#include "ctl.h"
#include "report.h"
#include "util.h"

#define PROFILE_PREFIX "allocprof."
#define PROFILE_SUFFIX ".approf"

enum {
        OPT_JSON = 256,
        OPT_TOP,
        OPT_SORT,
        OPT_COLOR,
        OPT_NO_COLOR,
        OPT_ALL,
};

static void usage(FILE *out)
{
        fprintf(out, "Usage: allocprof report [FILE|PID]... [OPTIONS]\n"
                     "\n"
                     "Shows a profile written by 'allocprof run'.  Without FILE, the newest\n"
                     "allocprof.*.approf in the current directory; a PID picks the newest\n"
                     "allocprof.*.PID.approf.  Several FILEs are merged into one report.\n"
                     "\n"
                     "Options:\n"
                     "  --all                every profile of the newest run here (all the\n"
                     "                       processes one 'allocprof run' profiled), merged\n"
                     "  --json               the JSON report (schema in USAGE.md)\n"
                     "  --top N              call sites to show (default 10; JSON: all); 0 = all\n"
                     "  --sort KEY           allocations, bytes (default), leaked or peak\n"
                     "  --color, --no-color  force colors on or off (default: on for a terminal,\n"
                     "                       unless NO_COLOR is set)\n"
                     "  -h, --help           this text\n");
}

static bool ends_with(const char *s, const char *suffix)
{
        size_t n = strlen(s), m = strlen(suffix);

        return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Whether `name` is a profile file name, and (if pid_suffix is set, e.g. ".1234.approf")
 * of that process. */
static bool is_profile_name(const char *name, const char *pid_suffix)
{
        if (strncmp(name, PROFILE_PREFIX, strlen(PROFILE_PREFIX)) != 0 ||
            strlen(name) <= strlen(PROFILE_PREFIX) + strlen(PROFILE_SUFFIX))
                return false;
        return ends_with(name, pid_suffix ? pid_suffix : PROFILE_SUFFIX);
}

/* The newest profile (by mtime; the name breaks ties) in the current directory.  Returns
 * 0 and a malloc'd name, -ENOENT if there is none, or another -errno. */
static int find_newest(const char *pid_suffix, char **ret, bool any_name)
{
        struct timespec best_time = {0, 0};
        char *best = NULL;
        struct dirent *e;
        DIR *d = opendir(".");

        if (!d)
                return -errno;
        while ((e = readdir(d))) {
                struct stat st;
                bool newer;

                if (!(any_name ? ends_with(e->d_name, PROFILE_SUFFIX)
                               : is_profile_name(e->d_name, pid_suffix)) ||
                    fstatat(dirfd(d), e->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
                        continue;
                newer = !best || st.st_mtim.tv_sec > best_time.tv_sec ||
                        (st.st_mtim.tv_sec == best_time.tv_sec &&
                         (st.st_mtim.tv_nsec > best_time.tv_nsec ||
                          (st.st_mtim.tv_nsec == best_time.tv_nsec &&
                           strcmp(e->d_name, best) > 0)));
                if (!newer)
                        continue;
                free(best);
                best = strdup(e->d_name);
                if (!best) {
                        closedir(d);
                        return -ENOMEM;
                }
                best_time = st.st_mtim;
        }
        closedir(d);
        if (!best)
                return -ENOENT;
        *ret = best;
        return 0;
}

static bool all_digits(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (*s < '0' || *s > '9')
                        return false;
        return true;
}

static int parse_top(const char *s, unsigned *ret)
{
        unsigned long v;
        char *end;

        if (!all_digits(s))
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || *end || v > UINT_MAX)
                return -EINVAL;
        *ret = (unsigned)v;
        return 0;
}

static int parse_sort(const char *s, enum ap_sort *ret)
{
        static const struct {
                const char *name;
                enum ap_sort sort;
        } keys[] = {
                {"allocations", AP_SORT_ALLOCATIONS},
                {"allocs", AP_SORT_ALLOCATIONS},
                {"bytes", AP_SORT_BYTES},
                {"leaked", AP_SORT_LEAKED},
                {"leaks", AP_SORT_LEAKED},
                {"peak", AP_SORT_PEAK},
        };

        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                if (strcmp(s, keys[i].name) == 0) {
                        *ret = keys[i].sort;
                        return 0;
                }
        }
        return -EINVAL;
}

static bool want_color(void)
{
        const char *no_color = getenv("NO_COLOR"), *term = getenv("TERM");

        /* https://no-color.org: set and non-empty means no colors. */
        if (no_color && *no_color)
                return false;
        if (term && strcmp(term, "dumb") == 0)
                return false;
        return isatty(STDOUT_FILENO) == 1;
}

/* Resolves the FILE|PID argument (NULL = newest) to a path.  Prints the error itself and
 * returns the exit status on failure, 0 on success. */
static int resolve_profile(const char *arg, char **ret, bool *ret_guessed)
{
        char pid_suffix[32];
        struct stat st;
        int r;

        *ret_guessed = false;
        if (arg &&
            !(all_digits(arg) && strlen(arg) < 11 && stat(arg, &st) < 0 && errno == ENOENT)) {
                *ret = strdup(arg);
                if (!*ret) {
                        fprintf(stderr, "allocprof: out of memory\n");
                        return 1;
                }
                return 0;
        }
        if (arg)
                snprintf(pid_suffix, sizeof(pid_suffix), ".%s" PROFILE_SUFFIX, arg);
        r = find_newest(arg ? pid_suffix : NULL, ret, false);
        if (r == -ENOENT && arg) {
                fprintf(stderr,
                        "allocprof: no profile of pid %s in the current directory "
                        "(looked for allocprof.*.%s.approf)\n",
                        arg, arg);
                return 1;
        }
        if (r == -ENOENT) {
                fprintf(stderr, "allocprof: no profile found in the current directory "
                                "(looked for allocprof.*.approf)\n");
                return 1;
        }
        if (r < 0) {
                fprintf(stderr, "allocprof: cannot list the current directory: %s\n", strerror(-r));
                return 1;
        }
        *ret_guessed = true;
        return 0;
}

/* A PID argument names a running process with the agent (and no file of that name is
 * here): its report is a live snapshot. */
static bool live_pid(const char *arg, pid_t *ret)
{
        pid_t pid;
        struct stat st;
        if (!ap_parse_pid(arg, &pid) || stat(arg, &st) == 0 || ap_ctl_profiled_pid(pid) == 0)
                return false;
        if (ret != NULL)
                *ret = pid;
        return true;
}

static int live_profile(const char *arg, struct ap_profile **ret)
{
        pid_t pid = 0;
        live_pid(arg, &pid);
        return ap_live_snapshot(pid, ret);
}

struct loaded {
        struct ap_profile **ps;
        size_t n, cap;
};

static int keep(struct loaded *l, struct ap_profile *p)
{
        if (AP_GROW(l->ps, l->cap, l->n + 1) < 0) {
                ap_profile_free(p);
                return -ENOMEM;
        }
        l->ps[l->n++] = p;
        return 0;
}

/* Reads one profile; prints the error itself.  Returns 0 or 1 (the exit status). */
static int read_one(const char *path, struct ap_profile **ret)
{
        char *err = NULL;
        int r = ap_profile_read(path, ret, &err);
        if (r < 0) {
                fprintf(stderr, "allocprof: cannot read %s: %s\n", path, err ? err : strerror(-r));
                free(err);
                return 1;
        }
        return 0;
}

/* Every profile in the current directory that shares the run id of the newest one, each
 * read once.  Prints the error itself; returns 0 or the exit status. */
static int load_run(struct loaded *l)
{
        char *newest = NULL;
        struct ap_profile *np = NULL;
        /* Any *.approf here counts (run -o names its main profile freely). */
        if (find_newest(NULL, &newest, true) < 0) {
                fprintf(stderr, "allocprof: no profile found in the current directory "
                                "(looked for *.approf)\n");
                return 1;
        }
        int status = read_one(newest, &np);
        if (status != 0 || keep(l, np) < 0) {
                free(newest);
                return 1;
        }
        const char *run_id = np->run_id; /* np lives as long as l */
        DIR *d = run_id ? opendir(".") : NULL;
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
                struct ap_profile *q = NULL;
                char *qerr = NULL;
                if (!ends_with(e->d_name, PROFILE_SUFFIX) || strcmp(e->d_name, newest) == 0 ||
                    ap_profile_read(e->d_name, &q, &qerr) < 0) {
                        free(qerr);
                        continue;
                }
                if (q->run_id == NULL || strcmp(q->run_id, run_id) != 0)
                        ap_profile_free(q);
                else if (keep(l, q) < 0)
                        break;
        }
        if (d != NULL)
                closedir(d);
        free(newest);
        return 0;
}

/* Reads the profiles named in argv (or, with `all`, every profile of the newest run
 * here) and merges them into *ret.  Prints the error itself and returns the exit status
 * on failure, 0 on success. */
static int load_many(int argc, char **argv, bool all, struct ap_profile **ret)
{
        struct loaded l = {0};
        int status = 0;

        if (all && argc > 0) {
                fprintf(stderr, "allocprof: --all takes no FILE\n");
                return 2;
        }
        if (all)
                status = load_run(&l);
        /* The same file named twice (f f, f ./f) would count twice: read it once. */
        struct stat *seen = calloc((size_t)argc + 1, sizeof(*seen));
        size_t nseen = 0;
        if (seen == NULL)
                status = 1;
        for (int i = 0; !all && status == 0 && i < argc; i++) {
                char *name = NULL;
                bool guessed;
                struct ap_profile *p = NULL;
                struct stat st;
                if (live_pid(argv[i], NULL)) {
                        status = live_profile(argv[i], &p);
                } else if ((status = resolve_profile(argv[i], &name, &guessed)) == 0) {
                        bool dup = false;
                        if (stat(name, &st) == 0 && S_ISREG(st.st_mode)) {
                                for (size_t k = 0; k < nseen; k++)
                                        dup |= seen[k].st_dev == st.st_dev &&
                                               seen[k].st_ino == st.st_ino;
                                if (!dup)
                                        seen[nseen++] = st;
                        }
                        if (dup) {
                                fprintf(stderr, "allocprof: %s is named twice: read once\n",
                                        argv[i]);
                                free(name);
                                continue;
                        }
                        status = read_one(name, &p);
                }
                /* A copy of a profile already read (the same image: pid and start) would
                 * count twice as well. */
                bool copy = false;
                for (size_t k = 0; status == 0 && p != NULL && k < l.n; k++)
                        copy |= l.ps[k]->pid == p->pid &&
                                l.ps[k]->start_unix_ns == p->start_unix_ns;
                if (copy) {
                        fprintf(stderr,
                                "allocprof: %s is the profile of a process image already read "
                                "(pid %u): skipped\n",
                                argv[i], p->pid);
                        ap_profile_free(p);
                } else if (status == 0 && keep(&l, p) < 0) {
                        status = 1;
                }
                free(name);
        }
        if (status == 0) {
                size_t main_index = 0;
                /* The program itself is the image whose exit status its run knew. */
                for (size_t i = 0; i < l.n; i++)
                        if (l.ps[i]->exit_status >= 0 || l.ps[i]->term_signal > 0)
                                main_index = i;
                int r = ap_profile_merge(l.ps, l.n, main_index, ret);
                if (r < 0) {
                        fprintf(stderr, "allocprof: cannot merge the profiles: %s\n", strerror(-r));
                        status = 1;
                }
        }
        for (size_t i = 0; i < l.n; i++)
                ap_profile_free(l.ps[i]);
        free(l.ps);
        free(seen);
        return status;
}

int ap_cmd_report(int argc, char **argv)
{
        static const struct option opts[] = {
                {"json", no_argument, NULL, OPT_JSON},
                {"top", required_argument, NULL, OPT_TOP},
                {"sort", required_argument, NULL, OPT_SORT},
                {"color", no_argument, NULL, OPT_COLOR},
                {"colour", no_argument, NULL, OPT_COLOR},
                {"no-color", no_argument, NULL, OPT_NO_COLOR},
                {"no-colour", no_argument, NULL, OPT_NO_COLOR},
                {"all", no_argument, NULL, OPT_ALL},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        struct ap_report_opts ro = {.top = 10, .sort = AP_SORT_BYTES, .color = false};
        struct ap_profile *p = NULL;
        const char *file = NULL;
        char *path = NULL, *err = NULL;
        bool json = false, top_set = false, guessed, all = false;
        int color = -1; /* -1 = decide from the terminal */
        int c, r;

        /* 0, not 1: also resets GNU getopt's permutation state between calls. */
        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
                switch (c) {
                case OPT_JSON:
                        json = true;
                        break;
                case OPT_TOP:
                        if (parse_top(optarg, &ro.top) < 0) {
                                fprintf(stderr,
                                        "allocprof: invalid --top value '%s' (expected a "
                                        "number of call sites, 0 = all)\n",
                                        optarg);
                                return 2;
                        }
                        top_set = true;
                        break;
                case OPT_SORT:
                        if (parse_sort(optarg, &ro.sort) < 0) {
                                fprintf(stderr,
                                        "allocprof: invalid --sort value '%s' (expected "
                                        "allocations, bytes, leaked or peak)\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case OPT_COLOR:
                        color = 1;
                        break;
                case OPT_NO_COLOR:
                        color = 0;
                        break;
                case OPT_ALL:
                        all = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case ':':
                        fprintf(stderr,
                                "allocprof: option '%s' needs a value (see 'allocprof "
                                "report --help')\n",
                                argv[optind - 1]);
                        return 2;
                default:
                        if (optopt > 0 && optopt < 256 && optopt != '?')
                                fprintf(stderr,
                                        "allocprof: unknown option '-%c' (see 'allocprof "
                                        "report --help')\n",
                                        optopt);
                        else
                                fprintf(stderr,
                                        "allocprof: unknown option '%s' (see 'allocprof "
                                        "report --help')\n",
                                        argv[optind - 1]);
                        return 2;
                }
        }
        if (json && !top_set)
                ro.top = 0;
        ro.color = !json && (color >= 0 ? color == 1 : want_color());

        if (all || argc - optind > 1) {
                r = load_many(argc - optind, argv + optind, all, &p);
                if (r != 0)
                        return r;
        } else {
                if (optind < argc)
                        file = argv[optind++];
                if (file != NULL && live_pid(file, NULL)) {
                        r = live_profile(file, &p);
                        if (r != 0)
                                return r;
                        goto render;
                }
                r = resolve_profile(file, &path, &guessed);
                if (r != 0)
                        return r;
                r = ap_profile_read(path, &p, &err);
                if (r < 0) {
                        fprintf(stderr, "allocprof: cannot read %s: %s\n", path,
                                err ? err : strerror(-r));
                        free(err);
                        free(path);
                        return 1;
                }
                if (guessed && !json)
                        fprintf(stderr, "allocprof: showing %s (the newest profile here)\n", path);
        }
render:
        r = json ? ap_report_json(stdout, p, &ro) : ap_report_text(stdout, p, &ro);
        if (r < 0)
                fprintf(stderr, "allocprof: cannot write the report: %s\n", strerror(-r));
        ap_profile_free(p);
        free(path);
        return r < 0 ? 1 : 0;
}
