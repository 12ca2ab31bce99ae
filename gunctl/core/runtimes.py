"""Runtimes other than torch for the inference core (``--runtime onnx|openvino|auto``).

A checkpoint is traced to ONNX in memory (``onnx_graph``, nothing written) with the
heads' score floor as a second input, so that a call may lower it as torch's backend does;
the resize, normalisation and box rescale stay in torch around it (``Frame``), one image per
run, or ``GRAPH_BATCH`` at once for a family with one fixed input size (SSDlite: a second
graph, whose images stack without padding). The cap of detections per image is the one
loaded (a call cannot raise it). The graph
runs in onnxruntime or OpenVINO (f32: OpenVINO's default on a bf16-capable CPU is bf16,
which moves scores by more than the tolerance). Before a runtime is used, a parity check
runs it and torch on a probe image at a low floor: every box scoring clearly above the cut in
one must be in the other with the same label, within ``BOX_TOLERANCE_PX`` and
``SCORE_TOLERANCE`` (export's bar).

``auto`` on the CPU tries ``AUTO_ORDER`` (the fastest first, measured by
``benchmarks/bench_runtimes.py``) and keeps the first that is installed and passes (else
torch); on CUDA it is torch. Its cost at load: the trace (about 2 s at one thread), the
session and two runs of the probe image (SSDlite: a second trace and session, and four test
cards more: 3.4 s in all at 2 threads). bf16 stays off (benchmarks/README.md: faster, but
mAP@0.5 moved by up to 0.011 on the folds measured).
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes

from gunctl.core.forward import family_heads, head_limits, resize_fixed, resize_for_model
from gunctl.errors import CheckpointError, UsageError, first_line

# An exported or runtime model must match eager PyTorch within these (the bar).
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 1e-3
# the fastest first, by bench_runtimes.py at one CPU thread (benchmarks/README.md): onnxruntime
# 123-125 ms/img, OpenVINO f32 147-153, torch fp32 159-187 (ResNet-18 FPN Faster R-CNN and FCOS
# at 192 px); torch is the last resort. A fixed order: a timed probe would build every runtime
# at each load (OpenVINO's compile alone is 1.4-2.4 s).
AUTO_ORDER = ("onnx", "openvino")
# what each runtime imports, and how to get it
PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}
INSTALL = {"onnx": "pip install onnxruntime", "openvino": "pip install 'gunctl[openvino]'"}
# the probe's floor: low enough that an untrained or weak model still gives boxes to compare
PROBE_FLOOR = 0.01
PROBE_SHAPE = (360, 480)
# Images per run of the second graph of a fixed-size family (SSDlite), `predict`'s default
# --batch-size: bench_runtimes.py at 2 threads, SSDlite 320 in onnxruntime, 7.9 ms/img four at
# a time against 10.3 one at a time (benchmarks/README.md; 8 at once gained little more).
GRAPH_BATCH = 4
# the graph's outputs: each detection's box, score, label id and the index of its image
OUTPUTS = ("boxes", "scores", "labels", "image_index")


class FloorModule(nn.Module):
    """N resized, normalised float images of one size (N x 3 x H x W) and the heads' score
    floor in; the heads' boxes (in the resized images' pixels), scores, label ids and each
    detection's image index out. Traced at N = 1 with any height and width, or at N =
    ``GRAPH_BATCH`` with a fixed-size family's size (the heads' per-image loop is unrolled).
    The floor is an input rather than a constant of the graph; the resize stays outside
    (``Frame``): OpenVINO computes the sizes' float64 arithmetic in float32, which makes some
    images 1 px larger than torch's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.transform = model.transform
        self.heads = family_heads(model)
        self.limits = head_limits(model)

    def forward(self, images: Tensor, floor: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        saved = self.limits.score_thresh
        self.limits.score_thresh = floor  # compared as `scores > floor` in every family
        try:
            each = list(images.unbind(0))
            padded = self.transform.batch_images(each, self.transform.size_divisible)
            size = (images.shape[-2], images.shape[-1])
            found = self.heads(ImageList(padded, [size] * len(each)))
        finally:
            self.limits.score_thresh = saved
        index = [torch.full_like(one["labels"], i) for i, one in enumerate(found)]
        return (
            torch.cat([one["boxes"] for one in found]),
            torch.cat([one["scores"] for one in found]),
            torch.cat([one["labels"] for one in found]),
            torch.cat(index),
        )


class Frame:
    """What ``DetectionModule`` does around the heads, in torch: uint8 image to the resized,
    normalised input of ``FloorModule``, and its boxes back to the image's pixels."""

    def __init__(self, model: nn.Module):
        self.transform = model.transform
        self.fixed = model.transform.fixed_size is not None  # one input size (SSDlite)

    def resized(self, image: Tensor) -> Tensor:
        transform = self.transform
        normalised = transform.normalize(image.float() / 255.0)
        if transform.fixed_size is not None:
            return resize_fixed(normalised, transform.fixed_size)
        return resize_for_model(normalised, int(transform.min_size[-1]), int(transform.max_size))

    @staticmethod
    def boxes(boxes: Tensor, resized: Tensor, image: Tensor) -> Tensor:
        return resize_boxes(boxes, list(resized.shape[-2:]), list(image.shape[-2:]))


def onnx_graph(
    module,
    example: tuple,
    input_names: list[str],
    opset: int = 17,
    outputs: tuple[str, ...] = OUTPUTS[:3],
    image_axes: dict[int, str] | None = None,
) -> bytes:
    """``module`` traced to an ONNX graph in memory: ``input_names[0]`` an image whose
    ``image_axes`` may vary (default: a 3 x H x W image of any height and width; the others as
    in ``example``), ``outputs`` of any count (default ``boxes``, ``scores``, ``labels``). Also
    what ``gunctl export --format onnx`` writes."""
    import warnings

    buffer = io.BytesIO()
    detections = {0: "detections"}
    image_axes = {1: "height", 2: "width"} if image_axes is None else image_axes
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes as Python values
        torch.onnx.export(
            module,
            example,
            buffer,
            dynamo=False,  # the TorchScript exporter handles torchvision's detection models
            opset_version=opset,
            input_names=input_names,
            output_names=list(outputs),
            dynamic_axes={input_names[0]: image_axes, **{name: detections for name in outputs}},
        )
    return buffer.getvalue()


def check_image(height: int, width: int, seed: int) -> Tensor:
    """A uint8 test card (smooth gradients with a few blocks): gives the detector edges."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, width).view(1, width)
    image = torch.stack([y.expand(height, width), x.expand(height, width), (x * y)]) * 200
    for _ in range(6):
        top, left = (
            int(v) for v in torch.randint(0, min(height, width) // 2, (2,), generator=generator)
        )
        colour = torch.randint(0, 255, (3, 1, 1), generator=generator).float()
        image[:, top : top + height // 4, left : left + width // 5] = colour
    return image.round().clamp(0, 255).to(torch.uint8)


def import_runtime(runtime: str, path, explicit: bool):
    """The runtime's package, or None (auto) / a one-line error (explicit) when missing."""
    import importlib

    try:
        return importlib.import_module(PACKAGES[runtime])
    except ImportError:
        if not explicit:
            return None
        raise UsageError(
            f"{path}: --runtime {runtime} needs the {PACKAGES[runtime]} package "
            f"({INSTALL[runtime]})"
        ) from None


@dataclass(frozen=True)
class Graphs:
    """A checkpoint's graphs: ``one`` image of any size per run, and for a fixed-size family
    ``batch``, ``GRAPH_BATCH`` images of that size per run (else None)."""

    one: bytes
    batch: bytes | None = None


def checkpoint_graph(model: nn.Module, path) -> Graphs:
    """The loaded model (heads configured) as ONNX graphs in memory."""
    frame = Frame(model)
    floor = torch.tensor(0.05)
    module = FloorModule(model).eval()
    names = ["image", "floor"]
    try:
        one = onnx_graph(
            module,
            (frame.resized(check_image(*PROBE_SHAPE, seed=0))[None], floor),
            names,
            outputs=OUTPUTS,
            image_axes={2: "height", 3: "width"},
        )
        batch = None
        if frame.fixed:  # every image resizes to the same size: they stack
            images = [frame.resized(image) for image in probes(GRAPH_BATCH)]
            example = (torch.stack(images), floor)
            batch = onnx_graph(module, example, names, outputs=OUTPUTS, image_axes={})
    except Exception as exc:  # the tracer and exporter raise many kinds
        raise UsageError(f"{path}: cannot trace the model to ONNX ({first_line(exc)})") from None
    return Graphs(one, batch)


class GraphBackend:
    """An ONNX graph in onnxruntime or OpenVINO. A checkpoint's graph (``frame`` given) takes
    resized images and the floor: one per run, or ``GRAPH_BATCH`` per run through
    ``run_batch`` (a fixed-size family's second graph) while a call has that many left; an
    exported file takes one uint8 image per run and keeps its own threshold (``floor``)."""

    device = torch.device("cpu")

    def __init__(self, run_one, floor: float, frame: Frame | None = None, run_batch=None):
        self._run_one = run_one
        self._run_batch = run_batch
        self.floor = floor
        self.frame = frame
        self.batch = GRAPH_BATCH if run_batch is not None else 1

    def run(self, images: list[Tensor], threshold: float, cap: int | None) -> list[dict]:
        with _torch_on_one_thread():
            if self.frame is None:
                return [self._file_run(image) for image in images]
            return self._run(images, threshold)

    def _file_run(self, image: Tensor) -> dict:
        boxes, scores, labels = (
            torch.from_numpy(np.asarray(v))
            for v in self._run_one({"image": image.contiguous().numpy()})
        )
        return {"boxes": boxes, "scores": scores, "labels": labels}

    def _run(self, images: list[Tensor], threshold: float) -> list[dict]:
        # as torch's backend: a call may ask for more than the floor
        floor = np.asarray(min(self.floor, threshold), dtype=np.float32)
        resized = [self.frame.resized(image) for image in images]
        found: list[dict] = []
        start = 0
        while self._run_batch is not None and len(images) - start >= self.batch:
            stacked = torch.stack(resized[start : start + self.batch]).numpy()
            found += _per_image(self._run_batch({"image": stacked, "floor": floor}), self.batch)
            start += self.batch
        for one in resized[start:]:
            found += _per_image(self._run_one({"image": one[None].numpy(), "floor": floor}), 1)
        for output, small, image in zip(found, resized, images, strict=True):
            output["boxes"] = self.frame.boxes(output["boxes"], small, image)
        return found


def _per_image(arrays, count: int) -> list[dict]:
    """A checkpoint graph's outputs split by their image index."""
    boxes, scores, labels, index = (torch.from_numpy(np.asarray(v)) for v in arrays)
    return [
        {"boxes": boxes[index == i], "scores": scores[index == i], "labels": labels[index == i]}
        for i in range(count)
    ]


# torch keeps its thread count per thread, seeded from a process-wide value when a thread first
# runs torch; set_num_threads writes both. The count to come back to is read by the first caller
# in, so that one caller's 1 is never restored as another's count.
_ONE_THREAD_LOCK = threading.Lock()
_one_thread_callers = 0
_threads_before = 1


@contextlib.contextmanager
def _torch_on_one_thread() -> Iterator[None]:
    """torch's resize and box rescale around the graph on one thread: torch's OpenMP threads
    spin for a while after each parallel region, on the cores the runtime's own threads need
    (bench_models.py at 2 threads: Faster R-CNN in onnxruntime 63 ms/img with torch's threads
    spinning, 46.5 without them; SSDlite 39 and 8.8). Several threads may run models at once
    (serve's batcher, watch's cameras, predict's writer): each gets the count from before the
    first of them back on exit. A thread that first runs torch while one is inside starts
    with 1 (torch offers no per-thread setting)."""
    global _one_thread_callers, _threads_before
    with _ONE_THREAD_LOCK:
        if _one_thread_callers == 0:
            _threads_before = torch.get_num_threads()
        _one_thread_callers += 1
        before = _threads_before
    torch.set_num_threads(1)
    try:
        yield
    finally:
        with _ONE_THREAD_LOCK:
            torch.set_num_threads(before)
            _one_thread_callers -= 1


def onnxruntime_backend(module, graph, floor: float, path, frame=None) -> GraphBackend:
    """``graph``: a checkpoint's ``Graphs`` (``frame`` given) or an exported file's path."""
    options = module.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # one knob for every runtime
    options.inter_op_num_threads = 1

    def session(source):
        try:
            made = module.InferenceSession(
                source, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own kinds for a corrupt graph
            raise CheckpointError(
                f"{path}: not a readable ONNX model ({first_line(exc)})"
            ) from None
        return lambda feeds: made.run(None, feeds)

    return _graph_backend(session, graph, floor, frame)


def openvino_backend(module, graph, floor: float, path, frame=None) -> GraphBackend:
    core = module.Core()
    settings = {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",  # bf16 (its default here) breaks parity
    }

    def compiled(source):
        try:
            model = core.compile_model(core.read_model(source), "CPU", settings)
        except Exception as exc:  # OpenVINO raises RuntimeError with a long text
            raise CheckpointError(f"{path}: OpenVINO cannot read it ({first_line(exc)})") from None
        request = model.create_infer_request()

        def run(feeds):
            result = request.infer(feeds)
            return [result[output] for output in model.outputs]

        return run

    return _graph_backend(compiled, graph, floor, frame)


def _graph_backend(load, graph, floor: float, frame) -> GraphBackend:
    """``load(source)``: a runner of one graph in the runtime; ``graph``: a checkpoint's
    ``Graphs`` or an exported file's path."""
    if not isinstance(graph, Graphs):
        return GraphBackend(load(str(graph)), floor)
    batch = load(graph.batch) if graph.batch is not None else None
    return GraphBackend(load(graph.one), floor, frame, batch)


BACKENDS = {"onnx": onnxruntime_backend, "openvino": openvino_backend}


def probe() -> Tensor:
    """The parity check's image: the export check's test card (deterministic)."""
    return check_image(*PROBE_SHAPE, seed=1)


def probes(count: int) -> list[Tensor]:
    """``count`` different test cards of the probe's size, the probe first."""
    return [check_image(*PROBE_SHAPE, seed=seed) for seed in range(1, count + 1)]


def parity(reference, candidate, floor: float, cap: int) -> dict:
    """Run both backends on the probe at ``floor`` (and on ``candidate.batch`` different test
    cards at once, when it runs several per call); the largest differences between their
    detections scoring clearly above the cut, and how many were compared on the probe."""
    image = probe()
    a = reference.run([image], floor, None)[0]
    check = differences(a, candidate.run([image], floor, None)[0], floor, cap)
    if candidate.batch > 1:
        cards = probes(candidate.batch)
        for card, got in zip(cards, candidate.run(cards, floor, None), strict=True):
            other = differences(reference.run([card], floor, None)[0], got, floor, cap)
            check["boxes_px"] = max(check["boxes_px"], other["boxes_px"])
            check["scores"] = max(check["scores"], other["scores"])
    return check


def differences(a: dict, b: dict, floor: float, cap: int) -> dict:
    """Match each box of ``a`` and ``b`` scoring at least the cut plus the score tolerance to
    the nearest box of the same label in the other (boxes near the cut may fall either side
    of it). The cut is the floor, or the lowest score kept when a side reached the cap."""
    cut = floor
    for side in (a, b):
        if len(side["scores"]) >= cap:
            cut = max(cut, float(side["scores"].min()))
    box_diff = score_diff = 0.0
    compared = 0
    for one, other in ((a, b), (b, a)):
        for box, score, label in zip(one["boxes"], one["scores"], one["labels"], strict=True):
            if float(score) < cut + SCORE_TOLERANCE:
                continue
            same = other["labels"] == label
            if not bool(same.any()):
                return {"boxes_px": float("inf"), "scores": float("inf"), "compared": compared}
            distance = (other["boxes"][same] - box).abs().amax(dim=1)
            best = int(distance.argmin())
            box_diff = max(box_diff, float(distance[best]))
            score_diff = max(score_diff, abs(float(other["scores"][same][best] - score)))
            compared += one is a
    return {"boxes_px": box_diff, "scores": score_diff, "compared": compared}


def passes(diff: dict) -> bool:
    return diff["boxes_px"] <= BOX_TOLERANCE_PX and diff["scores"] <= SCORE_TOLERANCE


def describe(diff: dict) -> str:
    return (
        f"boxes by {diff['boxes_px']:.3f} px, scores by {diff['scores']:.2e} over "
        f"{diff['compared']} box(es) of the probe image"
    )
