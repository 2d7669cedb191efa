"""An HTTP API for the network tests, as a run would meet one: echoes what it received (the
Authorization header as sent, and its sha256, so a test can tell which value arrived), redirects,
answers big or slowly. Prints its port; serves until killed."""

import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big":
            size = int(query["bytes"])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * 65536
            try:
                while size > 0:
                    self.wfile.write(block[:size])
                    size -= len(block)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif url.path == "/slow":
            time.sleep(int(query["ms"]) / 1000)
            self.echo(b"")
        else:
            self.echo(b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.echo(body)

    def echo(self, body):
        auth = self.headers.get("Authorization")
        answer = json.dumps({
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "auth": auth,
            "auth_sha256": auth and hashlib.sha256(auth.encode()).hexdigest(),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_bytes": len(body),
            "peer_port": self.client_address[1],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Echo-Auth", auth or "")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
print("port", server.server_address[1], flush=True)
server.serve_forever()
