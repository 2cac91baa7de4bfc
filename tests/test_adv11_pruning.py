"""Adversarial pruning checks (H3, 2026-11-28): per-channel importance scores of the wrong length.

A scores list shorter than the tensor's channel count used to leave the channels past its end unranked
(+inf, kept), so `--prune-ratio 0.5` removed 1 of 16 channels without a word; a longer one was cut.
Both are bad input now: one line, exit 2, nothing written (ONNX CLI), a CollapseError (torch front end).
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError
from conftest import export_quiet


class _Tiny(nn.Module):
    """conv(3->16)-relu -> conv(16->8)-relu -> mean -> linear: the 16-channel group is prunable."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.r2 = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.r2(self.c2(self.r1(self.c1(x)))).mean((2, 3)))


def _relu_output(path) -> str:
    import onnx

    return next(n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Relu")


@pytest.mark.parametrize("length", [3, 20])
def test_cli_scores_of_wrong_length_are_one_line_exit_2_nothing_written(tmp_path, capsys, length):
    torch.manual_seed(0)
    path = export_quiet(_Tiny().eval(), tmp_path / "m.onnx", (1, 3, 8, 8), False)
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({_relu_output(path): [float(i) for i in range(length)]}))
    out = tmp_path / "out.onnx"
    rc = main([str(path), "-o", str(out), "--prune-ratio", "0.5", "--prune-importance", str(scores)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and f"{length} value(s)" in err and "16 channels" in err, err
    assert not out.exists()


def test_cli_scores_of_right_length_still_prune_to_the_ratio(tmp_path, capsys):
    torch.manual_seed(0)
    path = export_quiet(_Tiny().eval(), tmp_path / "m.onnx", (1, 3, 8, 8), False)
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({_relu_output(path): [float(i) for i in range(16)]}))
    out = tmp_path / "out.onnx"
    rep = tmp_path / "r.json"
    assert main([str(path), "-o", str(out), "--report", str(rep), "--prune-ratio", "0.5",
                 "--prune-importance", str(scores)]) == 0
    rows = json.loads(rep.read_text())["pruning"]["ratio"]["groups"]
    assert [(r["channels_before"], r["channels_after"]) for r in rows] == [(16, 8)]


def test_torch_scores_of_wrong_length_are_a_collapse_error():
    torch.manual_seed(0)
    m = _Tiny().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError, match=r"3 value\(s\), the tensor has 16 channels"):
        cp.collapse(m, example_inputs=(x,), prune_ratio=0.5, prune_importance={"r1": [1.0, 2.0, 3.0]})


def test_torch_prune_max_error_refusal_names_its_reason_and_force_writes():
    """collapse(nn.Module, prune_max_error=E) used to raise 'verification failed: output differs from the
    requested semantics (max abs 8e-09 ...)': the gate had passed, the real reason was only in a warning
    the exception hid. It now says what the ONNX path says, and force=True returns a result marked failed."""
    torch.manual_seed(0)
    m = _Tiny().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError, match=r"ratio pruning error .* exceeds prune_max_error 1e-09") as exc:
        cp.collapse(m, example_inputs=(x,), prune_ratio=0.5, prune_max_error=1e-9)
    assert "differs from the requested semantics" not in str(exc.value)
    res = cp.collapse(m, example_inputs=(x,), prune_ratio=0.5, prune_max_error=1e-9, force=True)
    assert not res.passed and not res.report["passed"] and res.report["pruning"]["refused"]
    ok = cp.collapse(m, example_inputs=(x,), prune_ratio=0.5, prune_max_error=1e9)
    assert ok.passed and "refused" not in ok.report["pruning"]


def test_torch_ratio_prune_warns_with_its_error_and_when_it_removes_nothing():
    torch.manual_seed(0)
    m = _Tiny().eval()
    x = torch.randn(1, 3, 8, 8)
    res = cp.collapse(m, example_inputs=(x,), prune_ratio=0.5)
    err = res.report["pruning"]["ratio"]["error_vs_unpruned"]["max_abs"]
    assert err > 0 and any(w.startswith("prune ratio 0.5: approximate") for w in res.report["warnings"])
    none = cp.collapse(m, example_inputs=(x,), prune_ratio=0.01)   # floor(0.01 * 16) = 0 channels
    assert none.report["pruning"]["ratio"]["removed_channels"] == 0
    assert any("removed no channel" in w for w in none.report["warnings"])


@pytest.mark.parametrize("scores, msg", [({"nonexistent": [1.0] * 16}, "names no node or module"),
                                         ({"r1": [float("nan")] * 16}, "finite numbers"),
                                         ({"r1": ["a"] * 16}, "finite numbers")])
def test_torch_scores_naming_nothing_or_not_finite_are_a_collapse_error(scores, msg):
    """Both used to leave every channel unranked: the ratio prune removed nothing, without a word."""
    torch.manual_seed(0)
    with pytest.raises(CollapseError, match=msg):
        cp.collapse(_Tiny().eval(), example_inputs=(torch.randn(1, 3, 8, 8),), prune_ratio=0.5,
                    prune_importance=scores)


def test_torch_scores_keyed_by_a_nested_module_path_rank_its_channels():
    """`body.1` (a module path, as the report and the docs name layers) is the fx node `body_1`."""
    torch.manual_seed(0)
    m = nn.Sequential()
    m.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
    m.pool = nn.AdaptiveAvgPool2d(1)
    m.eval()
    x = torch.randn(1, 3, 8, 8)
    keep_high = [float(i) for i in range(16)]   # channels 0..7 rank lowest
    res = cp.collapse(m, example_inputs=(x,), prune_ratio=0.5, prune_importance={"body.1": keep_high})
    assert res.report["pruning"]["ratio"]["removed_channels"] == 8
    conv = res.model.get_submodule("body.0") if hasattr(res.model, "get_submodule") else None
    assert conv is None or conv.out_channels == 8


def test_cli_forced_refused_ratio_prune_says_why_it_was_flagged(tmp_path, capsys):
    """The model written with --force after a --prune-max-error refusal was flagged 'verification failed',
    though the gate passed; the line now names the prune error bound."""
    torch.manual_seed(0)
    path = export_quiet(_Tiny().eval(), tmp_path / "m.onnx", (1, 3, 8, 8), False)
    out = tmp_path / "out.onnx"
    assert main([str(path), "-o", str(out), "--prune-ratio", "0.5", "--prune-max-error", "1e-9", "--force"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert out.exists() and "ratio pruning error over --prune-max-error, written because of --force" in text, text
    assert "verification failed, written" not in text
