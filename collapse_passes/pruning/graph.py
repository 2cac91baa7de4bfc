"""A front-end-neutral channel dependency graph (the idea of Torch-Pruning's DependencyGraph, on networkx).

Nodes of the slot graph are (tensor, channel axis) *slots*; an edge couples two slots whose channels must
be pruned together, with an index relation (identity, an offset through Concat/Split/Slice, or channel c
-> features [c*inner, (c+1)*inner) through Flatten). Connected components of slots are *groups*.
The same couplings on single channels ((slot, i) nodes) give *units*: the sets of channels that go away
together (one conv filter, its BN entry, the next conv's input column, the matching features of a
Linear behind a Flatten, the matching channel of every branch of a residual Add...).

Front ends (onnx_adapter, fx_adapter) describe each op as an `OpRecord` in a small vocabulary and freeze
every slot an op they do not understand touches (never a guess); a frozen slot freezes its whole group.
Graph inputs and outputs are frozen too (the model's interface does not change).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..algebra.prune import filter_norms

Slot = tuple  # (tensor name, channel axis)

#: op kinds an adapter may use
#: activation kinds that output exactly 0 on their whole off side: a channel of theirs at 0 on all the calibration
#: data is a constant channel there (--prune-calib-dead; each adapter reads its own spelling of them)
OFF_IS_ZERO = ("relu", "relu6", "hardswish", "clip")   # clip: with min 0 only


def no_dead_channel_note(flag: str) -> str:
    """What a calibration-data removal that removed nothing says (`flag`: how the user asked for it)."""
    return (f"{flag} removed no channel: no ReLU / ReLU6 / HardSwish channel is 0 on every calibration sample (or "
            "each such channel feeds an op that cannot absorb a constant, such as a transposed conv, or one the channel "
            "graph does not understand: the report's frozen ops)")


KINDS = {
    "conv",        # data: params (ConvParams), input_spatial (tuple or None); ins[0] / outs[0] slots
    "dense",       # data: params (LinearParams); ins[0] / outs[0] on the last axis
    "convt",       # transposed conv: data: params (algebra.prune.ConvTransposeParams); ins[0] / outs[0] slots
    "bn",          # data: scale, shift (per channel): y = scale * x + shift
    "relu",
    "leaky_relu",  # data: alpha
    "prelu",       # data: slope (per-channel vector, or None when it varies along another axis), slice_axis
    "clip",        # data: lo, hi (None = unbounded); ReLU6 is clip(0, 6)
    "index",       # pure channel indexing: data: src = per out slot (input position array, input channel array)
    "binary",      # elementwise Add/Sub/Mul/Div; data: fn ("add" ...), consts (per input: per-channel vector or None)
    "fn",          # another elementwise function (Sigmoid, HardSwish, Erf...): data: fn (float -> float)
    "other",       # understood for coupling only (value not propagated)
}


def activation_fn(kind: str, params: dict | None = None):
    """float -> float of a catalogue activation (core/activations.py), for an op recorded as kind "fn"."""
    from ..core.activations import reference

    return lambda x: float(reference(kind, np.array([x], np.float64), params)[0])


def avg_pool_keeps_constants(padding, ceil_mode, count_include_pad, divisor_override=None) -> bool:
    """An average pool whose every window averages input values only (no zero padding counted, no divisor of its
    own), so a constant channel stays that constant: as nn.AdaptiveAvgPool2d, which was read so while
    nn.AvgPool2d / F.avg_pool2d (and ONNX AveragePool, the exporters' spelling of both) stopped the constant."""
    pads = padding if isinstance(padding, (tuple, list)) else (padding,)
    if divisor_override is not None or not all(isinstance(p, int) for p in pads):
        return False
    return not count_include_pad or (not any(pads) and not ceil_mode)


#: ops with weights whose output channels are filters (a group's producers)
LAYERS = ("conv", "dense", "convt")


@dataclass
class OpRecord:
    name: str
    op_type: str
    kind: str
    ins: list            # slot or None per input (None: not channel-carrying, e.g. a weight)
    outs: list
    data: dict = field(default_factory=dict)


def broadcast_channel_axis(operands, out_rank: int) -> int | None:
    """The output axis the channels of an elementwise op's operands land on under numpy broadcasting
    (operands: (channel axis, rank) of each operand that carries channels); None when they disagree."""
    axes = {axis + out_rank - rank for axis, rank in operands}
    return axes.pop() if len(axes) == 1 else None


@dataclass
class Group:
    gid: int
    name: str                     # the first producer op, for the report
    slots: list
    units: list                   # list of lists of (slot, i)
    frozen: list                  # reasons; non-empty = never pruned
    producers: list               # op names whose outputs are in the group

    @property
    def channels(self) -> int:
        return len(self.units)


class ChannelGraph:
    def __init__(self):
        import networkx as nx   # here, not at module level: a run that prunes nothing never pays its import

        self.slots = nx.Graph()
        self.chan = nx.Graph()
        self.ops: list[OpRecord] = []
        self.frozen_ops: list[dict] = []
        self._frozen: dict = {}
        self._groups: list[Group] | None = None
        self._widths: dict = {}

    # -- building ---------------------------------------------------------------------------------
    def add_slot(self, slot: Slot, size: int) -> Slot:
        size = int(size)
        if slot in self.slots:
            if self.slots.nodes[slot]["size"] != size:
                self.freeze(slot, "?", "?", f"inconsistent channel count {size} vs {self.slots.nodes[slot]['size']}")
            return slot
        self.slots.add_node(slot, size=size)
        self.chan.add_nodes_from((slot, i) for i in range(size))
        self._groups = None
        return slot

    def size(self, slot: Slot) -> int:
        return self.slots.nodes[slot]["size"]

    def couple(self, a: Slot, b: Slot, idx_a=None, idx_b=None) -> None:
        """Channel idx_a[k] of slot a goes with channel idx_b[k] of slot b (identity when both None)."""
        if idx_a is None and idx_b is None:
            n = self.size(a)
            if n != self.size(b):
                self.freeze(a, "?", "?", f"coupled slots of different sizes ({a} {n}, {b} {self.size(b)})")
                self.freeze(b, "?", "?", "coupled slots of different sizes")
                self.slots.add_edge(a, b)
                return
            idx_a = idx_b = np.arange(n)
        self.slots.add_edge(a, b)
        self.chan.add_edges_from(((a, int(i)), (b, int(j))) for i, j in zip(idx_a, idx_b))
        self._groups = None

    def couple_concat(self, ins: list, out: Slot) -> tuple[np.ndarray, np.ndarray]:
        """Channel k of the i-th input goes with channel offset_i + k of the concat output; returns
        (input position, channel in that input) per output channel, the index map the rewrite needs."""
        pos, src, off = [], [], 0
        for k, s in enumerate(ins):
            m = self.size(s)
            self.couple(s, out, np.arange(m), off + np.arange(m))
            pos.append(np.full(m, k))
            src.append(np.arange(m))
            off += m
        return np.concatenate(pos), np.concatenate(src)

    def couple_positions(self, slot: Slot, groups: int) -> None:
        """Channel k*n/groups + r of slot goes with channel r for every group k: a grouped conv stays grouped
        with equal group sizes, so position r of the per-group block goes in every group at once (what
        Torch-Pruning does). Its input and output sides are coupled this way each, not to each other."""
        per = self.size(slot) // groups
        r = np.arange(per)
        for k in range(1, groups):
            self.couple(slot, slot, r, k * per + r)

    def conv_groups(self, op_name: str, op_type: str, sin: Slot, sout: Slot, p) -> None:
        """The channel couplings of a conv with p.group groups (both front ends): none when dense; input
        channel i with output channel i when depthwise; else per-group positions on each side
        (couple_positions). A side with one channel per group is frozen (removing it removes a group)."""
        g = p.group
        if g == 1:
            return
        if _depthwise(p):
            self.couple(sin, sout)
            return
        for s, per, side in ((sin, p.in_channels // g, "input"), (sout, p.out_channels // g, "output")):
            if per == 1:
                self.freeze_op(op_name, op_type, [s], f"grouped conv (group={g}) with one {side} channel per "
                                                      "group (removing it would remove a whole group)")
            else:
                self.couple_positions(s, g)

    def freeze(self, slot: Slot, op_name: str, op_type: str, reason: str) -> None:
        if slot not in self.slots:
            return
        self._frozen.setdefault(slot, []).append(f"{op_type} {op_name}: {reason}" if op_name != "?" else reason)
        self._groups = None

    def freeze_op(self, op_name: str, op_type: str, slots, reason: str) -> None:
        """An op the front end cannot rewrite: every group it touches is frozen, and it is listed."""
        slots = [s for s in slots if s is not None and s in self.slots]
        if slots:
            self.frozen_ops.append({"op": op_name, "op_type": op_type, "reason": reason})
        for s in slots:
            self.freeze(s, op_name, op_type, reason)

    def add_op(self, rec: OpRecord) -> None:
        assert rec.kind in KINDS, rec.kind
        self.ops.append(rec)

    # -- analysis ---------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        if self._groups is not None:
            return self._groups
        producer_of = {}
        for op in self.ops:
            if op.kind in LAYERS:
                producer_of[op.outs[0]] = op.name
        import networkx as nx

        order = {s: k for k, s in enumerate(self.slots.nodes)}
        groups = []
        for comp in sorted(nx.connected_components(self.slots), key=lambda c: min(order[s] for s in c)):
            slots = sorted(comp, key=order.get)
            frozen = [r for s in slots for r in self._frozen.get(s, [])]
            seen, units = set(), []
            for s in slots:
                for i in range(self.size(s)):
                    if (s, i) in seen:
                        continue
                    unit = sorted(nx.node_connected_component(self.chan, (s, i)), key=lambda m: (order[m[0]], m[1]))
                    seen.update(unit)
                    units.append(unit)
            prods = [producer_of[s] for s in slots if s in producer_of]
            name = prods[0] if prods else str(slots[0][0])
            groups.append(Group(len(groups), name, slots, units, list(dict.fromkeys(frozen)), prods))
        self._groups = groups
        self._widths = {}
        return groups

    def unit_width(self, group: Group) -> int:
        """Channels one unit of `group` holds in each conv / dense output: the number of groups for the
        position classes of a grouped conv (couple_positions), else 1 (a gcd where units differ). Ratios,
        rounding and reports count channels with it, not units."""
        import math

        self.groups()
        if group.gid not in self._widths:
            prod = self.producer_slots()
            w = 0
            for u in group.units:
                counts: dict = {}
                for s, _ in u:
                    if s in prod:
                        counts[s] = counts.get(s, 0) + 1
                for c in counts.values():
                    w = math.gcd(w, c)
            self._widths[group.gid] = w or 1
        return self._widths[group.gid]

    def channel_count(self, removed) -> int:
        """Channels the units `removed` ((gid, unit) pairs) take out of each layer they shrink."""
        groups = self.groups()
        return sum(self.unit_width(groups[gid]) for gid, _ in removed)

    def producer_slots(self) -> dict:
        """slot -> op for conv / dense / transposed-conv outputs (the filters of a group)."""
        return {op.outs[0]: op for op in self.ops if op.kind in LAYERS}

    def prunable_units(self, group: Group) -> list[int]:
        """Units of an unfrozen group that own at least one filter (a producer row)."""
        if group.frozen:
            return []
        prod = self.producer_slots()
        return [k for k, u in enumerate(group.units) if any(s in prod for s, _ in u)]

    def _readers(self) -> dict:
        """slot -> indices (in self.ops) of the ops that read it."""
        readers: dict = {}
        for k, op in enumerate(self.ops):
            for s in op.ins:
                if s is not None:
                    readers.setdefault(s, []).append(k)
        return readers

    # -- importance -------------------------------------------------------------------------------
    def filter_importance(self, order: int = 1) -> dict:
        """(gid, unit index) -> sum of the L1/L2 norms of the unit's filters (producer rows).

        A filter read only by a BatchNorm is weighed as it computes, scaled by |BN scale|: the TorchScript and
        torch.export exporters fold eval BN into the conv, so without this a torch module (BN kept) and its
        ONNX export (BN folded) ranked the same channels differently (a 0.3 ResNet-50 kept 33 vs 38 stem
        channels)."""
        norms = {s: filter_norms(_filters(op), 0, order) for s, op in self.producer_slots().items()}
        readers = self._readers()
        for s in norms:
            r = [self.ops[k] for k in readers.get(s, [])]
            if len(r) == 1 and r[0].kind == "bn" and r[0].ins[0] == s:
                norms[s] = norms[s] * np.abs(np.asarray(r[0].data["scale"], np.float64).reshape(-1))
        out = {}
        for g in self.groups():
            for k in self.prunable_units(g):
                out[(g.gid, k)] = float(sum(norms[s][i] for s, i in g.units[k] if s in norms))
        return out

    def score_importance(self, channel_scores: dict, axes: dict | None = None) -> dict:
        """(gid, unit) -> sum of user/statistics per-channel scores over the unit's channels on named tensors.

        channel_scores maps a tensor name to one score per channel (higher = more important); units with
        no scored channel get +inf (kept). A list whose length is not the tensor's channel count is a
        CollapseError: a short one left the channels past its end unranked (kept, so a 0.5 ratio removed one
        channel) and a long one was cut, both without a word. `axes` {name: axis the scores were measured along}
        (TLC / EASIER statistics): an axis that is not the tensor's channel axis is a CollapseError too (an NHWC
        activation's statistics run along H: "give one score per channel" named no way out, and with H == C the
        rows were ranked as channels).
        """
        from ..errors import CollapseError

        sizes, slot_axis = {}, {}
        for s in self.slots.nodes:
            sizes.setdefault(s[0], self.size(s))
            slot_axis.setdefault(s[0], s[1])
        for name, ax in (axes or {}).items():
            if ax is not None and name in slot_axis and int(ax) != slot_axis[name]:
                raise CollapseError(f"channel importance from statistics: {name!r} was measured along axis {ax}, its "
                                    f"channels run along axis {slot_axis[name]} (channels last); use "
                                    "--prune-importance l1 or l2 (prune_importance=)")
        for name, v in channel_scores.items():
            if name in sizes and len(v) != sizes[name]:
                raise CollapseError(f"per-channel scores for {name!r}: {len(v)} value(s), the tensor has "
                                    f"{sizes[name]} channels; give one score per channel")
        out = {}
        for g in self.groups():
            for k in self.prunable_units(g):
                vals = [float(channel_scores[s[0]][i]) for s, i in g.units[k] if s[0] in channel_scores]
                out[(g.gid, k)] = float(np.sum(vals)) if vals else float("inf")
        return out

    # -- removal ----------------------------------------------------------------------------------
    def keep_sets(self, removed) -> dict:
        """slot -> sorted kept channel indices, for every slot that loses a channel."""
        groups = self.groups()
        drop: dict = {}
        for gid, k in removed:
            for s, i in groups[gid].units[k]:
                drop.setdefault(s, set()).add(i)
        return {s: np.array(sorted(set(range(self.size(s))) - d), dtype=np.int64) for s, d in drop.items()}

    def constant_units(self, data_dependent_off: dict | None = None) -> list[dict]:
        """Units whose every channel is a known constant and whose readers can absorb it: exact removals.

        A unit qualifies when every op reading it from outside the unit is a conv or dense layer (which
        takes the constant into its bias) and the value it reads is a known constant: zero filter -> its
        bias; zero-scale BN -> its shift; ReLU of a constant; an activation channel always off (0) on
        calibration data when listed in data_dependent_off {slot: set(channels)}. Values read only inside the unit
        may vary (a filter feeding a zero-gamma BN goes too). Returns dicts: gid, unit, folds
        [(op name, in slot, channel, value)], data_dependent, reason.
        """
        dd = data_dependent_off or {}
        readers = self._readers()
        writers: dict = {}
        for k, op in enumerate(self.ops):
            for s in op.outs:
                if s is not None:
                    writers.setdefault(s, []).append(k)
        sources = self._constant_sources(dd)
        found = []
        for g in self.groups():
            for k in self.prunable_units(g):
                if not any(m in sources for m in g.units[k]):
                    continue  # nothing in the unit can start a constant: skip the propagation
                res = self._unit_constant(g.units[k], readers, writers, dd)
                if res is not None:
                    res.update(gid=g.gid, unit=k)
                    found.append(res)
        return found

    def _constant_sources(self, dd) -> set:
        """(slot, i) where a constant can start: a zero filter, a zero-scale BN, a listed always-off activation."""
        out = {(s, int(i)) for s, chans in dd.items() for i in chans}
        for op in self.ops:
            if op.kind in LAYERS:
                out.update((op.outs[0], int(i)) for i in np.flatnonzero(zero_filters(_filters(op))))
            elif op.kind == "bn":
                out.update((op.outs[0], int(i)) for i in np.flatnonzero(np.asarray(op.data["scale"]) == 0))
            elif op.kind == "binary" and op.data["fn"] == "mul":
                # a Mul by a per-channel constant with zeros: what a per-channel collapse writes for the channels that
                # were always off (core/channel_regimes.py); _value already says 0 * anything is 0
                for c in op.data["consts"]:
                    if c is not None:
                        out.update((op.outs[0], int(i)) for i in np.flatnonzero(np.asarray(c) == 0))
        return out

    def _unit_constant(self, unit, readers, writers, dd):
        slots = {s for s, _ in unit}
        members = {}
        for s, i in unit:
            members.setdefault(s, []).append(i)
        touching = sorted({k for s in slots for k in readers.get(s, []) + writers.get(s, [])})
        val: dict = {}
        data_dep = False
        folds = []
        for k in touching:
            op = self.ops[k]
            outs_in = [s for s in op.outs if s in slots]
            if not outs_in:
                if op.kind == "index" and not _reads_any(op, members):
                    continue   # a Slice of the other channels (TorchScript's torch.chunk): it reads none of the unit
                # a reader outside the unit: must absorb the constant (a transposed conv does not: the
                # contribution of a constant input differs across its output positions)
                if op.kind not in ("conv", "dense"):
                    return None
                s = op.ins[0]
                for i in members.get(s, []):
                    if (s, i) not in val:
                        return None
                    folds.append((op.name, s, i, val[(s, i)]))
                continue
            for s in outs_in:
                for i in members[s]:
                    v, dep = self._value(op, s, i, val, dd)
                    if v is not None:  # a variable value is fine if only ops inside the unit read it
                        data_dep |= dep
                        val[(s, i)] = v
            s = op.ins[0] if op.kind in LAYERS else None
            if s in slots and op.kind == "convt":
                return None
            if s in slots and not (op.kind == "conv" and _depthwise(op.data["params"])):
                # a layer writing the unit that also reads it (x + conv(x)): its other outputs read the removed
                # inputs too, so they absorb the constant (a depthwise conv's input i feeds output i only)
                for i in members[s]:
                    if (s, i) not in val:
                        return None
                    folds.append((op.name, s, i, val[(s, i)]))
        return {"folds": folds, "data_dependent": data_dep, "values": val}

    @staticmethod
    def _value(op: OpRecord, s, i, val, dd):
        """Constant value of channel i of op's output slot s, or None; and whether it is data-dependent."""
        d = op.data
        if op.kind in LAYERS:
            p = d["params"]
            b = 0.0 if p.bias is None else float(np.asarray(p.bias).reshape(-1)[i])
            if not np.any(_filters(op)[i]):
                return b, False
            if op.kind == "conv" and op.ins[0] is not None and p.group > 1:
                # a grouped (or depthwise) conv whose whole input group is known zeros (zero padding is zero too)
                ci, co = p.in_channels // p.group, p.out_channels // p.group
                k = i // co
                if all(val.get((op.ins[0], j)) == 0.0 for j in range(k * ci, (k + 1) * ci)):
                    return b, False
            return None, False
        x = val.get((op.ins[0], i)) if op.ins and op.ins[0] is not None else None
        if x is None and i in dd.get(s, ()):
            return 0.0, True   # listed off on all the calibration data (ReLU, ReLU6, HardSwish: OFF_IS_ZERO)
        if op.kind == "bn":
            sc, sh = float(d["scale"][i]), float(d["shift"][i])
            if x is not None:
                return sc * x + sh, False
            return (sh, False) if sc == 0.0 else (None, False)
        if op.kind == "relu":
            return (None if x is None else max(x, 0.0)), False
        if op.kind == "clip":
            return (None if x is None else float(np.clip(x, -np.inf if d["lo"] is None else d["lo"],
                                                         np.inf if d["hi"] is None else d["hi"]))), False
        if op.kind == "leaky_relu":
            return (None if x is None else (x if x >= 0 else d["alpha"] * x)), False
        if op.kind == "prelu":
            sl = d["slope"]
            return (None if x is None or (x < 0 and sl is None) else (x if x >= 0 else float(sl[i]) * x)), False
        if op.kind == "fn":   # another elementwise function of the channel (adapter-given scalar f)
            return (None if x is None else float(d["fn"](x))), False
        if op.kind == "index":
            pos, src = d["src"][op.outs.index(s)]
            return val.get((op.ins[int(pos[i])], int(src[i]))), False
        if op.kind == "binary":
            xs = []
            for k, t in enumerate(op.ins):
                c = d["consts"][k]
                xs.append(val.get((t, i)) if t is not None else (None if c is None else float(c[i])))
            if d["fn"] == "mul" and 0.0 in xs:
                # 0 times anything is 0: a dead channel scaled by a squeeze-excitation gate (x * sigmoid(fc2(...)),
                # whose gate channel varies with the input) is still 0; the gate's own channel is read only here, so
                # fc2's row goes with the unit. Before 2026-11-29 the Mul stopped the constant: every SE block kept
                # its dead channels (MobileNetV3, EfficientNet)
                return 0.0, False
            if any(v is None for v in xs):
                return None, False
            fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[d["fn"]]
            return float(fn(xs[0], xs[1])), False
        return None, False


def _reads_any(op: OpRecord, members: dict) -> bool:
    """Does an index op (its data["src"]: per output, the input position and channel of each output channel) read
    any of `members` {slot: channels}? A channel Slice reads only its range: the TorchScript exporter writes
    torch.chunk as one Slice per chunk, and a constant channel of one chunk was kept because the other chunk's Slice
    read its tensor (the torch.export-based exporter's Split, one op, let it go)."""
    for pos, src in op.data["src"]:
        for p, c in zip(np.asarray(pos).reshape(-1), np.asarray(src).reshape(-1)):
            if int(c) in members.get(op.ins[int(p)], ()):
                return True
    return False


def zero_filters(w) -> np.ndarray:
    """Which output channels of a weight with one filter per row (conv (O, I/g, *k), dense (O, I), a transposed
    conv's ConvTransposeParams.filters()) are all zero: where a constant channel starts."""
    w = np.asarray(w)
    return ~np.any(w.reshape(w.shape[0], -1) != 0, axis=1)


def _filters(op: OpRecord) -> np.ndarray:
    """One row of weights per output channel of a conv, dense or transposed-conv op (what writes it)."""
    p = op.data["params"]
    return p.filters() if op.kind == "convt" else np.asarray(p.weight)


def _depthwise(p) -> bool:
    """A conv whose input channel i is its output channel i (coupled in the channel graph)."""
    return 1 < p.group == p.in_channels == p.out_channels


@dataclass
class OpEdit:
    """What one op becomes when units are removed (ChannelGraph.keep_sets) and constants folded:
    k_in / k_out are the kept input / output channels (None: all kept); for conv and dense ops,
    `params` is the sliced (and folded) ConvParams / LinearParams and `bias_map` the per-position
    map a constant read through zero padding leaves (already sliced to k_out), else None."""
    rec: OpRecord
    k_in: object
    k_out: object
    params: object = None
    bias_map: object = None


def removal_edits(cg: ChannelGraph, removed, folds=()):
    """OpEdit for every op that removing `removed` units, or folding `folds` (op name, slot, channel,
    value) into their readers, changes; in the channel graph's op order. Both adapters apply them."""
    from ..algebra import prune as prune_alg

    keep = cg.keep_sets(removed)
    fold_by_op: dict = {}
    for name, _slot, ch, value in folds:
        fold_by_op.setdefault(name, []).append((ch, value))
    for rec in cg.ops:
        touched = any(s in keep for s in list(rec.ins) + list(rec.outs) if s is not None)
        if not touched and rec.name not in fold_by_op:
            continue
        edit = OpEdit(rec, keep.get(rec.ins[0]) if rec.ins else None, keep.get(rec.outs[0]) if rec.outs else None)
        folded = list(zip(*fold_by_op[rec.name])) if rec.name in fold_by_op else None
        if rec.kind == "conv":
            p = rec.data["params"]
            if folded:
                p, bm = prune_alg.fold_constant_inputs_conv(p, *folded, rec.data["input_spatial"])
                edit.bias_map = bm if bm is None or edit.k_out is None else bm[edit.k_out]
            edit.params = prune_alg.slice_conv(p, edit.k_out, edit.k_out if _depthwise(p) else edit.k_in)
        elif rec.kind == "dense":
            p = rec.data["params"]
            if folded:
                p = prune_alg.fold_constant_inputs_linear(p, *folded)
            edit.params = prune_alg.slice_linear(p, edit.k_out, edit.k_in)
        elif rec.kind == "convt":
            edit.params = prune_alg.slice_conv_transpose(rec.data["params"], edit.k_out, edit.k_in)
        yield edit
