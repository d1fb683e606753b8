#!/usr/bin/env bash
# flick's main job: `flick run -- echo hello`.
#
# On a KVM host that can boot a guest and reach GitHub and Firecracker's CI bucket, this is
# exactly that: Firecracker and a base image are downloaded (with progress), a microVM boots
# and prints `hello`.
#
# Where `flick doctor` says a guest cannot boot (nested PVM KVM) the same CLI flow runs against
# the Firecracker *test double* (`fc-double`) with the agent as a host process behind the
# double's vsock emulation, in a private network namespace: every flick component is real
# except the VMM, and the script says so. Set FLICK_TRY_REAL=1 to insist on a real VM.
set -euo pipefail
bin="${CARGO_HOME:-$HOME/.cargo}/bin"
flick="$bin/flick"
boots=$("$flick" --json doctor 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
kvm = [c for c in d["checks"] if c["name"].startswith("kvm")]
print("no" if any(c["status"] != "ok" for c in kvm) else "yes")' || echo no)
if [[ "$boots" == yes || "${FLICK_TRY_REAL:-}" == 1 ]]; then
  exec "$flick" run -- echo hello
fi

echo "flick doctor: this host cannot boot a guest kernel; running the flick CLI against the" >&2
echo "Firecracker test double (not a VMM) with the agent as a host process." >&2
work=$(mktemp -d /dev/shm/flick-try.XXXXXX)
ns="flicktry$$"
cleanup() {
  FLICK_DATA_DIR="$work/data" ip netns exec "$ns" "$flick" rm -f $(FLICK_DATA_DIR="$work/data" "$flick" ls -aq 2>/dev/null) >/dev/null 2>&1 || true
  [[ -n "${agent:-}" ]] && kill "$agent" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
"$bin/flick-agent" --unix "$work/agent.sock" --token try-token >/dev/null 2>&1 &
agent=$!
head -c 4096 /dev/zero > "$work/vmlinux"
truncate -s 64M "$work/rootfs.ext4"
export FLICK_DATA_DIR="$work/data" FLICK_RUNTIME_DIR="$work/runtime" \
  FLICK_FIRECRACKER="$bin/fc-double" FLICK_AGENT_BIN="$bin/flick-agent" \
  FLICK_AGENT_TOKEN=try-token FC_DOUBLE_VSOCK_PORTS="1024=$work/agent.sock" \
  FLICK_KERNEL="$work/vmlinux" FLICK_ROOTFS="$work/rootfs.ext4"
for _ in $(seq 100); do [[ -S "$work/agent.sock" ]] && break; sleep 0.05; done
run() { echo "\$ flick $*" >&2; ip netns exec "$ns" "$flick" "$@"; }
run run -- echo hello
run create --name demo --cpus 2 --memory 256M
run ls
run exec demo -- sh -c 'echo "exec works: $(id -un) in $(pwd)"'
run snapshot create demo --name warm
run snapshot restore warm --count 3
run ls
run rm -f demo
