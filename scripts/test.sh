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
cargo test --workspace --all-targets --no-fail-fast
# Doctests (not part of --all-targets).
cargo test --workspace --doc --quiet
