"""collapse(ExportedProgram, example_inputs=...) of another structure than the program's is one line.

ep.module() flattens forward's arguments by the structure the program was exported with. The shape run (an fx
Interpreter) flattened whatever it was given, so two tensors for a one-input program, a dict or a list for its
tensor ran there, and the program's own call in the check then raised out of collapse(): a TypeError ("forward()
takes 2 positional arguments but 3 were given") or an AttributeError ("'dict' object has no attribute 'size'")
traceback, before 2026-11-29. A GraphModule from ep.module() given with such inputs is the same case."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def _program():
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(2, 3, 8, 8)
    return model, x, torch.export.export(model, (x,))


@pytest.mark.parametrize("given, said", [("two", "tensor, tensor"), ("dict", "dict (x)"), ("list", "list of 1")])
@pytest.mark.parametrize("as_module", [False, True])
def test_inputs_of_another_structure_are_one_line(given, said, as_module):
    _, x, ep = _program()
    inputs = {"two": (x, x), "dict": ({"x": x},), "list": ([x],)}[given]
    with pytest.raises(cp.CollapseError) as info:
        cp.collapse(ep.module() if as_module else ep, collapse=["act"], example_inputs=inputs)
    msg = str(info.value)
    assert "\n" not in msg and "structure" in msg
    assert f"it takes tensor, example_inputs give {said};" in msg


def test_inputs_of_the_program_structure_still_collapse():
    model, x, ep = _program()
    x3 = torch.randn(2, 3, 8, 8)
    for inputs in ((x3,), x3, None):
        res = cp.collapse(ep, collapse=["act"], example_inputs=inputs)
        with torch.no_grad():
            torch.testing.assert_close(res.model.module()(x3), model.head(model.conv(x3)), rtol=1e-4, atol=1e-5)


def test_batch_one_example_inputs_keep_a_dynamic_batch():
    """A program exported for batches 1..16, collapsed with example_inputs of batch 1: the re-export on them
    specializes the batch (torch.export specializes a dim of example size 1) and collapse() refused it ("cannot keep
    the input program's dynamic dims ... Constraints violated") before 2026-11-29; the program's own example
    inputs re-export it now, and the result runs at every batch of the range."""
    model = _Net().eval()
    torch.manual_seed(0)
    ep = torch.export.export(model, (torch.randn(2, 3, 8, 8),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=16)}})
    res = cp.collapse(ep, collapse=["act"], example_inputs=(torch.randn(1, 3, 8, 8),))
    assert isinstance(res.model, torch.export.ExportedProgram)
    for b in (1, 5, 16):
        x = torch.randn(b, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(res.model.module()(x), model.head(model.conv(x)), rtol=1e-4, atol=1e-5)
