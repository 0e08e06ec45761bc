#!/usr/bin/env bash
# End-to-end demo (`make demo`): a fresh database and RabbitMQ vhost, one
# scheduler and two workers, a seeded bucket on each emulator (moto for S3,
# fake-gcs-server for GCS, Azurite for Azure Blob), then a link and a copy
# import per provider submitted with tetherctl and followed to their final
# state. Fails unless every import succeeds.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"

SVC=.services
BIN=${TETHER_BIN_DIR:-target/debug}
API=$TETHER_TEST_RABBITMQ_API/api
for b in tether-scheduler tether-worker tetherctl; do
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
start scheduler 9591 tether-scheduler
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
failed=""
for name in "${IMPORTS[@]}"; do [[ ${STATE[$name]} == succeeded ]] || failed+=" $name=${STATE[$name]}"; done
if [[ -n $failed ]]; then
  echo "demo: FAILED:$failed (logs: $SVC/demo-*.log)" >&2
  exit 1
fi
echo "demo: OK (${#IMPORTS[@]} imports succeeded: link and copy from S3, GCS and Azure Blob)"
