#!/usr/bin/env python3
"""`make bench`: legate against Envoy and a direct connection, side by side, in one run.

Runs every scenario module present (dataplane, and scale / fanout when they exist), prints
a table with each target's PASS or MISS, writes bench/results/latest.json and regenerates
docs/benchmarks.md (keeping its hand-written section) with an SVG latency chart.
BENCH_QUICK=1 makes a short smoke run (one round, short loads). BENCH_MODULES=NAME[,NAME]
runs only those modules and keeps the others' figures from the previous results file.
Exit status is 0 whatever the targets say; non-zero only when the harness fails.
"""

import datetime
import importlib
import json
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

SCENARIO_MODULES = ["dataplane", "observability", "filters", "scale", "fanout", "apply"]


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


def merge(old, new, modules):
    """`new` (a run of `modules` only) in place of those modules' entries in `old`, the
    previous latest.json; every other module's figures, date and context are kept."""
    doc = dict(old)
    doc["results"] = ([r for r in old.get("results", []) if r.get("module") not in modules]
                      + new["results"])
    doc["targets"] = ([t for t in old.get("targets", []) if t.get("module") not in modules]
                      + new["targets"])
    runs = dict(old.get("module_runs", {}))
    runs.update(new["module_runs"])
    doc["module_runs"] = runs
    doc["context"] = [c for m in SCENARIO_MODULES for c in runs.get(m, {}).get("context", [])]
    doc["skipped"] = sorted(set(old.get("skipped", [])) - set(modules))
    doc["machine"] = {**old.get("machine", {}), **{k: v for k, v in new["machine"].items()
                                                   if k != "date"}}
    return doc


def main():
    quick = os.environ.get("BENCH_QUICK") == "1"
    # BENCH_MODULES="observability ...": run those scenario modules only and keep the other
    # modules' figures from the previous bench/results/latest.json (each module's run date
    # is recorded, and shown in docs/benchmarks.md).
    chosen = os.environ.get("BENCH_MODULES", "").replace(",", " ").split()
    unknown = [m for m in chosen if m not in SCENARIO_MODULES]
    if unknown:
        sys.exit(f"bench: unknown BENCH_MODULES {unknown}; known: {SCENARIO_MODULES}")
    workdir = tempfile.mkdtemp(prefix="legate-bench-")
    logdir = os.path.join(workdir, "logs")
    os.makedirs(logdir)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    ctx = {"root": ROOT, "bin": lib.bin_dir(target),
           "envoy": lib.envoy_bin(ROOT), "quick": quick,
           "workdir": workdir, "logdir": logdir}
    print(f"bench: {'quick' if quick else 'full'} run; logs in {logdir}", flush=True)
    m = machine()
    results, targets, skipped, runs = [], [], [], {}
    for name in chosen or SCENARIO_MODULES:
        if not os.path.exists(os.path.join(HERE, f"{name}.py")):
            skipped.append(name)
            continue
        print(f"bench: {name}", flush=True)
        mod = importlib.import_module(name)
        r = mod.run(dict(ctx))
        for entry in r["results"] + r["targets"]:
            entry["module"] = name
        results.extend(r["results"])
        targets.extend(r["targets"])
        runs[name] = {"date": m["date"], "quick": quick, "context": r.get("context", [])}
    doc = {"machine": m, "quick": quick, "results": results, "targets": targets,
           "context": [c for name in SCENARIO_MODULES for c in runs.get(name, {}).get("context", [])],
           "skipped": skipped, "module_runs": runs}
    path = os.path.join(HERE, "results", "latest.json")
    if chosen and os.path.exists(path):
        with open(path) as f:
            doc = merge(json.load(f), doc, chosen)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    lib.dump_json(path, doc)
    print(report.table(doc))
    report.write_docs(doc, os.path.join(ROOT, "docs"))
    print("bench: wrote bench/results/latest.json and docs/benchmarks.md")


if __name__ == "__main__":
    main()
