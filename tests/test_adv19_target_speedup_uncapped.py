"""--target-speedup without --threshold / --remove went as far down the ranking as the target asked, into
activations that separate their inputs (H36, 2026-11-29: ReLUs scoring 0.94 and HardSwishes 1.0 of EASIER's
1 bit collapsed, the result 1e5 off the input model) with only a note. A warning now says so when what it
took reaches the upper half of the score range."""
from __future__ import annotations

from types import SimpleNamespace

import collapse_passes as cp
from collapse_passes.speedup import uncapped_choice_warning
from conftest import export_quiet
from test_adv13_target_speedup_partners import _net

# a block's act2 ranks 4 places after its act1 and scores in the upper half: a pair taken reaches it
SCORES = {f"{b}.act{k}": 0.1 * b + (0.0 if k == 1 else 1.0) for b in range(1, 5) for k in (1, 2)}


def test_an_uncapped_target_that_takes_high_scores_warns(tmp_path):
    path = export_quiet(_net(), tmp_path / "m.onnx", (1, 3, 16, 16), dynamo=False)
    r = cp.collapse(path, scores=SCORES, target_speedup=1.3)
    taken = [a["key"] for a in r.report["activations"] if a["collapsed"]]
    assert any(k.endswith("act2") for k in taken)
    lines = [w for w in r.report["warnings"] if "with no --threshold / --remove" in w]
    assert len(lines) == 1 and "--threshold T" in lines[0], r.report["warnings"]
    assert f"up to {max(SCORES[k] for k in taken):.3g}" in lines[0]


def test_a_capped_target_does_not_warn(tmp_path):
    path = export_quiet(_net(), tmp_path / "m.onnx", (1, 3, 16, 16), dynamo=False)
    r = cp.collapse(path, scores=SCORES, target_speedup=1.3, threshold=1.25)
    assert not [w for w in r.report["warnings"] if "with no --threshold / --remove" in w], r.report["warnings"]


def test_the_rule_is_scale_free():
    cfg = SimpleNamespace(threshold=None, remove=None, target_speedup=2.0)
    assert uncapped_choice_warning([0.0, 0.1], [0.0, 0.1, 0.9, 1.0], cfg) is None          # lower half only
    assert "2 of the 2" in uncapped_choice_warning([60.0, 90.0], [0.0, 60.0, 90.0, 100.0], cfg)   # any scale
    assert uncapped_choice_warning([0.5], [0.5, 0.5], cfg) is None                          # one score value
    assert uncapped_choice_warning([], [0.0, 1.0], cfg) is None
    assert uncapped_choice_warning([1.0], [0.0, 1.0], SimpleNamespace(threshold=None, remove=3, target_speedup=2)) is None
