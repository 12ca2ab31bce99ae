"""Boxes, labels and a legend drawn onto an image, sized to the image so they stay readable."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def style(width: int, height: int) -> tuple[int, int]:
    """(line width, font size) for an image: 2 px and 11 pt at 180 px, 5 and 27 at 1080p."""
    short = min(width, height)
    return max(2, round(short / 220)), max(11, round(short / 40))


def annotate(
    image: Image.Image,
    boxes: list[list[float]],
    scores: list[float],
    labels: list[str],
    threshold: float,
    class_index: list[int] | None = None,
) -> Image.Image:
    """Draw on ``image`` (RGB, changed in place and returned): a box with "name score" per
    detection, and a legend with the threshold and the count in the top-left corner."""
    line, size = style(image.width, image.height)
    font = _font(size)
    draw = ImageDraw.Draw(image)
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels, strict=True)):
        colour = _PALETTE[(class_index[i] if class_index else 1) % len(_PALETTE)]
        draw.rectangle(box, outline=colour, width=line)
        _tag(draw, (box[0], box[1]), f"{label} {score:.2f}", font, colour, above=True)
    count = len(boxes)
    legend = f"score >= {threshold:.2f}: {count} detection{'' if count == 1 else 's'}"
    _tag(draw, (0, 0), legend, font, (32, 32, 32), above=False)
    return image


def _tag(draw, corner, text: str, font, fill, above: bool) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = corner
    if above:
        y = y - height if y - height >= 0 else y  # inside the box when there is no room above
    draw.rectangle((x, y, x + width, y + height), fill=fill)
    draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)


@lru_cache(maxsize=32)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()
