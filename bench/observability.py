"""What observability costs: legate and Envoy with tracing (100 % and 1 % sampling), with an
access log and with load reports, each against the same proxy without them.

The load is the data-plane's `http1_small` (wrk, 32 keep-alive connections, 100-byte
answers) on the same layout: the proxy under test on CPU 0 with one worker, wrk, the upstream
and the collectors on CPU 1. The figure that matters is the proxy's CPU time per request;
throughput and latency are shown too. Contenders are interleaved inside every round.

- `obs_plain`: the data-plane configuration (`dataplane.LEGATE_YAML` / `ENVOY_YAML`).
- `obs_trace_100`, `obs_trace_1`: HCM `tracing` with `envoy.tracers.opentelemetry`,
  `random_sampling` 100 % / 1 %, `spawn_upstream_span`, to an OTLP/gRPC collector over an
  HTTP/2 cluster. legate gets it from its mesh's `telemetry.tracing`, which compiles to those
  Envoy fields; Envoy gets the same fields by hand. Each traced proxy has its own
  `legate-otlp-sink` (a tonic OTLP trace server that decodes every export and drops it), so
  the spans each one delivered are counted.
- `obs_access_log`: the file access logger with Envoy's default format, to a file.
- `obs_lrs_off`, `obs_lrs_on`: both proxies configured over ADS by legate-cp from the same
  one-service mesh, with and without load reports to that legate-cp (1 s interval, the
  busiest a server can ask for from legate). Each proxy has its own legate-cp, since the
  mesh names the listener's port.

Ratios (`cpu_vs_plain`, `added_cpu_us`, `cpu_vs_envoy`) are added to each result's median.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataplane  # noqa: E402
import lib  # noqa: E402
import scale  # noqa: E402

PROXY_CPU, LOAD_CPU = dataplane.PROXY_CPU, dataplane.LOAD_CPU
COLLECTOR = "legate-trace-collector"  # legate-model's reserved name, used for Envoy too

FEATURES = ("plain", "trace_100", "trace_1", "access_log")
LRS_FEATURES = ("lrs_off", "lrs_on")
LRS_INTERVAL = "1s"


def workload(quick):
    return {"scenario": "http1_small", "kind": "wrk", "path": "/?size=100", "connections": 32,
            "duration": 2 if quick else 6}


def legate_telemetry(feature, sink_port, log_path):
    """The mesh's `telemetry` section for one feature (empty for plain)."""
    if feature.startswith("trace_"):
        pct = feature.split("_", 1)[1]
        return ("  telemetry:\n    tracing:\n"
                f"      collector: 127.0.0.1:{sink_port}\n"
                f"      sampling: {pct}%\n"
                "      service_name: legate\n")
    if feature == "access_log":
        return f"  telemetry:\n    access_log: {{path: \"{log_path}\"}}\n"
    return ""


def legate_yaml(feature, admin, port, upstream, sink_port=None, log_path=None):
    base = dataplane.LEGATE_YAML.format(admin=admin, port=port, upstream=upstream)
    assert "\nmesh:\n" in base
    return base.replace("\nmesh:\n",
                        "\nmesh:\n" + legate_telemetry(feature, sink_port, log_path), 1)


# HCM fields inserted after `codec_type: AUTO` (indentation of the HCM's typed_config).
ENVOY_TRACING = """\
          tracing:
            random_sampling: {{value: {pct}}}
            spawn_upstream_span: true
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: {{envoy_grpc: {{cluster_name: {collector}}}}}
                service_name: envoy
"""

ENVOY_ACCESS_LOG = """\
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{path}"
"""

# The collector's cluster: HTTP/2, as legate-model compiles `telemetry.tracing.collector`.
ENVOY_COLLECTOR_CLUSTER = """\
  - name: {collector}
    connect_timeout: 5s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {collector}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {sink}}}}}}}
"""


def envoy_yaml(feature, admin, port, upstream, sink_port=None, log_path=None):
    base = dataplane.ENVOY_YAML.format(admin=admin, port=port, upstream=upstream)
    anchor = "          codec_type: AUTO\n"
    assert anchor in base
    if feature.startswith("trace_"):
        pct = feature.split("_", 1)[1]
        base = base.replace(anchor, anchor + ENVOY_TRACING.format(pct=pct, collector=COLLECTOR))
        base += ENVOY_COLLECTOR_CLUSTER.format(collector=COLLECTOR, sink=sink_port)
    elif feature == "access_log":
        base = base.replace(anchor, anchor + ENVOY_ACCESS_LOG.format(path=log_path))
    return base


def legate_spans(admin):
    """legate's `legate_tracing_spans_total` by outcome, from its admin /metrics."""
    try:
        _, body = lib.http_get(f"http://127.0.0.1:{admin}/metrics")
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return {}
    out = {}
    for m in re.finditer(r'^legate_tracing_spans_total\{[^}]*outcome="([^"]+)"[^}]*\} (\S+)$',
                         body.decode(), re.M):
        out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out


def legate_counter(admin, name):
    """The sum of one counter's series on legate's admin /metrics (None when absent)."""
    try:
        _, body = lib.http_get(f"http://127.0.0.1:{admin}/metrics")
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return None
    values = [float(m.group(1)) for m in
              re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", body.decode(), re.M)]
    return sum(values) if values else None


def envoy_stats(admin, prefix):
    """Envoy's counters whose names start with `prefix`, from its admin /stats."""
    try:
        _, body = lib.http_get(f"http://127.0.0.1:{admin}/stats?filter=^{prefix}")
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return {}
    out = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def sink_counts(logdir, name):
    """What a stopped `legate-otlp-sink` said it received: (exports, spans)."""
    try:
        text = open(os.path.join(logdir, f"{name}.log")).read()
    except OSError:
        return None
    m = re.findall(r"received exports=(\d+) spans=(\d+)", text)
    return (int(m[-1][0]), int(m[-1][1])) if m else None


def count_lines(path):
    n = 0
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                n += chunk.count(b"\n")
    except OSError:
        return None
    return n


def summarize(results):
    out = []
    for (scenario, contender), rs in results.items():
        med = {k: lib.median([r.get(k) for r in rs]) for k in
               ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "cpu_s_per_100k",
                "rss_load_kb", "errors")}
        cpus = [r.get("cpu_us_per_request") for r in rs if r.get("cpu_us_per_request")]
        if cpus and med.get("cpu_us_per_request"):
            # Run-to-run spread of CPU per request across rounds, relative to the median.
            med["cpu_spread"] = (max(cpus) - min(cpus)) / med["cpu_us_per_request"]
        out.append({"scenario": scenario, "contender": contender, "median": med, "rounds": rs})
    return out


def run_rounds(ctx, contenders, rounds, label_width=16):
    """`contenders`: (scenario, contender, port, pid). Returns {(scenario, contender): [r]}."""
    w = workload(ctx["quick"])
    results = {}
    for rnd in range(rounds):
        for scenario, name, port, pid in contenders:
            r = dataplane.measure(w, port, pid, ctx["logdir"])
            r["round"] = rnd + 1
            results.setdefault((scenario, name), []).append(r)
            print(f"  round {rnd + 1} {scenario:{label_width}} {name:7} "
                  f"{r.get('rps', 0):9.0f} req/s p99 {r.get('p99_ms', 0):7.2f} ms "
                  f"CPU {r.get('cpu_us_per_request', 0):6.1f} us/req errors {r['errors']}",
                  flush=True)
    return results


def tracing_and_logs(ctx):
    """Plain, tracing at 100 % and 1 %, and an access log, for legate and for Envoy."""
    procs = lib.Procs(ctx["logdir"])
    rounds = 1 if ctx["quick"] else 3
    info = {}
    try:
        up_port = lib.free_port()
        procs.start("obs-upstream", [os.path.join(ctx["bin"], "legate-demo-upstream"),
                                     "--listen", f"127.0.0.1:{up_port}", "--name", "up",
                                     "--protocol", "auto"], cpu=LOAD_CPU)
        lib.wait_port(up_port)
        contenders, started, sinks = [], [], {}
        for i, feature in enumerate(FEATURES):
            for proxy in ("legate", "envoy"):
                key = f"{proxy}-{feature}"
                sink_port = log_path = None
                if feature.startswith("trace_"):
                    sink_port = lib.free_port()
                    sinks[key] = procs.start(f"obs-sink-{key}", [
                        os.path.join(ctx["bin"], "legate-otlp-sink"), "--listen",
                        f"127.0.0.1:{sink_port}"], cpu=LOAD_CPU)
                    lib.wait_port(sink_port)
                if feature == "access_log":
                    log_path = os.path.join(ctx["workdir"], f"obs-{key}.log")
                port, admin = lib.free_port(), lib.free_port()
                cfg = os.path.join(ctx["workdir"], f"obs-{key}.yaml")
                make = legate_yaml if proxy == "legate" else envoy_yaml
                with open(cfg, "w") as f:
                    f.write(make(feature, admin, port, up_port, sink_port, log_path))
                if proxy == "legate":
                    argv = [os.path.join(ctx["bin"], "legate"), "--config", cfg,
                            "--concurrency", "1", "--log-level", "warn"]
                else:
                    argv = [ctx["envoy"], "-c", cfg, "--concurrency", "1", "-l", "warn",
                            "--base-id", str((os.getpid() + 10 + i) % 60000)]
                p = procs.start(f"obs-{key}", argv, cpu=PROXY_CPU)
                started.append((feature, proxy, port, admin, p, log_path))
                contenders.append((f"obs_{feature}", proxy, port, p.pid))
        for _, _, port, _, _, _ in started:
            lib.wait_http(f"http://127.0.0.1:{port}/?size=10")
        time.sleep(1.0)
        results = run_rounds(ctx, contenders, rounds)
        # Let the exporters drain (Envoy flushes every 5 s), then read what was delivered.
        time.sleep(6.0)
        for feature, proxy, port, admin, p, log_path in started:
            key = f"{proxy}-{feature}"
            sent = sum(r["requests"] for r in results[(f"obs_{feature}", proxy)])
            # The readiness probes went through too.
            extra = {"requests_sent": sent}
            if feature.startswith("trace_"):
                if proxy == "legate":
                    for outcome, v in legate_spans(admin).items():
                        extra[f"spans_{outcome}"] = v
                else:
                    # Envoy's tracer counters: spans_sent, spans_dropped, timer_flushed.
                    for name, v in envoy_stats(admin, "tracing.opentelemetry.").items():
                        extra[name[len("tracing.opentelemetry."):]] = v
                procs.stop(sinks[key])
                got = sink_counts(ctx["logdir"], f"obs-sink-{key}")
                if got:
                    extra["collector_exports"], extra["collector_spans"] = got
                    extra["collector_spans_per_request"] = got[1] / max(sent, 1)
            if feature == "access_log":
                if proxy == "legate":
                    dropped = legate_counter(admin, "legate_access_log_dropped_total")
                    if dropped is not None:
                        extra["log_lines_dropped"] = dropped
                lines = count_lines(log_path)
                if lines is not None:
                    extra["log_lines"] = lines
                    extra["log_lines_per_request"] = lines / max(sent, 1)
            info[(f"obs_{feature}", proxy)] = extra
    finally:
        procs.stop_all()
        for name in os.listdir(ctx["workdir"]):
            if name.startswith("obs-") and name.endswith(".log"):
                os.remove(os.path.join(ctx["workdir"], name))
    out = summarize(results)
    for o in out:
        o["median"].update(info.get((o["scenario"], o["contender"]), {}))
    return out


LRS_MESH = """\
proxy:
  listener: {{name: outbound, address: 127.0.0.1:{port}, protocol: auto}}
services:
  - name: svc
    endpoints: [{{address: 127.0.0.1:{upstream}}}]
    route: {{prefix: /, timeout: 5s}}
{policies}"""

ENVOY_LOAD_STATS = ("cluster_manager:\n  load_stats_config:\n"
                    "    api_type: GRPC\n    transport_api_version: V3\n"
                    "    grpc_services: [{envoy_grpc: {cluster_name: xds}}]\n")


def cp_configured(ctx, tag, features, policies=lambda f: "", legate_flags=lambda f: [],
                  envoy_bootstrap=lambda f: "", extra=None, base_id=20):
    """legate and Envoy configured over ADS by a legate-cp of their own (the mesh names the
    listener's port) from a one-service mesh, once per feature: `policies(feature)` is the
    service's `policies:` block (indented under the service), `legate_flags` extra legate
    flags, `envoy_bootstrap` text put before Envoy's ADS bootstrap. `extra(feature, proxy,
    key, cp_admin)` adds figures after the load. Scenarios are named `{tag}{feature}`."""
    procs = lib.Procs(ctx["logdir"])
    rounds = 1 if ctx["quick"] else 3
    info = {}
    try:
        up_port = lib.free_port()
        procs.start(f"{tag}upstream", [os.path.join(ctx["bin"], "legate-demo-upstream"),
                                       "--listen", f"127.0.0.1:{up_port}", "--name", "up",
                                       "--protocol", "auto"], cpu=LOAD_CPU)
        lib.wait_port(up_port)
        contenders, started = [], []
        for i, feature in enumerate(features):
            for proxy in ("legate", "envoy"):
                key = f"{tag}{proxy}-{feature}"
                port, xds, cp_admin, admin = (lib.free_port() for _ in range(4))
                mesh = os.path.join(ctx["workdir"], f"{key}-mesh.yaml")
                with open(mesh, "w") as f:
                    f.write(LRS_MESH.format(port=port, upstream=up_port,
                                            policies=policies(feature)))
                procs.start(f"{key}-cp", [
                    os.path.join(ctx["bin"], "legate-cp"), "--config", mesh,
                    "--xds-address", f"127.0.0.1:{xds}", "--admin-address",
                    f"127.0.0.1:{cp_admin}", "--metrics-address", "127.0.0.1:0",
                    "--data-dir", os.path.join(ctx["workdir"], f"{key}-cp"),
                    "--lrs-interval", LRS_INTERVAL], cpu=LOAD_CPU)
                lib.wait_port(xds)
                if proxy == "legate":
                    argv = [os.path.join(ctx["bin"], "legate"), "--xds-server",
                            f"http://127.0.0.1:{xds}", "--node-id", f"bench-{key}",
                            "--admin-address", f"127.0.0.1:{admin}", "--concurrency", "1",
                            "--log-level", "warn"] + legate_flags(feature)
                else:
                    cfg = os.path.join(ctx["workdir"], f"{key}.yaml")
                    bootstrap = scale.ENVOY_BOOTSTRAP.format(node=f"bench-{key}", admin=admin,
                                                             xds=xds)
                    with open(cfg, "w") as f:
                        f.write(envoy_bootstrap(feature) + bootstrap)
                    argv = [ctx["envoy"], "-c", cfg, "--concurrency", "1", "-l", "warn",
                            "--base-id", str((os.getpid() + base_id + i) % 60000)]
                p = procs.start(key, argv, cpu=PROXY_CPU)
                started.append((feature, proxy, port, cp_admin, key))
                contenders.append((f"{tag}{feature}", proxy, port, p.pid))
        for _, _, port, _, _ in started:
            lib.wait_http(f"http://127.0.0.1:{port}/?size=10")
        time.sleep(1.0)
        results = run_rounds(ctx, contenders, rounds)
        time.sleep(2.5)  # one more report interval, so the last load is reported
        for feature, proxy, port, cp_admin, key in started:
            sent = sum(r["requests"] for r in results[(f"{tag}{feature}", proxy)])
            figures = {"requests_sent": sent}
            if extra:
                figures.update(extra(feature, proxy, key, cp_admin))
            info[(f"{tag}{feature}", proxy)] = figures
    finally:
        procs.stop_all()
    out = summarize(results)
    for o in out:
        o["median"].update(info.get((o["scenario"], o["contender"]), {}))
    return out


def lrs(ctx):
    """legate and Envoy configured by legate-cp, reporting load to it or not."""
    def reports(feature, proxy, key, cp_admin):
        n = cp_reports(ctx, cp_admin, key) if feature == "lrs_on" else None
        return {} if n is None else {"lrs_reports_received": n}
    return cp_configured(
        ctx, "obs_", LRS_FEATURES,
        legate_flags=lambda f: ["--lrs-server", "none"] if f == "lrs_off" else [],
        envoy_bootstrap=lambda f: ENVOY_LOAD_STATS if f == "lrs_on" else "",
        extra=reports)


def cp_reports(ctx, cp_admin, key):
    """`reports_received` from legate-cp's `GET /v1/load` (None when it cannot be read)."""
    import json
    import urllib.request
    token_file = os.path.join(ctx["workdir"], f"{key}-cp", "admin.token")
    try:
        token = open(token_file).read().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{cp_admin}/v1/load",
                                     headers={"authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=2.0) as r:
            doc = json.load(r)
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return None
    return doc.get("reports_received")


def add_ratios(out, tag="obs_", base_of=lambda feature: (
        "lrs_off" if feature.startswith("lrs_") else "plain")):
    """Each `{tag}` feature against the same proxy's base run (`base_of(feature)`), and
    legate against Envoy."""
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    for o in out:
        if not o["scenario"].startswith(tag):
            continue
        m = o["median"]
        feature = o["scenario"][len(tag):]
        base = by.get((tag + base_of(feature), o["contender"]))
        cpu = m.get("cpu_us_per_request")
        if base and cpu and base.get("cpu_us_per_request"):
            m["cpu_vs_plain"] = cpu / base["cpu_us_per_request"]
            m["added_cpu_us"] = cpu - base["cpu_us_per_request"]
        if base and m.get("rps") and base.get("rps"):
            m["rps_vs_plain"] = m["rps"] / base["rps"]
        if o["contender"] == "legate":
            ev = by.get((o["scenario"], "envoy"))
            if ev and cpu and ev.get("cpu_us_per_request"):
                m["cpu_vs_envoy"] = cpu / ev["cpu_us_per_request"]
            if ev and m.get("rps") and ev.get("rps"):
                m["rps_vs_envoy"] = m["rps"] / ev["rps"]
    return out


# Noise: the larger of legate's plain CPU per request spread across rounds and this floor.
NOISE_FLOOR = 0.03


def targets(out):
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    t = []
    plain, t1 = by.get(("obs_plain", "legate")), by.get(("obs_trace_1", "legate"))
    if plain and t1 and t1.get("cpu_vs_plain") is not None:
        noise = max(plain.get("cpu_spread") or 0.0, NOISE_FLOOR)
        value = t1["cpu_vs_plain"] - 1.0
        t.append({"name": "tracing 1%: legate's added CPU per request within noise",
                  "value": round(value, 3), "threshold": round(noise, 3),
                  "pass": value <= noise,
                  "detail": f"legate {t1['cpu_us_per_request']:.1f} µs traced at 1% vs "
                            f"{plain['cpu_us_per_request']:.1f} µs plain; noise is the "
                            f"plain runs' spread ({(plain.get('cpu_spread') or 0) * 100:.1f}%)"
                            f" or {NOISE_FLOOR * 100:.0f}%, the larger"})
    lg, ev = by.get(("obs_trace_100", "legate")), by.get(("obs_trace_100", "envoy"))
    if lg and ev and lg.get("added_cpu_us") is not None and ev.get("added_cpu_us") is not None:
        t.append({"name": "tracing 100%: legate's added CPU <= Envoy's added CPU",
                  "value": round(lg["added_cpu_us"], 2),
                  "threshold": round(ev["added_cpu_us"], 2),
                  "pass": lg["added_cpu_us"] <= ev["added_cpu_us"],
                  "detail": f"legate +{lg['added_cpu_us']:.1f} µs/request "
                            f"({lg['cpu_us_per_request']:.1f} µs), envoy "
                            f"+{ev['added_cpu_us']:.1f} µs/request "
                            f"({ev['cpu_us_per_request']:.1f} µs)"})
    return t


def context(out):
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    lines = []
    for feature, label in (("trace_100", "tracing 100%"), ("trace_1", "tracing 1%"),
                           ("access_log", "access log"), ("lrs_on", "LRS")):
        lg, ev = by.get((f"obs_{feature}", "legate")), by.get((f"obs_{feature}", "envoy"))
        if not (lg and ev and lg.get("added_cpu_us") is not None
                and ev.get("added_cpu_us") is not None):
            continue
        lines.append(f"{label}: legate +{lg['added_cpu_us']:.1f} µs/request "
                     f"(x{lg['cpu_vs_plain']:.2f} of plain), envoy "
                     f"+{ev['added_cpu_us']:.1f} µs/request (x{ev['cpu_vs_plain']:.2f}); "
                     f"legate / envoy CPU with it {lg.get('cpu_vs_envoy', 0):.2f}")
    return lines


def run(ctx):
    out = tracing_and_logs(ctx)
    out.extend(lrs(ctx))
    add_ratios(out)
    return {"results": out, "targets": targets(out), "context": context(out)}


def only(*parts):
    def run_parts(ctx):
        out = []
        for part in parts:
            out.extend(part(ctx))
        add_ratios(out)
        return {"results": out, "targets": targets(out), "context": context(out)}
    return run_parts


if __name__ == "__main__":
    # `python3 bench/observability.py [tracing|lrs]` (BENCH_QUICK=1 for short loads).
    parts = {"tracing": tracing_and_logs, "lrs": lrs}
    chosen = [parts[a] for a in sys.argv[1:]]
    lib.run_alone(only(*chosen) if chosen else run, "observability")
