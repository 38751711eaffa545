/* Locating liballocprof.so next to the allocprof binary: first the installed layout
 * (bindir -> libdir, as configured), then the build tree (cli/ -> agent/).  An explicit
 * ALLOCPROF_AGENT overrides both (for packagers and tests).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "run.h"
#include "util.h"

/* Relative path from AP_BINDIR to AP_LIBDIR, e.g. "../lib/x86_64-linux-gnu". */
static char *bin_to_lib(void)
{
        const char *b = AP_BINDIR, *l = AP_LIBDIR;
        size_t common = 0;
        for (size_t i = 0; b[i] && b[i] == l[i]; i++)
                if (b[i] == '/')
                        common = i + 1;
        char rel[PATH_MAX] = "";
        size_t len = 0;
        for (const char *s = b + common; *s; s++)
                if (s == b + common || s[-1] == '/')
                        len += (size_t)snprintf(rel + len, sizeof(rel) - len, "../");
        snprintf(rel + len, sizeof(rel) - len, "%s", l + common);
        return strdup(rel);
}

char *ap_find_agent(void)
{
        const char *env = getenv("ALLOCPROF_AGENT");
        if (env != NULL && env[0] != '\0')
                return realpath(env, NULL);

        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0)
                return NULL;
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash == NULL)
                return NULL;
        *slash = '\0';

        char *rel = bin_to_lib();
        const char *candidates[2] = {rel, "../agent"};
        for (int i = 0; i < 2; i++) {
                if (candidates[i] == NULL)
                        continue;
                char *path = ap_asprintf("%s/%s/liballocprof.so", self, candidates[i]);
                if (path == NULL)
                        continue;
                char *real = realpath(path, NULL);
                free(path);
                if (real != NULL && access(real, R_OK) == 0) {
                        free(rel);
                        return real;
                }
                free(real);
        }
        free(rel);
        return NULL;
}
