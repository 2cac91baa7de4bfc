"""torch modules, functions and aten ops -> activation catalogue kinds (core/activations.py).

Shared by the forward-hook scores (scores/torch_hooks.py) and the torch.fx front end, so both
recognise the same activations with the same params. torch is imported lazily (inside the
functions), so importing this module costs nothing.

    module_kind(mod)                       -> (kind, params) | None   e.g. nn.ReLU6() -> ("relu6", {})
    function_kind(target, args, kwargs)    -> (kind, params) | None   for fx call_function /
                                              call_method nodes: F.relu, torch.relu, "relu",
                                              aten.relu.default, F.hardtanh(x, 0, 6), ...

args[0] is the activation's input; function_kind reads params from the remaining args/kwargs.
A param that is not a Python number (an fx.Node, e.g. aten.prelu's weight) is returned as is under
its catalogue name ("slope"); the caller resolves it. Kinds include the non-collapsible ones
(softplus, tanh, sigmoid): check core.activations.is_collapsible before collapsing.
"""
from __future__ import annotations

from .activations import SELU_ALPHA, SELU_GAMMA, is_eps_guard


def _clip_kind(lo, hi):
    """relu6 / relu / clip from hardtanh- or clamp-style bounds (None = unbounded); None if not monotone."""
    if lo is None or not isinstance(lo, (int, float)) or (hi is not None and not isinstance(hi, (int, float))):
        return None
    lo = float(lo)
    hi = None if hi is None else float(hi)
    if hi is not None and hi == float("inf"):
        hi = None
    if (hi is not None and lo >= hi) or is_eps_guard(lo, hi):
        return None
    if lo == 0.0 and hi == 6.0:
        return "relu6", {}
    return "clip", {"min": lo, "max": hi}


def _elu_kind(alpha=1.0, scale=1.0, input_scale=1.0):
    """aten.elu(x, alpha, scale, input_scale) covers ELU, SELU and CELU after decomposition."""
    alpha, scale, input_scale = float(alpha), float(scale), float(input_scale)
    if input_scale == 1.0 and scale == 1.0:
        return "elu", {"alpha": alpha}
    if input_scale == 1.0:
        return "selu", {"gamma": scale, "alpha": alpha}
    if scale == 1.0 and alpha and abs(input_scale * alpha - 1.0) < 1e-12:
        return "celu", {"alpha": alpha}
    return None


def module_kind(mod):
    """(kind, params) of an activation module instance (subclasses count), else None."""
    import torch.nn as nn

    if isinstance(mod, nn.ReLU6):  # before Hardtanh: ReLU6 subclasses it
        return "relu6", {}
    if isinstance(mod, nn.ReLU):
        return "relu", {}
    if isinstance(mod, nn.Hardtanh):
        return _clip_kind(mod.min_val, mod.max_val)
    if isinstance(mod, nn.LeakyReLU):
        return "leaky_relu", {"alpha": float(mod.negative_slope)}
    if isinstance(mod, nn.PReLU):
        return "prelu", {"slope": mod.weight.detach().cpu().double().numpy()}
    if isinstance(mod, nn.GELU):
        return ("gelu_tanh" if mod.approximate == "tanh" else "gelu"), {}
    if isinstance(mod, nn.SiLU):
        return "silu", {}
    if isinstance(mod, nn.Hardswish):
        return "hardswish", {}
    if isinstance(mod, nn.Hardsigmoid):
        return "hardsigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5}
    if isinstance(mod, nn.SELU):
        return "selu", {"gamma": SELU_GAMMA, "alpha": SELU_ALPHA}
    if isinstance(mod, nn.CELU):
        return "celu", {"alpha": float(mod.alpha)}
    if isinstance(mod, nn.ELU):
        return "elu", {"alpha": float(mod.alpha)}
    if isinstance(mod, nn.Mish):
        return "mish", {}
    if isinstance(mod, nn.Softplus):
        return "softplus", {"beta": float(mod.beta)}
    if isinstance(mod, nn.Tanh):
        return "tanh", {}
    if isinstance(mod, nn.Sigmoid):
        return "sigmoid", {}
    return None


def _arg(args, kwargs, i: int, name: str, default):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _function_table():
    """callable or method name -> f(args, kwargs) -> (kind, params) | None. Built once, lazily."""
    global _TABLE
    if _TABLE is not None:
        return _TABLE
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten
    a = _arg
    fixed = lambda kind, **p: (lambda args, kw: (kind, dict(p)))  # noqa: E731
    entries = {
        "relu": fixed("relu"),
        "relu6": fixed("relu6"),
        "hardtanh": lambda args, kw: _clip_kind(a(args, kw, 1, "min_val", -1.0), a(args, kw, 2, "max_val", 1.0)),
        "clamp": lambda args, kw: _clip_kind(a(args, kw, 1, "min", None), a(args, kw, 2, "max", None)),
        "clamp_min": lambda args, kw: _clip_kind(a(args, kw, 1, "min", None), None),
        "leaky_relu": lambda args, kw: ("leaky_relu", {"alpha": float(a(args, kw, 1, "negative_slope", 0.01))}),
        "prelu": lambda args, kw: ("prelu", {"slope": a(args, kw, 1, "weight", None)}),
        "gelu": lambda args, kw: ("gelu_tanh" if a(args, kw, 1, "approximate", "none") == "tanh" else "gelu", {}),
        "silu": fixed("silu"),
        "hardswish": fixed("hardswish"),
        "hardsigmoid": fixed("hardsigmoid", alpha=1.0 / 6.0, beta=0.5),
        "elu": lambda args, kw: _elu_kind(a(args, kw, 1, "alpha", 1.0), a(args, kw, 2, "scale", 1.0),
                                          a(args, kw, 3, "input_scale", 1.0)),
        "selu": fixed("selu", gamma=SELU_GAMMA, alpha=SELU_ALPHA),
        "celu": lambda args, kw: ("celu", {"alpha": float(a(args, kw, 1, "alpha", 1.0))}),
        "mish": fixed("mish"),
        "softplus": lambda args, kw: ("softplus", {"beta": float(a(args, kw, 1, "beta", 1.0))}),
        "tanh": fixed("tanh"),
        "sigmoid": fixed("sigmoid"),
    }
    table = {}
    for name, fn in entries.items():
        table[name] = fn                      # call_method targets ("relu", "sigmoid", ...)
        table[name + "_"] = fn                # in-place methods (x.relu_())
        for ns in (F, torch, torch.special):
            for n in (name, name + "_"):
                obj = getattr(ns, n, None)
                if callable(obj):
                    table[obj] = fn
        for n in (name, name + "_"):
            packet = getattr(aten, n, None)
            if packet is None:
                continue
            for overload in ("default", "Tensor"):
                op = getattr(packet, overload, None)
                if op is not None:
                    table[op] = fn
            table[packet] = fn
    table[torch.clip] = table[torch.clamp]
    table["clip"] = table["clamp"]
    table[aten.clip.default] = table[aten.clamp.default]
    table[F.hardtanh] = entries["hardtanh"]
    table[torch.special.expit] = entries["sigmoid"]
    _TABLE = table
    return table


_TABLE = None


def function_kind(target, args=(), kwargs=None):
    """(kind, params) of a call to `target` (a torch function, an aten op, or a method name), else None."""
    try:
        fn = _function_table().get(target)
    except TypeError:  # unhashable target
        return None
    if fn is None:
        return None
    try:
        return fn(tuple(args), dict(kwargs or {}))
    except (TypeError, ValueError):  # a bound given as a tensor / node: not a constant activation
        return None
