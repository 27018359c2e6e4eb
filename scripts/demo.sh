#!/usr/bin/env bash
# `make run`: the dev server against the local AWS emulator, with sample GitHub deliveries
# signed and replayed, then the recorded builds and deployments. Runs inside
# scripts/with-moto. Keeps serving until Ctrl-C, or exits after the demo with DEMO_EXIT=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
conveyor="$root/target/debug/conveyor"
port=${CONVEYOR_PORT:-3000}
if [ "$port" = 0 ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
base="http://127.0.0.1:$port"

# A fresh secret for this run only: the replays sign with it, nothing stores it.
GITHUB_WEBHOOK_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
STRIPE_WEBHOOK_SECRET=whsec_$(python3 -c 'import secrets; print(secrets.token_hex(24))')
export GITHUB_WEBHOOK_SECRET STRIPE_WEBHOOK_SECRET
export CONVEYOR_TABLE=${CONVEYOR_TABLE:-conveyor-dev}

"$conveyor" dev --listen "127.0.0.1:$port" --config events/conveyor.dev.toml &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('$base/api/v1/builds', timeout=1)" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "the dev server did not start" >&2; exit 1; }
  sleep 0.2
done

show() {
  python3 -c "import json, sys, urllib.request; print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1])), indent=2))" "$base$1"
}

echo
echo "== replaying sample GitHub deliveries (signed with this run's secret)"
for sample in ping/hook-created push/main workflow_run/ci-success-main check_suite/success-main \
              workflow_run/ci-failure-main workflow_run/ci-success-develop; do
  "$conveyor" replay "events/github/$sample.json" --url "$base/webhooks/github"
done
echo
echo "== the same delivery again is a duplicate"
"$conveyor" replay events/github/push/main.json --url "$base/webhooks/github" --delivery demo-repeat >/dev/null
"$conveyor" replay events/github/push/main.json --url "$base/webhooks/github" --delivery demo-repeat

echo
echo "== replaying sample Stripe events (signed with this run's endpoint secret)"
for sample in subscription-created invoice-payment-failed; do
  "$conveyor" replay "events/stripe/$sample.json" --url "$base/webhooks/stripe"
done

echo
echo "== a Packer manifest uploaded with a provider token"
token=$("$conveyor" token create --provider aws-images --config events/conveyor.dev.toml | tail -n 1)
upload() {
  python3 - "$base/providers/aws-images/manifests" "$token" events/packer/manifest.json <<'PY'
import json, sys, urllib.error, urllib.request
url, token, path = sys.argv[1:]
request = urllib.request.Request(url, data=open(path, "rb").read(), method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
try:
    with urllib.request.urlopen(request) as response:
        print(response.status, json.dumps(json.load(response)))
except urllib.error.HTTPError as err:
    print(err.code, err.read().decode())
PY
}
upload
echo "(the same manifest again changes nothing)"
upload

echo
echo "== GET /api/v1/builds"
show /api/v1/builds
echo "== GET /api/v1/deployments?environment=production"
show "/api/v1/deployments?environment=production"
echo "== GET /api/v1/deployments?environment=staging"
show "/api/v1/deployments?environment=staging"
echo "== GET /api/v1/customers/cus_QdemoShop"
show /api/v1/customers/cus_QdemoShop

if [ "${DEMO_EXIT:-0}" = 1 ]; then
  exit 0
fi
echo
echo "conveyor dev keeps serving on $base (Ctrl-C to stop). Replay more with:"
echo "  GITHUB_WEBHOOK_SECRET=$GITHUB_WEBHOOK_SECRET target/debug/conveyor replay events/github/push/main.json --url $base/webhooks/github"
echo "  STRIPE_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET target/debug/conveyor replay events/stripe/subscription-created.json --url $base/webhooks/stripe"
wait "$server"
