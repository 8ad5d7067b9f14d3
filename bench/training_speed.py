"""Training epoch time and validation macro-AP: the default network against the original one.

The original network of the course notebook takes 272x480 grayscale input through one 3x3
convolution block into Flatten + Dense (``shallownet`` in model/network.py). The default is
``model.network.DEFAULT_ARCHITECTURE`` at the default ``InputSpec``. Both train from scratch
on the same labelled real thumbnails, the same validation split, epochs and seeds, in this
one run, through the trainer's own ``fit``. An epoch's time includes the validation pass.

    .venv/bin/python bench/training_speed.py [--epochs 20] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import save_result  # noqa: E402
from bench.input_size import run, table  # noqa: E402
from model.preprocess import InputSpec  # noqa: E402

ORIGINAL = ("original: shallownet 272x480 gray", "shallownet", 272, 480, 1)


def default_candidate() -> tuple:
    from model.network import DEFAULT_ARCHITECTURE

    spec = InputSpec()
    return (f"default: {DEFAULT_ARCHITECTURE} {spec.height}x{spec.width} {spec.colour}",
            DEFAULT_ARCHITECTURE, spec.height, spec.width, spec.channels)


def compare(rows: list[dict], original: str, ours: str) -> dict:
    """Return the epoch-time ratio and the macro-AP of both candidates over all seeds."""
    def pick(label: str, key: str) -> list[float]:
        return [row[key] for row in rows if row["candidate"] == label]

    original_epoch = float(np.median(pick(original, "median_epoch_s")))
    ours_epoch = float(np.median(pick(ours, "median_epoch_s")))
    return {
        "original_median_epoch_s": round(original_epoch, 2),
        "default_median_epoch_s": round(ours_epoch, 2),
        "epoch_speedup": round(original_epoch / ours_epoch, 1),
        "original_macro_ap": round(float(np.mean(pick(original, "best_val_macro_ap"))), 3),
        "default_macro_ap": round(float(np.mean(pick(ours, "best_val_macro_ap"))), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per training, without early stopping")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    candidates = [ORIGINAL, default_candidate()]
    rows = run(args.epochs, args.seeds, candidates)
    summary = {"epochs": args.epochs, "seeds": args.seeds, "original": ORIGINAL[0], "default": candidates[1][0],
               **compare(rows, ORIGINAL[0], candidates[1][0]), "rows": rows}
    save_result("training_speed", summary)
    print(table(rows, candidates))
    print(json.dumps({key: value for key, value in summary.items() if key != "rows"}, indent=2))


if __name__ == "__main__":
    main()
