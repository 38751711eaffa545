/* Whether this process lives under more seccomp filters than `allocprof run` did when it
 * started the program.  A program may sandbox itself (a filter that kills the process on
 * the socket and memfd calls a registration makes) and then exec another image, which
 * inherits the filter and whose agent, registering, would be killed.  run passes its own
 * state in ALLOCPROF_SECCOMP ("MODE FILTERS", from /proc/self/status: Seccomp and, since
 * Linux 5.9, Seccomp_filters, else -1); an agent that finds more does not register, and
 * the image runs unprofiled.  Reads /proc with open(2) and read(2) alone, which a filter
 * that let the loader start the image allows: no allocation, no stdio.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define AP_ENV_SECCOMP "ALLOCPROF_SECCOMP"

struct ap_seccomp_state {
        int mode;    /* 0 none, 1 strict, 2 filter; -1 unknown */
        int filters; /* filters in force (Seccomp_filters), -1 unknown */
};

/* The value of "Key:\t123\n" in text, or -1. */
static inline int ap_seccomp_field(const char *text, const char *key)
{
        const char *p = strstr(text, key);
        if (p == NULL || (p != text && p[-1] != '\n'))
                return -1;
        p += strlen(key);
        while (*p == ' ' || *p == '\t')
                p++;
        if (*p < '0' || *p > '9')
                return -1;
        long v = strtol(p, NULL, 10);
        return v >= 0 && v < 1000000 ? (int)v : -1;
}

/* This process's state; both -1 if /proc cannot tell. */
static inline struct ap_seccomp_state ap_seccomp_now(void)
{
        struct ap_seccomp_state s = {-1, -1};
        char buf[4096];
        int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return s;
        size_t got = 0;
        while (got < sizeof(buf) - 1) {
                ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
                if (n < 0 && errno == EINTR)
                        continue; /* a signal of the program's, in its constructor */
                if (n <= 0)
                        break;
                got += (size_t)n;
        }
        close(fd);
        buf[got] = '\0';
        s.mode = ap_seccomp_field(buf, "Seccomp:");
        s.filters = ap_seccomp_field(buf, "Seccomp_filters:");
        return s;
}

/* Parses ALLOCPROF_SECCOMP's "MODE FILTERS".  False if malformed. */
static inline bool ap_seccomp_parse(const char *v, struct ap_seccomp_state *s)
{
        char *end;
        long m = strtol(v, &end, 10);
        if (end == v || *end != ' ')
                return false;
        const char *f0 = end + 1;
        long f = strtol(f0, &end, 10);
        if (end == f0 || *end != '\0' || m < -1 || m > 2 || f < -1 || f > 1000000)
                return false;
        s->mode = (int)m;
        s->filters = (int)f;
        return true;
}

/* True if `now` has filters that `base` (run's, at start) had not. */
static inline bool ap_seccomp_added(struct ap_seccomp_state base, struct ap_seccomp_state now)
{
        if (base.filters >= 0 && now.filters >= 0)
                return now.filters > base.filters;
        return base.mode >= 0 && now.mode > base.mode;
}
