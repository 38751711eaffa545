/* `cargo alloc-profile run|test|bench [CARGO ARGS] [-- PROGRAM ARGS]`: builds with cargo,
 * then profiles the built program(s) -- not cargo or rustc -- exactly as `allocprof run`
 * does.  Installed as the `cargo-alloc-profile` link to the allocprof binary, which cargo
 * finds on PATH as a subcommand.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "run.h"
#include "util.h"

struct artifact {
        char *exe;
        char *name;
        char *dir; /* the package's directory: cargo runs tests from there */
};

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: cargo alloc-profile run|test|bench [CARGO OPTIONS] [-- PROGRAM ARGS]\n"
                "\n"
                "Builds with cargo, then profiles what cargo built (the binary for run, every\n"
                "test or bench executable for test and bench) with 'allocprof run'; cargo and\n"
                "rustc themselves are not profiled.  Profiles are written to the current\n"
                "directory as allocprof.<program>.<pid>.approf; view one with\n"
                "'allocprof report FILE'.\n"
                "\n"
                "allocprof options go first, before the cargo subcommand; they are those of\n"
                "'allocprof run' (see 'allocprof run --help'), e.g.\n"
                "  cargo alloc-profile [--sample BYTES] [--unwind dwarf|fp|libunwind]\n"
                "                      [-o FILE | --output-dir DIR] [-q] run ...\n"
                "-o FILE is for one executable; relative paths are from the current directory.\n");
}

/* Runs cargo with argv, collecting executables from its JSON messages.  Returns cargo's
 * exit status (0 on success) or -errno. */
static int cargo_build(char **argv, const char *mode, struct artifact **ret, size_t *ret_n)
{
        int out[2];
        if (pipe2(out, O_CLOEXEC) < 0)
                return -errno;
        pid_t pid = fork();
        if (pid < 0) {
                close(out[0]);
                close(out[1]);
                return -errno;
        }
        if (pid == 0) {
                dup2(out[1], STDOUT_FILENO);
                execvp(argv[0], argv);
                fprintf(stderr, "allocprof: cannot run %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }
        close(out[1]);
        FILE *f = fdopen(out[0], "r");
        struct artifact *arts = NULL;
        size_t n = 0, cap = 0;
        char *line = NULL;
        size_t len = 0;
        while (f != NULL && getline(&line, &len, f) > 0) {
                json_t *msg = json_loads(line, 0, NULL);
                if (msg == NULL)
                        continue;
                const char *reason = json_string_value(json_object_get(msg, "reason"));
                const char *exe = json_string_value(json_object_get(msg, "executable"));
                json_t *target = json_object_get(msg, "target");
                json_t *profile = json_object_get(msg, "profile");
                const char *name = json_string_value(json_object_get(target, "name"));
                const char *manifest = json_string_value(json_object_get(msg, "manifest_path"));
                bool is_test = json_is_true(json_object_get(profile, "test"));
                bool is_bin = false;
                json_t *kinds = json_object_get(target, "kind");
                for (size_t i = 0; i < json_array_size(kinds); i++)
                        is_bin |= strcmp(json_string_value(json_array_get(kinds, i)) ?: "",
                                         "bin") == 0;
                bool want = reason && strcmp(reason, "compiler-artifact") == 0 && exe != NULL &&
                            (strcmp(mode, "run") == 0 ? is_bin && !is_test : is_test);
                if (want && AP_GROW(arts, cap, n + 1) == 0) {
                        char *m = manifest ? strdup(manifest) : NULL;
                        arts[n].exe = strdup(exe);
                        arts[n].name = strdup(name ? name : "program");
                        arts[n].dir = m ? strdup(dirname(m)) : NULL;
                        free(m);
                        n++;
                }
                json_decref(msg);
        }
        free(line);
        if (f != NULL)
                fclose(f);
        else
                close(out[0]);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        *ret = arts;
        *ret_n = n;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* `path` as seen from `cwd` (the program runs in its package's directory). */
static char *from_cwd(const char *path, const char *cwd)
{
        return path[0] == '/' ? strdup(path) : ap_asprintf("%s/%s", cwd, path);
}

/* Runs `allocprof run OPTS -- exe args` as a child (this same binary), with the options
 * the user gave (o) and the profiles written where they said, or in `cwd`.  Returns its
 * exit status. */
static int profile_one(const struct artifact *a, const struct ap_run_options *o, char **args,
                       int nargs, const char *cwd)
{
        char self[PATH_MAX];
        ssize_t l = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (l <= 0)
                return 1;
        self[l] = '\0';
        char **argv = calloc((size_t)(nargs + 16), sizeof(char *));
        char *dir = from_cwd(o->outdir ? o->outdir : ".", cwd);
        char *outarg = ap_asprintf("--output-dir=%s", dir ? dir : "");
        char *file = o->output ? from_cwd(o->output, cwd) : NULL;
        char *filearg = file ? ap_asprintf("--output=%s", file) : NULL;
        char *samplearg = ap_asprintf("--sample=%llu", (unsigned long long)o->sample);
        char *unwindarg = ap_asprintf("--unwind=%s", o->unwind);
        free(dir);
        free(file);
        if (argv == NULL || outarg == NULL || (o->output && filearg == NULL) || samplearg == NULL ||
            unwindarg == NULL) {
                free(argv);
                free(outarg);
                free(filearg);
                free(samplearg);
                free(unwindarg);
                return 1;
        }
        int k = 0;
        argv[k++] = self;
        argv[k++] = "run";
        argv[k++] = samplearg;
        argv[k++] = unwindarg;
        if (o->quiet)
                argv[k++] = "--quiet";
        if (!o->follow)
                argv[k++] = "--no-follow";
        if (o->dormant)
                argv[k++] = "--dormant";
        if (!o->use_daemon)
                argv[k++] = "--no-daemon";
        /* Without --output-dir, run puts the other processes' profiles next to -o's. */
        if (filearg != NULL)
                argv[k++] = filearg;
        if (filearg == NULL || o->outdir != NULL)
                argv[k++] = outarg;
        argv[k++] = "--";
        argv[k++] = a->exe;
        for (int i = 0; i < nargs; i++)
                argv[k++] = args[i];
        pid_t pid = fork();
        if (pid == 0) {
                if (a->dir != NULL && chdir(a->dir) < 0)
                        fprintf(stderr, "allocprof: cannot enter %s: %s\n", a->dir,
                                strerror(errno));
                execv(self, argv);
                _exit(127);
        }
        int st = 1;
        if (pid > 0)
                while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                        ;
        free(outarg);
        free(filearg);
        free(samplearg);
        free(unwindarg);
        free(argv);
        return pid < 0 ? 1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void free_arts(struct artifact *arts, size_t n)
{
        for (size_t j = 0; j < n; j++) {
                free(arts[j].exe);
                free(arts[j].name);
                free(arts[j].dir);
        }
        free(arts);
}

int ap_cmd_cargo(int argc, char **argv)
{
        /* cargo runs us as: cargo-alloc-profile alloc-profile SUBCOMMAND ... */
        int i = 1;
        if (i < argc && strcmp(argv[i], "alloc-profile") == 0)
                i++;
        /* allocprof run's options, parsed by run's own parser: the same ones, taking
         * values the same way (-o FILE, --output=FILE). */
        char **check = calloc((size_t)(argc - i) + 2, sizeof(char *));
        if (check == NULL)
                return 1;
        check[0] = "cargo alloc-profile";
        memcpy(check + 1, argv + i, sizeof(char *) * (size_t)(argc - i));
        struct ap_run_options o;
        int bad = ap_run_options(argc - i + 1, check, &o, usage);
        int nopts = optind - 1;
        free(check);
        if (bad >= 0)
                return bad;
        i += nopts;
        if (i >= argc || (strcmp(argv[i], "run") != 0 && strcmp(argv[i], "test") != 0 &&
                          strcmp(argv[i], "bench") != 0)) {
                usage(stderr);
                return 2;
        }
        const char *mode = argv[i++];
        if (ap_run_check_dest(o.output, o.outdir) != 0)
                return 1;

        /* cargo args up to "--", the program's after it */
        int dash = i;
        while (dash < argc && strcmp(argv[dash], "--") != 0)
                dash++;
        char **cargo = calloc((size_t)(dash - i + 8), sizeof(char *));
        if (cargo == NULL)
                return 1;
        const char *cargo_bin = getenv("CARGO");
        int k = 0;
        cargo[k++] = (char *)(cargo_bin && *cargo_bin ? cargo_bin : "cargo");
        if (strcmp(mode, "run") == 0) {
                cargo[k++] = "build";
        } else {
                cargo[k++] = (char *)mode;
                cargo[k++] = "--no-run";
        }
        cargo[k++] = "--message-format=json-render-diagnostics";
        for (int j = i; j < dash; j++)
                cargo[k++] = argv[j];
        char **prog_args = dash < argc ? argv + dash + 1 : argv + argc;
        int nprog_args = dash < argc ? argc - dash - 1 : 0;

        struct artifact *arts = NULL;
        size_t n = 0;
        int r = cargo_build(cargo, mode, &arts, &n);
        free(cargo);
        if (r != 0) {
                if (r < 0)
                        fprintf(stderr, "allocprof: cannot run cargo: %s\n", strerror(-r));
                return r < 0 ? 1 : r;
        }
        if (n == 0) {
                fprintf(stderr, "allocprof: cargo built no %s executable\n",
                        strcmp(mode, "run") == 0 ? "binary" : mode);
                return 1;
        }
        if (strcmp(mode, "run") == 0 && n > 1) {
                fprintf(stderr, "allocprof: cargo built %zu binaries; choose one with --bin NAME\n",
                        n);
                free_arts(arts, n);
                return 1;
        }
        if (o.output != NULL && n > 1) {
                fprintf(stderr,
                        "allocprof: -o names one profile, and cargo built %zu %s executables: "
                        "name a directory for them with --output-dir DIR\n",
                        n, mode);
                free_arts(arts, n);
                return 2;
        }
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd)) == NULL) {
                free_arts(arts, n);
                return 1;
        }
        int status = 0;
        for (size_t j = 0; j < n; j++) {
                fprintf(stderr, "allocprof: profiling %s\n", arts[j].exe);
                int st = profile_one(&arts[j], &o, prog_args, nprog_args, cwd);
                if (status == 0)
                        status = st;
        }
        free_arts(arts, n);
        return status;
}
