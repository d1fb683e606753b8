#!/usr/bin/env bash
# Installs the Debian packages flick's build, tests and benchmarks use. Idempotent; needs root
# (or sudo) on a Debian/Ubuntu host.
set -euo pipefail

packages=(
  build-essential pkg-config ca-certificates git curl
  iproute2 nftables util-linux mount procps psmisc file coreutils gzip libc-bin
  e2fsprogs squashfs-tools cpio
  socat dnsmasq docker-registry wireguard-tools hyperfine
  apache2-utils openssl tar bsdutils python3
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
