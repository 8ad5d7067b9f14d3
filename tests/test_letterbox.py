"""Letterbox detection on real YouTube thumbnails of every size, and on synthetic edge cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from model.decode import decode_image
from model.letterbox import CropSettings, crop_letterbox, detect_letterbox
from tests.support import THUMBNAIL_IMAGES

# Checked by eye: (file, size, expected (top, bottom, left, right) bar widths in pixels).
REAL_CASES = [
    # maxresdefault 1280x720 and mqdefault 320x180: no bars.
    ("Cengineer00__thumbnail-scorer/2shHryscTng.jpg", (1280, 720), (0, 0, 0, 0)),
    ("Cengineer00__thumbnail-scorer/8QhAa6NbBTM.jpg", (1280, 720), (0, 0, 0, 0)),
    ("chaejin98330__AIP2023Spring_Team6/medium_1fKbJ6kRUtM.jpg", (320, 180), (0, 0, 0, 0)),
    # hqdefault 480x360: a 16:9 picture with 45 px bars top and bottom.
    ("basile-bron__Thumbnail-clickbait-detection/0.0_-qggDCWJYjk.jpg", (480, 360), (45, 45, 0, 0)),
    ("basile-bron__Thumbnail-clickbait-detection/0.0_0CHGntdzrmg.jpg", (480, 360), (45, 45, 0, 0)),
    ("basile-bron__Thumbnail-clickbait-detection/0.0_0wy4u34fii4.jpg", (480, 360), (45, 45, 0, 0)),
    # hqdefault of a 4:3 video: full frame, nothing to crop (mostly white and black).
    ("basile-bron__Thumbnail-clickbait-detection/0.0_2lR7s1Y6Zig.jpg", (480, 360), (0, 0, 0, 0)),
    # A dark night scene inside 45 px bars: the bars go, the dark picture stays.
    ("basile-bron__Thumbnail-clickbait-detection/0.0_EgBJmlPo8Xw.jpg", (480, 360), (45, 45, 0, 0)),
    # sddefault 640x480: 60 px bars.
    ("mosunset__youtube_watch_thumbnails/sddefault.jpg", (640, 480), (60, 60, 0, 0)),
    ("saiprakashgorti__yt-thumbnail-brain/youtube_thumbnail_1019.jpg", (640, 480), (60, 60, 0, 0)),
]
# Ringing of the JPEG encoder blurs the edge of a bar by a few lines.
TOLERANCE_PX = 3


def _load(relative: str) -> np.ndarray:
    return decode_image((THUMBNAIL_IMAGES / relative).read_bytes(), relative)


@pytest.mark.parametrize("relative, size, bars", REAL_CASES, ids=[case[0].split("/")[-1] for case in REAL_CASES])
def test_real_thumbnail_bars(relative, size, bars):
    rgb = _load(relative)
    assert (rgb.shape[1], rgb.shape[0]) == size
    box = detect_letterbox(rgb)
    found = (box.top, rgb.shape[0] - box.bottom, box.left, rgb.shape[1] - box.right)
    for side, expected, actual in zip(("top", "bottom", "left", "right"), bars, found):
        assert abs(actual - expected) <= TOLERANCE_PX, f"{side} bar: expected {expected} px, found {actual} px"


def test_hqdefault_bars_across_all_real_images():
    """Every 480x360 thumbnail is either letterboxed by about 45 px or left (nearly) whole."""
    outcomes = Counter()
    for path in sorted(THUMBNAIL_IMAGES.rglob("*.jpg")):
        rgb = decode_image(path.read_bytes(), str(path))
        if rgb.shape[:2] != (360, 480):
            continue
        box = detect_letterbox(rgb)
        top, bottom = box.top, 360 - box.bottom
        if 42 <= top <= 48 and 42 <= bottom <= 48:
            outcomes["letterbox"] += 1
        elif top == bottom == 0:
            outcomes["full frame"] += 1
        else:
            outcomes["other"] += 1
    total = sum(outcomes.values())
    assert total > 500
    assert outcomes["letterbox"] / total > 0.85
    # "other" are pictures with black borders of their own; they must stay a small minority.
    assert outcomes["other"] / total < 0.1


def test_maxres_thumbnails_mostly_uncropped():
    boxes = []
    for path in sorted(THUMBNAIL_IMAGES.rglob("*.jpg")):
        rgb = decode_image(path.read_bytes(), str(path))
        if rgb.shape[:2] == (720, 1280):
            box = detect_letterbox(rgb)
            boxes.append((box.height, box.width) == (720, 1280))
    assert len(boxes) > 200
    assert sum(boxes) / len(boxes) > 0.85


def test_all_black_image_kept_whole():
    black = np.zeros((360, 480, 3), np.uint8)
    box = detect_letterbox(black)
    assert (box.top, box.bottom, box.left, box.right) == (0, 360, 0, 480)


def test_dark_picture_keeps_minimum_content():
    """A mostly black picture with a small bright spot is never cropped below min_content."""
    image = np.zeros((360, 480, 3), np.uint8)
    image[170:190, 230:250] = 255
    settings = CropSettings()
    box = detect_letterbox(image, settings)
    assert box.height >= 360 * settings.min_content
    assert box.width >= 480 * settings.min_content


def test_black_borders_on_four_sides():
    image = np.zeros((360, 480, 3), np.uint8)
    rng = np.random.default_rng(3)
    image[40:320, 60:420] = rng.integers(40, 255, size=(280, 360, 3), dtype=np.uint8)
    box = detect_letterbox(image)
    assert (box.top, box.bottom, box.left, box.right) == (40, 320, 60, 420)


def test_crop_returns_content_view():
    image = np.zeros((360, 480, 3), np.uint8)
    image[45:315] = 128
    cropped = crop_letterbox(image)
    assert cropped.shape == (270, 480, 3)
    assert cropped.min() == 128
