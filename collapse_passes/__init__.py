"""collapse_passes: make trained networks shallower by collapsing activations and merging linear ops.

The public names are loaded on first use (PEP 562): `python -m collapse_passes` imports this package
before its __main__ can take SIGINT/SIGTERM over, and importing onnx/numpy here made that ~0.2 s in which
a Ctrl-C printed a KeyboardInterrupt traceback (docs/file_safety.md: one line, exit 130).
"""
from __future__ import annotations

import importlib

_LAZY = {"collapse": "api", "list_keys": "api", "CollapseResult": "api", "read_scores": "core.selection",
         "CollapseConfig": "config", "CollapseError": "errors", "VerificationError": "errors"}


def torch_backend(*args, **kwargs):
    """torch.compile backend that collapses, folds and merges, then hands on to inductor (see fx/api.py)."""
    from .fx.api import torch_backend as _backend

    return _backend(*args, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):   # `collapse_passes.api` etc. without importing them first, as before
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"
__all__ = ["collapse", "list_keys", "read_scores", "CollapseResult", "CollapseConfig", "CollapseError",
           "VerificationError", "torch_backend", "__version__"]
