/* Poisson sampling by bytes, as tcmalloc, jemalloc (lg_prof_sample) and Go
 * (MemProfileRate) do it: sample points fall on the stream of allocated bytes with gaps of
 * mean `interval`; an allocation is recorded when it covers at least one point, with the
 * weight of every point it covers.  Header only, so the agent inlines the fast path and
 * the tests check the very same code.
 *
 * The gaps are whole bytes: each byte of the stream is a sample point with probability
 * p = 1 / interval, independently of the others, so a gap is geometric on {1, 2, ...}
 * with mean exactly `interval` (for large intervals, an exponential gap in all but name).
 * An exponential gap rounded to whole bytes would not do: its mean is off by a fraction
 * of a byte, which is nothing at 512 KiB but biased every estimate 26% low at an interval
 * of 1 byte.
 *
 * Estimator: with N points in an allocation of s bytes, N is Binomial(s, 1 / interval),
 * so N * interval is an unbiased estimate of s bytes and N * interval / s of one
 * allocation.  The agent sends weight = N * interval; the collector adds weight bytes and
 * weight / s allocations (and the same for live, leaked and peak).  At an interval of 1
 * every byte is a point: the figures are exact.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef ALLOCPROF_SAMPLER_H
#define ALLOCPROF_SAMPLER_H

#include <stdint.h>
#include <string.h>

struct ap_sampler {
        int64_t left;      /* bytes until the next sample point; <= 0: not drawn yet */
        uint64_t rng;      /* xorshift64* state, never 0 */
        uint64_t interval; /* mean gap in bytes */
        double log_q;      /* log(1 - 1 / interval), < 0; 0 when interval is 1 */
};

/* Natural logarithms without libm: the agent would otherwise load libm.so into every
 * program that does not link it already (most of them: shells, git, make, the gcc
 * driver), about 0.1 ms more at each process start.  The sampler only needs log(u) for u
 * in (0, 1] and log(1 + x) for x in [-1/2, 0), to a few ulps (tests/unit/test-sampler.c
 * measures at most 3 against glibc's).
 *
 * Both are 2 atanh(s) = log((1 + s) / (1 - s)) = 2 (s + s^3/3 + s^5/5 + ...), summed
 * for |s| <= 3 - 2 sqrt(2) (about 0.172): eleven terms leave a remainder below 2^-55. */
static inline double ap_log_atanh2(double s)
{
        double s2 = s * s, sum = 1.0 / 21;
        for (int k = 9; k >= 0; k--)
                sum = sum * s2 + 1.0 / (2 * k + 1);
        return 2 * s * sum;
}

/* log(x) for a finite x > 0 (normal: the sampler's smallest u is 2^-53).  x = f 2^e with
 * f in [sqrt(1/2), sqrt(2)), so s = (f - 1) / (f + 1) is small enough; ln 2 is split in
 * two so that e ln 2 adds no rounding error of its own (e has at most 11 bits). */
static inline double ap_log(double x)
{
        const double ln2_hi = 6.93147180369123816490e-01; /* 32 significant bits */
        const double ln2_lo = 1.90821492927058770002e-10; /* ln 2 - ln2_hi */
        uint64_t bits;
        memcpy(&bits, &x, sizeof(bits));
        int e = (int)((bits >> 52) & 0x7ff) - 1023;
        bits = (bits & ((1ull << 52) - 1)) | (1023ull << 52); /* f in [1, 2) */
        double f;
        memcpy(&f, &bits, sizeof(f));
        if (f > 1.4142135623730951) {
                f *= 0.5;
                e++;
        }
        return e * ln2_hi + (ap_log_atanh2((f - 1) / (f + 1)) + e * ln2_lo);
}

/* log(1 + x) for x in [-1/2, 0), exact to a few ulps also for tiny x (x = -1 / interval
 * at 512 KiB is -2^-19, where log(1 + x) would lose 19 bits): 1 + x = (1 + s) / (1 - s)
 * with s = x / (2 + x). */
static inline double ap_log1p(double x)
{
        if (x < -0.25)
                return ap_log(1 + x); /* far from 0: 1 + x's rounding costs < 2 ulps */
        return ap_log_atanh2(x / (2 + x));
}

static inline uint64_t ap_sampler_next_u64(struct ap_sampler *s)
{
        uint64_t x = s->rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s->rng = x;
        return x * 0x2545f4914f6cdd1dull;
}

/* One geometric gap with mean s->interval: 1 + the number of failures before the first
 * success of a 1 / interval coin, drawn by inversion, log(u) / log(1 - p). */
static inline int64_t ap_sampler_gap(struct ap_sampler *s)
{
        if (s->log_q == 0.0)
                return 1; /* interval 1: every byte */
        /* u in (0, 1]: 53 random bits, never 0 so the logarithm stays finite. */
        double u = (double)((ap_sampler_next_u64(s) >> 11) + 1) * (1.0 / 9007199254740992.0);
        double q = ap_log(u) / s->log_q; /* >= 0: truncating is flooring */
        if (q > 9.0e18)
                return INT64_MAX / 2;
        return (int64_t)q + 1;
}

/* The interval a sampler set up for `interval` uses: 0 stands for 1, every byte. */
static inline uint64_t ap_sampler_interval(uint64_t interval)
{
        return interval ? interval : 1;
}

static inline void ap_sampler_init(struct ap_sampler *s, uint64_t interval, uint64_t seed)
{
        s->interval = ap_sampler_interval(interval);
        s->log_q = s->interval > 1 ? ap_log1p(-1.0 / (double)s->interval) : 0.0;
        s->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
        s->left = ap_sampler_gap(s);
}

/* The bytes a block of `size` bytes takes of the stream: its size, but one for a
 * zero-size block (malloc(0), which returns a block all the same, and full mode counts
 * it), which would otherwise never cover a sample point: every count of blocks would
 * leave such blocks out, even at an interval of 1.  The collector adds no bytes for them. */
static inline uint64_t ap_sampler_stream_size(uint64_t size)
{
        return size + (size == 0);
}

/* Consumes `size` bytes of the stream.  Returns the number of sample points they cover
 * (usually 0: one subtraction and one compare), one gap drawn for each; at an interval of
 * 1 the points are the bytes themselves, counted at once instead of one by one.
 *
 * The countdown is worked on in a local and stored once: a signal handler that allocates
 * in between must never see it at 0 or below, which the hooks' fast path (read as
 * unsigned) would take for a countdown far from its end and let the handler's block go
 * unsampled, uncounted, even at an interval of 1. */
static inline uint64_t ap_sampler_take(struct ap_sampler *s, uint64_t size)
{
        int64_t left = s->left - (int64_t)size;
        if (__builtin_expect(left > 0, 1)) {
                s->left = left;
                return 0;
        }
        if (s->log_q == 0.0) {
                s->left = 1;
                return (uint64_t)(1 - left);
        }
        uint64_t n = 0;
        while (left <= 0) {
                n++;
                left += ap_sampler_gap(s);
        }
        s->left = left;
        return n;
}

#endif
