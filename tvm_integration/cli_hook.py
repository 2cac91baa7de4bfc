"""Glue called lazily by the ``collapse-passes`` CLI when the user passes ``--target``.

Interface (kept stable for the core CLI)::

    add_arguments(parser) -> None
    run_from_args(args, original_model, collapsed_model, inputs, console=None) -> dict
    TVMError  # raised with a one-line message; the CLI prints it and exits non-zero

Importing this module does not import TVM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np

from collapse_passes.config import TOLERANCE
from collapse_passes.outputs import EXPORT_MARKER  # marks a directory --export made (and may replace)

from .errors import TVMError
from .tuning import USEFUL_BUDGET

__all__ = ["TVMError", "TVMMismatchError", "add_arguments", "check_args", "run_from_args", "default_tune_dir",
           "atomic_directory", "EXPORT_MARKER"]


class TVMMismatchError(TVMError):
    """TVM's output of the collapsed model differs from onnxruntime's: a verification failure."""

    is_mismatch = True

DEFAULT_REPEAT = 20
#: seconds one TVM latency measurement may take before --tvm-repeat is lowered (compile.measure_latency)
TIMING_BUDGET_S = 10.0
REPORT_NAME = "report.json"
LIB_NAME = "model.so"
TUNING_SUBDIR = "tuning"
RTOL, ATOL = TOLERANCE  # defaults when the caller's args carry no --rtol/--atol: the gate's own


# --------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the TVM flags to the core CLI's parser (all optional; nothing happens without --target)."""
    g = parser.add_argument_group(
        "TVM compilation (needs apache-tvm; active only with --target)",
        "Compile the collapsed model with Apache TVM (Relax + MetaSchedule), compare "
        "latencies with onnxruntime and optionally export a deployable library.",
    )
    g.add_argument(
        "--target",
        metavar="NAME",
        default=None,
        help="cpu (host LLVM, detected -mcpu), cuda|gpu, aarch64|arm (cross-compiled with "
        "aarch64-linux-gnu-g++), a TVM target tag such as raspberry-pi/4b-aarch64, or a "
        'JSON target dict such as \'{"kind": "llvm", "num-cores": 4}\'',
    )
    g.add_argument(
        "--cuda-arch",
        metavar="SM",
        default=None,
        help="CUDA architecture for --target cuda, e.g. sm_90 (default: from nvidia-smi)",
    )
    g.add_argument(
        "--tune-trials",
        type=int,
        metavar="N",
        default=0,
        help="MetaSchedule trial budget for the collapsed model, then the same for the input "
        "model's kernels not tuned yet (default 0: no tuning; records already in --tune-dir "
        "are still applied)",
    )
    g.add_argument(
        "--tune-dir",
        metavar="DIR",
        default=None,
        help="persistent tuning database + logs (default: <output stem>.tvm/<target>/); "
        "a rerun with the same dir reuses the records and tunes only new tasks",
    )
    g.add_argument(
        "--rpc-tracker",
        metavar="HOST:PORT",
        default=None,
        help="measure tuning candidates on remote boards registered at this TVM RPC tracker",
    )
    g.add_argument("--rpc-key", metavar="KEY", default=None, help="device key at the RPC tracker")
    g.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="write DIR/model.so (weights bound), DIR/tuning/ and DIR/report.json atomically",
    )
    g.add_argument(
        "--tvm-layout",
        choices=["NCHW", "NHWC"],
        type=str.upper,
        default=None,
        help="convolution layout TVM tunes and builds (default NCHW, the imported one; "
        "NHWC measured no faster on this project's CPU benchmark, see docs/tvm.md)",
    )
    g.add_argument(
        "--tvm-repeat",
        type=int,
        metavar="N",
        default=None,
        help=f"latency measurements per model and backend, median reported (default {DEFAULT_REPEAT}, and "
        f"fewer, at least 3, for a TVM build that takes over {TIMING_BUDGET_S / DEFAULT_REPEAT:g} s a call; "
        "a number given is kept)",
    )


# --------------------------------------------------------------------------- helpers


def _say(console, msg: str) -> None:
    if console is None:
        print(msg, file=sys.stderr)
    elif hasattr(console, "print"):
        try:  # rich.Console: no markup ('["cpu"]' in target JSON would be eaten as a tag)
            console.print(msg, markup=False, highlight=False)
        except TypeError:
            console.print(msg)
    elif callable(console):
        console(msg)
    else:  # file-like
        console.write(msg + "\n")


def _path_arg(args, names) -> str | None:
    for n in names:
        v = getattr(args, n, None)
        if isinstance(v, (str, os.PathLike)) and os.fspath(v):
            return os.fspath(v)
    return None


def default_tune_dir(args, target_info) -> str:
    """``--tune-dir`` if given, else ``<output stem>.tvm/<target>/``.

    The output path is looked up on ``args`` as ``output``/``out``/
    ``output_path``; without one, the input model path (``model``/``input``/
    ``model_path``) is used, and as a last resort ``./tvm_tune/<target>/``.
    """
    from .targets import target_slug

    # realpath, as the core CLI's output plan resolves it (collapse_passes.outputs): abspath drops `link/..`
    # textually, so the run wrote somewhere other than the folder the plan had checked
    if getattr(args, "tune_dir", None):
        return os.path.realpath(os.fspath(args.tune_dir))
    slug = target_slug(target_info)
    base = _path_arg(args, ("output", "out", "output_path")) or _path_arg(
        args, ("model", "input", "model_path", "input_model")
    )
    if base:
        return os.path.join(os.path.realpath(os.path.splitext(os.fspath(base))[0] + ".tvm"), slug)
    return os.path.abspath(os.path.join("tvm_tune", slug))


def check_args(args, model=None) -> None:
    """The cheap checks of run_from_args (target, cross compiler, CUDA arch, RPC tracker, and the ops of
    `model`, the input ONNX model, that TVM's importer lacks), for the core CLI to make before any work:
    a typo in --target is bad input (exit 2, nothing written), not a TVM failure after minutes of
    collapsing. Raises TVMError."""
    from .compile import check_onnx_ops
    from .targets import resolve_target
    from .tuning import check_tracker

    if not str(getattr(args, "target", "") or "").strip():
        raise TVMError("--target is empty; give cpu, cuda, aarch64, a TVM target tag or a JSON target dict")
    if getattr(args, "rpc_key", None) and not getattr(args, "rpc_tracker", None):
        raise TVMError("--rpc-key needs --rpc-tracker HOST:PORT")
    target, info = resolve_target(args.target, getattr(args, "cuda_arch", None))
    if getattr(args, "cuda_arch", None) and info.kind != "cuda":   # would be ignored: say so, as for other flags
        raise TVMError(f"--cuda-arch applies to CUDA targets only, not {info.name!r}; drop it or pass --target cuda")
    from .tuning import check_database_target

    # a --tune-dir tuned for another target would be built into this one's library: refused before any work
    check_database_target(default_tune_dir(args, info), target)
    if getattr(args, "rpc_tracker", None):
        check_tracker(args.rpc_tracker, getattr(args, "rpc_key", None))
    elif int(getattr(args, "tune_trials", 0) or 0) > 0 and not info.runs_on_host:   # as tune_with_report says
        raise TVMError(f"cannot tune for {info.name!r} here: this machine cannot run it; pass --rpc-tracker "
                       "HOST:PORT --rpc-key KEY to measure on a device, or --tune-trials 0")
    if model is not None:
        check_onnx_ops(model)


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike):
    """Yield a temp dir next to ``final_dir``; rename it to ``final_dir`` only on success.

    On an exception nothing is left behind (the temp dir is removed and an
    existing ``final_dir`` is untouched).  The directory gets an
    ``EXPORT_MARKER`` file; an existing ``final_dir`` is replaced on success
    only if it carries that marker (made by this tool), never otherwise.
    Temp and backup dirs carry names the next CLI run recognises and removes
    if this process is killed (collapse_passes.outputs.temp_path).
    """
    from collapse_passes.outputs import (_foreign_entries, note_dir_renamed, raise_if_interrupted, signals_blocked,
                                         temp_path)

    # symlinks resolved, as the core CLI's output plan resolves --export (collapse_passes.outputs): a link
    # to an export directory is written through (the link stays), not refused after the whole TVM run
    final = os.path.realpath(os.fspath(final_dir))
    parent, base = os.path.split(final)
    if os.path.lexists(final) and not (os.path.isdir(final) and not os.path.islink(final)
                                       and os.path.isfile(os.path.join(final, EXPORT_MARKER))):
        raise TVMError(f"{final} exists and was not made by this tool (no {EXPORT_MARKER} marker); "
                       "export into a new directory")
    foreign = _foreign_entries(Path(final)) if os.path.isdir(final) else []
    if foreign:   # an earlier export holding the user's own files: replacing it would delete them
        raise TVMError(f"{final} holds files an export does not write ({', '.join(foreign[:3])}); move them out "
                       "or export into a new directory")
    if not os.path.isdir(parent):   # a folder nobody asked for is not made (the CLI's output plan refuses it too)
        raise TVMError(f"cannot export to {final}: folder {parent} does not exist; create it first or choose "
                       "another path")
    tmp = None
    try:   # from before the mkdir: a signal between it and the cleanup's start left the temp dir behind
        with signals_blocked():
            made = os.fspath(temp_path(final, "tmpdir"))
            os.mkdir(made)  # mode 0777 & ~umask, like a plain mkdir
            tmp = made
        with open(os.path.join(tmp, EXPORT_MARKER), "w") as f:
            f.write("made by collapse_passes --export; a later --export to this path replaces this directory\n")
        yield tmp
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    try:
        raise_if_interrupted()   # a signal whose Interrupted a library swallowed: nothing lands
        # held from the first rename to the record of the last: a signal between them (or before the caller
        # learnt of it) said the export was not written although it had been renamed into place
        with signals_blocked():
            if os.path.lexists(final):
                backup = os.fspath(temp_path(final, "old"))
                os.replace(final, backup)
            os.replace(tmp, final)
            note_dir_renamed(final)
    except BaseException:
        if backup is not None and not os.path.lexists(final):
            os.replace(backup, final)
            backup = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


#: TVM's float32 output may be this many times further from the float64 value than onnxruntime's own
#: float32 output is (two correct float32 programs round their sums differently; a miscompile is off by
#: O(1) relative, orders of magnitude more)
FLOAT32_NOISE_FACTOR = 4.0


def _compare(got: list[np.ndarray], ref: list[np.ndarray], rtol: float = RTOL, atol: float = ATOL,
             model=None, inputs: Mapping[str, np.ndarray] | None = None, target=None) -> dict[str, Any]:
    """TVM's outputs against onnxruntime's, with the verification's tolerance rule (core.runtime).
    When that fails and `model`/`inputs` are given, a float64 look (like the core verification's): deep
    BatchNorm-scaled nets (EfficientNet with random weights: outputs ~1e3) make two correct float32
    programs differ by more than rtol; TVM passes when it is as close to the float64 value as
    onnxruntime's float32 is (FLOAT32_NOISE_FACTOR). With `target` (a host target), a TVM output still
    further off gets a float64 TVM build of the model (_float64_look)."""
    from collapse_passes.core.runtime import compare_outputs

    c = compare_outputs(got, ref, rtol, atol)
    if c.why:
        return {"ok": False, "max_abs_err": None, "why": c.why}
    out = {"ok": c.passed, "max_abs_err": c.max_abs, "max_rel_err": c.max_rel, "rtol": rtol, "atol": atol}
    if not c.passed and model is not None and inputs is not None:
        look = _float64_look(got, ref, model, inputs, rtol, atol, target)
        if look is not None:
            out["float64_look"] = look
            out["ok"] = look["ok"]
    return out


def _f64_note(check: Mapping[str, Any]) -> str:
    f = check.get("float64_look")
    if not f:
        return ""
    text = (f"; in float64 terms TVM is off by max rel {f['tvm_max_rel_vs_float64']:.3g}, onnxruntime's float32 "
            f"by {f['onnxruntime_max_rel_vs_float64']:.3g}")
    b = f.get("tvm_float64_build_max_rel_vs_float64")
    if b is not None:
        text += f", TVM's float64 build by {b:.3g}"
    return text


def _float64_pass_notes(verification: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One note per check that failed the user's --rtol/--atol and passed only on the float64 look: a pass
    the user must hear about, with both numbers, as the core verification's float64 look says it."""
    notes = []
    for name, c in verification.items():
        if c.get("ok") and c.get("float64_look") and c.get("max_rel_err") is not None:
            notes.append(f"{name}: max abs {c['max_abs_err']:.3g}, max rel {c['max_rel_err']:.3g} is outside rtol "
                         f"{c['rtol']:g} / atol {c['atol']:g}; passed as float32 rounding{_f64_note(c)}")
    return notes


#: with its own float64 build right, TVM's float32 output may be this many times further from the float64
#: value than onnxruntime's float32 (an ill-conditioned collapsed model: one input's rounding can land 8x
#: further in one program than in another, and the other way on the next input); a miscompile is O(1)
FLOAT64_BUILD_FACTOR = 32.0


def _float64_look(got, ref, model, inputs, rtol: float, atol: float, target=None) -> dict[str, Any] | None:
    """TVM's and onnxruntime's float32 outputs against the model evaluated in float64 (onnx's reference
    evaluator, collapse_passes.verify); None when the evaluator cannot run the model.

    Which of two correct float32 programs lands closer to the float64 value on one input is luck: on a
    MobileNetV3-small with three activations collapsed (outputs ~150, merges refused as ill-conditioned)
    TVM was 8x further than onnxruntime on one input and onnxruntime 7x further than TVM on another, so a
    FLOAT32_NOISE_FACTOR bound alone failed a correct compile (exit 1, nothing exported). Given the
    `target` the output came from, a TVM output outside that bound is judged by TVM's float64 build of the
    same model: when that build is within the bound (TVM computes the model's function) and the float32
    output within FLOAT64_BUILD_FACTOR of onnxruntime's distance, the gap is float32 rounding."""
    from collapse_passes.core.runtime import compare_outputs
    from collapse_passes.verify import _reference_run

    feeds = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v for k, v in inputs.items()}
    try:
        with np.errstate(all="ignore"):   # sigmoid overflow in the evaluator is not the user's business
            r64 = _reference_run(model, [feeds])[0]
    except Exception:  # noqa: BLE001 - an op the float64 evaluator lacks: no second look
        return None
    tvm64, ort64 = compare_outputs(got, r64, rtol, atol), compare_outputs(ref, r64, rtol, atol)
    if tvm64.why or ort64.why:
        return None
    bound = max(rtol, FLOAT32_NOISE_FACTOR * ort64.max_rel)
    look = {"ok": bool(tvm64.passed or tvm64.max_rel <= bound), "tvm_max_rel_vs_float64": tvm64.max_rel,
            "onnxruntime_max_rel_vs_float64": ort64.max_rel, "factor": FLOAT32_NOISE_FACTOR}
    if look["ok"] or target is None or tvm64.max_rel > max(rtol, FLOAT64_BUILD_FACTOR * ort64.max_rel):
        return look
    built = _float64_build_max_rel(model, feeds, r64, target, rtol, atol)
    if built is not None:
        look["tvm_float64_build_max_rel_vs_float64"] = built
        look["ok"] = bool(built <= bound)
    return look


def _float64_build_max_rel(model, feeds, r64, target, rtol: float, atol: float) -> float | None:
    """Max rel of TVM's float64 build of `model` (untuned, for the shapes of `feeds`) against `r64`; None
    when TVM cannot import, build or run the model in float64 (then the float32 verdict stands)."""
    from collapse_passes.core.runtime import compare_outputs
    from collapse_passes.verify import as_float64

    from . import compile as tc

    try:
        mod = tc.import_onnx(as_float64(model), {k: list(np.shape(v)) for k, v in feeds.items()})
        got = tc.run(tc.build(mod, target), feeds)
    except Exception:  # noqa: BLE001 - a float64 gap of TVM's: no rescue, the float32 verdict stands
        return None
    c = compare_outputs(got, r64, rtol, atol)
    return None if c.why else float(c.max_rel)


def _library_to_export(ex_untuned, ex_tuned, latency: Mapping[str, float | None]):
    """(executable, note or None): the tuned build, unless both were timed here and it is the slower one.

    A small budget gives a few kernels the best of a handful of random schedules, which can be far slower
    than TVM's default ones (8 trials on MobileNetV3-small: 2.1 ms tuned, 0.39 ms untuned); exporting it
    would ship the slower library the run itself measured."""
    if ex_tuned is None:
        return ex_untuned, None
    tuned, untuned = latency.get("tvm_tuned"), latency.get("tvm_untuned")
    if tuned is None or untuned is None or tuned <= untuned:
        return ex_tuned, None
    return ex_untuned, (f"the tuned build measured slower than the untuned one ({tuned:.3f} ms vs {untuned:.3f} ms): "
                        "exported the untuned library; raise --tune-trials")


def _compile_both(tc, original_model, collapsed_model, inputs, target, layout, notes: list[str], seconds: dict,
                  stage_done, tuning: bool = False):
    """(Relax module, untuned build) of both models, and whether they were made static. A model with a dynamic
    input size that TVM cannot import or build (a TorchScript Swin's Shape -> Reshape chains at import; a
    torch.export Swin's symbolic batch at build: "VarRemapGet(source) == nullptr") is compiled, with the
    other, for the sizes timed here (both alike, so the comparison holds); the library then takes those
    sizes only, which the notes say. With `tuning` (--tune-trials > 0) a dynamic model is compiled for those
    sizes from the start: MetaSchedule tunes fixed shapes."""
    from collapse_passes.onnx.shapes import dynamic_inputs, input_shapes_text

    def short(m):   # a TVM error, on one line and not a page of it
        m = " ".join(str(m).split())
        return m if len(m) <= 160 else m[:157] + "..."

    # one model given twice (the standalone entry without --collapsed, a collapse that changed nothing): imported
    # and built once, not twice (a Swin build is tens of seconds on 2 cores)
    same = _same_model(original_model, collapsed_model)

    def both(shapes):
        t0 = time.perf_counter()
        mod_o = tc.import_onnx(original_model, shapes)
        mods = mod_o, (mod_o if same else tc.import_onnx(collapsed_model, shapes))
        seconds["import"] = time.perf_counter() - t0
        stage_done()   # a signal TVM swallowed ends the run here, not after every later stage (minutes of tuning)
        t0 = time.perf_counter()
        ex_o = tc.build(mods[0], target, layout=layout)
        exs = ex_o, (ex_o if same else tc.build(mods[1], target, layout=layout))
        seconds["build_untuned"] = time.perf_counter() - t0
        stage_done()
        return mods, exs

    dynamic = dynamic_inputs(collapsed_model, batch=True) or dynamic_inputs(original_model, batch=True)
    why = None
    if not (dynamic and tuning):   # MetaSchedule tunes static shapes (a symbolic batch fails inside it, "old_rv")
        try:
            mods, exs = both(None)
            return (*mods, *exs, False)
        except TVMError as e:
            if not dynamic:
                raise
            why = str(e)
    shapes = {k: list(v.shape) for k, v in inputs.items()}
    sizes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items())
    try:
        mods, exs = both(shapes)
    except TVMError as e:
        # failed at the sizes timed too (a dynamic H/W Swin timed at 1x1, where its patch embedding has
        # nothing): the way out is a size the model takes
        raise TVMError("TVM cannot compile this dynamic-size model "
                       + ("" if why is None else f"with its dynamic sizes ({short(why)}) nor ")
                       + f"for the sizes timed, {sizes} ({short(e)}); --input-shape NAME:D0,D1,... gives a "
                       "size it takes") from None
    lead = ("MetaSchedule tunes fixed sizes only" if why is None else
            f"TVM cannot compile the dynamic input size ({input_shapes_text(collapsed_model)})")
    notes.append(f"{lead}: compiled for {sizes}, which the TVM library takes only (--input-shape NAME:D0,D1,... "
                 "chooses the size)" + ("" if why is None else
                                        f"; dynamic, it failed with: {short(why)}"))
    return (*mods, *exs, True)


def _same_model(original_model, collapsed_model) -> bool:
    """Whether the two models are one (the same object, or the same bytes; a proto over protobuf's 2 GiB cannot be
    serialized: compared as two)."""
    if original_model is collapsed_model:
        return True
    try:
        return original_model.SerializeToString() == collapsed_model.SerializeToString()
    except ValueError:
        return False


def _from_database_only(tune_report: dict, ex, trials: int, tune_dir: str, which: str, console,
                        say: bool = True) -> None:
    """With --tune-trials 0 the run tunes nothing and tune_with_report lists no task, yet the build applies every
    record of --tune-dir that matches: the report said `tasks_from_database: []` and the console nothing while
    the tuned column came from the database. Every kernel built from it is such a task (tasks are named after
    the kernels they tune)."""
    if trials or not ex.tuned_functions:
        return
    names = list(ex.tuned_functions)
    tune_report["tasks_from_database"] = names
    if say:
        _say(console, f"TVM: {which} model: {len(names)} kernel(s) built from the tuning database in {tune_dir} "
                      f"(--tune-trials 0 tunes nothing): {', '.join(names[:4])}" + (" ..." if len(names) > 4 else ""))


def _note_unreplayable(ex, which: str, notes: list[str]) -> None:
    """Say which kernels kept their default schedule because their record (tuned on the same conv / matmul
    with another epilogue) does not replay on them (compile._replayable_only)."""
    names = getattr(ex, "unreplayable", None)
    if names:
        notes.append(f"{which} model: {len(names)} kernel(s) left untuned, their tuning record (the same anchor "
                     f"op with another epilogue) does not apply to them: {', '.join(names[:4])}"
                     + (" ..." if len(names) > 4 else ""))


#: what the docs measured for a tuning budget (docs/tvm.md "Measured latency", runs E, F, H, I, L, M), said with the
#: slowdown notes: before 2026-11-29 they claimed "512 trials tuned a MobileNetV2 in about 20 minutes", which no
#: run measured
TUNING_BUDGET_FACT = USEFUL_BUDGET + "; the input model is tuned with the same budget after it"


def _slowdown_notes(latency: Mapping[str, float | None], tune_report: Mapping[str, Any] | None, trials: int,
                    seconds: Mapping[str, float], export: bool = False) -> list[str]:
    """What the user must hear when TVM (its best build of the collapsed model) is far slower than onnxruntime:
    how far, why, and what a budget that helps costs (TUNING_BUDGET_FACT); and, without --export (whose own note
    says it, _library_to_export), a tuned build slower than the untuned one: 2 trials gave a 4 -> 4 1x1 conv a
    9.7 ms schedule, the tuned model ran 23.5 ms against 0.009 ms untuned, and no note said so."""
    notes = []
    tuned, untuned = latency.get("tvm_tuned"), latency.get("tvm_untuned")
    if not export and tuned is not None and untuned is not None and tuned > untuned:
        notes.append(f"the tuned build measured slower than the untuned one ({tuned:.3f} ms vs {untuned:.3f} ms): "
                     "too few trials leave kernels with schedules worse than TVM's defaults; raise --tune-trials")
    slow = _untuned_slowdown(latency)
    if slow is not None:
        return notes + [f"untuned TVM is {slow:.0f}x slower than onnxruntime here: without tuning TVM compiles loop "
                        f"nests with default schedules; --tune-trials N tunes its kernels ({TUNING_BUDGET_FACT})"]
    slow = _tuned_slowdown(latency)
    if slow is None or tune_report is None:
        return notes
    if trials:
        tunable = [t for t in tune_report.get("tasks", []) if not t.get("skipped")]
        untried = sum(1 for t in tunable if t.get("best_us") is None)
        done = (f"{trials} trial(s) over {len(tunable)} tunable kernel(s)"
                + (f", {untried} of them without a measured schedule" if untried else "")
                + f", {seconds.get('tune', 0) + seconds.get('tune_original', 0):.0f} s of tuning")
    else:
        done = "built from the records already in --tune-dir (--tune-trials 0 tunes nothing)"
    return notes + [f"tuned TVM is still {slow:.0f}x slower than onnxruntime here ({done}); MetaSchedule needs tens "
                    f"of trials per kernel ({TUNING_BUDGET_FACT}); raise --tune-trials (a rerun with the same "
                    "--tune-dir keeps these records)"]


def _tuned_slowdown(latency: Mapping[str, float | None]) -> float | None:
    """How many times slower than onnxruntime the best TVM build ran when a tuned one was timed and even the best
    is slower: 32 trials over MobileNetV3-small's 49 kernels (25 minutes at load 7) left tuned TVM 25x and untuned
    12x behind onnxruntime, and the run said only "raise --tune-trials", not how far off TVM was."""
    ort, tuned, untuned = latency.get("onnxruntime"), latency.get("tvm_tuned"), latency.get("tvm_untuned")
    if tuned is None or not ort:
        return None
    best = min(v for v in (tuned, untuned) if v is not None)
    return best / ort if best > 1.5 * ort else None


def _untuned_slowdown(latency: Mapping[str, float | None]) -> float | None:
    """How many times slower than onnxruntime the untuned build ran, when nothing tuned was timed and it
    is slower: a user who ran --target without --tune-trials should learn that tuning is the way to speed."""
    ort, untuned = latency.get("onnxruntime"), latency.get("tvm_untuned")
    if latency.get("tvm_tuned") is not None or not ort or not untuned or untuned <= 1.5 * ort:
        return None
    return untuned / ort


def _model_summary(model) -> dict[str, Any]:
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"nodes": len(model.graph.node), "ops": dict(sorted(ops.items()))}


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(float(a) / float(b), 3)


# --------------------------------------------------------------------------- main entry


def run_from_args(
    args,
    original_model,
    collapsed_model,
    inputs: Mapping[str, np.ndarray],
    console=None,
) -> dict:
    """Compile (and tune) the collapsed model with TVM, compare, optionally export.

    Returns the dict written to ``<export>/report.json``.  Raises
    :class:`TVMError` with a one-line message on user-fixable problems.
    """
    if not getattr(args, "target", None):
        raise TVMError("--target is required for the TVM path")
    try:
        import tvm  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise TVMError(
            f"--target needs Apache TVM ({e}); install the extra: pip install '.[tvm]'"
        ) from None

    from collapse_passes.outputs import raise_if_interrupted as stage_done

    from . import compile as tc
    from .targets import host_cpu_name, resolve_target
    from .tuning import check_tracker, tune_with_report

    t_all = time.perf_counter()
    from collapse_passes.cli import MAX_CHECK   # the core CLI's bound (validate_args): one limit for both CLIs

    given = getattr(args, "tvm_repeat", None)
    # 0 ran as the default, -3 as 1, and 10**8 timed for hours (python -m tvm_integration)
    if given is not None and not 1 <= int(given) <= MAX_CHECK:
        raise TVMError(f"--tvm-repeat must be in [1, {MAX_CHECK}], got {given}")
    from collapse_passes.core.runtime import empty_check_input

    empty = empty_check_input([inputs])
    if empty:   # a model fixed at [0, C]: TVM and onnxruntime "agreed" on zero elements (max abs 0)
        raise TVMError(f"check input {empty[0]!r} has shape {empty[1]}, no elements, so TVM's output check compares "
                       f"nothing; give it at least 1 in every dim (--input-shape {empty[0]}:D0,D1,... for a dynamic "
                       "dim; a dim the model fixes at 0 needs a re-export with it dynamic)")
    repeat = max(1, int(given or DEFAULT_REPEAT))
    budget = None if given else TIMING_BUDGET_S   # the user's own --tvm-repeat is kept, however slow a call
    trials = int(getattr(args, "tune_trials", 0) or 0)
    rpc_tracker = getattr(args, "rpc_tracker", None)
    rpc_key = getattr(args, "rpc_key", None)
    export_dir = getattr(args, "export", None)
    # the user's tolerances (--rtol/--atol) decide whether TVM's output matches onnxruntime's
    rtol = float(getattr(args, "rtol", None) if getattr(args, "rtol", None) is not None else RTOL)
    atol = float(getattr(args, "atol", None) if getattr(args, "atol", None) is not None else ATOL)
    if trials < 0:
        raise TVMError(f"--tune-trials must be >= 0, got {trials}")
    if rpc_key and not rpc_tracker:
        raise TVMError("--rpc-key needs --rpc-tracker HOST:PORT")

    # 1. Cheap checks first: target, cross compiler, tracker.
    target, info = resolve_target(args.target, getattr(args, "cuda_arch", None))
    rpc_info = None
    if rpc_tracker:
        rpc_info = check_tracker(rpc_tracker, rpc_key)
    tune_dir = default_tune_dir(args, info)
    _say(console, f"TVM: target {info.name} -> {json.dumps(info.target_json, separators=(',', ':'))}")

    inputs = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
    seconds: dict[str, float] = {}

    layout = getattr(args, "tvm_layout", None)

    # 2. Import both models, 3. untuned builds (for the sizes timed, when TVM cannot take a dynamic size).
    notes: list[str] = []
    mod_orig, mod_coll, ex_orig, ex_coll, made_static = _compile_both(
        tc, original_model, collapsed_model, inputs, target, layout, notes, seconds, stage_done, tuning=trials > 0)

    latency: dict[str, dict[str, float | None]] = {
        "original": {"onnxruntime": None, "tvm_untuned": None, "tvm_tuned": None},
        "collapsed": {"onnxruntime": None, "tvm_untuned": None, "tvm_tuned": None},
    }
    verification: dict[str, Any] = {}
    from collapse_passes.onnx.shapes import dynamic_inputs

    dynamic = dynamic_inputs(collapsed_model)
    if dynamic and not made_static:
        sizes = ", ".join(f"{k} {'x'.join(map(str, np.shape(v)))}" for k, v in inputs.items())
        notes.append(f"dynamic input size ({', '.join(dynamic)}): compiled for it and checked and timed at {sizes}; "
                     "--input-shape NAME:D0,D1,... compiles and times a real size")
    ref_coll = tc.run_ort(collapsed_model, inputs)
    shortened: list[str] = []

    def timed(ex, model, build):
        """TVM latency of one build, within TIMING_BUDGET_S unless --tvm-repeat was given (a slow untuned
        build gets fewer repeats)."""
        st: dict = {}
        ms = tc.measure_latency(ex, inputs, repeat=repeat, budget_s=budget, stats=st)
        if st["repeat"] < repeat:
            shortened.append(f"{model} {build} ({st['first_call_ms'] / 1e3:.1f} s a call: {st['repeat']})")
        return ms
    latency["original"]["onnxruntime"] = tc.measure_ort_latency(original_model, inputs, repeat=repeat)
    latency["collapsed"]["onnxruntime"] = tc.measure_ort_latency(collapsed_model, inputs, repeat=repeat)

    if info.runs_on_host:
        got = tc.run(ex_coll, inputs)
        verification["collapsed_tvm_untuned_vs_onnxruntime"] = _compare(got, ref_coll, rtol, atol,
                                                                          collapsed_model, inputs, target)
        latency["original"]["tvm_untuned"] = timed(ex_orig, "original", "untuned")
        latency["collapsed"]["tvm_untuned"] = timed(ex_coll, "collapsed", "untuned")
    else:
        # nothing of TVM ran here: "verified" would be read into an export that no check ever saw
        notes.append(f"target {info.name} does not run on this host: TVM's output was not checked against "
                     "onnxruntime and its latencies not measured here; run the library on the device and compare it "
                     "with the collapsed ONNX model")

    stage_done()
    # 4. Tuning (also picks up an existing database when trials == 0).
    tune_report = None
    ex_tuned = None
    t0 = time.perf_counter()
    def _tune(mod, label):
        # the collapsed and the input model share one work dir, so shared kernels are tuned once
        return tune_with_report(mod, target, info, work_dir=tune_dir, trials=trials, rpc_tracker=rpc_tracker,
                                rpc_key=rpc_key, progress=bool(getattr(args, "verbose", False)), layout=layout,
                                log=lambda m: _say(console, label + m))

    db, rep = _tune(mod_coll, "TVM: ")
    seconds["tune"] = time.perf_counter() - t0
    stage_done()
    tune_report = rep.to_dict()
    tune_report["estimated_total_us_from_records"] = rep.estimated_total_us()
    if db is not None:
        t0 = time.perf_counter()
        ex_tuned = tc.build(mod_coll, target, database=db, layout=layout)
        seconds["build_tuned"] = time.perf_counter() - t0
        tune_report["tuned_functions"] = ex_tuned.tuned_functions
        tune_report["untuned_functions"] = ex_tuned.untuned_functions
        _from_database_only(tune_report, ex_tuned, trials, tune_dir, "collapsed", console)
        if not ex_tuned.tuned_functions:
            notes.append("the tuning database had no record for this model: tuned == untuned")
        _note_unreplayable(ex_tuned, "collapsed", notes)
        if info.runs_on_host:
            got = tc.run(ex_tuned, inputs)
            verification["collapsed_tvm_tuned_vs_onnxruntime"] = _compare(got, ref_coll, rtol, atol,
                                                                            collapsed_model, inputs, target)
            latency["collapsed"]["tvm_tuned"] = timed(ex_tuned, "collapsed", "tuned")
        stage_done()

    # 4b. The input model, for the comparison: same database and work dir, so
    # kernels it shares with the collapsed model are reused, not tuned again.
    tune_report_orig = None
    if db is not None or trials > 0:
        same = _same_model(original_model, collapsed_model)
        if same:
            db_o, rep_o, ex_tuned_orig = db, rep, ex_tuned
        else:
            t0 = time.perf_counter()
            db_o, rep_o = _tune(mod_orig, "TVM (input model): ")
            seconds["tune_original"] = time.perf_counter() - t0
            stage_done()
            ex_tuned_orig = tc.build(mod_orig, target, database=db_o, layout=layout) if db_o is not None else None
        tune_report_orig = rep_o.to_dict()
        if ex_tuned_orig is not None:
            if not same:
                _note_unreplayable(ex_tuned_orig, "input", notes)
            tune_report_orig["tuned_functions"] = ex_tuned_orig.tuned_functions
            tune_report_orig["untuned_functions"] = ex_tuned_orig.untuned_functions
            _from_database_only(tune_report_orig, ex_tuned_orig, trials, tune_dir, "input", console, say=not same)
            if info.runs_on_host:
                if same:
                    latency["original"]["tvm_tuned"] = latency["collapsed"]["tvm_tuned"]
                else:
                    got = tc.run(ex_tuned_orig, inputs)
                    check = _compare(got, tc.run_ort(original_model, inputs), rtol, atol, original_model, inputs,
                                     target)
                    verification["original_tvm_tuned_vs_onnxruntime"] = check
                    if not check["ok"]:
                        notes.append("TVM output of the input model differs from onnxruntime")
                    latency["original"]["tvm_tuned"] = timed(ex_tuned_orig, "original", "tuned")

    stage_done()
    notes.extend(_slowdown_notes(latency["collapsed"], tune_report, trials, seconds, export=bool(export_dir)))
    if shortened:
        notes.append(f"TVM timed with fewer than {repeat} repeats where one call is slow: {'; '.join(shortened)}")
    notes.extend(_float64_pass_notes(verification))
    bad = [k for k, v in verification.items() if k.startswith("collapsed") and not v.get("ok")]
    if bad:
        v = verification[bad[0]]
        raise TVMMismatchError(
            f"TVM output of the collapsed model differs from onnxruntime ({bad[0]}: "
            f"max abs err {v.get('max_abs_err')}, rtol {rtol}, atol {atol}{_f64_note(v)}); nothing exported (the "
            "collapsed ONNX model stands verified: deploy it with onnxruntime, try another --target, or, where the "
            "float64 numbers show float32 rounding, loosen --rtol/--atol)"
        )

    lat_c, lat_o = latency["collapsed"], latency["original"]
    report: dict[str, Any] = {
        "tvm_version": str(getattr(__import__("tvm"), "__version__", "?")),
        "target": {
            "spec": args.target if isinstance(args.target, str) else json.dumps(args.target),
            **info.to_dict(),
        },
        "host": {
            "machine": platform.machine(),
            "cpu": host_cpu_name(),
            "cpu_count": os.cpu_count(),
        },
        "models": {
            "original": _model_summary(original_model),
            "collapsed": _model_summary(collapsed_model),
            "inputs": {k: list(v.shape) for k, v in inputs.items()},
        },
        "latency_ms": latency,
        "latency_protocol": {
            "statistic": "median",
            "repeat": repeat,
            "min_repeat_ms": 10,
            "onnxruntime_threads": os.cpu_count(),
            "note": "TVM: VirtualMachine.time_evaluator('invoke_stateful'); onnxruntime: "
            "InferenceSession.run, CPUExecutionProvider; same host, same inputs",
        },
        "speedup": {
            "collapsed_vs_original_onnxruntime": _ratio(lat_o["onnxruntime"], lat_c["onnxruntime"]),
            "collapsed_vs_original_tvm_untuned": _ratio(lat_o["tvm_untuned"], lat_c["tvm_untuned"]),
            "tvm_tuned_vs_untuned_collapsed": _ratio(lat_c["tvm_untuned"], lat_c["tvm_tuned"]),
            "collapsed_vs_original_tvm_tuned": _ratio(lat_o["tvm_tuned"], lat_c["tvm_tuned"]),
            "tvm_tuned_collapsed_vs_onnxruntime_original": _ratio(lat_o["onnxruntime"], lat_c["tvm_tuned"]),
        },
        "verification": verification,
        "tuning": tune_report,
        "tuning_original": tune_report_orig,
        "rpc": rpc_info,
        "notes": notes,
        "seconds": seconds,
        "export": None,
    }

    # 5. Export, atomically.
    if export_dir:
        final = os.path.realpath(os.fspath(export_dir))   # where the output plan checked it
        lib_ex, why = _library_to_export(ex_coll, ex_tuned, latency["collapsed"])
        if why:
            notes.append(why)
        t0 = time.perf_counter()
        with atomic_directory(final) as tmp:
            tc.export_library(lib_ex, os.path.join(tmp, LIB_NAME), info)
            files = [LIB_NAME]
            from .tuning import DB_FILES, SUMMARY_FILE

            tuning_files = [
                f for f in (*DB_FILES, SUMMARY_FILE) if os.path.exists(os.path.join(tune_dir, f))
            ]
            if tuning_files:
                os.makedirs(os.path.join(tmp, TUNING_SUBDIR))
                for f in tuning_files:
                    shutil.copy2(os.path.join(tune_dir, f), os.path.join(tmp, TUNING_SUBDIR, f))
                    files.append(f"{TUNING_SUBDIR}/{f}")
            files.append(REPORT_NAME)
            seconds["export"] = time.perf_counter() - t0
            seconds["total"] = time.perf_counter() - t_all
            report["export"] = {
                "dir": final,
                "files": files,
                "library": LIB_NAME,
                "library_is_tuned": lib_ex is ex_tuned and bool(ex_tuned.tuned_functions),
                "load": "relax.VirtualMachine(tvm.runtime.load_module('model.so'), dev)['main'](*inputs)",
                "cross_compiler": info.cross_compiler,
            }
            with open(os.path.join(tmp, REPORT_NAME), "w") as f:
                json.dump(report, f, indent=2, default=_json_default)
        _say(console, f"TVM: exported {final}/{{{', '.join(files)}}}")
    else:
        seconds["total"] = time.perf_counter() - t_all

    _say(console, format_latency_table(report))
    for note in notes:
        _say(console, f"TVM note: {note}")
    return json.loads(json.dumps(report, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def format_latency_table(report: Mapping[str, Any]) -> str:
    """Plain-text table of ``report["latency_ms"]``."""
    lat = report["latency_ms"]
    cols = ("onnxruntime", "tvm_untuned", "tvm_tuned")

    def cell(v):
        return "-" if v is None else f"{v:.3f}"

    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in report.get("models", {}).get("inputs", {}).items())
    lines = ([f"timed on {shapes}"] if shapes else []) + [
        f"{'latency (ms, median)':<22}" + "".join(f"{c:>14}" for c in cols)]
    for row in ("original", "collapsed"):
        lines.append(f"{row:<22}" + "".join(f"{cell(lat[row][c]):>14}" for c in cols))
    return "\n".join(lines)
