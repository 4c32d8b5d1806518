"""A gRPC server and client on grpcio (gRPC's C core), for legate's gRPC tests.

No generated code: the service `legate.test.Probe` is registered with generic handlers and
messages are raw bytes. A request's payload is a command, `;`-separated `name=value` pairs:
  key=K        calls are counted per key (and method)
  fail=N       the first N calls with this key fail
  code=NAME    the status they fail with (a grpc.StatusCode name, default UNAVAILABLE)
  sleep=SECS   wait this long before answering
Methods:
  Unary        one request, one answer; a failure is sent before any message, which gRPC
               sends as a trailers-only response (grpc-status in the response headers)
  Stream       one request, then one message, then a failure if due, so grpc-status
               arrives in trailers after a message
Every call prints `call METHOD key=K attempt=N` on stdout.

Server: `grpc_peer.py serve [--fail-all CODE]` prints `listening on 127.0.0.1:PORT`; exits on
SIGTERM. With --fail-all every Unary call fails with CODE (trailers-only), whatever it asks.
Client: `grpc_peer.py call --target HOST:PORT --method Unary --payload CMD [--timeout S]`
prints one JSON line: {"code": NAME, "details": TEXT, "messages": [TEXT...], "seconds": F}.
"""

import argparse
import json
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "legate.test.Probe"


def parse(payload):
    cmd = {}
    for part in payload.decode("utf-8", "replace").split(";"):
        if "=" in part:
            name, value = part.split("=", 1)
            cmd[name.strip()] = value.strip()
    return cmd


class Probe:
    def __init__(self, fail_all=None):
        self.lock = threading.Lock()
        self.counts = {}
        self.fail_all = fail_all

    def attempt(self, method, cmd):
        key = (method, cmd.get("key", ""))
        with self.lock:
            n = self.counts.get(key, 0) + 1
            self.counts[key] = n
        print(f"call {method} key={key[1]} attempt={n}", flush=True)
        return n

    @staticmethod
    def failure(cmd, n):
        if n <= int(cmd.get("fail", "0")):
            return getattr(grpc.StatusCode, cmd.get("code", "UNAVAILABLE"))
        return None

    def unary(self, request, context):
        cmd = parse(request)
        n = self.attempt("Unary", cmd)
        time.sleep(float(cmd.get("sleep", "0")))
        code = self.failure(cmd, n)
        if self.fail_all:
            code = getattr(grpc.StatusCode, self.fail_all)
        if code is not None:
            context.abort(code, f"probe failure {n}")
        return f"ok attempt={n}".encode()

    def stream(self, request, context):
        cmd = parse(request)
        n = self.attempt("Stream", cmd)
        time.sleep(float(cmd.get("sleep", "0")))
        yield f"first attempt={n}".encode()
        code = self.failure(cmd, n)
        if code is not None:
            context.abort(code, f"probe failure {n}")


def serve(fail_all):
    probe = Probe(fail_all)
    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(probe.unary),
            "Stream": grpc.unary_stream_rpc_method_handler(probe.stream),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(0)


def call(args):
    started = time.monotonic()
    out = {"code": "OK", "details": "", "messages": []}
    with grpc.insecure_channel(args.target) as channel:
        path = f"/{SERVICE}/{args.method}"
        payload = args.payload.encode()
        try:
            if args.method == "Stream":
                rpc = channel.unary_stream(path)
                for m in rpc(payload, timeout=args.timeout):
                    out["messages"].append(m.decode())
            else:
                rpc = channel.unary_unary(path)
                out["messages"].append(rpc(payload, timeout=args.timeout).decode())
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details() or ""
    out["seconds"] = time.monotonic() - started
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--fail-all", default=None)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--method", default="Unary", choices=["Unary", "Stream"])
    c.add_argument("--payload", default="")
    c.add_argument("--timeout", type=float, default=None)
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args.fail_all)
    else:
        call(args)


if __name__ == "__main__":
    sys.exit(main())
