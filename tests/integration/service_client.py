#!/usr/bin/env python3
"""A raw client of the collector's control protocol (common/allocprof/protocol.h), for
tests/integration/test-service.sh: it says what the CLI never would.  Every subcommand
prints one "key value" line per finding, for the shell script to compare.

  service_client.py call SOCK JSON [memfd|pipe]   one request; prints "response JSON"
  service_client.py abandon SOCK JSON [memfd]     one request, then the connection closed
                                                  without waiting for the answer (a
                                                  client that gave up); prints "sent"
  service_client.py connect SOCK                  "connect ok" or "connect EACCES"...
  service_client.py denied SOCK PID               each command as another user: its
                                                  code and whether the connection closed
  service_client.py hostile SOCK PID              garbage, oversize, partial, stalled and
                                                  binary clients; ps timing meanwhile
  service_client.py summary AP FUNCS FILE...      per profile: pid, exit status, totals and
                                                  the sites whose frames[0] is in FUNCS
  service_client.py fingerprint AP FILE           a profile without its timing and process
                                                  fields, as one canonical JSON line
  service_client.py fake-ps SOCK PID              a stand-in collector listening on SOCK
                                                  that answers hello and ps (one process,
                                                  PID, its allocations one more at each
                                                  ps); "ready" once it listens, and when
                                                  SIGTERM ends it "ps_requests CLIENT N"
                                                  for each client process that sent ps

Uses only the standard library, so that the system python3 of another user runs it.

SPDX-License-Identifier: MIT OR Apache-2.0
"""
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

REQUEST_MAX = 64 << 10
PARTIAL_S = 5.0
STALL_S = 10.0


def connect(path, timeout=10.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def fd_for(kind):
    """A descriptor to pass with a request, and what to close afterwards."""
    if kind == "memfd":
        fd = os.memfd_create("service-client", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        return fd, [fd]
    if kind == "pipe":
        r, w = os.pipe()
        return w, [r, w]
    return None, []


def send(s, data, fd=None):
    if fd is None:
        s.sendall(data)
    else:
        n = socket.send_fds(s, [data], [fd])
        if n < len(data):
            s.sendall(data[n:])


def read_line(s, timeout=10.0):
    """One line from s; None at EOF or timeout."""
    buf = b""
    s.settimeout(timeout)
    try:
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except (socket.timeout, ConnectionResetError):
        return None
    return buf


def closed_within(s, timeout):
    """True if the peer closes s within timeout (data before the EOF is skipped)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            s.settimeout(left)
            if not s.recv(65536):
                return True
    except socket.timeout:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def req(cmd, **kw):
    d = {"v": 1, "cmd": cmd}
    d.update(kw)
    return (json.dumps(d) + "\n").encode()


def code_of(line):
    if line is None:
        return "EOF"
    try:
        m = json.loads(line)
    except ValueError:
        return "unparsable"
    if m.get("ok") is True:
        return "ok"
    return m.get("code", "no-code")


def send_request(path, text, kind):
    """Connects, sends one request line (with a descriptor of `kind`), returns the socket."""
    s = connect(path)
    fd, to_close = fd_for(kind)
    send(s, text.encode() + b"\n", fd)
    for f in to_close:
        os.close(f)
    return s


def cmd_call(path, text, kind=None):
    line = read_line(send_request(path, text, kind))
    print("response", line.decode().strip() if line else "EOF")


def cmd_abandon(path, text, kind=None):
    send_request(path, text, kind).close()
    print("sent")


def cmd_connect(path):
    try:
        connect(path).close()
        print("connect ok")
    except OSError as e:
        print("connect", errno.errorcode.get(e.errno, str(e.errno)))


def cmd_denied(path, pid):
    pid = int(pid)
    for name, data, kind in (
        ("hello", req("hello"), None),
        ("ps", req("ps"), None),
        ("snapshot", req("snapshot", pid=pid), "memfd"),
        ("attach", req("attach", pid=pid, sample=1024), None),
        ("detach", req("detach", pid=pid), None),
    ):
        s = connect(path)
        fd, to_close = fd_for(kind)
        try:
            send(s, data, fd)
        except OSError:
            pass  # refused before it read everything: the answer is still there
        for f in to_close:
            os.close(f)
        line = read_line(s)
        print(name, code_of(line), "closed" if closed_within(s, 2.0) else "open")
        s.close()


def cmd_hostile(path, pid):
    pid = int(pid)
    out = {}

    # A client that asks for a lot and never reads: cut off after STALL_S.  Started
    # first, so that it runs while the others do.
    def stalled():
        s = connect(path)
        n = 20000
        t0 = time.monotonic()
        try:
            s.sendall(req("hello") * n)
        except OSError:
            pass
        time.sleep(STALL_S + 2.5 - (time.monotonic() - t0))
        got = 0
        eof = False
        s.settimeout(3.0)
        try:
            buf = b""
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    eof = True
                    break
                buf += chunk
            got = buf.count(b"\n")
        except socket.timeout:
            got = -1
        except ConnectionResetError:
            eof = True
        out["stall"] = "closed" if eof and 0 <= got < n else "open(%d of %d answers)" % (got, n)

    th_stall = threading.Thread(target=stalled)
    th_stall.start()

    # "{" and then silence: dropped after PARTIAL_S, others served meanwhile.
    partial = connect(path)
    partial.sendall(b"{")
    t0 = time.monotonic()
    time.sleep(0.3)
    t1 = time.monotonic()
    s = connect(path)
    s.sendall(req("ps"))
    line = read_line(s)
    out["ps_during_partial"] = code_of(line)
    out["ps_during_partial_ms"] = int((time.monotonic() - t1) * 1000)
    s.close()

    # Garbage that starts like a control message: an error, then the door.
    s = connect(path)
    s.sendall(b"{this is not json\n")
    out["garbage"] = code_of(read_line(s))
    out["garbage_then"] = "closed" if closed_within(s, 2.0) else "open"
    s.close()

    # Valid JSON of the wrong shape, wrong version, unknown command: errors, and the
    # connection stays usable.
    s = connect(path)
    s.sendall(b'{"v":1,"cmd":42}\n')
    out["cmd_not_string"] = code_of(read_line(s))
    s.sendall(b'{"v":1,"cmd":"hello","cmd":"ps"}\n')
    out["duplicate_key"] = code_of(read_line(s))
    s.close()
    s = connect(path)
    s.sendall(b'{"v":2,"cmd":"hello"}\n')
    out["version2"] = code_of(read_line(s))
    s.sendall(b'{"cmd":"hello"}\n')
    out["no_version"] = code_of(read_line(s))
    s.sendall(b'{"v":"1","cmd":"hello"}\n')
    out["version_not_integer"] = code_of(read_line(s))
    s.sendall(req("bogus"))
    out["unknown_cmd"] = code_of(read_line(s))
    s.sendall(req("snapshot", pid=pid))
    out["snapshot_no_fd"] = code_of(read_line(s))
    r, w = os.pipe()
    send(s, req("snapshot", pid=pid), w)
    os.close(r)
    os.close(w)
    out["snapshot_pipe_fd"] = code_of(read_line(s))
    s.sendall(req("hello"))
    out["same_connection_after_errors"] = code_of(read_line(s))
    s.close()

    # Just under the limit is a request like any other; over it, an error and the door.
    s = connect(path)
    pad = "x" * (REQUEST_MAX - 200)
    s.sendall(req("hello", pad=pad))
    out["request_60k"] = code_of(read_line(s))
    s.close()
    s = connect(path)
    try:
        s.sendall(b"{" + b"x" * 100000)
    except OSError:
        pass
    out["oversize"] = code_of(read_line(s))
    out["oversize_then"] = "closed" if closed_within(s, 2.0) else "open"
    s.close()

    # Binary junk that is no agent hello (no descriptor, a pipe, text): dropped.
    for name, data, kind in (
        ("junk_short", b"\x00\x01\x02junk", None),
        ("junk_4k", bytes(range(256)) * 16, None),
        ("junk_pipe_fd", b"\x7fELF" + b"\x00" * 200, "pipe"),
        ("junk_text", b"hello allocprofd\n", None),
    ):
        s = connect(path)
        fd, to_close = fd_for(kind)
        try:
            send(s, data, fd)
        except OSError:
            pass
        for f in to_close:
            os.close(f)
        out[name] = "dropped" if closed_within(s, 2.0) else "kept"
        s.close()

    # Back to the silent one.
    out["partial"] = "closed" if closed_within(partial, PARTIAL_S + 3.0) else "open"
    out["partial_closed_after_s"] = "%.1f" % (time.monotonic() - t0)
    partial.close()

    th_stall.join()
    s = connect(path)
    s.sendall(req("hello"))
    out["hello_after_all"] = code_of(read_line(s))
    s.close()
    for k, v in out.items():
        print(k, v)


def report(ap, path):
    out = subprocess.run([ap, "report", path, "--json"], stdout=subprocess.PIPE, check=True)
    return json.loads(out.stdout)


# Without the peak figures: in a multi-threaded program they follow the timestamps.
SITE_KEYS = ("allocations", "bytes", "frees", "freed_bytes", "leaked_blocks", "leaked_bytes",
             "temporary", "reallocs")
TIMING = ("peak_t_ns", "peak_bytes", "peak_blocks")


def cmd_summary(ap, funcs, files):
    """pid exit totals(allocations/frees/leaked_blocks/dropped/unmatched) then, for each
    function, allocations/bytes/frees/leaked_blocks/leaked_bytes of the sites it opens."""
    funcs = funcs.split(",")
    for path in files:
        d = report(ap, path)
        t = d["totals"]
        line = [str(d["process"]["pid"]), str(d["process"]["exit_status"]),
                "totals:%d/%d/%d/%d/%d" % (t["allocations"], t["frees"], t["leaked_blocks"],
                                           t["dropped_events"], t["unmatched_frees"])]
        for fn in funcs:
            agg = [0] * 5
            for site in d["sites"]:
                if site["frames"] and site["frames"][0]["function"] == fn:
                    for i, k in enumerate(("allocations", "bytes", "frees", "leaked_blocks",
                                           "leaked_bytes")):
                        agg[i] += site[k]
            line.append("%s:%s" % (fn, "/".join(map(str, agg))))
        print(" ".join(line))


def cmd_fingerprint(ap, path):
    d = report(ap, path)
    totals = {k: v for k, v in d["totals"].items() if k not in TIMING}
    # sorted by their JSON text: frames may have no function or file (None)
    sites = sorted(
        ([[[f["function"], f["file"], f["line"], f["module"], f["address"], f["inlined"]]
           for f in s["frames"]], [s[k] for k in SITE_KEYS]] for s in d["sites"]),
        key=json.dumps)
    modules = sorted(([m["path"], m["build_id"], m["allocations"], m["bytes"],
                       m["leaked_blocks"], m["leaked_bytes"]] for m in d["modules"]),
                     key=json.dumps)
    print(json.dumps({"exe": os.path.basename(d["process"]["exe"] or ""), "mode": d["mode"],
                      "totals": totals, "sites": sites, "modules": modules,
                      "histogram": d["histogram"]}, sort_keys=True))


class Stop(Exception):
    pass


def cmd_fake_ps(path, pid):
    def stop(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    # By client: any `allocprof ps` on the machine asks every collector it finds.
    requests = {}
    print("ready", flush=True)
    try:
        while True:
            c, _ = srv.accept()
            client = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      struct.calcsize("3i")))[0]
            with c:
                while True:
                    line = read_line(c, 5.0)
                    if line is None:
                        break
                    cmd = json.loads(line).get("cmd")
                    if cmd == "ps":
                        # A live process: its figures change between two requests.
                        n = requests[client] = requests.get(client, 0) + 1
                        ans = {"processes": [{
                            "pid": int(pid), "ppid": 1, "uid": os.getuid(), "command": "fake",
                            "mode": "full", "sample_interval": 0, "state": "recording",
                            "allocations": n, "live_bytes": 100 * n,
                            "threads": 1, "run_session": False}]}
                    elif cmd == "hello":
                        ans = {"version": "fake", "protocol": 1, "pid": os.getpid(),
                               "uid": os.getuid(), "socket": path}
                    else:
                        ans = {"ok": False, "code": "unknown-command", "error": "fake: ps only"}
                    ans = dict({"v": 1, "ok": True}, **ans)
                    c.sendall((json.dumps(ans) + "\n").encode())
    except Stop:
        pass
    finally:
        srv.close()
        os.unlink(path)
        for client, n in requests.items():
            print("ps_requests", client, n, flush=True)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, path = argv[1], argv[2]
    if cmd == "call":
        cmd_call(path, argv[3], argv[4] if len(argv) > 4 else None)
    elif cmd == "abandon":
        cmd_abandon(path, argv[3], argv[4] if len(argv) > 4 else None)
    elif cmd == "connect":
        cmd_connect(path)
    elif cmd == "denied":
        cmd_denied(path, argv[3])
    elif cmd == "hostile":
        cmd_hostile(path, argv[3])
    elif cmd == "summary":
        cmd_summary(path, argv[3], argv[4:])
    elif cmd == "fingerprint":
        cmd_fingerprint(path, argv[3])
    elif cmd == "fake-ps":
        cmd_fake_ps(path, argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
