# banger — build, test, benchmark. See README.md.
GO        ?= go
PREFIX    ?= /usr/local
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X banger/internal/version.Version=$(VERSION) -X banger/internal/version.Commit=$(COMMIT)

.PHONY: build install test race e2e bench ci demo deps fmt vet clean release

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

install: build
	install -m 0755 $(BIN)/banger $(BIN)/bangerd $(BIN)/banger-agent $(PREFIX)/bin/

# A signed release in $(DIST): make release VERSION=vX.Y.Z SIGNING_KEY=key.pem
# (an ECDSA P-256 key: openssl ecparam -name prime256v1 -genkey -noout -out key.pem).
# The binaries embed the key's public half; banger update trusts only it.
DIST      ?= dist
release:
	@case "$(VERSION)" in v[0-9]*.[0-9]*.[0-9]*) ;; *) echo "make release: VERSION=vX.Y.Z is required (got '$(VERSION)')" >&2; exit 2;; esac
	@test -n "$(SIGNING_KEY)" || { echo "make release: SIGNING_KEY=path/to/ec-p256.pem is required" >&2; exit 2; }
	@rm -rf $(DIST)/.build-$(VERSION)
	pub=$$($(GO) run ./tools/release pubkey $(SIGNING_KEY)) && \
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS) -X banger/internal/version.UpdateKey='"$$pub" \
		-o $(DIST)/.build-$(VERSION)/ ./cmd/banger ./cmd/bangerd ./cmd/banger-agent && \
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) \
		$(GO) run ./tools/release pack --version $(VERSION) --key $(SIGNING_KEY) --bin $(DIST)/.build-$(VERSION) --dist $(DIST); \
	rc=$$?; rm -rf $(DIST)/.build-$(VERSION); exit $$rc

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
