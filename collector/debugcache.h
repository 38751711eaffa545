/* A per-user cache of separate debug files with their compressed sections inflated.
 *
 * Debian ships debug files (libc6-dbg, *-dbgsym) with zlib-compressed DWARF, and libdw
 * inflates every section of a file the first time it opens its DWARF: for the C library
 * that is about 10 MB and 50 ms on every run, whatever the program allocates.  The first
 * time a compressed debug file is used, an inflated copy is written to
 * <cache>/debug/<build-id>-<identity>.debug; later runs hand libdw that copy, whose
 * sections it maps instead of inflating.
 *
 * The identity is a hash of the original file's device, inode, size and change times,
 * so an entry is only ever used in place of the very file it was made from: a profiled
 * program that plants a debug file cannot alter what another run sees.  The directory is
 * $ALLOCPROF_CACHE_DIR (an empty or relative one turns the cache off), else $XDG_CACHE_HOME/allocprof,
 * else ~/.cache/allocprof; it holds at most AP_DEBUGCACHE_MAX_BYTES, least recently used
 * entries going first.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <gelf.h>
#include <stddef.h>
#include <stdint.h>

#ifndef AP_DEBUGCACHE_MAX_BYTES /* the tests set a smaller one */
#define AP_DEBUGCACHE_MAX_BYTES (1ULL << 30)
#endif

/* Given `fd`, a separate debug file found for a module whose build-id is `id`, returns a
 * descriptor of its inflated copy in the cache (made now when there is none yet) and sets
 * *ret_name to the copy's path (malloc'd).  Returns -1 when the cache is off, the file's
 * build-id is not `id`, it has nothing compressed, or anything fails: a cache is never a
 * reason to lose debug information.  `fd` is left open and untouched.  Thread-safe. */
int ap_debugcache_open(int fd, const uint8_t *id, size_t id_len, char **ret_name);

/* The first section of `elf` called `name`, with its header: 1, or 0 when there is none,
 * -1 when the section headers cannot be read (also used by symbolize.c). */
int ap_elf_section(Elf *elf, const char *name, Elf_Scn **ret, GElf_Shdr *ret_sh);
