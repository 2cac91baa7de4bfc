"""Which units to remove for a target ratio: global or per-layer ranking by importance, rounded counts."""
from __future__ import annotations

import math

import numpy as np

from ..algebra.prune import keep_count, round_keep
from ..errors import CollapseError
from .graph import ChannelGraph


#: onnxruntime's CPU convs run in their blocked layout (NCHWc) only with channel counts that are multiples of this
BLOCK_CHANNELS = 8


def misaligned_note(rows: list, ratio) -> str | None:
    """A warning when a ratio prune left groups that had a multiple of BLOCK_CHANNELS channels with another count
    (`rows`: the report's group rows), else None. onnxruntime runs those convs outside its blocked layout, and
    MACs then overstate the speed-up badly: MobileNetV3-Large at 224 pruned to 0.3 did 2.6x fewer MACs (cost
    model 2.27x) and ran 0.86x as fast, with round_to 8 1.83x (ResNet-50: 1.55x vs 1.73x)."""
    bad = [r for r in rows if r["channels_before"] % BLOCK_CHANNELS == 0 and r["channels_after"] % BLOCK_CHANNELS]
    if not bad:
        return None
    r = bad[0]
    return (f"prune ratio {ratio}: {len(bad)} channel group(s) left with counts that are not multiples of "
            f"{BLOCK_CHANNELS} (e.g. {r['group']} {r['channels_before']} -> {r['channels_after']}); onnxruntime's CPU "
            f"convs leave their blocked layout there and MACs overstate the speed-up (MobileNetV3-Large 224 at 0.3: "
            f"measured 0.86x for 2.6x fewer MACs, 1.83x with --round-to {BLOCK_CHANNELS}); add --round-to "
            f"{BLOCK_CHANNELS} (round_to={BLOCK_CHANNELS})")


def check_ratio(ratio: float, round_to: int = 1) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise CollapseError(f"--prune-ratio must be in [0, 1), got {ratio!r} (0.3 removes 30% of the channels)")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise CollapseError(f"--round-to must be an integer >= 1, got {round_to!r} (1 = no rounding)")


class NothingToPrune(CollapseError):
    """A ratio prune of a model with no channel it can remove: every channel group is frozen (a graph output, a
    LayerNorm'd axis, an op the channel graph does not read...). It used to run, remove nothing and write the model
    with a warning (exit 0), for a request that could not be met."""


def nothing_to_prune(cg: ChannelGraph, ratio, exclude=(), unread: str = "") -> NothingToPrune:
    """The one line for a ratio prune with no candidate; `unread`: layers the channel graph cannot read."""
    groups = cg.groups()
    why = [f"{f['op']}: {f['reason']}" for f in cg.frozen_ops[:2] if isinstance(f, dict) and f.get("reason")]
    frozen = sum(bool(g.frozen) for g in groups)
    what = ((f"{len(groups)} channel group(s), {frozen} frozen" if groups else "no conv or linear layer it can read")
            + (f", e.g. {'; '.join(why)}" if why else ", by the model's inputs and outputs" if frozen else "")
            + (", the others only inside the removed blocks" if exclude else "")
            + (f"; layers the channel graph cannot read: {unread}" if unread else ""))
    return NothingToPrune(f"--prune-ratio {ratio}: no channel of this model can be pruned ({what}); drop "
                          "--prune-ratio (prune_ratio=, prune_module's ratio=): constant channels are still "
                          "removed exactly without it")


def unranked_channels(groups, importance: dict, ratio) -> CollapseError:
    """The one line for a ratio prune whose importance (the user's per-channel scores, or the statistics of
    --prune-importance tlc / easier) ranks none of the prunable channels: every unit is unscored (+inf, kept)."""
    names = list(dict.fromkeys(s[0] for g in groups for s in g.slots))
    return CollapseError(f"--prune-ratio {ratio}: the channel importance ranks none of the {len(groups)} prunable "
                         f"channel group(s) (their tensors: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}); "
                         "give per-channel scores for those tensors, or rank by the weights with --prune-importance "
                         "l1 (prune_importance='l1', prune_module's importance='l1')")


def select_for_ratio(cg: ChannelGraph, importance: dict, ratio: float, scope: str = "global",
                     round_to: int = 1, exclude=()) -> list:
    """(gid, unit) pairs to remove so that about `ratio` of the prunable channels go.

    scope "layer": every group loses floor(ratio * n) of its n units (lowest importance first).
    scope "global": units of all groups are ranked together by importance divided by their group's mean
    (so layers with large weights do not keep everything); a group that would lose all units is an error.
    Kept counts are rounded up to a multiple of round_to (never above n). `exclude` units and units with
    no finite importance (not scored by the user) are not candidates. Every tensor of a group keeps at
    least one channel (see _keep_every_tensor). Counts are in channels: a unit of a grouped conv's
    position class holds one channel per conv group (ChannelGraph.unit_width), so it weighs that much in
    the global ratio, and round_to applies to the channels it keeps (32 groups keep multiples of 32).
    """
    check_ratio(ratio, round_to)
    if scope not in ("global", "layer"):
        raise CollapseError(f"prune scope must be 'global' or 'layer', got {scope!r}")
    exclude = set(exclude)
    cands: dict[int, list] = {}
    for g in cg.groups():
        units = [k for k in cg.prunable_units(g)
                 if (g.gid, k) not in exclude and np.isfinite(importance.get((g.gid, k), np.inf))]
        if units:
            cands[g.gid] = units
    groups = cg.groups()
    if not cands and ratio > 0:
        unscored = [g for g in groups if any((g.gid, k) not in exclude for k in cg.prunable_units(g))]
        if unscored:   # prunable channels, none ranked: "no channel can be pruned" / "drop --prune-ratio" was wrong
            raise unranked_channels(unscored, importance, ratio)
        raise nothing_to_prune(cg, ratio, exclude)
    width = {gid: cg.unit_width(groups[gid]) for gid in cands}
    # kept units rounded so that the kept channels (units * width) are a multiple of round_to
    rounds = {gid: round_to // math.gcd(round_to, w) for gid, w in width.items()}
    removed = []
    if scope == "layer":
        for gid, units in cands.items():
            n = len(units)
            keep = keep_count(n, ratio, rounds[gid])
            ranked = sorted(units, key=lambda k: (importance[(gid, k)], k))
            removed += [(gid, k) for k in ranked[: n - keep]]
        return _round_every_layer(cg, _keep_every_tensor(cg, removed, importance, {g: len(u) for g, u in cands.items()},
                                                         rounds), importance, round_to)
    scored = []
    for gid, units in cands.items():
        vals = np.array([importance[(gid, k)] for k in units], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        mean = float(np.mean(np.abs(finite))) if finite.size else 1.0
        for k, v in zip(units, vals):
            scored.append((v / mean if mean > 0 else v, gid, k))
    scored.sort()
    total = sum(width[gid] for _, gid, _ in scored)
    n_remove = int(np.floor(ratio * total + 1e-9))   # channels
    chosen: dict[int, list] = {}
    taken = 0
    for _, gid, k in scored:
        if taken + width[gid] / 2 > n_remove:   # the nearest count to the target (width 1: exactly n_remove)
            break
        chosen.setdefault(gid, []).append(k)
        taken += width[gid]
    for gid, ks in chosen.items():
        n = len(cands[gid])
        keep = round_keep(n - len(ks), n, rounds[gid])
        if keep == 0:
            raise CollapseError(
                f"pruning would empty layer {groups[gid].name} (all {n * width[gid]} channels have the lowest "
                "importance); lower --prune-ratio or prune per layer")
        ks_sorted = sorted(ks, key=lambda k: (importance[(gid, k)], k))
        removed += [(gid, k) for k in ks_sorted[: n - keep]]
    return _round_every_layer(cg, _keep_every_tensor(cg, removed, importance, {g: len(u) for g, u in cands.items()},
                                                     rounds), importance, round_to)


def _round_every_layer(cg: ChannelGraph, removed: list, importance: dict, round_to: int) -> list:
    """`removed` less the most important units it takes from a layer (a conv / linear output) until every layer keeps
    a multiple of round_to channels, or all it has. A group's count can be a multiple while its layers' are not: the
    branches of an Inception concat (8 + 16 + 4 channels) pruned to 0.5 with round_to 8 kept 16 as 1 + 11 + 4, convs
    that leave onnxruntime's blocked layout, which is what round_to is for."""
    if round_to == 1:
        return removed
    groups = cg.groups()
    prod = cg.producer_slots()
    removed = list(removed)
    takes: dict = {}   # unit -> {producer slot: channels it takes from it}
    dropped: dict = {}   # producer slot -> channels removed from it
    for u in removed:
        for s, _ in groups[u[0]].units[u[1]]:
            if s in prod:
                takes.setdefault(u, {})[s] = takes.get(u, {}).get(s, 0) + 1
                dropped[s] = dropped.get(s, 0) + 1
    while True:
        # a layer nothing is taken from keeps all it has, a multiple or not (a 5-channel branch of a concat: asking
        # it for a multiple re-added units until none took from it, then max() of nothing, a traceback)
        bad = next((s for s, d in dropped.items() if d and (cg.size(s) - d) % round_to), None)
        if bad is None:
            return removed
        best = max((u for u in removed if bad in takes.get(u, {})), key=lambda u: (importance[u], u))
        removed.remove(best)
        for s, c in takes[best].items():
            dropped[s] -= c


def _keep_every_tensor(cg: ChannelGraph, removed: list, importance: dict, n_units: dict, rounds: dict) -> list:
    """`removed` less the units that would leave a tensor with no channel.

    A group's tensors can be smaller than the group: each input of a Concat (an Inception branch, a
    DenseNet layer's growth) or output of a Split holds only part of its channels. Removing every unit
    of one of them would leave a conv with no filter; the most important of its removed units stays (and
    the group's next most important ones, until its kept count is a multiple of its rounding again)."""
    groups = cg.groups()
    removed = list(removed)
    while True:
        drop: dict = {}
        for gid, k in removed:
            for s, i in groups[gid].units[k]:
                drop.setdefault(s, set()).add(i)
        empty = [s for s, d in drop.items() if len(d) >= cg.size(s)]
        if not empty:
            return removed
        touching = [(gid, k) for gid, k in removed if any(t == empty[0] for t, _ in groups[gid].units[k])]
        best = max(touching, key=lambda u: (importance[u], u))
        removed.remove(best)
        rest = sorted((u for u in removed if u[0] == best[0]), key=lambda u: (importance[u], u))
        while rest and (n_units[best[0]] - len(rest)) % rounds[best[0]]:
            removed.remove(rest.pop())
