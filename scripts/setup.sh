#!/usr/bin/env bash
# Sets a fresh host up for flick: Debian packages, a release build of the `flick` CLI installed
# into ~/.cargo/bin. Then run `flick doctor`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo install --quiet --locked --path crates/flick-cli --root "${CARGO_HOME:-$HOME/.cargo}"
echo "installed: $(command -v flick || echo "${CARGO_HOME:-$HOME/.cargo}/bin/flick")" >&2
