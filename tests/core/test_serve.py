"""gunctl serve's app under a real uvicorn on 127.0.0.1 (a free port, in a thread), talked to
with httpx (and a raw socket where a client library would hide what is sent).

The model is a tiny Faster R-CNN built here (helpers.tiny_checkpoint: untrained, BatchNorm
calibrated so that scores spread), the images are the demo generator's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from helpers import tiny_checkpoint  # noqa: E402

THRESHOLD = 0.3  # the tiny model's scores spread from ~0.2 to ~0.97: a few boxes per image


@pytest.fixture(scope="module")
def model(module_tmp) -> Path:
    return tiny_checkpoint(module_tmp / "tiny.pth")


@pytest.fixture(scope="module")
def images(module_tmp) -> list[Path]:
    from gunctl.core.demo import generate

    generate(module_tmp / "demo", count=4, seed=3)
    return sorted((module_tmp / "demo" / "Images").iterdir())


@pytest.fixture(scope="module")
def detector(model):
    from gunctl.core.inference import load_detector

    return load_detector(model, device="cpu", score_threshold=THRESHOLD)


def config(model: Path, **overrides):
    from gunctl.config import ServeConfig

    values = dict(checkpoint=model, port=0, device="cpu", score_threshold=THRESHOLD)
    return ServeConfig(**{**values, **overrides})


@contextlib.contextmanager
def running(app):
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a thread; yields the base URL."""
    import uvicorn

    from gunctl.core.serve.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("never ready")


@pytest.fixture(scope="module")
def served(model, detector):
    """One server for the tests that only read (parity, batch, errors, page)."""
    from gunctl.core.serve.app import create_app

    with running(create_app(config(model), detector=detector)) as url:
        wait_ready(url)
        yield url


class Gate:
    """The real detector, held at ``detect`` until ``open`` is set (to fill the queue or pass
    the request timeout at a chosen moment)."""

    def __init__(self, detector):
        self.detector, self.open, self.entered = detector, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.detector, name)

    def detect(self, *args, **kwargs):
        self.entered.set()
        self.open.wait(30)
        return self.detector.detect(*args, **kwargs)


# --- results ----------------------------------------------------------------------------------


def test_detect_matches_predict_batch_size_1(served, model, images, tmp_path, gunctl):
    """Boxes within 1 px and scores within 1e-3 of `gunctl predict --batch-size 1` on the same
    images, as a raw body and as a multipart upload; the record is a predictions.jsonl line."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "pred"
    result = gunctl(
        "predict", folder, "--weights", model, "--batch-size", "1", "--workers", "0",
        "--score-threshold", THRESHOLD, "--device", "cpu", "--no-save-images", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = {
        Path(line["source"]).name: line
        for line in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())
    }
    assert len(expected) == len(images)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    boxes = 0
    for path in images:
        raw = httpx.post(f"{served}/v1/detect", content=path.read_bytes(), timeout=60)
        form = httpx.post(
            f"{served}/v1/detect", files={"image": (path.name, path.read_bytes())}, timeout=60
        )
        for response in (raw, form):
            assert response.status_code == 200, response.text
            body = response.json()
            want = expected[path.name]
            assert (body["width"], body["height"]) == (want["width"], want["height"])
            assert body["labels"] == want["labels"]
            assert len(body["boxes"]) == len(want["boxes"])
            for got, ref in zip(body["boxes"], want["boxes"], strict=True):
                assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) <= 1.0
            for got, ref in zip(body["scores"], want["scores"], strict=True):
                assert abs(got - ref) <= 1e-3
            assert body["model"]["sha256"] == sha
            assert body["model"]["class_names"] == ["gun"]
            assert body["score_threshold"] == THRESHOLD
            assert set(body["timing_ms"]) >= {"decode", "queue", "inference", "total"}
        assert form.json()["source"] == path.name
        boxes += len(want["boxes"])
    assert boxes > 0, "the tiny model found nothing: the comparison compared nothing"


def test_query_threshold_and_cap(served, images):
    data = images[0].read_bytes()
    low = httpx.post(f"{served}/v1/detect?score_threshold=0.05", content=data, timeout=60).json()
    capped = httpx.post(f"{served}/v1/detect?score_threshold=0.05&max_detections=1", content=data)
    assert len(low["boxes"]) > 1 and all(s >= 0.05 for s in low["scores"])
    assert capped.json()["boxes"] == low["boxes"][:1]
    for query in ("score_threshold=2", "score_threshold=x", "max_detections=0"):
        response = httpx.post(f"{served}/v1/detect?{query}", content=data)
        assert response.status_code == 422
        assert response.json()["error"] == "bad_parameter"


def test_batch_endpoint(served, images):
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in images[:3]]
    response = httpx.post(f"{served}/v1/detect/batch", files=files, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["source"] for r in body["results"]] == [p.name for p in images[:3]]
    for result, path in zip(body["results"], images[:3], strict=True):
        alone = httpx.post(f"{served}/v1/detect", content=path.read_bytes(), timeout=60).json()
        assert (result["width"], result["height"]) == (alone["width"], alone["height"])
        assert result["boxes"] == alone["boxes"] and result["scores"] == alone["scores"]
    too_many = [("image", (f"{i}.jpg", images[0].read_bytes())) for i in range(17)]
    refused = httpx.post(f"{served}/v1/detect/batch", files=too_many, timeout=60)
    assert refused.status_code == 400 and "16" in refused.json()["message"]


def test_model_route(served, model):
    body = httpx.get(f"{served}/v1/model").json()
    assert body["name"] == "tiny.pth" and body["format"] == "checkpoint"
    assert body["score_threshold"] == THRESHOLD and body["device"] == "cpu"
    assert "path" not in body  # the server's own paths stay on the server
    assert body["limits"]["max_batch_size"] == 1  # the CPU's default: no micro-batching


def test_batch_size_by_device():
    import torch

    from gunctl.core.serve.batching import batch_size_for

    assert batch_size_for(None, torch.device("cpu")) == 1
    assert batch_size_for(None, torch.device("cuda", 0)) == 8
    assert batch_size_for(4, torch.device("cpu")) == 4


# --- bad input -----------------------------------------------------------------------------


def _png_bomb(width: int, height: int) -> bytes:
    """A small PNG file of ``width x height`` px (zeros compress ~1000:1)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_images_are_json_errors(served, images):
    jpeg = images[0].read_bytes()
    bomb = _png_bomb(8000, 7000)  # 56 MP, above the 50 MP limit; ~10 KB on the wire
    assert len(bomb) < 100_000
    cases = [
        (b"hello, this is text\n" * 10, 415, "unsupported_media_type"),
        (b"%PDF-1.4 not an image", 415, "unsupported_media_type"),
        (jpeg[: len(jpeg) // 3], 400, "bad_image"),  # truncated JPEG
        (jpeg[:2000] + b"\x00" * 50, 400, "bad_image"),
        (b"", 400, "bad_image"),
        (bomb, 413, "image_too_large"),
    ]
    for data, status, kind in cases:
        response = httpx.post(f"{served}/v1/detect", content=data, timeout=60)
        assert response.status_code == status, (kind, response.text)
        body = response.json()
        assert body["error"] == kind and body["message"]
        assert "Traceback" not in response.text
    assert httpx.get(f"{served}/nowhere").json()["error"] == "not_found"
    assert httpx.get(f"{served}/v1/detect").status_code == 405
    empty_form = httpx.post(f"{served}/v1/detect", files={"x": ("a.txt", b"")}, timeout=60)
    assert empty_form.status_code == 400


def _raw_request(url: str, head: str, chunks, pause: float = 0.0) -> tuple[int, bytes, int]:
    """Send ``head`` then ``chunks`` on a socket, stop at the first answer; returns (status,
    response bytes, body bytes sent). The rest of the body is never sent."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, ConnectionResetError, BrokenPipeError):
                break
            sent += len(chunk)
            time.sleep(pause)
        sock.setblocking(True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the answer says Connection: close
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            answer += more
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    return status, answer, sent


def test_oversized_upload_is_413_while_it_streams(model, detector):
    """Content-Length above the limit: 413 before any of the body. Chunked (no length): 413
    once the counted bytes pass 1 MB, though the client announced nothing and has far more."""
    from gunctl.core.serve.app import create_app

    app = create_app(config(model, max_upload_mb=1.0), detector=detector)
    with running(app) as url:
        wait_ready(url)
        head = "POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        status, answer, sent = _raw_request(
            url, head + f"Content-Length: {50 * 2**20}\r\n\r\n", [b"\xff" * 65536] * 800
        )
        assert status == 413 and b"payload_too_large" in answer
        assert sent < 2**20  # answered before the body (50 MB announced) was sent
        piece = b"\xff\xd8\xff" + b"\x00" * 65533
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        status, answer, sent = _raw_request(
            url, head + "Transfer-Encoding: chunked\r\n\r\n", [chunk] * 800, pause=0.002
        )
        assert status == 413 and b"payload_too_large" in answer
        assert 2**20 <= sent < 8 * 2**20  # read up to the limit, not the 50 MB offered
        ok = httpx.post(f"{url}/v1/detect", content=b"\xff\xd8\xff" + b"\x00" * 1000)
        assert ok.status_code == 400  # the server lives on; small bodies pass the limit


# --- readiness, queue, timeout, auth ----------------------------------------------------------


def test_readyz_is_503_until_the_warm_up_inference(model, detector):
    from gunctl.core.serve.app import create_app

    release = threading.Event()

    def load():
        release.wait(30)
        return detector

    with running(create_app(config(model), load=load)) as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        response = httpx.get(f"{url}/readyz")
        assert response.status_code == 503 and "loading" in response.json()["message"]
        assert httpx.post(f"{url}/v1/detect", content=b"x").status_code == 503
        # HEAD, as some load balancers probe: the same status, no body
        for path, status in (("/healthz", 200), ("/readyz", 503)):
            head = httpx.head(f"{url}{path}")
            assert (head.status_code, head.content) == (status, b""), path
        release.set()
        wait_ready(url, timeout=30)
        assert httpx.get(f"{url}/readyz").json()["model"]["name"] == "tiny.pth"
        assert httpx.head(f"{url}/readyz").status_code == 200


def test_full_queue_is_503_with_retry_after(model, detector, images):
    from gunctl.core.serve.app import create_app

    gate = Gate(detector)
    gate.open.set()  # let the warm-up through
    app = create_app(config(model, max_queue=1, max_batch_size=1), detector=gate)
    data = images[0].read_bytes()
    with running(app) as url:
        wait_ready(url)
        gate.open.clear()
        gate.entered.clear()
        batcher = app.state.gunctl.batcher
        with httpx.Client(base_url=url, timeout=60) as client:
            results = {}

            def post(name):
                results[name] = client.post("/v1/detect", content=data)

            first = threading.Thread(target=post, args=("first",))
            first.start()
            assert gate.entered.wait(30)  # the first is in the model, the queue is empty
            second = threading.Thread(target=post, args=("second",))
            second.start()
            deadline = time.monotonic() + 30
            while batcher.depth() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = client.post("/v1/detect", content=data)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"] == "queue_full"
            gate.open.set()
            first.join(60)
            second.join(60)
        assert results["first"].status_code == 200 and results["second"].status_code == 200


def test_request_timeout_is_504(model, detector, images):
    from gunctl.core.serve.app import create_app

    gate = Gate(detector)
    gate.open.set()
    app = create_app(config(model, request_timeout=0.5), detector=gate)
    with running(app) as url:
        wait_ready(url)
        gate.open.clear()
        response = httpx.post(f"{url}/v1/detect", content=images[0].read_bytes(), timeout=30)
        gate.open.set()
        assert response.status_code == 504 and response.json()["error"] == "timeout"
        # a body that stops coming (a slow or stuck client): 408 at the same deadline
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n\xff\xd8"
            )
            answer = b""
            while b"}" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer


def test_inference_failure_is_500_without_details(model, detector, images):
    from gunctl.core.serve.app import create_app

    class Broken(Gate):
        fail = False

        def detect(self, *args, **kwargs):
            if self.fail:
                raise RuntimeError("secret internals /home/model")
            return self.detector.detect(*args, **kwargs)

    broken = Broken(detector)
    with running(create_app(config(model), detector=broken)) as url:
        wait_ready(url)
        broken.fail = True
        response = httpx.post(f"{url}/v1/detect", content=images[0].read_bytes(), timeout=30)
        assert response.status_code == 500
        assert response.json()["error"] == "internal_error"
        assert "secret" not in response.text and "Traceback" not in response.text
        broken.fail = False
        ok = httpx.post(f"{url}/v1/detect", content=images[0].read_bytes(), timeout=30)
        assert ok.status_code == 200  # the inference thread lives on


def test_api_key(model, detector, images):
    """A key (required off loopback; the server here binds 127.0.0.1 all the same): 401
    without it or with a wrong one, X-API-Key or Bearer pass; probes and the page stay open."""
    from gunctl.config import ServeConfig
    from gunctl.core.serve.app import create_app
    from gunctl.errors import UsageError

    with pytest.raises(UsageError, match="--api-key"):
        ServeConfig(host="0.0.0.0").check()
    with pytest.raises(UsageError, match="--api-key"):
        ServeConfig(host="192.168.1.10", api_key="short").check()
    key = "k" * 20 + "0123456789"
    app = create_app(config(model, host="0.0.0.0", api_key=key), detector=detector)
    data = images[0].read_bytes()
    with running(app) as url:
        wait_ready(url)
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": key[:-1]}, {"X-API-Key": ""}):
            response = httpx.post(f"{url}/v1/detect", content=data, headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"] == "unauthorized"
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/v1/model").status_code == 401
        ok = httpx.post(f"{url}/v1/detect", content=data, headers={"X-API-Key": key}, timeout=60)
        assert ok.status_code == 200
        bearer = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/metrics", headers=bearer).status_code == 200
        for path in ("/healthz", "/readyz", "/"):
            assert httpx.get(f"{url}{path}").status_code == 200


# --- batching and metrics --------------------------------------------------------------------


def test_concurrent_requests_share_a_forward_pass(model, detector, images):
    from gunctl.core.serve.app import create_app

    gate = Gate(detector)
    gate.open.set()
    app = create_app(config(model, max_batch_size=4, batch_timeout_ms=50), detector=gate)
    with running(app) as url:
        wait_ready(url)
        gate.open.clear()
        gate.entered.clear()
        with httpx.Client(base_url=url, timeout=60) as client:
            results = [None] * 5
            threads = [
                threading.Thread(
                    target=lambda i=i: results.__setitem__(
                        i, client.post("/v1/detect", content=images[0].read_bytes())
                    )
                )
                for i in range(5)
            ]
            threads[0].start()
            assert gate.entered.wait(30)  # one image in the model; four more arrive meanwhile
            for thread in threads[1:]:
                thread.start()
            batcher = app.state.gunctl.batcher
            deadline = time.monotonic() + 30
            while batcher.depth() < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            gate.open.set()
            for thread in threads:
                thread.join(60)
        sizes = sorted(r.json()["timing_ms"]["batch_size"] for r in results)
        assert sizes == [1, 4, 4, 4, 4]
        alone = results[0].json()  # the first went through alone
        for response in results[1:]:
            assert len(response.json()["scores"]) == len(alone["scores"])
            for got, ref in zip(response.json()["scores"], alone["scores"], strict=True):
                assert abs(got - ref) <= 1e-3
        different = [images[0].read_bytes(), images[1].read_bytes()]  # two sizes
        with httpx.Client(base_url=url, timeout=60) as client:
            gate.open.clear()
            gate.entered.clear()
            first = threading.Thread(
                target=client.post, args=("/v1/detect",), kwargs={"content": different[0]}
            )
            first.start()
            assert gate.entered.wait(30)
            mixed = [None, None]
            threads = [
                threading.Thread(
                    target=lambda i=i: mixed.__setitem__(
                        i, client.post("/v1/detect", content=different[i])
                    )
                )
                for i in range(2)
            ]
            for thread in threads:
                thread.start()
            while batcher.depth() < 2 and time.monotonic() < deadline + 30:
                time.sleep(0.01)
            gate.open.set()
            for thread in [first, *threads]:
                thread.join(60)
        # taken together, run apart: images of two sizes never share a padded batch
        assert [m.json()["timing_ms"]["batch_size"] for m in mixed] == [1, 1]


def test_metrics_count_the_requests(model, detector, images):
    from prometheus_client.parser import text_string_to_metric_families

    from gunctl.core.serve.app import create_app

    with running(create_app(config(model), detector=detector)) as url:
        wait_ready(url)
        boxes = 0
        for path in images[:3]:
            boxes += len(httpx.post(f"{url}/v1/detect", content=path.read_bytes()).json()["boxes"])
        httpx.post(f"{url}/v1/detect", content=b"not an image")
        text = httpx.get(f"{url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("gunctl_http_requests_total", route="/v1/detect", method="POST", status="200") == 3
    assert value("gunctl_http_requests_total", route="/v1/detect", method="POST", status="415") == 1
    assert value("gunctl_http_request_duration_seconds_count", route="/v1/detect") == 4
    assert value("gunctl_images_total") == 3  # the warm-up is not counted
    assert value("gunctl_batch_size_count") == 3
    assert value("gunctl_detections_total", class_name="gun") == boxes
    assert value("gunctl_queue_depth") == 0
    assert value("gunctl_ready") == 1
    info = [k for k in samples if k[0] == "gunctl_model_info"]
    assert len(info) == 1 and ("name", "tiny.pth") in info[0][1]
    assert value("gunctl_inference_seconds_count") == 3


# --- the page in a real browser ----------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BOX_COLOUR = (255, 45, 85)  # the page's #ff2d55


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "headless Chromium is not installed (Debian: chromium chromium-driver; "
            "`make system-deps` or .ci/system-deps.sh installs them)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_page_draws_the_boxes_of_an_uploaded_image(served, images, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = images[0]
    expected = httpx.post(f"{served}/v1/detect", content=path.read_bytes(), timeout=60).json()
    assert expected["boxes"]
    browser.get(f"{served}/")
    WebDriverWait(browser, 30).until(lambda d: "tiny.pth" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "canvas").get_attribute("data-boxes") != "0"
    )
    canvas = browser.find_element(By.ID, "canvas")
    assert canvas.get_attribute("data-boxes") == str(len(expected["boxes"]))
    status = browser.find_element(By.ID, "status").text
    assert f"{len(expected['boxes'])} detection" in status
    shown = json.loads(browser.find_element(By.ID, "json").text)
    assert shown["boxes"] == expected["boxes"]
    coloured = browser.execute_script(
        """const c = document.getElementById("canvas");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
          if (d[i] === arguments[0] && d[i + 1] === arguments[1] && d[i + 2] === arguments[2]) n++;
        return [n, c.width, c.height];""",
        *BOX_COLOUR,
    )
    assert coloured[1:] == [expected["width"], expected["height"]]
    assert coloured[0] > 100  # box outlines and label backgrounds drawn over the image


def test_connections_the_service_accepts_have_nagle_off():
    """The listening socket passes TCP_NODELAY to what it accepts (asyncio sets it only on
    sockets made with proto IPPROTO_TCP, which create_server's are not): without it each
    answer on a kept-alive connection waited ~40 ms for the client's delayed ACK."""
    from gunctl.core.serve.server import bind

    listener = bind("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()[:2], timeout=10):
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
