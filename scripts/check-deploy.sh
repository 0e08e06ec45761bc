#!/usr/bin/env bash
# Checks what deploy/ ships for operators:
#  - the alert rules parse (promtool check rules) and pass their unit tests
#    (promtool test rules);
#  - the Grafana dashboard is valid JSON, uses the ${DS_PROMETHEUS} data
#    source, and every query in it is valid PromQL;
#  - the Kubernetes manifests are valid against the Kubernetes schemas
#    (kubernetes-validate --strict, offline: its schemas are in the package;
#    KEDA's and the Prometheus operator's kinds have none there and are only
#    reported).
# Needs promtool (Debian package `prometheus`), python3 and kubernetes-validate
# (scripts/services.sh test-tools installs both).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

RULES=deploy/prometheus/tether-rules.yml
TESTS=deploy/prometheus/tether-rules.test.yml
DASHBOARD=deploy/grafana/tether-dashboard.json

die() { echo "check-deploy.sh: ERROR: $*" >&2; exit 1; }
say() { echo "check-deploy.sh: $*"; }

command -v promtool >/dev/null 2>&1 \
  || die "promtool not found; install prometheus: apt-get install -y --no-install-recommends prometheus"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

say "promtool check rules $RULES"
promtool check rules "$RULES" || die "$RULES: promtool check rules failed"

say "promtool test rules $TESTS"
promtool test rules "$TESTS" || die "$TESTS: promtool test rules failed"

say "validating $DASHBOARD"
python3 -m json.tool "$DASHBOARD" >/dev/null || die "$DASHBOARD is not valid JSON"

# Every panel query, as a recording rule, through promtool's PromQL parser
# (JSON is YAML, so no PyYAML needed). Grafana's variables get sample values.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 - "$DASHBOARD" "$TMP/dashboard-queries.json" <<'PY' || die "$DASHBOARD: bad dashboard"
import json, sys

dash = json.load(open(sys.argv[1]))
errors = []
if not 35 <= dash.get("schemaVersion", 0) <= 41:
    errors.append(f"schemaVersion {dash.get('schemaVersion')} is not ~39")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource" \
        or variables["DS_PROMETHEUS"].get("query") != "prometheus":
    errors.append("no datasource variable DS_PROMETHEUS of type prometheus")

def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))

rules, ids = [], set()
for p in panels(dash.get("panels", [])):
    if p["id"] in ids:
        errors.append(f"duplicate panel id {p['id']}")
    ids.add(p["id"])
    if p.get("type") == "row":
        continue
    ds = p.get("datasource", {})
    if ds.get("uid") != "${DS_PROMETHEUS}":
        errors.append(f"panel {p.get('title')!r}: datasource is not ${{DS_PROMETHEUS}}")
    if not p.get("targets"):
        errors.append(f"panel {p.get('title')!r} has no query")
    for t in p.get("targets", []):
        expr = (t["expr"].replace("$__rate_interval", "5m")
                .replace("$__interval", "1m").replace("$provider", ".*"))
        rules.append({"record": f"dashboard:query_{len(rules)}", "expr": expr})
for e in errors:
    print(f"  {e}", file=sys.stderr)
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"  {len(ids)} panels, {len(rules)} queries")
sys.exit(1 if errors else 0)
PY
promtool check rules "$TMP/dashboard-queries.json" >/dev/null \
  || { promtool check rules "$TMP/dashboard-queries.json" || true; die "$DASHBOARD: a query is not valid PromQL"; }

VALIDATE="$ROOT/.services/venv/bin/kubernetes-validate"
[[ -x $VALIDATE ]] || VALIDATE=$(command -v kubernetes-validate) \
  || die "kubernetes-validate not found; run scripts/services.sh test-tools (pip install kubernetes-validate)"
say "kubernetes-validate --strict deploy/kubernetes/*.yaml"
"$VALIDATE" --strict --quiet deploy/kubernetes/*.yaml || die "a Kubernetes manifest does not match its schema"

say "OK"
