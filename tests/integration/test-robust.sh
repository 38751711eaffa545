#!/bin/sh
# Programs that do unusual things with the allocator, their environment, their working
# directory or their privileges, run under `allocprof run`: what they print and how they
# end must not change, and their profiles must hold exactly what they did.
#
#   test-robust.sh ALLOCPROF BUILD_ROOT SOURCE_ROOT
#
# SPDX-License-Identifier: MIT OR Apache-2.0
set -u
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
AP=$(abs "$1") BUILD=$(abs "$2") SRC=$(abs "$3")
WL="$BUILD/tests/workloads"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
export ALLOCPROF_CACHE_DIR="$T/cache"
. "$SRC/tests/integration/checks.sh"
json_of() { # profile python-expression-on-d (over its JSON report)
        "$AP" report "$1" --json | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"
}
totals='" ".join(str(d["totals"][k]) for k in ("allocations","bytes","frees","freed_bytes","leaked_blocks","leaked_bytes"))'

# --- the malloc family's edge cases: results and errno unchanged, exact figures ---------
"$WL/edge_calls" >edge.native
check_eq "edge_calls exit, unprofiled" 0 $?
"$AP" run -q -o edge.approf -- "$WL/edge_calls" >edge.out
check_eq "edge_calls exit" 0 $?
checks=$((checks + 1))
cmp -s edge.native edge.out || { fail "edge_calls: output differs when profiled:"; diff edge.native edge.out; }
check_eq "edge_calls figures (failed calls not counted)" "17 2688 9 1288 8 1400" \
        "$(json_of edge.approf "$totals")"

# --- a program that clears its environment, then forks: the child is still profiled ----
# The child is the same program image: it registers with the settings the agent was
# started with, whatever became of the environment since.
for how in clearenv unsetenv setenv; do
        mkdir "env-$how" && cd "env-$how" || exit 1
        out=$("$AP" run -q -o main.approf -- "$WL/env_fork" $how)
        check_eq "env_fork $how: output and exit" "worker done 0" "$out $?"
        # (setenv allocates.)
        [ $how != setenv ] && check_eq "env_fork $how: the parent's figures" "1 111 0 0 1 111" \
                "$(json_of main.approf "$totals")"
        child=$(ls allocprof.env_fork.*.approf 2>/dev/null)
        check_eq "env_fork $how: the worker has a profile" 1 "$(echo "$child" | grep -c .)"
        [ -n "$child" ] && check_eq "env_fork $how: the worker's figures" "3 666 2 444 1 222" \
                "$(json_of "$child" "$totals")"
        cd .. || exit 1
done

# --- a library loaded by a relative path, met by the agent after a chdir ----------------
# Its name is relative to the directory it was loaded from, not to where the program is
# when it first allocates from it: the profile must name the file, and its functions.
mkdir -p plugins cwd && cp "$WL/libdlplugin.so" plugins/ || exit 1
"$AP" run -q -o chdir.approf -- "$WL/chdir_dlopen" ./plugins/libdlplugin.so "$T/cwd"
check_eq "chdir_dlopen exit" 0 $?
check_eq "chdir_dlopen: the plugin's module and function" \
        "$(realpath plugins/libdlplugin.so) plugin_make 10 3" \
        "$(json_of chdir.approf '" ".join(str(x) for x in [(s["frames"][0]["module"], s["frames"][0]["function"], s["allocations"], s["leaked_blocks"]) for s in d["sites"] if s["bytes"] == 800][0])')"

# --- a fork child whose first call is a realloc of an inherited block -------------------
mkdir fork-realloc && cd fork-realloc || exit 1
"$AP" run -q -o main.approf -- "$WL/fork_realloc"
check_eq "fork_realloc exit" 0 $?
child=$(ls allocprof.fork_realloc.*.approf 2>/dev/null)
check_eq "fork_realloc: the child has a profile" 1 "$(echo "$child" | grep -c .)"
[ -n "$child" ] && check_eq "fork_realloc: the child's figures, its realloc included" \
        "2 5007 0 0 2 5007 1 1" \
        "$(json_of "$child" "$totals"' + " " + str(d["totals"]["reallocs"]) + " " + str(d["totals"]["unmatched_frees"])')"
cd .. || exit 1

# --- children made without fork(): clone(2) without CLONE_VM, the fork system call -------
# No fork handler runs in them: the child must still get a profile of its own, and must
# not write into its parent's (a second producer on the parent's ring).
for how in clone syscall; do
        mkdir "clone-$how" && cd "clone-$how" || exit 1
        "$AP" run -q -o main.approf -- "$WL/clone_fork" $how
        check_eq "clone_fork $how exit" 0 $?
        check_eq "clone_fork $how: the parent's figures" "2001 465536 1001 265536 1000 200000 0 0" \
                "$(json_of main.approf "$totals"' + " " + str(d["totals"]["unmatched_frees"]) + " " + str(d["totals"]["invalid_records"])')"
        child=$(ls allocprof.clone_fork.*.approf 2>/dev/null)
        check_eq "clone_fork $how: the child has a profile" 1 "$(echo "$child" | grep -c .)"
        [ -n "$child" ] && check_eq "clone_fork $how: the child's figures" \
                "2000 200000 1000 100000 1000 100000 0 0" \
                "$(json_of "$child" "$totals"' + " " + str(d["totals"]["unmatched_frees"]) + " " + str(d["totals"]["invalid_records"])')"
        cd .. || exit 1
done

# --- a program that installs a seccomp filter, then forks -------------------------------
# The filter kills on memfd_create, socket, connect and sendmsg: a child that registered
# would die of SIGSYS.  It must run as it does unprofiled; the parent's profile is exact.
for how in prctl syscall; do
        mkdir "seccomp-$how" && cd "seccomp-$how" || exit 1
        out=$("$AP" run -q -o main.approf -- "$WL/seccomp_fork" $how)
        check_eq "seccomp_fork $how: output and exit" "child exit 0 0" "$out $?"
        check_eq "seccomp_fork $how: the parent's figures" "3 1600 1 1000 2 600" \
                "$(json_of main.approf "$totals")"
        cd .. || exit 1
done
# ... and then execs: the new image inherits the filter; its agent, finding more filters
# than run had, must not register (it died of SIGSYS, status 159).
mkdir seccomp-exec && cd seccomp-exec || exit 1
out=$("$AP" run -q -o main.approf -- "$WL/seccomp_fork" exec)
check_eq "seccomp_fork exec: output and exit" "execd ok 0" "$out $?"
check_eq "seccomp_fork exec: the first image's figures" "3 1600 1 1000 2 600" \
        "$(json_of main.approf "$totals")"
cd .. || exit 1

# --- an exec into a program that cannot be profiled, however short ------------------------
# Noticed only by polling /proc every 100 ms, one that ended sooner went unmentioned, and
# the image before it was shown as the program's: its exit status, its blocks as leaks.
# The agent's exec wrappers tell the collector: the profile says that the image ended by
# the exec (no exit status of its own, its blocks live at the exec), run says it, and the
# status is still the program's.
exec_of='d["process"]["exit_status"], d["process"]["exec"]'
wl_sites='(lambda ss: " ".join(str(sum(s[k] for s in ss)) for k in ("allocations", "frees", "leaked_blocks")))([s for s in d["sites"] if any(f["function"] == "before_exec" for f in s["frames"])])'
mkdir exec-static && cd exec-static || exit 1
printf '#include <stdio.h>\nint main(int argc, char **argv) { printf("static %%s\\n", argc > 1 ? argv[1] : "-"); return 3; }\n' >st.c
if cc -O2 -static -o st3 st.c 2>/dev/null; then
        # The shell's own, as a user would write it: `sh` replaced by a static program
        # that exits within a millisecond.
        out=$("$AP" run -o a.approf -- sh -c 'x=$(echo hi); exec ./st3 sh' 2>sh.err)
        check_eq "sh exec static: output and exit status" "static sh 3" "$out $?"
        check_contains "sh exec static: run says so" sh.err \
                "exec'ed $PWD/st3, which is statically linked: not profiled from there on"
        check_contains "sh exec static: run's summary says so" sh.err \
                "was replaced by an exec of $PWD/st3, which could not be profiled: this profile ends at the exec"
        check_contains "sh exec static: blocks live at the exec" sh.err "blocks live at the exec (not leaks"
        check_eq "sh exec static: no leak line" 0 "$(grep -c 'allocprof: leaked' sh.err)"
        check_eq "sh exec static: the profile says so, no exit status of its own" \
                "None {'path': '$PWD/st3', 'profiled': False}" "$(json_of a.approf "$exec_of")"
        "$AP" report a.approf >a.txt
        check_contains "sh exec static: the report says so" a.txt \
                "replaced by an exec of $PWD/st3 (not profiled)"
        check_contains "sh exec static: the report's section" a.txt "Live at the exec"
        check_eq "sh exec static: the report has no leaks" 0 "$(grep -ci 'leaked' a.txt)"
        # Other processes that do it (a build's shell running a Go tool for each file):
        # the first is said, the others counted.
        out=$("$AP" run -q -o loop.approf -- sh -c 'for i in 1 2 3; do sh -c "exec ./st3 $i"; done' 2>loop.err)
        check_eq "three shells exec static: output and exit status" "static 1 static 2 static 3 3" "$(echo $out) $?"
        check_eq "three shells exec static: one said, two counted" \
                "1 allocprof: 2 more process images exec'ed a program that could not be profiled" \
                "$(grep -c "exec'ed $PWD/st3, which is statically linked" loop.err) $(tail -1 loop.err)"
        # Every call of the exec family (the static program exits at once).
        for how in execv execve execvp execvpe execl execle execlp fexecve execveat syscall; do
                out=$("$AP" run -q -o $how.approf -- "$WL/exec_calls" $how "$PWD/st3" $how 2>$how.err)
                check_eq "exec_calls $how: output and exit status" "static $how 3" "$out $?"
                check_contains "exec_calls $how: run says so" $how.err \
                        "exec'ed $PWD/st3, which is statically linked: not profiled from there on"
                check_eq "exec_calls $how: the profile, its 3 blocks live at the exec" \
                        "None {'path': '$PWD/st3', 'profiled': False} 3 0 3" \
                        "$(json_of $how.approf "$exec_of, $wl_sites")"
        done
        # A name that execvp looks up in PATH: said as given, when it ended too soon for
        # the collector to see it run.
        out=$(PATH="$PWD:$PATH" "$AP" run -q -o path.approf -- "$WL/exec_calls" execvp st3 path 2>path.err)
        check_eq "exec_calls execvp through PATH: output and exit status" "static path 3" "$out $?"
        check_true "exec_calls execvp through PATH: run says so" \
                "$(grep -qE "exec'ed ($PWD/)?st3, which .*: not profiled from there on" path.err && echo True)"
        check_true "exec_calls execvp through PATH: the profile says so" \
                "$(json_of path.approf 'd["process"]["exec"]["path"] in ("st3", "'"$PWD"'/st3") and not d["process"]["exec"]["profiled"]')"
        # An exec that fails: the program goes on, nothing is said.
        out=$("$AP" run -q -o enoent.approf -- "$WL/exec_calls" enoent "$PWD/st3" 2>enoent.err)
        check_eq "exec_calls enoent: output (errno kept) and exit" "enoent ok 0" "$out $?"
        check_eq "exec_calls enoent: nothing said" "" "$(cat enoent.err)"
        check_eq "exec_calls enoent: the program's profile, its blocks freed" "0 None 3 3 0" \
                "$(json_of enoent.approf "$exec_of, $wl_sites")"
        # A vfork child that execs the static program shares the parent's memory, session
        # included: the parent's image goes on, and nothing is said of it.
        mkdir vfork && cd vfork || exit 1
        out=$("$AP" run -q -o vfork.approf -- "$WL/exec_calls" vfork ../st3 vfork 2>vfork.err)
        check_eq "exec_calls vfork: output and exit" "static vfork vfork child 3 0" "$(echo $out) $?"
        check_eq "exec_calls vfork: nothing said" "" "$(cat vfork.err)"
        check_eq "exec_calls vfork: the parent's profile, alone" "0 None 3 3 0 vfork.approf" \
                "$(json_of vfork.approf "$exec_of, $wl_sites") $(ls *.approf)"
        cd .. || exit 1
else
        echo "note: cc -static failed (no static C library?): the exec into a static program is not checked"
fi
# An exec into a dynamically linked program: a profile of its own, as before, and the image
# it replaced says so.
mkdir dyn && cd dyn || exit 1
out=$("$AP" run -q -o main.approf -- "$WL/exec_calls" execv /bin/echo dyn 2>dyn.err)
check_eq "exec_calls into echo: output and exit" "dyn 0" "$out $?"
check_eq "exec_calls into echo: nothing said" "" "$(cat dyn.err)"
check_eq "exec_calls into echo: two profiles" 2 "$(ls *.approf | wc -l)"
check_eq "exec_calls into echo: the program's last image, echo's, exited" \
        "0 None /usr/bin/echo" "$(json_of main.approf "$exec_of, d['process']['exe']")"
check_eq "exec_calls into echo: the image it replaced, its blocks live at the exec" \
        "None {'path': '/usr/bin/echo', 'profiled': True} 3 0 3" \
        "$(json_of allocprof.exec_calls.*.approf "$exec_of, $wl_sites")"
cd ../.. || exit 1

# --- children that cannot register (no descriptor left): counted, said -------------------
# They ran unprofiled without a word; the program's profile now counts them (a child and
# its child, which reports to the same nearest profiled ancestor) and run says so.
mkdir nofile && cd nofile || exit 1
"$AP" run -q -o main.approf -- "$WL/nofile_fork" 2>nofile.err
check_eq "nofile_fork: exit, profiles" "0 main.approf" "$? $(ls *.approf | tr '\n' ' ' | sed 's/ $//')"
check_eq "nofile_fork: the program's profile counts 2 unprofiled children, its own block" "2 1" \
        "$(json_of main.approf '"%d %d" % (d["totals"]["unprofiled_children"], d["totals"]["allocations"])')"
check_contains "nofile_fork: run says so" nofile.err \
        "allocprof: 2 child processes could not register with the collector"
"$AP" report main.approf >report.txt
check_contains "nofile_fork: the report says so" report.txt "note: 2 child processes could not register"
cd .. || exit 1

# --- a C++ program whose allocator library defines operator new (as jemalloc does) ------
# Its C++ blocks never reached malloc: unseen (and its malloc was glibc's, through ours).
# The agent's own operator new and delete take them now, exactly; the library's arena
# gives out nothing, and none of its blocks reaches free().
mkdir own-new && cd own-new || exit 1
out=$("$AP" run -q -o own.approf -- "$WL/own_new")
check_eq "own_new: exit, the library's arena unused" "0 arena 0" "$? $out"
check_eq "own_new: own_new_work's blocks" "2 350 33200 100 10000 250 23200" \
        "$(json_of own.approf '(lambda ss: " ".join(str(x) for x in [len(ss)] + [sum(s[k] for s in ss) for k in ("allocations", "bytes", "frees", "freed_bytes", "leaked_blocks", "leaked_bytes")]))([s for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "own_new_work"])')"
cd .. || exit 1

# --- an executable with its own malloc (a Rust program with jemalloc built in) -------------
# It comes before the agent in the lookup order: nothing reaches the hooks.  An empty
# profile must not pass for a program that allocates nothing: run and the report say why.
mkdir own-malloc && cd own-malloc || exit 1
out=$("$AP" run -o own.approf -- "$WL/own_malloc" 2>run.err)
check_eq "own_malloc: exit and output unchanged" "0 own 151" "$? $out"
check_contains "own_malloc: run says whose malloc took the calls" run.err \
        "allocprof: warning: pid $(json_of own.approf 'd["process"]["pid"]') (own_malloc) calls the malloc in $WL/own_malloc, which comes before allocprof's: allocations made with it were not seen"
check_eq "own_malloc: the profile names it, nothing was seen" "$WL/own_malloc 0" \
        "$(json_of own.approf '"%s %d" % (d["process"]["foreign_malloc"], d["totals"]["allocations"])')"
"$AP" report own.approf >report.txt
check_contains "own_malloc: the report says so" report.txt \
        "warning: the program's malloc is the one in $WL/own_malloc, which comes before allocprof's"
# A program on the C library's malloc has none of it.
"$AP" run -q -o plain.approf -- "$WL/own_new" >/dev/null 2>plain.err
check_eq "own_new: no foreign malloc, no warning" "None 0" \
        "$(json_of plain.approf 'd["process"]["foreign_malloc"]') $(grep -c 'comes before' plain.err)"
# Nor has a position-dependent executable whose undefined malloc has its PLT entry as its
# address (Debian's python3): the calls reach the agent.
"$AP" run -q -o addr.approf -- "$WL/malloc_addr" 2>addr.err
check_eq "malloc_addr: no foreign malloc, every block seen, no warning" "None 10 0" \
        "$(json_of addr.approf '"%s %d" % (d["process"]["foreign_malloc"], d["totals"]["allocations"])') $(grep -c 'comes before' addr.err)"
cd .. || exit 1

# --- resource limits: the program runs as it would without allocprof --------------------
# (prlimit sets the limits of the whole run, allocprof's own included, as a shell's ulimit
# would; not under AddressSanitizer, whose shadow memory needs far more address space.)
mkdir limits && cd limits || exit 1
if ! command -v prlimit >/dev/null; then
        echo "note: no prlimit: the resource limits are not checked"
elif ldd "$AP" | grep -q libasan; then
        echo "note: allocprof built with AddressSanitizer, the resource limits are not checked"
else
        # A file-size limit below the agent's (sparse) shared memory: sizing it raised
        # SIGXFSZ, which killed the program (status 153).
        prlimit --fsize=65536 "$AP" run -q -o fsize.approf -- "$WL/edge_calls" >fsize.out 2>fsize.err
        check_eq "ulimit -f 64 KiB: edge_calls' exit, output, no profile" "0 same none" \
                "$? $(cmp -s ../edge.native fsize.out && echo same) $(ls fsize.approf 2>/dev/null || echo none)"
        check_contains "ulimit -f 64 KiB: run says why" fsize.err \
                "could not register with the collector: its file-size limit (ulimit -f, 64 KiB) is below the size of the agent's shared memory"
        # Near its address-space limit, the program must not lose to the agent the room it
        # needs (a 150 MiB block and a thread, under 200 MiB): the agent keeps out of a
        # process whose limit is less than 4 times its 70 MiB.
        prlimit --as=$((200 << 20)) "$WL/big_alloc" 150 >as.native 2>&1
        check_eq "ulimit -v 200 MiB: big_alloc 150 runs unprofiled" "0 ok" "$? $(cat as.native)"
        prlimit --as=$((200 << 20)) "$AP" run -q -o as.approf -- "$WL/big_alloc" 150 >as.out 2>as.err
        check_eq "ulimit -v 200 MiB: big_alloc 150 profiled: exit, output, no profile" "0 ok none" \
                "$? $(cat as.out) $(ls as.approf 2>/dev/null || echo none)"
        check_contains "ulimit -v 200 MiB: run says why" as.err \
                "could not register with the collector: its address-space limit (ulimit -v, 200 MiB) is less than 4 times the agent's 70 MiB of shared memory: it runs unprofiled"
        check_eq "ulimit -v 200 MiB: no guess (statically linked...)" 0 "$(grep -c 'statically linked' as.err)"
        # Every image of a build says so: the first two lines (the program's, the first
        # other's), then a count.
        prlimit --as=$((200 << 20)) "$AP" run -q -o as.approf -- sh -c \
                "$WL/big_alloc 1 && $WL/big_alloc 1 && $WL/big_alloc 1" >as3.out 2>as3.err
        check_eq "ulimit -v 200 MiB, three images: exit, output" "0 ok ok ok" "$? $(cat as3.out | tr '\n' ' ' | sed 's/ $//')"
        check_eq "ulimit -v 200 MiB, three images: two said, the rest counted" "2 1" \
                "$(grep -c 'could not register with the collector: its address-space limit' as3.err) $(grep -c '^allocprof: 2 more process images could not register' as3.err)"
        # Room for the agent's 70 MiB but for two more rings only (300 / 4 = 75 MiB): the
        # threads beyond run unrecorded, their events counted as dropped.  One malloc arena:
        # each thread's own would reserve 64 MiB (128 while it is being aligned), and in
        # the 225 MiB the agent leaves it the program then failed to create a thread about
        # once in thirty runs.
        MALLOC_ARENA_MAX=1 prlimit --as=$((300 << 20)) "$AP" run -q -o as4.approf -- "$WL/threads" >/dev/null 2>as4.err
        check_eq "ulimit -v 300 MiB: threads' exit" 0 $?
        check_eq "ulimit -v 300 MiB: every allocation recorded or counted as dropped, some dropped" \
                "4404 True" "$(json_of as4.approf '"%d %s" % (d["totals"]["allocations"] + d["totals"]["dropped_events"] - d["totals"]["dropped_frees"], d["totals"]["dropped_events"] > 0)')"
        check_eq "ulimit -v 300 MiB: every dropped event counted as a thread's without a ring" \
                True "$(json_of as4.approf 'd["totals"]["dropped_no_ring"] == d["totals"]["dropped_events"]')"
        "$AP" report as4.approf >as4.rep
        check_contains "ulimit -v 300 MiB: the report says why" as4.rep \
                "events were lost by threads that had no ring to record into"
        # Room for each process's agent, not for the collector's mappings of them all at
        # once (run's own collector is under the limit too): those it cannot take are
        # said, not silently left unprofiled.
        prlimit --as=$((290 << 20)) "$AP" run -q -o as5.approf -- sh -c \
                'for i in 1 2 3 4 5 6; do sleep 1 & done; wait' >/dev/null 2>as5.err
        check_eq "ulimit -v 290 MiB, six processes at once: exit" 0 $?
        check_contains "ulimit -v 290 MiB, six processes at once: the collector says what it could not take" \
                as5.err "could not register with the collector: the collector cannot map the shared memory: Cannot allocate memory (its address-space limit, ulimit -v, is 290 MiB): it runs unprofiled"
fi
# A sandbox that refuses memfd_create (with EPERM: a filter in force before run started,
# a container's): run says so, not "statically linked, setuid...".
"$WL/no_memfd" "$AP" run -q -o nomemfd.approf -- "$WL/edge_calls" >nomemfd.out 2>nomemfd.err
check_eq "memfd_create refused: edge_calls' exit, output, no profile" "0 same none" \
        "$? $(cmp -s ../edge.native nomemfd.out && echo same) $(ls nomemfd.approf 2>/dev/null || echo none)"
check_contains "memfd_create refused: run says why" nomemfd.err \
        "could not register with the collector: memfd_create, which the agent's shared memory needs, failed: Operation not permitted"
check_eq "memfd_create refused: no guess (statically linked...)" 0 "$(grep -c 'statically linked' nomemfd.err)"
cd .. || exit 1

# --- run by root, a worker that drops its privileges before it allocates -----------------
# Its agent must reach root's collector (directory 0711, a secret socket name, 0666) and
# be taken though of another user; it was refused, and its worker ran unprofiled.
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
        mkdir setuid && cd setuid || exit 1
        "$AP" run -q -o main.approf -- "$WL/setuid_fork"
        check_eq "setuid_fork exit" 0 $?
        check_eq "setuid_fork: the parent's figures" "1 100 1 100 0 0" "$(json_of main.approf "$totals")"
        child=$(ls allocprof.setuid_fork.*.approf 2>/dev/null)
        check_eq "setuid_fork: the worker has a profile" 1 "$(echo "$child" | grep -c .)"
        [ -n "$child" ] && check_eq "setuid_fork: the worker's figures" \
                "1000 40000 500 20000 500 20000" "$(json_of "$child" "$totals")"
        # Under RLIMIT_NPROC, run's threads count against the user's processes: it takes
        # one (itself, the program's parent), not two, and a program that may start two
        # more processes (sh, and its child) still can.
        if command -v setpriv >/dev/null && command -v prlimit >/dev/null &&
                [ "$(ps -u nobody -L 2>/dev/null | grep -c .)" -le 1 ]; then
                out=$(env -u LD_PRELOAD setpriv --reuid=65534 --regid=65534 --clear-groups \
                        prlimit --nproc=3 "$AP" run -q --no-follow -o /dev/null -- sh -c "$WL/edge_calls >/dev/null && echo ok" 2>&1)
                check_eq "nobody under RLIMIT_NPROC 3: sh can still start its child" "ok 0" "$out $?"
        fi
        # Another user can neither list the socket's directory nor ask the collector for
        # anything (only agents are taken from other users).
        if command -v setpriv >/dev/null; then
                AP="$AP" "$AP" run -q -o ctl.approf -- sh -c '
                        # (without the agent: an ASan-built allocprof wants its runtime first)
                        nobody() { env -u LD_PRELOAD setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
                        nobody ls "$(dirname "$ALLOCPROF_SOCKET")" >/dev/null 2>&1; echo "ls $?"
                        nobody "$AP" ps 2>&1 >/dev/null; echo "ps $?"' >ctl.out
                check_eq "root's run: another user can neither list its socket's directory nor query it" \
                        "ls 2|allocprof: this collector serves only uid 0: you are uid 65534|ps 1" \
                        "$(tr '\n' '|' <ctl.out | sed 's/|$//')"
        fi
        cd .. || exit 1
else
        echo "note: not root: the privilege-dropping worker is not checked"
fi

# --- the environment the program sees: its own, and the variables USAGE.md names --------
env | grep -v '^_=' | sort >env.native
"$AP" run -q -o env.approf -- env | grep -v '^_=' | sort >env.run
check_eq "environment: the variables run adds" \
        "ALLOCPROF_SECCOMP ALLOCPROF_SOCKET ALLOCPROF_UNWIND" \
        "$(comm -13 env.native env.run | cut -d= -f1 | grep -v '^LD_PRELOAD$' | tr '\n' ' ' | sed 's/ $//')"
check_eq "environment: nothing else changed or removed" "" \
        "$(comm -23 env.native env.run | grep -v '^LD_PRELOAD=')"

# --- job control in an interactive shell on a terminal ------------------------------------
# A program that stops on its own (kill -STOP $$, a shell's `suspend`) is a stopped job
# for the shell that runs it, which takes the terminal back; `fg` gives the terminal back
# to it and continues it.  allocprof stops with it, by the same signal, and on `fg` hands
# the terminal back to the program's process group.
if command -v bash >/dev/null 2>&1; then
        cat >ptyscript <<EOF
expect \$ 
send "$AP" run -q -o stop.approf -- sh -c 'kill -STOP \$\$; echo "resumed \$((6 * 7))"'; echo "rc=\$?"\r
expect rc=147
send fg\r
expect resumed 42
send "$AP" run -q -o suspend.approf -- bash --norc --noprofile -i\r
expect \$ 
send PS1='inner\$ '; suspend\r
expect Stopped
send echo "outer \$((2 * 3))"\r
expect outer 6
send fg\r
send echo "inner \$((2 * 4))"\r
expect inner 8
send exit 7\r
expect \$ 
send echo "rc=\$?"\r
expect rc=7
EOF
        python3 "$SRC/tests/integration/ptyshell.py" <ptyscript >pty.out 2>&1
        checks=$((checks + 1))
        grep -q TIMEOUT pty.out && { fail "job control on a terminal:"; sed 's/^/    /' pty.out; }
        check_eq "job control: the programs that stopped themselves were stopped jobs" 2 \
                "$(grep -c '^\[1\]+  Stopped ' pty.out)"
        # A program that leaves another process group in the terminal's foreground: a
        # shell would take the terminal back; allocprof's summary, written from what is now
        # the background, is not stopped by `stty tostop`.
        cat >ptyscript <<EOF
expect \$ 
send stty tostop; "$AP" run -o tostop.approf -- python3 -c 'import os, signal; signal.signal(signal.SIGTTOU, signal.SIG_IGN); os.setpgid(0, 0); os.tcsetpgrp(0, os.getpgrp())'; echo "rc=\$?"\r
expect profile written to tostop.approf
expect rc=0
EOF
        python3 "$SRC/tests/integration/ptyshell.py" <ptyscript >pty.out 2>&1
        checks=$((checks + 1))
        grep -q TIMEOUT pty.out && { fail "the terminal left to another group, stty tostop:"; sed 's/^/    /' pty.out; }
else
        echo "note: no bash: job control is not checked"
fi

# Stopped alone and continued alone by someone else (kill -STOP PID, then kill -CONT PID):
# allocprof, stopped with it, is continued too, and ends with it.
"$AP" run -q -o stopcont.approf -- sh -c 'echo $$ >cpid; kill -STOP $$; echo "continued $((3 * 5))"' >stopcont.out &
apid=$!
state() { sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null; }
for i in $(seq 200); do [ -s cpid ] && [ "$(state "$(cat cpid)")" = T ] && [ "$(state $apid)" = T ] && break; sleep 0.05; done
check_eq "a program that stopped itself: allocprof stopped with it" T "$(state $apid)"
kill -CONT "$(cat cpid)"
for i in $(seq 200); do case $(state $apid) in Z | "") break ;; esac; sleep 0.05; done
check_eq "the program continued by someone else: allocprof went on and ended" ended \
        "$(case $(state $apid) in Z | "") echo ended ;; *) state $apid ;; esac)"
kill -CONT $apid 2>/dev/null
wait $apid
check_eq "the program continued by someone else: its exit status and output" "0 continued 15" \
        "$? $(cat stopcont.out)"

echo "$checks checks, $fails failed"
[ "$fails" -eq 0 ]
