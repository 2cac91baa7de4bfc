"""Adversarial checks of the torch front end as a pipeline embeds it (H37, 2026-11-29).

The report's MACs of a torch model must count what its ONNX export counts: dense ops whose weights or bias are
computed at run time (Swin V2's qkv F.linear with a bias built per call), convs no pass folds (reflect padding,
transposed) and calls torch.fx keeps whole (torch.fx.wrap-ped functions, as torchvision wraps Swin's window
attention) counted none before: Swin V2-T at 224 reported 2.98 G MACs from the nn.Module, 3.63 G from its
ExportedProgram and 4.92 G from either ONNX export.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


def _window_attention(x, qkv_w, q_bias, v_bias, proj_w):
    """q, k, v from a Linear whose bias is built per call (Swin V2: zeros for k), attention, projection."""
    b, t, c = x.shape
    bias = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    q, k, v = F.linear(x, qkv_w, bias).reshape(b, t, 3, c).unbind(2)
    if t % 2:   # shape arithmetic symbolic tracing cannot do: why such functions are wrapped
        q = q * 1.0
    a = torch.softmax(q @ k.transpose(1, 2), dim=-1)
    return F.linear(a @ v, proj_w)


torch.fx.wrap("_window_attention")


class _Attn(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.randn(c))
        self.v_bias = nn.Parameter(torch.randn(c))
        self.proj = nn.Linear(c, c, bias=False)

    def forward(self, x):
        return _window_attention(x, self.qkv.weight, self.q_bias, self.v_bias, self.proj.weight)


class _Net(nn.Module):
    """stride-2 stem, reflect-padded conv, transposed conv, wrapped attention, MLP with a GELU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.refl = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.down = nn.Conv2d(16, 16, 2, stride=2)
        self.attn = _Attn()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        x = self.down(self.up(torch.relu(self.refl(self.stem(x)))))
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(t)
        return self.fc2(self.act(self.fc1(t)))


def _macs(shape=(1, 3, 16, 16)):
    """Expected MACs of _Net at `shape`, counted by hand."""
    n, _, h, w = shape
    h2, w2 = h // 2, w // 2
    t = h2 * w2
    return n * (h2 * w2 * 16 * 27            # stem
                + h2 * w2 * 16 * 144         # reflect conv
                + h2 * w2 * 16 * 16 * 4      # transposed: each input element x Cout x k
                + h2 * w2 * 16 * 64          # down
                + t * 48 * 16 + t * t * 16 * 2 + t * 16 * 16   # qkv, q@k^T, a@v, proj
                + t * 32 * 16 * 2)           # fc1, fc2


@pytest.mark.parametrize("kind", ["module", "program"])
def test_report_counts_macs_of_every_dense_op(kind):
    torch.manual_seed(0)
    m = _Net().eval()
    x = torch.randn(1, 3, 16, 16)
    model = m if kind == "module" else torch.export.export(m, (x,))
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,) if kind == "module" else None)
    assert res.report["before"]["macs"] == _macs()
    # fc1 and fc2 merged across the collapsed GELU: 16x32 + 32x16 -> 16x16 per token
    assert res.report["after"]["macs"] == _macs() - 64 * (32 * 16 * 2 - 16 * 16)
    kept_whole = [n for n in res.report["notes"] if "keeps whole" in n]
    assert bool(kept_whole) == (kind == "module")   # the traced nn.Module's depth counts the wrapped call as one op
    assert not kept_whole or "_window_attention x1" in kept_whole[0]


def test_report_macs_match_the_onnx_front_end(tmp_path):
    from models.export import export_onnx

    torch.manual_seed(0)
    m = _Net().eval()
    x = torch.randn(1, 3, 16, 16)
    path = export_onnx(m, tmp_path / "net.onnx", (1, 3, 16, 16), dynamo=False)
    onnx_macs = cp.collapse(path).report["before"]["macs"]
    assert cp.collapse(m, example_inputs=(x,)).report["before"]["macs"] == onnx_macs == _macs()


class _TrainBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 1)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(self.act(self.c2(self.act(self.bn(self.c1(x))))))


def test_passes_in_a_pass_manager_leave_the_users_batchnorm_statistics_alone():
    """MergeLinearChains(example_inputs=...) runs the graph for its shapes; on a train-mode BatchNorm (which the
    passes leave unfolded: its output depends on the batch) that run updated the running statistics of the
    user's model (symbolic_trace shares its modules), once per PassManager step."""
    from torch.fx.passes.infra.pass_manager import PassManager

    from collapse_passes.fx.passes import default_passes

    torch.manual_seed(0)
    m = _TrainBN().train()
    x = torch.randn(2, 3, 16, 16)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    out = PassManager(default_passes(["act:1"], example_inputs=(x,)), steps=5)(torch.fx.symbolic_trace(m)).graph_module
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in out.modules())   # left unfolded (train mode)
    ref = _TrainBN().train()
    ref.load_state_dict(state)
    ref.act = nn.Identity()   # act:1 collapsed; act:0 must stay a ReLU
    with torch.no_grad():
        want = ref.c3(ref.c2(torch.relu(ref.bn(ref.c1(x)))))
        torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-5)
