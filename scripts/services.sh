#!/usr/bin/env bash
# Brings up the real services Tether's tests and demo need (PostgreSQL,
# RabbitMQ with its management API, moto for S3 + STS) on a developer/CI
# machine or a fresh Debian 12 box, idempotently; prints their env for make.
#   scripts/services.sh start|stop|env|bench-tools
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SVC="$ROOT/.services"
VENV="$SVC/venv"
MOTO_PORT=9560
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
  # The role needs a password: plain Debian demands one for TCP logins.
  if psql -X -w -tA "postgres://tether:tether@127.0.0.1:5432/tether" \
       -c "select rolcreatedb from pg_roles where rolname = current_user" 2>/dev/null | grep -qx t; then
    say "postgres: $did; role and database tether present"
    return
  fi
  pg_admin <<'SQL' || die "could not create role/database tether"
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tether') THEN
    ALTER ROLE tether LOGIN CREATEDB PASSWORD 'tether';
  ELSE
    CREATE ROLE tether LOGIN CREATEDB PASSWORD 'tether';
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

start_moto() {
  local did=""
  mkdir -p "$SVC"
  if [[ ! -x $VENV/bin/python ]]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"; apt_install python3-venv
      python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
  fi
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

stop_moto() {
  local pid
  pid=$(cat "$SVC/moto.pid" 2>/dev/null) || { say "moto: not started by this script"; return; }
  if grep -q moto_server "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"; say "moto: stopped (pid $pid)"
  else
    say "moto: pid $pid no longer running"
  fi
  rm -f "$SVC/moto.pid"
}

bench_tools() {
  if command -v rclone >/dev/null; then say "rclone: already installed"
  else apt_install rclone; say "rclone: installed"; fi
}

# promtool (Debian's prometheus package) checks the alert rules in make test.
test_tools() {
  if command -v promtool >/dev/null; then say "promtool: already installed"
  else apt_install --no-install-recommends prometheus; say "promtool: installed"; fi
}

# Test runs delete their virtual hosts and databases; this removes what a
# killed run left behind (RabbitMQ slows down under many idle quorum queues).
clean_tests() {
  local vhosts dbs
  vhosts=$(curl -fsS -u guest:guest "http://127.0.0.1:15672/api/vhosts?columns=name" |
    python3 -c 'import json,sys; print("\n".join(v["name"] for v in json.load(sys.stdin) if v["name"].startswith("tether-t-")))')
  for v in $vhosts; do curl -fsS -o /dev/null -u guest:guest -X DELETE "http://127.0.0.1:15672/api/vhosts/$v" || true; done
  dbs=$(psql -X -tA postgres://tether:tether@127.0.0.1:5432/tether -c "select datname from pg_database where datname like 'tether\_t\_%'")
  for d in $dbs; do psql -X -q postgres://tether:tether@127.0.0.1:5432/tether -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" || true; done
  say "test leftovers: removed $(wc -w <<<"$vhosts") virtual hosts, $(wc -w <<<"$dbs") databases"
}

print_env() {
  cat <<'EOF'
export TETHER_TEST_DATABASE_URL=postgres://tether:tether@127.0.0.1:5432/tether
export TETHER_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672
export TETHER_TEST_RABBITMQ_API=http://guest:guest@127.0.0.1:15672
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:9560
export AWS_ENDPOINT_URL_STS=http://127.0.0.1:9560
export AWS_ACCESS_KEY_ID=tether-test-key
export AWS_SECRET_ACCESS_KEY=tether-test-secret
export AWS_REGION=us-east-1
export TETHER_S3_FORCE_PATH_STYLE=true
EOF
}

case "${1:-}" in
  start) command -v curl >/dev/null || apt_install curl; start_postgres; start_rabbitmq; start_moto ;;
  stop) stop_moto ;;
  env) print_env ;;
  bench-tools) bench_tools ;;
  test-tools) test_tools ;;
  clean-tests) clean_tests ;;
  *) echo "usage: $0 start|stop|env|bench-tools|test-tools|clean-tests" >&2; exit 2 ;;
esac
