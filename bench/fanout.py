"""Control-plane fan-out: N simulated proxies on real ADS streams (legate-cp-load) against
legate-cp, and how long a `legatectl set-weights` change takes to be ACKed by every stream.

Per size and ADS variant (state of the world, delta), a fresh legate-cp serves a mesh of
SERVICES services with two versions each; legate-cp-load opens N streams (each its own node,
spread over one HTTP/2 connection per 100 streams), waits until all hold their initial
configuration, then makes CHANGES weight changes one second apart. A stream's latency runs
from just before `legatectl` starts to that stream's last ACK of the change, so it includes
the admin call, compiling the mesh and the fan-out. legate-cp is pinned to CPU 0 and the load
tool (one thread) to CPU 1. Reported per change: p50/p99/max over the N streams, legate-cp's
CPU seconds for the change; per run: legate-cp's RSS idle and with N streams connected.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib  # noqa: E402

SERVICES = 20
CHANGES = 3
# v1's weight at each change (v2 gets the rest); the mesh starts at 50/50, so every change
# is a real one.
WEIGHTS = (30, 60, 90, 20, 70)
TARGET_P99_S = 2.0


def mesh():
    lines = ["proxy:", "  listener: {name: outbound, address: 127.0.0.1:15001, protocol: auto}",
             "services:"]
    for i in range(SERVICES):
        lines += [f"  - name: svc-{i}",
                  "    versions:",
                  f"      - {{name: v1, weight: 50, endpoints: [{{address: 127.0.0.1:{21000 + 2 * i}}}]}}",
                  f"      - {{name: v2, weight: 50, endpoints: [{{address: 127.0.0.1:{21001 + 2 * i}}}]}}",
                  f"    route: {{prefix: /svc-{i}/, timeout: 5s}}"]
    return "\n".join(lines) + "\n"


def one(ctx, n, mode):
    procs = lib.Procs(ctx["logdir"])
    wd = os.path.join(ctx["workdir"], f"fanout-{n}-{mode}")
    os.makedirs(wd)
    try:
        xds, admin = lib.free_port(), lib.free_port()
        mesh_path = os.path.join(wd, "mesh.yaml")
        with open(mesh_path, "w") as f:
            f.write(mesh())
        cp = procs.start(f"fanout-cp-{n}-{mode}", [
            os.path.join(ctx["bin"], "legate-cp"), "--metrics-address", "127.0.0.1:0",
            "--config", mesh_path, "--xds-address",
            f"127.0.0.1:{xds}", "--admin-address", f"127.0.0.1:{admin}", "--data-dir",
            os.path.join(wd, "cp-data")], cpu=0)
        lib.wait_port(xds)
        lib.wait_port(admin)
        ctl = os.path.join(ctx["bin"], "legatectl")
        # legate-cp generated its admin token in its data directory before listening.
        token_file = os.path.join(wd, "cp-data", "admin.token")
        argv = ["taskset", "-c", "1", os.path.join(ctx["bin"], "legate-cp-load"),
                "--server", f"http://127.0.0.1:{xds}", "--streams", str(n), "--mode", mode,
                "--threads", "1", "--changes", str(CHANGES), "--interval", "1s",
                "--cp-pid", str(cp.pid), "--ready-timeout", "180s", "--change-timeout", "30s"]
        for w in WEIGHTS[:CHANGES]:
            argv += ["--trigger-cmd",
                     f"{ctl} --server http://127.0.0.1:{admin} --token-file {token_file} "
                     f"set-weights svc-0 v1={w} v2={100 - w}"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=400)
        with open(os.path.join(ctx["logdir"], f"fanout-load-{n}-{mode}.log"), "w") as f:
            f.write(out.stdout + out.stderr)
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        by = {}
        for e in events:
            by.setdefault(e["event"], []).append(e)
        start, ready = by.get("start", [{}])[0], by.get("ready", [{}])[0]
        changes = by.get("change", [])
        cp_at = lambda e, k: ((e.get("usage") or {}).get("cp") or {}).get(k)  # noqa: E731
        rounds = []
        for c in changes:
            lat = c.get("latency") or {}
            rounds.append({"change": c["index"] + 1, "acked": c["acked"], "streams": n,
                           "consistent": c["consistent"], "p50_s": lat.get("p50_ms", 0) / 1000,
                           "p99_s": lat.get("p99_ms", 0) / 1000,
                           "max_s": lat.get("max_ms", 0) / 1000,
                           "trigger_s": c["trigger_ms"] / 1000, "cp_cpu_s": c.get("cp_cpu_s"),
                           "timed_out": c["timed_out"]})
        summary = {
            "streams": n, "mode": mode, "ready": ready.get("ready", 0),
            "ready_s": (ready.get("elapsed_ms") or 0) / 1000,
            "cp_rss_idle_kb": cp_at(start, "rss_kb"), "cp_rss_kb": cp_at(ready, "rss_kb"),
            "cp_connect_cpu_s": (cp_at(ready, "cpu_s") or 0) - (cp_at(start, "cpu_s") or 0),
            "exit": out.returncode,
            "error": out.stderr.strip().splitlines()[-1] if out.returncode else None,
        }
        if summary["cp_rss_kb"] and summary["cp_rss_idle_kb"]:
            summary["cp_kb_per_stream"] = (summary["cp_rss_kb"] - summary["cp_rss_idle_kb"]) / n
        return summary, rounds
    finally:
        procs.stop_all()


def run(ctx):
    sizes = [1000] if ctx["quick"] else [1000, 10000]
    results, targets = [], []
    for n in sizes:
        for mode in ("sotw", "delta"):
            summary, rounds = one(ctx, n, mode)
            med = {k: lib.median([r[k] for r in rounds])
                   for k in ("p50_s", "p99_s", "max_s", "cp_cpu_s")} if rounds else {}
            med.update({k: v for k, v in summary.items() if k not in ("mode",)})
            med["worst_p99_s"] = max((r["p99_s"] for r in rounds), default=None)
            results.append({"scenario": f"fanout_{n}_{mode}", "contender": "legate-cp",
                            "median": med, "rounds": rounds})
            print(f"  fanout {n:6} {mode:5}: ready {summary['ready']}/{n} in "
                  f"{summary['ready_s']:.2f} s, cp RSS {summary['cp_rss_kb']} KiB; "
                  + "; ".join(f"change {r['change']}: {r['acked']}/{n} ACKed, p50 "
                              f"{r['p50_s'] * 1000:.0f} ms p99 {r['p99_s'] * 1000:.0f} ms max "
                              f"{r['max_s'] * 1000:.0f} ms" for r in rounds)
                  + (f"; error: {summary['error']}" if summary["error"] else ""), flush=True)
    big = max(sizes)
    for mode in ("sotw", "delta"):
        r = next(x for x in results if x["scenario"] == f"fanout_{big}_{mode}")
        rounds, med = r["rounds"], r["median"]
        complete = (len(rounds) == CHANGES and med["exit"] == 0
                    and all(x["acked"] == big and not x["timed_out"] for x in rounds))
        worst = med.get("worst_p99_s")
        ok = complete and worst is not None and worst <= TARGET_P99_S
        targets.append({
            "name": f"fan-out {big} {mode} streams: every change ACKed by all, p99 <= 2 s",
            "value": round(worst, 3) if worst is not None else None,
            "threshold": TARGET_P99_S, "pass": ok,
            "detail": (f"worst p99 of {len(rounds)} changes {worst * 1000:.0f} ms, max "
                       f"{max(x['max_s'] for x in rounds) * 1000:.0f} ms; legate-cp RSS "
                       f"{(med.get('cp_rss_kb') or 0) / 1024:.0f} MiB with {big} streams"
                       if rounds else med.get("error") or "no change measured")})
    return {"results": results, "targets": targets}


if __name__ == "__main__":
    lib.run_alone(run, "fanout")
