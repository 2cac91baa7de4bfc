"""A collapsed torch model into Relax, through torch.export and
``tvm.relax.frontend.torch.from_exported_program`` (compile.import_exported_program).

    res = collapse_passes.collapse(model, collapse=[...], example_inputs=(x,))
    mod = relax_from_torch(res, (x,))        # or an nn.Module / GraphModule / ExportedProgram
    exe = tvm_integration.build(mod, "llvm")

The ONNX route (compile.import_onnx) is not needed for torch users: the result's PaddedConv,
nn.ConvNd and nn.Linear export to plain aten ops Relax knows.
"""
from __future__ import annotations

from .errors import TVMError


def relax_from_torch(model, example_inputs=None, **kwargs):
    """IRModule of a CollapseResult's model, an nn.Module, GraphModule or ExportedProgram.

    example_inputs (a tuple of tensors) are needed unless `model` is an ExportedProgram; kwargs go to
    from_exported_program (keep_params_as_input=False by default: weights bound as constants)."""
    import torch

    from .compile import _first_line, import_exported_program

    model = getattr(model, "model", model)   # a CollapseResult
    if not isinstance(model, torch.export.ExportedProgram):
        if not isinstance(model, torch.nn.Module):
            raise TVMError(f"relax_from_torch: expected a torch module or ExportedProgram, got {type(model).__name__}")
        if example_inputs is None:
            raise TVMError("relax_from_torch: pass example_inputs=(tensor, ...) to export the module")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        try:   # ep.module() (what the torch front end returns for Swin-like models) refuses eval():
            model.eval()   # its train/eval behaviour was fixed when it was exported
        except NotImplementedError:
            pass
        from collapse_passes.core.quiet import exporter_silenced

        try:   # silenced: torch.export logs its whole graph at a guard it cannot decide; TVMError says it in one line
            with exporter_silenced():
                model = torch.export.export(model, tuple(example_inputs))
        except Exception as e:  # noqa: BLE001 - an export failure of any kind is the user's model
            raise TVMError(f"torch.export failed: {_first_line(e)}") from None
    try:
        return import_exported_program(model, **kwargs)
    except Exception as e:  # noqa: BLE001 - the call is TVM's importer alone; a float16 Linear failed in it with
        # a TypeError traceback ("Binary operators must have the same datatype": its matmul is made float32)
        raise TVMError(f"TVM's torch importer does not support part of this model: {_first_line(e)}; the ONNX "
                       "route (models/export.export_onnx, then tvm_integration.import_onnx) may take it") from None
