"""The report: a rich terminal table, machine-readable JSON, and score plots."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # rich is imported when something is printed, not by `import collapse_passes`
    from rich.console import Console


def activation_row(key: str, keys, kind: str, nodes, score, collapsed: bool, module=None) -> dict:
    """One activation site of the report (the same fields from every front end)."""
    return {"key": key, "keys": list(keys), "module": module, "kind": kind, "nodes": list(nodes),
            "score": score, "collapsed": bool(collapsed)}


def data_dependent_channels(pruning: dict) -> int:
    """Channels of a pruning report removed because they were off on the calibration data only."""
    return sum(g.get("channels_before", 0) - g.get("channels_after", 0) for g in pruning.get("groups") or []
               if str(g.get("kind", "")).startswith("data-dependent"))


def build_report(*, input, activations: list, before: dict, after: dict, verification: dict, passed: bool,
                 approximations: list, folds: list, merges: list, passes: list, left_alone, left_alone_nodes,
                 notes: list, warnings: list, started: float, blocks=(), score_details=None, pruning=None) -> dict:
    """The report of one collapse, built in one place for the ONNX and torch front ends (same keys,
    same order, same derived fields); `started` is the run's time.perf_counter() at its start."""
    import time

    pr = pruning or {}
    data_dep = bool(pr.get("data_dependent"))
    if data_dep:
        n = data_dependent_channels(pr)
        err = pr.get("calib_dead_error")
        measured = (f"; on {err['inputs']} it differs from the model that keeps them by max abs {err['max_abs']:.3g} "
                    f"(max rel {err['max_rel']:.3g})" if err else "")
        warnings = list(warnings) + [
            f"{n or 'some'} channel(s) removed because their activation (ReLU, ReLU6 or HardSwish) was off on every calibration sample (approximate): "
            "the result equals the input model only on inputs that keep them off (verified on the calibration data)"
            f"{measured}; without --prune-calib-dead (prune_calib_dead=False) they are kept"]
    return {
        "input": input,
        "activations": activations,
        "collapsed": sum(a["collapsed"] for a in activations),
        "blocks": list(blocks),
        "before": before,
        "after": after,
        "verification": verification,
        "passed": bool(passed),
        # border approximations, a ratio prune, or channels removed as off on the calibration data only
        "approximate": bool(approximations) or data_dep or bool(pr.get("ratio")),
        "approximations": approximations,
        "folds": folds,
        "merges": merges,
        "passes": passes,
        "left_alone": sorted(set(left_alone)),
        "left_alone_nodes": list(left_alone_nodes)[:200],
        "notes": list(dict.fromkeys(notes)),
        "warnings": warnings,
        "score_details": score_details,
        "pruning": pruning,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _fmt_int(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _pct(before, after) -> str:
    if not before:
        return ""
    return f"{100.0 * (after - before) / before:+.1f}%"


def print_report(report: dict, console: Console | None = None, max_rows: int = 60, max_notes: int = 6) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    acts = report.get("activations", [])
    t = Table(title=f"Activations ({report.get('collapsed', 0)} of {len(acts)} collapsed)", show_lines=False)
    t.add_column("key", overflow="fold")
    t.add_column("kind")
    t.add_column("score", justify="right")
    t.add_column("action")
    shown = acts if len(acts) <= max_rows else [a for a in acts if a["collapsed"]][:max_rows]
    for a in shown:
        s = "-" if a.get("score") is None else f"{a['score']:.4f}"
        extra = f" (+{len(a['keys']) - 1} keys)" if len(a.get("keys", [])) > 2 else ""
        t.add_row(a["key"] + extra, a["kind"], s,
                  "[bold green]collapsed[/]" if a["collapsed"] else "kept")
    if len(shown) < len(acts):
        t.caption = f"{len(acts) - len(shown)} kept activations not shown (see --report JSON)"
    console.print(t)

    blocks = report.get("blocks") or []
    if blocks:
        bt = Table(title=f"Residual blocks ({sum(b['removed'] for b in blocks)} of {len(blocks)} removed)")
        bt.add_column("block")
        bt.add_column("score", justify="right")
        bt.add_column("action")
        for blk in blocks[:max_rows]:
            bt.add_row(blk["key"], "-" if blk.get("score") is None else f"{blk['score']:.4f}",
                       "[bold green]replaced by skip[/]" if blk["removed"] else "kept")
        console.print(bt)

    b, a = report["before"], report["after"]
    m = Table(title="Model", show_lines=False)
    m.add_column("")
    m.add_column("before", justify="right")
    m.add_column("after", justify="right")
    m.add_column("change", justify="right")
    for key, label in [("nodes", "nodes"), ("params", "parameters"), ("macs", "MACs"),
                       ("depth_ops", "critical path (ops)"), ("depth_nonlinear", "critical path (nonlinear ops)"),
                       ("activations", "activations")]:
        m.add_row(label, _fmt_int(b[key]), _fmt_int(a[key]), _pct(b[key], a[key]))
    acc, lat = report.get("accuracy"), report.get("latency")
    if acc:
        bad = acc.get("nonfinite_rows") or {}
        m.add_row(f"top-1 accuracy ({acc['samples']} samples"
                  + (f"; NaN/Inf logits, counted wrong: {bad['original']} / {bad['result']}" if bad else "") + ")",
                  f"{100 * acc['original']:.2f}%",
                  f"{100 * acc['result']:.2f}%", f"{100 * (acc['result'] - acc['original']):+.2f} pt")
    if lat:
        m.add_row(f"latency, onnxruntime CPU batch {lat.get('batch', 1)} (median)", f"{lat['original_ms']:.3f} ms",
                  f"{lat['result_ms']:.3f} ms",
                  f"{lat['speedup']:.2f}x" if lat.get("speedup") else "")
    console.print(m)

    merges = report.get("merges") or []
    if merges:
        mt = Table(title=f"Merges ({len(merges)})")
        for col in ("ops", "kind", "MACs before", "MACs after", "exact", "reason"):
            mt.add_column(col, overflow="fold")
        for mg in merges[:max_rows]:
            mt.add_row(" + ".join(mg.get("nodes", []))[:80], mg.get("kind", ""), _fmt_int(mg.get("macs_before", "")),
                       _fmt_int(mg.get("macs_after", "")), "yes" if mg.get("exact", True) else "[yellow]no[/]",
                       mg.get("reason", ""))
        console.print(mt)

    _print_pruning(report.get("pruning") or {}, console, max_rows)

    v = report["verification"]
    r, o = v["against_requested"], v["against_original"]
    status = "[bold green]PASS[/]" if r["passed"] else "[bold red]FAIL[/]"
    if v.get("structural"):
        console.print(f"verification by structure: {status} (the result computes the input model's own graph, the "
                      "same ops on the same weights; nothing needed to run)")
    else:
        console.print(f"verification on {v['inputs']} ({v.get('runtime', 'onnxruntime')}): {status}")
    if v.get("partial"):
        parts = ", ".join(f"{k} {a} of {b} nodes" for k, (a, b) in v["partial"].items())
        console.print(f"  ran only what differs from the models run before it: {parts}", highlight=False)
    console.print(f"  vs requested semantics: max abs {r['max_abs']:.3g}, max rel {r['max_rel']:.3g} "
                  f"(rtol {v['rtol']}, atol {v['atol']})")
    console.print(f"  vs original model (the price of the collapse): max abs {o['max_abs']:.3g}, "
                  f"max rel {o['max_rel']:.3g}")
    d = v.get("against_original_on_data")
    if d:   # the random inputs in the data's range can be far from every sample: the price on the data alone
        console.print(f"    on the calibration data alone: max abs {d['max_abs']:.3g}, max rel {d['max_rel']:.3g}")
    for row in (report.get("channel_regimes") or {}).get("sites", [])[:max_rows]:
        # --channel-regimes: what each collapsed site became; the price is the "vs original model" line above
        console.print(f"  per-channel collapse {row['key']} ({row['kind']}): "
                      + (f"{row['off_channels']} of {row['channels']} channel(s) in the off regime"
                         + (f", {row['saturated_channels']} saturated" if row.get("saturated_channels") else "")
                         + f", {row['to_zero']} to 0"
                         if row["regime"] == "per-channel" else f"linear regime on every channel ({row['why']})"),
                      highlight=False)
    if report.get("left_alone"):
        console.print(f"nonlinear ops left alone (not collapsible activations): {', '.join(report['left_alone'])}")
    notes = report.get("notes", [])
    for n in notes[:max_notes]:
        console.print(f"[dim]note:[/] {n}", highlight=False)
    if len(notes) > max_notes:
        console.print(f"[dim]note:[/] {len(notes) - max_notes} more note(s) in the --report JSON")
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")


def _print_pruning(pr: dict, console: Console, max_rows: int) -> None:
    """Channel pruning: per group channels before/after, parameters and MACs saved, frozen ops."""
    from rich.table import Table

    dd = data_dependent_channels(pr)
    # channels off on the calibration data only are not an exact removal: the title says which part is not
    first = "exact removal" if not dd else f"constant-channel removal ({dd} data-dependent, approximate)"
    sections = [(first, pr)] + ([("ratio prune", pr["ratio"])] if pr.get("ratio") else [])
    for label, sec in sections:
        rows = sec.get("groups") or []
        if not rows:
            continue
        t = Table(title=f"Channel pruning, {label}: {sec.get('removed_channels', 0)} channel(s), "
                        f"{_fmt_int(sec.get('params_saved', 0))} parameters and {_fmt_int(sec.get('macs_saved', 0))} "
                        "MACs saved")
        for col in ("group", "channels", "kind"):
            t.add_column(col, overflow="fold")
        for r in rows[:max_rows]:
            t.add_row(r["group"], f"{r['channels_before']} -> {r['channels_after']}", r.get("kind", ""))
        console.print(t)
    ratio = pr.get("ratio") or {}
    err = ratio.get("error_vs_unpruned")
    if err:
        acc = ratio.get("accuracy") or {}
        console.print(f"ratio prune (approximate): max abs error {err['max_abs']:.3g} against the unpruned model"
                      + (f", top-1 on --eval {acc['unpruned']:.2%} unpruned -> {acc['pruned']:.2%} pruned"
                         if acc else ""), highlight=False)
    frozen = pr.get("frozen_ops") or ratio.get("frozen_ops") or []
    if frozen and (pr.get("groups") or ratio):
        kinds = sorted({f"{f['op_type']} ({f['reason']})" for f in frozen})
        console.print(f"channels frozen (never pruned) by {len(frozen)} op(s): {'; '.join(kinds[:6])}"
                      + (" ..." if len(kinds) > 6 else ""), highlight=False, soft_wrap=True)


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=_default)


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def plot_scores(scores: dict[str, float], threshold: float | None, path, title: str = "collapse scores") -> bytes | None:
    """Bar chart of per-layer scores (in model order) with the collapse threshold, written atomically to
    `path` (checked before the plot is drawn; a missing folder is refused, not created), or returned as
    PNG bytes when `path` is None."""
    if path is not None:
        from .outputs import checked_output_file

        checked_output_file(path, "plot_scores()", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(scores)
    vals = [scores[k] for k in keys]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(keys)), 4))
    colors = ["tab:red" if threshold is not None and v <= threshold else "tab:blue" for v in vals]
    ax.bar(range(len(keys)), vals, color=colors)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("score (lower = more collapsed)")
    ax.set_title(title)
    if threshold is not None:
        ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.legend()
    fig.tight_layout()
    from .onnx.graph import write_bytes_atomic

    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    if path is None:  # the CLI stages the bytes itself (collapse_passes.outputs)
        return buf.getvalue()
    write_bytes_atomic(buf.getvalue(), path, "plot_scores()")
