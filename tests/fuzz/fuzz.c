/* libFuzzer targets for the readers of untrusted input (built by tests/fuzz/meson.build
 * only when the compiler is clang).  One file, three programs:
 *   fuzz-json     (FUZZ_TARGET_JSON): ap_json_parse on arbitrary bytes; the tree it
 *                 returns is walked and checked against json.h's promises.
 *   fuzz-profile  (FUZZ_TARGET_PROFILE): ap_profile_read on arbitrary bytes (plain JSON,
 *                 or gzip), then what `allocprof report` does with a profile it accepted:
 *                 text and JSON reports (each sort), the run summary, a merge of it with
 *                 itself, and writing it back and reading that again.
 *   fuzz-numbers  (the same, with FUZZ_NUMBERS): a custom mutator that mostly replaces
 *                 numbers of the JSON text with edge values (0, -1, INT64_MAX, 2^32...)
 *                 or with values near the old one, so that real profiles stay profiles.
 *
 * Seeds: real profiles, uncompressed (the reader takes plain JSON too):
 *   mkdir corpus && for p in build/examples/demo /bin/ls; do
 *     build/cli/allocprof run -q -o x.approf -- $p && zcat x.approf > corpus/$(basename $p); done
 *   build/tests/fuzz/fuzz-numbers -max_len=200000 -timeout=10 -rss_limit_mb=2048 corpus
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "json.h"
#include "merge.h"
#include "profile.h"
#include "report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_TARGET_JSON
static size_t check_utf8(const unsigned char *s, size_t n)
{
        /* Returns how many bytes are valid; the parser promises all n. */
        size_t i = 0;
        while (i < n) {
                unsigned c = s[i];
                size_t len = c < 0x80   ? 1
                             : c < 0xc2 ? 0
                             : c < 0xe0 ? 2
                             : c < 0xf0 ? 3
                             : c < 0xf5 ? 4
                                        : 0;
                if (len == 0 || c == 0 || i + len > n)
                        return i;
                for (size_t k = 1; k < len; k++)
                        if ((s[i + k] & 0xc0) != 0x80)
                                return i;
                i += len;
        }
        return i;
}

static void check_string(const char *s, uint32_t n)
{
        if (strlen(s) != n || check_utf8((const unsigned char *)s, n) != n)
                abort();
}

static void walk(const struct ap_json *v, int depth)
{
        if (depth > AP_JSON_MAX_DEPTH)
                abort();
        switch (v->type) {
        case AP_JSON_NULL:
        case AP_JSON_FALSE:
        case AP_JSON_TRUE:
        case AP_JSON_INTEGER:
                break;
        case AP_JSON_REAL:
                if (v->d != v->d || v->d - v->d != 0)
                        abort(); /* not finite */
                break;
        case AP_JSON_STRING:
                check_string(v->s, v->n);
                break;
        case AP_JSON_ARRAY:
                for (uint32_t i = 0; i < v->n; i++)
                        walk(&v->items[i], depth + 1);
                if (ap_json_at(v, v->n) != NULL)
                        abort();
                break;
        case AP_JSON_OBJECT:
                for (uint32_t i = 0; i < v->n; i++) {
                        check_string(v->members[i].key, v->members[i].keylen);
                        if (ap_json_get(v, v->members[i].key) != &v->members[i].value)
                                abort(); /* keys are unique */
                        walk(&v->members[i].value, depth + 1);
                }
                break;
        default:
                abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *text = malloc(size + 1);
        struct ap_json_doc *doc = NULL;
        struct ap_json_error err;

        memcpy(text, data, size);
        text[size] = '\0';
        int r = ap_json_parse(text, size, &doc, &err);
        if (r == 0) {
                const struct ap_json *root = ap_json_root(doc);
                if (root->type != AP_JSON_ARRAY && root->type != AP_JSON_OBJECT)
                        abort();
                walk(root, 1);
                ap_json_free(doc);
        } else if (r == -EINVAL) {
                if (err.line < 1 || err.column < 1 ||
                    memchr(err.text, '\0', sizeof(err.text)) == NULL)
                        abort();
        } else if (r != -ENOMEM) {
                abort();
        }
        free(text);
        return 0;
}
#endif

#ifdef FUZZ_TARGET_PROFILE
static int in_fd = -1, out_fd = -1;
static char in_path[64], out_path[64];
static FILE *devnull;

static void setup(void)
{
        if (in_fd >= 0)
                return;
        in_fd = memfd_create("fuzz-in", MFD_CLOEXEC);
        out_fd = memfd_create("fuzz-out", MFD_CLOEXEC);
        if (in_fd < 0 || out_fd < 0)
                abort();
        snprintf(in_path, sizeof(in_path), "/proc/self/fd/%d", in_fd);
        snprintf(out_path, sizeof(out_path), "/proc/self/fd/%d", out_fd);
        devnull = fopen("/dev/null", "w");
        if (!devnull)
                abort();
}

static void put(int fd, const void *data, size_t size)
{
        if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
                abort();
}

static void reports(const struct ap_profile *p)
{
        static const enum ap_sort sorts[] = {AP_SORT_ALLOCATIONS, AP_SORT_BYTES, AP_SORT_LEAKED,
                                             AP_SORT_PEAK};
        for (unsigned i = 0; i < 4; i++) {
                struct ap_report_opts o = {
                        .top = i == 0 ? 0 : 10, .sort = sorts[i], .color = i & 1};
                if (ap_report_text(devnull, p, &o) < 0 || ap_report_json(devnull, p, &o) < 0)
                        abort();
        }
        ap_report_summary(devnull, p, "x.approf");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct ap_profile *p = NULL, *m = NULL, *q = NULL;
        char *err = NULL;

        setup();
        put(in_fd, data, size);
        int r = ap_profile_read(in_path, &p, &err);
        if (r < 0) {
                if (p != NULL || err == NULL || strchr(err, '\n') != NULL)
                        abort();
                free(err);
                return 0;
        }
        if (p == NULL || err != NULL)
                abort();
        reports(p);

        struct ap_profile *two[2] = {p, p};
        if (ap_profile_merge(two, 2, 1, &m) == 0) {
                reports(m);
                ap_profile_free(m);
        }

        /* What was read can be written, and reads back. */
        if (ftruncate(out_fd, 0) < 0 || lseek(out_fd, 0, SEEK_SET) != 0)
                abort();
        r = ap_profile_write_fd(p, out_fd);
        if (r < 0) {
                fprintf(stderr, "write back failed: %s\n", strerror(-r));
                abort();
        }
        r = ap_profile_read(out_path, &q, &err);
        if (r < 0) {
                fprintf(stderr, "read back failed: %s\n", err);
                abort();
        }
        ap_profile_free(q);
        ap_profile_free(p);
        return 0;
}

#ifdef FUZZ_NUMBERS
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

static uint64_t rng_state;
static uint64_t rnd(void)
{
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        return rng_state >> 17;
}

static int is_num_start(const uint8_t *d, size_t i, size_t size)
{
        return (d[i] == '-' && i + 1 < size && d[i + 1] >= '0' && d[i + 1] <= '9') ||
               (d[i] >= '0' && d[i] <= '9');
}

/* Replaces one number (found by scanning from a random point, outside strings as far as
 * a simple scan can tell) with an edge value, or nudges it. */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
        rng_state ^= seed + 0x9e3779b97f4a7c15ull;
        rnd();
        if (size == 0 || rnd() % 8 == 0)
                return LLVMFuzzerMutate(data, size, max_size);
        for (unsigned rounds = 1 + rnd() % 3; rounds > 0; rounds--) {
                size_t start = rnd() % size, i, end;
                for (i = start; i < size; i++)
                        if (is_num_start(data, i, size) &&
                            (i == 0 || data[i - 1] == ',' || data[i - 1] == '[' ||
                             data[i - 1] == ':'))
                                break;
                if (i == size)
                        continue;
                end = i + 1;
                while (end < size && ((data[end] >= '0' && data[end] <= '9') || data[end] == '.' ||
                                      data[end] == 'e' || data[end] == 'E' || data[end] == '-' ||
                                      data[end] == '+'))
                        end++;
                char buf[32];
                size_t nold = end - i < sizeof(buf) - 1 ? end - i : sizeof(buf) - 1;
                memcpy(buf, data + i, nold);
                buf[nold] = '\0';
                long long old = strtoll(buf, NULL, 10);
                static const long long edge[] = {
                        0,
                        1,
                        -1,
                        2,
                        -2,
                        63,
                        64,
                        65,
                        255,
                        256,
                        -255,
                        4294967295LL,
                        4294967296LL,
                        4294967294LL,
                        2147483647LL,
                        2147483648LL,
                        -2147483648LL,
                        INT64_MAX,
                        INT64_MIN,
                        INT64_MAX - 1,
                        INT64_MIN + 1,
                        (1LL << 26),
                        (1LL << 26) + 1,
                        1LL << 32,
                        1LL << 53,
                        1LL << 62,
                        -(1LL << 62),
                        1000000,
                };
                long long v;
                switch (rnd() % 4) {
                case 0:
                case 1:
                        v = edge[rnd() % (sizeof(edge) / sizeof(edge[0]))];
                        break;
                case 2:
                        v = (long long)((unsigned long long)old + (rnd() % 7) - 3);
                        break;
                default:
                        v = (long long)((unsigned long long)old * (rnd() % 2 ? 2 : 1000) +
                                        rnd() % 3);
                        break;
                }
                int len = snprintf(buf, sizeof(buf), "%lld", v);
                size_t nsize = size - (end - i) + (size_t)len;
                if (nsize > max_size)
                        continue;
                memmove(data + i + len, data + end, size - end);
                memcpy(data + i, buf, (size_t)len);
                size = nsize;
        }
        return size;
}
#endif
#endif
