"""Adversarial round 17 on the TVM hand-off: which kernels came from the database with --tune-trials 0.

A rerun with `--tune-dir DIR` and no `--tune-trials` builds the tuned column from DIR's records, but the report
said `tuning.tasks_from_database: []` (tune_with_report lists no task when it tunes nothing) and the console said
nothing about the database: the kernels were reported as coming from nowhere. Now both name them.
"""
from __future__ import annotations

import io
from argparse import Namespace

import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from test_adv17_tvm_db_targets import _database_for, _model  # noqa: E402


def test_trials_zero_reports_the_kernels_built_from_the_database(tmp_path):
    from tvm_integration.cli_hook import run_from_args
    from tvm_integration.__main__ import random_inputs

    _database_for(tmp_path / "db", "cpu")
    m = _model()
    args = Namespace(target="cpu", tune_trials=0, tune_dir=str(tmp_path / "db"), rpc_tracker=None, rpc_key=None,
                     export=None, tvm_layout=None, tvm_repeat=1, verbose=False, rtol=None, atol=None,
                     output=str(tmp_path / "m.onnx"))
    log = io.StringIO()
    rep = run_from_args(args, m, m, random_inputs(m), console=log)
    tuned = rep["tuning"]["tuned_functions"]
    assert any("conv" in f for f in tuned), tuned
    assert rep["tuning"]["tasks_from_database"] == tuned     # was []
    assert rep["tuning_original"]["tasks_from_database"] == tuned
    said = [ln for ln in log.getvalue().splitlines() if "built from the tuning database" in ln]
    assert len(said) == 1 and str(tmp_path / "db") in said[0], log.getvalue()
