"""Parity (H64): the per-merge fallback spends its trial budget on the merges worth most first.

EfficientNet-B0 at 64 (EASIER scores, half the SiLUs collapsed): the ONNX front end verifies on calibration data
plus uniform noise over its range, where the collapsed network is chaotic; four SE merges (each saves one op and
costs MACs) failed there and the search, in pass order, ran out of trials before the head's dense merge (1.37M
MACs saved): the ONNX result kept 1.32M MACs more than the torch one. Searched by worth, the head merge is tried
first and kept.
"""
from types import SimpleNamespace

from collapse_passes.core.merge_fallback import search, worth


def _rec(name, before, after, ops_before=2, ops_after=1):
    return {"kind": "conv", "nodes": [name], "joins": [name], "macs_before": before, "macs_after": after,
            "ops_before": ops_before, "ops_after": ops_after}


def _cmp(ok):
    return SimpleNamespace(passed=ok, max_rel=0.0 if ok else 2.0, max_rel64=None)


def test_budget_goes_to_the_merge_worth_most():
    # in pass order: three SE-like merges that fail verification, then the head merge that saves the most
    records = [_rec("se1", 512, 1024), _rec("se2", 768, 9216), _rec("se3", 1728, 20736),
               _rec("head", 1_689_600, 320_000)]
    bad = {"se1", "se2", "se3"}
    tried = []

    def trial(allowed):
        tried.append(set(allowed))
        return set(allowed), _cmp(not (allowed & bad)), [r for r in records if set(r["joins"]) & allowed]

    fb = search(records, trial, limit=4, failed=_cmp(False))
    assert fb is not None
    assert "head" in fb.payload, (fb.payload, tried)          # in pass order it stayed untried
    assert not (fb.payload & bad)                              # what is kept verified
    assert [r["nodes"] for r in fb.untried] != [["head"]]


def test_worth_prices_ops_and_macs():
    assert worth(_rec("head", 1_689_600, 320_000)) > worth(_rec("se", 512, 1024)) > 0   # one op saved pays 512 MACs
    assert worth({"kind": "conv"}) == 0.0
