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
            # copied now: a later in-place op (a post-add ReLU(inplace=True)) would change the value. In the model's
            # precision (float32), as onnxruntime's taps: float64 copies doubled every tapped batch and the points
            # LaCoOT keeps (its sums are taken in float64 anyway)
            v = out.detach().to("cpu")
            self.got[n] = (v if v.dtype in (torch.float32, torch.float64) else v.float()).numpy().copy()
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


#: the tapped values of one yield stay under this many bytes: a calibration batch is run in pieces of samples
TAP_BYTES = 256 << 20


def _piece(gm: fx.GraphModule, wanted, n: int) -> int:
    """Samples per run so the tapped values fit TAP_BYTES (from the nodes' shapes; n when unknown). Every block's
    input and output of a whole batch were held at once: ResNet-50 at 224, LaCoOT on one batch of 32 peaked at
    4.6 GB (1.6 GB at 8)."""
    from .graph import shape_of

    per = 0
    for node in wanted:
        shape = shape_of(node)
        if not shape or not all(isinstance(d, int) for d in shape):
            return n
        per += int(np.prod(shape[1:], dtype=np.int64)) * 4
    return max(1, min(n, TAP_BYTES // per)) if per else n


def _pieces(args: tuple, n: int, size: int):
    """The batch's positional inputs cut into runs of `size` samples (tensors with a batch axis are sliced)."""
    if size >= n:
        yield args
        return
    for i in range(0, n, size):
        yield tuple(a[i:i + size] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a for a in args)


def tapped_values(gm: fx.GraphModule, nodes, batches, method: str, min_samples: int = 1):
    """Yield {node: array} (float32 for a float32 model) per piece of a calibration batch (first axis = samples;
    a batch is cut into pieces whose tapped values fit TAP_BYTES), gm in eval mode under no_grad; CollapseError
    when gm fails on a batch or fewer than min_samples samples were seen."""
    wanted = set(nodes)
    samples = 0
    was = gm.training
    try:
        gm.eval()
    except NotImplementedError:   # torch.export's module(): no train/eval switch (exported in eval mode)
        was = None
    try:
        for batch in batches:
            whole = _batch_args(gm, batch)
            first = next((a for a in whole if isinstance(a, torch.Tensor)), None)
            total = int(first.shape[0]) if first is not None and first.dim() else 0
            size = _piece(gm, wanted, total) if total else total
            step = _traced_batch(gm)
            if step and size < total and size % step:   # a static-batch graph runs multiples of its batch
                size = min(total, max(step, size // step * step))
            for args in _pieces(whole, total, size):
                first = next((a for a in args if isinstance(a, torch.Tensor)), None)
                try:
                    got = _run(gm, wanted, args)
                except Exception as exc:
                    # a graph with static shapes (torch.export specializes the batch): run the batch in pieces
                    # of the traced batch size
                    n = int(first.shape[0]) if first is not None and first.dim() else 0
                    failed = CollapseError(f"{method}: the model failed on a calibration batch "
                                           f"({' '.join(str(exc).split())[:160]})")
                    if not step or n <= step or n % step:
                        raise failed from None
                    try:   # pieces failing too (another spatial size than traced): the first error, one line
                        parts = [_run(gm, wanted, tuple(a[i:i + step] if isinstance(a, torch.Tensor) and a.dim()
                                                        else a for a in args)) for i in range(0, n, step)]
                    except Exception:
                        raise failed from None
                    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                samples += int(first.shape[0]) if first is not None and first.dim() else 1
                yield got
    finally:
        if was is not None:
            gm.train(was)
    if samples < min_samples:
        raise CollapseError(f"{method}: {samples} calibration sample(s); at least {min_samples} are needed "
                            "(give more batches in calib=)")
