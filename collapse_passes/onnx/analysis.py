"""Model statistics for the report: nodes, parameters, MACs and critical-path depth."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..algebra.conv import ConvParams
from ..algebra.cost import REDUCTION_OPS, conv_macs, is_depthwise, linear_macs
from ..core.activations import fuses
from .graph import RANDOM_OPS, const_value, toposort
from .linear_ops import ConvView, DenseView
from .patterns import NONLINEAR_OPS, find_activations
from .shapes import MAC_OPS, complete_mac_shapes, with_shapes

_FREE_OPS = {"Constant", "Identity"}


@dataclass
class ModelStats:
    nodes: int
    params: int
    macs: int
    depth_ops: int          # longest input->output path, counted in ops
    depth_nonlinear: int    # the same path measure counted in nonlinear ops (a fused GELU is one)
    activations: int
    constant_nodes: int = 0  # non-activation nodes computed from constants alone (folded at load): no cost
    # activations runtimes fuse into the op before them (core/activations.fuses: ReLU, Clip, ...) are no op of
    # their own; the others (HardSwish, SiLU, GELU, PReLU, ...) are (element prices: element_work below)
    free_activation_nodes: int = 0
    activation_elements: int = 0
    # what the cost model prices per element (algebra/cost.ELEMENT_PRICES): {activation kind or op type:
    # elements per inference}, and the MACs of depthwise convs (charged DEPTHWISE_MAC_FACTOR each)
    element_work: dict | None = None
    depthwise_macs: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _dims(t) -> list[int] | None:
    if t is None or t.shape is None:
        return None
    return [d if isinstance(d, int) and d > 0 else _symbolic_dim(d) for d in t.shape]


def counted_batch(t) -> int:
    """The batch of a tensor (its first dim) as node_macs counts it for the report's totals: a dynamic dim at
    every dynamic size 1 (`N` is 1, `4*N` is 4); unknown: 1. What merge and hoist records count."""
    dims = _dims(t)
    return int(dims[0]) if dims else 1


@functools.lru_cache(maxsize=4096)
def _symbolic_dim(d) -> int:
    """A dynamic dim at every dynamic size 1: `N` is 1, but an expression inference or the torch.export-based
    exporter wrote (`4*N`: MobileViT's patches folded into the batch, `784*N`: a Linear over every position)
    is its value there (4, 784), not 1 (that counted a MobileViT's transformer MACs 4-784x too low, and
    --target-speedup then priced the input below its own collapsed results). Unknown: 1."""
    import ast

    def ev(e):
        if isinstance(e, ast.Expression):
            return ev(e.body)
        if isinstance(e, ast.Constant) and isinstance(e.value, int):
            return e.value
        if isinstance(e, ast.Name):
            return 1
        if isinstance(e, ast.BinOp) and isinstance(e.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)):
            a, b = ev(e.left), ev(e.right)
            if isinstance(e.op, (ast.FloorDiv, ast.Mod)):
                if b == 0:
                    raise ValueError
                return a // b if isinstance(e.op, ast.FloorDiv) else a % b
            return a + b if isinstance(e.op, ast.Add) else a - b if isinstance(e.op, ast.Sub) else a * b
        raise ValueError

    if not isinstance(d, str) or len(d) > 200:
        return 1
    try:
        v = ev(ast.parse(d.strip(), mode="eval"))
    except (SyntaxError, ValueError, RecursionError):
        return 1
    return v if isinstance(v, int) and v > 0 else 1


def node_macs(node) -> int:
    """Multiply-accumulates of one node for the model's static shapes (dynamic dims count as 1)."""
    out = _dims(node.outputs[0]) if node.outputs else None
    if out is None:
        return 0
    cv = ConvView.of(node)
    if cv is not None:
        return int(out[0] * conv_macs(cv.params, tuple(out[2:])))
    if node.op == "Conv":   # not a view (auto_pad on an unknown input size): padding does not change the MACs
        w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        group = int(node.attrs.get("group", 1))
        if w is None or w.ndim < 3 or len(out) != w.ndim or group < 1 or w.shape[0] % group:
            return 0
        return int(out[0] * conv_macs(ConvParams(weight=w, group=group), tuple(out[2:])))
    if node.op == "Gemm":
        dv = DenseView.of(node)
        if dv is not None:
            return int(linear_macs(dv.params, rows=out[0]))
        a = _dims(node.inputs[0])
        k = a[0] if a and int(node.attrs.get("transA", 0)) else (a[-1] if a else 0)
        return int(np.prod(out) * k)
    if node.op == "MatMul":
        a = _dims(node.inputs[0])
        if not a:
            return 0
        return int(np.prod(out) * a[-1])
    if node.op == "ConvTranspose":
        w = const_value(node.inputs[1])
        if w is None:
            return 0
        a = _dims(node.inputs[0])
        return int(np.prod(a) * w.shape[1] * np.prod(w.shape[2:])) if a else 0
    return 0


def constant_nodes(graph: gs.Graph) -> set[int]:
    """ids of the nodes whose inputs are all constants or outputs of such nodes (a toposorted graph):
    computed once when onnxruntime creates the session (constant folding) or TVM builds (FoldConstant),
    so they cost no MACs, ops or depth per inference. Swin V2's position-bias MLP on its fixed coordinate
    table is one: pricing it made collapsing its ReLU look like a speed-up. Size arithmetic of a model
    with static inputs counts as constant as well (fold_static_shapes)."""
    out: set[int] = set()
    for n in graph.nodes:
        if n.op in RANDOM_OPS or n.op == "Constant" or any(isinstance(v, gs.Graph) for v in n.attrs.values()):
            continue
        ins = [t for t in n.inputs if t.name]
        if ins and all(isinstance(t, gs.Constant) or (t.inputs and (t.inputs[0].op == "Constant"
                                                                     or id(t.inputs[0]) in out)) for t in ins):
            out.add(id(n))
    # with static inputs, run-time size arithmetic (Shape -> Gather -> Concat ...) is constant too: the
    # fold_shapes pass folds it, so pricing it in the input model would credit that clean-up to a collapse
    from .passes.fold_static_shapes import static_inputs, shape_arithmetic

    if static_inputs(graph):
        derived = shape_arithmetic(graph) or set()
        out.update(id(n) for n in graph.nodes if n.outputs and all(id(t) in derived for t in n.outputs))
    return out


def reshape_to_own_shape(node) -> bool:
    """A Reshape whose output has its input's shape, dim for dim (numbers, or the same dim name): no op of the
    deployed model, as the torch.export-based exporter drops it and the torch front end does not count it. SE
    blocks' `x.mean((2, 3)).view(b, c)` is one: the TorchScript export kept it, one op deeper per block."""
    if node.op != "Reshape" or not node.inputs or not node.outputs:
        return False
    a, b = node.inputs[0].shape, node.outputs[0].shape
    return a is not None and b is not None and len(a) == len(b) and all(
        x == y and ((isinstance(x, (int, np.integer)) and x >= 0) or (isinstance(x, str) and not x.startswith("unk__")))
        for x, y in zip(a, b))


def metadata_nodes(graph: gs.Graph) -> set[int]:
    """ids of the nodes (toposorted graph) that read no tensor's values, only sizes: Shape / Size, and the
    arithmetic on their outputs and constants alone (Gather, Unsqueeze, Concat, Div ...). The critical path
    counts none of them: a Shape output is there when its input is (it starts at its input's depth), as the
    torch front end's `x.size()` (fx/graph.free_call), and the Reshape that reads the sizes is the op. A
    TorchScript export with a dynamic batch keeps `view(b, c, 1, 1)`'s Shape -> Gather -> Unsqueeze -> Concat
    in the graph; counted, they put 4 ops per squeeze-excitation block on the path that the static and
    torch.export-based exports and the torch front end never had (before 2026-11-30)."""
    sizes: set[int] = set()   # ids of tensors computed from sizes (and constants)
    out: set[int] = set()
    for n in graph.nodes:
        if n.op in RANDOM_OPS or any(isinstance(v, gs.Graph) for v in n.attrs.values()):
            continue
        if n.op in ("Shape", "Size"):
            meta = True
        else:
            ins = [t for t in n.inputs if t is not None and t.name]
            meta = bool(ins) and any(id(t) in sizes for t in ins) and all(
                id(t) in sizes or isinstance(t, gs.Constant) or (t.inputs and t.inputs[0].op == "Constant")
                for t in ins)
        if meta:
            out.add(id(n))
            sizes.update(id(t) for t in n.outputs)
    return out


#: ONNX element types counted as parameters: float, float16, double, bfloat16, the float8s
FLOAT_TYPES = {1, 10, 11, 16, 17, 18, 19, 20}


def measured_graph(model: onnx.ModelProto) -> gs.Graph:
    """`model` as a graph with inferred shapes, its run-time size arithmetic folded as the passes' first pass
    (fold_shapes) folds it: what the report's "before" counts. Counted as exported, a TorchScript Swin-T with a
    dynamic batch had a critical path of 1511 ops "before" and 474 after collapsing its GELUs, 1037 of them the
    clean-up's, not the collapse's; and an op whose sizes that arithmetic computes (Swin's crop `x[:, :h, :w]`,
    a no-op Slice at 224) is seen to be a no-op (cleanup.noop_op) only once they are numbers."""
    if any(n.op_type in ("Shape", "Size") for n in model.graph.node):
        from .context import OnnxContext
        from .passes.cleanup import infer_shapes
        from .passes.fold_static_shapes import FoldStaticShapes

        folded = gs.import_onnx(model)
        try:
            changed = FoldStaticShapes()(OnnxContext(graph=folded, source=model)).modified
        except Exception:   # noqa: BLE001 - then the model as it is; the passes report their own errors
            changed = False
        if changed and infer_shapes(folded):
            complete_mac_shapes(folded, model)
            return folded
    return with_shapes(model)   # shape inference without sending the weights through it


def model_stats(model: onnx.ModelProto, graph: gs.Graph | None = None, acts: list | None = None) -> ModelStats:
    """Size and depth of `model`. `graph`: a graph of this model whose shapes are already inferred (the
    passes' final Cleanup leaves one), to skip a second shape inference; `acts`: its activations, if
    already found. The graph is only read (toposorted)."""
    if graph is None:
        graph = measured_graph(model)
        acts = None
    else:
        complete_mac_shapes(graph, model)
    toposort(graph)
    if acts is None:
        acts = find_activations(graph)
    anchor = {id(a.nodes[-1]) for a in acts}
    inside = {id(n) for a in acts for n in a.nodes}
    # parameters are the floating-point tensors (as torch counts them): integer sizes and indices are not
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in FLOAT_TYPES)
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in FLOAT_TYPES:
                    params += int(np.prod(a.t.dims))
    folded = constant_nodes(graph)
    macs = sum(node_macs(n) for n in graph.nodes if id(n) not in folded)
    work, dw_macs = element_work(graph, acts, folded)

    # graph.toposort() above: predecessors always come first, so the longest paths are one sweep
    preds: dict[int, set] = {}
    w_ops, w_nl = {}, {}
    # an activation is one op on the path however many nodes it was exported as (a SiLU's Sigmoid + Mul, an
    # erf GELU's five): its anchor counts, the rest not, as on the torch front end (fx/api.graph_stats),
    # where nn.SiLU is one node; otherwise EfficientNet-B0 was 49 ops deeper here than there
    from .passes.cleanup import noop_op

    graph_outputs = {t.name for t in graph.outputs}
    # a MatMul's bias Add is part of its dense op (DenseView), as a torch Linear over 3-D input is one op
    bias_adds = set()
    for n in graph.nodes:
        dv = DenseView.of(n, graph_outputs) if n.op == "MatMul" else None
        if dv is not None and dv.bias_add is not None:
            bias_adds.add(id(dv.bias_add))

    sizes = metadata_nodes(graph)
    for n in graph.nodes:
        if n.op in _FREE_OPS:
            continue
        k = id(n)
        ps = preds.setdefault(k, set())
        w_ops[k] = 0 if (k in inside and k not in anchor) or k in bias_adds or noop_op(n, graph_outputs) \
            or reshape_to_own_shape(n) else 1
        if k in folded or k in sizes:   # computed at load / from sizes alone: on no per-inference value path
            w_ops[k] = w_nl[k] = 0
        elif id(n) in anchor:
            w_nl[k] = 1
        elif id(n) in inside:
            w_nl[k] = 0
        else:
            w_nl[k] = 1 if n.op in NONLINEAR_OPS else 0
        for t in n.inputs:
            for p in t.inputs:
                if p.op not in _FREE_OPS:
                    ps.add(id(p))
                else:  # walk through Identity chains
                    ps.update(id(q) for q in _through_free(p))
    return ModelStats(
        nodes=len([n for n in graph.nodes if n.op not in _FREE_OPS and not noop_op(n, graph_outputs)
                   and not reshape_to_own_shape(n)]),
        params=params, macs=int(macs),
        depth_ops=_longest(preds, w_ops), depth_nonlinear=_longest(preds, w_nl), activations=len(acts),
        constant_nodes=sum(1 for n in graph.nodes if id(n) in folded and id(n) not in inside),
        free_activation_nodes=sum(len(a.nodes) for a in acts if free_activation(a, folded)),
        activation_elements=sum(activation_elements(a) for a in acts if not free_activation(a, folded)),
        element_work=work, depthwise_macs=int(dw_macs))


def node_elements(node) -> int:
    """Elements a node is priced by (algebra/cost.ELEMENT_PRICES): its output's, a reduction's input's
    (dynamic dims count as 1, as in node_macs)."""
    t = node.inputs[0] if node.op in REDUCTION_OPS and node.inputs else (node.outputs[0] if node.outputs else None)
    dims = _dims(t)
    return int(np.prod(dims)) if dims else 0


def element_work(graph: gs.Graph, acts: list, folded: set) -> tuple[dict, int]:
    """({activation kind or ONNX op type: elements per inference}, MACs of depthwise convs) of a
    toposorted graph with shapes: what the cost model prices beyond MACs and per-op overheads. An
    activation counts once by its kind (a SiLU is one fused op in onnxruntime, not a Sigmoid and a Mul),
    folded nodes (computed at load) not at all."""
    work: dict = {}
    inside = {id(n) for a in acts for n in a.nodes}
    for a in acts:
        if not all(id(n) in folded for n in a.nodes):
            work[a.kind] = work.get(a.kind, 0) + activation_elements(a)
    dw = 0
    for n in graph.nodes:
        if id(n) in inside or id(n) in folded or n.op in _FREE_OPS:
            continue
        cv = ConvView.of(n) if n.op == "Conv" else None
        if cv is not None and is_depthwise(cv.params.in_channels, cv.params.group):
            dw += node_macs(n)
        if n.op not in MAC_OPS:
            k = node_elements(n)
            if k:
                work[n.op] = work.get(n.op, 0) + k
    return work, dw


def free_activation(act, folded: set) -> bool:
    """Costs nothing per inference: fused into the op before it (core/activations.fuses), or computed
    from constants alone (`folded`: constant_nodes) when the session loads."""
    return fuses(act.kind) or all(id(n) in folded for n in act.nodes)


def activation_elements(act) -> int:
    """Elements an activation writes per inference (its output; dynamic dims count as 1, as in node_macs)."""
    dims = _dims(act.output)
    return int(np.prod(dims)) if dims else 0


def _through_free(node):
    out = []
    stack = [node]
    while stack:
        n = stack.pop()
        for t in n.inputs:
            for p in t.inputs:
                (stack if p.op in _FREE_OPS else out).append(p)
    return out


def _longest(preds: dict, weight: dict) -> int:
    """Heaviest path; `preds` lists the nodes in topological order (networkx is not imported for this:
    its import alone is ~8% of a whole no-op run on ResNet-18)."""
    best: dict = {}
    for k, ps in preds.items():
        best[k] = weight[k] + max((best[p] for p in ps if p in best), default=0)
    return max(best.values(), default=0)
