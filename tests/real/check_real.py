#!/usr/bin/python3
# "Proven on real programs": profiles Debian programs doing real work on inputs made here,
# once with allocprof and once under valgrind's DHAT, and compares the two profiles.
#
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Cross-check allocprof against valgrind's DHAT on real programs.

    check_real.py ALLOCPROF CASE [--cxx-bin PATH] [--keep DIR] [-v]

CASE is one of: python, sqlite, gcc, git, cxx.  Each case makes its input in a fresh
directory (a Python script, an SQL script, a generated C file, a git repository made with
fast-import, or the arguments of tests/real/cxx_containers.cc), then runs the same command
line twice, with the same working directory, standard input and environment:

    ALLOCPROF run -q -o DIR/ap/<name>.approf -- PROG ARGS     (then `report --json`)
    valgrind --tool=dhat --run-libc-freeres=no --run-cxx-freeres=no ... PROG ARGS

and checks: both runs exit 0 with the same standard output (the program did the same
work); allocprof dropped, rejected and mismatched nothing; the totals (allocations, bytes,
frees, leaked blocks and bytes, peak) agree with DHAT's as tightly as the case allows;
and the hottest call sites name the program's own functions.

Exit status: 0 all checks passed, 1 a check failed, 77 skipped (the program, valgrind, or
the C++ test program is missing).

Why the two runs can differ, and what this script does about it
----------------------------------------------------------------
Valgrind runs the program on a synthetic CPU, in the same process, with its own loader
and address-space manager.  What the program can observe of that, and that changes what
it allocates (each found by comparing the two profiles site by site):

1. Environment.  Debian's /usr/bin/valgrind is a shell script that exports
   LD_LIBRARY_PATH (adding /usr/lib/debug), GLIBCPP_FORCE_NEW=1, GLIBCXX_FORCE_NEW=1 and
   (being a shell) PWD, then valgrind sets LD_PRELOAD to its two preload libraries;
   `allocprof run` sets LD_PRELOAD to its agent, ALLOCPROF_SOCKET and (in newer
   versions) ALLOCPROF_UNWIND.  Programs copy their environment: python builds
   os.environ, a dict resized one step later with two more variables (+1 allocation,
   +2200 bytes), and with PYTHONMALLOC=malloc one block per value, as long as the value;
   git calls setenv(), whose environ array is realloc'd to a size that depends on the
   number of variables.  So the script starts from a fixed environment, asks each tool
   which variables it adds (by running /usr/bin/env under each), gives each run the
   other tool's extra variables too (a placeholder of the same length where the value
   means something only to the other tool) and pads the shorter LD_PRELOAD with spaces
   (ld.so skips empty entries).  Both runs then see the same variable names with values
   of the same lengths; matched_envs checks it.
2. Standard input.  Both runs read a pipe (dhat.run_dhat's way): python's io module
   asks a pipe for its position and allocates for the OSError it gets, a file would
   not (1 allocation of 52 bytes).
3. Address layout.  Valgrind places the stack, mmap areas, the heap and thread-local
   storage itself, low in the address space; natively they are high, and randomized
   (ASLR).  A program whose allocations depend on addresses cannot match exactly:
   cc1's do, in a few places that change from one native run to the next (see
   gcc_address_dependent): those call sites are shown and left out of the exact
   comparison.  Python integers holding an address need one more 30-bit digit
   natively (4 bytes): with PYTHONMALLOC=malloc that shows in the bytes (the python
   case).
4. Stack and auxiliary vector contents differ too (valgrind builds the initial stack);
   none of the programs here allocates differently because of them (the exact matches
   show it).
5. DHAT files a block made by realloc under the call stack of the block's *first*
   allocation, allocprof under the realloc call.  Totals are unaffected; per-function
   figures are compared for groups of functions that contain the whole realloc chain
   (check_functions).
6. DHAT counts a zero-byte request as 1 byte, allocprof as 0.  None of these programs
   makes one (it would show as a bytes difference equal to the number of such calls).
7. DHAT keeps 12 frames of a stack unless told otherwise: it is run with
   --num-callers=64 so that the per-function sums see the same stacks.
8. Signal dispositions.  python installs its SIGINT handler only if SIGINT is not
   ignored when it starts (one allocation of 68 bytes); a shell starts background jobs
   with SIGINT ignored.  Every run here starts with SIGINT, SIGTERM, SIGHUP and SIGQUIT
   in their default state.  (The python case also checks that allocprof passes an
   ignored SIGINT or SIGHUP on to the program, as valgrind and exec do.)
"""

import argparse
import collections
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "integration"))
import dhat  # noqa: E402  (tests/integration/dhat.py: DHAT runner and parser)

SKIP = 77
RUN_TIMEOUT = 600
FIELDS = ("allocations", "bytes", "frees", "leaked_blocks", "leaked_bytes")
DHAT_FIELD = {"allocations": "blocks", "bytes": "bytes", "frees": "frees",
              "leaked_blocks": "exit_blocks", "leaked_bytes": "exit_bytes",
              "peak_bytes": "gmax_bytes"}


class Skip(Exception):
    pass


class Checker:
    def __init__(self, verbose):
        self.verbose = verbose
        self.checks = 0
        self.failures = 0
        self.prefix = ""

    def fail(self, text):
        self.failures += 1
        print(f"FAIL: {self.prefix}{text}")

    def ok(self, cond, text):
        self.checks += 1
        if not cond:
            self.fail(text)
        return cond

    def say(self, text=""):
        print(f"{self.prefix}{text}" if text else "")

    def info(self, text):
        if self.verbose:
            print(f"  {self.prefix}{text}")


# ---- names ----

def norm(name):
    """A function name as both tools can agree on it: no parameter list (dhat.py's
    normalize_function) and no ABI tag ("f[abi:cxx11]" -> "f")."""
    if not name:
        return name
    return re.sub(r"\[abi:[^\]]*\]", "", dhat.normalize_function(name))


def frame_names(frames, depth):
    return [norm(f.get("function")) for f in frames[:depth]]


# ---- the runs ----

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def child_setup(ignore=()):
    """Runs in every child before exec: no core files, and the signals that stop a
    program in their default state (a shell starts background jobs with SIGINT
    ignored, and python allocates differently then: point 8 of the module docstring),
    except those in `ignore`, which are ignored."""
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN if sig in ignore else signal.SIG_DFL)


def read_env0(data):
    env = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode()] = v.decode("utf-8", "replace")
    return env


def probe_env(prefix, env, cwd):
    """The environment /usr/bin/env sees when started through `prefix`."""
    proc = subprocess.run(prefix + ["/usr/bin/env", "-0"], env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120, preexec_fn=child_setup)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(prefix)} /usr/bin/env: exit {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-500:]}")
    return read_env0(proc.stdout)


def matched_envs(ck, allocprof, valgrind, base, work):
    """(env for the allocprof run, env for the DHAT run): base plus, in each, the
    variables the other tool adds, so that the program sees the same names; and
    LD_PRELOAD padded with spaces (an empty entry to ld.so) on the shorter side, so that
    every value has the same length too (point 1 of the module docstring)."""
    probe_ap = [allocprof, "run", "-q", "-o", os.path.join(work, "probe.approf"), "--"]
    probe_vg = [valgrind, "--tool=dhat", "--dhat-out-file=/dev/null", "-q"]
    ap_seen = probe_env(probe_ap, base, work)
    vg_seen = probe_env(probe_vg, base, work)
    ap_added = {k: v for k, v in ap_seen.items() if base.get(k) != v}
    vg_added = {k: v for k, v in vg_seen.items() if base.get(k) != v}
    ck.info(f"allocprof adds {sorted(ap_added)}; valgrind adds {sorted(vg_added)}")
    ap_env = dict(base)
    vg_env = dict(base)
    for k, v in vg_added.items():
        if k not in ap_added:
            ap_env[k] = v
    for k, v in ap_added.items():
        if k not in vg_added:
            # Nothing reads it in the DHAT run; only its presence and length matter.
            vg_env[k] = "x" * len(v)
    # Both tools put their libraries in front of a non-empty LD_PRELOAD with a colon:
    # start both from one space, then lengthen the shorter side.
    if "LD_PRELOAD" not in base:
        ap_env["LD_PRELOAD"] = vg_env["LD_PRELOAD"] = " "
    for _ in range(2):
        ap_seen = probe_env(probe_ap, ap_env, work)
        vg_seen = probe_env(probe_vg, vg_env, work)
        pad = len(vg_seen.get("LD_PRELOAD", "")) - len(ap_seen.get("LD_PRELOAD", ""))
        if pad == 0:
            break
        env = ap_env if pad > 0 else vg_env
        env["LD_PRELOAD"] = env.get("LD_PRELOAD", "") + " " * abs(pad)
    ck.ok(sorted(ap_seen) == sorted(vg_seen),
          f"the runs do not see the same variables: allocprof {sorted(ap_seen)}, "
          f"DHAT {sorted(vg_seen)}")
    lengths = {k for k in ap_seen if len(ap_seen[k]) != len(vg_seen.get(k, ""))}
    ck.ok(not lengths, f"environment values of different lengths: {sorted(lengths)}")
    ck.info("values that differ: "
            + ", ".join(k for k in sorted(ap_seen) if ap_seen[k] != vg_seen.get(k)))
    return ap_env, vg_env


def run_allocprof(allocprof, argv, env, cwd, stdin_data, outdir, name):
    """Standard input is a pipe, as dhat.run_dhat gives it: programs treat a pipe and a
    file differently (python's io module asks a pipe for its position and gets an
    OSError it allocates for; that alone is one allocation of 52 bytes)."""
    os.makedirs(outdir, exist_ok=True)
    profile = os.path.join(outdir, f"{name}.approf")
    proc = subprocess.run([allocprof, "run", "-q", "-o", profile, "--"] + argv,
                          env=env, cwd=cwd, input=stdin_data, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=RUN_TIMEOUT,
                          preexec_fn=child_setup)
    return proc, profile


def report_json(allocprof, profile):
    proc = subprocess.run([allocprof, "report", profile, "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=RUN_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"allocprof report {profile}: exit {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return json.loads(proc.stdout)


def run_dhat(valgrind, argv, env, cwd, stdin_data, outdir, children):
    """Runs argv under DHAT with the options of dhat.run_dhat, plus --num-callers=64 (the
    default, 12, cuts the stacks the per-function comparison looks into) and, with
    children, --trace-children=yes: one DHAT file per process image.  Returns
    (CompletedProcess, [(DHAT's "cmd", path)])."""
    os.makedirs(outdir, exist_ok=True)
    cmd = [valgrind, "--tool=dhat", f"--dhat-out-file={outdir}/dhat.%p",
           f"--log-file={outdir}/valgrind.%p.log", "--run-libc-freeres=no",
           "--run-cxx-freeres=no", "--keep-debuginfo=yes", "--num-callers=64"]
    if children:
        cmd.append("--trace-children=yes")
    proc = subprocess.run(cmd + ["--"] + argv, env=env, cwd=cwd, input=stdin_data,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=RUN_TIMEOUT, preexec_fn=child_setup)
    outs = []
    for path in sorted(glob.glob(os.path.join(outdir, "dhat.*"))):
        try:
            with open(path, encoding="utf-8") as f:
                outs.append((json.load(f).get("cmd", ""), path))
        except (OSError, ValueError):
            pass
    if not outs:
        logs = ""
        for log in glob.glob(os.path.join(outdir, "valgrind.*.log")):
            with open(log, errors="replace") as f:
                logs += f.read()[-1500:]
        raise dhat.DhatUnavailable(f"DHAT wrote no profile (exit {proc.returncode}):\n"
                                   f"{logs}")
    return proc, outs


# ---- figures ----

def ap_fields(site_or_totals):
    return {f: site_or_totals.get(f, 0) for f in FIELDS}


def dhat_fields(d):
    return {f: d[DHAT_FIELD[f]] for f in FIELDS}


def sum_fields(rows):
    out = dict.fromkeys(FIELDS, 0)
    for r in rows:
        for f in FIELDS:
            out[f] += r[f]
    return out


def pct(a, b):
    if a == b:
        return "0"
    if not b:
        return "inf"
    return f"{100.0 * (a - b) / b:+.4f}%"


def print_table(ck, title, ap, dh, fields):
    ck.say(title)
    ck.say(f"    {'':<14} {'allocprof':>14} {'DHAT':>14} {'allocprof-DHAT':>15} {'rel':>10}")
    for f in fields:
        a, d = ap[f], dh[f]
        ck.say(f"    {f:<14} {a:>14} {d:>14} {a - d:>15} {pct(a, d):>10}")


def within(a, b, rel):
    return abs(a - b) <= rel * max(abs(b), 1)


# ---- the comparison ----

class Profiles:
    """One run of each tool: allocprof's JSON report, DHAT's parsed profile, and DHAT's
    sites in the report's terms (FIELDS, "frames", and "peak_bytes": bytes live at the
    global peak)."""

    def __init__(self, report, dprof):
        self.report = report
        self.dhat = dprof
        pps = dprof.raw.get("pps", [])
        self.dhat_sites = []
        for i, s in enumerate(dprof.sites):
            self.dhat_sites.append({
                "allocations": s["blocks"], "bytes": s["bytes"], "frees": s["frees"],
                "leaked_blocks": s["exit_blocks"], "leaked_bytes": s["exit_bytes"],
                "peak_bytes": pps[i].get("gb", 0) if i < len(pps) else 0,
                "frames": s["frames"]})


def compare_totals(ck, case, prof):
    t = prof.report["totals"]
    ap = ap_fields(t)
    ap["peak_bytes"] = t["peak_bytes"]
    dh = dhat_fields(prof.dhat.totals)
    dh["peak_bytes"] = prof.dhat.totals["gmax_bytes"]
    print_table(ck, "totals:", ap, dh, FIELDS + ("peak_bytes",))

    ck.ok(t.get("dropped_events") == 0, f"dropped_events = {t.get('dropped_events')}")
    ck.ok(t.get("invalid_records") == 0, f"invalid_records = {t.get('invalid_records')}")
    ck.ok(t.get("unmatched_frees") == 0, f"unmatched_frees = {t.get('unmatched_frees')}")
    ck.ok(t["allocations"] - t["frees"] == t["leaked_blocks"],
          "allocprof: allocations - frees != leaked_blocks")

    if not case.excluded:
        for f in FIELDS:
            if f in case.exact_fields:
                ck.ok(ap[f] == dh[f], f"totals.{f}: allocprof {ap[f]}, DHAT {dh[f]} "
                      f"(expected equal: same program, same input, same environment)")
            else:
                ck.ok(within(ap[f], dh[f], 0.001),
                      f"totals.{f}: allocprof {ap[f]}, DHAT {dh[f]}: differ by more "
                      f"than 0.1%")
        tol = case.peak_tolerance
        ck.ok(within(ap["peak_bytes"], dh["peak_bytes"], tol),
              f"totals.peak_bytes: allocprof {ap['peak_bytes']}, DHAT {dh['peak_bytes']} "
              f"(tolerance {tol:.2%})")
        return

    # Address-dependent sites (point 3 of the module docstring): counts within 0.1%
    # as they are, and every figure equal once those sites are left out.
    for f in ("allocations", "bytes", "frees", "leaked_blocks"):
        ck.ok(within(ap[f], dh[f], 0.001),
              f"totals.{f}: allocprof {ap[f]}, DHAT {dh[f]}: differ by more than 0.1%")
    kept = {"allocprof": [], "DHAT": []}
    left = {"allocprof": collections.defaultdict(list), "DHAT": collections.defaultdict(list)}
    for label, sites in (("allocprof", prof.report["sites"]), ("DHAT", prof.dhat_sites)):
        for site in sites:
            why = case.excluded(site["frames"], site)
            (left[label][why] if why else kept[label]).append(site)
    for why in sorted(set(left["allocprof"]) | set(left["DHAT"])):
        print_table(ck, f"left out: {why}:", sum_fields(left["allocprof"].get(why, [])),
                    sum_fields(left["DHAT"].get(why, [])), FIELDS)
    a, d = sum_fields(kept["allocprof"]), sum_fields(kept["DHAT"])
    print_table(ck, "totals without them:", a, d, FIELDS)
    for f in FIELDS:
        ck.ok(a[f] == d[f], f"totals without address-dependent sites: {f}: allocprof "
              f"{a[f]}, DHAT {d[f]} (expected equal)")
    # Peak: each tool's peak less the left-out sites' share of it.
    pa = ap["peak_bytes"] - sum(s["peak_bytes"] for v in left["allocprof"].values()
                                for s in v)
    pd = dh["peak_bytes"] - sum(s["peak_bytes"] for v in left["DHAT"].values() for s in v)
    ck.say(f"peak without them: allocprof {pa}, DHAT {pd} ({pct(pa, pd)})")
    ck.ok(within(pa, pd, case.peak_tolerance),
          f"peak without address-dependent sites: allocprof {pa}, DHAT {pd} "
          f"(tolerance {case.peak_tolerance:.2%})")


def top_sites(sites, n):
    by_bytes = sorted(sites, key=lambda s: -s["bytes"])[:n]
    by_count = sorted(sites, key=lambda s: -s["allocations"])[:n]
    out, seen = [], set()
    for s in by_bytes + by_count:
        if id(s) not in seen:
            seen.add(id(s))
            out.append(s)
    return out


def check_names(ck, case, prof):
    """The hottest sites name the program's functions, in allocprof's report and in
    DHAT's profile alike."""
    if not case.names:
        return
    for label, sites in (("allocprof", prof.report["sites"]),
                         ("DHAT", prof.dhat_sites)):
        top = top_sites(sites, case.top_sites)
        seen = collections.Counter()
        ck.say(f"hottest sites ({label}, top {case.top_sites} by bytes and by allocations):")
        for s in top:
            names = frame_names(s["frames"], case.name_depth)
            ck.say(f"    {s['allocations']:>8} {s['bytes']:>11}  "
                   + " <- ".join(str(n or "???")[:50] for n in names[:4])
                   + (" <- ..." if len(names) > 4 else ""))
            for n in set(n for n in names if n):
                seen[n] += 1
            if case.each_top_site:
                ck.ok(any(n and re.search(case.each_top_site, n) for n in names),
                      f"{label}: hot site {' <- '.join(str(n) for n in names)} names no "
                      f"function matching /{case.each_top_site}/ in its first "
                      f"{case.name_depth} frames")
        for pattern in case.names:
            hits = sorted(n for n in seen if re.search(pattern, n))
            ck.ok(bool(hits), f"{label}: no hot site names a function matching /{pattern}/")
            ck.info(f"{label}: /{pattern}/: {hits[:6]}")


def by_function(sites, keys):
    """{key: fields} summing sites by the first of keys (innermost frame first) that
    a frame names, as dhat.DhatProfile.by_key does; reallocs counted alongside."""
    out = {}
    for s in sites:
        key = None
        for fr in s["frames"]:
            n = norm(fr.get("function"))
            key = next((k for k in keys if n and (n == k or n.endswith("::" + k))), None)
            if key:
                break
        if key is None:
            continue
        agg = out.setdefault(key, dict.fromkeys(FIELDS + ("reallocs",), 0))
        for f in FIELDS + ("reallocs",):
            agg[f] += s.get(f, 0)
    return out


def check_functions(ck, case, prof):
    """Per-function figures of the case's key functions, equal in both tools.  Sites are
    summed by the first key function on their stack (innermost first).  An entry of
    case.functions may be a tuple of functions, compared as one sum: where a block is
    allocated in one function and realloc'd in another, DHAT counts the new block under
    the function that first allocated it and allocprof under the one that reallocs it
    (point 5 of the module docstring), so only their sum agrees."""
    if not case.functions:
        return
    groups = [g if isinstance(g, tuple) else (g,) for g in case.functions]
    keys = [k for g in groups for k in g]
    dsites = prof.dhat_sites
    asites = prof.report["sites"]
    if case.excluded:
        asites = [s for s in asites if not case.excluded(s["frames"], s)]
        dsites = [s for s in dsites if not case.excluded(s["frames"], s)]
    ap = by_function(asites, keys)
    dh = by_function(dsites, keys)
    ck.say("per function (sites summed by the first of these functions on their stack"
           + (", address-dependent sites left out" if case.excluded else "") + "):")
    ck.say(f"    {'function':<44} {'allocprof':>20} {'DHAT':>20}  (allocations/bytes)")

    def line(name, a, d, extra=""):
        at = f"{a['allocations']}/{a['bytes']}" if a else "-"
        dt = f"{d['allocations']}/{d['bytes']}" if d else "-"
        ck.say(f"    {name[:44]:<44} {at:>20} {dt:>20}{extra}")

    for g in groups:
        for k in g:
            a = ap.get(k)
            line(k, a, dh.get(k), f"  ({a['reallocs']} reallocs)" if a and a["reallocs"]
                 else "")
            ck.ok(k in ap, f"allocprof: no site names {k}")
            ck.ok(k in dh, f"DHAT: no site names {k}")
        a = sum_fields([ap[k] for k in g if k in ap])
        d = sum_fields([dh[k] for k in g if k in dh])
        if len(g) > 1:
            line("  together (a realloc chain crosses them)", a, d)
        for f in FIELDS:
            ck.ok(a[f] == d[f], f"function{'s' if len(g) > 1 else ''} "
                  f"{' + '.join(g)}: {f}: allocprof {a[f]}, DHAT {d[f]}")


# ---- the cases ----

class Case:
    name = None
    program = None          # must exist, else skip
    # Totals that must be equal; the others must agree within 0.1%.
    exact_fields = FIELDS
    # Peak: relative tolerance (0: equal).
    peak_tolerance = 0.0
    excluded = None         # predicate(frames, fields) -> reason or None
    names = ()              # regexes: some hot site must name each (allocprof and DHAT)
    each_top_site = None    # regex: every hot site must name a match in name_depth frames
    # Frames looked at when asking whether a hot site names a function: the allocator
    # wrapper, its caller, and two more (static functions of stripped programs have no
    # name, and the caller of those is what a reader needs).
    name_depth = 4
    # How many of the hottest sites (by bytes, and by allocations) are looked at.
    top_sites = 5
    functions = ()          # key functions compared per function
    follow_children = False

    def variants(self):
        """[(label, extra environment variables, attributes of the case to override)]"""
        return [(None, {}, {})]

    def available(self):
        if self.program and not os.access(self.program, os.X_OK):
            raise Skip(f"{self.program} is not installed")

    def prepare(self, work):
        """Creates the input; returns (argv, stdin path or None)."""
        raise NotImplementedError

    def reset(self, work):
        """Called before each run."""

    def check_once(self, ck, allocprof, env, work):
        """Checks of the case made once, after the variants."""

    def images(self, ap_dir, ap_profile, dhat_outs):
        """For cases that follow children: [(label, allocprof profile, DHAT file,
        primary)], one per process image; the primary one gets every check, the others
        their totals compared."""
        raise NotImplementedError


PY_SCRIPT = r'''
import sys
n = int(sys.argv[1])
words = ["w%d_%s" % (i, "abcdefghij"[i % 10] * (i % 7 + 1)) for i in range(n)]
index = {}
for i, w in enumerate(words):
    index.setdefault(w[-3:] + str(i % 500), []).append(i)
counts = dict(zip(words, range(n)))
merged = dict(counts)
merged.update(index)
proto = {k: k * 2 for k in "abcdefghijkl"}
clones = [proto.copy() for _ in range(n)]
for i, c in enumerate(clones):
    c["id"] = i
    c["name"] = words[i]
parts = " ".join(words).split()
table = [{"id": i, "name": w, "tags": [w.upper(), w[::-1]]} for i, w in enumerate(parts)]
table.sort(key=lambda r: r["name"][::-1])
csv = "\n".join("%d,%s,%s" % (r["id"], r["name"], ";".join(r["tags"])) for r in table)
rows = [line.split(",") for line in csv.splitlines()]
by_first = {}
for r in rows:
    by_first.setdefault(r[1][:2], set()).add(r[2])
print(len(index), len(counts), len(merged), len(clones), len(parts), len(csv), len(rows),
      len(by_first))
'''


class Python(Case):
    """Debian's python3.11 on a dict/list/str-heavy script.  PYTHONHASHSEED=0: string
    hashes (and so dict layouts and set iteration order) are randomized per process
    otherwise.  Two variants: the default allocator (pymalloc serves objects up to 512
    bytes from its own mmap'd arenas, so only larger blocks reach malloc) and
    PYTHONMALLOC=malloc (every object is a malloc call: the variant that shows the
    object constructors at the top).  -S: no site module, so the figures do not depend
    on which packages are installed."""
    name = "python"
    program = "/usr/bin/python3"
    each_top_site = r"^_?Py"
    N = 15000

    def variants(self):
        return [
            # Only blocks over 512 bytes reach malloc: list and dict tables that grow,
            # big strings; mostly made by static functions (unnamed), called from these.
            ("pymalloc", {"PYTHONHASHSEED": "0"},
             {"names": (r"^PyList_Append$", r"^_PyEval_EvalFrameDefault$"),
              "functions": ("PyDict_Copy", "PyDict_MergeFromSeq2", "PyDict_SetDefault",
                            "PyList_Append")}),
            # Every object is a malloc call.  Bytes and peak within 0.1%: integers that
            # hold an address are one 30-bit digit (4 bytes) longer natively than under
            # valgrind, which puts the main thread's TLS below 1 GiB.  importlib makes
            # one at every import (_thread.get_ident() returns pthread_self()): 32-byte
            # blocks natively, 28 under valgrind.  Counts and leaks stay exact.
            ("malloc", {"PYTHONHASHSEED": "0", "PYTHONMALLOC": "malloc"},
             {"exact_fields": ("allocations", "frees", "leaked_blocks", "leaked_bytes"),
              "peak_tolerance": 0.001,
              "names": (r"^PyDict_", r"^_?PyObject_", r"^PyUnicode_", r"^_PyLong_New$"),
              "top_sites": 10,
              "functions": ("PyDict_Copy", "PyDict_MergeFromSeq2", "PyDict_SetDefault",
                            "_PyObject_GC_New", "PyUnicode_Substring", "_PyLong_New")}),
        ]

    def check_once(self, ck, allocprof, env, work):
        """A program started with SIGINT and SIGHUP ignored (a background job of a
        shell, nohup) must see them ignored under allocprof too, as it does when run
        directly or under valgrind (exec keeps ignored signals ignored).  python shows
        it: signal.getsignal() says SIG_IGN, and python then allocates differently
        (point 8 of the module docstring)."""
        code = ("import signal; print([signal.getsignal(s) is signal.SIG_IGN "
                "for s in (signal.SIGINT, signal.SIGHUP)])")
        argv = [self.program, "-S", "-c", code]

        def ignoring():
            child_setup(ignore=(signal.SIGINT, signal.SIGHUP))

        direct = subprocess.run(argv, env=env, cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=120, preexec_fn=ignoring)
        under = subprocess.run([allocprof, "run", "-q", "-o",
                                os.path.join(work, "signals.approf"), "--"] + argv,
                               env=env, cwd=work, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=120, preexec_fn=ignoring)
        ck.say(f"started with SIGINT and SIGHUP ignored, python sees them ignored: "
               f"directly {direct.stdout.decode().strip()}, under allocprof "
               f"{under.stdout.decode().strip()}")
        ck.ok(direct.stdout == under.stdout,
              "allocprof run does not pass ignored signals on to the program: started "
              "with SIGINT and SIGHUP ignored, python sees "
              f"{under.stdout.decode().strip()} under allocprof, "
              f"{direct.stdout.decode().strip()} when run directly")

    def prepare(self, work):
        path = os.path.join(work, "workload.py")
        with open(path, "w") as f:
            f.write(PY_SCRIPT)
        return [self.program, "-S", path, str(self.N)], None


class Sqlite(Case):
    """sqlite3 building a 100k-row table in a database file, indexing it twice and
    querying it.  The database file is deleted before each run."""
    name = "sqlite"
    program = "/usr/bin/sqlite3"
    each_top_site = r"^sqlite3"
    names = (r"^sqlite3Malloc$", r"^sqlite3(BtreeInsert|VdbeExec|VdbeMemGrow)$")
    # The sorter's buffer (CREATE INDEX sorts the rows) is allocated by
    # sqlite3VdbeSorterInit and grown by sqlite3Realloc in sqlite3VdbeSorterWrite.
    functions = ("sqlite3VdbeMemGrow", "sqlite3BtreeInsert",
                 ("sqlite3VdbeSorterInit", "sqlite3VdbeSorterWrite"),
                 "sqlite3StrAccumEnlarge")
    ROWS = 100000

    def prepare(self, work):
        sql = os.path.join(work, "load.sql")
        with open(sql, "w") as f:
            f.write(f"""PRAGMA journal_mode=OFF;
PRAGMA synchronous=OFF;
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, val REAL, note TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {self.ROWS})
INSERT INTO t SELECT i, 'name' || i, i % 97, i * 0.5,
                     printf('%08x-%s', (i * 2654435761) % 4294967296, hex(i)) FROM c;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp ON t(grp, val);
SELECT grp, count(*), sum(val) FROM t GROUP BY grp ORDER BY grp LIMIT 3;
SELECT count(DISTINCT note) FROM t;
SELECT name FROM t WHERE name LIKE 'name99%' ORDER BY name LIMIT 2;
""")
        return [self.program, "db.sqlite"], sql

    def reset(self, work):
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(os.path.join(work, "db.sqlite" + suffix))
            except FileNotFoundError:
                pass


def gcc_address_dependent(frames, fields):
    """cc1 allocates differently depending on where things are in memory, so that it does
    not even repeat itself from one native (ASLR) run to the next; two places, found by
    comparing runs:

    * GGC's page table.  ggc-page.cc finds a page's entry through a table indexed by
      address bits: on a 64-bit host, a list of nodes (2064 bytes each: one per 4 GiB
      region that holds GGC pages), each with 256 slots for second-level arrays of 4096
      pointers (32768 bytes: one per 16 MiB region), all xcalloc'd by a static function
      called from ggc_internal_alloc and never freed.  How many regions the mmap'd pages
      fall into depends on the address layout: under valgrind and natively it is not the
      same, and natively it changes from run to run (one or two 32 KiB arrays, now and
      then a second node).
    * GCC's open-addressing hash tables (hash_table<...>::expand).  A removed entry
      leaves a deleted slot that a later insertion reuses only if its probe sequence
      passes it; for pointer keys the probe sequences depend on the addresses, and so
      does when the table grows (e.g. the basic-block sets of
      back_threader::find_paths_to_names: 99..122 expansions of 104 bytes in 8 native
      runs of the same compilation)."""
    names = frame_names(frames, 3)
    if len(names) == 3 and names[0] == "xcalloc" and names[1] is None \
            and names[2] == "ggc_internal_alloc":
        if fields["bytes"] == 32768 * fields["allocations"]:
            return "GGC page-table arrays (32 KiB, one per 16 MiB region of GGC pages)"
        if fields["bytes"] == 2064 * fields["allocations"]:
            return "GGC page-table nodes (2064 bytes, one per 4 GiB region of GGC pages)"
    if len(names) >= 2 and names[1] and names[1].startswith("hash_table<") \
            and names[1].endswith("::expand"):
        return "hash_table<...>::expand (growth depends on probe collisions of pointer keys)"
    return None


GEN_C_HEAD = """#include <stddef.h>
#include <string.h>

struct node { int key; struct node *next; double w; const char *name; };
"""


def generate_c(tables, funcs):
    """A C file of tables (many lines, cheap to compile) and functions with loops,
    branches, calls and switches (work for the optimizer)."""
    o = [GEN_C_HEAD]
    for i in range(tables):
        o.append(f"struct rec_{i} {{ int id; short kind; const char *label; double scale; }};")
        o.append(f"static const struct rec_{i} table_{i}[] = {{")
        for j in range(8):
            o.append(f'\t{{ {i * 8 + j}, {j % 5}, "rec-{i}-{j}", {i}.{j}25 }},')
        o.append("};")
        o.append(f"const void *get_table_{i}(size_t *n)\n{{\n"
                 f"\t*n = sizeof table_{i} / sizeof table_{i}[0];\n\treturn table_{i};\n}}\n")
    for i in range(funcs):
        o.append(f"""static int helper_{i}(int a, int b)
{{
\tint s = a * {i % 13 + 1};
\tfor (int j = 0; j < b; j++)
\t\ts += (j ^ a) % {i % 7 + 2};
\treturn s;
}}

int func_{i}(struct node *p, int x)
{{
\tint acc = {i};
\twhile (p) {{
\t\tif (p->key > x)
\t\t\tacc += helper_{i}(p->key, x);
\t\telse
\t\t\tacc -= (int)(p->w * {i % 5 + 1}.5) + (int)strlen(p->name);
\t\tp = p->next;
\t}}
\tswitch (x & 3) {{
\tcase 0: return acc + {i};
\tcase 1: return acc * 3;
\tdefault: return acc - x;
\t}}
}}
""")
    return "\n".join(o)


class Gcc(Case):
    """`gcc -O2 -c` on a generated C file of about 2,800 lines.  The driver execs cc1 and
    as; allocprof writes one profile per process image and DHAT (--trace-children=yes)
    one file per image: all three are compared, cc1's in full.  cc1's allocations
    depend on the address layout (gcc_address_dependent): those sites are shown and
    left out of the exact comparison, and the raw counts must agree within 0.1%.  cc1
    exports its functions (plugins link against it), so its frames have names; its
    obstacks are set up by a static function of libiberty (unnamed), and GGC's objects
    live in mmap'd pages: xmalloc, xcalloc and xrealloc are the hot names."""
    name = "gcc"
    program = "/usr/bin/gcc"
    follow_children = True
    excluded = staticmethod(gcc_address_dependent)
    # Peak: each tool's peak less the left-out sites' share of it; equal in every run
    # so far, but the left-out blocks can move the moment of the peak.
    peak_tolerance = 0.001
    names = (r"^xmalloc$", r"^xcalloc$", r"^(cselib_lookup|execute_one_pass)$")
    each_top_site = r"^(x(malloc|calloc|realloc)|ira_build)$"
    # GGC's tables of pages by depth are xmalloc'd by init_ggc and grown by xrealloc in
    # ggc_internal_alloc.
    functions = (("ggc_internal_alloc", "init_ggc"), "cselib_lookup", "init_deps",
                 "sched_extend_ready_list", "lra_set_insn_recog_data", "execute_one_pass")
    TABLES, FUNCS = 120, 30

    def prepare(self, work):
        with open(os.path.join(work, "gen.c"), "w") as f:
            f.write(generate_c(self.TABLES, self.FUNCS))
        return [self.program, "-O2", "-c", "gen.c", "-o", "gen.o"], None

    def reset(self, work):
        # The driver realpath()s the output file: an existing gen.o makes a longer string.
        try:
            os.unlink(os.path.join(work, "gen.o"))
        except FileNotFoundError:
            pass

    def images(self, ap_dir, ap_profile, dhat_outs):
        def dhat_file(prog):
            found = [p for cmd, p in dhat_outs if os.path.basename(cmd.split(" ")[0]) == prog]
            return found[0] if len(found) == 1 else None

        def ap_file(pattern):
            found = glob.glob(os.path.join(ap_dir, pattern))
            return found[0] if len(found) == 1 else None

        return [("cc1", ap_file("allocprof.cc1.*.approf"), dhat_file("cc1"), True),
                ("gcc driver", ap_profile, dhat_file("gcc"), False),
                ("as", ap_file("allocprof.*as.*.approf"), dhat_file("as"), False)]


def make_fast_import(commits):
    """A fast-import stream: `commits` commits on main, each editing 3 of 10 C files
    (inserting lines, and deleting one once a file has 40), fixed authors and dates."""
    out = []

    def data(b):
        out.append(b"data %d\n" % len(b))
        out.append(b)

    files = {f"src/file{j}.c": [f"/* file {j} */\n".encode()] for j in range(10)}
    for i in range(1, commits + 1):
        t = 1700000000 + i * 60
        out.append(b"commit refs/heads/main\nmark :%d\n" % i)
        out.append(b"author A U Thor <author@example.com> %d +0000\n" % t)
        out.append(b"committer C O Mitter <committer@example.com> %d +0000\n" % t)
        data(b"commit %d: change things\n\nLonger description of change %d.\n" % (i, i))
        if i > 1:
            out.append(b"from :%d\n" % (i - 1))
        for j in range(3):
            name = f"src/file{(i * 7 + j) % 10}.c"
            lines = files[name]
            lines.insert((i * 31 + j) % (len(lines) + 1),
                         b"int v_%d_%d = %d; /* some text to diff */\n" % (i, j, i * j))
            if len(lines) > 40:
                del lines[(i * 17) % len(lines)]
            out.append(b"M 100644 inline " + name.encode() + b"\n")
            data(b"".join(lines))
        out.append(b"\n")
    return b"".join(out)


class Git(Case):
    """git log -p on a repository of 1000 commits made here with fast-import (one pack,
    deltified blobs, so log -p inflates objects and applies deltas).  git reads no
    system or global configuration (GIT_CONFIG_NOSYSTEM, HOME in the work directory).
    Debian's git is stripped and exports none of its own functions, so its frames are
    unnamed in both tools: xmalloc, xrealloc and strbuf_* cannot be named without
    debugging information (not installed); the named frames of the hot sites are
    zlib's."""
    name = "git"
    program = "/usr/bin/git"
    names = (r"^inflateInit2_$",)
    COMMITS = 1000

    def prepare(self, work):
        repo = os.path.join(work, "repo")
        os.makedirs(repo)
        env = dict(self.base_env)
        subprocess.run(["git", "init", "-q", "-b", "main", repo], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        subprocess.run(["git", "-C", repo, "fast-import", "--quiet"],
                       input=make_fast_import(self.COMMITS), env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
        self.cwd = repo
        return [self.program, "log", "-p"], None

    def check_extra(self, ck, prof):
        """Without names, the call chains are compared by address: each hot site of
        allocprof's is paired with the DHAT site of the same allocations and bytes, and
        their frames must be in the same modules at the same addresses.  allocprof gives
        ELF addresses of return addresses, DHAT run-time addresses minus one: per module
        the difference must be one constant (where valgrind loaded it)."""
        bias = {}
        dsites = prof.dhat.sites
        paired = 0
        for s in top_sites(prof.report["sites"], self.top_sites):
            same = [d for d in dsites
                    if d["blocks"] == s["allocations"] and d["bytes"] == s["bytes"]]
            if len(same) != 1:
                continue
            paired += 1
            d = same[0]
            n = min(len(s["frames"]), len(d["frames"]), 8)
            for i in range(n):
                fa, fd = s["frames"][i], d["frames"][i]
                ma = os.path.realpath(fa.get("module") or "?")
                md = os.path.realpath(fd.get("module") or "?") if fd.get("module") else None
                if md is None:
                    continue  # DHAT printed a source line instead of the module
                if not ck.ok(ma == md, f"hot site {s['allocations']}/{s['bytes']}: "
                             f"frame {i}: module {ma} vs DHAT's {md}"):
                    break
                delta = fd["address"] + 1 - int(fa["address"], 16)
                ck.ok(bias.setdefault(ma, delta) == delta,
                      f"hot site {s['allocations']}/{s['bytes']}: frame {i} in {ma}: "
                      f"allocprof {fa['address']}, DHAT {fd['address']:#x}: not at the "
                      f"same place as the other frames of that module")
        ck.ok(paired >= self.top_sites, f"only {paired} hot sites paired with DHAT's")
        ck.say(f"call chains of {paired} hot sites: same modules and addresses; load "
               f"addresses under valgrind: "
               + ", ".join(f"{os.path.basename(m)} {b:#x}" for m, b in sorted(bias.items())))


class Cxx(Case):
    """tests/real/cxx_containers.cc: std::map, std::unordered_map, std::vector and
    std::string in functions of our own, built with -O2 -g: exact figures per function."""
    name = "cxx"
    names = (r"^real::build_word_index$", r"^real::count_bigrams$",
             r"^real::make_records$")
    each_top_site = r"^real::"
    # The containers' code is inlined std:: templates, several frames deep (each inlined
    # frame is one frame, in both tools): look down to main.
    name_depth = 64
    functions = ("real::build_word_index", "real::count_bigrams", "real::make_records",
                 "real::render_report", "real::keep_some_names")

    def __init__(self, binary):
        self.program = binary

    def available(self):
        if not self.program or not os.access(self.program, os.X_OK):
            raise Skip(f"the C++ test program was not built ({self.program})")

    def prepare(self, work):
        return [self.program, "4"], None


# ---- main ----

def run_case(ck, case, allocprof, valgrind, work):
    base = {"PATH": "/usr/bin:/bin", "HOME": os.path.join(work, "home"), "LC_ALL": "C",
            "TZ": "UTC", "TMPDIR": os.path.join(work, "tmp"),
            "GIT_CONFIG_NOSYSTEM": "1"}
    os.makedirs(base["HOME"])
    os.makedirs(base["TMPDIR"])
    case.base_env = base
    case.cwd = work
    argv, stdin_path = case.prepare(work)
    stdin_data = b""
    if stdin_path:
        with open(stdin_path, "rb") as f:
            stdin_data = f.read()
    for label, extra, overrides in case.variants():
        for k, v in overrides.items():
            setattr(case, k, v)
        ck.prefix = f"{case.name}" + (f"[{label}]" if label else "") + ": "
        env = dict(base, **extra)
        ap_env, vg_env = matched_envs(ck, allocprof, valgrind, env, case.cwd)
        shown = " ".join([f"{k}={v}" for k, v in extra.items()] + argv)
        ck.say("$ " + shown + (f" <{os.path.basename(stdin_path)}" if stdin_path else ""))
        tag = case.name + (f"-{label}" if label else "")
        ap_dir = os.path.join(work, "ap-" + tag)
        dh_dir = os.path.join(work, "dhat-" + tag)

        case.reset(work)
        ap_proc, profile = run_allocprof(allocprof, argv, ap_env, case.cwd, stdin_data,
                                         ap_dir, tag)
        case.reset(work)
        dh_proc, outs = run_dhat(valgrind, argv, vg_env, case.cwd, stdin_data, dh_dir,
                                 case.follow_children)
        ck.ok(ap_proc.returncode == 0, f"allocprof run exit {ap_proc.returncode}: "
              f"{ap_proc.stderr.decode(errors='replace')[-800:]}")
        ck.ok(dh_proc.returncode == 0,
              f"under DHAT: {dhat.describe_returncode(dh_proc.returncode)}")
        ha = hashlib.sha256(ap_proc.stdout).hexdigest()[:16]
        hd = hashlib.sha256(dh_proc.stdout).hexdigest()[:16]
        ck.ok(ha == hd, f"the program's output differs between the runs "
              f"({len(ap_proc.stdout)} bytes {ha} vs {len(dh_proc.stdout)} bytes {hd}): "
              f"it did not do the same work")
        ck.info(f"output {len(ap_proc.stdout)} bytes, sha256 {ha}")
        if case.follow_children:
            written = sorted(os.listdir(ap_dir))
            ck.ok(len(written) == len(outs), f"allocprof wrote {len(written)} profiles "
                  f"({written}), DHAT {len(outs)} ({[c for c, _ in outs]})")
            images = case.images(ap_dir, profile, outs)
        else:
            ck.ok(len(outs) == 1, f"expected one DHAT file, got {outs}")
            images = [(None, profile, outs[0][1], True)]
        prefix = ck.prefix
        for image, ap_path, dh_path, primary in images:
            if image:
                ck.prefix = prefix + image + ": "
                ck.say(f"process image {image}")
            if not ck.ok(ap_path and os.path.exists(ap_path),
                         f"allocprof wrote no profile ({ap_path}; in {ap_dir}: "
                         f"{sorted(os.listdir(ap_dir))})"):
                continue
            if not ck.ok(dh_path is not None, f"no DHAT file ({outs})"):
                continue
            prof = Profiles(report_json(allocprof, ap_path),
                            dhat.load(dh_path, dh_proc.returncode))
            process = prof.report.get("process") or {}
            status = process.get("exit_status")
            if ap_path == profile:
                ck.ok(status == 0, f"profile exit_status {status}")
                ck.ok(process.get("command") == argv,
                      f"profile command {process.get('command')}, expected {argv}")
            else:
                # Reaped by its own parent (the gcc driver), not by allocprof: the exit
                # status may be unknown (null), never anything but 0.
                ck.ok(status in (0, None), f"profile exit_status {status}")
            if not primary:
                compare_totals(ck, Case(), prof)
                continue
            compare_totals(ck, case, prof)
            check_names(ck, case, prof)
            check_functions(ck, case, prof)
            if hasattr(case, "check_extra"):
                case.check_extra(ck, prof)
        ck.prefix = prefix
        ck.say()
    ck.prefix = f"{case.name}: "
    case.check_once(ck, allocprof, base, work)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("allocprof")
    ap.add_argument("case", choices=["python", "sqlite", "gcc", "git", "cxx"])
    ap.add_argument("--cxx-bin", help="the built tests/real/cxx_containers program")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep everything")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    cases = {"python": Python, "sqlite": Sqlite, "gcc": Gcc, "git": Git}
    if args.case == "cxx":
        case = Cxx(os.path.abspath(args.cxx_bin) if args.cxx_bin else None)
    else:
        case = cases[args.case]()
    allocprof = os.path.abspath(args.allocprof)
    try:
        case.available()
        valgrind = dhat.valgrind_path()
        if not valgrind:
            raise Skip("valgrind is not installed")
    except Skip as e:
        print(f"SKIP: {args.case}: {e}")
        return SKIP
    if not os.access(allocprof, os.X_OK):
        print(f"FAIL: allocprof binary {args.allocprof!r} is not executable")
        return 1

    ck = Checker(args.verbose)
    if args.keep:
        # Reused only if an earlier run made it (it holds the marker file).
        work = os.path.abspath(args.keep)
        marker = os.path.join(work, ".check_real")
        if os.path.exists(marker):
            shutil.rmtree(work)
        elif os.path.exists(work) and os.listdir(work):
            print(f"FAIL: --keep {args.keep}: not empty, and not made by check_real.py")
            return 1
        os.makedirs(work, exist_ok=True)
        open(marker, "w").close()
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix=f"ap-real-{args.case}-")
        work = tmp.name
    try:
        run_case(ck, case, allocprof, valgrind, work)
    except (dhat.DhatUnavailable, RuntimeError, subprocess.SubprocessError, OSError,
            ValueError) as e:
        ck.prefix = ""
        ck.fail(f"{args.case}: {type(e).__name__}: {e}")
    finally:
        if tmp:
            tmp.cleanup()
    ck.prefix = ""
    verdict = "FAILED" if ck.failures else "passed"
    print(f"{args.case}: {verdict}: {ck.checks} checks, {ck.failures} failed")
    return 1 if ck.failures else 0


if __name__ == "__main__":
    sys.exit(main())
