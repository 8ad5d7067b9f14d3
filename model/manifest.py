"""The manifest of a model version: everything needed to serve it and to judge it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA = 1


@dataclass
class Manifest:
    """Description of one model version, stored as ``manifest.json`` beside its files.

    Attributes:
        version: the version id, ``<lineage>-v<n>-<digest>`` (see ``model.store``).
        lineage: ``default`` or ``project-<id>``.
        parent: the version training started from (warm start), or None.
        created_at: UTC time of publication, ISO 8601.
        architecture: name of the network in ``model.network.ARCHITECTURES``.
        classes: class names in output order.
        exclusive_class: the class emitted only alone (None in the default config), or None.
        input: ``InputSpec`` as a dict (height, width, channels, colour).
        crop: ``CropSettings`` as a dict.
        thresholds: class name -> decision threshold tuned on the validation split.
        counts: ``train`` and ``validation`` image counts, and per-class positives.
        metrics: validation metrics from ``model.metrics.evaluate``.
        training: how it was trained (epochs run, seed, validation split rule, source).
        files: file name -> sha256 of the files in the version directory.
    """

    version: str
    lineage: str
    parent: str | None
    created_at: str
    architecture: str
    classes: list[str]
    exclusive_class: str | None
    input: dict
    crop: dict
    thresholds: dict[str, float]
    counts: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Manifest":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def read(cls, version_dir: Path) -> "Manifest":
        with open(Path(version_dir) / MANIFEST_FILE, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
