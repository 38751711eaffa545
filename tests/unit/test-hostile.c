/* The collector against a hostile agent: a writer scribbles random bytes over the ring
 * indices, slot states, record space, stack heap and module log while the collector
 * drains and finalizes.  Nothing may crash (run under ASan/UBSan), the drain must always
 * return, and the damage must show up as invalid records, not as a silent profile.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "allocprof/clock.h"
#include "allocprof/ring.h"
#include "helpers.h"
#include "process.h"
#include "symbolize.h"

static struct ap_shm_header *g_h;
static uint64_t g_total;
static _Atomic int g_stop;

static uint64_t rng(uint64_t *s)
{
        /* xorshift64*: fixed seed, reproducible runs */
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        return *s * 2685821657736338717ull;
}

static void scribble(uint64_t *seed)
{
        uint8_t *base = (uint8_t *)g_h;
        uint64_t r = rng(seed);
        uint64_t region = r % 6;
        uint64_t off;
        switch (region) {
        case 0: /* header past the fixed layout: counters, hwm, used sizes */
                off = 128 + rng(seed) % (4096 - 136);
                break;
        case 1: /* ring control words of the first slots */
                off = g_h->slots_offset + (rng(seed) % 8) * AP_SLOT_STRIDE + (rng(seed) % 24) * 8;
                break;
        case 2: /* ring data of the first slots */
                off = g_h->slots_offset + (rng(seed) % 8) * AP_SLOT_STRIDE +
                      sizeof(struct ap_ring_ctl) + (rng(seed) % (AP_RING_BYTES / 8)) * 8;
                break;
        case 3: /* stack heap */
                off = g_h->stacks_offset + (rng(seed) % 4096) * 8;
                break;
        case 4: /* module log */
                off = g_h->modules_offset + (rng(seed) % 512) * 8;
                break;
        default: /* plausible-looking records: valid header, random payload */
                off = g_h->slots_offset + (rng(seed) % 8) * AP_SLOT_STRIDE +
                      sizeof(struct ap_ring_ctl) + (rng(seed) % 64) * 8;
                {
                        struct ap_rec_hdr h = {.type = (uint8_t)(1 + rng(seed) % 4),
                                               .flags = (uint8_t)(rng(seed) % 2),
                                               .nwords = (uint16_t)(rng(seed) % 80),
                                               .aux = (uint32_t)rng(seed) % 100};
                        memcpy(base + off, &h, sizeof(h));
                        return;
                }
        }
        uint64_t v = rng(seed);
        if (rng(seed) % 4 == 0)
                v %= 1u << 20; /* small numbers hit more validation edges */
        if (off + 8 <= g_total)
                memcpy(base + off, &v, 8);
}

/* A memfd sized and sealed as an agent leaves it, its layout initialized, mapped at g_h.
 * Returns the descriptor. */
static int sealed_layout(void)
{
        int fd = memfd_create("hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ASSERT_TRUE(fd >= 0);
        ASSERT_OK(ftruncate(fd, (off_t)g_total));
        ASSERT_OK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW));
        g_h = mmap(NULL, g_total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ASSERT_TRUE(g_h != MAP_FAILED);
        ap_shm_init_layout(g_h);
        return fd;
}

/* The collector's process for the memory behind fd, registered as ours. */
static struct ap_process *take(int fd)
{
        struct ap_hello hello = {.magic = AP_HELLO_MAGIC, .layout_version = AP_LAYOUT_VERSION};
        struct ap_process *p = NULL;
        char *err = NULL;
        ASSERT_OK(ap_process_new(dup(fd), getpid(), &hello, &p, &err));
        return p;
}

static void *hostile(void *arg)
{
        uint64_t seed = (uint64_t)(uintptr_t)arg;
        while (!atomic_load(&g_stop)) {
                for (int i = 0; i < 64; i++)
                        scribble(&seed);
                /* Move some heads forward so the reader parses what we wrote. */
                struct ap_ring_ctl *ctl =
                        (struct ap_ring_ctl *)((uint8_t *)g_h + g_h->slots_offset +
                                               (rng(&seed) % 8) * AP_SLOT_STRIDE);
                atomic_fetch_add(&ctl->xhead, (rng(&seed) % 512) * 8);
                ap_store_relaxed(&g_h->xslot_hwm, (uint32_t)(rng(&seed) % 4096));
        }
        return NULL;
}

/* Well-formed records whose fields take edge values: addresses 0, 1 and near 2^64, a
 * few addresses used over and over (conflicts, double frees, frees of blocks never
 * seen), sizes and weights at and around every limit (2^31, 2^32, 2^48, 2^63, 2^64 - 1),
 * stamps at 0 and at the end of time, every flag.  Random bytes rarely make a record the
 * collector takes; these are well formed, and whatever they say, the process's profile
 * must still be one that its writer accepts and its reader reads back.  (A size of 2^63
 * once indexed the size histogram one past its end, over the process's own fields; sums
 * of made-up sizes once made a profile with more bytes freed than allocated, which the
 * writer refused.) */
static uint64_t edge(uint64_t *seed, const uint64_t *vals, size_t n)
{
        uint64_t r = rng(seed);
        return r % 4 == 0 ? rng(seed) : vals[r / 4 % n];
}

/* A fresh area (*fd) in g_h, in sampled mode or full, with slot 0 claimed by pr as a thread
 * of the agent would, and the collector's process on it. */
static struct ap_process *edge_start(int *fd, struct ap_producer *pr, bool sampled)
{
        *fd = sealed_layout();
        g_h->clock_kind = AP_CLOCK_KIND;
        g_h->start_ticks = ap_clock_ticks();
        if (sampled) {
                ap_store_relaxed(&g_h->xmode, AP_MODE_SAMPLED);
                ap_store_relaxed(&g_h->xsample_interval, 4096);
        }
        ap_store_relaxed(&g_h->xslot_hwm, 1);
        struct ap_ring_ctl *ctl = (struct ap_ring_ctl *)((uint8_t *)g_h + g_h->slots_offset);
        uint32_t state = AP_SLOT_FREE;
        ASSERT_TRUE(ap_cas_acq_rel(&ctl->xstate, &state, AP_SLOT_OWNED));
        ap_producer_attach(pr, ctl);
        return take(*fd);
}

/* Drains and finalizes p, writes its profile and reads it back (both must work, whatever
 * the process sent), releases p and the area; the profile for the caller to check. */
static struct ap_profile *edge_finish(struct ap_process *p, int fd, struct ap_symbolizer *sym,
                                      const char *what)
{
        ap_process_drain(p, true);
        struct ap_profile *prof = NULL, *back = NULL;
        char *err = NULL;
        ASSERT_OK(ap_process_finalize(p, sym, &prof));
        char path[] = "/tmp/ap-test-hostile-edge.XXXXXX";
        int tfd = mkstemp(path);
        ASSERT_TRUE(tfd >= 0);
        close(tfd);
        int r = ap_profile_write(prof, path);
        if (r < 0)
                fprintf(stderr, "%s: the profile was refused: %s\n", what,
                        ap_profile_write_strerror(r));
        ASSERT_OK(r);
        r = ap_profile_read(path, &back, &err);
        if (r < 0)
                fprintf(stderr, "%s: the profile does not read back: %s\n", what, err ? err : "?");
        ASSERT_OK(r);
        ASSERT_EQ(back->totals.allocations, prof->totals.allocations);
        ASSERT_OK(unlink(path));
        free(err);
        ap_profile_free(back);
        ap_process_free(p);
        munmap(g_h, g_total);
        close(fd);
        return prof;
}

static void edge_records(struct ap_symbolizer *sym, uint64_t seed, bool sampled)
{
        int fd;
        struct ap_producer pr;
        struct ap_process *p = edge_start(&fd, &pr, sampled);
        /* A stack in the heap (id 8), then the layout's offsets rewritten after the
         * registration, and a module log said to be in use: the collector must read the
         * heap and the log where they are, not where the header now says. */
        const uint64_t ips[2] = {0x401000, 0x402000};
        uint8_t *heap = (uint8_t *)g_h + g_h->stacks_offset;
        struct ap_stack_entry entry = {.depth = 2};
        memcpy(heap + 64, &entry, sizeof(entry));
        memcpy(heap + 64 + sizeof(entry), ips, sizeof(ips));
        g_h->stacks_offset = g_h->modules_offset = UINT64_MAX / 4;
        ap_store_release(&g_h->xmodules_used, 4096);

        const uint64_t s0 = g_h->start_ticks;
        const uint64_t addrs[] = {
                0, 1, 16, 0x10000, 0x10010, 0x10020, 1ull << 63, UINT64_MAX - 15, UINT64_MAX};
        const uint64_t sizes[] = {0,          1,          100,        (1ull << 31) - 1, 1ull << 31,
                                  1ull << 32, 1ull << 48, 1ull << 63, UINT64_MAX};
        const uint64_t weights[] = {0,         1, 4096, 1ull << 31, 1ull << 48, (1ull << 48) + 1,
                                    UINT64_MAX};
        const uint64_t stamps[] = {0, s0, s0 + 1, s0 + 1000, UINT64_MAX};
        const uint64_t ids[] = {0, 1, 8, 1u << 31, UINT32_MAX};
        for (int i = 0; i < 20000; i++) {
                uint64_t kind = rng(&seed) % 4;
                uint32_t depth = 1 + (uint32_t)(rng(&seed) % 2);
                bool by_id = rng(&seed) % 3 == 0; /* a stack of the heap, by its id */
                struct ap_rec_hdr hdr = {.flags = (uint8_t)(rng(&seed) & 0xe)};
                if (kind == 1) {
                        hdr.type = AP_REC_FREE;
                        depth = 0;
                } else {
                        hdr.type = kind == 0   ? AP_REC_ALLOC
                                   : kind == 3 ? AP_REC_ALLOC_SAMPLED
                                               : AP_REC_REALLOC;
                        hdr.flags |= by_id ? 0 : AP_RECF_INLINE_STACK;
                        hdr.aux = by_id ? (uint32_t)edge(&seed, ids, 5) : depth;
                        depth = by_id ? 0 : depth;
                }
                union {
                        struct ap_rec_alloc alloc;
                        struct ap_rec_alloc_sampled sampled;
                        struct ap_rec_free free;
                        struct ap_rec_realloc realloc;
                } r;
                uint32_t fixed;
                if (kind == 1) {
                        r.free = (struct ap_rec_free){.hdr = hdr,
                                                      .ts = edge(&seed, stamps, 5),
                                                      .addr = edge(&seed, addrs, 9)};
                        fixed = sizeof(r.free);
                } else if (kind == 2) {
                        r.realloc = (struct ap_rec_realloc){.hdr = hdr,
                                                            .ts = edge(&seed, stamps, 5),
                                                            .ts_free = edge(&seed, stamps, 5),
                                                            .old_addr = edge(&seed, addrs, 9),
                                                            .new_addr = edge(&seed, addrs, 9),
                                                            .size = edge(&seed, sizes, 9)};
                        fixed = sizeof(r.realloc);
                } else { /* ALLOC reads the same fields but weight */
                        r.sampled =
                                (struct ap_rec_alloc_sampled){.hdr = hdr,
                                                              .ts = edge(&seed, stamps, 5),
                                                              .addr = edge(&seed, addrs, 9),
                                                              .size = edge(&seed, sizes, 9),
                                                              .weight = edge(&seed, weights, 7)};
                        fixed = kind == 3 ? sizeof(r.sampled) : sizeof(r.alloc);
                }
                uint32_t n = fixed + 8 * depth;
                r.free.hdr.nwords = (uint16_t)(n / 8);
                uint8_t *w = ap_ring_try_reserve(&pr, n, kind == 1 ? 0 : AP_RING_FREE_RESERVE);
                if (w == NULL)
                        break;
                memcpy(w, &r, fixed);
                memcpy(w + fixed, ips, 8ull * depth);
                ap_ring_commit(&pr, n);
                if (i % 512 == 511) {
                        /* The control fields are the process's too: any mode, any interval,
                         * changed between two drains. */
                        const uint64_t modes[] = {AP_MODE_FULL, AP_MODE_SAMPLED, AP_MODE_DORMANT,
                                                  AP_MODE_DETACHED, 77};
                        const uint64_t intervals[] = {0, 1, 4096, 1ull << 48, UINT64_MAX};
                        if (sampled) {
                                ap_store_relaxed(&g_h->xmode, (uint32_t)edge(&seed, modes, 5));
                                ap_store_relaxed(&g_h->xsample_interval, edge(&seed, intervals, 5));
                        }
                        ap_process_drain(p, false);
                }
        }
        struct ap_profile *prof = edge_finish(p, fd, sym, "edge records");
        ASSERT_TRUE(prof->totals.frees <= prof->totals.allocations);
        ASSERT_TRUE(prof->totals.leaked_bytes <= prof->totals.bytes);
        ASSERT_TRUE(prof->totals.invalid_records > 0); /* the sizes no block can have */
        ap_profile_free(prof);
}

/* Module records whose fields take edge values (paths that are no ELF file, a device, a
 * FIFO, empty or not UTF-8; ranges empty, reversed, overlapping, at the ends of the
 * address space; biases that wrap; build-ids of every length), then stacks whose
 * addresses fall in them: the collector looks each module up and opens its file to
 * symbolize the stacks at the end, and must neither hang nor crash, and the profile must
 * still be written and read back. */
static void edge_modules(struct ap_symbolizer *sym, uint64_t seed, const char *fifo)
{
        int fd;
        struct ap_producer pr;
        struct ap_process *p = edge_start(&fd, &pr, false);

        const char *paths[] = {"/dev/zero",
                               fifo,
                               "",
                               "/",
                               "/proc/self/mem",
                               "/etc/passwd",
                               "\xff\xfe not utf-8",
                               "/nonexistent/lib.so",
                               "/bin/true"};
        const uint64_t ends[] = {
                0, 0x1000, 0x400000, 0x7fffffffffff, 1ull << 63, UINT64_MAX - 4096, UINT64_MAX};
        uint8_t *log = (uint8_t *)g_h + g_h->modules_offset;
        uint64_t used = 0;
        for (int i = 0; i < 40; i++) {
                const char *path = paths[rng(&seed) % 9];
                size_t len = strlen(path);
                struct ap_module_rec m = {
                        .kind = (uint16_t)(1 + rng(&seed) % 3), /* load, unload, unknown */
                        .path_len = (uint16_t)len,
                        .ts = g_h->start_ticks + (uint64_t)i,
                        .bias = edge(&seed, ends, 7),
                        .lo = edge(&seed, ends, 7),
                        .hi = edge(&seed, ends, 7),
                        .build_id_len = (uint32_t)(rng(&seed) % (AP_MAX_BUILD_ID + 2))};
                memset(m.build_id, 0xab, sizeof(m.build_id));
                m.nbytes = (uint32_t)((sizeof(m) + len + 7) / 8 * 8);
                if (used + m.nbytes > AP_MODULE_LOG_BYTES)
                        break;
                memcpy(log + used, &m, sizeof(m));
                memcpy(log + used + sizeof(m), path, len);
                used += m.nbytes;
        }
        ap_store_release(&g_h->xmodules_used, used);
        const uint64_t s0 = g_h->start_ticks;
        for (uint64_t i = 0; i < 200; i++) {
                uint64_t ips[3] = {edge(&seed, ends, 7) + i, edge(&seed, ends, 7),
                                   0x400000 + 16 * i};
                uint32_t n = sizeof(struct ap_rec_alloc) + sizeof(ips);
                struct ap_rec_alloc r = {.hdr = {.type = AP_REC_ALLOC,
                                                 .flags = AP_RECF_INLINE_STACK,
                                                 .nwords = (uint16_t)(n / 8),
                                                 .aux = 3},
                                         .ts = s0 + 100 + i,
                                         .addr = 0x10000 + 16 * i,
                                         .size = 32};
                uint8_t *w = ap_ring_try_reserve(&pr, n, AP_RING_FREE_RESERVE);
                ASSERT_NOT_NULL(w);
                memcpy(w, &r, sizeof(r));
                memcpy(w + sizeof(r), ips, sizeof(ips));
                ap_ring_commit(&pr, n);
        }
        struct ap_profile *prof = edge_finish(p, fd, sym, "edge modules");
        ASSERT_EQ(prof->totals.allocations, 200);
        ap_profile_free(prof);
}

int main(void)
{
        g_total = ap_shm_total_bytes();
        struct ap_symbolizer *sym = NULL;
        ASSERT_OK(ap_symbolizer_new(&sym));
        uint64_t invalid = 0;

        for (int round = 0; round < 20; round++) {
                int fd = sealed_layout();
                struct ap_process *p = take(fd);

                atomic_store(&g_stop, 0);
                pthread_t th;
                ASSERT_EQ(pthread_create(&th, NULL, hostile, (void *)(uintptr_t)(round * 7919 + 1)),
                          0);
                /* Drain concurrently for a while (the writer needs time to start). */
                uint64_t until = ap_clock_mono_ns() + 40 * 1000 * 1000;
                while (ap_clock_mono_ns() < until)
                        ap_process_drain(p, false);
                atomic_store(&g_stop, 1);
                pthread_join(th, NULL);
                ap_process_drain(p, true);

                struct ap_profile *prof = NULL;
                ASSERT_OK(ap_process_finalize(p, sym, &prof));
                invalid += prof->totals.invalid_records;
                ap_profile_free(prof);
                ap_process_free(p);
                munmap(g_h, g_total);
                close(fd);
        }
        ASSERT_TRUE(invalid > 0);

        for (uint64_t seed = 1; seed <= 6; seed++)
                edge_records(sym, seed * 104729, seed % 2 == 0);
        {
                char dir[] = "/tmp/ap-test-hostile-fifo.XXXXXX", fifo[64];
                ASSERT_NOT_NULL(mkdtemp(dir));
                snprintf(fifo, sizeof(fifo), "%s/lib.so", dir);
                ASSERT_OK(mkfifo(fifo, 0600));
                for (uint64_t seed = 1; seed <= 6; seed++)
                        edge_modules(sym, seed * 7919, fifo);
                ASSERT_OK(unlink(fifo));
                ASSERT_OK(rmdir(dir));
        }

        /* A process that says it samples at an interval of 0 (its agent samples every byte
         * then, as at 1): the profile says 1, which its reader takes. */
        {
                int fd = sealed_layout();
                ap_store_relaxed(&g_h->xmode, AP_MODE_SAMPLED);
                ap_store_relaxed(&g_h->xsample_interval, 0);
                struct ap_process *p = take(fd);
                struct ap_profile *prof = NULL;
                char path[] = "/tmp/ap-test-hostile.XXXXXX";
                ap_process_drain(p, true);
                ASSERT_OK(ap_process_finalize(p, sym, &prof));
                ASSERT_STREQ(prof->mode, "sampled");
                ASSERT_EQ(prof->sample_interval, 1u);
                int tfd = mkstemp(path);
                ASSERT_TRUE(tfd >= 0);
                close(tfd);
                ASSERT_OK(ap_profile_write(prof, path));
                ASSERT_OK(unlink(path));
                ap_profile_free(prof);
                ap_process_free(p);
                munmap(g_h, g_total);
                close(fd);
        }
        /* The exec the agent says began: counters and a path are its word.  A path without
         * a NUL, full of control characters, comes out cut and printable; fewer exec'ed
         * than failed (counters that wrapped) is no exec. */
        {
                int fd = sealed_layout();
                struct ap_process *p = take(fd);
                char got[AP_EXEC_PATH_BYTES + 64], want[AP_EXEC_PATH_BYTES];
                ASSERT_FALSE(ap_process_exec_begun(p, got, sizeof(got)));
                memset(g_h->exec_path, '\033', AP_EXEC_PATH_BYTES);
                ap_store_relaxed(&g_h->xcounters[AP_CNT_EXECS], 1);
                ASSERT_TRUE(ap_process_exec_begun(p, got, sizeof(got)));
                memset(want, '?', AP_EXEC_PATH_BYTES - 1);
                want[AP_EXEC_PATH_BYTES - 1] = '\0';
                ASSERT_EQ(strlen(got), (size_t)AP_EXEC_PATH_BYTES);
                ASSERT_EQ(memcmp(got, want, AP_EXEC_PATH_BYTES - 1), 0);
                ASSERT_TRUE(ap_process_exec_begun(p, got, 8)); /* cut to fit */
                ASSERT_STREQ(got, "???????");
                ap_store_relaxed(&g_h->xcounters[AP_CNT_EXECS_FAILED], UINT64_MAX);
                ASSERT_FALSE(ap_process_exec_begun(p, got, sizeof(got)));
                ap_process_free(p);
                munmap(g_h, g_total);
                close(fd);
        }
        ap_symbolizer_free(sym);

        /* Not sealed against shrinking: could be truncated under the collector. */
        int fd = memfd_create("hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ASSERT_OK(ftruncate(fd, (off_t)g_total));
        g_h = mmap(NULL, g_total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ASSERT_TRUE(g_h != MAP_FAILED);
        ap_shm_init_layout(g_h);
        struct ap_hello hello = {.magic = AP_HELLO_MAGIC, .layout_version = AP_LAYOUT_VERSION};
        struct ap_process *p = NULL;
        char *err = NULL;
        ASSERT_ERR(ap_process_new(dup(fd), getpid(), &hello, &p, &err), -EPROTO);
        ASSERT_CONTAINS(err, "sealed");
        free(err);
        /* Sealed, but a fixed layout field is wrong: refused outright. */
        ASSERT_OK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW));
        g_h->stacks_offset += 8;
        err = NULL;
        ASSERT_ERR(ap_process_new(dup(fd), getpid(), &hello, &p, &err), -EPROTO);
        ASSERT_CONTAINS(err, "header");
        free(err);
        /* Another layout version. */
        hello.layout_version = 99;
        err = NULL;
        ASSERT_ERR(ap_process_new(dup(fd), getpid(), &hello, &p, &err), -EPROTO);
        free(err);
        munmap(g_h, g_total);
        close(fd);
        printf("ok: %llu invalid records rejected\n", (unsigned long long)invalid);
        return 0;
}
