#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (fuzz/src/lib.rs), with libFuzzer
# and the pinned stable toolchain: cargo-fuzz needs nightly for its sanitizers, but the
# coverage instrumentation libFuzzer needs is LLVM's sancov pass, which stable rustc runs
# with `-C passes=sancov-module`. Only the workspace's crates are instrumented (through
# RUSTC_WORKSPACE_WRAPPER, scripts/fuzz-rustc), so the dependencies build as plain release
# code and the fuzzer spends its time on Conveyor's own parsers. Rust needs no AddressSanitizer
# to be memory safe here; what the fuzzer finds are panics, overflows (checked, with
# debug assertions on) and runaway work.
#
# Usage: scripts/fuzz.sh [RUNS]   (default 1,000,000 executions per target)
#        FUZZ_TARGETS="github config" scripts/fuzz.sh 10000
# Each target keeps its corpus in target/fuzz/corpus/<target>, seeded from fixtures/ and
# events/ on its first run (conveyor_fuzz::seed_corpus); a crash is written to target/fuzz/artifacts/<target>/ and fails the run: turn it
# into a case of the smoke test in fuzz/src/lib.rs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-1000000}
unset RUSTC_WORKSPACE_WRAPPER
export RUSTC_WORKSPACE_WRAPPER="$root/scripts/fuzz-rustc"
cargo build --release --quiet --features libfuzzer -p conveyor-fuzz --bins --target-dir target/fuzz
targets=${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^conveyor-fuzz$')}
status=0
for target in $targets; do
  corpus="target/fuzz/corpus/$target"
  artifacts="target/fuzz/artifacts/$target/"
  mkdir -p "$corpus" "$artifacts"
  target/fuzz/release/"$target" -runs="$runs" -seed=1 -max_len=65536 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts" "$corpus" \
    >"target/fuzz/$target.log" 2>&1 || status=1
  executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "target/fuzz/$target.log" | tail -1)
  coverage=$(grep -o 'cov: [0-9]*' "target/fuzz/$target.log" | tail -1)
  if [ "$status" = 1 ] && ! grep -q '^stat::number_of_executed_units' "target/fuzz/$target.log"; then
    echo "fuzz: $target stopped early (see target/fuzz/$target.log):" >&2
    grep -E 'ERROR|panicked|Test unit written' "target/fuzz/$target.log" >&2 || tail -20 "target/fuzz/$target.log" >&2
    continue
  fi
  echo "fuzz: $target: ${executed:-0} executions, ${coverage:-cov: ?} edges"
done
exit "$status"
