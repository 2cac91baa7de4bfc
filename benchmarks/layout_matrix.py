"""The layouts and exporters collapse_passes is judged on, through the command line: a robustness matrix.

torchvision-layout ResNet-50, MobileNetV2, MobileNetV3-Large, EfficientNet-B0 and Swin-T (models/, torchvision's
init + calibrate_bn: random weights whose outputs depend on the input), each exported by both torch exporters with
a static and a dynamic batch, then `python -m collapse_passes` in several modes, one fresh process per run (as a
user runs it). A row per (export, mode): exit status, seconds, activations collapsed, verification, and the last
error or TVM note. Nothing is timed against anything: this is "does every path work on every export", the
matrix of docs/tvm.md's 2026-11-29 notes and the closing notes' "what I ran".

    python benchmarks/layout_matrix.py [--models resnet50_tv,...] [--size 224] [--modes easier,tvm,...]
                                       [--work DIR] [--json F]

Modes (each a collapse_passes command line on the export, calibration data: 8 random-normal samples):
- easier:   --method easier --calib C --remove 8 --target cpu         (untuned TVM build, checked, timed)
- speedup:  --method tlc --calib C --target-speedup 1.2 --target aarch64 --export DIR   (cross-compiled)
- ratio:    --prune-ratio 0.3 --round-to 8 --force
- calibdead: --method easier --calib C --threshold 0.3 --prune-calib-dead
- lacoot:   --method lacoot --calib C --remove-blocks 0.5
- cuda:     --method easier --calib C --remove 8 --target cuda --cuda-arch sm_90 --export DIR  (codegen only)
Exit status 0 is a verified, written result; 2 is a one-line refusal (a row says which); anything else is a bug.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: model -> torchvision_init's Linear init
MODELS = {"resnet50_tv": "uniform", "mobilenet_v2_tv": "normal", "mobilenet_v3_large": "normal",
          "efficientnet_b0": "uniform", "swin_t_tv": "uniform"}
MODES = {
    "easier": ["--method", "easier", "--calib", "{calib}", "--remove", "8", "--target", "cpu"],
    "speedup": ["--method", "tlc", "--calib", "{calib}", "--target-speedup", "1.2", "--target", "aarch64",
                "--export", "{out}_arm"],
    "ratio": ["--prune-ratio", "0.3", "--round-to", "8", "--force"],
    "calibdead": ["--method", "easier", "--calib", "{calib}", "--threshold", "0.3", "--prune-calib-dead"],
    "lacoot": ["--method", "lacoot", "--calib", "{calib}", "--remove-blocks", "0.5"],
    "cuda": ["--method", "easier", "--calib", "{calib}", "--remove", "8", "--target", "cuda", "--cuda-arch", "sm_90",
             "--export", "{out}_cuda"],
}


def export_all(models: list[str], size: int, work: str) -> list[str]:
    """Export each model four ways (TorchScript / torch.export x static / dynamic batch); paths written."""
    import torch

    from models import build
    from models.export import export_onnx
    from models.tv_init import calibrate_bn, torchvision_init

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)   # "torchvision is not installed. Skipping ..."
    paths = []
    for name in models:
        m = build(name)
        torchvision_init(m, MODELS[name])
        calibrate_bn(m, (2, 3, size, size))
        for dynamo in (False, True):
            for dynamic in (False, True):
                p = os.path.join(work, f"{name}_{'dynamo' if dynamo else 'ts'}_{'dyn' if dynamic else 'static'}.onnx")
                kw, shape = {}, (1, 3, size, size)
                if dynamic and dynamo:   # a batch-1 example specialises the batch to 1: export from 2
                    kw["dynamic_shapes"] = ({0: torch.export.Dim("N", min=1, max=64)},)
                    shape = (2, 3, size, size)
                elif dynamic:
                    kw["dynamic_axes"] = {"input": {0: "N"}, "logits": {0: "N"}}
                try:
                    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                            contextlib.redirect_stderr(io.StringIO()):
                        warnings.simplefilter("ignore")
                        export_onnx(m, p, shape, dynamo=dynamo, **kw)
                    paths.append(p)
                except Exception as e:  # noqa: BLE001 - an export the exporter refuses is a row, not the end
                    print(f"export failed: {os.path.basename(p)}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return paths


def run_mode(model: str, mode: str, calib: str, timeout: int) -> dict:
    out = model[:-len(".onnx")] + f"_{mode}"
    args = [a.format(calib=calib, out=out) for a in MODES[mode]]
    cmd = [sys.executable, "-m", "collapse_passes", model, *args, "-o", out + ".onnx", "--report", out + ".json"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(model))
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        rc, text = "timeout", ""
    row = {"model": os.path.basename(model), "mode": mode, "rc": rc, "seconds": round(time.perf_counter() - t0, 1)}
    if os.path.exists(out + ".json"):
        with open(out + ".json") as f:
            rep = json.load(f)
        row.update(collapsed=rep.get("collapsed"), passed=rep.get("passed"),
                   tvm_notes=len((rep.get("tvm") or {}).get("notes") or []))
    last = [ln for ln in text.splitlines() if ln.startswith(("error:", "TVM note:"))]
    row["said"] = last[-1][:160] if last else ""
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--work", help="folder for the exports and results (default: a temporary one, removed)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    models = [m for m in a.models.split(",") if m]
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in models if m not in MODELS] + [m for m in modes if m not in MODES]
    if bad:
        print(f"unknown model or mode: {', '.join(bad)}; models: {', '.join(MODELS)}; modes: {', '.join(MODES)}")
        return 2
    with contextlib.ExitStack() as stack:
        work = a.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="layout_matrix_"))
        os.makedirs(work, exist_ok=True)
        import numpy as np

        calib = os.path.join(work, "calib.npz")
        np.savez(calib, input=np.random.default_rng(0).standard_normal((8, 3, a.size, a.size)).astype(np.float32))
        rows = []
        for path in export_all(models, a.size, work):
            for mode in modes:
                row = run_mode(path, mode, calib, a.timeout)
                rows.append(row)
                print(f"{row['model']:<40} {mode:<10} rc={row['rc']!s:<7} {row['seconds']:>7.1f}s "
                      f"collapsed={row.get('collapsed')!s:<4} {row['said']}", flush=True)
    bugs = [r for r in rows if r["rc"] not in (0, 2)]
    print(f"{len(rows)} runs: {sum(r['rc'] == 0 for r in rows)} written, {sum(r['rc'] == 2 for r in rows)} refused "
          f"in one line, {len(bugs)} other")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size": a.size, "rows": rows}, f, indent=1)
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
