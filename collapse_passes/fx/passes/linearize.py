"""linearize: replace the chosen activations by their linear regime (identity for almost all).

This is the collapse itself, and alone it defines the requested semantics the result is verified
against (the same pass on a copy of the input)."""
from __future__ import annotations

import operator

from torch import fx

from ...core import activations as catalogue
from ...errors import CollapseError
from ...core.selection import lookup
from ..graph import find_activations, key_index, mutated_between, mutates
from ._base import FxPass, PassResult


class LinearizeActivations(FxPass):
    """keys: activation keys (module path, path:i, or fx node name); every key must name a site."""
    name = "linearize"

    def __init__(self, keys=(), record=None):
        super().__init__(record)
        self.keys = list(keys)
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
            with gm.graph.inserting_before(first):
                if inplace:
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
