"""Turn image bytes into the network's input tensor: decode, remove bars, resize, scale.

Training and serving both call ``preprocess_bytes`` with the settings stored in the model
version, so the pixels the network sees at serving time are the ones it was trained on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from model.decode import ImageDecodeError, decode_image
from model.letterbox import CropSettings, crop_letterbox


@dataclass(frozen=True)
class InputSpec:
    """The network's input: ``height`` x ``width`` pixels, 3 channels (RGB) or 1 (grayscale).

    ``jpeg_dct_scaling`` decodes large JPEGs at a reduced scale that still covers the input
    size (see ``decode_image``). Versions trained before the field existed decoded at full
    size, so a manifest without it reads as False.
    """

    height: int = 126
    width: int = 224
    channels: int = 3
    jpeg_dct_scaling: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def colour(self) -> str:
        return "rgb" if self.channels == 3 else "grayscale"

    def to_dict(self) -> dict:
        return {**asdict(self), "colour": self.colour}

    @classmethod
    def from_dict(cls, values: dict) -> "InputSpec":
        return cls(
            height=int(values["height"]), width=int(values["width"]), channels=int(values["channels"]),
            jpeg_dct_scaling=bool(values.get("jpeg_dct_scaling", False)),
        )


def resize_for_network(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an RGB ``uint8`` image to the network's input size; returns ``uint8`` (H, W, C)."""
    height, width = rgb.shape[:2]
    # INTER_AREA averages when shrinking (no aliasing on text edges); upscaling the rare
    # 120x90 thumbnail uses bilinear interpolation.
    shrinking = width >= spec.width and height >= spec.height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if spec.jpeg_dct_scaling and shrinking and width < 2 * spec.width and height < 2 * spec.height:
        # Below a 2x reduction, bilinear interpolation already reads every source pixel, and
        # it is four times faster than INTER_AREA at a ratio that is not a whole number.
        interpolation = cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (spec.width, spec.height), interpolation=interpolation)
    if spec.channels == 1:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)[:, :, np.newaxis]
    return resized


def preprocess_bytes(
    data: bytes, spec: InputSpec, crop: CropSettings, name: str = "image"
) -> np.ndarray:
    """Decode, crop and resize one image into a ``uint8`` array of ``spec.shape``.

    The network scales pixels to 0..1 itself, so inputs stay ``uint8`` (four times less
    memory for a training set held in RAM).

    Raises:
        ImageDecodeError: the bytes are not a usable image.
    """
    min_size = (spec.height, spec.width) if spec.jpeg_dct_scaling else None
    rgb = decode_image(data, name, min_size=min_size)
    return resize_for_network(crop_letterbox(rgb, crop), spec)


@dataclass
class PreprocessResult:
    """A batch of preprocessed images: ``pixels`` for the ones that worked, errors for the rest.

    Attributes:
        pixels: ``uint8`` array (n_ok, height, width, channels).
        ok_indices: for each row of ``pixels``, its index in the input sequence.
        errors: input index -> the decode error of that image.
    """

    pixels: np.ndarray
    ok_indices: list[int]
    errors: dict[int, ImageDecodeError]


def preprocess_many(
    items: Sequence[tuple[str, bytes]] | Iterable[tuple[str, bytes]],
    spec: InputSpec,
    crop: CropSettings,
    threads: int = 2,
) -> PreprocessResult:
    """Preprocess (name, bytes) pairs in a thread pool; OpenCV releases the GIL while decoding.

    One bad image never fails the batch: its error is returned in ``errors``.
    """
    items = list(items)

    def work(item: tuple[str, bytes]) -> np.ndarray | ImageDecodeError:
        name, data = item
        try:
            return preprocess_bytes(data, spec, crop, name)
        except ImageDecodeError as error:
            return error

    if threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            outputs = list(pool.map(work, items))
    else:
        outputs = [work(item) for item in items]

    pixels = np.empty((sum(1 for o in outputs if isinstance(o, np.ndarray)), *spec.shape), np.uint8)
    ok_indices: list[int] = []
    errors: dict[int, ImageDecodeError] = {}
    for index, output in enumerate(outputs):
        if isinstance(output, ImageDecodeError):
            errors[index] = output
        else:
            pixels[len(ok_indices)] = output
            ok_indices.append(index)
    return PreprocessResult(pixels=pixels, ok_indices=ok_indices, errors=errors)
