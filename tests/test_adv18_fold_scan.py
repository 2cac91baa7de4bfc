"""FoldAffine's patterns rescan the graph after every fold; a dense view's params copy its weights (a MatMul's
transposed), and they were read for every MatMul/Gemm on every scan before asking whether its neighbour is an
affine op at all: TorchScript and dynamo Swin-T read MatMul weights ~1,000 times per run (3.3 s of 21 s). The
neighbour's op is now checked first (fold_affine._may_be_affine); the folds made must be exactly the same."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from collapse_passes.onnx import linear_ops
from collapse_passes.onnx.context import OnnxContext
from collapse_passes.onnx.graph import to_graph, to_model
from collapse_passes.onnx.passes import fold_affine
from collapse_passes.onnx.passes.fold_affine import FoldAffine

D = 8


def _model(n_plain=20, tail=("Mul", "Add", "Sub", "Div", "Mul")):
    """n_plain MatMul -> Relu / residual Add blocks, then MatMuls each followed by a per-feature constant op (foldable), a
    Gemm -> BatchNorm, a Conv -> BatchNorm -> Relu, and a GELU written out (its x*0.5 is protected)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    x = "x"
    for i in range(n_plain):   # a Relu after even blocks, a residual Add (of two activations) after odd ones
        nodes += [helper.make_node("MatMul", [x, const(f"w{i}", rng.standard_normal((D, D)))], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", x], [f"r{i}"]) if i % 2 else
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    for j, op in enumerate(tail):
        nodes += [helper.make_node("MatMul", [x, const(f"tw{j}", rng.standard_normal((D, D)))], [f"tm{j}"]),
                  helper.make_node(op, [f"tm{j}", const(f"tc{j}", rng.uniform(0.5, 1.5, D))], [f"ta{j}"])]
        x = f"ta{j}"
    # GELU: x * 0.5 * (1 + erf(x / sqrt 2)), then a MatMul (the 0.5 must stay: fold_protected)
    nodes += [helper.make_node("Div", [x, const("sq2", np.sqrt(2.0))], ["g_d"]),
              helper.make_node("Erf", ["g_d"], ["g_e"]),
              helper.make_node("Add", ["g_e", const("one", 1.0)], ["g_a"]),
              helper.make_node("Mul", [x, "g_a"], ["g_m"]),
              helper.make_node("Mul", ["g_m", const("half", 0.5)], ["g_h"]),
              helper.make_node("MatMul", ["g_h", const("gw", rng.standard_normal((D, D)))], ["g_out"]),
              helper.make_node("Gemm", ["g_out", const("gemm_w", rng.standard_normal((D, D))),
                                        const("gemm_b", rng.standard_normal(D))], ["gm"], transB=1),
              helper.make_node("BatchNormalization", ["gm", const("s", rng.uniform(0.5, 1.5, D)),
                                                      const("b", rng.standard_normal(D)),
                                                      const("mu", rng.standard_normal(D)),
                                                      const("var", rng.uniform(0.5, 1.5, D))], ["bn"]),
              helper.make_node("Reshape", ["bn", const("shp", [1, D, 1, 1], np.int64)], ["img"])]
    nodes += [helper.make_node("Conv", ["img", const("cw", rng.standard_normal((D, D, 1, 1)))], ["cv"]),
              helper.make_node("BatchNormalization", ["cv", const("s2", rng.uniform(0.5, 1.5, D)),
                                                      const("b2", rng.standard_normal(D)),
                                                      const("mu2", rng.standard_normal(D)),
                                                      const("var2", rng.uniform(0.5, 1.5, D))], ["bn2"]),
              helper.make_node("Relu", ["bn2"], ["y"])]
    for n in nodes:
        n.name = n.output[0]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, D, 1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _fold(model):
    ctx = OnnxContext(graph=to_graph(model))
    FoldAffine()(ctx)
    return ctx, to_model(ctx.graph, model)


def _count_params(monkeypatch):
    reads = []
    for cls in (linear_ops.DenseView, linear_ops.ConvView):
        real = cls.params

        def counted(self, real=real):
            reads.append(self.node.name)
            return real.fget(self)
        monkeypatch.setattr(cls, "params", property(counted))
    return reads


def test_weights_are_read_only_where_an_affine_op_is_beside(monkeypatch):
    reads = _count_params(monkeypatch)
    ctx, _ = _fold(_model())
    assert len(ctx.folds) >= 7 and {"ta0", "ta4", "bn", "bn2"} <= {f["node"] for f in ctx.folds}
    # one read per fold (and at most one per linear op beside an affine op it cannot take); the 20 MatMuls
    # beside a Relu or a residual Add need none. Before: every MatMul's weights on every rescan (several hundred)
    assert len(reads) <= len(ctx.folds) + 4, len(reads)


def test_the_same_folds_as_reading_every_view(monkeypatch):
    ctx_fast, fast = _fold(_model())
    monkeypatch.setattr(fold_affine, "_may_be_affine", lambda node, ctx: True)
    ctx_all, every = _fold(_model())
    assert ctx_fast.folds == ctx_all.folds
    assert fast.SerializeToString() == every.SerializeToString()
