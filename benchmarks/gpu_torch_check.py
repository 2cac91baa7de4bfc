"""What collapse buys in PyTorch itself on a GPU: dense vs fx-collapsed model, eager CUDA (cuDNN).

The torch front end (collapse_passes.collapse on an nn.Module) collapses every block activation of
MobileNetV2 (CIFAR 32x32, and the torchvision layout at 224x224), as merge_latency.py does for ONNX;
the GraphModule it returns is moved to the GPU and timed against the dense module, interleaved
(dense, collapsed, dense, ...), with CUDA events, cudnn.benchmark on, after warm-up. The collapsed
module is checked on the GPU against the requested semantics (the dense model with the chosen
activations replaced by their linear regime).

Needs no TVM: it runs on any machine with torch and CUDA. Without a GPU it prints one line and exits 2.

    python benchmarks/gpu_torch_check.py [--out DIR] [--batches 1 32] [--rounds 30]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.api import list_torch_keys  # noqa: E402
from models import build  # noqa: E402

CASES = {  # name -> (registry model, builder kwargs, input side, key prefix left dense)
    "mobilenet_v2_cifar": ("mobilenet_v2", dict(width_mult=1.0), 32, None),
    "mobilenet_v2_tv_224": ("mobilenet_v2_tv", {}, 224, "features.18."),
}


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _time_pair(a, b, x, rounds: int, per_round: int = 10) -> tuple[float, float]:
    """Median ms per call of a and b, interleaved round by round (CUDA events)."""
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(5):
            a(x), b(x)
        torch.cuda.synchronize()
        for _ in range(rounds):
            for fn, out in ((a, ta), (b, tb)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(per_round):
                    fn(x)
                end.record()
                torch.cuda.synchronize()
                out.append(start.elapsed_time(end) / per_round)
    return float(np.median(ta)), float(np.median(tb))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_torch_check: torch sees no CUDA device: nothing measured, nothing written", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    rows = []
    for name in args.cases:
        arch, kw, side, head = CASES[name]
        torch.manual_seed(0)
        dense = _randomize_bn(build(arch, **kw).eval())
        example = (torch.randn(1, 3, side, side),)
        keys = [k["key"] for k in list_torch_keys(dense, example)
                if k["key"].startswith("features.") and not k["key"].startswith("features.0.")
                and not (head and k["key"].startswith(head))]
        res = cp.collapse(dense, collapse=keys, example_inputs=example, check=1)
        collapsed, requested = res.model.to(dev).eval(), res.requested.to(dev).eval()
        dense = dense.to(dev)
        for b in args.batches:
            x = torch.randn(b, 3, side, side, device=dev)
            with torch.inference_mode():
                err = float((collapsed(x) - requested(x)).abs().max())
            t_dense, t_coll = _time_pair(dense, collapsed, x, args.rounds)
            row = {"case": name, "batch": b, "collapsed_keys": len(keys),
                   "depth_before": res.report["before"].get("depth_ops"),
                   "depth_after": res.report["after"].get("depth_ops"),
                   "torch_cuda_dense_ms": round(t_dense, 4), "torch_cuda_collapsed_ms": round(t_coll, 4),
                   "speedup": round(t_dense / t_coll, 3), "max_abs_gpu_vs_requested": err}
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_torch_check.json"), "w") as fh:
        json.dump({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "cudnn": torch.backends.cudnn.version(), "rows": rows,
                   "note": "eager PyTorch, cudnn.benchmark, medians of --rounds interleaved rounds of 10 "
                           "calls timed with CUDA events"}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
