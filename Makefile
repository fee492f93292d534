# Torus. `make run` starts a one-machine cluster; `make test` runs every test.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := bin
DATA ?= torus-data
PKGS := ./...
FUZZTIME ?= 1m

.PHONY: all deps build run test lint unit bench robustness fuzz clean deploy-test scale

all: build

deps:
	@scripts/deps.sh

# The commit goes into `torusd --version` and friends (internal/version).
COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo +dirty)
LDFLAGS := -X github.com/torus-storage/torus/internal/version.commit=$(COMMIT)

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/torusd ./cmd/torusctl ./cmd/torusblk ./cmd/torus-csi

# The main job: embedded etcd, one daemon, a 1 GiB volume "demo" on NBD at
# 127.0.0.1:10809. Data stays in $(DATA) across restarts.
run: deps build
	$(BIN)/torusd --dev --data-dir $(DATA)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Every test, with the race detector, against real etcd and real NBD clients,
# then the benchmark harness in quick mode as a smoke test (its figures are
# not judged here; results go to a scratch directory).
test: deps build lint
	TORUS_REQUIRE_TOOLS=1 TORUS_BIN=$(CURDIR)/$(BIN) $(GO) test -race -timeout 30m $(PKGS)
	$(MAKE) --no-print-directory deploy-test
	out=$$(mktemp -d) && $(GO) run ./bench -quick -strict -out $$out && rm -rf $$out

# deploy/kubernetes and charts/torus validated offline (deploy/validate, a
# module of its own: the Kubernetes and helm modules stay out of go.mod).
deploy-test: build
	cd deploy/validate && $(GO) mod download && $(GO) vet ./... && TORUS_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 ./...

unit:
	$(GO) test -short $(PKGS)

# CEPH=1 adds the Ceph RBD baseline (Debian's ceph installed when missing);
# WA_SIZES=1GiB,16GiB,64GiB picks the write-amplification rows (default
# 1GiB; see docs/benchmarks.md for the time and disk they take).
bench: deps build
	$(GO) run ./bench $(if $(QUICK),-quick) $(if $(CEPH),-ceph) $(if $(WA_SIZES),-wa-sizes $(WA_SIZES)) -out bench/results

# Idle cost of a cluster: etcd requests, peer RPCs and CPU per daemon per
# minute for in-process daemons on embedded etcd (bench/scale), with the same
# program run on $(SCALE_BASELINE)'s code in the same invocation, for the runs
# it can do (the old code re-reads everything every 2 s). SCALE_BASELINE=
# (empty) skips the baseline. 300x10 starts 300 daemons auto-joining, 16 at
# a time, in one process (minutes; docs/design/cluster.md, "Idle cost").
SCALE_RUNS ?= 3x10,3x1000,30x10,30x1000,3x10000,300x10
SCALE_BASELINE ?= main
SCALE_BASELINE_RUNS ?= 3x10,3x1000,30x10
scale:
	$(GO) run ./bench/scale -runs $(SCALE_RUNS) $(if $(SCALE_BASELINE),-baseline $(SCALE_BASELINE) -baseline-runs $(SCALE_BASELINE_RUNS))

robustness: deps build
	TORUS_BIN=$(CURDIR)/$(BIN) TORUS_ROBUSTNESS=long $(GO) test -race -run Robustness -timeout 60m -v ./tests/...

# Every native fuzz target (func FuzzX in a _test.go file), one after the
# other, for $(FUZZTIME) each (FUZZTIME=10s make fuzz for a quick pass).
# New crashers land in the package's testdata/fuzz and fail the target.
# CI does not fuzz: plain go test runs only the seed corpora.
fuzz:
	@set -e; for f in $$(git grep -l '^func Fuzz' -- '*_test.go'); do \
		for n in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== ./$$(dirname $$f) $$n ($(FUZZTIME))"; \
			$(GO) test ./$$(dirname $$f) -run '^$$' -fuzz "^$$n\$$" -fuzztime $(FUZZTIME); \
		done; \
	done

clean:
	rm -rf $(BIN)
