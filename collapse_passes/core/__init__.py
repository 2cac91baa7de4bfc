"""Front-end-neutral core: what the ONNX, torch.fx and TVM front ends share.

- activations: the activation catalogue (kind -> linear regime, kink, upper bound, reference
  function, collapsible or not). Pure python/numpy.
- torch_kinds: torch modules / functions / aten ops -> catalogue kinds (imports torch lazily).
- gates: how composite activations (x*sigmoid(x), x*relu6(x+3)/6, ...) are found as one site: region
  growing and probe identification, for the ONNX and fx front ends. Pure numpy.
- runtime: onnxruntime sessions, random inputs, interleaved timing, output comparison (one
  tolerance rule). Imports onnxruntime lazily.
- chains: conv-chain merge planning on algebra/ + planning.py.
- nonlinear_ops: the ops the nonlinear depth counts, ONNX op type -> torch / aten names.
- merge_fallback: a merged result that fails verification keeps the merges that verify (bisection).
- quiet: keeps torch's exporter noise off the terminal.
- reference_conv: onnx's reference Conv with a faster im2col, for verify's float64 look.

Nothing here imports onnx, onnx-graphsurgeon or torch at module level, except reference_conv (onnx's
reference Conv), which only verify imports, inside the function that needs it.
"""
