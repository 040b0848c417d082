# lazypull: `make demo` runs the main job end to end; `make test` runs every test.
# Both install what is missing first (make deps: apt-get, as root).

GO        ?= go
BIN       := bin/lazypull
STATICCHECK_VERSION := v0.8.2

.PHONY: all build deps lint test unit e2e demo bench bench-convert bench-mount bench-snapshotter bench-e2e fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/lazypull

deps:
	@scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	@# tools/stargz-grpc is a module of its own (./... above stops at its go.mod): checked apart.
	cd tools/stargz-grpc && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# All tests: unit tests, fuzz seeds, and the end-to-end tests against a real registry and a
# real containerd that scripts/test.sh starts (and stops) on loopback and private sockets.
test: deps lint build
	scripts/test.sh

demo: deps build
	scripts/demo.sh

# Go benchmarks of the format (index decode, writer throughput, chunker).
bench:
	$(GO) test -run '^$$' -bench . -benchtime 10x ./format/...

# Converter throughput against ctr-remote's eStargz conversion, and index vs TOC size.
bench-convert: deps build
	scripts/bench-convert.sh

# Lazy mount: cold read vs curl, passthrough vs local disk, bytes fetched for python3 -c 'print(1)'.
bench-mount: deps build
	scripts/bench-mount.sh

# Snapshotter: daemon RSS with 10 images mounted; cold lazypull pull + ctr run against
# ctr image pull + ctr run (time and bytes from the registry).
bench-snapshotter: deps build
	scripts/bench-snapshotter.sh

# Cold container starts, plain containerd vs lazypull, on Debian-built images over emulated
# links (lazypull bench; root; the default set runs in under 30 minutes on 2 CPUs). Tables on
# stdout; results.json, chart.png, report.html in bench-results/DATE. More: BENCH_FLAGS, e.g.
# BENCH_FLAGS='--images python,node,gcc,postgres,jdk --n 5'.
BENCH_FLAGS ?=
bench-e2e: deps build
	$(BIN) bench $(BENCH_FLAGS)

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
