"""What collapse buys in PyTorch itself on a GPU: dense vs fx-collapsed model, eager CUDA (cuDNN).

The torch front end (collapse_passes.collapse on an nn.Module) collapses every block activation of
MobileNetV2 (CIFAR 32x32, and the torchvision layout at 224x224), as merge_latency.py does for ONNX;
the GraphModule it returns is moved to the GPU and timed against the dense module, interleaved
(dense, collapsed, dense, ...), with CUDA events, cudnn.benchmark on, after warm-up.

The check that can fail: random weights with fresh (or randomly set) BatchNorm statistics give logits
that are the same to ~1e-8 for every input, so an absolute error on them passes whatever the GPU
computes. The models get BN statistics from data instead (models.tv_init.calibrate_bn); the script
refuses a model whose outputs barely depend on the input (spread < MIN_SPREAD of the output), and
compares the collapsed module on the GPU (float32, TF32 off for the check) with the requested
semantics (the dense model with the chosen activations linear) run on the CPU in float64, relative to
the input-dependent part of the output: max |gpu - ref| / max |ref - batch mean of ref| <= REL_TOL, or
<= CPU_FACTOR times the same module's float32 error on the CPU when that is larger (224 px: with all 33
block activations linear, the chain's activations reach ~1e4 and the head's ReLU6 saturates most of them,
so float32 rounding of those values is already 6.5e-3 of the output's input-dependent part on the CPU; a
note says so). The dense
module's own GPU error against its float64 reference is reported beside it. Timing runs with torch's
default TF32 setting.

Device time is bounded: --max-seconds (default 360) stops starting new measurements past it; the
JSON is rewritten after every row, so a run cut off keeps what it measured. On a 2-core CPU the CPU
side (build, calibration, collapse, float64 reference) took 15 s for the CIFAR case and 30-50 s for
the 224 px one (--dry-run, shared machine); the timing adds 5 + 30 x 10 calls per model, case and
batch (not measured here). Exit 0 all checks passed, 1 a check failed
(one line each on stderr), 2 no CUDA device (one line, nothing written). --dry-run runs every
CPU-side part (build, calibration, collapse, float64 reference, the check on the CPU in float32), no
timing, to try the script without a GPU.

    python benchmarks/gpu_torch_check.py [--out DIR] [--batches 1 32] [--rounds 30] [--max-seconds 360]
    python benchmarks/gpu_torch_check.py --dry-run --cases mobilenet_v2_cifar --batches 2
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.api import list_torch_keys  # noqa: E402
from models import build  # noqa: E402
from models.tv_init import calibrate_bn  # noqa: E402

CASES = {  # name -> (registry model, builder kwargs, input side, key prefix left dense)
    "mobilenet_v2_cifar": ("mobilenet_v2", dict(width_mult=1.0), 32, None),
    "mobilenet_v2_tv_224": ("mobilenet_v2_tv", {}, 224, "features.18."),
}
#: samples of the correctness check (one batch, also on the CPU in float64)
CHECK_SAMPLES = 8
#: max |gpu - ref| over the input-dependent scale of ref (float32 through ~50 layers is ~1e-6..1e-5)
REL_TOL = 1e-3
#: ... or this many times the collapsed module's own float32 error on the CPU, if larger (mobilenet_v2_tv_224:
#: 6.5e-3, activations ~1e4 once linear): the device is judged against what float32 gives on the CPU
CPU_FACTOR = 10.0
#: a model whose outputs spread less than this (relative) over the check batch checks nothing
MIN_SPREAD = 1e-3


def prepare(name: str) -> dict:
    """The case's dense model (BN statistics from data), its collapse, the check batch and float64 references."""
    arch, kw, side, head = CASES[name]
    torch.manual_seed(0)
    dense = calibrate_bn(build(arch, **kw), (CHECK_SAMPLES, 3, side, side), batches=2, seed=0)
    example = (torch.randn(1, 3, side, side),)
    keys = [k["key"] for k in list_torch_keys(dense, example)
            if k["key"].startswith("features.") and not k["key"].startswith("features.0.")
            and not (head and k["key"].startswith(head))]
    res = cp.collapse(dense, collapse=keys, example_inputs=example, check=1)
    x = torch.randn(CHECK_SAMPLES, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_requested = copy.deepcopy(res.requested).double().eval()(x.double())
        ref_dense = copy.deepcopy(dense).double().eval()(x.double())
        cpu32 = res.model.eval()(x)
    return {"name": name, "side": side, "dense": dense, "collapsed": res.model.eval(), "keys": keys,
            "report": res.report, "x": x, "ref_requested": ref_requested, "ref_dense": ref_dense,
            "cpu32_rel": relative_error(cpu32, ref_requested)}


def spread(ref: torch.Tensor) -> float:
    """How much the outputs depend on the input: max |ref - batch mean| / max |ref|."""
    return float((ref - ref.mean(0)).abs().max() / ref.abs().max().clamp_min(1e-300))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| over the input-dependent scale of ref (max |ref - batch mean of ref|)."""
    scale = (ref - ref.mean(0)).abs().max().clamp_min(1e-300)
    return float((out.double().cpu() - ref).abs().max() / scale)


def check(case: dict, device: torch.device) -> dict:
    """The collapsed and the dense module on `device` (float32, TF32 off) against their float64 references."""
    if device.type == "cuda":
        tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        x = case["x"].to(device)
        with torch.inference_mode():
            coll = case["collapsed"].to(device)(x)
            dense = case["dense"].to(device)(x)
    finally:
        if device.type == "cuda":
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    s = spread(case["ref_requested"])
    rel = relative_error(coll, case["ref_requested"])
    cpu32 = case.get("cpu32_rel", 0.0)
    tol = max(REL_TOL, CPU_FACTOR * cpu32)
    row = {"case": case["name"], "check_samples": CHECK_SAMPLES, "output_spread": s,
           "rel_err_collapsed_vs_requested_f64": rel, "rel_err_collapsed_cpu_f32_vs_requested_f64": cpu32,
           "rel_err_dense_vs_dense_f64": relative_error(dense, case["ref_dense"]),
           "max_abs_collapsed_vs_requested_f64": float((coll.double().cpu() - case["ref_requested"]).abs().max()),
           "rel_tol": tol}
    problems = []
    if not s >= MIN_SPREAD:
        problems.append(f"the outputs barely depend on the input (spread {s:.2e} < {MIN_SPREAD:g}): the check "
                        "would pass whatever the device computes")
    if not rel <= tol:
        problems.append(f"collapsed on {device.type} vs requested float64: relative error {rel:.2e} > {tol:.2g} "
                        f"(the same module in float32 on the CPU: {cpu32:.2e})")
    row["ok"] = not problems
    row["problems"] = problems
    return row


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


def _write(out: str, result: dict) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "gpu_torch_check.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--max-seconds", type=float, default=360.0,
                    help="start no new measurement after this many seconds (the JSON keeps what was done)")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: run the CPU-side parts and the check on the CPU (float32), no timing")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_torch_check: torch sees no CUDA device: nothing measured, nothing written "
              "(--dry-run runs the CPU-side parts)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    dev = torch.device("cpu" if args.dry_run else "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = {"gpu": None if args.dry_run else torch.cuda.get_device_name(0), "dry_run": args.dry_run,
              "torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
              "checks": [], "rows": [], "skipped": [],
              "note": "models with BN statistics from data (calibrate_bn); check: float32 on the device, TF32 "
                      "off, vs the requested semantics in float64 on the CPU, relative to the input-dependent "
                      "part of the output; timing: eager PyTorch, cudnn.benchmark, torch's default TF32, medians "
                      "of --rounds interleaved rounds of 10 calls timed with CUDA events"}
    failed = []
    for name in args.cases:
        if time.perf_counter() - t0 > args.max_seconds:
            result["skipped"].append(f"{name}: over --max-seconds {args.max_seconds:g}")
            continue
        case = prepare(name)
        row = check(case, dev)
        row.update({"collapsed_keys": len(case["keys"]), "depth_before": case["report"]["before"].get("depth_ops"),
                    "depth_after": case["report"]["after"].get("depth_ops")})
        result["checks"].append(row)
        print(json.dumps(row), flush=True)
        failed += [f"gpu_torch_check: {name}: {p}" for p in row["problems"]]
        if case["cpu32_rel"] > REL_TOL:   # not the device's doing: said, not failed
            print(f"gpu_torch_check: {name}: note: the collapsed module in float32 on the CPU is already "
                  f"{case['cpu32_rel']:.2e} (relative) off its float64 reference", file=sys.stderr)
        _write(args.out, result)
        if args.dry_run:
            continue
        collapsed, dense = case["collapsed"].to(dev), case["dense"].to(dev)
        for b in args.batches:
            if time.perf_counter() - t0 > args.max_seconds:
                result["skipped"].append(f"{name} batch {b}: over --max-seconds {args.max_seconds:g}")
                continue
            x = torch.randn(b, 3, case["side"], case["side"], device=dev)
            t_dense, t_coll = _time_pair(dense, collapsed, x, args.rounds)
            trow = {"case": name, "batch": b, "torch_cuda_dense_ms": round(t_dense, 4),
                    "torch_cuda_collapsed_ms": round(t_coll, 4), "speedup": round(t_dense / t_coll, 3),
                    "tf32_conv": torch.backends.cudnn.allow_tf32}
            result["rows"].append(trow)
            print(json.dumps(trow), flush=True)
            _write(args.out, result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _write(args.out, result)
    for line in failed:
        print(line, file=sys.stderr)
    for line in result["skipped"]:
        print(f"gpu_torch_check: skipped {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
