/* Allocations before main (a library constructor, 123 bytes), in main (10 bytes), in an
 * atexit handler (456 bytes) and in a library destructor after it (789 bytes): all four
 * must be in the profile.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>

int early_touch(void);
void *volatile main_sink;

static void at_exit_handler(void)
{
        main_sink = malloc(456);
}

int main(void)
{
        atexit(at_exit_handler);
        main_sink = malloc(10);
        return early_touch() ? 0 : 1;
}
