/* allocprof: the command-line front end.  Dispatches to the subcommands.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "ctl.h"
#include "report.h"
#include "run.h"

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: allocprof COMMAND [OPTIONS]\n"
                "\n"
                "Commands:\n"
                "  run [-o FILE] [-q] [--sample BYTES] [--unwind dwarf|fp|libunwind] [--no-follow]\n"
                "      [--output-dir DIR] [--dormant] [--no-daemon] [--] PROG [ARGS...]\n"
                "                          profile PROG (and the processes it starts)\n"
                "  report [FILE|PID]... [--all] [--json|--folded] [--top N]\n"
                "      [--sort allocations|bytes|leaked|peak] [--color|--no-color]\n"
                "                          show a profile (default: the newest one here);\n"
                "                          several, or --all of one run, are merged; a PID\n"
                "                          still running is reported live\n"
                "  ps [--json]             list the processes being profiled\n"
                "  snapshot PID [-o FILE]  save the live profile of a running process\n"
                "  attach PID [--sample BYTES] [--for DURATION]\n"
                "                          switch recording on in a dormant process\n"
                "  detach PID              switch it off again\n"
                "  help                    this text\n"
                "  version                 print the version\n"
                "\n"
                "Installed as cargo-alloc-profile it is also 'cargo alloc-profile\n"
                "run|test|bench'.  See USAGE.md for every option and the JSON schema.\n");
}

int main(int argc, char **argv)
{
        const char *self = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
        if (strcmp(self, "cargo-alloc-profile") == 0)
                return ap_cmd_cargo(argc, argv);
        if (argc < 2) {
                usage(stderr);
                return 2;
        }
        const char *cmd = argv[1];
        /* getopt's messages start with argv[0]: "allocprof run: unrecognized option". */
        static char name[64];
        snprintf(name, sizeof(name), "allocprof %s", cmd);
        argv[1] = name;
        if (strcmp(cmd, "run") == 0)
                return ap_cmd_run(argc - 1, argv + 1);
        if (strcmp(cmd, "report") == 0)
                return ap_cmd_report(argc - 1, argv + 1);
        if (strcmp(cmd, "ps") == 0)
                return ap_cmd_ps(argc - 1, argv + 1);
        if (strcmp(cmd, "attach") == 0)
                return ap_cmd_attach(argc - 1, argv + 1);
        if (strcmp(cmd, "detach") == 0)
                return ap_cmd_detach(argc - 1, argv + 1);
        if (strcmp(cmd, "snapshot") == 0)
                return ap_cmd_snapshot(argc - 1, argv + 1);
        if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
                usage(stdout);
                return 0;
        }
        if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
                printf("allocprof %s\n", AP_VERSION);
                return 0;
        }
        fprintf(stderr, "allocprof: unknown command '%s' (try 'allocprof help')\n", cmd);
        return 2;
}
