#!/usr/bin/env bash
# Benchmarks: each figure is printed as a ratio against a baseline run in
# the same invocation; results land in bench/results/latest.json. See
# bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
[ -x bin/banger ] && [ -x bin/bangerd ] || make build
BANGER_BENCH=1 go test -tags e2e -count=1 -v -timeout 60m -run 'TestBench' ./e2e/ 2>&1 | grep -v '"level":"DEBUG"' | grep -v '^=== \|^    harness' || true
test -f bench/results/latest.json && cat bench/results/latest.json
