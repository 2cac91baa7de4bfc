"""iterative_collapse: score, collapse the lowest site, fine-tune, check accuracy; repeat.

The loop only decides what to collapse. Fine-tuning and evaluation are callables
(fine_tune(model) -> model, evaluate(model) -> float) so any trainer can be plugged in; the defaults
are a plain Adam loop on train_data and top-1 accuracy on val_data.
"""
from __future__ import annotations

import copy
import io
import itertools
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CollapseError
from .regularizers import (FOLD_ALPHA, LacootTerm, clamp_slopes, prelu_modules, prelu_penalty, prelu_score, prelu_swap,
                           remove_blocks)
from .sites import OriginalKeys, find_sites, functional_sites, linearize, relocate_padding

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
    notes: list[str] = field(default_factory=list)   # e.g. activations the loop cannot collapse (function calls)


# ------------------------------------------------------------------------------------ data

def _as_pairs(data, name: str, reread: bool = True):
    """A DataLoader / iterable of (x, y) or an (inputs, labels) tensor pair -> a re-iterable of batches."""
    if data is None:
        return None
    if isinstance(data, (str, bytes, os.PathLike)):   # iterated, it gave characters: "batch ... got str"
        raise CollapseError(f"{name}: a path ({str(data)[:80]!r}); the loop takes data, not files: load it first, "
                            "e.g. d = numpy.load(path) and pass (d['input'], d['labels'])")
    if isinstance(data, dict):   # iterating it would give its keys (strings) as "batches"
        raise CollapseError(f"{name}: a dict (keys {list(data)[:4]}); give an (inputs, labels) pair such as "
                            "(d['x'], d['y']), or a DataLoader of (inputs, labels) batches")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (torch.Tensor, np.ndarray)) \
            and isinstance(data[1], (torch.Tensor, np.ndarray, list)):
        # numpy, or tensor inputs with numpy / list labels: same as tensors (a batch is never a bare array, so
        # this is no list of two batches)
        try:
            data = tuple(t if isinstance(t, torch.Tensor) else torch.as_tensor(t) for t in data)
        except (TypeError, ValueError, RuntimeError) as e:   # labels of strings, ragged lists, object arrays
            raise CollapseError(f"{name}: the (inputs, labels) pair does not convert to tensors ({e}); give numeric "
                                "tensors or arrays") from None
    if (name == "train_data" or reread) and isinstance(data, tuple) and len(data) != 2 and data and \
            all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):   # read as batches: "got Tensor"
        raise CollapseError(f"{name}: a tuple of {len(data)} arrays; give (inputs, labels), two of them (extra "
                            "targets or weights: a DataLoader of (inputs, labels) with loss_fn= / evaluate=)")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise CollapseError(f"{name}: {len(x)} inputs but {len(y)} labels; give one label per input")
        return _TensorBatches(x, y, drop_single=name == "train_data")
    if hasattr(data, "__iter__"):
        if reread and iter(data) is data:   # the default trainer / accuracy re-read it every round: empty after one
            raise CollapseError(f"{name}: a one-shot iterator (generator) is exhausted after one round; give a "
                                "DataLoader, a list of (inputs, labels) batches or an (inputs, labels) tensor pair")
        return data
    raise CollapseError(f"{name}: expected a DataLoader or an (inputs, labels) tensor pair, got {type(data).__name__}")


class _TensorBatches:
    """Shuffled batches of an (inputs, labels) pair. drop_single (training): a last batch of one sample is
    left out when there are others (65 samples, batch 64): BatchNorm in train mode cannot normalise one."""

    def __init__(self, x, y, batch_size: int = 64, seed: int = 0, drop_single: bool = False):
        self.x, self.y, self.bs, self.drop_single = x, y, batch_size, drop_single
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        perm = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(self.x), self.bs):
            idx = perm[i:i + self.bs]
            if self.drop_single and len(idx) == 1 and len(self.x) > 1:
                continue
            yield self.x[idx], self.y[idx]


def _cycle(batches):
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise CollapseError("train_data yields no batches")


def _check_class_labels(y, out, what: str):
    """Labels of every batch (not only the first, which _probe checks before training) must be class
    indices of `out`: cross entropy raises IndexError on them, top-1 would count them wrong silently.
    Returns y as int64 (cross entropy rejects int32 / int16 targets)."""
    n = out.shape[1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    if isinstance(y, torch.Tensor) and len(y) and n is not None and (int(y.min()) < 0 or int(y.max()) >= n):
        raise CollapseError(f"{what}: labels must lie in [0, {n}) (the model has {n} outputs), got a batch with "
                            f"{int(y.min())}..{int(y.max())}")
    if isinstance(y, torch.Tensor) and not y.dtype.is_floating_point and y.dtype not in (torch.bool, torch.int64):
        y = y.long()
    return y


def _nonfinite(t) -> bool:
    """Whether a floating tensor holds NaN / Inf (integer inputs, token ids, never do)."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())


def _example_inputs(first, val_b):
    """Inputs of one batch, to size the convs (padding relocation asks the merge planner) and to export the
    model (predictions): the first training batch's, else the first validation batch's. Without train_data (a
    user trainer) the loop relocated every chain, merged or not, and predicted nothing, though val_data held
    inputs of the same kind."""
    if first is not None:
        return first[0]
    if isinstance(val_b, _TensorBatches):
        return val_b.x[:val_b.bs]
    if val_b is None or iter(val_b) is val_b:   # a one-shot iterator: reading it would eat a batch
        return None
    b = next(iter(val_b), None)
    return b[0] if isinstance(b, (tuple, list)) and len(b) == 2 else None


def _first_sample(x):
    """Sample 0 of a batch's inputs, keeping the batch axis: a tensor, or a tuple / list / dict of them (the
    loop calls model(inputs) with one argument, which may be structured)."""
    if isinstance(x, torch.Tensor):
        return x[:1].detach()
    if isinstance(x, dict):
        return {k: _first_sample(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        items = [_first_sample(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)   # a namedtuple takes fields
    return x


class Diverged(CollapseError):
    """Fine-tuning produced a non-finite loss or non-finite weights. In a round the loop rolls the round
    back (the collapse or the learning rate made training diverge); before any round (the input model, the
    regularised phase) and when the batch's inputs themselves hold NaN / Inf it is the user's one line."""

    def __init__(self, msg: str, data: bool = False):
        super().__init__(msg)
        self.data = data


def _counts(model: nn.Module, batches) -> tuple[int, int, int]:
    """(correct, total, rows with non-finite logits) over (x, y) batches, model in eval mode. A row of NaN
    logits is wrong: argmax of NaN is index 0, which would count as right for every class-0 sample (a model
    whose weights went NaN scored about 1/classes and could pass a loose tolerance)."""
    model.eval()
    correct = total = bad = 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            _check_class_labels(y, out, "val_data")
            ok = torch.isfinite(out).all(1) if out.is_floating_point() else \
                torch.ones(len(out), dtype=torch.bool, device=out.device)
            correct += int(((out.argmax(1) == y) & ok).sum())
            bad += int((~ok).sum())
            total += len(y)
    if not total:
        raise CollapseError("val_data yields no samples")
    return correct, total, bad


def accuracy(model: nn.Module, batches) -> float:
    """Top-1 accuracy over (x, y) batches, model in eval mode (rows of non-finite logits count as wrong).
    Takes what val_data takes: an (inputs, labels) pair too (iterated as batches, it unpacked the inputs
    tensor: "too many values to unpack", or with two samples scored sample 1 as sample 0's labels)."""
    correct, total, _ = _counts(model, _as_pairs(batches, "batches", reread=False))
    return correct / total


def default_fine_tune(train_batches, steps: int, lr: float = 1e-3, loss_fn=None, optimizer=None,
                      prelu_lambda: float = 0.0, lacoot: LacootTerm | None = None, lacoot_lambda: float = 0.0):
    """fine_tune(model) -> model: `steps` optimiser steps of loss_fn (cross entropy) plus the Layer
    Folding and LaCoOT terms when their lambdas are > 0."""
    default_loss = loss_fn is None
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
            for step, (x, y) in enumerate(itertools.islice(stream, steps)):
                try:
                    out = model(x)
                except ValueError as e:   # BatchNorm in train mode on one sample: the probe ran in eval mode
                    if "Expected more than 1 value per channel" not in str(e):
                        raise
                    raise CollapseError(f"train_data: a batch of {len(x)} sample(s) reaches a BatchNorm in training "
                                        "mode, which needs at least 2; give batches of 2 or more (DataLoader "
                                        "drop_last=True)") from None
                if default_loss:
                    y = _check_class_labels(y, out, "train_data")
                loss = loss_fn(out, y)
                if isinstance(loss, torch.Tensor) and not loss.requires_grad and \
                        not any(p.requires_grad for p in model.parameters()):
                    raise CollapseError("fine-tuning: no parameter of the model requires grad (frozen model); "
                                        "unfreeze the layers to fine-tune, or pass fine_tune= / steps_per_round=0")
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                    # backward() would fail deep inside torch ("grad can be implicitly created only for scalar
                    # outputs", "does not require grad")
                    what = (type(loss).__name__ if not isinstance(loss, torch.Tensor) else
                            f"a tensor of shape {tuple(loss.shape)}" if loss.numel() != 1 else "a tensor without grad")
                    raise CollapseError(f"loss_fn must return a scalar loss tensor that depends on the model output, got "
                                        f"{what}; reduce it (.mean()) or leave loss_fn=None for cross entropy")
                if prelu_lambda > 0:
                    loss = loss + prelu_lambda * prelu_penalty(model)
                if ctx:
                    loss = loss + lacoot_lambda * ctx.penalty()
                if not bool(torch.isfinite(loss.detach())):
                    # a NaN / Inf loss makes every weight NaN at opt.step(); the model would still "predict"
                    # (argmax of NaN) and could pass the accuracy check
                    data = any(_nonfinite(t) for t in (x if isinstance(x, (tuple, list)) else (x,)))
                    raise Diverged(
                        f"fine-tuning: the loss is {float(loss.detach())} at step {step} "
                        + ("and the batch's inputs hold NaN / Inf; remove those samples from train_data" if data else
                           f"(the training diverged); lower lr (now {lr:g}) or the lambdas, or check loss_fn"),
                        data=data)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if prelu_lambda > 0:
                    clamp_slopes(model)
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
        if steps:
            _reestimate_bn(model, train_batches)
        return model.eval()

    return fine_tune


#: training batches whose statistics the BatchNorm layers take after the default fine-tuning
BN_BATCHES = 16


@torch.no_grad()
def _reestimate_bn(model: nn.Module, batches, n: int = BN_BATCHES) -> None:
    """Give every BatchNorm that tracks running statistics the mean / variance of its input over the first `n`
    training batches (cumulative average, training mode, no gradients; the momenta are restored), as
    torch.optim.swa_utils.update_bn. 20 steps move torchvision's MobileNetV3 BNs (momentum 0.01) 18% of
    the way to the fine-tuned weights' statistics: the eval-mode accuracy check then refused
    collapses the fine-tuning had absorbed (digits MobileNetV3-Small, both activations of `features.2`,
    20 steps: 88.7% with the stale statistics, 96.7% re-estimated = the dense model's)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    saved = [{k: v.clone() for k, v in m.state_dict().items() if k.startswith(("running_", "num_batches"))}
             for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    used = 0
    try:
        for x, _ in itertools.islice(iter(batches), n):
            try:
                model(x)
                used += 1
            except ValueError as e:   # a batch of one sample: BatchNorm cannot take its statistics
                if "Expected more than 1 value per channel" not in str(e):
                    raise
    finally:
        for m, mo, st in zip(bns, momenta, saved):
            m.momentum = mo
            # nothing seen (no batch ran, or a branch the training batches never reach: an eval-only head, one
            # input kind's path): keep the statistics the training left, not reset_running_stats' 0 / 1
            if not used or not int(m.num_batches_tracked):
                m.load_state_dict(st, strict=False)


# ------------------------------------------------------------------------------------ speed-up

def make_cost_model(cost_model=None):
    """None / "macs" -> CostModel() (MACs + per-op overhead); "measured" -> MeasuredCostModel (each conv /
    gemm signature timed once on onnxruntime CPU, cached); a CostModel instance is used as is."""
    from ..algebra.cost import CostModel

    if cost_model is None or cost_model == "macs":
        return CostModel()
    if cost_model == "measured":
        from ..onnx.measure import MeasuredCostModel

        return MeasuredCostModel()
    if isinstance(cost_model, CostModel):
        return cost_model
    raise CollapseError(f"cost_model must be 'macs', 'measured' or a CostModel, got {cost_model!r}")


class SpeedupPredictor:
    """Predicted speed-up of a torch model vs the original: export to ONNX (in memory), merge with the
    ONNX passes under this predictor's cost model (the planner decides what merges), price the merged
    graph op by op with the same cost model (speedup.graph_cost). Cached per set of collapsed keys.
    The first model priced is the baseline (the loop prices the original model first)."""

    def __init__(self, example_input: torch.Tensor, cost_model=None, required: bool = True):
        self.x = _first_sample(example_input)
        self.cm = make_cost_model(cost_model)
        self.cache: dict[frozenset, float] = {}
        self.base: float | None = None
        # required=False (predict=True only, no target_speedup / prefer_speedup): a model the ONNX exporter
        # or the merge cannot take turns the predictions off (speedup() -> None, `failed` says why)
        self.required, self.failed = required, None

    def merged(self, model: nn.Module):
        """The model exported and merged by the exact ONNX passes under self.cm (not verified: a
        prediction; the result the user gets is merged and verified by collapse_passes.collapse)."""
        import onnx

        from ..core.quiet import exporter_silenced
        from ..onnx.driver import run_passes

        buf = io.BytesIO()
        m = copy.deepcopy(model).eval()
        # the model takes the inputs as one argument (a tensor, or a tuple / dict of them: the exporter flattens
        # it into one ONNX input per tensor; a trailing {} keeps a dict positional)
        from torch.utils._pytree import tree_leaves

        leaves = tree_leaves(self.x)
        names = ["input"] if isinstance(self.x, torch.Tensor) else [f"input_{i}" for i in range(len(leaves))]
        try:   # the TorchScript exporter prints its whole IR graph before raising: the error below says it
            with exporter_silenced():
                torch.onnx.export(m, (self.x, {}) if isinstance(self.x, dict) else (self.x,), buf, opset_version=17,
                                  dynamo=False, input_names=names, output_names=["logits"])
            out, _, _ = run_passes(onnx.load_from_string(buf.getvalue()), set(), merge=True, cost_model=self.cm,
                                   input_shapes={n: list(t.shape) for n, t in zip(names, leaves)
                                                 if isinstance(t, torch.Tensor)})
        except Exception as e:  # noqa: BLE001 - any export / merge failure of the user's model
            raise CollapseError(f"the speed-up prediction exports the model to ONNX and merges it, and that failed "
                                f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}); run without "
                                "target_speedup / prefer_speedup (predict=False turns the prediction off)") from e
        return out

    def cost(self, model: nn.Module, keys=()) -> float:
        from ..speedup import graph_cost

        k = frozenset(keys)
        if k not in self.cache:
            self.cache[k] = graph_cost(self.merged(model), self.cm)
            if self.base is None:
                self.base = self.cache[k]
        return self.cache[k]

    def speedup(self, model: nn.Module, keys=()) -> float | None:
        if self.failed:
            return None
        try:
            c = self.cost(model, keys)
        except CollapseError as e:
            if self.required:
                raise
            self.failed = str(e)
            return None
        from ..speedup import speedup_ratio

        return speedup_ratio(self.base, c)   # a graph that costs nothing (fused activations alone): no ZeroDivision


# ------------------------------------------------------------------------------------ relocation

def _conv_input_spatial(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    """{conv module path: input spatial size} for one forward of x (batch 1)."""
    seen, hooks = {}, []

    def hook(path):
        def record(mod, inp, out):   # returns None: a hook's return value would replace the output
            seen.setdefault(path, tuple(inp[0].shape[2:]))
        return record

    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(hook(path)))
    try:
        with torch.no_grad():
            model.eval()(_first_sample(x))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _conv_params(conv: nn.Conv2d, pads):
    import numpy as np

    from ..algebra.conv import ConvParams

    # a nonzero bias stands for the folded BatchNorm: the planner then prices the bias-map Add that a
    # merge across an inner padding needs (a zero bias needs none)
    w = conv.weight.detach().cpu().float().numpy()   # .cpu(): a model on the GPU
    return ConvParams(w, np.ones(conv.out_channels, np.float32), tuple(conv.stride),
                      tuple(pads) + tuple(pads), tuple(conv.dilation), conv.groups)


def _plan(params, spatial, cm):
    from ..core.chains import plan_conv_chain, plan_cost

    spatials, outs, cur = [], [], tuple(spatial)
    for p in params:
        spatials.append(cur)
        cur = tuple(p.output_spatial(cur))
        outs.append(cur)
    plan = plan_conv_chain(params, spatials, outs, cm)
    return plan, plan_cost(plan, spatials, outs, cm)


def planner_accept(model: nn.Module, example_input: torch.Tensor, cost_model) -> Callable:
    """accept(paths, convs, new_pads) for relocate_padding: relocate a chain only when the merge planner
    (core.chains.plan_conv_chain under cost_model, what the ONNX merge runs) merges the relocated chain
    into one conv AND that conv costs less than the plan of the chain as it is. Otherwise relocation
    would only enlarge the first conv's output and nothing would merge."""
    spatial = _conv_input_spatial(model, example_input)

    def accept(paths, convs, new_pads) -> bool:
        sp = spatial.get(paths[0])
        if sp is None:
            return False
        plan_new, cost_new = _plan([_conv_params(c, p) for c, p in zip(convs, new_pads)], sp, cost_model)
        if plan_new.segments != [(0, len(convs))]:
            return False
        _, cost_old = _plan([_conv_params(c, tuple(c.padding)) for c in convs], sp, cost_model)
        return cost_new < cost_old

    return accept


# ------------------------------------------------------------------------------------ the loop

def _site_scores(model, method, score_batches, sites, whole: set | None = None) -> dict[str, float]:
    """Score per site key. A model torch.fx cannot trace has one site per module (find_sites), while the
    hooks score each call (`path:0`, `path:1`): such a site, whose swap collapses every call, scores as its
    highest call (as a group of sites does). Matching keys only dropped every shared module (the two
    ReLU calls of each torchvision BasicBlock) from the candidates without a word; `whole` collects them."""
    if method == "prelu":
        pre = prelu_modules(model)
        return {s.key: prelu_score(pre[s.path]) for s in sites if s.path in pre and s.calls == 1}
    from ..scores.torch_hooks import module_scores

    # the loop calls model(inputs): module_scores spreads a tuple batch over forward's arguments, so a
    # structured input (a tuple / dict the model takes as one argument) goes in a 1-tuple
    calib = None if score_batches is None else [b if isinstance(b, torch.Tensor) else (b,) for b in score_batches]
    # what the user gives; its sites are modules (find_sites): functional ones are not traced and scored each round
    res = module_scores(model, method, calib_batches=calib, calib_arg="train_data", functional=False)
    if method == "tlc" and not any(isinstance(d, dict) and d.get("source") == "bn" for d in res.details.values()):
        raise CollapseError("method tlc scores activations from the BatchNorm before them, and this model has no "
                            "BatchNorm feeding an activation; use method='easier' (data-driven) instead")
    per_call: dict[str, list] = {}
    for k, v in res.scores.items():
        path, sep, call = k.rpartition(":")
        if sep and call.isdigit():
            per_call.setdefault(path, []).append(v)
    out = {}
    for s in sites:
        v = res.scores.get(s.key, res.scores.get(s.path))
        if v is None and s.calls == 1 and s.key == s.path and len(per_call.get(s.path, ())) > 1:
            v = max(per_call[s.path])
            if whole is not None:
                whole.add(s.path)
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
                       prefer_speedup: bool = False, group_sites: bool = False, min_gain: float = 0.0,
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

    cost_model ('macs' default, 'measured', or a CostModel) prices merges: padding is relocated only
    where the merge planner under it merges the relocated chain (planner_accept), and predictions
    price the merged graph with it. prefer_speedup=True tries first, lowest score first, the candidates
    whose collapse buys a predicted speed-up, then the others (target_speedup skips the others).
    group_sites=True also offers all remaining sites of one parent module as one candidate (both
    ReLU6 of an inverted residual: alone neither buys a merge, together the block becomes one conv);
    a group's score is its highest member score. min_gain: a candidate buys a speed-up only if it lowers
    the predicted cost by more than this fraction (0.01: 1%), so slivers of gain do not jump the queue.
    """
    name = str(method).strip().lower()
    if name not in METHODS:
        raise CollapseError(f"unknown method {method!r}; valid: {', '.join(METHODS)}"
                            + (" (LaCoOT is a term on any of them: lacoot_lambda= and remove_blocks_below=)"
                               if name == "lacoot" else ""))
    if isinstance(model, torch.export.ExportedProgram) or _exported_module(model):
        # ep.module() refuses .eval() ("not supported yet"), so "call model.eval() first" was a dead end; and the
        # program is no model to fine-tune: BatchNorm frozen in its inference form, activations as function calls
        # (no module to swap), shapes guarded to the exported batch
        raise CollapseError("iterative_collapse fine-tunes an nn.Module, and a torch.export program (an ExportedProgram "
                            "or its .module()) cannot be trained here (BatchNorm frozen, activations as function calls, "
                            "the exported batch size guarded): pass the nn.Module it was exported from, or collapse the "
                            "program itself with collapse_passes.collapse(program, ...)")
    if not isinstance(model, nn.Module):
        raise CollapseError(f"iterative_collapse expects a torch.nn.Module, got {type(model).__name__}")
    from ..fx.api import refuse_torchscript, unwrap_compiled

    # torch.compile(model): the loop trains and edits the module it wraps (the wrapper's hooks broke dynamo:
    # "already tracked for mutation"; its keys would start with `_orig_mod.`); compile the result again
    model = unwrap_compiled(model)
    refuse_torchscript(model, onnx_way_out=False)   # a scripted submodule: hooks cannot be registered on it
    if model.training:
        raise CollapseError("the model is in training mode; call model.eval() first (scores and the baseline "
                            "accuracy are taken in eval mode)")
    (max_accuracy_drop, steps_per_round, pretrain_steps, lr, max_rounds, patience, score_batches, prelu_lambda,
     fold_alpha, lacoot_lambda, target_speedup, min_gain, remove_blocks_below) = _check_numbers(
        max_accuracy_drop=max_accuracy_drop, steps_per_round=steps_per_round, pretrain_steps=pretrain_steps, lr=lr,
        max_rounds=max_rounds, patience=patience, score_batches=score_batches, prelu_lambda=prelu_lambda,
        fold_alpha=fold_alpha, lacoot_lambda=lacoot_lambda, target_speedup=target_speedup, min_gain=min_gain,
        remove_blocks_below=remove_blocks_below)
    if evaluate is None and 1 < max_accuracy_drop < float("inf"):
        # the default accuracy is a fraction: 1.5 read as "1.5 points" turned the check off without a word (inf
        # says "any drop" as 1.0 does, and no number of points is read from it)
        raise CollapseError(f"max_accuracy_drop is a fraction of top-1 accuracy (0.01 = 1 point), got "
                            f"{max_accuracy_drop:g}, which no drop can exceed: pass {max_accuracy_drop / 100:g} for "
                            f"{max_accuracy_drop:g} points (1.0 accepts any drop)")
    if isinstance(blocks, (str, bytes)) or (blocks is not None and not hasattr(blocks, "__iter__")):
        # a str would be iterated letter by letter ("no submodule 'l'")
        raise CollapseError(f"blocks must be a list of module paths, got {type(blocks).__name__} {blocks!r}; "
                            f"write blocks=[{blocks!r}]")
    for what, fn in (("loss_fn", loss_fn), ("fine_tune", fine_tune), ("evaluate", evaluate), ("log", log),
                     ("optimizer", optimizer)):
        if fn is not None and not callable(fn):   # called deep in the loop: a TypeError traceback there
            way = ("a factory of the parameters: optimizer=torch.optim.SGD or lambda params: torch.optim.SGD(params, "
                   "lr=0.01), not an optimizer built on the input model (the loop trains copies)"
                   if isinstance(fn, torch.optim.Optimizer) else "a function")
            shown = f" {fn!r}"[:60] if isinstance(fn, (str, bytes, int, float)) else ""   # an optimizer's repr is a page
            raise CollapseError(f"{what} must be callable ({way}), got {type(fn).__name__}{shown}")
    say = log or (lambda *_: None)
    train_b = _as_pairs(train_data, "train_data", reread=fine_tune is None)
    val_b = _as_pairs(val_data, "val_data", reread=evaluate is None)
    model = copy.deepcopy(model).eval()
    for data, what in ((train_b, "train_data"), (val_b if evaluate is None else None, "val_data")):
        _probe(model, data, what, class_labels=what == "val_data" or (fine_tune is None and loss_fn is None))
    notes: list[str] = []
    shared_note = None
    if evaluate is None and _shares_samples(train_b, val_b):
        # every accuracy check (and res.accuracy) would then be on images the loop trains on: the test drop
        # after such a run is larger than the tolerance suggests (docs/training.md, first version of the loop)
        shared_note = ("val_data shares samples with train_data (the same tensors or dataset): the accuracy checks "
                       "and res.accuracy are not on held-out data; give val_data the loop does not train on")
        say(shared_note)
    fn_sites = functional_sites(model)
    if fn_sites:
        shown = ", ".join(fn_sites[:6]) + (", ..." if len(fn_sites) > 6 else "")
        if not find_sites(model):   # nothing the loop can collapse: one line, not an unchanged model and "no candidate"
            raise CollapseError(f"the model's collapsible activations are function calls ({shown}: F.relu(x) and the "
                                "like in forward), and the loop swaps activation modules; use nn.ReLU-style modules, or "
                                "export the model and run collapse_passes on the ONNX file (--method easier)")
        notes.append(f"{len(fn_sites)} activation(s) are function calls, not modules, and were not considered: {shown}")
        say(notes[-1])
    if blocks is not None:
        if any(not isinstance(p, str) or not p for p in blocks):
            # "" is the model itself: "removing" it would replace the whole network by its input
            raise CollapseError(f"blocks: {next(p for p in blocks if not isinstance(p, str) or not p)!r} is no "
                                "submodule path; give the residual blocks' paths (model.named_modules() names)")
        missing = [p for p in blocks if not _has_submodule(model, p)]
        if missing:
            raise CollapseError(f"blocks: no submodule {missing[0]!r} in the model; give module paths "
                                "(model.named_modules() names) or leave blocks=None to find residual blocks")
    evaluate_is_default = evaluate is None
    if evaluate is None:
        if val_b is None:
            raise CollapseError("give val_data (or an evaluate callable) to measure accuracy")
        evaluate = lambda m: accuracy(m, val_b)  # noqa: E731
    evaluate = _checked_evaluate(evaluate)
    if fine_tune is not None:
        fine_tune = _checked_fine_tune(fine_tune)
    if fine_tune is None and train_b is not None:
        _probe_loss(model, train_b, loss_fn)
    if evaluate_is_default:
        correct, n, bad = _counts(model, val_b)
        if bad:   # every accuracy, the baseline's included, would count those rows wrong whatever is collapsed
            raise CollapseError(f"val_data: the model's output is NaN / Inf on {bad} of {n} samples before any "
                                "change (inputs holding NaN / Inf?); remove those samples from val_data")
        base_acc = correct / n
    else:
        base_acc = float(evaluate(model))
    say(f"baseline accuracy {base_acc:.4f}")
    first = next(iter(train_b), None) if train_b is not None else None
    if train_b is not None and first is None:
        raise CollapseError("train_data yields no batches; give at least one (inputs, labels) batch")
    lacoot = LacootTerm(model, blocks) if (lacoot_lambda > 0 or remove_blocks_below is not None) else None
    if fine_tune is None:
        if train_b is None:
            raise CollapseError("give train_data (or a fine_tune callable)")
        fine_tune = default_fine_tune(train_b, steps_per_round, lr, loss_fn, optimizer,
                                      prelu_lambda if name == "prelu" else 0.0, lacoot, lacoot_lambda)
    start_acc = base_acc   # the accuracy of `model` as the rounds start (what the result reports if none is kept)
    predictor = None
    example = _example_inputs(first, val_b)
    if (predict or target_speedup or prefer_speedup) and example is not None:
        predictor = SpeedupPredictor(example, cost_model, required=bool(target_speedup or prefer_speedup))
    if name == "prelu":
        if not prelu_modules(model):
            before = copy.deepcopy(model) if predictor is not None else None   # the swap edits in place
            model, swapped = prelu_swap(model)
            if not swapped:
                raise CollapseError("method prelu needs ReLU / ReLU6 / LeakyReLU / PReLU modules; the model has none")
            if before is not None:
                # the baseline of every predicted speed-up is the input model, priced before its ReLUs became
                # PReLUs: priced after, a PReLU's cost (~350 MACs an element, ReLU's 0) made a result slower than
                # the input report 1.5x and reach target_speedup
                predictor.speedup(before, ("<input model>",))
                del before
        if not pretrain_steps:   # ReLU -> PReLU(0.01) changed the function: measure it
            start_acc = float(evaluate(model))
    if (name == "prelu" or lacoot_lambda > 0) and pretrain_steps:
        # the regularised phase runs the default trainer with the term when there is training data; a user
        # trainer without data is called instead (it adds prelu_penalty / LacootTerm itself)
        ft = fine_tune if train_b is None else default_fine_tune(
            train_b, pretrain_steps, lr, loss_fn, optimizer, prelu_lambda if name == "prelu" else 0.0, lacoot,
            lacoot_lambda)
        model = ft(model).eval()   # a user trainer may leave train mode (BatchNorm batch statistics)
        if _nonfinite_state(model):
            raise CollapseError(f"the regularised training ({pretrain_steps} steps) left NaN / Inf weights "
                                f"({_nonfinite_state(model)}); lower lr or the lambdas")
        start_acc = float(evaluate(model))
        say(f"regularised training ({pretrain_steps} steps): accuracy {start_acc:.4f}")
    cm = predictor.cm if predictor is not None else make_cost_model(cost_model)
    if prefer_speedup and predictor is None:
        raise CollapseError("prefer_speedup needs train_data or val_data (an example input to export the model)")
    if target_speedup is not None and predictor is None:
        raise CollapseError("target_speedup needs train_data or val_data (an example input to export the model)")
    if example is None and relocate:
        notes.append("no example input (neither train_data nor val_data): the convs cannot be sized, so padding "
                     "is relocated on every chain a collapse joins, merged or not, and nothing is predicted; give "
                     "val_data (or relocate=False)")
        say(notes[-1])
    batches = [b[0] for b in itertools.islice(iter(train_b), score_batches)] if train_b is not None else None

    collapsed: list[str] = []
    history: list[dict] = []
    skipped: set[tuple] = set()        # candidates (tuples of original keys) not to try again
    whole: set[str] = set()            # shared modules of an untraceable model: one candidate each (_site_scores)
    no_gain: dict[tuple, frozenset] = {}   # candidate -> collapsed sites of its parents when it bought nothing
    failures = 0
    cur_speed = predictor.speedup(model, ()) if predictor else None
    acc = start_acc
    stopped = "no candidate left"
    origin = OriginalKeys(find_sites(model))
    if not origin.calls:
        stopped = "the model has no collapsible activation module"
    gate = target_speedup is not None or prefer_speedup

    blocks = _wrapper_blocks(model, [origin.of(s) for s in find_sites(model)])

    def parent(k: str) -> str:   # the block a site belongs to: group_sites' unit, and what `context` looks at
        return blocks.get(k) or k.split(":")[0].rpartition(".")[0]

    def context(cand) -> frozenset:   # what a candidate's gain depends on: collapsed sites next to it
        ps = {parent(k) for k in cand}
        return frozenset(k for k in collapsed if parent(k) in ps)

    spent = base_acc - start_acc > max_accuracy_drop + 1e-9
    if spent:
        # every round is measured against the input's accuracy: none could pass, and the result would carry
        # a drop beyond the tolerance without saying so
        stopped = "accuracy tolerance (before any round)"
        notes.append(f"the {'regularised training' if pretrain_steps else 'ReLU -> PReLU swap'} already dropped the "
                     f"accuracy from {base_acc:.4f} to {start_acc:.4f}, more than max_accuracy_drop; no round was "
                     "tried (lower prelu_lambda / lacoot_lambda / lr, or give more pretrain_steps)")
        say(notes[-1])
    for rnd in itertools.count():
        if spent:
            break
        # the target first: a last round that reached it stopped as "max_rounds", as if the target had been missed
        if target_speedup is not None and cur_speed is not None and cur_speed >= target_speedup:
            stopped = f"target speed-up {target_speedup} reached"
            break
        if max_rounds is not None and rnd >= max_rounds:
            stopped = "max_rounds"
            break
        now = {origin.of(s): s for s in find_sites(model)}   # original key -> site of the current model
        sites = [s for k, s in now.items() if (k,) not in skipped]
        if not sites:   # every site collapsed or skipped
            break
        current = _site_scores(model, name, batches, sites, whole)
        if whole and not any(n.startswith("torch.fx cannot trace") for n in notes):
            shown = ", ".join(sorted(whole)[:4]) + (", ..." if len(whole) > 4 else "")
            notes.append(f"torch.fx cannot trace the model, so a module called several times ({shown}) is one "
                         "candidate: all its calls collapse together, "
                         "scored as its highest call; make forward traceable to collapse the calls one by one")
            say(notes[-1])
        scores = {origin.of(s): current[s.key] for s in sites if s.key in current}
        if name == "prelu":
            scores = {k: v for k, v in scores.items() if v <= 1.0 - fold_alpha}
        if not scores:
            break
        cands = {(k,): v for k, v in scores.items()}
        if group_sites:
            by_parent: dict[str, list] = {}
            for k in sorted(scores, key=lambda k: list(now).index(k)):
                by_parent.setdefault(parent(k), []).append(k)
            cands.update({tuple(ks): max(scores[k] for k in ks) for ks in by_parent.values() if len(ks) > 1})
        ranked = sorted((c for c in cands if c not in skipped), key=lambda c: (cands[c], len(c), c))
        choice, trial, speed, deferred = None, None, cur_speed, []
        for cand in ranked:
            if gate and no_gain.get(cand) == context(cand):
                deferred.append(cand)
                continue
            try:
                trial_m = _collapse_one(model, [now[k].key for k in cand], relocate, cm, example)
            except CollapseError as e:   # this site cannot be edited (a hooked block would be inlined): the others can
                skipped.add(cand)
                history.append({"round": rnd, "key": "+".join(cand), "score": cands[cand], "accuracy": None,
                                "predicted_speedup": None, "action": f"skipped: {e}"})
                say(f"round {rnd}: skip {'+'.join(cand)} ({e})")
                continue
            if predictor is not None:
                speed = predictor.speedup(trial_m, collapsed + list(cand))
                if gate and speed <= cur_speed * (1 + max(min_gain, 1e-6)):
                    no_gain[cand] = context(cand)
                    deferred.append(cand)
                    if target_speedup is not None:
                        skipped.add(cand)
                        history.append({"round": rnd, "key": "+".join(cand), "score": cands[cand], "accuracy": None,
                                        "predicted_speedup": speed, "action": "skipped: no predicted speed-up"})
                        say(f"round {rnd}: skip {'+'.join(cand)} (predicted speed-up {speed:.3f}x, no gain)")
                    continue
            choice, trial = cand, trial_m
            break
        if choice is None and prefer_speedup and target_speedup is None and deferred:
            choice = deferred[0]          # nothing buys a speed-up: the lowest score goes (accuracy decides)
            trial = _collapse_one(model, [now[k].key for k in choice], relocate, cm, example)
            speed = predictor.speedup(trial, collapsed + list(choice))
        if choice is None:
            stopped = "no candidate buys a predicted speed-up" if gate else "no candidate left"
            break
        label = "+".join(choice)
        diverged = None
        try:
            trial = fine_tune(trial)
        except Diverged as e:
            if e.data:   # the data, not the collapse: every round would hit it
                raise
            diverged = str(e)
        if diverged is None and _nonfinite_state(trial):   # a user trainer's NaN weights
            diverged = f"fine-tuning left NaN / Inf weights ({_nonfinite_state(trial)})"
        a = float("nan") if diverged else float(evaluate(trial.eval()))
        row = {"round": rnd, "key": label, "score": cands[choice], "accuracy": None if diverged else a,
               "predicted_speedup": speed}
        if diverged or base_acc - a > max_accuracy_drop + 1e-9:   # 1.0 - 0.99 is 0.0100000000000000009
            row["action"] = (f"rolled back: {diverged}" if diverged else
                             "rolled back: accuracy drop above max_accuracy_drop")
            history.append(row)
            why = diverged or f"accuracy {a:.4f}, drop {base_acc - a:.4f} > {max_accuracy_drop}"
            say(f"round {rnd}: {label} -> {why}: rolled back")
            failures += 1
            skipped.add(choice)
            if failures > patience:
                stopped = "accuracy tolerance"
                break
            continue
        row["action"] = "collapsed"
        history.append(row)
        model, acc, cur_speed = trial, a, speed
        origin.collapsed(*(now[k] for k in choice))
        collapsed.extend(choice)
        say(f"round {rnd}: collapsed {label} (score {cands[choice]:.4f}) -> accuracy {a:.4f}"
            + (f", predicted speed-up {speed:.3f}x" if speed else ""))

    removed: list[str] = []
    if remove_blocks_below is not None and lacoot is not None and batches:
        lacoot.model = model
        bs = lacoot.block_scores(batches)
        unscored = [p for p in lacoot.blocks if p not in bs]
        if unscored:   # its forward hook never saw an output of its input's shape: no skip can replace it
            notes.append(f"remove_blocks_below: block(s) {', '.join(unscored[:6])} not scored (not run, or the output "
                         "shape differs from the input's: no identity skip can replace them)")
            say(notes[-1])
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
                # sites inside a removed block are gone with it
                collapsed = [k for k in collapsed if not any(k == p or k.startswith(p + ".") for p in drop)]
    final_speed = predictor.speedup(model, tuple(collapsed) + ("blocks",) + tuple(removed)) if predictor else None
    if predictor is not None and predictor.failed:
        notes.append("no predicted speed-ups: " + predictor.failed.replace(
            "; run without target_speedup / prefer_speedup (predict=False turns the prediction off)", ""))
    if shared_note:   # first: it qualifies every accuracy in the result
        notes.insert(0, shared_note)
    return CollapseRun(model, collapsed, history, base_acc, acc, removed, final_speed, stopped, notes)


def _wrapper_blocks(model: nn.Module, keys: list) -> dict[str, str]:
    """{site key: block id} for a site that is the only site and the last child of its parent module
    (torchvision's Conv2dNormActivation: `features.2.block.0` = conv, BN, `features.2.block.0.2`) when
    that wrapper has a sibling wrapper next to it: adjacent wrappers are one block, id
    `<grandparent>[<first wrapper>]` (children with no site between them are passed over; one holding
    another site ends the run). By parent module alone each such site was a block of its own, so
    group_sites never offered the two activations of a torchvision MobileNetV2 / V3 or EfficientNet
    block together (alone neither buys a merge). Other sites keep their parent module as block."""
    paths = {k: k.split(":")[0] for k in keys}
    count: dict[str, int] = {}
    for p in paths.values():
        parts = p.split(".")
        for i in range(len(parts) + 1):   # the site's own path too: a bare activation child ends a run
            a = ".".join(parts[:i])
            count[a] = count.get(a, 0) + 1
    mods = dict(model.named_modules())
    wrapper = {}   # wrapper module path -> its one site's key
    for k, p in paths.items():
        w, _, last = p.rpartition(".")
        kids = [n for n, _ in mods[w].named_children()] if w in mods else []
        if w and count.get(w) == 1 and kids and kids[-1] == last:   # conv, bn, act: the wrapper outputs its site
            wrapper[w] = k
    out: dict[str, str] = {}
    for g in {w.rpartition(".")[0] for w in wrapper}:
        if g not in mods:
            continue
        run: list[str] = []
        for name, _ in list(mods[g].named_children()) + [(None, None)]:
            child = f"{g}.{name}" if g and name is not None else name
            n = count.get(child, 0) if child is not None else 2
            if child in wrapper:
                run.append(child)
            elif n:   # a child holding a site that is no wrapper's, or the end: the run ends
                if len(run) > 1:
                    out.update({wrapper[w]: f"{g}[{run[0]}]" for w in run})
                run = []
    return out


def _exported_module(model) -> bool:
    """Whether `model` is an ExportedProgram's module() (torch.export's unlifted _StatefulGraphModule)."""
    return isinstance(model, torch.fx.GraphModule) and \
        any(c.__name__ == "_StatefulGraphModule" for c in type(model).__mro__)


def _check_numbers(**kw) -> list:
    """One CollapseError for a numeric argument out of range (a negative step count, a NaN tolerance, a
    fold threshold outside [0, 1]...), before any training: NaN compares False and would disable the
    accuracy check or the stop silently."""
    import math
    import numbers

    rules = {  # name: (allowed, what to say); None values are allowed where the default is None
        "max_accuracy_drop": (lambda v: v >= 0, ">= 0"),
        "steps_per_round": (lambda v: v >= 0 and float(v).is_integer(), "an integer >= 0"),
        "pretrain_steps": (lambda v: v >= 0 and float(v).is_integer(), "an integer >= 0"),
        "max_rounds": (lambda v: v >= 0 and float(v).is_integer(), "an integer >= 0 (or None)"),
        "patience": (lambda v: v >= 0 and float(v).is_integer(), "an integer >= 0"),
        "score_batches": (lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1"),
        "lr": (lambda v: 0 < v < math.inf, "a finite number > 0"),
        "prelu_lambda": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
        "lacoot_lambda": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
        "fold_alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "target_speedup": (lambda v: 0 < v < math.inf, "a finite number > 0 (or None)"),
        "min_gain": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
        "remove_blocks_below": (lambda v: 0 <= v < math.inf, "a finite number >= 0 (or None)"),
    }
    out = []
    for name, v in kw.items():
        if v is None and name in ("max_rounds", "target_speedup", "remove_blocks_below"):
            out.append(v)
            continue
        ok, what = rules[name]
        # numbers.Real: numpy scalars (np.int64(3), np.float32(0.1)) are numbers too
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or math.isnan(v) or not ok(v):
            raise CollapseError(f"{name} must be {what}, got {v!r}")
        # counts become int (itertools.islice rejects 3.0), the rest float
        out.append(int(v) if what.startswith("an integer") else float(v))
    return out


def _shares_samples(train_b, val_b) -> bool:
    """Whether validation batches come from the training data: tensor pairs whose inputs overlap in memory
    (the same tensor, or slices of one), or loaders over the same dataset object."""
    if train_b is None or val_b is None:
        return False
    if isinstance(train_b, _TensorBatches) and isinstance(val_b, _TensorBatches):
        a, b = train_b.x, val_b.x
        if not (a.numel() and b.numel()) or a.device != b.device:
            return False
        if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
            return False
        def span(t):   # element range [first, last] the tensor covers in its storage (strides of data are >= 0)
            first = t.storage_offset()
            return first, first + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
        (a0, a1), (b0, b1) = span(a), span(b)
        ea, eb = a.element_size(), b.element_size()   # compared in bytes
        return a0 * ea < (b1 + 1) * eb and b0 * eb < (a1 + 1) * ea
    da, db = getattr(train_b, "dataset", None), getattr(val_b, "dataset", None)
    return da is not None and da is db


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except (AttributeError, TypeError):
        return False
    return True


@torch.no_grad()
def _probe(model: nn.Module, batches, what: str, class_labels: bool) -> None:
    """Run the first batch once (eval mode) so a wrong input or label shape is one CollapseError naming the
    data, not a traceback from inside the training loop. class_labels: labels must be class indices
    (the default cross entropy and top-1 accuracy)."""
    if batches is None:
        return
    if isinstance(batches, _TensorBatches):   # without drawing a permutation (the batch order stays the same)
        first = (batches.x[:batches.bs], batches.y[:batches.bs])
    else:
        it = iter(batches)
        if it is batches:
            return   # a one-shot iterator: probing would eat its first batch
        first = next(it, None)
    if first is None:
        return   # reported where the data is used ("yields no batches / samples")
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        got = (f"a dict with keys {list(first)[:4]}" if isinstance(first, dict) else
               f"a {type(first).__name__} of {len(first)}" if isinstance(first, (tuple, list)) else type(first).__name__)
        raise CollapseError(f"{what}: each batch must be an (inputs, labels) pair, got {got}; give a DataLoader whose "
                            "collate_fn returns (inputs, labels), or pass fine_tune= / evaluate= that read your batches")
    x, y = first
    try:
        out = model.eval()(x)
    except Exception as e:   # noqa: BLE001 - any failure of the user's model on the user's data
        w = next((p for p in model.parameters() if p.is_floating_point()), None)
        way = "check the input shape and dtype"
        if isinstance(x, (tuple, list)) and isinstance(e, TypeError) and "positional argument" in str(e):
            way = (f"the loop calls model(inputs) with a batch's inputs as one argument (here a {type(x).__name__} of "
                   f"{len(x)}); wrap a model of several arguments in a module taking one (forward(self, xs): return "
                   "model(*xs))")
        if isinstance(x, torch.Tensor) and w is not None and x.dtype != w.dtype and \
                (x.is_floating_point() or x.dtype == torch.uint8):   # numpy arrays are float64 by default
            way = (f"the inputs are {str(x.dtype).replace('torch.', '')} and the model's weights "
                   f"{str(w.dtype).replace('torch.', '')}: cast the inputs (x.to({w.dtype}), or "
                   f".astype(numpy.{str(w.dtype).replace('torch.', '')}) for arrays)")
        raise CollapseError(f"{what}: the model fails on the first batch ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); {way}") from e
    if not class_labels:
        return
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool \
            or y.is_complex():
        raise CollapseError(f"{what}: labels must be a 1-D integer tensor of class indices, got "
                            f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))} "
                            "(pass loss_fn= / evaluate= for other targets)")
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CollapseError(f"{what}: the model's output must be (N, classes) logits for the default loss and "
                            "accuracy; pass loss_fn= and evaluate= otherwise")
    if isinstance(batches, _TensorBatches):
        y = batches.y   # all labels at once: cheap, and a bad label after the first batch fails before training
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise CollapseError(f"{what}: labels must lie in [0, {out.shape[1]}) (the model has {out.shape[1]} "
                            f"outputs), got {int(y.min())}..{int(y.max())}")


def _nonfinite_state(model: nn.Module) -> str:
    """The first parameter / buffer of `model` holding NaN / Inf, or ''."""
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if _nonfinite(t.detach()):
            return name
    return ""


@torch.no_grad()
def _probe_loss(model: nn.Module, batches, loss_fn) -> None:
    """The loss of the input model on the first training batch must be finite: a NaN there (a loss_fn
    that gives NaN, NaN inputs) would make every round diverge and be rolled back, and the run would end as
    'accuracy tolerance' without saying why."""
    if isinstance(batches, _TensorBatches):
        if _nonfinite(batches.x):   # all inputs at once: cheap, and names the sample
            i = int((~torch.isfinite(batches.x.reshape(len(batches.x), -1))).any(1).nonzero()[0])
            raise CollapseError(f"train_data: input sample {i} holds NaN / Inf; remove such samples")
        first = (batches.x[:batches.bs], batches.y[:batches.bs])
    else:
        it = iter(batches)
        if it is batches:
            return
        first = next(it, None)
        if first is None or not (isinstance(first, (tuple, list)) and len(first) == 2):
            return
    x, y = first
    if hasattr(y, "__len__") and not len(y):
        return   # no samples (the mean loss of none is NaN): reported where the data is used
    out = model.eval()(x)
    y = _check_class_labels(y, out, "train_data") if loss_fn is None else y
    try:
        loss = (loss_fn or F.cross_entropy)(out, y)
    except Exception as e:   # noqa: BLE001 - the user's loss on the user's data: it would fail in every round
        raise CollapseError(f"loss_fn(output, labels) fails on the first training batch ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]}); it is called as loss_fn(model(x), y)") from e
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and not bool(torch.isfinite(loss)):
        data = any(_nonfinite(t) for t in (x if isinstance(x, (tuple, list)) else (x,)))
        raise CollapseError(f"train_data: the input model's loss on the first batch is {float(loss)}"
                            + (" and the batch's inputs hold NaN / Inf; remove those samples" if data else
                               "; check loss_fn and the labels"))


def _checked_evaluate(evaluate: Callable) -> Callable:
    """evaluate(model) must give a finite number: NaN would pass every accuracy check."""
    def run(m):
        v = evaluate(m)
        try:
            a = float(v)
        except (TypeError, ValueError):
            raise CollapseError(f"evaluate must return a number (accuracy), got {type(v).__name__}") from None
        if a != a or a in (float("inf"), float("-inf")):
            raise CollapseError(f"evaluate returned {a}: the accuracy must be finite")
        return a
    return run


_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def _checked_fine_tune(fine_tune: Callable) -> Callable:
    """fine_tune(m) must return a module. A wrapper of m it returns (DataParallel / DDP, torch.compile: what
    trainers such as accelerate hand back) is taken as the module it wraps: kept, its keys were the wrapper's
    (`module.2`, not a site of the input), the next round's sites were lost and the export failed."""
    from ..fx.api import unwrap_compiled

    def run(m):
        out = fine_tune(m)
        if not isinstance(out, nn.Module):
            raise CollapseError(f"fine_tune must return the trained model (an nn.Module), got {type(out).__name__}")
        while out is not m:
            inner = unwrap_compiled(out)
            if inner is out and isinstance(out, _PARALLEL) and not isinstance(m, _PARALLEL):
                inner = out.module
            if inner is out:
                break
            out = inner
        return out
    return run


def _collapse_one(model: nn.Module, keys: list, relocate: bool, cost_model=None, example=None) -> nn.Module:
    """The model with `keys` collapsed and, where the planner will merge the chain, its padding relocated
    (every chain when there is no example input to size the convs)."""
    m = linearize(copy.deepcopy(model), keys)
    if relocate:
        relocate_padding(m, planner_accept(m, example, cost_model) if example is not None else None)
    return m
