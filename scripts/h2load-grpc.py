#!/usr/bin/env python3
"""gRPC over h2load (Debian's nghttp2-client), for scripts/benchmarks.sh: a light, independent
client next to authd-bench (issue J, P1).

  h2load-grpc.py setup URL EMAIL PASSWORD DIR   logs in (nghttp), creates a service key, and writes
                                                DIR/health.bin, DIR/validate.bin (pre-encoded
                                                gRPC bodies) and DIR/api-key
  h2load-grpc.py run NAME URL PATH BODY SECS [API_KEY]   one h2load run (1 connection, 16
                                                streams, 1 thread); prints JSON with req/s

Bodies are gRPC messages framed by hand (flag 0, 4-byte length, protobuf), sent with
`content-type: application/grpc` and `te: trailers`. h2load counts HTTP status 200 as success; a
gRPC error travels in trailers with status 200, so `setup` checks one call of each body with
nghttp first and `run` reports the request count only (a wrong body would show as a tiny reply).
"""
import json
import os
import re
import struct
import subprocess
import sys

HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_str(num, s):
    b = s.encode()
    return varint(num << 3 | 2) + varint(len(b)) + b


def frame(msg):
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def strings(msg):
    """Top-level length-delimited fields of a protobuf message: {field: bytes}."""
    out, i = {}, 0
    while i < len(msg):
        key, i = read_varint(msg, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = read_varint(msg, i)
        elif wt == 2:
            n, i = read_varint(msg, i)
            out[num] = msg[i:i + n]
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise SystemExit(f"unexpected wire type {wt}")
    return out


def read_varint(b, i):
    n, shift = 0, 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def call(url, path, body, extra=()):
    """One unary call with nghttp; the reply message (unframed)."""
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"h2load-grpc-{os.getpid()}.bin")
    with open(tmp, "wb") as f:
        f.write(frame(body))
    try:
        r = subprocess.run(["nghttp", "-d", tmp, *HEADERS, *extra, url + path],
                           capture_output=True, check=True)
    finally:
        os.unlink(tmp)
    data = r.stdout
    if len(data) < 5:
        raise SystemExit(f"{path}: no gRPC reply ({r.stderr.decode(errors='replace')[-300:]})")
    n = struct.unpack(">I", data[1:5])[0]
    return data[5:5 + n]


def setup(url, email, password, out):
    login = call(url, "/authd.v1.AuthService/Login", field_str(1, email) + field_str(3, password))
    access = strings(login).get(1, b"").decode()
    if not access:
        raise SystemExit("Login returned no access token")
    key_reply = call(url, "/authd.v1.AuthService/CreateServiceKey",
                     field_str(1, f"h2load-{os.getpid()}"),
                     ["-H", f"authorization: Bearer {access}"])
    key = strings(key_reply).get(3, b"").decode()
    if not key:
        raise SystemExit("CreateServiceKey returned no key")
    validate = field_str(1, access)
    reply = call(url, "/authd.v1.AuthService/ValidateToken", validate, ["-H", f"x-api-key: {key}"])
    if not reply.startswith(b"\x08\x01"):
        raise SystemExit("ValidateToken of the fresh token did not answer valid: true")
    with open(os.path.join(out, "health.bin"), "wb") as f:
        f.write(frame(b""))
    with open(os.path.join(out, "validate.bin"), "wb") as f:
        f.write(frame(validate))
    with open(os.path.join(out, "api-key"), "w") as f:
        f.write(key)


def run(name, url, path, body, secs, key=None):
    extra = ["-H", f"x-api-key: {key}"] if key else []
    cmd = ["h2load", "-c", "1", "-m", "16", "-t", "1", "-D", str(secs), "--warm-up-time", "1",
           "-d", body, *HEADERS, *extra, url + path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"h2load failed: {r.stderr[-500:]}{r.stdout[-500:]}")
    text = r.stdout
    m = re.search(r"finished in [^,]+, ([0-9.]+) req/s", text)
    st = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
    if not m or not st:
        raise SystemExit("unexpected h2load output:\n" + text)
    print(json.dumps({"tool": "h2load", "name": name, "path": path, "rps": float(m.group(1)),
                      "requests": int(st.group(1)), "succeeded": int(st.group(4)),
                      "failed": int(st.group(5)), "connections": 1, "streams": 16,
                      "seconds": secs}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "setup" and len(a) == 5:
        setup(*a[1:])
    elif a and a[0] == "run" and len(a) in (6, 7):
        run(a[1], a[2], a[3], a[4], int(a[5]), a[6] if len(a) == 7 else None)
    else:
        raise SystemExit(__doc__)
