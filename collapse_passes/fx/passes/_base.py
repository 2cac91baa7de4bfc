"""What the fx passes share: a record of what they did (for the report) and a PassBase with a name."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch.fx.passes.infra.pass_base import PassBase, PassResult

__all__ = ["FxRecord", "FxPass", "PassResult"]


@dataclass
class FxRecord:
    """Filled by the passes, read by the report (the same lists as the ONNX context)."""
    notes: list = field(default_factory=list)
    folds: list = field(default_factory=list)
    merges: list = field(default_factory=list)
    approximations: list = field(default_factory=list)
    linearized: list = field(default_factory=list)
    passes: dict = field(default_factory=dict)        # pass name -> {"runs", "changes", "seconds"}


class FxPass(PassBase):
    """A torch.fx PassBase that records into a shared FxRecord (its own one by default)."""
    name = "fx-pass"

    def __init__(self, record: FxRecord | None = None):
        self.record = record if record is not None else FxRecord()

    def __call__(self, graph_module):
        t0 = time.perf_counter()
        res = super().__call__(graph_module)
        rec = self.record.passes.setdefault(self.name, {"name": self.name, "runs": 0, "changes": 0, "seconds": 0.0})
        rec["runs"] += 1
        rec["changes"] += int(bool(res is not None and res.modified))
        rec["seconds"] = round(rec["seconds"] + time.perf_counter() - t0, 4)
        return res

    def note(self, text: str) -> None:
        self.record.notes.append(f"{self.name}: {text}")

    def finish(self, gm, done: int, note: str) -> PassResult:
        """After `done` rewrites: drop what they left dead (in-place writes kept), check, recompile, and
        note it (`note` holds {} for the count)."""
        if done:
            from ..graph import eliminate_dead_code

            eliminate_dead_code(gm)
            gm.graph.lint()
            gm.recompile()
            self.note(note.format(done))
        return PassResult(gm, done > 0)
