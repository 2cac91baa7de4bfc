"""cleanup: drop no-op nodes (nn.Identity, eval-mode dropout), dead nodes, then submodules (and the weights
they hold) no node refers to any more. A no-op between two linear ops would otherwise keep them apart."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..graph import eliminate_dead_code
from ._base import FxPass, PassResult

_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_FUNCS = {F.dropout: ("training", 2, True), torch.ops.aten.dropout.default: ("train", 2, None)}


def _is_noop(gm: fx.GraphModule, node: fx.Node) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return type(mod) is nn.Identity or isinstance(mod, _DROPOUT_MODULES) and (not mod.training or mod.p == 0)
    if node.op == "call_function" and node.target in _DROPOUT_FUNCS:
        name, pos, default = _DROPOUT_FUNCS[node.target]
        train = node.args[pos] if len(node.args) > pos else node.kwargs.get(name, default)
        return train is False
    return False


class Cleanup(FxPass):
    name = "cleanup"

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes = len(gm.graph.nodes)
        mods = len(list(gm.named_modules()))
        for node in list(gm.graph.nodes):
            if _is_noop(gm, node):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
        eliminate_dead_code(gm)
        gm.delete_all_unused_submodules()
        gm.recompile()
        return PassResult(gm, len(gm.graph.nodes) != nodes or len(list(gm.named_modules())) != mods)
