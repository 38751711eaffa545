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

#include <math.h>
#include <stdint.h>

struct ap_sampler {
        int64_t left;      /* bytes until the next sample point; <= 0: not drawn yet */
        uint64_t rng;      /* xorshift64* state, never 0 */
        uint64_t interval; /* mean gap in bytes */
        double log_q;      /* log(1 - 1 / interval), < 0; 0 when interval is 1 */
};

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
        /* u in (0, 1]: 53 random bits, never 0 so log() stays finite. */
        double u = (double)((ap_sampler_next_u64(s) >> 11) + 1) * (1.0 / 9007199254740992.0);
        double gap = floor(log(u) / s->log_q) + 1.0;
        if (gap > 9.0e18)
                return INT64_MAX / 2;
        return (int64_t)gap;
}

/* The interval a sampler set up for `interval` uses: 0 stands for 1, every byte. */
static inline uint64_t ap_sampler_interval(uint64_t interval)
{
        return interval ? interval : 1;
}

static inline void ap_sampler_init(struct ap_sampler *s, uint64_t interval, uint64_t seed)
{
        s->interval = ap_sampler_interval(interval);
        s->log_q = s->interval > 1 ? log1p(-1.0 / (double)s->interval) : 0.0;
        s->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
        s->left = ap_sampler_gap(s);
}

/* Consumes `size` bytes of the stream.  Returns the number of sample points they cover
 * (usually 0: one subtraction and one compare), one gap drawn for each; at an interval of
 * 1 the points are the bytes themselves, counted at once instead of one by one. */
static inline uint64_t ap_sampler_take(struct ap_sampler *s, uint64_t size)
{
        s->left -= (int64_t)size;
        if (__builtin_expect(s->left > 0, 1))
                return 0;
        if (s->log_q == 0.0) {
                uint64_t n = (uint64_t)(1 - s->left);
                s->left = 1;
                return n;
        }
        uint64_t n = 0;
        while (s->left <= 0) {
                n++;
                s->left += ap_sampler_gap(s);
        }
        return n;
}

#endif
