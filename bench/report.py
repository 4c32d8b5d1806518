"""The bench's outputs: the stdout table, docs/benchmarks.md and its SVG latency chart."""

import os

MARK_BEGIN = "<!-- hand-written: kept by bench/report.py -->"
MARK_END = "<!-- end hand-written -->"

COLUMNS = [
    ("rps", "req/s", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("added_p50_ms", "+p50 ms", "{:.2f}"),
    ("added_p99_ms", "+p99 ms", "{:.2f}"),
    ("cpu_us_per_request", "CPU µs/req", "{:.1f}"),
    ("rss_idle_kb", "RSS idle KiB", "{:.0f}"),
    ("rss_load_kb", "RSS load KiB", "{:.0f}"),
    ("errors", "errors", "{:.0f}"),
]


def _fmt(v, f):
    return "" if v is None else f.format(v)


def rows(doc):
    out = []
    for r in doc["results"]:
        m = r["median"]
        if not any(m.get(k) is not None for k, _, _ in COLUMNS) or is_observability(r):
            continue
        out.append([r["scenario"], r["contender"]] + [_fmt(m.get(k), f) for k, _, f in COLUMNS])
    return out


def other_results(doc):
    """Results whose metrics are not in the main table (scale, fan-out): key=value lists."""
    keys = {k for k, _, _ in COLUMNS}
    out = []
    for r in doc["results"]:
        m = r["median"]
        extra = {k: v for k, v in m.items() if k not in keys and isinstance(v, (int, float))}
        if extra and not any(m.get(k) is not None for k in ("rps",)):
            out.append((r["scenario"], r["contender"], extra))
    return out


# What observability costs (bench/observability.py): one row per feature, legate beside Envoy.
OBS_FEATURES = [
    ("trace_100", "tracing, 100% sampled"),
    ("trace_1", "tracing, 1% sampled"),
    ("access_log", "access log (file, default format)"),
    ("lrs_on", "load reports (LRS, 1 s)"),
]
OBS_HEAD = ["feature", "legate µs/req", "legate vs plain", "legate added µs",
            "envoy µs/req", "envoy vs plain", "envoy added µs", "legate / envoy CPU",
            "legate / envoy req/s", "p99 ms legate / envoy", "delivered"]


# What the HTTP filters cost (bench/filters.py), the same table.
FILTER_FEATURES = [
    ("rate_limit", "local rate limit (token taken, never refused)"),
    ("credential", "credential injection (generic secret in a header)"),
]


def is_observability(r):
    """A feature-cost result (observability or filters): in its own table, not the main one."""
    return r["scenario"].startswith(("obs_", "flt_"))


def _delivered(m):
    """What a feature produced per request: spans at the collector, log lines, reports."""
    if m.get("collector_spans_per_request") is not None:
        return f"{m['collector_spans_per_request']:.3f} spans/req"
    if m.get("log_lines_per_request") is not None:
        return f"{m['log_lines_per_request']:.3f} lines/req"
    if m.get("lrs_reports_received") is not None:
        return f"{m['lrs_reports_received']:.0f} reports"
    return ""


def observability_rows(doc, tag="obs_", features=None, bases=None):
    """One row per feature (`tag` + name) with legate beside Envoy, after the base rows."""
    features = OBS_FEATURES if features is None else features
    bases = (("plain", "obs_plain"), ("plain, configured over xDS", "obs_lrs_off")) \
        if bases is None else bases
    by = {(r["scenario"], r["contender"]): r["median"] for r in doc["results"]}
    out = []
    for base_label, base in bases:
        lg, ev = by.get((base, "legate")), by.get((base, "envoy"))
        if lg and ev:
            out.append([base_label, _fmt(lg.get("cpu_us_per_request"), "{:.1f}"), "1", "0",
                        _fmt(ev.get("cpu_us_per_request"), "{:.1f}"), "1", "0",
                        _fmt(lg.get("cpu_vs_envoy"), "{:.2f}"),
                        _fmt(lg.get("rps_vs_envoy"), "{:.2f}"),
                        f"{_fmt(lg.get('p99_ms'), '{:.2f}')} / {_fmt(ev.get('p99_ms'), '{:.2f}')}",
                        ""])
    for feature, label in features:
        lg, ev = by.get((f"{tag}{feature}", "legate")), by.get((f"{tag}{feature}", "envoy"))
        if not (lg and ev):
            continue
        out.append([label, _fmt(lg.get("cpu_us_per_request"), "{:.1f}"),
                    _fmt(lg.get("cpu_vs_plain"), "x{:.2f}"),
                    _fmt(lg.get("added_cpu_us"), "{:+.1f}"),
                    _fmt(ev.get("cpu_us_per_request"), "{:.1f}"),
                    _fmt(ev.get("cpu_vs_plain"), "x{:.2f}"),
                    _fmt(ev.get("added_cpu_us"), "{:+.1f}"),
                    _fmt(lg.get("cpu_vs_envoy"), "{:.2f}"),
                    _fmt(lg.get("rps_vs_envoy"), "{:.2f}"),
                    f"{_fmt(lg.get('p99_ms'), '{:.2f}')} / {_fmt(ev.get('p99_ms'), '{:.2f}')}",
                    f"{_delivered(lg)} / {_delivered(ev)}"])
    return out


def filter_rows(doc):
    return observability_rows(doc, "flt_", FILTER_FEATURES,
                              (("plain, configured over xDS", "flt_plain"),))


def _text_table(head, body):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else []
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    for r in body:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    return lines


def table(doc):
    head = ["scenario", "contender"] + [h for _, h, _ in COLUMNS]
    lines = _text_table(head, rows(doc))
    for scenario, contender, extra in other_results(doc):
        lines.append(f"{scenario} {contender}: " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(extra.items())))
    obs = observability_rows(doc)
    if obs:
        lines += ["", "observability (http1_small, CPU per request against the same proxy "
                      "without the feature):"]
        lines += _text_table(OBS_HEAD, obs)
    flt = filter_rows(doc)
    if flt:
        lines += ["", "HTTP filters (http1_small, configured by legate-cp, CPU per request "
                      "against the same proxy without the policy):"]
        lines += _text_table(OBS_HEAD, flt)
    lines.append("")
    for t in doc["targets"]:
        lines.append(f"{'PASS' if t['pass'] else 'MISS'}  {t['name']}: {t['value']} "
                     f"(threshold {t['threshold']}; {t['detail']})")
    for c in doc.get("context", []):
        lines.append(f"INFO  {c}")
    if doc.get("skipped"):
        lines.append(f"not measured (scenario module missing): {', '.join(doc['skipped'])}")
    return "\n".join(lines)


def svg(doc):
    """Grouped bars of p50 and p99 latency per contender, one group per scenario."""
    data = [(r["scenario"], r["contender"], r["median"].get("p50_ms"), r["median"].get("p99_ms"))
            for r in doc["results"]
            if r["median"].get("p99_ms") is not None and r["contender"] in ("direct", "legate", "envoy")
            and not is_observability(r)]
    scenarios = sorted({d[0] for d in data})
    contenders = ["direct", "legate", "envoy"]
    colors = {"direct": "#8c8c8c", "legate": "#2a7ab9", "envoy": "#d9822b"}
    vmax = max([d[3] for d in data] + [1.0])
    w, h, left, bottom, top = 760, 360, 60, 60, 30
    group_w = (w - left - 20) / max(len(scenarios), 1)
    bar_w = group_w / (len(contenders) * 2 + 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="18" font-size="13">Latency per contender (p50 solid, '
             f'p99 light), ms</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="#000"/>']
    plot_h = h - bottom - top
    for i in range(5):
        v = vmax * i / 4
        y = h - bottom - plot_h * i / 4
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" stroke="#eee"/>')
    for gi, s in enumerate(scenarios):
        gx = left + gi * group_w + bar_w / 2
        for ci, c in enumerate(contenders):
            row = next((d for d in data if d[0] == s and d[1] == c), None)
            if not row:
                continue
            for k, (val, opacity) in enumerate(((row[2], 1.0), (row[3], 0.45))):
                if val is None:
                    continue
                bh = plot_h * val / vmax
                x = gx + (ci * 2 + k) * bar_w
                parts.append(f'<rect x="{x:.1f}" y="{h - bottom - bh:.1f}" width="{bar_w - 1:.1f}" '
                             f'height="{bh:.1f}" fill="{colors[c]}" fill-opacity="{opacity}"/>')
        parts.append(f'<text x="{gx + group_w / 2 - bar_w:.1f}" y="{h - bottom + 16}" '
                     f'text-anchor="middle">{s}</text>')
    for ci, c in enumerate(contenders):
        x = left + ci * 110
        parts.append(f'<rect x="{x}" y="{h - 24}" width="12" height="12" fill="{colors[c]}"/>')
        parts.append(f'<text x="{x + 16}" y="{h - 14}">{c}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def module_dates(doc):
    """When the figures come from runs of different modules (`BENCH_MODULES`), each module's
    run date."""
    runs = doc.get("module_runs") or {}
    if len({r.get("date") for r in runs.values()}) <= 1:
        return ""
    return " Figures by module, from separate runs: " + "; ".join(
        f"{name} {r.get('date')}{' (quick)' if r.get('quick') else ''}"
        for name, r in runs.items()) + "."


def write_docs(doc, docs_dir):
    path = os.path.join(docs_dir, "benchmarks.md")
    kept = f"{MARK_BEGIN}\n## What we changed and its effect\n\n(nothing recorded yet)\n{MARK_END}"
    if os.path.exists(path):
        text = open(path).read()
        if MARK_BEGIN in text and MARK_END in text:
            kept = text[text.index(MARK_BEGIN):text.index(MARK_END) + len(MARK_END)]
    m = doc["machine"]
    head = ["scenario", "contender"] + [h for _, h, _ in COLUMNS]
    md = ["# Benchmarks", "",
          "Generated by `make bench` (`bench/run.py`); raw rounds in `bench/results/latest.json`. "
          "Every figure is a median over the rounds of one run, contenders interleaved; the proxy "
          "under test is pinned to CPU 0 with one worker (`--concurrency 1` for both), the load "
          "generator and the upstream to CPU 1. Targets are ratios from the same run.", "",
          f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, "
          f"{' '.join(m.get('envoy') or [])}; run {m['date']}"
          f"{' (quick smoke run)' if doc.get('quick') else ''}.{module_dates(doc)}", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows(doc):
        md.append("| " + " | ".join(r) + " |")
    md.append("")
    others = other_results(doc)
    if others:
        md += ["| scenario | contender | figures |", "|---|---|---|"]
        for scenario, contender, extra in others:
            md.append(f"| {scenario} | {contender} | " + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(extra.items())) + " |")
        md.append("")
    obs = observability_rows(doc)
    if obs:
        md += ["## What observability costs", "",
               "`bench/observability.py`: the `http1_small` load against legate and Envoy "
               "each with one feature on, beside the same proxy without it, in interleaved "
               "rounds. Tracing is HCM `tracing` with `envoy.tracers.opentelemetry` "
               "(`spawn_upstream_span`, so two spans per sampled request) to its own "
               "`legate-otlp-sink`, a real OTLP/gRPC server that decodes and drops; the access "
               "log is the file logger with Envoy's default format; load reports go to "
               "legate-cp every second, both proxies configured by it over ADS (so their "
               "baseline is the xDS-configured run). \"vs plain\" is CPU per request with the "
               "feature over without it; \"delivered\" is what reached the collector, the "
               "file or legate-cp, legate / Envoy.", "",
               "| " + " | ".join(OBS_HEAD) + " |", "|" + "---|" * len(OBS_HEAD)]
        md += ["| " + " | ".join(r) + " |" for r in obs]
        md.append("")
    flt = filter_rows(doc)
    if flt:
        md += ["## What the HTTP filters cost", "",
               "`bench/filters.py`: the `http1_small` load against legate and Envoy, both "
               "configured over ADS by legate-cp from a one-service mesh with the policy on, "
               "beside the same mesh without it, in interleaved rounds. The rate limit's "
               "bucket is never emptied by the load, so every request takes a token and "
               "passes; the credential is a generic secret over SDS put in a header.", "",
               "| " + " | ".join(OBS_HEAD) + " |", "|" + "---|" * len(OBS_HEAD)]
        md += ["| " + " | ".join(r) + " |" for r in flt]
        md.append("")
    md += ["## Targets", ""]
    for t in doc["targets"]:
        md.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['name']}: {t['value']} "
                  f"(threshold {t['threshold']}; {t['detail']})")
    if doc.get("skipped"):
        md.append(f"- not measured in this run: {', '.join(doc['skipped'])}")
    if doc.get("context"):
        md += ["", "Context (not targets): `floor` is `legate-bench-floor`, a tokio + hyper proxy "
               "with nothing but forwarding, on the same core; its ratio to Envoy is this "
               "design's ceiling on the machine.", ""]
        md += [f"- {c}" for c in doc["context"]]
    md += ["", "![latency per contender](benchmarks-latency.svg)", "", kept, ""]
    with open(path, "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(docs_dir, "benchmarks-latency.svg"), "w") as f:
        f.write(svg(doc))
