#!/usr/bin/env bash
# Sets a fresh host up for flick: Debian packages, release builds of the `flick` CLI and of the
# guest agent (static, for the initrd flick builds) installed into ~/.cargo/bin, plus the
# Firecracker test double used by `scripts/try.sh` on hosts that cannot boot a guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
root="${CARGO_HOME:-$HOME/.cargo}"
cargo install --quiet --locked --path crates/flick-cli --root "$root"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo install --quiet --locked --path crates/flick-agent --root "$root"
cargo install --quiet --locked --path crates/flick-testkit --bin fc-double --root "$root"
echo "installed: $root/bin/flick, $root/bin/flick-agent, $root/bin/fc-double" >&2
