/* The allocprofd service helpers (collector/service.c): every refusal of the private
 * directory and of the socket path, the /tmp fallback, the ALLOCPROF_DAEMON_SOCKET
 * override, systemd socket activation on fd 3, and daemonizing with the readiness
 * handshake; and the event loop's sleep between drain rounds (collector/server.c).  Everything happens under a temporary directory that is removed at the end.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allocprof/wire.h"
#include "helpers.h"
#include "server-internal.h"
#include "service.h"

#define OTHER_UID 65534 /* nobody */

static char g_tmp[] = "/tmp/test-service-XXXXXX";

/* A formatted path (or any string).  Every one lives until free_fmt() at the end, so
 * that tests can keep as many as they like. */
static char **g_strs;
static size_t g_nstrs;

static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...)
{
        char *s = NULL;
        va_list ap;
        va_start(ap, f);
        ASSERT_TRUE(vasprintf(&s, f, ap) >= 0);
        va_end(ap);
        char **grown = realloc(g_strs, (g_nstrs + 1) * sizeof(*g_strs));
        ASSERT_NOT_NULL(grown);
        g_strs = grown;
        g_strs[g_nstrs++] = s;
        return s;
}

static void free_fmt(void)
{
        for (size_t i = 0; i < g_nstrs; i++)
                free(g_strs[i]);
        free(g_strs);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)ftw;
        if (flag == FTW_DP || flag == FTW_D)
                chmod(path, 0700); /* a 0500 test directory must still be emptied */
        return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

static void rm_rf(const char *path)
{
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void mkdir_mode(const char *path, mode_t mode)
{
        ASSERT_OK(mkdir(path, 0700) < 0 ? -errno : 0);
        ASSERT_OK(chmod(path, mode) < 0 ? -errno : 0);
}

static void touch(const char *path)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ASSERT_TRUE(fd >= 0);
        close(fd);
}

static mode_t mode_of(const char *path)
{
        struct stat st;
        ASSERT_OK(lstat(path, &st) < 0 ? -errno : 0);
        return st.st_mode;
}

/* A unix socket bound at path (listening if `listening`); returns the descriptor. */
static int bound_socket(const char *path, int type, bool listening)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        ASSERT_TRUE(strlen(path) < sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        int fd = socket(AF_UNIX, type, 0);
        ASSERT_TRUE(fd >= 0);
        ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0);
        if (listening)
                ASSERT_OK(listen(fd, 8) < 0 ? -errno : 0);
        return fd;
}

static void set_xdg(const char *dir)
{
        if (dir == NULL)
                unsetenv("XDG_RUNTIME_DIR");
        else
                setenv("XDG_RUNTIME_DIR", dir, 1);
}

/* ap_service_dir must fail with `want`, naming `path` and saying `why`; *ret untouched. */
static void expect_dir_refused(bool create, int want, const char *path, const char *why)
{
        char *dir = (char *)"untouched", *err = NULL;
        ASSERT_ERR(ap_service_dir(create, &dir, &err), want);
        ASSERT_STREQ(dir, "untouched");
        ASSERT_CONTAINS(err, path);
        ASSERT_CONTAINS(err, why);
        ASSERT_NOT_CONTAINS(err, "\n");
        free(err);
}

static void expect_dir_ok(bool create, const char *want)
{
        char *dir = NULL, *err = NULL;
        int r = ap_service_dir(create, &dir, &err);
        if (r < 0)
                fprintf(stderr, "unexpected error: %s\n", err);
        ASSERT_OK(r);
        ASSERT_NULL(err);
        ASSERT_STREQ(dir, want);
        free(dir);
}

static void test_dir_missing(void)
{
        const char *base = fmt("%s/missing", g_tmp);
        mkdir_mode(base, 0700);
        set_xdg(base);
        expect_dir_refused(false, -ENOENT, fmt("%s/allocprof", base), "does not exist");
        /* create=false never creates it */
        ASSERT_EQ(access(fmt("%s/allocprof", base), F_OK), -1);
        /* a trailing slash on XDG_RUNTIME_DIR does not double the separator */
        set_xdg(fmt("%s/", base));
        expect_dir_refused(false, -ENOENT, fmt("%s/allocprof ", base), "does not exist");
}

static void test_dir_create(void)
{
        const char *base = fmt("%s/create", g_tmp);
        const char *dir = fmt("%s/allocprof", base);
        mkdir_mode(base, 0700);
        set_xdg(base);

        /* umask 0 would give 0777 to a plain mkdir(0777); we want 0700 */
        mode_t old = umask(0);
        expect_dir_ok(true, dir);
        ASSERT_TRUE(S_ISDIR(mode_of(dir)));
        ASSERT_EQ(mode_of(dir) & 07777, 0700u);
        /* it exists now: create=true again (EEXIST) and create=false accept it */
        expect_dir_ok(true, dir);
        expect_dir_ok(false, dir);

        /* umask 0277 would leave 0500; a set-group-ID parent would add S_ISGID */
        ASSERT_OK(rmdir(dir) < 0 ? -errno : 0);
        ASSERT_OK(chmod(base, 02700) < 0 ? -errno : 0);
        umask(0277);
        expect_dir_ok(true, dir);
        ASSERT_EQ(mode_of(dir) & 07777, 0700u);
        umask(old);
}

static void test_dir_symlink(void)
{
        const char *base = fmt("%s/symlink", g_tmp);
        const char *real = fmt("%s/real", base);
        const char *dir = fmt("%s/allocprof", base);
        mkdir_mode(base, 0700);
        mkdir_mode(real, 0700); /* a perfectly good target: the link itself is refused */
        ASSERT_OK(symlink(real, dir) < 0 ? -errno : 0);
        set_xdg(base);
        expect_dir_refused(false, -ELOOP, dir, "is a symbolic link");
        expect_dir_refused(true, -ELOOP, dir, "is a symbolic link");
        /* a dangling link is refused as well, and create=true does not follow it */
        ASSERT_OK(unlink(dir) < 0 ? -errno : 0);
        ASSERT_OK(symlink(fmt("%s/nowhere", base), dir) < 0 ? -errno : 0);
        expect_dir_refused(true, -ELOOP, dir, "is a symbolic link");
        ASSERT_EQ(access(fmt("%s/nowhere", base), F_OK), -1);
}

static void test_dir_modes(void)
{
        const char *base = fmt("%s/modes", g_tmp);
        const char *dir = fmt("%s/allocprof", base);
        mkdir_mode(base, 0700);
        set_xdg(base);
        mkdir_mode(dir, 0755);
        expect_dir_refused(false, -EPERM, dir, "has mode 0755, not 0700");
        /* create=true does not "repair" a directory it did not make */
        expect_dir_refused(true, -EPERM, dir, "has mode 0755, not 0700");
        ASSERT_EQ(mode_of(dir) & 07777, 0755u);
        ASSERT_OK(chmod(dir, 0770) < 0 ? -errno : 0);
        expect_dir_refused(false, -EPERM, dir, "has mode 0770");
        ASSERT_OK(chmod(dir, 0701) < 0 ? -errno : 0);
        expect_dir_refused(false, -EPERM, dir, "has mode 0701");
        ASSERT_OK(chmod(dir, 0500) < 0 ? -errno : 0);
        expect_dir_refused(false, -EPERM, dir, "has mode 0500");
        /* special bits do not matter, only rwx------ */
        ASSERT_OK(chmod(dir, 01700) < 0 ? -errno : 0);
        expect_dir_ok(false, dir);

        ASSERT_OK(rmdir(dir) < 0 ? -errno : 0);
        touch(dir);
        expect_dir_refused(false, -ENOTDIR, dir, "is not a directory");
        expect_dir_refused(true, -ENOTDIR, dir, "is not a directory");
}

static void test_dir_foreign_owner(void)
{
        if (geteuid() != 0) {
                printf("note: not root, cannot chown: the other-owner cases are skipped\n");
                return;
        }
        const char *base = fmt("%s/foreign", g_tmp);
        const char *dir = fmt("%s/allocprof", base);
        mkdir_mode(base, 0700);
        mkdir_mode(dir, 0700);
        ASSERT_OK(chown(dir, OTHER_UID, OTHER_UID) < 0 ? -errno : 0);
        set_xdg(base);
        expect_dir_refused(
                false, -EPERM, dir,
                fmt("is owned by uid %d, not by you (0): refusing to use it", OTHER_UID));
        expect_dir_refused(true, -EPERM, dir, fmt("owned by uid %d", OTHER_UID));
}

/* With this XDG_RUNTIME_DIR the directory must be the /tmp one: either accepted as it is,
 * or refused with a message naming it, never the XDG one.  (Outside a private mount
 * namespace the real /tmp/allocprof-<euid> is only looked at, never created.) */
static void expect_fallback(const char *xdg)
{
        const char *want = fmt("/tmp/allocprof-%u", (unsigned)geteuid());
        char *dir = NULL, *err = NULL;
        set_xdg(xdg);
        int r = ap_service_dir(false, &dir, &err);
        if (r >= 0) {
                ASSERT_STREQ(dir, want);
        } else {
                ASSERT_CONTAINS(err, fmt("%s ", want));
                if (xdg != NULL && xdg[0] != '\0')
                        ASSERT_NOT_CONTAINS(err, xdg);
        }
        free(dir);
        free(err);
}

static void test_fallback(void)
{
        const char *base = fmt("%s/fallback", g_tmp);
        mkdir_mode(base, 0700);
        expect_fallback(NULL);
        expect_fallback("");
        expect_fallback("relative/dir");
        expect_fallback(fmt("%s/nonexistent", base));
        touch(fmt("%s/file", base));
        expect_fallback(fmt("%s/file", base));
        if (geteuid() == 0) {
                mkdir_mode(fmt("%s/other", base), 0700);
                ASSERT_OK(chown(fmt("%s/other", base), OTHER_UID, OTHER_UID) < 0 ? -errno : 0);
                expect_fallback(fmt("%s/other", base));
        }
}

/* The /tmp fallback for real, in a private mount namespace with its own empty /tmp. */
static int fallback_in_namespace(void)
{
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777") < 0)
                return AP_TEST_SKIP;
        const char *want = fmt("/tmp/allocprof-%u", (unsigned)geteuid());
        set_xdg(NULL);
        expect_dir_refused(false, -ENOENT, want, "does not exist");
        umask(0);
        expect_dir_ok(true, want);
        ASSERT_EQ(mode_of(want) & 07777, 0700u);
        char *path = NULL, *err = NULL;
        ASSERT_OK(ap_service_socket_path(false, &path, &err));
        ASSERT_STREQ(path, fmt("%s/allocprofd.sock", want));
        free(path);
        if (geteuid() == 0) {
                /* another user got there first (/tmp is shared) */
                ASSERT_OK(chown(want, OTHER_UID, OTHER_UID) < 0 ? -errno : 0);
                expect_dir_refused(true, -EPERM, want,
                                   fmt("%s is owned by uid %d, not by you (0): refusing to use "
                                       "it",
                                       want, OTHER_UID));
        }
        return 0;
}

static void test_fallback_create(void)
{
        fflush(NULL);
        pid_t pid = fork();
        ASSERT_TRUE(pid >= 0);
        if (pid == 0)
                _exit(fallback_in_namespace());
        int status;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        if (WEXITSTATUS(status) == AP_TEST_SKIP)
                printf("note: no private mount namespace: /tmp fallback with create=true "
                       "skipped\n");
        else
                ASSERT_EQ(WEXITSTATUS(status), 0);
}

static void expect_path_refused(int want, const char *what, const char *why)
{
        char *path = (char *)"untouched", *err = NULL;
        ASSERT_ERR(ap_service_socket_path(true, &path, &err), want);
        ASSERT_STREQ(path, "untouched");
        ASSERT_CONTAINS(err, what);
        ASSERT_CONTAINS(err, why);
        ASSERT_NOT_CONTAINS(err, "\n");
        free(err);
}

static void expect_path_ok(bool create, const char *want)
{
        char *path = NULL, *err = NULL;
        int r = ap_service_socket_path(create, &path, &err);
        if (r < 0)
                fprintf(stderr, "unexpected error: %s\n", err);
        ASSERT_OK(r);
        ASSERT_STREQ(path, want);
        free(path);
}

static void test_socket_default(void)
{
        const char *base = fmt("%s/sockdef", g_tmp);
        const char *dir = fmt("%s/allocprof", base);
        const char *sock = fmt("%s/allocprofd.sock", dir);
        mkdir_mode(base, 0700);
        set_xdg(base);
        unsetenv(AP_SERVICE_SOCKET_ENV);

        char *path = (char *)"untouched", *err = NULL;
        ASSERT_ERR(ap_service_socket_path(false, &path, &err), -ENOENT);
        ASSERT_STREQ(path, "untouched");
        ASSERT_CONTAINS(err, dir);
        free(err);

        expect_path_ok(true, sock);
        ASSERT_EQ(mode_of(dir) & 07777, 0700u);
        expect_path_ok(false, sock);
        /* an empty override is no override */
        setenv(AP_SERVICE_SOCKET_ENV, "", 1);
        expect_path_ok(false, sock);
        unsetenv(AP_SERVICE_SOCKET_ENV);

        /* the directory's checks apply */
        ASSERT_OK(chmod(dir, 0750) < 0 ? -errno : 0);
        expect_path_refused(-EPERM, dir, "has mode 0750");
        ASSERT_OK(chmod(dir, 0700) < 0 ? -errno : 0);

        /* a stale socket of ours is fine, a plain file is not */
        int fd = bound_socket(sock, SOCK_STREAM, false);
        close(fd);
        expect_path_ok(false, sock);
        ASSERT_OK(unlink(sock) < 0 ? -errno : 0);
        touch(sock);
        expect_path_refused(-ENOTSOCK, sock, "exists and is not a socket");
        ASSERT_OK(unlink(sock) < 0 ? -errno : 0);

        /* sun_path is 108 bytes: a deep XDG_RUNTIME_DIR does not fit */
        char name[101];
        memset(name, 'x', sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        const char *deep = fmt("%s/%s", base, name);
        mkdir_mode(deep, 0700);
        set_xdg(deep);
        expect_path_refused(-ENAMETOOLONG, fmt("%s/allocprof/allocprofd.sock", deep),
                            "too long for a socket path");
}

static void test_socket_override(void)
{
        const char *base = fmt("%s/override", g_tmp);
        mkdir_mode(base, 0700);
        /* The override does not consult the service directory at all: point
         * XDG_RUNTIME_DIR at one that would be refused. */
        const char *bad = fmt("%s/badxdg", base);
        mkdir_mode(bad, 0700);
        mkdir_mode(fmt("%s/allocprof", bad), 0777);
        set_xdg(bad);

        const char *priv = fmt("%s/private", base);
        mkdir_mode(priv, 0700);
        const char *sock = fmt("%s/my.sock", priv);
        setenv(AP_SERVICE_SOCKET_ENV, sock, 1);
        expect_path_ok(false, sock);
        expect_path_ok(true, sock);
        ASSERT_EQ(access(sock, F_OK), -1); /* nothing created */
        ASSERT_EQ(mode_of(fmt("%s/allocprof", bad)) & 0777, 0777u);

        setenv(AP_SERVICE_SOCKET_ENV, "relative/my.sock", 1);
        expect_path_refused(-EINVAL, AP_SERVICE_SOCKET_ENV ": relative/my.sock",
                            "not an absolute path");
        setenv(AP_SERVICE_SOCKET_ENV, fmt("%s/", priv), 1);
        expect_path_refused(-EINVAL, priv, "names a directory");

        setenv(AP_SERVICE_SOCKET_ENV, fmt("%s/nodir/my.sock", base), 1);
        expect_path_refused(-ENOENT, fmt("%s/nodir", base), "does not exist");
        touch(fmt("%s/afile", base));
        setenv(AP_SERVICE_SOCKET_ENV, fmt("%s/afile/my.sock", base), 1);
        expect_path_refused(-ENOTDIR, fmt("%s/afile", base), "is not a directory");

        /* writable by others: refused unless sticky */
        const char *open_dir = fmt("%s/open", base);
        mkdir_mode(open_dir, 0777);
        setenv(AP_SERVICE_SOCKET_ENV, fmt("%s/my.sock", open_dir), 1);
        expect_path_refused(-EPERM, open_dir, "writable by other users and not sticky");
        ASSERT_OK(chmod(open_dir, 0770) < 0 ? -errno : 0);
        expect_path_refused(-EPERM, open_dir, "mode 0770");
        ASSERT_OK(chmod(open_dir, 01777) < 0 ? -errno : 0);
        expect_path_ok(false, fmt("%s/my.sock", open_dir));
        ASSERT_OK(chmod(open_dir, 0755) < 0 ? -errno : 0);
        expect_path_ok(false, fmt("%s/my.sock", open_dir));

        /* the root directory, normally owned by root and not writable by others */
        struct stat root;
        ASSERT_OK(stat("/", &root) < 0 ? -errno : 0);
        const char *top = fmt("/allocprof-test-service-%d.sock", (int)getpid());
        setenv(AP_SERVICE_SOCKET_ENV, top, 1);
        if ((root.st_uid == 0 || root.st_uid == geteuid()) && !(root.st_mode & 022))
                expect_path_ok(false, top);
        else
                printf("note: / is not owned by root or is writable by others here\n");

        /* what already exists at the path */
        const char *file = fmt("%s/file.sock", priv);
        touch(file);
        setenv(AP_SERVICE_SOCKET_ENV, file, 1);
        expect_path_refused(-ENOTSOCK, file, "exists and is not a socket");
        const char *stale = fmt("%s/stale.sock", priv);
        close(bound_socket(stale, SOCK_STREAM, false));
        setenv(AP_SERVICE_SOCKET_ENV, stale, 1);
        expect_path_ok(false, stale);

        /* fits sun_path with its NUL: 107 bytes do, 108 do not */
        char longp[PATH_MAX];
        int n = snprintf(longp, sizeof(longp), "%s/", priv);
        memset(longp + n, 'y', 107 - (size_t)n);
        longp[107] = '\0';
        setenv(AP_SERVICE_SOCKET_ENV, longp, 1);
        expect_path_ok(false, longp);
        memset(longp + n, 'y', 108 - (size_t)n);
        longp[108] = '\0';
        setenv(AP_SERVICE_SOCKET_ENV, longp, 1);
        expect_path_refused(-ENAMETOOLONG, longp, "too long for a socket path");

        if (geteuid() != 0) {
                printf("note: not root, cannot chown: the other-owner override cases are "
                       "skipped\n");
                unsetenv(AP_SERVICE_SOCKET_ENV);
                return;
        }
        const char *theirs = fmt("%s/theirs", base);
        mkdir_mode(theirs, 0755);
        ASSERT_OK(chown(theirs, OTHER_UID, OTHER_UID) < 0 ? -errno : 0);
        setenv(AP_SERVICE_SOCKET_ENV, fmt("%s/my.sock", theirs), 1);
        expect_path_refused(-EPERM, theirs,
                            fmt("owned by uid %d, not by you (0) or root", OTHER_UID));

        /* a socket planted by another user in a sticky directory like /tmp */
        const char *planted = fmt("%s/open/planted.sock", base);
        ASSERT_OK(chmod(open_dir, 01777) < 0 ? -errno : 0);
        close(bound_socket(planted, SOCK_STREAM, false));
        ASSERT_OK(chown(planted, OTHER_UID, OTHER_UID) < 0 ? -errno : 0);
        setenv(AP_SERVICE_SOCKET_ENV, planted, 1);
        expect_path_refused(-EPERM, planted, fmt("is owned by uid %d, not by you", OTHER_UID));
        unsetenv(AP_SERVICE_SOCKET_ENV);
}

static void set_listen_env(const char *pid, const char *fds)
{
        if (pid)
                setenv("LISTEN_PID", pid, 1);
        else
                unsetenv("LISTEN_PID");
        if (fds)
                setenv("LISTEN_FDS", fds, 1);
        else
                unsetenv("LISTEN_FDS");
        setenv("LISTEN_FDNAMES", "allocprofd.socket", 1);
}

static const char *my_pid(void)
{
        return fmt("%d", (int)getpid());
}

/* Puts fd on 3, without FD_CLOEXEC or O_NONBLOCK, as systemd hands it over. */
static void put_on_3(int fd)
{
        ASSERT_TRUE(fd >= 0);
        if (fd != 3) { /* dup2(3, 3) would not clear FD_CLOEXEC, and close would lose it */
                ASSERT_EQ(dup2(fd, 3), 3);
                close(fd);
        }
        ASSERT_OK(fcntl(3, F_SETFD, 0));
        ASSERT_EQ(fcntl(3, F_GETFD) & FD_CLOEXEC, 0);
        ASSERT_EQ(fcntl(3, F_GETFL) & O_NONBLOCK, 0);
}

static void expect_env_cleared(void)
{
        ASSERT_NULL(getenv("LISTEN_PID"));
        ASSERT_NULL(getenv("LISTEN_FDS"));
        ASSERT_NULL(getenv("LISTEN_FDNAMES"));
}

static void expect_listen_refused(int want, const char *why)
{
        int fd = -42;
        char *err = NULL;
        ASSERT_ERR(ap_service_listen_fds(&fd, &err), want);
        ASSERT_EQ(fd, -42);
        ASSERT_CONTAINS(err, why);
        free(err);
        expect_env_cleared();
}

static void expect_not_activated(void)
{
        int fd = -42;
        char *err = NULL;
        ASSERT_EQ(ap_service_listen_fds(&fd, &err), 0);
        ASSERT_EQ(fd, -42);
        ASSERT_NULL(err);
}

static void test_listen_fds(void)
{
        const char *base = fmt("%s/listen", g_tmp);
        mkdir_mode(base, 0700);
        const char *sock = fmt("%s/l.sock", base);

        /* nothing set: not activated, and the environment is left alone */
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        setenv("LISTEN_FDNAMES", "unrelated", 1);
        expect_not_activated();
        ASSERT_STREQ(getenv("LISTEN_FDNAMES"), "unrelated");

        /* activated */
        put_on_3(bound_socket(sock, SOCK_STREAM, true));
        set_listen_env(my_pid(), "1");
        int fd = -1;
        char *err = NULL;
        ASSERT_EQ(ap_service_listen_fds(&fd, &err), 1);
        ASSERT_NULL(err);
        ASSERT_EQ(fd, 3);
        ASSERT_TRUE(fcntl(3, F_GETFD) & FD_CLOEXEC);
        ASSERT_TRUE(fcntl(3, F_GETFL) & O_NONBLOCK);
        expect_env_cleared();
        /* and it is the socket that was passed: a client gets through */
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strcpy(sa.sun_path, sock);
        int client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_OK(connect(client, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0);
        int conn = accept4(3, NULL, NULL, SOCK_CLOEXEC);
        ASSERT_TRUE(conn >= 0);
        close(conn);
        close(client);
        /* called again, the environment is gone: not activated */
        expect_not_activated();

        /* for another process (e.g. our parent): not activated, fd 3 untouched */
        int flags = fcntl(3, F_GETFD);
        ASSERT_OK(fcntl(3, F_SETFD, flags & ~FD_CLOEXEC));
        set_listen_env(fmt("%d", (int)getppid()), "1");
        expect_not_activated();
        expect_env_cleared();
        ASSERT_EQ(fcntl(3, F_GETFD) & FD_CLOEXEC, 0);

        /* our pid but no LISTEN_FDS: not activated */
        set_listen_env(my_pid(), NULL);
        expect_not_activated();
        expect_env_cleared();

        /* a bad environment */
        set_listen_env("", "1");
        expect_listen_refused(-EINVAL, "LISTEN_PID= is not a process id");
        set_listen_env("12abc", "1");
        expect_listen_refused(-EINVAL, "LISTEN_PID=12abc");
        set_listen_env("-1", "1");
        expect_listen_refused(-EINVAL, "LISTEN_PID=-1");
        set_listen_env(my_pid(), "0");
        expect_listen_refused(-EINVAL, "LISTEN_FDS=0: allocprofd takes exactly one");
        set_listen_env(my_pid(), "x");
        expect_listen_refused(-EINVAL, "LISTEN_FDS=x");
        ASSERT_EQ(dup2(3, 4), 4);
        set_listen_env(my_pid(), "2");
        expect_listen_refused(-EINVAL, "LISTEN_FDS=2");
        close(4);
        close(3);

        /* fd 3 is not what allocprofd.socket passes */
        set_listen_env(my_pid(), "1");
        expect_listen_refused(-EBADF, "fd 3 is not open");

        put_on_3(open("/dev/null", O_RDWR));
        set_listen_env(my_pid(), "1");
        expect_listen_refused(-ENOTSOCK, "fd 3 passed in LISTEN_FDS is not a socket");
        ASSERT_EQ(fcntl(3, F_GETFD) & FD_CLOEXEC, 0); /* left alone */
        close(3);

        int p[2];
        ASSERT_OK(pipe(p));
        close(p[1]);
        put_on_3(p[0]);
        set_listen_env(my_pid(), "1");
        expect_listen_refused(-ENOTSOCK, "is not a socket");
        close(3);

        ASSERT_OK(unlink(sock));
        put_on_3(bound_socket(sock, SOCK_DGRAM, false));
        set_listen_env(my_pid(), "1");
        expect_listen_refused(-EPROTOTYPE, "is not a stream socket");
        close(3);

        int sp[2];
        ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp));
        close(sp[1]);
        put_on_3(sp[0]);
        set_listen_env(my_pid(), "1");
        expect_listen_refused(-EINVAL, "is not listening");
        close(3);

        ASSERT_OK(unlink(sock));
        put_on_3(bound_socket(sock, SOCK_STREAM, false));
        set_listen_env(my_pid(), "1");
        expect_listen_refused(-EINVAL, "is not listening");
        close(3);

        int inet = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
        if (inet < 0 || bind(inet, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
            listen(inet, 1) < 0) {
                printf("note: no listening TCP socket here: the AF_INET case is skipped\n");
                if (inet >= 0)
                        close(inet);
        } else {
                put_on_3(inet);
                set_listen_env(my_pid(), "1");
                expect_listen_refused(-EAFNOSUPPORT, "is not a unix socket");
                close(3);
        }
}

/* --- daemonize --- */

enum outcome { READY, FAIL, DIE };

/* What the daemon observes about itself, written to `facts` before it reports. */
static void record_facts(const char *facts, int ready_fd, pid_t test_sid)
{
        FILE *f = fopen(facts, "we");
        if (f == NULL)
                _exit(10);
        struct stat null_st, st0, st1, st2;
        char cwd[PATH_MAX];
        mode_t mask = umask(0);
        umask(mask);
        stat("/dev/null", &null_st);
        fstat(0, &st0);
        fstat(1, &st1);
        fstat(2, &st2);
        fprintf(f, "leader=%d\n", getsid(0) == getpid());
        fprintf(f, "new_session=%d\n", getsid(0) != test_sid);
        fprintf(f, "umask=%04o\n", (unsigned)mask);
        fprintf(f, "cwd=%s\n", getcwd(cwd, sizeof(cwd)) ? cwd : "?");
        fprintf(f, "stdin_null=%d\n", S_ISCHR(st0.st_mode) && st0.st_rdev == null_st.st_rdev);
        fprintf(f, "stdout_null=%d\n", S_ISCHR(st1.st_mode) && st1.st_rdev == null_st.st_rdev);
        fprintf(f, "stderr_ino=%lu\n", (unsigned long)st2.st_ino);
        fprintf(f, "ready_cloexec=%d\n", (fcntl(ready_fd, F_GETFD) & FD_CLOEXEC) != 0);
        fclose(f);
}

/* Runs ap_service_daemonize in a child whose stdout and stderr go to files; returns the
 * exit status of that child (the "original process"). */
static int run_daemonize(enum outcome what, const char *dir)
{
        const char *facts = fmt("%s/facts", dir);
        const char *out = fmt("%s/stdout", dir);
        const char *errf = fmt("%s/stderr", dir);
        unlink(facts);
        pid_t test_sid = getsid(0);
        fflush(NULL);
        pid_t pid = fork();
        ASSERT_TRUE(pid >= 0);
        if (pid == 0) {
                int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                int e = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
                        _exit(20);
                umask(0); /* the log must still be 0600 */
                /* buffered, unflushed: must reach the file exactly once */
                printf("buffered-before-fork");
                int ready = -1;
                char *err = NULL;
                int r = ap_service_daemonize(&ready, &err);
                if (r < 0) {
                        fprintf(stderr, "daemonize: %s\n", err);
                        _exit(21);
                }
                /* the daemon */
                record_facts(facts, ready, test_sid);
                fprintf(stderr, "hello from the daemon %d\n", (int)what);
                fflush(stderr);
                if (what == READY)
                        ap_service_ready(ready);
                else if (what == FAIL)
                        ap_service_fail(ready, "allocprofd: cannot listen: boom");
                _exit(0); /* DIE: without a word */
        }
        int status;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static char *slurp(const char *path)
{
        char *buf = calloc(1, 65536);
        ASSERT_NOT_NULL(buf);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        ssize_t n = read(fd, buf, 65535);
        ASSERT_TRUE(n >= 0);
        close(fd);
        return buf;
}

static size_t count(const char *hay, const char *needle)
{
        size_t n = 0;
        for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
                n++;
        return n;
}

static void test_daemonize(void)
{
        const char *base = fmt("%s/daemon", g_tmp);
        mkdir_mode(base, 0700);
        set_xdg(base);
        unsetenv(AP_SERVICE_SOCKET_ENV);
        const char *log = fmt("%s/allocprof/allocprofd.log", base);

        /* ready: the original exits 0, silently */
        ASSERT_EQ(run_daemonize(READY, base), 0);
        char *s = slurp(fmt("%s/stderr", base));
        ASSERT_STREQ(s, "");
        free(s);
        s = slurp(fmt("%s/stdout", base));
        ASSERT_STREQ(s, "buffered-before-fork");
        free(s);
        s = slurp(fmt("%s/facts", base));
        ASSERT_CONTAINS(s, "leader=0\n");
        ASSERT_CONTAINS(s, "new_session=1\n");
        ASSERT_CONTAINS(s, "umask=0077\n");
        ASSERT_CONTAINS(s, "cwd=/\n");
        ASSERT_CONTAINS(s, "stdin_null=1\n");
        ASSERT_CONTAINS(s, "stdout_null=1\n");
        ASSERT_CONTAINS(s, "ready_cloexec=1\n");
        struct stat st;
        ASSERT_OK(lstat(log, &st) < 0 ? -errno : 0);
        ASSERT_TRUE(S_ISREG(st.st_mode));
        ASSERT_EQ(st.st_mode & 07777, 0600u);
        ASSERT_CONTAINS(s, fmt("stderr_ino=%lu\n", (unsigned long)st.st_ino));
        free(s);
        ASSERT_EQ(mode_of(fmt("%s/allocprof", base)) & 07777, 0700u);

        /* fail: the daemon's text on the original's stderr, exit 1 */
        ASSERT_EQ(run_daemonize(FAIL, base), 1);
        s = slurp(fmt("%s/stderr", base));
        ASSERT_STREQ(s, "allocprofd: cannot listen: boom\n");
        free(s);

        /* the daemon dies without a word */
        ASSERT_EQ(run_daemonize(DIE, base), 1);
        s = slurp(fmt("%s/stderr", base));
        ASSERT_STREQ(s, fmt("allocprofd: the daemon died during start-up (see %s)\n", log));
        free(s);

        /* the log kept what each daemon wrote to stderr (appended, not truncated) */
        s = slurp(log);
        ASSERT_EQ(count(s, "hello from the daemon"), 3u);
        ASSERT_CONTAINS(s, fmt("hello from the daemon %d\n", READY));
        ASSERT_CONTAINS(s, fmt("hello from the daemon %d\n", DIE));
        free(s);

        /* an unusable service directory: refused in the caller, before any fork */
        ASSERT_OK(chmod(fmt("%s/allocprof", base), 0755) < 0 ? -errno : 0);
        int ready = -1;
        char *err = NULL;
        ASSERT_ERR(ap_service_daemonize(&ready, &err), -EPERM);
        ASSERT_EQ(ready, -1);
        ASSERT_CONTAINS(err, "has mode 0755");
        free(err);
        ASSERT_EQ(waitpid(-1, NULL, WNOHANG), -1);
        ASSERT_EQ(errno, ECHILD);

        /* ready and fail accept -1 (the --foreground path) */
        ap_service_ready(-1);
        ap_service_fail(-1, "ignored");
}

/* The event loop's sleep between drain rounds: none once a ring is half full, the
 * longest when little came in, else what the busiest ring needs, at the rate it just
 * filled, to reach an eighth of its size. */
static void test_drain_wait(void)
{
        const uint64_t ms = 1000000, eighth = AP_RING_BYTES / 8;
        ASSERT_EQ(ap_drain_wait_ms(AP_RING_BYTES / 2, 5 * ms), 0);
        ASSERT_EQ(ap_drain_wait_ms(AP_RING_BYTES, 5 * ms), 0);
        ASSERT_EQ(ap_drain_wait_ms(0, 5 * ms), AP_DRAIN_WAIT_MAX_MS);
        ASSERT_EQ(ap_drain_wait_ms(4096, 10 * ms), AP_DRAIN_WAIT_MAX_MS);
        ASSERT_EQ(ap_drain_wait_ms(1, UINT64_MAX), AP_DRAIN_WAIT_MAX_MS); /* the first round */
        ASSERT_EQ(ap_drain_wait_ms(eighth, 4 * ms), 4);
        ASSERT_EQ(ap_drain_wait_ms(2 * eighth, 4 * ms), 2);
        ASSERT_EQ(ap_drain_wait_ms(eighth / 4, 2 * ms), 8);
        ASSERT_EQ(ap_drain_wait_ms(3 * eighth, 1 * ms), 1); /* a third of a ms: at least 1 */
        /* Rounds that moved nothing back off from 1 ms, so that a program that starts
         * allocating right after registering finds its ring drained within a few ms. */
        static const int idle[] = {1, 2, 4, 8, 16, AP_DRAIN_WAIT_MAX_MS, AP_DRAIN_WAIT_MAX_MS};
        for (unsigned k = 0; k < sizeof(idle) / sizeof(idle[0]); k++)
                ASSERT_EQ(ap_idle_wait_ms(k), idle[k]);
        ASSERT_EQ(ap_idle_wait_ms(1000), AP_DRAIN_WAIT_MAX_MS);
        /* From a registration (last sleep 1 ms): a trickle of start-up records earns the
         * longest sleep by its rate, but each sleep is at most twice the last. */
        unsigned idle_rounds = 3;
        int w = 1;
        static const int ramp[] = {2, 4, 8, 16, AP_DRAIN_WAIT_MAX_MS, AP_DRAIN_WAIT_MAX_MS};
        for (unsigned k = 0; k < sizeof(ramp) / sizeof(ramp[0]); k++) {
                w = ap_next_wait_ms(w, true, 4096, 10 * ms, &idle_rounds, true);
                ASSERT_EQ(w, ramp[k]);
                ASSERT_EQ(idle_rounds, 0);
        }
        ASSERT_EQ(ap_next_wait_ms(w, true, AP_RING_BYTES, 1 * ms, &idle_rounds, true),
                  0);                                                           /* half full */
        ASSERT_EQ(ap_next_wait_ms(0, false, 0, 1 * ms, &idle_rounds, true), 1); /* then idle */
        ASSERT_EQ(ap_next_wait_ms(1, false, 0, 1 * ms, &idle_rounds, true), 2);
        ASSERT_EQ(ap_next_wait_ms(2, false, 0, 1 * ms, &idle_rounds, false),
                  -1); /* nobody registered */
}

int main(void)
{
        ASSERT_NOT_NULL(mkdtemp(g_tmp));
        unsetenv(AP_SERVICE_SOCKET_ENV);
        test_dir_missing();
        test_dir_create();
        test_dir_symlink();
        test_dir_modes();
        test_dir_foreign_owner();
        test_fallback();
        test_fallback_create();
        test_socket_default();
        test_socket_override();
        test_listen_fds();
        test_daemonize();
        test_drain_wait();
        rm_rf(g_tmp);
        free_fmt();
        printf("service: all passed\n");
        return 0;
}
