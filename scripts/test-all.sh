#!/usr/bin/env bash
# Every test: formatting, lints, unit and end-to-end tests (the real binary against real
# servers and the official Dapr SDKs), and the benchmark suite's smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
if [ -f bench/Cargo.toml ]; then
  cargo run --release -q -p tandem-bench -- all --quick
fi
