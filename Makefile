# Writ's build, test and code-generation targets. Tool versions are pinned
# in go.mod (tool directives) so every machine generates the same code.
GO        ?= go
BIN       := $(CURDIR)/bin
PROTOS    := $(shell find ca/api -name '*.proto')
FUZZTIME  ?= 10s
GOLANGCI_VERSION := v2.6.2

.PHONY: all build docs docs-check test test-deps test-upstream integration bench bench-smoke bench-go fuzz lint vet fmt-check generate generate-check tidy-check tools clean

all: lint test

build:
	$(GO) build -o $(BIN)/writ ./cmd/writ

test: test-deps test-upstream
	$(GO) test -race -timeout 20m ./...

# test-upstream runs the tests against real upstream CAs (step-ca, cfssl,
# started in-process), which live in their own module, test/upstream, so
# that Writ's module never requires them; go test ./... does not descend
# into it.
test-upstream:
	cd test/upstream && $(GO) vet ./... && $(GO) test -race -timeout 20m ./...

# test-deps installs the PostgreSQL server that the pgstore tests start
# throwaway clusters of (internal/pgtest), if no initdb is found and make
# runs as root with apt-get; without it those tests skip (fail if
# CI=true). No cluster of the package's own is created or started. It
# installs nginx the same way, for the `writ helper` integration test
# (no nginx service is started: the test runs its own on loopback).
test-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	    { command -v pg_config >/dev/null && [ -x "$$(pg_config --bindir)/initdb" ]; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the PostgreSQL server (for the pgstore tests)"; \
	  mkdir -p /etc/postgresql-common; \
	  [ -e /etc/postgresql-common/createcluster.conf ] || echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf; \
	  apt-get update -qq >/dev/null; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null 2>&1 || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	  echo "no PostgreSQL server found: the pgstore tests will skip (apt-get install postgresql)"; \
	fi
	@# nginx, for the integration test of `writ helper run` serving mTLS
	@# (skipped without it, failed if CI=true).
	@if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing nginx (for the writ helper integration test)"; \
	  apt-get update -qq >/dev/null; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
	else \
	  echo "no nginx found: the writ helper nginx test will skip (apt-get install nginx)"; \
	fi

integration:
	$(GO) test -race -timeout 20m -run Integration ./...

# bench measures Writ's real server and agent against this machine's
# limits and writes bench-results/ (report.md, results.json, SVG charts);
# bench-smoke checks that every figure is produced (not its value), in
# under 2 minutes, writing to bench-results/smoke; bench-go runs the Go
# benchmarks of every package.
bench: test-deps
	$(GO) run ./cmd/writ-bench --out bench-results

bench-smoke: test-deps
	$(GO) run ./cmd/writ-bench --smoke --out bench-results/smoke

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...

fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

lint: vet fmt-check
	@if command -v golangci-lint >/dev/null 2>&1; then golangci-lint run ./...; \
	else echo "golangci-lint $(GOLANGCI_VERSION) not installed; ran go vet and gofmt only"; fi

tools:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o $(BIN)/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc

generate: tools
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler"; exit 1; }
	protoc --plugin=protoc-gen-go=$(BIN)/protoc-gen-go --plugin=protoc-gen-go-grpc=$(BIN)/protoc-gen-go-grpc \
	  --go_out=. --go_opt=module=writ.dev/writ \
	  --go-grpc_out=. --go-grpc_opt=module=writ.dev/writ \
	  $(PROTOS)

generate-check: generate
	@git diff --exit-code -- ca/api || { echo "generated code is stale: run make generate and commit"; exit 1; }

tidy-check:
	$(GO) mod tidy
	cd test/upstream && $(GO) mod tidy
	@git diff --exit-code -- go.mod go.sum test/upstream/go.mod test/upstream/go.sum || { echo "go.mod/go.sum not tidy"; exit 1; }

clean:
	rm -rf $(BIN)

# docs regenerates docs/config.md from the command definitions;
# docs-check (run by make test through TestConfigReference as well) fails
# when it is out of date.
docs:
	WRIT_UPDATE_DOCS=1 $(GO) test -count=1 -run '^TestConfigReference$$' ./cmd/writ

docs-check:
	$(GO) test -count=1 -run '^TestConfigReference$$' ./cmd/writ
