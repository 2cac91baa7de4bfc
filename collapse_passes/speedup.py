"""Predicted speed-up of a collapse, priced on the real merged graph (what LayerMerge does with a
latency table, here with the cost model of algebra/cost.py).

stats_cost(stats) prices a model from its model_stats (report["before"/"after"] of api.collapse): MACs
(a depthwise conv's at DEPTHWISE_MAC_FACTOR each) + per element of every non-MAC op its price
(ELEMENT_PRICES: a SiLU ~16 MACs, a GELU ~47, measured on onnxruntime) + the per-op overhead per node of the
*merged* ONNX graph (nodes computed from constants alone are free: folded when the session loads).
graph_cost(model, cm) prices the graph op by op with the planner's cost model (measured on onnxruntime
with cost="measured"), what the training loop uses; both read the same prices from the cost model.
Activations runtimes fuse into the conv before them (ReLU, Clip, LeakyReLU, HardSigmoid:
core/activations.fuses) pay no per-op overhead, only their element price (ReLU's is 0, so collapsing
one buys only the merges it allows); the others (HardSwish, SiLU, GELU, PReLU, ...) are ops of their own.
No torch here: the CLI's --target-speedup and the torch training loop both use it.
"""
from __future__ import annotations

import itertools

from .algebra.cost import CostModel
from .errors import CollapseError


def stats_cost(stats: dict, cost_model: CostModel | None = None) -> float:
    """MAC-equivalent cost of a model from its model_stats dict (report["before"] / ["after"])."""
    cm = cost_model or CostModel()
    if "free_activation_nodes" in stats:   # onnx/analysis.model_stats
        free = float(stats["free_activation_nodes"])
    else:   # stats without the split (an older report): every activation free, one node each
        free = float(stats.get("activations", 0))
    if stats.get("element_work") is not None:
        work = sum(cm.element_price(k) * float(n) for k, n in stats["element_work"].items())
        work += (cm.depthwise_factor - 1.0) * float(stats.get("depthwise_macs", 0))
    else:   # an older report: one MAC per element of an unfused activation
        work = float(stats.get("activation_elements", 0))
    ops = float(stats["nodes"]) - free - float(stats.get("constant_nodes", 0))
    return float(stats["macs"]) + work + cm.per_op_overhead_macs * ops


def graph_cost(model, cost_model: CostModel | None = None) -> float:
    """Cost of an ONNX model priced op by op with the planner's own cost model: each Conv / Gemm by
    cost_model.op_cost with its signature (a MeasuredCostModel, cost="measured", times it on
    onnxruntime; the MAC model gives MACs + overhead), every other node its per-op overhead plus its
    element price (cost_model.element_price: by activation kind for an activation, by op type
    otherwise), activations as in stats_cost (no overhead when fused into the op before them). The
    same prices the merge planner used, so a prediction agrees with the plan; with the MAC model it
    equals stats_cost of the model's stats."""
    from .algebra.cost import conv_signature, linear_signature
    from .onnx.analysis import _dims, activation_elements, constant_nodes, node_elements, node_macs
    from .core.activations import fuses
    from .onnx.graph import toposort
    from .onnx.linear_ops import ConvView, DenseView
    from .onnx.patterns import find_activations
    from .onnx.shapes import with_shapes

    cm = cost_model or CostModel()
    graph = with_shapes(model)
    toposort(graph)
    acts, folded = find_activations(graph), constant_nodes(graph)
    inside = {id(n) for a in acts for n in a.nodes} | folded   # priced below, or free
    total = sum(activation_elements(a) * cm.element_price(a.kind)
                + (0.0 if fuses(a.kind) else sum(cm.op_cost(n.op, 0) for n in a.nodes))
                for a in acts if not all(id(n) in folded for n in a.nodes))
    for n in graph.nodes:
        if n.op in ("Constant", "Identity") or id(n) in inside:
            continue
        macs = node_macs(n)
        cv, a = ConvView.of(n), _dims(n.inputs[0]) if n.inputs else None
        if cv is not None and a:
            total += cm.op_cost("Conv", macs, conv_signature(cv.params, tuple(a[2:])))
            continue
        dv = DenseView.of(n) if n.op == "Gemm" else None
        if dv is not None and a:
            total += cm.op_cost("Gemm", macs, linear_signature(dv.params, a[0]))
            continue
        total += cm.op_cost(n.op, macs) + node_elements(n) * cm.element_price(n.op)
    return total


def speedup_ratio(base: float, cost: float) -> float:
    """base / cost, for a graph that may cost nothing (a model of ReLUs alone: fused activations count 0):
    nothing to nothing is 1.0 (no gain), something to nothing is inf."""
    return base / cost if cost > 0 else (1.0 if base <= 0 else float("inf"))


def model_cost(model, stats: dict, cost_model: CostModel) -> float:
    """The cost --target-speedup prices a whole model by: op by op with the latencies a measured cost model
    (--cost measured) timed (graph_cost), else from its model_stats `stats` (stats_cost)."""
    from .algebra.cost import OnDemandCostModel

    if isinstance(cost_model, OnDemandCostModel):
        return graph_cost(model, cost_model)
    return stats_cost(stats, cost_model)


#: at most this many skipped items are tried together with a later one (its partners first, then the latest)
MAX_COMPANIONS = 4


def choose_for_speedup(ranked: list, cost_of, target: float, base_cost: float, window: int = 2,
                       partners=None) -> tuple[list, list]:
    """Greedy, lowest score first: take an item when cost_of(taken + [item]) is lower than the cost of
    what is taken so far; stop once base_cost / cost reaches target. An item that buys nothing alone is
    tried again together with skipped ones: a MobileNetV2 block merges into one conv only when both of
    its activations go, and neither alone enables a merge. Companions: partners(item, pending) (the
    skipped items next to it in the graph, whatever their scores: random or per-layer scores rarely rank
    a block's two activations side by side), then the `window` latest skipped items, at most
    MAX_COMPANIONS, in groups of up to `window`.
    Returns (taken, history) with one history row per item tried: {item, cost, speedup, taken, with}."""
    taken, history, pending = [], [], []
    cur = cost_of([])
    for item in ranked:
        if speedup_ratio(base_cost, cur) >= target:
            break
        best = None
        latest = pending[len(pending) - window:] if window else []
        near = list(partners(item, pending)) if partners is not None and pending else []
        recent = []
        for p in near + latest[::-1]:
            if len(recent) < MAX_COMPANIONS and not any(p is q for q in recent):
                recent.append(p)
        recent = [p for p in pending if any(p is q for q in recent)]   # in the order they were skipped
        for k in range(0, min(len(recent), max(window, 1)) + 1):   # the item alone, then with one companion, two, ...
            for extra in itertools.combinations(reversed(recent), k):
                group = [p for p in recent if any(p is e for e in extra)] + [item]
                c = cost_of(taken + group)
                if c < cur * (1.0 - 1e-6):
                    best = (c, group)
                    break
            if best:
                break
        c = best[0] if best else c
        row = {"item": item, "cost": c, "speedup": speedup_ratio(base_cost, c), "taken": best is not None,
               "with": [] if best is None else best[1][:-1]}
        history.append(row)
        if best is not None:
            for g in best[1][:-1]:   # the pending items taken along
                pending = [p for p in pending if p is not g]
                for h in history:
                    if h["item"] is g:
                        h["taken"] = True
            taken.extend(best[1])
            cur = best[0]
        else:
            pending.append(item)
    return taken, history


class RegionPricer:
    """cost_of(items) for choose_for_speedup, priced region by region: the whole graph's cost with the
    forced activations collapsed, plus, for each linear region the chosen activations form
    (onnx/regions.py), what collapsing them changes inside that region. Each region is cut out and
    run through the passes alone (memoized), so a candidate costs a few small runs instead of a run
    over the whole graph. A region that cannot be cut out (unnamed nodes, unknown shapes) or that
    fails to run falls back to `full_cost` for that candidate."""

    def __init__(self, model, acts, forced: list, full_cost, run_region, cost_model, candidates=None, price=None):
        from .calib import model_inputs
        from .onnx.regions import ModelIndex, non_float_tensor_names
        from .onnx.shapes import inferred_types

        self.model, self.acts, self.forced = model, acts, list(forced)
        self.full_cost, self.run_region, self.cm = full_cost, run_region, cost_model
        self.price = price or mac_price(cost_model)
        self.candidates = list(candidates or [])
        self.types = inferred_types(model) or {}
        self.non_float = non_float_tensor_names(self.types, model)
        self.index = ModelIndex.of(model)
        # run-read shapes are the whole graph's only where its inputs are static (the passes' own Cleanup
        # reads a run only then): with a dynamic H x W the whole graph plans no merge on unknown sizes, a
        # region typed from a run would (then the region falls back to full_cost)
        self.static_inputs = all(d is not None and d > 0 for _, dims, _ in model_inputs(model) for d in dims)
        self.memo: dict = {}
        self.base = None
        self.runs = 0   # onnxruntime runs made to read boundary shapes


    def _read_missing(self, missing: list) -> None:
        """Type the boundary tensors inference lost from one run of the model. The first time, the
        boundaries of every candidate's own region are read in the same run (a group's region is
        mostly a union of those), so later candidates rarely need another run."""
        from .onnx.regions import linear_regions, region_model, run_types

        names = set(missing)
        if not self.runs:
            for c in self.candidates:
                for region in linear_regions(self.acts, {id(a) for a in self.forced + [c]}, self.non_float):
                    names.update(region_model(self.model, region, self.types, self.index)[1])
        self.runs += 1
        self.types.update(run_types(self.model, sorted(names)))

    def _region_cost(self, names: frozenset, collapsed: frozenset):
        key = (names, collapsed)
        if key not in self.memo:
            from .calib import model_inputs
            from .onnx.regions import region_model

            cost = None
            sub, missing = region_model(self.model, names, self.types, self.index)
            if missing and self.static_inputs:   # boundary shapes inference lost: read them from a run
                self._read_missing(missing)
                sub, missing = region_model(self.model, names, self.types, self.index)
            if sub is not None:
                try:
                    shapes = {n: dims for n, dims, _ in model_inputs(sub)}
                    m, ctx, _ = self.run_region(sub, set(collapsed), shapes)
                    cost = self.price(m, ctx)
                except Exception:   # noqa: BLE001 - a region the passes cannot take alone: price the whole graph
                    cost = None
            self.memo[key] = cost
        return self.memo[key]

    def partners(self, item, pending: list) -> list:
        """The pending activations next to `item`'s linear region (with the forced ones and `item`
        collapsed): those whose collapse would join that region, the companions a merge may need."""
        from .onnx.regions import linear_regions

        ids = {id(a) for a in self.forced} | {id(item)}
        names = next((r for r in linear_regions(self.acts, ids, self.non_float) if item.nodes[-1].name in r),
                     frozenset())
        out = []
        for a in pending:
            touching = [p.name for t in a.nodes[0].inputs for p in t.inputs] + \
                       [c.name for c in a.output.outputs]
            if any(n in names for n in touching):
                out.append(a)
        return out

    def __call__(self, items: list) -> float:
        from .onnx.regions import linear_regions

        if self.base is None:
            self.base = self.full_cost([])   # nothing but the forced activations collapsed
        if not items:
            return self.base
        chosen = self.forced + list(items)
        delta = 0.0   # per region: its cost with the items collapsed minus its cost in the base (forced only)
        for names in linear_regions(self.acts, {id(a) for a in chosen}, self.non_float):
            inside = frozenset(a.name for a in chosen if a.name in names)
            forced = frozenset(a.name for a in self.forced if a.name in names)
            if inside == forced:
                continue
            with_, without = self._region_cost(names, inside), self._region_cost(names, forced)
            if with_ is None or without is None:
                return self.full_cost(items)
            delta += with_ - without
        return self.base + delta


def mac_price(cm):
    """price(model, ctx) of a pass run's result by MACs and node counts (stats_cost), with the shapes as the
    passes left them (ctx.graph)."""
    from .onnx.analysis import model_stats

    return lambda m, ctx: stats_cost(model_stats(m, graph=ctx.graph).as_dict(), cm)


def uncapped_choice_warning(taken_scores: list, pool_scores: list, cfg) -> str | None:
    """The warning of a --target-speedup choice without --threshold / --remove that went into the upper half of
    the score range: the target alone decided how far down the ranking to go, and activations that separate
    their inputs went too (seen: ReLUs scoring 0.94 and HardSwishes scoring 1.0 of EASIER's 1 bit collapsed,
    the result 1e5 off the input model, exit 0 with a note only). Scale-free: a --scores file's scale is the
    user's. None when capped, when nothing was taken, or when every score taken is in the lower half."""
    if cfg.threshold is not None or cfg.remove is not None or not taken_scores or not pool_scores:
        return None
    lo, hi, top = min(pool_scores), max(pool_scores), max(taken_scores)
    mid = 0.5 * lo + 0.5 * hi   # not lo + (hi - lo) / 2: hi - lo overflows to inf on scores of +-1e308
    if not (hi > lo) or top < mid:
        return None
    n_upper = sum(s >= mid for s in taken_scores)
    return (f"--target-speedup {cfg.target_speedup}: with no --threshold / --remove, {n_upper} of the "
            f"{len(taken_scores)} activation(s) it collapsed score in the upper half of the range "
            f"({lo:.3g} to {hi:.3g}; "
            f"up to {top:.3g}): they separate their inputs, so expect the outputs to move away from the input model's "
            "(verification.against_original in the report); cap the choice with --threshold T")


def onnx_target_choice(original, acts, index: dict, act_scores: dict, chosen: list, cfg, notes: list,
                       stats_before, cm, reference=None, warnings: list | None = None) -> tuple[list, list]:
    """--target-speedup S on an ONNX model: among the scored activations (those --threshold / --remove
    picked, when given), lowest score first, keep the ones whose collapse lowers the cost of the merged
    graph, until cost(original) / cost(result) >= S. --collapse keys are always collapsed.

    cm: the run's cost model, which plans every candidate's merges as it plans the result's. A measured one
    (--cost measured) also prices the graphs op by op (graph_cost: the latencies it measured), the MAC
    model by MACs and node counts (stats_cost).

    reference: the input model the speed-up is measured against (stats_before are its stats) when `original`,
    the model the passes get, is it pruned to --prune-ratio: the prune counts towards S."""
    from .algebra.cost import OnDemandCostModel
    from .onnx.driver import run_passes

    if not act_scores:
        raise CollapseError("--target-speedup needs scores: give --scores or --method")
    if not (cfg.target_speedup > 0):
        raise CollapseError(f"--target-speedup must be a positive number, got {cfg.target_speedup}")
    from .calib import model_inputs

    shapes = {n: dims for n, dims, _ in model_inputs(original)}
    measured = isinstance(cm, OnDemandCostModel)
    price = (lambda m, ctx: graph_cost(m, cm)) if measured else mac_price(cm)
    forced_ids = set()
    if cfg.collapse:
        from .core.selection import lookup

        forced_ids = {id(a) for k in cfg.collapse for a in lookup(index, k, "collapse (--collapse)")}
    pool_ids = {id(a) for a in chosen} if (cfg.threshold is not None or cfg.remove is not None) else set(act_scores)
    forced = [a for a in acts if id(a) in forced_ids]
    ranked = sorted((a for a in acts if id(a) in pool_ids and id(a) not in forced_ids),
                    key=lambda a: (act_scores.get(id(a), float("inf")), acts.index(a)))

    cache = None   # the first candidate's context: its run-read shapes serve every later one

    def full_cost(items):
        nonlocal cache
        m, ctx, _ = run_passes(original, {a.name for a in forced + items}, merge=cfg.merge, cost_model=cm,
                               input_shapes=shapes, run_cache=cache)
        cache = cache or ctx
        return price(m, ctx)

    cost_of = RegionPricer(original, acts, forced, full_cost, lambda sub, names, sub_shapes: run_passes(
        sub, names, merge=cfg.merge, cost_model=cm, input_shapes=sub_shapes, run_cache=cache), cm, ranked,
        price=price)
    # model_stats(original), computed by the caller
    base = model_cost(original if reference is None else reference, stats_before.as_dict(), cm)
    taken, hist = choose_for_speedup(ranked, cost_of, cfg.target_speedup, base, partners=cost_of.partners)
    # the reported prediction: the whole graph, not the sum of its regions (nothing taken: the pricer's base)
    final = speedup_ratio(base, full_cost(taken) if taken else cost_of([]))
    skipped = sum(not h["taken"] for h in hist)
    notes.append(f"--target-speedup {cfg.target_speedup}: {len(taken)} activation(s) collapsed, {skipped} skipped "
                 f"(no predicted gain), predicted speed-up {final:.3f}x ("
                 + ("op latencies measured on onnxruntime" if measured else "MACs + per-op cost") + " of the merged graph)"
                 + ("" if final >= cfg.target_speedup else "; target not reached"))
    from .core.selection import display_key

    line = uncapped_choice_warning([act_scores[id(a)] for a in taken], [act_scores[id(a)] for a in ranked], cfg)
    if line and warnings is not None:
        warnings.append(line)
    rows = [{"key": display_key(h["item"]), "predicted_speedup": h["speedup"], "taken": h["taken"],
             **({"with": [display_key(g) for g in h["with"]]} if h["with"] else {})} for h in hist]
    ids = {id(a) for a in forced + taken}
    return [a for a in acts if id(a) in ids], rows
