"""Loading, saving and small graph helpers shared by every ONNX pass.

Loading turns every way a file can be wrong into one CollapseError line; saving is atomic
(temp file in the target folder + os.replace) so a crash never leaves a half-written model.
"""
from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from ..errors import CollapseError
from ..core.names import fresh_name

ONNX_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
#: ops that give a new value on every run, even from the same inputs
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
#: types stored two elements per byte: their size is not count x numpy itemsize
_PACKED_TYPES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


@dataclass
class ModelFile:
    """A model parsed from a file, with where it came from: what a run passes around instead of the
    path, so the file is parsed once (the CLI's output checks need its external data files too)."""
    model: onnx.ModelProto
    path: Path
    external_data: list[Path]   # the files its initializers were read from, in the model's folder


def load_model_file(path: str | os.PathLike) -> ModelFile:
    files: list[Path] = []
    return ModelFile(load_model(path, files), Path(path), files)


def external_data_files(model: onnx.ModelProto, path) -> list[Path]:
    """The external data files an (unloaded) model refers to, in its folder, sorted."""
    from onnx.external_data_helper import uses_external_data

    locs = {e.value for t in model.graph.initializer if uses_external_data(t)
            for e in t.external_data if e.key == "location"}
    return [Path(path).parent / loc for loc in sorted(locs)]


def load_model(path: str | os.PathLike, external_files: list | None = None) -> onnx.ModelProto:
    """Read and validate an ONNX file, with external data, or raise a one-line CollapseError.
    `external_files`, if given, receives the external data files read."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise CollapseError(f"{p}: no such file; check the path") from None
    except OSError as exc:   # a symbolic link loop, a file used as a folder: "no such file" was untrue
        raise CollapseError(f"{p}: {exc.strerror or exc}; check the path") from None
    if stat.S_ISDIR(mode):
        raise CollapseError(f"{p}: is a directory, expected an .onnx file")
    if not stat.S_ISREG(mode):   # a FIFO or device has size 0: it was called an empty file (a FIFO's read blocks)
        from ..outputs import _kind_of

        raise CollapseError(f"{p}: is {_kind_of(mode)}, not an ONNX file; give a regular .onnx file")
    if not os.access(p, os.R_OK):
        raise CollapseError(f"{p}: not readable (permission denied); check its permissions")
    if p.stat().st_size == 0:
        raise CollapseError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise CollapseError(f"{p}: not an ONNX model or the file is truncated/corrupt ({_short(exc)})") from None
    except Exception as exc:  # protobuf raises several types depending on the backend
        raise CollapseError(f"{p}: cannot parse as ONNX ({_short(exc)}); is it truncated or another format?") from None
    if not model.graph.node and not model.graph.output:
        raise CollapseError(f"{p}: parsed, but holds no graph; not an ONNX model or the file is truncated")
    if external_files is not None:
        external_files.extend(external_data_files(model, p))
    _load_external(model, p)
    check_model(model, str(p))
    name_nameless_nodes(model)
    return normalize_model(model)


#: the IR version models are read as at least: IR 4 lets initializers be constants, not graph inputs
MIN_IR_VERSION = 4


def normalize_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, in place, in the form every pass reads: an IR < 4 model (opset <= 8 era exporters: every
    initializer also a graph input) raised to IR 4 (under IR < 4 shape inference ignores initializers that
    are not inputs, and every model the passes export, weights as initializers only, would be invalid; the
    ops and their semantics are the opset's, which stays as it is), and sparse initializers written dense
    (graphsurgeon reads them as float64 constants of the wrong shape: the result did not load)."""
    if model.ir_version < MIN_IR_VERSION:
        model.ir_version = MIN_IR_VERSION
    if model.graph.sparse_initializer:
        dense = [_dense(sp) for sp in model.graph.sparse_initializer]
        del model.graph.sparse_initializer[:]
        model.graph.initializer.extend(dense)
    # Constant(sparse_value=...): graphsurgeon drops the attribute, leaving no value; inside a local function
    # (written out at the top level once inlined) or an If/Loop body onnxruntime 1.2x crashes the process on it
    # (a segfault creating the session that verifies the file as given)
    for n in _sparse_constants(model):
        value = _dense(n.attribute[0].sparse_tensor)
        del n.attribute[:]
        n.attribute.append(onnx.helper.make_attribute("value", value))
    return model


def subgraphs(node: onnx.NodeProto) -> list:
    """The bodies an If / Loop / Scan node holds (its GRAPH and GRAPHS attributes)."""
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]


def every_node(model: onnx.ModelProto):
    """Every node of `model`: the graph's, its If / Loop / Scan bodies' (at any depth), the local functions'."""
    def walk(nodes):
        for n in nodes:
            yield n
            for g in subgraphs(n):
                yield from walk(g.node)

    yield from walk(model.graph.node)
    for f in model.functions:
        yield from walk(f.node)


#: ops that make or read ONNX optional values
OPTIONAL_OPS = {"Optional", "OptionalGetElement", "OptionalHasElement"}


def optional_values(model: onnx.ModelProto) -> list[str]:
    """Where `model` uses ONNX optional types, as "name (op or graph input/output)": onnx-graphsurgeon, which
    every rewrite goes through, cannot write such a value back (`unhashable type: 'TypeProto'`: exit 3 and a
    traceback, for a model with nothing to collapse too)."""
    found = [f"{v.name} (graph {kind})" for kind, vs in (("input", model.graph.input), ("output", model.graph.output))
             for v in vs if v.type.WhichOneof("value") == "optional_type"]

    found += [f"{n.name or n.output[0]} ({n.op_type})" for n in every_node(model)
              if n.op_type in OPTIONAL_OPS and n.domain in ("", "ai.onnx")]
    return found


def _sparse_constants(model: onnx.ModelProto) -> list:
    """Every Constant(sparse_value=...) node: the graph's, its subgraphs', the local functions'."""
    return [n for n in every_node(model)
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "sparse_value"]


def _needs_normalizing(model: onnx.ModelProto) -> bool:
    """Whether normalize_model would change the model."""
    return (model.ir_version < MIN_IR_VERSION or bool(model.graph.sparse_initializer)
            or bool(_sparse_constants(model)))


def _dense(sp: onnx.SparseTensorProto) -> onnx.TensorProto:
    """A sparse initializer as the dense tensor it stands for (indices: [NNZ] linear or [NNZ, rank])."""
    from onnx import numpy_helper

    values = numpy_helper.to_array(sp.values)
    dims = [int(d) for d in sp.dims]
    out = np.zeros(int(np.prod(dims)) if dims else 1, dtype=values.dtype)
    if values.size:
        idx = numpy_helper.to_array(sp.indices).astype(np.int64)
        flat = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), dims)
        out[flat] = values.reshape(-1)
    return numpy_helper.from_array(out.reshape(dims), sp.values.name)


def name_nameless_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every top-level node a unique, stable name, so every activation has a key a scores file
    can name: a nameless node becomes "<OpType>_<index>" (its position in the topologically sorted
    node list); a node whose name repeats an earlier node's becomes "<name>_<k>" (ONNX requires
    unique node names and onnxruntime refuses a model without them; names carry no semantics)."""
    taken = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if n.name and n.name not in seen:
            seen.add(n.name)
            continue
        n.name = fresh_name(n.name or f"{n.op_type}_{i}", taken)
        seen.add(n.name)
    return model


def _needs_names(model: onnx.ModelProto) -> bool:
    names = [n.name for n in model.graph.node]
    return not all(names) or len(set(names)) != len(names)


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    missing = []
    for t in model.graph.initializer:
        if uses_external_data(t):
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            if not (path.parent / loc).exists():
                missing.append(loc)
    if missing:
        raise CollapseError(
            f"{path}: external data file(s) missing: {', '.join(sorted(set(missing)))}; "
            "keep them in the model's folder")
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise CollapseError(f"{path}: cannot read external data ({_short(exc)})") from None


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    """onnx.checker on the model's structure. The checker serializes what it is given, so it gets the
    weight-less copy shape inference uses (onnx/shapes.light_model): the weights' contents are read by
    onnxruntime in verification anyway. ResNet-18: 0.2 s -> 0.01 s per call."""
    from .shapes import light_model

    if not model.graph.output:   # onnxruntime's session on it failed deep in the gate: exit 3, a traceback
        raise CollapseError(f"{where}: the graph declares no outputs, so it computes nothing to collapse or verify; "
                            "declare the tensors it computes as graph outputs (graph.output)")
    _check_weight_sizes(model, where)
    light = light_model(model)
    try:
        onnx.checker.check_model(light)
    except ValueError:
        # models over 2 GiB cannot be checked in memory; the passes still validate shapes later
        pass
    except onnx.checker.ValidationError as exc:
        shapeless = [f"{kind} {v.name!r}" for kind, vs in (("input", model.graph.input), ("output", model.graph.output))
                     for v in vs if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")]
        if shapeless and all(s.startswith("output") for s in shapeless) and _outputs_inferred(light):
            return   # `make_tensor_value_info(name, type, None)` outputs: shape inference gives them their shapes
        if shapeless and "'shape' of 'type' is required" in str(exc):   # the checker does not say which tensor
            raise CollapseError(f"{where}: invalid ONNX model (graph {', '.join(shapeless[:3])}: no shape declared; "
                                "ONNX requires one, its dims may be unknown): give it its rank, e.g. "
                                "onnx.helper.make_tensor_value_info(name, elem_type, ['N', 3, 'H', 'W'])") from None
        raise CollapseError(f"{where}: invalid ONNX model ({_short(exc)})") from None


def _outputs_inferred(light: onnx.ModelProto) -> bool:
    """Whether onnx's shape inference gives every graph output of `light` (a weight-less copy, changed here) a
    shape, and the checker then passes. A graph output declared without one (onnx.helper.make_tensor_value_info(
    name, type, None), common in hand-built models) is what the checker refuses; onnxruntime runs it, and every
    model the passes write declares the inferred shapes. An input without a shape stays refused: the check's
    random inputs need its rank."""
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in light.graph.output:
            if out.type.HasField("tensor_type") and not out.type.tensor_type.HasField("shape"):
                got = known.get(out.name)
                if got is None or not got.type.tensor_type.HasField("shape"):
                    return False
                out.type.tensor_type.shape.CopyFrom(got.type.tensor_type.shape)
        onnx.checker.check_model(light)
        return True
    except Exception:   # noqa: BLE001 - inference or the checker refuses: the caller's message stands
        return False


def _raw_size(t: onnx.TensorProto) -> int | None:
    """Bytes of `t`'s data in raw form, from its shape and type; None for a packed 4-bit type or one
    numpy lacks (bfloat16, float8), which the checker and onnxruntime judge."""
    from onnx.helper import tensor_dtype_to_np_dtype

    if t.data_type in _PACKED_TYPES:
        return None
    try:
        itemsize = tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        return None
    return (int(np.prod(t.dims)) if len(t.dims) else 1) * itemsize


def _check_weight_sizes(model: onnx.ModelProto, where: str) -> None:
    """What the checker would have said about the weights light_model() leaves out: the data holds
    exactly dims' product elements."""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in (0, onnx.TensorProto.STRING) \
                or t.data_type in _PACKED_TYPES:
            continue
        if t.HasField("raw_data"):
            need = _raw_size(t)
            if need is None:
                continue
            have = len(t.raw_data)
        else:
            field = onnx.helper.tensor_dtype_to_field(t.data_type)
            need, have = (int(np.prod(t.dims)) if len(t.dims) else 1), len(getattr(t, field))
            if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                need *= 2
        if have != need:
            raise CollapseError(f"{where}: invalid ONNX model (initializer {t.name!r} holds {have} "
                                f"{'bytes' if t.HasField('raw_data') else 'values'} but its shape "
                                f"{list(t.dims)} needs {need}); re-export the model")


def as_model(model_or_path, expand: bool = True) -> tuple[onnx.ModelProto, Path | None]:
    """The model and its path (None for a proto). `expand`: onnxruntime's fused contrib ops written as the
    standard ops they stand for (onnx/contrib.py: their activations are seen); a caller that verifies against
    the file as given asks for it as it is and expands it itself."""
    model, path = _as_model(model_or_path)
    if expand:
        from .contrib import expand_contrib_ops

        model = expand_contrib_ops(model, in_place=path is not None)   # a proto read here is ours
    return model, path


def random_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that draw random numbers, as "name (op)": RANDOM_OPS, and Dropout in training mode (its training_mode
    input not a constant False, its ratio not a constant 0), what an export without model.eval() writes. The
    ONNX twin of fx/api.random_nodes: such a model's outputs change from run to run (and onnx's float64
    evaluator draws other numbers than onnxruntime), so no result of it can be verified."""
    consts = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t

    def value(name):
        t = consts.get(name)
        if t is None:
            return None
        try:
            from onnx import numpy_helper

            return numpy_helper.to_array(t)
        except Exception:
            return None
    found = []
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in RANDOM_OPS:
            found.append(f"{n.name or n.output[0]} ({n.op_type})")
        elif n.op_type == "Dropout":
            train = value(n.input[2]) if len(n.input) > 2 and n.input[2] else False
            ratio = value(n.input[1]) if len(n.input) > 1 and n.input[1] else None
            if not dropout_passes_through(train, ratio):
                found.append(f"{n.name or n.output[0]} (Dropout in training mode)")
    return found


def dropout_passes_through(train, ratio) -> bool:
    """Whether a standard Dropout returns its input, from the constant values of its training_mode and ratio
    inputs (None: not a constant; pass False for an absent training_mode, which means inference): inference
    mode, or a ratio of 0 (keeps every element, scales by 1/(1-0)). random_nodes and the clean-up's
    noop_dropout both read it."""
    if train is not None and not bool(np.asarray(train).any()):
        return True
    return ratio is not None and np.asarray(ratio).size > 0 and float(np.asarray(ratio).max()) == 0.0


def _as_model(model_or_path) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model_or_path, ModelFile):
        return model_or_path.model, model_or_path.path
    if isinstance(model_or_path, onnx.ModelProto):
        ext = next((t.name for t in model_or_path.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                    and not t.raw_data), None)
        if ext is not None:   # a proto from onnx.load(..., load_external_data=False): its weights are elsewhere
            raise CollapseError(f"the ModelProto's weights are not loaded (initializer {ext!r} is stored in an "
                                "external data file): pass the model's path, or onnx.load(path) with its data")
        check_model(model_or_path, "the ModelProto")   # what a file gets on load: one rule for path and proto
        if _needs_names(model_or_path) or _needs_normalizing(model_or_path):
            copy = onnx.ModelProto()
            copy.CopyFrom(model_or_path)   # the caller's proto is never modified
            return normalize_model(name_nameless_nodes(copy)), None
        return model_or_path, None
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path), Path(model_or_path)
    raise CollapseError(f"expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


#: a model file protobuf can still parse stays under 2 GiB; beyond this the weights go to a data file
EMBED_LIMIT = 2 ** 31 - 2 ** 26
#: initializers of at least this many bytes go to the data file when a model is written with one
EXTERNAL_MIN_BYTES = 1024


def needs_external_data(model: onnx.ModelProto, input_had_external: bool = False) -> bool:
    """Write `model` with a data file? Yes when its input had one (the output keeps the input's
    storage) or when embedding would pass protobuf's 2 GiB limit."""
    return input_had_external or sum(t.ByteSize() for t in model.graph.initializer) > EMBED_LIMIT


def data_file_for(model_path: str | os.PathLike) -> Path:
    """Where a model written with external data keeps it: `<model file name>.data` beside it."""
    p = Path(model_path)
    return p.with_name(p.name + ".data")


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every field but its graph's initializers (no weight copied): the structure that
    onnxruntime sessions, the checker, shape inference and the piecewise writer start from."""
    shell = onnx.ModelProto()
    copy_fields(model, shell, skip="graph")
    copy_fields(model.graph, shell.graph, skip="initializer")
    return shell


def external_ref(t: onnx.TensorProto, location: str, offset: int | None = None,
                 length: int | None = None) -> onnx.TensorProto:
    """`t` without its data (every other field kept), marked external: at `location` (with its offset
    and length in that file), or handed over in memory (add_external_initializers)."""
    ref = onnx.TensorProto()
    copy_fields(t, ref, skip="raw_data")
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        ref.ClearField(f)
    ref.data_location = onnx.TensorProto.EXTERNAL
    entries = [("location", location)]
    if length is not None:
        entries += [("offset", str(offset)), ("length", str(length))]
    for k, v in entries:
        e = ref.external_data.add()
        e.key, e.value = k, v
    return ref


def external_data_pieces(model: onnx.ModelProto, location: str):
    """(model file pieces, data file chunks) for `model` written with its large initializers in a data
    file named `location` (relative to the model's folder): the same layout onnx.save(...,
    save_as_external_data=True) writes, built one tensor at a time and without touching `model`."""
    from onnx import numpy_helper

    inits = model.graph.initializer
    # by index: protobuf hands out a new Python wrapper per access, so id() says nothing
    big = [i for i, t in enumerate(inits)
           if t.data_location != onnx.TensorProto.EXTERNAL and t.data_type != onnx.TensorProto.STRING
           and t.ByteSize() >= EXTERNAL_MIN_BYTES]

    def data_of(t) -> bytes:
        return t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()

    def chunks():
        for i in big:
            yield data_of(inits[i])

    refs, offset = {}, 0
    for i in big:
        n = _raw_size(inits[i])   # from shape and type: reading raw_data would copy it
        n = len(data_of(inits[i])) if n is None else n
        refs[i] = external_ref(inits[i], location, offset, n)
        offset += n
    return _model_pieces(model, refs), chunks()


def _model_pieces(model: onnx.ModelProto, refs: dict):
    """The model file as byte strings whose concatenation is the file: the structure, then one
    `ModelProto(graph=GraphProto(initializer=[t]))` per initializer, in order (refs[i] in place of
    initializer i where given). Protobuf parses concatenated messages as one merged message
    (singular sub-messages merge, repeated fields append), so it reads back as the same model."""
    yield without_initializers(model).SerializeToString()
    for i, t in enumerate(model.graph.initializer):
        # the piece's wire form written by hand, the tensor's own bytes after a few header bytes: a
        # piece proto would hold a copy of the tensor besides its serialization
        data = refs.get(i, t).SerializeToString()
        tensor = _INITIALIZER_TAG + _varint(len(data))
        yield _GRAPH_TAG + _varint(len(tensor) + len(data)) + tensor
        yield data


#: wire tags (field number << 3 | 2, length-delimited) of ModelProto.graph (7), GraphProto.initializer (5)
_GRAPH_TAG, _INITIALIZER_TAG = bytes([7 << 3 | 2]), bytes([5 << 3 | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike, external: bool | None = None) -> Path:
    """Write next to the destination, fsync, then rename: readers never see a partial file.
    external: write the large initializers to data_file_for(path) (None: only if the model needs it)."""
    if external is None:
        external = needs_external_data(model)
    if not external:
        return write_bytes_atomic(serialized_pieces(model), path)
    from ..outputs import checked_output_file, signals_blocked, write_temp

    data = data_file_for(path)
    new_data = not os.path.lexists(data)
    pieces, chunks = external_data_pieces(model, data.name)
    # both staged, then both renamed with the signals held: the model records offsets into its data file, and a
    # data file renamed before a failed (or ^C'd) model write left an earlier output's model reading new weights
    dests = [checked_output_file(data), checked_output_file(path)]
    temps: list = []
    landed = 0
    try:
        for dest, content in zip(dests, (chunks, pieces)):
            temps.append(write_temp(dest, content))   # removes its own temp file when the write fails
        with signals_blocked():
            for tmp, dest in zip(temps, dests):
                os.replace(tmp, dest)
                landed += 1
        return dests[1]
    except BaseException as exc:
        for tmp in temps[landed:]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if landed == 1 and new_data:   # a data file no model refers to is not left behind
            with contextlib.suppress(OSError):
                os.unlink(dests[0])
        if isinstance(exc, OSError):   # as write_bytes_atomic: one line for a library caller too
            raise CollapseError(f"output {path}: cannot write ({exc.strerror or exc}); nothing was written there: "
                                "free space or choose another path") from None
        raise


def serialized_pieces(model: onnx.ModelProto):
    """The model's serialization as a sequence of byte strings whose concatenation is the file
    (_model_pieces with every weight inside). Writing it that way never holds the whole serialization
    (plus protobuf's own buffer) in memory: for ResNet-18 that is ~90 MB less peak at the end of a run."""
    return _model_pieces(model, {})


def copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of protobuf message `src` except `skip` into `dst`: a model without its
    weights, built without copying them."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def write_bytes_atomic(data, path: str | os.PathLike, what: str = "output") -> Path:
    """Temp file beside the destination (a name the next run recognises as stale if this one is
    killed), fsync, rename; the mode is what a plain open() gives (umask, or the replaced file's).
    `data`: bytes, or an iterable of byte strings written one after the other. The path gets the CLI's
    output checks first (outputs.checked_output_file; `what` names it in the message): a folder, device or
    FIFO is never replaced and a missing folder is refused, not created. A symlink is written through."""
    from ..outputs import checked_output_file, write_temp

    dest = checked_output_file(path, what)
    tmp = None
    try:
        tmp = write_temp(dest, data)   # removes its temp file itself when the write fails
        os.replace(tmp, dest)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):   # a full disk, a quota, an I/O error: one line for a library caller too
            raise CollapseError(f"{what} {path}: cannot write ({exc.strerror or exc}); nothing was written there: "
                                "free space or choose another path") from None
        raise
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike, what: str = "output") -> Path:
    return write_bytes_atomic(text.encode(), path, what)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] + ("..." if len(text) > 160 else "") if text else type(exc).__name__


# --------------------------------------------------------------------------- graph helpers

def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def toposort(graph: gs.Graph) -> gs.Graph:
    """graph.toposort(), skipped when the node order already is topological. gs sorts by walking
    hierarchy levels recursively (0.8 s per call on a TorchScript Swin-T, and the passes ask after
    every change); the check is one pass over the nodes. Graphs with subgraphs always take gs's sort."""
    produced = {id(t) for n in graph.nodes for t in n.outputs}
    ready: set = set()
    for n in graph.nodes:
        if any(isinstance(v, gs.Graph) for v in n.attrs.values()):
            return graph.toposort()
        for t in n.inputs:
            if id(t) in produced and id(t) not in ready:
                return graph.toposort()
        ready.update(id(t) for t in n.outputs)
    return graph


def to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph, keeping the template's opset imports, model-level metadata and the node metadata
    of the nodes that kept their names (graphsurgeon drops node metadata: a dynamo export's module paths
    live there, and every later step finds activation keys and residual blocks by them)."""
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = template.ir_version
    del out.opset_import[:]
    out.opset_import.extend(template.opset_import)
    out.producer_name = "collapse_passes"
    del out.metadata_props[:]
    out.metadata_props.extend(template.metadata_props)
    keep_node_metadata(out, node_key_names(template))
    return out


def keep_node_metadata(out: onnx.ModelProto, node_meta: dict) -> None:
    """Give the nodes that kept their names their metadata_props back (graphsurgeon drops them): the
    dynamo exporter's module paths there are the activation keys, so a second run on the result finds
    the activations left alone under the same keys. Entries the node already has are kept unless
    node_meta gives them a new value."""
    for node in out.graph.node:
        meta = node_meta.get(node.name)
        if meta:
            merged = {**{p.key: p.value for p in node.metadata_props}, **meta}
            del node.metadata_props[:]
            node.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in merged.items())


def const_value(t) -> np.ndarray | None:
    """The value of a tensor if it is a constant (initializer or Constant node output)."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op == "Identity" and t.inputs[0].inputs:
        # the TorchScript exporter shares equal initializers through Identity nodes
        return const_value(t.inputs[0].inputs[0])
    if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        attrs = t.inputs[0].attrs
        if "value" in attrs:
            v = attrs["value"]
            return np.asarray(v.values if hasattr(v, "values") else v)
        for k in ("value_float", "value_int"):
            if k in attrs:
                return np.asarray(attrs[k])
        for k in ("value_floats", "value_ints"):
            if k in attrs:
                return np.asarray(attrs[k])
    return None


def is_const(t) -> bool:
    return const_value(t) is not None


def producer(t):
    return t.inputs[0] if t.inputs else None


def consumers(t) -> list:
    return list(t.outputs)


def single_consumer(t):
    outs = list(t.outputs)
    return outs[0] if len(outs) == 1 else None


def is_graph_output(graph: gs.Graph, t) -> bool:
    return any(o is t for o in graph.outputs)


def replace_tensor_uses(graph: gs.Graph, old, new) -> None:
    """Make every consumer of `old` read `new` instead; graph outputs keep their name."""
    for node in list(old.outputs):
        for i, inp in enumerate(node.inputs):
            if inp is old:
                node.inputs[i] = new
    for i, out in enumerate(graph.outputs):
        if out is old:
            ident = gs.Node(op="Identity", name=unique_name(graph, f"{old.name}_identity"),
                            inputs=[new], outputs=[gs.Variable(old.name, dtype=old.dtype, shape=old.shape)])
            # the old producer's output must be renamed so the graph output name stays stable
            old.name = tensor_namer(graph)(f"{old.name}__replaced")
            graph.nodes.append(ident)
            graph.outputs[i] = ident.outputs[0]


def unique_name(graph: gs.Graph, base: str) -> str:
    """A node name no node of `graph` has: base, base_1, ..."""
    return fresh_name(base, {n.name for n in graph.nodes})


def tensor_namer(graph: gs.Graph):
    """fresh(base) -> a tensor name no tensor of `graph` has yet, nor any name it returned before (base, then
    base_1, base_2, ...): for the Variables a rewrite adds between existing ops."""
    taken = set(graph.tensors())
    return lambda base: fresh_name(base, taken)


def add_after(graph: gs.Graph, out, const, suffix: str, add_name: str) -> gs.Node:
    """`out` becomes its producer's value + const: the producer now writes a fresh `<out>__<suffix>`, an Add (named
    add_name, or the first free name after it) writes `out`, so out's readers and name stay. Returns the Add (its
    inputs[0] is the raw tensor). The one way a rewrite appends a bias (map) to an op's output: the names it adds
    are checked against the model's (a model holding `<out>__<suffix>` got a wrong or unloadable graph)."""
    p = out.inputs[0]
    raw = gs.Variable(tensor_namer(graph)(f"{out.name}__{suffix}"), dtype=out.dtype)
    p.outputs[p.outputs.index(out)] = raw
    add = gs.Node("Add", name=unique_name(graph, add_name), inputs=[raw, const], outputs=[out])
    graph.nodes.append(add)
    return add


def make_const(graph: gs.Graph, base: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(fresh_name(base, set(graph.tensors())), np.ascontiguousarray(value))


def node_key_names(model: onnx.ModelProto) -> dict[str, dict[str, str]]:
    """Node name -> its metadata_props, read from the proto (graphsurgeon drops node metadata)."""
    return {n.name: {p.key: p.value for p in n.metadata_props} for n in model.graph.node}
