/* Commands that talk to a running collector (cmd_ctl.c).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <sys/types.h>

#include "profile.h"

/* argv[0] is the command name.  Each returns the exit status. */
int ap_cmd_ps(int argc, char **argv);
int ap_cmd_attach(int argc, char **argv);
int ap_cmd_detach(int argc, char **argv);
int ap_cmd_snapshot(int argc, char **argv);

/* A live snapshot of pid from whichever collector profiles it.  Returns 0, or an exit
 * status after printing one clear line. */
int ap_live_snapshot(pid_t pid, struct ap_profile **ret);
