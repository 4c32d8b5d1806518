"""Config scale: N clusters with routes delivered over xDS by legate-cp to legate and to
Envoy (one worker each). Measures push-to-applied time and RSS.

Each contender runs alone against its own legate-cp (same mesh, so the same resources):
legate-cp starts on a one-service mesh, the proxy connects and ACKs, then the mesh file is
replaced by the N-service one. Push-to-applied is from that write to the latest of the
proxy's ACKs of the new versions, as legate-cp records them (`legatectl status`,
`acked_at_unix_ms`), measured from legate-cp's "new configuration pushed" log line;
`file_to_applied_s` also counts legate-cp's file poll (<= 250 ms) and compile (`publish_s`),
the same for both contenders. RSS is the proxy's VmRSS once it settles after applying
(`lib.settled_rss_kb`: unchanged within 1% for 2 s, at most 15 s).
"""

import datetime
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib  # noqa: E402

TYPES = ("Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment")

ENVOY_BOOTSTRAP = """\
node: {{id: {node}, cluster: bench}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
    - name: xds
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{http2_protocol_options: {{}}}}
      load_assignment:
        cluster_name: xds
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}
"""


def mesh(n, listener_port, first_endpoint=None):
    """N services with a route each; `first_endpoint` (host:port) serves svc-0 when given."""
    lines = ["proxy:", f"  listener: {{name: outbound, address: 127.0.0.1:{listener_port}, protocol: auto}}",
             "services:"]
    for i in range(n):
        endpoint = f"127.0.0.1:{20000 + i % 20000}"
        if i == 0 and first_endpoint:
            endpoint = first_endpoint
        lines += [f"  - name: svc-{i}",
                  f"    endpoints: [{{address: {endpoint}}}]",
                  f"    route: {{prefix: /svc-{i}/, timeout: 5s}}"]
    return "\n".join(lines) + "\n"


def status(ctl, admin, node):
    """`ctl` is legatectl's argv prefix (binary and token file)."""
    out = subprocess.run([*ctl, "--server", f"http://127.0.0.1:{admin}", "-o", "json", "status"],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        return None
    doc = json.loads(out.stdout)
    nodes = doc.get("nodes", doc) if isinstance(doc, dict) else doc
    for n in nodes:
        if n.get("id") == node:
            return {t["type_url"].rsplit(".", 1)[-1]: t for t in n.get("types", [])}
    return None


def wait_acked(ctl, admin, node, before, timeout):
    """Wait until every type has a new version ACKed; returns (types, publish_ms) or None."""
    end = time.time() + timeout
    while time.time() < end:
        st = status(ctl, admin, node)
        if st and all(t in st for t in TYPES):
            # Every type settled (ACKed what was sent); clusters and routes are new. The
            # listener itself may not change (it only names the route configuration).
            settled = all(st[t]["acked_version"] and st[t]["acked_version"] == st[t]["sent_version"]
                          for t in TYPES)
            old = before or {}
            new = all(st[t]["acked_version"] != old.get(t, {}).get("acked_version")
                      for t in ("Cluster", "RouteConfiguration"))
            if settled and new:
                return st
        time.sleep(0.1)
    return None


def pushed_at(cp_log, after):
    """When legate-cp logged its first push after `after` (Unix seconds), from its log."""
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    with open(cp_log, errors="replace") as f:
        for line in f:
            line = ansi.sub("", line)
            if "new configuration pushed" not in line:
                continue
            ts = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
            if ts.timestamp() >= after:
                return ts.timestamp()
    return None


def one(ctx, contender, n, rnd):
    procs = lib.Procs(ctx["logdir"])
    wd = os.path.join(ctx["workdir"], f"scale-{contender}-{n}-{rnd}")
    os.makedirs(wd)
    # legate-cp generates its admin token in its data directory before it listens.
    ctl = [os.path.join(ctx["bin"], "legatectl"), "--token-file",
           os.path.join(wd, "cp-data", "admin.token")]
    node = f"bench-{contender}"
    try:
        listener, xds, admin, padmin = (lib.free_port() for _ in range(4))
        mesh_path = os.path.join(wd, "mesh.yaml")
        with open(mesh_path, "w") as f:
            f.write(mesh(1, listener))
        procs.start(f"scale-cp-{contender}-{n}", [
            os.path.join(ctx["bin"], "legate-cp"), "--metrics-address", "127.0.0.1:0",
            "--config", mesh_path, "--xds-address",
            f"127.0.0.1:{xds}", "--admin-address", f"127.0.0.1:{admin}", "--data-dir",
            os.path.join(wd, "cp-data")], cpu=1)
        lib.wait_port(xds)
        if contender == "legate":
            proxy = procs.start(f"scale-legate-{n}", [
                os.path.join(ctx["bin"], "legate"), "--xds-server", f"http://127.0.0.1:{xds}",
                "--node-id", node, "--node-cluster", "bench", "--admin-address",
                f"127.0.0.1:{padmin}", "--concurrency", "1", "--log-level", "warn"], cpu=0)
        else:
            boot = os.path.join(wd, "envoy.yaml")
            with open(boot, "w") as f:
                f.write(ENVOY_BOOTSTRAP.format(node=node, admin=padmin, xds=xds))
            proxy = procs.start(f"scale-envoy-{n}", [
                ctx["envoy"], "-c", boot, "--concurrency", "1", "-l", "warn", "--base-id",
                str(40000 + (os.getpid() + n + rnd) % 20000)], cpu=0)
        before = wait_acked(ctl, admin, node, None, 60)
        if before is None:
            raise RuntimeError(f"{contender} never ACKed the initial config")
        rss_idle = lib.settled_rss_kb(proxy.pid)
        t0 = time.time()
        tmp = mesh_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(mesh(n, listener))
        os.replace(tmp, mesh_path)
        bound = 60 if ctx["quick"] else 180
        st = wait_acked(ctl, admin, node, before, bound)
        if st is None:
            return {"error": f"not applied within {bound}s", "clusters": n}
        changed = [t for t in TYPES if st[t]["acked_version"] != before[t]["acked_version"]]
        applied = max(st[t]["acked_at_unix_ms"] for t in changed) / 1000.0
        pushed = pushed_at(os.path.join(ctx["logdir"], f"scale-cp-{contender}-{n}.log"), t0)
        rss = lib.settled_rss_kb(proxy.pid)
        return {"clusters": n, "push_to_applied_s": applied - (pushed or t0),
                "file_to_applied_s": applied - t0,
                "publish_s": (pushed - t0) if pushed else None, "rss_idle_kb": rss_idle,
                "rss_kb": rss, "kb_per_cluster": (rss - rss_idle) / n,
                "proxy_cpu_s": lib.cpu_seconds(proxy.pid)}
    finally:
        procs.stop_all()


def run(ctx):
    sizes = [1000] if ctx["quick"] else [1000, 10000]
    rounds = 1 if ctx["quick"] else 3
    results = []
    for n in sizes:
        runs = {"legate": [], "envoy": []}
        for rnd in range(rounds):
            for contender in ("legate", "envoy"):
                r = one(ctx, contender, n, rnd)
                r["round"] = rnd + 1
                runs[contender].append(r)
                print(f"  scale {n:6} {contender:6} round {rnd + 1}: "
                      + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in r.items()), flush=True)
        for contender, rs in runs.items():
            keys = ("push_to_applied_s", "rss_kb", "rss_idle_kb", "kb_per_cluster")
            med = {k: lib.median([r.get(k) for r in rs]) for k in keys}
            med["clusters"] = n
            results.append({"scenario": f"config_scale_{n}", "contender": contender,
                            "median": med, "rounds": rs})
    targets = []
    big = max(sizes)
    by = {r["contender"]: r["median"] for r in results if r["scenario"] == f"config_scale_{big}"}
    lg, ev = by.get("legate", {}), by.get("envoy", {})
    if lg.get("rss_kb") and ev.get("rss_kb"):
        v = lg["rss_kb"] / ev["rss_kb"]
        targets.append({"name": f"{big} clusters: RSS legate / envoy <= 0.2", "value": round(v, 3),
                        "threshold": 0.2, "pass": v <= 0.2,
                        "detail": f"legate {lg['rss_kb']:.0f} KiB vs envoy {ev['rss_kb']:.0f} KiB"})
    if lg.get("push_to_applied_s") and ev.get("push_to_applied_s"):
        v = lg["push_to_applied_s"] / ev["push_to_applied_s"]
        targets.append({"name": f"{big} clusters: push-to-applied legate / envoy <= 0.25",
                        "value": round(v, 3), "threshold": 0.25, "pass": v <= 0.25,
                        "detail": f"legate {lg['push_to_applied_s']:.2f} s vs envoy "
                                  f"{ev['push_to_applied_s']:.2f} s"})
    return {"results": results, "targets": targets}


if __name__ == "__main__":
    lib.run_alone(run, "scale")
