#!/usr/bin/env python3
# The reference the integration checks compare allocprof with: runs a program under
# valgrind's DHAT and reads back its totals and per-call-stack figures.
#
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Run a program under valgrind's DHAT and summarise the heap profile it writes.

DHAT (valgrind --tool=dhat, 3.15 or later) writes a JSON file whose "pps" (program
points) each hold one allocation call stack: "tb"/"tbk" total bytes/blocks, "eb"/"ebk"
bytes/blocks still live at exit, "gb"/"gbk" bytes/blocks live at the global maximum
(t-gmax), and "fs", indices into the "ftbl" table of frame strings such as

    0x1092D9: use_malloc (alloc_every.c:25)
    0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_dhat-amd64-linux.so)
    0x4853149: ???

How DHAT counts, compared with allocprof (checked on valgrind 3.19):
  * realloc: each call that returns a block counts as one more block with its new size,
    and the old block stops being live -- as in allocprof -- but DHAT files the new block
    under the call stack of the block's *first* allocation, not of the realloc call.
  * malloc(0) (and every other zero-byte request) counts as 1 byte.
  * pvalloc aborts the run, and a realloc that must fail crashes valgrind 3.19.
  * Frames of code unloaded by dlclose are "???" unless --keep-debuginfo=yes (we pass it).
  * By default valgrind calls __libc_freeres and __gnu_cxx::__freeres at exit, which frees
    glibc's and libstdc++'s private allocations (e.g. the 72704-byte exception pool); a
    process running normally never does, so we pass --run-{libc,cxx}-freeres=no.

Used as a module (run_dhat, load) or as a script:
    python3 dhat.py [--json] [--out FILE] -- PROG ARGS...
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

# Functions that allocate on behalf of their caller: folded out of a stack so that the
# first frame left is the code that asked for memory.
ALLOCATOR_FUNCTIONS = frozenset([
    "malloc", "calloc", "realloc", "reallocarray", "free", "memalign", "posix_memalign",
    "aligned_alloc", "valloc", "pvalloc",
    "__libc_malloc", "__libc_calloc", "__libc_realloc", "__libc_memalign",
    "__rust_alloc", "__rust_alloc_zeroed", "__rust_realloc", "__rust_dealloc",
    "__rdl_alloc", "__rdl_alloc_zeroed", "__rdl_realloc",
    "__rg_alloc", "__rg_alloc_zeroed", "__rg_realloc",
])
ALLOCATOR_PREFIXES = ("operator new", "operator delete", "alloc::alloc::")

_FRAME_RE = re.compile(
    r"^(?P<addr>0x[0-9A-Fa-f]+): (?P<func>.*?)"
    r"(?: \((?:in (?P<module>[^()]+)|(?P<file>[^():]+):(?P<line>\d+))\))?$")


class DhatUnavailable(Exception):
    """valgrind is not installed, or DHAT did not write a profile."""


def parse_frame(text):
    """Splits one DHAT frame string into a dict: address (int or None), function (None
    when DHAT printed ???), file, line (int or None) and module (only when DHAT gave the
    object instead of a source line)."""
    m = _FRAME_RE.match(text)
    if not m:
        return {"address": None, "function": text or None, "file": None, "line": None,
                "module": None}
    func = m.group("func")
    return {
        "address": int(m.group("addr"), 16),
        "function": None if func in ("???", "") else func,
        "file": m.group("file"),
        "line": int(m.group("line")) if m.group("line") else None,
        "module": m.group("module"),
    }


def normalize_function(name):
    """A function name without its parameter list, trailing qualifiers and Rust hash or
    crate disambiguator: "ns::Widget::build(int)" -> "ns::Widget::build",
    "rustprog::f::h0123456789abcdef" and "rustprog[5f2ab3c1]::f" -> "rustprog::f".
    Templates and return types are kept."""
    if not name:
        return name
    name = name.strip()
    for suffix in (" const", " volatile", " &&", " &", " noexcept"):
        if name.endswith(suffix):
            name = name[: -len(suffix)].rstrip()
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            c = name[i]
            if c == ")":
                depth += 1
            elif c == "(":
                depth -= 1
                if depth == 0:
                    # "{lambda()#1}" and "(anonymous namespace)" are not parameter lists
                    if i > 0 and not name[:i].endswith(("anonymous namespace", "{lambda")):
                        name = name[:i]
                    break
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    # v0 mangling's crate disambiguators, when a demangler prints them: crate[1a2b3c4d]::f
    name = re.sub(r"(?<=\w)\[[0-9a-f]{4,}\](?=::)", "", name)
    return name


def is_allocator_frame(frame):
    """True for frames of the allocator itself: valgrind's replacement functions, the
    malloc family, operator new/delete and Rust's global-allocator shims."""
    module = frame.get("module") or ""
    if "/vgpreload_" in module or os.path.basename(module).startswith("vgpreload_"):
        return True
    func = normalize_function(frame.get("function"))
    if not func:
        return False
    return func in ALLOCATOR_FUNCTIONS or func.startswith(ALLOCATOR_PREFIXES)


class DhatProfile:
    """A parsed DHAT profile.

    totals: dict with blocks, bytes, exit_blocks, exit_bytes, gmax_blocks, gmax_bytes,
            frees (= blocks - exit_blocks: every block released, by free or realloc).
    sites:  list of dicts, one per DHAT program point: frames (allocator frames folded
            out, innermost first), all_frames (as DHAT gave them), blocks, bytes,
            exit_blocks, exit_bytes, frees.
    returncode: how the program ended (negative: killed by that signal), when run here.
    """

    def __init__(self, data, returncode=None):
        self.raw = data
        self.returncode = returncode
        ftbl = data.get("ftbl", [])
        self.sites = []
        totals = dict.fromkeys(
            ["blocks", "bytes", "exit_blocks", "exit_bytes", "gmax_blocks", "gmax_bytes"], 0)
        for pp in data.get("pps", []):
            frames = [parse_frame(ftbl[i]) for i in pp.get("fs", []) if 0 <= i < len(ftbl)]
            folded = list(frames)
            while folded and is_allocator_frame(folded[0]):
                folded.pop(0)
            site = {
                "all_frames": frames,
                "frames": folded,
                "blocks": pp.get("tbk", 0),
                "bytes": pp.get("tb", 0),
                "exit_blocks": pp.get("ebk", 0),
                "exit_bytes": pp.get("eb", 0),
            }
            site["frees"] = site["blocks"] - site["exit_blocks"]
            self.sites.append(site)
            totals["blocks"] += site["blocks"]
            totals["bytes"] += site["bytes"]
            totals["exit_blocks"] += site["exit_blocks"]
            totals["exit_bytes"] += site["exit_bytes"]
            totals["gmax_blocks"] += pp.get("gbk", 0)
            totals["gmax_bytes"] += pp.get("gb", 0)
        totals["frees"] = totals["blocks"] - totals["exit_blocks"]
        self.totals = totals

    def innermost_function(self, site):
        """Name of the first non-allocator frame (normalized), "???" when unknown."""
        for frame in site["frames"]:
            return normalize_function(frame["function"]) or "???"
        return "???"

    def by_function(self):
        """Per-site figures summed by innermost non-allocator function name."""
        return self.by_key(None)

    def by_key(self, keys):
        """Sums the sites by key.  keys=None: a site's key is its innermost non-allocator
        function.  Otherwise keys is an iterable of function names and a site's key is the
        first of them (innermost first) that any of its frames matches (see name_matches);
        sites matching none are summed under None.  Returns {key: {"blocks", "bytes",
        "exit_blocks", "exit_bytes", "frees", "sites"}}."""
        out = {}
        keys = list(keys) if keys is not None else None
        for site in self.sites:
            if keys is None:
                key = self.innermost_function(site)
            else:
                key = None
                for frame in site["frames"]:
                    key = next((k for k in keys if name_matches(k, frame["function"])), None)
                    if key is not None:
                        break
            agg = out.setdefault(key, dict.fromkeys(
                ["blocks", "bytes", "exit_blocks", "exit_bytes", "frees", "sites"], 0))
            for field in ("blocks", "bytes", "exit_blocks", "exit_bytes", "frees"):
                agg[field] += site[field]
            agg["sites"] += 1
        return out


def name_matches(expected, actual):
    """True when function name `actual` (as a profiler printed it) names `expected`:
    equal after normalize_function(), or equal once one side's leading namespaces are
    dropped at a "::" boundary ("rustprog::make_vec" vs "make_vec")."""
    if not expected or not actual:
        return False
    e, a = normalize_function(expected), normalize_function(actual)
    if e == a:
        return True
    return a.endswith("::" + e) or e.endswith("::" + a)


def load(path, returncode=None):
    """Parses a DHAT output file.  Raises DhatUnavailable if it is missing or invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DhatUnavailable(f"cannot read DHAT output {path}: {e}") from e
    return DhatProfile(data, returncode)


def valgrind_path():
    return shutil.which("valgrind")


def run_dhat(argv, *, stdin_data=None, env=None, cwd=None, out_file=None, timeout=600):
    """Runs argv under DHAT and returns a DhatProfile (its returncode is the program's:
    valgrind passes the exit status through and dies by the program's fatal signal).
    stdin_data: bytes for standard input (default: /dev/null).  The program's stdout and
    stderr are captured and kept as .stdout/.stderr; valgrind's own messages go to a log
    file.  Raises DhatUnavailable when valgrind is missing or writes no profile."""
    valgrind = valgrind_path()
    if not valgrind:
        raise DhatUnavailable("valgrind not found in PATH")
    with tempfile.TemporaryDirectory(prefix="ap-dhat-") as tmp:
        out = out_file or os.path.join(tmp, "dhat.out")
        log = os.path.join(tmp, "valgrind.log")
        cmd = [valgrind, "--tool=dhat", f"--dhat-out-file={out}", f"--log-file={log}",
               "--run-libc-freeres=no", "--run-cxx-freeres=no", "--keep-debuginfo=yes",
               "--"] + list(argv)
        try:
            proc = subprocess.run(cmd, input=stdin_data if stdin_data is not None else b"",
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  cwd=cwd, timeout=timeout, preexec_fn=_no_core_dumps)
        except subprocess.TimeoutExpired as e:
            raise DhatUnavailable(f"valgrind timed out after {timeout}s") from e
        if not os.path.exists(out):
            try:
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
            except OSError:
                tail = ""
            raise DhatUnavailable(f"DHAT wrote no profile (exit {proc.returncode}):\n{tail}")
        profile = load(out, proc.returncode)
        profile.stdout = proc.stdout
        profile.stderr = proc.stderr
        return profile


def _no_core_dumps():
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def describe_returncode(rc):
    if rc is None:
        return "unknown"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def main():
    ap = argparse.ArgumentParser(
        description="Run a program under valgrind DHAT and print its allocation totals and "
                    "per-function figures (innermost non-allocator frame).")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--out", help="keep DHAT's output file here")
    ap.add_argument("--load", metavar="FILE", help="read an existing dhat.out file instead")
    ap.add_argument("argv", nargs="*", help="program and arguments (after --)")
    args = ap.parse_args()
    try:
        if args.load:
            prof = load(args.load)
        elif args.argv:
            prof = run_dhat(args.argv, out_file=args.out)
        else:
            ap.error("give a program to run, or --load FILE")
    except DhatUnavailable as e:
        print(f"dhat.py: {e}", file=sys.stderr)
        return 77
    per_function = prof.by_function()
    if args.json:
        json.dump({"returncode": prof.returncode, "totals": prof.totals,
                   "functions": per_function}, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    t = prof.totals
    print(f"program: {describe_returncode(prof.returncode)}")
    print(f"total:   {t['blocks']} blocks, {t['bytes']} bytes ({t['frees']} freed)")
    print(f"at exit: {t['exit_blocks']} blocks, {t['exit_bytes']} bytes")
    print(f"t-gmax:  {t['gmax_blocks']} blocks, {t['gmax_bytes']} bytes")
    print(f"{'blocks':>8} {'bytes':>10} {'freed':>7} {'at exit':>8} {'bytes':>8} {'sites':>5}  function")
    for name, s in sorted(per_function.items(), key=lambda kv: (-kv[1]["bytes"], str(kv[0]))):
        print(f"{s['blocks']:>8} {s['bytes']:>10} {s['frees']:>7} {s['exit_blocks']:>8} "
              f"{s['exit_bytes']:>8} {s['sites']:>5}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
