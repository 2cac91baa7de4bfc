"""Real (tiny) training data: scikit-learn's bundled ``load_digits``.

1,797 grayscale 8x8 images of the digits 0-9, shipped inside scikit-learn (no
download). ``load_digits_tensors`` returns a fixed stratified split of 1,397
train / 400 test images as float32 NCHW tensors, normalized with the training
set's mean / std, optionally upsampled (bilinear) to ``size`` and repeated to
``channels`` channels.

``train_digits_model(name)`` trains a small version of a registry model (see
:data:`DEFAULT_DIGITS_CONFIG`) on CPU with Adam, deterministically, and caches
the ``state_dict`` under ``cache_dir`` (default
``~/.cache/collapse_passes/digits/``) so a second call only loads it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import build

__all__ = [
    "DEFAULT_DIGITS_CONFIG",
    "N_TEST",
    "load_digits_tensors",
    "digits_config",
    "digits_data",
    "train_digits_model",
    "evaluate",
]

#: number of test images in the fixed split (the rest, 1,397, is training data)
N_TEST = 400

#: bump to invalidate every cached model (training recipe changed)
_CACHE_VERSION = 1

#: Small default recipe per registry model. ``model_kw`` are the builder's
#: keyword arguments (``num_classes`` / ``in_channels`` are filled in);
#: ``size`` / ``channels`` describe the input ``(N, channels, size, size)``.
DEFAULT_DIGITS_CONFIG: dict[str, dict] = {
    "resnet18": dict(model_kw=dict(width=8), size=16, channels=1, epochs=8, lr=3e-3, batch_size=64),
    "mobilenet_v2": dict(
        model_kw=dict(width_mult=0.25), size=16, channels=1, epochs=8, lr=5e-3, batch_size=64
    ),
    "vgg16_bn": dict(model_kw=dict(width=8, pools=3), size=8, channels=1, epochs=15, lr=3e-3, batch_size=64),
    "swin_t": dict(
        model_kw=dict(dim=32, depth=2, heads=2, patch=2), size=8, channels=1, epochs=30, lr=2e-3, batch_size=64
    ),
}


def _default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "collapse_passes", "digits")


def load_digits_tensors(size: int = 8, channels: int = 1, seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test)`` from sklearn's digits.

    ``x_*`` are float32 ``(N, channels, size, size)`` tensors normalized with
    the training set's pixel mean / std (computed at 8x8, before upsampling);
    ``y_*`` are int64 labels. The split is stratified, 1,397 / 400, and fixed
    for a given ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=N_TEST, random_state=seed, stratify=y
    )
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def prep(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy((a - mean) / std).unsqueeze(1)  # (N, 1, 8, 8)
        if size != 8:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        if channels != 1:
            t = t.repeat(1, channels, 1, 1)
        return t.contiguous().float()

    return prep(x_tr), torch.from_numpy(y_tr), prep(x_te), torch.from_numpy(y_te)


def digits_config(name: str, **overrides) -> dict:
    """The default recipe for ``name`` with ``overrides`` applied (model kwargs
    may be given flat; anything that is not a recipe key is a model kwarg)."""
    if name not in DEFAULT_DIGITS_CONFIG:
        raise KeyError(f"no digits config for {name!r}; known: {sorted(DEFAULT_DIGITS_CONFIG)}")
    cfg = copy.deepcopy(DEFAULT_DIGITS_CONFIG[name])
    for k, v in overrides.items():
        if v is None:
            continue
        if k in cfg and k != "model_kw":
            cfg[k] = v
        else:
            cfg["model_kw"][k] = v
    mk = cfg["model_kw"]
    mk["num_classes"] = 10
    mk["in_channels"] = cfg["channels"]
    if name == "swin_t":
        mk["img_size"] = cfg["size"]
    return cfg


def digits_data(name: str, seed: int = 0, **overrides):
    """``load_digits_tensors`` with the input size / channels of ``name``'s recipe."""
    cfg = digits_config(name, **overrides)
    return load_digits_tensors(size=cfg["size"], channels=cfg["channels"], seed=seed)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / len(x)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cache_path(cache_dir: str, name: str, cfg: dict, seed: int, num_threads: int) -> str:
    # the thread count changes float reduction order, hence the trained weights
    key = json.dumps(
        dict(
            v=_CACHE_VERSION,
            name=name,
            cfg=cfg,
            seed=seed,
            threads=num_threads,
            torch=torch.__version__.split("+")[0],
        ),
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{name}-{digest}.pt")


def _atomic_save(obj, path: str) -> None:
    from collapse_passes.outputs import atomic_file

    with atomic_file(path) as fh:
        torch.save(obj, fh)


def fit_digits(model: nn.Module, x_tr: torch.Tensor, y_tr: torch.Tensor, cfg: dict, seed: int = 0,
               verbose: bool = False, name: str = "") -> nn.Module:
    """The digits training recipe on (x_tr, y_tr): Adam with a one-cycle (warm-up + cosine) schedule,
    cfg's epochs / batch size / learning rate, a shuffle seeded with `seed`. Returns the model (in
    train mode); the caller seeds torch before building it."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    bs = cfg["batch_size"]
    steps_per_epoch = (len(x_tr) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch, pct_start=0.2
    )
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for ep in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(x_tr), bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose:
            print(f"[{name}] epoch {ep + 1}/{cfg['epochs']} loss {total / len(x_tr):.4f} "
                  f"({time.perf_counter() - t0:.1f}s)")
    return model


def train_digits_model(
    name: str,
    epochs: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    *,
    size: int | None = None,
    channels: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    num_threads: int = 1,
    verbose: bool = False,
    **model_kw,
):
    """Train (or load from cache) a small ``name`` on the digits data.

    Returns ``(model, test_accuracy)``; the model is on CPU in eval mode and has
    an attribute ``digits_input_shape = (1, channels, size, size)``.

    Defaults come from :data:`DEFAULT_DIGITS_CONFIG`; ``epochs``, ``size``,
    ``channels``, ``lr``, ``batch_size`` and any model keyword arguments
    (``**model_kw``, merged over the defaults) override them and are part of the
    cache key together with ``name``, ``seed`` and ``num_threads``. Training uses Adam with a
    one-cycle (warm-up + cosine) learning-rate schedule, ``num_threads`` CPU threads (restored
    afterwards) and a seeded shuffle, so it is deterministic on one machine.
    The cache file is written atomically (temp file + ``os.replace``).
    """
    cfg = digits_config(
        name, epochs=epochs, size=size, channels=channels, lr=lr, batch_size=batch_size, **model_kw
    )
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else _default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    path = _cache_path(cache_dir, name, cfg, seed, num_threads)
    shape = (1, cfg["channels"], cfg["size"], cfg["size"])

    model = build(name, **cfg["model_kw"])
    if os.path.exists(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            model.eval()
            model.digits_input_shape = shape
            return model, float(blob["test_accuracy"])
        except Exception:  # corrupt / incompatible cache: retrain and overwrite
            pass

    old_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        x_tr, y_tr, x_te, y_te = load_digits_tensors(cfg["size"], cfg["channels"], seed=seed)
        _seed_everything(seed)
        model = build(name, **cfg["model_kw"])  # re-init after seeding
        fit_digits(model, x_tr, y_tr, cfg, seed, verbose=verbose, name=name)
        acc = evaluate(model, x_te, y_te)
    finally:
        torch.set_num_threads(old_threads)

    model.eval()
    _atomic_save(
        dict(
            state_dict=model.state_dict(),
            test_accuracy=acc,
            name=name,
            config=json.dumps(cfg, sort_keys=True),
            seed=seed,
        ),
        path,
    )
    model.digits_input_shape = shape
    return model, acc
