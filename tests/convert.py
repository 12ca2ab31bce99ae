"""Build YOLO, COCO and Pascal VOC copies of a Kaggle-layout tree, for the format tests.

Written independently of gunctl's readers (plain json, string XML) so that a reader bug
cannot hide behind a matching writer bug.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from PIL import Image


def kaggle_items(root: Path, count: int | None = None, classes=None):
    """[(image path, width, height, [(x1, y1, x2, y2, class name)])] of a Kaggle tree.

    ``classes(stem, index)`` gives each box's class name (default "gun").
    """
    images = sorted((root / "Images").iterdir(), key=lambda p: int(p.stem))[:count]
    items = []
    for path in images:
        lines = (root / "Labels" / f"{path.stem}.txt").read_text().split("\n")[1:]
        boxes = [tuple(float(v) for v in line.split()) for line in lines if line.strip()]
        width, height = Image.open(path).size
        named = [(*b, classes(path.stem, i) if classes else "gun") for i, b in enumerate(boxes)]
        items.append((path, width, height, named))
    return items


def class_list(items) -> list[str]:
    return sorted({b[4] for _, _, _, boxes in items for b in boxes}) or ["gun"]


def to_kaggle(items, out: Path) -> Path:
    (out / "Images").mkdir(parents=True)
    (out / "Labels").mkdir()
    for path, _, _, boxes in items:
        (out / "Images" / path.name).write_bytes(path.read_bytes())
        lines = [str(len(boxes))] + [" ".join(f"{v:g}" for v in b[:4]) for b in boxes]
        (out / "Labels" / f"{path.stem}.txt").write_text("\n".join(lines) + "\n")
    return out


def to_yolo(items, out: Path, names=None, splits: dict | None = None) -> Path:
    """Ultralytics layout; with ``splits`` {stem: "train"|"valid"}: Roboflow's train/, valid/."""
    names = names or class_list(items)
    for path, width, height, boxes in items:
        folder = out / splits[path.stem] if splits else out
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        (folder / "images" / path.name).write_bytes(path.read_bytes())
        lines = []
        for x1, y1, x2, y2, name in boxes:
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            w, h = (x2 - x1) / width, (y2 - y1) / height
            lines.append(f"{names.index(name)} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}")
        (folder / "labels" / f"{path.stem}.txt").write_text("".join(f"{x}\n" for x in lines))
    (out / "data.yaml").write_text(
        "path: .\ntrain: train/images\nval: valid/images\nnames:\n"
        + "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    )
    return out


def coco_document(items, names=None) -> dict:
    names = names or class_list(items)
    images, annotations = [], []
    for image_id, (path, width, height, boxes) in enumerate(items, start=1):
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        for x1, y1, x2, y2, name in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": names.index(name) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n, "supercategory": "weapon"} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def to_coco(items, out: Path, names=None, document: dict | None = None) -> Path:
    (out / "images").mkdir(parents=True)
    for path, *_ in items:
        (out / "images" / path.name).write_bytes(path.read_bytes())
    (out / "annotations").mkdir()
    document = document or coco_document(items, names)
    (out / "annotations" / "instances_default.json").write_text(json.dumps(document))
    return out


def voc_xml(name: str, width: int, height: int, boxes, difficult=()) -> str:
    objects = "".join(
        f"<object><name>{b[4]}</name><difficult>{int(i in difficult)}</difficult><bndbox>"
        f"<xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax>"
        "</bndbox></object>"
        for i, b in enumerate(boxes)
    )
    return (
        f"<annotation><folder>VOC</folder><filename>{name}</filename><size><width>{width}"
        f"</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )


def to_voc(items, out: Path) -> Path:
    (out / "JPEGImages").mkdir(parents=True)
    (out / "Annotations").mkdir()
    for path, width, height, boxes in items:
        (out / "JPEGImages" / path.name).write_bytes(path.read_bytes())
        xml = voc_xml(path.name, width, height, boxes)
        (out / "Annotations" / f"{path.stem}.xml").write_text(xml)
    return out


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return target
