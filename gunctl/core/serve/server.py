"""Run the app under uvicorn: one process, or ``--workers N`` processes on one socket.

The model is loaded once here first, before the port is bound, so that a missing or corrupt
file is one error line and exit 2 rather than a server that never becomes ready. With one
process that detector is served; with N, each worker loads its own (uvicorn's app factory).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gunctl.config import ServeConfig, to_dict
from gunctl.errors import UsageError


@dataclass(frozen=True)
class ServeInfo:
    """What the start-up panel shows."""

    url: str
    identity: dict[str, Any]
    device: str
    threshold: float
    threshold_origin: str
    max_batch_size: int  # --max-batch-size, resolved for the device
    config: ServeConfig


def serve(config: ServeConfig, on_start: Callable[[ServeInfo], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (drained, then stopped gracefully)."""
    config.check()  # before the heavy imports: a bad option is an instant error
    import uvicorn

    from gunctl.core.inference import load_detector
    from gunctl.core.serve.app import create_app
    from gunctl.core.serve.batching import batch_size_for
    from gunctl.core.serve.logs import log_config

    detector = load_detector(**config.detector_kwargs())
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    options = dict(
        log_config=log_config(config.json_logs),
        access_log=False,  # gunctl's own line per request (with its duration)
        timeout_graceful_shutdown=config.graceful_timeout,
        server_header=False,
        lifespan="on",
    )
    info = ServeInfo(
        url=url(config.host, port),
        identity=detector.identity,
        device=str(detector.device),
        threshold=detector.threshold,
        threshold_origin=detector.threshold_origin,
        max_batch_size=batch_size_for(config.max_batch_size, detector.device),
        config=config,
    )
    if config.workers == 1:
        app = create_app(config, detector=detector)
        server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=port, **options))
        if on_start:
            on_start(info)
        with _terminate_quietly():
            server.run(sockets=[sock])
        return
    del detector  # each worker loads its own
    _run_workers(config, sock, options, lambda: on_start(info) if on_start else None)


def _run_workers(config: ServeConfig, sock, options: dict, started: Callable[[], None]) -> None:
    """``--workers N``: uvicorn's own supervisor, each worker building the app (and loading
    the model) from the config passed in the environment; one metrics folder for them all."""
    import shutil
    import tempfile

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from gunctl.core.serve.app import CONFIG_ENV
    from gunctl.core.serve.metrics import MULTIPROC_ENV

    port = sock.getsockname()[1]
    settings = to_dict(config) | {"torch_threads": max(1, (os.cpu_count() or 1) // config.workers)}
    os.environ[CONFIG_ENV] = json.dumps(settings)
    metrics_dir = tempfile.mkdtemp(prefix="gunctl-serve-metrics-")  # the workers' values
    os.environ[MULTIPROC_ENV] = metrics_dir
    uv = uvicorn.Config(
        "gunctl.core.serve.app:app_from_environment",
        factory=True,
        workers=config.workers,
        host=config.host,
        port=port,
        **options,
    )
    started()
    try:
        Multiprocess(uv, sockets=[sock]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), or one error line naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise UsageError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    # Nagle off, as asyncio sets it only on sockets made with proto IPPROTO_TCP and
    # create_server's have proto 0: without it every answer on a kept-alive connection
    # waited ~40 ms for the client's delayed ACK (45 ms of overhead a request in
    # bench_serve.py). Accepted connections inherit it from the listening socket.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class _terminate_quietly:
    """uvicorn re-raises the signal that stopped it once it has shut down; after a graceful
    stop on SIGTERM that would kill the process (status 143): return normally instead."""

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: None)

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)
