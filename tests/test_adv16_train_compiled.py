"""torch.compile(model) given to the training loop and the torch score hooks.

collapse() already works on the module an OptimizedModule wraps; module_scores and iterative_collapse ran
the wrapper, whose dynamo tracing breaks on the score hooks ("UnspecializedNNModuleVariable(...) is already
tracked for mutation"), so every method was one confusing error. They now score / train the wrapped module,
with the same keys as the plain model.
"""
import torch
from torch import nn

from collapse_passes.scores.torch_hooks import module_scores
from collapse_passes.train import iterative_collapse


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_scores_of_a_compiled_model_are_the_plain_models():
    m = _net()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for method in ("easier", "tlc"):
        assert module_scores(torch.compile(m), method, [x]).scores == module_scores(m, method, [x]).scores


def test_loop_takes_a_compiled_model():
    m = _net()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 3, 6, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    res = iterative_collapse(torch.compile(m), "easier", (x, y), (x, y), max_rounds=1, steps_per_round=1,
                             max_accuracy_drop=1.0, predict=False)
    assert res.collapsed and all(not k.startswith("_orig_mod") for k in res.collapsed)
    assert isinstance(res.model, nn.Sequential)
