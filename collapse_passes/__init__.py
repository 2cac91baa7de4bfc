"""collapse_passes: make trained networks shallower by collapsing activations and merging linear ops."""
from .api import CollapseResult, collapse, list_keys, read_scores
from .config import CollapseConfig
from .errors import CollapseError, VerificationError

__version__ = "0.1.0"
__all__ = ["collapse", "list_keys", "read_scores", "CollapseResult", "CollapseConfig", "CollapseError",
           "VerificationError", "__version__"]
