"""Typed configuration that the CLI fills and the core reads.

Every default carries the reason it was chosen. The resolved configuration is
stored in every checkpoint and in the TensorBoard run (see ``to_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gunctl.errors import UsageError

KAGGLE_HANDLE = "issaisasank/guns-object-detection"  # the data set the original pipeline used
CLASS_NAMES = ("background", "gun")  # torchvision detectors reserve label 0 for background
# Each family's losses (torchvision's names, "loss_" added to the single-stage ones), with the
# short label the epoch table shows. LOSS_KEYS: Faster R-CNN's; ALL_LOSS_KEYS: every family's.
FAMILY_LOSSES = {
    "fasterrcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
    "retinanet": ("loss_classification", "loss_bbox_regression"),
    "fcos": ("loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"),
    "ssdlite": ("loss_classification", "loss_bbox_regression"),
}
LOSS_KEYS = FAMILY_LOSSES["fasterrcnn"]
ALL_LOSS_KEYS = tuple(dict.fromkeys(k for keys in FAMILY_LOSSES.values() for k in keys))
LOSS_LABELS = dict(
    zip(ALL_LOSS_KEYS, ("cls", "box", "obj", "rpn", "cls", "box", "ctr"), strict=True)
)
MODEL_NAMES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet18_fpn",  # gunctl's: torchvision's ResNet-18 + FPN, for the CPU
    "fasterrcnn_resnet34_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet18_fpn",  # gunctl's build, as torchvision's ResNet-50 one
    "retinanet_resnet50_fpn",
    "fcos_resnet18_fpn",  # gunctl's build, as torchvision's ResNet-50 one
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
)


def model_family(name: str) -> str:
    """fasterrcnn, retinanet, fcos or ssdlite: the part of a model name before its backbone."""
    family = name.split("_", 1)[0]
    return "ssdlite" if family.startswith("ssdlite") else family


MAX_CLASSES = 1000  # object classes; the model adds one for the background
SIDES = (32, 4096)  # px: --min-size, --max-size and --multiscale sizes
RATIOS = (0.05, 20.0)  # anchors' height / width
WEIGHT_CHOICES = ("auto", "coco", "imagenet", "none")  # or a path to a gunctl checkpoint
OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
CACHE_MODES = ("none", "ram")
RECIPES = ("auto", "scratch", "finetune", "plain")  # auto: scratch without pretrained weights
NORMS = ("default", "bn", "frozen_bn", "gn")  # default: torchvision's choice for the weights
VALIDATE_PARTS = ("train", "val", "all")  # what `validate --split` may score
RUN_SORT_KEYS = ("name", "start", "map50", "loss", "epochs")  # `tb --list --sort`
# TrainConfig fields that --resume takes from the command line; the rest come from the checkpoint.
RESUMABLE_OPTIONS = ("epochs", "device", "workers", "cache", "resume", "promote")


@dataclass(frozen=True)
class Layout:
    """Where each command reads and writes, under one output root; the one home of file names."""

    root: Path = Path("artifacts")  # the original pipeline's folder; git-ignored

    LAST: ClassVar[str] = "last.pth"  # in each run's folder: written every epoch
    BEST: ClassVar[str] = "best.pth"  # in each run's folder: the best epoch so far (weights)
    RUN_CONFIG: ClassVar[str] = "config.yaml"  # in each run's folder: its resolved options

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def manifest(self) -> Path:
        return self.raw / "manifest.json"

    @property
    def split_file(self) -> Path:
        return self.root / "splits" / "split.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def best_model(self) -> Path:
        return self.models / "fasterrcnn.pth"  # the path the original pipeline used

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def last_checkpoint(self, run_name: str) -> Path:
        return self.run_dir(run_name) / self.LAST

    def best_checkpoint(self, run_name: str) -> Path:
        return self.run_dir(run_name) / self.BEST

    def epoch_checkpoint(self, run_name: str, epoch: int) -> Path:
        return self.run_dir(run_name) / f"epoch_{epoch}.pth"  # --save-period

    def run_config(self, run_name: str) -> Path:
        return self.run_dir(run_name) / self.RUN_CONFIG


@dataclass(frozen=True)
class IngestConfig:
    source: str = "kaggle"  # the real data set; "demo" or a path work offline
    version: int | None = None  # None: kagglehub's latest version
    layout: Layout = field(default_factory=Layout)
    force: bool = False  # never replace an existing raw tree unless asked
    strict: bool = False  # repairs (clipping, dropping bad boxes) are warnings by default
    seed: int = 0  # demo data only: same seed, same images
    count: int = 40  # demo data only: small enough to train on in a minute on a laptop CPU
    handle: str = KAGGLE_HANDLE
    max_pixels: int = 50_000_000  # refuse decompression bombs; real images are ~0.05 MP
    format: str = "auto"  # kaggle, yolo, coco or voc; auto detects it from the files
    classes: tuple[str, ...] | None = None  # keep (and order) these classes; None: all
    merge_classes: str | None = None  # map every kept class to this one name


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0  # fixed, so that two users get the same split
    val_fraction: float = 0.2  # the usual 80/20 hold-out
    subset: int | None = None  # None: all images; N: a seeded sample of N images first
    layout: Layout = field(default_factory=Layout)
    keep_source_split: bool = False  # the source's own train/val (YOLO, Roboflow) when asked

    def check(self) -> None:
        check_fraction("--val-fraction", self.val_fraction)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "fasterrcnn_resnet50_fpn"  # the original pipeline's model
    weights: str = "auto"  # COCO when cached or downloadable, else from scratch (with a warning)
    num_classes: int = len(CLASS_NAMES)
    # The data set's images are ~180x280 px: torchvision's 800 px up-samples them 4.5x for ~10x
    # the compute. Same budget from scratch on the real sample (benchmarks/README.md): val
    # mAP@0.5 0.43 at 256 px, 0.39 at 320, 0.36 at 224, 0.35 at 800.
    min_size: int = 256
    max_size: int = 448  # 1.75:1, above the typical 1.6:1 of the data set's images
    # Proposal and RoI counts: torchvision's (2000/2000/512) are sized for COCO's up to
    # ~100 objects per image; this data set has 1-12. RoIAlign backward runs on one CPU core.
    # Same budget at 320 px: val mAP@0.5 0.39 with these counts, 0.40 with torchvision's.
    rpn_pre_nms_top_n_train: int = 600
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 150
    box_batch_size_per_image: int = 128
    box_detections_per_img: int = 50  # far above the data set's maximum of 12 guns per image
    # The fields below default to torchvision's own behaviour (the plain recipe); the scratch
    # recipe (core/recipes.py) sets them. Old checkpoints, which lack them, rebuild as before.
    # Normalisation of ResNet backbones (and the FPN with gn): torchvision uses BatchNorm from
    # scratch and frozen BatchNorm with pretrained weights; at batch 2 BatchNorm's statistics
    # are noise, GroupNorm has none (He et al., "Rethinking ImageNet Pre-training").
    norm: str = "default"
    anchor_sizes: tuple[int, ...] = ()  # one per FPN level; (): the model's own (32 ... 512)
    aspect_ratios: tuple[float, ...] = ()  # height / width; (): (0.5, 1.0, 2.0)
    train_sizes: tuple[int, ...] = ()  # multi-scale training: a shorter side drawn per batch
    # ResNet stages feeding the FPN; (): all four. (2, 3, 4) drops the stride-4 level, which
    # holds three quarters of the FPN's and RPN's pixels and serves objects under ~32 px.
    fpn_levels: tuple[int, ...] = ()
    # Widths: the FPN's channels (so also the RPN head's and the pooled RoI features'; ResNet-FPN
    # models) and the box head's two fully connected layers (all models but the v2).
    # torchvision's 256 and 1024 are sized for COCO's 80 classes; for one class on the CPU the
    # box head's 12544x1024 layer and RoIAlign's single-threaded backward are a third of a
    # ResNet-18 step (benchmarks/README.md).
    fpn_channels: int = 256
    box_head_dim: int = 1024

    def check(self, relations: bool = True) -> None:
        """Every value's rule, for the command line, config files and checkpoints alike (the
        last two are untrusted: a value here sizes memory). ``relations=False``: each value
        alone, before a recipe fills in the rest (its --max-size follows a user's --min-size)."""
        check_choice("--model", self.name, MODEL_NAMES)
        check_choice("--norm", self.norm, NORMS)
        check_ints("--min-size", (self.min_size,), *SIDES)
        check_ints("--max-size", (self.max_size,), *SIDES)
        if relations and self.min_size > self.max_size:
            raise UsageError(f"--min-size {self.min_size} is above --max-size {self.max_size}")
        classes = self.num_classes
        if isinstance(classes, bool) or not isinstance(classes, int):
            raise UsageError(f"classes: a whole number, got {classes!r}")
        if not 2 <= classes <= MAX_CLASSES + 1:
            raise UsageError(f"{classes - 1} classes: gunctl trains 1 to {MAX_CLASSES} classes")
        check_ints("--multiscale", self.train_sizes, *SIDES)
        check_ints("--fpn-levels", self.fpn_levels, 1, 4)
        if list(self.fpn_levels) != sorted(set(self.fpn_levels)):
            raise UsageError(f"--fpn-levels: ResNet stages in rising order, got {self.fpn_levels}")
        check_ints("anchor sizes", self.anchor_sizes, 1, SIDES[1])
        low, high = RATIOS
        ratios = self.aspect_ratios
        if not isinstance(ratios, tuple) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and low <= r <= high
            for r in ratios
        ):
            raise UsageError(f"aspect ratios: numbers from {low} to {high}, got {ratios!r}")
        if not (32 <= self.fpn_channels <= 1024 and self.fpn_channels % 32 == 0):
            raise UsageError(
                f"--fpn-channels must be a multiple of 32 from 32 to 1024, got {self.fpn_channels}"
            )
        if not 16 <= self.box_head_dim <= 4096:
            raise UsageError(f"--box-head-dim must be from 16 to 4096, got {self.box_head_dim}")

    def builder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the torchvision builder (besides weights)."""
        fields = dataclasses.asdict(self)
        for key in (
            "name",
            "weights",
            "num_classes",
            "norm",
            "anchor_sizes",
            "aspect_ratios",
            "train_sizes",
            "fpn_levels",
            "fpn_channels",
            "box_head_dim",
        ):
            fields.pop(key)
        if self.train_sizes:  # torchvision draws from the tuple in training, uses the last in eval
            fields["min_size"] = (*self.train_sizes, self.min_size)
        return fields


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    layout: Layout = field(default_factory=Layout)
    epochs: int = 10  # enough for COCO-initialised weights to converge on ~3000 images
    subset: int | None = None  # None: the whole split; N: a fresh seeded split of N images
    # Per process. None: 8 on CUDA (bf16 img/s 43 at 8 vs 14 at 2 on an H100, memory 16 GiB
    # at 800 px), 2 on the CPU (peak RSS 2.6 GiB vs 3.4 GiB at 4, and no slower per image).
    batch_size: int | None = None
    lr: float = 1e-4  # the original pipeline's Adam learning rate
    optimizer: str = "adam"  # as in the original pipeline
    weight_decay: float = 0.0  # the original pipeline used none; try 1e-4 with adamw/sgd
    momentum: float = 0.9  # sgd only; the usual value
    lr_schedule: str = "cosine"  # decays to ~0 at the last step: no tuning of decay epochs
    warmup_steps: int = 50  # linear warm-up, capped at one epoch for short runs
    grad_clip: float | None = 10.0  # keeps from-scratch runs from diverging on a bad batch
    device: str = "auto"  # cuda when available, else cpu
    amp: bool = True  # bf16/fp16 autocast on CUDA; a CPU with native bf16: the backbone in bf16
    channels_last: bool = True  # CUDA only: +13 % (batch 8) to +24 % (16) train img/s with bf16
    workers: int = 2  # decoding is cheap (~1 ms per image); 2 hides it behind the model
    cache: str = "none"  # "ram" keeps decoded images in memory (small data sets)
    group_aspect_ratios: bool = True  # batch landscape with landscape: less padding per batch
    seed: int = 0  # same seed, same losses on the CPU
    hflip: bool = True  # guns point both ways: a free doubling of the data
    run_name: str | None = None  # None: a timestamp
    resume: str | None = None  # a run name or a checkpoint path
    val_fraction: float = 0.2  # used only when train has to make a split itself
    log_images: int = 4  # val images drawn into TensorBoard each epoch
    score_threshold: float = 0.5  # for precision/recall in the epoch table
    promote: bool = False  # replace models/fasterrcnn.pth even when the run is not as good
    patience: int | None = None  # None: all epochs; N: stop after N epochs without a better mAP
    save_period: int | None = None  # None: last.pth only; N: also keep epoch_<E>.pth every N

    # The recipe fills the options below that the user did not set (``explicit``); the
    # defaults here are the plain recipe: gunctl's behaviour before recipes existed.
    recipe: str = "auto"  # scratch without pretrained weights, finetune with them
    explicit: tuple[str, ...] = ()  # options the user set ("lr", "model.name"): kept as given
    photometric: float = 0.0  # probability of brightness/contrast/saturation/hue distortion
    zoom_out: float = 0.0  # probability of placing the image on a canvas up to 2x larger
    crop: float = 0.0  # probability of an IoU-aware random crop (SSD's)
    mosaic: float = 0.0  # probability of a 2x2 mosaic of 4 training images
    ema: bool = False  # evaluate and save an exponential moving average of the weights
    ema_decay: float | None = None  # None: fitted to the run's length (window ~ steps / 10)
    fit_anchors: bool = False  # anchor sizes and ratios from the training boxes' quantiles
    minutes: float | None = None  # a wall-time budget: epochs and schedule fitted to it
    val_every: int = 1  # validate every k epochs (and always after the last)

    def check(self, relations: bool = True) -> None:
        """Every option's rule (the command line's options carry none of their own): a
        resumed run's stored values pass here too, and a checkpoint is untrusted.
        ``relations=False``: each value alone (ModelConfig.check)."""
        self.model.check(relations)
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("--cache", self.cache, CACHE_MODES)
        check_choice("--recipe", self.recipe, RECIPES)
        if self.minutes is not None:
            check_number("--minutes", self.minutes, 0, math.inf, low_open=True)
        check_device(self.device)
        check_number("--lr", self.lr, 0, math.inf, low_open=True)
        check_fraction("--val-fraction", self.val_fraction)
        check_ints("--epochs", (self.epochs,), 1, 10**6)
        if self.batch_size is not None:
            check_ints("--batch-size", (self.batch_size,), 1, 4096)
        check_ints("--warmup-steps", (self.warmup_steps,), 0, 10**9)
        check_ints("--val-every", (self.val_every,), 1, 10**6)
        for flag, value in (("--patience", self.patience), ("--save-period", self.save_period)):
            if value is not None:
                check_ints(flag, (value,), 1, 10**6)
        check_number("--weight-decay", self.weight_decay, 0, math.inf)
        check_number("--momentum", self.momentum, 0, math.inf)
        if self.grad_clip is not None:
            check_number("--grad-clip", self.grad_clip, 0, math.inf, low_open=True)
        for flag, value in (
            ("--photometric", self.photometric),
            ("--zoom-out", self.zoom_out),
            ("--crop", self.crop),
            ("--mosaic", self.mosaic),
        ):
            check_number(flag, value, 0, 1)
        if self.ema_decay is not None:
            check_number("--ema-decay", self.ema_decay, 0, 1, high_open=True)
        for name in ("hflip", "ema", "fit_anchors", "amp", "channels_last", "promote"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name}: true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ValidateConfig:
    checkpoint: Path = field(default_factory=lambda: Layout().best_model)
    layout: Layout = field(default_factory=Layout)
    part: str | None = None  # None: the images the run validated on (else the split's val part)
    data: Path | None = None  # another raw tree in the Kaggle layout, scored whole
    batch_size: int = 4
    workers: int = 2
    channels_last: bool = True  # CUDA only: +7 % eval img/s with bf16 at batch 16
    device: str = "auto"
    score_threshold: float = 0.5  # detections below it do not count for precision/recall/F1
    iou_threshold: float = 0.5  # a detection matches a true box at IoU >= 0.5 (PASCAL VOC)
    amp: bool = True  # autocast on CUDA, as in training; ignored on the CPU
    save_predictions: Path | None = None
    tta: bool = False  # also score with horizontal-flip test-time augmentation (box fusion)

    def check(self) -> None:
        if self.part is not None:
            check_choice("--split", self.part, VALIDATE_PARTS)
        check_device(self.device)
        if self.data is not None and self.part is not None:
            raise UsageError("--data scores a whole folder; it does not go with --split")


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{flag} {value}: choose one of {', '.join(choices)}")


def check_ints(flag: str, values: tuple, low: int, high: int) -> None:
    """``values`` is a tuple of whole numbers from ``low`` to ``high``."""
    if not isinstance(values, tuple):
        raise UsageError(f"{flag}: a list of whole numbers, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UsageError(f"{flag}: whole numbers from {low} to {high}, got {value!r}")


def check_number(
    flag: str,
    value: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``value`` is a finite number from ``low`` to ``high`` (math.inf: no upper bound)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = number and math.isfinite(value) and (value > low if low_open else value >= low)
    if not (fits and (value < high if high_open else value <= high)):
        lower = f"above {low}" if low_open else f"from {low}"
        upper = "" if math.isinf(high) else (f" below {high}" if high_open else f" to {high}")
        raise UsageError(f"{flag}: a number {lower}{upper}, got {value!r}")


def check_fraction(flag: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise UsageError(f"{flag} must be between 0 and 1 (exclusive), got {value}")


def check_device(value: str) -> None:
    """The form of --device; whether that device exists here is distributed's question."""
    if value not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", value):
        raise UsageError(f"--device {value}: use auto, cpu, cuda or cuda:N")


def resumed_config(stored: TrainConfig, requested: TrainConfig) -> TrainConfig:
    """The stored config, with the RESUMABLE_OPTIONS (and the output layout) of the request."""
    changes = {name: getattr(requested, name) for name in RESUMABLE_OPTIONS}
    return dataclasses.replace(stored, layout=requested.layout, **changes)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what predict decodes in folders and archives
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
EXPORT_FORMATS = ("torchscript", "onnx", "pth")


@dataclass(frozen=True)
class PredictConfig:
    sources: tuple[str, ...] = ()  # files, folders (recursive), globs, .zip archives, videos
    checkpoint: Path = Path("artifacts/models/fasterrcnn.pth")
    out: Path | None = None  # None: <layout.root>/predictions/<timestamp>, never an existing one
    layout: Layout = field(default_factory=Layout)
    score_threshold: float | None = None  # None: the checkpoint's best-F1 threshold, else 0.5
    max_detections: int | None = None  # None: the checkpoint's box_detections_per_img
    batch_size: int = 4  # as validate; on CUDA 16 is faster per image (benchmarks/README.md)
    workers: int = 2  # decoding in worker processes, hidden behind the model
    device: str = "auto"
    amp: bool = True  # autocast on CUDA (bf16 where supported); ignored on the CPU
    half: bool = False  # fp16 weights and inputs; CUDA only
    channels_last: bool = True  # CUDA only, as in training and validation
    vid_stride: int = 1  # every Nth video frame
    save_images: bool = True  # annotated images and videos under out/
    save_json: bool = True  # out/predictions.jsonl
    max_pixels: int = 50_000_000  # the same decompression-bomb limit as ingest

    def check(self) -> None:
        check_device(self.device)
        if not self.sources:
            raise UsageError("no sources: name images, folders, globs, .zip archives or videos")
        if self.vid_stride < 1:
            raise UsageError(f"--vid-stride must be 1 or more, got {self.vid_stride}")
        if self.half and not self.device.startswith(("cuda", "auto")):
            raise UsageError(f"--half needs a CUDA device, not --device {self.device}")


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path = Path("artifacts/models/fasterrcnn.pth")
    format: str = "torchscript"  # one of EXPORT_FORMATS
    out: Path | None = None  # None: beside the checkpoint, <stem>.<ext>
    score_threshold: float | None = None  # None: the checkpoint's best-F1 threshold, else 0.5
    opset: int = 17  # ONNX: the lowest opset the issue asks for; onnxruntime >= 1.14 runs it

    def check(self) -> None:
        check_choice("--format", self.format, EXPORT_FORMATS)


WATCH_EVENTS = ("new", "update", "end", "stream_down", "stream_up", "stream_end")


@dataclass(frozen=True)
class WatchConfig:
    """`gunctl watch`: streams, files and devices in, tracked detections and alerts out.
    The alert defaults were chosen with benchmarks/bench_watch.py (benchmarks/README.md)."""

    sources: tuple[str, ...] = ()  # rtsp/rtmp/http(s) URLs, video files, /dev/videoN
    names: tuple[str, ...] = ()  # --name per source, in order; the rest named from the URL/file
    checkpoint: Path = Path("artifacts/models/fasterrcnn.pth")
    out: Path = Path("artifacts/watch")  # events.jsonl (appended) and snapshots/<run>/
    device: str = "auto"
    score_threshold: float | None = None  # detections the tracker sees; None: the model's
    detect_fps: float = 5.0  # frames detected per second and source: a gun is held for seconds
    min_hits: int = 3  # 0.6 s at 5 fps: one-frame false positives never alert
    alert_threshold: float = 0.5  # median score of a track's hits to alert
    cooldown: float = 10.0  # s between two alerts of one source
    track_timeout: float = 2.0  # s without a detection before a track ends
    stationary_px: float = 0.1  # of the box's size: a track moving less is stationary
    zones: tuple[str, ...] = ()  # NAME[@SOURCE]:x1,y1,x2,y2,... (pixels, or fractions <= 1)
    realtime: bool = False  # files at their own frame rate (newest frame only, as a camera)
    open_timeout: float = 10.0  # s to open a stream
    read_timeout: float = 5.0  # s without data before a stream is down
    reconnect_min: float = 1.0  # s: first reconnect delay, doubled per failure, with jitter
    reconnect_max: float = 30.0  # s: the cap of that delay
    webhook: str | None = None  # URL: JSON POST per event
    webhook_secret: str | None = None  # HMAC-SHA256 of the body in X-Gunctl-Signature
    webhook_timeout: float = 5.0  # s per request
    webhook_retries: int = 6  # retries per event (backoff 0.5 s doubling, cap 30 s)
    outbox: int = 1000  # events waiting per sink; beyond it the oldest is dropped (counted)
    exec_cmd: str | None = None  # --exec: run per event, event JSON on stdin (no shell)
    notify: tuple[str, ...] = ("new", "end", "stream_down", "stream_up")  # what sinks receive
    duration: float | None = None  # s: stop after this long (None: until Ctrl-C/SIGTERM)
    max_pixels: int = 50_000_000  # the same decompression-bomb limit as ingest and predict

    def check(self) -> None:
        check_device(self.device)
        if not self.sources:
            raise UsageError("no sources: name rtsp/rtmp/http(s) URLs, video files or devices")
        if len(self.names) > len(self.sources):
            raise UsageError(f"{len(self.names)} --name for {len(self.sources)} source(s)")
        for name in self.names:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise UsageError(f"--name {name!r}: letters, digits, '_', '.', '-' (64 at most)")
        if self.score_threshold is not None:
            check_number("--score-threshold", self.score_threshold, 0, 1)
        check_number("--detect-fps", self.detect_fps, 0, 120, low_open=True)
        check_ints("--min-hits", (self.min_hits,), 1, 1000)
        check_number("--alert-threshold", self.alert_threshold, 0, 1)
        check_number("--cooldown", self.cooldown, 0, 86400)
        check_number("--track-timeout", self.track_timeout, 0, 3600, low_open=True)
        check_number("--stationary", self.stationary_px, 0, 10)
        for flag, value in (
            ("--open-timeout", self.open_timeout),
            ("--read-timeout", self.read_timeout),
            ("--webhook-timeout", self.webhook_timeout),
        ):
            check_number(flag, value, 0.1, 3600)
        check_number("--reconnect-min", self.reconnect_min, 0.01, 3600)
        check_number("--reconnect-max", self.reconnect_max, self.reconnect_min, 86400)
        check_ints("--webhook-retries", (self.webhook_retries,), 0, 100)
        check_ints("--outbox", (self.outbox,), 1, 10**6)
        for kind in self.notify:
            check_choice("--notify", kind, WATCH_EVENTS)
        if self.duration is not None:
            check_number("--duration", self.duration, 0, math.inf, low_open=True)
        if self.webhook_secret is not None and self.webhook is None:
            raise UsageError("--webhook-secret needs --webhook")
        if self.webhook is not None and not re.match(r"https?://", self.webhook):
            raise UsageError(f"--webhook {self.webhook}: an http:// or https:// URL")


# TrainConfig fields that `gunctl train` takes as options of the same name; the model's are
# --model (ModelConfig.name), --weights, --min-size, --max-size, --norm, --multiscale
# (train_sizes), --fpn-levels, --fpn-channels and --box-head-dim.
TRAIN_OPTIONS = (
    "epochs",
    "subset",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "lr_schedule",
    "warmup_steps",
    "device",
    "amp",
    "channels_last",
    "workers",
    "cache",
    "seed",
    "hflip",
    "patience",
    "save_period",
    "recipe",
    "photometric",
    "zoom_out",
    "crop",
    "mosaic",
    "ema",
    "ema_decay",
    "fit_anchors",
    "minutes",
    "val_every",
)


def train_options(config: TrainConfig) -> dict[str, Any]:
    """The config as `gunctl train` options ({name: value}): what a run's config.yaml holds,
    so that `gunctl train --config <run>/config.yaml` repeats the run. Where the files go
    (--out, --run-name, --resume) is left out."""
    options: dict[str, Any] = {
        "model": config.model.name,
        "weights": config.model.weights,
        "min_size": config.model.min_size,
        "max_size": config.model.max_size,
        "norm": config.model.norm,
        "multiscale": ",".join(map(str, config.model.train_sizes)) or "off",
        "fpn_levels": ",".join(map(str, config.model.fpn_levels)) or "all",
        "fpn_channels": config.model.fpn_channels,
        "box_head_dim": config.model.box_head_dim,
    }
    options.update({name: getattr(config, name) for name in TRAIN_OPTIONS})
    if config.minutes is not None:  # a budget fits the epochs; both would be refused
        options.pop("epochs")
    return options


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON- and checkpoint-safe view of a config (paths become strings)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig from a stored dict, ignoring keys this version does not know."""
    return _known_fields(ModelConfig, data)


def train_config_from_dict(data: dict[str, Any], layout: Layout) -> TrainConfig:
    """Rebuild a TrainConfig from a checkpoint's dict, under the given output layout."""
    fields = {k: v for k, v in data.items() if k not in ("model", "layout")}
    return dataclasses.replace(
        _known_fields(TrainConfig, fields),
        model=model_config_from_dict(data.get("model", {})),
        layout=layout,
    )


def _known_fields(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    # JSON and checkpoints store tuples as lists; frozen configs keep tuples (hashable, equal)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})
