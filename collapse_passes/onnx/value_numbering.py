"""Value numbering across models: which values of one model another model computes the same way.

Two values get the same number when they are
- a graph input of the same name, type and shape,
- a constant (initializer or Constant node) with the same type, shape and bytes, or
- the same output of the same op (domain, type, attributes) applied to inputs with the same numbers.
Identity and inference-mode Dropout pass their input's number on. Random ops, ops with subgraphs and
custom-domain ops are never numbered alike; models with different opsets share nothing.

Why: verification runs the input model, the requested semantics and the result on the same inputs,
and most of the three is the same computation (a collapse changes a few blocks; a run with nothing to
collapse changes nothing). `plan_runs` gives each model the region that differs from the models run
before it; the region runs on their values at its boundary, so an unchanged prefix is computed once,
not three times. A model whose outputs all carry the earlier model's numbers is the same computation
(the same ops on the same weights): there is nothing to run for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .graph import RANDOM_OPS

#: constants up to this many bytes are numbered by their bytes; larger ones by name, then compared
SMALL_CONST_BYTES = 1 << 16
_STD_DOMAINS = ("", "ai.onnx")
#: a changed region with more than this fraction of a model's nodes runs as the whole model
REGION_MAX_FRACTION = 0.75


class Numbering:
    """One table of value numbers shared by the models compared."""

    def __init__(self):
        self._ids: dict = {}
        self._big: dict = {}     # (data type, dims, name) -> [(tensor, number)]
        self.constants: set[int] = set()

    def intern(self, key) -> int:
        n = self._ids.get(key)
        if n is None:
            n = self._ids[key] = len(self._ids) + 1
        return n

    def unique(self) -> int:
        return self.intern(("unique", len(self._ids)))

    def constant(self, t: onnx.TensorProto) -> int:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.segment.ByteSize():
            return self.unique()   # bytes not in memory: not compared
        dims = tuple(t.dims)
        if t.ByteSize() <= SMALL_CONST_BYTES:
            n = self.intern(("const", t.data_type, dims, _content(t)))
        else:
            same = self._big.setdefault((t.data_type, dims, t.name), [])
            data = _content(t)
            n = next((k for other, k in same if _content(other) == data), None)
            if n is None:
                n = self.unique()
                same.append((t, n))
        self.constants.add(n)
        return n

    def attribute_constant(self, node: onnx.NodeProto) -> int:
        a = node.attribute[0] if len(node.attribute) == 1 else None
        if a is None:
            return self.unique()
        if a.type == onnx.AttributeProto.TENSOR:
            return self.constant(a.t)
        n = self.intern(("const-attr", a.SerializeToString()))
        self.constants.add(n)
        return n


def _content(t: onnx.TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    c = onnx.TensorProto()
    c.CopyFrom(t)
    c.ClearField("name")
    c.ClearField("doc_string")
    return c.SerializeToString()


@dataclass
class ModelNumbers:
    ids: dict[str, int]                 # value name -> number
    producer: dict[str, int]            # value name -> index of the node that computes it
    inputs: list[str]                   # graph inputs that are fed (not initializers)
    outputs: list[int]                  # the number of each graph output


def number_model(model: onnx.ModelProto, table: Numbering) -> ModelNumbers:
    g = model.graph
    ids: dict[str, int] = {}
    producer: dict[str, int] = {}
    # an op's meaning depends on its opset (Softmax's default axis changed at 13): ops of models with
    # different opsets never share a number
    versions = opsets(model)
    inits = set()
    for t in g.initializer:
        ids[t.name] = table.constant(t)
        inits.add(t.name)
    fed = []
    for vi in g.input:
        if vi.name in inits:
            continue
        ids[vi.name] = table.intern(("input", vi.name, vi.type.SerializeToString()))
        fed.append(vi.name)
    for k, node in enumerate(g.node):
        for out in node.output:
            if out:
                producer[out] = k
        std = node.domain in _STD_DOMAINS
        if std and node.op_type == "Identity" and node.input and node.input[0] in ids:
            ids[node.output[0]] = ids[node.input[0]]
            continue
        training = std and node.op_type == "Dropout" and not _inference_dropout(node, ids, table)
        if std and node.op_type == "Dropout" and not training and node.input[0] in ids:
            ids[node.output[0]] = ids[node.input[0]]
            for out in node.output[1:]:
                if out:
                    ids[out] = table.unique()
            continue
        if std and node.op_type == "Constant":
            ids[node.output[0]] = table.attribute_constant(node)
            continue
        if (not std or training or node.op_type in RANDOM_OPS or any(i and i not in ids for i in node.input)
                or _has_subgraph(node)):
            for out in node.output:
                if out:
                    ids[out] = table.unique()
            continue
        attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
        # which outputs exist is part of the op: Split without sizes splits into as many parts as it has
        # outputs; BatchNormalization before opset 14 trains when it has more than one
        key = (versions, node.op_type, attrs, tuple(ids[i] if i else 0 for i in node.input),
               tuple(bool(o) for o in node.output))
        for j, out in enumerate(node.output):
            if out:
                ids[out] = table.intern((key, j))
    outs = [ids.get(o.name) or table.unique() for o in g.output]
    return ModelNumbers(ids, producer, fed, outs)


def opsets(model: onnx.ModelProto) -> tuple:
    """(domain, version) of every opset the model imports, sorted: an op's meaning depends on them."""
    return tuple(sorted((o.domain or "", o.version) for o in model.opset_import))


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _inference_dropout(node, ids, table: Numbering) -> bool:
    """Dropout that passes its input through: no training_mode input, or a constant False one."""
    if len(node.input) < 3 or not node.input[2]:
        return True
    n = ids.get(node.input[2])
    return n is not None and n == table.intern(("const", onnx.TensorProto.BOOL, (), b"\x00"))


@dataclass
class RunPlan:
    """What to run of one model. `model` is the whole model (whole=True), the region that differs
    from the models planned before it, or None (nothing: every output is an earlier model's value).
    Region inputs in `boundary` are fed earlier runs' values (by number); `fetch` lists values that
    later regions need from this run (names in `model`, added as extra outputs)."""
    model: onnx.ModelProto | None
    whole: bool
    nodes_run: int
    nodes_total: int
    outputs: list[int]                          # number of each graph output of the full model
    boundary: dict[str, int] = field(default_factory=dict)
    fed: list[str] = field(default_factory=list)
    names: dict[str, int] = field(default_factory=dict)   # output name of `model` -> number
    fetch: list[str] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)  # the full model's fed inputs -> number
    initializers: list = field(default_factory=list)   # the full model's TensorProtos a region reads (not copied)


def plan_runs(models: list[onnx.ModelProto], first_whole: bool = True, regions: bool = True) -> list[RunPlan]:
    """One RunPlan per model, in order. The first model runs whole (it is the input model: its own
    run says whether the feeds fit it) unless first_whole=False. Models with different opsets, or
    with sparse initializers, run whole; with regions=False every model runs whole (the numbers
    still say which outputs are the same computation)."""
    versions = [opsets(m) for m in models]
    table = Numbering()
    numbered = [number_model(m, table) for m in models]
    shareable = regions and all(v == versions[0] for v in versions) and not any(m.graph.sparse_initializer
                                                                          for m in models)
    available: dict[int, tuple[int, str]] = {}   # number -> (plan index, name in that plan's model)
    plans: list[RunPlan] = []
    for k, (m, nums) in enumerate(zip(models, numbered)):
        inputs = {nums.ids[n] for n in nums.inputs}
        if not shareable or (k == 0 and first_whole):
            plan = _whole(m, nums)
        else:
            plan = _region(m, nums, available, inputs, table)
        # what this plan reads from earlier runs: its region's boundary and the outputs it does not compute
        needed = list(plan.boundary.values()) + [n for n in plan.outputs if n not in plan.names.values()]
        for n in needed:
            if n in available:
                src, name = available[n]
                if name not in plans[src].fetch and name not in _graph_output_names(plans[src].model):
                    plans[src].fetch.append(name)
        for name, n in plan.names.items():
            if n not in table.constants and n not in inputs:
                available.setdefault(n, (k, name))
        plans.append(plan)
    return plans


def _graph_output_names(model) -> set:
    return set() if model is None else {o.name for o in model.graph.output}


def _whole(m: onnx.ModelProto, nums: ModelNumbers) -> RunPlan:
    # graph outputs too: one that is an initializer has no producer, and its value is read by number
    outs = {o.name for o in m.graph.output}
    names = {n: i for n, i in nums.ids.items() if n in nums.producer or n in outs}
    return RunPlan(m, True, len(m.graph.node), len(m.graph.node), list(nums.outputs), fed=list(nums.inputs),
                   names=names, inputs={n: nums.ids[n] for n in nums.inputs})


def _region(m: onnx.ModelProto, nums: ModelNumbers, available: dict, inputs: set, table: Numbering) -> RunPlan:
    g = m.graph
    ids = nums.ids
    known = set(available) | inputs | table.constants
    changed = [k for k, node in enumerate(g.node)
               if any(out and ids[out] not in known for out in node.output)]
    for o, n in zip(g.output, nums.outputs):
        if n in table.constants or (n not in known and o.name not in nums.producer):
            return _whole(m, nums)   # a constant output, or one nothing computes: the whole model says so
    if not changed:
        return RunPlan(None, False, 0, len(g.node), list(nums.outputs), inputs={n: ids[n] for n in nums.inputs})
    in_region = set(changed)
    # Constant nodes the region reads come along (they are not values an earlier run gives)
    for k in list(changed):
        for i in g.node[k].input:
            p = nums.producer.get(i)
            if i and p is not None and p not in in_region and ids[i] in table.constants:
                in_region.add(p)
    order = sorted(in_region)
    if any(_has_subgraph(g.node[k]) for k in order):
        return _whole(m, nums)   # If/Loop/Scan read outer values by name, not as inputs: no region boundary for them
    if len(order) > REGION_MAX_FRACTION * len(g.node):
        return _whole(m, nums)   # the values at the boundary would cost more memory than the skipped nodes save
    produced = {o for k in order for o in g.node[k].output if o}
    inits = {t.name: t for t in g.initializer}
    fed_names = set(nums.inputs)
    boundary: dict[str, int] = {}
    fed: list[str] = []
    used_inits: list[str] = []
    for k in order:
        for i in g.node[k].input:
            if not i or i in produced or i in boundary or i in fed or i in used_inits:
                continue
            if i in inits:
                used_inits.append(i)
            elif i in fed_names:
                fed.append(i)
            elif ids[i] in available:
                boundary[i] = ids[i]
            else:
                return _whole(m, nums)   # a constant computed by ops: not worth a special case
    out_names = [o.name for o in g.output if o.name in produced]
    names = {n: ids[n] for n in produced}
    sub = onnx.ModelProto()
    sub.ir_version = m.ir_version
    sub.opset_import.extend(m.opset_import)
    sub.functions.extend(m.functions)
    sg = sub.graph
    sg.name = g.name + "_changed"
    sg.node.extend(g.node[k] for k in order)
    types = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
    for n in list(boundary) + fed:
        vi = sg.input.add()
        vi.name = n
        if n in types and types[n].type.tensor_type.elem_type:
            vi.type.tensor_type.elem_type = types[n].type.tensor_type.elem_type
    for n in out_names:
        sg.output.add().name = n
    return RunPlan(sub, False, len(order), len(g.node), list(nums.outputs), boundary=boundary, fed=fed,
                   names=names, inputs={n: ids[n] for n in nums.inputs}, initializers=[inits[n] for n in used_inits])
