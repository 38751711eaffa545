/* `allocprof run`: launch a program under the agent with a private collector.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

/* argv[0] = "run".  Returns the exit status for the allocprof process. */
int ap_cmd_run(int argc, char **argv);

/* `cargo alloc-profile ...` (argv as cargo passes it to cargo-alloc-profile). */
int ap_cmd_cargo(int argc, char **argv);

/* Finds liballocprof.so relative to the running allocprof binary (installed layout or
 * build tree).  Returns a malloc'd absolute path or NULL. */
char *ap_find_agent(void);
