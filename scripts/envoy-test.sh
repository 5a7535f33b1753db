#!/usr/bin/env bash
# A real Envoy 1.40 in front of a real authd, with the configs of deploy/envoy/ templated for loopback:
#
#  - ext-authz.yaml: a valid token passes and the upstream sees x-authd-* (client-sent ones replaced);
#    no, tampered, expired and revoked tokens get 401; /admin refuses a ROLE_USER with 403.
#  - jwt-authn.yaml (jwt_authn + ext_authz): the same, and after RotateSigningKey and the publish delay
#    jwt_authn accepts tokens signed by the new key (JWKS cache_duration 3 s, AUTHD_KEY_PUBLISH_DELAY 10s).
#  - grpc-web.yaml: a gRPC-Web call and a CORS preflight through Envoy.
#
# authd runs with the embedded PostgreSQL in a throw-away directory; authd, Envoy and the upstream (a
# python3 http.server that echoes the request headers it got as JSON) listen on 127.0.0.1 only.
# Tokens live 20 s (AUTHD_ACCESS_TOKEN_TTL), so that one can expire during the run.
#
# Usage: scripts/envoy-test.sh [path/to/authd]   (default: target/release/authd)
set -euo pipefail
# `producer | grep -q` fails under pipefail when grep exits at its first match and the producer
# then dies of SIGPIPE; grep_all reads the whole input.
grep_all() { grep "$@" >/dev/null; }

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/authd}"
grpcurl="$("$root/scripts/install-grpcurl.sh")"
envoy="$("$root/scripts/install-envoy.sh")"
envoy_version="$("$envoy" --version)"
[[ "$envoy_version" == */1.40.0/* ]] || { echo "not Envoy 1.40.0: $envoy_version" >&2; exit 1; }

work="$(mktemp -d /tmp/authd-envoy.XXXXXX)"
# Apart from $work (0700): the embedded PostgreSQL runs as `postgres` and must reach its directory.
data="$(mktemp -d /tmp/authd-envoy-data.XXXXXX)"
pids=()
fail() {
  echo "ENVOY TEST FAIL: $*" >&2
  for f in "$work"/*.log; do
    [ -f "$f" ] || continue
    echo "--- $(basename "$f") ---" >&2
    tail -n 30 "$f" >&2 || true
  done
  exit 1
}
cleanup() {
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work" "$data"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
step() { echo "envoy-test: $*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
call() { "$grpcurl" -plaintext "$@"; }

grpc_port="$(free_port)"; http_port="$(free_port)"; up_port="$(free_port)"
addr="127.0.0.1:$grpc_port"
admin_email="admin@example.com"
admin_password="Envoy-Test-Admin-Passphrase-7731"
user_password="Correct-Horse-Battery-Staple-42"
publish_delay=10
token_ttl=20

step "authd on $addr (HTTP $http_port), AUTHD_KEY_PUBLISH_DELAY=${publish_delay}s, AUTHD_ACCESS_TOKEN_TTL=${token_ttl}s"
env -u DATABASE_URL \
  AUTHD_DATA_DIR="$data" AUTHD_LISTEN="$addr" AUTHD_HTTP_LISTEN="127.0.0.1:$http_port" \
  AUTHD_BCRYPT_COST=10 AUTHD_KEY_PUBLISH_DELAY="${publish_delay}s" AUTHD_ACCESS_TOKEN_TTL="${token_ttl}s" \
  AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  "$bin" serve >"$work/authd.log" 2>&1 &
authd_pid=$!
pids+=("$authd_pid")
for _ in $(seq 1 150); do
  if call -d '{"service":""}' "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep_all '"SERVING"'; then
    break
  fi
  kill -0 "$authd_pid" 2>/dev/null || fail "authd exited during start-up"
  sleep 0.2
done
call -d '{"service":""}' "$addr" grpc.health.v1.Health/Check | grep_all '"SERVING"' || fail "authd never SERVING"

step "reflection lists envoy.service.auth.v3.Authorization"
call "$addr" list | grep_all -x "envoy.service.auth.v3.Authorization" || fail "not in grpcurl list: $(call "$addr" list)"
call "$addr" describe envoy.service.auth.v3.Authorization | grep_all "rpc Check" || fail "describe Check"

step "admin, service key, users"
login() { call -d "{\"email\":\"$1\",\"password\":\"$2\"}" "$addr" authd.v1.AuthService/Login; }
admin_access="$(login "$admin_email" "$admin_password" | json 'd["accessToken"]')" || fail "admin Login"
key="$(call -H "authorization: Bearer $admin_access" -d '{"name":"envoy"}' \
  "$addr" authd.v1.AuthService/CreateServiceKey | json 'd["key"]')" || fail "CreateServiceKey"
email="envoy-$RANDOM@example.com"
user_id="$(call -d "{\"email\":\"$email\",\"password\":\"$user_password\"}" "$addr" authd.v1.AuthService/Register \
  | json 'd["user"]["id"]')" || fail "Register"
user_login() { login "$email" "$user_password"; }
pair="$(user_login)"
access="$(echo "$pair" | json 'd["accessToken"]')"
session="$(echo "$pair" | json 'd["sessionId"]')"
# This token expires during the run (checked near the end).
early_access="$access"
early_time="$(date +%s)"

step "upstream echo server on 127.0.0.1:$up_port"
cat >"$work/echo.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): self.headers.get_all(k) for k in set(self.headers.keys())}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
PY
python3 "$work/echo.py" "$up_port" >"$work/upstream.log" 2>&1 &
pids+=("$!")

# The shipped configs with the loopback addresses, the ports of this run and the service key. Every
# replaced string must occur in the file, so the template cannot drift from the configs silently.
render() { # render NAME LISTEN_PORT ADMIN_PORT
  python3 - "$root/deploy/envoy/$1.yaml" "$work/$1.yaml" <<PY
import sys
src = open(sys.argv[1]).read()
subs = [
    ("address: 0.0.0.0, port_value: 8080", "address: 127.0.0.1, port_value: $2"),
    ("address: 127.0.0.1, port_value: 9901", "address: 127.0.0.1, port_value: $3"),
    ("address: authd, port_value: 50051", "address: 127.0.0.1, port_value: $grpc_port"),
    ("address: authd, port_value: 9090", "address: 127.0.0.1, port_value: $http_port"),
    ("uri: http://authd:9090/", "uri: http://127.0.0.1:$http_port/"),
    ("address: upstream, port_value: 8000", "address: 127.0.0.1, port_value: $up_port"),
    ("value: REPLACE_WITH_AUTHD_SERVICE_KEY", "value: $key"),
    ("cache_duration: 300s", "cache_duration: 3s"),
]
for old, new in subs:
    if old in src:
        src = src.replace(old, new)
    elif not old.startswith(("address: authd, port_value: 9090", "uri:", "address: upstream", "value: REPLACE", "cache_duration")):
        sys.exit(f"{sys.argv[1]}: template string not found: {old}")
for must in ("0.0.0.0", "address: authd", "address: upstream", "REPLACE_WITH"):
    if must in src:
        sys.exit(f"{sys.argv[1]}: '{must}' left after templating")
open(sys.argv[2], "w").write(src)
PY
}
start_envoy() { # start_envoy NAME LISTEN_PORT ADMIN_PORT
  render "$1" "$2" "$3" || fail "templating $1"
  "$envoy" -c "$work/$1.yaml" --disable-hot-restart --log-level warn >"$work/envoy-$1.log" 2>&1 &
  pids+=("$!")
}
ext_port="$(free_port)"; jwt_port="$(free_port)"; web_port="$(free_port)"
start_envoy ext-authz "$ext_port" "$(free_port)"
start_envoy jwt-authn "$jwt_port" "$(free_port)"
start_envoy grpc-web "$web_port" "$(free_port)"
grep -q "cache_duration: 3s" "$work/jwt-authn.yaml" || fail "jwt-authn.yaml: cache_duration not templated"
for port in "$ext_port" "$jwt_port" "$web_port"; do
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
  curl -s -o /dev/null "http://127.0.0.1:$port/" || fail "Envoy on $port never listened"
done

# get PORT PATH [TOKEN] [extra curl args...]: prints "<status>" and leaves body and headers in $work.
get() {
  local port="$1" path="$2" token="${3:-}"
  shift 3 || shift $#
  local auth=()
  [ -n "$token" ] && auth=(-H "authorization: Bearer $token")
  curl -s -o "$work/body" -D "$work/headers" -w '%{http_code}' "${auth[@]}" "$@" "http://127.0.0.1:$port$path"
}
expect() { # expect WANT WHAT PORT PATH [TOKEN] [curl args]
  local want="$1" what="$2"
  shift 2
  local got
  got="$(get "$@")"
  [ "$got" = "$want" ] || fail "$what: HTTP $got, want $want; body: $(head -c 300 "$work/body")"
}
tamper() { python3 -c "import sys; t=sys.argv[1]; i=len(t)-3; print(t[:i]+('A' if t[i]!='A' else 'B')+t[i+1:])" "$1"; }

for listener in "ext-authz:$ext_port" "jwt-authn:$jwt_port"; do
  name="${listener%%:*}"; port="${listener##*:}"
  step "$name: a valid token passes; the upstream sees x-authd-*; client-sent ones are replaced"
  expect 200 "$name valid token" "$port" /api "$access" -H "x-authd-role: ROLE_ADMIN" -H "x-authd-user-id: smuggled" -H "x-authd-amr: pwd,otp"
  seen="$(cat "$work/body")"
  [ "$(echo "$seen" | json 'd["x-authd-user-id"]')" = "['$user_id']" ] || fail "$name: upstream saw x-authd-user-id $seen"
  [ "$(echo "$seen" | json 'd["x-authd-session-id"]')" = "['$session']" ] || fail "$name: upstream saw x-authd-session-id $seen"
  [ "$(echo "$seen" | json 'd["x-authd-role"]')" = "['ROLE_USER']" ] || fail "$name: upstream saw x-authd-role $seen"
  [ "$(echo "$seen" | json 'd["x-authd-amr"]')" = "['pwd']" ] || fail "$name: upstream saw x-authd-amr $seen"

  step "$name: no token and a tampered token get 401"
  expect 401 "$name no token" "$port" /api ""
  expect 401 "$name tampered token" "$port" /api "$(tamper "$access")"

  step "$name: /admin refuses a ROLE_USER (403) and admits an admin"
  expect 403 "$name ROLE_USER on /admin" "$port" /admin "$access"
  expect 200 "$name admin on /admin" "$port" /admin "$admin_access"
  [ "$(json 'd["x-authd-role"]' <"$work/body")" = "['ROLE_ADMIN']" ] || fail "$name: admin role header"
done
step "ext-authz: 401 carries www-authenticate; /healthz is open"
get "$ext_port" /api "" >/dev/null
grep -qi '^www-authenticate: Bearer error="invalid_token"' "$work/headers" || fail "no www-authenticate: $(cat "$work/headers")"
expect 200 "ext-authz /healthz without a token" "$ext_port" /healthz "" -H "x-authd-role: ROLE_ADMIN"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); bad=[k for k in d if k.startswith('x-authd-') and d[k]!=['']]; sys.exit(1 if bad else 0)" \
  "$work/body" || fail "a client-sent x-authd-* header reached the upstream on /healthz: $(cat "$work/body")"

step "revoked token: Logout, then 401 within a second on both listeners (ext_authz)"
pair2="$(user_login)"
access2="$(echo "$pair2" | json 'd["accessToken"]')"
expect 200 "second session before logout" "$ext_port" /api "$access2"
expect 200 "second session before logout (jwt)" "$jwt_port" /api "$access2"
call -H "authorization: Bearer $access2" "$addr" authd.v1.AuthService/Logout >/dev/null || fail "Logout"
start_ms="$(date +%s%3N)"
until [ "$(get "$ext_port" /api "$access2")" = 401 ]; do
  [ $(( $(date +%s%3N) - start_ms )) -lt 1000 ] || fail "revoked token still allowed after 1 s"
  sleep 0.05
done
echo "envoy-test: revoked token refused after $(( $(date +%s%3N) - start_ms )) ms"
expect 401 "revoked token through jwt_authn + ext_authz" "$jwt_port" /api "$access2"

step "gRPC-Web through Envoy: GetJwks, and a CORS preflight"
printf '\x00\x00\x00\x00\x00' >"$work/empty.grpc"
curl -s -o "$work/body" -D "$work/headers" -X POST -H 'content-type: application/grpc-web+proto' \
  -H 'x-grpc-web: 1' --data-binary @"$work/empty.grpc" \
  "http://127.0.0.1:$web_port/authd.v1.AuthService/GetJwks" || fail "gRPC-Web call"
grep -qa "Ed25519" "$work/body" || fail "gRPC-Web GetJwks has no key: $(head -c 200 "$work/body" | od -c | head)"
grep -qa "grpc-status:0" "$work/body" || grep -qi '^grpc-status: 0' "$work/headers" || fail "gRPC-Web status not OK"
curl -s -o /dev/null -D "$work/headers" -X OPTIONS -H 'origin: https://app.example.com' \
  -H 'access-control-request-method: POST' -H 'access-control-request-headers: content-type,x-grpc-web' \
  "http://127.0.0.1:$web_port/authd.v1.AuthService/Login"
grep -qi '^access-control-allow-origin: https://app.example.com' "$work/headers" || fail "CORS preflight: $(cat "$work/headers")"

step "RotateSigningKey; after the publish delay the new key signs and jwt_authn accepts its tokens"
old_kid="$(python3 -c "import base64,json,sys; h=sys.argv[1].split('.')[0]; print(json.loads(base64.urlsafe_b64decode(h+'='*(-len(h)%4)))['kid'])" "$access")"
new_kid="$(call -H "authorization: Bearer $admin_access" "$addr" authd.v1.AuthService/RotateSigningKey | json 'd["kid"]')" \
  || fail "RotateSigningKey"
[ "$new_kid" != "$old_kid" ] || fail "rotation kept the kid"
# The delay, the replicas' 2 s key reload, and a second of margin.
sleep $(( publish_delay + 3 ))
kid=""
for _ in $(seq 1 20); do
  fresh="$(user_login | json 'd["accessToken"]')"
  kid="$(python3 -c "import base64,json,sys; h=sys.argv[1].split('.')[0]; print(json.loads(base64.urlsafe_b64decode(h+'='*(-len(h)%4)))['kid'])" "$fresh")"
  [ "$kid" = "$new_kid" ] && break
  sleep 0.5
done
[ "$kid" = "$new_kid" ] || fail "tokens are not signed by the new key $new_kid (got $kid)"
expect 200 "jwt_authn with a token of the new key" "$jwt_port" /api "$fresh"
expect 200 "ext_authz with a token of the new key" "$ext_port" /api "$fresh"

step "expired token (issued $(( $(date +%s) - early_time )) s ago, TTL ${token_ttl}s) gets 401"
# authd's leeway is 2 s, jwt_authn's clock_skew_seconds 5 s.
while [ $(( $(date +%s) - early_time )) -le $(( token_ttl + 6 )) ]; do sleep 1; done
expect 401 "expired token through ext_authz" "$ext_port" /api "$early_access"
expect 401 "expired token through jwt_authn" "$jwt_port" /api "$early_access"

step "authd counted the checks"
curl -s "http://127.0.0.1:$http_port/metrics" | grep_all 'authd_ext_authz_checks_total{result="allowed"} [1-9]' \
  || fail "authd_ext_authz_checks_total not counted"

echo "envoy-test: all checks passed"
