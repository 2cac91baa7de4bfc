"""The nodes two graphs compute alike, so verification runs the common prefix once.

The gate runs the input graph and the requested semantics (the input with some activations linearized) on every
check input; the two compute the same values up to the first linearized activation, which on a collapse of a
network's last stage is most of the network. As the ONNX front end numbers values (verify.py: "only the parts
of the models that differ run"), `SharedPrefix` numbers the nodes of `model` by the nodes of `base` that compute
the same value: same op, same target (a module only when it holds the same tensors and settings), arguments
that are shared nodes. A run of `base` keeps (copies of) the shared values the rest of `model` reads, and
`model`'s run starts from them: the same ops on the same tensors, so the same numbers as a whole run.

In-place writes break "same node, same value": a node reads an argument as the last write left it, and that
write may be one graph's own (a ReLU(inplace=True) the other graph lost to linearize). A node is shared only
when, in both graphs, nothing wrote its arguments since they were computed (fx/graph.mutates, through views; a
call we cannot see into, a torch.fx.wrap function or a module of the model's own code, counts as a write), and
`model`'s run reads a kept value only where nothing in `model` wrote it since.
"""
from __future__ import annotations

import math

import torch
from torch import fx, nn

from .graph import alias_source, opaque_call, written

#: settings compared by value (anything else by identity: a deep copy of an object we cannot compare is not shared)
_PLAIN = (type(None), bool, int, float, complex, str, torch.dtype, torch.device, torch.memory_format, torch.layout,
          torch.Size)
_MODULE_STATE = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")
#: the least share of model's ops a plan must share to be used
MIN_SHARED = 0.25


def _same_value(a, b, nodes: dict) -> bool:
    """a (in model) and b (in base) are the same argument: nodes mapped by `nodes`, containers by content."""
    if isinstance(a, fx.Node):
        return isinstance(b, fx.Node) and nodes.get(a) is b
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y, nodes) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_value(a[k], b[k], nodes) for k in a)
    if isinstance(a, slice):
        return all(_same_value(getattr(a, f), getattr(b, f), nodes) for f in ("start", "stop", "step"))
    if isinstance(a, float) and math.isnan(a):
        return False
    if isinstance(a, _PLAIN):
        return a == b
    return a is b


def _has_hooks(m: nn.Module) -> bool:
    return any(getattr(m, h, None) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                              "_state_dict_hooks", "_forward_hooks_with_kwargs"))


def same_module(a: nn.Module, b: nn.Module) -> bool:
    """a and b compute alike: the same object, or copies (fx/graph.copy_sharing_weights) of one torch.nn layer
    holding the same tensor objects and equal settings, without hooks. A module of the model's own code is
    shared only as the same object (its forward may read anything)."""
    if a is b:
        return True
    if type(a) is not type(b) or not type(a).__module__.startswith("torch.nn.") or _has_hooks(a) or _has_hooks(b):
        return False
    if a._parameters.keys() != b._parameters.keys() or a._buffers.keys() != b._buffers.keys() \
            or any(a._parameters[k] is not b._parameters[k] for k in a._parameters) \
            or any(a._buffers[k] is not b._buffers[k] for k in a._buffers) \
            or a._modules.keys() != b._modules.keys() \
            or not all(same_module(a._modules[k], b._modules[k]) for k in a._modules):
        return False
    da = {k: v for k, v in vars(a).items() if k not in _MODULE_STATE and not k.endswith("hooks")}
    db = {k: v for k, v in vars(b).items() if k not in _MODULE_STATE and not k.endswith("hooks")}
    return da.keys() == db.keys() and all(_same_value(da[k], db[k], {}) for k in da)


def _opaque(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A call that may write its arguments without saying so: a Python function fx kept whole, or a module of
    the model's own code (fx traces into those unless they are leaves)."""
    if opaque_call(n):
        return True
    if n.op == "call_module":
        cls = type(gm.get_submodule(str(n.target)))
        # torch.export's input guard check (ep.module()._guards_fn) reads the inputs only
        return not cls.__module__.startswith("torch.nn.") and cls.__qualname__ != "GuardsFn"
    return False


class _Writes:
    """fx/graph's alias_group and written over one graph, each node asked once (the planner asks per input)."""

    def __init__(self, gm: fx.GraphModule):
        self.views = {n: alias_source(n) for n in gm.graph.nodes}
        self._groups: dict = {}
        self.writers: dict[fx.Node, list] = {}
        for u in gm.graph.nodes:
            for a in written(u):   # x.relu_(), x[:, :2] = v, torch.add(x, y, out=z), aten.fill_
                self.writers.setdefault(a, []).append(u)
            if _opaque(gm, u):
                for a in u.all_input_nodes:
                    self.writers.setdefault(a, []).append(u)

    def group(self, x: fx.Node) -> set:
        root = x
        while self.views.get(root) is not None:
            root = self.views[root]
        if root not in self._groups:
            group, todo = {root}, [root]
            while todo:
                n = todo.pop()
                for u in n.users:
                    if u not in group and self.views.get(u) is n:
                        group.add(u)
                        todo.append(u)
            self._groups[root] = group
        return self._groups[root]

    def between(self, x: fx.Node, after: fx.Node, before: fx.Node | None = None) -> list:
        """The nodes after `after` (and before `before`) that write x's memory, directly or through a view, in order."""
        return sorted({u for a in self.group(x) for u in self.writers.get(a, ())
                       if u > after and (before is None or u < before)})


def _same_node(model: fx.GraphModule, m: fx.Node, base: fx.GraphModule, b: fx.Node, nodes: dict) -> bool:
    if m.op != b.op or len(m.args) != len(b.args) or not _same_value(m.args, b.args, nodes) \
            or not _same_value(m.kwargs, b.kwargs, nodes):
        return False
    if m.op == "call_module":
        return m.target == b.target and same_module(model.get_submodule(m.target), base.get_submodule(b.target))
    if m.op == "get_attr":
        va, vb = _attr(model, m.target), _attr(base, b.target)
        return va is vb or (isinstance(va, nn.Module) and isinstance(vb, nn.Module) and same_module(va, vb)) \
            or _same_constant(va, vb)
    return m.target == b.target if m.op == "call_method" else m.target is b.target


def _same_constant(a, b) -> bool:
    """Two copies of a tensor constant (a program's lifted constant is a plain attribute, deep-copied with the graph;
    parameters and buffers are shared): the same values, dtype, layout and device."""
    return isinstance(a, torch.Tensor) and type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape \
        and a.device == b.device and a.layout == torch.strided == b.layout and a.stride() == b.stride() \
        and a.requires_grad == b.requires_grad and bool(torch.equal(a, b))


def _attr(gm: nn.Module, target: str):
    obj = gm
    for part in str(target).split("."):
        obj = getattr(obj, part)
    return obj


class SharedPrefix:
    """Which nodes of `model` compute the value of a node of `base` (shared), and the shared values the rest of
    `model` reads (keep: copied as base computes them; late: copied at the end of base's run, for values the shared
    ops write in place before model's own ops read them, as Swin's attention masks are filled). useful: at least
    MIN_SHARED of model's ops are shared and every kept value can be copied so (else `model` runs whole, as before)."""

    def __init__(self, base: fx.GraphModule, model: fx.GraphModule):
        self.base, self.model = base, model
        self.shared: dict[fx.Node, fx.Node] = {}   # model node -> base node
        base_phs = [n for n in base.graph.nodes if n.op == "placeholder"]
        self._bw, self._mw = _Writes(base), _Writes(model)
        by_key: dict = {}
        for b in base.graph.nodes:
            if b.op not in ("placeholder", "output"):
                by_key.setdefault((b.op, str(b.target)), []).append(b)
        phs, taken = 0, set()
        for m in model.graph.nodes:
            if m.op == "placeholder":
                if phs < len(base_phs) and base_phs[phs].target == m.target:
                    self.shared[m] = base_phs[phs]
                phs += 1
                continue
            if m.op == "output" or not all(a in self.shared for a in m.all_input_nodes):
                continue
            b = next((b for b in by_key.get((m.op, str(m.target)), ()) if b not in taken
                      and _same_node(model, m, base, b, self.shared) and self._same_writes(m, b)), None)
            if b is not None:
                self.shared[m] = b
                taken.add(b)
        self.keep: dict[fx.Node, fx.Node] = {}   # the shared values model's own nodes read
        readers: dict[fx.Node, list] = {}
        for m in model.graph.nodes:
            if m not in self.shared:
                for a in m.all_input_nodes:
                    if a in self.shared:
                        self.keep[a] = self.shared[a]
                        readers.setdefault(a, []).append(m)
        self.late: set = set()
        copyable = True
        for k, kb in self.keep.items():
            writes = self._mw.between(k, k)
            if not writes:
                continue
            if all(w in self.shared for w in writes) and writes[-1] < min(readers[k]) \
                    and [self.shared[w] for w in writes] == self._bw.between(kb, kb):
                self.late.add(k)   # written by the same shared ops in both, all before model's first own read
            else:
                copyable = False
        ops = [m for m in model.graph.nodes if m.op in ("call_module", "call_function", "call_method")]
        # a prefix of a few ops (every other ReLU of a ResNet collapsed: its stem) saves less than running node by node
        # and copying costs: then model runs whole, as its compiled code
        self.useful = copyable and sum(m in self.shared for m in ops) >= MIN_SHARED * len(ops) > 0

    def _same_writes(self, m: fx.Node, b: fx.Node) -> bool:
        """m and b read their arguments as the same in-place writes left them: the writes since each argument was
        computed are shared ops, the same ones in the same order."""
        for a in m.all_input_nodes:
            ab = self.shared[a]
            mine, theirs = self._mw.between(a, a, m), self._bw.between(ab, ab, b)
            if len(mine) != len(theirs) or any(self.shared.get(w) is not t for w, t in zip(mine, theirs)):
                return False
        return True

    def run_model(self, feeds: tuple, kept: dict):
        """model's output on feeds from the kept values: only its nodes that are not shared run."""
        env = dict(kept)
        skip = set(self.shared) - set(kept)
        with torch.no_grad():
            return _run_graph(self.model, feeds, env, skip=skip)


_NO_VALUE = object()


def _last_uses(graph: fx.Graph) -> dict:
    """node -> the values no node after it reads (freed once it ran, as fx's Interpreter frees them)."""
    seen, frees = set(), {}
    for n in reversed(graph.nodes):
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                frees.setdefault(n, []).append(a)
    return frees


def _run_graph(gm: fx.GraphModule, feeds: tuple, env: dict, skip=(), on_value=None):
    """gm's graph run node by node, as torch.fx.Interpreter runs it (the same calls on the same values), without its
    per-node bookkeeping (progress bar, current-node context: +40% on Swin-T's 1342 aten ops). env: values given
    (not computed); skip: nodes not run (no node run reads them); on_value(node, value) after each node runs."""
    graph = gm.graph
    args = iter(graph.process_inputs(*feeds))
    frees = _last_uses(graph)
    load = env.__getitem__
    for n in graph.nodes:
        if n.op == "placeholder":   # every placeholder takes its input, given or not: the positions stay
            if str(n.target).startswith("*"):
                value = list(args)
            else:
                value = next(args, _NO_VALUE)
                if value is _NO_VALUE:
                    if not n.args:
                        raise RuntimeError(f"expected an input for the placeholder {n.target}")
                    value = n.args[0]
            if n not in env and n not in skip:
                env[n] = value
                if on_value is not None:
                    on_value(n, value)
        elif n in env or n in skip:
            pass
        else:
            a, kw = fx.node.map_arg(n.args, load), fx.node.map_arg(n.kwargs, load)
            if n.op == "call_function":
                value = n.target(*a, **kw)
            elif n.op == "call_module":
                value = gm.get_submodule(str(n.target))(*a, **kw)
            elif n.op == "call_method":
                value = getattr(a[0], n.target)(*a[1:], **kw)
            elif n.op == "get_attr":
                value = _attr(gm, n.target)
            else:   # output
                return graph.process_outputs(a[0])
            env[n] = value
            if on_value is not None:
                on_value(n, value)
        for dead in frees.get(n, ()):
            env.pop(dead, None)
    raise RuntimeError("the graph has no output node")


def run_keeping(base: fx.GraphModule, feeds: tuple, plans: list) -> tuple:
    """base's output on feeds, and for each plan (a SharedPrefix of base) copies of the values its model's run
    needs: taken as each is computed (a later in-place write in base, a ReLU(inplace=True) the model no longer
    has, leaves them as the model reads them), or at the end of the run for the plan's late ones."""
    from torch.utils._pytree import tree_map

    wanted: dict = {}
    for k, plan in enumerate(plans):
        for m, b in plan.keep.items():
            wanted.setdefault(b, []).append((k, m, m in plan.late))
    kept = [{} for _ in plans]

    def copied(out):
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

    def keep(n, out):
        for k, m, late in wanted.get(n, ()):
            kept[k][m] = out if late else copied(out)

    with torch.no_grad():
        out = _run_graph(base, feeds, {}, on_value=keep)
    for k, plan in enumerate(plans):
        for m in plan.late:
            kept[k][m] = copied(kept[k][m])
    return out, kept
