/* Assertion helpers for the unit tests.  A failed assertion prints file:line, the
 * expressions and both values, and exits 1; exit status 77 tells meson "skipped".
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AP_TEST_SKIP 77

/* Whether an integer expression has a signed type, so that values print the way the test
 * author wrote them (-1 rather than 18446744073709551615). */
#define AP_TEST_SIGNED(x)                                                                  \
        _Generic((x), signed char: true, short: true, int: true, long: true,              \
                 long long: true, default: false)

static inline void ap_test_fmt_int(char *buf, size_t size, bool is_signed, uintmax_t v) {
        if (is_signed)
                snprintf(buf, size, "%jd", (intmax_t)v);
        else
                snprintf(buf, size, "%ju (0x%jx)", v, v);
}

static inline void ap_test_fail_eq(const char *file, int line, const char *ea, const char *eb,
                                   bool sa, uintmax_t a, bool sb, uintmax_t b) {
        char va[64], vb[64];

        ap_test_fmt_int(va, sizeof(va), sa, a);
        ap_test_fmt_int(vb, sizeof(vb), sb, b);
        fprintf(stderr, "%s:%d: ASSERT_EQ(%s, %s) failed\n  left:  %s\n  right: %s\n", file,
                line, ea, eb, va, vb);
        exit(1);
}

#define ASSERT_TRUE(e)                                                                     \
        do {                                                                               \
                if (!(e)) {                                                                \
                        fprintf(stderr, "%s:%d: ASSERT_TRUE(%s) failed\n", __FILE__,       \
                                __LINE__, #e);                                             \
                        exit(1);                                                           \
                }                                                                          \
        } while (0)

#define ASSERT_FALSE(e) ASSERT_TRUE(!(e))

/* Integers only (any width or signedness). */
#define ASSERT_EQ(a, b)                                                                    \
        do {                                                                               \
                const __typeof__(a) a_ = (a);                                              \
                const __typeof__(b) b_ = (b);                                              \
                if (!(a_ == b_))                                                           \
                        ap_test_fail_eq(__FILE__, __LINE__, #a, #b, AP_TEST_SIGNED(a_),    \
                                        (uintmax_t)a_, AP_TEST_SIGNED(b_), (uintmax_t)b_); \
        } while (0)

/* Strings; NULL equals NULL only. */
#define ASSERT_STREQ(a, b)                                                                 \
        do {                                                                               \
                const char *a_ = (a), *b_ = (b);                                           \
                if ((a_ == NULL) != (b_ == NULL) || (a_ && strcmp(a_, b_) != 0)) {         \
                        fprintf(stderr,                                                    \
                                "%s:%d: ASSERT_STREQ(%s, %s) failed\n  left:  \"%s\"\n"    \
                                "  right: \"%s\"\n",                                       \
                                __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)",            \
                                b_ ? b_ : "(null)");                                       \
                        exit(1);                                                           \
                }                                                                          \
        } while (0)

/* `haystack` contains `needle`. */
#define ASSERT_CONTAINS(haystack, needle)                                                  \
        do {                                                                               \
                const char *h_ = (haystack), *n_ = (needle);                               \
                if (!h_ || !strstr(h_, n_)) {                                              \
                        fprintf(stderr,                                                    \
                                "%s:%d: ASSERT_CONTAINS(%s, %s) failed\n  text:   \"%s\"\n" \
                                "  needle: \"%s\"\n",                                      \
                                __FILE__, __LINE__, #haystack, #needle,                    \
                                h_ ? h_ : "(null)", n_);                                   \
                        exit(1);                                                           \
                }                                                                          \
        } while (0)

#define ASSERT_NOT_CONTAINS(haystack, needle)                                              \
        do {                                                                               \
                const char *h_ = (haystack), *n_ = (needle);                               \
                if (h_ && strstr(h_, n_)) {                                                \
                        fprintf(stderr,                                                    \
                                "%s:%d: ASSERT_NOT_CONTAINS(%s, %s) failed\n"              \
                                "  text:   \"%s\"\n  needle: \"%s\"\n",                    \
                                __FILE__, __LINE__, #haystack, #needle, h_, n_);           \
                        exit(1);                                                           \
                }                                                                          \
        } while (0)

#define ASSERT_NULL(p) ASSERT_TRUE((p) == NULL)
#define ASSERT_NOT_NULL(p) ASSERT_TRUE((p) != NULL)

/* A `>= 0 or -errno` call succeeded. */
#define ASSERT_OK(expr)                                                                    \
        do {                                                                               \
                long r_ = (long)(expr);                                                    \
                if (r_ < 0) {                                                              \
                        fprintf(stderr, "%s:%d: ASSERT_OK(%s) failed: %ld (%s)\n",         \
                                __FILE__, __LINE__, #expr, r_, strerror((int)-r_));        \
                        exit(1);                                                           \
                }                                                                          \
        } while (0)

/* A `>= 0 or -errno` call failed with exactly `err` (a negative errno). */
#define ASSERT_ERR(expr, err)                                                              \
        do {                                                                               \
                long r_ = (long)(expr), e_ = (long)(err);                                  \
                if (r_ != e_) {                                                            \
                        fprintf(stderr,                                                    \
                                "%s:%d: ASSERT_ERR(%s, %s) failed\n  got:      %ld (%s)\n" \
                                "  expected: %ld (%s)\n",                                  \
                                __FILE__, __LINE__, #expr, #err, r_,                       \
                                r_ < 0 ? strerror((int)-r_) : "success", e_,               \
                                strerror((int)-e_));                                       \
                        exit(1);                                                           \
                }                                                                          \
        } while (0)
