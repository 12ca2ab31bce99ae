"""Pictures of detections: a legend strip, sizes that follow the image, legible labels."""

import numpy as np
from PIL import Image

from gunctl.core.draw import PRED_COLOUR, TRUE_COLOUR, _legend, draw_detections


def _has(picture, colour) -> bool:
    return bool((np.asarray(picture) == np.array(colour)).all(axis=-1).any())


def test_nothing_above_the_threshold_is_said_in_a_legend_under_the_image():
    image = Image.new("RGB", (280, 180), (90, 90, 90))
    drawn = draw_detections(image, [[10, 10, 80, 80]], [[20, 20, 60, 60]], [0.2], 0.5)
    assert drawn.width == 280 and drawn.height > 180  # the legend is below, not over the image
    assert _has(drawn, TRUE_COLOUR) and not _has(drawn, PRED_COLOUR)
    assert _legend(1, 0, 1, 0.5) == ["1 true (green)", "no detection above threshold 0.50, 1 below"]
    assert _legend(2, 3, 3, 0.25)[1] == "3 predicted (red) at score >= 0.25"


def test_lines_and_text_grow_with_the_image():
    def red_pixels(size):
        image = Image.new("RGB", size, (90, 90, 90))
        w, h = size
        drawn = draw_detections(image, [], [[w * 0.2, h * 0.2, w * 0.6, h * 0.6]], [0.9], 0.5)
        return int((np.asarray(drawn) == np.array(PRED_COLOUR)).all(axis=-1).sum()), drawn

    small, small_image = red_pixels((280, 180))
    large, large_image = red_pixels((1120, 720))
    assert large > 4 * small * 1.5  # thicker lines and a bigger label, not only longer ones
    assert large_image.height - 720 > small_image.height - 180  # a bigger legend font


def test_many_overlapping_detections_get_few_labels():
    image = Image.new("RGB", (280, 180), (90, 90, 90))
    boxes = [[10 + i, 10 + i, 120 + i, 120 + i] for i in range(40)]
    scores = [0.99 - i / 100 for i in range(40)]
    drawn = draw_detections(image, [], boxes, scores, 0.0, max_labels=10)
    few = draw_detections(image, [], boxes, scores, 0.0, max_labels=1)
    red = lambda p: int((np.asarray(p) == np.array(PRED_COLOUR)).all(axis=-1).sum())  # noqa: E731
    # Labels at nearly the same corner would cover each other: only the first is written.
    assert red(drawn) == red(few)


def _drawn_directly(image, boxes, scores, labels, threshold, class_index):
    """predict's annotation drawn glyph by glyph with ImageDraw (what annotate's rendered-once
    tags must reproduce exactly)."""
    from PIL import ImageDraw, ImageFont

    from gunctl.core.draw import _PALETTE, style

    line, size = style(image.width, image.height)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)

    def tag(corner, text, fill, above):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, (bottom - top) // 5)
        width, height = right - left + 2 * pad, bottom - top + 2 * pad
        x, y = corner
        if above:
            y = y - height if y - height >= 0 else y
        draw.rectangle((x, y, x + width, y + height), fill=fill)
        draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)

    for box, score, label, index in zip(boxes, scores, labels, class_index, strict=True):
        colour = _PALETTE[index % len(_PALETTE)]
        draw.rectangle(box, outline=colour, width=line)
        tag((box[0], box[1]), f"{label} {score:.2f}", colour, True)
    tag((0, 0), f"score >= {threshold:.2f}: {len(boxes)} detections", (32, 32, 32), False)
    return image


def test_annotated_copies_draw_the_same_pixels_as_drawing_each_glyph():
    from gunctl.core.draw import annotate

    rng = np.random.default_rng(0)
    for size in ((320, 200), (1280, 720)):  # two font sizes: the tags of one are not reused
        image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        boxes = [[40, 60, 150, 180], [200, 5, 300, 90], [10, 150, 90, 199]]  # one at the top
        args = (boxes, [0.93, 0.51, 0.7], ["pistol", "rifle", "pistol"], 0.5, [0, 1, 0])
        for _ in range(2):  # the second time from the rendered tags
            got = np.asarray(annotate(image.copy(), *args))
            want = np.asarray(_drawn_directly(image.copy(), *args))
            assert (got != np.asarray(image)).any()
            np.testing.assert_array_equal(got, want)


def test_a_very_long_class_name_is_cut_in_the_label_and_the_score_stays():
    """Class names come from checkpoints and data sets nobody checked: a name of 20,000
    characters is drawn as its first 45 and "...", with its score."""
    from gunctl.core.draw import annotate

    def annotated(name):
        image = Image.new("RGB", (600, 200), (90, 90, 90))
        return np.asarray(annotate(image, [[40, 100, 150, 180]], [0.9], [name], 0.5, [0]))

    np.testing.assert_array_equal(annotated("x" * 20_000), annotated("x" * 45 + "..."))
    assert not np.array_equal(annotated("x" * 20_000), annotated("x" * 45))


def test_validation_pictures_cut_long_class_names_too():
    image = Image.new("RGB", (280, 180), (90, 90, 90))
    boxes, scores = [[20, 40, 200, 160]], [0.9]
    long_one = draw_detections(image, [], boxes, scores, 0.5, pred_names=["y" * 20_000])
    cut = draw_detections(image, [], boxes, scores, 0.5, pred_names=["y" * 45 + "..."])
    np.testing.assert_array_equal(np.asarray(long_one), np.asarray(cut))
