"""remove_blocks_below on a model without residual blocks (VGG-style): the one line names the argument
the user gave. It said "or do not use lacoot_lambda" to a user who had set only remove_blocks_below."""
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from collapse_passes.errors import CollapseError  # noqa: E402
from collapse_passes.train import iterative_collapse  # noqa: E402


def test_no_residual_block_names_remove_blocks_below():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    with pytest.raises(CollapseError, match="remove_blocks_below at None"):
        iterative_collapse(model, train_data=(x, y), val_data=(x, y), remove_blocks_below=0.1, max_rounds=0)
