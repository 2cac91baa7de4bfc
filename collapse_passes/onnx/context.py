"""The state the ONNX passes share: the graph, the request, and what each pass did."""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs


@dataclass
class OnnxContext:
    graph: gs.Graph
    chosen: set = field(default_factory=set)          # anchor node names of activations to linearize
    remove_blocks: set = field(default_factory=set)   # residual-block keys to replace by their skip (LaCoOT)
    channel_regimes: dict = field(default_factory=dict)   # anchor name -> core.channel_regimes.ChannelRegime
    node_meta: dict = field(default_factory=dict)     # node name -> metadata_props (graphsurgeon drops them)
    allow_border_approx: bool = False
    cost_model: object = None                         # algebra.cost.CostModel, used by merge planning
    input_shapes: dict = field(default_factory=dict)  # static input shapes, for per-position bias maps
    notes: list = field(default_factory=list)         # human-readable lines for the report
    folds: list = field(default_factory=list)         # one dict per folded op
    merges: list = field(default_factory=list)        # one dict per merged chain segment
    approximations: list = field(default_factory=list)  # merges that are not exact (opt-in only)
    prune: bool = False                               # remove constant channels (pruning/, exact)
    prune_off: dict = field(default_factory=dict)     # ReLU output -> channels off on all calibration data
    pruning: dict = field(default_factory=dict)       # what the channel removal did (report)
    source: object = None                             # the input ModelProto (weights), for run_shapes
    run_shapes: dict = field(default_factory=dict)    # tensor -> shape read from one run of `source`
    run_asked: set = field(default_factory=set)       # tensors already asked of a run (found or not)
    fold_protected: set = field(default_factory=set)  # ids of nodes inside activations left as they are
    merge_allowed: frozenset | None = None            # join keys a merge may use (None: all; core/merge_fallback)
    # conv chain (its node names) -> why it was not looked at, last word wins: a chain a fold has just rewritten
    # has no shapes until Cleanup infers them, and the next round of the loop plans it (driver.run_passes
    # adds what is left to the notes)
    chain_notes: dict = field(default_factory=dict)

    def label(self, name: str) -> str:
        """A node's name for the notes, with the module path the exporter stored when the name does not say it
        (the torch.export-based exporter names nodes node_Conv_740): 'node_Conv_740 (features.11.block.2.fc1)'."""
        from .keys import module_path_from_metadata

        path = module_path_from_metadata(self.node_meta.get(name) or {})
        return f"{name} ({path})" if path and not name.startswith("/") else name

    @property
    def graph_outputs(self) -> set:
        return {t.name for t in self.graph.outputs}
