"""README's setup and Python API text match the code (a new user's walkthrough, 2026-11-29).

README said the core needs only numpy/onnx/onnxruntime/onnx-graphsurgeon/networkx/rich, while
pyproject.toml installs tqdm and matplotlib with it (score progress, --plot); and it did not say how the
CLI's flags map to ``collapse()`` keywords (``--input-shape`` is ``input_shapes=``, ``--eval`` is
``eval_data=``: a user guessing ``input_shape=`` got a TypeError).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from collapse_passes.cli import build_parser
from collapse_passes.config import CollapseConfig

try:   # Python 3.11+; on 3.10 (which the README supports) the tomli backport, or skip
    import tomllib
except ModuleNotFoundError:
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_names_every_core_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] for d in deps]
    sentence = README.split("The core needs only", 1)[1].split("torch and TVM are extras", 1)[0]
    assert [n for n in names if n not in sentence] == []


def test_every_config_field_is_a_flag_or_a_readme_exception():
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    api = README.split("## Python API", 1)[1].split("## Layout", 1)[0]
    for f in dataclasses.fields(CollapseConfig):
        flag = "--" + f.name.replace("_", "-")
        if flag in flags:
            continue
        assert f"`{f.name}=" in api, f"CollapseConfig.{f.name} has no flag {flag} and the README's API section " \
                                     "does not name it"
    for flag, kw in (("--no-merge", "merge"), ("--no-prune", "prune"), ("--input-shape", "input_shapes"),
                     ("--eval", "eval_data")):
        assert flag in flags and kw in {f.name for f in dataclasses.fields(CollapseConfig)}


def test_a_keyword_guessed_from_a_flag_names_the_real_one(tmp_path):
    """collapse(m, input_shape=...) (the flag is --input-shape) said only 'unexpected keyword argument'."""
    import pytest

    import collapse_passes as cp
    from collapse_passes.api import _FLAG_KEYWORDS

    for kw, real in (("input_shape", "input_shapes="), ("eval", "eval_data="), ("no_merge", "merge=False"),
                     ("prune_ration", "'prune_ratio'")):
        with pytest.raises(TypeError, match=re.escape(real)):
            cp.collapse(str(tmp_path / "never_read.onnx"), **{kw: 1})
    assert all(v.split("=")[0] in {f.name for f in dataclasses.fields(CollapseConfig)} for v in _FLAG_KEYWORDS.values())
    assert all("--" + k.replace("_", "-") in {s for a in build_parser()._actions for s in a.option_strings}
               for k in _FLAG_KEYWORDS)
