"""Side-by-side onnxruntime CPU latency of versions of the same network, in one run:

  (a) dense   : the exported model, cleaned by onnxslim
  (b) identity: the chosen activations replaced by identity only (what research code produces)
  (c0) collapse_passes without bias-map propagation (each merge keeps its own map Add)
  (c) collapse: collapse_passes output (activations collapsed, BN folded, chains merged, maps carried)
  (d) ideal   : the same collapsed network rebuilt by hand in torch in its ideal merged form
                (each collapsed inverted-residual block one conv, each collapsed MLP one linear;
                not exact at the borders: it has no bias maps)

Models (random weights, random BN statistics so folded biases are nonzero as in a trained net):
CIFAR MobileNetV2 (width 1.0, 32x32) and the torchvision-layout MobileNetV2 (stride-2 stem, 64x64
and 224x224) with both activations of every inverted-residual block collapsed; the Swin-T-style ViT
(dim 96, depth 4) with every MLP GELU collapsed. Batch 1 and 32.
Latency: median of interleaved rounds (each round runs every session once), ORT full graph
optimizations, intra-op threads = all cores; the number of rounds is cut to fit --budget-s per case.
Writes docs/merge_latency.md and docs/img/merge_latency.png.

    python benchmarks/merge_latency.py [--rounds 200] [--batches 1 32] [--models ...] [--no-write]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.core import runtime  # noqa: E402
from models import build  # noqa: E402
from models.export import export_onnx  # noqa: E402


# ------------------------------------------------------------------- the ideal merged forms (d)

class _ConvBlock(nn.Module):
    """A whole collapsed inverted-residual block as one 3x3 conv (residual absorbed)."""

    def __init__(self, block):
        super().__init__()
        cin = block.expand.in_channels if block.has_expand else block.dw.in_channels
        self.conv = nn.Conv2d(cin, block.project.out_channels, 3, block.dw.stride, 1)

    def forward(self, x):
        return self.conv(x)


class _TvConvBlock(nn.Module):
    """A collapsed torchvision inverted residual as one 3x3 conv (residual absorbed)."""

    def __init__(self, block):
        super().__init__()
        self.conv = nn.Conv2d(block.in_channels, block.out_channels, 3, block.stride, 1)

    def forward(self, x):
        return self.conv(x)


def ideal_mobilenet_tv(model: nn.Module) -> nn.Module:
    m = build("mobilenet_v2_tv").eval()
    m.load_state_dict(model.state_dict())
    feats = list(m.features)
    m.features = nn.Sequential(feats[0], *[_TvConvBlock(b) for b in feats[1:-1]], feats[-1])
    return m


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Nonzero BN statistics, as in a trained network (with the defaults every folded bias is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def ideal_mobilenet(model: nn.Module) -> nn.Module:
    m = build("mobilenet_v2", width_mult=1.0).eval()
    m.load_state_dict(model.state_dict())
    feats = list(m.features)
    m.features = nn.Sequential(feats[0], *[_ConvBlock(b) for b in feats[1:]])
    return m


class _LinearMlp(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.fc = nn.Linear(mlp.fc1.in_features, mlp.fc2.out_features)

    def forward(self, x):
        return self.fc(x)


def ideal_swin(model: nn.Module) -> nn.Module:
    m = build("swin_t", dim=96, depth=4, heads=3).eval()
    m.load_state_dict(model.state_dict())
    for blk in m.blocks:
        blk.mlp = _LinearMlp(blk.mlp)
    return m


# ------------------------------------------------------------------------------- measurement

def _export(model, path, shape):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(model, path, shape, dynamo=False)
    return onnx.load(path)


def _session(model):
    # idle sessions must not spin-wait: interleaved sessions would steal each other's cores
    return runtime.session(model, optimize=True, threads=os.cpu_count() or 1)


def time_side_by_side(models: dict, feed: dict, rounds: int, sessions: int = 3, budget_s: float = 1e9) -> tuple[dict, int]:
    """(median ms per variant, rounds run). Each variant gets `sessions` independent onnxruntime sessions
    (one session's kernel/layout choices can be lucky or unlucky); every round runs every session once,
    in shuffled order, so machine noise hits all variants alike. Rounds are cut to fit budget_s (>= 5)."""
    sess = {k: [_session(m) for _ in range(sessions)] for k, m in models.items()}
    t0 = time.perf_counter()
    runtime.time_interleaved(sess, feed, 1, warmup=1, seed=1)  # warm-up, and the cost of one round
    per_round = (time.perf_counter() - t0) / 2
    rounds = int(max(5, min(rounds, budget_s / max(per_round, 1e-6))))
    times = runtime.time_interleaved(sess, feed, rounds, warmup=1, seed=0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}, rounds


CASES = {  # name -> (registry model, builder kwargs, input side, ideal builder)
    "mobilenet_v2": ("mobilenet_v2", dict(width_mult=1.0), 32, ideal_mobilenet),
    "mobilenet_v2_tv_64": ("mobilenet_v2_tv", {}, 64, ideal_mobilenet_tv),
    "mobilenet_v2_tv_224": ("mobilenet_v2_tv", {}, 224, ideal_mobilenet_tv),
    "swin_t": ("swin_t", dict(dim=96, depth=4, heads=3), 32, ideal_swin),
}


def _without_map_propagation(dense, keys):
    """collapse_passes as before bias-map propagation existed: the pass is switched off for this call."""
    from collapse_passes.onnx.passes import propagate_bias_maps as pbm
    from collapse_passes.pipeline import PassResult

    orig = pbm.PropagateBiasMaps.__call__
    pbm.PropagateBiasMaps.__call__ = lambda self, ctx: PassResult(False)
    try:
        return cp.collapse(dense, collapse=keys, check=1)
    finally:
        pbm.PropagateBiasMaps.__call__ = orig


def _map_adds(model) -> int:
    from collapse_passes.onnx.graph import to_graph
    from collapse_passes.onnx.passes.propagate_bias_maps import count_bias_map_adds

    return count_bias_map_adds(to_graph(model))


def variants(name: str, batch: int, tmp: str, calibrate: bool = False) -> tuple[dict, dict, tuple]:
    """calibrate: BN statistics from data (models.tv_init.calibrate_bn) instead of randomize_bn, whose
    MobileNet outputs barely depend on the input (what a check of outputs needs; timing does not)."""
    import onnxslim

    arch, kw, side, make_ideal = CASES[name]
    torch.manual_seed(0)
    if calibrate:
        from models.tv_init import calibrate_bn

        model = calibrate_bn(build(arch, **kw), (8, 3, side, side), batches=2, seed=0)
    else:
        model = randomize_bn(build(arch, **kw).eval())
    ideal = make_ideal(model)
    shape = (batch, 3, side, side)
    dense = _export(model, os.path.join(tmp, f"{name}_{batch}.onnx"), shape)
    keys = [k["key"] for k in cp.list_keys(dense)]
    if arch.startswith("mobilenet"):
        head = "features.18." if arch == "mobilenet_v2_tv" else None
        keys = [k for k in keys if k.startswith("features.") and not k.startswith("features.0.")
                and not (head and k.startswith(head))]
    else:
        keys = [k for k in keys if k.endswith("mlp.act")]
    res = cp.collapse(dense, collapse=keys, check=1)
    old = _without_map_propagation(dense, keys)
    size = {k: {"depth_ops": int(res.report[k]["depth_ops"]), "macs": int(res.report[k]["macs"])} for k in ("before", "after")}
    stats = {"collapsed": len(keys), "merges": len(res.report["merges"]), **size,
             "max_abs_vs_requested": float(res.report["verification"]["against_requested"]["max_abs"]),
             "map_adds": _map_adds(res.model), "map_adds_c0": _map_adds(old.model)}
    return {
        "(a) dense+onnxslim": onnxslim.slim(dense),
        "(b) identity only": res.requested,
        "(c0) without map propagation": old.model,
        "(c) collapse_passes": res.model,
        "(d) ideal by hand": _export(ideal, os.path.join(tmp, f"{name}_{batch}_ideal.onnx"), shape),
    }, stats, shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--sessions", type=int, default=3, help="onnxruntime sessions per variant")
    ap.add_argument("--budget-s", type=float, default=15.0, help="timing budget per model and batch (rounds are cut)")
    ap.add_argument("--note", default="", help="a sentence for the doc about the conditions (e.g. a shared machine)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--docs-only", action="store_true", help="rewrite the doc from docs/merge_latency.json, measure nothing")
    args = ap.parse_args(argv)
    if args.docs_only:
        write_docs(_merge_saved([], args), args)
        return 0
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for b in args.batches:
                models, stats, shape = variants(name, b, tmp)
                feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
                ms, rounds = time_side_by_side(models, feed, args.rounds, args.sessions, args.budget_s)
                rows.append((name, b, ms, stats, rounds))
                base = ms["(a) dense+onnxslim"]
                print(f"{name} batch {b} ({rounds} rounds, map adds c0 {stats['map_adds_c0']} -> c "
                      f"{stats['map_adds']}): " + ", ".join(f"{k} {v:.3f} ms ({base / v:.2f}x)" for k, v in ms.items()),
                      flush=True)
    if not args.no_write:
        write_docs(_merge_saved(rows, args), args)
    return 0


SAVED = os.path.join(ROOT, "docs", "merge_latency.json")


def _merge_saved(rows, args) -> list:
    """Rows of this run replace the saved rows of the same (model, batch); the others are kept (with
    their own date and settings), so a long table can be measured in several short runs."""
    import json

    saved = []
    if os.path.exists(SAVED):
        with open(SAVED) as fh:
            saved = json.load(fh)
    new = [{"model": name, "batch": b, "ms": ms, "stats": st, "rounds": rounds, "sessions": args.sessions,
            "date": time.strftime("%Y-%m-%d %H:%M")} for name, b, ms, st, rounds in rows]
    fresh = {(r["model"], r["batch"]) for r in new}
    merged = [r for r in saved if (r["model"], r["batch"]) not in fresh] + new
    order = {k: i for i, k in enumerate(CASES)}
    merged.sort(key=lambda r: (order.get(r["model"], 99), r["batch"]))
    with open(SAVED, "w") as fh:
        json.dump(merged, fh, indent=1, default=float)
    return merged


KEYS = ("(a) dense+onnxslim", "(b) identity only", "(c0) without map propagation", "(c) collapse_passes",
        "(d) ideal by hand")


def write_docs(rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Merge latency: collapse_passes vs identity-only vs the ideal merged network", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/merge_latency.py` on this machine: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime "
             f"{__import__('onnxruntime').__version__} CPU, full graph optimizations, intra-op threads = {os.cpu_count()}, thread spinning off. "
             "Median latency over interleaved rounds (rounds x onnxruntime sessions per variant, every session once per "
             "round, in shuffled order; rounds cut to a time budget per row). "
             f"Rows measured on {', '.join(sorted({r['date'] for r in rows}))} (the table is assembled from short runs, "
             "docs/merge_latency.json). "
             "Speed-up is relative to (a).", "",
             *([args.note, ""] if args.note else []),
             "- (a) the exported dense model cleaned by onnxslim",
             "- (b) the chosen activations replaced by identity only (what the research code produces)",
             "- (c0) collapse_passes with bias-map propagation switched off (every merge keeps its own map Add)",
             "- (c) collapse_passes output (collapse + BN fold + exact merges + bias maps carried to region ends, verified)",
             "- (d) the same collapsed network rebuilt by hand in torch in its ideal merged form (one conv per "
             "block, no bias maps: not exact at the borders)", "",
             "All models have random weights and random BN statistics (with default statistics every folded bias "
             "is zero and no bias map appears, which hides their cost). "
             "MobileNetV2 (CIFAR): width 1.0, 32x32. MobileNetV2 tv: torchvision layout (stride-2 stem, 1000 classes) "
             "at 64x64 and 224x224. Both activations of every inverted-residual block collapsed (stem and head kept). "
             "Swin-T: the global-attention ViT of models/swin.py, dim 96, depth 4, every MLP GELU collapsed. "
             "'maps' = per-position bias-map Adds left in the graph, (c0) -> (c).", "",
             "| model | batch | rounds x sessions | (a) ms | (b) ms | (c0) ms | (c) ms | (d) ms | (c) vs (a) | (c) / (d) | maps c0 -> c | depth (ops) a -> c | MACs a -> c |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name, b, ms, st, rounds = r["model"], r["batch"], r["ms"], r["stats"], r["rounds"]
        a, bb, c0, c, d = (ms[k] for k in KEYS)
        lines.append(f"| {name} | {b} | {rounds}x{r['sessions']} | {a:.3f} | {bb:.3f} | {c0:.3f} | {c:.3f} | {d:.3f} | {a / c:.2f}x | "
                     f"{c / d:.3f} | {st['map_adds_c0']} -> {st['map_adds']} | "
                     f"{st['before']['depth_ops']} -> {st['after']['depth_ops']} | "
                     f"{st['before']['macs'] / 1e6:.1f}M -> {st['after']['macs'] / 1e6:.1f}M |")
    lines += ["", "Reading the table: (c) vs (b) is what merging adds on top of removing the activations; (c0) vs (c) "
              "is what carrying the bias maps to the end of each linear region buys; (c) / (d) is how close the "
              "automatic, verified result gets to the hand-written ideal (below 1 means faster than the "
              "hand-written network). Sessions run with thread spinning off: with it on, the idle sessions of the "
              "other variants spin on the same cores and the numbers become bimodal.",
              "", "## Bias maps", "",
              "Merging expand -> depthwise -> project into one conv is exact only if the expand conv's bias is added "
              "as a constant per-position map (it reaches the depthwise conv's zero-padded border with less weight). "
              "One Add per merged block cost about 16 % of the torchvision-layout MobileNetV2 at 64x64 (issue 9). "
              "The `bias_maps` pass (collapse_passes/onnx/passes/propagate_bias_maps.py) carries every map through the "
              "following linear ops (conv with its zero padding, residual Add, BN/affine, pooling, Gemm/MatMul: "
              "L(x + M) = L(x) + L0(M), exact), sums them and adds them once per linear-region exit, at the cheapest "
              "point of the chain into the exit (before the head's widening 1x1 conv, not after it), or folds them "
              "into a conv bias where the sum is constant over space. With every block collapsed the torchvision "
              "MobileNetV2 is one linear region from the stem's ReLU6 to the head's, so its 16 maps become one Add on "
              "a 320 x 2 x 2 (64x64 input) or 320 x 7 x 7 (224x224) tensor. The merge planner charges a map Add one "
              "elementwise pass over its tensor plus the per-op overhead, so a merge that needs a map must pay for it.",
              "", "![latency](img/merge_latency.png)", ""]
    with open(os.path.join(ROOT, "docs", "merge_latency.md"), "w") as fh:
        fh.write("\n".join(lines))
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        name, b, ms = r["model"], r["batch"], r["ms"]
        ax.bar(range(len(KEYS)), [ms[k] for k in KEYS],
               color=["tab:gray", "tab:orange", "tab:olive", "tab:green", "tab:blue"])
        ax.set_xticks(range(len(KEYS)))
        ax.set_xticklabels(["a", "b", "c0", "c", "d"])
        ax.set_title(f"{name} b={b}", fontsize=8)
        ax.set_ylabel("ms")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "docs", "img", "merge_latency.png"), dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
