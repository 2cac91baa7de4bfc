"""One prepared GPU check (for a session that is lent a GPU machine): TVM CUDA vs onnxruntime CUDA.

For the dense and the collapsed MobileNetV2 (CIFAR, width 1.0, 32x32, every block's activations
collapsed, as in merge_latency.py) and each batch size: compile with TVM for `cuda` (arch from
nvidia-smi) along the CUDA route of tvm_integration.compile.build -- DLight default schedules,
DefaultGPUSchedule for what DLight has no rule for, CUDA graph capture -- run on the GPU, compare
with onnxruntime on the CPU (numerical reference), and time

* TVM CUDA untuned (DLight + DefaultGPUSchedule), with and without CUDA graphs;
* TVM CUDA tuned (MetaSchedule, --trials per model; kernels shared by the two models tuned once);
* onnxruntime's CUDA execution provider, when onnxruntime-gpu is installed.

Writes $OUT/gpu_check.json (or --out) and prints one JSON line per measurement. Without a visible
GPU it prints one line saying so and exits 2, writing nothing.

    python benchmarks/gpu_check.py [--out DIR] [--batches 1 32] [--trials 256]
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
    args = ap.parse_args(argv)

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
    from tvm_integration.tune import tune_with_report

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
    rows, tuning = [], []

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
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(args.out, "tvm_cuda_db") if args.trials else None
        for b in args.batches:
            models, _stats, _shape = ml.variants("mobilenet_v2", b, tmp)
            feed = {"input": np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32)}
            for label in ("(c) collapse_passes", "(a) dense+onnxslim"):
                model = models[label]
                mod = tc.import_onnx(model)
                t0 = time.perf_counter()
                ex = tc.build(mod, target)
                build_s = time.perf_counter() - t0
                ex_nograph = tc.build(mod, target, cuda_graph=False)
                ref = tc.run_ort(model, feed)
                err = max(float(np.max(np.abs(g - r))) for g, r in zip(tc.run(ex, feed), ref))
                row = {"model": label, "batch": b, "build_s": round(build_s, 1), "max_abs_vs_ort_cpu": err,
                       "tvm_cuda_untuned_ms": tc.measure_latency(ex, feed, repeat=args.repeat),
                       "tvm_cuda_untuned_no_graph_ms": tc.measure_latency(ex_nograph, feed, repeat=args.repeat),
                       "ort_cuda_ms": _time_ort_cuda(model, feed, args.repeat)}
                if args.trials:
                    db, rep = tune_with_report(mod, target, info, work_dir=work, trials=args.trials,
                                               progress=False, shared_database=False,
                                               log=lambda s: print("  " + s, file=sys.stderr, flush=True))
                    ext = tc.build(mod, target, database=db)
                    errt = max(float(np.max(np.abs(g - r))) for g, r in zip(tc.run(ext, feed), ref))
                    row.update({"tvm_cuda_tuned_ms": tc.measure_latency(ext, feed, repeat=args.repeat),
                                "max_abs_tuned_vs_ort_cpu": errt, "tuned_functions": len(ext.tuned_functions),
                                "untuned_functions": ext.untuned_functions})
                    tuning.append({"model": label, "batch": b, "seconds": rep.seconds,
                                   "tasks_tuned": rep.tasks_tuned, "from_database": rep.tasks_from_database()})
                rows.append(row)
                print(json.dumps(row), flush=True)
                _write(args.out, rows, tuning)  # after every row: a run cut off by its timeout keeps what it measured
    _write(args.out, rows, tuning)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
