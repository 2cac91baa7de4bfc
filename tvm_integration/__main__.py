"""Standalone entry: ``python -m tvm_integration MODEL.onnx --target cpu [...]``.

Compiles MODEL.onnx (or ``--collapsed C.onnx``, compared with MODEL.onnx) with
TVM, compares latencies with onnxruntime and optionally exports; the same
flags as ``collapse-passes --target``.  Inputs are random (seed 0) with
dynamic dimensions set to 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .cli_hook import add_arguments, run_from_args
from .errors import TVMError

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
       10: np.float16, 11: np.float64}


def random_inputs(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for the graph inputs of ``model`` that are not initializers."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim]
        dtype = _NP.get(tt.elem_type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds


def main(argv=None) -> int:
    import onnx

    p = argparse.ArgumentParser(prog="python -m tvm_integration", description=__doc__.splitlines()[0])
    p.add_argument("model", help="ONNX model (the input model)")
    p.add_argument("--collapsed", default=None, help="collapsed ONNX model (default: MODEL itself)")
    p.add_argument("--output", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--verbose", action="store_true", help="show MetaSchedule progress tables")
    add_arguments(p)
    args = p.parse_args(argv)
    if not args.target:
        p.error("--target is required")
    original = onnx.load(args.model)
    collapsed = onnx.load(args.collapsed) if args.collapsed else original
    if args.output is None:
        args.output = args.collapsed or args.model
    try:
        report = run_from_args(args, original, collapsed, random_inputs(collapsed))
    except TVMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
