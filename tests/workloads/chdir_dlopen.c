/* Loads a plugin by a relative path, changes directory, and only then calls it:
 *
 *   chdir_dlopen ./dir/libdlplugin.so DIR
 *
 * The plugin's code first allocates (plugin_make: 10 blocks of 80 bytes, 3 leaked) after
 * the chdir, which is when the agent first meets it.  Exit status: 0 ok, 2 usage,
 * 3 dlopen, 4 dlsym, 5 chdir, 6 plugin result (test-robust.sh).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dlfcn.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char **argv)
{
        if (argc != 3)
                return 2;
        void *plugin = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!plugin)
                return 3;
        int (*make)(void) = (int (*)(void))dlsym(plugin, "plugin_make");
        if (!make)
                return 4;
        if (chdir(argv[2]) != 0)
                return 5;
        return make() == 10 ? 0 : 6;
}
