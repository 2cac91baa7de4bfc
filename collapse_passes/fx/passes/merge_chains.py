"""merge: fold chains of consecutive convs (or linears) into fewer ops, exactly and only where it pays.

A chain is a run op -> op -> ... where each intermediate result has one user. core/chains.py
(plan_conv_chain, plan_dense_chain, over planning.plan_segments) picks the cut that minimises the
cost model; a conv segment is merged only when the algebra says
the merge is exact (algebra.conv.merge_exactness / extend_chain), or when border approximation was
opted into. Conv merging needs static shapes (node metadata: ShapeProp, export or dynamo fill it).
"""
from __future__ import annotations

import numpy as np
from torch import fx

from ...algebra.cost import CostModel, conv_macs, linear_macs
from ...core.chains import merge_record, plan_conv_chain, plan_dense_chain
from ...core.merge_fallback import join_key, joins_ok
from ..graph import (StateGuard, feeds_output, insert_linear, linear_op, origin, propagate_shapes, shape_of,
                     single_user)
from ._base import FxPass, PassResult

def _chains(gm: fx.GraphModule, kind: str) -> list[list]:
    ops = {}
    for node in gm.graph.nodes:
        op = linear_op(gm, node)
        if op is not None and op.kind == kind:
            ops[node] = op
    nxt, has_prev = {}, set()
    for node, op in ops.items():
        u = single_user(node)
        if u in ops and ops[u].x is node and not feeds_output(node) and ops[u].bias_map is None:
            nxt[node] = u
            has_prev.add(u)
    chains = []
    for node in ops:
        if node in has_prev:
            continue
        chain = [ops[node]]
        while chain[-1].node in nxt:
            chain.append(ops[nxt[chain[-1].node]])
        if len(chain) >= 2:
            chains.append(chain)
    return chains


def _joins(chain) -> list[str]:
    """Join keys of a chain's neighbouring ops, each named by the input graph's nodes it stands for."""
    return [join_key("+".join(origin(a.node)), "+".join(origin(b.node))) for a, b in zip(chain, chain[1:])]


class MergeLinearChains(FxPass):
    """cost_model: algebra.cost.CostModel; example_inputs: run ShapeProp first (else node metadata is used)."""
    name = "merge"

    def __init__(self, cost_model: CostModel | None = None, allow_border_approx: bool = False,
                 example_inputs=None, record=None, any_size: bool = False, allowed=None):
        super().__init__(record)
        self.allowed = allowed   # join keys a merge may use (None: all), core/merge_fallback
        self.cm = cost_model or CostModel()
        self.allow_border_approx = allow_border_approx
        self.example_inputs = example_inputs
        # the graph runs at spatial sizes other than the shapes it was planned at (torch.compile dynamic
        # shapes): only merges exact at every size (core/chains.size_bound), no size-guarded PaddedConv
        self.any_size = any_size

    def call(self, gm: fx.GraphModule) -> PassResult:
        if self.example_inputs is not None:
            # the shape run must leave the graph's state as it was: in a user's PassManager the graph may hold
            # a train-mode BatchNorm (collapse() refuses one, the pass leaves it unfolded), whose running statistics
            # the run updated, in the user's own model (symbolic_trace shares its modules) on every step
            guard = StateGuard(gm)
            propagate_shapes(gm, self.example_inputs)
            if guard.written():
                guard.restore()
        done = 0
        for chain in _chains(gm, "conv"):
            done += self._merge_convs(gm, chain)
        for chain in _chains(gm, "linear"):
            done += self._merge_linears(gm, chain)
        return self.finish(gm, done, "merged {} segment(s)")

    def _replace(self, gm, ops, kind, params, bias_map=None):
        last = ops[-1].node
        x = ops[0].node.args[ops[0].x_arg]   # current input: an earlier segment of the chain may have replaced it
        # a strided chain is exact at the planned size; which borders a stride reads changes with the size, so
        # the merged conv keeps a size guard (fx/graph.PaddedConv); stride-1 merges hold at any size
        sized = kind == "conv" and any(s != 1 for op in ops for s in op.params.strides)
        new = insert_linear(gm, ops[0].node, x, kind, params, bias_map, hint=f"{ops[0].node.name}_merged",
                            meta_from=last, origin=[n for op in ops for n in origin(op.node)], size_guard=sized,
                            sources=[op.node for op in ops])
        last.replace_all_uses_with(new)
        for op in reversed(ops):
            gm.graph.erase_node(op.node)

    def _merge_convs(self, gm, chain) -> int:
        shapes_in = [shape_of(op.x) for op in chain]
        shapes_out = [shape_of(op.node) for op in chain]
        if any(s is None or len(s) < 3 for s in shapes_in + shapes_out):
            self.note(f"chain {chain[0].node.name}..{chain[-1].node.name}: shapes unknown, not merged "
                      "(pass example_inputs)")
            return 0
        spatials = [tuple(s[2:]) for s in shapes_in]
        outs = [tuple(s[2:]) for s in shapes_out]
        params = [op.params for op in chain]
        joins = _joins(chain)
        plan = plan_conv_chain(params, spatials, outs, self.cm, self.allow_border_approx, self.any_size,
                               joins_ok(self.allowed, joins))
        done = 0
        batch = int(shapes_out[-1][0])   # the record counts the batch, as graph_stats' totals do
        for (i, j), m in plan.merged.items():
            ops = chain[i:j]
            before = batch * sum(conv_macs(p, o) for p, o in zip(params[i:j], outs[i:j]))
            after = batch * conv_macs(m.params, outs[j - 1])
            rec = merge_record("conv", [n for op in ops for n in origin(op.node)], before, after, len(ops), m,
                               joins[i:j - 1])
            self._replace(gm, ops, "conv", m.params, m.bias_map)
            self.record.merges.append(rec)
            if not m.exact:
                self.record.approximations.append(rec)
            done += 1
        merged_pairs = {k for i, j in plan.merged for k in range(i, j - 1)}
        for k in range(len(chain) - 1):
            if k not in merged_pairs and (k, k + 2) in plan.refused:
                a, b = "+".join(origin(chain[k].node)), "+".join(origin(chain[k + 1].node))
                self.note(f"not merged {a} + {b}: {plan.refused[(k, k + 2)]}")
        return done

    def _merge_linears(self, gm, chain) -> int:
        params = [op.params for op in chain]
        s = shape_of(chain[0].x)
        rows = int(np.prod(s[:-1])) if s else 1
        done = 0
        joins = _joins(chain)
        for (i, j), p in plan_dense_chain(params, rows, self.cm, joins_ok(self.allowed, joins)).items():
            ops = chain[i:j]
            before = sum(linear_macs(q, rows) for q in params[i:j])
            after = linear_macs(p, rows)
            self.record.merges.append(merge_record("dense", [n for op in ops for n in origin(op.node)],
                                                   before, after, len(ops), joins=joins[i:j - 1]))
            self._replace(gm, ops, "linear", p)
            done += 1
        return done
