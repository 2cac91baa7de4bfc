"""absorb: fold a residual skip into the linear branch beside it (algebra.conv.add_identity_skip /
add_pointwise_skip, algebra.linear.add_identity).

y = conv(x) + x     -> one conv with a delta at the tap that reads the output's own pixel
y = conv(x) + p(x)  -> one conv, p a 1x1 projection shortcut with the same stride (BN folded first)
y = linear(x) + x   -> one linear with W + I
A skip the algebra cannot take (stride, misaligned padding, channel change) is kept, with a note."""
from __future__ import annotations

import numpy as np
from torch import fx

from ...algebra import conv as conv_alg
from ...algebra import linear as lin_alg
from ...algebra.cost import conv_macs, linear_macs
from ...core.merge_fallback import join_key
from ...errors import CollapseError
from ..graph import (feeds_output, insert_linear, is_add, linear_op, mutated_between, origin, shape_of,
                     single_user)
from ._base import FxPass, PassResult


def _macs(op, params) -> int:
    """MACs of the op `op` with `params` at its output's shape, as api.graph_stats counts them for the report's
    totals (the batch included; 0 where the shape is unknown)."""
    out = shape_of(op.node)
    if not out:
        return 0
    if op.kind == "conv":
        return int(out[0] * conv_macs(params, tuple(out[2:])))
    return int(linear_macs(params, int(np.prod(out[:-1])) if len(out) > 1 else 1))


class AbsorbResidual(FxPass):
    name = "absorb_residual"

    def __init__(self, record=None, allowed=None):
        super().__init__(record)
        self.allowed = allowed   # join keys an absorb may use (None: all), core/merge_fallback

    def call(self, gm: fx.GraphModule) -> PassResult:
        done = 0
        for add in list(gm.graph.nodes):
            if add.graph is None or not is_add(add) or not all(isinstance(a, fx.Node) for a in add.args):
                continue
            n_notes = len(self.record.notes)
            for bi in (0, 1):
                branch, skip = add.args[bi], add.args[1 - bi]
                op = linear_op(gm, branch)
                if op is None or single_user(branch) is not add or feeds_output(branch):
                    continue
                if self._absorb(gm, add, op, skip):
                    done += 1
                    del self.record.notes[n_notes:]   # the failed other way round's "kept" note (as on ONNX)
                    break
        return self.finish(gm, done, "absorbed {} residual skip(s)")

    def _absorb(self, gm, add, op, skip) -> bool:
        proj = None
        join = join_key("+".join(origin(op.node)), add.name)
        if self.allowed is not None and join not in self.allowed:   # refused after verification
            return False
        try:
            if op.kind == "conv":
                if skip is op.x:
                    new, kind = conv_alg.add_identity_skip(op.params), "identity"
                else:
                    proj = linear_op(gm, skip)
                    if proj is None or proj.kind != "conv" or proj.x is not op.x or proj.bias_map is not None \
                            or single_user(skip) is not add or feeds_output(skip):
                        return False
                    new, kind = conv_alg.add_pointwise_skip(op.params, proj.params), "projection"
            else:
                if skip is not op.x:
                    return False
                new, kind = lin_alg.add_identity(op.params), "identity"
        except CollapseError as exc:
            self.note(f"residual at {add.name} kept: {exc}")
            return False
        first = op.node if proj is None else min(op.node, proj.node)   # read x where the branch read it
        if mutated_between(op.x, first, add):
            self.note(f"residual at {add.name} kept: its input is changed in place between the branch and the add")
            return False
        names = origin(op.node) + (origin(proj.node) if proj is not None else []) + [add.name]
        # the MACs the report's totals count: a projection's go, the branch's kernel stays
        before = _macs(op, op.params) + (_macs(proj, proj.params) if proj is not None else 0)
        after = _macs(op, new)
        node = insert_linear(gm, first, op.x, op.kind, new, op.bias_map, hint=f"{op.node.name}_skip", meta_from=add,
                             origin=names, sources=[op.node] + ([proj.node] if proj is not None else []))
        add.replace_all_uses_with(node)
        gm.graph.erase_node(add)
        gm.graph.erase_node(op.node)
        if proj is not None:
            gm.graph.erase_node(proj.node)
        self.record.merges.append({"kind": f"residual-{kind}", "nodes": names, "joins": [join], "macs_before": before,
                                   "macs_after": after, "ops_before": 2 + (proj is not None), "ops_after": 1,
                                   "exact": True, "reason": f"skip ({kind}) folded into the branch's kernel"})
        return True
