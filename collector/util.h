/* Small containers and helpers shared by the collector and the CLI: growable arrays, an
 * open-addressing u64 map, string helpers.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

#include "allocprof/mix.h"

/* Whether a program should free what it holds before it exits: only for a leak checker
 * (AddressSanitizer), which would otherwise report it; the kernel is faster. */
#if defined(__SANITIZE_ADDRESS__)
#define AP_FREE_BEFORE_EXIT 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AP_FREE_BEFORE_EXIT 1
#endif
#endif
#ifndef AP_FREE_BEFORE_EXIT
#define AP_FREE_BEFORE_EXIT 0
#endif

/* Writes the n bytes as 2n lower-case hex digits and a NUL to out (2n + 1 bytes). */
static inline void ap_hex(char *out, const uint8_t *bytes, size_t n)
{
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[bytes[i] >> 4];
                out[2 * i + 1] = digits[bytes[i] & 15];
        }
        out[2 * n] = '\0';
}

/* Grows *items (of *cap elements of size `elem`) to hold at least `need`.  Returns 0 or
 * -ENOMEM (the array is unchanged then). */
int ap_grow(void **items, size_t *cap, size_t need, size_t elem);

#define AP_GROW(arr, cap, need) ap_grow((void **)&(arr), &(cap), (need), sizeof(*(arr)))

/* u64 -> u64 map with open addressing.  Key 0 is reserved (never stored). */
struct ap_map {
        uint64_t *keys;
        uint64_t *vals;
        size_t cap; /* power of two, or 0 */
        size_t len;
};

/* Returns a pointer to the value for key, or NULL. */
uint64_t *ap_map_get(const struct ap_map *m, uint64_t key);
/* Inserts or overwrites.  Returns 0 or -ENOMEM. */
int ap_map_put(struct ap_map *m, uint64_t key, uint64_t val);
/* Removes key if present; returns true if it was. */
bool ap_map_del(struct ap_map *m, uint64_t key);
void ap_map_clear(struct ap_map *m);

uint64_t ap_hash_bytes(const void *p, size_t n);

/* Length of the valid UTF-8 sequence at s (the rules jansson applies: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 0 if it is not one.  Stops at a NUL. */
size_t ap_utf8_len(const unsigned char *s);

/* The file name part of path (after the last '/'; the whole path when it ends with one).
 * Accepts NULL. */
const char *ap_path_base(const char *path);

/* malloc'd formatted string, or NULL on OOM. */
char *ap_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Human-readable byte count into buf ("1.50 MiB"). Returns buf. */
const char *ap_fmt_bytes(char *buf, size_t len, uint64_t bytes);

/* Nanoseconds per ap_clock_ticks() tick, measured once per process over at least 2 ms
 * since it started. */
double ap_ns_per_tick(void);
uint64_t ap_realtime_ns(void);

/* Why the executable at path cannot be profiled by an LD_PRELOAD agent, as
 * ap_exe_unprofilable says. */
enum ap_exe_why {
        AP_EXE_PROFILABLE = 0, /* it can, or we cannot tell */
        AP_EXE_STATIC = 1,     /* statically linked: no dynamic loader reads LD_PRELOAD */
        AP_EXE_SETID = 2,      /* set-user-ID or set-group-ID of another user */
        AP_EXE_FILECAPS = 3,   /* file capabilities that a user other than root gains */
};
/* The loader ignores LD_PRELOAD (a path) in a secure-execution image (AT_SECURE): one that
 * changes its user or group, or gains capabilities. */
enum ap_exe_why ap_exe_unprofilable(const char *path);
/* "statically linked", "set-user-ID or set-group-ID", "given file capabilities". */
const char *ap_exe_why_text(enum ap_exe_why why);

/* Reads a whole small file (e.g. /proc/PID/cmdline).  Returns bytes read or -errno;
 * *ret is malloc'd and NUL-terminated. */
ssize_t ap_read_file(const char *path, char **ret, size_t max);

/* What /proc/PID/stat says of a process: its state letter ('Z' a zombie), its parent, and
 * when it started (clock ticks since boot: with the pid, it names one process).  False if
 * there is no such process. */
struct ap_proc_stat {
        char state;
        pid_t ppid;
        uint64_t start;
};
bool ap_proc_stat(pid_t pid, struct ap_proc_stat *ret);

/* Widens the range [*lo, *hi] (empty while *lo is 0) to hold v; a v of 0 is no value
 * (the sample intervals a profile was recorded at). */
static inline void ap_range_widen(uint64_t *lo, uint64_t *hi, uint64_t v)
{
        if (v == 0)
                return;
        if (*lo == 0 || v < *lo)
                *lo = v;
        if (v > *hi)
                *hi = v;
}

/* The largest size ap_parse_size takes: 2^63 - 1 bytes, what a profile can hold. */
#define AP_SIZE_MAX ((uint64_t)INT64_MAX)

/* "512K" -> 524288 (K, M, G suffixes, optionally followed by i, B or iB).  Returns 0,
 * -EINVAL for what is not a size, or -ERANGE for a size above AP_SIZE_MAX. */
int ap_parse_size(const char *s, uint64_t *ret);

/* Descriptors taken from one message by ap_recv_fds (more are closed). */
#define AP_FDS_MAX 4

/* recvmsg() of up to len bytes into buf; descriptors passed with them (SCM_RIGHTS) are
 * received close-on-exec into fds[] (*nfds of them; the caller owns them, whatever it
 * decides about the bytes).  *msg_flags gets the message flags (MSG_TRUNC, MSG_CTRUNC).
 * Returns the byte count (0: the peer hung up) or -errno (no descriptors then). */
ssize_t ap_recv_fds(int sock, void *buf, size_t len, int flags, int *fds, size_t *nfds,
                    int *msg_flags);

/* sendmsg() of len bytes, with descriptor fd attached (none if fd < 0), never raising
 * SIGPIPE.  Returns the bytes sent or -errno. */
ssize_t ap_send_fd(int sock, const void *buf, size_t len, int flags, int fd);
