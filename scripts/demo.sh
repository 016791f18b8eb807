#!/usr/bin/env bash
# The main job on a fresh Debian 12 host: build banger, install the host
# packages it needs, start bangerd and talk to it. Idempotent: every step
# skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

./scripts/host-deps.sh
if [ ! -x bin/banger ] || [ ! -x bin/bangerd ] || [ -n "$(find cmd internal go.mod -newer bin/banger -print -quit)" ]; then
  echo "== building"
  make build
else
  echo "== binaries up to date"
fi
echo "== bangerd"
./bin/banger ping
./bin/banger ops
