/* allocprofd as a per-user service (see service.h): where its private directory and
 * socket are and which of them may be trusted, systemd socket activation, and
 * daemonizing with a readiness handshake.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "service.h"
#include "util.h"

/* sd-daemon.h's SD_LISTEN_FDS_START. */
#define LISTEN_FDS_START 3

/* What the daemon sends when it is ready.  Failure text is a C string, so it can never
 * begin with this byte. */
#define READY_BYTE '\0'

#define SUN_PATH_MAX sizeof(((struct sockaddr_un *)NULL)->sun_path)

static int fail(char **err, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Sets *err (if err) to the formatted message and returns r (a negative errno). */
static int fail(char **err, int r, const char *fmt, ...)
{
        if (err == NULL)
                return r;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(err, fmt, ap) < 0)
                *err = NULL;
        va_end(ap);
        return r;
}

/* The base the service directory goes under, following the rule in service.h. */
static char *service_dir_path(void)
{
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        struct stat st;
        if (xdg != NULL && xdg[0] == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode) &&
            st.st_uid == geteuid()) {
                /* "/run/user/1000/" gives "/run/user/1000//allocprof": harmless, but
                 * the path appears in messages, so keep it tidy. */
                size_t len = strlen(xdg);
                while (len > 1 && xdg[len - 1] == '/')
                        len--;
                return ap_asprintf("%.*s/" AP_SERVICE_DIR_NAME, (int)len, xdg);
        }
        return ap_asprintf("/tmp/" AP_SERVICE_DIR_NAME "-%u", (unsigned)geteuid());
}

/* Creates dir with mode 0700 if it does not exist.  0 whether or not it existed. */
static int make_dir(const char *dir, char **err)
{
        if (mkdir(dir, 0700) < 0) {
                if (errno == EEXIST)
                        return 0; /* ours or not: check_dir decides */
                return fail(err, -errno, "cannot create %s: %s", dir, strerror(errno));
        }
        /* The umask may have taken bits away (0277 leaves 0500) and a set-group-ID
         * parent adds S_ISGID: make it exactly 0700.  Through a descriptor opened with
         * O_NOFOLLOW, so that what we change is the directory we just made. */
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return fail(err, -errno, "cannot open %s: %s", dir, strerror(errno));
        int r = 0;
        if (fchmod(fd, 0700) < 0)
                r = fail(err, -errno, "cannot chmod %s: %s", dir, strerror(errno));
        close(fd);
        return r;
}

/* The trust checks of service.h on an existing (or missing) service directory. */
static int check_dir(const char *dir, char **err)
{
        struct stat st;
        uid_t euid = geteuid();
        if (lstat(dir, &st) < 0) {
                if (errno == ENOENT)
                        return fail(err, -ENOENT, "%s does not exist", dir);
                return fail(err, -errno, "cannot inspect %s: %s", dir, strerror(errno));
        }
        if (S_ISLNK(st.st_mode))
                return fail(err, -ELOOP,
                            "%s is a symbolic link, not a directory: refusing to use it", dir);
        if (!S_ISDIR(st.st_mode))
                return fail(err, -ENOTDIR, "%s is not a directory: refusing to use it", dir);
        if (st.st_uid != euid)
                return fail(err, -EPERM,
                            "%s is owned by uid %u, not by you (%u): refusing to use it", dir,
                            (unsigned)st.st_uid, (unsigned)euid);
        if ((st.st_mode & 0777) != 0700)
                return fail(err, -EPERM,
                            "%s has mode %04o, not 0700 (private to you): refusing to use it", dir,
                            (unsigned)(st.st_mode & 0777));
        return 0;
}

int ap_service_dir(bool create, char **ret_dir, char **err)
{
        char *dir = service_dir_path();
        if (dir == NULL)
                return fail(err, -ENOMEM, "out of memory");
        int r = create ? make_dir(dir, err) : 0;
        if (r >= 0)
                r = check_dir(dir, err);
        if (r < 0) {
                free(dir);
                return r;
        }
        *ret_dir = dir;
        return 0;
}

/* What may already sit at a socket path: nothing, or a socket of ours.  `what` says
 * where the path came from, for the message. */
static int check_existing(const char *path, const char *what, char **err)
{
        struct stat st;
        if (lstat(path, &st) < 0) {
                if (errno == ENOENT)
                        return 0;
                return fail(err, -errno, "%scannot inspect %s: %s", what, path, strerror(errno));
        }
        if (!S_ISSOCK(st.st_mode))
                return fail(err, -ENOTSOCK, "%s%s exists and is not a socket: refusing to use it",
                            what, path);
        if (st.st_uid != geteuid())
                return fail(err, -EPERM,
                            "%s%s is owned by uid %u, not by you (%u): refusing to use it", what,
                            path, (unsigned)st.st_uid, (unsigned)geteuid());
        return 0;
}

/* The override rule of service.h. */
static int check_override(const char *path, char **err)
{
        const char *what = AP_SERVICE_SOCKET_ENV ": ";
        size_t len = strlen(path);
        if (path[0] != '/')
                return fail(err, -EINVAL, "%s%s is not an absolute path", what, path);
        if (path[len - 1] == '/')
                return fail(err, -EINVAL, "%s%s names a directory, not a socket", what, path);
        if (len >= SUN_PATH_MAX)
                return fail(err, -ENAMETOOLONG,
                            "%s%s is too long for a socket path (%zu bytes, at most %zu)", what,
                            path, len, SUN_PATH_MAX - 1);

        const char *slash = strrchr(path, '/');
        char *parent = slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
        if (parent == NULL)
                return fail(err, -ENOMEM, "out of memory");
        struct stat st;
        uid_t euid = geteuid();
        int r = 0;
        if (stat(parent, &st) < 0) {
                if (errno == ENOENT)
                        r = fail(err, -ENOENT, "%sdirectory %s does not exist", what, parent);
                else
                        r = fail(err, -errno, "%scannot inspect %s: %s", what, parent,
                                 strerror(errno));
        } else if (!S_ISDIR(st.st_mode)) {
                r = fail(err, -ENOTDIR, "%s%s is not a directory", what, parent);
        } else if (st.st_uid != euid && st.st_uid != 0) {
                r = fail(err, -EPERM,
                         "%sdirectory %s is owned by uid %u, not by you (%u) or root: "
                         "refusing to use it",
                         what, parent, (unsigned)st.st_uid, (unsigned)euid);
        } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && !(st.st_mode & S_ISVTX)) {
                r = fail(err, -EPERM,
                         "%sdirectory %s (mode %04o) is writable by other users and not "
                         "sticky, so anyone could replace the socket: refusing to use it",
                         what, parent, (unsigned)(st.st_mode & 07777));
        }
        free(parent);
        if (r < 0)
                return r;
        return check_existing(path, what, err);
}

int ap_service_socket_path(bool create, char **ret_path, char **err)
{
        const char *env = getenv(AP_SERVICE_SOCKET_ENV);
        char *path;
        int r;
        if (env != NULL && env[0] != '\0') {
                r = check_override(env, err);
                if (r < 0)
                        return r;
                path = strdup(env);
                if (path == NULL)
                        return fail(err, -ENOMEM, "out of memory");
                *ret_path = path;
                return 0;
        }

        char *dir;
        r = ap_service_dir(create, &dir, err);
        if (r < 0)
                return r;
        path = ap_asprintf("%s/" AP_SERVICE_SOCKET_NAME, dir);
        free(dir);
        if (path == NULL)
                return fail(err, -ENOMEM, "out of memory");
        if (strlen(path) >= SUN_PATH_MAX)
                r = fail(err, -ENAMETOOLONG,
                         "%s is too long for a socket path (%zu bytes, at most %zu): set "
                         "XDG_RUNTIME_DIR or " AP_SERVICE_SOCKET_ENV " to something shorter",
                         path, strlen(path), SUN_PATH_MAX - 1);
        else
                r = check_existing(path, "", err);
        if (r < 0) {
                free(path);
                return r;
        }
        *ret_path = path;
        return 0;
}

/* A decimal number that is the whole of s. */
static int parse_long(const char *s, long *ret)
{
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0')
                return -EINVAL;
        *ret = v;
        return 0;
}

/* Checks the descriptor systemd passed; see ap_service_listen_fds. */
static int check_listen_fd(int fd, char **err)
{
        int domain = 0, type = 0, listening = 0;
        socklen_t len = sizeof(domain);
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) {
                if (errno == EBADF)
                        return fail(err, -EBADF, "LISTEN_FDS=1 but fd %d is not open", fd);
                if (errno == ENOTSOCK)
                        return fail(err, -ENOTSOCK, "fd %d passed in LISTEN_FDS is not a socket",
                                    fd);
                return fail(err, -errno, "cannot inspect fd %d passed in LISTEN_FDS: %s", fd,
                            strerror(errno));
        }
        if (domain != AF_UNIX)
                return fail(err, -EAFNOSUPPORT,
                            "fd %d passed in LISTEN_FDS is not a unix socket (family %d)", fd,
                            domain);
        len = sizeof(type);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
                return fail(err, -errno, "cannot inspect fd %d passed in LISTEN_FDS: %s", fd,
                            strerror(errno));
        if (type != SOCK_STREAM)
                return fail(err, -EPROTOTYPE,
                            "fd %d passed in LISTEN_FDS is not a stream socket (type %d; the "
                            "unit needs ListenStream=)",
                            fd, type);
        len = sizeof(listening);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
                return fail(err, -errno, "cannot inspect fd %d passed in LISTEN_FDS: %s", fd,
                            strerror(errno));
        if (!listening)
                return fail(err, -EINVAL, "fd %d passed in LISTEN_FDS is not listening", fd);

        int flags = fcntl(fd, F_GETFD);
        if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
                return fail(err, -errno, "cannot set FD_CLOEXEC on fd %d: %s", fd, strerror(errno));
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return fail(err, -errno, "cannot set O_NONBLOCK on fd %d: %s", fd, strerror(errno));
        return 0;
}

int ap_service_listen_fds(int *ret_fd, char **err)
{
        const char *pid_s = getenv("LISTEN_PID");
        if (pid_s == NULL)
                return 0;

        /* Messages are formatted before the variables are unset. */
        const char *fds_s = getenv("LISTEN_FDS");
        long pid, n;
        int r;
        if (parse_long(pid_s, &pid) < 0 || pid <= 0 || pid > INT_MAX)
                r = fail(err, -EINVAL, "LISTEN_PID=%s is not a process id", pid_s);
        else if ((pid_t)pid != getpid() || fds_s == NULL)
                r = 0; /* meant for another process (our parent's), or nothing passed */
        else if (parse_long(fds_s, &n) < 0 || n != 1)
                r = fail(err, -EINVAL,
                         "LISTEN_FDS=%s: allocprofd takes exactly one listening socket from "
                         "systemd (one ListenStream= in allocprofd.socket)",
                         fds_s);
        else if ((r = check_listen_fd(LISTEN_FDS_START, err)) >= 0) {
                *ret_fd = LISTEN_FDS_START;
                r = 1;
        }

        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_FDNAMES");
        return r;
}

/* Moves fd (FD_CLOEXEC) out of 0..2, which the daemon overwrites with dup2.  Returns
 * the descriptor to use, or -errno (fd is then closed). */
static int above_stdio(int fd)
{
        if (fd < 0)
                return -errno;
        if (fd > STDERR_FILENO)
                return fd;
        int moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
        int r = moved < 0 ? -errno : moved;
        close(fd);
        return r;
}

static int send_all(int fd, const char *buf, size_t len)
{
        while (len > 0) {
                ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                buf += n;
                len -= (size_t)n;
        }
        return 0;
}

static void write_all(int fd, const char *buf, size_t len)
{
        while (len > 0) {
                ssize_t n = write(fd, buf, len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return;
                buf += n;
                len -= (size_t)n;
        }
}

/* The original process: relays the daemon's verdict and exits with it. */
static __attribute__((noreturn)) void wait_for_daemon(int fd, pid_t child, const char *log)
{
        char buf[4096];
        bool any = false;
        char last = '\n';
        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                if (!any && buf[0] == READY_BYTE) {
                        waitpid(child, NULL, 0);
                        _exit(0);
                }
                any = true;
                write_all(STDERR_FILENO, buf, (size_t)n);
                last = buf[n - 1];
        }
        if (!any) {
                char *msg =
                        ap_asprintf("allocprofd: the daemon died during start-up (see %s)\n", log);
                if (msg != NULL)
                        write_all(STDERR_FILENO, msg, strlen(msg));
                free(msg);
        } else if (last != '\n') {
                write_all(STDERR_FILENO, "\n", 1);
        }
        waitpid(child, NULL, 0);
        _exit(1);
}

/* In a child after the fork: the caller's terminal is reached only through fd. */
static __attribute__((noreturn)) void child_fail(int fd, const char *what)
{
        char msg[256];
        snprintf(msg, sizeof(msg), "allocprofd: %s: %s", what, strerror(errno));
        send_all(fd, msg, strlen(msg));
        _exit(1);
}

int ap_service_daemonize(int *ready_fd, char **err)
{
        char *dir = NULL, *log = NULL;
        int logfd = -1, nullfd = -1, chan[2] = {-1, -1};
        int r = ap_service_dir(true, &dir, err);
        if (r < 0)
                return r;
        log = ap_asprintf("%s/" AP_SERVICE_LOG_NAME, dir);
        if (log == NULL) {
                r = fail(err, -ENOMEM, "out of memory");
                goto out;
        }
        logfd = above_stdio(
                open(log, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0600));
        if (logfd < 0) {
                r = fail(err, logfd, "cannot open %s: %s", log, strerror(-logfd));
                goto out;
        }
        nullfd = above_stdio(open("/dev/null", O_RDWR | O_NOCTTY | O_CLOEXEC));
        if (nullfd < 0) {
                r = fail(err, nullfd, "cannot open /dev/null: %s", strerror(-nullfd));
                goto out;
        }
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, chan) < 0) {
                r = fail(err, -errno, "cannot create the start-up channel: %s", strerror(errno));
                goto out;
        }
        for (int i = 0; i < 2; i++) {
                chan[i] = above_stdio(chan[i]);
                if (chan[i] < 0) {
                        r = fail(err, chan[i], "cannot create the start-up channel: %s",
                                 strerror(-chan[i]));
                        goto out;
                }
        }

        fflush(NULL); /* or the children would write the caller's buffers again */
        pid_t pid = fork();
        if (pid < 0) {
                r = fail(err, -errno, "cannot fork: %s", strerror(errno));
                goto out;
        }
        if (pid > 0) {
                close(chan[1]);
                close(logfd);
                close(nullfd);
                wait_for_daemon(chan[0], pid, log);
        }

        /* First child: a new session, then fork again so that the daemon is not a
         * session leader and can never acquire a controlling terminal. */
        close(chan[0]);
        if (setsid() < 0)
                child_fail(chan[1], "setsid");
        pid = fork();
        if (pid < 0)
                child_fail(chan[1], "fork");
        if (pid > 0)
                _exit(0);

        /* The daemon. */
        umask(077);
        if (chdir("/") < 0)
                child_fail(chan[1], "chdir /");
        if (dup2(nullfd, STDIN_FILENO) < 0 || dup2(nullfd, STDOUT_FILENO) < 0)
                child_fail(chan[1], "cannot redirect stdin and stdout to /dev/null");
        if (dup2(logfd, STDERR_FILENO) < 0)
                child_fail(chan[1], "cannot redirect stderr to the log");
        close(logfd);
        close(nullfd);
        free(dir);
        free(log);
        *ready_fd = chan[1];
        return 0;

out:
        if (chan[0] >= 0)
                close(chan[0]);
        if (chan[1] >= 0)
                close(chan[1]);
        if (nullfd >= 0)
                close(nullfd);
        if (logfd >= 0)
                close(logfd);
        free(log);
        free(dir);
        return r;
}

void ap_service_ready(int ready_fd)
{
        if (ready_fd < 0)
                return;
        char byte = READY_BYTE;
        send_all(ready_fd, &byte, 1);
        close(ready_fd);
}

void ap_service_fail(int ready_fd, const char *msg)
{
        if (ready_fd < 0)
                return;
        if (msg == NULL || msg[0] == '\0')
                msg = "allocprofd: start-up failed";
        send_all(ready_fd, msg, strlen(msg));
        close(ready_fd);
}
