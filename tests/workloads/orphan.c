/* A program that ends while a child it forked runs on, the child not registered yet: the
 * parent forks and exits at once (status 3) without allocating; the child sleeps
 * argv[1] milliseconds, then allocates 3 blocks of 1000 bytes and frees two of them.
 * Child: 3 allocations of 3,000 bytes, 2 frees of 2,000, 1 block of 1,000 leaked.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* volatile: the compiler may not pair the mallocs with the frees and drop both */
void *volatile orphan_sink[3];

int main(int argc, char **argv)
{
        long ms = argc > 1 ? atol(argv[1]) : 200;
        if (fork() != 0)
                return 3;
        struct timespec ts = {ms / 1000, ms % 1000 * 1000 * 1000};
        while (nanosleep(&ts, &ts) != 0)
                ;
        for (int i = 0; i < 3; i++)
                orphan_sink[i] = malloc(1000);
        free(orphan_sink[0]);
        free(orphan_sink[1]);
        return 0;
}
