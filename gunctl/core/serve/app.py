"""The HTTP app: routes on the inference core, with the limits, auth and metrics stacked in
``create_app`` (FastAPI's idiom: small routes, state injected once). Imports FastAPI: only
``gunctl serve`` loads this module.

Routes: ``POST /v1/detect`` (one image: a multipart file or the raw body), ``POST
/v1/detect/batch`` (several multipart files), ``GET /v1/model``, ``GET|HEAD /healthz`` (the process
answers), ``GET|HEAD /readyz`` (model loaded and warmed up, not draining; 503 otherwise), ``GET
/metrics`` (Prometheus) and ``GET /`` (a page to try it in a browser).

A detection response is a ``predictions.jsonl`` line of ``gunctl predict`` (``source``,
``width``, ``height``, ``boxes``, ``scores``, ``labels``; plus ``label_ids``) with the
model's identity, the threshold used and the timings: one parser reads both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from gunctl.config import ServeConfig
from gunctl.core.serve.batching import Batcher, Job, NotReady, QueueFull
from gunctl.core.serve.limits import (
    Admit,
    BodyTooLarge,
    HTTPProblem,
    LimitBody,
    Observe,
    RequireKey,
    decode_image,
    error_body,
    too_large,
)
from gunctl.core.serve.metrics import Metrics

log = logging.getLogger("gunctl.serve")
access_log = logging.getLogger("gunctl.serve.access")
CONFIG_ENV = "GUNCTL_SERVE_CONFIG"  # --workers N: the config, as JSON, for each worker process
PAGE_HEADERS = {  # the page loads nothing from elsewhere and cannot be framed
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass
class ServeState:
    """What the routes share: the config, the inference thread, the metrics, the drain flag."""

    config: ServeConfig
    batcher: Batcher
    metrics: Metrics
    draining: threading.Event = field(default_factory=threading.Event)

    @property
    def max_open(self) -> int:
        """Requests open at once (reading, queued, answering): twice the queue, at least 32."""
        return max(2 * self.config.max_queue, 32)

    @property
    def detector(self):
        return self.batcher.detector

    def model(self) -> dict[str, Any]:
        """The model's identity for clients (its path on the server is left out)."""
        identity = self.detector.identity
        keys = ("name", "sha256", "format", "model", "class_names", "runtime")
        return {key: identity.get(key) for key in keys}

    def access(self, scope, status: int, seconds: float) -> None:
        if not self.config.access_log:
            return
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        path = _printable(scope["path"])
        access_log.info(
            '%s "%s %s" %d %.1f ms',
            where,
            scope["method"],
            path,
            status,
            1000 * seconds,
            extra={
                "client": where,
                "method": scope["method"],
                "path": path,
                "status": status,
                "duration_ms": round(1000 * seconds, 2),
            },
        )


def create_app(config: ServeConfig, detector=None, load=None, ready_to_start: bool = False):
    """The ASGI app. ``detector``: one loaded already (the CLI loads it first, to report a bad
    model before binding); else ``load()`` (default: ``load_detector`` on the config) runs on
    the inference thread while /healthz answers and /readyz says 503. ``ready_to_start``: the
    app's start-up waits for the model and its warm-up (``--workers``: processes share one
    port, so a worker takes connections only once it can answer them)."""
    from fastapi import FastAPI

    config.check()
    if detector is not None:
        load = _given(detector)
    elif load is None:
        load = _loader(config)
    metrics = Metrics()
    batcher = Batcher(
        load,
        max_batch_size=config.max_batch_size,
        batch_timeout_s=config.batch_timeout_ms / 1000,
        max_queue=config.max_queue,
        metrics=metrics,
    )
    state = ServeState(config, batcher, metrics)
    app = FastAPI(
        title="gunctl serve",
        lifespan=_lifespan(state, ready_to_start),
        docs_url=None,  # the docs pages load scripts from a CDN; /openapi.json stays
        redoc_url=None,
    )
    app.state.gunctl = state
    _routes(app, state)
    _errors(app)
    # Middleware: the last added runs first. Observe sees every answer, refusals included.
    app.add_middleware(LimitBody, limit=config.max_upload_bytes)
    app.add_middleware(RequireKey, api_key=config.api_key)
    app.add_middleware(Admit, state=state)
    app.add_middleware(Observe, state=state)
    return app


def app_from_environment():
    """The factory each ``--workers`` process calls (uvicorn ``factory=True``)."""
    from gunctl.config import _known_fields

    data = json.loads(os.environ[CONFIG_ENV])
    threads = data.pop("torch_threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)  # the machine's cores shared among the workers
    return create_app(_known_fields(ServeConfig, data), ready_to_start=True)


def _given(detector):
    return lambda: detector


def _loader(config: ServeConfig):
    def load():
        from gunctl.core.inference import load_detector

        return load_detector(**config.detector_kwargs())

    return load


def _lifespan(state: ServeState, ready_to_start: bool):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        if ready_to_start:
            await asyncio.get_running_loop().run_in_executor(None, _wait_loaded, state.batcher)
        restore = _drain_on_sigterm(state, asyncio.get_running_loop())
        try:
            yield
        finally:
            state.draining.set()
            await asyncio.get_running_loop().run_in_executor(None, state.batcher.stop)
            state.metrics.process_ended()
            if restore is not None:
                restore()

    return lifespan


def _wait_loaded(batcher: Batcher) -> None:
    while not batcher.ready.wait(0.1):
        if batcher.failure:
            raise RuntimeError(batcher.state())


def _drain_on_sigterm(state: ServeState, loop):
    """On SIGTERM: /readyz and new requests answer 503 at once (a load balancer stops sending
    here), and uvicorn's graceful shutdown (stop accepting, let in-flight requests finish)
    starts ``drain_seconds`` later. Only in the main thread (where uvicorn runs a server)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(sig, frame):
        if state.draining.is_set() or not callable(previous):
            if callable(previous):
                previous(sig, frame)
            return
        state.draining.set()
        log.info("SIGTERM: draining for %g s, then stopping", state.config.drain_seconds)
        loop.call_soon_threadsafe(loop.call_later, state.config.drain_seconds, previous, sig, None)

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)


# --- routes ----------------------------------------------------------------------------------


def _routes(app, state: ServeState) -> None:
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_page(), headers=PAGE_HEADERS)

    # Probes may use HEAD (HTTP requires it wherever GET is served; uvicorn sends no body).
    @app.api_route("/healthz", methods=["GET", "HEAD"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    def readyz():
        if state.draining.is_set():
            return _problem_response(HTTPProblem(503, "not_ready", "shutting down"))
        if not state.batcher.ready.is_set():
            return _problem_response(
                HTTPProblem(503, "not_ready", state.batcher.state(), {"Retry-After": "1"})
            )
        return {"status": "ready", "model": state.model()}

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/model")
    def model():
        _require_ready(state)
        return _model_description(state)

    @app.post("/v1/detect")
    async def detect(
        request: Request, score_threshold: float | None = None, max_detections: int | None = None
    ) -> JSONResponse:
        results, total = await _handle(request, state, score_threshold, max_detections, 1)
        return JSONResponse({**results[0], "timing_ms": {**results[0]["timing_ms"], **total}})

    @app.post("/v1/detect/batch")
    async def detect_batch(
        request: Request, score_threshold: float | None = None, max_detections: int | None = None
    ) -> JSONResponse:
        limit = state.config.max_images
        results, total = await _handle(request, state, score_threshold, max_detections, limit)
        return JSONResponse({"model": state.model(), "results": results, "timing_ms": total})


def _model_description(state: ServeState) -> dict:
    """GET /v1/model: the model's identity, its defaults and the service's limits."""
    config, detector = state.config, state.detector
    return {
        **state.model(),
        "score_threshold": detector.threshold,
        "threshold_origin": detector.threshold_origin,
        "max_detections": detector.max_detections,
        "device": str(detector.device),
        "limits": {
            "max_batch_size": state.batcher.max_batch_size,
            "batch_timeout_ms": config.batch_timeout_ms,
            "max_queue": config.max_queue,
            "max_upload_mb": config.max_upload_mb,
            "max_images": config.max_images,
            "max_pixels": config.max_pixels,
            "request_timeout": config.request_timeout,
        },
    }


async def _handle(request, state: ServeState, threshold, cap, max_images: int):
    """Read, decode, queue and wait: one result per image, and the request's total time."""
    from starlette.concurrency import run_in_threadpool

    started = time.perf_counter()
    deadline = started + state.config.request_timeout
    _check_parameters(threshold, cap)
    _require_ready(state)
    parts = await _within(_read_images(request, max_images), deadline, 408, "reading the body")
    decoded = await run_in_threadpool(_decode_all, parts, state.config.max_pixels)
    jobs = [Job(image, threshold, cap) for _, image, _ in decoded]
    try:
        state.batcher.submit(jobs)
    except QueueFull as exc:
        raise HTTPProblem(503, "queue_full", str(exc), {"Retry-After": "1"}) from None
    except NotReady as exc:
        raise HTTPProblem(503, "not_ready", str(exc), {"Retry-After": "1"}) from None
    futures = [asyncio.wrap_future(job.future) for job in jobs]
    records = await _within(asyncio.gather(*futures), deadline, 504, "detection")
    used = state.detector.threshold if threshold is None else threshold
    model = state.model()
    results = [
        {
            "source": name,
            **record,
            "score_threshold": used,
            "model": model,
            "timing_ms": {
                "decode": round(1000 * decode_s, 2),
                "queue": round(1000 * job.queue_s, 2),
                "inference": round(1000 * job.inference_s, 2),
                "batch_size": job.batch_size,
            },
        }
        for (name, _, decode_s), job, record in zip(decoded, jobs, records, strict=True)
    ]
    return results, {"total": round(1000 * (time.perf_counter() - started), 2)}


def _check_parameters(threshold, cap) -> None:
    """The query's values pass the rules declared for --score-threshold and
    --max-detections (gunctl/config.py), as the command line's do (422 otherwise)."""
    from gunctl.rules import declared

    for name, value in (("score_threshold", threshold), ("max_detections", cap)):
        if value is not None:
            declared(ServeConfig, name).rule.check(name, value)


def _require_ready(state: ServeState) -> None:
    if not state.batcher.ready.is_set():
        raise HTTPProblem(503, "not_ready", state.batcher.state(), {"Retry-After": "1"})


async def _within(awaitable, deadline: float, status: int, what: str):
    left = deadline - time.perf_counter()
    try:
        return await asyncio.wait_for(awaitable, max(left, 0.001))
    except asyncio.TimeoutError:
        message = f"{what} took longer than --request-timeout"
        if status == 408:  # the rest of the body may still come: the connection cannot go on
            raise HTTPProblem(408, "request_timeout", message, {"Connection": "close"}) from None
        raise HTTPProblem(status, "timeout", message) from None


async def _read_images(request, max_images: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: the files of a multipart form, else the raw body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=max_images, max_fields=max_images + 8)
        files = [(key, value) for key, value in form.multi_items() if hasattr(value, "read")]
        if not files:
            raise HTTPProblem(400, "no_image", "the form holds no file (send it as 'image')")
        if len(files) > max_images:
            raise HTTPProblem(
                400, "too_many_images", f"{len(files)} files, limit {max_images} per request"
            )
        parts = [(upload.filename or key, await upload.read()) for key, upload in files]
        await form.close()
        return parts
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
    return [(request.headers.get("x-filename") or "body", bytes(body))]


def _decode_all(parts, max_pixels: int) -> list[tuple[str, Any, float]]:
    decoded = []
    for name, data in parts:
        started = time.perf_counter()
        image = decode_image(data, _printable(name)[:200], max_pixels)
        decoded.append((name, image, time.perf_counter() - started))
    return decoded


# --- errors: always JSON, never a traceback ---------------------------------------------------


def _problem_response(problem: HTTPProblem):
    from fastapi.responses import Response

    body = error_body(problem.kind, problem.message)
    return Response(
        body, status_code=problem.status, media_type="application/json", headers=problem.headers
    )


def _errors(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from gunctl.errors import UsageError

    @app.exception_handler(HTTPProblem)
    async def problem(request, exc: HTTPProblem):
        return _problem_response(exc)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request, exc: BodyTooLarge):
        limit = request.app.state.gunctl.config.max_upload_bytes
        return _problem_response(too_large(exc.args[0], limit))

    @app.exception_handler(UsageError)
    async def bad_parameter(request, exc: UsageError):
        return _problem_response(HTTPProblem(422, "bad_parameter", str(exc)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        details = [
            f"{'.'.join(str(p) for p in error.get('loc', ())[1:])}: {error.get('msg', '')}"
            for error in exc.errors()
        ]
        return _problem_response(HTTPProblem(422, "bad_parameter", "; ".join(details)))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _problem_response(
            HTTPProblem(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))
        )

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        log.error("%s %s failed", request.method, _printable(request.url.path), exc_info=exc)
        return _problem_response(
            HTTPProblem(500, "internal_error", "the server failed on this request (logged)")
        )


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped (log lines, names)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _page() -> str:
    from importlib import resources

    return resources.files("gunctl.core.serve").joinpath("static/index.html").read_text("utf-8")
