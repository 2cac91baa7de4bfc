"""The report: a rich terminal table, machine-readable JSON, and score plots."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table


def _fmt_int(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _pct(before, after) -> str:
    if not before:
        return ""
    return f"{100.0 * (after - before) / before:+.1f}%"


def print_report(report: dict, console: Console | None = None, max_rows: int = 60, max_notes: int = 6) -> None:
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

    v = report["verification"]
    r, o = v["against_requested"], v["against_original"]
    status = "[bold green]PASS[/]" if r["passed"] else "[bold red]FAIL[/]"
    console.print(f"verification on {v['inputs']} (onnxruntime, graph optimizations off): {status}")
    console.print(f"  vs requested semantics: max abs {r['max_abs']:.3g}, max rel {r['max_rel']:.3g} "
                  f"(rtol {v['rtol']}, atol {v['atol']})")
    console.print(f"  vs original model (the price of the collapse): max abs {o['max_abs']:.3g}, "
                  f"max rel {o['max_rel']:.3g}")
    if report.get("left_alone"):
        console.print(f"nonlinear ops left alone (not collapsible activations): {', '.join(report['left_alone'])}")
    notes = report.get("notes", [])
    for n in notes[:max_notes]:
        console.print(f"[dim]note:[/] {n}", highlight=False)
    if len(notes) > max_notes:
        console.print(f"[dim]note:[/] {len(notes) - max_notes} more note(s) in the --report JSON")
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=_default)


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def plot_scores(scores: dict[str, float], threshold: float | None, path, title: str = "collapse scores") -> None:
    """Bar chart of per-layer scores (in model order) with the collapse threshold."""
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
    write_bytes_atomic(buf.getvalue(), path)
