"""README, docs/ and the Makefile say what the code does (a new user's read, H57, 2026-11-29).

Found: docs/scores.md's method table linked to #easier / #tlc / #layer-folding-prelu / #lacoot, sections that
moved to docs/scores/*.md (dead anchors); `python -m tvm_integration --help` said dynamic dims "run as 1" where
they run at the core check's sizes (2 x the model's downsampling + 1); the gate checks the first 8 calibration
batches unless --calib-batches, which README did not say (a user giving 128 digits read "8 samples"); the
Makefile's test comment gave another suite time than README's Quick start; the tuning line said every reused
kernel came from --tune-dir when some were copied from the shared database.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
DOCS = [ROOT / "README.md", ROOT / "models" / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces -> -."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    out, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = _slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
        out.update(re.findall(r'<a (?:name|id)="([^"]+)"', line))
    return out


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    bad = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            link = m.group(1)
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {link}"
            if not target.exists():
                bad.append(where + " (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                bad.append(where + " (no such heading)")
    assert bad == []


def test_standalone_tvm_cli_help_says_where_dynamic_dims_run():
    """The help said dynamic dims 'run as 1'; random_inputs runs them at core.runtime.check_size_ladder's sizes."""
    from tvm_integration.__main__ import _main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        _main(["--help"])
    text = " ".join(out.getvalue().split())
    assert "run as 1" not in text
    assert "2 x the model's downsampling + 1" in text


def test_readme_says_how_many_calibration_batches_the_gate_checks(tmp_path):
    import collapse_passes as cp

    ex = ROOT / "models" / "examples"
    res = cp.collapse(str(ex / "mobilenet_v2_digits.onnx"), collapse=["features.15.act1"],
                      calib=str(ex / "digits_calib.npz"))   # 128 samples, a model of static batch 1
    assert "calibration data (8 samples)" in res.report["verification"]["inputs"]
    row = next(r for r in README.splitlines() if r.startswith("| `--calib-batches N`"))
    assert "the first 8 for the verification gate" in row and "else 16 samples" in row


def test_makefile_and_readme_say_the_same_thing():
    run = MAKEFILE.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    trained = re.search(r"^TRAINED := (\S+)", MAKEFILE, re.M).group(1)
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert f"`make run` collapses `{trained}`" in quick
    for piece in re.findall(r"--method \w+ --threshold [\d.]+|--eval \S+", run):
        assert piece in quick, piece
    for out in re.findall(r"(?:-o|--report) (\S+)", run):
        assert f"`{out}`" in quick, out
    # pytest flags of test / test-fast as README says them, and one statement of the suite's time
    assert "-n 2" in MAKEFILE.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    fast = MAKEFILE.split("\ntest-fast:", 1)[1].split("\n\n", 1)[0]
    assert '-m "not slow and not tvm"' in fast and "-n 2" in fast
    assert "skips the tests marked `slow` or `tvm`" in quick
    assert not re.search(r"\d+ minutes", MAKEFILE), "the suite's time is README's to say (Quick start)"
    for target in ("setup", "run", "test", "test-fast", "cross"):
        assert re.search(rf"^{re.escape(target)}:", MAKEFILE, re.M), target


@pytest.mark.tvm
@pytest.mark.slow
def test_tuning_line_counts_kernels_copied_from_the_shared_database(tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    pytest.importorskip("torch")
    from tvm_integration import compile as tc
    from tvm_integration import tuning
    from tvm_integration.targets import resolve_target
    from tvm_integration.testing import tiny_cnn_onnx

    target, info = resolve_target("cpu")
    mod = tc.import_onnx(tiny_cnn_onnx(channels=8, size=16)[0])
    shared = tmp_path / "shared"
    tuning.tune_with_report(mod, target, info, work_dir=str(tmp_path / "a"), trials=2, progress=False,
                            shared_database=str(shared), population_size=8)   # the records, not their quality
    said: list[str] = []
    monkeypatch.setattr(tuning, "_run_tune_tasks", lambda *a, **k: None)   # the line is said before any trial
    _, rep = tuning.tune_with_report(mod, target, info, work_dir=str(tmp_path / "b"), trials=2, progress=False,
                                     shared_database=str(shared), log=said.append)
    copied = [t.name for t in rep.tasks if t.source == "shared"]
    line = next((s for s in said if s.startswith("tuning ")), None)
    if line is None:
        pytest.skip("the first run tuned every task: nothing left to tune, no line")
    assert copied and f"{len(copied)} of them copied from the shared database" in line


def test_channel_regimes_on_a_scores_file_without_details_says_so():
    """The bundled easier scores file has no per-channel details; the refusal said 'the scores are of easier'."""
    import collapse_passes as cp

    ex = ROOT / "models" / "examples"
    with pytest.raises(cp.CollapseError, match="these easier scores carry no per-channel details"):
        cp.collapse(str(ex / "mobilenet_v2_digits.onnx"), scores=str(ex / "mobilenet_v2_digits.scores.json"),
                    threshold=0.95, channel_regimes=True)


def test_models_readme_names_every_buildable_model():
    """models/README.md said MODELS held resnet18, mobilenet_v2, vgg16_bn and swin_t; it holds 15 names."""
    import sys

    sys.path.insert(0, str(ROOT))
    from models import MODELS

    text = (ROOT / "models" / "README.md").read_text()
    assert [n for n in MODELS if f"`{n}`" not in text and f" {n}" not in text] == []
    assert "MODELS: resnet18, mobilenet_v2, vgg16_bn, swin_t\n" not in text
