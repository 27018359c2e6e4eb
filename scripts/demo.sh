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
export CONVEYOR_ARTIFACTS_BUCKET=${CONVEYOR_ARTIFACTS_BUCKET:-conveyor-artifacts}
# Quick ticks and polls, so the rollout is watchable.
export CONVEYOR_TICK_SECONDS=1 CONVEYOR_IDLE_POLL_SECONDS=1
agent="$root/target/debug/conveyor-agent"
fleet_py="$root/.venv/moto/bin/python $root/scripts/demo_fleet.py"
work=$(mktemp -d)
pids=()

# The site `make run` publishes: a bucket and a distribution in the emulator, named in a copy
# of the dev configuration (the emulator picks the distribution's id).
distribution=$("$root/.venv/moto/bin/python" - <<'PY'
import uuid
import boto3
boto3.client("s3").create_bucket(Bucket="acme-frontend")
origin = {"Id": "site", "DomainName": "acme-frontend.s3.amazonaws.com", "S3OriginConfig": {"OriginAccessIdentity": ""}}
created = boto3.client("cloudfront").create_distribution(DistributionConfig={
    "CallerReference": str(uuid.uuid4()),
    "Origins": {"Quantity": 1, "Items": [origin]},
    "DefaultCacheBehavior": {"TargetOriginId": "site", "ViewerProtocolPolicy": "allow-all"},
    "Comment": "make run",
    "Enabled": True,
})
print(created["Distribution"]["Id"])
PY
)
config="$work/conveyor.toml"
cp events/conveyor.dev.toml "$config"
printf '\n[[site]]\nname = "frontend"\nbucket = "acme-frontend"\ndistribution = "%s"\n' "$distribution" >> "$config"

# The team's Slack channel: a local stand-in that behaves like Slack's incoming webhooks
# (one message a second, 429 with Retry-After above that). Its URL goes into the emulator's
# Secrets Manager as conveyor/slack-team, where alert-dispatch reads it, exactly as in AWS.
slack_log="$work/slack.jsonl"
"$root/target/debug/slack-standin" > "$slack_log" & pids+=($!)
for _ in $(seq 1 50); do [ -s "$slack_log" ] && break; sleep 0.1; done
"$root/.venv/moto/bin/python" - "$(head -1 "$slack_log")" <<'PY'
import sys
import boto3
secrets = boto3.client("secretsmanager")
try:
    secrets.create_secret(Name="conveyor/slack-team", SecretString=sys.argv[1])
except secrets.exceptions.ResourceExistsException:
    secrets.put_secret_value(SecretId="conveyor/slack-team", SecretString=sys.argv[1])
PY
# The shop's health endpoint, which the check below watches (a file served over HTTP).
mkdir -p "$work/shop"
echo '{"status": "UP"}' > "$work/shop/health.json"
shop_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$shop_port" --bind 127.0.0.1 --directory "$work/shop" >/dev/null 2>&1 & pids+=($!)
cat >> "$config" <<TOML

[[channel]]
name = "team"
type = "slack"
secret = "conveyor/slack-team"

[[check]]
name = "shop-api"
url = "http://127.0.0.1:$shop_port/health.json"
conditions = ["[STATUS] == 200", "[BODY].status == UP", "[RESPONSE_TIME] < 1000"]
failure_threshold = 2
success_threshold = 2
repeat = "4h"
impact = "Customers cannot load the shop"
action = "Restart the shop API (systemctl restart shop) and read its log"
channels = ["team"]
TOML

"$conveyor" dev --listen "127.0.0.1:$port" --config "$config" &
server=$!
cleanup() {
  for pid in "${pids[@]}" "$server"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('$base/api/v1/builds', timeout=1)" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "the dev server did not start" >&2; exit 1; }
  sleep 0.2
done

show() {
  python3 -c "import json, sys, urllib.request; print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1])), indent=2))" "$base$1"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
echo
echo "== four agents play four EC2 instances (tagged app=shop-demo in the emulator)"
mapfile -t instances < <($fleet_py instances 4 shop-demo)
health_port=$(free_port)
$fleet_py health "$health_port" "$work/apps" & pids+=($!)
"$conveyor" token create --environment production --config "$config" > "$work/agent-token"
for id in "${instances[@]}"; do
  RUST_LOG=warn "$agent" --server "$base" --token-file "$work/agent-token" --environment production \
    --instance-id "$id" --app-dir "$work/apps/$id" --health-url "http://127.0.0.1:$health_port/$id/health" &
  pids+=($!)
  echo "  agent for $id"
done
good_sha=3f4a9c2e7b1d5a6c8e0f2b4d6a8c0e1f3a5b7c9d
broken_sha=9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d
$fleet_py artifact "$work/good.tar.gz" ok
$fleet_py artifact "$work/broken.tar.gz" broken
echo "CI uploads the build's artifact:"
"$conveyor" artifact push "$work/good.tar.gz" --sha "$good_sha" --repository acme/shop --environment production --config "$config"

echo
echo "== replaying sample GitHub deliveries (signed with this run's secret)"
for sample in ping/hook-created push/main workflow_run/ci-success-main check_suite/success-main \
              workflow_run/ci-failure-main workflow_run/ci-success-develop; do
  "$conveyor" replay "events/github/$sample.json" --url "$base/webhooks/github"
done
echo
echo "== the canary gets the release first, then half, then the rest"
# What a CI job does after its push: wait for the deployment (exit 0 only on success).
"$conveyor" wait --environment production --sha "$good_sha" --timeout 2m
"$conveyor" status --environment production

echo
echo "== a broken release: its canary fails health and the fleet goes back"
"$conveyor" artifact push "$work/broken.tar.gz" --sha "$broken_sha" --repository acme/shop --environment production --config "$config"
python3 -c "import json; d = json.load(open('events/github/workflow_run/ci-success-main.json')); d['workflow_run']['head_sha'] = '$broken_sha'; d['workflow_run']['id'] += 100; print(json.dumps(d))" > "$work/broken-ci.json"
mkdir -p "$work/github/workflow_run" && mv "$work/broken-ci.json" "$work/github/workflow_run/"
"$conveyor" replay "$work/github/workflow_run/broken-ci.json" --url "$base/webhooks/github"
code=0
"$conveyor" wait --environment production --sha "$broken_sha" --timeout 2m || code=$?
[ "$code" = 1 ] || { echo "conveyor wait exited $code; the broken release should have rolled back (1)" >&2; exit 1; }
echo "(conveyor wait exited 1: a CI job waiting on this deploy fails)"
for _ in $(seq 1 60); do
  back=0
  for id in "${instances[@]}"; do [ "$(readlink "$work/apps/$id/current")" = "releases/${good_sha:0:12}" ] && back=$((back + 1)); done
  [ "$back" = 4 ] && break
  sleep 0.5
done
"$conveyor" status --environment production
echo "the alert the rollback raised:"
"$conveyor" alerts --limit 1
echo "staging (no instances, no artifact):"
"$conveyor" status --environment staging

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
token=$("$conveyor" token create --provider aws-images --config "$config")
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
echo "== publishing a site: a first publish, the same build again, then one file changed"
site="$work/site"
mkdir -p "$site/assets" "$site/docs"
echo '<h1>Acme shop</h1>' > "$site/index.html"
echo '<h1>Docs</h1>' > "$site/docs/index.html"
echo 'console.log("shop")' > "$site/assets/app.3f2a9c.js"
echo 'body { margin: 0 }' > "$site/style.css"
publish() { "$conveyor" publish "$site" --site frontend --config "$config" "$@"; }
publish
publish
echo '<h1>Docs, revised</h1>' > "$site/docs/index.html"
echo "(cdn-invalidate submits the invalidation and follows it; --wait returns when it completed)"
publish --wait --timeout 60s

echo
echo "== a health check goes down and comes back (checks run every tick; 2 failures to go down)"
slack_says() {
  for _ in $(seq 1 150); do grep -q "$1" "$slack_log" && return 0; sleep 0.2; done
  echo "the Slack stand-in never received a message saying '$1'" >&2
  return 1
}
echo '{"status": "DOWN"}' > "$work/shop/health.json"
slack_says "Check shop-api is down"
echo '{"status": "UP"}' > "$work/shop/health.json"
slack_says "Check shop-api back up"
echo "conveyor checks:"
"$conveyor" checks
echo "what the team's Slack channel received (Block Kit, with this fallback text):"
python3 - "$slack_log" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()[1:]
for line in lines:
    print("  " + json.loads(line)["text"].splitlines()[0])
down = next(json.loads(l)["text"] for l in lines if "shop-api is down" in l)
print("the check's down message in full:")
print("    " + down.strip().replace("\n", "\n    "))
PY

echo
echo "== GET /api/v1/builds"
show /api/v1/builds
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
