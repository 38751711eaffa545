/* Merging profiles (several processes of one run, or several runs of one program) into
 * one: modules are matched by path and build-id, frames by everything they say, call
 * sites by their frames; counters add up.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "merge.h"
#include "util.h"

struct merger {
        struct ap_profile *out;
        struct ap_map frame_index;  /* hash of a frame (probed) -> out frame index + 1 */
        struct ap_map site_index;   /* hash of a frame list (probed) -> out site index + 1 */
        struct ap_map module_index; /* hash of path and build-id (probed) -> out index + 1 */
        size_t frames_cap, sites_cap, modules_cap;
        /* The input being merged: its frames' and modules' out index + 1 (0: not mapped
         * yet), so that each is looked up once, not once per stack it is in. */
        uint32_t *frame_map, *module_map;
};

/* *a += b, held at INT64_MAX ("at least this much", as the writer saturates counters):
 * valid inputs each hold up to INT64_MAX, and their sum must not wrap to a small number. */
static void add_sat(uint64_t *a, uint64_t b)
{
        *a = *a >= (uint64_t)INT64_MAX || b >= (uint64_t)INT64_MAX - *a ? (uint64_t)INT64_MAX
                                                                        : *a + b;
}

static const char *str(const struct ap_profile *p, uint32_t i)
{
        return i == AP_NONE || i >= p->nstrings ? NULL : p->strings[i];
}

static uint32_t intern(struct merger *m, const struct ap_profile *in, uint32_t i)
{
        const char *s = str(in, i);
        return s ? ap_profile_intern(m->out, s) : AP_NONE;
}

static int map_module(struct merger *m, const struct ap_profile *in, uint32_t mod, uint32_t *ret)
{
        if (mod == AP_NONE || mod >= in->nmodules) {
                *ret = AP_NONE;
                return 0;
        }
        if (m->module_map[mod] != 0) {
                *ret = m->module_map[mod] - 1;
                return 0;
        }
        uint32_t path = intern(m, in, in->modules[mod].path);
        uint32_t bid = intern(m, in, in->modules[mod].build_id);
        struct ap_profile *o = m->out;
        uint64_t h = ap_mix64((uint64_t)path << 32 | bid);
        for (int k = 0; k < 64; k++, h = ap_mix64(h + 1)) {
                uint64_t *v = ap_map_get(&m->module_index, h ? h : 1);
                if (v == NULL)
                        break;
                const struct ap_pmodule *c = &o->modules[*v - 1];
                if (c->path == path && c->build_id == bid) {
                        *ret = (uint32_t)(*v - 1);
                        m->module_map[mod] = *ret + 1;
                        return 0;
                }
        }
        if (AP_GROW(o->modules, m->modules_cap, (size_t)o->nmodules + 1) < 0 ||
            ap_map_put(&m->module_index, h ? h : 1, (uint64_t)o->nmodules + 1) < 0)
                return -ENOMEM;
        o->modules[o->nmodules] = (struct ap_pmodule){.path = path, .build_id = bid};
        *ret = o->nmodules++;
        m->module_map[mod] = *ret + 1;
        return 0;
}

static int map_frame(struct merger *m, const struct ap_profile *in, uint32_t f, uint32_t *ret)
{
        if (m->frame_map[f] != 0) {
                *ret = m->frame_map[f] - 1;
                return 0;
        }
        const struct ap_pframe *src = &in->frames[f];
        struct ap_pframe fr = {
                .function = intern(m, in, src->function),
                .file = intern(m, in, src->file),
                .line = src->line,
                .address = src->address,
                .inlined = src->inlined,
        };
        int r = map_module(m, in, src->module, &fr.module);
        if (r < 0)
                return r;
        uint64_t h =
                ap_mix64(fr.address ^ ((uint64_t)fr.module << 40) ^ ((uint64_t)fr.function << 20) ^
                         fr.file ^ ((uint64_t)fr.line << 50) ^ (fr.inlined ? 0x5bd1e995 : 0));
        struct ap_profile *o = m->out;
        for (int k = 0; k < 64; k++, h = ap_mix64(h + 1)) {
                uint64_t *v = ap_map_get(&m->frame_index, h ? h : 1);
                if (v == NULL)
                        break;
                const struct ap_pframe *c = &o->frames[*v - 1];
                if (c->function == fr.function && c->file == fr.file && c->line == fr.line &&
                    c->module == fr.module && c->address == fr.address &&
                    c->inlined == fr.inlined) {
                        *ret = (uint32_t)(*v - 1);
                        m->frame_map[f] = *ret + 1;
                        return 0;
                }
        }
        if (AP_GROW(o->frames, m->frames_cap, (size_t)o->nframes + 1) < 0 ||
            ap_map_put(&m->frame_index, h ? h : 1, (uint64_t)o->nframes + 1) < 0)
                return -ENOMEM;
        o->frames[o->nframes] = fr;
        *ret = o->nframes++;
        m->frame_map[f] = *ret + 1;
        return 0;
}

static int merge_site(struct merger *m, const struct ap_profile *in, const struct ap_psite *s)
{
        struct ap_profile *o = m->out;
        uint32_t *frames = malloc(sizeof(uint32_t) * (s->nframes ? s->nframes : 1));
        if (frames == NULL)
                return -ENOMEM;
        for (uint32_t i = 0; i < s->nframes; i++) {
                int r = s->frames[i] < in->nframes ? map_frame(m, in, s->frames[i], &frames[i])
                                                   : -EINVAL;
                if (r < 0) {
                        free(frames);
                        return r;
                }
        }
        uint64_t h = ap_hash_bytes(frames, 4ull * s->nframes) ^ s->nframes;
        struct ap_psite *dst = NULL;
        for (int k = 0; k < 64; k++, h = ap_mix64(h + 1)) {
                uint64_t *v = ap_map_get(&m->site_index, h ? h : 1);
                if (v == NULL)
                        break;
                struct ap_psite *c = &o->sites[*v - 1];
                if (c->nframes == s->nframes && memcmp(c->frames, frames, 4ull * s->nframes) == 0) {
                        dst = c;
                        break;
                }
        }
        if (dst == NULL) {
                if (AP_GROW(o->sites, m->sites_cap, (size_t)o->nsites + 1) < 0 ||
                    ap_map_put(&m->site_index, h ? h : 1, (uint64_t)o->nsites + 1) < 0) {
                        free(frames);
                        return -ENOMEM;
                }
                dst = &o->sites[o->nsites++];
                memset(dst, 0, sizeof(*dst));
                dst->frames = frames;
                dst->nframes = s->nframes;
        } else {
                free(frames);
        }
        add_sat(&dst->allocations, s->allocations);
        add_sat(&dst->bytes, s->bytes);
        add_sat(&dst->frees, s->frees);
        add_sat(&dst->freed_bytes, s->freed_bytes);
        add_sat(&dst->leaked_blocks, s->leaked_blocks);
        add_sat(&dst->leaked_bytes, s->leaked_bytes);
        add_sat(&dst->peak_bytes, s->peak_bytes);
        add_sat(&dst->max_live_bytes, s->max_live_bytes);
        add_sat(&dst->temporary, s->temporary);
        add_sat(&dst->reallocs, s->reallocs);
        dst->truncated |= s->truncated;
        return 0;
}

static int copy_header(struct ap_profile *o, const struct ap_profile *first)
{
        o->tool_version = strdup(first->tool_version ? first->tool_version : "");
        o->mode = strdup(first->mode ? first->mode : "full");
        o->exe = first->exe ? strdup(first->exe) : NULL;
        o->run_id = first->run_id ? strdup(first->run_id) : NULL;
        if (o->tool_version == NULL || o->mode == NULL || (first->exe && o->exe == NULL) ||
            (first->run_id && o->run_id == NULL))
                return -ENOMEM;
        o->pid = first->pid;
        o->ppid = first->ppid;
        o->exit_status = first->exit_status;
        o->term_signal = first->term_signal;
        o->start_unix_ns = first->start_unix_ns;
        o->sample_interval = first->sample_interval;
        o->sample_interval_min = first->sample_interval_min;
        o->sample_interval_max = first->sample_interval_max;
        if (first->ncommand > 0) {
                o->command = calloc(first->ncommand, sizeof(char *));
                if (o->command == NULL)
                        return -ENOMEM;
                for (uint32_t i = 0; i < first->ncommand; i++) {
                        if ((o->command[i] = strdup(first->command[i])) == NULL)
                                return -ENOMEM;
                        o->ncommand = i + 1;
                }
        }
        return 0;
}

/* The merge's smallest and largest sample intervals cover p's (an input without them, as
 * built by hand, counts as its sample_interval). */
static void widen_intervals(struct ap_profile *o, const struct ap_profile *p)
{
        ap_range_widen(&o->sample_interval_min, &o->sample_interval_max, p->sample_interval);
        ap_range_widen(&o->sample_interval_min, &o->sample_interval_max, p->sample_interval_min);
        ap_range_widen(&o->sample_interval_min, &o->sample_interval_max, p->sample_interval_max);
}

int ap_profile_merge(struct ap_profile *const *in, size_t n, size_t main_index,
                     struct ap_profile **ret)
{
        if (n == 0 || main_index >= n)
                return -EINVAL;
        struct merger m = {.out = ap_profile_new()};
        if (m.out == NULL)
                return -ENOMEM;
        struct ap_profile *o = m.out;
        int r = copy_header(o, in[main_index]);
        uint64_t end = 0;
        for (size_t k = 0; k < n && r >= 0; k++) {
                const struct ap_profile *p = in[k];
                if (strcmp(p->mode ? p->mode : "full", "full") != 0 &&
                    strcmp(o->mode, "full") == 0) {
                        free(o->mode);
                        o->mode = strdup(p->mode);
                        o->sample_interval = p->sample_interval;
                        if (o->mode == NULL)
                                r = -ENOMEM;
                }
                widen_intervals(o, p);
                if (o->foreign_malloc == NULL && p->foreign_malloc != NULL &&
                    (o->foreign_malloc = strdup(p->foreign_malloc)) == NULL)
                        r = -ENOMEM;
                if (p->start_unix_ns != 0 && p->start_unix_ns < o->start_unix_ns)
                        o->start_unix_ns = p->start_unix_ns;
                if (p->start_unix_ns + p->duration_ns > end)
                        end = p->start_unix_ns + p->duration_ns;
                add_sat(&o->totals.allocations, p->totals.allocations);
                add_sat(&o->totals.bytes, p->totals.bytes);
                add_sat(&o->totals.frees, p->totals.frees);
                add_sat(&o->totals.freed_bytes, p->totals.freed_bytes);
                add_sat(&o->totals.leaked_blocks, p->totals.leaked_blocks);
                add_sat(&o->totals.leaked_bytes, p->totals.leaked_bytes);
                /* Processes peak at different moments: the sum bounds the run's peak. */
                add_sat(&o->totals.peak_bytes, p->totals.peak_bytes);
                add_sat(&o->totals.peak_blocks, p->totals.peak_blocks);
                add_sat(&o->totals.temporary, p->totals.temporary);
                add_sat(&o->totals.reallocs, p->totals.reallocs);
                add_sat(&o->totals.dropped_events, p->totals.dropped_events);
                add_sat(&o->totals.dropped_frees, p->totals.dropped_frees);
                add_sat(&o->totals.untracked_samples, p->totals.untracked_samples);
                add_sat(&o->totals.dropped_no_ring, p->totals.dropped_no_ring);
                add_sat(&o->totals.unprofiled_children, p->totals.unprofiled_children);
                add_sat(&o->totals.unmatched_frees, p->totals.unmatched_frees);
                add_sat(&o->totals.invalid_records, p->totals.invalid_records);
                /* An exec'ed image of a process goes on in the thread that exec'ed: the
                 * images of one pid share one thread. */
                bool same_pid = false;
                for (size_t j = 0; j < k; j++)
                        same_pid |= in[j]->pid == p->pid && in[j]->totals.threads > 0;
                o->totals.threads += same_pid && p->totals.threads > 0 ? p->totals.threads - 1
                                                                       : p->totals.threads;
                add_sat(&o->ring_waits, p->ring_waits);
                add_sat(&o->ring_wait_ns, p->ring_wait_ns);
                for (int b = 0; b < AP_HIST_BUCKETS; b++) {
                        add_sat(&o->hist_count[b], p->hist_count[b]);
                        add_sat(&o->hist_bytes[b], p->hist_bytes[b]);
                }
                m.frame_map = calloc((size_t)p->nframes + 1, sizeof(*m.frame_map));
                m.module_map = calloc((size_t)p->nmodules + 1, sizeof(*m.module_map));
                if (m.frame_map == NULL || m.module_map == NULL)
                        r = -ENOMEM;
                for (uint32_t i = 0; i < p->nsites && r >= 0; i++)
                        r = merge_site(&m, p, &p->sites[i]);
                for (uint32_t i = 0; i < p->nmodules && r >= 0; i++) {
                        uint32_t mod;
                        r = map_module(&m, p, i, &mod);
                        if (r >= 0) {
                                add_sat(&o->modules[mod].allocations, p->modules[i].allocations);
                                add_sat(&o->modules[mod].bytes, p->modules[i].bytes);
                                add_sat(&o->modules[mod].leaked_blocks,
                                        p->modules[i].leaked_blocks);
                                add_sat(&o->modules[mod].leaked_bytes, p->modules[i].leaked_bytes);
                        }
                }
                free(m.frame_map);
                free(m.module_map);
                m.frame_map = m.module_map = NULL;
        }
        /* Full-mode profiles merged with sampled ones: their figures are what an interval
         * of 1 byte gives (every byte a sample point: exact), which the range must show,
         * or the report would call every figure sampled at the sampled profiles' rate. */
        for (size_t i = 0; i < n; i++)
                if (strcmp(o->mode, "full") != 0 &&
                    strcmp(in[i]->mode ? in[i]->mode : "full", "full") == 0)
                        ap_range_widen(&o->sample_interval_min, &o->sample_interval_max, 1);
        o->duration_ns = end > o->start_unix_ns ? end - o->start_unix_ns : 0;
        /* The drain time of all the events merged: events / it stays the drain rate. */
        for (size_t i = 0; i < n; i++)
                add_sat(&o->drain_cpu_ns, in[i]->drain_cpu_ns);
        o->merged_from = (uint32_t)n;
        /* Profiles of different runs (or of none): the result belongs to no one run, and
         * the time from the first start to the last end means nothing; the sum of their
         * running times does. */
        for (size_t i = 0; i < n && o->run_id != NULL; i++)
                if (in[i]->run_id == NULL || strcmp(in[i]->run_id, o->run_id) != 0) {
                        free(o->run_id);
                        o->run_id = NULL;
                }
        if (o->run_id == NULL && n > 1) {
                o->duration_ns = 0;
                for (size_t i = 0; i < n; i++)
                        add_sat(&o->duration_ns, in[i]->duration_ns);
        }
        /* Blocks of a running process are live, not leaked: any snapshot makes it so. */
        for (size_t i = 0; i < n; i++)
                o->live |= in[i]->live;
        /* One profile (`--all` of a run that started nothing, a file named twice) is its
         * own report: its peak has a moment and its timeline a meaning, which a sum of
         * processes' has not. */
        if (n == 1 && r >= 0) {
                size_t size = in[0]->ntimeline * sizeof(*o->timeline);
                /* (Of several, the sums hold leaks too: no single image's ending says
                 * what they are.) */
                o->by_exec = in[0]->by_exec;
                o->exec_profiled = in[0]->exec_profiled;
                if (in[0]->exec_path != NULL && (o->exec_path = strdup(in[0]->exec_path)) == NULL)
                        r = -ENOMEM;
                o->totals.peak_t_ns = in[0]->totals.peak_t_ns;
                if (size > 0 && (o->timeline = malloc(size)) == NULL) {
                        r = -ENOMEM;
                } else if (size > 0) {
                        memcpy(o->timeline, in[0]->timeline, size);
                        o->ntimeline = in[0]->ntimeline;
                }
        }
        ap_map_clear(&m.frame_index);
        ap_map_clear(&m.site_index);
        ap_map_clear(&m.module_index);
        if (r < 0) {
                ap_profile_free(o);
                return r;
        }
        *ret = o;
        return 0;
}
