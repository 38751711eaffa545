/* A position-dependent executable that takes malloc's and free's addresses, as Debian's
 * python3 does (its raw allocator table holds them): the linker then gives the
 * executable's undefined `malloc` symbol the address of its PLT entry, the function's
 * canonical address, which dlsym(RTLD_DEFAULT, "malloc") returns.  The calls still go to
 * the first definition in the lookup order, the agent's: no foreign malloc, nothing
 * missed (test-robust.sh).  Built with -no-pie (tests/workloads/meson.build).
 *
 * It allocates 10 blocks of 48 bytes through the pointers and frees them.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>


void *(*volatile malloc_addr_alloc)(size_t);
void (*volatile malloc_addr_free)(void *);

int main(void)
{
        /* Taken in code (an absolute address in an instruction, which no dynamic
         * relocation can fix up), not in initialized data. */
        malloc_addr_alloc = malloc;
        malloc_addr_free = free;
        void *p[10];
        for (int i = 0; i < 10; i++)
                p[i] = malloc_addr_alloc(48);
        for (int i = 0; i < 10; i++)
                malloc_addr_free(p[i]);
        return 0;
}
