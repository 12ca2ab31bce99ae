"""The original pipeline's training loop, kept bare: the baseline gunctl is compared with.

It mirrors the pipeline gunctl replaced: a Dataset whose ``__getitem__`` reads the image with
``cv2.imread``, converts BGR to RGB, divides by 255, builds float tensors and moves image and
target to the device itself (hence ``num_workers=0``); a DataLoader with a tuple-zip collate;
torchvision's ``fasterrcnn_resnet50_fpn`` (random init: ``weights=None, weights_backbone=None``,
2 classes) at torchvision's default sizes and proposal counts; Adam at 1e-4; and a plain loop:
forward, sum the losses, zero_grad, backward, step. Each epoch ends with a validation loss
(train mode under ``torch.no_grad``), as the original did.

It imports no gunctl module and runs as its own process, so that its start-up time and peak
RSS are its own::

    python benchmarks/reference.py --spec spec.json --steps 8 --result out.json
    python benchmarks/reference.py --spec spec.json --epochs 1 --save model.pth

``spec.json`` holds ``{"train": [[image, label], ...], "val": [[image, label], ...]}`` (paths
in the Kaggle layout: a label file has the box count on line 1, then ``x1 y1 x2 y2`` lines).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # first thing: the phases below are measured from here

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

# torchvision's own defaults, written out: the settings of the original pipeline.
ORIGINAL_SETTINGS = {
    "min_size": 800,
    "max_size": 1333,
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000,
    "box_batch_size_per_image": 512,
    "box_detections_per_img": 100,
}


def read_label(path: str) -> list[list[float]]:
    """Kaggle label file: the box count on line 1, then one ``x1 y1 x2 y2`` line per box."""
    with open(path) as handle:
        lines = [line.split() for line in handle.read().splitlines() if line.strip()]
    return [[float(v) for v in line[:4]] for line in lines[1:] if len(line) >= 4]


class GunsDataset(torch.utils.data.Dataset):
    """As the original: decoding, scaling and the device move all happen in ``__getitem__``."""

    def __init__(self, pairs: list[list[str]], device: torch.device):
        self.pairs, self.device = pairs, device

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, label_path = self.pairs[index]
        image = cv2.imread(image_path)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = image / 255.0  # float64, as the original
        image = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1).to(self.device)
        boxes = torch.tensor(read_label(label_path), dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes.to(self.device),
            "labels": torch.ones((boxes.shape[0],), dtype=torch.int64).to(self.device),
        }
        return image, target


def collate(batch):
    return tuple(zip(*batch, strict=True))


def build_model(settings: dict) -> torch.nn.Module:
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2, **settings
    )


def make_loader(pairs, device, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        GunsDataset(pairs, device),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=0,  # __getitem__ moves tensors to the device: no worker processes
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )


def train_step(model, optimizer, images, targets) -> float:
    loss_dict = model(list(images), list(targets))
    losses = sum(loss for loss in loss_dict.values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    return losses.item()


def train_steps(model, optimizer, loader, steps: int) -> dict:
    """Exactly ``steps`` steps (the loader is cycled); each step's time includes loading."""
    model.train()
    seconds, images, losses = [], [], []
    tick = time.perf_counter()
    while len(seconds) < steps:
        for batch_images, batch_targets in loader:
            losses.append(train_step(model, optimizer, batch_images, batch_targets))
            now = time.perf_counter()
            seconds.append(now - tick)
            images.append(len(batch_images))
            tick = now
            if len(seconds) == steps:
                break
    return {"step_seconds": seconds, "step_images": images, "losses": losses}


def train_epoch(model, optimizer, loader) -> float:
    model.train()
    total = 0.0
    for images, targets in loader:
        total += train_step(model, optimizer, images, targets)
    return total / max(len(loader), 1)


def validation_loss(model, loader) -> float:
    """The original's validation: losses from a train-mode forward without gradients."""
    model.train()
    total = 0.0
    with torch.no_grad():
        for images, targets in loader:
            loss_dict = model(list(images), list(targets))
            total += sum(loss for loss in loss_dict.values()).item()
    return total / max(len(loader), 1)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(args) -> dict:
    phases = {"imports": time.perf_counter() - STARTED}
    base_rss = peak_rss_mib()
    torch.manual_seed(args.seed)
    spec = json.loads(Path(args.spec).read_text())
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    settings = {**ORIGINAL_SETTINGS, "min_size": args.min_size, "max_size": args.max_size}
    model = build_model(settings).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_loader = make_loader(spec["train"], device, args.batch_size, shuffle=not args.in_order)
    phases["setup"] = time.perf_counter() - STARTED - sum(phases.values())
    result: dict = {"device": str(device), "settings": settings, "batch_size": args.batch_size}
    result["rss_after_imports_mib"] = base_rss
    if args.steps:
        result.update(train_steps(model, optimizer, train_loader, args.steps))
        result["peak_rss_after_steps_mib"] = peak_rss_mib()
    val_loader = make_loader(spec.get("val", []), device, args.batch_size, shuffle=False)
    for epoch in range(args.epochs):
        train_loss = train_epoch(model, optimizer, train_loader)
        val_loss = validation_loss(model, val_loader) if spec.get("val") else None
        print(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val_loss}", flush=True)
        result.setdefault("epochs", []).append({"train_loss": train_loss, "val_loss": val_loss})
    phases["train_and_val"] = time.perf_counter() - STARTED - sum(phases.values())
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save)
        phases["save"] = time.perf_counter() - STARTED - sum(phases.values())
    result.update(phases=phases, peak_rss_mib=peak_rss_mib())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON with the train and val file pairs")
    parser.add_argument("--steps", type=int, default=0, help="train exactly N steps (timed)")
    parser.add_argument("--epochs", type=int, default=0, help="train N epochs, each + val loss")
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--min-size", type=int, default=ORIGINAL_SETTINGS["min_size"])
    parser.add_argument("--max-size", type=int, default=ORIGINAL_SETTINGS["max_size"])
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="torch.save the state_dict here at the end")
    parser.add_argument("--result", default=None, help="write the figures (JSON) here")
    parser.add_argument("--in-order", action="store_true", help="batches in the spec's order")
    args = parser.parse_args()
    result = run(args)
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
