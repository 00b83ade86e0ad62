"""Sample ccp service: a tiny JSON API backed by memcached.

GET  /health     -> {"status": "ok"}
GET  /version    -> {"service": "api-service", "version": "..."}
GET  /kv/<key>   -> {"key": ..., "value": ...} or 404
PUT  /kv/<key>   -> stores the body (JSON {"value": ...} or raw text)

MEMCACHED_HOST / MEMCACHED_PORT (default memcached:11211) locate memcached.
"""

import os

from flask import Flask, jsonify, request
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError, MemcacheIllegalInputError

SERVICE = "api-service"
__version__ = "0.1.0"


def memcached_address():
    return (
        os.environ.get("MEMCACHED_HOST", "memcached"),
        int(os.environ.get("MEMCACHED_PORT", "11211")),
    )


def create_app():
    app = Flask(SERVICE)
    clients = {}

    def cache():
        # One client per worker process, made on first use (after the fork).
        if "client" not in clients:
            clients["client"] = Client(
                memcached_address(), connect_timeout=2, timeout=2)
        return clients["client"]

    def fail(status, message):
        return jsonify({"error": message}), status

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.get("/version")
    def version():
        return jsonify({"service": SERVICE,
                        "version": os.environ.get("API_VERSION", __version__)})

    @app.get("/kv/<key>")
    def kv_get(key):
        try:
            value = cache().get(key)
        except MemcacheIllegalInputError as exc:
            return fail(400, f"invalid key: {exc}")
        except (MemcacheError, OSError) as exc:
            clients.pop("client", None)
            return fail(503, f"memcached unavailable: {exc}")
        if value is None:
            return fail(404, f"no such key: {key}")
        return jsonify({"key": key, "value": value.decode("utf-8", "replace")})

    @app.put("/kv/<key>")
    def kv_put(key):
        if request.is_json:
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("value"), str):
                return fail(400, 'expected a JSON object {"value": "<string>"}')
            value = body["value"]
        else:
            value = request.get_data(as_text=True)
        try:
            cache().set(key, value.encode("utf-8"), noreply=False)
        except MemcacheIllegalInputError as exc:
            return fail(400, f"invalid key: {exc}")
        except (MemcacheError, OSError) as exc:
            clients.pop("client", None)
            return fail(503, f"memcached unavailable: {exc}")
        return jsonify({"key": key, "value": value})

    return app


app = create_app()
