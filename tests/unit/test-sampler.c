/* The Poisson byte sampler (allocprof/sampler.h) on a fixed seed: gaps are geometric
 * with the configured mean (exponential, for large intervals), and the points an
 * allocation stream covers estimate its bytes without bias, whatever the sizes and the
 * interval (down to 1 byte, where the estimates are exact).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <math.h>

#include "allocprof/sampler.h"
#include "helpers.h"

#define ASSERT_NEAR(x, want, rel)                                                          \
        do {                                                                               \
                double x_ = (x), w_ = (want);                                              \
                if (fabs(x_ - w_) > (rel) * fabs(w_)) {                                     \
                        fprintf(stderr, "%s:%d: %s = %.6g, expected %.6g within %.2g%%\n", \
                                __FILE__, __LINE__, #x, x_, w_, 100.0 * (rel));            \
                        exit(1);                                                           \
                }                                                                          \
        } while (0)

static void test_gaps(uint64_t interval)
{
        struct ap_sampler s;
        ap_sampler_init(&s, interval, 12345);
        const int n = 1000000;
        double sum = 0, sum2 = 0;
        int below_mean = 0, below_tenth = 0;
        for (int i = 0; i < n; i++) {
                double g = (double)ap_sampler_gap(&s);
                ASSERT_TRUE(g >= 1);
                sum += g;
                sum2 += g * g;
                below_mean += g < (double)interval;
                below_tenth += g < (double)interval / 10;
        }
        double mean = sum / n, var = sum2 / n - mean * mean;
        /* Nearly exponential: mean m, variance m^2, P(X < m) = 1 - 1/e,
         * P(X < m/10) = 1 - e^-0.1 */
        ASSERT_NEAR(mean, (double)interval, 0.005);
        ASSERT_NEAR(var, (double)interval * (double)interval, 0.02);
        ASSERT_NEAR((double)below_mean / n, 1 - exp(-1.0), 0.005);
        ASSERT_NEAR((double)below_tenth / n, 1 - exp(-0.1), 0.02);
}

/* A few bytes apart, the gaps are visibly whole numbers: geometric on {1, 2, ...} with
 * mean m, variance m^2 - m and P(G = 1) = 1/m.  At 1, every byte is a point. */
static void test_small_gaps(uint64_t interval)
{
        struct ap_sampler s;
        ap_sampler_init(&s, interval, 4242);
        const int n = 1000000;
        double sum = 0, sum2 = 0;
        int ones = 0;
        for (int i = 0; i < n; i++) {
                double g = (double)ap_sampler_gap(&s);
                ASSERT_TRUE(g >= 1);
                sum += g;
                sum2 += g * g;
                ones += g == 1;
        }
        double m = (double)interval, mean = sum / n, var = sum2 / n - mean * mean;
        ASSERT_NEAR(mean, m, 0.005);
        ASSERT_NEAR((double)ones / n, 1 / m, 0.01);
        if (interval == 1)
                ASSERT_TRUE(var == 0);
        else
                ASSERT_NEAR(var, m * m - m, 0.02);
}

/* A stream of mixed sizes: sum(points) * interval estimates sum(sizes), and
 * sum(points * interval / size) estimates the number of allocations. */
/* Byte estimates converge fast; count estimates much slower when many blocks are far
 * smaller than the interval (a sampled 1-byte block stands for `interval` blocks), so the
 * count tolerance is given per interval: three standard errors of this stream's count
 * estimate, sqrt(sum over blocks of (interval / size) * (1 - 1 / interval)) / n, which is
 * 19.6% at 512 KiB, 3.5% at 16 KiB, 0.87% at 1 KiB, 0.10% at 16 bytes. */
static void test_estimates(uint64_t interval, double count_tolerance, int n)
{
        struct ap_sampler s;
        ap_sampler_init(&s, interval, 777);
        uint64_t rng = 99, bytes = 0, sampled = 0;
        double est_bytes = 0, est_count = 0;
        for (int i = 0; i < n; i++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                /* sizes from 1 byte to 64 KiB, log-uniform-ish: most small, some large */
                uint64_t size = 1 + (rng % (1u << (1 + rng % 16)));
                bytes += size;
                uint64_t pts = ap_sampler_take(&s, size);
                if (pts) {
                        sampled++;
                        est_bytes += (double)(pts * interval);
                        est_count += (double)(pts * interval) / (double)size;
                }
        }
        ASSERT_TRUE(sampled > 1000);
        ASSERT_NEAR(est_bytes, (double)bytes, 0.02);
        ASSERT_NEAR(est_count, (double)n, count_tolerance);
        printf("interval %llu: %llu of %d allocations sampled; bytes %.4f, count %.4f of exact\n",
               (unsigned long long)interval, (unsigned long long)sampled, n, est_bytes / bytes,
               est_count / n);
}

/* An allocation many intervals long covers about size/interval points. */
static void test_big(void)
{
        struct ap_sampler s;
        ap_sampler_init(&s, 4096, 5);
        uint64_t pts = 0;
        for (int i = 0; i < 100; i++)
                pts += ap_sampler_take(&s, 1 << 20);
        ASSERT_NEAR((double)pts, 100.0 * (1 << 20) / 4096, 0.02);
}

/* Distance in units in the last place between two doubles of one sign. */
static double ulps(double x, double want)
{
        return fabs(x - want) / (nextafter(fabs(want), INFINITY) - fabs(want));
}

/* The sampler's own logarithms (the agent does without libm) against libm's (correctly
 * rounded in glibc): within 4 ulps, a relative error below 1e-15, over the whole range the sampler
 * uses, including the extremes a 53-bit u and the intervals from 2 bytes to 2^62 reach. */
static void test_log(void)
{
        double worst = 0, worst1p = 0;
        uint64_t rng = 2024;
        for (int i = 0; i < 2000000; i++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                /* u as the sampler draws it, and also spread over every binade */
                double u = (double)((rng >> 11) + 1) * (1.0 / 9007199254740992.0);
                double v = ldexp(u < 0.5 ? u + 0.5 : u, -(int)(rng % 54));
                double e = ulps(ap_log(u), log(u)), f = ulps(ap_log(v), log(v));
                worst = e > worst ? e : worst;
                worst = f > worst ? f : worst;
                /* log1p(-1 / interval), intervals 2 .. 2^62 */
                double x = -1.0 / (double)(2 + (rng >> (2 + rng % 62)));
                double g = ulps(ap_log1p(x), log1p(x));
                worst1p = g > worst1p ? g : worst1p;
        }
        const double edges[] = {1.0,
                                0.5,
                                1.0 / 9007199254740992.0,
                                0.70710678118654746,
                                0.70710678118654757,
                                1.4142135623730951 / 2,
                                0.99999999999999989};
        for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
                if (edges[i] == 1.0)
                        ASSERT_TRUE(ap_log(1.0) == 0.0);
                else
                        worst = fmax(worst, ulps(ap_log(edges[i]), log(edges[i])));
        }
        const double edges1p[] = {-0.5,          -1.0 / 3,
                                  -0.25,         -0.2499999999999999,
                                  -1.0 / 524288, -1.0 / 4611686018427387904.0};
        for (size_t i = 0; i < sizeof(edges1p) / sizeof(edges1p[0]); i++)
                worst1p = fmax(worst1p, ulps(ap_log1p(edges1p[i]), log1p(edges1p[i])));
        printf("log: worst %.2f ulps; log1p: worst %.2f ulps\n", worst, worst1p);
        ASSERT_TRUE(worst <= 4.0);
        ASSERT_TRUE(worst1p <= 4.0);
}

int main(void)
{
        test_log();
        test_gaps(512 * 1024);
        test_gaps(4096);
        test_gaps(1024);
        test_estimates(512 * 1024, 0.6, 2000000);
        test_estimates(16 * 1024, 0.11, 2000000);
        test_estimates(1024, 0.027, 2000000);
        test_small_gaps(1);
        test_small_gaps(2);
        test_small_gaps(3);
        test_small_gaps(16);
        /* Fewer blocks: every point costs a gap drawn, and these draw thousands a block
         * (the counts' standard errors are then 0.33% at 16 bytes, 0.09% at 2). */
        test_estimates(16, 0.01, 200000);
        test_estimates(2, 0.003, 200000);
        test_estimates(1, 0, 2000000); /* every byte a point: exact */
        test_big();
        /* Same seed, same stream. */
        struct ap_sampler a, b;
        ap_sampler_init(&a, 1000, 42);
        ap_sampler_init(&b, 1000, 42);
        for (int i = 0; i < 1000; i++)
                ASSERT_EQ(ap_sampler_take(&a, 100 + i), ap_sampler_take(&b, 100 + i));
        printf("ok\n");
        return 0;
}
