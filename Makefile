# lazypull: `make demo` runs the main job end to end; `make test` runs every test.
# Both install what is missing first (make deps: apt-get, as root).

GO        ?= go
BIN       := bin/lazypull
BENCH_BIN := bin/lazypull-bench
STATICCHECK_VERSION := v0.8.2

.PHONY: all build build-bench deps lint test unit e2e demo bench bench-convert bench-mount bench-snapshotter bench-e2e fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/lazypull

# The benchmark harness (internal/bench), a binary of its own: nothing of it is in bin/lazypull.
build-bench: build
	$(GO) build -o $(BENCH_BIN) ./cmd/lazypull-bench

deps:
	@scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	@# tools/stargz-grpc and tools/soci-grpc are modules of their own (./... above stops at
	@# their go.mod): checked apart.
	cd tools/stargz-grpc && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	cd tools/soci-grpc && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# All tests: unit tests, fuzz seeds, and the end-to-end tests against a real registry and a
# real containerd that scripts/test.sh starts (and stops) on loopback and private sockets.
test: deps lint build
	scripts/test.sh

demo: deps build-bench
	scripts/demo.sh

# Go benchmarks of the format (index decode, writer throughput, chunker).
bench:
	$(GO) test -run '^$$' -bench . -benchtime 10x ./format/...

# The benchmarks of bin/lazypull-bench (root). BENCH_FLAGS passes flags to any of them, e.g.
# BENCH_FLAGS='--n 5 --record' (--record appends the report to docs/benchmarks-history.md).
BENCH_FLAGS ?=

# Converter throughput against ctr-remote's eStargz conversion, and index vs TOC size.
bench-convert: deps build-bench
	$(BENCH_BIN) convert $(BENCH_FLAGS)

# Lazy mount: cold read vs curl, passthrough vs local disk, bytes fetched for python3 -c 'print(1)'.
bench-mount: deps build-bench
	$(BENCH_BIN) mount $(BENCH_FLAGS)

# Snapshotter: daemon RSS with 10 images mounted; cold lazypull pull + ctr run against
# ctr image pull + ctr run (time and bytes from the registry).
bench-snapshotter: deps build-bench
	$(BENCH_BIN) snapshotter $(BENCH_FLAGS)

# Cold container starts, plain containerd vs lazypull, on Debian-built images over emulated
# links (root; the default set runs in under 30 minutes on 2 CPUs). Tables on stdout;
# results.json, chart.png, report.html in bench-results/DATE. More: BENCH_FLAGS, e.g.
# BENCH_FLAGS='--images python,node,gcc,postgres,jdk --n 5'.
bench-e2e: deps build-bench
	$(BENCH_BIN) e2e $(BENCH_FLAGS)

# Run every fuzz target of every package for FUZZTIME each (default 30s). `make test` runs
# their seed corpora as ordinary tests.
FUZZTIME ?= 30s
fuzz:
	for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test $$pkg -list '^Fuzz' | grep '^Fuzz'); do \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) || exit 1; \
		done; \
	done

clean:
	rm -rf bin
