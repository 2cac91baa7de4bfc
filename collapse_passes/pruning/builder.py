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
        #: reads of a value's channel count (x.size(1), Gather(Shape(x), 1)): [(slot, node, reader keys)]
        self.count_reads: list = []
        #: (count key, reader key) -> the slot whose channel axis that reader sizes with the count
        self.count_uses: dict = {}

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

    def read_count(self, slot, node, key, readers) -> None:
        """`node` reads slot's channel count into the value `key`, which `readers` (keys) take. Allowed when each
        reader is a reshape / expand that sizes the channel axis of a slot of the same group with it
        (use_count): the count read at run time is then the pruned one. The SE reference code's
        `b, c, _, _ = x.size(); y.view(b, c, 1, 1)` froze every squeeze-excitation group on torch (ONNX folds
        the static shape away). Resolved when the build ends (resolve_counts), since readers come later."""
        self.count_reads.append((slot, node, key, tuple(readers)))

    def use_count(self, key, reader, slot) -> None:
        """Reader `reader` sizes the channel axis of `slot` with the channel count `key` (see read_count)."""
        self.count_uses[(key, reader)] = slot

    def resolve_counts(self) -> None:
        """Freeze the slots whose channel count is read other than as read_count allows: a reader that did not
        say which slot it sizes, or one of another group, or one whose kept count can differ (a concat input
        and its output are one group, of different sizes): every unit must hold as many channels of both."""
        for slot, node, key, readers in self.count_reads:
            bad = False   # a count nothing reads (`c = x.shape[1]` left unused) changes nothing
            for r in readers:
                other = self.count_uses.get((key, r))
                if other is None or not self.same_counts(slot, other):
                    bad = True
                    break
            if bad:   # the readers that took it as their channel count are frozen too (their sizes would not follow)
                self.cg.freeze_op(node.name, self.op_type(node),
                                  [slot] + [self.count_uses[(key, r)] for r in readers if (key, r) in self.count_uses],
                                  "reads the channel count (the channel count would change)")

    def same_counts(self, a, b) -> bool:
        """Do slots a and b keep as many channels whatever units go (each unit holds as many of both)?"""
        if a == b:
            return True
        if a not in self.cg.slots or b not in self.cg.slots or self.cg.size(a) != self.cg.size(b):
            return False
        import networkx as nx

        if not nx.has_path(self.cg.slots, a, b):
            return False
        for comp in nx.connected_components(self.cg.chan.subgraph(
                [(s, i) for s in nx.node_connected_component(self.cg.slots, a) for i in range(self.cg.size(s))])):
            if sum(1 for s, _ in comp if s == a) != sum(1 for s, _ in comp if s == b):
                return False
        return True

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
