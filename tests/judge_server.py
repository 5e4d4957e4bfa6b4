"""An OpenAI-compatible chat server on 127.0.0.1 whose replies follow a script, for judge tests.

`script(messages) -> str` gives the reply text; `fail_next(n, status)` makes the next n requests
fail with an HTTP status; `delay` (seconds) slows every reply; `body` replaces the JSON reply with
raw bytes. Every request's messages are recorded in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from hub_server import QuietServer


class ScriptedJudge:
    def __init__(self, script):
        self.script = script
        self.requests: list[list[dict]] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header
        self.failures_left = 0
        self.failure_status = 503
        self.delay = 0.0
        self.body: bytes | None = None
        self.lock = threading.Lock()
        self._server = QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ScriptedJudge:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, n: int, status: int = 503) -> None:
        with self.lock:
            self.failures_left, self.failure_status = n, status

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, kind: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                with judge.lock:
                    judge.requests.append(body["messages"])
                    judge.authorizations.append(self.headers.get("Authorization"))
                    failing = judge.failures_left > 0
                    if failing:
                        judge.failures_left -= 1
                if judge.delay:
                    time.sleep(judge.delay)
                if failing:
                    return self._send(judge.failure_status, b'{"error": "overloaded"}')
                if judge.body is not None:
                    return self._send(200, judge.body)
                reply = judge.script(body["messages"])
                self._send(200, json.dumps({
                    "id": f"chatcmpl-{len(judge.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model") or "scripted-judge", "system_fingerprint": "test",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode())

        return Handler
