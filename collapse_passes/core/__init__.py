"""Front-end-neutral core: what the ONNX, torch.fx and TVM front ends share.

- activations: the activation catalogue (kind -> linear regime, kink, upper bound, reference
  function, collapsible or not). Pure python/numpy.
- torch_kinds: torch modules / functions / aten ops -> catalogue kinds (imports torch lazily).
- runtime: onnxruntime sessions, random inputs, interleaved timing, output comparison (one
  tolerance rule). Imports onnxruntime lazily.
- chains: conv-chain merge planning on algebra/ + planning.py.

Nothing here imports onnx, onnx-graphsurgeon or torch at module level.
"""
