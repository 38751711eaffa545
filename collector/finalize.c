/* Turning a process's raw stacks into a symbolized profile: each return address is placed
 * in the module that was mapped there, symbolized once (inline frames expanded), the
 * agent's and the allocator's own frames are folded away, and stacks that become equal
 * are merged into one call site.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "allocprof/atomics.h"
#include "allocprof/clock.h"
#include "allocprof/sampler.h"
#include "process-internal.h"

#ifndef AP_VERSION
#include "config.h"
#endif

/* Symbolized unique address: a run of consecutive frames in the profile. */
struct addr_syms {
        uint32_t cmod;
        uint64_t addr; /* module-relative return address, or raw ip when cmod is none */
        uint32_t first, count;
        bool outer; /* named from the symbol table only (see is_entry_function) */
};

struct fin {
        struct ap_process *p;
        struct ap_profile *prof;
        struct ap_symbolizer *sym;
        struct addr_syms *addrs;
        size_t naddrs, addrs_cap;
        struct ap_map addr_index; /* hash(cmod, addr, outer) (probed) -> addrs index + 1 */
        struct ap_map entry_ips;  /* raw ip -> 1 entry code, 2 not (see is_entry_function) */
        uint32_t *pmod_of_cmod;   /* cmodule -> profile module, AP_NONE = not yet */
        uint8_t *alloc_flag;      /* profile frame -> 0 not asked, 1 allocator, 2 not */
        size_t alloc_flag_cap;
        size_t nframes_cap, nsites_cap, nmodules_cap;
        /* ap_process_module_at's answers for the return addresses seen last, direct-mapped: every
         * frame of every stack asks, and the scan of the module list was a third of
         * finalizing a compiler's profile.  ip 0 never asks, so a zeroed cell is empty. */
        struct {
                uint64_t ip;
                uint32_t cmod;
        } mod_cache[1024];
};

/* Counts are kept in 1/AP_CW units (process-internal.h). */
static uint64_t cnt(uint64_t units)
{
        return (units + AP_CW / 2) / AP_CW;
}

/* A process writes its own records, and sizes or weights made up to wrap the sums make
 * counters that contradict each other (more freed than allocated).  Its profile must
 * still be one that can be written and read again: a count past its bound is cut to it
 * (no record could have made it, and the report says how many records were malformed). */
static void keep_bounds(uint64_t allocations, uint64_t *frees, uint64_t *leaked_blocks,
                        uint64_t bytes, uint64_t *freed_bytes, uint64_t *leaked_bytes)
{
        if (*frees > allocations)
                *frees = allocations;
        if (*leaked_blocks > allocations)
                *leaked_blocks = allocations;
        if (*freed_bytes > bytes)
                *freed_bytes = bytes;
        if (*leaked_bytes > bytes)
                *leaked_bytes = bytes;
}

static bool is_agent_module(const struct ap_cmodule *m)
{
        return strncmp(ap_path_base(m->path), "liballocprof", 12) == 0;
}

static uint32_t module_of(struct fin *f, uint64_t ip)
{
        if (ip == 0)
                return UINT32_MAX;
        size_t c = (size_t)(ap_mix64(ip) & (sizeof(f->mod_cache) / sizeof(f->mod_cache[0]) - 1));
        if (f->mod_cache[c].ip != ip) {
                f->mod_cache[c].ip = ip;
                f->mod_cache[c].cmod = ap_process_module_at(f->p, ip);
        }
        return f->mod_cache[c].cmod;
}

static bool has_prefix(const char *s, const char *prefix)
{
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The allocator's own frames: folded out so frames[0] is the code that asked. */
static bool is_allocator_function(const char *f)
{
        static const char *const exact[] = {
                "malloc",
                "calloc",
                "realloc",
                "reallocarray",
                "free",
                "posix_memalign",
                "aligned_alloc",
                "memalign",
                "valloc",
                "pvalloc",
                "__libc_malloc",
                "__libc_calloc",
                "__libc_realloc",
                "__libc_memalign",
        };
        for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
                if (strcmp(f, exact[i]) == 0)
                        return true;
        /* Rust's allocator layers have been renamed across releases (legacy vs v0
         * demangling, __rustc:: symbols since 1.88): match the families (__rust_alloc,
         * __rdl_realloc, __rg_alloc_zeroed... fall under their prefixes). */
        static const char *const prefixes[] = {
                "operator new(",
                "operator new[](",
                "std::__new_allocator<",
                "__gnu_cxx::new_allocator<",
                "std::allocator_traits<",
                "std::allocator<",
                "alloc::alloc::",
                "<alloc::alloc::Global",
                "std::alloc::",
                "<std::alloc::System",
                "std::sys::alloc::",
                "std::sys::pal::unix::alloc::",
                "__rustc::",
                "__rust_",
                "__rdl_",
                "__rg_",
                "alloc::boxed::box_new", /* Box::new's allocation helper */
        };
        for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
                if (has_prefix(f, prefixes[i]))
                        return true;
        return false;
}

static uint32_t profile_module(struct fin *f, uint32_t cmod)
{
        if (f->pmod_of_cmod[cmod] != AP_NONE)
                return f->pmod_of_cmod[cmod];
        const struct ap_cmodule *m = &f->p->modules[cmod];
        char hex[2 * AP_MAX_BUILD_ID + 1];
        ap_hex(hex, m->build_id, m->build_id_len);
        struct ap_profile *prof = f->prof;
        /* Same file loaded twice (dlopen, dlclose, dlopen): one row. */
        uint32_t path = ap_profile_intern(prof, m->path);
        uint32_t bid = m->build_id_len ? ap_profile_intern(prof, hex) : AP_NONE;
        for (uint32_t i = 0; i < prof->nmodules; i++) {
                if (prof->modules[i].path == path && prof->modules[i].build_id == bid) {
                        f->pmod_of_cmod[cmod] = i;
                        return i;
                }
        }
        if (AP_GROW(prof->modules, f->nmodules_cap, (size_t)prof->nmodules + 1) < 0)
                return AP_NONE;
        prof->modules[prof->nmodules] = (struct ap_pmodule){.path = path, .build_id = bid};
        f->pmod_of_cmod[cmod] = prof->nmodules;
        return prof->nmodules++;
}

static int add_frame(struct fin *f, const struct ap_pframe *fr)
{
        struct ap_profile *prof = f->prof;
        if (AP_GROW(prof->frames, f->nframes_cap, (size_t)prof->nframes + 1) < 0)
                return -ENOMEM;
        prof->frames[prof->nframes++] = *fr;
        return 0;
}

/* The C library's code that starts the program and its threads, outermost in every
 * stack.  Nobody reads their file and line (reports hide frames below main), and finding
 * those means loading the library's DWARF, by far the most expensive debug information
 * a typical profile would otherwise need: they are named from the symbol table alone. */
static bool is_entry_function(const char *fn)
{
        static const char *const entry[] = {
                "_start",       "__libc_start_main", "__libc_start_main_impl",
                "__libc_start_call_main", "start_thread", "clone",
                "clone3",       "__clone",           "__clone3",
        };
        /* Symbol tables name versioned symbols "__libc_start_main@@GLIBC_2.34". */
        size_t len = strcspn(fn, "@");
        for (size_t i = 0; i < sizeof(entry) / sizeof(entry[0]); i++)
                if (strlen(entry[i]) == len && strncmp(fn, entry[i], len) == 0)
                        return true;
        return false;
}

/* Whether ip is in program or thread entry code (symbol table lookup, cached). */
static int entry_ip(struct fin *f, uint64_t ip, bool *ret)
{
        uint64_t *v = ap_map_get(&f->entry_ips, ip ? ip : 1);
        if (v != NULL) {
                *ret = *v == 1;
                return 0;
        }
        struct ap_process *p = f->p;
        uint32_t cmod = module_of(f, ip);
        char *name = NULL;
        if (cmod != UINT32_MAX && !is_agent_module(&p->modules[cmod])) {
                const struct ap_cmodule *m = &p->modules[cmod];
                uint64_t addr = ip - m->bias;
                int r = ap_symbolizer_lookup_name(f->sym, m->path, m->build_id, m->build_id_len,
                                                  addr ? addr - 1 : 0, &name);
                if (r < 0)
                        return r;
        }
        *ret = name != NULL && is_entry_function(name);
        free(name);
        return ap_map_put(&f->entry_ips, ip ? ip : 1, *ret ? 1 : 2);
}

/* Symbolizes one return address (once per process); `outer` names it from the symbol
 * table only.  Returns the addrs index or -errno. */
static long symbolize_ip(struct fin *f, uint64_t ip, bool outer)
{
        struct ap_process *p = f->p;
        uint32_t cmod = module_of(f, ip);
        uint64_t addr = cmod == UINT32_MAX ? ip : ip - p->modules[cmod].bias;
        uint64_t h = ap_mix64(addr ^ ((uint64_t)cmod << 44) ^ (outer ? 0x77 : 0x51));
        for (int k = 0; k < 64; k++, h = ap_mix64(h + 1)) {
                uint64_t *v = ap_map_get(&f->addr_index, h ? h : 1);
                if (v == NULL)
                        break;
                struct addr_syms *a = &f->addrs[*v - 1];
                if (a->cmod == cmod && a->addr == addr && a->outer == outer)
                        return (long)(*v - 1);
        }
        if (AP_GROW(f->addrs, f->addrs_cap, f->naddrs + 1) < 0)
                return -ENOMEM;
        struct addr_syms *a = &f->addrs[f->naddrs];
        a->cmod = cmod;
        a->addr = addr;
        a->first = f->prof->nframes;
        a->count = 0;
        a->outer = outer;

        if (cmod == UINT32_MAX) {
                struct ap_pframe fr = {
                        .function = AP_NONE, .file = AP_NONE, .module = AP_NONE, .address = addr};
                if (add_frame(f, &fr) < 0)
                        return -ENOMEM;
                a->count = 1;
        } else if (is_agent_module(&p->modules[cmod])) {
                a->count = 0; /* agent frames vanish */
        } else if (outer) {
                const struct ap_cmodule *m = &p->modules[cmod];
                char *name = NULL;
                int r = ap_symbolizer_lookup_name(f->sym, m->path, m->build_id, m->build_id_len,
                                                  addr ? addr - 1 : 0, &name);
                if (r < 0)
                        return r;
                struct ap_pframe fr = {
                        .function = name ? ap_profile_intern(f->prof, name) : AP_NONE,
                        .file = AP_NONE,
                        .module = profile_module(f, cmod),
                        .address = addr,
                };
                free(name);
                if (add_frame(f, &fr) < 0)
                        return -ENOMEM;
                a->count = 1;
        } else {
                const struct ap_cmodule *m = &p->modules[cmod];
                uint32_t pmod = profile_module(f, cmod);
                struct ap_sym_frame *sf = NULL;
                /* Return addresses point after the call: look up the call itself. */
                int n = ap_symbolizer_lookup(f->sym, m->path, m->build_id, m->build_id_len,
                                             addr ? addr - 1 : 0, &sf);
                if (n < 0)
                        return n;
                for (int i = 0; i < n; i++) {
                        struct ap_pframe fr = {
                                .function = sf[i].function
                                                    ? ap_profile_intern(f->prof, sf[i].function)
                                                    : AP_NONE,
                                .file = sf[i].file ? ap_profile_intern(f->prof, sf[i].file)
                                                   : AP_NONE,
                                .line = sf[i].line,
                                .module = pmod,
                                .address = addr,
                                .inlined = sf[i].inlined,
                        };
                        if (add_frame(f, &fr) < 0) {
                                ap_sym_frames_free(sf, (size_t)n);
                                return -ENOMEM;
                        }
                }
                a->count = (uint32_t)n;
                ap_sym_frames_free(sf, (size_t)n);
        }
        if (ap_map_put(&f->addr_index, h ? h : 1, f->naddrs + 1) < 0)
                return -ENOMEM;
        return (long)f->naddrs++;
}

static const char *frame_function(const struct ap_profile *prof, uint32_t frame)
{
        uint32_t fn = prof->frames[frame].function;
        return fn == AP_NONE ? NULL : prof->strings[fn];
}

/* What finalize_sites learned about one frame of the stack before.  Stacks are in the
 * order the program first used them, and one mostly shares its outer frames with the
 * one before (a compiler's: most of twenty), so those frames' answers are taken over
 * instead of asked again (a hash probe and a cache miss or two each): cc1's 11,000
 * stacks took 17 ms, now 11 (the symbolizer's own caches warm in both). */
struct prev_frame {
        uint64_t ip;
        uint32_t first, count; /* its profile frames (addrs[a].first, .count) */
        uint8_t entry;         /* entry code (entry_ip): 0 not asked, 1 yes, 2 no */
        bool outer;            /* symbolized as such */
};

/* Whether profile frame i is an allocator's (is_allocator_function), cached per frame:
 * every stack asks for its innermost frames, and the answer is 31 string compares. */
static int frame_is_allocator(struct fin *f, uint32_t i, bool *ret)
{
        size_t old = f->alloc_flag_cap;
        if (AP_GROW(f->alloc_flag, f->alloc_flag_cap, (size_t)i + 1) < 0)
                return -ENOMEM;
        memset(f->alloc_flag + old, 0, f->alloc_flag_cap - old);
        if (f->alloc_flag[i] == 0) {
                const char *fn = frame_function(f->prof, i);
                f->alloc_flag[i] = fn != NULL && is_allocator_function(fn) ? 1 : 2;
        }
        *ret = f->alloc_flag[i] == 1;
        return 0;
}

static int finalize_sites(struct fin *f)
{
        struct ap_process *p = f->p;
        struct ap_profile *prof = f->prof;
        uint32_t *frames = NULL;
        size_t frames_cap = 0;
        struct ap_map site_index = {0};
        /* The stack before, outermost frame first (prev[j] is depth - 1 - j). */
        struct prev_frame prev[AP_MAX_FRAMES], cur[AP_MAX_FRAMES];
        uint32_t nprev = 0;
        int r = 0;

        /* At most a site per stack: sized once.  Grown by doubling, the array of a program
         * with 68,000 stacks took 12 MiB of the collector's 46 MiB peak, twice what its
         * sites needed. */
        if (p->nstacks > f->nsites_cap) {
                struct ap_psite *sites = realloc(prof->sites, p->nstacks * sizeof(*sites));
                if (sites == NULL)
                        return -ENOMEM;
                prof->sites = sites;
                f->nsites_cap = p->nstacks;
        }
        for (size_t si = 0; si < p->nstacks; si++) {
                struct ap_cstack *s = &p->stacks[si];
                if (s->allocations == 0)
                        continue;
                const uint32_t depth = s->depth;
                const uint64_t *ips = ap_cstack_ips(p, s);
                if (depth > AP_MAX_FRAMES) { /* process.c refuses such stacks */
                        r = -EINVAL;
                        goto out;
                }
                /* The outer frames it shares with the stack before. */
                uint32_t shared = 0;
                while (shared < depth && shared < nprev &&
                       prev[shared].ip == ips[depth - 1 - shared])
                        shared++;
                /* The outermost frames, while they are entry code (never frame 0): j counts
                 * them from the outermost. */
                uint32_t nentry = 0, asked = 0;
                while (nentry + 1 < depth) {
                        bool entry;
                        if (nentry < shared && prev[nentry].entry != 0) {
                                entry = prev[nentry].entry == 1;
                        } else {
                                r = entry_ip(f, ips[depth - 1 - nentry], &entry);
                                if (r < 0)
                                        goto out;
                        }
                        cur[nentry].entry = entry ? 1 : 2;
                        asked = nentry + 1;
                        if (!entry)
                                break;
                        nentry++;
                }
                for (uint32_t j = 0; j < depth; j++) {
                        bool outer = j < nentry;
                        struct prev_frame *c = &cur[j];
                        if (j < shared && prev[j].outer == outer) {
                                uint8_t entry = j < asked ? cur[j].entry : prev[j].entry;
                                *c = prev[j];
                                c->entry = entry;
                                continue;
                        }
                        uint64_t ip = ips[depth - 1 - j];
                        long a = symbolize_ip(f, ip, outer);
                        if (a < 0) {
                                r = (int)a;
                                goto out;
                        }
                        /* Only the chain from the outermost frame was asked about. */
                        *c = (struct prev_frame){.ip = ip,
                                                 .first = f->addrs[a].first,
                                                 .count = f->addrs[a].count,
                                                 .entry = j < asked ? cur[j].entry : 0,
                                                 .outer = outer};
                }
                /* frames, innermost first */
                size_t n = 0;
                for (uint32_t j = depth; j-- > 0;) {
                        if (AP_GROW(frames, frames_cap, n + cur[j].count) < 0) {
                                r = -ENOMEM;
                                goto out;
                        }
                        for (uint32_t k = 0; k < cur[j].count; k++)
                                frames[n++] = cur[j].first + k;
                }
                memcpy(prev, cur, sizeof(prev[0]) * depth);
                nprev = depth;
                size_t skip = 0;
                while (skip < n) {
                        bool alloc;
                        if ((r = frame_is_allocator(f, frames[skip], &alloc)) < 0)
                                goto out;
                        if (!alloc)
                                break;
                        skip++;
                }
                if (skip == n && n > 0)
                        skip = n - 1; /* nothing but allocator frames: keep the outermost */
                uint32_t nf = (uint32_t)(n - skip);
                const uint32_t *fv = frames + skip;

                uint64_t h = ap_hash_bytes(fv, 4ull * nf) ^ nf;
                struct ap_psite *site = NULL;
                for (int k = 0; k < 64; k++, h = ap_mix64(h + 1)) {
                        uint64_t *v = ap_map_get(&site_index, h ? h : 1);
                        if (v == NULL)
                                break;
                        struct ap_psite *cand = &prof->sites[*v - 1];
                        if (cand->nframes == nf && memcmp(cand->frames, fv, 4ull * nf) == 0) {
                                site = cand;
                                break;
                        }
                }
                if (site == NULL) {
                        if (AP_GROW(prof->sites, f->nsites_cap, (size_t)prof->nsites + 1) < 0) {
                                r = -ENOMEM;
                                goto out;
                        }
                        site = &prof->sites[prof->nsites];
                        memset(site, 0, sizeof(*site));
                        site->frames = malloc(4ull * (nf ? nf : 1));
                        if (site->frames == NULL) {
                                r = -ENOMEM;
                                goto out;
                        }
                        memcpy(site->frames, fv, 4ull * nf);
                        site->nframes = nf;
                        prof->nsites++;
                        if (ap_map_put(&site_index, h ? h : 1, prof->nsites) < 0) {
                                r = -ENOMEM;
                                goto out;
                        }
                }
                /* Sites collect units; converted to counts once all stacks are in. */
                site->allocations += s->allocations;
                site->bytes += s->bytes;
                site->frees += s->frees;
                site->freed_bytes += s->freed_bytes;
                site->leaked_blocks += s->live_blocks;
                site->leaked_bytes += s->live_bytes;
                site->peak_bytes += s->peak_epoch == p->peak_epoch ? s->peak_bytes : s->live_bytes;
                site->max_live_bytes += s->max_live_bytes;
                site->temporary += s->temporary;
                site->reallocs += s->reallocs;
                /* The agent records at most AP_MAX_FRAMES; a stack that long which does not
                 * end in the C library's entry code was cut there. */
                site->truncated |= depth == AP_MAX_FRAMES && nentry == 0;

                uint32_t mod = nf ? prof->frames[fv[0]].module : AP_NONE;
                if (mod != AP_NONE) {
                        struct ap_pmodule *pm = &prof->modules[mod];
                        pm->allocations += s->allocations;
                        pm->bytes += s->bytes;
                        pm->leaked_blocks += s->live_blocks;
                        pm->leaked_bytes += s->live_bytes;
                }
        }
        for (uint32_t i = 0; i < prof->nsites; i++) {
                struct ap_psite *site = &prof->sites[i];
                site->allocations = cnt(site->allocations);
                site->frees = cnt(site->frees);
                site->leaked_blocks = cnt(site->leaked_blocks);
                site->temporary = cnt(site->temporary);
                site->reallocs = cnt(site->reallocs);
                keep_bounds(site->allocations, &site->frees, &site->leaked_blocks, site->bytes,
                            &site->freed_bytes, &site->leaked_bytes);
        }
        for (uint32_t i = 0; i < prof->nmodules; i++) {
                prof->modules[i].allocations = cnt(prof->modules[i].allocations);
                prof->modules[i].leaked_blocks = cnt(prof->modules[i].leaked_blocks);
        }
out:
        free(frames);
        ap_map_clear(&site_index);
        return r;
}

int ap_process_finalize(struct ap_process *p, struct ap_symbolizer *sym, struct ap_profile **ret)
{
        struct ap_profile *prof = ap_profile_new();
        if (prof == NULL)
                return -ENOMEM;
        struct fin f = {.p = p, .prof = prof, .sym = sym};
        f.pmod_of_cmod = malloc(sizeof(uint32_t) * (p->nmodules ? p->nmodules : 1));
        if (f.pmod_of_cmod == NULL) {
                ap_profile_free(prof);
                return -ENOMEM;
        }
        for (size_t i = 0; i < p->nmodules; i++)
                f.pmod_of_cmod[i] = AP_NONE;

        int r = -ENOMEM;
        prof->tool_version = strdup(AP_VERSION);
        prof->mode = strdup(p->sampled ? "sampled" : "full");
        if (p->sampled) {
                /* As the agent's sampler takes it: a process that writes 0 there samples
                 * every byte, as at 1. */
                uint64_t iv = ap_load_relaxed(&p->hdr->xsample_interval);
                prof->sample_interval = ap_sampler_interval(iv);
                /* Every interval seen in force, the last one included. */
                prof->sample_interval_min = p->interval_min;
                prof->sample_interval_max = p->interval_max;
                ap_range_widen(&prof->sample_interval_min, &prof->sample_interval_max,
                               prof->sample_interval);
        }
        if (prof->tool_version == NULL || prof->mode == NULL)
                goto out;
        prof->pid = (uint32_t)p->pid;
        prof->ppid = p->ppid;
        if (p->argc > 0) {
                prof->command = calloc((size_t)p->argc, sizeof(char *));
                if (prof->command == NULL)
                        goto out;
                for (int i = 0; i < p->argc; i++) {
                        prof->command[i] = strdup(p->argv[i]);
                        if (prof->command[i] == NULL)
                                goto out;
                        prof->ncommand = (uint32_t)i + 1;
                }
        }
        if (p->nmodules > 0 && (prof->exe = strdup(p->modules[0].path)) == NULL)
                goto out;
        prof->exit_status = p->exit_code;
        prof->term_signal = p->term_signal;
        prof->by_exec = p->by_exec;
        prof->exec_profiled = p->exec_profiled;
        if (p->exec_path != NULL && (prof->exec_path = strdup(p->exec_path)) == NULL)
                goto out;
        prof->start_unix_ns = p->start_unix_ns;
        ap_process_calibrate(p);
        /* How long the image ran: from the agent's start to when we saw it end (now, if
         * it runs on), and never less than the span of its records. */
        uint64_t end = p->end_mono_ns ? p->end_mono_ns : ap_clock_mono_ns();
        uint64_t ran = end > p->start_ns ? end - p->start_ns : 0;
        uint64_t spanned = ap_process_ticks_to_ns(p, p->last_ts);
        prof->duration_ns = ran > spanned ? ran : spanned;
        prof->drain_cpu_ns = p->drain_cpu_ns;

        const struct ap_shm_header *h = p->hdr;
        prof->ring_waits = ap_load_relaxed(&h->xcounters[AP_CNT_RING_WAITS]);
        prof->ring_wait_ns = ap_load_relaxed(&h->xcounters[AP_CNT_RING_WAIT_NS]);
        prof->totals.allocations = cnt(p->t.allocations);
        prof->totals.bytes = p->t.bytes;
        prof->totals.frees = cnt(p->t.frees);
        prof->totals.freed_bytes = p->t.freed_bytes;
        prof->totals.leaked_blocks = cnt(p->t.live_blocks);
        prof->totals.leaked_bytes = p->t.live_bytes;
        prof->totals.peak_bytes = p->t.peak_bytes;
        prof->totals.peak_blocks = cnt(p->t.peak_blocks);
        prof->totals.peak_t_ns = ap_process_ticks_to_ns(p, p->t.peak_ts);
        prof->totals.temporary = cnt(p->t.temporary);
        prof->totals.reallocs = cnt(p->t.reallocs);
        keep_bounds(prof->totals.allocations, &prof->totals.frees, &prof->totals.leaked_blocks,
                    prof->totals.bytes, &prof->totals.freed_bytes, &prof->totals.leaked_bytes);
        /* Summed without wrapping (the counters are the process's to write): the events
         * of threads without a ring stay a part of all dropped ones, as readers check. */
        uint64_t ring_full = ap_load_relaxed(&h->xcounters[AP_CNT_DROP_RING_FULL]);
        uint64_t no_ring = ap_load_relaxed(&h->xcounters[AP_CNT_DROP_NO_SLOT]);
        prof->totals.dropped_events = ring_full + no_ring < no_ring ? UINT64_MAX : ring_full + no_ring;
        prof->totals.dropped_frees = ap_load_relaxed(&h->xcounters[AP_CNT_DROP_FREE]);
        prof->totals.dropped_no_ring = no_ring;
        prof->totals.untracked_samples = ap_load_relaxed(&h->xcounters[AP_CNT_SAMPLED_SET_FULL]);
        prof->totals.unprofiled_children =
                ap_load_relaxed(&h->xcounters[AP_CNT_CHILDREN_UNPROFILED]);
        uint64_t fm = ap_load_relaxed(&h->xcounters[AP_CNT_FOREIGN_MALLOC]);
        if (fm != 0) {
                /* The module of the malloc that took the program's calls (a number from
                 * the process: only looked up in its module map). */
                uint32_t m = ap_process_module_at(p, fm);
                const char *path = m != UINT32_MAX ? p->modules[m].path : NULL;
                if ((prof->foreign_malloc = strdup(path ? path : "an unknown module")) == NULL)
                        goto out;
        }
        prof->totals.unmatched_frees = p->t.unmatched_frees;
        prof->totals.invalid_records = p->t.invalid_records;
        prof->totals.threads = ap_process_threads(p);
        for (int b = 0; b < AP_HIST_BUCKETS; b++)
                prof->hist_count[b] = cnt(p->hist_count[b]);
        memcpy(prof->hist_bytes, p->hist_bytes, sizeof(prof->hist_bytes));
        /* The timeline is sampled as allocations come, one row per step at most: its last
         * row can be long before the end (a short program's only row is its first
         * allocation), and frees since then are not in it, nor a peak reached and left
         * between two rows (a burst of a few ms).  A row at the moment of the peak puts
         * the peak on the curve, and a closing row at the end of the image (of the
         * snapshot, live) shows the heap the totals describe. */
        struct ap_ptimepoint last = {.t_ns = prof->duration_ns,
                                     .live_bytes = p->t.live_bytes,
                                     .allocations = prof->totals.allocations};
        struct ap_ptimepoint peak = {.t_ns = prof->totals.peak_t_ns,
                                     .live_bytes = p->t.peak_bytes,
                                     .allocations = cnt(p->t.peak_allocations)};
        size_t nt = p->ntimeline, at = 0;
        /* In time order, and among rows of the same nanosecond, in the order of their
         * allocations. */
        while (at < nt && (p->timeline[at].t_ns < peak.t_ns ||
                           (p->timeline[at].t_ns == peak.t_ns &&
                            p->timeline[at].allocations < peak.allocations)))
                at++;
        bool add_peak = p->t.peak_bytes > 0 && !(at < nt && p->timeline[at].t_ns == peak.t_ns &&
                                                 p->timeline[at].live_bytes == peak.live_bytes);
        bool close = nt > 0 ? p->timeline[nt - 1].live_bytes != last.live_bytes ||
                                      p->timeline[nt - 1].allocations != last.allocations
                            : last.allocations > 0;
        if (nt > 0 || close || add_peak) {
                prof->timeline = malloc(sizeof(*prof->timeline) * (nt + 2));
                if (prof->timeline == NULL)
                        goto out;
                struct ap_ptimepoint *o = prof->timeline;
                if (at > 0)
                        memcpy(o, p->timeline, sizeof(*o) * at);
                o += at;
                if (add_peak)
                        *o++ = peak;
                if (nt > at)
                        memcpy(o, p->timeline + at, sizeof(*o) * (nt - at));
                o += nt - at;
                if (close && (o == prof->timeline || o[-1].live_bytes != last.live_bytes ||
                              o[-1].allocations != last.allocations)) {
                        if (o > prof->timeline && last.t_ns < o[-1].t_ns)
                                last.t_ns = o[-1].t_ns;
                        *o++ = last;
                }
                prof->ntimeline = (uint32_t)(o - prof->timeline);
        }

        r = finalize_sites(&f);
out:
        free(f.addrs);
        free(f.alloc_flag);
        ap_map_clear(&f.addr_index);
        ap_map_clear(&f.entry_ips);
        free(f.pmod_of_cmod);
        if (r < 0) {
                ap_profile_free(prof);
                return r;
        }
        *ret = prof;
        return 0;
}
