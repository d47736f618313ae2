#!/usr/bin/env bash
# Contract checks against a live server built from this tree:
#   1. a Python client generated from openapi/openapi.yaml by openapi-python-client, which must read every schema
#      and endpoint, runs enqueue -> get -> list and a CWOM round trip;
#   2. schemathesis fuzzes every operation from the same file: no 5xx, and every response matches the spec.
# Needs python3 (with venv) and the PostgreSQL server binaries (the service runs zero-config) or DATABASE_URL.
# Bounded: a fixed number of examples per operation, and a timeout on every step.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
port=${JCT_CONTRACT_PORT:-18765}
base="http://127.0.0.1:${port}"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -INT "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "--- python tools (pinned)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
    "openapi-python-client==0.29.1" "schemathesis==4.32.5"

echo "--- generate the client from openapi/openapi.yaml"
(cd "$work" && timeout 300 "$work/venv/bin/openapi-python-client" generate \
    --path "$OLDPWD/openapi/openapi.yaml" --output-path "$work/client" >"$work/generate.log" 2>&1)
# The generator leaves out what it cannot read, with a warning and success: a schema or endpoint left out fails here.
if grep -E "Unable to process schema|Endpoint will not be generated|Cannot parse response" "$work/generate.log"; then
    echo "openapi-python-client could not read all of openapi/openapi.yaml:"; cat "$work/generate.log"; exit 1
fi
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$work/client"

echo "--- start jct up on ${base}"
cargo build --quiet -p jct-cli
JCT_BIND="127.0.0.1:${port}" JCT_ALLOWED_REPO_PREFIXES="contractorg/,testorg/" JCT_DATA_DIR="$work/var" \
    JCT_TRACE_ROOT="$work/var/traces" ./target/debug/jct up >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
    if curl -fsS "${base}/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/server.log"; exit 1; fi
    sleep 0.5
done
curl -fsS "${base}/healthz"; echo

echo "--- generated client: enqueue -> get -> list, CWOM"
timeout 120 "$work/venv/bin/python" tests/contract/client_e2e.py "$base"

echo "--- schemathesis: no 5xx, responses match the spec"
(cd "$work" && timeout 900 "$work/venv/bin/schemathesis" run "$OLDPWD/openapi/openapi.yaml" \
    --url "$base" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${JCT_CONTRACT_EXAMPLES:-60}" \
    --seed 20261124 \
    --suppress-health-check all) || { echo "server log:"; tail -50 "$work/server.log"; exit 1; }
echo "contract checks passed"
