// An allocator library as jemalloc and tcmalloc are, reduced to what matters here: it
// defines C++'s operator new and delete itself, from a private arena, without calling
// malloc (test-robust.sh, own_new.cc).  A program linked with it got its C++ blocks from
// here, unseen; under allocprof they must come from the agent's operator new, and a
// block from this arena must never reach free().
//
// SPDX-License-Identifier: MIT OR Apache-2.0
#include <cstddef>
#include <cstdlib>
#include <new>

namespace
{
alignas(16) unsigned char arena[1 << 20];
std::size_t used;
} // namespace

extern "C" __attribute__((visibility("default"))) std::size_t own_new_arena_used()
{
        return used;
}

static void *arena_take(std::size_t n)
{
        n = (n + 15) & ~std::size_t(15);
        if (n > sizeof(arena) - used)
                return nullptr;
        void *p = arena + used;
        used += n;
        return p;
}

void *operator new(std::size_t n)
{
        void *p = arena_take(n ? n : 1);
        if (p == nullptr)
                throw std::bad_alloc();
        return p;
}

void *operator new[](std::size_t n)
{
        return operator new(n);
}

void *operator new(std::size_t n, const std::nothrow_t &) noexcept
{
        return arena_take(n ? n : 1);
}

void operator delete(void *p) noexcept
{
        // An arena block is never given back; anything else is a bug of the caller.
        if (p != nullptr && (static_cast<unsigned char *>(p) < arena ||
                             static_cast<unsigned char *>(p) >= arena + sizeof(arena)))
                std::abort();
}

void operator delete[](void *p) noexcept
{
        operator delete(p);
}

void operator delete(void *p, std::size_t) noexcept
{
        operator delete(p);
}

void operator delete[](void *p, std::size_t) noexcept
{
        operator delete(p);
}
