#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh Debian 12 machine as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/host-deps.sh
export PATH=$PATH:/usr/local/go/bin
go version
go mod download
echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
echo "== go vet"
go vet ./...
echo "== unit and host-integration tests (go test -race)"
go test -race -count=1 ./...
echo "== kernel and image build tests (build from Debian packages, boot the image once)"
BANGER_BUILD_TESTS=1 go test -count=1 -timeout 30m -run '^TestBuild' ./internal/kernel ./internal/image
if [ -x scripts/e2e.sh ]; then
  echo "== end-to-end"
  make e2e
fi
