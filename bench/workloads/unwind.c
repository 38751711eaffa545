/* bench/workloads/unwind.c: what capturing a stack costs, per allocation.
 *
 *   unwind [--depth D] [--calls N] [--paths P]
 *
 * Makes N allocations of 32 bytes, each freed right away, from D frames below main.
 * With --paths 1 every allocation has the same stack; with P > 1 the call chain goes
 * through one of P sets of functions in turn, so consecutive stacks differ in their inner
 * frames (as in a real program) while their outer frames stay the same.  Built with frame
 * pointers (bench/run does), so that --unwind fp sees the whole stack too and the modes
 * are compared on the same work.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

static volatile unsigned long sink;

/* Eight copies of the same recursive chain, so that P paths are P different sets of
 * return addresses. */
#define CHAIN(k)                                                                           \
        static NOINLINE void chain##k(int depth)                                          \
        {                                                                                  \
                if (depth > 0) {                                                           \
                        chain##k(depth - 1);                                               \
                        sink++; /* not a tail call: every level keeps its frame */         \
                        return;                                                            \
                }                                                                          \
                void *p = malloc(32);                                                      \
                sink += (unsigned long)(p != NULL);                                        \
                free(p);                                                                   \
        }
CHAIN(0)
CHAIN(1)
CHAIN(2)
CHAIN(3)
CHAIN(4)
CHAIN(5)
CHAIN(6)
CHAIN(7)

static void (*const chains[8])(int) = {chain0, chain1, chain2, chain3,
                                       chain4, chain5, chain6, chain7};

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                {"depth", required_argument, NULL, 'd'},
                {"calls", required_argument, NULL, 'n'},
                {"paths", required_argument, NULL, 'p'},
                {NULL, 0, NULL, 0},
        };
        long depth = 20, calls = 1000000, paths = 1;
        int c;
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                long v = atol(optarg ? optarg : "");
                if (c == 'd')
                        depth = v;
                else if (c == 'n')
                        calls = v;
                else if (c == 'p')
                        paths = v;
                else
                        return 2; /* getopt_long said what is wrong */
        }
        if (optind != argc || depth < 0 || depth > 1000 || calls < 0 || paths < 1 || paths > 8) {
                fprintf(stderr, "usage: unwind [--depth 0..1000] [--calls N] [--paths 1..8]\n");
                return 2;
        }
        for (long i = 0; i < calls; i++)
                chains[i % paths]((int)depth);
        printf("%lu\n", sink);
        return 0;
}
