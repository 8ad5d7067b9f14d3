"""Per-image timings of one prediction's steps: preprocessing and the network.

Times each step on the real 480x360 thumbnails, in one thread, in this one run. The steps
are the JPEG decode at full and at DCT-reduced scale, letterbox detection, the resize, and
the whole preprocessing with and without DCT scaling. Then a LiteRT forward pass (batches
of 1 and 32) of each network of the ShallowNet family at the default input size, exported
from freshly initialised weights, because the cost does not depend on the weights.

    .venv/bin/python bench/components.py [--images 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import save_result  # noqa: E402
from bench.preannotate_throughput import hqdefault_images  # noqa: E402
from model.decode import decode_image  # noqa: E402
from model.letterbox import CropSettings, crop_letterbox  # noqa: E402
from model.preprocess import InputSpec, preprocess_bytes, resize_for_network  # noqa: E402
from tests.support import THUMBNAILS  # noqa: E402

REPEATS = 3


def per_item_ms(function, items) -> float:
    """Return the best of REPEATS passes over ``items``, in milliseconds per item."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for item in items:
            function(item)
        best = min(best, (time.perf_counter() - started) / len(items) * 1000)
    return round(best, 3)


def preprocessing(datas: list[bytes]) -> dict:
    spec, crop = InputSpec(), CropSettings()
    full = InputSpec(jpeg_dct_scaling=False)
    reduced = (spec.height, spec.width)
    decoded = [decode_image(data) for data in datas]
    decoded_reduced = [decode_image(data, min_size=reduced) for data in datas]
    cropped = [crop_letterbox(rgb, crop) for rgb in decoded]
    cropped_reduced = [crop_letterbox(rgb, crop) for rgb in decoded_reduced]
    return {
        "cv2.imdecode, full scale": per_item_ms(
            lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), datas),
        "decode_image, full scale": per_item_ms(decode_image, datas),
        "decode_image, DCT-reduced scale": per_item_ms(lambda data: decode_image(data, min_size=reduced), datas),
        "letterbox detection and crop, full scale": per_item_ms(lambda rgb: crop_letterbox(rgb, crop), decoded),
        "letterbox detection and crop, reduced scale": per_item_ms(
            lambda rgb: crop_letterbox(rgb, crop), decoded_reduced),
        "resize, from full scale (INTER_AREA)": per_item_ms(lambda rgb: resize_for_network(rgb, full), cropped),
        "resize, from reduced scale (bilinear)": per_item_ms(
            lambda rgb: resize_for_network(rgb, spec), cropped_reduced),
        "preprocess_bytes, full-scale decode": per_item_ms(lambda data: preprocess_bytes(data, full, crop), datas),
        "preprocess_bytes, DCT-reduced decode (default)": per_item_ms(
            lambda data: preprocess_bytes(data, spec, crop), datas),
    }


def networks(pixels: np.ndarray) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from model import network
    from model.export import export_litert

    timings = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in network.ARCHITECTURES:
            model = network.build_model(name, InputSpec().shape, 10)
            path = Path(scratch) / f"{name}.tflite"
            export_litert(model, path)
            interpreter = Interpreter(model_path=str(path), num_threads=1)
            input_index = interpreter.get_input_details()[0]["index"]
            row = {"parameters": int(model.count_params())}
            for batch_size in (1, 32):
                batch = np.ascontiguousarray(pixels[:batch_size], dtype=np.float32)
                interpreter.resize_tensor_input(input_index, list(batch.shape))
                interpreter.allocate_tensors()

                def forward(_):
                    interpreter.set_tensor(input_index, batch)
                    interpreter.invoke()

                forward(None)
                row[f"batch {batch_size}, ms per image"] = round(per_item_ms(forward, range(20)) / batch_size, 3)
            timings[name] = row
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="how many 480x360 thumbnails to time")
    args = parser.parse_args()
    datas = [(THUMBNAILS / relative).read_bytes() for relative in hqdefault_images()[: args.images]]
    spec, crop = InputSpec(), CropSettings()
    pixels = np.stack([preprocess_bytes(data, spec, crop) for data in datas[:32]])
    result = {"images": len(datas), "preprocessing_ms": preprocessing(datas), "litert_forward": networks(pixels)}
    save_result("components", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
