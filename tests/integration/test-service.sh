#!/bin/bash
# allocprofd as a service, checked the way a demanding user would: daemonizing and its
# private directory, many processes at once, `allocprof run` through the daemon giving
# the same profiles as a private collector, dormant programs attached and detached with
# live reports, another user kept out, hostile clients, and a daemon that is killed or
# stopped while programs run.
#
#   test-service.sh ALLOCPROF ALLOCPROFD AGENT BUILD_ROOT SOURCE_ROOT
#
# Every daemon started here uses a private XDG_RUNTIME_DIR or --socket under a temporary
# directory (never the user's own daemon) and is killed on exit.  Runs as root in CI;
# the checks with a second user are skipped (with a note) otherwise.
#
# SPDX-License-Identifier: MIT OR Apache-2.0
set -u
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
AP=$(abs "$1") APD=$(abs "$2") AGENT=$(abs "$3") BUILD=$(abs "$4") SRC=$(abs "$5")
HELPER="$SRC/tests/integration/service_client.py"
ATTACHEE="$BUILD/tests/workloads/attachee"
THREADS="$BUILD/tests/workloads/threads"
FORKER="$BUILD/tests/workloads/forker"
DEMO="$BUILD/examples/demo"
# The interpreter itself, not a wrapper script (pyenv's shims cost 0.1 s a call).
PY=$(python3 -c 'import sys; print(sys.executable)')

T=$(mktemp -d)
SHARED=""     # a 1777 directory another user can reach (the security checks)
OTHER_USER="" # the user created for them
DAEMONS=""    # pids of the daemonized allocprofds started here (not our children)

ours() { # pid: still an allocprofd of this test (never a pid reused by someone else)
        [ "$(cat "/proc/$1/comm" 2>/dev/null)" = allocprofd ] &&
                tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" |
                grep -q "^XDG_RUNTIME_DIR=\($T\|${SHARED:-$T}\)/"
}
cleanup() {
        local p
        # Our own children (programs, foreground daemons) are jobs of this shell.
        for p in $(jobs -p); do kill -9 "$p" 2>/dev/null; done
        for p in $DAEMONS; do ours "$p" && kill -9 "$p"; done
        [ -n "$OTHER_USER" ] && userdel "$OTHER_USER" 2>/dev/null
        [ -n "$SHARED" ] && rm -rf "$SHARED"
        rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$T" || exit 1

# Never the user's own daemon: the default path is ours, and no override leaks in.
mkdir -m 700 "$T/xdg" "$T/out"
export XDG_RUNTIME_DIR="$T/xdg"
unset ALLOCPROF_DAEMON_SOCKET ALLOCPROF_SOCKET ALLOCPROF_MODE ALLOCPROF_SAMPLE LD_PRELOAD
SOCK="$T/xdg/allocprof/allocprofd.sock"
export NO_COLOR=1

. "$SRC/tests/integration/checks.sh"
py() { # python-expression-on-d (JSON on stdin)
        $PY -c "import json,sys; d=json.load(sys.stdin); print($1)"
}
json_of() { # profile-or-pid python-expression-on-d (over its JSON report)
        "$AP" report "$1" --json 2>/dev/null | py "$2"
}
ps_of() { # pid python-expression-on-p (p: its entry in `allocprof ps --json`, or None)
        "$AP" ps --json 2>/dev/null |
                $PY -c "import json,sys; p=([x for x in json.load(sys.stdin)['processes'] if x['pid']==$1]+[None])[0]; print($2)"
}
daemon_call() { # socket request-json -> the response line
        $PY "$HELPER" call "$1" "$2" 2>/dev/null | sed -n 's/^response //p'
}
daemon_pid() { # socket -> pid of the collector answering there
        daemon_call "$1" '{"v":1,"cmd":"hello"}' | py 'd.get("pid", "")' 2>/dev/null
}
within() { # value target percent -> True/False
        $PY -c "print(abs($1 - $2) <= $2 * $3 / 100)"
}
wait_files() { # count pattern... : waits (10 s at most) until that many files match
        local want=$1 n i
        shift
        for i in $(seq 100); do
                # shellcheck disable=SC2048,SC2086 # the patterns are globs ($T has no spaces)
                n=$(ls -d $* 2>/dev/null | wc -l)
                [ "$n" -ge "$want" ] && return 0
                sleep 0.1
        done
        return 1
}
wait_gone() { # pid seconds : waits until the process is gone (a zombie is gone: a
        # daemonized process is reaped by whoever adopted it, maybe late)
        local i
        for i in $(seq 0 $(($2 * 10))); do
                case $(ps -o stat= -p "$1" 2>/dev/null) in "" | Z*) return 0 ;; esac
                sleep 0.1
        done
        return 1
}
now_ms() { date +%s%3N; }

# Programs driven line by line through FIFOs (attachee): start NAME CMD... runs CMD with
# its stdin and stdout on FIFOs and waits for "ready"; say NAME LINE sends a command and
# prints the answer.  Descriptors are opened read-write so that nothing blocks on open.
declare -A DPID DW DR
drv_start() {
        local name=$1 w r line
        shift
        mkfifo "$T/$name.in" "$T/$name.out"
        "$@" <"$T/$name.in" >"$T/$name.out" 2>"$T/$name.err" &
        DPID[$name]=$!
        exec {w}<>"$T/$name.in" {r}<>"$T/$name.out"
        DW[$name]=$w
        DR[$name]=$r
        read -r -t 20 line <&"$r"
        [ "$line" = ready ]
}
say() { # name line -> the answer ("ok"), or "timeout"
        local ans=timeout
        echo "$2" >&"${DW[$1]}"
        read -r -t 30 ans <&"${DR[$1]}"
        echo "$ans"
}
drv_exit() { # name code : sends "exit code"; the program's exit status -> $EXITED
        echo "exit $2" >&"${DW[$1]}"
        wait "${DPID[$1]}"
        EXITED=$?
        local w=${DW[$1]} r=${DR[$1]}
        exec {w}>&- {r}>&-
}
# "${UNDER[@]}" prog args... : run with the agent, on the main daemon (an array, not a
# function, so that `... &` gives the program's own pid in $!)
UNDER=(env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK")

# =====================================================================================
# a. start and stop: daemonizing, the private directory, one daemon per socket
# =====================================================================================
t0=$(now_ms)
"$APD" --output-dir out 2>start.err # relative: resolved before the daemon leaves for /
check_eq "allocprofd daemonizes: the parent exits 0" 0 $?
# The parent returns only once the daemon listens: no waiting here.
checks=$((checks + 1))
[ -S "$SOCK" ] || fail "no socket at $SOCK when the parent exited"
D1=$(daemon_pid "$SOCK")
check_eq "the daemon answers at once" True "$($PY -c "print('$D1'.isdigit())")"
DAEMONS="$DAEMONS $D1"
check_eq "daemonized: not our child" True "$([ -n "$D1" ] && [ "$(ps -o ppid= -p "$D1" | tr -d ' ')" != $$ ] && echo True)"
check_eq "service directory is 0700" 700 "$(stat -c %a "$T/xdg/allocprof")"
check_eq "socket in the service directory" socket "$(stat -c %F "$SOCK" | sed 's/^.* //')"
check_contains "log in the service directory" "$T/xdg/allocprof/allocprofd.log" "listening on $SOCK"
check_eq "nothing on the caller's stderr" "" "$(cat start.err)"

"$APD" --output-dir "$T/out" 2>second.err
check_eq "a second allocprofd on the same socket" 1 $?
check_contains "second: why" second.err "another collector is listening"
"$APD" --foreground --socket "$SOCK" --output-dir "$T/out" 2>second-fg.err
check_eq "a second allocprofd --socket on the same path" 1 $?
check_contains "second --socket: why" second-fg.err "another collector is listening on $SOCK"
check_eq "the first one still answers" "$D1" "$(daemon_pid "$SOCK")"

# A service directory that is not private, or a symbolic link: refused, by name.
mkdir -m 700 x755 xlink xreal && mkdir -m 755 x755/allocprof && mkdir -m 700 xreal/allocprof
ln -s "$T/xreal/allocprof" xlink/allocprof
XDG_RUNTIME_DIR="$T/x755" "$APD" --output-dir "$T/out" 2>x755.err
check_eq "service directory 0755 refused" 1 $?
check_contains "0755: the path named" x755.err "$T/x755/allocprof"
XDG_RUNTIME_DIR="$T/xlink" "$APD" --output-dir "$T/out" 2>xlink.err
check_eq "service directory that is a symlink refused" 1 $?
check_contains "symlink: the path named" xlink.err "$T/xlink/allocprof"
checks=$((checks + 1))
[ ! -e xreal/allocprof/allocprofd.sock ] || fail "a socket was created through the symlink"

# A daemon killed with SIGKILL leaves its socket file behind; the next one replaces it.
mkdir -m 700 xstale
XDG_RUNTIME_DIR="$T/xstale" "$APD" --output-dir "$T/out"
s1=$(daemon_pid "$T/xstale/allocprof/allocprofd.sock")
DAEMONS="$DAEMONS $s1"
kill -9 "$s1" && wait_gone "$s1" 5
checks=$((checks + 1))
[ -S xstale/allocprof/allocprofd.sock ] || fail "SIGKILL: no stale socket left to replace (test premise)"
XDG_RUNTIME_DIR="$T/xstale" "$APD" --output-dir "$T/out" 2>stale.err
check_eq "stale socket: a new daemon starts" 0 $?
s2=$(daemon_pid "$T/xstale/allocprof/allocprofd.sock")
DAEMONS="$DAEMONS $s2"
check_eq "stale socket: the new daemon answers" True "$([ -n "$s2" ] && [ "$s2" != "$s1" ] && echo True)"
kill -TERM "$s2" && wait_gone "$s2" 5
checks=$((checks + 1))
[ ! -e xstale/allocprof/allocprofd.sock ] || fail "SIGTERM: the daemon left its socket behind"

# ALLOCPROF_DAEMON_SOCKET moves the default; a relative one is refused.
mkdir -m 700 xenv
ALLOCPROF_DAEMON_SOCKET="$T/xenv/d.sock" "$APD" --output-dir "$T/out"
check_eq "ALLOCPROF_DAEMON_SOCKET: starts" 0 $?
e1=$(daemon_pid "$T/xenv/d.sock")
DAEMONS="$DAEMONS $e1"
check_eq "ALLOCPROF_DAEMON_SOCKET: listens there" True "$([ -n "$e1" ] && echo True)"
[ -n "$e1" ] && kill -TERM "$e1" && wait_gone "$e1" 5
ALLOCPROF_DAEMON_SOCKET="rel.sock" "$APD" --output-dir "$T/out" 2>rel.err
check_eq "relative ALLOCPROF_DAEMON_SOCKET refused" 1 $?
# A relative --socket is taken from the directory allocprofd was started in, not from /
# where the daemon goes, and it is told absolute.
mkdir -m 700 xrel
(cd xrel && "$APD" --socket rel.sock --output-dir "$T/out")
check_eq "relative --socket: starts" 0 $?
r1=$(daemon_call "$T/xrel/rel.sock" '{"v":1,"cmd":"hello"}')
DAEMONS="$DAEMONS $(echo "$r1" | py 'd.get("pid", "")' 2>/dev/null)"
check_eq "relative --socket: listens in the directory it was started in, says so absolute" \
        "$T/xrel/rel.sock" "$(echo "$r1" | py 'd.get("socket")' 2>/dev/null)"
rp=$(echo "$r1" | py 'd.get("pid", "")' 2>/dev/null)
checks=$((checks + 1))
if [ -e /rel.sock ]; then
        fail "relative --socket: a socket was made at /rel.sock"
        [ -n "$rp" ] || rp=$(daemon_pid /rel.sock) # stopped below all the same
        DAEMONS="$DAEMONS $rp"
fi
[ -n "$rp" ] && kill -TERM "$rp" && wait_gone "$rp" 5
# Bad usage: exit 2 and one line, not the whole help.
"$APD" --no-such-option 2>badopt.err
check_eq "allocprofd with an unknown option: exit 2, one line" "2 1" "$? $(wc -l <badopt.err)"
"$APD" extra 2>badarg.err
check_eq "allocprofd with an argument: exit 2, one line" "2 1" "$? $(wc -l <badarg.err)"

# Socket activation (systemd's LISTEN_FDS/LISTEN_PID), if the tool is there.
if command -v systemd-socket-activate >/dev/null; then
        mkdir -m 700 act
        systemd-socket-activate -l "$T/act/act.sock" "$APD" --output-dir "$T/act" 2>act.err &
        act=$!
        for i in $(seq 50); do [ -S act/act.sock ] && break; sleep 0.1; done
        # systemd-socket-activate execs allocprofd on the first connection: same pid.
        check_eq "socket activation: the daemon answers on the inherited socket" "$act" \
                "$(daemon_pid "$T/act/act.sock")"
        env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$T/act/act.sock" "$THREADS"
        wait_files 1 act/allocprof.threads.*.approf
        check_eq "socket activation: a program profiled" "4404 44" \
                "$(json_of "$(ls act/allocprof.threads.*.approf | head -1)" 'd["totals"]["allocations"], d["totals"]["leaked_blocks"]')"
        kill -TERM "$act"
        wait "$act"
        check_eq "socket activation: SIGTERM, exit 0" 0 $?
else
        echo "note: systemd-socket-activate not installed: socket activation not checked"
fi
echo "a. start/stop: $(($(now_ms) - t0)) ms"

# =====================================================================================
# b. many processes at once
# =====================================================================================
t0=$(now_ms)
mkdir b && cd b || exit 1
pids=""
for i in $(seq 64); do
        "${UNDER[@]}" "$THREADS" &
        pids="$pids $!"
done
bad=0
for p in $pids; do wait "$p" || bad=$((bad + 1)); done
check_eq "64 concurrent 4-thread programs: all exit 0" 0 $bad
files=""
for p in $pids; do files="$files $T/out/allocprof.threads.$p.approf"; done
# shellcheck disable=SC2086
wait_files 64 $files
# shellcheck disable=SC2086
$PY "$HELPER" summary "$AP" thread_hold,thread_churn $files >threads.sum 2>threads.sum.err
check_eq "64 profiles, one per process" 64 "$(wc -l <threads.sum)"
check_eq "each profile exact (threads.expected.json)" 64 \
        "$(grep -c ' None totals:4404/4360/44/0/0 thread_hold:400/22400/360/40/2240 thread_churn:4000/32000/4000/0/0$' threads.sum)"
check_eq "profiles of the right processes" "$(echo $pids | tr ' ' '\n' | sort -n | tr '\n' ' ')" \
        "$(cut -d' ' -f1 threads.sum | sort -n | tr '\n' ' ')"
# ps keeps the last 64 that ended: these, finished, with their figures and their parent.
daemon_call "$SOCK" '{"v":1,"cmd":"ps"}' >ps64.json
check_eq "ps: the 64 ended processes listed as finished, with their allocations" 64 \
        "$(py "len([p for p in d['processes'] if p['pid'] in ($(echo $pids | tr ' ' ','),) and p['state'] == 'finished' and p['allocations'] == 4404 and p['threads'] == 5])" <ps64.json)"
check_eq "ps: a finished process keeps its parent pid (ppid)" 64 \
        "$(py "len([p for p in d['processes'] if p['pid'] in ($(echo $pids | tr ' ' ','),) and p['ppid'] == $$])" <ps64.json)"

# 16 `allocprof run` at once through the daemon: own profile, own exit status.
rpids=""
for i in $(seq 16); do
        printf 'threads 4 50 100\nalloc 10 100\nexit %d\n' "$i" |
                "$AP" run -q -o "r$i.approf" -- "$ATTACHEE" >"o$i.out" 2>"o$i.err" &
        rpids="$rpids $!"
done
st=""
for p in $rpids; do
        wait "$p"
        st="$st $?"
done
check_eq "16 concurrent runs: each program's exit status" "$(seq 16 | tr '\n' ' ' | sed 's/^/ /;s/ $//')" "$st"
same=0
for i in $(seq 16); do [ "$(cat "o$i.out")" = "$(printf 'ready\nok\nok')" ] && same=$((same + 1)); done
check_eq "16 concurrent runs: each program's output" 16 $same
for i in $(seq 16); do
        $PY "$HELPER" summary "$AP" thread_blocks,alloc_attached "r$i.approf" | sed "s/^[0-9]* /r$i /"
done >runs.sum 2>runs.sum.err
ok=0
for i in $(seq 16); do
        grep -qx "r$i $i totals:221/204/17/0/0 thread_blocks:204/21600/204/0/0 alloc_attached:10/1000/0/10/1000" runs.sum && ok=$((ok + 1))
done
check_eq "16 concurrent runs: each profile exact, with its own exit status" 16 $ok
[ $ok = 16 ] || head -3 runs.sum runs.sum.err
# They went through the daemon: it lists their processes (as finished).
daemon_call "$SOCK" '{"v":1,"cmd":"ps"}' >ps.json
served=0
for i in $(seq 16); do
        p=$(json_of "r$i.approf" 'd["process"]["pid"]')
        [ "$(py "any(x['pid']==$p for x in d['processes'])" <ps.json)" = True ] && served=$((served + 1))
done
check_eq "16 concurrent runs were served by the daemon" 16 $served
extra=0
for i in $(seq 16); do
        p=$(json_of "r$i.approf" 'd["process"]["pid"]')
        [ -e "$T/out/allocprof.attachee.$p.approf" ] && extra=$((extra + 1))
done
check_eq "runs through the daemon: no second copy in the daemon's directory" 0 $extra
# While a run goes on, the daemon lists its program as part of a run session.
"$AP" run -q -- sh -c "echo \$\$ >runsh.pid; env -u LD_PRELOAD \"$AP\" ps --json >runsh.json"
check_eq "ps during a daemon run: the program, recording, in a run session" "full recording True" \
        "$(py "' '.join(str(x) for p in d['processes'] if p['pid'] == $(cat runsh.pid) for x in (p['mode'], p['state'], p['run_session']))" <runsh.json)"
check_eq "ps --json: version 1, the documented fields" "1 allocations command live_bytes mode pid ppid run_session sample_interval state threads uid" \
        "$(py "d['version'], ' '.join(sorted([p for p in d['processes'] if p['pid'] == $(cat runsh.pid)][0]))" <runsh.json)"
check_eq "run through the daemon: the program's ALLOCPROF_SOCKET is the daemon's" "$SOCK" \
        "$("$AP" run -q -- sh -c 'printf %s "$ALLOCPROF_SOCKET"')"
cd "$T" || exit 1
echo "b. concurrency: $(($(now_ms) - t0)) ms"

# =====================================================================================
# c. run through the daemon and with --no-daemon: the same profiles
# =====================================================================================
t0=$(now_ms)
mkdir c && cd c || exit 1
"$AP" run -q -o daemon.approf -- "$DEMO" >daemon.out
check_eq "demo through the daemon: exit" 0 $?
"$AP" run -q --no-daemon -o private.approf -- "$DEMO" >private.out
check_eq "demo with --no-daemon: exit" 0 $?
checks=$((checks + 1))
cmp -s daemon.out private.out || fail "demo's output differs between daemon and private runs"
check_eq "--no-daemon: a private collector" True \
        "$("$AP" run -q --no-daemon -- sh -c 'printf %s "$ALLOCPROF_SOCKET"' | $PY -c "import sys; s=sys.stdin.read(); print(s != '$SOCK' and 'allocprof-run-' in s)")"
$PY "$HELPER" fingerprint "$AP" daemon.approf >daemon.fp
$PY "$HELPER" fingerprint "$AP" private.approf >private.fp
check_eq "demo: same totals, sites, modules and histogram either way" True \
        "$([ -s daemon.fp ] && cmp -s daemon.fp private.fp && echo True)"
cmp -s daemon.fp private.fp || diff <(tr ',' '\n' <daemon.fp) <(tr ',' '\n' <private.fp) | head -10
check_eq "demo through the daemon: the profile is the run's (exit status, run id)" "0 True" \
        "$(json_of daemon.approf 'd["process"]["exit_status"], d["process"]["run_id"] is not None')"

for how in daemon private; do
        mkdir "$how" && cd "$how" || exit 1
        opt=""
        [ $how = private ] && opt=--no-daemon
        "$AP" run $opt -o main.approf -- "$FORKER" 2>run.err
        check_eq "forker ($how): exit" 0 $?
        check_eq "forker ($how): 5 profiles (parent, 3 workers, the exec'ed true)" 5 "$(ls *.approf | wc -l)"
        for f in *.approf; do $PY "$HELPER" fingerprint "$AP" "$f"; done | sort >all.fp
        check_eq "forker ($how): report --all merges the run" "5 0" \
                "$("$AP" report --all --json | py 'd["process"]["merged_from"], d["process"]["exit_status"]')"
        cd .. || exit 1
done
# A child that registers only after the program ended is the run's too, through the
# daemon as with a private collector.
for how in daemon private; do
        opt=""
        [ $how = private ] && opt=--no-daemon
        mkdir "orphan-$how" && (cd "orphan-$how" && "$AP" run -q $opt -o main.approf -- "$BUILD/tests/workloads/orphan" 200)
        check_eq "orphan ($how): exit, the child's profile from the run" "3 3 3000 1000 False" \
                "$? $(for f in orphan-$how/allocprof.orphan.*.approf; do json_of "$f" 'd["totals"]["allocations"], d["totals"]["bytes"], d["totals"]["leaked_bytes"], d["live"]'; done)"
done
check_eq "forker: the same 5 profiles either way" True \
        "$([ -s daemon/all.fp ] && cmp -s daemon/all.fp private/all.fp && echo True)"
check_eq "forker: the same summary lines either way" \
        "$(grep -c 'profile written' private/run.err)" "$(grep -c 'profile written' daemon/run.err)"
# Sampled, with a fixed seed: the same estimates either way (single-threaded program).
ALLOCPROF_SAMPLE_SEED=42 "$AP" run -q --sample 4K -o sd.approf -- "$BUILD/tests/workloads/mixed"
ALLOCPROF_SAMPLE_SEED=42 "$AP" run -q --no-daemon --sample 4K -o sp.approf -- "$BUILD/tests/workloads/mixed"
$PY "$HELPER" fingerprint "$AP" sd.approf >sd.fp
$PY "$HELPER" fingerprint "$AP" sp.approf >sp.fp
check_eq "sampled with a fixed seed: the same profile either way" True \
        "$(grep -q '"mode": "sampled"' sd.fp && cmp -s sd.fp sp.fp && echo True)"
if ! cmp -s sd.fp sp.fp; then
        diff <(tr ',' '\n' <sd.fp) <(tr ',' '\n' <sp.fp) | head -20
fi
cd "$T" || exit 1
echo "c. daemon vs private: $(($(now_ms) - t0)) ms"

# =====================================================================================
# d. dormant, attach, detach, attach again, --for, snapshots, and refusals
# =====================================================================================
t0=$(now_ms)
mkdir d && cd d || exit 1
drv_start dorm env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" ALLOCPROF_MODE=dormant "$ATTACHEE"
check_eq "dormant attachee started" 0 $?
A=${DPID[dorm]}
check_eq "dormant: 1000 blocks made before attach" ok "$(say dorm 'before 1000 1000')"
check_eq "ps: dormant" "dormant dormant 0 0" "$(ps_of "$A" 'p["mode"], p["state"], p["allocations"], p["live_bytes"]')"
check_eq "ps: command and parent" "True True" \
        "$(ps_of "$A" "p['command'].endswith('attachee'), p['ppid']==$$")"
check_eq "ps (text): the dormant program" "$A $$ dormant dormant 0" \
        "$("$AP" ps | awk -v p="$A" '$1 == p {print $1, $2, $3, $4, $5}')"
"$AP" report "$A" >/dev/null 2>dormant-report.err
check_eq "report of a dormant program never attached: refused" 1 $?
check_eq "report of a dormant program never attached: one line saying why" \
        "allocprof: pid $A is dormant and was never attached: nothing is recorded yet ('allocprof attach $A' starts recording)" \
        "$(cat dormant-report.err)"

"$AP" attach "$A" --sample 1K 2>attach.err
check_eq "attach --sample 1K" 0 $?
check_contains "attach says so" attach.err "attached to pid $A"
check_eq "ps: attached = sampled, recording" "sampled recording 1024" \
        "$(ps_of "$A" 'p["mode"], p["state"], p["sample_interval"]')"
check_eq "attached: 4000 blocks of 1000 bytes" ok "$(say dorm 'alloc 4000 1000')"
"$AP" report "$A" --json >live1.json
check_eq "report PID: live, no exit status yet, sampled" "True None sampled 1024 True" \
        "$(py 'd["live"], d["process"]["exit_status"], d["mode"], d["sample_interval"], d["estimated"]' <live1.json)"
site='[s for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "alloc_attached"]'
est_n=$(py "sum(s['allocations'] for s in $site)" <live1.json)
est_b=$(py "sum(s['leaked_bytes'] for s in $site)" <live1.json)
check_true "attached window: ~4000 allocations estimated (got $est_n)" "$(within "$est_n" 4000 10)"
check_true "attached window: ~4,000,000 live bytes estimated (got $est_b)" "$(within "$est_b" 4000000 10)"
check_eq "nothing from before the attach" 0 \
        "$(py '[s["allocations"] for s in d["sites"] if s["frames"][0]["function"] == "alloc_before"] or [0]' <live1.json | tr -d '[]')"
live_ps=$(ps_of "$A" 'p["live_bytes"]')
check_eq "ps live_bytes = the live report's" "$(py 'd["totals"]["leaked_bytes"]' <live1.json)" "$live_ps"

# Blocks from before the attach: their array realloc'ed while attached (a free of a block
# never seen), 1000 more blocks sampled, then all of them freed: the unseen ones change
# nothing, the sampled ones go back to exactly 0, nothing is ever negative.
check_eq "attached: 1000 more 'before' blocks (realloc of an array never seen)" ok \
        "$(say dorm 'before 1000 1000')"
bsite='[s for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "alloc_before"]'
"$AP" report "$A" --json >live1b.json
n=$(py "sum(s['allocations'] for s in $bsite)" <live1b.json)
check_true "attached: ~1000 'before' blocks estimated (got $n)" "$(within "$n" 1000 15)"
check_eq "realloc of a block never seen: no unmatched free" 0 "$(py 'd["totals"]["unmatched_frees"]' <live1b.json)"
check_eq "free-before" ok "$(say dorm free-before)"
"$AP" report "$A" --json >live2.json
check_eq "after free-before: unmatched_frees 0, live unchanged, nothing negative" "0 $live_ps True" \
        "$(py 'd["totals"]["unmatched_frees"], d["totals"]["leaked_bytes"], all(s["leaked_bytes"] >= 0 and s["leaked_blocks"] >= 0 for s in d["sites"])' <live2.json)"
check_eq "after free-before: ps live_bytes unchanged" "$live_ps" "$(ps_of "$A" 'p["live_bytes"]')"
check_eq "after free-before: the sampled 'before' blocks all freed" "0 0" \
        "$(py "sum(s['leaked_bytes'] for s in $bsite), sum(s['leaked_blocks'] for s in $bsite)" <live2.json)"

"$AP" attach "$A" --sample 1K 2>attach2.err
check_eq "attach while attached (recording)" 1 $?
check_contains "attach while attached: why" attach2.err "already recording"
"$AP" detach "$A" 2>detach.err
check_eq "detach" 0 $?
check_eq "ps: detached (dormant state), its figures kept" "detached dormant $live_ps" \
        "$(ps_of "$A" 'p["mode"], p["state"], p["live_bytes"]')"
"$AP" detach "$A" 2>detach2.err
check_eq "detach when not attached" 1 $?
check_contains "detach when not attached: why" detach2.err "not attached"

# Detached: new blocks are not sampled, sampled ones are still followed to their free.
check_eq "detached: more blocks" ok "$(say dorm 'alloc 500 1000')"
check_eq "detached: free them all" ok "$(say dorm free-alloc)"
"$AP" report "$A" --json >live3.json
check_eq "detached: live back to exactly 0, frees = allocations, unmatched 0" "0 0 True 0" \
        "$(py 'd["totals"]["leaked_bytes"], d["totals"]["leaked_blocks"], d["totals"]["frees"] == d["totals"]["allocations"], d["totals"]["unmatched_frees"]' <live3.json)"
check_eq "detached: allocations unchanged" "$est_n" "$(py "sum(s['allocations'] for s in $site)" <live3.json)"
check_eq "ps: live 0" 0 "$(ps_of "$A" 'p["live_bytes"]')"

# Attach again: the estimates add up.
"$AP" attach "$A" --sample 1K 2>/dev/null
check_eq "attach again" 0 $?
check_eq "attached again: 2000 more blocks" ok "$(say dorm 'alloc 2000 1000')"
"$AP" report "$A" --json >live4.json
n=$(py "sum(s['allocations'] for s in $site)" <live4.json)
check_true "second window adds ~2000 allocations (got $n - $est_n)" "$(within $((n - est_n)) 2000 15)"
b=$(py "sum(s['leaked_bytes'] for s in $site)" <live4.json)
check_true "second window: ~2,000,000 live bytes (got $b)" "$(within "$b" 2000000 10)"

# A snapshot file: private, readable by report.
"$AP" snapshot "$A" -o snap.approf 2>snap.err
check_eq "snapshot -o" 0 $?
check_eq "snapshot mode 0600" 600 "$(stat -c %a snap.approf 2>/dev/null)"
check_eq "snapshot read by report: live, same figures" "True $n" \
        "$(json_of snap.approf "d['live'], sum(s['allocations'] for s in $site)")"
(cd "$T/d" && mkdir -p sd && cd sd && "$AP" snapshot "$A" 2>/dev/null)
check_eq "snapshot default name" 1 "$(ls sd/allocprof.attachee.$A.snapshot.approf 2>/dev/null | wc -l)"

# --for: the collector detaches by itself.
"$AP" detach "$A" 2>/dev/null
"$AP" attach "$A" --sample 1K --for 1s 2>for.err
check_eq "attach --for 1s" 0 $?
check_eq "--for: recording at first" recording \
        "$(daemon_call "$SOCK" '{"v":1,"cmd":"ps"}' | py "[p['state'] for p in d['processes'] if p['pid'] == $A][0]")"
sleep 1.6
check_eq "--for 1s: detached after it" "detached dormant" "$(ps_of "$A" 'p["mode"], p["state"]')"
check_eq "after --for: free-alloc" ok "$(say dorm free-alloc)"
check_eq "after --for: live exactly 0" "0 0" \
        "$(json_of "$A" 'd["totals"]["leaked_bytes"], d["totals"]["unmatched_frees"]')"
# The time is said in the unit it was given in, not as 3.6e+03 s.
for d in "1h 1 h" "90m 90 min" "1500ms 1.500 s"; do
        "$AP" attach "$A" --sample 1K --for "${d%% *}" 2>for-msg.err
        check_eq "attach --for ${d%% *}: the message" \
                "allocprof: attached to pid $A, sampling every 1.00 KiB on average for ${d#* }" \
                "$(cat for-msg.err)"
        "$AP" detach "$A" 2>/dev/null
done

# Threads while attached: estimated like the rest, every sampled block followed to its free.
"$AP" attach "$A" --sample 1K 2>/dev/null
check_eq "threads while attached" ok "$(say dorm 'threads 4 1000 1000')"
"$AP" report "$A" --json >live5.json
tsite='[s for s in d["sites"] if s["frames"] and s["frames"][0]["function"] == "thread_blocks"]'
n=$(py "sum(s['allocations'] for s in $tsite)" <live5.json)
check_true "threads: ~4004 allocations estimated (got $n)" "$(within "$n" 4004 10)"
check_eq "threads: all freed (frees = allocations, live 0), 4 more threads" "True 0 True" \
        "$(py "sum(s['frees'] for s in $tsite) == sum(s['allocations'] for s in $tsite), sum(s['leaked_bytes'] for s in $tsite), d['totals']['threads'] >= 5" <live5.json)"
"$AP" report "$A" >live5.txt
check_contains "text report of a PID: a live snapshot" live5.txt "live snapshot of a running process"
checks=$((checks + 1))
if grep -qi 'leak' live5.txt; then fail "text report of a live process speaks of leaks: $(grep -i leak live5.txt | head -3)"; fi
# Another interval: each thread takes it up at its next sample point, after the gap it
# had started (here at 1K: at most a block or two).  At 1 every byte is a point, so from
# there on the figures are exact; a thread still sampling at 1K would be a few % off.
"$AP" detach "$A" 2>/dev/null
"$AP" attach "$A" --sample 1 2>/dev/null
check_eq "attach --sample 1" "sampled 1" "$(ps_of "$A" 'p["mode"], p["sample_interval"]')"
nb0=$(json_of "$A" "'%d,%d' % (sum(s['allocations'] for s in $site), sum(s['bytes'] for s in $site))")
check_eq "at interval 1: 3000 more blocks" ok "$(say dorm 'alloc 3000 1000')"
nb1=$(json_of "$A" "'%d,%d' % (sum(s['allocations'] for s in $site), sum(s['bytes'] for s in $site))")
check_true "new interval taken up: 3000 allocations, 3,000,000 bytes within 2 blocks (got $nb0 -> $nb1)" \
        "$($PY -c "a=($nb0); b=($nb1); print(abs(b[0]-a[0]-3000) <= 2 and abs(b[1]-a[1]-3000000) <= 2048)")"
"$AP" detach "$A" 2>/dev/null
"$AP" attach "$A" 2>/dev/null
check_eq "attach without --sample: 512K" "sampled 524288" "$(ps_of "$A" 'p["mode"], p["sample_interval"]')"
drv_exit dorm 3
check_eq "dormant attachee exit status" 3 "$EXITED"
wait_files 1 "$T/out/allocprof.attachee.$A.approf"
check_eq "daemon's profile of the attached program: not live, exit unknown, estimated" "False None True" \
        "$(json_of "$T/out/allocprof.attachee.$A.approf" 'd["live"], d["process"]["exit_status"], d["estimated"]')"
# Its windows were sampled at 1K, 1 and 512K: the profile says all three were used, not
# only the last one.
check_eq "attached at three intervals: the last, the smallest, the largest" "524288 1 524288" \
        "$(json_of "$T/out/allocprof.attachee.$A.approf" 'd["sample_interval"], d["sample_interval_min"], d["sample_interval_max"]')"
"$AP" report "$T/out/allocprof.attachee.$A.approf" >intervals.txt 2>&1
check_contains "text report: the intervals it was recorded at" intervals.txt \
        "one sample per 1 B to 512.00 KiB allocated on average (the interval changed while it was recorded)"

# Attached at 1 byte, the window is exact even when the collector falls behind: the
# program waits for ring space as in full mode instead of dropping records after one nap
# as a sampler does, and so do the frees of its blocks after a detach.  The daemon is
# stopped while the program makes (then frees) 200,000 blocks, far more records than a
# ring holds, and continued a second later (a wait is given up only after 5 s).
drv_start exact env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" ALLOCPROF_MODE=dormant "$ATTACHEE"
X=${DPID[exact]}
"$AP" attach "$X" --sample 1 2>/dev/null
stopped_say() { # line : says it to exact while the daemon is stopped for a second
        local ans=timeout
        kill -STOP "$D1"
        echo "$1" >&"${DW[exact]}"
        sleep 1
        kill -CONT "$D1"
        read -r -t 30 ans <&"${DR[exact]}"
        echo "$ans"
}
check_eq "attached at 1, collector stopped: 200,000 blocks" ok "$(stopped_say 'alloc 200000 16')"
check_eq "attached at 1, collector stopped: every block counted, nothing dropped" \
        "200000 3200000 200000 0" \
        "$(json_of "$X" "sum(s['allocations'] for s in $site), sum(s['bytes'] for s in $site), sum(s['leaked_blocks'] for s in $site), d['totals']['dropped_events']")"
"$AP" detach "$X" 2>/dev/null
check_eq "detached, collector stopped: the blocks freed" ok "$(stopped_say free-alloc)"
check_eq "detached, collector stopped: every free counted, nothing live, nothing dropped" \
        "200000 0 0" \
        "$(json_of "$X" "sum(s['frees'] for s in $site), d['totals']['leaked_blocks'], d['totals']['dropped_events']")"
drv_exit exact 0
check_eq "attached at 1, collector stopped: exit" 0 "$EXITED"

# Refusals: a program recording everything, a program without the agent, no process.
drv_start full env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" "$ATTACHEE"
F=${DPID[full]}
check_eq "full-mode program: ps" "full recording 0" "$(ps_of "$F" 'p["mode"], p["state"], p["sample_interval"]')"
"$AP" attach "$F" 2>full-attach.err
check_eq "attach to a full-mode (recording) program" 1 $?
check_contains "attach to a recording program: why" full-attach.err "already recording"
"$AP" detach "$F" 2>full-detach.err
check_eq "detach of a full-mode program" 1 $?
check_eq "full mode: live report exact" "True full False 10 1000" \
        "$(say full 'alloc 10 100' >/dev/null; json_of "$F" "d['live'], d['mode'], d['estimated'], sum(s['allocations'] for s in $site), sum(s['leaked_bytes'] for s in $site)")"
drv_exit full 0
check_eq "full-mode attachee exit" 0 "$EXITED"

sleep 30 &
SL=$!
"$AP" attach "$SL" 2>noagent.err
check_eq "attach to a program without the agent" 1 $?
check_eq "no agent: one line" 1 "$(wc -l <noagent.err)"
check_contains "no agent: says so" noagent.err "has no allocprof agent"
check_contains "no agent: says how" noagent.err "allocprof run --dormant"
"$AP" report "$SL" 2>noagent-report.err >/dev/null
check_eq "report PID without the agent" 1 $?
kill "$SL"
wait "$SL" 2>/dev/null
# The agent preloaded without ALLOCPROF_SOCKET stays inactive: the daemon, asked all the
# same, does not know the process, and the line says why.
env LD_PRELOAD="$AGENT" ALLOCPROF_MODE=dormant sleep 30 &
SL=$!
for i in $(seq 100); do
        grep -q liballocprof "/proc/$SL/maps" 2>/dev/null && break
        sleep 0.05
done
"$AP" attach "$SL" 2>nosock.err
check_eq "attach to a program with the agent but no ALLOCPROF_SOCKET" 1 $?
check_eq "agent but no ALLOCPROF_SOCKET: one line saying why" \
        "allocprof: pid $SL is not profiled by this collector: its environment has no ALLOCPROF_SOCKET, without which the agent it loaded stays inactive" \
        "$(cat nosock.err)"
kill "$SL"
wait "$SL" 2>/dev/null
nopid=4194000
while [ -e /proc/$nopid ]; do nopid=$((nopid + 1)); done
"$AP" attach $nopid 2>nopid.err
check_eq "attach to no process" 1 $?
check_contains "no process: says so" nopid.err "no process $nopid"
"$AP" detach $nopid 2>/dev/null
check_eq "detach of no process" 1 $?
"$AP" snapshot $nopid 2>/dev/null
check_eq "snapshot of no process" 1 $?
# A dormant program that has ended, its parent not reaping it (sleep, exec'ed by sh).
sh -c "env LD_PRELOAD=$AGENT ALLOCPROF_SOCKET=$SOCK ALLOCPROF_MODE=dormant $ATTACHEE </dev/null >/dev/null & exec sleep 30" &
SL=$!
zp=""
for i in $(seq 100); do
        zp=$(pgrep -P "$SL" | head -1)
        [ -n "$zp" ] && [ "$(awk '{print $3}' "/proc/$zp/stat" 2>/dev/null)" = Z ] && break
        sleep 0.05
done
for c in attach detach snapshot; do
        "$AP" $c "$zp" 2>zombie-$c.err >/dev/null
        check_eq "$c of an ended, unreaped program" 1 $?
        check_eq "$c of an ended program: says it ended" \
                "allocprof: pid $zp has ended (its parent has not reaped it yet)" "$(cat zombie-$c.err)"
done
kill "$SL"
wait "$SL" 2>/dev/null
# A thread's id (top -H shows them) stands for its process, which is said.
env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" ALLOCPROF_MODE=dormant \
        "$PY" -c 'import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)' &
TP=$!
tid=""
for i in $(seq 100); do
        tid=$(ls "/proc/$TP/task" 2>/dev/null | grep -vx "$TP" | head -1)
        [ -n "$tid" ] && [ "$(ps_of "$TP" 'p["mode"]' 2>/dev/null)" = dormant ] && break
        sleep 0.05
done
for c in attach detach; do
        "$AP" $c "$tid" 2>thread-$c.err
        check_eq "$c of a thread id: done on its process" 0 $?
        check_contains "$c of a thread id: says so" thread-$c.err "$tid is a thread of pid $TP; using that process"
done
check_eq "report of a thread id: its process, live" "$TP True" \
        "$("$AP" report "$tid" --json 2>/dev/null | py 'd["process"]["pid"], d["live"]')"
kill "$TP"
wait "$TP" 2>/dev/null
# A request whose client gave up before the collector got to it (stopped for longer than
# the CLI waits, which then tells its user "did not answer", exit 1) is not carried out
# when the collector goes on: the attach or detach would take effect behind their back.
drv_start late env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" ALLOCPROF_MODE=dormant "$ATTACHEE"
L=${DPID[late]}
abandoned() { # request : sent while the daemon is stopped, its client gone before it goes on
        kill -STOP "$D1"
        $PY "$HELPER" abandon "$SOCK" "$1"
        kill -CONT "$D1"
        sleep 0.3
}
check_eq "attach abandoned by its client while the daemon was stopped" sent \
        "$(abandoned "{\"v\":1,\"cmd\":\"attach\",\"pid\":$L,\"sample\":1}")"
check_eq "abandoned attach: not carried out once the daemon goes on" "dormant dormant" \
        "$(ps_of "$L" 'p["mode"], p["state"]')"
"$AP" attach "$L" --sample 1 2>/dev/null
check_eq "detach abandoned by its client while the daemon was stopped" sent \
        "$(abandoned "{\"v\":1,\"cmd\":\"detach\",\"pid\":$L}")"
check_eq "abandoned detach: not carried out once the daemon goes on" "sampled recording" \
        "$(ps_of "$L" 'p["mode"], p["state"]')"
check_eq "abandoned requests: the program goes on" ok "$(say late 'alloc 10 100')"
drv_exit late 0
check_eq "abandoned requests: exit" 0 "$EXITED"
cd "$T" || exit 1
echo "d. attach/detach: $(($(now_ms) - t0)) ms"

# =====================================================================================
# e. the same with `allocprof run --dormant` and its private collector
# =====================================================================================
t0=$(now_ms)
mkdir e && cd e || exit 1
# No daemon at this path: run falls back to its own collector.
drv_start run env ALLOCPROF_DAEMON_SOCKET="$T/e/no-daemon.sock" "$AP" run --dormant -o run.approf -- "$ATTACHEE"
check_eq "run --dormant started" 0 $?
R=${DPID[run]}
C=$(pgrep -P "$R" | head -1)
check_eq "run --dormant: a private collector" True \
        "$(tr '\0' '\n' </proc/$C/environ | grep '^ALLOCPROF_SOCKET=' | grep -q 'allocprof-run-' && echo True)"
check_eq "run --dormant: ps lists it dormant" "dormant dormant" "$(ps_of "$C" 'p["mode"], p["state"]')"
say run 'before 1000 1000' >/dev/null
"$AP" attach "$C" --sample 1K 2>/dev/null
check_eq "attach through the run's socket" 0 $?
check_eq "run: recording" "sampled recording" "$(ps_of "$C" 'p["mode"], p["state"]')"
say run 'alloc 4000 1000' >/dev/null
say run free-before >/dev/null
"$AP" report "$C" --json >live.json
n=$(py "sum(s['allocations'] for s in $site)" <live.json)
check_true "run: live estimate of the attached window (got $n)" "$(within "$n" 4000 10)"
check_eq "run: live report, nothing negative, no unmatched frees" "True None 0 True" \
        "$(py 'd["live"], d["process"]["exit_status"], d["totals"]["unmatched_frees"], d["totals"]["leaked_bytes"] >= 0' <live.json)"
"$AP" detach "$C" 2>/dev/null
check_eq "detach through the run's socket" 0 $?
drv_exit run 4
check_eq "run: program exit status is run's" 4 "$EXITED"
check_eq "run: profile written with the attached window" "False 4 sampled True" \
        "$(json_of run.approf "d['live'], d['process']['exit_status'], d['mode'], abs(sum(s['allocations'] for s in $site) - 4000) <= 400")"
check_eq "run: profile's live = what was not freed" True \
        "$(json_of run.approf "abs(sum(s['leaked_bytes'] for s in $site) - 4000000) <= 400000")"

# A child forked while its parent is attached records as the parent does (a server's
# workers sampled with it); one forked before the attach or after the detach stays
# dormant, and has no profile.
mkdir fk && cd fk || exit 1
drv_start fk env ALLOCPROF_DAEMON_SOCKET="$T/e/no-daemon.sock" "$AP" run --dormant -o fk.approf -- "$ATTACHEE"
C=$(pgrep -P "${DPID[fk]}" | head -1)
say fk 'fork 10 100' >/dev/null
"$AP" attach "$C" --sample 1 2>/dev/null
say fk 'fork 100 1000' >/dev/null
"$AP" detach "$C" 2>/dev/null
say fk 'fork 10 100' >/dev/null
drv_exit fk 0
check_eq "attached parent's fork child: the only child profile, sampled at 1, its 100 blocks" \
        "1 sampled 1 100 100000" \
        "$(n=$(ls allocprof.attachee.*.approf 2>/dev/null | wc -l); f=$(ls allocprof.attachee.*.approf 2>/dev/null | head -1); [ -n "$f" ] && echo "$n $(json_of "$f" "d['mode'], d['sample_interval'], sum(s['allocations'] for s in d['sites'] if s['frames'] and s['frames'][0]['function'] == 'child_blocks'), sum(s['bytes'] for s in d['sites'] if s['frames'] and s['frames'][0]['function'] == 'child_blocks')")")"
cd .. || exit 1

# The same through the daemon: the attach reaches the daemon, run writes the profile.
drv_start drun "$AP" run --dormant -o drun.approf -- "$ATTACHEE"
C=$(pgrep -P "${DPID[drun]}" | head -1)
check_eq "run --dormant through the daemon: the program talks to the daemon" "ALLOCPROF_SOCKET=$SOCK" \
        "$(tr '\0' '\n' </proc/$C/environ | grep '^ALLOCPROF_SOCKET=')"
"$AP" attach "$C" --sample 1K 2>/dev/null
check_eq "run --dormant through the daemon: attach" 0 $?
say drun 'alloc 4000 1000' >/dev/null
check_eq "run --dormant through the daemon: live report" True \
        "$(json_of "$C" "d['live'] and abs(sum(s['allocations'] for s in $site) - 4000) <= 400")"
"$AP" ps --json >drun-ps.json
"$AP" ps >drun-ps.txt
check_eq "run --dormant through the daemon: ps lists the program once" "1 1" \
        "$(py "len([p for p in d['processes'] if p['pid'] == $C])" <drun-ps.json) $(awk -v p="$C" '$1 == p' drun-ps.txt | wc -l)"
drv_exit drun 7
check_eq "run --dormant through the daemon: exit status" 7 "$EXITED"
check_eq "run --dormant through the daemon: profile with the attached window" "7 True" \
        "$(json_of drun.approf "d['process']['exit_status'], abs(sum(s['allocations'] for s in $site) - 4000) <= 400")"

# Started dormant and never attached: no profile, a note; with the daemon and without.
for how in private daemon; do
        env_sock="$T/e/no-daemon.sock"
        [ $how = daemon ] && env_sock="$SOCK"
        printf 'alloc 10 100\nexit 0\n' |
                ALLOCPROF_DAEMON_SOCKET="$env_sock" "$AP" run --dormant -o never-$how.approf -- "$ATTACHEE" >/dev/null 2>never-$how.err
        check_eq "never attached ($how): exit" 0 $?
        check_contains "never attached ($how): note" never-$how.err "was never attached"
        checks=$((checks + 1))
        [ ! -e never-$how.approf ] || fail "never attached ($how): a profile was written"
        # Its children, never attached either: dropped as they end, said in one line.
        ALLOCPROF_DAEMON_SOCKET="$env_sock" "$AP" run --dormant -o never-$how.approf -- \
                sh -c 'i=0; while [ $i -lt 200 ]; do ls / >/dev/null; i=$((i + 1)); done' 2>never-$how.err
        check_eq "never attached ($how), 200 children: exit, two lines" "0 2" "$? $(wc -l <never-$how.err)"
        check_contains "never attached ($how), 200 children: one line for them" never-$how.err \
                "200 other process images started dormant were never attached: no profile"
        # A child still running when the program ends registered (dormant) all the same:
        # one of those never attached, not one that "had not registered" yet.
        ALLOCPROF_DAEMON_SOCKET="$env_sock" "$AP" run --dormant -o never-$how.approf -- \
                sh -c 'sleep 30 & echo $! >never-bg.pid; sleep 0.5' 2>never-bg-$how.err
        check_eq "never attached ($how), a child still running: exit, not 'had not registered'" \
                "0 0" "$? $(grep -c 'had not registered' never-bg-$how.err)"
        check_contains "never attached ($how), a child still running: counted as never attached" \
                never-bg-$how.err "started dormant w"
        kill "$(cat never-bg.pid)"
done

# ps asks each collector once, under whatever name: the daemon's socket is also the one a
# program's environment names (run through the daemon, or spelled another way).  A
# stand-in daemon whose process's figures change with every request, as a live one's do,
# would show a second request as a second line.
mkdir -m 700 psd psd/allocprof
for spelling in "$T/e/psd/allocprof/allocprofd.sock" "$T/e/psd/./allocprof//allocprofd.sock"; do
        env ALLOCPROF_SOCKET="$spelling" sleep 30 &
        S=$!
        # Gone before the stand-in starts: the loop below must not find the last one's
        # "ready" (the redirection below happens in the background, maybe later).
        rm -f fake.out
        $PY "$HELPER" fake-ps "$T/e/psd/allocprof/allocprofd.sock" "$S" >fake.out 2>fake.err &
        F=$!
        for i in $(seq 100); do grep -q ready fake.out 2>/dev/null && break; sleep 0.1; done
        XDG_RUNTIME_DIR="$T/e/psd" "$AP" ps --json >fake-ps.json 2>fake-ps.err &
        P=$!
        wait "$P"
        kill -TERM "$F" "$S"
        wait "$F" "$S" 2>/dev/null
        check_eq "ps, the daemon's socket also in a program's environment ($spelling): asked once, listed once" \
                "ps_requests $P 1 1" "$(grep "^ps_requests $P " fake.out) $(py "len([p for p in d['processes'] if p['pid'] == $S])" <fake-ps.json)"
done
cd "$T" || exit 1
echo "e. run --dormant: $(($(now_ms) - t0)) ms"

# =====================================================================================
# g. hostile clients (the main daemon), then a program profiled exactly
# =====================================================================================
t0=$(now_ms)
mkdir g && cd g || exit 1
drv_start victim env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" "$ATTACHEE"
$PY "$HELPER" hostile "$SOCK" "${DPID[victim]}" >hostile.txt 2>hostile.err
h() { sed -n "s/^$1 //p" hostile.txt; }
check_eq "garbage line: an error" bad-request "$(h garbage)"
check_eq "garbage line: then disconnected" closed "$(h garbage_then)"
check_eq "cmd not a string: an error" bad-request "$(h cmd_not_string)"
check_eq "duplicate key: an error" bad-request "$(h duplicate_key)"
check_eq "protocol version 2: refused" unsupported-version "$(h version2)"
check_eq "no \"v\": a bad request, not a version -1" bad-request "$(h no_version)"
check_eq "\"v\" a string: a bad request" bad-request "$(h version_not_integer)"
check_eq "unknown command" unknown-command "$(h unknown_cmd)"
check_eq "snapshot without a memfd" bad-request "$(h snapshot_no_fd)"
check_eq "snapshot with a pipe instead of a memfd" bad-request "$(h snapshot_pipe_fd)"
check_eq "the connection still serves after those errors" ok "$(h same_connection_after_errors)"
check_eq "a request just under 64 KiB" ok "$(h request_60k)"
check_eq "100 KB without a newline: an error" bad-request "$(h oversize)"
check_eq "100 KB without a newline: disconnected" closed "$(h oversize_then)"
check_eq "'{' then silence: disconnected" closed "$(h partial)"
check_true "'{' then silence: after ~5 s (got $(h partial_closed_after_s) s)" \
        "$($PY -c "print(4.5 <= float('$(h partial_closed_after_s)' or 0) <= 7.5)")"
check_eq "ps while a client hangs half-way: answered" ok "$(h ps_during_partial)"
check_true "ps while a client hangs half-way: at once (got $(h ps_during_partial_ms) ms)" \
        "$($PY -c "print(int('$(h ps_during_partial_ms)' or 99999) < 1000)")"
check_eq "a client that does not read its answers: disconnected" closed "$(h stall)"
for j in junk_short junk_4k junk_pipe_fd junk_text; do
        check_eq "binary junk ($j): dropped" dropped "$(h $j)"
done
check_eq "the daemon answers after all that" ok "$(h hello_after_all)"
[ -s hostile.err ] && sed 's/^/    /' hostile.err | head -20
check_eq "the daemon is the same process" "$D1" "$(daemon_pid "$SOCK")"
check_eq "the program under attack was not disturbed" ok "$(say victim 'alloc 10 100')"
drv_exit victim 0
check_eq "victim exit" 0 "$EXITED"
"${UNDER[@]}" "$THREADS" &
p=$!
wait "$p"
wait_files 1 "$T/out/allocprof.threads.$p.approf"
check_eq "after the hostile clients: a preloaded program profiled exactly" "4404 4360 44 0" \
        "$(json_of "$T/out/allocprof.threads.$p.approf" '" ".join(str(d["totals"][k]) for k in ("allocations","frees","leaked_blocks","dropped_events"))')"
"$AP" run -q -o after.approf -- "$THREADS"
check_eq "after the hostile clients: a run profiled exactly" "4404 4360 44 0" \
        "$(json_of after.approf '" ".join(str(d["totals"][k]) for k in ("allocations","frees","leaked_blocks","dropped_events"))')"
cd "$T" || exit 1
echo "g. hostile clients: $(($(now_ms) - t0)) ms"

# =====================================================================================
# h. the daemon killed, or stopped, while programs run
# =====================================================================================
t0=$(now_ms)
mkdir h && cd h || exit 1
# Some allocations, then (once the file `go` exists) about 2 s of paced allocation bursts
# (2 x 20000 blocks per burst) ending in "exit 5".
feed() {
        echo "before 1000 100"
        for i in $(seq 600); do
                [ -e go ] && break
                sleep 0.05
        done
        for i in $(seq 40); do
                echo "threads 2 20000 100"
                echo "alloc 2000 50"
                echo "free-alloc"
                sleep 0.05
        done
        echo "exit 5"
}
run_timed() { # name cmd... : output in name.out, "status end-time-in-ms" in name.st
        local name=$1 st
        shift
        feed | "$@" >"$name.out" 2>"$name.err"
        st=$?
        echo "$st $(now_ms)" >"$name.st"
}
run_timed base "$ATTACHEE" &
bp=$!
hp=""
for i in 1 2 3; do
        run_timed "k$i" env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" "$ATTACHEE" &
        hp="$hp $!"
done
# ... and one through `allocprof run`, which the daemon serves.
run_timed k4 "$AP" run -q -o k4.approf -- "$ATTACHEE" &
hp="$hp $!"
# The programs wait for `go` after their first allocations: until all four have
# registered, the one `allocprof run` started among them (a loaded machine, or a
# sanitizer build, can take seconds, and so can the daemon's answer while it drains four
# programs).  Prints: attachees recording, and how many of them allocprof started.
recording_now() {
        local run_pid
        run_pid=$(pgrep -f -- "-o k4.approf" | head -1)
        daemon_call "$SOCK" '{"v":1,"cmd":"ps"}' | py "(lambda r: '%d %d' % (len(r), sum(
            p['ppid'] == ${run_pid:-0} for p in r)))([p for p in d['processes']
            if p['state'] == 'recording' and p['command'].endswith('attachee')])"
}
t1=$(now_ms)
while :; do
        recording=$(recording_now 2>/dev/null)
        [ "$recording" = "4 1" ] || [ $(($(now_ms) - t1)) -gt 20000 ] && break
        sleep 0.05
done
check_eq "SIGKILL: the daemon is profiling the programs (one of them for allocprof run)" "4 1" "$recording"
# A dormant program registered with the daemon that is about to die.
drv_start survivor env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$SOCK" ALLOCPROF_MODE=dormant "$ATTACHEE"
SV=${DPID[survivor]}
check_eq "SIGKILL: a dormant program registered too" dormant "$(ps_of "$SV" 'p["mode"]')"
# The bursts start; the daemon dies in the middle of them.  Times count from here.
go_ms=$(now_ms)
touch go
sleep 0.6
kill -9 "$D1"
wait "$bp"
for p in $hp; do wait "$p"; done
since_go() { # file.st -> milliseconds from go to the program's end
        echo $(($(cut -d' ' -f2 "$1") - go_ms))
}
base_ms=$(since_go base.st)
echo "    uninstrumented bursts: $base_ms ms; with the daemon killed: $(for i in 1 2 3 4; do since_go k$i.st; done | tr '\n' ' ')ms"
check_eq "uninstrumented: exit 5" 5 "$(cut -d' ' -f1 base.st)"
for i in 1 2 3 4; do
        check_eq "daemon SIGKILLed: program $i exit status" 5 "$(cut -d' ' -f1 k$i.st)"
        checks=$((checks + 1))
        cmp -s base.out k$i.out || fail "daemon SIGKILLed: program $i output differs"
        ms=$(since_go k$i.st)
        check_true "daemon SIGKILLed: program $i not held up ($ms ms vs $base_ms ms uninstrumented)" \
                "$($PY -c "print($ms < 3 * $base_ms and $ms < 10000)")"
done
check_contains "daemon SIGKILLed: allocprof run says the daemon went away, its profiles lost" k4.err \
        "allocprofd went away during the run (the collector hung up) without writing the profiles of this run's processes it held: it was killed or crashed, and they are lost"
checks=$((checks + 1))
if grep -q 'never registered' k4.err; then
        fail "daemon SIGKILLed: allocprof run claims its program never registered: $(grep 'never registered' k4.err)"
fi
for c in attach report; do
        "$AP" $c "$SV" >/dev/null 2>gone-$c.err
        check_eq "daemon SIGKILLed: $c of its program fails" 1 $?
        check_eq "daemon SIGKILLed: $c says the collector is gone, in one line" \
                "allocprof: pid $SV: cannot connect to $SOCK: Connection refused (its collector is gone: the program runs on unprofiled)" \
                "$(cat gone-$c.err)"
done
# A program started while the socket is dead runs normally; `run` uses its own collector.
out=$(printf 'alloc 10 100\nexit 6\n' | "${UNDER[@]}" "$ATTACHEE")
st=$?
check_eq "no daemon: a new program runs normally" "ready ok 6" "$(echo $out) $st"
"$AP" run -q -o fallback.approf -- "$THREADS" 2>fallback.err
check_eq "stale socket: run falls back to its own collector, profile exact" "0 4404 4360 44" \
        "$? $(json_of fallback.approf '" ".join(str(d["totals"][k]) for k in ("allocations","frees","leaked_blocks"))')"
check_eq "stale socket: run says nothing about it" "" "$(cat fallback.err)"
# The socket file is stale; a new daemon replaces it and profiles new programs.
"$APD" --output-dir "$T/out" 2>restart.err
check_eq "restart after SIGKILL" 0 $?
D2=$(daemon_pid "$SOCK")
DAEMONS="$DAEMONS $D2"
"$AP" run -q -o restarted.approf -- "$THREADS"
check_eq "restarted daemon: a run profiled exactly" "4404 4360 44 0" \
        "$(json_of restarted.approf '" ".join(str(d["totals"][k]) for k in ("allocations","frees","leaked_blocks","dropped_events"))')"
check_eq "restarted daemon served that run" "$D2" "$(daemon_pid "$SOCK")"
# The program registered with the killed daemon is unknown to the new one, which is said.
for c in attach detach report; do
        "$AP" $c "$SV" >/dev/null 2>restarted-$c.err
        check_eq "restarted daemon: $c of a program of the killed one fails" 1 $?
        check_eq "restarted daemon: $c says why, in one line" \
                "allocprof: pid $SV is not profiled by this collector: it started before this collector (pid $D2) did, and its agent talks only to the one it found when it started: restart the program to profile it" \
                "$(cat restarted-$c.err)"
done
check_eq "restarted daemon: the killed one's program goes on" ok "$(say survivor 'alloc 10 100')"
drv_exit survivor 3
check_eq "restarted daemon: the killed one's program exits as it would" 3 "$EXITED"
"${UNDER[@]}" "$THREADS" &
p=$!
wait "$p"
wait_files 1 "$T/out/allocprof.threads.$p.approf"
check_eq "restarted daemon: a preloaded program profiled exactly" "4404 4360 44" \
        "$(json_of "$T/out/allocprof.threads.$p.approf" '" ".join(str(d["totals"][k]) for k in ("allocations","frees","leaked_blocks"))')"
stops=$(grep -c 'allocprofd: stopped' "$T/xdg/allocprof/allocprofd.log")
kill -TERM "$D2" && wait_gone "$D2" 10
check_eq "SIGTERM: the daemonized allocprofd is gone" True "$(wait_gone "$D2" 0 && echo True)"
check_eq "SIGTERM: its log says it stopped" $((stops + 1)) "$(grep -c 'allocprofd: stopped' "$T/xdg/allocprof/allocprofd.log")"

# SIGTERM with three programs alive: their profiles are written, exit 0, they go on.
mkdir -m 700 term
"$APD" --foreground --socket "$T/h/term/d.sock" --output-dir "$T/h/term" 2>term.log &
TD=$!
for i in $(seq 50); do [ -S term/d.sock ] && break; sleep 0.1; done
for i in 1 2 3; do
        drv_start "t$i" env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$T/h/term/d.sock" "$ATTACHEE"
        say "t$i" "alloc $((10 * i)) 100" >/dev/null
done
# ... and a fourth through `allocprof run`: the daemon writes it too, run goes on.
drv_start t4 env ALLOCPROF_DAEMON_SOCKET="$T/h/term/d.sock" "$AP" run -q -o t4.approf -- "$ATTACHEE"
say t4 "alloc 40 100" >/dev/null
T4=$(pgrep -P "${DPID[t4]}" | head -1)
kill -TERM "$TD"
wait "$TD"
check_eq "SIGTERM with programs alive: exit 0" 0 $?
check_eq "SIGTERM: a profile per live program" 4 "$(ls term/allocprof.attachee.*.approf 2>/dev/null | wc -l)"
check_eq "SIGTERM: the run's program's profile up to now" "40 4000 40" \
        "$(json_of "term/allocprof.attachee.$T4.approf" "sum(s['allocations'] for s in $site), sum(s['bytes'] for s in $site), sum(s['leaked_blocks'] for s in $site)")"
check_eq "SIGTERM: the run's program goes on" ok "$(say t4 'alloc 1 1')"
drv_exit t4 9
check_eq "SIGTERM: the run's program exits normally, run with its status" 9 "$EXITED"
check_contains "SIGTERM: run says where the profile went" "$T/t4.err" \
        "allocprofd was stopped during the run: it wrote the profiles of this run's processes it still held to $T/h/term, not here"
for i in 1 2 3; do
        f="term/allocprof.attachee.${DPID[t$i]}.approf"
        check_eq "SIGTERM: program $i's profile up to now" "$((10 * i)) $((1000 * i)) $((10 * i))" \
                "$(json_of "$f" "sum(s['allocations'] for s in $site), sum(s['bytes'] for s in $site), sum(s['leaked_blocks'] for s in $site)")"
done
for i in 1 2 3; do
        check_eq "SIGTERM: program $i goes on" ok "$(say "t$i" 'threads 2 1000 100')"
        drv_exit "t$i" "$i"
        check_eq "SIGTERM: program $i exits normally" "$i" "$EXITED"
done

# A daemon that is there but does not answer (stopped): ps says so, never "no collector".
mkdir -m 700 stopd
"$APD" --foreground --socket "$T/h/stopd/d.sock" --output-dir "$T/h/stopd" 2>stopd.log &
SD=$!
for i in $(seq 50); do [ -S stopd/d.sock ] && break; sleep 0.1; done
drv_start stopd env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$T/h/stopd/d.sock" ALLOCPROF_MODE=dormant "$ATTACHEE"
kill -STOP "$SD"
# A snapshot (report PID) of its program gives up as soon as any other call does, not
# after the two minutes a snapshot may take to symbolize.
s0=$(now_ms)
"$AP" snapshot -o stopd-snap.approf "${DPID[stopd]}" 2>stopd-snap.err
check_eq "stopped daemon: snapshot of its program fails, within 15 s" "1 1" \
        "$? $(($(now_ms) - s0 < 15000))"
check_contains "stopped daemon: snapshot says it did not answer" stopd-snap.err "did not answer within"
ALLOCPROF_DAEMON_SOCKET="$T/h/stopd/d.sock" "$AP" ps >stopd-ps.out 2>stopd-ps.err
check_eq "stopped daemon: ps fails" 1 $?
check_contains "stopped daemon: ps says it did not answer" stopd-ps.err \
        "allocprof: allocprofd at $T/h/stopd/d.sock: the collector did not answer within"
checks=$((checks + 1))
grep -q "no collector is running" stopd-ps.err &&
        fail "stopped daemon: ps claims no collector is running: $(cat stopd-ps.err)"
kill -CONT "$SD"
drv_exit stopd 0
kill -TERM "$SD"
wait "$SD"
check_eq "stopped daemon, continued: SIGTERM, exit 0" 0 $?
cd "$T" || exit 1
echo "h. daemon killed/stopped: $(($(now_ms) - t0)) ms"

# =====================================================================================
# f. another user
# =====================================================================================
t0=$(now_ms)
if [ "$(id -u)" != 0 ] || ! command -v useradd >/dev/null || ! command -v setpriv >/dev/null ||
        [ ! -x /usr/bin/python3 ]; then
        echo "note: not root, or useradd, setpriv or /usr/bin/python3 missing: the checks with another user are skipped"
else
        OTHER_USER="apsvc$$"
        while id "$OTHER_USER" >/dev/null 2>&1; do OTHER_USER="${OTHER_USER}x"; done
        if ! useradd -M -r -s /usr/sbin/nologin "$OTHER_USER" 2>useradd.err; then
                fail "useradd $OTHER_USER: $(cat useradd.err)"
                OTHER_USER=""
        fi
fi
if [ -n "$OTHER_USER" ]; then
        OU=$(id -u "$OTHER_USER") OG=$(id -g "$OTHER_USER")
        as_other() { # cmd... as the other user, in the shared directory, clean environment
                (cd "$SHARED" && setpriv --reuid="$OU" --regid="$OG" --clear-groups \
                        env -i PATH=/usr/bin:/bin NO_COLOR=1 "$@")
        }
        SHARED=$(mktemp -d /tmp/allocprof-svc-shared.XXXXXX)
        chmod 1777 "$SHARED"
        mkdir -m 755 "$SHARED/out"
        if ! as_other test -x "$AP" -a -r "$AGENT" -a -r "$HELPER" -a -x "$ATTACHEE"; then
                echo "note: $OTHER_USER cannot reach the build tree ($BUILD): the checks with another user are skipped"
                userdel "$OTHER_USER"
                OTHER_USER=""
        fi
fi
if [ -n "$OTHER_USER" ]; then
        FS="$SHARED/d.sock"
        "$APD" --foreground --socket "$FS" --output-dir "$SHARED/out" 2>"$T/f.log" &
        FD=$!
        for i in $(seq 50); do [ -S "$FS" ] && break; sleep 0.1; done
        chmod 666 "$FS"
        check_eq "the other user can connect to the open socket" "connect ok" \
                "$(as_other /usr/bin/python3 "$HELPER" connect "$FS")"
        # A root program under that daemon, and a finished root profile beside it.
        drv_start rootprog env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$FS" ALLOCPROF_MODE=dormant "$ATTACHEE"
        RP=${DPID[rootprog]}
        env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$FS" "$THREADS"
        wait_files 1 "$SHARED/out/allocprof.threads.*.approf"
        rootprof=$(ls "$SHARED"/out/allocprof.threads.*.approf | head -1)

        as_other /usr/bin/python3 "$HELPER" denied "$FS" "$RP" >denied.txt 2>denied.err
        for c in hello ps snapshot attach detach; do
                check_eq "other user: $c refused, disconnected" "permission-denied closed" \
                        "$(sed -n "s/^$c //p" denied.txt)"
        done
        as_other env ALLOCPROF_DAEMON_SOCKET="$FS" "$AP" ps >other-ps.out 2>other-ps.err
        st=$?
        echo "    other user's 'allocprof ps' on root's socket: exit $st, $(head -1 other-ps.err)"
        check_eq "other user: allocprof ps on root's daemon fails (exit 1)" 1 $st
        checks=$((checks + 1))
        grep -qw "$RP" other-ps.out && fail "other user's ps shows root's pid $RP"
        as_other "$AP" ps --json >other-ps.json 2>/dev/null
        check_eq "other user: ps --json shows nothing of root's" 0 \
                "$(py "len([p for p in d['processes'] if p['uid'] != $OU])" <other-ps.json)"
        as_other "$AP" attach "$RP" 2>other-attach.err
        check_eq "other user: attach to a root process" 1 $?
        as_other "$AP" report "$RP" >/dev/null 2>other-report.err
        check_eq "other user: live report of a root process" 1 $?
        # Its maps are hidden from the other user: no claim that it has no agent.
        check_contains "other user: report says whose process it is" other-report.err \
                "the process is running as uid 0: only its owner (or root) can report on it live"
        checks=$((checks + 1))
        grep -q "without the allocprof agent" other-report.err &&
                fail "other user: report claims root's process has no agent: $(cat other-report.err)"
        check_eq "root's process still dormant" dormant "$(ps_of "$RP" 'p["mode"]')"
        check_eq "root's profiles are 0600" 600 "$(stat -c %a "$rootprof")"
        as_other cat "$rootprof" >/dev/null 2>&1
        check_eq "other user cannot read root's profile" 1 $?
        as_other "$AP" report "$rootprof" >/dev/null 2>&1
        check_eq "other user cannot report on root's profile" 1 $?

        # The other user's program, pointed at root's daemon: runs as usual, unprofiled.
        out=$(printf 'alloc 10 100\nthreads 2 100 10\nexit 4\n' |
                as_other env LD_PRELOAD="$AGENT" ALLOCPROF_SOCKET="$FS" "$ATTACHEE" 2>other-prog.err)
        st=$?
        check_eq "other user's program: output and exit status" "ready ok ok 4" "$(echo $out) $st"
        check_eq "other user's program: nothing on stderr" "" "$(cat other-prog.err)"
        sleep 0.3
        check_eq "other user's program: no profile written" 0 "$(ls "$SHARED"/out/allocprof.attachee.* 2>/dev/null | wc -l)"
        check_eq "other user's program: not in root's ps" 0 \
                "$(daemon_call "$FS" '{"v":1,"cmd":"ps"}' | py "len([p for p in d['processes'] if p['uid'] == $OU])")"
        check_eq "root's program unaffected" ok "$(say rootprog 'alloc 1 1')"
        drv_exit rootprog 0
        check_eq "root's program exit" 0 "$EXITED"
        kill -TERM "$FD"
        wait "$FD"
        check_eq "shared-socket daemon: exit 0" 0 $?

        # With the default private directory the other user cannot even connect.
        mkdir -m 755 "$SHARED/xdg"
        XDG_RUNTIME_DIR="$SHARED/xdg" "$APD" --output-dir "$SHARED/out"
        PD=$(daemon_pid "$SHARED/xdg/allocprof/allocprofd.sock")
        DAEMONS="$DAEMONS $PD"
        check_eq "private directory: root's daemon is there" True "$([ -n "$PD" ] && echo True)"
        check_eq "private directory: the other user cannot connect" "connect EACCES" \
                "$(as_other /usr/bin/python3 "$HELPER" connect "$SHARED/xdg/allocprof/allocprofd.sock")"
        [ -n "$PD" ] && kill -TERM "$PD" && wait_gone "$PD" 5
fi
echo "f. another user: $(($(now_ms) - t0)) ms"

echo "$checks checks, $fails failed"
[ "$fails" -eq 0 ]
