"""Site keys survive a second run on the written model (onnx.keys SITE_META): a key the first run's
report lists as left names the same activation on the result, on both torch exporters; `path:0` names
the one call of a module called once."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapse_passes import api
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError
from conftest import export_quiet

EXPORTERS = pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])


class Triple(nn.Module):
    """One ReLU module called three times."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(4, 4, 1) for _ in range(4))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.c4(self.act(self.c3(self.act(self.c2(self.act(self.c1(x)))))))


class Single(nn.Module):
    """A module called once, a lone functional SiLU and two functional ReLUs in the root forward."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(4, 4, 1) for _ in range(4))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.c4(F.relu(self.c3(F.relu(self.c2(F.silu(self.c1(self.act(x))))))))


def _triple():
    torch.manual_seed(0)
    return Triple().eval()


def _reference(model, calls: set[int], x: np.ndarray) -> np.ndarray:
    """The torch model with the given calls of `act` replaced by the identity."""
    seen = []

    def hook(mod, inp, out):
        seen.append(len(seen))
        return inp[0] if seen[-1] in calls else out

    h = model.act.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    finally:
        h.remove()


def _run(path: str, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _nodes_by_key(model) -> dict[str, list[str]]:
    return {r["key"]: r["nodes"] for r in api.list_keys(model)}


@EXPORTERS
def test_second_run_collapses_the_call_the_first_report_named(tmp_path, dynamo):
    model = _triple()
    src = export_quiet(model, tmp_path / "t.onnx", (1, 4, 6, 6), dynamo)
    first = api.collapse(src, collapse=["act:0"])
    assert [a["key"] for a in first.report["activations"] if not a["collapsed"]] == ["act:1", "act:2"]
    out1 = str(first.save(tmp_path / "t1.onnx"))
    # the result keys its two calls as the report did, with the original's nodes
    orig = _nodes_by_key(src)
    assert _nodes_by_key(out1) == {k: orig[k] for k in ("act:1", "act:2")}
    with pytest.raises(CollapseError, match="act:1, act:2"):
        api.collapse(out1, collapse=["act:0"])   # collapsed already: no longer a call site
    second = api.collapse(out1, collapse=["act:1"])
    assert [a["key"] for a in second.report["activations"] if not a["collapsed"]] == ["act:2"]
    out2 = str(second.save(tmp_path / "t2.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    got = _run(out2, x)
    np.testing.assert_allclose(got, _reference(model, {0, 1}, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, _reference(model, {0, 2}, x), rtol=1e-4, atol=1e-5)
    # a third run still sees the original's key
    assert _nodes_by_key(out2) == {"act:2": orig["act:2"]}
    assert _nodes_by_key(str(api.collapse(out2).save(tmp_path / "t3.onnx"))) == {"act:2": orig["act:2"]}


@EXPORTERS
def test_resnet_report_keys_left_select_the_same_sites_on_the_result(tmp_path, dynamo):
    from models import build

    torch.manual_seed(0)
    src = export_quiet(build("resnet18_tv", width=8, num_classes=10).eval(), tmp_path / "r.onnx", (1, 3, 32, 32),
                       dynamo)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main([src, "-o", str(out), "--collapse", "layer1.0.relu:0", "--report", str(rep), "-q"]) == 0
    left = [a["key"] for a in json.loads(rep.read_text())["activations"] if not a["collapsed"]]
    assert "layer1.0.relu:1" in left and len(left) == 16
    orig = _nodes_by_key(src)
    assert _nodes_by_key(str(out)) == {k: orig[k] for k in left}
    assert main([str(out), "--collapse", "layer1.0.relu:1", "--dry-run", "-q"]) == 0


@EXPORTERS
def test_colon_zero_names_the_one_call_of_a_module_or_root_function(tmp_path, dynamo):
    torch.manual_seed(0)
    src = export_quiet(Single().eval(), tmp_path / "s.onnx", (1, 4, 6, 6), dynamo)
    keys = [r["key"] for r in api.list_keys(src)]
    assert keys[0] == "act" and "act:0" not in keys   # the listed keys of a fresh export are unchanged
    for alias, key in (("act:0", "act"), ("silu():0", "silu()")):
        via_alias = api.collapse(src, collapse=[alias]).report["activations"]
        direct = api.collapse(src, collapse=[key]).report["activations"]
        assert [a["collapsed"] for a in via_alias] == [a["collapsed"] for a in direct]
        assert sum(a["collapsed"] for a in via_alias) == 1
    with pytest.raises(CollapseError, match="called 1 time"):
        api.collapse(src, collapse=["act:1"])
    # still true on a result; root-level keys keep their numbers too
    second_relu = next(r for r in api.list_keys(src) if "relu():1" in r["keys"])
    out = str(api.collapse(src, collapse=["silu()", "relu():0"]).save(tmp_path / "s1.onnx"))
    assert api.list_keys(out) == [next(r for r in api.list_keys(src) if r["key"] == "act"), second_relu]
    assert sum(a["collapsed"] for a in api.collapse(out, collapse=["act:0"]).report["activations"]) == 1
    with pytest.raises(CollapseError):
        api.collapse(out, collapse=["relu():0"])
