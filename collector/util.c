/* Small containers and helpers (see util.h).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "allocprof/clock.h"
#include "util.h"

int ap_grow(void **items, size_t *cap, size_t need, size_t elem)
{
        if (need <= *cap)
                return 0;
        size_t n = *cap ? *cap : 16;
        while (n < need) {
                if (n > SIZE_MAX / 2 / elem)
                        return -ENOMEM;
                n *= 2;
        }
        void *p = realloc(*items, n * elem);
        if (p == NULL)
                return -ENOMEM;
        *items = p;
        *cap = n;
        return 0;
}

uint64_t *ap_map_get(const struct ap_map *m, uint64_t key)
{
        if (m->cap == 0 || key == 0)
                return NULL;
        size_t mask = m->cap - 1;
        for (size_t i = ap_mix64(key) & mask;; i = (i + 1) & mask) {
                if (m->keys[i] == key)
                        return &m->vals[i];
                if (m->keys[i] == 0)
                        return NULL;
        }
}

static int map_resize(struct ap_map *m, size_t cap)
{
        uint64_t *keys = calloc(cap, sizeof(*keys));
        uint64_t *vals = malloc(cap * sizeof(*vals));
        if (keys == NULL || vals == NULL) {
                free(keys);
                free(vals);
                return -ENOMEM;
        }
        size_t mask = cap - 1;
        for (size_t j = 0; j < m->cap; j++) {
                if (m->keys[j] == 0)
                        continue;
                size_t i = ap_mix64(m->keys[j]) & mask;
                while (keys[i] != 0)
                        i = (i + 1) & mask;
                keys[i] = m->keys[j];
                vals[i] = m->vals[j];
        }
        free(m->keys);
        free(m->vals);
        m->keys = keys;
        m->vals = vals;
        m->cap = cap;
        return 0;
}

int ap_map_put(struct ap_map *m, uint64_t key, uint64_t val)
{
        if (key == 0)
                return -EINVAL;
        if ((m->len + 1) * 4 > m->cap * 3) {
                int r = map_resize(m, m->cap ? m->cap * 2 : 64);
                if (r < 0)
                        return r;
        }
        size_t mask = m->cap - 1;
        size_t i = ap_mix64(key) & mask;
        while (m->keys[i] != 0 && m->keys[i] != key)
                i = (i + 1) & mask;
        if (m->keys[i] == 0) {
                m->keys[i] = key;
                m->len++;
        }
        m->vals[i] = val;
        return 0;
}

bool ap_map_del(struct ap_map *m, uint64_t key)
{
        if (m->cap == 0 || key == 0)
                return false;
        size_t mask = m->cap - 1;
        size_t i = ap_mix64(key) & mask;
        while (m->keys[i] != key) {
                if (m->keys[i] == 0)
                        return false;
                i = (i + 1) & mask;
        }
        /* Backward-shift deletion keeps probe chains intact without tombstones. */
        size_t j = i;
        for (;;) {
                j = (j + 1) & mask;
                if (m->keys[j] == 0)
                        break;
                size_t home = ap_mix64(m->keys[j]) & mask;
                /* Move j into the hole at i unless its home lies cyclically in (i, j]. */
                bool in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
                if (in_range)
                        continue;
                m->keys[i] = m->keys[j];
                m->vals[i] = m->vals[j];
                i = j;
        }
        m->keys[i] = 0;
        m->len--;
        return true;
}

void ap_map_clear(struct ap_map *m)
{
        free(m->keys);
        free(m->vals);
        m->keys = NULL;
        m->vals = NULL;
        m->cap = m->len = 0;
}

/* The 128-bit product of a and b, its halves folded together. */
static inline uint64_t fold_mul(uint64_t a, uint64_t b)
{
        unsigned __int128 r = (unsigned __int128)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* 16 bytes a step, one wide multiplication each, the state mixed into both factors and
 * added back (a factor that comes out 0 then loses one word, not the state); then a full
 * mix.  A word at a time through ap_mix64, two dependent multiplications each, was a
 * tenth of the collector's time on a program with a million distinct stacks (each stack's
 * return addresses are hashed when it arrives and its frames when its site is made). */
uint64_t ap_hash_bytes(const void *p, size_t n)
{
        const uint8_t *b = p;
        uint64_t h = 0xcbf29ce484222325ull ^ n;
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
                uint64_t w0, w1;
                memcpy(&w0, b + i, 8);
                memcpy(&w1, b + i + 8, 8);
                h += fold_mul(w0 ^ h ^ 0xa0761d6478bd642full, w1 ^ 0xe7037ed1a0b428dbull);
        }
        uint64_t t0 = 0, t1 = 0;
        size_t rest = n - i;
        if (rest > 0) /* p may be NULL when n is 0 */
                memcpy(&t0, b + i, rest < 8 ? rest : 8);
        if (rest > 8)
                memcpy(&t1, b + i + 8, rest - 8);
        h += fold_mul(t0 ^ h ^ 0x8ebc6af09c88c6e3ull, t1 ^ 0x589965cc75374cc3ull);
        return ap_mix64(h);
}

size_t ap_utf8_len(const unsigned char *s)
{
        unsigned c = s[0];
        uint32_t cp;
        size_t n;

        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                n = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
                n = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
                n = 4, cp = c & 0x07;
        else
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return n;
}

char *ap_asprintf(const char *fmt, ...)
{
        va_list ap;
        char *s = NULL;
        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        return r < 0 ? NULL : s;
}

const char *ap_fmt_bytes(char *buf, size_t len, uint64_t bytes)
{
        static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
        if (bytes < 1024) {
                snprintf(buf, len, "%llu B", (unsigned long long)bytes);
                return buf;
        }
        double v = (double)bytes;
        int u = 0;
        while (v >= 1024.0 && u < 5) {
                v /= 1024.0;
                u++;
        }
        snprintf(buf, len, "%.2f %s", v, units[u]);
        return buf;
}

uint64_t ap_realtime_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

ssize_t ap_read_file(const char *path, char **ret, size_t max)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        char *buf = malloc(max + 1);
        if (buf == NULL) {
                close(fd);
                return -ENOMEM;
        }
        size_t n = 0;
        while (n < max) {
                ssize_t r = read(fd, buf + n, max - n);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        int e = -errno;
                        free(buf);
                        close(fd);
                        return e;
                }
                if (r == 0)
                        break;
                n += (size_t)r;
        }
        close(fd);
        buf[n] = '\0';
        *ret = buf;
        return (ssize_t)n;
}

bool ap_proc_stat(pid_t pid, struct ap_proc_stat *ret)
{
        char path[64], *buf = NULL;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        ssize_t n = ap_read_file(path, &buf, 4096);
        /* "pid (comm) state ppid ...": comm may hold anything, so parse from the last ')'. */
        char *rp = n > 0 ? strrchr(buf, ')') : NULL;
        int ppid = -1;
        unsigned long long start = 0;
        /* fields 3 and 4, then 5-21 skipped, then 22 */
        ret->state = 0;
        bool ok = rp != NULL &&
                  sscanf(rp + 1,
                         " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d "
                         "%*d %llu",
                         &ret->state, &ppid, &start) == 3;
        free(buf);
        ret->ppid = ppid;
        ret->start = start;
        return ok;
}

/* The first (ns, ticks) pair of the calibration, read when the program starts. */
static uint64_t calib_ns0, calib_ticks0;

static __attribute__((constructor)) void calib_start(void)
{
        calib_ns0 = ap_clock_mono_ns();
        calib_ticks0 = ap_clock_ticks();
}

double ap_ns_per_tick(void)
{
        static double cached;
        if (cached > 0)
                return cached;
        if (AP_CLOCK_KIND == AP_CLOCK_MONOTONIC_NS)
                return cached = 1.0;
        /* Two (ns, ticks) pairs at least 1 ms apart: each read pair is ~40 ns wide, so the
         * ratio is good to about 4 parts in 10^5 (4 ms in a 100 s run), plenty for
         * timelines and durations.  `allocprof run` first needs it at its program's
         * first drain, right after the program registers, 1.2 ms or more after its own
         * start on a fast machine; a call that comes sooner sleeps the rest rather than
         * spin on a core the program may want. */
        const uint64_t span = 1000000;
        uint64_t n1 = ap_clock_mono_ns(), t1;
        if (n1 - calib_ns0 < span) {
                uint64_t until = calib_ns0 + span;
                struct timespec ts = {.tv_sec = (time_t)(until / 1000000000),
                                      .tv_nsec = (long)(until % 1000000000)};
                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                        ;
        }
        do {
                n1 = ap_clock_mono_ns();
                t1 = ap_clock_ticks();
        } while (n1 - calib_ns0 < span);
        cached = t1 > calib_ticks0 ? (double)(n1 - calib_ns0) / (double)(t1 - calib_ticks0) : 1.0;
        return cached;
}

/* True if the file's capabilities (security.capability) permit any: exec'ed by a user
 * other than root, who starts with none, the image gains them and runs securely. */
static bool exe_gains_caps(const char *path)
{
        if (geteuid() == 0)
                return false;
        struct vfs_ns_cap_data caps;
        memset(&caps, 0, sizeof(caps));
        ssize_t n = getxattr(path, "security.capability", &caps, sizeof(caps));
        if (n < (ssize_t)XATTR_CAPS_SZ_1)
                return false;
        uint32_t permitted = caps.data[0].permitted;
        /* Revisions 2 and 3 carry the upper 32 capabilities too. */
        if ((caps.magic_etc & VFS_CAP_REVISION_MASK) != VFS_CAP_REVISION_1 &&
            n >= (ssize_t)XATTR_CAPS_SZ_2)
                permitted |= caps.data[1].permitted;
        return permitted != 0;
}

enum ap_exe_why ap_exe_unprofilable(const char *path)
{
        struct stat st;
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
                return AP_EXE_PROFILABLE;
        if (((st.st_mode & S_ISUID) && st.st_uid != geteuid()) ||
            ((st.st_mode & S_ISGID) && st.st_gid != getegid()))
                return AP_EXE_SETID;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
                return AP_EXE_PROFILABLE;
        Elf64_Ehdr eh;
        enum ap_exe_why r = AP_EXE_PROFILABLE;
        if (pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh) &&
            memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 && eh.e_ident[EI_CLASS] == ELFCLASS64 &&
            eh.e_phentsize == sizeof(Elf64_Phdr) && eh.e_phnum < 4096 &&
            (eh.e_type == ET_EXEC || eh.e_type == ET_DYN)) {
                bool interp = false;
                for (unsigned i = 0; i < eh.e_phnum; i++) {
                        Elf64_Phdr ph;
                        if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + i * sizeof(ph))) !=
                            (ssize_t)sizeof(ph))
                                break;
                        interp |= ph.p_type == PT_INTERP;
                }
                /* No interpreter: nothing reads LD_PRELOAD (static or static-pie). */
                r = interp ? AP_EXE_PROFILABLE : AP_EXE_STATIC;
        }
        close(fd);
        if (r == AP_EXE_PROFILABLE && exe_gains_caps(path))
                r = AP_EXE_FILECAPS;
        return r;
}

const char *ap_exe_why_text(enum ap_exe_why why)
{
        switch (why) {
        case AP_EXE_STATIC:
                return "statically linked";
        case AP_EXE_SETID:
                return "set-user-ID or set-group-ID";
        case AP_EXE_FILECAPS:
                return "given file capabilities";
        case AP_EXE_PROFILABLE:
                break;
        }
        return "profilable";
}

/* "512K" -> 524288.  Returns 0, -EINVAL, or -ERANGE above AP_SIZE_MAX. */
int ap_parse_size(const char *s, uint64_t *ret)
{
        char *end;
        errno = 0;
        if (s[0] < '0' || s[0] > '9')
                return -EINVAL;
        unsigned long long v = strtoull(s, &end, 10);
        bool overflow = errno == ERANGE;
        unsigned shift = 0;
        switch (*end) {
        case '\0':
                break;
        case 'k':
        case 'K':
                shift = 10;
                break;
        case 'm':
        case 'M':
                shift = 20;
                break;
        case 'g':
        case 'G':
                shift = 30;
                break;
        default:
                return -EINVAL;
        }
        if (*end != '\0' && end[1] != '\0' &&
            !((end[1] == 'i' || end[1] == 'B') && end[2] == '\0') &&
            !(end[1] == 'i' && end[2] == 'B' && end[3] == '\0'))
                return -EINVAL;
        if (overflow || v > AP_SIZE_MAX >> shift)
                return -ERANGE;
        *ret = (uint64_t)v << shift;
        return 0;
}

ssize_t ap_recv_fds(int sock, void *buf, size_t len, int flags, int *fds, size_t *nfds,
                    int *msg_flags)
{
        struct iovec iov = {.iov_base = buf, .iov_len = len};
        union {
                char buf[CMSG_SPACE(sizeof(int) * AP_FDS_MAX)];
                struct cmsghdr align;
        } u;
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = u.buf,
                            .msg_controllen = sizeof(u.buf)};
        *nfds = 0;
        *msg_flags = 0;
        ssize_t n = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return -errno;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                        int got;
                        memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                        if (*nfds < AP_FDS_MAX)
                                fds[(*nfds)++] = got;
                        else
                                close(got);
                }
        }
        *msg_flags = mh.msg_flags;
        return n;
}

ssize_t ap_send_fd(int sock, const void *buf, size_t len, int flags, int fd)
{
        struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } u;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (fd >= 0) {
                memset(&u, 0, sizeof(u));
                mh.msg_control = u.buf;
                mh.msg_controllen = sizeof(u.buf);
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        }
        ssize_t n = sendmsg(sock, &mh, flags | MSG_NOSIGNAL);
        return n < 0 ? -errno : n;
}

const char *ap_path_base(const char *path)
{
        const char *slash = path ? strrchr(path, '/') : NULL;
        return slash && slash[1] ? slash + 1 : path;
}
