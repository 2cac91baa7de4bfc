"""torch_backend refuses a call input with a 0-sized dim in one line: its compile-time check ran the graph on it and
compared zero elements, reporting "max abs 0" for a check it never made (collapse() refuses such example_inputs:
fx/api._refuse_empty). Found by the small-gaps round (2026-11-29)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from collapse_passes import torch_backend


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def test_empty_call_input_is_refused_by_name():
    torch._dynamo.reset()
    backend = torch_backend(collapse=["1"], inductor=False)
    with pytest.raises(Exception, match=r"CollapseError: torch_backend: the call's input '\w+' has shape \(0, 3\), "
                                        r"no elements.*verify=False"):
        torch.compile(_net(), backend=backend)(torch.randn(0, 3))
    assert backend.reports == []   # nothing was reported as verified


def test_full_inputs_and_unverified_empty_calls_still_compile():
    net = _net()
    torch._dynamo.reset()
    backend = torch_backend(collapse=["1"], inductor=False)
    x = torch.randn(5, 3)
    torch.testing.assert_close(torch.compile(net, backend=backend)(x), net[2](net[0](x)))
    assert backend.reports[0]["verification"]["passed"] and backend.reports[0]["collapsed"] == ["1"]
    torch._dynamo.reset()
    unverified = torch_backend(collapse=["1"], inductor=False, verify=False)
    assert torch.compile(net, backend=unverified)(torch.randn(0, 3)).shape == (0, 2)
