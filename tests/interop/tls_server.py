"""An HTTPS server written with nothing but Python's standard library (ssl + http.server),
so legate's TLS client is tested against an implementation other than rustls (OpenSSL).

Prints `listening on HOST:PORT` once bound, then answers every GET with a small JSON body
and the header `x-upstream: python-tls`. Each TLS handshake is reported on stderr as
`python-tls: handshake ok CN=<client certificate common name>` or `python-tls: handshake
failed: <reason>`, so a test can tell which certificate each new connection presented.
Options:
  --cert/--key      the server certificate chain and key (PEM)
  --client-ca FILE  require client certificates issued by this CA
  --max-tls VER     the highest TLS version served: 1.2 or 1.3
Exits on SIGTERM.
"""

import argparse
import http.server
import json
import signal
import socketserver
import ssl
import sys


def common_name(peer):
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        # The handshake happened in accept(); one line per connection that completed it.
        peer = self.request.getpeercert() or {}
        sys.stderr.write(f"python-tls: handshake ok CN={common_name(peer)}\n")
        sys.stderr.flush()
        super().setup()

    def do_GET(self):
        peer = self.connection.getpeercert() or {}
        body = json.dumps(
            {
                "server": "python-tls",
                "path": self.path,
                "tls_version": self.connection.version(),
                "client_subject": dict(x[0] for x in peer.get("subject", ())),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", "python-tls")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("python-tls: " + (fmt % args) + "\n")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def get_request(self):
        try:
            return super().get_request()
        except ssl.SSLError as e:
            sys.stderr.write(f"python-tls: handshake failed: {e}\n")
            sys.stderr.flush()
            raise


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca")
    parser.add_argument("--max-tls", choices=["1.2", "1.3"])
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.max_tls == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    if args.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(args.client_ca)

    server = Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
