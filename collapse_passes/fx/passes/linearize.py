"""linearize: replace the chosen activations by their linear regime (identity for almost all).

This is the collapse itself, and alone it defines the requested semantics the result is verified
against (the same pass on a copy of the input).

With `regimes` {site key: core.channel_regimes.ChannelRegime} (channel_regimes=True) a site listed there becomes
its per-channel map x*scale[c] + shift[c] instead. On the channel axis 1 it is written as a BatchNorm module
(ChannelMap2d: mean 0, var 1, eps 0, eval arithmetic in train mode too: exactly that map), which the fold pass folds into the conv / linear next to it and
the channel pruning reads (a zero scale: a constant channel, removed exactly); on another axis (tokens) as a Mul /
Add by buffers, exact but left as ops."""
from __future__ import annotations

import operator

import torch
from torch import fx

from ...core import activations as catalogue
from ...errors import CollapseError
from ...core.selection import lookup
from ..graph import _fresh_name, find_activations, key_index, mutated_between, mutates
from ._base import FxPass, PassResult


class _ModeFree:
    """The per-channel map is BatchNorm's eval arithmetic in train mode too: a plain BatchNorm left in the result
    (one the fold could not take: a ResNet's ReLU after the residual Add) normalized by batch statistics and moved
    its running stats once `res.model.train()` ran (fine-tuning), and eps 0 made torch refuse it there outright."""

    def forward(self, x):
        import torch.nn.functional as F

        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ChannelMap1d(_ModeFree, torch.nn.BatchNorm1d):
    pass


class ChannelMap2d(_ModeFree, torch.nn.BatchNorm2d):
    pass


class ChannelMap3d(_ModeFree, torch.nn.BatchNorm3d):
    pass


class LinearizeActivations(FxPass):
    """keys: activation keys (module path, path:i, or fx node name); every key must name a site."""
    name = "linearize"

    def __init__(self, keys=(), record=None, regimes=None):
        super().__init__(record)
        self.keys = list(keys)
        self.regimes = dict(regimes or {})
        self._mark = f"_collapse_linearized_{id(self)}"   # set on a graph once done: a fixed-point loop reruns us

    def call(self, gm: fx.GraphModule) -> PassResult:
        if getattr(gm, self._mark, False):   # on the graph, not id(gm): a freed graph's id is reused
            return PassResult(gm, False)
        setattr(gm, self._mark, True)
        sites = find_activations(gm)
        index = key_index(sites)
        chosen = {}
        for key in self.keys:
            for s in lookup(index, key, "collapse (--collapse)"):
                chosen[s.name] = s
        now = {}   # a linearized site's node -> what replaced it (a collapsed activation may feed the next one)
        for s in chosen.values():
            x = s.x
            while x in now:
                x = now[x]
            if not catalogue.is_collapsible(s.kind):
                raise CollapseError(f"collapse: {s.keys[0]!r} is a {s.kind}, which has no linear regime to collapse to")
            scale, shift = catalogue.linear_regime(s.kind, s.params)
            new = x
            first = s.nodes[0]   # where the site reads x (a composite reads it at its first op)
            inplace = mutates(s.node, x)
            regime = self.regimes.get(s.keys[0])
            with gm.graph.inserting_before(first):
                if regime is not None:
                    new = _per_channel(gm, s, new, regime)
                    if inplace and not (x.op == "call_module" and set(x.users) <= set(s.nodes) | {new}):
                        # x.relu_() on a view or a tensor read again later: the map's values are written into x
                        # too; a module's output read by the site alone needs no write (and then folds)
                        new = gm.graph.call_method("copy_", (x, new))
                elif inplace:
                    # x.relu_(), x[:, :2].hardsigmoid_(): the regime is written into x too (through the view)
                    if scale != 1.0:
                        new = gm.graph.call_method("mul_", (new, scale))
                    if shift != 0.0:
                        new = gm.graph.call_method("add_", (new, shift))
                else:
                    if scale == 1.0 and shift == 0.0 and mutated_between(x, first):
                        # identity, but x is changed in place later (maybe through a view): keep the value it
                        # had here, not an alias
                        new = gm.graph.call_method("clone", (new,))
                    if scale != 1.0:
                        new = gm.graph.call_function(operator.mul, (new, scale))
                    if shift != 0.0:
                        new = gm.graph.call_function(operator.add, (new, shift))
            # every inserted op has the site's shape: collapse() reads shapes from this metadata after the
            # pass (the channel graph of its pruning step) instead of running the model again
            inserted = []
            op = new
            while op is not x:   # the chain of mul/add/clone just inserted, each reading the one before
                inserted.append(op)
                op = op.args[0]
            for op in inserted:
                for k in ("tensor_meta", "val", "example_value", "nn_module_stack"):
                    if k in s.node.meta:
                        op.meta[k] = s.node.meta[k]
            s.node.replace_all_uses_with(new)
            now[s.node] = new
            for n in reversed(s.nodes):   # a composite's inner ops are read only inside it
                gm.graph.erase_node(n)
            self.record.linearized.append(s.keys[0])
        if chosen:
            gm.graph.lint()
            gm.recompile()
            self.note(f"linearized {len(chosen)} activation(s)")
        return PassResult(gm, bool(chosen))


def _per_channel(gm: fx.GraphModule, s, x: fx.Node, r) -> fx.Node:
    """Insert y = x*scale[c] + shift[c] on the channel axis of `r` (a ChannelRegime) and return y's node."""
    import torch

    from ...core.channel_regimes import broadcast_shape

    meta = s.node.meta.get("val", s.node.meta.get("example_value"))
    tm = s.node.meta.get("tensor_meta")
    shape = tuple(meta.shape) if meta is not None else tuple(tm.shape) if tm is not None else None
    dtype = meta.dtype if meta is not None else tm.dtype if tm is not None else torch.float32
    device = meta.device if meta is not None and not getattr(meta, "is_meta", False) else \
        next((t.device for t in gm.parameters()), torch.device("cpu"))
    bshape = broadcast_shape(r.scale.size, r.axis, None if shape is None else len(shape))
    if bshape is None or shape[r.axis] != r.scale.size:
        raise CollapseError(f"channel_regimes: activation {s.keys[0]!r}: its input's shape ({shape}) does not match "
                            f"the {r.scale.size} channels of its statistics on axis {r.axis}; run without "
                            "channel_regimes")
    scale = torch.as_tensor(r.scale, dtype=dtype, device=device)
    shift = torch.as_tensor(r.shift, dtype=dtype, device=device)
    name = _fresh_name(gm, f"{s.name}_channel_regime")
    if r.axis == 1 and len(shape) in (2, 3, 4, 5):
        bn_cls = {2: ChannelMap1d, 3: ChannelMap1d, 4: ChannelMap2d, 5: ChannelMap3d}
        bn = bn_cls[len(shape)](r.scale.size, eps=0.0, device=device, dtype=dtype).eval()
        with torch.no_grad():
            bn.weight.copy_(scale)
            bn.bias.copy_(shift)
        gm.add_submodule(name, bn)   # running mean 0, var 1: (x - 0)/sqrt(1 + 0)*scale + shift, exactly
        out = [gm.graph.call_module(name, (x,))]
    else:
        gm.register_buffer(f"{name}_scale", scale.reshape(bshape))
        gm.register_buffer(f"{name}_shift", shift.reshape(bshape))
        out = [gm.graph.call_function(operator.mul, (x, gm.graph.get_attr(f"{name}_scale")))]
        out.append(gm.graph.call_function(operator.add, (out[0], gm.graph.get_attr(f"{name}_shift"))))
    for n in out:   # the site's shape, as the other inserted ops (the pruning reads it)
        for k in ("tensor_meta", "val", "example_value", "nn_module_stack"):
            if k in s.node.meta:
                n.meta[k] = s.node.meta[k]
    return out[-1]
