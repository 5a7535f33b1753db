#!/usr/bin/env bash
# authd behind a real PgBouncer (Debian's 1.18) in SESSION mode, as README "Capacity" describes:
#   PostgreSQL (scram-sha-256 on 127.0.0.1) <- pgbouncer (pool_mode=session, scram) <- authd.
# 1. Two replicas start at the same moment through the bouncer: migrations run once, under the
#    session-level advisory lock, and both become SERVING.
# 2. The grpcurl smoke test (scripts/smoke.sh) runs against a third replica through the bouncer.
# 3. A token revoked on one replica reads invalid on another (the revocation view polls through
#    the bouncer too).
# Everything listens on loopback only. PostgreSQL and pgbouncer refuse to run as root, so as root
# they run as the `postgres` user.
#
# Usage: scripts/pgbouncer-test.sh [path/to/authd]   (default: target/release/authd)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(cd "$(dirname "${1:-$root/target/release/authd}")" && pwd)/$(basename "${1:-authd}")"
pgbouncer="$("$root/scripts/install-pgbouncer.sh")"
grpcurl="$("$root/scripts/install-grpcurl.sh")"

initdb="$(command -v initdb || true)"
if [ -z "$initdb" ]; then
  initdb="$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)"
fi
[ -x "$initdb" ] || { echo "pgbouncer-test: no PostgreSQL server binaries (initdb)" >&2; exit 1; }
pgbin="$(dirname "$(readlink -f "$initdb")")"

work="$(mktemp -d /tmp/authd-pgbouncer.XXXXXX)"
chmod 0755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port="$(free_port)"
bouncer_port="$(free_port)"
db_password="pgbouncer-test-$RANDOM$RANDOM"
pids=()

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
fail() {
  echo "PGBOUNCER TEST FAIL: $*" >&2
  for f in "$work"/authd-*.log "$work"/pgbouncer.log; do
    [ -f "$f" ] && { echo "--- $f ---" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -f "$work/pgbouncer.pid" ] && kill -TERM "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
step() { echo "pgbouncer-test: $*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
call() { "$grpcurl" -plaintext "$@"; }

step "PostgreSQL on 127.0.0.1:$pg_port"
[ "$(id -u)" = 0 ] && chown postgres "$work"
printf '%s\n' "$db_password" >"$work/pwfile"
[ "$(id -u)" = 0 ] && chown postgres "$work/pwfile"
as_pg "$initdb" -D "$work/pg" -U postgres --pwfile="$work/pwfile" \
  --auth-host=scram-sha-256 --auth-local=trust >/dev/null
as_pg "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
as_pg "$pgbin/psql" -h "$work" -p "$pg_port" -U postgres -q -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE authd LOGIN PASSWORD '$db_password'" -c "CREATE DATABASE authd OWNER authd" >/dev/null

step "pgbouncer (session mode) on 127.0.0.1:$bouncer_port"
printf '"authd" "%s"\n' "$db_password" >"$work/userlist.txt"
cat >"$work/pgbouncer.ini" <<INI
[databases]
authd = host=127.0.0.1 port=$pg_port dbname=authd
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
; session mode: every authd connection holds a server connection. 3 replicas x AUTHD_DB_POOL_SIZE 10.
default_pool_size = 40
max_client_conn = 100
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
[ "$(id -u)" = 0 ] && chown postgres "$work"/userlist.txt "$work"/pgbouncer.ini
as_pg "$pgbouncer" -d "$work/pgbouncer.ini"
for _ in $(seq 1 50); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $bouncer_port), 0.2)" 2>/dev/null && break
  sleep 0.1
done
url="postgres://authd:$db_password@127.0.0.1:$bouncer_port/authd"

# No bootstrap admin here: the smoke test's replica creates its own.
# Not in a command substitution: that would run it in a subshell, and the parent's `pids` (what
# cleanup stops) would never hear of the replica.
start_replica() { # name -> sets $started to the address
  local name="$1" port
  port="$(free_port)"
  env DATABASE_URL="$url" AUTHD_DATA_DIR="$work/data-$name" AUTHD_LISTEN="127.0.0.1:$port" \
    AUTHD_BCRYPT_COST=10 "$bin" serve >"$work/authd-$name.log" 2>&1 &
  pids+=($!)
  started="127.0.0.1:$port"
}
wait_serving() { # addr name
  for _ in $(seq 1 150); do
    if call -d '{"service":""}' "$1" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
      return 0
    fi
    sleep 0.2
  done
  fail "replica $2 never became SERVING"
}

step "two replicas start together (migrations under the advisory lock, through the bouncer)"
start_replica a
a="$started"
start_replica b
b="$started"
wait_serving "$a" a
wait_serving "$b" b
applied="$(as_pg "$pgbin/psql" -h "$work" -p "$pg_port" -U postgres -d authd -tAq \
  -c "SELECT count(*) FROM __diesel_schema_migrations")"
expected="$(ls -d "$root"/migrations/*/ | wc -l)"
[ "$applied" = "$expected" ] || fail "$applied migrations recorded, expected $expected"

step "the grpcurl smoke test through the bouncer"
AUTHD_SMOKE_DATABASE_URL="$url" "$root/scripts/smoke.sh" "$bin" | sed 's/^/  /'

step "a logout on replica a reads invalid on replica b"
password="Correct-Horse-Battery-Staple-42"
email="bouncer-$RANDOM@example.com"
call -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$a" authd.v1.AuthService/Register >/dev/null \
  || fail "Register"
access="$(call -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$a" authd.v1.AuthService/Login \
  | json 'd["accessToken"]')" || fail "Login"
key="$(env DATABASE_URL="$url" AUTHD_DATA_DIR="$work/data-cli" "$bin" service-keys create bouncer 2>/dev/null)" \
  || fail "service-keys create"
valid() {
  call -H "x-api-key: $key" -d "{\"access_token\":\"$access\"}" "$b" authd.v1.AuthService/ValidateToken \
    | json 'd.get("valid", False)'
}
# Replicas learn new service keys from their view (polled every 250 ms).
for _ in $(seq 1 50); do
  [ "$(valid 2>/dev/null)" = True ] && break
  sleep 0.1
done
[ "$(valid)" = True ] || fail "token not valid on replica b"
call -H "authorization: Bearer $access" "$a" authd.v1.AuthService/Logout >/dev/null || fail "Logout"
for _ in $(seq 1 50); do
  [ "$(valid)" = False ] && break
  sleep 0.1
done
[ "$(valid)" = False ] || fail "replica b still accepts the token 5 s after the logout"

step "no errors in the replicas' logs"
if grep -E '"level":"ERROR"| ERROR ' "$work"/authd-a.log "$work"/authd-b.log; then
  fail "a replica logged an error"
fi
echo "pgbouncer-test: OK"
