"""iterative_collapse: score, collapse the lowest site, fine-tune, check accuracy; repeat.

The loop only decides what to collapse. Fine-tuning and evaluation are callables
(fine_tune(model) -> model, evaluate(model) -> float) so any trainer can be plugged in; the defaults
are a plain Adam loop on train_data and top-1 accuracy on val_data.
"""
from __future__ import annotations

import copy
import io
import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CollapseError
from .regularizers import FOLD_ALPHA, LacootTerm, clamp_slopes, prelu_modules, prelu_penalty, prelu_score, remove_blocks, to_prelu
from .sites import OriginalKeys, find_sites, linearize, relocate_padding

METHODS = ("easier", "tlc", "prelu")


@dataclass
class CollapseRun:
    model: nn.Module
    collapsed: list[str]
    history: list[dict]
    baseline_accuracy: float
    accuracy: float
    removed_blocks: list[str] = field(default_factory=list)
    predicted_speedup: float | None = None
    stopped: str = ""


# ------------------------------------------------------------------------------------ data

def _as_pairs(data, name: str):
    """A DataLoader / iterable of (x, y) or an (inputs, labels) tensor pair -> a re-iterable of batches."""
    if data is None:
        return None
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise CollapseError(f"{name}: {len(x)} inputs but {len(y)} labels; give one label per input")
        return _TensorBatches(x, y)
    if hasattr(data, "__iter__"):
        return data
    raise CollapseError(f"{name}: expected a DataLoader or an (inputs, labels) tensor pair, got {type(data).__name__}")


class _TensorBatches:
    def __init__(self, x, y, batch_size: int = 64, seed: int = 0):
        self.x, self.y, self.bs = x, y, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        perm = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(self.x), self.bs):
            idx = perm[i:i + self.bs]
            yield self.x[idx], self.y[idx]


def _cycle(batches):
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise CollapseError("train_data yields no batches")


@torch.no_grad()
def accuracy(model: nn.Module, batches) -> float:
    """Top-1 accuracy over (x, y) batches, model in eval mode."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    if not total:
        raise CollapseError("val_data yields no samples")
    return correct / total


def default_fine_tune(train_batches, steps: int, lr: float = 1e-3, loss_fn=None, optimizer=None,
                      prelu_lambda: float = 0.0, lacoot: LacootTerm | None = None, lacoot_lambda: float = 0.0):
    """fine_tune(model) -> model: `steps` optimiser steps of loss_fn (cross entropy) plus the Layer
    Folding and LaCoOT terms when their lambdas are > 0."""
    loss_fn = loss_fn or F.cross_entropy
    stream = _cycle(train_batches)

    def fine_tune(model: nn.Module) -> nn.Module:
        opt = optimizer(model.parameters()) if optimizer else torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        ctx = lacoot if (lacoot is not None and lacoot_lambda > 0) else None
        if ctx:
            ctx.model = model
            ctx.__enter__()
        try:
            for x, y in itertools.islice(stream, steps):
                loss = loss_fn(model(x), y)
                if prelu_lambda > 0:
                    loss = loss + prelu_lambda * prelu_penalty(model)
                if ctx:
                    loss = loss + lacoot_lambda * ctx.penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if prelu_lambda > 0:
                    clamp_slopes(model)
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
        return model.eval()

    return fine_tune


# ------------------------------------------------------------------------------------ speed-up

class SpeedupPredictor:
    """Predicted speed-up of a torch model vs the original: export to ONNX (in memory), merge with
    collapse_passes.collapse (exact passes only, verified), price report["after"] with the cost model.
    Cached per set of collapsed keys."""

    def __init__(self, example_input: torch.Tensor, cost_model=None):
        from ..algebra.cost import CostModel

        self.x = example_input[:1].detach()
        self.cm = cost_model or CostModel()
        self.cache: dict[frozenset, float] = {}
        self.base: float | None = None

    def cost(self, model: nn.Module, keys=()) -> float:
        k = frozenset(keys)
        if k not in self.cache:
            import warnings

            import onnx

            from ..api import collapse
            from ..speedup import stats_cost

            buf = io.BytesIO()
            m = copy.deepcopy(model).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(m, (self.x,), buf, opset_version=17, dynamo=False, input_names=["input"],
                                  output_names=["logits"])
            res = collapse(onnx.load_from_string(buf.getvalue()), check=1, force=True)
            self.cache[k] = stats_cost(res.report["after"], self.cm)
            if self.base is None:
                self.base = stats_cost(res.report["before"], self.cm)
        return self.cache[k]

    def speedup(self, model: nn.Module, keys=()) -> float:
        c = self.cost(model, keys)
        return self.base / c


# ------------------------------------------------------------------------------------ the loop

def _site_scores(model, method, score_batches, sites) -> dict[str, float]:
    if method == "prelu":
        pre = prelu_modules(model)
        return {s.key: prelu_score(pre[s.path]) for s in sites if s.path in pre and s.calls == 1}
    from ..scores.torch_hooks import module_scores

    res = module_scores(model, method, calib_batches=score_batches)
    if method == "tlc" and not any(isinstance(d, dict) and d.get("source") == "bn" for d in res.details.values()):
        raise CollapseError("method tlc scores activations from the BatchNorm before them, and this model has no "
                            "BatchNorm feeding an activation; use method='easier' (data-driven) instead")
    out = {}
    for s in sites:
        v = res.scores.get(s.key, res.scores.get(s.path))
        if v is not None:
            out[s.key] = float(v)
    return out


def iterative_collapse(model: nn.Module, method: str = "easier", train_data=None, val_data=None, *,
                       max_accuracy_drop: float = 0.01, target_speedup: float | None = None,
                       max_rounds: int | None = None, steps_per_round: int = 50, pretrain_steps: int = 0,
                       lr: float = 1e-3, loss_fn=None, optimizer=None,
                       fine_tune: Callable | None = None, evaluate: Callable | None = None,
                       score_batches: int = 4, relocate: bool = True, prelu_lambda: float = 1e-2,
                       fold_alpha: float = FOLD_ALPHA, lacoot_lambda: float = 0.0, remove_blocks_below: float | None = None,
                       blocks: list[str] | None = None, predict: bool = True, cost_model=None, patience: int = 0,
                       log: Callable | None = None) -> CollapseRun:
    """Collapse activation sites one per round, lowest score first, while accuracy holds.

    Round: score the remaining sites (method easier / tlc on training batches; prelu = Layer Folding
    slopes, where only sites with alpha >= fold_alpha are candidates), collapse the lowest (padding
    relocated so the later merge is exact), fine-tune, evaluate. Stop when the accuracy falls more
    than max_accuracy_drop below the original's (that round is rolled back), when the predicted
    speed-up reaches target_speedup (sites whose collapse buys no predicted speed-up are skipped), or
    after max_rounds (patience=k: a rolled-back site is skipped and the loop goes on, stopping at the
    (k+1)-th roll-back). method='prelu' first swaps ReLU-likes for PReLU and trains pretrain_steps with
    the |1 - alpha^2| penalty. lacoot_lambda > 0 adds the LaCoOT term to the default fine-tuning;
    remove_blocks_below=T then replaces residual blocks whose score <= T by their skip.
    The input model is not modified (a deep copy is trained); it must be in eval mode.
    """
    name = str(method).strip().lower()
    if name not in METHODS:
        raise CollapseError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise CollapseError(f"iterative_collapse expects a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise CollapseError("the model is in training mode; call model.eval() first (scores and the baseline "
                            "accuracy are taken in eval mode)")
    if max_accuracy_drop < 0:
        raise CollapseError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}")
    say = log or (lambda *_: None)
    train_b = _as_pairs(train_data, "train_data")
    val_b = _as_pairs(val_data, "val_data")
    if evaluate is None:
        if val_b is None:
            raise CollapseError("give val_data (or an evaluate callable) to measure accuracy")
        evaluate = lambda m: accuracy(m, val_b)  # noqa: E731
    model = copy.deepcopy(model).eval()
    base_acc = float(evaluate(model))
    say(f"baseline accuracy {base_acc:.4f}")
    first = next(iter(train_b)) if train_b is not None else None
    lacoot = LacootTerm(model, blocks) if (lacoot_lambda > 0 or remove_blocks_below is not None) else None
    if fine_tune is None:
        if train_b is None:
            raise CollapseError("give train_data (or a fine_tune callable)")
        fine_tune = default_fine_tune(train_b, steps_per_round, lr, loss_fn, optimizer,
                                      prelu_lambda if name == "prelu" else 0.0, lacoot, lacoot_lambda)
    if name == "prelu":
        if not prelu_modules(model) and not to_prelu(model):
            raise CollapseError("method prelu needs ReLU / ReLU6 / LeakyReLU / PReLU modules; the model has none")
    if (name == "prelu" or lacoot_lambda > 0) and pretrain_steps:
        # the regularised phase runs the default trainer with the term when there is training data; a user
        # trainer without data is called instead (it adds prelu_penalty / LacootTerm itself)
        ft = fine_tune if train_b is None else default_fine_tune(
            train_b, pretrain_steps, lr, loss_fn, optimizer, prelu_lambda if name == "prelu" else 0.0, lacoot,
            lacoot_lambda)
        model = ft(model)
        say(f"regularised training ({pretrain_steps} steps): accuracy {evaluate(model):.4f}")
    predictor = None
    if (predict or target_speedup) and first is not None:
        predictor = SpeedupPredictor(first[0], cost_model)
    if target_speedup is not None and predictor is None:
        raise CollapseError("target_speedup needs train_data (an example input to export the model)")
    batches = [b[0] for b in itertools.islice(iter(train_b), score_batches)] if train_b is not None else None

    collapsed: list[str] = []
    history: list[dict] = []
    skipped: set[str] = set()
    failures = 0
    cur_speed = predictor.speedup(model, ()) if predictor else None
    acc = base_acc
    stopped = "no candidate left"
    origin = OriginalKeys(find_sites(model))
    for rnd in itertools.count():
        if max_rounds is not None and rnd >= max_rounds:
            stopped = "max_rounds"
            break
        if target_speedup is not None and cur_speed is not None and cur_speed >= target_speedup:
            stopped = f"target speed-up {target_speedup} reached"
            break
        now = {origin.of(s): s for s in find_sites(model)}   # original key -> site of the current model
        sites = [s for k, s in now.items() if k not in skipped]
        if not sites:   # every site collapsed or skipped
            break
        current = _site_scores(model, name, batches, sites)
        scores = {origin.of(s): current[s.key] for s in sites if s.key in current}
        if name == "prelu":
            scores = {k: v for k, v in scores.items() if v <= 1.0 - fold_alpha}
        if not scores:
            break
        ranked = sorted(scores, key=lambda k: (scores[k], k))
        choice, trial, speed = None, None, cur_speed
        for key in ranked:
            cand = _collapse_one(model, now[key].key, relocate)
            if predictor is not None:
                speed = predictor.speedup(cand, collapsed + [key])
                if target_speedup is not None and speed <= cur_speed * (1 + 1e-6):
                    skipped.add(key)
                    history.append({"round": rnd, "key": key, "score": scores[key], "accuracy": None,
                                    "predicted_speedup": speed, "action": "skipped: no predicted speed-up"})
                    say(f"round {rnd}: skip {key} (predicted speed-up {speed:.3f}x, no gain)")
                    continue
            choice, trial = key, cand
            break
        if choice is None:
            stopped = "no candidate buys a predicted speed-up"
            break
        trial = fine_tune(trial)
        trial.eval()
        a = float(evaluate(trial))
        row = {"round": rnd, "key": choice, "score": scores[choice], "accuracy": a, "predicted_speedup": speed}
        if base_acc - a > max_accuracy_drop + 1e-9:   # 1.0 - 0.99 is 0.0100000000000000009
            row["action"] = "rolled back: accuracy drop above max_accuracy_drop"
            history.append(row)
            say(f"round {rnd}: {choice} -> accuracy {a:.4f}, drop {base_acc - a:.4f} > {max_accuracy_drop}: rolled back")
            failures += 1
            skipped.add(choice)
            if failures > patience:
                stopped = "accuracy tolerance"
                break
            continue
        row["action"] = "collapsed"
        history.append(row)
        model, acc, cur_speed = trial, a, speed
        origin.collapsed(now[choice])
        collapsed.append(choice)
        say(f"round {rnd}: collapsed {choice} (score {scores[choice]:.4f}) -> accuracy {a:.4f}"
            + (f", predicted speed-up {speed:.3f}x" if speed else ""))

    removed: list[str] = []
    if remove_blocks_below is not None and lacoot is not None and batches:
        lacoot.model = model
        bs = lacoot.block_scores(batches)
        drop = [p for p, v in sorted(bs.items(), key=lambda kv: kv[1]) if v <= remove_blocks_below]
        if drop:
            trial = remove_blocks(copy.deepcopy(model), drop).eval()
            a = float(evaluate(trial))
            ok = base_acc - a <= max_accuracy_drop + 1e-9
            history.append({"round": "blocks", "key": ",".join(drop), "score": max(bs[p] for p in drop),
                            "accuracy": a, "predicted_speedup": None,
                            "action": "blocks removed" if ok else "rolled back: accuracy drop above max_accuracy_drop"})
            if ok:
                model, acc, removed = trial, a, drop
    return CollapseRun(model, collapsed, history, base_acc, acc, removed,
                       predictor.speedup(model, tuple(collapsed) + ("blocks",) + tuple(removed)) if predictor else None,
                       stopped)


def _collapse_one(model: nn.Module, key: str, relocate: bool) -> nn.Module:
    m = linearize(copy.deepcopy(model), [key])
    if relocate:
        relocate_padding(m)
    return m
