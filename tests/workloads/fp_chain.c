/* main -> outer -> leaf_alloc -> malloc, built with frame pointers: both unwinders must
 * give the same chain (tests/integration/test-cli.sh, --unwind fp and dwarf).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>

void *volatile fp_sink;

void *leaf_alloc(size_t n);
void outer(void);

__attribute__((noinline)) void *leaf_alloc(size_t n)
{
        void *p = malloc(n);
        __asm__ volatile("" : : "r"(p) : "memory"); /* no tail call */
        return p;
}

__attribute__((noinline)) void outer(void)
{
        for (int i = 0; i < 3; i++)
                fp_sink = leaf_alloc(32);
        __asm__ volatile("" ::: "memory");
}

int main(void)
{
        outer();
        return 0;
}
