/* Symbolization of code addresses with elfutils libdwfl: function (demangled), source
 * file and line, with inline frames expanded.  The only file that talks to libdw.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One source-level frame.  Strings are owned by the frame (malloc'd); NULL = unknown. */
struct ap_sym_frame {
        char *function; /* demangled, Rust hash suffix dropped */
        char *file;     /* absolute or as recorded in DWARF (comp dir joined when relative) */
        uint32_t line;  /* 0 = unknown */
        bool inlined;   /* true: inlined into the next (outer) frame of the same address */
};

struct ap_symbolizer;

/* Creates a symbolizer with an empty module cache.  Returns 0 or -errno.  Not thread-safe:
 * one symbolizer per thread. */
int ap_symbolizer_new(struct ap_symbolizer **ret);

/* Frees the symbolizer and every cached module.  Accepts NULL. */
void ap_symbolizer_free(struct ap_symbolizer *s);

/* Symbolizes the address `offset` of module file `path`, where offset = runtime address -
 * load bias (i.e. an address in the ELF file's own vaddr space).  `offset` must already be
 * adjusted to point inside the call instruction (callers pass ip - 1 for return addresses).
 * If build_id_len > 0 and the file's build-id differs, the module is treated as unusable.
 * The module is opened once and cached by path; separate debuginfo is found the standard
 * way (build-id under /usr/lib/debug, .gnu_debuglink, debuginfod when DEBUGINFOD_URLS is set).
 *
 * On success returns the number of frames (>= 1) stored in *ret_frames (innermost first:
 * inlined callees first, the physical function last; only the last has inlined = false).
 * When nothing is known about the address, returns 1 frame whose strings are NULL.
 * Returns -errno only on allocation failure.  Free with ap_sym_frames_free(). */
int ap_symbolizer_lookup(struct ap_symbolizer *s, const char *path, const uint8_t *build_id,
                         size_t build_id_len, uint64_t offset, struct ap_sym_frame **ret_frames);

void ap_sym_frames_free(struct ap_sym_frame *frames, size_t n);

/* The name of the function at `offset` (as for ap_symbolizer_lookup) from the symbol
 * table alone (the separate debug file's, when there is one), without loading DWARF:
 * for frames whose file and line nobody reads (the C library's thread and program entry
 * code), where loading the library's compressed DWARF would cost far more than all the
 * rest.  Returns 0 with *ret_name malloc'd (demangled) or NULL when unknown, or -errno. */
int ap_symbolizer_lookup_name(struct ap_symbolizer *s, const char *path,
                              const uint8_t *build_id, size_t build_id_len, uint64_t offset,
                              char **ret_name);

/* Opens module `path` and builds its indexes (DWARF, symbol table) now, so that later
 * lookups in it are cheap: the collector calls it while the program still runs.  Returns
 * 0 or -errno; a module that cannot be opened is not an error. */
int ap_symbolizer_warm(struct ap_symbolizer *s, const char *path, const uint8_t *build_id,
                       size_t build_id_len);

/* Demangles a C++ (Itanium) or Rust (legacy or v0) symbol.  Rust legacy hash suffixes
 * (::h<16 hex>) are dropped.  Returns a malloc'd string, or NULL if `sym` is not mangled. */
char *ap_demangle(const char *sym);
