#!/usr/bin/env python3
"""`make bench`: legate against Envoy and a direct connection, side by side, in one run.

Runs every scenario module present (dataplane, and scale / fanout when they exist), prints
a table with each target's PASS or MISS, writes bench/results/latest.json and regenerates
docs/benchmarks.md (keeping its hand-written section) with an SVG latency chart.
BENCH_QUICK=1 makes a short smoke run (one round, short loads).
Exit status is 0 whatever the targets say; non-zero only when the harness fails.
"""

import datetime
import importlib
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import lib  # noqa: E402
import report  # noqa: E402

SCENARIO_MODULES = ["dataplane", "observability", "scale", "fanout", "apply"]


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "envoy": subprocess.run([lib.envoy_bin(ROOT), "--version"],
                                capture_output=True, text=True).stdout.strip().splitlines()[-1:],
    }


def main():
    quick = os.environ.get("BENCH_QUICK") == "1"
    workdir = tempfile.mkdtemp(prefix="legate-bench-")
    logdir = os.path.join(workdir, "logs")
    os.makedirs(logdir)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    ctx = {"root": ROOT, "bin": lib.bin_dir(target),
           "envoy": lib.envoy_bin(ROOT), "quick": quick,
           "workdir": workdir, "logdir": logdir}
    print(f"bench: {'quick' if quick else 'full'} run; logs in {logdir}", flush=True)
    results, targets, context, skipped = [], [], [], []
    for name in SCENARIO_MODULES:
        if not os.path.exists(os.path.join(HERE, f"{name}.py")):
            skipped.append(name)
            continue
        print(f"bench: {name}", flush=True)
        mod = importlib.import_module(name)
        r = mod.run(dict(ctx))
        results.extend(r["results"])
        targets.extend(r["targets"])
        context.extend(r.get("context", []))
    doc = {"machine": machine(), "quick": quick, "results": results, "targets": targets,
           "context": context, "skipped": skipped}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    lib.dump_json(os.path.join(HERE, "results", "latest.json"), doc)
    print(report.table(doc))
    report.write_docs(doc, os.path.join(ROOT, "docs"))
    print("bench: wrote bench/results/latest.json and docs/benchmarks.md")


if __name__ == "__main__":
    main()
