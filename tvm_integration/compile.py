"""Import into Relax, build (optionally with a tuned MetaSchedule database), run, time, export.

All functions import TVM lazily, so ``import tvm_integration`` stays cheap.

Build pipeline (shared with :mod:`tvm_integration.tuning`, so the tuned
database's workloads match the functions being built)::

    DecomposeOpsForInference, [FoldConstant, RaiseConstantMinMax,
     ConvertLayout NHWC, FoldConstant]                  (layout="NHWC")
    CanonicalizeBindings, <target library dispatch>, LegalizeOps, AnnotateTIROpPattern,
    FoldConstant, FuseOps, FuseTIR,
    AttachAttrLayoutFreeBuffers                          (CPU: weight prepacking)  <- prepare_passes()
    MetaScheduleApplyDatabase                            (when a database is given)
    SplitLayoutRewritePreproc, LiftTransformParams,
    FoldConstant, CanonicalizeBindings, DCE              (CPU: weights re-laid out at compile time)
    DLight default GPU schedules, DefaultGPUSchedule     (GPU targets, untuned functions)
    <target dataflow lowering + finalize passes>         (as tvm.compile's default;
                                                          CUDA graphs with cuda_graph=True)

Weight prepacking is the CPU half of ``relax.get_pipeline("static_shape_tuning",
cpu_weight_prepack=True)``: the weights are marked layout-free, MetaSchedule's
``RewriteLayout`` postprocessor picks a blocked weight layout for each tuned
kernel, and the layout change is split out and folded into the (bound,
constant) weights at compile time -- so unlike that pipeline's example no
``main_transform_params`` call is needed at run time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import TVMError

# --------------------------------------------------------------------------- import


def _iter_nodes(graph):
    """All nodes of an ONNX graph including nested subgraphs (If/Loop/Scan bodies)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_nodes(g)


def unsupported_onnx_ops(model) -> list[str]:
    """Op types in ``model`` that TVM's Relax ONNX importer has no converter for."""
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    except ImportError:  # pragma: no cover - layout changed
        return []
    supported = set(_get_convert_map().keys()) | {"Constant", "If"}
    missing = {n.op_type for n in _iter_nodes(model.graph) if n.op_type not in supported}
    return sorted(missing)


def check_onnx_ops(model) -> None:
    """TVMError naming the ops of ``model`` the Relax ONNX importer lacks, if any."""
    missing = unsupported_onnx_ops(model)
    if missing:
        raise TVMError(
            "TVM's ONNX importer (tvm.relax.frontend.onnx) does not support op(s): "
            + ", ".join(missing) + IMPORTER_WAY_OUT
        )


#: the way out of any TVM failure on a model: the collapse itself needs no TVM
WITHOUT_TVM = "collapse without --target (the collapse needs no TVM)"
#: what a user whose model TVM's importer cannot take can do
IMPORTER_WAY_OUT = f"; TVM cannot compile this model as it is: export it without that construct, or {WITHOUT_TVM}"


def _load_onnx(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")


def fold_size_arithmetic(proto):
    """``proto`` with its run-time size arithmetic folded into constants (collapse_passes' ``fold_shapes``
    pass: static inputs only, integer values only), or ``proto`` itself when there is none to fold. TVM
    0.27's ONNX importer loses the shape of a tensor reshaped through such arithmetic (a TorchScript
    Swin's padding: Mod -> Concat -> Cast -> Reshape -> Pad), which onnxruntime folds when it loads."""
    import onnx_graphsurgeon as gs

    from collapse_passes.onnx.passes.fold_static_shapes import folded_graph

    try:
        graph = folded_graph(proto)
    except Exception:   # noqa: BLE001 - nothing to fold that the pass understands: the importer's error stands
        return proto
    if len(graph.nodes) == len(proto.graph.node):
        return proto
    out = gs.export_onnx(graph)
    out.ir_version = proto.ir_version
    del out.opset_import[:]
    out.opset_import.extend(proto.opset_import)
    return out


def import_onnx(model, shape_dict: Mapping[str, Sequence[int]] | None = None):
    """ONNX model (proto or path) -> Relax ``IRModule``.

    Weights (initializers) are bound as constants, so ``main`` takes the model
    inputs only.  Ops the importer lacks raise :class:`TVMError` naming them.
    A model the importer fails on is imported again with its size arithmetic
    folded (``fold_size_arithmetic``), when there is some; with ``shape_dict``,
    last with its dynamic input dims fixed to those sizes first (the importer
    keeps a dynamic batch symbolic through Shape -> Gather -> Reshape chains
    that onnxruntime resolves at run time: a TorchScript Swin with a dynamic batch).
    """
    proto = _load_onnx(model)
    check_onnx_ops(proto)
    try:
        return _import_onnx(proto, shape_dict)
    except TVMError as e:
        first = e
    folded = fold_size_arithmetic(proto)
    if folded is not proto:
        try:
            return _import_onnx(folded, shape_dict)
        except TVMError:
            pass
    if shape_dict:
        from collapse_passes.onnx.shapes import dynamic_inputs, fix_input_shapes

        if dynamic_inputs(proto, batch=True):
            fixed = fix_input_shapes(proto, {k: list(v) for k, v in shape_dict.items()})
            return _import_onnx(fold_size_arithmetic(fixed), shape_dict)
    raise first


def _import_onnx(proto, shape_dict):
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    import io

    printed = io.StringIO()   # on a failure the importer prints "Error converting operator X, with
    failure = None            # inputs: <pages of Relax>" to stdout; the op name goes into our one line
    with stderr_without(("BlockBuilder destroyed with remaining blocks",)):
        try:
            with contextlib.redirect_stdout(printed):
                mod = from_onnx(
                    proto,
                    shape_dict=dict(shape_dict) if shape_dict else None,
                    keep_params_in_input=False,
                )
        except tvm.error.OpNotImplemented as e:
            failure = f"TVM's ONNX importer failed: {_first_line(e)}"
        except NotImplementedError as e:
            failure = f"TVM's ONNX importer does not support part of this model: {_first_line(e)}"
        except (ValueError, TypeError) as e:   # "Dynamic pads are not supported yet." (a Pad whose sizes read a
            # dynamic dim); "Binary operators must have the same datatype" (a float64 scale on a symbolic batch)
            failure = f"TVM's ONNX importer does not support part of this model: {_first_line(e)}"
        except tvm.error.InternalError as e:   # e.g. a TorchScript-exported Swin: Reshape of a tensor
            # whose shape the importer lost (computed through Shape/Gather/Concat)
            op = printed.getvalue().partition("Error converting operator ")[2].partition(",")[0]
            failure = (f"TVM's ONNX importer failed on this model{f' at a {op} node' if op else ''}: "
                       f"{_first_line(e)}")
        except Exception as e:  # noqa: BLE001 - the call is the importer alone: any error is a gap of it, not
            # ours (a MaxPool that also outputs its indices: AssertionError "Missing outputs during conversion";
            # an opset-23 Attention without num_heads: KeyError), and was a traceback
            op = printed.getvalue().partition("Error converting operator ")[2].partition(",")[0]
            failure = (f"TVM's ONNX importer failed on this model{f' at a {op} node' if op else ''}: "
                       f"{type(e).__name__}: {_first_line(e).rstrip('.')}")
        if failure is not None:
            import gc

            gc.collect()   # the half-built BlockBuilder logs a warning when destroyed: here, filtered
    if failure is not None:
        raise TVMError(failure + IMPORTER_WAY_OUT)
    return mod


def import_exported_program(ep, **kwargs):
    """``torch.export.ExportedProgram`` -> Relax ``IRModule`` (weights bound as constants).

    ``aten.elu`` is converted by :func:`_convert_elu` (a ``custom_convert_map`` entry given wins)."""
    from tvm.relax.frontend.torch import from_exported_program

    kwargs.setdefault("keep_params_as_input", False)
    kwargs["custom_convert_map"] = {"elu.default": _convert_elu, **(kwargs.get("custom_convert_map") or {})}
    return from_exported_program(ep, **kwargs)


def _convert_elu(node, importer):
    """aten.elu(x, alpha, scale, input_scale) -> Relax. TVM 0.27's converter reads alpha only: torch's
    decomposition writes SELU as elu(x, alpha, scale=1.0507), so every SELU came out 1.0507x too small
    (tests/test_adv15_tvm_from_torch.py). Plain ELUs keep TVM's own conversion."""
    from tvm import relax

    def arg(i, name, default):
        return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)

    alpha, scale, input_scale = arg(1, "alpha", 1.0), arg(2, "scale", 1.0), arg(3, "input_scale", 1.0)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (alpha, scale, input_scale))
    if not numbers or (scale == 1 and input_scale == 1):
        return importer._elu(node)
    x = importer.env[node.args[0]]
    info = getattr(x, "struct_info", None) or getattr(x, "ty", None)   # 0.27: .ty

    def c(v):
        return relax.const(float(v), str(info.dtype))

    xin = x if input_scale == 1 else relax.op.multiply(x, c(input_scale))
    neg = relax.op.multiply(c(-alpha), relax.op.nn.relu(relax.op.subtract(c(1.0), relax.op.exp(xin))))
    out = relax.op.add(neg, relax.op.nn.relu(x))   # as TVM's converter, with input_scale, then * scale
    return importer.block_builder.emit(out if scale == 1 else relax.op.multiply(out, c(scale)))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("Traceback") and not line.startswith("File "):
            return line
    return type(e).__name__


# --------------------------------------------------------------------------- pipeline


def _as_target(target):
    import tvm

    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, (str, dict)):
        from .targets import resolve_target

        return resolve_target(target)[0]
    raise TypeError(f"expected a tvm Target, a target name or a JSON dict, got {type(target).__name__}")


def _backend_pipeline_module(target):
    """``tvm.relax.backend.<x>.pipeline`` for a target.

    Gotcha (TVM 0.27): ``relax.pipeline.dataflow_lower_passes(llvm_target)``
    raises AttributeError because ``relax.backend.cpu_generic`` does not
    re-export it; the functions exist in ``relax.backend.cpu_generic.pipeline``.
    """
    import importlib

    from tvm.relax.backend.utils import BackendDispatcher

    kind = target.kind.name
    if kind == "llvm":
        name = "cpu_generic"
    elif kind in ("cuda", "rocm", "metal"):
        name = kind if kind != "metal" else "gpu_generic"
    elif kind == "opencl" and "adreno" in target.keys:
        name = "adreno"
    elif BackendDispatcher.is_gpu_target(target):
        name = "gpu_generic"
    else:
        raise TVMError(f"TVM has no Relax pipeline for target kind {kind!r}")
    return importlib.import_module(f"tvm.relax.backend.{name}.pipeline")


def default_prepack(target) -> bool:
    """Weight prepacking is on for CPU (LLVM) targets, off elsewhere (as TVM recommends)."""
    return target.kind.name == "llvm"


# Activation layouts for convolutions (``relax.transform.ConvertLayout``);
# "NCHW" leaves the imported (ONNX) layout alone.
LAYOUTS = {
    "NCHW": None,
    "NHWC": {"relax.nn.conv2d": ["NHWC", "OHWI"]},
}


def default_layout(target) -> str:
    """Convolution layout used when none is given: NCHW everywhere (the imported one)."""
    return "NCHW"


def check_layout(layout) -> str:
    """Normalise a layout name; one-line :class:`TVMError` for an unknown one."""
    name = str(layout).upper()
    if name not in LAYOUTS:
        raise TVMError(f"unknown TVM layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    return name


def prepare_passes(target, *, prepack: bool = False, layout: str = "NCHW") -> list:
    """Passes up to fused TIR: the functions MetaSchedule tunes and later replaces.

    ``prepack`` appends ``AttachAttrLayoutFreeBuffers`` (weights and constants
    become ``layout_free_buffers`` of the kernels that read them).  ``layout``
    "NHWC" converts convolutions (and the ops around them) to channels-last
    with ``ConvertLayout`` before legalization; transposes remain only where
    the graph leaves the convolution chain.
    """
    from tvm import relax

    backend = _backend_pipeline_module(target)
    tail = [relax.transform.AttachAttrLayoutFreeBuffers()] if prepack else []
    desired = LAYOUTS[check_layout(layout)]
    head = []
    if desired:
        from .raise_minmax import RaiseConstantMinMax

        # Clip/ReLU6 kernels back to ops ConvertLayout can move with their conv.
        head = [relax.transform.FoldConstant(), RaiseConstantMinMax(),
                relax.transform.ConvertLayout(desired), relax.transform.FoldConstant()]
    return [
        relax.transform.DecomposeOpsForInference(),
        *head,
        relax.transform.CanonicalizeBindings(),
        *backend.library_dispatch_passes(target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        *tail,
    ]


def prepare(mod, target, *, prepack: bool | None = None, layout: str | None = None):
    """Apply :func:`prepare_passes` (under the target and opt_level 3)."""
    import tvm

    target = _as_target(target)
    if prepack is None:
        prepack = default_prepack(target)
    if layout is None:
        layout = default_layout(target)
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(prepare_passes(target, prepack=prepack, layout=layout))(mod)


def gpu_schedule_rules() -> list:
    """DLight's default GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback), each declining a
    function it fails on instead of failing the build.

    A rule returns None for a function it does not fit, but some crash instead: TVM 0.27's GEMV rule
    asserts (``assert s_loops``) on a depthwise conv whose output map is 1x1 (the last stage of
    MobileNetV3-small / EfficientNet-B0 at 32x32), which made every CUDA build of those models fail with a
    bare AssertionError.
    The function then goes to the next rule, as when a rule does not apply (and, after the last, to
    ``DefaultGPUSchedule``). Each rule schedules its own copy of the function, so a failed try leaves
    nothing behind.
    """
    from tvm.s_tir import dlight as dl

    class _Declining(dl.ScheduleRule):
        def __init__(self, rule):
            self.rule = rule

        def apply(self, func, target, tunable):
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:  # noqa: BLE001 - a crashed rule is a rule that does not apply
                return None

        def is_target_available(self, target) -> bool:
            return self.rule.is_target_available(target)

    return [_Declining(r) for r in (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                    dl.gpu.GeneralReduction(), dl.gpu.Fallback())]


def _is_gpu(target) -> bool:
    from tvm.relax.backend.utils import BackendDispatcher

    return bool(BackendDispatcher.is_gpu_target(target))


def _scheduled_functions(mod) -> tuple[list[str], list[str]]:
    """(scheduled, not scheduled) PrimFunc names of a prepared module."""
    import tvm

    done, todo = [], []
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            attrs = func.attrs
            flag = False
            if attrs is not None:
                for key in ("tirx.is_scheduled", "tir.is_scheduled"):
                    if key in attrs and bool(attrs[key]):
                        flag = True
            (done if flag else todo).append(gv.name_hint)
    return sorted(done), sorted(todo)


@dataclass
class TVMExecutable:
    """A built Relax VM executable plus what was learnt while building it.

    Behaves like the underlying ``relax.VMExecutable`` (attribute access is
    forwarded: ``.export_library``, ``.stats()``, ``.as_text()`` ...).

    Attributes
    ----------
    executable: the ``tvm.relax.VMExecutable``.
    target: the ``tvm.target.Target`` it was built for.
    tuned_functions: fused TIR functions whose schedule came from the database.
    untuned_functions: the other fused TIR functions (default schedules).
    build_seconds: wall time of the build.
    unreplayable: functions whose database record (an anchor-block match) does
        not replay on them; they are among ``untuned_functions``.
    """

    executable: Any
    target: Any
    tuned_functions: list[str] = field(default_factory=list)
    untuned_functions: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    unreplayable: list[str] = field(default_factory=list)

    def __getattr__(self, name):
        # Only called for attributes not found normally: forward to the executable.
        if name == "executable":
            raise AttributeError(name)
        return getattr(self.executable, name)


def _raw(executable):
    return executable.executable if isinstance(executable, TVMExecutable) else executable


def build(
    mod,
    target,
    database=None,
    *,
    prepack: bool | None = None,
    layout: str | None = None,
    cuda_graph: bool | None = None,
    enable_warning: bool = False,
) -> TVMExecutable:
    """Compile a Relax module for ``target`` into a VM executable.

    ``database`` (a MetaSchedule ``Database``, e.g. the one :func:`tune`
    returns) replaces the fused TIR functions it has records for with their
    tuned schedules; the others keep TVM's default schedule (DLight rules then
    ``DefaultGPUSchedule`` on GPU, plain loops on CPU -- as ``tvm.compile``).
    The returned :class:`TVMExecutable` says which functions were tuned.

    ``prepack`` (default: on for CPU) lets tuned kernels read weights in the
    blocked layout MetaSchedule chose; the re-layout is folded into the
    constants here.  It must match the setting the database was tuned with
    (:func:`tvm_integration.tuning.tune_with_report` uses the same default).
    ``layout`` ("NCHW" or "NHWC", default :func:`default_layout`) is the
    convolution layout; like ``prepack`` it must match the tuning run's.
    ``cuda_graph`` (default: on for CUDA) captures the kernel launches of
    ``main`` in a CUDA graph (``relax.backend.use_cuda_graph``).
    """
    import tvm
    from tvm import relax

    target = _as_target(target)
    t0 = time.perf_counter()
    backend = _backend_pipeline_module(target)
    gpu = _is_gpu(target)
    if prepack is None:
        prepack = default_prepack(target)
    layout = check_layout(default_layout(target) if layout is None else layout)
    if cuda_graph is None:
        cuda_graph = target.kind.name == "cuda"
    record: dict[str, list[str]] = {}
    skipped: list[str] = []
    if database is not None:
        _check_database_targets(database, target)

    @tvm.transform.module_pass(opt_level=0, name="CollapseTVMPipeline")
    def _pipeline(m, _ctx):
        m = tvm.transform.Sequential(prepare_passes(target, prepack=prepack, layout=layout))(m)
        if database is not None:
            with _replayable_only(database, skipped):
                m = relax.transform.MetaScheduleApplyDatabase(enable_warning=enable_warning)(m)
        record["tuned"], record["untuned"] = _scheduled_functions(m)
        if prepack:
            # Tuned kernels now start with a layout-rewrite block on their weights:
            # split it into its own function and fold it into the constant weights.
            m = tvm.transform.Sequential(
                [
                    relax.transform.SplitLayoutRewritePreproc(),
                    relax.transform.LiftTransformParams(),
                    relax.transform.FoldConstant(),
                    # The folded weights come back as make_tuple + tuple_getitem of
                    # constants, which the VM would otherwise rebuild on every call.
                    relax.transform.CanonicalizeBindings(),
                    relax.transform.DeadCodeElimination(),
                ]
            )(m)
        if gpu:
            from tvm.s_tir import dlight as dl

            m = dl.ApplyDefaultSchedule(*gpu_schedule_rules())(m)
            # What DLight has no rule for (e.g. convolutions) still needs thread bindings.
            from tvm.s_tir import transform as s_tir_transform

            m = s_tir_transform.DefaultGPUSchedule()(m)
        m = tvm.transform.Sequential(
            list(backend.dataflow_lower_passes(target)) + list(backend.finalize_passes(target))
        )(m)
        return m

    config = {"relax.backend.use_cuda_graph": True} if cuda_graph else {}
    try:
        with target, tvm.transform.PassContext(opt_level=3, config=config), \
                stderr_without(BUILD_NOISE, once=BUILD_NOISE_ONCE):
            ex = tvm.compile(mod, target=target, relax_pipeline=_pipeline)
    except TVMError:
        raise
    except Exception as e:
        raise TVMError(f"TVM build for {target.kind.name} failed: {_first_line(e)}; TVM cannot compile an op of this "
                       f"model for this target: try another --target, or {WITHOUT_TVM}") from e
    return TVMExecutable(
        executable=ex,
        target=target,
        tuned_functions=record.get("tuned", []),
        untuned_functions=record.get("untuned", []),
        build_seconds=time.perf_counter() - t0,
        unreplayable=sorted(set(skipped)),
    )


def _check_database_targets(database, target) -> None:
    """Refuse a database holding records of another target: MetaScheduleApplyDatabase takes a kernel's best record
    whatever target it was tuned for, so a CPU database built into a CUDA library its x86 loop nests (and the
    library was reported tuned). TVMError naming the targets."""
    from .tuning import foreign_record_targets, _short_target, target_identity

    try:
        records = database.get_all_tuning_records()
    except Exception:  # noqa: BLE001 - a user's PyDatabase without the listing: nothing to check
        return
    foreign = foreign_record_targets([r.target for r in records if r.target is not None], target)
    if foreign:
        raise TVMError(f"the tuning database holds records tuned for {', '.join(foreign[:2])}"
                       f"{' ...' if len(foreign) > 2 else ''}, not for {_short_target(target_identity(target))}; "
                       "tune for this target into a database of its own (tuning.default_database_dir(target))")


def _replayable_only(database, skipped: list):
    """``database`` answering only with records whose trace replays on the function asked about.

    Records match by anchor block (tuning.MODULE_EQUALITY): a conv tuned with a ReLU epilogue is the record of
    the same conv with a HardSwish epilogue too, but its trace does not replay there (the conv output has two
    consumers: "old_outputs.size() == new_outputs.size() (1 vs. 2)", a MobileNetV3 with --tune-trials), and
    MetaScheduleApplyDatabase failed the whole build on it. Such a function keeps its default schedule and is
    named in ``skipped``."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace
    from tvm_ffi import structural_equal

    @derived_object
    class _Replayable(ms.database.PyDatabase):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def has_workload(self, mod):
            return self.inner.has_workload(mod)

        def commit_workload(self, mod):
            return self.inner.commit_workload(mod)

        def commit_tuning_record(self, record):
            return self.inner.commit_tuning_record(record)

        def get_top_k(self, workload, top_k):
            return self.inner.get_top_k(workload, top_k)

        def get_all_tuning_records(self):
            return self.inner.get_all_tuning_records()

        def query_tuning_record(self, mod, target, name):
            # MetaScheduleApplyDatabase asks for the record, then replays it as tried here: a record of this very
            # function on its own module, an anchor-block match through ScheduleUsingAnchorTrace on `mod`
            rec = self.inner.query_tuning_record(mod, target, name)
            if rec is not None and not structural_equal(mod, rec.workload.mod):
                try:
                    schedule_using_anchor_trace(Schedule(mod), rec.trace, target)
                except Exception:  # noqa: BLE001 - TVM raises its own InternalError / ScheduleError kinds
                    skipped.append(str(name))
                    return None
            return rec

        def query_schedule(self, mod, target, name):
            return self.inner.query_schedule(mod, target, name) if self.query_tuning_record(mod, target, name) \
                else None

        def query_ir_module(self, mod, target, name):
            sch = self.query_schedule(mod, target, name)
            return None if sch is None else sch.mod

        def __len__(self):
            return len(self.inner)

    return _Replayable(database)


# --------------------------------------------------------------------------- run / time


def _device(device, executable=None):
    import tvm

    if device is None:
        target = getattr(executable, "target", None)
        kind = target.kind.name if target is not None else "llvm"
        return tvm.cpu(0) if kind == "llvm" else tvm.device(kind, 0)
    if isinstance(device, str):
        return tvm.device(device, 0)
    return device


def ensure_cuda_runtime_compiler() -> str:
    """Register TVM's CUDA JIT callback; returns the backend used ("nvrtc" or "nvcc").

    TVM 0.27 CUDA modules carry CUDA source that is compiled when the module
    is loaded; that needs ``import tvm.support.nvcc`` and either the
    ``cuda-bindings`` package (NVRTC, TVM's default) or nvcc (selected here
    through ``TVM_CUDA_COMPILE_MODE=nvcc`` when cuda-bindings is missing).
    """
    import importlib.util
    import shutil as _sh

    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    if "TVM_CUDA_COMPILE_MODE" not in os.environ:
        if importlib.util.find_spec("cuda") is None and _sh.which("nvcc"):
            os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    return os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc")


def _vm(executable, device):
    from tvm import relax

    if getattr(device, "dlpack_device_type", None) and device.dlpack_device_type() == 2:  # kDLCUDA
        ensure_cuda_runtime_compiler()
    target = getattr(executable, "target", None)
    if target is not None and target.kind.name == "llvm":
        # TVM's pool would otherwise take half the cores on x86 (see targets.py).
        from .targets import configure_runtime_threads

        cores = target.attrs.get("num-cores", None)
        configure_runtime_threads(int(cores) if cores is not None else None)
    return relax.VirtualMachine(_raw(executable), device)


def _ordered_args(vm, inputs: Mapping[str, np.ndarray], func_name: str = "main") -> list:
    """Map an ONNX-style ``{name: array}`` dict onto the VM function's parameters.

    Exact names first, then the importer's sanitised spelling ("." -> "_"),
    then the remaining ones in dict order.
    """
    arity = vm._get_function_arity(func_name)  # noqa: SLF001 - public in all but name
    params = [vm._get_function_param_name(func_name, i) for i in range(arity)]  # noqa: SLF001
    if not isinstance(inputs, Mapping):   # a list of arrays gave "dictionary update sequence element #0 ..."
        what = type(inputs).__name__
        raise TVMError(f"inputs must be a dict {{input name: array}}, got a {what}; pass "
                       f"dict(zip({params}, arrays)) (the compiled model's inputs, in order)")
    for k, v in inputs.items():
        try:
            kind = np.asarray(v).dtype.kind
        except Exception:  # noqa: BLE001 - anything numpy cannot read as an array
            kind = "O"
        if kind not in "biuf":   # TVM said "unknown dtype `<U3`" (a string) or failed deeper (objects)
            raise TVMError(f"input {k!r} must be a numeric array, got {type(v).__name__}"
                           f"{f' of dtype {v.dtype}' if hasattr(v, 'dtype') else ''}; pass np.asarray(value, "
                           "dtype=np.float32) (or the input's dtype)")
    if len(inputs) != arity:
        raise TVMError(
            f"the compiled model takes {arity} input(s) {params}, got {len(inputs)}: {list(inputs)}"
        )
    remaining = dict(inputs)
    ordered: list[Any] = [None] * arity
    for i, p in enumerate(params):
        for key in list(remaining):
            if key == p or key.replace(".", "_") == p or ("input_" + key.replace(".", "_")) == p:
                ordered[i] = remaining.pop(key)
                break
    rest = iter(remaining.values())
    return [a if a is not None else next(rest) for a in ordered]


def _flatten_outputs(out) -> list[np.ndarray]:
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    if isinstance(out, (list, tuple)) or hasattr(out, "__len__") and not isinstance(out, np.ndarray):
        res: list[np.ndarray] = []
        for item in out:
            res.extend(_flatten_outputs(item))
        return res
    return [np.asarray(out)]


def run(executable, inputs: Mapping[str, np.ndarray], device=None) -> list[np.ndarray]:
    """Run ``main`` once on ``device`` (default: the target's device 0); outputs as numpy."""
    import tvm

    dev = _device(device, executable)
    vm = _vm(executable, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in _ordered_args(vm, inputs)]
    return _flatten_outputs(vm["main"](*args))


def measure_latency(
    executable,
    inputs: Mapping[str, np.ndarray],
    device=None,
    *,
    repeat: int = 20,
    min_repeat_ms: int = 10,
    budget_s: float | None = None,
    stats: dict | None = None,
) -> float:
    """Median latency in milliseconds of ``main`` (``time_evaluator``, warm-up discarded).

    Each of the ``repeat`` measurements averages as many calls as needed to
    last ``min_repeat_ms``; the median over them is returned. With ``budget_s``,
    one call is timed first and ``repeat`` lowered (to no fewer than
    :data:`MIN_REPEAT`) so that the measurements take about ``budget_s``: an
    untuned ResNet-50 takes seconds per call, and 20 of them for a number the
    user did not ask to optimise is minutes of waiting. ``stats`` (a dict), if
    given, receives ``repeat`` (the count used) and ``first_call_ms``.
    """
    import tvm

    dev = _device(device, executable)
    vm = _vm(executable, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in _ordered_args(vm, inputs)]
    vm.set_input("main", *args)
    repeat = max(1, int(repeat))
    if budget_s is not None:
        t0 = time.perf_counter()
        vm.invoke_stateful("main")
        dev.sync()
        first = time.perf_counter() - t0
        repeat = max(min(repeat, MIN_REPEAT), min(repeat, int(budget_s / max(first, 1e-9))))
        if stats is not None:
            stats["first_call_ms"] = first * 1e3
    if stats is not None:
        stats["repeat"] = repeat
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(timer("main").median * 1e3)


#: the fewest measurements :func:`measure_latency` makes under a time budget
MIN_REPEAT = 3


def profile(executable, inputs: Mapping[str, np.ndarray], device=None, *, runs: int = 20) -> dict:
    """Where the time of one ``main`` call goes: per-callee wall times from a VM instrument.

    TVM 0.27's ``relax.VirtualMachine`` has no ``profile=True`` (the profiler VM
    of older releases is gone); ``VirtualMachine.set_instrument`` is called
    before and after every ``Call`` instruction, which is timed here.  Returns
    ``{"total_us", "calls_us", "outside_us", "rows"}`` averaged over ``runs``
    calls (after a warm-up): ``rows`` has one entry per callee (TIR kernel or VM
    builtin such as ``vm.builtin.alloc_storage``), sorted by time, with
    ``count``, ``total_us``, ``mean_us``; ``outside_us`` is the rest of the call
    (VM dispatch plus the instrument's own Python overhead, a few us per call:
    run :func:`measure_latency` for the un-instrumented time).
    """
    import tvm

    dev = _device(device, executable)
    vm = _vm(executable, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in _ordered_args(vm, inputs)]
    totals: dict[str, list[float]] = {}
    started: list[float] = []

    def instrument(_func, symbol, before_run, _ret, *_args):
        now = time.perf_counter()
        if before_run:
            started.append(now)
        elif started:
            entry = totals.setdefault(str(symbol), [0, 0.0])
            entry[0] += 1
            entry[1] += (now - started.pop()) * 1e6
        return 0

    vm["main"](*args)  # warm-up, not instrumented
    vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert") else instrument)
    runs = max(1, int(runs))
    t0 = time.perf_counter()
    for _ in range(runs):
        vm["main"](*args)
    total_us = (time.perf_counter() - t0) * 1e6 / runs
    rows = [
        {"name": k, "count": v[0] / runs, "total_us": v[1] / runs, "mean_us": v[1] / v[0] if v[0] else 0.0}
        for k, v in totals.items()
    ]
    rows.sort(key=lambda r: -r["total_us"])
    calls_us = sum(r["total_us"] for r in rows)
    return {"total_us": total_us, "calls_us": calls_us, "outside_us": total_us - calls_us, "rows": rows}


def measure_ort_latency(
    model,
    inputs: Mapping[str, np.ndarray],
    *,
    repeat: int = 20,
    min_repeat_ms: float = 10.0,
    threads: int | None = None,
) -> float:
    """Median latency in ms of an ONNX model on onnxruntime's CPU provider (same protocol)."""
    from collapse_passes.core import runtime

    sess = runtime.session(_load_onnx(model), optimize=True, threads=threads or (os.cpu_count() or 1))
    feed = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
    one = max(min(runtime.time_runs(sess, feed, repeat=1, warmup=1)), 1e-7)
    number = max(1, int(np.ceil(min_repeat_ms / 1e3 / one)))
    results = [sum(runtime.time_runs(sess, feed, repeat=number, warmup=0)) / number
               for _ in range(max(1, int(repeat)))]
    return float(np.median(results) * 1e3)


def run_ort(model, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of an ONNX model on onnxruntime's CPU provider (graph optimizations on)."""
    from collapse_passes.core import runtime

    return runtime.outputs(runtime.session(_load_onnx(model), optimize=True), dict(inputs))


# --------------------------------------------------------------------------- export


def export_library(executable, path: str | os.PathLike, target_info=None) -> str:
    """Write the executable as a shared library loadable with ``tvm.runtime.load_module``.

    For cross targets (``target_info.cross_compiler``, e.g. aarch64) the
    library is linked with that compiler (``tvm.support.cc.cross_compiler``;
    ``tvm.contrib.cc`` of older TVMs moved to ``tvm.support.cc`` in 0.27).
    Load it with ``relax.VirtualMachine(tvm.runtime.load_module(path), dev)``;
    weights are bound, so ``vm["main"]`` takes the model inputs only.
    The path gets collapse_passes' output checks first (a folder, device or FIFO is never replaced, a
    missing folder is refused, not created) and the library is written atomically: linked into a temp
    directory beside it (the name the next CLI run recognises as stale), then renamed into place.
    """
    import shutil

    from tvm.support import cc

    from collapse_passes.errors import CollapseError
    from collapse_passes.outputs import checked_output_file, signals_blocked, temp_path

    path = os.fspath(path)
    try:
        final = checked_output_file(path, "export_library()")
    except CollapseError as e:
        raise TVMError(str(e)) from None
    cross = getattr(target_info, "cross_compiler", None)
    tmp_dir = None
    try:   # from before the mkdir: a signal held over it is raised when the block ends, and must find it recorded
        with signals_blocked():
            made = os.fspath(temp_path(final, "tmpdir"))
            os.mkdir(made)
            tmp_dir = made
        staged = os.path.join(tmp_dir, final.name)   # same name: TVM picks the format by the suffix (.tar)
        try:
            with stderr_without(SAVE_NOISE):
                if cross:
                    _raw(executable).export_library(staged, fcompile=cc.cross_compiler(cross))
                else:
                    _raw(executable).export_library(staged)
        except Exception as e:
            raise TVMError(f"exporting {path} failed: {_first_line(e)}") from e
        os.replace(staged, final)
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


#: TVM 0.27's VM executable logs "Warning: Scope Saving:" once per constant when it is saved (a debug
#: line left in executable.cc): 100-270 lines for a MobileNet/Swin export, telling the user nothing
SAVE_NOISE = ("Warning: Scope Saving:",)
#: a Swin-T build logs ~70 of each (one per kernel / per Gather): codegen noise, and a caution about
#: TVM's own take(mode="fast") on the importer's in-bound indices; the latter is kept once
BUILD_NOISE = ("Warning: Unknown pragma pragma_scope",)
BUILD_NOISE_ONCE = ("Warning: Fast mode segfaults when there are out-of-bounds indices",)


@contextlib.contextmanager
def stderr_without(noise: Sequence[str], once: Sequence[str] = ()):
    """Run the block with file descriptor 2 captured (C++ logging bypasses sys.stderr), then pass on
    every captured line that contains none of `noise`, and the first line only that contains an item
    of `once`."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no real stderr (embedded, closed): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept, seen = [], set()
            for ln in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if any(n in ln for n in noise):
                    continue
                rep = next((n for n in once if n in ln), None)
                if rep is not None:
                    if rep in seen:
                        continue
                    seen.add(rep)
                kept.append(ln)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _find_modules(mod, kind: str, seen=None) -> list:
    seen = set() if seen is None else seen
    out = []
    for m in mod.imports:
        key = int(m.__chandle__()) if hasattr(m, "__chandle__") else id(m)
        if key in seen:
            continue
        seen.add(key)
        if m.kind == kind:
            out.append(m)
        out.extend(_find_modules(m, kind, seen))
    return out


def cuda_source(executable) -> str:
    """CUDA C source of the device code of a CUDA build.

    Gotcha (TVM 0.27): the CUDA codegen embeds CUDA *source* in the module;
    the CUDA runtime compiles it when the module is loaded, through
    ``tvm_callback_cuda_compile`` (registered by ``import tvm.support.nvcc``;
    NVRTC from the ``cuda-bindings`` package by default, nvcc with
    ``TVM_CUDA_COMPILE_MODE=nvcc``).
    """
    mods = _find_modules(_raw(executable).mod, "cuda")
    if not mods:
        raise TVMError("the executable has no CUDA module")
    return "\n".join(str(m.inspect_source("")) for m in mods)


def compile_cuda_source(executable, target, target_format: str = "fatbin") -> bytes:
    """Compile the device code of a CUDA build with nvcc (works without a GPU)."""
    import shutil as _sh

    from tvm.support import nvcc

    if _sh.which("nvcc") is None:
        raise TVMError("nvcc not found on PATH: install the CUDA toolkit to compile CUDA kernels")
    target = _as_target(target)
    with target:  # nvcc.compile_cuda reads the arch from the current target
        return bytes(
            nvcc.compile_cuda(cuda_source(executable), target_format=target_format, compiler="nvcc")
        )


def compile_onnx(model, target, database=None):
    """Convenience: :func:`import_onnx` then :func:`build`."""
    return build(import_onnx(model), target, database=database)
