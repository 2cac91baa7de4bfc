"""ONNX graph passes, one per file. Each is a small object whose call returns a PassResult."""
from .cleanup import Cleanup
from .fold_affine import FOLD_PATTERNS, FoldAffine
from .linearize import LinearizeActivations

__all__ = ["Cleanup", "FoldAffine", "FOLD_PATTERNS", "LinearizeActivations"]
