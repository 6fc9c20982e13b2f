"""Small pure-ASGI middlewares: API-key check, request body size limit, request counting.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so streamed responses and client-disconnect
notifications pass through untouched.
"""

from __future__ import annotations

import json
import secrets
from typing import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .protocol import APIError

OnError = Callable[[APIError], None]


async def send_error(send: Send, error: APIError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ApiKeyAuth:
    """Every path but ``open_paths`` needs ``Authorization: Bearer <api_key>`` (else 401)."""

    def __init__(self, app: ASGIApp, *, api_key: str, open_paths: Iterable[str], on_error: OnError) -> None:
        self.app, self.on_error = app, on_error
        self.expected = f"Bearer {api_key}".encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            given = (_header(scope, b"authorization") or "").encode("latin-1")
            if not secrets.compare_digest(given, self.expected):
                error = APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>' "
                                      "with the key the server was started with", code="invalid_api_key")
                self.on_error(error)
                await send_error(send, error, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Answers 413 to a request body over ``max_bytes`` (declared or actually sent), without
    reading more than that; the body is then replayed to the app."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, on_error: OnError) -> None:
        self.app, self.max_bytes, self.on_error = app, max_bytes, on_error

    def _too_large(self) -> APIError:
        return APIError(413, f"request body too large: the limit is {self.max_bytes} bytes", code="body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            error = self._too_large() if declared.isdigit() else APIError(400, "invalid Content-Length header")
            self.on_error(error)
            return await send_error(send, error)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                error = self._too_large()
                self.on_error(error)
                return await send_error(send, error)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: wait for the disconnect notification

        await self.app(scope, replay, send)


class RequestCounter:
    """Counts answered requests by endpoint (known paths only, else ``other``) and status."""

    def __init__(self, app: ASGIApp, *, count: Callable[[str, int], None], endpoints: Iterable[str]) -> None:
        self.app, self.count, self.endpoints = app, count, frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.count(endpoint, status)
