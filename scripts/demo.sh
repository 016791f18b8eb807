#!/usr/bin/env bash
# The main job on a fresh Debian 12 host, as root: build banger, install the
# host packages it needs, start bangerd, build the default kernel and image,
# create a VM, run a command in it and print the result.
#
# Idempotent: every step skips what is already done, so a second run only
# boots (or reuses) the VM. BANGER_DEMO_PREPARE_ONLY=1 stops before any VM
# is booted (and stops a daemon this run started), for preparing downloads
# in one network namespace and booting in another.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
VM=${BANGER_DEMO_VM:-demo}

echo "== host packages"
./scripts/host-deps.sh

echo "== build"
if [ -x bin/banger ] && [ -x bin/bangerd ] && [ -z "$(find cmd internal go.mod go.sum -newer bin/bangerd -print -quit)" ]; then
  echo "binaries up to date"
else
  make build
fi
B=./bin/banger

echo "== doctor (what this host offers; stops here on a FAIL, with the fix)"
$B doctor

echo "== bangerd"
started_here=
if ! $B --no-autostart ping >/dev/null 2>&1; then started_here=1; fi
$B ping

echo "== kernel and image (built from Debian packages on first use)"
$B kernel pull debian-6.1
$B image pull debian-bookworm

if [ -n "${BANGER_DEMO_PREPARE_ONLY:-}" ]; then
  if [ -n "$started_here" ]; then
    pid=$($B ping --json | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
    [ -n "$pid" ] && kill "$pid"
  fi
  echo "prepared; run again (without BANGER_DEMO_PREPARE_ONLY) to boot the VM"
  exit 0
fi

echo "== VM $VM"
if state=$($B vm show "$VM" --json 2>/dev/null | sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p') && [ -n "$state" ]; then
  [ "$state" = running ] || $B vm start "$VM"
else
  $B vm create --name "$VM"
fi

echo "== running a command in $VM"
$B vm exec "$VM" -- sh -c 'echo "hello from $(hostname): $(uname -sr), $(nproc) vCPU, $(free -m | awk "/Mem:/{print \$2}") MiB"'
echo "done: banger vm ssh $VM for a shell, banger vm delete $VM to remove it"
