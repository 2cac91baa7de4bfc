"""The score methods on a torch.nn.Module, through forward hooks (keys = module paths).

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

torch is imported here only: the ONNX core never needs it.
"""
from __future__ import annotations

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


def module_scores(model, method: str, calib_batches=None, calib_arg: str = "calib_batches") -> ScoreResult:
    """`calib_arg` is how the caller's user passes the batches, named in the way-outs of the errors (collapse()
    takes them as calib=[...], where calib_batches is a count: naming it there sent users to the wrong argument)."""
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
    if not acts:
        raise CollapseError("module_scores: the model has no activation modules (nn.ReLU, nn.GELU, ...); "
                            "activations called as functions (F.relu) cannot be hooked")
    if name == "prelu":
        return _prelu(_called_only(acts, _traced_calls(model) or ()), calib_batches)
    if name == "easier":
        if calib_batches is None:
            raise CollapseError(f"module_scores: easier needs {calib_arg} (an iterable of input batches)")
        stats, _, calls = _run_hooks(model, acts, calib_batches, moments=False, min_samples=2,
                                     calib_arg=calib_arg)
        return _from_stats("easier", "empirical", _called_only(acts, calls), stats, calls, ChannelStats.regimes,
                           {})
    return _tlc(model, acts, calib_batches, calib_arg)


# ------------------------------------------------------------------------------------ prelu

def _prelu(acts: dict, calib_batches) -> ScoreResult:
    from .prelu import slope_details

    scores, details = {}, {}
    others = defaultdict(int)
    for key, (mod, kind) in acts.items():
        if kind == "prelu":
            d = slope_details(kind, mod.weight.detach().cpu().double().numpy())
        elif kind == "leaky_relu":
            d = slope_details(kind, [float(mod.negative_slope)])
        else:
            others[kind] += 1
            continue
        scores[key], details[key] = d["score"], d
    if not scores:
        raise CollapseError("module_scores: --method prelu scores nn.PReLU / nn.LeakyReLU slopes, and this model has "
                            f"none (activations: {', '.join(f'{k}: {n}' for k, n in others.items())}); use easier or tlc")
    notes = ["prelu: score = mean |1 - slope| per nn.PReLU / nn.LeakyReLU (0 = identity); data-free"]
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


def _run_hooks(model, acts: dict, calib_batches, moments: bool, min_samples: int, calib_arg: str = "calib_batches"):
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
    if not stats:
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
                        "calibration sample(s), mean over channels (forward hooks)")
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
    n = bn.num_features
    gamma = bn.weight.detach().cpu().double().numpy() if bn.weight is not None else np.ones(n)
    beta = bn.bias.detach().cpu().double().numpy() if bn.bias is not None else np.zeros(n)
    return activation_gaussian_regimes(beta, gamma, kind, params)


def _tlc(model, acts: dict, calib_batches, calib_arg: str = "calib_batches") -> ScoreResult:
    modules = dict(model.named_modules(remove_duplicate=False))
    traced_sites = _bn_by_fx(model, acts)
    traced = traced_sites is not None
    stats = producer = None
    if traced:
        bn_of, calls = traced_sites
        acts = _called_only(acts, calls)
    else:
        if calib_batches is None:
            raise CollapseError(f"module_scores: tlc could not trace the model with torch.fx to find the BatchNorm "
                                f"before each activation; give {calib_arg} (hooks then find it, and the empirical "
                                "variant covers the rest)")
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
    # a module is hooked when one of its calls has no BatchNorm right before it
    rest = [k for k in acts if not calls.get(k) or any(site_key(k, c, calls[k]) not in fixed for c in range(calls[k]))]
    if rest and stats is None:
        if calib_batches is None:
            if not fixed:
                raise CollapseError("module_scores: tlc found no BatchNorm directly before the activations; give "
                                    f"{calib_arg} for the empirical variant (per-channel mean/std of each input)")
            raise CollapseError(f"module_scores: tlc: {len(rest)} of {len(acts)} activation modules have no BatchNorm "
                                f"right before them (e.g. {', '.join(repr(k) for k in rest[:3])}); give {calib_arg} "
                                "for their empirical statistics")
        stats, _, hooked = _run_hooks(model, {k: acts[k] for k in rest}, calib_batches, moments=True, min_samples=2,
                                      calib_arg=calib_arg)
        calls = {**calls, **hooked}
    variant = "bn" if not rest else ("empirical" if not fixed else "mixed")
    how = "torch.fx" if traced else "forward hooks"
    notes = {"bn": [f"tlc: variant bn (data-free): p_off = Phi(-beta/|gamma|) of the BatchNorm before each activation "
                    f"(found with {how})"],
             "empirical": ["tlc: variant empirical: no BatchNorm directly before the activations, so p_off = "
                           "Phi(-mean/std) of each activation input per channel on the calibration batches"],
             "mixed": [f"tlc: variant mixed: {len(fixed)} activation(s) from their BatchNorm (found with {how}), "
                       f"{len(rest)} from per-channel mean/std on the calibration batches"]}[variant]
    res = _from_stats("tlc", variant, acts, stats or {}, calls,
                      ChannelStats.gaussian_regimes,
                      fixed, notes)
    return res
