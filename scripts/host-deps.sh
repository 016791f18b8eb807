#!/usr/bin/env bash
# Installs the Debian packages banger needs on the host. Idempotent: skips
# apt entirely when everything is already there.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils e2fsprogs xfsprogs git openssh-client iproute2 iptables nftables mmdebstrap fakechroot fakeroot busybox-static cpio xz-utils zstd ca-certificates systemd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "host packages: all present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "host packages missing: ${missing[*]}; run this as root (sudo $0)" >&2
  exit 1
fi
echo "host packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
