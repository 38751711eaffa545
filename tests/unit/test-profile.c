/* Tests for the profile model and file format: exact round trips, string interning, and
 * a reader that turns every kind of corrupt or hostile file into a clean error.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "../helpers.h"
#include "profile.h"

static char tmpdir[] = "/tmp/ap-test-profile.XXXXXX";

static char *path_in_tmp(const char *name)
{
        char *s;

        ASSERT_TRUE(asprintf(&s, "%s/%s", tmpdir, name) > 0);
        return s;
}

static char *xstrdup(const char *s)
{
        char *c = strdup(s);

        ASSERT_NOT_NULL(c);
        return c;
}

static uint32_t add_frame(struct ap_profile *p, const char *function, const char *file,
                          uint32_t line, uint32_t module, uint64_t address, bool inlined)
{
        struct ap_pframe *f;

        p->frames = reallocarray(p->frames, p->nframes + 1, sizeof(*p->frames));
        ASSERT_NOT_NULL(p->frames);
        f = &p->frames[p->nframes];
        f->function = function ? ap_profile_intern(p, function) : AP_NONE;
        f->file = file ? ap_profile_intern(p, file) : AP_NONE;
        f->line = line;
        f->module = module;
        f->address = address;
        f->inlined = inlined;
        return p->nframes++;
}

static struct ap_psite *add_site(struct ap_profile *p, uint64_t seed, uint32_t nframes,
                                 const uint32_t *frames)
{
        struct ap_psite *s;

        p->sites = reallocarray(p->sites, p->nsites + 1, sizeof(*p->sites));
        ASSERT_NOT_NULL(p->sites);
        s = &p->sites[p->nsites++];
        memset(s, 0, sizeof(*s));
        /* Distinct values per field, so a field swapped in the format cannot go unnoticed;
         * no more frees or leaked blocks than allocations, nor bytes. */
        s->allocations = seed + 11;
        s->bytes = seed + 12;
        s->frees = seed + 3;
        s->freed_bytes = seed + 4;
        s->leaked_blocks = seed + 5;
        s->leaked_bytes = seed + 6;
        s->peak_bytes = seed + 7;
        s->max_live_bytes = seed + 8;
        s->temporary = seed + 9;
        s->reallocs = seed + 10;
        s->truncated = seed % 3 == 1; /* some sites, not all */
        s->nframes = nframes;
        s->frames = nframes ? calloc(nframes, sizeof(*frames)) : NULL;
        if (nframes)
                memcpy(s->frames, frames, nframes * sizeof(*frames));
        return s;
}

/* A profile that exercises every field and edge: unknown strings/modules, a frameless
 * site, full 64-bit addresses, the first and last histogram buckets. */
static struct ap_profile *build_sample(void)
{
        struct ap_profile *p = ap_profile_new();
        uint32_t f[5];

        ASSERT_NOT_NULL(p);
        ASSERT_EQ(p->exit_status, -1);
        p->tool_version = xstrdup("0.1.0");
        p->pid = 4242;
        p->ppid = 1;
        p->ncommand = 3;
        p->command = calloc(3, sizeof(char *));
        p->command[0] = xstrdup("./prog");
        p->command[1] = xstrdup("--flag");
        p->command[2] = xstrdup("a \"quoted\" arg\twith\\escapes \xc3\xa9");
        p->exe = xstrdup("/usr/bin/prog");
        p->exit_status = 3;
        p->term_signal = 0;
        p->mode = xstrdup("full");
        p->sample_interval = 0;
        p->start_unix_ns = 1732575000123456789ull;
        p->duration_ns = 2500000000ull;

        p->totals.allocations = 118;
        p->totals.bytes = 119;
        p->totals.frees = 103;
        p->totals.freed_bytes = 104;
        p->totals.leaked_blocks = 105;
        p->totals.leaked_bytes = 106;
        p->totals.peak_bytes = 107;
        p->totals.peak_blocks = 108;
        p->totals.peak_t_ns = 109;
        p->totals.temporary = 110;
        p->totals.reallocs = 111;
        p->totals.dropped_events = 112;
        p->totals.dropped_frees = 113;
        p->totals.unmatched_frees = 114;
        p->totals.invalid_records = 115;
        p->totals.threads = (uint64_t)INT64_MAX; /* the largest value that round-trips */
        p->ring_waits = 116;
        p->ring_wait_ns = 117;

        p->modules = calloc(2, sizeof(*p->modules));
        p->nmodules = 2;
        p->modules[0] = (struct ap_pmodule){.path = ap_profile_intern(p, "/usr/bin/prog"),
                                            .build_id = ap_profile_intern(p, "0123abcd"),
                                            .allocations = 201,
                                            .bytes = 202,
                                            .leaked_blocks = 203,
                                            .leaked_bytes = 204};
        p->modules[1] = (struct ap_pmodule){.path = ap_profile_intern(p, "/lib/libc.so.6"),
                                            .build_id = AP_NONE,
                                            .allocations = 301,
                                            .bytes = 302,
                                            .leaked_blocks = 303,
                                            .leaked_bytes = 304};

        f[0] = add_frame(p, "make_node", "src/tree.c", 42, 0, 0x1234, true);
        f[1] = add_frame(p, "tree_insert", "src/tree.c", 97, 0, 0x1234, false);
        f[2] = add_frame(p, "main", "src/main.c", 12, 0, 0x10a0, false);
        f[3] = add_frame(p, NULL, NULL, 0, 1, 0xffffffffffffffffull, false);
        f[4] = add_frame(p, "ns::Widget<int>::grow()", NULL, 7, AP_NONE, 0, false);

        add_site(p, 1000, 3, (uint32_t[]){f[0], f[1], f[2]});
        add_site(p, 2000, 2, (uint32_t[]){f[4], f[3]});
        add_site(p, 3000, 0, NULL);
        /* Shares its two frames with the first site's outer two: in the file, sites are
         * [3000: none] [4000: 1 2] [1000: 0 + 2 shared] [2000: 4 3]. */
        add_site(p, 4000, 2, (uint32_t[]){f[1], f[2]});

        p->hist_count[0] = 5;
        p->hist_bytes[0] = 0;
        p->hist_count[7] = 9;
        p->hist_bytes[7] = 800;
        p->hist_count[AP_HIST_BUCKETS - 1] = 1;
        p->hist_bytes[AP_HIST_BUCKETS - 1] = (uint64_t)1 << 62;

        p->ntimeline = 3;
        p->timeline = calloc(3, sizeof(*p->timeline));
        p->timeline[0] = (struct ap_ptimepoint){0, 0, 0};
        p->timeline[1] = (struct ap_ptimepoint){1000000, 4096, 12};
        p->timeline[2] = (struct ap_ptimepoint){2000000, 512, 30};
        return p;
}

/* For the sort in file_frame_order (qsort has no context argument). */
static const struct ap_profile *order_of;

static int cmp_file_order(const void *x, const void *y)
{
        const struct ap_pframe *a = &order_of->frames[*(const uint32_t *)x];
        const struct ap_pframe *b = &order_of->frames[*(const uint32_t *)y];

        if (a->module != b->module)
                return a->module < b->module ? -1 : 1;
        if (a->address != b->address)
                return a->address < b->address ? -1 : 1;
        return *(const uint32_t *)x < *(const uint32_t *)y ? -1 : 1;
}

/* Where each of p's frames ends up in a format 3 file, which sorts them by module (none
 * last), address and then their index: renumber[i] = the file's number for frame i. */
static uint32_t *file_frame_order(const struct ap_profile *p)
{
        uint32_t *order = calloc(p->nframes + 1, sizeof(*order));
        uint32_t *renumber = calloc(p->nframes + 1, sizeof(*renumber));

        ASSERT_NOT_NULL(order);
        ASSERT_NOT_NULL(renumber);
        for (uint32_t i = 0; i < p->nframes; i++)
                order[i] = i;
        order_of = p;
        qsort(order, p->nframes, sizeof(*order), cmp_file_order);
        for (uint32_t i = 0; i < p->nframes; i++)
                renumber[order[i]] = i;
        free(order);
        return renumber;
}

/* a and b hold the same profile, frame i of a being frame renumber[i] of b (NULL: the
 * same numbers). */
static void assert_same_renumbered(const struct ap_profile *a, const struct ap_profile *b,
                                   const uint32_t *renumber)
{
        ASSERT_STREQ(a->tool_version, b->tool_version);
        ASSERT_EQ(a->pid, b->pid);
        ASSERT_EQ(a->ppid, b->ppid);
        ASSERT_EQ(a->ncommand, b->ncommand);
        for (uint32_t i = 0; i < a->ncommand; i++)
                ASSERT_STREQ(a->command[i], b->command[i]);
        ASSERT_STREQ(a->exe, b->exe);
        ASSERT_STREQ(a->foreign_malloc, b->foreign_malloc);
        ASSERT_EQ(a->exit_status, b->exit_status);
        ASSERT_EQ(a->term_signal, b->term_signal);
        ASSERT_STREQ(a->mode, b->mode);
        ASSERT_EQ(a->sample_interval, b->sample_interval);
        ASSERT_EQ(a->sample_interval_min ? a->sample_interval_min : a->sample_interval,
                  b->sample_interval_min);
        ASSERT_EQ(a->sample_interval_max ? a->sample_interval_max : a->sample_interval,
                  b->sample_interval_max);
        ASSERT_EQ(a->start_unix_ns, b->start_unix_ns);
        ASSERT_EQ(a->duration_ns, b->duration_ns);
        ASSERT_EQ(a->live, b->live);
        ASSERT_EQ(a->by_exec, b->by_exec);
        ASSERT_EQ(a->exec_profiled, b->exec_profiled);
        ASSERT_STREQ(a->exec_path, b->exec_path);

        ASSERT_EQ(a->totals.allocations, b->totals.allocations);
        ASSERT_EQ(a->totals.bytes, b->totals.bytes);
        ASSERT_EQ(a->totals.frees, b->totals.frees);
        ASSERT_EQ(a->totals.freed_bytes, b->totals.freed_bytes);
        ASSERT_EQ(a->totals.leaked_blocks, b->totals.leaked_blocks);
        ASSERT_EQ(a->totals.leaked_bytes, b->totals.leaked_bytes);
        ASSERT_EQ(a->totals.peak_bytes, b->totals.peak_bytes);
        ASSERT_EQ(a->totals.peak_blocks, b->totals.peak_blocks);
        ASSERT_EQ(a->totals.peak_t_ns, b->totals.peak_t_ns);
        ASSERT_EQ(a->totals.temporary, b->totals.temporary);
        ASSERT_EQ(a->totals.reallocs, b->totals.reallocs);
        ASSERT_EQ(a->totals.dropped_events, b->totals.dropped_events);
        ASSERT_EQ(a->totals.dropped_frees, b->totals.dropped_frees);
        ASSERT_EQ(a->totals.unmatched_frees, b->totals.unmatched_frees);
        ASSERT_EQ(a->totals.untracked_samples, b->totals.untracked_samples);
        ASSERT_EQ(a->totals.unprofiled_children, b->totals.unprofiled_children);
        ASSERT_EQ(a->totals.dropped_no_ring, b->totals.dropped_no_ring);
        ASSERT_EQ(a->totals.invalid_records, b->totals.invalid_records);
        ASSERT_EQ(a->totals.threads, b->totals.threads);
        ASSERT_EQ(a->ring_waits, b->ring_waits);
        ASSERT_EQ(a->ring_wait_ns, b->ring_wait_ns);

        ASSERT_EQ(a->nstrings, b->nstrings);
        for (uint32_t i = 0; i < a->nstrings; i++)
                ASSERT_STREQ(a->strings[i], b->strings[i]);

        ASSERT_EQ(a->nmodules, b->nmodules);
        for (uint32_t i = 0; i < a->nmodules; i++) {
                ASSERT_EQ(a->modules[i].path, b->modules[i].path);
                ASSERT_EQ(a->modules[i].build_id, b->modules[i].build_id);
                ASSERT_EQ(a->modules[i].allocations, b->modules[i].allocations);
                ASSERT_EQ(a->modules[i].bytes, b->modules[i].bytes);
                ASSERT_EQ(a->modules[i].leaked_blocks, b->modules[i].leaked_blocks);
                ASSERT_EQ(a->modules[i].leaked_bytes, b->modules[i].leaked_bytes);
        }

#define NEW(f) (renumber ? renumber[f] : (f))
        ASSERT_EQ(a->nframes, b->nframes);
        for (uint32_t i = 0; i < a->nframes; i++) {
                const struct ap_pframe *x = &a->frames[i], *y = &b->frames[NEW(i)];

                ASSERT_EQ(x->function, y->function);
                ASSERT_EQ(x->file, y->file);
                ASSERT_EQ(x->line, y->line);
                ASSERT_EQ(x->module, y->module);
                ASSERT_EQ(x->address, y->address);
                ASSERT_EQ(x->inlined, y->inlined);
        }

        /* Sites are written in the order of their stacks (outermost frame first): match
         * each of a's with the first unused site of b that has the same stack. */
        ASSERT_EQ(a->nsites, b->nsites);
        bool *used = calloc(b->nsites + 1, sizeof(*used));
        ASSERT_NOT_NULL(used);
        for (uint32_t i = 0; i < a->nsites; i++) {
                const struct ap_psite *x = &a->sites[i], *y = NULL;
                for (uint32_t k = 0; k < b->nsites && !y; k++) {
                        const struct ap_psite *c = &b->sites[k];
                        bool same = !used[k] && c->nframes == x->nframes &&
                                    c->allocations == x->allocations;

                        for (uint32_t j = 0; same && j < x->nframes; j++)
                                same = c->frames[j] == NEW(x->frames[j]);
                        if (same) {
                                used[k] = true;
                                y = c;
                        }
                }
                ASSERT_NOT_NULL(y);

                ASSERT_EQ(x->allocations, y->allocations);
                ASSERT_EQ(x->bytes, y->bytes);
                ASSERT_EQ(x->frees, y->frees);
                ASSERT_EQ(x->freed_bytes, y->freed_bytes);
                ASSERT_EQ(x->leaked_blocks, y->leaked_blocks);
                ASSERT_EQ(x->leaked_bytes, y->leaked_bytes);
                ASSERT_EQ(x->peak_bytes, y->peak_bytes);
                ASSERT_EQ(x->max_live_bytes, y->max_live_bytes);
                ASSERT_EQ(x->temporary, y->temporary);
                ASSERT_EQ(x->reallocs, y->reallocs);
                ASSERT_EQ(x->truncated, y->truncated);
                ASSERT_EQ(x->nframes, y->nframes);
                for (uint32_t j = 0; j < x->nframes; j++)
                        ASSERT_EQ(NEW(x->frames[j]), y->frames[j]);
        }
        free(used);
#undef NEW

        for (unsigned i = 0; i < AP_HIST_BUCKETS; i++) {
                ASSERT_EQ(a->hist_count[i], b->hist_count[i]);
                ASSERT_EQ(a->hist_bytes[i], b->hist_bytes[i]);
        }

        ASSERT_EQ(a->ntimeline, b->ntimeline);
        for (uint32_t i = 0; i < a->ntimeline; i++) {
                ASSERT_EQ(a->timeline[i].t_ns, b->timeline[i].t_ns);
                ASSERT_EQ(a->timeline[i].live_bytes, b->timeline[i].live_bytes);
                ASSERT_EQ(a->timeline[i].allocations, b->timeline[i].allocations);
        }
}

/* b was read from a format 3 file that ap_profile_write made of a: equal in every value,
 * with the frames in the file's order. */
static void assert_same(const struct ap_profile *a, const struct ap_profile *b)
{
        uint32_t *renumber = file_frame_order(a);

        assert_same_renumbered(a, b, renumber);
        free(renumber);
}

static struct ap_profile *read_ok(const char *path)
{
        struct ap_profile *p = NULL;
        char *err = NULL;
        int r = ap_profile_read(path, &p, &err);

        if (r < 0)
                fprintf(stderr, "reading %s: %s\n", path, err ? err : "?");
        ASSERT_OK(r);
        ASSERT_NULL(err);
        ASSERT_NOT_NULL(p);
        return p;
}

/* Counts directory entries other than . and .. */
static unsigned count_entries(const char *dir)
{
        DIR *d = opendir(dir);
        struct dirent *e;
        unsigned n = 0;

        ASSERT_NOT_NULL(d);
        while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                        n++;
        closedir(d);
        return n;
}

static void test_round_trip(void)
{
        struct ap_profile *p = build_sample(), *q, *e;
        char *path = path_in_tmp("allocprof.prog.4242.approf");
        struct stat st;

        ASSERT_OK(ap_profile_write(p, path));
        ASSERT_EQ(stat(path, &st), 0);
        ASSERT_EQ(st.st_mode & 07777, 0600);
        ASSERT_EQ(count_entries(tmpdir), 1); /* the temporary is gone */
        q = read_ok(path);
        assert_same(p, q);

        /* Rewriting what was read gives the same profile again, and replaces the file. */
        ASSERT_OK(ap_profile_write(q, path));
        ap_profile_free(q);
        q = read_ok(path);
        assert_same(p, q);
        ASSERT_EQ(count_entries(tmpdir), 1);
        ap_profile_free(q);

        /* An empty profile round-trips too (NULL strings become null and back). */
        e = ap_profile_new();
        ASSERT_NOT_NULL(e);
        ASSERT_OK(ap_profile_write(e, path));
        q = read_ok(path);
        assert_same(e, q);
        ASSERT_NULL(q->mode);
        ASSERT_NULL(q->exe);
        ASSERT_EQ(q->exit_status, -1);
        ap_profile_free(q);
        ap_profile_free(e);

        unlink(path);
        free(path);
        ap_profile_free(p);
}

/* Sites already in the file's order, many callers of a few stacks each (a program with
 * 2,048 functions that each reach 16 allocation sites through a table): sorting them
 * kept a part of each partition on its stack of ranges to do, 161 of the 66 it has
 * room for, and wrote over the writer's own stack (the collector crashed writing the
 * profile of a million such sites). */
static void test_sites_in_order(void)
{
        enum { CALLERS = 2048, CALLEES = 16 };
        struct ap_profile *p = ap_profile_new(), *q;
        char *path = path_in_tmp("ordered.approf");
        uint32_t main_f, leaf_f, caller_f[CALLERS], callee_f[CALLEES];
        uint64_t allocations = 0;

        ASSERT_NOT_NULL(p);
        p->mode = xstrdup("full");
        p->modules = calloc(1, sizeof(*p->modules));
        ASSERT_NOT_NULL(p->modules);
        p->nmodules = 1;
        p->modules[0] = (struct ap_pmodule){.path = ap_profile_intern(p, "/usr/bin/prog"),
                                            .build_id = AP_NONE};
        /* File order is by address: main, the callees, the callers, the leaf. */
        main_f = add_frame(p, "main", NULL, 0, 0, 0x1000, false);
        for (uint32_t j = 0; j < CALLEES; j++)
                callee_f[j] = add_frame(p, NULL, NULL, 0, 0, 0x2000 + 16 * j, false);
        for (uint32_t i = 0; i < CALLERS; i++)
                caller_f[i] = add_frame(p, NULL, NULL, 0, 0, 0x10000 + 16 * i, false);
        leaf_f = add_frame(p, "leaf", NULL, 0, 0, 0x100000, false);
        for (uint32_t i = 0; i < CALLERS; i++)
                for (uint32_t j = 0; j < CALLEES; j++) {
                        struct ap_psite *s = add_site(
                                p, 0, 4, (uint32_t[]){leaf_f, callee_f[j], caller_f[i], main_f});
                        s->allocations = 1 + i;
                        s->bytes = 16;
                        s->frees = s->freed_bytes = s->leaked_blocks = s->leaked_bytes = 0;
                        s->peak_bytes = s->max_live_bytes = s->temporary = s->reallocs = 0;
                        s->truncated = false;
                        allocations += s->allocations;
                }
        ASSERT_OK(ap_profile_write(p, path));
        q = read_ok(path);
        ASSERT_EQ(q->nsites, (uint32_t)(CALLERS * CALLEES));
        for (uint32_t i = 0; i < q->nsites; i++)
                allocations -= q->sites[i].allocations;
        ASSERT_EQ(allocations, 0u);
        ap_profile_free(q);
        unlink(path);
        free(path);
        ap_profile_free(p);
}

/* The site of q whose stack is `frames` (file numbers), or NULL. */
static const struct ap_psite *find_site(const struct ap_profile *q, uint32_t nframes,
                                        const uint32_t *frames)
{
        for (uint32_t i = 0; i < q->nsites; i++)
                if (q->sites[i].nframes == nframes &&
                    (nframes == 0 ||
                     memcmp(q->sites[i].frames, frames, sizeof(*frames) * nframes) == 0))
                        return &q->sites[i];
        return NULL;
}

/* Counters above INT64_MAX saturate; addresses keep all 64 bits. */
static void test_u64_limits(void)
{
        struct ap_profile *p = build_sample(), *q;
        char *path = path_in_tmp("limits.approf");
        uint32_t *renumber, stack[3];

        p->totals.bytes = UINT64_MAX;
        p->sites[0].allocations = (uint64_t)INT64_MAX + 1;
        p->sites[0].max_live_bytes = UINT64_MAX; /* coded against the other counters */
        p->sites[0].frees = UINT64_MAX;
        p->timeline[1].t_ns = UINT64_MAX; /* a row coded as the step from the one before */
        p->frames[0].address = 0x8000000000000001ull;
        renumber = file_frame_order(p);
        ASSERT_OK(ap_profile_write(p, path));
        q = read_ok(path);
        ASSERT_EQ(q->totals.bytes, (uint64_t)INT64_MAX);
        for (uint32_t j = 0; j < 3; j++)
                stack[j] = renumber[p->sites[0].frames[j]];
        const struct ap_psite *s0 = find_site(q, 3, stack); /* sites come back in stack order */
        ASSERT_NOT_NULL(s0);
        ASSERT_EQ(s0->allocations, (uint64_t)INT64_MAX);
        ASSERT_EQ(s0->max_live_bytes, (uint64_t)INT64_MAX);
        ASSERT_EQ(s0->frees, (uint64_t)INT64_MAX);
        ASSERT_EQ(s0->bytes, p->sites[0].bytes);
        ASSERT_EQ(q->timeline[1].t_ns, (uint64_t)INT64_MAX);
        ASSERT_EQ(q->timeline[2].t_ns, p->timeline[2].t_ns);
        ASSERT_EQ(q->frames[renumber[0]].address, 0x8000000000000001ull);
        ASSERT_EQ(q->frames[renumber[3]].address, 0xffffffffffffffffull);
        ap_profile_free(q);
        ap_profile_free(p);
        free(renumber);
        unlink(path);
        free(path);
}

/* Bytes that are not UTF-8 (argv, paths) become U+FFFD instead of failing the write. */
static void test_invalid_utf8(void)
{
        struct ap_profile *p = build_sample(), *q;
        char *path = path_in_tmp("utf8.approf");

        free(p->command[1]);
        p->command[1] = xstrdup("a\xff"
                                "b\xc3");
        p->strings[0][0] = '\x80';
        ASSERT_OK(ap_profile_write(p, path));
        q = read_ok(path);
        ASSERT_STREQ(q->command[1], "a\xef\xbf\xbd"
                                    "b\xef\xbf\xbd");
        ASSERT_EQ((unsigned char)q->strings[0][0], 0xef);
        ASSERT_STREQ(q->command[2], p->command[2]); /* valid UTF-8 is untouched */
        ap_profile_free(q);
        ap_profile_free(p);
        unlink(path);
        free(path);
}

static void test_intern(void)
{
        struct ap_profile *p = ap_profile_new();
        char name[32];
        uint32_t a, b;

        ASSERT_NOT_NULL(p);
        ASSERT_EQ(ap_profile_intern(p, NULL), AP_NONE);
        a = ap_profile_intern(p, "malloc");
        b = ap_profile_intern(p, "free");
        ASSERT_EQ(a, 0u);
        ASSERT_EQ(b, 1u);
        ASSERT_EQ(ap_profile_intern(p, "malloc"), a);
        ASSERT_EQ(ap_profile_intern(p, ""), 2u);
        ASSERT_EQ(p->nstrings, 3u);

        /* Enough strings to force several rehashes; every one stays findable. */
        for (unsigned i = 0; i < 5000; i++) {
                snprintf(name, sizeof(name), "sym%u", i);
                ASSERT_EQ(ap_profile_intern(p, name), 3 + i);
        }
        for (unsigned i = 0; i < 5000; i += 7) {
                snprintf(name, sizeof(name), "sym%u", i);
                ASSERT_EQ(ap_profile_intern(p, name), 3 + i);
                ASSERT_STREQ(p->strings[3 + i], name);
        }

        /* A caller that appends to the table directly is seen by the next intern. */
        p->strings = reallocarray(p->strings, p->nstrings + 1, sizeof(char *));
        ASSERT_NOT_NULL(p->strings);
        p->strings[p->nstrings++] = xstrdup("appended");
        ASSERT_EQ(ap_profile_intern(p, "appended"), p->nstrings - 1);
        ASSERT_EQ(ap_profile_intern(p, "after"), p->nstrings - 1);
        ASSERT_EQ(ap_profile_intern(p, "sym4999"), 5002u);
        ap_profile_free(p);

        /* A profile that was read (exactly sized table) keeps interning correctly. */
        {
                struct ap_profile *s = build_sample(), *q;
                char *path = path_in_tmp("intern.approf");
                uint32_t n;

                ASSERT_OK(ap_profile_write(s, path));
                q = read_ok(path);
                n = q->nstrings;
                ASSERT_EQ(ap_profile_intern(q, "src/tree.c"), ap_profile_intern(s, "src/tree.c"));
                ASSERT_EQ(ap_profile_intern(q, "new string"), n);
                ASSERT_EQ(q->nstrings, n + 1);
                ap_profile_free(q);
                ap_profile_free(s);
                unlink(path);
                free(path);
        }
        ap_profile_free(NULL);
}

/* The writer refuses a profile its reader would reject, and leaves nothing behind. */
static void test_write_errors(void)
{
        struct ap_profile *p = build_sample();
        char *path = path_in_tmp("bad.approf");
        uint32_t saved;

        saved = p->sites[0].frames[1];
        p->sites[0].frames[1] = p->nframes;
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        p->sites[0].frames[1] = saved;

        saved = p->frames[2].file;
        p->frames[2].file = p->nstrings;
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        p->frames[2].file = saved;

        saved = p->frames[2].module;
        p->frames[2].module = p->nmodules;
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        p->frames[2].module = saved;

        saved = p->modules[1].path;
        p->modules[1].path = 12345;
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        p->modules[1].path = saved;

        p->term_signal = 65;
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        p->term_signal = 0;

        p->sites[1].frees = p->sites[1].allocations + 1;
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        p->sites[1].frees = 0;
        p->totals.leaked_bytes = p->totals.bytes + 1;
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        p->totals.leaked_bytes = 0;

        free(p->mode);
        p->mode = xstrdup("bogus");
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL);
        free(p->mode);
        p->mode = xstrdup("sampled");
        ASSERT_ERR(ap_profile_write(p, path), -EINVAL); /* with a sample_interval of 0 */
        free(p->mode);
        p->mode = xstrdup("full");
        ASSERT_EQ(count_entries(tmpdir), 0);

        ASSERT_ERR(ap_profile_write(p, "/nonexistent-dir/x.approf"), -ENOENT);

        /* A failed rename leaves no temporary behind. */
        {
                char *dir = path_in_tmp("dir.approf");

                ASSERT_EQ(mkdir(dir, 0700), 0);
                ASSERT_ERR(ap_profile_write(p, dir), -EISDIR);
                ASSERT_EQ(count_entries(tmpdir), 1);
                ASSERT_EQ(rmdir(dir), 0);
                free(dir);
        }
        ASSERT_ERR(ap_profile_write(NULL, path), -EINVAL);
        ASSERT_EQ(count_entries(tmpdir), 0);
        ap_profile_free(p);
        free(path);
}

/* ---- hostile files ------------------------------------------------------------------ */

static void write_text(const char *path, const char *text, size_t len)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(write(fd, text, len), (ssize_t)len);
        close(fd);
}

/* The JSON text of a profile file (gunzipped; a plain file is read as it is). */
static char *slurp(const char *path, size_t *len)
{
        gzFile gz = gzopen(path, "rb");
        size_t n = 0, cap = 1 << 16;
        char *buf = malloc(cap + 1);
        int got;

        ASSERT_NOT_NULL(gz);
        ASSERT_NOT_NULL(buf);
        while ((got = gzread(gz, buf + n, (unsigned)(cap - n))) > 0) {
                n += (size_t)got;
                if (n == cap) {
                        cap *= 2;
                        buf = realloc(buf, cap + 1);
                        ASSERT_NOT_NULL(buf);
                }
        }
        ASSERT_EQ(got, 0);
        gzclose(gz);
        buf[n] = '\0';
        *len = n;
        return buf;
}

/* The raw bytes of a file. */
static char *slurp_raw(const char *path, size_t *len)
{
        FILE *f = fopen(path, "rb");
        char *buf;
        long n;

        ASSERT_NOT_NULL(f);
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        rewind(f);
        buf = malloc((size_t)n + 1);
        ASSERT_NOT_NULL(buf);
        ASSERT_EQ(fread(buf, 1, (size_t)n, f), (size_t)n);
        buf[n] = '\0';
        fclose(f);
        *len = (size_t)n;
        return buf;
}

/* Writes p to path, checks that the file says `says`, reads it back and checks it is p.
 * Returns what was read (the caller checks more, then frees it). */
static struct ap_profile *write_says(const struct ap_profile *p, const char *path, const char *says)
{
        size_t len;
        ASSERT_OK(ap_profile_write(p, path));
        char *text = slurp(path, &len);
        ASSERT_CONTAINS(text, says);
        free(text);
        struct ap_profile *q = read_ok(path);
        assert_same(p, q);
        return q;
}

/* Control characters, quotes and backslashes are escaped on write and come back exactly;
 * the file spells them the way JSON's short escapes do where there is one. */
static void test_escapes(void)
{
        static const char nasty[] = "\x01\x1f\b\f\n\r\t\"\\/\x7f \xe2\x82\xac";
        struct ap_profile *p = build_sample(), *q;
        char *path = path_in_tmp("escapes.approf");
        size_t len;
        char *text;

        free(p->exe);
        p->exe = xstrdup(nasty);
        ASSERT_OK(ap_profile_write(p, path));
        text = slurp(path, &len);
        ASSERT_NOT_CONTAINS(text, "foreign_malloc"); /* only when there is one */
        free(text);
        p->foreign_malloc = xstrdup(nasty);
        ASSERT_OK(ap_profile_write(p, path));
        q = read_ok(path);
        ASSERT_STREQ(q->exe, nasty);
        ASSERT_STREQ(q->foreign_malloc, nasty);
        text = slurp(path, &len);
        ASSERT_CONTAINS(text,
                        "\"exe\":\"\\u0001\\u001F\\b\\f\\n\\r\\t\\\"\\\\/\x7f \xe2\x82\xac\"");
        ASSERT_CONTAINS(text, "\"foreign_malloc\":\"\\u0001\\u001F");
        free(text);
        ap_profile_free(q);
        ap_profile_free(p);
        unlink(path);
        free(path);
}

/* The values format 3's codings must get exactly right: counters at INT64_MAX and 0
 * whose codings wrap around 2^64, addresses with the top bit set next to 0, line steps of
 * +-(2^32 - 1), frames without function, file or module, an inline chain at one address,
 * stacks that share all but one frame or all of theirs, an empty stack, and a timeline
 * that jumps between 0 and INT64_MAX. */
static void test_round_trip_edges(void)
{
        struct ap_profile *p = build_sample(), *q;
        char *path = path_in_tmp("edges.approf");
        const uint64_t max = (uint64_t)INT64_MAX;
        struct ap_psite *s;
        uint32_t a, b, c, d, e, g;

        a = add_frame(p, NULL, NULL, 0, AP_NONE, 0x8000000000000000ull, false);
        b = add_frame(p, "inner", "chain.h", UINT32_MAX, 1, 0, true);
        c = add_frame(p, "middle", "chain.h", 0, 1, 0, true);
        d = add_frame(p, "outer", "chain.c", 3, 1, 0, false);
        e = add_frame(p, NULL, "only-file.c", 9, 0, 0x7fffffffffffffffull, false);
        g = add_frame(p, "same-place", NULL, 1, AP_NONE, 0x8000000000000000ull, true);

        s = add_site(p, 0, 4, (uint32_t[]){a, b, c, d});
        *s = (struct ap_psite){.allocations = max,
                               .bytes = max,
                               .frees = 0,
                               .freed_bytes = 0,
                               .leaked_blocks = max,
                               .leaked_bytes = 0,
                               .peak_bytes = max - 1,
                               .max_live_bytes = max,
                               .temporary = max,
                               .reallocs = max,
                               .frames = s->frames,
                               .nframes = s->nframes};
        s = add_site(p, 0, 4, (uint32_t[]){e, b, c, d}); /* all but the innermost shared */
        /* frees + leaked_blocks may exceed allocations (sampled mode rounds each). */
        *s = (struct ap_psite){.allocations = max,
                               .bytes = max,
                               .frees = max,
                               .freed_bytes = max,
                               .leaked_blocks = max,
                               .leaked_bytes = max,
                               .peak_bytes = max,
                               .max_live_bytes = max - 1,
                               .temporary = 0,
                               .reallocs = 0,
                               .frames = s->frames,
                               .nframes = s->nframes};
        s = add_site(p, 0, 2, (uint32_t[]){c, d}); /* the outer part of both */
        *s = (struct ap_psite){.allocations = 7,
                               .bytes = 5,
                               .frees = 3,
                               .freed_bytes = 2,
                               .leaked_blocks = 4,
                               .leaked_bytes = 3,
                               .peak_bytes = 5,
                               .max_live_bytes = 5,
                               .frames = s->frames,
                               .nframes = s->nframes};
        s = add_site(p, 0, 3, (uint32_t[]){g, a, d});
        *s = (struct ap_psite){.allocations = 1,
                               .bytes = max,
                               .peak_bytes = 0,
                               .max_live_bytes = 0,
                               .frames = s->frames,
                               .nframes = s->nframes};
        add_site(p, 9000, 0, NULL); /* a second empty stack */

        p->timeline = reallocarray(p->timeline, p->ntimeline + 3, sizeof(*p->timeline));
        ASSERT_NOT_NULL(p->timeline);
        p->timeline[p->ntimeline++] = (struct ap_ptimepoint){max, 0, max};
        p->timeline[p->ntimeline++] = (struct ap_ptimepoint){0, max, 0};
        p->timeline[p->ntimeline++] = (struct ap_ptimepoint){max, max, max};

        p->term_signal = 64; /* the highest signal number */
        p->exit_status = 128 + 64;
        free(p->mode);
        p->mode = xstrdup("sampled");
        p->sample_interval = 1; /* the smallest */

        ASSERT_OK(ap_profile_write(p, path));
        q = read_ok(path);
        assert_same(p, q);
        {
                /* Recorded at several intervals: the range is written and read back; at
                 * one, nothing more is written. */
                char *text;
                size_t len;

                text = slurp(path, &len);
                ASSERT_NOT_CONTAINS(text, "sample_intervals");
                free(text);
                ap_profile_free(q);
                p->sample_interval = 4096;
                p->sample_interval_min = 1;
                p->sample_interval_max = INT64_MAX;
                ASSERT_OK(ap_profile_write(p, path));
                text = slurp(path, &len);
                ASSERT_CONTAINS(text, "\"sample_intervals\":[1,9223372036854775807]");
                free(text);
                q = read_ok(path);
                assert_same(p, q);
                p->sample_interval_min = p->sample_interval_max = 0;
                ap_profile_free(q);
                ASSERT_OK(ap_profile_write(p, path));
                q = read_ok(path);
                assert_same(p, q);
                p->sample_interval = 1;
                ap_profile_free(q);
                ASSERT_OK(ap_profile_write(p, path));
                q = read_ok(path);
        }

        /* Written again, what was read gives the same file: its frames and sites are in
         * the file's order already. */
        {
                char *again = path_in_tmp("edges2.approf"), *t1, *t2;
                size_t n1, n2;

                ASSERT_OK(ap_profile_write(q, again));
                t1 = slurp_raw(path, &n1);
                t2 = slurp_raw(again, &n2);
                ASSERT_EQ(n1, n2);
                ASSERT_TRUE(memcmp(t1, t2, n1) == 0);
                free(t1);
                free(t2);
                unlink(again);
                free(again);
        }
        ap_profile_free(q);
        ap_profile_free(p);
        unlink(path);
        free(path);
}

/* Reads `path` expecting failure `expect`; the explanation must be one line containing
 * `needle`.  Returns nothing: the assertions are the test. */
static void expect_read_error(const char *path, int expect, const char *needle)
{
        struct ap_profile *p = (struct ap_profile *)0x1; /* must stay untouched */
        char *err = NULL;
        int r = ap_profile_read(path, &p, &err);

        if (r != expect)
                fprintf(stderr, "expected %d for '%s', got %d: %s\n", expect, needle, r,
                        err ? err : "(no message)");
        ASSERT_ERR(r, expect);
        ASSERT_TRUE(p == (struct ap_profile *)0x1);
        ASSERT_NOT_NULL(err);
        ASSERT_TRUE(strchr(err, '\n') == NULL);
        if (needle)
                ASSERT_CONTAINS(err, needle);
        free(err);
}

static void expect_text_error(const char *text, int expect, const char *needle)
{
        char *path = path_in_tmp("hostile.approf");

        write_text(path, text, strlen(text));
        expect_read_error(path, expect, needle);
        unlink(path);
        free(path);
}

/* A profile file as written (gzip'ed JSON) as a jansson document. */
static json_t *load_gzip_json(const char *path, json_error_t *jerr)
{
        size_t len;
        char *buf = slurp(path, &len);
        json_t *doc = json_loadb(buf, len, 0, jerr);
        free(buf);
        return doc;
}

/* The sample profile as a jansson document, to be damaged by a test case. */
static json_t *sample_doc(void)
{
        struct ap_profile *p = build_sample();
        char *path = path_in_tmp("sample.approf");
        json_error_t jerr;
        json_t *doc;

        ASSERT_OK(ap_profile_write(p, path));
        doc = load_gzip_json(path, &jerr);
        ASSERT_NOT_NULL(doc);
        unlink(path);
        free(path);
        ap_profile_free(p);
        return doc;
}

/* Follows a path like "sites/0/frames" (object keys and array indices). */
static json_t *dig(json_t *v, const char *where)
{
        char *copy = xstrdup(where), *save = NULL;

        for (char *tok = strtok_r(copy, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
                if (json_is_array(v))
                        v = json_array_get(v, strtoul(tok, NULL, 10));
                else
                        v = json_object_get(v, tok);
                ASSERT_NOT_NULL(v);
        }
        free(copy);
        return v;
}

/* Sites by their stacks read from the outermost frame, as version 2 wrote them. */
static int cmp_v2_order(const void *x, const void *y)
{
        const struct ap_psite *a = *(const struct ap_psite *const *)x;
        const struct ap_psite *b = *(const struct ap_psite *const *)y;

        for (uint32_t k = 0; k < a->nframes && k < b->nframes; k++) {
                uint32_t fa = a->frames[a->nframes - 1 - k], fb = b->frames[b->nframes - 1 - k];
                if (fa != fb)
                        return fa < fb ? -1 : 1;
        }
        return a->nframes < b->nframes ? -1 : a->nframes > b->nframes;
}

static json_t *jindex(uint32_t i)
{
        return i == AP_NONE ? json_null() : json_integer(i);
}

/* The sample profile as version 2 wrote it: frames as rows with hex addresses (in the
 * profile's own order), sites as rows of plain counters sorted by their stacks from the
 * outermost frame, leaving out the outer frames shared with the previous site, and
 * absolute timeline rows: [3000: none] [4000: 1 2] [1000: 0 + 2 shared] [2000: 4 3]. */
static json_t *sample_doc_v2(void)
{
        struct ap_profile *p = build_sample();
        json_t *doc = sample_doc(), *frames = json_array(), *sites = json_array();
        json_t *timeline = json_array();
        const struct ap_psite **order = calloc(p->nsites, sizeof(*order));
        const struct ap_psite *prev = NULL;

        ASSERT_NOT_NULL(order);
        for (uint32_t i = 0; i < p->nframes; i++) {
                const struct ap_pframe *f = &p->frames[i];
                char addr[32];

                snprintf(addr, sizeof(addr), "0x%" PRIx64, f->address);
                ASSERT_EQ(json_array_append_new(frames, json_pack("[ooiosb]", jindex(f->function),
                                                                  jindex(f->file), (int)f->line,
                                                                  jindex(f->module), addr,
                                                                  (int)f->inlined)),
                          0);
        }
        for (uint32_t i = 0; i < p->nsites; i++)
                order[i] = &p->sites[i];
        qsort(order, p->nsites, sizeof(*order), cmp_v2_order);
        for (uint32_t i = 0; i < p->nsites; i++) {
                const struct ap_psite *x = order[i];
                json_t *fa = json_array();
                uint32_t shared = 0;

                while (prev && shared < x->nframes && shared < prev->nframes &&
                       x->frames[x->nframes - 1 - shared] ==
                               prev->frames[prev->nframes - 1 - shared])
                        shared++;
                for (uint32_t j = 0; j + shared < x->nframes; j++)
                        ASSERT_EQ(json_array_append_new(fa, json_integer(x->frames[j])), 0);
                ASSERT_EQ(json_array_append_new(sites, json_pack("[IIIIIIIIIIio]", x->allocations,
                                                                 x->bytes, x->frees, x->freed_bytes,
                                                                 x->leaked_blocks, x->leaked_bytes,
                                                                 x->peak_bytes, x->max_live_bytes,
                                                                 x->temporary, x->reallocs,
                                                                 (int)shared, fa)),
                          0);
                prev = x;
        }
        for (uint32_t i = 0; i < p->ntimeline; i++)
                ASSERT_EQ(json_array_append_new(timeline, json_pack("[III]", p->timeline[i].t_ns,
                                                                    p->timeline[i].live_bytes,
                                                                    p->timeline[i].allocations)),
                          0);
        ASSERT_EQ(json_object_set_new(doc, "frames", frames), 0);
        ASSERT_EQ(json_object_set_new(doc, "sites", sites), 0);
        ASSERT_EQ(json_object_set_new(doc, "timeline", timeline), 0);
        ASSERT_EQ(json_object_set_new(doc, "format_version", json_integer(2)), 0);
        free(order);
        ap_profile_free(p);
        return doc;
}

/* Writes doc to a file and expects the reader to fail on it.  Takes doc. */
static void expect_doc_read_error(json_t *doc, int expect, const char *needle)
{
        char *path = path_in_tmp("mutated.approf");

        ASSERT_EQ(json_dump_file(doc, path, JSON_COMPACT), 0);
        expect_read_error(path, expect, needle);
        json_decref(doc);
        unlink(path);
        free(path);
}

/* Replaces the member/element `key` of the container at `where` in doc with `value`
 * (NULL value = delete), then expects the reader to fail.  Takes doc. */
static void expect_doc_error(json_t *doc, const char *where, const char *key, json_t *value,
                             int expect, const char *needle)
{
        json_t *c = dig(doc, where);

        if (json_is_array(c)) {
                size_t i = strtoul(key, NULL, 10);

                if (value)
                        ASSERT_EQ(json_array_set_new(c, i, value), 0);
                else
                        ASSERT_EQ(json_array_remove(c, i), 0);
        } else {
                if (value)
                        ASSERT_EQ(json_object_set_new(c, key, value), 0);
                else
                        ASSERT_EQ(json_object_del(c, key), 0);
        }
        expect_doc_read_error(doc, expect, needle);
}

/* The same on the sample as ap_profile_write writes it (format 3)... */
static void expect_mutation_error(const char *where, const char *key, json_t *value, int expect,
                                  const char *needle)
{
        expect_doc_error(sample_doc(), where, key, value, expect, needle);
}

/* ...and as version 2 wrote it. */
static void expect_v2_mutation_error(const char *where, const char *key, json_t *value, int expect,
                                     const char *needle)
{
        expect_doc_error(sample_doc_v2(), where, key, value, expect, needle);
}

/* "live" is written only for snapshots of a running process, so a profile of a process
 * that ended is byte for byte what it was before; absent or false reads as not live. */
static void test_live(void)
{
        struct ap_profile *p = build_sample(), *q;
        char *path = path_in_tmp("live.approf"), *text;
        json_t *doc;
        size_t len;

        ASSERT_OK(ap_profile_write(p, path));
        text = slurp(path, &len);
        ASSERT_NOT_CONTAINS(text, "\"live\"");
        ASSERT_NOT_CONTAINS(text, "untracked_samples"); /* written only when not 0 */
        ASSERT_NOT_CONTAINS(text, "unprofiled_children");
        ASSERT_NOT_CONTAINS(text, "dropped_no_ring");
        free(text);
        q = read_ok(path);
        ASSERT_FALSE(q->live);
        ap_profile_free(q);

        p->live = true;
        ASSERT_OK(ap_profile_write(p, path));
        text = slurp(path, &len);
        ASSERT_CONTAINS(text, "\"live\":true,");
        free(text);
        q = read_ok(path);
        ASSERT_TRUE(q->live);
        assert_same(p, q);
        ap_profile_free(q);

        /* Sampled blocks the agent could not track: in the totals when there are any. */
        p->totals.untracked_samples = 77;
        q = write_says(p, path, ",\"untracked_samples\":77},");
        ASSERT_EQ(q->totals.untracked_samples, 77u);
        ap_profile_free(q);
        p->totals.untracked_samples = 0;
        /* Events of threads that had no ring: likewise (the sample dropped 112). */
        p->totals.dropped_no_ring = 40;
        q = write_says(p, path, ",\"dropped_no_ring\":40},");
        ASSERT_EQ(q->totals.dropped_no_ring, 40u);
        ap_profile_free(q);
        p->totals.dropped_no_ring = 0;

        /* An image an exec replaced: "exec" in "process", only then. */
        ASSERT_OK(ap_profile_write(p, path));
        text = slurp(path, &len);
        ASSERT_NOT_CONTAINS(text, "\"exec\"");
        free(text);
        p->by_exec = true;
        p->exec_path = xstrdup("/usr/bin/go-thing");
        q = write_says(p, path, ",\"exec\":{\"path\":\"/usr/bin/go-thing\",\"profiled\":false},");
        ASSERT_TRUE(q->by_exec);
        ap_profile_free(q);
        free(p->exec_path);
        p->exec_path = NULL; /* not known */
        p->exec_profiled = true;
        ap_profile_free(write_says(p, path, ",\"exec\":{\"path\":null,\"profiled\":true},"));
        p->by_exec = p->exec_profiled = false;

        /* Children that could not register: likewise. */
        p->totals.unprofiled_children = 3;
        q = write_says(p, path, ",\"unprofiled_children\":3},");
        ASSERT_EQ(q->totals.unprofiled_children, 3u);
        ap_profile_free(q);
        p->totals.unprofiled_children = 0;

        /* An explicit false is accepted too. */
        doc = sample_doc();
        ASSERT_EQ(json_object_set_new(doc, "live", json_false()), 0);
        ASSERT_EQ(json_dump_file(doc, path, JSON_COMPACT), 0);
        json_decref(doc);
        q = read_ok(path);
        ASSERT_FALSE(q->live);
        ap_profile_free(q);

        unlink(path);
        free(path);
        ap_profile_free(p);
}

static void test_hostile_documents(void)
{
        const int E = -EINVAL;

        /* Not JSON / not ours. */
        expect_text_error("", E, "empty");
        expect_text_error("{", E, "not valid JSON");
        expect_text_error("[]", E, "not an allocprof profile");
        expect_text_error("null", E, "not valid JSON"); /* jansson wants a container */
        expect_text_error("{\"format\":\"something-else\",\"format_version\":1}", E,
                          "not an allocprof profile");
        expect_text_error("{\"format\":\"allocprof-profile\",\"format_version\":1,"
                          "\"format\":\"allocprof-profile\"}",
                          E, "duplicate");
        expect_text_error("{\"format\":\"allocprof-profile\",\"format_version\":1e999}", E,
                          "not valid JSON");
        expect_text_error("{\"format\":\"allocprof-profile\",\"format_version\":"
                          "99999999999999999999}",
                          E, "not valid JSON");
        expect_text_error("{\"format\":\"allocprof-profile\",\"format_version\":1,"
                          "\"strings\":[\"a\\u0000b\"]}",
                          E, "not valid JSON");
        expect_text_error("{\"format\":\"allocprof-profile\",\"format_version\":\"1\"}", E,
                          "format_version: expected an integer");

        /* Versions. */
        expect_text_error("{\"format\":\"allocprof-profile\",\"format_version\":4}",
                          -EPROTONOSUPPORT,
                          "version 4 is not supported (this allocprof reads versions 1 to 3)");
        expect_text_error("{\"format\":\"allocprof-profile\",\"format_version\":0}",
                          -EPROTONOSUPPORT, "version 0");
        expect_mutation_error("", "format_version", json_integer(-7), -EPROTONOSUPPORT, "-7");
        expect_mutation_error("", "format_version", NULL, E, "format_version: missing");
        expect_mutation_error("", "format", NULL, E, "not an allocprof profile");
        /* The version decides how the tables are read. */
        expect_mutation_error("", "format_version", json_integer(2), E,
                              "frames: expected an array, found an object");
        expect_v2_mutation_error("", "format_version", json_integer(3), E,
                                 "frames: expected an object, found an array");

        /* Wrong types and ranges. */
        expect_mutation_error("totals", "bytes", json_integer(-1), E, "totals.bytes");
        expect_mutation_error("totals", "bytes", json_real(1.5), E,
                              "totals.bytes: expected an integer, found a real number");
        expect_mutation_error("totals", "bytes", json_string("12"), E, "totals.bytes");
        expect_mutation_error("totals", "threads", NULL, E, "totals.threads: missing");
        expect_mutation_error("", "totals", json_array(), E, "totals: expected an object");
        expect_mutation_error("", "mode", json_integer(1), E, "mode: expected a string or null");
        /* What the writer writes, "full" or "sampled" (or null, unknown), and nothing else;
         * the value is quoted on one line, shortened. */
        expect_mutation_error("", "mode", json_string("bogus"), E,
                              "mode: \"bogus\" is not a recording mode (\"full\" or \"sampled\")");
        expect_mutation_error("", "mode", json_string("Full"), E, "mode: \"Full\" is not");
        expect_mutation_error("", "mode", json_string(""), E, "mode: \"\" is not");
        expect_mutation_error("", "mode",
                              json_string("a\nb\x7f\xc3\xa9 0123456789012345678901234567890"), E,
                              "mode: \"a?b??? 0123456789012345678901234\"... is not");
        expect_mutation_error("", "live", json_integer(1), E,
                              "live: expected a boolean, found an integer");
        expect_mutation_error("", "live", json_string("true"), E, "live: expected a boolean");
        expect_mutation_error("", "sample_interval", json_null(), E, "sample_interval");
        /* The sample's mode is "full", with 0; sampled mode needs an interval. */
        expect_mutation_error("", "mode", json_string("sampled"), E,
                              "sample_interval: 0 in sampled mode (the mean number of bytes "
                              "between samples is at least 1)");
        expect_mutation_error("tool", "version", json_true(), E, "tool.version");
        expect_mutation_error("process", "foreign_malloc", json_null(), E,
                              "process.foreign_malloc: expected a string");
        expect_mutation_error("process", "foreign_malloc", json_integer(7), E,
                              "process.foreign_malloc: expected a string");
        expect_mutation_error("process", "exec", json_null(), E,
                              "process.exec: expected an object");
        expect_mutation_error("process", "exec", json_pack("{s:i,s:b}", "path", 1, "profiled", 0),
                              E, "process.exec.path: expected a string or null");
        expect_mutation_error("process", "exec", json_pack("{s:n}", "path"), E,
                              "process.exec.profiled: missing");
        expect_mutation_error("process", "exec", json_pack("{s:n,s:i}", "path", "profiled", 1), E,
                              "process.exec.profiled: expected a boolean");
        /* The intervals a sampled profile was recorded at, around its sample_interval. */
        expect_mutation_error("", "sample_intervals", json_pack("[i,i]", 1, 2), E,
                              "sample_intervals: present in a profile with no sample interval");
        {
                static const struct {
                        const char *json, *needle;
                } bad[] = {
                        {"[1024]", "sample_intervals: expected [smallest, largest]"},
                        {"[1024, 4096, 8192]", "expected [smallest, largest]"},
                        {"{}", "expected [smallest, largest]"},
                        {"[0, 4096]", "[0, 4096] does not hold sample_interval 4096"},
                        {"[8192, 4096]", "[8192, 4096] does not hold"},
                        {"[1, 2048]", "[1, 2048] does not hold sample_interval 4096"},
                        {"[8192, 16384]", "does not hold"},
                        {"[1, -5]", "sample_intervals[1]"},
                        {"[1, \"4096\"]", "sample_intervals[1]"},
                };
                for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                        json_t *doc = sample_doc();
                        ASSERT_EQ(json_object_set_new(doc, "mode", json_string("sampled")), 0);
                        ASSERT_EQ(json_object_set_new(doc, "sample_interval", json_integer(4096)),
                                  0);
                        expect_doc_error(doc, "", "sample_intervals",
                                         json_loads(bad[i].json, 0, NULL), E, bad[i].needle);
                }
        }
        expect_mutation_error("process", "pid", json_integer(1ll << 32), E, "process.pid");
        expect_mutation_error("process", "exit_status", json_integer(256), E,
                              "process.exit_status");
        /* 0 for none, else a signal number: not one the report would turn into an exit
         * status of 128 + 200. */
        expect_mutation_error(
                "process", "term_signal", json_integer(-1), E,
                "process.term_signal: -1 is not a signal number (1-64, or 0 for none)");
        expect_mutation_error(
                "process", "term_signal", json_integer(200), E,
                "process.term_signal: 200 is not a signal number (1-64, or 0 for none)");
        expect_mutation_error("process", "term_signal", json_integer(65), E,
                              "process.term_signal: 65 is not a signal number");
        expect_mutation_error("process", "term_signal", json_integer(INT64_MAX), E,
                              "process.term_signal: 9223372036854775807 is not a signal number");
        expect_mutation_error("process", "command", json_string("ls -l"), E,
                              "process.command: expected an array");
        expect_mutation_error("process/command", "1", json_integer(5), E,
                              "process.command[1]: expected a string");
        expect_mutation_error("process", "exe", NULL, E, "process.exe: missing");
        expect_mutation_error("strings", "0", json_null(), E, "strings[0]: expected a string");
        expect_mutation_error("", "strings", json_object(), E, "strings: expected an array");

        /* Format 3's frames: out-of-range references, -1 for none, steps that leave the
         * range of a line, columns that do not line up. */
        expect_mutation_error("frames/function", "0", json_integer(1000), E,
                              "frames.function[0]: index 1000 out of range (9 strings)");
        expect_mutation_error("frames/file", "1", json_integer(-2), E,
                              "frames.file[1]: index -2 out of range");
        expect_mutation_error("frames/function", "0", json_null(), E,
                              "frames.function[0]: expected an index or -1, found null");
        expect_mutation_error("frames/module", "0", json_integer(2), E,
                              "frames.module[0]: index 2 out of range (2 modules)");
        expect_mutation_error("frames/line", "3", json_integer(-98), E,
                              "frames.line[3]: line number -1 out of range");
        expect_mutation_error("frames/line", "0", json_integer(1ll << 32), E,
                              "frames.line[0]: line number 4294967296 out of range");
        expect_mutation_error("frames/line", "0", json_real(1.5), E,
                              "frames.line[0]: expected an integer, found a real number");
        expect_mutation_error("frames/address", "2", json_string("0x1"), E,
                              "frames.address[2]: expected an integer, found a string");
        expect_mutation_error("frames/inlined", "1", json_true(), E,
                              "frames.inlined[1]: expected an integer, found a boolean");
        expect_mutation_error("frames/inlined", "1", json_integer(2), E,
                              "frames.inlined[1]: 2 is out of range [0, 1]");
        expect_mutation_error("frames/inlined", "0", NULL, E,
                              "frames.inlined: 4 elements, but frames.function has 5");
        expect_mutation_error("frames", "address", NULL, E, "frames.address: missing");
        expect_mutation_error("frames", "function", json_object(), E,
                              "frames.function: expected an array");
        expect_mutation_error("", "frames", json_array(), E, "frames: expected an object");
        expect_mutation_error("modules/1", "path", json_integer(10000), E, "modules[1].path");
        expect_mutation_error("modules/0", "build_id", json_string("x"), E,
                              "modules[0].build_id: expected an index or null");

        /* Format 3's sites.  In file order they are [3000: none] [4000: 0 2] [1000: 0 2 1]
         * [2000: 3 4] (frames renumbered, outermost first): "popped" is [0, 0, 0, 3] and
         * "stacks" [[], [1, 2], [-1], [3, 1]] (test_stack_coding checks that).  A frame
         * index is checked once decoded. */
        expect_mutation_error("sites/stacks/1", "0", json_integer(912), E,
                              "sites.stacks[1][0]: frame index 911 out of range (5 frames)");
        expect_mutation_error("sites/stacks/3", "1", json_integer(100), E,
                              "sites.stacks[3][1]: frame index 103 out of range (5 frames)");
        expect_mutation_error("sites/stacks/3", "1", json_integer(-4), E,
                              "sites.stacks[3][1]: frame index -1 out of range");
        expect_mutation_error("sites/stacks/2", "0", json_integer(-3), E,
                              "sites.stacks[2][0]: frame index -1 out of range");
        /* Site 3's first step is from the frame it replaces (0), not from -1. */
        expect_mutation_error("sites/stacks/3", "0", json_integer(-1), E,
                              "sites.stacks[3][0]: frame index -1 out of range");
        expect_mutation_error("sites/stacks/3", "0", json_integer(5), E,
                              "sites.stacks[3][0]: frame index 5 out of range");
        expect_mutation_error("sites/stacks/3", "1", json_integer(INT64_MAX), E,
                              "sites.stacks[3][1]: frame index out of range (5 frames)");
        expect_mutation_error("sites/stacks/1", "0", json_integer(INT64_MIN), E,
                              "sites.stacks[1][0]: frame index out of range (5 frames)");
        expect_mutation_error("sites/stacks/3", "0", json_integer(INT64_MIN), E,
                              "sites.stacks[3][0]: frame index -9223372036854775808 out of range");
        expect_mutation_error("sites/stacks/1", "0", json_null(), E,
                              "sites.stacks[1][0]: expected an integer, found null");
        expect_mutation_error("sites/stacks", "1", json_integer(1), E,
                              "sites.stacks[1]: expected an array, found an integer");
        /* Popped frames: no more than the previous site has, none for the first. */
        expect_mutation_error("sites/popped", "2", json_integer(3), E,
                              "sites.popped[2]: 3 is out of range [0, 2]");
        expect_mutation_error("sites/popped", "3", json_integer(4), E,
                              "sites.popped[3]: 4 is out of range [0, 3]");
        expect_mutation_error("sites/popped", "2", json_integer(-1), E,
                              "sites.popped[2]: -1 is out of range [0, 2]");
        expect_mutation_error("sites/popped", "0", json_integer(1), E,
                              "sites.popped[0]: 1 is out of range [0, 0]");
        expect_mutation_error("sites/popped", "1", json_integer(1), E,
                              "sites.popped[1]: 1 is out of range [0, 0]");
        expect_mutation_error("sites/popped", "3", json_null(), E,
                              "sites.popped[3]: expected an integer, found null");
        expect_mutation_error("sites/popped", "3", json_integer(INT64_MIN), E,
                              "sites.popped[3]: -9223372036854775808 is out of range [0, 3]");
        /* Columns of one length. */
        expect_mutation_error("sites/bytes", "0", NULL, E,
                              "sites.bytes: 3 elements, but sites.stacks has 4");
        expect_mutation_error("sites/popped", "3", NULL, E,
                              "sites.popped: 3 elements, but sites.stacks has 4");
        expect_mutation_error("sites/stacks", "0", NULL, E,
                              "sites.popped: 4 elements, but sites.stacks has 3");
        expect_mutation_error("sites", "popped", NULL, E, "sites.popped: missing");
        expect_mutation_error("sites", "temporary", NULL, E, "sites.temporary: missing");
        expect_mutation_error("sites", "stacks", NULL, E, "sites.stacks: missing");
        expect_mutation_error("", "sites", json_array(), E, "sites: expected an object");
        /* Counters: a plain one must be in range as it is, a coded one once decoded. */
        expect_mutation_error("sites/allocations", "0", json_integer(-1), E,
                              "sites.allocations[0]: -1 is out of range");
        expect_mutation_error("sites/leaked_bytes", "1", json_real(1.5), E,
                              "sites.leaked_bytes[1]: expected an integer, found a real number");
        expect_mutation_error("sites/allocations-leaked_blocks-frees", "0", json_integer(10), E,
                              "sites.allocations-leaked_blocks-frees[0]: frees decodes to "
                              "18446744073709551612, more than 9223372036854775807");
        expect_mutation_error("sites/bytes-leaked_bytes-freed_bytes", "0", json_integer(10), E,
                              "sites.bytes-leaked_bytes-freed_bytes[0]: freed_bytes decodes to "
                              "18446744073709551612");
        expect_mutation_error("sites/max_live_bytes+1 (0: =bytes)", "0", json_integer(-1), E,
                              "sites.max_live_bytes+1 (0: =bytes)[0]: max_live_bytes decodes to "
                              "18446744073709551614");
        expect_mutation_error("sites/peak_bytes+2 (0: none, 1: =max_live_bytes)", "0",
                              json_integer(-1), E, "peak_bytes decodes to 18446744073709551613");
        expect_mutation_error("sites/reallocs", "0", json_string("1"), E,
                              "sites.reallocs[0]: expected an integer, found a string");
        /* A site frees and leaks no more blocks, nor bytes, than it allocated.  Site 1 has
         * 4011 allocations of 4012 bytes, 4005 blocks and 4006 bytes leaked: frees and
         * freed bytes are coded as 6 - frees, 6 - freed_bytes. */
        expect_mutation_error("sites/allocations-leaked_blocks-frees", "1", json_integer(-4006), E,
                              "sites.allocations-leaked_blocks-frees[1]: frees (4012) is more than "
                              "allocations (4011)");
        expect_mutation_error("sites/bytes-leaked_bytes-freed_bytes", "1", json_integer(-4007), E,
                              "sites.bytes-leaked_bytes-freed_bytes[1]: freed_bytes (4013) is more "
                              "than bytes (4012)");
        expect_mutation_error("sites/leaked_blocks", "1", json_integer(4012), E,
                              "sites.leaked_blocks[1]: leaked_blocks (4012) is more than "
                              "allocations (4011)");
        expect_mutation_error(
                "sites/leaked_bytes", "1", json_integer(5000), E,
                "sites.leaked_bytes[1]: leaked_bytes (5000) is more than bytes (4012)");
        /* The whole process likewise (118 allocations of 119 bytes). */
        expect_mutation_error("totals", "frees", json_integer(119), E,
                              "totals.frees: frees (119) is more than allocations (118)");
        expect_mutation_error("totals", "leaked_blocks", json_integer(119), E,
                              "totals.leaked_blocks: leaked_blocks (119) is more than allocations "
                              "(118)");
        expect_mutation_error("totals", "freed_bytes", json_integer(120), E,
                              "totals.freed_bytes: freed_bytes (120) is more than bytes (119)");
        expect_mutation_error("totals", "dropped_no_ring", json_integer(113), E,
                              "totals.dropped_no_ring: dropped_no_ring (113) is more than "
                              "dropped_events (112)");
        expect_mutation_error("totals", "leaked_bytes", json_integer(INT64_MAX), E,
                              "totals.leaked_bytes: leaked_bytes (9223372036854775807) is more "
                              "than bytes (119)");

        expect_mutation_error("histogram/0", "0", json_integer(AP_HIST_BUCKETS), E,
                              "histogram[0][0]: 64 is out of range");
        expect_mutation_error("histogram/1", "0", json_integer(0), E, "appears twice");
        expect_mutation_error("histogram", "0", json_pack("[i,i]", 1, 2), E, "histogram[0]");
        expect_mutation_error("timeline", "2", json_pack("[i,i,i,i]", 1, 2, 3, 4), E,
                              "timeline[2]: expected [t_ns, live_bytes, allocations]");
        /* Timeline rows are steps from the row before: live bytes may not go below 0. */
        expect_mutation_error("timeline/1", "1", json_integer(-5000), E,
                              "timeline[1][1]: live_bytes decodes to 18446744073709546616");
        expect_mutation_error("timeline/1", "0", json_string("1"), E,
                              "timeline[1][0]: expected an integer");
        expect_mutation_error("", "timeline", NULL, E, "timeline: missing");

        /* Version 2's tables. */
        expect_v2_mutation_error("frames/0", "0", json_integer(1000), E,
                                 "frames[0][0]: index 1000 out of range");
        expect_v2_mutation_error("frames/0", "1", json_integer(-1), E, "frames[0][1]: index -1");
        expect_v2_mutation_error("frames/0", "3", json_integer(2), E,
                                 "frames[0][3]: index 2 out of range (2 modules)");
        expect_v2_mutation_error("sites/1/11", "1", json_integer(5), E,
                                 "sites[1][11][1]: index 5 out of range (5 frames)");
        expect_v2_mutation_error("sites/1/11", "0", json_null(), E, "sites[1][11][0]");
        expect_v2_mutation_error("sites/1/11", "0", json_integer(INT64_MAX), E, "sites[1][11][0]");
        expect_v2_mutation_error("frames", "1", json_pack("[n,n,i,n,s]", 0, "0x1"), E,
                                 "frames[1]: expected [function, file, line, module, address");
        expect_v2_mutation_error("frames/2", "4", json_string("0xZZ"), E,
                                 "frames[2][4]: malformed");
        expect_v2_mutation_error("frames/2", "4", json_string("0x"), E, "malformed address");
        expect_v2_mutation_error("frames/2", "4", json_string("0x10000000000000000"), E,
                                 "malformed");
        expect_v2_mutation_error("frames/2", "4", json_integer(16), E, "frames[2][4]: expected");
        expect_v2_mutation_error("frames/2", "5", json_integer(1), E,
                                 "frames[2][5]: expected a boolean");
        expect_v2_mutation_error("frames/2", "2", json_integer(1ll << 32), E, "frames[2][2]");
        expect_v2_mutation_error(
                "sites", "2", json_array(), E,
                "sites[2]: expected [allocations, ..., reallocs, shared, [frames]]");
        expect_v2_mutation_error("sites/2", "8", json_integer(-5), E, "sites[2][8]");
        expect_v2_mutation_error("sites/1", "2", json_integer(4012), E,
                                 "sites[1][2]: frees (4012) is more than allocations (4011)");
        expect_v2_mutation_error("sites/1", "5", json_integer(4013), E,
                                 "sites[1][5]: leaked_bytes (4013) is more than bytes (4012)");
        expect_v2_mutation_error("sites/2", "10", json_integer(3), E,
                                 "sites[2][10]: 3 is out of range [0, 2]");
        expect_v2_mutation_error("sites/0", "10", json_integer(1), E,
                                 "sites[0][10]: 1 is out of range [0, 0]");
        expect_v2_mutation_error("sites/2", "10", json_integer(-1), E, "sites[2][10]");
        expect_v2_mutation_error("sites/1", "11", json_integer(1), E,
                                 "sites[1][11]: expected an array");
        expect_v2_mutation_error("timeline/1", "1", json_integer(-1), E, "timeline[1][1]");
}

/* v as compact JSON is `want`. */
static void assert_json(const json_t *v, const char *want)
{
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

        ASSERT_NOT_NULL(text);
        ASSERT_STREQ(text, want);
        free(text);
}

/* A site's stack as format 3 codes it against the previous site's. */
struct coded_stack {
        uint32_t nframes, frames[3]; /* outermost first, in the file's frame numbers */
        int popped, nsteps, steps[3];
};

/* The sample document with its sites replaced by these stacks, all counters 0. */
static json_t *doc_with_stacks(const struct coded_stack *c, size_t n)
{
        json_t *doc = sample_doc(), *sites = dig(doc, "sites");

        for (void *it = json_object_iter(sites); it; it = json_object_iter_next(sites, it)) {
                const char *key = json_object_iter_key(it);
                json_t *col = json_object_iter_value(it);

                ASSERT_EQ(json_array_clear(col), 0);
                for (size_t i = 0; i < n; i++) {
                        json_t *v;

                        if (strcmp(key, "popped") == 0) {
                                v = json_integer(c[i].popped);
                        } else if (strcmp(key, "stacks") == 0) {
                                v = json_array();
                                for (int k = 0; k < c[i].nsteps; k++)
                                        ASSERT_EQ(json_array_append_new(
                                                          v, json_integer(c[i].steps[k])),
                                                  0);
                        } else {
                                v = json_integer(0);
                        }
                        ASSERT_EQ(json_array_append_new(col, v), 0);
                }
        }
        return doc;
}

/* doc_with_stacks(c, n) with element `index` of the array at `where` set to v must fail
 * to read with an error naming `needle`. */
static void expect_stacks_error(const struct coded_stack *c, size_t n, const char *where,
                                size_t index, json_int_t v, const char *needle)
{
        json_t *doc = doc_with_stacks(c, n);

        ASSERT_EQ(json_array_set_new(dig(doc, where), index, json_integer(v)), 0);
        expect_doc_read_error(doc, -EINVAL, needle);
}

/* Reads doc (not taken) and checks that its sites have these stacks, in this order. */
static struct ap_profile *read_stacks(const json_t *doc, const struct coded_stack *c, size_t n)
{
        char *path = path_in_tmp("stacks.approf");
        struct ap_profile *p;

        ASSERT_EQ(json_dump_file(doc, path, JSON_COMPACT), 0);
        p = read_ok(path);
        ASSERT_EQ(p->nsites, n);
        for (size_t i = 0; i < n; i++) {
                ASSERT_EQ(p->sites[i].nframes, c[i].nframes);
                for (uint32_t j = 0; j < c[i].nframes; j++) /* innermost first in memory */
                        ASSERT_EQ(p->sites[i].frames[c[i].nframes - 1 - j], c[i].frames[j]);
        }
        unlink(path);
        free(path);
        return p;
}

/* Format 3's stacks, exactly: each site says how many frames of the previous site's
 * stack it pops, and steps through the frames it adds from the outermost in, the first
 * step taken from the frame it replaces if the previous stack has one at its depth, else
 * from the innermost frame kept, else from -1. */
static void test_stack_coding(void)
{
        /* Sorted as the writer sorts them; the sample has frames 0 to 4. */
        static const struct coded_stack sorted[] = {
                {2, {1, 3}, 0, 2, {2, 2}},        /* the first site: from -1 */
                {3, {1, 3, 4}, 0, 1, {1}},        /* none at depth 2 before: from 3, kept */
                {2, {1, 4}, 2, 1, {1}},           /* replaces 3 */
                {3, {2, 0, 3}, 2, 3, {1, -2, 3}}, /* pops all, replaces 1 */
                {3, {2, 0, 3}, 0, 0, {0}},        /* the same stack again */
                {2, {2, 1}, 2, 1, {1}},           /* pops two, replaces 0 */
        };
        /* Not as the writer would order them, but read all the same. */
        static const struct coded_stack unsorted[] = {
                {2, {2, 4}, 0, 2, {3, 2}},  /* the first site: from -1 */
                {0, {0}, 2, 0, {0}},        /* pops all, adds none */
                {1, {3}, 0, 1, {4}},        /* after an empty stack: from -1 */
                {2, {0, 1}, 1, 2, {-3, 1}}, /* pops all, replaces 3 */
                {3, {0, 1, 2}, 0, 1, {1}},  /* from 1, the innermost kept */
                {1, {4}, 3, 1, {4}},        /* pops all, replaces 0 */
        };
        const size_t nsorted = sizeof(sorted) / sizeof(*sorted);
        const size_t nunsorted = sizeof(unsorted) / sizeof(*unsorted);
        char *path = path_in_tmp("stacks2.approf");
        struct ap_profile *p;
        json_error_t jerr;
        json_t *doc;

        /* What the writer makes of the sample: [3000: none] [4000: 0 2] [1000: 0 2 1]
         * [2000: 3 4], outermost first. */
        doc = sample_doc();
        assert_json(dig(doc, "sites/popped"), "[0,0,0,3]");
        assert_json(dig(doc, "sites/stacks"), "[[],[1,2],[-1],[3,1]]");
        json_decref(doc);

        /* Read, and written again the same. */
        doc = doc_with_stacks(sorted, nsorted);
        p = read_stacks(doc, sorted, nsorted);
        ASSERT_OK(ap_profile_write(p, path));
        {
                json_t *again = load_gzip_json(path, &jerr);

                ASSERT_NOT_NULL(again);
                assert_json(dig(again, "sites/popped"), "[0,0,2,2,0,2]");
                assert_json(dig(again, "sites/stacks"), "[[2,2],[1],[1],[1,-2,3],[],[1]]");
                json_decref(again);
        }
        ap_profile_free(p);
        json_decref(doc);

        doc = doc_with_stacks(unsorted, nunsorted);
        ap_profile_free(read_stacks(doc, unsorted, nunsorted));
        json_decref(doc);

        /* No more popped than the previous stack has: two of [1, 4], three of [1, 3, 4]. */
        expect_stacks_error(sorted, nsorted, "sites/popped", 3, 3,
                            "sites.popped[3]: 3 is out of range [0, 2]");
        expect_stacks_error(sorted, nsorted, "sites/popped", 2, 4,
                            "sites.popped[2]: 4 is out of range [0, 3]");
        /* Nothing before the first site, and nothing before the site after an empty one. */
        expect_stacks_error(unsorted, nunsorted, "sites/popped", 0, 1,
                            "sites.popped[0]: 1 is out of range [0, 0]");
        expect_stacks_error(unsorted, nunsorted, "sites/popped", 2, 1,
                            "sites.popped[2]: 1 is out of range [0, 0]");
        /* A step from the frame replaced that leaves the table. */
        expect_stacks_error(unsorted, nunsorted, "sites/stacks/5", 0, 5,
                            "sites.stacks[5][0]: frame index 5 out of range (5 frames)");
        unlink(path);
        free(path);
}

/* Profiles of format version 1 (each site an object with its whole stack) still read. */
/* The sample as a profile of format version 1 or 2 can hold it: no truncated stacks. */
static struct ap_profile *build_sample_old(void)
{
        struct ap_profile *p = build_sample();
        for (uint32_t i = 0; i < p->nsites; i++)
                p->sites[i].truncated = false;
        return p;
}

static void test_reads_version_1(void)
{
        struct ap_profile *p = build_sample_old(), *q;
        json_t *doc = sample_doc_v2(), *sites = json_array();
        char *path = path_in_tmp("v1.approf");
        static const char *const names[] = {"allocations",   "bytes",        "frees",
                                            "freed_bytes",   "leaked_blocks", "leaked_bytes",
                                            "peak_bytes",    "max_live_bytes", "temporary",
                                            "reallocs"};

        for (uint32_t i = 0; i < p->nsites; i++) {
                const struct ap_psite *s = &p->sites[i];
                const uint64_t v[] = {s->allocations, s->bytes,      s->frees,
                                      s->freed_bytes, s->leaked_blocks, s->leaked_bytes,
                                      s->peak_bytes,  s->max_live_bytes, s->temporary,
                                      s->reallocs};
                json_t *o = json_object(), *fa = json_array();
                for (size_t k = 0; k < 10; k++)
                        ASSERT_EQ(json_object_set_new(o, names[k], json_integer((json_int_t)v[k])), 0);
                for (uint32_t j = 0; j < s->nframes; j++)
                        ASSERT_EQ(json_array_append_new(fa, json_integer(s->frames[j])), 0);
                ASSERT_EQ(json_object_set_new(o, "frames", fa), 0);
                ASSERT_EQ(json_array_append_new(sites, o), 0);
        }
        ASSERT_EQ(json_object_set_new(doc, "sites", sites), 0);
        ASSERT_EQ(json_object_set_new(doc, "format_version", json_integer(1)), 0);
        ASSERT_EQ(json_dump_file(doc, path, JSON_COMPACT), 0);
        q = read_ok(path);
        assert_same_renumbered(p, q, NULL); /* frames keep their numbers */
        /* Version 1 keeps the file's site order. */
        for (uint32_t i = 0; i < p->nsites; i++)
                ASSERT_EQ(q->sites[i].allocations, p->sites[i].allocations);
        ap_profile_free(q);
        ap_profile_free(p);
        /* Its counters are checked against one another too. */
        ASSERT_EQ(json_object_set_new(dig(doc, "sites/2"), "leaked_blocks", json_integer(3012)), 0);
        expect_doc_read_error(json_incref(doc), -EINVAL,
                              "sites[2].leaked_blocks: leaked_blocks (3012) is more than "
                              "allocations (3011)");
        json_decref(doc);
        unlink(path);
        free(path);
}

/* Profiles of format version 2 (rows of plain counters, stacks that leave out the frames
 * shared with the previous site) still read, frames keeping their numbers. */
static void test_reads_version_2(void)
{
        struct ap_profile *p = build_sample_old(), *q;
        json_t *doc = sample_doc_v2();
        char *path = path_in_tmp("v2.approf");

        ASSERT_EQ(json_integer_value(dig(doc, "sites/2/10")), 2); /* it does share frames */
        ASSERT_EQ(json_dump_file(doc, path, JSON_COMPACT), 0);
        q = read_ok(path);
        assert_same_renumbered(p, q, NULL);
        ASSERT_EQ(q->sites[2].allocations, p->sites[0].allocations); /* file order */
        ASSERT_EQ(q->sites[2].nframes, 3u);
        ap_profile_free(q);
        ap_profile_free(p);
        json_decref(doc);
        unlink(path);
        free(path);
}

/* Deep nesting must hit jansson's depth limit, not our stack. */
static void test_deep_nesting(void)
{
        size_t depth = 100000;
        char *text = malloc(2 * depth + 1);

        ASSERT_NOT_NULL(text);
        memset(text, '[', depth);
        memset(text + depth, ']', depth);
        text[2 * depth] = '\0';
        expect_text_error(text, -EINVAL, "not valid JSON");
        free(text);
}

/* Arrays are bounded only by the file: a big table is fine, not a crash or a refusal. */
static void test_huge_arrays(void)
{
        json_t *doc = sample_doc(), *strings = dig(doc, "strings");
        json_t *steps = dig(doc, "sites/stacks/1"); /* [1, 2]: frames 0 and 2 */
        char *path = path_in_tmp("huge.approf");
        struct ap_profile *p;

        for (unsigned i = 0; i < 200000; i++)
                ASSERT_EQ(json_array_append_new(strings, json_string("")), 0);
        for (unsigned i = 0; i < 100000; i++)
                ASSERT_EQ(json_array_append_new(steps, json_integer(i % 2 ? 1 : -1)), 0);
        /* The next site keeps the two outermost frames and replaces the third (frame 1,
         * after the step -1 from frame 2) with frame 1 again. */
        ASSERT_EQ(json_array_set_new(dig(doc, "sites/popped"), 2, json_integer(100000)), 0);
        ASSERT_EQ(json_array_set_new(dig(doc, "sites/stacks/2"), 0, json_integer(0)), 0);
        ASSERT_EQ(json_dump_file(doc, path, JSON_COMPACT), 0);
        p = read_ok(path);
        ASSERT_TRUE(p->nstrings > 200000);
        ASSERT_EQ(p->sites[1].nframes, 100002u);
        ASSERT_EQ(p->sites[1].frames[0], 2u); /* innermost: the last step was +1 */
        ASSERT_EQ(p->sites[1].frames[1], 1u);
        ASSERT_EQ(p->sites[1].frames[100002 - 3], 1u);
        ASSERT_EQ(p->sites[2].nframes, 3u); /* its own frame and the two outermost kept */
        ASSERT_EQ(p->sites[2].frames[0], 1u);
        ASSERT_EQ(p->sites[2].frames[1], 2u);
        ASSERT_EQ(p->sites[2].frames[2], 0u);
        ap_profile_free(p);
        json_decref(doc);
        unlink(path);
        free(path);
}

/* Shared frames let a small file describe very many: each site here repeats the whole
 * stack of the one before and adds a frame, so n sites stand for n(n+1)/2 frames.  The
 * reader stops at its bound instead of allocating without end. */
static void test_huge_frame_totals(void)
{
        json_t *doc = sample_doc(), *sites = dig(doc, "sites");
        const unsigned n = 11600; /* 11600 * 11601 / 2 > 2^26 */

        for (void *it = json_object_iter(sites); it; it = json_object_iter_next(sites, it)) {
                const char *key = json_object_iter_key(it);
                json_t *col = json_object_iter_value(it);

                ASSERT_EQ(json_array_clear(col), 0);
                for (unsigned i = 0; i < n; i++) {
                        json_t *v;

                        if (strcmp(key, "popped") == 0)
                                v = json_integer(0);
                        else if (strcmp(key, "stacks") == 0)
                                v = json_pack("[i]", i == 0 ? 1 : 0);
                        else
                                v = json_integer(0);
                        ASSERT_EQ(json_array_append_new(col, v), 0);
                }
        }
        /* 11584 * 11585 / 2 frames are still within 2^26; with the next site's they are not. */
        expect_doc_read_error(doc, -EINVAL,
                              "sites.stacks[11584]: more than 67108864 frames in all stacks");
}

static void test_file_errors(void)
{
        char *path = path_in_tmp("big.approf");
        struct ap_profile *p = NULL;
        int fd;

        expect_read_error("/nonexistent/allocprof.x.1.approf", -ENOENT, "No such file");
        expect_read_error(tmpdir, -EISDIR, "directory");

        /* A sparse file larger than any real profile is refused before parsing. */
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(ftruncate(fd, (off_t)2 << 30), 0);
        close(fd);
        expect_read_error(path, -EFBIG, "too large");
        unlink(path);
        free(path);

        /* A FIFO that no one writes to is given up after 10 s, not waited for without end
         * (the alarm turns such a wait into a failure); one that a writer opens after us
         * is read, and one whose writer wrote nothing is empty. */
        path = path_in_tmp("fifo.approf");
        ASSERT_EQ(mkfifo(path, 0600), 0);
        alarm(20);
        expect_read_error(path, -ETIMEDOUT, "a FIFO that nothing was written to in 10 s");
        alarm(0);
        pid_t child = fork();
        ASSERT_TRUE(child >= 0);
        if (child == 0) {
                usleep(200 * 1000);
                int w = open(path, O_WRONLY);
                _exit(w >= 0 && write(w, "{}", 2) == 2 ? 0 : 1);
        }
        expect_read_error(path, -EINVAL, "not an allocprof profile");
        int status = 0;
        ASSERT_EQ(waitpid(child, &status, 0), child);
        ASSERT_EQ(status, 0);
        child = fork();
        ASSERT_TRUE(child >= 0);
        if (child == 0) {
                usleep(200 * 1000);
                _exit(open(path, O_WRONLY) >= 0 ? 0 : 1);
        }
        expect_read_error(path, -EINVAL, "empty file");
        ASSERT_EQ(waitpid(child, &status, 0), child);
        ASSERT_EQ(status, 0);
        unlink(path);
        free(path);

        /* err is optional. */
        ASSERT_ERR(ap_profile_read("/nonexistent", &p, NULL), -ENOENT);
        ASSERT_NULL(p);
}

/* Every truncation of a valid file, and single-byte corruptions across it, must give a
 * clean result (an error, or a profile that passes validation), never a crash. */
/* Profiles are gzip'ed: a file cut short or damaged in its compressed bytes is refused
 * with one line (the gzip trailer's CRC and length catch what inflating does not). */
static void test_gzip_damage(void)
{
        struct ap_profile *s = build_sample(), *q;
        char *path = path_in_tmp("gz.approf"), *bad = path_in_tmp("gzbad.approf");
        size_t len;
        char *raw;

        ASSERT_OK(ap_profile_write(s, path));
        raw = slurp_raw(path, &len);
        ASSERT_EQ((unsigned char)raw[0], 0x1f);
        ASSERT_EQ((unsigned char)raw[1], 0x8b);
        for (size_t n = 0; n < len; n++) {
                char *err = NULL;
                q = NULL;
                write_text(bad, raw, n);
                ASSERT_TRUE(ap_profile_read(bad, &q, &err) < 0);
                ASSERT_NULL(q);
                ASSERT_NOT_NULL(err);
                ASSERT_NULL(strchr(err, '\n'));
                free(err);
        }
        for (size_t at = 10; at < len; at += 7) {
                char *err = NULL;
                raw[at] ^= 0x5a;
                write_text(bad, raw, len);
                q = NULL;
                ASSERT_TRUE(ap_profile_read(bad, &q, &err) < 0);
                ASSERT_NULL(q);
                free(err);
                raw[at] ^= 0x5a;
        }
        unlink(bad);
        unlink(path);
        free(raw);
        free(bad);
        free(path);
        ap_profile_free(s);
}

/* A few hundred KB of gzip'ed zeros inflate to more than any profile: inflating stops at
 * 256 MiB with one line (it went on to 1 GiB, and /dev/zero was read that far). */
static void test_gzip_bomb(void)
{
        char *path = path_in_tmp("bomb.approf");
        static unsigned char zeros[1 << 20], out[1 << 16];
        z_stream z = {0};
        FILE *f = fopen(path, "w");

        ASSERT_NOT_NULL(f);
        ASSERT_EQ(deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
        for (int mib = 0; mib <= 257; mib++) {
                z.next_in = zeros;
                z.avail_in = mib < 257 ? sizeof(zeros) : 0;
                do {
                        z.next_out = out;
                        z.avail_out = sizeof(out);
                        ASSERT_TRUE(deflate(&z, mib < 257 ? Z_NO_FLUSH : Z_FINISH) !=
                                    Z_STREAM_ERROR);
                        fwrite(out, 1, sizeof(out) - z.avail_out, f);
                } while (z.avail_out == 0);
        }
        deflateEnd(&z);
        ASSERT_EQ(fclose(f), 0);
        expect_read_error(path, -EFBIG, "larger than 256 MiB uncompressed: not a profile");
        unlink(path);
        free(path);
        expect_read_error("/dev/zero", -EFBIG, "larger than 256 MiB uncompressed");
}

static void test_truncations_and_flips(void)
{
        struct ap_profile *s = build_sample();
        char *path = path_in_tmp("good.approf"), *bad = path_in_tmp("damaged.approf");
        static const char flips[] = {'0', '9', '"', ',', ']', '}', '-', 'x', '\\', '\0'};
        uint32_t rng = 12345;
        size_t len;
        char *text;

        ASSERT_OK(ap_profile_write(s, path));
        text = slurp(path, &len);
        for (size_t n = 0; n + 1 < len; n++) {
                write_text(bad, text, n);
                expect_read_error(bad, -EINVAL, NULL);
        }
        for (unsigned i = 0; i < 4000; i++) {
                struct ap_profile *p = NULL;
                char *err = NULL, saved;
                size_t at;
                int r;

                rng = rng * 1103515245u + 12345u;
                at = (rng >> 8) % len;
                saved = text[at];
                text[at] = flips[(rng >> 4) % sizeof(flips)];
                write_text(bad, text, len);
                r = ap_profile_read(bad, &p, &err);
                ASSERT_TRUE(r == 0 || r == -EINVAL || r == -EPROTONOSUPPORT);
                ASSERT_TRUE(r == 0 ? p != NULL && err == NULL : err != NULL);
                ap_profile_free(p);
                free(err);
                text[at] = saved;
        }
        unlink(bad);
        unlink(path);
        free(text);
        free(bad);
        free(path);
        ap_profile_free(s);
}

/* The one check of every command's -o, and of output directories. */
static void test_check_dest(void)
{
        char *file = path_in_tmp("dest.approf"), *missing = path_in_tmp("no/dest.approf");
        char *fifo = path_in_tmp("dest.fifo"), *err = NULL;

        ASSERT_EQ(ap_profile_check_dest(file, &err), AP_DEST_FILE); /* no file yet */
        ASSERT_EQ(count_entries(tmpdir), 0);                        /* the probe is gone */
        ASSERT_EQ(ap_profile_check_dest("/dev/null", &err), AP_DEST_INTO);
        ASSERT_EQ(ap_profile_dest_of("/dev/null"), AP_DEST_INTO);
        ASSERT_EQ(ap_profile_dest_of(file), AP_DEST_FILE);
        ASSERT_EQ(mkfifo(fifo, 0600), 0);
        ASSERT_EQ(ap_profile_check_dest(fifo, &err), AP_DEST_INTO); /* no reader needed yet */
        ASSERT_EQ(unlink(fifo), 0);
        ASSERT_OK(ap_profile_check_dir(tmpdir, &err));
        ASSERT_NULL(err);

        ASSERT_ERR(ap_profile_check_dest(tmpdir, &err), -EISDIR);
        ASSERT_STREQ(err, "it is a directory");
        free(err);
        ASSERT_ERR(ap_profile_check_dest(missing, &err), -ENOENT);
        ASSERT_CONTAINS(err, "directory ");
        ASSERT_CONTAINS(err, "/no does not exist");
        free(err);
        ASSERT_ERR(ap_profile_check_dest("", &err), -EINVAL);
        ASSERT_STREQ(err, "the name is empty");
        free(err);
        ASSERT_ERR(ap_profile_check_dir(missing, &err), -ENOENT);
        free(err);
        if (access("/proc/version", F_OK) == 0) {
                ASSERT_TRUE(ap_profile_check_dest("/proc/version", &err) < 0);
                ASSERT_STREQ(err, "/proc is on a virtual file system (proc), where no file can "
                                  "be created (a profile replaces a file, it is never written "
                                  "into one)");
                free(err);
        }
        free(file);
        free(missing);
        free(fifo);
}

int main(void)
{
        ASSERT_NOT_NULL(mkdtemp(tmpdir));
        test_intern();
        test_round_trip();
        test_sites_in_order();
        test_live();
        test_u64_limits();
        test_round_trip_edges();
        test_invalid_utf8();
        test_escapes();
        test_write_errors();
        test_check_dest();
        test_hostile_documents();
        test_stack_coding();
        test_reads_version_1();
        test_reads_version_2();
        test_deep_nesting();
        test_huge_arrays();
        test_huge_frame_totals();
        test_file_errors();
        test_truncations_and_flips();
        test_gzip_damage();
        test_gzip_bomb();
        ASSERT_EQ(rmdir(tmpdir), 0);
        printf("profile: all tests passed\n");
        return 0;
}
