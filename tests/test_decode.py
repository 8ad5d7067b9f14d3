"""Decoding real and deliberately awkward images: every format, mode and failure named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.decode import MAX_PIXELS, ImageDecodeError, decode_image, sniff_format
from tests.images import encode, gradient_rgb, jpeg_with_orientation, png_with_declared_size
from tests.support import THUMBNAIL_IMAGES


def test_real_jpeg_thumbnail():
    path = next(THUMBNAIL_IMAGES.rglob("*.jpg"))
    rgb = decode_image(path.read_bytes(), str(path))
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3
    assert rgb.shape[2] == 3


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "GIF", "JPEG"])
def test_format_detected_from_content(image_format):
    data = encode(gradient_rgb(), image_format)
    assert sniff_format(data) == image_format
    rgb = decode_image(data, "named.jpg")
    assert rgb.shape == (180, 320, 3)


def test_jpeg_is_rgb_not_bgr():
    data = encode(Image.new("RGB", (64, 64), (250, 10, 10)), "JPEG", quality=95)
    red, green, blue = decode_image(data)[32, 32]
    assert red > 200
    assert green < 50
    assert blue < 50


@pytest.mark.parametrize("mode, colour", [("L", 128), ("CMYK", (0, 255, 255, 0))])
def test_grayscale_and_cmyk_jpeg(mode, colour):
    rgb = decode_image(encode(Image.new(mode, (64, 48), colour), "JPEG", quality=95))
    assert rgb.shape == (48, 64, 3)
    if mode == "CMYK":
        red, green, blue = rgb[24, 32]
        assert red > 200
        assert green < 60
        assert blue < 60


def test_png_alpha_composited_on_black():
    image = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    image.paste((255, 255, 255, 255), (0, 0, 16, 32))
    rgb = decode_image(encode(image, "PNG"))
    assert rgb[16, 4].tolist() == [255, 255, 255]
    assert rgb[16, 28].tolist() == [0, 0, 0]


def test_16_bit_png_scaled_to_8_bits():
    array = np.full((32, 32), 40000, dtype=np.uint16)
    rgb = decode_image(encode(Image.fromarray(array), "PNG"))
    assert rgb.dtype == np.uint8
    assert abs(int(rgb[0, 0, 0]) - 40000 // 256) <= 1


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    buffer = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    red, green, _ = decode_image(buffer)[16, 16]
    assert red > 200
    assert green < 50


@pytest.mark.parametrize("orientation, left_is_red", [(1, True), (3, False)])
def test_exif_orientation_applied(orientation, left_is_red):
    rgb = decode_image(jpeg_with_orientation(orientation))
    left_red = rgb[16, 4, 0] > 200
    assert left_red == left_is_red


def test_exif_rotation_swaps_sides():
    rgb = decode_image(jpeg_with_orientation(6))
    assert rgb.shape[:2] == (64, 32)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "unsupported_format"),
        (b'{"detail": "Authentication credentials were not provided."}', "unsupported_format"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt"),
        (encode(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
        (png_with_declared_size(20000, 20000), "too_large"),
    ],
    ids=["zero-length", "html", "json", "corrupt-jpeg", "1x1", "decompression-bomb"],
)
def test_bad_bytes_rejected_with_reason(data, reason):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, "task-7.jpg")
    assert caught.value.reason == reason
    assert "task-7.jpg" in str(caught.value)


def test_truncated_jpeg_rejected():
    path = next(THUMBNAIL_IMAGES.rglob("*.jpg"))
    data = path.read_bytes()
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.reason == "truncated"


def test_pixel_limit_message_names_size():
    with pytest.raises(ImageDecodeError, match="400,000,000 pixels, more than the limit"):
        decode_image(png_with_declared_size(20000, 20000))
    with pytest.raises(ImageDecodeError, match="9000x9000, 81,000,000 pixels, more than the limit"):
        decode_image(png_with_declared_size(9000, 9000))
    assert MAX_PIXELS < 9000 * 9000
