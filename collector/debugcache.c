/* The inflated-debug-file cache (see debugcache.h).
 *
 * An entry is an ELF file like the original, with each SHF_COMPRESSED section replaced by
 * its inflated contents.  Sections keep their order and, up to the first one that grows,
 * their offsets (so the note and program headers at the start stay where the program
 * headers say); the rest are packed behind, then the section header table.  Only 64-bit
 * files in the host's byte order are cached; anything else is used as it is.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "debugcache.h"
#include "util.h"
#include "allocprof/wire.h"

#include <dirent.h>
#include <elf.h>
#include <elfutils/libdwelf.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Files whose inflated size would pass this are left to libdw as they are. */
#define MAX_ENTRY_BYTES (512ULL << 20)
/* A temporary file this old was left by a collector that died while writing it. */
#define STALE_TMP_SECONDS 3600

/* <cache>/debug, malloc'd, or NULL when the cache is off. */
static char *cache_dir(void)
{
        const char *env = getenv("ALLOCPROF_CACHE_DIR"), *base = NULL, *sub = "";
        char *dir = NULL;
        if (env) {
                if (env[0] != '/')
                        return NULL; /* empty: off; relative: ambiguous in a daemon */
                base = env;
                sub = "/debug";
        } else if ((env = getenv("XDG_CACHE_HOME")) && env[0] == '/') {
                base = env;
                sub = "/allocprof/debug";
        } else if ((env = getenv("HOME")) && env[0] == '/') {
                base = env;
                sub = "/.cache/allocprof/debug";
        } else {
                return NULL;
        }
        if (asprintf(&dir, "%s%s", base, sub) < 0)
                return NULL;
        return dir;
}

/* mkdir -p; directories it creates are private to the user. */
static int make_dirs(char *path)
{
        for (char *p = path + 1;; p++) {
                if (*p != '/' && *p != '\0')
                        continue;
                char c = *p;
                *p = '\0';
                int r = mkdir(path, 0700);
                *p = c;
                if (r < 0 && errno != EEXIST)
                        return -errno;
                if (c == '\0')
                        return 0;
        }
}

/* Same file, same contents: device, inode, size and both change times. */
static uint64_t file_identity(const struct stat *st)
{
        const uint64_t v[] = {
                (uint64_t)st->st_dev,         (uint64_t)st->st_ino,          (uint64_t)st->st_size,
                (uint64_t)st->st_mtim.tv_sec, (uint64_t)st->st_mtim.tv_nsec, (uint64_t)st->st_ctim.tv_sec,
                (uint64_t)st->st_ctim.tv_nsec,
        };
        uint64_t h = 0x6170646562756721ULL;
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
                h = ap_mix64(h ^ v[i]);
        return h;
}

/* The file's own build-id, or 0 bytes. */
static size_t elf_build_id(Elf *elf, uint8_t *buf)
{
        const void *bits = NULL;
        ssize_t len = dwelf_elf_gnu_build_id(elf, &bits);
        if (len <= 0 || len > AP_MAX_BUILD_ID || !bits)
                return 0;
        memcpy(buf, bits, (size_t)len);
        return (size_t)len;
}

/* Sum of the inflated sizes of the compressed sections; 0 when there are none, or when the
 * file is one this cache does not handle. */
static uint64_t inflated_bytes(Elf *elf)
{
        uint64_t total = 0;
        for (Elf_Scn *scn = elf_nextscn(elf, NULL); scn; scn = elf_nextscn(elf, scn)) {
                GElf_Shdr sh;
                if (!gelf_getshdr(scn, &sh))
                        return 0;
                if (!(sh.sh_flags & SHF_COMPRESSED) || sh.sh_type == SHT_NOBITS)
                        continue;
                GElf_Chdr ch;
                if (!gelf_getchdr(scn, &ch) || ch.ch_size > MAX_ENTRY_BYTES)
                        return 0;
                total += ch.ch_size;
                if (total > MAX_ENTRY_BYTES)
                        return 0;
        }
        return total;
}

int ap_elf_section(Elf *elf, const char *name, Elf_Scn **ret, GElf_Shdr *ret_sh)
{
        size_t shstrndx;
        if (elf_getshdrstrndx(elf, &shstrndx) < 0)
                return -1;
        for (Elf_Scn *scn = elf_nextscn(elf, NULL); scn; scn = elf_nextscn(elf, scn)) {
                if (!gelf_getshdr(scn, ret_sh))
                        return -1;
                const char *n = elf_strptr(elf, shstrndx, ret_sh->sh_name);
                if (n && strcmp(n, name) == 0) {
                        *ret = scn;
                        return 1;
                }
        }
        return 0;
}

/* A relative .gnu_debugaltlink is resolved from the debug file's directory, which a copy
 * in the cache does not share. */
static bool has_relative_altlink(Elf *elf)
{
        Elf_Scn *scn;
        GElf_Shdr sh;
        int r = ap_elf_section(elf, ".gnu_debugaltlink", &scn, &sh);
        if (r <= 0)
                return r < 0;
        Elf_Data *d = elf_rawdata(scn, NULL);
        return !d || d->d_size == 0 || ((const char *)d->d_buf)[0] != '/';
}

static bool pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
        const char *p = buf;
        while (len) {
                ssize_t n = pwrite(fd, p, len, (off_t)off);
                if (n <= 0) {
                        if (n < 0 && errno == EINTR)
                                continue;
                        return false;
                }
                p += n;
                len -= (size_t)n;
                off += (uint64_t)n;
        }
        return true;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
        return a > 1 ? (v + a - 1) & ~(a - 1) : v;
}

/* Writes the inflated copy of `elf` (whose raw image is raw[0, rawsize)) to `out`.
 * Returns false for a file it cannot handle or a failed write. */
static bool write_inflated(Elf *elf, int out)
{
        size_t rawsize;
        const char *raw = elf_rawfile(elf, &rawsize);
        if (!raw || rawsize < sizeof(Elf64_Ehdr))
                return false;
        Elf64_Ehdr eh;
        memcpy(&eh, raw, sizeof(eh));
        const unsigned char host_data =
                __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB;
        size_t shnum;
        if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != host_data ||
            eh.e_shentsize != sizeof(Elf64_Shdr) || elf_getshdrnum(elf, &shnum) < 0 || shnum == 0 ||
            shnum > rawsize / sizeof(Elf64_Shdr) || eh.e_shoff > rawsize - shnum * sizeof(Elf64_Shdr))
                return false;
        uint64_t head = sizeof(eh);
        if (eh.e_phnum) {
                if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phoff > rawsize ||
                    eh.e_phnum > (rawsize - eh.e_phoff) / sizeof(Elf64_Phdr))
                        return false;
                uint64_t end = eh.e_phoff + (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr);
                head = end > head ? end : head;
        }

        Elf64_Shdr *sh = malloc(shnum * sizeof(*sh));
        uint64_t *old_off = malloc(shnum * sizeof(*old_off));
        bool ok = false;
        if (!sh || !old_off)
                goto out;
        memcpy(sh, raw + eh.e_shoff, shnum * sizeof(*sh));

        uint64_t pos = head;
        bool packing = false; /* once a section grew or overlaps, the rest are packed */
        for (size_t i = 1; i < shnum; i++) {
                Elf_Scn *scn = elf_getscn(elf, i);
                if (!scn)
                        goto out;
                old_off[i] = sh[i].sh_offset;
                const void *bytes = NULL;
                uint64_t size = sh[i].sh_size;
                if ((sh[i].sh_flags & SHF_COMPRESSED) && sh[i].sh_type != SHT_NOBITS) {
                        if (elf_compress(scn, 0, 0) != 1)
                                goto out;
                        GElf_Shdr now;
                        Elf_Data *d = elf_getdata(scn, NULL);
                        if (!gelf_getshdr(scn, &now) || !d || d->d_size != now.sh_size)
                                goto out;
                        sh[i].sh_flags = now.sh_flags;
                        sh[i].sh_addralign = now.sh_addralign;
                        sh[i].sh_size = size = now.sh_size;
                        bytes = d->d_buf;
                        packing = true;
                } else if (sh[i].sh_type != SHT_NOBITS && size) {
                        if (sh[i].sh_offset > rawsize || size > rawsize - sh[i].sh_offset)
                                goto out;
                        bytes = raw + sh[i].sh_offset;
                }
                uint64_t align = sh[i].sh_addralign;
                if (align > 4096 || (align & (align - 1)))
                        goto out;
                if (!bytes) {
                        /* No contents: an offset that is harmless where it points. */
                        sh[i].sh_offset = packing ? align_up(pos, align) : sh[i].sh_offset;
                        continue;
                }
                if (!packing && sh[i].sh_offset < pos)
                        packing = true;
                uint64_t off = packing ? align_up(pos, align) : sh[i].sh_offset;
                if (!pwrite_all(out, bytes, size, off))
                        goto out;
                sh[i].sh_offset = off;
                pos = off + size;
        }

        /* Program headers that start at a section (the build-id note) follow it. */
        if (eh.e_phnum) {
                Elf64_Phdr *ph = malloc(eh.e_phnum * sizeof(*ph));
                if (!ph)
                        goto out;
                memcpy(ph, raw + eh.e_phoff, eh.e_phnum * sizeof(*ph));
                for (size_t p = 0; p < eh.e_phnum; p++)
                        for (size_t i = 1; i < shnum; i++)
                                if (sh[i].sh_type != SHT_NOBITS && sh[i].sh_size &&
                                    old_off[i] == ph[p].p_offset) {
                                        ph[p].p_offset = sh[i].sh_offset;
                                        break;
                                }
                bool w = pwrite_all(out, ph, eh.e_phnum * sizeof(*ph), eh.e_phoff);
                free(ph);
                if (!w)
                        goto out;
        }
        eh.e_shoff = align_up(pos, 8);
        ok = pwrite_all(out, sh, shnum * sizeof(*sh), eh.e_shoff) &&
             pwrite_all(out, &eh, sizeof(eh), 0);
out:
        free(sh);
        free(old_off);
        return ok;
}

/* Whether every section of `elf` (its header table included) lies within the file's
 * `size` bytes.  A file cut short, or whose section header offset is damaged, has no
 * sections to libelf or sections it cannot read: as an entry it would hide the debug
 * information it stands for. */
static bool complete_elf(Elf *elf, uint64_t size)
{
        size_t shnum;
        GElf_Ehdr eh;
        if (!gelf_getehdr(elf, &eh) || elf_getshdrnum(elf, &shnum) < 0 || shnum < 2 ||
            eh.e_shoff > size || (uint64_t)shnum * eh.e_shentsize > size - eh.e_shoff)
                return false;
        for (Elf_Scn *scn = elf_nextscn(elf, NULL); scn; scn = elf_nextscn(elf, scn)) {
                GElf_Shdr sh;
                if (!gelf_getshdr(scn, &sh))
                        return false;
                if (sh.sh_type != SHT_NOBITS &&
                    (sh.sh_offset > size || sh.sh_size > size - sh.sh_offset))
                        return false;
        }
        return true;
}

/* Opens entry `path` if it is a complete one of ours with the given build-id.  Returns the
 * descriptor or -1 (a damaged entry is then written anew over it). */
static int open_entry(const char *path, const uint8_t *id, size_t id_len)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
                return -1;
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
                close(fd);
                return -1;
        }
        bool good = false;
        Elf *elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
        if (elf && elf_kind(elf) == ELF_K_ELF) {
                uint8_t got[AP_MAX_BUILD_ID];
                size_t len = elf_build_id(elf, got);
                good = len == id_len && memcmp(got, id, len) == 0 &&
                       complete_elf(elf, (uint64_t)st.st_size) && inflated_bytes(elf) == 0;
        }
        elf_end(elf);
        if (!good) {
                close(fd);
                return -1;
        }
        /* The modification time orders entries for eviction: this one was just used. */
        futimens(fd, NULL);
        return fd;
}

struct entry {
        char *name;
        off_t size;
        struct timespec mtime;
};

static int cmp_entry_age(const void *a, const void *b)
{
        const struct entry *x = a, *y = b;
        if (x->mtime.tv_sec != y->mtime.tv_sec)
                return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
        return (x->mtime.tv_nsec > y->mtime.tv_nsec) - (x->mtime.tv_nsec < y->mtime.tv_nsec);
}

/* Keeps the directory under AP_DEBUGCACHE_MAX_BYTES, oldest entries first, and removes
 * stale temporary files.  `keep` (just written) is never removed. */
static void prune(const char *dir, const char *keep)
{
        DIR *d = opendir(dir);
        if (!d)
                return;
        struct entry *v = NULL;
        size_t n = 0, cap = 0;
        uint64_t total = 0;
        time_t now = time(NULL);
        for (struct dirent *de; (de = readdir(d));) {
                size_t len = strlen(de->d_name);
                bool tmp = de->d_name[0] == '.' && strstr(de->d_name, ".tmp.");
                if (!tmp && (len < 7 || strcmp(de->d_name + len - 6, ".debug") != 0))
                        continue;
                struct stat st;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                        continue;
                if (tmp) {
                        if (now - st.st_mtim.tv_sec > STALE_TMP_SECONDS)
                                unlinkat(dirfd(d), de->d_name, 0);
                        continue;
                }
                total += (uint64_t)st.st_blocks * 512;
                if (strcmp(de->d_name, keep) == 0)
                        continue;
                if (n == cap) {
                        size_t ncap = cap ? cap * 2 : 64;
                        struct entry *nv = realloc(v, ncap * sizeof(*v));
                        if (!nv)
                                break;
                        v = nv;
                        cap = ncap;
                }
                char *name = strdup(de->d_name);
                if (!name)
                        break;
                v[n++] = (struct entry){name, (off_t)st.st_blocks * 512, st.st_mtim};
        }
        if (total > AP_DEBUGCACHE_MAX_BYTES) {
                qsort(v, n, sizeof(*v), cmp_entry_age);
                for (size_t i = 0; i < n && total > AP_DEBUGCACHE_MAX_BYTES; i++)
                        if (unlinkat(dirfd(d), v[i].name, 0) == 0)
                                total -= (uint64_t)v[i].size;
        }
        for (size_t i = 0; i < n; i++)
                free(v[i].name);
        free(v);
        closedir(d);
}

/* Writes the inflated copy of `elf` as entry `name` of `dir` and opens it.  Returns the
 * descriptor or -1. */
static int make_entry(char *dir, const char *name, Elf *elf, const uint8_t *id, size_t id_len)
{
        static atomic_uint seq;
        if (make_dirs(dir) < 0)
                return -1;
        char *tmp = NULL, *path = NULL;
        int fd = -1;
        if (asprintf(&tmp, "%s/.%s.tmp.%ld.%u", dir, name, (long)getpid(),
                     atomic_fetch_add_explicit(&seq, 1, memory_order_relaxed)) < 0) {
                tmp = NULL;
                goto out;
        }
        if (asprintf(&path, "%s/%s", dir, name) < 0) {
                path = NULL;
                goto out;
        }
        int out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (out < 0)
                goto out;
        bool ok = write_inflated(elf, out);
        if (close(out) < 0)
                ok = false;
        if (!ok || rename(tmp, path) < 0) {
                unlink(tmp);
                goto out;
        }
        fd = open_entry(path, id, id_len);
        prune(dir, name);
out:
        free(tmp);
        free(path);
        return fd;
}

int ap_debugcache_open(int fd, const uint8_t *want, size_t want_len, char **ret_name)
{
        char *dir = cache_dir();
        if (!dir)
                return -1;
        struct stat st;
        Elf *elf = NULL;
        char *path = NULL;
        int cfd = -1;
        if (want_len == 0 || want_len > AP_MAX_BUILD_ID || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                goto out;
        /* An entry is named for the file it was made from (whose build-id was checked
         * then, and the entry's is checked now): a hit needs nothing from the file. */
        char entry[2 * AP_MAX_BUILD_ID + 32];
        ap_hex(entry, want, want_len);
        snprintf(entry + 2 * want_len, sizeof(entry) - 2 * want_len, "-%016llx.debug",
                 (unsigned long long)file_identity(&st));
        if (asprintf(&path, "%s/%s", dir, entry) < 0) {
                path = NULL;
                goto out;
        }
        cfd = open_entry(path, want, want_len);
        if (cfd < 0) {
                elf_version(EV_CURRENT);
                elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
                uint8_t id[AP_MAX_BUILD_ID];
                if (elf && elf_kind(elf) == ELF_K_ELF && elf_build_id(elf, id) == want_len &&
                    memcmp(id, want, want_len) == 0 && inflated_bytes(elf) &&
                    !has_relative_altlink(elf))
                        cfd = make_entry(dir, entry, elf, want, want_len);
        }
        if (cfd >= 0) {
                *ret_name = path;
                path = NULL;
        }
out:
        elf_end(elf);
        free(path);
        free(dir);
        return cfd;
}
