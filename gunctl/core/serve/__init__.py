"""`gunctl serve`: the trained detector as an HTTP service (FastAPI on uvicorn).

- ``server.serve(config, on_start)``: loads the model, binds the port, runs uvicorn (one
  process, or ``--workers N`` each with its own model).
- ``app.create_app(config, detector)``: the routes, with limits, auth and metrics stacked once.
- ``batching.Batcher``: the one inference thread per process, micro-batching, bounded queue.
- ``limits``: admission (draining, open requests), API key, body size, image checks.
- ``metrics.Metrics``: Prometheus counters and histograms; ``logs``: plain or JSON log lines.

Detection goes through ``gunctl.core.inference`` (``load_detector``, ``Detector.detect``),
the same path as ``gunctl predict``.
"""
