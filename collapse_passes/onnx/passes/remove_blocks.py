"""remove_blocks: replace chosen residual blocks y = F(x) + skip by their skip (LaCoOT).

The Add's consumers read the skip tensor instead (identity skip: x; projection shortcut: the
projection's output); the branch F, now unread, goes with graph.cleanup(). A post-add activation
stays (it now reads the skip). The driver runs this before linearize, on the result and on the
requested-semantics reference alike, so the verification gate checks the rest of the pipeline.
"""
from __future__ import annotations

import difflib

from ...errors import CollapseError
from ...pipeline import PassResult
from ..blocks import find_residual_blocks
from ..graph import replace_tensor_uses, toposort


class RemoveResidualBlocks:
    name = "remove_blocks"

    def __call__(self, ctx) -> PassResult:
        want = [str(k) for k in (ctx.remove_blocks or ())]
        if not want:
            return PassResult(False)
        graph = ctx.graph
        blocks = find_residual_blocks(graph, getattr(ctx, "node_meta", None))
        index = {}
        for b in blocks:
            for k in b.keys:
                index.setdefault(k, b)
        unknown = [k for k in want if k not in index]
        if unknown:
            k = unknown[0]
            near = difflib.get_close_matches(k, [b.key for b in blocks], n=3, cutoff=0.5)
            hint = (f"; did you mean {', '.join(repr(n) for n in near)}?" if near else
                    f"; the model's residual blocks are: {', '.join(b.key for b in blocks[:12]) or 'none'}")
            raise CollapseError(f"remove_blocks: unknown residual block {k!r}{hint}")
        chosen = list({id(index[k]): index[k] for k in want}.values())
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        notes = []
        for b in sorted(chosen, key=lambda b: order[id(b.add)]):
            # read the skip from the Add now: an earlier removal may have rewired it
            skip = b.add.inputs[b.skip_index]
            replace_tensor_uses(graph, b.add.outputs[0], skip)
            b.add.inputs.clear()
            b.add.outputs.clear()
            how = "identity skip" if b.identity else \
                f"projection shortcut ({' -> '.join(n.op for n in b.projection)})"
            notes.append(f"replaced residual block {b.key} by its {how}")
        toposort(graph.cleanup(remove_unused_graph_inputs=False))
        return PassResult(True, notes)
