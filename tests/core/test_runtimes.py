"""--runtime onnx|openvino|auto: a checkpoint traced in memory and run in onnxruntime or
OpenVINO gives torch's detections; a runtime that cannot run or differs is one line."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_checkpoint

from gunctl.core import runtimes
from gunctl.core.inference import load_detector
from gunctl.core.runtimes import check_image
from gunctl.errors import UsageError

THRESHOLD = 0.05
NO_OPENVINO = importlib.util.find_spec("openvino") is None
RUNTIMES = [
    "onnx",
    pytest.param("openvino", marks=pytest.mark.skipif(NO_OPENVINO, reason="pip install openvino")),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


@pytest.fixture(scope="module")
def torch_detections(ckpt):
    """The expected values: torch's detections on two images of sizes other than the probe's."""
    detector = load_detector(ckpt, device="cpu", score_threshold=THRESHOLD, runtime="torch")
    assert detector.identity["runtime"] == "torch"
    found = [detector.detect([image])[0] for image in _images()]  # a batch would pad them
    assert all(record["boxes"] for record in found)  # something to compare
    return found


def _images():
    return [check_image(200, 300, seed=5), check_image(260, 180, seed=6)]


def _assert_match(expected: dict, got: dict) -> None:
    """Same number of boxes; each torch box has one of the same label within 1 px whose score
    is within 1e-3."""
    assert len(got["boxes"]) == len(expected["boxes"])
    free = list(range(len(got["boxes"])))
    for box, score, label in zip(
        expected["boxes"], expected["scores"], expected["labels"], strict=True
    ):
        near = [
            i
            for i in free
            if got["labels"][i] == label
            and max(abs(a - b) for a, b in zip(got["boxes"][i], box, strict=True)) <= 1.0
            and abs(got["scores"][i] - score) <= 1e-3
        ]
        assert near, f"no match for {box} {score} {label}"
        free.remove(near[0])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_gives_torchs_detections(ckpt, torch_detections, runtime):
    detector = load_detector(ckpt, device="cpu", score_threshold=THRESHOLD, runtime=runtime)
    assert detector.identity["runtime"] == runtime
    check = detector.identity["parity"]
    assert check["compared"] > 0 and check["boxes_px"] <= 1.0 and check["scores"] <= 1e-3
    for expected, got in zip(torch_detections, detector.detect(_images()), strict=True):
        _assert_match(expected, got)


def test_auto_picks_a_runtime_that_passed(ckpt):
    detector = load_detector(ckpt, device="cpu", runtime="auto")
    installed = [r for r in runtimes.AUTO_ORDER if _installed(r)]
    assert detector.identity["runtime"] == installed[0]


def test_a_lower_threshold_per_call_reaches_below_the_loaded_one(ckpt, torch_detections):
    """As torch's backend lowers the heads' floor for one call, so does the graph's input."""
    detector = load_detector(ckpt, device="cpu", score_threshold=0.9, runtime="onnx")
    found = detector.detect(_images(), score_threshold=THRESHOLD)
    for expected, got in zip(torch_detections, found, strict=True):
        _assert_match(expected, got)


def test_missing_package_explicit_is_one_line_auto_skips(ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(UsageError, match=r"needs the openvino package .*gunctl\[openvino\]"):
        load_detector(ckpt, device="cpu", runtime="openvino")
    monkeypatch.setattr(runtimes, "AUTO_ORDER", ("openvino", "onnx"))
    assert load_detector(ckpt, device="cpu", runtime="auto").identity["runtime"] == "onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UsageError, match=r"--runtime onnx needs the onnxruntime package"):
        load_detector(ckpt, device="cpu", runtime="onnx")
    assert load_detector(ckpt, device="cpu", runtime="auto").identity["runtime"] == "torch"


def test_parity_failure_explicit_is_one_line_auto_falls_back(ckpt, monkeypatch):
    monkeypatch.setattr(runtimes, "BOX_TOLERANCE_PX", -1.0)  # any difference is too much
    with pytest.raises(UsageError, match="fasterrcnn.* in onnx differs from torch") as caught:
        load_detector(ckpt, device="cpu", runtime="onnx")
    assert "\n" not in str(caught.value)
    monkeypatch.setattr(runtimes, "AUTO_ORDER", ("onnx",))
    assert load_detector(ckpt, device="cpu", runtime="auto").identity["runtime"] == "torch"


def test_parity_failure_through_predict_exits_2(gunctl, ckpt, tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 120, 150)).save(tmp_path / "a.jpg")
    monkeypatch.setattr(runtimes, "SCORE_TOLERANCE", -1.0)
    result = gunctl(
        "predict",
        tmp_path / "a.jpg",
        "--weights",
        ckpt,
        "--runtime",
        "onnx",
        "--out",
        tmp_path / "out",
        "--workers",
        "0",
    )
    assert result.exit_code == 2
    assert "differs from torch" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_onnx_file_with_runtime_torch_is_one_line(ckpt, tmp_path):
    from gunctl.config import ExportConfig
    from gunctl.core.export import export

    onnx = export(ExportConfig(checkpoint=ckpt, format="onnx", out=tmp_path / "m.onnx")).path
    with pytest.raises(UsageError, match="m.onnx: an ONNX file runs in onnxruntime or openvino"):
        load_detector(onnx, runtime="torch")
    assert load_detector(onnx, runtime="onnx").identity["runtime"] == "onnx"
    if _installed("openvino"):
        assert load_detector(onnx, runtime="openvino").identity["runtime"] == "openvino"


def test_predict_cli_onnx_writes_torchs_predictions(gunctl, ckpt, tmp_path, sample_data):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in sorted(p.name for p in (sample_data / "Images").iterdir())[:3]:
        shutil.copy(sample_data / "Images" / name, pictures / name)
    records = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / runtime
        result = gunctl(
            "predict",
            pictures,
            "--weights",
            ckpt,
            "--runtime",
            runtime,
            "--score-threshold",
            str(THRESHOLD),
            "--out",
            out,
            "--workers",
            "0",
            "--no-save-images",
            "--batch-size",
            "1",  # torch pads a batch of images of different sizes: other detections
        )
        assert result.exit_code == 0, result.output
        assert f"runtime: {runtime}" in result.stdout
        lines = (out / "predictions.jsonl").read_text().splitlines()
        records[runtime] = [json.loads(line) for line in lines]
    assert sum(len(r["boxes"]) for r in records["torch"]) > 0
    for expected, got in zip(records["torch"], records["onnx"], strict=True):
        assert expected["source"] == got["source"]
        _assert_match(expected, got)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(runtimes.PACKAGES[name]) is not None


def test_probe_is_deterministic():
    assert torch.equal(runtimes.probe(), runtimes.probe())


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", ["retinanet", "fcos", "ssdlite"])  # Faster R-CNN: above
def test_every_family_runs_in_the_runtime_as_in_torch(family, runtime, tmp_path):
    """The dense and SSD heads take the floor as a graph input too (small untrained models)."""
    from test_families import FAMILIES, _checkpoint  # tests/core: the families' small models

    assert family in FAMILIES
    ckpt = _checkpoint(family, tmp_path / f"{family}.pth")
    reference = load_detector(ckpt, device="cpu", score_threshold=THRESHOLD, runtime="torch")
    detector = load_detector(ckpt, device="cpu", score_threshold=THRESHOLD, runtime=runtime)
    assert detector.identity["runtime"] == runtime
    for image in _images():
        expected = reference.detect([image])[0]
        assert expected["boxes"]
        _assert_match(expected, detector.detect([image])[0])


def test_models_run_in_several_threads_give_torch_its_thread_count_back():
    """Two threads inside the runtime's one-thread section at once, leaving in the order they
    came: the second must not restore the first's 1 as the process's count."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the count to come back to, whatever this machine has
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    after: dict[str, int] = {}

    def first():
        with runtimes._torch_on_one_thread():
            after["first inside"] = torch.get_num_threads()
            first_in.set()
            second_in.wait(10)
        after["first"] = torch.get_num_threads()
        first_out.set()

    def second():  # starts torch while the first is inside
        first_in.wait(10)
        with runtimes._torch_on_one_thread():
            second_in.set()
            first_out.wait(10)
        after["second"] = torch.get_num_threads()

    def later():
        after["later thread"] = torch.get_num_threads()

    try:
        threads = [threading.Thread(target=target) for target in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        late = threading.Thread(target=later)
        late.start()
        late.join(20)
        after["main"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert after == {"first inside": 1, "first": 2, "second": 2, "later thread": 2, "main": 2}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_fixed_size_family_runs_four_images_per_graph_call_as_torch_one_by_one(runtime, tmp_path):
    """SSDlite's images all resize to one square: its second graph takes GRAPH_BATCH of them
    per run. Six different images (one batch of four, then two alone) must each get torch's
    own detections for that image, not a neighbour's."""
    from test_families import _checkpoint

    ckpt = _checkpoint("ssdlite", tmp_path / "ssdlite.pth")
    reference = load_detector(ckpt, device="cpu", score_threshold=THRESHOLD, runtime="torch")
    detector = load_detector(ckpt, device="cpu", score_threshold=THRESHOLD, runtime=runtime)
    backend = detector._backend
    assert backend.batch == runtimes.GRAPH_BATCH == 4
    calls = {"batch": 0, "one": 0}

    def counted(kind, inner):
        def run(feeds):
            calls[kind] += 1
            return inner(feeds)

        return run

    backend._run_batch = counted("batch", backend._run_batch)
    backend._run_one = counted("one", backend._run_one)
    images = [check_image(100 + 20 * i, 180 - 10 * i, seed=10 + i) for i in range(6)]
    expected = [reference.detect([image])[0] for image in images]
    assert len({json.dumps(e["scores"]) for e in expected}) == len(images)  # all differ
    got = detector.detect(images)
    assert calls == {"batch": 1, "one": 2}
    for one, other in zip(expected, got, strict=True):
        assert one["boxes"] and (one["width"], one["height"]) == (other["width"], other["height"])
        _assert_match(one, other)
