"""Loopback HTTP listeners for egress tests: they record every accepted connection and request.

Paths: ``/redirect?to=URL&code=302``, ``/big?n=BYTES``, ``/bomb`` (gzip of 8 MiB of zeros),
``/slow?s=SECONDS``, ``/layers?n=BYTES&k=LAYERS`` (N zeros gzipped K times, declared as
``Content-Encoding: gzip, gzip, ...``), ``/text?charset=NAME&hex=BODY``; anything else echoes the request as JSON (and the Authorization header in
``X-Echo-Auth``), so tests can see exactly what reached the wire.
"""

from __future__ import annotations

import gzip
import json
import select
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Listener(ThreadingHTTPServer):
    """An HTTP server that records every accepted connection and every request."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._accepted = 0
        self.requests: list[dict] = []
        super().__init__((host, 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.server_address[0]}:{self.port}{path}"

    @property
    def connections(self) -> int:
        """Connections accepted so far, counted only once none is still waiting in the accept
        queue (the server thread polls every 50 ms; a connect that just completed must count)."""
        deadline = time.monotonic() + 1.0
        while select.select([self.socket], [], [], 0)[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.01)  # the count is taken just after accept() returns
        return self._accepted

    def get_request(self):  # type: ignore[override]
        conn = super().get_request()
        self._accepted += 1
        return conn

    def raw(self) -> str:
        return "\n".join(r["raw"] for r in self.requests)


def _zeros_gzip(n: int) -> bytes:
    """gzip of ``n`` zero bytes, made in 1 MiB steps (no n-byte buffer)."""
    pack = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1 << 20)
    parts = []
    for start in range(0, n, len(block)):
        parts.append(pack.compress(block[: min(len(block), n - start)]))
    parts.append(pack.flush())
    return b"".join(parts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        server: Listener = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        raw = f"{self.command} {self.path}\n{self.headers}\n{body.decode(errors='replace')}"
        server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body, "raw": raw})
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/redirect":
            self.send_response(int(query.get("code", "302")))
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/big":
            payload = b"x" * int(query["n"])
            self._reply(200, payload)
            return
        if url.path == "/bomb":
            payload = gzip.compress(b"\0" * (8 << 20))
            self._reply(200, payload, [("Content-Encoding", "gzip")])
            return
        if url.path == "/layers":
            payload = _zeros_gzip(int(query["n"]))
            for _ in range(int(query.get("k", "2")) - 1):
                payload = gzip.compress(payload)
            self._reply(200, payload, [("Content-Encoding", ", ".join(["gzip"] * int(query.get("k", "2"))))])
            return
        if url.path == "/text":
            self._reply(200, bytes.fromhex(query.get("hex", "")), [("Content-Type", f"text/plain; charset={query['charset']}")])
            return
        if url.path == "/slow":
            time.sleep(float(query.get("s", "2")))
            self._reply(200, b"late")
            return
        echo = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body.decode(errors="replace")}
        self._reply(200, json.dumps(echo).encode(), [("Content-Type", "application/json"), ("X-Echo-Auth", self.headers.get("Authorization", ""))])

    def _reply(self, status: int, payload: bytes, headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle
