"""Decode image bytes into an RGB array, whatever the file name claims the format is.

JPEG, PNG, WebP and GIF (first frame) are accepted, in grayscale, RGB, CMYK, with alpha and at
8 or 16 bits; JPEG EXIF orientation is applied. Everything else is an ``ImageDecodeError``
whose message names the reason, so one bad image can be reported and skipped.
"""

from __future__ import annotations

import io
import re
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 20000x20000 image is 1.2 GB as RGB: refuse anything above this many pixels before decoding.
MAX_PIXELS = 40_000_000
# Smaller images carry no usable content for a 16:9 classifier, so they are rejected.
MIN_SIDE = 16

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")

cv2.setNumThreads(1)


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; ``reason`` is a short machine-readable cause."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """Return the format named by the file's magic bytes, or None when it is not one we read."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _describe_unknown(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "the content is HTML or XML, not an image"
    if head.startswith((b"{", b"[")):
        return "the content is JSON, not an image"
    return f"unrecognised image format (first bytes {data[:8].hex()})"


def _jpeg_is_truncated(data: bytes) -> bool:
    # A complete JPEG has an end-of-image marker after its last start-of-scan marker. An EXIF
    # thumbnail has its own markers, which is why the positions are compared, not just searched.
    body = data.rstrip(b"\x00\r\n ")
    return body.rfind(b"\xff\xd9") < body.rfind(b"\xff\xda")


def decode_image(data: bytes, name: str = "image", min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode image bytes into an RGB ``uint8`` array of shape (height, width, 3).

    Args:
        data: the file's bytes.
        name: how to call the image in error messages (a path, URL or task id).
        min_size: (height, width) that the result must keep. When given, a JPEG is decoded at
            1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) if the scaled image is still at least
            this size: several times faster than a full decode followed by a resize, and the
            scaling averages pixels, so it does not alias. Other formats decode at full size.

    Raises:
        ImageDecodeError: empty, unknown format, corrupt, truncated, too small or too large.
    """
    if not data:
        raise ImageDecodeError("empty", f"{name}: the image is empty (0 bytes)")
    image_format = sniff_format(data)
    if image_format is None:
        raise ImageDecodeError("unsupported_format", f"{name}: {_describe_unknown(data)}")

    # Pillow reads only the header here, which makes the size check cheap and safe.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
            width, height = header.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError("corrupt", f"{name}: corrupt {image_format} header ({error})") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow checks the size while reading the header, before our own check below.
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
        raise ImageDecodeError(
            "too_large", f"{name}: image has {pixels}, more than the limit of {MAX_PIXELS:,}"
        ) from error
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            "too_large",
            f"{name}: image is {width}x{height}, {width * height:,} pixels, more than the limit of {MAX_PIXELS:,}",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(
            "too_small", f"{name}: image is {width}x{height} pixels, at least {MIN_SIDE}x{MIN_SIDE} is needed"
        )
    if image_format == "JPEG" and _jpeg_is_truncated(data):
        raise ImageDecodeError("truncated", f"{name}: the JPEG data is truncated (no end-of-image marker)")

    if image_format == "JPEG":
        rgb = _decode_with_opencv(data, _jpeg_scale_flag(width, height, min_size))
    else:
        # Pillow composites alpha, reads the first GIF frame and converts 16-bit PNGs the same
        # way on every platform, where OpenCV's results depend on its build.
        rgb = _decode_with_pillow(data, header)
    if rgb is None:
        raise ImageDecodeError("corrupt", f"{name}: the {image_format} data is corrupt")
    return rgb


# OpenCV's reduced-size colour flags by scale denominator, largest reduction first.
_REDUCED_COLOR_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                        (2, cv2.IMREAD_REDUCED_COLOR_2))


def _jpeg_scale_flag(width: int, height: int, min_size: tuple[int, int] | None) -> int:
    """Return the imdecode flag with the largest reduction that keeps ``min_size`` (height, width)."""
    if min_size is not None:
        min_height, min_width = min_size
        for denominator, flag in _REDUCED_COLOR_FLAGS:
            # libjpeg rounds scaled dimensions up.
            if -(-width // denominator) >= min_width and -(-height // denominator) >= min_height:
                return flag
    return cv2.IMREAD_COLOR


def _decode_with_opencv(data: bytes, flag: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    # The colour flags (IMREAD_COLOR and the IMREAD_REDUCED_COLOR_* ones) apply EXIF orientation
    # and convert grayscale and CMYK to 3 channels.
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_with_pillow(data: bytes, image: Image.Image) -> np.ndarray | None:
    try:
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale: scale to 8 bits instead of clipping everything above 255.
            array = np.asarray(image, dtype=np.uint32)
            image = Image.fromarray((array >> 8).astype(np.uint8), mode="L")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent pixels become black, matching the letterbox colour of thumbnails.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, rgba)
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except (OSError, SyntaxError, ValueError):
        return None
