"""Code that runs inside MetaSchedule's popen workers.

This module is shipped to the workers *by value* (``cloudpickle``), because the
workers are fresh ``python -m tvm.exec.popen_worker`` processes that may not
have this repository on ``sys.path``.  Keep it self-contained: standard library
imports at the top, TVM imports inside the functions.

Why it exists: ``tvm.s_tir.meta_schedule``'s default build function (and
``TuneContext``) run ``import tvm.s_tir.tensor_intrin``, which imports the
tensor intrinsics of *every* backend (cuda, x86, arm, rocm, hexagon, riscv) and
takes about 60 s of CPU on a small machine.  A LocalBuilder worker does it on
its first build, hits the 30 s build timeout, and every candidate fails
("Build errors").  :func:`preload_intrinsics` installs a light placeholder for
the ``tvm.s_tir.tensor_intrin`` package (so that later ``import
tvm.s_tir.tensor_intrin`` statements are no-ops) and imports only the
submodules the target needs (e.g. ``x86``: ~0.2 s).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import linecache
import os
import sys
import threading
import types

_PKG = "tvm.s_tir.tensor_intrin"


def preload_intrinsics(modules=("x86",)) -> None:
    """Make ``tvm.s_tir.tensor_intrin`` cheap and import only ``modules`` of it.

    Safe to call several times and in the main process: if the real package is
    already imported, it only imports the requested submodules.
    """
    import tvm.s_tir as s_tir  # noqa: PLC0415

    if _PKG not in sys.modules:
        pkg_dir = os.path.join(os.path.dirname(s_tir.__file__), "tensor_intrin")
        stub = types.ModuleType(_PKG)
        stub.__path__ = [pkg_dir]  # lets `import tvm.s_tir.tensor_intrin.x86` find submodules
        stub.__file__ = os.path.join(pkg_dir, "__init__.py")
        stub.__package__ = _PKG
        stub.__doc__ = "Placeholder installed by tvm_integration (imports submodules on demand)."
        sys.modules[_PKG] = stub
        s_tir.tensor_intrin = stub  # type: ignore[attr-defined]
    with _light_inspect_stack():
        for name in modules:
            importlib.import_module(f"{_PKG}.{name}")


@contextlib.contextmanager
def _light_inspect_stack():
    """``inspect.stack`` without its module search, while intrinsics are parsed.

    Each ``@T.prim_func`` calls ``inspect.stack()``, which looks up the module of every frame; for
    the import machinery's ``<frozen ...>`` frames that is a scan of all of ``sys.modules``, so the
    ~500 CUDA intrinsics took ~60 s in a process that has torch loaded.  The frames, file names,
    line numbers and source lines (through ``linecache``) are the same.
    """
    # one patch at a time (overlapping threads would restore each other's stub); the lock lives on
    # the inspect module, not here: this module is pickled by value for the workers
    with vars(inspect).setdefault("_collapse_passes_stack_lock", threading.RLock()):
        real = inspect.stack

        def stack(context: int = 1):
            frames, frame = [], sys._getframe(1)
            while frame is not None:
                code = frame.f_code
                line = linecache.getline(code.co_filename, frame.f_lineno) if context > 0 else ""
                frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                                [line] if line else None, 0 if line else None))
                frame = frame.f_back
            return frames

        inspect.stack = stack
        try:
            yield
        finally:
            inspect.stack = real


def make_initializer(modules):
    """A zero-argument initializer for PopenPool workers (picklable by value)."""
    modules = tuple(modules)

    def _init() -> None:
        preload_intrinsics(modules)
        if "cuda" in modules:
            # CUDA candidates carry CUDA source, compiled when the runner loads them:
            # that needs tvm_callback_cuda_compile, registered by this import.
            importlib.import_module("tvm.support.nvcc")

    return _init


def export_with_cross_compiler(mod, cxx: str = "aarch64-linux-gnu-g++") -> str:
    """MetaSchedule ``f_export`` for cross targets: link a ``.so`` with ``cxx``.

    The default export writes a ``.tar`` of object files that the *remote*
    side links, which needs a compiler on the board; a ready ``.so`` does not.
    """
    import tempfile  # noqa: PLC0415

    from tvm.support import cc  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(cxx))
    return path
