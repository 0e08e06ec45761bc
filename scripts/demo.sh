#!/usr/bin/env bash
# End-to-end demo (`make demo`): a fresh database and RabbitMQ vhost, one
# scheduler and two workers, a seeded bucket on each emulator (moto for S3,
# fake-gcs-server for GCS, Azurite for Azure Blob), then a link and a copy
# import per provider submitted with tetherctl and followed to their final
# state. Fails unless every import succeeds. Then tether-api: one image of
# each provider (and a copy) is signed direct where it can be and proxied
# always, and each URL is fetched with curl; URLs are printed with their
# secrets cut.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"

SVC=.services
BIN=${TETHER_BIN_DIR:-target/debug}
API=$TETHER_TEST_RABBITMQ_API/api
for b in tether-scheduler tether-worker tetherctl tether-api; do
  [[ -x $BIN/$b ]] || { echo "demo: $BIN/$b is missing: run 'make build' first" >&2; exit 1; }
done

psql -X -q -v ON_ERROR_STOP=1 "$TETHER_TEST_DATABASE_URL" \
  -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS tether_demo WITH (FORCE)' -c 'CREATE DATABASE tether_demo'
curl -fsS -o /dev/null -X DELETE "$API/vhosts/tether-demo" 2>/dev/null || true  # 404 on first run
curl -fsS -X PUT "$API/vhosts/tether-demo"
curl -fsS -X PUT -H 'content-type: application/json' \
  -d '{"configure":".*","write":".*","read":".*"}' "$API/permissions/tether-demo/guest"

export TETHER_DATABASE_URL=postgres://tether:tether@127.0.0.1:5432/tether_demo
export TETHER_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/tether-demo
export TETHER_DESTINATION="file://$PWD/$SVC/demo-destination"
# Seals the Azure SAS tokens; scheduler and workers must share it. A fixed key
# is fine for the demo: in production it comes from a secret, never from git.
export TETHER_SECRETS_KEY=Bfz4HnUv2eH5RYVJkoV1RJXS5L9tqxF0MVih0doBIR0=
rm -rf "$SVC/demo-destination" && mkdir -p "$SVC/demo-destination"

PIDS=()
start() {  # start NAME METRICS_PORT PROGRAM
  TETHER_METRICS_ADDR=127.0.0.1:$2 "$BIN/$3" </dev/null >"$SVC/demo-$1.log" 2>&1 &
  PIDS+=($!)
}
stop_all() {  # SIGTERM lets them hand back work; KILL whatever is left after 10 s
  kill "${PIDS[@]}" 2>/dev/null || true
  for _ in {1..10}; do kill -0 "${PIDS[@]}" 2>/dev/null || return 0; sleep 1; done
  kill -9 "${PIDS[@]}" 2>/dev/null || true
}
trap stop_all EXIT
# The extra gcs-own import runs on Tether's own Google identity (no
# impersonated account), so that tether-api signs its URLs with its own key.
TETHER_GCS_ALLOW_OWN_IDENTITY=true start scheduler 9591 tether-scheduler
start worker-1 9592 tether-worker
start worker-2 9593 tether-worker

echo "demo: waiting for the scheduler to apply the migrations"
for ((i = 0; ; i++)); do
  psql -X -q "$TETHER_DATABASE_URL" -c 'select 1 from tether.import_status limit 1' >/dev/null 2>&1 && break
  if ((i >= 60)) || ! kill -0 "${PIDS[0]}" 2>/dev/null; then
    echo "demo: no schema after ${i}s; scheduler log:" >&2; tail -20 "$SVC/demo-scheduler.log" >&2; exit 1
  fi
  sleep 1
done

PY=$SVC/venv/bin/python
# NAME = PROVIDER-MODE; the dataset is demo-NAME. One bucket per provider,
# seeded by its link request; the copy request reads the same objects.
IMPORTS=(s3-link s3-copy gcs-link gcs-copy azure-link azure-copy)
declare -A ID STATE
for name in "${IMPORTS[@]}"; do
  provider=${name%-*} mode=${name#*-}
  upload=(); [[ $mode == copy ]] && upload=(--no-upload)
  $PY scripts/demo-seed.py --provider "$provider" --bucket tether-demo --mode "$mode" "${upload[@]}" \
    --request-out "$SVC/demo-$name.json" | sed '/^wrote /d'
  ID[$name]=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["import_id"])' "$SVC/demo-$name.json")
  "$BIN/tetherctl" submit "$SVC/demo-$name.json" >/dev/null
done
echo "demo: submitted ${#IMPORTS[@]} imports (${IMPORTS[*]}); waiting for them"

# Prints the final state of import $1, or "timeout" after 120 s.
wait_final() {
  local state
  for _ in {1..120}; do
    state=$("$BIN/tetherctl" status "$1" --json 2>/dev/null |
      $PY -c 'import json, sys; print(json.load(sys.stdin)["state"])' 2>/dev/null) || state=""
    case $state in succeeded | partially_succeeded | failed | cancelled) echo "$state"; return ;; esac
    sleep 1
  done
  echo timeout
}
# gcs-own: the gcs-link request without its impersonated account.
$PY - "$SVC/demo-gcs-link.json" "$SVC/demo-gcs-own.json" <<'PYEOF'
import json, sys, uuid
request = json.load(open(sys.argv[1]))
request.update(import_id=str(uuid.uuid4()), dataset_id="demo-gcs-own")
del request["source"]["impersonate_service_account"]
json.dump(request, open(sys.argv[2], "w"))
PYEOF
ID[gcs-own]=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["import_id"])' "$SVC/demo-gcs-own.json")
"$BIN/tetherctl" submit "$SVC/demo-gcs-own.json" >/dev/null
IMPORTS+=(gcs-own)
for name in "${IMPORTS[@]}"; do STATE[$name]=$(wait_final "${ID[$name]}"); done

for name in "${IMPORTS[@]}"; do
  echo; echo "== $name import (${STATE[$name]})"; "$BIN/tetherctl" status "${ID[$name]}" || true
done
echo
psql -X "$TETHER_DATABASE_URL" -c "
  select dataset_id, source_url, storage, stored_url from (
    select *, row_number() over (partition by dataset_id order by source_url) as n from tether.images) i
  where n <= 2 order by dataset_id, source_url"

echo "copies on disk in $TETHER_DESTINATION: $(find "$SVC/demo-destination" -type f | wc -l) files, $(du -sh "$SVC/demo-destination" | cut -f1)"

# --- tether-api -------------------------------------------------------------
# A key of the demo's own for signing gs:// URLs (Tether's own identity).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$SVC/demo-gcs-key.pem" 2>/dev/null
$PY - "$SVC/demo-gcs-key.pem" "$SVC/demo-gcs-key.json" <<'PYEOF'
import json, sys
json.dump({"type": "service_account", "client_email": "tether-demo@tether-demo.iam.gserviceaccount.com",
           "private_key": open(sys.argv[1]).read(), "token_uri": "http://127.0.0.1:1/token"}, open(sys.argv[2], "w"))
PYEOF
API_PORT=${DEMO_API_PORT:-8480}
export TETHER_API_ADDR=127.0.0.1:$API_PORT TETHER_API_PUBLIC_URL=http://127.0.0.1:$API_PORT
export TETHER_API_TOKENS="demo-token-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
export TETHER_API_ALLOWED_ORIGINS=http://localhost:3000
GOOGLE_APPLICATION_CREDENTIALS=$SVC/demo-gcs-key.json start api 9594 tether-api
for ((i = 0; ; i++)); do
  curl -fsS -o /dev/null "$TETHER_API_PUBLIC_URL/v1/openapi.json" 2>/dev/null && break
  if ((i >= 30)); then echo "demo: tether-api did not start; its log:" >&2; tail -20 "$SVC/demo-api.log" >&2; exit 1; fi
  sleep 1
done
echo; echo "== tether-api on $TETHER_API_PUBLIC_URL (URLs below with their secrets cut)"
api_failed=""
# sign NAME DELIVERY: signs the first image of dataset demo-NAME and fetches it.
sign() {
  local id answer
  id=$(psql -X -tA "$TETHER_DATABASE_URL" -c "select image_id from tether.images where dataset_id = 'demo-$1' order by source_url limit 1")
  answer=$(curl -fsS -X POST -H "Authorization: Bearer $TETHER_API_TOKENS" -H 'Content-Type: application/json' \
    -d "{\"image_ids\": [\"$id\"], \"delivery\": \"$2\", \"expires_in_seconds\": 600}" \
    "$TETHER_API_PUBLIC_URL/v1/workspaces/demo/signed-urls")
  $PY - "$1" "$2" "$answer" <<'PYEOF'
import json, subprocess, sys, urllib.parse
name, delivery, answer = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for error in answer["errors"]:
    print(f"{name:<10} {delivery:<6} {error['code']}: {error['message']}")
    sys.exit(0 if error["code"] == "not_signable" else 1)
entry = answer["urls"][0]
url = urllib.parse.urlsplit(entry["url"])
shown = "&".join(p.split("=")[0] + "=…" for p in url.query.split("&"))
# fake-gcs-server serves path-style URLs only to the Host of GCS (it checks no signature).
host = ["-H", "Host: storage.googleapis.com"] if delivery == "direct" and name.startswith("gcs") else []
got = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} bytes %{content_type}", *host, entry["url"]],
                     capture_output=True, text=True).stdout
print(f"{name:<10} {delivery:<6} {url.scheme}://{url.netloc}{url.path}?{shown}\n{'':<17} until {entry['expires_at']}: {got}")
sys.exit(0 if got.startswith("200") else 1)
PYEOF
}
for name in s3-link gcs-own azure-link s3-copy; do
  for delivery in direct proxy; do sign "$name" "$delivery" || api_failed+=" $name/$delivery"; done
done

failed="$api_failed"
for name in "${IMPORTS[@]}"; do [[ ${STATE[$name]} == succeeded ]] || failed+=" $name=${STATE[$name]}"; done
if [[ -n $failed ]]; then
  echo "demo: FAILED:$failed (logs: $SVC/demo-*.log)" >&2
  exit 1
fi
echo "demo: OK (${#IMPORTS[@]} imports succeeded: link and copy from S3, GCS and Azure Blob; tether-api signed and served each)"
