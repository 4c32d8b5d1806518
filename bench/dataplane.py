"""Data-plane scenarios: direct vs legate vs Envoy on the same upstream, and hot swap under
load.

Layout on this 2-core machine: the proxy under test is pinned to CPU 0, the load generator
and the upstream to CPU 1. Both proxies run one worker (`--concurrency 1`) with equivalent
static configuration: one listener (codec auto), one catch-all route with a 5 s timeout, one
static HTTP/1.1 cluster with the upstream. Contenders are interleaved inside every round.

A fourth contender, `floor` (`legate-bench-floor`), is the least a tokio + hyper proxy can
do (no routing, header edits, timeouts or metrics) on the same core: its ratio to Envoy is
the ceiling of this design on the machine, and legate's ratio to it is what legate's own
features cost. A fifth, `floor-paired` (HTTP/1.1 only), is the same with one upstream
connection per downstream connection driven in the same task, to see whether keeping each
request in one task goes past `floor` (on this machine it did not). Those ratios are reported as context, not targets.
"""

import os
import subprocess
import sys
import time

import lib

PROXY_CPU, LOAD_CPU = 0, 1

LEGATE_YAML = """\
admin:
  address: 127.0.0.1:{admin}
mesh:
  listeners:
    - name: outbound
      address: 127.0.0.1:{port}
      protocol: auto
      route_config: outbound
  route_configs:
    - name: outbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - name: all
              match: {{prefix: /}}
              forward: {{cluster: upstream, timeout: 5s}}
  clusters:
    - name: upstream
      endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"""

ENVOY_YAML = """\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: AUTO
          route_config:
            name: outbound
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: upstream, timeout: 5s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""

# The hot-swap mesh for legate-cp: one service with two versions on the same upstream, so
# every weight change is a real route push and every answer is a 200.
HOTSWAP_MESH = """\
proxy:
  listener: {{name: outbound, address: 127.0.0.1:{port}, protocol: auto}}
services:
  - name: svc
    versions:
      - name: a
        weight: 50
        endpoints: [{{address: 127.0.0.1:{upstream}}}]
      - name: b
        weight: 50
        endpoints: [{{address: 127.0.0.1:{upstream}}}]
    route: {{prefix: /, timeout: 5s}}
"""


# The TLS scenario: both proxies take plaintext HTTP/1.1 from wrk and forward over TLS to the
# same upstream (the demo upstream serving TLS, HTTP/1.1 by ALPN), verifying its certificate
# against the same CA file and sending the same SNI. `/per-connection` goes to a second
# cluster whose connections carry one request each (max_requests_per_connection: 1), so every
# request pays a full handshake. Both sides use their defaults otherwise (TLS 1.2, Envoy's
# client default, which legate follows).
LEGATE_TLS_YAML = """\
admin:
  address: 127.0.0.1:{admin}
mesh:
  listeners:
    - name: outbound
      address: 127.0.0.1:{port}
      protocol: auto
      route_config: outbound
  route_configs:
    - name: outbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - name: per-connection
              match: {{prefix: /per-connection}}
              forward: {{cluster: upstream-per-connection, timeout: 5s}}
            - name: all
              match: {{prefix: /}}
              forward: {{cluster: upstream, timeout: 5s}}
  clusters:
    - name: upstream
      tls: {{sni: up.test, ca_file: "{ca}"}}
      endpoints: [{{address: "127.0.0.1:{upstream}"}}]
    - name: upstream-per-connection
      max_requests_per_connection: 1
      tls: {{sni: up.test, ca_file: "{ca}"}}
      endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"""

ENVOY_TLS_CLUSTER = """\
  - name: {name}
    connect_timeout: 5s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http_protocol_options: {{}}}}{common}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: up.test
        common_tls_context:
          validation_context: {{trusted_ca: {{filename: "{ca}"}}}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""

ENVOY_TLS_YAML = """\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: AUTO
          route_config:
            name: outbound
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: {{prefix: /per-connection}}
                route: {{cluster: upstream-per-connection, timeout: 5s}}
              - match: {{prefix: /}}
                route: {{cluster: upstream, timeout: 5s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"""


def workloads(quick):
    d = 2 if quick else 8
    return [
        {"scenario": "http1_small", "kind": "wrk", "path": "/?size=100", "connections": 32,
         "duration": d},
        {"scenario": "http1_1mib", "kind": "wrk", "path": "/?size=1048576", "connections": 8,
         "duration": d},
        {"scenario": "h2c_small", "kind": "h2load", "path": "/?size=100", "connections": 16,
         "streams": 8, "requests": 20000 if quick else 150000},
    ]


def measure(w, port, pid, logdir):
    url = f"http://127.0.0.1:{port}{w['path']}"
    cpu0 = lib.cpu_seconds(pid) if pid else 0.0
    sampler = lib.RssSampler(pid) if pid else None
    if sampler:
        sampler.__enter__()
    try:
        if w["kind"] == "wrk":
            r = lib.wrk(url, w["connections"], w["duration"], LOAD_CPU)
        else:
            r = lib.h2load(url, w["connections"], w["streams"], w["requests"], LOAD_CPU, logdir)
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    if pid:
        cpu = lib.cpu_seconds(pid) - cpu0
        r["cpu_us_per_request"] = cpu * 1e6 / max(r["requests"], 1)
        r["cpu_s_per_100k"] = cpu * 1e5 / max(r["requests"], 1)
        r["rss_load_kb"] = sampler.peak_kb
    return r


def run(ctx):
    out = throughput(ctx)
    out.extend(hot_swap(ctx))
    out.extend(tls(ctx))
    return {"results": out, "targets": targets(out), "context": context(out)}


def throughput(ctx):
    """direct, legate, Envoy and the floors on the same plaintext upstream."""
    procs = lib.Procs(ctx["logdir"])
    rounds = 1 if ctx["quick"] else 3
    results = {}
    try:
        up_port = lib.free_port()
        procs.start("upstream", [os.path.join(ctx["bin"], "legate-demo-upstream"), "--listen",
                                 f"127.0.0.1:{up_port}", "--name", "up", "--protocol", "auto"],
                    cpu=LOAD_CPU)
        lib.wait_port(up_port)

        lg_port, lg_admin = lib.free_port(), lib.free_port()
        lg_cfg = os.path.join(ctx["workdir"], "legate.yaml")
        with open(lg_cfg, "w") as f:
            f.write(LEGATE_YAML.format(admin=lg_admin, port=lg_port, upstream=up_port))
        legate = procs.start("legate", [os.path.join(ctx["bin"], "legate"), "--config", lg_cfg,
                                        "--concurrency", "1", "--log-level", "warn"],
                             cpu=PROXY_CPU)

        fl_port = lib.free_port()
        floor = procs.start("floor", [os.path.join(ctx["bin"], "legate-bench-floor"), "--listen",
                                      f"127.0.0.1:{fl_port}", "--upstream",
                                      f"127.0.0.1:{up_port}"], cpu=PROXY_CPU)

        fp_port = lib.free_port()
        paired = procs.start("floor-paired", [
            os.path.join(ctx["bin"], "legate-bench-floor"), "--listen", f"127.0.0.1:{fp_port}",
            "--upstream", f"127.0.0.1:{up_port}", "--mode", "per-connection"], cpu=PROXY_CPU)

        ev_port, ev_admin = lib.free_port(), lib.free_port()
        ev_cfg = os.path.join(ctx["workdir"], "envoy.yaml")
        with open(ev_cfg, "w") as f:
            f.write(ENVOY_YAML.format(admin=ev_admin, port=ev_port, upstream=up_port))
        envoy = procs.start("envoy", [ctx["envoy"], "-c", ev_cfg, "--concurrency", "1",
                                      "-l", "warn", "--base-id", str(os.getpid() % 60000)],
                            cpu=PROXY_CPU)
        for port in (lg_port, ev_port, fl_port, fp_port):
            lib.wait_http(f"http://127.0.0.1:{port}/?size=10")
        time.sleep(1.0)
        idle = {"legate": lib.settled_rss_kb(legate.pid), "envoy": lib.settled_rss_kb(envoy.pid)}

        contenders = [("direct", up_port, None), ("legate", lg_port, legate.pid),
                      ("envoy", ev_port, envoy.pid), ("floor", fl_port, floor.pid),
                      ("floor-paired", fp_port, paired.pid)]
        for rnd in range(rounds):
            for w in workloads(ctx["quick"]):
                for name, port, pid in contenders:
                    if name == "floor-paired" and w["kind"] != "wrk":
                        continue  # it serves HTTP/1.1 only
                    r = measure(w, port, pid, ctx["logdir"])
                    if name in idle:
                        r["rss_idle_kb"] = idle[name]
                    r["round"] = rnd + 1
                    results.setdefault((w["scenario"], name), []).append(r)
                    print(f"  round {rnd + 1} {w['scenario']:12} {name:7} "
                          f"{r.get('rps', 0):9.0f} req/s p99 {r.get('p99_ms', 0):7.2f} ms "
                          f"errors {r['errors']}", flush=True)
    finally:
        procs.stop_all()

    out = []
    for (scenario, contender), rs in results.items():
        med = {k: lib.median([r.get(k) for r in rs]) for k in
               ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "cpu_s_per_100k",
                "rss_idle_kb", "rss_load_kb", "errors")}
        out.append({"scenario": scenario, "contender": contender, "median": med, "rounds": rs})
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    for o in out:
        direct = by.get((o["scenario"], "direct"))
        if direct and o["contender"] != "direct":
            for q in ("p50_ms", "p99_ms"):
                if o["median"].get(q) is not None and direct.get(q) is not None:
                    o["median"][f"added_{q}"] = o["median"][q] - direct[q]
    return out


def tls_workloads(quick):
    d = 2 if quick else 8
    return [
        {"scenario": "tls_keepalive", "kind": "wrk", "path": "/?size=100", "connections": 32,
         "duration": d},
        # One upstream connection (so one full handshake) per request.
        {"scenario": "tls_handshake_per_request", "kind": "wrk",
         "path": "/per-connection?size=100", "connections": 32, "duration": d},
    ]


def tool(ctx, name):
    """A helper binary (certificates only: any build will do) from the bench's binaries, or
    the debug build next to them."""
    path = os.path.join(ctx["bin"], name)
    if os.path.exists(path):
        return path
    return os.path.join(os.path.dirname(ctx["bin"]), "debug", name)


def tls(ctx):
    """legate and Envoy proxying plaintext HTTP/1.1 to the same TLS upstream."""
    procs = lib.Procs(ctx["logdir"])
    rounds = 1 if ctx["quick"] else 3
    results = {}
    try:
        certs = os.path.join(ctx["workdir"], "tls-certs")
        subprocess.run([tool(ctx, "legatectl"), "certs", "--out", certs, "--host", "up.test"],
                       check=True, capture_output=True)
        ca = os.path.join(certs, "ca.pem")
        up_port = lib.free_port()
        procs.start("tls-upstream", [
            os.path.join(ctx["bin"], "legate-demo-upstream"), "--listen",
            f"127.0.0.1:{up_port}", "--name", "up", "--protocol", "http1",
            "--tls-cert", os.path.join(certs, "up.test.pem"),
            "--tls-key", os.path.join(certs, "up.test.key")], cpu=LOAD_CPU)
        lib.wait_port(up_port)

        lg_port, lg_admin = lib.free_port(), lib.free_port()
        lg_cfg = os.path.join(ctx["workdir"], "legate-tls.yaml")
        with open(lg_cfg, "w") as f:
            f.write(LEGATE_TLS_YAML.format(admin=lg_admin, port=lg_port, upstream=up_port, ca=ca))
        check = subprocess.run([os.path.join(ctx["bin"], "legate"), "--config", lg_cfg,
                                "--validate"], capture_output=True, text=True)
        if check.returncode != 0:
            # A configuration legate refuses (a build without the mesh's cluster `tls:`) has
            # no equivalent to measure: say why and go on.
            print("  tls: not run, legate refuses the configuration: "
                  + (check.stderr or check.stdout).strip().splitlines()[-1], flush=True)
            return []
        legate = procs.start("tls-legate", [
            os.path.join(ctx["bin"], "legate"), "--config", lg_cfg, "--concurrency", "1",
            "--log-level", "warn"], cpu=PROXY_CPU)

        ev_port, ev_admin = lib.free_port(), lib.free_port()
        ev_cfg = os.path.join(ctx["workdir"], "envoy-tls.yaml")
        per_conn = ("\n        common_http_protocol_options: "
                    "{max_requests_per_connection: 1}")
        clusters = "".join(ENVOY_TLS_CLUSTER.format(name=n, common=c, upstream=up_port, ca=ca)
                           for n, c in (("upstream", ""), ("upstream-per-connection", per_conn)))
        with open(ev_cfg, "w") as f:
            f.write(ENVOY_TLS_YAML.format(admin=ev_admin, port=ev_port, clusters=clusters))
        envoy = procs.start("tls-envoy", [
            ctx["envoy"], "-c", ev_cfg, "--concurrency", "1", "-l", "warn", "--base-id",
            str((os.getpid() + 1) % 60000)], cpu=PROXY_CPU)
        for port in (lg_port, ev_port):
            lib.wait_http(f"http://127.0.0.1:{port}/?size=10")
            lib.wait_http(f"http://127.0.0.1:{port}/per-connection?size=10")

        contenders = [("legate", lg_port, legate.pid), ("envoy", ev_port, envoy.pid)]
        for rnd in range(rounds):
            for w in tls_workloads(ctx["quick"]):
                for name, port, pid in contenders:
                    r = measure(w, port, pid, ctx["logdir"])
                    r["round"] = rnd + 1
                    results.setdefault((w["scenario"], name), []).append(r)
                    print(f"  round {rnd + 1} {w['scenario']:25} {name:7} "
                          f"{r.get('rps', 0):9.0f} req/s p99 {r.get('p99_ms', 0):7.2f} ms "
                          f"CPU {r.get('cpu_us_per_request', 0):6.1f} us/req "
                          f"errors {r['errors']}", flush=True)
    finally:
        procs.stop_all()
    out = []
    for (scenario, contender), rs in results.items():
        med = {k: lib.median([r.get(k) for r in rs]) for k in
               ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "cpu_s_per_100k",
                "rss_load_kb", "errors")}
        out.append({"scenario": scenario, "contender": contender, "median": med, "rounds": rs})
    # What one full handshake costs: the CPU per request with a new upstream connection each
    # time, less the CPU per request on kept-alive connections.
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    for o in out:
        if o["scenario"] != "tls_handshake_per_request":
            continue
        keep = by.get(("tls_keepalive", o["contender"]), {})
        if keep.get("cpu_us_per_request") and o["median"].get("cpu_us_per_request"):
            o["median"]["handshake_cpu_us"] = (o["median"]["cpu_us_per_request"]
                                               - keep["cpu_us_per_request"])
    return out


def hot_swap(ctx):
    """legate fed by legate-cp; a weight change every 100 ms during a load run."""
    procs = lib.Procs(ctx["logdir"])
    duration = 3 if ctx["quick"] else 10
    out = []
    try:
        up_port = lib.free_port()
        procs.start("hs-upstream", [os.path.join(ctx["bin"], "legate-demo-upstream"),
                                    "--listen", f"127.0.0.1:{up_port}", "--name", "up"],
                    cpu=LOAD_CPU)
        lib.wait_port(up_port)
        port, xds, admin, lg_admin = (lib.free_port() for _ in range(4))
        mesh = os.path.join(ctx["workdir"], "hotswap-mesh.yaml")
        with open(mesh, "w") as f:
            f.write(HOTSWAP_MESH.format(port=port, upstream=up_port))
        procs.start("hs-legate-cp", [os.path.join(ctx["bin"], "legate-cp"), "--metrics-address", "127.0.0.1:0",
            "--config", mesh,
                                     "--xds-address", f"127.0.0.1:{xds}", "--admin-address",
                                     f"127.0.0.1:{admin}", "--data-dir",
                                     os.path.join(ctx["workdir"], "hs-cp-data")], cpu=LOAD_CPU)
        lib.wait_port(xds)
        legate = procs.start("hs-legate", [os.path.join(ctx["bin"], "legate"), "--xds-server",
                                           f"http://127.0.0.1:{xds}", "--node-id", "bench-hotswap",
                                           "--admin-address", f"127.0.0.1:{lg_admin}",
                                           "--concurrency", "1", "--log-level", "warn"],
                             cpu=PROXY_CPU)
        lib.wait_http(f"http://127.0.0.1:{port}/?size=10")
        url = f"http://127.0.0.1:{port}/?size=100"
        base = lib.wrk(url, 32, duration, LOAD_CPU)

        import subprocess
        import threading
        stop = threading.Event()
        pushes = {"ok": 0, "failed": 0}
        ctl = os.path.join(ctx["bin"], "legatectl")
        # legate-cp generated its admin token in its data directory before listening.
        token_file = os.path.join(ctx["workdir"], "hs-cp-data", "admin.token")

        def pusher():
            # A change starts every 100 ms by the clock, whatever the previous one took.
            flip, running, start, k = False, [], time.time(), 0
            while not stop.is_set():
                flip = not flip
                weights = ["a=90", "b=10"] if flip else ["a=10", "b=90"]
                running.append(subprocess.Popen(
                    [ctl, "--server", f"http://127.0.0.1:{admin}", "--token-file", token_file,
                     "set-weights", "svc", *weights],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                k += 1
                stop.wait(max(0.0, start + k * 0.1 - time.time()))
                for p in [p for p in running if p.poll() is not None]:
                    pushes["ok" if p.returncode == 0 else "failed"] += 1
                    running.remove(p)
            for p in running:
                p.wait(10)
                pushes["ok" if p.returncode == 0 else "failed"] += 1

        t = threading.Thread(target=pusher, daemon=True)
        t.start()
        swapped = lib.wrk(url, 32, duration, LOAD_CPU)
        stop.set()
        t.join()
        versions = lib.http_get(f"http://127.0.0.1:{lg_admin}/config_dump")[1]
        swapped["pushes"] = pushes["ok"]
        swapped["push_failures"] = pushes["failed"]
        swapped["config_dump_bytes"] = len(versions)
        swapped["p99_change_ms"] = swapped.get("p99_ms", 0) - base.get("p99_ms", 0)
        print(f"  hot swap: {pushes['ok']} pushes, {swapped['errors']} failed requests, "
              f"p99 {base.get('p99_ms')} -> {swapped.get('p99_ms')} ms", flush=True)
        out.append({"scenario": "hot_swap_no_pushes", "contender": "legate", "median": base,
                    "rounds": [base]})
        out.append({"scenario": "hot_swap_push_every_100ms", "contender": "legate",
                    "median": swapped, "rounds": [swapped]})
        del legate
    finally:
        procs.stop_all()
    return out


def context(out):
    """Where legate stands against the tokio + hyper floor, and what a TLS handshake costs
    (not targets)."""
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    lines = []
    for c in ("legate", "envoy"):
        h = by.get(("tls_handshake_per_request", c))
        if h and h.get("handshake_cpu_us") is not None:
            lines.append(f"tls: {c} full handshake per new upstream connection ≈ "
                         f"{h['handshake_cpu_us']:.0f} CPU µs "
                         f"({h.get('rps', 0):.0f} req/s with one connection per request)")
    for scenario, label in (("http1_small", "http1 small"), ("h2c_small", "h2c small"),
                            ("http1_1mib", "1 MiB")):
        lg, ev, fl = (by.get((scenario, c)) for c in ("legate", "envoy", "floor"))
        if not (lg and ev and fl and lg.get("rps") and ev.get("rps") and fl.get("rps")):
            continue
        line = (f"{label}: floor / envoy rps {fl['rps'] / ev['rps']:.2f}, "
                f"legate / floor rps {lg['rps'] / fl['rps']:.2f}")
        if lg.get("cpu_us_per_request") and fl.get("cpu_us_per_request"):
            line += (f"; CPU µs/request legate {lg['cpu_us_per_request']:.1f}, "
                     f"floor {fl['cpu_us_per_request']:.1f}, "
                     f"envoy {ev.get('cpu_us_per_request') or 0:.1f}")
        fp = by.get((scenario, "floor-paired"))
        if fp and fp.get("rps"):
            line += (f"; floor-paired / envoy rps {fp['rps'] / ev['rps']:.2f}"
                     + (f", CPU µs/request {fp['cpu_us_per_request']:.1f}"
                        if fp.get("cpu_us_per_request") else ""))
        lines.append(line)
    return lines


def targets(out):
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    t = []

    def ratio(name, scenario, key, threshold, higher_is_better, detail):
        lg, ev = by.get((scenario, "legate")), by.get((scenario, "envoy"))
        if not lg or not ev or lg.get(key) is None or not ev.get(key):
            return
        value = lg[key] / ev[key]
        ok = value >= threshold if higher_is_better else value <= threshold
        t.append({"name": name, "value": round(value, 3), "threshold": threshold, "pass": ok,
                  "detail": detail.format(lg=lg[key], ev=ev[key])})

    ratio("http1 small: legate rps / envoy rps >= 2", "http1_small", "rps", 2.0, True,
          "legate {lg:.0f} vs envoy {ev:.0f} req/s")
    ratio("h2c small: legate rps / envoy rps >= 2", "h2c_small", "rps", 2.0, True,
          "legate {lg:.0f} vs envoy {ev:.0f} req/s")
    ratio("1 MiB: legate rps / envoy rps >= 1", "http1_1mib", "rps", 1.0, True,
          "legate {lg:.0f} vs envoy {ev:.0f} req/s")
    ratio("http1 small: added p99 legate / envoy <= 0.5", "http1_small", "added_p99_ms", 0.5,
          False, "legate +{lg:.2f} ms vs envoy +{ev:.2f} ms")
    ratio("RSS idle: legate / envoy <= 0.25", "http1_small", "rss_idle_kb", 0.25, False,
          "legate {lg:.0f} KiB vs envoy {ev:.0f} KiB")
    ratio("tls keep-alive: legate rps / envoy rps >= 1", "tls_keepalive", "rps", 1.0, True,
          "legate {lg:.0f} vs envoy {ev:.0f} req/s")
    ratio("tls keep-alive: CPU per request legate / envoy <= 1", "tls_keepalive",
          "cpu_us_per_request", 1.0, False, "legate {lg:.1f} vs envoy {ev:.1f} µs")
    ratio("tls handshake per request: legate rps / envoy rps >= 1",
          "tls_handshake_per_request", "rps", 1.0, True,
          "legate {lg:.0f} vs envoy {ev:.0f} req/s")
    hs = by.get(("hot_swap_push_every_100ms", "legate"))
    if hs:
        t.append({"name": "hot swap: failed requests == 0", "value": hs["errors"],
                  "threshold": 0, "pass": hs["errors"] == 0 and hs.get("pushes", 0) > 0,
                  "detail": f"{hs.get('pushes')} pushes during {hs.get('requests')} requests"})
    return t


def only(*parts):
    def run_parts(ctx):
        out = []
        for part in parts:
            out.extend(part(ctx))
        return {"results": out, "targets": targets(out), "context": context(out)}
    return run_parts


if __name__ == "__main__":
    # `python3 bench/dataplane.py [throughput|hot-swap|tls]`: every data-plane scenario, or
    # one part alone (BENCH_QUICK=1 for short loads).
    parts = {"throughput": throughput, "hot-swap": hot_swap, "tls": tls}
    chosen = [parts[a] for a in sys.argv[1:]]
    lib.run_alone(only(*chosen) if chosen else run, "dataplane")
