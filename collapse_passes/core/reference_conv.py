"""A faster Conv for onnx's reference evaluator (the float64 second look), with the same outputs bit for bit.

onnx's reference Conv (``onnx.reference.ops.op_conv``) builds its im2col matrix by fancy indexing with one full
int64 index array per spatial axis (channels x taps x output positions each: 90 MB for a 5 x 5 depthwise conv of
144 x 56 x 56): about half of the float64 second look's time (EfficientNet-B0 with every activation collapsed
spent 47 of its 66 s in 7 reference runs, 24 s of it in that gather). The columns are a copy of input values, so gathering them through strided windows
(``sliding_window_view``) gives the same matrix; everything after it (the dilated kernel, the padding rules, the
matmul on the same shapes and layout, the bias add, the cast) is onnx's own sequence, so the outputs are identical
(``tests/test_adv18_reference_speed.py`` compares them bitwise against onnx's Conv). Anything unusual (a window
larger than the padded input, negative pads) goes to onnx's own code. Only the im2col is ours: onnx's Conv runs
as it is, with its module's ``im2col`` swapped for this one during the call (under a lock).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from onnx.reference.ops import op_conv

#: onnx's own im2col, for what the strided windows do not cover
_ONNX_IM2COL = op_conv.im2col
_SWAP = threading.Lock()

__all__ = ["Conv", "REFERENCE_OPS", "conv", "im2col"]


def im2col(X, kernel_shape, pads, strides):
    """onnx's ``op_conv.im2col`` (no dilations: the caller dilates the kernel), from strided windows."""
    n = len(kernel_shape)
    m, c = X.shape[:2]
    shape_out = [(X.shape[2 + i] + pads[i] + pads[i + n] - kernel_shape[i]) // strides[i] + 1 for i in range(n)]
    if min(shape_out, default=1) <= 0 or min(pads, default=0) < 0:
        return _ONNX_IM2COL(X, kernel_shape, pads, strides)
    xp = np.pad(X, ((0, 0), (0, 0)) + tuple((pads[i], pads[i + n]) for i in range(n)), mode="constant")
    win = np.lib.stride_tricks.sliding_window_view(xp, tuple(kernel_shape), axis=tuple(range(2, 2 + n)))
    win = win[(slice(None), slice(None)) + tuple(slice(0, o * s, s) for o, s in zip(shape_out, strides))]
    # rows channel-major then kernel position, columns sample-major then output position, written into a fresh
    # C-ordered array as onnx's is (the matmul after it must see the same strides to round the same way)
    cols = np.empty((c * int(np.prod(kernel_shape)), m * int(np.prod(shape_out))), dtype=X.dtype)
    cols.reshape(c, *kernel_shape, m, *shape_out)[...] = win.transpose(
        1, *range(2 + n, 2 + 2 * n), 0, *range(2, 2 + n))
    return cols, tuple(shape_out)


@contextlib.contextmanager
def _strided_im2col():
    """onnx's op_conv module with this im2col in place of its own (its _conv_implementation calls it by name)."""
    with _SWAP:
        saved, op_conv.im2col = op_conv.im2col, im2col
        try:
            yield
        finally:
            op_conv.im2col = saved


def conv(X, W, B, auto_pad, dilations, group, kernel_shape, pads, strides):
    """onnx's ``op_conv._conv_implementation`` with the strided-window im2col."""
    with _strided_im2col():
        return op_conv._conv_implementation(X, W, B, auto_pad, dilations, group, kernel_shape, pads, strides)


class Conv(op_conv.Conv):
    """onnx's reference Conv with the strided-window im2col (named Conv: new_ops replaces by op name)."""

    op_domain = ""

    def _run(self, *args, **kwargs):
        with _strided_im2col():
            return super()._run(*args, **kwargs)


#: ``ReferenceEvaluator(model, new_ops=REFERENCE_OPS)``
REFERENCE_OPS = [Conv]
