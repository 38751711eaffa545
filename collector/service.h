/* What allocprofd needs to run as a per-user service: its private runtime directory, the
 * path of its socket, systemd socket activation (without libsystemd) and classic
 * daemonization with a readiness handshake.  The CLI uses the first two to find the
 * daemon, and trusts a socket only in a directory these checks accept.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>

/* Overrides the socket path (see ap_service_socket_path). */
#define AP_SERVICE_SOCKET_ENV "ALLOCPROF_DAEMON_SOCKET"
/* Names inside the service directory. */
#define AP_SERVICE_DIR_NAME "allocprof"
#define AP_SERVICE_SOCKET_NAME "allocprofd.sock"
#define AP_SERVICE_LOG_NAME "allocprofd.log"

/* Errors.  Every function here that takes `char **err` returns >= 0 on success (*err is
 * then untouched) or -errno on failure, with *err set to a malloc'd one-line message
 * (no trailing newline, no "allocprofd:" prefix) that names the offending path or
 * variable and says why; the caller prints it and frees it.  *err is NULL only if that
 * message could not be allocated (the return is then usually -ENOMEM).  `err` itself may
 * be NULL when the caller wants no message.  `ret_` out-parameters are set only on
 * success.
 *
 * Thread-safety: these read (ap_service_listen_fds also modifies) the environment, and
 * ap_service_daemonize forks: call them from main() before any thread is started. */

/* The service's private runtime directory, as a malloc'd path in *ret_dir:
 *   $XDG_RUNTIME_DIR/allocprof  when XDG_RUNTIME_DIR is set, non-empty, absolute and
 *                               names an existing directory (stat) owned by geteuid();
 *   /tmp/allocprof-<euid>       otherwise (silently: an unusable XDG_RUNTIME_DIR is
 *                               treated as unset, as the XDG spec suggests).
 * With create=true the directory is made with mode 0700 if missing (an existing one is
 * kept as it is; losing a mkdir race is fine, the winner's directory is then checked
 * like any other).  A directory we create is fchmod'ed to 0700 so that the umask (0 or
 * 0277 alike) and a set-group-ID parent do not matter.
 *
 * In every case the directory is then checked with lstat and refused unless it is
 *   - not a symbolic link                          (else -ELOOP),
 *   - a directory                                  (else -ENOTDIR),
 *   - owned by geteuid()                           (else -EPERM),
 *   - permission bits exactly rwx------, i.e. 0700; set-user-ID, set-group-ID and
 *     sticky bits are ignored                      (else -EPERM).
 * A missing directory with create=false is -ENOENT ("... does not exist").  Clients
 * (the CLI) call this with create=false before trusting a socket in it; allocprofd
 * calls it with create=true. */
int ap_service_dir(bool create, char **ret_dir, char **err);

/* The path allocprofd listens on and clients connect to, malloc'd in *ret_path.
 *
 * Default: <ap_service_dir(create)>/allocprofd.sock (all of ap_service_dir's checks
 * and errors apply).
 *
 * Override: ALLOCPROF_DAEMON_SOCKET, when set and non-empty, is used as is (nothing is
 * created, `create` is ignored and the service directory is not consulted).  The rule
 * for it:
 *   - it must be an absolute path naming a file, not ending in '/'      (else -EINVAL);
 *   - its parent directory (stat: symbolic links followed, only the immediate parent
 *     is checked) must exist (else -ENOENT), be a directory (else -ENOTDIR), be owned
 *     by geteuid() or by root (else -EPERM), and not be writable by group or others
 *     unless it has the sticky bit like /tmp, so that no other user can replace the
 *     socket                                                               (else -EPERM).
 * Default and override alike:
 *   - the path must fit sockaddr_un.sun_path with its NUL        (else -ENAMETOOLONG);
 *   - if something already exists at the path (lstat) it must be a socket
 *     (else -ENOTSOCK) owned by geteuid() (else -EPERM): a stale socket of our own is
 *     fine, one planted by another user in a sticky directory is not. */
int ap_service_socket_path(bool create, char **ret_path, char **err);

/* systemd socket activation, the sd_listen_fds(1) protocol without libsystemd.
 *
 * Returns 0 (not activated) when LISTEN_PID is unset, names another process, or
 * LISTEN_FDS is unset.  When LISTEN_PID == getpid() and LISTEN_FDS is set, it must be
 * exactly "1" (else -EINVAL: allocprofd.socket declares one ListenStream), and fd 3
 * (SD_LISTEN_FDS_START) must be an open (else -EBADF) socket (else -ENOTSOCK) of family
 * AF_UNIX (else -EAFNOSUPPORT) and type SOCK_STREAM (else -EPROTOTYPE) in listening
 * state (else -EINVAL); it is then made FD_CLOEXEC and O_NONBLOCK, *ret_fd is set to it
 * (the caller owns it) and 1 is returned.  An unparsable LISTEN_PID is -EINVAL.  On an
 * error fd 3 is left alone (not closed).
 *
 * Whenever LISTEN_PID was set, LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are unset
 * before returning, whatever the outcome, so the programs allocprofd starts never see
 * them. */
int ap_service_listen_fds(int *ret_fd, char **err);

/* Classic double-fork daemonization with a readiness handshake.
 *
 * Before forking it prepares everything that can fail, so that those errors reach the
 * caller's terminal as a plain -errno + *err in the calling process: the service
 * directory (ap_service_dir(true)), the log file <service dir>/allocprofd.log (opened
 * O_APPEND|O_CREAT|O_NOFOLLOW, mode 0600), /dev/null, and the handshake channel (a
 * socketpair rather than a pipe, so that a dead reader gives the daemon EPIPE, not
 * SIGPIPE).  stdio buffers are flushed before forking.
 *
 * The calling process then never returns: it blocks until the daemon either
 *   - calls ap_service_ready(): it _exit(0)s;
 *   - calls ap_service_fail(msg) (or exits after writing text): it copies that text to
 *     its stderr (adding a final newline if missing) and _exit(1)s;
 *   - dies or closes the channel without writing: it prints "allocprofd: the daemon died
 *     during start-up (see <log path>)" and _exit(1)s.
 * There is no time limit: slow start-up (e.g. loading debug information) is allowed.
 * _exit, not exit: atexit handlers and stdio buffers belong to the daemon.
 *
 * The first child calls setsid() and forks again (so the daemon can never reacquire a
 * controlling terminal) and _exit(0)s.  The grandchild, the daemon, sets umask(077),
 * chdir("/"), points stdin and stdout at /dev/null and stderr at the log file (so its
 * messages survive), and returns 0 with *ready_fd set to its end of the handshake
 * channel (FD_CLOEXEC; programs the daemon starts do not inherit it).  The daemon must
 * eventually pass *ready_fd to exactly one of ap_service_ready() or ap_service_fail().
 * A failure in the children after the fork (setsid, fork, chdir, dup2) is reported
 * through the channel, i.e. on the caller's terminal.
 *
 * Call it from main() before any thread exists. */
int ap_service_daemonize(int *ready_fd, char **err);

/* The daemon is ready (listening): tells the waiting original process to exit 0, then
 * closes ready_fd.  A negative ready_fd is a no-op, so a --foreground path can pass -1.
 * Errors (the original process is gone) are ignored; never raises SIGPIPE. */
void ap_service_ready(int ready_fd);

/* The daemon cannot start: sends msg (one or more lines, no NUL; NULL or "" stands for
 * "allocprofd: start-up failed") to the waiting original process, which prints it on
 * its stderr and exits 1, then closes ready_fd.  It does not print msg itself: the
 * daemon should also write it to its stderr (the log).  A negative ready_fd is a no-op;
 * never raises SIGPIPE. */
void ap_service_fail(int ready_fd, const char *msg);
