/* Tests for the report renderers and `allocprof report`: the JSON report parsed back with
 * exact values, names and order; the text report's content and colors; the run summary;
 * and the command's file selection, options and exit statuses.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <fcntl.h>
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../helpers.h"
#include "merge.h"
#include "report.h"

static char tmpdir[] = "/tmp/ap-test-report.XXXXXX";

/* ---- a known profile ---------------------------------------------------------------- */

enum { M_EXE, M_LIBC, M_STDCXX, M_ZLIB, NMODULES };

struct fspec {
        const char *function, *file;
        uint32_t line, module;
        uint64_t address;
        bool inlined;
};

static char *xstrdup(const char *s)
{
        char *c = strdup(s);

        ASSERT_NOT_NULL(c);
        return c;
}

static uint32_t frame(struct ap_profile *p, const struct fspec *f)
{
        struct ap_pframe *fr;

        p->frames = reallocarray(p->frames, p->nframes + 1, sizeof(*p->frames));
        ASSERT_NOT_NULL(p->frames);
        fr = &p->frames[p->nframes];
        fr->function = f->function ? ap_profile_intern(p, f->function) : AP_NONE;
        fr->file = f->file ? ap_profile_intern(p, f->file) : AP_NONE;
        fr->line = f->line;
        fr->module = f->module;
        fr->address = f->address;
        fr->inlined = f->inlined;
        return p->nframes++;
}

/* Appends a site; also adds it to the totals and to the module of its innermost frame, so
 * the profile stays self-consistent. */
static struct ap_psite *site(struct ap_profile *p, struct ap_psite counters, size_t nframes,
                             const struct fspec *frames)
{
        struct ap_psite *s;

        p->sites = reallocarray(p->sites, p->nsites + 1, sizeof(*p->sites));
        ASSERT_NOT_NULL(p->sites);
        s = &p->sites[p->nsites++];
        *s = counters;
        s->nframes = (uint32_t)nframes;
        s->frames = nframes ? calloc(nframes, sizeof(uint32_t)) : NULL;
        for (size_t i = 0; i < nframes; i++)
                s->frames[i] = frame(p, &frames[i]);

        p->totals.allocations += s->allocations;
        p->totals.bytes += s->bytes;
        p->totals.frees += s->frees;
        p->totals.freed_bytes += s->freed_bytes;
        p->totals.leaked_blocks += s->leaked_blocks;
        p->totals.leaked_bytes += s->leaked_bytes;
        p->totals.temporary += s->temporary;
        p->totals.reallocs += s->reallocs;
        if (nframes && frames[0].module != AP_NONE) {
                struct ap_pmodule *m = &p->modules[frames[0].module];

                m->allocations += s->allocations;
                m->bytes += s->bytes;
                m->leaked_blocks += s->leaked_blocks;
                m->leaked_bytes += s->leaked_bytes;
        }
        return s;
}

/* The C runtime's frames outside main(), as glibc has them. */
/* clang-format off */
#define START_FRAMES                                                                        \
        {"__libc_start_call_main", "../sysdeps/nptl/libc_start_call_main.h", 58, M_LIBC,    \
         0x271c9, false},                                                                   \
        {"__libc_start_main_impl", "../csu/libc-start.c", 360, M_LIBC, 0x27284, false},     \
        {"_start", NULL, 0, M_EXE, 0x1a80, false}
/* clang-format on */

/* A small C/C++ program: a tree of small temporary nodes (pool hint), a string buffer
 * grown by realloc (realloc hint), a config blob never freed (leak hint), a vector, an
 * unsymbolized library, a deep recursion and a site without a stack. */
static struct ap_profile *build_known(void)
{
        struct ap_profile *p = ap_profile_new();
        static const char *const libs[NMODULES] = {"/usr/local/bin/tree-bench",
                                                   "/usr/lib/x86_64-linux-gnu/libc.so.6",
                                                   "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
                                                   "/usr/lib/x86_64-linux-gnu/libz.so.1"};
        struct fspec deep[13];

        ASSERT_NOT_NULL(p);
        p->tool_version = xstrdup("0.1.0");
        p->pid = 4242;
        p->ppid = 4200;
        p->ncommand = 3;
        p->command = calloc(3, sizeof(char *));
        p->command[0] = xstrdup("./tree-bench");
        p->command[1] = xstrdup("--size");
        p->command[2] = xstrdup("1000");
        p->exe = xstrdup("/usr/local/bin/tree-bench");
        p->exit_status = 0;
        p->mode = xstrdup("full");
        p->duration_ns = 2345000000ull;
        p->start_unix_ns = 1732575000000000000ull;

        p->modules = calloc(NMODULES, sizeof(*p->modules));
        p->nmodules = NMODULES;
        for (unsigned i = 0; i < NMODULES; i++) {
                p->modules[i].path = ap_profile_intern(p, libs[i]);
                p->modules[i].build_id = AP_NONE;
        }
        p->modules[M_EXE].build_id = ap_profile_intern(p, "3f2a9c0d1e");

        /* 0: pool candidate. */
        site(p,
             (struct ap_psite){.allocations = 50000,
                               .bytes = 1600000,
                               .frees = 50000,
                               .freed_bytes = 1600000,
                               .peak_bytes = 32000,
                               .max_live_bytes = 64000,
                               .temporary = 45000},
             7,
             (struct fspec[]){{"make_node", "src/tree.c", 42, M_EXE, 0x2210, true},
                              {"tree_insert", "src/tree.c", 97, M_EXE, 0x2210, false},
                              {"build_tree", "src/tree.c", 130, M_EXE, 0x23f0, false},
                              {"main", "src/main.c", 31, M_EXE, 0x1b40, false},
                              START_FRAMES});
        /* 1: realloc growth loop. */
        site(p,
             (struct ap_psite){.allocations = 2400,
                               .bytes = 9000000,
                               .frees = 2400,
                               .freed_bytes = 9000000,
                               .peak_bytes = 1048576,
                               .max_live_bytes = 2097152,
                               .temporary = 100,
                               .reallocs = 2300},
             3,
             (struct fspec[]){{"strbuf_append", "src/strbuf.c", 58, M_EXE, 0x3120, false},
                              {"format_report", "src/report.c", 210, M_EXE, 0x3400, false},
                              {"main", "src/main.c", 40, M_EXE, 0x1b80, false}});
        /* 2: one big leak. */
        site(p,
             (struct ap_psite){.allocations = 1,
                               .bytes = 4194304,
                               .leaked_blocks = 1,
                               .leaked_bytes = 4194304,
                               .peak_bytes = 4194304,
                               .max_live_bytes = 4194304},
             2,
             (struct fspec[]){{"load_config", "src/config.c", 88, M_EXE, 0x4010, false},
                              {"main", "src/main.c", 22, M_EXE, 0x1b10, false}});
        /* 3: C++ vector growth, three small leaks. */
        site(p,
             (struct ap_psite){.allocations = 300,
                               .bytes = 2000000,
                               .frees = 297,
                               .freed_bytes = 1998800,
                               .leaked_blocks = 3,
                               .leaked_bytes = 1200,
                               .peak_bytes = 600000,
                               .max_live_bytes = 700000,
                               .temporary = 10},
             3,
             (struct fspec[]){
                     {"std::vector<Node*, std::allocator<Node*> >::_M_realloc_insert(Node* const&)",
                      "/usr/include/c++/12/bits/vector.tcc", 449, M_STDCXX, 0xa5f10, false},
                     {"Tree::rebalance()", "src/tree.cc", 210, M_EXE, 0x5200, false},
                     {"main", "src/main.c", 35, M_EXE, 0x1b60, false}});
        /* 4: no symbols at all. */
        site(p,
             (struct ap_psite){.allocations = 10,
                               .bytes = 640,
                               .frees = 10,
                               .freed_bytes = 640,
                               .peak_bytes = 64,
                               .max_live_bytes = 128},
             2,
             (struct fspec[]){{NULL, NULL, 0, M_ZLIB, 0x7bc0, false},
                              {NULL, NULL, 0, AP_NONE, 0xdeadbeef, false}});
        /* 5: deep recursion, leaks. */
        for (unsigned i = 0; i < 12; i++)
                deep[i] = (struct fspec){"recurse", "src/deep.c", 5 + (i == 0),
                                         M_EXE,     0x6000 + i,   false};
        deep[12] = (struct fspec){"main", "src/main.c", 44, M_EXE, 0x1ba0, false};
        site(p,
             (struct ap_psite){.allocations = 20,
                               .bytes = 2000,
                               .leaked_blocks = 20,
                               .leaked_bytes = 2000,
                               .peak_bytes = 2000,
                               .max_live_bytes = 2000},
             13, deep);
        /* 6: no stack. */
        site(p,
             (struct ap_psite){.allocations = 5,
                               .bytes = 50,
                               .frees = 5,
                               .freed_bytes = 50,
                               .peak_bytes = 10,
                               .max_live_bytes = 20},
             0, NULL);

        p->totals.peak_bytes = 5878272;
        p->totals.peak_blocks = 1234;
        p->totals.peak_t_ns = 1200000000;
        p->totals.threads = 2;

        p->hist_count[0] = 1;
        p->hist_count[5] = 40000;
        p->hist_bytes[5] = 1280000;
        p->hist_count[6] = 10000;
        p->hist_bytes[6] = 320000;
        p->hist_count[13] = 2400;
        p->hist_bytes[13] = 9000000;
        p->hist_count[23] = 1;
        p->hist_bytes[23] = 4194304;

        p->ntimeline = 2;
        p->timeline = calloc(2, sizeof(*p->timeline));
        p->timeline[0] =
                (struct ap_ptimepoint){.t_ns = 1000, .live_bytes = 4194304, .allocations = 1};
        p->timeline[1] = (struct ap_ptimepoint){
                .t_ns = 1200000000, .live_bytes = 5878272, .allocations = 40000};
        return p;
}

/* ---- capturing output --------------------------------------------------------------- */

struct capture {
        char *text;
        size_t len;
        FILE *f;
};

static void capture_begin(struct capture *c)
{
        c->text = NULL;
        c->len = 0;
        c->f = open_memstream(&c->text, &c->len);
        ASSERT_NOT_NULL(c->f);
}

static char *capture_end(struct capture *c)
{
        ASSERT_EQ(fclose(c->f), 0);
        return c->text;
}

static char *render_text(const struct ap_profile *p, unsigned top, enum ap_sort sort, bool color)
{
        struct ap_report_opts o = {.top = top, .sort = sort, .color = color};
        struct capture c;

        capture_begin(&c);
        ASSERT_OK(ap_report_text(c.f, p, &o));
        return capture_end(&c);
}

/* What `allocprof run` prints at its end for p (profile_path: where it says p went). */
static char *summary_text(const struct ap_profile *p, const char *profile_path)
{
        struct capture c;

        capture_begin(&c);
        ap_report_summary(c.f, p, profile_path);
        return capture_end(&c);
}

static json_t *render_json(const struct ap_profile *p, unsigned top, enum ap_sort sort)
{
        struct ap_report_opts o = {.top = top, .sort = sort, .color = true};
        struct capture c;
        json_error_t jerr;
        json_t *doc;

        capture_begin(&c);
        ASSERT_OK(ap_report_json(c.f, p, &o));
        capture_end(&c);
        ASSERT_NOT_CONTAINS(c.text, "\033"); /* JSON never has colors */
        doc = json_loads(c.text, JSON_REJECT_DUPLICATES, &jerr);
        if (!doc)
                fprintf(stderr, "JSON report does not parse: %s\n%s\n", jerr.text, c.text);
        ASSERT_NOT_NULL(doc);
        free(c.text);
        return doc;
}

/* ---- JSON accessors ----------------------------------------------------------------- */

static json_t *jget(json_t *obj, const char *key)
{
        json_t *v = json_object_get(obj, key);

        if (!v)
                fprintf(stderr, "missing key \"%s\"\n", key);
        ASSERT_NOT_NULL(v);
        return v;
}

static long long jint(json_t *obj, const char *key)
{
        json_t *v = jget(obj, key);

        ASSERT_TRUE(json_is_integer(v));
        return json_integer_value(v);
}

static const char *jstring(json_t *obj, const char *key)
{
        json_t *v = jget(obj, key);

        ASSERT_TRUE(json_is_string(v));
        return json_string_value(v);
}

static void assert_null(json_t *obj, const char *key)
{
        ASSERT_TRUE(json_is_null(jget(obj, key)));
}

/* Asserts that obj has exactly the given keys. */
static void assert_keys(json_t *obj, const char *const *keys)
{
        size_t n = 0;

        ASSERT_TRUE(json_is_object(obj));
        for (; keys[n]; n++)
                jget(obj, keys[n]);
        ASSERT_EQ(json_object_size(obj), n);
}

static const char *site_function(json_t *doc, size_t i)
{
        json_t *frames = jget(json_array_get(jget(doc, "sites"), i), "frames");
        json_t *f0 = json_array_get(frames, 0);

        if (!f0)
                return "(none)";
        return json_is_null(jget(f0, "function")) ? "(null)" : jstring(f0, "function");
}

/* Checks the report's site order by the innermost function names ("(none)" = no frames,
 * "(null)" = unknown function). */
static void assert_order(json_t *doc, const char *const *functions)
{
        size_t n = 0;

        for (; functions[n]; n++)
                ASSERT_STREQ(site_function(doc, n), functions[n]);
        ASSERT_EQ(json_array_size(jget(doc, "sites")), n);
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_json_schema(void)
{
        struct ap_profile *p = build_known();
        json_t *doc = render_json(p, 0, AP_SORT_BYTES), *o, *s, *f;
        static const char *const root_keys[] = {"schema_version",
                                                "tool",
                                                "process",
                                                "live",
                                                "mode",
                                                "sample_interval",
                                                "sample_interval_min",
                                                "sample_interval_max",
                                                "estimated",
                                                "totals",
                                                "sort",
                                                "sites_total",
                                                "sites",
                                                "modules",
                                                "histogram",
                                                "timeline",
                                                NULL};
        static const char *const process_keys[] = {
                "pid",        "ppid",           "command",     "exe",
                "run_id",     "foreign_malloc", "exit_status", "term_signal",
                "exec",       "start_unix_ns",  "duration_ns", "drain_cpu_ns",
                "ring_waits", "ring_wait_ns",   NULL};
        static const char *const totals_keys[] = {"allocations",
                                                  "bytes",
                                                  "frees",
                                                  "freed_bytes",
                                                  "leaked_blocks",
                                                  "leaked_bytes",
                                                  "peak_bytes",
                                                  "peak_blocks",
                                                  "peak_t_ns",
                                                  "temporary",
                                                  "reallocs",
                                                  "dropped_events",
                                                  "dropped_frees",
                                                  "dropped_no_ring",
                                                  "untracked_samples",
                                                  "unprofiled_children",
                                                  "unmatched_frees",
                                                  "invalid_records",
                                                  "threads",
                                                  NULL};
        static const char *const site_keys[] = {"allocations", "bytes",          "frees",
                                                "freed_bytes", "leaked_blocks",  "leaked_bytes",
                                                "peak_bytes",  "max_live_bytes", "temporary",
                                                "reallocs",    "truncated",      "frames",
                                                NULL};
        static const char *const frame_keys[] = {"function", "file",    "line", "module",
                                                 "address",  "inlined", NULL};
        static const char *const module_keys[] = {
                "path", "build_id", "allocations", "bytes", "leaked_blocks", "leaked_bytes", NULL};
        static const char *const hist_keys[] = {"min", "max", "count", "bytes", NULL};
        static const char *const time_keys[] = {"t_ns", "live_bytes", "allocations", NULL};

        assert_keys(doc, root_keys);
        ASSERT_EQ(jint(doc, "schema_version"), 1);
        ASSERT_STREQ(jstring(jget(doc, "tool"), "name"), "allocprof");
        ASSERT_STREQ(jstring(jget(doc, "tool"), "version"), "0.1.0");
        ASSERT_TRUE(json_is_false(jget(doc, "live")));
        ASSERT_STREQ(jstring(doc, "mode"), "full");
        ASSERT_EQ(jint(doc, "sample_interval"), 0);
        ASSERT_EQ(jint(doc, "sample_interval_min"), 0);
        ASSERT_EQ(jint(doc, "sample_interval_max"), 0);
        ASSERT_TRUE(json_is_false(jget(doc, "estimated")));
        ASSERT_STREQ(jstring(doc, "sort"), "bytes");
        ASSERT_EQ(jint(doc, "sites_total"), 7);

        o = jget(doc, "process");
        assert_keys(o, process_keys);
        ASSERT_EQ(jint(o, "pid"), 4242);
        ASSERT_EQ(jint(o, "ppid"), 4200);
        ASSERT_EQ(json_array_size(jget(o, "command")), 3u);
        ASSERT_STREQ(json_string_value(json_array_get(jget(o, "command"), 1)), "--size");
        ASSERT_STREQ(jstring(o, "exe"), "/usr/local/bin/tree-bench");
        ASSERT_EQ(jint(o, "exit_status"), 0);
        assert_null(o, "term_signal");
        ASSERT_EQ(jint(o, "duration_ns"), 2345000000ll);
        ASSERT_EQ(jint(o, "drain_cpu_ns"), 0ll); /* not measured for a hand-made profile */
        ASSERT_EQ(jint(o, "ring_waits"), 0ll);
        ASSERT_EQ(jint(o, "ring_wait_ns"), 0ll);
        ASSERT_EQ(jint(o, "start_unix_ns"), 1732575000000000000ll);

        o = jget(doc, "totals");
        assert_keys(o, totals_keys);
        ASSERT_EQ(jint(o, "allocations"), 52736);
        ASSERT_EQ(jint(o, "bytes"), 16796994);
        ASSERT_EQ(jint(o, "frees"), 52712);
        ASSERT_EQ(jint(o, "freed_bytes"), 12599490);
        ASSERT_EQ(jint(o, "leaked_blocks"), 24);
        ASSERT_EQ(jint(o, "leaked_bytes"), 4197504);
        ASSERT_EQ(jint(o, "peak_bytes"), 5878272);
        ASSERT_EQ(jint(o, "peak_blocks"), 1234);
        ASSERT_EQ(jint(o, "peak_t_ns"), 1200000000);
        ASSERT_EQ(jint(o, "temporary"), 45110);
        ASSERT_EQ(jint(o, "reallocs"), 2300);
        ASSERT_EQ(jint(o, "dropped_events"), 0);
        ASSERT_EQ(jint(o, "threads"), 2);

        /* Sites by bytes, each with every counter. */
        assert_order(
                doc,
                (const char *const[]){
                        "strbuf_append", "load_config",
                        "std::vector<Node*, std::allocator<Node*> >::_M_realloc_insert(Node* const&)",
                        "make_node", "recurse", "(null)", "(none)", NULL});
        s = json_array_get(jget(doc, "sites"), 0);
        assert_keys(s, site_keys);
        ASSERT_EQ(jint(s, "allocations"), 2400);
        ASSERT_EQ(jint(s, "bytes"), 9000000);
        ASSERT_EQ(jint(s, "frees"), 2400);
        ASSERT_EQ(jint(s, "freed_bytes"), 9000000);
        ASSERT_EQ(jint(s, "leaked_blocks"), 0);
        ASSERT_EQ(jint(s, "leaked_bytes"), 0);
        ASSERT_EQ(jint(s, "peak_bytes"), 1048576);
        ASSERT_EQ(jint(s, "max_live_bytes"), 2097152);
        ASSERT_EQ(jint(s, "temporary"), 100);
        ASSERT_EQ(jint(s, "reallocs"), 2300);
        ASSERT_EQ(json_array_size(jget(s, "frames")), 3u);
        f = json_array_get(jget(s, "frames"), 1);
        assert_keys(f, frame_keys);
        ASSERT_STREQ(jstring(f, "function"), "format_report");
        ASSERT_STREQ(jstring(f, "file"), "src/report.c");
        ASSERT_EQ(jint(f, "line"), 210);
        ASSERT_STREQ(jstring(f, "module"), "/usr/local/bin/tree-bench");
        ASSERT_STREQ(jstring(f, "address"), "0x3400");
        ASSERT_TRUE(json_is_false(jget(f, "inlined")));

        /* Inlined frame, innermost first. */
        s = json_array_get(jget(doc, "sites"), 3);
        f = json_array_get(jget(s, "frames"), 0);
        ASSERT_TRUE(json_is_true(jget(f, "inlined")));
        ASSERT_STREQ(jstring(json_array_get(jget(s, "frames"), 6), "function"), "_start");
        assert_null(json_array_get(jget(s, "frames"), 6), "file");
        assert_null(json_array_get(jget(s, "frames"), 6), "line");

        /* Unknown everything: nulls, but the address is always there. */
        s = json_array_get(jget(doc, "sites"), 5);
        f = json_array_get(jget(s, "frames"), 1);
        assert_keys(f, frame_keys);
        assert_null(f, "function");
        assert_null(f, "file");
        assert_null(f, "line");
        assert_null(f, "module");
        ASSERT_STREQ(jstring(f, "address"), "0xdeadbeef");
        ASSERT_STREQ(jstring(json_array_get(jget(s, "frames"), 0), "module"),
                     "/usr/lib/x86_64-linux-gnu/libz.so.1");
        s = json_array_get(jget(doc, "sites"), 6);
        ASSERT_EQ(json_array_size(jget(s, "frames")), 0u);
        ASSERT_EQ(jint(s, "allocations"), 5);

        /* Modules by bytes, all of them. */
        o = jget(doc, "modules");
        ASSERT_EQ(json_array_size(o), 4u);
        assert_keys(json_array_get(o, 0), module_keys);
        ASSERT_STREQ(jstring(json_array_get(o, 0), "path"), "/usr/local/bin/tree-bench");
        ASSERT_STREQ(jstring(json_array_get(o, 0), "build_id"), "3f2a9c0d1e");
        ASSERT_EQ(jint(json_array_get(o, 0), "allocations"), 52421);
        ASSERT_EQ(jint(json_array_get(o, 0), "bytes"), 14796304);
        ASSERT_EQ(jint(json_array_get(o, 0), "leaked_blocks"), 21);
        ASSERT_EQ(jint(json_array_get(o, 0), "leaked_bytes"), 4196304);
        ASSERT_STREQ(jstring(json_array_get(o, 1), "path"),
                     "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30");
        assert_null(json_array_get(o, 1), "build_id");
        ASSERT_STREQ(jstring(json_array_get(o, 2), "path"), "/usr/lib/x86_64-linux-gnu/libz.so.1");
        ASSERT_STREQ(jstring(json_array_get(o, 3), "path"), "/usr/lib/x86_64-linux-gnu/libc.so.6");
        ASSERT_EQ(jint(json_array_get(o, 3), "allocations"), 0);

        /* Histogram: non-empty buckets only, inclusive bounds. */
        o = jget(doc, "histogram");
        ASSERT_EQ(json_array_size(o), 5u);
        assert_keys(json_array_get(o, 0), hist_keys);
        ASSERT_EQ(jint(json_array_get(o, 0), "min"), 0);
        ASSERT_EQ(jint(json_array_get(o, 0), "max"), 0);
        ASSERT_EQ(jint(json_array_get(o, 0), "count"), 1);
        ASSERT_EQ(jint(json_array_get(o, 1), "min"), 16);
        ASSERT_EQ(jint(json_array_get(o, 1), "max"), 31);
        ASSERT_EQ(jint(json_array_get(o, 1), "count"), 40000);
        ASSERT_EQ(jint(json_array_get(o, 1), "bytes"), 1280000);
        ASSERT_EQ(jint(json_array_get(o, 4), "min"), 4194304);
        ASSERT_EQ(jint(json_array_get(o, 4), "max"), 8388607);

        o = jget(doc, "timeline");
        ASSERT_EQ(json_array_size(o), 2u);
        assert_keys(json_array_get(o, 1), time_keys);
        ASSERT_EQ(jint(json_array_get(o, 1), "t_ns"), 1200000000);
        ASSERT_EQ(jint(json_array_get(o, 1), "live_bytes"), 5878272);
        ASSERT_EQ(jint(json_array_get(o, 1), "allocations"), 40000);

        json_decref(doc);
        ap_profile_free(p);
}

static void test_json_sort_and_top(void)
{
        struct ap_profile *p = build_known();
        json_t *doc;

        doc = render_json(p, 2, AP_SORT_BYTES);
        assert_order(doc, (const char *const[]){"strbuf_append", "load_config", NULL});
        ASSERT_EQ(jint(doc, "sites_total"), 7);
        ASSERT_EQ(json_array_size(jget(doc, "modules")), 4u); /* --top limits sites only */
        json_decref(doc);

        doc = render_json(p, 0, AP_SORT_ALLOCATIONS);
        ASSERT_STREQ(jstring(doc, "sort"), "allocations");
        assert_order(
                doc,
                (const char *const[]){
                        "make_node", "strbuf_append",
                        "std::vector<Node*, std::allocator<Node*> >::_M_realloc_insert(Node* const&)",
                        "recurse", "(null)", "(none)", "load_config", NULL});
        json_decref(doc);

        /* Leaks first (by leaked bytes); sites without leaks follow by bytes. */
        doc = render_json(p, 0, AP_SORT_LEAKED);
        assert_order(
                doc,
                (const char *const[]){
                        "load_config", "recurse",
                        "std::vector<Node*, std::allocator<Node*> >::_M_realloc_insert(Node* const&)",
                        "strbuf_append", "make_node", "(null)", "(none)", NULL});
        json_decref(doc);

        doc = render_json(p, 3, AP_SORT_PEAK);
        assert_order(
                doc,
                (const char *const[]){
                        "load_config", "strbuf_append",
                        "std::vector<Node*, std::allocator<Node*> >::_M_realloc_insert(Node* const&)",
                        NULL});
        json_decref(doc);

        /* --top larger than the number of sites. */
        doc = render_json(p, 100, AP_SORT_BYTES);
        ASSERT_EQ(json_array_size(jget(doc, "sites")), 7u);
        json_decref(doc);
        ap_profile_free(p);
}

/* Sites with equal counters come out in one order whatever the input order. */
static void test_ties(void)
{
        for (int flip = 0; flip < 2; flip++) {
                struct ap_profile *p = ap_profile_new();
                struct ap_psite c = {.allocations = 7, .bytes = 70};
                const char *names[2] = {flip ? "beta" : "alpha", flip ? "alpha" : "beta"};
                json_t *doc;

                ASSERT_NOT_NULL(p);
                p->modules = calloc(1, sizeof(*p->modules));
                p->nmodules = 1;
                p->modules[0].path = ap_profile_intern(p, "/bin/x");
                p->modules[0].build_id = AP_NONE;
                for (int i = 0; i < 2; i++)
                        site(p, c, 2,
                             (struct fspec[]){{names[i], "x.c", 1, 0, 0x10, false},
                                              {"main", "x.c", 9, 0, 0x20, false}});
                site(p, c, 2,
                     (struct fspec[]){{"alpha", "x.c", 1, 0, 0x10, false},
                                      {"main", "x.c", 8, 0, 0x20, false}});
                doc = render_json(p, 0, AP_SORT_BYTES);
                assert_order(doc, (const char *const[]){"alpha", "alpha", "beta", NULL});
                /* Same function: the caller's line decides. */
                ASSERT_EQ(jint(json_array_get(jget(json_array_get(jget(doc, "sites"), 0), "frames"),
                                              1),
                               "line"),
                          8);
                json_decref(doc);
                ap_profile_free(p);
        }
}

/* Many sites with few distinct counters and stacks, so that most of them tie: every order
 * must come out sorted as cmp_sites documents it (its counters, then the stacks' text
 * frame by frame from the innermost, a shorter stack first), complete, and with --top k
 * as its first k sites.  The report takes sites off a heap; small profiles would not
 * exercise it. */
struct order_key {
        uint64_t primary[2], bytes, allocations;
        char stack[64]; /* "function:line " per frame, innermost first */
};

static void order_key(json_t *site, enum ap_sort sort, struct order_key *k)
{
        json_t *frames = jget(site, "frames");
        size_t len = 0;

        memset(k, 0, sizeof(*k));
        k->bytes = (uint64_t)jint(site, "bytes");
        k->allocations = (uint64_t)jint(site, "allocations");
        switch (sort) {
        case AP_SORT_ALLOCATIONS:
                k->primary[0] = k->allocations;
                break;
        case AP_SORT_BYTES:
                k->primary[0] = k->bytes;
                break;
        case AP_SORT_LEAKED:
                k->primary[0] = (uint64_t)jint(site, "leaked_bytes");
                k->primary[1] = (uint64_t)jint(site, "leaked_blocks");
                break;
        case AP_SORT_PEAK:
                k->primary[0] = (uint64_t)jint(site, "peak_bytes");
                k->primary[1] = (uint64_t)jint(site, "max_live_bytes");
                break;
        }
        /* One-letter functions and one-digit lines: the text compares as the frames do. */
        for (size_t i = 0; i < json_array_size(frames); i++) {
                json_t *f = json_array_get(frames, i);
                len += (size_t)snprintf(k->stack + len, sizeof(k->stack) - len, "%s:%d ",
                                        jstring(f, "function"), (int)jint(f, "line"));
        }
}

static int cmp_order_keys(const struct order_key *a, const struct order_key *b)
{
        const uint64_t x[] = {a->primary[0], a->primary[1], a->bytes, a->allocations};
        const uint64_t y[] = {b->primary[0], b->primary[1], b->bytes, b->allocations};
        for (size_t i = 0; i < 4; i++)
                if (x[i] != y[i])
                        return x[i] > y[i] ? -1 : 1; /* counters: larger first */
        return strcmp(a->stack, b->stack);
}

static void test_order_many_sites(void)
{
        struct ap_profile *p = ap_profile_new();
        const enum ap_sort sorts[] = {AP_SORT_BYTES, AP_SORT_ALLOCATIONS, AP_SORT_LEAKED,
                                      AP_SORT_PEAK};
        const uint32_t nsites = 3000;
        uint64_t rng = 0x9e3779b97f4a7c15ull;

        ASSERT_NOT_NULL(p);
        p->modules = calloc(1, sizeof(*p->modules));
        p->nmodules = 1;
        p->modules[0].path = ap_profile_intern(p, "/bin/x");
        p->modules[0].build_id = AP_NONE;
        for (uint32_t i = 0; i < nsites; i++) {
                uint64_t r[12];
                for (size_t k = 0; k < 12; k++) {
                        rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
                        r[k] = (rng * 0x2545f4914f6cdd1dull) >> 33;
                }
                struct ap_psite c = {.allocations = 1 + r[0] % 3,
                                     .bytes = 10 * (1 + r[1] % 3),
                                     .leaked_bytes = r[2] % 4 == 0 ? 5 : 0,
                                     .leaked_blocks = r[3] % 2,
                                     .peak_bytes = r[4] % 3,
                                     .max_live_bytes = r[5] % 3};
                struct fspec f[3];
                size_t n = 1 + r[6] % 3;
                for (size_t k = 0; k < n; k++) {
                        static const char *const fn[] = {"a", "b", "c", "d"};
                        uint32_t which = (uint32_t)(r[7 + k] % 4),
                                 line = 1 + (uint32_t)(r[10] >> k) % 2;
                        /* The address follows from function and line: it decides nothing. */
                        f[k] = (struct fspec){fn[which], "x.c", line, 0, 16 * which + line, false};
                }
                site(p, c, n, f);
        }
        for (size_t si = 0; si < sizeof(sorts) / sizeof(sorts[0]); si++) {
                json_t *all = render_json(p, 0, sorts[si]), *top = render_json(p, 25, sorts[si]);
                json_t *sites = jget(all, "sites"), *topsites = jget(top, "sites");
                struct order_key prev, cur;

                ASSERT_EQ(json_array_size(sites), nsites);
                ASSERT_EQ(json_array_size(topsites), 25u);
                for (size_t i = 0; i < nsites; i++) {
                        order_key(json_array_get(sites, i), sorts[si], &cur);
                        if (i > 0 && cmp_order_keys(&prev, &cur) > 0) {
                                fprintf(stderr, "sort %zu: site %zu (%s) before %zu (%s)\n", si,
                                        i - 1, prev.stack, i, cur.stack);
                                ASSERT_TRUE(false);
                        }
                        prev = cur;
                }
                for (size_t i = 0; i < 25; i++)
                        ASSERT_TRUE(
                                json_equal(json_array_get(sites, i), json_array_get(topsites, i)));
                json_decref(all);
                json_decref(top);
        }
        /* Counts of sites are grouped by thousands, as every other count of the report. */
        char *text = render_text(p, 25, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(text, "\nHot call sites (top 25 of 3,000, by bytes)\n");
        ASSERT_TRUE(strstr(text, "3000") == NULL);
        free(text);
        ap_profile_free(p);
}

static void test_json_exit_status(void)
{
        struct ap_profile *p = build_known();
        json_t *doc, *proc;

        p->exit_status = -1;
        p->term_signal = 9;
        doc = render_json(p, 1, AP_SORT_BYTES);
        proc = jget(doc, "process");
        ASSERT_EQ(jint(proc, "exit_status"), 137);
        ASSERT_EQ(jint(proc, "term_signal"), 9);
        json_decref(doc);

        p->term_signal = 0;
        doc = render_json(p, 1, AP_SORT_BYTES);
        proc = jget(doc, "process");
        assert_null(proc, "exit_status");
        assert_null(proc, "term_signal");
        assert_null(proc, "foreign_malloc");
        json_decref(doc);

        p->exit_status = 3;
        free(p->mode);
        p->mode = xstrdup("sampled");
        p->sample_interval = 524288;
        doc = render_json(p, 1, AP_SORT_BYTES);
        ASSERT_EQ(jint(jget(doc, "process"), "exit_status"), 3);
        ASSERT_TRUE(json_is_true(jget(doc, "estimated")));
        ASSERT_EQ(jint(doc, "sample_interval"), 524288);
        ASSERT_EQ(jint(doc, "sample_interval_min"), 524288);
        ASSERT_EQ(jint(doc, "sample_interval_max"), 524288);
        json_decref(doc);
        p->sample_interval_min = 1024;
        p->sample_interval_max = 1048576;
        doc = render_json(p, 1, AP_SORT_BYTES);
        ASSERT_EQ(jint(doc, "sample_interval"), 524288);
        ASSERT_EQ(jint(doc, "sample_interval_min"), 1024);
        ASSERT_EQ(jint(doc, "sample_interval_max"), 1048576);
        ASSERT_TRUE(json_is_true(jget(doc, "estimated")));
        json_decref(doc);
        /* At 1 byte every allocation is recorded with its own size: exact; merged with
         * profiles of other intervals, estimates again. */
        p->sample_interval = 1;
        p->sample_interval_min = p->sample_interval_max = 0;
        doc = render_json(p, 1, AP_SORT_BYTES);
        ASSERT_TRUE(json_is_false(jget(doc, "estimated")));
        ASSERT_STREQ(json_string_value(jget(doc, "mode")), "sampled");
        json_decref(doc);
        p->sample_interval_min = p->sample_interval_max = 1;
        doc = render_json(p, 1, AP_SORT_BYTES);
        ASSERT_TRUE(json_is_false(jget(doc, "estimated")));
        json_decref(doc);
        p->sample_interval_max = 4096;
        doc = render_json(p, 1, AP_SORT_BYTES);
        ASSERT_TRUE(json_is_true(jget(doc, "estimated")));
        json_decref(doc);
        p->sample_interval = 524288;
        p->sample_interval_min = p->sample_interval_max = 0;

        /* Counters beyond INT64_MAX saturate rather than wrap negative. */
        p->totals.bytes = UINT64_MAX;
        doc = render_json(p, 1, AP_SORT_BYTES);
        ASSERT_EQ(jint(jget(doc, "totals"), "bytes"), INT64_MAX);
        json_decref(doc);
        ap_profile_free(p);
}

static void test_text(void)
{
        struct ap_profile *p = build_known();
        char *t = render_text(p, 10, AP_SORT_BYTES, false), *c;
        json_t *doc;

        ASSERT_NOT_CONTAINS(t, "\033");
        ASSERT_NOT_CONTAINS(t, " \n"); /* no trailing blanks */
        ASSERT_TRUE(strncmp(t, "allocprof report for ./tree-bench --size 1000\n", 46) == 0);
        ASSERT_CONTAINS(t, "\n  pid 4242 (parent 4200), exited with status 0, ran 2.35 s, "
                           "started 2024-11-25 22:50:00 UTC\n");
        ASSERT_CONTAINS(t, "\n  mode full: every allocation recorded; counts are exact\n");
        ASSERT_CONTAINS(
                t,
                "\nSummary\n"
                "  allocations            52,736   16.02 MiB  16,796,994 bytes, 318 B on average\n"
                "  frees                  52,712   12.02 MiB  12,599,490 bytes\n"
                "  peak heap               1,234    5.61 MiB  5,878,272 bytes live in 1,234 "
                "blocks, at 1.20 s\n"
                "  leaked                     24    4.00 MiB  4,197,504 bytes never freed, from 3 "
                "call sites\n"
                "  temporary              45,110       85.5%  of allocations were freed before "
                "their thread allocated again\n"
                "  reallocs                2,300        4.4%  of allocations were realloc calls\n"
                "  threads                     2\n");
        ASSERT_NOT_CONTAINS(t, "dropped");

        /* Hot sites: headline, detail line, aligned stack. */
        ASSERT_CONTAINS(
                t,
                "\nHot call sites (7, by bytes)\n\n"
                "  #1   8.58 MiB in 2,400 allocations (avg 3.66 KiB), 53.6% of bytes\n"
                "       1.00 MiB live at the peak (2.00 MiB at most), 4.2% temporary, 2,300 reallocs\n"
                "       strbuf_append  src/strbuf.c:58   [tree-bench]\n"
                "       format_report  src/report.c:210  [tree-bench]\n"
                "       main           src/main.c:40     [tree-bench]\n\n"
                "  #2   4.00 MiB in 1 allocation, 25.0% of bytes\n");
        /* A long C++ name runs on; the other lines stay aligned among themselves. */
        ASSERT_CONTAINS(
                t,
                "       std::vector<Node*, std::allocator<Node*> >::_M_realloc_insert(Node* const&)"
                "  /usr/include/c++/12/bits/vector.tcc:449  [libstdc++.so.6.0.30]\n"
                "       Tree::rebalance()  src/tree.cc:210  [tree-bench]\n"
                "       main               src/main.c:35    [tree-bench]\n");
        /* Inlined frames are marked; start-up code outside main() is not shown. */
        ASSERT_CONTAINS(t, "       make_node    src/tree.c:42   [tree-bench]  (inlined)\n"
                           "       tree_insert  src/tree.c:97   [tree-bench]\n");
        ASSERT_NOT_CONTAINS(t, "__libc_start");
        ASSERT_NOT_CONTAINS(t, "_start ");
        /* Recursion folds; unknown functions show their address. */
        ASSERT_CONTAINS(t, "       recurse  src/deep.c:6   [tree-bench]\n"
                           "       recurse  src/deep.c:5   [tree-bench]  (x11, recursive)\n"
                           "       main     src/main.c:44  [tree-bench]\n");
        ASSERT_CONTAINS(t, "       0x7bc0      [libz.so.1]\n       0xdeadbeef\n");
        ASSERT_CONTAINS(t, "       (no stack recorded)\n");

        ASSERT_CONTAINS(
                t,
                "\nLeaks\n  4.00 MiB in 24 blocks were still allocated at exit, from 3 call sites\n\n"
                "  #1   4.00 MiB leaked in 1 block (of 1 allocated), >99.9% of all leaked bytes\n"
                "       load_config  src/config.c:88  [tree-bench]\n");
        ASSERT_CONTAINS(
                t,
                "  #3   1.17 KiB leaked in 3 blocks (of 300 allocated), <0.1% of all leaked bytes\n");
        ASSERT_CONTAINS(t, "\nModules (by the code that called the allocator)\n"
                           "  module                 allocations       bytes    share      leaked\n"
                           "  tree-bench                  52,421   14.11 MiB    88.1%    4.00 MiB\n"
                           "  libstdc++.so.6.0.30            300    1.91 MiB    11.9%    1.17 KiB\n"
                           "  libz.so.1                       10       640 B    <0.1%         0 B\n"
                           "  (1 more module made no allocations)\n");
        ASSERT_CONTAINS(
                t,
                "\nAllocation sizes\n"
                "  requested       allocations    share       bytes\n"
                "  0 B                       1    <0.1%         0 B  #\n"
                "  16-31 B              40,000    76.3%    1.22 MiB  ########################################\n"
                "  32-63 B              10,000    19.1%  312.50 KiB  ##########\n"
                "  4-8 KiB               2,400     4.6%    8.58 MiB  ##\n"
                "  4-8 MiB                   1    <0.1%    4.00 MiB  #\n");

        ASSERT_CONTAINS(
                t, "\nHints\n"
                   "  * make_node (src/tree.c:42)\n"
                   "    50,000 allocations averaging 32 B, 90.0% of them freed before the next\n"
                   "    allocation: consider a pool/arena allocator or a stack buffer.\n"
                   "  * strbuf_append (src/strbuf.c:58)\n"
                   "    2,300 reallocs (95.8% of this site's calls) grow a buffer step by step:\n"
                   "    reserve the capacity up front, or grow it geometrically.\n"
                   "  * load_config (src/config.c:88)\n"
                   "    leaks 4.00 MiB in 1 block (71.4% of the peak heap):\n"
                   "    free it, or make sure it is meant to live until exit.\n");
        ASSERT_NOT_CONTAINS(t, "heap churn");
        free(t);

        /* Short-lived by another measure: hardly any of the site's bytes live at once. */
        p->sites[0].temporary = 0;
        p->sites[0].max_live_bytes = 3200;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(
                t, "  * make_node (src/tree.c:42)\n"
                   "    50,000 allocations averaging 32 B, and never more than 3.12 KiB live at\n"
                   "    once: consider a pool/arena allocator or a stack buffer.\n");
        free(t);
        p->sites[0].max_live_bytes = 64000; /* 4%: neither temporary nor few live */
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_NOT_CONTAINS(t, "pool/arena");
        free(t);
        p->sites[0].temporary = 45000;

        /* --top limits both the hot sites and the leaks. */
        t = render_text(p, 1, AP_SORT_ALLOCATIONS, false);
        ASSERT_CONTAINS(t, "\nHot call sites (top 1 of 7, by allocations)\n\n"
                           "  #1   1.53 MiB in 50,000 allocations (avg 32 B), 94.8% of calls\n");
        ASSERT_NOT_CONTAINS(t, "#2 ");
        ASSERT_CONTAINS(t, "\n  ... and 2 more leaking sites (use --top 0 to see all)\n");
        free(t);

        /* Colors when asked, and only then. */
        c = render_text(p, 10, AP_SORT_BYTES, true);
        ASSERT_CONTAINS(c, "\033[1mSummary\033[0m");
        ASSERT_CONTAINS(c, "\033[31m4.00 MiB leaked\033[0m");
        ASSERT_CONTAINS(c, "\033[36msrc/tree.c:42\033[0m");
        free(c);

        /* Churn, dropped events, a kill. */
        p->totals.peak_blocks = 100;
        p->totals.dropped_events = 12;
        p->totals.dropped_frees = 3;
        p->exit_status = -1;
        p->term_signal = 9;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "\n  pid 4242 (parent 4200), killed by SIGKILL, ran 2.35 s");
        ASSERT_CONTAINS(
                t,
                "\n  warning: 12 events were dropped (3 of them frees: leaks may be overstated); "
                "figures are incomplete\n");
        ASSERT_CONTAINS(
                t, "  * heap churn\n"
                   "    52,736 allocations, but never more than 100 blocks live at once (527x):\n"
                   "    reuse objects or buffers instead of freeing and allocating them again.\n"
                   "    The busiest site is make_node (src/tree.c:42).\n");
        ASSERT_CONTAINS(t, "  * dropped events\n"
                           "    the profiled program outran the collector and 12 events were "
                           "lost:\n");
        ASSERT_NOT_CONTAINS(t, "waits for the collector");
        ASSERT_NOT_CONTAINS(t, "\033");
        ASSERT_NOT_CONTAINS(t, "not tracked");
        ASSERT_NOT_CONTAINS(t, "no ring");
        free(t);
        /* Some of them by threads that had no ring: told apart, in the summary and the
         * hints; all of them: the collector was not behind. */
        p->totals.dropped_no_ring = 5;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "figures are incomplete\n"
                           "  5 of them by threads that had no ring to record into (see the "
                           "hints)\n");
        ASSERT_CONTAINS(t, "    the profiled program outran the collector and 7 events were "
                           "lost:\n");
        ASSERT_CONTAINS(t, "  * threads without a ring\n"
                           "    5 events were lost by threads that had no ring to record into: "
                           "more\n"
                           "    threads at once than the agent's 1024 rings, an address-space "
                           "limit\n");
        free(t);
        p->totals.dropped_no_ring = 12;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_NOT_CONTAINS(t, "outran the collector");
        ASSERT_CONTAINS(t, "  * threads without a ring\n"
                           "    12 events were lost by threads that had no ring");
        free(t);
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "figures are incomplete\n"
                           "allocprof: 12 of them by threads that had no ring to record into "
                           "(too many threads at once, ulimit -v, or a sandbox that refuses "
                           "mremap, such as valgrind)\n");
        free(t);
        doc = render_json(p, 0, AP_SORT_BYTES);
        ASSERT_EQ(jint(jget(doc, "totals"), "dropped_no_ring"), 12ll);
        json_decref(doc);
        p->totals.dropped_no_ring = 0;
        /* Sampled blocks the agent's set could not hold: warned about, and at the leaks. */
        p->totals.untracked_samples = 31;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "\n  warning: 31 sampled blocks were not tracked (the agent's set of "
                           "sampled blocks was full): their frees were not seen, so leaks may "
                           "be overstated\n");
        free(t);
        t = render_text(p, 10, AP_SORT_LEAKED, false);
        ASSERT_CONTAINS(t, "  (31 sampled blocks were not tracked: some of these blocks may "
                           "have been freed)\n");
        free(t);
        p->totals.untracked_samples = 0;
        /* Waits for ring space: a hint from 1 ms and 1% of the run (2.35 s) on. */
        p->ring_waits = 7;
        p->ring_wait_ns = 23000000;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_NOT_CONTAINS(t, "waits for the collector");
        free(t);
        p->ring_wait_ns = 23500000;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "  * waits for the collector\n"
                           "    the program's threads found their ring full 7 times and waited "
                           "23.5 ms for\n");
        free(t);
        doc = render_json(p, 0, AP_SORT_BYTES);
        ASSERT_EQ(jint(jget(doc, "process"), "ring_waits"), 7ll);
        ASSERT_EQ(jint(jget(doc, "process"), "ring_wait_ns"), 23500000ll);
        json_decref(doc);
        p->ring_waits = 0;
        p->ring_wait_ns = 0;
        c = render_text(p, 10, AP_SORT_BYTES, true);
        ASSERT_CONTAINS(c, "\033[1m\033[31mwarning: 12 events were dropped\033[0m");
        free(c);

        /* Sampled profiles say their figures are estimates. */
        free(p->mode);
        p->mode = xstrdup("sampled");
        p->sample_interval = 524288;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(
                t, "\n  mode sampled: one sample per 512.00 KiB allocated on average; figures are "
                   "estimates\n");
        free(t);
        /* Recorded at several intervals (attached again with another --sample). */
        p->sample_interval_min = 1024;
        p->sample_interval_max = 524288;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "\n  mode sampled: one sample per 1.00 KiB to 512.00 KiB allocated on "
                           "average (the interval changed while it was recorded); figures are "
                           "estimates\n");
        free(t);
        p->sample_interval_min = p->sample_interval_max = 524288;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "one sample per 512.00 KiB allocated on average; figures");
        ASSERT_NOT_CONTAINS(t, "comes before allocprof's");
        free(t);
        /* A program whose calls went to another malloc (its executable's own). */
        p->foreign_malloc = xstrdup("/usr/bin/rustc\033[31m");
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "  warning: the program's malloc is the one in /usr/bin/rustc?[31m, "
                           "which comes before allocprof's: allocations made with it were not "
                           "seen (only those that reach the C library's malloc are)\n");
        free(t);
        doc = render_json(p, 0, AP_SORT_BYTES);
        ASSERT_STREQ(jstring(jget(doc, "process"), "foreign_malloc"), "/usr/bin/rustc\033[31m");
        json_decref(doc);
        free(p->foreign_malloc);
        p->foreign_malloc = NULL;
        ap_profile_free(p);
}

/* Stacks deeper than the text report shows end with a count of what was left out. */
static void test_text_deep_stack(void)
{
        struct ap_profile *p = ap_profile_new();
        struct fspec frames[14];
        char names[13][16];
        char *t;

        ASSERT_NOT_NULL(p);
        p->modules = calloc(1, sizeof(*p->modules));
        p->nmodules = 1;
        p->modules[0].path = ap_profile_intern(p, "/opt/app/bin/app");
        p->modules[0].build_id = AP_NONE;
        for (unsigned i = 0; i < 13; i++) {
                snprintf(names[i], sizeof(names[i]), "level_%u", i);
                frames[i] = (struct fspec){names[i], "lib/levels.c", 100 + i, 0, 0x100 + i, false};
        }
        frames[13] = (struct fspec){"main", "main.c", 3, 0, 0x50, false};
        site(p, (struct ap_psite){.allocations = 1, .bytes = 8}, 14, frames);
        t = render_text(p, 0, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "       level_0  lib/levels.c:100  [app]\n");
        ASSERT_CONTAINS(t, "       level_7  lib/levels.c:107  [app]\n"
                           "       ... 6 more frames\n");
        ASSERT_NOT_CONTAINS(t, "level_8");
        free(t);
        ap_profile_free(p);
}

/* A crafted profile cannot put terminal escapes on the screen. */
static void test_text_sanitizes(void)
{
        struct ap_profile *p = build_known();
        char *t;

        free(p->strings[p->frames[0].function]);
        p->strings[p->frames[0].function] = xstrdup("evil\033]0;pwned\007\xc2\x9b"
                                                    "31m");
        free(p->command[0]);
        p->command[0] = xstrdup("\033[2J");
        t = render_text(p, 0, AP_SORT_BYTES, false);
        ASSERT_NOT_CONTAINS(t, "\033");
        ASSERT_NOT_CONTAINS(t, "\007");
        ASSERT_NOT_CONTAINS(t, "\xc2\x9b");
        ASSERT_CONTAINS(t, "evil?]0;pwned??31m");
        free(t);
        ap_profile_free(p);
}

/* Strings reach JSON intact, escaped where needed, valid even when the input is not. */
static void test_json_escaping(void)
{
        struct ap_profile *p = build_known();
        struct ap_report_opts o = {.top = 1, .sort = AP_SORT_ALLOCATIONS};
        struct capture c;
        json_t *doc;

        free(p->strings[p->frames[0].function]);
        p->strings[p->frames[0].function] = xstrdup("a\"b\\c\n\t\x01\x7f\xc2\x85\xc3\xa9\xff/");
        free(p->command[1]);
        p->command[1] = xstrdup("\033[2J");
        capture_begin(&c);
        ASSERT_OK(ap_report_json(c.f, p, &o));
        capture_end(&c);
        ASSERT_CONTAINS(
                c.text,
                "\"function\": \"a\\\"b\\\\c\\n\\t\\u0001\\u007f\\u0085\xc3\xa9\xef\xbf\xbd/\"");
        ASSERT_CONTAINS(c.text, "\"command\": [\"./tree-bench\", \"\\u001b[2J\", \"1000\"]");
        ASSERT_NOT_CONTAINS(c.text, "\033");
        ASSERT_NOT_CONTAINS(c.text, "\x01");
        ASSERT_NOT_CONTAINS(c.text, "\xc2\x85");
        doc = json_loads(c.text, JSON_REJECT_DUPLICATES, NULL);
        ASSERT_NOT_NULL(doc);
        ASSERT_STREQ(site_function(doc, 0), "a\"b\\c\n\t\x01\x7f\xc2\x85\xc3\xa9\xef\xbf\xbd/");
        ASSERT_STREQ(json_string_value(json_array_get(jget(jget(doc, "process"), "command"), 1)),
                     "\033[2J");
        json_decref(doc);
        free(c.text);
        ap_profile_free(p);
}

/* An empty or inconsistent profile renders without crashing. */
static void test_degenerate(void)
{
        struct ap_profile *p = ap_profile_new();
        struct ap_report_opts o = {.top = 10, .sort = AP_SORT_PEAK, .color = true};
        struct capture c;
        json_t *doc;
        char *t;

        ASSERT_NOT_NULL(p);
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "no allocations recorded");
        ASSERT_CONTAINS(t, "no leaks");
        ASSERT_CONTAINS(t, "nothing stands out");
        free(t);
        /* Sampled: no leak among the samples is not no leak -- unless every block is
         * sampled (at 1 byte), where a leak would show and nothing is estimated. */
        p->mode = xstrdup("sampled");
        const struct {
                uint64_t interval;
                const char *text[2], *not_text, *summary, *not_summary;
        } sampled[] = {
                {524288,
                 {"  every sampled block was freed (a leak of blocks no sample fell on would "
                  "not show)\n",
                  "no leaks seen: every sampled block was freed before exit"},
                 "no leaks: every allocated block",
                 "allocprof: no leaks among the sampled blocks\n",
                 "allocprof: no leaks\n"},
                {1,
                 {"\n  mode sampled at every byte: every allocation recorded; counts are exact\n",
                  "no leaks: every allocated block was freed before exit"},
                 "estimate",
                 "allocprof: no leaks\n",
                 "estimated"},
        };
        for (size_t i = 0; i < sizeof(sampled) / sizeof(sampled[0]); i++) {
                p->sample_interval = sampled[i].interval;
                t = render_text(p, 10, AP_SORT_BYTES, false);
                ASSERT_CONTAINS(t, sampled[i].text[0]);
                ASSERT_CONTAINS(t, sampled[i].text[1]);
                ASSERT_NOT_CONTAINS(t, sampled[i].not_text);
                free(t);
                t = summary_text(p, NULL);
                ASSERT_CONTAINS(t, sampled[i].summary);
                ASSERT_NOT_CONTAINS(t, sampled[i].not_summary);
                free(t);
        }
        free(p->mode);
        p->mode = NULL;
        p->sample_interval = 0;
        doc = render_json(p, 0, AP_SORT_BYTES);
        ASSERT_EQ(json_array_size(jget(doc, "sites")), 0u);
        assert_null(doc, "mode");
        assert_null(jget(doc, "tool"), "version");
        json_decref(doc);

        /* Dangling indices (a profile built in memory is not validated). */
        site(p, (struct ap_psite){.allocations = 1, .bytes = 1}, 1,
             (struct fspec[]){{"f", "f.c", 1, AP_NONE, 1, false}});
        p->sites[0].frames[0] = 99;
        p->frames[0].function = 1234;
        capture_begin(&c);
        ASSERT_OK(ap_report_text(c.f, p, &o));
        ASSERT_OK(ap_report_json(c.f, p, &o));
        ap_report_summary(c.f, p, NULL);
        free(capture_end(&c));
        ap_profile_free(p);
}

static void test_summary(void)
{
        struct ap_profile *p = build_known();
        char *t, *line, *save = NULL;
        unsigned lines = 0;

        p->totals.dropped_events = 5;
        t = summary_text(p, "allocprof.tree-bench.4242.approf");
        ASSERT_CONTAINS(
                t,
                "allocprof: 52,736 allocations (16.02 MiB), 52,712 frees, peak 5.61 MiB in 1,234 blocks\n");
        ASSERT_CONTAINS(t, "allocprof: leaked 4.00 MiB in 24 blocks\n");
        ASSERT_NOT_CONTAINS(t, "estimated");
        ASSERT_CONTAINS(
                t,
                "allocprof: top call sites by bytes:\n"
                "allocprof:     8.58 MiB in     2,400 calls  strbuf_append (src/strbuf.c:58)\n"
                "allocprof:     4.00 MiB in         1 call   load_config (src/config.c:88)\n"
                "allocprof:     1.91 MiB in       300 calls  std::vector<Node*, "
                "std::allocator<Node*> >"
                "::_M_realloc_insert(Node* const&) (/usr/include/c++/12/bits/vector.tcc:449) from "
                "Tree::rebalance()\n");
        ASSERT_NOT_CONTAINS(t, "make_node"); /* only three sites */
        ASSERT_CONTAINS(t, "allocprof: warning: 5 events were dropped; figures are incomplete\n");
        ASSERT_CONTAINS(t, "allocprof: profile written to allocprof.tree-bench.4242.approf\n");
        ASSERT_CONTAINS(
                t, "allocprof: view it with: allocprof report allocprof.tree-bench.4242.approf\n");
        ASSERT_NOT_CONTAINS(t, "\033");
        for (line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save), lines++)
                ASSERT_TRUE(strncmp(line, "allocprof: ", 11) == 0);
        ASSERT_EQ(lines, 9u);
        free(t);
        ASSERT_EQ(p->totals.invalid_records, 0u);
        p->totals.invalid_records = 1234;
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "allocprof: warning: 1,234 records from the process were malformed or "
                           "could not be kept, and were ignored; figures are incomplete\n");
        free(t);
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "  warning: 1,234 records from the process were malformed or could "
                           "not be kept (the collector short of memory), and were ignored\n");
        free(t);
        p->totals.invalid_records = 0;

        /* Waits for ring space, from 1 ms and 1% of the run (2.35 s) on. */
        p->ring_waits = 3;
        p->ring_wait_ns = 23000000;
        t = summary_text(p, NULL);
        ASSERT_NOT_CONTAINS(t, "waited");
        free(t);
        p->ring_wait_ns = 1500000000;
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t,
                        "allocprof: the program's threads waited 1.50 s in all for the collector "
                        "(their rings were full 3 times)\n");
        free(t);
        /* One thread: its waits are the program's. */
        p->totals.threads = 1;
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "allocprof: the program waited 1.50 s for the collector (its ring was full 3 "
                           "times)\n");
        free(t);
        p->totals.threads = 2;

        /* Sampled: the leak is an estimate too, not only the line with the peak. */
        free(p->mode);
        p->mode = xstrdup("sampled");
        p->sample_interval = 524288;
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "peak 5.61 MiB in 1,234 blocks (estimated)\n");
        ASSERT_CONTAINS(t, "allocprof: leaked 4.00 MiB in 24 blocks (estimated)\n");
        free(t);
        p->totals.leaked_blocks = 1;
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "allocprof: leaked 4.00 MiB in 1 block (estimated)\n");
        free(t);
        p->totals.leaked_blocks = 24;
        free(p->mode);
        p->mode = xstrdup("full");
        p->sample_interval = 0;

        /* A path a shell would split is quoted in the hint. */
        t = summary_text(p, "/tmp/my dir/it's.approf");
        ASSERT_CONTAINS(t, "allocprof report '/tmp/my dir/it'\\''s.approf'\n");
        free(t);
        ap_profile_free(p);
}

/* A snapshot of a running process: blocks not freed yet are live now, not leaked, and
 * nothing in the report says the process ended. */
static void test_live(void)
{
        struct ap_profile *p = build_known();
        json_t *doc;
        char *t;

        p->live = true;
        p->exit_status = -1;
        p->duration_ns = 1530000000ull;
        p->totals.dropped_events = 12;
        p->totals.dropped_frees = 3;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "\n  pid 4242 (parent 4200), live snapshot of a running process, "
                           "running for 1.53 s, started 2024-11-25 22:50:00 UTC\n");
        ASSERT_CONTAINS(t, "\n  live now                   24    4.00 MiB  4,197,504 bytes not "
                           "freed yet, from 3 call sites\n");
        ASSERT_CONTAINS(t, "(3 of them frees: live blocks may be overstated)");
        ASSERT_CONTAINS(t, "  #2   4.00 MiB in 1 allocation, 25.0% of bytes\n"
                           "       4.00 MiB live at the peak (4.00 MiB at most), 4.00 MiB live "
                           "now\n");
        ASSERT_CONTAINS(t, "\nLive now\n  4.00 MiB in 24 blocks were still allocated when the "
                           "snapshot was taken, from 3 call sites\n");
        ASSERT_CONTAINS(t, "  #1   4.00 MiB live now in 1 block (of 1 allocated), >99.9% of all "
                           "live bytes\n");
        ASSERT_CONTAINS(t,
                        "  module                 allocations       bytes    share        live\n"
                        "  tree-bench                  52,421   14.11 MiB    88.1%    4.00 MiB\n");
        ASSERT_CONTAINS(t, "  * load_config (src/config.c:88)\n"
                           "    holds 4.00 MiB in 1 block live now (71.4% of the peak heap):\n"
                           "    if later snapshots show it growing, look for a missing free.\n");
        ASSERT_NOT_CONTAINS(t, "leak");
        ASSERT_NOT_CONTAINS(t, "Leak");
        ASSERT_NOT_CONTAINS(t, "at exit");
        ASSERT_NOT_CONTAINS(t, "never freed");
        ASSERT_NOT_CONTAINS(t, " ran ");
        ASSERT_NOT_CONTAINS(t, " \n");
        free(t);

        /* Sorted by what is live, and cut by --top. */
        t = render_text(p, 1, AP_SORT_LEAKED, false);
        ASSERT_CONTAINS(t, "\nHot call sites (top 1 of 7, by live bytes)\n");
        ASSERT_CONTAINS(t, "\n  ... and 2 more sites with live blocks (use --top 0 to see all)\n");
        ASSERT_NOT_CONTAINS(t, "leak");
        free(t);

        /* Live memory is not an error: not red. */
        t = render_text(p, 10, AP_SORT_BYTES, true);
        ASSERT_CONTAINS(t, "4.00 MiB live now\n");
        ASSERT_NOT_CONTAINS(t, "\033[31m4.00 MiB");
        free(t);

        p->exit_status = 0; /* a snapshot has no exit status, whatever the profile says */
        doc = render_json(p, 0, AP_SORT_BYTES);
        ASSERT_TRUE(json_is_true(jget(doc, "live")));
        assert_null(jget(doc, "process"), "exit_status");
        assert_null(jget(doc, "process"), "term_signal");
        ASSERT_EQ(jint(jget(doc, "totals"), "leaked_bytes"), 4197504);
        json_decref(doc);

        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "allocprof: 4.00 MiB in 24 blocks live now\n");
        ASSERT_CONTAINS(t, "(3 frees: live blocks may be overstated)");
        ASSERT_NOT_CONTAINS(t, "leak");
        free(t);

        /* The same profile once the process has ended reads as before. */
        p->live = false;
        p->exit_status = -1;
        doc = render_json(p, 0, AP_SORT_BYTES);
        ASSERT_TRUE(json_is_false(jget(doc, "live")));
        json_decref(doc);
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, ", ran 1.53 s");
        ASSERT_CONTAINS(t, "\nLeaks\n");
        ASSERT_NOT_CONTAINS(t, "live now");
        ASSERT_NOT_CONTAINS(t, "snapshot");
        free(t);
        ap_profile_free(p);

        /* Nothing live at the moment of the snapshot. */
        p = ap_profile_new();
        ASSERT_NOT_NULL(p);
        p->live = true;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "  live now                    0         0 B  every block allocated so "
                           "far was freed\n");
        ASSERT_CONTAINS(t, "\nLive now\n  nothing live: every block allocated so far was freed\n");
        ASSERT_NOT_CONTAINS(t, "leak");
        ASSERT_NOT_CONTAINS(t, "exit");
        free(t);
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "allocprof: nothing live now\n");
        ASSERT_NOT_CONTAINS(t, "leak");
        free(t);
        ap_profile_free(p);
}

/* An image that an exec replaced: the blocks it held went with it, live at the exec, not
 * leaked; it has no exit status of its own, and the report names the program exec'ed. */
static void test_by_exec(void)
{
        struct ap_profile *p = build_known();
        json_t *doc;
        char *t;

        p->by_exec = true;
        p->exec_path = strdup("/opt/go/bin/server");
        ASSERT_NOT_NULL(p->exec_path);
        p->exit_status = -1;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "\n  pid 4242 (parent 4200), replaced by an exec of /opt/go/bin/server "
                           "(not profiled), ran ");
        ASSERT_CONTAINS(t, "\n  live at the exec           24    4.00 MiB  4,197,504 bytes not "
                           "freed before the exec, from 3 call sites\n");
        ASSERT_CONTAINS(t, "4.00 MiB live at the exec\n");
        ASSERT_CONTAINS(t, "\nLive at the exec\n  4.00 MiB in 24 blocks were still allocated when "
                           "an exec replaced the image (not leaks: its memory went with it), from "
                           "3 call sites\n");
        ASSERT_NOT_CONTAINS(t, "leaked");
        ASSERT_NOT_CONTAINS(t, "Leaks");
        ASSERT_NOT_CONTAINS(t, "never freed");
        ASSERT_NOT_CONTAINS(t, "exited");
        ASSERT_NOT_CONTAINS(t, "free it, or make sure"); /* no leak hint */
        free(t);
        /* Not an error: not red. */
        t = render_text(p, 10, AP_SORT_BYTES, true);
        ASSERT_NOT_CONTAINS(t, "\033[31m4.00 MiB");
        free(t);
        t = render_text(p, 1, AP_SORT_LEAKED, false);
        ASSERT_CONTAINS(t, "by live bytes)");
        ASSERT_CONTAINS(t, "more sites with live blocks");
        free(t);

        doc = render_json(p, 0, AP_SORT_BYTES);
        ASSERT_TRUE(json_is_false(jget(doc, "live")));
        assert_null(jget(doc, "process"), "exit_status");
        ASSERT_STREQ(json_string_value(json_object_get(jget(jget(doc, "process"), "exec"), "path")),
                     "/opt/go/bin/server");
        ASSERT_TRUE(json_is_false(json_object_get(jget(jget(doc, "process"), "exec"), "profiled")));
        ASSERT_EQ(jint(jget(doc, "totals"), "leaked_bytes"), 4197504);
        json_decref(doc);

        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "allocprof: pid 4242 (tree-bench) was replaced by an exec of "
                           "/opt/go/bin/server, which could not be profiled: this profile ends "
                           "at the exec\n");
        ASSERT_CONTAINS(t, "allocprof: 4.00 MiB in 24 blocks live at the exec (not leaks: the "
                           "exec replaced the image)\n");
        ASSERT_NOT_CONTAINS(t, "leaked");
        free(t);

        /* Into a program that has a profile of its own; the path not known. */
        p->exec_profiled = true;
        free(p->exec_path);
        p->exec_path = NULL;
        t = render_text(p, 10, AP_SORT_BYTES, false);
        ASSERT_CONTAINS(t, "replaced by an exec of a program (profiled on its own)");
        free(t);
        doc = render_json(p, 0, AP_SORT_BYTES);
        assert_null(jget(jget(doc, "process"), "exec"), "path");
        ASSERT_TRUE(json_is_true(json_object_get(jget(jget(doc, "process"), "exec"), "profiled")));
        json_decref(doc);

        /* An image that exited: "exec" is null. */
        p->by_exec = false;
        doc = render_json(p, 0, AP_SORT_BYTES);
        assert_null(jget(doc, "process"), "exec");
        json_decref(doc);
        ap_profile_free(p);
}

/* ---- the command -------------------------------------------------------------------- */

struct run {
        int status;
        char *out, *err;
};

static char *read_all(const char *path)
{
        FILE *f = fopen(path, "r");
        char *buf = NULL;
        size_t cap = 0, len = 0, n;

        ASSERT_NOT_NULL(f);
        do {
                if (cap - len < 4096) {
                        cap = cap ? 2 * cap : 8192;
                        buf = realloc(buf, cap);
                        ASSERT_NOT_NULL(buf);
                }
                n = fread(buf + len, 1, cap - len - 1, f);
                len += n;
        } while (n > 0);
        buf[len] = '\0';
        fclose(f);
        return buf;
}

/* Runs ap_cmd_report with stdout and stderr captured.  `args` is NULL-terminated and
 * does not include "report". */
static struct run run_report(const char *const *args)
{
        char *argv[16] = {"report"};
        int argc = 1, saved_out, saved_err, fd;
        struct run r;

        for (; args[argc - 1]; argc++)
                argv[argc] = (char *)args[argc - 1];
        fflush(stdout);
        fflush(stderr);
        saved_out = dup(STDOUT_FILENO);
        saved_err = dup(STDERR_FILENO);
        fd = open("out.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ASSERT_TRUE(fd >= 0);
        dup2(fd, STDOUT_FILENO);
        close(fd);
        fd = open("err.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ASSERT_TRUE(fd >= 0);
        dup2(fd, STDERR_FILENO);
        close(fd);

        r.status = ap_cmd_report(argc, argv);

        fflush(stdout);
        fflush(stderr);
        dup2(saved_out, STDOUT_FILENO);
        dup2(saved_err, STDERR_FILENO);
        close(saved_out);
        close(saved_err);
        r.out = read_all("out.txt");
        r.err = read_all("err.txt");
        unlink("out.txt");
        unlink("err.txt");
        return r;
}

static void run_free(struct run *r)
{
        free(r->out);
        free(r->err);
}

/* Expects a usage error (2) or a failure (1) with one "allocprof: " line on stderr. */
static void expect_failure(const char *const *args, int status, const char *message)
{
        struct run r = run_report(args);

        if (r.status != status)
                fprintf(stderr, "stderr was: %s\n", r.err);
        ASSERT_EQ(r.status, status);
        ASSERT_STREQ(r.out, "");
        ASSERT_TRUE(strncmp(r.err, "allocprof: ", 11) == 0);
        ASSERT_EQ((size_t)(strchr(r.err, '\n') - r.err), strlen(r.err) - 1);
        ASSERT_CONTAINS(r.err, message);
        run_free(&r);
}

static void set_mtime(const char *path, time_t when)
{
        struct timespec ts[2] = {{when, 0}, {when, 0}};

        ASSERT_EQ(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void test_command(void)
{
        struct ap_profile *p = build_known();
        char cwd[4096];
        struct run r;
        json_t *doc;

        ASSERT_NOT_NULL(getcwd(cwd, sizeof(cwd)));
        ASSERT_EQ(chdir(tmpdir), 0);
        unsetenv("NO_COLOR");

        expect_failure((const char *const[]){NULL}, 1,
                       "allocprof: no profile found in the current directory (looked for "
                       "allocprof.*.approf)\n");

        /* The newest file wins; the older one has more sites shown to tell them apart. */
        ASSERT_OK(ap_profile_write(p, "allocprof.tree-bench.4242.approf"));
        set_mtime("allocprof.tree-bench.4242.approf", 2000000000);
        p->pid = 77;
        p->nsites = 2;
        ASSERT_OK(ap_profile_write(p, "allocprof.other.77.approf"));
        set_mtime("allocprof.other.77.approf", 1000000000);
        p->nsites = 7;
        ASSERT_OK(ap_profile_write(p, "allocprof.x.approf.tmp.1.0")); /* not a profile name */

        r = run_report((const char *const[]){NULL});
        ASSERT_EQ(r.status, 0);
        ASSERT_CONTAINS(r.out, "Hot call sites (7, by bytes)");
        ASSERT_NOT_CONTAINS(r.out, "\033"); /* not a terminal */
        ASSERT_CONTAINS(r.err, "allocprof: showing allocprof.tree-bench.4242.approf");
        run_free(&r);

        r = run_report((const char *const[]){"--json", NULL});
        ASSERT_EQ(r.status, 0);
        ASSERT_STREQ(r.err, "");
        doc = json_loads(r.out, 0, NULL);
        ASSERT_NOT_NULL(doc);
        ASSERT_EQ(json_array_size(jget(doc, "sites")), 7u); /* JSON: all sites by default */
        ASSERT_EQ(jint(jget(doc, "process"), "pid"), 4242);
        json_decref(doc);
        run_free(&r);

        /* By PID; options after the file; --top and --sort; forced colors. */
        r = run_report(
                (const char *const[]){"77", "--json", "--top", "1", "--sort=allocations", NULL});
        ASSERT_EQ(r.status, 0);
        doc = json_loads(r.out, 0, NULL);
        ASSERT_NOT_NULL(doc);
        ASSERT_EQ(jint(jget(doc, "process"), "pid"), 77);
        assert_order(doc, (const char *const[]){"make_node", NULL});
        ASSERT_EQ(jint(doc, "sites_total"), 2);
        json_decref(doc);
        run_free(&r);

        /* A process that has ended, its profile not named for it: found by the pid in
         * the files (run -o FILE); the pid of an `allocprof run` stands for its program
         * (its child whose exit status the run knew).  No such pid can be running. */
        p->nsites = 3;
        p->pid = 1999999001;
        p->ppid = 1999999000;
        p->run_id = xstrdup("0123456789abcdef");
        ASSERT_OK(ap_profile_write(p, "main.approf"));
        r = run_report((const char *const[]){"1999999001", "--json", NULL});
        ASSERT_EQ(r.status, 0);
        ASSERT_STREQ(r.err, "");
        doc = json_loads(r.out, 0, NULL);
        ASSERT_NOT_NULL(doc);
        ASSERT_EQ(jint(jget(doc, "process"), "pid"), 1999999001);
        ASSERT_EQ(jint(doc, "sites_total"), 3);
        json_decref(doc);
        run_free(&r);
        r = run_report((const char *const[]){"1999999001", NULL});
        ASSERT_EQ(r.status, 0);
        ASSERT_STREQ(r.err, "allocprof: showing main.approf (the newest profile of pid "
                            "1999999001 here)\n");
        run_free(&r);
        r = run_report((const char *const[]){"1999999000", "--json", NULL});
        ASSERT_EQ(r.status, 0);
        ASSERT_STREQ(r.err, "allocprof: pid 1999999000 was 'allocprof run'; showing "
                            "main.approf, the profile of its program, pid 1999999001\n");
        doc = json_loads(r.out, 0, NULL);
        ASSERT_NOT_NULL(doc);
        ASSERT_EQ(jint(jget(doc, "process"), "pid"), 1999999001);
        json_decref(doc);
        run_free(&r);
        /* Another process that run started (its exit status unknown) is not its program. */
        p->pid = 1999999005;
        p->ppid = 1999999004;
        p->exit_status = -1;
        ASSERT_OK(ap_profile_write(p, "child.approf"));
        expect_failure((const char *const[]){"1999999004", NULL}, 1,
                       "no profile of pid 1999999004 in the current directory (looked for "
                       "allocprof.*.1999999004.approf, then in every *.approf for process "
                       "1999999004 or for the program an 'allocprof run' with pid 1999999004 "
                       "started)\n");
        /* By name: the newest image of the pid, numbered when the program exec'ed itself;
         * a name that only ends in the same digits is another pid's. */
        p->pid = 1999999002;
        p->nsites = 1;
        ASSERT_OK(ap_profile_write(p, "allocprof.a.1999999002.approf"));
        set_mtime("allocprof.a.1999999002.approf", 1000000000);
        p->nsites = 4;
        ASSERT_OK(ap_profile_write(p, "allocprof.a.1999999002-2.approf"));
        set_mtime("allocprof.a.1999999002-2.approf", 1500000000);
        p->nsites = 5;
        ASSERT_OK(ap_profile_write(p, "allocprof.a.11999999002.approf"));
        set_mtime("allocprof.a.11999999002.approf", 2000000000);
        r = run_report((const char *const[]){"1999999002", "--json", NULL});
        ASSERT_EQ(r.status, 0);
        doc = json_loads(r.out, 0, NULL);
        ASSERT_NOT_NULL(doc);
        ASSERT_EQ(jint(doc, "sites_total"), 4);
        json_decref(doc);
        run_free(&r);
        p->exit_status = 0;
        free(p->run_id);
        p->run_id = NULL;
        p->pid = 77;
        p->ppid = 4200;
        p->nsites = 7;
        unlink("main.approf");
        unlink("child.approf");
        unlink("allocprof.a.1999999002.approf");
        unlink("allocprof.a.1999999002-2.approf");
        unlink("allocprof.a.11999999002.approf");

        r = run_report(
                (const char *const[]){"allocprof.other.77.approf", "--color", "--top=0", NULL});
        ASSERT_EQ(r.status, 0);
        ASSERT_CONTAINS(r.out, "\033[1m");
        ASSERT_CONTAINS(r.out, "Hot call sites (2, by bytes)");
        ASSERT_STREQ(r.err, "");
        run_free(&r);

        r = run_report((const char *const[]){"--help", NULL});
        ASSERT_EQ(r.status, 0);
        ASSERT_CONTAINS(r.out, "Usage: allocprof report");
        run_free(&r);

        /* Usage errors: 2. */
        expect_failure((const char *const[]){"--top", "x", NULL}, 2, "invalid --top value 'x'");
        expect_failure((const char *const[]){"--top", "-1", NULL}, 2, "invalid --top value '-1'");
        expect_failure((const char *const[]){"--top", NULL}, 2, "option '--top' needs a value");
        expect_failure((const char *const[]){"--sort", "size", NULL}, 2,
                       "invalid --sort value 'size' (expected allocations, bytes, leaked or peak)");
        expect_failure((const char *const[]){"--frobnicate", NULL}, 2,
                       "unknown option '--frobnicate'");
        expect_failure((const char *const[]){"-x", NULL}, 2, "unknown option '-x'");
        /* Several files are merged: each must be readable. */
        expect_failure((const char *const[]){"a.approf", "b.approf", NULL}, 1,
                       "cannot read a.approf");
        expect_failure((const char *const[]){"--all", "a.approf", NULL}, 2,
                       "--all takes no FILE");

        /* Unreadable input: 1. */
        expect_failure((const char *const[]){"missing.approf", NULL}, 1,
                       "allocprof: cannot read missing.approf: No such file or directory\n");
        expect_failure((const char *const[]){"999", NULL}, 1, "no profile of pid 999");
        {
                int fd = open("allocprof.bad.1.approf", O_WRONLY | O_CREAT | O_TRUNC, 0600);

                ASSERT_TRUE(fd >= 0);
                ASSERT_EQ(write(fd, "{\"format\":", 10), 10);
                close(fd);
        }
        expect_failure((const char *const[]){"allocprof.bad.1.approf", NULL}, 1,
                       "allocprof: cannot read allocprof.bad.1.approf: not valid JSON");
        {
                int fd = open("newer.approf", O_WRONLY | O_CREAT | O_TRUNC, 0600);
                const char *v4 = "{\"format\":\"allocprof-profile\",\"format_version\":4}";

                ASSERT_TRUE(fd >= 0);
                ASSERT_EQ(write(fd, v4, strlen(v4)), (ssize_t)strlen(v4));
                close(fd);
        }
        expect_failure((const char *const[]){"newer.approf", NULL}, 1,
                       "profile format version 4 is not supported");

        unlink("allocprof.tree-bench.4242.approf");
        unlink("allocprof.other.77.approf");
        unlink("allocprof.x.approf.tmp.1.0");
        unlink("allocprof.bad.1.approf");
        unlink("newer.approf");
        ASSERT_EQ(chdir(cwd), 0);
        ap_profile_free(p);
}

/* A site whose first frame has no name is labelled with its nearest named caller, past
 * the library's allocation wrappers. */
static void test_unnamed_label(void)
{
        struct ap_profile *p = build_known();
        char *t;

        site(p, (struct ap_psite){.allocations = 7, .bytes = 700u << 20, .peak_bytes = 1u << 20}, 4,
             (struct fspec[]){{NULL, NULL, 0, M_ZLIB, 0x7d00, false},
                              {"zcalloc", NULL, 0, M_ZLIB, 0x7e00, false},
                              {NULL, NULL, 0, M_ZLIB, 0x7e80, false},
                              {"inflate_block", NULL, 0, M_ZLIB, 0x7f00, false}});
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "0x7d00 (libz.so.1) from inflate_block\n");
        free(t);
        ap_profile_free(p);
}

/* A site whose first frame is an allocation wrapper (every site of jq is jv_mem_alloc) is
 * labelled with its nearest named caller that is not one; "allocator" in a template
 * argument does not make a function one. */
static void test_wrapper_label(void)
{
        struct ap_profile *p = build_known();
        char *t;

        site(p, (struct ap_psite){.allocations = 9, .bytes = 900u << 20}, 4,
             (struct fspec[]){{"jv_mem_alloc", NULL, 0, M_ZLIB, 0x7d00, false},
                              {NULL, NULL, 0, M_ZLIB, 0x7e00, false},
                              {"Perl_safesysMalloc", NULL, 0, M_ZLIB, 0x7e80, false},
                              {"jv_array_sized", NULL, 0, M_ZLIB, 0x7f00, false}});
        site(p, (struct ap_psite){.allocations = 8, .bytes = 800u << 20}, 2,
             (struct fspec[]){{"std::vector<Foo, std::allocator<Foo> >::push_back(Foo&&)", NULL, 0,
                               M_ZLIB, 0x8000, false},
                              {"fill", NULL, 0, M_ZLIB, 0x8100, false}});
        site(p, (struct ap_psite){.allocations = 7, .bytes = 700u << 20}, 1,
             (struct fspec[]){{"xmalloc", NULL, 0, M_ZLIB, 0x8200, false}});
        t = summary_text(p, NULL);
        ASSERT_CONTAINS(t, "calls  jv_mem_alloc (libz.so.1) from jv_array_sized\n");
        ASSERT_CONTAINS(t, "calls  std::vector<Foo, std::allocator<Foo> >::push_back(Foo&&) "
                           "(libz.so.1)\n");
        ASSERT_CONTAINS(t, "calls  xmalloc (libz.so.1)\n"); /* no caller to name */
        free(t);
        ap_profile_free(p);
}

/* Merging (`report A B`, `report --all`) looked each frame of each stack up again, and
 * its module by a walk over all the modules merged so far: a profile of n modules and a
 * stack of n frames, one in each, took n^2 steps (a minute for 200,000, a file of a few
 * MB; the alarm fails the test).  Each frame and module is looked up once now. */
static void test_merge_many_modules(void)
{
        const uint32_t n = 200000;
        struct ap_profile *p = ap_profile_new(), *m = NULL;
        struct ap_psite *s;
        char name[32];

        ASSERT_NOT_NULL(p);
        p->modules = calloc(n, sizeof(*p->modules));
        p->frames = calloc(n, sizeof(*p->frames));
        p->sites = calloc(2, sizeof(*p->sites));
        ASSERT_TRUE(p->modules && p->frames && p->sites);
        for (uint32_t i = 0; i < n; i++) {
                snprintf(name, sizeof(name), "/lib/m%u.so", i);
                p->modules[i] = (struct ap_pmodule){
                        .path = ap_profile_intern(p, name), .build_id = AP_NONE, .allocations = 1};
                p->frames[i] = (struct ap_pframe){
                        .function = AP_NONE, .file = AP_NONE, .module = i, .address = i};
        }
        p->nmodules = p->nframes = n;
        for (uint32_t k = 0; k < 2; k++) {
                s = &p->sites[p->nsites++];
                s->allocations = s->bytes = 1;
                s->nframes = n - k;
                s->frames = calloc(n, sizeof(*s->frames));
                ASSERT_NOT_NULL(s->frames);
                for (uint32_t i = 0; i < n - k; i++)
                        s->frames[i] = i + k;
        }
        struct ap_profile *two[] = {p, p};
        alarm(10);
        ASSERT_OK(ap_profile_merge(two, 2, 0, &m));
        alarm(0);
        ASSERT_EQ(m->nmodules, n);
        ASSERT_EQ(m->nframes, n);
        ASSERT_EQ(m->nsites, 2u);
        ASSERT_EQ(m->sites[1].nframes, n - 1);
        ASSERT_EQ(m->sites[1].allocations, 2u);
        ASSERT_EQ(m->frames[m->sites[1].frames[0]].address, 1u);
        ASSERT_EQ(m->modules[m->frames[m->sites[1].frames[0]].module].allocations, 2u);
        ASSERT_STREQ(m->strings[m->modules[m->frames[m->sites[1].frames[n - 2]].module].path],
                     "/lib/m199999.so");
        ap_profile_free(m);
        ap_profile_free(p);
}

/* Counters near INT64_MAX (each valid in a file) add up to INT64_MAX in a merge, "at least
 * this much", rather than wrap to a small number. */
static void test_merge_saturates(void)
{
        struct ap_profile *p = ap_profile_new(), *m = NULL;

        ASSERT_NOT_NULL(p);
        p->sites = calloc(1, sizeof(*p->sites));
        ASSERT_NOT_NULL(p->sites);
        p->nsites = 1;
        p->sites[0] = (struct ap_psite){
                .allocations = INT64_MAX - 1, .bytes = INT64_MAX, .frees = 3, .freed_bytes = 5};
        p->totals.allocations = INT64_MAX - 1;
        p->totals.bytes = INT64_MAX;
        p->totals.frees = 3;
        p->totals.freed_bytes = 5;
        p->hist_count[3] = INT64_MAX / 2 + 1;
        struct ap_profile *three[] = {p, p, p};
        ASSERT_OK(ap_profile_merge(three, 3, 0, &m));
        ASSERT_EQ(m->nsites, 1u);
        ASSERT_EQ(m->sites[0].allocations, (uint64_t)INT64_MAX);
        ASSERT_EQ(m->sites[0].bytes, (uint64_t)INT64_MAX);
        ASSERT_EQ(m->sites[0].frees, 9u);
        ASSERT_EQ(m->totals.allocations, (uint64_t)INT64_MAX);
        ASSERT_EQ(m->totals.bytes, (uint64_t)INT64_MAX);
        ASSERT_EQ(m->totals.freed_bytes, 15u);
        ASSERT_EQ(m->hist_count[3], (uint64_t)INT64_MAX);
        ap_profile_free(m);
        ap_profile_free(p);
}

static void make_sampled(struct ap_profile *p, uint64_t interval)
{
        free(p->mode);
        p->mode = xstrdup("sampled");
        p->sample_interval = p->sample_interval_min = p->sample_interval_max = interval;
}

/* Merges in[0..n) (the program: in[main]), checks the merge's interval range, and returns
 * its text report. */
static char *merged_text(struct ap_profile **in, size_t n, size_t main, uint64_t min, uint64_t max)
{
        struct ap_profile *m;
        ASSERT_OK(ap_profile_merge(in, n, main, &m));
        ASSERT_STREQ(m->mode, "sampled");
        ASSERT_EQ(m->sample_interval_min, min);
        ASSERT_EQ(m->sample_interval_max, max);
        char *t = render_text(m, 10, AP_SORT_BYTES, false);
        ASSERT_NOT_CONTAINS(t, "changed while");
        ap_profile_free(m);
        return t;
}

/* A merge's intervals: a full-mode profile counts as 1 byte (every allocation recorded), and
 * the text says the merged profiles differ, not that one's interval changed. */
static void test_merge_intervals(void)
{
        struct ap_profile *full = build_known(), *a = build_known(), *b = build_known(), *m;
        char *t;

        make_sampled(a, 1024);
        make_sampled(b, 524288);
        struct ap_profile *sampled_full[] = {a, full}, *two_sampled[] = {b, a};
        const struct {
                struct ap_profile **in;
                size_t main;
                uint64_t min, max;
                const char *says;
        } cases[] = {
                {sampled_full, 1, 1, 1024,
                 "\n  mode sampled: one sample per 1 B to 1.00 KiB allocated on average (the "
                 "merged profiles were\n  recorded at different intervals, 1 B meaning every "
                 "allocation); figures are estimates\n"},
                {two_sampled, 0, 1024, 524288,
                 "one sample per 1.00 KiB to 512.00 KiB allocated on average (the merged "
                 "profiles were\n  recorded at different intervals); figures are estimates\n"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                t = merged_text(cases[i].in, 2, cases[i].main, cases[i].min, cases[i].max);
                ASSERT_CONTAINS(t, cases[i].says);
                free(t);
        }

        struct ap_profile *two_full[] = {full, full};
        ASSERT_OK(ap_profile_merge(two_full, 2, 0, &m));
        ASSERT_STREQ(m->mode, "full");
        ASSERT_EQ(m->sample_interval_min, 0u);
        ASSERT_EQ(m->sample_interval_max, 0u);
        ap_profile_free(m);
        ap_profile_free(full);
        ap_profile_free(a);
        ap_profile_free(b);
}

int main(void)
{
        ASSERT_NOT_NULL(mkdtemp(tmpdir));
        /* Fixed zone: the text report prints the start time in local time. */
        setenv("TZ", "UTC", 1);
        test_json_schema();
        test_json_sort_and_top();
        test_ties();
        test_order_many_sites();
        test_json_exit_status();
        test_text();
        test_text_deep_stack();
        test_json_escaping();
        test_text_sanitizes();
        test_degenerate();
        test_summary();
        test_unnamed_label();
        test_wrapper_label();
        test_live();
        test_by_exec();
        test_command();
        test_merge_many_modules();
        test_merge_saturates();
        test_merge_intervals();
        ASSERT_EQ(rmdir(tmpdir), 0);
        printf("report: all tests passed\n");
        return 0;
}
