"""Pair labelled tasks with image files and build the arrays that training reads.

Pairing is strictly by identity: each task's image URL names a file, and that file is looked
up by name in the images folder. Order never matters, so a missing image drops that one task
instead of shifting every label after it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from model.letterbox import CropSettings
from model.preprocess import InputSpec, preprocess_many
from training.exports import LabeledTask

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
# Label Studio prefixes uploaded files with 8 hex digits: /data/upload/1/dc6db937-name.jpg.
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(?P<name>.+)$")
# YouTube's thumbnail URLs name the video in the path: https://i.ytimg.com/vi/<id>/hqdefault.jpg.
_YOUTUBE_PATH = re.compile(r"/vi(?:_webp)?/(?P<video>[A-Za-z0-9_-]{11})/[^/]+$")
# Share of tasks held out for validation, chosen by a hash of the task id (see is_validation).
VALIDATION_FRACTION = 0.2
PREPROCESS_CHUNK = 256


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message gives the reason and the fix."""


def is_validation(task_id: int, fraction: float = VALIDATION_FRACTION) -> bool:
    """Return whether a task belongs to the validation split.

    The split depends only on the task id, so it is the same in every run and for every
    version, and a task never moves between splits when more tasks are labelled.
    """
    digest = hashlib.sha256(f"task-{int(task_id)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def candidate_names(image_url: str) -> list[str]:
    """Return the file names an image URL may correspond to, most specific first.

    Handles ``/data/upload/<project>/<hex>-<name>``, ``/data/local-files/?d=<path>``, plain
    paths, http(s) URLs and YouTube thumbnail URLs (named ``<video id>.jpg`` locally).
    """
    parsed = urlparse(image_url)
    path = parsed.path
    if parsed.path.rstrip("/").endswith("/data/local-files") or "d" in parse_qs(parsed.query):
        values = parse_qs(parsed.query).get("d")
        if values:
            path = values[0]
    path = unquote(path)
    base = os.path.basename(path.rstrip("/"))
    names = [base] if base else []
    upload = _UPLOAD_PREFIX.match(base)
    if upload and "/data/upload/" in parsed.path:
        names.append(upload["name"])
    youtube = _YOUTUBE_PATH.search(path)
    if youtube:
        names.append(f"{youtube['video']}{os.path.splitext(base)[1] or '.jpg'}")
    return names


class ImageIndex:
    """The image files under a folder, by file name.

    Names that occur in several subfolders are ambiguous and never matched, so a task is
    never paired with the wrong file.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"images folder {self.root} not found")
        by_name: dict[str, list[Path]] = {}
        for directory, _, files in os.walk(self.root):
            for name in files:
                if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                    by_name.setdefault(name, []).append(Path(directory) / name)
        self.paths = {name: paths[0] for name, paths in by_name.items() if len(paths) == 1}
        self.ambiguous = {name for name, paths in by_name.items() if len(paths) > 1}

    def __len__(self) -> int:
        return len(self.paths)

    def find(self, image_url: str) -> tuple[Path | None, str]:
        """Return the file for an image URL and how it matched (``found``, ``missing``, ``ambiguous``)."""
        for name in candidate_names(image_url):
            if name in self.ambiguous:
                return None, "ambiguous"
            if name in self.paths:
                return self.paths[name], "found"
        return None, "missing"


@dataclass
class Dataset:
    """Preprocessed images and their labels, ready for training or evaluation.

    Attributes:
        pixels: ``uint8`` (n, height, width, channels).
        labels: boolean (n, n_classes), columns in ``classes`` order.
        task_ids: Label Studio task id of each row.
        classes: class names.
        spec: the input size the pixels were resized to.
        crop: the letterbox settings used.
        dropped: reason -> number of tasks left out while pairing and decoding.
        examples: reason -> a few (task id, detail) pairs for each reason, for the report.
    """

    pixels: np.ndarray
    labels: np.ndarray
    task_ids: np.ndarray
    classes: list[str]
    spec: InputSpec
    crop: CropSettings
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def split(self) -> tuple["Dataset", "Dataset"]:
        """Split into (training, validation) by task id; see ``is_validation``."""
        mask = np.array([is_validation(task_id) for task_id in self.task_ids], dtype=bool)
        return self.subset(~mask), self.subset(mask)

    def subset(self, mask: np.ndarray) -> "Dataset":
        return Dataset(
            self.pixels[mask], self.labels[mask], self.task_ids[mask], self.classes, self.spec, self.crop
        )


def encode_labels(tasks: list[LabeledTask], classes: list[str]) -> np.ndarray:
    """Turn each task's label list into a boolean row over ``classes``."""
    column = {name: index for index, name in enumerate(classes)}
    labels = np.zeros((len(tasks), len(classes)), dtype=bool)
    for row, task in enumerate(tasks):
        for name in task.labels:
            if name in column:
                labels[row, column[name]] = True
    return labels


class _DropLog:
    """Counts of dropped tasks by reason, with a few examples of each for the report."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, list] = {}

    def drop(self, reason: str, task_id: int, detail: str) -> None:
        self.counts[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < 5:
            bucket.append((task_id, detail))


def _assemble(
    chunks: Iterable[list[tuple[LabeledTask, str, bytes]]],
    drops: _DropLog,
    classes: list[str],
    spec: InputSpec,
    crop: CropSettings,
    threads: int,
) -> Dataset:
    """Preprocess chunks of (task, name, image bytes) and stack them into a Dataset."""
    pixel_chunks, kept = [], []
    for chunk in chunks:
        result = preprocess_many([(name, data) for _, name, data in chunk], spec, crop, threads=threads)
        for index, error in result.errors.items():
            drops.drop(f"image_{error.reason}", chunk[index][0].task_id, str(error))
        pixel_chunks.append(result.pixels)
        kept.extend(chunk[index][0] for index in result.ok_indices)

    dataset = Dataset(
        pixels=np.concatenate(pixel_chunks) if pixel_chunks else np.zeros((0, *spec.shape), np.uint8),
        labels=encode_labels(kept, classes),
        task_ids=np.array([task.task_id for task in kept], dtype=np.int64),
        classes=list(classes),
        spec=spec,
        crop=crop,
        dropped=drops.counts,
        examples=drops.examples,
    )
    logger.info("built dataset: %d images, dropped %s", len(dataset), dict(drops.counts) or "none")
    return dataset


def build_dataset(
    tasks: list[LabeledTask],
    images: ImageIndex,
    classes: list[str],
    spec: InputSpec,
    crop: CropSettings,
    threads: int = 2,
) -> Dataset:
    """Pair tasks with image files, decode and preprocess them, and encode the labels.

    Tasks whose image is missing, ambiguous or undecodable are dropped and counted by reason.
    """
    drops = _DropLog()
    paired: list[tuple[LabeledTask, Path]] = []
    for task in tasks:
        path, status = images.find(task.image_url)
        if path is None:
            drops.drop(f"image_{status}", task.task_id, task.image_url)
        else:
            paired.append((task, path))

    # Files are read chunk by chunk, so a 10,000-image set never keeps all encoded bytes in memory.
    def chunks():
        for start in range(0, len(paired), PREPROCESS_CHUNK):
            yield [(task, str(path), path.read_bytes()) for task, path in paired[start : start + PREPROCESS_CHUNK]]

    return _assemble(chunks(), drops, classes, spec, crop, threads)


def build_dataset_from_downloads(
    tasks: list[LabeledTask],
    downloads: list,
    classes: list[str],
    spec: InputSpec,
    crop: CropSettings,
    threads: int = 2,
) -> Dataset:
    """Build a Dataset from fetched images: ``downloads[i]`` is the bytes of ``tasks[i]`` or its error.

    An error object is counted under ``image_<reason>`` when it has a ``reason`` attribute.
    """
    drops = _DropLog()
    entries = []
    for task, download in zip(tasks, downloads):
        if isinstance(download, (bytes, bytearray)):
            entries.append((task, f"task {task.task_id}", bytes(download)))
        else:
            drops.drop(f"image_{getattr(download, 'reason', 'error')}", task.task_id, str(download))
    chunks = (entries[start : start + PREPROCESS_CHUNK] for start in range(0, len(entries), PREPROCESS_CHUNK))
    return _assemble(chunks, drops, classes, spec, crop, threads)
