#!/usr/bin/env bash
# End-to-end tests: real bangerd, real VMs (QEMU), each run inside a network
# namespace the test creates. Kernel and image are built once from Debian
# packages and cached in $BANGER_E2E_CACHE (default /var/cache/banger-e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
[ -x bin/banger ] && [ -x bin/bangerd ] || make build
exec go test -tags e2e -count=1 -v -timeout 80m ./e2e/ "$@"
