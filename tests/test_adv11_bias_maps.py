"""Bias maps (H8): constant_through_conv and conv_nd's run cut against the plain conv on adversarial maps."""
import numpy as np
import pytest

from collapse_passes.algebra.conv import ConvParams, _conv_nd, constant_through_conv, conv_nd


def _params(rng, ci, co, k, g=1, s=1, d=1, pb=0, pe=0, nd=2):
    w = rng.standard_normal((co, ci // g) + (k,) * nd)
    return ConvParams(weight=w, bias=rng.standard_normal(co), strides=(s,) * nd, dilations=(d,) * nd,
                      pads=(pb,) * nd + (pe,) * nd, group=g)


@pytest.mark.parametrize("g", [1, 3])
def test_infinite_constant_through_padded_conv_is_not_nan(g):
    """A padded tap adds weight * 0 in the conv; the separable sum multiplied inf by that 0 (NaN at the border)."""
    rng = np.random.default_rng(0)
    p = _params(rng, 3, 6, 3, g=g, s=2, pb=1, pe=2)
    v = np.array([np.inf, 1.5, -2.0])
    x = np.broadcast_to(v.reshape(1, 3, 1, 1), (1, 3, 11, 9)).copy()
    ref = _conv_nd(x, p)[0]
    got = constant_through_conv(v, p, (11, 9))
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(got, ref)


def _adversarial_maps(rng, n):
    row = rng.standard_normal((1, 2, 1, n[1]))
    col = rng.standard_normal((1, 2, n[0], 1))
    yield np.broadcast_to(row, (1, 2) + n).copy()          # equal along H only, varied along W
    yield np.broadcast_to(col, (1, 2) + n).copy()          # equal along W only
    x = np.broadcast_to(row + col, (1, 2) + n).copy()
    x[0, 0, n[0] // 2, 3] = np.nan                          # NaN in the middle slice: NaN != NaN
    yield x
    x = np.broadcast_to(row, (1, 2) + n).copy()
    x[0, 1, n[0] // 2 + 7, 5] = np.nan                      # NaN inside the run, not in the middle
    x[0, 0, :, n[1] // 2] = -0.0 * np.sign(x[0, 0, :, n[1] // 2]) * 0
    x[0, 0, 4:9] = rng.standard_normal((5, n[1]))           # border junk
    yield x
    x = np.broadcast_to(row, (1, 2) + n).copy()
    x[0, 0, :, :3] = np.inf
    yield x


@pytest.mark.parametrize("k,s,d,pb,pe", [(3, 1, 2, 2, 2), (3, 2, 1, 0, 1), (1, 2, 1, 0, 0), (4, 3, 2, 3, 1)])
def test_cut_runs_matches_plain_conv_bitwise(k, s, d, pb, pe):
    rng = np.random.default_rng(1)
    p = _params(rng, 2, 2, k, g=2, s=s, d=d, pb=pb, pe=pe)
    q = _params(rng, 2, 4, k, g=1, s=s, d=d, pb=pb, pe=pe)
    for x in _adversarial_maps(rng, (45, 37)):
        for c in (p, q):
            with np.errstate(invalid="ignore"):
                np.testing.assert_array_equal(conv_nd(x, c), _conv_nd(x, c))
