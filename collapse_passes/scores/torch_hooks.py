"""The score methods on a torch.nn.Module, through forward hooks (keys = module paths) and the traced graph.

    module_scores(model, method, calib_batches=None) -> ScoreResult

calib_batches: an iterable of input batches (a tensor or numpy array, a tuple/list of positional
inputs, or a dict of keyword inputs), first axis = samples. The model is run in eval mode under
torch.no_grad() (its training flag is restored afterwards); it is not modified.

- "easier": hooks on the collapsible activation modules (nn.ReLU, ReLU6, Hardtanh, LeakyReLU, PReLU,
  GELU, SiLU, Hardswish, Hardsigmoid, ELU, SELU, CELU, Mish: core/torch_kinds.py) count, per channel, how often their
  input is >= the kink (0; HardSwish: off <= -3 <band< 3 <= on; see _common.layer_summary).
- "tlc": an nn.BatchNorm1d/2d/3d feeding an activation module directly (found data-free with
  torch.fx.symbolic_trace; if the model cannot be traced, from the calibration run's hooks) gives
  p_off = Phi(-beta/|gamma|); other activations use the empirical per-channel mean/std of their input.
- "prelu": nn.PReLU weights and nn.LeakyReLU negative_slope, score mean |1 - alpha|.
Keys are call sites, as in the ONNX front end (onnx.keys): the module path for a module called once,
`path:i` for the i-th call (execution order) of a module called at several places. "prelu" scores a
module's slopes, shared by all its calls, so it keys by module path (which names all the sites).
Activations called as functions (F.relu, x.relu(), x * torch.sigmoid(x)) have no module to hook: easier / tlc
score them on the traced graph (_GraphSites: the torch front end's own sites and keys, relu():0 or the enclosing
module's path), with the same ChannelStats; a model that cannot be traced gets module scores only, with a note.

torch is imported here only: the ONNX core never needs it.
"""
from __future__ import annotations

import itertools
import weakref
from collections import defaultdict

import numpy as np

from ..core.activations import is_collapsible
from ..core.torch_kinds import module_kind
from ..errors import CollapseError
from ..core.selection import site_key
from ._common import ChannelStats, ScoreResult, activation_gaussian_regimes, layer_summary

_BN = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
_CONV_LIKE = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
              "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "GroupNorm")
METHODS = ("tlc", "easier", "prelu")


def _passes_through(mod) -> bool:
    """A module that returns its input unchanged in eval (Dropout, Identity): the exporters drop it, so the ONNX
    scores see the tensor's real producer (a Conv1d: channel axis 1); here it hid that producer (a Conv1d ->
    Dropout -> ReLU was scored on axis 2, its length, and --channel-regimes chose differently from ONNX)."""
    import torch

    return isinstance(mod, (torch.nn.Identity, torch.nn.modules.dropout._DropoutNd))


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an extra
        raise CollapseError("module_scores needs torch: pip install '.[torch]'") from None
    return torch


def _kind(mod) -> str | None:
    """The catalogue kind of a collapsible activation module (core/torch_kinds.py), else None."""
    found = module_kind(mod)
    return found[0] if found is not None and is_collapsible(found[0]) else None


def _is(mod, names) -> bool:
    return any(cls.__module__.startswith("torch.nn") and cls.__name__ in names for cls in type(mod).__mro__)


def activation_modules(model) -> dict:
    """module path -> (module, kind) for every activation module, in registration order; a module registered
    at several paths is listed at each (its calls are keyed by call path: fx/call_path.py)."""
    return {name: (m, _kind(m)) for name, m in model.named_modules(remove_duplicate=False)
            if name and _kind(m) is not None}


def _called_only(acts: dict, called) -> dict:
    """acts less the aliases no call was keyed by (a second attribute name of the same parent: its calls are
    keyed by the first); a module never called keeps its first path (reported as never run)."""
    called = set(called)
    hit = {id(m) for p, (m, _) in acts.items() if p in called}
    first: dict[int, str] = {}
    for p, (m, _) in acts.items():
        first.setdefault(id(m), p)
    return {p: v for p, v in acts.items() if p in called or (id(v[0]) not in hit and first[id(v[0])] == p)}


def _traced_calls(model) -> dict | None:
    """module path -> calls per forward of each call_module node of the call-path trace (None: untraceable)."""
    from ..fx.call_path import CallPathTracer

    try:
        graph = CallPathTracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means "not traceable"
        return None
    calls: dict[str, int] = defaultdict(int)
    for n in graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] += 1
    return dict(calls)


def _params(mod, kind: str) -> dict:
    found = module_kind(mod)
    return found[1] if found is not None else {}


def module_scores(model, method: str, calib_batches=None, calib_arg: str = "calib_batches",
                  gm=None, functional: bool = True) -> ScoreResult:
    """`calib_arg` is how the caller's user passes the batches, named in the way-outs of the errors (collapse()
    takes them as calib=[...], where calib_batches is a count: naming it there sent users to the wrong argument).
    gm: the model traced by the torch front end (fx/api.to_graph_module), whose activations called as functions
    are scored on its values (_GraphSites); None: traced here the same way (none when it cannot be traced).
    functional=False: activation modules only, nothing traced (the training loop swaps modules and scores every
    round: a trace and a second pass over its batches each round, for scores it never read)."""
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        raise CollapseError(f"module_scores expects a torch.nn.Module, got {type(model).__name__}")
    from ..fx.api import unwrap_compiled

    # torch.compile(model): hooks on the wrapped modules break dynamo's tracing ("already tracked for
    # mutation"), and its keys would start with `_orig_mod.`; score the module it wraps, as collapse() does
    model = unwrap_compiled(model)
    name = str(method).strip().lower() if method is not None else ""
    if name == "lacoot":
        raise CollapseError("module_scores: lacoot scores residual blocks, not activation modules; use "
                            "collapse(model, method='lacoot', calib=[batches], example_inputs=(x,)) (the traced "
                            "graph's blocks) or compute_scores('lacoot', onnx_model, calib)")
    if name not in METHODS:
        raise CollapseError(f"unknown score method {method!r} for a torch module; valid methods: {', '.join(METHODS)}")
    acts = activation_modules(model)
    if name == "prelu":
        # data-free: the slopes of the PReLU / LeakyReLU modules, and of those the traced graph holds as functions
        # (F.prelu, an ExportedProgram's aten.prelu or its decomposed where(x > 0, x, w * x))
        graph = _GraphSites.of(model, gm, acts, lambda: None) if functional else _GraphSites([], None, "")
        sloped = [site for site in graph.sites if site.kind in ("prelu", "leaky_relu")]
        if not acts and not sloped:
            raise CollapseError("module_scores: --method prelu scores nn.PReLU / nn.LeakyReLU modules, and this "
                                "model has none; use easier or tlc")
        return graph.in_model_order(_prelu(_called_only(acts, _traced_calls(model) or ()), calib_batches,
                                           graph.sites))
    # a one-shot iterator (a generator): its first batch may be read to trace with (torch.export) and put back;
    # it is held in a list only when it is read twice (the module hooks, then the graph's functional sites)
    try:
        one_shot = calib_batches is not None and iter(calib_batches) is calib_batches
    except TypeError:
        raise CollapseError(f"module_scores: {calib_arg} must be an iterable of input batches, got a "
                            f"{type(calib_batches).__name__}") from None
    held: list = []

    def first_batch():
        if not one_shot:
            return next(iter(calib_batches), None) if calib_batches is not None else None
        if not held:
            held.append(next(calib_batches, None))
        return held[0]

    graph = _GraphSites.of(model, gm, acts, first_batch) if functional else _GraphSites([], None, "")
    if one_shot:
        rest = itertools.chain([b for b in held if b is not None], calib_batches)
        calib_batches = list(rest) if acts and graph.sites else rest
    if not acts and not graph.sites:
        raise CollapseError("module_scores: the model has no activation modules (nn.ReLU, nn.GELU, ...)" +
                            (f"; activations called as functions (F.relu) are scored on the traced graph, and "
                             f"{graph.why}" if graph.why else " and no activation called as a function"))
    if name == "easier":
        if calib_batches is None:
            raise CollapseError(f"module_scores: easier needs {calib_arg} (an iterable of input batches)")
        stats, calls = {}, {}
        if acts:
            stats, _, calls = _run_hooks(model, acts, calib_batches, moments=False, min_samples=2,
                                         calib_arg=calib_arg, allow_none=bool(graph.sites))
        g_stats = graph.tapped(graph.sites, calib_batches, False, calib_arg, others=bool(stats))
        g_acts, g_calls = graph.entries()
        res = _from_stats("easier", "empirical", {**_called_only(acts, calls), **g_acts}, {**stats, **g_stats},
                          {**calls, **g_calls}, ChannelStats.regimes, {}, graph.notes(bool(acts)))
        return graph.in_model_order(res)
    return graph.in_model_order(_tlc(model, acts, calib_batches, calib_arg, graph))


# ------------------------------------------------------------------------------------ prelu

def _prelu(acts: dict, calib_batches, graph_sites=()) -> ScoreResult:
    """acts: activation modules (key -> (module, kind)); graph_sites: the traced graph's sites no module hook sees,
    whose slopes fx/graph.find_activations read (params slope / alpha)."""
    from .prelu import slope_details

    scores, details = {}, {}
    others = defaultdict(int)
    # one rule for both: the catalogue params module_kind / find_activations read (prelu slope, leaky_relu alpha)
    found = [(key, kind, _params(mod, kind)) for key, (mod, kind) in acts.items()]
    found += [(site.keys[0], site.kind, site.params) for site in graph_sites]
    for key, kind, params in found:
        if kind not in ("prelu", "leaky_relu"):
            others[kind] += 1
            continue
        d = slope_details(kind, params["slope"] if kind == "prelu" else [float(params["alpha"])])
        scores[key], details[key] = d["score"], d
    if not scores:
        raise CollapseError("module_scores: --method prelu scores nn.PReLU / nn.LeakyReLU slopes, and this model has "
                            f"none (activations: {', '.join(f'{k}: {n}' for k, n in others.items())}); use easier or tlc")
    notes = ["prelu: score = mean |1 - slope| per PReLU / LeakyReLU (0 = identity); data-free"]
    if others:
        notes.append("prelu: activations of other kinds get no score (" +
                     ", ".join(f"{k}: {n}" for k, n in sorted(others.items())) + ")")
    return ScoreResult("prelu", "slopes", "activation", scores, details, notes)


# ------------------------------------------------------------------------------------ hooks

def _first_tensor(obj, torch):
    """The first tensor in an argument, looking inside tuples / lists / dicts (a model taking one tuple of
    inputs): it gives the batch's sample count."""
    if isinstance(obj, torch.Tensor):
        return obj
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return next((t for t in (_first_tensor(o, torch) for o in items) if t is not None), None)


def _as_call(batch, torch):
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if isinstance(batch, torch.Tensor):
        return (batch,), {}, batch
    if isinstance(batch, (tuple, list)):
        args = tuple(torch.from_numpy(b) if isinstance(b, np.ndarray) else b for b in batch)
        return args, {}, _first_tensor(args, torch)
    if isinstance(batch, dict):
        kw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
        return (), kw, _first_tensor(kw, torch)
    raise CollapseError(f"module_scores: a calibration batch must be a tensor, array, tuple or dict, "
                        f"got {type(batch).__name__}")


def _run_hooks(model, acts: dict, calib_batches, moments: bool, min_samples: int, calib_arg: str = "calib_batches",
               allow_none: bool = False):
    """Run the batches with hooks; return ((key, call) -> ChannelStats, (key, call) -> module path of
    the leaf module that produced that call's input ("" if none), key -> calls per forward).

    Activation inputs are read in forward *pre*-hooks: an in-place activation overwrites them."""
    torch = _torch()
    from ..fx.call_path import CallPaths

    stats: dict[tuple, ChannelStats] = {}
    producer: dict[str, str] = {}
    calls: dict[str, int] = {}
    state = {"count": defaultdict(int), "made": {}}
    # keys are call paths, as the torch front end's sites (fx/call_path.py): every module's hooks track the call
    paths = CallPaths(model)
    first_path = {m: n for n, m in model.named_modules()}
    mods = {id(m): m for m in model.modules() if m is not model}
    types = {n: type(m).__name__ for n, m in model.named_modules(remove_duplicate=False) if not list(m.children())}

    def leaf_hook(mod, inputs, output):
        if isinstance(output, torch.Tensor) and _passes_through(mod) and any(output is i for i in inputs):
            return   # Dropout / Identity in eval return their input: it keeps its producer (a conv's (B, C, L))
        if isinstance(output, torch.Tensor):
            # a weak reference: holding every leaf's output kept the whole forward pass alive until the batch
            # ended (MobileNetV2 at 224 x 224, 64 images: 5.2 GB vs 1 GB for the forward alone); an
            # activation's input is alive while it is read, and a dead entry's reused id fails `is`
            state["made"][id(output)] = (weakref.ref(output), paths.current)

    def act_hook(mod, inputs):
        key = paths.current
        if key not in acts or not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        kind = acts[key][1]
        x = inputs[0]
        call = state["count"][key]
        state["count"][key] += 1
        made = state["made"].get(id(x))
        prod = made[1] if made is not None and made[0]() is x else ""
        if (key, call) not in stats:
            producer[(key, call)] = prod
            rank = x.dim()
            axis = None if rank <= 1 else (1 if rank != 3 else (1 if types.get(prod) in _CONV_LIKE else 2))
            p = _params(mod, kind)
            stats[(key, call)] = ChannelStats.for_activation(axis, kind, p, moments=moments)
        # float32 to numpy (ChannelStats counts in the input's precision and sums moments in float64 itself):
        # a float64 copy of every activation input doubled the transient memory
        x = x.detach()
        stats[(key, call)].update(x.to("cpu", torch.float32 if x.dtype != torch.float64 else x.dtype).numpy())

    def restart(mod, inputs):   # hooks return None: the inputs and outputs are kept
        paths.restart()

    def enter(mod, inputs):
        paths.enter(mod, first_path.__getitem__)

    def leave(mod, inputs, output):
        paths.exit()

    # order matters: a module's call path is entered before its activation hook reads it, and read by the
    # leaf hook before it is left
    handles = [model.register_forward_pre_hook(restart)]
    handles += [m.register_forward_pre_hook(enter) for m in mods.values()]
    handles += [m.register_forward_hook(leaf_hook) for m in mods.values() if not list(m.children())]
    handles += [m.register_forward_pre_hook(act_hook) for m in {id(v[0]): v[0] for v in acts.values()}.values()]
    handles += [m.register_forward_hook(leave) for m in mods.values()]
    was_training = model.training
    model.eval()
    samples = 0
    try:
        with torch.no_grad():
            for batch in calib_batches:
                args, kw, first = _as_call(batch, torch)
                state["count"] = defaultdict(int)
                state["made"] = {}
                try:
                    model(*args, **kw)
                except CollapseError:
                    raise
                except Exception as exc:
                    hint = ""
                    if isinstance(batch, (tuple, list)) and len(batch) > 1 and "positional argument" in str(exc):
                        hint = (f"; a batch is a tuple of {len(batch)} items, each given to forward as an input: "
                                "for a DataLoader of (inputs, labels) pass the inputs only, e.g. "
                                "calib=(x for x, _ in loader)")
                    raise CollapseError(f"module_scores: the model failed on a calibration batch "
                                        f"({' '.join(str(exc).split())[:160]}){hint}") from None
                for k, n in state["count"].items():
                    calls[k] = max(calls.get(k, 0), n)
                samples += int(first.shape[0]) if first is not None and first.dim() else 1
                state["made"] = {}
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if samples < min_samples:
        raise CollapseError(f"module_scores: the batches scored ({calib_arg}) hold {samples} sample(s), at least "
                            f"{min_samples} needed")
    if not stats and not allow_none:   # allow_none: the traced graph's functional sites are scored too
        raise CollapseError("module_scores: no activation module was called on the calibration batches")
    return stats, producer, calls


def _from_stats(method, variant, acts, stats, calls, p_fn, fixed: dict, notes=None) -> ScoreResult:
    """Scores per call site: `fixed` (site key -> details, e.g. from a BatchNorm) wins, else the hooked
    statistics of that call; calls: module path -> calls per forward; p_fn(stats) -> (p_off, p_above, p_band)."""
    scores, details = {}, {}
    notes = list(notes or [])
    unused = []
    for path, (mod, kind) in acts.items():
        n = calls.get(path, 0)
        if not n:
            unused.append(path)
        for call in range(n):
            key = site_key(path, call, n)
            d = fixed.get(key)
            if d is None:
                st = stats.get((path, call))
                if st is None:
                    unused.append(key)
                    continue
                d = {"kind": kind, "source": "empirical", **layer_summary(*p_fn(st)),
                     "channel_axis": st.axis, "samples": st.samples}
            scores[key] = float(d["score"])
            details[key] = d if key == path else {**d, "module": path, "call": call}
    samples = max((st.samples for st in stats.values()), default=0)
    if method == "easier":
        notes.insert(0, f"easier: entropy of on/off (input >= 0; off/linear/saturated for ReLU6 and HardSigmoid; "
                        f"HardSwish's curved band (-3, 3) counts half on, half off) per channel over {samples} "
                        "calibration sample(s), mean over channels ("
                        + ("the traced graph's values: no activation module to hook)"
                           if acts and all(m is None for m, _ in acts.values()) else
                           "forward hooks, and the traced graph's values for activations called as functions)"
                           if any(m is None for m, _ in acts.values()) else "forward hooks)"))
    if unused:
        notes.append(f"{method}: {len(unused)} activation module(s) or call(s) never run on the calibration data get "
                     f"no score ({', '.join(unused[:3])})")
    return ScoreResult(method, variant, "activation", scores, details, notes)


# ------------------------------------------------------------------------------------ tlc

def _bn_by_fx(model, acts: dict) -> tuple[dict, dict] | None:
    """(site key -> BN module path, module path -> calls) from torch.fx (modules named by call path, as the
    torch front end names them: fx/call_path.py), in call order (None when untraceable)."""
    torch = _torch()
    from ..fx.call_path import CallPathTracer

    try:
        gm = torch.fx.GraphModule(model, CallPathTracer().trace(model))
    except Exception:
        return None
    modules = dict(model.named_modules(remove_duplicate=False))
    sites = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in acts]
    calls: dict[str, int] = defaultdict(int)
    for node in sites:
        calls[node.target] += 1
    out, seen = {}, defaultdict(int)
    for node in sites:
        call = seen[node.target]
        seen[node.target] += 1
        arg = node.args[0] if node.args else None
        if isinstance(arg, torch.fx.Node) and arg.op == "call_module" and _is(modules.get(arg.target), _BN):
            out[site_key(node.target, call, calls[node.target])] = arg.target
    return out, dict(calls)


def _bn_regimes(bn, kind: str, params: dict):
    return _gamma_beta_regimes(bn.weight, bn.bias, bn.num_features, kind, params)


def _gamma_beta_regimes(weight, bias, n: int, kind: str, params: dict):
    """TLC's BN-variant regimes from a BatchNorm's affine weight / bias (None: 1 / 0), n channels."""
    gamma = weight.detach().cpu().double().numpy() if weight is not None else np.ones(n)
    beta = bias.detach().cpu().double().numpy() if bias is not None else np.zeros(n)
    return activation_gaussian_regimes(beta, gamma, kind, params)


def _tlc(model, acts: dict, calib_batches, calib_arg: str = "calib_batches", graph=None) -> ScoreResult:
    graph = graph if graph is not None else _GraphSites([], None, "")
    modules = dict(model.named_modules(remove_duplicate=False))
    traced, stats, calls, bn_of = True, None, {}, {}
    if acts:
        traced_sites = _bn_by_fx(model, acts)
        traced = traced_sites is not None
        if traced:
            bn_of, calls = traced_sites
            acts = _called_only(acts, calls)
        else:
            if calib_batches is None:
                raise CollapseError(f"module_scores: tlc could not trace the model with torch.fx to find the "
                                    f"BatchNorm before each activation; give {calib_arg} (hooks then find it, and the "
                                    "empirical variant covers the rest)")
            stats, producer, calls = _run_hooks(model, acts, calib_batches, moments=True, min_samples=2,
                                                calib_arg=calib_arg)
            acts = _called_only(acts, calls)
            # the hooks saw which leaf module produced each call's input
            bn_of = {site_key(path, call, calls[path]): p for (path, call), p in producer.items()
                     if p and _is(modules.get(p), _BN)}
    fixed = {}
    for key, bn in bn_of.items():
        mod, kind = acts[key if key in acts else key.rpartition(":")[0]]
        fixed[key] = {"kind": kind, "source": "bn", "bn": bn, **layer_summary(*_bn_regimes(modules[bn], kind, _params(mod, kind)))}
    fixed.update(graph.bn_fixed(modules))
    # a module is hooked when one of its calls has no BatchNorm right before it
    rest = [k for k in acts if not calls.get(k) or any(site_key(k, c, calls[k]) not in fixed for c in range(calls[k]))]
    g_rest = [site for site in graph.sites if site.keys[0] not in fixed]
    extra = []
    if calib_batches is None:
        if not fixed:
            raise CollapseError("module_scores: tlc found no BatchNorm directly before the activations; give "
                                f"{calib_arg} for the empirical variant (per-channel mean/std of each input)")
        if rest and stats is None:
            raise CollapseError(f"module_scores: tlc: {len(rest)} of {len(acts)} activation modules have no BatchNorm "
                                f"right before them (e.g. {', '.join(repr(k) for k in rest[:3])}); give {calib_arg} "
                                "for their empirical statistics")
        if g_rest:   # data-free: a functional site after no BatchNorm stays unscored (as before it was scored at all)
            extra.append(f"tlc: {len(g_rest)} activation(s) called as functions have no BatchNorm right before them "
                         f"and get no score without {calib_arg} ({', '.join(x.keys[0] for x in g_rest[:3])})")
            graph.dropped.update(site.keys[0] for site in g_rest)
            g_rest = []
    if rest and stats is None:
        stats, _, hooked = _run_hooks(model, {k: acts[k] for k in rest}, calib_batches, moments=True, min_samples=2,
                                      calib_arg=calib_arg, allow_none=bool(g_rest))
        calls = {**calls, **hooked}
    g_stats = graph.tapped(g_rest, calib_batches, True, calib_arg, others=bool(stats or fixed))
    g_acts, g_calls = graph.entries()
    n_rest = len(rest) + len([site for site in g_rest if site.keys[0] not in graph.dropped])
    variant = "bn" if not n_rest else ("empirical" if not fixed else "mixed")
    how = "torch.fx" if traced else "forward hooks"
    notes = {"bn": [f"tlc: variant bn (data-free): p_off = Phi(-beta/|gamma|) of the BatchNorm before each activation "
                    f"(found with {how})"],
             "empirical": ["tlc: variant empirical: no BatchNorm directly before the activations, so p_off = "
                           "Phi(-mean/std) of each activation input per channel on the calibration batches"],
             "mixed": [f"tlc: variant mixed: {len(fixed)} activation(s) from their BatchNorm (found with {how}), "
                       f"{n_rest} from per-channel mean/std on the calibration batches"]}[variant]
    res = _from_stats("tlc", variant, {**acts, **g_acts}, {**(stats or {}), **g_stats}, {**calls, **g_calls},
                      ChannelStats.gaussian_regimes, fixed, notes + extra + graph.notes(bool(acts)))
    return res


# ------------------------------------------------------------------------------------ functional sites

class _GraphSites:
    """The activation sites of the traced model that no module hook sees (F.relu(x), x.relu(), torch.sigmoid(x) * x,
    F.hardswish: fx/graph.find_activations, the sites and keys the torch front end collapses), scored on the
    values of the traced graph (fx/tap.tapped_values) with the ChannelStats the hooks use. Without them
    collapse(module, method=...) scored fewer sites than the ONNX front end on the same model's export."""

    def __init__(self, sites: list, gm, why: str, order: dict | None = None):
        self.sites, self.gm, self.why, self.order = sites, gm, why, order or {}
        self.dropped: set = set()   # keys left unscored (data-free TLC without a BatchNorm; the graph failed on the data)

    @classmethod
    def of(cls, model, gm, acts: dict, first_batch) -> "_GraphSites":
        if gm is None:
            gm, why = _trace(model, first_batch)
            if gm is None:
                return cls([], None, why)
        from ..fx.graph import find_activations

        try:
            found = find_activations(gm)
        except Exception as exc:   # noqa: BLE001 - the module scores stand without the graph's sites
            return cls([], None, f"its traced graph's activations could not be found ({_line(exc)})")
        # a module's calls are its hooks' (call_module nodes; under torch.export, nodes inside the activation module)
        sites = [site for site in found if site.node.op != "call_module" and site.path not in acts]
        return cls(sites, gm, "", {site.keys[0]: i for i, site in enumerate(found)})

    def entries(self) -> tuple[dict, dict]:
        """(key -> (None, kind), key -> 1): each scored site as _from_stats reads an activation module called once."""
        kept = [site for site in self.sites if site.keys[0] not in self.dropped]
        return {site.keys[0]: (None, site.kind) for site in kept}, {site.keys[0]: 1 for site in kept}

    def tapped(self, sites: list, calib_batches, moments: bool, calib_arg: str, others: bool) -> dict:
        """(key, 0) -> ChannelStats of each site's input over the batches. When the traced graph fails on a batch the
        model itself ran (torch.export's graph at a spatial size other than the one it was traced at) and `others`
        (module hooks) scored something, the sites are left unscored with a note."""
        if not sites:
            return {}
        try:
            return self._tapped(sites, calib_batches, moments, calib_arg)
        except CollapseError as exc:
            if not others:
                raise
            self.dropped.update(site.keys[0] for site in sites)
            self.why = f"the traced graph failed on the calibration data ({exc})"
            return {}

    def _tapped(self, sites: list, calib_batches, moments: bool, calib_arg: str) -> dict:
        from ..fx.tap import tapped_values

        xs = list(dict.fromkeys(site.x for site in sites))
        stats: dict[tuple, ChannelStats] = {}
        for got in tapped_values(self.gm, xs, calib_batches, f"module_scores ({calib_arg})", min_samples=2):
            for site in sites:
                x = got.get(site.x)
                if x is None:
                    continue
                st = stats.get((site.keys[0], 0))
                if st is None:
                    rank = x.ndim
                    axis = None if rank <= 1 else (1 if rank != 3 else (1 if self._conv_fed(site.x) else 2))
                    st = stats[(site.keys[0], 0)] = ChannelStats.for_activation(axis, site.kind, site.params,
                                                                                moments=moments)
                st.update(x)
        return stats

    def _producer_module(self, x):
        """(module path, module) of the leaf module that computed x (as the hooks' leaf producer), else (None, None)."""
        import operator

        from ..fx.graph import module_path

        node = x.args[0] if x.op == "call_function" and x.target is operator.getitem and x.args else x
        if not hasattr(node, "op") or node.op in ("placeholder", "get_attr", "output"):
            return None, None
        path = module_path(node)
        if path is None:
            return None, None
        try:
            mod = self.gm.get_submodule(path) if node.op == "call_module" else None
        except AttributeError:
            mod = None
        if mod is not None and _passes_through(mod) and node.args and hasattr(node.args[0], "op"):
            return self._producer_module(node.args[0])   # as the hooks: an eval Dropout / Identity is its input
        return path, mod

    def _conv_fed(self, x) -> bool:
        """A rank-3 input is (B, C, L) when a Conv / norm module feeds it (the hooks' rule), else (B, L, C)."""
        path, mod = self._producer_module(x)
        if mod is not None:
            return _is(mod, _CONV_LIKE)
        node = x.args[0] if x.op == "call_function" and getattr(x.target, "__name__", "") == "getitem" else x
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            kind = list(stack.values())[-1][1]
            return (kind if isinstance(kind, str) else kind.__name__).rpartition(".")[2] in _CONV_LIKE
        return False

    def bn_fixed(self, modules: dict) -> dict:
        """site key -> TLC's BatchNorm-variant details for each site whose input an nn.BatchNorm computes."""
        from ..fx.graph import batchnorm_op

        out = {}
        for site in self.sites:
            path, mod = self._producer_module(site.x)
            bn = modules.get(path) if path is not None else None
            op = None
            if site.x.op != "call_module":   # torch.export: the aten batch_norm op inside that module
                node = site.x.args[0] if site.x.op == "call_function" and site.x.args and \
                    getattr(site.x.target, "__name__", "") == "getitem" else site.x
                op = batchnorm_op(self.gm, node)
                if op is None or op.node is not site.x:
                    continue
            if bn is not None and _is(bn, _BN):
                regimes = _bn_regimes(bn, site.kind, site.params)
            elif op is not None:   # no nn.BatchNorm to read (an ExportedProgram's module()): the op's own gamma / beta
                regimes = _gamma_beta_regimes(op.gamma, op.beta, int(op.mean.numel()), site.kind, site.params)
                path = path or op.node.name
            else:
                continue
            out[site.keys[0]] = {"kind": site.kind, "source": "bn", "bn": path, **layer_summary(*regimes)}
        return out

    def notes(self, modules: bool) -> list:
        if self.why and modules:
            return [f"activations called as functions (F.relu, x * torch.sigmoid(x)) get no score: {self.why}"]
        return []

    def in_model_order(self, res: ScoreResult) -> ScoreResult:
        """res with its keys in the traced graph's call order (the ONNX front end's order; ties rank by it)."""
        if self.order:
            keys = sorted(res.scores, key=lambda k: self.order.get(k, len(self.order)))
            res.scores = {k: res.scores[k] for k in keys}
            res.details = {**{k: res.details[k] for k in keys if k in res.details}, **res.details}
        return res


def _trace(model, first_batch) -> tuple:
    """(GraphModule, "") as the torch front end traces the model (symbolic_trace, else torch.export on the first
    calibration batch), in eval mode; (None, why) when it cannot be traced."""
    from ..fx.api import to_graph_module

    was = model.training
    model.eval()
    try:
        try:
            return to_graph_module(model, None)[0], ""
        except Exception as exc:   # noqa: BLE001 - untraceable: the module hooks alone, as before
            first = first_batch()
            if first is None or isinstance(first, dict):
                return None, f"the model could not be traced ({_line(exc)})"
        try:
            return to_graph_module(model, _as_call(first, _torch())[0])[0], ""
        except Exception as exc:   # noqa: BLE001
            return None, f"the model could not be traced ({_line(exc)})"
    finally:
        model.train(was)


def _line(exc: BaseException) -> str:
    """The exception on one line, at most ~200 characters, cut at a word where there is one (it was cut mid-word)."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        cut = text.rfind(" ", 100, 200)
        text = text[:cut if cut > 0 else 200] + " ..."
    return text or type(exc).__name__
