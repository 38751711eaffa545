/* Tests for collector/symbolize.c: exact function names, inline chains, files and lines for
 * the symfix fixtures (PIE, ET_EXEC, shared object, stripped shared object, C++), demangling,
 * and survival of missing, mismatched, garbage and corrupted files.
 *
 * Usage: test-symbolize src=symfix.c pie=… nopie=… lib=… [stripped=…] [cppsrc=… cpp=…]
 *                      [noaranges=… badaranges=… partaranges=…] [clang=…]
 *                      [split=… splitz=… splitplain=… splitaltrel=…] [dwzlib=… dwzdebug=…]
 */
#include "../helpers.h"
#include "symbolize.h"
#include "debugcache.h"

#include <dirent.h>
#include <fcntl.h>
#include <gelf.h>
#include <limits.h>
#include <sys/time.h>
#include <libelf.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct args {
        const char *src, *pie, *nopie, *lib, *stripped, *cppsrc, *cpp, *noaranges, *clang;
        const char *badaranges, *partaranges; /* .debug_aranges malformed, missing the unit */
        const char *split, *splitz, *splitplain, *splitaltrel; /* stripped library, its debug files */
        const char *dwzlib, *dwzdebug; /* the same after dwz, its debug file */
};

static struct args args;

/* ---- helpers reading the fixtures ------------------------------------------------------ */

/* Line number of the line in `path` containing `marker` (e.g. "@inner-body"). */
static uint32_t marker_line(const char *path, const char *marker)
{
        FILE *f = fopen(path, "r");
        ASSERT_NOT_NULL(f);
        char buf[1024];
        uint32_t line = 0, found = 0;
        while (fgets(buf, sizeof(buf), f)) {
                line++;
                if (strstr(buf, marker)) {
                        ASSERT_EQ(found, 0u); /* markers are unique */
                        found = line;
                }
        }
        fclose(f);
        if (!found)
                fprintf(stderr, "marker %s not found in %s\n", marker, path);
        ASSERT_TRUE(found > 0);
        return found;
}

static Elf *elf_open_file(const char *path, int *fd)
{
        *fd = open(path, O_RDONLY | O_CLOEXEC);
        ASSERT_TRUE(*fd >= 0);
        Elf *e = elf_begin(*fd, ELF_C_READ, NULL);
        ASSERT_NOT_NULL(e);
        return e;
}

/* Value and size of symbol `name`, from .symtab or else .dynsym. */
static void find_sym(const char *path, const char *name, uint64_t *value, uint64_t *size)
{
        int fd;
        Elf *e = elf_open_file(path, &fd);
        bool found = false;
        for (int pass = 0; pass < 2 && !found; pass++) {
                Elf_Scn *scn = NULL;
                while (!found && (scn = elf_nextscn(e, scn))) {
                        GElf_Shdr sh;
                        ASSERT_NOT_NULL(gelf_getshdr(scn, &sh));
                        if (sh.sh_type != (pass == 0 ? SHT_SYMTAB : SHT_DYNSYM))
                                continue;
                        Elf_Data *d = elf_getdata(scn, NULL);
                        ASSERT_NOT_NULL(d);
                        size_t n = sh.sh_entsize ? sh.sh_size / sh.sh_entsize : 0;
                        for (size_t i = 0; i < n; i++) {
                                GElf_Sym sym;
                                ASSERT_NOT_NULL(gelf_getsym(d, (int)i, &sym));
                                const char *nm = elf_strptr(e, sh.sh_link, sym.st_name);
                                if (nm && strcmp(nm, name) == 0 && sym.st_value) {
                                        *value = sym.st_value;
                                        *size = sym.st_size;
                                        found = true;
                                        break;
                                }
                        }
                }
        }
        elf_end(e);
        close(fd);
        if (!found)
                fprintf(stderr, "symbol %s not found in %s\n", name, path);
        ASSERT_TRUE(found);
        ASSERT_TRUE(*size > 0);
}

static int elf_type(const char *path)
{
        int fd;
        Elf *e = elf_open_file(path, &fd);
        GElf_Ehdr eh;
        ASSERT_NOT_NULL(gelf_getehdr(e, &eh));
        elf_end(e);
        close(fd);
        return eh.e_type;
}

static size_t read_build_id(const char *path, uint8_t *buf, size_t cap)
{
        int fd;
        Elf *e = elf_open_file(path, &fd);
        size_t len = 0;
        Elf_Scn *scn = NULL;
        while (!len && (scn = elf_nextscn(e, scn))) {
                GElf_Shdr sh;
                ASSERT_NOT_NULL(gelf_getshdr(scn, &sh));
                if (sh.sh_type != SHT_NOTE)
                        continue;
                Elf_Data *d = elf_getdata(scn, NULL);
                GElf_Nhdr nh;
                size_t off = 0, name_off, desc_off, next;
                while (d && (next = gelf_getnote(d, off, &nh, &name_off, &desc_off)) > 0) {
                        if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
                            memcmp((char *)d->d_buf + name_off, "GNU", 4) == 0 &&
                            nh.n_descsz <= cap) {
                                memcpy(buf, (char *)d->d_buf + desc_off, nh.n_descsz);
                                len = nh.n_descsz;
                                break;
                        }
                        off = next;
                }
        }
        elf_end(e);
        close(fd);
        return len;
}

static const char *base_name(const char *p)
{
        const char *s = p ? strrchr(p, '/') : NULL;
        return s ? s + 1 : p;
}

/* The frame's file is absolute and names the same file as `src`. */
static void assert_same_file(const char *file, const char *src)
{
        ASSERT_NOT_NULL(file);
        ASSERT_TRUE(file[0] == '/');
        ASSERT_NOT_CONTAINS(file, "/../");
        ASSERT_NOT_CONTAINS(file, "/./");
        char a[PATH_MAX], b[PATH_MAX];
        ASSERT_NOT_NULL(realpath(file, a));
        ASSERT_NOT_NULL(realpath(src, b));
        ASSERT_STREQ(a, b);
}

static void dump_frames(const char *what, uint64_t off, const struct ap_sym_frame *f, int n)
{
        fprintf(stderr, "%s %#" PRIx64 ":\n", what, off);
        for (int i = 0; i < n; i++)
                fprintf(stderr, "  #%d %s at %s:%u%s\n", i, f[i].function ? f[i].function : "?",
                        f[i].file ? f[i].file : "?", f[i].line, f[i].inlined ? " (inlined)" : "");
}

static void assert_unknown(struct ap_symbolizer *s, const char *path, const uint8_t *id,
                           size_t idlen, uint64_t off)
{
        struct ap_sym_frame *f = NULL;
        int n = ap_symbolizer_lookup(s, path, id, idlen, off, &f);
        ASSERT_EQ(n, 1);
        ASSERT_NULL(f[0].function);
        ASSERT_NULL(f[0].file);
        ASSERT_EQ(f[0].line, 0u);
        ASSERT_FALSE(f[0].inlined);
        ap_sym_frames_free(f, (size_t)n);
}

/* An expected frame; file NULL means "no file", line 0 "no line". */
struct want {
        const char *function;
        const char *file; /* compared by identity with realpath */
        uint32_t line;
        bool inlined;
};

static bool frames_equal(const struct ap_sym_frame *f, int n, const struct want *w, int nw)
{
        if (n != nw)
                return false;
        for (int i = 0; i < n; i++) {
                if (!f[i].function || strcmp(f[i].function, w[i].function) != 0 ||
                    f[i].line != w[i].line || f[i].inlined != w[i].inlined)
                        return false;
                if ((f[i].file == NULL) != (w[i].file == NULL))
                        return false;
                if (f[i].file && strcmp(base_name(f[i].file), base_name(w[i].file)) != 0)
                        return false;
        }
        return true;
}

/* Symbolizes every byte address of `fn` in `path`.  Every result must end in the physical
 * function `fn` (inlined = false, only frame with that flag), and at least one must equal
 * `want` exactly.  Returns how many addresses produced exactly `want`. */
static int scan_function(struct ap_symbolizer *s, const char *path, const char *fn,
                         const char *physical_name, const struct want *want, int nwant)
{
        uint64_t lo, size;
        find_sym(path, fn, &lo, &size);
        int hits = 0;
        for (uint64_t off = lo; off < lo + size; off++) {
                struct ap_sym_frame *f = NULL;
                int n = ap_symbolizer_lookup(s, path, NULL, 0, off, &f);
                ASSERT_TRUE(n >= 1);
                if (!f[n - 1].function || strcmp(f[n - 1].function, physical_name) != 0)
                        dump_frames(fn, off, f, n);
                ASSERT_STREQ(f[n - 1].function, physical_name);
                ASSERT_FALSE(f[n - 1].inlined);
                for (int i = 0; i < n - 1; i++)
                        ASSERT_TRUE(f[i].inlined);
                for (int i = 0; i < n; i++)
                        if (f[i].file)
                                assert_same_file(f[i].file, want[nwant - 1].file);
                if (frames_equal(f, n, want, nwant))
                        hits++;
                ap_sym_frames_free(f, (size_t)n);
        }
        if (!hits) {
                fprintf(stderr, "no address of %s in %s symbolized as:\n", fn, path);
                for (int i = 0; i < nwant; i++)
                        fprintf(stderr, "  #%d %s at %s:%u%s\n", i, want[i].function,
                                want[i].file ? base_name(want[i].file) : "?", want[i].line,
                                want[i].inlined ? " (inlined)" : "");
                fprintf(stderr, "got:\n");
                for (uint64_t off = lo; off < lo + size; off++) {
                        struct ap_sym_frame *f = NULL;
                        int n = ap_symbolizer_lookup(s, path, NULL, 0, off, &f);
                        dump_frames(fn, off, f, n);
                        ap_sym_frames_free(f, (size_t)n);
                }
        }
        ASSERT_TRUE(hits > 0);
        return hits;
}

/* ---- the cases -------------------------------------------------------------------------- */

/* Inline chains, function entry and file names of one build of symfix.c. */
static void check_symfix_build(struct ap_symbolizer *s, const char *path)
{
        const char *src = args.src;
        uint32_t inner_body = marker_line(src, "@inner-body");
        uint32_t middle_call = marker_line(src, "@middle-call");
        uint32_t caller_call = marker_line(src, "@caller-call");
        uint32_t caller2_call = marker_line(src, "@caller2-call");
        uint32_t plain_begin = marker_line(src, "@plain-begin");
        uint32_t plain_end = marker_line(src, "@plain-end");

        /* Inner's loop body inlined into symfix_caller: two frames. */
        const struct want one[] = {
                { "symfix_inner", src, inner_body, true },
                { "symfix_caller", src, caller_call, false },
        };
        scan_function(s, path, "symfix_caller", "symfix_caller", one, 2);

        /* Two levels: inner inlined into middle inlined into symfix_caller2. */
        const struct want two[] = {
                { "symfix_inner", src, inner_body, true },
                { "symfix_middle", src, middle_call, true },
                { "symfix_caller2", src, caller2_call, false },
        };
        scan_function(s, path, "symfix_caller2", "symfix_caller2", two, 3);

        /* A function with nothing inlined: one frame at its entry, a line of its body. */
        uint64_t lo, size;
        find_sym(path, "symfix_plain", &lo, &size);
        struct ap_sym_frame *f = NULL;
        int n = ap_symbolizer_lookup(s, path, NULL, 0, lo, &f);
        ASSERT_EQ(n, 1);
        ASSERT_STREQ(f[0].function, "symfix_plain");
        ASSERT_FALSE(f[0].inlined);
        assert_same_file(f[0].file, src);
        ASSERT_TRUE(f[0].line >= plain_begin && f[0].line <= plain_end);
        ap_sym_frames_free(f, (size_t)n);
}

static void test_pie(struct ap_symbolizer *s)
{
        ASSERT_EQ(elf_type(args.pie), ET_DYN);
        check_symfix_build(s, args.pie);
}

static void test_nopie(struct ap_symbolizer *s)
{
        if (elf_type(args.nopie) != ET_EXEC) {
                fprintf(stderr, "note: %s is not ET_EXEC, non-PIE case not covered\n",
                        args.nopie);
        }
        uint64_t lo, size;
        find_sym(args.nopie, "symfix_plain", &lo, &size);
        if (elf_type(args.nopie) == ET_EXEC)
                ASSERT_TRUE(lo >= 0x400000); /* an absolute address, not a file offset */
        check_symfix_build(s, args.nopie);
}

static void test_shared_lib(struct ap_symbolizer *s)
{
        ASSERT_EQ(elf_type(args.lib), ET_DYN);
        check_symfix_build(s, args.lib);
}

/* Without .debug_aranges (clang and rustc omit it by default) libdwfl finds no CU for an
 * address; our own CU index must not care.  Nor about a malformed section, or one that
 * leaves the unit out. */
static void test_optional_builds(struct ap_symbolizer *s)
{
        if (args.noaranges)
                check_symfix_build(s, args.noaranges);
        else
                fprintf(stderr, "note: no fixture without .debug_aranges, not covered\n");
        if (args.badaranges && args.partaranges) {
                check_symfix_build(s, args.badaranges);
                check_symfix_build(s, args.partaranges);
        } else {
                fprintf(stderr, "note: no fixtures with a broken .debug_aranges, not covered\n");
        }
        if (args.clang)
                check_symfix_build(s, args.clang);
        else
                fprintf(stderr, "note: no clang-built fixture, not covered\n");
}

/* No DWARF and no .symtab: names come from .dynsym, no file, no line, no inline frames. */
static void test_stripped_lib(struct ap_symbolizer *s)
{
        if (!args.stripped) {
                fprintf(stderr, "note: no stripped library (objcopy missing), not covered\n");
                return;
        }
        const char *names[] = { "symfix_plain", "symfix_caller", "symfix_caller2" };
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
                uint64_t lo, size;
                find_sym(args.stripped, names[k], &lo, &size);
                for (uint64_t off = lo; off < lo + size; off++) {
                        struct ap_sym_frame *f = NULL;
                        int n = ap_symbolizer_lookup(s, args.stripped, NULL, 0, off, &f);
                        ASSERT_EQ(n, 1);
                        ASSERT_STREQ(f[0].function, names[k]);
                        ASSERT_NULL(f[0].file);
                        ASSERT_EQ(f[0].line, 0u);
                        ASSERT_FALSE(f[0].inlined);
                        ap_sym_frames_free(f, (size_t)n);
                }
        }
}

static void test_cpp(struct ap_symbolizer *s)
{
        if (!args.cpp || !args.cppsrc) {
                fprintf(stderr, "note: no C++ fixture, C++ names not covered\n");
                return;
        }
        const char *src = args.cppsrc;
        const struct want w[] = {
                { "ns::Class::method(int volatile*, int) const", src,
                  marker_line(src, "@cpp-method-body"), true },
                { "ns::Class::run(int volatile*, int) const", src,
                  marker_line(src, "@cpp-run-call"), false },
        };
        scan_function(s, args.cpp, "_ZNK2ns5Class3runEPVii",
                      "ns::Class::run(int volatile*, int) const", w, 2);

        /* Holder<lambda>::call and the lambda's operator() have internal linkage: GCC
         * writes no linkage name for them, only "call" and "operator()".  Their names must
         * still say where they are: the class template, and the function the lambda is in.
         * (The spelling of the template arguments is the compiler's, so only the parts
         * that do not depend on it are checked.) */
        uint64_t lo, size;
        find_sym(args.cpp, "_ZN2ns5applyEPVi", &lo, &size);
        uint32_t body = marker_line(src, "@cpp-lambda-body");
        uint32_t call = marker_line(src, "@cpp-holder-call");
        uint32_t apply = marker_line(src, "@cpp-apply-call");
        int hits = 0;
        for (uint64_t off = lo; off < lo + size; off++) {
                struct ap_sym_frame *f = NULL;
                int n = ap_symbolizer_lookup(s, args.cpp, NULL, 0, off, &f);
                ASSERT_TRUE(n >= 1);
                ASSERT_STREQ(f[n - 1].function, "ns::apply(int volatile*)");
                if (n == 3 && f[0].line == body && f[1].line == call && f[2].line == apply) {
                        if (strncmp(f[0].function, "ns::apply(int volatile*)::", 26) != 0 ||
                            !strstr(f[0].function, "operator()") ||
                            strncmp(f[1].function, "ns::Holder<", 11) != 0 ||
                            !strstr(f[1].function, ">::call"))
                                dump_frames("ns::apply", off, f, n);
                        ASSERT_TRUE(strncmp(f[0].function, "ns::apply(int volatile*)::", 26) == 0);
                        ASSERT_NOT_NULL(strstr(f[0].function, "operator()"));
                        ASSERT_TRUE(strncmp(f[1].function, "ns::Holder<", 11) == 0);
                        ASSERT_NOT_NULL(strstr(f[1].function, ">::call"));
                        ASSERT_TRUE(f[0].inlined && f[1].inlined && !f[2].inlined);
                        hits++;
                }
                ap_sym_frames_free(f, (size_t)n);
        }
        ASSERT_TRUE(hits > 0);
}

static void test_build_id(struct ap_symbolizer *s)
{
        uint8_t id[64];
        size_t len = read_build_id(args.pie, id, sizeof(id));
        ASSERT_TRUE(len >= 8);
        uint64_t lo, size;
        find_sym(args.pie, "symfix_plain", &lo, &size);

        struct ap_sym_frame *f = NULL;
        int n = ap_symbolizer_lookup(s, args.pie, id, len, lo, &f);
        ASSERT_EQ(n, 1);
        ASSERT_STREQ(f[0].function, "symfix_plain");
        ap_sym_frames_free(f, (size_t)n);

        id[len - 1] ^= 0xff;
        assert_unknown(s, args.pie, id, len, lo);
        id[len - 1] ^= 0xff;
        assert_unknown(s, args.pie, id, len - 1, lo); /* a prefix is not a match */

        /* The cached module still serves the right build-id after a mismatch. */
        n = ap_symbolizer_lookup(s, args.pie, id, len, lo, &f);
        ASSERT_EQ(n, 1);
        ASSERT_STREQ(f[0].function, "symfix_plain");
        ap_sym_frames_free(f, (size_t)n);

        /* A file without DWARF still has a build-id to check. */
        if (!args.stripped)
                return;
        len = read_build_id(args.stripped, id, sizeof(id));
        ASSERT_TRUE(len >= 8);
        id[0] ^= 1;
        assert_unknown(s, args.stripped, id, len, lo);
}

static int count_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        if (!d)
                return -1;
        int n = 0;
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

static void write_file(const char *path, const void *data, size_t len)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ((size_t)write(fd, data, len), len);
        ASSERT_EQ(close(fd), 0);
}

static void *read_whole(const char *path, size_t *len)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        struct stat st;
        ASSERT_EQ(fstat(fd, &st), 0);
        char *buf = malloc((size_t)st.st_size);
        ASSERT_NOT_NULL(buf);
        size_t got = 0;
        while (got < (size_t)st.st_size) {
                ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
                ASSERT_TRUE(r > 0);
                got += (size_t)r;
        }
        close(fd);
        *len = got;
        return buf;
}

static void test_unusable_files(void)
{
        int fds_before = count_fds();
        for (int round = 0; round < 3; round++) {
                struct ap_symbolizer *s;
                ASSERT_OK(ap_symbolizer_new(&s));
                assert_unknown(s, "/nonexistent/allocprof/libnothing.so", NULL, 0, 0x1234);
                assert_unknown(s, "/nonexistent/allocprof/libnothing.so", NULL, 0, 0x1234);
                assert_unknown(s, "/etc/passwd", NULL, 0, 0x10);
                assert_unknown(s, "/", NULL, 0, 0x10);
                assert_unknown(s, "/dev/null", NULL, 0, 0);
                assert_unknown(s, "", NULL, 0, 0);
                assert_unknown(s, NULL, NULL, 0, 0);
                /* An address outside any function of a good file. */
                assert_unknown(s, args.pie, NULL, 0, 0xfffffffffff0);
                ap_symbolizer_free(s);
        }
        ASSERT_EQ(count_fds(), fds_before);
        ap_symbolizer_free(NULL);
        ap_sym_frames_free(NULL, 3);

        struct ap_symbolizer *s;
        ASSERT_OK(ap_symbolizer_new(&s));
        struct ap_sym_frame *f = NULL;
        ASSERT_ERR(ap_symbolizer_lookup(NULL, args.pie, NULL, 0, 0, &f), -EINVAL);
        ASSERT_ERR(ap_symbolizer_lookup(s, args.pie, NULL, 4, 0, &f), -EINVAL);
        ap_symbolizer_free(s);
}

/* libdwfl looks for <file>.debug next to a stripped file with a blocking open(); a FIFO
 * planted there by the profiled program must not hang the symbolizer. */
static void test_debuginfo_fifo(void)
{
        if (!args.stripped)
                return;
        char dir[] = "/tmp/test-symbolize-XXXXXX";
        ASSERT_NOT_NULL(mkdtemp(dir));
        char lib[PATH_MAX], fifo[PATH_MAX];
        snprintf(lib, sizeof(lib), "%s/libx.so", dir);
        snprintf(fifo, sizeof(fifo), "%s/libx.so.debug", dir);
        size_t len;
        void *data = read_whole(args.stripped, &len);
        write_file(lib, data, len);
        free(data);
        ASSERT_EQ(mkfifo(fifo, 0600), 0);

        uint64_t lo, size;
        find_sym(lib, "symfix_plain", &lo, &size);
        alarm(60); /* a hang fails the test instead of stalling the suite */
        struct ap_symbolizer *s;
        ASSERT_OK(ap_symbolizer_new(&s));
        struct ap_sym_frame *f = NULL;
        int n = ap_symbolizer_lookup(s, lib, NULL, 0, lo, &f);
        ASSERT_EQ(n, 1);
        ASSERT_STREQ(f[0].function, "symfix_plain");
        ASSERT_NULL(f[0].file);
        ap_sym_frames_free(f, (size_t)n);
        ap_symbolizer_free(s);
        alarm(0);

        ASSERT_EQ(unlink(fifo), 0);
        ASSERT_EQ(unlink(lib), 0);
        ASSERT_EQ(rmdir(dir), 0);
}

/* Truncations and byte corruptions of a real fixture: any result is fine, a crash or a
 * sanitizer report is not. */
static void test_corrupt_files(void)
{
        size_t len;
        uint8_t *orig = read_whole(args.lib, &len);
        uint8_t *buf = malloc(len);
        ASSERT_NOT_NULL(buf);
        char tmpl[] = "/tmp/test-symbolize-XXXXXX";
        ASSERT_NOT_NULL(mkdtemp(tmpl));
        char path[PATH_MAX];
        uint64_t lo, size;
        find_sym(args.lib, "symfix_caller2", &lo, &size);

        uint64_t rng = 0x9e3779b97f4a7c15ULL;
        for (int round = 0; round < 48; round++) {
                memcpy(buf, orig, len);
                size_t n = len;
                if (round < 8) {
                        n = round == 0 ? 1 : (len * (size_t)round) / 9; /* truncated */
                } else {
                        /* Flip bytes past the ELF header, denser in later rounds. */
                        int flips = 1 + (round - 8) * 4;
                        for (int k = 0; k < flips; k++) {
                                rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
                                size_t at = 64 + (size_t)((rng >> 17) % (len - 64));
                                buf[at] ^= (uint8_t)(rng >> 56) | 1;
                        }
                }
                snprintf(path, sizeof(path), "%s/lib%d.so", tmpl, round);
                write_file(path, buf, n);

                struct ap_symbolizer *s;
                ASSERT_OK(ap_symbolizer_new(&s));
                for (uint64_t off = lo; off < lo + size; off += 3) {
                        struct ap_sym_frame *f = NULL;
                        int r = ap_symbolizer_lookup(s, path, NULL, 0, off, &f);
                        ASSERT_TRUE(r >= 1);
                        for (int i = 0; i < r; i++)
                                ASSERT_EQ(f[i].inlined, i < r - 1);
                        ap_sym_frames_free(f, (size_t)r);
                }
                ap_symbolizer_free(s);
                ASSERT_EQ(unlink(path), 0);
        }
        ASSERT_EQ(rmdir(tmpl), 0);
        free(buf);
        free(orig);
}

/* Results are cached per (module, offset); repeated and interleaved lookups must agree. */
static void test_cache_consistency(void)
{
        struct ap_symbolizer *s;
        ASSERT_OK(ap_symbolizer_new(&s));
        uint64_t lo, size;
        find_sym(args.pie, "symfix_caller2", &lo, &size);
        for (uint64_t off = lo; off < lo + size; off++) {
                struct ap_sym_frame *a = NULL, *b = NULL;
                int na = ap_symbolizer_lookup(s, args.pie, NULL, 0, off, &a);
                int nl = ap_symbolizer_lookup(s, args.lib, NULL, 0, off, &b);
                ASSERT_TRUE(nl >= 1);
                ap_sym_frames_free(b, (size_t)nl);
                b = NULL;
                int nb = ap_symbolizer_lookup(s, args.pie, NULL, 0, off, &b);
                ASSERT_EQ(na, nb);
                for (int i = 0; i < na; i++) {
                        ASSERT_STREQ(a[i].function, b[i].function);
                        ASSERT_STREQ(a[i].file, b[i].file);
                        ASSERT_EQ(a[i].line, b[i].line);
                        ASSERT_EQ(a[i].inlined, b[i].inlined);
                        ASSERT_TRUE(a[i].function != b[i].function); /* caller-owned copies */
                }
                ap_sym_frames_free(a, (size_t)na);
                ap_sym_frames_free(b, (size_t)nb);
        }

        /* More distinct modules than the cache holds: old ones are evicted and reopened. */
        char path[64];
        for (int i = 0; i < 300; i++) {
                snprintf(path, sizeof(path), "/nonexistent/allocprof/lib%d.so", i);
                assert_unknown(s, path, NULL, 0, 0x1000);
        }
        struct ap_sym_frame *f = NULL;
        find_sym(args.pie, "symfix_plain", &lo, &size);
        int n = ap_symbolizer_lookup(s, args.pie, NULL, 0, lo, &f);
        ASSERT_EQ(n, 1);
        ASSERT_STREQ(f[0].function, "symfix_plain");
        ap_sym_frames_free(f, (size_t)n);
        ap_symbolizer_free(s);
}

/* ---- the inflated-debug-file cache ------------------------------------------------------ */

/* The one entry of cache directory `dir` (asserts there is exactly one), or NULL if none. */
static char *only_entry(const char *dir)
{
        DIR *d = opendir(dir);
        if (!d)
                return NULL;
        char *found = NULL;
        for (struct dirent *de; (de = readdir(d));) {
                if (de->d_name[0] == '.')
                        continue;
                ASSERT_NULL(found);
                ASSERT_TRUE(asprintf(&found, "%s/%s", dir, de->d_name) > 0);
        }
        closedir(d);
        return found;
}

static size_t count_entries(const char *dir)
{
        DIR *d = opendir(dir);
        if (!d)
                return 0;
        size_t n = 0;
        for (struct dirent *de; (de = readdir(d));)
                n += de->d_name[0] != '.';
        closedir(d);
        return n;
}

static off_t file_size(const char *path)
{
        struct stat st;
        return stat(path, &st) == 0 ? st.st_size : -1;
}

static time_t file_mtime(const char *path)
{
        struct stat st;
        ASSERT_EQ(stat(path, &st), 0);
        return st.st_mtim.tv_sec;
}

static void set_mtime(const char *path, time_t t)
{
        struct timespec ts[2] = {{t, 0}, {t, 0}};
        ASSERT_EQ(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* Counts the sections of `path` that are SHF_COMPRESSED and those that carry DWARF. */
static void count_sections(const char *path, size_t *compressed, size_t *dwarf)
{
        int fd;
        Elf *e = elf_open_file(path, &fd);
        size_t shstrndx;
        ASSERT_EQ(elf_getshdrstrndx(e, &shstrndx), 0);
        *compressed = *dwarf = 0;
        for (Elf_Scn *scn = elf_nextscn(e, NULL); scn; scn = elf_nextscn(e, scn)) {
                GElf_Shdr sh;
                ASSERT_NOT_NULL(gelf_getshdr(scn, &sh));
                const char *name = elf_strptr(e, shstrndx, sh.sh_name);
                ASSERT_NOT_NULL(name);
                *compressed += (sh.sh_flags & SHF_COMPRESSED) != 0;
                *dwarf += strncmp(name, ".debug_", 7) == 0 && sh.sh_type != SHT_NOBITS;
        }
        elf_end(e);
        close(fd);
}

static void copy_file(const char *from, const char *to)
{
        size_t len;
        void *data = read_whole(from, &len);
        unlink(to); /* a new inode: a new identity */
        write_file(to, data, len);
        free(data);
}

static void mkdir_p(const char *path)
{
        char buf[PATH_MAX];
        snprintf(buf, sizeof(buf), "%s", path);
        for (char *p = buf + 1; *p; p++)
                if (*p == '/') {
                        *p = '\0';
                        ASSERT_TRUE(mkdir(buf, 0700) == 0 || errno == EEXIST);
                        *p = '/';
                }
        ASSERT_TRUE(mkdir(buf, 0700) == 0 || errno == EEXIST);
}

/* check_symfix_build with a symbolizer of its own (nothing cached from before). */
static void check_fresh(const char *path)
{
        struct ap_symbolizer *s;
        ASSERT_OK(ap_symbolizer_new(&s));
        check_symfix_build(s, path);
        ap_symbolizer_free(s);
}

/* Whether symfix_plain of the split library gets its file and line (from DWARF). */
static bool split_has_lines(void)
{
        struct ap_symbolizer *s;
        ASSERT_OK(ap_symbolizer_new(&s));
        uint64_t lo, size;
        find_sym(args.split, "symfix_plain", &lo, &size);
        struct ap_sym_frame *f = NULL;
        int n = ap_symbolizer_lookup(s, args.split, NULL, 0, lo, &f);
        ASSERT_EQ(n, 1);
        ASSERT_STREQ(f[0].function, "symfix_plain");
        bool lines = f[0].file != NULL && f[0].line > 0;
        ap_sym_frames_free(f, (size_t)n);
        ap_symbolizer_free(s);
        return lines;
}

/* A separate debug file with compressed DWARF, found by build-id under the system debug
 * directory, is replaced by an inflated copy in the cache: same results, the copy reused
 * while the original is unchanged, rebuilt when damaged, a new one when the original
 * changes; nothing cached for an uncompressed file or with the cache off; old entries
 * evicted past the size limit. */
static void test_debug_cache(void)
{
        if (!args.split) {
                fprintf(stderr, "note: no split library (objcopy missing), cache not covered\n");
                return;
        }
        uint8_t id[64];
        size_t len = read_build_id(args.split, id, sizeof(id));
        ASSERT_TRUE(len >= 2);
        char dbgdir[PATH_MAX], dbg[PATH_MAX], tmpl[] = "/tmp/test-symbolize-XXXXXX";
        snprintf(dbgdir, sizeof(dbgdir), "%s/.build-id/%02x", AP_SYSTEM_DEBUG_DIR, id[0]);
        mkdir_p(dbgdir);
        int n = snprintf(dbg, sizeof(dbg), "%s/", dbgdir);
        for (size_t i = 1; i < len; i++)
                n += snprintf(dbg + n, sizeof(dbg) - (size_t)n, "%02x", id[i]);
        snprintf(dbg + n, sizeof(dbg) - (size_t)n, ".debug");
        ASSERT_NOT_NULL(mkdtemp(tmpl));
        char cache[128];
        snprintf(cache, sizeof(cache), "%s/debug", tmpl);
        ASSERT_EQ(setenv("ALLOCPROF_CACHE_DIR", tmpl, 1), 0);

        /* Without a debug file the stripped library has names but no lines. */
        unlink(dbg);
        ASSERT_FALSE(split_has_lines());
        ASSERT_EQ(count_entries(cache), 0u);

        /* First use: the full checks pass through the inflated copy. */
        size_t compressed, dwarf;
        count_sections(args.splitz, &compressed, &dwarf);
        ASSERT_TRUE(compressed > 0);
        copy_file(args.splitz, dbg);
        check_fresh(args.split);
        char *entry = only_entry(cache);
        ASSERT_NOT_NULL(entry);
        size_t ecomp, edwarf;
        count_sections(entry, &ecomp, &edwarf);
        ASSERT_EQ(ecomp, 0u);
        ASSERT_EQ(edwarf, dwarf);
        off_t full = file_size(entry);
        ASSERT_TRUE(full > file_size(args.splitz));
        uint8_t eid[64];
        ASSERT_EQ(read_build_id(entry, eid, sizeof(eid)), len);
        ASSERT_TRUE(memcmp(eid, id, len) == 0);

        /* Reused: the entry's time says it was just used, and nothing new is made. */
        set_mtime(entry, 1000000000);
        check_fresh(args.split);
        ASSERT_TRUE(file_mtime(entry) > 1000000000);
        ASSERT_EQ(count_entries(cache), 1u);

        /* A damaged entry is replaced, and the results stay right. */
        ASSERT_EQ(truncate(entry, 100), 0);
        check_fresh(args.split);
        ASSERT_EQ(count_entries(cache), 1u);
        ASSERT_EQ(file_size(entry), full);

        /* Another file under the same name (a new inode) gets its own entry. */
        copy_file(args.splitz, dbg);
        ASSERT_TRUE(split_has_lines());
        ASSERT_EQ(count_entries(cache), 2u);

        /* An uncompressed debug file is used as it is: nothing to cache.  (libdwfl's own
         * lookup is at the real system directory, so here that shows as no lines.) */
        copy_file(args.splitplain, dbg);
        count_sections(args.splitplain, &compressed, &dwarf);
        ASSERT_EQ(compressed, 0u);
        ASSERT_FALSE(split_has_lines());
        ASSERT_EQ(count_entries(cache), 2u);

        /* A debug file whose dwz link is relative to its own directory stays where it is
         * (libdwfl's lookup again: no lines here). */
        copy_file(args.splitaltrel, dbg);
        ASSERT_FALSE(split_has_lines());
        ASSERT_EQ(count_entries(cache), 2u);

        /* Cache off: nothing written (and, again, the file is left to libdwfl).  A
         * relative directory is off too. */
        copy_file(args.splitz, dbg);
        ASSERT_EQ(setenv("ALLOCPROF_CACHE_DIR", "", 1), 0);
        ASSERT_FALSE(split_has_lines());
        ASSERT_EQ(count_entries(cache), 2u);
        char cwd[PATH_MAX];
        ASSERT_NOT_NULL(getcwd(cwd, sizeof(cwd)));
        ASSERT_EQ(chdir(tmpl), 0);
        ASSERT_EQ(setenv("ALLOCPROF_CACHE_DIR", ".", 1), 0);
        ASSERT_FALSE(split_has_lines());
        ASSERT_EQ(chdir(cwd), 0);
        ASSERT_EQ(count_entries(cache), 2u);

        /* Without ALLOCPROF_CACHE_DIR: $XDG_CACHE_HOME/allocprof/debug. */
        char xdg[128], xdgcache[256];
        snprintf(xdg, sizeof(xdg), "%s/xdg", tmpl);
        snprintf(xdgcache, sizeof(xdgcache), "%s/allocprof/debug", xdg);
        ASSERT_EQ(unsetenv("ALLOCPROF_CACHE_DIR"), 0);
        const char *old_xdg = getenv("XDG_CACHE_HOME");
        char *saved_xdg = old_xdg ? strdup(old_xdg) : NULL;
        ASSERT_EQ(setenv("XDG_CACHE_HOME", xdg, 1), 0);
        ASSERT_TRUE(split_has_lines());
        ASSERT_EQ(count_entries(xdgcache), 1u);
        if (saved_xdg)
                setenv("XDG_CACHE_HOME", saved_xdg, 1);
        else
                unsetenv("XDG_CACHE_HOME");
        free(saved_xdg);

        /* A debug file whose names and inlined functions live in a dwz alternate file
         * (named by absolute path): they come through the copy, first use and reuse. */
        ASSERT_EQ(setenv("ALLOCPROF_CACHE_DIR", tmpl, 1), 0);
        if (args.dwzlib) {
                copy_file(args.dwzdebug, dbg);
                size_t before = count_entries(cache);
                for (int k = 0; k < 2; k++) {
                        check_fresh(args.dwzlib);
                        ASSERT_EQ(count_entries(cache), before + 1);
                }
        } else {
                fprintf(stderr, "note: no dwz, a debug file with an alternate file not covered\n");
        }

        /* Eviction (this build's limit is 2.5 MiB): two old 1 MiB entries and a recent one;
         * adding an entry removes the oldest only.  A stale temporary file goes too. */
        static const char *const fake[] = {"old1.debug", "old2.debug", "recent.debug"};
        char *mib = calloc(1, 1 << 20);
        ASSERT_NOT_NULL(mib);
        char path[PATH_MAX];
        time_t now = time(NULL);
        DIR *d = opendir(cache);
        ASSERT_NOT_NULL(d);
        for (struct dirent *de; (de = readdir(d));)
                if (de->d_name[0] != '.') {
                        snprintf(path, sizeof(path), "%s/%s", cache, de->d_name);
                        ASSERT_EQ(unlink(path), 0);
                }
        closedir(d);
        for (int i = 0; i < 3; i++) {
                snprintf(path, sizeof(path), "%s/%s", cache, fake[i]);
                memset(mib, 'a' + i, 1 << 20);
                write_file(path, mib, 1 << 20);
                set_mtime(path, i < 2 ? now - 7200 + i : now - 10);
        }
        free(mib);
        char stale[PATH_MAX], fresh[PATH_MAX];
        snprintf(stale, sizeof(stale), "%s/.x.debug.tmp.1.1", cache);
        snprintf(fresh, sizeof(fresh), "%s/.x.debug.tmp.1.2", cache);
        write_file(stale, "x", 1);
        write_file(fresh, "x", 1);
        set_mtime(stale, now - 7200);
        copy_file(args.splitz, dbg);
        ASSERT_TRUE(split_has_lines());
        snprintf(path, sizeof(path), "%s/%s", cache, fake[0]);
        ASSERT_EQ(file_size(path), (off_t)-1);
        snprintf(path, sizeof(path), "%s/%s", cache, fake[1]);
        ASSERT_EQ(file_size(path), (off_t)(1 << 20));
        snprintf(path, sizeof(path), "%s/%s", cache, fake[2]);
        ASSERT_EQ(file_size(path), (off_t)(1 << 20));
        ASSERT_EQ(count_entries(cache), 3u);
        ASSERT_EQ(file_size(stale), (off_t)-1);
        ASSERT_EQ(file_size(fresh), (off_t)1);

        free(entry);
        ASSERT_EQ(unlink(dbg), 0);
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpl);
        ASSERT_EQ(system(cmd), 0);
}

static void test_demangle(void)
{
        char *d;
#define DEMANGLES_TO(sym, want)                                                            \
        do {                                                                               \
                d = ap_demangle(sym);                                                      \
                ASSERT_STREQ(d, want);                                                     \
                free(d);                                                                   \
        } while (0)
        DEMANGLES_TO("_ZN2ns5Class6methodEi", "ns::Class::method(int)");
        DEMANGLES_TO("_ZNK2ns5Class3runEPVii", "ns::Class::run(int volatile*, int) const");
        DEMANGLES_TO("_Z3foov", "foo()");
        DEMANGLES_TO("_ZN2ns5ClassC2Ev", "ns::Class::Class()");
        DEMANGLES_TO("_Z3foov.cold", "foo() [clone .cold]");
        /* The standard abbreviations spelled out, as c++filt does (DMGL_VERBOSE). */
        DEMANGLES_TO("_ZNSs4_Rep9_S_createEmmRKSaIcE",
                     "std::basic_string<char, std::char_traits<char>, std::allocator<char> >::"
                     "_Rep::_S_create(unsigned long, unsigned long, std::allocator<char> const&)");
        DEMANGLES_TO("_Z5printRSo", "print(std::basic_ostream<char, std::char_traits<char> >&)");
        /* Rust legacy: hash dropped, also with LLVM's ".llvm.N" suffix. */
        DEMANGLES_TO("_ZN4core3fmt5write17h0123456789abcdefE", "core::fmt::write");
        DEMANGLES_TO("_ZN4core3fmt5write17h0123456789abcdefE.llvm.1234", "core::fmt::write");
        DEMANGLES_TO("_ZN4core3fmt3num50_$LT$impl$u20$core..fmt..Debug$u20$for$u20$u32$GT$"
                     "3fmt17h24a6f70227f54131E",
                     "core::fmt::num::<impl core::fmt::Debug for u32>::fmt");
        DEMANGLES_TO("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h5b9c3a7e6f1d2c3bE",
                     "std::rt::lang_start::{{closure}}");
        /* Rust v0, from rustc 1.95 -C symbol-mangling-version=v0. */
        DEMANGLES_TO("_RINvNtCs6GmmlP4bgsG_1r3foo3barmEB4_", "r::foo::bar::<u32>");
        DEMANGLES_TO("_RINvMNtCsgEmfK2I1SDS_4core6optionINtB3_6OptionReE11map_or_elseNtNtCslNYA"
                     "rtu3iFV_5alloc6string6StringNCNvNtB12_3fmt6format0NvYeNtNtB12_6borrow7ToO"
                     "wned8to_ownedECs6GmmlP4bgsG_1r",
                     "<core::option::Option<&str>>::map_or_else::<alloc::string::String, "
                     "alloc::fmt::format::{closure#0}, <str as alloc::borrow::ToOwned>::to_owned>");
        /* Not mangled, or not validly. */
        DEMANGLES_TO("main", NULL);
        DEMANGLES_TO("symfix_plain", NULL);
        DEMANGLES_TO("_Z", NULL);
        DEMANGLES_TO("_R", NULL);
        DEMANGLES_TO("_ZN3foo", NULL);
        DEMANGLES_TO("", NULL);
        DEMANGLES_TO(NULL, NULL);
#undef DEMANGLES_TO

        /* A hostile, enormous name is left alone instead of exhausting the stack. */
        size_t big = 1u << 20;
        char *huge = malloc(big + 16);
        ASSERT_NOT_NULL(huge);
        strcpy(huge, "_ZN");
        size_t at = 3;
        while (at + 3 < big) {
                memcpy(huge + at, "1a", 2);
                at += 2;
        }
        strcpy(huge + at, "E");
        ASSERT_NULL(ap_demangle(huge));
        free(huge);
}

/* Symbolizes every address of this test binary's own code: a measure of lookup cost on
 * real DWARF (printed, not asserted, since sanitizers and valgrind change it tenfold). */
static void bench_self(void)
{
        char self[PATH_MAX];
        ssize_t l = readlink("/proc/self/exe", self, sizeof(self) - 1);
        ASSERT_TRUE(l > 0);
        self[l] = '\0';

        int fd;
        Elf *e = elf_open_file(self, &fd);
        uint64_t lo = 0, hi = 0;
        size_t shstrndx;
        ASSERT_EQ(elf_getshdrstrndx(e, &shstrndx), 0);
        Elf_Scn *scn = NULL;
        while ((scn = elf_nextscn(e, scn))) {
                GElf_Shdr sh;
                gelf_getshdr(scn, &sh);
                const char *nm = elf_strptr(e, shstrndx, sh.sh_name);
                if (nm && strcmp(nm, ".text") == 0) {
                        lo = sh.sh_addr;
                        hi = sh.sh_addr + sh.sh_size;
                }
        }
        elf_end(e);
        close(fd);
        ASSERT_TRUE(hi > lo);

        struct ap_symbolizer *s;
        ASSERT_OK(ap_symbolizer_new(&s));
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        size_t frames = 0, named = 0;
        for (uint64_t off = lo; off < hi; off++) {
                struct ap_sym_frame *f = NULL;
                int n = ap_symbolizer_lookup(s, self, NULL, 0, off, &f);
                ASSERT_TRUE(n >= 1);
                frames += (size_t)n;
                named += f[n - 1].function != NULL;
                ap_sym_frames_free(f, (size_t)n);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        fprintf(stderr, "self: %" PRIu64 " addresses, %zu frames, %zu named, %.3f s (%.2f us each)\n",
                hi - lo, frames, named, secs, secs * 1e6 / (double)(hi - lo));
        ASSERT_TRUE(named > (hi - lo) * 9 / 10);
        ap_symbolizer_free(s);
}

static void parse_args(int argc, char **argv)
{
        for (int i = 1; i < argc; i++) {
                const char *eq = strchr(argv[i], '=');
                if (!eq) {
                        fprintf(stderr, "bad argument %s\n", argv[i]);
                        exit(2);
                }
                size_t k = (size_t)(eq - argv[i]);
                const char *v = eq + 1;
#define ARG(name)                                                                          \
        if (k == strlen(#name) && strncmp(argv[i], #name, k) == 0) {                       \
                args.name = v;                                                             \
                continue;                                                                  \
        }
                ARG(src) ARG(pie) ARG(nopie) ARG(lib) ARG(stripped) ARG(cppsrc) ARG(cpp)
                ARG(noaranges) ARG(badaranges) ARG(partaranges) ARG(clang) ARG(split)
                ARG(splitz) ARG(splitplain) ARG(splitaltrel) ARG(dwzlib) ARG(dwzdebug)
#undef ARG
                fprintf(stderr, "unknown argument %s\n", argv[i]);
                exit(2);
        }
        if (!args.src || !args.pie || !args.nopie || !args.lib) {
                fprintf(stderr, "usage: %s src=… pie=… nopie=… lib=… [stripped=…] "
                                "[cppsrc=… cpp=…] [noaranges=…] [clang=…]\n",
                        argv[0]);
                exit(2);
        }
}

int main(int argc, char **argv)
{
        parse_args(argc, argv);
        if (elf_version(EV_CURRENT) == EV_NONE)
                return AP_TEST_SKIP;

        /* The test's system debug directory holds only what test_debug_cache puts there
         * (a run that failed midway may have left a debug file the others would find). */
        ASSERT_EQ(system("rm -rf '" AP_SYSTEM_DEBUG_DIR "'"), 0);

        struct ap_symbolizer *s;
        ASSERT_OK(ap_symbolizer_new(&s));
        test_pie(s);
        test_nopie(s);
        test_shared_lib(s);
        test_optional_builds(s);
        test_stripped_lib(s);
        test_cpp(s);
        test_build_id(s);
        ap_symbolizer_free(s);

        test_unusable_files();
        test_debuginfo_fifo();
        test_corrupt_files();
        test_cache_consistency();
        test_debug_cache();
        test_demangle();
        bench_self();
        printf("symbolize: all passed\n");
        return 0;
}
