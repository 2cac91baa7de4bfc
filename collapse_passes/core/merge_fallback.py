"""Per-merge fallback: when a merged result fails verification, find the merges that break it and refuse
only those (front-end neutral; api.collapse, fx.api.collapse_torch and torch_backend call it).

Merged kernels of an ill-conditioned stack (every SiLU of EfficientNetV2-S collapsed) can be exact in
float64 and far off once rounded to float32, while the same layers one by one verify. Refusing every
merge throws away the depth reduction of the segments that were fine, so the merges are searched:

- each merge record names the joins it used (record["joins"]: "left>right" of the ops it fused); a trial
  reruns the passes allowing only a given set of joins (everything else stays as in the unmerged result)
  and verifies the whole result, as the gate always does;
- greedy group testing over the records, those worth most first (`worth`: MACs saved plus the ops removed at
  the default per-op overhead; ties in the order the passes made them): keep the longest prefix that
  verifies (binary search, O(log n) trials), refuse the record that tips it over (its measured error with
  and without it is reported), go on with the rest. Every state held is one that verified, so the budget
  running out only leaves the untried merges unmerged, and those are the ones worth least (in pass order,
  EfficientNet-B0's head merge, 1.37M MACs, came last and was left untried behind four SE merges that each
  save one op and cost MACs).

A model whose merged result verifies never gets here: nothing is paid unless the first gate fails.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..algebra.cost import DEFAULT_PER_OP_OVERHEAD_MACS


def join_key(left: str, right: str) -> str:
    """The identity of one fusion: op `left` merged with op `right` (names as the front end keeps them)."""
    return f"{left}>{right}"


def joins_ok(allowed, keys) -> list | None:
    """Per join key, may it be merged under `allowed` (None: every join)."""
    return None if allowed is None else [k in allowed for k in keys]


REFUSED_JOIN = "refused: the result with this merge failed verification (float32 rounding of the merged weights)"


def max_trials(n: int) -> int:
    """Trials the search may run for n merge records: about three bad merges found exactly, then the
    rest is left unmerged (each trial reruns the passes and the verification)."""
    return 2 + 3 * max(1, math.ceil(math.log2(n + 1)))


@dataclass
class MergeFallback:
    payload: object                      # the trial's result (the caller's tuple), verified
    comparison: object                   # its Comparison against the requested semantics
    refused: list = field(default_factory=list)    # {"kind", "nodes", "max_rel_merged", "max_rel_without"}
    untried: list = field(default_factory=list)    # records left unmerged when the budget ran out
    kept: int = 0
    trials: int = 0

    def as_dict(self) -> dict:
        return {"refused": self.refused, "untried": [{"kind": r.get("kind"), "nodes": r.get("nodes")}
                                                      for r in self.untried],
                "kept": self.kept, "trials": self.trials}

    def warning(self, failed, merged_segments: int) -> str:
        """One line: which merges were refused and the numbers measured with and without them."""
        head = (f"merging refused after verification: the merged result was {failed.max_rel:.3g} (max rel"
                f"{'' if failed.max_rel64 is None else f'; float64: {failed.max_rel64:.3g}'}) from "
                f"the requested semantics with {merged_segments} merged segment(s), outside the check's tolerance "
                "(float32 rounding of merged weights, amplified where collapsed layers form an ill-conditioned "
                "stack, is the usual cause); ")
        parts = [f"{' + '.join(r['nodes'])} ({r['kind']}: with it merged the result fails, "
                 f"{_numbers(r['max_rel_merged'], r['max_rel_float64_merged'])}; without it passes, "
                 f"{_numbers(r['max_rel_without'], r['max_rel_float64_without'])})" for r in self.refused]
        if self.untried:
            parts.append(f"{len(self.untried)} more left unmerged untried (search budget of {self.trials} trials)")
        listed = f"{len(self.refused) + len(self.untried)} merge(s) not merged: {'; '.join(parts)}; "
        if not self.kept:
            return head + listed + ("the result written is not merged (activations linearized, BatchNorm/affine "
                                    f"folded) and matches it (max rel {self.comparison.max_rel:.3g})")
        return head + listed + (f"the other {self.kept} merge(s) kept, the result written matches it (max rel "
                                f"{self.comparison.max_rel:.3g})")


def unfolded(failed, folds: int, merges: int) -> tuple[str, dict]:
    """The gate's last resort taken (api.collapse, fx collapse_torch and torch_backend): the folded result
    failed, the result written has the activations collapsed and nothing folded or merged (the request's own
    ops). Returns (the warning line, report["fold_fallback"])."""
    line = (f"folding refused after verification: with {folds} fold(s)"
            f"{f' and {merges} merge(s)' if merges else ''} the result was {_numbers(failed.max_rel, failed.max_rel64)} "
            "from the requested semantics, outside the check's tolerance (float32 weights of a folded BatchNorm, "
            "amplified where collapsed layers form an ill-conditioned stack, is the usual cause); the result written "
            "has the chosen activations collapsed and its BatchNorm / affine ops and linear chains as they were, and "
            "matches the request")
    return line, {"folds_refused": folds, "merges_refused": merges, "max_rel_folded": failed.max_rel,
                  "max_rel_float64_folded": failed.max_rel64}


def _numbers(rel32: float, rel64) -> str:
    """A trial's measured error: float32 max rel, and the float64 second look's when one was taken."""
    return f"max rel {rel32:.3g}" + ("" if rel64 is None else f" (float64: {rel64:.3g})")


def worth(record: dict) -> float:
    """What keeping a merge record is worth, in MAC-equivalents of the default cost model: the MACs it saves
    plus the ops it removes at the per-op overhead (a record without numbers is worth 0)."""
    macs = record.get("macs_before", 0) - record.get("macs_after", 0)
    ops = record.get("ops_before", 0) - record.get("ops_after", 0)
    return float(macs) + DEFAULT_PER_OP_OVERHEAD_MACS * float(ops)


def search(records: list, trial: Callable, limit: int | None = None, failed=None) -> MergeFallback | None:
    """records: the failing merged run's merge records (each with "joins"). trial(allowed) -> (payload,
    Comparison, records of that run); allowed = frozenset of join keys (empty: no merge at all).
    failed: that run's Comparison (it is the trial allowing every record: not run again).
    None when even the unmerged result fails (the gate then refuses, with the merged result's numbers)."""
    limit = max_trials(len(records)) if limit is None else limit
    count = 0

    def run(idx):
        nonlocal count
        count += 1
        return trial(frozenset(k for i in idx for k in records[i].get("joins", ())))

    known = run([])
    if not known[1].passed:
        return None
    kept: list = []
    rest = sorted(range(len(records)), key=lambda i: -worth(records[i]))   # stable: ties keep pass order
    refused, hi_cmp = [], failed   # hi_cmp: the known failure of keeping kept + all of rest (the first run's)
    while rest:
        if hi_cmp is None:
            if count >= limit:
                break
            got = run(kept + rest)
            if got[1].passed:
                kept, rest, known = kept + rest, [], got
                break
            hi_cmp = got[1]
        lo, hi, fail = 0, len(rest), hi_cmp
        while hi - lo > 1 and count < limit:
            mid = (lo + hi) // 2
            got = run(kept + rest[:mid])
            if got[1].passed:
                lo, known = mid, got
            else:
                hi, fail = mid, got[1]
        if hi - lo > 1:   # budget spent: the prefix that verified is kept, the rest stays unmerged
            kept += rest[:lo]
            rest = rest[lo:]
            break
        bad = records[rest[lo]]
        refused.append({"kind": bad.get("kind"), "nodes": list(bad.get("nodes", [])),
                        "max_rel_merged": fail.max_rel, "max_rel_without": known[1].max_rel,
                        "max_rel_float64_merged": fail.max_rel64, "max_rel_float64_without": known[1].max_rel64})
        kept += rest[:lo]
        rest = rest[lo + 1:]
        hi_cmp = None
    return MergeFallback(known[0], known[1], refused, [records[i] for i in rest], len(known[2]), count)
