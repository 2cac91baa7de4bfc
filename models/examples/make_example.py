"""Rebuild the bundled example used by `make run`:

  mobilenet_v2_digits.onnx          MobileNetV2 (width 0.25) trained on sklearn's digits (16x16, 1 channel)
  digits_calib.npz                  128 held-out digits, array named "input" (calibration / verification)
  mobilenet_v2_digits.scores.json   EASIER scores computed by the tool on that calibration set

    python models/examples/make_example.py
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)


def main() -> int:
    import numpy as np
    import onnx

    from collapse_passes.onnx.graph import write_text_atomic
    from collapse_passes.report import report_json
    from collapse_passes.scores import compute_scores
    from models.digits import digits_data, train_digits_model
    from models.export import export_onnx

    model, acc = train_digits_model("mobilenet_v2")
    _, _, x_test, _ = digits_data("mobilenet_v2")
    shape = (1,) + tuple(x_test.shape[1:])
    onnx_path = os.path.join(HERE, "mobilenet_v2_digits.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(model, onnx_path, shape, dynamo=False)
    calib = x_test[:128].numpy().astype(np.float32)
    np.savez_compressed(os.path.join(HERE, "digits_calib.npz"), input=calib)
    res = compute_scores("easier", onnx.load(onnx_path), calib={"input": calib})
    write_text_atomic(report_json({"scores": res.scores, "method": res.method, "test_accuracy": acc}),
                      os.path.join(HERE, "mobilenet_v2_digits.scores.json"))
    print(f"test accuracy {acc:.4f}; {len(res.scores)} scores written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
