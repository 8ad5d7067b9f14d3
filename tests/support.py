"""Test and benchmark data: the labelled real thumbnails, written as a Label Studio export.

The labelled thumbnails come as a mapping of image path to labels; Label Studio users bring
exports, so the tests turn the mapping into a JSON-MIN export (task ids by sorted path, image
URLs in Label Studio's local-files form) and exercise the same code path as users.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
THUMBNAILS = SHARED / "data" / "thumbnails"
THUMBNAIL_IMAGES = THUMBNAILS / "images"
LABELS_FILE = THUMBNAILS / "labels.json"
EXPORT_10K = SHARED / "data" / "ls-exports" / "thumbnails-10k.json-min.json"


def labelled_thumbnails() -> dict[str, list[str]]:
    """Return image path (relative to the thumbnails folder) -> labels, sorted by path."""
    with open(LABELS_FILE, encoding="utf-8") as handle:
        return dict(sorted(json.load(handle).items()))


def write_json_min_export(path: Path, limit: int | None = None, choices_name: str = "choice") -> list[dict]:
    """Write the labelled thumbnails as a JSON-MIN export; returns the rows written.

    A single choice is written as a plain string and several as ``{"choices": [...]}``, as
    Label Studio does.
    """
    rows = []
    for task_id, (relative, labels) in enumerate(labelled_thumbnails().items(), start=1):
        if limit is not None and len(rows) >= limit:
            break
        row = {
            "image": f"/data/local-files/?d=thumbnails/{Path(relative).name}",
            "id": task_id,
            "annotator": 1,
            "annotation_id": 1000 + task_id,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "lead_time": 3.0,
        }
        if len(labels) == 1:
            row[choices_name] = labels[0]
        elif labels:
            row[choices_name] = {"choices": list(labels)}
        rows.append(row)
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows
