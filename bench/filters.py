"""What the HTTP filters cost: legate and Envoy configured by legate-cp from a one-service
mesh with a filter's policy on, beside the same proxy configured without it.

The load is the data-plane's `http1_small` (wrk, 32 keep-alive connections, 100-byte
answers) on the same layout as `observability.py` (the proxy under test on CPU 0 with one
worker; wrk, the upstream and legate-cp on CPU 1); contenders are interleaved inside every
round. The figure that matters is the proxy's CPU time per request against plain proxying.

- `flt_plain`: no policy.
- `flt_rate_limit`: `policies.rate_limit` with a bucket the load never empties, so every
  request takes a token and passes: the cost of the check, not of refusals.
- `flt_credential`: `policies.credentials` with a generic secret (a `secrets` entry with a
  `value` file legate-cp serves over SDS) put in `x-api-key`: the cost of injecting a
  credential. (OAuth2 costs the same per request: the token is fetched in the background.)

Ratios (`cpu_vs_plain`, `added_cpu_us`, `cpu_vs_envoy`) are added to each result's median.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib  # noqa: E402
import observability  # noqa: E402

TAG = "flt_"

# Each feature's `policies:` block, indented under the mesh's one service.
POLICIES = {
    "plain": "",
    "rate_limit": "    policies:\n"
                  "      rate_limit: {requests: 1000000000, per: 1s}\n",
}

LABELS = {"rate_limit": "local rate limit (a token taken, never refused)",
          "credential": "credential injection (a generic secret in a header)"}


def with_credential(workdir):
    """POLICIES plus `credential`, whose secret file is written in `workdir` (the mesh's
    top-level `secrets:` follows the service's policies)."""
    key = os.path.join(workdir, "flt-api-key")
    with open(key, "w") as f:
        f.write("bench-api-key\n")
    out = dict(POLICIES)
    out["credential"] = ("    policies:\n"
                         "      credentials: {header: x-api-key, secret: api-key}\n"
                         f"secrets:\n  - {{name: api-key, value: {key}}}\n")
    return out


def context(out):
    by = {(o["scenario"], o["contender"]): o["median"] for o in out}
    lines = []
    for feature, label in LABELS.items():
        lg, ev = by.get((TAG + feature, "legate")), by.get((TAG + feature, "envoy"))
        if not (lg and ev and lg.get("added_cpu_us") is not None
                and ev.get("added_cpu_us") is not None):
            continue
        lines.append(f"{label}: legate +{lg['added_cpu_us']:.1f} µs/request "
                     f"(x{lg['cpu_vs_plain']:.2f} of plain), envoy "
                     f"+{ev['added_cpu_us']:.1f} µs/request (x{ev['cpu_vs_plain']:.2f})")
    return lines


def run(ctx):
    policies = with_credential(ctx["workdir"])
    out = observability.cp_configured(ctx, TAG, list(policies), policies=policies.get,
                                      base_id=30)
    observability.add_ratios(out, TAG, lambda feature: "plain")
    return {"results": out, "targets": [], "context": context(out)}


if __name__ == "__main__":
    # `python3 bench/filters.py` (BENCH_QUICK=1 for short loads).
    lib.run_alone(run, "filters")
