"""Collapse that keeps accuracy (torch only): the training loops of the seed methods.

    iterative_collapse(model, method="easier" | "tlc" | "prelu", train_data=..., val_data=...,
                       max_accuracy_drop=0.01, target_speedup=None, ...) -> CollapseRun

Sites, padding relocation: sites.py; Layer Folding and LaCoOT terms: regularizers.py.
"""
from .loop import METHODS, CollapseRun, accuracy, default_fine_tune, iterative_collapse
from .regularizers import (FOLD_ALPHA, LacootTerm, max_sliced_w2, prelu_penalty, prelu_swap, remove_blocks,
                           residual_blocks, to_prelu)
from .sites import LinearRegime, Site, find_sites, linearize, relocate_padding

__all__ = ["METHODS", "CollapseRun", "accuracy", "default_fine_tune", "iterative_collapse", "FOLD_ALPHA",
           "LacootTerm", "max_sliced_w2", "prelu_penalty", "prelu_swap", "remove_blocks", "residual_blocks", "to_prelu",
           "LinearRegime", "Site", "find_sites", "linearize", "relocate_padding"]
