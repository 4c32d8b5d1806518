# legate: the two commands that matter are `make run` and `make test`.
CARGO ?= cargo
CARGO_FLAGS ?= --locked

.PHONY: run test test-unit test-e2e build build-release lint fmt bench clean

## Build everything and start the demo: upstreams + a proxy on examples/demo.yaml.
run: build
	@deploy/run-demo.sh

## Every test: unit tests and the end-to-end tests against real processes.
test: build
	$(CARGO) test $(CARGO_FLAGS) --workspace --all-targets

## Unit tests only (no processes).
test-unit:
	$(CARGO) test $(CARGO_FLAGS) --workspace --lib

## End-to-end tests only.
test-e2e: build
	$(CARGO) test $(CARGO_FLAGS) -p legate-tests

build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins

build-release:
	$(CARGO) build $(CARGO_FLAGS) --release --workspace --bins

## Formatting, clippy with warnings as errors, and docs.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc $(CARGO_FLAGS) --workspace --no-deps

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
