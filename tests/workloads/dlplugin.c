/* The plugin dlopen_host loads, calls and unloads.  Its allocations outlive it: a profile
 * must still name plugin_make after dlclose has unmapped this file.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>

#include "workload.h"

enum { PLUGIN_BLOCKS = 10, PLUGIN_LEAKED = 3, PLUGIN_SIZE = 80 };

/* Exported: the host finds it with dlsym. */
__attribute__((visibility("default"))) int plugin_make(void);

/* Pointers to the leaked blocks; unmapped with the plugin, so the blocks become
 * unreachable for real. */
static void *kept[PLUGIN_LEAKED];

/* PLUGIN_BLOCKS allocations of 80 bytes; the first PLUGIN_LEAKED leak.  Returns how many
 * blocks it allocated. */
WL_FRAME int plugin_make(void)
{
        void *blocks[PLUGIN_BLOCKS];
        int n = 0;

        for (int i = 0; i < PLUGIN_BLOCKS; i++) {
                blocks[i] = malloc(PLUGIN_SIZE);
                if (blocks[i])
                        n++;
        }
        wl_keep(blocks);
        for (int i = 0; i < PLUGIN_BLOCKS; i++) {
                if (i < PLUGIN_LEAKED)
                        kept[i] = blocks[i];
                else
                        free(blocks[i]);
        }
        wl_keep(kept);
        return n;
}
