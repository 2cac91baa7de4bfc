"""With --prune-calib-dead the pruning table was titled "Channel pruning, exact removal" although some of its
channels were removed because they were off on the calibration data only (H1, adversarial round 13): the title
now says how many of them are data-dependent and approximate."""
from __future__ import annotations

import io

from rich.console import Console

from collapse_passes.report import _print_pruning


def _title(groups) -> str:
    out = io.StringIO()
    pr = {"exact_removal": True, "removed_channels": sum(g["channels_before"] - g["channels_after"] for g in groups),
          "params_saved": 10, "macs_saved": 100, "groups": groups}
    _print_pruning(pr, Console(file=out, width=200), 20)
    text = " ".join(out.getvalue().split())
    return text[:text.index("MACs saved")]   # the title, wrapped by rich over several lines


def test_data_dependent_channels_are_named_in_the_title():
    exact = {"group": "a", "channels_before": 8, "channels_after": 6, "kind": "constant (zero filter)"}
    calib = {"group": "b", "channels_before": 8, "channels_after": 5, "kind": "data-dependent (off on calibration)"}
    assert "exact removal: 2 channel(s)" in _title([exact])
    t = _title([exact, calib])
    assert "exact removal" not in t and "3 data-dependent, approximate" in t and "5 channel(s)" in t
