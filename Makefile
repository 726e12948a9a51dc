# Statecast task runner. `make` lists the recipes; CI runs `make test` (see .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Build cache outside the clone, so a fresh clone on the same machine builds warm.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/statecast/target
export PATH := $(HOME)/.cargo/bin:$(PATH)
BIN := $(CARGO_TARGET_DIR)/debug

help: ## list the recipes
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

dev: ## start the local stack, then run the Profile API, the four consumers and a trace receiver (Ctrl-C stops them)
	scripts/dev

trace: ## print the last write's trace under `make dev` as a span tree (TRACE_ID=<id> for another)
	@# The same build as scripts/dev (same features: nothing rebuilds when make dev is running).
	@cargo build -q --locked --bins -p profile-api -p profile-consumer -p statecast-traces
	@$(BIN)/statecast-traces show $(TRACE_ID)

flow: ## beside `make dev`: latest audit rows, analytics counts, mails, each consumer's records and lag, the last write's trace
	scripts/flow

test: ## start the stack, then fmt, clippy, every Rust test against the real services, a short contract fuzz, chart and doc checks
	scripts/test

chaos: ## the full reliability suite (faults, load, bad input) and its table
	scripts/chaos

bench: ## run the benchmarks (release build), print the table, write docs/benchmarks.md
	scripts/bench

stack-up: ## start PostgreSQL, Redis, the broker and the SMTP sink on loopback (idempotent)
	scripts/stack up

stack-down: ## stop what stack-up started
	scripts/stack down

stack-status: ## show the local services and who started them
	scripts/stack status

crd: ## regenerate manifests/crd/ and the chart's copy from the Rust types
	cargo run -q -p profile-operator -- crd > manifests/crd/profileconsumers.statecast.dev.yaml
	scripts/chart-check --sync-crd

chart-check: ## lint, render and validate the Helm chart offline (Helm 3 and 4)
	scripts/chart-check

docs-check: ## check the docs against the code (names, defaults, metrics) and run the README's API commands
	scripts/docs-check

kind-up: ## create a kind cluster, build and load the image, helm install (needs Docker, kind, kubectl, helm)
	scripts/kind-up

kind-e2e: ## end-to-end check against the kind cluster
	scripts/kind-e2e

kind-down: ## delete the kind cluster
	scripts/kind-down

.PHONY: help dev trace flow test bench chaos stack-up stack-down stack-status crd chart-check docs-check kind-up kind-e2e kind-down
