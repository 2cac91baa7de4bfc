"""A model whose collapse_passes.collapsed metadata is a JSON array nested past Python's recursion limit
("[[[[...]]]]", a hostile or corrupt file) stopped every run with a RecursionError traceback: json.loads
raises RecursionError, not ValueError. It is unreadable like any other bad value, so it is ignored
(H45, 2026-11-29). Residual blocks --remove-blocks took out, and the activations inside them, were not listed
at all (second test)."""
from __future__ import annotations

import onnx
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.core.selection import COLLAPSED_META, collapsed_before
from conftest import export_quiet

DEEP = "[" * 100_000 + "]" * 100_000


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.a1(self.c1(x)))


def test_deeply_nested_metadata_is_ignored_not_a_traceback(tmp_path):
    torch.manual_seed(0)
    path = export_quiet(_Net().eval(), tmp_path / "m.onnx", (1, 3, 8, 8), dynamo=False)
    m = onnx.load(path)
    entry = m.metadata_props.add()
    entry.key, entry.value = COLLAPSED_META, DEEP
    assert collapsed_before(m) == []
    bad = tmp_path / "deep.onnx"
    onnx.save(m, bad)
    r = cp.collapse(str(bad), collapse=["a1"])
    assert collapsed_before(r.model) == ["/a1/Relu", "a1"]   # the unreadable value replaced by this run's keys


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.b2, self.head = nn.Conv2d(3, 8, 3, padding=1), _Block(), _Block(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.b2(self.b1(self.stem(x))))


def test_blocks_removed_and_their_activations_are_listed_too(tmp_path):
    """--remove-blocks took b1 and its ReLU b1.act out of the model without listing them: a second run given the
    first run's scores stopped at "unknown layer key 'b1.act'" (activation scores) or "'b1' names no residual block"
    (block scores), the symptom the metadata was added for."""
    import json

    torch.manual_seed(0)
    path = export_quiet(_Res().eval(), tmp_path / "r.onnx", (1, 3, 8, 8), dynamo=False)
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps({"scores": {"b1": 0.1, "b2": 0.9}, "kind": "block", "method": "lacoot"}))
    r = cp.collapse(path, scores=str(blocks), remove_blocks=0.5, force=True)
    assert [b["key"] for b in r.report["blocks"] if b["removed"]] == ["b1"]
    assert {"b1", "b1.act"} <= set(collapsed_before(r.model)) and "b2.act" not in collapsed_before(r.model)
    out = tmp_path / "o.onnx"
    r.save(out)
    r2 = cp.collapse(str(out), scores={"b1.act": 0.0, "b2.act": 0.0}, threshold=0.5)
    assert [a["key"] for a in r2.report["activations"] if a["collapsed"]] == ["b2.act"]
    assert any("skipped (b1.act)" in n for n in r2.report["notes"]), r2.report["notes"]
    r3 = cp.collapse(str(out), scores=str(blocks), remove_blocks=0.95, force=True)
    assert [b["key"] for b in r3.report["blocks"] if b["removed"]] == ["b2"]
    assert any("skipped (b1)" in n for n in r3.report["notes"]), r3.report["notes"]
