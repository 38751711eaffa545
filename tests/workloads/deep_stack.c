/* Two allocations of 400 bytes from a recursive function: one 5 levels deep, whose whole
 * stack is recorded, and one 200 levels deep, deeper than the agent records
 * (AP_MAX_FRAMES, 64): its site says the stack was cut.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>

void *volatile deep_sink;

__attribute__((noinline)) static void *recurse(int n)
{
        void *p = n ? recurse(n - 1) : malloc(400);
        deep_sink = p; /* also keeps the recursive call from being a tail call */
        return p;
}

int main(void)
{
        free(recurse(5));
        free(recurse(200));
        return 0;
}
