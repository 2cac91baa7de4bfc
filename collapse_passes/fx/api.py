"""collapse() for torch models: nn.Module (traced with torch.fx), fx.GraphModule, ExportedProgram; and
the torch.compile backend. Same selection, passes, planner and algebra as the ONNX path; the gate
runs in torch: reference = the input with the chosen activations linearized (LinearizeActivations
alone), compared with the result by verify.compare (one tolerance rule for both front ends).
"""
from __future__ import annotations

import copy
import itertools
import math
import operator
import os
import time

import numpy as np
import torch
from torch import fx
from torch.fx.passes.infra.pass_manager import PassManager

from ..config import CollapseConfig, with_tolerances
from ..core.merge_fallback import search as merge_search
# functions / methods the nonlinear depth counts: the ONNX front end's ops by their torch / aten names (one table); an
# ExportedProgram's graph calls functions only, so the module rule in graph_stats alone missed its SE gates
from ..core.nonlinear_ops import NONLINEAR_CALLS as _NONLINEAR_CALLS
from ..core.selection import KeyIndex, assign_scores, blocks_to_remove, choose, read_scores
from ..errors import CollapseError, VerificationError, random_model_error
from ..report import activation_row, build_report
from .call_path import CallPathTracer
from .frames import _compiled_frame, guard_identity, scope_dynamo_graph
from .graph import (PARTIAL_GRAPH, STATE_NAME, SharedWeightWrites, StateGuard, copy_sharing_weights, count_ops,
                    program_graph_way_out,
                    module_op_count,
                    count_params, find_activations, is_collapsible, keep_module_state, key_index, linear_op, own_weights,
                    propagate_shapes, shape_of, shape_runs_scope, state_error, state_writes, training_batchnorms)
from .graph import MATMUL_LINEARS, batchnorm_op, free_call, submodule
from .layout_ops import DecompositionGroups, layout_free_nodes
from .passes import (AbsorbResidual, Cleanup, FoldBatchNorm, FxRecord, HoistGlobalPool, LinearizeActivations,
                     MergeLinearChains, PropagateBiasMaps, RemoveResidualBlocks)

MAX_STEPS = 20


# ----------------------------------------------------------------------------------- input


class _PathTracer(CallPathTracer):
    """symbolic_trace (modules named by their call path) that remembers which module it was inside when
    tracing failed."""

    def __init__(self):
        super().__init__()
        self.failed_in: str | None = None

    def is_leaf_module(self, m, qualname) -> bool:
        """A layer with forward (pre-)hooks is traced through, hooks included (as torch.export and dynamo trace
        it): as a call_module node its hooks ran only while the layer stayed, so folding or collapsing it dropped
        them (the gate failed on any folded hooked conv, and a hook on a collapsed activation vanished)."""
        return super().is_leaf_module(m, qualname) and not has_forward_hooks(m)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                try:
                    self.failed_in = self.path_of_module(m) or type(m).__name__
                except NameError:
                    self.failed_in = type(m).__name__
            raise


def has_forward_hooks(m: torch.nn.Module) -> bool:
    """Forward (pre-)hooks other than torch's weight reparametrizations (weight_norm, spectral_norm: a pre-hook
    that sets .weight from other parameters, which the layer's current .weight already is in eval; traced through,
    they would set a Proxy as the user's weight and keep the conv from merging)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return bool(m._forward_hooks) or any(not isinstance(h, (WeightNorm, SpectralNorm))
                                         for h in m._forward_pre_hooks.values())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


TRACED_DEFAULTS = "collapse_passes.traced_defaults"


def _traced_defaults(model: torch.nn.Module, example_inputs) -> dict:
    """The forward parameters example_inputs leave at their (non-tensor) defaults, as symbolic_trace's
    concrete_args. Traced as inputs they were proxies: `bias=None` took the `bias is not None` branch, so such a
    model was refused, and a keyword-only one had no way in through example_inputs; traced at their default the
    graph computes what model(*example_inputs) computes (fx asserts the default if another value is passed)."""
    import inspect

    if example_inputs is None or isinstance(example_inputs, dict):
        return {}
    given = 1 if isinstance(example_inputs, torch.Tensor) else len(tuple(example_inputs))
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return {}
    rest = [p for p in params[given:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
    plain = (type(None), bool, int, float, str)
    if not rest or any(p.default is inspect.Parameter.empty or not isinstance(p.default, plain) for p in rest):
        return {}   # an input left out, or a tensor default: _check_input_count names them
    return {p.name: p.default for p in rest}


def _drop_specialized_inputs(graph: fx.Graph, count: int) -> None:
    """Remove the last `count` placeholders (parameters traced at their defaults) with the asserts fx reads them
    in: the passes' dead-code cleanup dropped those asserts, so the result ignored another value silently; without
    the inputs, passing one fails loudly (TypeError) and the graph takes what example_inputs give."""
    from .graph import reach

    for ph in [n for n in graph.nodes if n.op == "placeholder"][-count:]:
        order = reach(ph, lambda n: n.users)
        for n in sorted(order, key=lambda n: -list(graph.nodes).index(n)):   # users first
            graph.erase_node(n)


def _specialized_inputs(gm: fx.GraphModule, given: int) -> int:
    """How many trailing placeholders past the `given` inputs are parameters fx traced at their default
    (symbolic_trace(model, concrete_args={"mask": None}): a default, read only by fx's specialization asserts);
    0 unless all of them are. The graph needs no value for them."""
    from torch.fx._symbolic_trace import _assert_is_none

    def only_asserts(n: fx.Node) -> bool:
        return all(u.op == "call_function" and (u.target in (_assert_is_none, torch._assert) or
                                                u.target is operator.eq and only_asserts(u)) for u in n.users)

    rest = [n for n in gm.graph.nodes if n.op == "placeholder"][given:]
    ok = rest and all(n.args and not str(n.target).startswith("*") and only_asserts(n) for n in rest)
    return len(rest) if ok else 0


class _RootHooks(Exception):
    """The model has hooks of its own: traced with torch.export (trace_module)."""


def trace_module(model: torch.nn.Module, example_inputs=None) -> fx.GraphModule:
    """symbolic_trace (parameters left at their defaults traced as constants), or torch.export (non-strict)
    when that fails and example_inputs are given."""
    if isinstance(example_inputs, torch.Tensor):   # one input given bare: tuple(x) below would split its batch
        example_inputs = (example_inputs,)
    tracer = _PathTracer()
    try:
        if has_forward_hooks(model) and not isinstance(model, fx.GraphModule):
            # symbolic_trace traces forward() and never calls the model, so hooks on the model itself were left
            # out (the trace check then blamed Python branches); torch.export calls it, hooks included
            raise _RootHooks("forward hooks on the model itself (register_forward_hook on the root module), "
                             "which symbolic tracing leaves out")
        defaults = _traced_defaults(model, example_inputs)
        graph = tracer.trace(model, concrete_args=defaults or None)
        if defaults:
            _drop_specialized_inputs(graph, len(defaults))
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        gm.meta[TRACED_DEFAULTS] = tuple(defaults)
        return gm
    except Exception as exc:
        where = f"module {tracer.failed_in!r}" if tracer.failed_in else f"{type(model).__name__}.forward"
        why = _first_line(exc)
        if example_inputs is None:
            raise CollapseError(f"torch.fx cannot trace {where} ({why}); pass example_inputs=(...) to trace it "
                                "with torch.export, or give a torch.export.ExportedProgram") from None
    try:
        ep = _export_any_batch(model, tuple(example_inputs))
        gm = ep.module()
        inline_grad_regions(gm)
        gm.meta[EXPORT_BATCHES] = _batch_range(ep)
        return gm
    except Exception as exc2:
        _runs_on(model, example_inputs)   # wrong inputs: say so, not "rewrite its control flow"
        raise CollapseError(f"torch.fx cannot trace {where} ({why}) and torch.export failed too "
                            f"({_first_line(exc2)}); rewrite its data-dependent control flow "
                            "(torch.cond) or export the model to ONNX") from None


def _runs_on(model: torch.nn.Module, example_inputs) -> None:
    """One line when the model itself does not run on example_inputs (a wrong shape or dtype), as for a model
    symbolic_trace can trace: a failed torch.export fallback blamed the model's control flow for the user's input
    (Swin-T given 4 channels: "rewrite its data-dependent control flow")."""
    feeds = [t.clone() if isinstance(t, torch.Tensor) else t for t in example_inputs]
    guard = StateGuard(model)
    try:
        with torch.no_grad():
            model(*feeds)
    except Exception as exc:   # noqa: BLE001 - any failure of the user's model on the user's inputs
        shapes = ", ".join(str(tuple(t.shape)) + ("" if t.dtype == torch.float32 else f" {str(t.dtype)[6:]}")
                           if isinstance(t, torch.Tensor) else type(t).__name__ for t in feeds)
        raise CollapseError(f"the model does not run on example_inputs of shape {shapes} ({_first_line(exc)}); "
                            "pass inputs the model accepts") from None
    finally:
        if guard.written():   # a forward that updates its own state: the caller refuses it after the trace
            guard.restore()


def inline_grad_regions(gm: fx.GraphModule) -> int:
    """Inline torch.export's `with torch.no_grad():` / `set_grad_enabled` regions (wrap_with_set_grad_enabled: a
    submodule called by a higher-order op) into the graph: the activations inside them were no sites (a program
    of a forward with a no_grad block listed none of its keys, which symbolic_trace of the module does list).
    The grad mode goes, as symbolic_trace drops it: the result computes the same values, and gradients now reach
    the layers the region held. Returns how many regions were inlined."""
    hop = getattr(torch.ops.higher_order, "wrap_with_set_grad_enabled", None)
    done = 0
    for node in list(gm.graph.nodes):
        if hop is None or node.op != "call_function" or node.target is not hop or len(node.args) < 2 \
                or getattr(node.args[1], "op", None) != "get_attr" or node.kwargs:
            continue
        sub = gm.get_submodule(str(node.args[1].target))
        phs = [n for n in sub.graph.nodes if n.op == "placeholder"]
        if not isinstance(sub, fx.GraphModule) or len(phs) != len(node.args) - 2 or \
                any(n.op in ("get_attr", "call_module") for n in sub.graph.nodes):
            continue   # a region holding its own attributes or a nested region: left as it is
        users = list(node.users)
        if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
            continue
        with gm.graph.inserting_before(node):
            outs = gm.graph.graph_copy(sub.graph, dict(zip(phs, node.args[2:])))
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        for u in users:
            u.replace_all_uses_with(outs[u.args[1]])
            gm.graph.erase_node(u)
        getter = node.args[1]
        gm.graph.erase_node(node)
        if not getter.users:
            gm.graph.erase_node(getter)
        done += 1
    if done:
        gm.delete_all_unused_submodules()
        gm.recompile()
    return done


#: GraphModule.meta key: (lo, hi) batch sizes an nn.Module traced with torch.export runs at (hi None: no bound)
EXPORT_BATCHES = "collapse_passes.export_batches"


def _batch_range(ep) -> tuple:
    """(lo, hi) of dim 0 of the program's first tensor input: its example size when static."""
    for n in ep.graph.nodes:
        v = n.meta.get("val")
        if n.op == "placeholder" and n.name in set(ep.graph_signature.user_inputs) and isinstance(v, torch.Tensor) \
                and v.ndim > 0:
            d = v.shape[0]
            if not isinstance(d, torch.SymInt):
                return int(d), int(d)
            vr = ep.range_constraints.get(d.node.expr)
            if vr is None:
                return 0, None
            return _finite_int(vr.lower) or 0, _finite_int(vr.upper)
    return 0, None


def _finite_int(bound) -> int | None:
    """A range bound as an int, None for an infinite one (torch's int_oo has no usable is_finite)."""
    try:
        v = float(bound)
    except (TypeError, ValueError, AttributeError):
        return None
    return int(v) if math.isfinite(v) else None


def _export_any_batch(model: torch.nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    """torch.export with dim 0 of every tensor input left dynamic where the model allows it (Dim.AUTO). A plain
    export of a batch-1 example specializes the batch to 1 (0/1 specialization), and the result of an nn.Module
    that symbolic_trace cannot trace (torchvision's Swin) then failed on any other batch with a guard error;
    size-oblivious reasoning keeps it symbolic. That reasoning assumes every size > 1 and writes it into the program
    as a guard: from a batch-2 example torchvision's Swin-T came back refusing batch 1 ("Guard failed: x.size()[0] >
    1"), which the plain dynamic export of that example runs. So an example batch > 1 is exported plainly first,
    size-obliviously only where that fails. A model neither dynamic export takes is exported as given."""
    import torch.fx.experimental._config as fx_config
    from torch.export import Dim

    from ..core.quiet import exporter_silenced

    from torch.utils._pytree import tree_leaves, tree_map

    # tensors inside a dict / list input too (forward(batch) reading batch["image"]): they were left static
    tensors = [t for t in tree_leaves(example_inputs) if isinstance(t, torch.Tensor) and t.ndim > 0]
    dims = tuple(tree_map(lambda t: {0: Dim.AUTO} if isinstance(t, torch.Tensor) and t.ndim > 0 else None, x)
                 for x in example_inputs)
    modes = (True,) if any(t.shape[0] <= 1 for t in tensors) else (False, True)
    for oblivious in modes:
        try:   # silenced: torch.export logs its whole graph at a guard it cannot decide; the caller says it
            with fx_config.patch(backed_size_oblivious=oblivious), exporter_silenced():
                return torch.export.export(model, example_inputs, dynamic_shapes=dims)
        except Exception:   # noqa: BLE001 - the static export below says what is wrong, if anything
            pass
    with exporter_silenced():
        return torch.export.export(model, example_inputs)


def unwrap_compiled(model):
    """The module torch.compile(model) wraps: an OptimizedModule holds it as `_orig_mod`, so its traced keys
    would all start with `_orig_mod.` while the user's scores, the torch_backend and the ONNX export of the
    model name `layer1.0.relu`. Anything else is returned as it is."""
    orig = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(orig, torch.nn.Module):
        return orig
    return model


def _inputs_from_meta(gm: fx.GraphModule):
    shapes = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            s = shape_of(n)
            if s is None:
                return None
            shapes.append(s)
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(s, generator=g) for s in shapes)


def _example_inputs(model, example_inputs, gm: fx.GraphModule | None = None):
    if example_inputs is None and isinstance(model, torch.export.ExportedProgram):
        ex = getattr(model, "example_inputs", None)
        if ex is not None and not ex[1]:
            example_inputs = ex[0]
    if example_inputs is None and gm is not None:
        example_inputs = _inputs_from_meta(gm)
    if example_inputs is None:
        raise CollapseError("torch model: pass example_inputs=(tensor, ...): their shapes plan the merges "
                            "and the result is verified on them")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):   # tuple(dict) would feed the model its key strings
        raise CollapseError(f"example_inputs is a dict (keys {', '.join(map(repr, list(example_inputs)[:4]))}); pass "
                            "the positional inputs of forward as a tuple, example_inputs=(x, ...) (a dict that is "
                            "one input: example_inputs=({...},))")
    return tuple(example_inputs)


def _training_bn_in_program(ep) -> list[str]:
    return training_batchnorm_nodes(ep.graph)


def training_batchnorm_nodes(graph: fx.Graph) -> list[str]:
    """BatchNorm nodes in training mode (batch statistics, running stats updated): torch.export's aten ops, and
    dynamo's F.batch_norm / torch.batch_norm, whose training flag is argument 5 (or a keyword) in every spelling.
    A BatchNorm without running stats (track_running_stats=False) uses batch statistics in eval too, as
    collapse() of the module accepts it: not listed."""
    aten = torch.ops.aten
    flagged = (aten.batch_norm.default, aten.native_batch_norm.default, torch.nn.functional.batch_norm,
               torch.batch_norm)
    bad = []
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        mean_at = 1 if n.target is torch.nn.functional.batch_norm else 3
        has_stats = n.kwargs.get("running_mean", n.args[mean_at] if len(n.args) > mean_at else None) is not None
        if n.target in flagged and has_stats and n.kwargs.get("training", n.args[5] if len(n.args) > 5 else False) or \
                n.target in (aten._native_batch_norm_legit.default, aten._native_batch_norm_legit_functional.default):
            bad.append(n.name)
    return bad


def _low_precision(tensors) -> list[str]:
    """The float dtypes below float32 among `tensors` (float16, bfloat16, float8...), sorted."""
    return sorted({str(t.dtype).replace("torch.", "") for t in tensors if isinstance(t, torch.Tensor)
                   and t.is_floating_point() and t.dtype not in (torch.float32, torch.float64)})


#: ops that draw random numbers (names without namespace, overload or trailing "_")
_RANDOM_OPS = {"rand", "randn", "rand_like", "randn_like", "randint", "randint_like", "randperm", "bernoulli",
               "multinomial", "normal", "uniform", "exponential", "geometric", "cauchy", "log_normal", "poisson",
               "random"}
#: dropout ops: random when their training flag (argument 2 or keyword training/train, default True) is set
#: and their p (argument 1, default 0.5) is not 0
_DROPOUT_OPS = {"dropout", "native_dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout",
                "dropout1d", "dropout2d", "dropout3d"}


def random_nodes(gm: fx.GraphModule) -> list[str]:
    """Nodes of the graph that draw random numbers (dropout with training set, bernoulli, rand...): a model in
    training mode whose randomness is not an nn.Dropout (stochastic depth, F.dropout(x, p, self.training))."""
    found = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_method"):
            continue
        t = n.target
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        if isinstance(t, torch._ops.OpOverload):
            name = t.overloadpacket.__name__
        name = name.split(".")[-1].rstrip("_")
        if name in _DROPOUT_OPS:
            train = n.kwargs.get("training", n.kwargs.get("train", n.args[2] if len(n.args) > 2 else True))
            prob = n.kwargs.get("p", n.args[1] if len(n.args) > 1 else 0.5)
            if train is False or (isinstance(prob, (int, float)) and prob == 0):
                continue
        elif name in ("rrelu", "rrelu_with_noise"):   # random only in training (argument 3, default False)
            if not n.kwargs.get("training", n.args[3] if len(n.args) > 3 else False):
                continue
        elif name not in _RANDOM_OPS:
            continue
        found.append(f"{n.name} ({name})")
    return found


def _refuse_random(gm: fx.GraphModule, model) -> None:
    rand = random_nodes(gm)
    if not rand:
        return
    training = isinstance(model, torch.nn.Module) and any(m.training for m in model.modules())
    raise random_model_error(rand, "call model.eval() first (dropout and stochastic depth are identity in eval)"
                             + ("" if training else ", or remove the random ops"),
                             "it is in training mode" if training else "")


def _refuse_meta(tensors, what: str, way_out: str) -> None:
    """Tensors without data (device 'meta', as from init_empty_weights or to('meta')): nothing can be folded,
    merged or verified on them, and torch's first data read raised NotImplementedError deep in a check."""
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
        raise CollapseError(f"{what} on the 'meta' device (no data): {way_out}")


_LOAD_WEIGHTS = "load its weights first (model.to_empty(device='cpu') and load_state_dict, or build it on 'cpu')"


def refuse_torchscript(model: torch.nn.Module, onnx_way_out: bool = True) -> None:
    """One line for a TorchScript model or submodule: torch.export cannot trace it, and its parameter / buffer
    wrappers are no dicts (a TypeError traceback came out of the state checks, for a scripted submodule too; hooks
    cannot be registered on it). collapse(), prune_module and iterative_collapse refuse it alike."""
    scripted = next(((n, m) for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        what = f"{type(model).__name__} is" if not scripted[0] else f"submodule {scripted[0]!r} is"
        raise CollapseError(f"{what} a TorchScript module (torch.jit.script / torch.jit.trace), which collapse_passes "
                            "cannot trace or copy: pass the nn.Module it was made from"
                            + (", or export the model to ONNX (torch.onnx.export(..., dynamo=False)) and collapse the "
                               ".onnx file" if onnx_way_out else ""))


def to_graph_module(model, example_inputs=None) -> tuple[fx.GraphModule, str]:
    """(a GraphModule the passes may change, the input's kind): never modifies the caller's model."""
    from torch.utils._pytree import tree_leaves

    weights = [*model.state_dict.values(), *model.constants.values()] if isinstance(model, torch.export.ExportedProgram) \
        else [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
    _refuse_meta(weights, "the model's weights are", _LOAD_WEIGHTS)
    _refuse_meta(tree_leaves(example_inputs) if example_inputs is not None else [], "example_inputs are",
                 "give real tensors of the shapes to plan and verify on (torch.randn(...) on the model's device)")
    if isinstance(model, torch.export.ExportedProgram):
        ex = getattr(model, "example_inputs", None)
        if ex is not None and len(ex) > 1 and ex[1]:
            raise CollapseError(f"the program was exported with keyword input(s) {', '.join(map(str, ex[1]))}: "
                                "export it with positional inputs only (torch.export.export(model, (x, y))) or "
                                "pass the nn.Module with example_inputs")
        bad = _training_bn_in_program(model)
        if bad:
            raise CollapseError(f"the program was exported in training mode (BatchNorm {bad[0]} uses batch "
                                "statistics): call model.eval() before torch.export.export")
        low = _low_precision(list(model.state_dict.values()) + list(model.constants.values()))
        if low:   # as for an nn.Module: merged in float32/float64, the fp32 gate would fail on rounding alone
            raise CollapseError(f"the program holds {', '.join(low)} weights: the merges are computed and verified "
                                "in float32/float64; export it from model.float() (and convert the result back after)")
        gm = model.module()
        inline_grad_regions(gm)
        _refuse_random(gm, None)
        writes = state_writes(gm)
        if writes:
            raise CollapseError(state_error(writes))
        return gm, "ExportedProgram"
    if not isinstance(model, torch.nn.Module):
        raise CollapseError(f"expected an ONNX model, nn.Module, GraphModule or ExportedProgram, got "
                            f"{type(model).__name__}")
    refuse_torchscript(model)
    low = _low_precision(list(model.parameters()) + list(model.buffers()))
    if low:
        raise CollapseError(f"the model holds {', '.join(low)} weights: the merges are computed and verified in "
                            "float32/float64; call model.float() first (and convert the result back after)")
    bad = training_batchnorms(model)
    if bad:
        what = type(model.get_submodule(bad[0])).__name__
        raise CollapseError(f"{what} {bad[0]!r} is in training mode (its output depends on the batch or on chance, "
                            "so nothing can fold into it): call model.eval() first")
    guard = StateGuard(model)   # symbolic_trace runs an update of a buffer that is no proxy (`self.calls += 1`)
    try:
        gm, kind = (copy_sharing_weights(model), "GraphModule") if isinstance(model, fx.GraphModule) else \
            (trace_module(model, example_inputs), "nn.Module")
        if kind == "GraphModule" and any(n.op == "call_module" and has_forward_hooks(gm.get_submodule(str(n.target)))
                                         for n in gm.graph.nodes):   # a layer with hooks: trace them in (_PathTracer)
            gm = trace_module(gm, example_inputs)
    except CollapseError:   # a failed torch.export fallback may have run a write (`w.data.clamp_()`) for real
        if guard.written():
            guard.restore()
        raise
    writes = state_writes(gm) + guard.written()
    if writes:
        guard.restore()
        raise CollapseError(state_error(writes))
    _refuse_random(gm, model)
    return gm, kind


def list_torch_keys(model, example_inputs=None) -> list[dict]:
    """The activation keys of a torch model, as api.list_keys gives them for ONNX."""
    gm, _ = to_graph_module(unwrap_compiled(model), example_inputs)
    return [{"key": s.keys[0], "keys": s.keys, "module": s.path, "kind": s.kind, "nodes": s.node_names}
            for s in find_activations(gm)]


# ----------------------------------------------------------------------------------- selection


def _calib_batches(cfg: CollapseConfig) -> list | None:
    batches = cfg.calib
    if batches is None:
        return None
    if isinstance(batches, (torch.Tensor, np.ndarray, str, os.PathLike)) or not hasattr(batches, "__iter__"):
        raise CollapseError("calib= for a torch model is an iterable of input batches (a list of tensors, "
                            f"or of tuples of tensors); got a value of type {type(batches).__name__}")
    cap = cfg.calib_batches
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise CollapseError(f"calib_batches must be an integer >= 1 (or None for all), got {cap!r}")
    # copies: scoring runs the model, which may write into its input (ReLU(inplace=True) on x)
    return [_copied(b) for b in (itertools.islice(iter(batches), cap) if cap else batches)]


def _copied(batch):
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, (tuple, list)):
        return type(batch)(_copied(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _copied(v) for k, v in batch.items()}
    return batch


def method_scores(model, cfg: CollapseConfig, notes: list, gm: fx.GraphModule | None = None):
    """ScoreResult of cfg.method on a torch model fed with cfg.calib (an iterable of input batches;
    cfg.calib_batches caps how many are read). Activation scores come from forward hooks on the
    activation modules (scores/torch_hooks.py), keyed like the fx sites (module path, path:i per call), and
    for activations called as functions (F.relu) from the values of the traced graph `gm`, keyed by its sites
    (an ExportedProgram, which has no modules, has all its sites read on `gm`, its own module());
    LaCoOT's block scores from the residual blocks of the traced graph `gm` (fx/blocks.py), keyed like
    the ONNX front end's blocks, on the same numpy core (scores/lacoot.mswd_scores)."""
    from ..scores.torch_hooks import module_scores

    batches = _calib_batches(cfg)
    if batches and isinstance(model, torch.export.ExportedProgram):
        _refuse_program_shapes(gm, batches)
    if str(cfg.method).strip().lower() == "lacoot":
        return _lacoot_scores(gm, cfg, notes, batches)
    # an ExportedProgram has no activation modules to hook: its sites are all read on its own graph module `gm`
    # (module_scores' _GraphSites, the keys collapse(ep, collapse=[...]) and list_keys use)
    scored = gm if isinstance(model, torch.export.ExportedProgram) else model
    computed = module_scores(scored, cfg.method, calib_batches=batches, calib_arg="calib=[batch, ...]", gm=gm)
    notes.extend(computed.notes)
    notes.append(f"scores: {computed.method} ({computed.variant}) of {len(computed.scores)} activation site(s) "
                 "(scores/torch_hooks)"
                 + (f" over {len(batches)} calibration batch(es)" if batches else ""))
    return computed


def _refuse_program_shapes(gm: fx.GraphModule, batches: list) -> None:
    """One line when a calibration batch has a shape an ExportedProgram's static dims reject (its graph module
    runs only those; a batch that is a multiple of a static batch is run in pieces by fx/tap): the graph's own
    guard error named neither the input nor the way out."""
    from .tap import _batch_args

    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, batch in enumerate(batches):
        for ph, a in zip(phs, _batch_args(gm, batch)):
            val = ph.meta.get("val")   # export's fake tensor: a dynamic dim is a SymInt, a static one an int
            if not isinstance(a, torch.Tensor) or not isinstance(val, torch.Tensor):
                continue
            want = tuple(val.shape)
            got = tuple(a.shape)
            bad = len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want[1:], got[1:])) \
                or (got and isinstance(want[0], int) and want[0] and got[0] % want[0])
            if bad:
                spec = "(" + ", ".join(str(w) if isinstance(w, int) else "any" for w in want) + ")"
                step = f", a static batch runs multiples of {want[0]}" \
                    if want and isinstance(want[0], int) and want[0] > 1 else ""
                raise CollapseError(f"calib= batch {i} gives input {ph.name} the shape {got}, which the "
                                    f"ExportedProgram's static shapes reject (exported as {spec}{step}): give "
                                    "calibration batches of that shape, or export with dynamic_shapes= for the dims "
                                    "that vary (or pass the nn.Module)")


def _lacoot_scores(gm: fx.GraphModule, cfg: CollapseConfig, notes: list, batches: list | None):
    from ..scores.lacoot import MIN_SAMPLES, N_DIRECTIONS, SEED, identity_blocks, mswd_scores
    from .blocks import find_residual_blocks
    from .tap import tapped_values

    if batches is None:
        raise CollapseError("method='lacoot' needs calib=[batch, ...]: LaCoOT compares each residual block's input "
                            "and output distributions on calibration data")
    blocks = find_residual_blocks(gm)
    ident = identity_blocks(blocks, "method='lacoot'")

    def pairs(keys):   # once per pass over the batches (more than one when the points exceed lacoot's budget)
        sub = [b for b in ident if b.key in set(keys)]
        for got in tapped_values(gm, [n for b in sub for n in (b.input, b.output)], batches, "lacoot", MIN_SAMPLES):
            yield {b.key: (got[b.input], got[b.output]) for b in sub if b.input in got and b.output in got}

    computed = mswd_scores(blocks, pairs, N_DIRECTIONS, SEED, "method='lacoot'")
    notes.extend(computed.notes)
    notes.append(f"scores: lacoot of {len(computed.scores)} residual block(s) of the traced graph (fx/blocks.py) "
                 f"over {len(batches)} calibration batch(es)")
    return computed


def saved_block_scores(cfg: CollapseConfig):
    """scores= holding LaCoOT block scores saved by --save-scores (core.selection.block_scores_given) as the
    ScoreResult method='lacoot' would give; None otherwise. Unknown block keys are refused when removed."""
    if cfg.scores is None:
        return None
    from ..core.selection import block_scores_given
    from ..scores._common import ScoreResult

    saved = block_scores_given(cfg.scores)
    return None if saved is None else ScoreResult("lacoot", "saved", "block", saved)


def select(gm: fx.GraphModule, cfg: CollapseConfig, notes: list, warnings: list, computed=None):
    """(sites, chosen sites, score per site id): the ONNX path's selection, over fx activation sites.
    `computed`: the method's ScoreResult (method_scores), whose scores the user's scores= override."""

    if cfg.method and computed is None:
        raise CollapseError("method= scores need the torch model itself (collapse(model, method=..., calib=...)) "
                            "or the ONNX model; or pass scores=")
    if cfg.threshold is not None and cfg.remove is not None:
        raise CollapseError("give either threshold or remove, not both")
    sites = find_activations(gm)
    never = {k: s.kind for s in find_activations(gm, collapsible_only=False) if not is_collapsible(s)
             for k in s.keys}
    index = KeyIndex(key_index(sites), never)
    raw = dict(computed.scores) if computed is not None and computed.kind != "block" else {}
    if cfg.scores is not None and not (computed is not None and computed.variant == "saved"):
        raw.update(read_scores(cfg.scores))
    src = str(cfg.scores) if isinstance(cfg.scores, (str, os.PathLike)) else "scores"
    scores = assign_scores(sites, index, raw, src, notes) if raw else {}
    if computed is not None and computed.kind != "block":
        unscored = [s.keys[0] for s in sites if id(s) not in scores]
        if unscored:
            notes.append(f"{len(unscored)} activation site(s) have no {computed.method} score and are left as "
                         f"they are (see the {computed.method} notes): "
                         + ", ".join(unscored[:5]) + (" ..." if len(unscored) > 5 else ""))
    chosen = choose(sites, index, scores, cfg, warnings)
    if not raw and not cfg.collapse and not (computed is not None and computed.kind == "block"):
        notes.append("no scores given: nothing collapsed; only the exact clean-ups (folding, merging) ran")
    return sites, chosen, scores


def run_passes(gm: fx.GraphModule, chosen_names, cfg: CollapseConfig, record: FxRecord,
               example_inputs=None, any_size: bool = False, merge_allowed=None, fold: bool = True) -> fx.GraphModule:
    """Linearize the chosen sites once, then fold / absorb / merge / cleanup to a fixed point.
    any_size: the graph will run at other spatial sizes than its shapes (MergeLinearChains.any_size).
    merge_allowed: the join keys merges may use (None: all; an empty set: no merge), core/merge_fallback.
    fold=False (with merge_allowed=frozenset()): the activations linearized and nothing folded, the gate's
    last resort."""
    LinearizeActivations(chosen_names, record)(gm)
    loop = [FoldBatchNorm(record)] if fold else []
    if cfg.merge and merge_allowed != frozenset():
        cm = _cost_model(cfg)
        # the pool hoist before the merge: a merge first fuses the head's 1x1 conv into the conv before it
        loop += [AbsorbResidual(record, merge_allowed),
                 HoistGlobalPool(record, None, cm, cfg.allow_border_approx, allowed=merge_allowed),
                 MergeLinearChains(cm, cfg.allow_border_approx, None, record, any_size=any_size,
                                   allowed=merge_allowed),
                 PropagateBiasMaps(record, cm)]   # a merged conv's bias map to its region's end, as on ONNX
    loop.append(Cleanup(record))
    res = PassManager(loop, steps=MAX_STEPS)(gm)
    return res.graph_module


def _cost_model(cfg: CollapseConfig):
    """cost='macs': MACs + per-op overhead; cost='measured': ops timed in eager torch (fx/measure.py)."""
    from ..algebra.cost import CostModel

    kw = {"per_op_overhead_macs": cfg.per_op_overhead} if cfg.per_op_overhead is not None else {}
    if cfg.cost == "measured":
        from .measure import TorchMeasuredCostModel

        return TorchMeasuredCostModel(**kw)
    if cfg.cost != "macs":
        raise CollapseError(f"unknown cost model {cfg.cost!r}; use macs or measured")
    return CostModel(**kw)


def prune(gm: fx.GraphModule, example_inputs, cfg: CollapseConfig):
    """(graph to collapse, report or None): channel pruning on the channel dependency graph
    (pruning/fx_adapter.py) before the collapse, as on ONNX: constant channels removed exactly (on by
    default, prune=False turns it off), and with prune_ratio an approximate prune by filter norm or
    user per-channel scores. Module-style graphs only: on an aten-level graph prune_ratio is an error and
    the exact removal is skipped (with a note)."""
    if not cfg.prune and cfg.prune_ratio is None:
        return gm, None
    from ..pruning.fx_adapter import prune_module

    if cfg.prune_scope not in ("global", "layer"):
        raise CollapseError(f"prune_scope must be global or layer, got {cfg.prune_scope!r}")
    imp = cfg.prune_importance
    if isinstance(imp, dict):
        importance, channel_scores = "scores", imp
    elif imp in ("l1", "l2"):
        importance, channel_scores = imp, None
    else:
        raise CollapseError(f"prune_importance {imp!r}: torch models take l1, l2 or {{module path: [per-channel "
                            "scores]}}; tlc/easier statistics need the ONNX model")
    if not _has_module_layers(gm):
        # the channel graph sees only nn.Conv/nn.Linear modules: on an aten-level graph (torch.export, the
        # fallback for models symbolic_trace cannot trace) it would find nothing and prune nothing, silently
        if cfg.prune_ratio is not None:
            raise CollapseError("prune_ratio needs nn.Conv/nn.Linear modules in the traced graph, and this one is "
                                "aten-level (torch.export: the model is not symbolic-traceable or was given as an "
                                "ExportedProgram); export it to ONNX and run the CLI with --prune-ratio")
        return gm, {"exact_removal": cfg.prune, "groups": [], "removed_channels": 0,
                    "notes": ["aten-level graph (torch.export): channel pruning skipped"]}
    # gm's node metadata holds its shapes: prune_module runs the model only after removing channels, and leaves
    # the shapes of what it returns in its metadata
    pruned, report = prune_module(gm, example_inputs, exact=cfg.prune, ratio=cfg.prune_ratio, scope=cfg.prune_scope,
                                  round_to=cfg.round_to, importance=importance, channel_scores=channel_scores,
                                  shapes_known=True, check=0)   # the ratio's error: measured below, on the gate's runs
    if cfg.prune_ratio is not None:
        report["ratio"] = {**report.get("ratio", {}), "approximate": True}
    return pruned, report


def requested_semantics(gm: fx.GraphModule, chosen_names, blocks=()) -> fx.GraphModule:
    """A copy of gm with the chosen residual blocks replaced by their skip and the chosen activations
    linearized, and nothing else (the gate's reference). It shares gm's weights (no pass edits one in place)."""
    ref = copy_sharing_weights(gm)
    RemoveResidualBlocks(blocks)(ref)
    LinearizeActivations(chosen_names)(ref)
    return ref


# ----------------------------------------------------------------------------------- verification


def _feeds(example_inputs, count: int, seed: int) -> list[tuple]:
    """The example inputs, then count-1 seeded random inputs of the same shapes (floating inputs only), drawn on
    the CPU (the same numbers on every device) and put on each input's device: a model on a GPU got CPU inputs."""
    from torch.utils._pytree import tree_map

    g = torch.Generator().manual_seed(seed)
    feeds = [tuple(example_inputs)]

    def draw(t):   # inside dicts / lists too: a dict input was the same tensor on every check run
        return torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) if isinstance(t, torch.Tensor) and \
            t.is_floating_point() else t

    for _ in range(max(0, count - 1)):
        feeds.append(tuple(tree_map(draw, t) for t in example_inputs))
    return feeds


def _cloned(inputs) -> tuple:
    """Copies of the tensors in `inputs`, inside dicts and lists too (a model writing batch["img"] in place wrote
    the caller's example input)."""
    from torch.utils._pytree import tree_map

    return tuple(tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, inputs))


def run_outputs(model, feeds) -> list[list[np.ndarray]]:
    outs = []
    with torch.no_grad():
        for f in feeds:
            f = _cloned(f)   # a model may write its input
            outs.append(output_arrays(model(*f)))
    return outs


def output_arrays(output) -> list[np.ndarray]:
    """A model's output (any pytree) as the float64 arrays verification compares."""
    from torch.utils._pytree import tree_leaves

    return [t.detach().cpu().double().numpy() for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


class CheckOutputs:
    """Each model's outputs on the check inputs, each run at most once per input: the trace check, the gate and
    the ratio prune's error read the same runs, a model's run on example_inputs may be the shape propagation
    that filled its metadata (keep), a model that computes what another does shares its runs (same), and one
    that computes what another does up to some nodes runs only from there (shares_prefix)."""

    def __init__(self, feeds: list[tuple]):
        self.feeds = feeds
        self._got: dict = {}   # id(model) -> (model, {feed index: arrays})
        self._prefix: dict = {}   # id(model) -> [model, base, SharedPrefix | False | None (not planned yet)]
        self._kept: dict = {}   # (id(model), feed index) -> the base's values its run starts from

    def _of(self, model) -> dict:
        return self._got.setdefault(id(model), (model, {}))[1]

    def keep(self, model, i: int, output) -> None:
        self._of(model)[i] = output_arrays(output)

    def same(self, model, like) -> None:
        """model computes what `like` does (the requested semantics when nothing is collapsed)."""
        self._got[id(model)] = (model, self._of(like))

    def shares_prefix(self, model, base) -> None:
        """model computes base's values up to some nodes (the requested semantics: the input with some activations
        linearized): base's runs keep the shared values model reads, and model's runs start from them
        (fx/shared_prefix.py; ResNet-50 with layer4.0's ReLUs collapsed runs 28 of its 172 ops). Planned at the
        first run that can use it; a run of base already made (the shape propagation) kept nothing."""
        self._prefix[id(model)] = [model, base, None]

    def _plan(self, entry: list):
        if entry[2] is None:
            from .shared_prefix import SharedPrefix

            try:
                plan = SharedPrefix(entry[1], entry[0])
            except Exception:   # noqa: BLE001 - a graph the planner does not read: whole runs, as before it
                plan = None
            entry[2] = plan if plan is not None and plan.useful else False
        return entry[2] or None

    def _run(self, model, i: int) -> list[np.ndarray]:
        feeds = _cloned(self.feeds[i])   # a model may write its input
        entry = self._prefix.get(id(model))
        plan = self._plan(entry) if entry is not None else None
        if plan is not None and (id(model), i) not in self._kept and i not in self._of(plan.base):
            self._of(plan.base)[i] = self._run(plan.base, i)   # keeps what model reads
        kept = self._kept.pop((id(model), i), None) if plan is not None else None
        if kept is not None:
            return output_arrays(plan.run_model(feeds, kept))
        derived = [p for p in (self._plan(e) for e in self._prefix.values() if e[1] is model and
                               i not in self._of(e[0]) and (id(e[0]), i) not in self._kept) if p is not None]
        if not derived:
            return run_outputs(model, [self.feeds[i]])[0]
        from .shared_prefix import run_keeping

        out, kept = run_keeping(model, feeds, derived)
        for p, k in zip(derived, kept):
            self._kept[(id(p.model), i)] = k
        return output_arrays(out)

    def __call__(self, model, upto: int | None = None) -> list[list[np.ndarray]]:
        got = self._of(model)
        wanted = range(len(self.feeds) if upto is None else upto)
        for i in wanted:
            if i not in got:
                got[i] = self._run(model, i)
        return [got[i] for i in wanted]


def _graph_inputs_given(gm: fx.GraphModule, example_inputs) -> int:
    """How many placeholders example_inputs fill. A program's module (ep.module(), also the torch.export fallback)
    takes forward's arguments and flattens them into one placeholder per leaf: a forward(batch) reading
    batch["image"] and batch["gain"] has 2 placeholders for 1 input, and collapse(ep) of it was refused as
    "batch_gain are missing", even with the program's own example inputs."""
    from torch.fx.graph import _PyTreeCodeGen

    if isinstance(gm.graph._codegen, _PyTreeCodeGen):
        try:
            return len(gm.graph.process_inputs(*example_inputs))
        except Exception:   # noqa: BLE001 - another structure than the program's: the run below says it in one line
            pass
    return len(example_inputs)


def _check_input_count(gm: fx.GraphModule, example_inputs) -> tuple:
    """symbolic tracing makes every forward parameter an input, `mask=None` included: the traced graph
    then follows the `mask is not None` branch, so inputs left at their default cannot be traced. Parameters
    traced at their default (trace_module, or the user's concrete_args) need no input: those of a user's
    GraphModule are dropped from our copy, as trace_module drops its own. Returns example_inputs (a program's
    dict inputs in the order it was exported with)."""
    import inspect

    if gm.meta.get(TRACED_DEFAULTS):   # traced at their defaults: the graph needs only example_inputs
        return example_inputs
    given = _graph_inputs_given(gm, example_inputs)
    specialized = _specialized_inputs(gm, given)
    if specialized:   # a GraphModule the user traced with concrete_args: as trace_module's own (a copy: ours)
        _drop_specialized_inputs(gm.graph, specialized)
        gm.recompile()
        return example_inputs
    example_inputs = _check_input_structure(gm, example_inputs)
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    missing = [n for n in phs[given:] if not isinstance(n.target, str) or not n.target.startswith("*")]
    if not missing:
        return example_inputs
    defaults = [n.name for n in missing if n.args and n.args[0] is not inspect.Parameter.empty]
    program = program_graph_way_out(gm, example_inputs)
    if program:   # an ExportedProgram's graph_module: its parameters are its inputs
        raise CollapseError(f"the graph takes {len(phs)} input(s) and example_inputs gives {given}: {program}")
    raise CollapseError(f"the traced model takes {len(phs)} input(s) and example_inputs gives {given}; "
                        f"{', '.join(n.name for n in missing)} "
                        + (("keeps its default" if len(missing) == 1 else "keep their defaults") +
                           ", which symbolic tracing cannot follow (it traces them as inputs); "
                           "give them in example_inputs or pass torch.export.export(model, example_inputs)"
                           if defaults else "are missing: give every input in example_inputs"))


def _input_kinds(specs) -> str:
    """'tensor, dict (image, gain)' for the top-level pytree specs of forward's arguments."""
    def kind(sp):
        if sp.type is None:
            return "tensor"
        if sp.type is dict:
            return f"dict ({', '.join(map(str, sp.context))})"
        return f"{sp.type.__name__} of {sp.num_children}"
    return ", ".join(kind(sp) for sp in specs) or "nothing"


def _in_spec_order(value, spec):
    """value with its dicts' keys in the order of the pytree spec (same keys), as ep.module() reads them."""
    if spec.type is dict and isinstance(value, dict) and set(value) == set(spec.context):
        return {k: _in_spec_order(value[k], spec.child(i)) for i, k in enumerate(spec.context)}
    if spec.type in (tuple, list) and isinstance(value, (tuple, list)) and len(value) == spec.num_children:
        return type(value)(_in_spec_order(v, spec.child(i)) for i, v in enumerate(value))
    return value


def _check_input_structure(gm: fx.GraphModule, example_inputs) -> tuple:
    """A program's module (ep.module()) flattens forward's arguments by the structure it was exported with. The shape
    run (an fx Interpreter) flattened whatever it was given, so example_inputs of another structure, two tensors for
    one input or a dict for a tensor, passed it and then the program's own call raised a TypeError / AttributeError
    traceback out of collapse(ep, example_inputs=...). A dict with the program's keys in another order is what
    ep.module() accepts too: returned in the program's order (it was refused, or fed by position)."""
    from torch.fx.graph import _PyTreeCodeGen
    from torch.utils._pytree import tree_flatten

    codegen = gm.graph._codegen
    spec = codegen.pytree_info.in_spec if isinstance(codegen, _PyTreeCodeGen) else None
    if spec is None or spec.type is not tuple or spec.num_children != 2:   # (args, kwargs), as torch.export writes it
        return example_inputs
    want = spec.child(0)
    example_inputs = _in_spec_order(tuple(example_inputs), want)
    got = tree_flatten(example_inputs)[1]
    if got != want:
        raise CollapseError(f"example_inputs do not match the inputs the program was exported with: it takes "
                            f"{_input_kinds(want.children())}, example_inputs give "
                            f"{_input_kinds(got.children())}; pass inputs of the exported structure (or none: "
                            "the program's own example inputs are used)")
    return example_inputs


def _check_trace(model, got: list, example_inputs, cfg: CollapseConfig) -> None:
    """The traced graph must compute what the model computes: symbolic tracing cannot see Python-level
    branches on values (torch.is_tensor(x), isinstance, data checks) and may take another branch than eager.
    got: the traced graph's outputs on example_inputs (CheckOutputs: the run that propagated its shapes)."""
    from ..core.runtime import compare

    try:
        want = run_outputs(model, [example_inputs])
    except Exception as exc:   # noqa: BLE001 - the trace ran on these inputs, the model itself does not
        raise CollapseError(f"the model does not run on example_inputs ({_first_line(exc)}) although its torch.fx "
                            "trace does; pass inputs the model accepts") from None
    c = compare(want, got, [f"output{i}" for i in range(len(want[0]))], cfg.rtol, cfg.atol)
    if not c.passed:
        raise CollapseError(f"torch.fx's trace of the model computes other outputs than the model on example_inputs "
                            f"(max abs {c.max_abs:.3g}{'; ' + c.why if c.why else ''}): its forward branches on "
                            "Python values tracing cannot see (torch.is_tensor, isinstance, shape or data checks); "
                            "pass torch.export.export(model, example_inputs) instead")


def _refuse_empty(example_inputs) -> None:
    """example_inputs with a 0-sized dim: the check's inputs (example_inputs and random ones of their shapes) hold no
    element, every output is empty, and the gate said "max abs 0" over nothing (core/runtime.empty_check_input)."""
    from ..core.runtime import empty_check_input

    empty = empty_check_input([example_inputs])
    if empty:
        raise CollapseError(f"{empty[0]} has shape {empty[1]}, no elements, so a check on it compares nothing; give "
                            "example_inputs at least 1 in every dim (a batch of 1)")


def _refuse_empty_call(gm: fx.GraphModule, example_inputs) -> None:
    """torch_backend's call inputs with a 0-sized dim: the compile-time check ran the graph on them and compared
    zero elements ("verified", max abs 0), as collapse() did before _refuse_empty."""
    from ..core.runtime import empty_check_input

    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    empty = empty_check_input([dict(zip(names, example_inputs))] if len(names) == len(example_inputs)
                              else [example_inputs])
    if empty:
        raise CollapseError(f"torch_backend: the call's input {empty[0]!r} has shape {empty[1]}, no elements, so the "
                            "compile-time check on it compares nothing; call the compiled model on inputs with at "
                            "least 1 in every dim, or pass verify=False to compile such calls unverified")


def _refuse_shared_writes(shared, module, where: str) -> None:
    """Raise VerificationError when a pass wrote one of the user's weights in place (SharedWeightWrites): the
    gate's reference reads the same tensor, so the comparison could not fail; the user's model was changed."""
    names = {id(t): n for n, t in [*module.named_parameters(remove_duplicate=False),
                                   *module.named_buffers(remove_duplicate=False)]}
    written = shared.changed(names)
    if written:
        raise VerificationError(f"{where}: a pass wrote the model's weight(s) {', '.join(written[:3])}"
                                f"{' ...' if len(written) > 3 else ''} in place (a bug in collapse_passes: the "
                                "result cannot be verified, and the model given was changed); please report it")


def verify_torch(original, requested, result, feeds, rtol: float, atol: float, desc: str,
                 outputs: CheckOutputs | None = None):
    """outputs: the runs already made on these feeds (CheckOutputs), reused; the float64 second look runs
    requested and result again only when the float32 comparison fails."""
    from ..core.runtime import compare, nonfinite_request, nothing_compared
    from ..verify import Verification, float64_second_look

    outputs = outputs if outputs is not None else CheckOutputs(feeds)
    res = outputs(result)
    names = [f"output{i}" for i in range(len(res[0]))]
    orig, req = outputs(original), outputs(requested)
    against = (nonfinite_request(orig, req, names, len(feeds), desc, feeds=feeds)
               or nothing_compared(req, len(feeds), desc)
               or compare(req, res, names, rtol, atol))
    if not against.passed and not against.why:
        against = float64_second_look(against, _run64, requested, result, feeds, names, rtol, atol, req32=req,
                                      res32=res)
    return Verification(against, compare(orig, res, names, rtol, atol), rtol, atol, desc)


def _run64(model, feeds):
    """Outputs of a float64 copy of the model on float64 copies of the feeds (verify.float64_second_look)."""
    m = copy.deepcopy(model).double()
    return run_outputs(m, [tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                 for t in f) for f in feeds])


def _program_dynamic_shapes(ep) -> list[dict] | None:
    """The dynamic dims of an ExportedProgram's user inputs, one {dim: torch.export.Dim} per input with the
    program's ranges (one Dim per symbol, so dims the program kept equal stay equal); None when all are static."""
    from torch.export import Dim

    user = set(ep.graph_signature.user_inputs)
    dims, specs = {}, []
    for n in ep.graph.nodes:
        if n.op != "placeholder" or n.name not in user:
            continue
        v = n.meta.get("val")
        spec = {}
        for i, d in enumerate(tuple(v.shape) if isinstance(v, torch.Tensor) else ()):
            if not isinstance(d, torch.SymInt):
                continue
            expr = d.node.expr
            if expr not in dims:
                vr = ep.range_constraints.get(expr)
                lo = _finite_bound(vr.lower) if vr is not None else None
                hi = _finite_bound(vr.upper) if vr is not None else None
                dims[expr] = Dim(f"d{len(dims)}_{expr}", **({"min": lo} if lo is not None else {}),
                                 **({"max": hi} if hi is not None else {}))
            spec[i] = dims[expr]
        specs.append(spec)
    return specs if dims else None


def _finite_bound(v) -> int | None:
    """A range bound as an int, None when unbounded: torch's int_oo (a Dim without max=) says is_finite True, and
    int() of it raised a sympy AttributeError out of collapse(ep)."""
    try:
        return int(v) if v.is_finite else None
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def _nest_dynamic_shapes(result: fx.GraphModule, flat: list) -> tuple:
    """The per-placeholder dynamic dims in the structure of forward's arguments, which torch.export wants: a
    forward(batch) of a dict has one spec per tensor in it ({"image": {0: b}, "gain": {0: b}}), not one per
    placeholder (before, the re-export of such a program failed on the structure mismatch)."""
    from torch.fx.graph import _PyTreeCodeGen
    from torch.utils._pytree import tree_unflatten

    codegen = result.graph._codegen
    spec = codegen.pytree_info.in_spec if isinstance(codegen, _PyTreeCodeGen) else None
    if spec is not None and spec.num_leaves == len(flat):
        args, kwargs = tree_unflatten(list(flat), spec)
        if not kwargs:
            return tuple(args)
    return tuple(flat)


def _reexport(result: fx.GraphModule, example_inputs, dyn_shapes, own_inputs=None) -> torch.export.ExportedProgram:
    """The result as an ExportedProgram, with the input program's dynamic dims (a program exported for any
    batch came back fixed to its example batch). own_inputs: the input program's example inputs, tried when
    example_inputs cannot keep them: torch.export specializes a dim whose example size is 1, so a program exported
    for batches 1..16 and collapsed with a batch-1 example_inputs was refused ("Constraints violated")."""
    from ..core.quiet import exporter_silenced

    if dyn_shapes is None:
        with exporter_silenced():
            return torch.export.export(result, example_inputs)
    tries = [example_inputs] + ([tuple(own_inputs)] if own_inputs is not None else [])
    for i, inputs in enumerate(tries):
        try:
            with exporter_silenced():
                return torch.export.export(result, inputs, dynamic_shapes=_nest_dynamic_shapes(result, dyn_shapes))
        except Exception as exc:   # noqa: BLE001 - a dim the result cannot keep dynamic: say which, in one line
            if i + 1 < len(tries):
                continue
            raise CollapseError(f"the collapsed program cannot keep the input program's dynamic dims "
                                f"({_first_line(exc)}); export the model with static shapes, or pass the nn.Module "
                                "(its result runs at any batch)") from None


# ----------------------------------------------------------------------------------- report


# modules that are not nonlinear for the depth count (everything else called as a module is)
_LINEAR_MODS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.Identity,
                torch.nn.Flatten, torch.nn.Dropout, torch.nn.AdaptiveAvgPool2d, torch.nn.AvgPool2d)


def _has_module_layers(gm: fx.GraphModule) -> bool:
    """False when the graph's convs/linears are all functions (aten-level): the channel graph can't prune them."""
    kinds = {n.op for n in gm.graph.nodes if linear_op(gm, n) is not None}
    return "call_module" in kinds or not kinds


_MATMULS = {torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.ops.aten.matmul.default,
            torch.ops.aten.bmm.default, torch.ops.aten.mm.default, "matmul", "bmm", "mm"}


def _matmul_macs(node: fx.Node) -> int:
    """MACs of a matmul of two tensors (attention's q @ k^T, attn @ v), as onnx/analysis.node_macs counts
    a MatMul: output elements x the shared dim. Torch counted none (Swin-T's 3.5 M of 13.8 M)."""
    if node.op not in ("call_function", "call_method") or node.target not in _MATMULS or len(node.args) < 2 \
            or not isinstance(node.args[0], fx.Node):
        return 0
    a, out = shape_of(node.args[0]), shape_of(node)
    return int(np.prod(out)) * int(a[-1]) if a and out is not None else 0


_ATTENTION_CALLS = {torch.nn.functional.scaled_dot_product_attention,
                    torch.ops.aten.scaled_dot_product_attention.default}


def _attention_macs(node: fx.Node) -> int:
    """MACs of F.scaled_dot_product_attention(q, k, v): its two matmuls, q @ k^T ((..., L, E) x (..., S, E)) and
    attn @ v ((..., L, S) x (..., S, Ev)), as the ONNX exports count the MatMuls they write it as. Torch counted
    none before 2026-11-30 (a ViT block of timm's layout: 1.5 M of 5.5 M MACs at 64 x 72 missing)."""
    args = list(node.args[:3]) + [node.kwargs.get(k) for k in ("query", "key", "value")[len(node.args):]]
    q, k, v = (shape_of(a) if isinstance(a, fx.Node) else None for a in args[:3])
    out = shape_of(node)
    if not (q and k and v and out) or len(q) < 2:
        return 0
    return int(np.prod(q[:-1])) * int(k[-2]) * int(q[-1]) + int(np.prod(out[:-1])) * int(v[-2]) * int(v[-1])


def _multihead_attention_macs(mod: torch.nn.MultiheadAttention, node: fx.Node) -> int:
    """MACs of an nn.MultiheadAttention call (a leaf of torch.fx's trace): the q, k, v projections, q @ k^T,
    attn @ v and the output projection, as the ONNX exports and the ExportedProgram count the MatMuls / Gemms it
    is written as. Torch counted none before 2026-11-30 (a 2-block ViT at 16 x 16: 311,936 MACs against
    639,616 from its program and from either ONNX export)."""
    names = ("query", "key", "value")
    args = list(node.args[:3]) + [node.kwargs.get(k) for k in names[len(node.args[:3]):]]
    q, k, v = (shape_of(a) if isinstance(a, fx.Node) else None for a in args)
    if not (q and k and v) or len(q) < 2:
        return 0
    e = mod.embed_dim
    seq = -2 if mod.batch_first and len(k) == 3 else 0   # (N, S, E) batch first; else (S, N, E) or unbatched (S, E)
    tq, tk = int(np.prod(q[:-1])), int(np.prod(k[:-1]))   # query / key tokens over the batch
    return tq * e * e + tk * (mod.kdim + mod.vdim) * e + 2 * tq * int(k[seq]) * e + tq * e * e


_LINEAR_CALLS = {torch.nn.functional.linear, torch.ops.aten.linear.default, torch.addmm, torch.ops.aten.addmm.default,
                 torch.baddbmm, torch.ops.aten.baddbmm.default}
_CONV_CALLS = {torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d, torch.conv1d,
               torch.conv2d, torch.conv3d, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
               torch.ops.aten.conv3d.default, torch.ops.aten.convolution.default,
               torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
               torch.nn.functional.conv_transpose3d, torch.ops.aten.conv_transpose1d.default,
               torch.ops.aten.conv_transpose2d.input, torch.ops.aten.conv_transpose3d.input}


def _arg_shape(arg) -> tuple | None:
    return tuple(arg.shape) if isinstance(arg, torch.Tensor) else shape_of(arg)


def _dense_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    """MACs of a conv / linear / matmul that linear_op does not take (computed weights or bias, a padding mode
    or transposed conv no pass folds), counted by shapes as onnx/analysis.node_macs counts its Conv, Gemm, MatMul
    and ConvTranspose; and of a call torch.fx keeps whole (a torch.fx.wrap-ped function), as measured when its
    shapes were (node.meta["opaque_macs"], fx/graph.propagate_shapes). Before 2026-11-29 these counted none:
    Swin V2-T at 224 reported 2.98 G MACs from the nn.Module, 3.63 G from its ExportedProgram (its qkv F.linear
    takes a bias built at run time), 4.92 G from either ONNX export."""
    if "opaque_macs" in node.meta:
        return int(node.meta["opaque_macs"])
    if node.op == "call_module" and isinstance(submodule(gm, node), torch.nn.MultiheadAttention):
        return _multihead_attention_macs(submodule(gm, node), node)   # its output is a tuple: no shape of its own
    out = shape_of(node)
    if out is None:
        return 0
    if node.op == "call_module":
        mod = submodule(gm, node)
        if isinstance(mod, torch.nn.Linear):
            return int(np.prod(out[:-1])) * mod.in_features if len(out) > 1 else mod.in_features
        if isinstance(mod, torch.nn.modules.conv._ConvNd) and node.args and isinstance(node.args[0], fx.Node):
            w = tuple(mod.weight.shape)
            if mod.transposed:
                a = shape_of(node.args[0])
                return int(np.prod(a)) * w[1] * int(np.prod(w[2:])) if a else 0
            return int(np.prod(out)) * int(np.prod(w[1:]))
        return 0
    if node.op != "call_function":
        return _matmul_macs(node)
    t = node.target
    if t in _ATTENTION_CALLS:
        return _attention_macs(node)
    if t in _LINEAR_CALLS and len(node.args) >= 2:
        if t in (torch.nn.functional.linear, torch.ops.aten.linear.default):
            w = _arg_shape(node.args[1])
            return int(np.prod(out)) * int(w[-1]) if w else 0
        a = _arg_shape(node.args[1])   # addmm / baddbmm(bias, a, b)
        return int(np.prod(out)) * int(a[-1]) if a else 0
    if t in _CONV_CALLS and len(node.args) >= 2:
        w = _arg_shape(node.args[1])
        if not w:
            return 0
        transposed = (t is torch.ops.aten.convolution.default and bool(node.args[6] if len(node.args) > 6
                                                                       else node.kwargs.get("transposed", False))) \
            or "transpose" in getattr(t, "__name__", "")
        if transposed:
            a = shape_of(node.args[0])
            return int(np.prod(a)) * w[1] * int(np.prod(w[2:])) if a else 0
        return int(np.prod(out)) * int(np.prod(w[1:]))
    return _matmul_macs(node)


def _nonlinear_call(node: fx.Node) -> bool:
    if node.op == "call_method":
        name = str(node.target)
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "").split(".")[0]
    else:
        return False
    name = name.strip("_")
    return name in _NONLINEAR_CALLS or name.split("_with_indices")[0] in _NONLINEAR_CALLS


def export_free_nodes(gm: fx.GraphModule) -> tuple[set, int]:
    """(nodes that are no op of the deployed model, so the report counts them in neither nodes nor depth, as
    the ONNX front end does not see them: no-ops the clean-up drops (nn.Identity, eval or p=0 dropout) and an
    eval-mode BatchNorm on a conv / linear's only output (both ONNX exporters fold it into the conv; counting
    it put 49 BatchNorms of EfficientNet-B0 into the torch "before" depth that the ONNX one never had), the
    change in parameters that fold makes: the BatchNorm's tensors go, a bias per channel comes if the op had none)."""
    from .passes.cleanup import _is_noop
    from .passes.fold_batchnorm import FoldBatchNorm

    free, params = set(), 0
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if _is_noop(gm, node):
            free.add(node)
            continue
        op = linear_op(gm, node) if node.target in MATMUL_LINEARS else None
        if op is not None and op.weight_view is not None and len(op.weight_view.users) == 1:
            free.add(op.weight_view)   # a decomposed Linear's W.t(): a view of a constant (the exporters' Gemm transB)
        bn = batchnorm_op(gm, node)
        # the fold pass's own rule: a BatchNorm1d over a Linear's 3-D output scales the sequence axis, not the
        # features (no exporter folds it; counted free, the torch depth was one short of the ONNX file's)
        op = FoldBatchNorm.producer(gm, bn) if bn is not None else None
        if op is not None:
            free.update(bn.nodes)
            params -= sum(t.numel() for t in (bn.gamma, bn.beta, bn.mean, bn.var) if isinstance(t, torch.Tensor))
            params += 0 if op.params.bias is not None else int(bn.mean.numel())
    return free, params


def _opaque_note(gm: fx.GraphModule) -> str | None:
    """The report's note on calls torch.fx kept whole (fx/graph.opaque_call): their MACs are measured, but each
    is one op in `nodes` and on the critical path, and no activation inside one is seen."""
    from collections import Counter

    from .graph import opaque_call

    calls = Counter(n.target.__name__ for n in gm.graph.nodes if opaque_call(n))
    if not calls:
        return None
    names = ", ".join(f"{k} x{v}" for k, v in calls.most_common(3)) + (" ..." if len(calls) > 3 else "")
    return (f"{sum(calls.values())} call(s) of functions torch.fx keeps whole ({names}: torch.fx.wrap) count one op "
            "each in nodes and depth, with their MACs measured on example_inputs; activations inside them are not "
            "seen (torch.export.export the model and collapse the ExportedProgram to look inside)")


def graph_stats(gm: fx.GraphModule) -> dict:
    """The ONNX report's model stats for a GraphModule: ops, params, MACs, critical-path depths. Depth
    counts ops as onnx/analysis.model_stats does: an activation site is one op (its anchor; a composite's
    other nodes 0), export_free_nodes none."""
    from ..algebra.cost import conv_macs, linear_macs

    macs = 0
    acts = find_activations(gm)
    sites = {s.node for s in acts}
    inside = {n for s in acts for n in s.nodes if n is not s.node}
    free, folded_params = export_free_nodes(gm)
    free |= layout_free_nodes(gm)   # copies and views to the own shape: no ONNX node either
    depth, depth_nl = {}, {}
    groups, groups_nl = DecompositionGroups(), DecompositionGroups()   # a decomposed op is one op on the path
    for node in gm.graph.nodes:
        op = linear_op(gm, node)
        out = shape_of(node)
        if op is not None and out is not None:
            if op.kind == "conv":
                macs += out[0] * conv_macs(op.params, out[2:])
            else:
                macs += linear_macs(op.params, int(np.prod(out[:-1])) if len(out) > 1 else 1)
        elif op is None:
            macs += _dense_macs(gm, node)
        counted = node.op in ("call_module", "call_function", "call_method") and node.target != "_guards_fn" \
            and not free_call(node) and node not in free and node not in inside
        prev = [p for p in node.all_input_nodes]
        # a PaddedConv runs its parts in sequence (pad, conv, + bias map): count_ops' op_count, on the path too
        w = module_op_count(submodule(gm, node)) if counted and node.op == "call_module" else int(counted)
        depth[node] = w * groups.weight(node, w) + max((depth[p] for p in prev), default=0)
        nl = node in sites or (node.op == "call_module" and not isinstance(gm.get_submodule(node.target), _LINEAR_MODS)
                               and node.target != "_guards_fn" and op is None and node not in free
                               and node not in inside) or _nonlinear_call(node) and node not in inside
        depth_nl[node] = groups_nl.weight(node, nl) + max((depth_nl[p] for p in prev), default=0)
    outs = [n for n in gm.graph.nodes if n.op == "output"]
    return {"nodes": count_ops(gm) - sum(module_op_count(submodule(gm, n)) if n.op == "call_module" else
                                         int(not free_call(n)) for n in free),
            "params": count_params(gm) + folded_params, "macs": int(macs),
            "depth_ops": max((depth[n] for n in outs), default=0),
            "depth_nonlinear": max((depth_nl[n] for n in outs), default=0), "activations": len(sites)}


# ----------------------------------------------------------------------------------- collapse


@shape_runs_scope   # a graph of ours that does not run where the input graph ran is a bug, not the user's inputs
def collapse_torch(model, cfg: CollapseConfig, example_inputs=None):
    """The torch half of collapse_passes.collapse (see api.collapse); returns a CollapseResult whose
    .model is of the input's kind (GraphModule for an nn.Module or GraphModule; ExportedProgram)."""
    from ..api import CollapseResult

    t0 = time.perf_counter()
    cfg = with_tolerances(cfg)   # float32 tolerances unless given
    model = unwrap_compiled(model)   # torch.compile(model): keys are the wrapped module's paths
    gm, kind = to_graph_module(model, example_inputs)
    example_inputs = _example_inputs(model, example_inputs, gm)
    _refuse_empty(example_inputs)
    # our own copies: shape propagation and pruning run the model, which may write into its input
    example_inputs = _cloned(example_inputs)
    if cfg.calib is not None and not cfg.method:
        raise CollapseError("calib= on a torch model feeds method= scores; torch models are verified on "
                            "example_inputs (check=N adds random inputs of the same shapes)")
    if cfg.check < 1:
        raise CollapseError("check must be at least 1: every result is verified")
    if cfg.prune_calib_dead:
        raise CollapseError("prune_calib_dead is for ONNX models with calib= data; on a torch model "
                            "collapse_passes.pruning.fx_adapter.prune_module(model, x, calib=batches) removes the "
                            "ReLU / ReLU6 / Hardswish channels 0 on every batch")
    notes, warnings = [], []
    batches = gm.meta.get(EXPORT_BATCHES) if kind == "nn.Module" else None
    if batches is not None and batches[1] is not None:   # its guards can be stricter than the range: say the sure one
        b = next((t.shape[0] for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim > 0), batches[0])
        notes.append(f"symbolic_trace could not trace the model and torch.export could not keep its batch dynamic "
                     f"(the model's code bounds it): the result is sure to run at the example batch ({b}) only; "
                     "collapse with example_inputs of the batch you deploy")
    example_inputs = _check_input_count(gm, example_inputs)
    # the runs below share the caller's tensors: a write the graph does not show (a leaf module's own
    # update, or one symbolic_trace dropped) is found after the trace check's run, undone and refused
    guard = StateGuard(model) if isinstance(model, torch.nn.Module) else None
    traced_out = propagate_shapes(gm, example_inputs)   # also the input graph's run on example_inputs
    computed = method_scores(model, cfg, notes, gm) if cfg.method else saved_block_scores(cfg)
    block_scores = dict(computed.scores) if computed is not None and computed.kind == "block" else {}
    blocks_removed = blocks_to_remove(block_scores, cfg.remove_blocks, warnings)
    sites, chosen, scores = select(gm, cfg, notes, warnings, computed)
    names = [s.keys[0] for s in chosen]   # the site's own key: an fx node name can equal a shared root module's path
    regimes, regime_rows = {}, None   # channel_regimes: per-channel maps by site key (core/channel_regimes)
    if cfg.channel_regimes:
        from ..core.channel_regimes import plan, regime_details

        regimes, regime_rows = plan([(s.keys[0], s.keys, s.kind, s.params) for s in chosen], regime_details(
            computed.as_dict() if computed is not None else None, cfg.scores), warnings)
    original = copy_sharing_weights(gm)
    feeds = _feeds(example_inputs, cfg.check, cfg.seed)
    outputs = CheckOutputs(feeds)   # every model runs at most once per check input (see docs/torch.md)
    outputs.keep(original, 0, traced_out)
    if kind == "nn.Module":
        try:
            _check_trace(model, outputs(original, upto=1), example_inputs, cfg)
        except CollapseError:   # a state written by the run explains a mismatch better than a missed branch
            if not guard.written():
                raise
    writes = guard.written() if guard is not None else []
    if writes:
        guard.restore()
        raise CollapseError(state_error(writes))
    before = graph_stats(original)
    kept_whole = _opaque_note(original)
    if kept_whole:
        notes.append(kept_whole)
    record = FxRecord()
    # prune after linearize: the constants are those of the requested semantics (a collapsed ReLU passes
    # a negative constant channel on). Exact removal keeps the semantics (the gate checks it against the
    # unpruned reference); a ratio prune is an approximation: the collapse is verified against the pruned
    # model and the prune's own error is reported
    shared = SharedWeightWrites.of(gm)   # the user's tensors: no pass may write one in place (the gate reads them too)
    RemoveResidualBlocks(blocks_removed, record)(gm)
    LinearizeActivations(names, record, regimes)(gm)
    # the requested semantics (the gate's reference) are the input with these two passes alone: gm now. The
    # pruning and the passes below work on copies of it (prune_module copies; else copy_sharing_weights)
    requested = reference = gm
    if not names and not blocks_removed:
        outputs.same(requested, original)   # nothing changed: the input's runs are the reference's
    gm, prune_report = prune(gm, example_inputs, cfg)
    if cfg.prune_ratio is not None:
        requested = gm
    if names or blocks_removed:   # the request (and the unpruned one) runs only from the first op it changed
        for m in {id(m): m for m in (requested, reference)}.values():
            outputs.shares_prefix(m, original)
    dyn_shapes = _program_dynamic_shapes(model) if kind == "ExportedProgram" else None
    # a program exported with a dynamic height/width runs at other sizes: only merges exact at every size
    any_size = dyn_shapes is not None and any(i > 0 for d in dyn_shapes for i in d)
    before_passes = copy.deepcopy(record)   # a fallback without merging starts from here
    result = run_passes(copy_sharing_weights(gm), [], cfg, record, any_size=any_size)
    _refuse_shared_writes(shared, reference, "collapse")
    outputs.keep(result, 0, propagate_shapes(result, example_inputs))   # shapes for the report, and a check run
    after = graph_stats(result)

    desc = f"example_inputs + {len(feeds) - 1} random input(s) of their shapes, seed {cfg.seed}"
    ver = verify_torch(original, requested, result, feeds, cfg.rtol, cfg.atol, desc, outputs)
    fallback = None
    if not ver.against_requested.passed and record.merges and not record.approximations:
        # as the ONNX front end (api.collapse): the merges that break it are refused, the rest kept
        # (core/merge_fallback), the result written when it verifies
        def trial(allowed):
            rec = copy.deepcopy(before_passes)
            alt = run_passes(copy_sharing_weights(gm), [], cfg, rec, any_size=any_size, merge_allowed=allowed)
            outputs.keep(alt, 0, propagate_shapes(alt, example_inputs))
            v = verify_torch(original, requested, alt, feeds, cfg.rtol, cfg.atol, desc, outputs)
            return (alt, rec, v), v.against_requested, rec.merges

        fb = merge_search(record.merges, trial, failed=ver.against_requested)
        if fb is not None:
            warnings.append(fb.warning(ver.against_requested, len(record.merges)))
            fallback = fb.as_dict()
            result, record, ver = fb.payload
            after = graph_stats(result)
    from ..verify import accept_conditioned

    fold_fallback = None
    if not ver.against_requested.passed and not ver.against_requested.conditioned and record.folds \
            and not record.approximations:
        # as the ONNX front end (api.collapse): the activations linearized and nothing folded is the request's
        # own ops, written when the folded result is off (float32 BatchNorm folds in an ill-conditioned stack)
        from ..core.merge_fallback import unfolded

        rec = copy.deepcopy(before_passes)
        alt = run_passes(copy_sharing_weights(gm), [], cfg, rec, any_size=any_size, merge_allowed=frozenset(),
                         fold=False)
        outputs.keep(alt, 0, propagate_shapes(alt, example_inputs))
        v = verify_torch(original, requested, alt, feeds, cfg.rtol, cfg.atol, desc, outputs)
        if v.against_requested.passed:
            line, fold_fallback = unfolded(ver.against_requested, len(record.folds), len(record.merges))
            warnings.append(line)
            result, record, ver = alt, rec, v
            after = graph_stats(result)
    ver = accept_conditioned(ver, approximate=bool(record.approximations))
    passed = ver.against_requested.passed
    if passed and ver.against_requested.why:   # passed on the float64 second look
        warnings.append(f"verification: {ver.against_requested.why}")
    from ..verify import nonfinite_output_warnings

    orig_out = outputs(original)   # the gate's runs, no new one
    warnings.extend(nonfinite_output_warnings(orig_out, [f"output{i}" for i in range(len(orig_out[0]))]))
    approx = bool(record.approximations)
    if approx and not passed:
        from ..verify import border_approximation_gate

        ver, passed, line = border_approximation_gate(ver, cfg.approx_max_error, "allow_border_approx")
        warnings.append(line)

    out_model = result
    keep_module_state(result, model)   # non-persistent buffers and training flags, which fx's copies drop
    own_weights(result, model)   # the unmerged layers still hold the caller's tensors (torch.export does not copy)
    if kind == "ExportedProgram":
        own = getattr(model, "example_inputs", None)   # the program's own: they kept its dims dynamic once
        out_model = _reexport(result, example_inputs, dyn_shapes, own[0] if own is not None and not own[1] else None)
    chosen_ids = {id(s) for s in chosen}
    kept = [s for s in find_activations(original, collapsible_only=False) if not is_collapsible(s)]
    report = build_report(
        input=kind,
        activations=[activation_row(s.keys[0], s.keys, s.kind, s.node_names, scores.get(id(s)), id(s) in chosen_ids,
                                    module=s.path) for s in sites],
        blocks=[{"key": k, "score": v, "removed": k in blocks_removed} for k, v in block_scores.items()],
        before=before, after=after, verification={**ver.as_dict(), "runtime": "torch, eager"}, passed=passed,
        approximations=record.approximations, folds=record.folds, merges=record.merges,
        passes=list(record.passes.values()), left_alone=[s.kind for s in kept],
        left_alone_nodes=[s.name for s in kept], notes=notes + record.notes, warnings=warnings,
        pruning=prune_report, started=t0,
        score_details=computed.as_dict() if computed is not None else None)
    if fallback is not None:
        report["merge_fallback"] = fallback
    if fold_fallback is not None:
        report["fold_fallback"] = fold_fallback
    if regime_rows is not None:   # as the ONNX path: per site what went to the off regime; the price vs the input
        report["channel_regimes"] = {"sites": regime_rows, "against_original": ver.against_original.as_dict()}
    if prune_report is not None and cfg.prune_ratio is not None:
        # the prune's own error, as the ONNX path measures it (pruning/api_hook): a comparison of the gate's runs.
        # verify_torch here ran its float64 second look on every ratio prune (the error is never within rtol):
        # float64 copies of both models on every check input (MobileNetV3-large 224, one thread: 1.47 -> 1.09 s)
        from ..core.runtime import compare

        unpruned_out = outputs(reference)
        err = compare(unpruned_out, outputs(requested), [f"output{i}" for i in range(len(unpruned_out[0]))],
                      cfg.rtol, cfg.atol)
        prune_report["ratio"]["error_vs_unpruned"] = {"max_abs": err.max_abs, "max_rel": err.max_rel}
        # said as the ONNX path says it (pruning/api_hook.finish_pruning); the report's list, which
        # build_report may have copied
        ratio = prune_report["ratio"]
        report["warnings"].append(f"prune ratio {cfg.prune_ratio}: approximate, max abs error {err.max_abs:.3g} "
                                  "against the unpruned model")
        from ..pruning.select import misaligned_note

        note = misaligned_note(ratio.get("groups", []), cfg.prune_ratio)
        if note:
            report["warnings"].append(note)
        if not ratio.get("removed_channels"):
            # the ONNX path's words (pruning/api_hook.finish_pruning): "0 op(s) froze channel groups ... round_to keeps
            # multiples of it" was said of a 0.05 prune of 16 ranked channels at round_to 1
            report["warnings"].append(f"prune ratio {cfg.prune_ratio} removed no channel: "
                                      f"{ratio.get('prunable_groups', 0)} prunable group(s), "
                                      f"{ratio.get('frozen_groups', 0)} frozen (report: pruning.ratio.frozen_ops); "
                                      f"round_to {ratio.get('round_to', 1)} keeps multiples of it, a lower value or a "
                                      "higher ratio removes more")
        if cfg.prune_max_error is not None and err.max_abs > cfg.prune_max_error:
            # the refusal names its reason: the gate itself passed, and its numbers would say nothing
            prune_report["refused"] = (f"ratio pruning error {err.max_abs:.3g} (max abs, against the unpruned "
                                       f"model) exceeds prune_max_error {cfg.prune_max_error}; lower prune_ratio "
                                       "or raise the limit")
            report["warnings"].append(prune_report["refused"])
            report["passed"] = passed = False   # as the ONNX path: the result is written only with force
    res = CollapseResult(out_model, report, requested, passed, original)
    if prune_report is not None and prune_report.get("refused") and not cfg.force:
        raise VerificationError(f"{prune_report['refused']}; use force=True to get the result anyway", res)
    if not passed and not cfg.force:
        raise VerificationError.mismatch(ver.against_requested, cfg.rtol, cfg.atol,
                                         "use force=True to get the result anyway", res)
    return res


# ----------------------------------------------------------------------------------- torch.compile


def _module_attribute(n: fx.Node) -> bool:
    """A dynamo placeholder for a plain attribute of the model (BatchNorm's eps and momentum, which dynamic
    shapes turn into 0-d tensor inputs read with .item()), not for a user input."""
    ga = n.meta.get("grapharg")
    return ga is not None and type(getattr(ga, "source", None)).__name__ == "AttrSource"


def _node_where(gm: fx.GraphModule, name: str) -> str:
    """'a.1' (the module path the user knows) for a dynamo node, else the node's name."""
    from .graph import module_path

    node = next((n for n in gm.graph.nodes if n.name == name), None)
    path = module_path(node) if node is not None else None
    return repr(path) if path else name


def _source_path(n: fx.Node) -> str:
    """The model attribute a dynamo input reads: L['self']._modules['block']._buffers['ema'] -> block.ema."""
    import re

    ga = n.meta.get("grapharg")
    name = getattr(getattr(ga, "source", None), "name", None)
    name = name() if callable(name) else name
    parts = re.findall(r"\['([^']+)'\]|\.([A-Za-z_]\w*)", name or "")
    path = [a or b for a, b in parts if (a or b) not in ("self", "_modules", "_parameters", "_buffers")]
    return ".".join(path) if path else n.name


def freeze_parameters(gm: fx.GraphModule, example_inputs) -> int:
    """Turn the parameter/buffer inputs of a dynamo graph into get_attr constants (as inductor's
    freezing does) so the passes can fold them; the placeholders stay, unused. A float attribute of the
    model that dynamo made a 0-d tensor input (BatchNorm eps under dynamic shapes: FoldBatchNorm needs it as
    a number) becomes that number where it is read with .item(). Returns how many."""
    frozen = 0
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first_real = next((n for n in gm.graph.nodes if n.op != "placeholder"), None)
    for n, t in zip(placeholders, example_inputs):
        name = str(n.target)
        if (isinstance(t, torch.Tensor) and t.ndim == 0 and t.is_floating_point() and _module_attribute(n)
                and all(u.op == "call_method" and u.target == "item" for u in n.users)):
            value = float(t)
            for item in list(n.users):
                for u in list(item.users):
                    u.args = fx.node.map_arg(u.args, lambda a, item=item: value if a is item else a)
                    u.kwargs = fx.node.map_arg(u.kwargs, lambda a, item=item: value if a is item else a)
                gm.graph.erase_node(item)
            frozen += 1
            continue
        is_param = isinstance(t, torch.nn.Parameter) or "_parameters_" in name or "_buffers_" in name
        if not is_param or not isinstance(t, torch.Tensor) or not n.users:
            continue
        attr = f"_frozen_{n.name}"
        gm.register_buffer(attr, t.detach())
        with gm.graph.inserting_before(first_real):
            c = gm.graph.get_attr(attr)
        c.meta.update({k: v for k, v in n.meta.items() if k in ("val", "example_value", "tensor_meta")})
        c.meta[STATE_NAME] = _source_path(n)
        n.replace_all_uses_with(c)
        guard_identity(n)   # frozen: another module object's tensors must recompile, not reuse this graph
        frozen += 1
    gm.recompile()
    return frozen


def torch_backend(scores=None, threshold: float | None = None, remove: int | None = None, collapse=(),
                  inductor: bool = True, verify: bool = True, config: CollapseConfig | None = None, **kwargs):
    """A torch.compile backend: collapse + fold + merge on the dynamo graph, then inductor.

        torch.compile(model.eval(), backend=collapse_passes.torch_backend(scores=s, threshold=0.1))

    Parameters are frozen into the compiled graph (inference: later weight updates are not seen).
    inductor=False runs the transformed graph eagerly (fast to build; for tests and debugging).
    The backend's .reports lists, per compiled graph, the keys it collapsed, the pass records and the
    check: with verify=True (default) each graph is run once on dynamo's example inputs against the same
    graph with only the chosen activations linearized (rtol/atol of the config); a mismatch goes through
    the gate's fallbacks (merges refused, the float64 second look, nothing folded) as in collapse(), and
    one that remains raises VerificationError (torch.compile reports it as a backend failure), or with
    force=True compiles the graph anyway with the failed check in .reports and a warning.
    """
    from ..api import make_config

    cfg = with_tolerances(make_config(copy.deepcopy(config), scores, threshold, remove, "torch_backend", **kwargs))
    if collapse:
        cfg.collapse = [k.strip() for k in collapse.split(",") if k.strip()] if isinstance(collapse, str) \
            else list(collapse)
    if cfg.threshold is not None and not math.isfinite(cfg.threshold):
        raise CollapseError(f"threshold must be a finite number, got {cfg.threshold}")
    if cfg.channel_regimes:
        raise CollapseError("torch_backend: channel_regimes is implemented for ONNX models only; drop it")

    @shape_runs_scope
    def backend(gm: fx.GraphModule, example_inputs):
        low = _low_precision(list(example_inputs) + list(gm.parameters()) + list(gm.buffers()))
        if low:   # numpy has no bfloat16 (FoldBatchNorm crashed) and float16 fails the float32 gate on rounding
            raise CollapseError(f"torch_backend: the graph computes in {', '.join(low)}: the merges are computed "
                                "and verified in float32/float64; compile model.float() (or use another backend "
                                "for a low-precision model)")
        _refuse_random(gm, None)   # a model compiled in training mode: its dropouts would fail the check by chance
        train_bn = [_node_where(gm, n) for n in training_batchnorm_nodes(gm.graph)] or _frame_training_batchnorms()
        if train_bn:   # batch statistics: nothing folds, and the frozen graph's running-stat updates differ from eager
            raise CollapseError(f"torch_backend: BatchNorm {train_bn[0]} runs in training mode (batch statistics); the "
                                "backend is for inference (parameters are frozen into the graph): compile "
                                "model.eval()")
        gm.meta[PARTIAL_GRAPH] = True   # a graph break may split the forward: no "relu():i" root keys
        scope_dynamo_graph(gm)   # a graph break inside a module: its frame's names made the model's paths
        freeze_parameters(gm, example_inputs)
        writes = state_writes(gm)
        if writes:   # frozen into constants, a running statistic would stop updating (and the check runs it twice)
            raise CollapseError(state_error(writes, "torch_backend: "))
        # dynamic shapes: sizes come as SymInts; running the graph on them would guard every size to its
        # example value (a recompile per input shape, and after torch's recompile limit the model runs eagerly,
        # uncollapsed). Their example values run it here; the compiler still gets the symbols.
        concrete = [_size_hint(t) for t in example_inputs]
        if verify:
            _refuse_empty_call(gm, concrete)
        any_size = _dynamic_spatial(gm)
        from torch._subclasses.fake_tensor import FakeTensor

        real = not any(isinstance(t, FakeTensor) for t in example_inputs)
        # real inputs: one real run gives the shapes and the input graph's outputs (the check's base: NaN/Inf,
        # and the reference when nothing is linearized), where ShapeProp ran a fake copy in dynamo's fake mode
        traced_out = propagate_shapes(gm, concrete, clone=real, real=real)
        notes, warnings = [], []
        # a key that names no activation of *this* graph may live in another graph dynamo split off
        sites = find_activations(gm)
        index = key_index(sites, node_names=False)   # node names repeat across dynamo's graphs: root sites' only
        keys.note_graph(index, [s.keys[0] for s in sites])
        sub = copy.copy(cfg)
        if cfg.collapse:
            sub.collapse = [k for k in cfg.collapse if k in index]
        if cfg.scores is not None:

            sub.scores = {k: v for k, v in read_scores(cfg.scores).items() if k in index}
        _, chosen, _ = select(gm, sub, notes, warnings)
        names = [s.keys[0] for s in chosen]   # each site's own key (see collapse_torch)
        requested = requested_semantics(gm, names) if verify and real else None
        shared = SharedWeightWrites.of(requested) if requested is not None else None   # the model's own tensors
        record = FxRecord()
        out = run_passes(gm, names, cfg, record, any_size=any_size)
        if shared is not None:
            _refuse_shared_writes(shared, requested, "torch_backend")
        if any_size:
            notes.append("dynamic spatial size: only merges exact at every input size were planned")
        check = fallback = fold_fallback = None
        if requested is not None:
            from ..core.runtime import compare, nonfinite_request, nothing_compared
            from ..verify import nonfinite_output_warnings

            feeds = [tuple(concrete)]
            orig = [output_arrays(traced_out)]   # the input graph's run: the shape propagation above
            want = run_outputs(requested, feeds) if names else orig   # nothing linearized: the input graph's
            outs = [f"output{i}" for i in range(len(orig[0]))]
            warnings.extend(nonfinite_output_warnings(orig, outs))
            # as collapse(): a request that overflows to NaN/Inf where the input graph is finite verifies nothing
            # (matching NaNs compare equal): it fails, where the backend compiled it as verified (max abs 0)
            # and one whose outputs hold no element (or only NaN/Inf) compares nothing either (as collapse())
            overflow = nonfinite_request(orig, want, outs, 1) or nothing_compared(want, 1, "the call's inputs")

            ran = {}   # id(graph) -> its outputs on feeds: the float64 second look reuses them

            def checked(g):
                got = ran[id(g)] = run_outputs(g, feeds)
                return overflow or compare(want, got, outs, cfg.rtol, cfg.atol)

            check = checked(out)
            if not check.passed and overflow is None and record.merges and not record.approximations:
                # as collapse(): the merges that break the check are refused, the rest kept (core/merge_fallback)
                def trial(allowed):   # from the requested semantics: the chosen sites are linearized there
                    rec = FxRecord()
                    g = run_passes(copy_sharing_weights(requested), [], cfg, rec, any_size=any_size,
                                   merge_allowed=allowed)
                    c = checked(g)
                    return (g, rec, c), c, rec.merges

                fb = merge_search(record.merges, trial, failed=check)
                if fb is not None:
                    warnings.append(fb.warning(check, len(record.merges)))
                    fallback = fb.as_dict()
                    out, record, check = fb.payload
            if not check.passed and overflow is None and not record.approximations:   # the gate's later steps
                out, record, check, fold_fallback = _last_resorts(check, requested, out, record, feeds, want,
                                                                  ran[id(out)], cfg, any_size, warnings)
        elif verify:
            notes.append("not verified: dynamo gave fake example inputs")
        backend.reports.append({"collapsed": [s.keys[0] for s in chosen], "merges": record.merges,
                                "folds": record.folds, "notes": notes + record.notes, "warnings": warnings,
                                "verification": None if check is None else check.as_dict()})
        if fallback is not None:
            backend.reports[-1]["merge_fallback"] = fallback
        if fold_fallback is not None:
            backend.reports[-1]["fold_fallback"] = fold_fallback
        approx_ok = check is not None and bool(record.approximations) and (
            cfg.approx_max_error is None or check.max_abs <= cfg.approx_max_error)   # opted in, as collapse()
        if check is not None and not check.passed and not approx_ok:
            why = (f"torch_backend: the collapsed graph differs from the requested semantics (max abs "
                   f"{check.max_abs:.3g}, max rel {check.max_rel:.3g}, rtol {cfg.rtol}, atol {cfg.atol})"
                   + (f": {check.why}" if check.why else ""))
            if check is overflow:   # nothing compared (NaN/Inf, no elements): no difference to speak of
                why = f"torch_backend: verification failed: {check.why}"
            if not cfg.force:
                raise VerificationError(why)
            # force=True, as collapse(force=True): the result anyway, its failed check in the report and a warning
            warnings.append(why + "; compiled anyway (force=True)")
            import warnings as _warnings

            _warnings.warn(warnings[-1], stacklevel=2)
        for prm in out.parameters():   # frozen: the new ops' weights are constants of this graph
            prm.requires_grad_(False)
        if not inductor:
            return keys.watch(out.forward)
        from torch._inductor.compile_fx import compile_fx

        # a fresh GraphModule without dynamo's metadata: the new modules' weights have no dynamo source
        return keys.watch(compile_fx(fx.GraphModule(out, out.graph), example_inputs))

    wanted = list(cfg.collapse or []) + (list(read_scores(cfg.scores)) if cfg.scores is not None else [])
    keys = _BackendKeys(wanted)
    backend.reports = []
    backend.unmatched_keys = keys.unmatched
    return backend


def _last_resorts(check, requested, out, record, feeds, want, got, cfg, any_size, warnings):
    """torch_backend's gate after its merge search, as collapse_torch's: the float64 second look (float32
    rounding, or a request ill-conditioned in float32), then the graph with nothing folded. want / got: the
    request's and `out`'s outputs on feeds. Returns (graph, record, comparison, fold_fallback report or None)."""
    from ..core.merge_fallback import unfolded
    from ..core.runtime import compare
    from ..verify import accepted, float64_second_look

    names = [f"output{i}" for i in range(len(want[0]))]
    check = float64_second_look(check, _run64, requested, out, feeds, names, cfg.rtol, cfg.atol, req32=want,
                                res32=got)
    fold_fallback = None
    if not check.passed and not check.conditioned and record.folds:
        rec = FxRecord()
        g = run_passes(copy_sharing_weights(requested), [], cfg, rec, any_size=any_size, merge_allowed=frozenset(),
                       fold=False)
        c = compare(want, run_outputs(g, feeds), names, cfg.rtol, cfg.atol)
        if c.passed:
            line, fold_fallback = unfolded(check, len(record.folds), len(record.merges))
            warnings.append(line)
            return g, rec, c, fold_fallback
    check = accepted(check)
    if check.passed and check.why:
        warnings.append(f"verification: {check.why}")
    return out, record, check, fold_fallback


def _frame_training_batchnorms() -> list[str]:
    """BatchNorms in training mode (running statistics tracked) among the modules of the frame dynamo compiles. A
    BatchNorm with momentum=None (a cumulative average, as models/tv_init.calibrate_bn leaves it) graph-breaks on
    `float(num_batches_tracked)` in training mode and runs eagerly between two graphs, so no graph shows it: a model
    compiled before .eval() was collapsed around batch statistics, silently, where momentum 0.1 was refused."""
    frame = _compiled_frame()
    me = frame[1] if frame is not None else None
    if not isinstance(me, torch.nn.Module):
        return []
    return [repr(n) if n else type(m).__name__ for n, m in me.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and m.training and m.track_running_stats and m.running_mean is not None]


def _size_hint(t):
    """A SymInt's example value (without a guard), anything else as it is."""
    if isinstance(t, torch.SymInt):
        hint = t.node.hint
        return int(hint) if hint is not None else t
    return t


def _dynamic_spatial(gm: fx.GraphModule) -> bool:
    """Does a tensor input of the dynamo graph have a symbolic size past its first (batch) dim?"""
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        v = n.meta.get("example_value", n.meta.get("val"))
        if isinstance(v, torch.Tensor) and any(not isinstance(d, int) for d in tuple(v.shape)[1:]):
            return True
    return False


class _BackendKeys:
    """The backend's keys across all the graphs dynamo hands it: a graph break may put a key in any of
    them, so a key is reported unknown only once every graph of a whole forward has been compiled. That is
    known when a compiled graph runs a second time (the next call of the model): then one warning names the
    keys that matched no graph, with the valid keys closest to them."""

    def __init__(self, wanted):
        self.wanted = list(dict.fromkeys(wanted))
        self.matched: set = set()
        self.valid: dict = {}          # site keys of every graph, in order
        self.ran: set = set()
        self.checked = not self.wanted
        self.graphs = 0

    def note_graph(self, index: dict, site_keys: list) -> None:
        self.graphs += 1
        self.matched.update(k for k in self.wanted if k in index)
        self.valid.update(dict.fromkeys(site_keys))

    def unmatched(self) -> list:
        """The collapse/score keys that named no activation in any graph compiled so far."""
        return [k for k in self.wanted if k not in self.matched]

    def check(self) -> None:
        import difflib
        import warnings

        self.checked = True
        missing = self.unmatched()
        if not missing:
            return
        valid = list(self.valid)
        near = list(dict.fromkeys(n for k in missing for n in difflib.get_close_matches(k, valid, n=3, cutoff=0.5)))
        shown = (near or valid)[:5]
        hint = (f"did you mean {', '.join(shown)}?" if near else
                f"valid keys: {', '.join(shown)}{', ...' if len(valid) > len(shown) else ''}" if valid else
                "the compiled graphs have no collapsible activation")
        warnings.warn(f"torch_backend: key(s) {', '.join(repr(k) for k in missing)} named no activation in any of "
                      f"the {self.graphs} compiled graph(s) and were ignored; {hint} "
                      "(collapse_passes.list_keys(model, inputs) lists them)", UserWarning, stacklevel=2)

    def watch(self, fn):
        """fn, checking the keys when any compiled graph runs for the second time (the next forward)."""
        gid = self.graphs

        def run(*args):
            if not self.checked:
                if gid in self.ran:
                    self.check()
                else:
                    self.ran.add(gid)
            return fn(*args)

        if getattr(fn, "_boxed_call", False):   # inductor's output takes its inputs as one list: so does run
            run._boxed_call = True
        return run
