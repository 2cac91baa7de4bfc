"""Resolve user keys (ONNX node names or torch module paths) to activations.

Both torch exporters leave the module path behind, in different places:
- TorchScript exporter (dynamo=False): node names are scope paths, "/layer1/layer1.0/relu1/Relu";
  each segment is either relative ("relu1") or the full dotted path ("layer1.0"). A module
  called a second time gets a numbered scope ("relu_1").
- torch.export-based exporter (default): node metadata "pkg.torch.onnx.name_scopes" holds the list
  of full module paths ['', 'layer1', 'layer1.0', 'layer1.0.relu1', '<fx node>'].

A module called at several places (torchvision's BasicBlock calls `self.relu` twice) has one key per
call site, `path:i` with i the call index in execution order (0-based); its bare path names all sites.
A module called once also answers to `path:0`.

One module object registered at several paths (an nn.ReLU shared by blocks b1 and b2) is named by the path
each call went through in the torch.export-based exporter's metadata (b1.2, b2.2), as in the torch front end
(fx/call_path.py). The TorchScript exporter names a module object by its first path only ("/b2/b1.2/Relu",
read b2.b1.2; a Sequential holding it twice numbers the scope, s.1:0, s.1:1): its file does not say under
which name b2 holds it, so those keys stay as read (README, Keys).

Keys stay put across runs: collapsing `act:0` of a module called three times leaves two calls, which
a fresh numbering would call act:0 and act:1. So the written model carries each remaining activation's
site key in its node metadata (SITE_META, MODULE_META; onnx.driver writes them), and a later run keys
the activation by what is stored there: the report's `act:2` still names the same call on the result.
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict

from ..core.selection import SITE_SEP, display_key, lookup, root_keys, site_key  # noqa: F401  (keys live in core)
from ..core.selection import ROOT_CALL
from .contrib import INLINED_META
from .patterns import Activation


def module_path_from_scope_name(node_name: str) -> str | None:
    """'/layer1/layer1.0/relu1/Relu' -> 'layer1.0.relu1'; None if the name is not a scope path."""
    if not node_name.startswith("/"):
        return None
    segs = [s for s in node_name.split("/") if s]
    if len(segs) < 2:
        return None
    # A segment is the module's path relative to its nearest non-container ancestor (containers,
    # nn.Sequential / nn.ModuleList, do not restart it): "/features/features.1/conv/conv.0/conv.0.2/Clip"
    # is features.1.conv.0.2. Take the shallowest earlier path that makes the segment a descendant.
    path, anchors = "", [""]
    for seg in segs[:-1]:
        for anchor in anchors:
            cand = f"{anchor}.{seg}" if anchor else seg
            if not path or cand.startswith(path + "."):
                path = cand
                break
        else:
            path = f"{path}.{seg}"
        anchors.append(path)
    return path or None


def module_path_from_metadata(meta: dict[str, str]) -> str | None:
    raw = meta.get("pkg.torch.onnx.name_scopes")
    if raw:
        try:
            scopes = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            scopes = None
        if isinstance(scopes, list) and len(scopes) >= 2:
            mods = [s for s in scopes[:-1] if s]
            return mods[-1] if mods else None
    ns = meta.get("namespace")
    if ns:
        # ": __main__.M/layer1: ...Sequential/layer1.0.relu1: torch...ReLU/relu: aten.relu.default"
        parts = [p.split(":")[0].strip() for p in ns.split("/")]
        mods = [p for p in parts[:-1] if p]
        return mods[-1] if mods else None
    return None


_CALL_SUFFIX = re.compile(r"^(.*)_(\d+)$")

#: node metadata keys holding an activation's site key (and its module path) from the first run that keyed it
SITE_META = "collapse_passes.site"
MODULE_META = "collapse_passes.module"


def _stored_site(a: Activation, node_meta: dict) -> tuple[str, str | None] | None:
    """(site key, module path or None for a root-level activation) an earlier run stored on a's nodes."""
    for n in reversed(a.nodes):
        meta = node_meta.get(n.name, {})
        if meta.get(SITE_META):
            return meta[SITE_META], meta.get(MODULE_META) or None
    return None


def site_metadata(activations: list[Activation], node_meta: dict) -> dict[str, dict[str, str]]:
    """Node name -> the metadata that pins its activation's site key on a written model (see the module
    docstring). Resolves the keys of `activations` (their keys are set as resolve_keys sets them)."""
    resolve_keys(activations, node_meta)
    out: dict[str, dict[str, str]] = {}
    for a in activations:
        if a.site:
            meta = {SITE_META: a.site, MODULE_META: a.module_path}
        else:
            root = [k for k in a.keys if ROOT_CALL in k and k not in a.node_names]
            if not root:
                continue
            meta = {SITE_META: root[0], **({NAMED_META: "1"} if a.named else {})}
        for n in a.nodes:
            out[n.name] = meta
    return out


#: node metadata an earlier run wrote on a root-level activation keyed by its node name first (a hand-built model)
NAMED_META = "collapse_passes.named"


def _torch_named(name: str, meta: dict[str, str]) -> bool:
    """Whether a torch exporter named this node: a TorchScript scope name ("/layer1/Relu", "/Relu") or the
    torch.export-based exporter's node metadata ("pkg.torch.onnx.*")."""
    return name.startswith("/") or any(k.startswith("pkg.torch.") for k in meta)


def _root_key_first(a: Activation, node_meta: dict, stored: tuple | None, torch_model: bool) -> bool:
    """Whether a root-level activation's kind():i key comes before its node names (its display key). Yes where a
    torch exporter named its nodes: that key is the same on both exporters and in the torch front end, the node
    names are not. Decided per activation, from its own nodes: one node named "/abs/Relu" in a hand-built model
    made every other activation keyed relu():i instead of by the name its author gave. Nodes written out of a
    local function's body (contrib.INLINED_META) have no name of their own: they follow the rest of the model.
    An earlier run's stored key keeps the order that run used (NAMED_META)."""
    if stored is not None:
        return not any(node_meta.get(n.name, {}).get(NAMED_META) for n in a.nodes)
    metas = [(n.name, node_meta.get(n.name, {})) for n in a.nodes if n.name]
    if any(_torch_named(name, meta) for name, meta in metas):
        return True
    return bool(metas) and all(meta.get(INLINED_META) for _, meta in metas) and torch_model


def resolve_keys(activations: list[Activation], node_meta: dict[str, dict[str, str]]) -> dict:
    """Attach keys to each activation; return the key -> [activations] index.

    Keys, most specific first: the call-site key (the module path, or path:i for the i-th call of a
    module called at several places, in execution order), the bare module path of a shared module
    (it names all its sites), and every node name of the region. node_meta must list the nodes in the
    model's own order (both torch exporters write nodes in execution order): that order numbers the calls.
    A site key stored in the node metadata by an earlier run (SITE_META) is taken as is.
    """
    order = {name: i for i, name in enumerate(node_meta)}
    stored = {id(a): st for a in activations if (st := _stored_site(a, node_meta))}
    paths: dict[int, str] = {}
    scoped: set[int] = set()   # paths read from a TorchScript scope name (the others from exact metadata)
    for a in activations:
        if id(a) in stored:
            if stored[id(a)][1]:
                paths[id(a)] = stored[id(a)][1]
            continue
        path = None
        for n in reversed(a.nodes):
            path = module_path_from_metadata(node_meta.get(n.name, {}))
            if path:
                break
        if not path:
            path = module_path_from_scope_name(a.name)
            if path:
                scoped.add(id(a))
        if path:
            paths[id(a)] = path
    # TorchScript numbers repeated calls: relu, relu_1, relu_2 -> all calls of module "relu". Only its scope
    # names: the torch.export-based exporter's metadata names the module of every call exactly (a second call
    # of `relu` is under 'relu', a module named `relu_1` under 'relu_1'), and a TorchScript scope `relu_1`
    # whose activation is of another kind than `relu`'s is a module of its own, not a call of `relu`.
    kinds: dict[str, set] = defaultdict(set)
    for a in activations:
        if id(a) in paths:
            kinds[paths[id(a)]].add(a.kind)
    renamed = {}
    for a in activations:
        p = paths.get(id(a))
        if p is None or id(a) not in scoped:
            continue
        head, _, last = p.rpartition(".")
        m = _CALL_SUFFIX.match(last)
        base = (f"{head}.{m.group(1)}" if head else m.group(1)) if m else None
        if base is not None and a.kind in kinds.get(base, ()):
            renamed[id(a)] = base
    paths.update(renamed)
    sites: dict[str, list[Activation]] = defaultdict(list)
    for a in activations:
        if id(a) in paths:
            a.module_path = paths[id(a)]
            if id(a) in stored:
                a.site = stored[id(a)][0]
            else:
                sites[paths[id(a)]].append(a)
    for path, group in sites.items():
        group.sort(key=lambda a: min(order.get(n.name, len(order)) for n in a.nodes))
        for i, a in enumerate(group):
            a.site = site_key(path, i, len(group))
    # activations outside any module (F.relu in the root forward): also "relu():i", the key fx gives them
    at_root = root_keys(sorted((a for a in activations if id(a) not in paths and id(a) not in stored),
                               key=lambda a: order.get(a.nodes[-1].name, len(order))))
    for a in activations:
        if id(a) in stored and id(a) not in paths:
            key = stored[id(a)][0]
            bare, sep, call = key.rpartition(SITE_SEP)
            at_root[id(a)] = [key, bare] if sep and call.isdigit() and bare.endswith(ROOT_CALL) else [key]
    torch_model = bool(paths) or any(_torch_named(name, meta) for name, meta in node_meta.items()
                                     if not meta.get(INLINED_META))
    index: dict[str, list[Activation]] = defaultdict(list)
    for a in activations:
        a.keys = []
        if id(a) in paths:
            a.keys.append(a.site)
            if a.site != a.module_path:
                a.keys.append(a.module_path)
        else:
            a.module_path, a.site = None, None
        # in a torch export a root call's kind():i key comes first: it is the display key --save-scores
        # writes, and unlike the node names it is the same on both exporters and in the torch front end.
        # Elsewhere (a hand-built or converted model) the node names are the names its author gave
        names = [n for n in a.node_names if n]
        a.named = not _root_key_first(a, node_meta, stored.get(id(a)), torch_model)
        for k in (names + at_root.get(id(a), []) if a.named else at_root.get(id(a), []) + names):
            if k not in a.keys:
                a.keys.append(k)
        for k in dict.fromkeys(a.keys):
            if a not in index[k]:
                index[k].append(a)
    # `path:0` of a module called once (and `kind():0` of a lone root activation) names its one call
    for a in activations:
        roots = at_root.get(id(a), [])
        if a.site is not None and a.site == a.module_path:
            one = a.site
        elif len(roots) == 1:
            one = roots[0]
        else:
            continue
        if f"{one}{SITE_SEP}0" not in index:
            index[f"{one}{SITE_SEP}0"] = [a]
    # the first key is the one --list-keys, --save-scores and the report print: it must name this activation
    # alone and survive `--collapse K1,K2` and the tab-separated --list-keys (no comma, tab or newline). Node names need not be unique or
    # plain (two nodes named "a", a node named "re,lu" or "relu()", which is also the name of all root relus)
    for a in activations:
        if a.keys and not _own_key(a.keys[0], a, index):
            own = next((k for k in a.keys if _own_key(k, a, index)), None)
            if own is not None:
                a.keys.remove(own)
                a.keys.insert(0, own)
    return dict(index)


def _own_key(key: str, a: Activation, index: dict) -> bool:
    return index.get(key) == [a] and not any(c in key for c in ",\t\n\r\v\f")


def never_collapsed_keys(nodes, node_meta: dict[str, dict[str, str]]) -> dict[str, str]:
    """{key: op} of nonlinear nodes left alone (Tanh, Sigmoid...): their node names and module paths, so a
    key naming one is refused with the reason (core.selection.KeyIndex)."""
    out: dict[str, str] = {}
    for n in nodes:
        path = module_path_from_metadata(node_meta.get(n.name, {})) or module_path_from_scope_name(n.name)
        for k in (n.name, path):
            if k:
                out.setdefault(k, n.op)
    return out
