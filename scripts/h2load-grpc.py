#!/usr/bin/env python3
"""gRPC over h2load (Debian's nghttp2-client), for scripts/benchmarks.sh: a light, independent
client next to authd-bench (issue J, P1).

  h2load-grpc.py setup URL EMAIL PASSWORD DIR   logs in (nghttp), creates a service key, and writes
                                                DIR/health.bin, DIR/validate.bin (pre-encoded
                                                gRPC bodies) and DIR/api-key
  h2load-grpc.py run NAME URL PATH BODY SECS [API_KEY] [--server-pid PID]
                                                one h2load run (1 connection, 16 streams, 1
                                                thread); prints JSON with req/s and, with
                                                --server-pid, the server's CPU (user + kernel,
                                                from /proc/PID/stat) after the 1 s warm-up: how
                                                busy it was and its CPU µs per call. A rate ratio
                                                means the server's ratio only when the server was
                                                busy in both runs (issue J, P1).

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
import time

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


def cpu_seconds(pid):
    """User plus kernel CPU seconds of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(name, url, path, body, secs, key=None, server_pid=None):
    extra = ["-H", f"x-api-key: {key}"] if key else []
    warmup = 1
    cmd = ["h2load", "-c", "1", "-m", "16", "-t", "1", "-D", str(secs), "--warm-up-time", str(warmup),
           "-d", body, *HEADERS, *extra, url + path]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = None
    if server_pid:
        time.sleep(warmup)
        c0, t0 = cpu_seconds(server_pid), time.monotonic()
    out, err = p.communicate()
    if server_pid:
        c1, t1 = cpu_seconds(server_pid), time.monotonic()
        server = {"pid": server_pid, "cpu_s": round(c1 - c0, 3), "window_s": round(t1 - t0, 3)}
    if p.returncode != 0:
        raise SystemExit(f"h2load failed: {err[-500:]}{out[-500:]}")
    text = out
    m = re.search(r"finished in [^,]+, ([0-9.]+) req/s", text)
    st = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
    if not m or not st:
        raise SystemExit("unexpected h2load output:\n" + text)
    rps = float(m.group(1))
    result = {"tool": "h2load", "name": name, "path": path, "rps": rps,
              "requests": int(st.group(1)), "succeeded": int(st.group(4)),
              "failed": int(st.group(5)), "connections": 1, "streams": 16, "seconds": secs}
    if server and server["window_s"] > 0 and rps > 0:
        # The window runs from the end of the warm-up to h2load's exit, so it matches the
        # measured period to within the exit's few milliseconds.
        server["busy"] = round(server["cpu_s"] / server["window_s"], 3)
        server["cpu_us_per_call"] = round(server["cpu_s"] / (rps * server["window_s"]) * 1e6, 2)
        result["server"] = server
    print(json.dumps(result))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "setup" and len(a) == 5:
        setup(*a[1:])
    elif a and a[0] == "run" and len(a) >= 6:
        pid = None
        if "--server-pid" in a:
            i = a.index("--server-pid")
            pid = int(a[i + 1])
            a = a[:i] + a[i + 2:]
        if len(a) not in (6, 7):
            raise SystemExit(__doc__)
        run(a[1], a[2], a[3], a[4], int(a[5]), a[6] if len(a) == 7 else None, pid)
    else:
        raise SystemExit(__doc__)
