#!/bin/sh
# `cargo alloc-profile run|test` on a crate this test writes: the program cargo built is
# profiled (not cargo, not rustc), its arguments reach it, its exit status is returned,
# and the profile names the crate's own functions.  Skipped (77) without cargo.
#
#   test-cargo.sh ALLOCPROF
#
# SPDX-License-Identifier: MIT OR Apache-2.0
set -u
case $1 in /*) AP=$1 ;; *) AP=$PWD/$1 ;; esac
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: skipped"; exit 77; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/crate/src" "$T/bin"
ln -s "$AP" "$T/bin/cargo-alloc-profile"
PATH=$T/bin:$PATH
export CARGO_TARGET_DIR="$T/target" CARGO_NET_OFFLINE=true
cd "$T/crate" || exit 1
cat >Cargo.toml <<'TOML'
[package]
name = "apcrate"
version = "0.1.0"
edition = "2018"

[profile.dev]
debug = true
TOML
cat >src/main.rs <<'RUST'
#[inline(never)]
fn make_table(n: usize) -> Vec<Box<[u8; 64]>> {
    (0..n).map(|_| Box::new([7u8; 64])).collect()
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(3);
    let t = make_table(n);
    println!("{}", t.len());
    std::process::exit(if n == 42 { 3 } else { 0 });
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_a_table() {
        assert_eq!(super::make_table(10).len(), 10);
    }
}
RUST
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

out=$(cargo alloc-profile run -- 42 2>run.err)
rc=$?
[ "$rc" = 3 ] || { fail "run: exit status $rc, expected the program's 3"; cat run.err; }
[ "$out" = 42 ] || fail "run: program output '$out', expected 42"
n=$(ls allocprof.apcrate.*.approf 2>/dev/null | wc -l)
[ "$n" = 1 ] || fail "run: $n profiles of apcrate, expected 1"
ls allocprof.cargo.*.approf allocprof.rustc.*.approf >/dev/null 2>&1 && fail "cargo or rustc was profiled"
f=$(ls allocprof.apcrate.*.approf | head -1)
"$AP" report "$f" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
boxes = sum(s["allocations"] for s in d["sites"]
            if any(f["function"] and "make_table" in f["function"] for f in s["frames"][:4])
            and s["bytes"] == 64 * s["allocations"])
sys.exit(0 if boxes == 42 else print("make_table boxes:", boxes) or 1)' || fail "run: 42 boxes of 64 bytes from make_table"

rm -f allocprof.*.approf
cargo alloc-profile test 2>test.err >test.out
rc=$?
[ "$rc" = 0 ] || { fail "test: exit status $rc"; tail -20 test.err; }
grep -q "test result: ok. 1 passed" test.out || fail "test: the test harness did not run the test"
n=$(ls allocprof.apcrate-*.approf 2>/dev/null | wc -l)
[ "$n" = 1 ] || fail "test: $n profiles of the test executable, expected 1"
# -o FILE (with a space, as run takes it) from a subdirectory: the file lands where the
# user is, not in the package's directory where the program runs.
rm -f allocprof.*.approf
mkdir -p src/here && cd src/here || exit 1
out=$(cargo alloc-profile -q -o one.approf run -- 5 2>o.err)
rc=$?
[ "$rc.$out" = 0.5 ] || { fail "-o FILE: exit status $rc, output '$out'"; cat o.err; }
[ -f one.approf ] || fail "-o one.approf from src/here: no src/here/one.approf ($(ls "$T/crate"))"
[ "$("$AP" report one.approf --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["process"]["exe"].rsplit("/", 1)[-1])')" = apcrate ] ||
        fail "-o FILE: the profile is not apcrate's"
cd "$T/crate" || exit 1
# --output-dir DIR for the test executables
mkdir prof && cargo alloc-profile --output-dir=prof test >/dev/null 2>&1
[ "$(ls prof/allocprof.apcrate-*.approf 2>/dev/null | wc -l)" = 1 ] || fail "--output-dir=prof test: $(ls prof 2>&1)"
# A destination that cannot be written is refused before anything is built.
cargo alloc-profile -o /proc/one.approf run 2>bad.err
rc=$?
[ "$rc" = 1 ] || fail "-o /proc/one.approf: exit status $rc, expected 1"
grep -q "^allocprof: cannot write the profile /proc/one.approf: " bad.err || fail "-o /proc/one.approf: $(cat bad.err)"
grep -q "Compiling" bad.err && fail "-o /proc/one.approf: cargo built first"
# Two test executables (the crate's and an integration test) cannot share one -o file.
mkdir -p tests && printf '#[test]\nfn two() { assert_eq!(1 + 1, 2); }\n' >tests/it.rs
cargo alloc-profile -o both.approf test >/dev/null 2>two.err
rc=$?
[ "$rc" = 2 ] || fail "-o with two test executables: exit status $rc, expected 2"
grep -q "^allocprof: -o names one profile, and cargo built 2 test executables: name a directory for them with --output-dir DIR$" two.err ||
        fail "-o with two test executables: $(tail -2 two.err)"
[ -e both.approf ] && fail "-o with two test executables: both.approf written"

echo "$fails failed"
[ "$fails" = 0 ]
