"""Pictures of detections: true boxes in green, predictions in red, and a legend strip under
the image that says the threshold and the counts (or that nothing scored above it).

Line width and font size follow the image size; at most ``max_labels`` score labels are
written, the highest scores first, and a label that would cover another is left out, so that
the labels stay legible when many boxes overlap.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

TRUE_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 30, 30)
MAX_NAME_CHARS = 48  # longer class names are cut in labels: a tag stays a few KB


def draw_detections(
    image,
    true_boxes: Sequence[Sequence[float]],
    pred_boxes: Sequence[Sequence[float]],
    pred_scores: Sequence[float],
    threshold: float,
    max_labels: int = 10,
    pred_names: Sequence[str] | None = None,
):
    """A PIL image: ``image`` (PIL RGB) with boxes and a legend strip below it.

    ``pred_boxes``/``pred_scores`` are every detection; those below ``threshold`` are counted
    in the legend but not drawn. ``pred_names`` (the class of each detection) prefixes the
    labels when given (data sets of several classes).
    """
    from PIL import Image, ImageDraw

    width, height = image.size
    line = max(1, round(min(width, height) / 150))
    font = _font(max(10, round(min(width, height) / 22)))
    kept = sorted(
        (
            (float(s), list(b), n)
            for s, b, n in zip(
                pred_scores, pred_boxes, pred_names or [None] * len(pred_scores), strict=True
            )
            if s >= threshold
        ),
        key=lambda pair: -pair[0],
    )
    legend = _legend(len(true_boxes), len(kept), len(pred_scores), threshold)
    strip = _strip_height(font, legend, width)
    canvas = Image.new("RGB", (width, height + strip), (255, 255, 255))
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for box in true_boxes:
        draw.rectangle(_clamp(box, width, height), outline=TRUE_COLOUR, width=line)
    placed: list[tuple[float, float, float, float]] = []
    for rank, (score, box, name) in enumerate(kept):
        x1, y1, x2, y2 = _clamp(box, width, height)
        draw.rectangle((x1, y1, x2, y2), outline=PRED_COLOUR, width=line)
        if rank < max_labels:
            text = f"{_cut(name)} {score:.2f}" if name else f"{score:.2f}"
            _label(draw, font, text, (x1, y1), placed, width)
    _write_legend(draw, font, legend, height, width)
    return canvas


def _legend(truths: int, kept: int, detections: int, threshold: float) -> list[str]:
    found = (
        f"{kept} predicted (red) at score >= {threshold:.2f}"
        if kept
        else f"no detection above threshold {threshold:.2f}"
    )
    below = detections - kept
    return [f"{truths} true (green)", found + (f", {below} below" if below else "")]


def _cut(name: str) -> str:
    """A class name of at most MAX_NAME_CHARS (names come from checkpoints and data sets
    that nobody checked: one of 20,000 characters would be a picture wider than any image)."""
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 3] + "..."


@functools.lru_cache(maxsize=16)
def _font(size: int):
    """The default font at ``size``, loaded once (loading it, and the first glyphs it renders,
    cost about a millisecond per call)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _strip_height(font, lines: list[str], width: int) -> int:
    _, line_height = _text_size(font, "Hg")
    return (line_height + 4) * len(lines) + 6


def _write_legend(draw, font, lines: list[str], top: int, width: int) -> None:
    _, line_height = _text_size(font, "Hg")
    y = top + 3
    for text in lines:
        draw.text((4, y), text, fill=(0, 0, 0), font=font)
        y += line_height + 4


def _label(draw, font, text: str, corner, placed: list, width: int) -> None:
    """The score in white on red above the box's corner (inside it at the top edge), unless
    it would cover a label already written."""
    text_width, text_height = _text_size(font, text)
    x1, y1 = corner
    x1 = min(x1, max(0, width - text_width - 4))
    top = y1 - text_height - 4 if y1 - text_height - 4 >= 0 else y1
    rect = (x1, top, x1 + text_width + 4, top + text_height + 4)
    if any(_overlap(rect, other) for other in placed):
        return
    placed.append(rect)
    draw.rectangle(rect, fill=PRED_COLOUR)
    draw.text((x1 + 2, top + 1), text, fill=(255, 255, 255), font=font)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _clamp(box, width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (
        max(0.0, min(x1, width - 1)),
        max(0.0, min(y1, height - 1)),
        max(0.0, min(x2, width - 1)),
        max(0.0, min(y2, height - 1)),
    )


# --- predict: drawn in place (the image keeps its size, as video frames must) ---------------

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def style(width: int, height: int) -> tuple[int, int]:
    """(line width, font size) for an image: 2 px and 11 pt at 180 px, 5 and 27 at 1080p."""
    short = min(width, height)
    return max(2, round(short / 220)), max(11, round(short / 40))


def annotate(
    image,
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    labels: Sequence[str],
    threshold: float,
    class_index: Sequence[int] | None = None,
):
    """Draw on ``image`` (PIL RGB, changed in place and returned): a box with "name score" per
    detection, and a legend with the threshold and the count in the top-left corner."""
    from PIL import ImageDraw

    line, size = style(image.width, image.height)
    draw = ImageDraw.Draw(image)
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels, strict=True)):
        colour = _PALETTE[(class_index[i] if class_index else 1) % len(_PALETTE)]
        draw.rectangle(list(box), outline=colour, width=line)
        tag = _tag(f"{_cut(label)} {score:.2f}", size, colour)
        x, y = round(box[0]), round(box[1])
        above = y - tag.height + 1  # the tag's last row on the box's top edge
        y = above if above >= 0 else y  # inside the box when there is no room above
        image.paste(tag, (x, y))
    count = len(boxes)
    legend = f"score >= {threshold:.2f}: {count} detection{'' if count == 1 else 's'}"
    image.paste(_tag(legend, size, (32, 32, 32)), (0, 0))
    return image


@functools.lru_cache(maxsize=512)  # a few MB at most: tags are small
def _tag(text: str, size: int, fill: tuple[int, int, int]):
    """``text`` in white on ``fill``, padded, as a small PIL image, rendered once and pasted
    wherever it recurs: rendering the glyphs was most of the cost of an annotated copy (video
    frames and predict's images repeat the same few labels, scores and legends)."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(1, (bottom - top) // 5)
    tag = Image.new("RGB", (right - left + 2 * pad + 1, bottom - top + 2 * pad + 1), fill)
    ImageDraw.Draw(tag).text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return tag
