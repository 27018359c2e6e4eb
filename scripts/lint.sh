#!/usr/bin/env bash
# Static checks, all offline: Rust formatting and clippy, then the SAM template with
# cfn-lint, sam validate --lint, a route check against the functions, and checkov on the
# expanded template.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/venvs.sh" lint checkov

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

lint="$root/.venv/lint/bin"
"$lint/cfn-lint" infra/template.yaml
# sam validate reads a region but calls nothing with these dummy credentials.
AWS_ACCESS_KEY_ID=lint AWS_SECRET_ACCESS_KEY=lint SAM_CLI_TELEMETRY=0 \
  "$lint/sam" validate --lint --template-file infra/template.yaml --region us-east-1

mkdir -p target/lint
# Built as the tests build it (`cargo test --no-run`: dev-dependencies take part in feature
# unification only when tests are built), so the tests and `make run` reuse this one build.
cargo test --workspace --no-run --quiet
target/debug/conveyor routes > target/lint/routes.json
"$lint/python" scripts/check_template.py infra/template.yaml target/lint/routes.json target/lint/expanded.json
"$root/.venv/checkov/bin/checkov" --quiet --compact --skip-download \
  --framework cloudformation -f target/lint/expanded.json
echo "lint: ok"
