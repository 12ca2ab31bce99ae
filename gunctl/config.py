"""Typed configuration that the CLI fills and the core reads: every option declared once.

Each option is a field made with ``opt(default, flag, rule)`` (``gunctl/rules.py``): its
default with the reason it was chosen, its flag and its rule (kind, range or choices). The
configs' ``check()`` methods, the checks of a checkpoint's stored config and the command
line's value display all derive from that one declaration; ``check()`` adds the relations
between fields. The resolved configuration is stored in every checkpoint and in the
TensorBoard run (see ``to_dict``), with the field names that ``config.yaml`` uses.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gunctl.errors import UsageError
from gunctl.rules import (
    DEVICE,
    FLAG,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    TEXT,
    UNIT,
    check_declared,
    choice,
    choices,
    number,
    numbers,
    opt,
    options,
    whole,
    wholes,
)

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
DATA_FORMATS = ("kaggle", "yolo", "coco", "voc")  # layouts that ingest reads (core/formats)
# Rules shared by several options (gunctl/rules.py)
COUNT = whole(1, 10**6)  # epochs, strides, periods
BATCH = whole(1, 4096)  # images per step or per forward pass
WORKERS = whole(0, 64)  # DataLoader worker processes
PROPOSALS = whole(1, 100_000)  # RPN proposals and sampled RoIs: they size memory
DETECTIONS = whole(1, 10_000)  # boxes kept per image
TIMEOUT = number(0.1, 3600)  # s: opening, reading, sending
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
RECIPE_NOTE = " Set by --recipe unless given (see the README)."  # in the help of such options
# TrainConfig fields that --resume takes from the command line; the rest come from the checkpoint.
RESUMABLE_OPTIONS = (
    "epochs",
    "device",
    "workers",
    "cache",
    "resume",
    "promote",
    "mlflow",  # tracking is not part of what was trained (core/tracking.py)
    "register",
)


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
    # None: kagglehub's latest version
    version: int | None = opt(
        None, "--version", whole(1, 10**6), ("Kaggle data set version to pin.")
    )
    layout: Layout = field(default_factory=Layout)
    force: bool = opt(
        False, "--force", FLAG, ("Replace an existing raw/ tree.")
    )  # never replace an existing raw tree unless asked
    # repairs (clipping, dropping bad boxes) are warnings by default
    strict: bool = opt(False, "--strict", FLAG, ("Fail on any problem instead of repairing it."))
    seed: int = opt(0, "--seed", SEED)  # demo data only: same seed, same images
    # demo data only: small enough to train on in a minute on a laptop CPU
    count: int = opt(40, "--count", whole(1, 100_000), ("Number of demo images (--source demo)."))
    handle: str = KAGGLE_HANDLE
    # refuse decompression bombs; real images are ~0.05 MP
    max_pixels: int = opt(50_000_000, "max_pixels", whole(1, 10**9))
    # kaggle, yolo, coco or voc; auto detects it from the files
    format: str = opt("auto", "--format", choice("auto", *DATA_FORMATS))
    classes: tuple[str, ...] | None = None  # keep (and order) these classes; None: all
    merge_classes: str | None = None  # map every kept class to this one name

    def check(self) -> None:
        check_declared(self)


@dataclass(frozen=True)
class SplitConfig:
    seed: int = opt(0, "--seed", SEED)  # fixed, so that two users get the same split
    val_fraction: float = opt(
        0.2, "--val-fraction", FRACTION, ("Share of images held out for validation.")
    )  # the usual 80/20 hold-out
    # None: all images; N: a seeded sample of N images first
    subset: int | None = opt(None, "--subset", whole(2, 10**9))
    layout: Layout = field(default_factory=Layout)
    # the source's own train/val (YOLO, Roboflow) when asked
    keep_source_split: bool = opt(False, "--keep-source-split", FLAG)

    def check(self) -> None:
        check_declared(self)


@dataclass(frozen=True)
class ModelConfig:
    # the original pipeline's model
    name: str = opt(
        "fasterrcnn_resnet50_fpn",
        "--model",
        choice(*MODEL_NAMES),
        (", ".join(MODEL_NAMES) + "." + RECIPE_NOTE),
    )
    # COCO when cached or downloadable, else from scratch (with a warning)
    weights: str = opt(
        "auto",
        "--weights",
        None,  # a choice or a checkpoint's path: core/model.py resolves it
        "auto (COCO when available, else from scratch), coco, imagenet, none, or a gunctl "
        "checkpoint to fine-tune.",
    )
    num_classes: int = opt(
        len(CLASS_NAMES), "classes (with the background)", whole(2, MAX_CLASSES + 1)
    )
    # The data set's images are ~180x280 px: torchvision's 800 px up-samples them 4.5x for ~10x
    # the compute. Same budget from scratch on the real sample (benchmarks/README.md): val
    # mAP@0.5 0.43 at 256 px, 0.39 at 320, 0.36 at 224, 0.35 at 800.
    min_size: int = opt(
        256,
        "--min-size",
        whole(*SIDES),
        ("Shorter image side fed to the model (the data set's images are ~180 px)." + RECIPE_NOTE),
        builder=True,
    )
    # 1.75:1, above the typical 1.6:1 of the data set's images
    max_size: int = opt(
        448, "--max-size", whole(*SIDES), ("Cap on the longer side." + RECIPE_NOTE), builder=True
    )
    # Proposal and RoI counts: torchvision's (2000/2000/512) are sized for COCO's up to
    # ~100 objects per image; this data set has 1-12. RoIAlign backward runs on one CPU core.
    # Same budget at 320 px: val mAP@0.5 0.39 with these counts, 0.40 with torchvision's.
    rpn_pre_nms_top_n_train: int = opt(600, "rpn_pre_nms_top_n_train", PROPOSALS, builder=True)
    rpn_post_nms_top_n_train: int = opt(300, "rpn_post_nms_top_n_train", PROPOSALS, builder=True)
    rpn_pre_nms_top_n_test: int = opt(300, "rpn_pre_nms_top_n_test", PROPOSALS, builder=True)
    rpn_post_nms_top_n_test: int = opt(150, "rpn_post_nms_top_n_test", PROPOSALS, builder=True)
    box_batch_size_per_image: int = opt(128, "box_batch_size_per_image", PROPOSALS, builder=True)
    # far above the data set's maximum of 12 guns per image
    box_detections_per_img: int = opt(50, "box_detections_per_img", DETECTIONS, builder=True)
    # The fields below default to torchvision's own behaviour (the plain recipe); the scratch
    # recipe (core/recipes.py) sets them. Old checkpoints, which lack them, rebuild as before.
    # Normalisation of ResNet backbones (and the FPN with gn): torchvision uses BatchNorm from
    # scratch and frozen BatchNorm with pretrained weights; at batch 2 BatchNorm's statistics
    # are noise, GroupNorm has none (He et al., "Rethinking ImageNet Pre-training").
    norm: str = opt(
        "default",
        "--norm",
        choice(*NORMS),
        (
            f"{', '.join(NORMS)}: normalisation of ResNet-FPN backbones (gn: GroupNorm, "
            "also in the FPN)." + RECIPE_NOTE
        ),
    )
    # one per FPN level; (): the model's own (32 ... 512)
    anchor_sizes: tuple[int, ...] = opt((), "anchor sizes", wholes(1, SIDES[1]))
    # height / width; (): (0.5, 1.0, 2.0)
    aspect_ratios: tuple[float, ...] = opt((), "aspect ratios", numbers(*RATIOS))
    # multi-scale training: a shorter side drawn per batch
    train_sizes: tuple[int, ...] = opt(
        (),
        "--multiscale",
        wholes(*SIDES),
        (
            "Shorter sides drawn per batch in training, e.g. 192,224,288,320, or off "
            "(validation uses --min-size)." + RECIPE_NOTE
        ),
    )
    # ResNet stages feeding the FPN; (): all four. (2, 3, 4) drops the stride-4 level, which
    # holds three quarters of the FPN's and RPN's pixels and serves objects under ~32 px.
    fpn_levels: tuple[int, ...] = opt(
        (),
        "--fpn-levels",
        wholes(1, 4),
        (
            "ResNet stages feeding the FPN, e.g. 2,3,4 (no stride-4 level: faster), or all "
            "(ResNet-FPN models)." + RECIPE_NOTE
        ),
    )
    # Widths: the FPN's channels (so also the RPN head's and the pooled RoI features'; ResNet-FPN
    # models) and the box head's two fully connected layers (all models but the v2).
    # torchvision's 256 and 1024 are sized for COCO's 80 classes; for one class on the CPU the
    # box head's 12544x1024 layer and RoIAlign's single-threaded backward are a third of a
    # ResNet-18 step (benchmarks/README.md).
    fpn_channels: int = opt(
        256,
        "--fpn-channels",
        whole(32, 1024, step=32),
        (
            "Width of the FPN, the RPN head and the pooled RoI features, a multiple of 32 "
            "(ResNet-FPN models)." + RECIPE_NOTE
        ),
    )
    box_head_dim: int = opt(
        1024,
        "--box-head-dim",
        whole(16, 4096),
        (
            "Width of the box head's two fully connected layers (all models but "
            "fasterrcnn_resnet50_fpn_v2)." + RECIPE_NOTE
        ),
    )

    def check(self, relations: bool = True) -> None:
        """Every value's rule (declared with its field), for the command line, config files and
        checkpoints alike (the last two are untrusted: a value here sizes memory), then the
        relations. ``relations=False``: each value alone, before a recipe fills in the rest
        (its --max-size follows a user's --min-size)."""
        check_declared(self)
        if list(self.fpn_levels) != sorted(set(self.fpn_levels)):
            raise UsageError(f"--fpn-levels: ResNet stages in rising order, got {self.fpn_levels}")
        if relations and self.min_size > self.max_size:
            raise UsageError(f"--min-size {self.min_size} is above --max-size {self.max_size}")

    def builder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the torchvision builder (besides weights): the options
        declared with ``builder=True``."""
        fields = {name: getattr(self, name) for name, o in options(self).items() if o.builder}
        if self.train_sizes:  # torchvision draws from the tuple in training, uses the last in eval
            fields["min_size"] = (*self.train_sizes, self.min_size)
        return fields


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    layout: Layout = field(default_factory=Layout)
    # enough for COCO-initialised weights to converge on ~3000 images
    epochs: int = opt(10, "--epochs", COUNT, ("Epochs in all (with --resume: the new total)."))
    # None: the whole split; N: a fresh seeded split of N images
    subset: int | None = opt(None, "--subset", whole(2, 10**9))
    # Per process. None: 8 on CUDA (bf16 img/s 43 at 8 vs 14 at 2 on an H100, memory 16 GiB
    # at 800 px), 2 on the CPU (peak RSS 2.6 GiB vs 3.4 GiB at 4, and no slower per image).
    batch_size: int | None = opt(
        None,
        "--batch-size",
        BATCH,
        ("Images per step, per process (the global batch is this x processes)."),
    )
    lr: float = opt(
        1e-4, "--lr", POSITIVE, ("Peak learning rate." + RECIPE_NOTE)
    )  # the original pipeline's Adam learning rate
    optimizer: str = opt(
        "adam", "--optimizer", choice(*OPTIMIZERS), (f"{', '.join(OPTIMIZERS)}." + RECIPE_NOTE)
    )  # as in the original pipeline
    # the original pipeline used none; try 1e-4 with adamw/sgd
    weight_decay: float = opt(
        0.0, "--weight-decay", NON_NEGATIVE, ("L2 penalty on the weights." + RECIPE_NOTE)
    )
    momentum: float = opt(0.9, "momentum", NON_NEGATIVE)  # sgd only; the usual value
    # decays to ~0 at the last step: no tuning of decay epochs
    lr_schedule: str = opt(
        "cosine",
        "--lr-schedule",
        choice(*LR_SCHEDULES),
        (
            f"{', '.join(LR_SCHEDULES)}; after a linear warm-up of up to --warmup-steps."
            + RECIPE_NOTE
        ),
    )
    # linear warm-up, capped at one epoch for short runs
    warmup_steps: int = opt(
        50,
        "--warmup-steps",
        whole(0, 10**9),
        ("Warm-up length (capped at one epoch)." + RECIPE_NOTE),
    )
    # keeps from-scratch runs from diverging on a bad batch
    grad_clip: float | None = opt(10.0, "grad_clip", POSITIVE)
    device: str = opt("auto", "--device", DEVICE)  # cuda when available, else cpu
    # bf16/fp16 autocast on CUDA; a CPU with native bf16: the backbone in bf16
    amp: bool = opt(
        True,
        "--amp",
        FLAG,
        (
            "Mixed precision: bf16 (else fp16) autocast on CUDA; on a CPU with native "
            "bf16 (AVX-512 BF16 or AMX), bf16 for the backbone only. Evaluation on the CPU "
            "stays fp32."
        ),
    )
    # CUDA only: +13 % (batch 8) to +24 % (16) train img/s with bf16
    channels_last: bool = opt(
        True,
        "channels_last",
        FLAG,
        ("Channels-last memory format on CUDA (faster with AMP); no effect on the CPU."),
    )
    # decoding is cheap (~1 ms per image); 2 hides it behind the model
    workers: int = opt(2, "--workers", WORKERS)
    # "ram" keeps decoded images in memory (small data sets)
    cache: str = opt(
        "none",
        "--cache",
        choice(*CACHE_MODES),
        (f"{', '.join(CACHE_MODES)}: ram keeps decoded images in memory."),
    )
    # batch landscape with landscape: less padding per batch
    group_aspect_ratios: bool = opt(True, "group_aspect_ratios", FLAG)
    seed: int = opt(0, "--seed", SEED)  # same seed, same losses on the CPU
    hflip: bool = opt(
        True, "--hflip", FLAG, ("Random horizontal flips (augmentation).")
    )  # guns point both ways: a free doubling of the data
    run_name: str | None = None  # None: a timestamp
    resume: str | None = None  # a run name or a checkpoint path
    # used only when train has to make a split itself
    val_fraction: float = opt(0.2, "val_fraction", FRACTION)
    # val images drawn into TensorBoard each epoch
    log_images: int = opt(4, "log_images", whole(0, 64))
    # for precision/recall in the epoch table
    score_threshold: float = opt(0.5, "score_threshold", UNIT)
    # replace models/fasterrcnn.pth even when the run is not as good
    promote: bool = opt(
        False,
        "--promote",
        FLAG,
        (
            "Make this run's best the default model (models/fasterrcnn.pth) even when the "
            "one there scored higher or on another split."
        ),
    )
    # None: all epochs; N: stop after N epochs without a better mAP
    patience: int | None = opt(
        None,
        "--patience",
        COUNT,
        ("Stop when val mAP@0.5 has not improved for N epochs (best.pth is kept)."),
    )
    # None: last.pth only; N: also keep epoch_<E>.pth every N
    save_period: int | None = opt(
        None, "--save-period", COUNT, ("Also keep a full checkpoint epoch_<E>.pth every N epochs.")
    )

    # The recipe fills the options below that the user did not set (``explicit``); the
    # defaults here are the plain recipe: gunctl's behaviour before recipes existed.
    # scratch without pretrained weights, finetune with them
    recipe: str = opt(
        "auto",
        "--recipe",
        choice(*RECIPES),
        (
            f"{', '.join(RECIPES)}. scratch: from random weights; finetune: pretrained; "
            "plain: flip only, Adam 1e-4 (gunctl before recipes); auto: finetune with "
            "pretrained weights, else scratch. Options given explicitly override the recipe's."
        ),
    )
    explicit: tuple[str, ...] = ()  # options the user set ("lr", "model.name"): kept as given
    # probability of brightness/contrast/saturation/hue distortion
    photometric: float = opt(
        0.0,
        "--photometric",
        UNIT,
        ("Probability of brightness/contrast/saturation/hue distortion." + RECIPE_NOTE),
    )
    # probability of placing the image on a canvas up to 2x larger
    zoom_out: float = opt(
        0.0,
        "--zoom-out",
        UNIT,
        ("Probability of a zoom-out (image on a canvas up to 2x larger)." + RECIPE_NOTE),
    )
    crop: float = opt(
        0.0, "--crop", UNIT, ("Probability of an IoU-aware crop." + RECIPE_NOTE)
    )  # probability of an IoU-aware random crop (SSD's)
    mosaic: float = opt(
        0.0, "--mosaic", UNIT, ("Probability of a 2x2 mosaic of training images." + RECIPE_NOTE)
    )  # probability of a 2x2 mosaic of 4 training images
    # evaluate and save an exponential moving average of the weights
    ema: bool = opt(
        False,
        "--ema",
        FLAG,
        ("Evaluate and save an exponential moving average of the weights." + RECIPE_NOTE),
    )
    # None: fitted to the run's length (window ~ steps / 10)
    ema_decay: float | None = opt(
        None, "--ema-decay", number(0, 1, open_high=True), ("EMA decay per step.")
    )
    # anchor sizes and ratios from the training boxes' quantiles
    fit_anchors: bool = opt(
        False,
        "--fit-anchors",
        FLAG,
        ("Anchor sizes and ratios from the training boxes (ResNet-FPN models)." + RECIPE_NOTE),
    )
    # a wall-time budget: epochs and schedule fitted to it
    minutes: float | None = opt(
        None,
        "--minutes",
        POSITIVE,
        (
            "Train for a wall-time budget instead of --epochs: epochs, schedule and EMA "
            "are fitted to it, validation included."
        ),
    )
    # validate every k epochs (and always after the last)
    val_every: int = opt(1, "--val-every", COUNT, ("Validate every k epochs, and after the last."))
    # Experiment tracking (core/tracking.py): off unless asked (--mlflow, or
    # MLFLOW_TRACKING_URI set), since MLflow is an optional extra; not in config.yaml.
    mlflow: bool = opt(
        False,
        "--mlflow",
        FLAG,
        (
            "Track the run with MLflow (MLFLOW_TRACKING_URI, else <out>/mlflow.db): "
            "options, per-epoch metrics, artifacts and the model. Needs the mlflow extra."
        ),
    )
    register: str | None = None  # --register NAME: the model into MLflow's registry

    def check(self, relations: bool = True) -> None:
        """Every option's rule, declared with its field (the command line's options carry
        none of their own): a resumed run's stored values pass here too, and a checkpoint is
        untrusted. ``relations=False``: each value alone (ModelConfig.check)."""
        check_declared(self)
        self.model.check(relations)
        if self.register is not None:
            check_model_name("--register", self.register)
            if not self.mlflow:
                raise UsageError("--register needs --mlflow (or MLFLOW_TRACKING_URI set)")


# How a loaded model runs its forward pass (core/inference.py): auto picks, per model and
# machine, the fastest runtime that passes the parity check against torch.
RUNTIMES = ("auto", "torch", "onnx", "openvino")


def runtime_option() -> Any:
    """The one declaration of --runtime, for predict, serve, watch (DetectorOptions) and
    validate (ValidateConfig)."""
    return opt(
        "auto",
        "--runtime",
        choice(*RUNTIMES),
        "What runs the model: torch, onnx (onnxruntime), openvino, or auto (the fastest "
        "that matches torch's detections for this model on this machine).",
    )


@dataclass(frozen=True)
class ValidateConfig:
    checkpoint: Path = field(default_factory=lambda: Layout().best_model)
    layout: Layout = field(default_factory=Layout)
    # None: the images the run validated on (else the split's val part)
    part: str | None = opt(
        None,
        "--split",
        choice(*VALIDATE_PARTS),
        (f"Part of the split to score instead: {', '.join(VALIDATE_PARTS)}."),
    )
    data: Path | None = None  # another raw tree in the Kaggle layout, scored whole
    batch_size: int = opt(4, "--batch-size", BATCH)
    workers: int = opt(2, "--workers", WORKERS)
    # CUDA only: +7 % eval img/s with bf16 at batch 16
    channels_last: bool = opt(True, "channels_last", FLAG)
    device: str = opt("auto", "--device", DEVICE)
    # detections below it do not count for precision/recall/F1
    score_threshold: float = opt(
        0.5,
        "--score-threshold",
        UNIT,
        ("Detections below it do not count for precision, recall and F1."),
    )
    # a detection matches a true box at IoU >= 0.5 (PASCAL VOC)
    iou_threshold: float = opt(0.5, "iou_threshold", UNIT)
    amp: bool = opt(True, "amp", FLAG)  # autocast on CUDA, as in training; ignored on the CPU
    save_predictions: Path | None = None
    # also score with horizontal-flip test-time augmentation (box fusion)
    tta: bool = opt(
        False,
        "--tta",
        FLAG,
        (
            "Also score with horizontal-flip test-time augmentation (boxes of both views "
            "fused), reported beside the plain scores; --min-map50/--min-map still judge those."
        ),
    )
    # what runs the model: predict's runtimes; torch also gives the validation losses
    runtime: str = runtime_option()
    min_map50: float | None = opt(
        None, "--min-map50", UNIT, ("Exit 1 when mAP@0.5 is below this.")
    )  # the bar of a CI gate; None: none
    min_map: float | None = opt(
        None, "--min-map", UNIT, ("Exit 1 when mAP@0.5:0.95 is below this.")
    )
    # log the figures to the checkpoint's MLflow run (core/tracking.py)
    mlflow: bool = opt(
        False,
        "--mlflow",
        FLAG,
        (
            "Log the figures to the MLflow run that trained the checkpoint (else a new "
            "run). Needs the mlflow extra."
        ),
    )

    def check(self) -> None:
        check_declared(self)
        if self.data is not None and self.part is not None:
            raise UsageError("--data scores a whole folder; it does not go with --split")


SWEEP_PRUNERS = ("median", "none")


@dataclass(frozen=True)
class SweepConfig:
    """`gunctl sweep`: an Optuna study whose trials are ordinary training runs (core/sweep.py)."""

    space: Path | None = None  # the YAML file of options to search (and fixed ones)
    layout: Layout = field(default_factory=Layout)
    # in the study as a whole, however many processes share it
    trials: int = opt(20, "--trials", whole(1, 100_000), "Trials in the study in all.")
    # each trial's --minutes budget; None: the space's epochs
    minutes: float | None = opt(None, "--minutes", POSITIVE, "Each trial's --minutes.")
    # an Optuna RDB URL or journal:<file>; None: SQLite in <out>/sweeps/
    storage: str | None = opt(None, "--storage", TEXT)
    # None: the space file's name; a plain field: its rule (check_model_name) is a pattern
    study: str | None = None
    # go on with a study that has trials (those of a killed run again)
    resume: bool = opt(
        False,
        "--resume",
        FLAG,
        ("Go on with the study; trials a killed or interrupted process left run again."),
    )
    # print the best trial and importances, write best.yaml; no training
    show: bool = opt(
        False,
        "--show",
        FLAG,
        (
            "Print the trials, the best one and parameter importances; write best.yaml "
            "(gunctl train --config best.yaml). Trains nothing."
        ),
    )
    mlflow: bool = opt(
        False,
        "--mlflow",
        FLAG,
        ("Each trial an MLflow child run of the study's run. Needs the mlflow extra."),
    )  # each trial an MLflow child run of the study's
    # stop a trial whose mAP@0.5 is below the median at that epoch
    pruner: str = opt(
        "median",
        "--pruner",
        choice(*SWEEP_PRUNERS),
        (f"{', '.join(SWEEP_PRUNERS)}: stop poor trials early."),
    )
    warmup_epochs: int = opt(
        1, "--warmup-epochs", whole(0, 10**6), ("Epochs a trial trains before it may be pruned.")
    )  # before a trial is pruned
    # trials that finish before any is pruned (the median needs some)
    startup_trials: int = opt(
        2, "--startup-trials", whole(0, 10**6), ("Trials that finish before any is pruned.")
    )
    seed: int | None = opt(None, "--seed", SEED, "The sampler's seed.")  # None: a fresh draw

    def check(self) -> None:
        check_declared(self)
        if not self.show and self.space is None:
            raise UsageError("--space FILE is needed (the options to search), or --show")
        if self.study is not None:
            check_model_name("--study", self.study)
        if self.storage is not None and not self.storage.strip():
            raise UsageError("--storage: an Optuna storage URL (sqlite:///file.db) or journal:FILE")


@dataclass(frozen=True)
class LaunchConfig:
    """`train --nproc N`, `predict --nproc N`: how many processes torchrun starts on this
    machine."""

    nproc: int | None = opt(  # None: one process, no torchrun
        None,
        "--nproc",
        whole(1, 1024),
        "Start this many processes on this machine with torchrun (one per GPU, or CPU "
        "processes with gloo); --batch-size is per process.",
    )

    def check(self) -> None:
        check_declared(self)


@dataclass(frozen=True)
class TensorBoardConfig:
    """`gunctl tb`: where TensorBoard serves (loopback unless --host says otherwise)."""

    host: str = opt("127.0.0.1", "--host", TEXT)
    port: int = opt(6006, "--port", whole(0, 65535))  # TensorBoard's own; 0: any free port

    def check(self) -> None:
        check_declared(self)


def check_model_name(flag: str, value: str) -> None:
    """A registry or study name: letters, digits, ``_ . -``, 1 to 200 characters."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}", value):
        raise UsageError(f"{flag} {value!r}: use letters, digits, _ . and -, up to 200 characters")


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
class DetectorOptions:
    """How a model is loaded for inference, declared once for predict, serve and watch (their
    configs extend it); ``load_detector(**options.detector_kwargs())`` takes them as they are."""

    checkpoint: Path = opt(
        Path("artifacts/models/fasterrcnn.pth"),  # the default model, as training promotes it
        "--weights",
        None,
        "The model: a gunctl checkpoint (.pth: last, best or slim) or an exported .onnx file.",
    )
    device: str = opt("auto", "--device", DEVICE, "auto (cuda when there is one), cpu, cuda:N.")
    score_threshold: float | None = opt(  # None: the checkpoint's best-F1 threshold, else 0.5
        None,
        "--score-threshold",
        UNIT,
        "Keep detections scoring at least this (default: the checkpoint's best-F1 threshold "
        "on its val split, else 0.5).",
    )
    max_detections: int | None = opt(  # None: the checkpoint's box_detections_per_img
        None,
        "--max-detections",
        DETECTIONS,
        "At most this many boxes per image (default: the checkpoint's).",
    )
    amp: bool = opt(True, "amp", FLAG)  # autocast on CUDA (bf16 where supported); not on the CPU
    half: bool = opt(False, "--half", FLAG, "fp16 weights and inputs (CUDA only).")
    channels_last: bool = opt(True, "channels_last", FLAG)  # CUDA only, as in training
    runtime: str = runtime_option()

    def check(self) -> None:
        check_declared(self)
        if self.half and not self.device.startswith(("cuda", "auto")):
            raise UsageError(f"--half needs a CUDA device, not --device {self.device}")

    def detector_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``inference.load_detector``."""
        names = [f.name for f in dataclasses.fields(DetectorOptions) if f.name != "checkpoint"]
        return {"path": self.checkpoint, **{name: getattr(self, name) for name in names}}


@dataclass(frozen=True)
class PredictConfig(DetectorOptions):
    sources: tuple[str, ...] = ()  # files, folders (recursive), globs, .zip archives, videos
    out: Path | None = None  # None: <layout.root>/predictions/<timestamp>, never an existing one
    layout: Layout = field(default_factory=Layout)
    # as validate; on CUDA 16 is faster per image (benchmarks/README.md)
    batch_size: int = opt(4, "--batch-size", BATCH)
    # decoding in worker processes, hidden behind the model
    workers: int = opt(2, "--workers", WORKERS)
    vid_stride: int = opt(
        1, "--vid-stride", COUNT, ("Predict every Nth video frame.")
    )  # every Nth video frame
    save_images: bool = opt(
        True, "--save-images", FLAG, ("Write annotated images and videos.")
    )  # annotated images and videos under out/
    save_json: bool = opt(
        True, "--save-json", FLAG, ("Write predictions.jsonl (a line each).")
    )  # out/predictions.jsonl
    # the same decompression-bomb limit as ingest
    max_pixels: int = opt(50_000_000, "max_pixels", whole(1, 10**9))

    def check(self) -> None:
        super().check()
        if not self.sources:
            raise UsageError("no sources: name images, folders, globs, .zip archives or videos")


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path = Path("artifacts/models/fasterrcnn.pth")
    format: str = opt("torchscript", "--format", choice(*EXPORT_FORMATS))  # one of EXPORT_FORMATS
    out: Path | None = None  # None: beside the checkpoint, <stem>.<ext>
    # None: the checkpoint's best-F1 threshold, else 0.5
    score_threshold: float | None = opt(None, "--score-threshold", UNIT)
    # ONNX: the lowest opset the issue asks for; onnxruntime >= 1.14 runs it
    opset: int = opt(17, "--opset", whole(14, 20))

    def check(self) -> None:
        check_declared(self)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MIN_API_KEY = 16  # characters: `openssl rand -hex 16` gives 32; shorter keys are guessable


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this machine only."""
    import ipaddress

    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig(DetectorOptions):
    """`gunctl serve`: the model as an HTTP service (gunctl/core/serve)."""

    # loopback: safe by default; any other address needs an API key
    host: str = opt("127.0.0.1", "--host", TEXT)
    port: int = opt(
        8000, "--port", whole(0, 65535), ("Port (0: any free port).")
    )  # FastAPI's usual port; 0: any free one
    api_key: str | None = opt(None, "--api-key", TEXT)  # or GUNCTL_API_KEY; see check()
    # processes (uvicorn's workers), each with its own model and inference thread
    workers: int = opt(1, "--workers", whole(1, 64), ("Processes, each with its own model."))
    # Micro-batching: images of one size waiting together go through one forward pass. None:
    # 8 on CUDA (a GPU runs 8 of the data set's ~0.05 MP images in about the time of one), 1 on
    # the CPU (a batch costs what its images cost one by one: no gain in bench_serve.py,
    # benchmarks/README.md, and no request waits for company).
    max_batch_size: int | None = opt(None, "--max-batch-size", whole(1, 256))
    # how long the first image of a batch waits for company
    batch_timeout_ms: float = opt(
        5.0, "--batch-timeout-ms", number(0, 10_000), ("How long a batch waits for more images.")
    )
    # images waiting; more get 503 + Retry-After (bounded memory)
    max_queue: int = opt(
        64,
        "--max-queue",
        whole(1, 100_000),
        ("Images waiting at most; beyond it 503 + Retry-After."),
    )
    # request body; 413 as soon as it passes (the data set's images are ~30 KB)
    max_upload_mb: float = opt(
        10.0,
        "--max-upload-mb",
        number(0, 1024, open_low=True),
        ("Request body limit (413 beyond it)."),
    )
    max_images: int = opt(
        16, "--max-images", whole(1, 1024), ("Images per /v1/detect/batch request.")
    )  # per /v1/detect/batch request
    # the same decompression-bomb limit as ingest and predict
    max_pixels: int = opt(50_000_000, "max_pixels", whole(1, 10**9))
    # s: reading the body, waiting and inference; then 408 or 504
    request_timeout: float = opt(
        30.0,
        "--request-timeout",
        number(0, 3600, open_low=True),
        ("Seconds for reading, queueing and detection."),
    )
    # s after SIGTERM: /readyz and new requests get 503, so a load balancer moves on
    drain_seconds: float = opt(1.0, "--drain-seconds", number(0, 600))
    # s: requests in flight at SIGTERM may take this long to finish
    graceful_timeout: float = opt(30.0, "graceful_timeout", number(0, 3600))
    json_logs: bool = opt(False, "--json-logs", FLAG)  # one JSON object a line (collectors)
    access_log: bool = opt(True, "access_log", FLAG)  # one line per request

    def check(self) -> None:
        super().check()
        if self.api_key is not None:
            key = self.api_key
            if len(key) < MIN_API_KEY or not key.isascii() or not key.isprintable() or " " in key:
                raise UsageError(
                    f"--api-key: at least {MIN_API_KEY} printable ASCII characters without "
                    "spaces (e.g. `openssl rand -hex 16`)"
                )
        elif not is_loopback(self.host):
            raise UsageError(
                f"--host {self.host} exposes the model to the network: give --api-key "
                "(or GUNCTL_API_KEY), or bind 127.0.0.1"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


WATCH_EVENTS = ("new", "update", "end", "stream_down", "stream_up", "stream_end")


@dataclass(frozen=True)
class WatchConfig(DetectorOptions):
    """`gunctl watch`: streams, files and devices in, tracked detections and alerts out.
    The alert defaults were chosen with benchmarks/bench_watch.py (benchmarks/README.md).
    ``score_threshold`` (DetectorOptions): the detections the tracker sees; None: the model's."""

    sources: tuple[str, ...] = ()  # rtsp/rtmp/http(s) URLs, video files, /dev/videoN
    names: tuple[str, ...] = ()  # --name per source, in order; the rest named from the URL/file
    out: Path = Path("artifacts/watch")  # events.jsonl (appended) and snapshots/<run>/
    # frames detected per second and source: a gun is held for seconds
    detect_fps: float = opt(
        5.0,
        "--detect-fps",
        number(0, 120, open_low=True),
        ("Frames detected per second and source."),
    )
    # 0.6 s at 5 fps: one-frame false positives never alert
    min_hits: int = opt(
        3, "--min-hits", whole(1, 1000), ("Detections a track needs before it alerts.")
    )
    # of the frames detected since a track began: a distractor the detector takes for a gun
    # now and then flickers (benchmarks/README.md, bench_watch.py)
    min_hit_ratio: float = opt(
        0.5,
        "--min-hit-ratio",
        UNIT,
        ("Share of the frames since a track began in which it must be detected."),
    )
    alert_threshold: float = opt(
        0.5, "--alert-threshold", UNIT, ("Median score of a track's hits to alert.")
    )  # median score of the hits
    cooldown: float = opt(
        10.0, "--cooldown", number(0, 86400), ("Seconds between two alerts of one source.")
    )  # s between alerts of a source
    # s without a detection before a track ends
    track_timeout: float = opt(
        2.0,
        "--track-timeout",
        number(0, 3600, open_low=True),
        ("Seconds without a detection before a track ends."),
    )
    # of the box's size: a track moving less is stationary
    stationary_px: float = opt(0.1, "--stationary", number(0, 10))
    zones: tuple[str, ...] = ()  # NAME[@SOURCE]:x1,y1,x2,y2,... (pixels, or fractions <= 1)
    # files at their own frame rate (newest frame only, as a camera)
    realtime: bool = opt(
        False,
        "--realtime",
        FLAG,
        ("Read files at their own frame rate, as a camera delivers them."),
    )
    open_timeout: float = opt(
        10.0, "--open-timeout", TIMEOUT, ("Seconds to open a stream.")
    )  # s to open a stream
    read_timeout: float = opt(
        5.0, "--read-timeout", TIMEOUT, ("Seconds without data before a stream is down.")
    )  # s without data: down
    # s: first reconnect delay, doubled per failure, with jitter
    reconnect_min: float = opt(1.0, "--reconnect-min", number(0.01, 3600))
    reconnect_max: float = opt(30.0, "--reconnect-max", number(0.01, 86400))  # the cap
    webhook: str | None = opt(None, "--webhook", TEXT)  # URL: JSON POST per event
    # HMAC-SHA256 of the body in X-Gunctl-Signature
    webhook_secret: str | None = opt(None, "--webhook-secret", TEXT)
    webhook_timeout: float = opt(5.0, "--webhook-timeout", TIMEOUT)  # s per request
    # retries per event (backoff 0.5 s doubling, cap 30 s)
    webhook_retries: int = opt(6, "--webhook-retries", whole(0, 100))
    # events waiting per sink; beyond it the oldest is dropped (counted)
    outbox: int = opt(1000, "--outbox", whole(1, 10**6))
    # --exec: run per event, event JSON on stdin (no shell)
    exec_cmd: str | None = opt(None, "--exec", TEXT)
    notify: tuple[str, ...] = opt(  # what the sinks receive
        ("new", "end", "stream_down", "stream_up"),
        "--notify",
        choices(*WATCH_EVENTS),
        ("Events the webhook and --exec get (comma-separated)."),
    )
    # s: stop after this long (None: until Ctrl-C/SIGTERM)
    duration: float | None = opt(
        None, "--duration", POSITIVE, ("Stop after this many seconds (default: Ctrl-C).")
    )
    # the same decompression-bomb limit as ingest and predict
    max_pixels: int = opt(50_000_000, "max_pixels", whole(1, 10**9))

    def check(self) -> None:
        super().check()
        if not self.sources:
            raise UsageError("no sources: name rtsp/rtmp/http(s) URLs, video files or devices")
        if len(self.names) > len(self.sources):
            raise UsageError(f"{len(self.names)} --name for {len(self.sources)} source(s)")
        for name in self.names:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise UsageError(f"--name {name!r}: letters, digits, '_', '.', '-' (64 at most)")
        if self.reconnect_max < self.reconnect_min:
            raise UsageError(
                f"--reconnect-max {self.reconnect_max} is below --reconnect-min "
                f"{self.reconnect_min}"
            )
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
