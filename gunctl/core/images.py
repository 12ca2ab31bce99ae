"""Decode and check images: one place for the pixel limit and the RGB conversion."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Extension (lower case) -> the PIL formats that may sit behind it without a warning.
_FORMATS = {".jpeg": {"JPEG", "MPO"}, ".jpg": {"JPEG", "MPO"}, ".png": {"PNG"}}


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


def decode_rgb(data: bytes, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    """Decode fully into an RGB image; raise ImageProblem for anything unusable.

    Grayscale, CMYK, palette and alpha images are converted to RGB (alpha dropped).
    Images above ``max_pixels`` are refused before their pixels are decoded.
    """
    if not data:
        raise ImageProblem("unreadable_image", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            meta = ImageInfo(image.width, image.height, image.format or "?", image.mode)
            if meta.width * meta.height > max_pixels:
                raise ImageProblem(
                    "image_too_large", f"{meta.width}x{meta.height} px, limit {max_pixels:,}"
                )
            image.load()
            rgb = image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem("image_too_large", str(exc).split(".")[0]) from None
    except UnidentifiedImageError:
        raise ImageProblem("unreadable_image", "not a known image format") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageProblem("unreadable_image", str(exc) or type(exc).__name__) from None
    return rgb, meta


def format_matches(extension: str, image_format: str) -> bool:
    return image_format in _FORMATS.get(extension.lower(), {image_format})
