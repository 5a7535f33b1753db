#!/usr/bin/env bash
# Drives a release binary with grpcurl, as an engineer would by hand:
#   list, describe, Register -> Login -> GetMe -> ValidateToken, health, then SIGTERM.
# Uses the embedded PostgreSQL in a throw-away data directory and listens on loopback only.
#
# Usage: scripts/smoke.sh [path/to/authd]   (default: target/release/authd)
# With AUTHD_SMOKE_DATABASE_URL set, authd and its CLI use that database instead of the embedded one
# (scripts/pgbouncer-test.sh runs the smoke test through PgBouncer that way).
set -euo pipefail
# `producer | grep -q` fails under pipefail when grep exits at its first match and the producer
# then dies of SIGPIPE; grep_all reads the whole input.
grep_all() { grep "$@" >/dev/null; }

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/authd}"
grpcurl="$("$root/scripts/install-grpcurl.sh")"

data="$(mktemp -d /tmp/authd-smoke.XXXXXX)"
log="$(mktemp /tmp/authd-smoke-log.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
admin_email="admin@example.com"
admin_password="Smoke-Admin-Passphrase-9281"
user_password="Correct-Horse-Battery-Staple-42"
pid=""
if [ -n "${AUTHD_SMOKE_DATABASE_URL:-}" ]; then
  db_env=(DATABASE_URL="$AUTHD_SMOKE_DATABASE_URL" AUTHD_DATA_DIR="$data")
else
  db_env=(-u DATABASE_URL AUTHD_DATA_DIR="$data")
fi

fail() {
  echo "SMOKE FAIL: $*" >&2
  echo "--- authd log ---" >&2
  tail -n 50 "$log" >&2 || true
  exit 1
}

cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$data" "$log"
}
trap cleanup EXIT

step() { echo "smoke: $*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
call() { "$grpcurl" -plaintext "$@"; }

step "starting $bin on $addr (${AUTHD_SMOKE_DATABASE_URL:+DATABASE_URL given; }data directory $data)"
env "${db_env[@]}" \
  AUTHD_LISTEN="$addr" AUTHD_BCRYPT_COST=10 \
  AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  "$bin" serve >"$log" 2>&1 &
pid=$!

step "waiting for health SERVING"
for _ in $(seq 1 150); do
  if out="$(call -d '{"service":""}' "$addr" grpc.health.v1.Health/Check 2>/dev/null)" \
     && echo "$out" | grep -q '"SERVING"'; then
    break
  fi
  kill -0 "$pid" 2>/dev/null || fail "authd exited during start-up"
  sleep 0.2
done
echo "$out" | grep -q '"SERVING"' || fail "never became SERVING"
for svc in liveness authd.v1.AuthService authd.v1.UserService; do
  call -d "{\"service\":\"$svc\"}" "$addr" grpc.health.v1.Health/Check | grep_all '"SERVING"' \
    || fail "health of $svc is not SERVING"
done

step "list"
services="$(call "$addr" list)"
for svc in authd.v1.AuthService authd.v1.UserService grpc.health.v1.Health; do
  echo "$services" | grep -qx "$svc" || fail "list does not show $svc: $services"
done

step "describe"
described="$(call "$addr" describe authd.v1.AuthService)"
echo "$described" | grep -q "rpc ValidateToken" || fail "describe lacks ValidateToken"
echo "$described" | grep -q "Rotates a refresh token" || fail "describe lacks the proto comments"
call "$addr" describe authd.v1.LoginResponse | grep_all "refresh_expires_in" || fail "describe LoginResponse"

step "Register"
email="smoke-$RANDOM@example.com"
user="$(call -d "{\"email\":\"$email\",\"password\":\"$user_password\",\"username\":\"smoke$RANDOM\"}" \
  "$addr" authd.v1.AuthService/Register)" || fail "Register"
user_id="$(echo "$user" | json 'd["user"]["id"]')"
[ "$(echo "$user" | json 'd["user"]["role"]')" = "ROLE_USER" ] || fail "new user is not ROLE_USER"

step "Register again -> ALREADY_EXISTS"
if out="$(call -d "{\"email\":\"$email\",\"password\":\"$user_password\"}" "$addr" authd.v1.AuthService/Register 2>&1)"; then
  fail "duplicate Register succeeded"
fi
echo "$out" | grep -q "AlreadyExists" || fail "duplicate Register: $out"

step "Login"
pair="$(call -d "{\"email\":\"$email\",\"password\":\"$user_password\"}" "$addr" authd.v1.AuthService/Login)" \
  || fail "Login"
access="$(echo "$pair" | json 'd["accessToken"]')"
refresh="$(echo "$pair" | json 'd["refreshToken"]')"

step "GetMe"
me="$(call -H "authorization: Bearer $access" "$addr" authd.v1.UserService/GetMe)" || fail "GetMe"
[ "$(echo "$me" | json 'd["id"]')" = "$user_id" ] || fail "GetMe returned another user"

step "service key from the CLI (attaches to the running embedded PostgreSQL, or DATABASE_URL)"
cli_key="$(env "${db_env[@]}" "$bin" service-keys create smoke-cli 2>/dev/null)" \
  || fail "authd service-keys create"

step "service key from the bootstrap admin"
admin_access="$(call -d "{\"email\":\"$admin_email\",\"password\":\"$admin_password\"}" \
  "$addr" authd.v1.AuthService/Login | json 'd["accessToken"]')" || fail "admin Login"
key="$(call -H "authorization: Bearer $admin_access" -d '{"name":"smoke"}' \
  "$addr" authd.v1.AuthService/CreateServiceKey | json 'd["key"]')" || fail "CreateServiceKey"

step "ValidateToken"
for k in "$key" "$cli_key"; do
  v="$(call -H "x-api-key: $k" -d "{\"access_token\":\"$access\"}" "$addr" authd.v1.AuthService/ValidateToken)" \
    || fail "ValidateToken"
  [ "$(echo "$v" | json 'd.get("valid", False)')" = "True" ] || fail "token not valid: $v"
  [ "$(echo "$v" | json 'd["userId"]')" = "$user_id" ] || fail "ValidateToken user"
done
if out="$(call -d "{\"access_token\":\"$access\"}" "$addr" authd.v1.AuthService/ValidateToken 2>&1)"; then
  fail "ValidateToken without a key succeeded"
fi
echo "$out" | grep -q "Unauthenticated" || fail "ValidateToken without key: $out"
# Reflection serves google/rpc/error_details.proto, so grpcurl decodes the ErrorInfo detail.
echo "$out" | grep -q '"reason": *"SERVICE_KEY_MISSING"' || fail "ErrorInfo not decoded: $out"

step "Refresh, then Logout; the token reads invalid"
pair2="$(call -d "{\"refresh_token\":\"$refresh\"}" "$addr" authd.v1.AuthService/Refresh)" || fail "Refresh"
access2="$(echo "$pair2" | json 'd["accessToken"]')"
call -H "authorization: Bearer $access2" "$addr" authd.v1.AuthService/Logout >/dev/null || fail "Logout"
v="$(call -H "x-api-key: $key" -d "{\"access_token\":\"$access2\"}" "$addr" authd.v1.AuthService/ValidateToken)"
[ "$(echo "$v" | json 'd.get("valid", False)')" = "False" ] || fail "revoked token still valid: $v"

step "GetJwks"
call "$addr" authd.v1.AuthService/GetJwks | grep_all '"Ed25519"' || fail "GetJwks"

step "no secret in the log"
for secret in "$user_password" "$admin_password" "$access" "$refresh" "$key" "$cli_key"; do
  if grep -qF -- "$secret" "$log"; then fail "a secret appears in the log"; fi
done

step "SIGTERM"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
[ "$status" = 0 ] || fail "authd exited with $status after SIGTERM"
sleep 0.5
if pgrep -f -- "$data" >/dev/null; then fail "a postgres process outlived authd"; fi

echo "smoke: OK"
