"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests.

It speaks the real wire format (``POST /v1/chat/completions``, JSON in and out) and can be told to fail: each
request pops the next fault from ``faults`` ("timeout", "500", "malformed", "no_choices") before answering
normally. ``reply`` decides the answer text from the request, ``logprobs`` the top next-token log-probabilities
(when asked for); ``requests`` and ``headers`` record what came in.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JudgeServer:
    def __init__(self, reply: Callable[[dict[str, Any]], str], timeout_sleep: float = 2.0,
                 logprobs: Callable[[dict[str, Any]], list[tuple[str, float]]] | None = None) -> None:
        self.reply, self.timeout_sleep = reply, timeout_sleep
        self.logprobs = logprobs or (lambda body: [("m", -0.1), ("M", -2.4)])
        self.faults: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                fault = server.faults.pop(0) if server.faults else None
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "boom", "type": "server_error"}}')
                if fault == "malformed":
                    return self._send(200, b"this is not json")
                text = server.reply(body)
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}
                if body.get("logprobs"):
                    top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in server.logprobs(body)]
                    choice["logprobs"] = {"content": [top[0] | {"top_logprobs": top}]}
                payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [] if fault == "no_choices" else [choice],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                self._send(200, json.dumps(payload).encode())

            def _send(self, code: int, data: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
