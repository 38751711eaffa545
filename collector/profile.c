/* The in-memory profile (struct ap_profile) and its file format: one compact, versioned
 * JSON document with interned string and frame tables.  The reader treats the file as
 * hostile input: every type, range and index is checked before it is used.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "profile.h"
#include "allocprof/clock.h"
#include "json.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/*
 * File layout (format_version 3): one JSON document without whitespace, compressed with
 * gzip (zcat shows it).  The reader takes uncompressed JSON too, as the first profiles
 * were written:
 *
 *   {"format":"allocprof-profile", "format_version":3,
 *    "tool":{"name":"allocprof","version":S|null},
 *    "process":{"pid","ppid","command":[S...],"exe":S|null,"run_id":S (optional),
 *               "foreign_malloc":S (optional: the module whose malloc the program's calls
 *               reached instead of the agent's),
 *               "exit_status","term_signal","start_unix_ns","duration_ns",
 *               "exec":{"path":S|null,"profiled":B} (optional: the image ended by an exec
 *               of that program, which registered as an image of its own or not),
 *               "drain_cpu_ns" (optional), "ring_waits","ring_wait_ns" (optional, both
 *               or neither)},
 *    "live":true,                                      (snapshots of a running process only)
 *    "mode":S|null, "sample_interval":N,
 *    "sample_intervals":[min, max],   (sampled profiles whose interval changed only)
 *    "totals":{one key per field of ap_profile.totals ("untracked_samples",
 *              "unprofiled_children" and "dropped_no_ring" only when not 0)},
 *    "strings":[S...],
 *    "modules":[{"path":I|null,"build_id":I|null,"allocations","bytes","leaked_blocks",
 *                "leaked_bytes"}...],
 *    "frames":{"function":[I...], "file":[I...], "line":[dL...], "module":[M...],
 *              "address":[dA...], "inlined":[0|1...]},
 *    "sites":{"allocations":[N...], "bytes":[N...], "leaked_blocks":[N...],
 *             "leaked_bytes":[N...], "temporary":[N...], "reallocs":[N...],
 *             "allocations-leaked_blocks-frees":[X...],
 *             "bytes-leaked_bytes-freed_bytes":[X...],
 *             "max_live_bytes+1 (0: =bytes)":[X...],
 *             "peak_bytes+2 (0: none, 1: =max_live_bytes)":[X...],
 *             "popped":[P...], "stacks":[[dF...]...]},
 *    "histogram":[[bucket, count, bytes]...],          (non-empty buckets only)
 *    "timeline":[[dt_ns, dlive_bytes, dallocations]...]}
 *
 * I = index into "strings", M = into "modules" (-1 stands for AP_NONE in "frames", null
 * in "modules"), F = into "frames".  The two big tables are stored column by column: a
 * column of like numbers compresses far better than rows that mix ten kinds (about a
 * fourth less for cc1 and for python than version 2's rows, with the codings below).
 *
 * Frames are sorted by module, then address, then the index they had (which keeps the
 * frames of an inline chain, all at one address, in their order): "address" holds each
 * frame's address minus the previous one's and "line" likewise, so a file's frames cost a
 * few digits each.  The frame numbers in memory are therefore not those of the file: a
 * profile that was read has its frames in this order.
 *
 * Sites are sorted by their stacks read from the outermost frame, and each stack is
 * stored as an edit of the previous site's (an empty one for the first site): "popped"
 * says how many innermost frames of that stack it drops, which leaves the outermost frames
 * the two have in common, and the site's entry in "stacks" lists the frames it adds, from
 * the outermost in, each as its frame index minus that of the frame before it.  The first
 * one added steps from the frame it replaces, the previous stack's at its depth, if that
 * stack has one (it has unless nothing was popped): both are called from the frame just
 * outside, so they are mostly in one function, and the sort puts the new one a few
 * frames after the old.  Else it steps from the innermost frame kept, or from -1 when
 * none is.  Deep stacks that differ only near the top (a compiler's, say) so cost a few
 * small numbers each.  Against counting the frames kept and always stepping from the
 * innermost of them, this made cc1's profile 108.3 -> 96.8 KB and python's 17.2 -> 16.3 KB.
 *
 * A site's counters mostly follow from one another, so four are coded against the rest
 * (the column names say how): frees as allocations - leaked_blocks - frees and freed_bytes
 * likewise (both almost always 0), max_live_bytes as 0 when it equals bytes (every
 * block still live at once), else its value + 1, and peak_bytes as 0 when 0, 1 when it
 * equals max_live_bytes, else its value + 2.  The timeline's rows are the steps from the
 * previous row (the first from zeros).
 *
 * 64-bit values: the reader (json.c) takes signed 64-bit integers only.  Counters, sizes and
 * times are saturated at INT64_MAX when written (2^63 bytes or events cannot happen;
 * saturating keeps "at least this much" true, where wrapping would turn it into a negative
 * number that every reader rejects).  Codings and steps (dL, dA, dF, X, the timeline's) are
 * computed modulo 2^64 and written as the int64 with the same bits; the reader adds them
 * back modulo 2^64, so every value, addresses with all 64 bits included, round-trips
 * exactly, and then rejects a counter above INT64_MAX, an index out of range, a line above
 * UINT32_MAX.
 *
 * Version 2 (still read) stored the frames as rows [function I|null, file I|null, line,
 * module M|null, "0x<hex address>", inlined] and the sites as rows [allocations, bytes,
 * frees, freed_bytes, leaked_blocks, leaked_bytes, peak_bytes, max_live_bytes, temporary,
 * reallocs, shared, [F...]] of plain counters, the stack's unshared frames as indexes,
 * innermost first; its timeline rows were absolute.  Version 1 wrote each site as an
 * object with named counters and the whole "frames" array.
 *
 * Unknown keys are ignored so that a version can grow optional fields.  "live" is such a
 * field: written only when true, so that a profile of a process that ended is byte for
 * byte what it was before snapshots existed, and absent reads as false.
 *
 * Strings are UTF-8 in JSON; argv and paths are arbitrary bytes, so invalid sequences are
 * replaced by U+FFFD on write.  The reader gets only valid UTF-8 without NULs (json.c
 * refuses anything else, "\u0000" included), so every string it returns is a safe C string.
 *
 * The reader is json.c, not jansson: jansson's tree of a compiler's profile took 50 ms to
 * build and tear down, two thirds of `allocprof report`'s time, and 30 times the text's
 * size in memory.
 */

#define FORMAT_NAME "allocprof-profile"

/* A real profile is a few MB of text (a compiler's, 400 KB).  Refuse files that could
 * only be an attack or an accident before handing them to the parser, and stop inflating
 * there: a few MB of gzip'ed zeros or spaces inflate to gigabytes.  The parser bounds its
 * tree by its number of values (AP_JSON_MAX_VALUES, about as many as this much text of
 * real profiles holds). */
#define MAX_FILE_SIZE (1ull << 28)

/* How long a FIFO named as a profile is waited for: by the writer for a reader to open it,
 * by the reader for a writer (the messages say "10 s"). */
#define FIFO_WAIT_MS 10000

/* How allocations were recorded (ap_profile.mode); null in a profile is unknown. */
static bool known_mode(const char *mode)
{
        return strcmp(mode, "full") == 0 || strcmp(mode, "sampled") == 0;
}

/* A sampled profile's interval is the mean number of bytes between samples: at least 1. */
static bool sampled_without_interval(const struct ap_profile *p)
{
        return p->mode != NULL && strcmp(p->mode, "sampled") == 0 && p->sample_interval == 0;
}

/* A sampled profile recorded at more than one interval (the smallest and largest are
 * set, and differ). */
static bool interval_changed(const struct ap_profile *p)
{
        return p->sample_interval != 0 && p->sample_interval_min != 0 &&
               p->sample_interval_min != p->sample_interval_max;
}

/* Linux's highest signal number (SIGRTMAX; _NSIG - 1): a process killed by a signal was
 * killed by one of 1 to this. */
#define MAX_SIGNAL 64

/* ap_profile_new() allocates this; the intern index lives behind the public struct so the
 * header stays a plain data model.  Profiles must therefore come from ap_profile_new(). */
struct profile_impl {
        struct ap_profile pub; /* must stay first: the API passes &impl->pub */

        /* Open-addressing hash over p->strings (slot = string index + 1, 0 = empty), so
         * ap_profile_intern() is O(1) when finalize interns every frame's strings.  The
         * index remembers which array it describes and catches up lazily if a caller
         * appended to or replaced p->strings directly. */
        char **idx_strings;
        uint32_t idx_count;
        uint32_t strings_cap;
        uint32_t *slots;
        size_t nslots; /* power of two, or 0 */
};

/* ------------------------------------------------------------------------------------ */
/* Model                                                                                */

struct ap_profile *ap_profile_new(void)
{
        struct profile_impl *impl = calloc(1, sizeof(*impl));

        if (!impl)
                return NULL;
        impl->pub.exit_status = -1;
        return &impl->pub;
}

void ap_profile_free(struct ap_profile *p)
{
        struct profile_impl *impl = (struct profile_impl *)p;

        if (!p)
                return;
        free(p->tool_version);
        for (uint32_t i = 0; i < p->ncommand; i++)
                free(p->command[i]);
        free(p->command);
        free(p->exe);
        free(p->run_id);
        free(p->foreign_malloc);
        free(p->exec_path);
        free(p->mode);
        for (uint32_t i = 0; i < p->nstrings; i++)
                free(p->strings[i]);
        free(p->strings);
        free(p->frames);
        for (uint32_t i = 0; i < p->nsites; i++)
                free(p->sites[i].frames);
        free(p->sites);
        free(p->modules);
        free(p->timeline);
        free(impl->slots);
        free(impl);
}

static uint64_t hash_str(const char *s)
{
        /* FNV-1a: short strings, no adversary (the collector interns its own symbols). */
        uint64_t h = 0xcbf29ce484222325ull;

        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
        return h;
}

/* Returns the slot where `s` is, or the empty slot where it would go. */
static size_t index_find(const struct profile_impl *impl, const char *s)
{
        size_t mask = impl->nslots - 1;
        size_t i = hash_str(s) & mask;

        while (impl->slots[i] != 0 && strcmp(impl->pub.strings[impl->slots[i] - 1], s) != 0)
                i = (i + 1) & mask;
        return i;
}

static int index_resize(struct profile_impl *impl, size_t nslots)
{
        uint32_t *old = impl->slots;
        size_t oldn = impl->nslots;

        impl->slots = calloc(nslots, sizeof(*impl->slots));
        if (!impl->slots) {
                impl->slots = old;
                return -ENOMEM;
        }
        impl->nslots = nslots;
        for (size_t i = 0; i < oldn; i++)
                if (old[i] != 0)
                        impl->slots[index_find(impl, impl->pub.strings[old[i] - 1])] = old[i];
        free(old);
        return 0;
}

/* Makes room for one more entry at <= 50% load. */
static int index_reserve(struct profile_impl *impl, uint32_t entries)
{
        size_t want = impl->nslots ? impl->nslots : 64;

        while ((size_t)entries + 1 > want / 2)
                want *= 2;
        return want == impl->nslots ? 0 : index_resize(impl, want);
}

/* Brings the index up to date with p->strings.  Duplicates already in the array (a file
 * may contain them) keep their first index. */
static int index_sync(struct profile_impl *impl)
{
        struct ap_profile *p = &impl->pub;

        if (p->strings != impl->idx_strings || p->nstrings < impl->idx_count) {
                if (impl->slots)
                        memset(impl->slots, 0, impl->nslots * sizeof(*impl->slots));
                impl->idx_count = 0;
                impl->idx_strings = p->strings;
                impl->strings_cap = p->nstrings;
        }
        while (impl->idx_count < p->nstrings) {
                uint32_t i = impl->idx_count;
                size_t slot;

                if (index_reserve(impl, i + 1) < 0)
                        return -ENOMEM;
                if (p->strings[i]) {
                        slot = index_find(impl, p->strings[i]);
                        if (impl->slots[slot] == 0)
                                impl->slots[slot] = i + 1;
                }
                impl->idx_count++;
        }
        return 0;
}

uint32_t ap_profile_intern(struct ap_profile *p, const char *s)
{
        struct profile_impl *impl = (struct profile_impl *)p;
        size_t slot;
        char *copy;

        if (!p || !s || index_sync(impl) < 0 || index_reserve(impl, p->nstrings + 1) < 0)
                return AP_NONE;
        slot = index_find(impl, s);
        if (impl->slots[slot] != 0)
                return impl->slots[slot] - 1;
        /* AP_NONE itself must never become a valid index. */
        if (p->nstrings >= AP_NONE - 1)
                return AP_NONE;
        if (p->nstrings == impl->strings_cap) {
                uint32_t cap = impl->strings_cap < 32               ? 64
                               : impl->strings_cap > UINT32_MAX / 2 ? UINT32_MAX
                                                                    : impl->strings_cap * 2;
                char **n = reallocarray(p->strings, cap, sizeof(*n));

                if (!n)
                        return AP_NONE;
                p->strings = impl->idx_strings = n;
                impl->strings_cap = cap;
        }
        copy = strdup(s);
        if (!copy)
                return AP_NONE;
        p->strings[p->nstrings] = copy;
        impl->slots[slot] = p->nstrings + 1;
        impl->idx_count = ++p->nstrings;
        return p->nstrings - 1;
}

/* ------------------------------------------------------------------------------------ */
/* Writing                                                                              */

/*
 * The JSON text is generated directly into a buffer that is compressed whenever it fills
 * and written out in large pieces, never as a document tree: building jansson's tree for
 * a compiler's profile cost more than compressing the text it gave.  Writes do not report
 * errors one by one; the first one is kept in `error` and everything after it is skipped,
 * so the document code reads straight through and checks once at the end.
 */
struct fd_sink {
        int fd;
        int error; /* first errno seen */
        size_t len;
        z_stream z;
        bool z_ready;
        char buf[64 * 1024];           /* JSON text not yet compressed */
        unsigned char zbuf[64 * 1024]; /* compressed output not yet written */
};

static void write_all(struct fd_sink *sink, const unsigned char *p, size_t len)
{
        while (len > 0 && !sink->error) {
                ssize_t n = write(sink->fd, p, len);

                if (n < 0) {
                        if (errno != EINTR)
                                sink->error = errno;
                        continue;
                }
                p += n;
                len -= (size_t)n;
        }
}

/* Compresses what is buffered; with `finish`, ends the gzip stream too.
 *
 * The compressor is set up on the first call, when the size of a document that fits the
 * buffer is known: its window then covers that document and no more (zlib's window and
 * hash tables take 256 KiB at the largest window, and setting them up cost more than
 * compressing a short-lived program's few KB: 84 against 37 us for a 6 KB profile, the
 * same output).  15 + 16: a gzip header and trailer, so that zcat and gzip -t work on
 * the file.  Level 5 with Z_FILTERED (short matches give way to Huffman coding, which
 * suits columns of small numbers): cc1's profile 14% smaller than at level 3 for 6 ms
 * more; level 6 saves 3% more and doubles the time, level 9 takes 80 ms. */
static void sink_deflate(struct fd_sink *sink, bool finish)
{
        if (!sink->z_ready && !sink->error) {
                int bits = 15;
                /* zlib keeps 262 bytes of look-ahead beyond the window. */
                while (finish && bits > 9 && sink->len + 262 <= (1u << (bits - 1)))
                        bits--;
                if (deflateInit2(&sink->z, 5, Z_DEFLATED, bits + 16, bits - 7, Z_FILTERED) != Z_OK)
                        sink->error = ENOMEM;
                else
                        sink->z_ready = true;
        }
        if (sink->error)
                return;
        sink->z.next_in = (unsigned char *)sink->buf;
        sink->z.avail_in = (uInt)sink->len;
        while (!sink->error) {
                sink->z.next_out = sink->zbuf;
                sink->z.avail_out = sizeof(sink->zbuf);
                int zr = deflate(&sink->z, finish ? Z_FINISH : Z_NO_FLUSH);
                if (zr == Z_STREAM_ERROR) {
                        sink->error = EIO;
                        break;
                }
                write_all(sink, sink->zbuf, sizeof(sink->zbuf) - sink->z.avail_out);
                if (finish ? zr == Z_STREAM_END : sink->z.avail_in == 0)
                        break;
        }
        sink->len = 0;
}

static void out_raw(struct fd_sink *sink, const char *p, size_t n)
{
        while (n > sizeof(sink->buf) - sink->len && !sink->error) {
                size_t room = sizeof(sink->buf) - sink->len;

                memcpy(sink->buf + sink->len, p, room);
                sink->len += room;
                p += room;
                n -= room;
                sink_deflate(sink, false);
        }
        if (sink->error)
                return;
        memcpy(sink->buf + sink->len, p, n);
        sink->len += n;
}

/* A string literal (a fixed piece of JSON syntax). */
#define out_lit(sink, lit) out_raw(sink, "" lit, sizeof(lit) - 1)

static void out_char(struct fd_sink *sink, char c)
{
        if (sink->len == sizeof(sink->buf))
                sink_deflate(sink, false);
        if (!sink->error)
                sink->buf[sink->len++] = c;
}

/* Most of a profile's text is numbers, so they are formatted straight into the buffer
 * when there is room for the longest one. */
static void out_i64(struct fd_sink *sink, int64_t v)
{
        char digits[20], *end = digits + sizeof(digits), *d = end;
        /* Negated as unsigned: INT64_MIN has no positive int64 counterpart. */
        uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
        size_t n;

        do {
                *--d = (char)('0' + u % 10);
                u /= 10;
        } while (u);
        n = (size_t)(end - d);
        if (sizeof(sink->buf) - sink->len < n + 1) {
                if (v < 0)
                        out_char(sink, '-');
                out_raw(sink, d, n);
                return;
        }
        if (v < 0)
                sink->buf[sink->len++] = '-';
        for (size_t i = 0; i < n; i++)
                sink->buf[sink->len + i] = d[i];
        sink->len += n;
}

/* Counters, sizes and times saturate at INT64_MAX (see the top of the file). */
static void out_u64(struct fd_sink *sink, uint64_t v)
{
        out_i64(sink, v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v);
}

/* A string index or null. */
static void out_index(struct fd_sink *sink, uint32_t i)
{
        if (i == AP_NONE)
                out_lit(sink, "null");
        else
                out_i64(sink, i);
}

/* `"key":` for keys the code spells out (no escaping needed). */
static void out_key(struct fd_sink *sink, const char *key)
{
        out_char(sink, '"');
        out_raw(sink, key, strlen(key));
        out_lit(sink, "\":");
}

/* A JSON string, or null for NULL.  Escapes what JSON requires (as jansson does: quote,
 * backslash and control characters) and replaces each byte that does not start a valid
 * UTF-8 sequence by U+FFFD, so any C string gives valid JSON; valid text passes in runs. */
static void out_str(struct fd_sink *sink, const char *s)
{
        static const char hex[] = "0123456789ABCDEF";
        const unsigned char *in = (const unsigned char *)s, *run;

        if (!s) {
                out_lit(sink, "null");
                return;
        }
        out_char(sink, '"');
        for (;;) {
                run = in;
                while (*in >= 0x20 && *in < 0x80 && *in != '"' && *in != '\\')
                        in++;
                out_raw(sink, (const char *)run, (size_t)(in - run));
                if (*in == '\0')
                        break;
                if (*in >= 0x80) {
                        size_t n = ap_utf8_len(in);

                        if (n == 0) {
                                out_lit(sink, "\xef\xbf\xbd");
                                in++;
                        } else {
                                out_raw(sink, (const char *)in, n);
                                in += n;
                        }
                        continue;
                }
                switch (*in) {
                case '"':
                        out_lit(sink, "\\\"");
                        break;
                case '\\':
                        out_lit(sink, "\\\\");
                        break;
                case '\b':
                        out_lit(sink, "\\b");
                        break;
                case '\f':
                        out_lit(sink, "\\f");
                        break;
                case '\n':
                        out_lit(sink, "\\n");
                        break;
                case '\r':
                        out_lit(sink, "\\r");
                        break;
                case '\t':
                        out_lit(sink, "\\t");
                        break;
                default: {
                        char esc[] = {'\\', 'u', '0', '0', hex[*in >> 4], hex[*in & 15]};

                        out_raw(sink, esc, sizeof(esc));
                }
                }
                in++;
        }
        out_char(sink, '"');
}

struct u64_field {
        const char *name;
        size_t offset;
};

#define TOTAL(f)                                          \
        {                                                 \
#f, offsetof(struct ap_profile, totals.f) \
        }
static const struct u64_field totals_fields[] = {
        TOTAL(allocations),   TOTAL(bytes),           TOTAL(frees),           TOTAL(freed_bytes),
        TOTAL(leaked_blocks), TOTAL(leaked_bytes),    TOTAL(peak_bytes),      TOTAL(peak_blocks),
        TOTAL(peak_t_ns),     TOTAL(temporary),       TOTAL(reallocs),        TOTAL(dropped_events),
        TOTAL(dropped_frees), TOTAL(unmatched_frees), TOTAL(invalid_records), TOTAL(threads),
};

#define SITE(f)                                  \
        {                                        \
#f, offsetof(struct ap_psite, f) \
        }
static const struct u64_field site_fields[] = {
        SITE(allocations),   SITE(bytes),        SITE(frees),      SITE(freed_bytes),
        SITE(leaked_blocks), SITE(leaked_bytes), SITE(peak_bytes), SITE(max_live_bytes),
        SITE(temporary),     SITE(reallocs),
};

#define MODULE(f)                                  \
        {                                          \
#f, offsetof(struct ap_pmodule, f) \
        }
static const struct u64_field module_fields[] = {
        MODULE(allocations),
        MODULE(bytes),
        MODULE(leaked_blocks),
        MODULE(leaked_bytes),
};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t *u64_at(void *base, const struct u64_field *f)
{
        return (uint64_t *)((char *)base + f->offset);
}

static uint64_t saturate(uint64_t v)
{
        return v > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : v;
}

/* Counters that no profile has above another: a site, or the whole process, frees and
 * leaks only blocks it allocated.  Not their sum: in sampled mode allocations, frees and
 * leaked blocks are each an estimate rounded on its own, and frees + leaked_blocks may be
 * one more than allocations. */
struct bound {
        const char *name, *limit; /* of the counter and of its limit */
        size_t offset, limit_offset;
};

#define SITE_BOUND(f, l)                                                           \
        {                                                                          \
#f, #l, offsetof(struct ap_psite, f), offsetof(struct ap_psite, l) \
        }
static const struct bound site_bounds[] = {
        SITE_BOUND(frees, allocations),
        SITE_BOUND(leaked_blocks, allocations),
        SITE_BOUND(freed_bytes, bytes),
        SITE_BOUND(leaked_bytes, bytes),
};

#define TOTAL_BOUND(f, l)                                      \
        {                                                      \
#f, #l, offsetof(struct ap_profile, totals.f), \
                        offsetof(struct ap_profile, totals.l)  \
        }
static const struct bound totals_bounds[] = {
        TOTAL_BOUND(frees, allocations),
        TOTAL_BOUND(leaked_blocks, allocations),
        TOTAL_BOUND(freed_bytes, bytes),
        TOTAL_BOUND(leaked_bytes, bytes),
        TOTAL_BOUND(dropped_no_ring, dropped_events),
};

static uint64_t bound_value(const void *base, size_t offset)
{
        uint64_t v;

        memcpy(&v, (const char *)base + offset, sizeof(v));
        return saturate(v); /* as written */
}

/* The first of the n bounds that the counters at base exceed, or NULL. */
static const struct bound *broken_bound(const void *base, const struct bound *b, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (bound_value(base, b[i].offset) > bound_value(base, b[i].limit_offset))
                        return &b[i];
        return NULL;
}

/* Site columns of format 3, in the order they are written and decoded: a coded counter
 * comes after the counters it is coded against (see the top of the file). */
enum site_coding {
        CODE_RAW,
        CODE_FREES,       /* allocations - leaked_blocks - frees */
        CODE_FREED_BYTES, /* bytes - leaked_bytes - freed_bytes */
        CODE_MAX_LIVE,    /* 0: = bytes, else max_live_bytes + 1 */
        CODE_PEAK,        /* 0: 0, 1: = max_live_bytes, else peak_bytes + 2 */
};

struct site_column {
        const char *field; /* the counter's name */
        const char *name;  /* the column's */
        size_t offset;     /* of the counter in struct ap_psite */
        enum site_coding coding;
};

#define COLUMN(f, name, coding)                                \
        {                                                      \
#f, name, offsetof(struct ap_psite, f), coding \
        }
static const struct site_column site_columns[] = {
        COLUMN(allocations, "allocations", CODE_RAW),
        COLUMN(bytes, "bytes", CODE_RAW),
        COLUMN(leaked_blocks, "leaked_blocks", CODE_RAW),
        COLUMN(leaked_bytes, "leaked_bytes", CODE_RAW),
        COLUMN(temporary, "temporary", CODE_RAW),
        COLUMN(reallocs, "reallocs", CODE_RAW),
        COLUMN(frees, "allocations-leaked_blocks-frees", CODE_FREES),
        COLUMN(freed_bytes, "bytes-leaked_bytes-freed_bytes", CODE_FREED_BYTES),
        COLUMN(max_live_bytes, "max_live_bytes+1 (0: =bytes)", CODE_MAX_LIVE),
        COLUMN(peak_bytes, "peak_bytes+2 (0: none, 1: =max_live_bytes)", CODE_PEAK),
};

static uint64_t *site_counter(struct ap_psite *s, const struct site_column *c)
{
        return (uint64_t *)((char *)s + c->offset);
}

/* What column c holds for site s.  Counters saturate at INT64_MAX first, as everywhere in
 * the file; the coded values are then taken modulo 2^64 (written as the int64 with the
 * same bits), so that each counter comes back exactly. */
static uint64_t site_encode(const struct ap_psite *s, const struct site_column *c)
{
        uint64_t v = saturate(*site_counter((struct ap_psite *)s, c));

        switch (c->coding) {
        case CODE_RAW:
                break;
        case CODE_FREES:
                return saturate(s->allocations) - saturate(s->leaked_blocks) - v;
        case CODE_FREED_BYTES:
                return saturate(s->bytes) - saturate(s->leaked_bytes) - v;
        case CODE_MAX_LIVE:
                return v == saturate(s->bytes) ? 0 : v + 1;
        case CODE_PEAK:
                return v == 0 ? 0 : v == saturate(s->max_live_bytes) ? 1 : v + 2;
        }
        return v;
}

/* Inverts site_encode: stores the counter of column c, coded as x, into s (which holds
 * the counters c is coded against already).  False if it does not fit in an int64. */
static bool site_decode(struct ap_psite *s, const struct site_column *c, uint64_t x)
{
        uint64_t v = x;

        switch (c->coding) {
        case CODE_RAW:
                break;
        case CODE_FREES:
                v = s->allocations - s->leaked_blocks - x;
                break;
        case CODE_FREED_BYTES:
                v = s->bytes - s->leaked_bytes - x;
                break;
        case CODE_MAX_LIVE:
                v = x == 0 ? s->bytes : x - 1;
                break;
        case CODE_PEAK:
                v = x == 0 ? 0 : x == 1 ? s->max_live_bytes : x - 2;
                break;
        }
        *site_counter(s, c) = v;
        return v <= (uint64_t)INT64_MAX;
}

/* Columns of format 3's frame table, in file order. */
enum frame_column { FC_FUNCTION, FC_FILE, FC_LINE, FC_MODULE, FC_ADDRESS, FC_INLINED, FC_COUNT };
static const char *const frame_columns[FC_COUNT] = {"function", "file",    "line",
                                                    "module",   "address", "inlined"};

static bool valid_index(uint32_t i, uint32_t n)
{
        return i == AP_NONE || i < n;
}

/* The writer refuses a profile its own reader would reject, so that a bug in the code that
 * built it surfaces at write time instead of as an unreadable file later. */
static int validate_for_write(const struct ap_profile *p)
{
        if ((p->ncommand && !p->command) || (p->nstrings && !p->strings) ||
            (p->nframes && !p->frames) || (p->nsites && !p->sites) ||
            (p->nmodules && !p->modules) || (p->ntimeline && !p->timeline))
                return -EINVAL;
        if (p->nstrings >= AP_NONE || p->nframes >= AP_NONE || p->nmodules >= AP_NONE)
                return -EINVAL;
        if (p->term_signal < 0 || p->term_signal > MAX_SIGNAL ||
            (p->mode != NULL && !known_mode(p->mode)) || sampled_without_interval(p))
                return -EINVAL;
        for (uint32_t i = 0; i < p->ncommand; i++)
                if (!p->command[i])
                        return -EINVAL;
        for (uint32_t i = 0; i < p->nstrings; i++)
                if (!p->strings[i])
                        return -EINVAL;
        for (uint32_t i = 0; i < p->nmodules; i++)
                if (!valid_index(p->modules[i].path, p->nstrings) ||
                    !valid_index(p->modules[i].build_id, p->nstrings))
                        return -EINVAL;
        for (uint32_t i = 0; i < p->nframes; i++) {
                const struct ap_pframe *f = &p->frames[i];

                if (!valid_index(f->function, p->nstrings) || !valid_index(f->file, p->nstrings) ||
                    !valid_index(f->module, p->nmodules))
                        return -EINVAL;
        }
        if (broken_bound(p, totals_bounds, ARRAY_SIZE(totals_bounds)))
                return -EINVAL;
        for (uint32_t i = 0; i < p->nsites; i++) {
                const struct ap_psite *s = &p->sites[i];

                if ((s->nframes && !s->frames) ||
                    broken_bound(s, site_bounds, ARRAY_SIZE(site_bounds)))
                        return -EINVAL;
                for (uint32_t j = 0; j < s->nframes; j++)
                        if (s->frames[j] >= p->nframes)
                                return -EINVAL;
        }
        return 0;
}

/* Frames in file order: by module, then address, so that addresses are small steps; the
 * index a frame had breaks ties, which keeps an inline chain (the frames of one address,
 * innermost first, as the symbolizer made them) in its order. */
struct frame_key {
        uint32_t module; /* AP_NONE sorts last */
        uint32_t index;
        uint64_t address;
};

static int cmp_frame_key(const void *x, const void *y)
{
        const struct frame_key *a = x, *b = y;

        if (a->module != b->module)
                return a->module < b->module ? -1 : 1;
        if (a->address != b->address)
                return a->address < b->address ? -1 : 1;
        return a->index < b->index ? -1 : a->index > b->index;
}

/* A site as the file has it: its stack in file frame numbers, outermost first (the
 * reverse of ap_psite.frames), the order in which it is sorted and written. */
struct site_ref {
        const struct ap_psite *site;
        const uint32_t *frames;
        uint32_t nframes;
        uint32_t shared; /* outermost frames in common with the site written before it */
};

/* Frame `depth` of s's stack plus one, or 0 past its end: a shorter stack sorts before
 * the longer ones it is a prefix of. */
static uint64_t stack_key(const struct site_ref *s, uint32_t depth)
{
        return depth < s->nframes ? (uint64_t)s->frames[depth] + 1 : 0;
}

static void swap_sites(struct site_ref *a, struct site_ref *b)
{
        struct site_ref t = *a;

        *a = *b;
        *b = t;
}

/* Sorts sites by their stacks read from the outermost frame, so that a site shares as
 * many outer frames as it can with the one before it.  Deep stacks share long prefixes,
 * which a comparison sort would walk in every comparison (a sixth of the time to write a
 * compiler's profile); a three-way radix quicksort (Bentley and Sedgewick) looks at each
 * frame about once: it partitions on the frame at one depth and moves to the next depth
 * only in the part that is equal there. */
static void sort_sites(struct site_ref *sites, uint32_t nsites)
{
        struct range {
                struct site_ref *a;
                size_t n;
                uint32_t depth;
        };
        /* Of the parts of a partition, the smallest (at most a third of the range) is
         * sorted next, and the other two are pushed, the largest first: the middle one
         * (at most half) comes off next, and the largest, popped last, is sorted at the
         * depth of the stack the range had.  So the stack grows by two entries per third
         * and one per half of the range: at most 2 log3(2^32) + 2 < 44 entries.  Pushed
         * the other way round, a part could stay under every later one: sites already in
         * order, 512 callers of 16 stacks each, filled the stack past its end (and wrote
         * over the collector's own stack: a million sites crashed it). */
        struct range todo[2 * 33], cur = {sites, nsites, 0};
        size_t ntodo = 0;

        for (;;) {
                struct site_ref *a = cur.a;
                size_t n = cur.n;
                uint32_t d = cur.depth;

                if (n <= 8) {
                        /* Insertion sort, comparing from depth d on. */
                        for (size_t i = 1; i < n; i++)
                                for (size_t j = i; j > 0; j--) {
                                        uint32_t k = d;

                                        while (stack_key(&a[j - 1], k) == stack_key(&a[j], k) &&
                                               stack_key(&a[j], k) != 0)
                                                k++;
                                        if (stack_key(&a[j - 1], k) <= stack_key(&a[j], k))
                                                break;
                                        swap_sites(&a[j - 1], &a[j]);
                                }
                        if (ntodo == 0)
                                break;
                        cur = todo[--ntodo];
                        continue;
                }

                uint64_t x = stack_key(&a[0], d), y = stack_key(&a[n / 2], d);
                uint64_t z = stack_key(&a[n - 1], d);
                uint64_t pivot = x < y ? (y < z ? y : x < z ? z : x) : (x < z ? x : y < z ? z : y);
                size_t lt = 0, i = 0, gt = n;

                /* [0, lt) < pivot, [lt, i) == pivot, [gt, n) > pivot */
                while (i < gt) {
                        uint64_t k = stack_key(&a[i], d);

                        if (k < pivot)
                                swap_sites(&a[lt++], &a[i++]);
                        else if (k > pivot)
                                swap_sites(&a[i], &a[--gt]);
                        else
                                i++;
                }
                /* Stacks that all end at depth d are equal: nothing left to sort there. */
                struct range part[3] = {
                        {a, lt, d}, {a + lt, pivot ? gt - lt : 0, d + 1}, {a + gt, n - gt, d}};
                size_t smallest = 3;

                for (size_t k = 0; k < 3; k++)
                        if (part[k].n > 1 && (smallest == 3 || part[k].n < part[smallest].n))
                                smallest = k;
                size_t largest = 3;

                for (size_t k = 0; k < 3; k++)
                        if (part[k].n > 1 && k != smallest &&
                            (largest == 3 || part[k].n > part[largest].n))
                                largest = k;
                if (largest != 3)
                        todo[ntodo++] = part[largest];
                for (size_t k = 0; k < 3; k++)
                        if (part[k].n > 1 && k != smallest && k != largest)
                                todo[ntodo++] = part[k];
                if (smallest != 3)
                        cur = part[smallest];
                else if (ntodo > 0)
                        cur = todo[--ntodo];
                else
                        break;
        }
}

/* What has to be worked out before the first byte is written, so that running out of
 * memory cannot leave half a file: the order of the frames and of the sites.  The profile
 * is const, so the stacks are copied with the frames' new numbers. */
struct plan {
        uint32_t *frame_at;     /* file position -> index into p->frames */
        uint32_t *stacks;       /* every site's renumbered stack, back to back */
        struct site_ref *sites; /* in file order */
};

static void plan_free(struct plan *plan)
{
        free(plan->frame_at);
        free(plan->stacks);
        free(plan->sites);
}

static int plan_make(const struct ap_profile *p, struct plan *plan)
{
        struct frame_key *keys = NULL;
        uint32_t *renumber = NULL;
        size_t total = 0;

        *plan = (struct plan){0};
        for (uint32_t i = 0; i < p->nsites; i++)
                total += p->sites[i].nframes;
        if ((p->nframes && (!(keys = malloc(sizeof(*keys) * p->nframes)) ||
                            !(renumber = malloc(sizeof(*renumber) * p->nframes)) ||
                            !(plan->frame_at = malloc(sizeof(*plan->frame_at) * p->nframes)))) ||
            (total && !(plan->stacks = malloc(sizeof(*plan->stacks) * total))) ||
            (p->nsites && !(plan->sites = malloc(sizeof(*plan->sites) * p->nsites)))) {
                free(keys);
                free(renumber);
                plan_free(plan);
                return -ENOMEM;
        }

        for (uint32_t i = 0; i < p->nframes; i++)
                keys[i] = (struct frame_key){p->frames[i].module, i, p->frames[i].address};
        if (p->nframes)
                qsort(keys, p->nframes, sizeof(*keys), cmp_frame_key);
        for (uint32_t i = 0; i < p->nframes; i++) {
                plan->frame_at[i] = keys[i].index;
                renumber[keys[i].index] = i;
        }

        total = 0;
        for (uint32_t i = 0; i < p->nsites; i++) {
                const struct ap_psite *s = &p->sites[i];
                uint32_t *out = plan->stacks + total;

                for (uint32_t j = 0; j < s->nframes; j++)
                        out[j] = renumber[s->frames[s->nframes - 1 - j]];
                plan->sites[i] = (struct site_ref){.site = s, .frames = out, .nframes = s->nframes};
                total += s->nframes;
        }
        sort_sites(plan->sites, p->nsites);
        for (uint32_t i = 1; i < p->nsites; i++) {
                struct site_ref *s = &plan->sites[i];
                const struct site_ref *prev = &plan->sites[i - 1];
                uint32_t k = 0;

                while (k < s->nframes && k < prev->nframes && s->frames[k] == prev->frames[k])
                        k++;
                s->shared = k;
        }
        free(keys);
        free(renumber);
        return 0;
}

/* An object of the fields, left open when `open` (the caller adds more and closes it). */
static void out_u64_fields(struct fd_sink *sink, const void *base, const struct u64_field *fields,
                           size_t n, bool open)
{
        for (size_t i = 0; i < n; i++) {
                out_char(sink, i ? ',' : '{');
                out_key(sink, fields[i].name);
                out_u64(sink, *u64_at((void *)base, &fields[i]));
        }
        if (!open)
                out_char(sink, '}');
}

static void out_process(struct fd_sink *sink, const struct ap_profile *p)
{
        out_lit(sink, "{\"pid\":");
        out_i64(sink, p->pid);
        out_lit(sink, ",\"ppid\":");
        out_i64(sink, p->ppid);
        out_lit(sink, ",\"command\":[");
        for (uint32_t i = 0; i < p->ncommand; i++) {
                if (i)
                        out_char(sink, ',');
                out_str(sink, p->command[i]);
        }
        out_lit(sink, "],\"exe\":");
        out_str(sink, p->exe);
        if (p->run_id != NULL) {
                out_lit(sink, ",\"run_id\":");
                out_str(sink, p->run_id);
        }
        if (p->foreign_malloc != NULL) {
                out_lit(sink, ",\"foreign_malloc\":");
                out_str(sink, p->foreign_malloc);
        }
        out_lit(sink, ",\"exit_status\":");
        out_i64(sink, p->exit_status);
        out_lit(sink, ",\"term_signal\":");
        out_i64(sink, p->term_signal);
        if (p->by_exec) {
                out_lit(sink, ",\"exec\":{\"path\":");
                out_str(sink, p->exec_path);
                if (p->exec_profiled)
                        out_lit(sink, ",\"profiled\":true}");
                else
                        out_lit(sink, ",\"profiled\":false}");
        }
        out_lit(sink, ",\"start_unix_ns\":");
        out_u64(sink, p->start_unix_ns);
        out_lit(sink, ",\"duration_ns\":");
        out_u64(sink, p->duration_ns);
        if (p->drain_cpu_ns != 0) {
                out_lit(sink, ",\"drain_cpu_ns\":");
                out_u64(sink, p->drain_cpu_ns);
        }
        if (p->ring_waits != 0) {
                out_lit(sink, ",\"ring_waits\":");
                out_u64(sink, p->ring_waits);
                out_lit(sink, ",\"ring_wait_ns\":");
                out_u64(sink, p->ring_wait_ns);
        }
        out_char(sink, '}');
}

static void out_modules(struct fd_sink *sink, const struct ap_profile *p)
{
        out_char(sink, '[');
        for (uint32_t i = 0; i < p->nmodules; i++) {
                const struct ap_pmodule *m = &p->modules[i];

                if (i)
                        out_char(sink, ',');
                out_lit(sink, "{\"path\":");
                out_index(sink, m->path);
                out_lit(sink, ",\"build_id\":");
                out_index(sink, m->build_id);
                for (size_t k = 0; k < ARRAY_SIZE(module_fields); k++) {
                        out_char(sink, ',');
                        out_key(sink, module_fields[k].name);
                        out_u64(sink, *u64_at((void *)m, &module_fields[k]));
                }
                out_char(sink, '}');
        }
        out_char(sink, ']');
}

static void out_sep(struct fd_sink *sink, uint32_t i)
{
        if (i)
                out_char(sink, ',');
}

/* Format 3's reference into a table: the index, or -1 for AP_NONE. */
static void out_ref(struct fd_sink *sink, uint32_t i)
{
        out_i64(sink, i == AP_NONE ? -1 : (int64_t)i);
}

/* A difference taken modulo 2^64, as the int64 with the same bits (GCC and Clang define
 * the conversion so), which the reader adds back modulo 2^64. */
static void out_wrapped(struct fd_sink *sink, uint64_t v)
{
        out_i64(sink, (int64_t)v);
}

static void out_frames(struct fd_sink *sink, const struct ap_profile *p, const struct plan *plan)
{
        for (unsigned c = 0; c < FC_COUNT; c++) {
                uint64_t prev = 0;

                out_char(sink, c ? ',' : '{');
                out_key(sink, frame_columns[c]);
                out_char(sink, '[');
                for (uint32_t i = 0; i < p->nframes; i++) {
                        const struct ap_pframe *f = &p->frames[plan->frame_at[i]];

                        out_sep(sink, i);
                        switch ((enum frame_column)c) {
                        case FC_FUNCTION:
                                out_ref(sink, f->function);
                                break;
                        case FC_FILE:
                                out_ref(sink, f->file);
                                break;
                        case FC_LINE:
                                out_i64(sink, (int64_t)f->line - (int64_t)prev);
                                prev = f->line;
                                break;
                        case FC_MODULE:
                                out_ref(sink, f->module);
                                break;
                        case FC_ADDRESS:
                                out_wrapped(sink, f->address - prev);
                                prev = f->address;
                                break;
                        case FC_INLINED:
                                out_char(sink, f->inlined ? '1' : '0');
                                break;
                        case FC_COUNT: /* not a column */
                                break;
                        }
                }
                out_char(sink, ']');
        }
        out_char(sink, '}');
}

/* How many sites ahead out_sites starts loading one (a few hundred ns of a miss against
 * some tens of ns of writing a number). */
#define SITE_AHEAD 16

static inline void prefetch_site(const struct ap_psite *s)
{
        __builtin_prefetch(s);
        __builtin_prefetch((const char *)s + sizeof(*s) - 1);
}

static void out_sites(struct fd_sink *sink, const struct ap_profile *p, const struct plan *plan)
{
        for (size_t c = 0; c < ARRAY_SIZE(site_columns); c++) {
                out_char(sink, c ? ',' : '{');
                out_key(sink, site_columns[c].name);
                out_char(sink, '[');
                for (uint32_t i = 0; i < p->nsites; i++) {
                        /* The sites are read in file order, scattered over the array: a
                         * cache miss each, ten times over, unless fetched ahead. */
                        if (i + SITE_AHEAD < p->nsites)
                                prefetch_site(plan->sites[i + SITE_AHEAD].site);
                        out_sep(sink, i);
                        out_wrapped(sink, site_encode(plan->sites[i].site, &site_columns[c]));
                }
                out_char(sink, ']');
        }
        out_lit(sink, ",\"popped\":[");
        for (uint32_t i = 0; i < p->nsites; i++) {
                out_sep(sink, i);
                out_i64(sink, i ? plan->sites[i - 1].nframes - plan->sites[i].shared : 0);
        }
        /* The frames a site adds, from the outermost in, each as the step from the frame
         * before it: for the first, the frame it replaces if the previous stack has one
         * at its depth, else the innermost shared one, else -1 (see the top of the file). */
        out_lit(sink, "],\"stacks\":[");
        for (uint32_t i = 0; i < p->nsites; i++) {
                const struct site_ref *s = &plan->sites[i];
                const struct site_ref *before = i ? &plan->sites[i - 1] : NULL;
                int64_t prev = before && s->shared < before->nframes
                                       ? (int64_t)before->frames[s->shared]
                               : s->shared ? (int64_t)s->frames[s->shared - 1]
                                           : -1;

                if (i + SITE_AHEAD < p->nsites) { /* each site's frames are apart too */
                        const struct site_ref *a = &plan->sites[i + SITE_AHEAD];
                        __builtin_prefetch(a->frames + a->shared);
                }
                out_sep(sink, i);
                out_char(sink, '[');
                for (uint32_t j = s->shared; j < s->nframes; j++) {
                        out_sep(sink, j - s->shared);
                        out_i64(sink, s->frames[j] - prev);
                        prev = s->frames[j];
                }
                out_char(sink, ']');
        }
        out_char(sink, ']');
        /* Optional (readers before it ignore it): the sites, in this order, whose stack
         * was cut at AP_MAX_FRAMES. */
        bool any = false;
        for (uint32_t i = 0; i < p->nsites; i++) {
                if (i + SITE_AHEAD < p->nsites)
                        prefetch_site(plan->sites[i + SITE_AHEAD].site);
                if (!plan->sites[i].site->truncated)
                        continue;
                if (any)
                        out_char(sink, ',');
                else
                        out_lit(sink, ",\"truncated\":[");
                out_i64(sink, i);
                any = true;
        }
        if (any)
                out_char(sink, ']');
        out_char(sink, '}');
}

static void out_histogram(struct fd_sink *sink, const struct ap_profile *p)
{
        bool more = false;

        out_char(sink, '[');
        for (unsigned i = 0; i < AP_HIST_BUCKETS; i++) {
                if (p->hist_count[i] == 0 && p->hist_bytes[i] == 0)
                        continue;
                if (more)
                        out_char(sink, ',');
                out_char(sink, '[');
                more = true;
                out_i64(sink, i);
                out_char(sink, ',');
                out_u64(sink, p->hist_count[i]);
                out_char(sink, ',');
                out_u64(sink, p->hist_bytes[i]);
                out_char(sink, ']');
        }
        out_char(sink, ']');
}

/* Each row as its step from the row before (the first from zeros), modulo 2^64. */
static void out_timeline(struct fd_sink *sink, const struct ap_profile *p)
{
        uint64_t t_ns = 0, live_bytes = 0, allocations = 0;

        out_char(sink, '[');
        for (uint32_t i = 0; i < p->ntimeline; i++) {
                const struct ap_ptimepoint *t = &p->timeline[i];

                out_sep(sink, i);
                out_char(sink, '[');
                out_wrapped(sink, saturate(t->t_ns) - t_ns);
                out_char(sink, ',');
                out_wrapped(sink, saturate(t->live_bytes) - live_bytes);
                out_char(sink, ',');
                out_wrapped(sink, saturate(t->allocations) - allocations);
                out_char(sink, ']');
                t_ns = saturate(t->t_ns);
                live_bytes = saturate(t->live_bytes);
                allocations = saturate(t->allocations);
        }
        out_char(sink, ']');
}

/* The whole document, in the key order of the top of the file, and the end of the gzip
 * stream.  Returns 0 or the first error. */
static int out_document(struct fd_sink *sink, const struct ap_profile *p, const struct plan *plan)
{
        out_lit(sink, "{\"format\":\"" FORMAT_NAME "\",\"format_version\":");
        out_i64(sink, AP_PROFILE_SCHEMA_VERSION);
        out_lit(sink, ",\"tool\":{\"name\":\"allocprof\",\"version\":");
        out_str(sink, p->tool_version);
        out_lit(sink, "},\"process\":");
        out_process(sink, p);
        if (p->live)
                out_lit(sink, ",\"live\":true");
        out_lit(sink, ",\"mode\":");
        out_str(sink, p->mode);
        out_lit(sink, ",\"sample_interval\":");
        out_u64(sink, p->sample_interval);
        if (interval_changed(p)) { /* only then: other files are as they were */
                out_lit(sink, ",\"sample_intervals\":[");
                out_u64(sink, p->sample_interval_min);
                out_lit(sink, ",");
                out_u64(sink, p->sample_interval_max);
                out_lit(sink, "]");
        }
        out_lit(sink, ",\"totals\":");
        out_u64_fields(sink, p, totals_fields, ARRAY_SIZE(totals_fields), true);
        if (p->totals.untracked_samples) { /* only when not 0: older readers never saw it */
                out_lit(sink, ",\"untracked_samples\":");
                out_u64(sink, p->totals.untracked_samples);
        }
        if (p->totals.unprofiled_children) { /* likewise */
                out_lit(sink, ",\"unprofiled_children\":");
                out_u64(sink, p->totals.unprofiled_children);
        }
        if (p->totals.dropped_no_ring) { /* likewise */
                out_lit(sink, ",\"dropped_no_ring\":");
                out_u64(sink, p->totals.dropped_no_ring);
        }
        out_char(sink, '}');
        out_lit(sink, ",\"strings\":[");
        for (uint32_t i = 0; i < p->nstrings; i++) {
                if (i)
                        out_char(sink, ',');
                out_str(sink, p->strings[i]);
        }
        out_lit(sink, "],\"modules\":");
        out_modules(sink, p);
        out_lit(sink, ",\"frames\":");
        out_frames(sink, p, plan);
        out_lit(sink, ",\"sites\":");
        out_sites(sink, p, plan);
        out_lit(sink, ",\"histogram\":");
        out_histogram(sink, p);
        out_lit(sink, ",\"timeline\":");
        out_timeline(sink, p);
        out_lit(sink, "}\n");
        sink_deflate(sink, true);
        return -sink->error;
}

static struct fd_sink *sink_new(int fd)
{
        struct fd_sink *sink = calloc(1, sizeof(*sink));
        if (sink == NULL)
                return NULL;
        sink->fd = fd;
        return sink; /* the compressor comes with the first text (sink_deflate) */
}

static void sink_free(struct fd_sink *sink)
{
        if (sink == NULL)
                return;
        if (sink->z_ready)
                deflateEnd(&sink->z);
        free(sink);
}

int ap_profile_write_fd(const struct ap_profile *p, int fd)
{
        struct fd_sink *sink = NULL;
        struct plan plan;
        int r;

        if (!p || fd < 0)
                return -EINVAL;
        r = validate_for_write(p);
        if (r < 0)
                return r;
        r = plan_make(p, &plan);
        sink = r == 0 ? sink_new(fd) : NULL;
        r = sink ? out_document(sink, p, &plan) : -ENOMEM;
        sink_free(sink);
        plan_free(&plan);
        return r;
}

int ap_profile_std_stream(const char *path)
{
        struct stat lst, st, fst;
        if (lstat(path, &lst) < 0 || !S_ISLNK(lst.st_mode) || stat(path, &st) < 0 ||
            !S_ISREG(st.st_mode))
                return -1;
        for (int fd = 1; fd <= 2; fd++)
                if (fstat(fd, &fst) == 0 && fst.st_dev == st.st_dev && fst.st_ino == st.st_ino)
                        return fd;
        return -1;
}

static int dest_fail(char **err, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int dest_fail(char **err, int r, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(err, fmt, ap) < 0)
                *err = NULL;
        va_end(ap);
        return r;
}

/* The name of the virtual file system `dir` is on (where no file can be created), or
 * NULL. */
static const char *virtual_fs(const char *dir)
{
        static const struct {
                unsigned long magic;
                const char *name;
        } kinds[] = {
                {PROC_SUPER_MAGIC, "proc"},
                {SYSFS_MAGIC, "sysfs"},
                {CGROUP_SUPER_MAGIC, "cgroup"},
                {CGROUP2_SUPER_MAGIC, "cgroup2"},
                {DEBUGFS_MAGIC, "debugfs"},
                {TRACEFS_MAGIC, "tracefs"},
                {SECURITYFS_MAGIC, "securityfs"},
                {DEVPTS_SUPER_MAGIC, "devpts"},
                {BPF_FS_MAGIC, "bpf"},
                {PSTOREFS_MAGIC, "pstore"},
                {EFIVARFS_MAGIC, "efivarfs"},
        };
        struct statfs sf;

        if (statfs(dir, &sf) < 0)
                return NULL;
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
                if ((unsigned long)sf.f_type == kinds[i].magic)
                        return kinds[i].name;
        return NULL;
}

int ap_profile_check_dir(const char *dir, char **err)
{
        const char *name = strcmp(dir, ".") == 0 ? "the current directory" : dir;
        struct stat st;

        if (stat(dir, &st) < 0) {
                int r = -errno;
                if (r == -ENOENT)
                        return dest_fail(err, r, "directory %s does not exist", name);
                return dest_fail(err, r, "cannot reach directory %s: %s", name, strerror(-r));
        }
        if (!S_ISDIR(st.st_mode))
                return dest_fail(err, -ENOTDIR, "%s is not a directory", name);
        /* Tried, not asked: access(2) lets root write anywhere, even where nothing can be
         * created. */
        char *probe = NULL;
        if (asprintf(&probe, "%s/.allocprof.tmp.%ld.probe", dir, (long)getpid()) < 0)
                return dest_fail(err, -ENOMEM, "out of memory");
        int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        int r = fd >= 0 || errno == EEXIST ? 0 : -errno;
        if (fd >= 0) {
                close(fd);
                unlink(probe);
        }
        free(probe);
        if (r == 0)
                return 0;
        const char *vfs = virtual_fs(dir);
        if (vfs != NULL)
                return dest_fail(
                        err, r, "%s is on a virtual file system (%s), where no file can be created",
                        name, vfs);
        if (r == -EROFS)
                return dest_fail(err, r, "%s is on a read-only file system", name);
        if (r == -EACCES || r == -EPERM)
                return dest_fail(err, r, "no permission to create files in %s", name);
        return dest_fail(err, r, "cannot create a file in %s: %s", name, strerror(-r));
}

/* Whether the link `path` names a descriptor (/dev/stdout, /dev/fd/N, /proc/self/fd/N):
 * its target is under /proc/<pid or self>/fd/.  *target gets it. */
static bool links_to_fd(const char *path, char *target, size_t len)
{
        ssize_t n = readlink(path, target, len - 1);
        if (n < 0)
                return false;
        target[n] = '\0';
        if (strncmp(target, "/dev/fd/", 8) == 0)
                return true;
        if (strncmp(target, "/proc/", 6) != 0)
                return false;
        const char *rest = strchr(target + 6, '/');
        return rest != NULL && strncmp(rest, "/fd/", 4) == 0;
}

int ap_profile_check_dest(const char *path, char **err)
{
        struct stat st, lst;
        bool regular = false;

        if (path[0] == '\0')
                return dest_fail(err, -EINVAL, "the name is empty");
        if (ap_profile_std_stream(path) >= 0)
                return AP_DEST_INTO; /* our redirected stdout: after what is there */
        if (stat(path, &st) == 0) {
                if (S_ISDIR(st.st_mode))
                        return dest_fail(err, -EISDIR, "it is a directory");
                if (S_ISBLK(st.st_mode))
                        return dest_fail(err, -EINVAL,
                                         "it is a block device: a profile is written into a "
                                         "character device (/dev/null), a FIFO or a "
                                         "redirected standard output, never into a disk");
                if (S_ISSOCK(st.st_mode))
                        return dest_fail(err, -ENXIO, "it is a socket");
                if (S_ISFIFO(st.st_mode)) {
                        /* Opened when the profile is written, waiting for a reader. */
                        if (access(path, W_OK) < 0)
                                return dest_fail(err, -EACCES, "no permission to write into it");
                        return AP_DEST_INTO;
                }
                if (S_ISCHR(st.st_mode)) {
                        int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                        int e = errno;
                        if (fd < 0)
                                return dest_fail(err, -e, "cannot write into it: %s", strerror(e));
                        bool tty = isatty(fd);
                        close(fd);
                        if (tty)
                                return dest_fail(err, -EINVAL,
                                                 "it is a terminal, and a profile is binary "
                                                 "(gzip'ed JSON): name a file, or redirect "
                                                 "the output into one");
                        return AP_DEST_INTO;
                }
                regular = S_ISREG(st.st_mode);
        } else if (errno != ENOENT && errno != ENOTDIR) {
                int e = errno;
                return dest_fail(err, -e, "%s", strerror(e));
        } else {
                char target[PATH_MAX];
                if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode) &&
                    links_to_fd(path, target, sizeof(target)))
                        return dest_fail(err, -EBADF,
                                         "it is a link to %s, a descriptor that is not open",
                                         target);
        }
        /* A new file next to it, renamed over what is there (a file, a symbolic link). */
        bool exists = lstat(path, &lst) == 0;
        char *dir = strdup(path);
        if (dir == NULL)
                return dest_fail(err, -ENOMEM, "out of memory");
        char *slash = strrchr(dir, '/');
        if (slash == dir)
                slash[1] = '\0';
        else if (slash != NULL)
                *slash = '\0';
        else
                strcpy(dir, ".");
        char *why = NULL;
        int r = ap_profile_check_dir(dir, &why);
        if (r < 0 && regular)
                r = dest_fail(err, r,
                              "%s (a profile replaces a file, it is never written into one)",
                              why ? why : strerror(-r));
        else if (r < 0)
                r = dest_fail(err, r, "%s", why ? why : strerror(-r));
        /* In a sticky directory (/tmp) only its owner or the entry's may replace an
         * entry: the entry's own owner (lstat), a symlink's and not its target's. */
        else if (exists && geteuid() != 0 && stat(dir, &st) == 0 && (st.st_mode & S_ISVTX) &&
                 st.st_uid != geteuid() && lst.st_uid != geteuid())
                r = dest_fail(err, -EPERM,
                              "it belongs to another user, in %s, a sticky directory where only "
                              "its owner may replace it",
                              dir);
        free(why);
        free(dir);
        return r < 0 ? r : AP_DEST_FILE;
}

enum ap_profile_dest ap_profile_dest_of(const char *path)
{
        struct stat st;
        if (ap_profile_std_stream(path) >= 0 || (stat(path, &st) == 0 && !S_ISREG(st.st_mode)))
                return AP_DEST_INTO;
        return AP_DEST_FILE;
}

const char *ap_profile_write_strerror(int r)
{
        if (r == -ENXIO)
                return "no process opened the FIFO to read it within 10 s";
        return strerror(-r);
}

int ap_profile_write(const struct ap_profile *p, const char *path)
{
        /* Several collector threads may write profiles into one directory at once. */
        static atomic_uint counter;
        struct fd_sink *sink = NULL;
        struct plan plan;
        char *tmp = NULL;
        int r;

        if (!p || !path)
                return -EINVAL;
        /* /dev/stdout with our output redirected into a file: after what is there. */
        int std = ap_profile_std_stream(path);
        if (std >= 0) {
                int fd = fcntl(std, F_DUPFD_CLOEXEC, 3);
                if (fd < 0)
                        return -errno;
                r = ap_profile_write_fd(p, fd);
                if (close(fd) < 0 && r == 0)
                        r = -errno;
                return r;
        }
        /* Something there that is not a file (/dev/null, a FIFO, a terminal): write into
         * it.  Renaming over it would replace a device node with a file. */
        struct stat st;
        if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
                if (S_ISDIR(st.st_mode))
                        return -EISDIR;
                /* A FIFO: wait up to 10 s for a reader (opening it blocks until one
                 * comes), then say there is none (ENXIO) rather than hang. */
                int fd = -1;
                for (int tries = 0; tries < FIFO_WAIT_MS / 10; tries++) {
                        fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                        if (fd >= 0 || errno != ENXIO || !S_ISFIFO(st.st_mode))
                                break;
                        struct timespec nap = {0, 10 * 1000 * 1000};
                        nanosleep(&nap, NULL);
                }
                if (fd < 0)
                        return -errno;
                int fl = fcntl(fd, F_GETFL);
                if (fl >= 0)
                        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
                r = ap_profile_write_fd(p, fd);
                if (close(fd) < 0 && r == 0)
                        r = -errno;
                return r;
        }
        r = validate_for_write(p);
        if (r < 0)
                return r;
        r = plan_make(p, &plan);
        if (r < 0)
                return r;
        sink = sink_new(-1);
        if (!sink) {
                r = -ENOMEM;
                goto out;
        }

        /* The temporary lives next to the target so rename() stays on one filesystem; its
         * name matches the *.approf.tmp* ignore pattern. */
        for (int attempt = 0; attempt < 100; attempt++) {
                free(tmp);
                if (asprintf(&tmp, "%s.tmp.%ld.%u", path, (long)getpid(),
                             atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed)) < 0) {
                        tmp = NULL;
                        r = -ENOMEM;
                        goto out;
                }
                sink->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
                if (sink->fd >= 0 || errno != EEXIST)
                        break;
        }
        if (sink->fd < 0) {
                r = -errno;
                goto out;
        }
        /* A umask can only narrow 0600; set it exactly so that the owner can always read
         * the profile back. */
        if (fchmod(sink->fd, 0600) < 0) {
                r = -errno;
                goto out_unlink;
        }
        r = out_document(sink, p, &plan);
        if (r < 0)
                goto out_unlink;
        r = close(sink->fd);
        sink->fd = -1;
        if (r < 0) {
                r = -errno;
                goto out_unlink;
        }
        if (rename(tmp, path) < 0) {
                r = -errno;
                goto out_unlink;
        }
        r = 0;
        goto out;

out_unlink:
        if (sink->fd >= 0)
                close(sink->fd);
        unlink(tmp);
out:
        free(tmp);
        sink_free(sink);
        plan_free(&plan);
        return r;
}

/* ------------------------------------------------------------------------------------ */
/* Reading                                                                              */

struct rctx {
        char *err; /* first error, malloc'd */
        int r;     /* its code */
};

static int fail(struct rctx *rc, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(struct rctx *rc, int r, const char *fmt, ...)
{
        va_list ap;

        if (!rc->err) {
                va_start(ap, fmt);
                if (vasprintf(&rc->err, fmt, ap) < 0)
                        rc->err = NULL;
                va_end(ap);
                rc->r = r;
        }
        return r;
}

static int oom(struct rctx *rc)
{
        return fail(rc, -ENOMEM, "out of memory");
}

/* A location in the document, for error messages: "sites[3].frames[1]".  Kept as a chain
 * of the caller's locations and written out only when there is an error to report. */
struct loc {
        const struct loc *parent;
        const char *key; /* NULL: element `index` of the parent array */
        size_t index;
};

static struct loc at_key(const struct loc *parent, const char *key)
{
        return (struct loc){.parent = parent, .key = key};
}

static struct loc at_index(const struct loc *parent, size_t i)
{
        return (struct loc){.parent = parent, .index = i};
}

struct loc_text {
        char s[96];
};

static void loc_append(const struct loc *l, struct loc_text *t, size_t *len)
{
        if (l == NULL)
                return;
        loc_append(l->parent, t, len);
        size_t room = sizeof(t->s) - *len;
        int n = l->key ? snprintf(t->s + *len, room, "%s%s", *len ? "." : "", l->key)
                       : snprintf(t->s + *len, room, "[%zu]", l->index);
        if (n < 0 || (size_t)n >= room) {
                strcpy(t->s + sizeof(t->s) - 4, "...");
                *len = sizeof(t->s) - 1;
        } else {
                *len += (size_t)n;
        }
}

static struct loc_text loc_text(const struct loc *l)
{
        struct loc_text t = {.s = ""};
        size_t len = 0;
        loc_append(l, &t, &len);
        return t;
}

static const char *type_name(const struct ap_json *v)
{
        if (v == NULL)
                return "nothing";
        switch ((enum ap_json_type)v->type) {
        case AP_JSON_OBJECT:
                return "an object";
        case AP_JSON_ARRAY:
                return "an array";
        case AP_JSON_STRING:
                return "a string";
        case AP_JSON_INTEGER:
                return "an integer";
        case AP_JSON_REAL:
                return "a real number";
        case AP_JSON_TRUE:
        case AP_JSON_FALSE:
                return "a boolean";
        case AP_JSON_NULL:
                return "null";
        }
        return "?";
}

static int expect(struct rctx *rc, const struct ap_json *v, const struct loc *l, const char *what)
{
        return fail(rc, -EINVAL, "%s: expected %s, found %s", loc_text(l).s, what, type_name(v));
}

/* Member `key` of obj (which the caller checked is an object). */
static int member(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                  const char *key, const struct ap_json **ret)
{
        const struct ap_json *v = ap_json_get(obj, key);

        if (!v) {
                struct loc l = at_key(parent, key);

                return fail(rc, -EINVAL, "%s: missing", loc_text(&l).s);
        }
        *ret = v;
        return 0;
}

static int get_object(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                      const char *key, const struct ap_json **ret)
{
        struct loc l = at_key(parent, key);
        int r = member(rc, obj, parent, key, ret);

        if (r < 0)
                return r;
        return ap_json_is(*ret, AP_JSON_OBJECT) ? 0 : expect(rc, *ret, &l, "an object");
}

/* An array whose length fits a uint32 index space that excludes AP_NONE. */
static int get_array(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                     const char *key, const struct ap_json **ret, uint32_t *ret_n)
{
        struct loc l = at_key(parent, key);
        int r = member(rc, obj, parent, key, ret);

        if (r < 0)
                return r;
        if (!ap_json_is(*ret, AP_JSON_ARRAY))
                return expect(rc, *ret, &l, "an array");
        if ((*ret)->n >= AP_NONE)
                return fail(rc, -EINVAL, "%s: too many elements", loc_text(&l).s);
        *ret_n = (uint32_t)(*ret)->n;
        return 0;
}

static int as_int(struct rctx *rc, const struct ap_json *v, const struct loc *l, int64_t min,
                  int64_t max, int64_t *ret)
{
        int64_t x;

        if (!ap_json_is(v, AP_JSON_INTEGER))
                return expect(rc, v, l, "an integer");
        x = v->i;
        if (x < min || x > max)
                return fail(rc, -EINVAL, "%s: %lld is out of range [%lld, %lld]", loc_text(l).s,
                            (long long)x, (long long)min, (long long)max);
        *ret = x;
        return 0;
}

static int as_u64(struct rctx *rc, const struct ap_json *v, const struct loc *l, uint64_t *ret)
{
        int64_t x = 0;
        int r = as_int(rc, v, l, 0, INT64_MAX, &x);

        if (r >= 0)
                *ret = (uint64_t)x;
        return r;
}

static int as_u32(struct rctx *rc, const struct ap_json *v, const struct loc *l, uint32_t *ret)
{
        int64_t x = 0;
        int r = as_int(rc, v, l, 0, UINT32_MAX, &x);

        if (r >= 0)
                *ret = (uint32_t)x;
        return r;
}

/* An index < n, or null meaning AP_NONE. */
static int as_index(struct rctx *rc, const struct ap_json *v, const struct loc *l, uint32_t n,
                    const char *table, uint32_t *ret)
{
        int64_t x = 0;

        if (ap_json_is(v, AP_JSON_NULL)) {
                *ret = AP_NONE;
                return 0;
        }
        if (!ap_json_is(v, AP_JSON_INTEGER))
                return expect(rc, v, l, "an index or null");
        x = v->i;
        if (x < 0 || x >= n)
                return fail(rc, -EINVAL, "%s: index %lld out of range (%u %s)", loc_text(l).s, (long long)x,
                            n, table);
        *ret = (uint32_t)x;
        return 0;
}

static int as_bool(struct rctx *rc, const struct ap_json *v, const struct loc *l, bool *ret)
{
        if (!ap_json_is(v, AP_JSON_TRUE) && !ap_json_is(v, AP_JSON_FALSE))
                return expect(rc, v, l, "a boolean");
        *ret = ap_json_is(v, AP_JSON_TRUE);
        return 0;
}

/* A malloc'd copy of a string, or NULL for null when nullable. */
static int as_strdup(struct rctx *rc, const struct ap_json *v, const struct loc *l, bool nullable,
                     char **ret)
{
        if (nullable && ap_json_is(v, AP_JSON_NULL)) {
                *ret = NULL;
                return 0;
        }
        if (!ap_json_is(v, AP_JSON_STRING))
                return expect(rc, v, l, nullable ? "a string or null" : "a string");
        *ret = strdup(v->s);
        return *ret ? 0 : oom(rc);
}

static int as_addr(struct rctx *rc, const struct ap_json *v, const struct loc *l, uint64_t *ret)
{
        const char *s;
        uint64_t x = 0;
        size_t n;

        if (!ap_json_is(v, AP_JSON_STRING))
                return expect(rc, v, l, "a hex address string");
        s = v->s;
        n = strlen(s);
        if (n < 3 || n > 18 || s[0] != '0' || s[1] != 'x')
                return fail(rc, -EINVAL, "%s: malformed address", loc_text(l).s);
        for (size_t i = 2; i < n; i++) {
                unsigned d;

                if (s[i] >= '0' && s[i] <= '9')
                        d = (unsigned)(s[i] - '0');
                else if (s[i] >= 'a' && s[i] <= 'f')
                        d = (unsigned)(s[i] - 'a' + 10);
                else if (s[i] >= 'A' && s[i] <= 'F')
                        d = (unsigned)(s[i] - 'A' + 10);
                else
                        return fail(rc, -EINVAL, "%s: malformed address", loc_text(l).s);
                x = (x << 4) | d;
        }
        *ret = x;
        return 0;
}

/* Member helpers: look up `key` in obj (an object) and convert it, or fail naming the key. */
static int field_u64(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                     const char *key, uint64_t *ret)
{
        struct loc l = at_key(parent, key);
        const struct ap_json *v = NULL;
        int r = member(rc, obj, parent, key, &v);

        return r < 0 ? r : as_u64(rc, v, &l, ret);
}

/* As field_u64 for a key that may be missing (then *ret is left as it is). */
static int optional_u64(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                        const char *key, uint64_t *ret)
{
        return ap_json_get(obj, key) ? field_u64(rc, obj, parent, key, ret) : 0;
}

static int field_u32(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                     const char *key, uint32_t *ret)
{
        struct loc l = at_key(parent, key);
        const struct ap_json *v = NULL;
        int r = member(rc, obj, parent, key, &v);

        return r < 0 ? r : as_u32(rc, v, &l, ret);
}

static int field_int(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                     const char *key, int min, int max, int *ret)
{
        struct loc l = at_key(parent, key);
        const struct ap_json *v = NULL;
        int64_t x = 0;
        int r = member(rc, obj, parent, key, &v);

        if (r < 0 || (r = as_int(rc, v, &l, min, max, &x)) < 0)
                return r;
        *ret = (int)x;
        return 0;
}

static int field_index(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                       const char *key, uint32_t n, const char *table, uint32_t *ret)
{
        struct loc l = at_key(parent, key);
        const struct ap_json *v = NULL;
        int r = member(rc, obj, parent, key, &v);

        return r < 0 ? r : as_index(rc, v, &l, n, table, ret);
}

static int field_strdup(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                        const char *key, bool nullable, char **ret)
{
        struct loc l = at_key(parent, key);
        const struct ap_json *v = NULL;
        int r = member(rc, obj, parent, key, &v);

        return r < 0 ? r : as_strdup(rc, v, &l, nullable, ret);
}

static int fields_u64(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                      void *base, const struct u64_field *fields, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                int r = field_u64(rc, obj, parent, fields[i].name, u64_at(base, &fields[i]));

                if (r < 0)
                        return r;
        }
        return 0;
}

/* A fixed-length array element of an array-of-arrays table ("frames", "histogram"...). */
static int tuple(struct rctx *rc, const struct ap_json *v, const struct loc *l, size_t len,
                 const char *shape)
{
        if (!ap_json_is(v, AP_JSON_ARRAY) || v->n != len)
                return fail(rc, -EINVAL, "%s: expected %s", loc_text(l).s, shape);
        return 0;
}

/* Converts element i of a tuple. */
static int tuple_u64(struct rctx *rc, const struct ap_json *t, const struct loc *l, size_t i,
                     uint64_t *ret)
{
        struct loc li = at_index(l, i);

        return as_u64(rc, ap_json_at(t, i), &li, ret);
}

static int tuple_index(struct rctx *rc, const struct ap_json *t, const struct loc *l, size_t i,
                       uint32_t n, const char *table, uint32_t *ret)
{
        struct loc li = at_index(l, i);

        return as_index(rc, ap_json_at(t, i), &li, n, table, ret);
}

/* Allocates a zeroed table of n elements (NULL when n == 0). */
static int alloc_table(struct rctx *rc, void **ret, uint32_t n, size_t size)
{
        *ret = NULL;
        if (n > 0 && !(*ret = calloc(n, size)))
                return oom(rc);
        return 0;
}

/* s for a one-line message, in quotes: at most 32 bytes of it, anything but printable
 * ASCII shown as '?'. */
static struct loc_text quoted(const char *s)
{
        struct loc_text t;
        size_t n = 0;

        t.s[n++] = '"';
        for (; *s != '\0' && n < 33; s++)
                t.s[n++] = *s >= 0x20 && *s < 0x7f ? *s : '?';
        t.s[n++] = '"';
        if (*s != '\0') {
                memcpy(t.s + n, "...", 3);
                n += 3;
        }
        t.s[n] = '\0';
        return t;
}

/* "full", "sampled", or null (unknown). */
static int read_mode(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "mode");
        int r = field_strdup(rc, root, NULL, "mode", true, &p->mode);

        if (r < 0 || p->mode == NULL || known_mode(p->mode))
                return r;
        return fail(rc, -EINVAL, "%s: %s is not a recording mode (\"full\" or \"sampled\")",
                    loc_text(&l).s, quoted(p->mode).s);
}

/* "sample_interval", read after "mode". */
static int read_sample_interval(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "sample_interval");
        int r = field_u64(rc, root, NULL, "sample_interval", &p->sample_interval);

        if (r < 0)
                return r;
        if (sampled_without_interval(p))
                return fail(rc, -EINVAL,
                            "%s: 0 in sampled mode (the mean number of bytes between samples "
                            "is at least 1)",
                            loc_text(&l).s);
        p->sample_interval_min = p->sample_interval_max = p->sample_interval;

        /* Optional "sample_intervals": [min, max], around sample_interval. */
        const struct ap_json *t = ap_json_get(root, "sample_intervals");
        struct loc lr = at_key(NULL, "sample_intervals");
        if (t == NULL)
                return 0;
        if (p->sample_interval == 0)
                return fail(rc, -EINVAL, "%s: present in a profile with no sample interval",
                            loc_text(&lr).s);
        if ((r = tuple(rc, t, &lr, 2, "[smallest, largest]")) < 0 ||
            (r = tuple_u64(rc, t, &lr, 0, &p->sample_interval_min)) < 0 ||
            (r = tuple_u64(rc, t, &lr, 1, &p->sample_interval_max)) < 0)
                return r;
        if (p->sample_interval_min == 0 || p->sample_interval_min > p->sample_interval ||
            p->sample_interval_max < p->sample_interval)
                return fail(rc, -EINVAL,
                            "%s: [%" PRIu64 ", %" PRIu64 "] does not hold sample_interval %" PRIu64
                            " (nor 0)",
                            loc_text(&lr).s, p->sample_interval_min, p->sample_interval_max,
                            p->sample_interval);
        return 0;
}

/* Optional: only snapshots of a running process carry it. */
static int read_live(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "live");
        const struct ap_json *v = ap_json_get(root, "live");

        return v ? as_bool(rc, v, &l, &p->live) : 0;
}

/* "term_signal": 0 for none, else a signal number. */
static int read_term_signal(struct rctx *rc, struct ap_profile *p, const struct ap_json *proc,
                            const struct loc *parent)
{
        struct loc l = at_key(parent, "term_signal");
        const struct ap_json *v = NULL;
        int64_t x = 0;
        int r;

        if ((r = member(rc, proc, parent, "term_signal", &v)) < 0 ||
            (r = as_int(rc, v, &l, INT64_MIN, INT64_MAX, &x)) < 0)
                return r;
        if (x < 0 || x > MAX_SIGNAL)
                return fail(rc, -EINVAL, "%s: %lld is not a signal number (1-%d, or 0 for none)",
                            loc_text(&l).s, (long long)x, MAX_SIGNAL);
        p->term_signal = (int)x;
        return 0;
}

/* Optional: only an image that ended by an exec has it. */
static int read_exec(struct rctx *rc, struct ap_profile *p, const struct ap_json *proc,
                     const struct loc *parent)
{
        struct loc l = at_key(parent, "exec"), lp = at_key(&l, "profiled");
        const struct ap_json *e = NULL, *v = NULL;
        int r;

        if (ap_json_get(proc, "exec") == NULL)
                return 0;
        if ((r = get_object(rc, proc, parent, "exec", &e)) < 0 ||
            (r = field_strdup(rc, e, &l, "path", true, &p->exec_path)) < 0 ||
            (r = member(rc, e, &l, "profiled", &v)) < 0 ||
            (r = as_bool(rc, v, &lp, &p->exec_profiled)) < 0)
                return r;
        p->by_exec = true;
        return 0;
}

static int read_process(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "process"), lc = at_key(&l, "command");
        const struct ap_json *proc = NULL, *cmd = NULL;
        uint32_t n = 0;
        int r;

        if ((r = get_object(rc, root, NULL, "process", &proc)) < 0 ||
            (r = field_u32(rc, proc, &l, "pid", &p->pid)) < 0 ||
            (r = field_u32(rc, proc, &l, "ppid", &p->ppid)) < 0 ||
            (r = field_int(rc, proc, &l, "exit_status", -1, 255, &p->exit_status)) < 0 ||
            (r = read_term_signal(rc, p, proc, &l)) < 0 || (r = read_exec(rc, p, proc, &l)) < 0 ||
            (r = field_u64(rc, proc, &l, "start_unix_ns", &p->start_unix_ns)) < 0 ||
            (r = field_u64(rc, proc, &l, "duration_ns", &p->duration_ns)) < 0 ||
            (ap_json_get(proc, "drain_cpu_ns") != NULL &&
             (r = field_u64(rc, proc, &l, "drain_cpu_ns", &p->drain_cpu_ns)) < 0) ||
            (ap_json_get(proc, "ring_waits") != NULL &&
             ((r = field_u64(rc, proc, &l, "ring_waits", &p->ring_waits)) < 0 ||
              (r = field_u64(rc, proc, &l, "ring_wait_ns", &p->ring_wait_ns)) < 0)) ||
            (r = field_strdup(rc, proc, &l, "exe", true, &p->exe)) < 0 ||
            (ap_json_get(proc, "run_id") != NULL &&
             (r = field_strdup(rc, proc, &l, "run_id", true, &p->run_id)) < 0) ||
            (ap_json_get(proc, "foreign_malloc") != NULL &&
             (r = field_strdup(rc, proc, &l, "foreign_malloc", false, &p->foreign_malloc)) < 0) ||
            (r = get_array(rc, proc, &l, "command", &cmd, &n)) < 0 ||
            (r = alloc_table(rc, (void **)&p->command, n, sizeof(*p->command))) < 0)
                return r;
        for (uint32_t i = 0; i < n; i++) {
                struct loc li = at_index(&lc, i);

                if ((r = as_strdup(rc, ap_json_at(cmd, i), &li, false, &p->command[i])) < 0)
                        return r;
                p->ncommand++;
        }
        return 0;
}

static int read_strings(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "strings");
        const struct ap_json *a = NULL;
        uint32_t n = 0;
        int r;

        if ((r = get_array(rc, root, NULL, "strings", &a, &n)) < 0 ||
            (r = alloc_table(rc, (void **)&p->strings, n, sizeof(*p->strings))) < 0)
                return r;
        for (uint32_t i = 0; i < n; i++) {
                struct loc li = at_index(&l, i);

                if ((r = as_strdup(rc, ap_json_at(a, i), &li, false, &p->strings[i])) < 0)
                        return r;
                p->nstrings++;
        }
        return 0;
}

static int read_modules(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "modules");
        const struct ap_json *a = NULL;
        uint32_t n = 0;
        int r;

        if ((r = get_array(rc, root, NULL, "modules", &a, &n)) < 0 ||
            (r = alloc_table(rc, (void **)&p->modules, n, sizeof(*p->modules))) < 0)
                return r;
        p->nmodules = n; /* plain data: a partly filled table is still safe to free */
        for (uint32_t i = 0; i < n; i++) {
                struct ap_pmodule *m = &p->modules[i];
                const struct ap_json *o = ap_json_at(a, i);
                struct loc li = at_index(&l, i);

                if (!ap_json_is(o, AP_JSON_OBJECT))
                        return expect(rc, o, &li, "an object");
                if ((r = field_index(rc, o, &li, "path", p->nstrings, "strings", &m->path)) < 0 ||
                    (r = field_index(rc, o, &li, "build_id", p->nstrings, "strings",
                                     &m->build_id)) < 0 ||
                    (r = fields_u64(rc, o, &li, m, module_fields, ARRAY_SIZE(module_fields))) < 0)
                        return r;
        }
        return 0;
}

static int read_frames(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "frames");
        const struct ap_json *a = NULL;
        uint32_t n = 0;
        int r;

        if ((r = get_array(rc, root, NULL, "frames", &a, &n)) < 0 ||
            (r = alloc_table(rc, (void **)&p->frames, n, sizeof(*p->frames))) < 0)
                return r;
        p->nframes = n;
        for (uint32_t i = 0; i < n; i++) {
                struct ap_pframe *f = &p->frames[i];
                const struct ap_json *t = ap_json_at(a, i);
                struct loc li = at_index(&l, i), l4 = at_index(&li, 4), l5 = at_index(&li, 5);
                uint64_t line = 0;

                if ((r = tuple(rc, t, &li, 6, "[function, file, line, module, address, inlined]")) <
                            0 ||
                    (r = tuple_index(rc, t, &li, 0, p->nstrings, "strings", &f->function)) < 0 ||
                    (r = tuple_index(rc, t, &li, 1, p->nstrings, "strings", &f->file)) < 0 ||
                    (r = tuple_u64(rc, t, &li, 2, &line)) < 0 ||
                    (r = tuple_index(rc, t, &li, 3, p->nmodules, "modules", &f->module)) < 0 ||
                    (r = as_addr(rc, ap_json_at(t, 4), &l4, &f->address)) < 0)
                        return r;
                if (line > UINT32_MAX) {
                        struct loc l2 = at_index(&li, 2);

                        return fail(rc, -EINVAL, "%s: line number out of range", loc_text(&l2).s);
                }
                f->line = (uint32_t)line;
                if ((r = as_bool(rc, ap_json_at(t, 5), &l5, &f->inlined)) < 0)
                        return r;
        }
        return 0;
}

/* Format 3's reference into a table: an index < n, or -1 for AP_NONE. */
static int as_ref(struct rctx *rc, const struct ap_json *v, const struct loc *l, uint32_t n,
                  const char *table, uint32_t *ret)
{
        int64_t x;

        if (!ap_json_is(v, AP_JSON_INTEGER))
                return expect(rc, v, l, "an index or -1");
        x = v->i;
        if (x == -1) {
                *ret = AP_NONE;
                return 0;
        }
        if (x < 0 || x >= n)
                return fail(rc, -EINVAL, "%s: index %lld out of range (%u %s)", loc_text(l).s,
                            (long long)x, n, table);
        *ret = (uint32_t)x;
        return 0;
}

/* Any int64, as the uint64 with the same bits: a step to add modulo 2^64. */
static int as_wrapped(struct rctx *rc, const struct ap_json *v, const struct loc *l, uint64_t *ret)
{
        int64_t x = 0;
        int r = as_int(rc, v, l, INT64_MIN, INT64_MAX, &x);

        if (r >= 0)
                *ret = (uint64_t)x;
        return r;
}

static int decoded_too_large(struct rctx *rc, const struct loc *l, const char *what, uint64_t v)
{
        return fail(rc, -EINVAL, "%s: %s decodes to %" PRIu64 ", more than %" PRId64, loc_text(l).s,
                    what, v, INT64_MAX);
}

/* Member `key` of a column-wise table (obj, at parent): an array of exactly n elements,
 * as many as the table's column `first` has. */
static int get_column(struct rctx *rc, const struct ap_json *obj, const struct loc *parent,
                      const char *key, const char *first, uint32_t n, const struct ap_json **ret)
{
        struct loc l = at_key(parent, key);
        uint32_t len = 0;
        int r = get_array(rc, obj, parent, key, ret, &len);

        if (r < 0)
                return r;
        if (len != n)
                return fail(rc, -EINVAL, "%s: %u elements, but %s has %u", loc_text(&l).s, len,
                            first, n);
        return 0;
}

/* Format version 3: {"function":[...], ..., "inlined":[...]} (see the top of the file). */
static int read_frames_v3(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "frames"), lc[FC_COUNT];
        const struct ap_json *o = NULL, *col[FC_COUNT];
        uint64_t line = 0, address = 0;
        uint32_t n = 0;
        int r;

        if ((r = get_object(rc, root, NULL, "frames", &o)) < 0 ||
            (r = get_array(rc, o, &l, frame_columns[0], &col[0], &n)) < 0)
                return r;
        for (unsigned c = 0; c < FC_COUNT; c++) {
                lc[c] = at_key(&l, frame_columns[c]);
                if (c > 0 && (r = get_column(rc, o, &l, frame_columns[c], "frames.function", n,
                                             &col[c])) < 0)
                        return r;
        }
        if ((r = alloc_table(rc, (void **)&p->frames, n, sizeof(*p->frames))) < 0)
                return r;
        p->nframes = n;
        for (uint32_t i = 0; i < n; i++) {
                struct ap_pframe *f = &p->frames[i];
                struct loc li[FC_COUNT];
                uint64_t line_step = 0, address_step = 0;
                int64_t inlined = 0;

                for (unsigned c = 0; c < FC_COUNT; c++)
                        li[c] = at_index(&lc[c], i);
#define CELL(c) ap_json_at(col[c], i), &li[c]
                if ((r = as_ref(rc, CELL(FC_FUNCTION), p->nstrings, "strings", &f->function)) < 0 ||
                    (r = as_ref(rc, CELL(FC_FILE), p->nstrings, "strings", &f->file)) < 0 ||
                    (r = as_wrapped(rc, CELL(FC_LINE), &line_step)) < 0 ||
                    (r = as_ref(rc, CELL(FC_MODULE), p->nmodules, "modules", &f->module)) < 0 ||
                    (r = as_wrapped(rc, CELL(FC_ADDRESS), &address_step)) < 0 ||
                    (r = as_int(rc, CELL(FC_INLINED), 0, 1, &inlined)) < 0)
                        return r;
#undef CELL
                /* Modulo 2^64, a step below line 0 lands far above UINT32_MAX. */
                line += line_step;
                if (line > UINT32_MAX)
                        return fail(rc, -EINVAL, "%s: line number %lld out of range",
                                    loc_text(&li[FC_LINE]).s, (long long)(int64_t)line);
                f->line = (uint32_t)line;
                address += address_step;
                f->address = address;
                f->inlined = inlined;
        }
        return 0;
}

/* The first n elements of fa (at l), indexes into "frames", into out. */
static int read_frame_indexes(struct rctx *rc, const struct ap_profile *p, const struct ap_json *fa,
                              const struct loc *l, uint32_t n, uint32_t *out)
{
        for (uint32_t j = 0; j < n; j++) {
                const struct ap_json *v = ap_json_at(fa, j);

                if (ap_json_is(v, AP_JSON_NULL)) {
                        struct loc lj = at_index(l, j);

                        return expect(rc, v, &lj, "a frame index");
                }
                int r = tuple_index(rc, fa, l, j, p->nframes, "frames", &out[j]);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* At most this many frames in all the sites' stacks together: shared frames make a small
 * file stand for long stacks, and a hostile one must not make us allocate without end. */
#define MAX_SITE_FRAMES_TOTAL (1ull << 26)

/* For formats 2 and 3, whose sites keep `shared` frames of the previous site's stack and
 * add those of the array fa: checks that fa is an array (else an error at *lf), counts
 * its frames and the shared ones against the limit on all stacks (*total; else an error
 * at *lsite) and allocates s->frames for them.  *nnew: fa's length. */
static int alloc_site_frames(struct rctx *rc, struct ap_psite *s, const struct ap_json *fa,
                             const struct loc *lf, const struct loc *lsite, uint32_t shared,
                             uint64_t *total, size_t *nnew)
{
        int r;

        if (!ap_json_is(fa, AP_JSON_ARRAY))
                return expect(rc, fa, lf, "an array");
        *nnew = fa->n;
        *total += *nnew + (uint64_t)shared;
        if (*total > MAX_SITE_FRAMES_TOTAL)
                return fail(rc, -EINVAL, "%s: more than %llu frames in all stacks",
                            loc_text(lsite).s, (unsigned long long)MAX_SITE_FRAMES_TOTAL);
        uint32_t nf = (uint32_t)(*nnew + (uint64_t)shared);
        if ((r = alloc_table(rc, (void **)&s->frames, nf, sizeof(*s->frames))) < 0)
                return r;
        s->nframes = nf;
        return 0;
}

/* Format version 3: one array per counter, then "popped" and "stacks" (see the top of
 * the file).  The stack of site i is decoded against that of site i - 1. */
static int read_sites_v3(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        enum { NC = ARRAY_SIZE(site_columns) };
        struct loc l = at_key(NULL, "sites"), lpo = at_key(&l, "popped");
        struct loc lst = at_key(&l, "stacks"), lc[NC];
        const struct ap_json *o = NULL, *col[NC], *popped = NULL, *stacks = NULL;
        uint64_t total = 0;
        uint32_t n = 0;
        int r;

        if ((r = get_object(rc, root, NULL, "sites", &o)) < 0 ||
            (r = get_array(rc, o, &l, "stacks", &stacks, &n)) < 0 ||
            (r = get_column(rc, o, &l, "popped", "sites.stacks", n, &popped)) < 0)
                return r;
        for (size_t c = 0; c < NC; c++) {
                lc[c] = at_key(&l, site_columns[c].name);
                if ((r = get_column(rc, o, &l, site_columns[c].name, "sites.stacks", n, &col[c])) <
                    0)
                        return r;
        }
        if ((r = alloc_table(rc, (void **)&p->sites, n, sizeof(*p->sites))) < 0)
                return r;
        p->nsites = n; /* zeroed sites (frames NULL) are safe to free */
        for (uint32_t i = 0; i < n; i++) {
                struct ap_psite *s = &p->sites[i];
                const struct ap_psite *prev = i ? &p->sites[i - 1] : NULL;
                struct loc lpoi = at_index(&lpo, i), lsti = at_index(&lst, i);
                const struct ap_json *fa = ap_json_at(stacks, i);
                uint32_t nprev = prev ? prev->nframes : 0, nshared;
                int64_t npopped = 0, frame = -1;

                for (size_t c = 0; c < NC; c++) {
                        const struct site_column *sc = &site_columns[c];
                        struct loc lci = at_index(&lc[c], i);
                        const struct ap_json *v = ap_json_at(col[c], i);
                        uint64_t x = 0;

                        /* A raw counter must be in range as it is; a coded one once decoded. */
                        if ((r = sc->coding == CODE_RAW ? as_u64(rc, v, &lci, &x)
                                                        : as_wrapped(rc, v, &lci, &x)) < 0)
                                return r;
                        if (!site_decode(s, sc, x))
                                return decoded_too_large(rc, &lci, sc->field, *site_counter(s, sc));
                }

                /* No more than the previous stack has; nothing for the first site. */
                if ((r = as_int(rc, ap_json_at(popped, i), &lpoi, 0, nprev, &npopped)) < 0)
                        return r;
                nshared = nprev - (uint32_t)npopped;
                size_t nnew;
                if ((r = alloc_site_frames(rc, s, fa, &lsti, &lsti, nshared, &total, &nnew)) < 0)
                        return r;
                if (nshared)
                        memcpy(s->frames + nnew, prev->frames + npopped,
                               sizeof(*s->frames) * (size_t)nshared);
                /* The new frames come outermost first, each a step from the one outside;
                 * the first steps from the frame it replaces (the outermost popped one) if
                 * any, else from the innermost shared one, else from -1. */
                if (npopped)
                        frame = prev->frames[npopped - 1];
                else if (nshared)
                        frame = s->frames[nnew];
                for (size_t k = 0; k < nnew; k++) {
                        struct loc lk = at_index(&lsti, k);
                        int64_t step = 0;

                        if ((r = as_int(rc, ap_json_at(fa, k), &lk, INT64_MIN, INT64_MAX,
                                        &step)) < 0)
                                return r;
                        if (__builtin_add_overflow(frame, step, &frame))
                                return fail(rc, -EINVAL, "%s: frame index out of range (%u frames)",
                                            loc_text(&lk).s, p->nframes);
                        if (frame < 0 || frame >= p->nframes)
                                return fail(rc, -EINVAL,
                                            "%s: frame index %lld out of range (%u frames)",
                                            loc_text(&lk).s, (long long)frame, p->nframes);
                        s->frames[nnew - 1 - k] = (uint32_t)frame;
                }
        }
        /* Optional: the indexes of the sites whose stack was cut at AP_MAX_FRAMES. */
        const struct ap_json *cut = ap_json_get(o, "truncated");
        if (cut != NULL) {
                struct loc lt = at_key(&l, "truncated");
                uint32_t ncut = 0;
                if ((r = get_array(rc, o, &l, "truncated", &cut, &ncut)) < 0)
                        return r;
                for (uint32_t k = 0; k < ncut; k++) {
                        struct loc lk = at_index(&lt, k);
                        int64_t i = 0;
                        if (n == 0)
                                return fail(rc, -EINVAL, "%s: no sites to refer to",
                                            loc_text(&lk).s);
                        if ((r = as_int(rc, ap_json_at(cut, k), &lk, 0, (int64_t)n - 1, &i)) < 0)
                                return r;
                        p->sites[i].truncated = true;
                }
        }
        return 0;
}

/* Format version 2: [counters..., shared, [F...]] per site (see the top of this file). */
static int read_sites_v2(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "sites");
        const struct ap_json *a = NULL;
        uint32_t n = 0;
        uint64_t total = 0;
        int r;
        const size_t nc = ARRAY_SIZE(site_fields);

        if ((r = get_array(rc, root, NULL, "sites", &a, &n)) < 0 ||
            (r = alloc_table(rc, (void **)&p->sites, n, sizeof(*p->sites))) < 0)
                return r;
        p->nsites = n; /* zeroed sites (frames NULL) are safe to free */
        for (uint32_t i = 0; i < n; i++) {
                struct ap_psite *s = &p->sites[i];
                const struct ap_psite *prev = i ? &p->sites[i - 1] : NULL;
                const struct ap_json *t = ap_json_at(a, i), *fa;
                struct loc li = at_index(&l, i), ls = at_index(&li, nc), lf = at_index(&li, nc + 1);
                int64_t shared = 0;

                if ((r = tuple(rc, t, &li, nc + 2,
                               "[allocations, ..., reallocs, shared, [frames]]")) < 0)
                        return r;
                for (size_t k = 0; k < nc; k++)
                        if ((r = tuple_u64(rc, t, &li, k, u64_at(s, &site_fields[k]))) < 0)
                                return r;
                if ((r = as_int(rc, ap_json_at(t, nc), &ls, 0, prev ? prev->nframes : 0,
                                &shared)) < 0)
                        return r;
                fa = ap_json_at(t, nc + 1);
                size_t nnew;
                if ((r = alloc_site_frames(rc, s, fa, &lf, &li, (uint32_t)shared, &total,
                                           &nnew)) < 0)
                        return r;
                if ((r = read_frame_indexes(rc, p, fa, &lf, (uint32_t)nnew, s->frames)) < 0)
                        return r;
                if (shared)
                        memcpy(s->frames + nnew, prev->frames + prev->nframes - shared,
                               sizeof(*s->frames) * (size_t)shared);
        }
        return 0;
}

/* Format version 1: {"allocations": ..., "frames": [F...]} per site. */
static int read_sites_v1(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "sites");
        const struct ap_json *a = NULL;
        uint32_t n = 0;
        int r;

        if ((r = get_array(rc, root, NULL, "sites", &a, &n)) < 0 ||
            (r = alloc_table(rc, (void **)&p->sites, n, sizeof(*p->sites))) < 0)
                return r;
        p->nsites = n; /* zeroed sites (frames NULL) are safe to free */
        for (uint32_t i = 0; i < n; i++) {
                struct ap_psite *s = &p->sites[i];
                const struct ap_json *o = ap_json_at(a, i), *fa = NULL;
                struct loc li = at_index(&l, i), lf = at_key(&li, "frames");
                uint32_t nf = 0;

                if (!ap_json_is(o, AP_JSON_OBJECT))
                        return expect(rc, o, &li, "an object");
                if ((r = fields_u64(rc, o, &li, s, site_fields, ARRAY_SIZE(site_fields))) < 0 ||
                    (r = get_array(rc, o, &li, "frames", &fa, &nf)) < 0 ||
                    (r = alloc_table(rc, (void **)&s->frames, nf, sizeof(*s->frames))) < 0)
                        return r;
                s->nframes = nf;
                if ((r = read_frame_indexes(rc, p, fa, &lf, nf, s->frames)) < 0)
                        return r;
        }
        return 0;
}

static int bound_error(struct rctx *rc, const struct loc *l, const void *base,
                       const struct bound *b)
{
        return fail(rc, -EINVAL, "%s: %s (%" PRIu64 ") is more than %s (%" PRIu64 ")",
                    loc_text(l).s, b->name, bound_value(base, b->offset), b->limit,
                    bound_value(base, b->limit_offset));
}

static int check_totals(struct rctx *rc, const struct ap_profile *p)
{
        const struct bound *b = broken_bound(p, totals_bounds, ARRAY_SIZE(totals_bounds));
        struct loc l = at_key(NULL, "totals"), lb;

        if (b == NULL)
                return 0;
        lb = at_key(&l, b->name);
        return bound_error(rc, &lb, p, b);
}

/* Each site's counters against one another, once all are read.  The error names where
 * the counter is in the file: a column of format 3 (the one frees are coded in, for
 * frees), an element of a row of format 2, a key of format 1. */
static int check_sites(struct rctx *rc, const struct ap_profile *p, int64_t version)
{
        struct loc l = at_key(NULL, "sites"), lt, lc;

        for (uint32_t i = 0; i < p->nsites; i++) {
                const struct ap_psite *s = &p->sites[i];
                const struct bound *b = broken_bound(s, site_bounds, ARRAY_SIZE(site_bounds));
                size_t k = 0;

                if (b == NULL)
                        continue;
                if (version >= 3) {
                        while (strcmp(site_columns[k].field, b->name) != 0)
                                k++;
                        lt = at_key(&l, site_columns[k].name);
                        lc = at_index(&lt, i);
                } else if (version == 2) {
                        while (strcmp(site_fields[k].name, b->name) != 0)
                                k++;
                        lt = at_index(&l, i);
                        lc = at_index(&lt, k);
                } else {
                        lt = at_index(&l, i);
                        lc = at_key(&lt, b->name);
                }
                return bound_error(rc, &lc, s, b);
        }
        return 0;
}

static int read_histogram(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc l = at_key(NULL, "histogram");
        bool seen[AP_HIST_BUCKETS] = {false};
        const struct ap_json *a = NULL;
        uint32_t n = 0;
        int r;

        if ((r = get_array(rc, root, NULL, "histogram", &a, &n)) < 0)
                return r;
        for (uint32_t i = 0; i < n; i++) {
                const struct ap_json *t = ap_json_at(a, i);
                struct loc li = at_index(&l, i), l0 = at_index(&li, 0);
                int64_t b = 0;

                if ((r = tuple(rc, t, &li, 3, "[bucket, count, bytes]")) < 0 ||
                    (r = as_int(rc, ap_json_at(t, 0), &l0, 0, AP_HIST_BUCKETS - 1, &b)) < 0)
                        return r;
                if (seen[b])
                        return fail(rc, -EINVAL, "%s: bucket %d appears twice", loc_text(&l0).s, (int)b);
                seen[b] = true;
                if ((r = tuple_u64(rc, t, &li, 1, &p->hist_count[b])) < 0 ||
                    (r = tuple_u64(rc, t, &li, 2, &p->hist_bytes[b])) < 0)
                        return r;
        }
        return 0;
}

/* Rows of [t_ns, live_bytes, allocations]; from format 3 on, each the step from the row
 * before (the first from zeros), added modulo 2^64. */
static int read_timeline(struct rctx *rc, struct ap_profile *p, const struct ap_json *root,
                         bool steps)
{
        static const char *const names[] = {"t_ns", "live_bytes", "allocations"};
        struct loc l = at_key(NULL, "timeline");
        uint64_t sum[3] = {0, 0, 0};
        const struct ap_json *a = NULL;
        uint32_t n = 0;
        int r;

        if ((r = get_array(rc, root, NULL, "timeline", &a, &n)) < 0 ||
            (r = alloc_table(rc, (void **)&p->timeline, n, sizeof(*p->timeline))) < 0)
                return r;
        p->ntimeline = n;
        for (uint32_t i = 0; i < n; i++) {
                struct ap_ptimepoint *tp = &p->timeline[i];
                uint64_t *const fields[] = {&tp->t_ns, &tp->live_bytes, &tp->allocations};
                const struct ap_json *t = ap_json_at(a, i);
                struct loc li = at_index(&l, i);

                if ((r = tuple(rc, t, &li, 3, "[t_ns, live_bytes, allocations]")) < 0)
                        return r;
                for (size_t k = 0; k < 3; k++) {
                        struct loc lk = at_index(&li, k);
                        uint64_t step = 0;

                        if (!steps) {
                                if ((r = tuple_u64(rc, t, &li, k, fields[k])) < 0)
                                        return r;
                                continue;
                        }
                        if ((r = as_wrapped(rc, ap_json_at(t, k), &lk, &step)) < 0)
                                return r;
                        sum[k] += step;
                        if (sum[k] > (uint64_t)INT64_MAX)
                                return decoded_too_large(rc, &lk, names[k], sum[k]);
                        *fields[k] = sum[k];
                }
        }
        return 0;
}

static int read_document(struct rctx *rc, struct ap_profile *p, const struct ap_json *root)
{
        struct loc lv = at_key(NULL, "format_version"), lt = at_key(NULL, "tool");
        struct loc ltot = at_key(NULL, "totals");
        const struct ap_json *v = NULL, *o = NULL;
        int64_t version = 0;
        int r;

        if (!ap_json_is(root, AP_JSON_OBJECT))
                return fail(rc, -EINVAL, "not an allocprof profile (top level is %s)",
                            type_name(root));
        v = ap_json_get(root, "format");
        if (!ap_json_is(v, AP_JSON_STRING) || strcmp(v->s, FORMAT_NAME) != 0)
                return fail(rc, -EINVAL, "not an allocprof profile (\"format\" is not \"%s\")",
                            FORMAT_NAME);
        /* Checked before anything else: a newer file must say "upgrade", not "corrupt". */
        if ((r = member(rc, root, NULL, "format_version", &v)) < 0 ||
            (r = as_int(rc, v, &lv, INT64_MIN, INT64_MAX, &version)) < 0)
                return r;
        if (version < AP_PROFILE_OLDEST_VERSION || version > AP_PROFILE_SCHEMA_VERSION)
                return fail(rc, -EPROTONOSUPPORT,
                            "profile format version %lld is not supported (this allocprof "
                            "reads versions %d to %d)",
                            (long long)version, AP_PROFILE_OLDEST_VERSION,
                            AP_PROFILE_SCHEMA_VERSION);

        /* Tables in dependency order: each one is checked against those before it. */
        if ((r = get_object(rc, root, NULL, "tool", &o)) < 0 ||
            (r = field_strdup(rc, o, &lt, "version", true, &p->tool_version)) < 0 ||
            (r = read_live(rc, p, root)) < 0 || (r = read_mode(rc, p, root)) < 0 ||
            (r = read_sample_interval(rc, p, root)) < 0 ||
            (r = get_object(rc, root, NULL, "totals", &o)) < 0 ||
            (r = fields_u64(rc, o, &ltot, p, totals_fields, ARRAY_SIZE(totals_fields))) < 0 ||
            (r = optional_u64(rc, o, &ltot, "untracked_samples", &p->totals.untracked_samples)) <
                    0 ||
            (r = optional_u64(rc, o, &ltot, "unprofiled_children",
                              &p->totals.unprofiled_children)) < 0 ||
            (r = optional_u64(rc, o, &ltot, "dropped_no_ring", &p->totals.dropped_no_ring)) < 0 ||
            (r = check_totals(rc, p)) < 0 || (r = read_process(rc, p, root)) < 0 ||
            (r = read_strings(rc, p, root)) < 0 || (r = read_modules(rc, p, root)) < 0)
                return r;
        if (version >= 3)
                r = read_frames_v3(rc, p, root);
        else
                r = read_frames(rc, p, root);
        if (r < 0)
                return r;
        if (version >= 3)
                r = read_sites_v3(rc, p, root);
        else if (version == 2)
                r = read_sites_v2(rc, p, root);
        else
                r = read_sites_v1(rc, p, root);
        if (r < 0 || (r = check_sites(rc, p, version)) < 0 ||
            (r = read_histogram(rc, p, root)) < 0 ||
            (r = read_timeline(rc, p, root, version >= 3)) < 0)
                return r;
        return 0;
}

/* Hands buf (malloc'd, len bytes) to the caller with a NUL after it, or frees it. */
static int nul_terminated(unsigned char *buf, size_t len, char **ret, size_t *ret_len)
{
        unsigned char *n = realloc(buf, len + 1);
        if (n == NULL) {
                free(buf);
                return -ENOMEM;
        }
        n[len] = '\0';
        *ret = (char *)n;
        *ret_len = len;
        return 0;
}

/* Reads the whole file; gzip data (what ap_profile_write makes) is inflated, anything
 * else (plain JSON, as profiles were first written) is taken as it is.  Either way at
 * most MAX_FILE_SIZE bytes of text (-EFBIG beyond: a decompression bomb stops there).
 * Returns 0 with *ret (malloc'd, with a NUL after its *ret_len bytes, as ap_json_parse
 * wants), or -errno (-EBADMSG: damaged gzip). */
static int read_text(int fd, char **ret, size_t *ret_len)
{
        size_t cap = 1 << 16, len = 0;
        unsigned char *raw = malloc(cap);
        if (raw == NULL)
                return -ENOMEM;
        for (;;) {
                if (len == cap) {
                        if (cap >= MAX_FILE_SIZE) {
                                free(raw);
                                return -EFBIG;
                        }
                        unsigned char *n = realloc(raw, cap * 2);
                        if (n == NULL) {
                                free(raw);
                                return -ENOMEM;
                        }
                        raw = n;
                        cap *= 2;
                }
                ssize_t n = read(fd, raw + len, cap - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int e = errno;
                        free(raw);
                        return -e;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if (len < 2 || raw[0] != 0x1f || raw[1] != 0x8b)
                return nul_terminated(raw, len, ret, ret_len);

        z_stream z = {0};
        if (inflateInit2(&z, 15 + 16) != Z_OK) {
                free(raw);
                return -ENOMEM;
        }
        /* About what a profile inflates to, but never more than the most that is read. */
        size_t ocap = len * 8 > (1u << 20) ? len * 8 : (1u << 20), olen = 0;
        if (ocap > MAX_FILE_SIZE)
                ocap = MAX_FILE_SIZE;
        unsigned char *out = malloc(ocap);
        int r = out ? 0 : -ENOMEM;
        z.next_in = raw;
        z.avail_in = (uInt)len;
        while (r == 0) {
                if (olen == ocap) {
                        if (ocap >= MAX_FILE_SIZE) {
                                r = -EFBIG;
                                break;
                        }
                        size_t ncap = ocap * 2 > MAX_FILE_SIZE ? MAX_FILE_SIZE : ocap * 2;
                        unsigned char *n = realloc(out, ncap);
                        if (n == NULL) {
                                r = -ENOMEM;
                                break;
                        }
                        out = n;
                        ocap = ncap;
                }
                z.next_out = out + olen;
                z.avail_out = (uInt)(ocap - olen);
                int zr = inflate(&z, Z_NO_FLUSH);
                olen = ocap - z.avail_out;
                if (zr == Z_STREAM_END)
                        break;
                if (zr != Z_OK && !(zr == Z_BUF_ERROR && z.avail_out == 0))
                        r = zr == Z_MEM_ERROR ? -ENOMEM : -EBADMSG;
                else if (zr == Z_OK && z.avail_in == 0 && z.avail_out > 0)
                        r = -EBADMSG; /* input ended inside the stream */
        }
        inflateEnd(&z);
        free(raw);
        if (r < 0) {
                free(out);
                return r;
        }
        return nul_terminated(out, olen, ret, ret_len);
}

/* A named FIFO (fd, opened without waiting) has no writer until one opens it, and reads
 * as empty until then: waits up to 10 s for data or for a writer's end.  A pipe
 * (`report <(zcat FILE)`) has its writer already, and anything else is read at once.
 * Returns 0, -ETIMEDOUT or -errno. */
static int wait_for_writer(int fd, const struct stat *st)
{
        struct statfs sfs;
        if (!S_ISFIFO(st->st_mode) || (fstatfs(fd, &sfs) == 0 && sfs.f_type == PIPEFS_MAGIC))
                return 0;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        const uint64_t deadline = ap_clock_mono_ns() + FIFO_WAIT_MS * 1000000ull;
        for (;;) {
                uint64_t now = ap_clock_mono_ns();
                int n = poll(&pfd, 1, now < deadline ? (int)((deadline - now) / 1000000) : 0);
                if (n > 0)
                        return 0;
                if (n == 0)
                        return -ETIMEDOUT;
                if (errno != EINTR)
                        return -errno;
        }
}

int ap_profile_read(const char *path, struct ap_profile **ret, char **err)
{
        struct rctx rc = {0};
        struct ap_profile *p = NULL;
        struct ap_json_error jerr;
        struct ap_json_doc *doc = NULL;
        char *text = NULL;
        size_t len = 0;
        struct stat st;
        int fd, r;

        if (err)
                *err = NULL;
        if (!path || !ret)
                return -EINVAL;
        /* Opening a FIFO waits for a writer, without end if none comes: open it without
         * waiting, and wait for the writer below, as long as ap_profile_write waits for a
         * reader. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 || fstat(fd, &st) < 0 || fcntl(fd, F_SETFL, 0) < 0) {
                r = -errno;
                fail(&rc, r, "%s", strerror(-r));
                goto out;
        }
        r = wait_for_writer(fd, &st);
        if (r < 0) {
                fail(&rc, r, r == -ETIMEDOUT ? "a FIFO that nothing was written to in 10 s" : "%s",
                     strerror(-r));
                goto out;
        }
        if (S_ISDIR(st.st_mode)) {
                r = fail(&rc, -EISDIR, "is a directory");
                goto out;
        }
        if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > MAX_FILE_SIZE) {
                r = fail(&rc, -EFBIG, "file too large for a profile (%lld bytes)",
                         (long long)st.st_size);
                goto out;
        }
        if (S_ISREG(st.st_mode) && st.st_size == 0) {
                r = fail(&rc, -EINVAL, "empty file");
                goto out;
        }
        r = read_text(fd, &text, &len);
        if (r == -EFBIG) {
                fail(&rc, r, "larger than %llu MiB uncompressed: not a profile",
                     (unsigned long long)(MAX_FILE_SIZE >> 20));
                goto out;
        }
        if (r == -EBADMSG) {
                fail(&rc, r, "damaged gzip data (truncated or corrupt file)");
                goto out;
        }
        if (r < 0) {
                fail(&rc, r, "%s", strerror(-r));
                goto out;
        }
        if (len == 0) { /* not a regular file (/dev/null, a pipe), or a gzip of nothing */
                r = fail(&rc, -EINVAL, "empty file");
                goto out;
        }
        /* Duplicate keys are rejected: a hostile file must not show one value to a human
         * reading it and another to us. */
        r = ap_json_parse(text, len, &doc, &jerr);
        if (r == -EINVAL) {
                fail(&rc, r, "not valid JSON (line %d, column %d): %s", jerr.line, jerr.column,
                     jerr.text);
                goto out;
        }
        if (r < 0) {
                oom(&rc);
                goto out;
        }
        p = ap_profile_new();
        if (!p) {
                r = oom(&rc);
                goto out;
        }
        r = read_document(&rc, p, ap_json_root(doc));
        if (r < 0)
                goto out;
        *ret = p;
        p = NULL;
out:
        if (fd >= 0)
                close(fd);
        ap_json_free(doc);
        free(text);
        ap_profile_free(p);
        if (r < 0 && err)
                *err = rc.err ? rc.err : strdup(strerror(-r));
        else
                free(rc.err);
        return r;
}
