"""A scores file whose known fields (method, variant, kind, details, notes: docs/scores.md) hold the wrong type or
value is refused in one line naming the field.

Found by the bad-input attack (2026-11-29): `"kind": 5` (or the typo "blocks") was read as activation scores
and `"details": []` as a file without per-channel statistics, silently; only "scores" was checked.
"""
from __future__ import annotations

import json
import os

import onnx
import pytest

from collapse_passes.core.selection import block_scores_given, read_scores
from collapse_passes.errors import CollapseError
from test_file_safety import cli, small_model

KEY = "/block/relu/Relu"


@pytest.mark.parametrize("field,value", [("kind", 5), ("kind", "blocks"), ("method", ["easier"]), ("variant", 1),
                                         ("details", []), ("details", {KEY: 0.5}), ("notes", "one note")])
def test_a_wrong_field_is_refused_by_the_cli(tmp_path, field, value):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text(json.dumps({"scores": {KEY: 0.1}, field: value}))
    rc, _, err = cli("m.onnx", "--scores", "s.json", "--threshold", "0.5", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and f'"{field}"' in err and "expected" in err, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "s.json"]


def test_remove_blocks_reads_the_kind_checked_too(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"block": 0.1}, "kind": 5}))
    rc, _, err = cli("m.onnx", "--scores", "s.json", "--remove-blocks", "0.5", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and '"kind" is 5' in err, err


def test_library_dicts_are_checked_and_well_formed_files_read():
    with pytest.raises(CollapseError, match='"kind" is 5'):
        read_scores({"scores": {KEY: 0.1}, "kind": 5})
    with pytest.raises(CollapseError, match='"kind" is 5'):
        block_scores_given({"scores": {KEY: 0.1}, "kind": 5})
    good = {"scores": {KEY: 0.1}, "method": "easier", "variant": "empirical", "kind": "activation",
            "details": {KEY: {"p_off": [0.5]}}, "notes": ["n"], "future_field": 3}
    assert read_scores(good) == {KEY: 0.1}
    assert read_scores({"scores": {KEY: 0.1}, "kind": None}) == {KEY: 0.1}   # null reads as absent
    assert block_scores_given({"scores": {"b": 0.2}, "kind": "block"}) == {"b": 0.2}
