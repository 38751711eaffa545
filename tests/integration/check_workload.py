#!/usr/bin/env python3
# Integration check: profiles one test workload with allocprof and compares the report
# with the workload's expected figures and with valgrind's DHAT.
#
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Check allocprof's report of a workload against tests/workloads/<name>.expected.json.

    check_workload.py ALLOCPROF WORKLOAD EXPECTED [--variant NAME] [--no-dhat] [--dhat-only]

For each variant (all of them by default) it runs

    ALLOCPROF run -o TMP/<name>.approf -- WORKLOAD ARGS...
    ALLOCPROF report TMP/<name>.approf --json

and checks the exit status and output streams, then the report: totals, per-site figures
(sites summed by key function, see tests/workloads/README.md), call chains (function
names, inlined flags, lines), modules, dropped events.  Then it runs the workload under
DHAT (tests/integration/dhat.py) and checks DHAT's totals and per-function figures against
the expected file, and allocprof's totals against DHAT's.

Each mismatch is printed as "FAIL: what: expected X, got Y".  Exit status: 0 all passed,
1 something failed, 77 skipped (the workload was not built, e.g. without rustc).
--dhat-only checks only the DHAT half (ALLOCPROF is then ignored; "-" will do).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dhat  # noqa: E402  (sibling module)

SKIP = 77
FIELDS = ("allocations", "bytes", "frees", "leaked_blocks", "leaked_bytes")
TOTAL_FIELDS = FIELDS + ("peak_bytes",)
# DHAT's names for the same figures.
DHAT_FIELD = {"allocations": "blocks", "bytes": "bytes", "frees": "frees",
              "leaked_blocks": "exit_blocks", "leaked_bytes": "exit_bytes",
              "peak_bytes": "gmax_bytes"}
RUN_TIMEOUT = 300


class Checker:
    def __init__(self, verbose=False):
        self.failures = 0
        self.checks = 0
        self.verbose = verbose
        self.prefix = ""

    def fail(self, what, expected, got):
        self.failures += 1
        print(f"FAIL: {self.prefix}{what}: expected {expected}, got {got}")

    def fail_msg(self, what):
        self.failures += 1
        print(f"FAIL: {self.prefix}{what}")

    def note(self, text):
        print(f"NOTE: {self.prefix}{text}")

    def info(self, text):
        if self.verbose:
            print(f"  {self.prefix}{text}")

    def eq(self, what, expected, got):
        self.checks += 1
        if expected != got:
            self.fail(what, expected, got)
            return False
        return True


# ---- rules: a number, or {"min", "max", "step"} ----

def rule_ok(rule, value):
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        return False
    if isinstance(rule, dict):
        lo, hi, step = rule.get("min"), rule.get("max"), rule.get("step")
        if lo is not None and value < lo:
            return False
        if hi is not None and value > hi:
            return False
        if step and (value - (lo or 0)) % step != 0:
            return False
        return True
    return value == rule


def rule_text(rule):
    if not isinstance(rule, dict):
        return str(rule)
    parts = []
    if "min" in rule:
        parts.append(f">= {rule['min']}")
    if "max" in rule:
        parts.append(f"<= {rule['max']}")
    if rule.get("step"):
        parts.append(f"min + k*{rule['step']}")
    return " and ".join(parts) or "anything"


def check_alternatives(ck, what, alternatives, actual):
    """actual: {field: value}.  Passes if one alternative holds in every field it names;
    otherwise reports the mismatches against the closest alternative."""
    if not alternatives:
        return
    best = None
    for alt in alternatives:
        bad = [(f, r, actual.get(f)) for f, r in alt.items() if not rule_ok(r, actual.get(f))]
        if not bad:
            ck.checks += 1
            return
        if best is None or len(bad) < len(best):
            best = bad
    extra = f" (none of {len(alternatives)} alternatives matched; closest shown)" \
        if len(alternatives) > 1 else ""
    for field, rule, value in best:
        ck.fail(f"{what}.{field}{extra}", rule_text(rule), value)


# ---- the expected file ----

def load_expected(path):
    with open(path, encoding="utf-8") as f:
        exp = json.load(f)
    if exp.get("schema") != 1:
        raise ValueError(f"{path}: unknown schema {exp.get('schema')!r}")
    return exp


def variants_of(exp, only):
    """[(name or None, merged expected dict)]."""
    variants = exp.get("variants")
    if not variants:
        if only:
            raise ValueError(f"no variant {only!r}: the expected file has no variants")
        return [(None, exp)]
    names = [only] if only else list(variants)
    out = []
    for name in names:
        if name not in variants:
            raise ValueError(f"no variant {name!r} (have: {', '.join(variants)})")
        merged = {k: v for k, v in exp.items() if k != "variants"}
        merged.update(variants[name])
        out.append((name, merged))
    return out


def resolve_command(argv, workload, exp):
    plugin = os.path.join(os.path.dirname(workload), exp.get("plugin", ""))
    return [workload if a == "@BIN@" else plugin if a == "@PLUGIN@" else a for a in argv]


def source_markers(exp, expected_path):
    """{"LINE:x": line number} from the workload's source file, if it names one."""
    src = exp.get("source")
    if not src:
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(expected_path)), src)
    markers = {}
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, 1):
            for m in re.finditer(r"/\*\s*(LINE:\w+)\s*\*/", text):
                markers[m.group(1)] = lineno
    return markers


def signal_number(name):
    return int(getattr(signal, name)) if isinstance(name, str) else int(name)


def expected_exit_text(exit_exp):
    if "signal" in exit_exp:
        return f"killed by {exit_exp['signal']}"
    return f"exit {exit_exp.get('status', 0)}"


def returncode_ok(exit_exp, rc):
    """A program run directly or through valgrind: rc as subprocess reports it."""
    if "signal" in exit_exp:
        return rc == -signal_number(exit_exp["signal"])
    return rc == exit_exp.get("status", 0)


def wrapper_returncode_ok(exit_exp, rc):
    """`allocprof run` passes the status on; for a signal death it may die by the same
    signal or exit with 128 + the signal number, as shells do."""
    if "signal" in exit_exp:
        sig = signal_number(exit_exp["signal"])
        return rc in (-sig, 128 + sig)
    return rc == exit_exp.get("status", 0)


def no_core_dumps():
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def strip_summary(text):
    """Drops allocprof's own summary lines from stderr."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("allocprof:"))


# ---- the allocprof half ----

def run_allocprof(ck, allocprof, cmd, exp, tmp, name):
    profile = os.path.join(tmp, f"{name}.approf")
    stdin = exp.get("stdin")
    run = [allocprof, "run", "-o", profile, "--"] + cmd
    ck.info("$ " + " ".join(run))
    try:
        proc = subprocess.run(run, input=(stdin or "").encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=RUN_TIMEOUT,
                              preexec_fn=no_core_dumps)
    except subprocess.TimeoutExpired:
        ck.fail_msg(f"allocprof run: did not finish within {RUN_TIMEOUT}s")
        return None
    except OSError as e:
        ck.fail_msg(f"allocprof run: cannot start {allocprof}: {e}")
        return None
    exit_exp = exp.get("exit", {"status": 0})
    ck.checks += 1
    if not wrapper_returncode_ok(exit_exp, proc.returncode):
        ck.fail("allocprof run exit status", expected_exit_text(exit_exp),
                dhat.describe_returncode(proc.returncode))
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    if "stdout" in exp:
        ck.eq("program stdout", repr(exp["stdout"]), repr(out))
    if "stderr" in exp:
        ck.eq("program stderr (without 'allocprof:' lines)", repr(exp["stderr"]),
              repr(strip_summary(err)))
    if not os.path.exists(profile):
        ck.fail_msg(f"allocprof run wrote no profile at {profile}; its stderr:\n{err}")
        return None

    rep = [allocprof, "report", profile, "--json"]
    ck.info("$ " + " ".join(rep))
    try:
        proc = subprocess.run(rep, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=RUN_TIMEOUT)
    except (subprocess.TimeoutExpired, OSError) as e:
        ck.fail_msg(f"allocprof report: {e}")
        return None
    if proc.returncode != 0:
        ck.fail("allocprof report exit status", 0,
                f"{proc.returncode} ({proc.stderr.decode('utf-8', 'replace').strip()})")
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        ck.fail_msg(f"allocprof report --json: not JSON ({e})")
        return None


def frame_function(frame):
    return frame.get("function") if isinstance(frame, dict) else None


def key_of(site, keys):
    """(key, index of the frame that names it) or (None, None)."""
    frames = site.get("frames") or []
    for i, frame in enumerate(frames):
        for key in keys:
            if dhat.name_matches(key, frame_function(frame)):
                return key, i
    return None, None


def frames_text(frames, limit=6):
    names = [str(frame_function(f)) for f in frames[:limit]]
    return " <- ".join(names) + (" ..." if len(frames) > limit else "")


def check_report(ck, report, exp, cmd, workload, markers):
    ck.eq("report schema_version", 1, report.get("schema_version"))
    ck.eq("report mode", "full", report.get("mode"))

    # process
    proc = report.get("process") or {}
    exit_exp = exp.get("exit", {"status": 0})
    status = proc.get("exit_status")
    ck.checks += 1
    if "signal" in exit_exp:
        sig = signal_number(exit_exp["signal"])
        if status not in (None, -1, 128 + sig):
            ck.fail("process.exit_status", f"null, -1 or {128 + sig} ({exit_exp['signal']})",
                    status)
        for field in ("signal", "term_signal"):
            if field in proc and proc[field] not in (sig, exit_exp["signal"]):
                ck.fail(f"process.{field}", f"{sig} or {exit_exp['signal']}", proc[field])
    elif status != exit_exp.get("status", 0):
        ck.fail("process.exit_status", exit_exp.get("status", 0), status)
    command = proc.get("command")
    if isinstance(command, list) and command:
        ck.eq("process.command", [os.path.basename(cmd[0])] + cmd[1:],
              [os.path.basename(str(command[0]))] + command[1:])

    totals = report.get("totals") or {}
    for field in TOTAL_FIELDS + ("dropped_events",):
        if not isinstance(totals.get(field), int):
            ck.fail_msg(f"totals.{field}: missing or not an integer ({totals.get(field)!r})")
    ck.eq("totals.dropped_events", 0, totals.get("dropped_events"))
    if all(isinstance(totals.get(f), int) for f in ("allocations", "frees", "leaked_blocks")):
        ck.eq("totals: allocations - frees (blocks never released)", totals["leaked_blocks"],
              totals["allocations"] - totals["frees"])
    check_alternatives(ck, "totals", exp.get("totals"), totals)

    # The timeline ends with the heap the totals describe, within the process's life.
    timeline = report.get("timeline") or []
    if totals.get("allocations"):
        end = timeline[-1] if timeline else {}
        ck.eq("timeline[-1].allocations (all of them, at the end)", totals.get("allocations"),
              end.get("allocations"))
        ck.eq("timeline[-1].live_bytes (the leaked bytes, at the end)",
              totals.get("leaked_bytes"), end.get("live_bytes"))
        ck.checks += 1
        if not isinstance(end.get("t_ns"), int) or end["t_ns"] > proc.get("duration_ns", 0):
            ck.fail("timeline[-1].t_ns", f"at most duration_ns {proc.get('duration_ns')}",
                    end.get("t_ns"))
        # In time order, allocations never going down, and the peak on the curve: a row at
        # its moment with its bytes, and none higher.
        ck.checks += 1
        rows = [(r.get("t_ns"), r.get("allocations")) for r in timeline]
        if rows != sorted(rows):
            ck.fail("timeline", "rows in time order, allocations never decreasing", rows)
        ck.eq("timeline: a row at the peak (t_ns, live_bytes)",
              (totals.get("peak_t_ns"), totals.get("peak_bytes")),
              next(((r["t_ns"], r["live_bytes"]) for r in timeline
                    if r.get("t_ns") == totals.get("peak_t_ns")
                    and r.get("live_bytes") == totals.get("peak_bytes")), None))
        ck.eq("timeline: highest live_bytes is the peak", totals.get("peak_bytes"),
              max(r.get("live_bytes", 0) for r in timeline))

    # sites, summed by key
    keys = list(exp.get("sites", {}))
    agg = {k: dict.fromkeys(FIELDS + ("sites",), 0) for k in keys}
    matched = {k: [] for k in keys}
    unkeyed = []
    for site in report.get("sites") or []:
        key, index = key_of(site, keys)
        if key is None:
            unkeyed.append(site)
            continue
        matched[key].append((site, index))
        for field in FIELDS:
            value = site.get(field)
            agg[key][field] += value if isinstance(value, int) else 0
        agg[key]["sites"] += 1

    for key, want in exp.get("sites", {}).items():
        got = agg[key]
        if got["sites"] == 0:
            ck.fail(f"site {key}", "a site whose frames name it", "none")
            continue
        for field in FIELDS:
            ck.eq(f"site {key}: {field}", want[field], got[field])
        if "sites" in want:
            ck.eq(f"site {key}: distinct call stacks", want["sites"], got["sites"])
        for site, index in matched[key]:
            check_frames(ck, key, want, site, index, markers)

    # every site in a module whose figures are exact must be one of ours
    exact_modules = set(exp.get("modules", {}))
    for site in unkeyed:
        frames = site.get("frames") or []
        module = os.path.basename(str(frames[0].get("module"))) if frames else None
        if module in exact_modules:
            ck.fail_msg(f"unexpected site in {module}: {site.get('allocations')} allocations, "
                        f"{site.get('bytes')} bytes at {frames_text(frames)}")
        else:
            ck.info(f"runtime site: {site.get('allocations')} allocations, "
                    f"{site.get('bytes')} bytes at {frames_text(frames)}")

    # modules
    modules = {}
    for m in report.get("modules") or []:
        name = os.path.basename(str(m.get("path")))
        acc = modules.setdefault(name, {"allocations": 0, "bytes": 0})
        for field in ("allocations", "bytes"):
            acc[field] += m.get(field) if isinstance(m.get(field), int) else 0
    for name, want in exp.get("modules", {}).items():
        if name not in modules:
            ck.fail(f"module {name}", "a row in modules", f"none (have: {sorted(modules)})")
            continue
        for field, value in want.items():
            ck.eq(f"module {name}: {field}", value, modules[name][field])

    if ck.verbose:
        runtime = {f: (totals.get(f) or 0) - sum(a[f] for a in agg.values()) for f in FIELDS}
        ck.info(f"runtime (totals minus keyed sites): {runtime}")
    return totals


def check_frames(ck, key, want, site, index, markers):
    frames = site.get("frames") or []
    where = f"site {key} ({frames_text(frames)})"
    if want.get("frame0"):
        ck.eq(f"{where}: index of {key} in frames", 0, index)
    if "module" in want and frames:
        ck.eq(f"{where}: frames[0].module", want["module"],
              os.path.basename(str(frames[0].get("module"))))
    if "file" in want:
        ck.eq(f"{where}: frames[{index}].file", want["file"],
              os.path.basename(str(frames[index].get("file"))))
    names = want.get("frames", [])
    inlined = want.get("inlined", [])
    lines = want.get("lines", [])
    for j, name in enumerate(names):
        i = index + j
        if i >= len(frames):
            ck.fail(f"{where}: frames[{i}]", name, "no such frame")
            break
        frame = frames[i]
        ck.checks += 1
        if not dhat.name_matches(name, frame_function(frame)):
            ck.fail(f"{where}: frames[{i}].function", name, frame_function(frame))
        if j < len(inlined) and inlined[j] is not None:
            ck.eq(f"{where}: frames[{i}] ({name}).inlined", inlined[j], frame.get("inlined"))
        if j < len(lines) and lines[j] is not None:
            line = markers.get(lines[j]) if isinstance(lines[j], str) else lines[j]
            if line is None:
                ck.fail_msg(f"{where}: marker {lines[j]} not found in the source")
            else:
                ck.eq(f"{where}: frames[{i}] ({name}).line [{lines[j]}]", line,
                      frame.get("line"))


# ---- the DHAT half ----

def check_dhat(ck, exp, cmd, allocprof_totals):
    stdin = exp.get("stdin")
    try:
        prof = dhat.run_dhat(cmd, stdin_data=(stdin or "").encode(), timeout=RUN_TIMEOUT)
    except dhat.DhatUnavailable as e:
        ck.note(f"DHAT half skipped: {e}")
        return
    exit_exp = exp.get("exit", {"status": 0})
    ck.checks += 1
    if not returncode_ok(exit_exp, prof.returncode):
        ck.fail("program under DHAT: exit", expected_exit_text(exit_exp),
                dhat.describe_returncode(prof.returncode))

    want = exp.get("dhat") or {}
    informational = want.get("informational", False)
    for field in ("blocks", "bytes", "exit_blocks", "exit_bytes", "gmax_bytes"):
        if field not in want:
            continue
        got = prof.totals[field]
        soft = informational is True or (isinstance(informational, list)
                                         and field in informational)
        if soft:
            if got != want[field]:
                ck.note(f"DHAT total {field} is {got}, the expected file says {want[field]} "
                        f"(informational: depends on the environment)")
        else:
            ck.eq(f"DHAT total {field}", want[field], got)

    keys = list(exp.get("sites", {}))
    by_key = prof.by_key(keys)
    for key, site in exp.get("sites", {}).items():
        got = by_key.get(key)
        if "dhat" in site and site["dhat"] is None:
            ck.eq(f"DHAT site {key}: blocks (not run under valgrind)", 0,
                  got["blocks"] if got else 0)
            continue
        expect = site.get("dhat") or site
        if not got:
            ck.fail(f"DHAT site {key}", "a call stack naming it", "none")
            continue
        for field in FIELDS:
            ck.eq(f"DHAT site {key}: {field}", expect[field], got[DHAT_FIELD[field]])

    if allocprof_totals is not None and exp.get("allocprof_minus_dhat"):
        diff = {}
        for field in TOTAL_FIELDS:
            a = allocprof_totals.get(field)
            diff[field] = a - prof.totals[DHAT_FIELD[field]] if isinstance(a, int) else None
        ck.info(f"allocprof - DHAT: {diff}")
        check_alternatives(ck, "allocprof totals - DHAT totals", exp["allocprof_minus_dhat"],
                           diff)


def main():
    ap = argparse.ArgumentParser(
        description="Check allocprof's profile of a test workload against its expected "
                    "figures and against valgrind DHAT.")
    ap.add_argument("allocprof", help="the allocprof binary ('-' with --dhat-only)")
    ap.add_argument("workload", help="the workload binary")
    ap.add_argument("expected", help="its <name>.expected.json")
    ap.add_argument("--variant", help="check only this variant (default: all)")
    ap.add_argument("--no-dhat", action="store_true", help="skip the DHAT half")
    ap.add_argument("--dhat-only", action="store_true", help="only the DHAT half")
    ap.add_argument("--keep", metavar="DIR", help="keep profiles and reports in DIR")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    try:
        exp_all = load_expected(args.expected)
        variants = variants_of(exp_all, args.variant)
        markers = source_markers(exp_all, args.expected)
    except (OSError, ValueError) as e:
        print(f"FAIL: expected file: {e}")
        return 1

    workload = os.path.abspath(args.workload)
    if not os.path.exists(workload):
        print(f"SKIP: {args.workload} was not built")
        return SKIP
    allocprof = None
    if not args.dhat_only:
        allocprof = os.path.abspath(args.allocprof)
        if not os.access(allocprof, os.X_OK):
            print(f"FAIL: allocprof binary: expected an executable, got {args.allocprof!r}")
            return 1

    ck = Checker(args.verbose)
    name = os.path.basename(workload)
    with tempfile.TemporaryDirectory(prefix="ap-check-") as tmp:
        workdir = args.keep or tmp
        os.makedirs(workdir, exist_ok=True)
        for variant, exp in variants:
            label = f"{name}" + (f"[{variant}]" if variant else "")
            ck.prefix = f"{label}: "
            cmd = resolve_command(exp["command"], workload, exp)
            totals = None
            if allocprof:
                report = run_allocprof(ck, allocprof, cmd, exp, workdir, label)
                if report is not None:
                    if args.keep:
                        with open(os.path.join(workdir, f"{label}.json"), "w") as f:
                            json.dump(report, f, indent=1)
                    totals = check_report(ck, report, exp, cmd, workload, markers)
            if not args.no_dhat:
                dcmd = resolve_command(exp.get("dhat_command", exp["command"]), workload, exp)
                check_dhat(ck, exp, dcmd, totals)
    ck.prefix = ""
    verdict = "FAILED" if ck.failures else "passed"
    print(f"{name}: {verdict}: {ck.checks} checks, {ck.failures} failed")
    return 1 if ck.failures else 0


if __name__ == "__main__":
    sys.exit(main())
