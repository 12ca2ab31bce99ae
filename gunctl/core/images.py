"""Decode and check images: the one decode function, for ingest, training and validation.

Only JPEG and PNG are ever opened, chosen by content (``Image.open(formats=...)``): no other
Pillow plugin (EPS and its Ghostscript, TIFF, PSD...) sees untrusted bytes. Limits, checked
before the pixels are decoded: ``max_pixels`` (decompression bombs) and ``MAX_ASPECT`` (a
65000x10 px image cannot be resized for the model).

Conversions: grayscale, CMYK, palette and alpha images become RGB (alpha dropped); 16-bit
grayscale PNGs are scaled to 8 bits (65535 -> 255), not clipped to white.

EXIF orientation is NOT applied: the Kaggle boxes are in the stored pixel frame, and a rotated
image would need rotated boxes. Pixels and boxes stay in the stored frame, the orientation tag
is reported (``ImageInfo.orientation``, problem ``exif_orientation``), and training, validation
and every later reader see the same frame.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = ("JPEG", "PNG")  # Pillow's names; JPEG also opens multi-picture JPEGs (MPO)
MAX_PIXELS = 50_000_000  # refuse decompression bombs; the data set's images are ~0.05 MP
MAX_ASPECT = 20.0  # longer side / shorter side; the data set's images are below 3:1
_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

# Extension (lower case) -> the PIL formats that may sit behind it without a warning.
_EXTENSIONS = {".jpeg": {"JPEG", "MPO"}, ".jpg": {"JPEG", "MPO"}, ".png": {"PNG"}}


class ImageProblem(Exception):
    """An image that cannot be used; ``kind`` is a labels.PROBLEM_KINDS key."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str  # PIL's name of the content's format
    mode: str  # before conversion to RGB
    orientation: int = 1  # the EXIF orientation tag (1: none or upright); never applied


def decode_rgb(
    data: bytes, max_pixels: int = MAX_PIXELS, max_aspect: float = MAX_ASPECT
) -> tuple[Image.Image, ImageInfo]:
    """Decode fully into an RGB image; raise ImageProblem for anything unusable."""
    if not data:
        raise ImageProblem("unreadable_image", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            meta = ImageInfo(
                image.width, image.height, image.format or "?", image.mode, _orientation(image)
            )
            _check_size(meta, max_pixels, max_aspect)
            image.load()
            rgb = _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem("image_too_large", str(exc).split(".")[0]) from None
    except UnidentifiedImageError:
        raise ImageProblem("unreadable_image", "not a JPEG or PNG image") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:  # corrupt data
        raise ImageProblem("unreadable_image", str(exc) or type(exc).__name__) from None
    return rgb, meta


def planes(rgb: Image.Image):
    """An RGB image as a uint8 3xHxW array (channels first, as torchvision's detectors take
    them), split into planes in C: about twice as fast as a strided copy of the HxWx3 array."""
    import numpy as np

    return np.stack([np.asarray(plane) for plane in rgb.split()])


def from_planes(pixels) -> Image.Image:
    """``planes``' inverse: a uint8 3xHxW array (or CPU tensor) as an RGB image, the planes
    merged in C (0.06 ms for a sample image against 0.9 for ``fromarray`` of a transposed
    view, which predict paid for every annotated copy)."""
    import numpy as np

    return Image.merge("RGB", [Image.fromarray(plane) for plane in np.asarray(pixels)])


def format_matches(extension: str, image_format: str) -> bool:
    return image_format in _EXTENSIONS.get(extension.lower(), {image_format})


def _check_size(info: ImageInfo, max_pixels: int, max_aspect: float) -> None:
    width, height = info.width, info.height
    if width < 1 or height < 1:
        raise ImageProblem("unreadable_image", f"{width}x{height} px")
    if width * height > max_pixels:
        raise ImageProblem("image_too_large", f"{width}x{height} px, limit {max_pixels:,}")
    if max(width, height) / min(width, height) > max_aspect:
        raise ImageProblem("extreme_aspect_ratio", f"{width}x{height} px, limit {max_aspect:g}:1")


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block only loses the tag
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit grayscale: scale, do not clip
        import numpy as np

        pixels = np.asarray(image).astype(np.int64)
        eight = (np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(eight).convert("RGB")
    return image.convert("RGB")
