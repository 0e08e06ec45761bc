#!/usr/bin/env bash
# End-to-end demo (`make demo`): a fresh database and RabbitMQ vhost, one
# scheduler and two workers, a seeded moto bucket, then a link and a copy
# import submitted with tetherctl and followed to their final state.
# Fails unless both imports succeed.
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
$PY scripts/demo-seed.py --endpoint "$AWS_ENDPOINT_URL_S3" --bucket tether-demo --request-out "$SVC/demo-link.json"
$PY scripts/demo-seed.py --no-upload --bucket tether-demo --mode copy --request-out "$SVC/demo-copy.json"

import_id() { $PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["import_id"])' "$1"; }
LINK=$(import_id "$SVC/demo-link.json")
COPY=$(import_id "$SVC/demo-copy.json")
"$BIN/tetherctl" submit "$SVC/demo-link.json"
"$BIN/tetherctl" submit "$SVC/demo-copy.json"

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
LINK_STATE=$(wait_final "$LINK")
COPY_STATE=$(wait_final "$COPY")

echo; echo "== link import ($LINK_STATE)"; "$BIN/tetherctl" status "$LINK" || true
echo; echo "== copy import ($COPY_STATE) into $TETHER_DESTINATION"; "$BIN/tetherctl" status "$COPY" || true
echo
psql -X "$TETHER_DATABASE_URL" \
  -c "(select dataset_id, source_url, storage, stored_url from tether.images where storage = 'link' order by 2 limit 3)
      union all
      (select dataset_id, source_url, storage, stored_url from tether.images where storage = 'copy' order by 2 limit 3)"

echo; echo "copies on disk: $(find "$SVC/demo-destination" -type f | wc -l) files, $(du -sh "$SVC/demo-destination" | cut -f1)"
if [[ $LINK_STATE != succeeded || $COPY_STATE != succeeded ]]; then
  echo "demo: FAILED: link import ended '$LINK_STATE', copy import '$COPY_STATE' (logs: $SVC/demo-*.log)" >&2
  exit 1
fi
echo "demo: OK (link and copy imports succeeded)"
