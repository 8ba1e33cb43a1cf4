#!/usr/bin/env bash
# Every test: formatting, lints, the benchmark suite's smoke run, then unit and end-to-end
# tests (the real binary against real servers and the official Dapr SDKs), ending with one
# summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The release binary exactly as `cargo build --release -p tandem` makes it: built together with
# tandem-bench, Cargo would unify their dependencies' features, which changes the symbol names
# the start-up layout (sidecar/link/startup-symbols.txt) lists and costs an idle sidecar ~2 MB.
# Then the benchmark's smoke run.
cargo build --release -p tandem
cargo build --release -p tandem-bench
release="${CARGO_TARGET_DIR:-target}/release"
"$release/tandem-bench" all --quick --tandem "$release/tandem"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
