"""Structured channel pruning on a channel dependency graph (front-end neutral core, ONNX and torch.fx
adapters). See docs/pruning.md."""
from .graph import ChannelGraph, Group, OpRecord
from .select import check_ratio, select_for_ratio

__all__ = ["ChannelGraph", "Group", "OpRecord", "check_ratio", "select_for_ratio"]
