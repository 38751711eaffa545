/* Merging several profiles into one (see merge.c).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stddef.h>

#include "profile.h"

/* Merges in[0..n) into a new profile; its process description (pid, command, exit
 * status) is that of in[main_index].  Counters add up; the peak is the sum of the
 * processes' peaks (they may peak at different moments: an upper bound).  Returns 0 or
 * -errno (-EINVAL for n == 0 or an inconsistent input). */
int ap_profile_merge(struct ap_profile *const *in, size_t n, size_t main_index,
                     struct ap_profile **ret);
