"""Detector families beyond Faster R-CNN (issue 28): RetinaNet, FCOS and SSDlite through model
building, recipes, losses, the inference core, export and every command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gunctl.config import FAMILY_LOSSES, MODEL_NAMES, ModelConfig, TrainConfig, model_family
from gunctl.errors import UsageError

FAMILIES = {
    "retinanet": "retinanet_resnet18_fpn",
    "fcos": "fcos_resnet18_fpn",
    "ssdlite": "ssdlite320_mobilenet_v3_large",
}
# Small enough to train in seconds on a CPU: 64-channel FPN (two channels per GroupNorm group,
# which ONNX's GroupNorm needs on the 1x1 top level), images of 64-96 px (SSDlite: 128 square).
SMALL = {
    "retinanet": {"norm": "gn", "fpn_channels": 64, "min_size": 64, "max_size": 96},
    "fcos": {"norm": "gn", "fpn_channels": 64, "min_size": 64, "max_size": 96},
    "ssdlite": {"min_size": 128, "max_size": 128},
}
SMALL_CLI = {
    family: [
        f"--{k.replace('_', '-')}" if i == 0 else str(v) for k, v in kw.items() for i in (0, 1)
    ]
    for family, kw in SMALL.items()
}


def small_model(family: str, seed: int = 0, **overrides):
    from gunctl.core.model import build_model

    torch.manual_seed(seed)
    config = ModelConfig(name=FAMILIES[family], weights="none", **{**SMALL[family], **overrides})
    return build_model(config).model, config


def images(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.rand(3, 90, 140, generator=generator),
        torch.rand(3, 120, 80, generator=generator),
    ]


TARGETS = [
    {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[5.0, 20.0, 40.0, 100.0]]), "labels": torch.tensor([1])},
]


def test_every_family_is_a_model_name_and_a_wrong_name_lists_them():
    assert {model_family(n) for n in MODEL_NAMES} == set(FAMILY_LOSSES)
    with pytest.raises(UsageError) as caught:
        ModelConfig(name="yolov8n").check()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--model yolov8n: choose one of")
    for name in FAMILIES.values():
        assert name in message


def test_wrong_model_on_the_command_line_is_one_line(gunctl, tmp_path):
    result = gunctl("train", "--model", "yolov8n", "--out", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    for name in FAMILIES.values():
        assert name in result.stderr
    assert not (tmp_path / "runs").exists()


def test_train_help_lists_the_families(gunctl):
    result = gunctl("train", "--help", env={"COLUMNS": "400"})
    assert result.exit_code == 0
    for name in FAMILIES.values():
        assert name in result.stdout


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_training_step_gives_the_family_losses(family):
    from gunctl.core.engine import named_losses

    model, _ = small_model(family)
    model.train()
    losses = named_losses(model(images(), TARGETS))
    assert tuple(sorted(losses)) == tuple(sorted(FAMILY_LOSSES[family]))
    total = sum(losses.values())
    assert math.isfinite(float(total.detach()))
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[-4:])  # the heads learn


def test_ssdlite_trains_on_a_batch_of_one_image():
    """Its last extra layers are 1x1: BatchNorm over one value per channel would raise (a
    batch of one comes at an epoch's end, or with --batch-size 1)."""
    model, _ = small_model("ssdlite", min_size=320, max_size=320)
    model.train()
    losses = model(images()[:1], TARGETS[:1])
    assert all(math.isfinite(float(v.detach())) for v in losses.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_inference_core_runs_every_family_in_float32_resize(family):
    """The core's forward returns boxes in each image's own pixels and, apart from the float32
    resize rule, what the model itself returns (same sizes here: both rules agree)."""
    from gunctl.core.forward import DetectionModule

    model, _ = small_model(family)
    _spread_scores(model)
    model.eval()
    batch = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]  # square: both resize rules agree
    with torch.inference_mode():
        ours = DetectionModule(model)(batch)
        theirs = model(batch)
    for a, b in zip(ours, theirs, strict=True):
        b = {k: v[b["labels"] > 0] for k, v in b.items()}  # the core drops the background's
        assert (a["labels"] > 0).all()
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=0)
        assert float(a["boxes"][:, 2].max()) <= 96 and float(a["boxes"][:, 3].max()) <= 96


def test_recipes_fit_each_family():
    from gunctl.core.recipes import resolve

    def resolved(name):
        config = TrainConfig(
            model=ModelConfig(name=name, weights="none"), explicit=("model.name", "model.weights")
        )
        return resolve(config)

    retina = resolved("retinanet_resnet18_fpn")
    assert (retina.recipe, retina.model.norm, retina.model.fpn_channels) == ("scratch", "gn", 128)
    assert retina.fit_anchors and retina.model.fpn_levels == () and retina.model.min_size == 192
    assert retina.model.box_head_dim == ModelConfig().box_head_dim  # no box head to size
    fcos = resolved("fcos_resnet18_fpn")
    assert fcos.model.norm == "gn" and not fcos.fit_anchors  # anchor-free
    ssd = resolved("ssdlite320_mobilenet_v3_large")
    assert (ssd.model.min_size, ssd.model.max_size, ssd.model.train_sizes) == (320, 320, ())
    assert ssd.model.norm == "default" and not ssd.fit_anchors
    assert ssd.lr == fcos.lr == resolved("fasterrcnn_resnet18_fpn").lr == 3e-4
    assert retina.lr == 1e-4  # its own, measured (recipes.FAMILY_VALUES)
    mine = TrainConfig(
        model=ModelConfig(name="retinanet_resnet18_fpn", weights="none"),
        lr=5e-4,
        explicit=("model.name", "model.weights", "lr"),
    )
    assert resolve(mine).lr == 5e-4  # never over the user's


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("retinanet_resnet18_fpn", {"box_head_dim": 64}, "has no box head"),
        ("fcos_resnet18_fpn", {"fpn_levels": (3, 4)}, "stages 2-4 plus P6 and P7"),
        ("fcos_resnet18_fpn", {"anchor_sizes": (8, 16, 32, 64, 128)}, "anchor-free"),
        ("ssdlite320_mobilenet_v3_large", {"train_sizes": (256, 320)}, "fixed square"),
        ("ssdlite320_mobilenet_v3_large", {"norm": "gn"}, "apply to"),
        ("retinanet_resnet18_fpn", {"weights": "coco"}, "no COCO weights"),
    ],
)
def test_options_a_family_does_not_have_are_refused(name, overrides, message):
    from gunctl.core.model import build_model

    with pytest.raises(UsageError, match=message):
        build_model(ModelConfig(name=name, **{"weights": "none", **overrides}))


def test_retinanet_takes_fitted_anchors_one_size_per_level():
    model, _ = small_model(
        "retinanet", anchor_sizes=(20, 40, 60, 80, 100), aspect_ratios=(0.5, 1.0, 1.5)
    )
    generator = model.anchor_generator
    assert generator.sizes[0] == (20, 25, 31)  # torchvision's octave scales 2^0, 2^1/3, 2^2/3
    assert generator.num_anchors_per_location() == [9] * 5
    assert model.head.classification_head.num_anchors == 9


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_checkpoint_of_another_class_count_gets_a_new_head(family, tmp_path):
    """Fine-tuning from a checkpoint (--weights CKPT) of one class onto three."""
    import dataclasses

    from gunctl.core.forward import DetectionModule
    from gunctl.core.model import build_model

    path = _checkpoint(family, tmp_path / "one.pth")
    _, config = small_model(family)
    built = build_model(dataclasses.replace(config, weights=str(path), num_classes=4))
    assert built.weights_origin == f"checkpoint:{path}"
    model = built.model.eval()
    _spread_scores(model)
    with torch.inference_mode():
        found = DetectionModule(model)(images())
    labels = torch.cat([f["labels"] for f in found])
    assert len(labels) and int(labels.max()) <= 3 and int(labels.min()) >= 1  # no background


def _spread_scores(model) -> None:
    """Calibrate BatchNorm (SSDlite) and spread the classifier's weights, so that an untrained
    model's scores differ from box to box (ties would make any two runtimes' orders differ)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers import _calibrate_frozen_batchnorm

    _calibrate_frozen_batchnorm(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.head.classification_head.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * 0.05)
        logits = getattr(model.head.classification_head, "cls_logits", None)
        if logits is not None:  # RetinaNet, FCOS: from the 0.01 prior to about 0.5
            logits.bias.zero_()
    model.eval()


def _checkpoint(family: str, path: Path) -> Path:
    from gunctl.config import CLASS_NAMES, to_dict
    from gunctl.core.checkpoint import save_checkpoint

    model, config = small_model(family)
    _spread_scores(model)
    stored = to_dict(TrainConfig(model=config))
    stored.pop("layout")
    payload = {
        "model": model.state_dict(),
        "epoch": 1,
        "config": stored,
        "class_names": list(CLASS_NAMES),
        "run_name": "tiny",
        "weights_origin": "none",
        "metrics": None,
    }
    save_checkpoint(path, payload)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exports_match_the_checkpoint_in_their_runtimes(family, tmp_path):
    """TorchScript and ONNX (onnxruntime) against the checkpoint through the inference core:
    boxes within 1 px, scores within 1e-3, on images of other sizes than the traced one."""
    from gunctl.config import ExportConfig
    from gunctl.core.export import check_image, export
    from gunctl.core.inference import load_detector

    ckpt = _checkpoint(family, tmp_path / f"{family}.pth")
    threshold = 0.05
    scripted = export(
        ExportConfig(checkpoint=ckpt, format="torchscript", score_threshold=threshold)
    )
    onnx = export(ExportConfig(checkpoint=ckpt, format="onnx", score_threshold=threshold))
    assert onnx.max_box_diff <= 1.0 and onnx.max_score_diff <= 1e-3
    reference = load_detector(ckpt, device="cpu", score_threshold=threshold, runtime="torch")
    runtime = load_detector(onnx.path, score_threshold=threshold)
    assert runtime.identity["model"] == FAMILIES[family]
    module = torch.jit.load(str(scripted.path))
    for seed, (height, width) in enumerate([(200, 300), (260, 180)]):
        image = check_image(height, width, seed=seed + 3)
        want = reference.detect([image])[0]
        got = runtime.detect([image])[0]
        assert want["boxes"], "the check needs detections"
        _same(want["boxes"], want["scores"], got["boxes"], got["scores"])
        boxes, scores, _ = module(image)
        _same(want["boxes"], want["scores"], boxes.tolist(), scores.tolist())


def _same(boxes_a, scores_a, boxes_b, scores_b) -> None:
    from gunctl.core.export import compare

    assert len(boxes_a) == len(boxes_b)
    box_diff, score_diff = compare(boxes_a, scores_a, boxes_b, scores_b)
    assert box_diff <= 1.0 and score_diff <= 1e-3, (box_diff, score_diff)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_command_honours_the_checkpoint_family(family, gunctl, demo_layout, tmp_path):
    """One tiny from-scratch training step on demo data, then validate, predict on two images
    and a short clip, export: each reads the family from the checkpoint (no --model)."""
    import shutil

    out = tmp_path / "art"
    out.mkdir()
    (out / "raw").symlink_to(demo_layout.raw.resolve())
    (out / "splits").symlink_to(demo_layout.split_file.parent.resolve())
    trained = gunctl(
        "train", "--out", out, "--model", FAMILIES[family], "--weights", "none",
        *SMALL_CLI[family], "--epochs", "1", "--subset", "8", "--batch-size", "4",
        "--workers", "0", "--run-name", "tiny",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    ckpt = out / "runs" / "tiny" / "last.pth"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["config"]["model"]["name"] == FAMILIES[family]
    assert set(FAMILY_LOSSES[family]) <= set(stored["metrics"]["train"])

    # the family's own losses come from torch's training-mode pass (auto may pick onnxruntime)
    validated = gunctl("validate", ckpt, "--out", out, "--json", "--runtime", "torch")
    assert validated.exit_code == 0, validated.output
    report = json.loads(validated.stdout)
    assert report["model"] == FAMILIES[family] and report["runtime"] == "torch"
    for key in FAMILY_LOSSES[family]:
        assert math.isfinite(report["metrics"][key]), key

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for path in sorted((demo_layout.raw / "Images").iterdir())[:2]:
        shutil.copy(path, pictures / path.name)
    write_clip(pictures / "clip.mp4", 4)
    predicted = gunctl(
        "predict", pictures, "--weights", ckpt, "--out", tmp_path / "pred",
        "--score-threshold", "0", "--workers", "0",
    )  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    records = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").open()]
    assert len(records) == 2 + 4  # two images and four frames
    assert all(len(r["boxes"]) == len(r["scores"]) for r in records)

    # export reads the family too (both formats' parity: test_exports_match_...)
    exported = gunctl("export", ckpt, "--format", "torchscript", "--score-threshold", "0.05")
    assert exported.exit_code == 0, exported.output
    scripted = torch.jit.load(str(ckpt.with_name("last.torchscript.pt")))
    boxes, scores, labels = scripted(torch.zeros(3, 90, 120, dtype=torch.uint8))
    assert boxes.shape[1] == 4 and len(scores) == len(labels)


def write_clip(path: Path, frames: int, width: int = 160, height: int = 120) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.full((height, width, 3), 40, np.uint8)
            pixels[20:60, 10 + 8 * i : 50 + 8 * i] = (200, 180, 160)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))


@pytest.mark.parametrize(
    "name",
    [
        "ssdlite320_mobilenet_v3_large",
        pytest.param("retinanet_resnet50_fpn", marks=pytest.mark.slow),
        pytest.param("fcos_resnet50_fpn", marks=pytest.mark.slow),
    ],
)
def test_coco_weights_from_a_prefilled_torch_cache(name, tmp_path, monkeypatch):
    """--weights coco (and auto) read $TORCH_HOME/hub/checkpoints/<file> offline, as for Faster
    R-CNN; the classification head is replaced for the data's classes."""
    import torchvision

    from gunctl.core.model import build_model, coco_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    coco = getattr(torchvision.models.detection, name)(
        weights=None, weights_backbone=None, num_classes=91
    )
    with torch.no_grad():
        for parameter in coco.parameters():
            parameter.fill_(0.125)
    target = coco_weights_file(name)
    target.parent.mkdir(parents=True)
    torch.save(coco.state_dict(), target)
    for weights in ("coco", "auto"):
        built = build_model(ModelConfig(name=name, weights=weights))
        assert built.weights_origin == "coco"
        assert torch.all(next(built.model.backbone.parameters()) == 0.125)
        head = built.model.head.classification_head
        assert getattr(head, "num_classes", getattr(head, "num_columns", None)) == 2
        assert not torch.all(next(head.parameters()) == 0.125)  # a new head


def test_imagenet_weights_load_into_the_backbone_only(tmp_path, monkeypatch):
    import torchvision

    from gunctl.core.model import build_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    resnet = torchvision.models.resnet18()
    with torch.no_grad():
        for parameter in resnet.parameters():
            parameter.fill_(0.25)
    target = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(resnet.state_dict(), target)
    built = build_model(ModelConfig(name="fcos_resnet18_fpn", weights="imagenet"))
    assert built.weights_origin == "imagenet"
    body = built.model.backbone.body
    assert torch.all(body.conv1.weight == 0.25) and not body.conv1.weight.requires_grad  # frozen
    assert body.layer4[0].conv1.weight.requires_grad  # torchvision's 3 trainable stages
