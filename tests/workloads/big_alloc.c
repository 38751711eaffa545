/* A program that runs close to its address-space limit: allocates one block of argv[1]
 * MiB, then starts a thread that allocates 100 bytes, frees both and prints "ok", or
 * says what failed and exits 1 (test-robust.sh runs it under `prlimit --as`).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "workload.h"

WL_FRAME static void *worker(void *arg)
{
        void *p = malloc(100);
        wl_keep(p);
        free(p);
        return arg;
}

int main(int argc, char **argv)
{
        if (argc != 2)
                return 2;
        size_t mib = strtoul(argv[1], NULL, 10);
        void *big = malloc(mib << 20);
        if (big == NULL) {
                fprintf(stderr, "big_alloc: cannot allocate %zu MiB\n", mib);
                return 1;
        }
        wl_keep(big);
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) {
                fprintf(stderr, "big_alloc: cannot create a thread\n");
                return 1;
        }
        pthread_join(t, NULL);
        free(big);
        puts("ok");
        return 0;
}
