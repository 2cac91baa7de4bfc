"""Calibration data: an .npz (arrays named after the model inputs, first axis = samples) or a folder
of .npy files (`<input>.npy` per input, or for single-input models any number of files, each a
batch). Batches are streamed: nothing holds the whole set beyond what the file format forces.
Every check fails with one line naming the file, the array and what was expected.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from .errors import CollapseError

_ELEM = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
         onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
         onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}


def model_inputs(model: onnx.ModelProto) -> list[tuple[str, list, type]]:
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out.append((vi.name, dims, _ELEM.get(tt.elem_type, np.float32)))
    return out


def _check_array(src: str, name: str, arr: np.ndarray, dims: list, dt) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise CollapseError(f"{src}: array {name!r} has dtype {arr.dtype}, expected numbers ({np.dtype(dt).name})")
    if np.issubdtype(dt, np.floating) and arr.dtype.kind != "f":
        raise CollapseError(f"{src}: array {name!r} has dtype {arr.dtype}, expected a float array ({np.dtype(dt).name})")
    if not dims and arr.ndim:
        raise CollapseError(f"{src}: array {name!r} has shape {arr.shape}, the model input is a scalar (rank 0) and "
                            f"has no sample axis; give one 0-d value (numpy.array(v)), fed with every batch")
    if arr.ndim != len(dims):
        raise CollapseError(f"{src}: array {name!r} has shape {arr.shape}, the model input has rank {len(dims)} "
                            f"({_fmt(dims)}); the first axis is the sample axis")
    for i, (a, d) in enumerate(zip(arr.shape[1:], dims[1:]), start=1):
        if d is not None and a != d:
            raise CollapseError(f"{src}: array {name!r} has shape {arr.shape}, model input expects {_fmt(dims)} "
                                f"(axis {i} is {a}, expected {d})")
    if 0 in arr.shape[1:]:   # scores of no value and a check of no element (core/runtime.empty_check_input)
        raise CollapseError(f"{src}: array {name!r} has shape {arr.shape}: its samples hold no elements (axis "
                            f"{arr.shape.index(0, 1)} is 0), so nothing would be scored or checked; give every axis "
                            "after the sample axis a size of at least 1")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise CollapseError(f"{src}: array {name!r} contains NaN or Inf values; clean the data")
    if np.issubdtype(dt, np.integer) and arr.size:   # the cast truncated 1.7 to 1 and wrapped 2**40 into int32
        info, lo, hi = np.iinfo(dt), arr.min(), arr.max()
        frac = arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0)
        if frac or lo < info.min or hi > info.max:
            what = "fractional values" if frac else f"values outside [{info.min}, {info.max}] ({lo} .. {hi})"
            raise CollapseError(f"{src}: array {name!r} holds {what} for the model's integer input "
                                f"({np.dtype(dt).name}); give integers in its range (e.g. token ids)")
    with np.errstate(over="ignore"):
        out = arr.astype(dt, copy=False)
    # checked at the model's type too: float64 data past float32's range became Inf in the cast, and the scores
    # were computed from it (exit 0, numpy warnings on stderr)
    if out.dtype.kind == "f" and out is not arr and not np.all(np.isfinite(out)):
        raise CollapseError(f"{src}: array {name!r} holds values beyond the range of the model input's type "
                            f"{np.dtype(dt).name} (|x| <= {float(np.finfo(dt).max):.3g}), which become Inf there; "
                            "scale the data to the range the model was trained on")
    return out


def _fmt(dims) -> str:
    """(N, 3, ?, ?): N the sample axis, ? any other dynamic dim (not "N" again: that read as a size tied to N)."""
    return "(" + ", ".join(("N" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(dims)) + ")"


def iter_calibration(path, model: onnx.ModelProto, batch_size: int | None = None,
                     max_batches: int | None = None, min_samples: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Yield feeds (input name -> batch). The batch is the model's static batch size when it has one."""
    _refuse_input_fixed_at_zero(model)
    if isinstance(path, np.ndarray):   # one array: the samples of a single-input model
        names = [n for n, _, _ in model_inputs(model)]
        if len(names) != 1:
            raise CollapseError(f"calibration: one array given, but the model has inputs {names}; "
                                "pass a dict {input name: array}")
        path = {names[0]: path}
    if isinstance(path, dict):
        yield from _iter_arrays("calibration arrays", dict(path), model, batch_size, max_batches, min_samples)
        return
    if not isinstance(path, (str, os.PathLike)):
        raise CollapseError(f"calibration data must be a path (.npz or folder of .npy), a dict of arrays or an "
                            f"array, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise CollapseError(f"{p}: calibration data not found; pass an .npz file or a folder of .npy files")
    inputs = model_inputs(model)
    names = [n for n, _, _ in inputs]
    if p.is_dir():
        files = sorted(p.glob("*.npy"))
        if not files:
            raise CollapseError(f"{p}: folder holds no .npy files")
        by_name = {f.stem: f for f in files}
        if all(n in by_name for n in names):
            unused_arrays(str(p), by_name, names, what="file(s)", suffix=".npy")
            arrays = {n: _load_npy(by_name[n], mmap_mode="r") for n in names}
            yield from _iter_arrays(str(p), arrays, model, batch_size, max_batches, min_samples)
            return
        if len(names) != 1:
            raise CollapseError(f"{p}: expected files {', '.join(n + '.npy' for n in names)} (one per model input)")
        name, dims, dt = inputs[0]
        count = 0
        for k, f in enumerate(files):
            if max_batches is not None and k >= max_batches:
                break
            arr = _load_npy(f)
            if arr.ndim == len(dims) - 1:
                arr = arr[None]
            arr = _check_array(str(f), name, arr, dims, dt)
            count += arr.shape[0]
            yield {name: np.ascontiguousarray(arr)}
        if count < min_samples:
            raise CollapseError(f"{p}: {count} calibration sample(s), at least {min_samples} needed")
        return
    why = not_numpy_archive(p)
    if why:
        raise CollapseError(f"{p}: {why}")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise CollapseError(f"{p}: not a readable .npz/.npy file ({' '.join(str(exc).split())[:120]})") from None
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise CollapseError(f"{p}: a single array, but the model has inputs {names}; use an .npz with those names")
        arrays = {names[0]: data}
    else:
        duplicate_members(p, data)
        arrays = {k: _load_member(p, data, k) for k in data.files}
    yield from _iter_arrays(str(p), arrays, model, batch_size, max_batches, min_samples)


def _refuse_input_fixed_at_zero(model: onnx.ModelProto) -> None:
    """A model input with a dim fixed at 0 takes no sample with elements: the scores failed in onnxruntime ("Expected:
    0") or on a batch of 0, before the gate's one line on such inputs (verify: empty_check_input); the same line."""
    for name, dims, _ in model_inputs(model):
        if 0 in dims:
            raise CollapseError(f"model input {name!r} has shape {_fmt(dims)}, no elements, so nothing fed to it can "
                                f"be scored or checked (dim {dims.index(0)} is fixed at 0); a dim the model fixes at 0 "
                                "needs a re-export with it dynamic")


def _load_npy(f: Path, mmap_mode=None) -> np.ndarray:
    why = not_numpy_archive(f)
    if why:
        raise CollapseError(f"{f}: {why}")
    try:
        return np.load(f, allow_pickle=False, mmap_mode=mmap_mode)
    except Exception as exc:
        raise CollapseError(f"{f}: not a readable .npy file ({_why(exc)})") from None


def _load_member(p: Path, data, key: str) -> np.ndarray:
    """An .npz is read lazily: a corrupt member or an object (pickled) array fails only here."""
    try:
        return data[key]
    except Exception as exc:
        raise CollapseError(f"{p}: array {key!r} cannot be read ({_why(exc)}); save numeric arrays with "
                            "numpy.savez") from None


def duplicate_members(p, npz) -> None:
    """Refuse an .npz (numpy.lib.npyio.NpzFile) holding two members of one array name: a zip allows it (written
    with zipfile, or by appending), and numpy silently reads one of them."""
    seen: set = set()
    for member in npz.zip.namelist():
        key = member[:-4] if member.endswith(".npy") else member
        if key in seen:
            raise CollapseError(f"{p}: the archive holds two arrays named {key!r} (member {member!r} twice), and "
                                "numpy would read only one of them; write it again with numpy.savez, one array per name")
        seen.add(key)


def unused_arrays(src: str, arrays, names: list, what: str = "array(s)", suffix: str = "") -> None:
    """Refuse arrays that name no model input, as onnxruntime refuses a feed of an unknown name and
    torch's load_state_dict unexpected keys: a misspelt or stale name would otherwise go unused unseen.
    `labels`, the --eval format's class array, is allowed: one labelled file serves --calib and --eval."""
    from .evaluation import LABELS

    extra = sorted((k for k in arrays if k not in names and k != LABELS), key=str)
    if extra:
        shown = ", ".join(repr(f"{k}{suffix}") for k in extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise CollapseError(f"{src}: {what} {shown} name no model input (the model's inputs: {names}); rename "
                            f"them after an input or remove them")


def not_numpy_archive(p) -> str | None:
    """Why `p` is no .npz (zip) or .npy file, from its first bytes, else None. np.load takes any other
    file for a pickle and, with pickles refused, says "This file contains pickled (object) data ...
    allow_pickle=" (cut off in the one-line message): wrong for a JSON or an ONNX file given by mistake."""
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError:
        return None   # np.load names the problem
    if head[:2] == b"PK" or head == b"\x93NUMPY":
        return None
    what = f"it starts with {head.decode('ascii', 'replace')!r}, neither a zip archive nor NumPy's header" if head \
        else "it is empty"
    return f"not an .npz/.npy file ({what}); save the arrays with numpy.savez(path, <input name>=array)"


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:120]
    return text or type(exc).__name__


def _iter_arrays(src: str, arrays: dict, model, batch_size, max_batches, min_samples):
    inputs = model_inputs(model)
    missing = [n for n, _, _ in inputs if n not in arrays]
    if missing:
        raise CollapseError(f"{src}: no array named {', '.join(map(repr, missing))}; "
                            f"arrays present: {sorted(arrays)}; name them after the model inputs")
    unused_arrays(src, arrays, [n for n, _, _ in inputs])
    checked = {n: _check_array(src, n, np.asarray(arrays[n]) if not isinstance(arrays[n], np.memmap) else arrays[n],
                               dims, dt) for n, dims, dt in inputs}
    # a scalar (rank-0) input has no sample axis: its one value goes with every batch (an If's condition)
    counts = {n: a.shape[0] for n, a in checked.items() if a.ndim}
    if not counts:
        yield {n: np.ascontiguousarray(a) for n, a in checked.items()}
        return
    fixed = {n: dims[0] for n, dims, _ in inputs if dims and n in counts}
    if len(set(fixed.values())) > 1 and None not in fixed.values():
        yield from _fixed_batches(src, checked, counts, fixed, max_batches)
        return
    if len(set(counts.values())) != 1:
        raise CollapseError(f"{src}: arrays have different sample counts {counts}")
    total = next(iter(counts.values()))
    if total < min_samples:
        raise CollapseError(f"{src}: {total} sample(s), at least {min_samples} needed")
    static_b = {dims[0] for _, dims, _ in inputs if dims}
    b = next(iter(static_b)) if len(static_b) == 1 and None not in static_b else (batch_size or 16)
    if total % b and None not in static_b:
        total -= total % b  # a model with a static batch cannot take a partial batch
        if total == 0:
            raise CollapseError(f"{src}: {next(iter(counts.values()))} sample(s), fewer than the model's fixed batch "
                                f"size {b}; give at least {b} samples, or export the model with a dynamic batch")
    for k, start in enumerate(range(0, total, b)):
        if max_batches is not None and k >= max_batches:
            break
        yield {n: np.ascontiguousarray(a[start:start + b] if a.ndim else a) for n, a in checked.items()}


def _fixed_batches(src: str, checked: dict, counts: dict, fixed: dict, max_batches):
    """Inputs of different fixed batch sizes (x: 2 rows, x3: 1, an auxiliary [1, K] input beside a batch): batch k
    is rows k*b..(k+1)*b of each array, b its input's own size, so each array holds the same number of batches.
    Equal sample counts, asked of every other model, cannot be fed to such a model at all."""
    batches = {n: counts[n] // fixed[n] for n in counts}
    if len(set(batches.values())) != 1 or not min(batches.values()):
        raise CollapseError(f"{src}: the model's inputs have fixed batch sizes {fixed}, so each array holds whole "
                            f"batches of its own input's size, the same number for all; the arrays hold {counts} "
                            f"rows ({batches} batches)")
    for k in range(next(iter(batches.values()))):
        if max_batches is not None and k >= max_batches:
            break
        yield {n: np.ascontiguousarray(a[k * fixed[n]:(k + 1) * fixed[n]] if a.ndim else a) for n, a in checked.items()}


def feed_samples(feed: dict) -> int:
    """Samples in one calibration feed: the first axis of its arrays; a scalar (rank-0) input has none, 1 if all are."""
    return next((int(a.shape[0]) for a in feed.values() if np.ndim(a)), 1 if feed else 0)


def calibration_feeds(path, model: onnx.ModelProto, limit: int | None = None) -> list[dict]:
    return list(iter_calibration(path, model, max_batches=limit))
