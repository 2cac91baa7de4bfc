"""What the ONNX and torch.fx channel-graph builders share: one slot per (value, channel axis), made
frozen when its producer is not understood, and the output slot of a broadcasting binary op.

A front end's builder subclasses SlotBuilder and says how to read its graph: a value's name and
shape, a node's name and op type, where an untracked value comes from, and which input slots a node
reads. The channel graph itself (pruning/graph.py) never sees a front-end object.
"""
from __future__ import annotations

import numpy as np

from .graph import ChannelGraph, OpRecord, broadcast_channel_axis


class SlotBuilder:
    #: how the channel graph's report calls a frozen value ("tensor" in ONNX, "value" in torch.fx)
    VALUE_KIND = "value"
    #: the key under which an OpRecord keeps its front-end node (the rewrite reads it back)
    NODE_KEY = "node"

    def __init__(self):
        self.cg = ChannelGraph()
        self.slot_of: dict[str, tuple] = {}

    # -- what a front end says about its graph --------------------------------------------------
    def shape(self, v) -> list | None:
        raise NotImplementedError

    def op_type(self, node) -> str:
        raise NotImplementedError

    def origin(self, v) -> str:
        """Why a value's channels are not tracked (it is an input, or its producer is not understood)."""
        raise NotImplementedError

    def slotted(self, node) -> list:
        """The slots of the node's inputs (None where an input has none)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------
    def new_slot(self, v, axis: int):
        s = self.shape(v)
        if s is None or axis < 0 or axis >= len(s) or not s[axis]:
            return None
        slot = self.cg.add_slot((v.name, axis), s[axis])
        self.slot_of[v.name] = slot
        return slot

    def get_slot(self, v, axis: int, node):
        """The slot of value v on `axis`; created frozen when v comes from outside the understood ops."""
        if v.name in self.slot_of:
            slot = self.slot_of[v.name]
            if slot[1] != axis:
                self.cg.freeze_op(node.name, self.op_type(node), [slot],
                                  f"reads channels on axis {axis}, the value's are on axis {slot[1]}")
                return None
            return slot
        slot = self.new_slot(v, axis)
        if slot is not None:
            self.cg.freeze(slot, v.name, self.VALUE_KIND, self.origin(v))
        return slot

    def moved(self, node, out, src, axis: int):
        """`node` holds src's channels whole on `axis` of its output `out` (a permute / transpose, a flatten,
        squeeze or unsqueeze of other axes): coupled one to one, on both front ends."""
        sout = self.new_slot(out, axis)
        if sout is None or self.cg.size(sout) != self.cg.size(src):
            return self.unknown(node, "unknown output shape")
        self.cg.couple(src, sout)
        m = self.cg.size(src)
        self.record(node, "index", [src], [sout], src=[(np.zeros(m, int), np.arange(m))])

    def unknown(self, node, reason: str):
        self.cg.freeze_op(node.name, self.op_type(node), [s for s in self.slotted(node) if s is not None], reason)

    def record(self, node, kind, ins, outs, **data):
        self.cg.add_op(OpRecord(node.name, self.op_type(node), kind, ins, outs, dict(data, **{self.NODE_KEY: node})))

    def binary_output(self, node, out, operands: list, out_rank: int | None):
        """(channel axis, output slot, channels) of a broadcasting binary op whose operands are
        [(slot or None, rank)], or None after freezing the node with the reason."""
        if not out_rank or len(operands) != 2:
            self.unknown(node, "unknown output shape")
            return None
        ax = broadcast_channel_axis([(s[1], r) for s, r in operands if s is not None], out_rank)
        if ax is None:
            self.unknown(node, "operands carry channels on different axes")
            return None
        sout = self.new_slot(out, ax)
        if sout is None:
            self.unknown(node, "unknown output shape")
            return None
        return ax, sout, self.cg.size(sout)
