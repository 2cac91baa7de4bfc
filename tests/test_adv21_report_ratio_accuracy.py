"""The ratio prune's line under --eval shows the two top-1 accuracies as percentages, not a raw dict
(H58 saw "accuracy {'unpruned': 0.0, 'pruned': 0.0}")."""
import io

from rich.console import Console

from collapse_passes.report import _print_pruning


def test_ratio_prune_line_shows_top1_as_percentages():
    buf = io.StringIO()
    pr = {"ratio": {"ratio": 0.2, "error_vs_unpruned": {"max_abs": 0.5, "max_rel": 0.1},
                    "accuracy": {"unpruned": 0.875, "pruned": 0.8125}}}
    _print_pruning(pr, Console(file=buf, width=200), 10)
    out = buf.getvalue()
    assert "top-1 on --eval 87.50% unpruned -> 81.25% pruned" in out
    assert "{" not in out


def test_ratio_prune_line_without_eval_has_no_accuracy():
    buf = io.StringIO()
    _print_pruning({"ratio": {"ratio": 0.2, "error_vs_unpruned": {"max_abs": 0.5, "max_rel": 0.1}}},
                   Console(file=buf, width=200), 10)
    assert "max abs error 0.5 against the unpruned model" in buf.getvalue()
    assert "top-1" not in buf.getvalue()
