"""Residual blocks of a torch.fx graph: y = F(x) + x or y = F(x) + P(x), as onnx/blocks.py finds them.

A block is an add of two tensors where
- one operand (the skip) is the block input x itself (identity skip), or a short single-path
  projection of x: conv / BatchNorm / linear / avg-pool / Identity modules or ops, each link read only
  by the next one (a 1x1 conv shortcut, conv+BN, avg-pool + conv);
- the other operand (the branch) is computed from x alone: walking back from it, every path ends at x
  or at a constant (a parameter, a buffer, a literal).
An identity skip is preferred over a projection. A post-add activation is not part of the block (the
block output is the add), so removing the block keeps it, as on the ONNX side.

Block key: the module path of the add (its `nn_module_stack`: "layer1.0" for torchvision's BasicBlock,
"features.3" for an inverted residual), the same key the ONNX front end reads from the export's scope
names; two blocks in one module (a transformer block's attention and MLP residuals) get
"<path>/Add", "<path>/Add_1", ... numbered over the module's own adds as TorchScript's export names
them (its ONNX keys). Every block also answers to its add node's name.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import fx, nn

from .graph import batchnorm_op, is_add, linear_op, module_path, mutated_between, shape_of, submodule

_PROJ_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Linear,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.Identity)
_MAX_PROJ = 4
_MAX_WALK = 100000


@dataclass
class FxBlock:
    key: str
    add: fx.Node                 # the add joining skip and branch
    skip: fx.Node                # the add operand on the skip side (x, or the projection's output)
    branch: fx.Node              # the add operand F(x)
    input: fx.Node               # the block input x
    identity: bool
    skip_index: int = 0
    projection: list = field(default_factory=list)   # the projection's nodes, x side first
    module: str | None = None
    keys: list = field(default_factory=list)

    @property
    def output(self) -> fx.Node:
        return self.add

    def describe(self) -> dict:
        return {"key": self.key, "add": self.add.name, "skip": "identity" if self.identity else "projection",
                "input": self.input.name, "skip_tensor": self.skip.name, "branch_output": self.branch.name,
                "output": self.add.name, "module": self.module, "projection_nodes": [n.name for n in self.projection]}


def _from_only(t: fx.Node, x: fx.Node) -> bool:
    """Every path back from t ends at x or at a constant, and one reaches x."""
    seen, todo, reached = set(), [t], False
    while todo:
        n = todo.pop()
        if n is x:
            reached = True
            continue
        if n in seen:
            continue
        seen.add(n)
        if len(seen) > _MAX_WALK or n.op == "placeholder":
            return False
        if _size_read(n):
            continue   # a tensor's size is no data: the batch torch.export reads from the model input
        todo.extend(n.all_input_nodes)   # get_attr and literal-only nodes have none: constants
    return reached


def _size_read(n: fx.Node) -> bool:
    """n reads a tensor's size, not its values (aten.sym_size, x.size(), x.shape, x.dim()). torch.export's window
    attention reads the batch from the *model* input (sym_size(x, 0)), so every Swin attention residual looked
    computed from another input than the block's and was no block: 12 of Swin-T's 24 were found (the ONNX side,
    its size arithmetic folded, finds 24) and the MLP residual took the bare module key."""
    import torch

    if n.op == "call_function":
        if isinstance(n.target, torch._ops.OpOverload):
            return n.target.__name__.split(".")[0] in ("sym_size", "sym_numel", "sym_stride")
        return n.target is getattr and len(n.args) > 1 and n.args[1] in ("shape", "ndim")
    return n.op == "call_method" and n.target in ("size", "dim", "numel")


def _proj_link(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(submodule(gm, n), _PROJ_MODULES)
    return linear_op(gm, n) is not None or batchnorm_op(gm, n) is not None


def _projection(gm: fx.GraphModule, skip: fx.Node, branch: fx.Node):
    """(x, chain) when skip is a short single-path projection of an x the branch is computed from."""
    chain, n = [], skip
    while len(chain) < _MAX_PROJ and _proj_link(gm, n):
        varying = [a for a in n.all_input_nodes if a.op != "get_attr"]
        if len(varying) != 1 or (chain and len(n.users) != 1):
            return None
        chain.insert(0, n)
        n = varying[0]
        if _from_only(branch, n):
            return n, chain
    return None


def _through_identity(gm: fx.GraphModule, n: fx.Node) -> fx.Node:
    """n, or what an nn.Identity chain in front of it reads (`self.shortcut = nn.Identity()`)."""
    while n.op == "call_module" and type(submodule(gm, n)) is nn.Identity and n.args and isinstance(n.args[0], fx.Node):
        n = n.args[0]
    return n


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    sa, sb = shape_of(a), shape_of(b)
    return sa is None or sb is None or tuple(sa) == tuple(sb)


def _add_like(n: fx.Node) -> bool:
    name = getattr(n.target, "__name__", str(n.target)) if n.op in ("call_function", "call_method") else ""
    return name.split(".")[0] in ("add", "iadd", "add_")


def find_residual_blocks(gm: fx.GraphModule) -> list[FxBlock]:
    """The residual blocks of gm in graph order (keys as in the module docstring)."""
    blocks = []
    for add in gm.graph.nodes:
        if not is_add(add) or not all(isinstance(a, fx.Node) for a in add.args):
            continue
        found = None
        for si in (1, 0):   # the skip is usually the second operand (`out + identity`)
            skip, branch = add.args[si], add.args[1 - si]
            x = _through_identity(gm, skip)
            if _from_only(branch, x) and _same_shape(x, add):
                found = FxBlock("", add, skip, branch, x, True, si)
                break
        if found is None:
            for si in (1, 0):
                skip, branch = add.args[si], add.args[1 - si]
                proj = _projection(gm, skip, branch)
                if proj is not None:
                    found = FxBlock("", add, skip, branch, proj[0], False, si, proj[1])
                    break
        if found is None or mutated_between(found.input, found.input, add):
            continue   # x written in place inside the block: its skip does not read x's value
        found.module = module_path(add)
        blocks.append(found)
    per_module = Counter(b.module for b in blocks)
    adds_in = {}   # module path -> its own add nodes in order (TorchScript numbers them Add, Add_1, ...)
    for n in gm.graph.nodes:
        if _add_like(n):
            adds_in.setdefault(module_path(n), []).append(n)
    for b in blocks:
        if b.module and per_module[b.module] == 1:
            b.key = b.module
        elif b.module:
            i = adds_in[b.module].index(b.add)
            b.key = f"{b.module}/Add" + (f"_{i}" if i else "")
        else:
            b.key = b.add.name
        b.keys = list(dict.fromkeys([b.key, b.add.name]))
    return blocks
