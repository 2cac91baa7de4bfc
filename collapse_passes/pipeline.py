"""A small pass manager in the style of torch.fx's PassManager.

A pass is an object with a name and one job; calling it on a context returns whether it changed
the graph. Passes never verify: verify.py does that once, at the end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class PassResult:
    modified: bool
    notes: list[str] = field(default_factory=list)


class GraphPass(Protocol):
    name: str

    def __call__(self, ctx: Any) -> PassResult: ...


@dataclass
class PassRecord:
    name: str
    runs: int = 0
    changes: int = 0
    seconds: float = 0.0


class PassManager:
    """Run passes in order; a `fixed_point` group repeats until no pass in it changes anything."""

    def __init__(self, stages: list, max_iterations: int = 20):
        # stages: list of GraphPass or ("fixed_point", [GraphPass, ...])
        self.stages = stages
        self.max_iterations = max_iterations
        self.records: dict[str, PassRecord] = {}

    def _run_one(self, p, ctx) -> bool:
        rec = self.records.setdefault(p.name, PassRecord(p.name))
        t0 = time.perf_counter()
        res = p(ctx)
        rec.seconds += time.perf_counter() - t0
        rec.runs += 1
        if res.modified:
            rec.changes += 1
        for note in res.notes:
            ctx.notes.append(f"{p.name}: {note}")
        return res.modified

    def run(self, ctx) -> bool:
        changed_any = False
        for stage in self.stages:
            if isinstance(stage, tuple) and stage[0] == "fixed_point":
                for _ in range(self.max_iterations):
                    changed = False
                    for p in stage[1]:
                        changed |= self._run_one(p, ctx)
                    changed_any |= changed
                    if not changed:
                        break
            else:
                changed_any |= self._run_one(stage, ctx)
        return changed_any
