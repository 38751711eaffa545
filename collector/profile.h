/* A finished, symbolized profile in memory, and its file format (versioned JSON, see
 * USAGE.md).  Written by the collector when a process image ends; read by `report`.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AP_PROFILE_SCHEMA_VERSION 3 /* what ap_profile_write writes */
#define AP_PROFILE_OLDEST_VERSION 1 /* the oldest one ap_profile_read still reads */
#define AP_NONE UINT32_MAX /* "no string"/"no module" index */
#define AP_HIST_BUCKETS 64 /* size histogram: bucket i counts sizes in [2^(i-1), 2^i), 0 -> 0 */

/* Interned source frame. */
struct ap_pframe {
        uint32_t function; /* string index or AP_NONE */
        uint32_t file;     /* string index or AP_NONE */
        uint32_t line;     /* 0 = unknown */
        uint32_t module;   /* index into modules or AP_NONE */
        uint64_t address;  /* module-relative address (offset in the ELF file's vaddr space) */
        bool inlined;
};

/* A call site = one distinct call stack after allocator frames were folded out. */
struct ap_psite {
        uint64_t allocations, bytes;          /* calls that returned a block; requested bytes */
        uint64_t frees, freed_bytes;          /* blocks of this site freed, and their bytes */
        uint64_t leaked_blocks, leaked_bytes; /* still live when the process ended */
        uint64_t peak_bytes;     /* this site's live bytes at the moment of the global peak */
        uint64_t max_live_bytes; /* this site's own highest live bytes */
        uint64_t temporary;      /* allocations freed with no other allocation in between */
        uint64_t reallocs;       /* of `allocations`, how many were realloc calls */
        uint32_t *frames;        /* indices into frames, innermost first */
        uint32_t nframes;
        bool truncated; /* its stack was cut at AP_MAX_FRAMES: outer callers not recorded */
};

struct ap_pmodule {
        uint32_t path;     /* string index */
        uint32_t build_id; /* string index (lower-case hex) or AP_NONE */
        uint64_t allocations, bytes, leaked_blocks, leaked_bytes; /* by the module of frames[0] */
};

struct ap_ptimepoint {
        uint64_t t_ns;        /* since process start */
        uint64_t live_bytes;  /* live requested bytes */
        uint64_t allocations; /* cumulative */
};

struct ap_profile {
        char *tool_version;
        uint32_t pid, ppid;
        char **command; /* argv of the process image (may be empty) */
        uint32_t ncommand;
        char *exe;                /* path of the main executable, may be NULL */
        char *run_id; /* profiles of one `allocprof run` share it; may be NULL */
        /* The module whose malloc the program's calls reached instead of the agent's (an
         * executable with its own allocator): what went there was not seen.  NULL: none. */
        char *foreign_malloc;
        uint32_t merged_from; /* > 1: a merge of that many profiles (not stored in files) */
        bool live; /* a snapshot of a running process: "leaked" figures are live now */
        /* The image ended by an exec: the process went on as exec_path (NULL: not known),
         * a program that registered as an image of its own (exec_profiled) or could not
         * be profiled.  Its "leaked" figures are the blocks live at the exec, which went
         * with the image: not leaks. */
        bool by_exec, exec_profiled;
        char *exec_path;
        int exit_status;          /* exit code, or -1 if unknown / killed */
        int term_signal;          /* signal that killed it, 0 if none */
        char *mode;               /* "full" */
        uint64_t sample_interval; /* 0 in full mode */
        /* The smallest and largest intervals used (a program attached twice with other
         * --sample values): both sample_interval when it was one, 0 in full mode. */
        uint64_t sample_interval_min, sample_interval_max;
        uint64_t start_unix_ns;   /* wall-clock start of the process image */
        uint64_t duration_ns;
        uint64_t drain_cpu_ns; /* collector CPU time spent draining its rings (0: unknown) */
        /* Times the program's threads found their ring full and waited for the collector,
         * and how long in all (reported by the agent: a diagnostic, not checked). */
        uint64_t ring_waits, ring_wait_ns;

        struct {
                uint64_t allocations, bytes, frees, freed_bytes;
                uint64_t leaked_blocks, leaked_bytes;
                uint64_t peak_bytes, peak_blocks, peak_t_ns;
                uint64_t temporary, reallocs;
                uint64_t dropped_events;  /* records the agent could not deliver */
                uint64_t dropped_frees;   /* of which frees (may show up as false leaks) */
                uint64_t unmatched_frees; /* frees of blocks never seen allocated */
                uint64_t invalid_records; /* ring records rejected by validation */
                uint64_t threads;         /* threads that recorded */
                /* Sampled blocks the agent could not track (its set was full): their frees
                 * are not seen, so they count as live to the end.  In the file only when
                 * not 0. */
                uint64_t untracked_samples;
                /* Fork children (and their descendants) that could not register and ran
                 * unprofiled (a chroot, no descriptor left, a seccomp filter).  In the
                 * file only when not 0. */
                uint64_t unprofiled_children;
                /* Of dropped_events, those of threads that had no ring to write to (every
                 * slot taken, an address-space limit, a sandbox that refuses mremap): not
                 * the collector falling behind.  In the file only when not 0. */
                uint64_t dropped_no_ring;
        } totals;

        char **strings;
        uint32_t nstrings;
        struct ap_pframe *frames;
        uint32_t nframes;
        struct ap_psite *sites;
        uint32_t nsites;
        struct ap_pmodule *modules;
        uint32_t nmodules;
        uint64_t hist_count[AP_HIST_BUCKETS];
        uint64_t hist_bytes[AP_HIST_BUCKETS];
        struct ap_ptimepoint *timeline;
        uint32_t ntimeline;
};

/* Allocates an empty profile (all zero, exit_status -1).  Returns NULL on OOM. */
struct ap_profile *ap_profile_new(void);

/* Frees the profile and everything it owns.  Accepts NULL. */
void ap_profile_free(struct ap_profile *p);

/* Interns a string into p->strings; returns its index, or AP_NONE on OOM / NULL input. */
uint32_t ap_profile_intern(struct ap_profile *p, const char *s);

/* Writes the profile to `path` atomically (temporary file in the same directory, then
 * rename), mode 0600; if `path` is something else than a file or a directory (a device
 * such as /dev/null, a FIFO), into it.  Returns 0 or -errno. */
int ap_profile_write(const struct ap_profile *p, const char *path);

/* If `path` is a symbolic link (/dev/stdout, /dev/fd/1, /proc/self/fd/2...) to the
 * regular file our standard output or standard error is redirected into, returns that
 * descriptor (1 or 2): ap_profile_write writes into it, as `gzip -c > FILE` would,
 * rather than replace the link (which as root would replace /dev/stdout itself).
 * Else -1. */
int ap_profile_std_stream(const char *path);

/* What ap_profile_write does with a path. */
enum ap_profile_dest {
        AP_DEST_FILE = 0, /* creates a new file next to it, renamed over what is there */
        AP_DEST_INTO = 1, /* writes into what is there: a character device (/dev/null), a
                           * FIFO (waiting up to 10 s for a reader), or the file our
                           * standard output or error is redirected into (/dev/stdout) */
};

/* Checks, before there is a profile to write (before a program runs, before a snapshot
 * is taken), that one can be written to `path`: the one check of every command's -o.
 * Refused: a directory, a terminal (a profile is binary), a block device, a socket, a
 * link to a descriptor that is not open, what cannot be opened for writing, and a file
 * that cannot be created next to `path` (a file is created and removed there:
 * /proc, /sys and read-only mounts pass access(2) as root), or that would replace
 * another user's in a sticky directory.  Returns the ap_profile_dest, or -errno with
 * *err set to a malloc'd reason (one line, lower case, without the path itself). */
int ap_profile_check_dest(const char *path, char **err);

/* Checks that profiles can be created in the directory `dir` (a file is created there
 * and removed).  Returns 0, or -errno with *err set to a malloc'd reason that names
 * `dir` ("the current directory" for "."). */
int ap_profile_check_dir(const char *dir, char **err);

/* What ap_profile_write would do with `path` as it is now (nothing is checked). */
enum ap_profile_dest ap_profile_dest_of(const char *path);

/* The words for a failure r of ap_profile_write: strerror, but a FIFO nobody opened
 * (-ENXIO) is said as such.  Static storage. */
const char *ap_profile_write_strerror(int r);

/* Writes the profile to the open file `fd` at its current offset (a memfd handed over a
 * socket, say).  Returns 0 or -errno. */
int ap_profile_write_fd(const struct ap_profile *p, int fd);

/* Reads a profile file.  On success returns 0 and sets *ret.  On failure returns -errno
 * (-EINVAL for a malformed file, -EPROTONOSUPPORT for an unknown schema version) and, if
 * err is non-NULL, sets *err to a malloc'd one-line explanation. */
int ap_profile_read(const char *path, struct ap_profile **ret, char **err);
