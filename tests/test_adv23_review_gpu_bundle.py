"""benchmarks/gpu_bundle.sh --trim / --restore never change the user's uncommitted work (adversarial round 23, H71).

--restore ran `git checkout --` on every file git saw deleted: a file the user deleted on purpose (uncommitted), after
--trim or before it (--trim's refusal of a deleted file said "--restore first"), came back. --trim now lists what it
deletes (.git/gpu_bundle_trimmed) and --restore brings back that list only; without a list it refuses."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bundle.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def _repo(tmp_path: Path) -> Path:
    """A throw-away repository with the layout --trim reads: tests/, docs/, benchmarks/, and the package."""
    repo = tmp_path / "r"
    for path, text in {"tests/test_a.py": "a\n", "docs/d.md": "d\n", "benchmarks/gpu_check.py": "g\n",
                       "benchmarks/other.py": "o\n", "pkg/a.py": "a\n", "pkg/b.py": "b\n"}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    (repo / "benchmarks" / "gpu_bundle.sh").write_bytes(SCRIPT.read_bytes())
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    (repo / ".gpu").mkdir()
    (repo / ".gpu" / "x").write_text("x")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    with open(repo / ".git" / "info" / "exclude", "a") as f:
        f.write(".gpu\n")
    return repo


def _bundle(repo: Path, flag: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "benchmarks/gpu_bundle.sh", flag], cwd=repo, capture_output=True, text=True)


def test_restore_brings_back_what_trim_deleted_and_nothing_the_user_deleted(tmp_path):
    repo = _repo(tmp_path)
    (repo / "pkg" / "a.py").unlink()              # the user's own deletion, before --trim (uncommitted)
    (repo / "tests" / "mine.py").write_text("untracked\n")
    r = _bundle(repo, "--trim")
    assert r.returncode == 0, r.stderr
    assert not (repo / "tests" / "test_a.py").exists() and not (repo / "benchmarks" / "other.py").exists()
    assert (repo / "benchmarks" / "gpu_check.py").exists() and (repo / "tests" / "mine.py").exists()
    (repo / "pkg" / "b.py").unlink()              # and one after it
    assert _bundle(repo, "--restore").returncode == 0
    for path in ("tests/test_a.py", "docs/d.md", "benchmarks/other.py"):
        assert (repo / path).read_text() == {"tests": "a\n", "docs": "d\n", "benchmarks": "o\n"}[path.split("/")[0]]
    assert not (repo / "pkg" / "a.py").exists() and not (repo / "pkg" / "b.py").exists()   # still deleted
    assert (repo / "tests" / "mine.py").read_text() == "untracked\n"
    assert sorted(_git(repo, "status", "--porcelain").splitlines()) == [" D pkg/a.py", " D pkg/b.py",
                                                                        "?? tests/mine.py"]


def test_restore_without_a_trim_touches_nothing(tmp_path):
    repo = _repo(tmp_path)
    (repo / "pkg" / "a.py").unlink()
    r = _bundle(repo, "--restore")
    assert r.returncode == 2 and "nothing to restore" in r.stderr, r.stderr
    assert not (repo / "pkg" / "a.py").exists()


def test_a_second_trim_and_a_recreated_file_are_left_alone(tmp_path):
    repo = _repo(tmp_path)
    assert _bundle(repo, "--trim").returncode == 0
    r = _bundle(repo, "--trim")
    assert r.returncode == 2 and "--restore first" in r.stderr, r.stderr
    (repo / "docs" / "d.md").write_text("written again\n")   # the user's file now: --restore keeps it
    assert _bundle(repo, "--restore").returncode == 0
    assert (repo / "docs" / "d.md").read_text() == "written again\n"
    assert (repo / "tests" / "test_a.py").read_text() == "a\n"
    assert not list((repo / ".git").glob("gpu_bundle_trimmed*"))   # no list or temp file left
