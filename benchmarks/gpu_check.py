"""One prepared GPU check (for a session that is lent a GPU machine): TVM CUDA vs onnxruntime CUDA.

For the dense and the collapsed MobileNetV2 (CIFAR, width 1.0, 32x32, every block's activations
collapsed, as in merge_latency.py) and each batch size: compile with TVM for `cuda` (arch from
nvidia-smi) along the CUDA route of tvm_integration.compile.build -- DLight default schedules,
DefaultGPUSchedule for what DLight has no rule for, CUDA graph capture -- run on the GPU, compare
with onnxruntime on the CPU (numerical reference), and time

* TVM CUDA untuned (DLight + DefaultGPUSchedule), with and without CUDA graphs;
* TVM CUDA tuned (MetaSchedule, --trials per model; kernels shared by the two models tuned once);
* onnxruntime's CUDA execution provider, when onnxruntime-gpu is installed.

The models get BatchNorm statistics from data (models.tv_init.calibrate_bn, through
merge_latency.variants(calibrate=True)): with random ones (randomize_bn) a random-weight MobileNet gives
the same logits to ~1e-8 for every input, and an absolute error on them passes whatever the GPU
computes. The check: ORT CPU's outputs for two inputs must differ (spread >= MIN_SPREAD of the output),
and max |TVM CUDA - ORT CPU| over the input-dependent scale max |ORT(x1) - ORT(x2)| must be <= REL_TOL;
a row that fails says so on stderr and the exit status is 1.

Writes $OUT/gpu_check.json (or --out) after every row and prints one JSON line per measurement.
The untuned rows of every batch come first, the tuning after them (a run cut off by its device time keeps
every untuned row; a tuning that fails is recorded in its row). --max-seconds (default 480) starts no new
batch past it, --tune-until no new tuning; --models c / a picks the collapsed or the dense model.
Without a visible GPU it prints one line saying so and exits 2, writing nothing; --dry-run builds the
models and the ORT CPU references and checks the spread, without TVM or a GPU.

    python benchmarks/gpu_check.py [--out DIR] [--batches 1 32] [--models c a] [--trials 256]
                                   [--max-seconds 480] [--tune-until S]
    python benchmarks/gpu_check.py --dry-run --batches 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

#: max |TVM CUDA - ORT CPU| over the input-dependent scale of the ORT CPU outputs (float32 on both sides)
REL_TOL = 1e-3
#: outputs for two inputs closer than this (relative) check nothing: the model ignores its input
MIN_SPREAD = 1e-3


def input_scale(run, feed: dict) -> tuple[float, float]:
    """(max |run(x1) - run(x2)|, that over max |run(x1)|) for x2 a second seeded random input: the
    input-dependent scale of the outputs and their relative spread."""
    other = {k: np.random.default_rng(1).standard_normal(v.shape).astype(v.dtype) for k, v in feed.items()}
    a, b = run(feed), run(other)
    scale = max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))
    return scale, scale / max(max(float(np.max(np.abs(p))) for p in a), 1e-300)


def relative_error(got, ref, scale: float) -> float:
    return max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref)) / max(scale, 1e-300)


def _gpu_name() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _time_ort_cuda(model, feed, repeat: int) -> float | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    if "CUDAExecutionProvider" not in sess.get_providers():  # fell back to CPU
        return None
    from collapse_passes.core.runtime import time_runs

    return float(np.median(time_runs(sess, feed, repeat=repeat, warmup=10))) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per model (0: no tuning)")
    ap.add_argument("--cuda-arch", default=None, help="e.g. sm_90 (default: from nvidia-smi)")
    ap.add_argument("--max-seconds", type=float, default=480.0, help="start no new batch after this many seconds")
    ap.add_argument("--models", nargs="+", default=["c", "a"], choices=["c", "a"],
                    help="c: collapsed by collapse_passes, a: dense + onnxslim")
    ap.add_argument("--tune-until", type=float, default=1e9,
                    help="start no new tuning after this many seconds from the start (untuned rows come first)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU, no TVM: the models, ORT CPU references and spread")
    args = ap.parse_args(argv)
    if args.dry_run:
        return _dry_run(args)

    gpu = _gpu_name()
    if gpu is None:
        print("gpu_check: no GPU visible through nvidia-smi: nothing measured, nothing written "
              "(run it on a machine with an NVIDIA GPU and its driver)", file=sys.stderr)
        return 2
    import onnxruntime as ort

    import merge_latency as ml
    from tvm_integration import compile as tc
    from tvm_integration.errors import TVMError
    from tvm_integration.targets import resolve_target
    from tvm_integration.tuning import tune_with_report

    try:
        target, info = resolve_target("cuda", args.cuda_arch)
    except TVMError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    if not info.runs_on_host:
        print(f"gpu_check: nvidia-smi sees {gpu!r} but TVM cannot open CUDA device 0 (driver / "
              "libtvm_runtime_cuda): nothing measured", file=sys.stderr)
        return 2
    has_ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not has_ort_cuda:
        print("gpu_check: onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu): "
              "ORT CUDA column left empty", file=sys.stderr)
    rows, tuning, failed = [], [], []
    t_start = time.perf_counter()

    def _write(out, rows, tuning):
        os.makedirs(out, exist_ok=True)
        result = {"gpu": gpu, "target": info.target_json, "python": platform.python_version(),
                  "onnxruntime": ort.__version__, "ort_cuda_provider": has_ort_cuda, "trials": args.trials,
                  "rows": rows, "tuning": tuning,
                  "note": "TVM untuned = DLight + DefaultGPUSchedule (+ CUDA graph); ORT CPU is the "
                          "numerical reference; latencies are medians of --repeat timed calls"}
        tmp_path = os.path.join(out, "gpu_check.json.tmp")
        with open(tmp_path, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
        os.replace(tmp_path, os.path.join(out, "gpu_check.json"))
    pending = []  # (label, batch, mod, feed, ref, scale, row): tuned after every untuned row is in
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batches:
            if time.perf_counter() - t_start > args.max_seconds:
                print(f"gpu_check: batch {b} skipped: over --max-seconds {args.max_seconds:g}", file=sys.stderr)
                continue
            models, _stats, _shape = ml.variants("mobilenet_v2", b, tmp, calibrate=True)
            feed = {"input": np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32)}
            for label in [lb for lb in ("(c) collapse_passes", "(a) dense+onnxslim") if lb[1] in args.models]:
                model = models[label]
                mod = tc.import_onnx(model)
                t0 = time.perf_counter()
                ex = tc.build(mod, target)
                build_s = time.perf_counter() - t0
                ex_nograph = tc.build(mod, target, cuda_graph=False)
                ref = tc.run_ort(model, feed)
                scale, spread = input_scale(lambda f: tc.run_ort(model, f), feed)
                got = tc.run(ex, feed)
                err = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref))
                rel = relative_error(got, ref, scale)
                row = {"model": label, "batch": b, "build_s": round(build_s, 1), "max_abs_vs_ort_cpu": err,
                       "rel_err_vs_ort_cpu": rel, "output_spread": spread,
                       "tvm_cuda_untuned_ms": tc.measure_latency(ex, feed, repeat=args.repeat),
                       "tvm_cuda_untuned_no_graph_ms": tc.measure_latency(ex_nograph, feed, repeat=args.repeat),
                       "ort_cuda_ms": _time_ort_cuda(model, feed, args.repeat)}
                row["ok"] = not _problems(row)   # now: a run cut off while tuning keeps the untuned verdict too
                rows.append(row)
                pending.append((label, b, mod, feed, ref, scale, row))
                print(json.dumps(row), flush=True)
                _write(args.out, rows, tuning)  # after every row: a run cut off by its timeout keeps what it measured
        # Tuning last, so that a run cut off by its device time still has every untuned row; the two
        # models share one work_dir (one database), so their common kernels are tuned once.
        work = os.path.join(tmp, "tvm_cuda_db")
        for label, b, mod, feed, ref, scale, row in pending if args.trials else ():
            if time.perf_counter() - t_start > args.tune_until:
                row["tuning_skipped"] = f"over --tune-until {args.tune_until:g} s"
                print(f"gpu_check: {label} batch {b} not tuned: over --tune-until {args.tune_until:g} s", file=sys.stderr)
                continue
            try:
                db, rep = tune_with_report(mod, target, info, work_dir=work, trials=args.trials,
                                           progress=False, shared_database=False,
                                           log=lambda s: print("  " + s, file=sys.stderr, flush=True))
                ext = tc.build(mod, target, database=db)
                gott = tc.run(ext, feed)
            except Exception as e:  # noqa: BLE001 -- a device run reports what broke and goes on
                row["tuning_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
                print(f"gpu_check: {label} batch {b}: tuning failed: {row['tuning_error']}", file=sys.stderr)
                _write(args.out, rows, tuning)
                continue
            row.update({"tvm_cuda_tuned_ms": tc.measure_latency(ext, feed, repeat=args.repeat),
                        "max_abs_tuned_vs_ort_cpu": max(float(np.max(np.abs(g - r))) for g, r in zip(gott, ref)),
                        "rel_err_tuned_vs_ort_cpu": relative_error(gott, ref, scale),
                        "tuned_functions": len(ext.tuned_functions), "untuned_functions": ext.untuned_functions})
            tuning.append({"model": label, "batch": b, **rep.to_dict()})
            print(json.dumps(row), flush=True)
            _write(args.out, rows, tuning)
    for row in rows:
        problems = _problems(row)
        row["ok"] = not problems
        failed += [f"gpu_check: {row['model']} batch {row['batch']}: {p}" for p in problems]
    _write(args.out, rows, tuning)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


def _problems(row: dict) -> list[str]:
    out = []
    if not row["output_spread"] >= MIN_SPREAD:
        out.append(f"the outputs barely depend on the input (spread {row['output_spread']:.2e} < {MIN_SPREAD:g}): "
                   "the check would pass whatever the GPU computes")
    for key in ("rel_err_vs_ort_cpu", "rel_err_tuned_vs_ort_cpu"):
        if key in row and not row[key] <= REL_TOL:
            out.append(f"{key} {row[key]:.2e} > {REL_TOL:g}")
    return out


def _dry_run(args) -> int:
    """The CPU side only: the calibrated models, their ORT CPU references, the spread check."""
    import merge_latency as ml
    from tvm_integration import compile as tc

    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batches:
            models, _stats, _shape = ml.variants("mobilenet_v2", b, tmp, calibrate=True)
            feed = {"input": np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32)}
            for label in [lb for lb in ("(c) collapse_passes", "(a) dense+onnxslim") if lb[1] in args.models]:
                model = models[label]
                scale, spread = input_scale(lambda f: tc.run_ort(model, f), feed)
                row = {"model": label, "batch": b, "dry_run": True, "output_spread": spread,
                       "rel_err_vs_ort_cpu": relative_error(tc.run_ort(model, feed), tc.run_ort(model, feed), scale)}
                problems = _problems(row)
                row["ok"] = not problems
                failed += [f"gpu_check: {label} batch {b}: {p}" for p in problems]
                print(json.dumps(row), flush=True)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
