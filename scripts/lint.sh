#!/usr/bin/env bash
# Static checks, all offline: Rust formatting and Clippy's lints (in the one shared build),
# then the SAM template with cfn-lint, sam validate --lint, a check of routes, stream
# mappings and schedules against the functions, and checkov on the expanded template.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/venvs.sh" lint checkov

cargo fmt --all --check
mkdir -p target/lint
export RUSTC_WORKSPACE_WRAPPER=${RUSTC_WORKSPACE_WRAPPER:-clippy-driver}
# One build for lint, tests and `make run`: `cargo test --no-run` resolves features as the
# tests do (dev-dependencies take part only when tests are built), and clippy-driver (as
# the workspace wrapper, set the same way by the Makefile for tests and `make run`) lints
# every target of the workspace's crates while it compiles them. Cargo repeats a cached
# unit's warnings, so a clean tree is known.
cargo test --workspace --all-targets --no-run --quiet 2>&1 | tee target/lint/build.log
if grep -qE '^(warning|error)(\[[^]]*\])?: ' target/lint/build.log; then
  echo "lint: the build above reports warnings; fix them (clippy's lints are errors here)" >&2
  exit 1
fi

lint="$root/.venv/lint/bin"
"$lint/cfn-lint" infra/template.yaml
# sam validate reads a region but calls nothing with these dummy credentials.
AWS_ACCESS_KEY_ID=lint AWS_SECRET_ACCESS_KEY=lint SAM_CLI_TELEMETRY=0 \
  "$lint/sam" validate --lint --template-file infra/template.yaml --region us-east-1

target/debug/conveyor routes > target/lint/routes.json
"$lint/python" scripts/check_template.py infra/template.yaml target/lint/routes.json target/lint/expanded.json
"$root/.venv/checkov/bin/checkov" --quiet --compact --skip-download \
  --framework cloudformation -f target/lint/expanded.json
echo "lint: ok"
