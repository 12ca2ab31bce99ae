"""A synthetic data set in the Kaggle layout, generated offline and deterministically.

Each image is a textured background with a few distractor shapes and zero to three
gun-like silhouettes (barrel, slide, grip, trigger guard) at random scale, angle,
mirror and colour. The silhouettes differ clearly from the distractors, so that a
detector trained from scratch learns them within a few hundred steps on a CPU.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from gunctl.core.labels import Box, format_label
from gunctl.core.tree import IMAGES, LABELS

_GUN_COUNTS = (0, 1, 1, 1, 1, 2, 2, 3)  # ~1 in 8 images has no gun, as negatives to learn from

# The silhouette in units of the gun's length, muzzle at x=0, pointing left, y downwards.
_SLIDE = [(0.0, 0.0), (0.78, 0.0), (0.80, 0.04), (0.80, 0.20), (0.0, 0.20)]
_FRAME = [(0.18, 0.20), (0.80, 0.20), (0.80, 0.27), (0.18, 0.27)]
_GRIP = [(0.60, 0.26), (0.82, 0.26), (0.95, 0.74), (0.74, 0.78)]
_FRONT_SIGHT = [(0.03, 0.0), (0.07, 0.0), (0.07, -0.04), (0.03, -0.04)]
_GUARD_CENTRE, _GUARD_RADII = (0.48, 0.33), (0.11, 0.09)


def generate(dest: Path, count: int = 40, seed: int = 0) -> None:
    """Write ``count`` images and labels into ``dest/Images`` and ``dest/Labels``."""
    (dest / IMAGES).mkdir(parents=True, exist_ok=True)
    (dest / LABELS).mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        rng = np.random.default_rng([seed, index])  # each image stands alone: same seed, same image
        image, boxes = render_image(rng)
        (dest / IMAGES / f"{index}.jpeg").write_bytes(_jpeg_bytes(image))
        (dest / LABELS / f"{index}.txt").write_text(format_label(boxes))


def render_image(rng: np.random.Generator) -> tuple[Image.Image, list[Box]]:
    """One image and its gun boxes (integer pixels, inside the image)."""
    width, height = int(rng.integers(240, 321)), int(rng.integers(170, 231))
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        _distractor(rng, draw, width, height)
    boxes: list[Box] = []
    for _ in range(int(rng.choice(_GUN_COUNTS))):
        box = _place_gun(rng, draw, width, height, boxes)
        if box is not None:
            boxes.append(box)
    return image.filter(ImageFilter.GaussianBlur(0.6)), boxes


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    base = rng.uniform(110, 235, size=3)
    coarse = rng.normal(0, 18, size=(height // 24 + 2, width // 24 + 2, 3))
    coarse_img = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
    smooth = np.asarray(coarse_img.resize((width, height), Image.BICUBIC), dtype=np.float32) - 128
    fine = rng.normal(0, 6, size=(height, width, 1))
    pixels = np.clip(base + smooth + fine, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _distractor(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int):
    colour = tuple(int(c) for c in rng.uniform(40, 255, size=3))
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    w, h = rng.uniform(15, width / 3), rng.uniform(15, height / 3)
    shape = int(rng.integers(0, 3))
    if shape == 0:
        draw.ellipse([x, y, x + w, y + h], fill=colour)
    elif shape == 1:
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    else:
        draw.line([x, y, x + w, y + h], fill=colour, width=int(rng.integers(2, 6)))


def _place_gun(rng, draw, width: int, height: int, taken: list[Box]) -> Box | None:
    for _ in range(10):  # a few tries to avoid heavy overlap with guns already drawn
        length = rng.uniform(0.35, 0.75) * min(width, height)
        angle = math.radians(rng.uniform(-35, 35))
        mirror = bool(rng.integers(0, 2))
        parts, ring = _transformed_parts(length, angle, mirror)
        points = [p for part in parts + [ring] for p in part]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        dx = rng.uniform(-min(xs), width - max(xs)) if max(xs) - min(xs) < width else -min(xs)
        dy = rng.uniform(-min(ys), height - max(ys)) if max(ys) - min(ys) < height else -min(ys)
        box = _clip((min(xs) + dx, min(ys) + dy, max(xs) + dx, max(ys) + dy), width, height)
        if all(_iou(box, other) < 0.2 for other in taken):
            _draw_gun(rng, draw, parts, ring, (dx, dy), length)
            return box
    return None


def _transformed_parts(length: float, angle: float, mirror: bool):
    cos, sin = math.cos(angle), math.sin(angle)

    def move(points):
        out = []
        for x, y in points:
            x = 1.0 - x if mirror else x
            x, y = x * length, y * length
            out.append((x * cos - y * sin, x * sin + y * cos))
        return out

    cx, cy = _GUARD_CENTRE
    rx, ry = _GUARD_RADII
    ring = [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 25)]
    return [move(p) for p in (_SLIDE, _FRAME, _GRIP, _FRONT_SIGHT)], move(ring)


def _draw_gun(rng, draw, parts, ring, offset, length: float) -> None:
    dx, dy = offset
    shade = rng.choice([rng.uniform(15, 70), rng.uniform(70, 110)])
    tint = rng.uniform(-12, 12, size=3)
    colour = tuple(int(c) for c in np.clip(shade + tint, 0, 255))
    outline = tuple(max(c - 15, 0) for c in colour)
    for part in parts:
        draw.polygon([(x + dx, y + dy) for x, y in part], fill=colour, outline=outline)
    stroke = max(2, int(length * 0.035))
    draw.line([(x + dx, y + dy) for x, y in ring], fill=colour, width=stroke, joint="curve")


def _clip(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return (
        float(max(0, math.floor(x1))),
        float(max(0, math.floor(y1))),
        float(min(width, math.ceil(x2))),
        float(min(height, math.ceil(y2))),
    )


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()
