/* Allocates known blocks, then dies by the signal argv[1] names: `segv` (a write through a
 * null pointer), `abort` (abort()) or `kill` (SIGKILL, which nothing can catch).  What was
 * recorded before the death must survive it (see crash.expected.json).  No stdio.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

enum { BLOCKS = 5, FREED = 2, SIZE = 128 };

static void *blocks[BLOCKS];

/* BLOCKS allocations of 128 bytes; the first FREED are freed, the others are live when
 * the process dies. */
WL_FRAME static void crash_prepare(void)
{
        for (int i = 0; i < BLOCKS; i++)
                blocks[i] = malloc(SIZE);
        wl_keep(blocks);
        for (int i = 0; i < FREED; i++)
                free(blocks[i]);
}

/* volatile: the compiler cannot see that the pointer is null, so it emits a real store
 * (a store through a known null pointer may be compiled into a trap instruction). */
static int *volatile null_pointer;

int main(int argc, char **argv)
{
        if (argc != 2)
                return 2;
        crash_prepare();
        if (strcmp(argv[1], "segv") == 0)
                *null_pointer = 1;
        else if (strcmp(argv[1], "abort") == 0)
                abort();
        else if (strcmp(argv[1], "kill") == 0)
                raise(SIGKILL);
        return 3; /* unknown signal name, or the signal did not kill us */
}
