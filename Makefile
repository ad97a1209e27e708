# sd-launch workspace: `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/debug
FUZZ_SECONDS ?= 300

.PHONY: help build demo test test-systemd lint doc bench fuzz

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## build every binary of the workspace (debug)
	$(CARGO) build --workspace --bins

demo: build ## start demo-server through sd-launch, curl it, stop it, prove nothing is left
	@set -euo pipefail; \
	echo '$$ export $$(sd-launch -- demo-server)'; \
	export $$($(BIN)/sd-launch --outfile target/demo-server.log -- $(BIN)/demo-server); \
	trap 'kill $$LAUNCHED_PID 2>/dev/null || true' EXIT; \
	echo "LAUNCHED_PORT=$$LAUNCHED_PORT LAUNCHED_PID=$$LAUNCHED_PID"; \
	echo '$$ curl -i http://127.0.0.1:$$LAUNCHED_PORT/'; \
	curl -sS -i http://127.0.0.1:$$LAUNCHED_PORT/; \
	echo '$$ curl http://127.0.0.1:$$LAUNCHED_PORT/info'; \
	curl -sS http://127.0.0.1:$$LAUNCHED_PORT/info; echo; \
	echo '$$ kill $$LAUNCHED_PID'; \
	kill $$LAUNCHED_PID; \
	running() { [ -e /proc/$$1 ] && ! grep -q '^State:[[:space:]]*[ZX]' /proc/$$1/status 2>/dev/null; }; \
	for i in $$(seq 100); do running $$LAUNCHED_PID || break; sleep 0.1; done; \
	if running $$LAUNCHED_PID; then echo "demo-server $$LAUNCHED_PID is still running" >&2; exit 1; fi; \
	trap - EXIT; \
	echo "demo-server $$LAUNCHED_PID has exited; no process left behind"

test: ## build the binaries, then run every test of the workspace (all features)
	$(CARGO) build --workspace --bins --all-features
	$(CARGO) test --workspace --all-features --no-fail-fast

test-systemd: ## boot Debian's systemd 252 in systemd-nspawn, check the shipped unit files (root)
	$(CARGO) build --release -p demo-server
	bash tests/systemd/run.sh

lint: ## rustfmt check, clippy and rustdoc with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --all-features
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -p sd-launch --no-deps --no-default-features

doc: ## build the API docs of every crate (target/doc/<crate>/index.html)
	$(CARGO) doc --workspace --no-deps --all-features

bench: ## run the benchmark harness (release build; table on stdout, target/bench/report.json)
	$(CARGO) build --release -p sd-launch -p sd-launch-bench -p demo-server
	target/release/sd-launch-bench

fuzz: ## fuzz listenfd-core's env parser for FUZZ_SECONDS (default 300; needs nightly)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	cd listenfd-core && mkdir -p fuzz/corpus/parse_env && \
	$(CARGO) +nightly fuzz run parse_env fuzz/corpus/parse_env fuzz/seeds/parse_env -- -max_total_time=$(FUZZ_SECONDS)
