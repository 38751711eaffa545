/* maxrss.so: preloaded by bench/run into the processes of its collector-memory runs.  As
 * each process exits it writes its own peak resident size in KiB (getrusage RUSAGE_SELF,
 * which the kernel keeps exactly) to $APBENCH_MAXRSS_DIR/PID.
 *
 * proctree samples from outside and misses what a process adds in the last interval
 * before it exits; the collector symbolizes and writes the profile then, after the
 * program's exit, so proctree saw its peak in some runs and missed up to 4 MiB of it in
 * others (8.8 or 12.7 MiB for the same run).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

__attribute__((destructor)) static void write_maxrss(void)
{
        const char *dir = getenv("APBENCH_MAXRSS_DIR");
        struct rusage ru;
        if (dir == NULL || getrusage(RUSAGE_SELF, &ru) != 0)
                return;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%d", dir, (int)getpid());
        FILE *f = fopen(path, "w");
        if (f == NULL)
                return;
        fprintf(f, "%ld\n", ru.ru_maxrss);
        fclose(f);
}
