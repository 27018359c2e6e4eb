#!/usr/bin/env bash
# Builds every function as an arm64 Lambda zip (target/lambda/<function>/bootstrap.zip),
# with the repository's conveyor.toml inside it (CONVEYOR_CONFIG=conveyor.toml in Lambda).
set -euo pipefail
# What ships is built by rustc itself, never through the linting build's clippy-driver.
unset RUSTC_WORKSPACE_WRAPPER
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ ! -f conveyor.toml ]; then
  echo "conveyor.toml is missing: copy conveyor.example.toml to conveyor.toml and edit it" >&2
  exit 1
fi
target/debug/conveyor config check conveyor.toml 2>/dev/null || cargo run --quiet -p conveyor-cli -- config check conveyor.toml
python3 -m venv .venv/package >/dev/null 2>&1 || true
.venv/package/bin/pip install --quiet --disable-pip-version-check "cargo-lambda==1.9.2"
rustup target add aarch64-unknown-linux-gnu >/dev/null
for dir in functions/*/; do
  name=$(basename "$dir")
  PATH="$root/.venv/package/bin:$PATH" cargo lambda build --release --arm64 --output-format zip \
    --package "$name" --include conveyor.toml
done
ls -l target/lambda/*/bootstrap.zip
