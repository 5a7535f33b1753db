#!/usr/bin/env python3
"""Issue J: the latency of the operations of BENCHMARKS.md's "Cost that does not grow with the data"
against one running authd and its database (seeded by scripts/seed-large.sh).

    scripts/measure-data-scale.py ADDR DATABASE_URL ADMIN_EMAIL ADMIN_PASSWORD [N]

ADDR is host:port of authd's plaintext gRPC listener (start it with AUTHD_RATE_LIMIT_PER_IP=0).
The RPCs go through h2load (nghttp2-client) with pre-encoded gRPC bodies, one connection, one call
at a time, N calls each (default 200); the prunes are timed in SQL with psql, as the prune runs them.
Prints one line per operation: name, mean and max milliseconds. Standard library only.
"""
import base64, hashlib, re, subprocess, sys, tempfile, os, time

addr, url, email, password = sys.argv[1:5]
n = int(sys.argv[5]) if len(sys.argv) > 5 else 200

def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field_str(num, s):
    b = s.encode() if isinstance(s, str) else s
    return varint(num << 3 | 2) + varint(len(b)) + b

def field_int(num, v):
    return varint(num << 3) + varint(v)

def frame(msg):
    return b"\0" + len(msg).to_bytes(4, "big") + msg

def psql(sql):
    return subprocess.run(["psql", url, "-XAtq", "-c", sql], check=True, capture_output=True, text=True).stdout.strip()

def page_token(scope, create_time_micros, uid):
    raw = hashlib.sha256(scope.encode()).digest()[:8] + create_time_micros.to_bytes(8, "big", signed=True) + bytes.fromhex(uid.replace("-", ""))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")

def login():
    body = frame(field_str(1, email) + field_str(3, password))
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(body)
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "content-type: application/grpc", "-H", "te: trailers",
                          "--data-binary", "@" + f.name, f"http://{addr}/authd.v1.AuthService/Login"], check=True, capture_output=True).stdout
    msg = out[5:]
    assert msg[0] == 0x0A, f"login failed: {out!r}"
    # field 1, length-delimited varint
    i, ln, shift = 1, 0, 0
    while True:
        b = msg[i]; i += 1
        ln |= (b & 0x7F) << shift; shift += 7
        if not b & 0x80:
            break
    return msg[i:i + ln].decode()

def h2load(path, body, token, count):
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(frame(body))
    out = subprocess.run(["h2load", "-n", str(count), "-c", "1", "-m", "1", "-d", f.name,
                          "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f"authorization: Bearer {token}",
                          f"http://{addr}{path}"], check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)
    if not re.search(rf"{count} succeeded", out):
        raise SystemExit(f"h2load failures on {path}:\n{out}")
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    def ms(s):
        v = float(re.match(r"[\d.]+", s).group())
        return v / 1000 if s.endswith("us") else v * 1000 if s.endswith("s") and not s.endswith("ms") else v
    return ms(m.group(3)), ms(m.group(2))

token = login()
users = int(psql("SELECT count(*) FROM users"))
events = int(psql("SELECT count(*) FROM audit_events"))
mid_user = psql(f"SELECT (extract(epoch from create_time) * 1000000)::bigint || ' ' || id FROM users ORDER BY create_time, id OFFSET {users // 2} LIMIT 1").split()
mid_event = psql(f"SELECT (extract(epoch from create_time) * 1000000)::bigint || ' ' || id FROM audit_events ORDER BY create_time DESC, id DESC OFFSET {events // 2} LIMIT 1").split()
one = psql("SELECT email FROM users WHERE email LIKE 'user%@example.com' ORDER BY create_time OFFSET (SELECT count(*) FROM users) * 7 / 10 LIMIT 1")
one_q = one.split("@")[0] + "@"

ops = [
    ("ListUsers, first page", "/authd.v1.UserService/ListUsers", b""),
    (f"ListUsers, query {one_q!r} (one user)", "/authd.v1.UserService/ListUsers", field_str(3, one_q)),
    (f"ListUsers, page token {users // 2} rows in", "/authd.v1.UserService/ListUsers",
     field_str(2, page_token("users|||None", int(mid_user[0]), mid_user[1]))),
    (f"ListAuditEvents, page token {events // 2} rows in", "/authd.v1.UserService/ListAuditEvents",
     field_str(3, page_token("audit|", int(mid_event[0]), mid_event[1]))),
    ("ListAuditEvents, first page", "/authd.v1.UserService/ListAuditEvents", b""),
]
print(f"users={users} audit_events={events}")
for name, path, body in ops:
    h2load(path, body, token, 20)  # warm-up
    mean, mx = h2load(path, body, token, n)
    print(f"{name}: mean {mean:.2f} ms, max {mx:.2f} ms")

def timed(sql, repeat=5):
    """The fastest of `repeat` runs of `sql` in one psql session (psql's own \\timing)."""
    script = "\\timing on\n" + (sql + ";\n") * repeat
    out = subprocess.run(["psql", url, "-Xq"], input=script, check=True, capture_output=True, text=True).stdout
    return min(float(t) for t in re.findall(r"Time: ([\d.]+) ms", out))

sess = timed("DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE LEAST(expire_time, idle_expire_time, revoke_time) < now() - interval '1 day' LIMIT 5000)")
print(f"session prune, nothing to prune: {sess:.3f} ms (the prune's batch DELETE, best of 5)")
