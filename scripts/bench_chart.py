#!/usr/bin/env python3
"""Draws <dir>/latency.svg from the authd-bench --json files in <dir> (python3 stdlib only).

Left panel: latency percentiles (p50, p90, p99, p99.9) of every run's groups, log-scale y axis.
Right panel: ValidateToken p99 (and p50) idle (validate.json) against during the login storm
(the validate group of mix-validate-login.json), with the P3 ratio.

The title carries the date, machine and commit from summary.json when present.

Usage: scripts/bench_chart.py <dir>
"""

import datetime
import html
import json
import math
import os
import platform
import sys

# Preferred order of the runs that scripts/benchmarks.sh writes; other files follow by name.
ORDER = ["health", "validate", "getme", "refresh", "login", "mix-validate-login", "health-1000conn"]
PERCENTILES = [("p50", "p50", "#4e79a7"), ("p90", "p90", "#59a14f"),
               ("p99", "p99", "#f28e2b"), ("p999", "p99.9", "#e15759")]
NAMES = {"health": "Health", "validate": "ValidateToken", "getme": "GetMe",
         "refresh": "Refresh", "login": "Login"}
WIDTH, HEIGHT = 1200, 600
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def fmt_us(us):
    if us is None:
        return "n/a"
    if us == 0:
        return "0"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.3g} ms"
    return f"{us / 1e6:.3g} s"


def load_runs(d):
    runs = {}
    for name in os.listdir(d):
        if not name.endswith(".json") or name == "summary.json":
            continue
        try:
            with open(os.path.join(d, name)) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            print(f"bench_chart: skipping {name}: {e}", file=sys.stderr)
            continue
        if isinstance(doc, dict) and isinstance(doc.get("groups"), list):
            runs[name[:-5]] = doc
    ordered = [n for n in ORDER if n in runs] + sorted(n for n in runs if n not in ORDER)
    return [(n, runs[n]) for n in ordered]


def bar_label(run_name, doc, group):
    rpc = NAMES.get(group["rpc"], group["rpc"])
    label = f"{rpc} c{group['concurrency']}"
    if len(doc["groups"]) > 1:
        others = [f"{o['rpc']}={o['concurrency']}" for o in doc["groups"] if o is not group]
        label += f" (with {', '.join(others)})"
    if doc.get("connections", 1) > 1:
        label += f", {doc['connections']} conns"
    return label


def subtitle_line(d):
    try:
        with open(os.path.join(d, "summary.json")) as f:
            m = json.load(f).get("machine", {})
    except (OSError, ValueError):
        return None
    if "loadavg_start" not in m:
        return None
    return (f"load average {m['loadavg_start']} at the start, {m.get('loadavg_end', '?')} at the end "
            f"(other work on the machine skews the numbers)")


def title_line(d):
    try:
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)
        m = s.get("machine", {})
        commit = s.get("git", {}).get("commit") or "?"
        dirty = " (dirty)" if s.get("git", {}).get("dirty") else ""
        return (f"authd latency, {s.get('date', '?')}: {m.get('cpus', '?')} CPUs, "
                f"{m.get('cpu_model', '?')}, authd on CPU {m.get('server_cpu', '?')}, load on CPU "
                f"{m.get('client_cpu', '?')}; commit {commit}{dirty}; {s.get('duration', '?')} per run")
    except (OSError, ValueError):
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"authd latency, {date}: {os.cpu_count()} CPUs, {platform.machine()}"


class Svg:
    def __init__(self):
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#222", rotate=None):
        tr = f" transform='rotate({rotate} {x:.1f} {y:.1f})'" if rotate is not None else ""
        self.add(f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
                 f"font-weight='{weight}' fill='{fill}' {FONT}{tr}>{html.escape(str(s))}</text>")

    def line(self, x1, y1, x2, y2, stroke="#ccc", width=1, dash=None):
        d = f" stroke-dasharray='{dash}'" if dash else ""
        self.add(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
                 f"stroke='{stroke}' stroke-width='{width}'{d}/>")

    def rect(self, x, y, w, h, fill, tip=None):
        t = f"<title>{html.escape(tip)}</title>" if tip else ""
        self.add(f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(w, 0):.1f}' height='{max(h, 0):.1f}' "
                 f"fill='{fill}'>{t}</rect>")

    def render(self):
        return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
                f"viewBox='0 0 {WIDTH} {HEIGHT}'>\n<rect width='100%' height='100%' fill='white'/>\n"
                + "\n".join(self.parts) + "\n</svg>\n")


def percentile_panel(svg, bars, x0, y0, w, h):
    """bars: list of (label, latency dict)."""
    svg.text(x0 + w / 2, y0 - 14, "Latency percentiles per RPC (successful calls, log scale)",
             size=14, anchor="middle", weight="bold")
    values = [lat[k] for _, lat in bars for k, _, _ in PERCENTILES if lat and lat.get(k)]
    if not values:
        svg.text(x0 + w / 2, y0 + h / 2, "no latency data", anchor="middle")
        return
    lo = 10 ** math.floor(math.log10(max(min(values), 1)))
    hi = 10 ** math.ceil(math.log10(max(values) * 1.01))
    if hi <= lo:
        hi = lo * 10
    span = math.log10(hi) - math.log10(lo)

    def y_of(v):
        return y0 + h - (math.log10(max(v, lo)) - math.log10(lo)) / span * h

    decade = lo
    while decade <= hi:
        for m in (1, 2, 5):
            v = decade * m
            if lo <= v <= hi:
                y = y_of(v)
                svg.line(x0, y, x0 + w, y, stroke="#ddd" if m == 1 else "#f0f0f0")
                svg.text(x0 - 6, y + 4, fmt_us(v), size=11 if m == 1 else 9, anchor="end",
                         fill="#222" if m == 1 else "#888")
        decade *= 10
    svg.line(x0, y0, x0, y0 + h, stroke="#444")
    svg.line(x0, y0 + h, x0 + w, y0 + h, stroke="#444")
    svg.text(x0 - 62, y0 + h / 2, "latency", size=12, anchor="middle", rotate=-90)

    slot = w / len(bars)
    bw = min(16.0, slot * 0.8 / len(PERCENTILES))
    for i, (label, lat) in enumerate(bars):
        cx = x0 + slot * (i + 0.5)
        left = cx - bw * len(PERCENTILES) / 2
        for j, (key, name, color) in enumerate(PERCENTILES):
            v = (lat or {}).get(key)
            if not v:
                continue
            y = y_of(v)
            svg.rect(left + j * bw, y, bw - 1, y0 + h - y, color, f"{label} {name}: {fmt_us(v)}")
        if lat and lat.get("p99"):
            svg.text(cx, y_of(lat["p999"] or lat["p99"]) - 4, fmt_us(lat["p99"]), size=9,
                     anchor="middle", fill="#b35c00")
        svg.text(cx, y0 + h + 14, label, size=10, anchor="end", rotate=-30)
    # Legend.
    lx = x0 + 8
    for j, (_, name, color) in enumerate(PERCENTILES):
        svg.rect(lx + j * 70, y0 + 6, 12, 12, color)
        svg.text(lx + j * 70 + 16, y0 + 16, name, size=11)
    svg.text(lx + 4 * 70, y0 + 16, "(number above bars: p99)", size=10, fill="#b35c00")


def nice_step(raw):
    """The smallest 1, 2 or 5 times a power of ten that is at least `raw`."""
    if raw <= 0:
        return 1
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if base * m >= raw:
            return base * m
    return base * 10


def storm_panel(svg, idle, storm, x0, y0, w, h):
    svg.text(x0 + w / 2, y0 - 30, "ValidateToken c16 latency:", size=14, anchor="middle",
             weight="bold")
    svg.text(x0 + w / 2, y0 - 14, "idle vs during a login storm", size=14, anchor="middle",
             weight="bold")
    if not idle or not storm:
        svg.text(x0 + w / 2, y0 + h / 2, "needs validate.json and mix-validate-login.json",
                 anchor="middle", size=11)
        return
    li, ls = idle.get("latency_us") or {}, storm.get("latency_us") or {}
    vals = [v for v in (li.get("p99"), ls.get("p99"), li.get("p50"), ls.get("p50")) if v]
    if not vals:
        svg.text(x0 + w / 2, y0 + h / 2, "no latency data", anchor="middle")
        return
    step = nice_step(max(vals) * 1.15 / 5)
    top = step * math.ceil(max(vals) * 1.15 / step)
    k = 0
    while step * k <= top + step / 2:
        v = step * k
        y = y0 + h - h * v / top
        svg.line(x0, y, x0 + w, y, stroke="#eee")
        svg.text(x0 - 6, y + 4, fmt_us(v), size=10, anchor="end")
        k += 1
    svg.line(x0, y0, x0, y0 + h, stroke="#444")
    svg.line(x0, y0 + h, x0 + w, y0 + h, stroke="#444")
    cats = [("idle", li, idle), ("login storm", ls, storm)]
    slot = w / 2
    bw = slot * 0.3
    for i, (name, lat, g) in enumerate(cats):
        cx = x0 + slot * (i + 0.5)
        for j, (key, label, color) in enumerate([("p50", "p50", "#4e79a7"), ("p99", "p99", "#f28e2b")]):
            v = lat.get(key)
            if not v:
                continue
            bh = h * v / top
            bx = cx - bw + j * bw
            svg.rect(bx, y0 + h - bh, bw - 2, bh, color, f"{name} {label}: {fmt_us(v)}")
            svg.text(bx + bw / 2 - 1, y0 + h - bh - 4, fmt_us(v), size=10, anchor="middle")
        svg.text(cx, y0 + h + 16, f"{name} ({g['rps']:g} req/s)", size=11, anchor="middle")
    if li.get("p99") and ls.get("p99"):
        p3 = ls["p99"] / li["p99"]
        ok = "meets" if p3 <= 2 else "misses"
        svg.text(x0 + w / 2, y0 + h + 36, f"P3 = storm p99 ÷ idle p99 = {p3:.2f} ({ok} ≤ 2)",
                 size=12, anchor="middle", weight="bold", fill="#222" if p3 <= 2 else "#c0392b")
    svg.rect(x0 + 8, y0 + 6, 12, 12, "#4e79a7")
    svg.text(x0 + 24, y0 + 16, "p50", size=11)
    svg.rect(x0 + 64, y0 + 6, 12, 12, "#f28e2b")
    svg.text(x0 + 80, y0 + 16, "p99", size=11)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = argv[1]
    runs = load_runs(d)
    if not runs:
        print(f"bench_chart: no authd-bench JSON files in {d}", file=sys.stderr)
        return 1
    bars = []
    for name, doc in runs:
        for g in doc["groups"]:
            bars.append((bar_label(name, doc, g), g.get("latency_us")))
    by_name = dict(runs)

    def group(name, rpc):
        for g in (by_name.get(name) or {}).get("groups", []):
            if g["rpc"] == rpc:
                return g
        return None

    svg = Svg()
    svg.text(WIDTH / 2, 24, title_line(d), size=13, anchor="middle", weight="bold")
    sub = subtitle_line(d)
    if sub:
        svg.text(WIDTH / 2, 42, sub, size=11, anchor="middle", fill="#555")
    percentile_panel(svg, bars, 90, 105, 700, 340)
    storm_panel(svg, group("validate", "validate"), group("mix-validate-login", "validate"),
                890, 105, 280, 340)
    path = os.path.join(d, "latency.svg")
    with open(path, "w") as f:
        f.write(svg.render())
    print(f"bench_chart: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
