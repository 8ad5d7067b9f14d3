"""Find and remove the black bars that YouTube and uploaders put around thumbnails.

YouTube serves every video at several sizes and pads the 4:3 ones (hqdefault 480x360 with
about 45 px top and bottom, sddefault 640x480 with about 60 px, default 120x90 with about
11 px). Some pictures also carry black borders of their own, on any side.

Bars are found per image, on luminance. A bar line is nearly all black: its mean is at most
``max_bar_mean``, and at most ``max_bright_fraction`` of its pixels are above ``black_level``.
A dark night scene has a mean of 8 to 15 on real thumbnails, so it is not a bar. JPEG ringing makes the few lines next
to the picture brighter than the bar, so a bar is then extended by up to ``edge_lines``
lines that pass the bright-fraction test alone. Finally, a picture is never cropped to
nothing: when removing the bars would leave less than ``min_content`` of a side, that side
is kept whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np


@dataclass(frozen=True)
class CropSettings:
    """Bar detection settings, stored in each model version so that serving crops as training did.

    Attributes:
        black_level: a pixel with luminance (0-255) above this is content.
        max_bright_fraction: a bar line has at most this fraction of content pixels.
        max_bar_mean: a bar line has at most this mean luminance.
        edge_lines: how many ringing lines next to a bar may join it.
        min_content: the smallest fraction of the height (or width) that a crop may keep.
    """

    black_level: int = 20
    max_bright_fraction: float = 0.02
    max_bar_mean: float = 4.0
    edge_lines: int = 3
    min_content: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CropSettings":
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@dataclass(frozen=True)
class CropBox:
    """The content area of an image, in pixels: rows ``top:bottom`` and columns ``left:right``."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def _leading_true(flags: np.ndarray) -> int:
    """Count the True values at the start of a boolean vector."""
    false_at = np.flatnonzero(~flags)
    return int(false_at[0]) if false_at.size else int(flags.size)


def _bar_width(strict: np.ndarray, loose: np.ndarray, edge_lines: int) -> int:
    """Return how many lines from the start of the axis belong to a bar."""
    width = _leading_true(strict)
    if width == 0:
        return 0
    ringing = _leading_true(loose[width : width + edge_lines])
    return width + ringing


def _content_extent(luminance: np.ndarray, axis: int, settings: CropSettings) -> tuple[int, int]:
    """Return (start, end) of the content along one axis of a luminance image.

    ``axis`` is the axis averaged over: 1 for rows (finds top and bottom), 0 for columns.
    """
    loose = (luminance > settings.black_level).mean(axis=axis) <= settings.max_bright_fraction
    strict = loose & (luminance.mean(axis=axis) <= settings.max_bar_mean)
    size = strict.size
    start = _bar_width(strict, loose, settings.edge_lines)
    end = size - _bar_width(strict[::-1], loose[::-1], settings.edge_lines)
    if end - start < int(np.ceil(size * settings.min_content)):
        return 0, size
    return start, end


def detect_letterbox(rgb: np.ndarray, settings: CropSettings = CropSettings()) -> CropBox:
    """Find the content area of an RGB ``uint8`` image (height, width, 3)."""
    luminance = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    top, bottom = _content_extent(luminance, 1, settings)
    # Columns are judged only inside the kept rows, so that the top and bottom bars do not
    # count as dark content of every column.
    left, right = _content_extent(luminance[top:bottom], 0, settings)
    return CropBox(top=top, bottom=bottom, left=left, right=right)


def crop_letterbox(rgb: np.ndarray, settings: CropSettings = CropSettings()) -> np.ndarray:
    """Return the content area of ``rgb`` without the black bars (a view, not a copy)."""
    box = detect_letterbox(rgb, settings)
    return rgb[box.top : box.bottom, box.left : box.right]
