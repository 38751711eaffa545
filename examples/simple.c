/* The smallest program worth profiling: three allocations, one of them never freed.
 *
 *     allocprof run -o simple.approf -- ./simple
 *     allocprof report simple.approf
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>
#include <string.h>

/* Never freed: the report lists it as a leak, with the line that allocated it. */
static char *greeting;

static char *copy_text(const char *text)
{
        char *copy = malloc(strlen(text) + 1);
        if (copy)
                strcpy(copy, text);
        return copy;
}

int main(void)
{
        int *squares = malloc(100 * sizeof(int)); /* 400 bytes, freed below */
        if (!squares)
                return 1;
        long sum = 0;
        for (int i = 0; i < 100; i++) {
                squares[i] = i * i;
                sum += squares[i];
        }
        free(squares);

        char *name = copy_text("allocprof"); /* 10 bytes, freed below */
        free(name);

        greeting = copy_text("hello, leak"); /* 12 bytes, leaked */

        return sum == 328350 && greeting ? 0 : 1;
}
