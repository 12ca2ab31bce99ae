"""What a request may do, checked before a route runs: admission (draining, too many at once),
the API key, the body's size while it streams in; and the image checks after it.

Each check is a small pure-ASGI middleware (no buffering of the body, unlike Starlette's
BaseHTTPMiddleware) or a function; ``app.create_app`` stacks them in one place. Every refusal
is a JSON body ``{"error": kind, "message": text}``.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPEN_PATHS = ("/", "/healthz", "/readyz")  # probes and the page (which holds no data)
API_PREFIX = "/v1/"


class HTTPProblem(Exception):
    """A refusal with a status, a kind and a message (and headers such as Retry-After)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": kind, "message": message}).encode()


async def send_problem(send, problem: HTTPProblem) -> None:
    """Answer a request from a middleware, before the app has seen it."""
    body = error_body(problem.kind, problem.message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), str(v).encode()) for k, v in problem.headers.items()),
    ]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class Observe:
    """Outermost: times every request, counts it (Prometheus) and logs one access line."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        metrics = self.state.metrics
        metrics.in_flight.inc()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            metrics.in_flight.dec()
            metrics.observe_request(scope["path"], scope["method"], status, seconds)
            self.state.access(scope, status, seconds)


class Admit:
    """503 while draining (after SIGTERM) or when too many requests are open at once; the
    latter bounds memory: each open request may hold up to --max-upload-mb."""

    def __init__(self, app, state):
        self.app, self.state = app, state
        self.open = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in ("/healthz", "/metrics"):
            return await self.app(scope, receive, send)
        if self.state.draining.is_set() and scope["path"] != "/readyz":
            problem = HTTPProblem(
                503,
                "shutting_down",
                "the server is shutting down; retry on another replica",
                {"Retry-After": "1", "Connection": "close"},
            )
            return await send_problem(send, problem)
        if self.open >= self.state.max_open:
            problem = HTTPProblem(
                503,
                "busy",
                f"{self.open} requests open, limit {self.state.max_open}",
                {"Retry-After": "1"},
            )
            return await send_problem(send, problem)
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1


class RequireKey:
    """With an API key set, /v1/* and /metrics need it: ``X-API-Key: KEY`` or
    ``Authorization: Bearer KEY`` (what Prometheus sends), compared in constant time."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not self.allowed(scope):
            problem = HTTPProblem(
                401,
                "unauthorized",
                "a valid API key is required (header X-API-Key)",
                {"WWW-Authenticate": "Bearer"},
            )
            return await send_problem(send, problem)
        return await self.app(scope, receive, send)

    def allowed(self, scope) -> bool:
        given = _header(scope, b"x-api-key")
        if given is None:
            auth = _header(scope, b"authorization") or ""
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
        # compare_digest on bytes of any length: the time does not depend on where they differ
        return hmac.compare_digest(given.encode("latin-1"), self.key)


class BodyTooLarge(Exception):
    pass


class LimitBody:
    """413 when the body passes ``limit`` bytes: at once from Content-Length, else while it
    streams in (chunked bodies), counted as each piece arrives; nothing past it is read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await send_problem(send, too_large(int(declared), self.limit))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(seen)
            return message

        return await self.app(scope, counted, send)


def too_large(size: int, limit: int) -> HTTPProblem:
    return HTTPProblem(
        413,
        "payload_too_large",
        f"the request body passed {size:,} bytes, limit {limit:,} (--max-upload-mb)",
        {"Connection": "close"},
    )


def decode_image(data: bytes, name: str, max_pixels: int) -> Any:
    """Bytes -> a uint8 3xHxW tensor, or HTTPProblem: 415 not JPEG/PNG (by content, not by
    name or Content-Type), 413 a decompression bomb (pixels above the limit, refused before
    they are decoded), 400 empty, broken or truncated data, or an extreme aspect ratio."""
    import torch

    from gunctl.core.images import ImageProblem, decode_rgb, planes

    if not data:
        raise HTTPProblem(400, "bad_image", f"{name}: empty")
    if not data.startswith((JPEG_MAGIC, PNG_MAGIC)):
        raise HTTPProblem(415, "unsupported_media_type", f"{name}: not a JPEG or PNG image")
    try:
        rgb, _ = decode_rgb(data, max_pixels)
    except ImageProblem as problem:
        detail = problem.detail or problem.kind
        if problem.kind == "image_too_large":
            raise HTTPProblem(413, "image_too_large", f"{name}: {detail}") from None
        raise HTTPProblem(400, "bad_image", f"{name}: {detail}") from None
    return torch.from_numpy(planes(rgb))
