"""absorb: fold a residual skip into the linear branch beside it.

y = conv(x) + x      -> one conv with a delta at the kernel centre (needs Cin = Cout, stride 1,
                        centred padding; the algebra checks and refuses otherwise)
y = conv(x) + p(x)   -> one conv, p a 1x1 projection shortcut with the same stride (BN folded)
y = dense(x) + x     -> one dense with W + I
A bias-map Add left by an earlier merge is looked through: (conv(x) + M) + x -> conv'(x) + M.
"""
from __future__ import annotations

import numpy as np

from ...algebra import conv as conv_alg
from ...algebra import linear as lin_alg
from ...algebra.cost import conv_macs, linear_macs
from ...core.merge_fallback import join_key
from ...errors import CollapseError
from ...pipeline import PassResult
from ..analysis import _dims
from ..graph import const_value, single_consumer, toposort
from ..linear_ops import ConvView, DenseView


def _macs(view, params) -> int:
    """MACs of `view`'s op with `params` at its output's shape, as analysis.node_macs counts them for the report's
    totals (the batch included; 0 where the shape is unknown)."""
    dims = _dims(view.output)
    if not dims:
        return 0
    if isinstance(view, ConvView):
        return int(dims[0] * conv_macs(params, tuple(dims[2:])))
    return int(linear_macs(params, int(np.prod(dims[:-1]))))


def _branch(t, outs):
    """The linear op computing t (through one bias-map Add), with its single-consumer chain."""
    if t.name in outs or not t.inputs:
        return None
    prod = t.inputs[0]
    bias_map_add = None
    if prod.op == "Add" and len(prod.inputs) == 2 and const_value(prod.inputs[1]) is not None \
            and prod.inputs[0].inputs:
        inner = prod.inputs[0]
        if single_consumer(inner) is prod and inner.name not in outs:
            bias_map_add = prod
            prod = inner.inputs[0]
    cv = ConvView.of(prod)
    # the conv's output must feed nothing but the Add (through the bias-map Add): its weights change
    if cv is not None and (single_consumer(cv.output) is bias_map_add if bias_map_add is not None
                           else len(cv.output.outputs) == 1):
        return cv, bias_map_add
    dv = DenseView.of(prod, outs)
    if dv is not None and bias_map_add is None and dv.output is t and len(t.outputs) == 1:
        return dv, None
    return None


class AbsorbResidual:
    name = "absorb_residual"

    def __call__(self, ctx) -> PassResult:
        outs = ctx.graph_outputs
        done = 0
        for add in list(ctx.graph.nodes):
            if add.op != "Add" or len(add.inputs) != 2 or not add.outputs:
                continue
            n_notes = len(ctx.notes)
            for bi in (0, 1):
                t, skip = add.inputs[bi], add.inputs[1 - bi]
                br = _branch(t, outs)
                if br is None:
                    continue
                view, bm_add = br
                if self._absorb(ctx, add, view, bm_add, skip, outs):
                    done += 1
                    # an Add whose operands are both convs is tried both ways round: the "kept" note of the way
                    # that failed (the branch taken as the skip) would contradict the absorb the report lists
                    del ctx.notes[n_notes:]
                    break
        if done:
            toposort(ctx.graph.cleanup(remove_unused_graph_inputs=False))
        return PassResult(done > 0, [f"absorbed {done} residual skip(s)"] if done else [])

    def _absorb(self, ctx, add, view, bm_add, skip, outs) -> bool:
        x, proj_macs = view.input, 0
        join = join_key(view.node.name or view.output.name, add.name or add.outputs[0].name)
        if ctx.merge_allowed is not None and join not in ctx.merge_allowed:   # refused after verification
            return False
        try:
            if isinstance(view, ConvView):
                p = view.params
                if skip is x:
                    new, kind = conv_alg.add_identity_skip(p), "identity"
                else:
                    proj = ConvView.of(skip.inputs[0]) if skip.inputs else None
                    if proj is None or proj.input is not x or len(skip.outputs) != 1 or skip.name in outs:
                        return False
                    new, kind = conv_alg.add_pointwise_skip(p, proj.params), "projection"
                    proj_macs = _macs(proj, proj.params)
                    proj.node.inputs.clear()
                    proj.node.outputs.clear()
            else:
                if skip is not x:
                    return False
                new, kind = lin_alg.add_identity(view.params), "identity"
        except CollapseError as exc:
            ctx.notes.append(f"residual at {ctx.label(add.name)} kept: {exc}")
            return False
        # the MACs the report's totals count (analysis.node_macs): a projection's go, the branch's kernel stays
        before = _macs(view, view.params) + proj_macs
        after = _macs(view, new)
        view.write(ctx.graph, new)
        out = add.outputs[0]
        add.inputs.clear()
        add.outputs.clear()
        last = bm_add or (view.bias_add if isinstance(view, DenseView) and view.bias_add is not None else view.node)
        last.outputs[0] = out
        ctx.merges.append({"kind": f"residual-{kind}", "nodes": [view.node.name, add.name], "joins": [join], "macs_before": before,
                           "macs_after": after, "ops_before": 2 + (kind == "projection"), "ops_after": 1, "exact": True,
                           "reason": f"skip ({kind}) folded into the branch's kernel"})
        return True
