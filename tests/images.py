"""Image bytes for decode tests, made with Pillow so each case is exactly what its name states."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def gradient_rgb(width: int = 320, height: int = 180) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[np.newaxis, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, np.newaxis].repeat(width, axis=1)
    return Image.fromarray(np.dstack([x, y, 255 - x]))


def png_with_declared_size(width: int, height: int) -> bytes:
    """Return a tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (16, 16)), "PNG"))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # The IHDR chunk starts after the 8-byte signature: length (4), type (4), data (13), CRC (4).
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_with_orientation(orientation: int) -> bytes:
    """Return a 64x32 JPEG, left half red and right half blue, with an EXIF orientation tag."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
