"""gRPC's own xDS client (grpcio) resolving a service through legate-cp.

Starts a plain gRPC server on --server-port (a generic bytes-in/bytes-out method, no
generated code), then opens a channel to xds:///SERVICE with the bootstrap named by
GRPC_XDS_BOOTSTRAP, makes --calls RPCs, and prints one JSON line with the replies.
Exit status 0 only if every call succeeded.

With --more-servers NAME=PORT,... more servers answer under their own names, and with
--hash-header H and --keys K each of K keys (`user-<i>` in metadata H) is then sent --calls
times; `by_key` in the JSON line lists who answered each key (consistent hashing: one name).
"""
import argparse
import json
import sys
import time
from concurrent import futures

import grpc

METHOD = "/legate.test.Echo/Say"


def serve(port, name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "legate.test.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: name.encode() + b":" + req)},
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound != port:
        raise SystemExit(f"could not bind 127.0.0.1:{port}")
    server.start()
    return server


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server-port", type=int, required=True)
    p.add_argument("--server-name", default="payments-v1")
    p.add_argument("--target", required=True)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--more-servers", default="")
    p.add_argument("--hash-header", default="")
    p.add_argument("--keys", type=int, default=0)
    a = p.parse_args()
    server = serve(a.server_port, a.server_name)
    more = []
    for entry in filter(None, a.more_servers.split(",")):
        name, port = entry.split("=")
        more.append(serve(int(port), name))
    replies, errors = [], []
    deadline = time.time() + a.timeout
    with grpc.insecure_channel(a.target) as channel:
        call = channel.unary_unary(METHOD)
        # The first call waits for xDS resolution.
        while len(replies) < a.calls and time.time() < deadline:
            try:
                replies.append(call(b"hello", timeout=5, wait_for_ready=True).decode())
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")
                time.sleep(0.2)
        by_key = {}
        for k in range(a.keys):
            key = f"user-{k}"
            seen = set()
            for _ in range(a.calls):
                if time.time() >= deadline:
                    break
                try:
                    reply = call(
                        b"hello", timeout=5, wait_for_ready=True, metadata=((a.hash_header, key),)
                    ).decode()
                    seen.add(reply.split(":")[0])
                except grpc.RpcError as e:
                    errors.append(f"{key}: {e.code()}: {e.details()}")
            by_key[key] = sorted(seen)
    server.stop(0)
    for m in more:
        m.stop(0)
    print(json.dumps({"replies": replies, "errors": errors, "by_key": by_key}))
    sys.stdout.flush()
    complete = all(len(v) > 0 for v in by_key.values()) and len(by_key) == a.keys
    return 0 if len(replies) == a.calls and complete else 1


if __name__ == "__main__":
    sys.exit(main())
