"""numpy's OpenBLAS on one thread while the graph passes run, in our own process (`python -m collapse_passes`).

The passes' float64 algebra (merged kernels, bias maps through convs) is many small or memory-bound
BLAS calls. With OpenBLAS's default of one thread per core its worker threads wake for each call and
then spin (yielding) before they sleep: on a 2-core machine shared with other jobs the passes of a collapsed
CIFAR MobileNetV2 at 224 took 0.9-5.6 s instead of 0.3-0.8 s, and a run's user CPU was 1.8-3.4 s instead of
1.1-1.4 s (load 3-6, docs/pass_runtime.md 2026-11-29 13:34). OpenBLAS splits a matrix product's rows and
columns between its threads, not its sums, so the products are the same numbers on one thread (the written
models of 20 runs were byte-identical). The float64 second look (large im2col products) keeps the default.
A library caller's process is left as it is (runtime.OWN_PROCESS).
"""
from __future__ import annotations

import contextlib
import ctypes

#: (set_num_threads, get_num_threads) of the OpenBLAS numpy loaded; None when there is none (MKL, Accelerate,
#: another OS); False before the first look
_CONTROL = False

#: the names OpenBLAS builds export: numpy's own wheels (scipy-openblas, 64-bit ints), 64-bit, plain
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads")


def _loaded_openblas() -> list[str]:
    """Paths of the loaded shared libraries whose file name says openblas (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and "openblas" in p.rsplit("/", 1)[-1].lower())


def _control():
    global _CONTROL
    if _CONTROL is False:
        _CONTROL = None
        import numpy  # noqa: F401  (its BLAS is the one loaded)

        for path in _loaded_openblas():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for name in _SETTERS:
                setter = getattr(lib, name, None)
                getter = getattr(lib, name.replace("set_num_threads", "get_num_threads"), None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                    _CONTROL = (setter, getter)
                    return _CONTROL
    return _CONTROL


def blas_threads() -> int | None:
    """OpenBLAS's thread count now (None: no OpenBLAS found)."""
    c = _control()
    return None if c is None else int(c[1]())


@contextlib.contextmanager
def single_threaded_blas():
    """OpenBLAS on one thread inside the block, in our own process only; the count it had is put back."""
    from . import runtime

    c = _control() if runtime.OWN_PROCESS else None
    before = int(c[1]()) if c is not None else 1
    if before <= 1:
        yield
        return
    c[0](1)
    try:
        yield
    finally:
        c[0](before)
