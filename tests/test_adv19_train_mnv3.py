"""The training loop on MobileNetV3 (HardSwish, SE blocks with HardSigmoid gates) and the --eval report.

- A HardSwish site whose inputs all sit in the curved band [0, 3) is no longer the loop's first pick
  (with the kink at 0 it scored 0, "always on", and was collapsed to the identity first).
- The --eval latency is timed with one onnxruntime thread: with onnxruntime's default pool the
  batch-1 comparison of a small model timed thread wake-ups on a loaded machine (the same MobileNetV3-Small
  pair measured 0.54x-1.60x in 8 repeats of 50 rounds; 1.08x-1.12x with one thread).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from collapse_passes.train import find_sites, iterative_collapse
from collapse_passes.train.loop import _site_scores


def _mnv3_with_band_site():
    """Tiny MobileNetV3-Small (1 channel, 32 x 32) whose features.4.block.0.2 HardSwish sees inputs in [1.4, 1.6]."""
    from models import build
    from models.tv_init import calibrate_bn

    torch.manual_seed(0)
    m = build("mobilenet_v3_small", num_classes=4, in_channels=1, width_mult=0.25)
    calibrate_bn(m, (16, 1, 32, 32), batches=2)
    bn = m.features[4].block[0][1]
    with torch.no_grad():   # BN output = beta + gamma * normalised input: inside the curved band, above 0
        bn.weight.fill_(0.02)
        bn.bias.fill_(1.5)
    return m.eval()


def test_hardswish_site_in_the_band_is_not_the_loops_first_pick():
    m = _mnv3_with_band_site()
    site = "features.4.block.0.2"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 1, 32, 32, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)
    scores = _site_scores(m, "easier", [x[:32], x[32:64]], find_sites(m))
    assert scores[site] > 0.9, scores[site]            # half on / half off in the band: ~1 bit, not 0
    ranked = sorted(scores, key=scores.get)
    assert ranked.index(site) > len(ranked) // 2
    res = iterative_collapse(m, "easier", (x[:64], y[:64]), (x[64:], y[64:]), max_rounds=1, steps_per_round=1,
                             max_accuracy_drop=1.0, predict=False)
    assert res.history and res.history[0]["key"] != site
    assert site not in res.collapsed


@pytest.mark.parametrize("dynamo", [False, True])
def test_loop_result_on_mnv3_with_se_merges_and_keeps_accuracy(dynamo, tmp_path):
    """SE blocks, HardSigmoid gates and HardSwish through the loop, the export and the exact merge: the merged
    ONNX classifies the held-out inputs as the loop's torch model does."""
    import onnxruntime as ort

    from collapse_passes.api import collapse
    from models.export import export_onnx

    m = _mnv3_with_band_site()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(96, 1, 32, 32, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)
    res = iterative_collapse(m, "easier", (x[:64], y[:64]), (x[64:], y[64:]), max_rounds=2, steps_per_round=1,
                             max_accuracy_drop=1.0, predict=False)
    assert res.collapsed
    p = export_onnx(res.model, tmp_path / "m.onnx", (1, 1, 32, 32), dynamo=dynamo)
    out = collapse(onnx.load(p), check=2)
    assert out.passed
    sess = ort.InferenceSession(out.model.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = x[64:].numpy()
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: xs[i:i + 1]})[0] for i in range(len(xs))])
    with torch.no_grad():
        want = res.model.eval()(x[64:]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


class _TvInvRes(torch.nn.Module):
    """A MobileNetV2 inverted residual in torchvision's layout: each activation sits in a conv-BN-act wrapper
    (Conv2dNormActivation), so the two ReLU6 have different parent modules (blk.0, blk.1)."""

    def __init__(self, c=4, t=4):
        super().__init__()
        from models.mobilenet_tv import ConvBNReLU6

        h = c * t
        self.blk = torch.nn.Sequential(ConvBNReLU6(c, h, kernel=1), ConvBNReLU6(h, h, groups=h),
                                       torch.nn.Conv2d(h, c, 1, bias=False))
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.blk(x)).flatten(1)


def _randomized_bn(m):
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g))
    return m


@pytest.mark.parametrize("group", [False, True])
def test_group_sites_joins_the_activations_of_adjacent_conv_bn_act_wrappers(group):
    """group_sites on torchvision's layout (MobileNetV2 / V3, EfficientNet: Conv2dNormActivation wrappers): the
    two activations of one block are one candidate, as for an activation-per-attribute block. Grouping by
    parent module alone never offered the pair there (each wrapper holds one site)."""
    from collapse_passes.api import collapse
    from models.export import export_onnx

    torch.manual_seed(0)
    net = _randomized_bn(_TvInvRes()).eval()
    x = torch.randn(8, 4, 8, 8)
    y = torch.randint(0, 3, (8,))
    res = iterative_collapse(net, "easier", (x, y), (x, y), fine_tune=lambda m: m, evaluate=lambda m: 1.0,
                             score_batches=1, target_speedup=100.0, group_sites=group)
    if group:
        assert sorted(res.collapsed) == ["blk.0.2", "blk.1.2"] and res.predicted_speedup > 1.0
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = export_onnx(res.model, os.path.join(d, "m.onnx"), (1, 4, 8, 8))
            out = collapse(onnx.load(p), check=2)
        assert sum(n.op_type == "Conv" for n in out.model.graph.node) == 1
    else:
        assert res.collapsed == [] and res.stopped == "no candidate buys a predicted speed-up"


def test_default_fine_tune_leaves_batchnorm_statistics_of_the_training_data():
    """torchvision's MobileNetV3 BNs have momentum 0.01: a round's fine-tuning moved their running statistics
    only part of the way, and the eval-mode accuracy check refused collapses the fine-tuning had absorbed
    (digits MobileNetV3-Small, features.2's two activations: 88.7% stale, 96.7% re-estimated)."""
    from collapse_passes.train import default_fine_tune

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4, momentum=0.01),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(256, 2, 8, 8, generator=g)
    y = torch.randint(0, 3, (256,), generator=g)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    out = default_fine_tune(batches, steps=3, lr=1e-3)(net)
    bn = out[1]
    with torch.no_grad():
        z = out[0](x)
    want_mean = z.mean((0, 2, 3))
    assert not out.training and bn.momentum == 0.01
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(bn.running_var, z.var((0, 2, 3)), rtol=2e-2, atol=1e-3)
    # steps_per_round=0 trains nothing and leaves the statistics alone
    before = bn.running_mean.clone()
    default_fine_tune(batches, steps=0)(out)
    assert torch.equal(bn.running_mean, before)
