"""collapse_passes: make trained networks shallower by collapsing activations and merging linear ops."""
from .api import CollapseResult, collapse, list_keys
from .core.selection import read_scores
from .config import CollapseConfig
from .errors import CollapseError, VerificationError


def torch_backend(*args, **kwargs):
    """torch.compile backend that collapses, folds and merges, then hands on to inductor (see fx/api.py)."""
    from .fx.api import torch_backend as _backend

    return _backend(*args, **kwargs)


__version__ = "0.1.0"
__all__ = ["collapse", "list_keys", "read_scores", "CollapseResult", "CollapseConfig", "CollapseError",
           "VerificationError", "torch_backend", "__version__"]
