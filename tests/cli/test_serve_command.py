"""`gunctl serve` as users run it: refusals at the command line, and real server processes
(SIGTERM with requests in flight, --workers, --json-logs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from helpers import tiny_checkpoint  # noqa: E402

KEY = "0123456789abcdef0123"


@pytest.fixture(scope="module")
def model(module_tmp) -> Path:
    return tiny_checkpoint(module_tmp / "tiny.pth")


@pytest.fixture(scope="module")
def image(module_tmp) -> bytes:
    from gunctl.core.demo import generate

    generate(module_tmp / "demo", count=1, seed=5)
    return (module_tmp / "demo" / "Images" / "1.jpeg").read_bytes()


def test_refuses_a_network_bind_without_a_key(gunctl, tmp_path):
    result = gunctl("serve", tmp_path / "missing.pth", "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert "--api-key" in result.stderr and "GUNCTL_API_KEY" in result.stderr
    result = gunctl("serve", tmp_path / "m.pth", "--host", "0.0.0.0", env={"GUNCTL_API_KEY": "x"})
    assert result.exit_code == 2 and "16 printable" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_values_and_a_missing_model_are_one_line(gunctl, tmp_path):
    result = gunctl("serve", tmp_path / "m.pth", "--port", "70000")
    assert result.exit_code == 2 and "--port" in result.stderr
    result = gunctl("serve", tmp_path / "m.pth", "--max-batch-size", "0")
    assert result.exit_code == 2 and "--max-batch-size" in result.stderr
    result = gunctl("serve", tmp_path / "missing.pth", "--port", "0")
    assert result.exit_code == 2 and "missing.pth" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


class Server:
    """`python -m gunctl serve ... --port 0` in its own process; the URL read from stdout."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunctl", "serve", *args, "--port", "0", "--device", "cpu"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.url = None
        for line in self.process.stdout:
            match = re.match(r"url: (http://127\.0\.0\.1:\d+)/", line)
            if match:
                self.url = match.group(1)
                break
        assert self.url, f"no url line: {''.join(self.stderr)[-2000:]}"

    def _drain_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"never ready: {''.join(self.stderr)[-2000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def in_flight(url: str) -> float:
    """Requests in flight, less the /metrics request asking."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("gunctl_http_requests_in_flight "):
            return float(line.split()[1]) - 1
    return 0.0


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(model, image):
    """SIGTERM while requests run: each of them completes (200), a new one gets 503 while
    the server drains, and the process exits 0; --json-logs lines are JSON objects."""
    server = Server(str(model), "--max-batch-size", "1", "--drain-seconds", "2", "--json-logs")
    try:
        server.wait_ready()
        results: list = []
        done_at: list[float] = []

        def post() -> None:
            response = httpx.post(f"{server.url}/v1/detect", content=image, timeout=120)
            results.append(response.status_code)
            done_at.append(time.monotonic())

        threads = [threading.Thread(target=post) for _ in range(12)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60  # all 12 arrived, some still running
        while in_flight(server.url) + len(results) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = httpx.post(f"{server.url}/v1/detect", content=image, timeout=30)
        assert late.status_code == 503 and late.json()["error"] == "shutting_down"
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        for thread in threads:
            thread.join(120)
        assert results == [200] * 12
        assert max(done_at) > signalled  # some were still running when SIGTERM came
        assert server.process.wait(60) == 0
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.stderr if line.startswith("{")]
    assert any("SIGTERM" in line["message"] for line in lines)
    access = [line for line in lines if line["logger"] == "gunctl.serve.access"]
    assert sum(1 for line in access if line["path"] == "/v1/detect" and line["status"] == 200) == 12
    assert all(
        set(line) >= {"time", "client", "method", "status", "duration_ms"} for line in access
    )


@pytest.mark.slow
def test_workers_share_one_port(model, image):
    server = Server(str(model), "--workers", "2", "--api-key", KEY)
    try:
        server.wait_ready(180)
        headers = {"X-API-Key": KEY}
        deadline = time.monotonic() + 180  # gunctl_ready: the lowest over the workers
        while time.monotonic() < deadline:
            text = httpx.get(f"{server.url}/metrics", headers=headers).text
            if "gunctl_ready 1.0" in text.splitlines():
                break
            assert "gunctl_ready 0.0" in text.splitlines()  # one worker still loading
            time.sleep(0.2)
        for _ in range(4):
            response = httpx.post(
                f"{server.url}/v1/detect", content=image, headers=headers, timeout=120
            )
            assert response.status_code == 200
        assert httpx.post(f"{server.url}/v1/detect", content=image).status_code == 401
        # whichever worker answers the scrape, it counts the requests of both
        from prometheus_client.parser import text_string_to_metric_families

        for _ in range(3):
            text = httpx.get(f"{server.url}/metrics", headers=headers).text
            counted = {
                (s.labels.get("route"), s.labels.get("status")): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "gunctl_http_requests_total"
            }
            assert counted[("/v1/detect", "200")] == 4
            assert counted[("/v1/detect", "401")] == 1
        ready = [line for line in text.splitlines() if line.startswith("gunctl_ready")]
        assert ready == ["gunctl_ready 1.0"], text
    finally:
        assert server.stop() == 0
    started = {
        m for line in server.stderr for m in re.findall(r"Started server process \[(\d+)\]", line)
    }
    assert len(started) == 2, "".join(server.stderr)[-2000:]
