"""merge: fold chains of consecutive linear ops into fewer ops, exactly and only where it pays.

Chains are maximal runs Conv -> Conv -> ... (or Gemm/MatMul -> ...) where each intermediate result
has one consumer. core.chains (shared with the torch.fx front end) picks the cut that minimises the
cost model; a segment is merged only when the algebra says the merge is exact (or
--allow-border-approx was given). A
residual Add whose other operand is the chain's own input is absorbed into the last segment when
the segment starts there (conv(x) + x as one conv).
"""
from __future__ import annotations

import numpy as np

from ...algebra.cost import CostModel, conv_macs, linear_macs
from ...core.chains import merge_record, plan_conv_chain, plan_dense_chain
from ...core.merge_fallback import join_key, joins_ok
from ...pipeline import PassResult
from ..analysis import _dims, counted_batch
from ..graph import add_after, const_value, make_const, single_consumer, toposort
from ..linear_ops import ConvView, DenseView, why_not_view


def _spatial(t) -> tuple | None:
    if t.shape is None or len(t.shape) < 3:
        return None
    s = t.shape[2:]
    return tuple(int(d) for d in s) if all(isinstance(d, int) and d > 0 for d in s) else None


def _name(node) -> str:
    """A node's identity in join keys: its name (kept by the first node of a merge), else its output's."""
    return node.name or node.outputs[0].name


def _rows(t) -> int:
    """Rows (batch x tokens) a dense op reads, as the planner prices them (a dynamic dim counts 1)."""
    if t.shape is None:
        return 1
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in t.shape[:-1]])) if len(t.shape) else 1


def _counted_rows(t) -> int:
    """Rows (batch x tokens) as analysis.node_macs counts them for the report's totals (a dynamic dim written as
    an expression, `4*N`, at its value for N = 1): what a merge record counts."""
    dims = _dims(t)
    return int(np.prod(dims[:-1])) if dims else 1


def _conv_chains(ctx) -> list[list]:
    outs = ctx.graph_outputs
    nodes = [n for n in ctx.graph.nodes if ConvView.of(n)]
    starts = []
    for n in nodes:
        x = n.inputs[0]
        prev = x.inputs[0] if x.inputs else None
        if prev is not None and ConvView.of(prev) and len(x.outputs) == 1 and x.name not in outs:
            continue
        starts.append(n)
    chains = []
    for n in starts:
        chain = [n]
        while True:
            y = chain[-1].outputs[0]
            nxt = single_consumer(y)
            if y.name in outs or nxt is None or not ConvView.of(nxt) or nxt.inputs[0] is not y:
                break
            chain.append(nxt)
        chains.append(chain)
    return chains


def _dense_chains(ctx) -> list[list]:
    outs = ctx.graph_outputs
    views = [v for v in (DenseView.of(n, outs) for n in ctx.graph.nodes) if v is not None]
    by_node = {id(v.node): v for v in views}
    nxt_of = {}
    has_prev = set()
    for v in views:
        y = v.output
        c = single_consumer(y)
        if y.name in outs or c is None:
            continue
        w = by_node.get(id(c))
        if w is not None and w.input is y:
            nxt_of[id(v)] = w
            has_prev.add(id(w))
    chains = []
    for v in views:
        if id(v) in has_prev:
            continue
        chain = [v]
        while id(chain[-1]) in nxt_of:
            chain.append(nxt_of[id(chain[-1])])
        chains.append(chain)
    return chains


_CONV_OPS, _DENSE_OPS = ("Conv", "ConvTranspose"), ("Gemm", "MatMul")
_WHY = "not a view"   # the first item of the chain_notes keys this pass's pair notes use


def _unmergeable_pairs(ctx) -> None:
    """A note for each two linear ops of one family left back to back (a collapsed activation between them gone)
    where one is no ConvView / DenseView, so no chain saw them: a ConvTranspose, a weight computed at run time
    (a DequantizeLinear or Cast of a stored weight), W @ x, Gemm transA. Those pairs stayed apart with no word.
    Rebuilt every round (chain_notes: said once, at the end of the run)."""
    for key in [k for k in ctx.chain_notes if k and k[0] == _WHY]:
        del ctx.chain_notes[key]
    outs = ctx.graph_outputs
    for n in ctx.graph.nodes:
        fam = _CONV_OPS if n.op in _CONV_OPS else _DENSE_OPS if n.op in _DENSE_OPS else None
        if fam is None or not n.outputs or n.outputs[0].name in outs:
            continue
        nxt = single_consumer(n.outputs[0])
        if nxt is not None and nxt.op == "Add" and n.op == "MatMul" and nxt.outputs and nxt.outputs[0].name not in outs \
                and any(t is not n.outputs[0] and const_value(t) is not None for t in nxt.inputs):
            nxt = single_consumer(nxt.outputs[0])   # MatMul + its bias Add
        if nxt is None or nxt.op not in fam:
            continue
        why = [(m, w) for m in (n, nxt) if (w := why_not_view(m))]
        if why:
            m, w = why[0]
            ctx.chain_notes[(_WHY, n.name, nxt.name)] = (f"not merged {ctx.label(n.name)} + {ctx.label(nxt.name)}: "
                                                         f"{ctx.label(m.name)}: {w}")


class MergeLinearChains:
    name = "merge"

    def __call__(self, ctx) -> PassResult:
        cm = ctx.cost_model or CostModel()
        merged = 0
        for chain in _conv_chains(ctx):
            if len(chain) >= 2:
                merged += self._merge_conv_chain(ctx, chain, cm)
        for chain in _dense_chains(ctx):
            if len(chain) >= 2:
                merged += self._merge_dense_chain(ctx, chain, cm)
        if merged:
            toposort(ctx.graph.cleanup(remove_unused_graph_inputs=False))
        _unmergeable_pairs(ctx)
        return PassResult(merged > 0, [f"merged {merged} segment(s)"] if merged else [])

    # ------------------------------------------------------------------------------ convs
    def _merge_conv_chain(self, ctx, chain, cm) -> int:
        params = [ConvView(n).params for n in chain]
        spatials = [_spatial(n.inputs[0]) for n in chain]
        outs = [_spatial(n.outputs[0]) for n in chain]
        names = tuple(n.name for n in chain)
        for key in [k for k in ctx.chain_notes if set(k) & set(names)]:
            del ctx.chain_notes[key]
        if any(s is None for s in spatials) or any(o is None for o in outs):
            ctx.chain_notes[names] = (f"chain {ctx.label(chain[0].name)}..{ctx.label(chain[-1].name)}: shapes unknown, not merged "
                                      "(a dynamic input size? --input-shape fixes it)")
            return 0
        joins = [join_key(_name(a), _name(b)) for a, b in zip(chain, chain[1:])]
        plan = plan_conv_chain(params, spatials, outs, cm, ctx.allow_border_approx,
                               joins_ok=joins_ok(ctx.merge_allowed, joins))
        batch = counted_batch(chain[-1].outputs[0])   # records and notes count the batch, as the report's totals

        def seq_macs(i, j):
            return batch * sum(conv_macs(p, o) for p, o in zip(params[i:j], outs[i:j]))

        for (i, j), m in plan.merged.items():
            nodes = chain[i:j]
            rec = merge_record("conv", [n.name for n in nodes], seq_macs(i, j),
                               batch * conv_macs(m.params, outs[j - 1]), len(nodes), m, joins[i:j - 1])
            self._apply_conv(ctx, nodes, m)
            ctx.merges.append(rec)
            if not m.exact:
                ctx.approximations.append(rec)
        for k in range(len(chain) - 1):
            if any(a <= k and k + 2 <= b for a, b in plan.merged):
                continue
            if (k, k + 2) in plan.refused:
                ctx.notes.append(f"not merged {ctx.label(chain[k].name)} + {ctx.label(chain[k + 1].name)}: {plan.refused[(k, k + 2)]}")
            elif (k, k + 2) in plan.candidates:
                m = plan.candidates[(k, k + 2)]
                a, b = seq_macs(k, k + 2), batch * conv_macs(m.params, outs[k + 1])
                ctx.notes.append(f"kept {ctx.label(chain[k].name)} + {ctx.label(chain[k + 1].name)} separate: merging is exact but costs more "
                                 f"(MACs {a:,} -> {b:,}, kernel {list(m.params.kernel_shape)}, group {m.params.group})")
        return len(plan.merged)

    def _apply_conv(self, ctx, nodes, m) -> None:
        first, last = nodes[0], nodes[-1]
        out = last.outputs[0]
        ConvView(first).write(ctx.graph, m.params)
        for n in nodes[1:]:
            n.inputs.clear()
            n.outputs.clear()
        first.outputs[0] = out
        if m.bias_map is not None:
            bm = make_const(ctx.graph, f"{first.name}.bias_map", m.bias_map[None])
            add_after(ctx.graph, out, bm, "merged", f"{first.name}_bias_map")

    # ------------------------------------------------------------------------------ dense
    def _merge_dense_chain(self, ctx, chain, cm) -> int:
        params = [v.params for v in chain]
        rows = _rows(chain[0].input)
        counted = _counted_rows(chain[0].input)   # the record counts as the totals do
        joins = [join_key(_name(a.node), _name(b.node)) for a, b in zip(chain, chain[1:])]
        plan = plan_dense_chain(params, rows, cm, joins_ok(ctx.merge_allowed, joins))
        for (i, j), p in plan.items():
            views = chain[i:j]
            before = sum(linear_macs(q, counted) for q in params[i:j])
            out = views[-1].output
            head = views[0]
            for v in views[1:]:
                for n in v.nodes:
                    n.inputs.clear()
                    n.outputs.clear()
            if head.bias_add is not None:
                head.bias_add.outputs[0] = out
            else:
                head.node.outputs[0] = out
            head.write(ctx.graph, p)
            rec = merge_record("dense", [v.node.name for v in views], before, linear_macs(p, counted),
                               sum(len(v.nodes) for v in views), joins=joins[i:j - 1])
            rec["ops_after"] = len(head.nodes)
            ctx.merges.append(rec)
        return len(plan)
