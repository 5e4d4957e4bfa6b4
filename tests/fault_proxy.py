"""A fault-injecting HTTP proxy for tests: a real server on 127.0.0.1 that forwards every request to an
upstream (the loopback Hub in tests/hub_server.py) and, on chosen routes, answers with a status code,
hangs without answering, or replaces the upstream's body with bytes that are neither UTF-8 nor JSON.

    proxy = FaultProxy(hub.url).start()            # point HF_ENDPOINT at proxy.url
    proxy.fault(r"/api/models/.*", 503)            # every matching request gets a 503
    proxy.fault(r"/api/models/.*/commit/.*", "hang", times=1)   # the next one hangs, later ones pass
    proxy.fault(r"/api/datasets/.*", "garbage")
    proxy.seen                                     # [(method, path, fault or None), ...]
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

GARBAGE = b"\xff\xfe\x00\x9c<html>\x80\x81 upstream glitch \xc3\x28\xa0\xa1" * 4  # invalid UTF-8, not JSON
# Not passed on: hop-by-hop headers, and those this server writes itself.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "content-length", "server", "date"}


@dataclass
class Fault:
    route: re.Pattern
    kind: int | str  # an HTTP status, "hang" or "garbage"
    method: str | None = None  # only this method; None: any
    times: int | None = None  # how many matching requests it hits; None: all of them
    hits: int = 0

    def applies(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method) and bool(self.route.search(path))
                and (self.times is None or self.hits < self.times))


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1"):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.host = host
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, int | str | None]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # set to let hanging requests go (their connection is then closed)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            state = proxy

        self._server = _Server((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def fault(self, route: str, kind: int | str, times: int | None = None, method: str | None = None) -> Fault:
        if not (isinstance(kind, int) or kind in ("hang", "garbage")):
            raise ValueError(f"a fault is an HTTP status, 'hang' or 'garbage', not {kind!r}")
        f = Fault(re.compile(route), kind, method, times)
        with self.lock:
            self.faults.append(f)
        return f

    def clear(self) -> None:
        """Remove every fault and let hanging requests go."""
        with self.lock:
            self.faults.clear()
        self.release.set()
        self.release = threading.Event()

    def hits(self, kind: int | str | None = None) -> list[tuple[str, str, int | str | None]]:
        return [s for s in self.seen if s[2] is not None and (kind is None or s[2] == kind)]

    def _pick(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.applies(method, path):
                    f.hits += 1
                    return f
        return None


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up on a hanging request closed its end: expected here


class _Handler(BaseHTTPRequestHandler):
    state: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _handle(self) -> None:
        method, path = self.command, urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = self.state._pick(method, path)
        self.state.seen.append((method, path, fault.kind if fault else None))
        if fault is not None and fault.kind == "hang":
            self.state.release.wait(600)
            self.close_connection = True
            return
        if fault is not None and isinstance(fault.kind, int):
            self._reply(fault.kind, {"Content-Type": "text/plain", "X-Error-Message": "injected fault"},
                        f"{fault.kind} injected by the fault proxy".encode())
            return
        status, headers, content = self._forward(method, body)
        if fault is not None:  # garbage: the upstream's status and headers, a body nobody can parse
            content = GARBAGE
        self._reply(status, headers, content)

    def _forward(self, method: str, body: bytes | None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(*self.state.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            content = resp.read()
            return resp.status, {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}, content
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict, content: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle
