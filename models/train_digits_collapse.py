"""Build the `make run` example: a digits MobileNetV2 trained with the Layer Folding term by the loop.

    python models/train_digits_collapse.py          (about a minute on one CPU thread; deterministic)

1. the dense digits MobileNetV2 (models.digits.train_digits_model, width 0.25, 16x16 inputs);
2. collapse_passes.train.iterative_collapse(method="prelu", max_rounds=0): its ReLU6s become
   PReLUs and the net trains with lambda * sum |1 - alpha^2| (Layer Folding), so slopes that the
   task does not need drift to 1; validation = 200 images held out of the training split;
3. writes models/examples/mobilenet_v2_digits_prelu.onnx (the slopes are in the graph) and
   models/examples/digits_eval.npz (the 400 test images, `input` + `labels`, never seen in training).

`make run` then lets the tool do the second half of Layer Folding: --method prelu --threshold 0.1
folds every PReLU with mean slope >= 0.9 into the identity, merges the linear chains that leaves,
and --eval reports top-1 accuracy and onnxruntime latency of both models.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
OUT = os.path.join(HERE, "examples")

STEPS = 600          # regularised training steps (batch 64)
LAMBDA = 0.05        # weight of sum |1 - alpha^2|
LR = 2e-3


def main() -> int:
    import numpy as np
    import torch

    from collapse_passes.train import iterative_collapse
    from models.digits import digits_data, train_digits_model
    from models.export import export_onnx

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense, test_acc = train_digits_model("mobilenet_v2")
    x_tr, y_tr, x_te, y_te = digits_data("mobilenet_v2")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x_tr), generator=g)
    val, tr = perm[:200], perm[200:]
    res = iterative_collapse(dense, "prelu", (x_tr[tr], y_tr[tr]), (x_tr[val], y_tr[val]), max_rounds=0,
                             pretrain_steps=STEPS, prelu_lambda=LAMBDA, lr=LR, predict=False, log=print)
    model = res.model.eval()
    slopes = {n: float(m.weight.detach().mean()) for n, m in model.named_modules() if isinstance(m, torch.nn.PReLU)}
    with torch.no_grad():
        acc = float((model(x_te).argmax(1) == y_te).float().mean())
    path = os.path.join(OUT, "mobilenet_v2_digits_prelu.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(model, path, (1,) + tuple(x_te.shape[1:]), dynamo=False)
    _save_npz(os.path.join(OUT, "digits_eval.npz"), input=x_te.numpy().astype(np.float32),
              labels=y_te.numpy().astype(np.int64))
    fold = sum(v >= 0.9 for v in slopes.values())
    print(f"dense test accuracy {test_acc:.4f}; after the Layer Folding term {acc:.4f}; "
          f"{fold} of {len(slopes)} PReLU slopes >= 0.9 (foldable)")
    print("slopes:", ", ".join(f"{k}={v:.2f}" for k, v in slopes.items()))
    return 0


def _save_npz(path: str, **arrays) -> None:
    """np.savez_compressed to a temp file beside `path`, renamed when complete (export_onnx does the same):
    ^C while writing left a truncated digits_eval.npz, the file `make run` evaluates with."""
    import numpy as np

    from collapse_passes.outputs import atomic_file

    with atomic_file(path) as fh:   # a file object: savez would append .npz to a temp name
        np.savez_compressed(fh, **arrays)


if __name__ == "__main__":
    raise SystemExit(main())
