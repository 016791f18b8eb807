# banger — build, test, benchmark. See README.md.
GO        ?= go
PREFIX    ?= /usr/local
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X banger/internal/version.Version=$(VERSION) -X banger/internal/version.Commit=$(COMMIT)

.PHONY: build install test race e2e bench ci demo deps fmt vet clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

install: build
	install -m 0755 $(BIN)/banger $(BIN)/bangerd $(BIN)/banger-agent $(PREFIX)/bin/

# Unit and host-integration tests (the latter need root and skip without it).
test:
	$(GO) test -race -count=1 ./...

# End-to-end: real bangerd, real VMs under QEMU, inside a private network namespace.
e2e: build
	./scripts/e2e.sh

bench: build
	./scripts/bench.sh

# The whole suite, as CI runs it: host packages, vet, unit+integration, e2e.
ci:
	./scripts/ci.sh

# The main job: build, install host packages, start bangerd, boot a VM, run a command in it.
demo:
	./scripts/demo.sh

deps:
	./scripts/host-deps.sh

fmt:
	gofmt -l -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
