"""The activations of an ONNX model as the score methods see them: keyed like the rest of the tool
(keys.display_key), with the channel layout of each activation input."""
from __future__ import annotations

import onnx

from ..onnx.graph import const_value, node_key_names, to_graph
from ..core.selection import display_key
from ..onnx.keys import resolve_keys
from ..onnx.patterns import find_activations

_PASS_THROUGH = {"Add", "Sub", "Mul", "Div", "BatchNormalization", "Identity", "Clip", "Relu", "Neg"}
_CONV = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "InstanceNormalization", "GroupNormalization"}
_TOKEN = {"MatMul", "Gemm", "LayerNormalization", "Softmax", "Transpose", "Reshape"}


def load_activations(model: onnx.ModelProto, activations=None):
    """(graph, activations) with keys resolved; the model proto is not modified.

    activations: the (graph, activations) of `model` a caller already found (collapse() does), reused
    as is so that one run searches the graph once; the score methods only read them."""
    if activations is not None:
        return activations
    graph = to_graph(model)
    acts = find_activations(graph)
    resolve_keys(acts, node_key_names(model))
    return graph, acts


def conv_like(tensor, depth: int = 4) -> bool:
    """True when a Conv (or a per-channel norm of NC... tensors) produces `tensor`, looking back
    through elementwise ops and BatchNormalization."""
    t = tensor
    for _ in range(depth):
        if not t.inputs:
            return False
        prod = t.inputs[0]
        if prod.op in _CONV:
            return True
        if prod.op in _TOKEN or prod.op not in _PASS_THROUGH:
            return False
        nxt = [i for i in prod.inputs if i.name and const_value(i) is None]
        if not nxt:
            return False
        t = nxt[0]
    return False


def per_site(acts, details_by_act: dict) -> tuple[dict, dict]:
    """(key -> score, key -> details) with one entry per activation call site (keys.display_key is
    unique per site: a module called twice has path:0 and path:1), in model order."""
    scores, details = {}, {}
    for a in acts:
        d = details_by_act[id(a)]
        key = display_key(a)
        scores[key] = float(d["score"])
        details[key] = {**d, "module": a.module_path} if a.module_path and a.module_path != key else d
    return scores, details
