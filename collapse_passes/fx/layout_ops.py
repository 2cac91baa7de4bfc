"""Which torch ops the report's depth and node counts take for no op: layout the ONNX exports write as nothing.

The ONNX front end counts the deployed model (onnx/analysis.model_stats). The exporters write no node for a copy
into contiguous memory (`x.contiguous()`, `x.clone()`: onnxruntime's tensors are always dense) and the
torch.export-based one drops a Reshape to the shape its input already has (an SE block's
`x.mean((2, 3)).view(b, c)`), so the torch front end does not count them either. And
`ExportedProgram.run_decompositions()` spells one op as several (a Linear on 3-D input as view, addmm, view;
F.scaled_dot_product_attention as some 20 nodes of mul, expand, clone, view, bmm, softmax): that is a spelling,
not depth, so the nodes decomposed from one op are one op on the critical path, as in the program they were
decomposed from (a two-block ViT's path was 84 ops decomposed against 30, before 2026-11-30).
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from .graph import free_call, shape_of

aten = torch.ops.aten

_COPY_METHODS = {"contiguous", "clone"}
_COPY_FUNCTIONS = {torch.clone, aten.clone.default, aten.contiguous.default}
_VIEW_METHODS = {"view", "reshape"}
_VIEW_FUNCTIONS = {torch.reshape, aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def layout_copy(node: fx.Node) -> bool:
    """x.contiguous() / x.clone() / aten.clone: a copy of the same values, no ONNX node."""
    if node.op == "call_method":
        return node.target in _COPY_METHODS
    return node.op == "call_function" and node.target in _COPY_FUNCTIONS


def _view(node) -> bool:
    """x.view / x.reshape / torch.reshape / aten.view, reshape, _unsafe_view."""
    return isinstance(node, fx.Node) and ((node.op == "call_method" and node.target in _VIEW_METHODS)
                                          or (node.op == "call_function" and node.target in _VIEW_FUNCTIONS))


def view_to_own_shape(node: fx.Node) -> bool:
    """A view / reshape whose output has its input's (static) shape."""
    if not _view(node) or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    a, b = shape_of(node.args[0]), shape_of(node)
    return a is not None and a == b


def size_arithmetic(gm: fx.GraphModule) -> set:
    """Call nodes computed from tensor sizes (and constants) alone: `c // 2` of `b, c, h, w = x.shape`, an
    ExportedProgram's arithmetic on sym_size. They read no tensor's values (onnx/analysis.metadata_nodes, the
    same rule for an ONNX graph's Shape -> Gather -> Div), and the view that reads them is the op."""
    sizes: set = set()
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_method"):
            continue
        ins = n.all_input_nodes
        if (free_call(n) and n.target is not operator.getitem) or (ins and all(p in sizes for p in ins)):
            sizes.add(n)
    return {n for n in sizes if not free_call(n)}


def _leading_view(node, last) -> bool:
    """A view / reshape that keeps the last dim (`last`) and only folds or unfolds the ones before it."""
    if not _view(node):
        return False
    a, b = shape_of(node.args[0]) if node.args else None, shape_of(node)
    return last is not None and a is not None and b is not None and len(a) >= 1 and len(b) >= 1 \
        and a[-1] == b[-1] == last


def linear_views(gm: fx.GraphModule) -> set:
    """The views a decomposed Linear on N-D input reads and writes around its 2-D addmm / mm (view(x, [B*T, C]),
    addmm, view(y, [B, T, C'])), by their provenance (decomposed from aten.linear): parts of the one Linear, as an
    ONNX MatMul takes N-D input; also once the passes merged two such Linears into a new op between them."""
    out = set()
    for n in gm.graph.nodes:
        src = _root_source(n)
        if src is not None and str(getattr(src, "target", "")) == "aten.linear.default" and n.args \
                and _leading_view(n, shape_of(n)[-1] if shape_of(n) else None):
            out.add(n)
    return out


def layout_free_nodes(gm: fx.GraphModule) -> set:
    """The nodes of `gm` that count as no op in the report's nodes and depth (layout_copy, view_to_own_shape,
    size_arithmetic, linear_views)."""
    return {n for n in gm.graph.nodes if layout_copy(n) or view_to_own_shape(n)} | size_arithmetic(gm) \
        | linear_views(gm)


def decomposed_from(node: fx.Node):
    """(name, graph id) of the op of the first graph that `node` comes from (torch.fx's provenance,
    node.meta["from_node"], followed to its root: each pass that rebuilds a graph adds a link), or None. Nodes
    that share it are the parts of one op."""
    src = _root_source(node)
    name = getattr(src, "name", None)
    return None if name is None else (name, getattr(src, "graph_id", None))


def _root_source(node: fx.Node):
    """The first link of node.meta["from_node"] followed to its root (each pass that rebuilds a graph adds one)."""
    sources = node.meta.get("from_node")
    src = sources[-1] if isinstance(sources, (list, tuple)) and sources else None
    for _ in range(256):
        up = getattr(src, "from_node", None)
        if not up:
            break
        src = up[-1]
    return src


class DecompositionGroups:
    """Counts the nodes decomposed from one op once on any path through them: a node weighs nothing when a
    counted node of its own op lies before it (its op is already on the path)."""

    def __init__(self):
        self._seen: dict = {}   # node -> (its op, whether a counted node of that op lies on or before it)

    def weight(self, node: fx.Node, counted: bool) -> int:
        group = decomposed_from(node)
        behind = group is not None and any(
            self._seen.get(p, (None, False)) == (group, True) for p in node.all_input_nodes)
        self._seen[node] = (group, bool(counted) or behind)
        return int(bool(counted) and not behind)
