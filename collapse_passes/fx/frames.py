"""Where a dynamo graph sits in the compiled model: torch_backend's keys across graph breaks inside modules.

Dynamo names every module a graph calls relative to its frame's `self` (`L['self'].relu`). Without a graph
break inside a module that frame is the compiled model's forward and the names are the model's paths. A graph
break inside a block (a print, `.item()`, an unsupported call) makes dynamo compile the block's forward as a
frame of its own, and the part after the break as a resume function: there `L['self']` is the block, so its
ReLU was keyed `relu`, the stem's key. `torch_backend(collapse=["relu"])` then collapsed every block's ReLU
(ResNet-18: 15 sites, not 1) and `layer1.0.relu:1` matched nothing. Two things fix the keys:

- the frame's `self` is located in the compiled model by the Python call stack (the eager calls that reached
  the frame: model -> layer1 -> layer1.0), and its path is put before the graph's module names;
- a resume function's graph is the rest of a forward, whose earlier calls of a module another graph made:
  its activations get the bare module path as key (which names every call of the module, as always), never
  `path:i`, whose call index would restart at 0 there (`layer1.0.relu:0` named both calls of the block).

Private dynamo API (InstructionTranslator.current_tx) is read defensively: where it is missing, graphs are
keyed as before.
"""
from __future__ import annotations

import sys

from torch import fx, nn

#: GraphModule.meta flag: the graph is a dynamo resume function's (the rest of a forward after a graph break):
#: its module calls get no call-index keys
RESUMED_GRAPH = "collapse_passes.resumed_graph"

_RESUME_PREFIX = "torch_dynamo_resume_in_"
_SELF = "L['self']"   # dynamo's source of the frame's module


def _compiled_frame():
    """(code, self) of the frame dynamo is compiling, or None where torch does not say."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        return tx.f_code, tx.f_locals.get("self")
    except Exception:   # noqa: BLE001 - a private API: without it the keys stay dynamo's names
        return None


def _is_compile_boundary(m: nn.Module) -> bool:
    """torch.compile(model)'s wrapper, or a module compiled in place by model.compile()."""
    return hasattr(m, "_orig_mod") or getattr(m, "_compiled_call_impl", None) is not None


def _frame_path(me: nn.Module) -> str | None:
    """The path of `me` (the compiled frame's self) in the compiled model, from the modules whose calls are on
    the Python stack between the model and `me`; None where the stack shows no compiled model above it."""
    chain: list[nn.Module] = []   # module selves from `me` outward
    f = sys._getframe(1)
    while f is not None:
        s = f.f_locals.get("self")
        if isinstance(s, nn.Module):
            if not chain:
                if s is me:
                    chain.append(s)
            elif s is not chain[-1]:
                chain.append(s)
            if chain and _is_compile_boundary(s):
                break
        f = f.f_back
    if not chain or not _is_compile_boundary(chain[-1]):
        return None
    if hasattr(chain[-1], "_orig_mod"):   # torch.compile's wrapper: keys are the wrapped model's paths
        root = chain[-1]._orig_mod
        chain = chain[:-1]
        if not chain or chain[-1] is not root:
            return None
    parts = []
    for parent, child in zip(reversed(chain[1:]), reversed(chain[:-1])):
        rel = next((n for n, m in parent.named_modules(remove_duplicate=False) if m is child and n), None)
        if rel is None:
            return None
        parts.append(rel)
    return ".".join(parts)


def scope_dynamo_graph(gm: fx.GraphModule) -> None:
    """Name the modules of a dynamo graph by their paths in the compiled model, and flag a resume function's
    graph (RESUMED_GRAPH); called by torch_backend before it reads the graph's activation sites."""
    frame = _compiled_frame()
    if frame is None:
        return
    code, me = frame
    if getattr(code, "co_name", "").startswith(_RESUME_PREFIX):
        gm.meta[RESUMED_GRAPH] = True
    if not isinstance(me, nn.Module):
        return
    prefix = _frame_path(me)
    if not prefix:   # the model's own frame (no break inside a module), or nowhere known
        return
    for n in gm.graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if not stack:
            continue
        n.meta["nn_module_stack"] = {
            k: ((f"L['self'].{prefix}{str(path)[len(_SELF):]}" if str(path).startswith(_SELF) else path), *rest)
            for k, (path, *rest) in stack.items()}



def guard_identity(node: fx.Node) -> None:
    """Make dynamo recompile, not reuse, this graph for another module object: torch_backend freezes the tensor
    `node` reads (a parameter or buffer) into the graph, as inductor's freezing does, and as inductor's freezing
    does it guards on the tensor's identity (dynamo's ID_MATCH). Without the guard, dynamo passed parameters
    as inputs and reused one compiled graph for every instance of a block class whose forward it compiled as
    a frame of its own (a graph break inside the block): every ResNet block ran with the first block's weights
    (outputs off by 5-12 on ResNet-18, every graph's own check passed)."""
    ga = node.meta.get("grapharg")
    source = getattr(ga, "source", None)
    if source is None:
        return
    try:
        from torch._dynamo.guards import GuardBuilder, install_guard

        install_guard(source.make_guard(GuardBuilder.ID_MATCH))
    except Exception:   # noqa: BLE001 - a private API (torch 2.13 has it): without it, the old reuse
        pass
