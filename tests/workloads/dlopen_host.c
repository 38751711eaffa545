/* Loads the plugin named by argv[1], calls plugin_make (which allocates), unloads it,
 * checks it is really gone, and exits.  See dlopen_host.expected.json.  Exit status:
 * 0 ok, 2 usage, 3 dlopen, 4 dlsym, 5 plugin result, 6 dlclose, 7 still loaded.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dlfcn.h>
#include <stdlib.h>

#include "workload.h"

/* Leaked on purpose. */
static void *host_kept;

/* 1 allocation of 256 bytes before the plugin is loaded; leaks. */
WL_FRAME static void host_before(void)
{
        host_kept = malloc(256);
        wl_keep(host_kept);
}

/* 1 allocation of 32 bytes after the plugin is gone; freed. */
WL_FRAME static void host_after(void)
{
        void *p = malloc(32);
        wl_keep(p);
        free(p);
}

int main(int argc, char **argv)
{
        if (argc != 2)
                return 2;

        host_before();

        void *plugin = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!plugin)
                return 3;
        int (*make)(void) = (int (*)(void))dlsym(plugin, "plugin_make");
        if (!make)
                return 4;
        if (make() != 10)
                return 5;
        if (dlclose(plugin) != 0)
                return 6;
        /* Without the unload this test would prove nothing. */
        if (dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD))
                return 7;

        host_after();
        return 0;
}
