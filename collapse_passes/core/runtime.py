"""One place for running ONNX models on onnxruntime: sessions, random inputs, timing, comparison.

    session(model, optimize=False, threads=None)   -> onnxruntime.InferenceSession (CPU), thread
                                                      spinning off; CollapseError if it cannot load
                                                      (RuntimeError with ours=True)
    input_specs(model_or_session)                  -> [(name, shape, numpy dtype)]
    random_inputs(model_or_session, count, seed)   -> [feed dict]; dynamic dims taken as 1, or as `shapes`
    check_shapes(model)                            -> {input: dims} the gate's random inputs take
    check_size_ladder(model)                       -> the sizes the gate tries, in order, until the model runs
    check_inputs(model, count, seed)               -> random_inputs at check_shapes' sizes, index_ranges' ids
    index_ranges(model)                            -> {input: n} integer inputs that index a table of n rows
    random_in_range(model, samples, count, seed)   -> [feed dict] in the range of calibration samples
    run(model_or_session, feeds)                   -> ([[outputs] per feed], output names)
    outputs(model_or_session, feed)                -> [outputs] of one feed
    time_runs(sess, feed, repeat, warmup)          -> [seconds per run]
    time_interleaved({key: sess}, feed, rounds)    -> {key: [seconds]}, every round runs every
                                                      session once in shuffled order
    compare(ref_outs, outs, names, rtol, atol)     -> Comparison (the one tolerance rule below)

Tolerance rule (used by verification, the TVM check and the benchmarks): an element passes when
|out - ref| <= atol + rtol * max(|ref|, rms(ref)), rms over the output tensor. fp32 re-association
(merged kernels sum in another order) errs in proportion to the tensor's scale, not to an element
that happens to be near zero. max_rel is reported on the same scale. Where the reference itself is
NaN/Inf the result must hold the same value there; the other elements are compared as usual. (The gate
also fails when the reference is NaN/Inf everywhere: nothing_compared.)

Thread spinning is off in every session ("session.intra_op.allow_spinning" = "0"): an idle session
must not spin-wait and steal cores from the next one (interleaved timing, shared machines).
`model` may be an onnx.ModelProto, serialized bytes or a path. onnxruntime is imported lazily.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from ..errors import CollapseError

ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _bytes(model) -> bytes | str:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return model.SerializeToString()


def session(model, optimize: bool | str = False, threads: int | None = None, spinning: bool = False,
            ours: bool = False, extra_outputs=(), initializers=(), feed_weights: bool = False):
    """A CPU InferenceSession. optimize=False runs the graph as written; True applies onnxruntime's
    graph optimizations (layout included, NCHWc); "auto" (what verification uses) optimizes when the
    weights are at most AUTO_OPTIMIZE_BYTES. The optimized session holds re-laid-out copies of the
    weights (ResNet-18, 44 MB of weights: +60-80 MB peak, 0-10 % faster), and it is what makes
    depthwise convs fast (CIFAR MobileNetV2 at 224, 9 MB of weights: 360 -> 190 ms a run, +16 MB).
    An optimized session that onnxruntime cannot build falls back to the graph as written.

    A load failure is the user's problem (CollapseError) unless ours=True: a model this package
    made that onnxruntime cannot load is a bug (RuntimeError). `extra_outputs` names intermediate
    values the session also returns (after the graph's outputs); `initializers` are TensorProtos
    the model reads besides its own (a region of a bigger model, whose weights are not copied into
    it); `model` must then be a ModelProto.

    feed_weights=True (a session that runs the graph as written, for a few runs: verification): the
    large float weights become graph inputs, fed with every run() from our numpy copies (WeightsFed).
    onnxruntime copies initializers handed over as external ones into its own buffers, so the
    weights were held twice for the session's life (ResNet-18: +39 MB); fed, they are held once."""
    if optimize == "auto":
        optimize = _weight_bytes(model) + sum(t.ByteSize() for t in initializers) <= AUTO_OPTIMIZE_BYTES
        if optimize:
            _fix_mmap_threshold()
            try:
                return _session(model, True, threads, spinning, ours, arena=False, extra=extra_outputs,
                                inits=initializers)
            except (RuntimeError, CollapseError):
                optimize = False
    if feed_weights and not optimize and hasattr(model, "graph"):
        try:
            return _session(model, False, threads, spinning, ours, extra=extra_outputs, inits=initializers,
                            feed=True)
        except (RuntimeError, CollapseError):
            pass   # an op that needs a constant weight: handed over as initializers, as below
    return _session(model, bool(optimize), threads, spinning, ours, extra=extra_outputs, inits=initializers)


#: "auto" sessions optimize the graph when the model's weights take at most this many bytes
AUTO_OPTIMIZE_BYTES = 16 << 20


def _weight_bytes(model) -> int:
    graph = getattr(model, "graph", None)
    if graph is None:
        return AUTO_OPTIMIZE_BYTES + 1   # bytes or a path: not read just to decide
    total = 0
    for t in graph.initializer:
        if t.data_location == 1:   # external: the length is in its entries, if given
            total += next((int(e.value) for e in t.external_data if e.key == "length"), AUTO_OPTIMIZE_BYTES + 1)
        else:
            total += t.ByteSize()
    return total


#: glibc's mallopt parameter and the value optimized "auto" sessions fix it at (see _fix_mmap_threshold)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
#: set by `python -m collapse_passes`: the process is ours, so its malloc may be tuned
OWN_PROCESS = False
_mmap_fixed = False


def _fix_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD, once, in our own process, before the first
    optimized "auto" session.

    glibc raises the threshold each time a large block is freed, so an optimized session's later
    activation buffers come from the heap, which fragments and does not shrink: the check of CIFAR
    MobileNetV2 at 224 peaked at 330-360 MB instead of 230 MB. A fixed threshold keeps blocks of 4 MiB
    and more in their own mappings. It is not set for models with large weights: every weight-sized
    array then costs fresh pages (ResNet-18, 44 MB of weights: +1 s of system time), and their
    sessions are not optimized anyway. A library caller's process is left as it is."""
    global _mmap_fixed
    if _mmap_fixed or not OWN_PROCESS:
        return
    _mmap_fixed = True
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):   # not glibc
        pass


@contextlib.contextmanager
def collector_skips_older_objects():
    """While a run lasts, Python's cycle collector looks only at the objects made since it began.

    The passes' graphs are reference cycles (onnx-graphsurgeon), so verify() runs a full collection before its
    sessions, and their allocations trigger automatic ones: each walks every object of the process, and with
    torch and its exporters loaded (~300k objects) each took ~0.5 s of CPU, two or three per ONNX collapse
    (docs/pass_runtime.md, 2026-11-30). The objects older than the run are frozen (gc.freeze) for its length:
    what the run makes and drops is collected as before, the caller's own garbage at the first collection after
    it. A caller that froze objects itself (a pre-fork server, an outer run) is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim), in our own process only.

    glibc keeps freed pages in a fragmented heap, and they count in the process's peak: when
    verification starts on torchvision's ResNet-18 the process holds ~70-110 MB of them (the passes'
    graph imports and exports), and again ~70 MB once the input model's session is gone; the sessions
    that follow grew the peak by 10-20 MB over them. A page returned is faulted in again when reused
    (up to +0.1 s of system time per call on ResNet-18), so verify() calls it only at those two points,
    where it lowered the measured peak (379 -> 330 MiB with the fed weights). A library caller's
    process is left as it is."""
    if not OWN_PROCESS:
        return
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


def _session(model, optimize: bool, threads, spinning, ours, arena: bool | None = None, extra=(), inits=(),
             feed: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 4  # failures reach the user as one CollapseError line, not ORT's own log
    if threads:
        so.intra_op_num_threads = int(threads)
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not (optimize if arena is None else arena):
        # sessions that run a few times (verification, calibration): no memory arena, so the process's
        # peak is not a pool sized for a model that is about to be dropped
        so.enable_cpu_mem_arena = False
    keep = None
    try:
        if hasattr(model, "graph") and hasattr(model, "SerializeToString"):
            # the weights go to onnxruntime as in-memory external initializers: only the structure is
            # serialized (ResNet-18: session 0.5 s -> 0.15 s, 30 MB less peak per session)
            light, names, values = _weights_apart(model, inits, as_inputs=feed)
            for name in extra:
                light.graph.output.add().name = name
            fed = {}
            if feed:   # the weights made graph inputs; the others (integers) stay initializers
                fed = {n: v for n, v in zip(names, values) if v.dtype.kind == "f"}
                names, values = [n for n in names if n not in fed], [v for n, v in zip(names, values) if n not in fed]
            if names:
                keep = [ort.OrtValue.ortvalue_from_numpy(v) for v in values]
                so.add_external_initializers(names, keep)
            model = light
        sess = ort.InferenceSession(_bytes(model), so, providers=["CPUExecutionProvider"])
        if feed:
            sess = WeightsFed(sess, fed)
    except Exception as exc:
        msg = ort_message(exc, 200)
        if ours:
            raise RuntimeError(f"onnxruntime cannot load the transformed model ({msg})") from exc
        way_out = ""
        if "Could not find an implementation" in str(exc):   # a float64 Conv, a bfloat16 MatMul, an opset-6 BN
            way_out = ("; onnxruntime's CPU build has no kernel for that op at that opset and element type, and every "
                       "result is verified with it: give the model in float32 (or float16), e.g. exported from "
                       "model.float(), at an opset it runs (onnx.version_converter.convert_version(model, 13))")
        raise CollapseError(f"onnxruntime cannot load the model ({msg}){way_out}") from None
    sess._collapse_weights = keep   # onnxruntime reads them for as long as the session lives
    return sess


def ort_message(exc: BaseException, limit: int = 240) -> str:
    """onnxruntime's error text without its prefix and C++ source locations, on one line."""
    msg = " ".join(str(exc).split())
    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    msg = re.sub(r"/onnxruntime_src/\S+ .*? was false\. ", "", msg)
    # "file.h:46 void ns::Function(args) message": the location and the C++ signature go
    msg = re.sub(r"/onnxruntime_src/\S+:\d+ [^()]*\((?:[^()]|\([^()]*\))*\)(?: const)? ", "", msg)
    return msg[:limit] + ("..." if len(msg) > limit else "")


#: top-level initializers with at least this many bytes of data are handed over in memory
APART_BYTES = 4096
#: element types numpy and onnxruntime share (float, double, half, the integers, bool)
_APART_TYPES = {1, 11, 10, 2, 3, 4, 5, 6, 7, 9, 12, 13}


def _weights_apart(model, more=(), as_inputs: bool = False):
    """(structure, names, arrays): `model` whose large top-level initializers are marked as external
    data, plus those initializers as numpy arrays (SessionOptions.add_external_initializers). The
    caller's proto is not modified; a tensor already stored externally stays as it is. `more`:
    initializers of another proto the model also reads, handed over the same way. as_inputs: the
    large float initializers become graph inputs instead (fed with every run, WeightsFed); the
    others are handed over as external ones."""
    import onnx
    from onnx import numpy_helper

    from ..onnx.graph import external_ref, without_initializers

    light = without_initializers(model)
    declared = {vi.name for vi in light.graph.input}
    names, values = [], []
    for t in itertools.chain(model.graph.initializer, more):
        if (t.data_location != onnx.TensorProto.EXTERNAL and t.data_type in _APART_TYPES
                and t.ByteSize() >= APART_BYTES):
            if as_inputs and t.data_type in _FED_TYPES:
                if t.name not in declared:   # IR < 4 lists initializers among the inputs already
                    light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
            else:
                light.graph.initializer.append(external_ref(t, "in-memory"))
            names.append(t.name)
            values.append(np.ascontiguousarray(numpy_helper.to_array(t)))
        else:
            light.graph.initializer.append(t)
    return light, names, values


#: initializer types fed as graph inputs by WeightsFed sessions (float, double, half)
_FED_TYPES = {1, 11, 10}


class WeightsFed:
    """An InferenceSession whose large weights are graph inputs: run() adds them to every feed
    (numpy arrays are passed to onnxruntime without a copy). Otherwise the session itself;
    get_inputs() lists the model's own inputs only."""

    def __init__(self, sess, weights: dict):
        self._sess = sess
        self._weights = weights

    def run(self, output_names, input_feed, run_options=None):
        return self._sess.run(output_names, {**input_feed, **self._weights}, run_options)

    def get_inputs(self):
        return [i for i in self._sess.get_inputs() if i.name not in self._weights]

    def __getattr__(self, name):
        return getattr(self._sess, name)



def _as_session(model_or_session):
    return model_or_session if hasattr(model_or_session, "get_inputs") else session(model_or_session)


# ONNX TensorProto elem_type -> the numpy type onnxruntime reports for it (ORT_TYPES)
_ELEM_TYPES = {1: np.float32, 11: np.float64, 10: np.float16, 7: np.int64, 6: np.int32, 3: np.int8, 2: np.uint8,
               9: np.bool_}


def input_specs(model_or_session) -> list[tuple[str, list, type]]:
    """(name, dims, numpy type) of the inputs that are not initializers; a dynamic dim is a str or None.

    Read from the ModelProto when given one (no session is built just to ask), else from the session."""
    graph = getattr(model_or_session, "graph", None)
    if graph is not None and hasattr(graph, "initializer"):
        inits = {t.name for t in graph.initializer}
        specs = []
        for vi in graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
            specs.append((vi.name, dims, _ELEM_TYPES.get(tt.elem_type, np.float32)))
        return specs
    sess = _as_session(model_or_session)
    return [(i.name, list(i.shape), ORT_TYPES.get(i.type, np.float32)) for i in sess.get_inputs()]


def memory_budget() -> int:
    """Bytes one run may hold in check inputs: a quarter of this machine's memory (4 GiB if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _check_input_memory(specs, count: int) -> None:
    """Refuse, in one line, random inputs that would not fit in memory (a declared [100000, 100000] input,
    or --check 10000 at 224x224 (6 GB)): numpy's MemoryError, or the OOM killer, is no answer."""
    sizes = [(n, [d if isinstance(d, int) and d > 0 else 1 for d in shape], np.dtype(dt)) for n, shape, dt in specs]
    per_feed = sum(int(np.prod(dims, dtype=object)) * dt.itemsize for _, dims, dt in sizes)
    temp = max([int(np.prod(dims, dtype=object)) * 8 for _, dims, dt in sizes if dt.kind == "f"], default=0)
    need, budget = per_feed * count + temp, memory_budget()
    if need > budget:
        shapes = ", ".join(f"{n} {tuple(dims)} {dt.name}" for n, dims, dt in sizes)
        most = max(0, (budget - temp) // per_feed) if per_feed else 0
        way = f"lower --check to at most {most}, or " if most >= 1 else ""
        raise CollapseError(f"{count} random check input(s) of {per_feed / 2**20:.4g} MiB each ({shapes}) need "
                            f"{need / 2**30:.3g} GiB, over a quarter of this machine's memory "
                            f"({budget / 2**30:.3g} GiB); {way}verify on --calib data of the real input size")


def random_inputs(model_or_session, count: int = 1, seed: int = 0, shapes: dict | None = None,
                  dist: str = "normal", ranges: dict | None = None) -> list[dict[str, np.ndarray]]:
    """`count` seeded feeds: floats standard normal (dist="normal") or uniform in (0, 1] (dist="unit": images,
    probabilities, what a Log or Sqrt reads), 0/1 integers (0..n-1 for an input `ranges` gives n: token ids,
    see index_ranges) and booleans. Dynamic dims = 1, unless `shapes` ({input name: dims}, see check_shapes)
    gives them."""
    if dist not in ("normal", "unit"):
        raise ValueError(f"dist must be 'normal' or 'unit', not {dist!r}")
    specs = input_specs(model_or_session)
    if shapes:
        specs = [(n, list(shapes.get(n, shape)), dt) for n, shape, dt in specs]
    _check_input_memory(specs, count)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, shape, dt in specs:
            # a dim the model fixes at 0 stays 0 (not 1, which onnxruntime refused as "Expected: 0": the message
            # blamed the user's data); the gate refuses such inputs by name (empty_check_input)
            dims = [d if isinstance(d, int) and d >= 0 else 1 for d in shape]
            if np.issubdtype(dt, np.floating):
                x = rng.standard_normal(dims) if dist == "normal" else 1.0 - rng.random(dims)
                feed[name] = x.astype(dt)
            elif dt is np.bool_:
                feed[name] = rng.integers(0, 2, dims).astype(bool)
            else:
                feed[name] = rng.integers(0, max(1, int((ranges or {}).get(name, 2))), dims).astype(dt)
        feeds.append(feed)
    return feeds


def random_in_range(model, samples: list[dict], count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` seeded feeds shaped as samples[0] (a dynamic first axis as one sample), each input drawn in the
    range the samples span: floats uniform in [min, max] (standard normal when the samples hold one value:
    a blank image exercises no weight), integers in [min, max], booleans at random. The gate adds them to
    --calib data: the requested semantics holds on every input, and a calibration set of one blank image
    passed a wrong fold."""
    if not samples or count < 1:
        return []
    specs = {n: shape for n, shape, _ in input_specs(model)}
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, first in samples[0].items():
            first = np.asarray(first)
            shape = list(first.shape)
            dims = specs.get(name, shape)
            if shape and dims and not (isinstance(dims[0], int) and dims[0] > 0):
                shape[0] = 1
            if first.dtype == np.bool_:
                feed[name] = rng.integers(0, 2, shape).astype(bool)
                continue
            vals = [np.asarray(f[name]) for f in samples if name in f]
            if first.dtype.kind in "iu":   # exact integers: through float, int64's max rounded to 2 ** 63, out of
                info = np.iinfo(first.dtype)   # numpy's bounds (a traceback on hashed ids spanning int64)
                lo = max(info.min, min(int(np.min(v)) for v in vals if v.size)) if first.size else 0
                hi = min(info.max, max(int(np.max(v)) for v in vals if v.size)) if first.size else 0
                x = (rng.integers(lo, hi, shape, dtype=first.dtype, endpoint=True) if hi > lo
                     else rng.integers(0, 2, shape))
                feed[name] = x.astype(first.dtype)
                continue
            lo = min(float(np.min(v)) for v in vals if v.size) if first.size else 0.0
            hi = max(float(np.max(v)) for v in vals if v.size) if first.size else 0.0
            if first.dtype.kind == "f":
                ok = np.isfinite(lo) and np.isfinite(hi) and hi > lo
                x = rng.uniform(lo, hi, shape) if ok else rng.standard_normal(shape)
            else:
                x = rng.integers(int(lo), int(hi) + 1, shape) if hi > lo else rng.integers(0, 2, shape)
            feed[name] = x.astype(first.dtype)
        feeds.append(feed)
    return feeds


#: ops an index passes through unchanged on its way to a Gather (index_ranges)
_INDEX_PASS = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


def index_ranges(model) -> dict[str, int]:
    """{input name: n} for the integer inputs that index a constant table (Gather's indices, through Cast /
    Reshape / Unsqueeze ...): token ids into an nn.Embedding's n rows. Drawn as 0/1 the check saw two rows, and
    what follows the embedding only on their span: a merged Linear wrong in the other 14 of 16 directions passed
    (max rel 14 on real ids). n is the smallest table the input indexes; other integer inputs (masks) stay 0/1."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return {}
    rows = {t.name: list(t.dims) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            a = next((a for a in n.attribute if a.name == "value"), None)
            if a is not None:
                rows[n.output[0]] = list(a.t.dims)
    readers: dict[str, list] = {}
    for n in graph.node:
        for i, x in enumerate(n.input):
            readers.setdefault(x, []).append((n, i))
    out = {}
    for name, _, dt in input_specs(model):
        if not np.issubdtype(dt, np.integer):
            continue
        highs, todo, seen = [], [name], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for n, i in readers.get(t, []):
                if n.op_type in _INDEX_PASS and i == 0:
                    todo.extend(n.output)
                elif n.op_type == "Gather" and i == 1 and n.input[0] in rows:
                    dims = rows[n.input[0]]
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                        highs.append(dims[axis])
        if highs:
            out[name] = min(highs)
    return out


#: the smallest size check_shapes gives a dynamic dim (a sequence, a model without strides)
MIN_CHECK_SIZE = 9
#: the largest (a model downsampling by more than 512)
MAX_CHECK_SIZE = 1025
#: ops whose `strides` shrink the spatial dims (check_shapes' downsampling factor)
_STRIDED_OPS = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"}


def downsampling(model) -> int:
    """The largest product of strides (Conv, pools) along any path of the graph: 32 for a ResNet."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return 1
    factor: dict[str, int] = {}
    top = 1
    for node in graph.node:   # an ONNX graph is topologically sorted
        f = max([factor.get(i, 1) for i in node.input if i], default=1)
        if node.op_type in _STRIDED_OPS:
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [])
            f *= max(strides, default=1)
        top = max(top, f)
        for o in node.output:
            factor[o] = f
    return top


def check_shapes(model, aligned: bool = False) -> dict[str, list[int]]:
    """{input name: dims} for the random check inputs of a model with dynamic input dims (empty when every
    dim is a number or a batch). A batch (axis 0 of an input of rank 2 or more, and that dim's name wherever
    it is used) stays 1; every other dynamic dim (height, width, sequence) is 2 * D + 1, D the model's downsampling
    (downsampling(): 65 for a ResNet, 9 at least, MAX_CHECK_SIZE at most, and at most MAX_CHECK_SIZE ** 2
    positions an input: 101 for three dynamic dims). At 1 x 1 a 3 x 3 kernel reads
    only its centre tap: a result with every kernel transposed, or its borders wrong, passed the gate
    (ResNet-18 exported with dynamic height and width). 2 * D + 1 keeps a 3 x 3 map with borders at the
    deepest stage and odd sizes (uneven padding) on the way. Dims with the same name get the same size.
    `aligned`: 3 * D instead, a multiple of every stage's stride, for a model that runs only there (a UNet, whose
    skip Concat needs each map exactly halved: 9 -> 4 -> 8 meets 9 and fails, as did 1)."""
    specs = input_specs(model)
    if all(isinstance(d, int) and d > 0 for _, shape, _ in specs for d in shape):
        return {}
    down = downsampling(model)
    size = min(MAX_CHECK_SIZE, max(MIN_CHECK_SIZE, 2 * down + 1))
    if aligned:
        size = down * min(max(3, -(-MIN_CHECK_SIZE // down)), max(1, MAX_CHECK_SIZE // down))
    batch = {shape[0] for _, shape, _ in specs if len(shape) >= 2 and isinstance(shape[0], str) and shape[0]}
    # at most MAX_CHECK_SIZE ** 2 positions per input: a Conv3d stack downsampling by 1024 with dynamic D/H/W got
    # 1025 ** 3 (4 GiB an input) and was refused, where it had run at 1 (the largest odd size that fits)
    sized_dims = max(sum(1 for axis, d in enumerate(shape) if not (isinstance(d, int) and d > 0)
                         and not ((axis == 0 and len(shape) >= 2) or (isinstance(d, str) and d in batch)))
                     for _, shape, _ in specs)
    if sized_dims > 2:
        fits = int(round(MAX_CHECK_SIZE ** (2 / sized_dims)))
        while fits > 1 and fits ** sized_dims > MAX_CHECK_SIZE ** 2:
            fits -= 1
        size = min(size, (max(1, fits // down) * down if aligned else fits if fits % 2 or fits == 1 else fits - 1))
    out, sized = {}, False
    for name, shape, _ in specs:
        dims = []
        for axis, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif (axis == 0 and len(shape) >= 2) or (isinstance(d, str) and d in batch):
                dims.append(1)
            else:
                dims.append(size)
                sized = True
        out[name] = dims
    return out if sized else {}   # a dynamic batch alone: 1, as random_inputs takes it anyway


def check_size_ladder(model) -> list[dict[str, list[int]]]:
    """The sizes the gate tries for a model's dynamic dims, in order, until the input model runs: check_shapes'
    (2 * D + 1), then its aligned ones (3 * D: a UNet's skip Concat), then none (every dim as 1, said with a
    warning). [{}] for a model with static inputs (or a dynamic batch only): nothing to try."""
    first = check_shapes(model)
    if not first:
        return [{}]
    aligned = check_shapes(model, aligned=True)
    return [first] + ([aligned] if aligned and aligned != first else []) + [{}]


def check_inputs(model, count: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """random_inputs as the gate draws them: dynamic dims at check_shapes' sizes, token ids over their table
    (index_ranges). For the checks beside the gate (TVM's output check, --prune-calib-dead's error), which at
    1 x 1 and ids 0/1 compared kernels' centre taps and two embedding rows."""
    return random_inputs(model, count, seed, shapes=check_shapes(model), ranges=index_ranges(model))


def run(model_or_session, feeds: list[dict]) -> tuple[list[list[np.ndarray]], list[str]]:
    sess = _as_session(model_or_session)
    names = [o.name for o in sess.get_outputs()]
    return [sess.run(names, f) for f in feeds], names


def outputs(model_or_session, feed: dict) -> list[np.ndarray]:
    outs, _ = run(model_or_session, [feed])
    return [np.asarray(o) for o in outs[0]]


def time_runs(sess, feed: dict, repeat: int = 30, warmup: int = 5) -> list[float]:
    """Seconds of each of `repeat` runs after `warmup` untimed ones."""
    names = [o.name for o in sess.get_outputs()]
    for _ in range(warmup):
        sess.run(names, feed)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(names, feed)
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(sessions: dict, feed: dict, rounds: int, warmup: int = 5, seed: int = 0) -> dict:
    """{key: [seconds]}; `sessions` maps a key to a session or a list of sessions (all timed under
    that key). Every round runs every session once, in shuffled order, so machine noise hits all
    keys alike."""
    flat = [(k, s) for k, v in sessions.items() for s in (v if isinstance(v, (list, tuple)) else [v])]
    names = {id(s): [o.name for o in s.get_outputs()] for _, s in flat}
    for _, s in flat:
        for _ in range(warmup):
            s.run(names[id(s)], feed)
    times = {k: [] for k in sessions}
    order = list(range(len(flat)))
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            k, s = flat[i]
            t0 = time.perf_counter()
            s.run(names[id(s)], feed)
            times[k].append(time.perf_counter() - t0)
    return times


@dataclass
class Comparison:
    max_abs: float
    max_rel: float
    passed: bool
    samples: int
    worst_output: str = ""
    why: str = ""
    max_rel64: float | None = None   # the float64 second look's max rel, when one was taken (verify.py)
    # failed, but the request is ill-conditioned in float32 and the result's float32 outputs are about as close
    # to its exact outputs as its own float32 ones (verify.float64_second_look): accepted by the gate once the
    # merge fallback found no result that passes outright (accept_conditioned)
    conditioned: bool = False

    def as_dict(self) -> dict:
        d = {"max_abs": self.max_abs, "max_rel": self.max_rel, "passed": self.passed,
             "samples": self.samples, "worst_output": self.worst_output}
        if self.why:
            d["why"] = self.why
        if self.max_rel64 is not None:
            d["max_rel_float64"] = self.max_rel64
        if self.conditioned:
            d["within_float32_conditioning"] = True
        return d


def compare(ref_outs, outs, names, rtol: float, atol: float) -> Comparison:
    """Compare per-feed output lists (ref_outs[i][j] vs outs[i][j], output names[j])."""
    max_abs = max_rel = 0.0
    passed = True
    worst = ""
    if len(ref_outs) != len(outs):
        return Comparison(float("inf"), float("inf"), False, len(ref_outs), "", f"{len(outs)} runs vs {len(ref_outs)}")
    for ref_list, out_list in zip(ref_outs, outs):
        if len(ref_list) != len(out_list):
            return Comparison(float("inf"), float("inf"), False, len(ref_outs), "",
                              f"{len(out_list)} outputs vs {len(ref_list)}")
        for name, r, o in zip(names, ref_list, out_list):
            r = np.asarray(r, np.float64)
            o = np.asarray(o, np.float64)
            if r.shape != o.shape:
                return Comparison(float("inf"), float("inf"), False, len(ref_outs), name,
                                  f"shape {o.shape} vs {r.shape}")
            if r.size == 0:
                continue
            bad_ref = ~np.isfinite(r)
            if bad_ref.any():
                # the reference already outputs NaN/Inf there: equal when the result holds the same
                # non-finite value; the rest is compared as usual
                if not np.array_equal(r[bad_ref], o[bad_ref], equal_nan=True):
                    return Comparison(float("inf"), float("inf"), False, len(ref_outs), name,
                                      "non-finite reference values differ")
                keep = ~bad_ref
                r, o = r[keep], o[keep]
                if r.size == 0:
                    continue
            err = np.abs(r - o)
            a = float(np.nanmax(err)) if np.all(np.isfinite(err)) else float("inf")
            scale = np.maximum(np.abs(r), float(np.sqrt(np.mean(r * r))))
            rel = float(np.max(err / (scale + 1e-12))) if np.isfinite(a) else float("inf")
            ok = bool(np.all(err <= atol + rtol * scale) and np.isfinite(a))   # a Python bool: the report is JSON
            if a > max_abs:
                max_abs, worst = a, name
            max_rel = max(max_rel, rel)
            passed &= ok
    return Comparison(max_abs, max_rel, passed, len(ref_outs), worst)


def feed_rows(feed) -> int:
    """The samples one check input holds: the first axis of its first array (a dict's values, a tuple's items,
    nested; torch tensors too), 1 for scalars. A --calib .npz of 16 samples is one feed of 16 rows."""
    if isinstance(feed, dict):
        feed = list(feed.values())
    if isinstance(feed, (list, tuple)):
        for x in feed:
            n = feed_rows(x)
            if n:
                return n
        return 0
    shape = getattr(feed, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) >= 1 else (1 if shape is not None else 0)


def _float_name(outs) -> str:
    """The float type of the outputs that overflowed, for the message: a float16 model overflows at 65504, not at
    float32's 3.4e38 (the line said float32 for every model)."""
    kinds = {np.asarray(v).dtype.name for out in outs for v in out if np.asarray(v).dtype.kind == "f"}
    return kinds.pop() if len(kinds) == 1 else "their float type"


def nonfinite_request(orig_outs, req_outs, names, samples: int, inputs_desc: str | None = None,
                      feeds=None, data_feeds: int = 0) -> Comparison | None:
    """A failed Comparison when the requested semantics outputs NaN/Inf where the input model does not
    (collapsing those activations overflows float32): matching NaNs would otherwise pass the gate while
    comparing nothing. None when the requested outputs are as finite as the input's. With more than one
    feed it says which overflowed, in the order `inputs_desc` lists them: --calib samples come first and
    the random inputs in their range (wider than the data) last, so a user sees whether the data itself
    overflows (it was blamed on the activations while only the random inputs did, H36). `feeds` (the check
    inputs): a feed of several samples (a --calib .npz is one feed of all its samples) also names the samples
    (rows of its outputs' first axis) that overflowed: "check input 1 of 5" alone read as the first sample of
    a description counting 16 (H45). `data_feeds`: how many leading feeds are --calib data; when only the
    random inputs after them overflow, the way out that keeps the collapse is said: --check 0, the data alone
    (MobileNetV3-Large, TLC <= 0.3: finite on the data, NaN/Inf on the uniform noise over its whole range)."""
    bad, total, worst, feeds_bad = 0, 0, "", {}
    rows = [feed_rows(f) for f in feeds] if feeds is not None else []
    for i, (o_list, r_list) in enumerate(zip(orig_outs, req_outs)):
        n = rows[i] if i < len(rows) else 0
        for name, o, r in zip(names, o_list, r_list):
            o, r = np.asarray(o), np.asarray(r)
            if o.shape != r.shape or r.dtype.kind != "f":
                continue
            new = ~np.isfinite(r) & np.isfinite(o)
            if new.any():
                bad, worst = bad + int(new.sum()), worst or name
                hit = feeds_bad.setdefault(i + 1, set())
                if n > 1 and new.ndim >= 1 and new.shape[0] == n:   # batch-first: which samples
                    hit.update(int(j) + 1 for j in np.flatnonzero(new.reshape(n, -1).any(axis=1)))
            total += r.size
    if not bad:
        return None

    def listed(items, cap=8):
        items = sorted(items)
        return ", ".join(map(str, items[:cap])) + (" ..." if len(items) > cap else "")

    where = ""
    if len(orig_outs) > 1 or any(feeds_bad.values()):
        parts = [f"{i} (sample(s) {listed(hit)} of its {rows[i - 1]})" if hit else str(i)
                 for i, hit in sorted(feeds_bad.items())]
        shown = ", ".join(parts[:8]) + (" ..." if len(parts) > 8 else "")
        where = f", on check input(s) {shown} of {len(orig_outs)}" + (f" ({inputs_desc}, in that order)" if inputs_desc
                                                                      else "")
    return Comparison(float("inf"), float("inf"), False, samples, worst,
                      f"the requested semantics outputs NaN/Inf in {bad} of {total} values where the input model's "
                      f"outputs are finite{where} (the collapsed activations let values overflow "
                      f"{_float_name(req_outs)}), so there is nothing to verify against; collapse fewer activations"
                      + ("; the calibration data itself stays finite: --check 0 (check=0) verifies on it alone"
                         if 0 < data_feeds < min(feeds_bad) else ""))


def empty_check_input(feeds) -> tuple[str, tuple] | None:
    """(name, shape) of the first check input with a 0-sized dim, else None. Feeds are dicts (ONNX: input name ->
    array) or tuples (torch: example_inputs, nested lists / dicts walked, named `example_inputs[i]...`). On such
    an input every output of a batch-wise model is empty too: the gate compared zero elements and said "max abs 0",
    a check it did not make; the front ends refuse it by name before any comparison."""
    def leaves(name, v):
        if isinstance(v, dict):
            for k, x in v.items():
                yield from leaves(f"{name}[{k!r}]", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                yield from leaves(f"{name}[{i}]", x)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            yield name, tuple(int(d) for d in v.shape)

    for feed in feeds:
        items = feed.items() if isinstance(feed, dict) else ((f"example_inputs[{i}]", x) for i, x in enumerate(feed))
        for top, value in items:
            for name, shape in leaves(top, value):
                if 0 in shape:
                    return name, shape
    return None


def nothing_compared(ref_outs, samples: int, way_out: str) -> Comparison | None:
    """A failed Comparison when every floating-point value of the reference outputs (all outputs, all feeds) is
    NaN/Inf: compare() counts matching NaNs as equal, so the gate would have passed a result while comparing
    nothing (a wrong merge after a Log of random normal inputs passed). Also when every output holds no element
    on inputs that do (a model that slices to 0 elements): compare() skipped them all and said "max abs 0" over
    nothing, as on an empty check input (empty_check_input). None when some value is finite, or no output is
    floating-point."""
    total = bad = elements = 0
    for out in ref_outs:
        for v in out:
            v = np.asarray(v)
            elements += v.size
            if v.dtype.kind != "f" or v.size == 0:
                continue
            total += v.size
            bad += int(v.size - np.isfinite(v).sum())
    if ref_outs and not elements:
        return Comparison(float("inf"), float("inf"), False, samples, "",
                          f"every output of the requested semantics has no elements on {way_out}, so nothing was "
                          "compared; a model whose outputs hold no element has nothing to verify: check the slice or "
                          "shape that empties them")
    if not total or bad < total:
        return None
    return Comparison(float("inf"), float("inf"), False, samples, "",
                      f"the requested semantics outputs NaN/Inf in all {total} values on {way_out}, so nothing was "
                      "compared; give inputs the model computes finite outputs on (--calib data, or a torch model's "
                      "example_inputs)")


def compare_outputs(outs: list, ref: list, rtol: float, atol: float) -> Comparison:
    """compare() for the outputs of one feed, unnamed (output i is named by its index)."""
    return compare([list(ref)], [list(outs)], [str(i) for i in range(len(ref))], rtol, atol)
