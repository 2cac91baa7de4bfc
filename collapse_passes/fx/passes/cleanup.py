"""cleanup: drop no-op nodes (nn.Identity, eval-mode dropout, a zero pad, a slice keeping all, a permute undoing
the permute before it, a clone nothing writes into, a view to its input's own shape; a view of a view reads
the first one's input), dead nodes, then submodules (and the weights they hold) no node refers to any more. A
no-op between two linear ops would otherwise keep them apart (x.permute(0, 3, 1, 2).permute(0, 2, 3, 1) between
two NHWC Linears: both ONNX exporters drop that pair, so the ONNX front end merged the Linears and this one did
not)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..graph import alias_group, eliminate_dead_code, feeds_output, mutates
from ._base import FxPass, PassResult

_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_FUNCS = {F.dropout: ("training", 2, True), torch.ops.aten.dropout.default: ("train", 2, None),
                  torch.ops.aten.dropout_.default: ("train", 2, None)}   # Dropout(inplace=True), exported


_PERMUTES = {torch.permute, torch.ops.aten.permute.default, "permute"}


def _permutation(node: fx.Node):
    """(input, dims) of a permute node with literal dims, else None."""
    if node.op not in ("call_function", "call_method") or node.target not in _PERMUTES or node.kwargs \
            or len(node.args) < 2 or not isinstance(node.args[0], fx.Node):
        return None
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
    if not all(isinstance(d, int) for d in dims):
        return None
    return node.args[0], [int(d) % len(dims) for d in dims]


def _undone_permute(node: fx.Node):
    """The input x of permute(permute(x, p), q) when q undoes p (the pair is x itself), else None."""
    outer = _permutation(node)
    inner = _permutation(outer[0]) if outer is not None else None
    if inner is None or len(inner[1]) != len(outer[1]):
        return None
    return inner[0] if [inner[1][d] for d in outer[1]] == list(range(len(outer[1]))) else None


_PADS = {F.pad, torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default}


def _zero_pad_or_full_slice(node: fx.Node) -> bool:
    """A pad by literal zeros, or an aten.slice from 0 to the end of a static dim (or to 2**62 and beyond) with
    step 1: its output is its input (a view of all of it). Swin pads each map to whole windows and crops back;
    where no padding is needed these compute nothing, and the ONNX front end drops them too (onnx cleanup's
    noop_slice_or_pad), so both count the same ops."""
    if node.op != "call_function":
        return False
    if node.target is torch.ops.aten.alias.default:   # torch.export's spelling of a slice that keeps all
        return True
    if node.target in _PADS:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        return isinstance(pad, (list, tuple)) and len(pad) > 0 and all(type(p) is int and p == 0 for p in pad)
    if node.target is not torch.ops.aten.slice.Tensor:
        return False
    names = ("input", "dim", "start", "end", "step")
    a = dict(zip(names, node.args))
    a.update({k: v for k, v in node.kwargs.items() if k in names})
    dim, start, end, step = a.get("dim", 0), a.get("start"), a.get("end"), a.get("step", 1)
    if step != 1 or start not in (None, 0) or type(dim) is not int:
        return False
    if end is None or (type(end) is int and end >= 2 ** 62):
        return True
    v = node.args[0].meta.get("val")
    if type(end) is not int or not isinstance(v, torch.Tensor) or not -v.dim() <= dim < v.dim():
        return False
    size = v.shape[dim]
    return type(size) is int and end >= size   # a symbolic (dynamic) dim may be longer than `end`


_VIEWS = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default}


def _static_shape(node) -> tuple | None:
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(v, torch.Tensor) or not all(type(d) is int for d in v.shape):
        return None
    return tuple(v.shape)


def _literal_view(node: fx.Node) -> bool:
    """An aten view / reshape to a shape written as numbers, of a tensor of static shape."""
    return node.op == "call_function" and node.target in _VIEWS and len(node.args) == 2 and not node.kwargs \
        and isinstance(node.args[0], fx.Node) and isinstance(node.args[1], (list, tuple)) \
        and all(type(d) is int for d in node.args[1]) and _static_shape(node.args[0]) is not None


def _view_of_view(node: fx.Node) -> bool:
    """reshape(reshape(x, a), b) reads x as reshape(x, b): rewired, so that a decomposed program's 3-D Linears
    (view, addmm, view) meet where the activation between them was: view(view(y, [2, 4, 16]), [8, 16]) is y."""
    if not _literal_view(node) or not _literal_view(node.args[0]) or len(node.args[0].users) != 1:
        return False
    inner = node.args[0]
    node.target = torch.ops.aten.reshape.default   # x itself may not be viewable as b; reshape copies then
    node.args = (inner.args[0], node.args[1])
    return True


def _view_to_own_shape(node: fx.Node) -> bool:
    """A view / reshape to the shape its input already has (static shapes)."""
    return _literal_view(node) and tuple(node.args[1]) == _static_shape(node.args[0])


def _unobserved_clone(node: fx.Node) -> bool:
    """aten.clone of a value nothing writes into, not returned, in the input's own layout: its copy is the value
    itself. What run_decompositions() makes of an eval-mode dropout; it kept the Linears around it apart. A clone
    to contiguous_format is x.contiguous(), which a later view needs: kept."""
    if node.op != "call_function" or node.target is not torch.ops.aten.clone.default or feeds_output(node) \
            or node.kwargs.get("memory_format", torch.preserve_format) is not torch.preserve_format:
        return False
    return not any(mutates(u, a) for n in (node.args[0], node) for a in alias_group(n) for u in a.users)


def _is_noop(gm: fx.GraphModule, node: fx.Node) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if _zero_pad_or_full_slice(node) or _unobserved_clone(node) or _view_to_own_shape(node):
        return True
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return type(mod) is nn.Identity or isinstance(mod, _DROPOUT_MODULES) and (not mod.training or mod.p == 0)
    if node.op == "call_function" and node.target in _DROPOUT_FUNCS:
        name, pos, default = _DROPOUT_FUNCS[node.target]
        train = node.args[pos] if len(node.args) > pos else node.kwargs.get(name, default)
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        # p=0 keeps every element and scales by 1/(1-0): the input in any mode (a train-mode export of
        # Swin-T's Dropout(0.0) kept aten.dropout(x, 0.0, True) between fc1 and fc2, which then never merged)
        return train is False or isinstance(p, (int, float)) and p == 0
    return False


class Cleanup(FxPass):
    name = "cleanup"

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes = len(gm.graph.nodes)
        mods = len(list(gm.named_modules()))
        for node in list(gm.graph.nodes):
            _view_of_view(node)
            if _is_noop(gm, node):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                continue
            x = _undone_permute(node)
            if x is not None:
                node.replace_all_uses_with(x)
                gm.graph.erase_node(node)
        eliminate_dead_code(gm)
        gm.delete_all_unused_submodules()
        gm.recompile()
        return PassResult(gm, len(gm.graph.nodes) != nodes or len(list(gm.named_modules())) != mods)
