#!/bin/sh
# Sampled mode against the exact figures of a full run of the same program: 200,000
# allocations of mixed sizes, sampled every 4 KiB on average, with five fixed seeds.  The
# estimates must be within 5% of the exact totals (allocations, bytes, frees, leaked and
# peak bytes) for every seed; the report must say they are estimates and give the
# interval.  The count of leaked blocks gets 15%: 70% of them are ~70-byte blocks, of
# which only ~250 are sampled at this interval (each stands for ~57 blocks), so that
# estimate has a standard error near 6% by itself -- byte sampling estimates bytes well
# and counts of small blocks less well, whatever the implementation.
#
# Then, at an interval of 1 byte every allocation is sampled with its own size as its
# weight, so a run of LIVE_SET (four threads holding 80,000 blocks at once, then freeing
# them all) must give exactly the figures of a full run: every sampled block's free found
# again in the agent's set of sampled blocks while it grows under four threads.
#
#   test-sampling.sh ALLOCPROF MIXED LIVE_SET
#
# SPDX-License-Identifier: MIT OR Apache-2.0
set -u
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
AP=$(abs "$1") PROG=$(abs "$2") LIVE_SET=$(abs "$3")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1

# JSON reports of PROG in full mode (STEMfull.json), at --sample 1 (STEM1.json) and at
# --sample INTERVAL with seeds 1 to 3 (STEMx-1.json ...): full_one_three PROG STEM INTERVAL.
full_one_three() {
        "$AP" run -q -o "$2full.approf" -- "$1" && "$AP" report "$2full.approf" --json >"$2full.json"
        "$AP" run -q --sample 1 -o "${2}1.approf" -- "$1" && "$AP" report "${2}1.approf" --json >"${2}1.json"
        for seed in 1 2 3; do
                ALLOCPROF_SAMPLE_SEED=$seed "$AP" run -q --sample "$3" -o "$2x.approf" -- "$1" &&
                        "$AP" report "$2x.approf" --json >"$2x-$seed.json"
        done
}

"$AP" run -q -o full.approf -- "$PROG" || { echo "FAIL: full run"; exit 1; }
"$AP" report full.approf --json >full.json
rc=0
for seed in 1 2 3 4 5; do
ALLOCPROF_SAMPLE_SEED=$seed "$AP" run -q --sample 4K -o sampled.approf -- "$PROG" ||
        { echo "FAIL: sampled run"; exit 1; }
"$AP" report sampled.approf --json >sampled.json
NO_COLOR=1 "$AP" report sampled.approf >sampled.txt
echo "--- seed $seed"
python3 - full.json sampled.json sampled.txt <<'PY' || rc=1
import json, sys
full = json.load(open(sys.argv[1]))
smp = json.load(open(sys.argv[2]))
text = open(sys.argv[3]).read()
fails = 0
def check(what, ok, detail=""):
    global fails
    if not ok:
        fails += 1
        print(f"FAIL: {what} {detail}")
check("full mode", full["mode"] == "full", full["mode"])
check("sampled mode", smp["mode"] == "sampled", smp["mode"])
check("interval", smp.get("sample_interval") == 4096, smp.get("sample_interval"))
check("estimated flag", smp.get("estimated") is True, smp.get("estimated"))
check("text says estimates", "estimate" in text.lower())
check("exact allocations", full["totals"]["allocations"] >= 200000, full["totals"]["allocations"])
for k in ("allocations", "bytes", "frees", "leaked_bytes", "leaked_blocks", "peak_bytes"):
    exact, est = full["totals"][k], smp["totals"][k]
    err = abs(est - exact) / exact
    print(f"{k:14} exact {exact:>12} estimated {est:>12}  error {100*err:5.2f}%")
    check(k, err <= (0.15 if k == "leaked_blocks" else 0.05), f"off by {100*err:.2f}%")
# The three call sites keep their share of bytes.
def by_fn(d):
    out = {}
    for s in d["sites"]:
        for f in s["frames"]:
            if f["function"] in ("small_block", "medium_block", "large_block"):
                out[f["function"]] = out.get(f["function"], 0) + s["bytes"]
                break
    return out
fb, sb = by_fn(full), by_fn(smp)
for fn in ("small_block", "medium_block", "large_block"):
    err = abs(sb.get(fn, 0) - fb[fn]) / fb[fn]
    check(f"{fn} bytes", err <= 0.10, f"off by {100*err:.2f}%")
sys.exit(1 if fails else 0)
PY
done

echo "--- live set, --sample 1 against full"
"$AP" run -q -o lfull.approf -- "$LIVE_SET" >/dev/null || { echo "FAIL: live set, full"; exit 1; }
"$AP" run -q --sample 1 -o l1.approf -- "$LIVE_SET" >/dev/null ||
        { echo "FAIL: live set, sampled"; exit 1; }
"$AP" report lfull.approf --json >lfull.json
"$AP" report l1.approf --json >l1.json
"$AP" report l1.approf | grep -q "mode sampled at every byte: every allocation recorded; counts are exact" ||
        { echo "FAIL: --sample 1: the text report does not say the counts are exact"; rc=1; }
python3 - lfull.json l1.json <<'PY' || rc=1
import json, sys
full, smp = (json.load(open(p)) for p in sys.argv[1:3])
fails = 0
if smp["mode"] != "sampled" or smp.get("sample_interval") != 1:
    print("FAIL: mode", smp["mode"], smp.get("sample_interval"))
    fails += 1
if smp.get("estimated") is not False:  # every allocation recorded: exact, and said so
    print("FAIL: --sample 1 reported as estimates")
    fails += 1
for k in ("allocations", "bytes", "frees", "freed_bytes", "leaked_blocks", "leaked_bytes",
          "peak_bytes", "dropped_events", "unmatched_frees", "untracked_samples"):
    f, s = full["totals"][k], smp["totals"][k]
    print(f"{k:16} full {f:>12} sampled {s:>12}")
    if f != s:
        print(f"FAIL: {k} differs")
        fails += 1
if full["totals"]["allocations"] < 80000 or full["totals"]["leaked_blocks"] > 16:
    print("FAIL: the live set program did not run as written")
    fails += 1
sys.exit(1 if fails else 0)
PY

# Threads are counted in sampled mode too, though most never send a sample.
"$AP" run -q --sample 1G -o lbig.approf -- "$LIVE_SET" >/dev/null && "$AP" report lbig.approf --json >lbig.json
python3 -c 'import json,sys; a, b = (json.load(open(f))["totals"]["threads"] for f in sys.argv[1:]); print("threads: full", a, "--sample 1G", b); sys.exit(0 if a == b and a >= 5 else 1)' lfull.json lbig.json ||
        { echo "FAIL: sampled mode counts threads differently"; rc=1; }

# A sampled run that took no sample is still a sampled run: its figures are estimates.
echo "--- sampled, no sample taken"
printf '#include <stdlib.h>\nint main(void){void *p = malloc(10); free(p); return 0;}\n' >tiny.c
if cc -O2 -o tiny tiny.c; then
        "$AP" run -q --sample 1M -o tiny.approf -- ./tiny && "$AP" report tiny.approf --json >tiny.json
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); ok=(d["mode"], d["estimated"], d["sample_interval"]) == ("sampled", True, 1048576); print("mode", d["mode"], d["estimated"], d["sample_interval"]); sys.exit(0 if ok else 1)' tiny.json ||
                { echo "FAIL: a sampled run without samples is labelled as exact"; rc=1; }
fi

# Temporary blocks (freed by their thread before it allocated anything else; frees of
# other blocks in between do not matter): the collector cannot see them in sampled mode,
# where it only gets the sampled allocations, so the agent tells.  Exact at --sample 1
# (but for dropped records), within 5% at 4 KiB (the old estimate, from the next sampled allocation, was 20 times
# too high on sqlite3).
echo "--- temporary blocks"
cat >temporary.c <<'EOF_C'
#include <stdlib.h>
#include <string.h>
#define N 200000
__attribute__((noinline)) static void *scratch(size_t n)
{
        void *p = malloc(n);
        memset(p, 1, n < 64 ? n : 64);
        return p;
}
int main(void)
{
        static void *keep[64];
        unsigned long long x = 88172645463325252ull;
        for (int i = 0; i < N; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                size_t n = 16 + x % 4000;
                void *t = scratch(n); /* temporary */
                if (i % 4 == 0) {     /* a free in between */
                        free(keep[i % 64]);
                        keep[i % 64] = NULL;
                }
                free(t);
                if (i % 2 == 0) { /* kept a while: not temporary */
                        free(keep[(i / 2) % 64]);
                        keep[(i / 2) % 64] = malloc(n / 2 + 8);
                }
        }
        return 0;
}
EOF_C
if cc -O2 -o temporary temporary.c; then
        full_one_three ./temporary t 4K
        python3 - tfull.json t1.json tx-1.json tx-2.json tx-3.json <<'PY' || rc=1
import json, sys
tot = [json.load(open(p))["totals"] for p in sys.argv[1:]]
full, one, *est = (t["temporary"] for t in tot)
dropped = tot[1]["dropped_events"]
print(f"temporary: full {full}, --sample 1 {one} ({dropped} events dropped), --sample 4K {est}")
fails = 0
if not 200000 <= full <= 200010:
    print("FAIL: full mode counts", full, "temporary blocks, not 200000"); fails += 1
# Sampled mode drops rather than waits for ring space: at --sample 1 only what was
# dropped may differ.
if not full - dropped <= one <= full:
    print("FAIL: --sample 1 differs from full mode by more than its drops"); fails += 1
for e in est:
    if abs(e - full) > 0.05 * full:
        print(f"FAIL: estimate {e} off by more than 5%"); fails += 1
sys.exit(1 if fails else 0)
PY
else
        echo "FAIL: cannot build the temporary-blocks program"
        rc=1
fi

# Zero-size blocks (malloc(0) and the like return a block, which full mode counts) take
# one byte of the sampled stream and add no bytes: they used to take none, so none was
# ever sampled and every count of blocks left them out, at --sample 1 too (here 60% of
# the blocks, which the estimates missed by 80%).  Exact at --sample 1; at 16 bytes the
# 48,000 zero-size blocks give ~3,000 samples, ~1,000 of them for the leaked and the
# temporary ones (a 3.2% standard error on those counts), so 15% is a wide bound.
echo "--- zero-size blocks"
cat >zero.c <<'EOF_C'
#include <stdlib.h>
#define N 60000
static void *keep[N];
int main(void)
{
        for (int i = 0; i < N; i++) {
                void *p = NULL;
                switch (i % 5) {
                case 0: p = malloc(0); break;
                case 1: p = calloc(0, 8); break;
                case 2: p = realloc(NULL, 0); break;
                case 3: p = aligned_alloc(64, 0); break;
                default: p = malloc(16 + i % 200); break;
                }
                free(keep[(i * 7) % N]); /* some are freed, the others leak */
                keep[i] = i % 3 ? p : NULL;
                if (i % 3 == 0)
                        free(p);
        }
        return 0;
}
EOF_C
if cc -O0 -o zero zero.c; then
        full_one_three ./zero z 16
        python3 - zfull.json z1.json zx-1.json zx-2.json zx-3.json <<'PY' || rc=1
import json, sys
full, one, *est = (json.load(open(p))["totals"] for p in sys.argv[1:])
keys = ("allocations", "bytes", "frees", "freed_bytes", "leaked_blocks", "leaked_bytes",
        "temporary")
fails = 0
if full["allocations"] < 60000:
    print("FAIL: the zero-size program did not run as written"); fails += 1
for k in keys:
    print(f"{k:14} full {full[k]:>8} --sample 1 {one[k]:>8} --sample 16 {[e[k] for e in est]}")
    if one["dropped_events"] == 0 and one[k] != full[k]:
        print(f"FAIL: {k} differs at --sample 1"); fails += 1
    for e in est:
        if abs(e[k] - full[k]) > 0.15 * full[k]:
            print(f"FAIL: {k} estimate {e[k]} off by more than 15%"); fails += 1
sys.exit(1 if fails else 0)
PY
else
        echo "FAIL: cannot build the zero-size program"
        rc=1
fi
exit $rc
