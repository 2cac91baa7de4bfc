"""Composite activations written as several elementwise ops (x*sigmoid(x), x*relu6(x+3)/6, x*Phi(x), ...):
the one rule both front ends use to find them as ONE site.

A candidate is anchored at a Mul or Div and grown backwards through elementwise ops with scalar
constants until a single non-constant value bounds it (every intermediate value used only inside the
region); each bounded region is evaluated on PROBE and identified against the catalogue's gated kinds
(core/activations.GATED_KINDS); the largest identified region wins. A region that matches nothing is
left alone, never guessed. The front ends only say what a node, a value, an operand and an
elementwise op are in their graphs (onnx/patterns.py on onnx-graphsurgeon, fx/graph.py on torch.fx).

Pure python/numpy.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from . import activations as catalogue

#: where regions are evaluated to identify them
PROBE = np.linspace(-7.0, 7.0, 141)
#: the most nodes a composite activation may span (tanh-GELU decomposed is ~9)
MAX_REGION_NODES = 16


#: identification tolerances (rtol, atol) by the precision a region's constants are stored in: a float16 model's
#: GELU divides by 1.4140625, not sqrt(2) (its values then differ from GELU's by ~5e-5, outside float32's 1e-4)
REGION_TOLERANCE = {"float32": (1e-4, 1e-5), "float16": (4e-3, 4e-3), "bfloat16": (3e-2, 3e-2)}


def identify_region(values, precision: str = "float32") -> str | None:
    """The gated kind whose reference equals a region's values on PROBE, or None (also for non-finite values).
    `precision`: the coarsest float type of the region's constants (REGION_TOLERANCE)."""
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64)
    if values.shape != PROBE.shape or not np.all(np.isfinite(values)):
        return None
    rtol, atol = REGION_TOLERANCE.get(precision, REGION_TOLERANCE["float32"])
    return catalogue.identify(values, PROBE, catalogue.GATED_KINDS, rtol=rtol, atol=atol)


def grow_region(anchor, *, operands: Callable[[object], Iterable], producer: Callable[[object], object],
                consumers: Callable[[object], Iterable], expandable: Callable[[object], bool],
                order: Callable[[object], int], max_nodes: int = MAX_REGION_NODES) -> Iterator[tuple[list, object]]:
    """Expand backwards from `anchor`; yield (region nodes in graph order, x) each time one value x bounds it.

    operands(node): its non-constant input values; producer(value): the node computing it, or None (a graph
    input); consumers(value): the nodes reading it; expandable(node): an elementwise op that may join;
    order(node): its position in the graph. Values and nodes are compared by identity."""
    region = {id(anchor): anchor}
    frontier = {id(v): v for v in operands(anchor)}
    while True:
        if len(frontier) == 1 and len(region) >= 2:
            yield sorted(region.values(), key=order), next(iter(frontier.values()))
        if not frontier or len(region) >= max_nodes:
            return
        # expand the most recently produced frontier value
        cand = [v for v in frontier.values() if producer(v) is not None]
        if not cand:
            return
        v = max(cand, key=lambda v: order(producer(v)))
        prod = producer(v)
        if id(prod) in region or not expandable(prod):
            return
        # every consumer of the expanded value must be inside the region (it is internal)
        if any(id(c) not in region for c in consumers(v)):
            return
        region[id(prod)] = prod
        del frontier[id(v)]
        for inp in operands(prod):
            p = producer(inp)
            if p is None or id(p) not in region:
                frontier[id(inp)] = inp
