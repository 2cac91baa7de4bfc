"""HardSwish(x) = x*relu6(x+3)/6 is 0 for x <= -3, x for x >= 3 and curved (x(x+3)/6) between. The scores took
its kink at 0 like the smooth gates, so a channel whose inputs all lie in [0, 3) scored entropy 0 ("always on",
collapsible) although the activation is far from the identity there (MobileNetV3: the training loop collapsed
such sites first). The catalogue now gives HardSwish a curved band (-3, 3) that counts half on, half off in
EASIER and TLC (BN and empirical), on the ONNX taps and the torch hooks alike."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from collapse_passes.core import activations as A
from collapse_passes.scores import compute_scores
from collapse_passes.scores._common import gaussian_regimes, layer_summary
from collapse_passes.scores.torch_hooks import module_scores
from conftest import export_quiet

C = 4


class _ConvHS(nn.Module):
    """1x1 conv (channel c reads input channel c % 3, times 1.4, plus `shift`) -> HardSwish."""

    def __init__(self, shift: float):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 1)
        self.act = nn.Hardswish()
        with torch.no_grad():
            self.conv.weight.zero_()
            for c in range(C):
                self.conv.weight[c, c % 3] = 1.4
            self.conv.bias.fill_(shift)

    def forward(self, x):
        return self.act(self.conv(x))


def _batches():
    # uniform in [-1, 1]: the HardSwish input is shift + [-1.4, 1.4]
    rng = np.random.default_rng(0)
    return [rng.uniform(-1.0, 1.0, (8, 3, 6, 6)).astype(np.float32) for _ in range(2)]


@pytest.mark.parametrize("shift,high", [(1.5, True), (-1.5, True), (6.0, False), (-6.0, False)])
@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_both_front_ends_score_the_curved_band_uncertain(tmp_path, method, shift, high):
    """inputs in [0.1, 2.9] or [-2.9, -0.1]: curved, 1 bit; >= 4.6 (on) or <= -4.6 (off, output 0): ~0."""
    net = _ConvHS(shift).eval()
    batches = _batches()
    path = export_quiet(net, tmp_path / "hs.onnx", (1, 3, 6, 6), dynamo=False)
    model = onnx.load(path)
    assert any(n.op_type == "HardSwish" for n in model.graph.node)
    onnx_res = compute_scores(method, model, calib={model.graph.input[0].name: np.concatenate(batches)})
    torch_res = module_scores(net, method, calib_batches=[torch.from_numpy(b) for b in batches])
    (o,) = onnx_res.scores.values()
    t = torch_res.scores["act"]
    assert o == pytest.approx(t, abs=1e-4), (onnx_res.details, torch_res.details)
    if high:
        assert o > 0.9, onnx_res.details
    else:
        assert o < 0.05, onnx_res.details
    (d,) = onnx_res.details.values()
    assert d["p_on"] == pytest.approx(torch_res.details["act"]["p_on"], abs=1e-4)
    assert "p_band" in d and d["frac_linear"] == (1.0 if shift == 6.0 else 0.0)
    assert d["frac_dead"] == (1.0 if shift == -6.0 else 0.0)
    if method == "easier" and high:
        assert d["frac_curved"] == 1.0 and d["p_on"] == pytest.approx([0.5] * C)


def _bn_onnx(gamma: float, beta: float) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, C, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, C, 6, 6])
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [C], [v] * C)
             for n, v in (("g", gamma), ("b", beta), ("m", 0.0), ("v", 1.0))]
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["h"], name="bn", epsilon=0.0),
             helper.make_node("HardSwish", ["h"], ["y"], name="act")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


class _BnHS(nn.Module):
    def __init__(self, gamma, beta):
        super().__init__()
        self.bn, self.act = nn.BatchNorm2d(C), nn.Hardswish()
        with torch.no_grad():
            self.bn.weight.fill_(gamma)
            self.bn.bias.fill_(beta)

    def forward(self, x):
        return self.act(self.bn(x))


@pytest.mark.parametrize("gamma,beta,high", [(0.5, 1.5, True), (0.5, -1.5, True), (0.5, 6.0, False),
                                             (0.5, -6.0, False)])
def test_tlc_batchnorm_variant_on_both_front_ends(gamma, beta, high):
    onnx_res = compute_scores("tlc", _bn_onnx(gamma, beta))
    torch_res = module_scores(_BnHS(gamma, beta).eval(), "tlc")
    assert onnx_res.variant == torch_res.variant == "bn"
    (o,) = onnx_res.scores.values()
    assert o == pytest.approx(torch_res.scores["act"], abs=1e-9)
    # N(1.5, 0.25): P(-3 < x < 3) = 0.9987 -> p_on = P(x >= 3) + P(band)/2 ~ 0.5: ~1 bit
    assert (o > 0.95) if high else (o < 0.01), onnx_res.details


def test_catalogue_regimes_of_hardswish_and_hardsigmoid_are_exact():
    kink, band = A.activation_kink("hardswish"), A.band_start("hardswish")
    assert (band, kink, A.upper_bound("hardswish")) == (-3.0, 3.0, None)
    x = np.linspace(-8.0, 8.0, 1601)
    y = A.reference("hardswish", x)
    assert np.all(y[x <= band] == 0.0) and np.allclose(y[x >= kink], x[x >= kink], rtol=0, atol=1e-12)
    mid = (x > band) & (x < kink) & (x != 0.0)     # at 0 both regimes give 0
    assert np.all(y[mid] != 0.0) and np.all(y[mid] != x[mid])   # curved: neither regime
    # HardSigmoid: 0 below, alpha*x + beta between, 1 above -- no band (its regimes are all exact)
    for params in ({"alpha": 1 / 6, "beta": 0.5}, {}, {"alpha": -0.2, "beta": 0.5}):
        lo, hi = A.activation_kink("hardsigmoid", params), A.upper_bound("hardsigmoid", params)
        assert A.band_start("hardsigmoid", params) is None
        a, b = A.linear_regime("hardsigmoid", params)
        y = A.reference("hardsigmoid", x, params)
        inside = (x >= lo) & (x <= hi)
        assert np.allclose(y[inside], a * x[inside] + b, atol=1e-12)
        assert np.all((y[~inside] == 0.0) | (y[~inside] == 1.0))
    # only HardSwish has a band: ELU/CELU/SELU and the gates keep kink 0, straight off -> on
    assert [k for k in A.CATALOGUE if A.band_start(k) is not None] == ["hardswish"]
    for k in ("elu", "celu", "selu", "silu", "gelu", "mish"):
        assert A.activation_kink(k) == 0.0


def test_layer_summary_counts_the_band_half_on_half_off():
    s = layer_summary(np.zeros(3), None, np.array([1.0, 0.5, 0.0]))
    assert s["score"] == pytest.approx((1.0 + 0.8112781244591328 + 0.0) / 3)
    assert s["p_on"] == [0.5, 0.75, 1.0] and s["frac_linear"] == pytest.approx(1 / 3)
    # sigma = 0 is a step: at -3 HardSwish is 0 (off), at 3 it is the identity (on)
    p_off, p_above, p_band = gaussian_regimes(np.array([-3.0, 0.0, 3.0]), np.zeros(3), 3.0, None, -3.0)
    assert p_off.tolist() == [1.0, 0.0, 0.0] and p_band.tolist() == [0.0, 1.0, 0.0] and p_above is None
