"""remove_blocks: replace chosen residual blocks y = F(x) + skip by their skip (LaCoOT), as on ONNX.

The add's users read the skip operand instead (identity skip: x; projection: the projection's output);
the branch, now unread, is dropped. A post-add activation stays (it now reads the skip). collapse()
runs it before linearize on the result and on the verification reference alike."""
from __future__ import annotations

import difflib

from torch import fx

from ...errors import CollapseError
from ..blocks import find_residual_blocks
from ._base import FxPass, PassResult


class RemoveResidualBlocks(FxPass):
    """keys: block keys (fx/blocks.py: module path, or the add node's name); each must name a block."""
    name = "remove_blocks"

    def __init__(self, keys=(), record=None):
        super().__init__(record)
        self.keys = [str(k) for k in keys]

    def call(self, gm: fx.GraphModule) -> PassResult:
        if not self.keys:
            return PassResult(gm, False)
        blocks = find_residual_blocks(gm)
        index = {}
        for b in blocks:
            for k in b.keys:
                index.setdefault(k, b)
        unknown = [k for k in self.keys if k not in index]
        if unknown:
            if len(unknown) == len(self.keys) and getattr(gm, "_collapse_blocks_removed", None) == self.keys:
                return PassResult(gm, False)   # a fixed-point loop ran us again: already done
            k = unknown[0]
            near = difflib.get_close_matches(k, [b.key for b in blocks], n=3, cutoff=0.5)
            hint = (f"; did you mean {', '.join(repr(n) for n in near)}?" if near else
                    f"; the model's residual blocks are: {', '.join(b.key for b in blocks[:12]) or 'none'}")
            raise CollapseError(f"remove_blocks: unknown residual block {k!r}{hint}")
        chosen = list({id(index[k]): index[k] for k in self.keys}.values())
        for b in chosen:
            skip = b.add.args[b.skip_index]
            b.add.replace_all_uses_with(skip)
            how = "identity skip" if b.identity else f"projection shortcut ({len(b.projection)} op(s))"
            self.note(f"replaced residual block {b.key} by its {how}")
        gm._collapse_blocks_removed = list(self.keys)
        return self.finish(gm, len(chosen), "removed {} residual block(s)")
