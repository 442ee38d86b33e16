"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests.

It speaks the real wire format (``POST /v1/chat/completions``, JSON in and out) and can be told to fail: each
request pops the next fault from ``faults`` ("timeout", "500", "malformed", "no_choices", "429" (with a
``Retry-After`` of ``retry_after`` seconds), "400", "401", "404") before answering normally. ``reply`` decides the
answer text from the request, ``logprobs`` the top next-token log-probabilities (when asked for); ``requests`` and
``headers`` record what came in, ``times`` when. ``latency`` delays every answer (a slow judge); ``in_flight`` and
``max_in_flight`` count requests being served at once. Usage reports a prompt token per 4 characters of the
messages and a completion token per 4 characters of the reply.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERRORS = {"400": "Unsupported parameter: 'logprobs' is not supported with this model.",
          "401": "Incorrect API key provided.",
          "404": "The model `{model}` does not exist or you do not have access to it."}


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a judge with many requests in flight
    daemon_threads = True


class JudgeServer:
    def __init__(self, reply: Callable[[dict[str, Any]], str], timeout_sleep: float = 2.0,
                 logprobs: Callable[[dict[str, Any]], list[tuple[str, float]]] | None = None, latency: float = 0.0,
                 retry_after: float = 1.0) -> None:
        self.reply, self.timeout_sleep = reply, timeout_sleep
        self.logprobs = logprobs or (lambda body: [("m", -0.1), ("M", -2.4)])
        self.faults: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        self.latency, self.retry_after = latency, retry_after
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self.counted = True
                try:
                    self._answer()
                finally:
                    self._done()

            def _done(self) -> None:
                """Leave the in-flight count before the reply is sent, so the client's next request, which may
                arrive before this thread ends, is not counted alongside this one."""
                if self.counted:
                    self.counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.times.append(time.monotonic())
                    fault = server.faults.pop(0) if server.faults else None
                if server.latency:
                    time.sleep(server.latency)
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "boom", "type": "server_error"}}')
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "Rate limit reached", "type": "requests"}}',
                                      {"Retry-After": str(server.retry_after)})
                if fault in ERRORS:
                    return self._send(int(fault), json.dumps({"error": {"message": ERRORS[fault].format(
                        model=body["model"]), "type": "invalid_request_error"}}).encode())
                if fault == "malformed":
                    return self._send(200, b"this is not json")
                text = server.reply(body)
                n_in = max(1, sum(len(m["content"]) for m in body["messages"]) // 4)
                n_out = max(1, len(text) // 4)
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}
                if body.get("logprobs"):
                    top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in server.logprobs(body)]
                    choice["logprobs"] = {"content": [top[0] | {"top_logprobs": top}]}
                payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [] if fault == "no_choices" else [choice],
                           "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}
                self._send(200, json.dumps(payload).encode())

            def _send(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self._done()
                try:
                    self.send_response(code)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
