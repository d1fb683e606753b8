#!/usr/bin/env bash
# Sets a fresh host up for flick: Debian packages, release builds of the `flick` CLI and of the
# guest agent (static, for the initrd flick builds) installed into ~/.cargo/bin, plus the
# Firecracker test double used by `scripts/try.sh` on hosts that cannot boot a guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
root="${CARGO_HOME:-$HOME/.cargo}"
cargo install --quiet --locked --path crates/flick-cli --root "$root"
# flick-dns (egress by domain) and flick-wg (userspace WireGuard) run next to `flick`.
cargo install --quiet --locked --path crates/flick --bins --root "$root"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo install --quiet --locked --path crates/flick-agent --root "$root"
cargo install --quiet --locked --path crates/flick-testkit --bin fc-double --root "$root"
echo "installed: flick, flick-dns, flick-wg, flick-agent, fc-double in $root/bin" >&2
