"""greeter: a tiny JSON HTTP service, the sample application source.

It is not part of any image directory: the `greeter` image copies it in with
copy_sources('greeter', ...), so a change here (or, for a git source, a new
upstream commit) rebuilds exactly the images that use it.

GET /health            -> {"status": "ok"}
GET /hello?name=<who>  -> {"greeting": "<GREETING>, <who>"}
GET /version           -> {"service": "greeter", "version": "<VERSION>"}
Listens on GREETER_PORT (8000); GREETING comes from the environment (hello).
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERSION = "1.0.0"


class Handler(BaseHTTPRequestHandler):
    server_version = "greeter"

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            return self._answer(200, {"status": "ok"})
        if url.path == "/version":
            return self._answer(200, {"service": "greeter", "version": VERSION})
        if url.path == "/hello":
            who = parse_qs(url.query).get("name", ["world"])[0]
            return self._answer(200, {"greeting": f"{os.environ.get('GREETING', 'hello')}, {who}"})
        return self._answer(404, {"error": f"no such path: {url.path}"})

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main():
    port = int(os.environ.get("GREETER_PORT", "8000"))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
