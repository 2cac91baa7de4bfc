"""Standalone entry: ``python -m tvm_integration MODEL.onnx --target cpu [...]``.

Compiles MODEL.onnx (or ``--collapsed C.onnx``, compared with MODEL.onnx) with
TVM, compares latencies with onnxruntime and optionally exports; the same
flags as ``collapse-passes --target``.  Inputs are random (seed 0) with
dynamic dimensions at the core check's sizes (height/width 2 x the model's downsampling + 1, batch 1), or at
``--input-shape NAME:D0,D1,...``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from .cli_hook import add_arguments, check_args, run_from_args
from .errors import TVMError

def random_inputs(model, seed: int = 0) -> dict[str, np.ndarray]:
    """One seeded random feed for the inputs of ``model``, drawn as the core's gate draws them: dynamic dims at
    the first sizes of core.runtime.check_size_ladder the model runs at, token ids over their table."""
    from collapse_passes.core.runtime import check_size_ladder, index_ranges, outputs
    from collapse_passes.core.runtime import random_inputs as feeds

    ladder, ranges = check_size_ladder(model), index_ranges(model)
    for sizes in ladder[:-1]:
        feed = feeds(model, 1, seed, shapes=sizes, ranges=ranges)[0]
        try:
            outputs(model, feed)
            return feed
        except Exception:   # noqa: BLE001 - the next sizes (a UNet's skip Concat runs only at aligned ones)
            continue
    return feeds(model, 1, seed, shapes=ladder[-1], ranges=ranges)[0]


def _input_mismatch(a, b) -> str | None:
    """Why models `a` and `b` cannot take the same inputs (names, element types, static sizes), or None."""
    from collapse_passes.calib import model_inputs

    ia, ib = ({n: (d, t) for n, d, t in model_inputs(m)} for m in (a, b))
    if set(ia) != set(ib):
        return f"take different inputs ({sorted(ia)} vs {sorted(ib)})"
    for name, (da, ta) in ia.items():
        db, tb = ib[name]
        if ta != tb or len(da) != len(db) or any(x is not None and y is not None and x != y for x, y in zip(da, db)):
            fmt = lambda d: "x".join("?" if x is None else str(x) for x in d)  # noqa: E731
            return (f"take input {name!r} as {fmt(da)} {np.dtype(ta).name} vs {fmt(db)} {np.dtype(tb).name}")
    return None


def _check_outputs(args) -> None:
    """The core CLI's output plan (collapse_passes.outputs.OutputPlan), before any build: --export and
    the tuning folder never name an input, a file, or a folder this tool did not make; raises CollapseError."""
    import os

    from collapse_passes.outputs import OutputPlan

    plan = OutputPlan()
    plan.add_model_input(args.model)
    if args.collapsed:
        plan.add_model_input(args.collapsed)
    plan.add_output("export", "--export", args.export, kind="dir")
    if args.tune_dir is not None:   # "" is an empty path, refused as --export "" is (it meant the default folder)
        plan.add_output("tune", "--tune-dir", args.tune_dir, kind="tree")
    else:   # cli_hook.default_tune_dir: <output stem>.tvm/<target>/
        plan.add_output("tune", "the default tuning dir", os.path.splitext(args.output)[0] + ".tvm", kind="tree")
    plan.check()


def _main(argv=None) -> int:
    from collapse_passes.cli import OneLineParser   # a usage error is one line, as every other bad input

    p = OneLineParser(prog="python -m tvm_integration", description=__doc__.splitlines()[0])
    p.add_argument("model", help="ONNX model (the input model)")
    p.add_argument("--collapsed", default=None, help="collapsed ONNX model (default: MODEL itself)")
    p.add_argument("--output", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--verbose", action="store_true", help="show MetaSchedule progress tables")
    p.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...",
                   help="sizes for dynamic input dims, e.g. input:1,3,224,224 (else checked and timed at the core "
                        "check's sizes: height/width 2 x the model's downsampling + 1, batch 1)")
    p.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance of the TVM-vs-onnxruntime check (default 1e-4, as the core CLI)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance of that check (default 1e-5)")
    add_arguments(p)
    args = p.parse_args(argv)
    if not args.target:
        p.error("--target is required")
    for flag, v in (("--rtol", args.rtol), ("--atol", args.atol)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            print(f"error: {flag} must be a finite number >= 0, got {v}", file=sys.stderr)
            return 2
    from collapse_passes.errors import CollapseError
    from collapse_passes.onnx.graph import load_model_file
    from collapse_passes.outputs import rearm_signal_handlers

    try:   # the core's loader: a missing, truncated or non-ONNX file is one line, not a traceback
        original = load_model_file(args.model).model
        collapsed = load_model_file(args.collapsed).model if args.collapsed else original
        if args.input_shape:   # both models compiled and timed at the sizes given
            from collapse_passes.onnx.shapes import fix_input_shapes, parse_input_shapes

            shapes = parse_input_shapes(args.input_shape)
            same = collapsed is original
            original = fix_input_shapes(original, shapes, in_place=True)
            collapsed = original if same else fix_input_shapes(collapsed, shapes, in_place=True)
    except CollapseError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.output is None:
        args.output = args.collapsed or args.model
    why = _input_mismatch(original, collapsed)
    if why:   # one random feed drives both models: onnxruntime raised a ValueError traceback here
        print(f"error: {args.model} and --collapsed {args.collapsed} {why}; compare two versions of one model",
              file=sys.stderr)
        return 2
    try:
        _check_outputs(args)
        check_args(args, collapsed)   # the cheap checks (target, cross compiler, ops) before any build
        rearm_signal_handlers()   # LLVM took SIGINT/SIGTERM over when the target was made (exit -15, no word)
        report = run_from_args(args, original, collapsed, random_inputs(collapsed))
    except CollapseError as e:
        _raise_if_signalled(e)
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except TVMError as e:
        _raise_if_signalled(e)   # a TVM output that differs from onnxruntime's is a failed check: 1, as the core CLI
        print(f"error: {e}", file=sys.stderr)
        return 1 if getattr(e, "is_mismatch", False) else 2
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _raise_if_signalled(exc) -> None:
    """TVM's FFI turns the Interrupted of a signal into an error of its own ("TVM build ... failed: 15")."""
    from collapse_passes.outputs import Interrupted, received_signal

    if received_signal() is not None:
        raise Interrupted(received_signal()) from exc


def _export_written_since(argv, t0: float) -> str | None:
    """The --export directory, if this run renamed it into place (its marker is newer than the run)."""
    import os

    from collapse_passes.outputs import EXPORT_MARKER

    q = argparse.ArgumentParser(add_help=False)
    q.add_argument("--export")
    exp = q.parse_known_args(sys.argv[1:] if argv is None else argv)[0].export
    try:
        return exp if exp and os.stat(os.path.join(exp, EXPORT_MARKER)).st_mtime >= t0 else None
    except OSError:
        return None


def main(argv=None) -> int:
    """_main under the core CLI's signal guard (collapse_passes.outputs): TVM's FFI swallowed the
    KeyboardInterrupt of a Ctrl-C (raised inside a pass or tuning callback) and the run went on for minutes,
    exported, and exited 0; SIGTERM killed it with no word. Now: exit 130/143 and what was written."""
    import signal
    import time

    from collapse_passes.outputs import (Interrupted, finish_run, interrupt_guard, rearm_signal_handlers,
                                         received_signal, tolerant_stdout)

    t0 = time.time()
    with interrupt_guard(), tolerant_stdout():   # --json into a closed pipe: no traceback after the export
        try:
            try:
                rc = _main(argv)
            finally:
                rearm_signal_handlers()
            if received_signal() is not None:   # swallowed on the way by TVM: the run went on to the end
                raise Interrupted(received_signal())
        except (KeyboardInterrupt, Interrupted, Exception) as exc:
            signum = getattr(exc, "signum", None) or received_signal()
            if signum is None and isinstance(exc, KeyboardInterrupt):
                signum = signal.SIGINT
            if signum is None:
                raise
            name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
            exp = _export_written_since(argv, t0)
            print(f"interrupted ({name}); {f'wrote {exp} (export)' if exp else 'nothing written'}; the TVM tuning "
                  "database may hold new records", file=sys.stderr)
            rc = 128 + int(signum)
        finish_run(rc)
    return rc


if __name__ == "__main__":
    from collapse_passes.outputs import leave_program, take_program_signals

    take_program_signals()   # outside main()'s guard: one line before it, the run's exit code after it

    # as the core CLI: sys.exit(main()) let interpreter finalization collect MetaSchedule's PopenPoolExecutor in
    # one of its own threads after an interrupted tuning run, a traceback under the last line
    leave_program(main())
