/* Many short threads, one after another in waves: the collector frees a slot when its
 * thread has exited and it has read the slot's ring to the end, and the next thread
 * to claim it must start at the ring's beginning again, so that shared memory stays
 * at a few pages per slot instead of growing, owner after owner, to each ring's 2 MiB.
 *
 * WAVES waves of WIDTH threads; each thread makes ALLOCS allocations of 40 bytes from
 * churn_alloc and frees them.  Then the process writes the shared memory it has
 * resident (RssShmem of /proc/self/status, in kB) to the file named by argv[1].
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { WAVES = 1250, WIDTH = 16, ALLOCS = 20 };

void *volatile churn_sink;

__attribute__((noinline)) static void *churn_alloc(void)
{
        void *p = malloc(40);
        churn_sink = p;
        return p;
}

static void *thread_main(void *arg)
{
        for (int i = 0; i < ALLOCS; i++)
                free(churn_alloc());
        return arg;
}

static long rss_shmem_kb(void)
{
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        long kb = -1;
        while (f != NULL && fgets(line, sizeof(line), f) != NULL)
                if (strncmp(line, "RssShmem:", 9) == 0)
                        kb = strtol(line + 9, NULL, 10);
        if (f != NULL)
                fclose(f);
        return kb;
}

int main(int argc, char **argv)
{
        if (argc != 2) {
                fprintf(stderr, "usage: thread_churn OUTFILE\n");
                return 2;
        }
        for (int w = 0; w < WAVES; w++) {
                pthread_t t[WIDTH];
                for (int i = 0; i < WIDTH; i++)
                        if (pthread_create(&t[i], NULL, thread_main, NULL) != 0)
                                return 1;
                for (int i = 0; i < WIDTH; i++)
                        pthread_join(t[i], NULL);
        }
        FILE *out = fopen(argv[1], "w");
        if (out == NULL || fprintf(out, "%ld\n", rss_shmem_kb()) < 0 || fclose(out) != 0)
                return 1;
        return 0;
}
