"""A small OpenAI-compatible HTTP server on 127.0.0.1 that injects faults: a real server (http.server in a thread),
speaking enough of /v1/completions and /v1/chat/completions for the `openai` teacher kind's tests.

``rule(question, attempt)`` picks what each request gets, by the query's question and how many times that question
was asked before: one of OUTCOMES. Every request is recorded; a retry that comes before the Retry-After a 429 gave
is recorded in ``early``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

OUTCOMES = ("ok", "429", "400", "500", "401", "hang", "malformed", "drop")
RETRY_AFTER_S = 1


def query_question(prompt: str) -> str:
    """The question of the query (the prompt's last block, after the demonstrations)."""
    return prompt.rsplit("Question:\n", 1)[-1].split("\nOptions:", 1)[0]


def answer_text(question: str) -> str:
    return f"Because {question.lower()} Thus, the answer is (a)."


class FaultServer:
    def __init__(self, rule: Callable[[str, int], str] = lambda question, attempt: "ok", key: str | None = None):
        self.rule, self.key = rule, key
        self.asked: Counter[str] = Counter()
        self.log: list[tuple[str, int, str]] = []  # (question, attempt, outcome) per request, in arrival order
        self.bodies: list[dict] = []
        self.early: list[str] = []
        self._not_before: dict[str, float] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()  # hung requests end (their clients gave up long ago)
        self._http.shutdown()
        self._http.server_close()

    def requests_for(self, question: str) -> int:
        return self.asked[question]

    def _decide(self, body: dict) -> tuple[str, str]:
        prompt = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
        question = query_question(prompt)
        with self._lock:
            attempt = self.asked[question]
            self.asked[question] += 1
            if time.monotonic() < self._not_before.get(question, 0.0):
                self.early.append(question)
            outcome = self.rule(question, attempt)
            if outcome == "429":
                self._not_before[question] = time.monotonic() + RETRY_AFTER_S
            self.log.append((question, attempt, outcome))
            self.bodies.append(body)
        return question, outcome

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: pytest shows failures, not every request
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._json(401, {"error": {"message": "invalid api key"}})
                question, outcome = server._decide(body)
                if outcome == "ok":
                    return self._json(200, completion(body, self.path, question))
                if outcome == "429":
                    return self._json(429, {"error": {"message": "rate limited"}},
                                      {"Retry-After": str(RETRY_AFTER_S)})
                if outcome in ("400", "500", "401"):
                    return self._json(int(outcome), {"error": {"message": f"injected {outcome}"}})
                if outcome == "malformed":
                    return self._raw(200, b'{"choices": [{"text": "cut', len(b'{"choices": [{"text": "cut'))
                if outcome == "drop":  # promises 500 bytes, sends a few, closes the connection
                    self._raw(200, b'{"choices": [{"te', 500)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if outcome == "hang":
                    server._release.wait(60)
                    self.close_connection = True
                    return None
                raise AssertionError(f"unknown outcome {outcome!r}")

            def _json(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _raw(self, status: int, data: bytes, length: int):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        return Handler


def completion(body: dict, path: str, question: str) -> dict:
    """A well-formed response, in the shape of the endpoint asked, with usage counts."""
    text = answer_text(question)
    prompt = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
    if path.endswith("/chat/completions"):
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": " " + text, "finish_reason": "stop"}
    return {"id": "x", "object": "completion", "model": body["model"], "choices": [choice], "usage": usage}
