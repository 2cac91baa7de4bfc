"""uncapped_choice_warning's midpoint lo + (hi - lo) / 2 overflowed to inf on a --scores file spanning
-1e308..1e308 (finite, accepted by read_scores), so a choice that took the top score went unwarned; and a
negative range printed as "-5--1" (H45, 2026-11-29)."""
from __future__ import annotations

from types import SimpleNamespace

from collapse_passes.speedup import uncapped_choice_warning

CFG = SimpleNamespace(threshold=None, remove=None, target_speedup=2.0)


def test_the_widest_finite_range_still_warns():
    line = uncapped_choice_warning([1e308], [-1e308, 0.0, 1e308], CFG)
    assert line and "1 of the 1" in line


def test_a_negative_range_reads_as_a_range():
    line = uncapped_choice_warning([-1.0], [-5.0, -1.0], CFG)
    assert line and "(-5 to -1;" in line


def test_lower_half_and_capped_choices_stay_quiet():
    assert uncapped_choice_warning([-4.0], [-5.0, -1.0], CFG) is None
    capped = SimpleNamespace(threshold=0.5, remove=None, target_speedup=2.0)
    assert uncapped_choice_warning([1e308], [-1e308, 1e308], capped) is None
