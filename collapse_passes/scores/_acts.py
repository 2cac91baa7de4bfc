"""The activations of an ONNX model as the score methods see them: keyed like the rest of the tool
(keys.display_key), with the channel layout of each activation input."""
from __future__ import annotations

from collections import defaultdict

import onnx

from ..onnx.graph import const_value, node_key_names, to_graph
from ..onnx.keys import display_key, resolve_keys
from ..onnx.patterns import find_activations

_PASS_THROUGH = {"Add", "Sub", "Mul", "Div", "BatchNormalization", "Identity", "Clip", "Relu", "Neg"}
_CONV = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "InstanceNormalization", "GroupNormalization"}
_TOKEN = {"MatMul", "Gemm", "LayerNormalization", "Softmax", "Transpose", "Reshape"}


def load_activations(model: onnx.ModelProto):
    """(graph, activations) with keys resolved; the model proto is not modified."""
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


def group_by_key(acts) -> dict[str, list]:
    """display key -> activations (a module called at several places has several)."""
    groups: dict[str, list] = defaultdict(list)
    for a in acts:
        groups[display_key(a)].append(a)
    return dict(groups)


def shared_key_note(groups: dict, method: str) -> list[str]:
    multi = {k: len(v) for k, v in groups.items() if len(v) > 1}
    if not multi:
        return []
    ex = ", ".join(f"{k!r} x{n}" for k, n in list(multi.items())[:3])
    return [f"{method}: {len(multi)} key(s) name an activation module called at several places ({ex}); "
            "their per-call scores are averaged"]
