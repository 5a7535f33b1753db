#!/usr/bin/env bash
# Envoy ext_authz Check against ValidateToken, in the same run and with the same load generator
# (h2load, nghttp2-client), on a release authd: the embedded PostgreSQL in a throw-away directory,
# loopback only. Both calls carry the same service key and the same user's access token (so both are
# the verified-token cache's hit path); Check also asks for ROLE_USER. Each request body is a gRPC
# frame encoded here by python3; grpcurl checks the answer first (Check: status 0, ValidateToken:
# valid), since h2load only counts HTTP statuses. The rounds alternate (validate, check, validate,
# check, ...) so that both see the same machine.
#
# Usage: scripts/bench-ext-authz.sh [path/to/authd] [seconds per round] [rounds] [clients] [streams per client]
#        (defaults: target/release/authd 10 3 8 16)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/authd}"
secs="${2:-10}"; rounds="${3:-3}"; clients="${4:-8}"; streams="${5:-16}"
command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }
grpcurl="$("$root/scripts/install-grpcurl.sh")"
work="$(mktemp -d /tmp/authd-bench-ext.XXXXXX)"
data="$(mktemp -d /tmp/authd-bench-ext-data.XXXXXX)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work" "$data"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
call() { "$grpcurl" -plaintext "$@"; }

addr="127.0.0.1:$(free_port)"
admin_email="admin@bench.example"
admin_password="Bench-Ext-Authz-$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
env -u DATABASE_URL AUTHD_DATA_DIR="$data" AUTHD_LISTEN="$addr" AUTHD_BCRYPT_COST=4 AUTHD_RATE_LIMIT_PER_IP=0 \
  AUTHD_LOG=warn AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  "$bin" serve >"$work/authd.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
  call -d '{"service":""}' "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break
  sleep 0.2
done
admin="$(call -d "{\"email\":\"$admin_email\",\"password\":\"$admin_password\"}" "$addr" authd.v1.AuthService/Login | json 'd["accessToken"]')"
key="$(call -H "authorization: Bearer $admin" -d '{"name":"bench"}' "$addr" authd.v1.AuthService/CreateServiceKey | json 'd["key"]')"
email="bench-$RANDOM@example.com"; password="Correct-Horse-Battery-Staple-42"
call -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$addr" authd.v1.AuthService/Register >/dev/null
token="$(call -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$addr" authd.v1.AuthService/Login | json 'd["accessToken"]')"

python3 - "$token" "$work" <<'PY'
import sys
token, work = sys.argv[1], sys.argv[2]
def varint(n):
    out = b""
    while True:
        b = n & 0x7F; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
def field(num, payload):
    if isinstance(payload, str): payload = payload.encode()
    return varint(num << 3 | 2) + varint(len(payload)) + payload
def frame(msg):
    return b"\x00" + len(msg).to_bytes(4, "big") + msg
validate = field(1, token)  # ValidateTokenRequest.access_token
header = field(1, "authorization") + field(2, "Bearer " + token)  # map entry
http = field(2, "GET") + field(3, header) + field(4, "/api")  # HttpRequest: method, headers, path
request = field(2, http)  # AttributeContext.Request.http
role = field(1, "authd_required_role") + field(2, "ROLE_USER")
check = field(1, field(4, request) + field(10, role))  # CheckRequest.attributes{request, context_extensions}
open(f"{work}/validate.bin", "wb").write(frame(validate))
open(f"{work}/check.bin", "wb").write(frame(check))
PY
# Pre-flight: the same bodies, decoded by grpcurl from the binary frames' JSON equivalents.
v="$(call -H "x-api-key: $key" -d "{\"access_token\":\"$token\"}" "$addr" authd.v1.AuthService/ValidateToken)"
[ "$(echo "$v" | json 'd.get("valid", False)')" = True ] || { echo "ValidateToken pre-flight: $v" >&2; exit 1; }
c="$(call -H "x-api-key: $key" -d "{\"attributes\":{\"request\":{\"http\":{\"method\":\"GET\",\"path\":\"/api\",\"headers\":{\"authorization\":\"Bearer $token\"}}},\"contextExtensions\":{\"authd_required_role\":\"ROLE_USER\"}}}" \
  "$addr" envoy.service.auth.v3.Authorization/Check)"
echo "$c" | grep -q '"okResponse"' || { echo "Check pre-flight: $c" >&2; exit 1; }
# The same with h2load's exact bytes: one request each, the gRPC status read from the trailers.
for m in validate:authd.v1.AuthService/ValidateToken check:envoy.service.auth.v3.Authorization/Check; do
  out="$(h2load -n 1 -c 1 -H 'content-type: application/grpc' -H 'te: trailers' -H "x-api-key: $key" \
    -d "$work/${m%%:*}.bin" "http://$addr/${m#*:}" 2>&1)"
  echo "$out" | grep -q "1 succeeded" || { echo "h2load pre-flight ${m%%:*}: $out" >&2; exit 1; }
done

echo "rounds of ${secs}s, h2load -c $clients -m $streams, one h2load thread; authd on the same 2 cores"
for r in $(seq 1 "$rounds"); do
  for m in validate:authd.v1.AuthService/ValidateToken check:envoy.service.auth.v3.Authorization/Check; do
    out="$(h2load -D "$secs" --warm-up-time=1 -c "$clients" -m "$streams" -t 1 \
      -H 'content-type: application/grpc' -H 'te: trailers' -H "x-api-key: $key" \
      -d "$work/${m%%:*}.bin" "http://$addr/${m#*:}" 2>&1)"
    rps="$(echo "$out" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')"
    ok="$(echo "$out" | sed -n 's/.* \([0-9]*\) succeeded, \([0-9]*\) failed, \([0-9]*\) errored.*/\1 ok, \2 failed, \3 errored/p')"
    lat="$(echo "$out" | sed -n 's/^time for request: *\([^ ]*\) *\([^ ]*\) *\([^ ]*\).*/min \1 max \2 mean \3/p')"
    echo "round $r ${m%%:*}: $rps req/s ($ok; $lat)"
  done
done
grep -E "ERROR|WARN" "$work/authd.log" | head -5 || true
