"""collapse() freezes the caller's objects while it runs (core/runtime.collector_skips_older_objects, H73).

verify()'s collection before its sessions (and the automatic ones the passes' allocations trigger) walked every
object of the process: with torch and its exporters loaded, ~0.5 s of CPU each, two or three per ONNX collapse
(docs/pass_runtime.md, 2026-11-30). Now they walk what the run made; the run's dropped pass graphs are still freed
before the first session, the window closes on every exit, and a caller's own freeze is left alone."""
import gc

import pytest
from onnx import helper

import collapse_passes as cp
import collapse_passes.verify as verify_mod
from conftest import make_model, rnd, vinfo


def _model():
    return make_model([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
                       helper.make_node("Relu", ["a"], ["r"], name="relu"),
                       helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")],
                      [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 4, 8, 8])],
                      {"w1": rnd(4, 3, 3, 3), "w2": rnd(4, 4, 1, 1, seed=1)})


def test_verify_collects_only_what_the_run_made_and_frees_its_graphs(monkeypatch):
    import weakref

    import onnx_graphsurgeon as gs

    assert gc.get_freeze_count() == 0
    made = []   # every graph the run builds (onnx-graphsurgeon graphs are reference cycles)
    init = gs.Graph.__init__

    def tracked(self, *a, **k):
        init(self, *a, **k)
        made.append(weakref.ref(self))

    monkeypatch.setattr(gs.Graph, "__init__", tracked)
    seen = {}
    inner = verify_mod.run_input_model

    def first_session(*a, **k):
        if not seen:
            seen["frozen"] = gc.get_freeze_count()
            live = [g for g in (r() for r in made) if g is not None]
            unfrozen = {id(o) for o in gc.get_objects()}   # gc.get_objects() leaves the frozen ones out
            seen["frozen_graphs"] = sum(id(g) not in unfrozen for g in live)
            del live
            gc.set_debug(gc.DEBUG_SAVEALL)   # what a collection now finds unreachable is kept to be counted
            try:
                gc.collect()
                seen["garbage_graphs"] = sum(isinstance(o, gs.Graph) for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        return inner(*a, **k)

    monkeypatch.setattr(verify_mod, "run_input_model", first_session)
    model = _model()
    old = len(gc.get_objects())
    enabled = gc.isenabled()
    gc.disable()   # only verify's own collection may free the pass graphs
    try:
        r = cp.collapse(model, collapse=["relu"])
    finally:
        if enabled:
            gc.enable()
    assert r.report["passed"] and r.report["collapsed"] == 1 and made
    assert seen["frozen"] >= 0.9 * old   # the caller's heap was not walked
    # the passes' graphs were freed before the first session: none left as garbage, none hidden by the freeze
    assert seen["garbage_graphs"] == 0 and seen["frozen_graphs"] == 0
    assert gc.get_freeze_count() == 0


def test_the_window_closes_on_error_and_leaves_a_callers_freeze_alone():
    assert gc.get_freeze_count() == 0
    with pytest.raises(cp.CollapseError, match="no_such_key"):
        cp.collapse(_model(), collapse=["no_such_key"])
    assert gc.get_freeze_count() == 0   # not left frozen: the caller's garbage is collected again
    gc.freeze()   # a caller's own (a pre-fork server): collapse must not unfreeze it
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert cp.collapse(_model(), collapse=["relu"]).report["passed"]
        assert 0.9 * frozen <= gc.get_freeze_count() <= frozen   # still frozen (less what the run freed)
    finally:
        gc.unfreeze()
