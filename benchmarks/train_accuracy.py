"""Collapse that keeps accuracy, on digits: iterative_collapse per model and method, then the merge.

    flock /tmp/bench.lock .venv/bin/python benchmarks/train_accuracy.py --model resnet18 --method easier
    .venv/bin/python benchmarks/train_accuracy.py --table          # markdown table of all results

Per run: the cached dense digits model (models.digits), iterative_collapse with a small budget
(--rounds, --steps per round, Adam, max_accuracy_drop 1 point on a validation split of 300 training
images that the dense model did not train on: heldout_dense retrains it without them), candidates
that buy a predicted speed-up first (prefer_speedup, group_sites; --no-prefer for plain score order),
merges planned and priced with --cost (default measured: onnxruntime op latencies), export of dense and collapsed models (TorchScript exporter), collapse_passes.collapse
on the collapsed one (exact merging, verified), top-1 accuracy on the 400 held-out test images (torch
and onnxruntime agree by the verification), and onnxruntime CPU latency at batch 1 of the dense and
merged ONNX, interleaved (core.runtime.time_interleaved, spinning off), median of --runs.
Results go to benchmarks/results/train_accuracy/<model>-<method>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train_accuracy")


def _export(model, shape):
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model).eval(), (torch.zeros(shape),), buf, opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    return onnx.load_from_string(buf.getvalue())


N_VAL = 300
#: per-op overhead of the MAC cost model for these tiny digits models on onnxruntime CPU: at widths 8-64
#: one op's fixed cost outweighs ~2e5 MACs (docs/training.md: the 3x3 + 3x3 -> 5x5 merges of ResNet-18
#: are faster on ORT with +50% MACs; the default 2e4 makes the planner refuse them)
PER_OP_OVERHEAD = 2e5


def heldout_dense(model_name: str, tr_idx):
    """The dense digits model trained with models.digits' recipe (Adam, one-cycle, seeded, 1 thread) on
    the training images minus the validation split, cached next to the digits cache: the loop's
    validation images must be ones the dense model never saw."""
    import torch

    from models import build
    from models.digits import _default_cache_dir, digits_config, digits_data, fit_digits

    cfg = digits_config(model_name)
    path = os.path.join(_default_cache_dir(), f"{model_name}-heldout{N_VAL}-v1.pt")
    model = build(model_name, **cfg["model_kw"])
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x_tr, y_tr = (t[tr_idx] for t in digits_data(model_name)[:2])
    torch.manual_seed(0)
    model = fit_digits(build(model_name, **cfg["model_kw"]), x_tr, y_tr, cfg, seed=0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_atomic(path, lambda fh: torch.save(model.state_dict(), fh))
    return model.eval()


def _write_atomic(path: str, write) -> None:
    """write(fh) into a fresh temp file beside `path`, renamed when complete; removed on any failure or ^C
    (a fixed `path.tmp` was left behind by an interrupted run, and two runs at once wrote the same one)."""
    from collapse_passes.outputs import atomic_file

    with atomic_file(path) as fh:
        write(fh)


def run(model_name: str, method: str, rounds: int, steps: int, pretrain: int, runs: int, lr: float = 5e-4,
        patience: int = 2, target: float | None = None, cost: str = "macs", prefer: bool = True,
        drop: float = 0.01, overhead: float | None = PER_OP_OVERHEAD, min_gain: float = 0.0) -> dict:
    import numpy as np
    import torch

    from collapse_passes.algebra.cost import CostModel
    from collapse_passes.api import collapse
    from collapse_passes.core.runtime import session, time_interleaved
    from collapse_passes.train import find_sites, iterative_collapse
    from models.digits import digits_data

    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = digits_data(model_name)
    perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(0))
    val, tr = perm[:N_VAL], perm[N_VAL:]
    dense = heldout_dense(model_name, tr)
    torch.manual_seed(0)
    n_sites = len(find_sites(dense))
    t0 = time.perf_counter()
    res = iterative_collapse(dense, method, (x_tr[tr], y_tr[tr]), (x_tr[val], y_tr[val]), max_accuracy_drop=drop,
                             max_rounds=rounds, steps_per_round=steps, pretrain_steps=pretrain, lr=lr,
                             patience=patience, target_speedup=target, prefer_speedup=prefer,
                             cost_model=cost if cost == "measured" else CostModel(
                                 **({} if overhead is None else {"per_op_overhead_macs": overhead})),
                             group_sites=prefer, min_gain=min_gain, predict=True,
                             log=lambda s: print(f"  [{model_name}/{method}] {s}", flush=True))
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        acc0 = float((dense.eval()(x_te).argmax(1) == y_te).float().mean())
        acc1 = float((res.model.eval()(x_te).argmax(1) == y_te).float().mean())
    shape = (1,) + tuple(x_te.shape[1:])
    ckw = {"cost": cost, "per_op_overhead": overhead}    # the planner prices merges as the loop did
    dense_res = collapse(_export(dense, shape), check=2, **ckw)          # same exact clean-ups on both sides
    onnx_dense = dense_res.model
    merged = collapse(_export(res.model, shape), check=2, **ckw)
    feed = {"input": x_te[:1].numpy()}
    t = time_interleaved({"dense": session(onnx_dense, optimize=True), "collapsed": session(merged.model, optimize=True)},
                         feed, runs)
    ms = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
    before, after = merged.report["before"], merged.report["after"]
    return {"model": model_name, "method": method + (f" + target {target}x" if target else "") + (" + prefer speed-up" if prefer else "")
            + (" (measured cost)" if cost == "measured" else f" (overhead {overhead:g})"), "sites": n_sites, "collapsed": res.collapsed,
            "removed": len(res.collapsed), "stopped": res.stopped,
            "accuracy_before": acc0, "accuracy_after": acc1, "val_accuracy_before": res.baseline_accuracy,
            "val_accuracy_after": res.accuracy, "latency_ms_before": ms["dense"], "latency_ms_after": ms["collapsed"],
            "speedup": ms["dense"] / ms["collapsed"], "predicted_speedup": res.predicted_speedup, "macs_after_merge": after["macs"],
            "macs_dense": dense_res.report["after"]["macs"], "depth_dense": dense_res.report["after"]["depth_ops"],
            "depth_before": before["depth_ops"], "depth_after": after["depth_ops"],
            "verified": bool(merged.passed), "cost_model": cost, "per_op_overhead": overhead, "min_gain": min_gain, "prefer_speedup": prefer, "val_images": N_VAL,
            "max_accuracy_drop": drop, "dense": f"trained on {len(tr)} images (validation split held out)",
            "rounds": rounds, "steps_per_round": steps, "lr": lr, "patience": patience, "pretrain_steps": pretrain,
            "train_seconds": round(train_s, 1), "runs": runs, "history": res.history,
            "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, shared (noisy)",
            "torch_threads": 1}


def _dense_depth(model_name: str) -> int:
    """Critical path (ops) of the dense model's ONNX after the exact clean-ups (for results saved
    before the benchmark recorded it)."""
    from collapse_passes.api import collapse
    from models.digits import digits_data, train_digits_model

    dense, _ = train_digits_model(model_name)
    x = digits_data(model_name)[2]
    return collapse(_export(dense, (1,) + tuple(x.shape[1:])), check=1).report["after"]["depth_ops"]


def table() -> str:
    rows = []
    for f in sorted(os.listdir(RESULTS)):
        if f.endswith(".json"):
            with open(os.path.join(RESULTS, f)) as fh:
                rows.append(json.load(fh))
    for r in rows:
        if "depth_dense" not in r:
            r["depth_dense"] = _dense_depth(r["model"])
    out = ["| model | method | collapsed / sites | stopped | test acc before -> after | depth (ops) before -> after "
           "| MACs before -> after | ORT CPU b1 before -> after | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['method']} | {r['removed']} / {r['sites']} | {r['stopped']} | "
                   f"{100 * r['accuracy_before']:.2f}% -> {100 * r['accuracy_after']:.2f}% | "
                   f"{r['depth_dense']} -> {r['depth_after']} | {r['macs_dense']:,} -> {r['macs_after_merge']:,} | "
                   f"{r['latency_ms_before']:.3f} -> "
                   f"{r['latency_ms_after']:.3f} ms | {r['speedup']:.2f}x |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("resnet18", "mobilenet_v2", "vgg16_bn"))
    ap.add_argument("--method", choices=("easier", "tlc", "prelu"), default="easier")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pretrain", type=int, default=0, help="regularised steps before the rounds (prelu)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--patience", type=int, default=2, help="roll-backs tolerated before the loop stops")
    ap.add_argument("--target-speedup", type=float, help="skip sites that buy no predicted speed-up; stop at S")
    ap.add_argument("--cost", choices=("macs", "measured"), default="macs",
                    help="cost model of the merge planner and the predictions (measured: onnxruntime op latencies, "
                         "re-measured per session, so noisy on a shared machine)")
    ap.add_argument("--per-op-overhead", type=float, default=PER_OP_OVERHEAD,
                    help="MAC-equivalents per op of the macs cost model (default: calibrated on ORT CPU, see docs)")
    ap.add_argument("--no-prefer", action="store_true", help="plain score order (no latency-aware preference)")
    ap.add_argument("--min-gain", type=float, default=0.0,
                    help="with prefer: a candidate must lower the predicted cost by more than this fraction")
    ap.add_argument("--drop", type=float, default=0.01, help="max_accuracy_drop on the validation split")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    if a.table:
        print(table())
        return 0
    if not a.model:
        ap.error("--model is required (or --table)")
    r = run(a.model, a.method, a.rounds, a.steps, a.pretrain, a.runs, a.lr, a.patience, a.target_speedup, a.cost,
            not a.no_prefer, a.drop, a.per_op_overhead, a.min_gain)
    os.makedirs(RESULTS, exist_ok=True)
    tag = ((f"-target{a.target_speedup:g}" if a.target_speedup else "") + ("" if a.no_prefer else "-prefer")
           + ("-measured" if a.cost == "measured" else "") + (f"-{a.tag}" if a.tag else ""))
    path = os.path.join(RESULTS, f"{a.model}-{a.method}{tag}.json")
    _write_atomic(path, lambda fh: fh.write(json.dumps(r, indent=1, default=float).encode()))
    print({k: v for k, v in r.items() if k != "history"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
