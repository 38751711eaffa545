#!/usr/bin/env python3
# The benchmark harness itself: a one-round run of the churn workload, checked for what
# it must print, and its column order checked for balance.
#
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Check bench/run.

    check_bench.py SOURCE_ROOT ALLOCPROF AGENT

1. The Williams design behind the column order: for 2 to 7 columns every row is a
   permutation and every column comes right after every other one equally often; the
   bench's five columns get ten different orders.
2. `bench/run -n 1 -w churn --no-heaptrack --no-scaling`: exits 0, prints the churn row
   of every table, counts exactly 1,500,004 allocations (the workload's own figure: 1.5 M
   iterations plus its four set-up allocations), judges the drain rate, says heaptrack
   was not run, and `--load` of its `--save` file prints the same report again.
"""
import collections
import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

failures = []


def check(cond, what):
    print("%s: %s" % ("ok" if cond else "FAIL", what))
    if not cond:
        failures.append(what)


def load_bench(root):
    path = os.path.join(root, "bench", "run")
    loader = importlib.machinery.SourceFileLoader("bench_run", path)
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def check_design(bench):
    for n in range(2, 8):
        rows = bench.williams_rows(n)
        check(len(rows) == (n if n % 2 == 0 else 2 * n), "%d columns: %d rows" % (n, len(rows)))
        check(all(sorted(r) == list(range(n)) for r in rows), "%d columns: every row a permutation" % n)
        after = collections.Counter((a, b) for r in rows for a, b in zip(r, r[1:]))
        check(len(after) == n * (n - 1) and len(set(after.values())) == 1,
              "%d columns: every column after every other one equally often" % n)
    cols = ["base", "dormant", "full", "sampled", "heaptrack"]
    orders = {tuple(bench.run_order(cols, rep, "churn")) for rep in range(10)}
    check(len(orders) == 10, "ten rounds, ten different orders of the five columns")


def main():
    root, allocprof, agent = sys.argv[1:4]
    bench = load_bench(root)
    check_design(bench)

    with tempfile.TemporaryDirectory(prefix="allocprof-check-bench.") as tmp:
        saved = os.path.join(tmp, "bench.json")
        cmd = [os.path.join(root, "bench", "run"), "-n", "1", "-w", "churn", "--no-heaptrack",
               "--no-scaling", "--quiet-wait", "0", "--allocprof", allocprof, "--agent", agent,
               "--workdir", os.path.join(tmp, "work"), "--save", saved]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=600)
        check(r.returncode == 0, "bench/run exits 0" +
              ("" if r.returncode == 0 else " (it exited %d: %s)" % (r.returncode, r.stderr.strip()[-500:])))
        out = r.stdout
        rows = [l for l in out.splitlines() if l.startswith("| churn |")]
        # workloads, time, where the time goes, memory, drain rate
        check(len(rows) == 5, "a churn row in each of the five tables (%d)" % len(rows))
        check(re.search(r"^\| churn \| 1\.50 M \|", out, re.M) is not None,
              "the time table counts 1.50 M allocations")
        check(re.search(r"^\| churn \| 3\.00 M \|.*\| 1,500,004 / – \|$", out, re.M) is not None,
              "the drain table: 3.00 M events, 1,500,004 allocations, heaptrack's count absent")
        check(re.search(r"^- \*\*(PASS|FAIL)\*\* collector drains .*: churn [0-9.]+ M/s (PASS|FAIL)$",
                        out, re.M) is not None, "the drain rate is judged")
        check("heaptrack not run" in out, "says heaptrack was not run")
        r2 = subprocess.run([os.path.join(root, "bench", "run"), "--load", saved],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        check(r2.returncode == 0 and r2.stdout == out, "--load of the --save file prints the same report")

    print("%d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
