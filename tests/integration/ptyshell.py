#!/usr/bin/env python3
"""An interactive bash on a pseudo-terminal of its own (its session, its controlling
terminal, job control on), driven by a script read from stdin, one command a line:

    send TEXT     type TEXT (Python escapes: \\r is Enter, \\x1a is ^Z, \\x03 is ^C)
    expect TEXT   wait until TEXT appears in the output after the previous match

Prints what the terminal showed (carriage returns dropped).  An `expect` that waits more
than 20 s prints "TIMEOUT waiting for TEXT" and ends the session: the terminal is hung
up, which sends SIGHUP to the shell and its jobs.

SPDX-License-Identifier: MIT OR Apache-2.0
"""
import codecs
import os
import pty
import select
import sys
import time

TIMEOUT = 20.0


def main():
    script = sys.stdin.read().splitlines()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(PS1="$ ", TERM="dumb")
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
    out = b""
    mark = 0

    def pump(until):
        nonlocal out
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return True
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return True
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the shell and everything on the terminal are gone
                return False
            if not data:
                return False
            out += data
            return True

    ok = True
    for line in script:
        cmd, _, arg = line.partition(" ")
        if cmd == "send":
            os.write(fd, codecs.decode(arg, "unicode_escape").encode("latin-1"))
        elif cmd == "expect":
            want = arg.encode()
            end = time.monotonic() + TIMEOUT
            while want not in out[mark:] and time.monotonic() < end:
                if not pump(min(end, time.monotonic() + 0.05)):
                    break
            if want not in out[mark:]:
                out += b"\nTIMEOUT waiting for " + want + b"\n"
                ok = False
                break
            mark = out.index(want, mark) + len(want)
    if ok:
        os.write(fd, b"exit\n")
        end = time.monotonic() + 5
        while time.monotonic() < end and pump(end):
            pass
    os.close(fd)  # hangs up a shell still there
    os.waitpid(pid, 0)
    sys.stdout.write(out.decode("utf-8", "replace").replace("\r", ""))


main()
