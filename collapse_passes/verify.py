"""The verification gate: run the requested semantics and the result through onnxruntime.

An element passes when |out - ref| <= atol + rtol * max(|ref|, rms(ref)); max_rel is reported on
the same scale.

Requested semantics = the input model with the chosen activations replaced by their linear
regime (linearize alone). The result must match it to float tolerance; the error against the
original, uncollapsed model is reported separately as the price of the collapse itself.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from .errors import CollapseError

# sessions, random feeds, the comparison rule: one runtime module for every front end and benchmark
from .core.runtime import Comparison, compare, input_specs, nonfinite_request, ort_message, random_inputs, session  # noqa: F401
from .core.runtime import empty_check_input, nothing_compared
from .core.runtime import release_free_memory
from .core.runtime import run as _runtime_run


@dataclass
class Verification:
    against_requested: Comparison
    against_original: Comparison
    rtol: float
    atol: float
    inputs: str
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)   # about the input model itself, not the collapse
    structural: bool = False    # proved by value numbering: the result is the input's own graph, nothing run
    # the model as the passes read it (local functions inlined, fused contrib ops expanded) against the file as
    # given, when the two differ: a failure is ours (the request itself is then wrong), and no fallback mends it
    normalization: Comparison | None = None
    partial: dict = field(default_factory=dict)    # model -> [nodes run, nodes] where only a changed region ran
    input_nonfinite: int = 0   # NaN/Inf values in the input model's outputs on these feeds (api redraws random ones)
    # against_original on the user's data alone (the --calib feeds, before the random ones in its range): uniform
    # noise over the data's whole [min, max] is far from any sample (MobileNetV3-Small, 4 activations collapsed:
    # 199 max abs on the noise, 0.058 on the data), so the price of the collapse is said on the data too
    against_original_data: Comparison | None = None

    def as_dict(self) -> dict:
        d = {"against_requested": self.against_requested.as_dict(),
             "against_original": self.against_original.as_dict(),
             "rtol": self.rtol, "atol": self.atol, "inputs": self.inputs,
             "runtime": "none" if self.structural else RUNTIME}
        if self.structural:
            d["structural"] = True
        if self.partial:
            d["partial"] = self.partial
        if self.normalization is not None:
            d["normalization"] = self.normalization.as_dict()
        if self.against_original_data is not None:
            d["against_original_on_data"] = self.against_original_data.as_dict()
        return d

    @property
    def normalization_failed(self) -> bool:
        return self.normalization is not None and not self.normalization.passed


#: how the verification runs are made (core/runtime.session(optimize="auto"))
RUNTIME = "onnxruntime CPU, graph optimizations on for models with at most 16 MiB of weights"


def run(model: onnx.ModelProto, feeds: list[dict], sess=None) -> tuple[list[list[np.ndarray]], list[str]]:
    """([outputs] per feed, output names); `sess` reuses a session of `model`."""
    return _runtime_run(sess or session(model, feed_weights=True), feeds)


class InputModelRunError(CollapseError):
    """onnxruntime cannot run the input model on the check's feeds: the feeds (or the model) are the user's
    problem. api.collapse catches it to check a dynamic-size model at 1 when it does not run at check_shapes'."""


def run_input_model(model: onnx.ModelProto, feeds: list[dict], inputs_desc: str, extra_outputs=()):
    """Run the input model alone first: if it cannot run on these feeds, the feeds (or the model)
    are the user's problem, not the collapse's. Returns (outputs per feed, output names): the graph's
    outputs, then `extra_outputs` (intermediate values later runs start from)."""
    sess = session(model, optimize="auto", extra_outputs=extra_outputs, feed_weights=True)
    names = [o.name for o in sess.get_outputs()]
    outs = []
    for k, f in enumerate(feeds):
        try:
            try:
                outs.append(sess.run(names, f))
            except Exception:
                if not _optimized(sess):
                    raise
                # an optimized graph onnxruntime cannot run: the graph as written decides
                sess = session(model, extra_outputs=extra_outputs, feed_weights=True)
                outs.append(sess.run(names, f))
        except Exception as exc:
            msg = ort_message(exc)
            shapes = ", ".join(f"{n} {tuple(np.shape(v))}" for n, v in f.items())
            raise InputModelRunError(f"onnxruntime cannot run the input model on {inputs_desc} (batch {k}: {shapes}): "
                                f"{msg}; give data that fits the model's inputs") from None
    return outs, names


def _optimized(sess) -> bool:
    import onnxruntime as ort

    return sess.get_session_options().graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def nonfinite_output_warnings(outs, names) -> list[str]:
    """NaN/Inf in the input model's outputs on the check inputs: matching non-finite values compare as equal, so
    those positions verify nothing (said on both front ends; NaN example_inputs with check=1 verified nothing)."""
    warns = []
    for i, name in enumerate(names):
        vals = [np.asarray(o[i]) for o in outs]
        if not all(v.dtype.kind == "f" for v in vals):
            continue
        n_nan = sum(int(np.isnan(v).sum()) for v in vals)
        n_inf = sum(int(np.isinf(v).sum()) for v in vals)
        total = sum(v.size for v in vals)
        if n_nan or n_inf:
            warns.append(f"the input model itself outputs non-finite values: {name!r} has {n_nan} NaN and {n_inf} "
                         f"Inf of {total} values on these inputs; those positions are compared as equal when the "
                         "result has the same value there")
    return warns


def input_model_warnings(model: onnx.ModelProto, outs, names, feeds: list[dict], seed: int = 0,
                         rtol: float | None = None, atol: float | None = None) -> list[str]:
    """What is wrong with the input model itself: NaN/Inf outputs, or outputs that ignore the input
    (identical on different inputs, or, with rtol/atol, apart by less than the check's tolerance: random
    weights with fresh BatchNorm statistics shrink the signal to ~1e-8 through a MobileNet, and any result
    then passes). Said as warnings with the numbers, so they are not read as a failure of the collapse."""
    warns = nonfinite_output_warnings(outs, names)
    # outputs with elements: empty ones read as "identical ... max |output| nan" (the gate says so: nothing_compared)
    float_idx = [i for i in range(len(names)) if all(np.asarray(o[i]).dtype.kind == "f" for o in outs)
                 and any(np.size(o[i]) for o in outs)]
    if not float_idx:
        return warns
    probe_outs = list(outs)
    if len(feeds) < 2:
        try:
            # the check's own sizes (a dynamic height/width runs at check_shapes', not 1)
            extra = random_inputs(model, 1, seed + 1, shapes={k: np.shape(v) for k, v in feeds[0].items()})[0]
            probe_outs = probe_outs + run(model, [extra])[0]
            feeds = list(feeds) + [extra]
        except Exception:
            return warns
    distinct = any(not _same_feed(feeds[0], f) for f in feeds[1:])
    if not distinct:
        return warns
    same = all(_same_arrays(probe_outs[0][i], o[i]) for o in probe_outs[1:] for i in float_idx)
    if same:
        finite = [np.abs(v[np.isfinite(v)]) for v in (np.asarray(probe_outs[0][i]) for i in float_idx)]
        peak = max((float(v.max()) for v in finite if v.size), default=float("nan"))   # no All-NaN RuntimeWarning
        warns.append(f"the input model's outputs do not depend on its input: identical on {len(probe_outs)} different "
                     f"inputs (max |output| {peak:.3g}); the check cannot show that the collapse preserves anything")
    elif rtol is not None and atol is not None:
        sel = lambda o: [o[i] for i in float_idx]   # noqa: E731
        spread = compare([sel(probe_outs[0])] * (len(probe_outs) - 1), [sel(o) for o in probe_outs[1:]],
                         [names[i] for i in float_idx], rtol, atol)
        if spread.passed:
            warns.append(f"the input model's outputs barely depend on its input: on {len(probe_outs)} different inputs "
                         f"they differ by at most {spread.max_abs:.3g} (max rel {spread.max_rel:.3g}), within the "
                         f"check's tolerance (rtol {rtol}, atol {atol}), so the check cannot tell a right result from a "
                         "wrong one; random weights with untouched BatchNorm statistics do this (give a trained model, "
                         "or set the BatchNorm statistics from data before exporting)")
    return warns


def _same_feed(a: dict, b: dict) -> bool:
    return all(k in b and _same_arrays(v, b[k]) for k, v in a.items())


def _same_arrays(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def verify(original: onnx.ModelProto, requested: onnx.ModelProto, result: onnx.ModelProto,
           feeds: list[dict], rtol: float, atol: float, inputs_desc: str, seed: int = 0,
           reference_cache: dict | None = None, normalized: onnx.ModelProto | None = None,
           data_feeds: int = 0) -> Verification:
    """Run the input model, the requested semantics and the result on `feeds` and compare.

    `data_feeds`: how many leading feeds are the user's data (--calib) rather than random inputs; the result is
    then also compared with the input model on those alone (`against_original_data`).

    `normalized`: the model the passes read when it is not `original` (the file as given, with its local functions
    inlined or onnxruntime's fused ops expanded: onnx/contrib.py). The requested semantics are built from it, so
    a rewrite that changed what it computes would pass unseen, collapse or not: it is run too (only where it
    differs from the file) and must match the file as given, or the check fails.

    `reference_cache`: a dict shared by calls with the same `requested` and `feeds` (the merge fallback's
    trials): the requested semantics' float64 outputs are evaluated once, not once per trial (onnx's
    reference evaluator: about a second per look at 224 on an EfficientNetV2-S).

    Only what differs is run (onnx/value_numbering.py): the requested semantics and the result each
    run their changed region on the values of the models run before them. A result that is the input
    model's own computation (the same ops on the same weights: nothing was collapsed, folded or merged)
    is proved equal by structure; it is loaded by onnxruntime, and nothing is run."""
    for what, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
            raise CollapseError(f"{what} must be a finite number >= 0, got {v}")
    empty = empty_check_input(feeds)
    if empty:   # every output empty too: "max abs 0" over zero elements, a check never made
        raise CollapseError(f"check input {empty[0]!r} has shape {empty[1]}, no elements, so a check on it compares "
                            f"nothing; give it at least 1 in every dim (--input-shape {empty[0]}:D0,D1,... for a "
                            "dynamic dim, --calib arrays with elements; a dim the model fixes at 0 needs a re-export "
                            "with it dynamic)")
    from .onnx.value_numbering import opsets, plan_runs

    models = [original]
    for m in (normalized, requested):
        if m is not None and all(m is not k for k in models):
            models.append(m)
    k_norm = 1 if normalized is not None and normalized is not original else None
    plans = plan_runs(models + [result])
    p_orig, p_req, p_res = plans[0], plans[len(models) - 1], plans[-1]
    p_norm = plans[k_norm] if k_norm is not None else None
    if p_res.outputs == p_req.outputs == p_orig.outputs and (p_norm is None or p_norm.outputs == p_orig.outputs):
        try:
            # it loads: the file written is one onnxruntime accepts (weights fed: not held twice for a load)
            session(result, ours=True, feed_weights=True)
        except RuntimeError:
            session(original)   # the input itself does not load: the user's problem (CollapseError)
            raise
        same = Comparison(0.0, 0.0, True, 0)
        return Verification(same, same, rtol, atol, "none (proved by structure)",
                            structural=True)
    # the passes' graphs (onnx-graphsurgeon: nodes and tensors point at each other) are reference cycles: once
    # dropped they wait for the cycle collector, their weights with them, under the sessions' peak (a collapsed
    # MobileNetV2 at 224: 33 MiB; docs/pass_runtime.md 2026-11-29). Not on the structural path above: no run
    # to lift the peak there, and freeing early raised torchvision ResNet-18's end-of-run peak (+5 MiB).
    gc.collect()
    release_free_memory()   # the arrays the passes freed: not under the sessions' peak
    orig_out, names = run_input_model(original, feeds, inputs_desc, extra_outputs=p_orig.fetch)
    release_free_memory()   # the input's session and its weights are gone: not under the later sessions'
    n_out = len(original.graph.output)
    if sum(np.asarray(v).nbytes for out in orig_out for v in out[n_out:]) > FETCH_BUDGET_BYTES:
        # the values at the regions' boundaries (big calibration batches) would outweigh what the
        # regions save: the other models run whole
        plans = plan_runs(models + [result], regions=False)
        p_orig, p_req, p_res = plans[0], plans[len(models) - 1], plans[-1]
        p_norm = plans[k_norm] if k_norm is not None else None
    # per feed: value number -> array, the graph inputs first (an output may be an input passed through)
    values = [{n: f[name] for p in plans for name, n in p.inputs.items() if name in f} for f in feeds]
    _keep(values, p_orig, names, orig_out)
    orig_out, names = [o[:n_out] for o in orig_out], names[:n_out]
    warns = input_model_warnings(original, orig_out, names, feeds, seed, rtol, atol)
    partial = {}
    for plan in plans[1:]:
        if plan.model is not None:
            _run_plan(plan, feeds, values)
        if not plan.whole:
            label = "result" if plan is p_res else "normalized" if plan is p_norm else "requested"
            partial[label] = [plan.nodes_run, plan.nodes_total]
    # the input ran on these feeds: a failure of the result or the requested model is ours (a bug)
    res_out = [[vals[n] for n in p_res.outputs] for vals in values]
    req_out = orig_out if requested is original else [[vals[n] for n in p_req.outputs] for vals in values]
    normalization = None
    if p_norm is not None and p_norm.outputs != p_orig.outputs:
        normalization = compare(orig_out, [[vals[n] for n in p_norm.outputs] for vals in values], names, rtol, atol)
        if not normalization.passed:
            why = (f"the model as the passes read it (local functions inlined, onnxruntime's fused ops expanded) "
                   f"differs from the file as given (max abs {normalization.max_abs:.3g}, max rel "
                   f"{normalization.max_rel:.3g}, output {normalization.worst_output!r}): a bug in collapse_passes, "
                   "please report it with the model")
            failed = replace(normalization, why=why)
            return Verification(failed, compare(orig_out, res_out, names, rtol, atol), rtol, atol, inputs_desc,
                                warnings=warns, partial=partial, normalization=failed)
    against = (nonfinite_request(orig_out, req_out, names, len(feeds), inputs_desc, feeds=feeds, data_feeds=data_feeds)
               or nothing_compared(req_out, len(feeds), inputs_desc) or compare(req_out, res_out, names, rtol, atol))
    # onnx's evaluator may read an op under another opset than onnxruntime does (Softmax's axis before
    # 13): with the opsets apart, its agreement would prove nothing about what onnxruntime computes
    if not against.passed and not against.why and opsets(requested) == opsets(result):
        def run64(m, f):
            if reference_cache is None or m is not requested:
                return _reference_run(m, f)
            # per feed: the second look takes the feeds each trial fails worst on, not always the same ones
            keys = [_feed_key(x) for x in f]
            todo = [(k, x) for k, x in zip(keys, f) if k not in reference_cache]
            if todo:
                for (k, _), out in zip(todo, _reference_run(m, [x for _, x in todo])):
                    reference_cache[k] = out
            return [reference_cache[k] for k in keys]

        against = float64_second_look(against, run64, requested, result, feeds,
                                      names, rtol, atol, req32=req_out, res32=res_out)
    nonfinite = sum(int(np.size(v) - np.isfinite(v).sum()) for out in orig_out for v in map(np.asarray, out)
                    if v.dtype.kind == "f")
    on_data = (compare(orig_out[:data_feeds], res_out[:data_feeds], names, rtol, atol)
               if 0 < data_feeds < len(feeds) else None)
    return Verification(against, compare(orig_out, res_out, names, rtol, atol), rtol, atol, inputs_desc,
                        warnings=warns, partial=partial, normalization=normalization, input_nonfinite=nonfinite,
                        against_original_data=on_data)


def _keep(values: list[dict], plan, names: list[str], outs: list[list]) -> None:
    """File a run's outputs under their value numbers."""
    for vals, out in zip(values, outs):
        for name, arr in zip(names, out):
            if name in plan.names:
                vals[plan.names[name]] = arr


def _run_plan(plan, feeds: list[dict], values: list[dict]) -> None:
    """Run a RunPlan's model (whole or its changed region) on every feed, region inputs taken from
    the values earlier runs filed; a model of ours that fails is a bug (RuntimeError)."""
    model = plan.model
    if not plan.whole:   # region inputs get the element type of the values they are fed
        first = values[0]
        for vi in model.graph.input:
            if vi.name in plan.boundary and not vi.type.tensor_type.elem_type:
                vi.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(
                    np.asarray(first[plan.boundary[vi.name]]).dtype)
    sess = session(model, optimize="auto", ours=True, extra_outputs=plan.fetch, initializers=plan.initializers,
                   feed_weights=True)
    names = [o.name for o in sess.get_outputs()]
    outs = []
    for f, vals in zip(feeds, values):
        feed = {n: f[n] for n in plan.fed}
        feed.update({n: vals[k] for n, k in plan.boundary.items()})
        outs.append(sess.run(names, feed))
    _keep(values, plan, names, outs)


#: at most this many bytes of intermediate values (all feeds) are kept for the changed regions' runs
FETCH_BUDGET_BYTES = 256 << 20

#: float64 second looks are made on at most this many of the check's inputs (those the float32 check is worst on)
F64_FEEDS = 2


def _feed_key(f) -> str:
    """A digest of a feed's arrays (the reference cache's key: the same inputs give the same float64 outputs)."""
    import hashlib

    h = hashlib.sha1()
    for k in sorted(f) if isinstance(f, dict) else range(len(f)):
        v = np.ascontiguousarray(np.asarray(f[k]))
        h.update(f"{k}|{v.dtype}|{v.shape}|".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def _worst_feeds(req32, res32, names, rtol, atol, n: int, total: int) -> list[int]:
    """Indices (in feed order) of the n feeds whose float32 outputs are furthest apart (max rel); the first n when
    the float32 outputs are not given. The second look must see the inputs the float32 check failed on: on the
    first two of eight calibration samples a collapsed MobileNetV3-Small's merged result agreed in float64 to 4e-6
    and passed as "exact", while on all eight (a dynamic-batch export checks them as one batch) it was 2.5e-4 off
    in float64 too and its merges were refused: the same weights, two verdicts."""
    if req32 is None or res32 is None or len(req32) != total or len(res32) != total:
        return list(range(min(n, total)))
    err = [compare([a], [b], names, rtol, atol).max_rel for a, b in zip(req32, res32)]
    return sorted(sorted(range(total), key=lambda i: -err[i])[:n])


#: an ill-conditioned request passes when the result's float32 outputs are at most this many times as far
#: from its exact (float64) outputs as its own float32 outputs are
CONDITIONING_FACTOR = 2.0


def float64_second_look(against: Comparison, run64, requested, result, feeds, names, rtol, atol,
                        req32=None, res32=None) -> Comparison:
    """The float32 gate failed: evaluate the requested semantics and the result again in float64
    (run64(model, feeds) -> per-feed outputs, or None when the graph cannot run so). Merged convs sum
    many more products in another order, so an ill-conditioned network (a deep stack of collapsed
    layers, BatchNorm-scaled) can differ by more than rtol in float32 while the algebra is exact: then
    float64 agrees to ~1e-12 and the result passes, with both numbers said.

    When even float64 disagrees and the requested semantics' own float32 outputs (`req32`, per feed) are
    that far from its float64 ones too, the network is too ill-conditioned for float32: the result's
    weights are float32 numbers (a folded BatchNorm, a merged kernel), and their rounding, amplified the
    same way, moves its float64 outputs too. The question is then whether the result computes the request
    as well as float32 can: it passes when its float32 outputs (`res32`) are at most CONDITIONING_FACTOR
    times as far from the exact (float64) request as the request's own float32 outputs are, and says so
    with the three numbers. Otherwise it fails, and says the request is ill-conditioned."""
    total = len(feeds)
    pick = _worst_feeds(req32, res32, names, rtol, atol, F64_FEEDS, total)
    feeds = [{k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v for k, v in feeds[i].items()}
             if isinstance(feeds[i], dict) else feeds[i] for i in pick]
    req32, res32 = ([r[i] for i in pick] if r is not None and len(r) == total else r for r in (req32, res32))
    try:
        req64, res64 = run64(requested, feeds), run64(result, feeds)
    except Exception:   # noqa: BLE001 - an op the float64 evaluator lacks: no second look
        return against
    if req64 is None or res64 is None:
        return against
    c64 = compare(req64, res64, names, rtol, atol)
    if not c64.passed:
        if req32 is not None:
            own = compare(req64, _as64(req32[:len(feeds)]), names, rtol, atol)
            exact = compare(req64, _as64(res32[:len(feeds)]), names, rtol, atol) if res32 is not None else None
            if not own.passed and exact is not None and exact.max_rel <= CONDITIONING_FACTOR * own.max_rel:
                return Comparison(
                    against.max_abs, against.max_rel, False, against.samples, against.worst_output,
                    f"float32 outputs differ from the requested semantics by max rel {against.max_rel:.3g} (over "
                    f"rtol {rtol}), and the requested semantics is that ill-conditioned in float32: its own float32 "
                    f"outputs are max rel {own.max_rel:.3g} from its float64 ones; the result's float32 outputs are "
                    f"max rel {exact.max_rel:.3g} from them, as close as float32 gets (the collapsed layers form an "
                    f"ill-conditioned linear map, outputs up to {_largest(req64):.3g}: expect this error from any "
                    "float32 program of it)", c64.max_rel, conditioned=True)
            if not own.passed:
                return Comparison(against.max_abs, against.max_rel, False, against.samples, against.worst_output,
                                  f"output differs from the requested semantics by max rel {against.max_rel:.3g} "
                                  f"(rtol {rtol}), and the requested semantics itself is that unstable in float32: "
                                  f"its float32 and float64 outputs differ by max rel {own.max_rel:.3g} (the collapsed "
                                  "layers form an ill-conditioned linear map, outputs up to "
                                  f"{_largest(req64):.3g}); collapse fewer "
                                  "activations, or compare in float64 (a float64 model)", c64.max_rel)
        return replace(against, max_rel64=c64.max_rel)
    # whose float32 rounding it is: the request's own float32 outputs can be the ones far from exact (random
    # EfficientNet-B0, 47 activations collapsed: request 1.84 max rel from its float64 outputs, the result 0.0485),
    # and "rounding of the merged sums" then sent a user checking against their own float32 reference astray
    own = exact = None
    if req32 is not None and res32 is not None:
        own = compare(req64, _as64(req32[:len(feeds)]), names, rtol, atol)
        exact = compare(req64, _as64(res32[:len(feeds)]), names, rtol, atol)
    whose = ("rounding of the merged sums" if own is None or own.passed else
             f"float32 rounding: the requested semantics' own float32 outputs are max rel {own.max_rel:.3g} from its "
             f"exact (float64) ones, the result's {exact.max_rel:.3g} (an ill-conditioned linear map, outputs up to "
             f"{_largest(req64):.3g}: any float32 program of it, the input model with these activations replaced "
             "included, is that far)")
    return Comparison(against.max_abs, against.max_rel, True, against.samples, against.worst_output,
                      f"float32 outputs differ by max rel {against.max_rel:.3g} (over rtol {rtol}): {whose}; the same "
                      f"graphs in float64 agree to max rel {c64.max_rel:.3g} on "
                      f"{len(feeds)} input(s){' (those float32 is furthest on)' if total > len(feeds) else ''}, so the "
                      "collapse is exact", c64.max_rel)


def accept_conditioned(ver: Verification, approximate: bool = False) -> Verification:
    """The gate's last word on a Verification (accepted, on its comparison with the request).

    `approximate`: the result holds border-inexact merges (allow_border_approx). Its float64 outputs then differ
    from the request's by the approximation too, which the conditioning rule cannot tell from float32 rounding:
    a random EfficientNetV2-S with its stem SiLU collapsed passed "as close as float32 gets" with a border error
    of 1.7e4 and approx_max_error 0.001 unapplied. Such a result is left failed, for the approximation's own gate
    (its error said, approx_max_error) to decide."""
    if approximate:
        return ver
    a = accepted(ver.against_requested)
    return ver if a is ver.against_requested else replace(ver, against_requested=a)


def border_approximation_gate(ver: Verification, limit: float | None, flag: str) -> tuple[Verification, bool, str]:
    """The gate of a result with border-inexact merges whose check failed (opted in with `flag`): (ver, passed,
    warning). The warning gives its error against the request; it passes unless `limit` (approx_max_error) is
    below that error, and then the comparison's why names the limit, so the one-line refusal says what refused it
    (not the float64 second look's analysis, which cannot tell the border error from float32 rounding)."""
    c = ver.against_requested
    line = f"border approximation: max abs error {c.max_abs:.3g} vs the requested semantics (opt-in with {flag})"
    if not math.isfinite(c.max_abs):
        # no error measured: the requested semantics overflow (nonfinite_request: nothing to verify against) or
        # the result's outputs are NaN/Inf. Passed with no limit, a result compared against nothing was written
        why = c.why or (f"the result outputs NaN/Inf where the requested semantics are finite: the border "
                        f"approximation's error is not measurable ({flag} accepts a measured error only)")
        return replace(ver, against_requested=replace(c, why=why)), False, line
    if limit is None or c.max_abs <= limit:
        return ver, True, line
    why = (f"the border approximation is max abs {c.max_abs:.3g} (max rel {c.max_rel:.3g}) from the requested "
           f"semantics, over approx_max_error {limit:g} (--approx-max-error)")
    return replace(ver, against_requested=replace(c, why=why)), False, line


def accepted(c: Comparison) -> Comparison:
    """A comparison that failed only because the request is ill-conditioned in float32, the result being as
    close to its exact outputs as float32 gets (Comparison.conditioned), passes; any other is returned as it
    is. Applied after the merge fallback, which looks for merges to refuse first (a result without them may
    pass outright)."""
    return replace(c, passed=True) if c.conditioned and not c.passed else c


def _as64(outs) -> list:
    return [[np.asarray(v, np.float64) for v in out] for out in outs]


def _largest(outs) -> float:
    return max(float(np.max(np.abs(v))) for out in outs for v in out if np.size(v))


def _reference_run(model: onnx.ModelProto, feeds: list[dict]):
    """Per-feed outputs of `model` evaluated in float64 by onnx's reference evaluator (numpy)."""
    from onnx.reference import ReferenceEvaluator

    from .core.reference_conv import REFERENCE_OPS   # onnx's Conv, its im2col gather made fast: the same outputs

    ev = ReferenceEvaluator(as_float64(model), new_ops=REFERENCE_OPS)
    names = [o.name for o in model.graph.output]
    with np.errstate(all="ignore"):   # its Sigmoid evaluates both branches: inf/inf warnings on stderr, unused
        return [[np.asarray(v) for v in ev.run(names, f)] for f in feeds]


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float64: float32 and float16 initializers, constants, value types
    and Casts (a float16 model's weights are exact in float64, its rounding is not)."""
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)

    def f64(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)

    for i, t in enumerate(g.initializer):
        if t.data_type in floats:
            g.initializer[i].CopyFrom(f64(t))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type in floats:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.type == onnx.AttributeProto.INT and a.i in floats:
                a.i = TensorProto.DOUBLE
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type in floats:
                a.t.CopyFrom(f64(a.t))
    return m


def load_calibration(path, model: onnx.ModelProto, limit: int | None = None) -> list[dict]:
    """Feeds from an .npz (arrays named after the model inputs, first axis = batch) or a folder of .npy."""
    from .calib import calibration_feeds

    return calibration_feeds(path, model, limit=limit)
