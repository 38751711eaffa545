/* Blocks that outlive the collector's 32-bit timestamps: three blocks (1000, 2000 and
 * 3000 bytes) freed 4.5 s after they were allocated, then one of 4000 bytes kept to the
 * end.  Exactly 4 allocations of 10,000 bytes, 3 frees of 6,000, 1 block of 4,000 leaked.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <time.h>

/* volatile: the compiler may not pair the mallocs with the frees and drop both */
void *volatile longlived_sink;
void *volatile blocks[3];

int main(void)
{
        for (int i = 0; i < 3; i++)
                blocks[i] = malloc(1000 * (size_t)(i + 1));
        struct timespec ts = {4, 500 * 1000 * 1000};
        while (nanosleep(&ts, &ts) != 0)
                ;
        for (int i = 0; i < 3; i++)
                free(blocks[i]);
        longlived_sink = malloc(4000);
        return 0;
}
