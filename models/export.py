"""ONNX export helper for the reference models.

``export_onnx(model, path, input_shape, dynamo=False, opset=17)`` puts the
model in eval mode and writes a self-contained ONNX file (weights embedded, no
external data file) with one input ``"input"`` and one output ``"logits"``,
static shapes. The file is written atomically (a temp file beside ``path``,
renamed when complete): an interrupted export leaves ``path`` as it was.

* ``dynamo=False``: TorchScript-based exporter. Node names look like
  ``/layer1/layer1.0/relu1/Relu`` (the scope path of the module that produced
  the node). Note: in eval mode this exporter folds BatchNorm into the
  preceding Conv (its eval peephole), so the graph has no BatchNormalization
  nodes.
* ``dynamo=True``: ``torch.export``-based exporter. Node names look like
  ``node_relu_3`` and each node carries ``metadata_props`` such as
  ``pkg.torch.onnx.name_scopes`` / ``pkg.torch.onnx.class_hierarchy`` /
  ``namespace`` that give the module path (e.g. ``layer1.0.relu1``).
  Opset 18 is the lowest opset this exporter targets natively; a smaller
  requested ``opset`` is raised to 18 (the exporter would otherwise run the
  ONNX version converter, which is slow and lossy for some ops). The effective
  opset is the one recorded in the file.

Node names are left exactly as the exporters write them.
"""

from __future__ import annotations

import ast
import os
import warnings
from typing import Sequence

import torch

__all__ = ["export_onnx", "node_module_path", "DYNAMO_MIN_OPSET"]

#: lowest opset used for the torch.export-based exporter
DYNAMO_MIN_OPSET = 18


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int],
    dynamo: bool = False,
    opset: int = 17,
    **export_kwargs,
) -> str:
    """Export ``model`` (in eval mode) to ``path`` and return ``str(path)``.

    Args:
        model: the module; it is switched to ``eval()`` (and left so). An
            ``ExportedProgram`` (or its ``.module()``) is exported as it was
            exported (the TorchScript exporter gets its ``.module()``).
        path: output ``.onnx`` file; parent folders are created.
        input_shape: full static input shape, e.g. ``(1, 3, 32, 32)``.
        dynamo: use the ``torch.export``-based exporter instead of TorchScript.
        opset: ONNX opset; for ``dynamo=True`` at least
            :data:`DYNAMO_MIN_OPSET` is used.
        **export_kwargs: passed to :func:`torch.onnx.export` unchanged (e.g.
            ``do_constant_folding=False`` for the TorchScript exporter).

    The input is random normal data of ``input_shape`` (float32) on the
    model's device.
    """
    program = model if isinstance(model, torch.export.ExportedProgram) else None
    if program is not None:   # collapse() of an ExportedProgram returns one; the TorchScript exporter takes modules
        model = program.module()
    if not dynamo:
        _refuse_view_writes(model)   # before anything is created
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        model.eval()
    except NotImplementedError:   # ExportedProgram.module(): torch refuses eval()/train(); it computes as exported,
        if not dynamo:            # and TorchScript's exporter must not switch its mode
            export_kwargs.setdefault("training", torch.onnx.TrainingMode.PRESERVE)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.randn(*input_shape, dtype=torch.float32, device=device)
    common = dict(input_names=["input"], output_names=["logits"])
    # staged beside `path` and renamed once complete: an export interrupted (^C, a full disk, an exporter
    # error after it opened the file) left a truncated model at `path`, or replaced the good one there
    from collapse_passes.outputs import atomic_path

    with atomic_path(path) as tmp:
        _export_to(model, program, x, os.fspath(tmp), dynamo, opset, common, export_kwargs)
    return path


def _export_to(model, program, x, path, dynamo, opset, common, export_kwargs) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            export_kwargs.setdefault("verbose", False)
            torch.onnx.export(
                program if program is not None else model,   # a program as it is (its dynamic dims kept)
                (x,),
                path,
                dynamo=True,
                opset_version=max(int(opset), DYNAMO_MIN_OPSET),
                external_data=False,
                **common,
                **export_kwargs,
            )
        else:
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=False,
                opset_version=int(opset),
                **common,
                **export_kwargs,
            )


def view_writes(model) -> list[str]:
    """In-place ops of a torch.fx graph that write through a view (``y[:, 3].mul_(3)``; ``fill_`` of a ``slice``,
    torch.export's spelling of ``mask[:2, :2] = 1``), as ``"node (op of view)"``. The TorchScript exporter drops
    such writes in a GraphModule (the ONNX file computes as if they were not there: torchvision-style Swin-T
    collapsed through its torch.export graph gave a 3e-2 error, silently); the torch.export-based exporter keeps
    them. Views and writes are read as collapse_passes reads them (fx/graph.py, from the aten schemas)."""
    if not isinstance(model, torch.fx.GraphModule):
        return []
    from collapse_passes.fx.graph import aliases_input, mutates

    found = []
    for n in model.graph.nodes:
        v = n.args[0] if n.op in ("call_function", "call_method") and n.args else None
        if not isinstance(v, torch.fx.Node) or v.op == "call_module" or not aliases_input(v) or not mutates(n, v):
            continue
        if isinstance(v.args[0], torch.fx.Node) and mutates(v, v.args[0]):
            continue   # the return of an in-place op (x.relu_().mul_(2)) is its input, not a view
        if _writes_nothing(n):
            continue
        name = lambda t: t if isinstance(t, str) else getattr(t, "__name__", str(t))   # noqa: E731
        found.append(f"{n.name} ({name(n.target)} of {name(v.target)})")
    return found


def _writes_nothing(n) -> bool:
    """An in-place dropout outside training (aten.dropout_(x, p, False): torch.export's spelling of an eval
    nn.Dropout(inplace=True), as in EfficientNet's classifier) or with p = 0 leaves its input as it is, so
    dropping it changes nothing; refusing it refused every ExportedProgram of an EfficientNet."""
    name = getattr(n.target, "__name__", str(n.target)).split(".")[0]
    if name not in ("dropout_", "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_"):
        return False
    p = n.args[1] if len(n.args) > 1 else n.kwargs.get("p")
    train = n.args[2] if len(n.args) > 2 else n.kwargs.get("train")
    return train is False or (isinstance(p, (int, float)) and p == 0)


def _refuse_view_writes(model) -> None:
    found = view_writes(model)
    if found:
        raise ValueError(f"the TorchScript exporter drops in-place writes through views in a "
                         f"torch.fx graph ({', '.join(found[:2])}{' ...' if len(found) > 2 else ''}) and would write a wrong "
                         "ONNX file: export it with dynamo=True")


def node_module_path(node) -> str | None:
    """Torch module path (``"layer1.0.relu1"``) of an exported ``onnx.NodeProto``.

    * torch.export exporter: second-to-last entry of the node's
      ``pkg.torch.onnx.name_scopes`` metadata (``""`` for the root module).
    * TorchScript exporter: parsed from the scope name
      ``/layer1/layer1.0/relu1/Relu``. Components are attribute names, except
      that a child of a container is written ``<parent>.<index>`` (e.g.
      ``layer1.0``, ``shortcut.0``, ``features.3``); the last component is
      the op.

    Returns ``None`` when the node carries neither (e.g. TorchScript
    ``Identity_3`` / ``Constant_7`` nodes outside any module). This is a
    convenience for the reference models; the exported names are not changed.
    """
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(p.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    if not node.name.startswith("/"):
        return None
    comps = node.name.split("/")[1:-1]
    path: list[str] = []
    prev = None
    for c in comps:
        if prev is not None and c.startswith(prev + ".") and c[len(prev) + 1 :].isdigit():
            path.append(c[len(prev) + 1 :])
        else:
            path.append(c)
        prev = c
    return ".".join(path)
