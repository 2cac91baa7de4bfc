"""python -m collapse_passes MODEL.onnx [-o OUT.onnx] [--scores S.json --threshold T | --remove N] ...

Flags -> one CollapseConfig -> api.collapse -> report -> atomic write. Exit codes: 0 written (or
dry run), 1 verification failed (nothing written), 2 bad input (nothing written).
TVM is imported only when --target is given.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from .config import CollapseConfig
from .errors import CollapseError, VerificationError

METHODS = ("tlc", "easier", "prelu", "lacoot")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m collapse_passes",
        description="Collapse activations of an ONNX model, fold and merge the linear ops around them, "
                    "verify the result against the requested semantics, and write it.")
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", help="output .onnx (default: MODEL.collapsed.onnx beside the input)")
    g = p.add_argument_group("what to collapse")
    g.add_argument("--scores", metavar="FILE.json", help='per-layer scores {"scores": {"<key>": <float>}}; '
                   "keys are ONNX node names or torch module paths; lower = more collapsed")
    sel = g.add_mutually_exclusive_group()
    sel.add_argument("--threshold", type=float, metavar="T", help="collapse activations with score <= T")
    sel.add_argument("--remove", type=int, metavar="N", help="collapse the N lowest-scored activations")
    g.add_argument("--collapse", metavar="KEY[,KEY...]", help="collapse these keys (no scores needed)")
    g.add_argument("--method", choices=METHODS, help="compute scores: tlc (BN / activation stats), easier "
                   "(calibration entropy), prelu (Layer Folding slopes), lacoot (residual blocks)")
    g.add_argument("--calib", metavar="FILE.npz|DIR", help="calibration data: .npz with arrays named after the "
                   "model inputs, or a folder of .npy files; also used by the verification gate")
    g.add_argument("--calib-batches", type=int, metavar="N", help="use at most N calibration batches")
    g.add_argument("--save-scores", metavar="FILE.json", help="write the computed scores (editable, re-usable)")
    g.add_argument("--plot", metavar="FILE.png", help="plot per-layer scores with the threshold")
    g.add_argument("--remove-blocks", type=float, metavar="T",
                   help="with --method lacoot: replace residual blocks scoring <= T by their skip")
    g.add_argument("--list-keys", action="store_true", help="list the activation keys of the model and exit")
    m = p.add_argument_group("merging")
    m.add_argument("--no-merge", action="store_true", help="do not merge linear chains (fold BN/affine only)")
    m.add_argument("--allow-border-approx", action="store_true",
                   help="also merge padded conv pairs whose merge is inexact on the border; the error is measured")
    m.add_argument("--approx-max-error", type=float, metavar="E",
                   help="with --allow-border-approx: fail if the measured max abs error exceeds E")
    m.add_argument("--cost", choices=("macs", "measured"), default="macs",
                   help="cost model for merge planning: MACs + per-op overhead, or op latencies measured "
                        "with onnxruntime on this machine")
    m.add_argument("--per-op-overhead", type=float, metavar="MACS", help="MAC-equivalent cost of one extra op")
    v = p.add_argument_group("verification and output")
    v.add_argument("--check", type=int, default=3, metavar="N", help="random inputs for the check (default 3)")
    v.add_argument("--rtol", type=float, default=1e-4)
    v.add_argument("--atol", type=float, default=1e-5)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--force", action="store_true", help="write the model even if verification fails")
    v.add_argument("--dry-run", action="store_true", help="compute and report, write no model")
    v.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    v.add_argument("-q", "--quiet", action="store_true", help="print only errors and the output path")
    try:
        from tvm_integration.cli_hook import add_arguments
    except ImportError:
        pass
    else:
        add_arguments(p)
    return p


def _output_path(args) -> Path:
    src = Path(args.model)
    out = Path(args.output) if args.output else src.with_name(src.stem + ".collapsed.onnx")
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src)):
        raise CollapseError(f"output {out} is the input model; choose another path with -o (the input is never "
                            "overwritten)")
    if out.exists() and out.is_dir():
        raise CollapseError(f"output {out} is a directory; give a file path")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False, quiet=args.quiet)
    err = Console(stderr=True)
    try:
        return _main(args, console, err)
    except VerificationError as exc:
        if exc.report is not None and not args.quiet:
            from .report import print_report

            print_report(exc.report.report, console)
        if args.report and exc.report is not None:
            from .onnx.graph import write_text_atomic
            from .report import report_json

            write_text_atomic(report_json(exc.report.report), args.report)
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except CollapseError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; nothing written")
        return 130


def _main(args, console: Console, err: Console) -> int:
    from . import api
    from .onnx.graph import write_text_atomic
    from .report import print_report, report_json

    if args.list_keys:
        for row in api.list_keys(args.model):
            console.print(f"{row['key']}\t{row['kind']}\t{', '.join(k for k in row['keys'] if k != row['key'])}",
                          highlight=False, soft_wrap=True)
        return 0
    out = None if args.dry_run else _output_path(args)
    if args.remove_blocks is not None and args.method != "lacoot":
        raise CollapseError("--remove-blocks needs --method lacoot")
    if args.check < 1:
        raise CollapseError("--check must be at least 1: every result is verified")
    cfg = CollapseConfig(
        scores=args.scores, threshold=args.threshold, remove=args.remove,
        collapse=[k for k in (args.collapse or "").split(",") if k], method=args.method,
        merge=not args.no_merge, allow_border_approx=args.allow_border_approx,
        approx_max_error=args.approx_max_error, cost=args.cost, per_op_overhead=args.per_op_overhead,
        check=args.check, calib=args.calib, calib_batches=args.calib_batches, rtol=args.rtol, atol=args.atol,
        force=args.force, seed=args.seed, remove_blocks=args.remove_blocks)
    result = api.collapse(args.model, config=cfg)
    report = result.report
    if not args.quiet:
        print_report(report, console)
    if args.save_scores:
        _save_scores(report, args.save_scores)
        console.print(f"scores written to {args.save_scores}")
    if args.plot:
        from .report import plot_scores

        scores = _report_scores(report)
        if not scores:
            raise CollapseError("--plot: no scores to plot; give --scores or --method")
        thr = args.remove_blocks if args.method == "lacoot" else args.threshold
        plot_scores(scores, thr, args.plot, title=f"{Path(args.model).name}: collapse scores")
        console.print(f"plot written to {args.plot}")
    tvm_out = None
    if getattr(args, "target", None):
        tvm_out = _run_tvm(args, result, console)
        report["tvm"] = tvm_out
    if out is not None:
        try:
            result.save(out)
        except OSError as exc:
            raise CollapseError(f"cannot write {out}: {exc.strerror or exc}") from None
        report["output"] = str(out)
    if args.report:
        write_text_atomic(report_json(report), args.report)
    if out is not None:
        flag = " [yellow](verification failed, written because of --force)[/]" if not result.passed else ""
        console.print(f"wrote {out}{flag}", highlight=False)
        if args.quiet:
            print(out)
    else:
        console.print("dry run: no model written")
    return 0


def _report_scores(report: dict) -> dict:
    """Per-activation scores, or per-block scores for LaCoOT."""
    s = {a["key"]: a["score"] for a in report["activations"] if a["score"] is not None}
    return s or {b["key"]: b["score"] for b in report.get("blocks", []) if b.get("score") is not None}


def _save_scores(report: dict, path) -> None:
    from .onnx.graph import write_text_atomic
    from .report import report_json

    scores = _report_scores(report)
    if not scores:
        raise CollapseError("--save-scores: no scores were computed or given; use --method")
    payload = {"scores": scores}
    if report.get("score_details"):
        payload["method"] = report["score_details"].get("method")
        payload["details"] = report["score_details"].get("details", {})
    write_text_atomic(report_json(payload), path)


def _run_tvm(args, result, console):
    try:
        from tvm_integration.cli_hook import TVMError, run_from_args
    except ImportError as exc:
        raise CollapseError(f"--target needs the TVM extra: pip install '.[tvm]' ({exc})") from None
    from .verify import random_inputs

    feeds = random_inputs(result.original, 1, args.seed)[0]
    try:
        return run_from_args(args, result.original, result.model, feeds, console=console)
    except TVMError as exc:
        raise CollapseError(f"TVM: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
