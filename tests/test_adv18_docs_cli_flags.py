"""The README's flag table, docs/tvm.md's and `python -m collapse_passes --help` name the same flags, and each
flag's help states its default (a new user's read, 2026-11-29).

README's table lacked --list-keys, --prune-scope, --prune-importance and --prune-max-error, which --help lists;
--help gave no default for --rtol / --atol / --seed / --per-op-overhead / --prune-importance, which README and
config.py do.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from collapse_passes.algebra.cost import DEFAULT_PER_OP_OVERHEAD_MACS
from collapse_passes.cli import build_parser
from collapse_passes.config import CollapseConfig

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"`(-{1,2}[a-z][a-z0-9-]*)")


def _table_flags(text: str, header: str) -> set[str]:
    """Flags named in the first column of the markdown table that starts with `header`."""
    rows = text.split(header, 1)[1].split("\n\n", 1)[0].splitlines()
    return {f for row in rows if row.startswith("| `") for f in FLAG.findall(row.split(" | ", 1)[0])}


def _groups():
    p = build_parser()
    tvm = next((g for g in p._action_groups if g.title and g.title.startswith("TVM")), None)
    tvm_ids = {id(a) for a in tvm._group_actions} if tvm else set()
    core = {s for a in p._actions if id(a) not in tvm_ids for s in a.option_strings if s not in ("-h", "--help")}
    tvm_flags = {s for a in p._actions if id(a) in tvm_ids for s in a.option_strings}
    return p, core, tvm_flags


def test_readme_table_and_help_name_the_same_core_flags():
    _, core, _ = _groups()
    readme = _table_flags((ROOT / "README.md").read_text(), "| flag | meaning |") - {"--target"}
    # a row may name a flag by its long form only (-o OUT is --output)
    core_long = {s for s in core if s.startswith("--")} | {"-o", "-q", "-v"}
    core_long -= {"--output", "--quiet", "--verbose"}
    assert sorted(readme - core) == [], "README's table names flags --help does not have"
    assert sorted(core_long - readme) == [], "--help has flags README's table does not name"


def test_tvm_doc_table_and_help_name_the_same_tvm_flags():
    _, _, tvm = _groups()
    if not tvm:
        import pytest
        pytest.skip("apache-tvm not installed")
    doc = _table_flags((ROOT / "docs" / "tvm.md").read_text(), "| flag | default | meaning |")
    assert doc == tvm


def test_every_flag_with_a_default_says_it_in_its_help():
    p, _, _ = _groups()
    for a in p._actions:
        if not a.option_strings or a.help in (None, argparse.SUPPRESS) or isinstance(a, argparse._StoreTrueAction):
            continue
        if a.default in (None, argparse.SUPPRESS):
            continue
        assert "default" in a.help and (str(a.default) in a.help or "(default)" in a.help), \
            f"{a.option_strings[0]}: default {a.default!r} not in its help {a.help!r}"


def test_defaults_said_for_flags_whose_default_lives_elsewhere():
    p, _, _ = _groups()
    helps = {s: a.help or "" for a in p._actions for s in a.option_strings}
    cfg = CollapseConfig()
    assert f"default {cfg.seed}" in helps["--seed"]
    assert f"default {cfg.check}" in helps["--check"]
    assert f"default {int(DEFAULT_PER_OP_OVERHEAD_MACS)}" in helps["--per-op-overhead"]
    assert "default 1e-4" in helps["--rtol"] and "default 1e-5" in helps["--atol"]
