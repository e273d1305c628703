"""Writes BENCHMARKS.md from scripts/bench's results (one JSON object per line).

Usage: report.py RESULTS OUTPUT key=value…  (the run's settings and versions)
"""
import json
import os
import re
import platform
import sys
from datetime import datetime, timezone

results_path, out_path, *settings = sys.argv[1:]
meta = dict(item.split("=", 1) for item in settings)
rows = [json.loads(line) for line in open(results_path)]


def find(load, target):
    for r in rows:
        if r["load"] == load and r["target"] == target:
            return r
    raise SystemExit(f"no result for {load} / {target}")


def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def mem_gib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            return int(line.split()[1]) / 1024 / 1024
    return 0


def mib(kb):
    return f"{kb / 1024:.1f} MiB"


ready = find("start to ready", "portal")
idle = {"portal": ready["idle_rss_kb"], "peer": find("idle", "peer")["idle_rss_kb"],
        "hello": find("idle", "hello")["idle_rss_kb"]}
names = {"portal": "Portail Tchap", "peer": f"oidc-provider {meta['peer']}", "hello": "Rocket hello-world"}
loads = ["discovery", "jwks", "userinfo", "full flows", "hello-world", "booking request",
         "room page (50 messages)"]

lines = []
w = lines.append
w("# Benchmarks")
w("")
w(f"Written by `scripts/bench` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Every figure is the")
w(f"median of {meta['runs']} runs of {meta['secs']} s after a {meta['warmup']} s warm-up, all on 127.0.0.1:")
w(f"wrk with {meta['threads']} threads and {meta['conns']} connections; whole flows by the flow driver")
w(f"(`scripts/lib/bench/flows.rs`) with {meta['clients']} clients. The load generator shares the machine")
w("with what it measures, so compare figures within one run (the ratios), not across machines.")
w("")
w("## Machine and versions")
w("")
w(f"- {os.cpu_count()} cores ({cpu()}), {mem_gib():.0f} GiB, {platform.system()} {platform.release()}")
w(f"- {meta['rustc']}; Rocket {meta['rocket']}; portal built with `--release` (thin LTO)")
w(f"- peer: npm oidc-provider {meta['peer']} on Node.js {meta['node']} (in-memory adapter, its default)")
w(f"- {meta['postgres']}; Synapse {meta['synapse']}; {meta['wrk']}")
w("")
w("## Results")
w("")
w("| load | server | req/s | p50 | p99 | RSS under load |")
w("|---|---|---:|---:|---:|---:|")
for load in loads:
    for target in ["portal", "peer", "hello"]:
        try:
            r = find(load, target)
        except SystemExit:
            continue
        unit = "flows/s" if load == "full flows" else "req/s"
        w(f"| {load} | {names[target]} | {r['rps']:,.0f} {unit} | {r['p50_ms']:.2f} ms | "
          f"{r['p99_ms']:.2f} ms | {mib(r['rss_kb'])} |")
w("")
w("Idle RSS: " + ", ".join(f"{names[t]} {mib(idle[t])}" for t in ["portal", "peer", "hello"]) + ".")
w(f"Start to `/readyz` answering 200 (migrations already applied, median of 3 starts): "
  f"**{ready['ready_ms']:.0f} ms**.")
w("")

room = find("room page", "timing")
queued = find("booking request", "outbox")["queued"]
w("Room page (Tchap Web léger, a room with 50 messages, the page shows the latest 30 events): "
  f"**{room['bytes'] / 1024:.1f} KiB** of HTML; from `Server-Timing` over {room['samples']:.0f} pages one")
w(f"after another, the homeserver's time (the sync and `/messages`, Synapse behind) is "
  f"{room['hs_ms']:.2f} ms and the portal's own {room['app_ms']:.2f} ms (medians).")
w(f"Booking requests: {queued:.0f} mails were queued in the outbox by the run (every accepted request queues one).")
w("")

drains = {int(r["target"].split("=")[1]): r for r in rows if r["load"] == "mail drain"}
if drains:
    one = next(iter(drains.values()))
    w(f"Mail worker: {one['mails']:,.0f} queued mails ({one['bytes'] / 1024:.1f} KiB each, a real booking-link mail) "
      "drained by one portal instance to the local SMTP server (aiosmtpd keeping a Maildir; every mail "
      "counted there), each marked sent in its own commit:")
    w("")
    w("| lanes (`PORTAL_MAIL__SMTP_CONNECTIONS`) | mails/s | drain time |")
    w("|---:|---:|---:|")
    for lanes, r in sorted(drains.items()):
        w(f"| {lanes} | {r['mails'] / r['secs']:,.0f} | {r['secs']:.1f} s |")
    w("")


def ratio(a, b):
    return a / b if b else float("inf")


p, q, h = (lambda l: find(l, "portal")), (lambda l: find(l, "peer")), find("hello-world", "hello")
peak_portal = max(find(l, "portal")["rss_kb"] for l in ["discovery", "jwks", "userinfo", "full flows"])
peak_peer = max(find(l, "peer")["rss_kb"] for l in ["discovery", "jwks", "userinfo", "full flows"])
checks = [
    ("userinfo, us / peer (tokens in PostgreSQL vs in memory)", ratio(p("userinfo")["rps"], q("userinfo")["rps"]), "≥ 2", lambda x: x >= 2),
    ("full flows, us / peer", ratio(p("full flows")["rps"], q("full flows")["rps"]), "≥ 2", lambda x: x >= 2),
    ("discovery, us / peer", ratio(p("discovery")["rps"], q("discovery")["rps"]), "≥ 3", lambda x: x >= 3),
    ("JWKS, us / peer", ratio(p("jwks")["rps"], q("jwks")["rps"]), "≥ 3", lambda x: x >= 3),
    ("discovery, us / hello-world", ratio(p("discovery")["rps"], h["rps"]), "≥ 0.70", lambda x: x >= 0.7),
    ("JWKS, us / hello-world", ratio(p("jwks")["rps"], h["rps"]), "≥ 0.70", lambda x: x >= 0.7),
    ("RSS under the OIDC loads, us / peer (peaks)", ratio(peak_portal, peak_peer), "≤ 0.25", lambda x: x <= 0.25),
]
w("## Targets")
w("")
w("| measure | value | target | met |")
w("|---|---:|---:|:-:|")
for name, value, target, ok in checks:
    w(f"| {name} | {value:.2f} | {target} | {'yes' if ok(value) else '**no**'} |")
w(f"| start to ready | {ready['ready_ms']:.0f} ms | ≤ 1000 ms | {'yes' if ready['ready_ms'] <= 1000 else '**no**'} |")
b = p("booking request")["rps"]
w(f"| booking requests | {b:,.0f} /s | ≥ 2,000 /s | {'yes' if b >= 2000 else '**no**'} |")
w(f"| room page HTML | {room['bytes'] / 1024:.1f} KiB | ≤ 30 KB | {'yes' if room['bytes'] <= 30000 else '**no**'} |")
w(f"| room page, portal's own time | {room['app_ms']:.2f} ms | ≤ 5 ms | {'yes' if room['app_ms'] <= 5 else '**no**'} |")
if 1 in drains:
    m = drains[1]["mails"] / drains[1]["secs"]
    w(f"| mails sent, one lane (the default) | {m:,.0f} /s | ≥ 300 /s | {'yes' if m >= 300 else '**no**'} |")
w("")
# With BENCH_PROFILE=1: where the CPU went during one more run of each of the portal's loads
# (perf, whole machine), as CPU time per request: share of samples × cores ÷ requests per second.
profiles = os.path.join(os.path.dirname(os.path.abspath(results_path)), "profiles")
groups = [("the portal", ("rocket-worker-t", "tracing-appende")), ("PostgreSQL", ("postgres",)),
          ("Synapse", ("python",)), ("load generator", ("wrk", "tokio-rt-worker", "bench-flows"))]
if os.path.isdir(profiles):
    ncpu = os.cpu_count() or 1
    w("## Where the CPU went (perf profiles)")
    w("")
    w("One more run of each of the portal's loads under `perf record -a` (`BENCH_PROFILE=1`); CPU time")
    w("per request by process, from the share of samples, the cores and that run's own req/s.")
    w("The profiles themselves (and the portal's hottest functions) are in `.run/bench/profiles/`.")
    w("")
    w("| load | req/s | " + " | ".join(g for g, _ in groups) + " | idle |")
    w("|---|---:|" + "---:|" * (len(groups) + 1))
    for load in ["discovery", "jwks", "userinfo", "full flows", "booking request", "room page (50 messages)"]:
        slug = "".join(c if c.isalnum() else "-" for c in load.lower())
        while "--" in slug:
            slug = slug.replace("--", "-")
        path = os.path.join(profiles, slug + ".txt")
        if not os.path.exists(path):
            continue
        share = {}
        for line in open(path):
            if line.startswith("#") or not line.strip():
                if share and line.startswith("#"):
                    break
                continue
            pct, comm = line.split(None, 1)
            share[comm.strip()] = float(pct.rstrip("%")) / 100
        # The profiled run's own rate (its output: wrk's or the flow driver's), else the median.
        rps = p(load)["rps"]
        out = os.path.join(profiles, slug + ".out")
        if os.path.exists(out):
            text = open(out).read()
            m = re.search(r"Requests/sec:\s+([\d.]+)", text) or re.search(r'"per_sec":\s*([\d.]+)', text)
            if m:
                rps = float(m.group(1))
        cells = []
        for _, comms in groups:
            us = sum(share.get(c, 0) for c in comms) * ncpu * 1e6 / rps
            cells.append(f"{us:,.0f} µs" if us < 10000 else f"{us / 1000:,.1f} ms")
        idle_share = share.get("swapper", 0)
        w(f"| {load} | {rps:,.0f} | " + " | ".join(cells) + f" | {idle_share:.0%} |")
    w("")
notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
if os.path.exists(notes):
    w(open(notes).read().rstrip())
    w("")
open(out_path, "w").write("\n".join(lines))
