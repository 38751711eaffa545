/* Session set-up for one process image: the shared memory, registration with the
 * collector, the module log (which files are mapped where), thread-exit and fork
 * handling.  Runs rarely; still, it may run inside a hook, so nothing here allocates.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "allocprof/atomics.h"
#include "allocprof/seccomp.h"
#include "unwind.h"

AP_HIDDEN _Atomic(struct ap_shm_header *) ap_session;
AP_HIDDEN _Atomic uint64_t ap_session_gen;
static _Atomic uint32_t g_mode_untried = AP_MODE_FULL, g_mode_none = AP_MODE_OFF;
AP_HIDDEN _Atomic(_Atomic uint32_t *) ap_mode_word = &g_mode_untried;

enum { INIT_UNTRIED = 0, INIT_BUSY = 1, INIT_DONE = 2 };
static _Atomic int g_init_state;

AP_HIDDEN _Atomic uint32_t *ap_fork_mark;

static pthread_key_t g_thread_key;
static _Atomic int g_thread_key_ok;
AP_HIDDEN uint64_t ap_agent_lo, ap_agent_hi; /* our own text, written before the session is published */
static char g_exe_path[AP_MAX_PATH];

/* ---- the session's mappings -----------------------------------------------------------
 * The shared memory holds 1024 rings of 2 MiB (ap_shm_total_bytes(): 2.1 GiB), but a
 * process maps only what it uses: the head (the header and slot 0's ring) and the tail
 * (stack heap and module log) at registration, and each further slot when a thread
 * first claims it.  Mapped at once, the rings took 2.1 GiB of every program's address
 * space, which RLIMIT_AS counts: a program under `ulimit -v 2000000` was not profiled.
 *
 * The descriptor is closed after registration (the program keeps none of ours), so a
 * slot is mapped from the nearest one below it that is (ap_shm_map_more, ring.h).  Slots
 * are claimed lowest first: that is usually the one just below, and the transient
 * mapping two rings long.
 *
 * g_slot_page[i] is the address at which slot i's first page (the page holding its
 * ring_ctl) is mapped in this process, 0 if it is not.  Set once per session with a
 * release CAS after the mapping exists; read with acquire, so a thread that sees the
 * address sees the mapping (mremap and munmap are system calls: the kernel orders them,
 * the atomics only publish the address).  Reset by fork_child alone, single-threaded;
 * a fork while another thread is between its mremap and its CAS leaves the child that
 * one mapping unrecorded (address space only: the child registers anew). */
static _Atomic uintptr_t g_slot_page[AP_NSLOTS];
static uint8_t *g_head, *g_tail; /* head and tail mappings (page-aligned starts) */
/* Slots 1..g_slots_allowed may be mapped: under a finite RLIMIT_AS, the rings that keep
 * the session within 1/AP_AS_SHARE of it (wire.h); set before the session is published. */
static uint32_t g_slots_allowed;
static uint64_t g_head_len, g_tail_len, g_tail_off;
static uint64_t g_page; /* the system's page size */

static inline uint64_t slot_page(uint32_t i)
{
        return ap_shm_slot_page(i, g_page);
}

static inline uint64_t slot_map_len(uint32_t i)
{
        return ap_shm_slot_map_bytes(i, g_page);
}

/* After a slot could not be mapped, none is tried again before this CLOCK_MONOTONIC time
 * (0: none failed).  What refuses one (an address-space limit, a seccomp filter) refuses
 * the next, and a thread without a slot looks for one on each of its calls: retrying every
 * time, 100 such threads ran 20 (seccomp) to 50 (RLIMIT_AS) times slower, mremap taking
 * the address-space lock for writing.  Relaxed: a hint.  Reset by fork_child. */
#define MAP_RETRY_NS (100ull * 1000 * 1000)
static _Atomic uint64_t g_map_retry_at;

/* Maps slot i (i >= 1) from the nearest mapped slot below it; 0 if that fails (an
 * address-space limit, a seccomp filter without mremap: the thread goes unrecorded, as
 * when every slot is taken). */
static uintptr_t map_slot(uint32_t i)
{
        uint64_t retry_at = ap_load_relaxed(&g_map_retry_at);
        if (i > g_slots_allowed || (retry_at != 0 && ap_clock_mono_ns() < retry_at))
                return 0;
        uint32_t j = i;
        uintptr_t from = 0;
        while (j-- > 0 && (from = ap_load_acquire(&g_slot_page[j])) == 0)
                ;
        if (from == 0)
                return 0;
        uint8_t *m = ap_shm_map_more((void *)from, slot_page(j), slot_page(i), slot_map_len(i));
        if (m == NULL) {
                ap_store_relaxed(&g_map_retry_at, ap_clock_mono_ns() + MAP_RETRY_NS);
                return 0;
        }
        uintptr_t mine = (uintptr_t)m, seen = 0;
        (void)madvise((void *)mine, slot_map_len(i), MADV_DONTDUMP); /* see session_start */
        /* Release: the mapping exists before another thread can use its address; acquire
         * on failure: the winner's mapping exists before we use the winner's address. */
        if (!atomic_compare_exchange_strong_explicit(&g_slot_page[i], &seen, mine,
                                                     memory_order_acq_rel, memory_order_acquire)) {
                munmap((void *)mine, slot_map_len(i));
                return seen;
        }
        return mine;
}

AP_HIDDEN struct ap_ring_ctl *ap_slot_ctl(uint32_t i, bool map)
{
        uintptr_t a = ap_load_acquire(&g_slot_page[i]);
        if (a == 0 && (!map || (a = map_slot(i)) == 0))
                return NULL;
        return (struct ap_ring_ctl *)(a + (ap_shm_slot_off(i) - slot_page(i)));
}

AP_HIDDEN uint8_t *ap_shm_tail(uint64_t offset)
{
        return g_tail + (offset - g_tail_off);
}

/* The header page of this process's nearest profiled ancestor, kept mapped in a fork
 * child until its own registration is settled: a child that cannot register (a chroot
 * hides the socket, no descriptor left, a seccomp filter) says so there, in
 * AP_CNT_CHILDREN_UNPROFILED, and keeps the page for its own children; one that registers
 * lets it go.  NULL in an image the environment started (exec drops every mapping). */
static struct ap_shm_header *g_report_hdr;

/* The mode and sampling interval the parent recorded in when it forked us, if it had been
 * attached (started dormant, now recording): a child it forks while attached starts
 * recording as it does, not dormant, so that a server's workers are sampled with it. */
static uint32_t g_parent_mode = AP_MODE_OFF;
static uint64_t g_parent_interval;

/* Unmaps everything the session mapped (the fork child: its parent's). */
static void unmap_session(void)
{
        for (uint32_t i = 1; i < AP_NSLOTS; i++) {
                uintptr_t a = ap_load_relaxed(&g_slot_page[i]);
                if (a != 0)
                        munmap((void *)a, slot_map_len(i));
                ap_store_relaxed(&g_slot_page[i], 0);
        }
        ap_store_relaxed(&g_slot_page[0], 0);
        if (g_head != NULL)
                munmap(g_head, g_head_len);
        if (g_tail != NULL)
                munmap(g_tail, g_tail_len);
        g_head = g_tail = NULL;
}

/* ---- modules ------------------------------------------------------------------------
 * g_known is append-only; readers (ap_modules_known, lock-free from any hook) load the
 * count with acquire, pairing with the release store after an entry is filled. */
#define MAX_KNOWN 4096
struct known_module {
        uint64_t lo, hi, bias;
        uint64_t name_hash;
        int present; /* scratch, under g_mod_lock */
        int gone;    /* an UNLOAD was logged; under g_mod_lock */
};
static struct known_module g_known[MAX_KNOWN];
static _Atomic uint32_t g_nknown;
static pthread_mutex_t g_mod_lock = PTHREAD_MUTEX_INITIALIZER;
/* dlpi_adds + dlpi_subs when the modules were last scanned (0: never), and during a scan,
 * as the scan's first callback saw it (under g_mod_lock). */
static _Atomic uint64_t g_loader_events;
static uint64_t g_scan_events;


AP_HIDDEN bool ap_module_range(uint64_t addr, uint64_t *lo, uint64_t *hi)
{
        uint32_t n = ap_load_acquire(&g_nknown);
        for (uint32_t i = 0; i < n; i++)
                if (addr >= g_known[i].lo && addr < g_known[i].hi) {
                        *lo = g_known[i].lo;
                        *hi = g_known[i].hi;
                        return true;
                }
        return false;
}

AP_HIDDEN bool ap_modules_known(uint64_t addr)
{
        uint64_t lo, hi;
        return ap_module_range(addr, &lo, &hi);
}

static uint64_t hash_str(const char *s)
{
        uint64_t h = 1469598103934665603ull;
        for (; *s; s++)
                h = (h ^ (uint8_t)*s) * 1099511628211ull;
        return h;
}

static size_t read_build_id(const struct dl_phdr_info *info, uint8_t *out)
{
        for (int i = 0; i < info->dlpi_phnum; i++) {
                const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
                if (ph->p_type != PT_NOTE)
                        continue;
                const uint8_t *p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
                const uint8_t *end = p + ph->p_memsz;
                size_t align = ph->p_align > 4 ? 8 : 4;
                while (p + sizeof(ElfW(Nhdr)) <= end) {
                        const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
                        size_t name_off = sizeof(*nh);
                        size_t desc_off = name_off + ((nh->n_namesz + align - 1) & ~(align - 1));
                        size_t next = desc_off + ((nh->n_descsz + align - 1) & ~(align - 1));
                        if (p + next > end || next == 0)
                                break;
                        if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
                            memcmp(p + name_off, "GNU", 4) == 0) {
                                size_t n = nh->n_descsz < AP_MAX_BUILD_ID ? nh->n_descsz
                                                                          : AP_MAX_BUILD_ID;
                                memcpy(out, p + desc_off, n);
                                return n;
                        }
                        p += next;
                }
        }
        return 0;
}

/* Appends one record to the module log.  Caller holds g_mod_lock. */
static void log_module(struct ap_shm_header *h, uint16_t kind, const char *path, uint64_t bias,
                       uint64_t lo, uint64_t hi, const uint8_t *build_id, size_t build_id_len)
{
        size_t plen = strnlen(path, AP_MAX_PATH - 1);
        uint64_t bytes = (sizeof(struct ap_module_rec) + plen + 7) & ~7ull;
        /* Relaxed: only we (holding the lock) write xmodules_used. */
        uint64_t used = ap_load_relaxed(&h->xmodules_used);
        if (used + bytes > h->modules_bytes) {
                ap_fetch_add_relaxed(&h->xcounters[AP_CNT_MODULES_DROPPED], 1);
                return;
        }
        struct ap_module_rec *m = (struct ap_module_rec *)ap_shm_tail(h->modules_offset + used);
        memset(m, 0, sizeof(*m));
        m->nbytes = (uint32_t)bytes;
        m->kind = kind;
        m->path_len = (uint16_t)plen;
        m->ts = ap_clock_ticks();
        m->bias = bias;
        m->lo = lo;
        m->hi = hi;
        m->build_id_len = (uint32_t)build_id_len;
        memcpy(m->build_id, build_id, build_id_len);
        memcpy(m->path, path, plen);
        /* Release pairs with the collector's acquire load of xmodules_used: the record is
         * complete before it is counted. */
        ap_store_release(&h->xmodules_used, used + bytes);
}

/* Lower-case hex digits at *s, moving *s past them. */
static uint64_t parse_hex(const char **s)
{
        uint64_t v = 0;
        for (;; (*s)++) {
                unsigned d = (unsigned)(**s - '0') <= 9   ? (unsigned)(**s - '0')
                             : (unsigned)(**s - 'a') <= 5 ? (unsigned)(**s - 'a') + 10
                                                          : 16u;
                if (d == 16)
                        return v;
                v = v << 4 | d;
        }
}

/* The file mapped at addr, as /proc/self/maps names it (absolute, whatever the working
 * directory is now) into out; false if it cannot tell.  For the loader's relative names
 * (dlopen("./lib/x.so"), a relative LD_LIBRARY_PATH), which the working directory of
 * the moment would resolve wrongly once the program has changed it: the agent meets a
 * module only when a stack first names it, perhaps long after the dlopen.  Called under
 * g_mod_lock (the buffer is static: no big frame on the program's stack). */
static bool mapped_file(uint64_t addr, char *out, size_t len)
{
        static char buf[2 * AP_MAX_PATH + 256];
        int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        bool found = false;
        size_t have = 0;
        for (;;) {
                ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                have += (size_t)n;
                buf[have] = '\0';
                char *line = buf, *nl;
                while (!found && (nl = strchr(line, '\n')) != NULL) {
                        *nl = '\0';
                        /* "lo-hi perms offset dev inode   /path": the first '/' starts the
                         * path (the fields before it hold none). */
                        const char *p = line;
                        uint64_t lo = parse_hex(&p), hi = 0;
                        if (*p == '-') {
                                p++;
                                hi = parse_hex(&p);
                        }
                        const char *path = strchr(line, '/');
                        if (addr >= lo && addr < hi && path != NULL && strlen(path) < len) {
                                strcpy(out, path);
                                found = true;
                        }
                        line = nl + 1;
                }
                if (found)
                        break;
                /* Keep the unfinished line; a line longer than the buffer is dropped. */
                have = (size_t)(buf + have - line);
                if (have == sizeof(buf) - 1)
                        have = 0;
                memmove(buf, line, have);
        }
        close(fd);
        return found;
}

static int scan_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        struct ap_shm_header *h = arg;
        uint64_t lo = UINT64_MAX, hi = 0;
        if (g_scan_events == 0 && size >= offsetof(struct dl_phdr_info, dlpi_subs) +
                                                   sizeof(info->dlpi_subs))
                g_scan_events = info->dlpi_adds + info->dlpi_subs;

        for (int i = 0; i < info->dlpi_phnum; i++) {
                const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
                if (ph->p_type != PT_LOAD)
                        continue;
                uint64_t a = info->dlpi_addr + ph->p_vaddr;
                if (a < lo)
                        lo = a;
                if (a + ph->p_memsz > hi)
                        hi = a + ph->p_memsz;
        }
        if (hi == 0)
                return 0;

        const char *name = info->dlpi_name;
        char buf[AP_MAX_PATH];
        if (name == NULL || name[0] == '\0') {
                name = g_exe_path; /* the main program */
        } else if (name[0] != '/') {
                if (strchr(name, '/') == NULL)
                        name = ""; /* the vDSO and friends: no file to read */
                else if (mapped_file(lo, buf, sizeof(buf)))
                        name = buf;
                else if (getcwd(buf, sizeof(buf) - strlen(name) - 2) != NULL) {
                        size_t l = strlen(buf);
                        buf[l] = '/';
                        strcpy(buf + l + 1, name);
                        name = buf;
                }
        }

        uint64_t nh = hash_str(name);
        uint32_t n = ap_load_relaxed(&g_nknown);
        for (uint32_t i = 0; i < n; i++) {
                struct known_module *k = &g_known[i];
                if (!k->gone && k->lo == lo && k->hi == hi && k->name_hash == nh) {
                        k->present = 1;
                        return 0;
                }
        }
        if (n == MAX_KNOWN)
                return 0;
        struct known_module *k = &g_known[n];
        k->lo = lo;
        k->hi = hi;
        k->bias = info->dlpi_addr;
        k->name_hash = nh;
        k->present = 1;
        k->gone = 0;
        ap_store_release(&g_nknown, n + 1); /* pairs with ap_modules_known's acquire */

        if (h != NULL && name[0] != '\0') {
                uint8_t bid[AP_MAX_BUILD_ID];
                size_t bid_len = read_build_id(info, bid);
                log_module(h, AP_MOD_LOAD, name, info->dlpi_addr, lo, hi, bid, bid_len);
        }
        if (ap_agent_hi == 0 && (uint64_t)(uintptr_t)&ap_session_ensure >= lo &&
            (uint64_t)(uintptr_t)&ap_session_ensure < hi) {
                ap_agent_lo = lo;
                ap_agent_hi = hi;
        }
        return 0;
}

AP_HIDDEN void ap_modules_rescan(void)
{
        /* trylock: a thread inside dl_iterate_phdr's callback may allocate and land here
         * while another thread holds our lock and waits for the loader's lock. */
        if (pthread_mutex_trylock(&g_mod_lock) != 0)
                return;
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        uint32_t n = ap_load_relaxed(&g_nknown);
        for (uint32_t i = 0; i < n; i++)
                g_known[i].present = 0;
        g_scan_events = 0;
        dl_iterate_phdr(scan_cb, h);
        ap_store_relaxed(&g_loader_events, g_scan_events);
        for (uint32_t i = 0; i < n; i++) {
                struct known_module *k = &g_known[i];
                if (!k->present && !k->gone) {
                        k->gone = 1;
                        ap_unwind_forget_rules();
                        if (h != NULL)
                                log_module(h, AP_MOD_UNLOAD, "", k->bias, k->lo, k->hi, NULL, 0);
                }
        }
        pthread_mutex_unlock(&g_mod_lock);
}

static int loader_events_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs))
                *(uint64_t *)arg = info->dlpi_adds + info->dlpi_subs;
        return 1; /* the counters are the same in every callback: one is enough */
}

AP_HIDDEN bool ap_modules_rescan_if_changed(void)
{
        uint64_t events = 0;
        dl_iterate_phdr(loader_events_cb, &events);
        if (events != 0 && events == ap_load_relaxed(&g_loader_events))
                return false;
        ap_modules_rescan();
        return true;
}

/* ---- registration ------------------------------------------------------------------- */

static void thread_exit_cb(void *arg)
{
        (void)arg;
        struct ap_thread *t = &ap_tls;
        int saved = t->in_hook;
        t->in_hook = 1;
        ap_thread_release();
        t->exited = 1;
        t->in_hook = saved;
}

AP_HIDDEN void ap_thread_started(void);
AP_HIDDEN void ap_thread_started(void)
{
        /* Arms the exit destructor.  If the key is not available the slot is reclaimed by
         * the collector once the thread is gone. */
        if (ap_load_relaxed(&g_thread_key_ok) && !ap_tls.exited)
                pthread_setspecific(g_thread_key, (void *)1);
}

AP_HIDDEN uint64_t ap_sample_seed;
extern AP_HIDDEN int ap_unwind_fp;
extern AP_HIDDEN int ap_unwind_general;
extern AP_HIDDEN int (*_Atomic ap_unw_backtrace)(void **, int);

/* Decimal digits only; anything else (or nothing) is 0.  No strtoull: no locale. */
static uint64_t parse_u64(const char *s)
{
        uint64_t v = 0;
        if (s == NULL)
                return 0;
        for (; *s >= '0' && *s <= '9'; s++) {
                if (v > (UINT64_MAX - 9) / 10)
                        return 0;
                v = v * 10 + (uint64_t)(*s - '0');
        }
        return *s == '\0' ? v : 0;
}

static int send_hello(const char *sock_path, int memfd, const struct ap_shm_header *h)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(sock_path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, sock_path);

        /* Non-blocking: a collector that does not accept must not hang the program. */
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        struct ap_hello hello = {
                .magic = AP_HELLO_MAGIC,
                .layout_version = AP_LAYOUT_VERSION,
                .pid = h->pid,
                .ppid = h->ppid,
                .exec_id = h->exec_id,
                .shm_bytes = h->total_bytes,
        };
        struct iovec iov = {.iov_base = &hello, .iov_len = sizeof(hello)};
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } u;
        memset(&u, 0, sizeof(u));
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = u.buf,
                             .msg_controllen = sizeof(u.buf)};
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &memfd, sizeof(int));
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        int r = n == (ssize_t)sizeof(hello) ? 0 : (n < 0 ? -errno : -EIO);
        if (r == 0) {
                /* Bounded wait for the verdict: a collector that does not answer leaves
                 * the program unprofiled, never stuck. */
                struct ap_reply reply;
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                int pr;
                do
                        pr = poll(&pfd, 1, AP_REPLY_TIMEOUT_MS);
                while (pr < 0 && errno == EINTR);
                if (pr <= 0)
                        r = -ETIMEDOUT;
                else if (recv(fd, &reply, sizeof(reply), MSG_DONTWAIT) != (ssize_t)sizeof(reply) ||
                         reply.magic != AP_REPLY_MAGIC)
                        r = -EPROTO;
                else if (reply.status == AP_REPLY_FAILED)
                        r = -ENOMEM; /* unprofiled, not "not this one" */
                else if (reply.status != AP_REPLY_ACCEPTED)
                        r = -EPERM;
        }
        /* The collector watches the process itself (pidfd); the program keeps no extra
         * descriptor of ours open. */
        close(fd);
        return r;
}

/* What the environment asked of the agent, read once per process image, by the first
 * try at a session (the constructor, or an allocation before it).  A fork child
 * registers with the same settings without reading the environment again: the program
 * may have cleared it since (clearenv(), unsetenv(), a daemon tidying up before it forks
 * its workers), and its children are still its own image, to be profiled as it is.  (An
 * exec reads the new environment: what the program passes on is the next image's.) */
static struct {
        bool read;
        char sock[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* "": none (or too long) */
        bool dormant;
        uint64_t interval, seed;
        char unwind[16];
        char seccomp[32]; /* run's seccomp state (allocprof/seccomp.h), "" if not run's */
} g_env;

static void copy_env(char *dst, size_t len, const char *name)
{
        const char *v = getenv(name);
        dst[0] = '\0';
        if (v != NULL && strlen(v) < len)
                strcpy(dst, v);
}

static void read_env(void)
{
        copy_env(g_env.sock, sizeof(g_env.sock), AP_ENV_SOCKET);
        const char *mode = getenv(AP_ENV_MODE);
        g_env.dormant = mode != NULL && strcmp(mode, "dormant") == 0;
        g_env.interval = parse_u64(getenv(AP_ENV_SAMPLE));
        g_env.seed = parse_u64(getenv(AP_ENV_SAMPLE_SEED));
        copy_env(g_env.unwind, sizeof(g_env.unwind), AP_ENV_UNWIND);
        copy_env(g_env.seccomp, sizeof(g_env.seccomp), AP_ENV_SECCOMP);
        g_env.read = true;
}

/* Where the program's calls to malloc go when that is not this agent: an executable that
 * defines malloc itself (a Rust program with jemalloc built in, say), or a library
 * preloaded ahead of the agent, comes first in the lookup order, and those calls never
 * reach the hooks.  Looked up once, in the constructor; the collector is told the address
 * (AP_CNT_FOREIGN_MALLOC) and names its module.  0: the agent's own. */
static uint64_t g_foreign_malloc;

static void find_foreign_malloc(void)
{
        void *m = dlsym(RTLD_DEFAULT, "malloc");
        Dl_info mine, theirs;
        const ElfW(Sym) *sym = NULL;
        if (m == NULL || dladdr((void *)find_foreign_malloc, &mine) == 0 ||
            dladdr1(m, &theirs, (void **)&sym, RTLD_DL_SYMENT) == 0 ||
            theirs.dli_fbase == mine.dli_fbase)
                return;
        /* A position-dependent executable that takes malloc's address in its code (as
         * Debian's python3 does) has an undefined `malloc` whose value is its PLT entry,
         * the function's canonical address: what dlsym returns, though the calls go
         * through that entry to the first definition, ours.  Not a malloc of its own. */
        if (sym != NULL && sym->st_shndx == SHN_UNDEF && theirs.dli_saddr == m)
                return;
        g_foreign_malloc = (uint64_t)(uintptr_t)m;
}

/* Tells the collector why this image does not register (wire.h: struct ap_unregistered),
 * if it has no profiled ancestor to count itself into.  Best effort, never waits. */
static void say_unregistered(const char *sock_path, uint32_t why, int err, uint64_t limit)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (g_report_hdr != NULL || strlen(sock_path) >= sizeof(sa.sun_path))
                return;
        strcpy(sa.sun_path, sock_path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return;
        struct ap_unregistered msg = {.magic = AP_UNREG_MAGIC,
                                      .layout_version = AP_LAYOUT_VERSION,
                                      .why = why,
                                      .err = err > 0 ? (uint32_t)err : 0,
                                      .limit = limit};
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
                (void)!send(fd, &msg, sizeof(msg), MSG_NOSIGNAL | MSG_DONTWAIT);
        close(fd);
}

/* Whether the process's limits leave room for a session: 0, or -errno after saying why.
 * Sets g_slots_allowed. */
static int check_limits(const char *sock_path, uint64_t total)
{
        struct rlimit rl;
        /* Sizing the memfd past RLIMIT_FSIZE fails with EFBIG and raises SIGXFSZ, which
         * kills a program that does not expect it (under `ulimit -f`, say). */
        if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            rl.rlim_cur < total) {
                say_unregistered(sock_path, AP_UNREG_FSIZE_LIMIT, 0, rl.rlim_cur);
                return -EFBIG;
        }
        g_slots_allowed = AP_NSLOTS - 1;
        if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
                const uint64_t share = rl.rlim_cur / AP_AS_SHARE;
                const uint64_t initial = ap_shm_registration_bytes(g_page);
                if (initial > share) {
                        say_unregistered(sock_path, AP_UNREG_AS_LIMIT, 0, rl.rlim_cur);
                        return -ENOMEM;
                }
                uint64_t more = (share - initial) / slot_map_len(1);
                if (more < g_slots_allowed)
                        g_slots_allowed = (uint32_t)more;
        }
        return 0;
}

static int session_start(const char *sock_path)
{
        const uint64_t total = ap_shm_total_bytes();
        /* The head and the tail now, the other slots when claimed (see map_slot). */
        g_page = (uint64_t)getpagesize();
        g_head_len = ap_shm_head_bytes(g_page);
        g_tail_off = ap_shm_tail_off(g_page);
        g_tail_len = total - g_tail_off;
        int r = check_limits(sock_path, total);
        if (r < 0)
                return r;
        int fd = memfd_create("allocprof", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) {
                r = -errno;
                say_unregistered(sock_path, AP_UNREG_MEMFD, -r, 0);
                return r;
        }
        if (ftruncate(fd, (off_t)total) < 0) {
                r = -errno;
                say_unregistered(sock_path, AP_UNREG_SHM, -r, 0);
                goto out_close;
        }
        (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
        void *map = mmap(NULL, g_head_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        void *tail = map == MAP_FAILED ? MAP_FAILED
                                       : mmap(NULL, g_tail_len, PROT_READ | PROT_WRITE, MAP_SHARED,
                                              fd, (off_t)g_tail_off);
        if (tail == MAP_FAILED) {
                r = -errno;
                say_unregistered(sock_path, AP_UNREG_SHM, -r, 0);
                if (map != MAP_FAILED)
                        munmap(map, g_head_len);
                goto out_close;
        }
        g_head = map;
        g_tail = tail;
        ap_store_release(&g_slot_page[0], (uintptr_t)map + slot_page(0));
        /* Kept out of the program's core dumps: a shared mapping is dumped in full by
         * default (the slots mapped later: map_slot). */
        (void)madvise(map, g_head_len, MADV_DONTDUMP);
        (void)madvise(tail, g_tail_len, MADV_DONTDUMP);
        struct ap_shm_header *h = map;
        ap_shm_init_layout(h);
        h->pid = (uint32_t)getpid();
        h->ppid = (uint32_t)getppid();
        h->start_ns = ap_clock_mono_ns();
        h->start_ticks = ap_clock_ticks();
        h->clock_kind = AP_CLOCK_KIND;
        const uint8_t *rnd = (const uint8_t *)getauxval(AT_RANDOM);
        uint64_t id = h->start_ns ^ ((uint64_t)h->pid << 40);
        if (rnd != NULL)
                memcpy(&id, rnd, sizeof(id));
        h->exec_id = id ^ (ap_load_relaxed(&ap_session_gen) * 0x9e3779b97f4a7c15ull);
        uint64_t interval = g_env.interval;
        ap_sample_seed = g_env.seed;
        ap_unwind_fp = strcmp(g_env.unwind, "fp") == 0;
        /* "libunwind": every stack through libunwind (the reference the cached unwinder
         * is tested against). */
        ap_unwind_general = strcmp(g_env.unwind, "libunwind") == 0;
        uint32_t m = interval ? AP_MODE_SAMPLED : AP_MODE_FULL;
        if (g_env.dormant)
                m = AP_MODE_DORMANT;
        if (g_env.dormant && (g_parent_mode == AP_MODE_SAMPLED || g_parent_mode == AP_MODE_FULL)) {
                m = g_parent_mode; /* forked while attached: see g_parent_mode */
                interval = g_parent_interval;
        }
        ap_store_relaxed(&h->xsample_interval, interval ? interval : 512 * 1024);
        ap_store_relaxed(&h->xmode, m);
        ap_store_relaxed(&h->xcounters[AP_CNT_FOREIGN_MALLOC], g_foreign_malloc);

        if (g_exe_path[0] == '\0') {
                ssize_t l = readlink("/proc/self/exe", g_exe_path, sizeof(g_exe_path) - 1);
                g_exe_path[l > 0 ? l : 0] = '\0';
        }
        r = ap_stacks_init();
        if (r < 0)
                goto out_unmap;
        (void)ap_unwind_init(); /* without its cache, libunwind does every stack */

        /* Log the modules before the collector can see a single record. */
        pthread_mutex_lock(&g_mod_lock);
        ap_store_relaxed(&g_nknown, 0);
        dl_iterate_phdr(scan_cb, h);
        pthread_mutex_unlock(&g_mod_lock);

        r = send_hello(sock_path, fd, h);
        if (r < 0)
                goto out_unmap;
        close(fd);
        /* Once per image (a fork child inherits the page, zeroed): see ap_fork_mark. */
        if (ap_fork_mark == NULL) {
                void *page = mmap(NULL, g_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                  -1, 0);
                if (page != MAP_FAILED && madvise(page, g_page, MADV_WIPEONFORK) == 0)
                        ap_fork_mark = page;
                else if (page != MAP_FAILED)
                        munmap(page, g_page);
        }
        if (ap_fork_mark != NULL)
                ap_store_relaxed(ap_fork_mark, 1);
        /* Release pairs with the hooks' acquire: the header, the module log and the
         * stack index are ready before any thread records into this session. */
        atomic_store_explicit(&ap_session, h, memory_order_release);
        /* Release after the store above: see ap_mode_word in agent.h. */
        atomic_store_explicit(&ap_mode_word, &h->xmode, memory_order_release);
        return 0;

out_unmap:
        unmap_session();
out_close:
        close(fd);
        return r;
}

static void fork_child(void)
{
        /* The mappings we inherited are our parent's: unmap them (else each generation
         * of forks would keep its ancestors' rings, RLIMIT_AS's business) and register
         * anew on the next call.  Only this thread exists in the child. */
        atomic_store_explicit(&ap_session, NULL, memory_order_relaxed);
        atomic_store_explicit(&ap_mode_word, &g_mode_untried, memory_order_relaxed);
        ap_fetch_add_relaxed(&ap_session_gen, 1);
        ap_store_relaxed(&ap_waiters, 0); /* the waiting threads stayed in the parent */
        ap_tls.ctl = NULL;
        ap_tls.nctl = NULL;
        ap_tls.sampler_ready = 0; /* a stream of its own, from the first allocation */
        ap_tls.sampler.left = 0;
        pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
        memcpy(&g_mod_lock, &fresh, sizeof(fresh));
        ap_store_relaxed(&g_init_state, INIT_UNTRIED);
        ap_store_relaxed(&g_map_retry_at, 0);
        /* The parent's header page stays, to report into (g_report_hdr); an ancestor's
         * page kept before goes, the parent being nearer.  Its mode is the one we start
         * in if it was attached (g_parent_mode; relaxed: the collector may flip it at any
         * time, and the fork is as good a moment as any). */
        if (g_head != NULL && g_head_len > g_page) {
                const struct ap_shm_header *ph = (const struct ap_shm_header *)g_head;
                g_parent_mode = ap_load_relaxed(&ph->xmode);
                g_parent_interval = ap_load_relaxed(&ph->xsample_interval);
                if (g_report_hdr != NULL)
                        munmap(g_report_hdr, g_page);
                g_report_hdr = (struct ap_shm_header *)g_head;
                munmap(g_head + g_page, g_head_len - g_page);
                g_head = NULL;
        }
        unmap_session();
}

/* A fork child's registration is settled: -EPERM is the collector's "not this one" (run
 * --no-follow), not a failure. */
static void report_registration(int r)
{
        if (g_report_hdr == NULL || r == -EPERM)
                return;
        if (r < 0) {
                ap_fetch_add_relaxed(&g_report_hdr->xcounters[AP_CNT_CHILDREN_UNPROFILED], 1);
                return;
        }
        munmap(g_report_hdr, g_page);
        g_report_hdr = NULL;
}

/* ---- seccomp ------------------------------------------------------------------------
 * A program that installs a seccomp filter may forbid what a registration needs
 * (memfd_create, socket, connect, sendmsg, ...), and the filter may kill the process
 * rather than fail the call (SECCOMP_RET_KILL_PROCESS, or SECCOMP_RET_TRAP without a
 * handler): its fork children, which register on their first allocation, died of SIGSYS.
 * A filter cannot be read back, so the agent wraps the ways a program installs one
 * through the C library, prctl(PR_SET_SECCOMP) and syscall(SYS_seccomp) (libseccomp uses
 * them), and once one succeeded registers nothing more: the process's fork children run
 * unprofiled.  The agent's own system calls do not go through the syscall wrapper
 * (memfd_create(3), gettid(3)).  Relaxed: a fork child reads its parent's store in its
 * copy of memory; a thread that forks while another installs a filter races with the
 * program itself. */
static _Atomic int g_sandboxed;

typedef int (*prctl_fn)(int, unsigned long, unsigned long, unsigned long, unsigned long);
typedef long (*syscall_fn)(long, long, long, long, long, long, long);
static _Atomic(prctl_fn) g_real_prctl;
static _Atomic(syscall_fn) g_real_syscall;

/* The C library's prctl and syscall, looked up in the constructor (dlsym in a hook could
 * wait for the loader's lock), or at the program's first call before it. */
static void resolve_wrapped(void)
{
        if (ap_load_relaxed(&g_real_prctl) == NULL)
                ap_store_relaxed(&g_real_prctl, (prctl_fn)dlsym(RTLD_NEXT, "prctl"));
        if (ap_load_relaxed(&g_real_syscall) == NULL)
                ap_store_relaxed(&g_real_syscall, (syscall_fn)dlsym(RTLD_NEXT, "syscall"));
}

__attribute__((visibility("default"))) int prctl(int option, ...)
{
        va_list ap;
        va_start(ap, option);
        unsigned long a[4];
        for (int i = 0; i < 4; i++)
                a[i] = va_arg(ap, unsigned long);
        va_end(ap);
        prctl_fn f = ap_load_relaxed(&g_real_prctl);
        if (f == NULL) {
                resolve_wrapped();
                if ((f = ap_load_relaxed(&g_real_prctl)) == NULL) {
                        errno = ENOSYS;
                        return -1;
                }
        }
        int r = f(option, a[0], a[1], a[2], a[3]);
        if (r == 0 && option == PR_SET_SECCOMP)
                ap_store_relaxed(&g_sandboxed, 1);
        return r;
}

__attribute__((visibility("default"))) long syscall(long number, ...)
{
        va_list ap;
        va_start(ap, number);
        long a[6];
        for (int i = 0; i < 6; i++)
                a[i] = va_arg(ap, long);
        va_end(ap);
        syscall_fn f = ap_load_relaxed(&g_real_syscall);
        if (f == NULL) {
                resolve_wrapped();
                if ((f = ap_load_relaxed(&g_real_syscall)) == NULL) {
                        errno = ENOSYS;
                        return -1;
                }
        }
        /* An exec by system call is said as exec.c's wrappers say theirs. */
        void *exec_h = ap_exec_syscall_begin(number, a[0], a[1], a[4]);
        long r = f(number, a[0], a[1], a[2], a[3], a[4], a[5]);
        ap_exec_syscall_failed(exec_h);
        /* SECCOMP_SET_MODE_STRICT (0) and _FILTER (1); a filter with a listener returns
         * its descriptor. */
        if (r >= 0 && ((number == SYS_seccomp && (unsigned long)a[0] <= SECCOMP_SET_MODE_FILTER) ||
                       (number == SYS_prctl && a[0] == PR_SET_SECCOMP)))
                ap_store_relaxed(&g_sandboxed, 1);
        return r;
}

AP_HIDDEN long ap_sys_getcwd(char *buf, size_t size)
{
        syscall_fn f = ap_load_relaxed(&g_real_syscall);
        if (f == NULL || ap_load_relaxed(&g_sandboxed))
                return -1;
        return f(SYS_getcwd, (long)buf, (long)size, 0, 0, 0, 0);
}

/* Started by `allocprof run` (ALLOCPROF_SECCOMP set), are we under seccomp filters it
 * was not?  Then an ancestor sandboxed itself and exec'ed us (or we are a fork child of
 * such an image), and a filter that kills on what registering takes may be in force:
 * this process stays unprofiled, as the children of a process that installed one do. */
static bool sandboxed_since_run(void)
{
        struct ap_seccomp_state base;
        if (g_env.seccomp[0] == '\0' || !ap_seccomp_parse(g_env.seccomp, &base))
                return false;
        return ap_seccomp_added(base, ap_seccomp_now());
}

AP_HIDDEN void ap_session_forked(bool reregister)
{
        fork_child();
        if (reregister) {
                ap_tls.own_alloc++;
                ap_session_ensure();
                ap_tls.own_alloc--;
        }
}

extern char **environ;

AP_HIDDEN void ap_session_ensure(void)
{
        int expected = INIT_UNTRIED;
        if (ap_load_relaxed(&g_init_state) != INIT_UNTRIED ||
            !ap_cas_acq_rel(&g_init_state, &expected, INIT_BUSY))
                return;
        if (!g_env.read && environ == NULL) {
                /* Too early in process start-up to read the environment: try later.  (Once
                 * read, a NULL environ is a program's clearenv(): see g_env.) */
                ap_store_release(&g_init_state, INIT_UNTRIED);
                return;
        }
        if (!g_env.read)
                read_env();
        const char *sock = g_env.sock;
        if (sock[0] != '\0' && (ap_load_relaxed(&g_sandboxed) || sandboxed_since_run())) {
                report_registration(-EACCES);
        } else if (sock[0] != '\0') {
                if (!ap_load_relaxed(&g_thread_key_ok) &&
                    pthread_key_create(&g_thread_key, thread_exit_cb) == 0)
                        ap_store_relaxed(&g_thread_key_ok, 1);
                report_registration(session_start(sock));
        }
        /* No session now means none ever (until a fork): the hooks pass every call
         * straight through from here on. */
        if (atomic_load_explicit(&ap_session, memory_order_relaxed) == NULL)
                atomic_store_explicit(&ap_mode_word, &g_mode_none, memory_order_release);
        ap_store_release(&g_init_state, INIT_DONE);
}

/* --unwind libunwind: libunwind is loaded here, in the constructor (where dlopen is
 * safe, unlike in a hook that may run inside the loader or a signal handler), and only
 * then: every other program is spared loading it and liblzma (0.14 ms at each start)
 * and the pipe libunwind keeps open.  Until it is there (allocations before this
 * constructor), and if it cannot be loaded, the agent's own unwinders do the work; the
 * CLI refuses the option where the library is missing. */
static void load_libunwind(void)
{
        const char *unwind = getenv(AP_ENV_UNWIND);
        if (unwind == NULL || strcmp(unwind, "libunwind") != 0 ||
            ap_load_relaxed(&ap_unw_backtrace) != NULL)
                return;
        void *lib = dlopen(AP_LIBUNWIND_SONAME, RTLD_NOW | RTLD_LOCAL);
        void *fn = lib != NULL ? dlsym(lib, "unw_backtrace") : NULL;
        /* Relaxed: a thread that sees NULL a while longer uses the other unwinders. */
        ap_store_relaxed(&ap_unw_backtrace, (int (*)(void **, int))fn);
}

__attribute__((constructor(101))) static void ap_agent_ctor(void)
{
        struct ap_thread *t = &ap_tls;
        t->in_hook = 1; /* our own set-up allocations are not the program's */
        t->own_alloc++;
        if (environ != NULL)
                load_libunwind();
        ap_resolve_getattr();
        resolve_wrapped();
        ap_exec_resolve();
        find_foreign_malloc();
        ap_session_ensure();
        static int atfork_done;
        if (!atfork_done) {
                atfork_done = 1;
                pthread_atfork(NULL, NULL, fork_child);
        }
        t->own_alloc--;
        t->in_hook = 0;
}
