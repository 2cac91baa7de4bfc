"""ONNX shape inference without copying the weights.

onnx.shape_inference.infer_shapes serializes the whole model (weights included) to C++ and parses the
result back: for ResNet-18 that is ~45 MB copied three times and about a second, per call. Shape
inference only needs the *shapes* of large initializers, so `inferred_types` runs it on a light copy
(large float initializers declared as typed graph inputs; integer and small initializers, which data
propagation may read, kept as they are) and returns the types by tensor name. Same shapes, a fraction
of the time and memory (checked against full inference in tests/test_catalogue.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

#: initializers with more elements than this, of a float type, are declared by type only
LIGHT_LIMIT = 1024
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
              onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
              onnx.TensorProto.BOOL}


def light_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its large float initializers replaced by typed inputs (no weight data copied)."""
    from .graph import without_initializers

    lm = without_initializers(model)
    g = lm.graph
    declared = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        size = int(np.prod(t.dims)) if len(t.dims) else 1
        if size <= LIGHT_LIMIT or t.data_type in _INT_TYPES or t.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return lm


def light_export(graph: gs.Graph) -> onnx.ModelProto:
    """gs.export_onnx(graph) as light_model() would leave it: the large float constants declared as
    typed inputs, so exporting does not copy the weights (twice: gs makes bytes, then a TensorProto).
    The graph itself is not modified (a shallow gs copy is; constants' arrays are shared, not loaded)."""
    g = graph.copy()
    stand_ins: dict[str, gs.Variable] = {}
    for node in g.nodes:
        for i, t in enumerate(node.inputs):
            if not isinstance(t, gs.Constant):
                continue
            shape = tuple(t.shape)
            if np.dtype(t.dtype).kind != "f" or int(np.prod(shape)) <= LIGHT_LIMIT:
                continue
            v = stand_ins.get(t.name)
            if v is None:
                v = stand_ins[t.name] = gs.Variable(t.name, dtype=t.dtype, shape=list(shape))
            node.inputs[i] = v
    g.inputs = list(g.inputs) + list(stand_ins.values())
    model = gs.export_onnx(g, do_type_check=False)
    del model.graph.value_info[:]
    return model


def inferred_types(model: onnx.ModelProto) -> dict | None:
    """tensor name -> ValueInfoProto from shape inference (strict off, data propagation on); None if it fails.

    The model's own intermediate value_info is a cache an exporter or an earlier tool wrote, and may be
    wrong (onnxruntime merges it leniently and runs the model): inference starts without it, so a wrong
    declared shape is neither kept nor propagated (a channel count read from it broke pruning). Declared
    entries inference cannot reach (outputs of ops it does not know) are given back and inferred again."""
    lm = light_model(model)
    declared = {vi.name: vi for vi in lm.graph.value_info}
    del lm.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(lm, strict_mode=False, data_prop=True)
        types = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        unreached = [vi for name, vi in declared.items() if _adds_to(vi, types.get(name))]
        if unreached:
            lm.graph.value_info.extend(unreached)
            inferred = onnx.shape_inference.infer_shapes(lm, strict_mode=False, data_prop=True)
            types = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    except Exception:
        return None
    return types


def _adds_to(declared, inferred) -> bool:
    """Whether a declared value_info tells more than inference did without contradicting it: inference did
    not reach the tensor, or left dims unknown that the declaration gives (shapes the passes read from a
    run, fill_shapes). A declaration of another element type, rank or size than inference's is wrong."""
    if inferred is None or not inferred.type.tensor_type.HasField("shape"):
        return True
    d, i = declared.type.tensor_type, inferred.type.tensor_type
    if not d.HasField("shape") or (d.elem_type and i.elem_type and d.elem_type != i.elem_type):
        return False
    if len(d.shape.dim) != len(i.shape.dim):
        return False
    pairs = list(zip(d.shape.dim, i.shape.dim))
    if any(a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value != b.dim_value for a, b in pairs):
        return False
    return any(a.HasField("dim_value") and not b.HasField("dim_value") for a, b in pairs)


def with_shapes(model: onnx.ModelProto) -> gs.Graph:
    """gs.import_onnx(model) with every tensor's inferred dtype/shape (like importing the fully inferred
    model), and the shapes around multiply-accumulate ops that inference missed (complete_mac_shapes)."""
    graph = gs.import_onnx(model)
    types = inferred_types(model)
    if types is not None:
        apply_types(graph, types, reset=False)
    complete_mac_shapes(graph, model)
    return graph


#: the ops whose MACs (and merge prices) need their input and output shapes
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _known_dim(d, dynamic: set) -> bool:
    """A number, or one of the graph inputs' named dynamic dims (or an expression of them, '9*batch'):
    those count as 1 for MACs. The unk__N names inference makes up when it loses track are unknown."""
    return (isinstance(d, int) and d >= 0) or (isinstance(d, str) and any(n in d for n in dynamic))


def missing_priced_tensors(graph: gs.Graph) -> dict[str, gs.Variable]:
    """The tensors the cost model reads whose shapes inference left unknown (graph inputs and outputs
    excluded: their declared shapes are the user's): the inputs and outputs of Conv / Gemm / MatMul (MACs)
    and what an op with an element price is priced by (algebra/cost.ELEMENT_PRICES: its output, a
    reduction's input). Elementwise ops after a TorchScript export's run-time size arithmetic (a ShuffleNet
    channel shuffle, Swin's windows) otherwise cost nothing, and a model with nothing collapsed was
    predicted slower than itself (0.97x)."""
    from ..algebra.cost import ELEMENT_PRICES, REDUCTION_OPS

    dynamic = {d for t in graph.inputs for d in (t.shape or ()) if isinstance(d, str) and d}
    ends = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    missing: dict[str, gs.Variable] = {}
    for node in graph.nodes:
        if node.op in MAC_OPS:
            read = node.inputs[:1] + node.outputs[:1]
        elif node.op in REDUCTION_OPS:
            read = node.inputs[:1]
        elif ELEMENT_PRICES.get(node.op, 0.0) > 0:
            read = node.outputs[:1]
        else:
            continue
        for t in read:
            if (isinstance(t, gs.Variable) and id(t) not in ends
                    and (t.shape is None or not all(_known_dim(d, dynamic) for d in t.shape))):
                missing[t.name] = t
    return missing


def run_shapes(model: onnx.ModelProto, names) -> dict[str, list[int]]:
    """Shapes of the tensors `names` of `model` (weights included) from one onnxruntime run on random
    inputs (dynamic input dims run as 1). Names the model lacks are skipped; {} if the run fails. The
    caller's proto is left as it was."""
    return {n: list(np.shape(v)) for n, v in run_values(model, names).items()}


def run_values(model: onnx.ModelProto, names) -> dict[str, np.ndarray]:
    """The values of the tensors `names` of `model` on one onnxruntime run (see run_shapes)."""
    from ..core import runtime

    produced = {o for n in model.graph.node for o in n.output}
    names = [n for n in dict.fromkeys(names) if n in produced]
    if not names:
        return {}
    declared = {o.name for o in model.graph.output}
    n_out = len(model.graph.output)
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in declared)  # typed by ORT
    try:
        sess = runtime.session(model)
        values = sess.run(names, runtime.random_inputs(sess)[0])
    except Exception:
        return {}
    finally:
        del model.graph.output[n_out:]
    return {n: np.asarray(v) for n, v in zip(names, values)}


def fill_shapes(missing: dict[str, gs.Variable], shapes: dict[str, list[int]]) -> int:
    """Give each missing tensor the run's shape, dim by dim where inference knew some dims (those stay:
    a pruned channel count is inference's, not the run's). Returns how many were filled."""
    filled = 0
    for name, t in missing.items():
        run = shapes.get(name)
        if run is None:
            continue
        if t.shape is not None and len(t.shape) == len(run):
            t.shape = [d if isinstance(d, int) and d >= 0 else r for d, r in zip(t.shape, run)]
        else:
            t.shape = list(run)
        filled += 1
    return filled


def complete_mac_shapes(graph: gs.Graph, model: onnx.ModelProto) -> int:
    """Fill in, from one onnxruntime run of `model` (the model of `graph`, weights included), the
    shapes ONNX inference left unknown at the inputs and outputs of Conv / Gemm / MatMul and at the ops
    the cost model prices per element (missing_priced_tensors).

    TorchScript exports of windowed attention (torchvision's Swin) compute their Pad and Reshape sizes
    from Shape ops at run time; inference stops there and every attention and MLP MatMul after it
    would count zero MACs (Swin-T: 0.92 instead of 4.49 GMACs), which the report would believe.
    Returns the number of tensors filled: 0, without a run, when nothing is missing (a named dynamic
    input dim, e.g. a batch, is not missing); 0 when the run fails (the shapes stay unknown)."""
    missing = missing_priced_tensors(graph)
    return fill_shapes(missing, run_shapes(model, missing)) if missing else 0


def apply_types(graph: gs.Graph, types: dict, reset: bool = True) -> None:
    """Set dtype/shape of the graph's Variables from `types` (as gs.import_onnx would read them).

    reset=True: a Variable that inference did not reach (and is no graph input or output) loses its old
    dtype/shape, as it would when the graph is exported without value_info and imported again."""
    from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

    inputs = {id(t) for t in graph.inputs}
    outputs = {id(t) for t in graph.outputs}
    for t in graph.tensors().values():
        if not isinstance(t, gs.Variable) or id(t) in inputs:
            continue
        vi = types.get(t.name)
        if vi is not None and vi.type.ByteSize() > 0:
            t.dtype = get_onnx_tensor_dtype(vi)
            t.shape = get_onnx_tensor_shape(vi)
        elif reset and id(t) not in outputs:
            t.dtype = None
            t.shape = None


#: most elements one --input-shape may give (8 GiB of float32): the check allocates inputs of that size, and a
#: dim past int64 cannot even be written into the model
MAX_INPUT_ELEMENTS = 2 ** 31


def parse_input_shapes(specs) -> dict[str, list[int]]:
    """--input-shape values ("input:1,3,224,224", or "1,3,224,224" for a model with one input; a dict
    {name: dims} or, for one input, a list of ints from the library) -> {name: [dims]}, the name "" standing
    for the only input."""
    from ..errors import CollapseError

    if isinstance(specs, dict):
        items = list(specs.items())
    elif (isinstance(specs, (list, tuple)) and specs
          and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in specs)):
        items = [("", list(specs))]   # [1, 3, 224, 224]: the dims of a model's only input, as "1,3,224,224"
    elif not isinstance(specs, (str, list, tuple)):
        raise CollapseError(f"input_shapes must be {{name: [dims]}} or 'NAME:D0,D1,...' strings, got "
                            f"{type(specs).__name__}")
    else:
        items = []
        for spec in ([specs] if isinstance(specs, str) else list(specs)):
            if not isinstance(spec, str):
                raise CollapseError(f"input shape {spec!r}: expected NAME:D0,D1,... (or D0,D1,... for a "
                                    "model with one input)")
            name, _, dims = spec.rpartition(":")
            items.append((name, [d for d in dims.replace("x", ",").split(",") if d.strip()]))
    out: dict[str, list] = {}
    for name, dims in items:
        try:
            values = [_dim_value(d) for d in dims]
        except (TypeError, ValueError):
            values = []
        if not values or any(v is not None and v < 1 for v in values) or any(isinstance(d, (bool, float))
                                                                               for d in dims):
            shown = ",".join(str(d) for d in dims) if isinstance(dims, (list, tuple)) else repr(dims)
            raise CollapseError(f"--input-shape {name + ':' if name else ''}{shown}: give positive integers (a name "
                                "such as N keeps a dynamic dim dynamic), e.g. input:1,3,224,224 or input:N,3,224,224")
        if name in out:
            raise CollapseError(f"input shape for {name or 'the input'!r} given twice")
        elements = np.prod([float(v) for v in values if v is not None])
        if int(elements) > MAX_INPUT_ELEMENTS:
            raise CollapseError(f"--input-shape {name + ':' if name else ''}{','.join(map(str, values))}: "
                                f"{elements:.3g} elements, more than "
                                f"{MAX_INPUT_ELEMENTS:,} (the check runs inputs of this size): give a smaller size")
        out[name] = values
    return out


def _dim_value(d) -> int | None:
    """A size, or None for a name (N, batch, ?): that dim stays dynamic."""
    if d is None:
        return None
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        return int(d)
    text = str(d).strip()
    if text == "?" or text.isidentifier():
        return None
    return int(text)


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]], in_place: bool = False) -> onnx.ModelProto:
    """`model` with the given sizes for its inputs' dynamic dims (as onnxslim's --input-shapes and
    onnxsim's --overwrite-input-shape): costs, MACs, the check inputs and size arithmetic then see the
    real sizes, and the model written takes these shapes only. A static dim must be given as it is;
    intermediate shapes are dropped and inferred again, the outputs' from the new inputs."""
    from ..calib import model_inputs
    from ..errors import CollapseError

    inputs = {name: dims for name, dims, _ in model_inputs(model)}
    shown = ", ".join(f"{n} ({_fmt_dims(model, n)})" for n in inputs) or "none"
    if "" in shapes:
        if len(inputs) != 1:
            raise CollapseError(f"the model has {len(inputs)} inputs ({shown}): name each, --input-shape "
                                "NAME:D0,D1,...")
        shapes = {next(iter(inputs)): shapes[""], **{k: v for k, v in shapes.items() if k}}
    for name, dims in shapes.items():
        if name not in inputs:
            raise CollapseError(f"--input-shape {name}: the model has no input {name!r}; its inputs: {shown}")
        have = inputs[name]
        if len(dims) != len(have):
            raise CollapseError(f"--input-shape {name}: {len(dims)} dims given, the input has rank {len(have)} "
                                f"({_fmt_dims(model, name)})")
        for axis, (d, h) in enumerate(zip(dims, have)):
            if h is not None and h != d:
                raise CollapseError(f"--input-shape {name}: dim {axis} of the input is fixed at {h}, not "
                                    f"{'a dynamic size' if d is None else d} ({_fmt_dims(model, name)})")
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    # one dim name is one size across the inputs (ONNX's meaning of a dim_param): fixing N on one input
    # fixes it on the others, or their check inputs would take another batch and broadcast against it
    named: dict[str, int] = {}
    for vi in model.graph.input:
        for axis, (d, v) in enumerate(zip(vi.type.tensor_type.shape.dim, shapes.get(vi.name, ()))):
            if v is not None and d.dim_param:
                if named.setdefault(d.dim_param, int(v)) != int(v):
                    raise CollapseError(f"--input-shape {vi.name}: dim {axis} is {d.dim_param!r}, which another "
                                        f"input's shape sets to {named[d.dim_param]}, not {v}: one name is one size")
    kept = set()   # the names of the dims left dynamic
    for vi in model.graph.input:
        given = shapes.get(vi.name)
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            v = given[i] if given is not None else None
            if v is None and d.dim_param:
                v = named.get(d.dim_param)
            if v is None:
                if d.dim_param:
                    kept.add(d.dim_param)
                continue
            d.Clear()
            d.dim_value = int(v)
    del model.graph.value_info[:]   # the old intermediate shapes name the dynamic dims
    types = inferred_types(model) or {}
    for vi in model.graph.output:
        new = types.get(vi.name)
        dims = new.type.tensor_type.shape.dim if new is not None and new.type.HasField("tensor_type") else ()
        if dims and all(d.HasField("dim_value") or (d.dim_param and d.dim_param in kept) for d in dims):
            vi.type.tensor_type.shape.CopyFrom(new.type.tensor_type.shape)
    return model


def input_shapes_text(model: onnx.ModelProto) -> str:
    """"input 1x3x224x224, mask Nx49" for the model's inputs (dynamic dims by name)."""
    from ..calib import model_inputs

    return ", ".join(f"{name} {_fmt_dims(model, name)}" for name, _, _ in model_inputs(model))


def _fmt_dims(model: onnx.ModelProto, name: str) -> str:
    vi = next(v for v in model.graph.input if v.name == name)
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in vi.type.tensor_type.shape.dim)


def dynamic_inputs(model: onnx.ModelProto, batch: bool = False) -> list[str]:
    """"name (NxCxHxW)" for each input with a dynamic dim after the first (a dynamic batch is the usual
    per-sample count): MACs, the planner's prices and random check inputs take those dims as 1.
    `batch=True`: a dynamic first dim counts too."""
    from ..calib import model_inputs

    first = 0 if batch else 1
    return [f"{name} ({_fmt_dims(model, name)})" for name, dims, _ in model_inputs(model)
            if any(d is None for d in dims[first:])]
