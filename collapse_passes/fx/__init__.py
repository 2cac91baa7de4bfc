"""torch.fx / torch.export front end: the collapse passes over fx graphs (same algebra and planner as
the ONNX front end). Entry points: collapse_passes.collapse(nn.Module | GraphModule | ExportedProgram,
example_inputs=...), the PassBase passes in fx.passes, and collapse_passes.torch_backend for torch.compile.
torch is imported only here: the ONNX core never needs it."""

