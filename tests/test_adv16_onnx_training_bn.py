"""An export in training mode without Dropout (TrainingMode.TRAINING): its BatchNormalization nodes normalize with
the batch's statistics. The run is deterministic and verified honestly, but no BatchNorm folds, and it said
nothing; the warning names the cause and the way out (model.eval())."""
from __future__ import annotations

import onnx
import torch

import collapse_passes as cp


def test_training_mode_batchnorm_is_warned_and_not_folded(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 1)).train()
    path = str(tmp_path / "bn_train.onnx")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 8, 8),), path, dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)
    r = cp.collapse(path)
    assert r.passed
    assert any("BatchNormalization node(s) in training mode" in w and "model.eval()" in w for w in r.report["warnings"])
    assert any(n.op_type == "BatchNormalization" for n in r.model.graph.node)   # not folded: batch statistics
    # an eval export says nothing of the kind
    eval_path = str(tmp_path / "bn_eval.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(2, 3, 8, 8),), eval_path, dynamo=False)
    assert not any("training mode" in w for w in cp.collapse(eval_path).report["warnings"])
