"""A torch graph a pass broke, on example_inputs the input model ran on, is reported as the tool's bug.

Found by the bad-input attack (2026-11-29): the shape run after the passes raised "the model does not run on
example_inputs ... pass inputs the model accepts", blaming the user's inputs for a graph collapse_passes made.
Now that message is kept for the input model's own run; a later failure raises RuntimeError with the CLI's
bug-report line (errors.BUG_REPORT) and the failure's traceback chained.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn

from collapse_passes import collapse
from collapse_passes.errors import BUG_REPORT, CollapseError
from collapse_passes.fx.passes import Cleanup


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


@pytest.fixture
def broken_cleanup(monkeypatch):
    """Cleanup (run by every collapse) leaves a graph that cannot run: its output is reshaped to 7 x 11 values."""
    original = Cleanup.call

    def call(self, gm):
        res = original(self, gm)
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            bad = gm.graph.call_function(torch.reshape, (out.args[0], (7, 11)))
        out.args = (bad,)
        gm.recompile()
        return res

    monkeypatch.setattr(Cleanup, "call", call)


def test_a_graph_a_pass_broke_is_a_bug_report_not_the_users_inputs(broken_cleanup):
    with pytest.raises(RuntimeError) as info:
        collapse(_net(), collapse=["1"], example_inputs=(torch.randn(1, 3, 8, 8),))
    assert not isinstance(info.value, CollapseError)
    msg = str(info.value)
    assert BUG_REPORT in msg and "on which the input model ran" in msg and "pass inputs the model accepts" not in msg
    assert info.value.__cause__ is not None   # the failing node's error, for the report


def test_inputs_the_model_itself_cannot_take_still_blame_the_inputs(broken_cleanup):
    with pytest.raises(CollapseError, match="does not run on example_inputs .*pass inputs the model accepts"):
        collapse(_net(), collapse=["1"], example_inputs=(torch.randn(1, 5, 8, 8),))


def test_standalone_pass_outside_collapse_keeps_blaming_the_inputs():
    """A MergeLinearChains in a user's own PassManager runs shapes on the inputs it is given: no input graph ran
    on them first, so a failure there is still the inputs'."""
    from torch import fx

    from collapse_passes.fx.passes import MergeLinearChains

    gm = fx.symbolic_trace(_net())
    with pytest.raises(CollapseError, match="does not run on example_inputs"):
        MergeLinearChains(example_inputs=(torch.randn(1, 5, 8, 8),))(gm)


def test_unbroken_collapse_still_verifies():
    res = collapse(_net(), collapse=["1"], example_inputs=(torch.randn(1, 3, 8, 8),), force=True)
    assert res.report["verification"]["against_requested"]["samples"] >= 1


