"""Module paths of calls, as torch.export names them: the path through which a call reached its module.

One module object may be registered at several paths (an nn.ReLU shared by blocks b1 and b2 is b1.2 and
b2.2; an nn.Sequential may hold it twice). torch.fx's Tracer names a module by its first registered path,
so both calls were `b1.2` (keys b1.2:0, b1.2:1), while torch.export and the torch.export-based ONNX exporter
say b1.2 and b2.2. Here a call is named by its caller's path plus the module's name under the caller:

- one name under the caller: that name (b2's call of the shared ReLU is b2.2);
- several names held by one nn.Sequential / nn.ModuleList (the same ReLU twice in a Sequential, or in a
  ModuleList the caller loops over): the i-th call in one run of the caller is the i-th name, the order
  these containers run their children in (a caller indexing its ModuleList out of order is misnamed);
- called by an fx.GraphModule (a traced model, or one the training loop edited): the i-th call is its
  graph's i-th call_module node naming that module;
- otherwise (one module registered under two attribute names of the same caller): the first of them, its
  calls numbered path:i; a module the caller does not hold: its first registered path (torch.fx's name). torch.export tells the names
  apart by the attribute read; forward hooks cannot, and the hooks that score a module must key like this.

CallPathTracer (symbolic_trace) and the scoring hooks (scores/torch_hooks.py) both use CallPaths, so the
sites the torch front end finds and the scores measured on them have the same keys. Each name is an attribute
path of the root, so a call_module target stays valid.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import fx, nn


def _join(parent: str, rel: str) -> str:
    return f"{parent}.{rel}" if parent else rel


class CallPaths:
    """The call paths of one run of `root`: enter(m) when m is called from the innermost open call,
    exit() when that call returns."""

    def __init__(self, root: nn.Module):
        self.root = root
        self._below: dict[int, dict[int, list[str]]] = {}
        self._graphs: dict[int, dict[int, list[str]]] = {}
        self._open: list[tuple[str, nn.Module, dict]] = [("", root, {})]   # (path, module, calls per child id)

    def restart(self) -> None:
        """A new run of the root (call numbering starts again)."""
        self._open = [("", self.root, {})]

    @property
    def current(self) -> str:
        return self._open[-1][0]

    def _names_below(self, parent: nn.Module) -> dict[int, list[str]]:
        """id(module) -> every path of it relative to `parent`, in registration order (aliases too)."""
        found = self._below.get(id(parent))
        if found is None:
            found = {}
            for name, m in parent.named_modules(remove_duplicate=False):
                if name:
                    found.setdefault(id(m), []).append(name)
            self._below[id(parent)] = found
        return found

    def _graph_calls(self, parent: nn.Module) -> dict[int, list[str]]:
        """id(module) -> the call_module targets naming it, in graph order, when `parent` is a GraphModule."""
        found = self._graphs.get(id(parent))
        if found is None:
            found = {}
            if isinstance(parent, fx.GraphModule):
                for n in parent.graph.nodes:
                    if n.op == "call_module":
                        try:
                            found.setdefault(id(parent.get_submodule(str(n.target))), []).append(str(n.target))
                        except AttributeError:
                            pass
            self._graphs[id(parent)] = found
        return found

    def enter(self, m: nn.Module, first_path: Callable[[nn.Module], str]) -> str:
        parent_path, parent, calls = self._open[-1]
        k = calls.get(id(m), 0)
        calls[id(m)] = k + 1
        names = self._names_below(parent).get(id(m), [])
        in_graph = self._graph_calls(parent).get(id(m), [])
        if not names:
            path = first_path(m)
        elif k < len(in_graph):   # a GraphModule calls its call_module targets in graph order
            path = _join(parent_path, in_graph[k])
        elif len(names) > 1 and k < len(names) and _run_in_order(parent, names):
            path = _join(parent_path, names[k])
        else:
            path = _join(parent_path, names[0])
        self._open.append((path, m, {}))
        return path

    def exit(self) -> None:
        if len(self._open) > 1:
            self._open.pop()


def _run_in_order(parent: nn.Module, names: list[str]) -> bool:
    """Whether the names are children of one nn.Sequential / nn.ModuleList (which runs them in order)."""
    holders = {n.rpartition(".")[0] for n in names}
    if len(holders) != 1:
        return False
    holder = holders.pop()
    return isinstance(parent.get_submodule(holder) if holder else parent, (nn.Sequential, nn.ModuleList))


class CallPathTracer(fx.Tracer):
    """fx.Tracer naming each call_module target and nn_module_stack entry by its call path (CallPaths)."""

    def trace(self, root, concrete_args=None):
        self._call_paths = CallPaths(root) if isinstance(root, nn.Module) else None
        self._entered: list[tuple[nn.Module, str]] = []
        graph = super().trace(root, concrete_args)
        resolve_annotations(graph, root)
        return graph

    def call_module(self, m, forward, args, kwargs):
        if getattr(self, "_call_paths", None) is None:
            return super().call_module(m, forward, args, kwargs)
        self._entered.append((m, self._call_paths.enter(m, super().path_of_module)))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._entered.pop()
            self._call_paths.exit()

    def path_of_module(self, mod: torch.nn.Module) -> str:
        for m, path in reversed(getattr(self, "_entered", ())):
            if m is mod:
                return path
        return super().path_of_module(mod)


def resolve_annotations(graph: fx.Graph, root) -> None:
    """Give the graph's input / output nodes the types their forward's annotations name, not the strings.

    Under `from __future__ import annotations` (PEP 563) fx copies each annotation as a string, 'torch.Tensor', and
    the generated code writes it as the name `_torch_Tensor_`: `torch.jit.script` of the traced model failed on it
    ("Unknown type name") and `torch.save` of the whole GraphModule raised AttributeError ('str' has no __name__).
    A string is resolved in the forward's module globals, as typing.get_type_hints does; one that names nothing
    there is dropped (no annotation), never guessed."""
    fn = getattr(root, "forward", root)
    glb = getattr(getattr(fn, "__func__", fn), "__globals__", None)
    for n in graph.nodes:
        if n.op in ("placeholder", "output") and isinstance(n.type, str):
            try:
                n.type = eval(n.type, dict(glb or {}))   # noqa: S307 - the user's own annotation, as typing does
            except Exception:
                n.type = None
