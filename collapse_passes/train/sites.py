"""Activation call sites of an nn.Module, and the two edits the training loop makes on them.

    find_sites(model)                  -> [Site]   (keys: `path`, or `path:i` for a module called i-th of several times)
    linearize(model, keys)             -> model    collapsed sites replaced by their linear regime (LinearRegime)
    relocate_padding(model)            -> int      padding of conv chains joined by a collapsed site moved to
                                                   the chain's first conv (so the later merge is exact)

A site of a module called once is collapsed by swapping the module (the model keeps its class);
one site of a module called several times (torchvision's BasicBlock.relu) needs a graph edit: the
module issuing the calls is traced with torch.fx and put back as a GraphModule (the whole model only
when no single submodule issues them all). Kept small on purpose: the torch.fx
front end (collapse_passes/fx) is where this lands for good.
"""
from __future__ import annotations

import copy
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..core.activations import is_collapsible, linear_regime
from ..core.names import AttributeNames, fresh_name
from ..core.selection import site_key
from ..core.torch_kinds import module_kind
from ..errors import CollapseError
from ..fx.call_path import CallPathTracer


class LinearRegime(nn.Module):
    """What a collapsed activation becomes: y = scale * x + shift (identity for ReLU-likes).

    A marker class too: relocate_padding moves padding only across chains holding one of these."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0, key: str = ""):
        super().__init__()
        self.scale, self.shift, self.key = float(scale), float(shift), key

    def forward(self, x):
        if self.scale == 1.0 and self.shift == 0.0:
            return x
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"key={self.key!r}, scale={self.scale}, shift={self.shift}"


@dataclass
class Site:
    key: str               # "path" (called once) or "path:i" (i-th call of a module called several times)
    path: str              # module path
    call: int              # call index of this module in one forward
    calls: int             # how many times the module is called in one forward
    kind: str
    params: dict = field(default_factory=dict)
    origin: str | None = None   # the key this site had before a per-call swap gave it a module of its own


class _Tracer(CallPathTracer):
    """Keeps LinearRegime as a call_module node (the marker relocate_padding looks for); modules are named
    by their call path (fx/call_path.py), as the torch front end keys them. With `through` (the call paths of
    the sites an edit replaces: an edit trace) every submodule stays a call_module node, class, hooks and
    all, unless an edited site lies inside it: traced through, a module becomes inlined code in its parent's
    graph (an SE block inside a BasicBlock was an empty nn.Module after one ReLU call of the block was
    collapsed: LaCoOT's block hooks, the user's hooks and isinstance checks no longer saw it)."""

    def __init__(self, through=None):
        super().__init__()
        self.through = through

    def is_leaf_module(self, m, qualname):
        if isinstance(m, LinearRegime):
            return True
        if self.through is not None:
            return not any(p.startswith(qualname + ".") for p in self.through)
        return super().is_leaf_module(m, qualname)


#: nn.Module's hook tables: a collapsed activation keeps the user's hooks (a forward hook recording that
#: layer's output still fires, on the linear regime's output), as the torch front end keeps them by tracing
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")
#: the forward ones, which a trace would run (non-leaf modules are called through nn.Module.__call__)
_FORWARD_TABLES = tuple(t for t in _HOOK_TABLES if t.startswith("_forward"))


def _hooked(m: nn.Module) -> bool:
    return bool(getattr(m, "_forward_hooks", None) or getattr(m, "_forward_pre_hooks", None)
                or getattr(m, "_backward_hooks", None) or getattr(m, "_backward_pre_hooks", None))


@contextmanager
def _hooks_off(model: nn.Module):
    """User forward hooks do not run while the model is traced: fx calls a module it traces through via
    nn.Module.__call__, so its hooks would see Proxies (a hook logging outputs would log a Proxy, one calling
    .numpy() would make the model untraceable and every shared module one site)."""
    saved = []
    for m in model.modules():
        for table in _FORWARD_TABLES:
            d = getattr(m, table, None)
            if d:
                saved.append((m, table, d))
                setattr(m, table, type(d)())
    try:
        yield
    finally:
        for m, table, d in saved:
            setattr(m, table, d)


class _GraphModule(torch.fx.GraphModule):
    """torch.fx.GraphModule that keeps its own forward / backward hooks through copy.deepcopy: torch's
    __deepcopy__ rebuilds the module and keeps only its state-dict hooks, and the training loop deep-copies
    the model every round (a hook on a re-traced BasicBlock fired on linearize's result, not on the loop's)."""

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        for table in _HOOK_TABLES:
            if table in self.__dict__:
                setattr(res, table, copy.deepcopy(self.__dict__[table], memo))
        if "_is_full_backward_hook" in self.__dict__:
            res._is_full_backward_hook = self._is_full_backward_hook
        return res


def _trace(model, through=None):
    """model traced to a GraphModule (or the exception). through: the call paths an edit collapses (see
    _Tracer); the GraphModule then takes over the model's own hooks, and a hooked module that has to be
    traced through (an edited site inside it) is one CollapseError, not hooks silently dropped."""
    try:
        with _hooks_off(model):
            graph = _Tracer(through).trace(model)
            gm = _GraphModule(model, graph, type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not traceable"
        return exc
    if through is not None:
        mods = dict(model.named_modules(remove_duplicate=False))
        inside = sorted({q for p in through for q in mods if q and p.startswith(q + ".") and _hooked(mods[q])})
        if inside:
            raise CollapseError(f"collapsing one call of {sorted(through)[0]} traces {inside[0]!r} into a graph, and "
                                f"{inside[0]!r} has hooks that would no longer fire; remove its hooks, or collapse "
                                "every call of the module (its bare path)")
        for table in _HOOK_TABLES:   # the model's own hooks (the same dicts: the user's handles still work)
            if hasattr(model, table):
                setattr(gm, table, getattr(model, table))
        gm._is_full_backward_hook = getattr(model, "_is_full_backward_hook", None)
    return gm


def find_sites(model: nn.Module) -> list[Site]:
    """Collapsible activation call sites, in call order (torch.fx), or per module when untraceable."""
    gm = _trace(model)
    mods = dict(model.named_modules(remove_duplicate=False))   # call paths include aliases
    if isinstance(gm, Exception):
        out = []
        for path, m in mods.items():
            k = module_kind(m) if path else None
            if k and is_collapsible(k[0]):
                out.append(Site(path, path, 0, 1, k[0], k[1], getattr(m, "_origin_key", None)))
        return out
    from ..fx.graph import find_activations

    # the loop swaps modules: sites are activation modules (keys as every front end gives them)
    acts = [a for a in find_activations(gm) if a.node.op == "call_module"]
    calls = Counter(a.path for a in acts)
    seen: Counter = Counter()
    out = []
    for a in acts:
        out.append(Site(a.site, a.path, seen[a.path], calls[a.path], a.kind, a.params,
                        getattr(mods.get(a.path), "_origin_key", None)))
        seen[a.path] += 1
    return out


def functional_sites(model: nn.Module) -> list[str]:
    """Keys of the collapsible activations the loop cannot swap: function calls (F.relu(x), x.relu(),
    x * torch.sigmoid(x)) rather than modules. The ONNX and torch.fx front ends collapse them; the loop
    only swaps modules, so it must say that these stay."""
    gm = _trace(model)
    if isinstance(gm, Exception):
        return []
    from ..fx.graph import find_activations

    from ..core.selection import display_key

    return [display_key(a) for a in find_activations(gm) if a.node.op != "call_module"]


class OriginalKeys:
    """Sites named by their key in the model the loop started from. Once one call of a shared module is
    collapsed, the model's own keys renumber (`layer4.1.relu:1` becomes `layer4.1.relu`, which names both
    calls in the original); history, rollbacks and the result speak in original keys."""

    def __init__(self, sites: list[Site]):
        self.calls = {s.path: s.calls for s in sites}
        self.gone: dict[str, set] = {}

    def _call(self, site: Site) -> int:
        left = [c for c in range(self.calls.get(site.path, site.calls)) if c not in self.gone.get(site.path, ())]
        return left[site.call] if site.call < len(left) else site.call

    def of(self, site: Site) -> str:
        if site.origin:   # a call of a shared module given a module of its own (per-call PReLU)
            return site.origin
        return site_key(site.path, self._call(site), self.calls.get(site.path, site.calls))

    def collapsed(self, *sites: Site) -> None:
        """Mark sites of the current model collapsed (several at once: numbered before any is marked)."""
        calls = [(s.path, self._call(s)) for s in sites]
        for path, call in calls:
            self.gone.setdefault(path, set()).add(call)


def resolve(sites: list[Site], keys) -> list[Site]:
    """Sites named by keys: `path:i` one site, a bare path every site of that module."""
    by_key = {s.key: s for s in sites}
    out: dict[str, Site] = {}
    for key in keys:
        if key in by_key:
            out[key] = by_key[key]
            continue
        hit = [s for s in sites if s.path == key]
        if not hit:
            raise CollapseError(f"no collapsible activation site {key!r}; sites: "
                                f"{', '.join(s.key for s in sites[:8])}{', ...' if len(sites) > 8 else ''}")
        out.update({s.key: s for s in hit})
    return list(out.values())


def _set_module(model: nn.Module, path: str, new: nn.Module, keep=()) -> None:
    """Put `new` at `path`, and in every other slot holding the same module object except the paths in
    `keep`. One module object registered at several paths is keyed by call path (fx/call_path.py): an
    nn.ReLU shared by blocks b1 and b2 is two sites, b1.2 and b2.2 (keep names the paths that are sites of
    their own); an alias no call is keyed by (a second attribute name of the same parent) is called under
    `path`'s key, so it is replaced with it."""
    old = model.get_submodule(path)
    slots = [q for q, m in model.named_modules(remove_duplicate=False) if m is old and (q == path or q not in keep)]
    for q in slots:
        head, _, name = q.rpartition(".")
        setattr(model.get_submodule(head) if head else model, name, new)



def share_hooks(new: nn.Module, old: nn.Module | None) -> nn.Module:
    """`new` (replacing `old`) takes old's hook tables, the same dict objects, so the user's hooks fire on
    it and a handle the user holds still removes the hook."""
    if old is not None:
        for table in _HOOK_TABLES:
            if hasattr(old, table):
                setattr(new, table, getattr(old, table))
        new._is_full_backward_hook = getattr(old, "_is_full_backward_hook", None)
    return new


def _regime(site: Site, old: nn.Module | None = None) -> LinearRegime:
    """The LinearRegime of `site`, with old's hooks (share_hooks)."""
    scale, shift = linear_regime(site.kind, site.params)
    return share_hooks(LinearRegime(scale, shift, site.key), old)


def linearize(model: nn.Module, keys) -> nn.Module:
    """Replace the named sites by their linear regime, in place when possible (else a GraphModule). keys: a
    list, or one string of comma-separated keys (as collapse(collapse="k1,k2"); iterated, a string would
    be read letter by letter)."""
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    sites = find_sites(model)
    chosen = resolve(sites, keys)
    whole = {s.path for s in chosen if all(t.key in {c.key for c in chosen} for t in sites if t.path == s.path)}
    for s in chosen:
        if s.path in whole:
            _set_module(model, s.path, _regime(s, model.get_submodule(s.path)), keep={t.path for t in sites})
    return replace_calls(model, [s for s in chosen if s.path not in whole])


def replace_calls(model: nn.Module, sites: list, make: Callable | None = None, name: str = "collapsed_",
                  whole_model: bool = True) -> nn.Module:
    """Give call sites of shared modules a module of their own, make(site, old module) (default: its
    LinearRegime): the module issuing the calls is re-traced and put back as a GraphModule (_in_parent),
    else the whole model is traced and the GraphModule returned (whole_model=False: those sites are left
    as they are). Returns the model (the same object unless the whole model was traced)."""
    by_parent: dict[str, list] = {}
    for s in sites:
        by_parent.setdefault(s.path.rpartition(".")[0], []).append(s)
    partial = [s for parent, group in by_parent.items() if not _linearize_in_parent(model, parent, group, make, name)
               for s in group]
    if not partial or not whole_model:
        return model
    gm = _trace(model, through={s.path for s in partial})
    if isinstance(gm, Exception):
        raise CollapseError(f"collapsing one call site of a shared module ({partial[0].key}) needs torch.fx, and the "
                            f"model does not trace ({str(gm).splitlines()[0][:120]}); collapse the bare path instead")
    _edit_calls(gm, {(s.path, s.call): s for s in partial}, make=make, name=name)
    return gm


def _edit_calls(gm: torch.fx.GraphModule, want: dict, prefix: str = "", make: Callable | None = None,
                name: str = "collapsed_") -> None:
    """Point the call_module nodes of `want` {(path, call index): Site} at modules of their own, make(site,
    old module) (default: LinearRegime), attributes named `name` + key (targets in gm are relative to
    `prefix`)."""
    make = make or _regime
    prefix_name = name
    seen: dict[str, int] = {}
    for n in list(gm.graph.nodes):
        if n.op != "call_module":
            continue
        i = seen.get(n.target, 0)
        seen[n.target] = i + 1
        s = want.get((prefix + n.target, i))
        if s is None:
            continue
        base = prefix_name + (s.key.rpartition(".")[2] if prefix else s.key).replace(".", "_").replace(":", "_")
        name = fresh_name(base, AttributeNames(gm))   # keys renumber after a collapse: relu:1 can come twice
        gm.add_submodule(name, make(s, gm.get_submodule(n.target)))
        n.target = name
    gm.graph.lint()
    gm.recompile()


def _linearize_in_parent(model: nn.Module, parent: str, sites: list, make: Callable | None = None,
                         name: str = "collapsed_") -> bool:
    """Collapse call sites of a shared module by re-tracing only the module that issues its calls
    (BasicBlock for BasicBlock.relu) and putting that GraphModule at its path, so the model keeps its
    class and every other submodule (forward hooks on blocks, the LaCoOT term, remove_blocks). Done only
    when that module issues every call of the shared module (its local call count equals the model's,
    so it runs once and the call indices agree); False otherwise (the caller traces the whole model)."""
    if not parent:
        return False
    try:
        owner = model.get_submodule(parent)
    except AttributeError:
        return False
    rel = {s.path: s.path[len(parent) + 1:] for s in sites}
    gm = _trace(owner, through=set(rel.values()))
    if isinstance(gm, Exception):
        return False
    if any(_calls(gm, rel[s.path]) != s.calls for s in sites):
        return False
    _edit_calls(gm, {(s.path, s.call): s for s in sites}, prefix=parent + ".", make=make, name=name)
    _set_module(model, parent, gm)
    return True


# ------------------------------------------------------------------------------------ padding

_PASS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, LinearRegime, nn.Identity)


def _single_user(node) -> bool:
    return len(node.users) == 1


def conv_chains(model: nn.Module) -> list[list[str]]:
    """Chains conv_0 -> (BN | collapsed)* -> conv_1 -> ... of nn.Conv2d module paths whose every link
    holds a collapsed site (LinearRegime), single users, each conv called once, zero padding."""
    gm = _trace(model)
    if isinstance(gm, Exception):
        return []
    mods = dict(model.named_modules(remove_duplicate=False))   # call paths include aliases
    prev: dict[str, str] = {}
    for n in gm.graph.nodes:
        conv2 = mods.get(n.target) if n.op == "call_module" else None
        if not isinstance(conv2, nn.Conv2d) or not n.args or not isinstance(n.args[0], torch.fx.Node):
            continue
        cur, through = n.args[0], False
        while (cur.op == "call_module" and isinstance(mods.get(cur.target), _PASS) and _single_user(cur)
               and cur.args and isinstance(cur.args[0], torch.fx.Node)):
            through |= isinstance(mods[cur.target], LinearRegime)
            cur = cur.args[0]
        conv1 = mods.get(cur.target) if cur.op == "call_module" else None
        if not through or not isinstance(conv1, nn.Conv2d) or not _single_user(cur):
            continue
        if not _movable(conv1, conv2) or _calls(gm, cur.target) != 1 or _calls(gm, n.target) != 1:
            continue
        prev[n.target] = cur.target
    firsts = [c for c in prev.values() if c not in prev]
    nxt = {b: a for a, b in prev.items()}
    chains = []
    for c in dict.fromkeys(firsts):
        chain = [c]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        chains.append(chain)
    return chains


def relocated_pads(convs: list) -> list[tuple]:
    """Paddings of a conv chain with all of it moved to the first conv (conv_k's pad p becomes
    p x stride(conv_{k-1}) on conv_{k-1}'s input, applied back to front)."""
    pads = [list(_pads(c)) for c in convs]
    for k in range(len(convs) - 1, 0, -1):
        pads[k - 1] = [a + b * s for a, b, s in zip(pads[k - 1], pads[k], convs[k - 1].stride)]
        pads[k] = [0] * len(pads[k])
    return [tuple(p) for p in pads]


def relocate_padding(model: nn.Module, accept: Callable | None = None) -> int:
    """Move the padding of every chain conv_0 -> (BN | collapsed)* -> conv_1 ... (see conv_chains) to its
    first conv, so that the later merge is exact. accept(paths, convs, new_pads) -> bool decides per chain
    (the training loop asks the merge planner whether the relocated chain will merge; relocating a chain
    that then stays unmerged only enlarges its first conv). Returns the number of convs whose padding moved.

    Changes the function on the border only; the caller fine-tunes afterwards."""
    mods = dict(model.named_modules(remove_duplicate=False))   # call paths include aliases
    moves = 0
    for chain in conv_chains(model):
        convs = [mods[p] for p in chain]
        new = relocated_pads(convs)
        if new == [_pads(c) for c in convs]:
            continue
        if accept is not None and not accept(chain, convs, new):
            continue
        for c, p in zip(convs, new):
            c.padding = p
        moves += len(convs) - 1
    return moves


def _pads(conv) -> tuple:
    return tuple(conv.padding) if isinstance(conv.padding, tuple) else ()


def _movable(conv1, conv2) -> bool:
    return (isinstance(conv1.padding, tuple) and isinstance(conv2.padding, tuple)
            and conv1.padding_mode == "zeros" and conv2.padding_mode == "zeros")


def _calls(gm, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target)


def count_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())
