/* Draining one process image's rings and aggregating its events.  The shared memory is
 * written by an untrusted process: every index, length, type, stack id and module record
 * is copied out and checked before use.  A process that writes garbage spoils only its
 * own profile.  Barrier pairs are described in wire.h.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allocprof/atomics.h"
#include "allocprof/clock.h"
#include "allocprof/ring.h"
#include "allocprof/sampler.h"
#include "process-internal.h"
#include <time.h>

#define TIMELINE_MAX 2048
/* No block can be larger than the biggest user address space (57 bits, with five-level
 * page tables): a record that says so is malformed. */
#define MAX_BLOCK (1ull << 56)
#define RECORD_MAX (sizeof(struct ap_rec_realloc) + 8 * AP_MAX_FRAMES)
/* How long a program runs before the C library's DWARF is warmed anyway. */
#define LIBC_WARM_DELAY_NS (100ull * 1000 * 1000)
/* The largest fixed part of a record: what next_record() copies. */
#define FIXED_MAX sizeof(struct ap_rec_realloc)
_Static_assert(sizeof(struct ap_rec_alloc) <= FIXED_MAX && sizeof(struct ap_rec_free) <= FIXED_MAX &&
                       sizeof(struct ap_rec_alloc_sampled) <= FIXED_MAX,
               "every fixed part fits the copy");

static int fail(char **err, int r, const char *what)
{
        if (err != NULL)
                *err = ap_asprintf("%s", what);
        return r;
}

int ap_process_new(int memfd, pid_t pid, const struct ap_hello *hello, struct ap_process **ret,
                   char **err)
{
        struct stat st;
        int r;

        if (hello->magic != AP_HELLO_MAGIC || hello->layout_version != AP_LAYOUT_VERSION) {
                close(memfd);
                return fail(err, -EPROTO, "agent speaks another wire layout version");
        }
        if (fstat(memfd, &st) < 0) {
                r = -errno;
                close(memfd);
                return fail(err, r, "cannot stat the shared memory");
        }
        uint64_t expect = ap_shm_total_bytes();
        /* Without the shrink seal the writer could truncate the file under our mapping
         * and make every read a SIGBUS. */
        int seals = fcntl(memfd, F_GET_SEALS);
        if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
                close(memfd);
                return fail(err, -EPROTO, "shared memory is not sealed against shrinking");
        }
        if ((uint64_t)st.st_size != expect) {
                close(memfd);
                return fail(err, -EPROTO, "shared memory has an unexpected size");
        }
        /* The head and the tail now, each other slot when the agent has claimed it
         * (map_slots): mapped whole, 2.1 GiB a process would count against an
         * address-space limit (`ulimit -v` applies to run's own collector too). */
        const uint64_t page = (uint64_t)getpagesize();
        const uint64_t head_bytes = ap_shm_head_bytes(page);
        const uint64_t tail_off = ap_shm_tail_off(page);
        void *map = mmap(NULL, head_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        void *tail = map == MAP_FAILED ? MAP_FAILED
                                       : mmap(NULL, expect - tail_off, PROT_READ | PROT_WRITE,
                                              MAP_SHARED, memfd, (off_t)tail_off);
        r = tail == MAP_FAILED ? -errno : 0;
        close(memfd);
        if (r < 0) {
                if (map != MAP_FAILED)
                        munmap(map, head_bytes);
                return fail(err, r, "cannot map the shared memory");
        }
        /* Not in a core dump of ours: mostly zeros. */
        (void)madvise(map, head_bytes, MADV_DONTDUMP);
        (void)madvise(tail, expect - tail_off, MADV_DONTDUMP);

        struct ap_shm_header *h = map;
        /* The layout is fixed for this version: insist on exactly our numbers, so no
         * offset read from the mapping is ever used. */
        if (h->magic != AP_SHM_MAGIC || h->layout_version != AP_LAYOUT_VERSION ||
            h->total_bytes != expect || h->nslots != AP_NSLOTS || h->ring_bytes != AP_RING_BYTES ||
            h->slots_offset != ap_shm_slot_off(0) || h->slot_stride != AP_SLOT_STRIDE ||
            h->stacks_offset != ap_shm_stacks_off() || h->stacks_bytes != AP_STACK_HEAP_BYTES ||
            h->modules_offset != ap_shm_modules_off() || h->modules_bytes != AP_MODULE_LOG_BYTES) {
                munmap(map, head_bytes);
                munmap(tail, expect - tail_off);
                return fail(err, -EPROTO, "shared memory header is invalid");
        }

        struct ap_process *p = calloc(1, sizeof(*p));
        uint8_t *scratch = malloc(FIXED_MAX);
        if (p == NULL || scratch == NULL) {
                free(p);
                free(scratch);
                munmap(map, head_bytes);
                munmap(tail, expect - tail_off);
                return fail(err, -ENOMEM, "is out of memory");
        }
        p->pid = pid;
        p->ppid = hello->ppid;
        p->exec_id = hello->exec_id;
        p->map = map;
        p->map_bytes = head_bytes;
        p->tail = tail;
        p->tail_bytes = expect - tail_off;
        p->tail_off = tail_off;
        p->slots[0].page = (uint8_t *)map + ap_shm_slot_page(0, page);
        p->slots[0].ctl = (struct ap_ring_ctl *)((uint8_t *)map + ap_shm_slot_off(0));
        p->hdr = h;
        p->start_ns = h->start_ns;
        p->start_ticks = h->start_ticks;
        p->same_clock = h->clock_kind == AP_CLOCK_KIND;
        p->start_unix_ns = ap_realtime_ns() - (ap_clock_mono_ns() - h->start_ns);
        p->exit_code = -1;
        p->scratch = scratch;
        p->timeline_step_ns = 10 * 1000 * 1000;
        /* Lets a waiting agent tell a slow collector from a dead one. */
        ap_store_relaxed(&h->xcollector_pid, (uint32_t)getpid());
        *ret = p;
        return 0;
}

void ap_process_free(struct ap_process *p)
{
        if (p == NULL)
                return;
        free(p->stacks);
        free(p->ips);
        ap_map_clear(&p->stack_by_hash);
        ap_map_clear(&p->reused);
        ap_map_clear(&p->tids);
        if (p->stack_of_id != NULL)
                munmap(p->stack_of_id, p->stack_of_id_cells * sizeof(uint32_t));
        for (size_t i = 0; i < p->nmodules; i++)
                free(p->modules[i].path);
        free(p->modules);
        free(p->new_used);
        free(p->new_addrs);
        ap_map_clear(&p->addrs_seen);
        ap_live_clear(&p->live);
        free(p->timeline);
        for (int i = 0; i < p->argc; i++)
                free(p->argv[i]);
        free(p->argv);
        free(p->exe);
        free(p->exec_path);
        free(p->scratch);
        if (p->map != NULL) {
                const uint64_t page = (uint64_t)getpagesize();
                for (uint32_t i = 1; i < AP_NSLOTS; i++)
                        if (p->slots[i].page != NULL)
                                munmap(p->slots[i].page, ap_shm_slot_map_bytes(i, page));
                munmap(p->map, p->map_bytes);
                munmap(p->tail, p->tail_bytes);
        } else {
                free(p->hdr); /* a snapshot's copy of the header */
        }
        free(p);
}

static char *strdup_or_null(const char *s, bool *failed)
{
        char *d = s ? strdup(s) : NULL;
        *failed |= s != NULL && d == NULL;
        return d;
}

struct ap_process *ap_process_snapshot(const struct ap_process *src)
{
        struct ap_process *p = malloc(sizeof(*p));
        struct ap_shm_header *hdr = malloc(sizeof(*hdr));
        if (p == NULL || hdr == NULL) {
                free(p);
                free(hdr);
                return NULL;
        }
        *p = *src;
        /* The header's counters and control fields as they are now; the agent keeps
         * writing to the original. */
        memcpy(hdr, src->hdr, sizeof(*hdr));
        p->hdr = hdr;
        p->map = NULL;
        p->map_bytes = 0;
        p->stack_by_hash = (struct ap_map){0};
        p->reused = (struct ap_map){0};
        p->tids = (struct ap_map){0};
        p->stack_of_id = NULL;
        p->stack_of_id_cells = 0;
        p->live = (struct ap_live_table){0};
        p->new_used = NULL;
        p->nnew_used = p->new_used_cap = 0;
        p->new_addrs = NULL;
        p->nnew_addrs = p->new_addrs_cap = 0;
        p->addrs_seen = (struct ap_map){0};
        p->scratch = NULL;
        p->stacks = NULL;
        p->nstacks = p->stacks_cap = 0;
        p->ips = NULL;
        p->nips = p->ips_cap = 0;
        p->modules = NULL;
        p->nmodules = p->modules_cap = 0;
        p->timeline = NULL;
        p->ntimeline = p->timeline_cap = 0;
        p->argv = NULL;
        p->argc = 0;
        p->exe = NULL;
        p->exec_path = NULL;

        bool failed = false;
        if (src->nstacks > 0) {
                p->stacks = malloc(src->nstacks * sizeof(*p->stacks));
                p->ips = malloc((src->nips ? src->nips : 1) * sizeof(*p->ips));
                if (p->stacks != NULL && p->ips != NULL) {
                        memcpy(p->stacks, src->stacks, src->nstacks * sizeof(*p->stacks));
                        memcpy(p->ips, src->ips, src->nips * sizeof(*p->ips));
                        p->nstacks = p->stacks_cap = src->nstacks;
                        p->nips = p->ips_cap = src->nips;
                } else {
                        failed = true;
                }
        }
        if (!failed && src->nmodules > 0 &&
            (p->modules = calloc(src->nmodules, sizeof(*p->modules))) != NULL) {
                for (size_t i = 0; i < src->nmodules && !failed; i++) {
                        p->modules[i] = src->modules[i];
                        p->modules[i].path = strdup_or_null(src->modules[i].path, &failed);
                        p->nmodules = p->modules_cap = i + 1;
                }
        } else if (src->nmodules > 0) {
                failed = true;
        }
        if (!failed && src->ntimeline > 0) {
                p->timeline = malloc(sizeof(*p->timeline) * src->ntimeline);
                if (p->timeline != NULL) {
                        memcpy(p->timeline, src->timeline, sizeof(*p->timeline) * src->ntimeline);
                        p->ntimeline = p->timeline_cap = src->ntimeline;
                } else {
                        failed = true;
                }
        }
        if (!failed && src->argc > 0) {
                p->argv = calloc((size_t)src->argc + 1, sizeof(char *));
                failed = p->argv == NULL;
                for (int i = 0; i < src->argc && !failed; i++) {
                        p->argv[i] = strdup_or_null(src->argv[i], &failed);
                        p->argc = i + 1;
                }
        }
        if (!failed)
                p->exe = strdup_or_null(src->exe, &failed);
        if (!failed)
                p->exec_path = strdup_or_null(src->exec_path, &failed);
        if (failed) {
                ap_process_free(p);
                return NULL;
        }
        return p;
}

uint32_t ap_process_mode(const struct ap_process *p, uint64_t *sample_interval)
{
        if (sample_interval != NULL)
                *sample_interval = ap_load_relaxed(&p->hdr->xsample_interval);
        return ap_load_relaxed(&p->hdr->xmode);
}

/* Keeps the interval in force among those the profile will say were used. */
static void note_interval(struct ap_process *p)
{
        ap_range_widen(&p->interval_min, &p->interval_max,
                       ap_sampler_interval(ap_load_relaxed(&p->hdr->xsample_interval)));
}

void ap_process_set_mode(struct ap_process *p, uint32_t mode, uint64_t sample_interval)
{
        /* The interval first: an agent thread that sees the new mode then reads an
         * interval that is new or, racing, old; either is a valid mean (sampler.h). */
        if (sample_interval != 0)
                ap_store_relaxed(&p->hdr->xsample_interval, sample_interval);
        ap_store_relaxed(&p->hdr->xmode, mode);
        if (mode == AP_MODE_SAMPLED)
                note_interval(p);
}

char **ap_process_command(const struct ap_process *p, int *argc)
{
        *argc = p->argc;
        return p->argv;
}

/* Threads seen by their rings, or in sampled mode, where most threads never send a
 * record, those the agent counted allocating (the larger). */
uint32_t ap_process_threads(const struct ap_process *p)
{
        uint64_t sampled = ap_load_relaxed(&p->hdr->xcounters[AP_CNT_SAMPLED_THREADS]);
        if (sampled > UINT32_MAX)
                sampled = UINT32_MAX;
        return sampled > p->threads ? (uint32_t)sampled : p->threads;
}

bool ap_process_recorded(const struct ap_process *p)
{
        return p->t.allocations != 0 || p->t.frees != 0 || ap_process_threads(p) != 0 || p->sampled;
}

pid_t ap_process_pid(const struct ap_process *p)
{
        return p->pid;
}

uint64_t ap_process_exec_id(const struct ap_process *p)
{
        return p->exec_id;
}

void ap_process_set_command(struct ap_process *p, char **argv, int argc)
{
        for (int i = 0; i < p->argc; i++)
                free(p->argv[i]);
        free(p->argv);
        p->argv = calloc((size_t)argc + 1, sizeof(char *));
        p->argc = 0;
        if (p->argv == NULL)
                return;
        for (int i = 0; i < argc; i++) {
                p->argv[i] = strdup(argv[i]);
                if (p->argv[i] == NULL)
                        break;
                p->argc = i + 1;
        }
}

void ap_process_mark_ended(struct ap_process *p)
{
        if (p->end_mono_ns == 0)
                p->end_mono_ns = ap_clock_mono_ns();
}

void ap_process_set_exit(struct ap_process *p, int exit_code, int term_signal)
{
        p->exit_code = exit_code;
        p->term_signal = term_signal;
}

int ap_process_set_exec(struct ap_process *p, const char *path, bool profiled)
{
        char *copy = path != NULL ? strdup(path) : NULL;
        free(p->exec_path);
        p->exec_path = copy;
        p->by_exec = true;
        p->exec_profiled = profiled;
        return path != NULL && copy == NULL ? -ENOMEM : 0;
}

bool ap_process_exec_begun(const struct ap_process *p, char *path, size_t path_len)
{
        /* Acquire pairs with the agent's release bump (exec.c): the path written before
         * it is there.  A snapshot's header is a copy: it says what it said then. */
        uint64_t begun = ap_load_acquire(&p->hdr->xcounters[AP_CNT_EXECS]);
        uint64_t failed = ap_load_relaxed(&p->hdr->xcounters[AP_CNT_EXECS_FAILED]);
        if (begun <= failed)
                return false;
        if (path_len == 0)
                return true;
        size_t n = 0;
        const volatile char *src = p->hdr->exec_path; /* the agent may be writing it */
        while (n + 1 < path_len && n < AP_EXEC_PATH_BYTES && src[n] != '\0') {
                unsigned char ch = (unsigned char)src[n];
                path[n++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
        path[n] = '\0';
        return true;
}

void ap_process_take_new_modules(struct ap_process *p,
                                 void (*fn)(void *ud, const char *path, const uint8_t *build_id,
                                            size_t build_id_len),
                                 void *ud)
{
        /* Once the process has a stack: every stack ends in the C library's entry code,
         * which finalizing names from the library's symbol table (indexing libc6-dbg's
         * takes about 1 ms), so a sampled profile needs it too, even when no sample
         * landed inside the library. */
        if (p->libc_module != 0 && p->libc_module <= p->nmodules &&
            !p->modules[p->libc_module - 1].used && ap_clock_mono_ns() >= p->libc_due_ns &&
            p->nstacks > 0 && AP_GROW(p->new_used, p->new_used_cap, p->nnew_used + 1) == 0) {
                p->modules[p->libc_module - 1].used = true;
                p->new_used[p->nnew_used++] = p->libc_module - 1;
        }
        for (size_t i = 0; i < p->nnew_used; i++) {
                const struct ap_cmodule *m = &p->modules[p->new_used[i]];
                fn(ud, m->path, m->build_id, m->build_id_len);
        }
        p->nnew_used = 0;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

void ap_process_take_new_addrs(struct ap_process *p,
                               void (*fn)(void *ud, const char *path, const uint8_t *build_id,
                                          size_t build_id_len, const uint64_t *offsets, size_t n),
                               void *ud)
{
        if (p->nnew_addrs == 0 || fn == NULL) {
                p->nnew_addrs = 0; /* nobody to symbolize them early */
                return;
        }
        /* By module, and within one in address order (the symbolizer's walk over a unit's
         * functions then goes one way); each module's run handed over at once. */
        qsort(p->new_addrs, p->nnew_addrs, sizeof(*p->new_addrs), cmp_u64);
        for (size_t i = 0, j; i < p->nnew_addrs; i = j) {
                uint64_t m = p->new_addrs[i] >> 48;
                for (j = i; j < p->nnew_addrs && p->new_addrs[j] >> 48 == m; j++)
                        p->new_addrs[j] &= (1ull << 48) - 1;
                const struct ap_cmodule *cm = &p->modules[m];
                fn(ud, cm->path, cm->build_id, cm->build_id_len, p->new_addrs + i, j - i);
        }
        p->nnew_addrs = 0;
}

uint32_t ap_process_module_at(const struct ap_process *p, uint64_t ip)
{
        uint32_t best = UINT32_MAX;
        for (size_t i = p->nmodules; i-- > 0;) {
                const struct ap_cmodule *m = &p->modules[i];
                if (ip < m->lo || ip >= m->hi)
                        continue;
                if (m->unload_ts == 0)
                        return (uint32_t)i;
                if (best == UINT32_MAX)
                        best = (uint32_t)i;
        }
        return best;
}

uint64_t ap_process_backlog(const struct ap_process *p)
{
        return p->backlog;
}

void ap_process_stats(const struct ap_process *p, uint64_t *allocations, uint64_t *live_bytes)
{
        *allocations = (p->t.allocations + AP_CW / 2) / AP_CW;
        *live_bytes = p->t.live_bytes;
}

/* ---- modules ------------------------------------------------------------------------- */

static void read_modules(struct ap_process *p)
{
        struct ap_shm_header *h = p->hdr;
        /* Acquire pairs with the agent's release after writing each record. */
        uint64_t used = ap_load_acquire(&h->xmodules_used);
        if (used > AP_MODULE_LOG_BYTES)
                used = AP_MODULE_LOG_BYTES;
        /* Our layout's offset, which ap_process_new insisted the header had: read from the
         * header here, it was the process's to change after it registered, and the drain
         * read wherever it pointed. */
        const uint8_t *log = p->tail + (ap_shm_modules_off() - p->tail_off);
        struct ap_module_rec m;

        while (p->modules_read + sizeof(m) <= used) {
                memcpy(&m, log + p->modules_read, sizeof(m));
                if (m.nbytes < sizeof(m) || m.nbytes % 8 != 0 ||
                    m.nbytes > used - p->modules_read || m.path_len > m.nbytes - sizeof(m) ||
                    m.build_id_len > AP_MAX_BUILD_ID || m.lo > m.hi) {
                        p->t.invalid_records++;
                        p->modules_read = UINT64_MAX / 2; /* stop reading a corrupt log */
                        return;
                }
                const uint8_t *path = log + p->modules_read + sizeof(m);
                p->modules_read += m.nbytes;
                if (m.kind == AP_MOD_LOAD) {
                        if (AP_GROW(p->modules, p->modules_cap, p->nmodules + 1) < 0)
                                return;
                        struct ap_cmodule *cm = &p->modules[p->nmodules];
                        memset(cm, 0, sizeof(*cm));
                        cm->path = strndup((const char *)path, m.path_len);
                        if (cm->path == NULL)
                                return;
                        /* A path with NULs in it is cut at the first one, harmlessly. */
                        memcpy(cm->build_id, m.build_id, m.build_id_len);
                        cm->build_id_len = m.build_id_len;
                        cm->bias = m.bias;
                        cm->lo = m.lo;
                        cm->hi = m.hi;
                        cm->load_ts = m.ts;
                        p->nmodules++;
                        /* It may cover the range of an unloaded one: search anew. */
                        p->last_module = SIZE_MAX;
                        /* The C library allocates for the program itself (stdio buffers,
                         * directory streams, locale data...): nearly every profile has a
                         * site inside it, whose file and line need its DWARF (tens of ms
                         * to load when its debug symbols are installed).  A program that
                         * runs a while gets it warmed while it runs (see
                         * ap_process_take_new_modules); a short one does not pay for it
                         * unless one of its sites needs it. */
                        if (strncmp(ap_path_base(cm->path), "libc.so.", 8) == 0 &&
                            p->libc_module == 0) {
                                p->libc_module = (uint32_t)p->nmodules;
                                p->libc_due_ns = ap_clock_mono_ns() + LIBC_WARM_DELAY_NS;
                        }
                } else if (m.kind == AP_MOD_UNLOAD) {
                        for (size_t i = p->nmodules; i-- > 0;) {
                                struct ap_cmodule *cm = &p->modules[i];
                                if (cm->unload_ts == 0 && cm->lo == m.lo && cm->hi == m.hi) {
                                        cm->unload_ts = m.ts ? m.ts : 1;
                                        break;
                                }
                        }
                } else {
                        p->t.invalid_records++;
                }
        }
}

/* ---- stacks -------------------------------------------------------------------------- */

static uint32_t stack_intern_ips(struct ap_process *p, const uint64_t *ips, uint32_t depth)
{
        uint64_t hash = ap_hash_bytes(ips, 8ull * depth);
        uint64_t key = hash;
        for (int k = 0; k < 64; k++, key = ap_mix64(hash + (uint64_t)k + 1)) {
                uint64_t *v = ap_map_get(&p->stack_by_hash, key ? key : 1);
                if (v == NULL)
                        break;
                struct ap_cstack *s = &p->stacks[*v - 1];
                if (s->depth == depth && memcmp(ap_cstack_ips(p, s), ips, 8ull * depth) == 0)
                        return (uint32_t)(*v - 1);
        }
        if (AP_GROW(p->stacks, p->stacks_cap, p->nstacks + 1) < 0 ||
            AP_GROW(p->ips, p->ips_cap, p->nips + depth) < 0)
                return UINT32_MAX;
        struct ap_cstack *s = &p->stacks[p->nstacks];
        memset(s, 0, sizeof(*s));
        s->ips_at = p->nips;
        memcpy(p->ips + p->nips, ips, 8ull * depth);
        s->depth = depth;
        s->hash = hash;
        /* A new stack: note the modules it runs through (a few compares per frame, once
         * per unique stack), and its return addresses, for symbolizing while the program
         * runs.  The last three frames are the C library's program or thread entry code,
         * which finalize.c names from the symbol table alone: they do not make the
         * library's DWARF worth loading (the innermost frame always does).  Frames the
         * stack shares, from the outermost in, with the stack interned before were noted
         * with it. */
        const struct ap_cstack *prev = p->nstacks > 0 ? &p->stacks[p->nstacks - 1] : NULL;
        uint32_t shared = 0;
        const uint64_t *prev_ips = prev != NULL ? ap_cstack_ips(p, prev) : NULL;
        while (prev != NULL && shared < depth && shared < prev->depth &&
               ips[depth - 1 - shared] == prev_ips[prev->depth - 1 - shared])
                shared++;
        for (uint32_t d = 0; d + shared < depth; d++) {
                if (d > 0 && d + 3 >= depth)
                        continue;
                /* Neighbouring frames are mostly in one module: the last one found first
                 * (on cc1 the search took a quarter of the time spent interning). */
                size_t m = p->last_module;
                if (m >= p->nmodules || ips[d] < p->modules[m].lo || ips[d] >= p->modules[m].hi) {
                        uint32_t found = ap_process_module_at(p, ips[d]);
                        if (found == UINT32_MAX)
                                continue;
                        p->last_module = m = found;
                }
                struct ap_cmodule *cm = &p->modules[m];
                if (!cm->used && AP_GROW(p->new_used, p->new_used_cap, p->nnew_used + 1) == 0) {
                        cm->used = true;
                        p->new_used[p->nnew_used++] = (uint32_t)m;
                }
                uint64_t off = ips[d] - cm->bias;
                if (m < (1u << 15) && off < (1ull << 48)) {
                        uint64_t a = (uint64_t)m << 48 | off, akey = ap_mix64(a) | 1;
                        if (ap_map_get(&p->addrs_seen, akey) == NULL &&
                            ap_map_put(&p->addrs_seen, akey, 1) == 0 &&
                            AP_GROW(p->new_addrs, p->new_addrs_cap, p->nnew_addrs + 1) == 0)
                                p->new_addrs[p->nnew_addrs++] = a;
                }
        }
        if (ap_map_put(&p->stack_by_hash, key ? key : 1, p->nstacks + 1) < 0)
                return UINT32_MAX; /* its addresses are overwritten by the next stack's */
        p->nips += depth;
        return (uint32_t)p->nstacks++;
}

/* The id -> stack table, with a cell for id (< ID_LIMIT): mapped on first use, grown
 * (doubled, new cells zero) when an id beyond it comes.  NULL if it cannot be. */
static uint32_t *stack_of_id(struct ap_process *p, uint32_t id)
{
        if (id < p->stack_of_id_cells)
                return p->stack_of_id;
        size_t cells = p->stack_of_id_cells ? p->stack_of_id_cells : 16384; /* 64 KiB */
        while (cells <= id && cells < ID_LIMIT)
                cells *= 2;
        if (cells <= id)
                return NULL;
        void *m = p->stack_of_id == NULL
                          ? mmap(NULL, cells * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                          : mremap(p->stack_of_id, p->stack_of_id_cells * sizeof(uint32_t),
                                   cells * sizeof(uint32_t), MREMAP_MAYMOVE);
        if (m == MAP_FAILED)
                return NULL;
        p->stack_of_id = m;
        p->stack_of_id_cells = cells;
        return m;
}

/* Resolves a record's stack reference.  Returns the stack index or UINT32_MAX when the
 * reference is invalid. */
/* rec: the record in the ring (its inline stack, if any, follows the fixed part; the
 * writer may still change those bytes, which only changes which addresses we see). */
static uint32_t stack_resolve(struct ap_process *p, const struct ap_rec_hdr *rh, const uint8_t *rec,
                              uint32_t fixed)
{
        if (rh->flags & AP_RECF_INLINE_STACK) {
                uint32_t depth = rh->aux;
                if (depth == 0 || depth > AP_MAX_FRAMES ||
                    (uint32_t)rh->nwords * 8 != fixed + 8 * depth)
                        return UINT32_MAX;
                uint64_t ips[AP_MAX_FRAMES];
                memcpy(ips, rec + fixed, 8ull * depth);
                return stack_intern_ips(p, ips, depth);
        }
        if ((uint32_t)rh->nwords * 8 != fixed)
                return UINT32_MAX;
        uint32_t id = rh->aux;
        uint64_t off = (uint64_t)id * 8;
        struct ap_stack_entry e;
        if (id == 0 || off + sizeof(e) > AP_STACK_HEAP_BYTES)
                return UINT32_MAX;
        uint32_t *table = stack_of_id(p, id);
        if (table == NULL)
                return UINT32_MAX;
        if (table[id] != 0)
                return table[id] - 1;
        const uint8_t *base =
                p->tail + (ap_shm_stacks_off() - p->tail_off); /* as in read_modules */
        memcpy(&e, base + off, sizeof(e));
        if (e.depth == 0 || e.depth > AP_MAX_FRAMES ||
            off + sizeof(e) + 8ull * e.depth > AP_STACK_HEAP_BYTES)
                return UINT32_MAX;
        uint64_t ips[AP_MAX_FRAMES];
        memcpy(ips, base + off + sizeof(e), 8ull * e.depth);
        uint32_t s = stack_intern_ips(p, ips, e.depth);
        if (s != UINT32_MAX)
                table[id] = s + 1;
        return s;
}

/* ---- live blocks and accounting ---------------------------------------------------- */

/* The histogram bucket of a size: bucket i holds [2^(i-1), 2^i), the last one every size
 * from 2^62 up.  A size of 2^63 or more (which no allocation that succeeded can have, but
 * a record can say) once indexed one past the end, over the process's own fields. */
static unsigned hist_bucket(uint64_t size)
{
        unsigned b = size == 0 ? 0 : (unsigned)(64 - __builtin_clzll(size));
        return b < AP_HIST_BUCKETS ? b : AP_HIST_BUCKETS - 1;
}

/* The site's live bytes are about to change: remember what they were at the last peak. */
static inline void peak_touch(struct ap_process *p, struct ap_cstack *s)
{
        if (s->peak_epoch != p->peak_epoch) {
                s->peak_bytes = s->live_bytes;
                s->peak_epoch = p->peak_epoch;
        }
}

static void timeline_point(struct ap_process *p, uint64_t ts)
{
        if (ts < p->timeline_next_ticks)
                return; /* the common case, decided without converting ts */
        uint64_t t = ap_process_ticks_to_ns(p, ts);
        if (t < p->timeline_next_ns && p->ntimeline > 0)
                return;
        if (p->ntimeline == TIMELINE_MAX) {
                /* Halve the resolution: keep every other point. */
                for (size_t i = 0; i < TIMELINE_MAX / 2; i++)
                        p->timeline[i] = p->timeline[2 * i];
                p->ntimeline = TIMELINE_MAX / 2;
                p->timeline_step_ns *= 2;
        }
        if (AP_GROW(p->timeline, p->timeline_cap, p->ntimeline + 1) < 0)
                return;
        p->timeline[p->ntimeline++] =
                (struct ap_ptimepoint){.t_ns = t,
                                       .live_bytes = p->t.live_bytes,
                                       .allocations = (p->t.allocations + AP_CW / 2) / AP_CW};
        p->timeline_next_ns = t + p->timeline_step_ns;
        /* The tick count of timeline_next_ns, less a millionth, so that rounding can
         * only send a record on to the exact test above, never past a point. */
        double ticks = (double)p->timeline_next_ns / p->ns_per_tick * (1.0 - 1e-6);
        p->timeline_next_ticks = ticks < 1e19 ? p->start_ticks + (uint64_t)ticks : 0;
}

/* Accounts for the end of a live block (its entry is about to be removed). */
static void block_gone(struct ap_process *p, const struct ap_live *l, bool temporary)
{
        struct ap_cstack *s = &p->stacks[l->stack];
        peak_touch(p, s);
        s->frees += l->wcount;
        s->freed_bytes += l->wbytes;
        s->live_blocks -= l->wcount;
        s->live_bytes -= l->wbytes;
        if (temporary) {
                s->temporary += l->wcount;
                p->t.temporary += l->wcount;
        }
        p->t.frees += l->wcount;
        p->t.freed_bytes += l->wbytes;
        p->t.live_blocks -= l->wcount;
        p->t.live_bytes -= l->wbytes;
}

/* temporary: 1 or 0 when the record says (sampled mode), -1 to tell from the thread's
 * last allocation (full mode: a block freed before its thread allocated again). */
static void do_free(struct ap_process *p, struct ap_slot *slot, uint64_t addr, uint64_t ts,
                    int temporary)
{
        struct ap_live_cell *c = ap_live_find(&p->live, addr);
        if (c == NULL) {
                p->t.unmatched_frees++;
                return;
        }
        struct ap_live l;
        ap_live_get(&p->live, c, &l);
        if ((l.flags & AP_LIVE_REUSED) != 0) {
                /* The first free since the address was handed out again while we still
                 * had it live (see do_alloc): if it was stamped before that allocation,
                 * it is the late free of the earlier block, whose end we already
                 * inferred.  Either way, later frees are this block's own. */
                (void)ap_live_set_flags(&p->live, c, l.flags & ~AP_LIVE_REUSED);
                uint64_t *since = ap_map_get(&p->reused, addr);
                bool stale = since != NULL && ts < *since;
                ap_map_del(&p->reused, addr);
                if (stale) {
                        p->t.stale_frees++;
                        return;
                }
        }
        block_gone(p, &l, temporary < 0 ? slot->last_alloc == addr : temporary > 0);
        ap_live_remove(&p->live, c);
        /* Frees of other blocks leave it: a block is temporary if its thread allocated
         * nothing else before freeing it (USAGE.md), whatever it freed meanwhile. */
        if (slot->last_alloc == addr)
                slot->last_alloc = 0;
}

_Static_assert(AP_CW == AP_LIVE_ONE, "the live table's unit of allocations is the process's");

/* A new block at addr from `stack`, standing for wcount/AP_CW allocations of wbytes bytes
 * (exactly 1 and its size in full mode; estimates in sampled mode). */
static void do_alloc(struct ap_process *p, struct ap_slot *slot, uint32_t stack, uint64_t addr,
                     uint64_t size, uint64_t wbytes, uint64_t wcount, uint64_t ts, bool realloc)
{
        struct ap_cstack *s = &p->stacks[stack];
        struct ap_live old;
        int r = ap_live_insert(
                &p->live,
                &(struct ap_live){.addr = addr, .wbytes = wbytes, .wcount = wcount, .stack = stack},
                &old);
        if (r < 0)
                return;
        if (r > 0) {
                /* The address is live in our books, so its free is still in another
                 * thread's ring: account for that free now; the late record is stale. */
                p->t.conflicts++;
                block_gone(p, &old, false);
                /* Remember when the new block came, for the late free of the block
                 * before it (without memory for that, the late free will end this block
                 * instead, as if it had not been marked). */
                struct ap_live_cell *c = ap_live_find(&p->live, addr);
                if (c != NULL && ap_map_put(&p->reused, addr, ts) == 0 &&
                    ap_live_set_flags(&p->live, c, AP_LIVE_REUSED) < 0)
                        ap_map_del(&p->reused, addr);
        }

        peak_touch(p, s);
        s->allocations += wcount;
        s->bytes += wbytes;
        s->live_blocks += wcount;
        s->live_bytes += wbytes;
        if (s->live_bytes > s->max_live_bytes)
                s->max_live_bytes = s->live_bytes;
        if (realloc) {
                s->reallocs += wcount;
                p->t.reallocs += wcount;
        }
        p->t.allocations += wcount;
        p->t.bytes += wbytes;
        p->t.live_blocks += wcount;
        p->t.live_bytes += wbytes;
        unsigned b = hist_bucket(size);
        p->hist_count[b] += wcount;
        p->hist_bytes[b] += wbytes;
        if (p->t.live_bytes > p->t.peak_bytes) {
                /* New global peak: every site's current live bytes are its share of it;
                 * sites record that lazily before they next change (peak_touch). */
                p->t.peak_bytes = p->t.live_bytes;
                p->t.peak_blocks = p->t.live_blocks;
                p->t.peak_ts = ts;
                p->t.peak_allocations = p->t.allocations;
                p->peak_epoch++;
        }
        slot->last_alloc = addr;
        timeline_point(p, ts);
}

/* ---- drain --------------------------------------------------------------------------- */

static inline struct ap_ring_ctl *slot_ctl(struct ap_process *p, uint32_t i)
{
        return p->slots[i].ctl;
}

/* Maps the slots below hwm that are not yet (from the nearest one below that is, as the
 * agent does: ring.h).  A slot that cannot be mapped now (our own address-space limit,
 * which `ulimit -v` sets for run's collector too) is tried again next round: its records
 * wait in the ring, and if it stays full the agent drops them and counts them. */
static void map_slots(struct ap_process *p, uint32_t hwm)
{
        const uint64_t page = (uint64_t)getpagesize();
        for (uint32_t i = 1; i < hwm; i++) {
                struct ap_slot *sl = &p->slots[i];
                if (sl->ctl != NULL || sl->bad)
                        continue;
                uint32_t j = i - 1;
                while (j > 0 && p->slots[j].page == NULL)
                        j--;
                uint64_t off = ap_shm_slot_page(i, page);
                uint8_t *m = ap_shm_map_more(p->slots[j].page, ap_shm_slot_page(j, page), off,
                                             ap_shm_slot_map_bytes(i, page));
                if (m == NULL)
                        return; /* again next round (one failed mremap a round at most) */
                (void)madvise(m, ap_shm_slot_map_bytes(i, page), MADV_DONTDUMP);
                sl->page = m;
                sl->ctl = (struct ap_ring_ctl *)(m + (ap_shm_slot_off(i) - off));
        }
}

/* Copies the next record of slot i into p->scratch and validates its framing.  Returns
 * its length in bytes, 0 if the slot has nothing left this round, -1 if corrupt. */
static long next_record(struct ap_process *p, uint32_t i, uint64_t *ts)
{
        struct ap_slot *sl = &p->slots[i];
        for (;;) {
                uint64_t avail = sl->snap_head - sl->tail;
                if (avail == 0)
                        return 0;
                const uint8_t *data = (const uint8_t *)(slot_ctl(p, i) + 1);
                uint64_t off = sl->tail & (AP_RING_BYTES - 1);
                struct ap_rec_hdr rh;
                if (avail < sizeof(rh))
                        return -1;
                memcpy(&rh, data + off, sizeof(rh));
                uint64_t len = (uint64_t)rh.nwords * 8;
                if (len == 0 || len > avail || off + len > AP_RING_BYTES)
                        return -1;
                if (rh.type == AP_REC_PAD) {
                        sl->tail += len;
                        continue;
                }
                if (len > RECORD_MAX)
                        return -1;
                /* The fixed part only (at most FIXED_MAX bytes, a constant-size copy in
                 * the common case); an inline stack is read from the ring later. */
                if (off + FIXED_MAX <= AP_RING_BYTES)
                        memcpy(p->scratch, data + off, FIXED_MAX); /* bytes past len unused */
                else
                        memcpy(p->scratch, data + off, len < FIXED_MAX ? len : FIXED_MAX);
                /* Re-check the header from our private copy: the writer may change the
                 * shared bytes under us. */
                memcpy(&rh, p->scratch, sizeof(rh));
                if ((uint64_t)rh.nwords * 8 != len)
                        return -1;
                switch (rh.type) {
                case AP_REC_ALLOC:
                        if (len < sizeof(struct ap_rec_alloc))
                                return -1;
                        *ts = ((struct ap_rec_alloc *)p->scratch)->ts;
                        break;
                case AP_REC_FREE:
                        if (len != sizeof(struct ap_rec_free))
                                return -1;
                        *ts = ((struct ap_rec_free *)p->scratch)->ts;
                        break;
                case AP_REC_REALLOC:
                        if (len < sizeof(struct ap_rec_realloc))
                                return -1;
                        *ts = ((struct ap_rec_realloc *)p->scratch)->ts;
                        break;
                case AP_REC_ALLOC_SAMPLED:
                        if (len < sizeof(struct ap_rec_alloc_sampled))
                                return -1;
                        *ts = ((struct ap_rec_alloc_sampled *)p->scratch)->ts;
                        break;
                default:
                        return -1;
                }
                return (long)len;
        }
}

/* How far ahead of the record being processed the live-table cells of coming records are
 * prefetched, in ring bytes: about five records while the table fits the caches, twenty
 * once it is larger than half the last-level cache (32 MiB here), where each cell comes
 * from memory.  By the collector's own drain-time measure, twenty records ahead against
 * five (medians of 5-8 interleaved runs): jq holding 1.65 M blocks (a 64 MiB table) 171
 * against 201 ms, perl holding 1.6 M 176 against 200; always twenty cost the small tables
 * 1-4% (the churn, sqlite3, cc1), where five drained 5-10% faster than ten on the churn
 * when first tuned. */
#define PREFETCH_NEAR 160
#define PREFETCH_FAR 640
#define PREFETCH_FAR_TABLE (16u << 20) /* bytes of live table from which to look far */

/* Prefetches the live cells of slot i's records up to `ahead` bytes past its tail.  It
 * reads the shared ring without validation: what it finds is only a hint for the cache
 * (an address from a hostile writer prefetches some cell of our own table, nothing
 * else), and a header that makes no sense ends the look-ahead for this round. */
static void prefetch_ahead(struct ap_process *p, uint32_t i, uint64_t ahead)
{
        struct ap_slot *sl = &p->slots[i];
        const uint8_t *data = (const uint8_t *)(slot_ctl(p, i) + 1);
        if (sl->pf < sl->tail)
                sl->pf = sl->tail;
        while (sl->pf < sl->snap_head && sl->pf - sl->tail < ahead) {
                uint64_t off = sl->pf & (AP_RING_BYTES - 1);
                /* The ring's own lines come from the writer's cache: ask for them well
                 * before the look-ahead reads them. */
                if ((off & 63) < 32)
                        __builtin_prefetch(data + ((off + 8 * 64) & (AP_RING_BYTES - 1)));
                struct ap_rec_hdr rh;
                memcpy(&rh, data + off, sizeof(rh));
                uint64_t len = (uint64_t)rh.nwords * 8;
                if (len < 24 || off + len > AP_RING_BYTES || len > sl->snap_head - sl->pf) {
                        sl->pf = sl->snap_head;
                        break;
                }
                /* addr of ALLOC, FREE, ALLOC_SAMPLED; old_addr of REALLOC */
                uint64_t a, at = rh.type == AP_REC_REALLOC ? 24 : 16;
                if (rh.type != AP_REC_PAD && at + sizeof(a) <= len) {
                        memcpy(&a, data + off + at, sizeof(a));
                        ap_live_prefetch(&p->live, a);
                }
                /* and the id-table cell of an allocation's stack */
                if (rh.type != AP_REC_FREE && rh.type != AP_REC_PAD &&
                    !(rh.flags & AP_RECF_INLINE_STACK) && rh.aux < p->stack_of_id_cells)
                        __builtin_prefetch(&p->stack_of_id[rh.aux]);
                sl->pf += len;
        }
}

static void process_record(struct ap_process *p, struct ap_slot *slot, const uint8_t *ring_rec)
{
        struct ap_rec_hdr rh;
        memcpy(&rh, p->scratch, sizeof(rh));
        uint32_t stack;

        switch (rh.type) {
        case AP_REC_ALLOC: {
                struct ap_rec_alloc r;
                memcpy(&r, p->scratch, sizeof(r));
                stack = stack_resolve(p, &rh, ring_rec, sizeof(r));
                if (stack == UINT32_MAX || r.addr == 0 || r.size > MAX_BLOCK) {
                        p->t.invalid_records++;
                        return;
                }
                do_alloc(p, slot, stack, r.addr, r.size, r.size, AP_CW, r.ts, false);
                break;
        }
        case AP_REC_ALLOC_SAMPLED: {
                struct ap_rec_alloc_sampled r;
                memcpy(&r, p->scratch, sizeof(r));
                stack = stack_resolve(p, &rh, ring_rec, sizeof(r));
                if (stack == UINT32_MAX || r.addr == 0 || r.weight == 0 ||
                    r.weight > (1ull << 48) || r.size > MAX_BLOCK) {
                        p->t.invalid_records++;
                        return;
                }
                /* weight / size allocations, in AP_CW units.  A zero-size block took
                 * one byte of the stream (ap_sampler_stream_size): weight allocations
                 * of no bytes. */
                unsigned __int128 wc = (unsigned __int128)r.weight * AP_CW / (r.size ? r.size : 1);
                uint64_t wcount = wc > (1ull << 60) ? (1ull << 60) : (uint64_t)wc;
                p->sampled = true;
                do_alloc(p, slot, stack, r.addr, r.size, r.size ? r.weight : 0, wcount ? wcount : 1,
                         r.ts, (rh.flags & AP_RECF_REALLOC) != 0);
                break;
        }
        case AP_REC_FREE: {
                struct ap_rec_free r;
                memcpy(&r, p->scratch, sizeof(r));
                do_free(p, slot, r.addr, r.ts,
                        (rh.flags & AP_RECF_SAMPLED_FREE) ? (rh.flags & AP_RECF_TEMPORARY) != 0
                                                          : -1);
                break;
        }
        case AP_REC_REALLOC: {
                struct ap_rec_realloc r;
                memcpy(&r, p->scratch, sizeof(r));
                stack = stack_resolve(p, &rh, ring_rec, sizeof(r));
                if (stack == UINT32_MAX || r.new_addr == 0 || r.size > MAX_BLOCK) {
                        p->t.invalid_records++;
                        return;
                }
                do_free(p, slot, r.old_addr, r.ts_free, 0);
                do_alloc(p, slot, stack, r.new_addr, r.size, r.size, AP_CW, r.ts, true);
                break;
        }
        }
        if (p->last_ts < ((struct ap_rec_free *)p->scratch)->ts)
                p->last_ts = ((struct ap_rec_free *)p->scratch)->ts;
}

static uint64_t thread_cpu_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* How long a record must have been published before a non-final drain takes it. */
#define SETTLE_NS 200000
#define TAIL_STEP (64u << 10) /* power of two, well below AP_RING_BYTES */

void ap_process_calibrate(struct ap_process *p)
{
        if (p->ns_per_tick == 0)
                p->ns_per_tick = p->same_clock ? ap_ns_per_tick() : 1.0;
}

long ap_process_drain(struct ap_process *p, bool final)
{
        struct ap_shm_header *h = p->hdr;
        ap_process_calibrate(p);
        /* A process in sampled mode has estimates, sampled or not yet (the label only;
         * a process that writes another mode there mislabels its own profile). */
        if (ap_load_relaxed(&h->xmode) == AP_MODE_SAMPLED) {
                p->sampled = true;
                note_interval(p);
        }
        /* 1. Snapshot every ring's head.  Acquire pairs with the agent's release of xhead
         *    (B->C in wire.h): the records below the head are complete.  The slot count
         *    is read again afterwards: a thread that claimed a slot before another
         *    thread published something we saw must not be missed (acquire pairs with
         *    the claimer's release of xslot_hwm). */
        uint32_t active[AP_NSLOTS];
        uint32_t nactive = 0;
        uint32_t done = 0, hwm;
        uint64_t backlog = 0;
        while ((hwm = ap_load_acquire(&h->xslot_hwm)) > done && done < AP_NSLOTS) {
                if (hwm > AP_NSLOTS)
                        hwm = AP_NSLOTS;
                map_slots(p, hwm);
                for (uint32_t i = done; i < hwm; i++) {
                        struct ap_slot *sl = &p->slots[i];
                        if (sl->bad || sl->ctl == NULL) /* not mapped yet: map_slots */
                                continue;
                        uint64_t head = ap_load_acquire(&slot_ctl(p, i)->xhead);
                        if (head - sl->tail > AP_RING_BYTES) {
                                /* Head moved backwards or past our tail + size: not a
                                 * ring any more.  Ignore this slot from now on. */
                                sl->bad = true;
                                p->t.invalid_records++;
                                continue;
                        }
                        sl->snap_head = head;
                        if (head - sl->tail > backlog)
                                backlog = head - sl->tail;
                        if (head != sl->tail) {
                                /* Slots are reused: count owners by their thread id. */
                                uint32_t tid = slot_ctl(p, i)->tid;
                                if (!sl->seen || tid != sl->tid) {
                                        sl->seen = true;
                                        sl->tid = tid;
                                        if (ap_map_get(&p->tids, (uint64_t)tid + 1) == NULL) {
                                                (void)ap_map_put(&p->tids, (uint64_t)tid + 1, 1);
                                                p->threads++;
                                        }
                                }
                                active[nactive++] = i;
                        }
                }
                done = hwm;
        }
        hwm = done;
        p->backlog = backlog;
        /* For the round (a table that grows during it is only looked at from the next). */
        const uint64_t ahead = p->live.cap * sizeof(struct ap_live_cell) >= PREFETCH_FAR_TABLE
                                       ? PREFETCH_FAR
                                       : PREFETCH_NEAR;

        uint64_t watermark = UINT64_MAX;
        /* The settling time lets records of other threads that were stamped earlier but
         * published later be merged in order.  It also keeps the reader a couple of
         * thousand records behind each writer: reading the lines a writer is still
         * filling would pull them away from it on every record (measured: twice as
         * slow). */
        if (final) {
                /* A slot we never could map: whatever it held is lost, counted once. */
                for (uint32_t i = 1; i < hwm; i++)
                        if (p->slots[i].ctl == NULL && !p->slots[i].bad) {
                                p->slots[i].bad = true;
                                p->t.invalid_records++;
                        }
        } else {
                uint64_t now = p->same_clock ? ap_clock_ticks() : ap_clock_mono_ns();
                uint64_t settle = (uint64_t)(SETTLE_NS / p->ns_per_tick);
                watermark = now > settle ? now - settle : 0;
        }

        /* 2. Modules after heads: every module a published stack names is in the log. */
        read_modules(p);

        /* What the drains that find records cost, on this thread's CPU clock (a system
         * call; rounds that find nothing skip it). */
        const bool timed = nactive > 0;
        const uint64_t cpu0 = timed ? thread_cpu_ns() : 0;

        /* 3. Merge the rings by timestamp so cross-thread free/alloc pairs of the same
         *    address and the peak come out in the order they happened. */
        uint64_t cur_ts[AP_NSLOTS];
        long cur_len[AP_NSLOTS];
        uint32_t n = 0;
        for (uint32_t k = 0; k < nactive; k++) {
                uint32_t i = active[k];
                long len = next_record(p, i, &cur_ts[i]);
                if (len < 0) {
                        p->slots[i].bad = true;
                        p->t.invalid_records++;
                        continue;
                }
                if (len > 0) {
                        cur_len[i] = len;
                        active[n++] = i;
                }
        }
        nactive = n;
        long processed = 0;
        /* scratch holds one record: the one next_record() copied last, of slot_in_scratch. */
        uint32_t slot_in_scratch = nactive > 0 ? active[nactive - 1] : UINT32_MAX;
        while (nactive > 0) {
                /* The ring with the oldest record, and the oldest record of the others:
                 * the ring's records older than that come next, one run of them without
                 * looking at the other rings again (runs are short when threads share
                 * cores finely: 3 to 4 records in the 4-thread churn on two cores).  A
                 * tie ends the run, and the scan decides as it always has: the first of
                 * the tied rings in active[]. */
                uint32_t best = 0;
                uint64_t bound = UINT64_MAX;
                for (uint32_t k = 1; k < nactive; k++) {
                        uint64_t ts = cur_ts[active[k]];
                        if (ts < cur_ts[active[best]]) {
                                bound = cur_ts[active[best]];
                                best = k;
                        } else if (ts < bound) {
                                bound = ts;
                        }
                }
                uint32_t i = active[best];
                struct ap_slot *sl = &p->slots[i];
                if (cur_ts[i] > watermark)
                        break; /* every remaining record is younger: next round */
                if (slot_in_scratch != i) {
                        long len = next_record(p, i, &cur_ts[i]);
                        slot_in_scratch = i;
                        if (len <= 0) {
                                /* The writer changed bytes we had already looked at. */
                                sl->bad = true;
                                p->t.invalid_records++;
                                active[best] = active[--nactive];
                                continue;
                        }
                        cur_len[i] = len;
                }
                for (;;) {
                        prefetch_ahead(p, i, ahead);
                        process_record(p, sl,
                                       (const uint8_t *)(slot_ctl(p, i) + 1) +
                                               (sl->tail & (AP_RING_BYTES - 1)));
                        processed++;
                        sl->tail += (uint64_t)cur_len[i];
                        /* Give space back every TAIL_STEP bytes, not only at the end of
                         * the round: a writer that found its ring full then waits for
                         * that much, not for the whole round (measured on the C++ bench:
                         * its waits took 210 ms of a 1.2 s run, 110 ms with this).
                         * Release as in step 4 (D->A). */
                        if (((sl->tail - (uint64_t)cur_len[i]) ^ sl->tail) >= TAIL_STEP)
                                ap_store_release(&slot_ctl(p, i)->xtail, sl->tail);
                        long len = next_record(p, i, &cur_ts[i]);
                        if (len <= 0) {
                                if (len < 0) {
                                        sl->bad = true;
                                        p->t.invalid_records++;
                                }
                                active[best] = active[--nactive];
                                break;
                        }
                        cur_len[i] = len;
                        if (cur_ts[i] >= bound || cur_ts[i] > watermark)
                                break;
                }
        }

        /* 4. Give the space back and recycle slots of threads that have exited. */
        for (uint32_t i = 0; i < hwm; i++) {
                struct ap_slot *sl = &p->slots[i];
                struct ap_ring_ctl *ctl = slot_ctl(p, i);
                if (sl->bad || ctl == NULL)
                        continue;
                /* Release pairs with the agent's acquire of xtail (D->A): we are done
                 * reading the space below our tail. */
                if (ap_load_relaxed(&ctl->xtail) != sl->tail)
                        ap_store_release(&ctl->xtail, sl->tail);
                if (ap_load_acquire(&ctl->xstate) == AP_SLOT_RETIRED &&
                    ap_load_acquire(&ctl->xhead) == sl->tail) {
                        sl->last_alloc = 0;
                        /* Rewind the empty ring while no one owns it, so that its next
                         * owner writes from the start again: a program that starts many
                         * short threads then touches the first pages of each slot, not,
                         * owner after owner, all 2 MiB (26 MB of shared memory for
                         * 20,000 threads 16 at a time, 620 MB when the slots in use
                         * climbed to 470).  Relaxed: the release below publishes them. */
                        if (sl->tail != 0) {
                                ap_store_relaxed(&ctl->xhead, 0);
                                ap_store_relaxed(&ctl->xtail, 0);
                                sl->tail = sl->snap_head = sl->pf = 0;
                        }
                        /* Release pairs with the claiming thread's CAS (acquire): it
                         * sees the rewound head and tail. */
                        ap_store_release(&ctl->xstate, AP_SLOT_FREE);
                }
        }
        ap_store_relaxed(&h->xheartbeat, ap_load_relaxed(&h->xheartbeat) + 1);
        if (timed)
                p->drain_cpu_ns += thread_cpu_ns() - cpu0;
        return processed;
}
