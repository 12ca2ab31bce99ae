"""train_one_epoch and evaluate: they return numbers and write no files."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gunctl.config import ALL_LOSS_KEYS
from gunctl.core.distributed import all_reduce_mean, any_rank
from gunctl.core.forward import detections
from gunctl.errors import DivergedError


@dataclass
class StepInfo:
    epoch: int  # 0-based
    batch: int  # 1-based, within the epoch
    batches: int  # in the whole epoch
    step: int  # global optimizer steps done, this one included
    images: int  # in this step, over all ranks
    losses: dict[str, float]  # this step's, averaged over ranks
    lr: float
    seconds: float


@dataclass
class LossMeter:
    """Running sums of the losses of one epoch; saved in interrupted checkpoints."""

    # the model's own losses join on the first step (each family has its own, ALL_LOSS_KEYS)
    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0})
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, losses: dict[str, float], images: int, seconds: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.images += images
        self.seconds += seconds

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def summary(self) -> dict[str, float]:
        return {
            **self.means(),
            "images": self.images,
            "seconds": self.seconds,
            "images_per_s": self.images / self.seconds if self.seconds else 0.0,
        }

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict | None) -> LossMeter:
        return cls(**state) if state else cls()


@dataclass
class TrainSetup:
    """What one optimizer step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    device: torch.device
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None
    cpu_bf16_backbone: bool = False  # see cpu_bf16_backbone()
    grad_clip: float | None = None
    world_size: int = 1

    def precision(self) -> str:
        """The training steps' arithmetic, in words."""
        if self.cpu_bf16_backbone:
            return "bf16 backbone"
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    setup: TrainSetup,
    *,
    epoch: int,
    step: int,
    first_batch: int,
    total_batches: int,
    meter: LossMeter,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Train over ``batches``; fills ``meter`` and returns the new global step.

    Raises DivergedError on a non-finite loss (before the optimizer step, so the weights
    stay finite) and KeyboardInterrupt when ``should_stop()`` turns true on any rank.
    """
    model.train()
    started = time.perf_counter()
    for batch, (images, targets) in enumerate(batches, start=first_batch + 1):
        images, targets = to_device(images, targets, setup.device)
        losses = _optimizer_step(model, images, targets, setup, epoch, batch)
        step += 1
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        losses = all_reduce_mean(losses, setup.device)
        count = len(images) * setup.world_size
        meter.add(losses, count, seconds)
        if on_step:
            lr = setup.optimizer.param_groups[0]["lr"]
            on_step(StepInfo(epoch, batch, total_batches, step, count, losses, lr, seconds))
        if any_rank(should_stop(), setup.device):
            raise KeyboardInterrupt
    return step


def _optimizer_step(model, images, targets, setup: TrainSetup, epoch: int, batch: int):
    backbone = _bf16_backbone(model) if setup.cpu_bf16_backbone else contextlib.nullcontext()
    with _autocast(setup.device, setup.amp_dtype), backbone:
        loss_dict = named_losses(model(images, targets))
    total = sum(loss_dict.values())
    values = host_losses(loss_dict, total)
    if not all(math.isfinite(v) for v in values.values()):
        bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
        raise DivergedError(f"loss became non-finite at epoch {epoch + 1}, batch {batch} ({bad})")
    setup.optimizer.zero_grad(set_to_none=True)
    if setup.scaler is not None:
        setup.scaler.scale(total).backward()
        setup.scaler.unscale_(setup.optimizer)
        _clip(model, setup.grad_clip)
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        total.backward()
        _clip(model, setup.grad_clip)
        setup.optimizer.step()
    if setup.scheduler is not None:
        setup.scheduler.step()
    return values


def named_losses(loss_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's losses under gunctl's names (ALL_LOSS_KEYS): the single-stage detectors'
    ("classification", "bbox_regression", "bbox_ctrness") get Faster R-CNN's "loss_" prefix."""
    named = {k if k.startswith("loss_") else f"loss_{k}": v for k, v in loss_dict.items()}
    unknown = set(named) - set(ALL_LOSS_KEYS)
    if unknown:  # a new torchvision loss: the displays would not show it
        raise ValueError(f"unknown losses {sorted(unknown)}: add them to ALL_LOSS_KEYS")
    return named


def host_losses(loss_dict: dict[str, torch.Tensor], total: torch.Tensor) -> dict[str, float]:
    """The step's losses as Python floats with one device-to-host copy (one CUDA sync per step
    instead of one per loss). Each value is the same float32 number ``float(v)`` gives."""
    keys = [*loss_dict, "loss"]
    stacked = torch.stack([v.detach().float() for v in loss_dict.values()] + [total.detach()])
    return dict(zip(keys, stacked.float().tolist(), strict=True))


def _clip(model: nn.Module, max_norm: float | None) -> None:
    if max_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    predictions: list[dict[str, torch.Tensor]]  # per image, in loader order, on the CPU
    targets: list[dict[str, torch.Tensor]]


def evaluate(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    amp_dtype: torch.dtype | None = None,
    compute_losses: bool = True,
    on_batch: Callable[[int], None] | None = None,
    class_names: Sequence[str] = ("gun",),
) -> EvalResult:
    """Validation losses (train-mode forward, no grad, BatchNorm frozen) and detections.

    torchvision's detectors return losses only in train mode and detections only in eval
    mode, so each batch runs twice when ``compute_losses``; BatchNorm layers stay in eval
    mode for the loss pass so that validation never changes the running statistics. The
    proposal sampling of the loss pass draws from a fixed seed on a forked RNG: validation
    losses repeat exactly, and training's random stream is left as it was.
    """
    with _fixed_rng(device):
        return _evaluate(
            model,
            batches,
            device,
            score_threshold,
            iou_threshold,
            amp_dtype,
            compute_losses,
            on_batch,
            class_names,
        )


def _evaluate(
    model,
    batches,
    device,
    score_threshold,
    iou_threshold,
    amp_dtype,
    compute_losses,
    on_batch,
    class_names,
) -> EvalResult:
    meter = LossMeter()
    predictions, targets_cpu = [], []
    detect_seconds = 0.0
    started = time.perf_counter()
    for images, targets in batches:
        images, targets = to_device(images, targets, device)
        if compute_losses:
            with _loss_mode(model), torch.no_grad(), _autocast(device, amp_dtype):
                loss_dict = named_losses(model(images, targets))
            stacked = torch.stack([v.float() for v in loss_dict.values()]).tolist()  # one sync
            losses = dict(zip(loss_dict, stacked, strict=True))
            losses["loss"] = sum(losses.values())
            meter.add(losses, len(images), 0.0)
        model.eval()
        tick = time.perf_counter()
        with torch.inference_mode(), _autocast(device, amp_dtype):
            outputs = detections(model, images)
        _sync(device)
        detect_seconds += time.perf_counter() - tick
        predictions.extend(
            {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}
            for out in outputs
        )
        targets_cpu.extend({k: v.cpu() for k, v in t.items()} for t in targets)
        if on_batch:
            on_batch(len(images))
    metrics = detection_metrics(
        predictions, targets_cpu, score_threshold, iou_threshold, class_names
    )
    if compute_losses:
        metrics.update(meter.means())
    metrics.update(
        seconds=time.perf_counter() - started,
        detect_seconds=detect_seconds,
        images_per_s=len(predictions) / detect_seconds if detect_seconds else 0.0,
    )
    return EvalResult(metrics, predictions, targets_cpu)


def detection_metrics(
    predictions,
    targets,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    class_names: Sequence[str] = ("gun",),
) -> dict:
    """Every figure of the detections (whatever ran the model): mAP, precision/recall/F1 at
    ``score_threshold``, the best-F1 threshold, the images and true boxes they rest on, and
    95 % intervals of mAP@0.5, precision and recall (bootstrap over images, core/confidence)."""
    from gunctl.core.confidence import intervals

    tick = time.perf_counter()
    metrics: dict = dict(mean_average_precision(predictions, targets, class_names))
    map_seconds = time.perf_counter() - tick
    metrics.update(detection_counts(predictions, targets, score_threshold, iou_threshold))
    metrics.update(best_f1_threshold(predictions, targets, iou_threshold))
    tick = time.perf_counter()
    metrics.update(
        intervals(
            predictions, targets, score_threshold=score_threshold, iou_threshold=iou_threshold
        )
    )
    metrics.update(
        images=len(predictions),
        boxes=sum(int(t["boxes"].shape[0]) for t in targets),
        map_seconds=map_seconds,
        ci_seconds=time.perf_counter() - tick,
    )
    return metrics


def mean_average_precision(predictions, targets, class_names: Sequence[str] = ("gun",)) -> dict:
    """COCO mAP@0.5:0.95, @0.5, @0.75 and mAR@100 (torchmetrics, faster_coco_eval backend),
    and ``per_class``: {name: {"map", "map_50", "boxes"}} for label k + 1 = class_names[k].

    None where the score is undefined (no true boxes in the images).
    """
    from torchmetrics.detection import MeanAveragePrecision

    # sync_on_compute=False: under torchrun only rank 0 evaluates, so there is nothing to gather
    # (and a gather that the other ranks never join would hang).
    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        backend="faster_coco_eval",
        sync_on_compute=False,
        class_metrics=True,
        extended_summary=True,  # the precision table gives AP@0.5 per class
    )
    metric.update(
        [{k: p[k] for k in ("boxes", "scores", "labels")} for p in predictions],
        [{k: t[k] for k in ("boxes", "labels")} for t in targets],
    )
    result = metric.compute()
    out = {}
    for key in ("map", "map_50", "map_75", "mar_100"):
        value = float(result[key])
        out[key] = value if value >= 0 else None  # -1 means "no true boxes"
    out["per_class"] = _per_class(result, targets, class_names)
    return out


def _per_class(result, targets, class_names: Sequence[str]) -> dict[str, dict]:
    """AP@0.5:0.95 from torchmetrics' map_per_class; AP@0.5 as COCO computes it, the mean of
    the 101-point precision at IoU 0.5 (all areas, 100 detections)."""
    labels = [int(k) for k in result["classes"].reshape(-1).tolist()]
    per_class_map = result["map_per_class"].reshape(-1).tolist()
    precision = result["precision"]  # (iou, recall, class, area, max detections)
    counts = torch.zeros(len(class_names) + 1, dtype=torch.int64)
    for target in targets:
        counts += torch.bincount(target["labels"], minlength=len(counts))[: len(counts)]
    out = {}
    for k, name in enumerate(class_names, start=1):
        entry: dict = {"map": None, "map_50": None, "boxes": int(counts[k])}
        if k in labels and counts[k] > 0:
            column = labels.index(k)
            at_50 = precision[0, :, column, 0, -1]
            at_50 = at_50[at_50 > -1]
            entry["map"] = per_class_map[column] if per_class_map[column] >= 0 else None
            entry["map_50"] = float(at_50.mean()) if len(at_50) else None
        out[name] = entry
    return out


def detection_counts(predictions, targets, score_threshold: float, iou_threshold: float):
    """Precision, recall and F1 of the detections scoring at least ``score_threshold``."""
    from torchvision.ops import box_iou

    tp = fp = fn = 0
    for pred, target in zip(predictions, targets, strict=True):
        boxes = pred["boxes"][pred["scores"] >= score_threshold]
        truth = target["boxes"]
        if len(boxes) == 0 or len(truth) == 0:
            fp += len(boxes)
            fn += len(truth)
            continue
        iou = box_iou(boxes, truth)  # detections come sorted by score: greedy matching
        matched = torch.zeros(len(truth), dtype=torch.bool)
        for row in iou:
            row = row.masked_fill(matched, -1.0)
            best = int(row.argmax())
            if row[best] >= iou_threshold:
                matched[best] = True
        hits = int(matched.sum())
        tp, fp, fn = tp + hits, fp + len(boxes) - hits, fn + len(truth) - hits
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def best_f1_threshold(predictions, targets, iou_threshold: float = 0.5) -> dict[str, float | None]:
    """The score threshold that maximises F1 (``best_f1_threshold``) and that F1 (``best_f1``).

    Matching is ``detection_counts``'s (greedy, by score, at ``iou_threshold``), which does not
    depend on the threshold for the detections above it: one pass over the detections sorted
    by score gives precision and recall at every threshold. None without detections or boxes.
    """
    hits, scores = [], []
    truths = 0
    for pred, target in zip(predictions, targets, strict=True):
        hits.append(_greedy_hits(pred["boxes"], target["boxes"], iou_threshold))
        scores.append(pred["scores"].float())
        truths += len(target["boxes"])
    if not scores or truths == 0 or sum(len(s) for s in scores) == 0:
        return {"best_f1_threshold": None, "best_f1": None}
    order = torch.cat(scores).argsort(descending=True, stable=True)
    sorted_scores = torch.cat(scores)[order]
    tp = torch.cat(hits)[order].cumsum(0).double()
    fp = torch.arange(1, len(order) + 1, dtype=torch.float64) - tp
    f1 = 2 * tp / (2 * tp + fp + (truths - tp))
    last_of_score = torch.ones(len(order), dtype=torch.bool)  # a threshold keeps all ties
    last_of_score[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    f1 = torch.where(last_of_score, f1, torch.full_like(f1, -1.0))
    best = int(f1.argmax())
    threshold = math.floor(float(sorted_scores[best]) * 1e4) / 1e4  # >= keeps that detection
    return {"best_f1_threshold": threshold, "best_f1": float(f1[best])}


def _greedy_hits(boxes: torch.Tensor, truth: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per detection (in the given, score-sorted order): whether it matched a true box."""
    from torchvision.ops import box_iou

    hits = torch.zeros(len(boxes), dtype=torch.bool)
    if len(boxes) == 0 or len(truth) == 0:
        return hits
    matched = torch.zeros(len(truth), dtype=torch.bool)
    for index, row in enumerate(box_iou(boxes.float(), truth.float())):
        row = row.masked_fill(matched, -1.0)
        best = int(row.argmax())
        if row[best] >= iou_threshold:
            matched[best] = hits[index] = True
    return hits


def cpu_bf16_backbone(enabled: bool, device: torch.device) -> bool:
    """Whether training steps on this CPU run the backbone (ResNet and FPN convolutions, most of
    a step) under bf16 autocast: with ``--amp`` (the default) on a CPU with native bf16
    arithmetic (AVX-512 BF16 or AMX), where it is ~1.4x faster per step
    (benchmarks/README.md). The RPN, the RoI heads and all box arithmetic stay fp32, and so
    does evaluation (validate, predict and export agree to fp32)."""
    if not enabled or device.type != "cpu":
        return False
    try:  # private helpers of torch.cpu: no public query of the CPU's bf16 support
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


@contextlib.contextmanager
def _bf16_backbone(model: nn.Module):
    """bf16 autocast (CPU) around the detector's backbone only, its features back in fp32."""
    backbone = getattr(model, "module", model).backbone  # DistributedDataParallel's module
    contexts: list = []

    def enter(module, args) -> None:
        context = torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        context.__enter__()
        contexts.append(context)

    def leave(module, args, features):
        contexts.pop().__exit__(None, None, None)
        return type(features)((name, f.float()) for name, f in features.items())

    handles = [backbone.register_forward_pre_hook(enter), backbone.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while contexts:  # the backbone raised: leave autocast all the same
            contexts.pop().__exit__(None, None, None)


def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA where the GPU has it, else fp16; None (fp32) on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device(images, targets, device: torch.device):
    non_blocking = device.type == "cuda"
    images = [image.to(device, non_blocking=non_blocking) for image in images]
    targets = [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in targets]
    return images, targets


@contextlib.contextmanager
def _loss_mode(model: nn.Module):
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        yield
    finally:
        model.eval()


@contextlib.contextmanager
def _fixed_rng(device: torch.device, seed: int = 0):
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
