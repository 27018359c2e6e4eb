# Conveyor: the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# cargo-nextest when installed, plain cargo test otherwise.
TEST_RUNNER := $(shell cargo nextest --version >/dev/null 2>&1 && echo "cargo nextest run" || echo "cargo test")

# Lint, the tests and `make run` share one build, in which clippy-driver compiles the
# workspace's own crates and reports Clippy's lints as it goes (scripts/lint.sh fails on
# any). Only these targets use it: it builds with MIR optimisations off, which is no way to
# build what ships (`make package`, `make bench` build without it).
LINTED_BUILD := RUSTC_WORKSPACE_WRAPPER=clippy-driver
EXPANDED := target/lint/expanded.json

.PHONY: help run test unit lint build package deploy bench fuzz clean

help:
	@echo "make run      local AWS emulator + conveyor dev + sample deliveries replayed"
	@echo "make test     lint, unit and end-to-end tests (starts the emulator itself)"
	@echo "make lint     rustfmt, clippy, cfn-lint, sam validate, route check, checkov"
	@echo "make build    debug build of the workspace"
	@echo "make package  Lambda zips for arm64 (cargo lambda) in target/lambda/"
	@echo "make deploy   sam deploy (needs AWS credentials; see README)"
	@echo "make bench    benchmarks: intake CPU; fan-out CPU, AWS requests per deployment, idle poll; publish; 200 checks"
	@echo "make fuzz     every parser of outside input under libFuzzer, 1,000,000 runs each (FUZZ_RUNS)"
	@echo "make clean    remove build output and tool environments"

# Built as the tests build it: features unify across the packages built together, and with
# dev-dependencies only when tests are built, so any other build would compile the shared
# crates a second time with another feature set.
run: $(EXPANDED)
	$(LINTED_BUILD) cargo test --workspace --no-run --quiet
	$(LINTED_BUILD) scripts/with-moto scripts/demo.sh

test: lint unit

unit: $(EXPANDED)
	$(LINTED_BUILD) scripts/with-moto $(TEST_RUNNER) --workspace

# The SAM-expanded template: each function's role in the emulator (tests, `make run`) holds
# its policy from here, so a permission the template lacks fails locally as in AWS.
$(EXPANDED): infra/template.yaml scripts/check_template.py
	scripts/venvs.sh lint
	.venv/lint/bin/python scripts/check_template.py --expand infra/template.yaml $@

lint:
	$(LINTED_BUILD) scripts/lint.sh

build:
	$(LINTED_BUILD) cargo build --workspace

package:
	scripts/package.sh

deploy: package
	scripts/venvs.sh lint
	.venv/lint/bin/sam deploy --template-file infra/template.yaml --guided

bench:
	env -u RUSTC_WORKSPACE_WRAPPER cargo bench -p conveyor-shared --bench intake
	env -u RUSTC_WORKSPACE_WRAPPER scripts/with-moto cargo bench -p deploy-fanout --bench fanout
	env -u RUSTC_WORKSPACE_WRAPPER scripts/with-moto cargo bench -p conveyor-cli --bench publish
	env -u RUSTC_WORKSPACE_WRAPPER scripts/with-moto cargo bench -p conveyor-e2e --bench checks

# Coverage-guided, with the pinned stable toolchain (see scripts/fuzz.sh); `make test` runs
# the same targets over the real payloads and their mutations (fuzz/src/lib.rs).
FUZZ_RUNS ?= 1000000
fuzz:
	scripts/fuzz.sh $(FUZZ_RUNS)

clean:
	cargo clean
	rm -rf .venv .aws-sam
