"""--eval DATA.npz: top-1 accuracy of the original and the result, and their onnxruntime latency.

DATA.npz holds the model inputs (arrays named after them, first axis = samples) and a `labels`
array (one integer class per sample). Accuracy = argmax over the first output's class axis (axis 1
of a (N, classes) output). Latency: batch 1 (the first sample; a model with a static batch N: its first N
samples, the report's `latency.batch`), both models on onnxruntime CPU with
full graph optimizations, timed interleaved (core.runtime.time_interleaved), median reported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import CollapseError

LABELS = "labels"


def load_eval_data(data, model: onnx.ModelProto) -> tuple[list[dict], np.ndarray, str]:
    """(feeds in order, labels, source name); one CollapseError line for any problem."""
    from .calib import model_inputs

    if isinstance(data, dict):
        src, arrays = "eval_data", dict(data)
    else:
        p = Path(data)
        src = str(p)
        if not p.is_file():
            raise CollapseError(f"{src}: " + ("a folder" if p.is_dir() else "evaluation data not found")
                                + f"; give an .npz with the model inputs and a '{LABELS}' array")
        from .calib import duplicate_members, not_numpy_archive

        why = not_numpy_archive(p)
        if why:
            raise CollapseError(f"{src}: {why}")
        try:
            npz = np.load(p, allow_pickle=False)
            if isinstance(npz, np.ndarray):   # a .npy: one array, no labels ("'ndarray' has no attribute 'files'")
                raise CollapseError(f"{src}: a .npy file holds one array and no '{LABELS}'; save the inputs and "
                                    f"labels together: numpy.savez(path, <input name>=x, {LABELS}=y)")
            duplicate_members(p, npz)
            arrays = {k: npz[k] for k in npz.files}
        except CollapseError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
            raise CollapseError(f"{src}: not a readable .npz file ({' '.join(str(exc).split())[:100]})") from None
        if not isinstance(arrays, dict):
            raise CollapseError(f"{src}: expected an .npz with the model inputs and a '{LABELS}' array")
    if LABELS not in arrays:
        raise CollapseError(f"{src}: no '{LABELS}' array (arrays present: {sorted(arrays)}); add the true class of "
                            "each sample as an integer array named labels")
    labels = np.asarray(arrays.pop(LABELS))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CollapseError(f"{src}: '{LABELS}' must be a 1-D integer array (one class per sample), got "
                            f"shape {labels.shape} dtype {labels.dtype}")
    if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        # astype(int64) below would wrap them negative and the range error would name numbers not in the file
        raise CollapseError(f"{src}: labels must be class indices, got {int(labels.max())} (uint64); give one "
                            "integer class per sample")
    names = [n for n, _, _ in model_inputs(model)]
    counts = {n: len(arrays[n]) for n in names if n in arrays and np.ndim(arrays[n])}
    if counts and any(c != len(labels) for c in counts.values()):
        raise CollapseError(f"{src}: {len(labels)} labels but {next(iter(counts.values()))} samples in "
                            f"{next(iter(counts))!r}; give one label per sample")
    from .calib import _iter_arrays, feed_samples

    feeds = list(_iter_arrays(src, arrays, model, 64, None, 1))   # errors name the --eval file, not "calibration"
    got = sum(feed_samples(f) for f in feeds)
    return feeds, labels[:got].astype(np.int64), src


def top1(model: onnx.ModelProto, feeds: list[dict], labels: np.ndarray, src: str = "--eval") -> float:
    """Top-1 accuracy; a row of NaN / Inf logits counts as wrong (argmax of NaN is 0, which scored every
    class-0 sample right: a --force'd result whose outputs were all NaN reported the share of class 0),
    as train.accuracy() counts it."""
    return _top1_counts(model, feeds, labels, src)[0]


def _top1_counts(model: onnx.ModelProto, feeds: list[dict], labels: np.ndarray, src: str = "--eval") -> tuple:
    """(accuracy, rows whose logits are not all finite)."""
    from .core.runtime import outputs, session

    sess = session(model, optimize=True)
    correct, i, bad = 0, 0, 0
    for f in feeds:
        out = np.asarray(outputs(sess, f)[0])
        if out.ndim != 2:
            raise CollapseError(f"--eval: the first output has shape {out.shape}; top-1 accuracy needs "
                                "(samples, classes) logits")
        n = out.shape[0]
        lab = labels[i:i + n]
        if lab.size and (lab.min() < 0 or lab.max() >= out.shape[1]):   # name the range of all labels, not this batch's
            raise CollapseError(f"{src}: labels must be class indices in [0, {out.shape[1]}) (the model has "
                                f"{out.shape[1]} outputs per sample), got {int(labels.min())}..{int(labels.max())}")
        ok = np.isfinite(out).all(1) if out.dtype.kind in "fc" else np.ones(n, dtype=bool)
        correct += int(((out.argmax(1) == labels[i:i + n]) & ok).sum())
        bad += int((~ok).sum())
        i += n
    return correct / max(i, 1), bad


def latency_ms(models: dict, feed: dict, rounds: int = 50) -> dict:
    """{name: median ms} on `feed` (batch 1, or the model's static batch), interleaved, onnxruntime CPU, full
    optimizations, spinning off."""
    from .core.runtime import session, time_interleaved

    sessions = {k: session(m, optimize=True) for k, m in models.items()}
    t = time_interleaved(sessions, feed, rounds)
    return {k: 1e3 * float(np.median(v)) for k, v in t.items()}


def eval_report(original: onnx.ModelProto, result: onnx.ModelProto, data) -> dict:
    feeds, labels, src = data if isinstance(data, tuple) else load_eval_data(data, original)
    (acc_o, bad_o), (acc_r, bad_r) = (_top1_counts(m, feeds, labels, src) for m in (original, result))
    first, batch = latency_feed(original, feeds[0])
    lat = latency_ms({"original": original, "result": result}, first)
    acc = {"original": acc_o, "result": acc_r, "samples": int(len(labels)), "data": src}
    if bad_o or bad_r:   # counted wrong above; say so (a --force'd overflowing result, NaN-producing weights)
        acc["nonfinite_rows"] = {"original": bad_o, "result": bad_r}
    return {"accuracy": acc,
            "latency": {"original_ms": lat["original"], "result_ms": lat["result"],
                        "speedup": lat["original"] / lat["result"] if lat["result"] else None,
                        "batch": batch,
                        "how": f"onnxruntime CPU, batch {batch}, full graph optimizations, 50 interleaved runs, "
                               "median"}}


def latency_feed(model: onnx.ModelProto, feed: dict) -> tuple[dict, int]:
    """(the first sample of `feed`, its batch size): batch 1 where the model's batch is dynamic; an input of a
    static batch (a model exported at batch 2) keeps the batch it was fed with. Slicing every input to one row
    fed a static-batch model a batch it refuses (an onnxruntime traceback, exit 3, before 2026-11-30)."""
    from .calib import model_inputs

    dims = {n: d for n, d, _ in model_inputs(model)}
    first, batch = {}, 1
    for k, v in feed.items():
        d = dims.get(k)
        if np.ndim(v) == 0:
            first[k] = v
        elif d and d[0] is not None:   # a fixed batch: fed as it was
            first[k] = v
            batch = max(batch, int(np.shape(v)[0]))
        else:
            first[k] = v[:1]
    return first, batch
