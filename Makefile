# Entry points for developers and CI: real services first, then cargo.
# scripts/services.sh installs/starts PostgreSQL, RabbitMQ and moto idempotently.
SHELL := /bin/bash

.PHONY: services build test demo bench fmt lint clean-services

services:
	scripts/services.sh start

build:
	cargo build --workspace --bins

test: services
	scripts/services.sh test-tools
	scripts/services.sh clean-tests
	scripts/check-deploy.sh
	cargo build --workspace --bins
	# tests/tests/restarts.rs restarts PostgreSQL and RabbitMQ: alone, first.
	set -a; eval "$$(scripts/services.sh env)"; \
	if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run -p tether-tests --test restarts -j 1 --no-fail-fast && \
		cargo nextest run --workspace --no-fail-fast -E 'not binary(restarts)'; \
	else \
		cargo test -p tether-tests --test restarts --no-fail-fast -- --test-threads=1 && \
		cargo test --workspace --no-fail-fast -- --skip an_import_survives; \
	fi

demo: services build
	scripts/demo.sh

# Benchmarks (release build) against the same services; results in bench/results/.
bench: services
	scripts/services.sh bench-tools
	cargo build --release --bins
	set -a; eval "$$(scripts/services.sh env)"; cargo run --release -p tether-bench

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

clean-services:
	scripts/services.sh stop
