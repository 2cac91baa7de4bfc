"""The float64 second look (verify.float64_second_look) decides whether a float32 failure is rounding. It looked at
the first two check inputs only, whichever failed: MobileNetV3-Small (torchvision layout, random weights, --method
tlc --target-speedup 1.3, 8 calibration samples) passed its 6-merge result as "exact" (float64 4e-6 on samples 0-1)
though it is 2.5e-4 off in float64 on another sample; the same weights exported with a dynamic batch (the 8
samples one batch, so one look saw them all) had 3 of the merges refused. It now looks at the inputs float32 is
furthest on, and the request's float64 outputs are cached per input for the merge fallback's trials."""
from __future__ import annotations

import numpy as np

from collapse_passes import verify
from collapse_passes.core.runtime import compare

REQ64 = [1.0, 2.0, 4.0]
OFF = {0: [1.0, 2.0, 4.0], 1: [1.0, 2.0, 4.0], 2: [1.0, 2.0, 4.0], 3: [1.0, 2.6, 4.0]}   # feed 3: wrong in float64 too


def _look(n_feeds=4):
    feeds = [{"x": np.full(2, i, np.float32)} for i in range(n_feeds)]
    req32 = [[np.array(REQ64, np.float32)] for _ in feeds]
    res32 = [[np.array(OFF[i], np.float32)] for i in range(n_feeds)]
    against = compare(req32, res32, ["y"], 1e-4, 1e-5)
    assert not against.passed
    seen = []

    def run64(m, fs):
        idx = [int(f["x"][0]) for f in fs]
        seen.append((m, idx))
        return [[np.array(REQ64 if m == "req" else OFF[i])] for i in idx]

    out = verify.float64_second_look(against, run64, "req", "res", feeds, ["y"], 1e-4, 1e-5, req32=req32, res32=res32)
    return out, seen


def test_second_look_sees_the_input_float32_failed_on():
    out, seen = _look()
    assert 3 in seen[0][1], seen             # the failing input is among those evaluated in float64
    assert not out.passed, out.why           # and it is not passed as "rounding of the merged sums"
    assert out.max_rel64 > 0.1
