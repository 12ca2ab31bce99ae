import io

import numpy as np
import pytest
from helpers import jpeg_bytes
from PIL import Image

from gunctl.core.images import ImageProblem, decode_rgb


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_sixteen_bit_grayscale_is_scaled_not_saturated():
    ramp = np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)
    rgb, info = decode_rgb(_png(ramp))
    pixels = np.asarray(rgb)[..., 0]
    assert info.mode.startswith("I")
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # a ramp, not a white image
    assert np.array_equal(pixels, (ramp >> 8).astype(np.uint8))


def test_exif_orientation_is_reported_not_applied():
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, "JPEG", exif=exif.tobytes())
    rgb, info = decode_rgb(buffer.getvalue())
    assert info.orientation == 6 and rgb.size == (64, 48)  # the stored frame


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "unreadable_image"),
        (jpeg_bytes(fmt="GIF", mode="P"), "unreadable_image"),
        (jpeg_bytes(fmt="TIFF"), "unreadable_image"),
        (jpeg_bytes(6500, 10, mode="L", fmt="PNG"), "extreme_aspect_ratio"),
        (jpeg_bytes(10, 300, mode="L", fmt="PNG"), "extreme_aspect_ratio"),
    ],
    ids=["eps", "gif", "tiff", "wide", "tall"],
)
def test_only_jpeg_and_png_within_limits(data, kind):
    with pytest.raises(ImageProblem) as raised:
        decode_rgb(data)
    assert raised.value.kind == kind


def test_planes_put_channels_first_and_from_planes_undoes_it():
    import torch

    from gunctl.core.images import from_planes, planes

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))  # 7 wide, 5 high
    got = planes(rgb)
    assert got.shape == (3, 5, 7) and got.dtype == np.uint8
    for x, y in ((0, 0), (6, 4), (3, 1)):
        assert tuple(int(v) for v in got[:, y, x]) == rgb.getpixel((x, y))
    for pixels in (got, torch.from_numpy(got)):
        back = from_planes(pixels)
        assert back.mode == "RGB" and back.size == (7, 5)
        assert np.array_equal(np.asarray(back), np.asarray(rgb))
