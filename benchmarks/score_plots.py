"""Score plots for docs/scores.md: the tool's collapse scores on models trained on sklearn's digits.

    python benchmarks/score_plots.py [--models resnet18 vgg16_bn mobilenet_v2] [--draws 20]

For each model (models.digits.train_digits_model, cached) exported with the TorchScript exporter:
- per-layer EASIER and TLC scores (bar chart),
- test accuracy after collapsing the k lowest-scored activations vs k random ones (mean and range
  over seeded draws) vs the k highest-scored ones, for EASIER and TLC,
- for models with identity residual blocks: accuracy after removing the k lowest-LaCoOT blocks vs
  k random blocks,
- Layer Folding: the ResNet-18's ReLUs swapped for PReLUs (slope 0 = the same function), fine-tuned
  a few epochs with Layer Folding's penalty lambda * sum |1 - alpha^2|, then collapsed by prelu score.

"Collapsing" uses the tool's own definition (collapse_passes.onnx.driver.requested_semantics:
linearize / remove_blocks alone, no merging) and accuracy is measured with onnxruntime on the 400
held-out digits. Writes PNGs to docs/img/ and the tables to docs/scores_results.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnx  # noqa: E402

from collapse_passes.onnx.driver import requested_semantics  # noqa: E402
from collapse_passes.onnx.keys import display_key  # noqa: E402
from collapse_passes.scores import compute_scores  # noqa: E402
from collapse_passes.scores._acts import load_activations  # noqa: E402
from collapse_passes.verify import session  # noqa: E402


def _export(net, path, shape) -> onnx.ModelProto:
    import contextlib
    import io
    import warnings

    from models.export import export_onnx

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(net, path, shape)
    return onnx.load(path)


class Evaluator:
    """Accuracy of the model with a set of activations collapsed / blocks removed (memoised)."""

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, x, y
        self.cache = {}

    def __call__(self, chosen=(), blocks=()) -> float:
        key = (frozenset(chosen), frozenset(blocks))
        if key not in self.cache:
            m = requested_semantics(self.model, set(chosen), remove_blocks=set(blocks)) if key != (frozenset(), frozenset()) \
                else self.model
            sess = session(m, optimize=True)
            name = sess.get_inputs()[0].name
            pred = [int(np.argmax(sess.run(None, {name: self.x[i:i + 1]})[0])) for i in range(len(self.x))]
            self.cache[key] = float(np.mean(np.asarray(pred) == self.y))
        return self.cache[key]


def curve(ev: Evaluator, order: list, ks, to_arg) -> list[float]:
    return [ev(**to_arg(order[:k])) for k in ks]


def random_curve(ev: Evaluator, keys: list, ks, draws: int, to_arg, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for k in ks:
        accs = [ev(**to_arg(list(rng.choice(keys, k, replace=False)))) for _ in range(draws)]
        out.append((float(np.mean(accs)), float(np.min(accs)), float(np.max(accs))))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(name, results: dict, path):
    plt = _plt()
    keys = list(next(iter(results.values())).scores)
    fig, ax = plt.subplots(figsize=(max(6, 0.42 * len(keys)), 3.6))
    w = 0.8 / len(results)
    for i, (m, r) in enumerate(results.items()):
        ax.bar(np.arange(len(keys)) + (i - (len(results) - 1) / 2) * w, [r.scores[k] for k in keys], w,
               label=f"{m} ({r.variant})")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("score (lower = more collapsed)")
    ax.set_title(f"{name} on digits: per-activation scores")
    lo = min(min(r.scores.values()) for r in results.values())
    ax.set_ylim(max(0.0, lo - 0.05) if lo > 0.5 else 0.0, 1.01)  # trained nets score near 1: zoom in
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(title, ks, curves: dict, rnd, path, xlabel):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    mean = [r[0] for r in rnd]
    ax.fill_between(ks, [r[1] for r in rnd], [r[2] for r in rnd], color="0.85", label="random (range)")
    ax.plot(ks, mean, "k--", label="random (mean)")
    for label, ys in curves.items():
        ax.plot(ks, ys, marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (400 digits)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(ks, curves: dict, rnd) -> list[str]:
    lines = ["| k | " + " | ".join(curves) + " | random mean (min-max) |",
             "|---|" + "---|" * (len(curves) + 1)]
    for i, k in enumerate(ks):
        lines.append(f"| {k} | " + " | ".join(f"{curves[c][i]:.3f}" for c in curves) +
                     f" | {rnd[i][0]:.3f} ({rnd[i][1]:.2f}-{rnd[i][2]:.2f}) |")
    return lines


def activation_experiment(name, model, calib, ev, draws, img, md):
    _, acts = load_activations(model)
    anchor = {display_key(a): a.name for a in acts}
    keys = list(anchor)
    to_arg = lambda ks_: {"chosen": [anchor[k] for k in ks_]}  # noqa: E731
    results = {}
    for m in ("easier", "tlc"):
        t = time.perf_counter()
        results[m] = compute_scores(m, model, calib=calib)
        print(f"  {m}: {time.perf_counter() - t:.2f}s  {results[m].notes[0][:90]}")
    plot_scores(name, results, os.path.join(img, f"scores_{name}.png"))
    ks = list(range(0, min(len(keys), 12) + 1))
    curves = {f"{m} lowest first": curve(ev, [k for k, _ in r.ranked()], ks, to_arg) for m, r in results.items()}
    curves["easier highest first"] = curve(ev, [k for k, _ in results["easier"].ranked()][::-1], ks, to_arg)
    rnd = random_curve(ev, keys, ks, draws, to_arg)
    plot_curves(f"{name} on digits: collapse k activations (no fine-tuning)", ks, curves, rnd,
                os.path.join(img, f"collapse_vs_random_{name}.png"), "activations collapsed (k)")
    auc = {c: float(np.mean(v[1:])) for c, v in curves.items()}
    md += [f"### {name}", "", f"![scores](img/scores_{name}.png)", "",
           f"![collapse vs random](img/collapse_vs_random_{name}.png)", "",
           f"{len(keys)} activations; baseline accuracy {ev():.3f}; random: {draws} seeded draws per k. "
           f"Mean accuracy over k = 1..{ks[-1]}: " +
           ", ".join(f"{c} {v:.3f}" for c, v in auc.items()) +
           f", random {np.mean([r[0] for r in rnd[1:]]):.3f}.", ""] + table(ks, curves, rnd) + [""]


def block_experiment(name, model, calib, ev, draws, img, md):
    res = compute_scores("lacoot", model, calib=calib)
    keys = list(res.scores)
    to_arg = lambda ks_: {"blocks": list(ks_)}  # noqa: E731
    ks = list(range(0, len(keys) + 1))
    ranked = [k for k, _ in res.ranked()]
    curves = {"lacoot lowest first": curve(ev, ranked, ks, to_arg), "lacoot highest first": curve(ev, ranked[::-1], ks, to_arg)}
    rnd = random_curve(ev, keys, ks, draws, to_arg)
    plot_curves(f"{name} on digits: remove k residual blocks (no fine-tuning)", ks, curves, rnd,
                os.path.join(img, f"lacoot_{name}.png"), "identity-skip blocks removed (k)")
    md += [f"### {name}: LaCoOT", "", f"![lacoot](img/lacoot_{name}.png)", "",
           "Scores: " + ", ".join(f"`{k}` {v:.3f}" for k, v in res.scores.items()), ""] + table(ks, curves, rnd) + [""]


def prelu_experiment(cache_dir, draws, img, md, epochs: int = 4, lam: float = 0.02, slope_lr: float = 0.02):
    """Layer Folding in miniature: ReLU -> PReLU(0.25), fine-tune with lam * sum |1 - a^2|, score, collapse."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from models.digits import digits_data, evaluate, train_digits_model

    net, _ = train_digits_model("resnet18", cache_dir=cache_dir)
    x_tr, y_tr, x_te, y_te = digits_data("resnet18")
    for path, mod in list(net.named_modules()):
        if isinstance(mod, nn.ReLU):
            parent, _, leaf = path.rpartition(".")
            owner = net.get_submodule(parent) if parent else net
            setattr(owner, leaf, nn.PReLU(num_parameters=1, init=0.25))
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    slopes = [m.weight for m in net.modules() if isinstance(m, nn.PReLU)]
    others = [p for p in net.parameters() if all(p is not s for s in slopes)]
    opt = torch.optim.Adam([{"params": others, "lr": 1e-3}, {"params": slopes, "lr": slope_lr}])
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(net(x_tr[idx]), y_tr[idx]) + lam * sum((1 - s ** 2).abs().sum() for s in slopes)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    acc = evaluate(net, x_te, y_te)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        model = _export(net, os.path.join(d, "p.onnx"), net.digits_input_shape)
    ev = Evaluator(model, x_te.numpy(), y_te.numpy())
    res = compute_scores("prelu", model)
    _, acts = load_activations(model)
    anchor = {display_key(a): a.name for a in acts}
    keys = list(res.scores)
    to_arg = lambda ks_: {"chosen": [anchor[k] for k in ks_]}  # noqa: E731
    ks = list(range(0, min(len(keys), 12) + 1))
    curves = {"prelu lowest first": curve(ev, [k for k, _ in res.ranked()], ks, to_arg)}
    rnd = random_curve(ev, keys, ks, draws, to_arg)
    plot_curves(f"resnet18 + PReLU, {epochs} epochs with the Layer Folding penalty: collapse k PReLUs", ks, curves, rnd,
                os.path.join(img, "prelu_resnet18.png"), "PReLUs collapsed (k)")
    md += ["### resnet18 with PReLU (Layer Folding)", "", "![prelu](img/prelu_resnet18.png)", "",
           f"ReLUs swapped for PReLU(init 0.25), fine-tuned {epochs} epochs with cross-entropy + {lam} * sum |1 - alpha^2| "
           f"(slope learning rate {slope_lr}): accuracy {acc:.3f}. Scores |1 - alpha|: " +
           ", ".join(f"`{k}` {v:.2f}" for k, v in res.ranked()), ""] + table(ks, curves, rnd) + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["resnet18", "vgg16_bn", "mobilenet_v2"])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--calib", type=int, default=256, help="calibration samples (from the training split)")
    p.add_argument("--img", default=os.path.join(ROOT, "docs", "img"))
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "scores_results.md"))
    p.add_argument("--cache-dir", default=None, help="models.digits cache (default ~/.cache/collapse_passes/digits)")
    p.add_argument("--no-prelu", action="store_true")
    args = p.parse_args(argv)
    import tempfile

    import torch

    from models.digits import digits_data, train_digits_model

    torch.set_num_threads(2)
    os.makedirs(args.img, exist_ok=True)
    md = ["# Collapse scores on the digits models (generated)", "",
          "Written by `python benchmarks/score_plots.py`; see [scores.md](scores.md) for the methods. "
          "Models from `models.digits.train_digits_model` (TorchScript export, BN folded), calibration: "
          f"{args.calib} training images (seed 0), accuracy: the 400 held-out test digits, collapsing without "
          "fine-tuning (the tool's requested semantics).", ""]
    t0 = time.perf_counter()
    for name in args.models:
        net, acc = train_digits_model(name, cache_dir=args.cache_dir)
        x_tr, _, x_te, y_te = digits_data(name)
        with tempfile.TemporaryDirectory() as d:
            model = _export(net, os.path.join(d, f"{name}.onnx"), net.digits_input_shape)
        idx = np.random.default_rng(0).choice(len(x_tr), args.calib, replace=False)
        calib = {"input": x_tr.numpy()[idx]}
        ev = Evaluator(model, x_te.numpy(), y_te.numpy())
        print(f"{name}: accuracy {ev():.3f} (training reported {acc:.3f})")
        activation_experiment(name, model, calib, ev, args.draws, args.img, md)
        try:
            block_experiment(name, model, calib, ev, args.draws, args.img, md)
        except Exception as exc:  # no identity residual blocks (VGG)
            print(f"  lacoot: {exc}")
    if not args.no_prelu:
        prelu_experiment(args.cache_dir, args.draws, args.img, md)
    md.append(f"_Generated in {time.perf_counter() - t0:.0f} s._")
    with open(args.md, "w") as fh:
        fh.write("\n".join(md) + "\n")
    print(f"wrote {args.md} and plots under {args.img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
