"""docs/tvm.md's code blocks run as written (a new user's walkthrough, 2026-11-29).

The Relax-pass example ended in ``tvm.compile(mod, target={"kind": "llvm"})``: TVM 0.27's ``relax.build``
reads ``target.keys`` and a plain dict fails there with ``TypeError: argument of type
'builtin_function_or_method' is not iterable``; the doc now wraps the dict in ``tvm.target.Target``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

DOC = Path(__file__).resolve().parents[1] / "docs" / "tvm.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_no_doc_passes_a_plain_dict_target_to_tvm_compile():
    """A dict literal as tvm.compile's target fails inside TVM 0.27 (relax.build reads target.keys)."""
    text = DOC.read_text()
    assert not re.search(r"tvm\.compile\([^)]*target=\{", text), "tvm.compile(..., target={...}) fails in TVM 0.27"


def _three_relus(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), f"W{i}"))
        nodes += [helper.make_node("Conv", [x, f"W{i}"], [f"c{i}"]), helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.tvm
def test_the_relax_pass_example_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tvm")
    block = next(b for b in _python_blocks(DOC.read_text()) if "collapse_sequence" in b and "tvm.compile" in b)
    _three_relus(tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, str(DOC), "exec"), ns)   # the block exactly as the doc prints it
    assert ns["ex"] is not None
    assert capsys.readouterr().out.split("\n")[0].split()[:2] == ["0", "relu"]
