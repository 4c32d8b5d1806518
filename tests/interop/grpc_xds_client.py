"""gRPC's own xDS client (grpcio) resolving a service through legate-cp.

Starts a plain gRPC server on --server-port (a generic bytes-in/bytes-out method, no
generated code), then opens a channel to xds:///SERVICE with the bootstrap named by
GRPC_XDS_BOOTSTRAP, makes --calls RPCs, and prints one JSON line with the replies.
Exit status 0 only if every call succeeded.
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
    a = p.parse_args()
    server = serve(a.server_port, a.server_name)
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
    server.stop(0)
    print(json.dumps({"replies": replies, "errors": errors}))
    sys.stdout.flush()
    return 0 if len(replies) == a.calls else 1


if __name__ == "__main__":
    sys.exit(main())
