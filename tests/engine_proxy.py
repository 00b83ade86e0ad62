"""A unix socket in front of the real engine that fails chosen requests:
point DOCKER_HOST at `FaultyEngine.host` and every request is forwarded,
except the first whose request line holds `path` (and `method`), which gets
`status` with `message` as the engine's JSON error, or, with `status=None`,
a connection closed without an answer (the engine lost mid-request)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading


class EngineProxy:
    """A unix socket in front of the engine at `engine_socket` that forwards
    every connection both ways; subclasses change what `_requests` does with
    what the client sends. `host` is the DOCKER_HOST to point at it."""

    def __init__(self, engine_socket: str):
        self.engine_socket = engine_socket
        self.directory = tempfile.mkdtemp(prefix="ccp-engine-", dir="/tmp")  # unix socket paths are short
        self.path = os.path.join(self.directory, "docker.sock")
        self.sockets: list[socket.socket] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(self.engine_socket)
            self.sockets += [client, engine]
            threading.Thread(target=self._requests, args=(client, engine), daemon=True).start()
            threading.Thread(target=self._pump, args=(engine, client), daemon=True).start()

    def _requests(self, client, engine):
        self._pump(client, engine)

    @staticmethod
    def _pump(source, target):
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.server.close()
        os.unlink(self.path)
        os.rmdir(self.directory)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FaultyEngine(EngineProxy):
    def __init__(self, engine_socket: str, path: str, method: str = "POST", status: int | None = None, message=""):
        self.needle = f"{method} /".encode(), path.encode()
        self.status, self.message = status, message
        self.faulted = threading.Event()
        super().__init__(engine_socket)

    def _matches(self, data: bytes) -> bool:
        line = data.split(b"\r\n", 1)[0]
        return line.startswith(self.needle[0]) and self.needle[1] in line

    def _requests(self, client, engine):
        try:
            while data := client.recv(1 << 16):
                if not self.faulted.is_set() and self._matches(data):
                    self.faulted.set()
                    if self.status is not None:
                        body = json.dumps({"message": self.message}).encode()
                        client.sendall(
                            f"HTTP/1.1 {self.status} Injected\r\nContent-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                            + body
                        )
                    client.close()
                    engine.close()
                    return
                engine.sendall(data)
            engine.shutdown(socket.SHUT_WR)
        except OSError:
            pass
