"""A second run given the first run's scores file stopped at "unknown layer key 'a1'" with near matches, not
saying a1 had been collapsed by that first run (H36, 2026-11-29). A written ONNX model now lists the keys
collapsed in it (metadata_props COLLAPSED_META, accumulated over runs); a later run skips them with a note."""
from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.core.selection import COLLAPSED_META, collapsed_before
from collapse_passes.errors import CollapseError
from conftest import export_quiet


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(self.a2(self.c2(self.a1(self.c1(x)))))


SCORES = {"a1": 0.0, "a2": 0.9}


@pytest.fixture
def first(tmp_path):
    torch.manual_seed(0)
    path = export_quiet(_Net().eval(), tmp_path / "m.onnx", (1, 3, 16, 16), dynamo=False)
    r = cp.collapse(path, scores=SCORES, threshold=0.5)
    assert [a["key"] for a in r.report["activations"] if a["collapsed"]] == ["a1"]
    out = tmp_path / "o1.onnx"
    r.save(out)
    return path, out


def test_the_written_model_lists_what_was_collapsed_and_a_second_run_skips_it(first, tmp_path):
    path, out = first
    assert "a1" in collapsed_before(onnx.load(out)) and "a2" not in collapsed_before(onnx.load(out))
    assert collapsed_before(onnx.load(path)) == []          # the input is not touched
    r2 = cp.collapse(str(out), scores=SCORES, threshold=1.0)
    assert [a["key"] for a in r2.report["activations"] if a["collapsed"]] == ["a2"]
    assert any("earlier collapse_passes run" in n and "(a1)" in n for n in r2.report["notes"]), r2.report["notes"]
    keys = collapsed_before(r2.model)
    assert {"a1", "a2"} <= set(keys) and keys == sorted(set(keys))   # accumulated, one entry
    assert sum(p.key == COLLAPSED_META for p in r2.model.metadata_props) == 1


def test_collapse_keys_collapsed_before_are_refused_saying_so_and_unknown_keys_as_before(first):
    _, out = first
    with pytest.raises(CollapseError, match="'a1' was collapsed by an earlier collapse_passes run"):
        cp.collapse(str(out), collapse=["a1"])
    with pytest.raises(CollapseError, match="unknown layer key 'a3'"):
        cp.collapse(str(out), collapse=["a3"])


def test_unreadable_metadata_is_ignored(first, tmp_path):
    _, out = first
    m = onnx.load(out)
    for p in m.metadata_props:
        if p.key == COLLAPSED_META:
            p.value = "{not json"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, bad)
    assert collapsed_before(m) == []
    with pytest.raises(CollapseError, match="unknown layer key 'a1'"):
        cp.collapse(str(bad), scores=SCORES, threshold=1.0)


def test_the_cli_writes_and_reads_it(first, tmp_path):
    from test_file_safety import cli

    _, out = first
    (tmp_path / "s.json").write_text(json.dumps({"scores": SCORES}))
    rc, out_text, err = cli(str(out), "--scores", "s.json", "--threshold", "1", "-o", "o2.onnx", cwd=tmp_path)
    assert rc == 0 and "skipped (a1)" in " ".join((out_text + err).split()), (out_text, err)
    assert {"a1", "a2"} <= set(collapsed_before(onnx.load(tmp_path / "o2.onnx")))
