"""torch.fx front end of the channel dependency graph: any GraphModule (e.g. torch.fx.symbolic_trace).

Shapes come from torch.fx's ShapeProp on an example input. Modules (Conv1d/2d/3d, Linear, BatchNorm)
are rewritten in place on a deep copy; the result is still an nn.Module (a GraphModule). Anything not
listed here that touches a channel-carrying value freezes the groups it touches and is reported.
"""
from __future__ import annotations

import contextlib
import copy
import io
import operator
import warnings

import numpy as np
import torch
import torch.fx

from ..algebra.conv import ConvParams, bn_to_affine
from ..algebra.linear import LinearParams
from ..algebra.prune import ConvTransposeParams
from ..core.torch_kinds import function_kind, module_kind
from ..errors import CollapseError
from ..fx.graph import copy_sharing_weights, get_attr_value, keep_module_state, training_batchnorms
from .builder import SlotBuilder
from .graph import (ChannelGraph, activation_fn, avg_pool_keeps_constants, no_dead_channel_note, removal_edits,
                    zero_filters)


def _torch():
    return torch


@contextlib.contextmanager
def _shape_run():
    """Shape propagation on one example: no grad, one thread (on a loaded 2-core machine two threads made
    these tiny convs ~10x slower), the caller's thread count restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(old)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64 if t.dtype == _torch().float64 else np.float32)


def _unary_sets():
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    relu_f = {F.relu, torch.relu, "relu", "relu_"}
    index_m = (nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d,
               nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
    other_m = (nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.SELU,
               nn.Softplus, nn.Mish, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.Hardtanh)
    index_f = {F.dropout, F.max_pool2d, F.max_pool1d, F.max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
               F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, "contiguous",
               "clone", "detach"}
    other_f = {F.gelu, F.silu, torch.sigmoid, torch.tanh, F.hardswish, F.relu6, F.sigmoid, F.avg_pool2d, F.elu,
               "sigmoid", "tanh", torch.nn.functional.hardtanh}
    binary = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div",
              torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div",
              "add": "add", "sub": "sub", "mul": "mul", "div": "div"}
    return relu_f, index_m, other_m, index_f, other_f, binary


class _FxBuilder(SlotBuilder):
    NODE_KEY = "fx_node"

    def __init__(self, gm, example_inputs):
        super().__init__()
        self.gm = gm
        _propagate(gm, example_inputs)
        self.calls: dict = {}
        self.pieces: dict = {}   # split / chunk node name -> (input slot, axis, piece sizes, node)
        #: module path -> a parameter or buffer of it that the graph also reads directly (get_attr: tied weights,
        #: F.linear(x, self.fc.weight), a weight penalty): slicing the module would change that reader too
        self.attr_reads: dict = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.calls[n.target] = self.calls.get(n.target, 0) + 1
            elif n.op == "get_attr":
                parts = str(n.target).split(".")
                for k in range(1, len(parts)):
                    self.attr_reads.setdefault(".".join(parts[:k]), str(n.target))
        self.sets = _unary_sets()

    # -- what SlotBuilder reads -------------------------------------------------------------------
    def shape(self, n):
        meta = getattr(n, "meta", {}).get("tensor_meta") if hasattr(n, "meta") else None
        return None if meta is None or not hasattr(meta, "shape") else list(meta.shape)

    def op_type(self, n) -> str:
        return _op_type(n, self.gm)

    def origin(self, n) -> str:
        return "graph input" if n.op == "placeholder" else f"produced by {self.op_type(n)} (not tracked)"

    def node_inputs(self, n):
        fx = _torch().fx
        out = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: out.append(a))
        return out

    def slotted(self, n):
        return [self.slot_of[a.name] for a in self.node_inputs(n) if a.name in self.slot_of]

    def build(self) -> ChannelGraph:
        for n in self.gm.graph.nodes:
            if n.op == "output":
                for a in self.node_inputs(n):
                    if a.name in self.slot_of:
                        self.cg.freeze(self.slot_of[a.name], a.name, "value", "graph output")
                continue
            if n.op in ("placeholder", "get_attr"):
                continue
            try:
                if n.op == "call_module":
                    self.module(n, self.gm.get_submodule(n.target))
                else:
                    self.function(n)
            except (TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError) as exc:
                # a shape or argument this builder did not expect: not understood, so frozen (never guessed)
                self.unknown(n, f"could not analyse ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})")
        self.resolve_counts()
        return self.cg

    # -- modules -------------------------------------------------------------------------------
    def module(self, n, mod):
        torch = _torch()
        nn = torch.nn
        relu_f, index_m, other_m, _, _, _ = self.sets
        x = n.args[0] if n.args else None
        convt = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        shared = self.calls.get(n.target, 0) > 1
        read = self.attr_reads.get(n.target)
        if (shared or read) and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *convt,
                                                 nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            # a parameter read elsewhere is read unsliced there: F.linear(w, self.fc.weight) broke at run time once
            # fc was pruned, and a weight penalty changed value silently
            sin = self.get_slot(x, 1 if not isinstance(mod, nn.Linear) else len(self.shape(x) or [1]) - 1, n)
            sout = self.new_slot(n, 1 if not isinstance(mod, nn.Linear) else len(self.shape(n) or [1]) - 1)
            return self.cg.freeze_op(n.name, self.op_type(n), [sin, sout], "module called at several places (shared "
                                     "weights)" if shared else f"its parameter {read} is also read directly")
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                sin, sout = self.get_slot(x, 1, n), self.new_slot(n, 1)
                return self.cg.freeze_op(n.name, self.op_type(n), [sin, sout], "padding mode or string padding")
            nd = mod.weight.dim() - 2
            p = ConvParams(_np(mod.weight), None if mod.bias is None else _np(mod.bias), tuple(mod.stride),
                           tuple(mod.padding) * 2, tuple(mod.dilation), mod.groups)
            sin, sout = self.get_slot(x, 1, n), self.new_slot(n, 1)
            if sin is None or sout is None:
                return self.cg.freeze_op(n.name, self.op_type(n), [sin, sout], "unknown shapes")
            self.cg.conv_groups(n.name, self.op_type(n), sin, sout, p)
            xs = self.shape(x)
            self.record(n, "conv", [sin], [sout], params=p, input_spatial=tuple(xs[2:2 + nd]), module=mod)
            return
        if isinstance(mod, convt):   # weight (in, out/groups, *k): sliced like a conv, absorbs no constant
            sin, sout = self.get_slot(x, 1, n), self.new_slot(n, 1)
            if sin is None or sout is None or len(n.args) != 1 or n.kwargs:   # output_size= reads the shape
                return self.cg.freeze_op(n.name, self.op_type(n), [sin, sout], "unknown shapes or an output_size")
            p = ConvTransposeParams(_np(mod.weight), None if mod.bias is None else _np(mod.bias), mod.groups)
            self.cg.conv_groups(n.name, self.op_type(n), sin, sout, p)
            return self.record(n, "convt", [sin], [sout], params=p, module=mod)
        if isinstance(mod, nn.Linear):
            r, ro = len(self.shape(x) or []), len(self.shape(n) or [])
            sin, sout = self.get_slot(x, r - 1, n), self.new_slot(n, ro - 1)
            if sin is None or sout is None:
                return self.cg.freeze_op(n.name, self.op_type(n), [sin, sout], "unknown shapes")
            p = LinearParams(_np(mod.weight), None if mod.bias is None else _np(mod.bias))
            return self.record(n, "dense", [sin], [sout], params=p, module=mod)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if mod.training or mod.running_mean is None:
                return self.unknown(n, "batchnorm in training mode or without running statistics")
            sin = self.get_slot(x, 1, n)
            sout = self.new_slot(n, 1)
            if sin is None or sout is None:
                return self.unknown(n, "unknown shapes")
            self.cg.couple(sin, sout)
            g = _np(mod.weight) if mod.weight is not None else np.ones(mod.num_features)
            b = _np(mod.bias) if mod.bias is not None else np.zeros(mod.num_features)
            sc, sh = bn_to_affine(g, b, _np(mod.running_mean), _np(mod.running_var), mod.eps)
            return self.record(n, "bn", [sin], [sout], scale=np.asarray(sc, np.float64),
                               shift=np.asarray(sh, np.float64), module=mod)
        if not self.slotted(n):
            return
        if isinstance(mod, nn.ReLU):
            return self.unary(n, "relu")
        if isinstance(mod, nn.LeakyReLU):
            return self.unary(n, "leaky_relu", alpha=float(mod.negative_slope))
        if isinstance(mod, nn.PReLU):   # per-channel slope on axis 1, sliced with the channels (apply_fx_removal)
            src = self.slot_of.get(x.name) if hasattr(x, "name") else None
            per_channel = mod.num_parameters > 1
            if per_channel and (self.calls.get(n.target, 0) > 1 or n.target in self.attr_reads or src is None
                                or src[1] != 1):
                return self.unknown(n, "per-channel PReLU called at several places, its slope read directly, or not "
                                       "on axis 1")
            w = _np(mod.weight).astype(np.float64)
            slope = w if per_channel else (np.full(self.cg.size(src), float(w[0])) if src is not None else None)
            return self.unary(n, "prelu", slope=slope, slice_axis=0 if per_channel else None, module=mod)
        if isinstance(mod, (nn.ReLU6, nn.Hardtanh)):
            return self.unary(n, "clip", lo=float(mod.min_val), hi=float(mod.max_val))
        if isinstance(mod, index_m):
            return self.unary(n, "index", pool=not isinstance(mod, (nn.Identity, nn.Dropout)))
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and avg_pool_keeps_constants(
                mod.padding, mod.ceil_mode, mod.count_include_pad, getattr(mod, "divisor_override", None)):
            return self.unary(n, "index", pool=True)
        found = module_kind(mod)
        if found is not None and found[0] != "prelu":   # nn.SELU, nn.CELU: f(c) with their constants
            return self.catalogue_activation(n, *found)
        fn = _module_fn(mod)
        if fn is not None:   # a constant channel stays constant: f(c)
            return self.unary(n, "fn", fn=fn)
        if isinstance(mod, other_m):
            return self.unary(n, "other", pool="Pool" in type(mod).__name__)
        if isinstance(mod, nn.Flatten):
            return self.flatten(n, mod.start_dim, mod.end_dim)
        if isinstance(mod, nn.LayerNorm):
            return self.unknown(n, "normalises over the channel axis (statistics would change)")
        return self.unknown(n, "module not understood by the channel graph")

    def unary(self, n, kind, pool=False, **data):
        src = self.slot_of.get(n.args[0].name) if n.args and hasattr(n.args[0], "name") else None
        if src is None or len(self.slotted(n)) != 1:
            return self.unknown(n, "channel value in a parameter position")
        if pool and src[1] != 1:
            return self.unknown(n, "pooling over the channel axis")
        sout = self.new_slot(n, src[1])
        if sout is None or self.cg.size(sout) != self.cg.size(src):
            return self.unknown(n, "unknown output shape")
        self.cg.couple(src, sout)
        if kind == "index":
            m = self.cg.size(src)
            data["src"] = [(np.zeros(m, int), np.arange(m))]
        self.record(n, kind, [src], [sout], **data)

    def flatten(self, n, start, end=-1):
        src = self.slot_of.get(n.args[0].name)
        xs = self.shape(n.args[0])
        if xs is not None and (start % len(xs) > src[1] or end % len(xs) < src[1]):
            # axes after or before the channel axis merged (x.flatten(2) of N, C, H, W): the channels stay whole
            a = src[1] if start % len(xs) > src[1] else src[1] - (end % len(xs) - start % len(xs))
            return self.moved(n, n, src, a)
        if xs is None or start % len(xs) != src[1] or end % len(xs) != len(xs) - 1:
            return self.unknown(n, "flatten that does not start at the channel axis")
        inner = int(np.prod(xs[src[1] + 1:], dtype=np.int64))
        sout = self.new_slot(n, src[1])
        m = self.cg.size(src)
        if sout is None or self.cg.size(sout) != m * inner:
            return self.unknown(n, "unknown output shape")
        feats = np.arange(m * inner)
        self.cg.couple(src, sout, feats // inner, feats)
        self.record(n, "index", [src], [sout], src=[(np.zeros(feats.size, int), feats // inner)])

    def split(self, n):
        """x.chunk(k, dim) / torch.split(x, sizes, dim): its pieces are read by index (split_piece); a piece of the
        channel axis holds a range of its channels, as ONNX's Split and Slice (not understood, a CSP / GhostNet
        style split froze groups the ONNX export pruned)."""
        xs = self.shape(n.args[0])
        meta = n.meta.get("tensor_meta")
        if xs is None or not isinstance(meta, (tuple, list)) or not all(hasattr(m, "shape") for m in meta):
            return self.unknown(n, "split of unknown shape")
        if any(u.target is not operator.getitem or not isinstance(u.args[1], int) for u in n.users):
            return self.unknown(n, "split whose pieces are not read one by one")
        dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
        dim = int(dim) % len(xs)
        self.pieces[n.name] = (self.slot_of[n.args[0].name], dim, [int(m.shape[dim]) for m in meta], n)

    def split_piece(self, n):
        src, dim, sizes, node = self.pieces[n.args[0].name]
        k = int(n.args[1]) % len(sizes)
        if dim != src[1]:
            return self.moved(n, n, src, src[1])
        off, m = sum(sizes[:k]), sizes[k]
        sout = self.new_slot(n, dim)
        if sout is None or self.cg.size(sout) != m:
            return self.cg.freeze_op(n.name, self.op_type(n), [src, sout], "unknown output shape")
        self.cg.couple(src, sout, off + np.arange(m), np.arange(m))
        self.record(n, "index", [src], [sout], src=[(np.zeros(m, int), off + np.arange(m))], split_node=node,
                    split_sizes=sizes, split_dim=dim)

    def channel_slice(self, n):
        """x[:, lo:hi] (basic slices, and None for a new axis: the SE gate `s[:, :, None, None]`): a range of the
        channels, as an ONNX Slice; None entries move the channel axis (an Unsqueeze)."""
        src = self.slot_of.get(n.args[0].name) if hasattr(n.args[0], "name") else None
        xs = self.shape(n.args[0])
        idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
        if src is None or xs is None or len(self.slotted(n)) != 1 or sum(i is not None for i in idx) > len(xs) or any(
                i is not None and (not isinstance(i, slice) or any(
                    v is not None and not isinstance(v, int) for v in (i.start, i.stop, i.step))) for i in idx):
            return self.unknown(n, "indexing that is not basic slices")
        pos, axis, out_axis = None, 0, 0   # the index entry and output axis of the channel axis
        for k, i in enumerate(idx):
            if i is None:
                out_axis += 1
                continue
            if axis == src[1]:
                pos = k
                break
            axis += 1
            out_axis += 1
        sl = idx[pos] if pos is not None else slice(None)
        if pos is None:
            out_axis += src[1] - axis   # past the entries: the channel axis keeps its place after them
        if sl.step not in (None, 1):
            return self.unknown(n, "strided slice of the channel axis")
        lo, hi, _ = sl.indices(self.cg.size(src))
        m = max(hi - lo, 0)
        sout = self.new_slot(n, out_axis)
        if sout is None or self.cg.size(sout) != m:
            return self.unknown(n, "unknown output shape")
        self.cg.couple(src, sout, lo + np.arange(m), np.arange(m))
        self.record(n, "index", [src], [sout], src=[(np.zeros(m, int), lo + np.arange(m))], slice_lo=lo,
                    slice_pos=pos if pos is not None else len(idx) + src[1] - axis)

    def permute(self, n):
        """x.permute(dims) / torch.permute / x.transpose(d0, d1): the channel axis moves, its channels stay (a
        channel-last nn.Linear between two permutes, MLP-Mixer / ConvNeXt style; not understood, it froze the
        groups the ONNX export, whose Transpose is understood, prunes)."""
        src = self.slot_of.get(n.args[0].name) if n.args and hasattr(n.args[0], "name") else None
        xs = self.shape(n.args[0]) if src is not None else None
        if xs is None or len(self.slotted(n)) != 1:
            return self.unknown(n, "permute of an untracked value")
        r = len(xs)
        rest = list(n.args[1:]) + list(n.kwargs.values())
        if n.target in ("transpose", torch.transpose):
            d0, d1 = (int(d) % r for d in rest)
            perm = list(range(r))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        else:
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            perm = [int(d) % r for d in dims]
        if sorted(perm) != list(range(r)):
            return self.unknown(n, "permute with dims that are not a permutation")
        return self.moved(n, n, src, perm.index(src[1]))

    def size_tuple(self, n, src):
        """x.size() / x.shape read by index: x.shape[0] (x.reshape(x.shape[0], -1)) reads the batch only; the channel
        entry (`b, c, _, _ = x.size()` of the SE reference code) is a count read (read_count); any other use of the
        whole tuple reads the channel count as it is, so it freezes."""
        xs = self.shape(n.args[0])
        if xs is None or not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in n.users):
            return self.unknown(n, "reads the tensor's shape (the channel count would change)")
        for u in n.users:
            if u.args[1] % len(xs) == src[1]:
                self.read_count(src, u, u.name, [v.name for v in u.users])

    # -- functions / methods ---------------------------------------------------------------------
    def function(self, n):
        torch = _torch()
        relu_f, _, _, index_f, other_f, binary = self.sets
        t = n.target
        if n.op == "call_method" and t == "size":
            src = self.slot_of.get(n.args[0].name)
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            if src is None:
                return
            if dim is None:
                return self.size_tuple(n, src)
            if not isinstance(dim, int):
                return self.unknown(n, "reads the channel count")
            if dim % len(self.shape(n.args[0])) == src[1]:
                self.read_count(src, n, n.name, [u.name for u in n.users])
            return
        if t is getattr and n.args[1] == "shape":
            src = self.slot_of.get(getattr(n.args[0], "name", None))
            return self.size_tuple(n, src) if src is not None else None
        if t is operator.getitem and getattr(n.args[0], "name", None) in self.pieces:
            return self.split_piece(n)
        if not self.slotted(n):
            return
        if t in ("chunk", "split") or t is torch.chunk or t is torch.split:
            return self.split(n)
        if t is operator.getitem:
            return self.channel_slice(n)
        if t in relu_f:
            return self.unary(n, "relu")
        if t is torch.nn.functional.relu6:
            return self.unary(n, "clip", lo=0.0, hi=6.0)
        found = function_kind(t, n.args, n.kwargs)
        if found is not None:   # torch.clamp(x, min=0) is a ReLU, F.selu / F.celu / F.elu keep their constants
            return self.catalogue_activation(n, *found)
        if t is torch.nn.functional.leaky_relu:
            return self.unary(n, "leaky_relu", alpha=float(n.args[1] if len(n.args) > 1 else n.kwargs.get("negative_slope", 0.01)))
        if t in index_f:
            return self.unary(n, "index", pool="pool" in getattr(t, "__name__", ""))
        if t in (torch.nn.functional.avg_pool1d, torch.nn.functional.avg_pool2d, torch.nn.functional.avg_pool3d):
            names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
            a = dict(zip(names, n.args), **n.kwargs)
            if avg_pool_keeps_constants(a.get("padding", 0), a.get("ceil_mode", False),
                                        a.get("count_include_pad", True), a.get("divisor_override")):
                return self.unary(n, "index", pool=True)
        if t in other_f:
            return self.unary(n, "other", pool="pool" in getattr(t, "__name__", ""))
        if t in binary:
            return self.binary(n, binary[t])
        if t in (torch.cat, torch.concat, "cat"):
            return self.cat(n)
        if t in (torch.flatten, "flatten"):
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            return self.flatten(n, start, end)
        if t in ("view", "reshape") or t is torch.reshape:
            return self.view(n)
        if t in ("permute", "transpose") or t is torch.permute or t is torch.transpose:
            return self.permute(n)
        if t in ("unsqueeze", "squeeze") or t is torch.unsqueeze or t is torch.squeeze:
            return self.unsqueeze(n)
        if t == "expand_as":
            return self.expand_as(n)
        if t in (torch.mean, "mean", torch.amax, "amax"):
            return self.reduce(n)
        return self.unknown(n, "function not understood by the channel graph")

    def catalogue_activation(self, n, kind: str, params: dict):
        """An activation as core/torch_kinds classifies it (the collapse front end's and the score hooks' rule):
        ReLU, clips (ReLU6, clamp and hardtanh by numbers), LeakyReLU and PReLU as themselves, any other kind as
        the catalogue's f(c). Unread, torch.clamp(x, min=0) and F.prelu froze every group they touched and
        F.selu / nn.SELU / F.celu / F.elu stopped a constant channel."""
        if kind == "relu":
            return self.unary(n, "relu")
        if kind in ("relu6", "clip"):
            return self.unary(n, "clip", lo=float(params.get("min", 0.0)),
                              hi=6.0 if kind == "relu6" else params.get("max"))
        if kind == "leaky_relu":
            return self.unary(n, "leaky_relu", alpha=float(params["alpha"]))
        if kind == "prelu":
            return self.prelu_function(n, params.get("slope"))
        return self.unary(n, "fn", fn=activation_fn(kind, params))

    def prelu_function(self, n, w):
        """F.prelu(x, weight) with weight a parameter of the module (a get_attr node): as nn.PReLU, its
        per-channel slope is sliced with the channels (apply_fx_removal). Frozen where the slope is computed or
        also read elsewhere (slicing it would change that reader)."""
        x = n.args[0]
        src = self.slot_of.get(x.name) if hasattr(x, "name") else None
        if src is None or not isinstance(w, torch.fx.Node) or w.op != "get_attr" or len(w.users) != 1:
            return self.unknown(n, "F.prelu with a computed or shared slope")
        t = get_attr_value(self.gm, w.target)
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            return self.unknown(n, "F.prelu with a slope that is not a 1-D tensor")
        per_channel = t.numel() > 1
        if per_channel and (src[1] != 1 or t.numel() != self.cg.size(src)):
            return self.unknown(n, "per-channel F.prelu not on axis 1")
        v = _np(t).astype(np.float64)
        slope = v if per_channel else np.full(self.cg.size(src), float(v[0]))
        return self.unary(n, "prelu", slope=slope, slice_axis=0 if per_channel else None,
                          param_target=w.target if per_channel else None)

    def binary(self, n, fn):
        fx = _torch().fx
        ro = len(self.shape(n) or [])
        operands = [(self.slot_of[a.name], len(self.shape(a))) for a in n.args
                    if isinstance(a, fx.Node) and a.name in self.slot_of]
        got = self.binary_output(n, n, operands + [(None, 0)] * (len(n.args) - len(operands)), ro)
        if got is None:
            return None
        ax, sout, C = got
        ins, consts = [], []
        for a in n.args:
            if isinstance(a, (int, float)):
                ins.append(None)
                consts.append(np.full(C, float(a)))
                continue
            if not isinstance(a, fx.Node):
                return self.unknown(n, "operand of unknown kind")
            s = self.shape(a)
            k = ax - (ro - len(s)) if s is not None else -1
            if s is None or k < 0 or s[k] == 1:
                if a.name in self.slot_of:
                    return self.unknown(n, "channel value broadcast against another")
                ins.append(None)
                consts.append(None)
                if s is None or (k >= 0 and s[k] != 1) or a.op == "get_attr":
                    return self.unknown(n, "operand of unknown shape or a tensor constant")
                continue
            slot = self.slot_of.get(a.name) or self.get_slot(a, k, n)
            if slot is None:
                return self.unknown(n, "operand without a channel slot")
            self.cg.couple(slot, sout)
            ins.append(slot)
            consts.append(None)
        # torch.add(x, y, alpha=a) is x + a*y and torch.div(x, y, rounding_mode=...) rounds: the channels still go
        # together, but the value is not fn(x, y) (read as it, a constant channel was folded wrong: 0.57 off)
        plain = all((k == "alpha" and v == 1) or (k == "rounding_mode" and v is None) for k, v in n.kwargs.items())
        self.record(n, "binary" if plain else "other", ins, [sout], fn=fn, consts=consts)

    def cat(self, n):
        tensors = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        ro = len(self.shape(n) or [])
        if not ro:
            return self.unknown(n, "unknown output shape")
        dim %= ro
        sout = self.new_slot(n, dim)
        ins = [self.get_slot(a, dim, n) for a in tensors]
        if sout is None or any(s is None for s in ins):
            return self.unknown(n, "concat of channels on another axis or of unknown shape")
        self.record(n, "index", ins, [sout], src=[self.cg.couple_concat(ins, sout)])

    def view(self, n):
        """x.view / x.reshape / torch.reshape that flattens the channel axis with all after it (`x.view(b, -1)`) or
        keeps the axes up to the channel axis and reshapes only after it (`y.view(b, c, 1, 1)`, `view(b, c)` of an
        (N, C, 1, 1) pool: the squeeze-excitation gate of the SE reference code). The channel entry is -1, a count
        read of a value of the same group (`c` of `b, c, _, _ = x.size()`, read_count) or a number (rewritten with
        the kept channels, as the ONNX Reshape's constant is); before 2026-11-29 only flatten(-1) was understood."""
        fx = _torch().fx
        src = self.slot_of.get(n.args[0].name)
        xs, ys = self.shape(n.args[0]), self.shape(n)
        as_tuple = len(n.args) == 2 and isinstance(n.args[1], (tuple, list))
        dims = list(n.args[1]) if as_tuple else list(n.args[1:])
        if not dims and isinstance(n.kwargs.get("shape"), (tuple, list)):
            dims, as_tuple = list(n.kwargs["shape"]), "shape"
        a = src[1]
        lead_free = a == 1 and dims[:1] == [-1] and sum(1 for e in dims if e == -1) == 1   # reshape(-1, c, 1, 1)
        if not xs or not ys or len(dims) != len(ys) or len(ys) <= a or ys[:a] != xs[:a] or any(
                not (isinstance(d, fx.Node) and d.name not in self._counts() or d == xs[i] or lead_free)
                for i, d in enumerate(dims[:a])):
            return self.unknown(n, "view/reshape that is not a flatten of the channel axis or a reshape after it")
        if any(not isinstance(d, int) or d <= 0 for d in xs[a:]):
            return self.unknown(n, "view/reshape of unknown shape")
        inner = int(np.prod(xs[a + 1:], dtype=np.int64))
        d = dims[a]
        flat = len(ys) == a + 1 and ys[a] == xs[a] * inner and inner > 1
        keep = ys[a] == xs[a] and int(np.prod(ys[a + 1:], dtype=np.int64)) == inner
        count = isinstance(d, fx.Node) and d.name in self._counts()
        if not (flat or keep) or isinstance(d, fx.Node) and not count or count and not keep \
                or d == -1 and sum(1 for e in dims if e == -1) != 1:
            return self.unknown(n, "view/reshape that is not a flatten of the channel axis or a reshape after it")
        if flat:
            self.flatten(n, a, -1)
        else:
            self.moved(n, n, src, a)
        last = self.cg.ops[-1] if self.cg.ops else None
        if last is not None and last.name == n.name:   # understood (flatten / moved recorded it)
            if count:
                self.use_count(d.name, n.name, src)
            elif d != -1:
                last.data.update(view_dim=a, view_args=as_tuple)

    def _counts(self) -> set:
        """Names of the nodes that hold a channel count (read_count keys)."""
        return {key for _, _, key, _ in self.count_reads}

    def unsqueeze(self, n):
        """x.unsqueeze(d) / x.squeeze(d) of another axis: the channels move whole (ONNX's Unsqueeze / Squeeze)."""
        src = self.slot_of.get(n.args[0].name) if hasattr(n.args[0], "name") else None
        xs, ys = self.shape(n.args[0]), self.shape(n)
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if src is None or xs is None or ys is None or len(self.slotted(n)) != 1 or not isinstance(dim, int):
            return self.unknown(n, "unsqueeze / squeeze of all axes or of unknown shape")
        if len(ys) == len(xs) + 1:
            at = dim % len(ys)
            return self.moved(n, n, src, src[1] + (1 if at <= src[1] else 0))
        at = dim % len(xs)
        if at == src[1]:
            return self.unknown(n, "squeezes the channel axis")
        return self.moved(n, n, src, src[1] - (1 if len(ys) < len(xs) and at < src[1] else 0))

    def expand_as(self, n):
        """y.expand_as(x) with y's channel axis whole (the SE reference code's gate, (N, C, 1, 1) to x's shape): the
        output's channels are y's, and x's count sizes it, so x, y and the output are coupled one to one."""
        y, x = n.args[0], n.args[1]
        sy = self.slot_of.get(getattr(y, "name", None))
        ys, xs, os_ = self.shape(y), self.shape(x), self.shape(n)
        if sy is None or ys is None or xs is None or os_ is None or len(xs) != len(os_):
            return self.unknown(n, "expand_as of an untracked value or of unknown shape")
        a = sy[1] + len(os_) - len(ys)
        if ys[sy[1]] != os_[a]:
            return self.unknown(n, "expands the channel axis")
        sout = self.new_slot(n, a)
        sx = self.get_slot(x, a, n)
        if sout is None or sx is None:
            return self.unknown(n, "unknown output shape")
        self.cg.couple(sy, sout)
        self.cg.couple(sx, sout)
        m = self.cg.size(sy)
        self.record(n, "index", [sy, sx], [sout], src=[(np.zeros(m, int), np.arange(m))])

    def reduce(self, n):
        src = self.slot_of.get(n.args[0].name)
        r = len(self.shape(n.args[0]) or [])
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
        if dim is None:
            return self.unknown(n, "reduces over all axes")
        dims = sorted(int(d) % r for d in (dim if isinstance(dim, (tuple, list)) else [dim]))
        if src[1] in dims:
            return self.unknown(n, "reduces over the channel axis")
        a = src[1] if keep else src[1] - sum(1 for d in dims if d < src[1])
        sout = self.new_slot(n, a)
        if sout is None:
            return self.unknown(n, "unknown output shape")
        self.cg.couple(src, sout)
        m = self.cg.size(src)
        self.record(n, "index", [src], [sout], src=[(np.zeros(m, int), np.arange(m))])


def _op_type(n, gm=None) -> str:
    """The op's kind, as ONNX's op_type is: a module's class name (its path is the op's name)."""
    if n.op == "call_module":
        try:
            return type(gm.get_submodule(n.target)).__name__ if gm is not None else n.target
        except AttributeError:
            return n.target
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def build_fx_channel_graph(gm, example_inputs) -> ChannelGraph:
    """example_inputs None: gm's node metadata already holds its shapes (ShapeProp ran, nothing changed since)."""
    return _FxBuilder(gm, example_inputs).build()


def _propagate(gm, example_inputs) -> None:
    """ShapeProp on copies of example_inputs (a model may write into its input); None: nothing to do."""
    from torch.fx.passes.shape_prop import ShapeProp

    if example_inputs is None:
        return
    # ShapeProp prints the traceback of a failing node to stderr itself (as fx/graph.shape_run silences it): the
    # caller's one line (prune_module: "the model does not run on example_inputs ...") came after a page of it
    with _shape_run(), contextlib.redirect_stderr(io.StringIO()):
        ShapeProp(gm).propagate(*(t.clone() if isinstance(t, torch.Tensor) else t for t in example_inputs))


# ------------------------------------------------------------------------------------------ rewrite

def apply_fx_removal(gm, cg: ChannelGraph, removed, folds=()) -> dict:
    """Slice the modules of gm in place; a conv that absorbs a constant through zero padding gets a
    per-position bias map (a `ConvWithBiasMap` wrapper)."""
    torch = _torch()
    nn = torch.nn
    info = {"bias_maps": []}

    def param(a, like):
        return nn.Parameter(torch.as_tensor(np.ascontiguousarray(a), dtype=like.dtype), requires_grad=like.requires_grad)

    for edit in removal_edits(cg, removed, folds):
        rec, k_in = edit.rec, edit.k_in
        if rec.kind == "prelu" and rec.data.get("param_target") and edit.k_out is not None:   # F.prelu's slope
            t = get_attr_value(gm, rec.data["param_target"])
            _set_attr(gm, rec.data["param_target"], nn.Parameter(t.detach()[torch.as_tensor(edit.k_out)].clone(),
                                                                 requires_grad=t.requires_grad))
        if "split_node" in rec.data and k_in is not None:   # the pieces' sizes: what each keeps of its range
            node, sizes = rec.data["split_node"], rec.data["split_sizes"]
            offs = np.cumsum([0] + sizes)
            kept = [int(np.sum((k_in >= offs[i]) & (k_in < offs[i + 1]))) for i in range(len(sizes))]
            node.op, node.target = "call_function", torch.split
            node.args, node.kwargs = (node.args[0], kept), {"dim": rec.data["split_dim"]}
        if "slice_lo" in rec.data and (k_in is not None or edit.k_out is not None):
            n, a = rec.data["fx_node"], rec.data.get("slice_pos", rec.outs[0][1])
            kin = k_in if k_in is not None else np.arange(cg.size(rec.ins[0]))
            lo = int(np.sum(kin < rec.data["slice_lo"]))
            m = len(edit.k_out) if edit.k_out is not None else cg.size(rec.outs[0])
            idx = list(n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],))
            idx += [slice(None)] * (a + 1 - len(idx))
            idx[a] = slice(lo, lo + m)
            n.args = (n.args[0], tuple(idx))
        if "view_dim" in rec.data and edit.k_out is not None:   # a number at the channel entry of a view's shape
            n, a = rec.data["fx_node"], rec.data["view_dim"]
            if rec.data["view_args"] == "shape":
                n.kwargs = dict(n.kwargs, shape=tuple(len(edit.k_out) if i == a else v
                                                      for i, v in enumerate(n.kwargs["shape"])))
            elif rec.data["view_args"]:
                n.args = (n.args[0], tuple(len(edit.k_out) if i == a else v for i, v in enumerate(n.args[1])))
            else:
                n.args = tuple(len(edit.k_out) if i == a + 1 else v for i, v in enumerate(n.args))
        if "module" not in rec.data:
            continue
        mod, new = rec.data["module"], edit.params
        if rec.kind in ("conv", "dense", "convt"):
            mod.weight = param(new.weight, mod.weight)
            if new.bias is not None:
                mod.bias = param(new.bias, mod.weight)
            elif mod.bias is not None:
                mod.bias = None
        if rec.kind in ("conv", "convt"):
            mod.in_channels, mod.out_channels, mod.groups = new.in_channels, new.out_channels, new.group
            if edit.bias_map is not None:
                _set_attr(gm, rec.data["fx_node"].target,
                               ConvWithBiasMap(mod, torch.as_tensor(edit.bias_map, dtype=mod.weight.dtype),
                                               rec.data.get("input_spatial")))
                info["bias_maps"].append(rec.name)
        elif rec.kind == "dense":
            mod.in_features, mod.out_features = new.in_features, new.out_features
        elif rec.kind == "prelu" and rec.data["slice_axis"] is not None and edit.k_out is not None:
            mod.weight = nn.Parameter(mod.weight.detach()[torch.as_tensor(edit.k_out)].clone(),
                                      requires_grad=mod.weight.requires_grad)
            mod.num_parameters = len(edit.k_out)
        elif rec.kind == "bn":
            idx = torch.as_tensor(k_in)
            for name in ("weight", "bias"):
                t = getattr(mod, name)
                if t is not None:
                    setattr(mod, name, nn.Parameter(t.detach()[idx].clone(), requires_grad=t.requires_grad))
            mod.running_mean = mod.running_mean[idx].clone()
            mod.running_var = mod.running_var[idx].clone()
            mod.num_features = len(k_in)
    gm.recompile()
    return info


def _set_attr(gm, target: str, value) -> None:
    """Set the submodule or parameter at the dotted path `target` of gm."""
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, value)


def _module_fn(mod):
    """float -> float of a smooth activation module (SiLU, GELU, Hardswish, ...), else None."""
    nn = torch.nn
    kinds = {nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardswish: "hardswish", nn.Mish: "mish"}
    kind = next((k for t, k in kinds.items() if type(mod) is t), None)
    if kind is not None:
        return activation_fn(kind)
    if type(mod) is nn.GELU:
        return activation_fn("gelu_tanh" if mod.approximate == "tanh" else "gelu")
    if type(mod) is nn.Hardsigmoid:
        return activation_fn("hardsigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5})
    if type(mod) is nn.ELU:
        return activation_fn("elu", {"alpha": float(mod.alpha)})
    return None


class ConvWithBiasMap(torch.nn.Module):
    """conv(x) + a per-position bias map (a removed constant channel read through zero padding).

    The map holds the borders of the input size it was computed at (in_spatial): another size raised a bare
    broadcast error (a ResNet-50 pruned at 64 and run at 96), or, where the output size is the same (a stride-2
    conv at 223 and 224), added the wrong borders silently; forward refuses it, as fx/graph.PaddedConv does."""

    def __init__(self, conv, bias_map, in_spatial=None):
        super().__init__()
        self.conv = conv
        self.register_buffer("bias_map", bias_map)
        self.in_spatial = None if in_spatial is None else tuple(int(d) for d in in_spatial)

    def forward(self, x):
        if self.in_spatial is not None and tuple(x.shape[2:]) != self.in_spatial:
            raise ValueError(f"collapse_passes: this pruned conv absorbed a removed constant channel through its zero "
                             f"padding at input spatial size {self.in_spatial} (its bias map holds that size's borders), "
                             f"got {tuple(x.shape[2:])}; prune with example_inputs of the size you run the model at")
        return self.conv(x) + self.bias_map


# ------------------------------------------------------------------------------------------ entry point

def prune_module(module, example_inputs, *, exact: bool = True, ratio: float | None = None, scope: str = "global",
                 round_to: int = 1, importance: str = "l1", channel_scores: dict | None = None, calib=None,
                 shapes_known: bool = False, check: int = 3, seed: int = 0):
    """(pruned nn.Module, report): exact constant-channel removal and/or ratio pruning of a torch module.

    module: an nn.Module (traced with torch.fx.symbolic_trace) or a GraphModule; it is not modified.
    example_inputs: a tensor or tuple of tensors (shapes for flatten and bias maps).
    calib: optional iterable of input batches (tensors or tuples); ReLU / ReLU6 / Hardswish channels that are 0 on all of them
    are removed too (data-dependent: the result equals the module with those channels forced to 0).
    shapes_known: module is a GraphModule whose node metadata holds its shapes on example_inputs (collapse() ran
    ShapeProp): the model runs only after a removal, and the result shares the weights it does not slice with
    module (collapse() passes its own graph, whose weights are the user's: they are replaced, never edited).
    The result's node metadata holds its shapes on example_inputs either way.
    check: random inputs of example_inputs' shapes (seeded by seed) on which an approximate removal (ratio, calib)
    is compared with the module it came from: report["ratio"]["error_vs_unpruned"] and report["calib_dead_error"],
    said in a warning, as the ONNX path reports them; 0 measures nothing (collapse() measures the ratio's itself).
    """
    torch = _torch()
    from .select import check_ratio, select_for_ratio

    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise CollapseError(f"check must be an integer >= 0 (random inputs for the error of an approximate prune), "
                            f"got {check!r}")

    if ratio is not None:
        check_ratio(ratio, round_to)
    elif isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        check_ratio(0.0, round_to)
    if ratio is None and (round_to != 1 or scope != "global" or importance != "l1" or channel_scores is not None):
        # they rank and round a ratio prune only: without ratio= they were ignored without a word
        raise CollapseError("round_to / scope / importance / channel_scores have an effect only with ratio=R (a "
                            "ratio prune); add ratio= or drop them")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    # copies: ShapeProp runs the module, which may write into its input (x.mul_(2))
    example_inputs = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in example_inputs)
    if isinstance(module, torch.nn.Module):
        from ..fx.api import refuse_torchscript

        refuse_torchscript(module)   # a scripted submodule: a TypeError traceback out of keep_module_state
    shapes_known = shapes_known and isinstance(module, torch.fx.GraphModule)
    if shapes_known:
        gm = copy_sharing_weights(module)
    else:
        gm = copy.deepcopy(module)
    if not isinstance(gm, torch.fx.GraphModule):
        from ..fx.api import has_forward_hooks

        if has_forward_hooks(gm):   # symbolic_trace traces forward() alone: the result silently lost them
            raise CollapseError("the module has forward hooks of its own (register_forward_hook on it), which "
                                "torch.fx's trace leaves out: prune it without them and register them on the result")
        try:
            root = gm
            gm = torch.fx.symbolic_trace(root)
        except Exception as exc:
            raise CollapseError(f"torch.fx cannot trace this module ({' '.join(str(exc).split())[:160]}); "
                                "pass a GraphModule") from None
        from ..fx.call_path import resolve_annotations

        resolve_annotations(gm.graph, root)   # string annotations (PEP 563) broke torch.jit.script / torch.save of it
        gm.recompile()
    # BatchNorm / dropout in training mode: the channel graph reads BatchNorms with their running statistics (a
    # constant channel's value), so the result is in eval mode; else it keeps the module's modes (keep_module_state)
    train_mode = training_batchnorms(gm)
    if train_mode:
        gm.eval()
    stale = [not shapes_known]   # the node metadata lacks the shapes (or a removal changed them)
    changed = False
    if stale[0]:   # the first run, on the caller's inputs: a wrong shape or dtype is one line, as collapse() says it
        try:
            _propagate(gm, example_inputs)
        except Exception:
            from ..fx.api import _runs_on

            _runs_on(module, example_inputs)   # CollapseError when the module itself fails on them
            raise
        stale[0] = False

    def shape_inputs():   # what a shape reader runs on: nothing while the metadata holds the shapes
        run, stale[0] = stale[0], False
        return example_inputs if run else None

    before = _counts(gm, shape_inputs())
    report = {"exact_removal": exact, "groups": [], "removed_channels": 0}
    measure = check > 0 and (ratio is not None or calib is not None)
    if measure:
        unpruned = copy_sharing_weights(gm)   # no removal edits a tensor in place: the weights can be shared
    after_ratio = None
    # the ratio prune first, as on ONNX: exact removal can turn a conv into a ConvWithBiasMap, which the
    # channel graph does not read (it would freeze that layer's groups and the ratio would skip them)
    if ratio is not None:
        cg = build_fx_channel_graph(gm, shape_inputs())
        if importance in ("l1", "l2"):
            imp = cg.filter_importance(1 if importance == "l1" else 2)
        elif importance == "scores" and channel_scores:
            imp = cg.score_importance(_checked_scores(gm, channel_scores))
        else:
            raise CollapseError(f"unknown pruning importance {importance!r}; use l1, l2 or scores with channel_scores")
        removed = select_for_ratio(cg, imp, ratio, scope, round_to)
        from .onnx_prune import graph_summary, group_rows

        # the keys the ONNX path's report["pruning"]["ratio"] has (onnx_prune.ratio_prune, api_hook.prune_to_ratio):
        # importance, the group counts and what the ratio prune alone saved were missing here (a KeyError in a
        # script that reads both front ends' reports)
        report["ratio"] = {"ratio": ratio, "scope": scope, "round_to": round_to, "importance": importance,
                           "removed_channels": cg.channel_count(removed),
                           "groups": group_rows(cg, removed, {gid: "ratio" for gid, _ in removed}),
                           **graph_summary(cg)}
        if removed:
            apply_fx_removal(gm, cg, removed)
            stale[0] = changed = True
        mid = _counts(gm, shape_inputs()) if removed else before   # the ratio prune alone, before exact removal
        report["ratio"].update(params_saved=before[0] - mid[0], macs_saved=before[1] - mid[1])
        if measure:
            after_ratio = copy_sharing_weights(gm) if calib is not None else gm
    if exact and shapes_known and calib is None and not _constant_source_possible(gm):
        # collapse() calls us on every model: the channel graph is most of our time (ResNet-50 ~1 s, a per-channel
        # graph), and with no channel that can start a constant there is nothing for exact removal to find
        report.update(notes=[], removed_channels=0, frozen_ops=[],
                      channel_graph="not built: no conv / linear has an all-zero filter and no BatchNorm a zero "
                                    "scale, so no channel is a known constant")
    elif exact:
        cg = build_fx_channel_graph(gm, shape_inputs())
        dd = _always_off(gm, cg, calib) if calib is not None else {}
        from .onnx_prune import applicable_constants, removal_rows

        report["notes"] = []
        found = applicable_constants(cg, cg.constant_units(dd), report["notes"])
        removed = [(f["gid"], f["unit"]) for f in found]
        if removed:
            report["groups"] = removal_rows(cg, found)
            report["data_dependent"] = any(f["data_dependent"] for f in found)
            info = apply_fx_removal(gm, cg, removed, [x for f in found for x in f["folds"]])
            stale[0] = changed = True
            if info["bias_maps"]:   # as the ONNX path says it; the result runs at this input size only
                report["notes"].append(f"{len(info['bias_maps'])} conv(s) got a per-position bias map (a removed "
                                       "constant channel read through zero padding): the result takes inputs of "
                                       "the example's spatial size only")
        report["removed_channels"] = cg.channel_count(removed)
        report["frozen_ops"] = cg.frozen_ops[:200]
        if calib is not None and not any(f["data_dependent"] for f in found):   # as the ONNX run warns
            msg = no_dead_channel_note("calib")
            report["notes"].append(msg)
            warnings.warn(msg, stacklevel=2)
    if measure:
        _measure_approximation(report, unpruned, after_ratio, gm, example_inputs, check, seed)
    after = _counts(gm, shape_inputs()) if changed else before
    report.update(params_before=before[0], params_after=after[0], macs_before=before[1], macs_after=after[1],
                  params_saved=before[0] - after[0], macs_saved=before[1] - after[1])
    keep_module_state(gm, module)
    if train_mode:
        gm.eval()
        report.setdefault("notes", []).append(
            f"{train_mode[0]} (BatchNorm / dropout) was in training mode: pruned with the running statistics, "
            "the result is in eval mode (call .train() on it to fine-tune)")
    return gm, report


def _measure_approximation(report, unpruned, after_ratio, pruned, example_inputs, check: int, seed: int) -> None:
    """The error of an approximate removal on `check` seeded random inputs, as the ONNX path measures it
    (pruning/api_hook): a ratio prune against the unpruned module (report["ratio"]["error_vs_unpruned"]), a calib
    removal against the module before it (report["calib_dead_error"]), each said in a warning. Before 2026-11-29
    prune_module returned a ratio-pruned ResNet-50 0.9 off in relative terms without a number."""
    from ..core.runtime import compare
    from ..fx.api import _feeds, run_outputs

    if after_ratio is None and not report.get("data_dependent"):
        return   # calib= removed nothing: nothing approximate to measure
    feeds = _feeds(example_inputs, check + 1, seed)[1:]   # random inputs only (example_inputs may be calib data)
    desc = f"{check} random input(s)"
    with _shape_run():
        base = run_outputs(unpruned, feeds)
        mid = run_outputs(after_ratio, feeds) if after_ratio is not None and after_ratio is not pruned else None
        final = run_outputs(pruned, feeds)
    names = [f"output{i}" for i in range(len(base[0]))]
    if after_ratio is not None:
        c = compare(base, mid if mid is not None else final, names, 1e-4, 1e-5)
        report["ratio"]["error_vs_unpruned"] = {"max_abs": c.max_abs, "max_rel": c.max_rel, "inputs": desc}
        warnings.warn(f"prune ratio {report['ratio']['ratio']}: approximate, max abs error {c.max_abs:.3g} (max rel "
                      f"{c.max_rel:.3g}) against the unpruned model on {desc}", stacklevel=3)
        from .select import misaligned_note

        note = misaligned_note(report["ratio"]["groups"], report["ratio"]["ratio"])
        if note:
            warnings.warn(note, stacklevel=3)
    if report.get("data_dependent"):
        c = compare(mid if mid is not None else base, final, names, 1e-4, 1e-5)
        report["calib_dead_error"] = {"max_abs": c.max_abs, "max_rel": c.max_rel, "inputs": desc}
        warnings.warn(f"calib: channels removed because their activation was 0 on every calibration batch "
                      f"(approximate): on {desc} the result differs from the model that keeps them by max abs "
                      f"{c.max_abs:.3g} (max rel {c.max_rel:.3g}); without calib= they are kept", stacklevel=3)


def _off_is_zero(gm, op) -> bool:
    """An activation whose whole off side is exactly 0 (graph.OFF_IS_ZERO): ReLU, a clip from 0 (ReLU6),
    Hardswish."""
    if op.kind == "relu":
        return True
    if op.kind == "clip":
        return op.data.get("lo") == 0.0
    n = op.data.get("fx_node")
    if n is None:
        return False
    F = torch.nn.functional
    if n.op == "call_function":   # the functional forms ("other" ops): F.hardswish, F.hardtanh(x, 0., hi)
        if n.target is F.hardswish:
            return True
        if n.target is F.hardtanh:
            lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min_val", -1.0)
            return isinstance(lo, (int, float)) and float(lo) == 0.0
        return False
    return (op.kind == "fn" and n.op == "call_module"
            and type(gm.get_submodule(n.target)) is torch.nn.Hardswish)


def _always_off(gm, cg: ChannelGraph, calib) -> dict:
    """{slot of an activation output: channels that are 0 on every calibration batch and position}."""
    relus = {op.data["fx_node"].name: op.outs[0] for op in cg.ops if _off_is_zero(gm, op)}
    peak: dict = {}
    seen = 0

    class _Tap(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in relus and isinstance(out, torch.Tensor):
                axis = relus[n.name][1]
                m = out.detach().movedim(axis, 0).reshape(out.shape[axis], -1).abs().amax(dim=1)
                peak[n.name] = m if n.name not in peak else torch.maximum(peak[n.name], m)
            return out

    with _shape_run():
        for batch in calib:
            _Tap(gm).run(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
            seen += 1
    if not seen:   # counted apart from peak: a model with no ReLU-like activation (LeakyReLU only) taps nothing
        raise CollapseError("calib holds no batches")
    return {relus[k]: set(torch.nonzero(v == 0).flatten().tolist()) for k, v in peak.items()}


def _constant_source_possible(gm) -> bool:
    """Can a channel of gm start a known constant (ChannelGraph._constant_sources without calibration data: a
    conv / transposed conv / linear module with an all-zero filter, a BatchNorm module with a zero scale; the
    channel graph reads conv, convt, dense and bn ops from these modules only)?"""
    nn = _torch().nn
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(n.target)
        if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            if zero_filters(ConvTransposeParams(_np(mod.weight), None, mod.groups).filters()).any():
                return True
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            if zero_filters(_np(mod.weight)).any():
                return True
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and mod.running_mean is not None:
            g = _np(mod.weight) if mod.weight is not None else np.ones(mod.num_features)
            b = _np(mod.bias) if mod.bias is not None else np.zeros(mod.num_features)
            scale, _ = bn_to_affine(g, b, _np(mod.running_mean), _np(mod.running_var), mod.eps)
            if np.any(np.asarray(scale, np.float64) == 0):
                return True
    return False


def _counts(gm, example_inputs) -> tuple[int, int]:
    """(parameters, MACs of convs and linears for the example input; None: shapes from the node metadata)."""
    torch = _torch()
    _propagate(gm, example_inputs)
    params = sum(p.numel() for p in gm.parameters())
    macs = 0
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(n.target)
        mod = getattr(mod, "conv", mod)
        meta = n.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):   # None, or a tuple of metas (nn.MultiheadAttention, nn.LSTM)
            continue
        out = int(np.prod(meta.shape))
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            macs += out * (mod.in_channels // mod.groups) * int(np.prod(mod.kernel_size))
        elif isinstance(mod, torch.nn.Linear):
            macs += out * mod.in_features
    return int(params), int(macs)


def _checked_scores(gm, channel_scores: dict) -> dict:
    """{fx node name: float64 scores}: keys may name a node or a module (its call_module target). What the
    ONNX path checks (pruning/api_hook._check_channel_scores): an unknown name or a NaN used to leave those
    channels unranked (kept), so the ratio prune removed nothing without a word."""
    by_target: dict = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            by_target.setdefault(str(n.target), []).append(n.name)
    names = {n.name for n in gm.graph.nodes}
    out = {}
    for k, v in channel_scores.items():
        calls = [k] if k in names else by_target.get(k)
        if not calls:
            raise CollapseError(f"prune_importance: {k!r} names no node or module of the traced model; use a "
                                "module path (layer1.0.relu) or an fx node name")
        if len(calls) > 1:   # the last call's node was ranked, the others not, without a word (the ONNX path refuses)
            raise CollapseError(f"prune_importance: module {k!r} is called at {len(calls)} places (fx nodes "
                                f"{', '.join(calls[:3])}); name the fx node of the call to rank")
        name = calls[0]
        try:
            arr = np.asarray(v, np.float64).reshape(-1)
        except (TypeError, ValueError):
            arr = np.array([np.nan])
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise CollapseError(f"prune_importance: {k!r} must be a non-empty list of finite numbers "
                                "(one score per channel)")
        out[name] = arr
    return out
