"""Measure validation macro-AP and epoch time for candidate input sizes, colours and networks.

Every candidate trains from scratch on the same labelled real thumbnails, with the same
validation split, epochs and seeds, in one run, so the figures compare side by side. The
result table is printed as Markdown and saved as JSON under bench/results/.

    .venv/bin/python bench/input_size.py [--epochs 25] [--seeds 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from model.label_config import default_label_config_xml, parse_label_config  # noqa: E402
from model.letterbox import CropSettings  # noqa: E402
from model.preprocess import InputSpec  # noqa: E402
from tests.support import THUMBNAIL_IMAGES, write_json_min_export  # noqa: E402
from training.dataset import ImageIndex, build_dataset  # noqa: E402
from training.exports import read_export  # noqa: E402

CANDIDATES = [
    # (label, architecture, height, width, channels)
    ("original: shallownet 272x480 gray", "shallownet", 272, 480, 1),
    ("shallownet3 72x128 RGB", "shallownet3", 72, 128, 3),
    ("shallownet3 126x224 gray", "shallownet3", 126, 224, 1),
    ("shallownet3 126x224 RGB", "shallownet3", 126, 224, 3),
    ("shallownet3-separable 126x224 RGB", "shallownet3-separable", 126, 224, 3),
    ("shallownet3 180x320 RGB", "shallownet3", 180, 320, 3),
]


def run(epochs: int, seeds: list[int], candidates: list[tuple] = CANDIDATES) -> list[dict]:
    """Train every (label, architecture, height, width, channels) candidate once per seed."""
    from model import network
    from training.trainer import TrainingOptions, fit

    import keras

    config = parse_label_config(default_label_config_xml())
    with tempfile.TemporaryDirectory() as scratch:
        export = Path(scratch) / "export.json"
        write_json_min_export(export)
        tasks, _ = read_export(export, config, "None")
    index = ImageIndex(THUMBNAIL_IMAGES)

    splits = {}
    for label, architecture, height, width, channels in candidates:
        spec = InputSpec(height, width, channels)
        splits[label] = build_dataset(tasks, index, list(config.choices), spec, CropSettings()).split()

    # Seeds form the outer loop, so a change in the load from other processes during the run
    # falls on every candidate alike instead of on whichever trains at that moment.
    rows = []
    for seed in seeds:
        for label, architecture, height, width, channels in candidates:
            train, validation = splits[label]
            keras.utils.set_random_seed(seed)
            options = TrainingOptions(architecture=architecture, epochs=epochs, patience=epochs, seed=seed)
            model = network.build_model(architecture, (height, width, channels), len(config.choices))
            started = time.monotonic()
            history = fit(model, train, validation, options, options.learning_rate)
            elapsed = time.monotonic() - started
            best = max(history, key=lambda entry: entry["val_macro_ap"])
            rows.append({
                "candidate": label, "seed": seed, "parameters": int(model.count_params()),
                "best_val_macro_ap": best["val_macro_ap"], "best_epoch": best["epoch"],
                "median_epoch_s": float(np.median([entry["seconds"] for entry in history])),
                "total_s": round(elapsed, 1),
            })
            print(json.dumps(rows[-1]), flush=True)
            keras.backend.clear_session()
    return rows


def table(rows: list[dict], candidates: list[tuple] = CANDIDATES) -> str:
    lines = ["| candidate | parameters | val macro-AP (mean over seeds) | per seed | median epoch (s) |",
             "|---|---:|---:|---|---:|"]
    for label, *_ in candidates:
        mine = [row for row in rows if row["candidate"] == label]
        aps = [row["best_val_macro_ap"] for row in mine]
        lines.append(
            f"| {label} | {mine[0]['parameters']:,} | {np.mean(aps):.3f} | {', '.join(f'{ap:.3f}' for ap in aps)} | "
            f"{np.median([row['median_epoch_s'] for row in mine]):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = run(args.epochs, args.seeds)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "input_size.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
