/* A 64-bit finalizer (the murmur3 fmix64 constants) for hash tables on both sides of the
 * wire: it spreads clustered keys such as aligned addresses over all bits.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef ALLOCPROF_MIX_H
#define ALLOCPROF_MIX_H

#include <stdint.h>

static inline uint64_t ap_mix64(uint64_t x)
{
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53ull;
        x ^= x >> 33;
        return x;
}

#endif
