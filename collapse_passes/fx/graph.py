"""A view of a torch.fx GraphModule for the collapse passes: constants, linear ops, BatchNorms,
activation sites and their keys, and how to write a new linear op back.

Three graph styles meet here and are read the same way:
- torch.fx.symbolic_trace: call_module nodes (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, ...), plus
  call_function / call_method for functional code (F.relu, x.relu(), operator.add);
- torch.export (ExportedProgram.module()): aten ops with get_attr weights (aten.conv2d.default, ...);
- dynamo (a torch.compile backend): torch functions whose weights are graph inputs; the backend
  freezes those into get_attr constants first (freeze_parameters).
Keys are module paths read from node.meta["nn_module_stack"] (or the call_module target); a module
called at several places gets one key per call site, `path:i` (i = call index in graph order).
Activations written out elementwise (x * torch.sigmoid(x)) are one site, found by the ONNX front end's
rule (core/gates.py).
"""
from __future__ import annotations

import functools
import inspect
import itertools
import operator
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..algebra.conv import ConvParams
from ..algebra.linear import LinearParams
from ..core import activations as catalogue
from ..core import gates
from ..core.names import AttributeNames, fresh_name
from ..core.torch_kinds import function_kind, module_kind
from ..core.selection import ROOT_CALL, SITE_SEP, root_keys, site_key
from .frames import RESUMED_GRAPH

aten = torch.ops.aten

# ----------------------------------------------------------------------------------- constants


def get_attr_value(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def const_tensor(gm: fx.GraphModule, arg):
    """The tensor behind a get_attr node (None for anything computed at run time)."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        v = get_attr_value(gm, arg.target)
        return v if isinstance(v, torch.Tensor) else None
    return None


def to_numpy(t) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def submodule(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


# ----------------------------------------------------------------------------------- shapes


def shape_of(node) -> tuple | None:
    """Static shape of a node's tensor output from its metadata (ShapeProp, export or dynamo)."""
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        try:
            return tuple(_example_dim(d) for d in tm.shape)
        except (TypeError, ValueError):
            return None
    for k in ("val", "example_value"):
        v = node.meta.get(k)
        if isinstance(v, torch.Tensor):
            try:
                return tuple(_example_dim(d) for d in v.shape)
            except (TypeError, ValueError):  # symbolic sizes without an example value
                return None
    return None


def _example_dim(d) -> int:
    """A dim as a number: a SymInt (dynamic shapes) gives its example value, read without int(), which would
    guard the compiled graph to that size (a recompile per input shape)."""
    if isinstance(d, torch.SymInt):
        hint = d.node.hint
        if hint is None:
            raise ValueError("unbacked symbolic size")
        return int(hint)
    return int(d)


#: within a torch front-end run (shape_runs_scope): [True] once a graph ran on example_inputs (propagate_shapes)
_SHAPE_RUNS: ContextVar = ContextVar("collapse_passes_shape_runs", default=None)


def shape_runs_scope(fn):
    """Decorates a torch front-end run (collapse_torch, torch_backend's compile): its first propagate_shapes is the
    input graph's run on example_inputs; once that ran, a graph a pass made that does not run on the same inputs is
    the tool's failure (a bug report), not "the model does not run on example_inputs", which blamed the user."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        token = _SHAPE_RUNS.set([False])
        try:
            return fn(*args, **kwargs)
        finally:
            _SHAPE_RUNS.reset(token)
    return run


def propagate_shapes(gm: fx.GraphModule, example_inputs, clone: bool = True, real: bool = True):
    """Fill node.meta['tensor_meta'] by running the graph once on example_inputs; returns the graph's output
    (collapse() keeps it as that model's first verification run instead of running it again).

    clone: run on copies, so a model that writes into its input leaves the caller's tensors alone (the
    torch.compile backend passes False for fake inputs: tensors made inside dynamo's compile add guards it
    cannot source). real: run on the tensors given even inside a torch.compile backend, where ShapeProp would
    otherwise run in dynamo's fake mode: a fake copy of the whole graph and a fake run (Swin-T at 224: 0.6 s
    against 0.2 s), whose output is no run of the model (the backend's check needs the input graph's outputs)."""
    import contextlib

    from torch.fx.passes.shape_prop import ShapeProp

    from ..errors import CollapseError

    feeds = [t.clone() if clone and isinstance(t, torch.Tensor) else t for t in example_inputs]
    # real: RealShapeProp, which never looks for a fake mode (ShapeProp takes the ambient tracing context's, dynamo's)
    base = _real_shape_prop() if real else ShapeProp
    prop = (_measuring_shape_prop(base) if any(opaque_call(n) for n in gm.graph.nodes) else base)(gm)
    import io

    ran = _SHAPE_RUNS.get()
    try:   # ShapeProp prints the traceback of a failing node to stderr itself: the user gets our one line
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            out = prop.propagate(*feeds)
    except Exception as exc:   # wrong shapes or dtypes for this model: the user's input, one line
        cause = exc.__cause__ or exc
        why = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        shapes = ", ".join(str(tuple(t.shape)) + ("" if t.dtype == torch.float32 else f" {str(t.dtype)[6:]}")
                           if isinstance(t, torch.Tensor) else type(t).__name__ for t in feeds)
        if ran and ran[0]:   # the input graph ran on them: a pass broke this one (traceback kept: a bug)
            from ..errors import BUG_REPORT

            raise RuntimeError(f"a graph collapse_passes rewrote does not run on example_inputs of shape {shapes}, on "
                               f"which the input model ran ({why}); {BUG_REPORT}") from exc
        raise CollapseError(f"the model does not run on example_inputs of shape {shapes} ({why}); "
                            + (program_graph_way_out(gm, feeds) or "pass inputs the model accepts")) from None
    if ran is not None:
        ran[0] = True
    return out



def opaque_call(node: fx.Node) -> bool:
    """A call torch.fx keeps whole: a Python function of the model's own code that the tracer did not enter
    (torch.fx.wrap, as torchvision's Swin wraps its window attention), not a torch op. Its ops are invisible to
    the passes and to the report's static counts."""
    t = node.target
    return node.op == "call_function" and inspect.isfunction(t) and not str(getattr(t, "__module__", "") or "") \
        .startswith(("torch", "collapse_passes", "_operator", "operator", "math", "builtins"))


def program_graph_way_out(gm: fx.GraphModule, feeds) -> str | None:
    """The way out when `gm` is an ExportedProgram's own graph_module given the user's inputs alone: it takes the
    lifted parameters, buffers and constants as inputs first (torch.export names them p_*, b_*, c_*), so its shape
    run failed on the first parameter and "pass inputs the model accepts" pointed nowhere. None otherwise: a traced
    model's own input named b_mask is no lifted buffer (the program's come first, each with its example value)."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    lifted = list(itertools.takewhile(lambda t: re.match(r"[pbc]_", t), (str(n.target) for n in phs)))
    if lifted and len(phs) > len(feeds) and all("val" in n.meta for n in phs):
        return (f"this is an ExportedProgram's graph_module, which takes its parameters and buffers as inputs "
                f"({lifted[0]}, ...): pass the ExportedProgram itself, or ep.module()")
    return None


_MEMORY_FORMATS = ((torch.contiguous_format, None), (torch.channels_last, 4), (torch.channels_last_3d, 5))


def real_tensor_meta(t: torch.Tensor):
    """ShapeProp's TensorMetadata of a real tensor, its memory format from Tensor.is_contiguous (torch's own
    query handles symbolic strides and imports sympy for it); quantized / sparse tensors by torch's function."""
    from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

    if t.is_quantized or t.layout != torch.strided:
        return _extract_tensor_metadata(t)
    fmt = next((f for f, dims in _MEMORY_FORMATS if dims in (None, t.dim()) and t.is_contiguous(memory_format=f)),
               None)
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), fmt, False, {})


@functools.cache
def _real_shape_prop():
    class RealShapeProp(fx.Interpreter):
        """torch's ShapeProp on real tensors (node.meta["tensor_meta"] and ["type"], the same metadata), without its
        symbolic-shape machinery: ShapeProp imports torch.fx.experimental.symbolic_shapes and sympy on its first node
        (for fake tensors' unbacked sizes, and a contiguity query that handles symbolic strides), ~1 s of a fresh
        process's first collapse() (ResNet-50 at 224 on one thread: 3.4 s in all) for tensors whose contiguity is a
        plain query (Tensor.is_contiguous(memory_format=...))."""

        def run_node(self, n):
            try:
                result = super().run_node(n)
            except Exception as e:   # as ShapeProp: the node named, the cause kept (propagate_shapes reads it)
                raise RuntimeError(f"ShapeProp error for: node={n.format_node()}") from e
            found = False

            def extract(obj):
                nonlocal found
                if isinstance(obj, torch.Tensor):
                    found = True
                    return real_tensor_meta(obj)
                return obj

            meta = fx.node.map_aggregate(result, extract)
            if found:
                n.meta["tensor_meta"] = meta
            n.meta["type"] = type(result)
            return result

        def propagate(self, *args):
            return self.run(*args)

    return RealShapeProp


def _measuring_shape_prop(base):
    from torch.utils.flop_counter import FlopCounterMode

    class MeasuringShapeProp(base):
        """ShapeProp that also counts the MACs of each opaque call (opaque_call) while it runs, in
        node.meta["opaque_macs"] (FlopCounterMode's FLOPs / 2): what the report cannot count from shapes."""

        def run_node(self, n):
            if not opaque_call(n):
                return super().run_node(n)
            with FlopCounterMode(display=False) as counter:
                out = super().run_node(n)
            n.meta["opaque_macs"] = int(counter.get_total_flops()) // 2
            return out

    return MeasuringShapeProp


def copy_sharing_weights(gm: nn.Module):
    """A deep copy of gm (graph, node metadata, module objects, their attributes) that shares gm's parameter
    and buffer tensors: what the passes change is the graph and which module a name holds, never a tensor in
    place, so the copies of the input collapse() keeps (the original graph, the requested semantics) need no
    copy of the weights (ResNet-50: 0.02 s against 0.3 s). A tensor written in place through one copy would be
    seen by the others: keep it that way (tests/test_fx_forward_count.py checks the user's model)."""
    import copy

    memo = {id(t): t for t in [*gm.parameters(), *gm.buffers()]}
    return copy.deepcopy(gm, memo)


class SharedWeightWrites:
    """Fingerprints of the weights the copies share with the user's model (copy_sharing_weights). A pass that
    wrote one in place would change the user's model, the original and the requested semantics alike, so the
    gate, comparing the result with a reference that reads the same tensor, could not see it. changed() names
    the tensors written since: version counter, float64 sum and norm (a write through .data or a numpy view
    of to_numpy bypasses the counter)."""

    def __init__(self, tensors):
        self._seen = {id(t): (t, self._fingerprint(t)) for t in tensors if isinstance(t, torch.Tensor)}

    @classmethod
    def of(cls, module: nn.Module) -> "SharedWeightWrites":
        return cls([*module.parameters(), *module.buffers()])

    @staticmethod
    def _fingerprint(t: torch.Tensor) -> tuple:
        try:
            version = t._version
        except RuntimeError:   # an inference-mode tensor has no version counter
            version = None
        if t.is_complex() or t.numel() == 0:
            return (version,)
        with torch.no_grad():   # in the tensor's own dtype: 5x cheaper than float64 (ResNet-50: 0.02 s), as sure
            d = t.detach() if t.is_floating_point() else t.detach().double()
            return version, repr(float(d.sum())), repr(float(torch.linalg.vector_norm(d)))

    def changed(self, names: dict | None = None) -> list[str]:
        """The tensors written in place since the fingerprints were taken (named by `names`: id -> name)."""
        names = names or {}
        return [names.get(i, f"tensor{tuple(t.shape)}") for i, (t, fp) in self._seen.items()
                if self._fingerprint(t) != fp]

# ----------------------------------------------------------------------------------- linear ops

_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3,
               aten.conv1d.default: 1, aten.conv2d.default: 2, aten.conv3d.default: 3}
_LINEAR_FUNCS = {F.linear, torch._C._nn.linear, aten.linear.default}


def _tuple(v, n: int) -> tuple:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 else v


def _conv_pads(padding, kernel, dilation) -> tuple | None:
    """ONNX pads (begins, then ends) of a torch conv's `padding`: numbers, "valid", or "same" (total
    d*(k-1) per axis, the odd one at the end, as torch pads it; torch allows it at stride 1 only). Read
    as any other padding, a "same" conv folds and merges on this front end as its ONNX export does."""
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * n)
        if padding != "same":
            return None
        total = [int(d) * (int(k) - 1) for d, k in zip(dilation, kernel)]
        return tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
    pad = _tuple(padding, n)
    return pad + pad


def _arg(node, i, name, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


@dataclass
class LinearOp:
    """A conv or linear with constant weights: y = op(x). params in ONNX/torch conventions (algebra/)."""
    node: fx.Node
    kind: str                 # "conv" | "linear"
    params: object            # ConvParams | LinearParams
    x: fx.Node
    bias_map: np.ndarray | None = None   # a merged conv's per-position bias (PaddedConv)
    x_arg: int = 0                       # node.args[x_arg] is x (1 for addmm(bias, x, w.t()))
    weight_view: fx.Node | None = None   # the W.t() node a decomposed Linear reads its weight through

    @property
    def dtype(self):
        return self.params.weight.dtype


def linear_op(gm: fx.GraphModule, node: fx.Node) -> LinearOp | None:
    """The conv/linear computed by `node`, or None if it is not one (or its weights are not constant)."""
    if node.op == "call_module":
        mod = submodule(gm, node)
        if not node.args or not isinstance(node.args[0], fx.Node) or node.kwargs or len(node.args) != 1:
            return None
        x = node.args[0]
        if isinstance(mod, PaddedConv):
            return LinearOp(node, "conv", mod.conv_params(), x, to_numpy(mod.bias_map))
        if isinstance(mod, _CONV_MODULES):
            n = mod.weight.ndim - 2
            pads = _conv_pads(mod.padding, mod.weight.shape[2:], _tuple(mod.dilation, n))
            if mod.padding_mode != "zeros" or pads is None:
                return None
            return LinearOp(node, "conv", ConvParams(to_numpy(mod.weight), to_numpy(mod.bias), _tuple(mod.stride, n),
                                                     pads, _tuple(mod.dilation, n), mod.groups), x)
        if type(mod) is nn.Linear:
            return LinearOp(node, "linear", LinearParams(to_numpy(mod.weight), to_numpy(mod.bias)), x)
        return None
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    t = node.target
    if t in _CONV_FUNCS or t is aten.convolution.default:
        if t is aten.convolution.default:
            if _arg(node, 6, "transposed", False):
                return None
            n_stride, n_pad, n_dil, n_groups = 3, 4, 5, 8
        else:
            n_stride, n_pad, n_dil, n_groups = 3, 4, 5, 6
        w = const_tensor(gm, _arg(node, 1, "weight", None))
        b_arg = _arg(node, 2, "bias", None)
        b = const_tensor(gm, b_arg)
        if w is None or (b_arg is not None and b is None):
            return None
        n = w.ndim - 2
        dil = _tuple(_arg(node, n_dil, "dilation", 1), n)
        pads = _conv_pads(_arg(node, n_pad, "padding", 0), w.shape[2:], dil)
        if pads is None:
            return None
        return LinearOp(node, "conv", ConvParams(to_numpy(w), to_numpy(b), _tuple(_arg(node, n_stride, "stride", 1), n),
                                                 pads, dil, int(_arg(node, n_groups, "groups", 1))), node.args[0])
    if t in _LINEAR_FUNCS:
        w = const_tensor(gm, _arg(node, 1, "weight", None))
        b_arg = _arg(node, 2, "bias", None)
        b = const_tensor(gm, b_arg)
        if w is None or w.ndim != 2 or (b_arg is not None and b is None):
            return None
        return LinearOp(node, "linear", LinearParams(to_numpy(w), to_numpy(b)), node.args[0])
    if t in MATMUL_LINEARS:
        return _matmul_linear(gm, node)
    return None


#: how a decomposed program (ep.run_decompositions()) writes a Linear: addmm(b, x, W.t()), mm(x, W.t())
MATMUL_LINEARS = (aten.addmm.default, aten.mm.default)
_TRANSPOSES = {aten.t.default, aten.numpy_T.default}


def _weight_of_mat2(gm: fx.GraphModule, mat2) -> np.ndarray | None:
    """The (out, in) weight W of x @ mat2: mat2 a constant (in, out) matrix, or W.t() / W.permute(1, 0) /
    W.transpose(0, 1) of a constant W (how run_decompositions() writes a Linear)."""
    w = const_tensor(gm, mat2)
    if w is not None:
        return to_numpy(w).T.copy() if w.ndim == 2 else None
    if not isinstance(mat2, fx.Node) or mat2.op != "call_function" or not mat2.args:
        return None
    t = mat2.target
    if t is aten.transpose.int:
        dims = [_arg(mat2, 1, "dim0", None), _arg(mat2, 2, "dim1", None)]
        swaps = all(type(d) is int for d in dims) and {d % 2 for d in dims} == {0, 1}
    else:
        swaps = t in _TRANSPOSES or (t is aten.permute.default and list(_arg(mat2, 1, "dims", ())) in ([1, 0], [-1, -2]))
    w = const_tensor(gm, mat2.args[0]) if swaps else None
    return to_numpy(w) if w is not None and w.ndim == 2 else None


def _matmul_linear(gm: fx.GraphModule, node: fx.Node) -> LinearOp | None:
    """addmm(bias, x, W.t()) / mm(x, W.t()), a decomposed program's Linear (ep.run_decompositions()), as the
    linear it is: without this a decomposed program merged no Linear chain its plain export merged."""
    addmm = node.target is aten.addmm.default
    x, mat2 = (node.args[1:3] if addmm else node.args[:2]) if len(node.args) >= (3 if addmm else 2) else (None, None)
    if not isinstance(x, fx.Node) or (addmm and (_arg(node, 3, "beta", 1) != 1 or _arg(node, 4, "alpha", 1) != 1)):
        return None
    w = _weight_of_mat2(gm, mat2)
    b = const_tensor(gm, node.args[0]) if addmm else None
    if w is None or (addmm and (b is None or b.numel() != w.shape[0] or b.ndim > 2 or b.ndim == 2 and b.shape[0] != 1)):
        return None
    view = mat2 if mat2.op == "call_function" else None
    return LinearOp(node, "linear", LinearParams(w, None if b is None else to_numpy(b).reshape(-1)), x,
                    x_arg=1 if addmm else 0, weight_view=view)


# ----------------------------------------------------------------------------------- BatchNorm

_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class BatchNormOp:
    """An eval-mode BatchNorm: y = scale*x + shift per channel (axis 1)."""
    node: fx.Node            # the node whose users see y (a getitem for _native_batch_norm_legit_no_training)
    nodes: list              # every node of the op (erased when folded)
    x: fx.Node
    gamma: object
    beta: object
    mean: object
    var: object
    eps: float


def batchnorm_op(gm: fx.GraphModule, node: fx.Node) -> BatchNormOp | None:
    """The eval-mode BatchNorm computed by `node`, or None (training-mode BNs are never folded)."""
    if node.op == "call_module":
        mod = submodule(gm, node)
        if not isinstance(mod, _BN_MODULES) or mod.training and mod.track_running_stats or mod.running_mean is None:
            return None
        return BatchNormOp(node, [node], node.args[0], mod.weight, mod.bias, mod.running_mean, mod.running_var,
                           float(mod.eps))
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    t = node.target
    c = lambda i, name: const_tensor(gm, _arg(node, i, name, None))  # noqa: E731
    if t is F.batch_norm:   # (x, running_mean, running_var, weight, bias, training, momentum, eps)
        if _arg(node, 5, "training", False):
            return None
        mean, var, g, b, eps = c(1, "running_mean"), c(2, "running_var"), c(3, "weight"), c(4, "bias"), \
            _arg(node, 7, "eps", 1e-5)
        if mean is None or var is None or not isinstance(eps, (int, float)):
            return None
        return BatchNormOp(node, [node], node.args[0], g, b, mean, var, float(eps))
    if t in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
        # batch_norm(x, w, b, mean, var, training, momentum, eps, cudnn); legit_no_training(x, w, b, mean, var, momentum, eps)
        if t is aten.batch_norm.default:
            if _arg(node, 5, "training", False):
                return None
            eps = _arg(node, 7, "eps", 1e-5)
        else:
            eps = _arg(node, 6, "eps", 1e-5)
        g, b, mean, var = c(1, "weight"), c(2, "bias"), c(3, "running_mean"), c(4, "running_var")
        if mean is None or var is None or not isinstance(eps, (int, float)):   # eps a SymFloat node: dynamic=True
            return None
        out, nodes = node, [node]
        if t is not aten.batch_norm.default:
            users = list(node.users)
            if len(users) != 1 or users[0].target is not operator.getitem or users[0].args[1] != 0:
                return None
            out, nodes = users[0], [users[0], node]
        return BatchNormOp(out, nodes, node.args[0], g, b, mean, var, float(eps))
    return None


def training_batchnorms(gm: nn.Module) -> list[str]:
    """Module paths of BatchNorms and dropouts in training mode (their output depends on the batch or on
    chance: nothing folds and nothing can be verified)."""
    drop = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    return [n for n, m in gm.named_modules() if m.training and (isinstance(m, _BN_MODULES) or
                                                              isinstance(m, drop) and m.p > 0)]


# ----------------------------------------------------------------------------------- activations


@dataclass
class ActivationSite:
    """One activation call: y = f(x) elementwise; keys most specific first (as the ONNX front end)."""
    name: str                 # the fx node name
    node: fx.Node
    kind: str
    params: dict
    x: fx.Node
    path: str | None = None   # module path, when the node was called inside a module
    site: str | None = None   # path, or path:i for a module called at several places
    keys: list = field(default_factory=list)
    nodes: list = field(default_factory=list)   # every node of the site in graph order, `node` last
    numbered: bool = True     # site is the module's call index (False in a dynamo resume graph: fx/frames.py)

    def __post_init__(self):
        if not self.nodes:
            self.nodes = [self.node]

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]


def _dynamo_path(path: str) -> str:
    """"L['self'].layer1[0].relu" (dynamo's module source) -> "layer1.0.relu"."""
    path = re.sub(r"^L\['[^']*'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    path = re.sub(r"(^|\.)_(modules|parameters|buffers)\.", r"\1", path)
    return path.lstrip(".")


def module_path(node: fx.Node) -> str | None:
    """The innermost module path of `node` (its call_module target, else nn_module_stack)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return _dynamo_path(str(path)) or None


def activation_kind(gm: fx.GraphModule, node: fx.Node):
    """(kind, params, x) of an activation node, or None (catalogue kinds; non-collapsible ones too)."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_module":
        if len(node.args) != 1:
            return None
        found = module_kind(submodule(gm, node))
    elif node.op in ("call_function", "call_method"):
        found = function_kind(node.target, node.args, node.kwargs)
    else:
        return None
    if found is None:
        lo_x = _scalar_operand(gm, node) if _op_name(node) in _MAX_OPS else None
        if lo_x is None or catalogue.is_eps_guard(lo_x[0], None):
            return None
        # torch.maximum(x, c) with a scalar tensor constant c: the ONNX front end's Max(x, c), a clip(min) site
        return "clip", {"min": lo_x[0]}, lo_x[1]
    kind, params = found
    if kind == "prelu" and isinstance(params.get("slope"), fx.Node):
        slope = const_tensor(gm, params["slope"])
        if slope is None:
            return None
        params = dict(params, slope=to_numpy(slope).astype(np.float64))
    return kind, params, node.args[0]


# composite activations written functionally (x * torch.sigmoid(x), x * F.relu6(x + 3) / 6, x * F.hardsigmoid(x),
# the erf GELU): found as one site by the ONNX front end's rule (core/gates.py), so both give the same kind

#: elementwise torch ops a composite may be made of, by function / method / aten packet name
_ELEMENTWISE = {"mul", "truediv", "div", "add", "sub", "rsub", "neg", "pow", "exp", "erf", "tanh", "sigmoid", "expit",
                "sqrt", "rsqrt", "reciprocal", "abs", "maximum", "minimum", "clamp", "clamp_min", "clamp_max", "clip",
                "relu", "relu6", "hardtanh", "hardsigmoid", "softplus",
                # a decomposed program's softplus inside Mish: where(x > 20, x, log1p(exp(x)))
                "gt", "lt", "where", "log1p", "expm1"}
_GATE_ANCHORS = {"mul", "truediv", "div"}


def _op_name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op != "call_function":
        return None
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        t = t.overloadpacket
    return getattr(t, "__name__", None)


def _scalar_const(gm: fx.GraphModule, node) -> bool:
    c = const_tensor(gm, node)
    return c is not None and c.numel() == 1


def _is_elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    """node computes a pure elementwise function of its operands (scalar constants aside): no write."""
    if not node.all_input_nodes or node.kwargs.get("rounding_mode") is not None:   # 1.0 + erf(...) reads one
        return False
    if written(node):
        return False
    if node.op == "call_module":
        found = module_kind(submodule(gm, node))
        return found is not None and found[0] != "prelu"
    return _op_name(node) in _ELEMENTWISE


def _operands(gm: fx.GraphModule, node: fx.Node) -> list:
    return [a for a in node.all_input_nodes if not _scalar_const(gm, a)]


def _eval_region(gm: fx.GraphModule, nodes: list, x: fx.Node):
    """The region's output on gates.PROBE (float64, in torch), or None if it cannot be evaluated there."""
    env = {x: torch.from_numpy(gates.PROBE.copy())}

    def val(a):
        if a in env:
            return env[a]
        return float(const_tensor(gm, a))   # a scalar constant (anything else is not in the region)

    try:
        with torch.no_grad():
            for n in nodes:
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), val)
                if n.op == "call_module":
                    r = submodule(gm, n)(*args, **kwargs)
                elif n.op == "call_method":
                    r = getattr(args[0], n.target)(*args[1:], **kwargs)
                else:
                    r = n.target(*args, **kwargs)
                env[n] = r
        out = env[nodes[-1]]
        return out.numpy() if isinstance(out, torch.Tensor) else None
    except Exception:   # an op that does not take these values: not a composite we know
        return None


def _composites(gm: fx.GraphModule, order: dict, claimed: set) -> list:
    """(anchor, kind, region nodes, x) of every composite activation, found as in onnx/patterns._fused."""
    found = []
    for anchor in reversed(list(gm.graph.nodes)):
        if anchor in claimed or _op_name(anchor) not in _GATE_ANCHORS or not _is_elementwise(gm, anchor):
            continue
        best = None
        for nodes, x in _grow_region(gm, anchor, order, claimed):
            values = _eval_region(gm, nodes, x)
            kind, params = gates.identify_region(values), {}
            if kind is None and _op_name(anchor) in ("div", "truediv") and _equals(values, "hardsigmoid",
                                                                                  _TORCH_HARDSIGMOID):
                kind, params = "hardsigmoid", dict(_TORCH_HARDSIGMOID)
            if kind:
                best = (nodes, x, kind, params)
        if best:
            nodes, x, kind, params = best
            claimed.update(nodes)
            found.append((anchor, kind, params, nodes, x))
    return found


def _grow_region(gm: fx.GraphModule, anchor: fx.Node, order: dict, claimed: set):
    """core/gates.grow_region on fx nodes: (region nodes, x) bounded by one value, elementwise ops not yet claimed."""
    return gates.grow_region(
        anchor, operands=lambda n: _operands(gm, n),
        producer=lambda v: v if v.op in ("call_function", "call_method", "call_module") else None,
        consumers=lambda v: v.users, order=order.__getitem__,
        expandable=lambda n: n not in claimed and _is_elementwise(gm, n))


def _equals(values, kind: str, params: dict) -> bool:
    """A region's values on gates.PROBE (_eval_region) are `kind` with these params (float64, to rounding)."""
    return values is not None and np.allclose(values, catalogue.reference(kind, gates.PROBE, params), rtol=1e-6,
                                              atol=1e-9)


#: torch's hardsigmoid, relu6(x + 3) / 6: a decomposed program (ep.run_decompositions()) spells it as
#: add, clamp(min=0), clamp(max=6), div; matched as one site of the plain program's kind, where its first clamp
#: alone was a clip site and collapsing it left min(x + 3, 6) / 6, a nonlinear op, in the result
_TORCH_HARDSIGMOID = {"alpha": 1.0 / 6.0, "beta": 0.5}


_MAX_OPS = {"maximum", "max"}   # not fmax: it drops NaNs, which ONNX Max and the identity keep
_MIN_OPS = {"minimum", "min"}


def _scalar_operand(gm: fx.GraphModule, node: fx.Node):
    """(c, x) of a two-operand maximum / minimum / mul of one tensor x and a float scalar c (a Python number for
    mul, a 0-d or (1,) float tensor constant as the ONNX front end's initializer), else None. A (1,) constant of
    another dtype than x would promote the output: not a bound of x then."""
    if node.op not in ("call_function", "call_method") or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    consts = [const_tensor(gm, v) if isinstance(v, fx.Node) else v for v in (a, b)]
    is_c = [isinstance(c, torch.Tensor) or (isinstance(c, (int, float)) and not isinstance(c, bool)) for c in consts]
    if sum(is_c) != 1:
        return None
    c, x = (consts[0], b) if is_c[0] else (consts[1], a)
    if not isinstance(x, fx.Node):
        return None
    if isinstance(c, torch.Tensor):
        if c.numel() != 1 or c.ndim > 1 or not c.is_floating_point():
            return None
        xt = x.meta.get("val", x.meta.get("tensor_meta"))
        if c.ndim == 1 and getattr(xt, "dtype", None) != c.dtype:
            return None
        c = float(c.reshape(()))
    elif _op_name(node) != "mul":
        return None   # torch.max(x, 1) is a reduction, not a bound
    return float(c), x


def _two_op_forms(gm: fx.GraphModule, claimed: set) -> list:
    """(last node, kind, params, nodes, x) of activations spelled as two elementwise ops, found as the ONNX
    front end's onnx/patterns._two_op_forms finds them in the export (one site, one key; collapsing it removes
    both ops, where matching the first op alone left the second in the graph):
    - minimum(maximum(x, lo), hi) / maximum(minimum(x, hi), lo), scalar tensor bounds lo < hi: clip (relu6 for 0, 6);
    - maximum(x, a * x), the mul reading the same x and a scalar 0 < a < 1: leaky_relu(alpha=a)."""
    found = []
    for first in gm.graph.nodes:
        name = _op_name(first)
        if first in claimed or name not in _MAX_OPS | _MIN_OPS | {"mul"}:
            continue
        inner = _scalar_operand(gm, first)
        users = list(first.users)
        if inner is None or len(users) != 1 or users[0] in claimed or users[0].op == "output":
            continue
        (c1, x), second = inner, users[0]
        sname = _op_name(second)
        if name == "mul":
            if sname not in _MAX_OPS or len(second.args) != 2 or second.kwargs or not 0.0 < c1 < 1.0 \
                    or set(second.args) != {first, x}:
                continue   # maximum(y, a*x) of another tensor y is no LeakyReLU
            kind, params = "leaky_relu", {"alpha": c1}
        else:
            if sname not in (_MIN_OPS if name in _MAX_OPS else _MAX_OPS):
                continue
            outer = _scalar_operand(gm, second)
            if outer is None or outer[1] is not first:
                continue
            lo, hi = (c1, outer[0]) if name in _MAX_OPS else (outer[0], c1)
            if not lo < hi:
                continue
            kind, params = ("relu6", {}) if (lo, hi) == (0.0, 6.0) else ("clip", {"min": lo, "max": hi})
        claimed.update((first, second))
        found.append((second, kind, params, [first, second], x))
    return found


#: shape-only ops a decomposition puts between a PReLU's weight and its mul (view to [1, C, 1, 1])
_WEIGHT_VIEWS = {"view", "reshape", "_unsafe_view", "unsqueeze", "expand"}


def _const_through_views(gm: fx.GraphModule, node) -> tuple[torch.Tensor, list] | None:
    """(the constant's values in the shape node has, the view nodes read only on the way) for a get_attr constant
    or a chain of shape-only ops of one, else None."""
    views = []
    while isinstance(node, fx.Node) and node.op == "call_function" and _op_name(node) in _WEIGHT_VIEWS:
        if len(node.users) != 1:
            return None
        views.append(node)
        node = node.args[0]
    c = const_tensor(gm, node)
    if c is None or not c.is_floating_point():
        return None
    try:
        with torch.no_grad():
            for v in reversed(views):
                c = v.target(c, *v.args[1:], **v.kwargs)
    except Exception:   # a view these values do not take: not a weight we read
        return None
    return c, views[::-1]


def _where_forms(gm: fx.GraphModule, order: dict, claimed: set) -> list:
    """(where, kind, params, nodes, x) of activations a decomposed program (ep.run_decompositions()) spells as
    where(x > 0, x, g(x)), found as one site of the kind the plain program's op has:
    - g(x) = w * x, w a constant (through views, [1, C, 1, 1]): prelu with slope w (aten.prelu's decomposition);
    - g(x) an elementwise region of x with scalar constants equal to ELU's or CELU's negative part for one of them
      as alpha (aten.celu's decomposition; ELU and SELU stay aten.elu there).
    Undecomposed, these are one op each (function_kind); decomposed, the sites were not found at all."""
    found = []
    for w in gm.graph.nodes:
        if w in claimed or _op_name(w) != "where" or len(w.args) != 3 or w.kwargs:
            continue
        cond, x, neg = w.args
        if not all(isinstance(a, fx.Node) for a in (cond, x, neg)) or {cond, neg} & claimed:
            continue
        if (_op_name(cond) != "gt" or len(cond.args) != 2 or cond.kwargs or cond.args[0] is not x
                or isinstance(cond.args[1], bool) or cond.args[1] != 0 or len(cond.users) != 1 or len(neg.users) != 1):
            continue
        site = None
        if _op_name(neg) == "mul" and len(neg.args) == 2 and not neg.kwargs and x in neg.args:
            other = neg.args[1] if neg.args[0] is x else neg.args[0]
            got = _const_through_views(gm, other)
            shape = shape_of(x)
            if got is not None and shape is not None and len(shape) >= 2:
                c, views = got   # broadcast on the channel axis 1 only, as aten.prelu's weight
                if c.ndim == len(shape) and all(d == 1 for i, d in enumerate(c.shape) if i != 1) \
                        and c.shape[1] in (1, shape[1]):
                    slope = to_numpy(c.reshape(-1)).astype(np.float64)
                    site = ("prelu", {"slope": slope}, views + [cond, neg])
        if site is None:
            # the negative branch: the region from neg back to x alone (ELU / CELU have two ops or more there)
            region = next((nodes for nodes, bound in _grow_region(gm, neg, order, claimed) if bound is x), None)
            if region is not None:
                values = _eval_region(gm, region + [cond, w], x)
                scalars = {float(a) for n in region for a in n.args
                           if isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0}
                for kind in ("celu", "elu"):
                    alpha = next((a for a in sorted(scalars) if _equals(values, kind, {"alpha": a})), None)
                    if alpha is not None:
                        site = (kind, {"alpha": alpha}, region + [cond])
                        break
        if site is None:
            continue
        kind, params, inner = site
        nodes = sorted(inner, key=order.__getitem__) + [w]
        claimed.update(nodes)
        found.append((w, kind, params, nodes, x))
    return found


def find_activations(gm: fx.GraphModule, collapsible_only: bool = True) -> list[ActivationSite]:
    """Every (collapsible) activation call in graph (= call) order, with keys resolved; a composite
    written functionally (x * torch.sigmoid(x)) is one site of its catalogue kind (silu), keyed like
    the ONNX front end keys it: its module path, then its node names in graph order."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    claimed: set = set()
    sites = [ActivationSite(a.name, a, kind, params, x, module_path(a), nodes=nodes)
             for a, kind, params, nodes, x in (_composites(gm, order, claimed) + _two_op_forms(gm, claimed)
                                               + _where_forms(gm, order, claimed))]
    for node in gm.graph.nodes:
        if node in claimed:
            continue
        found = activation_kind(gm, node)
        if found is None or collapsible_only and not catalogue.is_collapsible(found[0]):
            continue
        kind, params, x = found
        sites.append(ActivationSite(node.name, node, kind, params, x, module_path(node)))
    sites.sort(key=lambda s: order[s.node])
    by_path: dict[str, list] = {}
    for s in sites:
        if s.path:
            by_path.setdefault(s.path, []).append(s)
    # a dynamo resume function's graph (fx/frames.py) is the rest of a forward: a module its own code calls (one
    # entry in nn_module_stack) may have been called before the break, so the i-th call here is not the module's i-th:
    # such calls get the bare path only (which names every call of the module). Calls inside a submodule it calls
    # are all here (a break inside that submodule would have made it a frame of its own).
    resumed = gm.meta.get(RESUMED_GRAPH, False)
    for path, group in by_path.items():
        unsure = resumed and any(len(s.node.meta.get("nn_module_stack") or {}) <= 1 for s in group)
        for i, s in enumerate(group):
            s.site = path if unsure else site_key(path, i, len(group))
            s.numbered = not unsure
    # outside any module: "relu():i" too, as the ONNX front end keys them; not in a dynamo graph, which may
    # be one piece of the forward (a graph break), where the i-th would not be the model's i-th
    at_root = {} if gm.meta.get(PARTIAL_GRAPH) else root_keys([s for s in sites if not s.path])
    for s in sites:
        s.keys = []
        if s.site:
            s.keys.append(s.site)
            if s.site != s.path:
                s.keys.append(s.path)
        s.keys.extend(at_root.get(id(s), []))   # first: the display key, the same on every front end
        s.keys.extend([n for n in s.node_names if n not in s.keys])
    return sites


#: GraphModule.meta flag: the graph may be part of the forward only (torch.compile hands the graphs between
#: graph breaks); activations get no root-call keys there
PARTIAL_GRAPH = "collapse_passes.partial_graph"


def key_index(sites: list[ActivationSite], node_names: bool = True) -> dict[str, list[ActivationSite]]:
    """key -> sites. A module path or site key wins over an fx node name that happens to spell the same
    (modules `relu` called twice and `relu_1`: the node of `relu`'s second call is also named relu_1).
    node_names=False: node-name keys only for sites outside any module, which have no other key there
    (torch_backend: each dynamo graph names its nodes afresh, after local variables, so the node `relu` of every
    block's graph answered the key of the stem's `relu` module)."""
    index: dict[str, list] = {}
    names: dict[str, list] = {}
    for s in sites:
        nodes = set(s.node_names)
        for k in dict.fromkeys(s.keys):
            (names if k in nodes and k not in (s.site, s.path) else index).setdefault(k, []).append(s)
    for k, found in names.items():
        found = [s for s in found if node_names or not s.path]
        if k not in index and found:
            index[k] = found
    # `path:0` of a module called once (and `kind():0` of a lone root activation) names its one call, as on
    # the ONNX front end (onnx/keys.py; README "Keys"): the torch front end refused it as "names no call site"
    for s in sites:
        one = s.site if s.site is not None and s.site == s.path and s.numbered else \
            next((k for k in s.keys if k.endswith(ROOT_CALL)), None)
        if one is not None:
            index.setdefault(f"{one}{SITE_SEP}0", [s])
    return index


def is_collapsible(site: ActivationSite) -> bool:
    return catalogue.is_collapsible(site.kind)


# ----------------------------------------------------------------------------------- writing


class PaddedConv(nn.Module):
    """A conv with asymmetric zero padding and/or a per-position bias map (what an exact merge of
    padded convs can need): F.pad (asymmetric pads only), then the conv, then + bias_map. Plain torch: exports
    and compiles."""

    def __init__(self, p: ConvParams, bias_map: np.ndarray | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(p.weight)))
        self.bias = None if p.bias is None else nn.Parameter(torch.from_numpy(np.ascontiguousarray(p.bias)))
        self.stride, self.dilation, self.groups = tuple(p.strides), tuple(p.dilations), int(p.group)
        self.pads = tuple(p.pads)
        bm = None if bias_map is None else torch.from_numpy(np.ascontiguousarray(bias_map))
        self.register_buffer("bias_map", bm)
        self._conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[p.ndim]
        # a bias map and asymmetric pads hold the borders of the input size the merge was planned at;
        # another size would read other borders (silently wrong), so forward refuses it
        self.in_spatial = None

    @property
    def in_spatial(self) -> tuple | None:
        return self._in_spatial

    @in_spatial.setter
    def in_spatial(self, size) -> None:
        self._in_spatial = None if size is None else tuple(int(d) for d in size)
        self._place_pads()

    def _place_pads(self) -> None:
        """Pads the conv takes itself (conv_padding: one op, as an ONNX Conv's pads) and those F.pad adds first
        (pad, in F.pad's order: last axis begin, end, ..., first axis begin, end). Symmetric pads go to the conv;
        so does a begin pad larger than the end pad where the size is fixed (in_spatial) and padding the end as
        much changes no output size: the stride stops before the extra end pixels, which are never read (a
        stride-2 merge's (1, 0) pads)."""
        n = len(self.pads) // 2
        begin, end = self.pads[:n], self.pads[n:]
        sym = begin == end
        if not sym and self._in_spatial is not None:
            k = self.weight.shape[2:]

            def out(size, b, e, a):
                return (size + b + e - self.dilation[a] * (k[a] - 1) - 1) // self.stride[a] + 1

            sym = all(e <= b and out(s, b, b, a) == out(s, b, e, a)
                      for a, (s, b, e) in enumerate(zip(self._in_spatial, begin, end)))
        self.conv_padding = tuple(begin) if sym else (0,) * n
        self.pad = (0,) * (2 * n) if sym else tuple(v for a in reversed(range(n)) for v in (begin[a], end[a]))

    def conv_params(self) -> ConvParams:
        return ConvParams(to_numpy(self.weight), to_numpy(self.bias), self.stride, self.pads, self.dilation,
                          self.groups)

    def forward(self, x):
        if self.in_spatial is not None and tuple(x.shape[2:]) != self.in_spatial:
            raise ValueError(f"collapse_passes: this merged conv was planned for inputs of spatial size "
                             f"{self.in_spatial} (its border terms hold for that size only), got {tuple(x.shape[2:])}; "
                             "run collapse() again with example_inputs of the size you run the model at")
        if any(self.pad):
            x = F.pad(x, self.pad)
        y = self._conv(x, self.weight, self.bias, self.stride, getattr(self, "conv_padding", 0), self.dilation,
                       self.groups)
        if self.bias_map is not None:
            y = y + self.bias_map
        return y

    @property
    def op_count(self) -> int:
        return 1 + bool(any(self.pad)) + (self.bias_map is not None)

    def __prepare_scriptable__(self):
        """torch.jit.script compiles _ScriptedPaddedConv in its place (the size guard's property and the conv function
        held as an attribute are outside TorchScript: scripting a result with a merged PaddedConv failed)."""
        return _ScriptedPaddedConv(self)


class _ScriptedPaddedConv(PaddedConv):
    """PaddedConv's forward in the TorchScript subset, sharing its tensors; what torch.jit.script compiles for it.
    torch also leaves it in the PaddedConv's place in the module it scripts (the caller's model): a PaddedConv still
    (its conv_params, in_spatial, op_count), so a scripted result collapses and counts as before (a class of its own
    was no conv to the passes: its MACs counted 0 and no merge read it)."""

    __jit_unused_properties__ = ["in_spatial", "op_count"]   # PaddedConv's, outside TorchScript: forward reads s_*

    def __init__(self, src: PaddedConv):
        nn.Module.__init__(self)
        self.weight = src.weight
        self.bias = src.bias
        self.register_buffer("bias_map", src.bias_map)
        self.stride, self.dilation, self.groups, self.pads = src.stride, src.dilation, src.groups, src.pads
        self.ndim = src.weight.ndim - 2
        self.in_spatial = src.in_spatial   # PaddedConv's setter: places the pads, then _place_pads below the lists

    def _place_pads(self) -> None:
        super()._place_pads()
        self.s_stride, self.s_dilation = [int(v) for v in self.stride], [int(v) for v in self.dilation]
        self.s_padding = [int(v) for v in self.conv_padding]
        self.s_pad = [int(v) for v in self.pad] if any(self.pad) else []
        self.s_in_spatial = [] if self._in_spatial is None else list(self._in_spatial)

    def __prepare_scriptable__(self):
        return self

    def forward(self, x):
        if len(self.s_in_spatial) > 0 and list(x.shape[2:]) != self.s_in_spatial:
            raise ValueError("collapse_passes: this merged conv was planned for inputs of another spatial size (its "
                             "border terms hold for that size only); run collapse() again with example_inputs of the "
                             "size you run the model at")
        if len(self.s_pad) > 0:
            x = F.pad(x, self.s_pad)
        if self.ndim == 1:
            y = F.conv1d(x, self.weight, self.bias, self.s_stride, self.s_padding, self.s_dilation, self.groups)
        elif self.ndim == 2:
            y = F.conv2d(x, self.weight, self.bias, self.s_stride, self.s_padding, self.s_dilation, self.groups)
        else:
            y = F.conv3d(x, self.weight, self.bias, self.s_stride, self.s_padding, self.s_dilation, self.groups)
        if self.bias_map is not None:
            y = y + self.bias_map
        return y


# TorchScript reads attribute types from __annotations__, which `from __future__ import annotations` makes strings it
# cannot resolve ("Unknown type annotation: 'List[int]'"): the types themselves (an empty list has no type to infer)
_ScriptedPaddedConv.__annotations__ = dict.fromkeys(("s_stride", "s_padding", "s_dilation", "s_pad", "s_in_spatial"),
                                                    List[int])


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def make_module(kind: str, params, bias_map: np.ndarray | None = None, size_guard: bool = False) -> nn.Module:
    """A plain torch module computing `params` (nn.Linear / nn.ConvNd; PaddedConv where needed: a bias
    map, asymmetric pads, or a merge that holds at its planned input size only)."""
    # built on the meta device: every parameter is replaced below, and torch's random initialization of the ones
    # it would make first was half of the BatchNorm fold's time (ResNet-50: 53 convs, 0.47 s of 1.2 s)
    if kind == "linear":
        mod = nn.Linear(params.in_features, params.out_features, bias=params.bias is not None, device="meta")
        with torch.no_grad():
            mod.weight = nn.Parameter(_tensor(params.weight))
            if params.bias is not None:
                mod.bias = nn.Parameter(_tensor(params.bias))
        return mod
    p = params
    if bias_map is not None or tuple(p.pads_begin) != tuple(p.pads_end) or size_guard:
        return PaddedConv(p, bias_map)
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[p.ndim]
    mod = cls(p.in_channels, p.out_channels, p.kernel_shape, stride=p.strides, padding=p.pads_begin,
              dilation=p.dilations, groups=p.group, bias=p.bias is not None, device="meta")
    with torch.no_grad():
        mod.weight = nn.Parameter(_tensor(p.weight))
        if p.bias is not None:
            mod.bias = nn.Parameter(_tensor(p.bias))
    return mod


def _fresh_name(gm: fx.GraphModule, hint: str) -> str:
    """An attribute name of gm no submodule / parameter / buffer has, made of `hint` (core/names)."""
    return fresh_name(re.sub(r"[^0-9a-zA-Z_]", "_", hint) or "op", AttributeNames(gm))


def insert_linear(gm: fx.GraphModule, before: fx.Node, x: fx.Node, kind: str, params, bias_map=None,
                  hint: str = "collapsed", meta_from: fx.Node | None = None, origin: list | None = None,
                  size_guard: bool = False, sources=()) -> fx.Node:
    """Insert a call to a new module computing `params` on x, right before `before`; return its node.

    `before` is the first node of the group the new op replaces: x is read where the group read it, so
    an in-place op that runs later (`nn.ReLU(inplace=True)` on x) cannot change what the new op sees.

    The new node carries the metadata of `meta_from` (shape, module stack) so keys and shapes survive.
    `sources`: the nodes whose weights the new op is computed from; where none of their parameters requires grad
    (a frozen backbone), neither do the new op's (they were trainable: a folded frozen conv + BN trained)."""
    name = _fresh_name(gm, hint)
    # the size guard: a bias map or a strided merge holds the borders of the planned size; asymmetric pads alone
    # (F.pad folded into the conv, padding="same" with an even kernel, a stride-1 merge of them) hold at any size,
    # as the conv they came from did; a guard on a source (a merged conv a BatchNorm then folds into, a conv whose
    # bias map fx/passes/propagate_bias_maps carried on, absorbing its residual) is kept: before 2026-11-29 the
    # absorb wrote a plain nn.Conv2d there, and the result ran silently wrong at other sizes
    guarded = size_guard or bias_map is not None or any(
        isinstance(m, PaddedConv) and m.in_spatial is not None
        for m in (gm.get_submodule(str(n.target)) for n in sources if n.op == "call_module"))
    mod = make_module(kind, params, bias_map, guarded)
    read = _parameters_read(gm, sources)
    if read and not any(t.requires_grad for t in read):
        mod.requires_grad_(False)
    if isinstance(mod, PaddedConv) and guarded:
        shape = shape_of(x)
        mod.in_spatial = tuple(int(d) for d in shape[2:]) if shape is not None else None
    gm.add_submodule(name, mod)
    with gm.graph.inserting_before(before):
        new = gm.graph.call_module(name, (x,))
    if meta_from is not None:
        for k in ("tensor_meta", "val", "example_value", "nn_module_stack", "stack_trace"):
            if k in meta_from.meta:
                new.meta[k] = meta_from.meta[k]
    if origin is not None:
        new.meta[ORIGIN] = list(dict.fromkeys(origin))
    return new


def _parameters_read(gm: fx.GraphModule, nodes) -> list:
    """The parameters the nodes compute with: their modules' (call_module) and the get_attr inputs' (aten-level)."""
    out = []
    for n in nodes:
        if n.op == "call_module":
            out.extend(gm.get_submodule(str(n.target)).parameters())
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                t = get_attr_value(gm, str(a.target))
                if isinstance(t, nn.Parameter):
                    out.append(t)
    return out


ORIGIN = "collapse_origin"


def origin(node: fx.Node) -> list[str]:
    """The input graph's node names a (possibly rewritten) node stands for: merge records name these."""
    return list(node.meta.get(ORIGIN, [node.name]))


def single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
                      operator.ilshift, operator.irshift, operator.setitem}
#: dunder names that write their first operand (`x.__setitem__(i, v)`, `torch.Tensor.__iadd__(x, y)`); any
#: other dunder (`__getitem__`, `__add__`) only reads, though its name ends in "_" as an in-place method's does
_INPLACE_DUNDERS = {"__setitem__"} | {f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod",
                                                              "pow", "matmul", "and", "or", "xor", "lshift",
                                                              "rshift")}


def _inplace_name(name: str) -> bool:
    """x.relu_(), torch.relu_, torch.Tensor.copy_, torch._foreach_add_, x.__setitem__: a name that writes."""
    if name.startswith("__") and name.endswith("__"):
        return name in _INPLACE_DUNDERS
    return name.endswith("_")


def _out_nodes(node: fx.Node) -> list:
    """The tensors an out= keyword names (`torch.add(a, b, out=x)`, `torch.max(a, 1, out=(v, i))`)."""
    out = node.kwargs.get("out")
    return [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, fx.Node)]


def _overload_writes(node: fx.Node) -> list:
    """The arguments an aten overload's schema marks written (`Tensor(a!) self`, `Tensor(a!) out`,
    `Tensor(a!) running_mean` of aten._native_batch_norm_legit), positional or keyword."""
    found = []
    for i, a in enumerate(node.target._schema.arguments):
        if a.alias_info is None or not a.alias_info.is_write:
            continue
        v = node.args[i] if i < len(node.args) and not a.kwarg_only else node.kwargs.get(a.name)
        found.extend(o for o in (v if isinstance(v, (tuple, list)) else (v,)) if isinstance(o, fx.Node))
    return found


def written(node: fx.Node) -> list:
    """The tensors node writes in place (see mutates), each once, first operand first."""
    if node.op not in ("call_module", "call_function", "call_method"):
        return []
    if isinstance(node.target, torch._ops.OpOverload):
        found = _overload_writes(node)
    else:
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        found = ([first] if first is not None and _writes_first(node) else []) + _out_nodes(node)
    return list(dict.fromkeys(found))


def mutates(node: fx.Node, x: fx.Node) -> bool:
    """node writes into x in place: nn.ReLU(inplace=True)(x), F.relu(x, inplace=True), x.relu_(), x += y,
    torch.relu_(x), x[i] = v (operator.setitem, x.__setitem__), torch.add(a, b, out=x), an aten overload whose
    schema marks x's argument written (aten.relu_, aten.fill_, aten.add.out)."""
    if node.op not in ("call_module", "call_function", "call_method"):
        return False
    if isinstance(node.target, torch._ops.OpOverload):
        return any(w is x for w in _overload_writes(node))
    if any(o is x for o in _out_nodes(node)):
        return True
    return bool(node.args) and node.args[0] is x and _writes_first(node)


def _writes_first(node: fx.Node) -> bool:
    """A (non-aten) call writes into its first operand."""
    if node.op == "call_module":
        mod = node.graph.owning_module.get_submodule(str(node.target)) if node.graph.owning_module else None
        return getattr(mod, "inplace", False) is True
    if node.op == "call_method":
        return _inplace_name(str(node.target))
    t = node.target
    if t in _INPLACE_OPERATORS:
        return True
    if node.kwargs.get("inplace") is True or _inplace_name(getattr(t, "__name__", "")):
        return True
    try:
        try:
            sig = _signature(t)
        except TypeError:   # an unhashable callable: not cached
            sig = inspect.signature(t)
        return sig.bind(*node.args, **node.kwargs).arguments.get("inplace") is True
    except (TypeError, ValueError):
        return False


@functools.lru_cache(maxsize=1024)
def _signature(fn) -> inspect.Signature:
    """inspect.signature, parsed once per function (a builtin's is parsed from its text: ~0.5 ms a call)."""
    return inspect.signature(fn)


#: modules that may return their input itself (every dropout in eval mode: an alias, not a copy)
_ALIAS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                  nn.AlphaDropout, nn.FeatureAlphaDropout)
_ALIAS_ATTRS = {"T", "mT", "H", "mH", "real", "imag", "data"}


def _aten_packet_aliases(name: str | None) -> bool:
    """Some overload of aten.<name> returns a view of its input (schema `-> Tensor(a)`, not an out= write)."""
    packet = getattr(aten, name, None) if name else None
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return False
    for o in packet.overloads():
        returns = getattr(packet, o)._schema.returns
        if any(r.alias_info is not None and not r.alias_info.is_write for r in returns):
            return True
    return False


def aliases_input(node: fx.Node) -> bool:
    """node's output may share memory with its first operand: a view (x.view, x[:, :2], reshape, transpose,
    flatten, ...), nn.Identity, or an in-place op's return. Read from the aten schemas; conservative."""
    if node.op not in ("call_function", "call_method", "call_module") or not node.args \
            or not isinstance(node.args[0], fx.Node):
        return False
    x = node.args[0]
    if mutates(node, x):
        return True
    if node.op == "call_module":
        return isinstance(submodule(node.graph.owning_module, node), _ALIAS_MODULES)
    t = node.target
    if t is operator.getitem:
        return True
    if t is getattr:
        return len(node.args) > 1 and node.args[1] in _ALIAS_ATTRS
    if isinstance(t, torch._ops.OpOverload):
        return any(r.alias_info is not None and not r.alias_info.is_write for r in t._schema.returns)
    return _aten_packet_aliases(_op_name(node))


def alias_source(node: fx.Node) -> fx.Node | None:
    """The tensor node's output shares memory with: the out= tensor of an out= call (`y = torch.add(a, b, out=x)`
    returns x), else its first operand where aliases_input says so; None for a fresh tensor."""
    outs = _out_nodes(node) if node.op in ("call_function", "call_method") else []
    if len(outs) == 1:
        return outs[0]
    return node.args[0] if aliases_input(node) else None


def alias_group(x: fx.Node) -> set:
    """x, the tensor it is a view of (if any), and every view of that: an in-place write to one of them
    changes x's value."""
    root = x
    while (src := alias_source(root)) is not None:
        root = src
    group, todo = {root}, [root]
    while todo:
        n = todo.pop()
        for u in n.users:
            if u not in group and alias_source(u) is n:
                group.add(u)
                todo.append(u)
    return group


def mutated_between(x: fx.Node, start: fx.Node, end: fx.Node | None = None) -> bool:
    """Some op after `start` (and before `end`) writes into x in place, directly or through a view
    (`x[:, :2].relu_()`, `x.view(-1).mul_(2)`): a read of x there sees other values."""
    return any(u > start and (end is None or u < end) and mutates(u, a) for a in alias_group(x) for u in a.users)


def reach(start: fx.Node, step, seen: set | None = None) -> list:
    """`start` and every node reached from it through step(n) (n.users: what it feeds; n.all_input_nodes: what
    it reads), each once, in visiting order; nodes already in `seen` are not entered (and `seen` grows)."""
    seen = set() if seen is None else seen
    order, todo = [], [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            order.append(m)
            todo.extend(step(m))
    return order


def eliminate_dead_code(gm: fx.GraphModule) -> bool:
    """fx dead-code elimination that keeps in-place writes whose result is unused (`self.relu(x)` with
    inplace=True, `x.mul_(2)`) while something live reads the tensor they write (fx would drop them,
    changing what that reader sees). A write into a tensor nobody live reads goes with it (a dropped
    residual branch's `ReLU(inplace=True)`)."""
    graph = gm.graph
    live: set = set()

    def mark(n):
        reach(n, lambda m: m.all_input_nodes, live)

    writes = []
    for n in graph.nodes:
        targets = written(n)   # x[i] = v, torch.add(a, b, out=x): fx keeps a setitem always, an out= call never
        if n.op in ("output", "placeholder") or n.is_impure() and not targets:
            mark(n)
        elif targets:
            writes.append((n, targets))
    changed = True
    while changed:
        changed = False
        for w, targets in writes:
            if w not in live and any(a in live and a is not w for t in targets for a in alias_group(t)):
                mark(w)
                changed = True
    dead = [n for n in graph.nodes if n not in live]
    for n in reversed(dead):
        graph.erase_node(n)
    return bool(dead)


def feeds_output(node: fx.Node) -> bool:
    return any(u.op == "output" for u in node.users)


# ----------------------------------------------------------------------------------- stats

_FREE = {operator.getitem}
#: reads of a tensor's metadata (x.size(0), x.dim(), x.shape, an ExportedProgram's sym_size of a dynamic dim): no
#: op runs on the data, and the ONNX exporters fold them into the constants of the Reshape that reads them. Counted
#: as ops before 2026-11-30: `x.view(x.size(0), -1)` (classic ResNet / VGG flatten) put one op more into the
#: nn.Module's nodes and critical path than its ExportedProgram and both ONNX exports report
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}
_SHAPE_FUNCTIONS = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default}


def free_call(node: fx.Node) -> bool:
    """A call node that runs no op: a getitem, or a read of a tensor's metadata (_SHAPE_METHODS...)."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRS
    return node.target in _FREE or node.target in _SHAPE_FUNCTIONS


def module_op_count(mod) -> int:
    """Ops one call of a module runs: a PaddedConv its parts; a conv with padding_mode reflect / replicate /
    circular two (torch's _conv_forward pads, then convolves; the ONNX export's Pad + Conv), so the fold pass writing
    it as F.pad + conv changes no count."""
    if isinstance(mod, _CONV_MODULES) and mod.padding_mode != "zeros" and any(mod._reversed_padding_repeated_twice):
        return 2
    return getattr(mod, "op_count", 1)


def count_ops(gm: fx.GraphModule) -> int:
    """Ops a run executes: call nodes, a module as module_op_count says; getitem, metadata reads (free_call) and
    guards are free."""
    n = 0
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = submodule(gm, node)
            if node.target == "_guards_fn":
                continue
            n += module_op_count(mod)
        elif node.op in ("call_function", "call_method") and not free_call(node):
            n += 1
    return n


def count_params(gm: nn.Module) -> int:
    seen = {}
    for t in list(gm.parameters()) + list(gm.buffers()):
        if t.is_floating_point():
            seen[id(t)] = t.numel()
    return int(sum(seen.values()))


def is_add(node: fx.Node) -> bool:
    """x + y (also torchvision's in-place `out += identity`), without an alpha factor."""
    return (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add, aten.add.Tensor,
                                                          aten.add_.Tensor)
            or node.op == "call_method" and node.target in ("add", "add_")) and len(node.args) == 2 \
        and node.kwargs.get("alpha", 1) == 1 and not (_inplace(node) and len(node.args[0].users) > 1)


def _inplace(node: fx.Node) -> bool:
    """An in-place add rewrites its first operand: replaced by a fresh op only when nothing else reads that."""
    return node.target in (operator.iadd, aten.add_.Tensor, "add_") and isinstance(node.args[0], fx.Node)


def state_writes(gm: fx.GraphModule) -> list[str]:
    """'<attr> (<op>)' for each parameter or buffer the graph writes in place (a running statistic updated
    in forward: `self.ema.mul_(0.9)`, torch.export's `copy_(b_calls, ...)`, directly or through a view).
    Such a model's output depends on how often it ran: the passes would fold one call's value into the
    result, the check runs it several times, and every run would change the caller's model."""
    found = []
    for n in gm.graph.nodes:
        if n.op != "get_attr":
            continue
        for a in alias_group(n):
            for u in a.users:
                if mutates(u, a):
                    op = u.target if isinstance(u.target, str) else getattr(u.target, "__name__", str(u.target))
                    found.append(f"{n.meta.get(STATE_NAME, n.target)} ({op})")
    return list(dict.fromkeys(found))


#: get_attr node meta: the model attribute path a frozen dynamo input stands for (`block.0.running_mean`)
STATE_NAME = "collapse_passes.state_name"


class StateGuard:
    """The caller's parameters and buffers as they were: which slots hold which tensor, the buffers' values
    (copies: buffers are small) and every tensor's version counter. written() names what a trace or a run of
    the model changed since (a buffer updated in forward, also where symbolic_trace ran the update eagerly
    and kept none of it in the graph: `self.calls += 1`), restore() puts it back."""

    def __init__(self, model: nn.Module):
        self.slots = [(name, mod, dict(mod._parameters), dict(mod._buffers))
                      for name, mod in model.named_modules(remove_duplicate=False)]
        self.tensors = {}
        for name, mod, params, buffers in self.slots:
            for attr, t in [*params.items(), *buffers.items()]:
                if isinstance(t, torch.Tensor) and id(t) not in self.tensors:
                    copy = t.detach().clone() if attr in buffers else None
                    self.tensors[id(t)] = (f"{name}.{attr}" if name else attr, t, self._version(t), copy)

    @staticmethod
    def _version(t: torch.Tensor):
        try:
            return t._version
        except RuntimeError:   # an inference-mode tensor has no version counter
            return None

    def written(self) -> list[str]:
        out = []
        for name, mod, params, buffers in self.slots:
            for attr in set(params) | set(buffers) | set(mod._parameters) | set(mod._buffers):
                was = params.get(attr, buffers.get(attr))
                if mod._parameters.get(attr, mod._buffers.get(attr)) is not was:
                    out.append(f"{name}.{attr}" if name else attr)
        for path, t, version, copy in self.tensors.values():
            if self._version(t) != version or copy is not None and not torch.equal(t.detach(), copy):
                out.append(path)
        return list(dict.fromkeys(out))

    def restore(self) -> None:
        for _, mod, params, buffers in self.slots:
            mod._parameters.clear()
            mod._parameters.update(params)
            mod._buffers.clear()
            mod._buffers.update(buffers)
        with torch.no_grad():
            for _, t, _, copy in self.tensors.values():
                if copy is not None and not torch.equal(t.detach(), copy):
                    t.copy_(copy)


def state_error(writes: list[str], where: str = "") -> str:
    """The one line for a model whose forward writes its own parameters or buffers ('name' or 'name (op)')."""
    seen = {w.split(" (")[0] for w in writes if " (" in w}
    writes = list(dict.fromkeys(w for w in writes if " (" in w or w not in seen))
    return (f"{where}the model's forward writes its own state in place ({', '.join(writes[:3])}"
            f"{' ...' if len(writes) > 3 else ''}): its output depends on how often it ran, so a collapsed copy cannot "
            "be verified and the check's runs would change your model; update that state outside forward (or under "
            "`if self.training:`) and collapse the model in eval()")


def own_weights(result: nn.Module, model) -> int:
    """Give `result` its own copies of the parameters and buffers it shares with the caller's `model`
    (copy_sharing_weights keeps the unmerged layers' tensors): fine-tuning the collapsed model must not train
    the model it came from. Tied tensors stay tied; requires_grad is kept. Returns how many were copied.
    `model` may be an ExportedProgram: its .module() holds the program's (and the exported module's) own
    tensors, and torch.export of the result copies none of them."""
    if isinstance(model, nn.Module):
        mine = [*model.parameters(), *model.buffers()]
    elif isinstance(model, torch.export.ExportedProgram):
        mine = [*model.state_dict.values(), *model.constants.values()]
    else:
        mine = []
    theirs = {id(t) for t in mine if isinstance(t, torch.Tensor)}
    copies: dict = {}
    with torch.no_grad():
        for mod in result.modules():
            for slots in (mod._parameters, mod._buffers):
                for attr, t in list(slots.items()):
                    if t is None or id(t) not in theirs:
                        continue
                    if id(t) not in copies:
                        c = t.detach().clone()
                        copies[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) \
                            if isinstance(t, nn.Parameter) else c
                    slots[attr] = copies[id(t)]
    return len(copies)


def keep_module_state(result: nn.Module, model) -> None:
    """Put back on `result` what torch.fx drops from the caller's `model` when it copies it into a GraphModule
    (its `_copy_attr` registers every buffer persistent; a module the passes build starts in training mode):
    which buffers are non-persistent (by path, or by tensor where the passes moved it: call this before
    own_weights copies them) and every module's training flag (the module at the same path's; a module the
    passes made takes its parent's). `model`: nn.Module or ExportedProgram (buffers only: a program has no
    modes). Without it a non-persistent buffer came back in state_dict() and a train-mode model in eval."""
    if isinstance(model, torch.export.ExportedProgram):
        non_persistent = set(model.graph_signature.non_persistent_buffers)
        source = {}
    elif isinstance(model, nn.Module):
        source = dict(model.named_modules(remove_duplicate=False))
        non_persistent = {f"{p}.{b}" if p else b for p, m in source.items() for b in m._non_persistent_buffers_set}
    else:
        return
    tensors = {}
    if source:
        for name in non_persistent:
            t = model.get_buffer(name)
            if isinstance(t, torch.Tensor):
                tensors[id(t)] = t
    known = {f"{p}.{b}" if p else b for p, m in source.items() for b in m._buffers}
    flags = {"": model.training} if isinstance(model, nn.Module) else {}
    for path, mod in result.named_modules(remove_duplicate=False):
        if path in source:
            flags[path] = source[path].training
        elif flags:
            flags[path] = flags[path.rpartition(".")[0]] if "." in path else flags[""]
        for b, t in mod._buffers.items():
            full = f"{path}.{b}" if path else b
            if full in non_persistent or (full not in known and t is not None and id(t) in tensors):
                mod._non_persistent_buffers_set.add(b)
            elif full in known:
                mod._non_persistent_buffers_set.discard(b)
    for path, mod in result.named_modules(remove_duplicate=False):
        if path in flags:
            mod.training = flags[path]
