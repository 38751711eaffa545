/* `allocprof report [FILE|PID] [--json|--folded] [--top N] [--sort KEY] [--color|--no-color]`:
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
        OPT_FOLDED,
};

static void usage(FILE *out)
{
        fprintf(out, "Usage: allocprof report [FILE|PID]... [OPTIONS]\n"
                     "\n"
                     "Shows a profile written by 'allocprof run'.  Without FILE, the newest\n"
                     "allocprof.*.approf in the current directory.  A PID still running is\n"
                     "reported live; one that has ended picks the newest allocprof.*.PID.approf\n"
                     "here, else the newest *.approf of that process (run -o FILE), else of\n"
                     "the program its 'allocprof run' started.  Several FILEs are merged.\n"
                     "\n"
                     "Options:\n"
                     "  --all                every profile of the newest run here (all the\n"
                     "                       processes one 'allocprof run' profiled), merged\n"
                     "  --json               the JSON report (schema in USAGE.md)\n"
                     "  --folded             folded stacks for flame graphs: a line per\n"
                     "                       call site, its frames outermost first joined\n"
                     "                       by ';', a space, its --sort figure\n"
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

/* Whether `name` is a profile file name: allocprof.*.approf. */
static bool is_profile_name(const char *name)
{
        return strncmp(name, PROFILE_PREFIX, strlen(PROFILE_PREFIX)) == 0 &&
               strlen(name) > strlen(PROFILE_PREFIX) + strlen(PROFILE_SUFFIX) &&
               ends_with(name, PROFILE_SUFFIX);
}

/* Whether `name` is the default name of a profile of process `pid` (decimal):
 * allocprof.<prog>.<pid>.approf, or allocprof.<prog>.<pid>-<n>.approf for the same
 * program exec'ed again under that pid. */
static bool is_pid_profile_name(const char *name, const char *pid)
{
        if (!is_profile_name(name))
                return false;
        size_t len = strlen(name) - strlen(PROFILE_SUFFIX), digits = len;
        while (digits > 0 && name[digits - 1] >= '0' && name[digits - 1] <= '9')
                digits--;
        if (digits < len && digits > 0 && name[digits - 1] == '-')
                len = digits - 1; /* the image number */
        size_t plen = strlen(pid);
        return len > strlen(PROFILE_PREFIX) + plen + 1 && name[len - plen - 1] == '.' &&
               strncmp(name + len - plen, pid, plen) == 0;
}

/* Whether the file (st, name) is newer than the best so far (by mtime; the name breaks
 * ties). */
static bool newer(const struct stat *st, const char *name, const struct timespec *best_time,
                  const char *best)
{
        return !best || st->st_mtim.tv_sec > best_time->tv_sec ||
               (st->st_mtim.tv_sec == best_time->tv_sec &&
                (st->st_mtim.tv_nsec > best_time->tv_nsec ||
                 (st->st_mtim.tv_nsec == best_time->tv_nsec && strcmp(name, best) > 0)));
}

/* `name` in directory `dir` ("." : the name alone), malloc'd. */
static char *in_dir(const char *dir, const char *name)
{
        return strcmp(dir, ".") == 0 ? strdup(name) : ap_asprintf("%s/%s", dir, name);
}

/* The newest profile in directory `dir`: of process `pid` (decimal) by its name if pid is
 * set, else any allocprof.*.approf, or with any_name any *.approf.  Returns 0 and a
 * malloc'd path (the name alone in "."), -ENOENT if there is none, or another -errno. */
static int find_newest(const char *dir, const char *pid, char **ret, bool any_name)
{
        struct timespec best_time = {0, 0};
        char *best = NULL;
        struct dirent *e;
        DIR *d = opendir(dir);

        if (!d)
                return -errno;
        while ((e = readdir(d))) {
                struct stat st;

                if (!(any_name ? ends_with(e->d_name, PROFILE_SUFFIX)
                      : pid    ? is_pid_profile_name(e->d_name, pid)
                               : is_profile_name(e->d_name)) ||
                    fstatat(dirfd(d), e->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode) ||
                    !newer(&st, e->d_name, &best_time, best))
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
        *ret = in_dir(dir, best);
        free(best);
        return *ret ? 0 : -ENOMEM;
}

/* The newest *.approf in directory `dir` whose process is `pid`, whatever its name
 * (run -o FILE, a snapshot); else the newest of the program an `allocprof run` with that
 * pid ran (its child, whose exit status the run knew: the image run wrote to -o).  Each
 * file is read.  Returns 0 with a malloc'd path (as find_newest's) and *ret_program (0,
 * or the program's pid), -ENOENT if there is none, or another -errno. */
static int find_by_content(const char *dir, pid_t pid, char **ret, pid_t *ret_program)
{
        struct timespec best_time[2] = {{0, 0}, {0, 0}};
        char *best[2] = {NULL, NULL}; /* pid's own, its run's program */
        pid_t program = 0;
        struct dirent *e;
        DIR *d = opendir(dir);
        int r = 0;

        if (!d)
                return -errno;
        while (r == 0 && (e = readdir(d))) {
                struct ap_profile *p = NULL;
                struct stat st;
                int k = -1;

                if (!ends_with(e->d_name, PROFILE_SUFFIX) ||
                    fstatat(dirfd(d), e->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
                        continue;
                char *path = in_dir(dir, e->d_name);
                int rr = path ? ap_profile_read(path, &p, NULL) : -ENOMEM;
                free(path);
                if (rr < 0)
                        continue;
                if (p->pid == (uint32_t)pid)
                        k = 0;
                else if (p->ppid == (uint32_t)pid && p->run_id != NULL &&
                         (p->exit_status >= 0 || p->term_signal > 0))
                        k = 1;
                if (k >= 0 && newer(&st, e->d_name, &best_time[k], best[k])) {
                        free(best[k]);
                        best[k] = strdup(e->d_name);
                        best_time[k] = st.st_mtim;
                        if (best[k] == NULL)
                                r = -ENOMEM;
                        if (k == 1)
                                program = (pid_t)p->pid;
                }
                ap_profile_free(p);
        }
        closedir(d);
        if (r == 0 && best[0] == NULL && best[1] == NULL)
                r = -ENOENT;
        if (r == 0) {
                *ret = in_dir(dir, best[0] ? best[0] : best[1]);
                *ret_program = best[0] ? 0 : program;
                free(best[0]);
                free(best[1]);
                return *ret ? 0 : -ENOMEM;
        }
        free(best[0]);
        free(best[1]);
        return r;
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

/* The output directory of a running allocprofd of ours (its hello says it), or NULL.
 * The current directory is not repeated. */
static char *daemon_output_dir(void)
{
        struct ap_ctl *c = NULL;
        char *err = NULL, *dir = NULL;
        json_t *resp = NULL;
        if (ap_ctl_open_daemon(&c, &err) == 0 &&
            ap_ctl_call(c, json_pack("{s:s}", "cmd", "hello"), -1, 2000, &resp, &err) == 0) {
                const char *d = json_string_value(json_object_get(resp, "output_dir"));
                char here[PATH_MAX];
                if (d != NULL && d[0] == '/' &&
                    !(getcwd(here, sizeof(here)) != NULL && strcmp(here, d) == 0))
                        dir = strdup(d);
        }
        json_decref(resp);
        free(err);
        ap_ctl_close(c);
        return dir;
}

/* Resolves the FILE|PID argument (NULL = newest) to a path.  Says on stderr which file
 * it picked if `say` (and always when a pid stands for the program its run started).
 * Prints the error itself and returns the exit status on failure, 0 on success. */
static int resolve_profile(const char *arg, char **ret, bool say)
{
        struct stat st;
        pid_t pid = 0, program = 0;
        int r;

        if (arg &&
            !(all_digits(arg) && strlen(arg) < 11 && stat(arg, &st) < 0 && errno == ENOENT)) {
                *ret = strdup(arg);
                if (!*ret) {
                        fprintf(stderr, "allocprof: out of memory\n");
                        return 1;
                }
                return 0;
        }
        r = find_newest(".", arg, ret, false);
        /* A profile not named for the process: run -o FILE, or the pid of the run. */
        if (r == -ENOENT && arg && ap_parse_pid(arg, &pid))
                r = find_by_content(".", pid, ret, &program);
        /* A process allocprofd profiled: in its output directory. */
        char *ddir = r == -ENOENT && pid > 0 ? daemon_output_dir() : NULL;
        if (ddir != NULL) {
                r = find_newest(ddir, arg, ret, false);
                if (r == -ENOENT)
                        r = find_by_content(ddir, pid, ret, &program);
                if (r == 0 && program == 0)
                        fprintf(stderr,
                                "allocprof: showing %s (the newest profile of pid %s in "
                                "allocprofd's output directory)\n",
                                *ret, arg);
                if (r == 0)
                        say = false;
        }
        if (r == -ENOENT && arg) {
                struct ap_proc_stat ps;
                bool running = pid > 0 && ap_proc_stat(pid, &ps) && ps.state != 'Z';
                /* Another user's process hides its maps: whether it has the agent is
                 * unknown, and it could not be reported on live anyway. */
                char proc[32], why[128] = "";
                struct stat pst;
                snprintf(proc, sizeof(proc), "/proc/%d", (int)pid);
                if (running && geteuid() != 0 && stat(proc, &pst) == 0 && pst.st_uid != geteuid())
                        snprintf(why, sizeof(why),
                                 "; the process is running as uid %u: only its owner (or root) "
                                 "can report on it live",
                                 (unsigned)pst.st_uid);
                else if (running)
                        snprintf(why, sizeof(why),
                                 "; the process is running, without the allocprof agent");
                fprintf(stderr,
                        "allocprof: no profile of pid %s in the current directory%s%s (looked "
                        "for allocprof.*.%s.approf, then in every *.approf for process %s or "
                        "for the program an 'allocprof run' with pid %s started)%s\n",
                        arg, ddir ? " nor in allocprofd's output directory " : "", ddir ? ddir : "",
                        arg, arg, arg, why);
                free(ddir);
                return 1;
        }
        free(ddir);
        if (r == -ENOENT) {
                fprintf(stderr, "allocprof: no profile found in the current directory "
                                "(looked for allocprof.*.approf)\n");
                return 1;
        }
        if (r < 0) {
                fprintf(stderr, "allocprof: cannot list the current directory: %s\n", strerror(-r));
                return 1;
        }
        if (program > 0)
                fprintf(stderr,
                        "allocprof: pid %s was 'allocprof run'; showing %s, the profile of "
                        "its program, pid %d\n",
                        arg, *ret, (int)program);
        else if (say && arg)
                fprintf(stderr, "allocprof: showing %s (the newest profile of pid %s here)\n", *ret,
                        arg);
        else if (say)
                fprintf(stderr, "allocprof: showing %s (the newest profile here)\n", *ret);
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
        if (find_newest(".", NULL, &newest, true) < 0) {
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
                struct ap_profile *p = NULL;
                struct stat st;
                if (live_pid(argv[i], NULL)) {
                        status = live_profile(argv[i], &p);
                } else if ((status = resolve_profile(argv[i], &name, false)) == 0) {
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
                {"folded", no_argument, NULL, OPT_FOLDED},
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
        bool json = false, folded = false, top_set = false, all = false;
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
                case OPT_FOLDED:
                        folded = true;
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
        if (json && folded) {
                fprintf(stderr, "allocprof: --json and --folded are two formats: choose one\n");
                return 2;
        }
        if ((json || folded) && !top_set)
                ro.top = 0;
        ro.color = !json && !folded && (color >= 0 ? color == 1 : want_color());

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
                r = resolve_profile(file, &path, !json);
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
        }
render:
        r = json     ? ap_report_json(stdout, p, &ro)
            : folded ? ap_report_folded(stdout, p, &ro)
                     : ap_report_text(stdout, p, &ro);
        if (r < 0)
                fprintf(stderr, "allocprof: cannot write the report: %s\n", strerror(-r));
        ap_profile_free(p);
        free(path);
        return r < 0 ? 1 : 0;
}
