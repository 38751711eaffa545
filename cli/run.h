/* `allocprof run`: launch a program under the agent with a private collector.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* argv[0] = "run".  Returns the exit status for the allocprof process. */
int ap_cmd_run(int argc, char **argv);

/* The options of `allocprof run`. */
struct ap_run_options {
        const char *output, *outdir, *unwind;
        uint64_t sample;
        bool quiet, follow, dormant, use_daemon;
};

/* Parses run's options in argv[1...] (argv[0] names the command in getopt's messages) up to
 * the first argument that is not one, where it leaves optind.  Returns -1 when they are
 * right, else the exit status: 0 after -h (usage_of(stdout)), 2 after a message saying
 * what is wrong (and usage_of(stderr) for an option that does not exist). */
int ap_run_options(int argc, char **argv, struct ap_run_options *o, void (*usage_of)(FILE *));

/* `cargo alloc-profile ...` (argv as cargo passes it to cargo-alloc-profile). */
int ap_cmd_cargo(int argc, char **argv);

/* Finds liballocprof.so relative to the running allocprof binary (installed layout or
 * build tree).  Returns a malloc'd absolute path or NULL. */
char *ap_find_agent(void);
