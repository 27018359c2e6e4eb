#!/usr/bin/env bash
# Installs the project's Python tools into project-local virtual environments under .venv/.
# Each tool gets its own environment, so their pinned dependencies never fight.
#   moto     the local AWS emulator (tests, make run)
#   lint     cfn-lint, aws-sam-cli, aws-sam-translator (template checks, sam deploy)
#   checkov  policy checks on the expanded template
# Usage: scripts/venvs.sh NAME...   (re-running is cheap: a stamp file marks a finished install)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

packages() {
  case "$1" in
    moto) echo "moto[server]==5.2.5" ;;
    lint) echo "cfn-lint==1.58.0 aws-sam-cli==1.170.0" ;;
    checkov) echo "checkov==3.3.30" ;;
    *) echo "unknown tool environment: $1 (use moto, lint or checkov)" >&2; return 1 ;;
  esac
}

for name in "$@"; do
  want=$(packages "$name")
  dir="$root/.venv/$name"
  stamp="$dir/.installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    continue
  fi
  echo "installing $want into .venv/$name" >&2
  rm -rf "$dir"
  "$python" -m venv "$dir"
  # shellcheck disable=SC2086
  "$dir/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" > "$stamp"
done
