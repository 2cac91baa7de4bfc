"""Whole-process wall time and peak memory of `python -m collapse_passes` vs `onnxslim` on the same files.

Each tool runs as a fresh child process (interpreter start and imports included, like a user's
run); peak RSS is that child's ru_maxrss from os.wait4. Linux keeps a process's RSS high-water mark
across exec, so the children are started from a parent that imports nothing heavy (the models are
exported in a separate process first); otherwise every child would report at least the parent's size. Runs are interleaved (collapse_passes,
onnxslim, collapse_passes, ...) in alternating order so machine noise hits both alike; medians
are reported with min-max. collapse_passes runs its verification gate (three random inputs, the default; a `--check 1` row shows what they cost);
onnxslim runs with its defaults (it does not verify).

Cases (ResNet-18 and MobileNetV2 at 224x224, exported with the TorchScript exporter):
- resnet18: no scores (folding / merging clean-ups only), as in issue 10's measurement;
- resnet18_tv: the same on torchvision's ResNet-18 layout (models/resnet_tv.py, 1000 classes);
- resnet18_tv_layer4: torchvision's ResNet-18 with the four ReLUs of layer4 collapsed (a partial collapse:
  verification runs the shared prefix once);
- mobilenet_v2_all: MobileNetV2 with every activation collapsed (scores 0, threshold 0.5).

    python benchmarks/pass_runtime.py [--runs 3] [--cases resnet18,mobilenet_v2_all] [--baseline DIR] [--json F]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import statistics
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DOCS = os.path.join(ROOT, "docs", "pass_runtime.md")


def _export(name: str, path: str, **kw) -> None:
    import torch

    from models import build
    from models.export import export_onnx

    torch.manual_seed(0)
    model = build(name, **kw).eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(model, path, (1, 3, 224, 224), dynamo=False)


def prepare(tmp: str, cases: list[str]) -> dict:
    """case -> (model path, extra collapse_passes args)."""
    out = {}
    if "resnet18" in cases:
        p = os.path.join(tmp, "resnet18.onnx")
        _export("resnet18", p)
        out["resnet18"] = (p, [])
    if "resnet18_tv" in cases:   # torchvision's layout and 1000 classes (46.8 MB)
        p = os.path.join(tmp, "resnet18_tv.onnx")
        _export("resnet18_tv", p)
        out["resnet18_tv"] = (p, [])
    if "resnet18_tv_layer4" in cases:   # a partial collapse: the last stage's four ReLUs
        p = os.path.join(tmp, "resnet18_tv.onnx")
        if not os.path.exists(p):
            _export("resnet18_tv", p)
        keys = ",".join(f"layer4.{i}.relu:{j}" for i in range(2) for j in range(2))
        out["resnet18_tv_layer4"] = (p, ["--collapse", keys])
    if "mobilenet_v2_all" in cases:
        import collapse_passes as cp

        p = os.path.join(tmp, "mobilenet_v2.onnx")
        _export("mobilenet_v2", p)
        keys = {r["key"] for r in cp.list_keys(p)}
        sp = os.path.join(tmp, "mobilenet_v2_scores.json")
        with open(sp, "w") as f:
            json.dump({"scores": {k: 0.0 for k in sorted(keys)}}, f)
        out["mobilenet_v2_all"] = (p, ["--scores", sp, "--threshold", "0.5"])
    return out


def run_child(cmd: list[str], cwd: str) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit status) of one child process, run in `cwd` (not this checkout:
    `python -m` puts the working directory first on sys.path)."""
    # bytecode caching on (as in a user's install: pip compiles onnxslim's; ours is compiled by the
    # untimed warm-up run), whatever this shell says
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.stderr.close()
    if p.returncode != 0:
        print(f"  ! {' '.join(cmd[:4])} ... exited {p.returncode}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024.0, p.returncode  # Linux: ru_maxrss in KiB


def commands(path: str, extra: list[str], out_dir: str, baseline: str | None = None) -> dict:
    py = sys.executable
    slim = shutil.which("onnxslim", path=os.path.dirname(py)) or shutil.which("onnxslim")
    cmds = {
        "collapse_passes": [py, "-m", "collapse_passes", path, "-o", os.path.join(out_dir, "cp.onnx"), "-q", *extra],
        "onnxslim": [slim, path, os.path.join(out_dir, "slim.onnx")] if slim else
                    [py, "-m", "onnxslim", path, os.path.join(out_dir, "slim.onnx")],
    }
    # the same run verified on one random input instead of three: what the verification runs cost
    cmds["collapse_passes --check 1"] = cmds["collapse_passes"] + ["--check", "1"]
    if baseline:  # another checkout of the package (e.g. `git archive HEAD collapse_passes | tar -x -C DIR`)
        cmds["baseline"] = ["env", f"PYTHONPATH={baseline}", py, "-m", "collapse_passes", path,
                            "-o", os.path.join(out_dir, "base.onnx"), "-q", *extra]
    return cmds


def bench(cases: dict, runs: int, out_dir: str, baseline: str | None = None) -> list[dict]:
    rows = []
    for case, (path, extra) in cases.items():
        cmds = commands(path, extra, out_dir, baseline)
        res = {k: {"wall": [], "rss": [], "rc": []} for k in cmds}
        order = list(cmds)
        for tool in order:   # untimed: writes bytecode, warms the page cache for every tool alike
            run_child(cmds[tool], out_dir)
        for r in range(runs):
            for tool in (order if r % 2 == 0 else order[::-1]):   # alternate who goes first
                wall, rss, rc = run_child(cmds[tool], out_dir)
                res[tool]["wall"].append(wall)
                res[tool]["rss"].append(rss)
                res[tool]["rc"].append(rc)
                print(f"  {case:18s} {tool:16s} run {r}: {wall:6.2f} s  {rss:7.1f} MiB  rc {rc}", flush=True)
        for tool, v in res.items():
            rows.append({"case": case, "tool": tool, "wall_median": statistics.median(v["wall"]),
                         "wall_min": min(v["wall"]), "wall_max": max(v["wall"]),
                         "rss_median": statistics.median(v["rss"]), "rss_max": max(v["rss"]),
                         "ok": all(rc == 0 for rc in v["rc"]), "runs": runs,
                         "size_mb": os.path.getsize(path) / 2 ** 20})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | tool | wall s, median (min-max) | peak RSS MiB, median (max) | exit 0 |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['tool']} | {r['wall_median']:.2f} ({r['wall_min']:.2f}-{r['wall_max']:.2f}) "
                     f"| {r['rss_median']:.0f} ({r['rss_max']:.0f}) | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def machine() -> str:
    import onnxruntime

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}, Python "
            f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="resnet18,resnet18_tv,resnet18_tv_layer4,mobilenet_v2_all")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--baseline", default=None, help="also time `python -m collapse_passes` from this source tree")
    ap.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: export into this dir
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.prepare:
        with open(os.path.join(args.prepare, "cases.json"), "w") as f:
            json.dump(prepare(args.prepare, names), f)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--cases", ",".join(names), "--prepare", tmp],
                       check=True)
        with open(os.path.join(tmp, "cases.json")) as f:
            cases = json.load(f)
        rows = bench(cases, args.runs, tmp, args.baseline)
    print(table(rows))
    print(f"machine: {machine()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
