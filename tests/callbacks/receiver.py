"""A callback receiver as an operator would write one: verifies weir's signature with Python's own
hmac, then answers the calls the test programs make, and keeps the Judge0 results PUT to it
(`GET /judged` lists them; a PUT with a bad signature is answered 401 and not kept). Prints its
port; logs each call on stderr."""

import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = sys.argv[1].encode()
SEEN = {}
JUDGED = []


class Receiver(BaseHTTPRequestHandler):
    def signed_body(self):
        """The body, if weir's signature over it checks out."""
        body = self.rfile.read(int(self.headers["Content-Length"]))
        stamp = self.headers.get("X-Weir-Timestamp", "")
        signed = stamp.encode() + b"." + body
        want = "sha256=" + hmac.new(KEY, signed, hashlib.sha256).hexdigest()
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300
        if fresh and hmac.compare_digest(want, self.headers.get("X-Weir-Signature", "")):
            return body
        return None

    def do_PUT(self):
        body = self.signed_body()
        if body is None:
            return self.answer(401, {"error": "bad signature"})
        JUDGED.append({"path": self.path, "submission": json.loads(body)})
        return self.answer(200, {})

    def do_GET(self):
        if self.path == "/judged":
            return self.answer(200, JUDGED)
        return self.answer(404, {})

    def do_POST(self):
        body = self.signed_body()
        if body is None:
            return self.answer(401, {"error": "bad signature"})
        call = json.loads(body)
        name, args = call["name"], call["args"]
        SEEN[name] = n = SEEN.get(name, 0) + 1
        print("call", name, n, call["call_id"], file=sys.stderr, flush=True)
        if name == "add":
            return self.answer(200, {"value": args["a"] + args["b"]})
        if name == "lookup":
            return self.answer(200, {"error": "no such city: " + args["city"]})
        if name == "flaky":
            if n <= 2:
                return self.answer(503, {})
            return self.answer(200, {"value": "answered on attempt %d" % n})
        if name == "broken":
            return self.answer(500, {})
        if name == "slow":
            time.sleep(3)
            return self.answer(200, {"value": "late"})
        return self.answer(404, {})

    def answer(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
print("port", server.server_address[1], flush=True)
server.serve_forever()
