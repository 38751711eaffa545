// A C++ program linked with an allocator library that defines operator new and delete
// itself (own_new_lib.cc, as jemalloc and tcmalloc do).  Under allocprof its C++ blocks
// must be seen, exactly (test-robust.sh):
//
//   own_new_work: 350 allocations of 33,200 bytes (300 new char[100], 50 nothrow new of
//   64 bytes), 100 of them freed (10,000 bytes), 250 blocks of 23,200 bytes leaked.
//
// It prints how many bytes the library's arena gave out (0 when the agent's operator new
// took the calls).
//
// SPDX-License-Identifier: MIT OR Apache-2.0
#include <cstddef>
#include <cstdio>
#include <new>

#include "workload.h"

extern "C" std::size_t own_new_arena_used();

static char *blocks[300];

static WL_FRAME void own_new_work()
{
        for (int i = 0; i < 300; i++) {
                blocks[i] = new char[100];
                wl_keep(blocks[i]);
        }
        for (int i = 0; i < 100; i++)
                delete[] blocks[i];
        for (int i = 0; i < 50; i++) {
                void *p = ::operator new(64, std::nothrow);
                wl_keep(p);
        }
}

int main()
{
        own_new_work();
        std::printf("arena %zu\n", own_new_arena_used());
        return 0;
}
