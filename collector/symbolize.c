/* Symbolization of code addresses: one offline libdwfl session per module file, our own
 * address -> CU -> function index over its DWARF, inline frames expanded from the DIE tree,
 * ELF symbol tables as the fallback, libiberty for demangling.  Results are cached per module.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "symbolize.h"
#include "debugcache.h"
#include "util.h"
#include "allocprof/clock.h"
#include "allocprof/mix.h"
#include "allocprof/wire.h"

#include <assert.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libiberty/demangle.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Every open module holds up to three descriptors (file, debuginfo, dwz alt file); this cap
 * keeps a long-running daemon well below the usual 1024 soft limit. */
#define MAX_MODULES 256
/* A module's address cache is dropped wholesale past this many entries: cheap, and a
 * daemon that sees an unbounded stream of addresses cannot grow without limit. */
#define MAX_CACHED_ADDRS (1u << 20)
/* Deeper inline chains are cut at the outer end of the walk (the innermost frames are lost,
 * the physical function is kept).  Real code stays far below this. */
#define MAX_INLINE_DEPTH 128
/* The Itanium demangler puts ~70 bytes per input character on the stack (VLAs sized by
 * the name length); longer names come from a hostile or absurd binary and stay mangled. */
#define MAX_DEMANGLE_LEN 16384
/* Bounds for walks over untrusted DWARF, so corrupt data cannot make us loop forever. */
#define MAX_SCOPE_NESTING 32
#define MAX_RANGES_PER_DIE 65536
/* An unusable module (missing, not ELF, other build-id) is looked at again on disk at most
 * this often, so a daemon notices a file that appeared or was replaced. */
#define RECHECK_NS 1000000000LL

/* Where distributions install separate debug files (libdwfl's default); the tests point it
 * at a fixture directory. */
#ifndef AP_SYSTEM_DEBUG_DIR
#define AP_SYSTEM_DEBUG_DIR "/usr/lib/debug"
#endif

/* ---- small containers --------------------------------------------------------------- */

/* Interned strings of one module: frames in the address cache point here, so a file name
 * shared by thousands of addresses is stored once. */
struct pool_chunk {
        struct pool_chunk *next;
        size_t used, cap;
        char data[];
};

struct strpool {
        struct pool_chunk *chunks;
        const char **slots; /* open addressing; NULL = empty */
        uint64_t *hashes;
        size_t cap, count;
};

/* Maps a string pointer owned by libdw/libelf (stable while the module is open) to its
 * interned display form, so each distinct name is demangled and each file path joined once. */
struct ptrmap {
        uintptr_t *keys; /* 0 = empty */
        const char **vals;
        size_t cap, count;
};

struct cached_frame {
        const char *function, *file; /* interned in the module's pool, or NULL */
        uint32_t line;
        bool inlined;
};

struct cached_result {
        uint64_t offset;
        uint32_t n;
        struct cached_frame f[];
};

struct addrmap {
        struct cached_result **slots; /* NULL = empty */
        size_t cap, count;
};

/* ---- DWARF index ------------------------------------------------------------------------ */

/* A function's code range; functions split into hot and cold parts have several. */
struct func_range {
        Dwarf_Addr lo, hi;
        Dwarf_Die die;
};

struct cu_info {
        Dwarf_Die die;            /* the split unit's DIE for split DWARF, else the CU DIE */
        struct func_range *funcs; /* sorted by lo, built on first use */
        size_t nfuncs;
        bool indexed;
        bool resolved;  /* `die` is set (always, in a table built from the units) */
        Dwarf_Off unit; /* from .debug_aranges: offset of the unit's header */
};

struct cu_range {
        Dwarf_Addr lo, hi;
        size_t cu; /* index into sym_module.cus */
};

/* A code symbol of .symtab/.dynsym (or MiniDebugInfo).  `name` points into libelf data. */
struct sym_entry {
        GElf_Addr addr, size;
        GElf_Addr limit; /* end of the symbol's section: bounds a sizeless symbol */
        const char *name;
        uint8_t rank; /* lower is preferred among aliases at the same address */
};

/* One module file.  `mod` is NULL when the file is unusable (missing, not an executable or
 * shared object); the entry is kept so repeated lookups stay cheap. */
struct sym_module {
        char *path;
        uint64_t path_hash;
        uint64_t last_use;
        int64_t checked_ns; /* when the file on disk was last stat'ed */
        dev_t dev;
        ino_t ino;
        off_t size;
        struct timespec mtime;

        Dwfl *dwfl;
        Dwfl_Module *mod;
        Dwarf_Addr elf_bias; /* 0 by construction (reported at base 0), kept for clarity */
        uint8_t *build_id;
        size_t build_id_len;

        bool dwarf_tried;
        Dwarf *dw;
        Dwarf_Addr dw_bias;
        struct cu_info *cus;
        size_t ncus;
        struct cu_range *cu_ranges; /* sorted by lo */
        size_t ncu_ranges;
        bool cu_from_aranges; /* the table is .debug_aranges', units resolved on use */

        bool symtab_built;
        struct sym_entry *syms; /* sorted by addr, one entry per address */
        size_t nsyms;

        struct strpool pool;
        struct ptrmap names;  /* raw (mangled) name -> display name */
        struct ptrmap scoped; /* C++ DIE without a linkage name (its data) -> qualified name */
        /* For qualified_name: every DIE's parent (offset + 1 -> offset + 1) in the units
         * walked so far (unit offset + 1 -> 1), built a whole unit at a time on first use. */
        struct ap_map die_parent, parents_walked;
        struct ptrmap files; /* absolute path as stored by libdw -> cleaned path */
        struct addrmap addrs;
};

struct ap_symbolizer {
        struct sym_module **mods;
        size_t nmods;
        uint64_t clock;          /* use counter for least-recently-used eviction */
        struct sym_module *last; /* consecutive lookups usually hit the same module */
};

static int find_debuginfo(Dwfl_Module *mod, void **userdata, const char *modname, GElf_Addr base,
                          const char *file_name, const char *debuglink_file,
                          GElf_Word debuglink_crc, char **debuginfo_file_name);

/* Offline session: the main file is handed over as a descriptor, separate debuginfo is
 * searched by build-id, .gnu_debuglink and (when configured) debuginfod. */
static char *debuginfo_path;
static const Dwfl_Callbacks offline_callbacks = {
        .find_elf = dwfl_build_id_find_elf,
        .find_debuginfo = find_debuginfo,
        .section_address = dwfl_offline_section_address,
        .debuginfo_path = &debuginfo_path,
};

static uint64_t hash_bytes(const char *s, size_t len)
{
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char)s[i];
                h *= 0x100000001b3ULL;
        }
        return h;
}

/* ---- string pool ------------------------------------------------------------------------ */

static void strpool_clear(struct strpool *p)
{
        struct pool_chunk *c = p->chunks;
        while (c) {
                struct pool_chunk *next = c->next;
                free(c);
                c = next;
        }
        free(p->slots);
        free(p->hashes);
        memset(p, 0, sizeof(*p));
}

static char *strpool_alloc(struct strpool *p, size_t len)
{
        struct pool_chunk *c = p->chunks;
        if (!c || c->cap - c->used < len) {
                size_t cap = len > 65536 ? len : 65536;
                c = malloc(sizeof(*c) + cap);
                if (!c)
                        return NULL;
                c->next = p->chunks;
                c->used = 0;
                c->cap = cap;
                p->chunks = c;
        }
        char *r = c->data + c->used;
        c->used += len;
        return r;
}

static int strpool_grow(struct strpool *p)
{
        size_t cap = p->cap ? p->cap * 2 : 256;
        const char **slots = calloc(cap, sizeof(*slots));
        uint64_t *hashes = calloc(cap, sizeof(*hashes));
        if (!slots || !hashes) {
                free(slots);
                free(hashes);
                return -ENOMEM;
        }
        for (size_t i = 0; i < p->cap; i++) {
                if (!p->slots[i])
                        continue;
                size_t j = p->hashes[i] & (cap - 1);
                while (slots[j])
                        j = (j + 1) & (cap - 1);
                slots[j] = p->slots[i];
                hashes[j] = p->hashes[i];
        }
        free(p->slots);
        free(p->hashes);
        p->slots = slots;
        p->hashes = hashes;
        p->cap = cap;
        return 0;
}

static int strpool_intern(struct strpool *p, const char *s, const char **ret)
{
        size_t len = strlen(s);
        uint64_t h = hash_bytes(s, len);

        if ((p->count + 1) * 2 > p->cap && strpool_grow(p) < 0)
                return -ENOMEM;
        size_t i = h & (p->cap - 1);
        while (p->slots[i]) {
                if (p->hashes[i] == h && strcmp(p->slots[i], s) == 0) {
                        *ret = p->slots[i];
                        return 0;
                }
                i = (i + 1) & (p->cap - 1);
        }
        char *copy = strpool_alloc(p, len + 1);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, s, len + 1);
        p->slots[i] = copy;
        p->hashes[i] = h;
        p->count++;
        *ret = copy;
        return 0;
}

/* ---- pointer map ------------------------------------------------------------------------ */

static void ptrmap_clear(struct ptrmap *m)
{
        free(m->keys);
        free(m->vals);
        memset(m, 0, sizeof(*m));
}

static bool ptrmap_get(const struct ptrmap *m, const void *key, const char **ret)
{
        if (!m->cap)
                return false;
        size_t i = ap_mix64((uintptr_t)key) & (m->cap - 1);
        while (m->keys[i]) {
                if (m->keys[i] == (uintptr_t)key) {
                        *ret = m->vals[i];
                        return true;
                }
                i = (i + 1) & (m->cap - 1);
        }
        return false;
}

static int ptrmap_put(struct ptrmap *m, const void *key, const char *val)
{
        if ((m->count + 1) * 2 > m->cap) {
                size_t cap = m->cap ? m->cap * 2 : 256;
                uintptr_t *keys = calloc(cap, sizeof(*keys));
                const char **vals = calloc(cap, sizeof(*vals));
                if (!keys || !vals) {
                        free(keys);
                        free(vals);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < m->cap; i++) {
                        if (!m->keys[i])
                                continue;
                        size_t j = ap_mix64(m->keys[i]) & (cap - 1);
                        while (keys[j])
                                j = (j + 1) & (cap - 1);
                        keys[j] = m->keys[i];
                        vals[j] = m->vals[i];
                }
                free(m->keys);
                free(m->vals);
                m->keys = keys;
                m->vals = vals;
                m->cap = cap;
        }
        size_t i = ap_mix64((uintptr_t)key) & (m->cap - 1);
        while (m->keys[i] && m->keys[i] != (uintptr_t)key)
                i = (i + 1) & (m->cap - 1);
        if (!m->keys[i])
                m->count++;
        m->keys[i] = (uintptr_t)key;
        m->vals[i] = val;
        return 0;
}

/* ---- address cache ---------------------------------------------------------------------- */

static void addrmap_clear(struct addrmap *m)
{
        for (size_t i = 0; i < m->cap; i++)
                free(m->slots[i]);
        free(m->slots);
        memset(m, 0, sizeof(*m));
}

static struct cached_result *addrmap_get(const struct addrmap *m, uint64_t offset)
{
        if (!m->cap)
                return NULL;
        size_t i = ap_mix64(offset) & (m->cap - 1);
        while (m->slots[i]) {
                if (m->slots[i]->offset == offset)
                        return m->slots[i];
                i = (i + 1) & (m->cap - 1);
        }
        return NULL;
}

/* Takes ownership of `r` on success. */
static int addrmap_put(struct addrmap *m, struct cached_result *r)
{
        if (m->count >= MAX_CACHED_ADDRS)
                addrmap_clear(m);
        if ((m->count + 1) * 2 > m->cap) {
                size_t cap = m->cap ? m->cap * 2 : 1024;
                struct cached_result **slots = calloc(cap, sizeof(*slots));
                if (!slots)
                        return -ENOMEM;
                for (size_t i = 0; i < m->cap; i++) {
                        if (!m->slots[i])
                                continue;
                        size_t j = ap_mix64(m->slots[i]->offset) & (cap - 1);
                        while (slots[j])
                                j = (j + 1) & (cap - 1);
                        slots[j] = m->slots[i];
                }
                free(m->slots);
                m->slots = slots;
                m->cap = cap;
        }
        size_t i = ap_mix64(r->offset) & (m->cap - 1);
        while (m->slots[i])
                i = (i + 1) & (m->cap - 1);
        m->slots[i] = r;
        m->count++;
        return 0;
}

/* ---- demangling ------------------------------------------------------------------------- */

static bool is_hex_digit(char c)
{
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* libiberty already drops Rust legacy hashes when it recognises the symbol as Rust; when it
 * falls back to the C++ demangler (malformed Rust, unusual escapes) the hash would survive
 * as a last "::h<16 hex>" component, so it is removed here too. */
static void strip_rust_hash(char *s)
{
        size_t len = strlen(s);
        if (len < 19)
                return;
        char *h = s + len - 19;
        if (h[0] != ':' || h[1] != ':' || h[2] != 'h')
                return;
        for (int i = 3; i < 19; i++)
                if (!is_hex_digit(h[i]))
                        return;
        *h = '\0';
}

char *ap_demangle(const char *sym)
{
        if (!sym)
                return NULL;
        /* Only Itanium (_Z) and Rust v0 (_R) prefixes: other names are plain C, and the
         * Itanium demangler would otherwise try to read them as type encodings. */
        if (sym[0] != '_' || (sym[1] != 'Z' && sym[1] != 'R'))
                return NULL;
        if (strnlen(sym, MAX_DEMANGLE_LEN + 1) > MAX_DEMANGLE_LEN)
                return NULL;
        /* Rust (legacy and v0) first, as DMGL_AUTO would: legacy names are Itanium-shaped.
         * Without DMGL_VERBOSE the legacy hash and v0's crate disambiguators are left out.
         * C++ names are demangled as c++filt does, with DMGL_VERBOSE: its standard
         * abbreviations spelled out ("std::basic_string<char, std::char_traits<char>,
         * std::allocator<char> >", not "std::string", for Ss). */
        char *r = rust_demangle(sym, DMGL_PARAMS | DMGL_ANSI);
        if (r)
                return r;
        r = cplus_demangle_v3(sym, DMGL_PARAMS | DMGL_ANSI | DMGL_VERBOSE);
        if (r)
                strip_rust_hash(r);
        return r;
}

/* ---- paths ------------------------------------------------------------------------------ */

/* Lexically removes empty and "." components and folds "dir/.." in place.  Build systems
 * record sources relative to the build directory ("/src/build/../lib/x.c") and Debian
 * records them relative to the build root ("./malloc/malloc.c"); users want the plain path.
 * A relative path keeps its leading "..". */
static void clean_path(char *p)
{
        bool absolute = p[0] == '/';
        char *start = absolute ? p + 1 : p;
        char *out = start; /* components written so far, '/'-separated, no trailing '/' */
        const char *in = start;

        while (*in) {
                const char *end = strchrnul(in, '/');
                size_t len = (size_t)(end - in);
                if (len == 2 && in[0] == '.' && in[1] == '.') {
                        char *last = out;
                        while (last > start && last[-1] != '/')
                                last--;
                        bool last_is_up = out - last == 2 && last[0] == '.' && last[1] == '.';
                        if (out > start && !last_is_up) {
                                out = last > start ? last - 1 : start;
                        } else if (!absolute) {
                                if (out > start)
                                        *out++ = '/';
                                *out++ = '.';
                                *out++ = '.';
                        }
                } else if (len > 0 && !(len == 1 && in[0] == '.')) {
                        if (out > start)
                                *out++ = '/';
                        memmove(out, in, len);
                        out += len;
                }
                in = *end ? end + 1 : end;
        }
        if (!absolute && out == start)
                *out++ = '.';
        *out = '\0';
}

/* ---- module lifetime -------------------------------------------------------------------- */

/* What libdwfl's path search for separate debuginfo would open: <dir>/<name>,
 * <dir>/.debug/<name> and /usr/lib/debug<dir>/<name>.  hazard: one of the first two,
 * in a directory the profiled program may choose, exists and is not a regular file;
 * found: one of the three is a regular file. */
struct debuglink_look {
        bool hazard, found;
};

static void look_in(const char *dir, const char *name, struct debuglink_look *l)
{
        static const char *const pre[] = {"", "", "/usr/lib/debug"}, *const mid[] = {"/", "/.debug/", "/"};
        for (size_t i = 0; i < 3; i++) {
                char buf[PATH_MAX];
                struct stat st;
                int n = snprintf(buf, sizeof(buf), "%s%s%s%s", pre[i], dir, mid[i], name);
                if (n < 0 || (size_t)n >= sizeof(buf)) {
                        l->hazard = true;
                        return;
                }
                if (stat(buf, &st) == 0) {
                        if (S_ISREG(st.st_mode))
                                l->found = true;
                        else if (i < 2)
                                l->hazard = true;
                }
        }
}

static void look_for_debuglink(const char *file, const char *name, struct debuglink_look *l)
{
        const char *slash = strrchr(file, '/');
        if (!slash) {
                look_in(".", name, l);
                return;
        }
        char *dir = strndup(file, (size_t)(slash - file));
        if (!dir) {
                l->hazard = true;
                return;
        }
        look_in(*dir ? dir : "/", name, l);
        free(dir);
}

/* Whether debuginfod servers are configured: without them libdwfl still loads
 * libdebuginfod (and libcurl, gnutls, ... about 30 libraries) the first time a module has
 * no local debuginfo, which cost tens of milliseconds per run for nothing. */
static bool debuginfod_configured(void)
{
        const char *urls = getenv("DEBUGINFOD_URLS");
        return urls != NULL && urls[strspn(urls, " \t")] != '\0';
}

/* The module's separate debug file by build-id under the system debug directory, as
 * libdwfl would find it, replaced by its inflated copy from the cache (debugcache.h).
 * libdwfl's own lookup keeps the file it opened, so this one runs first.  Only for the
 * module's own debug file: once its DWARF is loaded (dwbias known), libdwfl asks for a
 * dwz alternate file, which this leaves to libdwfl.  Returns a descriptor or -1. */
static int cached_debuginfo(Dwfl_Module *mod, char **debuginfo_file_name)
{
        Dwarf_Addr dwbias = 0;
        const unsigned char *id = NULL;
        GElf_Addr vaddr;
        dwfl_module_info(mod, NULL, NULL, NULL, &dwbias, NULL, NULL, NULL);
        int len = dwfl_module_build_id(mod, &id, &vaddr);
        if (dwbias != (Dwarf_Addr)-1 || len < 2 || !id)
                return -1;
        char hex[2 * AP_MAX_BUILD_ID + 1];
        char path[sizeof(AP_SYSTEM_DEBUG_DIR "/.build-id//.debug") + 2 * AP_MAX_BUILD_ID];
        if (len > AP_MAX_BUILD_ID)
                return -1;
        ap_hex(hex, id, (size_t)len);
        snprintf(path, sizeof(path), AP_SYSTEM_DEBUG_DIR "/.build-id/%.2s/%s.debug", hex, hex + 2);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
                return -1;
        char *name = NULL;
        int cfd = ap_debugcache_open(fd, id, (size_t)len, &name);
        close(fd);
        if (cfd >= 0) {
                free(*debuginfo_file_name);
                *debuginfo_file_name = name;
        }
        return cfd;
}

/* Separate debuginfo: first by build-id under the system debug directory (always safe),
 * then libdwfl's standard search (debuglink next to the file, then debuginfod) -- but
 * only when a file it would open is really there or a debuginfod server is configured.
 *
 * libdwfl's path search opens <dir>/<debuglink> and <dir>/.debug/<debuglink> (or
 * <file>.debug without a debuglink) with a blocking open(), in the directory of a file
 * chosen by the profiled program: a FIFO planted there would hang us for good.  When such
 * a name is not a regular file, only the build-id lookup is done.  (A program racing
 * this check can still win; this closes the easy case.) */
static int find_debuginfo(Dwfl_Module *mod, void **userdata, const char *modname, GElf_Addr base,
                          const char *file_name, const char *debuglink_file,
                          GElf_Word debuglink_crc, char **debuginfo_file_name)
{
        int fd = cached_debuginfo(mod, debuginfo_file_name);
        if (fd >= 0)
                return fd;
        fd = dwfl_build_id_find_debuginfo(mod, userdata, modname, base, file_name, debuglink_file,
                                          debuglink_crc, debuginfo_file_name);
        if (fd >= 0)
                return fd;
        struct debuglink_look look = {.hazard = true};
        if (file_name) {
                const char *base_name = strrchr(file_name, '/');
                base_name = base_name ? base_name + 1 : file_name;
                char *name = NULL;
                if (debuglink_file)
                        name = strdup(debuglink_file);
                else if (asprintf(&name, "%s.debug", base_name) < 0)
                        name = NULL;
                if (name && !strchr(name, '/')) {
                        look = (struct debuglink_look){0};
                        look_for_debuglink(file_name, name, &look);
                        char *canon = look.hazard ? NULL : realpath(file_name, NULL);
                        if (canon) {
                                look_for_debuglink(canon, name, &look);
                                free(canon);
                        }
                }
                free(name);
        }
        if (look.hazard || (!look.found && !debuginfod_configured()))
                return -1;
        return dwfl_standard_find_debuginfo(mod, userdata, modname, base, file_name, debuglink_file,
                                            debuglink_crc, debuginfo_file_name);
}

static void free_cu_table(struct sym_module *m)
{
        for (size_t i = 0; i < m->ncus; i++)
                free(m->cus[i].funcs);
        free(m->cus);
        free(m->cu_ranges);
        m->cus = NULL;
        m->cu_ranges = NULL;
        m->ncus = m->ncu_ranges = 0;
        m->cu_from_aranges = false;
}

static void module_close(struct sym_module *m)
{
        if (m->dwfl)
                dwfl_end(m->dwfl);
        m->dwfl = NULL;
        m->mod = NULL;
        free(m->build_id);
        m->build_id = NULL;
        m->build_id_len = 0;
        m->dwarf_tried = false;
        m->dw = NULL;
        free_cu_table(m);
        free(m->syms);
        m->syms = NULL;
        m->nsyms = 0;
        m->symtab_built = false;
        addrmap_clear(&m->addrs);
        ptrmap_clear(&m->names);
        ptrmap_clear(&m->scoped);
        ap_map_clear(&m->die_parent);
        ap_map_clear(&m->parents_walked);
        ptrmap_clear(&m->files);
        strpool_clear(&m->pool);
        m->dev = 0;
        m->ino = 0;
        m->size = -1;
        memset(&m->mtime, 0, sizeof(m->mtime));
}

static void module_free(struct sym_module *m)
{
        if (!m)
                return;
        module_close(m);
        free(m->path);
        free(m);
}

/* Opens the file behind m->path.  Failure to use the file is not an error: it leaves
 * m->mod NULL.  Returns 0 or -ENOMEM. */
static int module_open(struct sym_module *m)
{
        m->checked_ns = (int64_t)ap_clock_mono_ns();

        /* O_NONBLOCK: the path comes from the profiled process and may name a FIFO, whose
         * open would otherwise block; anything but a regular file is rejected below. */
        int fd = open(m->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
                return errno == ENOMEM ? -ENOMEM : 0;
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                return 0;
        }
        m->dev = st.st_dev;
        m->ino = st.st_ino;
        m->size = st.st_size;
        m->mtime = st.st_mtim;

        m->dwfl = dwfl_begin(&offline_callbacks);
        if (!m->dwfl) {
                close(fd);
                return -ENOMEM;
        }
        dwfl_report_begin(m->dwfl);
        /* Base 0 with add_p_vaddr: the module's addresses are the file's own vaddrs (bias
         * 0), for PIE, shared objects (even prelinked ones) and ET_EXEC alike.  On success
         * libdwfl owns the descriptor; on failure it is still ours. */
        m->mod = dwfl_report_elf(m->dwfl, m->path, m->path, fd, 0, true);
        if (!m->mod)
                close(fd);
        dwfl_report_end(m->dwfl, NULL, NULL);
        if (!m->mod)
                goto unusable;

        GElf_Addr bias = 0;
        Elf *elf = dwfl_module_getelf(m->mod, &bias);
        GElf_Ehdr ehdr;
        if (!elf || !gelf_getehdr(elf, &ehdr) || (ehdr.e_type != ET_EXEC && ehdr.e_type != ET_DYN))
                goto unusable;
        m->elf_bias = bias;

        const unsigned char *bits = NULL;
        GElf_Addr vaddr;
        int len = dwfl_module_build_id(m->mod, &bits, &vaddr);
        if (len > 0 && bits) {
                m->build_id = malloc((size_t)len);
                if (!m->build_id) {
                        module_close(m);
                        return -ENOMEM;
                }
                memcpy(m->build_id, bits, (size_t)len);
                m->build_id_len = (size_t)len;
        }
        return 0;

unusable:
        if (m->dwfl)
                dwfl_end(m->dwfl);
        m->dwfl = NULL;
        m->mod = NULL;
        return 0;
}

static bool module_matches(const struct sym_module *m, const uint8_t *build_id, size_t len)
{
        if (!m->mod)
                return false;
        if (len == 0)
                return true;
        return m->build_id_len == len && memcmp(m->build_id, build_id, len) == 0;
}

/* The cached entry cannot serve this lookup: if the file on disk changed since we opened
 * it (a library upgraded under a daemon, a file that appeared), open it again. */
static int module_recheck(struct sym_module *m)
{
        int64_t now = (int64_t)ap_clock_mono_ns();
        if (now - m->checked_ns < RECHECK_NS)
                return 0;
        m->checked_ns = now;

        struct stat st;
        bool exists = stat(m->path, &st) == 0;
        bool same = exists ? (st.st_dev == m->dev && st.st_ino == m->ino && st.st_size == m->size &&
                              st.st_mtim.tv_sec == m->mtime.tv_sec &&
                              st.st_mtim.tv_nsec == m->mtime.tv_nsec)
                           : m->size < 0;
        if (same)
                return 0;
        module_close(m);
        return module_open(m);
}

static void module_evict_lru(struct ap_symbolizer *s)
{
        size_t victim = 0;
        for (size_t i = 1; i < s->nmods; i++)
                if (s->mods[i]->last_use < s->mods[victim]->last_use)
                        victim = i;
        if (s->last == s->mods[victim])
                s->last = NULL;
        module_free(s->mods[victim]);
        s->mods[victim] = s->mods[--s->nmods];
}

static int module_get(struct ap_symbolizer *s, const char *path, struct sym_module **ret)
{
        size_t len = strlen(path);
        uint64_t h = hash_bytes(path, len);

        if (s->last && s->last->path_hash == h && strcmp(s->last->path, path) == 0) {
                *ret = s->last;
                return 0;
        }
        for (size_t i = 0; i < s->nmods; i++) {
                if (s->mods[i]->path_hash == h && strcmp(s->mods[i]->path, path) == 0) {
                        *ret = s->last = s->mods[i];
                        return 0;
                }
        }

        if (s->nmods >= MAX_MODULES)
                module_evict_lru(s);

        struct sym_module *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->path = strdup(path);
        if (!m->path) {
                free(m);
                return -ENOMEM;
        }
        m->path_hash = h;
        m->size = -1;
        int r = module_open(m);
        if (r < 0) {
                module_free(m);
                return r;
        }
        s->mods[s->nmods++] = m;
        *ret = s->last = m;
        return 0;
}

/* ---- DWARF index ------------------------------------------------------------------------ */

static int cmp_cu_range(const void *a, const void *b)
{
        const struct cu_range *x = a, *y = b;
        return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int cmp_func_range(const void *a, const void *b)
{
        const struct func_range *x = a, *y = b;
        return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Makes room for element n of array v (capacity *cap, elements of `size` bytes).  Returns
 * the possibly moved array, or NULL when out of memory (v is then unchanged and still
 * owned by the caller). */
static void *vec_grow(void *v, size_t *cap, size_t n, size_t size)
{
        if (n < *cap)
                return v;
        size_t ncap = *cap ? *cap * 2 : 16;
        void *nv = reallocarray(v, ncap, size);
        if (nv)
                *cap = ncap;
        return nv;
}

/* Append a code range of unit `cu`, and a unit, to the module's tables (*cap: capacity). */
static int push_cu_range(struct sym_module *m, size_t *cap, Dwarf_Addr lo, Dwarf_Addr hi, size_t cu)
{
        struct cu_range *nr = vec_grow(m->cu_ranges, cap, m->ncu_ranges, sizeof(*nr));
        if (!nr)
                return -ENOMEM;
        m->cu_ranges = nr;
        m->cu_ranges[m->ncu_ranges++] = (struct cu_range){.lo = lo, .hi = hi, .cu = cu};
        return 0;
}

static int push_cu(struct sym_module *m, size_t *cap, struct cu_info ci)
{
        struct cu_info *nc = vec_grow(m->cus, cap, m->ncus, sizeof(*nc));
        if (!nc)
                return -ENOMEM;
        m->cus = nc;
        m->cus[m->ncus++] = ci;
        return 0;
}

/* Builds the address -> CU table from each unit's own ranges, for a module without a
 * usable .debug_aranges: clang and rustc do not write one by default (and libdw 0.188
 * finds nothing without it). */
static int build_cu_table(struct sym_module *m)
{
        size_t cus_cap = 0, ranges_cap = 0;
        Dwarf_CU *cu = NULL, *next;
        Dwarf_Half version;
        uint8_t unit_type;
        Dwarf_Die cudie, subdie;

        while (dwarf_get_units(m->dw, cu, &next, &version, &unit_type, &cudie, &subdie) == 0) {
                cu = next;
                if (unit_type != DW_UT_compile && unit_type != DW_UT_skeleton)
                        continue;
                Dwarf_Die use = cudie;
                if (unit_type == DW_UT_skeleton) {
                        Dwarf_Die split;
                        if (dwarf_cu_info(cu, NULL, NULL, NULL, &split, NULL, NULL, NULL) == 0 &&
                            dwarf_tag(&split) == DW_TAG_compile_unit)
                                use = split;
                }

                size_t idx = m->ncus;
                bool any = false;
                Dwarf_Addr base, lo, hi;
                ptrdiff_t off = 0;
                for (int n = 0; n < MAX_RANGES_PER_DIE; n++) {
                        off = dwarf_ranges(&cudie, off, &base, &lo, &hi);
                        if (off <= 0)
                                break;
                        /* Code discarded by the linker keeps ranges at 0 (or a tombstone). */
                        if (lo == 0 || lo >= hi || lo == (Dwarf_Addr)-1)
                                continue;
                        if (push_cu_range(m, &ranges_cap, lo, hi, idx) < 0)
                                return -ENOMEM;
                        any = true;
                }
                if (any && push_cu(m, &cus_cap, (struct cu_info){.die = use, .resolved = true}) < 0)
                        return -ENOMEM;
        }
        if (m->ncu_ranges)
                qsort(m->cu_ranges, m->ncu_ranges, sizeof(*m->cu_ranges), cmp_cu_range);
        return 0;
}

static uint64_t read_le(const uint8_t *p, unsigned n)
{
        uint64_t v = 0;
        for (unsigned i = n; i-- > 0;)
                v = v << 8 | p[i];
        return v;
}

/* The raw .debug_aranges of the module's DWARF file, if it has an uncompressed one (libdw
 * inflates the sections it reads when it opens the file) in little-endian byte order. */
static const uint8_t *aranges_section(Dwarf *dw, size_t *size)
{
        Elf *elf = dwarf_getelf(dw);
        GElf_Ehdr eh;
        Elf_Scn *scn;
        GElf_Shdr sh;
        if (!elf || !gelf_getehdr(elf, &eh) || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
            ap_elf_section(elf, ".debug_aranges", &scn, &sh) <= 0 ||
            (sh.sh_flags & SHF_COMPRESSED) || sh.sh_type == SHT_NOBITS)
                return NULL;
        Elf_Data *d = elf_getdata(scn, NULL);
        if (!d || !d->d_buf || d->d_size == 0)
                return NULL;
        *size = d->d_size;
        return d->d_buf;
}

/* The address -> CU table from .debug_aranges, where the compiler wrote one: a few
 * microseconds, where reading every unit's ranges (build_cu_table) takes milliseconds
 * (5 ms for the C library's 2,000 units), most of it opening units no stack ever runs
 * through.  A unit's DIE is looked up when an address first lands in it (find_cu).
 * Returns 1 when the table is built, 0 when the module has no usable section (the
 * caller builds the table from the units), -ENOMEM.  The section is untrusted like the
 * rest of the file: any malformed set abandons it. */
static int read_aranges(struct sym_module *m)
{
        size_t size = 0;
        const uint8_t *sec = aranges_section(m->dw, &size);
        if (!sec)
                return 0;
        size_t cus_cap = 0, ranges_cap = 0;
        /* Offsets into the section, all checked against `size` before a read. */
        for (size_t set = 0, next; set < size; set = next) {
                size_t left = size - set, pos = set + 4;
                if (left < 4)
                        goto unusable;
                uint64_t len = read_le(sec + set, 4);
                unsigned offsize = 4;
                if (len == 0xffffffff) {
                        if (left < 12)
                                goto unusable;
                        len = read_le(sec + pos, 8);
                        offsize = 8;
                        pos += 8;
                } else if (len >= 0xfffffff0) {
                        goto unusable;
                }
                if (len > size - pos || len < 2u + offsize + 2u)
                        goto unusable;
                next = pos + len;
                uint64_t version = read_le(sec + pos, 2);
                uint64_t unit = read_le(sec + pos + 2, offsize);
                unsigned addr_size = sec[pos + 2 + offsize], seg_size = sec[pos + 3 + offsize];
                pos += 4 + offsize;
                if (version != 2 || seg_size != 0 || (addr_size != 4 && addr_size != 8))
                        goto unusable;
                /* Tuples start at a multiple of their own size from the set's start. */
                size_t tuple = 2u * addr_size;
                pos = set + (pos - set + tuple - 1) / tuple * tuple;
                size_t idx = m->ncus;
                bool any = false;
                for (;; pos += tuple) {
                        if (pos > next || next - pos < tuple)
                                goto unusable; /* no terminating tuple */
                        uint64_t lo = read_le(sec + pos, addr_size);
                        uint64_t n = read_le(sec + pos + addr_size, addr_size);
                        if (lo == 0 && n == 0)
                                break;
                        /* Code discarded by the linker is left at 0 (or a tombstone). */
                        uint64_t tomb = addr_size == 8 ? UINT64_MAX : UINT32_MAX;
                        if (lo == 0 || lo == tomb || n == 0 || n > tomb - lo)
                                continue;
                        if (push_cu_range(m, &ranges_cap, lo, lo + n, idx) < 0)
                                return -ENOMEM;
                        any = true;
                }
                if (any && push_cu(m, &cus_cap, (struct cu_info){.unit = unit}) < 0)
                        return -ENOMEM;
        }
        if (m->ncu_ranges == 0)
                goto unusable;
        qsort(m->cu_ranges, m->ncu_ranges, sizeof(*m->cu_ranges), cmp_cu_range);
        m->cu_from_aranges = true;
        return 1;

unusable:
        free_cu_table(m);
        return 0;
}

static int ensure_dwarf(struct sym_module *m)
{
        if (m->dwarf_tried)
                return 0;
        m->dwarf_tried = true;
        Dwarf_Addr bias = 0;
        m->dw = dwfl_module_getdwarf(m->mod, &bias);
        if (!m->dw)
                return 0;
        m->dw_bias = bias;
        int r = read_aranges(m);
        if (r == 0)
                r = build_cu_table(m);
        if (r < 0) {
                /* Retry on the next lookup rather than keep a half-built table. */
                free_cu_table(m);
                m->dwarf_tried = false;
        }
        return r < 0 ? r : 0;
}

/* Binary searches an array of n elements of `stride` bytes, sorted by the Dwarf_Addr
 * `lo` each starts with (struct cu_range, struct func_range), for the last one with
 * lo <= pc; returns n when there is none. */
static size_t range_at(const void *v, size_t n, size_t stride, Dwarf_Addr pc)
{
        size_t lo = 0, hi = n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                Dwarf_Addr start;
                memcpy(&start, (const char *)v + mid * stride, sizeof(start));
                if (start <= pc)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo == 0 ? n : lo - 1;
}

_Static_assert(offsetof(struct cu_range, lo) == 0, "range_at reads lo first");
_Static_assert(offsetof(struct func_range, lo) == 0, "range_at reads lo first");

/* The compile unit whose DIE starts at `ci->unit`'s header, if it is one this index reads
 * the usual way (not a split-DWARF skeleton). */
static bool resolve_unit(Dwarf *dw, struct cu_info *ci)
{
        Dwarf_Off next;
        size_t hsize;
        if (dwarf_next_unit(dw, ci->unit, &next, &hsize, NULL, NULL, NULL, NULL, NULL, NULL) != 0 ||
            dwarf_offdie(dw, ci->unit + hsize, &ci->die) == NULL ||
            dwarf_tag(&ci->die) != DW_TAG_compile_unit)
                return false;
        ci->resolved = true;
        return true;
}

/* The unit holding pc, or NULL (-ENOMEM in *err).  .debug_aranges is trusted only for
 * the addresses it covers: an address it misses (a producer may leave units out, and
 * real stacks almost never run through code outside every unit), or a unit it names that
 * is not a plain compile unit (a split-DWARF skeleton), replaces its table by the one
 * built from the units themselves, as every lookup did before. */
static struct cu_info *find_cu(struct sym_module *m, Dwarf_Addr pc, int *err)
{
        *err = 0;
        size_t i = range_at(m->cu_ranges, m->ncu_ranges, sizeof(*m->cu_ranges), pc);
        bool hit = i != m->ncu_ranges && pc < m->cu_ranges[i].hi;
        if (!m->cu_from_aranges)
                return hit ? &m->cus[m->cu_ranges[i].cu] : NULL;
        if (hit) {
                struct cu_info *ci = &m->cus[m->cu_ranges[i].cu];
                if (ci->resolved || resolve_unit(m->dw, ci))
                        return ci;
        }
        free_cu_table(m);
        int r = build_cu_table(m);
        if (r < 0) {
                free_cu_table(m);
                m->dwarf_tried = false;
                *err = r;
                return NULL;
        }
        return find_cu(m, pc, err);
}

/* Iterates children of `parent` with a guard against sibling references that point
 * backwards in corrupt DWARF. */
struct child_iter {
        Dwarf_Die die;
        Dwarf_Off last;
        bool started;
};

static bool child_next(struct child_iter *it, Dwarf_Die *parent)
{
        Dwarf_Die next;
        if (!it->started) {
                it->started = true;
                if (dwarf_child(parent, &next) != 0)
                        return false;
        } else if (dwarf_siblingof(&it->die, &next) != 0) {
                return false;
        }
        Dwarf_Off off = dwarf_dieoffset(&next);
        if (off == (Dwarf_Off)-1 || (it->last && off <= it->last))
                return false;
        it->last = off;
        it->die = next;
        return true;
}

/* Collects the code ranges of every concrete function defined at `parent`'s level,
 * descending into namespaces and classes (C++ in-class definitions) but not into function
 * bodies. */
static int index_scope(Dwarf_Die *parent, int depth, struct func_range **v, size_t *n, size_t *cap)
{
        struct child_iter it = {0};
        while (child_next(&it, parent)) {
                switch (dwarf_tag(&it.die)) {
                case DW_TAG_subprogram: {
                        Dwarf_Addr base, lo, hi;
                        ptrdiff_t off = 0;
                        for (int k = 0; k < MAX_RANGES_PER_DIE; k++) {
                                off = dwarf_ranges(&it.die, off, &base, &lo, &hi);
                                if (off <= 0)
                                        break;
                                if (lo == 0 || lo >= hi || lo == (Dwarf_Addr)-1)
                                        continue;
                                struct func_range *nv = vec_grow(*v, cap, *n, sizeof(*nv));
                                if (!nv)
                                        return -ENOMEM;
                                *v = nv;
                                (*v)[(*n)++] =
                                        (struct func_range){.lo = lo, .hi = hi, .die = it.die};
                        }
                        break;
                }
                case DW_TAG_namespace:
                case DW_TAG_module:
                case DW_TAG_class_type:
                case DW_TAG_structure_type:
                case DW_TAG_union_type:
                case DW_TAG_interface_type:
                        if (depth < MAX_SCOPE_NESTING && dwarf_haschildren(&it.die) > 0) {
                                int r = index_scope(&it.die, depth + 1, v, n, cap);
                                if (r < 0)
                                        return r;
                        }
                        break;
                default:
                        break;
                }
        }
        return 0;
}

static int find_function(struct cu_info *ci, Dwarf_Addr pc, Dwarf_Die **ret)
{
        *ret = NULL;
        if (!ci->indexed) {
                size_t cap = 0;
                int r = index_scope(&ci->die, 0, &ci->funcs, &ci->nfuncs, &cap);
                if (r < 0) {
                        free(ci->funcs);
                        ci->funcs = NULL;
                        ci->nfuncs = 0;
                        return r;
                }
                if (ci->nfuncs)
                        qsort(ci->funcs, ci->nfuncs, sizeof(*ci->funcs), cmp_func_range);
                ci->indexed = true;
        }
        size_t i = range_at(ci->funcs, ci->nfuncs, sizeof(*ci->funcs), pc);
        if (i != ci->nfuncs && pc < ci->funcs[i].hi)
                *ret = &ci->funcs[i].die;
        return 0;
}

static bool is_code_scope(int tag)
{
        switch (tag) {
        case DW_TAG_inlined_subroutine:
        case DW_TAG_lexical_block:
        case DW_TAG_try_block:
        case DW_TAG_catch_block:
        case DW_TAG_subprogram: /* GNU C nested function */
                return true;
        default:
                return false;
        }
}

/* Walks from the function's DIE down the scopes containing pc.  Fills chain[] with the
 * inlined_subroutine DIEs, outermost first, and *physical with the function whose machine
 * code this is (a nested function replaces its parent).  Returns the chain length. */
static size_t inline_chain(Dwarf_Die *fn, Dwarf_Addr pc, Dwarf_Die *chain, Dwarf_Die *physical)
{
        size_t n = 0;
        Dwarf_Die cur = *fn;
        *physical = *fn;
        for (int depth = 0; depth < 2 * MAX_INLINE_DEPTH; depth++) {
                struct child_iter it = {0};
                bool found = false;
                int tag = 0;
                while (child_next(&it, &cur)) {
                        tag = dwarf_tag(&it.die);
                        if (is_code_scope(tag) && dwarf_haspc(&it.die, pc) > 0) {
                                found = true;
                                break;
                        }
                }
                if (!found)
                        break;
                if (tag == DW_TAG_inlined_subroutine) {
                        if (n == MAX_INLINE_DEPTH)
                                break;
                        chain[n++] = it.die;
                } else if (tag == DW_TAG_subprogram) {
                        *physical = it.die;
                        n = 0;
                }
                cur = it.die;
        }
        return n;
}

/* ---- ELF symbol index -------------------------------------------------------------------- */

static unsigned leading_underscores(const char *s)
{
        unsigned n = 0;
        while (s[n] == '_')
                n++;
        return n;
}

/* Orders by address, then puts the alias we would rather show first: global over weak over
 * local, functions over untyped labels, sized over sizeless, "malloc" over "__libc_malloc",
 * shorter names, and finally by name so the choice does not depend on table order. */
static int cmp_sym(const void *a, const void *b)
{
        const struct sym_entry *x = a, *y = b;
        if (x->addr != y->addr)
                return x->addr < y->addr ? -1 : 1;
        if (x->rank != y->rank)
                return x->rank < y->rank ? -1 : 1;
        if ((x->size == 0) != (y->size == 0))
                return x->size ? -1 : 1;
        unsigned ux = leading_underscores(x->name), uy = leading_underscores(y->name);
        if (ux != uy)
                return ux < uy ? -1 : 1;
        size_t lx = strlen(x->name), ly = strlen(y->name);
        if (lx != ly)
                return lx < ly ? -1 : 1;
        return strcmp(x->name, y->name);
}

/* Sorts syms as qsort with cmp_sym would, faster: a least-significant-digit radix sort of
 * (address, index) pairs on the 11-bit digits that differ (a module's addresses differ
 * in their low 20-odd bits: two or three passes), then cmp_sym within each run
 * of one address (aliases: a handful).  glibc's merge sort moving 40-byte entries took
 * 0.5-0.8 ms for the C library's 10,000 symbols (with its debug symbols), in every run
 * that meets a C library frame.  -ENOMEM leaves syms as they were. */
#define RADIX_BITS 11
#define RADIX_BUCKETS (1u << RADIX_BITS)

static int sort_syms(struct sym_entry *syms, size_t n)
{
        struct key {
                uint64_t addr;
                size_t idx;
        } *a = malloc(sizeof(*a) * n), *b = malloc(sizeof(*b) * n);
        struct sym_entry *out = malloc(sizeof(*out) * n);
        size_t *count = calloc(RADIX_BUCKETS, sizeof(*count));
        if (a == NULL || b == NULL || out == NULL || count == NULL) {
                free(a), free(b), free(out), free(count);
                return -ENOMEM;
        }
        uint64_t all_or = 0, all_and = ~0ull;
        for (size_t i = 0; i < n; i++) {
                a[i] = (struct key){syms[i].addr, i};
                all_or |= syms[i].addr;
                all_and &= syms[i].addr;
        }
        for (unsigned shift = 0; shift < 64; shift += RADIX_BITS) {
                if ((((all_or ^ all_and) >> shift) & (RADIX_BUCKETS - 1)) == 0)
                        continue; /* every address has the same digit here */
                memset(count, 0, sizeof(*count) * RADIX_BUCKETS);
                for (size_t i = 0; i < n; i++)
                        count[(a[i].addr >> shift) & (RADIX_BUCKETS - 1)]++;
                size_t sum = 0;
                for (size_t d = 0; d < RADIX_BUCKETS; d++) {
                        size_t c = count[d];
                        count[d] = sum;
                        sum += c;
                }
                for (size_t i = 0; i < n; i++)
                        b[count[(a[i].addr >> shift) & (RADIX_BUCKETS - 1)]++] = a[i];
                struct key *t = a;
                a = b;
                b = t;
        }
        for (size_t i = 0; i < n; i++)
                out[i] = syms[a[i].idx];
        for (size_t i = 1; i < n; i++) /* insertion sort: only runs of one address move */
                for (size_t j = i; j > 0 && cmp_sym(&out[j - 1], &out[j]) > 0; j--) {
                        struct sym_entry t = out[j - 1];
                        out[j - 1] = out[j];
                        out[j] = t;
                }
        memcpy(syms, out, sizeof(*out) * n);
        free(a), free(b), free(out), free(count);
        return 0;
}

/* End address of the executable section `shndx` of `elf`, in module addresses; 0 when
 * the section is not code. */
static GElf_Addr code_section_end(Elf *elf, GElf_Word shndx, Dwarf_Addr bias)
{
        GElf_Shdr sh;
        Elf_Scn *scn = elf && shndx != (GElf_Word)-1 ? elf_getscn(elf, shndx) : NULL;
        if (!scn || !gelf_getshdr(scn, &sh) || !(sh.sh_flags & SHF_EXECINSTR))
                return 0;
        return sh.sh_addr + sh.sh_size + bias;
}

/* libdwfl's own address -> symbol search scans the whole table on every call (~0.3 ms per
 * lookup in libstdc++), so we sort the code symbols once per module. */
static int build_symtab(struct sym_module *m)
{
        int n = dwfl_module_getsymtab(m->mod);
        size_t cap = 0;
        /* Nearly every symbol is in .text: the section's end is looked up once per run of
         * symbols in one section, not once per symbol (a third of the time on cc1). */
        Elf *last_elf = NULL;
        GElf_Word last_shndx = 0;
        GElf_Addr last_limit = 0;
        for (int i = 0; i < n; i++) {
                GElf_Sym sym;
                GElf_Addr addr;
                GElf_Word shndx;
                Elf *elf;
                Dwarf_Addr bias;
                const char *name =
                        dwfl_module_getsym_info(m->mod, i, &sym, &addr, &shndx, &elf, &bias);
                if (!name || !*name || sym.st_shndx == SHN_UNDEF || addr == 0)
                        continue;
                int type = GELF_ST_TYPE(sym.st_info), bind = GELF_ST_BIND(sym.st_info);
                if (type != STT_FUNC && type != STT_GNU_IFUNC && type != STT_NOTYPE)
                        continue;
                if (elf != last_elf || shndx != last_shndx || last_elf == NULL) {
                        last_elf = elf;
                        last_shndx = shndx;
                        last_limit = code_section_end(elf, shndx, bias);
                }
                GElf_Addr limit = last_limit;
                if (limit <= addr)
                        continue;
                uint8_t rank = type == STT_NOTYPE ? 3 : 0;
                rank += bind == STB_GLOBAL ? 0 : bind == STB_WEAK ? 1 : 2;
                struct sym_entry *ns = vec_grow(m->syms, &cap, m->nsyms, sizeof(*ns));
                if (!ns)
                        return -ENOMEM;
                m->syms = ns;
                m->syms[m->nsyms++] = (struct sym_entry){.addr = addr,
                                                         .size = sym.st_size,
                                                         .limit = limit,
                                                         .name = name,
                                                         .rank = rank};
        }
        if (!m->nsyms)
                return 0;
        if (sort_syms(m->syms, m->nsyms) < 0)
                return -ENOMEM;
        /* Keep the preferred alias per address, with the largest size any alias has. */
        size_t out = 0;
        for (size_t i = 0; i < m->nsyms; i++) {
                if (out && m->syms[out - 1].addr == m->syms[i].addr) {
                        if (m->syms[i].size > m->syms[out - 1].size)
                                m->syms[out - 1].size = m->syms[i].size;
                        continue;
                }
                m->syms[out++] = m->syms[i];
        }
        m->nsyms = out;
        return 0;
}

/* The symbol whose [addr, addr + size) holds pc; a sizeless symbol (hand-written assembly)
 * only when it is the nearest one before pc and in the same section. */
static int symtab_entry(struct sym_module *m, GElf_Addr pc, const struct sym_entry **ret)
{
        *ret = NULL;
        if (!m->symtab_built) {
                int r = build_symtab(m);
                if (r < 0) {
                        free(m->syms);
                        m->syms = NULL;
                        m->nsyms = 0;
                        return r;
                }
                m->symtab_built = true;
        }
        size_t lo = 0, hi = m->nsyms;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (m->syms[mid].addr <= pc)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo == 0)
                return 0;
        /* A sized function containing pc wins over labels between its start and pc. */
        for (size_t k = 0; k < 8 && k < lo; k++) {
                const struct sym_entry *e = &m->syms[lo - 1 - k];
                if (e->size && pc - e->addr < e->size) {
                        *ret = e;
                        return 0;
                }
        }
        if (m->syms[lo - 1].size == 0 && pc < m->syms[lo - 1].limit)
                *ret = &m->syms[lo - 1];
        return 0;
}

/* As symtab_entry, the symbol's name. */
static int symtab_lookup(struct sym_module *m, GElf_Addr pc, const char **ret)
{
        const struct sym_entry *e;
        int r = symtab_entry(m, pc, &e);
        *ret = e ? e->name : NULL;
        return r;
}

/* ---- names and files -------------------------------------------------------------------- */

static int display_name(struct sym_module *m, const char *raw, const char **ret)
{
        if (ptrmap_get(&m->names, raw, ret))
                return 0;
        char *d = ap_demangle(raw);
        const char *s;
        int r = strpool_intern(&m->pool, d ? d : raw, &s);
        free(d);
        if (r < 0)
                return r;
        r = ptrmap_put(&m->names, raw, s);
        if (r < 0)
                return r;
        *ret = s;
        return 0;
}

static bool is_cplusplus(Dwarf_Die *die)
{
        Dwarf_Die cu;
        if (!dwarf_diecu(die, &cu, NULL, NULL))
                return false;
        switch (dwarf_srclang(&cu)) {
        case DW_LANG_C_plus_plus:
        case DW_LANG_C_plus_plus_03:
        case DW_LANG_C_plus_plus_11:
        case DW_LANG_C_plus_plus_14:
        case 0x2a: /* DW_LANG_C_plus_plus_17 (DWARF 6 draft, some compilers already) */
        case 0x2b: /* DW_LANG_C_plus_plus_20 */
                return true;
        default:
                return false;
        }
}

/* Records the parent of every DIE of `unit` in m->die_parent: one walk of the unit, so
 * that the scopes enclosing any of its DIEs are then a few lookups (finding them by a
 * descent from the unit each time cost a lambda-heavy C++ program 7 s instead of 0.2). */
static int index_parents(struct sym_module *m, Dwarf_Die *unit)
{
        enum { DEPTH = 64 }; /* deeper DIEs (nested blocks) are left out: no scope's */
        struct {
                Dwarf_Die die;
                struct child_iter it;
        } st[DEPTH];
        int top = 0;
        st[0].die = *unit;
        st[0].it = (struct child_iter){0};
        while (top >= 0) {
                if (!child_next(&st[top].it, &st[top].die)) {
                        top--;
                        continue;
                }
                Dwarf_Die *c = &st[top].it.die;
                if (ap_map_put(&m->die_parent, dwarf_dieoffset(c) + 1,
                               dwarf_dieoffset(&st[top].die) + 1) < 0)
                        return -ENOMEM;
                if (top + 1 < DEPTH && dwarf_haschildren(c) > 0) {
                        top++;
                        st[top].die = *c;
                        st[top].it = (struct child_iter){0};
                }
        }
        return 0;
}

/* The DIEs enclosing `target` (not its unit, not itself), outermost first; -1 when they
 * cannot be found (or are more than MAX_SCOPE_NESTING). */
static int enclosing_scopes(struct sym_module *m, Dwarf_Die *target, Dwarf_Die *path)
{
        Dwarf_Die unit;
        if (!dwarf_diecu(target, &unit, NULL, NULL))
                return -1;
        uint64_t unit_key = dwarf_dieoffset(&unit) + 1;
        if (ap_map_get(&m->parents_walked, unit_key) == NULL &&
            (index_parents(m, &unit) < 0 || ap_map_put(&m->parents_walked, unit_key, 1) < 0))
                return -1;
        Dwarf_Off off[MAX_SCOPE_NESTING];
        int n = 0;
        for (uint64_t *p = ap_map_get(&m->die_parent, dwarf_dieoffset(target) + 1);;
             p = ap_map_get(&m->die_parent, *p)) {
                if (p == NULL || n == MAX_SCOPE_NESTING)
                        return -1;
                if (*p == unit_key)
                        break;
                off[n++] = *p - 1;
        }
        Dwarf *dw = dwarf_cu_getdwarf(unit.cu);
        for (int i = 0; i < n; i++)
                if (dw == NULL || dwarf_offdie(dw, off[n - 1 - i], &path[i]) == NULL)
                        return -1;
        return n;
}

static int die_name_depth(struct sym_module *m, Dwarf_Die *die, int depth, const char **ret);

/* GCC writes a lambda's closure type without a name, but names its constructors
 * "<lambda>" and its destructor "~<lambda>". */
static const char *unnamed_class_name(Dwarf_Die *cls)
{
        struct child_iter it = {0};
        for (int k = 0; k < 64 && child_next(&it, cls); k++) {
                const char *s = dwarf_diename(&it.die);
                if (dwarf_tag(&it.die) == DW_TAG_subprogram && s &&
                    (strcmp(s, "<lambda>") == 0 || strcmp(s, "~<lambda>") == 0))
                        return "<lambda>";
        }
        return "{unnamed type}";
}

/* A C++ function without a linkage name (GCC writes none for an entity of internal linkage,
 * such as a template instantiated with a lambda's type, or a lambda's operator()) has only
 * its unqualified DW_AT_name ("_M_invoke", "operator()"): qualify it with the namespaces and
 * classes that enclose its declaration, as gdb does
 * ("std::_Function_handler<int*(int), f()::<lambda(int)> >::_M_invoke"); a function's local
 * class (a lambda's) takes that function's name as its scope. */
static int qualified_name(struct sym_module *m, Dwarf_Die *owner, const char *name, int depth,
                          const char **ret)
{
        if (ptrmap_get(&m->scoped, owner->addr, ret))
                return 0;
        Dwarf_Die path[MAX_SCOPE_NESTING];
        int n = depth < 4 ? enclosing_scopes(m, owner, path) : -1, first = 0;
        const char *part[MAX_SCOPE_NESTING];
        for (int i = 0; i < n; i++) {
                const char *s = dwarf_diename(&path[i]);
                switch (dwarf_tag(&path[i])) {
                case DW_TAG_namespace:
                        if (!s)
                                s = "(anonymous namespace)";
                        break;
                case DW_TAG_class_type:
                case DW_TAG_structure_type:
                case DW_TAG_union_type:
                case DW_TAG_interface_type:
                        if (!s)
                                s = unnamed_class_name(&path[i]);
                        break;
                case DW_TAG_subprogram: {
                        /* Everything outside the function is part of its own name. */
                        int r = die_name_depth(m, &path[i], depth + 1, &s);
                        if (r < 0)
                                return r;
                        first = i;
                        break;
                }
                default: /* lexical blocks */
                        s = NULL;
                        break;
                }
                part[i] = s;
        }
        size_t len = strlen(name) + 1;
        for (int i = first; i < n; i++)
                len += part[i] ? strlen(part[i]) + 2 : 0;
        char *buf = malloc(len);
        if (!buf)
                return -ENOMEM;
        len = 0;
        for (int i = first; i < n; i++) {
                if (!part[i])
                        continue;
                size_t sl = strlen(part[i]);
                memcpy(buf + len, part[i], sl);
                memcpy(buf + len + sl, "::", 2);
                len += sl + 2;
        }
        strcpy(buf + len, name);
        int r = strpool_intern(&m->pool, buf, ret);
        free(buf);
        if (r < 0)
                return r;
        return ptrmap_put(&m->scoped, owner->addr, *ret);
}

/* A mangled linkage name, demangled, gives C++ its qualified name with parameters and Rust
 * its path.  C has only DW_AT_name, or a linkage name that is an asm label (glibc's
 * "__GI___libc_free" for "__libc_free"), where the source name reads better.  Both are
 * looked up through abstract_origin/specification so inlined instances and out-of-class
 * definitions work. */
static int die_name_depth(struct sym_module *m, Dwarf_Die *die, int depth, const char **ret)
{
        Dwarf_Attribute a;
        const char *linkage = NULL, *name = NULL;
        *ret = NULL;
        if (dwarf_attr_integrate(die, DW_AT_linkage_name, &a) ||
            dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &a))
                linkage = dwarf_formstring(&a);
        if (linkage && *linkage) {
                if (ptrmap_get(&m->names, linkage, ret))
                        return 0;
                char *d = ap_demangle(linkage);
                if (d) {
                        int r = strpool_intern(&m->pool, d, ret);
                        free(d);
                        return r < 0 ? r : ptrmap_put(&m->names, linkage, *ret);
                }
        }
        /* The DIE that holds the name: the declaration, for an inlined instance
         * (abstract_origin) or an out-of-class definition (specification). */
        Dwarf_Die owner = *die;
        for (int k = 0; k < 8 && !dwarf_hasattr(&owner, DW_AT_name); k++) {
                Dwarf_Die next;
                if (!(dwarf_attr(&owner, DW_AT_abstract_origin, &a) ||
                      dwarf_attr(&owner, DW_AT_specification, &a)) ||
                    !dwarf_formref_die(&a, &next))
                        break;
                owner = next;
        }
        if (dwarf_attr(&owner, DW_AT_name, &a))
                name = dwarf_formstring(&a);
        if (name && *name && !linkage && is_cplusplus(&owner))
                return qualified_name(m, &owner, name, depth, ret);
        if (name && *name)
                return display_name(m, name, ret);
        if (linkage && *linkage)
                return display_name(m, linkage, ret);
        return 0;
}

static int die_name(struct sym_module *m, Dwarf_Die *die, const char **ret)
{
        return die_name_depth(m, die, 0, ret);
}

static int display_file(struct sym_module *m, Dwarf_Die *cudie, const char *raw, const char **ret)
{
        *ret = NULL;
        if (!raw || !*raw)
                return 0;
        bool absolute = raw[0] == '/';
        if (absolute && ptrmap_get(&m->files, raw, ret))
                return 0;

        const char *dir = NULL;
        if (!absolute) {
                Dwarf_Attribute a;
                if (dwarf_attr(cudie, DW_AT_comp_dir, &a))
                        dir = dwarf_formstring(&a);
                if (dir && dir[0] != '/')
                        dir = NULL;
        }
        size_t dlen = dir ? strlen(dir) : 0, rlen = strlen(raw);
        char *buf = malloc(dlen + rlen + 2);
        if (!buf)
                return -ENOMEM;
        if (dir) {
                memcpy(buf, dir, dlen);
                buf[dlen] = '/';
                memcpy(buf + dlen + 1, raw, rlen + 1);
        } else {
                memcpy(buf, raw, rlen + 1);
        }
        clean_path(buf);
        int r = strpool_intern(&m->pool, buf, ret);
        free(buf);
        if (r < 0)
                return r;
        /* Relative names depend on their CU's comp_dir, so only absolute ones are keyed by
         * libdw's pointer. */
        if (absolute)
                r = ptrmap_put(&m->files, raw, *ret);
        return r;
}

/* DW_AT_call_file indexes the file table of the CU holding the inlined_subroutine DIE. */
static int call_site(struct sym_module *m, Dwarf_Die *inl, const char **file, uint32_t *line)
{
        Dwarf_Attribute a;
        Dwarf_Word v;
        Dwarf_Die cudie;
        *file = NULL;
        *line = 0;
        if (dwarf_attr(inl, DW_AT_call_line, &a) && dwarf_formudata(&a, &v) == 0 && v <= UINT32_MAX)
                *line = (uint32_t)v;
        if (!dwarf_attr(inl, DW_AT_call_file, &a) || dwarf_formudata(&a, &v) != 0)
                return 0;
        if (!dwarf_diecu(inl, &cudie, NULL, NULL))
                return 0;
        Dwarf_Files *files;
        size_t nfiles;
        if (dwarf_getsrcfiles(&cudie, &files, &nfiles) != 0 || v >= nfiles)
                return 0;
        return display_file(m, &cudie, dwarf_filesrc(files, v, NULL, NULL), file);
}

/* ---- lookup ----------------------------------------------------------------------------- */

struct frame_buf {
        struct cached_frame f[MAX_INLINE_DEPTH + 1];
        size_t n;
};

static int symbolize_dwarf(struct sym_module *m, uint64_t offset, struct frame_buf *out)
{
        int r = ensure_dwarf(m);
        if (r < 0 || !m->dw)
                return r;
        Dwarf_Addr pc = offset + m->elf_bias - m->dw_bias;
        struct cu_info *ci = find_cu(m, pc, &r);
        if (!ci)
                return r;

        const char *file = NULL;
        uint32_t line = 0;
        Dwarf_Line *l = dwarf_getsrc_die(&ci->die, pc);
        if (l) {
                int lineno = 0;
                dwarf_lineno(l, &lineno);
                line = lineno > 0 ? (uint32_t)lineno : 0;
                r = display_file(m, &ci->die, dwarf_linesrc(l, NULL, NULL), &file);
                if (r < 0)
                        return r;
        }

        Dwarf_Die *fn;
        r = find_function(ci, pc, &fn);
        if (r < 0)
                return r;
        if (!fn) {
                /* Assembly and other code with a line table but no function DIE: the
                 * caller names it from the symbol table. */
                out->f[0] = (struct cached_frame){.file = file, .line = line};
                out->n = 1;
                return 0;
        }

        static_assert(sizeof(Dwarf_Die) <= 64, "chain buffer on the stack");
        Dwarf_Die chain[MAX_INLINE_DEPTH], physical;
        size_t n = inline_chain(fn, pc, chain, &physical);
        out->n = 0;
        for (size_t i = n; i-- > 0;) {
                struct cached_frame *f = &out->f[out->n++];
                r = die_name(m, &chain[i], &f->function);
                if (r < 0)
                        return r;
                f->file = file;
                f->line = line;
                f->inlined = true;
                r = call_site(m, &chain[i], &file, &line);
                if (r < 0)
                        return r;
        }
        struct cached_frame *f = &out->f[out->n++];
        r = die_name(m, &physical, &f->function);
        if (r < 0)
                return r;
        f->file = file;
        f->line = line;
        f->inlined = false;
        return 0;
}

/* How the code at module address pc unwinds: 1 as a signal frame (the kernel's
 * trampoline), 0 as an ordinary function, -1 not at all (no unwind information covers it:
 * padding between functions, or a module without any). */
static int unwind_kind(struct sym_module *m, GElf_Addr pc)
{
        Dwarf_CFI *(*const tables[])(Dwfl_Module *, Dwarf_Addr *) = {dwfl_module_eh_cfi,
                                                                     dwfl_module_dwarf_cfi};
        for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
                Dwarf_Addr bias = 0;
                Dwarf_CFI *cfi = tables[i](m->mod, &bias);
                Dwarf_Frame *frame = NULL;
                if (cfi == NULL || pc < bias || dwarf_cfi_addrframe(cfi, pc - bias, &frame) != 0)
                        continue;
                Dwarf_Addr start, end;
                bool signal = false;
                dwarf_frame_info(frame, &start, &end, &signal);
                free(frame);
                return signal ? 1 : 0;
        }
        return -1;
}

static int symbolize(struct sym_module *m, uint64_t offset, struct cached_result **ret)
{
        struct frame_buf *buf = calloc(1, sizeof(*buf));
        if (!buf)
                return -ENOMEM;
        int r = symbolize_dwarf(m, offset, buf);
        if (r < 0)
                goto out;
        if (buf->n == 0)
                buf->n = 1;

        /* No DWARF function (stripped file without debuginfo, assembly, PLT): name the
         * physical frame from .symtab/.dynsym (or MiniDebugInfo). */
        struct cached_frame *phys = &buf->f[buf->n - 1];
        if (!phys->function) {
                const char *name;
                r = symtab_lookup(m, offset + m->elf_bias, &name);
                if (r < 0)
                        goto out;
                /* Return addresses that no call pushed: the kernel's signal trampoline
                 * (glibc's __restore_rt, where a handler returns to) and makecontext's
                 * __start_context (where a context's function returns to).  The byte
                 * before, asked for here, is then not the call: the trampoline's unwind
                 * information (marked as a signal frame) starts one byte early for
                 * unwinders that look up the return address minus one, and
                 * __start_context follows padding that no function covers.  In both, the
                 * frame is the function at the return address, without the source line
                 * of the byte before.  The byte before code that unwinds as a function's
                 * is that function's, named or not (a stripped static function ending in
                 * a call that does not return), and stays so. */
                int kind = unwind_kind(m, offset + m->elf_bias);
                const struct sym_entry *at = NULL;
                if ((kind > 0 || (kind < 0 && !name)) &&
                    (r = symtab_entry(m, offset + 1 + m->elf_bias, &at)) < 0)
                        goto out;
                if (at && (kind > 0 || at->addr == offset + 1 + m->elf_bias)) {
                        name = at->name;
                        phys->file = NULL;
                        phys->line = 0;
                }
                if (name) {
                        r = display_name(m, name, &phys->function);
                        if (r < 0)
                                goto out;
                }
        }

        struct cached_result *res = malloc(sizeof(*res) + buf->n * sizeof(res->f[0]));
        if (!res) {
                r = -ENOMEM;
                goto out;
        }
        res->offset = offset;
        res->n = (uint32_t)buf->n;
        memcpy(res->f, buf->f, buf->n * sizeof(res->f[0]));
        *ret = res;
out:
        free(buf);
        return r;
}

static int frames_unknown(struct ap_sym_frame **ret_frames)
{
        struct ap_sym_frame *f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        *ret_frames = f;
        return 1;
}

static int frames_copy(const struct cached_result *res, struct ap_sym_frame **ret_frames)
{
        struct ap_sym_frame *f = calloc(res->n, sizeof(*f));
        if (!f)
                return -ENOMEM;
        for (uint32_t i = 0; i < res->n; i++) {
                const struct cached_frame *c = &res->f[i];
                f[i].line = c->line;
                f[i].inlined = c->inlined;
                if ((c->function && !(f[i].function = strdup(c->function))) ||
                    (c->file && !(f[i].file = strdup(c->file)))) {
                        ap_sym_frames_free(f, res->n);
                        return -ENOMEM;
                }
        }
        *ret_frames = f;
        return (int)res->n;
}

int ap_symbolizer_lookup(struct ap_symbolizer *s, const char *path, const uint8_t *build_id,
                         size_t build_id_len, uint64_t offset, struct ap_sym_frame **ret_frames)
{
        if (!s || !ret_frames || (build_id_len && !build_id))
                return -EINVAL;
        if (!path || !*path)
                return frames_unknown(ret_frames);

        struct sym_module *m;
        int r = module_get(s, path, &m);
        if (r < 0)
                return r;
        m->last_use = ++s->clock;
        if (!module_matches(m, build_id, build_id_len)) {
                r = module_recheck(m);
                if (r < 0)
                        return r;
                if (!module_matches(m, build_id, build_id_len))
                        return frames_unknown(ret_frames);
        }

        struct cached_result *res = addrmap_get(&m->addrs, offset);
        if (!res) {
                r = symbolize(m, offset, &res);
                if (r < 0)
                        return r;
                r = addrmap_put(&m->addrs, res);
                if (r < 0) {
                        free(res);
                        return r;
                }
        }
        return frames_copy(res, ret_frames);
}

int ap_symbolizer_lookup_name(struct ap_symbolizer *s, const char *path,
                              const uint8_t *build_id, size_t build_id_len, uint64_t offset,
                              char **ret_name)
{
        *ret_name = NULL;
        if (!s || (build_id_len && !build_id))
                return -EINVAL;
        if (!path || !*path)
                return 0;
        struct sym_module *m;
        int r = module_get(s, path, &m);
        if (r < 0)
                return r;
        m->last_use = ++s->clock;
        if (!module_matches(m, build_id, build_id_len) || !m->mod)
                return 0;
        const char *raw, *name;
        r = symtab_lookup(m, offset + m->elf_bias, &raw);
        if (r < 0)
                return r;
        if (!raw)
                return 0;
        r = display_name(m, raw, &name);
        if (r < 0)
                return r;
        /* "__libc_start_main@@GLIBC_2.34": the version is not part of the name. */
        *ret_name = strndup(name, strcspn(name, "@"));
        return *ret_name ? 0 : -ENOMEM;
}

int ap_symbolizer_warm(struct ap_symbolizer *s, const char *path, const uint8_t *build_id,
                       size_t build_id_len)
{
        if (!s || !path || !*path || (build_id_len && !build_id))
                return -EINVAL;
        struct sym_module *m;
        int r = module_get(s, path, &m);
        if (r < 0)
                return r;
        m->last_use = ++s->clock;
        if (!module_matches(m, build_id, build_id_len))
                return 0;
        r = ensure_dwarf(m);
        if (r < 0)
                return r;
        const char *name;
        return symtab_lookup(m, 0, &name);
}

void ap_sym_frames_free(struct ap_sym_frame *frames, size_t n)
{
        if (!frames)
                return;
        for (size_t i = 0; i < n; i++) {
                free(frames[i].function);
                free(frames[i].file);
        }
        free(frames);
}

int ap_symbolizer_new(struct ap_symbolizer **ret)
{
        struct ap_symbolizer *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->mods = calloc(MAX_MODULES, sizeof(*s->mods));
        if (!s->mods) {
                free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

void ap_symbolizer_free(struct ap_symbolizer *s)
{
        if (!s)
                return;
        for (size_t i = 0; i < s->nmods; i++)
                module_free(s->mods[i]);
        free(s->mods);
        free(s);
}
