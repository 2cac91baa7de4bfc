"""Whole-process wall time and peak memory of `python -m collapse_passes` vs `onnxslim` on the same files.

Each tool runs as a fresh child process (interpreter start and imports included, like a user's
run); peak RSS is that child's ru_maxrss from os.wait4. Linux keeps a process's RSS high-water mark
across exec, so the children are started from a parent that imports nothing heavy (the models are
exported in a separate process first); otherwise every child would report at least the parent's size. Runs are interleaved (collapse_passes,
onnxslim, collapse_passes, ...) in alternating order so machine noise hits both alike; medians
are reported with min-max. collapse_passes runs its verification gate (three random inputs, the default; a `--check 1` row shows what they cost);
onnxslim runs with its defaults (it does not verify). Two "ORT floor" rows run onnxruntime alone on the input
model (three random inputs, bare process; lowest-memory settings, then with graph optimizations): the least a
tool that verifies with onnxruntime pays.

Cases (ResNet-18 and MobileNetV2 at 224x224, exported with the TorchScript exporter):
- resnet18: no scores (folding / merging clean-ups only), as in issue 10's measurement;
- resnet18_tv: the same on torchvision's ResNet-18 layout (models/resnet_tv.py, 1000 classes);
- resnet18_tv_layer4: torchvision's ResNet-18 with the four ReLUs of layer4 collapsed (a partial collapse:
  verification runs the shared prefix once);
- mobilenet_v2_all: MobileNetV2 with every activation collapsed (scores 0, threshold 0.5).

    python benchmarks/pass_runtime.py [--runs 3] [--cases resnet18,mobilenet_v2_all] [--baseline DIR] [--json F]

--torch: the torch front end instead (collapse_passes.collapse on an nn.Module, docs/torch.md "What a collapse
costs"): each run is a fresh child process that builds the model (seeded), times one collapse() call
(lazy imports included, as a user's first call) and counts the model runs in it (GraphModule and model calls,
fx Interpreter runs such as ShapeProp, and since 2026-11-30 the runs of fx/shared_prefix.py: the input's runs
that keep values and the request's runs from them, partial) and its conv2d calls, which say how much ran;
--baseline DIR runs the same child with DIR's collapse_passes first on sys.path, interleaved. Cases:
resnet50_tv_layer4 (torchvision-layout ResNet-50, layer4.0's three ReLUs),
mobilenet_v3_large_last3 (the last three Hardswish of MobileNetV3-large), both at 1x3x224x224, check=3.

    python benchmarks/pass_runtime.py --torch [--runs 3] [--threads N] [--baseline DIR] [--json F]
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

    from models.tv_init import calibrate_bn

    torch.manual_seed(0)
    # BatchNorm statistics of the model's own activations: with fresh ones a random MobileNetV2 gives the
    # same logits for every input and the verification being timed could not fail
    model = calibrate_bn(build(name, **kw), (2, 3, 224, 224))
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
    # a lower bound for any tool that verifies with onnxruntime: the input model alone, run on three random
    # inputs in a bare process (onnxruntime + numpy, no onnx import, the thriftiest session settings)
    # (one row with the settings that keep memory lowest, one with graph optimizations: the fastest)
    cmds["ORT floor (input x3)"] = [py, os.path.abspath(__file__), "--ort-floor", path]
    cmds["ORT floor optimized"] = [py, os.path.abspath(__file__), "--ort-floor", path, "--ort-optimize"]
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


def ort_floor(path: str, optimize: bool, runs: int = 3) -> None:
    """The --ort-floor child: what running the input model on `runs` random inputs costs on its own, with
    the settings that keep memory lowest (no arena, no memory pattern, glibc's mmap threshold fixed, graph as
    written: measured 2026-11-28 as the least peak RSS of the combinations tried), or with onnxruntime's
    graph optimizations (faster, ~10 MiB more)."""
    import ctypes

    import numpy as np
    import onnxruntime as ort

    ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)   # M_MMAP_THRESHOLD, as `python -m collapse_passes` does
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else
                                   ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) and d > 0 else 1 for d in i.shape],
                                         dtype=np.float32) for i in sess.get_inputs()}
    for _ in range(runs):
        sess.run(None, feeds)


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


# ------------------------------------------------------------------------------ torch front end (--torch)

TORCH_CASES = {
    "resnet50_tv_layer4": ("resnet50_tv", ["layer4.0.relu:0", "layer4.0.relu:1", "layer4.0.relu:2"]),
    "mobilenet_v3_large_last3": ("mobilenet_v3_large", ["features.15.block.0.2", "features.15.block.1.2",
                                                        "features.16.2"]),
}


def torch_child(case: str, tree: str | None, threads: int | None) -> dict:
    """One collapse() of a TORCH_CASES model in this process: seconds and model runs (printed as JSON)."""
    if tree:
        sys.path.insert(0, tree)   # that tree's collapse_passes; the models are this checkout's (the same for all)
    import torch
    from torch import fx

    import collapse_passes as cp
    from models import build

    if threads:
        torch.set_num_threads(threads)
    name, keys = TORCH_CASES[case]
    torch.manual_seed(0)
    model = build(name).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    runs = {"calls": 0, "interpreted": 0}

    def hook(module, args, out):
        if module is model or isinstance(module, fx.GraphModule):
            runs["calls"] += 1

    interp_run = fx.Interpreter.run

    def counted(self, *a, **k):
        runs["interpreted"] += 1
        return interp_run(self, *a, **k)

    conv2d = torch.nn.functional.conv2d

    def conv(*a, **k):   # what the runs compute: a run from a shared prefix (fx/shared_prefix.py) runs few convs
        runs["convs"] = runs.get("convs", 0) + 1
        return conv2d(*a, **k)

    try:   # runs of a graph from a shared prefix, and the input's runs that keep its values (this tree on)
        from collapse_passes.fx import shared_prefix
    except ImportError:
        shared_prefix = None
    if shared_prefix is not None:
        run_graph = shared_prefix._run_graph

        def graph_run(*a, **k):
            runs["graph_runs"] = runs.get("graph_runs", 0) + 1
            return run_graph(*a, **k)

        shared_prefix._run_graph = graph_run
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    fx.Interpreter.run = counted
    torch.nn.functional.conv2d = conv
    t0 = time.perf_counter()
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    seconds = time.perf_counter() - t0
    handle.remove()
    fx.Interpreter.run = interp_run
    torch.nn.functional.conv2d = conv2d
    return {"seconds": seconds, "passed": bool(res.passed), **runs, "threads": torch.get_num_threads(),
            "source": os.path.dirname(os.path.dirname(os.path.abspath(cp.__file__)))}


def torch_bench(cases: list[str], runs: int, baseline: str | None, threads: int | None) -> list[dict]:
    trees = {"collapse_passes": None, **({"baseline": os.path.abspath(baseline)} if baseline else {})}
    rows = []
    for case in cases:
        got = {t: [] for t in trees}
        for r in range(runs):
            for tool in (list(trees) if r % 2 == 0 else list(trees)[::-1]):   # alternate who goes first
                cmd = [sys.executable, os.path.abspath(__file__), "--torch-child", case]
                cmd += ["--tree", trees[tool]] if trees[tool] else []
                cmd += ["--threads", str(threads)] if threads else []
                load = os.getloadavg()[0]
                p = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
                if p.returncode != 0:
                    print(f"  ! {case} {tool}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                one = json.loads(p.stdout.strip().splitlines()[-1])
                one["load"] = load
                got[tool].append(one)
                print(f"  {case:26s} {tool:16s} run {r}: {one['seconds']:6.2f} s  {one['calls']} calls + "
                      f"{one['interpreted']} interpreter runs + {one.get('graph_runs', 0)} shared-prefix runs, "
                      f"{one.get('convs', 0)} conv2d calls  load {load:.1f}  "
                      f"{one['source']}", flush=True)
        for tool, v in got.items():
            if not v:
                continue
            secs = [o["seconds"] for o in v]
            rows.append({"case": case, "tool": tool, "seconds_median": statistics.median(secs),
                         "seconds_min": min(secs), "seconds_max": max(secs), "runs": len(v),
                         "model_runs": v[0]["calls"] + v[0]["interpreted"] + v[0].get("graph_runs", 0),
                         "calls": v[0]["calls"], "interpreted": v[0]["interpreted"],
                         "graph_runs": v[0].get("graph_runs", 0), "convs": v[0].get("convs", 0),
                         "passed": all(o["passed"] for o in v),
                         "threads": v[0]["threads"], "load": [o["load"] for o in v]})
    return rows


def torch_table(rows: list[dict]) -> str:
    lines = ["| case | tree | collapse() s, median (min-max) | model runs (calls + interpreter + shared-prefix) "
             "| conv2d calls | passed |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['tool']} | {r['seconds_median']:.2f} ({r['seconds_min']:.2f}-"
                     f"{r['seconds_max']:.2f}) | {r['model_runs']} ({r['calls']} + {r['interpreted']} + "
                     f"{r.get('graph_runs', 0)}) | "
                     f"{r.get('convs', 0)} | {'yes' if r['passed'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="resnet18,resnet18_tv,resnet18_tv_layer4,mobilenet_v2_all")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--baseline", default=None, help="also time `python -m collapse_passes` from this source tree")
    ap.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: export into this dir
    ap.add_argument("--torch", action="store_true", help="time the torch front end's collapse() instead")
    ap.add_argument("--threads", type=int, default=None, help="--torch: torch.set_num_threads in the children")
    ap.add_argument("--torch-child", default=None, help=argparse.SUPPRESS)  # internal: one timed collapse()
    ap.add_argument("--tree", default=None, help=argparse.SUPPRESS)  # internal: collapse_passes from this tree
    ap.add_argument("--ort-floor", default=None, help=argparse.SUPPRESS)  # internal: the onnxruntime-only row
    ap.add_argument("--ort-optimize", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ort_floor:
        ort_floor(args.ort_floor, args.ort_optimize)
        return 0
    if args.torch_child:
        print(json.dumps(torch_child(args.torch_child, args.tree, args.threads)))
        return 0
    if args.torch:
        names = [c.strip() for c in args.cases.split(",") if c.strip() in TORCH_CASES] or list(TORCH_CASES)
        rows = torch_bench(names, args.runs, args.baseline, args.threads)
        print(torch_table(rows))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
              + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": f"{os.cpu_count()} cores", "rows": rows}, f, indent=1)
        return 0
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
