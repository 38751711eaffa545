/* The exec family, wrapped to tell the collector that the process image is about to be
 * replaced.  An image that execs a program which cannot load the agent (statically
 * linked, setuid, file capabilities, an environment without LD_PRELOAD) never registers
 * again: without a word from us the collector only learnt of it by polling /proc, and a
 * program that ended sooner passed for the image before it.  So each wrapper writes the
 * path into the session's header, bumps AP_CNT_EXECS, calls the C library's function, and
 * if that returns (the exec failed) bumps AP_CNT_EXECS_FAILED (wire.h).
 *
 * A wrapper may run in a vfork child, which shares its parent's memory, session included,
 * and in a signal handler: it touches nothing but the header (a string and two counters),
 * allocates nothing, takes no lock, keeps errno, and passes every argument on unchanged.
 * posix_spawn, system and popen exec in a child through the C library's internal calls,
 * which come nowhere near these, and need nothing: that child never was a profiled image.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent.h"
#include "allocprof/atomics.h"

#define AP_EXPORT __attribute__((visibility("default")))

typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);
typedef int (*fexecve_fn)(int, char *const[], char *const[]);
typedef int (*execveat_fn)(int, const char *, char *const[], char *const[], int);

/* The C library's functions, looked up in the constructor (dlsym in a vfork child or a
 * signal handler could wait for the loader's lock), or at a call before it.  Relaxed:
 * each is the same value whoever stores it. */
static _Atomic(void *) g_execve, g_execvpe, g_execv, g_execvp, g_fexecve, g_execveat;

static void resolve(_Atomic(void *) *slot, const char *name)
{
        if (ap_load_relaxed(slot) == NULL)
                ap_store_relaxed(slot, dlsym(RTLD_NEXT, name));
}

AP_HIDDEN void ap_exec_resolve(void)
{
        resolve(&g_execve, "execve");
        resolve(&g_execvpe, "execvpe");
        resolve(&g_execv, "execv");
        resolve(&g_execvp, "execvp");
        resolve(&g_fexecve, "fexecve");
        resolve(&g_execveat, "execveat"); /* glibc 2.34 on: a program that calls it has it */
}

/* The C library's function in *slot, looked up now if the constructor has not run yet;
 * NULL (errno ENOSYS) if the C library has none. */
static void *real(_Atomic(void *) *slot)
{
        void *f = ap_load_relaxed(slot);
        if (f == NULL) {
                ap_exec_resolve();
                if ((f = ap_load_relaxed(slot)) == NULL)
                        errno = ENOSYS;
        }
        return f;
}

/* Appends s to dst (cap bytes, at *n so far), cut to fit a NUL. */
static void put(char *dst, size_t cap, size_t *n, const char *s)
{
        while (*s != '\0' && *n + 1 < cap)
                dst[(*n)++] = *s++;
}

/* The file fd is open on, from /proc/self/fd (a system call, safe anywhere): appended as
 * put() does, nothing if it cannot be read. */
static void put_fd_path(char *dst, size_t cap, size_t *n, int fd)
{
        char link[32] = "/proc/self/fd/", digits[12];
        size_t len = sizeof("/proc/self/fd/") - 1, nd = 0;
        unsigned v = (unsigned)fd;
        do
                digits[nd++] = (char)('0' + v % 10);
        while ((v /= 10) != 0 && nd < sizeof(digits));
        while (nd > 0)
                link[len++] = digits[--nd];
        link[len] = '\0';
        ssize_t r = readlink(link, dst + *n, cap - 1 - *n);
        if (r > 0)
                *n += (size_t)r;
}

/* The process's own session header if this is the process that registered it, else NULL:
 * a vfork child (or a child of the fork system call, which runs no fork handler) still
 * sees its parent's session, and must not say that its parent execs. */
static struct ap_shm_header *own_header(void)
{
        /* Acquire pairs with the release that published the session (session.c). */
        struct ap_shm_header *h = atomic_load_explicit(&ap_session, memory_order_acquire);
        if (h == NULL || h->pid != (uint32_t)getpid())
                return NULL;
        return h;
}

/* Says that an exec of path (or, without one, of what fd is open on; dir_fd: a path
 * relative to that directory) is about to start.  `search`: a path without a slash is a
 * name that execvp looks up in PATH (said as given), else one in the working directory.
 * Returns the header it said it in, for exec_failed, or NULL. */
static struct ap_shm_header *exec_begin(int dir_fd, const char *path, int fd, bool search)
{
        int e = errno;
        struct ap_shm_header *h = own_header();
        if (h == NULL) {
                errno = e;
                return NULL;
        }
        char *dst = h->exec_path;
        size_t n = 0;
        if (path == NULL || path[0] == '\0') {
                if (fd >= 0)
                        put_fd_path(dst, AP_EXEC_PATH_BYTES, &n, fd);
        } else {
                /* A relative path made absolute: once the process has ended, the collector
                 * can no longer look in its working directory, and reads the file to say
                 * why it did not register. */
                bool relative = path[0] != '/' && (!search || strchr(path, '/') != NULL);
                if (relative && dir_fd != AT_FDCWD && dir_fd >= 0) {
                        put_fd_path(dst, AP_EXEC_PATH_BYTES, &n, dir_fd);
                        put(dst, AP_EXEC_PATH_BYTES, &n, "/");
                } else if (relative) {
                        long len = ap_sys_getcwd(dst, AP_EXEC_PATH_BYTES - 1);
                        if (len > 1 && dst[0] == '/') {
                                n = (size_t)len - 1; /* the NUL counted */
                                put(dst, AP_EXEC_PATH_BYTES, &n, "/");
                        }
                }
                while (relative && n > 0 && path[0] == '.' && path[1] == '/')
                        path += 2;
                put(dst, AP_EXEC_PATH_BYTES, &n, path);
        }
        dst[n] = '\0';
        /* Release: the collector, which loads the count with acquire, reads the path
         * written before it. */
        atomic_fetch_add_explicit(&h->xcounters[AP_CNT_EXECS], 1, memory_order_release);
        errno = e;
        return h;
}

/* The exec that exec_begin announced in h returned: it failed (errno kept). */
static void exec_failed(struct ap_shm_header *h)
{
        if (h != NULL)
                ap_fetch_add_relaxed(&h->xcounters[AP_CNT_EXECS_FAILED], 1);
}

AP_HIDDEN void *ap_exec_syscall_begin(long number, long a0, long a1, long a4)
{
        if (number == SYS_execve)
                return exec_begin(AT_FDCWD, (const char *)a0, -1, false);
        if (number == SYS_execveat)
                return exec_begin((int)a0, (const char *)a1, (a4 & AT_EMPTY_PATH) ? (int)a0 : -1,
                                  false);
        return NULL;
}

AP_HIDDEN void ap_exec_syscall_failed(void *h)
{
        exec_failed(h);
}

static int do_execve(const char *path, char *const argv[], char *const envp[])
{
        execve_fn f = (execve_fn)real(&g_execve);
        if (f == NULL)
                return -1;
        struct ap_shm_header *h = exec_begin(AT_FDCWD, path, -1, false);
        int r = f(path, argv, envp);
        exec_failed(h);
        return r;
}

AP_EXPORT int execv(const char *path, char *const argv[])
{
        execv_fn f = (execv_fn)real(&g_execv);
        if (f == NULL)
                return -1;
        struct ap_shm_header *h = exec_begin(AT_FDCWD, path, -1, false);
        int r = f(path, argv);
        exec_failed(h);
        return r;
}

static int do_execvp(const char *file, char *const argv[])
{
        execv_fn f = (execv_fn)real(&g_execvp);
        if (f == NULL)
                return -1;
        struct ap_shm_header *h = exec_begin(AT_FDCWD, file, -1, true);
        int r = f(file, argv);
        exec_failed(h);
        return r;
}

AP_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
        return do_execve(path, argv, envp);
}

AP_EXPORT int execvp(const char *file, char *const argv[])
{
        return do_execvp(file, argv);
}

AP_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
        execve_fn f = (execve_fn)real(&g_execvpe);
        if (f == NULL)
                return -1;
        struct ap_shm_header *h = exec_begin(AT_FDCWD, file, -1, true);
        int r = f(file, argv, envp);
        exec_failed(h);
        return r;
}

AP_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
        fexecve_fn f = (fexecve_fn)real(&g_fexecve);
        if (f == NULL)
                return -1;
        struct ap_shm_header *h = exec_begin(AT_FDCWD, NULL, fd, false);
        int r = f(fd, argv, envp);
        exec_failed(h);
        return r;
}

/* (Declared by unistd.h from glibc 2.34 on only.) */
int execveat(int dir_fd, const char *path, char *const argv[], char *const envp[], int flags);

AP_EXPORT int execveat(int dir_fd, const char *path, char *const argv[], char *const envp[],
                       int flags)
{
        execveat_fn f = (execveat_fn)real(&g_execveat);
        if (f == NULL)
                return -1;
        struct ap_shm_header *h =
                exec_begin(dir_fd, path, (flags & AT_EMPTY_PATH) ? dir_fd : -1, false);
        int r = f(dir_fd, path, argv, envp, flags);
        exec_failed(h);
        return r;
}

/* execl, execle and execlp: the arguments after `arg` up to the NULL that ends them (not
 * counted), as the C library counts them. */
static size_t list_len(va_list ap)
{
        size_t n = 0;
        while (va_arg(ap, const char *) != NULL && n < INT32_MAX)
                n++;
        return n;
}

extern char **environ;

/* The argument list as an array on the stack (as the C library builds it: no allocation
 * may happen here, and the list has no bound), then the array form (which says the exec
 * begins).  A list that an int cannot count fails as the C library's does.  For execle,
 * the environment follows the NULL. */
#define LIST_TO_ARGV(arg, argv, ...)                                \
        va_list ap_, n_ap_;                                         \
        va_start(ap_, arg);                                         \
        va_copy(n_ap_, ap_);                                        \
        size_t n_ = list_len(n_ap_);                                \
        va_end(n_ap_);                                              \
        if (n_ >= INT32_MAX - 1) {                                  \
                va_end(ap_);                                        \
                errno = E2BIG;                                      \
                return -1;                                          \
        }                                                           \
        char **argv = __builtin_alloca((n_ + 2) * sizeof(char *));  \
        argv[0] = (char *)(arg);                                    \
        for (size_t i_ = 1; i_ <= n_ + 1; i_++)                     \
                argv[i_] = va_arg(ap_, char *); /* the NULL last */ \
        __VA_ARGS__;                                                \
        va_end(ap_)

AP_EXPORT int execl(const char *path, const char *arg, ...)
{
        LIST_TO_ARGV(arg, argv, (void)0);
        return do_execve(path, argv, environ);
}

AP_EXPORT int execlp(const char *file, const char *arg, ...)
{
        LIST_TO_ARGV(arg, argv, (void)0);
        return do_execvp(file, argv);
}

AP_EXPORT int execle(const char *path, const char *arg, ...)
{
        char *const *envp;
        LIST_TO_ARGV(arg, argv, envp = va_arg(ap_, char *const *));
        return do_execve(path, argv, envp);
}
