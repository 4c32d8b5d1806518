"""Process and measurement helpers shared by the bench scenarios (stdlib only).

Every process a scenario starts is tracked by PID and stopped by that PID; nothing else is
ever signalled. Traffic stays on 127.0.0.1.
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, ok=lambda status, body: status == 200, timeout=30.0):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            status, body = http_get(url)
            if ok(status, body):
                return body
            last = f"status {status}"
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


class Procs:
    """The processes a scenario started; `stop_all` ends them by PID."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, argv, cpu=None):
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        log = open(os.path.join(self.logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop(self, p, timeout=10.0):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def settled_rss_kb(pid, timeout=15.0, window=2.0):
    """VmRSS once it has stopped moving: sampled every 0.25 s until the samples of the last
    `window` seconds are within 1% of each other (allocators hand freed memory back over a
    second or so), or `timeout` passes. The same rule for every contender."""
    samples = []
    end = time.time() + timeout
    while time.time() < end:
        samples.append((time.time(), rss_kb(pid)))
        recent = [v for t, v in samples if t >= samples[-1][0] - window]
        if samples[-1][0] - samples[0][0] >= window and max(recent) <= min(recent) * 1.01:
            break
        time.sleep(0.25)
    return samples[-1][1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RssSampler:
    """Samples a process's RSS every `period` seconds in a thread; `peak_kb` is the max."""

    def __init__(self, pid, period=0.2):
        self.pid, self.period, self.peak_kb = pid, period, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            except OSError:
                return
            self._stop.wait(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def parse_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        raise ValueError(f"unreadable duration {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url, connections, duration_s, cpu):
    """Run wrk (one thread, keep-alive) and return requests, rps, p50/p99 ms and errors."""
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s",
         "--latency", url],
        capture_output=True, text=True, timeout=duration_s + 60, check=True,
    ).stdout
    res = {"requests": 0, "errors": 0}
    for line in out.splitlines():
        parts = line.split()
        if "requests in" in line:
            res["requests"] = int(parts[0])
        elif line.strip().startswith("Requests/sec:"):
            res["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            res["p50_ms"] = parse_duration_ms(parts[1])
        elif parts[:1] == ["99%"]:
            res["p99_ms"] = parse_duration_ms(parts[1])
        elif line.strip().startswith("Non-2xx"):
            res["errors"] += int(parts[-1])
        elif line.strip().startswith("Socket errors:"):
            res["errors"] += sum(int(x) for x in re.findall(r"\d+", line))
    return res


def h2load(url, connections, streams, requests, cpu, logdir):
    """Run h2load over cleartext HTTP/2 (prior knowledge) and compute percentiles from its
    per-request log."""
    log = os.path.join(logdir, "h2load-requests.tsv")
    if os.path.exists(log):
        os.remove(log)
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "h2load", "-c", str(connections), "-m", str(streams),
         "-n", str(requests), "--log-file", log, url],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    res = {"requests": 0, "errors": 0}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    if m:
        res["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if m:
        res["requests"] = int(m.group(4))
        res["errors"] = int(m.group(5)) + int(m.group(6)) + (int(m.group(1)) - int(m.group(3)))
    lat = []
    with open(log) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3:
                lat.append(int(cols[2]) / 1000.0)
    if lat:
        lat.sort()
        res["p50_ms"] = lat[len(lat) // 2]
        res["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return res


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def dump_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def bin_dir(target):
    """The binaries under test: `$CARGO_TARGET_DIR/release`, or `BENCH_BIN_DIR` to try a
    scenario against another build (a debug build's figures are not results)."""
    return os.environ.get("BENCH_BIN_DIR") or os.path.join(target, "release")


def envoy_bin(root):
    """Envoy as the tests find it: `$ENVOY_BIN`, else the peers' virtualenv
    (`$LEGATE_PEERS_VENV`, default `<root>/.venv`)."""
    venv = os.environ.get("LEGATE_PEERS_VENV") or os.path.join(root, ".venv")
    return os.environ.get("ENVOY_BIN") or os.path.join(venv, "bin", "envoy")


def run_alone(run, name):
    """Runs one scenario module by itself (`python3 bench/<name>.py`) and prints its targets;
    BENCH_QUICK=1 as for `make bench`."""
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wd = tempfile.mkdtemp(prefix=f"legate-{name}-")
    os.makedirs(os.path.join(wd, "logs"))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    out = run({"root": root, "bin": bin_dir(target),
               "envoy": envoy_bin(root),
               "quick": os.environ.get("BENCH_QUICK") == "1", "workdir": wd,
               "logdir": os.path.join(wd, "logs")})
    print(json.dumps(out["targets"], indent=2))
    for c in out.get("context", []):
        print("INFO ", c)
    for r in out.get("results", []):
        m = r["median"]
        print(f"RESULT {r['scenario']:28} {r['contender']:8} "
              + " ".join(f"{k}={v:.1f}" for k, v in sorted(m.items())
                         if isinstance(v, (int, float))))
