#!/usr/bin/env bash
# Runs flick's whole test suite: unit, integration (Firecracker double, network namespaces,
# loopback servers, real mkfs/mksquashfs), property and snapshot tests. Privileged tests need
# root and fail with the reason when they do not have it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CI="${CI:-true}"   # insta: never write .snap.new files, fail on any mismatch
cargo build --workspace --all-targets --quiet
# The fuzz targets (their own workspace under fuzz/) must keep building; without a sanitizer
# this works on the stable toolchain.
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
(cd fuzz && cargo fuzz build -s none)
# Benchmarks are built above (and linted by CI) but not run here: they are timed runs, see
# docs/benchmarks.md.
cargo test --workspace --lib --bins --tests --no-fail-fast
# Doctests.
cargo test --workspace --doc --quiet
