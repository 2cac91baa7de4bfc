"""Tuned TVM vs onnxruntime latency on this CPU, side by side in one run.

    python benchmarks/tvm_latency.py                      # a small CNN exported inline
    python benchmarks/tvm_latency.py a.onnx b.onnx --trials 64 --repeat 50
    python benchmarks/tvm_latency.py --write-docs         # also update docs/tvm.md

For every model: onnxruntime (CPUExecutionProvider, all cores), TVM untuned
(``tvm.compile`` default schedules) and TVM tuned with MetaSchedule under the
stated trial budget; median latency over ``--repeat`` measurements, same
inputs, same process.  The tuning database goes to ``--work-dir/<model>``
(reused by later runs with the same dir).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DOCS = os.path.join(ROOT, "docs", "tvm.md")
BEGIN = "<!-- tvm-latency:begin -->"
END = "<!-- tvm-latency:end -->"


def _default_models(tmp: str) -> list[tuple[str, str]]:
    """A small CNN (conv-bn-relu x2, pool, linear), 1x3x32x32, 16 channels, exported inline."""
    import onnx

    from tvm_integration.testing import tiny_cnn_onnx

    model, _ = tiny_cnn_onnx(channels=16, size=32)
    path = os.path.join(tmp, "small_cnn_16ch_32px.onnx")
    onnx.save(model, path)
    return [("small_cnn_16ch_32px", path)]


def bench_model(name: str, path: str, target_spec: str, trials: int, repeat: int, work_dir: str) -> dict:
    import onnx

    from tvm_integration import compile as tc
    from tvm_integration.__main__ import random_inputs
    from tvm_integration.targets import resolve_target
    from tvm_integration.tune import tune_with_report

    target, info = resolve_target(target_spec)
    model = onnx.load(path)
    inputs = random_inputs(model)
    mod = tc.import_onnx(model)
    row: dict = {"model": name, "trials": trials}
    row["ort_ms"] = tc.measure_ort_latency(model, inputs, repeat=repeat)
    ex = tc.build(mod, target)
    ref = tc.run_ort(model, inputs)
    np.testing.assert_allclose(tc.run(ex, inputs)[0], ref[0], rtol=1e-3, atol=1e-4)
    row["tvm_untuned_ms"] = tc.measure_latency(ex, inputs, repeat=repeat)
    row["tvm_tuned_ms"] = None
    if trials > 0:
        db, rep = tune_with_report(
            mod, target, info, work_dir=os.path.join(work_dir, name), trials=trials, progress=False,
            log=lambda m: print("  " + m, file=sys.stderr),
        )
        ext = tc.build(mod, target, database=db)
        np.testing.assert_allclose(tc.run(ext, inputs)[0], ref[0], rtol=1e-3, atol=1e-4)
        row["tvm_tuned_ms"] = tc.measure_latency(ext, inputs, repeat=repeat)
        row["tune_s"] = rep.seconds
        row["tasks"] = len([t for t in rep.tasks if not t.skipped])
        row["tasks_reused"] = rep.tasks_reused
        row["tuned_functions"] = len(ext.tuned_functions)
        est = rep.estimated_total_us()
        row["sum_task_best_us"] = est
    return row


def format_table(rows: list[dict]) -> str:
    head = "| model | ORT (ms) | TVM untuned (ms) | TVM tuned (ms) | trials | tuning (s) | tuned kernels | sum of per-task best (ms) |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    lines = [head, sep]

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    for r in rows:
        kern = "-" if "tasks" not in r else f"{r.get('tuned_functions', 0)}/{r['tasks']}"
        est = r.get("sum_task_best_us")
        lines.append(
            f"| {r['model']} | {f(r['ort_ms'])} | {f(r['tvm_untuned_ms'])} | {f(r['tvm_tuned_ms'])} "
            f"| {r['trials']} | {f(r.get('tune_s'), '{:.0f}')} | {kern} | {f(None if est is None else est / 1e3)} |"
        )
    return "\n".join(lines)


def machine_line(target_spec: str, repeat: int) -> str:
    from tvm_integration.targets import host_cpu_name

    try:
        import tvm

        tv = tvm.__version__
    except Exception:  # pragma: no cover
        tv = "?"
    return (
        f"Measured here on {_dt.date.today().isoformat()}: {platform.machine()} host, "
        f"LLVM cpu `{host_cpu_name()}`, {os.cpu_count()} cores (shared machine, other jobs running), "
        f"apache-tvm {tv}, target `{target_spec}`, median of {repeat} runs."
    )


def write_docs(text: str, path: str = DOCS) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    if os.path.exists(path):
        doc = open(path).read()
        if BEGIN in doc and END in doc:
            pre, rest = doc.split(BEGIN, 1)
            _, post = rest.split(END, 1)
            doc = pre + block + post
        else:
            doc = doc.rstrip() + "\n\n## Measured latency\n\n" + block + "\n"
    else:
        doc = "# TVM\n\n## Measured latency\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="ONNX model paths (default: a small CNN exported inline)")
    p.add_argument("--target", default="cpu")
    p.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per model (default 64)")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--work-dir", default=None, help="tuning databases (default: a temp dir)")
    p.add_argument("--write-docs", action="store_true", help=f"replace the measured table in {DOCS}")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or os.path.join(tmp, "tune")
        models = (
            [(os.path.splitext(os.path.basename(m))[0], m) for m in args.models]
            if args.models
            else _default_models(tmp)
        )
        rows = []
        t0 = time.perf_counter()
        for name, path in models:
            print(f"{name}: benchmarking ({args.trials} trials)...", file=sys.stderr)
            rows.append(bench_model(name, path, args.target, args.trials, args.repeat, work_dir))
        total = time.perf_counter() - t0
    table = format_table(rows)
    text = machine_line(args.target, args.repeat) + f" Whole run: {total:.0f} s.\n\n" + table
    print(text)
    if args.write_docs:
        write_docs(text)
        print(f"wrote {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
