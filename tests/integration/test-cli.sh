#!/bin/sh
# End-to-end checks of the allocprof command line as a user meets it: the examples,
# exit statuses and error messages, signal forwarding, unchanged program output, the
# agent's exported symbols, and an installed copy finding its agent by itself.
#
#   test-cli.sh ALLOCPROF AGENT SIMPLE DEMO BUILD_ROOT SOURCE_ROOT
#
# SPDX-License-Identifier: MIT OR Apache-2.0
set -u
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
AP=$(abs "$1") AGENT=$(abs "$2") SIMPLE=$(abs "$3") DEMO=$(abs "$4") BUILD=$(abs "$5") SRC=$(abs "$6")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
# Inflated debug files go to a cache of this test's own, not the user's.
export ALLOCPROF_CACHE_DIR="$T/cache"
. "$SRC/tests/integration/checks.sh"
edit_profile() { # in out python-statement-on-d
        python3 -c 'import gzip,json,sys; d=json.load(gzip.open(sys.argv[1])); exec(sys.argv[3]); gzip.open(sys.argv[2],"wt").write(json.dumps(d))' "$@"
}
json_of() { # profile python-expression-on-d (over its JSON report)
        "$AP" report "$1" --json | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"
}
json() { # file python-expression-on-d
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

# --- simple: exact figures, leak attributed to the right line -----------------------
"$AP" run -o simple.approf -- "$SIMPLE" 2>simple.err
check_eq "simple exit" 0 $?
check_contains "simple summary" simple.err "profile written to simple.approf"
"$AP" report simple.approf --json >simple.json
check_eq "report --json exit" 0 $?
check_eq "simple totals" "3 422 2 1 12 400" \
        "$(json simple.json '" ".join(str(d["totals"][k]) for k in ("allocations","bytes","frees","leaked_blocks","leaked_bytes","peak_bytes"))')"
check_eq "simple leak site" "copy_text main" \
        "$(json simple.json '" ".join(f["function"] for f in [s for s in d["sites"] if s["leaked_blocks"]][0]["frames"][:2])')"
check_eq "simple leak line" "$(grep -n 'greeting = copy_text' "$SRC/examples/simple.c" | cut -d: -f1)" \
        "$(json simple.json '[f["line"] for f in [s for s in d["sites"] if s["leaked_blocks"]][0]["frames"] if f["function"]=="main"][0]')"
# Folded stacks (flame graphs): a line per site, outermost frame first, its --sort figure.
"$AP" report simple.approf --folded >simple.folded
check_eq "--folded exit" 0 $?
check_eq "--folded: the sites' bytes add up to the total" 422 \
        "$(awk '{ s += $NF } END { print s }' simple.folded)"
check_eq "--folded --sort allocations: the calls add up" 3 \
        "$("$AP" report simple.approf --folded --sort allocations | awk '{ s += $NF } END { print s }')"
check_eq "--folded --sort leaked: the one leak, ending in main;copy_text" "1 main;copy_text 12" \
        "$("$AP" report simple.approf --folded --sort leaked >leak.folded; wc -l <leak.folded | tr -d ' ') $(sed -n 's/.*;\(main;copy_text\) \([0-9]*\)$/\1 \2/p' leak.folded)"
check_eq "--folded: outermost frame first" "_start" "$(head -1 simple.folded | cut -d';' -f1)"
"$AP" report simple.approf --folded --json >/dev/null 2>both.err
check_eq "--folded with --json: a usage error" 2 $?
check_contains "--folded with --json: said" both.err "choose one"
# A hostile name cannot add a frame or a line, nor reach the terminal.
edit_profile simple.approf hostile.approf 'd["strings"]=[("a;b\x1b[31m\nc" if s=="copy_text" else s) for s in d["strings"]]'
check_eq "--folded: separators and controls in a name are replaced" "a:b?[31m?c 12" \
        "$("$AP" report hostile.approf --folded --sort leaked | sed 's/.*;//')"
check_eq "schema" "1 allocprof full" "$(json simple.json 'd["schema_version"], d["tool"]["name"], d["mode"]')"
"$AP" report simple.approf ./simple.approf --json >twice.json 2>twice.err
check_eq "the same file named twice counts once" "3 422" \
        "$(json twice.json '" ".join(str(d["totals"][k]) for k in ("allocations","bytes"))')"
check_contains "the same file named twice: note" twice.err "./simple.approf is named twice: read once"
# One profile read through the merge (named twice, or --all of a run that started
# nothing) is the same report as the file alone: the peak's moment and the timeline too.
check_eq "the same file named twice: the report of the file" "$(cat simple.json)" "$(cat twice.json)"
mkdir one && (cd one && "$AP" run -q -o s.approf -- "$SIMPLE" && "$AP" report --all --json >all.json &&
        "$AP" report s.approf --json >s.json)
check_eq "report --all of a run of one process: the report of its profile" "$(cat one/s.json)" \
        "$(cat one/all.json)"
check_true "report --all of one process: peak moment and timeline kept" \
        "$(json one/all.json 'd["totals"]["peak_t_ns"] > 0 and len(d["timeline"]) > 0')"
"$AP" run -q -o simple2.approf -- "$SIMPLE"
"$AP" report simple.approf simple2.approf >runs.txt
check_contains "profiles of two runs: said so" runs.txt "merged from 2 profiles of different runs"
check_eq "profiles of two runs: summed" "6 844" \
        "$("$AP" report simple.approf simple2.approf --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["totals"]["allocations"], d["totals"]["bytes"])')"
# Profiles sampled at different intervals (and a full one, whose exact figures are those
# of an interval of 1 byte): the merge names them all.
"$AP" run -q --sample 1K -o simple-1k.approf -- "$SIMPLE"
"$AP" run -q --sample 512K -o simple-512k.approf -- "$SIMPLE"
check_eq "merged at 1K and 512K (and full): sampled, from 1 byte" "sampled 1 524288" \
        "$("$AP" report simple.approf simple-1k.approf simple-512k.approf --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["mode"], d["sample_interval_min"], d["sample_interval_max"])')"
"$AP" report simple-512k.approf simple-1k.approf >intervals.txt
check_contains "merged at 1K and 512K: the text says both" intervals.txt \
        "one sample per 1.00 KiB to 512.00 KiB allocated on average"
check_eq "one interval: the JSON's smallest and largest are it" "524288 524288 524288" \
        "$("$AP" report simple-512k.approf --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["sample_interval"], d["sample_interval_min"], d["sample_interval_max"])')"
cp simple.approf simple-copy.approf
"$AP" report simple.approf simple-copy.approf --json >copy.json 2>copy.err
check_eq "a copy of a profile counts once" "3 422" \
        "$(json copy.json '" ".join(str(d["totals"][k]) for k in ("allocations","bytes"))')"
check_contains "a copy of a profile: note" copy.err "simple-copy.approf is the profile of a process image already read"

# Default output name and report's default file (newest in the directory).
"$AP" run -q -- "$SIMPLE"
check_eq "default-name run exit" 0 $?
n=$(ls allocprof.simple.*.approf 2>/dev/null | wc -l)
check_eq "default profile name allocprof.simple.<pid>.approf" 1 "$n"
"$AP" report --json >default.json
check_eq "report with no FILE" 3 "$(json default.json 'd["totals"]["allocations"]')"
NO_COLOR=1 "$AP" report >report.txt
check_contains "text report" report.txt "copy_text"
checks=$((checks + 1))
if grep -q "$(printf '\033')" report.txt; then fail "colour escapes in a non-tty report"; fi

# --- demo: every part of the report ----------------------------------------------------
"$AP" run -o demo.approf -- "$DEMO" >demo.out 2>demo.err
check_eq "demo exit" 0 $?
"$AP" report demo.approf --json >demo.json
check_eq "demo has 2+ modules with allocations" True \
        "$(json demo.json 'len([m for m in d["modules"] if m["allocations"] > 0]) >= 2')"
check_eq "demo shared library in modules" True \
        "$(json demo.json 'any("libdemoshapes" in m["path"] and m["allocations"] > 0 for m in d["modules"])')"
check_eq "demo leaks something" True "$(json demo.json 'd["totals"]["leaked_blocks"] > 0')"
check_eq "demo threads" True "$(json demo.json 'd["totals"].get("threads", 2) >= 2')"
check_eq "demo deep site parse_record<-main" True \
        "$(json demo.json 'any([f["function"] for f in s["frames"]][:4].count("parse_record") for s in d["sites"])')"
NO_COLOR=1 "$AP" report demo.approf --top 3 >demo.txt
check_contains "demo text: modules" demo.txt "libdemoshapes"
check_eq "--top 3 sites" 3 "$("$AP" report demo.approf --json --top 3 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sites"]))')"
"$AP" report demo.approf --json --sort leaked >leaked.json
check_eq "--sort leaked puts a leak first" True "$(json leaked.json 'd["sites"][0]["leaked_bytes"] > 0')"

# --- exact demangled names: C++ with parameters, Rust legacy and v0 without hashes ------
names() { # workload -> every frame function of its profile, one per line
        "$AP" run -q -o names.approf -- "$BUILD/tests/workloads/$1" >/dev/null 2>&1
        "$AP" report names.approf --json |
                python3 -c 'import json,sys; [print(f["function"]) for s in json.load(sys.stdin)["sites"] for f in s["frames"] if f["function"]]'
}
names containers >cpp.names
check_contains "C++ method demangled with parameters" cpp.names "ns::Widget::build(int)"
for rs in rustprog rustprog_v0; do
        [ -x "$BUILD/tests/workloads/$rs" ] || continue
        names $rs >$rs.names
        check_contains "$rs: rustprog::make_boxes named exactly" $rs.names "rustprog::make_boxes"
        check_eq "$rs: exact line" yes "$(grep -qx 'rustprog::make_boxes' $rs.names && echo yes)"
        checks=$((checks + 1))
        if grep -Eq '::h[0-9a-f]{16}$|^_R|^_ZN' $rs.names; then fail "$rs: mangled name or hash left: $(grep -E '::h[0-9a-f]{16}$|^_R|^_ZN' $rs.names | head -3)"; fi
done

# --- both unwinders on code with frame pointers ------------------------------------------
for u in dwarf fp; do
        "$AP" run -q --unwind $u -o fp.approf -- "$BUILD/tests/workloads/fp_chain"
        check_eq "--unwind $u exit" 0 $?
        check_eq "--unwind $u chain" "3 leaf_alloc outer main" \
                "$(json_of fp.approf '[" ".join([str(s["allocations"])] + [f["function"] for f in s["frames"][:3]]) for s in d["sites"] if s["frames"][0]["function"] == "leaf_alloc"][0]')"
done
# A library dlopen'ed since the agent last listed the modules: the frame-pointer walk
# stopped at its first return address (not in a known module), and a stack that began
# there was an unknown site.
"$AP" run -q --unwind fp -o fp-dl.approf -- "$BUILD/tests/workloads/dlopen_host" \
        "$BUILD/tests/workloads/libdlplugin.so"
check_eq "--unwind fp, dlopen: exit" 0 $?
check_eq "--unwind fp, dlopen: frames of the library" "10 plugin_make libdlplugin.so" \
        "$(json_of fp-dl.approf '"|".join(" ".join([str(s["allocations"]), s["frames"][0]["function"], s["frames"][0]["module"].split("/")[-1]]) for s in d["sites"] if s["frames"] and s["frames"][0]["module"] and "dlplugin" in s["frames"][0]["module"])')"
"$AP" run -q --unwind bogus -- true 2>/dev/null
check_eq "--unwind bogus" 2 $?
"$AP" run -q --sample 12X -- true 2>/dev/null
check_eq "--sample 12X" 2 $?

# --- blocks that live for seconds: their frees count, however long they lived ------------
"$AP" run -o long.approf -- "$BUILD/tests/workloads/longlived" 2>long.err
check_eq "longlived exit" 0 $?
check_eq "blocks freed 4.5 s after their allocation are freed, not leaked" "4 10000 3 6000 1 4000" \
        "$(json_of long.approf '" ".join(str(d["totals"][k]) for k in ("allocations", "bytes", "frees", "freed_bytes", "leaked_blocks", "leaked_bytes"))')"

# --- threads whose first allocations are inside pthread_getattr_np (its lock held) --------
# The agent learned a new thread's stack bounds with pthread_getattr_np at its first
# record: from inside the program's own call, the thread waited for itself for ever.
# Full mode, and sampled mode at one byte (every allocation a sample).
for mode in 0 1; do
        timeout -k 5 60 "$AP" run -q --sample $mode -o getattr$mode.approf \
                -- "$BUILD/tests/workloads/getattr_first" >getattr$mode.out 2>getattr$mode.err
        check_eq "pthread_getattr_np in a thread's first allocation (--sample $mode): exit" 0 $?
        check_eq "pthread_getattr_np in a thread's first allocation (--sample $mode): output" ok \
                "$(cat getattr$mode.out)"
done
check_eq "pthread_getattr_np in a thread's first allocation: the threads' own blocks" "8 800 8" \
        "$(json_of getattr0.approf '" ".join(str(sum(s[k] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "thread_main")) for k in ("allocations", "bytes", "frees"))')"
check_eq "pthread_getattr_np in a thread's first allocation: their stacks" True \
        "$(json_of getattr0.approf 'all([f["function"] for f in s["frames"]][:2] == ["thread_main", "start_thread"] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "thread_main")')"

# --- a stack deeper than the agent records: the site says it was cut ---------------------
"$AP" run -q -o deep.approf -- "$BUILD/tests/workloads/deep_stack"
check_eq "deep stack: exit" 0 $?
check_eq "deep stack: the 200-deep site is cut at 64 frames, the 5-deep one whole" \
        "False 6 True 64" \
        "$(json_of deep.approf '" ".join("%s %d" % (s["truncated"], sum(f["function"] == "recurse" for f in s["frames"])) for s in sorted(d["sites"], key=lambda s: len(s["frames"])) if s["frames"][0]["function"] == "recurse")')"
"$AP" report deep.approf >deep.txt
check_contains "deep stack: the text report says so" deep.txt "... stack cut at 64 frames: its outer callers were not recorded"
edit_profile deep.approf edited.approf 'd["sites"]["truncated"] = [len(d["sites"]["popped"])]'
"$AP" report edited.approf >/dev/null 2>edited.err
check_eq "hand-edited sites.truncated out of range: exit status" 1 $?
check_contains "hand-edited sites.truncated out of range: message" edited.err "sites.truncated[0]:"

# --- threads racing for slots and their mappings: every event kept ------------------------
# 3 rounds of 96 threads released by a barrier at once, each 50 allocations of 24 bytes
# (the last kept): the agent maps the rings as threads first claim them, the collector as
# it sees them.  Full mode and sampled at one byte, both exact.
for mode in 0 1; do
        "$AP" run -q --sample $mode -o burst$mode.approf -- "$BUILD/tests/workloads/thread_burst"
        check_eq "thread burst (--sample $mode): exit" 0 $?
        check_eq "thread burst (--sample $mode): burst_alloc's blocks, nothing dropped or invalid" \
                "14400 345600 288 6912 0 0 289" \
                "$(json_of burst$mode.approf '" ".join(str(x) for x in [sum(s[k] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "burst_alloc") for k in ("allocations", "bytes", "leaked_blocks", "leaked_bytes")] + [d["totals"]["dropped_events"], d["totals"]["invalid_records"], d["totals"]["threads"]])')"
done

# --- waves of short threads: each slot's next owner starts at the ring's beginning ---------
# 20,000 threads, 16 at a time, 20 allocations of 40 bytes each.  Shared memory resident in
# the program at its end: about 5 MB (head, stack heap, module log, the first pages of some
# 20 rings); 26 MB when every owner went on from where the last one stopped.
"$AP" run -q -o churn.approf -- "$BUILD/tests/workloads/thread_churn" churn.shm
check_eq "thread churn: exit" 0 $?
check_eq "thread churn: churn_alloc's blocks, all freed, nothing dropped or invalid" \
        "400000 16000000 400000 0 0" \
        "$(json_of churn.approf '" ".join(str(x) for x in [sum(s[k] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "churn_alloc") for k in ("allocations", "bytes", "frees")] + [d["totals"]["dropped_events"], d["totals"]["invalid_records"]])')"
check_eq "thread churn: shared memory resident below 12 MB" yes \
        "$(awk '{ print ($1 > 0 && $1 < 12288) ? "yes" : "no: " $1 " kB" }' churn.shm)"
# The same while the collector stands still for half a second (run stopped): every slot
# ends up taken by threads that ended, whose records it has not read.  Full mode waits for
# it to hand slots back, as it waits for ring space; new threads dropped all they did
# (702,040 events).
"$AP" run -q -o churn-stop.approf -- sh -c 'r=$PPID; (sleep 0.1; kill -STOP $r; sleep 0.5; kill -CONT $r) &
        exec "$0" "$@"' "$BUILD/tests/workloads/thread_churn" churn-stop.shm
check_eq "thread churn, collector stopped: exit" 0 $?
check_eq "thread churn, collector stopped: churn_alloc's blocks, all freed, nothing dropped or invalid, waited" \
        "400000 16000000 400000 0 0 True" \
        "$(json_of churn-stop.approf '" ".join(str(x) for x in [sum(s[k] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "churn_alloc") for k in ("allocations", "bytes", "frees")] + [d["totals"]["dropped_events"], d["totals"]["invalid_records"], d["process"]["ring_waits"] > 0])')"

# --- hundreds of threads waiting for the collector at once: none starves it ---------------
# 20 waves of 500 threads alive together (100 allocations of 32 bytes each: from the third
# wave on they wait for the slots of the wave before), then 200 threads allocating 50,000
# blocks of 48 bytes each at full speed (they wait for ring space).  Waiters that each
# woke every 50 us left the collector no CPU on two cores: waits ran out, 3.7 M events
# dropped.
"$AP" run -q -o waves.approf -- "$BUILD/tests/workloads/thread_waves"
check_eq "thread waves: exit" 0 $?
check_eq "thread waves: every block of waves_alloc and fast_alloc, all freed, nothing dropped" \
        "1000000 1000000 10000000 10000000 0 0" \
        "$(json_of waves.approf '" ".join(str(x) for x in [sum(s[k] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == f) for f in ("waves_alloc", "fast_alloc") for k in ("allocations", "frees")] + [d["totals"]["dropped_events"], d["totals"]["invalid_records"]])')"

# --- fork and exec: one profile per process image, --no-follow, report --all ---------------
mkdir fork && cd fork || exit 1
"$AP" run -o main.approf -- "$BUILD/tests/workloads/forker" 2>fork.err
check_eq "forker exit" 0 $?
# parent + 3 workers + the image `true` exec'ed by the third worker
check_eq "profiles written" 5 "$(ls *.approf | wc -l)"
check_eq "run lists the other profiles" 4 "$(grep -c '^allocprof: pid .* profile written to' fork.err)"
check_eq "parent figures" "10 640 10 0" \
        "$(json_of main.approf '" ".join(str(d["totals"][k]) for k in ("allocations","bytes","frees","leaked_blocks"))')"
n5=0
for f in allocprof.forker.*.approf; do
        [ "$(json_of "$f" 'd["totals"]["allocations"], d["totals"]["leaked_bytes"]')" = "5 500" ] && n5=$((n5 + 1))
done
check_eq "three workers with 5 leaked blocks of 100 bytes each" 3 "$n5"
check_eq "the exec'ed image has its own profile" 1 "$(ls allocprof.true.*.approf 2>/dev/null | wc -l)"
"$AP" report --all --json >all.json
check_eq "report --all merges the run" "5 True" "$(json all.json 'd["process"]["merged_from"], d["totals"]["allocations"] >= 25')"
check_eq "report --all shows the program" 0 "$(json all.json 'd["process"]["exit_status"]')"
drain_sum=0
for f in allocprof.*.approf main.approf; do drain_sum=$((drain_sum + $(json_of "$f" 'd["process"]["drain_cpu_ns"]'))); done
check_eq "report --all: the drain time of the whole run" "$drain_sum" "$(json all.json 'd["process"]["drain_cpu_ns"]')"
"$AP" report main.approf allocprof.forker.*.approf --json >two.json
check_eq "report FILE FILE merges" "4 25" "$(json two.json 'd["process"]["merged_from"], d["totals"]["allocations"]')"
cd .. && mkdir execd && cd execd || exit 1
"$AP" run -q -o main.approf -- sh -c 'ls / >/dev/null; exec ls / >/dev/null'
check_eq "report --all after an exec: 3 images, 2 threads (the exec'ed image goes on in its thread)" "3 2" \
        "$("$AP" report --all --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["process"]["merged_from"], d["totals"]["threads"])')"
check_eq "the program's last image, exec'ed by the shell: its own command line, not the shell's" \
        "ls /" "$(json_of main.approf '" ".join(d["process"]["command"])')"
# --- report PID once the process has ended: the profile written for it -------------------
cd .. && mkdir ended && cd ended || exit 1
"$AP" run -q -- sh -c 'echo $$ >prog.pid; ls / >/dev/null' &
rp=$!
wait "$rp"
prog=$(cat prog.pid)
"$AP" report "$rp" --json >byrun.json 2>byrun.err
check_eq "report PID of an ended 'allocprof run' (\$!): its program's profile" "0 $prog" \
        "$? $(json byrun.json 'd["process"]["pid"]')"
check_contains "report PID of an ended 'allocprof run': says so" byrun.err \
        "allocprof: pid $rp was 'allocprof run'; showing allocprof."
check_contains "report PID of an ended 'allocprof run': names the program" byrun.err \
        ".$prog.approf, the profile of its program, pid $prog"
"$AP" report "$prog" >byprog.txt 2>byprog.err
check_eq "report PID of an ended program" "0 1" "$? $(grep -c "pid $prog (parent $rp), exited with status 0" byprog.txt)"
check_contains "report PID of an ended program: says which file" byprog.err \
        "(the newest profile of pid $prog here)"
# An 'allocprof run' whose program has ended while run has not written its profile yet
# (stopped here: a million call sites take seconds to write): snapshot and attach say
# so, not that the program should be started with the agent.
"$AP" run -q -o stopped.approf -- sh -c 'kill -STOP $PPID; exit 0' &
rp=$!
while [ "$(awk '/^State:/ { print $2 }' /proc/$rp/status 2>/dev/null)" != T ]; do sleep 0.05; done
"$AP" snapshot "$rp" -o stopped.snap.approf 2>stopped.err
check_eq "snapshot of an 'allocprof run' whose program ended" 1 $?
check_contains "snapshot of an 'allocprof run' whose program ended: says so" stopped.err \
        "allocprof: pid $rp is allocprof (an 'allocprof run'?), and no program it profiles is running now"
check_eq "snapshot of an 'allocprof run' whose program ended: not 'no agent'" 0 \
        "$(grep -c 'has no allocprof agent' stopped.err)"
kill -CONT "$rp"
wait "$rp"
check_eq "the stopped 'allocprof run' then ends as its program did" 0 $?
# Written with -o: the file's name does not say the pid, the profile does.
"$AP" run -q -o named.approf -- sh -c 'echo $$ >prog2.pid; ls / >/dev/null' &
rp2=$!
wait "$rp2"
prog2=$(cat prog2.pid)
exit_pid() { # PID -> "exit_status pid" of the profile report PID shows
        "$AP" report "$1" --json 2>/dev/null |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["process"]["exit_status"], d["process"]["pid"])'
}
check_eq "report PID of an ended program written with -o" "0 $prog2" "$(exit_pid "$prog2")"
check_eq "report PID of an ended 'allocprof run -o'" "0 $prog2" "$(exit_pid "$rp2")"
# No profile of it here: one line that says where it looked, exit 1.
mkdir none && (cd none && "$AP" report "$prog" >/dev/null 2>../none.err)
check_eq "report PID without its profile here: exit 1, one line" "1 1" "$? $(wc -l <none.err)"
check_contains "report PID without its profile here: what was looked for" none.err \
        "allocprof: no profile of pid $prog in the current directory (looked for allocprof.*.$prog.approf, then in every *.approf"
cd .. && mkdir spawn && cd spawn || exit 1
"$AP" run -q -o main.approf -- "$BUILD/tests/workloads/spawner"
check_eq "spawner exit" 0 $?
check_eq "posix_spawn, vfork and system() each profiled" "3 1" \
        "$(ls allocprof.true.*.approf 2>/dev/null | wc -l) $(ls allocprof.*sh.*.approf 2>/dev/null | wc -l)"
check_eq "spawner's own block" "1 33" "$(json_of main.approf 'd["totals"]["allocations"], d["totals"]["bytes"]')"
cd .. && mkdir pipeline && cd pipeline || exit 1
out=$("$AP" run -q -o main.approf -- sh -c 'seq 100 | sort -rn | head -1')
check_eq "pipeline output and exit" "100 0" "$out $?"
check_eq "every program of the pipeline profiled" "1 1 1" \
        "$(ls allocprof.seq.*.approf | wc -l) $(ls allocprof.sort.*.approf | wc -l) $(ls allocprof.head.*.approf | wc -l)"
cd .. && mkdir children && cd children || exit 1
# Children one after another: each one's profile is made as it ends, and what the
# collector held for it let go.  allocprof run's resident memory after 20 and after 420
# children (a second after the last, for the profiles still being made on a loaded
# machine): kept to the end, each child held some 110 KB more (44 MB for 400); now about
# 7 KB, its finished profile.
for n in 20 420; do
        "$AP" run -q -o main.approf -- sh -c 'i=0; while [ $i -lt $2 ]; do "$1"; i=$((i + 1)); done
                sleep 1; grep VmRSS /proc/$PPID/status >rss$2' sh "$BUILD/tests/workloads/inline_chain" $n >/dev/null
        check_eq "$n children: exit" 0 $?
done
check_eq "20 + 420 children: each one's exact profile" 440 \
        "$(for f in allocprof.inline_chain.*.approf; do json_of "$f" '"%d %d %d %d" % tuple(d["totals"][k] for k in ("allocations", "bytes", "frees", "leaked_bytes"))'; done | grep -cx '5 240 4 48')"
if ldd "$AP" | grep -q libasan; then
        echo "note: allocprof built with AddressSanitizer (its quarantine keeps freed memory), memory per child not checked"
else
        check_eq "400 more children: allocprof run's memory grows by less than 15 MB" yes \
                "$(awk '{ print $2 }' rss20 rss420 | awk 'NR == 1 { a = $1 } NR == 2 { d = $1 - a; print (a > 0 && d < 15360) ? "yes" : "no: " d " kB more" }')"
fi
cd .. && mkdir nofollow && cd nofollow || exit 1
"$AP" run -q --no-follow -o main.approf -- "$BUILD/tests/workloads/forker"
check_eq "--no-follow exit" 0 $?
check_eq "--no-follow: only the program's profile" "main.approf" "$(ls *.approf | tr '\n' ' ' | sed 's/ $//')"
cd .. || exit 1

# --- allocations in a signal handler, many of them interrupting the agent itself ---------
"$AP" run -q -o sig.approf -- "$BUILD/tests/workloads/signals" >sig.out
check_eq "signals exit" 0 $?
hits=$(cat sig.out)
check_eq "every handler allocation recorded (hits, then leaked)" "$hits $(( (hits + 1) / 2 ))" \
        "$(json_of sig.approf 'sum(s["allocations"] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "handler_alloc"), sum(s["leaked_blocks"] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "handler_alloc")')"
check_eq "signals totals: loop + handler + stdout buffer" "$((3000000 + hits + 1)) 0" \
        "$(json_of sig.approf 'd["totals"]["allocations"], d["totals"]["dropped_events"]')"

# --- signals storming threads as they start: a handler's blocks are the program's --------
# A thread's first recorded allocation claims and maps its ring and asks the C library for
# its stack (allocating for the agent): handler allocations there were taken for the
# agent's own, neither recorded nor counted as dropped.
# Sampled mode drops what does not fit in a full ring rather than wait (full mode waits):
# on a machine too busy to let the collector keep up, --sample 1 may drop, and then every
# allocation missing must be counted among the dropped events.
tsig_check() { # mode handler-calls recorded-handler recorded-thread dropped invalid
        h=$2 rh=${3:-} rt=${4:-} drop=${5:-} inv=${6:-}
        if [ "$1" = 1 ] && [ "$drop" -gt 0 ] 2>/dev/null; then
                echo "note: --sample 1 dropped $drop events on a busy machine"
                missing=$((h - rh + 32000 - rt))
                check_eq "signals at starting threads (--sample 1): what is missing was dropped and counted, nothing invalid" \
                        "yes 0" "$([ "$missing" -ge 0 ] && [ "$missing" -le "$drop" ] && echo yes || echo "no: $missing missing") $inv"
        else
                check_eq "signals at starting threads (--sample $1): every handler and thread allocation, nothing dropped" \
                        "$h 32000 0 0" "$rh $rt $drop $inv"
        fi
}
for mode in 0 1; do
        "$AP" run -q --sample $mode -o tsig$mode.approf -- "$BUILD/tests/workloads/thread_signals" >tsig$mode.out
        check_eq "signals at starting threads (--sample $mode): exit" 0 $?
        got=$(json_of tsig$mode.approf '" ".join(str(x) for x in [sum(s["allocations"] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == f) for f in ("tsig_handler_alloc", "tsig_alloc")] + [d["totals"]["dropped_events"], d["totals"]["invalid_records"]])')
        # shellcheck disable=SC2086
        tsig_check $mode "$(cat tsig$mode.out)" $got
done

# --- threads whose ring cannot be mapped (seccomp refuses mremap after start) -------------
# 8 threads x 20,000 allocations and frees, all dropped and counted; a profiling timer's
# handler allocates and frees on the main thread, whose second (nested) ring cannot be
# mapped either: what it did not record is dropped and counted too.  The agent tries to
# map again only now and then, not on each call (the program counts its tries).
"$AP" run -q -o noslot.approf -- "$BUILD/tests/workloads/noslot" >noslot.out
check_eq "no ring for new threads: exit" 0 $?
read -r nhits ntries <noslot.out
nrec=$(json_of noslot.approf 'sum(s["allocations"] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "noslot_handler_alloc")')
check_eq "no ring for new threads: their events and the unrecorded handler ones dropped, counted" \
        "1 $((320000 + 2 * (nhits - nrec))) $((160000 + nhits - nrec))" \
        "$(json_of noslot.approf '" ".join(str(x) for x in [sum(s["allocations"] for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "noslot_alloc"), d["totals"]["dropped_events"], d["totals"]["dropped_frees"]])')"
check_eq "no ring for new threads: every dropped event counted as a thread's without a ring" \
        True "$(json_of noslot.approf 'd["totals"]["dropped_no_ring"] == d["totals"]["dropped_events"]')"
check_true "no ring for new threads: mapping tried now and then ($ntries tries), not per call" \
        "$([ "$ntries" -lt 1000 ] && echo True)"

# --- 3,000 short-lived threads, a cancelled one, running ones, exit() from a thread -------
"$AP" run -q -o tm.approf -- "$BUILD/tests/workloads/threads_many"
check_eq "threads_many exit" 0 $?
check_eq "per-thread figures exact (allocations, leaked, 200-byte blocks, drops)" "9015 3005 4 0" \
        "$(json_of tm.approf '" ".join(str(x) for x in (sum(s["allocations"] for s in d["sites"] if s["frames"][0]["function"] == "thread_work"), sum(s["leaked_blocks"] for s in d["sites"] if s["frames"][0]["function"] == "thread_work"), sum(s["allocations"] for s in d["sites"] if s["frames"][0]["function"] == "still_running"), d["totals"]["dropped_events"]))')"
# 3,000 short-lived, the cancelled one, 4 still running and main (the one that calls exit()
# records nothing).
check_eq "threads that recorded" 3006 "$(json_of tm.approf 'd["totals"]["threads"]')"
# Detached threads free after their exit destructor gave their ring back, and take
# another: still one thread each.
cat >detached.c <<'EOF_C'
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
static void *volatile keep;
static void *work(void *arg)
{
        (void)arg;
        keep = malloc(8);
        return NULL;
}
int main(void)
{
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        for (int i = 0; i < 100; i++) {
                pthread_t t;
                if (pthread_create(&t, &a, work, NULL) != 0)
                        return 1;
        }
        usleep(300000);
        return 0;
}
EOF_C
if cc -O2 -o detached detached.c -pthread 2>/dev/null; then
        "$AP" run -q -o detached.approf -- ./detached
        check_eq "100 detached threads and main: 101 threads" "0 101" \
                "$? $(json_of detached.approf 'd["totals"]["threads"]')"
fi
# Entry code is named from the symbol table only (no DWARF of libc for it); the user's
# frames keep file and line.
check_eq "program entry frames below main: named without version, no file" "__libc_start_call_main None __libc_start_main None" \
        "$(json_of sig.approf '(lambda fr: " ".join("%s %s" % (f["function"], f["file"]) for f in fr[[f["function"] for f in fr].index("main") + 1:][:2]))([s for s in d["sites"] if "main" in [f["function"] for f in s["frames"]]][0]["frames"])')"
check_eq "thread entry frames: named, no file; the allocating frame has its line" "start_thread None True" \
        "$(json_of tm.approf '(lambda s: (lambda e: "%s %s %s" % (e["function"], e["file"], s["frames"][0]["line"] > 0))([f for f in s["frames"] if f["function"] == "start_thread"][0]))([x for x in d["sites"] if x["frames"][0]["function"] == "thread_work"][0])')"

# --- before main (a library constructor) and after it (atexit, library destructor) --------
"$AP" run -q -o early.approf -- "$BUILD/tests/workloads/early_late"
check_eq "early_late exit" 0 $?
check_eq "allocations before, in and after main" "early_ctor:123 late_dtor:789 main:10 at_exit_handler:456" \
        "$(json_of early.approf '" ".join(f"{fn}:{b}" for fn, b in sorted(((s["frames"][0]["function"], s["bytes"]) for s in d["sites"] if s["frames"][0]["function"] in ("early_ctor", "late_dtor", "main", "at_exit_handler")), key=lambda x: ["early_ctor", "late_dtor", "main", "at_exit_handler"].index(x[0])))')"

# --- exit statuses and errors -------------------------------------------------------------
"$AP" run -q -- /nonexistent/prog 2>nf.err
check_eq "program not found" 127 $?
check_contains "program not found message" nf.err "/nonexistent/prog"
printf 'not a program\n' >notexec
chmod 644 notexec
"$AP" run -q -- ./notexec 2>ne.err
check_eq "program not executable" 126 $?
mkdir -p adir
"$AP" run -q -- ./adir 2>dir.err
check_eq "a directory as the program" 126 $?
check_contains "a directory as the program: message" dir.err "cannot run ./adir: Is a directory"
"$AP" run --bogus -- true 2>bogus.err
check_eq "unknown option" 2 $?
check_contains "unknown option: message names the command" bogus.err "allocprof run: unrecognized option '--bogus'"
"$AP" report /dev/null 2>devnull.err
check_eq "report of /dev/null" 1 $?
check_contains "report of /dev/null: message" devnull.err "cannot read /dev/null: empty file"
"$AP" run -q -o /nonexistent/dir/x.approf -- "$SIMPLE" 2>od.err
check_eq "unwritable output" 1 $?
check_contains "unwritable output message" od.err "/nonexistent/dir/x.approf"
rm -f od-ran
mkdir od-dir
"$AP" run -q -o od-dir -- sh -c 'touch od-ran' 2>od3.err
check_eq "-o names a directory: exit, program not started" "1 no" "$? $([ -e od-ran ] && echo yes || echo no)"
check_contains "-o names a directory: message" od3.err "cannot write the profile od-dir: it is a directory"
"$AP" run -q --output-dir "" -- sh -c 'touch od-ran' 2>/dev/null
check_eq "--output-dir with an empty name: usage error, program not started" "2 no" "$? $([ -e od-ran ] && echo yes || echo no)"
"$AP" run -q -o "" -- sh -c 'touch od-ran' 2>od4.err
check_eq "-o with an empty name: usage error, program not started" "2 no" "$? $([ -e od-ran ] && echo yes || echo no)"
# A device or a FIFO named by -o is written into, never replaced by a file.
mkfifo od-fifo
(cat od-fifo >od-fifo.out &)
"$AP" run -q -o od-fifo -- true
check_eq "-o FIFO: exit, still a FIFO, the profile came through it" "0 yes 1" \
        "$? $([ -p od-fifo ] && echo yes || echo no) $(sleep 0.3; "$AP" report --json od-fifo.out | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["allocations"] >= 0 and 1)')"
mkdir devnull && (cd devnull && "$AP" run -q -o /dev/null -- sh -c 'ls / >/dev/null; true')
check_eq "-o /dev/null: exit, still a character device" "0 yes" "$? $([ -c /dev/null ] && echo yes || echo no)"
check_eq "-o /dev/null: the children's profiles in the current directory, none in /dev" "1 0" \
        "$(ls devnull/allocprof.ls.*.approf 2>/dev/null | wc -l) $(ls /dev/allocprof.* 2>/dev/null | wc -l)"
# A link to the file standard output is redirected into (/dev/stdout, here one of the
# test's own so that a failure cannot replace the system's): written into, the link left
# alone, the children's profiles in the current directory.
mkdir stdoutlink && ln -s /proc/self/fd/1 stdoutlink/out
(cd stdoutlink && "$AP" run -q -o out -- sh -c 'ls / >/dev/null; true' >../stdout.approf)
check_eq "-o a link to redirected stdout: exit, still a link, the profile in the file" "0 yes 0" \
        "$? $([ -L stdoutlink/out ] && echo yes || echo no) $("$AP" report --json stdout.approf | python3 -c 'import json,sys; print(json.load(sys.stdin)["process"]["exit_status"])')"
check_eq "-o a link to redirected stdout: the children's profiles in the current directory" "1" \
        "$(ls stdoutlink/allocprof.ls.*.approf 2>/dev/null | wc -l)"
if [ -c /dev/full ]; then
        "$AP" run -q -o /dev/full -- true 2>full.err
        check_eq "-o /dev/full: the write fails, exit 1, still a device" "1 yes" "$? $([ -c /dev/full ] && echo yes || echo no)"
        check_contains "-o /dev/full: message" full.err "cannot write the profile /dev/full: No space left on device"
fi
# Another user's file in a sticky directory cannot be replaced: found before the run.
if [ "$(id -u)" = 0 ] && [ -k /tmp ] && su nobody -s /bin/sh -c "test -x '$AP'" 2>/dev/null; then
        sticky=$(mktemp /tmp/allocprof-sticky.XXXXXX) && chmod 644 "$sticky"
        out=$(su nobody -s /bin/sh -c "cd /tmp && '$AP' run -q -o '$sticky' -- echo RAN; echo rc=\$?" 2>&1)
        rm -f "$sticky"
        check_eq "another user's file in /tmp: refused before the run" \
                "allocprof: cannot write the profile $sticky: it belongs to another user, in /tmp, a sticky directory where only its owner may replace it rc=1" \
                "$(echo $out)"
fi
if [ -d /proc/self ]; then
        "$AP" run -q -o /proc/x.approf -- sh -c 'touch od-ran' 2>/dev/null
        check_eq "-o in /proc (passes access(2) as root): exit, program not started" "1 no" \
                "$? $([ -e od-ran ] && echo yes || echo no)"
fi
"$AP" run -q --output-dir /nonexistent/dir -- sh -c 'touch od-ran' 2>od2.err
check_eq "missing output directory: exit, program not started" "1 no" "$? $([ -e od-ran ] && echo yes || echo no)"
check_contains "missing output directory message" od2.err "allocprof: --output-dir: directory /nonexistent/dir does not exist"
# With -o, the other processes' profiles still go to --output-dir: it is checked too.
"$AP" run -q -o od3.approf --output-dir /nonexistent/dir -- sh -c 'touch od-ran' 2>od3.err
check_eq "missing output directory with -o: exit, program not started" "1 no" "$? $([ -e od-ran ] && echo yes || echo no)"
check_contains "missing output directory with -o: message" od3.err "allocprof: --output-dir: directory /nonexistent/dir does not exist"
# -o is checked in one place for run and snapshot, before anything is recorded: the
# same refusals, in the same words, the program not started; special files are written
# into alike (a FIFO waits for its reader up to 10 s, then fails alike).
mkdir dest && cd dest || exit 1
"$AP" run -q --no-daemon -o snapd.approf -- sh -c 'echo $$ >snap.pid; while :; do sleep 1; done' &
snaprun=$!
for i in $(seq 100); do
        [ -s snap.pid ] && "$AP" snapshot "$(cat snap.pid)" -o /dev/null 2>/dev/null && break
        sleep 0.1
done
sp=$(cat snap.pid)
mkdir adir
ln -s /proc/self/fd/9 closedfd
python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' sock
blk=""
# Major 0 has no driver: nothing could be written to it even if it were opened.
mknod blk b 0 0 2>/dev/null && blk='blk|it is a block device: a profile is written into a character device'
for dest in '/proc/version|/proc is on a virtual file system (proc), where no file can be created (a profile replaces a file, it is never written into one)' \
        '/proc/x.approf|/proc is on a virtual file system (proc), where no file can be created' \
        'adir|it is a directory' \
        'closedfd|it is a link to /proc/self/fd/9, a descriptor that is not open' \
        'sock|it is a socket' \
        '/nonexistent/dir/x.approf|directory /nonexistent/dir does not exist' \
        ${blk:+"$blk"}; do
        d=${dest%%|*}
        rm -f ran
        "$AP" run -q --no-daemon -o "$d" -- sh -c 'touch ran' 2>run.err
        st=$?
        "$AP" snapshot "$sp" -o "$d" 2>snap.err
        check_eq "-o $d: run refuses it, the program not started; snapshot refuses it alike" \
                "1 no 1 1 1" "$st $([ -e ran ] && echo yes || echo no) $? $(wc -l <run.err) $(wc -l <snap.err)"
        check_contains "-o $d: run says why" run.err "allocprof: cannot write the profile $d: ${dest#*|}"
        check_eq "-o $d: snapshot says it in the same words" "$(cat run.err)" "$(cat snap.err)"
done
check_eq "-o a link to a closed descriptor: left alone" yes "$([ -L closedfd ] && echo yes || echo no)"
# A terminal (a pseudo-terminal here, and /dev/stdout on it): a profile is binary.
for d in pty /dev/stdout; do
        out=$(python3 -c 'import os, pty, subprocess, sys
m, s = pty.openpty()
d = os.ttyname(s) if sys.argv[1] == "pty" else sys.argv[1]
for cmd in (["run", "-q", "--no-daemon", "-o", d, "--", "true"], ["snapshot", sys.argv[3], "-o", d]):
    r = subprocess.run([sys.argv[2]] + cmd, stdout=s, stderr=subprocess.PIPE)
    print(r.returncode, r.stderr.decode().split(": ", 2)[-1].strip())' "$d" "$AP" "$sp")
        check_eq "-o $d on a terminal: run and snapshot refuse it" \
                "1 it is a terminal, and a profile is binary (gzip'ed JSON): name a file, or redirect the output into one
1 it is a terminal, and a profile is binary (gzip'ed JSON): name a file, or redirect the output into one" "$out"
done
# Written into: a FIFO whose reader comes a second late, /dev/stdout into a file.
mkfifo fifo
late_reader() {
        rm -f fifo.out
        { sleep 1 && cat fifo >fifo.out; } &
        reader=$!
}
through_fifo() { # what status
        wait "$reader"
        check_eq "-o FIFO, its reader a second late ($1): written through it, still a FIFO" "0 yes 1" \
                "$2 $([ -p fifo ] && echo yes || echo no) $("$AP" report --json fifo.out 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["allocations"] >= 0 and 1)')"
}
late_reader
"$AP" snapshot "$sp" -o fifo 2>/dev/null
through_fifo snapshot $?
late_reader
"$AP" run -q --no-daemon -o fifo -- true
through_fifo run $?
"$AP" snapshot "$sp" -o /dev/stdout >stdout.approf 2>/dev/null
check_eq "snapshot -o /dev/stdout into a file" "True $sp" "$(json_of stdout.approf 'd["live"], d["process"]["pid"]')"
# No reader at all: both give up after 10 s, in the same words (run and snapshot at once).
mkfifo fifo2 fifo3
"$AP" run -q --no-daemon -o fifo2 -- true 2>fifo2.err &
frun=$!
"$AP" snapshot "$sp" -o fifo3 2>fifo3.err
check_eq "snapshot -o FIFO without a reader" 1 $?
wait $frun
check_eq "run -o FIFO without a reader" 1 $?
check_contains "snapshot -o FIFO without a reader: message" fifo3.err "allocprof: cannot write the profile fifo3: no process opened the FIFO to read it within 10 s"
check_contains "run -o FIFO without a reader: message" fifo2.err "allocprof: cannot write the profile fifo2: no process opened the FIFO to read it within 10 s"
# The pid of the run stands for its program: the snapshot is named and said for it.
mkdir byrun && (cd byrun && "$AP" snapshot "$snaprun" 2>../byrun.err)
check_eq "snapshot of the run's pid: named for the program's" "0 1" \
        "$? $(ls byrun/allocprof.*.$sp.snapshot.approf 2>/dev/null | wc -l)"
check_contains "snapshot of the run's pid: says the program's" byrun.err "allocprof: snapshot of pid $sp written to allocprof."
kill "$snaprun"
wait "$snaprun"
cd .. || exit 1
"$AP" run -q -- sh -c 'exit 42'
check_eq "exit status passed through" 42 $?
# How long the program ran, not how long it allocated: a quiet 0.3 s at the end counts.
"$AP" run -q -o quiet.approf -- sh -c 'ls >/dev/null; sleep 0.3'
check_eq "running time includes the quiet end" True "$(json_of quiet.approf 'd["process"]["duration_ns"] >= 300000000')"
printf 'echo "script ran with $1"\nexit 7\n' >noshebang
chmod 755 noshebang
"$AP" run -q -- ./noshebang arg >ns.out
check_eq "a script without #! runs under sh, as execvp does" "7 script ran with arg" "$? $(cat ns.out)"
# The program starts with the signal mask and dispositions allocprof was given: blocked
# and ignored ones (SIGUSR2 blocked, SIGPIPE ignored by python3), and nothing more.
sigstate() { grep -E '^Sig(Blk|Ign)' /proc/self/status | tr '\n' ' '; }
sig_exec() { python3 -c 'import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
os.execvp(sys.argv[1], sys.argv[1:])' "$@"; }
check_eq "signal state with SIGPIPE ignored and SIGUSR2 blocked" \
        "$(sig_exec grep -E '^Sig(Blk|Ign)' /proc/self/status | tr '\n' ' ')" \
        "$(sig_exec "$AP" run -q -- grep -E '^Sig(Blk|Ign)' /proc/self/status | tr '\n' ' ')"
check_eq "signal state from a shell" "$(sigstate)" \
        "$("$AP" run -q -- grep -E '^Sig(Blk|Ign)' /proc/self/status | tr '\n' ' ')"
# The agent brings no library into a program but itself: no libm (the sampler computes
# its logarithms itself), no libunwind and liblzma (loaded only for --unwind libunwind).
# Each cost every shell and compiler about 0.1 ms more at start.
libs_re='/lib[^ ]*/lib\(m\|unwind\|lzma\)\.so[^ ]*'
check_eq "no libm, libunwind or liblzma in a shell under the agent (sampled)" "" \
        "$("$AP" run -q --sample 512K -o libs.approf -- sh -c "grep -o '$libs_re' /proc/\$\$/maps | sort -u")"
check_eq "--unwind libunwind: libunwind loaded" "libunwind.so.8" \
        "$("$AP" run -q --unwind libunwind -o libs.approf -- sh -c "grep -o '$libs_re' /proc/\$\$/maps | sort -u" | grep -o 'libunwind\.so\.8')"
"$AP" run -q -- sh -c 'kill -SEGV $$' 2>/dev/null
check_eq "signal death 128+N" 139 $?
# allocprof ends by the program's signal (WIFSIGNALED for whoever waits for it), and
# makes no core dump of its own: the program's is in sub/ (its working directory), none
# in ours.  The agent's rings are kept out of the program's core dump.
mkdir -p sigcore/sub
check_eq "signal death: allocprof ends by the same signal" "-11 -2 -15 3" \
        "$(cd sigcore && for s in SEGV INT TERM; do
                python3 -c 'import subprocess, sys; print(subprocess.run(sys.argv[1:]).returncode)' \
                        "$AP" run -q -o s.approf -- sh -c "kill -$s \$\$"
        done | tr '\n' ' ')$(cd sigcore && python3 -c 'import subprocess, sys; print(subprocess.run(sys.argv[1:]).returncode)' "$AP" run -q -o s.approf -- sh -c 'exit 3')"
check_eq "the agent's rings are not dumped with the program (VmFlags dd)" "dd" \
        "$("$AP" run -q -o s.approf -- sh -c 'grep -A40 "memfd:allocprof" /proc/$$/smaps' | sed -n 's/^VmFlags:.* \(dd\).*/\1/p' | head -1)"
if ldd "$AP" | grep -q libasan; then
        echo "note: allocprof built with AddressSanitizer (which turns core dumps off), core dumps not checked"
elif [ "$(cat /proc/sys/kernel/core_pattern)" = core ]; then
        (cd sigcore && ulimit -c unlimited && "$AP" run -q -o s.approf -- sh -c 'cd sub && kill -SEGV $$') 2>/dev/null
        check_eq "signal death: the program's core dump, none of allocprof's" "sub/core" \
                "$(cd sigcore && ls core sub/core 2>/dev/null | tr '\n' ' ' | sed 's/ $//')"
        check_eq "the program's core dump without the agent's rings (under 64 MiB)" yes \
                "$([ "$(du -k sigcore/sub/core | cut -f1)" -lt 65536 ] && echo yes || echo no)"
else
        echo "note: core_pattern is not 'core', core dumps not checked"
fi
# Every option USAGE.md's table documents for run is in 'allocprof run --help' (every
# spelling) and in 'allocprof help' (one of them; --help aside), and nothing more.
"$AP" help | sed -n '/^  run /,/^  report /p' >help-run.txt
"$AP" run --help >run-help.txt
awk '/^## `allocprof run`/ { f = 1; next } /^## / { f = 0 } f && /^\| `-/' "$SRC/USAGE.md" |
        cut -d'|' -f2 >usage-run.txt
missing=
while read -r cell; do
        opts=$(printf '%s\n' "$cell" | grep -o -- '`--\?[a-z-]*' | tr -d '`')
        seen=
        for o in $opts; do
                grep -qE -- "(^| )$o[ ,]" run-help.txt || missing="$missing run-help:$o"
                grep -qF -- "[$o" help-run.txt && seen=yes
        done
        [ -n "$seen" ] || [ "$opts" = "-h
--help" ] || missing="$missing help:$(echo $opts)"
done <usage-run.txt
for o in $(sed -nE 's/^  (-[a-z]), (--[a-z-]+).*/\1 \2/p; s/^      (--[a-z-]+).*/\1/p' run-help.txt); do
        grep -qF -- "\`$o" usage-run.txt || missing="$missing usage:$o"
done
check_eq "run's options: USAGE.md, 'run --help' and 'help' agree" "" "$missing"
"$AP" bogus 2>/dev/null
check_eq "unknown command" 2 $?
"$AP" run 2>/dev/null
check_eq "run without program" 2 $?
# --sample: a size too large is said to be, with the largest; what is no size is not one.
for v in 9223372036854775808 99999999999999999999 8589934592G; do
        "$AP" run --sample "$v" -- true 2>sample.err
        check_eq "--sample $v: bad usage" 2 $?
        check_contains "--sample $v: too large" sample.err \
                "allocprof: --sample: '$v' is too large (at most 9223372036854775807 bytes)"
done
"$AP" attach 1 --sample 9223372036854775808 2>sample.err
check_eq "attach --sample too large: bad usage" 2 $?
check_contains "attach --sample too large" sample.err "is too large (at most 9223372036854775807 bytes)"
"$AP" run -q --sample 8589934591G -o largest.approf -- true
check_eq "--sample 8589934591G, the largest in G, runs" "0 9223372035781033984" \
        "$? $(json_of largest.approf 'd["sample_interval"]')"
"$AP" run --sample 12x -- true 2>sample.err
check_eq "--sample 12x: bad usage" 2 $?
check_contains "--sample 12x: not a size" sample.err "'12x' is not a size in bytes"
# cargo alloc-profile checks allocprof's options before it builds anything.
mkdir -p cargobin && ln -sf "$AP" cargobin/cargo-alloc-profile
printf '#!/bin/sh\ntouch built\n' >fake-cargo && chmod +x fake-cargo
for opts in "--sample bad" "--sample 9223372036854775808" "--unwind nope" "--bogus"; do
        rm -f built
        # shellcheck disable=SC2086
        CARGO=$PWD/fake-cargo cargobin/cargo-alloc-profile alloc-profile $opts run 2>cargo.err
        check_eq "cargo alloc-profile $opts run: bad usage, nothing built" "2 no" \
                "$? $([ -e built ] && echo yes || echo no)"
done
check_contains "cargo alloc-profile --bogus: message" cargo.err "unrecognized option '--bogus'"
rm -f built
CARGO=$PWD/fake-cargo cargobin/cargo-alloc-profile alloc-profile --sample 4K --no-daemon run 2>cargo.err
check_eq "cargo alloc-profile --sample 4K --no-daemon run: built" "1 yes" \
        "$? $([ -e built ] && echo yes || echo no)"
mkdir empty && (cd empty && "$AP" report 2>../noprof.err)
check_eq "report without profiles" 1 $?
check_contains "report without profiles message" noprof.err "no profile"
printf '{"format": "nope"' >corrupt.approf
"$AP" report corrupt.approf 2>corrupt.err
check_eq "corrupt profile" 1 $?
check_contains "corrupt profile message" corrupt.err "corrupt.approf"
# A real profile, hand-edited to say what no run can write: one line naming the field.
for edit in 'd["process"]["term_signal"]=200|process.term_signal: 200 is not a signal number' \
            'd["mode"]="bogus"|mode: "bogus" is not a recording mode' \
            'd["mode"]="sampled"|sample_interval: 0 in sampled mode' \
            'd["totals"]["frees"]=d["totals"]["allocations"]+1|totals.frees: frees (4) is more than allocations (3)'; do
        edit_profile simple.approf edited.approf "${edit%%|*}"
        "$AP" report edited.approf >/dev/null 2>edited.err
        check_eq "hand-edited profile (${edit%%|*}): exit status, one line" "1 1" "$? $(wc -l <edited.err)"
        check_contains "hand-edited profile (${edit%%|*}): message" edited.err "cannot read edited.approf: ${edit#*|}"
done

# A statically linked program cannot load the agent: say so, keep its exit status.
if printf 'int main(void){return 5;}\n' >st.c && cc -static -o static st.c 2>/dev/null; then
        "$AP" run -o static.approf -- ./static 2>static.err
        check_eq "static program exit status" 5 $?
        check_contains "static program message" static.err "is statically linked: LD_PRELOAD cannot reach its allocator"
        checks=$((checks + 1))
        [ ! -e static.approf ] || fail "a profile was written for a static program"
        # ... and exec'ed by a profiled program: a note, the run goes on
        printf '#include <unistd.h>\nint main(void){usleep(1500000);return 6;}\n' >sts.c
        if cc -static -o static-sleeper sts.c 2>/dev/null; then
                "$AP" run -q -o sh-static.approf -- sh -c "exec ./static-sleeper" 2>shst.err
                check_eq "exec of a static program: its status" 6 $?
                check_contains "exec of a static program: note" shst.err "exec'ed $T/static-sleeper, which is statically linked: not profiled from there on"
                checks=$((checks + 1))
                [ -s sh-static.approf ] || fail "no profile for the shell that exec'ed the static program"
        fi
fi

# A set-user-ID program of another user: the loader drops LD_PRELOAD; say so, run it.
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && cp /bin/true suid-true &&
        chown nobody suid-true && chmod 4755 suid-true; then
        "$AP" run -o suid.approf -- ./suid-true 2>suid.err
        check_eq "setuid program exit status" 0 $?
        check_contains "setuid program message" suid.err "set-user-ID or set-group-ID: the loader ignores LD_PRELOAD"
fi

# A program with file capabilities, run by a user other than root, gains them: the loader
# ignores LD_PRELOAD for it as for a setuid one.  Say so, run it, keep its status.
if [ "$(id -u)" = 0 ] && command -v setcap >/dev/null && command -v setpriv >/dev/null &&
        setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$AP" 2>/dev/null; then
        capcwd=$PWD
        capdir=$(mktemp -d /tmp/allocprof-caps.XXXXXX) && chmod 755 "$capdir" &&
                printf 'int main(void){return 7;}\n' >"$capdir/c.c" &&
                cc -o "$capdir/caps-prog" "$capdir/c.c" && setcap cap_net_raw+ep "$capdir/caps-prog"
        (cd "$capdir" && setpriv --reuid=65534 --regid=65534 --clear-groups \
                "$AP" run -o /tmp/allocprof-caps-nobody.approf -- ./caps-prog) 2>caps.err
        check_eq "program with file capabilities: its exit status" 7 $?
        check_contains "program with file capabilities: said so" caps.err \
                "./caps-prog has file capabilities (see getcap): run by a user other than root, it gains them and the loader ignores LD_PRELOAD"
        # root gains nothing from them: profiled as any program
        (cd "$capdir" && "$AP" run -q -o "$capcwd/caps-root.approf" -- ./caps-prog) 2>caps-root.err
        check_eq "program with file capabilities run by root: status, profiled, no note" "7 yes 0" \
                "$? $([ -s caps-root.approf ] && echo yes || echo no) $(grep -c 'file capabilities' caps-root.err)"
        rm -rf "$capdir" /tmp/allocprof-caps-nobody.approf
else
        echo "note: not root, or setcap or setpriv missing: the file-capabilities check is skipped"
fi

# --- the agent's cached DWARF unwinder gives libunwind's stacks -------------------------
# (module-relative addresses, so the two runs compare across address randomization; no
# bytes: libunwind, loaded only under --unwind libunwind, brings thread-local storage,
# and glibc's per-thread TLS vector grows by a slot)
stacks() { # profile -> one line per site: allocations, frame addresses
        "$AP" report "$1" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
for s in sorted(d["sites"], key=lambda s: json.dumps(s["frames"])):
    print(s["allocations"], " ".join("%s:%s" % (f["module"], f["address"]) for f in s["frames"]))'
}
for w in containers threads inline_chain alloc_every; do
        "$AP" run -q --unwind dwarf -o uw-$w-dwarf.approf -- "$BUILD/tests/workloads/$w" >/dev/null
        "$AP" run -q --unwind libunwind -o uw-$w-lu.approf -- "$BUILD/tests/workloads/$w" >/dev/null
        stacks uw-$w-dwarf.approf >uw-$w-dwarf.txt
        stacks uw-$w-lu.approf >uw-$w-lu.txt
        checks=$((checks + 1))
        if [ ! -s uw-$w-dwarf.txt ] || ! cmp -s uw-$w-dwarf.txt uw-$w-lu.txt; then
                fail "$w: --unwind dwarf and --unwind libunwind give different stacks"
                diff uw-$w-dwarf.txt uw-$w-lu.txt | head -10
        fi
done
# libunwind's thread-local storage, which glibc allocates for each thread at the thread's
# first unwind (inside the agent: not recorded) and frees when the thread's stack is freed
# or reused, from its own code: those frees are not the program's.  Each was counted as an
# unmatched free (thread_burst: 284 of its 288 threads), "of blocks allocated before
# profiling started".  The same allocations, frees and leaks as --unwind dwarf, no
# unmatched free.
tally() { json_of "$1" '" ".join(str(d["totals"][k]) for k in ("allocations","frees","leaked_blocks","unmatched_frees"))'; }
"$AP" run -q --unwind dwarf -o burst-dwarf.approf -- "$BUILD/tests/workloads/thread_burst"
"$AP" run -q --unwind libunwind -o burst-lu.approf -- "$BUILD/tests/workloads/thread_burst"
check_eq "thread_burst, --unwind dwarf: allocations, frees, leaks, unmatched frees" \
        "14680 14388 292 0" "$(tally burst-dwarf.approf)"
check_eq "thread_burst, --unwind libunwind: libunwind's thread-local blocks are not the program's" \
        "14680 14388 292 0" "$(tally burst-lu.approf)"
# Allocations on other stacks than the thread's own: a makecontext coroutine on a heap
# stack, and a signal handler on a sigaltstack.  Same stacks either way, no crash.
cat >altstacks.c <<'EOF_C'
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
static ucontext_t main_ctx, co_ctx;
void *volatile keep;
__attribute__((noinline)) static void in_coroutine(void)
{
        for (int i = 0; i < 1000; i++) {
                keep = malloc(64);
                free(keep);
        }
}
static void co_main(void) { in_coroutine(); }
static void on_usr1(int s) { (void)s; keep = malloc(33); free(keep); }
int main(void)
{
        size_t sz = 256 * 1024;
        getcontext(&co_ctx);
        co_ctx.uc_stack.ss_sp = malloc(sz);
        co_ctx.uc_stack.ss_size = sz;
        co_ctx.uc_link = &main_ctx;
        makecontext(&co_ctx, co_main, 0);
        swapcontext(&main_ctx, &co_ctx);
        stack_t ss = {.ss_sp = malloc(65536), .ss_size = 65536};
        sigaltstack(&ss, NULL);
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_usr1;
        sa.sa_flags = SA_ONSTACK;
        sigaction(SIGUSR1, &sa, NULL);
        for (int i = 0; i < 100; i++)
                raise(SIGUSR1);
        puts("done");
        return 0;
}
EOF_C
if cc -O2 -g -o altstacks altstacks.c 2>/dev/null; then
        for m in dwarf libunwind; do
                "$AP" run -q --unwind $m -o alt-$m.approf -- ./altstacks >alt-$m.out
                check_eq "coroutine and sigaltstack program ($m): exit, output" "0 done" "$? $(cat alt-$m.out)"
                stacks alt-$m.approf >alt-$m.txt
        done
        check_eq "coroutine: 1000 allocations from in_coroutine" 1000 \
                "$(json_of alt-dwarf.approf 'sum(s["allocations"] for s in d["sites"] if s["frames"][0]["function"] == "in_coroutine")')"
        check_eq "sigaltstack handler: 100 allocations from on_usr1" 100 \
                "$(json_of alt-dwarf.approf 'sum(s["allocations"] for s in d["sites"] if s["frames"][0]["function"] == "on_usr1")')"
        checks=$((checks + 1))
        cmp -s alt-dwarf.txt alt-libunwind.txt || fail "other stacks: --unwind dwarf and libunwind differ"
fi
# --- stacks the fast unwinder leaves: no descriptor of ours in the program ---------------
# A library constructor allocating before main (its stack ends in the loader's entry code,
# which has no unwind table) and code without unwind tables (JIT-like, frame pointers
# kept) calling malloc after the program closed fds 3-9 and opened two files there: the
# agent must leave no descriptor behind (libunwind's memory check kept a pipe open, then
# read from and wrote into whatever files took its numbers), and unwind through both.
cat >fdlib.c <<'EOF_C'
#include <stdlib.h>
void *volatile lib_keep;
__attribute__((noinline)) static void lib_setup(void) { lib_keep = malloc(77); }
__attribute__((constructor)) static void lib_init(void)
{
        lib_setup();
        __asm__ volatile("" ::: "memory"); /* a call, not a jump */
}
EOF_C
cat >fdjit.c <<'EOF_C'
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
extern void *volatile lib_keep;
static void list_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        int me = dirfd(d);
        while ((e = readdir(d)) != NULL)
                if (e->d_name[0] != '.' && atoi(e->d_name) != me)
                        printf(" %s", e->d_name);
        closedir(d);
        printf("\n");
}
int main(void)
{
        /* push rbp; mov rsp,rbp; mov $100,edi; movabs $malloc,rax; call *rax; pop rbp; ret */
        unsigned char code[] = {0x55, 0x48, 0x89, 0xe5, 0xbf, 0x64, 0, 0, 0, 0x48, 0xb8,
                                0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xd0, 0x5d, 0xc3};
        void *target = (void *)malloc;
        memcpy(code + 11, &target, sizeof(target));
        unsigned char *jit = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memcpy(jit, code, sizeof(code));
        void *(*fn)(void) = (void *(*)(void))jit;
        printf("fds:");
        list_fds();
        fflush(stdout);
        for (int fd = 3; fd < 10; fd++)
                close(fd);
        int a = open("fd-a", O_RDWR | O_CREAT | O_TRUNC, 0600);
        int b = open("fd-b", O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (write(a, "ABCDEFGH", 8) != 8 || lseek(a, 0, SEEK_SET) != 0)
                return 1;
        for (int i = 0; i < 3; i++)
                free(fn());
        char buf[9] = {0};
        printf("a=%d b=%d read %zd '%s', b has %ld bytes, lib %d\n", a, b, read(a, buf, 8), buf,
               (long)lseek(b, 0, SEEK_END), lib_keep != NULL);
        return 0;
}
EOF_C
if cc -O2 -g -shared -fPIC -o libfdlib.so fdlib.c 2>/dev/null &&
        cc -O2 -g -o fdjit fdjit.c -L. -lfdlib -Wl,-rpath,"$T" 2>/dev/null; then
        ./fdjit >fdjit-plain.out
        "$AP" run -q -o fdjit.approf -- ./fdjit >fdjit.out
        check_eq "no descriptor of ours, the program's files untouched (exit, output)" \
                "0 $(cat fdjit-plain.out)" "$? $(cat fdjit.out)"
        check_eq "library constructor's stack: to the loader's entry, no further" \
                "lib_setup lib_init call_init _dl_init _dl_start_user" \
                "$(json_of fdjit.approf '" ".join(dict.fromkeys(f["function"] for f in [s for s in d["sites"] if s["frames"][0]["function"] == "lib_setup"][0]["frames"]))')"
        check_eq "code without unwind tables: 3 allocations, unwound on to main" "3 main" \
                "$(json_of fdjit.approf '" ".join(str(x) for x in [(s["allocations"], s["frames"][1]["function"]) for s in d["sites"] if s["frames"][0]["module"] is None][0])')"
fi
# JIT-like code that keeps garbage in rbp (an address in a PROT_NONE region right above
# the stack, as a coroutine's or a thread's given stack may have) and calls code that
# allocates: the unwinders must not read there (they did: SIGSEGV in dwarf and fp mode).
cat >guarded.c <<'EOF_C'
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
static void *volatile keep;
__attribute__((noinline)) void helper(size_t n)
{
        keep = malloc(n);
        free(keep);
}
static void (*jit)(void);
static ucontext_t main_ctx, co_ctx;
static void run(void)
{
        for (int i = 0; i < 10; i++)
                jit();
}
static void *thread_main(void *arg)
{
        (void)arg;
        run();
        return NULL;
}
int main(int argc, char **argv)
{
        size_t size = 65536;
        char *stack = mmap(NULL, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mprotect(stack + size, size, PROT_NONE);
        /* push rbp; movabs $bad,rbp; mov $64,edi; movabs $helper,rax; call *rax; pop rbp; ret */
        unsigned char code[] = {0x55, 0x48, 0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 0xbf, 64, 0, 0, 0,
                                0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xd0, 0x5d, 0xc3};
        uint64_t bad = (uint64_t)(uintptr_t)(stack + size + 256);
        void *target = (void *)helper;
        memcpy(code + 3, &bad, 8);
        memcpy(code + 18, &target, 8);
        unsigned char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memcpy(m, code, sizeof(code));
        jit = (void (*)(void))m;
        if (argc > 1 && strcmp(argv[1], "thread") == 0) {
                pthread_attr_t a;
                pthread_t t;
                pthread_attr_init(&a);
                pthread_attr_setstack(&a, stack, size);
                pthread_create(&t, &a, thread_main, NULL);
                pthread_join(t, NULL);
        } else {
                getcontext(&co_ctx);
                co_ctx.uc_stack.ss_sp = stack;
                co_ctx.uc_stack.ss_size = size;
                co_ctx.uc_link = &main_ctx;
                makecontext(&co_ctx, run, 0);
                swapcontext(&main_ctx, &co_ctx);
        }
        puts("done");
        return 0;
}
EOF_C
if cc -O2 -o guarded guarded.c -pthread 2>/dev/null; then
        for how in thread coroutine; do
                for m in dwarf fp; do
                        "$AP" run -q --unwind $m -o guarded.approf -- ./guarded $how >guarded.out 2>&1
                        check_eq "garbage rbp next to a guard page ($how, $m): exit, output" "0 done" \
                                "$? $(cat guarded.out)"
                done
        done
        check_eq "garbage rbp: the allocations recorded" 10 \
                "$(json_of guarded.approf 'sum(s["allocations"] for s in d["sites"] if s["frames"][0]["function"] == "helper")')"
fi
# --- more distinct stacks than the agent's first-level index holds (65,536 cells) ------
cat >stacks.c <<'EOF_C'
#include <stdlib.h>
#define DEPTH 17
static void step(unsigned i, int d);
/* Two callers per level, chosen by a bit of i: 2^17 different stacks. */
__attribute__((noinline)) static void left(unsigned i, int d)
{
        step(i, d + 1);
        __asm__ volatile("" ::: "memory");
}
__attribute__((noinline)) static void right(unsigned i, int d)
{
        step(i, d + 1);
        __asm__ volatile("nop" ::: "memory");
}
__attribute__((noinline)) static void step(unsigned i, int d)
{
        if (d == DEPTH) {
                void *volatile p = malloc(16);
                free(p);
                return;
        }
        if (i >> d & 1)
                right(i, d);
        else
                left(i, d);
        __asm__ volatile("" ::: "memory");
}
int main(void)
{
        for (unsigned i = 0; i < 2u << DEPTH; i++)
                step(i & ((1u << DEPTH) - 1), 0);
        return 0;
}
EOF_C
if cc -O2 -o stacks stacks.c 2>/dev/null; then
        "$AP" run -q -o stacks.approf -- ./stacks
        check_eq "131,072 stacks twice: exit" 0 $?
        # (the JSON of every site would be 700 MB: the busiest one, and the sum)
        "$AP" report stacks.approf --json --top 1 --sort allocations >stacks.json
        check_eq "131,072 stacks twice: allocations, frees, sites, dropped" "262144 262144 131072 0" \
                "$(json stacks.json 'd["totals"]["allocations"], d["totals"]["frees"], d["sites_total"], d["totals"]["dropped_events"]' | tr -d '(),')"
        check_eq "131,072 stacks twice: at most 2 allocations a site, main at frame 35" "2 35" \
                "$(json stacks.json 'd["sites"][0]["allocations"], next(k for k, f in enumerate(d["sites"][0]["frames"]) if f["function"] == "main")' | tr -d '(),')"
fi

# --- a collector that falls behind: the program waits, loses nothing, and is told ------
cat >waiter.c <<'EOF_C'
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void)
{
        /* Allocates and frees until ./go-home exists (at most about 20 s). */
        unsigned long n = 0;
        for (int k = 0; k < 2000 && access("go-home", F_OK) != 0; k++) {
                for (int i = 0; i < 10000; i++, n++) {
                        void *volatile p = malloc(32 + i % 64);
                        free(p);
                }
                usleep(1000);
        }
        printf("%lu\n", n);
        return 0;
}
EOF_C
if cc -O2 -o waiter waiter.c 2>/dev/null; then
        rm -f go-home
        "$AP" run -o wait.approf -- ./waiter >wait.out 2>wait.err &
        apid=$!
        sleep 0.5
        kill -STOP $apid
        sleep 0.4
        kill -CONT $apid
        sleep 0.2
        touch go-home
        wait $apid
        check_eq "stopped collector: exit" 0 $?
        # n mallocs and frees, and the stdout buffer printf allocates (and never frees)
        check_eq "stopped collector: every allocation and free, nothing dropped" \
                "$(($(cat wait.out) + 1)) $(cat wait.out) 0" \
                "$(json_of wait.approf 'd["totals"]["allocations"], d["totals"]["frees"], d["totals"]["dropped_events"]' | tr -d '(),')"
        check_eq "stopped collector: the program's waits are counted (>= 1, >= 200 ms)" "True True" \
                "$(json_of wait.approf 'd["process"]["ring_waits"] >= 1, d["process"]["ring_wait_ns"] >= 200000000' | tr -d '(),')"
        "$AP" report wait.approf >wait.txt
        check_contains "stopped collector: hint" wait.txt "* waits for the collector"
        check_contains "stopped collector: run's summary" wait.err "allocprof: the program waited "
fi

# --- a collector that stays stopped: the program waits once, then drops and goes on -------
cat >burst.c <<'EOF_C'
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void)
{
        /* Says it is ready, waits for ./go (at most 30 s), then 2 M mallocs and frees: far
         * more records than a ring holds. */
        fclose(fopen("ready", "w"));
        for (int k = 0; k < 3000 && access("go", F_OK) != 0; k++)
                usleep(10000);
        for (int i = 0; i < 2000000; i++) {
                void *volatile p = malloc(16 + i % 128);
                free(p);
        }
        fclose(fopen("done", "w"));
        return 3;
}
EOF_C
if cc -O2 -o burst burst.c 2>/dev/null; then
        rm -f ready go done
        "$AP" run -o burst.approf -- ./burst >burst.out 2>burst.err &
        apid=$!
        for i in $(seq 1 100); do [ -e ready ] && break; sleep 0.1; done
        kill -STOP $apid
        touch go
        # One wait of 5 s for the stopped collector, then the rest is dropped at once.
        for i in $(seq 1 200); do [ -e done ] && break; sleep 0.1; done
        checks=$((checks + 1))
        [ -e done ] || fail "collector stopped for good: the program did not finish within 20 s"
        kill -CONT $apid
        wait $apid
        check_eq "collector stopped for good: the program's exit status" 3 $?
        check_eq "collector stopped for good: events dropped and counted, recorded + dropped = all" \
                "True True" \
                "$(json_of burst.approf '(t := d["totals"])["dropped_events"] > 0, t["allocations"] + t["frees"] + t["unmatched_frees"] + t["dropped_events"] >= 4000000' | tr -d '(),')"
        check_contains "collector stopped for good: run's warning" burst.err "events were dropped"
fi
# --- no pidfd_open (old kernels, container seccomp profiles, valgrind) -------------------
# A launcher whose seccomp filter fails pidfd_open with ENOSYS for itself and everything
# it starts: the collector must then watch the program's /proc entry instead.
cat >nopidfd.c <<'EOF_C'
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
        struct sock_filter f[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
        if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
                perror("nopidfd");
                return 125;
        }
        if (syscall(SYS_pidfd_open, getpid(), 0) != -1 || errno != ENOSYS) {
                fprintf(stderr, "nopidfd: the filter does not stop pidfd_open\n");
                return 125;
        }
        execvp(argv[1], argv + 1);
        perror(argv[1]);
        return 126;
}
EOF_C
cat >slowalloc.c <<'EOF_C'
#include <stdlib.h>
#include <unistd.h>
int main(void)
{
        /* 40 rounds of 1,000 mallocs (every tenth kept), 20 ms apart: 0.8 s of records. */
        for (int k = 0; k < 40; k++) {
                for (int i = 0; i < 1000; i++) {
                        void *volatile p = malloc(100);
                        if (i % 10 != 0)
                                free(p);
                }
                usleep(20000);
        }
        return 5;
}
EOF_C
if ! cc -O2 -o nopidfd nopidfd.c 2>/dev/null || ! cc -O2 -o slowalloc slowalloc.c; then
        echo "note: cannot build the seccomp launcher: runs without pidfd_open not checked"
elif ! ./nopidfd true 2>nopidfd.err; then
        echo "note: no seccomp filters here ($(cat nopidfd.err)): runs without pidfd_open not checked"
else
        ./nopidfd "$AP" run -o nopidfd.approf -- ./slowalloc 2>nopidfd.err
        check_eq "without pidfd_open: the program's exit status" 5 $?
        check_eq "without pidfd_open: every allocation, free and leak" "40000 36000 4000 0" \
                "$(json_of nopidfd.approf '(t := d["totals"])["allocations"], t["frees"], t["leaked_blocks"], t["dropped_events"]' | tr -d '(),')"
        # and the process is still seen to end when it dies by a signal
        ./nopidfd "$AP" run -q -o nopidfd2.approf -- sh -c 'kill -9 $$' 2>/dev/null
        check_eq "without pidfd_open: a program killed by SIGKILL" 137 $?
fi

"$AP" run -q --unwind bogus -- true 2>unwind.err
check_eq "--unwind bogus: exit 2" 2 $?
check_contains "--unwind bogus: message" unwind.err "--unwind: 'bogus' is not 'dwarf', 'fp' or 'libunwind'"

# --- the program's own output and input are untouched -----------------------------------
printf 'a\nb\n' | sort -r >plain.out 2>plain.err
printf 'a\nb\n' | "$AP" run -q -- sort -r >prof.out 2>prof.err
check_eq "sort exit" 0 $?
checks=$((checks + 1))
cmp -s plain.out prof.out || fail "stdout differs under allocprof"
checks=$((checks + 1))
cmp -s plain.err prof.err || fail "stderr differs under allocprof"

# --- signals sent to allocprof reach the program, the profile is still written -----------
"$AP" run -q -o sleep.approf -- sleep 30 &
appid=$!
# until the program runs (a loaded machine may take longer than the second below)
for i in $(seq 1 100); do [ -n "$(cat /proc/$appid/task/$appid/children 2>/dev/null)" ] && break; sleep 0.1; done
sleep 1
kill -TERM "$appid"
wait "$appid"
check_eq "SIGTERM forwarded: 128+15" 143 $?
checks=$((checks + 1))
[ -s sleep.approf ] || fail "no profile after SIGTERM"
check_eq "sleep profile exit status" 143 "$("$AP" report sleep.approf --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["process"]["exit_status"])')"

# A process still running when the program has ended (and the grace time is over): its
# profile is a snapshot (live, its blocks not leaked), and run says so.
# The program waits until the inner shell has allocated (it writes 'ready' after its
# 'ls', by which time it has registered) and ends; the inner shell sleeps on.
mkdir stillrun && (cd stillrun && "$AP" run -o main.approf -- sh -c 'sh -c "ls / >/dev/null; echo >ready; sleep 3" & while [ ! -e ready ]; do sleep 0.05; done; ls / >/dev/null' 2>../stillrun.err)
check_eq "a process still running after the program: exit, its profile live" "0 1" \
        "$? $(for f in stillrun/allocprof.dash.*.approf; do json_of "$f" 'd.get("live")'; done | grep -c True)"
check_contains "a process still running after the program: said so" stillrun.err "(dash) was still running when sh ended"
check_eq "the processes that ended: not live" "False False" \
        "$(json_of stillrun/main.approf 'd["live"]') $(for f in stillrun/allocprof.ls.*.approf; do json_of "$f" 'd["live"]'; done | sort -u)"

# A child the program forked and left running, which has not allocated (so not
# registered) when the program ends: it is waited for as the registered ones are, and
# its profile is complete.
mkdir orphan && (cd orphan && "$AP" run -o main.approf -- "$BUILD/tests/workloads/orphan" 200 2>../orphan.err)
check_eq "a child that registers after the program ended: exit, its whole profile" \
        "3 3 3000 2 1000 False" \
        "$? $(for f in orphan/allocprof.orphan.*.approf; do json_of "$f" '" ".join(str(d["totals"][k]) for k in ("allocations","bytes","frees","leaked_bytes")), d["live"]'; done)"
check_eq "a child that registers after the program ended: report --all" "2 3" \
        "$(cd orphan && "$AP" report --all --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["process"]["merged_from"], d["totals"]["allocations"])')"
check_eq "a child that registered in time: no word of unregistered ones" 0 \
        "$(grep -c 'had not registered' orphan.err)"
# One that sleeps past the grace time (0.5 s) before it allocates: it runs on unprofiled,
# and run says so (it said nothing).
mkdir orphan-late && (cd orphan-late && "$AP" run -q -o main.approf -- "$BUILD/tests/workloads/orphan" 2500 2>../orphan-late.err)
check_eq "a child that has not registered by the end: exit, no profile of it" "3 main.approf" \
        "$? $(cd orphan-late && ls *.approf | tr '\n' ' ' | sed 's/ $//')"
check_contains "a child that has not registered by the end: run says so" orphan-late.err \
        "allocprof: 1 process the program started (pid "
check_contains "a child that has not registered by the end: what of it" orphan-late.err \
        ") was still running when orphan ended and had not registered with the collector yet: it runs on unprofiled"

# A fork child maps a session of its own and unmaps its parent's: the address space of
# a chain of forks (what RLIMIT_AS limits) does not grow with each generation.
if [ -x /usr/bin/python3 ]; then
        mkdir forkvm && (cd forkvm && "$AP" run -q -- /usr/bin/python3 -c '
import os
def vm():
    return int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize")][0])
b = [bytearray(100 + i) for i in range(100)]
sizes = [vm()]
for gen in range(2):
    if os.fork():
        os.wait()
        break
    b = [bytearray(100 + i) for i in range(100)]
    sizes.append(vm())
    if gen == 1:
        print("grows" if max(sizes) - min(sizes) > 512 * 1024 else "same")
' >../forkvm.out)
        check_eq "fork children: the address space does not grow by a session per generation" same "$(cat forkvm.out)"
fi

# An address-space limit too small for the agent's rings: the program runs unprofiled,
# and run says why (not "statically linked").
# (Not under AddressSanitizer, whose shadow memory needs far more than the limit.)
if ldd "$AP" | grep -q libasan; then
        echo "note: allocprof built with AddressSanitizer, ulimit -v not checked"
else
        # The rings are mapped as threads claim them: 1 GiB is room enough (it was not,
        # when all 1024 were mapped at once), 58 MiB is not, and run says so.
        (ulimit -v 1000000 && "$AP" run -q -o aslimit.approf -- "$BUILD/tests/workloads/threads") 2>aslimit.err
        check_eq "ulimit -v 1 GiB: the program's exit" 0 $?
        check_eq "ulimit -v 1 GiB: profiled, every thread's allocations" "4404 5" \
                "$(json_of aslimit.approf '"%d %d" % (d["totals"]["allocations"], d["totals"]["threads"])')"
        (ulimit -v 60000 && "$AP" run -q -o aslimit.approf -- sh -c 'ls / >/dev/null') 2>aslimit.err
        check_eq "ulimit -v below the shared memory: the program's exit" 0 $?
        check_contains "ulimit -v below the shared memory: said so" aslimit.err "address-space limit (ulimit -v, 58 MiB)"
fi

# SIGUSR1 (a reload, say) reaches a program that handles it, which goes on; allocprof
# is not ended by it.
"$AP" run -q -o usr1.approf -- sh -c 'trap "echo reloaded" USR1; i=0; while [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done; echo done' >usr1.out &
appid=$!
for i in $(seq 1 100); do [ -n "$(cat /proc/$appid/task/$appid/children 2>/dev/null)" ] && break; sleep 0.1; done
sleep 0.5
kill -USR1 "$appid"
wait "$appid"
check_eq "SIGUSR1 forwarded: handled by the program, which exits 0, profile written" "0 reloaded done yes" \
        "$? $(cat usr1.out | tr '\n' ' ')$([ -s usr1.approf ] && echo yes || echo no)"

# Signals whose default action would end allocprof alone: SIGVTALRM and a real-time one
# (with its sigqueue value) reach the program, which handles them and goes on.
if [ -x /usr/bin/python3 ]; then
        "$AP" run -q -o rt.approf -- /usr/bin/python3 -c '
import signal, sys, time
got = []
signal.signal(signal.SIGVTALRM, lambda s, f: got.append("vtalrm"))
signal.signal(signal.SIGRTMIN + 3, lambda s, f: got.append("rt"))
open("rt.ready", "w").close()
t = time.time()
while len(got) < 2 and time.time() - t < 20:
    time.sleep(0.05)
print(" ".join(sorted(got)))' >rt.out &
        appid=$!
        for i in $(seq 1 200); do [ -e rt.ready ] && break; sleep 0.05; done
        kill -VTALRM "$appid"
        /usr/bin/python3 -c 'import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGRTMIN + 3)' "$appid"
        wait "$appid"
        check_eq "SIGVTALRM and SIGRTMIN+3 forwarded: handled by the program, profile written" "0 rt vtalrm yes" \
                "$? $(cat rt.out)$([ -s rt.approf ] && echo " yes" || echo " no")"
fi

# A signal that comes after the program ended (run writing its profile into a FIFO
# nobody reads yet): the profile is still written, the exit status is the program's; a
# second one ends allocprof at once.
mkfifo late.fifo late2.fifo
late_wait() { # until the program has started and ended (allocprof waits for a reader)
        for i in $(seq 1 200); do [ -e "$1" ] && break; sleep 0.05; done
        for i in $(seq 1 200); do [ -z "$(cat /proc/$appid/task/$appid/children 2>/dev/null)" ] && break; sleep 0.05; done
}
"$AP" run -q -o late.fifo -- sh -c ': >late.started; exit 5' 2>late.err &
appid=$!
late_wait late.started
kill -TERM "$appid"
sleep 0.3
cat late.fifo >late.approf
wait "$appid"
check_eq "SIGTERM after the program ended: the program's exit status, the profile written" "5 5" \
        "$? $(json_of late.approf 'd["process"]["exit_status"]')"
check_contains "SIGTERM after the program ended: said so" late.err "a signal came after the program ended: the profiles are written first (send it again to stop at once)"
"$AP" run -q -o late2.fifo -- sh -c ': >late2.started; exit 5' 2>/dev/null &
appid=$!
late_wait late2.started
kill -TERM "$appid"
sleep 0.3
kill -TERM "$appid"
wait "$appid"
check_eq "SIGTERM twice after the program ended: allocprof ends by it" 143 $?

# --- allocprofd: the same collector as a service in the foreground -----------------------
# A file that is not a socket stands where the socket should go: left alone, one line.
echo keep >notasock
"$BUILD/collector/allocprofd" --foreground --socket "$T/notasock" 2>notasock.err
check_eq "allocprofd over a regular file: exit 1" 1 $?
check_contains "allocprofd over a regular file: message" notasock.err "notasock exists and is not a socket: not replaced"
check_eq "allocprofd over a regular file: the file is untouched" keep "$(cat notasock)"
mkdir -m 700 daemon
"$BUILD/collector/allocprofd" --foreground --socket "$T/daemon/sock" --output-dir "$T/daemon" 2>daemon.log &
dpid=$!
for i in $(seq 1 100); do [ -S daemon/sock ] && break; sleep 0.1; done
LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$T/daemon/sock" "$SIMPLE" &
spid=$!
wait "$spid"
check_eq "program under allocprofd exit" 0 $?
for i in $(seq 1 100); do ls daemon/allocprof.simple.*.approf >/dev/null 2>&1 && break; sleep 0.1; done
# report PID from elsewhere: the daemon says where it writes (hello's output_dir).
ALLOCPROF_DAEMON_SOCKET="$T/daemon/sock" "$AP" report "$spid" >dreport.out 2>dreport.err
check_eq "report PID of a program allocprofd profiled, from another directory: exit" 0 $?
check_contains "report PID from another directory: said where" dreport.err \
        "(the newest profile of pid $spid in allocprofd's output directory)"
check_contains "report PID from another directory: the program's report" dreport.out "pid $spid"
kill -TERM "$dpid"
wait "$dpid"
check_eq "allocprofd exits 0 on SIGTERM" 0 $?
check_eq "allocprofd wrote the profile" "3 1" \
        "$(json_of "$(ls daemon/allocprof.simple.*.approf | head -1)" 'd["totals"]["allocations"], d["totals"]["leaked_blocks"]')"
checks=$((checks + 1))
[ ! -e daemon/sock ] || fail "allocprofd left its socket behind"

# --- the C library's compressed debug file, inflated once into the cache ------------------
# The same sites, functions, files and lines with the cache off, on its first run (which
# makes the entry) and on the next (which uses it).
libc=$(ldd "$SIMPLE" | awk '/libc\.so/ {print $3}')
libc_id=$(readelf -n "$libc" 2>/dev/null | awk '/Build ID/ {print $3}')
libc_dbg=/usr/lib/debug/.build-id/$(echo "$libc_id" | cut -c1-2)/$(echo "$libc_id" | cut -c3-).debug
if [ -n "$libc_id" ] && readelf -SW "$libc_dbg" 2>/dev/null | grep -q '\.debug_info .* C '; then
        frames() { # profile -> one line per site: its frames' function, file, line
                "$AP" report "$1" --json --top 0 | python3 -c '
import json, sys
for s in json.load(sys.stdin)["sites"]:
    print(s["allocations"], " | ".join("%s %s:%s" % (f["function"], f["file"], f["line"]) for f in s["frames"]))' | sort
        }
        ALLOCPROF_CACHE_DIR= "$AP" run -q --no-follow -o dc0.approf -- ls / >/dev/null
        ALLOCPROF_CACHE_DIR="$T/dc" "$AP" run -q --no-follow -o dc1.approf -- ls / >/dev/null
        check_eq "debug cache: one entry for the C library" 1 "$(ls "$T/dc/debug/$libc_id"-*.debug 2>/dev/null | wc -l)"
        entries=$(ls "$T/dc/debug" | wc -l)
        ALLOCPROF_CACHE_DIR="$T/dc" "$AP" run -q --no-follow -o dc2.approf -- ls / >/dev/null
        frames dc0.approf >dc0.txt
        frames dc1.approf >dc1.txt
        frames dc2.approf >dc2.txt
        check_true "debug cache: C library frames have lines" \
                "$(grep -q 'libio/[a-z]*\.c:[0-9]\|opendir\.c:[0-9]' dc0.txt && echo True)"
        checks=$((checks + 1))
        cmp -s dc0.txt dc1.txt || fail "debug cache: the first run's frames differ from an uncached run's"
        checks=$((checks + 1))
        cmp -s dc0.txt dc2.txt || fail "debug cache: frames through the cached copy differ from an uncached run's"
        check_eq "debug cache: no new entries on the second run" "$entries" "$(ls "$T/dc/debug" | wc -l)"
        # An entry cut short (its section headers gone) or whose section header offset is
        # damaged still has the build-id note at its start: it was taken, its DWARF was
        # unreadable, and every later run lost the C library's lines.  It must be made anew.
        entry=$(ls "$T/dc/debug/$libc_id"-*.debug)
        size=$(stat -c %s "$entry")
        for damage in truncate shoff; do
                case $damage in
                truncate) truncate -s $((size / 2)) "$entry" ;;
                shoff) printf '\377\377\377\377' | dd of="$entry" bs=1 seek=40 conv=notrunc 2>/dev/null ;;
                esac
                ALLOCPROF_CACHE_DIR="$T/dc" "$AP" run -q --no-follow -o dc3.approf -- ls / >/dev/null
                frames dc3.approf >dc3.txt
                checks=$((checks + 1))
                cmp -s dc0.txt dc3.txt || fail "debug cache: frames through a damaged entry ($damage) differ from an uncached run's"
                check_eq "debug cache: the damaged entry ($damage) was made anew" "$size" "$(stat -c %s "$entry")"
        done
else
        echo "note: no compressed debug file for the C library, debug cache not checked end to end"
fi

# --- the agent exports the malloc family, operator new and delete, pthread_getattr_np, prctl,
# syscall, the exec family, no more
exported=$(nm -D --defined-only "$AGENT" | awk '$2 ~ /[TW]/ {print $3}' | LC_ALL=C sort | tr '\n' ' ')
check_eq "agent exports" "_ZdaPv _ZdaPvRKSt9nothrow_t _ZdaPvm _ZdlPv _ZdlPvRKSt9nothrow_t _ZdlPvm _Znam _ZnamRKSt9nothrow_t _Znwm _ZnwmRKSt9nothrow_t aligned_alloc calloc execl execle execlp execv execve execveat execvp execvpe fexecve free malloc memalign posix_memalign prctl pthread_getattr_np pvalloc realloc reallocarray syscall valloc " "$exported"

# --- ALLOCPROF_AGENT naming no file: that is what run says, not "set ALLOCPROF_AGENT"
ALLOCPROF_AGENT="$T/no-such-agent.so" "$AP" run -q -o noagent.approf -- "$SIMPLE" 2>noagent.err
check_eq "ALLOCPROF_AGENT missing: status" 1 $?
check_eq "ALLOCPROF_AGENT missing: the message" \
        "allocprof: ALLOCPROF_AGENT: cannot use $T/no-such-agent.so: No such file or directory" \
        "$(cat noagent.err)"

# --- run with too few descriptors to start its collector: says so, not "out of memory" --
for n in 6 7 8 9; do
        prlimit --nofile=$n "$AP" run -q -o nofile.approf -- "$DEMO" >/dev/null 2>nofile.err
        st=$?
        checks=$((checks + 1))
        if [ $st -ne 0 ] && ! grep -q 'Too many open files' nofile.err; then
                fail "RLIMIT_NOFILE $n: status $st without the reason: $(cat nofile.err)"
        fi
done

# --- an installed copy finds its agent with nothing set ----------------------------------
if meson install -C "$BUILD" --destdir "$T/root" --no-rebuild >install.log 2>&1; then
        inst=$(find "$T/root" -path '*/bin/allocprof' -type f | head -1)
        env -u ALLOCPROF_AGENT "$inst" run -q -o inst.approf -- "$SIMPLE"
        check_eq "installed allocprof runs" 0 $?
        check_eq "installed profile" 3 "$("$inst" report inst.approf --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["allocations"])')"
else
        fail "meson install failed: $(tail -3 install.log)"
fi

echo "$checks checks, $fails failed"
[ "$fails" -eq 0 ]
