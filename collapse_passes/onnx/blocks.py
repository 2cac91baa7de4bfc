"""Residual blocks of an ONNX graph: y = F(x) + x or y = F(x) + P(x).

A block is an Add of two non-constant tensors where
- one operand (the skip) is the block input x itself (identity skip), or a single-path projection
  of x: a short chain of Conv / BatchNormalization / Gemm / MatMul with constant weights, affine
  Add/Mul/Sub/Div with a constant, AveragePool or Identity, each link read only by the next one
  (a 1x1 conv shortcut, conv+BN, avg-pool + conv);
- the other operand (the branch) is computed from x alone: walking back from it, every path ends
  at x or at a constant (shape computations through Shape/Size count as constant).

An identity skip is preferred over a projection when both readings fit. A post-add activation
(ReLU after the Add) is not part of the block: the block output is the Add output.

Block key: the torch module path of the Add when the node name is a TorchScript scope path
("/layer1/layer1.0/Add" -> "layer1.0") or, when node metadata is given, the dynamo exporter's
name_scopes; otherwise the Add node name. Two blocks in one module (a transformer block has an
attention and an MLP residual) get "<path>/Add", "<path>/Add_1", ...: TorchScript's node suffix, or on
the dynamo export (global names such as node_add_17) the index among the module's own Adds, so both
exporters and the torch front end agree. Every block also answers to its Add node name.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .graph import const_value, toposort
from .keys import module_path_from_metadata, module_path_from_scope_name
from ..core.names import fresh_name

_PROJ_OPS = {"Conv", "BatchNormalization", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div", "AveragePool", "Identity"}
_SHAPE_OPS = {"Shape", "Size"}
_MAX_PROJ = 4


@dataclass
class ResidualBlock:
    key: str
    add: object                  # gs.Node: the Add joining skip and branch
    skip: object                 # gs.Variable the Add reads on the skip side (x, or the projection output)
    branch: object               # gs.Variable: the branch output F(x)
    input: object                # gs.Variable: the block input x
    identity: bool               # True: skip is x itself; False: a projection of x
    skip_index: int = 0          # which Add input is the skip
    projection: list = field(default_factory=list)   # gs.Node chain of the projection, x side first
    module: str | None = None    # torch module path when readable
    keys: list = field(default_factory=list)

    @property
    def output(self):
        return self.add.outputs[0]

    @property
    def skip_kind(self) -> str:
        return "identity" if self.identity else "projection"

    def describe(self) -> dict:
        return {"key": self.key, "add": self.add.name, "skip": self.skip_kind, "input": self.input.name,
                "skip_tensor": self.skip.name, "branch_output": self.branch.name, "output": self.output.name,
                "module": self.module, "projection_nodes": [n.name for n in self.projection]}


def _is_const(t) -> bool:
    """A constant, also behind Identity nodes (TorchScript exports route weights through Identity)."""
    for _ in range(8):
        if isinstance(t, gs.Constant) or const_value(t) is not None:
            return True
        if not (t.inputs and t.inputs[0].op == "Identity" and t.inputs[0].inputs):
            return False
        t = t.inputs[0].inputs[0]
    return False


def _varying(node) -> list:
    return [t for t in node.inputs if t.name and not _is_const(t)]


def _from_only(t, x, limit: int = 100000) -> bool:
    """True when every path back from t ends at x or a constant, and at least one reaches x."""
    if t is x:
        return True
    seen: set = set()
    stack = [t]
    hit = False
    while stack:
        cur = stack.pop()
        if cur is x:
            hit = True
            continue
        if id(cur) in seen or _is_const(cur):
            continue
        seen.add(id(cur))
        if len(seen) > limit or not cur.inputs:
            return False  # a graph input (or dangling tensor) other than x feeds the branch
        prod = cur.inputs[0]
        if prod.op in _SHAPE_OPS:
            continue
        stack.extend(i for i in prod.inputs if i.name)
    return hit


def _projection(t):
    """(chain x-side first, x) when t is a single-path projection of some x, else None."""
    chain = []
    cur = t
    while len(chain) < _MAX_PROJ:
        if not cur.inputs:
            break
        prod = cur.inputs[0]
        if prod.op not in _PROJ_OPS or len(prod.outputs) != 1:
            break
        var = _varying(prod)
        if len(var) != 1:
            break
        if prod.op in ("Conv", "Gemm", "MatMul") and len(prod.inputs) > 1 and not _is_const(prod.inputs[1]):
            break
        if chain and len(cur.outputs) != 1:
            break  # an intermediate link read by something else: not a single path
        chain.append(prod)
        cur = var[0]
    if not chain or not any(n.op in ("Conv", "Gemm", "MatMul", "BatchNormalization", "AveragePool") for n in chain):
        return None
    return chain[::-1], cur


def _kernel_area(chain) -> int:
    area = 1
    for n in chain:
        if n.op == "Conv":
            for k in n.attrs.get("kernel_shape", []) or []:
                area *= int(k)
    return area


def _match(add):
    if add.op != "Add" or len(add.inputs) != 2 or len(add.outputs) != 1:
        return None
    a, b = add.inputs
    if not a.name or not b.name or _is_const(a) or _is_const(b) or a is b:
        return None
    # identity skip: one operand is x, the other is computed from it alone
    for si in (0, 1):
        s, br = add.inputs[si], add.inputs[1 - si]
        if br.inputs and _from_only(br, s):
            return dict(skip_index=si, skip=s, branch=br, input=s, identity=True, projection=[])
    cands = []
    for si in (0, 1):
        s, br = add.inputs[si], add.inputs[1 - si]
        pr = _projection(s)
        if pr is None:
            continue
        chain, x = pr
        if br.inputs and _from_only(br, x):
            cands.append(((len(chain), _kernel_area(chain), si),
                          dict(skip_index=si, skip=s, branch=br, input=x, identity=False, projection=chain)))
    if not cands:
        return None
    return min(cands, key=lambda c: c[0])[1]


def _module_path(add, node_meta) -> str | None:
    if node_meta:
        p = module_path_from_metadata(node_meta.get(add.name, {}))
        if p:
            return p
    return module_path_from_scope_name(add.name)


#: the TorchScript exporter's name of a module's own Add (the torch front end numbers them the same way)
_TS_ADD = re.compile(r"Add(_\d+)?")


def find_residual_blocks(graph: gs.Graph, node_meta: dict | None = None) -> list[ResidualBlock]:
    """Every residual block of `graph`, in graph order. `node_meta` (graph.node_key_names of the
    model proto) lets dynamo-exported models use module paths as keys; without it their blocks are
    keyed by Add node name. The graph is not modified (beyond graphsurgeon's toposort)."""
    toposort(graph)
    found = []
    for node in graph.nodes:
        m = _match(node)
        if m is not None:
            found.append(ResidualBlock(key="", add=node, module=_module_path(node, node_meta), **m))
    counts = Counter(b.module for b in found if b.module)
    own_adds: dict = {}   # module path -> its own Add nodes in graph order (several blocks in one module only)
    if any(c > 1 for c in counts.values()):
        for node in graph.nodes:
            if node.op == "Add":
                own_adds.setdefault(_module_path(node, node_meta), []).append(id(node))
    taken: set = set()
    for b in found:
        if b.module and counts[b.module] == 1:
            key = b.module
        elif b.module:
            tail = b.add.name.rstrip('/').rsplit('/', 1)[-1]
            if not _TS_ADD.fullmatch(tail):   # torch.export names count over the whole graph (node_add_17):
                i = own_adds[b.module].index(id(b.add))   # number the module's own adds, as TorchScript does
                tail = "Add" + (f"_{i}" if i else "")
            key = f"{b.module}/{tail}"
        else:
            key = b.add.name
        key = fresh_name(key, taken, sep="#")
        b.key = key
        b.keys = list(dict.fromkeys([key, b.add.name]))
    return found
