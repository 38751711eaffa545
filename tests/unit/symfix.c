/* Fixture for test-symbolize: always_inline helpers expanded into noinline callers, built
 * -O2 -fomit-frame-pointer -g.  The test reads this file's code and never runs it; the
 * @marker comments tell it which source lines to expect. */
#include <stdio.h>
#include <stdlib.h>

static inline __attribute__((always_inline)) int symfix_inner(volatile int *p, int n)
{
        int s = 0;
        for (int i = 0; i < n; i++)
                s += p[i] * 3; /* @inner-body */
        return s;
}

static inline __attribute__((always_inline)) int symfix_middle(volatile int *p, int n)
{
        return symfix_inner(p, n) ^ 0x55; /* @middle-call */
}

__attribute__((noinline)) int symfix_caller(volatile int *p, int n);
__attribute__((noinline)) int symfix_caller2(volatile int *p, int n);
__attribute__((noinline)) long symfix_plain(long x);

__attribute__((noinline)) int symfix_caller(volatile int *p, int n)
{
        int r = symfix_inner(p, n); /* @caller-call */
        return r + 1;
}

__attribute__((noinline)) int symfix_caller2(volatile int *p, int n)
{
        int r = symfix_middle(p, n); /* @caller2-call */
        return r * 7;
}

__attribute__((noinline)) long symfix_plain(long x) /* @plain-begin */
{
        long r = x * x + 17;
        if (r & 1)
                r = r / 3 + x;
        return r;
} /* @plain-end */

#ifndef SYMFIX_LIB
int main(int argc, char **argv)
{
        volatile int v[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
        int n = argc > 1 ? atoi(argv[1]) : 8;
        printf("%d %d %ld\n", symfix_caller(v, n), symfix_caller2(v, n), symfix_plain(n));
        return 0;
}
#endif
