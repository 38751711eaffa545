/* Rendering of an ap_profile: colored or plain text, the versioned JSON report, and the
 * short summary `allocprof run` prints.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "profile.h"

enum ap_sort { AP_SORT_ALLOCATIONS, AP_SORT_BYTES, AP_SORT_LEAKED, AP_SORT_PEAK };

struct ap_report_opts {
        unsigned top; /* sites to show; 0 = all */
        enum ap_sort sort;
        bool color; /* ANSI colors */
};

/* Full text report.  A live snapshot (p->live) is worded as one: its "leaked" figures are
 * shown as blocks live now, never as leaks.  Returns 0 or -errno (write error). */
int ap_report_text(FILE *out, const struct ap_profile *p, const struct ap_report_opts *o);

/* Folded stacks, the input of flame-graph tools: a line per call site with a non-zero
 * figure (by o->sort: allocations, bytes, leaked bytes, bytes at the peak), its frames
 * from the outermost to the allocation site separated by ';', then a space and the
 * figure.  All sites in the file's order when o->top is 0, else the first o->top in
 * o->sort's order.  Returns 0 or -errno. */
int ap_report_folded(FILE *out, const struct ap_profile *p, const struct ap_report_opts *o);

/* The JSON report (schema documented in USAGE.md).  Returns 0 or -errno. */
int ap_report_json(FILE *out, const struct ap_profile *p, const struct ap_report_opts *o);

/* The few lines `allocprof run` prints to stderr at the end: totals, top 3 sites, leaks,
 * dropped events, and where the profile went (profile_path may be NULL); for a live
 * snapshot, what is live now instead of leaks. Every line starts with "allocprof: ". */
void ap_report_summary(FILE *out, const struct ap_profile *p, const char *profile_path);

/* `allocprof report ...` (argv[0] = "report").  Returns the process exit status. */
int ap_cmd_report(int argc, char **argv);
