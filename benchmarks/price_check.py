"""Predicted vs measured onnxruntime speed-up of collapsed judged layouts: how honest the MAC cost model is.

torchvision-layout ResNet-50, MobileNetV2, MobileNetV3-Large, EfficientNet-B0 and Swin-T (models/, torchvision's
init + calibrate_bn), TorchScript export, static batch 1 at --size, collapsed in-process at a few levels:
- easier8:  method="easier", remove=8 (8 random-normal calibration samples)
- easier20: method="easier", remove=20
- all:      every activation collapsed (method="easier", threshold=1e30)
For each result: the speed-up predicted by the default cost model (speedup.graph_cost, what --target-speedup and
the training loop's predictor price with), by the old flat model (MACs + one MAC per element of an unfused
activation + per-op overhead: stats_cost of the report's stats), and the measured one (onnxruntime CPU, full
optimizations, spinning off, --threads intra-op threads, interleaved rounds, median), under /tmp/bench.lock.

    .venv/bin/python benchmarks/price_check.py [--models ...] [--levels easier8,all] [--work DIR] [--json F]
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import logging
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODELS = {"resnet50_tv": "uniform", "mobilenet_v2_tv": "normal", "mobilenet_v3_large": "normal",
          "efficientnet_b0": "uniform", "swin_t_tv": "uniform"}
LEVELS = {"easier8": {"method": "easier", "remove": 8}, "easier20": {"method": "easier", "remove": 20},
          "all": {"method": "easier", "threshold": 1e30}}


def export(name: str, size: int, work: str) -> str:
    from models import build
    from models.export import export_onnx
    from models.tv_init import calibrate_bn, torchvision_init

    p = os.path.join(work, f"{name}_{size}.onnx")
    if not os.path.exists(p):
        m = build(name)
        torchvision_init(m, MODELS[name])
        calibrate_bn(m, (2, 3, size, size))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            export_onnx(m, p + ".tmp", (1, 3, size, size))
        os.replace(p + ".tmp", p)
    return p


def flat_cost(stats: dict) -> float:
    """The cost model before the per-kind prices: MACs + one MAC per element of an unfused activation +
    20k MACs per op (stats_cost as it was)."""
    ops = stats["nodes"] - stats["free_activation_nodes"] - stats.get("constant_nodes", 0)
    return stats["macs"] + stats["activation_elements"] + 20_000.0 * ops


def measure(models: dict, feed: dict, threads: int, rounds: int) -> dict:
    from collapse_passes.core.runtime import session, time_interleaved

    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sessions = {k: session(m, optimize=True, threads=threads) for k, m in models.items()}
        t = time_interleaved(sessions, feed, rounds)
    return {k: float(np.median(v)) for k, v in t.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--levels", default=",".join(LEVELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--work", default="/tmp/price_check")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reuse", action="store_true", help="price results already in --work instead of collapsing again")
    args = ap.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    import onnx

    from collapse_passes import collapse
    from collapse_passes.errors import CollapseError
    from collapse_passes.onnx.analysis import model_stats
    from collapse_passes.speedup import graph_cost

    os.makedirs(args.work, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((8, 3, args.size, args.size)).astype(np.float32)}
    feed = {"input": calib["input"][:1]}
    for name in args.models.split(","):
        src = export(name, args.size, args.work)
        original = onnx.load(src)
        base_flat, base_priced = flat_cost(model_stats(original).as_dict()), graph_cost(original)
        for level in args.levels.split(","):
            out = os.path.join(args.work, f"{name}_{args.size}_{level}.onnx")
            if not (args.reuse and os.path.exists(out)):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = collapse(src, calib=calib, **LEVELS[level])
                except CollapseError as e:   # e.g. every HardSwish collapsed overflows: a row saying so
                    rows.append({"model": name, "level": level, "error": str(e).splitlines()[0][:200]})
                    print(f"{name:20s} {level:8s} {rows[-1]['error']}", flush=True)
                    continue
                onnx.save(res.model, out + ".tmp")
                os.replace(out + ".tmp", out)
            result = onnx.load(out)
            st = model_stats(result).as_dict()
            t = measure({"original": original, "result": result}, feed, args.threads, args.rounds)
            row = {"model": name, "level": level, "activations_left": st["activations"], "nodes": st["nodes"],
                   "predicted_flat": base_flat / flat_cost(st), "predicted": base_priced / graph_cost(result),
                   "measured": t["original"] / t["result"], "original_ms": 1e3 * t["original"],
                   "result_ms": 1e3 * t["result"]}
            rows.append(row)
            print(f"{name:20s} {level:8s} acts left {row['activations_left']:3d}  predicted flat "
                  f"{row['predicted_flat']:.3f}x  priced {row['predicted']:.3f}x  measured {row['measured']:.3f}x "
                  f"({row['original_ms']:.1f} -> {row['result_ms']:.1f} ms)", flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"size": args.size, "threads": args.threads, "rounds": args.rounds, "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
