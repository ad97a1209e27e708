# sd-launch workspace. `make` alone lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo
FUZZ_SECONDS ?= 300

.PHONY: help build demo test lint doc fuzz bench

help: ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-7s %s\n", $$1, $$2}'

build: ## Build every crate and binary (debug)
	$(CARGO) build --workspace --bins

demo: build ## Start demo-server through sd-launch on a free port, curl it, stop it
	@set -euo pipefail; \
	export $$(target/debug/sd-launch --outfile target/demo-server.log -- target/debug/demo-server); \
	echo "LAUNCHED_PORT=$$LAUNCHED_PORT LAUNCHED_PID=$$LAUNCHED_PID"; \
	trap 'kill $$LAUNCHED_PID 2>/dev/null || true' EXIT; \
	echo "\$$ curl -s -i http://127.0.0.1:$$LAUNCHED_PORT/"; \
	curl -s -i --max-time 10 http://127.0.0.1:$$LAUNCHED_PORT/; \
	echo "\$$ curl -s http://127.0.0.1:$$LAUNCHED_PORT/info"; \
	curl -s --max-time 10 http://127.0.0.1:$$LAUNCHED_PORT/info; \
	echo "\$$ kill $$LAUNCHED_PID"; \
	kill $$LAUNCHED_PID; \
	for i in $$(seq 100); do \
	  if [ ! -e /proc/$$LAUNCHED_PID ] || grep -q '^State:.*Z' /proc/$$LAUNCHED_PID/status 2>/dev/null; then break; fi; \
	  sleep 0.1; \
	done; \
	if [ -e /proc/$$LAUNCHED_PID ] && ! grep -q '^State:.*Z' /proc/$$LAUNCHED_PID/status 2>/dev/null; then \
	  echo "demo-server $$LAUNCHED_PID is still running" >&2; exit 1; fi; \
	trap - EXIT; \
	echo "demo-server $$LAUNCHED_PID stopped; its log is target/demo-server.log"

test: ## Build the binaries, then run every test of the workspace
	$(CARGO) build --workspace --bins --all-features
	$(CARGO) test --workspace --all-features

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

doc: ## API docs for the workspace (target/doc)
	$(CARGO) doc --workspace --no-deps --all-features

fuzz: ## Fuzz the receiver's env parser for FUZZ_SECONDS (needs nightly)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	cd listenfd-core && mkdir -p fuzz/corpus/parse_env && \
	  $(CARGO) +nightly fuzz run parse_env fuzz/corpus/parse_env fuzz/seeds/parse_env -- -max_total_time=$(FUZZ_SECONDS)

bench: ## Benchmarks (placeholder)
	@echo "not yet: see issue 7"
