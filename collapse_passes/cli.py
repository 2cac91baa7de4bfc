"""python -m collapse_passes MODEL.onnx [-o OUT.onnx] [--scores S.json --threshold T | --remove N] ...

Flags -> checks (validate_args, the output plan) -> one CollapseConfig -> api.collapse -> report ->
staged writes renamed in a fixed order. Exit codes: 0 written (or dry run), 1 verification failed
(at most the --report written), 2 bad input (one line, nothing written), 3 a bug (traceback),
128+signal when interrupted (the message says what was written). docs/file_safety.md has the list.
TVM is imported only when --target is given; the collapsed model is written before it runs.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .config import CollapseConfig
from .errors import BUG_REPORT, EXIT_BAD_INPUT, EXIT_BUG, CollapseError, VerificationError
from .outputs import (Interrupted, OutputPlan, finish_run, interrupt_guard, raise_if_interrupted,
                      rearm_signal_handlers, received_signal, tolerant_stdout)

METHODS = ("tlc", "easier", "prelu", "lacoot")
MAX_CHECK = 10_000


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
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
                   "model inputs, or a folder of .npy files; also used by the verification gate (with --check "
                   "random inputs in the data's range)")
    g.add_argument("--calib-batches", type=int, metavar="N", help="use at most N calibration batches")
    g.add_argument("--channel-regimes", action="store_true",
                   help="per-channel collapse (with --method easier / tlc): channels of a collapsed activation that "
                        "were always off take its off regime (0 for ReLU: then pruned), the rest its linear regime")
    g.add_argument("--save-scores", metavar="FILE.json", help="write the computed scores (editable, re-usable)")
    g.add_argument("--plot", metavar="FILE.png", help="plot per-layer scores with the threshold")
    g.add_argument("--remove-blocks", type=float, metavar="T",
                   help="with --method lacoot, or --scores of saved block scores (\"kind\": \"block\"): replace "
                        "residual blocks scoring <= T by their skip")
    g.add_argument("--target-speedup", type=float, metavar="S",
                   help="collapse lowest-scored activations first, skipping those whose collapse buys no predicted "
                        "speed-up (cost model on the merged graph), until the predicted speed-up reaches S")
    g.add_argument("--list-keys", action="store_true", help="list the activation keys of the model and exit")
    m = p.add_argument_group("merging")
    m.add_argument("--no-merge", action="store_true", help="do not merge linear chains (fold BN/affine only)")
    m.add_argument("--allow-border-approx", action="store_true",
                   help="also merge padded conv pairs whose merge is inexact on the border; the error is measured "
                        "(a non-finite one is refused)")
    m.add_argument("--approx-max-error", type=float, metavar="E",
                   help="with --allow-border-approx: fail if the measured max abs error exceeds E")
    m.add_argument("--cost", choices=("macs", "measured"), default="macs",
                   help="cost model for merge planning: MACs + per-op overhead (default), or op latencies measured "
                        "with onnxruntime on this machine")
    m.add_argument("--per-op-overhead", type=float, metavar="MACS",
                   help="MAC-equivalent cost of one extra op (default 20000)")
    pr = p.add_argument_group("channel pruning (docs/pruning.md)")
    pr.add_argument("--no-prune", action="store_true",
                    help="keep constant channels (by default they are removed exactly: zero filters before a ReLU, "
                         "zero-gamma BN)")
    pr.add_argument("--prune-calib-dead", action="store_true",
                    help="with --calib: also remove ReLU / ReLU6 / HardSwish channels that are 0 on every calibration sample "
                         "(approximate: exact on that data only; the error on random inputs is reported)")
    pr.add_argument("--prune-ratio", type=float, metavar="R",
                    help="also prune about R (0 <= R < 1) of the prunable channels, lowest importance first "
                         "(approximate: the error against the unpruned model is reported)")
    pr.add_argument("--prune-scope", choices=("global", "layer"), default="global",
                    help="rank channels across all layers (default) or take R of every layer")
    pr.add_argument("--prune-importance", default="l1", metavar="l1|l2|tlc|easier|FILE.json",
                    help="channel importance: L1/L2 norm of the filters (default l1), TLC/EASIER per-channel p_on, or "
                         'per-channel scores {"<tensor, node or torch module path>": [...]} (higher = keep)')
    pr.add_argument("--round-to", type=int, default=1, metavar="N",
                    help="keep every pruned layer's channel count a multiple of N (SIMD width) when pruning to a ratio "
                         "(default 1)")
    pr.add_argument("--prune-max-error", type=float, metavar="E",
                    help="refuse (unless --force) a ratio prune whose max abs error against the unpruned model exceeds E")
    v = p.add_argument_group("verification and output")
    v.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...",
                   help="sizes for the input's dynamic dims, e.g. input:1,3,224,224 (repeat per input; D0,D1,... "
                        "alone for a model with one input; a name such as N keeps that dim dynamic): MACs, merge "
                        "planning and the check use them, and the model written takes these sizes only")
    v.add_argument("--check", type=int, default=3, metavar="N",
                   help="random inputs for the check (default 3): floats standard normal (uniform in (0, 1] "
                   "when the input model outputs NaN/Inf on those), token ids over their table; a dynamic "
                   "height/width without --input-shape at 2 x the model's downsampling + 1; with --calib, "
                   "in the data's range after the data (0: the data alone)")
    # None: config.with_tolerances picks them
    v.add_argument("--rtol", type=float, default=None, help="default 1e-4 (float16 outputs: 1e-2)")
    v.add_argument("--atol", type=float, default=None, help="default 1e-5 (float16 outputs: 1e-3)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random check inputs (default 0)")
    v.add_argument("--force", action="store_true", help="write the model even if verification fails")
    v.add_argument("--dry-run", action="store_true", help="compute and report, write no model")
    v.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    v.add_argument("--eval", metavar="DATA.npz", help="labelled data (arrays named after the model inputs plus "
                   "'labels'): report top-1 accuracy and onnxruntime batch-1 latency of the original and the result")
    v.add_argument("-q", "--quiet", action="store_true", help="print only errors and the output path")
    v.add_argument("-v", "--verbose", action="store_true", help="show progress (e.g. TVM MetaSchedule tuning)")
    try:
        from tvm_integration.cli_hook import add_arguments
    except ImportError:
        pass
    else:
        known = set(id(a) for a in p._actions)
        add_arguments(p)
        # flags that mean something only with --target: refused without it (validate_args)
        p.tvm_flags = {a.dest: a.option_strings[-1] for a in p._actions
                       if id(a) not in known and a.option_strings and a.dest != "target"}
    return p


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2) like every other bad input."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def _finite(flag: str, v, minimum=0.0, why: str = "") -> None:
    if v is None:
        return
    if not math.isfinite(v) or v < minimum:
        raise CollapseError(f"{flag} must be a finite number >= {minimum:g}{why}, got {v}")


def _validate_prune_args(args) -> None:
    if args.prune_ratio is not None and not (math.isfinite(args.prune_ratio) and 0.0 <= args.prune_ratio < 1.0):
        raise CollapseError(f"--prune-ratio must be in [0, 1), got {args.prune_ratio} (0.3 removes 30% of the channels)")
    if args.round_to < 1:
        raise CollapseError(f"--round-to must be an integer >= 1, got {args.round_to} (1 = no rounding)")
    if args.prune_ratio is None:
        for flag, v, default in (("--round-to", args.round_to, 1), ("--prune-scope", args.prune_scope, "global"),
                                 ("--prune-importance", args.prune_importance, "l1"),
                                 ("--prune-max-error", args.prune_max_error, None)):
            if v != default:
                raise CollapseError(f"{flag} has an effect only with --prune-ratio; add --prune-ratio R or drop {flag}")
    _finite("--prune-max-error", args.prune_max_error)


def validate_args(args, parser: argparse.ArgumentParser) -> None:
    """Refuse values that cannot be meant, and flags that would be ignored, naming the flag that
    makes them meaningful. Runs before anything is read or written."""
    if args.list_keys:
        extra = [a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest not in
                 ("list_keys", "quiet", "verbose", "help") and getattr(args, a.dest, None) != a.default]
        if extra:
            raise CollapseError(f"--list-keys only lists the activation keys; drop {', '.join(extra)}")
        return
    _finite("--rtol", args.rtol)
    _finite("--atol", args.atol)
    if args.seed < 0:
        raise CollapseError(f"--seed must be >= 0, got {args.seed}")
    if args.check < (0 if args.calib is not None else 1):   # with --calib, 0 verifies on the data alone
        raise CollapseError(f"--check must be at least 1 (every result is verified; 0 only with --calib, to verify on "
                            f"the data alone), got {args.check}")
    if args.check > MAX_CHECK:   # each input is held in memory and run through both models
        raise CollapseError(f"--check must be at most {MAX_CHECK}, got {args.check}; verify on more data with --calib")
    if args.calib_batches is not None:
        if args.calib_batches < 1:
            raise CollapseError(f"--calib-batches must be at least 1 (omit it for the default), got {args.calib_batches}")
        if args.calib is None:
            raise CollapseError("--calib-batches has an effect only with --calib; add --calib FILE.npz or drop it")
    if args.approx_max_error is not None:
        if not args.allow_border_approx:
            raise CollapseError("--approx-max-error has an effect only with --allow-border-approx; add it or drop "
                                "--approx-max-error")
        _finite("--approx-max-error", args.approx_max_error)
    if args.per_op_overhead is not None:
        _finite("--per-op-overhead", args.per_op_overhead, why=" (the MAC-equivalent cost of one op in merge planning)")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise CollapseError(f"--threshold must be a finite number, got {args.threshold}")
    if args.remove is not None and args.remove < 1:
        raise CollapseError(f"--remove must be >= 1 (collapse the N lowest-scored activations), got {args.remove}; "
                            "leave it out to run only the exact clean-ups (folding, merging)")
    has_scores = args.scores is not None or args.method is not None
    for flag, v in (("--threshold", args.threshold), ("--remove", args.remove), ("--plot", args.plot),
                    ("--save-scores", args.save_scores)):
        if v is not None and not has_scores:
            raise CollapseError(f"{flag} needs scores: add --scores FILE.json or --method")
    if args.target_speedup is not None:
        if not (math.isfinite(args.target_speedup) and args.target_speedup > 0):
            raise CollapseError(f"--target-speedup must be a finite number > 0, got {args.target_speedup} "
                                "(1.5 = 1.5x faster predicted)")
        if not has_scores:
            raise CollapseError("--target-speedup needs scores: add --scores FILE.json or --method")
    if args.remove_blocks is not None and args.method != "lacoot":
        from .core.selection import block_scores_given

        if not (args.scores and block_scores_given(args.scores) is not None):
            raise CollapseError("--remove-blocks needs --method lacoot, or --scores with block scores it saved "
                                "(--save-scores)")
    if args.remove_blocks is not None and not math.isfinite(args.remove_blocks):
        raise CollapseError(f"--remove-blocks must be a finite number, got {args.remove_blocks}")
    if args.collapse is not None and not [k for k in args.collapse.split(",") if k.strip()]:
        raise CollapseError(f"--collapse {args.collapse!r} names no key; give KEY[,KEY...] (see --list-keys)")
    _validate_prune_args(args)
    if getattr(args, "quiet", False) and getattr(args, "verbose", False):
        # -v prints MetaSchedule's tuning tables on stdout, where -q promises the output path alone
        raise CollapseError("-q and -v contradict each other (-v prints progress on stdout, -q only the output "
                            "path); drop one of them")
    if args.dry_run:
        if args.output is not None:
            raise CollapseError("-o has no effect with --dry-run (no model is written); drop one of them")
        if args.force:
            raise CollapseError("--force has no effect with --dry-run (no model is written); drop one of them")
    if getattr(args, "target", None) is not None and not args.target.strip():
        raise CollapseError("--target is empty; give cpu, cuda, aarch64, a TVM target tag or a JSON target dict")
    if not getattr(args, "target", None):
        for dest, flag in getattr(parser, "tvm_flags", {}).items():
            if getattr(args, dest, None) != parser.get_default(dest):
                raise CollapseError(f"{flag} has an effect only with --target; add --target cpu (or another) "
                                    f"or drop {flag}")
    else:
        if not 0 <= (getattr(args, "tune_trials", 0) or 0) <= 2**31 - 1:   # MetaSchedule takes a C int
            raise CollapseError(f"--tune-trials must be in [0, {2**31 - 1}], got {args.tune_trials}")
        if getattr(args, "tvm_repeat", 1) is not None and not 1 <= getattr(args, "tvm_repeat", 1) <= MAX_CHECK:
            raise CollapseError(f"--tvm-repeat must be in [1, {MAX_CHECK}], got {args.tvm_repeat}")


def default_output(model: str) -> Path:
    src = Path(model)
    return src.with_name(src.stem + ".collapsed.onnx")


def add_data_output(plan: OutputPlan) -> None:
    """The model's external data file, `<model file>.data` beside it (OutputPlan.add_model_data)."""
    plan.add_model_data(f"{plan.outputs['model'].flag}'s data file")


def build_plan(args, source=None) -> OutputPlan:
    """Every file this run may read and write, checked before any work (collapse_passes.outputs).
    `source`: the input model already parsed (onnx/graph.ModelFile), for its external data files."""
    from .onnx.graph import needs_external_data

    plan = OutputPlan()
    plan.add_model_input(args.model, source.external_data if source is not None else None)
    plan.add_input("--scores file", args.scores)
    plan.add_input("--calib data", args.calib)
    plan.add_input("--eval data", args.eval)
    imp = getattr(args, "prune_importance", None)
    if isinstance(imp, str) and os.path.isfile(imp):
        plan.add_input("--prune-importance file", imp)
    if not args.dry_run:
        plan.add_output("model", "-o" if args.output else "the default output", args.output or default_output(args.model))
        if source is not None and needs_external_data(source.model, bool(source.external_data)):
            add_data_output(plan)
    plan.add_output("scores", "--save-scores", args.save_scores)
    plan.add_output("plot", "--plot", args.plot)
    plan.add_output("report", "--report", args.report)
    if getattr(args, "target", None):
        plan.add_output("export", "--export", getattr(args, "export", None), kind="dir")
        tune = getattr(args, "tune_dir", None)
        if tune is not None:   # "" is an empty path, refused as --export "" is (it meant the default folder)
            plan.add_output("tune", "--tune-dir", tune, kind="tree")
        else:  # cli_hook.default_tune_dir: <output or model stem>.tvm/<target>/
            base = args.output or args.model
            plan.add_output("tune", "the default tuning dir", os.path.splitext(base)[0] + ".tvm", kind="tree")
    plan.check()
    return plan


class _Run:
    plan: OutputPlan | None = None


def main(argv: list[str] | None = None) -> int:
    run = _Run()
    with interrupt_guard(), tolerant_stdout():   # a closed `| head` or /dev/full stdout changes no file, no exit code
        rc = _guarded_main(argv, run)
        finish_run(rc)   # from here a signal ends the process with rc (see __main__), not a traceback
    return rc


def console_main():
    """The `collapse-passes` script and `python -m collapse_passes` (pyproject [project.scripts], __main__.py):
    main() as the process's program. Takes SIGINT/SIGTERM over for the time outside main(), and leaves
    through outputs.leave_program: `sys.exit(main())` printed a TVM thread-pool traceback under the last line
    after an interrupted tuning run, and a signal during shutdown printed a KeyboardInterrupt traceback."""
    from .core import runtime
    from .outputs import leave_program, take_program_signals

    take_program_signals()
    runtime.OWN_PROCESS = True   # malloc may be tuned for onnxruntime's buffers (runtime._fix_mmap_threshold)
    leave_program(main())


def _guarded_main(argv, run: _Run) -> int:
    err = Console(stderr=True)
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)   # a usage error exits 2 here (SystemExit), one line
            console = Console(stderr=False, quiet=args.quiet)
            return _main(args, parser, console, err, run)
        except Exception as exc:
            cause = _interruption(exc)
            if cause is not None:   # e.g. a C extension's import wraps the signal in ImportError
                raise cause from None
            if received_signal() is not None:   # ... or TVM's FFI turned it into "TVM build failed: 15"
                raise Interrupted(received_signal()) from None
            raise
    except (KeyboardInterrupt, Interrupted) as exc:
        if run.plan is not None:
            run.plan.discard()
        signum = getattr(exc, "signum", signal.SIGINT)
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        err.print(f"interrupted ({name}); {run.plan.summary() if run.plan else 'nothing written'}",
                  highlight=False, markup=False, soft_wrap=True)
        return 128 + int(signum)
    except CollapseError as exc:
        err.print(f"[bold red]error:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except OSError as exc:  # a file the user named cannot be read or written: theirs to fix
        where = f"{exc.filename}: " if exc.filename else ""
        done = f"; {run.plan.summary()}" if run.plan else ""
        err.print(f"[bold red]error:[/] {escape(f'{where}{exc.strerror or exc}{done}')}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except Exception:
        traceback.print_exc()
        done = f" ({run.plan.summary()})" if run.plan else ""
        err.print(f"[bold red]internal error:[/] {escape(BUG_REPORT + done)}", highlight=False, soft_wrap=True)
        return EXIT_BUG
    finally:
        if run.plan is not None:
            run.plan.discard()


def _interruption(exc: BaseException):
    """The SIGINT/SIGTERM hidden in an exception's cause/context chain, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _why_no_activations(path) -> str:
    """Why --list-keys found nothing, where the file says: a quantized model (onnxruntime.quantization) keeps
    its ReLUs in the quantization ranges (QDQ) or inside QLinear ops, where no float activation is left."""
    import onnx

    try:
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception:
        return ""
    if ops & {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm"}:
        return (" (a quantized model: its activations are folded into the quantization ranges or QLinear ops); "
                "collapse the float model, then quantize the result")
    return ""


def _main(args, parser, console: Console, err: Console, run: _Run) -> int:
    from . import api
    from .report import print_report, report_json

    validate_args(args, parser)
    if args.list_keys:
        rows = api.list_keys(args.model)
        shown = lambda k: repr(k) if any(c in k for c in "\t\n\r\v\f") else k   # one line per activation
        sys.stdout.write("".join(f"{r['key']}\t{r['kind']}\t{', '.join(shown(k) for k in r['keys'] if k != r['key'])}\n"
                                 for r in rows))
        sys.stdout.flush()
        if not rows and not args.quiet:
            err.print(f"note: {args.model}: no activation to collapse{_why_no_activations(args.model)}",
                      highlight=False, markup=False, soft_wrap=True)
        return 0
    # the input is parsed once, here: the output checks need its external data files, the run its graph
    from .onnx.graph import load_model_file

    OutputPlan().add_input("input model", args.model)   # a FIFO or device is refused before it is read
    source = load_model_file(args.model)
    plan = run.plan = build_plan(args, source)
    if getattr(args, "target", None):
        _check_tvm_args(args, source.model)   # a bad --target is bad input: refused before any work
    if plan.removed_stale and not args.quiet:
        err.print(f"note: removed {len(plan.removed_stale)} temp file(s) left by an interrupted run: "
                  f"{', '.join(str(p) for p in plan.removed_stale[:5])}", highlight=False, markup=False, soft_wrap=True)
    cfg = CollapseConfig(
        scores=args.scores, threshold=args.threshold, remove=args.remove,
        collapse=[k for k in (args.collapse or "").split(",") if k], method=args.method,
        merge=not args.no_merge, allow_border_approx=args.allow_border_approx,
        approx_max_error=args.approx_max_error, cost=args.cost, per_op_overhead=args.per_op_overhead,
        check=args.check, calib=args.calib, calib_batches=args.calib_batches, rtol=args.rtol, atol=args.atol,
        force=args.force, seed=args.seed, remove_blocks=args.remove_blocks,
        prune=not args.no_prune, prune_ratio=args.prune_ratio, prune_scope=args.prune_scope,
        prune_importance=args.prune_importance, round_to=args.round_to, prune_max_error=args.prune_max_error,
        prune_calib_dead=args.prune_calib_dead, eval_data=args.eval, target_speedup=args.target_speedup,
        input_shapes=args.input_shape, channel_regimes=args.channel_regimes)
    try:
        result = api.collapse(source, config=cfg)
    except VerificationError as exc:
        if exc.report is not None:
            if not args.quiet:
                print_report(exc.report.report, console)
            if args.report:
                plan.stage("report", report_json(exc.report.report).encode())
                plan.commit(("report",))
                raise VerificationError(f"{_one_line(exc)}; only the report was written: {args.report}") from None
        raise
    report = result.report
    if not args.quiet:
        print_report(report, console)

    # stage everything, then rename in one fixed order: all of it lands, or none of it
    if plan.path("model") is not None:
        from .onnx.graph import external_data_pieces, needs_external_data, serialized_pieces

        if "model_data" not in plan.outputs and needs_external_data(result.model):   # grew past 2 GiB
            add_data_output(plan)
            plan.check()
        if "model_data" in plan.outputs:   # the input had external data, or the result needs it
            pieces, chunks = external_data_pieces(result.model, plan.path("model_data").name)
            plan.stage("model_data", chunks)
            plan.stage("model", pieces)
            report["output_data"] = plan.outputs["model_data"].given
        else:
            plan.stage("model", serialized_pieces(result.model))
        report["output"] = plan.outputs["model"].given
    if args.save_scores:
        plan.stage("scores", _scores_json(report).encode())
    if args.plot:
        from .report import plot_scores

        scores = _report_scores(report)
        if not scores:
            raise CollapseError("--plot: no scores to plot; give --scores or --method")
        thr = args.remove_blocks if args.method == "lacoot" else args.threshold
        plan.stage("plot", plot_scores(scores, thr, None, title=f"{Path(args.model).name}: collapse scores"))
    if args.report:   # staged with the rest: a report that cannot be written (ENOSPC) stops the model too
        plan.stage("report", report_json(report).encode())
    for o in plan.commit(("model_data", "model", "scores", "plot")):
        if o.role == "model_data":
            console.print(f"wrote {o.given} (the model's external data)", highlight=False)
        elif o.role == "model":
            why = ("ratio pruning error over --prune-max-error" if (report.get("pruning") or {}).get("refused")
                   else "verification failed")   # a refused ratio prune passed the gate: say what failed
            flag = f" [yellow]({why}, written because of --force)[/]" if not result.passed else ""
            console.print(f"wrote {o.given}{flag}", highlight=False)
        else:
            console.print(f"{o.role} written to {o.given}", highlight=False)
    if plan.path("model") is None:
        console.print("dry run: no model written")
    _say_if_nothing_changed(report, args, err, result)

    if getattr(args, "target", None):
        # the collapsed model is verified and written first: a TVM failure leaves it in place
        plan.tvm_started = True
        try:
            try:
                report["tvm"] = _run_tvm(args, result, console)
                # a signal whose Interrupted a TVM pass or MetaSchedule swallowed (the build went on): without
                # --report/--export nothing is renamed after TVM, so no commit would notice, and the run said 0
                raise_if_interrupted()
            finally:
                rearm_signal_handlers()   # LLVM took SIGINT/SIGTERM over during the build
        except CollapseError as exc:
            if received_signal() is not None:   # the TVM error is the interruption: no report about it
                raise Interrupted(received_signal()) from None
            report["tvm"] = {"error": _one_line(exc)}
            if args.report:
                plan.stage("report", report_json(report).encode())
                plan.commit(("report",))
            kind = type(exc)
            raise kind(f"{_one_line(exc)}; {plan.summary()}") from None
        if getattr(args, "export", None):
            plan.mark_written("export")
    if args.report:
        if getattr(args, "target", None):   # now with the TVM part
            plan.stage("report", report_json(report).encode())
        for o in plan.commit(("report",)):
            console.print(f"report written to {o.given}", highlight=False)
    if args.quiet and plan.path("model") is not None:
        print(plan.outputs["model"].given)
    return 0


def _say_if_nothing_changed(report: dict, args, err: Console, result=None) -> None:
    """A selection that selects nothing is not silent: exit 0, but say it on stderr."""
    removed = sum(1 for b in report.get("blocks", []) if b.get("removed"))
    pruning = report.get("pruning") or {}
    pruned = pruning.get("removed_channels") or (pruning.get("ratio") or {}).get("removed_channels")
    if report.get("collapsed") or report.get("folds") or report.get("merges") or removed or pruned:
        return
    if args.scores is None and args.method is None and not args.collapse:
        why = "no selection given (use --scores with --threshold/--remove, --collapse KEYS or --method)"
    else:
        why = "the selection chose no activation and nothing could be folded or merged"
    before, after = (report.get("before") or {}).get("nodes"), (report.get("after") or {}).get("nodes")
    if result is not None and result.original is not None and hasattr(result.model, "graph"):
        # the files' ops: the report's "before" counts the input with its size arithmetic folded (model_stats)
        ops = lambda m: sum(1 for n in m.graph.node if n.op_type not in ("Constant", "Identity"))   # noqa: E731
        before, after = ops(result.original), ops(result.model)
    # shape folding and dead-node clean-up still ran: "nothing" would hide the smaller graph written
    done = f"only exact clean-ups ran ({before} -> {after} nodes)" if before and after and after < before \
        else "collapsed, folded and merged nothing"
    err.print(f"note: this run {done}: {why}", highlight=False, markup=False, soft_wrap=True)


def _report_scores(report: dict) -> dict:
    """Per-activation scores, or per-block scores for LaCoOT."""
    s = {a["key"]: a["score"] for a in report["activations"] if a["score"] is not None}
    return s or {b["key"]: b["score"] for b in report.get("blocks", []) if b.get("score") is not None}


def _scores_json(report: dict) -> str:
    from .report import report_json

    scores = _report_scores(report)
    if not scores:
        raise CollapseError("--save-scores: no scores were computed or given; use --method")
    payload = {"scores": scores}
    if report.get("score_details"):
        payload["method"] = report["score_details"].get("method")
        payload["kind"] = report["score_details"].get("kind")   # "block": --scores reads them back as block scores
        payload["details"] = report["score_details"].get("details", {})
    return report_json(payload)


def _check_tvm_args(args, model) -> None:
    """The TVM hand-off's cheap checks (target, cross compiler, CUDA arch, RPC tracker, ops TVM's ONNX
    importer lacks), made before the collapse runs: otherwise a typo in --target surfaces only after
    the model has been written."""
    try:
        from tvm_integration.cli_hook import TVMError, check_args
    except ImportError as exc:
        raise CollapseError(f"--target needs the TVM extra: pip install '.[tvm]' ({exc})") from None
    try:
        check_args(args, model)
    except TVMError as exc:
        raise CollapseError(f"TVM: {exc}") from None
    finally:
        rearm_signal_handlers()   # LLVM may take SIGINT/SIGTERM over when the target is made


def _run_tvm(args, result, console):
    try:
        from tvm_integration.cli_hook import TVMError, run_from_args
    except ImportError as exc:
        raise CollapseError(f"--target needs the TVM extra: pip install '.[tvm]' ({exc})") from None
    from .core.runtime import index_ranges
    from .verify import random_inputs

    # the input drawn as the gate drew its own (dynamic dims at its sizes, token ids over their table): at 1 x 1 and
    # ids 0/1 TVM's check compared kernels' centre taps and two embedding rows
    feeds = random_inputs(result.original, 1, args.seed, shapes=getattr(result, "check_shapes", None),
                          dist=getattr(result, "check_dist", "normal"), ranges=index_ranges(result.original))[0]
    ver = result.report.get("verification") or {}
    for what in ("rtol", "atol"):   # the TVM check uses the tolerances the collapse was verified with
        if getattr(args, what, None) is None and ver.get(what) is not None:
            setattr(args, what, ver[what])
    try:
        return run_from_args(args, result.original, result.model, feeds, console=console)
    except TVMError as exc:
        # the TVM build of a verified model disagreeing with onnxruntime is a verification failure
        kind = VerificationError if getattr(exc, "is_mismatch", False) else CollapseError
        raise kind(f"TVM: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
