/* Renders a profile: the text report (`allocprof report`), the versioned JSON report
 * (`--json`, schema in USAGE.md) and the few lines `allocprof run` prints at exit.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "report.h"
#include "allocprof/wire.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define JSON_REPORT_SCHEMA_VERSION 1

/* Lines of stack shown per site in the text report; deeper stacks end with "... N more". */
#define TEXT_MAX_FROWS 8
#define TEXT_FUNCTION_COLUMN 48 /* longer names are not aligned with the others */
#define TEXT_LOCATION_COLUMN 40

/* Hint thresholds.  They are deliberately conservative: a hint should point at something
 * worth an engineer's hour, not restate every number in the report. */
#define HINT_SMALL_AVG 64         /* bytes: "small" for a pool/arena hint */
#define HINT_POOL_MIN_ALLOCS 1000 /* fewer calls than this are not worth a pool */
#define HINT_TEMP_FRACTION 0.5    /* share freed before the thread's next allocation */
#define HINT_FREED_FRACTION 0.9   /* ... or this share freed, with */
#define HINT_LIVE_SHARE 0.01      /* at most this share of the bytes live at once */
#define HINT_REALLOC_MIN 100      /* reallocs at one site: a growth loop */
#define HINT_WAIT_MIN_NS 1000000  /* waits for ring space worth a hint: at least 1 ms, */
#define HINT_WAIT_SHARE 0.01      /* ... and this share of the run */
#define HINT_LEAK_BYTES (1 << 20) /* a leak this big is always worth a look */
#define HINT_LEAK_PEAK_SHARE 0.10 /* ... as is one holding 10% of the peak heap */
#define HINT_LEAK_MIN_BYTES 65536 /* but not if it is tiny in absolute terms */
#define HINT_CHURN_MIN_ALLOCS 10000
#define HINT_CHURN_RATIO 100 /* allocations per block of peak heap */
#define HINT_MAX_PER_KIND 3

/* ------------------------------------------------------------------------------------ */
/* Profile accessors.  A profile from ap_profile_read() is validated, but one built in
 * memory is not, so every index is checked again here: rendering must never crash. */

static const char *pstr(const struct ap_profile *p, uint32_t i)
{
        return i < p->nstrings ? p->strings[i] : NULL;
}

static const struct ap_pframe *pframe(const struct ap_profile *p, uint32_t i)
{
        return i < p->nframes ? &p->frames[i] : NULL;
}

static const struct ap_pmodule *pmodule(const struct ap_profile *p, uint32_t i)
{
        return i < p->nmodules ? &p->modules[i] : NULL;
}

static const char *module_path(const struct ap_profile *p, uint32_t i)
{
        const struct ap_pmodule *m = pmodule(p, i);

        return m ? pstr(p, m->path) : NULL;
}

static bool is_sampled(const struct ap_profile *p)
{
        return p->mode && strcmp(p->mode, "sampled") == 0;
}

/* Whether the figures are estimates: sampled at an interval above 1 byte.  At 1 byte (and
 * only that one, not merged with others) every byte is a sample point: every allocation
 * is recorded with its own size, as in full mode, and the figures are exact. */
static bool is_estimate(const struct ap_profile *p)
{
        bool every_byte = p->sample_interval == 1 &&
                          (p->sample_interval_min == 0 ||
                           (p->sample_interval_min == 1 && p->sample_interval_max == 1));
        return is_sampled(p) && !every_byte;
}

static double share(uint64_t part, uint64_t whole)
{
        return whole ? 100.0 * (double)part / (double)whole : 0.0;
}

/* ------------------------------------------------------------------------------------ */
/* Ordering of sites */

static int cmp_u64_desc(uint64_t a, uint64_t b)
{
        return a > b ? -1 : a < b ? 1 : 0;
}

static int cmp_u64_asc(uint64_t a, uint64_t b)
{
        return (a > b) - (a < b);
}

static int cmp_str(const char *a, const char *b)
{
        /* Unknown sorts after known, so stacks with symbols come first among equals. */
        if (!a || !b)
                return (a == NULL) - (b == NULL);
        return strcmp(a, b);
}

/* Sites that tie on their counters are ordered by their stacks' text: frame by frame from
 * the innermost, each by function, file, line, module path and address, a missing string
 * after every present one.  Most sites tie (on a compiler's profile 10,400 of 11,400 share
 * their bytes and calls with another), and comparing their stacks' strings on each
 * comparison of each of the report's three sorts was a sixth of its profile's samples,
 * cache misses more than instructions.  So the strings and then the frames are ranked once
 * (equal text, equal rank), and stacks compare their frames' ranks.  (The sites are no
 * longer sorted whole either: see struct site_order.) */
struct rank_ctx {
        const struct ap_profile *p;
        const uint32_t *srank; /* per string; a missing string ranks UINT32_MAX */
};

static int cmp_string_idx(const void *va, const void *vb, void *vctx)
{
        const struct rank_ctx *ctx = vctx;
        return cmp_str(ctx->p->strings[*(const uint32_t *)va],
                       ctx->p->strings[*(const uint32_t *)vb]);
}

static uint32_t str_rank(const struct rank_ctx *ctx, uint32_t i)
{
        return i < ctx->p->nstrings ? ctx->srank[i] : UINT32_MAX;
}

static uint32_t module_rank(const struct rank_ctx *ctx, uint32_t m)
{
        const struct ap_pmodule *pm = pmodule(ctx->p, m);
        return pm ? str_rank(ctx, pm->path) : UINT32_MAX;
}

static int cmp_frame_idx(const void *va, const void *vb, void *vctx)
{
        const struct rank_ctx *ctx = vctx;
        const struct ap_pframe *x = &ctx->p->frames[*(const uint32_t *)va],
                               *y = &ctx->p->frames[*(const uint32_t *)vb];
        int c;
        if ((c = cmp_u64_asc(str_rank(ctx, x->function), str_rank(ctx, y->function))) != 0 ||
            (c = cmp_u64_asc(str_rank(ctx, x->file), str_rank(ctx, y->file))) != 0 ||
            (c = cmp_u64_asc(x->line, y->line)) != 0 ||
            (c = cmp_u64_asc(module_rank(ctx, x->module), module_rank(ctx, y->module))) != 0)
                return c;
        return cmp_u64_asc(x->address, y->address);
}

/* Fills idx[0..n) with 0..n-1 sorted by cmp (qsort_r's comparison of two indexes). */
static void sort_indexes(uint32_t *idx, uint32_t n, int (*cmp)(const void *, const void *, void *),
                         void *ctx)
{
        for (uint32_t i = 0; i < n; i++)
                idx[i] = i;
        qsort_r(idx, n, sizeof(*idx), cmp, ctx);
}

/* Sorts idx[0..n) with cmp, then gives each element its position in rank[], equal ones
 * the same. */
static void rank_sorted(uint32_t *idx, uint32_t n, uint32_t *rank,
                        int (*cmp)(const void *, const void *, void *), void *ctx)
{
        sort_indexes(idx, n, cmp, ctx);
        for (uint32_t i = 0, r = 0; i < n; i++) {
                if (i > 0 && cmp(&idx[i - 1], &idx[i], ctx) != 0)
                        r = i;
                rank[idx[i]] = r;
        }
}

/* Stacks by their text, from their frames' ranks. */
static int cmp_stacks(const struct ap_profile *p, const uint32_t *frank, const struct ap_psite *a,
                      const struct ap_psite *b)
{
        const uint32_t nf = p->nframes;
        for (uint32_t i = 0; i < a->nframes && i < b->nframes; i++) {
                uint32_t x = a->frames[i], y = b->frames[i];
                if (x == y)
                        continue; /* the same frame: equal text */
                /* A frame out of range (a profile built in memory) sorts last. */
                int c = cmp_u64_asc(x < nf ? frank[x] : UINT32_MAX, y < nf ? frank[y] : UINT32_MAX);
                if (c != 0)
                        return c;
        }
        return cmp_u64_asc(a->nframes, b->nframes);
}

struct sort_ctx {
        const struct ap_profile *p;
        enum ap_sort sort;
        const uint32_t *frank; /* frame_ranks() */
};

/* The rank of every frame (nframes of them), or NULL on OOM or when there are none. */
static uint32_t *frame_ranks(const struct ap_profile *p)
{
        size_t n = p->nstrings > p->nframes ? p->nstrings : p->nframes;
        uint32_t *srank = calloc(p->nstrings + 1, sizeof(*srank));
        uint32_t *idx = calloc(n + 1, sizeof(*idx));
        uint32_t *frank = p->nframes ? calloc(p->nframes, sizeof(*frank)) : NULL;
        struct rank_ctx rc = {p, srank};

        if (srank && idx && frank) {
                rank_sorted(idx, (uint32_t)p->nstrings, srank, cmp_string_idx, &rc);
                rank_sorted(idx, (uint32_t)p->nframes, frank, cmp_frame_idx, &rc);
        } else {
                free(frank);
                frank = NULL;
        }
        free(srank);
        free(idx);
        return frank;
}

static int cmp_sites(const void *va, const void *vb, void *vctx)
{
        const struct sort_ctx *ctx = vctx;
        const uint32_t ia = *(const uint32_t *)va, ib = *(const uint32_t *)vb;
        const struct ap_psite *a = &ctx->p->sites[ia], *b = &ctx->p->sites[ib];
        int c = 0;

        switch (ctx->sort) {
        case AP_SORT_ALLOCATIONS:
                c = cmp_u64_desc(a->allocations, b->allocations);
                break;
        case AP_SORT_BYTES:
                c = cmp_u64_desc(a->bytes, b->bytes);
                break;
        case AP_SORT_LEAKED:
                if ((c = cmp_u64_desc(a->leaked_bytes, b->leaked_bytes)) == 0)
                        c = cmp_u64_desc(a->leaked_blocks, b->leaked_blocks);
                break;
        case AP_SORT_PEAK:
                if ((c = cmp_u64_desc(a->peak_bytes, b->peak_bytes)) == 0)
                        c = cmp_u64_desc(a->max_live_bytes, b->max_live_bytes);
                break;
        }
        if (c == 0)
                c = cmp_u64_desc(a->bytes, b->bytes);
        if (c == 0)
                c = cmp_u64_desc(a->allocations, b->allocations);
        if (c == 0)
                c = cmp_stacks(ctx->p, ctx->frank, a, b);
        if (c == 0)
                c = (ia > ib) - (ia < ib);
        return c;
}

/* Sites in report order, found lazily: a report shows the first few sites of an order
 * (and its hints read on until they find what they look for), so the sites go into a heap,
 * O(n) to build, and the next in order is taken off it, O(log n), only when it is asked
 * for.  On a compiler's profile of 11,400 sites this made the text report's three orders
 * cost a fraction of the three full sorts they were (cmp_sites and stack ties were a third
 * of the report's samples); the order is the same, cmp_sites being a total order. */
struct site_order {
        struct sort_ctx ctx;
        /* heap[0..nheap): the sites not yet taken, heap[0] next; heap[nheap..nsites): those
         * taken, in order from the end (the i-th at heap[nsites - 1 - i]), as in heapsort. */
        uint32_t *heap;
        uint32_t nheap;
};

static bool site_before(const struct site_order *so, uint32_t a, uint32_t b)
{
        return cmp_sites(&a, &b, (void *)&so->ctx) < 0;
}

static void sift_down(struct site_order *so, uint32_t i)
{
        uint32_t *h = so->heap, n = so->nheap, x = h[i];
        for (;;) {
                uint32_t c = 2 * i + 1;
                if (c >= n)
                        break;
                if (c + 1 < n && site_before(so, h[c + 1], h[c]))
                        c++;
                if (!site_before(so, h[c], x))
                        break;
                h[i] = h[c];
                i = c;
        }
        h[i] = x;
}

/* Sets *so up for p's sites in `sort` order, given frame_ranks(p).  Returns 0 or
 * -ENOMEM.  Free with site_order_free (also after a failure). */
static int site_order_init(struct site_order *so, const struct ap_profile *p, enum ap_sort sort,
                           const uint32_t *frank)
{
        *so = (struct site_order){.ctx = {p, sort, frank}};
        if (p->nsites == 0)
                return 0;
        if (p->nframes > 0 && frank == NULL)
                return -ENOMEM;
        so->heap = calloc(p->nsites, sizeof(*so->heap));
        if (so->heap == NULL)
                return -ENOMEM;
        for (uint32_t i = 0; i < p->nsites; i++)
                so->heap[i] = i;
        so->nheap = p->nsites;
        for (uint32_t i = so->nheap / 2; i-- > 0;)
                sift_down(so, i);
        return 0;
}

/* The index of the i-th site in order (i < nsites). */
static uint32_t site_at(struct site_order *so, uint32_t i)
{
        const uint32_t n = so->ctx.p->nsites;
        while (n - so->nheap <= i) {
                uint32_t next = so->heap[0];
                so->heap[0] = so->heap[--so->nheap];
                so->heap[so->nheap] = next;
                if (so->nheap > 0)
                        sift_down(so, 0);
        }
        return so->heap[n - 1 - i];
}

static void site_order_free(struct site_order *so)
{
        free(so->heap);
}

static uint32_t shown(unsigned top, uint32_t n)
{
        return top == 0 || top > n ? n : top;
}

static const char *sort_name(enum ap_sort sort)
{
        switch (sort) {
        case AP_SORT_ALLOCATIONS:
                return "allocations";
        case AP_SORT_BYTES:
                return "bytes";
        case AP_SORT_LEAKED:
                return "leaked";
        case AP_SORT_PEAK:
                return "peak";
        }
        return "bytes";
}

/* ------------------------------------------------------------------------------------ */
/* Number formatting */

struct numbuf {
        char s[48];
};

/* 1234567 -> "1,234,567" */
static struct numbuf fmt_count(uint64_t v)
{
        struct numbuf b;
        char digits[24];
        int n = snprintf(digits, sizeof(digits), "%" PRIu64, v), o = 0;

        for (int i = 0; i < n; i++) {
                if (i > 0 && (n - i) % 3 == 0)
                        b.s[o++] = ',';
                b.s[o++] = digits[i];
        }
        b.s[o] = '\0';
        return b;
}

/* 1572864 -> "1.50 MiB"; below 1 KiB exact: "512 B". */
static struct numbuf fmt_size(uint64_t v)
{
        static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        struct numbuf b;
        double x = (double)v;
        unsigned u = 0;

        if (v < 1024) {
                snprintf(b.s, sizeof(b.s), "%" PRIu64 " B", v);
                return b;
        }
        x /= 1024;
        /* Switch units before rounding would print "1024.00". */
        while (x >= 1024 - 0.005 && u + 1 < sizeof(units) / sizeof(units[0])) {
                x /= 1024;
                u++;
        }
        snprintf(b.s, sizeof(b.s), "%.2f %s", x, units[u]);
        return b;
}

static struct numbuf fmt_duration(uint64_t ns)
{
        struct numbuf b;
        double s = (double)ns / 1e9;

        if (ns < 1000000)
                snprintf(b.s, sizeof(b.s), "%.0f us", (double)ns / 1e3);
        else if (ns < 1000000000)
                snprintf(b.s, sizeof(b.s), "%.1f ms", (double)ns / 1e6);
        else if (s < 60)
                snprintf(b.s, sizeof(b.s), "%.2f s", s);
        else
                snprintf(b.s, sizeof(b.s), "%" PRIu64 " min %02" PRIu64 " s",
                         ns / UINT64_C(60000000000), ns / UINT64_C(1000000000) % 60);
        return b;
}

static struct numbuf fmt_percent(uint64_t part, uint64_t whole)
{
        struct numbuf b;
        double x = share(part, whole);

        /* Never round a non-zero share down to a misleading "0.0%" or up to "100.0%". */
        if (part > 0 && x < 0.1)
                snprintf(b.s, sizeof(b.s), "<0.1%%");
        else if (part < whole && x > 99.9)
                snprintf(b.s, sizeof(b.s), ">99.9%%");
        else
                snprintf(b.s, sizeof(b.s), "%.1f%%", x);
        return b;
}

/* ------------------------------------------------------------------------------------ */
/* Text output */

#define SGR_RESET "\033[0m"
#define SGR_BOLD "\033[1m"
#define SGR_DIM "\033[2m"
#define SGR_RED "\033[31m"
#define SGR_GREEN "\033[32m"
#define SGR_YELLOW "\033[33m"
#define SGR_CYAN "\033[36m"

struct out {
        FILE *f;
        bool color;
};

static void sgr(const struct out *o, const char *code)
{
        if (o->color)
                fputs(code, o->f);
}

static void say(const struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(const struct out *o, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vfprintf(o->f, fmt, ap);
        va_end(ap);
}

/* Like say() but wrapped in an SGR code (when colors are on). */
static void say_in(const struct out *o, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void say_in(const struct out *o, const char *code, const char *fmt, ...)
{
        va_list ap;

        if (*code)
                sgr(o, code);
        va_start(ap, fmt);
        vfprintf(o->f, fmt, ap);
        va_end(ap);
        if (*code)
                sgr(o, SGR_RESET);
}

/* Columns a UTF-8 string takes (one per code point; close enough for names and paths). */
static size_t text_width(const char *s)
{
        size_t n = 0;

        for (; *s; s++)
                n += ((unsigned char)*s & 0xc0) != 0x80;
        return n;
}

/* Writes a string from the profile with its control characters (C0, DEL and C1) replaced
 * by '?', so that a crafted profile cannot drive the terminal; `semicolon`: what to write
 * for ';' (the frame separator of folded stacks), ';' itself elsewhere. */
static void put_clean(FILE *f, const char *s, char semicolon)
{
        for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
                if (*u < 0x20 || *u == 0x7f)
                        fputc('?', f);
                else if (u[0] == 0xc2 && u[1] >= 0x80 && u[1] <= 0x9f)
                        fputc('?', f), u++;
                else
                        fputc(*u == ';' ? semicolon : *u, f);
        }
}

/* Writes a string from the profile (put_clean), padded to `width` columns. */
static void put_str(const struct out *o, const char *s, size_t width)
{
        size_t w = text_width(s);

        put_clean(o->f, s, ';');
        for (; w < width; w++)
                fputc(' ', o->f);
}

static void section(const struct out *o, const char *title)
{
        say(o, "\n");
        say_in(o, SGR_BOLD, "%s", title);
        say(o, "\n");
}

/* Whether a function's name, outside its template arguments and parameters, says that it
 * allocates: a program's or a library's own allocation wrapper (xmalloc, g_malloc0,
 * jv_mem_alloc, Perl_safesysmalloc, PyMem_Malloc, a vector's _M_realloc_insert), which
 * many of its sites go through. */
static bool names_allocator(const char *fn)
{
        unsigned depth = 0;
        for (const char *c = fn; *c; c++) {
                if (*c == '<' || *c == '(')
                        depth++;
                else if ((*c == '>' || *c == ')') && depth > 0)
                        depth--;
                else if (depth == 0 && strncasecmp(c, "alloc", 5) == 0)
                        return true;
        }
        return false;
}

/* "func (file:line)" for the innermost frame of a site: the code that allocated. */
static void put_site_label(const struct out *o, const struct ap_profile *p,
                           const struct ap_psite *s)
{
        const struct ap_pframe *f = s->nframes ? pframe(p, s->frames[0]) : NULL;
        const char *fn, *file, *mod;

        if (!f) {
                say(o, "(no stack)");
                return;
        }
        fn = pstr(p, f->function);
        file = pstr(p, f->file);
        mod = ap_path_base(module_path(p, f->module));
        if (fn)
                put_str(o, fn, 0);
        else
                say(o, "0x%" PRIx64, f->address);
        if (file) {
                say(o, " (");
                put_str(o, file, 0);
                if (f->line)
                        say(o, ":%" PRIu32, f->line);
                say(o, ")");
        } else if (mod) {
                say(o, " (");
                put_str(o, mod, 0);
                say(o, ")");
        }
        /* An address without a name (a stripped library) or an allocation wrapper tells
         * sites apart badly (every site of jq is "jv_mem_alloc"): add the nearest caller
         * that has a name, past further wrappers (sqlite3Malloc, PyMem_Malloc, xmalloc:
         * every site of the library goes through them), unless there is nothing else. */
        const char *from = NULL;
        bool wrapped = !fn || names_allocator(fn);
        for (uint32_t i = 1; wrapped && i < s->nframes; i++) {
                const struct ap_pframe *c = pframe(p, s->frames[i]);
                const char *cfn = c ? pstr(p, c->function) : NULL;
                if (cfn == NULL)
                        continue;
                if (from == NULL)
                        from = cfn;
                if (!names_allocator(cfn)) {
                        from = cfn;
                        break;
                }
        }
        if (from) {
                say(o, " from ");
                put_str(o, from, 0);
        }
}

/* Whether a frame is the program's main(): what lies outside it is the C runtime's
 * start-up code, the same in every stack, so the text report stops there. */
static bool is_main(const struct ap_profile *p, uint32_t frame)
{
        const struct ap_pframe *f = pframe(p, frame);
        const char *fn = f ? pstr(p, f->function) : NULL;

        return fn && strcmp(fn, "main") == 0;
}

static void pad(const struct out *o, size_t n)
{
        for (; n > 0; n--)
                fputc(' ', o->f);
}

/* Function name, or the address when there is none; returns the columns it took. */
static size_t put_function(const struct out *o, const struct ap_profile *p,
                           const struct ap_pframe *f)
{
        const char *fn = f ? pstr(p, f->function) : NULL;
        char addr[24];

        if (fn) {
                put_str(o, fn, 0);
                return text_width(fn);
        }
        snprintf(addr, sizeof(addr), "0x%" PRIx64, f ? f->address : 0);
        say_in(o, SGR_DIM, "%s", addr);
        return strlen(addr);
}

static size_t function_width(const struct ap_profile *p, const struct ap_pframe *f)
{
        const char *fn = f ? pstr(p, f->function) : NULL;
        char addr[24];

        return fn ? text_width(fn)
                  : (size_t)snprintf(addr, sizeof(addr), "0x%" PRIx64, f ? f->address : 0);
}

static size_t location_width(const struct ap_profile *p, const struct ap_pframe *f)
{
        const char *file = f ? pstr(p, f->file) : NULL;
        char line[16];

        if (!file)
                return 0;
        return text_width(file) +
               (f->line ? (size_t)snprintf(line, sizeof(line), ":%" PRIu32, f->line) : 0);
}

static bool same_source(const struct ap_profile *p, uint32_t a, uint32_t b)
{
        const struct ap_pframe *x = pframe(p, a), *y = pframe(p, b);

        if (a == b)
                return true;
        return x && y && x->function != AP_NONE && x->function == y->function &&
               x->file == y->file && x->line == y->line && x->module == y->module &&
               x->inlined == y->inlined;
}

/* One frame per line: "function  file:line  [module]  (inlined)".  Recursion (the same
 * source line again and again) is folded into one line with a count.  Columns are aligned
 * within the stack, but a very long (C++) name runs on instead of pushing every other
 * line off the screen; padding is only written before text, never at the end of a line. */
static void put_stack(const struct out *o, const struct ap_profile *p, const struct ap_psite *s,
                      const char *indent)
{
        struct {
                uint32_t frame, repeat;
        } rows[TEXT_MAX_FROWS];
        uint32_t depth = s->nframes, nrows = 0, used = 0;
        size_t wfn = 0, wloc = 0;

        if (s->nframes == 0) {
                say(o, "%s", indent);
                say_in(o, SGR_DIM, "(no stack recorded)");
                say(o, "\n");
                return;
        }
        for (uint32_t i = 0; i < s->nframes; i++) {
                if (is_main(p, s->frames[i])) {
                        depth = i + 1;
                        break;
                }
        }
        while (used < depth && nrows < TEXT_MAX_FROWS) {
                uint32_t n = 1;

                while (used + n < depth && same_source(p, s->frames[used], s->frames[used + n]))
                        n++;
                rows[nrows].frame = s->frames[used];
                rows[nrows++].repeat = n;
                used += n;
        }
        for (uint32_t i = 0; i < nrows; i++) {
                size_t w = function_width(p, pframe(p, rows[i].frame));

                if (w <= TEXT_FUNCTION_COLUMN && w > wfn)
                        wfn = w;
        }
        for (uint32_t i = 0; i < nrows; i++) {
                const struct ap_pframe *f = pframe(p, rows[i].frame);
                size_t w = location_width(p, f);

                if (function_width(p, f) <= wfn && w <= TEXT_LOCATION_COLUMN && w > wloc)
                        wloc = w;
        }
        for (uint32_t i = 0; i < nrows; i++) {
                const struct ap_pframe *f = pframe(p, rows[i].frame);
                const char *file = f ? pstr(p, f->file) : NULL;
                const char *mod = f ? ap_path_base(module_path(p, f->module)) : NULL;
                size_t w, pending;
                bool aligned;

                say(o, "%s", indent);
                w = put_function(o, p, f);
                aligned = w <= wfn;
                pending = (aligned ? wfn - w : 0) + 2;
                if (file) {
                        pad(o, pending);
                        sgr(o, SGR_CYAN);
                        put_str(o, file, 0);
                        if (f->line)
                                say(o, ":%" PRIu32, f->line);
                        sgr(o, SGR_RESET);
                        w = location_width(p, f);
                        pending = (aligned && w <= wloc ? wloc - w : 0) + 2;
                } else if (aligned && wloc) {
                        pending += wloc + 2;
                }
                if (mod) {
                        pad(o, pending);
                        sgr(o, SGR_DIM);
                        say(o, "[");
                        put_str(o, mod, 0);
                        say(o, "]");
                        sgr(o, SGR_RESET);
                        pending = 2;
                }
                if (f && f->inlined) {
                        pad(o, pending);
                        say_in(o, SGR_DIM, "(inlined)");
                        pending = 2;
                }
                if (rows[i].repeat > 1) {
                        pad(o, pending);
                        say_in(o, SGR_DIM, "(x%" PRIu32 ", recursive)", rows[i].repeat);
                }
                say(o, "\n");
        }
        if (depth > used) {
                say(o, "%s", indent);
                say_in(o, SGR_DIM, "... %" PRIu32 " more frame%s", depth - used,
                       depth - used == 1 ? "" : "s");
                say(o, "\n");
        }
        if (s->truncated && depth == s->nframes) {
                say(o, "%s", indent);
                say_in(o, SGR_DIM,
                       "... stack cut at %d frames: its outer callers were not recorded",
                       AP_MAX_FRAMES);
                say(o, "\n");
        }
}

static void put_header(const struct out *o, const struct ap_profile *p)
{
        say_in(o, SGR_BOLD, "allocprof report");
        if (p->ncommand > 0) {
                say(o, " for ");
                sgr(o, SGR_BOLD);
                for (uint32_t i = 0; i < p->ncommand; i++) {
                        if (i)
                                say(o, " ");
                        put_str(o, p->command[i] ? p->command[i] : "", 0);
                }
                sgr(o, SGR_RESET);
        } else if (p->exe) {
                say(o, " for ");
                put_str(o, p->exe, 0);
        }
        if (p->merged_from > 1 && p->run_id != NULL)
                say(o, "\n  merged from %" PRIu32 " profiles (processes of one run); peak and "
                       "totals are sums over them;\n  the process shown is the program itself",
                    p->merged_from);
        else if (p->merged_from > 1)
                say(o,
                    "\n  merged from %" PRIu32 " profiles of different runs; peak, "
                    "totals and running time are\n  sums over them",
                    p->merged_from);
        say(o, "\n  pid %" PRIu32, p->pid);
        if (p->ppid)
                say(o, " (parent %" PRIu32 ")", p->ppid);
        if (p->live) {
                /* Nothing has ended: there is no exit status, and the time is not final. */
                say(o, ", live snapshot of a running process");
                if (p->duration_ns)
                        say(o, ", running for %s", fmt_duration(p->duration_ns).s);
        } else if (p->term_signal > 0) {
                const char *abbrev = sigabbrev_np(p->term_signal);

                say(o, ", ");
                if (abbrev)
                        say_in(o, SGR_RED, "killed by SIG%s", abbrev);
                else
                        say_in(o, SGR_RED, "killed by signal %d", p->term_signal);
        } else if (p->by_exec) {
                /* The process went on as another program: its end is not this image's. */
                say(o, ", replaced by an exec of ");
                put_str(o, p->exec_path ? p->exec_path : "a program", 0);
                say(o, "%s", p->exec_profiled ? " (profiled on its own)" : " (not profiled)");
        } else if (p->exit_status >= 0) {
                say(o, ", exited with status %d", p->exit_status);
        }
        if (p->duration_ns && !p->live)
                say(o, ", ran %s", fmt_duration(p->duration_ns).s);
        if (p->start_unix_ns) {
                time_t t = (time_t)(p->start_unix_ns / 1000000000ull);
                struct tm tm;
                char when[64];

                if (localtime_r(&t, &tm) &&
                    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S %Z", &tm))
                        say(o, ", started %s", when);
        }
        say(o, "\n");
        /* Several intervals: one process attached again with another --sample, or a merge
         * (of profiles of different runs, or one of them a full-mode profile, which counts
         * as 1 byte): a merge cannot tell which, and must not claim the first. */
        if (is_sampled(p) && p->sample_interval_min != 0 &&
            p->sample_interval_min != p->sample_interval_max && p->merged_from > 1)
                say(o,
                    "  mode sampled: one sample per %s to %s allocated on average (the merged "
                    "profiles were\n  recorded at different intervals%s); figures are "
                    "estimates\n",
                    fmt_size(p->sample_interval_min).s, fmt_size(p->sample_interval_max).s,
                    p->sample_interval_min == 1 ? ", 1 B meaning every allocation" : "");
        else if (is_sampled(p) && p->sample_interval_min != 0 &&
                 p->sample_interval_min != p->sample_interval_max)
                say(o,
                    "  mode sampled: one sample per %s to %s allocated on average (the "
                    "interval changed while it was recorded); figures are estimates\n",
                    fmt_size(p->sample_interval_min).s, fmt_size(p->sample_interval_max).s);
        else if (is_estimate(p))
                say(o,
                    "  mode sampled: one sample per %s allocated on average; figures are "
                    "estimates\n",
                    fmt_size(p->sample_interval).s);
        else if (is_sampled(p))
                say(o, "  mode sampled at every byte: every allocation recorded; counts are "
                       "exact\n");
        else if (p->mode && strcmp(p->mode, "full") == 0)
                say(o, "  mode full: every allocation recorded; counts are exact\n");
        else {
                say(o, "  mode ");
                put_str(o, p->mode ? p->mode : "unknown", 0);
                say(o, "\n");
        }
}

/* Whether the "leaked" counters hold blocks that are not leaks: those live now (a
 * snapshot), or those live at the exec that replaced the image (its memory went with
 * it).  Either is normal: not red. */
static bool not_leaks(const struct ap_profile *p)
{
        return p->live || p->by_exec;
}

/* What those counters hold, in a few words: "live now", "live at the exec", "leaked". */
static const char *held(const struct ap_profile *p)
{
        return p->live ? "live now" : p->by_exec ? "live at the exec" : "leaked";
}

/* One summary row: label, a count column, a size column, then free text. */
static void summary_row(const struct out *o, const char *label, const char *count, const char *size,
                        const char *color)
{
        say(o, "  %-16s", label);
        say_in(o, color ? color : SGR_BOLD, "%13s", count);
        if (*size) {
                say(o, "  ");
                say_in(o, color ? color : SGR_BOLD, "%10s", size);
        }
}

static void put_summary(const struct out *o, const struct ap_profile *p, uint32_t leaking_sites)
{
        const typeof(p->totals) *t = &p->totals;

        section(o, "Summary");
        summary_row(o, "allocations", fmt_count(t->allocations).s, fmt_size(t->bytes).s, NULL);
        say(o, "  %s bytes", fmt_count(t->bytes).s);
        if (t->allocations)
                say(o, ", %s on average", fmt_size(t->bytes / t->allocations).s);
        say(o, "\n");
        summary_row(o, "frees", fmt_count(t->frees).s, fmt_size(t->freed_bytes).s, NULL);
        say(o, "  %s bytes\n", fmt_count(t->freed_bytes).s);
        summary_row(o, "peak heap", fmt_count(t->peak_blocks).s, fmt_size(t->peak_bytes).s, NULL);
        say(o, "  %s bytes live in %s blocks", fmt_count(t->peak_bytes).s,
            fmt_count(t->peak_blocks).s);
        if (t->peak_t_ns)
                say(o, ", at %s", fmt_duration(t->peak_t_ns).s);
        say(o, "\n");
        summary_row(o, held(p), fmt_count(t->leaked_blocks).s, fmt_size(t->leaked_bytes).s,
                    t->leaked_blocks && !not_leaks(p) ? SGR_RED : NULL);
        if (t->leaked_blocks)
                say(o, "  %s bytes %s, from %s call site%s\n", fmt_count(t->leaked_bytes).s,
                    p->live      ? "not freed yet"
                    : p->by_exec ? "not freed before the exec"
                                 : "never freed",
                    fmt_count(leaking_sites).s, leaking_sites == 1 ? "" : "s");
        else if (is_estimate(p)) /* blocks never sampled may have leaked all the same */
                say(o, "  %s\n",
                    p->live      ? "every sampled block allocated so far was freed"
                    : p->by_exec ? "every sampled block was freed before the exec"
                                 : "every sampled block was freed (a leak of blocks no sample "
                                   "fell on would not show)");
        else
                say(o, "  %s\n",
                    p->live      ? "every block allocated so far was freed"
                    : p->by_exec ? "every block was freed before the exec"
                                 : "every block was freed");
        summary_row(o, "temporary", fmt_count(t->temporary).s,
                    fmt_percent(t->temporary, t->allocations).s, NULL);
        say(o, "  of allocations were freed before their thread allocated again\n");
        summary_row(o, "reallocs", fmt_count(t->reallocs).s,
                    fmt_percent(t->reallocs, t->allocations).s, NULL);
        say(o, "  of allocations were realloc calls\n");
        if (t->threads) {
                summary_row(o, "threads", fmt_count(t->threads).s, "", NULL);
                say(o, "\n");
        }
        if (t->unmatched_frees) {
                summary_row(o, "unmatched frees", fmt_count(t->unmatched_frees).s, "", NULL);
                say(o, "  %s\n",
                    t->dropped_events ? "frees of blocks allocated before profiling started, or "
                                        "whose allocation was dropped"
                                      : "frees of blocks allocated before profiling started");
        }
        if (t->dropped_events) {
                say(o, "  ");
                say_in(o, SGR_BOLD SGR_RED, "warning: %s events were dropped",
                       fmt_count(t->dropped_events).s);
                if (t->dropped_frees)
                        say_in(o, SGR_RED, " (%s of them frees: %s may be overstated)",
                               fmt_count(t->dropped_frees).s,
                               not_leaks(p) ? "live blocks" : "leaks");
                say_in(o, SGR_RED, "; figures are incomplete");
                say(o, "\n");
                if (t->dropped_no_ring)
                        say(o,
                            "  %s of them by threads that had no ring to record into (see the "
                            "hints)\n",
                            fmt_count(t->dropped_no_ring).s);
        }
        if (t->untracked_samples) {
                say(o, "  ");
                say_in(o, SGR_BOLD SGR_RED,
                       "warning: %s sampled blocks were not tracked (the agent's set of "
                       "sampled blocks was full): their frees were not seen, so %s may be "
                       "overstated",
                       fmt_count(t->untracked_samples).s, not_leaks(p) ? "live blocks" : "leaks");
                say(o, "\n");
        }
        if (p->foreign_malloc != NULL) {
                say(o, "  ");
                say_in(o, SGR_BOLD SGR_RED, "warning: the program's malloc is the one in ");
                put_str(o, p->foreign_malloc, 0);
                say_in(o, SGR_BOLD SGR_RED,
                       ", which comes before allocprof's: allocations made with it were not "
                       "seen (only those that reach the C library's malloc are)");
                say(o, "\n");
        }
        if (t->unprofiled_children) {
                say(o, "  ");
                say_in(o, SGR_YELLOW,
                       "note: %s child process%s could not register with the collector (a "
                       "chroot, no descriptor left, a seccomp filter...) and ran unprofiled",
                       fmt_count(t->unprofiled_children).s,
                       t->unprofiled_children == 1 ? "" : "es");
                say(o, "\n");
        }
        if (t->invalid_records) {
                say(o, "  ");
                say_in(o, SGR_RED,
                       "warning: %s records from the process were malformed or could not be "
                       "kept (the collector short of memory), and were ignored",
                       fmt_count(t->invalid_records).s);
                say(o, "\n");
        }
}

/* "#1   1.00 MiB in 1,000 allocations (avg 1 KiB), 12.5% of bytes" and a second line of
 * detail, with the number the report is sorted by in bold. */
static void put_site_headline(const struct out *o, const struct ap_profile *p,
                              const struct ap_psite *s, uint32_t rank, enum ap_sort sort)
{
        const char *strong = SGR_BOLD;
        bool by_allocs = sort == AP_SORT_ALLOCATIONS;

        say(o, "\n  ");
        say_in(o, SGR_BOLD, "#%-3" PRIu32, rank);
        say(o, " ");
        if (sort == AP_SORT_LEAKED) {
                say_in(o, not_leaks(p) ? SGR_BOLD : SGR_BOLD SGR_RED, "%s %s",
                       fmt_size(s->leaked_bytes).s, held(p));
                say(o, " in %s block%s (of %s allocated)", fmt_count(s->leaked_blocks).s,
                    s->leaked_blocks == 1 ? "" : "s", fmt_count(s->allocations).s);
                if (p->totals.leaked_bytes)
                        say(o, ", %s of all %s bytes",
                            fmt_percent(s->leaked_bytes, p->totals.leaked_bytes).s,
                            not_leaks(p) ? "live" : "leaked");
                say(o, "\n");
                return;
        }
        say_in(o, sort == AP_SORT_BYTES ? strong : "", "%s", fmt_size(s->bytes).s);
        say(o, " in ");
        say_in(o, by_allocs ? strong : "", "%s", fmt_count(s->allocations).s);
        say(o, " allocation%s", s->allocations == 1 ? "" : "s");
        if (s->allocations > 1)
                say(o, " (avg %s)", fmt_size(s->bytes / s->allocations).s);
        say(o, ", %s of %s\n",
            fmt_percent(by_allocs ? s->allocations : s->bytes,
                        by_allocs ? p->totals.allocations : p->totals.bytes)
                    .s,
            by_allocs ? "calls" : "bytes");
        say(o, "       ");
        say_in(o, sort == AP_SORT_PEAK ? strong : "", "%s", fmt_size(s->peak_bytes).s);
        say(o, " live at the peak (%s at most)", fmt_size(s->max_live_bytes).s);
        if (s->temporary)
                say(o, ", %s temporary", fmt_percent(s->temporary, s->allocations).s);
        if (s->reallocs)
                say(o, ", %s realloc%s", fmt_count(s->reallocs).s, s->reallocs == 1 ? "" : "s");
        if (s->leaked_blocks || s->leaked_bytes) {
                say(o, ", ");
                say_in(o, not_leaks(p) ? "" : SGR_RED, "%s %s", fmt_size(s->leaked_bytes).s,
                       held(p));
        }
        say(o, "\n");
}

static void put_hot_sites(const struct out *o, const struct ap_profile *p, struct site_order *order,
                          const struct ap_report_opts *opts)
{
        uint32_t n = shown(opts->top, p->nsites);
        const char *by =
                not_leaks(p) && opts->sort == AP_SORT_LEAKED ? "live bytes" : sort_name(opts->sort);
        char title[192];

        if (n < p->nsites)
                snprintf(title, sizeof(title), "Hot call sites (top %s of %s, by %s)",
                         fmt_count(n).s, fmt_count(p->nsites).s, by);
        else
                snprintf(title, sizeof(title), "Hot call sites (%s, by %s)", fmt_count(p->nsites).s,
                         by);
        section(o, title);
        if (p->nsites == 0) {
                say(o, "  no allocations recorded\n");
                return;
        }
        for (uint32_t i = 0; i < n; i++) {
                const struct ap_psite *s = &p->sites[site_at(order, i)];

                put_site_headline(o, p, s, i + 1, opts->sort);
                put_stack(o, p, s, "       ");
        }
}

static int cmp_modules(const void *va, const void *vb, void *vctx)
{
        const struct ap_profile *p = vctx;
        const uint32_t ia = *(const uint32_t *)va, ib = *(const uint32_t *)vb;
        const struct ap_pmodule *a = &p->modules[ia], *b = &p->modules[ib];
        int c;

        if ((c = cmp_u64_desc(a->bytes, b->bytes)) != 0 ||
            (c = cmp_u64_desc(a->allocations, b->allocations)) != 0 ||
            (c = cmp_str(pstr(p, a->path), pstr(p, b->path))) != 0)
                return c;
        return (ia > ib) - (ia < ib);
}

static uint32_t *sorted_modules(const struct ap_profile *p)
{
        uint32_t *idx;

        if (p->nmodules == 0 || !(idx = calloc(p->nmodules, sizeof(*idx))))
                return NULL;
        sort_indexes(idx, p->nmodules, cmp_modules, (void *)p);
        return idx;
}

static void put_modules(const struct out *o, const struct ap_profile *p, const uint32_t *order)
{
        uint32_t quiet = 0;
        size_t wname = 6;

        section(o, "Modules (by the code that called the allocator)");
        for (uint32_t i = 0; i < p->nmodules; i++) {
                const char *name = ap_path_base(pstr(p, p->modules[i].path));
                size_t w = name ? text_width(name) : 1;

                if (p->modules[i].allocations && w > wname && w <= 40)
                        wname = w;
        }
        sgr(o, SGR_DIM);
        say(o, "  %-*s  %13s  %10s  %7s  %10s\n", (int)wname, "module", "allocations", "bytes",
            "share", not_leaks(p) ? "live" : "leaked");
        sgr(o, SGR_RESET);
        for (uint32_t i = 0; order && i < p->nmodules; i++) {
                const struct ap_pmodule *m = &p->modules[order[i]];
                const char *name = ap_path_base(pstr(p, m->path));

                if (m->allocations == 0 && m->leaked_blocks == 0) {
                        quiet++;
                        continue;
                }
                say(o, "  ");
                put_str(o, name ? name : "?", wname);
                say(o, "  %13s  %10s  %7s  ", fmt_count(m->allocations).s, fmt_size(m->bytes).s,
                    fmt_percent(m->bytes, p->totals.bytes).s);
                say_in(o, m->leaked_bytes && !not_leaks(p) ? SGR_RED : "", "%10s",
                       fmt_size(m->leaked_bytes).s);
                say(o, "\n");
        }
        if (p->nmodules == 0)
                say(o, "  no modules recorded\n");
        if (quiet)
                say_in(o, SGR_DIM, "  (%" PRIu32 " more module%s made no allocations)\n", quiet,
                       quiet == 1 ? "" : "s");
}

static void put_leaks(const struct out *o, const struct ap_profile *p, struct site_order *by_leak,
                      uint32_t leaking, unsigned top)
{
        uint32_t n = shown(top, leaking);

        section(o, p->live ? "Live now" : p->by_exec ? "Live at the exec" : "Leaks");
        if (leaking == 0 && p->totals.leaked_blocks == 0) {
                say(o, "  ");
                say_in(o, SGR_GREEN, "%s",
                       p->live ? is_estimate(p) ? "nothing live: every sampled block allocated "
                                                  "so far was freed"
                                                : "nothing live: every block allocated so far "
                                                  "was freed"
                       : p->by_exec     ? is_estimate(p)
                                                  ? "nothing live: every sampled block was freed "
                                                    "before the exec"
                                                  : "nothing live: every allocated block was freed "
                                                    "before the exec"
                       : is_estimate(p) ? "no leaks seen: every sampled block was freed before exit"
                                        : "no leaks: every allocated block was freed before exit");
                say(o, "\n");
                return;
        }
        say(o, "  ");
        say_in(o, not_leaks(p) ? SGR_BOLD : SGR_RED, "%s in %s blocks",
               fmt_size(p->totals.leaked_bytes).s, fmt_count(p->totals.leaked_blocks).s);
        say(o, " were still allocated %s, from %s call site%s\n",
            p->live      ? "when the snapshot was taken"
            : p->by_exec ? "when an exec replaced the image (not leaks: its memory went with it)"
                         : "at exit",
            fmt_count(leaking).s, leaking == 1 ? "" : "s");
        if (p->totals.dropped_frees)
                say_in(o, SGR_YELLOW,
                       "  (%s frees were dropped: some of these blocks may have "
                       "been freed)\n",
                       fmt_count(p->totals.dropped_frees).s);
        if (p->totals.untracked_samples)
                say_in(o, SGR_YELLOW,
                       "  (%s sampled blocks were not tracked: some of these blocks may "
                       "have been freed)\n",
                       fmt_count(p->totals.untracked_samples).s);
        for (uint32_t i = 0; i < n; i++) {
                const struct ap_psite *s = &p->sites[site_at(by_leak, i)];

                put_site_headline(o, p, s, i + 1, AP_SORT_LEAKED);
                put_stack(o, p, s, "       ");
        }
        if (n < leaking) {
                bool one = leaking - n == 1;
                const char *what =
                        not_leaks(p) ? (one ? "site with live blocks" : "sites with live blocks")
                                     : (one ? "leaking site" : "leaking sites");

                say_in(o, SGR_DIM, "\n  ... and %s more %s (use --top 0 to see all)\n",
                       fmt_count(leaking - n).s, what);
        }
}

/* Bucket i counts sizes in [2^(i-1), 2^i); bucket 0 counts zero-byte requests. */
static uint64_t bucket_min(unsigned i)
{
        return i == 0 ? 0 : (uint64_t)1 << (i - 1);
}

static uint64_t bucket_max(unsigned i)
{
        return i == 0 ? 0 : i >= 64 ? UINT64_MAX : ((uint64_t)1 << i) - 1;
}

/* "0 B", "16-31 B", and from 1 KiB on in whole units: "4-8 KiB" = [4 KiB, 8 KiB). */
static struct numbuf fmt_bucket(unsigned i)
{
        static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        struct numbuf b;
        uint64_t lo = bucket_min(i), hi = bucket_max(i);
        unsigned u = 0;

        if (i <= 1) {
                snprintf(b.s, sizeof(b.s), "%" PRIu64 " B", lo);
                return b;
        }
        if (lo < 1024) {
                snprintf(b.s, sizeof(b.s), "%" PRIu64 "-%" PRIu64 " B", lo, hi);
                return b;
        }
        while (lo >= 1024 && u < 6) {
                lo /= 1024;
                hi /= 1024;
                u++;
        }
        snprintf(b.s, sizeof(b.s), "%" PRIu64 "-%" PRIu64 " %s", lo, hi + 1, units[u]);
        return b;
}

static void put_histogram(const struct out *o, const struct ap_profile *p)
{
        uint64_t max = 0, total = 0;

        for (unsigned i = 0; i < AP_HIST_BUCKETS; i++) {
                total += p->hist_count[i];
                if (p->hist_count[i] > max)
                        max = p->hist_count[i];
        }
        if (max == 0)
                return;
        section(o, "Allocation sizes");
        sgr(o, SGR_DIM);
        say(o, "  %-12s  %13s  %7s  %10s\n", "requested", "allocations", "share", "bytes");
        sgr(o, SGR_RESET);
        for (unsigned i = 0; i < AP_HIST_BUCKETS; i++) {
                uint64_t c = p->hist_count[i];
                long bar = (long)(40.0 * (double)c / (double)max + 0.5);

                if (c == 0)
                        continue;
                say(o, "  %-12s  %13s  %7s  %10s  ", fmt_bucket(i).s, fmt_count(c).s,
                    fmt_percent(c, total).s, fmt_size(p->hist_bytes[i]).s);
                sgr(o, SGR_CYAN);
                for (long k = 0; k < (bar > 0 ? bar : 1); k++)
                        fputc('#', o->f);
                sgr(o, SGR_RESET);
                say(o, "\n");
        }
}

/* ------------------------------------------------------------------------------------ */
/* Hints */

/* The program's threads waited for ring space long enough to say so. */
static bool waited_notably(const struct ap_profile *p)
{
        return p->ring_wait_ns >= HINT_WAIT_MIN_NS &&
               (double)p->ring_wait_ns >= HINT_WAIT_SHARE * (double)p->duration_ns;
}

/* Starts a hint: a bullet and what it is about (a site, or a title). */
static void hint_start(const struct out *o, unsigned *count, const struct ap_profile *p,
                       const struct ap_psite *s, const char *title)
{
        if ((*count)++ == 0)
                section(o, "Hints");
        say(o, "  ");
        say_in(o, SGR_YELLOW, "*");
        say(o, " ");
        sgr(o, SGR_BOLD);
        if (s)
                put_site_label(o, p, s);
        else
                say(o, "%s", title);
        sgr(o, SGR_RESET);
        say(o, "\n");
}

/* Sites ordered by a hint's own measure; only the first few per kind are worth reading. */
static void put_hints(const struct out *o, const struct ap_profile *p,
                      struct site_order *by_allocs, struct site_order *by_leak, uint32_t leaking)
{
        const typeof(p->totals) *t = &p->totals;
        uint64_t per_block = t->allocations / (t->peak_blocks ? t->peak_blocks : 1);
        unsigned count = 0, kind;

        /* Many small, short-lived blocks: what pools, arenas and stack buffers are for.
         * Short-lived: mostly freed before the thread's next allocation, or so few live at once
         * that the site's high-water mark is a sliver of what it allocated in total. */
        kind = 0;
        for (uint32_t i = 0; i < p->nsites && kind < HINT_MAX_PER_KIND; i++) {
                const struct ap_psite *s = &p->sites[site_at(by_allocs, i)];
                bool temporary, few_live;

                if (s->allocations < HINT_POOL_MIN_ALLOCS)
                        break;
                if (s->bytes / s->allocations >= HINT_SMALL_AVG)
                        continue;
                temporary = (double)s->temporary >= HINT_TEMP_FRACTION * (double)s->allocations;
                few_live = (double)s->frees >= HINT_FREED_FRACTION * (double)s->allocations &&
                           (double)s->max_live_bytes <= HINT_LIVE_SHARE * (double)s->bytes;
                if (!temporary && !few_live)
                        continue;
                hint_start(o, &count, p, s, NULL);
                say(o, "    %s allocations averaging %s, ", fmt_count(s->allocations).s,
                    fmt_size(s->bytes / s->allocations).s);
                if (temporary)
                        say(o, "%s of them freed before the next\n    allocation",
                            fmt_percent(s->temporary, s->allocations).s);
                else
                        say(o, "and never more than %s live at\n    once",
                            fmt_size(s->max_live_bytes).s);
                say(o, ": consider a pool/arena allocator or a stack buffer.\n");
                kind++;
        }

        /* Realloc growth loops: every step may copy the whole buffer. */
        kind = 0;
        for (uint32_t i = 0; i < p->nsites && kind < HINT_MAX_PER_KIND; i++) {
                const struct ap_psite *s = &p->sites[site_at(by_allocs, i)];

                /* Reallocs are some of a site's allocations: the sites after this one have
                 * too few (rather than sorting all of them, a million in a big profile). */
                if (s->allocations < HINT_REALLOC_MIN)
                        break;
                if (s->reallocs < HINT_REALLOC_MIN)
                        continue;
                hint_start(o, &count, p, s, NULL);
                say(o,
                    "    %s reallocs (%s of this site's calls) grow a buffer step by step:\n"
                    "    reserve the capacity up front, or grow it geometrically.\n",
                    fmt_count(s->reallocs).s, fmt_percent(s->reallocs, s->allocations).s);
                kind++;
        }

        /* Big leaks, biggest first.  (Blocks live at an exec were not leaked: an exec
         * replaces the whole image, its memory included.) */
        kind = 0;
        for (uint32_t i = 0; i < leaking && kind < HINT_MAX_PER_KIND && !p->by_exec; i++) {
                const struct ap_psite *s = &p->sites[site_at(by_leak, i)];
                bool big =
                        s->leaked_bytes >= HINT_LEAK_BYTES ||
                        (s->leaked_bytes >= HINT_LEAK_MIN_BYTES &&
                         (double)s->leaked_bytes >= HINT_LEAK_PEAK_SHARE * (double)t->peak_bytes);

                if (!big)
                        break;
                hint_start(o, &count, p, s, NULL);
                say(o, "    %s %s in %s block%s", p->live ? "holds" : "leaks",
                    fmt_size(s->leaked_bytes).s, fmt_count(s->leaked_blocks).s,
                    s->leaked_blocks == 1 ? "" : "s");
                if (p->live)
                        say(o, " live now");
                if (t->peak_bytes)
                        say(o, " (%s of the peak heap)",
                            fmt_percent(s->leaked_bytes, t->peak_bytes).s);
                /* A running process may still free it: only growth over time says more. */
                say(o, p->live ? ":\n    if later snapshots show it growing, look for a missing "
                                 "free.\n"
                               : ":\n    free it, or make sure it is meant to live until exit.\n");
                kind++;
        }

        /* Churn: far more allocations than are ever live at once. */
        if (t->allocations >= HINT_CHURN_MIN_ALLOCS && per_block >= HINT_CHURN_RATIO) {
                hint_start(o, &count, p, NULL, "heap churn");
                say(o,
                    "    %s allocations, but never more than %s blocks live at once (%sx):\n"
                    "    reuse objects or buffers instead of freeing and allocating them again.\n",
                    fmt_count(t->allocations).s, fmt_count(t->peak_blocks).s,
                    fmt_count(per_block).s);
                if (p->nsites) {
                        say(o, "    The busiest site is ");
                        put_site_label(o, p, &p->sites[site_at(by_allocs, 0)]);
                        say(o, ".\n");
                }
        }

        if (waited_notably(p)) {
                hint_start(o, &count, p, NULL, "waits for the collector");
                say(o,
                    "    the program's threads found their ring full %s times and waited %s for\n"
                    "    the collector to catch up (in all: the waits of threads that waited at\n"
                    "    the same time add up): profiling cost (recording with --sample sends\n"
                    "    far fewer records).\n",
                    fmt_count(p->ring_waits).s, fmt_duration(p->ring_wait_ns).s);
        }
        /* Never more than dropped_events: the collector sums them so, and the reader
         * checks it. */
        uint64_t no_ring = t->dropped_no_ring;
        if (t->dropped_events > no_ring) {
                hint_start(o, &count, p, NULL, "dropped events");
                say(o,
                    "    the profiled program outran the collector and %s events were lost:\n"
                    "    the figures above are incomplete.\n",
                    fmt_count(t->dropped_events - no_ring).s);
        }
        if (no_ring) {
                hint_start(o, &count, p, NULL, "threads without a ring");
                say(o,
                    "    %s events were lost by threads that had no ring to record into: more\n"
                    "    threads at once than the agent's %u rings, an address-space limit\n"
                    "    (ulimit -v) with room for no more, or a sandbox that refuses mremap(2)\n"
                    "    (a program run inside valgrind records its main thread only).  The\n"
                    "    figures above are incomplete.\n",
                    fmt_count(no_ring).s, (unsigned)AP_NSLOTS);
        }
        if (count == 0) {
                section(o, "Hints");
                say(o, "  nothing stands out\n");
        }
}

int ap_report_text(FILE *out, const struct ap_profile *p, const struct ap_report_opts *opts)
{
        const struct out o = {out, opts->color};
        uint32_t *frank = frame_ranks(p), *mods = sorted_modules(p);
        struct site_order order, by_allocs, by_leak;
        uint32_t leaking = 0;
        int r = 0;

        /* Each is set up before any can fail, so that all three can be freed. */
        int r1 = site_order_init(&order, p, opts->sort, frank);
        int r2 = site_order_init(&by_allocs, p, AP_SORT_ALLOCATIONS, frank);
        int r3 = site_order_init(&by_leak, p, AP_SORT_LEAKED, frank);
        if (r1 < 0 || r2 < 0 || r3 < 0 || (p->nmodules && !mods)) {
                r = -ENOMEM;
                goto out;
        }
        for (uint32_t i = 0; i < p->nsites; i++)
                leaking += p->sites[i].leaked_blocks > 0 || p->sites[i].leaked_bytes > 0;

        put_header(&o, p);
        put_summary(&o, p, leaking);
        put_hot_sites(&o, p, &order, opts);
        put_leaks(&o, p, &by_leak, leaking, opts->top);
        put_modules(&o, p, mods);
        put_histogram(&o, p);
        put_hints(&o, p, &by_allocs, &by_leak, leaking);
        if (fflush(out) != 0 || ferror(out))
                r = -EIO;
out:
        site_order_free(&order);
        site_order_free(&by_allocs);
        site_order_free(&by_leak);
        free(frank);
        free(mods);
        return r;
}

/* ------------------------------------------------------------------------------------ */
/* JSON report */

/* Written directly rather than built as a jansson tree: a report of every site of a big
 * profile has millions of frames, and a tree of them costs gigabytes and seconds.  The
 * layout is fixed, one value per line, except that each frame, module, histogram bucket
 * and timeline point is one line of its own. */


/* A JSON string, or null.  Control characters (C0, DEL, C1) are escaped, so the report is
 * safe to cat to a terminal; invalid UTF-8 becomes U+FFFD so it is always valid JSON. */
static void json_str(FILE *f, const char *s)
{
        const unsigned char *u = (const unsigned char *)s;

        if (!s) {
                fputs("null", f);
                return;
        }
        fputc('"', f);
        while (*u) {
                /* A run of plain printable ASCII goes out in one write. */
                const unsigned char *run = u;
                while (*u >= 0x20 && *u < 0x7f && *u != '"' && *u != '\\')
                        u++;
                if (u > run)
                        fwrite(run, 1, (size_t)(u - run), f);
                if (!*u)
                        break;
                size_t n = ap_utf8_len(u);

                if (n == 0) {
                        fputs("\xef\xbf\xbd", f);
                        u++;
                } else if (*u == '"' || *u == '\\') {
                        fputc('\\', f);
                        fputc(*u++, f);
                } else if (*u == '\n') {
                        fputs("\\n", f), u++;
                } else if (*u == '\t') {
                        fputs("\\t", f), u++;
                } else if (*u < 0x20 || *u == 0x7f) {
                        fprintf(f, "\\u%04x", *u++);
                } else if (n == 2 && u[0] == 0xc2 && u[1] < 0xa0) {
                        fprintf(f, "\\u%04x", u[1]);
                        u += 2;
                } else {
                        fwrite(u, 1, n, f);
                        u += n;
                }
        }
        fputc('"', f);
}

/* JSON integers are signed 64-bit: counters saturate (2^63 events cannot happen). */
static void json_u64(FILE *f, uint64_t v)
{
        fprintf(f, "%" PRIu64, v > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : v);
}

/* `"key": value` members, each on its own line at `indent`, comma-separated. */
struct jobj {
        FILE *f;
        const char *indent;
        bool first;
};

static void jkey(struct jobj *o, const char *key)
{
        fprintf(o->f, "%s\n%s\"%s\": ", o->first ? "" : ",", o->indent, key);
        o->first = false;
}

static void jkey_u64(struct jobj *o, const char *key, uint64_t v)
{
        jkey(o, key);
        json_u64(o->f, v);
}

static void jkey_str(struct jobj *o, const char *key, const char *v)
{
        jkey(o, key);
        json_str(o->f, v);
}

static void json_frame(FILE *f, const struct ap_profile *p, uint32_t idx)
{
        const struct ap_pframe *fr = pframe(p, idx);

        fputs("{\"function\": ", f);
        json_str(f, fr ? pstr(p, fr->function) : NULL);
        fputs(", \"file\": ", f);
        json_str(f, fr ? pstr(p, fr->file) : NULL);
        if (fr && fr->line)
                fprintf(f, ", \"line\": %" PRIu32, fr->line);
        else
                fputs(", \"line\": null", f);
        fputs(", \"module\": ", f);
        json_str(f, fr ? module_path(p, fr->module) : NULL);
        fprintf(f, ", \"address\": \"0x%" PRIx64 "\", \"inlined\": %s}", fr ? fr->address : 0,
                fr && fr->inlined ? "true" : "false");
}

static void json_site(FILE *f, const struct ap_profile *p, const struct ap_psite *s)
{
        struct jobj o = {f, "      ", true};

        fputs("    {", f);
        jkey_u64(&o, "allocations", s->allocations);
        jkey_u64(&o, "bytes", s->bytes);
        jkey_u64(&o, "frees", s->frees);
        jkey_u64(&o, "freed_bytes", s->freed_bytes);
        jkey_u64(&o, "leaked_blocks", s->leaked_blocks);
        jkey_u64(&o, "leaked_bytes", s->leaked_bytes);
        jkey_u64(&o, "peak_bytes", s->peak_bytes);
        jkey_u64(&o, "max_live_bytes", s->max_live_bytes);
        jkey_u64(&o, "temporary", s->temporary);
        jkey_u64(&o, "reallocs", s->reallocs);
        jkey(&o, "truncated");
        fputs(s->truncated ? "true" : "false", f);
        jkey(&o, "frames");
        fputc('[', f);
        for (uint32_t i = 0; i < s->nframes; i++) {
                fputs(i ? ",\n        " : "\n        ", f);
                json_frame(f, p, s->frames[i]);
        }
        fputs(s->nframes ? "\n      ]\n    }" : "]\n    }", f);
}

static void json_process(struct jobj *root, const struct ap_profile *p)
{
        FILE *f = root->f;
        struct jobj o = {f, "    ", true};

        jkey(root, "process");
        fputc('{', f);
        jkey_u64(&o, "pid", p->pid);
        jkey_u64(&o, "ppid", p->ppid);
        jkey(&o, "command");
        fputc('[', f);
        for (uint32_t i = 0; i < p->ncommand; i++) {
                if (i)
                        fputs(", ", f);
                json_str(f, p->command[i]);
        }
        fputc(']', f);
        jkey_str(&o, "exe", p->exe);
        jkey_str(&o, "run_id", p->run_id);
        jkey_str(&o, "foreign_malloc", p->foreign_malloc);
        if (p->merged_from > 1)
                jkey_u64(&o, "merged_from", p->merged_from);
        /* Like a shell's $?: 128 + signal when killed, so CI can compare one number.  A live
         * snapshot's process has not ended: neither applies. */
        jkey(&o, "exit_status");
        if (p->live)
                fputs("null", f);
        else if (p->term_signal > 0)
                fprintf(f, "%d", 128 + p->term_signal);
        else if (p->exit_status >= 0)
                fprintf(f, "%d", p->exit_status);
        else
                fputs("null", f);
        jkey(&o, "term_signal");
        if (p->term_signal > 0 && !p->live)
                fprintf(f, "%d", p->term_signal);
        else
                fputs("null", f);
        jkey(&o, "exec");
        if (p->by_exec) {
                fputs("{\"path\": ", f);
                if (p->exec_path)
                        json_str(f, p->exec_path);
                else
                        fputs("null", f);
                fprintf(f, ", \"profiled\": %s}", p->exec_profiled ? "true" : "false");
        } else {
                fputs("null", f);
        }
        jkey_u64(&o, "start_unix_ns", p->start_unix_ns);
        jkey_u64(&o, "duration_ns", p->duration_ns);
        jkey_u64(&o, "drain_cpu_ns", p->drain_cpu_ns);
        jkey_u64(&o, "ring_waits", p->ring_waits);
        jkey_u64(&o, "ring_wait_ns", p->ring_wait_ns);
        fputs("\n  }", f);
}

static void json_totals(struct jobj *root, const struct ap_profile *p)
{
        const typeof(p->totals) *t = &p->totals;
        struct jobj o = {root->f, "    ", true};

        jkey(root, "totals");
        fputc('{', root->f);
        jkey_u64(&o, "allocations", t->allocations);
        jkey_u64(&o, "bytes", t->bytes);
        jkey_u64(&o, "frees", t->frees);
        jkey_u64(&o, "freed_bytes", t->freed_bytes);
        jkey_u64(&o, "leaked_blocks", t->leaked_blocks);
        jkey_u64(&o, "leaked_bytes", t->leaked_bytes);
        jkey_u64(&o, "peak_bytes", t->peak_bytes);
        jkey_u64(&o, "peak_blocks", t->peak_blocks);
        jkey_u64(&o, "peak_t_ns", t->peak_t_ns);
        jkey_u64(&o, "temporary", t->temporary);
        jkey_u64(&o, "reallocs", t->reallocs);
        jkey_u64(&o, "dropped_events", t->dropped_events);
        jkey_u64(&o, "dropped_frees", t->dropped_frees);
        jkey_u64(&o, "dropped_no_ring", t->dropped_no_ring);
        jkey_u64(&o, "untracked_samples", t->untracked_samples);
        jkey_u64(&o, "unprofiled_children", t->unprofiled_children);
        jkey_u64(&o, "unmatched_frees", t->unmatched_frees);
        jkey_u64(&o, "invalid_records", t->invalid_records);
        jkey_u64(&o, "threads", t->threads);
        fputs("\n  }", root->f);
}

/* Opens the i-th element of a top-level array whose elements are one line each. */
static void json_row(FILE *f, uint32_t i)
{
        fputs(i ? ",\n    " : "\n    ", f);
}

static void json_end_rows(FILE *f, uint32_t n)
{
        fputs(n ? "\n  ]" : "]", f);
}

/* ------------------------------------------------------------------------------------ */
/* Folded stacks */

/* A frame's name as folded-stack tools (flamegraph.pl, inferno, speedscope) split it: their
 * separators cannot occur in it, so ';' becomes ':' and a control character '?' (a
 * profile's strings come from the profiled program's files). */
static void put_folded_str(FILE *f, const char *s)
{
        put_clean(f, s, ':');
}

/* The function; without one, module+0xADDR as perf's stackcollapse writes it. */
static void put_folded_frame(FILE *f, const struct ap_profile *p, const struct ap_pframe *fr)
{
        const char *fn = fr ? pstr(p, fr->function) : NULL;
        const char *mod = fr ? ap_path_base(module_path(p, fr->module)) : NULL;

        if (fn != NULL) {
                put_folded_str(f, fn);
                return;
        }
        if (mod != NULL) {
                put_folded_str(f, mod);
                fputc('+', f);
        }
        fprintf(f, "0x%" PRIx64, fr ? fr->address : 0);
}

static uint64_t site_value(const struct ap_psite *s, enum ap_sort sort)
{
        switch (sort) {
        case AP_SORT_ALLOCATIONS:
                return s->allocations;
        case AP_SORT_LEAKED:
                return s->leaked_bytes;
        case AP_SORT_PEAK:
                return s->peak_bytes;
        case AP_SORT_BYTES:
                break;
        }
        return s->bytes;
}

int ap_report_folded(FILE *out, const struct ap_profile *p, const struct ap_report_opts *opts)
{
        /* All sites in the file's order, or the first --top N in the --sort order. */
        const bool ordered = opts->top != 0;
        uint32_t *frank = ordered ? frame_ranks(p) : NULL;
        struct site_order order = {0};
        int r = ordered ? site_order_init(&order, p, opts->sort, frank) : 0;

        if (r < 0)
                goto out;
        for (uint32_t i = 0, n = shown(opts->top, p->nsites); i < n; i++) {
                const struct ap_psite *s = &p->sites[ordered ? site_at(&order, i) : i];
                uint64_t v = site_value(s, opts->sort);
                if (v == 0)
                        continue;
                /* Outermost first; a cut stack under a root of its own, not among the
                 * stacks that start in main. */
                if (s->truncated)
                        fputs("[truncated];", out);
                if (s->nframes == 0)
                        fputs("[no stack]", out);
                for (uint32_t k = s->nframes; k-- > 0;) {
                        put_folded_frame(out, p, pframe(p, s->frames[k]));
                        if (k > 0)
                                fputc(';', out);
                }
                fprintf(out, " %" PRIu64 "\n", v);
        }
        if (fflush(out) != 0 || ferror(out))
                r = -EIO;
out:
        site_order_free(&order);
        free(frank);
        return r;
}

int ap_report_json(FILE *out, const struct ap_profile *p, const struct ap_report_opts *opts)
{
        uint32_t *frank = frame_ranks(p), *mods = sorted_modules(p);
        uint32_t n = shown(opts->top, p->nsites), rows = 0;
        struct site_order order;
        struct jobj root = {out, "  ", true};
        int r = site_order_init(&order, p, opts->sort, frank);

        if (r < 0 || (p->nmodules && !mods)) {
                r = -ENOMEM;
                goto out;
        }
        fputc('{', out);
        jkey_u64(&root, "schema_version", JSON_REPORT_SCHEMA_VERSION);
        jkey(&root, "tool");
        fputs("{\"name\": \"allocprof\", \"version\": ", out);
        json_str(out, p->tool_version);
        fputc('}', out);
        json_process(&root, p);
        jkey(&root, "live");
        fputs(p->live ? "true" : "false", out);
        jkey_str(&root, "mode", p->mode);
        jkey_u64(&root, "sample_interval", p->sample_interval);
        jkey_u64(&root, "sample_interval_min",
                 p->sample_interval_min ? p->sample_interval_min : p->sample_interval);
        jkey_u64(&root, "sample_interval_max",
                 p->sample_interval_max ? p->sample_interval_max : p->sample_interval);
        jkey(&root, "estimated");
        fputs(is_estimate(p) ? "true" : "false", out);
        json_totals(&root, p);
        jkey_str(&root, "sort", sort_name(opts->sort));
        jkey_u64(&root, "sites_total", p->nsites);

        jkey(&root, "sites");
        fputc('[', out);
        for (uint32_t i = 0; i < n; i++) {
                fputs(i ? ",\n" : "\n", out);
                json_site(out, p, &p->sites[site_at(&order, i)]);
        }
        fputs(n ? "\n  ]" : "]", out);

        jkey(&root, "modules");
        fputc('[', out);
        for (uint32_t i = 0; i < p->nmodules; i++) {
                const struct ap_pmodule *m = &p->modules[mods[i]];

                json_row(out, i);
                fputs("{\"path\": ", out);
                json_str(out, pstr(p, m->path));
                fputs(", \"build_id\": ", out);
                json_str(out, pstr(p, m->build_id));
                fputs(", \"allocations\": ", out);
                json_u64(out, m->allocations);
                fputs(", \"bytes\": ", out);
                json_u64(out, m->bytes);
                fputs(", \"leaked_blocks\": ", out);
                json_u64(out, m->leaked_blocks);
                fputs(", \"leaked_bytes\": ", out);
                json_u64(out, m->leaked_bytes);
                fputc('}', out);
        }
        json_end_rows(out, p->nmodules);

        jkey(&root, "histogram");
        fputc('[', out);
        for (unsigned i = 0; i < AP_HIST_BUCKETS; i++) {
                if (p->hist_count[i] == 0 && p->hist_bytes[i] == 0)
                        continue;
                json_row(out, rows++);
                fputs("{\"min\": ", out);
                json_u64(out, bucket_min(i));
                fputs(", \"max\": ", out);
                json_u64(out, bucket_max(i));
                fputs(", \"count\": ", out);
                json_u64(out, p->hist_count[i]);
                fputs(", \"bytes\": ", out);
                json_u64(out, p->hist_bytes[i]);
                fputc('}', out);
        }
        json_end_rows(out, rows);

        jkey(&root, "timeline");
        fputc('[', out);
        for (uint32_t i = 0; i < p->ntimeline; i++) {
                json_row(out, i);
                fputs("{\"t_ns\": ", out);
                json_u64(out, p->timeline[i].t_ns);
                fputs(", \"live_bytes\": ", out);
                json_u64(out, p->timeline[i].live_bytes);
                fputs(", \"allocations\": ", out);
                json_u64(out, p->timeline[i].allocations);
                fputc('}', out);
        }
        json_end_rows(out, p->ntimeline);
        fputs("\n}\n", out);
        if (fflush(out) != 0 || ferror(out))
                r = -EIO;
out:
        site_order_free(&order);
        free(frank);
        free(mods);
        return r;
}

/* ------------------------------------------------------------------------------------ */
/* Summary for `allocprof run` */

/* Whether a path can be pasted into a shell as is. */
static bool shell_safe(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                            "_-+.,/:=@%",
                            *s))
                        return false;
        return true;
}

static void put_shell_word(const struct out *o, const char *s)
{
        if (shell_safe(s)) {
                put_str(o, s, 0);
                return;
        }
        fputc('\'', o->f);
        for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
                if (*c == '\'')
                        fputs("'\\''", o->f);
                else
                        fputc(*c < 0x20 || *c == 0x7f ? '?' : *c, o->f);
        }
        fputc('\'', o->f);
}

void ap_report_summary(FILE *out, const struct ap_profile *p, const char *profile_path)
{
        /* Composed in memory and written at once: stderr is unbuffered, and the path alone
         * took a write per character. */
        char *buf = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&buf, &len);
        const struct out o = {mem ? mem : out, false};
        const typeof(p->totals) *t = &p->totals;
        uint32_t *frank = frame_ranks(p);
        struct site_order order;
        bool ordered = site_order_init(&order, p, AP_SORT_BYTES, frank) == 0;
        uint32_t n = shown(3, p->nsites);

        say(&o, "allocprof: %s allocations (%s), %s frees, peak %s in %s blocks%s\n",
            fmt_count(t->allocations).s, fmt_size(t->bytes).s, fmt_count(t->frees).s,
            fmt_size(t->peak_bytes).s, fmt_count(t->peak_blocks).s,
            is_estimate(p) ? " (estimated)" : "");
        if (p->by_exec) {
                say(&o, "allocprof: pid %" PRIu32 " (%s) was replaced by an exec of ", p->pid,
                    p->exe ? ap_path_base(p->exe) : "?");
                put_str(&o, p->exec_path ? p->exec_path : "a program", 0);
                say(&o, "%s\n",
                    p->exec_profiled ? ", which has a profile of its own"
                                     : ", which could not be profiled: this "
                                       "profile ends at the exec");
        }
        /* The first line's "(estimated)" reads as the peak's: the leak line says it too. */
        const char *est = is_estimate(p) ? " (estimated)" : "";
        if (p->live && t->leaked_blocks)
                say(&o, "allocprof: %s in %s block%s live now%s\n", fmt_size(t->leaked_bytes).s,
                    fmt_count(t->leaked_blocks).s, t->leaked_blocks == 1 ? "" : "s", est);
        else if (p->live)
                say(&o, "allocprof: nothing live now\n");
        else if (p->by_exec && t->leaked_blocks)
                say(&o,
                    "allocprof: %s in %s block%s live at the exec (not leaks: the exec replaced "
                    "the image)%s\n",
                    fmt_size(t->leaked_bytes).s, fmt_count(t->leaked_blocks).s,
                    t->leaked_blocks == 1 ? "" : "s", est);
        else if (p->by_exec)
                say(&o, "allocprof: nothing live at the exec\n");
        else if (t->leaked_blocks)
                say(&o, "allocprof: leaked %s in %s block%s%s\n", fmt_size(t->leaked_bytes).s,
                    fmt_count(t->leaked_blocks).s, t->leaked_blocks == 1 ? "" : "s", est);
        else if (is_estimate(p))
                say(&o, "allocprof: no leaks among the sampled blocks\n");
        else
                say(&o, "allocprof: no leaks\n");
        if (ordered && n > 0) {
                say(&o, "allocprof: top call sites by bytes:\n");
                for (uint32_t i = 0; i < n; i++) {
                        const struct ap_psite *s = &p->sites[site_at(&order, i)];

                        say(&o, "allocprof:   %10s in %9s call%s  ", fmt_size(s->bytes).s,
                            fmt_count(s->allocations).s, s->allocations == 1 ? " " : "s");
                        put_site_label(&o, p, s);
                        say(&o, "\n");
                }
        }
        if (t->dropped_events) {
                say(&o, "allocprof: warning: %s events were dropped",
                    fmt_count(t->dropped_events).s);
                if (t->dropped_frees)
                        say(&o, " (%s frees: %s may be overstated)", fmt_count(t->dropped_frees).s,
                            not_leaks(p) ? "live blocks" : "leaks");
                say(&o, "; figures are incomplete\n");
                if (t->dropped_no_ring)
                        say(&o,
                            "allocprof: %s of them by threads that had no ring to record into "
                            "(too many threads at once, ulimit -v, or a sandbox that refuses "
                            "mremap, such as valgrind)\n",
                            fmt_count(t->dropped_no_ring).s);
        }
        if (t->untracked_samples)
                say(&o,
                    "allocprof: warning: %s sampled blocks were not tracked (the agent's "
                    "set of sampled blocks was full): %s may be overstated\n",
                    fmt_count(t->untracked_samples).s, not_leaks(p) ? "live blocks" : "leaks");
        /* Malformed, or more than the collector had memory for: either way not counted. */
        if (t->invalid_records)
                say(&o,
                    "allocprof: warning: %s records from the process were malformed or could "
                    "not be kept, and were ignored; figures are incomplete\n",
                    fmt_count(t->invalid_records).s);
        /* ring_wait_ns adds up the waits of every thread: with several, it can exceed the
         * run (200 threads that outran the collector for 4 s waited 4 min 23 s in all). */
        if (waited_notably(p) && t->threads > 1)
                say(&o,
                    "allocprof: the program's threads waited %s in all for the collector (their "
                    "rings were full %s times)\n",
                    fmt_duration(p->ring_wait_ns).s, fmt_count(p->ring_waits).s);
        else if (waited_notably(p))
                say(&o, "allocprof: the program waited %s for the collector (its ring was full %s times)\n",
                    fmt_duration(p->ring_wait_ns).s, fmt_count(p->ring_waits).s);
        if (profile_path) {
                say(&o, "allocprof: profile written to ");
                put_str(&o, profile_path, 0);
                /* Into a device, a FIFO or a redirected standard output (-o /dev/null,
                 * -o /dev/stdout): there is nothing to view there. */
                if (ap_profile_dest_of(profile_path) == AP_DEST_FILE) {
                        say(&o, "\nallocprof: view it with: allocprof report ");
                        put_shell_word(&o, profile_path);
                }
                say(&o, "\n");
        }
        if (mem != NULL && fclose(mem) == 0)
                fwrite(buf, 1, len, out);
        free(buf);
        fflush(out);
        site_order_free(&order);
        free(frank);
}
