"""Values of chosen fx nodes on calibration batches: the torch counterpart of scores._common.tapped_batches
(which taps onnxruntime). Used by the block scores (LaCoOT), whose points are tensors inside the graph,
not module inputs a hook could see."""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ..errors import CollapseError


def _batch_args(gm: fx.GraphModule, batch) -> tuple:
    """Positional inputs of gm for one calibration batch (an fx Interpreter takes no keywords: a dict
    batch is ordered by the graph's placeholders); the conversion is the hooks' (torch_hooks._as_call)."""
    from ..scores.torch_hooks import _as_call

    args, kw, _ = _as_call(batch, torch)
    if not kw:
        return args
    names = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
    missing = [n for n in names if n not in kw]
    if missing:
        raise CollapseError(f"calib: a dict batch lacks the model input(s) {', '.join(missing)} "
                            f"(the model's inputs are {', '.join(names)})")
    return tuple(kw[n] for n in names)


class _Tap(fx.Interpreter):
    def __init__(self, gm, wanted):
        super().__init__(gm)
        self.wanted, self.got = wanted, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.wanted and isinstance(out, torch.Tensor):
            # copied now: a later in-place op (a post-add ReLU(inplace=True)) would change the value
            self.got[n] = out.detach().to("cpu", torch.float64).numpy().copy()
        return out


def _run(gm, wanted, args) -> dict:
    tap = _Tap(gm, wanted)
    with torch.no_grad():
        tap.run(*args)
    return tap.got


def _traced_batch(gm: fx.GraphModule) -> int | None:
    from .graph import shape_of

    ph = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    s = shape_of(ph) if ph is not None else None
    return int(s[0]) if s else None


def tapped_values(gm: fx.GraphModule, nodes, batches, method: str, min_samples: int = 1):
    """Yield {node: float64 array} per calibration batch (first axis = samples), gm in eval mode under
    no_grad; CollapseError when gm fails on a batch or fewer than min_samples samples were seen."""
    wanted = set(nodes)
    samples = 0
    was = gm.training
    try:
        gm.eval()
    except NotImplementedError:   # torch.export's module(): no train/eval switch (exported in eval mode)
        was = None
    try:
        for batch in batches:
            args = _batch_args(gm, batch)
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            try:
                got = _run(gm, wanted, args)
            except Exception as exc:
                # a graph with static shapes (torch.export specializes the batch): run the batch in pieces
                # of the traced batch size
                step = _traced_batch(gm)
                n = int(first.shape[0]) if first is not None and first.dim() else 0
                if not step or n <= step or n % step:
                    raise CollapseError(f"{method}: the model failed on a calibration batch "
                                        f"({' '.join(str(exc).split())[:160]})") from None
                parts = [_run(gm, wanted, tuple(a[i:i + step] if isinstance(a, torch.Tensor) and a.dim() else a
                                                for a in args)) for i in range(0, n, step)]
                got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            samples += int(first.shape[0]) if first is not None and first.dim() else 1
            yield got
    finally:
        if was is not None:
            gm.train(was)
    if samples < min_samples:
        raise CollapseError(f"{method}: {samples} calibration sample(s); at least {min_samples} are needed "
                            "(give more batches in calib=)")
