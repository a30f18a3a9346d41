"""A local stand-in for an OpenAI-compatible endpoint, on a loopback port.

It serves ``POST /v1/embeddings`` with deterministic float32-exact vectors and
``POST /v1/chat/completions`` (whole or streamed as server-sent events) with a deterministic
answer, records every request, and can be told to fail the next requests with given status
codes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def vector_for(text: str, dimensions: int = 8) -> list[float]:
    """Deterministic float32-exact vector of a text."""
    digest = hashlib.sha256(text.encode()).digest() * 8
    return [struct.unpack("<f", struct.pack("<f", (b - 128) / 64))[0] for b in digest[:dimensions]]


def answer_for(messages: list[dict[str, Any]]) -> str:
    """The stub's deterministic chat answer to a conversation."""
    last = str(messages[-1].get("content", "")) if messages else ""
    return f"echo: {last}"


def completion(model: str, content: str) -> dict[str, Any]:
    """A whole chat completion as the API returns it (usage: 10 + 5 tokens)."""
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


class StubEmbeddingServer:
    def __init__(self, dimensions: int = 8) -> None:
        self.dimensions = dimensions
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failures: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub.lock:
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                    failure = stub.failures.pop(0) if stub.failures else None
                if self.path not in ("/v1/embeddings", "/v1/chat/completions"):
                    self._send(404, {"error": "not found"})
                elif failure is not None:
                    self._send(failure[0], {"error": {"message": "scripted"}}, failure[1])
                elif self.path == "/v1/chat/completions":
                    self._chat(body)
                elif not all(isinstance(text, str) for text in body["input"]):
                    self._send(400, {"error": {"message": "the stub embeds texts only"}})
                else:
                    dims = body.get("dimensions") or stub.dimensions
                    data = []
                    for index, text in enumerate(body["input"]):
                        vector = vector_for(text, dims)
                        if body.get("encoding_format") == "base64":
                            packed = struct.pack(f"<{len(vector)}f", *vector)
                            embedding: Any = base64.b64encode(packed).decode()
                        else:
                            embedding = vector
                        data.append({"object": "embedding", "index": index, "embedding": embedding})
                    data.reverse()  # the index, not the order, says which text it is
                    tokens = len(body["input"])
                    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
                    self._send(
                        200,
                        {"object": "list", "data": data, "model": body["model"], "usage": usage},
                    )

            def _chat(self, body: dict[str, Any]) -> None:
                content = answer_for(body["messages"])
                if not body.get("stream"):
                    self._send(200, completion(body["model"], content))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in (content[: len(content) // 2], content[len(content) // 2 :]):
                    chunk = {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": {"content": piece}}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def _send(
                self, status: int, payload: Any, headers: dict[str, str] | None = None
            ) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        # A short poll: shutdown() waits for the loop to notice (0.5 s by default).
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.failures.extend((status, headers or {}) for status in statuses)

    def texts_embedded(self) -> int:
        return sum(len(r["input"]) for r in self.requests if "input" in r)

    def chats(self) -> int:
        """Chat completion requests served (or failed) so far."""
        return sum(1 for r in self.requests if "messages" in r)

    def __enter__(self) -> StubEmbeddingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
