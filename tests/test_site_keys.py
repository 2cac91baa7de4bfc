"""Per-call-site keys: a module called twice (torchvision's BasicBlock `self.relu`) gets one key per
call, `path:0` / `path:1`, in scores, reports and saved scores, on both exporters and the torch hooks."""
import json

import numpy as np
import pytest
import torch

from collapse_passes import api
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError
from collapse_passes.scores import compute_scores
from collapse_passes.scores.torch_hooks import module_scores
from conftest import export_quiet, randomize_bn

DEAD, LIVE = "layer1.0.relu:0", "layer1.0.relu:1"


def planted_model():
    """torchvision-layout ResNet-18 (tiny) whose first ReLU call in layer1.0 is always off: its BN
    shifts every channel far below zero; the second call (after the residual add) stays live."""
    from models import build

    torch.manual_seed(0)
    m = randomize_bn(build("resnet18_tv", width=8, num_classes=10).eval())
    bn = m.layer1[0].bn1
    with torch.no_grad():
        bn.bias.fill_(-20.0)
        bn.weight.fill_(0.05)
    return m


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    p = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(p, input=x)
    return p, x


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def onnx_path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    return export_quiet(planted_model(), d / "r18tv.onnx", (1, 3, 32, 32), request.param)


def test_every_activation_has_a_key_naming_it_alone(onnx_path):
    rows = api.list_keys(onnx_path)
    assert len(rows) == 17
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys)
    assert keys[:5] == ["relu", "layer1.0.relu:0", "layer1.0.relu:1", "layer1.1.relu:0", "layer1.1.relu:1"]
    # the bare module path is a secondary key of both sites
    assert [r["module"] for r in rows[1:3]] == ["layer1.0.relu"] * 2
    assert all("layer1.0.relu" in r["keys"] for r in rows[1:3])


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_dead_site_and_live_sibling_get_their_own_scores(onnx_path, calib, method):
    res = compute_scores(method, onnx_path, calib=calib[0])
    assert DEAD in res.scores and LIVE in res.scores and "layer1.0.relu" not in res.scores
    assert res.scores[DEAD] < 1e-6
    assert res.scores[LIVE] > 0.05


def test_saved_scores_fed_back_collapse_only_the_dead_site(onnx_path, calib, tmp_path):
    saved = tmp_path / "s.json"
    assert main([onnx_path, "--method", "easier", "--calib", str(calib[0]), "--save-scores", str(saved),
                 "--dry-run", "-q"]) == 0
    scores = json.loads(saved.read_text())["scores"]
    assert scores[DEAD] < 1e-6 < scores[LIVE] and "layer1.0.relu" not in scores
    rep_path = tmp_path / "r.json"
    assert main([onnx_path, "--scores", str(saved), "--threshold", "1e-6", "-o", str(tmp_path / "o.onnx"),
                 "--report", str(rep_path), "-q"]) == 0
    rep = json.loads(rep_path.read_text())
    collapsed = [a["key"] for a in rep["activations"] if a["collapsed"]]
    assert DEAD in collapsed and LIVE not in collapsed
    assert {a["key"]: a["score"] for a in rep["activations"]}[LIVE] == pytest.approx(scores[LIVE])


def test_bare_module_path_still_selects_every_site_and_says_so(onnx_path):
    res = api.collapse(onnx_path, collapse=["layer1.0.relu"])
    collapsed = [a["key"] for a in res.report["activations"] if a["collapsed"]]
    assert collapsed == [DEAD, LIVE]
    assert any("layer1.0.relu:0, layer1.0.relu:1" in w for w in res.report["warnings"])
    res = api.collapse(onnx_path, scores={"layer1.0.relu": 0.0}, threshold=0.1)
    assert [a["key"] for a in res.report["activations"] if a["collapsed"]] == [DEAD, LIVE]
    assert any("names 2 activations" in n for n in res.report["notes"])


def test_site_key_overrides_the_bare_path(onnx_path):
    res = api.collapse(onnx_path, scores={"layer1.0.relu": 0.9, DEAD: 0.0}, threshold=0.1)
    assert [a["key"] for a in res.report["activations"] if a["collapsed"]] == [DEAD]


def test_unknown_call_index_lists_the_valid_keys(onnx_path, tmp_path, capsys):
    with pytest.raises(CollapseError, match=r"layer1\.0\.relu:0, layer1\.0\.relu:1"):
        api.collapse(onnx_path, collapse=["layer1.0.relu:5"])
    rc = main([onnx_path, "--collapse", "layer1.0.relu:5", "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "layer1.0.relu:1" in err
    assert not (tmp_path / "o.onnx").exists()


def test_torch_hooks_key_sites_like_the_onnx_front_end(onnx_path, calib):
    m = planted_model()
    batches = [torch.from_numpy(calib[1][i:i + 8]) for i in (0, 8)]
    onnx_keys = [r["key"] for r in api.list_keys(onnx_path)]
    for method in ("easier", "tlc"):
        res = module_scores(m, method, batches)
        assert list(res.scores) == onnx_keys, method
        assert res.scores[DEAD] < 1e-6 < res.scores[LIVE]
        assert res.details[LIVE]["module"] == "layer1.0.relu" and res.details[LIVE]["call"] == 1
    # tlc reads the BatchNorm before the first call (data-free part), hooks the call after the add
    tlc = module_scores(m, "tlc", batches)
    assert tlc.details[DEAD]["source"] == "bn" and tlc.details[LIVE]["source"] == "empirical"
    assert tlc.variant == "mixed"
