"""Apache TVM (Relax + MetaSchedule) back end for collapse_passes.

Sits *above* ``collapse_passes``: the core never imports it at load time; the
core CLI calls :mod:`tvm_integration.cli_hook` lazily when ``--target`` is
given.  Importing this package does not import TVM; the names below are loaded
on first use.

Public API::

    resolve_target(spec, cuda_arch=None) -> (tvm.target.Target, TargetInfo)
    import_onnx(model) -> IRModule
    import_exported_program(ep) -> IRModule
    relax_from_torch(model_or_result, example_inputs) -> IRModule   (torch.export route)
    build(mod, target, database=None) -> TVMExecutable
    run(executable, inputs, device=None) -> list[np.ndarray]
    measure_latency(executable, inputs, device=None, *, repeat=20) -> float (ms, median)
    profile(executable, inputs) -> dict (per-VM-call times: where the time goes)
    export_library(executable, path, target_info=None) -> str
    tune(mod, target, target_info, work_dir, trials, rpc_tracker=None, rpc_key=None,
         progress=True) -> Database | None
    LinearizeActivations(selection), collapse_sequence(selection), list_activations(mod)
    TVMError
"""

from __future__ import annotations

import importlib

from .errors import TVMError

_LAZY = {
    "resolve_target": "targets",
    "TargetInfo": "targets",
    "list_target_tags": "targets",
    "import_onnx": "compile",
    "import_exported_program": "compile",
    "relax_from_torch": "from_torch",
    "build": "compile",
    "run": "compile",
    "measure_latency": "compile",
    "measure_ort_latency": "compile",
    "profile": "compile",
    "configure_runtime_threads": "targets",
    "default_database_dir": "tuning",
    "export_library": "compile",
    "TVMExecutable": "compile",
    "tune": "tuning",
    "tune_with_report": "tuning",
    "LinearizeActivations": "relax_pass",
    "collapse_sequence": "relax_pass",
    "list_activations": "relax_pass",
    "add_arguments": "cli_hook",
    "run_from_args": "cli_hook",
}

__all__ = ["TVMError", *_LAZY]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'tvm_integration' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
